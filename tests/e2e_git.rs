//! End-to-end acceptance of `sluice serve --repo`: canary releases by pull request.
//!
//! A bare repository holds the echo mesh (Services `echo`, `echo-v1`, `echo-v2` and an
//! HTTPRoute on `echo` splitting between the versions) below `mesh/`. It is served over a real
//! network transport (a `git daemon` on loopback, `git://`) and over `file://`; Sluice follows
//! `main` with a 500 ms poll. Two echo servers with their sidecars and a client sidecar make the
//! mesh; an app sends requests through the client sidecar one after the other for the whole
//! test, and not one of them may fail.
//!
//! The story: 90/10 is observed; a commit to 50/50 is followed within the poll interval + 2 s;
//! its `git revert` goes back to 90/10; a broken commit changes nothing and `/debug/source`
//! names the commit, file and line; the fixing commit is applied. Over `git://` the server
//! then goes away for a while (traffic keeps flowing, the error is reported), comes back, and
//! the next commit is applied; finally a force-push rewrites the branch to the first commit's
//! older tree, and that is followed too. Each served commit's SHA starts the route version the
//! client sidecar ACKed.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use support::workload::Workload;
use support::{
    echo_split_route, wait_for, wait_until, GitDaemon, GitRemote, MeshClient, Protocol, Sidecar,
    Sluice, ECHO_SERVICES, STARTUP_TIMEOUT,
};

const POLL: &str = "500ms";
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long after a push the traffic must have followed it.
const FOLLOW_DEADLINE: Duration = Duration::from_millis(500 + 2000);
/// How long a refused commit or a failed fetch may take to show in `/debug/source`.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests looked at per phase.
const PHASE: usize = 400;

const ROUTE_FILE: &str = "mesh/routes/echo.yaml";
/// Not YAML: a mapping value where none may start, on line 4.
const BROKEN_YAML: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken: here\n";

/// One request of the app: when it finished, and the pod that answered or what went wrong.
struct Sample {
    at: Instant,
    outcome: Result<String, String>,
}

/// An app that sends requests to `echo` one after the other until stopped (or three minutes
/// at most, whatever happens to the test).
struct App {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    fn start(http: MeshClient) -> App {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (samples, stop) = (samples.clone(), stop.clone());
            async move {
                let give_up = Instant::now() + Duration::from_secs(600);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                    let outcome = match http.send("echo", &format!("/app/{i}")).await {
                        Ok((200, pod)) if pod == "echo-v1" || pod == "echo-v2" => Ok(pod),
                        Ok((status, pod)) => Err(format!("status {status} from pod {pod:?}")),
                        Err(e) => Err(format!("{e:#}")),
                    };
                    samples.lock().unwrap().push(Sample {
                        at: Instant::now(),
                        outcome,
                    });
                    i += 1;
                }
            }
        });
        App {
            samples,
            stop,
            task,
        }
    }

    /// Waits for `PHASE` requests finished after `from`; returns how many of them echo-v2
    /// answered. Panics on a failed request.
    async fn v2_share_after(&self, from: Instant, what: &str) -> u64 {
        let samples = self.samples.clone();
        wait_until(
            Duration::from_secs(120),
            &format!("{PHASE} requests for {what}"),
            || {
                let n = samples
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.at >= from)
                    .count();
                std::future::ready(n >= PHASE)
            },
        )
        .await;
        let samples = self.samples.lock().unwrap();
        let window: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at >= from)
            .take(PHASE)
            .collect();
        let failures: Vec<&String> = samples
            .iter()
            .filter_map(|s| s.outcome.as_ref().err())
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed by {what}, first: {:?}",
            failures.len(),
            samples.len(),
            failures.first()
        );
        window
            .iter()
            .filter(|s| matches!(&s.outcome, Ok(pod) if pod == "echo-v2"))
            .count() as u64
    }

    /// Asserts echo-v2 answers `share` of the `PHASE` requests after `from`.
    async fn assert_split_after(&self, from: Instant, share: f64, what: &str) {
        let v2 = self.v2_share_after(from, what).await;
        assert_share(what, v2, PHASE as u64, share);
    }

    /// When, after `pushed_at`, a window of 100 requests first had a share of echo-v2 nearer
    /// `share` than `previous`: how long the split took to follow. Reported, not asserted.
    fn followed_after(&self, pushed_at: Instant, previous: f64, share: f64) -> Option<Duration> {
        let samples = self.samples.lock().unwrap();
        let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= pushed_at).collect();
        let midpoint = (previous + share) / 2.0 * 100.0;
        after
            .windows(100)
            .find(|w| {
                let v2 = w
                    .iter()
                    .filter(|s| matches!(&s.outcome, Ok(p) if p == "echo-v2"))
                    .count() as f64;
                if share > previous {
                    v2 >= midpoint
                } else {
                    v2 <= midpoint
                }
            })
            .map(|w| w[w.len() - 1].at - pushed_at)
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let samples = self.samples.lock().unwrap();
        let failures: Vec<&String> = samples
            .iter()
            .filter_map(|s| s.outcome.as_ref().err())
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed, first: {:?}",
            failures.len(),
            samples.len(),
            failures.first()
        );
        samples.len()
    }
}

/// Asserts `hits` out of `n` is within four binomial standard deviations of `share`.
fn assert_share(what: &str, hits: u64, n: u64, share: f64) {
    let n_f = n as f64;
    let sd = (n_f * share * (1.0 - share)).sqrt();
    assert!(
        (hits as f64 - n_f * share).abs() <= 4.0 * sd,
        "{what}: echo-v2 answered {hits} of {n} requests ({:.1}%), expected {:.1}% ± {:.1} requests (4 sd)",
        100.0 * hits as f64 / n_f,
        100.0 * share,
        4.0 * sd
    );
}

/// Waits until `/debug/source` serves `commit` and the client sidecar ACKed a route version
/// that starts with the commit's SHA.
async fn wait_served(sluice: &Sluice, commit: &str, what: &str) {
    let short = &commit[..12];
    wait_until(
        REPORT_TIMEOUT,
        &format!("{what}: commit {commit} served and its routes ACKed by the client"),
        || async {
            let Ok(source) = sluice.get_json("/debug/source").await else {
                return false;
            };
            let Ok(Some(node)) = sluice.syncz_node("client").await else {
                return false;
            };
            source["revision"] == commit
                && node["types"]["rds"]["acked_version"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(short))
        },
    )
    .await;
}

/// Pushes a new split and checks the traffic follows it within the deadline.
async fn push_split(
    remote: &GitRemote,
    sluice: &Sluice,
    app: &App,
    (v1, v2): (u32, u32),
    previous: f64,
    what: &str,
) {
    let commit = remote.commit_file(ROUTE_FILE, &echo_split_route(v1, v2), what);
    follow(
        sluice,
        app,
        &commit,
        Instant::now(),
        previous,
        v2 as f64 / 100.0,
        what,
    )
    .await;
}

/// Checks that traffic follows `commit`, pushed at `pushed_at`, to `share`.
async fn follow(
    sluice: &Sluice,
    app: &App,
    commit: &str,
    pushed_at: Instant,
    previous: f64,
    share: f64,
    what: &str,
) {
    app.assert_split_after(
        pushed_at + FOLLOW_DEADLINE,
        share,
        &format!("{what}, {FOLLOW_DEADLINE:?} after the push"),
    )
    .await;
    wait_served(sluice, commit, what).await;
    eprintln!(
        "{what}: traffic followed {:?} after the push (poll interval {POLL_INTERVAL:?})",
        app.followed_after(pushed_at, previous, share)
    );
}

async fn canary_by_pull_request(
    protocol: Protocol,
    remote: GitRemote,
    mut daemon: Option<GitDaemon>,
) {
    remote.write("mesh/services.yaml", ECHO_SERVICES);
    remote.write(ROUTE_FILE, &echo_split_route(90, 10));
    let first = remote.commit("echo mesh, 90/10");
    let url = match &daemon {
        Some(daemon) => daemon.url("origin.git"),
        None => remote.file_url(),
    };
    let sluice = Sluice::start_args(
        &["--repo", &url, "--path", "mesh", "--poll-interval", POLL],
        &[],
    )
    .await;
    sluice.wait_ready().await;
    let _v1 = Workload::start("echo-v1", "app=echo,version=v1", &sluice, protocol).await;
    let _v2 = Workload::start("echo-v2", "app=echo,version=v2", &sluice, protocol).await;
    let client = Sidecar::new("client", sluice.xds_addr(), protocol)
        .labels("app=client")
        .start()
        .await;
    let http = MeshClient::new(client.outbound());
    sluice.wait_synced("client").await;
    wait_until(
        STARTUP_TIMEOUT,
        "requests to echo to reach both echo-v1 and echo-v2",
        || {
            let http = http.clone();
            async move {
                let pods: std::collections::BTreeSet<String> = futures::stream::iter(0..60)
                    .map(|_| http.send("echo", "/warmup"))
                    .buffer_unordered(4)
                    .filter_map(|r| async move { r.ok().filter(|(s, _)| *s == 200) })
                    .map(|(_, pod)| pod)
                    .collect()
                    .await;
                pods.contains("echo-v1") && pods.contains("echo-v2")
            }
        },
    )
    .await;
    wait_served(&sluice, &first, "the first commit").await;

    let app = App::start(http);
    app.assert_split_after(Instant::now(), 0.10, "the first commit (90/10)")
        .await;

    // A pull request moves 50% to v2, and its revert moves it back.
    push_split(&remote, &sluice, &app, (50, 50), 0.10, "the 50/50 commit").await;
    let reverted = remote.revert_head();
    follow(
        &sluice,
        &app,
        &reverted,
        Instant::now(),
        0.50,
        0.10,
        "the revert",
    )
    .await;

    // A broken commit: nothing changes, and it is reported with its file and line.
    let broken = remote.commit_file("mesh/broken.yaml", BROKEN_YAML, "a broken file");
    let pushed_at = Instant::now();
    let shown = wait_for(
        REPORT_TIMEOUT,
        "the broken commit to be reported",
        || async {
            let source = sluice.get_json("/debug/source").await.ok()?;
            (source["last_error"]["revision"] == broken.as_str()).then_some(source)
        },
    )
    .await;
    assert_eq!(shown["revision"], reverted.as_str(), "{shown:#}");
    assert!(
        shown["last_error"]["errors"]
            .as_array()
            .is_some_and(|errors| errors
                .iter()
                .any(|e| e["file"] == "mesh/broken.yaml" && e["line"] == 4)),
        "{shown:#}"
    );
    app.assert_split_after(pushed_at, 0.10, "the broken commit (unchanged 90/10)")
        .await;

    // The fixing commit removes the broken file and moves to 50/50: it is applied.
    remote.remove("mesh/broken.yaml");
    remote.write(ROUTE_FILE, &echo_split_route(50, 50));
    let fixed = remote.commit("fix: remove the broken file, 50/50");
    follow(
        &sluice,
        &app,
        &fixed,
        Instant::now(),
        0.10,
        0.50,
        "the fixing commit",
    )
    .await;
    let source = sluice
        .get_json("/debug/source")
        .await
        .expect("/debug/source");
    assert!(source["last_error"].is_null(), "{source:#}");

    let mut share = 0.50;
    if let Some(daemon) = daemon.as_mut() {
        // The server goes away for a while: traffic stays, the failure is reported.
        daemon.stop();
        let down_at = Instant::now();
        let shown: Value = wait_for(
            REPORT_TIMEOUT,
            "the failed fetches to be reported",
            || async {
                let source = sluice.get_json("/debug/source").await.ok()?;
                (source["fetch"]["consecutive_failures"].as_u64()? >= 3).then_some(source)
            },
        )
        .await;
        assert!(shown["fetch"]["last_error"].is_string(), "{shown:#}");
        assert_eq!(shown["revision"], fixed.as_str(), "{shown:#}");
        app.assert_split_after(down_at, 0.50, "the remote being away (unchanged 50/50)")
            .await;
        daemon.restart();
        push_split(
            &remote,
            &sluice,
            &app,
            (20, 80),
            0.50,
            "the first commit after recovery",
        )
        .await;
        share = 0.80;
        let source = sluice
            .get_json("/debug/source")
            .await
            .expect("/debug/source");
        assert!(source["fetch"]["last_error"].is_null(), "{source:#}");
    }

    // A force-push rewrites the branch to the first commit's tree, which is older.
    remote.force_push(&first);
    follow(
        &sluice,
        &app,
        &first,
        Instant::now(),
        share,
        0.10,
        "the force-push to the first commit",
    )
    .await;

    let sent = app.stop().await;
    eprintln!("{protocol}: {sent} requests, none failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_pull_request_over_git_daemon_delta() {
    let remote = GitRemote::new();
    let daemon = GitDaemon::start(remote.base());
    canary_by_pull_request(Protocol::Delta, remote, Some(daemon)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_pull_request_over_file_url_sotw() {
    let remote = GitRemote::new();
    canary_by_pull_request(Protocol::Sotw, remote, None).await;
}
