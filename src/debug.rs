//! The debug HTTP API: health, readiness, the served source revision, per-sidecar sync status,
//! config dumps and Prometheus metrics.
//!
//! Every answer is JSON (but `/metrics`); bad input gets a 4xx with a JSON error, never a 500.

pub mod config_dump;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::publisher::{rfc3339, SourceStatus};
use crate::source::webhook::WebhookMetrics;
use crate::source::FetchStatus;
use crate::xds::resource::ResourceType;
use crate::xds::server::{Protocol, StreamEntry, Streams, ViewReceiver};
use crate::xds::stream::{SyncState, TypeStatus};

#[derive(Clone)]
pub struct DebugState {
    pub status: watch::Receiver<SourceStatus>,
    /// How fetching `--repo` goes; `None` for a folder source.
    pub fetch: Option<watch::Receiver<FetchStatus>>,
    /// Webhook request counters, with `--webhook-listen`.
    pub webhook: Option<Arc<WebhookMetrics>>,
    pub streams: Arc<Streams>,
    pub view: ViewReceiver,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: DebugState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/debug/source", get(source))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump_handler))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /debug/source, /debug/syncz, /debug/config_dump?node=ID, /metrics",
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<DebugState>) -> Response {
    let status = state.status.borrow().clone();
    match &status.revision {
        Some(revision) => (
            StatusCode::OK,
            Json(json!({ "ready": true, "revision": revision })),
        )
            .into_response(),
        None => {
            let fetch = state.fetch.as_ref().map(|f| f.borrow().clone());
            let reason = match (&status.last_error, fetch) {
                (Some(last), _) => format!(
                    "no revision served yet: revision {} was refused with {} error(s)",
                    last.revision,
                    last.errors.len()
                ),
                (None, Some(FetchStatus { last_error: Some(error), consecutive_failures, next_attempt_at, .. })) => format!(
                    "no revision served yet: {consecutive_failures} fetch(es) failed, the last with: {error}; next attempt at {}",
                    next_attempt_at.as_deref().unwrap_or("soon")
                ),
                (None, Some(_)) => "no revision served yet: the first fetch is under way".to_string(),
                (None, None) => "no revision loaded yet".to_string(),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "ready": false, "reason": reason })),
            )
                .into_response()
        }
    }
}

/// The source status, with `fetch` (how fetching `--repo` goes) for a Git source.
async fn source(State(state): State<DebugState>) -> Json<Value> {
    let status = state.status.borrow().clone();
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let (Some(fetch), Some(object)) = (&state.fetch, value.as_object_mut()) {
        let fetch = fetch.borrow().clone();
        object.insert(
            "fetch".into(),
            serde_json::to_value(fetch).unwrap_or(Value::Null),
        );
    }
    Json(value)
}

#[derive(Serialize)]
struct SyncNode {
    id: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    address: Option<String>,
    protocol: Protocol,
    connected_at: String,
    revision: Option<String>,
    types: BTreeMap<&'static str, SyncType>,
}

#[derive(Serialize)]
struct SyncType {
    sent_version: Option<String>,
    acked_version: Option<String>,
    status: SyncState,
    last_nack: Option<Value>,
    /// Manifests the last rejected resources were compiled from.
    nack_origins: Vec<String>,
}

fn sync_type(status: &TypeStatus, origins: &[String]) -> SyncType {
    SyncType {
        sent_version: status.sent_version.clone(),
        acked_version: status.acked_version.clone(),
        status: status.state(),
        last_nack: status
            .last_nack
            .as_ref()
            .and_then(|n| serde_json::to_value(n).ok()),
        nack_origins: origins.to_vec(),
    }
}

fn sync_node(entry: &StreamEntry) -> SyncNode {
    let types = ResourceType::ALL
        .into_iter()
        .map(|t| {
            (
                t.short_name(),
                sync_type(&entry.types[t.index()], &entry.nack_origins[t.index()]),
            )
        })
        .collect();
    SyncNode {
        id: entry.node.id.clone(),
        namespace: entry.node.namespace.clone(),
        labels: entry.node.labels.clone(),
        address: entry.node.address.map(|a| a.to_string()),
        protocol: entry.protocol,
        connected_at: rfc3339(entry.connected_at),
        revision: entry.snapshot.as_ref().map(|s| s.revision.clone()),
        types,
    }
}

async fn syncz(State(state): State<DebugState>) -> Json<Value> {
    let nodes: Vec<SyncNode> = state.streams.list().iter().map(sync_node).collect();
    Json(json!({ "nodes": nodes }))
}

async fn config_dump_handler(
    State(state): State<DebugState>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    let Some(node_id) = query.get("node") else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing query parameter \"node\" (a connected sidecar's node id)",
        );
    };
    let Some(entry) = state.streams.by_node(node_id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no connected sidecar with node id {node_id:?}"),
        );
    };
    // What Sluice serves that sidecar now: the current snapshot for its node.
    let current = state.view.borrow().clone();
    let Some(snapshot) = current.map(|view| view.snapshot_for(&entry.node)) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no revision served yet");
    };
    let acked = acked_versions(&entry);
    Json(config_dump::config_dump(&snapshot, Some(&acked))).into_response()
}

async fn metrics(State(state): State<DebugState>) -> Response {
    let mut text = state.metrics.render();
    if let Some(webhook) = &state.webhook {
        webhook.render(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The versions the sidecar ACKed, per type, as the config dump shows them.
fn acked_versions(entry: &StreamEntry) -> config_dump::AckedVersions {
    let protocol = match entry.protocol {
        Protocol::Sotw => crate::bootstrap::XdsProtocol::Sotw,
        Protocol::Delta => crate::bootstrap::XdsProtocol::Delta,
    };
    let types = ResourceType::ALL
        .into_iter()
        .filter_map(|t| {
            let status = &entry.types[t.index()];
            status.acked_version.as_ref().map(|version| {
                (
                    t,
                    config_dump::AckedType {
                        version_info: version.clone(),
                        last_updated: entry.acked_at[t.index()],
                    },
                )
            })
        })
        .collect();
    config_dump::AckedVersions { protocol, types }
}
