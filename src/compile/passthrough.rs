//! Requests addressed to an `IP:PORT` rather than to a Service: they go straight to that address,
//! untouched by any route, as a request to a pod IP does in a Kubernetes mesh (Gateway API's
//! mesh rules apply to traffic addressed to a Service, not to its endpoints).
//!
//! Every sidecar's route configuration ends with a catch-all virtual host whose only route
//! matches an `:authority` that is an IPv4 address or a bracketed IPv6 address with a port, and
//! sends it to [`PASSTHROUGH_CLUSTER`], an `ORIGINAL_DST` cluster that connects to the address
//! named by the `:authority` itself. Any other unknown host still finds no route (404). The
//! upstream connection speaks the protocol the app spoke (HTTP/1.1, or h2c for gRPC).

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy, OriginalDstLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Http1ProtocolOptions, Http2ProtocolOptions};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, UseDownstreamHttpConfig,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

use super::matches::regex;
use super::services::{CONNECT_TIMEOUT, HTTP_PROTOCOL_OPTIONS};

/// The cluster that connects to the address a request names.
pub const PASSTHROUGH_CLUSTER: &str = "sluice_passthrough";

/// The name of the catch-all virtual host.
pub(crate) const PASSTHROUGH_VHOST: &str = "passthrough";

/// An `:authority` that is an address with a port: `10.0.3.17:8080` or `[fd00::17]:8080`.
/// (Envoy matches a `safe_regex` against the whole value.)
pub(crate) const ADDRESS_AUTHORITY: &str =
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}";

/// The `ORIGINAL_DST` cluster that takes its destination from the request's `:authority`.
pub(crate) fn to_passthrough_cluster() -> Cluster {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let mut cluster = Cluster {
        name: PASSTHROUGH_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(CONNECT_TIMEOUT),
        lb_policy: LbPolicy::ClusterProvided as i32,
        lb_config: Some(LbConfig::OriginalDstLbConfig(OriginalDstLbConfig {
            use_http_header: true,
            http_header_name: ":authority".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    cluster
        .typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(options));
    cluster
}

/// The catch-all virtual host, last in every route configuration.
pub(crate) fn to_passthrough_vhost() -> VirtualHost {
    VirtualHost {
        name: PASSTHROUGH_VHOST.into(),
        domains: vec!["*".into()],
        routes: vec![Route {
            name: PASSTHROUGH_VHOST.into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                headers: vec![HeaderMatcher {
                    name: ":authority".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                        StringMatcher {
                            match_pattern: Some(MatchPattern::SafeRegex(regex(ADDRESS_AUTHORITY))),
                            ignore_case: false,
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(PASSTHROUGH_CLUSTER.into())),
                // Whatever the app runs there (long polls, gRPC streams) is bounded by its own
                // deadlines, as it would be without a sidecar.
                timeout: Some(Duration::default()),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}
