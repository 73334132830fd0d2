//! Sluice: an xDS control plane for Envoy sidecars, driven by Kubernetes-style manifests.
//!
//! # Layout
//! - [`manifest`]: the YAML kinds Sluice reads, loaded with positions and validated.
//! - [`registry`]: endpoints contributed by connected sidecars, with a grace period.
//! - [`compile`]: pure functions from manifests, endpoints and a node to Envoy resources.
//! - [`xds`]: resource snapshots, the SotW and delta state machines, and the ADS gRPC server.
//! - [`bootstrap`]: the Envoy bootstrap `sluice bootstrap` prints.
//! - [`debug`]: the debug HTTP API.
//! - [`node`]: what a sidecar tells about itself in its node metadata.

#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod compile;
pub mod debug;
pub mod manifest;
pub mod node;
pub mod registry;
pub mod xds;
