//! The publisher task: the one owner of the served configuration. It compiles the newest
//! candidate revision with the current sidecar workloads, and publishes the result only when it
//! compiled: a revision that fails to load or compile is reported and the last good one stays.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::compile::{self, CompileCache, CompiledRevision, Mesh};
use crate::manifest::{Diagnostic, Revision};
use crate::metrics::Metrics;
use crate::registry::Workloads;
use crate::source::{Candidate, CandidateReceiver};
use crate::xds::resource::SnapshotView;
use crate::xds::server::Streams;

/// What `/debug/source` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceStatus {
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// The revision being served; `None` before the first one compiled.
    pub revision: Option<String>,
    /// When the served revision was published (RFC 3339).
    pub synced_at: Option<String>,
    /// The newest refused revision, while no newer good one replaced it.
    pub last_error: Option<RevisionError>,
    /// Findings that did not refuse the served revision.
    pub warnings: Vec<Finding>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RevisionError {
    pub revision: String,
    pub seen_at: String,
    pub errors: Vec<Finding>,
}

/// One diagnostic in JSON form.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub severity: crate::manifest::Severity,
    pub message: String,
}

impl From<&Diagnostic> for Finding {
    fn from(d: &Diagnostic) -> Finding {
        Finding {
            file: d.pos.file.to_string(),
            line: d.pos.line,
            column: d.pos.column,
            severity: d.severity,
            message: d.message.clone(),
        }
    }
}

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

pub type ViewSender = watch::Sender<Option<Arc<dyn SnapshotView>>>;

pub struct Publisher {
    pub candidates: CandidateReceiver,
    pub workloads: watch::Receiver<Arc<Workloads>>,
    pub view: ViewSender,
    pub status: watch::Sender<SourceStatus>,
    pub metrics: Arc<Metrics>,
    pub streams: Arc<Streams>,
    /// How long to gather reconnecting sidecars before the first publish.
    pub warmup: Warmup,
    /// What compiling the previous revisions made of their parts; locked by one compile at a
    /// time, on the blocking pool.
    pub compile_cache: Arc<Mutex<CompileCache>>,
}

/// The start-up wait before the first publish.
///
/// Endpoints come partly from connected sidecars, and after a restart Sluice knows none of them
/// until they reconnect. Publishing at once would hand the first reconnecting sidecar endpoint
/// sets without the others, which drains traffic to them. Sidecars keep their last config while
/// they wait, so waiting costs nothing: the first publish happens once `min` has passed and no
/// new sidecar endpoint appeared for `settle`, and at the latest at `max`.
#[derive(Clone, Copy, Debug)]
pub struct Warmup {
    pub min: Duration,
    pub settle: Duration,
    pub max: Duration,
}

impl Publisher {
    /// Waits out the start-up [`Warmup`], watching sidecar endpoints arrive.
    async fn warm_up(&mut self, started: tokio::time::Instant) {
        let max = started + self.warmup.max;
        let mut quiet_from = started;
        loop {
            let until = (started + self.warmup.min)
                .max(quiet_from + self.warmup.settle)
                .min(max);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                changed = self.workloads.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    quiet_from = tokio::time::Instant::now();
                }
            }
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // The last revision that compiled, and the mesh served from it.
        let mut good: Option<Arc<CompiledRevision>> = None;
        let mut served: Option<Arc<Mesh>> = None;
        let started = tokio::time::Instant::now();
        tokio::select! {
            _ = self.warm_up(started) => {}
            _ = crate::shutdown::drained(&mut shutdown) => return,
        }
        info!(waited = ?started.elapsed(), sidecars = self.workloads.borrow().by_node.len(), "start-up warm-up over");
        loop {
            tokio::select! {
                _ = crate::shutdown::drained(&mut shutdown) => return,
                changed = self.candidates.changed() => {
                    if changed.is_err() { return; }
                    let candidate = self.candidates.borrow_and_update().clone();
                    if let Some(candidate) = candidate {
                        self.handle_candidate(&candidate, &mut good, &mut served).await;
                    }
                }
                changed = self.workloads.changed() => {
                    if changed.is_err() { return; }
                    if let Some(compiled) = good.clone() {
                        self.update_endpoints(&compiled, &mut served).await;
                    }
                }
            }
        }
    }

    /// The sidecars changed: only the endpoints of the ports selecting a sidecar that came,
    /// changed or went are recomputed, and nothing is published when no endpoint moved (a
    /// sidecar that no Service selects came or went).
    async fn update_endpoints(
        &self,
        compiled: &Arc<CompiledRevision>,
        served: &mut Option<Arc<Mesh>>,
    ) {
        let workloads = self.workloads.borrow().clone();
        let compiled = compiled.clone();
        let started = Instant::now();
        let previous = served.clone();
        let built = tokio::task::spawn_blocking(move || {
            compiled.mesh_after(&workloads, previous.as_deref())
        });
        let mesh = match built.await {
            Ok(mesh) => Arc::new(mesh),
            // Only a bug panics the endpoint computation; keep serving what works.
            Err(error) => {
                warn!(%error, "computing endpoints failed; the served endpoints stay");
                return;
            }
        };
        let unchanged = served.as_ref().is_some_and(|s| s.serves_the_same_as(&mesh));
        self.metrics
            .record_endpoint_update(started.elapsed().as_micros() as u64, !unchanged);
        if unchanged {
            debug!("sidecars changed, endpoints did not");
        } else {
            self.publish(mesh, served);
        }
    }

    async fn handle_candidate(
        &mut self,
        candidate: &Candidate,
        good: &mut Option<Arc<CompiledRevision>>,
        served: &mut Option<Arc<Mesh>>,
    ) {
        let result = match &candidate.loaded {
            Ok(revision) => self
                .compile(&candidate.revision_id, revision, served.clone())
                .await
                .map(|mesh| (revision.clone(), mesh)),
            Err(errors) => Err(errors.clone()),
        };
        match result {
            Ok((revision, mesh)) => {
                info!(revision = %candidate.revision_id, services = revision.services.len(), "serving revision");
                let warnings = revision.warnings.iter().map(Finding::from).collect();
                *good = Some(mesh.compiled().clone());
                self.metrics.revisions_applied.fetch_add(1, Relaxed);
                self.publish(mesh, served);
                self.status.send_modify(|status| {
                    status.revision = Some(candidate.revision_id.clone());
                    status.synced_at = Some(rfc3339(SystemTime::now()));
                    status.last_error = None;
                    status.warnings = warnings;
                });
            }
            Err(errors) => {
                self.metrics.revisions_refused.fetch_add(1, Relaxed);
                let first = errors.first().map(ToString::to_string).unwrap_or_default();
                warn!(revision = %candidate.revision_id, errors = errors.len(), first = %first, "revision refused; the last good revision stays");
                for error in &errors {
                    warn!(revision = %candidate.revision_id, file = %error.pos.file, line = error.pos.line, column = error.pos.column, message = %error.message, "revision error");
                }
                self.status.send_modify(|status| {
                    status.last_error = Some(RevisionError {
                        revision: candidate.revision_id.clone(),
                        seen_at: rfc3339(candidate.seen_at),
                        errors: errors.iter().map(Finding::from).collect(),
                    });
                });
            }
        }
    }

    /// Compiles off the async threads and records how long it took.
    async fn compile(
        &self,
        id: &str,
        revision: &Arc<Revision>,
        served: Option<Arc<Mesh>>,
    ) -> Result<Arc<Mesh>, Vec<Diagnostic>> {
        let workloads = self.workloads.borrow().clone();
        let id = id.to_string();
        let revision = revision.clone();
        let cache = self.compile_cache.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            compile::compile_revision_cached(&id, &revision, &mut cache)
                .map(|compiled| compiled.mesh_after(&workloads, served.as_deref()))
        })
        .await
        .unwrap_or_else(|err| {
            Err(vec![Diagnostic::error(
                Default::default(),
                format!("compiling the revision failed: {err}"),
            )])
        });
        self.metrics
            .record_compile(started.elapsed().as_micros() as u64);
        result.map(Arc::new)
    }

    fn publish(&self, mesh: Arc<Mesh>, served: &mut Option<Arc<Mesh>>) {
        let published_at = Instant::now();
        // The replaced mesh is dropped by the convergence task below once the streams moved
        // on (or after its timeout): freeing thousands of resources costs milliseconds the
        // streams should spend sending the new one.
        let retired = (
            served.replace(mesh.clone()),
            self.view
                .send_replace(Some(mesh.clone() as Arc<dyn SnapshotView>)),
        );
        // Convergence: from publishing to every open stream having ACKed what it was sent.
        // Checked when streams make progress, at most once per CONVERGENCE_CHECK: a check looks
        // at every stream.
        let streams = self.streams.clone();
        let metrics = self.metrics.clone();
        let mut view = self.view.subscribe();
        let mut progress = streams.progress();
        tokio::spawn(async move {
            let _retired = retired;
            view.borrow_and_update();
            let deadline = tokio::time::Instant::from_std(published_at + CONVERGENCE_TIMEOUT);
            loop {
                progress.borrow_and_update();
                let checked_at = tokio::time::Instant::now();
                if streams.all_synced(mesh.as_ref()) {
                    metrics.record_convergence(published_at.elapsed().as_micros() as u64);
                    return;
                }
                tokio::select! {
                    changed = progress.changed() => if changed.is_err() { return },
                    // Superseded: the next publish measures its own convergence.
                    _ = view.changed() => return,
                    _ = tokio::time::sleep_until(deadline) => return,
                }
                tokio::time::sleep_until(checked_at + CONVERGENCE_CHECK).await;
                if view.has_changed().unwrap_or(true) {
                    return;
                }
            }
        });
    }
}

/// How long convergence of one publish is waited for.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest time between two convergence checks.
const CONVERGENCE_CHECK: Duration = Duration::from_millis(5);
