//! Sluice: an xDS control plane for Envoy sidecars, driven by Kubernetes-style manifests.
//!
//! # Layout
//! - [`manifest`]: the YAML kinds Sluice reads, loaded with positions and validated.
//! - [`registry`]: endpoints contributed by connected sidecars, with a grace period.
//! - [`compile`]: pure functions from manifests, endpoints and a node to Envoy resources.
//! - [`xds`]: resource snapshots, the SotW and delta state machines, and the ADS gRPC server.
//! - [`bootstrap`]: the Envoy bootstrap `sluice bootstrap` prints.
//! - [`debug`]: the debug HTTP API.
//! - [`source`]: where revisions come from (a watched folder).
//! - [`publisher`]: the one owner of the served configuration: compiles good revisions, reports bad ones.
//! - [`validate`]: `sluice validate`.
//! - [`metrics`]: counters for `/metrics`.
//! - [`cli`], [`app`]: the command line and the wiring of `sluice serve`.
//! - [`node`]: what a sidecar tells about itself in its node metadata.

#![forbid(unsafe_code)]

pub mod app;
pub mod bootstrap;
pub mod cli;
pub mod compile;
pub mod debug;
pub mod manifest;
pub mod metrics;
pub mod node;
pub mod publisher;
pub mod registry;
pub mod shutdown;
pub mod source;
pub mod validate;
pub mod xds;
