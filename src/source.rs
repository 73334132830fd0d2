//! Where revisions come from. A source task owns the current candidate revision and publishes
//! each new one, loaded and validated, through a `watch` channel: only the newest matters.

pub mod dir;
pub mod git;
pub mod webhook;

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::manifest::{Diagnostic, Revision};

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
