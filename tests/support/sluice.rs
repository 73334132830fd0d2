//! A real `sluice serve` process (`--dir` or `--repo`), on its own loopback address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::{
    free_addr_on, log_tail, loopback_ip, sluice_path, wait_for, wait_until, STARTUP_TIMEOUT,
};

/// A running `sluice serve` that serves a manifest directory; killed on drop, and what it left
/// in its temporary folder removed.
///
/// It writes nothing into the directory: the test owns the manifests.
pub struct Sluice {
    child: Child,
    xds: SocketAddr,
    debug: SocketAddr,
    log: PathBuf,
    http: reqwest::Client,
    /// The `serve` arguments and environment, kept for [`Sluice::restart`].
    args: Vec<String>,
    envs: Vec<(String, String)>,
    _tmp: tempfile::TempDir,
}

impl Sluice {
    /// Starts `sluice serve --dir DIR` and waits until `/healthz` answers.
    pub async fn start(dir: &Path) -> Sluice {
        Sluice::start_with(dir, &[]).await
    }

    /// Like [`Sluice::start`], with more `serve` flags (`--endpoint-grace 2s`, ...).
    pub async fn start_with(dir: &Path, extra_args: &[&str]) -> Sluice {
        let dir = dir.to_str().expect("UTF-8 manifest path");
        let mut args = vec!["--dir", dir];
        args.extend_from_slice(extra_args);
        Sluice::start_args(&args, &[]).await
    }

    /// Starts `sluice serve ARGS` (which name the source, e.g. `--repo URL --poll-interval
    /// 500ms`) with more environment variables, and waits until `/healthz` answers.
    pub async fn start_args(args: &[&str], envs: &[(&str, &str)]) -> Sluice {
        let ip = loopback_ip();
        let xds = free_addr_on(ip);
        let debug = free_addr_on(ip);
        let tmp = tempfile::Builder::new()
            .prefix("sluice-serve-")
            .tempdir()
            .expect("temp dir");
        let log = tmp.path().join("sluice.log");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        // Its temporary files (the default git cache) in the folder removed on drop: a server
        // killed with -9 cannot remove them itself.
        let own_tmp = ("TMPDIR", tmp.path().to_str().expect("UTF-8 temp path"));
        let envs: Vec<(String, String)> = [own_tmp]
            .iter()
            .chain(envs)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn(&args, &envs, xds, debug, &log);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let mut sluice = Sluice {
            child,
            xds,
            debug,
            log,
            http,
            args,
            envs,
            _tmp: tmp,
        };
        sluice.wait_healthy().await;
        sluice
    }

    async fn wait_healthy(&mut self) {
        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sluice") {
                // Drop prints the log.
                panic!("sluice serve exited with {status} before answering /healthz");
            }
            if matches!(self.get("/healthz").await, Ok((200, _))) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sluice serve did not answer /healthz within {STARTUP_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`: the process dies without draining anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Starts the same `serve` again on the same addresses (after [`Sluice::kill`]), appending
    /// to the same log, and waits until `/healthz` answers.
    pub async fn restart(&mut self) {
        assert!(!self.is_running(), "restart() needs the old process gone");
        self.child = spawn(&self.args, &self.envs, self.xds, self.debug, &self.log);
        self.wait_healthy().await;
    }

    /// Waits until `/readyz` answers 200: a first revision is compiled and served.
    pub async fn wait_ready(&self) {
        wait_until(STARTUP_TIMEOUT, "sluice /readyz to answer 200", || async {
            matches!(self.get("/readyz").await, Ok((200, _)))
        })
        .await;
    }

    /// The ADS listener, for `sluice bootstrap --xds-address`.
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds
    }

    /// The debug HTTP listener.
    pub fn debug_addr(&self) -> SocketAddr {
        self.debug
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not exited or been replaced).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit code once the process has exited; `None` while it runs or when a signal ended it.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .and_then(|status| status.code())
    }

    /// Everything the process logged so far.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the process logged so far (its last lines).
    pub fn log(&self) -> String {
        log_tail(&self.log, 400)
    }

    /// `GET path` on the debug listener: the status and the body, parsed as JSON when it is
    /// JSON (else the body as a JSON string).
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let url = format!("http://{}{}", self.debug, path);
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
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        Ok((status, value))
    }

    /// `GET path` on the debug listener, which must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        match self.get(path).await? {
            (200, value) if !value.is_string() => Ok(value),
            (status, value) => bail!("GET {path}: {status} {value}"),
        }
    }

    /// The sample `name` (labels included, e.g. `sluice_xds_nacks_total{type="rds"}`) of
    /// `/metrics`; panics when it is missing.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// The sum of every sample of metric `name`, whatever its labels.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn metrics_text(&self) -> String {
        match self.get("/metrics").await {
            Ok((200, Value::String(text))) => text,
            other => panic!("GET /metrics: {other:?}"),
        }
    }

    /// This node's entry in `/debug/syncz`, if it is connected.
    pub async fn syncz_node(&self, node_id: &str) -> anyhow::Result<Option<Value>> {
        let syncz = self.get_json("/debug/syncz").await?;
        let nodes = syncz["nodes"]
            .as_array()
            .context("/debug/syncz has no nodes[]")?;
        Ok(nodes.iter().find(|n| n["id"] == node_id).cloned())
    }

    /// Waits until the node is connected and every resource type (cds, eds, lds, rds) is
    /// `SYNCED`: what was sent is what the sidecar ACKed. Returns its `/debug/syncz` entry.
    pub async fn wait_synced(&self, node_id: &str) -> Value {
        wait_for(
            STARTUP_TIMEOUT,
            &format!("node {node_id:?} to be SYNCED for cds, eds, lds and rds in /debug/syncz"),
            || async {
                let node = self.syncz_node(node_id).await.ok()??;
                let all_synced = ["cds", "eds", "lds", "rds"]
                    .iter()
                    .all(|t| node["types"][t]["status"] == "SYNCED");
                all_synced.then_some(node)
            },
        )
        .await
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- sluice serve (pid {}) log -----\n{}----- end of sluice log -----",
                self.child.id(),
                self.log()
            );
        }
    }
}

fn spawn(
    args: &[String],
    envs: &[(String, String)],
    xds: SocketAddr,
    debug: SocketAddr,
    log: &Path,
) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open sluice log");
    Command::new(sluice_path())
        .arg("serve")
        .args(args)
        .args(["--xds-listen", &xds.to_string()])
        .args(["--debug-listen", &debug.to_string()])
        .env("RUST_LOG", "info")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(stderr.try_clone().expect("clone log file"))
        .stderr(stderr)
        .spawn()
        .expect("spawn sluice serve")
}
