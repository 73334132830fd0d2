//! Sluice's runner for the Gateway API mesh (GAMMA) conformance suite, outside Kubernetes.
//!
//! # Layout
//! - `model`: a test as data: requests, from which workload, and what each answer must show.
//! - `upstream`: the upstream tests by their short names, as EXPECTATIONS.md restates them;
//!   their manifests are read from the upstream folder at run time.
//! - `own`: Sluice's own fixtures (tests/fixtures/conformance), which always run.
//! - `topology`: the pods (echo servers with sidecars) and the `sluice serve` they share.
//! - `http`: the raw HTTP/1.1 client; `verdict`: the checks, retries' arithmetic and tolerances.
//! - `runner`: runs tests one at a time and reports `PASS Name` / `FAIL Name: reason`.
//!
//! The upstream folder comes from `SLUICE_CONFORMANCE_DIR`, by default
//! `<crate>/../shared/conformance/gateway-api-mesh`. It may be that folder (`base-manifests.yaml`
//! and `tests/*.yaml`), a checkout of kubernetes-sigs/gateway-api, or its `conformance/` folder.

pub mod http;
pub mod model;
pub mod own;
pub mod runner;
pub mod topology;
pub mod upstream;
pub mod verdict;

use std::path::{Path, PathBuf};

use runner::Suite;

/// Where the upstream suite is looked for when `SLUICE_CONFORMANCE_DIR` is not set.
pub fn default_upstream_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/gateway-api-mesh")
}

/// The folder given by `SLUICE_CONFORMANCE_DIR`, or the default one.
pub fn upstream_dir() -> PathBuf {
    match std::env::var_os("SLUICE_CONFORMANCE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => default_upstream_dir(),
    }
}

/// The base manifests and the folder of test manifests in an upstream folder, in any of the
/// layouts it comes in; `None` when `dir` holds none of them.
pub fn upstream_layout(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let candidates = [
        // The restated suite: base-manifests.yaml and tests/.
        (dir.join("base-manifests.yaml"), dir.join("tests")),
        // A gateway-api checkout.
        (
            dir.join("conformance/mesh/manifests.yaml"),
            dir.join("conformance/tests/mesh"),
        ),
        // Its conformance/ folder.
        (dir.join("mesh/manifests.yaml"), dir.join("tests/mesh")),
    ];
    candidates
        .into_iter()
        .find(|(base, tests)| base.is_file() && tests.is_dir())
}

/// Whether checks beyond the Go mesh harness's apply to the upstream tests
/// (`SLUICE_CONFORMANCE_STRICT=1`).
pub fn strict_upstream() -> bool {
    std::env::var("SLUICE_CONFORMANCE_STRICT").is_ok_and(|v| v == "1" || v == "true")
}

/// The upstream suite read from `dir`.
pub fn upstream_suite(dir: &Path) -> anyhow::Result<Suite> {
    let (base_path, tests_dir) = upstream_layout(dir).ok_or_else(|| {
        anyhow::anyhow!(
            "{} holds no Gateway API mesh conformance suite (base-manifests.yaml and tests/, or \
             conformance/mesh/manifests.yaml and conformance/tests/mesh/)",
            dir.display()
        )
    })?;
    let base = std::fs::read_to_string(&base_path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", base_path.display()))?;
    Ok(Suite {
        name: "upstream".to_owned(),
        base_path,
        base,
        tests_dir,
        tests: upstream::tests(),
        strict: strict_upstream(),
    })
}

/// Sluice's own fixtures.
pub fn own_suite() -> Suite {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance");
    let base_path = dir.join("base.yaml");
    let base = std::fs::read_to_string(&base_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", base_path.display()));
    Suite {
        name: "sluice".to_owned(),
        base_path,
        base,
        tests_dir: dir.join("tests"),
        tests: own::tests(),
        strict: true,
    }
}
