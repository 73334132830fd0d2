//! Shared helpers for Sluice's end-to-end tests: a real `sluice serve`, real Envoys bootstrapped
//! by `sluice bootstrap`, echo upstreams on their own loopback addresses, and an HTTP client that
//! sends through a sidecar's outbound listener.
//!
//! Include it from a test file with `mod support;`. Every process and server is owned by a guard
//! that stops it on drop and, when the test is failing, prints what the process logged.
//!
//! Each simulated workload owns a loopback address (all of 127.0.0.0/8 is local on Linux), chosen
//! from the test process id and a counter, so tests that run in parallel, in this process or in
//! another one, do not fight over ports such as the echo servers' 8080.

// Each test file includes this module and uses only part of it, re-exports included.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod conformance;
pub mod echo;
pub mod envoy;
pub mod git;
pub mod grpc_echo;
pub mod manifests;
pub mod sluice;
pub mod static_envoy;
pub mod workload;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use client::{send, MeshClient};
pub use echo::EchoServer;
pub use envoy::{Envoy, Protocol, Sidecar};
pub use git::{GitDaemon, GitHttpServer, GitRemote};
pub use manifests::{echo_split_route, ManifestDir, ECHO_SERVICES};
pub use sluice::Sluice;

/// How long a process may take to start on a loaded 2-core machine. Generous on purpose: start-up
/// time is not what these tests check.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// The Envoy binary: `SLUICE_ENVOY`, else the one `scripts/test` installs into `.venv`.
///
/// Panics when it is missing: a test that needs Envoy never skips, or CI would pass without
/// having tested anything.
pub fn envoy_path() -> PathBuf {
    let path = match std::env::var_os("SLUICE_ENVOY") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy"),
    };
    assert!(
        path.is_file(),
        "no Envoy at {}: run scripts/test to install Envoy (or set SLUICE_ENVOY)",
        path.display()
    );
    path
}

/// The `sluice` binary built for this test run.
pub fn sluice_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

static NEXT_IP: AtomicU32 = AtomicU32::new(0);

/// A loopback address that no other workload of this test run uses: `127.A.B.C` with `A` from
/// the process id (never 0, so the common `127.0.x.x` addresses stay free) and `B.C` from a
/// counter.
pub fn loopback_ip() -> Ipv4Addr {
    let a = 1 + (std::process::id() % 250) as u8;
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    assert!(n < 250 * 250, "out of loopback addresses");
    let b = 1 + (n / 250) as u8;
    let c = 1 + (n % 250) as u8;
    Ipv4Addr::new(127, a, b, c)
}

/// A port that is free on `ip` right now (the kernel picks it; nothing holds it afterwards).
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    let listener = TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("cannot bind {ip}:0 to find a free port: {e}"));
    listener.local_addr().expect("local address").port()
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// A free `ip:port` on `ip`.
pub fn free_addr_on(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, free_port_on(ip)))
}

/// Polls `check` every 100 ms until it yields a value; panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `condition` every 100 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let fut = condition();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// The last `max_lines` lines of a log file, for a failing test's output.
pub(crate) fn log_tail(path: &std::path::Path, max_lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    let mut tail = String::new();
    if start > 0 {
        tail.push_str(&format!("... ({start} earlier lines)\n"));
    }
    for line in &lines[start..] {
        tail.push_str(line);
        tail.push('\n');
    }
    tail
}
