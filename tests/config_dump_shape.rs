//! Sluice's `/debug/config_dump` prints resources exactly as a real Envoy prints them in its own
//! admin `/config_dump`.
//!
//! Envoy is fed the same prost messages Sluice's dump is built from, through filesystem xDS
//! (binary `DiscoveryResponse` files, so nothing of Sluice's printer reaches Envoy), and the
//! dynamic sections of both dumps are compared. The resources use the features Sluice's compiler
//! emits: EDS clusters with HTTP/2 protocol options, an HTTP connection manager with RDS and the
//! router, header, query and regex matches, weighted clusters, redirects, rewrites, mirrors,
//! header modifiers, timeouts and a direct response.
//!
//! Envoy comes from `SLUICE_ENVOY`, else `.venv/bin/envoy` (installed by `scripts/test`). A
//! missing Envoy fails the test.

mod support;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers, cluster, CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, header_value_option, socket_address, Address, ConfigSource,
    HeaderValue, HeaderValueOption, Http2ProtocolOptions, KeepaliveSettings, Locality,
    PathConfigSource, RuntimeFractionalPercent, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, query_parameter_matcher, redirect_action, route, route_action, route_match,
    weighted_cluster, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent, FractionalPercent, Percent};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use prost::{Message, Name};
use serde_json::Value;
use sluice::bootstrap::XdsProtocol;
use sluice::debug::config_dump::{config_dump, AckedType, AckedVersions};
use sluice::xds::resource::{Resource, ResourceType, Snapshot};
use support::static_envoy::StaticEnvoy;

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn duration(millis: i64) -> Option<PbDuration> {
    Some(PbDuration {
        seconds: millis / 1000,
        nanos: i32::try_from(millis % 1000).unwrap_or(0) * 1_000_000,
    })
}

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

/// Filesystem xDS: Envoy reads the `DiscoveryResponse` in `path` (binary, by its `.pb` name).
fn file_source(path: &Path) -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::PathConfigSource(
            PathConfigSource {
                path: path.display().to_string(),
                ..Default::default()
            },
        )),
        ..Default::default()
    })
}

fn exact(text: &str) -> Option<StringMatcher> {
    Some(StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(text.into())),
        ..Default::default()
    })
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn eds_file(cluster: &str) -> String {
    format!("eds-{}.pb", cluster.split('|').nth(1).unwrap_or_default())
}

const ECHO: &str = "outbound|80||echo.shop.svc.cluster.local";
const GRPC: &str = "outbound|9000||grpc.shop.svc.cluster.local";

fn clusters(dir: &Path) -> Vec<Cluster> {
    // Filesystem EDS takes exactly one assignment per file.
    let eds = |name: &str| cluster::EdsClusterConfig {
        eds_config: file_source(&dir.join(eds_file(name))),
        service_name: name.into(),
    };
    let http2 = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions {
                                connection_keepalive: Some(KeepaliveSettings {
                                    interval: duration(30_000),
                                    timeout: duration(5_000),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    vec![
        Cluster {
            name: ECHO.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(eds(ECHO)),
            connect_timeout: duration(1_500),
            common_lb_config: Some(cluster::CommonLbConfig {
                healthy_panic_threshold: Some(Percent { value: 50.0 }),
                ..Default::default()
            }),
            circuit_breakers: Some(CircuitBreakers {
                thresholds: vec![circuit_breakers::Thresholds {
                    max_requests: Some(UInt32Value { value: 4096 }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
        Cluster {
            name: GRPC.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(eds(GRPC)),
            connect_timeout: duration(1_000),
            lb_policy: cluster::LbPolicy::LeastRequest as i32,
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx: Some(UInt32Value { value: 5 }),
                base_ejection_time: duration(30_000),
                ..Default::default()
            }),
            typed_extension_protocol_options: [(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                any(&http2),
            )]
            .into(),
            ..Default::default()
        },
    ]
}

fn load_assignments() -> Vec<ClusterLoadAssignment> {
    let endpoint = |ip: &str, port: u32, weight: Option<u32>| LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: socket(ip, port),
            ..Default::default()
        })),
        load_balancing_weight: weight.map(|value| UInt32Value { value }),
        ..Default::default()
    };
    vec![
        ClusterLoadAssignment {
            cluster_name: ECHO.into(),
            endpoints: vec![LocalityLbEndpoints {
                locality: Some(Locality {
                    region: "eu-west-1".into(),
                    zone: "eu-west-1a".into(),
                    ..Default::default()
                }),
                lb_endpoints: vec![
                    endpoint("127.0.10.1", 8080, None),
                    endpoint("127.0.10.2", 8080, Some(3)),
                ],
                ..Default::default()
            }],
            ..Default::default()
        },
        ClusterLoadAssignment {
            cluster_name: GRPC.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint("127.0.11.1", 9000, None)],
                ..Default::default()
            }],
            ..Default::default()
        },
    ]
}

fn listener(dir: &Path) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "outbound".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: file_source(&dir.join("rds.pb")),
            route_config_name: "outbound".into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        access_log: vec![AccessLog {
            name: "envoy.access_loggers.stdout".into(),
            config_type: Some(access_log::ConfigType::TypedConfig(any(
                &StdoutAccessLog::default(),
            ))),
            ..Default::default()
        }],
        stream_idle_timeout: duration(0),
        ..Default::default()
    };
    Listener {
        name: "outbound".into(),
        // Port 0: Envoy binds any free port, and the dump shows the explicit zero of the oneof.
        address: socket("127.0.0.1", 0),
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

fn route_configuration() -> RouteConfiguration {
    let to_cluster = |name: &str| {
        Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name.into())),
            timeout: duration(250),
            ..Default::default()
        }))
    };
    let prefix = |p: &str| Some(route_match::PathSpecifier::Prefix(p.into()));
    let routes = vec![
        Route {
            name: "shop/echo/rule-0/match-0".into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Path("/exact".into())),
                headers: vec![
                    HeaderMatcher {
                        name: ":method".into(),
                        header_match_specifier: Some(
                            header_matcher::HeaderMatchSpecifier::StringMatch(
                                exact("GET").unwrap_or_default(),
                            ),
                        ),
                        ..Default::default()
                    },
                    HeaderMatcher {
                        name: "x-canary".into(),
                        header_match_specifier: Some(
                            header_matcher::HeaderMatchSpecifier::PresentMatch(true),
                        ),
                        ..Default::default()
                    },
                ],
                query_parameters: vec![QueryParameterMatcher {
                    name: "debug".into(),
                    query_parameter_match_specifier: Some(
                        query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                            exact("1").unwrap_or_default(),
                        ),
                    ),
                }],
                ..Default::default()
            }),
            action: to_cluster(ECHO),
            request_headers_to_add: vec![header("x-route", "exact")],
            request_headers_to_remove: vec!["x-internal".into()],
            response_headers_to_add: vec![header("x-served-by", "sluice")],
            ..Default::default()
        },
        Route {
            name: "shop/echo/rule-1".into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                    regex: "/v[0-9]+/.*".into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                    WeightedCluster {
                        clusters: vec![
                            weighted_cluster::ClusterWeight {
                                name: ECHO.into(),
                                weight: Some(UInt32Value { value: 90 }),
                                ..Default::default()
                            },
                            weighted_cluster::ClusterWeight {
                                name: GRPC.into(),
                                weight: Some(UInt32Value { value: 10 }),
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    },
                )),
                regex_rewrite: Some(RegexMatchAndSubstitute {
                    pattern: Some(RegexMatcher {
                        regex: "^/v[0-9]+/".into(),
                        ..Default::default()
                    }),
                    substitution: "/".into(),
                }),
                host_rewrite_specifier: Some(
                    route_action::HostRewriteSpecifier::HostRewriteLiteral("echo.internal".into()),
                ),
                request_mirror_policies: vec![route_action::RequestMirrorPolicy {
                    cluster: GRPC.into(),
                    runtime_fraction: Some(RuntimeFractionalPercent {
                        default_value: Some(FractionalPercent {
                            numerator: 25,
                            denominator: fractional_percent::DenominatorType::Hundred as i32,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                timeout: duration(0),
                idle_timeout: duration(60_000),
                ..Default::default()
            })),
            ..Default::default()
        },
        Route {
            name: "shop/echo/rule-2".into(),
            r#match: Some(RouteMatch {
                path_specifier: prefix("/old"),
                ..Default::default()
            }),
            action: Some(route::Action::Redirect(RedirectAction {
                host_redirect: "echo.example".into(),
                port_redirect: 8443,
                response_code: redirect_action::RedirectResponseCode::Found as i32,
                scheme_rewrite_specifier: Some(
                    redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true),
                ),
                path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(
                    "/new".into(),
                )),
                ..Default::default()
            })),
            ..Default::default()
        },
        Route {
            name: "shop/echo/rule-3".into(),
            r#match: Some(RouteMatch {
                path_specifier: prefix("/broken"),
                ..Default::default()
            }),
            action: Some(route::Action::DirectResponse(DirectResponseAction {
                status: 500,
                body: Some(DataSource {
                    specifier: Some(
                        envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                            "no backend\n".into(),
                        ),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        },
        Route {
            name: "shop/echo/default".into(),
            r#match: Some(RouteMatch {
                path_specifier: prefix("/"),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(ECHO.into())),
                prefix_rewrite: "/api/".into(),
                ..Default::default()
            })),
            ..Default::default()
        },
    ];
    RouteConfiguration {
        name: "outbound".into(),
        virtual_hosts: vec![VirtualHost {
            name: "echo.shop:80".into(),
            domains: vec![
                "echo".into(),
                "echo:80".into(),
                "echo.shop.svc.cluster.local".into(),
            ],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Writes one filesystem-xDS response.
fn write_response(path: &Path, resource_type: ResourceType, version: &str, resources: Vec<Any>) {
    let response = DiscoveryResponse {
        version_info: version.into(),
        type_url: resource_type.type_url().into(),
        resources,
        ..Default::default()
    };
    std::fs::write(path, response.encode_to_vec()).expect("write discovery response");
}

/// Envoy's dump section of the given `@type`.
fn section<'a>(dump: &'a Value, dump_type: &str) -> &'a Value {
    let type_url = format!("type.googleapis.com/envoy.admin.v3.{dump_type}");
    dump["configs"]
        .as_array()
        .and_then(|configs| configs.iter().find(|c| c["@type"] == type_url.as_str()))
        .unwrap_or_else(|| panic!("no {dump_type} in {dump}"))
}

/// A dynamic-resource list with `last_updated` taken out (it is when each side loaded the
/// resource), sorted by `key` (Envoy lists them in hash-map order).
fn entries(section: &Value, list: &str, key: &[&str], strip: &[&[&str]]) -> Vec<Value> {
    let mut items: Vec<Value> = section[list].as_array().cloned().unwrap_or_default();
    for item in &mut items {
        for path in strip {
            let (last, parents) = path.split_last().expect("non-empty path");
            let mut at = &mut *item;
            for p in parents {
                at = &mut at[*p];
            }
            if let Some(fields) = at.as_object_mut() {
                fields.remove(*last);
            }
        }
    }
    let sort_key = |v: &Value| {
        key.iter()
            .fold(v, |at, k| &at[*k])
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    items.sort_by_key(sort_key);
    items
}

/// The `ClusterLoadAssignment` Envoy prints for one it was sent. Envoy does not keep what it was
/// sent: its admin handler rebuilds the assignment from live host state
/// (`ConfigDumpHandler::dumpEndpointConfigs`), adding the overprovisioning factor, an explicit
/// (possibly empty) locality and locality weight, each host's weight (default 1), its health
/// (HEALTHY without health checks) and an empty health-check config.
fn as_envoy_rebuilds_it(cla: &ClusterLoadAssignment) -> ClusterLoadAssignment {
    let mut rebuilt = cla.clone();
    let policy = rebuilt.policy.get_or_insert_with(Default::default);
    policy
        .overprovisioning_factor
        .get_or_insert(UInt32Value { value: 140 });
    for locality in &mut rebuilt.endpoints {
        locality.locality.get_or_insert_with(Default::default);
        locality
            .load_balancing_weight
            .get_or_insert(UInt32Value { value: 0 });
        for lb_endpoint in &mut locality.lb_endpoints {
            lb_endpoint
                .load_balancing_weight
                .get_or_insert(UInt32Value { value: 1 });
            lb_endpoint.health_status =
                envoy_types::pb::envoy::config::core::v3::HealthStatus::Healthy as i32;
            if let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) =
                &mut lb_endpoint.host_identifier
            {
                endpoint
                    .health_check_config
                    .get_or_insert_with(Default::default);
            }
        }
    }
    rebuilt
}

#[tokio::test]
async fn sluice_prints_resources_as_envoy_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let clusters = clusters(dir);
    let assignments = load_assignments();
    let listener = listener(dir);
    let routes = route_configuration();

    let versions = [
        (ResourceType::Cluster, "cds-1"),
        (ResourceType::Endpoint, "eds-1"),
        (ResourceType::Listener, "lds-1"),
        (ResourceType::Route, "rds-1"),
    ];
    let version = |t: ResourceType| {
        versions
            .iter()
            .find(|(v, _)| *v == t)
            .map_or("", |(_, version)| version)
    };
    let (cds, eds, lds, rds) = (
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    );
    write_response(
        &dir.join("cds.pb"),
        cds,
        version(cds),
        clusters.iter().map(any).collect(),
    );
    for cla in &assignments {
        let file = dir.join(eds_file(&cla.cluster_name));
        write_response(&file, eds, version(eds), vec![any(cla)]);
    }
    write_response(&dir.join("lds.pb"), lds, version(lds), vec![any(&listener)]);
    write_response(&dir.join("rds.pb"), rds, version(rds), vec![any(&routes)]);
    let bootstrap = format!(
        r#"node: {{id: "config-dump-shape", cluster: "test"}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
dynamic_resources:
  cds_config: {{path_config_source: {{path: "{cds}"}}, resource_api_version: V3}}
  lds_config: {{path_config_source: {{path: "{lds}"}}, resource_api_version: V3}}
"#,
        cds = dir.join("cds.pb").display(),
        lds = dir.join("lds.pb").display(),
    );
    let (envoy, admin) = StaticEnvoy::start(dir, &bootstrap);

    // Wait until Envoy has applied every type: listeners and clusters warm on RDS and EDS.
    let url = format!("http://{admin}/config_dump?include_eds");
    let deadline = Instant::now() + Duration::from_secs(20);
    let theirs: Value = loop {
        let dump: Option<Value> = match reqwest::get(&url).await {
            Ok(response) => response.json().await.ok(),
            Err(_) => None,
        };
        let complete = dump.as_ref().is_some_and(|dump| {
            let count = |dump_type: &str, list: &str| {
                section(dump, dump_type)[list]
                    .as_array()
                    .map_or(0, Vec::len)
            };
            let endpoints = section(dump, "EndpointsConfigDump")["dynamic_endpoint_configs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            count("ClustersConfigDump", "dynamic_active_clusters") == 2
                && endpoints.len() == 2
                // A cluster is listed before its first assignment is applied.
                && endpoints.iter().all(|e| e["endpoint_config"].get("endpoints").is_some())
                && section(dump, "ListenersConfigDump")["dynamic_listeners"][0]
                    .get("active_state")
                    .is_some()
                && count("RoutesConfigDump", "dynamic_route_configs") == 1
        });
        if let (true, Some(dump)) = (complete, dump) {
            break dump;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy did not apply every resource within 20s; its log:\n{}",
            envoy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let snapshot_of = |assignments: &[ClusterLoadAssignment]| {
        let mut resources = Vec::new();
        for c in &clusters {
            resources.push((
                ResourceType::Cluster,
                Resource::new(ResourceType::Cluster, c.name.clone(), c),
            ));
        }
        for a in assignments {
            resources.push((
                ResourceType::Endpoint,
                Resource::new(ResourceType::Endpoint, a.cluster_name.clone(), a),
            ));
        }
        resources.push((
            ResourceType::Listener,
            Resource::new(ResourceType::Listener, listener.name.clone(), &listener),
        ));
        resources.push((
            ResourceType::Route,
            Resource::new(ResourceType::Route, routes.name.clone(), &routes),
        ));
        Snapshot::new("0123456789abcdef", resources)
    };
    // Filesystem xDS is state of the world: each resource carries its response's version.
    let acked = AckedVersions {
        protocol: XdsProtocol::Sotw,
        types: versions
            .iter()
            .map(|(t, version)| {
                (
                    *t,
                    AckedType {
                        version_info: version.to_string(),
                        last_updated: Some(SystemTime::now()),
                    },
                )
            })
            .collect(),
    };
    let ours = config_dump(&snapshot_of(&assignments), Some(&acked));

    // Clusters.
    let (envoy_clusters, our_clusters) = (
        section(&theirs, "ClustersConfigDump"),
        section(&ours, "ClustersConfigDump"),
    );
    assert_eq!(our_clusters["version_info"], envoy_clusters["version_info"]);
    let strip: &[&[&str]] = &[&["last_updated"]];
    assert_eq!(
        entries(
            our_clusters,
            "dynamic_active_clusters",
            &["cluster", "name"],
            strip
        ),
        entries(
            envoy_clusters,
            "dynamic_active_clusters",
            &["cluster", "name"],
            strip
        ),
    );

    // Listeners.
    let (envoy_listeners, our_listeners) = (
        section(&theirs, "ListenersConfigDump"),
        section(&ours, "ListenersConfigDump"),
    );
    assert_eq!(
        our_listeners["version_info"],
        envoy_listeners["version_info"]
    );
    let strip: &[&[&str]] = &[&["active_state", "last_updated"]];
    assert_eq!(
        entries(our_listeners, "dynamic_listeners", &["name"], strip),
        entries(envoy_listeners, "dynamic_listeners", &["name"], strip),
    );

    // Routes.
    let strip: &[&[&str]] = &[&["last_updated"]];
    let key = &["route_config", "name"];
    assert_eq!(
        entries(
            section(&ours, "RoutesConfigDump"),
            "dynamic_route_configs",
            key,
            strip
        ),
        entries(
            section(&theirs, "RoutesConfigDump"),
            "dynamic_route_configs",
            key,
            strip
        ),
    );

    // Endpoints: Envoy prints neither version nor time, and rebuilds the assignment.
    let rebuilt: Vec<ClusterLoadAssignment> =
        assignments.iter().map(as_envoy_rebuilds_it).collect();
    let ours_as_envoy = config_dump(&snapshot_of(&rebuilt), Some(&acked));
    let strip: &[&[&str]] = &[&["last_updated"], &["version_info"]];
    let key = &["endpoint_config", "cluster_name"];
    assert_eq!(
        entries(
            section(&ours_as_envoy, "EndpointsConfigDump"),
            "dynamic_endpoint_configs",
            key,
            strip
        ),
        entries(
            section(&theirs, "EndpointsConfigDump"),
            "dynamic_endpoint_configs",
            key,
            strip
        ),
    );

    // Timestamps: both print RFC 3339 in UTC with at most millisecond precision.
    let envoy_time = envoy_clusters["dynamic_active_clusters"][0]["last_updated"]
        .as_str()
        .expect("Envoy prints last_updated");
    let our_time = our_clusters["dynamic_active_clusters"][0]["last_updated"]
        .as_str()
        .expect("Sluice prints last_updated");
    for time in [envoy_time, our_time] {
        assert!(
            time.len() <= "2026-01-01T00:00:00.000Z".len() && time.ends_with('Z'),
            "{time}"
        );
        assert_eq!(&time[10..11], "T", "{time}");
    }
}
