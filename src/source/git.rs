//! A Git branch as the source: `sluice serve --repo`.
//!
//! The task fetches the branch every `--poll-interval` (or at once when [`GitSource::trigger`]
//! is notified, e.g. by a push webhook), and when the branch moved, reads the new commit's
//! manifests straight from the object database and publishes them as one [`Candidate`] whose
//! id is the full commit SHA. The publisher and everything downstream are the same as for a
//! folder. A commit is read whole and immutable by construction: there is no worktree to be
//! half-updated.
//!
//! A fetch that fails (remote unreachable, branch deleted, authentication refused) changes
//! nothing that is served: the last good revision stays, the failure is shown in
//! `/debug/source` under `fetch`, counted in `/metrics`, logged once (then at debug level while
//! it repeats), and the fetch is retried after 1 s, doubling up to the poll interval (at most
//! 60 s); the first success logs the recovery.
//!
//! # Layout
//! - [`remote`]: `--repo` parsing and sanitising, credentials, SSH options, the fetch itself.
//! - [`tree`]: a commit's tree to manifest files, with the folder rules and limits.

pub mod remote;
pub mod tree;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gix::ObjectId;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

pub use remote::{Credentials, FetchError, Repo, RepoError, Ssh};

use super::{Candidate, CandidateSender, FetchStatus, Parsed};
use crate::manifest::{Diagnostic, LoadOptions, Pos};
use crate::metrics::Metrics;
use crate::publisher::rfc3339;

/// A fetch that takes longer is abandoned (and interrupted) and counts as failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// The first retry after a failure; each further failure doubles it up to [`MAX_BACKOFF`] or
/// the poll interval, whichever is shorter.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What `sluice serve --repo` follows.
#[derive(Debug)]
pub struct GitOptions {
    pub repo: Repo,
    pub branch: String,
    /// `--path`, split into its folder names; empty for the repository root.
    pub path: Vec<String>,
    pub poll_interval: Duration,
    /// `--cache-dir`; `None`: a temporary folder removed when the process exits.
    pub cache_dir: Option<PathBuf>,
    pub credentials: Credentials,
    pub ssh: Ssh,
    pub load: LoadOptions,
}

/// Splits `--path` into folder names; `.` and empty parts are dropped, `..` is refused.
pub fn split_path(path: &std::path::Path) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::Normal(name) => parts.push(
                name.to_str()
                    .ok_or_else(|| format!("--path {:?} is not valid UTF-8", path.display()))?
                    .to_string(),
            ),
            std::path::Component::CurDir | std::path::Component::RootDir => {}
            _ => {
                return Err(format!(
                    "--path {:?} must be a folder inside the repository",
                    path.display().to_string()
                ))
            }
        }
    }
    Ok(parts)
}

pub struct GitSource {
    fetcher: Arc<remote::Fetcher>,
    scope: Arc<Vec<String>>,
    load: LoadOptions,
    poll_interval: Duration,
    publish: CandidateSender,
    status: watch::Sender<FetchStatus>,
    metrics: Arc<Metrics>,
    trigger: Arc<Notify>,
    parsed: Parsed,
    /// The default cache: removed when the source is dropped.
    _cache: Option<tempfile::TempDir>,
}

impl GitSource {
    pub fn new(
        options: GitOptions,
        publish: CandidateSender,
        status: watch::Sender<FetchStatus>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<GitSource> {
        let (cache, temp) = match &options.cache_dir {
            Some(dir) => (dir.join(cache_name(&options.repo, &options.branch)), None),
            None if options.repo.is_local() => (PathBuf::new(), None),
            None => {
                let temp = tempfile::Builder::new().prefix("sluice-git-").tempdir()?;
                (temp.path().join("cache.git"), Some(temp))
            }
        };
        let fetcher = remote::Fetcher {
            repo: options.repo,
            branch: options.branch,
            cache,
            credentials: options.credentials,
            ssh: options.ssh,
        };
        Ok(GitSource {
            fetcher: Arc::new(fetcher),
            scope: Arc::new(options.path),
            load: options.load,
            poll_interval: options.poll_interval,
            publish,
            status,
            metrics,
            trigger: Arc::new(Notify::new()),
            parsed: Parsed::default(),
            _cache: temp,
        })
    }

    /// Notify it to fetch now instead of at the next poll (a push webhook does).
    pub fn trigger(&self) -> Arc<Notify> {
        self.trigger.clone()
    }

    /// Fetches until `shutdown` flips to true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let repo = self.fetcher.repo.display.clone();
        let branch = self.fetcher.branch.clone();
        info!(repo = %repo, branch = %branch, path = %self.scope.join("/"), poll_interval = ?self.poll_interval, "following git branch");
        let mut last: Option<ObjectId> = None;
        let mut failures: u32 = 0;
        let mut last_error: Option<String> = None;
        loop {
            let attempt_at = SystemTime::now();
            let result = self.attempt(last).await;
            let wait = match result {
                Ok(fetched) => {
                    self.metrics.git_fetches_ok.fetch_add(1, Relaxed);
                    self.metrics.record_git_success(attempt_at);
                    if failures > 0 {
                        info!(repo = %repo, branch = %branch, failures, "git fetch recovered");
                    }
                    failures = 0;
                    last_error = None;
                    if let Some((commit, candidate)) = fetched {
                        debug!(repo = %repo, commit = %commit, ok = candidate.loaded.is_ok(), "branch moved");
                        last = Some(commit);
                        self.publish.send_replace(Some(Arc::new(candidate)));
                    }
                    self.poll_interval
                }
                Err(err) => {
                    self.metrics.git_fetches_error.fetch_add(1, Relaxed);
                    self.metrics.source_errors.fetch_add(1, Relaxed);
                    failures = failures.saturating_add(1);
                    let message = err.to_string();
                    // The remote is away at start-up, but an earlier run left its commit in
                    // --cache-dir: serve that rather than nothing, and keep trying.
                    let cached = match last {
                        None => self.read_cached().await,
                        Some(_) => None,
                    };
                    if let Some((commit, candidate)) = cached {
                        warn!(repo = %repo, branch = %branch, commit = %commit, error = %message, "git fetch failed at start-up; serving the commit an earlier run fetched, and retrying");
                        last = Some(commit);
                        self.publish.send_replace(Some(Arc::new(candidate)));
                    } else if last_error.as_deref() != Some(message.as_str()) {
                        warn!(repo = %repo, branch = %branch, failures, error = %message, "git fetch failed; serving the last good revision and retrying");
                    } else {
                        debug!(repo = %repo, branch = %branch, failures, error = %message, "git fetch failed again");
                    }
                    last_error = Some(message);
                    backoff(failures, self.poll_interval)
                }
            };
            let next = SystemTime::now() + wait;
            self.status.send_modify(|status| {
                status.last_fetch_at = Some(rfc3339(attempt_at));
                if failures == 0 {
                    status.last_success_at = Some(rfc3339(attempt_at));
                }
                if let Some(commit) = last {
                    status.fetched_revision = Some(commit.to_string());
                }
                status.consecutive_failures = failures;
                status.last_error = last_error.clone();
                status.next_attempt_at = Some(rfc3339(next));
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.trigger.notified() => debug!("fetch triggered"),
                _ = crate::shutdown::drained(&mut shutdown) => return,
            }
        }
    }

    /// The commit an earlier run fetched into `--cache-dir`, read and loaded.
    async fn read_cached(&self) -> Option<(ObjectId, Candidate)> {
        let fetcher = self.fetcher.clone();
        let scope = self.scope.clone();
        let load = self.load.clone();
        let parsed = self.parsed.clone();
        tokio::task::spawn_blocking(move || {
            let (commit, repo) = fetcher.cached()?;
            Some((commit, read_commit(&repo, commit, &scope, &load, &parsed)))
        })
        .await
        .ok()
        .flatten()
    }

    /// One fetch, off the async threads. `Ok(None)`: the branch did not move since `last`.
    async fn attempt(
        &self,
        last: Option<ObjectId>,
    ) -> Result<Option<(ObjectId, Candidate)>, FetchError> {
        let fetcher = self.fetcher.clone();
        let scope = self.scope.clone();
        let load = self.load.clone();
        let parsed = self.parsed.clone();
        let interrupt = Arc::new(AtomicBool::new(false));
        let handle = tokio::task::spawn_blocking({
            let interrupt = interrupt.clone();
            move || sync(&fetcher, &scope, (&load, &parsed), last, &interrupt)
        });
        match tokio::time::timeout(FETCH_TIMEOUT, handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(FetchError::Fetch {
                repo: self.fetcher.repo.display.clone(),
                message: format!("the fetch task failed: {join}"),
            }),
            Err(_) => {
                // Stops a pack download; a connection that hangs elsewhere ends with its own
                // timeouts, and the next attempt does not wait for it.
                interrupt.store(true, Relaxed);
                Err(FetchError::Timeout {
                    repo: self.fetcher.repo.display.clone(),
                    seconds: FETCH_TIMEOUT.as_secs(),
                })
            }
        }
    }
}

/// Fetches, and when the branch moved, reads and loads the commit.
fn sync(
    fetcher: &remote::Fetcher,
    scope: &[String],
    (load, parsed): (&LoadOptions, &Parsed),
    last: Option<ObjectId>,
    interrupt: &AtomicBool,
) -> Result<Option<(ObjectId, Candidate)>, FetchError> {
    let (commit, repo) = fetcher.fetch(interrupt)?;
    if last == Some(commit) {
        return Ok(None);
    }
    Ok(Some((
        commit,
        read_commit(&repo, commit, scope, load, parsed),
    )))
}

/// Reads and loads one commit: the candidate revision it makes.
fn read_commit(
    repo: &gix::Repository,
    commit: ObjectId,
    scope: &[String],
    load: &LoadOptions,
    parsed: &Parsed,
) -> Candidate {
    let seen_at = SystemTime::now();
    let loaded = tree::commit_tree(repo, commit)
        .map_err(|message| vec![Diagnostic::error(Pos::default(), message)])
        .and_then(|root| tree::read_tree(repo, root, scope, load))
        .and_then(|files| parsed.load(&files, load));
    Candidate {
        revision_id: commit.to_string(),
        loaded: loaded.map(Arc::new),
        seen_at,
    }
}

/// The wait before retry number `failures` (1-based).
pub fn backoff(failures: u32, poll_interval: Duration) -> Duration {
    let cap = poll_interval.min(MAX_BACKOFF);
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(cap)
}

/// The cache folder of one repository and branch in `--cache-dir`: readable, and unique.
fn cache_name(repo: &Repo, branch: &str) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(repo.display.as_bytes());
    hasher.update(&[0]);
    hasher.update(branch.as_bytes());
    let readable: String = repo
        .display
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("repo")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{readable}-{:016x}.git", hasher.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_poll_interval_or_a_minute() {
        let poll = Duration::from_secs(15);
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n, poll).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 15, 15, 15]);
        let hour = Duration::from_secs(3600);
        assert_eq!(backoff(7, hour), MAX_BACKOFF);
        assert_eq!(backoff(1000, hour), MAX_BACKOFF);
        let fast = Duration::from_millis(500);
        assert_eq!(backoff(1, fast), fast);
    }

    #[test]
    fn path_is_split_into_folders() {
        let split = |p: &str| split_path(std::path::Path::new(p));
        assert_eq!(split("").unwrap(), Vec::<String>::new());
        assert_eq!(split(".").unwrap(), Vec::<String>::new());
        assert_eq!(split("./mesh/prod/").unwrap(), ["mesh", "prod"]);
        assert_eq!(split("/mesh").unwrap(), ["mesh"]);
        assert!(split("../mesh").is_err());
        assert!(split("mesh/../x").is_err());
    }

    #[test]
    fn cache_names_differ_per_repository_and_branch() {
        let repo = Repo::parse("https://example.com/org/mesh.git").unwrap();
        let a = cache_name(&repo, "main");
        assert!(a.starts_with("mesh_git-") && a.ends_with(".git"), "{a}");
        assert_ne!(a, cache_name(&repo, "canary"));
    }
}
