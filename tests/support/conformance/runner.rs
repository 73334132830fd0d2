//! Runs conformance tests one after the other on a [`Topology`]: apply the test's manifests,
//! run its steps with the upstream harness's retries and tolerances, remove the manifests, and
//! report one line per test.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::model::{Case, ConformanceTest, PodRef, Request, Step};
use super::topology::Topology;
use super::verdict::{check, check_distribution, DISTRIBUTION_REQUESTS, DISTRIBUTION_TRIES};

/// The features Sluice supports, by their Gateway API names. A test runs only when all of its
/// features are here; otherwise it is reported as not supported.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Mesh",
    "HTTPRoute",
    "GRPCRoute",
    "MeshClusterIPMatching",
    "MeshConsumerRoute",
    "MeshHTTPRouteRewritePath",
    "MeshHTTPRouteSchemeRedirect",
    "MeshHTTPRouteRedirectPort",
    "MeshHTTPRouteRedirectPath",
    "MeshHTTPRouteBackendRequestHeaderModification",
    "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteNamedRouteRule",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteParentRefPort",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
];

/// A case passes once this many attempts in a row pass (§0.5).
const REQUIRED_CONSECUTIVE_SUCCESSES: usize = 3;
/// The wait after a failed attempt (§0.5).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a case may take to converge (§0.5).
const MAX_TIME_TO_CONSISTENCY: Duration = Duration::from_secs(30);
/// Requests in flight during a distribution attempt.
const DISTRIBUTION_CONCURRENCY: usize = 10;
/// How long a mirrored copy may take to arrive.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// A set of tests with the folder their manifests are read from.
pub struct Suite {
    /// `upstream` or `sluice`: the folder the tests' manifests are served from.
    pub name: String,
    /// Where the base manifests come from (for messages).
    pub base_path: PathBuf,
    /// The base manifests' text.
    pub base: String,
    /// The folder that holds the tests' manifests.
    pub tests_dir: PathBuf,
    pub tests: Vec<ConformanceTest>,
    /// Also check what the Go mesh harness leaves out (EXPECTATIONS.md §3).
    pub strict: bool,
}

/// How one test went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    NotSupported(Vec<&'static str>),
    Fail(String),
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub suite: String,
    pub test: String,
    pub verdict: Verdict,
    pub took: Duration,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Pass => write!(f, "PASS {} ({:.1}s)", self.test, self.took.as_secs_f64()),
            Verdict::NotSupported(missing) => {
                write!(
                    f,
                    "NOT_SUPPORTED {}: needs {}",
                    self.test,
                    missing.join(", ")
                )
            }
            Verdict::Fail(reason) => write!(f, "FAIL {}: {reason}", self.test),
        }
    }
}

/// Runs every test of `suite`, printing `tag PASS Name` / `tag FAIL Name: reason` lines.
pub async fn run_suite(topology: &Topology, suite: &Suite, tag: &str) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for test in &suite.tests {
        let started = Instant::now();
        let verdict = run_test(topology, suite, test).await;
        let outcome = Outcome {
            suite: suite.name.clone(),
            test: test.name.clone(),
            verdict,
            took: started.elapsed(),
        };
        println!("{tag} {outcome}");
        outcomes.push(outcome);
    }
    outcomes
}

async fn run_test(topology: &Topology, suite: &Suite, test: &ConformanceTest) -> Verdict {
    let missing: Vec<&'static str> = test
        .features
        .iter()
        .copied()
        .filter(|f| !SUPPORTED_FEATURES.contains(f))
        .collect();
    if !missing.is_empty() {
        return Verdict::NotSupported(missing);
    }
    let mut files = Vec::new();
    for name in &test.manifests {
        let path = suite.tests_dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((name.clone(), text)),
            Err(e) => return Verdict::Fail(format!("cannot read {}: {e}", path.display())),
        }
    }
    let folder = format!("tests/{}", suite.name);
    if !files.is_empty() {
        if let Err(e) = topology.apply(&folder, &files).await {
            // Whatever part was written goes again, so the next test starts clean.
            let _ = topology.remove(&folder, &test.manifests).await;
            return Verdict::Fail(format!("applying {}: {e}", test.manifests.join(", ")));
        }
    }
    let mut verdict = Verdict::Pass;
    for (i, step) in test.steps.iter().enumerate() {
        if let Err(e) = run_step(topology, step, suite.strict).await {
            verdict = Verdict::Fail(format!("step {}: {e}", i + 1));
            break;
        }
    }
    if !files.is_empty() {
        if let Err(e) = topology.remove(&folder, &test.manifests).await {
            let cleanup = format!("removing {}: {e}", test.manifests.join(", "));
            verdict = match verdict {
                Verdict::Fail(reason) => Verdict::Fail(format!("{reason}; {cleanup}")),
                _ => Verdict::Fail(cleanup),
            };
        }
    }
    verdict
}

async fn run_step(topology: &Topology, step: &Step, strict: bool) -> Result<(), String> {
    match step {
        Step::Cases { parallel, cases } => {
            if *parallel {
                let results = futures::future::join_all(
                    cases.iter().map(|case| converge(topology, case, strict)),
                )
                .await;
                let failures: Vec<String> = results
                    .into_iter()
                    .zip(cases)
                    .enumerate()
                    .filter_map(|(i, (result, case))| {
                        result
                            .err()
                            .map(|e| format!("case {} ({}): {e}", i + 1, case.request))
                    })
                    .collect();
                if failures.is_empty() {
                    Ok(())
                } else {
                    Err(failures.join("; "))
                }
            } else {
                for (i, case) in cases.iter().enumerate() {
                    converge(topology, case, strict)
                        .await
                        .map_err(|e| format!("case {} ({}): {e}", i + 1, case.request))?;
                }
                Ok(())
            }
        }
        Step::Distribution { request, shares } => distribution(topology, request, shares).await,
        Step::Mirror { case, mirror } => mirrored(topology, case, mirror, strict).await,
    }
}

/// The eventual-consistency loop of §0.5: attempts until three in a row pass, 100 ms after each
/// failure, for at most 30 s.
pub async fn converge(topology: &Topology, case: &Case, strict: bool) -> Result<(), String> {
    let started = Instant::now();
    let mut streak = 0;
    loop {
        let attempt = match topology.send(&case.request).await {
            Ok(observed) => check(&case.expect, &observed, &case.request.path, strict),
            Err(e) => Err(format!("{e:#}")),
        };
        match attempt {
            Ok(()) => {
                streak += 1;
                if streak >= REQUIRED_CONSECUTIVE_SUCCESSES {
                    return Ok(());
                }
            }
            Err(reason) => {
                streak = 0;
                if started.elapsed() >= MAX_TIME_TO_CONSISTENCY {
                    return Err(format!(
                        "not converged within {MAX_TIME_TO_CONSISTENCY:?}; last attempt: {reason}"
                    ));
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        if started.elapsed() >= MAX_TIME_TO_CONSISTENCY + Duration::from_secs(5) {
            return Err("not converged: passes never reached three in a row".to_owned());
        }
    }
}

/// The weighted-distribution check of §2: up to 10 batches of 500 requests.
async fn distribution(
    topology: &Topology,
    request: &Request,
    shares: &[(String, f64)],
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 1..=DISTRIBUTION_TRIES {
        let results: Vec<Result<String, String>> = futures::stream::iter(0..DISTRIBUTION_REQUESTS)
            .map(|_| async move {
                topology
                    .send(request)
                    .await
                    .map(|observed| observed.hostname)
                    .map_err(|e| format!("{e:#}"))
            })
            .buffer_unordered(DISTRIBUTION_CONCURRENCY)
            .collect()
            .await;
        let verdict = match results.into_iter().collect::<Result<Vec<String>, String>>() {
            Ok(hostnames) => check_distribution(&hostnames, shares),
            Err(e) => Err(format!("a request failed: {e}")),
        };
        match verdict {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("attempt {attempt}: {e}"),
        }
    }
    Err(format!(
        "the distribution check failed {DISTRIBUTION_TRIES} times; {last}"
    ))
}

/// `case` converges, and the mirror pod receives copies of its request.
async fn mirrored(
    topology: &Topology,
    case: &Case,
    mirror: &PodRef,
    strict: bool,
) -> Result<(), String> {
    let mirror = topology.pod(mirror).map_err(|e| format!("{e:#}"))?;
    let path = if case.request.path.is_empty() {
        "/"
    } else {
        case.request.path.as_str()
    };
    let copies = || mirror.received().iter().filter(|r| r.url == path).count();
    let before = copies();
    converge(topology, case, strict).await?;
    let started = Instant::now();
    while copies() <= before {
        if started.elapsed() > MIRROR_TIMEOUT {
            return Err(format!(
                "{} answered, but the mirror {} received no copy of {path} within \
                 {MIRROR_TIMEOUT:?}",
                case.request, mirror.hostname
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
