//! The webhook listener over real HTTP: `run` on `127.0.0.1:0`, requests sent as a Git host
//! sends them, and the trigger a Git source would wait on.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use sluice::source::webhook::{self, Secret, WebhookConfig, WebhookMetrics};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

const SECRET: &str = "a secret shared with the Git host";

struct Server {
    addr: SocketAddr,
    trigger: Arc<Notify>,
    metrics: Arc<WebhookMetrics>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    http: reqwest::Client,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("webhook-secret");
        std::fs::write(&path, format!("{SECRET}\n")).expect("write the secret");
        let config = Arc::new(WebhookConfig {
            secret: Secret::from_file(&path).expect("read the secret"),
            branch: "main".to_string(),
        });
        let trigger = Arc::new(Notify::new());
        let metrics = Arc::new(WebhookMetrics::default());
        let router = webhook::router(config, trigger.clone(), metrics.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(webhook::run(listener, router, shutdown_rx));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Server {
            addr,
            trigger,
            metrics,
            shutdown,
            task,
            http,
        }
    }

    async fn github_push(&self, git_ref: &str, secret: &str) -> (u16, Value) {
        let body =
            serde_json::to_vec(&json!({ "ref": git_ref, "after": "5a1b2c3d", "commits": [] }))
                .expect("json");
        let response = self
            .http
            .post(format!("http://{}/hooks/github", self.addr))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", "0f2b7a9e-0000-4000-8000-000000000001")
            .header("x-hub-signature-256", sign(secret, &body))
            .body(body)
            .send()
            .await
            .expect("POST the hook");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// Waits a little for the trigger: the server notifies before it answers, so a fired trigger
    /// is ready at once and the wait only bounds a broken server.
    async fn fired(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.trigger.notified())
            .await
            .is_ok()
    }

    /// Whether a trigger is pending right now, without waiting.
    fn pending(&self) -> bool {
        self.trigger.notified().now_or_never().is_some()
    }
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn a_signed_push_triggers_a_fetch_and_a_wrongly_signed_one_does_not() {
    let server = Server::start().await;

    let (status, body) = server
        .github_push("refs/heads/main", "not the secret")
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert!(!server.pending(), "a wrongly signed push must not trigger");

    let (status, body) = server.github_push("refs/heads/main", SECRET).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["result"], "accepted");
    assert!(server.fired().await, "a signed push must trigger");

    let (status, body) = server.github_push("refs/heads/feature", SECRET).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["result"], "ignored");
    assert!(
        !server.pending(),
        "a push to another branch must not trigger"
    );

    assert_eq!(server.metrics.accepted.load(Relaxed), 1);
    assert_eq!(server.metrics.rejected.load(Relaxed), 1);
    assert_eq!(server.metrics.ignored.load(Relaxed), 1);
}

#[tokio::test]
async fn a_gitlab_push_with_the_token_triggers() {
    let server = Server::start().await;
    let body = json!({ "object_kind": "push", "ref": "refs/heads/main" });
    let send = |token: &'static str| {
        server
            .http
            .post(format!("http://{}/hooks/gitlab", server.addr))
            .header("x-gitlab-event", "Push Hook")
            .header("x-gitlab-token", token)
            .json(&body)
            .send()
    };

    let response = send("wrong token").await.expect("POST the hook");
    assert_eq!(response.status().as_u16(), 401);
    assert!(!server.pending());

    let response = send(SECRET).await.expect("POST the hook");
    assert_eq!(response.status().as_u16(), 202);
    assert!(server.fired().await);
}

#[tokio::test]
async fn draining_stops_the_listener() {
    let server = Server::start().await;
    let (status, _) = server.github_push("refs/heads/main", SECRET).await;
    assert_eq!(status, 202);
    let _ = server.shutdown.send(true);
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("run returns once drained")
        .expect("run does not panic");
    let refused = reqwest::Client::new()
        .post(format!("http://{}/", server.addr))
        .send()
        .await;
    assert!(refused.is_err(), "the listener is closed after the drain");
}
