//! The debug HTTP API: health, readiness, the served source revision, per-sidecar sync status,
//! config dumps and Prometheus metrics.

pub mod config_dump;
