//! The process under test: `sluice serve` or the floor, pinned to CPU 0, with its logs in the
//! work folder. A measurement stops it with SIGTERM; it is killed when dropped otherwise, so an
//! error or Ctrl-C never leaves one behind.
//!
//! Readings come from outside the process, the same way for both: resident memory (`VmRSS` in
//! `/proc/PID/status`) and CPU time (`utime + stime` in `/proc/PID/stat`). Sluice's bytes and
//! compile times come from its `/metrics`; the floor answers the same questions on its control
//! pipe.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Longest wait for a server to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a server to exit after SIGTERM (Sluice drains its streams for at most 5 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for one HTTP request or control answer. Generous: a server under load may
/// answer `/metrics` late, which is not a failure of the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server a measurement ran against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sluice,
    Floor,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Sluice => "sluice",
            Kind::Floor => "floor",
        })
    }
}

/// How servers are started.
#[derive(Clone, Debug)]
pub struct Launcher {
    pub sluice: PathBuf,
    /// Extra arguments for `sluice serve`.
    pub sluice_args: Vec<String>,
    /// This executable, for `sluice-bench floor`.
    pub bench: PathBuf,
    /// Pin servers to CPU 0 with `taskset`.
    pub taskset: bool,
    /// Where logs go.
    pub logs: PathBuf,
}

impl Launcher {
    fn command(&self, program: &Path) -> Command {
        let mut command = if self.taskset {
            let mut c = Command::new("taskset");
            c.arg("-c").arg("0").arg(program);
            c
        } else {
            Command::new(program)
        };
        command.kill_on_drop(true).stdin(Stdio::null());
        command
    }

    fn log_file(&self, name: &str) -> anyhow::Result<(std::fs::File, PathBuf)> {
        let path = self.logs.join(name);
        let file = std::fs::File::create(&path)
            .with_context(|| format!("creating the log {}", path.display()))?;
        Ok((file, path))
    }
}

/// Whether `taskset` can run a program pinned to CPU 0 here.
pub fn taskset_works() -> bool {
    std::process::Command::new("taskset")
        .args(["-c", "0", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

enum Control {
    Sluice {
        debug: SocketAddr,
    },
    Floor {
        stdin: ChildStdin,
        stdout: Lines<BufReader<ChildStdout>>,
    },
}

/// Sluice's own counters, from `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SluiceMetrics {
    pub bytes_sent: f64,
    pub connected: f64,
    pub compile_count: f64,
    pub compile_sum_seconds: f64,
    pub last_compile_seconds: f64,
}

pub struct Server {
    pub kind: Kind,
    child: Child,
    pub pid: u32,
    pub xds: SocketAddr,
    control: Control,
    log: PathBuf,
}

impl Server {
    /// `sluice serve --dir MESH` on free loopback ports; returns once `/readyz` answers 200.
    pub async fn start_sluice(
        launcher: &Launcher,
        mesh: &Path,
        tag: &str,
    ) -> anyhow::Result<Server> {
        let xds = free_port()?;
        let debug = free_port()?;
        let (log, log_path) = launcher.log_file(&format!("sluice-{tag}.log"))?;
        let mut command = launcher.command(&launcher.sluice);
        command
            .arg("serve")
            .arg("--dir")
            .arg(mesh)
            .arg("--xds-listen")
            .arg(xds.to_string())
            .arg("--debug-listen")
            .arg(debug.to_string())
            .args(&launcher.sluice_args)
            .stdout(Stdio::null())
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", launcher.sluice.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("sluice exited at once"))?;
        let mut server = Server {
            kind: Kind::Sluice,
            child,
            pid,
            xds,
            control: Control::Sluice { debug },
            log: log_path,
        };
        let started = Instant::now();
        loop {
            server.check_alive()?;
            if let Ok((200, _)) = http_get(debug, "/readyz").await {
                return Ok(server);
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "sluice was not ready after {START_TIMEOUT:?}; see {}",
                    server.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `sluice-bench floor --mesh MESH`; returns once it says it listens.
    pub async fn start_floor(
        launcher: &Launcher,
        mesh: &Path,
        tag: &str,
    ) -> anyhow::Result<Server> {
        let xds = free_port()?;
        let (log, log_path) = launcher.log_file(&format!("floor-{tag}.log"))?;
        let mut command = launcher.command(&launcher.bench);
        command
            .arg("floor")
            .arg("--mesh")
            .arg(mesh)
            .arg("--listen")
            .arg(xds.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} floor", launcher.bench.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the floor exited at once"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin pipe"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let mut server = Server {
            kind: Kind::Floor,
            child,
            pid,
            xds,
            control: Control::Floor {
                stdin,
                stdout: BufReader::new(stdout).lines(),
            },
            log: log_path,
        };
        let line = server.read_line(START_TIMEOUT).await?;
        if line != "ready" {
            bail!(
                "the floor said {line:?} instead of \"ready\"; see {}",
                server.log.display()
            );
        }
        Ok(server)
    }

    /// A check that the server is alive and its resident memory under `limit_kb`, callable
    /// from waits that cannot borrow the server.
    pub fn watchdog(&self, limit_kb: u64) -> Watchdog {
        Watchdog {
            kind: self.kind,
            pid: self.pid,
            limit_kb,
        }
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Stops the server the way an operator does, with SIGTERM, so that what it writes at exit
    /// is written (a heap profiler wrapping it, `--sluice WRAPPER`, keeps its output); killed
    /// if it is still running after [`STOP_TIMEOUT`].
    pub async fn stop(mut self) {
        let terminated = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !terminated
            || tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
                .await
                .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// An error naming the log if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); last log lines:\n{}",
                self.kind,
                log_tail(&self.log)
            ),
            Err(err) => bail!("{}: {err}", self.kind),
        }
    }

    /// Resident memory in KiB.
    pub fn rss_kb(&mut self) -> anyhow::Result<u64> {
        self.check_alive()?;
        vm_rss_kb(&format!("/proc/{}/status", self.pid))
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&mut self) -> anyhow::Result<f64> {
        self.check_alive()?;
        process_cpu_seconds(&format!("/proc/{}/stat", self.pid))
    }

    /// Response bytes the server has sent (Sluice: `sluice_xds_bytes_sent_total`, all types).
    pub async fn bytes_sent(&mut self) -> anyhow::Result<u64> {
        match &self.control {
            Control::Sluice { .. } => Ok(self.sluice_metrics().await?.bytes_sent as u64),
            Control::Floor { .. } => Ok(self.floor_stats().await?.0),
        }
    }

    /// Streams the server has open.
    pub async fn open_streams(&mut self) -> anyhow::Result<u64> {
        match &self.control {
            Control::Sluice { .. } => Ok(self.sluice_metrics().await?.connected as u64),
            Control::Floor { .. } => Ok(self.floor_stats().await?.1),
        }
    }

    pub async fn sluice_metrics(&mut self) -> anyhow::Result<SluiceMetrics> {
        self.check_alive()?;
        let Control::Sluice { debug } = &self.control else {
            bail!("the floor has no /metrics");
        };
        let (status, body) = http_get(*debug, "/metrics").await?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        Ok(SluiceMetrics {
            bytes_sent: metric(&body, "sluice_xds_bytes_sent_total"),
            connected: metric(&body, "sluice_connected_sidecars"),
            compile_count: metric(&body, "sluice_compile_seconds_count"),
            compile_sum_seconds: metric(&body, "sluice_compile_seconds_sum"),
            last_compile_seconds: metric(&body, "sluice_last_compile_seconds"),
        })
    }

    /// Tells the floor to push the next route configuration to every stream.
    pub async fn floor_change(&mut self) -> anyhow::Result<()> {
        let answer = self.floor_command("change").await?;
        if answer != "ok" {
            bail!("the floor answered {answer:?} to change");
        }
        Ok(())
    }

    /// The floor's bytes sent and open streams.
    async fn floor_stats(&mut self) -> anyhow::Result<(u64, u64)> {
        let answer = self.floor_command("stats").await?;
        let mut words = answer.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("stats"), Some(bytes), Some(streams)) => Ok((
                bytes.parse().context("floor stats bytes")?,
                streams.parse().context("floor stats streams")?,
            )),
            _ => bail!("the floor answered {answer:?} to stats"),
        }
    }

    async fn floor_command(&mut self, command: &str) -> anyhow::Result<String> {
        self.check_alive()?;
        let Control::Floor { stdin, .. } = &mut self.control else {
            bail!("sluice has no control pipe");
        };
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("writing to the floor")?;
        stdin.flush().await.context("writing to the floor")?;
        self.read_line(REQUEST_TIMEOUT).await
    }

    async fn read_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let Control::Floor { stdout, .. } = &mut self.control else {
            bail!("sluice has no control pipe");
        };
        match tokio::time::timeout(timeout, stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => bail!(
                "the floor closed its output; last log lines:\n{}",
                log_tail(&self.log)
            ),
            Ok(Err(err)) => bail!("reading from the floor: {err}"),
            Err(_) => bail!("the floor did not answer within {timeout:?}"),
        }
    }
}

/// Stops a measurement before a server takes the machine's memory (the OOM killer could pick
/// any process, the generator included) or when it has died.
#[derive(Clone, Debug)]
pub struct Watchdog {
    kind: Kind,
    pid: u32,
    limit_kb: u64,
}

impl Watchdog {
    pub fn check(&self) -> anyhow::Result<()> {
        let rss = vm_rss_kb(&format!("/proc/{}/status", self.pid))
            .with_context(|| format!("{} is gone", self.kind))?;
        if rss > self.limit_kb {
            bail!(
                "{}'s resident memory reached {:.1} GiB, over the {:.1} GiB allowed (--max-server-memory); stopped before the machine runs out",
                self.kind,
                rss as f64 / GIB_IN_KB,
                self.limit_kb as f64 / GIB_IN_KB
            );
        }
        Ok(())
    }
}

pub const GIB_IN_KB: f64 = 1024.0 * 1024.0;

/// `VmRSS` of a `/proc/.../status` file, in KiB.
pub fn vm_rss_kb(path: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

/// `utime + stime` of a `/proc/.../stat` file, in seconds.
pub fn process_cpu_seconds(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected {path}"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, utime field 14 and stime field 15 (1-based).
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {i} in {path}"))
    };
    Ok((ticks(14)? + ticks(15)?) as f64 / clock_ticks() as f64)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless told otherwise).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// A loopback port nobody listens on right now.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = StdTcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    listener.local_addr().context("finding a free port")
}

/// A plain HTTP/1.0 GET: the status and the body. HTTP/1.0 keeps the body unchunked.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("GET {path} took over {REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("GET {path}: no HTTP status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The sum of every sample of a metric (all label sets) in Prometheus text; 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if let Some(labelled) = rest.strip_prefix('{') {
                labelled.split_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels_and_names_do_not_bleed() {
        let text = "# HELP x\nsluice_xds_bytes_sent_total{type=\"cds\"} 10\n\
                    sluice_xds_bytes_sent_total{type=\"rds\"} 5\n\
                    sluice_compile_seconds_sum 0.5\nsluice_compile_seconds_count 2\n";
        assert_eq!(metric(text, "sluice_xds_bytes_sent_total"), 15.0);
        assert_eq!(metric(text, "sluice_compile_seconds_count"), 2.0);
        assert_eq!(metric(text, "sluice_compile_seconds"), 0.0);
    }

    #[test]
    fn cpu_time_of_this_process_is_read() {
        let seconds = process_cpu_seconds("/proc/self/stat").expect("readable");
        assert!(seconds >= 0.0);
    }
}
