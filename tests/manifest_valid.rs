//! The valid example mesh under `tests/fixtures/manifests/valid/` loads without a finding, with
//! every object typed and positioned, and the kinds Sluice does not read skipped.

use std::path::Path;

use sluice::manifest::model::{HttpMethod, IntOrString, PathMatchType, ValueMatchType};
use sluice::manifest::{load_dir, read_dir, LoadOptions, ObjectKey};

fn fixture() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/manifests/valid"
    ))
}

#[test]
fn valid_mesh_loads_without_findings() {
    let rev = match load_dir(fixture(), &LoadOptions::default()) {
        Ok(rev) => rev,
        Err(diags) => panic!(
            "the valid mesh did not load:\n{}",
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    assert_eq!(rev.warnings, []);

    let services: Vec<String> = rev.services.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        services,
        [
            "default/client",
            "default/echo",
            "default/echo-v1",
            "default/echo-v2"
        ]
    );
    let echo = &rev.services[&ObjectKey::new("default", "echo")];
    assert_eq!(echo.pos.to_string(), "services.yaml:2:1");
    let port = &echo.value.spec.ports[0];
    assert_eq!(port.value.port, 80);
    assert_eq!(port.value.target_port, Some(IntOrString::Int(8080)));
    assert_eq!(port.value.app_protocol.as_deref(), Some("http"));
    assert_eq!(port.pos.to_string(), "services.yaml:11:5");
    let v2 = &rev.services[&ObjectKey::new("default", "echo-v2")];
    assert_eq!(v2.value.spec.selector["version"], "v2");

    // The Namespace and the Deployment are skipped; the EndpointSlice is read.
    assert_eq!(rev.endpoint_slices.len(), 1);
    let slice = &rev.endpoint_slices[&ObjectKey::new("default", "echo-v2-vm")];
    assert_eq!(slice.value.endpoints[0].value.addresses, ["127.0.20.1"]);
    assert_eq!(slice.pos.file.as_ref(), "endpoints/echo-v2-vm.yaml");

    assert_eq!(rev.http_routes.len(), 1);
    assert!(rev.grpc_routes.is_empty());
    let route = &rev.http_routes[0];
    assert_eq!(route.key, ObjectKey::new("default", "echo-split"));
    let rules = &route.value.spec.rules;
    assert_eq!(rules.len(), 2);
    let canary = &rules[0].value;
    let weights: Vec<(String, Option<u32>)> = canary
        .backend_refs
        .iter()
        .map(|b| (b.value.name.clone(), b.value.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("echo-v1".to_string(), Some(90)),
            ("echo-v2".to_string(), Some(10))
        ]
    );
    assert_eq!(
        canary.backend_refs[1].pos.to_string(),
        "routes/echo-split.yaml:31:7"
    );
    let m = &canary.matches[0].value;
    let path = &m.path.as_ref().expect("path match").value;
    assert_eq!(path.match_type, Some(PathMatchType::PathPrefix));
    assert_eq!(path.value.as_deref(), Some("/api"));
    assert_eq!(m.headers[0].value.value, "true");
    assert_eq!(
        m.query_params[0].value.match_type,
        Some(ValueMatchType::RegularExpression)
    );
    assert_eq!(m.method, Some(HttpMethod::Get));
    let timeouts = &rules[1].value.timeouts.as_ref().expect("timeouts").value;
    assert_eq!(timeouts.request.as_deref(), Some("10s"));
    assert_eq!(timeouts.backend_request.as_deref(), Some("2s"));
}

#[test]
fn read_dir_lists_only_manifests_in_path_order() {
    let files = read_dir(fixture(), &LoadOptions::default()).expect("readable");
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "cluster.yaml",
            "endpoints/echo-v2-vm.yaml",
            "routes/echo-split.yaml",
            "services.yaml"
        ]
    );
}
