//! Where revisions come from. A source task owns the current candidate revision and publishes
//! each new one, loaded and validated, through a `watch` channel: only the newest matters.

pub mod dir;
pub mod git;
pub mod webhook;

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::manifest::{self, Diagnostic, LoadOptions, ParseCache, Revision, SourceFile};

/// One state of the source, loaded (or not) as a whole.
#[derive(Debug)]
pub struct Candidate {
    /// Commit SHA, or a digest of a folder's contents.
    pub revision_id: String,
    pub loaded: Result<Arc<Revision>, Vec<Diagnostic>>,
    pub seen_at: SystemTime,
}

pub type CandidateSender = tokio::sync::watch::Sender<Option<Arc<Candidate>>>;
pub type CandidateReceiver = tokio::sync::watch::Receiver<Option<Arc<Candidate>>>;

/// A source's parsed files, kept from one load to the next so a one-file change parses one
/// file. Loads of one source run one at a time, so the lock is never contended.
#[derive(Clone, Debug, Default)]
pub struct Parsed(Arc<std::sync::Mutex<ParseCache>>);

impl Parsed {
    /// [`manifest::load_files`], reusing what earlier loads parsed. Blocking.
    pub fn load(
        &self,
        files: &[SourceFile],
        options: &LoadOptions,
    ) -> Result<Revision, Vec<Diagnostic>> {
        let mut cache = self.0.lock().unwrap_or_else(|poisoned| {
            // A load that panicked may have left the cache half updated: start afresh.
            let mut cache = poisoned.into_inner();
            *cache = ParseCache::default();
            cache
        });
        manifest::load_files_cached(files, options, &mut cache)
    }
}

/// How fetching the source goes, for `/debug/source` (`fetch`) and `/readyz`. Owned by the
/// source task; times are RFC 3339.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FetchStatus {
    /// When the last fetch was attempted.
    pub last_fetch_at: Option<String>,
    /// When a fetch last succeeded.
    pub last_success_at: Option<String>,
    /// The newest commit fetched, whether it was served or refused.
    pub fetched_revision: Option<String>,
    /// Fetches that failed since the last success.
    pub consecutive_failures: u32,
    /// Why the last fetch failed, while no fetch succeeded since (no secret is ever in it).
    pub last_error: Option<String>,
    /// When the next fetch is due (a webhook may bring it forward).
    pub next_attempt_at: Option<String>,
}
