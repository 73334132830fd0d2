//! What Sluice knows about one connected sidecar, read from the `node` of its first xDS request.
//!
//! `sluice bootstrap` writes these into the node metadata; the protocol layer parses them and the
//! compiler and the endpoint registry use them. Neither layer imports the other for it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// The default outbound listener address, as `sluice bootstrap --outbound-listen` has it.
pub const DEFAULT_OUTBOUND_LISTEN: &str = "127.0.0.1:15001";

/// Metadata keys under the node's `metadata` struct.
pub mod keys {
    pub const NAMESPACE: &str = "namespace";
    pub const LABELS: &str = "labels";
    pub const ADDRESS: &str = "address";
    pub const OUTBOUND_LISTEN: &str = "outbound_listen";
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeInfo {
    /// Envoy's `node.id`: unique per sidecar.
    pub id: String,
    /// The workload's namespace; `default` when the sidecar did not say.
    pub namespace: String,
    /// The workload's labels, matched against Service selectors.
    pub labels: BTreeMap<String, String>,
    /// Where other sidecars reach this workload's application.
    pub address: Option<IpAddr>,
    /// The address of this sidecar's outbound HTTP listener.
    pub outbound_listen: SocketAddr,
    pub zone: Option<String>,
    pub region: Option<String>,
}

impl NodeInfo {
    /// A node with only an id, in namespace `default`, as a test or a bare Envoy would have.
    pub fn new(id: impl Into<String>) -> Self {
        NodeInfo {
            id: id.into(),
            namespace: "default".into(),
            labels: BTreeMap::new(),
            address: None,
            outbound_listen: default_outbound_listen(),
            zone: None,
            region: None,
        }
    }

    /// What the compiled configuration depends on. Sidecars with equal keys receive identical
    /// resources, so the compiler's output is shared between them.
    pub fn config_key(&self) -> ConfigKey {
        ConfigKey {
            namespace: self.namespace.clone(),
            outbound_listen: self.outbound_listen,
        }
    }
}

/// The part of a [`NodeInfo`] that the compiled configuration depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigKey {
    pub namespace: String,
    pub outbound_listen: SocketAddr,
}

pub fn default_outbound_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15001))
}
