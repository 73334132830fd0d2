//! Git push webhooks: an HTTP listener that turns a verified push to the followed branch into an
//! immediate fetch, so a merge reaches the sidecars without waiting for the next poll.
//!
//! GitHub (and Gitea/Forgejo, which sign the same way) sign the raw body with HMAC-SHA256 and the
//! shared secret, sent as `X-Hub-Signature-256: sha256=<hex>`; GitLab sends the secret itself as
//! `X-Gitlab-Token`. Both are compared in constant time. A request that is not signed with the
//! secret gets 401 and changes nothing. A verified push whose `ref` is `refs/heads/<branch>`
//! wakes the Git source through a [`Notify`] (a burst of pushes coalesces into one fetch, since a
//! `Notify` holds at most one permit); other pushes and events are answered and ignored.
//!
//! Every path in [`PATHS`] takes both kinds of hook (the headers tell them apart); other paths get
//! 404 and other methods 405. Every answer is JSON. The webhook never carries configuration: the
//! fetch reads the branch from the repository, so a forged or replayed hook can at most cause an
//! early fetch of what is already there.

use std::fmt;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::shutdown::drained;

/// The paths that accept hooks, all alike: point GitHub or GitLab at any of them.
pub const PATHS: [&str; 4] = ["/", "/webhook", "/hooks/github", "/hooks/gitlab"];

/// Largest body read. Push payloads list at most 20 commits (GitHub) and stay well below this;
/// a larger body gets 413 before any parsing.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// How long a client may take to send the body before it gets 408, so a slow sender cannot hold
/// a connection of a listener that faces the Git host, often the internet.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// The SHA-1 signature GitHub sends beside the SHA-256 one; named only to explain a refusal.
const GITHUB_SIGNATURE_SHA1: &str = "x-hub-signature";
const GITHUB_EVENT: &str = "x-github-event";
const GITHUB_DELIVERY: &str = "x-github-delivery";
const GITLAB_TOKEN: &str = "x-gitlab-token";
const GITLAB_EVENT: &str = "x-gitlab-event";

/// The shared webhook secret. Its `Debug` never shows it, so it can sit in logged structs.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret from its bytes; `None` when empty, since an empty key would verify anything
    /// signed by anyone who guesses that no secret was set.
    pub fn new(value: impl Into<Vec<u8>>) -> Option<Secret> {
        let value = value.into();
        (!value.is_empty()).then_some(Secret(value))
    }

    /// Reads the secret from `path`. One trailing newline (`\n` or `\r\n`), as editors and
    /// `echo` leave, is not part of it; anything else is, byte for byte.
    pub fn from_file(path: &Path) -> Result<Secret, WebhookError> {
        let mut value = std::fs::read(path).map_err(|source| WebhookError::ReadSecret {
            path: path.to_path_buf(),
            source,
        })?;
        if value.last() == Some(&b'\n') {
            value.pop();
            if value.last() == Some(&b'\r') {
                value.pop();
            }
        }
        Secret::new(value).ok_or_else(|| WebhookError::EmptySecret {
            path: path.to_path_buf(),
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot read the webhook secret file {}", path.display())]
    ReadSecret {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the webhook secret file {} is empty; write the secret the Git host signs hooks with into it",
        path.display()
    )]
    EmptySecret { path: PathBuf },
}

#[derive(Debug)]
pub struct WebhookConfig {
    pub secret: Secret,
    /// The followed branch, as in `--branch`: a push to `refs/heads/<branch>` triggers a fetch.
    pub branch: String,
}

/// Webhook requests by outcome, for `/metrics`.
#[derive(Default, Debug)]
pub struct WebhookMetrics {
    /// Verified pushes to the followed branch: each triggered a fetch.
    pub accepted: AtomicU64,
    /// Unsigned, wrongly signed, oversized, too slow or malformed requests.
    pub rejected: AtomicU64,
    /// Verified hooks that trigger nothing: pings, other branches, tags, other events.
    pub ignored: AtomicU64,
}

impl WebhookMetrics {
    /// Appends the Prometheus text of these counters to `out`.
    pub fn render(&self, out: &mut String) {
        let name = "sluice_webhook_requests_total";
        let help = "Webhook requests by result: accepted (a fetch was triggered), \
                    ignored (verified, but not a push to the followed branch), \
                    rejected (bad signature or token, or malformed).";
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (result, value) in [
            ("accepted", &self.accepted),
            ("rejected", &self.rejected),
            ("ignored", &self.ignored),
        ] {
            let _ = writeln!(out, "{name}{{result=\"{result}\"}} {}", value.load(Relaxed));
        }
    }
}

struct Hook {
    config: Arc<WebhookConfig>,
    trigger: Arc<Notify>,
    metrics: Arc<WebhookMetrics>,
}

/// The webhook routes. A verified push to the followed branch calls `trigger.notify_one()`.
pub fn router(
    config: Arc<WebhookConfig>,
    trigger: Arc<Notify>,
    metrics: Arc<WebhookMetrics>,
) -> Router {
    let hook = Arc::new(Hook {
        config,
        trigger,
        metrics,
    });
    let mut router = Router::new();
    for path in PATHS {
        router = router.route(path, post(handle_hook).fallback(method_not_allowed));
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(hook)
}

/// Serves `router` on `listener` until `shutdown` flips to true.
pub async fn run(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, service)
        .with_graceful_shutdown(async move { drained(&mut shutdown).await })
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "webhook server failed");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Provider {
    GitHub,
    GitLab,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
        }
    }

    fn event_header(self) -> &'static str {
        match self {
            Provider::GitHub => GITHUB_EVENT,
            Provider::GitLab => GITLAB_EVENT,
        }
    }

    fn is_push(self, event: &str) -> bool {
        match self {
            Provider::GitHub => event == "push",
            Provider::GitLab => event == "Push Hook",
        }
    }
}

/// How a request ended: what it is counted as and answered with.
enum Outcome {
    /// A fetch was triggered.
    Accepted {
        git_ref: String,
    },
    /// A verified GitHub ping, sent when a hook is created or redelivered by hand.
    Pong,
    /// Verified, but nothing to do.
    Ignored {
        reason: String,
        status: StatusCode,
    },
    Rejected {
        reason: String,
        status: StatusCode,
    },
}

fn rejected(status: StatusCode, reason: impl Into<String>) -> Outcome {
    Outcome::Rejected {
        reason: reason.into(),
        status,
    }
}

#[derive(Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    git_ref: String,
}

async fn handle_hook(State(hook): State<Arc<Hook>>, request: Request) -> Response {
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let headers = request.headers().clone();
    let provider = provider(&headers);
    let event = header_str(
        &headers,
        provider.map_or(GITHUB_EVENT, Provider::event_header),
    )
    .unwrap_or("")
    .to_string();
    let delivery = header_str(&headers, GITHUB_DELIVERY)
        .unwrap_or("")
        .to_string();

    let outcome = check(&hook, &headers, provider, &event, request).await;

    let provider = provider.map_or("unknown", Provider::name);
    let (status, answer, result, reason) = match outcome {
        Outcome::Accepted { git_ref } => {
            hook.trigger.notify_one();
            hook.metrics.accepted.fetch_add(1, Relaxed);
            let reason = format!("push to {git_ref:?}; fetching now");
            let answer = json!({ "result": "accepted", "ref": git_ref });
            (StatusCode::ACCEPTED, answer, "accepted", reason)
        }
        Outcome::Pong => {
            hook.metrics.ignored.fetch_add(1, Relaxed);
            let reason = "ping: the hook is signed with the secret".to_string();
            (
                StatusCode::OK,
                json!({ "result": "pong" }),
                "ignored",
                reason,
            )
        }
        Outcome::Ignored { reason, status } => {
            hook.metrics.ignored.fetch_add(1, Relaxed);
            let answer = json!({ "result": "ignored", "reason": reason });
            (status, answer, "ignored", reason)
        }
        Outcome::Rejected { reason, status } => {
            hook.metrics.rejected.fetch_add(1, Relaxed);
            (status, json!({ "error": reason }), "rejected", reason)
        }
    };
    let status_code = status.as_u16();
    if result == "rejected" {
        warn!(
            provider,
            event = event.as_str(),
            delivery = delivery.as_str(),
            remote = remote.as_str(),
            result,
            status = status_code,
            reason = reason.as_str(),
            "webhook rejected"
        );
    } else {
        info!(
            provider,
            event = event.as_str(),
            delivery = delivery.as_str(),
            remote = remote.as_str(),
            result,
            status = status_code,
            reason = reason.as_str(),
            "webhook {result}"
        );
    }
    reply(status, answer)
}

/// Authenticates the request, reads its body and decides what it asks for. Header-only checks
/// come first, so an unsigned request is refused without reading its body.
async fn check(
    hook: &Hook,
    headers: &HeaderMap,
    provider: Option<Provider>,
    event: &str,
    request: Request,
) -> Outcome {
    let secret = &hook.config.secret;
    let Some(provider) = provider else {
        let reason = if headers.contains_key(GITHUB_SIGNATURE_SHA1) {
            "missing X-Hub-Signature-256 header: only the SHA-256 signature is accepted, \
             and GitHub sends it whenever the webhook has a secret"
        } else {
            "missing X-Hub-Signature-256 (GitHub) or X-Gitlab-Token (GitLab) header: \
             set the webhook's secret to the one in --webhook-secret-file"
        };
        return rejected(StatusCode::UNAUTHORIZED, reason);
    };
    if provider == Provider::GitLab && !token_matches(secret, headers) {
        return rejected(
            StatusCode::UNAUTHORIZED,
            "X-Gitlab-Token does not match the webhook secret",
        );
    }

    let body = match tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => {
            let reason = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                format!("body larger than {BODY_LIMIT} bytes")
            } else {
                format!("cannot read the body: {}", rejection.body_text())
            };
            return rejected(rejection.status(), reason);
        }
        Err(_) => {
            return rejected(
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within {}s", BODY_TIMEOUT.as_secs()),
            )
        }
    };

    if provider == Provider::GitHub {
        if let Err(reason) = verify_github(secret, header_str(headers, GITHUB_SIGNATURE), &body) {
            return rejected(StatusCode::UNAUTHORIZED, reason);
        }
    }

    // Authenticated from here on.
    if event.is_empty() {
        return rejected(
            StatusCode::BAD_REQUEST,
            format!("missing {} header", provider.event_header()),
        );
    }
    if provider == Provider::GitHub && event == "ping" {
        return Outcome::Pong;
    }
    if !provider.is_push(event) {
        return Outcome::Ignored {
            reason: format!("event {event:?} does not trigger a fetch; only pushes do"),
            status: StatusCode::ACCEPTED,
        };
    }
    let push: PushEvent = match serde_json::from_slice(&body) {
        Ok(push) => push,
        Err(err) => {
            let form = header_str(headers, header::CONTENT_TYPE.as_str())
                .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
            let reason = if form {
                "form-encoded payloads are not read: \
                 set the webhook's content type to application/json"
                    .to_string()
            } else {
                format!("push payload is not JSON with a string \"ref\": {err}")
            };
            return rejected(StatusCode::BAD_REQUEST, reason);
        }
    };
    if push.git_ref.strip_prefix("refs/heads/") == Some(hook.config.branch.as_str()) {
        Outcome::Accepted {
            git_ref: push.git_ref,
        }
    } else {
        Outcome::Ignored {
            reason: format!(
                "push to {:?}, not to the followed branch {:?}",
                push.git_ref, hook.config.branch
            ),
            status: StatusCode::ACCEPTED,
        }
    }
}

/// Which host sent the hook, by the credential it carries.
fn provider(headers: &HeaderMap) -> Option<Provider> {
    if headers.contains_key(GITHUB_SIGNATURE) {
        Some(Provider::GitHub)
    } else if headers.contains_key(GITLAB_TOKEN) {
        Some(Provider::GitLab)
    } else {
        None
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the HMAC-SHA256 of `body` keyed with the
/// secret, in constant time. The error never contains the signature.
fn verify_github(secret: &Secret, signature: Option<&str>, body: &[u8]) -> Result<(), String> {
    let Some(signature) = signature else {
        return Err("X-Hub-Signature-256 is not valid text".to_string());
    };
    let Some(hex_digest) = signature.strip_prefix("sha256=") else {
        return Err("X-Hub-Signature-256 does not start with \"sha256=\"".to_string());
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return Err("X-Hub-Signature-256 is not hexadecimal after \"sha256=\"".to_string());
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        // HMAC takes keys of any length; this cannot happen, but must not panic.
        return Err("cannot key HMAC-SHA256 with the webhook secret".to_string());
    };
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| {
        "X-Hub-Signature-256 does not match the body signed with the webhook secret".to_string()
    })
}

/// Compares `X-Gitlab-Token` with the secret in constant time. Both are hashed first so that the
/// comparison does not reveal the secret's length either.
fn token_matches(secret: &Secret, headers: &HeaderMap) -> bool {
    let Some(token) = headers.get(GITLAB_TOKEN) else {
        return false;
    };
    let given = Sha256::digest(token.as_bytes());
    let expected = Sha256::digest(secret.as_bytes());
    given.as_slice().ct_eq(expected.as_slice()).into()
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "POST")],
        Json(json!({ "error": "webhooks are sent with POST" })),
    )
        .into_response()
}

async fn not_found() -> Response {
    let error = format!(
        "no such endpoint; webhooks are accepted at {}",
        PATHS.join(", ")
    );
    reply(StatusCode::NOT_FOUND, json!({ "error": error }))
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use futures::FutureExt as _;
    use tower::ServiceExt as _;

    const SECRET: &str = "s3cret-for-tests";

    struct Harness {
        router: Router,
        trigger: Arc<Notify>,
        metrics: Arc<WebhookMetrics>,
    }

    impl Harness {
        fn new() -> Harness {
            let config = Arc::new(WebhookConfig {
                secret: Secret::new(SECRET).expect("non-empty"),
                branch: "main".to_string(),
            });
            let trigger = Arc::new(Notify::new());
            let metrics = Arc::new(WebhookMetrics::default());
            Harness {
                router: router(config, trigger.clone(), metrics.clone()),
                trigger,
                metrics,
            }
        }

        async fn send(&self, request: axum::http::Request<Body>) -> (StatusCode, Value) {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            let value = serde_json::from_slice(&body).expect("every answer is JSON");
            (status, value)
        }

        /// Whether the handler notified the trigger. `notify_one` stores a permit when nobody
        /// waits, and the handler has finished when `send` returns, so polling once tells.
        fn fired(&self) -> bool {
            self.trigger.notified().now_or_never().is_some()
        }

        fn counts(&self) -> (u64, u64, u64) {
            (
                self.metrics.accepted.load(Relaxed),
                self.metrics.rejected.load(Relaxed),
                self.metrics.ignored.load(Relaxed),
            )
        }
    }

    /// Computed independently of `verify_github`, straight with the `hmac` crate.
    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn push(git_ref: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({ "ref": git_ref, "after": "0123abcd", "commits": [] }))
            .expect("json")
    }

    fn github(
        path: &str,
        event: &str,
        body: Vec<u8>,
        signature: Option<&str>,
    ) -> axum::http::Request<Body> {
        let mut builder = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958");
        if let Some(signature) = signature {
            builder = builder.header("x-hub-signature-256", signature);
        }
        builder.body(Body::from(body)).expect("request")
    }

    fn signed_github(event: &str, body: Vec<u8>) -> axum::http::Request<Body> {
        let signature = sign(SECRET, &body);
        github("/", event, body, Some(&signature))
    }

    fn gitlab(event: &str, token: &str, body: Vec<u8>) -> axum::http::Request<Body> {
        axum::http::Request::post("/hooks/gitlab")
            .header("content-type", "application/json")
            .header("x-gitlab-event", event)
            .header("x-gitlab-token", token)
            .body(Body::from(body))
            .expect("request")
    }

    #[test]
    fn verifies_the_vector_from_githubs_docs() {
        let secret = Secret::new("It's a Secret to Everybody").expect("non-empty");
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify_github(&secret, Some(signature), b"Hello, World!"),
            Ok(())
        );
        assert_eq!(
            sign("It's a Secret to Everybody", b"Hello, World!"),
            signature
        );
        // Upper-case hex is the same signature.
        let upper = format!("sha256={}", signature["sha256=".len()..].to_uppercase());
        assert_eq!(
            verify_github(&secret, Some(&upper), b"Hello, World!"),
            Ok(())
        );
        assert!(verify_github(&secret, Some(signature), b"Hello, World?").is_err());
        let other = Secret::new("It's a secret to everybody").expect("non-empty");
        assert!(verify_github(&other, Some(signature), b"Hello, World!").is_err());
    }

    #[test]
    fn refuses_malformed_signatures() {
        let secret = Secret::new(SECRET).expect("non-empty");
        let body = b"{}";
        let good = sign(SECRET, body);
        assert_eq!(verify_github(&secret, Some(&good), body), Ok(()));
        let truncated = &good[..good.len() - 2];
        let extended = format!("{good}00");
        let sha1 = good.replace("sha256=", "sha1=");
        let not_hex = format!("sha256=zz{}", &good["sha256=".len() + 2..]);
        let bare = &good["sha256=".len()..];
        for bad in [truncated, &extended, &sha1, &not_hex, bare, "", "sha256="] {
            assert!(verify_github(&secret, Some(bad), body).is_err(), "{bad:?}");
        }
        assert!(verify_github(&secret, None, body).is_err());
    }

    #[tokio::test]
    async fn a_signed_push_to_the_branch_triggers_a_fetch() {
        let harness = Harness::new();
        let (status, body) = harness
            .send(signed_github("push", push("refs/heads/main")))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["result"], "accepted");
        assert!(harness.fired());
        assert_eq!(harness.counts(), (1, 0, 0));
    }

    #[tokio::test]
    async fn every_documented_path_takes_hooks() {
        let harness = Harness::new();
        for path in PATHS {
            let body = push("refs/heads/main");
            let signature = sign(SECRET, &body);
            let (status, _) = harness
                .send(github(path, "push", body, Some(&signature)))
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{path}");
            assert!(harness.fired(), "{path}");
        }
    }

    #[tokio::test]
    async fn a_wrong_signature_gets_401_and_triggers_nothing() {
        let harness = Harness::new();
        let body = push("refs/heads/main");
        let signature = sign("not-the-secret", &body);
        let (status, answer) = harness
            .send(github("/", "push", body, Some(&signature)))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("does not match")),
            "{answer}"
        );
        assert!(!answer.to_string().contains(&signature[7..]), "{answer}");
        assert!(!harness.fired());
        assert_eq!(harness.counts(), (0, 1, 0));
    }

    #[tokio::test]
    async fn a_signature_over_another_body_gets_401() {
        let harness = Harness::new();
        let signature = sign(SECRET, &push("refs/heads/other"));
        let (status, _) = harness
            .send(github(
                "/",
                "push",
                push("refs/heads/main"),
                Some(&signature),
            ))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!harness.fired());
    }

    #[tokio::test]
    async fn a_missing_signature_gets_401() {
        let harness = Harness::new();
        let (status, answer) = harness
            .send(github("/", "push", push("refs/heads/main"), None))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("X-Hub-Signature-256")),
            "{answer}"
        );
        assert!(!harness.fired());
        assert_eq!(harness.counts(), (0, 1, 0));
    }

    #[tokio::test]
    async fn a_sha1_signature_alone_gets_401() {
        let harness = Harness::new();
        let request = axum::http::Request::post("/")
            .header("x-github-event", "push")
            .header(
                "x-hub-signature",
                "sha1=0000000000000000000000000000000000000000",
            )
            .body(Body::from(push("refs/heads/main")))
            .expect("request");
        let (status, answer) = harness.send(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("SHA-256")),
            "{answer}"
        );
        assert!(!harness.fired());
    }

    #[tokio::test]
    async fn gitlab_pushes_need_the_token() {
        let harness = Harness::new();
        let (status, body) = harness
            .send(gitlab("Push Hook", SECRET, push("refs/heads/main")))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert!(harness.fired());

        for wrong in ["wrong", "s3cret-for-test", "s3cret-for-tests ", ""] {
            let (status, _) = harness
                .send(gitlab("Push Hook", wrong, push("refs/heads/main")))
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}");
            assert!(!harness.fired(), "{wrong:?}");
        }
        assert_eq!(harness.counts(), (1, 4, 0));

        let (status, body) = harness
            .send(gitlab("Tag Push Hook", SECRET, push("refs/tags/v1")))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["result"], "ignored");
        assert!(!harness.fired());
    }

    #[tokio::test]
    async fn pushes_to_other_refs_are_ignored() {
        let harness = Harness::new();
        for git_ref in [
            "refs/heads/feature",
            "refs/heads/main-2",
            "refs/tags/main",
            "main",
            "refs/heads/main/x",
        ] {
            let (status, body) = harness.send(signed_github("push", push(git_ref))).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{git_ref}");
            assert_eq!(body["result"], "ignored", "{git_ref}");
            assert!(!harness.fired(), "{git_ref}");
        }
        assert_eq!(harness.counts(), (0, 0, 5));
        let (_, body) = harness
            .send(gitlab("Push Hook", SECRET, push("refs/heads/feature")))
            .await;
        assert_eq!(body["result"], "ignored");
        assert!(!harness.fired());
    }

    #[tokio::test]
    async fn ping_answers_pong_once_verified() {
        let harness = Harness::new();
        let ping =
            serde_json::to_vec(&json!({ "zen": "Keep it logically awesome.", "hook_id": 1 }))
                .expect("json");
        let (status, body) = harness.send(signed_github("ping", ping.clone())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["result"], "pong");
        assert!(!harness.fired());
        assert_eq!(harness.counts(), (0, 0, 1));

        let signature = sign("wrong", &ping);
        let (status, _) = harness
            .send(github("/", "ping", ping, Some(&signature)))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn other_events_are_ignored() {
        let harness = Harness::new();
        let (status, body) = harness
            .send(signed_github("pull_request", push("refs/heads/main")))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["result"], "ignored");
        assert!(!harness.fired());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_gets_413() {
        let harness = Harness::new();
        let mut body = push("refs/heads/main");
        body.resize(BODY_LIMIT + 1, b' ');
        let (status, _) = harness.send(signed_github("push", body)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!harness.fired());
        assert_eq!(harness.counts(), (0, 1, 0));

        // Exactly at the limit is read (trailing whitespace is valid JSON).
        let mut body = push("refs/heads/main");
        body.resize(BODY_LIMIT, b' ');
        let (status, _) = harness.send(signed_github("push", body)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(harness.fired());
    }

    #[tokio::test]
    async fn a_signed_but_unparsable_push_gets_400() {
        let harness = Harness::new();
        for body in [&b"{not json"[..], b"{\"after\": \"abc\"}", b"{\"ref\": 7}"] {
            let (status, answer) = harness.send(signed_github("push", body.to_vec())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
            assert!(!harness.fired());
        }
        let body = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D".to_vec();
        let signature = sign(SECRET, &body);
        let request = axum::http::Request::post("/")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-github-event", "push")
            .header("x-hub-signature-256", signature)
            .body(Body::from(body))
            .expect("request");
        let (status, answer) = harness.send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("application/json")),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_signed_request_without_an_event_gets_400() {
        let harness = Harness::new();
        let body = push("refs/heads/main");
        let request = axum::http::Request::post("/")
            .header("x-hub-signature-256", sign(SECRET, &body))
            .body(Body::from(body))
            .expect("request");
        let (status, _) = harness.send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(!harness.fired());
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let harness = Harness::new();
        let (status, _) = harness
            .send(signed_github("push", push("refs/heads/main")).map_uri("/nope"))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let request = axum::http::Request::get("/webhook")
            .body(Body::empty())
            .expect("request");
        let response = harness
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "POST");
        assert!(!harness.fired());
        assert_eq!(harness.counts(), (0, 0, 0));
    }

    trait MapUri {
        fn map_uri(self, uri: &str) -> Self;
    }

    impl MapUri for axum::http::Request<Body> {
        fn map_uri(mut self, uri: &str) -> Self {
            *self.uri_mut() = uri.parse().expect("uri");
            self
        }
    }

    #[test]
    fn the_secret_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: [(&[u8], &[u8]); 4] = [
            (b"abc\n", b"abc"),
            (b"abc\r\n", b"abc"),
            (b"abc\n\n", b"abc\n"),
            (b" abc ", b" abc "),
        ];
        for (content, expected) in cases {
            let path = dir.path().join("secret");
            std::fs::write(&path, content).expect("write");
            let secret = Secret::from_file(&path).expect("secret");
            assert_eq!(secret.as_bytes(), expected);
        }
    }

    #[test]
    fn an_empty_or_missing_secret_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        for content in [&b""[..], b"\n", b"\r\n"] {
            let path = dir.path().join("empty");
            std::fs::write(&path, content).expect("write");
            let err = Secret::from_file(&path).expect_err("empty");
            assert!(matches!(err, WebhookError::EmptySecret { .. }));
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
        let path = dir.path().join("missing");
        let err = Secret::from_file(&path).expect_err("missing");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn the_secret_is_never_printed() {
        let config = WebhookConfig {
            secret: Secret::new("hunter2").expect("non-empty"),
            branch: "main".to_string(),
        };
        let printed = format!("{config:?} {:?}", config.secret);
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        assert!(Secret::new("").is_none());
    }

    #[test]
    fn renders_counters_by_result() {
        let metrics = WebhookMetrics::default();
        metrics.accepted.fetch_add(2, Relaxed);
        metrics.ignored.fetch_add(1, Relaxed);
        let mut out = String::from("existing\n");
        metrics.render(&mut out);
        assert!(
            out.starts_with("existing\n# HELP sluice_webhook_requests_total "),
            "{out}"
        );
        assert!(
            out.contains("# TYPE sluice_webhook_requests_total counter\n"),
            "{out}"
        );
        assert!(
            out.contains("sluice_webhook_requests_total{result=\"accepted\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("sluice_webhook_requests_total{result=\"rejected\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("sluice_webhook_requests_total{result=\"ignored\"} 1\n"),
            "{out}"
        );
    }
}
