//! Real Envoy sidecars, bootstrapped by `sluice bootstrap`.

use std::fmt;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::{envoy_path, free_addr_on, log_tail, loopback_ip, sluice_path, STARTUP_TIMEOUT};

/// The ADS flavour a sidecar speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Delta,
    Sotw,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Delta => "delta",
            Protocol::Sotw => "sotw",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to pass to `sluice bootstrap` for one sidecar. Its outbound and admin listeners default
/// to free ports on the workload's own address.
#[derive(Clone, Debug)]
pub struct Sidecar {
    pub node_id: String,
    pub namespace: String,
    /// `k=v,...`, as `--labels` takes them.
    pub labels: String,
    pub address: Ipv4Addr,
    pub protocol: Protocol,
    pub xds: SocketAddr,
    pub outbound: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Runtime overrides, appended to the bootstrap as a static runtime layer.
    pub runtime: Vec<(String, String)>,
}

impl Sidecar {
    /// A sidecar in namespace `default`, without labels, on a fresh loopback address.
    pub fn new(node_id: &str, xds: SocketAddr, protocol: Protocol) -> Sidecar {
        Sidecar {
            node_id: node_id.to_owned(),
            namespace: "default".to_owned(),
            labels: String::new(),
            address: loopback_ip(),
            protocol,
            xds,
            outbound: None,
            admin: None,
            runtime: Vec::new(),
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Sidecar {
        self.namespace = namespace.to_owned();
        self
    }

    /// `k=v,...`
    pub fn labels(mut self, labels: &str) -> Sidecar {
        self.labels = labels.to_owned();
        self
    }

    /// The workload's own address: where the app listens and other sidecars reach it.
    pub fn address(mut self, address: Ipv4Addr) -> Sidecar {
        self.address = address;
        self
    }

    pub fn outbound(mut self, outbound: SocketAddr) -> Sidecar {
        self.outbound = Some(outbound);
        self
    }

    pub fn admin(mut self, admin: SocketAddr) -> Sidecar {
        self.admin = Some(admin);
        self
    }

    /// Sets Envoy runtime `key` to `value` (e.g. a tighter `re2.max_program_size.error_level`).
    pub fn runtime(mut self, key: &str, value: &str) -> Sidecar {
        self.runtime.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs `sluice bootstrap` with these flags and returns the YAML it printed.
    pub fn bootstrap_yaml(&self, outbound: SocketAddr, admin: SocketAddr) -> String {
        let mut command = Command::new(sluice_path());
        command
            .arg("bootstrap")
            .args(["--node-id", &self.node_id])
            .args(["--namespace", &self.namespace])
            .args(["--address", &self.address.to_string()])
            .args(["--xds-address", &self.xds.to_string()])
            .args(["--xds-protocol", self.protocol.as_str()])
            .args(["--outbound-listen", &outbound.to_string()])
            .args(["--admin-listen", &admin.to_string()]);
        if !self.labels.is_empty() {
            command.args(["--labels", &self.labels]);
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .expect("run sluice bootstrap");
        assert!(
            output.status.success(),
            "{command:?} failed with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let mut yaml = String::from_utf8(output.stdout).expect("sluice bootstrap printed UTF-8");
        if !self.runtime.is_empty() {
            assert!(
                !yaml.contains("\nlayered_runtime:"),
                "the bootstrap has its own runtime layers"
            );
            yaml.push_str(
                "layered_runtime:\n  layers:\n  - name: test-overrides\n    static_layer:\n",
            );
            for (key, value) in &self.runtime {
                yaml.push_str(&format!("      {key}: {value}\n"));
            }
        }
        yaml
    }

    /// Bootstraps and starts the Envoy, and waits until its admin `/ready` says `LIVE` (it has
    /// its first listeners and clusters from Sluice).
    pub async fn start(self) -> Envoy {
        let outbound = self.outbound.unwrap_or_else(|| free_addr_on(self.address));
        let admin = self.admin.unwrap_or_else(|| free_addr_on(self.address));
        let tmp = tempfile::Builder::new()
            .prefix(&format!("sluice-envoy-{}-", self.node_id))
            .tempdir()
            .expect("temp dir");
        let config = tmp.path().join("bootstrap.yaml");
        std::fs::write(&config, self.bootstrap_yaml(outbound, admin)).expect("write bootstrap");
        let log = tmp.path().join("envoy.log");
        let stderr = File::create(&log).expect("create envoy log");
        let child = Command::new(envoy_path())
            .arg("-c")
            .arg(&config)
            // Without hot restart Envoy takes no shared memory region or domain socket, so any
            // number of them run side by side; a distinct base id keeps that true either way.
            .arg("--disable-hot-restart")
            .args(["--base-id", &unique_base_id().to_string()])
            .args(["--concurrency", "1"])
            .args(["--drain-time-s", "1"])
            .args(["-l", "warning"])
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("clone log file"))
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", envoy_path().display()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let mut envoy = Envoy {
            child,
            node_id: self.node_id.clone(),
            address: self.address,
            outbound,
            admin,
            config,
            log,
            http,
            _tmp: tmp,
        };
        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = envoy.child.try_wait().expect("wait for envoy") {
                // Drop prints the log.
                panic!(
                    "envoy {:?} exited with {status} before it was ready",
                    self.node_id
                );
            }
            if matches!(envoy.admin_get("/ready").await, Ok((200, _))) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "envoy {:?} was not ready within {STARTUP_TIMEOUT:?}",
                self.node_id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        envoy
    }
}

fn unique_base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (std::process::id() % 1_000_000) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed) % 1000
}

/// A running Envoy; killed on drop, its log printed when the test is failing.
pub struct Envoy {
    child: Child,
    node_id: String,
    address: Ipv4Addr,
    outbound: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    http: reqwest::Client,
    _tmp: tempfile::TempDir,
}

impl Envoy {
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The workload address it was bootstrapped with.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The outbound HTTP listener the app sends requests to.
    pub fn outbound(&self) -> SocketAddr {
        self.outbound
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The bootstrap file it runs with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What Envoy logged so far (its last lines).
    pub fn log(&self) -> String {
        log_tail(&self.log, 300)
    }

    /// `GET path` on the admin listener: status and body.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("http://{}{}", self.admin, path);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .with_context(|| format!("GET {url}"))?;
        Ok((status, body))
    }

    /// `GET path` on the admin listener, which must answer 200 with JSON, e.g.
    /// `admin_json("/config_dump?include_eds")`.
    pub async fn admin_json(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.admin_get(path).await?;
        if status != 200 {
            bail!("envoy {:?} GET {path}: {status} {body}", self.node_id);
        }
        serde_json::from_str(&body)
            .with_context(|| format!("envoy {:?} GET {path}: not JSON: {body}", self.node_id))
    }

    /// `uptime_current_epoch` from `/server_info`: how long this process has been serving.
    pub async fn uptime(&self) -> anyhow::Result<Duration> {
        let info = self.admin_json("/server_info").await?;
        let text = info["uptime_current_epoch"]
            .as_str()
            .context("/server_info has no uptime_current_epoch")?;
        parse_proto_duration(text)
    }
}

/// A protobuf JSON duration such as `"12s"` or `"1.500s"`.
fn parse_proto_duration(text: &str) -> anyhow::Result<Duration> {
    let seconds: f64 = text
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not a protobuf duration: {text:?}"))?;
    Ok(Duration::from_secs_f64(seconds))
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- envoy {:?} (pid {}) log -----\n{}----- end of envoy log -----",
                self.node_id,
                self.child.id(),
                self.log()
            );
        }
    }
}
