//! The Gateway API mesh (GAMMA) conformance suite, run outside Kubernetes against real Envoys,
//! once over delta ADS and once over state-of-the-world ADS.
//!
//! Each protocol gets one topology (Sluice, and every pod of the base manifests as an echo
//! server with its own sidecar), and the tests run on it one after the other: Sluice's own
//! fixtures (tests/fixtures/conformance) always, and the upstream suite when it is found (see
//! `support::conformance` for where it is looked for). Every test prints `PASS Name` or
//! `FAIL Name: reason`; the test fails at the end, listing the failures. In CI (`CI=true`) a
//! missing upstream suite is a failure, never a silent skip.
//!
//! `scripts/conformance [DIR]` runs this file against DIR with the report shown.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use support::conformance::model::{Expect, RedirectExpect};
use support::conformance::runner::{run_suite, Outcome, Suite, Verdict, SUPPORTED_FEATURES};
use support::conformance::topology::{deployments, pod_name, Topology};
use support::conformance::verdict::{
    bucket, check, check_distribution, check_location, observed_from_grpc, parse_location, Observed,
};
use support::conformance::{
    default_upstream_dir, own_suite, upstream_dir, upstream_layout, upstream_suite,
};
use support::Protocol;

/// Whether this run is CI's, where every part of the suite must run.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The suites to run: Sluice's own, and the upstream one when found.
fn suites() -> Vec<Suite> {
    let mut suites = vec![own_suite()];
    let dir = upstream_dir();
    let explicit = std::env::var_os("SLUICE_CONFORMANCE_DIR").is_some_and(|d| !d.is_empty());
    match upstream_layout(&dir) {
        Some(_) => suites.push(upstream_suite(&dir).unwrap_or_else(|e| panic!("{e:#}"))),
        None if explicit => panic!(
            "SLUICE_CONFORMANCE_DIR={} holds no Gateway API mesh conformance suite \
             (base-manifests.yaml and tests/, or a kubernetes-sigs/gateway-api checkout)",
            dir.display()
        ),
        None if in_ci() => panic!(
            "the upstream mesh conformance suite is not in {} (set SLUICE_CONFORMANCE_DIR to \
             where it is); in CI it must run, never be skipped",
            dir.display()
        ),
        None => println!(
            "the upstream mesh conformance suite was not found in {} (set \
             SLUICE_CONFORMANCE_DIR to a checkout of kubernetes-sigs/gateway-api); running \
             Sluice's own fixtures only",
            dir.display()
        ),
    }
    suites
}

async fn conformance(protocol: Protocol) {
    let suites = suites();
    let bases: Vec<(String, String)> = suites
        .iter()
        .map(|s| (s.name.clone(), s.base.clone()))
        .collect();
    let topology = Topology::start(protocol, &bases)
        .await
        .unwrap_or_else(|e| panic!("starting the {protocol} topology: {e:#}"));
    let tag = format!("conformance[{protocol}]");
    let mut outcomes: Vec<Outcome> = Vec::new();
    for suite in &suites {
        println!(
            "{tag} {} suite: {} tests, base {}, strict checks {}",
            suite.name,
            suite.tests.len(),
            suite.base_path.display(),
            if suite.strict { "on" } else { "off" }
        );
        outcomes.extend(run_suite(&topology, suite, &tag).await);
    }
    let failures: Vec<String> = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Fail(_)))
        .map(|o| format!("{} ({} suite)", o, o.suite))
        .collect();
    println!(
        "{tag} {} passed, {} not supported, {} failed",
        outcomes
            .iter()
            .filter(|o| o.verdict == Verdict::Pass)
            .count(),
        outcomes
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::NotSupported(_)))
            .count(),
        failures.len()
    );
    if !failures.is_empty() {
        eprintln!(
            "----- sluice serve log ({protocol}) -----\n{}",
            topology.sluice_log()
        );
    }
    assert!(
        failures.is_empty(),
        "{} conformance test(s) failed over {protocol} ADS:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_delta() {
    conformance(Protocol::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sotw() {
    conformance(Protocol::Sotw).await;
}

// ---------------------------------------------------------------------------------------------
// The runner's own logic, without a network.

/// Every upstream mesh test, by short name (EXPECTATIONS.md §5).
const UPSTREAM_TESTS: [&str; 23] = [
    "MeshBasic",
    "MeshHTTPRouteSimpleSameNamespace",
    "MeshTrafficSplit",
    "MeshPorts",
    "MeshFrontend",
    "MeshFrontendHostname",
    "MeshConsumerRoute",
    "MeshHTTPRouteMatching",
    "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteRequestHeaderModifier",
    "MeshHTTPRouteBackendRequestHeaderModifier",
    "MeshHTTPRouteRewritePath",
    "MeshHTTPRouteNamedRule",
    "MeshHTTPRouteRedirectHostAndStatus",
    "MeshHTTPRouteRedirectPath",
    "MeshHTTPRouteRedirectPort",
    "MeshHTTPRouteSchemeRedirect",
    "MeshHTTPRoute303Redirect",
    "MeshHTTPRoute307Redirect",
    "MeshHTTPRoute308Redirect",
    "MeshHTTPRouteWeight",
    "MeshGRPCRouteWeight",
    "MeshGRPCRouteRequestHeaderModifier",
];

#[test]
fn every_upstream_test_is_defined_once() {
    let tests = support::conformance::upstream::tests();
    let names: Vec<&str> = tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, UPSTREAM_TESTS);
    for test in &tests {
        for feature in &test.features {
            assert!(
                SUPPORTED_FEATURES.contains(feature),
                "{} needs {feature}, which Sluice does not claim",
                test.name
            );
        }
    }
}

#[test]
fn upstream_manifests_exist_when_the_suite_does() {
    let dir = upstream_dir();
    let Some((_, tests_dir)) = upstream_layout(&dir) else {
        assert!(
            !in_ci(),
            "the upstream suite is missing from {} in CI",
            dir.display()
        );
        return;
    };
    for test in support::conformance::upstream::tests() {
        for manifest in &test.manifests {
            assert!(
                tests_dir.join(manifest).is_file(),
                "{}: {} is not in {}",
                test.name,
                manifest,
                tests_dir.display()
            );
        }
    }
}

#[test]
fn the_default_upstream_folder_is_beside_the_repository() {
    assert!(default_upstream_dir().ends_with("../shared/conformance/gateway-api-mesh"));
}

#[test]
fn every_own_fixture_is_used_and_valid() {
    let suite = own_suite();
    let used: BTreeSet<String> = suite
        .tests
        .iter()
        .flat_map(|t| t.manifests.iter().cloned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&suite.tests_dir)
        .expect("fixture folder")
        .map(|e| {
            e.expect("fixture entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(used, present, "fixtures used by tests vs fixtures present");
    // Each fixture with the base is a revision Sluice serves without an error.
    for manifest in &used {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(&suite.base_path, dir.path().join("base.yaml")).expect("copy base");
        std::fs::copy(suite.tests_dir.join(manifest), dir.path().join(manifest))
            .expect("copy fixture");
        validate(dir.path(), manifest);
    }
}

/// Runs `sluice validate` on `dir`, which must be valid.
fn validate(dir: &Path, what: &str) {
    let output = std::process::Command::new(support::sluice_path())
        .arg("validate")
        .arg(dir)
        .output()
        .expect("run sluice validate");
    assert!(
        output.status.success(),
        "sluice validate refused {what}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn upstream_manifests_validate_when_the_suite_is_present() {
    let Some((base, tests_dir)) = upstream_layout(&upstream_dir()) else {
        return;
    };
    for test in support::conformance::upstream::tests() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(&base, dir.path().join("base.yaml")).expect("copy base");
        for manifest in &test.manifests {
            std::fs::copy(tests_dir.join(manifest), dir.path().join(manifest))
                .expect("copy manifest");
        }
        validate(dir.path(), &test.name);
    }
}

#[test]
fn deployments_become_pods_with_their_template_labels() {
    let own = own_suite();
    let found = deployments(&own.base).expect("base parses");
    let names: Vec<String> = found.iter().map(|d| d.pod.to_string()).collect();
    assert_eq!(
        names,
        [
            "sluice-mesh/web-v1",
            "sluice-mesh/web-v2",
            "sluice-mesh-client/shell"
        ]
    );
    assert_eq!(
        found[0].labels.get("version").map(String::as_str),
        Some("v1")
    );
    assert_eq!(found[0].replicas, 1);
}

#[test]
fn pod_names_look_like_replica_set_pods_and_bucket_to_their_deployment() {
    let pod = support::conformance::model::PodRef::new("ns", "echo-v1");
    let name = pod_name(&pod, 0);
    let parts: Vec<&str> = name.split('-').collect();
    assert_eq!(parts.len(), 4, "{name}");
    assert_eq!(parts[2].len(), 10, "{name}");
    assert_eq!(parts[3].len(), 5, "{name}");
    assert_eq!(bucket(&name), "echo-v1");
    assert_ne!(
        name,
        pod_name(
            &support::conformance::model::PodRef::new("other", "echo-v1"),
            0
        )
    );
    assert_eq!(bucket("echo"), "echo");
    assert_eq!(bucket("echo-v1"), "echo-v1");
    assert_eq!(bucket("a-b-c"), "a");
}

fn hostnames(v1: usize, v2: usize) -> Vec<String> {
    let mut out = vec!["echo-v1-aaaaaaaaaa-bbbbb".to_owned(); v1];
    out.extend(vec!["echo-v2-cccccccccc-ddddd".to_owned(); v2]);
    out
}

#[test]
fn distribution_tolerance_is_the_upstream_one() {
    let shares = vec![("echo-v1".to_owned(), 0.7), ("echo-v2".to_owned(), 0.3)];
    // §2: v1 325..=374 passes; 375 fails by floating-point rounding, as upstream.
    assert!(check_distribution(&hostnames(325, 175), &shares).is_ok());
    assert!(check_distribution(&hostnames(374, 126), &shares).is_ok());
    assert!(check_distribution(&hostnames(375, 125), &shares).is_err());
    assert!(check_distribution(&hostnames(324, 176), &shares).is_err());
    // Exactly 500 answers, every one from an expected backend, both backends seen.
    assert!(check_distribution(&hostnames(350, 149), &shares).is_err());
    assert!(check_distribution(&hostnames(500, 0), &shares).is_err());
    let mut stray = hostnames(350, 149);
    stray.push("echo-v3-eeeeeeeeee-fffff".to_owned());
    assert!(check_distribution(&stray, &shares).is_err());
    let mut empty = hostnames(350, 149);
    empty.push(String::new());
    assert!(check_distribution(&empty, &shares).is_err());
}

fn backend_saw(headers: &[(&str, &str)]) -> Observed {
    Observed {
        status: 200,
        hostname: "echo-v1-aaaaaaaaaa-bbbbb".to_owned(),
        request_headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        ..Observed::default()
    }
}

#[test]
fn request_headers_join_every_value_without_spaces() {
    let expect = Expect {
        request_headers: vec![("X-Header-Add".into(), "old,new".into())],
        backend: Some("echo-v1".into()),
        ..Expect::default()
    };
    assert!(check(
        &expect,
        &backend_saw(&[("x-header-add", "old"), ("x-header-add", "new")]),
        "/",
        false
    )
    .is_ok());
    assert!(check(
        &expect,
        &backend_saw(&[("x-header-add", "old,new")]),
        "/",
        false
    )
    .is_ok());
    assert!(check(
        &expect,
        &backend_saw(&[("x-header-add", "old, new")]),
        "/",
        false
    )
    .is_err());
    assert!(check(&expect, &backend_saw(&[]), "/", false).is_err());
    let wrong_backend = Expect {
        backend: Some("echo-v2".into()),
        ..Expect::default()
    };
    assert!(check(&wrong_backend, &backend_saw(&[]), "/", false).is_err());
}

#[test]
fn response_headers_compare_the_last_value_and_status_defaults_to_200() {
    let observed = Observed {
        status: 200,
        response_headers: vec![
            ("X-Header-Set".into(), "first".into()),
            ("x-header-set".into(), "last".into()),
        ],
        ..Observed::default()
    };
    let last = Expect {
        response_headers: vec![("x-header-set".into(), "last".into())],
        ..Expect::default()
    };
    assert!(check(&last, &observed, "/", false).is_ok());
    let absent = Expect {
        absent_response_headers: vec!["X-HEADER-SET".into()],
        ..Expect::default()
    };
    assert!(check(&absent, &observed, "/", false).is_err());
    let not_found = Observed {
        status: 404,
        ..Observed::default()
    };
    assert!(check(&Expect::default(), &not_found, "/", false).is_err());
    let expect_404 = Expect {
        status: vec![404],
        ..Expect::default()
    };
    assert!(check(&expect_404, &not_found, "/", false).is_ok());
}

#[test]
fn locations_follow_the_gateway_side_rules() {
    let location = parse_location("https://example.org:8443/a/b?c=d").expect("parses");
    assert_eq!(location.scheme, "https");
    assert_eq!(location.host, "example.org");
    assert_eq!(location.port, "8443");
    assert_eq!(location.path, "/a/b?c=d");
    assert_eq!(
        parse_location("http://[::1]:80").expect("parses").host,
        "::1"
    );

    let host = RedirectExpect::any().host("example.org");
    assert!(check_location(&host, "http://example.org/orig", "/orig").is_ok());
    assert!(check_location(&host, "http://example.org:80/orig", "/orig").is_ok());
    // The original scheme, path and a default port are expected unless the test names others.
    assert!(check_location(&host, "https://example.org/orig", "/orig").is_err());
    assert!(check_location(&host, "http://example.org/other", "/orig").is_err());
    assert!(check_location(&host, "http://example.org:8080/orig", "/orig").is_err());
    let https = RedirectExpect::any().scheme("https");
    assert!(check_location(&https, "https://echo:443/orig", "/orig").is_ok());
    assert!(check_location(&https, "https://echo:80/orig", "/orig").is_err());
    let port = RedirectExpect::any().port(8083);
    assert!(check_location(&port, "http://echo:8083/orig", "/orig").is_ok());
    assert!(check_location(&port, "http://echo/orig", "/orig").is_err());

    // Strict mode checks the Location of a redirect; the mesh harness does not.
    let expect = Expect {
        status: vec![302],
        redirect: Some(RedirectExpect::any().path("/new")),
        ..Expect::default()
    };
    let redirect = Observed {
        status: 302,
        response_headers: vec![("location".into(), "http://echo/old".into())],
        ..Observed::default()
    };
    assert!(check(&expect, &redirect, "/old", false).is_ok());
    assert!(check(&expect, &redirect, "/old", true).is_err());
}

#[test]
fn grpc_replies_are_read_like_the_upstream_echo_output() {
    let observed = observed_from_grpc(
        "Host=echo:7070\nRequestHeader=x-a:1\nRequestHeader=x-a:2\nRequestHeader=x-b:k:v\n\
         StatusCode=200\nProto=GRPC\nHostname=echo-v2-aaaaaaaaaa-bbbbb",
        vec![("x-response".into(), "yes".into())],
    );
    assert_eq!(observed.status, 200);
    assert_eq!(observed.hostname, "echo-v2-aaaaaaaaaa-bbbbb");
    assert_eq!(observed.host.as_deref(), Some("echo:7070"));
    assert_eq!(
        observed.request_headers,
        [
            ("x-a".to_owned(), "1".to_owned()),
            ("x-a".to_owned(), "2".to_owned()),
            ("x-b".to_owned(), "k:v".to_owned())
        ]
    );
    let expect = Expect {
        request_headers: vec![("X-A".into(), "1,2".into())],
        response_headers: vec![("X-Response".into(), "yes".into())],
        backend: Some("echo-v2".into()),
        ..Expect::default()
    };
    assert!(check(&expect, &observed, "", false).is_ok());
}
