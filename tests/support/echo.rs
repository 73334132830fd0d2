//! An HTTP upstream that says who it is: every request gets 200, a response header
//! `x-pod: NAME`, and a JSON body with:
//!
//! - `pod` and `hostname`: its name (a pod name such as `echo-v1-5d8c7b9f6-abcde` for the
//!   conformance runner);
//! - `namespace`: its namespace (empty when started with [`EchoServer::start`]);
//! - `path` and `url`: the raw request target it received (path and query);
//! - `method`, `host` (the `Host` header), `proto` (`HTTP/1.1`, ...);
//! - `headers`: an object with one value per name (the first one, names lowercase);
//! - `request_headers`: every header as a `[name, value]` pair, in the order received, so that
//!   repeated headers show every value.
//!
//! Each request is also recorded (see [`EchoServer::received`]), so a test can tell that a
//! mirrored copy arrived.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::oneshot;

/// Who an echo server says it is.
#[derive(Clone, Debug, Default)]
pub struct EchoIdentity {
    pub hostname: String,
    pub namespace: String,
}

/// One request an echo server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub url: String,
    pub host: String,
    /// Every request header, lowercase names, first value of each.
    pub headers: BTreeMap<String, String>,
}

struct Shared {
    identity: EchoIdentity,
    received: Mutex<Vec<Received>>,
}

/// A running echo server; stops accepting and closes its connections on drop.
pub struct EchoServer {
    name: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl EchoServer {
    /// Serves on `addr` (e.g. the workload's loopback address at the Service's `targetPort`)
    /// as the pod `name`. Must be called inside a Tokio runtime.
    pub async fn start(name: &str, addr: SocketAddr) -> EchoServer {
        EchoServer::start_with(
            EchoIdentity {
                hostname: name.to_owned(),
                namespace: String::new(),
            },
            addr,
        )
        .await
    }

    /// Like [`EchoServer::start`], with a namespace to report too.
    pub async fn start_with(identity: EchoIdentity, addr: SocketAddr) -> EchoServer {
        let name = identity.hostname.clone();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("echo server {name:?} cannot bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            identity,
            received: Mutex::new(Vec::new()),
        });
        let router = Router::new().fallback(echo).with_state(shared.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        EchoServer {
            name,
            addr,
            shared,
            shutdown: Some(shutdown),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request answered so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn echo(State(shared): State<Arc<Shared>>, request: Request) -> impl IntoResponse {
    let pairs: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut headers = BTreeMap::new();
    for (name, value) in &pairs {
        headers.entry(name.clone()).or_insert_with(|| value.clone());
    }
    let url = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    let host = request
        .headers()
        .get("host")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let method = request.method().as_str().to_owned();
    shared
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            method: method.clone(),
            url: url.clone(),
            host: host.clone(),
            headers: headers.clone(),
        });
    let identity = &shared.identity;
    let body = json!({
        "pod": &identity.hostname,
        "hostname": &identity.hostname,
        "namespace": &identity.namespace,
        "path": &url,
        "url": &url,
        "method": method,
        "host": host,
        "proto": format!("{:?}", request.version()),
        "headers": headers,
        "request_headers": pairs,
    });
    ([("x-pod", identity.hostname.clone())], Json(body))
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
