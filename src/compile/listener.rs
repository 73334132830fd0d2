//! The per-sidecar resources: the outbound listener (it depends on the sidecar's listen
//! address) and the route configuration (it depends on the sidecar's namespace).
//!
//! The route configuration has one virtual host per HTTP/gRPC Service port, named
//! `NAME.NS:PORT`, answering to `NAME.NS`, `NAME.NS.svc` and `NAME.NS.svc.cluster.local`, and to
//! the bare `NAME` for Services in the sidecar's own namespace (what Kubernetes DNS resolves),
//! each with `:PORT`, and also without a port when PORT is 80 (a Host without a port means 80).
//! Service names and namespaces are DNS labels (checked when indexing Services), so these
//! domains never collide, which Envoy requires. The last virtual host is the catch-all
//! `passthrough` (see [`super::passthrough`]): a request addressed to an `IP:PORT` goes to that
//! address, any other unknown host gets Envoy's 404.

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

use super::endpoints::socket_address;
use super::passthrough::to_passthrough_vhost;
use super::routes::{grpc_deadlines, RouteTables};
use super::services::{ads, Protocol, ServiceIndex};
use super::{LISTENER_NAME, ROUTE_CONFIG_NAME};
use crate::manifest::ObjectKey;
use crate::node::ConfigKey;
use crate::xds::resource::{Resource, ResourceType};

/// One served Service port, from which each sidecar's virtual host is written.
#[derive(Clone, Debug)]
pub(crate) struct VhostSource {
    pub service: ObjectKey,
    pub port: u16,
    /// What the port does without routes: everything to its own cluster.
    pub default_route: Route,
}

pub(crate) fn vhost_sources(services: &ServiceIndex) -> Vec<VhostSource> {
    let mut out = Vec::new();
    for service in services.services.values() {
        for port in service.served_ports() {
            let mut action = RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(port.cluster.clone())),
                ..Default::default()
            };
            if port.protocol == Some(Protocol::Http2) {
                // Likely gRPC: long-lived streams, bounded by the client's own deadline.
                action.timeout = Some(Duration::default());
                action.max_stream_duration = Some(grpc_deadlines());
            }
            out.push(VhostSource {
                service: service.key.clone(),
                port: port.port,
                default_route: Route {
                    name: "default".into(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(Action::Route(action)),
                    ..Default::default()
                },
            });
        }
    }
    out
}

/// The outbound listener at the sidecar's `--outbound-listen` address.
pub(crate) fn to_listener(key: &ConfigKey) -> Resource {
    let manager = HttpConnectionManager {
        stat_prefix: "outbound".into(),
        // AUTO: HTTP/1.1, and HTTP/2 with prior knowledge, so h2c gRPC clients work too.
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: ROUTE_CONFIG_NAME.into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(HttpFilterConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    let listener = Listener {
        name: LISTENER_NAME.into(),
        address: Some(socket_address(key.outbound_listen)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ConfigType::TypedConfig(pack_any(manager))),
            }],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    };
    Resource::new(ResourceType::Listener, LISTENER_NAME, &listener)
}

/// The host names a sidecar in `client_namespace` may use for `port` of `service`.
pub(crate) fn domains(service: &ObjectKey, port: u16, client_namespace: &str) -> Vec<String> {
    let (name, ns) = (&service.name, &service.namespace);
    let mut hosts = Vec::with_capacity(4);
    if ns == client_namespace {
        hosts.push(name.clone());
    }
    hosts.push(format!("{name}.{ns}"));
    hosts.push(format!("{name}.{ns}.svc"));
    hosts.push(format!("{name}.{ns}.svc.cluster.local"));
    let mut domains = Vec::with_capacity(hosts.len() * 2);
    for host in hosts {
        if port == 80 {
            domains.push(host.clone());
        }
        domains.push(format!("{host}:{port}"));
    }
    domains
}

/// The route configuration for sidecars in `namespace`.
pub(crate) fn to_route_configuration(
    namespace: &str,
    vhosts: &[VhostSource],
    tables: &RouteTables,
) -> Resource {
    let mut origins = Vec::new();
    let mut virtual_hosts: Vec<VirtualHost> = vhosts
        .iter()
        .map(|source| {
            let routes = match tables.for_clients(namespace, &source.service, source.port) {
                Some(table) => {
                    origins.extend(table.origins.iter().cloned());
                    table.routes.clone()
                }
                None => vec![source.default_route.clone()],
            };
            VirtualHost {
                name: format!(
                    "{}.{}:{}",
                    source.service.name, source.service.namespace, source.port
                ),
                domains: domains(&source.service, source.port, namespace),
                routes,
                ..Default::default()
            }
        })
        .collect();
    virtual_hosts.push(to_passthrough_vhost());
    origins.sort();
    origins.dedup();
    let config = RouteConfiguration {
        name: ROUTE_CONFIG_NAME.into(),
        virtual_hosts,
        ..Default::default()
    };
    Resource::new(ResourceType::Route, ROUTE_CONFIG_NAME, &config).with_origins(origins)
}
