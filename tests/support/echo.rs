//! An HTTP upstream that says who it is: every request gets 200, a response header
//! `x-pod: NAME`, and a JSON body `{"pod", "path", "method", "headers"}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::oneshot;

/// A running echo server; stops accepting and closes its connections on drop.
pub struct EchoServer {
    name: String,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl EchoServer {
    /// Serves on `addr` (e.g. the workload's loopback address at the Service's `targetPort`)
    /// as the pod `name`. Must be called inside a Tokio runtime.
    pub async fn start(name: &str, addr: SocketAddr) -> EchoServer {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("echo server {name:?} cannot bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let router = Router::new()
            .fallback(echo)
            .with_state(Arc::<str>::from(name));
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        EchoServer {
            name: name.to_owned(),
            addr,
            shutdown: Some(shutdown),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn echo(State(pod): State<Arc<str>>, request: Request) -> impl IntoResponse {
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = json!({
        "pod": &*pod,
        "path": request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "method": request.method().as_str(),
        "headers": headers,
    });
    ([("x-pod", pod.to_string())], Json(body))
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}
