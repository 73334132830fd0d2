//! Sluice going away must never cost a request: `kill -9` and a restart 20 s later, or a
//! SIGSTOP for 30 s, with three real Envoy sidecars under steady traffic. After Sluice returns,
//! every sidecar is SYNCED within 2 s, and a delta sidecar is sent nothing that did not change.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{
    echo_split_route, loopback_ip, wait_until, EchoServer, Envoy, ManifestDir, MeshClient,
    Protocol, Sidecar, Sluice, ECHO_SERVICES, STARTUP_TIMEOUT,
};

const NODES: [&str; 3] = ["client", "echo-v1", "echo-v2"];
/// How soon after Sluice returns every sidecar must be SYNCED again (the bound).
const RESYNC_BOUND: Duration = Duration::from_secs(2);

struct Mesh {
    _sidecars: Vec<Envoy>,
    _echoes: Vec<EchoServer>,
    sluice: Sluice,
    _manifests: ManifestDir,
    client: SocketAddr,
}

async fn start(protocol: Protocol) -> Mesh {
    let manifests = ManifestDir::new();
    manifests.write("services.yaml", ECHO_SERVICES);
    manifests.write("route.yaml", &echo_split_route(90, 10));
    let sluice = Sluice::start(manifests.path()).await;
    sluice.wait_ready().await;
    let mut sidecars = Vec::new();
    let mut echoes = Vec::new();
    for (name, labels) in [
        ("echo-v1", "app=echo,version=v1"),
        ("echo-v2", "app=echo,version=v2"),
    ] {
        let ip = loopback_ip();
        echoes.push(EchoServer::start(name, SocketAddr::from((ip, 8080))).await);
        sidecars.push(
            Sidecar::new(name, sluice.xds_addr(), protocol)
                .labels(labels)
                .address(ip)
                .start()
                .await,
        );
    }
    let client = Sidecar::new("client", sluice.xds_addr(), protocol)
        .labels("app=client")
        .start()
        .await;
    let outbound = client.outbound();
    sidecars.push(client);
    for node in NODES {
        sluice.wait_synced(node).await;
    }
    let http = MeshClient::new(outbound);
    wait_until(
        STARTUP_TIMEOUT,
        "echo-v2 answers through the client",
        || async {
            for _ in 0..40 {
                if matches!(http.send("echo", "/").await, Ok((200, pod)) if pod == "echo-v2") {
                    return true;
                }
            }
            false
        },
    )
    .await;
    Mesh {
        _sidecars: sidecars,
        _echoes: echoes,
        sluice,
        _manifests: manifests,
        client: outbound,
    }
}

/// Requests sent without pause until stopped; every failure is kept.
struct Traffic {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    sent: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(outbound: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(0));
        let task = tokio::spawn({
            let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
            async move {
                let http = MeshClient::new(outbound);
                while !stop.load(Ordering::Relaxed) {
                    let result = http.send("echo", "/steady").await;
                    *sent.lock().expect("counter") += 1;
                    match result {
                        Ok((200, _)) => {}
                        Ok((status, pod)) => failures
                            .lock()
                            .expect("failures")
                            .push(format!("status {status} from {pod:?}")),
                        Err(e) => failures.lock().expect("failures").push(format!("{e:#}")),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Traffic {
            stop,
            failures,
            sent,
            task,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let sent = *self.sent.lock().expect("counter");
        let failures = std::mem::take(&mut *self.failures.lock().expect("failures"));
        (sent, failures)
    }
}

/// Polls `/debug/syncz` until every node is SYNCED on all four types; returns how long it took.
async fn time_to_synced(sluice: &Sluice, since: Instant) -> Duration {
    loop {
        let mut all = true;
        for node in NODES {
            let synced = sluice
                .syncz_node(node)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    ["cds", "eds", "lds", "rds"]
                        .iter()
                        .all(|t| n["types"][t]["status"] == "SYNCED")
                });
            all &= synced;
        }
        if all {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < STARTUP_TIMEOUT,
            "sidecars never SYNCED again"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn kill_and_restart(protocol: Protocol) {
    let mut mesh = start(protocol).await;
    let traffic = Traffic::start(mesh.client);
    tokio::time::sleep(Duration::from_secs(1)).await;

    mesh.sluice.kill();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let restarted = Instant::now();
    mesh.sluice.restart().await;
    let took = time_to_synced(&mesh.sluice, restarted).await;
    eprintln!("{protocol}: every sidecar SYNCED {took:?} after the restart");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sent, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(sent > 100, "only {sent} requests were sent");
    assert!(
        took <= RESYNC_BOUND,
        "sidecars SYNCED {took:?} after the restart"
    );
    if protocol == Protocol::Delta {
        // The sidecars reconnect with initial_resource_versions: nothing changed, nothing sent.
        let resources = mesh
            .sluice
            .metric_sum("sluice_xds_resources_sent_total")
            .await;
        assert_eq!(
            resources, 0.0,
            "a delta reconnect resent unchanged resources"
        );
    }
}

async fn stop_and_continue(protocol: Protocol) {
    let mesh = start(protocol).await;
    let traffic = Traffic::start(mesh.client);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent_before = mesh
        .sluice
        .metric_sum("sluice_xds_resources_sent_total")
        .await;

    mesh.sluice.signal("STOP");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let resumed = Instant::now();
    mesh.sluice.signal("CONT");
    let took = time_to_synced(&mesh.sluice, resumed).await;
    eprintln!("{protocol}: every sidecar SYNCED {took:?} after SIGCONT");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sent, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        took <= RESYNC_BOUND,
        "sidecars SYNCED {took:?} after SIGCONT"
    );
    if protocol == Protocol::Delta {
        let sent_after = mesh
            .sluice
            .metric_sum("sluice_xds_resources_sent_total")
            .await;
        assert_eq!(
            sent_after, sent_before,
            "a delta resync resent unchanged resources"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_fails_no_request_delta() {
    kill_and_restart(Protocol::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_fails_no_request_sotw() {
    kill_and_restart(Protocol::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_30s_fails_no_request_delta() {
    stop_and_continue(Protocol::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_30s_fails_no_request_sotw() {
    stop_and_continue(Protocol::Sotw).await;
}

/// Rule 14: a sidecar that vanishes without closing its connection (here: a stopped Envoy, whose
/// kernel still holds the TCP connection open) is noticed by the server's keepalive and leaves
/// `/debug/syncz` within the keepalive budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_14_a_sidecar_gone_without_fin_leaves_syncz_within_the_keepalive_budget() {
    let manifests = ManifestDir::new();
    manifests.write("services.yaml", ECHO_SERVICES);
    let sluice = Sluice::start_with(
        manifests.path(),
        &[
            "--xds-keepalive-interval",
            "1s",
            "--xds-keepalive-timeout",
            "1s",
        ],
    )
    .await;
    sluice.wait_ready().await;
    let envoy = Sidecar::new("silent", sluice.xds_addr(), Protocol::Delta)
        .start()
        .await;
    sluice.wait_synced("silent").await;

    let stop = |signal: &str| {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), envoy.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}");
    };
    stop("STOP");
    let stopped = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "the silent sidecar to leave /debug/syncz",
        || async { matches!(sluice.syncz_node("silent").await, Ok(None)) },
    )
    .await;
    let gone_after = stopped.elapsed();
    stop("CONT");
    eprintln!("a silent sidecar left /debug/syncz {gone_after:?} after it stopped answering");
    // Keepalive interval + timeout is 2 s; allow for the ping schedule and a loaded machine.
    assert!(gone_after < Duration::from_secs(10), "took {gone_after:?}");
}
