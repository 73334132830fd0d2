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
    pub fn new(protocol: Protocol, xds: SocketAddr, sidecars: usize) -> anyhow::Result<Fleet> {
        let endpoint = Endpoint::from_shared(format!("http://{xds}"))
            .context("the xDS address as a URI")?
            .connect_timeout(Duration::from_secs(20))
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
    pub async fn connect(
        &mut self,
        mode: Mode,
        concurrency: Option<usize>,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        if !self.running.is_empty() {
            bail!("connect while {} sidecars still run", self.running.len());
        }
        let total = self.idle.len() as u64;
        let counters = &self.shared.counters;
        counters.configured.store(0, Relaxed);
        let (stop_tx, stop) = watch::channel(false);
        let gate = concurrency.map(|n| Arc::new(Semaphore::new(n.max(1))));
        let started = Instant::now();
        for sidecar in self.idle.drain(..) {
            let task = sidecar.run(self.shared.clone(), mode, gate.clone(), stop.clone());
            self.running.push(tokio::spawn(task));
        }
        self.stop = Some(stop_tx);
        let mut next_progress = started + PROGRESS_EVERY;
        loop {
            let configured = counters.configured.load(Relaxed);
            if configured >= total {
                return Ok(started.elapsed());
            }
            let now = Instant::now();
            if now >= started + timeout {
                bail!("only {configured} of {total} sidecars fully configured after {timeout:?}");
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
    /// how many did.
    pub async fn wait_for_acks(&self, count: usize, timeout: Duration) -> usize {
        let started = Instant::now();
        loop {
            let acked = self.shared.tracker.acked();
            if acked >= count || started.elapsed() >= timeout {
                return acked;
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
