//! `sluice bootstrap`: a complete Envoy v3 bootstrap for one sidecar, and the parser that reads
//! back the node it describes when that sidecar connects.
//!
//! The bootstrap is the only place where a sidecar says who it is: its namespace, labels, address
//! and outbound listener travel in `node.metadata` under the keys of [`crate::node::keys`], and
//! [`node_info_from_proto`] turns them into a [`NodeInfo`] on the first request of each stream.
//! Everything else (listeners, routes, clusters, endpoints) comes over ADS from the `sluice_xds`
//! cluster.
//!
//! The YAML is one fixed document, so it is written from a template rather than through a
//! serializer. Every string in it is a JSON-style double-quoted scalar (valid YAML), so user input
//! such as a label value `yes`, `1.0` or `a: b` stays a string and cannot change the document's
//! structure.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::Value;

use crate::node::{default_outbound_listen, keys, NodeInfo};

/// Name of the static cluster that points at Sluice's ADS listener.
pub const XDS_CLUSTER_NAME: &str = "sluice_xds";

/// Everything `sluice bootstrap` writes into a bootstrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapOptions {
    /// Envoy's `node.id`: unique per sidecar.
    pub node_id: String,
    pub namespace: String,
    /// The workload's labels, which Service selectors match.
    pub labels: BTreeMap<String, String>,
    /// Where other sidecars reach this workload's application.
    pub address: IpAddr,
    /// Sluice's ADS listener, `HOST:PORT` (an IP, `[IPv6]` or a DNS name); see
    /// [`parse_xds_address`].
    pub xds_address: String,
    pub protocol: XdsProtocol,
    /// The sidecar's outbound HTTP listener, which the application sends requests to.
    pub outbound_listen: SocketAddr,
    /// Envoy's admin listener.
    pub admin_listen: SocketAddr,
    pub zone: Option<String>,
    pub region: Option<String>,
}

/// The ADS flavour a sidecar speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum XdsProtocol {
    /// Incremental xDS (`DELTA_GRPC`): only changed resources are sent.
    Delta,
    /// State of the world (`GRPC`): every response holds the full set of a type.
    Sotw,
}

impl XdsProtocol {
    /// The `ads_config.api_type` that selects this flavour.
    pub const fn api_type(self) -> &'static str {
        match self {
            XdsProtocol::Delta => "DELTA_GRPC",
            XdsProtocol::Sotw => "GRPC",
        }
    }
}

impl fmt::Display for XdsProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdsProtocol::Delta => "delta",
            XdsProtocol::Sotw => "sotw",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    #[error("xds address {address:?} is not HOST:PORT: {reason}")]
    InvalidXdsAddress {
        address: String,
        reason: &'static str,
    },
}

/// Where the `sluice_xds` cluster connects.
#[derive(Clone, Debug, PartialEq, Eq)]
enum XdsTarget {
    /// A literal address: a `STATIC` cluster.
    Ip(SocketAddr),
    /// A DNS name: a `STRICT_DNS` cluster, re-resolved as the name moves.
    Dns { host: String, port: u16 },
}

impl XdsTarget {
    fn parse(text: &str) -> Result<XdsTarget, BootstrapError> {
        let invalid = |reason| BootstrapError::InvalidXdsAddress {
            address: text.to_string(),
            reason,
        };
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(invalid("the port must be between 1 and 65535"));
            }
            return Ok(XdsTarget::Ip(addr));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| invalid("the port is missing"))?;
        let port = match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(invalid("the port must be between 1 and 65535")),
        };
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        let dns_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if !host.chars().all(dns_char) || host.starts_with(['-', '.']) {
            let ipv6_char = |c: char| c.is_ascii_hexdigit() || matches!(c, ':' | '.' | '[' | ']');
            if host.contains(':') && host.chars().all(ipv6_char) {
                return Err(invalid("write an IPv6 address in brackets, as [::1]:18000"));
            }
            return Err(invalid("the host is neither an IP address nor a DNS name"));
        }
        Ok(XdsTarget::Dns {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// Checks an `--xds-address` value; usable as a clap `value_parser`.
pub fn parse_xds_address(text: &str) -> Result<String, BootstrapError> {
    XdsTarget::parse(text).map(|_| text.to_string())
}

/// The bootstrap YAML for one sidecar. Fails only on an `xds_address` that is not `HOST:PORT`.
pub fn render(opts: &BootstrapOptions) -> Result<String, BootstrapError> {
    let target = XdsTarget::parse(&opts.xds_address)?;
    let (cluster_type, xds_host, xds_port) = match &target {
        XdsTarget::Ip(addr) => ("STATIC", addr.ip().to_string(), addr.port()),
        XdsTarget::Dns { host, port } => ("STRICT_DNS", host.clone(), *port),
    };
    // Envoy's default lookup family (AUTO) prefers IPv6, so `localhost:18000` would reach `::1`
    // while Sluice usually listens on 0.0.0.0. Prefer IPv4 and fall back to IPv6.
    let dns_lookup_family = match target {
        XdsTarget::Dns { .. } => "\n    dns_lookup_family: V4_PREFERRED",
        XdsTarget::Ip(_) => "",
    };

    let mut locality = String::new();
    if opts.zone.is_some() || opts.region.is_some() {
        locality.push_str("  locality:\n");
        if let Some(region) = &opts.region {
            locality.push_str(&format!("    region: {}\n", quote(region)));
        }
        if let Some(zone) = &opts.zone {
            locality.push_str(&format!("    zone: {}\n", quote(zone)));
        }
    }

    let labels = if opts.labels.is_empty() {
        " {}".to_string()
    } else {
        opts.labels
            .iter()
            .map(|(key, value)| format!("\n      {}: {}", quote(key), quote(value)))
            .collect()
    };

    Ok(format!(
        r#"# Envoy bootstrap written by `sluice bootstrap`. Listeners, routes, clusters and endpoints
# come from Sluice over ADS ({protocol}); the node metadata tells Sluice who this sidecar is.
node:
  id: {id}
  cluster: {cluster}
{locality}  metadata:
    {namespace_key}: {namespace}
    {labels_key}:{labels}
    {address_key}: {address}
    {outbound_key}: {outbound}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc:
        cluster_name: {xds_cluster}
        # Reconnect within a second of Sluice coming back (Envoy's default backs off to 30 s),
        # so a control-plane restart resyncs every sidecar at once. Jittered by Envoy.
        retry_policy:
          retry_back_off:
            base_interval: 0.25s
            max_interval: 1s
  cds_config:
    ads: {{}}
    resource_api_version: V3
  lds_config:
    ads: {{}}
    resource_api_version: V3
static_resources:
  clusters:
  - name: {xds_cluster}
    type: {cluster_type}{dns_lookup_family}
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            # Finds a dead control-plane connection (a half-open TCP connection after a node
            # failure) in seconds instead of waiting for TCP to time out.
            connection_keepalive:
              interval: 30s
              timeout: 5s
    load_assignment:
      cluster_name: {xds_cluster}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: {xds_host}
                port_value: {xds_port}
admin:
  address:
    socket_address:
      address: {admin_ip}
      port_value: {admin_port}
"#,
        protocol = opts.protocol,
        id = quote(&opts.node_id),
        cluster = quote(&opts.namespace),
        namespace_key = keys::NAMESPACE,
        namespace = quote(&opts.namespace),
        labels_key = keys::LABELS,
        address_key = keys::ADDRESS,
        address = quote(&opts.address.to_string()),
        outbound_key = keys::OUTBOUND_LISTEN,
        outbound = quote(&opts.outbound_listen.to_string()),
        api_type = opts.protocol.api_type(),
        xds_cluster = XDS_CLUSTER_NAME,
        xds_host = quote(&xds_host),
        admin_ip = quote(&opts.admin_listen.ip().to_string()),
        admin_port = opts.admin_listen.port(),
    ))
}

/// `text` as a YAML double-quoted scalar. JSON's escapes are YAML's too; besides the quote and
/// the backslash, every character YAML does not allow raw (controls, the line and paragraph
/// separators, the byte-order mark) is escaped, so any input stays one string.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Reads what a sidecar says about itself from the `node` of its first request: `node.id`,
/// the locality, and the metadata keys of [`crate::node::keys`]. A missing key takes its default
/// (namespace `default`, no labels, no address, outbound listener
/// [`crate::node::DEFAULT_OUTBOUND_LISTEN`]); a present key with a bad value is an error that
/// names it. Other metadata keys are left alone: a bootstrap may carry metadata for other tools.
pub fn node_info_from_proto(node: &Node) -> Result<NodeInfo, String> {
    if node.id.is_empty() {
        return Err(
            "node.id is empty: every sidecar needs a unique id (sluice bootstrap --node-id)".into(),
        );
    }
    let mut info = NodeInfo::new(node.id.clone());
    if let Some(locality) = &node.locality {
        info.zone = Some(locality.zone.clone()).filter(|z| !z.is_empty());
        info.region = Some(locality.region.clone()).filter(|r| !r.is_empty());
    }
    let Some(metadata) = &node.metadata else {
        return Ok(info);
    };
    let fields = &metadata.fields;

    if let Some(value) = fields.get(keys::NAMESPACE) {
        let namespace = metadata_string(keys::NAMESPACE, value)?;
        if namespace.is_empty() {
            return Err(format!("node metadata {:?} is empty", keys::NAMESPACE));
        }
        info.namespace = namespace.to_string();
    }

    if let Some(value) = fields.get(keys::LABELS) {
        let Some(Kind::StructValue(labels)) = &value.kind else {
            return Err(format!(
                "node metadata {:?} must be a struct of strings, got {}",
                keys::LABELS,
                kind_name(value)
            ));
        };
        for (key, value) in &labels.fields {
            let label = metadata_string(&format!("{}.{key}", keys::LABELS), value)?;
            info.labels.insert(key.clone(), label.to_string());
        }
    }

    if let Some(value) = fields.get(keys::ADDRESS) {
        let text = metadata_string(keys::ADDRESS, value)?;
        let address = text.parse::<IpAddr>().map_err(|_| {
            format!(
                "node metadata {:?} is not an IP address: {text:?}",
                keys::ADDRESS
            )
        })?;
        info.address = Some(address);
    }

    info.outbound_listen = match fields.get(keys::OUTBOUND_LISTEN) {
        None => default_outbound_listen(),
        Some(value) => {
            let text = metadata_string(keys::OUTBOUND_LISTEN, value)?;
            text.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "node metadata {:?} is not an IP:PORT address: {text:?}",
                    keys::OUTBOUND_LISTEN
                )
            })?
        }
    };
    Ok(info)
}

fn metadata_string<'a>(key: &str, value: &'a Value) -> Result<&'a str, String> {
    match &value.kind {
        Some(Kind::StringValue(text)) => Ok(text),
        _ => Err(format!(
            "node metadata {key:?} must be a string, got {}",
            kind_name(value)
        )),
    }
}

fn kind_name(value: &Value) -> &'static str {
    match &value.kind {
        None => "no value",
        Some(Kind::NullValue(_)) => "null",
        Some(Kind::NumberValue(_)) => "a number",
        Some(Kind::StringValue(_)) => "a string",
        Some(Kind::BoolValue(_)) => "a bool",
        Some(Kind::StructValue(_)) => "a struct",
        Some(Kind::ListValue(_)) => "a list",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Locality;
    use envoy_types::pb::google::protobuf::Struct;
    use yaml_rust2::{Yaml, YamlLoader};

    fn options() -> BootstrapOptions {
        BootstrapOptions {
            node_id: "checkout-7d9f".into(),
            namespace: "shop".into(),
            labels: BTreeMap::from([
                ("app".to_string(), "checkout".to_string()),
                // Values YAML would read as a bool, a float, a map and a comment, unquoted.
                ("canary".to_string(), "yes".to_string()),
                ("version".to_string(), "1.10".to_string()),
                ("note".to_string(), "a: b # c\n\"d\"\\".to_string()),
            ]),
            address: "10.1.2.3".parse().expect("valid IP"),
            xds_address: "127.0.0.1:18000".into(),
            protocol: XdsProtocol::Delta,
            outbound_listen: "127.0.0.1:15001".parse().expect("valid address"),
            admin_listen: "127.0.0.1:9901".parse().expect("valid address"),
            zone: Some("eu-west-1a".into()),
            region: Some("eu-west-1".into()),
        }
    }

    fn parse(yaml: &str) -> Yaml {
        let mut docs = YamlLoader::load_from_str(yaml).expect("the bootstrap is valid YAML");
        assert_eq!(docs.len(), 1, "one YAML document");
        docs.remove(0)
    }

    fn string_at<'a>(doc: &'a Yaml, path: &[&str]) -> &'a str {
        let mut at = doc;
        for key in path {
            at = &at[*key];
        }
        at.as_str()
            .unwrap_or_else(|| panic!("{path:?} is not a string: {at:?}"))
    }

    /// Converts the YAML node back into the proto Envoy sends, as Envoy's own YAML loading does
    /// for the fields Sluice writes (strings and structs of strings).
    fn node_from_yaml(doc: &Yaml) -> Node {
        fn to_value(yaml: &Yaml) -> Value {
            let kind = match yaml {
                Yaml::String(text) => Kind::StringValue(text.clone()),
                Yaml::Hash(hash) => Kind::StructValue(Struct {
                    fields: hash
                        .iter()
                        .map(|(k, v)| (k.as_str().expect("string keys").to_string(), to_value(v)))
                        .collect(),
                }),
                other => panic!("the bootstrap writes only strings and structs, got {other:?}"),
            };
            Value { kind: Some(kind) }
        }
        let node = &doc["node"];
        let Some(Kind::StructValue(metadata)) = to_value(&node["metadata"]).kind else {
            panic!("metadata is a struct");
        };
        Node {
            id: string_at(node, &["id"]).to_string(),
            cluster: string_at(node, &["cluster"]).to_string(),
            metadata: Some(metadata),
            locality: Some(Locality {
                region: node["locality"]["region"].as_str().unwrap_or("").into(),
                zone: node["locality"]["zone"].as_str().unwrap_or("").into(),
                sub_zone: String::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn node_metadata_round_trips_through_the_yaml() {
        let opts = options();
        let doc = parse(&render(&opts).expect("renders"));
        let info = node_info_from_proto(&node_from_yaml(&doc)).expect("valid node");
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
            }
        );
        // The tricky label values stayed strings, byte for byte.
        assert_eq!(
            string_at(&doc, &["node", "metadata", "labels", "canary"]),
            "yes"
        );
        assert_eq!(
            string_at(&doc, &["node", "metadata", "labels", "version"]),
            "1.10"
        );
    }

    #[test]
    fn quoting_keeps_every_character() {
        for text in [
            "",
            "yes",
            "null",
            "~",
            "- a",
            "[1, 2]",
            "{a: b}",
            "a: b",
            "#x",
            "&anchor",
            "*alias",
            "!tag",
            "%directive",
            "@at",
            "`tick`",
            "'single'",
            "\"double\"",
            "back\\slash",
            "tab\there",
            "line\nbreak\r\n",
            "bell\u{7}nul\u{0}del\u{7f}nel\u{85}",
            "sep\u{2028}\u{2029}\u{feff}",
            "ünïcødé 雪 🚀",
        ] {
            let doc = parse(&format!("value: {}\n", quote(text)));
            assert_eq!(doc["value"].as_str(), Some(text), "quoting {text:?}");
        }
    }

    #[test]
    fn ads_config_follows_the_protocol() {
        let mut opts = options();
        let delta = parse(&render(&opts).expect("renders"));
        let ads = &delta["dynamic_resources"]["ads_config"];
        assert_eq!(ads["api_type"].as_str(), Some("DELTA_GRPC"));
        assert_eq!(ads["transport_api_version"].as_str(), Some("V3"));
        assert_eq!(ads["set_node_on_first_message_only"].as_bool(), Some(true));
        assert_eq!(
            ads["grpc_services"][0]["envoy_grpc"]["cluster_name"].as_str(),
            Some(XDS_CLUSTER_NAME)
        );
        for source in ["cds_config", "lds_config"] {
            let config = &delta["dynamic_resources"][source];
            assert!(config["ads"].as_hash().is_some_and(|h| h.is_empty()));
            assert_eq!(config["resource_api_version"].as_str(), Some("V3"));
        }

        opts.protocol = XdsProtocol::Sotw;
        let sotw = parse(&render(&opts).expect("renders"));
        assert_eq!(
            sotw["dynamic_resources"]["ads_config"]["api_type"].as_str(),
            Some("GRPC")
        );
    }

    #[test]
    fn xds_cluster_is_static_for_an_ip_and_strict_dns_for_a_name() {
        let cluster = |address: &str| {
            let opts = BootstrapOptions {
                xds_address: address.into(),
                ..options()
            };
            let doc = parse(&render(&opts).expect("renders"));
            let cluster = doc["static_resources"]["clusters"][0].clone();
            assert_eq!(cluster["name"].as_str(), Some(XDS_CLUSTER_NAME));
            assert_eq!(cluster["connect_timeout"].as_str(), Some("1s"));
            let socket = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"];
            (
                cluster["type"].as_str().map(str::to_string),
                socket["address"].as_str().map(str::to_string),
                socket["port_value"].as_i64(),
            )
        };
        assert_eq!(
            cluster("10.0.0.5:18000"),
            (Some("STATIC".into()), Some("10.0.0.5".into()), Some(18000))
        );
        assert_eq!(
            cluster("[::1]:18001"),
            (Some("STATIC".into()), Some("::1".into()), Some(18001))
        );
        assert_eq!(
            cluster("Sluice.mesh.svc:18000"),
            (
                Some("STRICT_DNS".into()),
                Some("sluice.mesh.svc".into()),
                Some(18000)
            )
        );
    }

    #[test]
    fn xds_cluster_speaks_http2_with_keepalive() {
        let text = render(&options()).expect("renders");
        let doc = parse(&text);
        let options = &doc["static_resources"]["clusters"][0]["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            options["@type"].as_str(),
            Some("type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        );
        let keepalive =
            &options["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"];
        assert_eq!(keepalive["interval"].as_str(), Some("30s"));
        assert_eq!(keepalive["timeout"].as_str(), Some("5s"));
    }

    #[test]
    fn admin_and_locality_are_written() {
        let mut opts = options();
        opts.admin_listen = "[::1]:9902".parse().expect("valid address");
        let doc = parse(&render(&opts).expect("renders"));
        let admin = &doc["admin"]["address"]["socket_address"];
        assert_eq!(admin["address"].as_str(), Some("::1"));
        assert_eq!(admin["port_value"].as_i64(), Some(9902));
        assert_eq!(string_at(&doc, &["node", "locality", "zone"]), "eu-west-1a");
        assert_eq!(string_at(&doc, &["node", "cluster"]), "shop");

        opts.zone = None;
        opts.region = None;
        opts.labels.clear();
        let text = render(&opts).expect("renders");
        assert!(
            !text.contains("locality"),
            "no locality without zone or region"
        );
        let doc = parse(&text);
        assert!(doc["node"]["metadata"]["labels"]
            .as_hash()
            .is_some_and(|h| h.is_empty()));
    }

    #[test]
    fn bad_xds_addresses_are_refused_with_the_reason() {
        for (address, reason) in [
            ("127.0.0.1", "the port is missing"),
            ("sluice", "the port is missing"),
            ("sluice:http", "the port must be between 1 and 65535"),
            ("sluice:0", "the port must be between 1 and 65535"),
            ("127.0.0.1:0", "the port must be between 1 and 65535"),
            ("sluice:70000", "the port must be between 1 and 65535"),
            (":18000", "the host is empty"),
            (
                "::1:18000",
                "write an IPv6 address in brackets, as [::1]:18000",
            ),
            (
                "[::1:18000",
                "write an IPv6 address in brackets, as [::1]:18000",
            ),
            (
                "bad host:18000",
                "the host is neither an IP address nor a DNS name",
            ),
            (
                "sluice\n  x: y:18000",
                "the host is neither an IP address nor a DNS name",
            ),
        ] {
            let err = parse_xds_address(address).expect_err(address);
            assert_eq!(
                err,
                BootstrapError::InvalidXdsAddress {
                    address: address.into(),
                    reason
                }
            );
            let opts = BootstrapOptions {
                xds_address: address.into(),
                ..options()
            };
            assert_eq!(render(&opts), Err(err));
        }
        assert_eq!(
            parse_xds_address("sluice.mesh:18000").as_deref(),
            Ok("sluice.mesh:18000")
        );
    }

    #[test]
    fn protocol_prints_lowercase() {
        assert_eq!(XdsProtocol::Delta.to_string(), "delta");
        assert_eq!(XdsProtocol::Sotw.to_string(), "sotw");
    }

    fn string_value(text: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(text.into())),
        }
    }

    fn node_with(metadata: Vec<(&str, Value)>) -> Node {
        Node {
            id: "n1".into(),
            metadata: Some(Struct {
                fields: metadata
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_bare_node_gets_the_defaults() {
        let node = Node {
            id: "bare".into(),
            ..Default::default()
        };
        assert_eq!(node_info_from_proto(&node), Ok(NodeInfo::new("bare")));
        assert_eq!(
            node_info_from_proto(&node_with(vec![])),
            Ok(NodeInfo::new("n1"))
        );
    }

    #[test]
    fn unknown_metadata_keys_are_left_alone() {
        let node = node_with(vec![("ISTIO_VERSION", Value { kind: None })]);
        assert_eq!(node_info_from_proto(&node), Ok(NodeInfo::new("n1")));
    }

    #[test]
    fn an_empty_locality_is_none() {
        let node = Node {
            id: "n1".into(),
            locality: Some(Locality {
                zone: "z1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = node_info_from_proto(&node).expect("valid node");
        assert_eq!(info.zone.as_deref(), Some("z1"));
        assert_eq!(info.region, None);
    }

    #[test]
    fn bad_metadata_is_an_error_naming_the_key() {
        let number = Value {
            kind: Some(Kind::NumberValue(1.0)),
        };
        let labels_with = |value: Value| Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [("app".to_string(), value)].into(),
            })),
        };
        for (metadata, expected) in [
            (
                vec![("namespace", number.clone())],
                r#"node metadata "namespace" must be a string, got a number"#,
            ),
            (
                vec![("namespace", string_value(""))],
                r#"node metadata "namespace" is empty"#,
            ),
            (
                vec![("labels", string_value("app=x"))],
                r#"node metadata "labels" must be a struct of strings, got a string"#,
            ),
            (
                vec![("labels", labels_with(number.clone()))],
                r#"node metadata "labels.app" must be a string, got a number"#,
            ),
            (
                vec![("address", string_value("10.0.0.300"))],
                r#"node metadata "address" is not an IP address: "10.0.0.300""#,
            ),
            (
                vec![(
                    "address",
                    Value {
                        kind: Some(Kind::BoolValue(true)),
                    },
                )],
                r#"node metadata "address" must be a string, got a bool"#,
            ),
            (
                vec![("outbound_listen", string_value("127.0.0.1"))],
                r#"node metadata "outbound_listen" is not an IP:PORT address: "127.0.0.1""#,
            ),
        ] {
            assert_eq!(
                node_info_from_proto(&node_with(metadata)),
                Err(expected.to_string())
            );
        }
        assert!(node_info_from_proto(&Node::default())
            .expect_err("no id")
            .contains("node.id is empty"));
    }

    #[test]
    fn good_metadata_is_read() {
        let node = node_with(vec![
            ("namespace", string_value("shop")),
            ("address", string_value("fd00::7")),
            ("outbound_listen", string_value("[::1]:15006")),
        ]);
        let info = node_info_from_proto(&node).expect("valid node");
        assert_eq!(info.namespace, "shop");
        assert_eq!(info.address, "fd00::7".parse().ok());
        assert_eq!(info.outbound_listen, "[::1]:15006".parse().expect("valid"));
    }
}
