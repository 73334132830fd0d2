//! Endpoints contributed by connected sidecars.
//!
//! While a sidecar's stream is up, its address is an endpoint of every Service in its namespace
//! whose selector matches its labels. After it disconnects its entry stays for a grace period, so
//! that a control-plane restart or a brief network cut never drains the mesh.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// One sidecar's workload as an endpoint source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub node_id: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub address: IpAddr,
    pub zone: Option<String>,
    pub region: Option<String>,
}

/// Every workload that currently contributes endpoints, keyed by node id. Immutable once
/// published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workloads {
    pub by_node: BTreeMap<String, Workload>,
}
