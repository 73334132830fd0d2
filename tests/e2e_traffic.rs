//! End-to-end acceptance tests: a real `sluice serve --dir`, real Envoy sidecars bootstrapped by
//! `sluice bootstrap`, and real HTTP upstreams, each workload on its own loopback address.
//!
//! The mesh: Services `echo` (app=echo), `echo-v1` (app=echo, version=v1) and `echo-v2`
//! (app=echo, version=v2), all port 80 → targetPort 8080, and an HTTPRoute on `echo` that splits
//! 90/10 between `echo-v1` and `echo-v2`. Two echo servers, each with its own sidecar, register as
//! endpoints; a client sidecar (node `client`) carries the test's requests with `Host: echo`.
//!
//! Every scenario runs once over delta ADS and once over state-of-the-world ADS.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{json, Value};

use support::workload::Workload;
use support::{
    echo_split_route, wait_for, wait_until, Envoy, ManifestDir, MeshClient, Protocol, Sidecar,
    Sluice, ECHO_SERVICES, STARTUP_TIMEOUT,
};

/// How long a change in the manifest directory may take to reach the sidecars' traffic.
const FOLLOW_DEADLINE: Duration = Duration::from_secs(2);

/// How long a rejected revision may take to show in `/debug/source`. Generous: the check is on
/// what is shown, not on how fast.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

const ROUTE_FILE: &str = "routes/echo.yaml";

/// A route on Service `echo-v1` that sends all of its traffic to `backend`.
fn redirect_route(backend: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-v1-override
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo-v1
    port: 80
  rules:
  - backendRefs:
    - name: {backend}
      port: 80
"#
    )
}

/// Not YAML: a mapping value where none may start.
const BROKEN_YAML: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: broken: here
spec:
  ports:
  - port: 80
"#;

/// The 1-based number of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> u64 {
    let index = text
        .lines()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the manifest"));
    index as u64 + 1
}

/// The whole topology. Fields drop in order: sidecars first, then Sluice, then the manifests.
struct Mesh {
    client: Envoy,
    v1: Workload,
    v2: Workload,
    sluice: Sluice,
    manifests: ManifestDir,
    http: MeshClient,
}

impl Mesh {
    /// Starts everything with the 90/10 route and waits until the client is SYNCED and requests
    /// reach both versions.
    async fn start(protocol: Protocol) -> Mesh {
        Mesh::start_with(protocol, |client| client).await
    }

    /// [`Mesh::start`], with the client sidecar adjusted by `client`.
    async fn start_with(protocol: Protocol, client: impl FnOnce(Sidecar) -> Sidecar) -> Mesh {
        let manifests = ManifestDir::new();
        manifests.write("services.yaml", ECHO_SERVICES);
        manifests.write(ROUTE_FILE, &echo_split_route(90, 10));
        let sluice = Sluice::start(manifests.path()).await;
        sluice.wait_ready().await;
        let v1 = Workload::start("echo-v1", "app=echo,version=v1", &sluice, protocol).await;
        let v2 = Workload::start("echo-v2", "app=echo,version=v2", &sluice, protocol).await;
        let client =
            client(Sidecar::new("client", sluice.xds_addr(), protocol).labels("app=client"))
                .start()
                .await;
        let http = MeshClient::new(client.outbound());
        let mesh = Mesh {
            client,
            v1,
            v2,
            sluice,
            manifests,
            http,
        };
        let node = mesh.sluice.wait_synced("client").await;
        assert!(
            node["protocol"]
                .as_str()
                .is_some_and(|p| p.eq_ignore_ascii_case(protocol.as_str())),
            "client in /debug/syncz does not speak {protocol}: {node}"
        );
        let http = &mesh.http;
        wait_until(
            STARTUP_TIMEOUT,
            "requests to echo to reach both echo-v1 and echo-v2",
            || async move {
                let pods: BTreeSet<String> = futures::stream::iter(0..60)
                    .map(|_| http.send("echo", "/warmup"))
                    .buffer_unordered(4)
                    .filter_map(|r| async move { r.ok().filter(|(s, _)| *s == 200) })
                    .map(|(_, pod)| pod)
                    .collect()
                    .await;
                pods.contains("echo-v1") && pods.contains("echo-v2")
            },
        )
        .await;
        mesh
    }
}

/// How a batch of requests went.
#[derive(Debug, Default)]
struct Tally {
    by_pod: BTreeMap<String, u64>,
    failures: Vec<String>,
}

impl Tally {
    fn count(&self, pod: &str) -> u64 {
        self.by_pod.get(pod).copied().unwrap_or(0)
    }

    fn record(&mut self, outcome: &Outcome) {
        match outcome {
            Ok(pod) => *self.by_pod.entry(pod.clone()).or_default() += 1,
            Err(failure) => self.failures.push(failure.clone()),
        }
    }
}

/// The answering pod of a successful request, or what went wrong.
type Outcome = Result<String, String>;

fn outcome(result: anyhow::Result<(u16, String)>) -> Outcome {
    match result {
        Ok((200, pod)) if pod == "echo-v1" || pod == "echo-v2" => Ok(pod),
        Ok((status, pod)) => Err(format!("status {status} from pod {pod:?}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Sends `n` requests (four at a time) with `Host: host`.
async fn tally(http: &MeshClient, host: &str, n: usize) -> Tally {
    tally_path(http, host, "/tally", n).await
}

/// Sends `n` requests (four at a time) with `Host: host` to `path/0`, `path/1`...
async fn tally_path(http: &MeshClient, host: &str, path: &str, n: usize) -> Tally {
    let outcomes: Vec<Outcome> = futures::stream::iter(0..n)
        .map(|i| async move { outcome(http.send(host, &format!("{path}/{i}")).await) })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut tally = Tally::default();
    for outcome in &outcomes {
        tally.record(outcome);
    }
    tally
}

/// Asserts `hits` out of `n` is within four binomial standard deviations of `share`.
fn assert_share(what: &str, hits: u64, n: u64, share: f64) {
    assert!(n > 0, "no requests for {what}");
    let n_f = n as f64;
    let mean = n_f * share;
    let sd = (n_f * share * (1.0 - share)).sqrt();
    assert!(
        (hits as f64 - mean).abs() <= 4.0 * sd,
        "{what}: {hits} of {n} requests ({:.1}%), expected {:.1}% ± {:.1} requests (4 sd)",
        100.0 * hits as f64 / n_f,
        100.0 * share,
        4.0 * sd
    );
}

/// Sends requests and asserts none fails and echo-v2 gets `share` of them.
async fn assert_split(mesh: &Mesh, n: usize, share: f64, what: &str) {
    let tally = tally(&mesh.http, "echo", n).await;
    assert!(
        tally.failures.is_empty(),
        "{what}: {} of {n} requests failed, first: {:?}",
        tally.failures.len(),
        tally.failures.first()
    );
    assert_share(what, tally.count("echo-v2"), n as u64, share);
}

// ---------------------------------------------------------------------------------------------
// A: the route's weights split the traffic.

async fn weighted_split(protocol: Protocol) {
    let mesh = Mesh::start(protocol).await;
    assert_split(&mesh, 2000, 0.10, "echo-v2 share of 2000 requests to echo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_delta() {
    weighted_split(Protocol::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_sotw() {
    weighted_split(Protocol::Sotw).await;
}

// ---------------------------------------------------------------------------------------------
// B: a weight change in the directory moves live traffic, without a failed request or restart.

struct Sample {
    at: Instant,
    outcome: Outcome,
}

fn v2_share(samples: &[Sample]) -> (u64, u64) {
    let v2 = samples
        .iter()
        .filter(|s| matches!(&s.outcome, Ok(pod) if pod == "echo-v2"))
        .count();
    (v2 as u64, samples.len() as u64)
}

/// What shows that a process kept running: Envoys' PIDs and uptimes, and the instant each
/// sidecar's stream to Sluice was opened.
#[derive(Debug)]
struct Liveness {
    sluice_pid: u32,
    envoys: Vec<(String, u32, Duration)>,
    connected_at: BTreeMap<String, Value>,
}

async fn liveness(mesh: &mut Mesh) -> anyhow::Result<Liveness> {
    assert!(mesh.sluice.is_running(), "sluice serve exited");
    let mut envoys = Vec::new();
    for envoy in [&mut mesh.client, &mut mesh.v1.envoy, &mut mesh.v2.envoy] {
        assert!(envoy.is_running(), "envoy {:?} exited", envoy.node_id());
        envoys.push((
            envoy.node_id().to_owned(),
            envoy.pid(),
            envoy.uptime().await?,
        ));
    }
    let mut connected_at = BTreeMap::new();
    for node in ["client", "echo-v1", "echo-v2"] {
        let entry = mesh
            .sluice
            .syncz_node(node)
            .await?
            .with_context(|| format!("node {node:?} not in /debug/syncz"))?;
        connected_at.insert(node.to_owned(), entry["connected_at"].clone());
    }
    Ok(Liveness {
        sluice_pid: mesh.sluice.pid(),
        envoys,
        connected_at,
    })
}

async fn live_weight_change(protocol: Protocol) -> anyhow::Result<()> {
    let mut mesh = Mesh::start(protocol).await;
    let before = liveness(&mut mesh).await?;
    let liveness_taken = Instant::now();

    // An app that keeps sending, one request after the other. Bounded in time so it stops by
    // itself whatever happens to the test.
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn({
        let (http, samples, stop) = (mesh.http.clone(), samples.clone(), stop.clone());
        async move {
            let give_up = Instant::now() + Duration::from_secs(180);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                let outcome = outcome(http.send("echo", &format!("/live/{i}")).await);
                let sample = Sample {
                    at: Instant::now(),
                    outcome,
                };
                samples.lock().unwrap().push(sample);
                i += 1;
            }
        }
    });
    let sample_count = |since: Instant| {
        let samples = samples.clone();
        move || {
            let n = samples
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.at >= since)
                .count();
            std::future::ready(n >= 400)
        }
    };
    wait_until(
        Duration::from_secs(60),
        "400 requests before the change",
        sample_count(liveness_taken),
    )
    .await;

    mesh.manifests.write(ROUTE_FILE, &echo_split_route(50, 50));
    let changed_at = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "400 requests after the deadline for the change",
        sample_count(changed_at + FOLLOW_DEADLINE),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    sender.await.context("sender task")?;
    let samples = std::mem::take(&mut *samples.lock().unwrap());

    let failures: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the change, first: {:?}",
        failures.len(),
        samples.len(),
        failures.first()
    );

    let split_at = samples.partition_point(|s| s.at < changed_at);
    let (old, new) = samples.split_at(split_at);
    let (v2, n) = v2_share(old);
    assert_share("echo-v2 share before the change (90/10)", v2, n, 0.10);

    // A sliding window of 100 requests: the first one after the change whose share of echo-v2
    // is nearer 50% than 10% tells when the split followed. Reported, not asserted: the
    // assertion below is on behaviour past the deadline.
    let followed = new
        .windows(100)
        .find(|w| v2_share(w).0 >= 30)
        .map(|w| w[w.len() - 1].at - changed_at);
    eprintln!("{protocol}: split followed the rename after {followed:?} (100-request window)");

    let past_deadline = samples.partition_point(|s| s.at < changed_at + FOLLOW_DEADLINE);
    let after = &samples[past_deadline..];
    let (v2, n) = v2_share(&after[..after.len().min(400)]);
    assert_share(
        &format!("echo-v2 share {FOLLOW_DEADLINE:?} after the change to 50/50"),
        v2,
        n,
        0.50,
    );

    let after = liveness(&mut mesh).await?;
    let elapsed = liveness_taken.elapsed();
    assert_eq!(after.sluice_pid, before.sluice_pid, "sluice was replaced");
    assert_eq!(
        after.connected_at, before.connected_at,
        "a sidecar's stream to Sluice was re-opened during the change"
    );
    for ((node, pid, up_before), (_, pid_after, up_after)) in
        before.envoys.iter().zip(&after.envoys)
    {
        assert_eq!(pid, pid_after, "envoy {node:?} was replaced");
        // Envoy reports whole seconds.
        assert!(
            *up_after + Duration::from_secs(2) >= *up_before + elapsed,
            "envoy {node:?} restarted: uptime {up_before:?} then {up_after:?}, {elapsed:?} apart"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_weight_change_delta() -> anyhow::Result<()> {
    live_weight_change(Protocol::Delta).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_weight_change_sotw() -> anyhow::Result<()> {
    live_weight_change(Protocol::Sotw).await
}

// ---------------------------------------------------------------------------------------------
// C: a revision that does not load or compile is refused, traffic stays, the error is shown.

/// Waits until `/debug/source` shows a rejected revision other than `previous` with an error in
/// `file`; asserts that error is on `line`. Returns the rejected revision.
async fn wait_for_rejection(
    sluice: &Sluice,
    previous: &Value,
    file: &str,
    line: u64,
    mentions: &str,
) -> Value {
    let last_error = wait_for(
        REPORT_TIMEOUT,
        &format!("/debug/source to report an error in {file}"),
        || async {
            let source = sluice.get_json("/debug/source").await.ok()?;
            let last_error = source["last_error"].clone();
            let names_file = last_error["errors"]
                .as_array()?
                .iter()
                .any(|e| e["file"].as_str().is_some_and(|f| f.ends_with(file)));
            (last_error["revision"] != *previous && names_file).then_some(last_error)
        },
    )
    .await;
    let errors = last_error["errors"].as_array().expect("errors[]");
    assert!(
        errors.iter().any(|e| {
            e["file"].as_str().is_some_and(|f| f.ends_with(file))
                && e["line"].as_u64() == Some(line)
                && e["message"].as_str().is_some_and(|m| m.contains(mentions))
        }),
        "expected an error at {file}:{line} mentioning {mentions:?}, /debug/source has \
         last_error = {last_error:#}"
    );
    last_error["revision"].clone()
}

/// Sends requests with `Host: host` and asserts every one is answered by `pod`.
async fn assert_all_to(mesh: &Mesh, host: &str, pod: &str, n: usize) {
    let tally = tally(&mesh.http, host, n).await;
    assert!(
        tally.failures.is_empty() && tally.count(pod) == n as u64,
        "expected all {n} requests to {host} answered by {pod}: {tally:?}"
    );
}

async fn bad_revisions(protocol: Protocol) -> anyhow::Result<()> {
    let mesh = Mesh::start(protocol).await;
    let source = mesh.sluice.get_json("/debug/source").await?;
    let good = source["revision"].clone();
    assert!(
        good.is_string() && source["last_error"].is_null(),
        "/debug/source before any bad revision: {source:#}"
    );

    // 1. Not YAML.
    mesh.manifests.write("broken.yaml", BROKEN_YAML);
    let rejected = wait_for_rejection(
        &mesh.sluice,
        &Value::Null,
        "broken.yaml",
        line_of(BROKEN_YAML, "broken: here"),
        "",
    )
    .await;
    let source = mesh.sluice.get_json("/debug/source").await?;
    assert_eq!(
        source["revision"], good,
        "a broken revision was served: {source:#}"
    );
    assert_split(&mesh, 500, 0.10, "echo-v2 share after a broken file").await;

    // 2. Valid YAML, but the route names a Service that the revision does not have.
    let missing = redirect_route("echo-v3");
    mesh.manifests.write("broken.yaml", &missing);
    wait_for_rejection(
        &mesh.sluice,
        &rejected,
        "broken.yaml",
        line_of(&missing, "name: echo-v3"),
        "echo-v3",
    )
    .await;
    let source = mesh.sluice.get_json("/debug/source").await?;
    assert_eq!(
        source["revision"], good,
        "a revision with a missing backend was served: {source:#}"
    );
    assert_split(&mesh, 500, 0.10, "echo-v2 share after a missing backend").await;
    assert_all_to(&mesh, "echo-v1", "echo-v1", 50).await;

    // 3. Fixed: the route now sends echo-v1's traffic to echo-v2, and that is applied.
    mesh.manifests
        .write("broken.yaml", &redirect_route("echo-v2"));
    let http = &mesh.http;
    wait_until(
        REPORT_TIMEOUT,
        "requests to echo-v1 to be answered by echo-v2 after the fix",
        || async move {
            matches!(http.send("echo-v1", "/fixed").await, Ok((200, pod)) if pod == "echo-v2")
        },
    )
    .await;
    assert_all_to(&mesh, "echo-v1", "echo-v2", 200).await;
    assert_split(&mesh, 500, 0.10, "echo-v2 share of echo after the fix").await;
    let source = mesh.sluice.get_json("/debug/source").await?;
    assert!(
        source["revision"].is_string() && source["revision"] != good,
        "the fixed revision is not the one served: {source:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_revisions_keep_last_good_delta() -> anyhow::Result<()> {
    bad_revisions(Protocol::Delta).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_revisions_keep_last_good_sotw() -> anyhow::Result<()> {
    bad_revisions(Protocol::Sotw).await
}

// ---------------------------------------------------------------------------------------------
// D: what Sluice says it serves a sidecar is what that Envoy holds.

/// The dynamic route configurations and active clusters of a config dump in Envoy's admin
/// shape, by name, each with its `version_info` (`last_updated` left out).
fn dynamic_routes_and_clusters(dump: &Value) -> anyhow::Result<Value> {
    let configs = dump["configs"]
        .as_array()
        .context("config dump has no configs[]")?;
    let of_type = |suffix: &str| {
        configs
            .iter()
            .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(suffix)))
    };
    let by_name = |section: Option<&Value>, list: &str, field: &str| -> BTreeMap<String, Value> {
        section
            .and_then(|s| s[list].as_array())
            .into_iter()
            .flatten()
            .map(|entry| {
                let name = entry[field]["name"].as_str().unwrap_or_default().to_owned();
                let kept = json!({
                    "version_info": entry["version_info"],
                    field: entry[field],
                });
                (name, kept)
            })
            .collect()
    };
    // Scopes: one group per listener `scoped_routes` name, its version and its scopes.
    let scopes: BTreeMap<String, Value> = of_type(".ScopedRoutesConfigDump")
        .and_then(|s| s["dynamic_scoped_route_configs"].as_array())
        .into_iter()
        .flatten()
        .map(|group| {
            let name = group["name"].as_str().unwrap_or_default().to_owned();
            let kept = json!({
                "version_info": group["version_info"],
                "scoped_route_configs": group["scoped_route_configs"],
            });
            (name, kept)
        })
        .collect();
    Ok(json!({
        "scoped_routes": scopes,
        "route_configs": by_name(of_type(".RoutesConfigDump"), "dynamic_route_configs", "route_config"),
        "clusters": by_name(of_type(".ClustersConfigDump"), "dynamic_active_clusters", "cluster"),
    }))
}

async fn config_dump_parity(protocol: Protocol) -> anyhow::Result<()> {
    let mesh = Mesh::start(protocol).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (ours, theirs) = loop {
        mesh.sluice.wait_synced("client").await;
        let ours = dynamic_routes_and_clusters(
            &mesh
                .sluice
                .get_json("/debug/config_dump?node=client")
                .await?,
        )?;
        let theirs = dynamic_routes_and_clusters(
            &mesh.client.admin_json("/config_dump?include_eds").await?,
        )?;
        // Both sides read a moving target (an endpoint change bumps versions): retry a while.
        if ours == theirs || Instant::now() > deadline {
            break (ours, theirs);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        ours, theirs,
        "Sluice's /debug/config_dump?node=client (left) differs from the client Envoy's own \
         /config_dump (right)"
    );
    for kind in ["scoped_routes", "route_configs", "clusters"] {
        let entries = ours[kind].as_object().expect("map");
        assert!(
            !entries.is_empty(),
            "no dynamic {kind} in the config dumps: {ours:#}"
        );
        for (name, entry) in entries {
            assert!(
                entry["version_info"]
                    .as_str()
                    .is_some_and(|v| !v.is_empty()),
                "{kind} {name:?} has no version_info: {entry:#}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_matches_envoy_delta() -> anyhow::Result<()> {
    config_dump_parity(Protocol::Delta).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_matches_envoy_sotw() -> anyhow::Result<()> {
    config_dump_parity(Protocol::Sotw).await
}

// ---------------------------------------------------------------------------------------------
// D2: the names a request may use for a Service, and requests addressed to an IP and port.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_pick_the_service_port_and_addresses_pass_through() {
    // One flavour is enough: the scope is chosen in the sidecar, not over the stream.
    let mesh = Mesh::start(Protocol::Delta).await;
    let v1_addr = mesh.v1.echo.addr();
    let expectations: Vec<(String, Option<&str>)> = vec![
        // Every spelling Kubernetes DNS resolves, in any case, with or without the port.
        ("echo-v1".into(), Some("echo-v1")),
        ("echo-v1:80".into(), Some("echo-v1")),
        ("echo-v1.default".into(), Some("echo-v1")),
        ("echo-v1.default:80".into(), Some("echo-v1")),
        ("echo-v1.default.svc".into(), Some("echo-v1")),
        ("Echo-V1.Default.SVC.cluster.local".into(), Some("echo-v1")),
        (
            "echo-v2.default.svc.cluster.local:80".into(),
            Some("echo-v2"),
        ),
        // An address with a port goes straight there, whatever the routes say.
        (v1_addr.to_string(), Some("echo-v1")),
        // No such port, namespace or host: Envoy's 404.
        ("echo-v1:8080".into(), None),
        ("echo-v1.elsewhere".into(), None),
        ("echo-v1.default.svc.cluster".into(), None),
        ("example.org".into(), None),
        (v1_addr.ip().to_string(), None),
    ];
    for (host, expected) in &expectations {
        let answer = mesh.http.send(host, "/hosts").await;
        match (expected, answer) {
            (Some(pod), Ok((200, answered))) => assert_eq!(&answered, pod, "Host: {host}"),
            (None, Ok((404, answered))) => assert_eq!(answered, "", "Host: {host}"),
            (expected, answer) => panic!("Host: {host}: expected {expected:?}, got {answer:?}"),
        }
    }
    // The scope header is Sluice's own: the sidecar writes it and removes it before upstream,
    // and a client cannot choose a scope by sending it.
    let spoofed = mesh
        .http
        .send_with(
            "echo-v1",
            "/spoofed",
            &[("x-sluice-scope", "echo-v2.default:80")],
        )
        .await
        .expect("a spoofed scope header");
    assert_eq!(spoofed, (200, "echo-v1".to_string()));
    let received = mesh.v1.echo.received();
    assert!(received.len() >= 8, "{received:?}");
    for request in &received {
        assert!(
            !request.headers.contains_key("x-sluice-scope"),
            "the scope header reached the upstream: {request:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// E: a route that passes Sluice's checks but that one sidecar's Envoy rejects.
//
// Sluice checks regexes against RE2's default program-size limit (100), as Envoy ships it. An
// Envoy fleet may tighten `re2.max_program_size.error_level`; the client sidecar here does, to 50
// (Sluice's own authority regex is 43), so a route with an ordinary regex (RE2 program size 68) is
// valid for Sluice and for the two echo sidecars, and NACKed by the client's Envoy in its own words.

const CANARY_FILE: &str = "routes/canary.yaml";
const CANARY_REGEX: &str = "^/canary/(alpha|beta|gamma|delta|epsilon|zeta)-[0-9]{1,16}$";

/// A route on `echo-v1` that sends `/canary/...` paths matching `path` (a `type` match) to
/// `echo-v2`, and everything else to `echo-v1`.
fn canary_route(match_type: &str, path: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-v1-canary
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo-v1
    port: 80
  rules:
  - matches:
    - path:
        type: {match_type}
        value: "{path}"
    backendRefs:
    - name: echo-v2
      port: 80
  - backendRefs:
    - name: echo-v1
      port: 80
"#
    )
}

/// The client Envoy's own count of rejected updates of `echo-v1`'s route configuration. (Envoy
/// counts a rejected RDS response against every route configuration it subscribes to, so this
/// counts responses.)
async fn envoy_rds_rejections(envoy: &Envoy) -> anyhow::Result<u64> {
    let (_, stats) = envoy
        .admin_get("/stats?filter=^http\\.outbound\\.rds\\.echo-v1\\.default_80\\.update_rejected$")
        .await?;
    Ok(stats
        .lines()
        .filter_map(|line| line.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
        .sum())
}

async fn envoy_nack(protocol: Protocol) -> anyhow::Result<()> {
    let mesh = Mesh::start_with(protocol, |client| {
        client.runtime("re2.max_program_size.error_level", "50")
    })
    .await;
    assert_all_to(&mesh, "echo-v1", "echo-v1", 20).await;
    let before = mesh.sluice.syncz_node("client").await?.context("client")?;
    let accepted = before["types"]["rds"]["acked_version"].clone();

    // Valid for Sluice: the revision is served to every sidecar.
    let route = canary_route("RegularExpression", CANARY_REGEX);
    mesh.manifests.write(CANARY_FILE, &route);
    let node = wait_for(
        REPORT_TIMEOUT,
        "the client's NACK of the route configuration in /debug/syncz",
        || async {
            let node = mesh.sluice.syncz_node("client").await.ok().flatten()?;
            (node["types"]["rds"]["status"] == "NACKED").then_some(node)
        },
    )
    .await;
    let rds = &node["types"]["rds"];
    let message = rds["last_nack"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("RE2 program size") && message.contains("/canary/"),
        "/debug/syncz shows Envoy's own message for the rejected regex: {rds:#}"
    );
    assert!(
        rds["last_nack"]["version"].is_string() && rds["last_nack"]["at_unix_ms"].is_u64(),
        "the NACK carries the rejected version and its time: {rds:#}"
    );
    // Origins name the first line of the manifest document a resource was compiled from.
    let canary_line = line_of(&route, "apiVersion:");
    let origins: Vec<&str> = rds["nack_origins"]
        .as_array()
        .context("nack_origins[]")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        origins
            .iter()
            .any(|o| o.ends_with(&format!("{CANARY_FILE}:{canary_line}"))),
        "/debug/syncz names the manifest and line of the rejected route: {rds:#}"
    );
    assert_eq!(
        rds["acked_version"], accepted,
        "the client keeps its last accepted route configuration: {rds:#}"
    );
    assert_eq!(
        node["types"]["cds"]["status"], "SYNCED",
        "a route NACK leaves the clusters alone: {node:#}"
    );
    // The two echo sidecars run Envoy's default limit and take the same revision.
    for echo in ["echo-v1", "echo-v2"] {
        let node = mesh.sluice.wait_synced(echo).await;
        assert_eq!(
            node["revision"],
            mesh.sluice.syncz_node("client").await?.context("client")?["revision"]
        );
    }
    assert!(
        mesh.sluice
            .metric("sluice_xds_nacks_total{type=\"rds\"}")
            .await
            >= 1.0
    );

    // Traffic keeps the previous configuration: the canary path still reaches echo-v1.
    assert_all_to(&mesh, "echo-v1", "echo-v1", 50).await;
    let tally = tally_path(&mesh.http, "echo-v1", "/canary/beta-", 50).await;
    assert!(
        tally.failures.is_empty() && tally.count("echo-v1") == 50,
        "the client still runs the previous routes: {tally:?}"
    );
    assert_split(&mesh, 300, 0.10, "echo-v2 share after the NACK").await;

    // No resend loop: over three seconds nothing more is pushed and Envoy rejects nothing more.
    let pushes = mesh
        .sluice
        .metric("sluice_xds_pushes_total{type=\"rds\"}")
        .await;
    let rejections = envoy_rds_rejections(&mesh.client).await?;
    assert_eq!(rejections, 1, "the client Envoy rejected the route once");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        mesh.sluice
            .metric("sluice_xds_pushes_total{type=\"rds\"}")
            .await,
        pushes,
        "route configurations were pushed again after the NACK"
    );
    assert_eq!(envoy_rds_rejections(&mesh.client).await?, 1);

    // The next revision is tried normally: a prefix match passes this Envoy too.
    mesh.manifests
        .write(CANARY_FILE, &canary_route("PathPrefix", "/canary"));
    let http = &mesh.http;
    wait_until(
        REPORT_TIMEOUT,
        "the fixed canary route to reach echo-v2",
        || async move {
            matches!(http.send("echo-v1", "/canary/beta-7").await, Ok((200, pod)) if pod == "echo-v2")
        },
    )
    .await;
    let node = mesh.sluice.wait_synced("client").await;
    assert_eq!(node["types"]["rds"]["status"], "SYNCED", "{node:#}");
    assert_all_to(&mesh, "echo-v1", "echo-v1", 20).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_nack_is_traced_and_not_resent_delta() -> anyhow::Result<()> {
    envoy_nack(Protocol::Delta).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_nack_is_traced_and_not_resent_sotw() -> anyhow::Result<()> {
    envoy_nack(Protocol::Sotw).await
}

// ---------------------------------------------------------------------------------------------
// The example mesh the README serves stays valid.

#[test]
fn example_mesh_validates() {
    let mesh = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mesh");
    let output = std::process::Command::new(support::sluice_path())
        .arg("validate")
        .arg(&mesh)
        .output()
        .expect("run sluice validate");
    assert!(
        output.status.success(),
        "sluice validate examples/mesh exited with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
