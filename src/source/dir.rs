//! A watched folder as the source, for deployments where a git-sync sidecar keeps it current.
//!
//! The folder is polled: a cheap fingerprint of every manifest's path, size and modification
//! time is taken every [`POLL`]; when it moves, the files are read and loaded as one revision.
//! Polling works the same on every file system and through the symlink swap git-sync does,
//! where change notifications are easily missed. A revision is read whole: if the fingerprint
//! moved while reading, the read is repeated, so a half-written change is never served.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{debug, warn};
use xxhash_rust::xxh3::Xxh3;

use super::{Candidate, CandidateSender};
use crate::manifest::{self, LoadOptions};
use crate::metrics::Metrics;

/// How often the folder is checked; changes are applied well within a second.
pub const POLL: Duration = Duration::from_millis(200);

pub struct DirSource {
    root: PathBuf,
    options: LoadOptions,
    publish: CandidateSender,
    metrics: Arc<Metrics>,
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
        }
    }

    /// Polls until `shutdown` flips to true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last_fingerprint = None;
        let mut last_revision = None;
        loop {
            let fingerprint = fingerprint_blocking(self.root.clone()).await;
            if fingerprint != last_fingerprint {
                if let Some(candidate) = self.read_stable(fingerprint).await {
                    last_fingerprint = fingerprint;
                    if last_revision.as_ref() != Some(&candidate.revision_id) {
                        debug!(revision = %candidate.revision_id, ok = candidate.loaded.is_ok(), "folder changed");
                        last_revision = Some(candidate.revision_id.clone());
                        self.publish.send_replace(Some(Arc::new(candidate)));
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = crate::shutdown::drained(&mut shutdown) => return,
            }
        }
    }

    /// Reads and loads the folder; `None` when it kept changing while being read (the next poll
    /// tries again).
    async fn read_stable(&self, before: Option<u64>) -> Option<Candidate> {
        let root = self.root.clone();
        let options = self.options.clone();
        let read = tokio::task::spawn_blocking(move || {
            let files = manifest::read_dir(&root, &options);
            let after = fingerprint(&root);
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
                let loaded =
                    tokio::task::spawn_blocking(move || manifest::load_files(&files, &options))
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

async fn fingerprint_blocking(root: PathBuf) -> Option<u64> {
    tokio::task::spawn_blocking(move || fingerprint(&root))
        .await
        .ok()
        .flatten()
}

/// A hash over the path, size and modification time of every entry below `root`, following
/// the same skipping rules as loading (hidden entries are skipped). `None` when the root is
/// unreadable.
fn fingerprint(root: &Path) -> Option<u64> {
    let mut hasher = Xxh3::new();
    let mut stack = vec![root.to_path_buf()];
    let mut entries = 0usize;
    // The folder's own metadata first, so a swapped symlink target is noticed.
    let meta = std::fs::metadata(root).ok()?;
    hash_meta(&mut hasher, root, &meta);
    while let Some(dir) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut children: Vec<_> = read.filter_map(Result::ok).collect();
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let name = child.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            entries += 1;
            // Loading enforces its own limits; this bound only keeps a runaway tree from
            // making every poll expensive.
            if entries > 200_000 {
                return Some(hasher.digest());
            }
            let path = child.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            hash_meta(&mut hasher, &path, &meta);
            if meta.is_dir() && !child.file_type().is_ok_and(|t| t.is_symlink()) {
                stack.push(path);
            }
        }
    }
    Some(hasher.digest())
}

fn hash_meta(hasher: &mut Xxh3, path: &Path, meta: &std::fs::Metadata) {
    hasher.update(path.as_os_str().as_encoded_bytes());
    hasher.update(&meta.len().to_le_bytes());
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    hasher.update(&modified.to_le_bytes());
}
