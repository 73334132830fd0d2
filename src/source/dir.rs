//! A watched folder as the source, for deployments where a git-sync sidecar keeps it current.
//!
//! Change notifications (inotify) wake the source as soon as a file changes; once they pause
//! ([`QUIET`]), what changed is looked at and a fingerprint of the listing decides whether the
//! files are read and loaded as one revision. When the notifications named manifests in folders
//! already known, only those paths are looked at ([`manifest::Listing::updated`]); anything else
//! (a folder or symlink created or removed, an overflowed queue, a folder holding symlinks or
//! hard links) walks the folder, statting every manifest (no file is read). The walk is also
//! made every [`POLL`] (every [`POLL_WITH_NOTIFY`] while notifications work), which catches what
//! notifications miss: network file systems, and the symlink swap git-sync does above the
//! folder.
//! A revision is read whole: the files listed are read, the same paths are looked at once more
//! (or the folder walked again), and if the fingerprint moved the read is repeated, so a
//! half-written change is never served.

use std::collections::HashSet;
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
/// Past this many paths named by notifications since the last look, the folder is walked
/// instead (each path costs about what one file of a walk does).
const MAX_NOTICED: usize = 256;

pub struct DirSource {
    root: PathBuf,
    options: LoadOptions,
    publish: CandidateSender,
    metrics: Arc<Metrics>,
    /// The files of the previous read: unchanged ones are not read again.
    read: Arc<Mutex<ReadCache>>,
    parsed: Parsed,
}

/// How the folder is looked at: walked whole, or only at the paths notifications named since
/// `listing` (relative to the folder).
#[derive(Clone)]
enum Look {
    Walk,
    Paths(Arc<manifest::Listing>, Arc<[PathBuf]>),
}

/// The paths change notifications named since the folder was last looked at.
#[derive(Debug, Default)]
struct Noticed {
    paths: HashSet<PathBuf>,
    /// A notification named no path or reported lost events, or too many paths were named: the
    /// folder is walked.
    walk: bool,
}

impl Noticed {
    fn note(&mut self, event: notify::Result<notify::Event>) {
        match event {
            Ok(event) if !event.need_rescan() && !event.paths.is_empty() => {
                self.paths.extend(event.paths);
            }
            _ => self.walk = true,
        }
        if self.walk || self.paths.len() > MAX_NOTICED {
            self.walk = true;
            self.paths.clear();
        }
    }

    /// The paths named, relative to `roots` (the folder as watched, and as resolved); `None`
    /// when the folder must be walked.
    fn take(&mut self, roots: [&Path; 2]) -> Option<Vec<PathBuf>> {
        let walk = std::mem::take(&mut self.walk);
        let paths = std::mem::take(&mut self.paths);
        if walk {
            return None;
        }
        paths
            .iter()
            .map(|path| {
                roots
                    .iter()
                    .find_map(|root| path.strip_prefix(root).ok())
                    .map(Path::to_path_buf)
            })
            .collect()
    }
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
        // The listing behind `last_fingerprint`, while notifications can tell what changed
        // since it was made.
        let mut last_listing: Option<Arc<manifest::Listing>> = None;
        // The watch is on the folder the root resolves to; when a symlink swap moves that, the
        // watch is set up again. Dropping the watcher stops its notifications.
        // A failed watch is kept as `None` so it is not retried for the same folder.
        let mut watched: Option<(PathBuf, Option<RecommendedWatcher>)> = None;
        let mut notified = mpsc::channel(1).1;
        let mut noticed = Arc::new(Mutex::new(Noticed::default()));
        loop {
            if let Ok(target) = std::fs::canonicalize(&self.root) {
                if watched.as_ref().map(|(t, _)| t) != Some(&target) {
                    let (tx, rx) = mpsc::channel(1);
                    notified = rx;
                    noticed = Arc::default();
                    last_listing = None;
                    watched = Some((target, watch_folder(&self.root, noticed.clone(), tx)));
                }
            }
            let mut next_check = if watched.as_ref().is_some_and(|(_, w)| w.is_some()) {
                POLL_WITH_NOTIFY
            } else {
                POLL
            };
            let changed = match &watched {
                Some((target, Some(_))) => noticed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take([&self.root, target]),
                _ => None,
            };
            let look = match (last_listing.take(), changed) {
                (Some(base), Some(paths)) => Look::Paths(base, paths.into()),
                _ => Look::Walk,
            };
            let listing = self.look(look.clone()).await.map(Arc::new);
            let fingerprint = listing.as_ref().ok().map(|l| l.fingerprint());
            if fingerprint == last_fingerprint {
                last_listing = listing.ok();
            } else {
                match self.read_stable(listing.clone(), fingerprint, look).await {
                    Some(candidate) => {
                        last_fingerprint = fingerprint;
                        last_listing = listing.ok();
                        if last_revision.as_ref() != Some(&candidate.revision_id) {
                            debug!(revision = %candidate.revision_id, ok = candidate.loaded.is_ok(), "folder changed");
                            last_revision = Some(candidate.revision_id.clone());
                            self.publish.send_replace(Some(Arc::new(candidate)));
                        }
                    }
                    // Changing while read: look again soon, walking.
                    None => next_check = POLL,
                }
            }
            tokio::select! {
                // A poll walks the folder whatever the notifications said.
                _ = tokio::time::sleep(next_check) => last_listing = None,
                Some(()) = notified.recv() => settle(&mut notified).await,
                _ = crate::shutdown::drained(&mut shutdown) => return,
            }
        }
    }

    /// Looks at the folder (see [`look`]) off the async threads.
    async fn look(&self, how: Look) -> Result<manifest::Listing, Vec<manifest::Diagnostic>> {
        let root = self.root.clone();
        let options = self.options.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || look(&root, &options, &how, &metrics))
            .await
            .unwrap_or_else(|err| {
                Err(vec![manifest::Diagnostic::error(
                    manifest::Pos::default(),
                    format!("walking the manifest folder failed: {err}"),
                )])
            })
    }

    /// Reads the files `listing` found and loads them; `None` when the folder changed while
    /// being read (the next poll tries again). `before` is the listing's fingerprint, `how` the
    /// look that made it, made again after the read.
    async fn read_stable(
        &self,
        listing: Result<Arc<manifest::Listing>, Vec<manifest::Diagnostic>>,
        before: Option<u64>,
        how: Look,
    ) -> Option<Candidate> {
        let root = self.root.clone();
        let options = self.options.clone();
        let cache = self.read.clone();
        let metrics = self.metrics.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
            let files =
                listing.and_then(|listing| manifest::read_listed(&listing, &options, &mut cache));
            let again = look(&root, &options, &how, &metrics);
            (files, again.ok().map(|listing| listing.fingerprint()))
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

/// Lists the folder as `how` says: only the paths named, when [`manifest::Listing::updated`]
/// can tell from them alone, else by a walk ([`manifest::list_dir`]).
fn look(
    root: &Path,
    options: &LoadOptions,
    how: &Look,
    metrics: &Metrics,
) -> Result<manifest::Listing, Vec<manifest::Diagnostic>> {
    if let Look::Paths(base, paths) = how {
        if let Some(listing) = base.updated(paths.iter().map(PathBuf::as_path)) {
            metrics.dir_path_looks.fetch_add(1, Relaxed);
            return Ok(listing);
        }
    }
    metrics.dir_walks.fetch_add(1, Relaxed);
    manifest::list_dir(root, options)
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
fn watch_folder(
    root: &Path,
    noticed: Arc<Mutex<Noticed>>,
    tx: mpsc::Sender<()>,
) -> Option<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        // Reads (ours included) are not changes. A full channel already holds a wake-up.
        if event
            .as_ref()
            .is_ok_and(|e| matches!(e.kind, EventKind::Access(_)))
        {
            return;
        }
        noticed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note(event);
        let _ = tx.try_send(());
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
        let (candidates, shutdown, _) = start_counted(root);
        (candidates, shutdown)
    }

    /// [`start`], with the source's metrics.
    fn start_counted(
        root: &Path,
    ) -> (
        super::super::CandidateReceiver,
        watch::Sender<bool>,
        Arc<Metrics>,
    ) {
        let (publish, candidates) = watch::channel(None);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let source = DirSource::new(
            root.to_path_buf(),
            LoadOptions::default(),
            publish,
            metrics.clone(),
        );
        tokio::spawn(source.run(shutdown));
        (candidates, shutdown_tx, metrics)
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
    async fn a_notified_manifest_change_is_read_without_walking_the_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("echo.yaml"), SERVICE).expect("write");
        let (mut candidates, _shutdown, metrics) = start_counted(dir.path());
        let first = next_revision(&mut candidates, Duration::from_secs(5)).await;
        let counts = || {
            (
                metrics.dir_walks.load(Relaxed),
                metrics.dir_path_looks.load(Relaxed),
            )
        };

        // Well before the next poll walks it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (walks, looks) = counts();
        std::fs::write(
            dir.path().join("echo.yaml"),
            SERVICE.replace("port: 80", "port: 81"),
        )
        .expect("write");
        let second = next_revision(&mut candidates, POLL_WITH_NOTIFY / 2).await;
        assert_ne!(first, second);
        let (walks_now, looks_now) = counts();
        assert_eq!(walks_now, walks, "the folder was walked");
        // The look before the read and the one after it.
        assert!(looks_now >= looks + 2, "{looks} -> {looks_now}");

        // A new folder is walked, and what it holds is served.
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::create_dir(dir.path().join("more")).expect("mkdir");
        std::fs::write(
            dir.path().join("more/other.yaml"),
            SERVICE.replace("name: echo", "name: other"),
        )
        .expect("write");
        let third = next_revision(&mut candidates, POLL_WITH_NOTIFY / 2).await;
        assert_ne!(second, third);
        assert!(counts().0 > walks_now, "the new folder was not walked");
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
