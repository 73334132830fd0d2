//! A watched folder as the source, for deployments where a git-sync sidecar keeps it current.
//!
//! Change notifications (inotify) wake the source as soon as a file changes; once they pause
//! ([`QUIET`]), a walk of the folder that stats every manifest (no file is read) decides, by a
//! fingerprint of what it saw, whether the files are read and loaded as one revision. The walk
//! is also made every [`POLL`] (every [`POLL_WITH_NOTIFY`] while notifications work), which
//! catches what notifications miss: network file systems, and the symlink swap git-sync does
//! above the folder.
//! A revision is read whole: the files the walk found are read, the folder is walked once more,
//! and if the fingerprint moved the read is repeated, so a half-written change is never served.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};
use xxhash_rust::xxh3::Xxh3;

use super::{Candidate, CandidateSender, Parsed};
use crate::manifest::{self, LoadOptions, ReadCache};
use crate::metrics::Metrics;

/// How often the folder is checked without change notifications; changes are applied well
/// within a second.
pub const POLL: Duration = Duration::from_millis(200);
/// How often the folder is checked while change notifications work.
pub const POLL_WITH_NOTIFY: Duration = Duration::from_secs(2);
/// After a notification, the folder is walked once no other arrived for this long: the writes
/// of an editor's save or a checkout come back to back and are taken together, and a single
/// change waits about this long.
const QUIET: Duration = Duration::from_millis(2);
/// The longest a stream of notifications delays the walk (a folder written to without pause).
const SETTLE_MAX: Duration = Duration::from_millis(50);

pub struct DirSource {
    root: PathBuf,
    options: LoadOptions,
    publish: CandidateSender,
    metrics: Arc<Metrics>,
    /// The files of the previous read: unchanged ones are not read again.
    read: Arc<Mutex<ReadCache>>,
    parsed: Parsed,
}

impl DirSource {
    pub fn new(
        root: PathBuf,
        options: LoadOptions,
        publish: CandidateSender,
        metrics: Arc<Metrics>,
    ) -> DirSource {
        DirSource {
            root,
            options,
            publish,
            metrics,
            read: Arc::default(),
            parsed: Parsed::default(),
        }
    }

    /// Watches the folder until `shutdown` flips to true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last_fingerprint = None;
        let mut last_revision = None;
        // The watch is on the folder the root resolves to; when a symlink swap moves that, the
        // watch is set up again. Dropping the watcher stops its notifications.
        // A failed watch is kept as `None` so it is not retried for the same folder.
        let mut watched: Option<(PathBuf, Option<RecommendedWatcher>)> = None;
        let mut notified = mpsc::channel(1).1;
        loop {
            if let Ok(target) = std::fs::canonicalize(&self.root) {
                if watched.as_ref().map(|(t, _)| t) != Some(&target) {
                    let (tx, rx) = mpsc::channel(1);
                    notified = rx;
                    watched = Some((target, watch_folder(&self.root, tx)));
                }
            }
            let mut next_check = if watched.as_ref().is_some_and(|(_, w)| w.is_some()) {
                POLL_WITH_NOTIFY
            } else {
                POLL
            };
            let listing = self.list().await;
            let fingerprint = listing.as_ref().ok().map(manifest::Listing::fingerprint);
            if fingerprint != last_fingerprint {
                match self.read_stable(listing, fingerprint).await {
                    Some(candidate) => {
                        last_fingerprint = fingerprint;
                        if last_revision.as_ref() != Some(&candidate.revision_id) {
                            debug!(revision = %candidate.revision_id, ok = candidate.loaded.is_ok(), "folder changed");
                            last_revision = Some(candidate.revision_id.clone());
                            self.publish.send_replace(Some(Arc::new(candidate)));
                        }
                    }
                    // Changing while read: look again soon.
                    None => next_check = POLL,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(next_check) => {}
                Some(()) = notified.recv() => settle(&mut notified).await,
                _ = crate::shutdown::drained(&mut shutdown) => return,
            }
        }
    }

    /// Walks the folder (see [`manifest::list_dir`]).
    async fn list(&self) -> Result<manifest::Listing, Vec<manifest::Diagnostic>> {
        let root = self.root.clone();
        let options = self.options.clone();
        tokio::task::spawn_blocking(move || manifest::list_dir(&root, &options))
            .await
            .unwrap_or_else(|err| {
                Err(vec![manifest::Diagnostic::error(
                    manifest::Pos::default(),
                    format!("walking the manifest folder failed: {err}"),
                )])
            })
    }

    /// Reads the files `listing` found and loads them; `None` when the folder changed while
    /// being read (the next poll tries again). `before` is the listing's fingerprint.
    async fn read_stable(
        &self,
        listing: Result<manifest::Listing, Vec<manifest::Diagnostic>>,
        before: Option<u64>,
    ) -> Option<Candidate> {
        let root = self.root.clone();
        let options = self.options.clone();
        let cache = self.read.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            let files =
                listing.and_then(|listing| manifest::read_listed(listing, &options, &mut cache));
            let after = manifest::list_dir(&root, &options)
                .ok()
                .map(|listing| listing.fingerprint());
            (files, after)
        })
        .await;
        let (files, after) = match read {
            Ok(read) => read,
            Err(err) => {
                warn!(error = %err, "reading the manifest folder failed");
                return None;
            }
        };
        if after != before {
            debug!("folder changed while it was read; reading again at the next poll");
            return None;
        }
        let seen_at = SystemTime::now();
        let candidate = match files {
            Ok(files) => {
                let revision_id = revision_id(&files);
                let options = self.options.clone();
                let parsed = self.parsed.clone();
                let loaded = tokio::task::spawn_blocking(move || parsed.load(&files, &options))
                    .await
                    .unwrap_or_else(|err| {
                        Err(vec![manifest::Diagnostic::error(
                            manifest::Pos::default(),
                            format!("loading the revision failed: {err}"),
                        )])
                    });
                Candidate {
                    revision_id,
                    loaded: loaded.map(Arc::new),
                    seen_at,
                }
            }
            Err(errors) => {
                self.metrics.source_errors.fetch_add(1, Relaxed);
                Candidate {
                    revision_id: format!("dir-unreadable-{:016x}", before.unwrap_or(0)),
                    loaded: Err(errors),
                    seen_at,
                }
            }
        };
        Some(candidate)
    }
}

/// Waits, after a notification, until none arrived for [`QUIET`], or [`SETTLE_MAX`] in all.
/// The channel holds at most one wake-up, however many notifications it stands for.
async fn settle(notified: &mut mpsc::Receiver<()>) {
    let until = tokio::time::Instant::now() + SETTLE_MAX;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(QUIET.min(left)).await;
        if notified.try_recv().is_err() || tokio::time::Instant::now() >= until {
            return;
        }
    }
}

/// Change notifications for everything below `root` (and for `root` itself being replaced when
/// it is a symlink, as git-sync swaps it). `None` when the platform or its limits refuse; the
/// folder is then polled more often.
fn watch_folder(root: &Path, tx: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        // Reads (ours included) are not changes. A full channel already holds a wake-up.
        if event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_))) {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            warn!(%error, poll = ?POLL, "no change notifications for the manifest folder; polling it");
            return None;
        }
    };
    if let Err(error) = watcher.watch(root, RecursiveMode::Recursive) {
        warn!(%error, folder = %root.display(), poll = ?POLL, "cannot watch the manifest folder; polling it");
        return None;
    }
    let is_symlink = std::fs::symlink_metadata(root).is_ok_and(|m| m.file_type().is_symlink());
    if let (true, Some(parent)) = (is_symlink, root.parent()) {
        if let Err(error) = watcher.watch(parent, RecursiveMode::NonRecursive) {
            debug!(%error, "cannot watch the folder above the manifest symlink; polling catches its swaps");
        }
    }
    Some(watcher)
}

/// `dir-` and a hash of every file's path and contents: equal folders, equal ids.
pub fn revision_id(files: &[manifest::SourceFile]) -> String {
    let mut hasher = Xxh3::new();
    for file in files {
        hasher.update(file.path.as_bytes());
        hasher.update(&[0]);
        hasher.update(&(file.bytes.len() as u64).to_le_bytes());
        hasher.update(&file.bytes);
    }
    format!("dir-{:016x}", hasher.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\nspec:\n  ports:\n  - port: 80\n";

    /// Starts a source on `root` and returns its candidates.
    fn start(root: &Path) -> (super::super::CandidateReceiver, watch::Sender<bool>) {
        let (publish, candidates) = watch::channel(None);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let source = DirSource::new(
            root.to_path_buf(),
            LoadOptions::default(),
            publish,
            Arc::new(Metrics::default()),
        );
        tokio::spawn(source.run(shutdown));
        (candidates, shutdown_tx)
    }

    async fn next_revision(
        candidates: &mut super::super::CandidateReceiver,
        within: Duration,
    ) -> String {
        tokio::time::timeout(within, candidates.changed())
            .await
            .expect("a new revision in time")
            .expect("source running");
        let candidate = candidates.borrow_and_update().clone().expect("a candidate");
        assert!(candidate.loaded.is_ok(), "the folder loads");
        candidate.revision_id.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn notifications_are_taken_together_until_the_folder_is_quiet() {
        let (tx, mut rx) = mpsc::channel(1);
        let started = tokio::time::Instant::now();
        // Writes 1 ms apart for 10 ms (the channel keeps one wake-up for them all).
        let writer = tokio::spawn(async move {
            for _ in 0..10 {
                let _ = tx.try_send(());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tx
        });
        settle(&mut rx).await;
        let waited = started.elapsed();
        let tick = Duration::from_millis(1);
        assert!(
            waited >= Duration::from_millis(10),
            "walked mid-burst after {waited:?}"
        );
        assert!(
            waited <= Duration::from_millis(10) + QUIET + tick,
            "{waited:?}"
        );

        // A lone notification: walked after QUIET, not later.
        let tx = writer.await.expect("writer");
        while rx.try_recv().is_ok() {}
        let started = tokio::time::Instant::now();
        settle(&mut rx).await;
        let waited = started.elapsed();
        assert!(waited >= QUIET && waited <= QUIET + tick, "{waited:?}");

        // Without a pause, at most SETTLE_MAX.
        let endless = tokio::spawn(async move {
            loop {
                if tx.send(()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        });
        let started = tokio::time::Instant::now();
        settle(&mut rx).await;
        let waited = started.elapsed();
        assert!(
            waited >= SETTLE_MAX && waited <= SETTLE_MAX + tick,
            "{waited:?}"
        );
        endless.abort();
    }

    #[tokio::test]
    async fn a_change_is_noticed_at_once_not_at_the_next_poll() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("echo.yaml"), SERVICE).expect("write");
        let (mut candidates, _shutdown) = start(dir.path());
        let first = next_revision(&mut candidates, Duration::from_secs(5)).await;

        // Past the first check, far from the next poll: only a notification can explain a
        // quick pick-up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let changed = SERVICE.replace("port: 80", "port: 81");
        std::fs::write(dir.path().join("echo.yaml"), changed).expect("write");
        let second = next_revision(&mut candidates, POLL_WITH_NOTIFY / 2).await;
        assert_ne!(first, second);
    }

    #[tokio::test]
    async fn a_swapped_symlink_is_followed_and_watched_again() {
        let base = tempfile::tempdir().expect("temp dir");
        for rev in ["rev-a", "rev-b"] {
            std::fs::create_dir(base.path().join(rev)).expect("mkdir");
            std::fs::write(base.path().join(rev).join("echo.yaml"), SERVICE).expect("write");
        }
        std::fs::write(
            base.path().join("rev-b/echo.yaml"),
            SERVICE.replace("port: 80", "port: 82"),
        )
        .expect("write");
        let link = base.path().join("current");
        std::os::unix::fs::symlink(base.path().join("rev-a"), &link).expect("symlink");
        let (mut candidates, _shutdown) = start(&link);
        let a = next_revision(&mut candidates, Duration::from_secs(5)).await;

        // The git-sync swap: a new link renamed over the old one.
        let new_link = base.path().join("current.new");
        std::os::unix::fs::symlink(base.path().join("rev-b"), &new_link).expect("symlink");
        std::fs::rename(&new_link, &link).expect("swap");
        let b = next_revision(&mut candidates, POLL_WITH_NOTIFY / 2).await;
        assert_ne!(a, b);

        // And the new target is watched.
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(
            base.path().join("rev-b/echo.yaml"),
            SERVICE.replace("port: 80", "port: 83"),
        )
        .expect("write");
        let c = next_revision(&mut candidates, POLL_WITH_NOTIFY / 2).await;
        assert_ne!(b, c);
    }
}
