//! The bootstraps `sluice bootstrap` prints are accepted by a real Envoy (`--mode validate`),
//! and the node they describe reaches Sluice unchanged once Envoy has parsed the YAML.
//!
//! Envoy comes from `SLUICE_ENVOY`, else `.venv/bin/envoy` (installed by `scripts/test`). A
//! missing Envoy fails the tests: a skipped check would read as a passed one.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use serde_json::Value;
use sluice::bootstrap::{node_info_from_proto, render, BootstrapOptions, XdsProtocol};
use sluice::node::NodeInfo;
use support::envoy_path;
use support::static_envoy::StaticEnvoy;

fn options(protocol: XdsProtocol) -> BootstrapOptions {
    BootstrapOptions {
        node_id: "checkout-7d9f/0".into(),
        namespace: "shop".into(),
        labels: BTreeMap::from([
            ("app".to_string(), "checkout".to_string()),
            ("app.kubernetes.io/version".to_string(), "1.10".to_string()),
            ("canary".to_string(), "yes".to_string()),
            ("empty".to_string(), String::new()),
            ("tricky".to_string(), "a: b # c, \"d\" \\ {e}".to_string()),
            ("null".to_string(), "null".to_string()),
        ]),
        address: "127.0.10.1".parse().expect("valid IP"),
        xds_address: "127.0.0.1:18000".into(),
        protocol,
        outbound_listen: "127.0.10.1:15001".parse().expect("valid address"),
        admin_listen: "127.0.10.1:9901".parse().expect("valid address"),
        zone: Some("eu-west-1a".into()),
        region: Some("eu-west-1".into()),
    }
}

/// Runs `envoy --mode validate` on the rendered bootstrap and fails with Envoy's words.
/// Validate mode opens no hot-restart shared memory, so parallel runs need no `--base-id`.
fn assert_envoy_accepts(name: &str, opts: &BootstrapOptions) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.yaml"));
    let yaml = render(opts).expect("renders");
    std::fs::write(&path, &yaml).expect("write bootstrap");
    let output = Command::new(envoy_path())
        .args(["--mode", "validate", "--log-level", "warning", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run envoy --mode validate");
    assert!(
        output.status.success(),
        "Envoy refused the {name} bootstrap ({}):\n{}{}\n--- bootstrap ---\n{yaml}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn envoy_accepts_a_delta_bootstrap_with_labels_and_locality() {
    assert_envoy_accepts("delta", &options(XdsProtocol::Delta));
}

#[test]
fn envoy_accepts_a_sotw_bootstrap() {
    assert_envoy_accepts("sotw", &options(XdsProtocol::Sotw));
}

#[test]
fn envoy_accepts_a_bare_bootstrap() {
    let opts = BootstrapOptions {
        labels: BTreeMap::new(),
        zone: None,
        region: None,
        ..options(XdsProtocol::Delta)
    };
    assert_envoy_accepts("bare", &opts);
}

#[test]
fn envoy_accepts_a_dns_xds_address_and_ipv6_listeners() {
    let opts = BootstrapOptions {
        xds_address: "sluice.mesh.svc.cluster.local:18000".into(),
        admin_listen: "[::1]:9901".parse().expect("valid address"),
        outbound_listen: "[::1]:15001".parse().expect("valid address"),
        address: "fd00::10".parse().expect("valid IP"),
        zone: Some("z1".into()),
        region: None,
        ..options(XdsProtocol::Sotw)
    };
    assert_envoy_accepts("dns", &opts);
}

#[test]
fn validation_catches_a_broken_bootstrap() {
    // Guards the check above: an unknown field must make `--mode validate` fail.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.yaml");
    let yaml = render(&options(XdsProtocol::Delta))
        .expect("renders")
        .replace(
            "connect_timeout: 1s",
            "connect_timeout: 1s\n    not_a_field: 1",
        );
    std::fs::write(&path, yaml).expect("write bootstrap");
    let status = Command::new(envoy_path())
        .args(["--mode", "validate", "--log-level", "critical", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run envoy --mode validate");
    assert!(!status.success(), "Envoy accepted an unknown field");
}

/// Converts the proto JSON of a `google.protobuf.Struct` back into the proto.
fn struct_from_json(json: &Value) -> Struct {
    fn value(json: &Value) -> PbValue {
        let kind = match json {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(items) => Kind::ListValue(envoy_types::pb::google::protobuf::ListValue {
                values: items.iter().map(value).collect(),
            }),
            Value::Object(_) => Kind::StructValue(struct_from_json(json)),
        };
        PbValue { kind: Some(kind) }
    }
    Struct {
        fields: json
            .as_object()
            .map(|fields| fields.iter().map(|(k, v)| (k.clone(), value(v))).collect())
            .unwrap_or_default(),
    }
}

#[tokio::test]
async fn the_node_survives_envoys_yaml_parser() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Nothing listens on the xDS address; Envoy keeps retrying, its admin answers meanwhile.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let xds_address = closed.local_addr().expect("local address").to_string();
    drop(closed);
    let opts = BootstrapOptions {
        xds_address,
        admin_listen: "127.0.0.1:0".parse().expect("valid address"),
        ..options(XdsProtocol::Delta)
    };
    let (envoy, admin) = StaticEnvoy::start(dir.path(), &render(&opts).expect("renders"));

    let url = format!(
        "http://{admin}/config_dump?mask=bootstrap.node.id,bootstrap.node.metadata,bootstrap.node.locality"
    );
    let dump: Value = match reqwest::get(&url).await {
        Ok(response) => response.json().await.expect("config dump is JSON"),
        Err(err) => panic!("GET {url}: {err}; Envoy's log:\n{}", envoy.log_text()),
    };
    let node = &dump["configs"][0]["bootstrap"]["node"];
    let locality = &node["locality"];
    let proto = Node {
        id: node["id"].as_str().unwrap_or_default().to_string(),
        metadata: Some(struct_from_json(&node["metadata"])),
        locality: Some(Locality {
            region: locality["region"].as_str().unwrap_or_default().into(),
            zone: locality["zone"].as_str().unwrap_or_default().into(),
            sub_zone: String::new(),
        }),
        ..Default::default()
    };
    let info = node_info_from_proto(&proto)
        .unwrap_or_else(|err| panic!("Envoy's node {node} does not parse: {err}"));
    assert_eq!(
        info,
        NodeInfo {
            id: opts.node_id.clone(),
            namespace: opts.namespace.clone(),
            labels: opts.labels.clone(),
            address: Some(opts.address),
            outbound_listen: opts.outbound_listen,
            zone: opts.zone.clone(),
            region: opts.region.clone(),
        },
        "Envoy's view of the node: {node}"
    );
}
