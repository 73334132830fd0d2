//! `sluice serve --repo` against real Git repositories: a bare repository served by a real
//! `git daemon` on loopback (`git://`) and the same over `file://`, changed with the `git`
//! program the way operators change them (commits, reverts, force-pushes, a deleted branch, the
//! server going away). What is served is read from `/debug/source` and `/metrics`; the traffic
//! itself is checked through real Envoys in `tests/e2e_git.rs`.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use support::{
    echo_split_route, free_port, wait_for, wait_until, GitDaemon, GitHttpServer, GitRemote, Sluice,
    ECHO_SERVICES,
};

/// How long a change may take to show. Generous: these tests check what is shown, not how
/// fast (a 500 ms poll shows it within a second or two).
const TIMEOUT: Duration = Duration::from_secs(30);

const SERVICES_FILE: &str = "mesh/services.yaml";
const ROUTE_FILE: &str = "mesh/routes/echo.yaml";

/// Not YAML: a mapping value where none may start, on line 4.
const BROKEN_YAML: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken: here\n";

/// A repository with the echo mesh below `mesh/`, and a broken file outside it that `--path`
/// keeps out. Returns the first commit.
fn seed(remote: &GitRemote) -> String {
    remote.write("README.md", "the mesh lives in mesh/\n");
    remote.write("other/broken.yaml", BROKEN_YAML);
    remote.write(SERVICES_FILE, ECHO_SERVICES);
    remote.write(ROUTE_FILE, &echo_split_route(90, 10));
    remote.commit("echo mesh, 90/10")
}

async fn serve(url: &str, envs: &[(&str, &str)]) -> Sluice {
    Sluice::start_args(
        &["--repo", url, "--path", "mesh", "--poll-interval", "500ms"],
        envs,
    )
    .await
}

async fn source(sluice: &Sluice) -> Value {
    sluice
        .get_json("/debug/source")
        .await
        .unwrap_or_else(|e| panic!("/debug/source: {e:#}"))
}

/// Waits until `/debug/source` serves `commit`.
async fn wait_served(sluice: &Sluice, commit: &str, what: &str) -> Value {
    wait_for(
        TIMEOUT,
        &format!("{what}: commit {commit} to be served"),
        || async {
            let source = sluice.get_json("/debug/source").await.ok()?;
            (source["revision"] == commit).then_some(source)
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Commits, a revert and force-pushes are followed, over git:// and file://.

async fn follows_the_branch(remote: &GitRemote, url: &str) {
    let first = seed(remote);
    let sluice = serve(url, &[]).await;
    sluice.wait_ready().await;
    let shown = wait_served(&sluice, &first, "the first commit").await;
    assert_eq!(shown["branch"], "main", "{shown:#}");
    assert!(shown["last_error"].is_null(), "{shown:#}");
    assert!(shown["fetch"]["last_error"].is_null(), "{shown:#}");
    assert_eq!(shown["fetch"]["consecutive_failures"], 0, "{shown:#}");
    assert!(shown["fetch"]["last_success_at"].is_string(), "{shown:#}");
    let readyz = sluice.get_json("/readyz").await.expect("/readyz");
    assert_eq!(readyz["revision"], first.as_str());

    let half = remote.commit_file(ROUTE_FILE, &echo_split_route(50, 50), "50/50");
    wait_served(&sluice, &half, "the 50/50 commit").await;

    let reverted = remote.revert_head();
    wait_served(&sluice, &reverted, "the revert").await;

    // A force-push back to the first commit: an older tree, and a revision served before.
    remote.force_push(&first);
    wait_served(&sluice, &first, "a force-push to the first commit").await;

    // History rewritten: a new commit on top of the first one replaces the others.
    let rewritten = remote.commit_file(ROUTE_FILE, &echo_split_route(70, 30), "70/30");
    wait_served(&sluice, &rewritten, "a commit on the rewritten branch").await;
    assert!(
        source(&sluice).await["fetch"]["last_error"].is_null(),
        "fetches failed while following the branch"
    );
    assert!(
        sluice
            .metric("sluice_git_fetches_total{result=\"ok\"}")
            .await
            >= 5.0
    );
    assert!(
        sluice
            .metric("sluice_git_last_success_timestamp_seconds")
            .await
            > 1.7e9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_commits_reverts_and_force_pushes_over_git_daemon() {
    let remote = GitRemote::new();
    let daemon = GitDaemon::start(remote.base());
    follows_the_branch(&remote, &daemon.url("origin.git")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_commits_reverts_and_force_pushes_over_file_url() {
    let remote = GitRemote::new();
    follows_the_branch(&remote, &remote.file_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_commits_reverts_and_force_pushes_over_smart_http() {
    let remote = GitRemote::new();
    let server = GitHttpServer::start(remote.base(), false).await;
    follows_the_branch(&remote, &server.url("origin.git")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_http_repository_without_credentials_says_what_to_do() {
    let remote = GitRemote::new();
    seed(&remote);
    let server = GitHttpServer::start(remote.base(), true).await;
    let sluice = serve(&server.url("origin.git"), &[]).await;
    let (status, body) = wait_for(TIMEOUT, "/readyz to explain the refusal", || async {
        let (status, body) = sluice.get("/readyz").await.ok()?;
        body["reason"]
            .as_str()?
            .contains("authentication required")
            .then_some((status, body))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("--git-credentials-file"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_path_is_a_local_repository() {
    let remote = GitRemote::new();
    let first = seed(&remote);
    let path = remote.origin().to_str().expect("UTF-8").to_owned();
    let sluice = serve(&path, &[]).await;
    let shown = wait_served(&sluice, &first, "the first commit").await;
    assert_eq!(shown["repo"], path.as_str());
}

// ---------------------------------------------------------------------------------------------
// A commit that does not load is refused and reported; the fix is applied.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_commit_is_refused_and_the_fix_applied() {
    let remote = GitRemote::new();
    let daemon = GitDaemon::start(remote.base());
    let good = seed(&remote);
    let sluice = serve(&daemon.url("origin.git"), &[]).await;
    wait_served(&sluice, &good, "the first commit").await;

    let broken = remote.commit_file("mesh/broken.yaml", BROKEN_YAML, "a broken file");
    let shown = wait_for(TIMEOUT, "the broken commit to be reported", || async {
        let source = sluice.get_json("/debug/source").await.ok()?;
        (source["last_error"]["revision"] == broken.as_str()).then_some(source)
    })
    .await;
    assert_eq!(
        shown["revision"],
        good.as_str(),
        "a broken commit was served: {shown:#}"
    );
    let errors = shown["last_error"]["errors"].as_array().expect("errors[]");
    assert!(
        errors
            .iter()
            .any(|e| e["file"] == "mesh/broken.yaml" && e["line"] == 4 && e["column"].is_u64()),
        "expected an error at mesh/broken.yaml:4: {shown:#}"
    );
    assert!(
        sluice.full_log().contains(&broken),
        "the log does not name the refused commit"
    );
    assert!(sluice.metric("sluice_revisions_refused_total").await >= 1.0);

    remote.remove("mesh/broken.yaml");
    let fixed = remote.commit("remove the broken file");
    let shown = wait_served(&sluice, &fixed, "the fixing commit").await;
    assert!(shown["last_error"].is_null(), "{shown:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_leaving_the_path_is_refused() {
    let remote = GitRemote::new();
    let good = seed(&remote);
    let sluice = serve(&remote.file_url(), &[]).await;
    wait_served(&sluice, &good, "the first commit").await;

    remote.write("secret.yaml", ECHO_SERVICES);
    remote.symlink("mesh/leak.yaml", "../secret.yaml");
    let leaking = remote.commit("a symlink out of mesh/");
    let shown = wait_for(TIMEOUT, "the symlink to be refused", || async {
        let source = sluice.get_json("/debug/source").await.ok()?;
        (source["last_error"]["revision"] == leaking.as_str()).then_some(source)
    })
    .await;
    assert_eq!(shown["revision"], good.as_str());
    let errors = shown["last_error"]["errors"].as_array().expect("errors[]");
    assert!(
        errors.iter().any(|e| e["file"] == "mesh/leak.yaml"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("leaves the manifest folder"))),
        "{shown:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// The remote goes away and comes back; several commits land meanwhile.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_keeps_the_last_revision_and_recovers() {
    let remote = GitRemote::new();
    let mut daemon = GitDaemon::start(remote.base());
    let good = seed(&remote);
    let url = daemon.url("origin.git");
    let sluice = serve(&url, &[]).await;
    wait_served(&sluice, &good, "the first commit").await;
    let applied_before = sluice.metric("sluice_revisions_applied_total").await;

    daemon.stop();
    let shown = wait_for(TIMEOUT, "failed fetches to be reported", || async {
        let source = sluice.get_json("/debug/source").await.ok()?;
        (source["fetch"]["consecutive_failures"].as_u64()? >= 3).then_some(source)
    })
    .await;
    assert_eq!(shown["revision"], good.as_str(), "{shown:#}");
    let error = shown["fetch"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&url),
        "the error does not name the remote: {shown:#}"
    );
    assert!(shown["fetch"]["next_attempt_at"].is_string(), "{shown:#}");
    assert!(
        sluice
            .metric("sluice_git_fetches_total{result=\"error\"}")
            .await
            >= 3.0
    );
    let (status, _) = sluice.get("/readyz").await.expect("/readyz");
    assert_eq!(
        status, 200,
        "a served revision stays ready while the remote is away"
    );

    // Three commits land while the server is away (pushed to the repository directly).
    remote.commit_file(ROUTE_FILE, &echo_split_route(80, 20), "80/20");
    remote.commit_file(ROUTE_FILE, &echo_split_route(60, 40), "60/40");
    let newest = remote.commit_file(ROUTE_FILE, &echo_split_route(50, 50), "50/50");
    daemon.restart();
    let shown = wait_served(&sluice, &newest, "the newest commit after recovery").await;
    assert!(shown["fetch"]["last_error"].is_null(), "{shown:#}");
    assert_eq!(shown["fetch"]["consecutive_failures"], 0, "{shown:#}");
    assert_eq!(
        sluice.metric("sluice_revisions_applied_total").await,
        applied_before + 1.0,
        "only the newest of the commits that landed meanwhile is applied"
    );

    let log = sluice.full_log();
    let warnings = log.matches("git fetch failed;").count();
    assert_eq!(
        warnings, 1,
        "a remote that stays away is logged once as a warning, not at every retry:\n{log}"
    );
    assert!(log.contains("git fetch recovered"), "{log}");

    // The next commit after the recovery is applied normally.
    let after = remote.commit_file(ROUTE_FILE, &echo_split_route(90, 10), "back to 90/10");
    wait_served(&sluice, &after, "a commit after recovery").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_branch_keeps_the_last_revision_and_recovers() {
    let remote = GitRemote::new();
    let daemon = GitDaemon::start(remote.base());
    let good = seed(&remote);
    let sluice = serve(&daemon.url("origin.git"), &[]).await;
    wait_served(&sluice, &good, "the first commit").await;

    remote.delete_branch();
    let shown = wait_for(TIMEOUT, "the missing branch to be reported", || async {
        let source = sluice.get_json("/debug/source").await.ok()?;
        let error = source["fetch"]["last_error"].as_str()?;
        error.contains("does not exist").then_some(source)
    })
    .await;
    assert_eq!(shown["revision"], good.as_str(), "{shown:#}");

    let back = remote.commit_file(ROUTE_FILE, &echo_split_route(50, 50), "branch is back");
    let shown = wait_served(&sluice, &back, "the recreated branch").await;
    assert!(shown["fetch"]["last_error"].is_null(), "{shown:#}");
}

// ---------------------------------------------------------------------------------------------
// Start-up without a reachable remote.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_remote_answers() {
    let remote = GitRemote::new();
    let first = seed(&remote);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let url = format!("git://{addr}/origin.git");
    let sluice = serve(&url, &[]).await;

    let reason = wait_for(
        TIMEOUT,
        "/readyz to explain why it is not ready",
        || async {
            let (status, body) = sluice.get("/readyz").await.ok()?;
            assert_eq!(status, 503, "ready without a revision: {body}");
            let reason = body["reason"].as_str()?.to_owned();
            reason.contains("failed").then_some(reason)
        },
    )
    .await;
    assert!(reason.contains(&url), "{reason}");
    wait_until(TIMEOUT, "the fetch to be retried", || async {
        let source = source(&sluice).await;
        source["fetch"]["consecutive_failures"].as_u64() >= Some(3) && source["revision"].is_null()
    })
    .await;

    let _daemon = GitDaemon::start_on(remote.base(), addr);
    sluice.wait_ready().await;
    wait_served(&sluice, &first, "the first commit once the remote answers").await;
}

#[test]
fn a_password_in_the_repo_url_is_refused() {
    let output = std::process::Command::new(support::sluice_path())
        .args([
            "serve",
            "--repo",
            "https://deploy:hunter2@git.example/mesh.git",
        ])
        .args([
            "--xds-listen",
            "127.0.0.1:0",
            "--debug-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run sluice serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "sluice serve accepted it: {stderr}"
    );
    assert!(stderr.contains("must not hold a password"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the password was echoed: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Credentials: sent to the server, never shown.

/// An HTTP server that refuses every request with 401 and records the `Authorization` headers
/// it was sent.
async fn refusing_http_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use axum::http::{header, HeaderMap, StatusCode};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = axum::Router::new().fallback({
        let seen = seen.clone();
        move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                if let Some(auth) = headers.get(header::AUTHORIZATION) {
                    seen.lock()
                        .unwrap()
                        .push(auth.to_str().unwrap_or_default().to_owned());
                }
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
                    "authentication required",
                )
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

/// Standard base64 with padding, as HTTP Basic authentication encodes credentials.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_never_sent_in_clear_text_nor_shown() {
    const TOKEN: &str = "tok-5f1e2d3c-never-print-me";
    let (addr, seen) = refusing_http_server().await;
    let url = format!("http://{addr}/org/mesh.git");
    let sluice = serve(
        &url,
        &[
            ("SLUICE_GIT_USERNAME", "deploy-bot"),
            ("SLUICE_GIT_TOKEN", TOKEN),
            ("RUST_LOG", "debug"),
        ],
    )
    .await;
    let shown = wait_for(TIMEOUT, "the refused fetch to be reported", || async {
        let source = sluice.get_json("/debug/source").await.ok()?;
        (source["fetch"]["consecutive_failures"].as_u64()? >= 2).then_some(source)
    })
    .await;
    let error = shown["fetch"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("clear text"), "{shown:#}");
    // Credentials go over HTTPS only (gitoxide refuses plain HTTP): none reached the server.
    assert!(
        seen.lock().unwrap().is_empty(),
        "credentials were sent over plain HTTP: {:?}",
        seen.lock().unwrap()
    );
    let encoded = base64(format!("deploy-bot:{TOKEN}").as_bytes());
    let (_, readyz) = sluice.get("/readyz").await.expect("/readyz");
    for (what, text) in [
        ("/debug/source", shown.to_string()),
        ("/readyz", readyz.to_string()),
        ("the log", sluice.full_log()),
    ] {
        assert!(!text.contains(TOKEN), "{what} shows the token:\n{text}");
        assert!(
            !text.contains(&encoded),
            "{what} shows the encoded credentials"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SSH: without an sshd, a stand-in `ssh` on PATH runs the remote command locally, so gitoxide's
// SSH transport is exercised end to end and the options Sluice passes to ssh are recorded.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_runs_ssh_with_the_key_and_known_hosts_given() {
    use std::os::unix::fs::PermissionsExt as _;
    let remote = GitRemote::new();
    let first = seed(&remote);
    let bin = tempfile::tempdir().expect("temp dir");
    let args_log = bin.path().join("ssh-args");
    // Like ssh, it joins the words after the destination into the remote command.
    let script = format!(
        "#!/bin/sh\n\
         for a in \"$@\"; do printf '%s\\n' \"$a\"; done >> '{log}'\n\
         while [ $# -gt 0 ] && [ \"$1\" != git@127.0.0.1 ]; do shift; done\n\
         shift\n\
         exec sh -c \"$*\"\n",
        log = args_log.display()
    );
    let ssh = bin.path().join("ssh");
    std::fs::write(&ssh, script).expect("write ssh");
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let key = bin.path().join("id_ed25519");
    let known_hosts = bin.path().join("known_hosts");
    std::fs::write(&key, "not a real key\n").expect("write key");
    std::fs::write(&known_hosts, "").expect("write known_hosts");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let url = format!("ssh://git@127.0.0.1{}", remote.origin().display());
    let sluice = Sluice::start_args(
        &[
            "--repo",
            &url,
            "--path",
            "mesh",
            "--poll-interval",
            "500ms",
            "--ssh-key-file",
            key.to_str().expect("UTF-8"),
            "--ssh-known-hosts",
            known_hosts.to_str().expect("UTF-8"),
        ],
        &[("PATH", &path)],
    )
    .await;
    let shown = wait_served(&sluice, &first, "the first commit over ssh").await;
    assert_eq!(
        shown["repo"],
        format!("ssh://127.0.0.1{}", remote.origin().display()),
        "the user is not shown"
    );
    let args = std::fs::read_to_string(&args_log).expect("ssh was run");
    let args: Vec<&str> = args.lines().collect();
    let has_pair = |a: &str, b: &str| args.windows(2).any(|w| w[0] == a && w[1] == b);
    assert!(has_pair("-i", key.to_str().expect("UTF-8")), "{args:?}");
    assert!(has_pair("-o", "IdentitiesOnly=yes"), "{args:?}");
    assert!(has_pair("-o", "StrictHostKeyChecking=yes"), "{args:?}");
    assert!(has_pair("-o", "BatchMode=yes"), "{args:?}");
    assert!(
        has_pair(
            "-o",
            &format!("UserKnownHostsFile={}", known_hosts.display())
        ),
        "{args:?}"
    );
    assert!(args.contains(&"git@127.0.0.1"), "{args:?}");
}

// ---------------------------------------------------------------------------------------------
// A push webhook fetches at once, even with a one-hour poll interval.

/// `sha256=HEX` of the body, as GitHub signs a hook.
fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_applies_a_commit_at_once_and_a_wrongly_signed_one_is_refused() {
    const SECRET: &str = "the secret the Git host signs with";
    let remote = GitRemote::new();
    let daemon = GitDaemon::start(remote.base());
    let first = seed(&remote);
    let dir = tempfile::tempdir().expect("temp dir");
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write secret");
    let webhook = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let url = daemon.url("origin.git");
    let sluice = Sluice::start_args(
        &[
            "--repo",
            &url,
            "--path",
            "mesh",
            "--poll-interval",
            "1h",
            "--webhook-listen",
            &webhook.to_string(),
            "--webhook-secret-file",
            secret_file.to_str().expect("UTF-8"),
        ],
        &[],
    )
    .await;
    wait_served(&sluice, &first, "the first commit").await;

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let push = |secret: &'static str| {
        let http = http.clone();
        async move {
            let body = serde_json::to_vec(&serde_json::json!({
                "ref": "refs/heads/main",
                "after": "0000000000000000000000000000000000000000",
                "commits": [],
            }))
            .expect("JSON");
            let response = http
                .post(format!("http://{webhook}/hooks/github"))
                .header("content-type", "application/json")
                .header("x-github-event", "push")
                .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
                .header("x-hub-signature-256", github_signature(secret, &body))
                .body(body)
                .send()
                .await
                .expect("POST the hook");
            response.status().as_u16()
        }
    };

    let second = remote.commit_file(ROUTE_FILE, &echo_split_route(50, 50), "50/50");
    assert_eq!(push("not the secret").await, 401);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        source(&sluice).await["revision"],
        first.as_str(),
        "a wrongly signed hook fetched"
    );

    let signed_at = std::time::Instant::now();
    let status = push(SECRET).await;
    assert!(
        (200..300).contains(&status),
        "signed hook answered {status}"
    );
    wait_served(&sluice, &second, "the commit announced by the hook").await;
    let took = signed_at.elapsed();
    eprintln!("webhook to served: {took:?}");
    assert!(
        took <= Duration::from_secs(2),
        "the hooked commit took {took:?} to be served (poll interval 1h)"
    );
    assert!(
        sluice
            .metric("sluice_webhook_requests_total{result=\"accepted\"}")
            .await
            >= 1.0
    );
    assert!(
        sluice
            .metric("sluice_webhook_requests_total{result=\"rejected\"}")
            .await
            >= 1.0
    );
}

// ---------------------------------------------------------------------------------------------
// --cache-dir: a shallow fetch, kept across restarts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_the_cached_commit_while_the_remote_is_away() {
    let remote = GitRemote::new();
    let mut daemon = GitDaemon::start(remote.base());
    let first = seed(&remote);
    let cache = tempfile::tempdir().expect("temp dir");
    let url = daemon.url("origin.git");
    let args = [
        "--repo",
        &url,
        "--path",
        "mesh",
        "--poll-interval",
        "500ms",
        "--cache-dir",
        cache.path().to_str().expect("UTF-8"),
    ];
    {
        let sluice = Sluice::start_args(&args, &[]).await;
        wait_served(&sluice, &first, "the first commit").await;
        remote.commit_file(ROUTE_FILE, &echo_split_route(50, 50), "50/50");
        let second = remote.head();
        wait_served(&sluice, &second, "the second commit").await;
        // Back to the first commit: nothing to download, but the cache must remember it.
        remote.force_push(&first);
        wait_served(&sluice, &first, "the force-push back").await;
    }
    let repos: Vec<_> = std::fs::read_dir(cache.path())
        .expect("read the cache dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert_eq!(repos.len(), 1, "one cached repository: {repos:?}");
    assert!(
        repos[0].join("shallow").is_file(),
        "the fetch was not shallow: no {}",
        repos[0].join("shallow").display()
    );

    daemon.stop();
    let sluice = Sluice::start_args(&args, &[]).await;
    sluice.wait_ready().await;
    let shown = wait_served(
        &sluice,
        &first,
        "the cached commit while the remote is away",
    )
    .await;
    assert!(shown["fetch"]["last_error"].is_string(), "{shown:#}");

    daemon.restart();
    let next = remote.commit_file(ROUTE_FILE, &echo_split_route(20, 80), "20/80");
    let shown = wait_served(&sluice, &next, "a commit once the remote is back").await;
    assert!(shown["fetch"]["last_error"].is_null(), "{shown:#}");
}
