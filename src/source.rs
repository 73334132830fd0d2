//! Where revisions come from. A source task owns the current candidate revision and publishes
//! each new one, loaded and validated, through a `watch` channel: only the newest matters.

pub mod dir;

use std::sync::Arc;
use std::time::SystemTime;

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
