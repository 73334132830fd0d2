//! Envoy admin `/config_dump`-shaped JSON for what Sluice serves one sidecar.
//!
//! The dump is built from Envoy's own admin messages (`envoy.admin.v3.ClustersConfigDump`, ...)
//! and printed through the descriptors of Envoy's `.proto` files, which `build.rs` compiles into
//! the binary. Printing is proto3 JSON as Envoy's admin handler does it: snake_case field names,
//! enums by name, default values left out, 64-bit integers as strings, durations as `"1.500s"`,
//! and every `Any` expanded in place with its `@type`, so the HTTP connection manager inside a
//! listener reads as it does in Envoy's `/config_dump`. `tests/config_dump_shape.rs` checks the
//! output against a real Envoy's.
//!
//! What Envoy's dump holds that this one cannot: the bootstrap and its static resources (the
//! `sluice_xds` cluster), and, for endpoints, the live host state Envoy rebuilds its EDS dump from
//! (health status, default weights, the overprovisioning factor). Here endpoints are printed as
//! Sluice sends them.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::admin::v3::{
    clusters_config_dump, endpoints_config_dump, listeners_config_dump, routes_config_dump,
    scoped_routes_config_dump, ClustersConfigDump, ConfigDump, EndpointsConfigDump,
    ListenersConfigDump, RoutesConfigDump, ScopedRoutesConfigDump,
};
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct, Timestamp, Value as PbValue};
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{json, Value};

use crate::bootstrap::XdsProtocol;
use crate::compile::SCOPED_ROUTES_NAME;
use crate::xds::resource::{Resource, ResourceType, Snapshot};

/// Envoy's protos, as `build.rs` compiled them from the `envoy-types` sources.
static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));
    DescriptorPool::decode(bytes.as_slice()).expect("build.rs writes a valid descriptor set")
});

/// Proto JSON as Envoy's admin handler prints it.
const PRINT: SerializeOptions = SerializeOptions::new().use_proto_field_name(true);

/// The order of Envoy's own dump (`/config_dump?include_eds`, Envoy 1.40): clusters,
/// endpoints, listeners, scoped routes, routes. Envoy's bootstrap and secrets dumps have no
/// counterpart in what Sluice serves.
pub const DUMP_ORDER: [ResourceType; ResourceType::COUNT] = [
    ResourceType::Cluster,
    ResourceType::Endpoint,
    ResourceType::Listener,
    ResourceType::ScopedRoute,
    ResourceType::Route,
];

/// What a sidecar has applied, for the version fields of the dump. Without it (or for a type
/// not ACKed yet) each resource carries its own content version and the dump-level
/// `version_info` is left out, as Envoy leaves it out before its first update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedVersions {
    /// Envoy labels each resource with its own version under delta xDS, and with the version of
    /// the response that carried it under state of the world.
    pub protocol: XdsProtocol,
    /// Per type, the last response the sidecar ACKed.
    pub types: BTreeMap<ResourceType, AckedType>,
}

/// The last ACKed response of one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedType {
    /// The response's `version_info` (SotW) or `system_version_info` (delta).
    pub version_info: String,
    /// When the sidecar ACKed it; printed as every resource's `last_updated`.
    pub last_updated: Option<SystemTime>,
}

/// The dump of everything `snapshot` holds, in the shape of Envoy's `/config_dump?include_eds`:
/// `{"configs": [ClustersConfigDump, EndpointsConfigDump, ListenersConfigDump,
/// RoutesConfigDump]}`. Never fails: a resource that cannot be printed (a type missing from the
/// descriptors, bytes that do not decode) is replaced by a `google.protobuf.Struct` that says so.
pub fn config_dump(snapshot: &Snapshot, acked: Option<&AckedVersions>) -> Value {
    let dump = build_dump(snapshot, acked, |resource| resource.body.clone());
    match print(&dump) {
        Ok(json) => json,
        // Rare enough to pay for a second pass that finds the culprits one by one.
        Err(_) => {
            let dump = build_dump(snapshot, acked, printable_body);
            print(&dump).unwrap_or_else(|err| json!({ "error": err }))
        }
    }
}

/// One resource as Envoy prints it inside a dump: `{"@type": ..., fields...}`. A resource that
/// cannot be printed gives `{"@type": ..., "error": ...}` instead.
pub fn resource_to_json(resource: &Resource) -> Value {
    any_to_json(&resource.body).unwrap_or_else(|err| {
        json!({
            "@type": resource.body.type_url,
            "error": format!("cannot print resource {:?}: {err}", resource.name),
        })
    })
}

fn build_dump(
    snapshot: &Snapshot,
    acked: Option<&AckedVersions>,
    body: impl Fn(&Resource) -> Any,
) -> ConfigDump {
    let configs = DUMP_ORDER
        .into_iter()
        .map(|resource_type| {
            let ack = acked.and_then(|a| a.types.get(&resource_type));
            let top_version = ack.map(|a| a.version_info.clone()).unwrap_or_default();
            let last_updated = ack.and_then(|a| a.last_updated).map(timestamp);
            let version_of = |resource: &Resource| match (acked.map(|a| a.protocol), ack) {
                (Some(XdsProtocol::Sotw), Some(ack)) => ack.version_info.clone(),
                _ => resource.version.clone(),
            };
            let resources = snapshot.resources(resource_type).values();
            match resource_type {
                ResourceType::Cluster => pack(&ClustersConfigDump {
                    version_info: top_version,
                    dynamic_active_clusters: resources
                        .map(|r| clusters_config_dump::DynamicCluster {
                            version_info: version_of(r),
                            cluster: Some(body(r)),
                            last_updated,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                ResourceType::Endpoint => pack(&EndpointsConfigDump {
                    dynamic_endpoint_configs: resources
                        .map(|r| endpoints_config_dump::DynamicEndpointConfig {
                            version_info: version_of(r),
                            endpoint_config: Some(body(r)),
                            last_updated,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                ResourceType::Listener => pack(&ListenersConfigDump {
                    version_info: top_version,
                    dynamic_listeners: resources
                        .map(|r| listeners_config_dump::DynamicListener {
                            name: r.name.clone(),
                            active_state: Some(listeners_config_dump::DynamicListenerState {
                                version_info: version_of(r),
                                listener: Some(body(r)),
                                last_updated,
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                ResourceType::ScopedRoute => {
                    let scopes: Vec<Any> = resources.map(|r| body(r)).collect();
                    pack(&ScopedRoutesConfigDump {
                        // Envoy groups scopes by the listener's `scoped_routes` name.
                        dynamic_scoped_route_configs: if scopes.is_empty() {
                            Vec::new()
                        } else {
                            vec![scoped_routes_config_dump::DynamicScopedRouteConfigs {
                                name: SCOPED_ROUTES_NAME.into(),
                                version_info: top_version,
                                scoped_route_configs: scopes,
                                last_updated,
                                ..Default::default()
                            }]
                        },
                        ..Default::default()
                    })
                }
                ResourceType::Route => pack(&RoutesConfigDump {
                    dynamic_route_configs: resources
                        .map(|r| routes_config_dump::DynamicRouteConfig {
                            version_info: version_of(r),
                            route_config: Some(body(r)),
                            last_updated,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
            }
        })
        .collect();
    ConfigDump { configs }
}

fn pack<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// The resource's body if it prints, else a `Struct` naming what went wrong.
fn printable_body(resource: &Resource) -> Any {
    match any_to_json(&resource.body) {
        Ok(_) => resource.body.clone(),
        Err(err) => {
            let text = |s: String| PbValue {
                kind: Some(Kind::StringValue(s)),
            };
            pack(&Struct {
                fields: [
                    ("type_url".to_string(), text(resource.body.type_url.clone())),
                    (
                        "error".to_string(),
                        text(format!("cannot print resource {:?}: {err}", resource.name)),
                    ),
                ]
                .into(),
            })
        }
    }
}

fn any_to_json(any: &Any) -> Result<Value, String> {
    let mut json = to_json(message_descriptor(Any::full_name())?, &any.encode_to_vec())?;
    integral_floats_as_integers(&mut json);
    Ok(json)
}

fn print(dump: &ConfigDump) -> Result<Value, String> {
    let mut json = to_json(
        message_descriptor(ConfigDump::full_name())?,
        &dump.encode_to_vec(),
    )?;
    integral_floats_as_integers(&mut json);
    Ok(json)
}

fn message_descriptor(name: String) -> Result<MessageDescriptor, String> {
    DESCRIPTORS
        .get_message_by_name(&name)
        .ok_or_else(|| format!("{name} is missing from the descriptor set (build.rs ROOTS)"))
}

fn to_json(descriptor: MessageDescriptor, bytes: &[u8]) -> Result<Value, String> {
    let message = DynamicMessage::decode(descriptor, bytes).map_err(|err| err.to_string())?;
    message
        .serialize_with_options(serde_json::value::Serializer, &PRINT)
        .map_err(|err| err.to_string())
}

/// Envoy's JSON printer writes a `double` with an integral value as an integer (`"value": 50`),
/// serde_json as a float (`50.0`). Equal numbers, but a JSON diff against Envoy's dump would
/// show them, so print them as Envoy does.
fn integral_floats_as_integers(json: &mut Value) {
    match json {
        Value::Number(number) if number.is_f64() => {
            if let Some(float) = number.as_f64() {
                // Below 2^53 every integer is exact, so the conversion loses nothing.
                if float.fract() == 0.0 && float.abs() < 9_007_199_254_740_992.0 {
                    *json = Value::from(float as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// `last_updated` as Envoy keeps it: milliseconds since the epoch.
fn timestamp(at: SystemTime) -> Timestamp {
    let millis = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Timestamp {
        seconds: i64::try_from(millis / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from(millis % 1000).unwrap_or(0) * 1_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address, Address, AggregatedConfigSource, ConfigSource,
        Http2ProtocolOptions, SocketAddress,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
    use envoy_types::pb::envoy::config::route::v3::{
        route, route_action, route_match, scoped_route_configuration, Route, RouteAction,
        RouteConfiguration, RouteMatch, ScopedRouteConfiguration, VirtualHost,
    };
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        http_protocol_options, HttpProtocolOptions,
    };
    use envoy_types::pb::envoy::r#type::v3::Percent;
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

    fn any<M: Message + Name>(message: &M) -> Any {
        pack(message)
    }

    fn ads() -> ConfigSource {
        ConfigSource {
            resource_api_version: 2, // V3
            config_source_specifier: Some(
                envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                ),
            ),
            ..Default::default()
        }
    }

    fn cluster() -> Cluster {
        Cluster {
            name: "outbound|80||echo.shop.svc.cluster.local".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                ..Default::default()
            }),
            connect_timeout: Some(PbDuration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            per_connection_buffer_limit_bytes: Some(UInt32Value { value: 32768 }),
            common_lb_config: Some(cluster::CommonLbConfig {
                healthy_panic_threshold: Some(Percent { value: 50.0 }),
                ..Default::default()
            }),
            typed_extension_protocol_options: [(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                any(&HttpProtocolOptions {
                    upstream_protocol_options: Some(
                        http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                            http_protocol_options::ExplicitHttpConfig {
                                protocol_config: Some(
                                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                        Http2ProtocolOptions::default(),
                                    ),
                                ),
                            },
                        ),
                    ),
                    ..Default::default()
                }),
            )]
            .into(),
            ..Default::default()
        }
    }

    fn listener() -> Listener {
        let hcm = HttpConnectionManager {
            stat_prefix: "outbound".into(),
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: "outbound".into(),
            })),
            http_filters: vec![HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(
                    any(&Router::default()),
                )),
                ..Default::default()
            }],
            ..Default::default()
        };
        Listener {
            name: "outbound".into(),
            address: Some(socket(std::net::Ipv4Addr::LOCALHOST.to_string(), 15001)),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn routes() -> RouteConfiguration {
        RouteConfiguration {
            name: "outbound".into(),
            virtual_hosts: vec![VirtualHost {
                name: "echo.shop:80".into(),
                domains: vec!["echo".into(), "echo:80".into()],
                routes: vec![Route {
                    name: "shop/echo/rule-0".into(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            "outbound|80||echo.shop.svc.cluster.local".into(),
                        )),
                        timeout: Some(PbDuration {
                            seconds: 0,
                            nanos: 250_000_000,
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn socket(ip: String, port: u32) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip,
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }
    }

    fn endpoints() -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: "outbound|80||echo.shop.svc.cluster.local".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket("127.0.10.1".into(), 8080)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot::new(
            "0123456789abcdef",
            vec![
                (
                    ResourceType::Cluster,
                    Resource::new(ResourceType::Cluster, cluster().name, &cluster()),
                ),
                (
                    ResourceType::Endpoint,
                    Resource::new(
                        ResourceType::Endpoint,
                        endpoints().cluster_name,
                        &endpoints(),
                    ),
                ),
                (
                    ResourceType::Listener,
                    Resource::new(ResourceType::Listener, "outbound", &listener()),
                ),
                (
                    ResourceType::ScopedRoute,
                    Resource::new(ResourceType::ScopedRoute, "outbound", &scope()),
                ),
                (
                    ResourceType::Route,
                    Resource::new(ResourceType::Route, "outbound", &routes()),
                ),
            ],
        )
    }

    fn scope() -> ScopedRouteConfiguration {
        ScopedRouteConfiguration {
            name: "outbound".into(),
            route_configuration_name: "outbound".into(),
            key: Some(scoped_route_configuration::Key {
                fragments: vec![scoped_route_configuration::key::Fragment {
                    r#type: Some(scoped_route_configuration::key::fragment::Type::StringKey(
                        "outbound".into(),
                    )),
                }],
            }),
            ..Default::default()
        }
    }

    fn only(snapshot: &Snapshot, t: ResourceType) -> &Resource {
        snapshot.resources(t).values().next().expect("one resource")
    }

    #[test]
    fn cluster_prints_snake_case_with_nested_type() {
        let json = resource_to_json(only(&snapshot(), ResourceType::Cluster));
        assert_eq!(
            json,
            json!({
                "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "name": "outbound|80||echo.shop.svc.cluster.local",
                "type": "EDS",
                "eds_cluster_config": {
                    "eds_config": { "ads": {}, "resource_api_version": "V3" }
                },
                "connect_timeout": "1.500s",
                "per_connection_buffer_limit_bytes": 32768,
                "common_lb_config": { "healthy_panic_threshold": { "value": 50 } },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} }
                    }
                }
            })
        );
    }

    #[test]
    fn listener_expands_the_connection_manager_and_router() {
        let json = resource_to_json(only(&snapshot(), ResourceType::Listener));
        let filter = &json["filter_chains"][0]["filters"][0];
        assert_eq!(
            filter["name"],
            "envoy.filters.network.http_connection_manager"
        );
        assert_eq!(
            filter["typed_config"],
            json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "outbound",
                "rds": {
                    "config_source": { "ads": {}, "resource_api_version": "V3" },
                    "route_config_name": "outbound"
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    }
                }]
            })
        );
        assert_eq!(
            json["address"]["socket_address"],
            json!({"address": "127.0.0.1", "port_value": 15001})
        );
    }

    #[test]
    fn routes_and_endpoints_print_snake_case() {
        let snapshot = snapshot();
        let routes = resource_to_json(only(&snapshot, ResourceType::Route));
        assert_eq!(
            routes["@type"],
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
        );
        assert_eq!(
            routes["virtual_hosts"][0]["routes"][0],
            json!({
                "name": "shop/echo/rule-0",
                "match": { "prefix": "/" },
                "route": {
                    "cluster": "outbound|80||echo.shop.svc.cluster.local",
                    "timeout": "0.250s"
                }
            })
        );
        let endpoints = resource_to_json(only(&snapshot, ResourceType::Endpoint));
        assert_eq!(
            endpoints,
            json!({
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": "outbound|80||echo.shop.svc.cluster.local",
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                    "socket_address": { "address": "127.0.10.1", "port_value": 8080 }
                }}}]}]
            })
        );
    }

    #[test]
    fn dump_has_envoys_sections_in_envoys_order() {
        let snapshot = snapshot();
        let dump = config_dump(&snapshot, None);
        let configs = dump["configs"].as_array().expect("configs is a list");
        let types: Vec<&str> = configs
            .iter()
            .map(|c| c["@type"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            types,
            [
                "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
                "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump",
                "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            ]
        );
        let cluster = only(&snapshot, ResourceType::Cluster);
        // Nothing ACKed: each resource carries its own version, no dump-level version, no time.
        assert_eq!(
            configs[0],
            json!({
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "dynamic_active_clusters": [{
                    "version_info": cluster.version,
                    "cluster": resource_to_json(cluster),
                }]
            })
        );
        let listener = only(&snapshot, ResourceType::Listener);
        assert_eq!(
            configs[2]["dynamic_listeners"],
            json!([{
                "name": "outbound",
                "active_state": {
                    "version_info": listener.version,
                    "listener": resource_to_json(listener),
                }
            }])
        );
        let scope = only(&snapshot, ResourceType::ScopedRoute);
        assert_eq!(
            configs[3]["dynamic_scoped_route_configs"],
            json!([{
                "name": "sluice_outbound",
                "scoped_route_configs": [resource_to_json(scope)],
            }])
        );
        let route = only(&snapshot, ResourceType::Route);
        assert_eq!(
            configs[4]["dynamic_route_configs"][0]["route_config"],
            resource_to_json(route)
        );
        let cla = only(&snapshot, ResourceType::Endpoint);
        assert_eq!(
            configs[1]["dynamic_endpoint_configs"][0]["endpoint_config"],
            resource_to_json(cla)
        );
    }

    #[test]
    fn an_empty_snapshot_dumps_empty_sections() {
        let dump = config_dump(&Snapshot::default(), None);
        let configs = dump["configs"].as_array().expect("configs is a list");
        assert_eq!(configs.len(), 5);
        for config in configs {
            let fields: Vec<&String> = config.as_object().expect("object").keys().collect();
            assert_eq!(fields, ["@type"], "{config}");
        }
    }

    fn acked(protocol: XdsProtocol) -> AckedVersions {
        let at = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123) + Duration::from_nanos(456);
        AckedVersions {
            protocol,
            types: ResourceType::ALL
                .into_iter()
                .map(|t| {
                    (
                        t,
                        AckedType {
                            version_info: format!("0123456789ab-{}", t.short_name()),
                            last_updated: Some(at),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn acked_versions_follow_envoys_rules() {
        let snapshot = snapshot();
        let cluster = only(&snapshot, ResourceType::Cluster);

        let delta = config_dump(&snapshot, Some(&acked(XdsProtocol::Delta)));
        let clusters = &delta["configs"][0];
        assert_eq!(clusters["version_info"], "0123456789ab-cds");
        let entry = &clusters["dynamic_active_clusters"][0];
        assert_eq!(entry["version_info"], cluster.version.as_str());
        // Milliseconds, as Envoy keeps them.
        assert_eq!(entry["last_updated"], "2026-09-21T14:13:20.123Z");
        let listeners = &delta["configs"][2];
        assert_eq!(listeners["version_info"], "0123456789ab-lds");
        assert_eq!(
            listeners["dynamic_listeners"][0]["active_state"]["last_updated"],
            "2026-09-21T14:13:20.123Z"
        );
        // Scopes carry the version of the last scoped-RDS update per group.
        let scopes = &delta["configs"][3]["dynamic_scoped_route_configs"][0];
        assert_eq!(scopes["version_info"], "0123456789ab-srds");
        assert_eq!(scopes["last_updated"], "2026-09-21T14:13:20.123Z");
        // Envoy's routes and endpoints dumps have no dump-level version.
        assert!(delta["configs"][4].get("version_info").is_none());

        let sotw = config_dump(&snapshot, Some(&acked(XdsProtocol::Sotw)));
        assert_eq!(
            sotw["configs"][0]["dynamic_active_clusters"][0]["version_info"],
            "0123456789ab-cds"
        );
        assert_eq!(
            sotw["configs"][4]["dynamic_route_configs"][0]["version_info"],
            "0123456789ab-rds"
        );
    }

    #[test]
    fn the_dump_parses_back_as_envoys_admin_message() {
        // The strongest check of the wrapper field names short of a real Envoy: the JSON must
        // deserialize, with unknown fields refused, into envoy.admin.v3.ConfigDump.
        let dump = config_dump(&snapshot(), Some(&acked(XdsProtocol::Delta)));
        let descriptor = message_descriptor(ConfigDump::full_name()).expect("in the pool");
        let text = dump.to_string();
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(true);
        let message =
            DynamicMessage::deserialize_with_options(descriptor, &mut deserializer, &options)
                .expect("the dump is valid proto JSON for envoy.admin.v3.ConfigDump");
        let decoded = ConfigDump::decode(message.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.configs.len(), 5);
        let clusters = ClustersConfigDump::decode(decoded.configs[0].value.as_slice())
            .expect("a ClustersConfigDump");
        let cluster_any = clusters.dynamic_active_clusters[0]
            .cluster
            .as_ref()
            .expect("the cluster");
        assert_eq!(
            Cluster::decode(cluster_any.value.as_slice()).expect("a Cluster"),
            cluster()
        );
    }

    #[test]
    fn unprintable_resources_are_named_not_fatal() {
        let unknown = Resource {
            name: "mystery".into(),
            version: "1".into(),
            body: Any {
                type_url: "type.googleapis.com/example.Unknown".into(),
                value: vec![1, 2, 3],
            },
            origins: vec![],
        };
        let garbage = Resource {
            body: Any {
                type_url: ResourceType::Cluster.type_url().into(),
                value: vec![0xff, 0xff, 0xff],
            },
            ..unknown.clone()
        };
        for resource in [&unknown, &garbage] {
            let json = resource_to_json(resource);
            assert_eq!(json["@type"], resource.body.type_url.as_str());
            assert!(
                json["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("\"mystery\"")),
                "{json}"
            );
        }

        // A listener whose filter holds a type the descriptors lack: the rest of the dump
        // still prints, and the culprit says what it is.
        let mut bad_listener = listener();
        bad_listener.filter_chains[0].filters[0].config_type =
            Some(filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/example.Unknown".into(),
                value: vec![],
            }));
        let snapshot = Snapshot::new(
            "r",
            vec![
                (
                    ResourceType::Cluster,
                    Resource::new(ResourceType::Cluster, cluster().name, &cluster()),
                ),
                (
                    ResourceType::Listener,
                    Resource::new(ResourceType::Listener, "outbound", &bad_listener),
                ),
            ],
        );
        let dump = config_dump(&snapshot, None);
        assert_eq!(
            dump["configs"][0]["dynamic_active_clusters"][0]["cluster"]["name"],
            cluster().name.as_str()
        );
        let shown = &dump["configs"][2]["dynamic_listeners"][0]["active_state"]["listener"];
        assert_eq!(shown["@type"], "type.googleapis.com/google.protobuf.Struct");
        assert_eq!(
            shown["value"]["type_url"],
            ResourceType::Listener.type_url()
        );
        assert!(shown["value"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("example.Unknown")));
    }

    #[test]
    fn every_type_sluice_serves_is_in_the_descriptors() {
        for t in ResourceType::ALL {
            let name = t.type_url().trim_start_matches("type.googleapis.com/");
            assert!(
                DESCRIPTORS.get_message_by_name(name).is_some(),
                "{name} missing"
            );
        }
        for name in [
            HttpConnectionManager::full_name(),
            Router::full_name(),
            HttpProtocolOptions::full_name(),
            ConfigDump::full_name(),
        ] {
            assert!(
                DESCRIPTORS.get_message_by_name(&name).is_some(),
                "{name} missing"
            );
        }
    }

    #[test]
    fn integral_floats_print_as_integers_and_others_stay() {
        let mut json = json!({"a": 50.0, "b": [0.5, -3.0], "c": 7, "d": "50.0", "e": 1e300});
        integral_floats_as_integers(&mut json);
        assert_eq!(
            json.to_string(),
            r#"{"a":50,"b":[0.5,-3],"c":7,"d":"50.0","e":1e+300}"#
        );
    }
}
