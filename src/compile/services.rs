//! Services and their ports: which ports Sluice serves (HTTP/1.1 or HTTP/2), how backendRefs
//! and parentRefs resolve to them, and the EDS cluster of each.
//!
//! Sluice only has an HTTP listener, so only HTTP and gRPC ports get a cluster and a virtual
//! host. A port's protocol follows its `appProtocol` when set, else the Istio naming convention
//! `<protocol>[-<suffix>]` of its name; a port that says nothing is taken as HTTP/1.1.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Http2ProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

use super::findings::Findings;
use crate::manifest::model::IntOrString;
use crate::manifest::{ObjectKey, Pos, Revision};

/// How long an upstream connection may take to establish. Sidecars and on-premise hosts are
/// reached over a network the operator controls; a second is plenty and fails over quickly.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration {
    seconds: 1,
    nanos: 0,
};

/// The key Envoy reads upstream HTTP options from in `typed_extension_protocol_options`.
pub(crate) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c): gRPC and `kubernetes.io/h2c` ports.
    Http2,
}

#[derive(Clone, Debug)]
pub(crate) struct PortEntry {
    pub port: u16,
    /// The port's name; empty when it has none (as Kubernetes treats it).
    pub name: String,
    /// `None`: not an HTTP or gRPC port, so Sluice does not serve it.
    pub protocol: Option<Protocol>,
    /// Where workloads listen: the numeric `targetPort`, defaulting to `port`. `None` when the
    /// target port is named (usable only through EndpointSlices).
    pub target_port: Option<u16>,
    pub cluster: String,
}

#[derive(Clone, Debug)]
pub(crate) struct ServiceEntry {
    pub key: ObjectKey,
    pub pos: Pos,
    pub selector: BTreeMap<String, String>,
    /// Every port, sorted by number.
    pub ports: Vec<PortEntry>,
}

impl ServiceEntry {
    pub fn served_ports(&self) -> impl Iterator<Item = &PortEntry> {
        self.ports.iter().filter(|p| p.protocol.is_some())
    }

    /// The served port `number`, or why it cannot be used.
    pub fn served_port(&self, number: u16) -> Result<&PortEntry, String> {
        match self.ports.iter().find(|p| p.port == number) {
            None => Err(format!(
                "Service {} has no port {number} (it has {})",
                self.key,
                self.port_list()
            )),
            Some(p) if p.protocol.is_none() => Err(format!(
                "port {number} of Service {} is not an HTTP or gRPC port; Sluice only routes \
                 HTTP (set appProtocol: http, grpc or kubernetes.io/h2c if it is one)",
                self.key
            )),
            Some(p) => Ok(p),
        }
    }

    fn port_list(&self) -> String {
        if self.ports.is_empty() {
            return "none".into();
        }
        self.ports
            .iter()
            .map(|p| p.port.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Default)]
pub(crate) struct ServiceIndex {
    pub services: BTreeMap<ObjectKey, ServiceEntry>,
}

impl ServiceIndex {
    pub fn build(revision: &Revision, findings: &mut Findings) -> ServiceIndex {
        let mut services = BTreeMap::new();
        for (key, object) in &revision.services {
            let what = format!("Service {key}");
            if !is_dns_label(&key.name) {
                findings.error(
                    &object.pos,
                    format!(
                        "{what}: name {:?} is not a DNS label (lowercase letters, digits and \
                         '-', at most 63 characters); sidecars could not resolve it",
                        key.name
                    ),
                );
            }
            if !is_dns_label(&key.namespace) {
                findings.error(
                    &object.pos,
                    format!(
                        "{what}: namespace {:?} is not a DNS label (lowercase letters, digits \
                         and '-', at most 63 characters)",
                        key.namespace
                    ),
                );
            }
            let selector = object.value.spec.selector.clone();
            let mut ports = Vec::new();
            let mut numbers = BTreeSet::new();
            let mut names = BTreeSet::new();
            for (i, spanned) in object.value.spec.ports.iter().enumerate() {
                let port = &spanned.value;
                let field = format!("{what}: spec.ports[{i}]");
                if port.port == 0 {
                    findings.error(&spanned.pos, format!("{field}.port: 0 is not a valid port"));
                    continue;
                }
                if !numbers.insert(port.port) {
                    findings.error(
                        &spanned.pos,
                        format!("{field}.port: port {} is listed twice", port.port),
                    );
                    continue;
                }
                let name = port.name.clone().unwrap_or_default();
                if !names.insert(name.clone()) {
                    findings.error(
                        &spanned.pos,
                        format!(
                            "{field}.name: port name {name:?} is used twice; every port of a \
                             Service with several ports needs a unique name"
                        ),
                    );
                }
                let protocol = classify(
                    port.protocol.as_deref(),
                    port.app_protocol.as_deref(),
                    &name,
                );
                let target_port = match &port.target_port {
                    None => Some(port.port),
                    Some(IntOrString::Int(0)) => {
                        findings.error(
                            &spanned.pos,
                            format!("{field}.targetPort: 0 is not a valid port"),
                        );
                        None
                    }
                    Some(IntOrString::Int(n)) => Some(*n),
                    Some(IntOrString::String(s)) => match s.parse::<u16>() {
                        Ok(n) if n > 0 => Some(n),
                        _ => {
                            if !selector.is_empty() && protocol.is_some() {
                                findings.error(
                                    &spanned.pos,
                                    format!(
                                        "{field}.targetPort: the named port {s:?} cannot be \
                                         used for sidecar endpoints (sidecars do not announce \
                                         their ports); give the port number"
                                    ),
                                );
                            }
                            None
                        }
                    },
                };
                ports.push(PortEntry {
                    port: port.port,
                    cluster: super::cluster_name(&key.name, &key.namespace, port.port),
                    name,
                    protocol,
                    target_port,
                });
            }
            ports.sort_by_key(|p| p.port);
            services.insert(
                key.clone(),
                ServiceEntry {
                    key: key.clone(),
                    pos: object.pos.clone(),
                    selector,
                    ports,
                },
            );
        }
        ServiceIndex { services }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&ServiceEntry> {
        self.services.get(&ObjectKey::new(namespace, name))
    }
}

/// A Kubernetes DNS label: what Service names and namespaces must be, and what makes the
/// virtual host domains of different Services distinct.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The protocol Sluice speaks to a Service port, or `None` when it is not HTTP.
pub(crate) fn classify(
    protocol: Option<&str>,
    app_protocol: Option<&str>,
    name: &str,
) -> Option<Protocol> {
    if let Some(p) = protocol {
        if !p.eq_ignore_ascii_case("TCP") {
            return None; // UDP, SCTP
        }
    }
    if let Some(app) = app_protocol {
        return match app.to_ascii_lowercase().as_str() {
            "kubernetes.io/h2c" | "grpc" | "http2" | "h2c" => Some(Protocol::Http2),
            "http" | "kubernetes.io/ws" => Some(Protocol::Http1),
            _ => None, // https, kubernetes.io/wss, tcp, tls, mysql, ...
        };
    }
    let lower = name.to_ascii_lowercase();
    let prefix = lower.split('-').next().unwrap_or_default();
    match prefix {
        "grpc" | "http2" | "h2c" => Some(Protocol::Http2),
        "https" | "tls" | "tcp" | "udp" | "mongo" | "mysql" | "redis" | "kafka" | "amqp"
        | "mqtt" | "zookeeper" | "cassandra" | "postgres" | "postgresql" => None,
        _ => Some(Protocol::Http1),
    }
}

/// The ADS config source: every dynamic resource comes over the sidecar's one ADS stream.
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// The EDS cluster of one served Service port.
pub(crate) fn to_cluster(port: &PortEntry) -> Cluster {
    let mut cluster = Cluster {
        name: port.cluster.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(CONNECT_TIMEOUT),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    if port.protocol == Some(Protocol::Http2) {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        cluster
            .typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(options));
    }
    cluster
}
