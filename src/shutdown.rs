//! The drain signal every long-running task listens to: a `watch` that flips to `true` once.

use tokio::sync::watch;

/// Resolves once `shutdown` flips to true, or when its sender is gone.
pub async fn drained(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|draining| *draining).await;
}
