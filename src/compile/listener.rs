//! The per-sidecar listener, and the route scopes and route configurations it fetches.
//!
//! Routing is split per Service port with scoped RDS, so a change to one Service's routes sends
//! one small route configuration, not the routing of the whole mesh:
//! - The outbound listener's HTTP connection manager reads its routes through `scoped_routes`:
//!   scopes ([`ResourceType::ScopedRoute`]) and route configurations both come over ADS.
//! - A small Lua filter runs first and writes the request's scope key into the
//!   [`SCOPE_HEADER`] header: the Service port the `:authority` addresses, as `NAME.NS:PORT`.
//!   It accepts what Kubernetes DNS resolves (`NAME` for a Service in the sidecar's own
//!   namespace, `NAME.NS`, `NAME.NS.svc`, `NAME.NS.svc.cluster.local`), in any letter case,
//!   with `:PORT` or without (then port 80). An IP literal maps to the `passthrough` scope (see
//!   [`super::passthrough`]); anything else to a key no scope has, so Envoy answers 404.
//! - One scope per HTTP/gRPC Service port, named and keyed `NAME.NS:PORT`, fetching the route
//!   configuration of the same name. That route configuration has one virtual host (domain
//!   `*`, the scope already chose the Service port) holding the port's routes.
//!
//! The scopes and most route configurations are the same for every sidecar, so they are built
//! once per revision and shared; only a namespace with consumer routes gets its own route
//! configurations for the Services those routes attach to, and only the listener (its address
//! and the namespace the Lua filter completes bare names with) is built per sidecar.

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::scoped_route_configuration::key::{fragment, Fragment};
use envoy_types::pb::envoy::config::route::v3::scoped_route_configuration::Key;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, ScopedRouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::lua::v3::Lua;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::scoped_routes::scope_key_builder::fragment_builder::header_value_extractor::ExtractType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::scoped_routes::scope_key_builder::fragment_builder::{HeaderValueExtractor, Type as FragmentType};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::scoped_routes::scope_key_builder::FragmentBuilder;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::scoped_routes::{ConfigSpecifier, ScopeKeyBuilder};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, ScopedRds, ScopedRoutes,
};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

use super::endpoints::socket_address;
use super::passthrough::{to_passthrough_vhost, PASSTHROUGH_VHOST};
use super::routes::grpc_deadlines;
use super::services::{ads, Protocol, ServiceIndex};
use super::{origin, LISTENER_NAME, SCOPED_ROUTES_NAME};
use crate::manifest::ObjectKey;
use crate::node::ConfigKey;
use crate::xds::resource::{Resource, ResourceType};

/// The request header the Lua filter writes the scope key into. Envoy reads the scope from it;
/// every route configuration removes it before the request goes upstream.
pub const SCOPE_HEADER: &str = "x-sluice-scope";

/// The scope (and route configuration) of requests addressed to an `IP:PORT`.
pub const PASSTHROUGH_SCOPE: &str = PASSTHROUGH_VHOST;

/// One served Service port, from which its scope and route configuration are written.
#[derive(Clone, Debug)]
pub(crate) struct VhostSource {
    pub service: ObjectKey,
    pub port: u16,
    /// What the port does without routes: everything to its own cluster.
    pub default_route: Route,
    /// `file:line` of the Service.
    pub origin: String,
}

impl VhostSource {
    /// The scope key, which also names the scope, its route configuration and virtual host:
    /// `NAME.NS:PORT`.
    pub fn scope_name(&self) -> String {
        format!(
            "{}.{}:{}",
            self.service.name, self.service.namespace, self.port
        )
    }
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
                origin: origin(&service.pos),
            });
        }
    }
    out
}

/// The Lua code that writes the scope key. `@NAMESPACE@` is where the sidecar's namespace goes.
const SCOPE_LUA: &str = r#"-- Sluice: the scope key (NAME.NS:PORT) of the Service port this request addresses.
local own_namespace = "@NAMESPACE@"
local function scope(authority)
  local a = string.lower(authority)
  local host, port = string.match(a, "^(.*):(%d+)$")
  if host == nil then host, port = a, "80" end
  if string.match(host, "^[%d.]+$") or string.sub(host, 1, 1) == "[" then
    return "passthrough"
  end
  local name, namespace = string.match(host, "^([%w-]+)%.([%w-]+)%.svc%.cluster%.local$")
  if name == nil then name, namespace = string.match(host, "^([%w-]+)%.([%w-]+)%.svc$") end
  if name == nil then name, namespace = string.match(host, "^([%w-]+)%.([%w-]+)$") end
  if name == nil then
    name = string.match(host, "^([%w-]+)$")
    namespace = own_namespace
  end
  if name == nil then return "-" end
  return name .. "." .. namespace .. ":" .. port
end
function envoy_on_request(request)
  local headers = request:headers()
  headers:replace("x-sluice-scope", scope(headers:get(":authority") or ""))
end
"#;

/// `text` as the inside of a Lua string literal: DNS-label characters as they are, every other
/// byte as a `\ddd` escape, so no namespace a sidecar claims can break out of the string.
fn lua_string_body(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("\\{byte:03}"));
        }
    }
    out
}

/// The Lua source of the scope filter for sidecars in `namespace`.
pub(crate) fn scope_lua(namespace: &str) -> String {
    SCOPE_LUA.replacen("@NAMESPACE@", &lua_string_body(namespace), 1)
}

fn http_filter<M: prost::Name>(name: &str, config: M) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(HttpFilterConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

/// The outbound listener at the sidecar's `--outbound-listen` address.
pub(crate) fn to_listener(key: &ConfigKey) -> Resource {
    let scope_key = FragmentBuilder {
        r#type: Some(FragmentType::HeaderValueExtractor(HeaderValueExtractor {
            name: SCOPE_HEADER.into(),
            // No separator: the whole value is the key.
            element_separator: String::new(),
            extract_type: Some(ExtractType::Index(0)),
        })),
    };
    let manager = HttpConnectionManager {
        stat_prefix: "outbound".into(),
        // AUTO: HTTP/1.1, and HTTP/2 with prior knowledge, so h2c gRPC clients work too.
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::ScopedRoutes(ScopedRoutes {
            name: SCOPED_ROUTES_NAME.into(),
            scope_key_builder: Some(ScopeKeyBuilder {
                fragments: vec![scope_key],
            }),
            rds_config_source: Some(ads()),
            config_specifier: Some(ConfigSpecifier::ScopedRds(ScopedRds {
                scoped_rds_config_source: Some(ads()),
                ..Default::default()
            })),
        })),
        http_filters: vec![
            http_filter(
                "envoy.filters.http.lua",
                Lua {
                    default_source_code: Some(DataSource {
                        specifier: Some(Specifier::InlineString(scope_lua(&key.namespace))),
                        ..Default::default()
                    }),
                    stat_prefix: "sluice_scope".into(),
                    ..Default::default()
                },
            ),
            http_filter("envoy.filters.http.router", Router::default()),
        ],
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

/// The scope named and keyed `name`, fetching the route configuration of the same name.
pub(crate) fn to_scope(name: &str, origins: Vec<String>) -> Resource {
    let scope = ScopedRouteConfiguration {
        name: name.into(),
        route_configuration_name: name.into(),
        key: Some(Key {
            fragments: vec![Fragment {
                r#type: Some(fragment::Type::StringKey(name.into())),
            }],
        }),
        ..Default::default()
    };
    Resource::new(ResourceType::ScopedRoute, name, &scope).with_origins(origins)
}

/// A route configuration of one virtual host (the scope already chose it) named `name`.
fn route_configuration(name: &str, vhost: VirtualHost, origins: Vec<String>) -> Resource {
    let config = RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![vhost],
        request_headers_to_remove: vec![SCOPE_HEADER.into()],
        ..Default::default()
    };
    Resource::new(ResourceType::Route, name, &config).with_origins(origins)
}

/// The route configuration of one Service port: its routes from `table` (with the files they
/// came from), or its default route when it has none.
pub(crate) fn to_route_configuration(
    source: &VhostSource,
    table: Option<&super::routes::PortRoutes>,
) -> Resource {
    let name = source.scope_name();
    let mut origins = vec![source.origin.clone()];
    let routes = match table {
        Some(table) => {
            origins.extend(table.origins.iter().cloned());
            table.routes.clone()
        }
        None => vec![source.default_route.clone()],
    };
    origins.sort();
    origins.dedup();
    let vhost = VirtualHost {
        name: name.clone(),
        domains: vec!["*".into()],
        routes,
        ..Default::default()
    };
    route_configuration(&name, vhost, origins)
}

/// The route configuration of the `passthrough` scope.
pub(crate) fn to_passthrough_route_configuration() -> Resource {
    route_configuration(PASSTHROUGH_SCOPE, to_passthrough_vhost(), Vec::new())
}
