//! N simulated sidecars, driven together: connect them (a bounded number at a time), wait for
//! every one to be fully configured, disconnect them all at once and reconnect them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

use crate::facts::Facts;
use crate::sidecar::{ChangeTracker, Counters, Mode, Protocol, Shared, Sidecar};

/// How often waits look at the counters.
const POLL: Duration = Duration::from_millis(10);
/// How often long waits run their check (the server is alive and within its memory budget).
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long a connect runs before its pace is used to tell whether it can finish in time.
const EARLY_VERDICT: Duration = Duration::from_secs(30);
/// How often a long wait prints where it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub responses: u64,
    pub resources: u64,
    pub bytes: u64,
}

impl std::ops::Sub for Totals {
    type Output = Totals;
    fn sub(self, earlier: Totals) -> Totals {
        Totals {
            responses: self.responses.saturating_sub(earlier.responses),
            resources: self.resources.saturating_sub(earlier.resources),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

pub struct Fleet {
    shared: Arc<Shared>,
    /// Sidecars between streams.
    idle: Vec<Sidecar>,
    /// Sidecars with a stream, each returning itself when it stops.
    running: Vec<JoinHandle<Sidecar>>,
    stop: Option<watch::Sender<bool>>,
}

impl Fleet {
    /// `window`, when given, is each connection's HTTP/2 receive window (for the connection and
    /// its stream); otherwise hyper's defaults (2 MiB per stream, 5 MiB per connection) apply.
    pub fn new(
        protocol: Protocol,
        xds: SocketAddr,
        sidecars: usize,
        window: Option<u32>,
    ) -> anyhow::Result<Fleet> {
        let endpoint = Endpoint::from_shared(format!("http://{xds}"))
            .context("the xDS address as a URI")?
            .connect_timeout(Duration::from_secs(20))
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .tcp_nodelay(true);
        let shared = Arc::new(Shared {
            protocol,
            endpoint,
            facts: Facts::default(),
            counters: Counters::default(),
            tracker: ChangeTracker::default(),
            errors: Mutex::new(Vec::new()),
        });
        Ok(Fleet {
            shared,
            idle: (0..sidecars).map(Sidecar::new).collect(),
            running: Vec::new(),
            stop: None,
        })
    }

    pub fn len(&self) -> usize {
        self.idle.len() + self.running.len()
    }

    pub fn totals(&self) -> Totals {
        let counters = &self.shared.counters;
        Totals {
            responses: counters.responses.load(Relaxed),
            resources: counters.resources.load(Relaxed),
            bytes: counters.bytes.load(Relaxed),
        }
    }

    pub fn tracker(&self) -> &ChangeTracker {
        &self.shared.tracker
    }

    pub fn facts(&self) -> &Facts {
        &self.shared.facts
    }

    /// Starts a stream for every idle sidecar, at most `concurrency` connecting at once (`None`:
    /// all at once), and waits until all are fully configured. Returns how long that took.
    /// `check` is called every [`CHECK_EVERY`] and ends the wait with its error.
    pub async fn connect(
        &mut self,
        mode: Mode,
        concurrency: Option<usize>,
        timeout: Duration,
        check: &dyn Fn() -> anyhow::Result<()>,
    ) -> anyhow::Result<Duration> {
        if !self.running.is_empty() {
            bail!("connect while {} sidecars still run", self.running.len());
        }
        let total = self.idle.len() as u64;
        self.shared.counters.configured.store(0, Relaxed);
        let (stop_tx, stop) = watch::channel(false);
        let gate = concurrency.map(|n| Arc::new(Semaphore::new(n.max(1))));
        let started = Instant::now();
        for sidecar in self.idle.drain(..) {
            let task = sidecar.run(self.shared.clone(), mode, gate.clone(), stop.clone());
            self.running.push(tokio::spawn(task));
        }
        self.stop = Some(stop_tx);
        let mut next_progress = started + PROGRESS_EVERY;
        let mut next_check = started;
        loop {
            let configured = self.shared.counters.configured.load(Relaxed);
            if configured >= total {
                return Ok(started.elapsed());
            }
            let now = Instant::now();
            if now >= next_check {
                check().with_context(|| {
                    format!("{configured} of {total} sidecars were fully configured")
                })?;
                next_check = now + CHECK_EVERY;
            }
            let elapsed = now - started;
            if elapsed >= EARLY_VERDICT && configured > 0 {
                // Waiting out the timeout only to fail would cost minutes of the run.
                let projected = elapsed.mul_f64(total as f64 / configured as f64);
                if projected > timeout.mul_f64(1.2) {
                    bail!(
                        "stopped early: {configured} of {total} sidecars fully configured after {:.0?} \
                         ({:.0}/s); all of them would take about {:.0?}, over the {timeout:?} allowed (--timeout)",
                        elapsed,
                        configured as f64 / elapsed.as_secs_f64(),
                        projected
                    );
                }
            }
            if now >= started + timeout {
                bail!(
                    "only {configured} of {total} sidecars fully configured after {timeout:?} \
                     ({} stream failures{})",
                    self.stream_failures(),
                    self.first_errors_suffix()
                );
            }
            if now >= next_progress {
                eprintln!(
                    "    ... {configured}/{total} fully configured after {:.0?} ({} stream failures so far)",
                    started.elapsed(),
                    self.stream_failures()
                );
                next_progress = now + PROGRESS_EVERY;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Ends every stream at once (each sidecar drops its connection) and waits for the tasks.
    pub async fn disconnect(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
        let deadline = Instant::now() + timeout;
        for task in self.running.drain(..) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, task).await {
                Ok(Ok(sidecar)) => self.idle.push(sidecar),
                Ok(Err(err)) => bail!("a sidecar task failed: {err}"),
                Err(_) => bail!("sidecars did not stop within {timeout:?}"),
            }
        }
        self.idle.sort_by_key(|s| s.index);
        Ok(())
    }

    /// Waits until `count` sidecars have ACKed the change being tracked, or `timeout`. Returns
    /// how many did. `check` is called every [`CHECK_EVERY`] and ends the wait with its error.
    pub async fn wait_for_acks(
        &self,
        count: usize,
        timeout: Duration,
        check: &dyn Fn() -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let started = Instant::now();
        let mut next_check = started;
        loop {
            let acked = self.shared.tracker.acked();
            if acked >= count || started.elapsed() >= timeout {
                return Ok(acked);
            }
            if Instant::now() >= next_check {
                check()?;
                next_check = Instant::now() + CHECK_EVERY;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until no response arrived for `quiet`, at most `timeout`.
    pub async fn wait_quiet(&self, quiet: Duration, timeout: Duration) {
        let started = Instant::now();
        let mut last = self.totals();
        let mut since = Instant::now();
        while started.elapsed() < timeout {
            tokio::time::sleep(POLL).await;
            let now = self.totals();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// Streams that failed (and were retried) since the fleet was made.
    pub fn stream_failures(&self) -> u64 {
        self.shared.counters.stream_failures.load(Relaxed)
    }

    /// `; first errors: ...` when there were errors.
    fn first_errors_suffix(&self) -> String {
        let errors = self.first_errors();
        if errors.is_empty() {
            errors
        } else {
            format!("; first errors: {errors}")
        }
    }

    pub fn first_errors(&self) -> String {
        self.shared
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("; ")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
        for task in &self.running {
            task.abort();
        }
    }
}
