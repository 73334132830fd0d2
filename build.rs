//! Two protobuf steps, both with `protox` (a protobuf compiler in Rust, so no `protoc` is needed):
//!
//! 1. The descriptor set that `/debug/config_dump` uses to print Envoy resources in Envoy's own
//!    proto-JSON shape. The `.proto` sources are the ones the `envoy-types` crate ships next to its
//!    generated code, so the descriptors always describe exactly the Rust types Sluice encodes.
//!    Nothing is copied into this repository.
//! 2. Sluice's own `proto/echo.proto`, the gRPC echo service of the test suite's upstreams, as
//!    Rust code (messages, client and server) in `OUT_DIR/proto.rs`. Only the tests include it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every message type Sluice serves or puts in a config dump, by the file that defines it.
/// Imports are followed, so the list only names the roots.
const ROOTS: &[&str] = &[
    "envoy/admin/v3/config_dump.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/service/discovery/v3/discovery.proto",
];

/// Folders under the crate's `proto/` that hold import roots.
const INCLUDES: &[&str] = &[
    "data-plane-api",
    "xds",
    "googleapis",
    "protoc-gen-validate",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
];

/// Sluice's own protos, compiled to Rust for the tests.
const OWN_PROTOS: &[&str] = &["proto/echo.proto"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    envoy_descriptors();
    own_protos();
}

/// The gRPC echo service the end-to-end and conformance tests serve and call.
fn own_protos() {
    for proto in OWN_PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(OWN_PROTOS, ["proto"])
        .unwrap_or_else(|err| panic!("compiling {OWN_PROTOS:?}: {err}"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .unwrap_or_else(|err| panic!("generating Rust code for {OWN_PROTOS:?}: {err}"));
}

/// The Envoy descriptor set for `/debug/config_dump`.
fn envoy_descriptors() {
    let root = envoy_types_dir().join("proto");
    let includes: Vec<PathBuf> = INCLUDES.iter().map(|i| root.join(i)).collect();
    let descriptors = protox::compile(ROOTS, &includes)
        .unwrap_or_else(|err| panic!("compiling Envoy descriptors from {}: {err}", root.display()));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bytes = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out.join("envoy_descriptors.bin"), bytes).expect("writing the descriptor set");
}

/// Finds the source folder of the `envoy-types` dependency through `cargo metadata`.
fn envoy_types_dir() -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let mut cmd = Command::new(cargo);
    cmd.args(["metadata", "--format-version", "1", "--locked"])
        .arg("--manifest-path")
        .arg(Path::new(&manifest_dir).join("Cargo.toml"));
    if let Ok(target) = env::var("TARGET") {
        cmd.args(["--filter-platform", &target]);
    }
    let output = cmd.output().expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("cargo metadata prints UTF-8");
    // The manifest path of the package named envoy-types; a full JSON parser is not worth a
    // build dependency for one field.
    let marker = "\"name\":\"envoy-types\"";
    let start = text.find(marker).expect("envoy-types is a dependency");
    let rest = &text[start..];
    let key = "\"manifest_path\":\"";
    let at = rest
        .find(key)
        .expect("cargo metadata lists a manifest path")
        + key.len();
    let end = rest[at..].find('"').expect("manifest path ends");
    let manifest = PathBuf::from(&rest[at..at + end]);
    manifest
        .parent()
        .expect("manifest has a folder")
        .to_path_buf()
}
