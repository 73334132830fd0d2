//! Compiler tests: revisions built in Rust, compiled, and the produced bytes decoded back into
//! Envoy types to assert on.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, HeaderValueOption};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, HostRewriteSpecifier};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::scoped_route_configuration::key::fragment as scope_fragment;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, ScopedRouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::ConfigSource;
use envoy_types::pb::envoy::extensions::filters::http::lua::v3::Lua;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::scoped_routes::scope_key_builder::fragment_builder::Type as FragmentType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::scoped_routes::ConfigSpecifier as ScopedConfigSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Duration;
use prost::Message;

use super::*;
use crate::manifest::model::*;
use crate::manifest::{Object, ObjectKey, Pos, Severity, Spanned};
use crate::node::default_outbound_listen;
use crate::registry::Workload;

// ---------------------------------------------------------------------------------------------
// Building revisions

fn pos(file: &str, line: usize) -> Pos {
    Pos {
        file: file.into(),
        line,
        column: 1,
    }
}

fn sp<T>(value: T) -> Spanned<T> {
    Spanned::new(value, pos("test.yaml", 1))
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

/// Builds a revision; every object gets its own line in `mesh.yaml`, so origins are checkable.
#[derive(Clone, Default)]
struct Rev {
    revision: Revision,
    line: usize,
}

impl Rev {
    fn next_pos(&mut self) -> Pos {
        self.line += 10;
        pos("mesh.yaml", self.line)
    }

    /// A Service; each port is `(name, port, targetPort, appProtocol)`.
    fn service(
        mut self,
        namespace: &str,
        name: &str,
        selector: &[(&str, &str)],
        ports: &[(&str, u16, Option<u16>, Option<&str>)],
    ) -> Self {
        let pos = self.next_pos();
        let value = Service {
            metadata: meta(namespace, name),
            spec: ServiceSpec {
                selector: selector
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ports: ports
                    .iter()
                    .map(|(port_name, port, target, app)| {
                        sp(ServicePort {
                            name: (!port_name.is_empty()).then(|| port_name.to_string()),
                            port: *port,
                            target_port: target.map(IntOrString::Int),
                            protocol: None,
                            app_protocol: app.map(String::from),
                        })
                    })
                    .collect(),
                ..Default::default()
            },
        };
        let key = ObjectKey::new(namespace, name);
        self.revision
            .services
            .insert(key.clone(), Arc::new(Object { key, pos, value }));
        self
    }

    /// The conformance fixture's three Services in `mesh`.
    fn echo_services(self) -> Self {
        let ports = |h2c: bool| {
            vec![
                ("http", 80, Some(8080), Some("http")),
                ("http-alt", 8080, Some(8080), Some("http")),
                ("https", 443, Some(8443), None),
                ("tcp", 9090, Some(9090), None),
                ("grpc", 7070, Some(7070), h2c.then_some("kubernetes.io/h2c")),
            ]
        };
        self.service("mesh", "echo", &[("app", "echo")], &ports(true))
            .service(
                "mesh",
                "echo-v1",
                &[("app", "echo"), ("version", "v1")],
                &ports(false),
            )
            .service(
                "mesh",
                "echo-v2",
                &[("app", "echo"), ("version", "v2")],
                &ports(false),
            )
    }

    fn http_route(
        mut self,
        namespace: &str,
        name: &str,
        parents: Vec<ParentRef>,
        rules: Vec<HttpRouteRule>,
    ) -> Self {
        let pos = self.next_pos();
        let key = ObjectKey::new(namespace, name);
        self.revision.http_routes.push(Arc::new(Object {
            key,
            pos,
            value: HttpRoute {
                metadata: meta(namespace, name),
                spec: HttpRouteSpec {
                    parent_refs: parents.into_iter().map(sp).collect(),
                    hostnames: vec![],
                    rules: rules.into_iter().map(sp).collect(),
                },
            },
        }));
        self
    }

    fn grpc_route(
        mut self,
        namespace: &str,
        name: &str,
        parents: Vec<ParentRef>,
        rules: Vec<GrpcRouteRule>,
    ) -> Self {
        let pos = self.next_pos();
        let key = ObjectKey::new(namespace, name);
        self.revision.grpc_routes.push(Arc::new(Object {
            key,
            pos,
            value: GrpcRoute {
                metadata: meta(namespace, name),
                spec: GrpcRouteSpec {
                    parent_refs: parents.into_iter().map(sp).collect(),
                    hostnames: vec![],
                    rules: rules.into_iter().map(sp).collect(),
                },
            },
        }));
        self
    }

    /// An EndpointSlice for `service`; each endpoint is `(address, ready, zone)`.
    fn slice(
        mut self,
        namespace: &str,
        name: &str,
        service: &str,
        ports: &[(&str, u16)],
        endpoints: &[(&str, Option<bool>, Option<&str>)],
    ) -> Self {
        let pos = self.next_pos();
        let mut metadata = meta(namespace, name);
        metadata
            .labels
            .insert("kubernetes.io/service-name".into(), service.into());
        let key = ObjectKey::new(namespace, name);
        let value = EndpointSlice {
            metadata,
            address_type: "IPv4".into(),
            endpoints: endpoints
                .iter()
                .map(|(address, ready, zone)| {
                    sp(SliceEndpoint {
                        addresses: vec![address.to_string()],
                        conditions: EndpointConditions {
                            ready: *ready,
                            ..Default::default()
                        },
                        hostname: None,
                        node_name: None,
                        zone: zone.map(String::from),
                        target_ref: None,
                    })
                })
                .collect(),
            ports: ports
                .iter()
                .map(|(port_name, port)| SlicePort {
                    name: (!port_name.is_empty()).then(|| port_name.to_string()),
                    port: *port,
                    protocol: None,
                    app_protocol: None,
                })
                .collect(),
        };
        self.revision
            .endpoint_slices
            .insert(key.clone(), Arc::new(Object { key, pos, value }));
        self
    }

    fn compile(&self) -> Mesh {
        self.compile_with(&Workloads::default())
    }

    fn compile_with(&self, workloads: &Workloads) -> Mesh {
        match compile_checked(&self.revision) {
            Ok(compiled) => compiled.mesh(workloads),
            Err(errors) => panic!("expected the revision to compile, got {errors:#?}"),
        }
    }

    fn errors(&self) -> Vec<Diagnostic> {
        match compile_checked(&self.revision) {
            Ok(_) => panic!("expected the revision to be refused"),
            Err(all) => all
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .collect(),
        }
    }
}

/// [`compile_revision`], checked against compiling the revision as a single part: splitting a
/// revision into parts must never change what it compiles to.
fn compile_checked(revision: &Revision) -> Result<Arc<CompiledRevision>, Vec<Diagnostic>> {
    let by_parts = compile_revision("rev-1", revision);
    let whole = assemble("rev-1", &[Arc::new(compile_part(revision))], None);
    match (&by_parts, &whole) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.clusters, b.clusters, "clusters differ by parts");
            assert_eq!(a.scopes, b.scopes, "scopes differ by parts");
            assert_eq!(a.routes, b.routes, "routes differ by parts");
            assert_eq!(
                a.consumer_routes, b.consumer_routes,
                "consumer routes differ"
            );
            assert_eq!(a.warnings, b.warnings, "warnings differ by parts");
            let workloads = Workloads::default();
            assert_eq!(
                a.endpoints.assignments(&workloads),
                b.endpoints.assignments(&workloads),
                "endpoints differ by parts"
            );
        }
        (a, b) => assert_eq!(
            a.as_ref().err(),
            b.as_ref().err(),
            "findings differ by parts"
        ),
    }
    by_parts
}

fn parent(name: &str, port: Option<u16>) -> ParentRef {
    ParentRef {
        group: Some(String::new()),
        kind: Some("Service".into()),
        namespace: None,
        name: name.into(),
        section_name: None,
        port,
    }
}

fn parent_in(namespace: &str, name: &str, port: Option<u16>) -> ParentRef {
    ParentRef {
        namespace: Some(namespace.into()),
        ..parent(name, port)
    }
}

fn backend(name: &str, port: u16, weight: Option<u32>) -> HttpBackendRef {
    HttpBackendRef {
        group: None,
        kind: None,
        name: name.into(),
        namespace: None,
        port: Some(port),
        weight,
        filters: vec![],
    }
}

fn rule(matches: Vec<HttpRouteMatch>, backends: Vec<HttpBackendRef>) -> HttpRouteRule {
    HttpRouteRule {
        name: None,
        matches: matches.into_iter().map(sp).collect(),
        filters: vec![],
        backend_refs: backends.into_iter().map(sp).collect(),
        timeouts: None,
    }
}

fn with_filters(mut rule: HttpRouteRule, filters: Vec<HttpRouteFilter>) -> HttpRouteRule {
    rule.filters = filters.into_iter().map(sp).collect();
    rule
}

fn path(match_type: PathMatchType, value: &str) -> HttpRouteMatch {
    HttpRouteMatch {
        path: Some(sp(HttpPathMatch {
            match_type: Some(match_type),
            value: Some(value.into()),
        })),
        ..Default::default()
    }
}

fn value_match(match_type: ValueMatchType, name: &str, value: &str) -> Spanned<HeaderMatch> {
    sp(HeaderMatch {
        match_type: Some(match_type),
        name: name.into(),
        value: value.into(),
    })
}

fn header(name: &str, value: &str) -> HttpRouteMatch {
    HttpRouteMatch {
        headers: vec![value_match(ValueMatchType::Exact, name, value)],
        ..Default::default()
    }
}

fn query(name: &str, value: &str) -> HttpRouteMatch {
    HttpRouteMatch {
        query_params: vec![value_match(ValueMatchType::Exact, name, value)],
        ..Default::default()
    }
}

fn filter(filter_type: HttpFilterType) -> HttpRouteFilter {
    HttpRouteFilter {
        filter_type,
        request_header_modifier: None,
        response_header_modifier: None,
        request_redirect: None,
        url_rewrite: None,
        request_mirror: None,
    }
}

fn headers(pairs: &[(&str, &str)]) -> Vec<HttpHeader> {
    pairs
        .iter()
        .map(|(n, v)| HttpHeader {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect()
}

fn request_headers(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HttpRouteFilter {
    HttpRouteFilter {
        request_header_modifier: Some(HeaderModifier {
            set: headers(set),
            add: headers(add),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }),
        ..filter(HttpFilterType::RequestHeaderModifier)
    }
}

fn response_set(name: &str, value: &str) -> HttpRouteFilter {
    HttpRouteFilter {
        response_header_modifier: Some(HeaderModifier {
            set: headers(&[(name, value)]),
            ..Default::default()
        }),
        ..filter(HttpFilterType::ResponseHeaderModifier)
    }
}

fn redirect(r: RequestRedirect) -> HttpRouteFilter {
    HttpRouteFilter {
        request_redirect: Some(r),
        ..filter(HttpFilterType::RequestRedirect)
    }
}

fn url_rewrite(r: UrlRewrite) -> HttpRouteFilter {
    HttpRouteFilter {
        url_rewrite: Some(r),
        ..filter(HttpFilterType::URLRewrite)
    }
}

fn replace_prefix(value: &str) -> PathModifier {
    PathModifier {
        modifier_type: PathModifierType::ReplacePrefixMatch,
        replace_full_path: None,
        replace_prefix_match: Some(value.into()),
    }
}

fn replace_full(value: &str) -> PathModifier {
    PathModifier {
        modifier_type: PathModifierType::ReplaceFullPath,
        replace_full_path: Some(value.into()),
        replace_prefix_match: None,
    }
}

fn grpc_rule(matches: Vec<GrpcRouteMatch>, backends: Vec<HttpBackendRef>) -> GrpcRouteRule {
    GrpcRouteRule {
        name: None,
        matches: matches.into_iter().map(sp).collect(),
        filters: vec![],
        backend_refs: backends.into_iter().map(sp).collect(),
    }
}

fn grpc_method(service: Option<&str>, method: Option<&str>) -> GrpcRouteMatch {
    GrpcRouteMatch {
        method: Some(GrpcMethodMatch {
            match_type: None,
            service: service.map(String::from),
            method: method.map(String::from),
        }),
        headers: vec![],
    }
}

fn workload(
    node: &str,
    namespace: &str,
    labels: &[(&str, &str)],
    address: &str,
    zone: Option<&str>,
) -> Workload {
    let address = address.parse().expect("test address");
    let mut info = crate::node::NodeInfo::new(node);
    info.namespace = namespace.into();
    info.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    info.address = Some(address);
    info.zone = zone.map(String::from);
    Workload {
        node: Arc::new(info),
        address,
    }
}

fn workloads(list: Vec<Workload>) -> Workloads {
    Workloads {
        by_node: list
            .into_iter()
            .map(|w| (w.node.id.clone(), std::sync::Arc::new(w)))
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading snapshots

fn key(namespace: &str) -> ConfigKey {
    ConfigKey {
        namespace: namespace.into(),
        outbound_listen: default_outbound_listen(),
    }
}

fn decode<M: Message + Default>(snapshot: &Snapshot, resource_type: ResourceType, name: &str) -> M {
    let resource = snapshot
        .get(resource_type, name)
        .unwrap_or_else(|| panic!("no {resource_type} resource {name:?}"));
    assert_eq!(resource.body.type_url, resource_type.type_url());
    M::decode(resource.body.value.as_slice()).expect("the resource decodes")
}

/// Every route configuration a sidecar in `namespace` gets, as one: each has exactly one
/// virtual host, named as the configuration (and its scope) is.
fn route_config(mesh: &Mesh, namespace: &str) -> RouteConfiguration {
    let snapshot = mesh.snapshot_for_key(&key(namespace));
    let mut all = RouteConfiguration::default();
    for (name, resource) in snapshot.resources(ResourceType::Route) {
        let config = RouteConfiguration::decode(resource.body.value.as_slice()).expect("decodes");
        assert_eq!(&config.name, name);
        assert_eq!(config.virtual_hosts.len(), 1, "one virtual host in {name}");
        assert_eq!(&config.virtual_hosts[0].name, name);
        assert_eq!(config.request_headers_to_remove, [SCOPE_HEADER]);
        all.virtual_hosts.extend(config.virtual_hosts);
    }
    all
}

fn vhost<'a>(config: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    config
        .virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no virtual host {name:?}"))
}

fn routes_of(mesh: &Mesh, namespace: &str, vhost_name: &str) -> Vec<Route> {
    vhost(&route_config(mesh, namespace), vhost_name)
        .routes
        .clone()
}

fn forward(route: &Route) -> &RouteAction {
    match &route.action {
        Some(Action::Route(action)) => action,
        other => panic!("route {:?} does not forward: {other:?}", route.name),
    }
}

fn cluster_of(route: &Route) -> &str {
    match &forward(route).cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => name,
        other => panic!("route {:?} has no single cluster: {other:?}", route.name),
    }
}

fn weights_of(route: &Route) -> Vec<(String, u32)> {
    match &forward(route).cluster_specifier {
        Some(ClusterSpecifier::WeightedClusters(w)) => w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
            .collect(),
        other => panic!("route {:?} has no weighted clusters: {other:?}", route.name),
    }
}

fn direct_status(route: &Route) -> Option<u32> {
    match &route.action {
        Some(Action::DirectResponse(d)) => Some(d.status),
        _ => None,
    }
}

fn path_of(route: &Route) -> PathSpecifier {
    route
        .r#match
        .as_ref()
        .and_then(|m| m.path_specifier.clone())
        .expect("a path specifier")
}

fn exact_header_value(route: &Route, name: &str) -> Option<String> {
    route
        .r#match
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(s)) => match &s.match_pattern {
                Some(MatchPattern::Exact(v)) => Some(v.clone()),
                _ => None,
            },
            _ => None,
        })
}

fn header_option(o: &HeaderValueOption) -> (String, String, HeaderAppendAction) {
    let h = o.header.as_ref().expect("a header");
    (
        h.key.clone(),
        h.value.clone(),
        HeaderAppendAction::try_from(o.append_action).expect("a known append action"),
    )
}

const ECHO_80: &str = "outbound|80||echo.mesh.svc.cluster.local";
const V1_80: &str = "outbound|80||echo-v1.mesh.svc.cluster.local";
const V1_8080: &str = "outbound|8080||echo-v1.mesh.svc.cluster.local";
const V2_80: &str = "outbound|80||echo-v2.mesh.svc.cluster.local";
const V2_8080: &str = "outbound|8080||echo-v2.mesh.svc.cluster.local";

// ---------------------------------------------------------------------------------------------
// Clusters, listener, virtual hosts

#[test]
fn one_eds_cluster_per_http_port_with_http2_for_grpc_and_h2c() {
    let mesh = Rev::default()
        .echo_services()
        .service(
            "mesh",
            "plain",
            &[],
            &[
                ("", 9000, None, None),
                ("h2", 9001, None, Some("kubernetes.io/h2c")),
            ],
        )
        .compile();
    let snapshot = mesh.snapshot_for_key(&key("mesh"));
    let names: Vec<&str> = snapshot
        .resources(ResourceType::Cluster)
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        ECHO_80,
        "outbound|8080||echo.mesh.svc.cluster.local",
        "outbound|7070||echo.mesh.svc.cluster.local",
        V1_80,
        V1_8080,
        "outbound|7070||echo-v1.mesh.svc.cluster.local",
        V2_80,
        V2_8080,
        "outbound|7070||echo-v2.mesh.svc.cluster.local",
        "outbound|9000||plain.mesh.svc.cluster.local",
        "outbound|9001||plain.mesh.svc.cluster.local",
        PASSTHROUGH_CLUSTER,
    ];
    expected.sort();
    assert_eq!(
        names, expected,
        "https (443) and tcp (9090) ports get no cluster"
    );

    let http2 = |name: &str| -> bool {
        let cluster: Cluster = decode(&snapshot, ResourceType::Cluster, name);
        assert_eq!(
            cluster.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        );
        let eds = cluster
            .eds_cluster_config
            .expect("eds config")
            .eds_config
            .expect("config source");
        assert!(matches!(
            eds.config_source_specifier,
            Some(ConfigSourceSpecifier::Ads(_))
        ));
        assert_eq!(eds.resource_api_version, ApiVersion::V3 as i32);
        assert_eq!(cluster.lb_policy, LbPolicy::RoundRobin as i32);
        assert_eq!(
            cluster.connect_timeout,
            Some(Duration {
                seconds: 1,
                nanos: 0
            })
        );
        match cluster
            .typed_extension_protocol_options
            .get(services::HTTP_PROTOCOL_OPTIONS)
        {
            None => false,
            Some(any) => {
                let options =
                    HttpProtocolOptions::decode(any.value.as_slice()).expect("options decode");
                match options.upstream_protocol_options {
                    Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) => {
                        matches!(
                            explicit.protocol_config,
                            Some(ProtocolConfig::Http2ProtocolOptions(_))
                        )
                    }
                    other => panic!("unexpected protocol options {other:?}"),
                }
            }
        }
    };
    assert!(
        http2("outbound|7070||echo.mesh.svc.cluster.local"),
        "appProtocol kubernetes.io/h2c"
    );
    assert!(
        http2("outbound|7070||echo-v1.mesh.svc.cluster.local"),
        "port named grpc"
    );
    assert!(http2("outbound|9001||plain.mesh.svc.cluster.local"));
    assert!(!http2(ECHO_80));
    assert!(
        !http2("outbound|9000||plain.mesh.svc.cluster.local"),
        "no name, no appProtocol: HTTP/1.1"
    );
}

#[test]
fn the_listener_fetches_routes_over_ads() {
    let mesh = Rev::default().echo_services().compile();
    let listen: SocketAddr = "127.0.0.1:15999".parse().expect("address");
    let snapshot = mesh.snapshot_for_key(&ConfigKey {
        namespace: "mesh".into(),
        outbound_listen: listen,
    });
    let listener: Listener = decode(&snapshot, ResourceType::Listener, LISTENER_NAME);
    assert_eq!(listener.name, "sluice_outbound");
    match listener.address.and_then(|a| a.address) {
        Some(address::Address::SocketAddress(s)) => {
            assert_eq!(s.address, "127.0.0.1");
            assert_eq!(s.port_specifier, Some(PortSpecifier::PortValue(15999)));
        }
        other => panic!("unexpected address {other:?}"),
    }
    let filter = &listener.filter_chains[0].filters[0];
    assert_eq!(filter.name, "envoy.filters.network.http_connection_manager");
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("no typed config");
    };
    let manager = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm decodes");
    assert_eq!(manager.stat_prefix, "outbound");
    assert_eq!(manager.codec_type, CodecType::Auto as i32);
    let ads = |source: Option<ConfigSource>| {
        matches!(
            source.and_then(|s| s.config_source_specifier),
            Some(ConfigSourceSpecifier::Ads(_))
        )
    };
    match manager.route_specifier {
        Some(RouteSpecifier::ScopedRoutes(scoped)) => {
            assert_eq!(scoped.name, SCOPED_ROUTES_NAME);
            assert!(
                ads(scoped.rds_config_source),
                "route configurations over ADS"
            );
            match scoped.config_specifier {
                Some(ScopedConfigSpecifier::ScopedRds(srds)) => {
                    assert!(ads(srds.scoped_rds_config_source), "scopes over ADS");
                }
                other => panic!("expected scoped RDS, got {other:?}"),
            }
            let builder = scoped.scope_key_builder.expect("a scope key builder");
            assert_eq!(builder.fragments.len(), 1);
            let Some(FragmentType::HeaderValueExtractor(extractor)) = &builder.fragments[0].r#type
            else {
                panic!("not a header extractor: {builder:?}");
            };
            assert_eq!(extractor.name, SCOPE_HEADER);
            assert_eq!(
                extractor.element_separator, "",
                "the whole value is the key"
            );
        }
        other => panic!("expected scoped routes, got {other:?}"),
    }
    let filters: Vec<&str> = manager
        .http_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        filters,
        ["envoy.filters.http.lua", "envoy.filters.http.router"],
        "the scope key is written before the router runs"
    );
    let Some(HttpFilterConfigType::TypedConfig(lua)) = &manager.http_filters[0].config_type else {
        panic!("no Lua config");
    };
    let lua = Lua::decode(lua.value.as_slice()).expect("Lua decodes");
    let code = match lua.default_source_code.and_then(|c| c.specifier) {
        Some(DataSourceSpecifier::InlineString(code)) => code,
        other => panic!("no inline Lua: {other:?}"),
    };
    assert!(code.contains(r#"local own_namespace = "mesh""#), "{code}");
    assert!(code.contains(SCOPE_HEADER));

    // The listener depends on the listen address and namespace; scopes and route
    // configurations are shared by every sidecar.
    let other = mesh.snapshot_for_key(&key("mesh"));
    assert_ne!(
        other
            .get(ResourceType::Listener, LISTENER_NAME)
            .map(|r| r.version.clone()),
        snapshot
            .get(ResourceType::Listener, LISTENER_NAME)
            .map(|r| r.version.clone())
    );
    let elsewhere = mesh.snapshot_for_key(&key("elsewhere"));
    for t in [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::ScopedRoute,
        ResourceType::Route,
    ] {
        assert!(
            Arc::ptr_eq(snapshot.shared_resources(t), elsewhere.shared_resources(t)),
            "every sidecar's snapshot shares the {t} map"
        );
    }
}

#[test]
fn the_lua_scope_filter_cannot_be_escaped_by_a_namespace() {
    let code = listener::scope_lua("a\"..os.exit()--\nb");
    assert!(
        code.contains(r#"local own_namespace = "a\034\046\046os\046exit\040\041--\010b""#),
        "{code}"
    );
    assert_eq!(
        code.matches('"').count(),
        listener::scope_lua("x").matches('"').count()
    );
}

#[test]
fn one_scope_per_service_port_keyed_and_named_as_its_route_configuration() {
    let mesh = Rev::default().echo_services().compile();
    let snapshot = mesh.snapshot_for_key(&key("mesh"));
    let scopes = snapshot.resources(ResourceType::ScopedRoute);
    let routes = snapshot.resources(ResourceType::Route);
    assert_eq!(
        scopes.keys().collect::<Vec<_>>(),
        routes.keys().collect::<Vec<_>>(),
        "a route configuration per scope"
    );
    assert!(scopes.contains_key("echo.mesh:80") && scopes.contains_key("echo-v1.mesh:8080"));
    assert!(scopes.contains_key(PASSTHROUGH_SCOPE));
    for (name, resource) in scopes {
        let scope =
            ScopedRouteConfiguration::decode(resource.body.value.as_slice()).expect("decodes");
        assert_eq!(&scope.name, name);
        assert_eq!(&scope.route_configuration_name, name);
        assert!(
            !scope.on_demand,
            "every scope's routes are fetched up front"
        );
        let fragments = scope.key.expect("a key").fragments;
        assert_eq!(fragments.len(), 1);
        assert_eq!(
            fragments[0].r#type,
            Some(scope_fragment::Type::StringKey(name.clone()))
        );
    }
    assert_eq!(scopes["echo.mesh:80"].origins, ["mesh.yaml:10"]);
}

#[test]
fn each_route_configuration_has_one_catch_all_virtual_host() {
    let mesh = Rev::default().echo_services().compile();
    let own = route_config(&mesh, "mesh");
    let elsewhere = route_config(&mesh, "elsewhere");
    assert_eq!(
        own, elsewhere,
        "the scope, not the domain, picks the Service port"
    );
    for vhost in &own.virtual_hosts {
        assert_eq!(vhost.domains, ["*"], "{}", vhost.name);
    }
}

#[test]
fn requests_addressed_to_an_ip_and_port_pass_through_unrouted() {
    let mesh = Rev::default().echo_services().compile();
    let snapshot = mesh.snapshot_for_key(&key("mesh"));
    let config = route_config(&mesh, "mesh");
    let last = vhost(&config, PASSTHROUGH_SCOPE);
    assert_eq!(last.domains, ["*"]);
    assert_eq!(last.routes.len(), 1);
    let route = &last.routes[0];
    assert_eq!(cluster_of(route), PASSTHROUGH_CLUSTER);
    assert_eq!(forward(route).timeout, Some(Duration::default()));
    let matcher = route
        .r#match
        .as_ref()
        .and_then(|m| m.headers.first())
        .expect("an :authority matcher");
    assert_eq!(matcher.name, ":authority");
    let Some(HeaderMatchSpecifier::StringMatch(string)) = &matcher.header_match_specifier else {
        panic!("not a string match: {matcher:?}");
    };
    let Some(MatchPattern::SafeRegex(pattern)) = &string.match_pattern else {
        panic!("not a regex: {string:?}");
    };
    // Envoy's safe_regex matches the whole value.
    for (authority, passes) in [
        ("10.0.3.17:8080", true),
        ("127.1.2.3:80", true),
        ("[fd00::17]:7070", true),
        ("[::1]:80", true),
        ("10.0.3.17", false),
        ("echo:8080", false),
        ("echo", false),
        ("example.org:443", false),
        ("10.0.3.17:8080.evil", false),
    ] {
        assert_eq!(
            simple_full_match(&pattern.regex, authority),
            passes,
            "{authority}"
        );
    }

    let cluster: Cluster = decode(&snapshot, ResourceType::Cluster, PASSTHROUGH_CLUSTER);
    assert_eq!(
        cluster.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32
        ))
    );
    assert_eq!(cluster.lb_policy, LbPolicy::ClusterProvided as i32);
    let Some(LbConfig::OriginalDstLbConfig(original)) = &cluster.lb_config else {
        panic!("no original_dst_lb_config: {cluster:?}");
    };
    assert!(original.use_http_header);
    assert_eq!(original.http_header_name, ":authority");
    let options = cluster
        .typed_extension_protocol_options
        .get(services::HTTP_PROTOCOL_OPTIONS)
        .expect("upstream HTTP options");
    let options = HttpProtocolOptions::decode(options.value.as_slice()).expect("decodes");
    let Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(downstream)) =
        options.upstream_protocol_options
    else {
        panic!("the upstream does not follow the downstream protocol: {options:?}");
    };
    assert!(downstream.http_protocol_options.is_some());
    assert!(
        downstream.http2_protocol_options.is_some(),
        "h2c (gRPC) passes through as HTTP/2"
    );
    assert!(
        snapshot
            .get(ResourceType::Endpoint, PASSTHROUGH_CLUSTER)
            .is_none(),
        "the passthrough cluster has no endpoints to discover"
    );
}

/// Whether `text` matches the whole of `pattern`, for the small patterns of these tests:
/// literal characters, classes `[...]`, groups `(?:...)` with `|`, and `{m,n}` / `{n}`
/// repetitions. A backtracking matcher, so the test does not depend on a regex engine crate.
fn simple_full_match(pattern: &str, text: &str) -> bool {
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("valid pattern");
    matches_hir(&hir, text.as_bytes())
        .into_iter()
        .any(|rest| rest.is_empty())
}

/// Every remainder of `text` after `hir` matched a prefix of it.
fn matches_hir<'t>(hir: &regex_syntax::hir::Hir, text: &'t [u8]) -> Vec<&'t [u8]> {
    use regex_syntax::hir::{Class, HirKind};
    match hir.kind() {
        HirKind::Empty => vec![text],
        HirKind::Literal(literal) => {
            if text.starts_with(&literal.0) {
                vec![&text[literal.0.len()..]]
            } else {
                Vec::new()
            }
        }
        HirKind::Class(class) => {
            let Some((&first, rest)) = text.split_first() else {
                return Vec::new();
            };
            let hit = match class {
                Class::Unicode(c) => c
                    .ranges()
                    .iter()
                    .any(|r| r.start() <= char::from(first) && char::from(first) <= r.end()),
                Class::Bytes(c) => c
                    .ranges()
                    .iter()
                    .any(|r| r.start() <= first && first <= r.end()),
            };
            if hit {
                vec![rest]
            } else {
                Vec::new()
            }
        }
        HirKind::Capture(capture) => matches_hir(&capture.sub, text),
        HirKind::Concat(parts) => {
            let mut states = vec![text];
            for part in parts {
                states = states
                    .into_iter()
                    .flat_map(|state| matches_hir(part, state))
                    .collect();
            }
            states
        }
        HirKind::Alternation(choices) => choices
            .iter()
            .flat_map(|choice| matches_hir(choice, text))
            .collect(),
        HirKind::Repetition(repetition) => {
            let max = repetition.max.unwrap_or(u32::MAX);
            let mut out = Vec::new();
            let mut states = vec![text];
            for count in 0..=max {
                if count >= repetition.min {
                    out.extend(states.iter().copied());
                }
                if count == max || states.is_empty() {
                    break;
                }
                states = states
                    .into_iter()
                    .flat_map(|state| matches_hir(&repetition.sub, state))
                    .collect();
            }
            out
        }
        HirKind::Look(_) => vec![text],
    }
}

#[test]
fn without_routes_a_service_port_goes_to_its_own_cluster() {
    let mesh = Rev::default().echo_services().compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:80");
    assert_eq!(routes.len(), 1);
    assert_eq!(path_of(&routes[0]), PathSpecifier::Prefix("/".into()));
    assert_eq!(cluster_of(&routes[0]), ECHO_80);
    assert_eq!(
        forward(&routes[0]).timeout,
        None,
        "HTTP/1.1 keeps Envoy's default timeout"
    );

    let grpc = routes_of(&mesh, "mesh", "echo.mesh:7070");
    assert_eq!(
        cluster_of(&grpc[0]),
        "outbound|7070||echo.mesh.svc.cluster.local"
    );
    assert_eq!(
        forward(&grpc[0]).timeout,
        Some(Duration::default()),
        "gRPC streams are not cut"
    );
}

#[test]
fn a_namespace_without_objects_still_reaches_every_service() {
    let mesh = Rev::default()
        .echo_services()
        .service("shop", "cart", &[], &[("http", 80, None, None)])
        .compile();
    let snapshot = mesh.snapshot_for_key(&key("empty"));
    // Ten Service ports, and the passthrough cluster and virtual host.
    assert_eq!(snapshot.resources(ResourceType::Cluster).len(), 11);
    assert_eq!(snapshot.resources(ResourceType::Endpoint).len(), 10);
    let config = route_config(&mesh, "empty");
    assert_eq!(config.virtual_hosts.len(), 11);
    assert_eq!(snapshot.resources(ResourceType::ScopedRoute).len(), 11);
    assert_eq!(
        cluster_of(&vhost(&config, "cart.shop:80").routes[0]),
        "outbound|80||cart.shop.svc.cluster.local"
    );
    assert_eq!(snapshot.revision, "rev-1");
    assert_eq!(mesh.revision(), "rev-1");
}

#[test]
fn snapshots_are_cached_per_configuration_key() {
    let mesh = Rev::default().echo_services().compile();
    let mut node = NodeInfo::new("a");
    node.namespace = "mesh".into();
    let first = mesh.snapshot_for(&node);
    let mut other_node = NodeInfo::new("b");
    other_node.namespace = "mesh".into();
    assert!(Arc::ptr_eq(&first, &mesh.snapshot_for(&other_node)));
    assert!(Arc::ptr_eq(&first, &mesh.snapshot_for_key(&key("mesh"))));
    assert!(!Arc::ptr_eq(&first, &mesh.snapshot_for_key(&key("other"))));
}

// ---------------------------------------------------------------------------------------------
// Matches and precedence

#[test]
fn path_matches_compile_to_envoy_path_specifiers() {
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "paths",
            vec![parent("echo", Some(80))],
            vec![
                rule(
                    vec![path(PathMatchType::Exact, "/exact")],
                    vec![backend("echo-v1", 80, None)],
                ),
                rule(
                    vec![path(PathMatchType::PathPrefix, "/prefix")],
                    vec![backend("echo-v1", 80, None)],
                ),
                rule(
                    vec![path(PathMatchType::PathPrefix, "/slash/")],
                    vec![backend("echo-v1", 80, None)],
                ),
                rule(
                    vec![path(PathMatchType::PathPrefix, "/")],
                    vec![backend("echo-v1", 80, None)],
                ),
                rule(
                    vec![path(PathMatchType::RegularExpression, "/re/[0-9]+")],
                    vec![backend("echo-v1", 80, None)],
                ),
            ],
        )
        .compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:80");
    let paths: Vec<PathSpecifier> = routes.iter().map(path_of).collect();
    let PathSpecifier::SafeRegex(re) = &paths[1] else {
        panic!("expected a regex second, got {paths:?}");
    };
    assert_eq!(re.regex, "/re/[0-9]+");
    assert_eq!(
        [&paths[0], &paths[2], &paths[3], &paths[4]],
        [
            &PathSpecifier::Path("/exact".into()),
            &PathSpecifier::PathSeparatedPrefix("/prefix".into()),
            &PathSpecifier::PathSeparatedPrefix("/slash".into()),
            &PathSpecifier::Prefix("/".into()),
        ],
        "exact, regex, then prefixes by length; a trailing slash is dropped"
    );
    assert_eq!(routes[0].name, "mesh/paths/rule-0");
}

#[test]
fn header_query_and_method_matches() {
    let m = HttpRouteMatch {
        path: None,
        headers: vec![
            value_match(ValueMatchType::Exact, "Version", "one"),
            value_match(ValueMatchType::RegularExpression, "x-id", "[a-f]+"),
        ],
        query_params: vec![value_match(ValueMatchType::Exact, "animal", "whale")],
        method: Some(HttpMethod::Post),
    };
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "m",
            vec![parent("echo", Some(80))],
            vec![rule(vec![m], vec![backend("echo-v1", 80, None)])],
        )
        .compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:80");
    let route_match = routes[0].r#match.as_ref().expect("a match");
    assert_eq!(
        route_match.path_specifier,
        Some(PathSpecifier::Prefix("/".into()))
    );
    assert_eq!(
        exact_header_value(&routes[0], "version").as_deref(),
        Some("one"),
        "names are lowercased"
    );
    assert_eq!(
        exact_header_value(&routes[0], ":method").as_deref(),
        Some("POST")
    );
    let regex_header = route_match
        .headers
        .iter()
        .find(|h| h.name == "x-id")
        .expect("x-id matcher");
    match &regex_header.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(s)) => match &s.match_pattern {
            Some(MatchPattern::SafeRegex(re)) => assert_eq!(re.regex, "[a-f]+"),
            other => panic!("expected a regex, got {other:?}"),
        },
        other => panic!("unexpected header matcher {other:?}"),
    }
    assert_eq!(route_match.query_parameters.len(), 1);
    assert_eq!(route_match.query_parameters[0].name, "animal");
    match &route_match.query_parameters[0].query_parameter_match_specifier {
        Some(QueryParameterMatchSpecifier::StringMatch(s)) => {
            assert_eq!(s.match_pattern, Some(MatchPattern::Exact("whale".into())))
        }
        other => panic!("unexpected query matcher {other:?}"),
    }
}

/// The conformance test MeshHTTPRouteMatching: two rules, each with two ORed matches.
#[test]
fn precedence_orders_longer_prefixes_then_more_headers_first() {
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "matching",
            vec![parent("echo", Some(80))],
            vec![
                rule(
                    vec![
                        path(PathMatchType::PathPrefix, "/"),
                        header("version", "one"),
                    ],
                    vec![backend("echo-v1", 8080, None)],
                ),
                rule(
                    vec![
                        path(PathMatchType::PathPrefix, "/v2"),
                        header("version", "two"),
                    ],
                    vec![backend("echo-v2", 8080, None)],
                ),
            ],
        )
        .compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:80");
    let summary: Vec<(&str, &str)> = routes
        .iter()
        .map(|r| (r.name.as_str(), cluster_of(r)))
        .collect();
    assert_eq!(
        summary,
        [
            // Prefix /v2 has the most characters.
            ("mesh/matching/rule-1/match-0", V2_8080),
            // Prefix / with one header each: tied, so the first rule first.
            ("mesh/matching/rule-0/match-1", V1_8080),
            ("mesh/matching/rule-1/match-1", V2_8080),
            // Prefix / alone.
            ("mesh/matching/rule-0/match-0", V1_8080),
        ]
    );
}

/// The conformance test MeshHTTPRouteQueryParamMatching: query matches rank after paths and
/// headers.
#[test]
fn query_params_rank_after_path_length_and_headers() {
    let whale_and_header = HttpRouteMatch {
        headers: vec![value_match(ValueMatchType::Exact, "version", "one")],
        ..query("animal", "whale")
    };
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "q",
            vec![parent("echo", Some(80))],
            vec![
                rule(
                    vec![query("animal", "whale")],
                    vec![backend("echo-v1", 8080, None)],
                ),
                rule(vec![whale_and_header], vec![backend("echo-v2", 8080, None)]),
                rule(
                    vec![path(PathMatchType::PathPrefix, "/path5")],
                    vec![backend("echo-v1", 8080, None)],
                ),
            ],
        )
        .compile();
    let names: Vec<String> = routes_of(&mesh, "mesh", "echo.mesh:80")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["mesh/q/rule-2", "mesh/q/rule-1", "mesh/q/rule-0"]);
}

#[test]
fn ties_across_routes_go_to_the_first_route_in_revision_order() {
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "older",
            vec![parent("echo", Some(80))],
            vec![rule(vec![], vec![backend("echo-v1", 80, None)])],
        )
        .http_route(
            "mesh",
            "newer",
            vec![parent("echo", None)],
            vec![rule(vec![], vec![backend("echo-v2", 80, None)])],
        )
        .compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:80");
    assert_eq!(
        routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["mesh/older/rule-0", "mesh/newer/rule-0"]
    );
    // Port 8080 only has the newer route.
    let routes = routes_of(&mesh, "mesh", "echo.mesh:8080");
    assert_eq!(
        routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["mesh/newer/rule-0"]
    );
}

// ---------------------------------------------------------------------------------------------
// Backends and weights

#[test]
fn weights_split_traffic_and_zero_weights_are_left_out() {
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "split",
            vec![parent("echo", Some(80))],
            vec![
                rule(
                    vec![path(PathMatchType::Exact, "/ninety")],
                    vec![
                        backend("echo-v1", 80, Some(90)),
                        backend("echo-v2", 80, Some(10)),
                    ],
                ),
                rule(
                    vec![path(PathMatchType::Exact, "/one")],
                    vec![
                        backend("echo-v1", 80, None),
                        backend("does-not-exist", 80, Some(0)),
                    ],
                ),
                rule(
                    vec![path(PathMatchType::Exact, "/zero")],
                    vec![
                        backend("echo-v1", 80, Some(0)),
                        backend("echo-v2", 80, Some(0)),
                    ],
                ),
                rule(vec![path(PathMatchType::Exact, "/none")], vec![]),
                rule(
                    vec![path(PathMatchType::Exact, "/three")],
                    vec![
                        backend("echo-v1", 80, Some(70)),
                        backend("echo-v2", 80, Some(30)),
                        backend("echo-v3", 80, Some(0)),
                    ],
                ),
            ],
        )
        .compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:80");
    let by_path = |p: &str| -> Route {
        routes
            .iter()
            .find(|r| path_of(r) == PathSpecifier::Path(p.into()))
            .cloned()
            .unwrap_or_else(|| panic!("no route for {p}"))
    };
    assert_eq!(
        weights_of(&by_path("/ninety")),
        [(V1_80.to_string(), 90), (V2_80.to_string(), 10)]
    );
    assert_eq!(
        cluster_of(&by_path("/one")),
        V1_80,
        "a single backend is a plain cluster"
    );
    assert_eq!(
        direct_status(&by_path("/zero")),
        Some(500),
        "all weights zero answer 500"
    );
    assert_eq!(
        direct_status(&by_path("/none")),
        Some(500),
        "no backendRefs answer 500"
    );
    assert_eq!(
        weights_of(&by_path("/three")),
        [(V1_80.to_string(), 70), (V2_80.to_string(), 30)]
    );
}

#[test]
fn backend_refs_pick_the_cluster_of_the_service_port_and_default_to_the_route_namespace() {
    let mesh = Rev::default()
        .echo_services()
        .service("other", "echo-v1", &[], &[("http", 80, None, None)])
        .http_route(
            "other",
            "consumer",
            vec![parent_in("mesh", "echo", Some(80))],
            vec![rule(
                vec![],
                vec![
                    backend("echo-v1", 80, Some(1)),
                    HttpBackendRef {
                        namespace: Some("mesh".into()),
                        ..backend("echo-v1", 8080, Some(1))
                    },
                ],
            )],
        )
        .compile();
    let routes = routes_of(&mesh, "other", "echo.mesh:80");
    assert_eq!(
        weights_of(&routes[0]),
        [
            (
                "outbound|80||echo-v1.other.svc.cluster.local".to_string(),
                1
            ),
            (V1_8080.to_string(), 1)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Producer and consumer routes, parentRef ports

#[test]
fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "producer",
            vec![parent("echo-v1", None)],
            vec![with_filters(
                rule(vec![], vec![backend("echo-v1", 80, None)]),
                vec![response_set("x-by", "producer")],
            )],
        )
        .http_route(
            "consumer",
            "consumer",
            vec![parent_in("mesh", "echo-v1", Some(80))],
            vec![with_filters(
                rule(
                    vec![],
                    vec![HttpBackendRef {
                        namespace: Some("mesh".into()),
                        ..backend("echo-v1", 80, None)
                    }],
                ),
                vec![response_set("X-Header-Set", "set")],
            )],
        )
        .compile();

    let set_by = |ns: &str, vhost_name: &str| -> Option<String> {
        let routes = routes_of(&mesh, ns, vhost_name);
        routes[0]
            .response_headers_to_add
            .first()
            .map(|o| header_option(o).1)
    };
    // Clients in the consumer namespace get the consumer route...
    assert_eq!(
        set_by("consumer", "echo-v1.mesh:80").as_deref(),
        Some("set")
    );
    // ...and, on the port the consumer route does not cover, not the producer route either.
    assert_eq!(set_by("consumer", "echo-v1.mesh:8080"), None);
    assert_eq!(
        routes_of(&mesh, "consumer", "echo-v1.mesh:8080")[0].name,
        "default"
    );
    // Everyone else gets the producer route, on every port.
    assert_eq!(
        set_by("mesh", "echo-v1.mesh:80").as_deref(),
        Some("producer")
    );
    assert_eq!(
        set_by("mesh", "echo-v1.mesh:8080").as_deref(),
        Some("producer")
    );
    assert_eq!(
        set_by("third", "echo-v1.mesh:80").as_deref(),
        Some("producer")
    );

    let snapshot = mesh.snapshot_for_key(&key("consumer"));
    let origins = |name: &str| {
        snapshot
            .get(ResourceType::Route, name)
            .expect("route config")
            .origins
            .clone()
    };
    assert_eq!(
        origins("echo-v1.mesh:80"),
        ["mesh.yaml:20", "mesh.yaml:50"],
        "the Service and only the consumer route contribute (5th object)"
    );
    assert_eq!(origins("echo-v1.mesh:8080"), ["mesh.yaml:20"]);
    // Only the route configurations of the Service the consumer route attaches to differ.
    let producer_view = mesh.snapshot_for_key(&key("third"));
    let differ: Vec<&String> = snapshot
        .resources(ResourceType::Route)
        .iter()
        .filter(|(name, r)| {
            producer_view.resources(ResourceType::Route)[*name].version != r.version
        })
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        differ,
        ["echo-v1.mesh:7070", "echo-v1.mesh:80", "echo-v1.mesh:8080"],
        "every port of echo-v1"
    );
}

/// The conformance test MeshPorts.
#[test]
fn a_parent_ref_with_a_port_covers_only_that_port() {
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "mesh-split-v1",
            vec![parent("echo-v1", Some(80))],
            vec![with_filters(
                rule(vec![], vec![backend("echo-v1", 80, None)]),
                vec![response_set("X-Header-Set", "v1")],
            )],
        )
        .http_route(
            "mesh",
            "mesh-split-v2",
            vec![parent("echo-v2", None)],
            vec![with_filters(
                rule(vec![], vec![backend("echo-v2", 80, None)]),
                vec![response_set("X-Header-Set", "v2")],
            )],
        )
        .compile();
    let first = |vhost_name: &str| routes_of(&mesh, "mesh", vhost_name).remove(0);
    assert_eq!(first("echo-v1.mesh:80").name, "mesh/mesh-split-v1/rule-0");
    assert_eq!(first("echo-v1.mesh:8080").name, "default");
    assert_eq!(cluster_of(&first("echo-v1.mesh:8080")), V1_8080);
    for port in [80, 8080, 7070] {
        let route = first(&format!("echo-v2.mesh:{port}"));
        assert_eq!(route.name, "mesh/mesh-split-v2/rule-0", "port {port}");
        assert_eq!(cluster_of(&route), V2_80);
        assert_eq!(
            header_option(&route.response_headers_to_add[0]),
            (
                "x-header-set".into(),
                "v2".into(),
                HeaderAppendAction::OverwriteIfExistsOrAdd
            )
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Filters and timeouts

#[test]
fn header_modifiers_on_rules_and_on_backends() {
    let modifier = request_headers(
        &[("X-Header-Set", "set-overwrites-values")],
        &[
            ("X-Header-Add", "add-appends-values"),
            ("X-Percent", "100%"),
        ],
        &["X-Header-Remove"],
    );
    let mut on_backend = backend("echo-v1", 8080, None);
    on_backend.filters = vec![sp(modifier.clone())];
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "headers",
            vec![parent("echo", Some(80))],
            vec![
                with_filters(
                    rule(
                        vec![path(PathMatchType::PathPrefix, "/rule")],
                        vec![backend("echo-v1", 8080, None)],
                    ),
                    vec![modifier],
                ),
                rule(
                    vec![path(PathMatchType::PathPrefix, "/backend")],
                    vec![on_backend],
                ),
            ],
        )
        .compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:80");
    let expected = vec![
        (
            "x-header-set".to_string(),
            "set-overwrites-values".to_string(),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ),
        (
            "x-header-add".to_string(),
            "add-appends-values".to_string(),
            HeaderAppendAction::AppendIfExistsOrAdd,
        ),
        (
            "x-percent".to_string(),
            "100%%".to_string(),
            HeaderAppendAction::AppendIfExistsOrAdd,
        ),
    ];

    let rule_level = routes
        .iter()
        .find(|r| r.name == "mesh/headers/rule-0")
        .expect("rule route");
    assert_eq!(
        rule_level
            .request_headers_to_add
            .iter()
            .map(header_option)
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(rule_level.request_headers_to_remove, ["x-header-remove"]);
    assert_eq!(cluster_of(rule_level), V1_8080);

    let backend_level = routes
        .iter()
        .find(|r| r.name == "mesh/headers/rule-1")
        .expect("backend route");
    assert!(backend_level.request_headers_to_add.is_empty());
    let Some(ClusterSpecifier::WeightedClusters(weighted)) =
        &forward(backend_level).cluster_specifier
    else {
        panic!("backend filters need a weighted cluster entry");
    };
    assert_eq!(weighted.clusters.len(), 1);
    assert_eq!(weighted.clusters[0].name, V1_8080);
    assert_eq!(
        weighted.clusters[0]
            .request_headers_to_add
            .iter()
            .map(header_option)
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        weighted.clusters[0].request_headers_to_remove,
        ["x-header-remove"]
    );
}

#[test]
fn redirects_compile_with_their_status_codes() {
    let redirect_rule = |prefix: &str, r: RequestRedirect| {
        with_filters(
            rule(vec![path(PathMatchType::PathPrefix, prefix)], vec![]),
            vec![redirect(r)],
        )
    };
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "redirects",
            vec![parent("echo", Some(80))],
            vec![
                redirect_rule(
                    "/hostname-redirect",
                    RequestRedirect {
                        hostname: Some("example.org".into()),
                        ..Default::default()
                    },
                ),
                redirect_rule(
                    "/status-301",
                    RequestRedirect {
                        status_code: Some(301),
                        ..Default::default()
                    },
                ),
                redirect_rule(
                    "/status-303",
                    RequestRedirect {
                        status_code: Some(303),
                        ..Default::default()
                    },
                ),
                redirect_rule(
                    "/status-307",
                    RequestRedirect {
                        status_code: Some(307),
                        ..Default::default()
                    },
                ),
                redirect_rule(
                    "/status-308",
                    RequestRedirect {
                        status_code: Some(308),
                        ..Default::default()
                    },
                ),
                redirect_rule(
                    "/scheme-port",
                    RequestRedirect {
                        scheme: Some("https".into()),
                        port: Some(8443),
                        ..Default::default()
                    },
                ),
                redirect_rule(
                    "/original-prefix",
                    RequestRedirect {
                        path: Some(replace_prefix("/replacement-prefix")),
                        ..Default::default()
                    },
                ),
                redirect_rule(
                    "/full",
                    RequestRedirect {
                        path: Some(replace_full("/full-path-replacement")),
                        ..Default::default()
                    },
                ),
            ],
        )
        .compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:80");
    let redirect_for = |prefix: &str| {
        let route = routes
            .iter()
            .find(|r| path_of(r) == PathSpecifier::PathSeparatedPrefix(prefix.into()))
            .unwrap_or_else(|| panic!("no route for {prefix}"));
        match &route.action {
            Some(Action::Redirect(r)) => r.clone(),
            other => panic!("expected a redirect for {prefix}, got {other:?}"),
        }
    };
    let host = redirect_for("/hostname-redirect");
    assert_eq!(host.host_redirect, "example.org");
    assert_eq!(
        host.response_code,
        RedirectResponseCode::Found as i32,
        "302 by default"
    );
    for (prefix, code) in [
        ("/status-301", RedirectResponseCode::MovedPermanently),
        ("/status-303", RedirectResponseCode::SeeOther),
        ("/status-307", RedirectResponseCode::TemporaryRedirect),
        ("/status-308", RedirectResponseCode::PermanentRedirect),
    ] {
        assert_eq!(redirect_for(prefix).response_code, code as i32, "{prefix}");
    }
    let scheme = redirect_for("/scheme-port");
    assert_eq!(
        scheme.scheme_rewrite_specifier,
        Some(SchemeRewriteSpecifier::SchemeRedirect("https".into()))
    );
    assert_eq!(scheme.port_redirect, 8443);
    assert_eq!(
        redirect_for("/original-prefix").path_rewrite_specifier,
        Some(PathRewriteSpecifier::PrefixRewrite(
            "/replacement-prefix".into()
        ))
    );
    assert_eq!(
        redirect_for("/full").path_rewrite_specifier,
        Some(PathRewriteSpecifier::PathRedirect(
            "/full-path-replacement".into()
        ))
    );
}

#[test]
fn url_rewrites_follow_gateway_prefix_semantics() {
    let rewrite_rule = |prefix: &str, r: UrlRewrite| {
        with_filters(
            rule(
                vec![path(PathMatchType::PathPrefix, prefix)],
                vec![backend("echo-v1", 80, None)],
            ),
            vec![url_rewrite(r)],
        )
    };
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "rewrites",
            vec![parent("echo", Some(80))],
            vec![
                rewrite_rule(
                    "/prefix/one",
                    UrlRewrite {
                        path: Some(replace_prefix("/one")),
                        hostname: None,
                    },
                ),
                rewrite_rule(
                    "/strip-prefix",
                    UrlRewrite {
                        path: Some(replace_prefix("/")),
                        hostname: None,
                    },
                ),
                rewrite_rule(
                    "/full/one",
                    UrlRewrite {
                        path: Some(replace_full("/one")),
                        hostname: Some("elsewhere.example".into()),
                    },
                ),
                rewrite_rule(
                    "/",
                    UrlRewrite {
                        path: Some(replace_prefix("/root/")),
                        hostname: None,
                    },
                ),
            ],
        )
        .compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:80");
    let action_for = |spec: PathSpecifier| -> RouteAction {
        forward(routes.iter().find(|r| path_of(r) == spec).expect("route")).clone()
    };
    assert_eq!(
        action_for(PathSpecifier::PathSeparatedPrefix("/prefix/one".into())).prefix_rewrite,
        "/one"
    );

    let strip = action_for(PathSpecifier::PathSeparatedPrefix("/strip-prefix".into()));
    assert_eq!(strip.prefix_rewrite, "");
    let regex = strip
        .regex_rewrite
        .expect("a regex rewrite avoids a double slash");
    assert_eq!(regex.pattern.expect("pattern").regex, "^/strip-prefix/*");
    assert_eq!(regex.substitution, "/");

    let full = action_for(PathSpecifier::PathSeparatedPrefix("/full/one".into()));
    let regex = full.regex_rewrite.expect("full path rewrite");
    assert_eq!(regex.pattern.expect("pattern").regex, "^/.*$");
    assert_eq!(regex.substitution, "/one");
    assert_eq!(
        full.host_rewrite_specifier,
        Some(HostRewriteSpecifier::HostRewriteLiteral(
            "elsewhere.example".into()
        ))
    );

    assert_eq!(
        action_for(PathSpecifier::Prefix("/".into())).prefix_rewrite,
        "/root/"
    );
}

#[test]
fn request_mirrors_and_timeouts() {
    let mirror = HttpRouteFilter {
        request_mirror: Some(RequestMirror {
            backend_ref: BackendObjectRef {
                group: None,
                kind: None,
                name: "echo-v2".into(),
                namespace: None,
                port: Some(8080),
            },
            percent: Some(25),
            fraction: None,
        }),
        ..filter(HttpFilterType::RequestMirror)
    };
    let mut timed = with_filters(
        rule(vec![], vec![backend("echo-v1", 80, None)]),
        vec![mirror],
    );
    timed.timeouts = Some(sp(HttpRouteTimeouts {
        request: Some("10s".into()),
        backend_request: Some("2500ms".into()),
    }));
    let mut disabled = rule(
        vec![path(PathMatchType::PathPrefix, "/stream")],
        vec![backend("echo-v1", 80, None)],
    );
    disabled.timeouts = Some(sp(HttpRouteTimeouts {
        request: Some("0s".into()),
        backend_request: None,
    }));
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "mirror",
            vec![parent("echo", Some(80))],
            vec![timed, disabled],
        )
        .compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:80");
    let stream = forward(&routes[0]);
    assert_eq!(
        stream.timeout,
        Some(Duration {
            seconds: 0,
            nanos: 0
        }),
        "0s disables the timeout"
    );
    let mirrored = forward(&routes[1]);
    assert_eq!(
        mirrored.timeout,
        Some(Duration {
            seconds: 2,
            nanos: 500_000_000
        })
    );
    assert_eq!(mirrored.request_mirror_policies.len(), 1);
    let policy = &mirrored.request_mirror_policies[0];
    assert_eq!(policy.cluster, V2_8080);
    let fraction = policy
        .runtime_fraction
        .as_ref()
        .and_then(|f| f.default_value)
        .expect("fraction");
    assert_eq!(
        (fraction.numerator, fraction.denominator),
        (25, DenominatorType::Hundred as i32)
    );
}

// ---------------------------------------------------------------------------------------------
// GRPCRoute

#[test]
fn grpc_routes_match_services_and_methods_and_split_by_weight() {
    let mut with_header = grpc_method(Some("proto.EchoTestService"), Some("Echo"));
    with_header.headers = vec![value_match(ValueMatchType::Exact, "x-test-case", "set")];
    let mut modified = grpc_rule(vec![with_header], vec![backend("echo-v1", 7070, None)]);
    modified.filters = vec![sp(request_headers(
        &[("x-header-set", "set-overwrites-values")],
        &[],
        &[],
    ))];
    let mesh = Rev::default()
        .echo_services()
        .grpc_route(
            "mesh",
            "grpc",
            vec![parent("echo", Some(7070))],
            vec![
                grpc_rule(
                    vec![],
                    vec![
                        backend("echo-v1", 7070, Some(70)),
                        backend("echo-v2", 7070, Some(30)),
                        backend("echo-v3", 7070, Some(0)),
                    ],
                ),
                grpc_rule(
                    vec![grpc_method(Some("pkg.Svc"), None)],
                    vec![backend("echo-v2", 7070, None)],
                ),
                grpc_rule(
                    vec![grpc_method(None, Some("Ping"))],
                    vec![backend("echo-v2", 7070, None)],
                ),
                modified,
            ],
        )
        .compile();
    let routes = routes_of(&mesh, "mesh", "echo.mesh:7070");
    let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    // Most service characters first, then method characters, then headers; match-all last.
    assert_eq!(
        names,
        [
            "mesh/grpc/rule-3",
            "mesh/grpc/rule-1",
            "mesh/grpc/rule-2",
            "mesh/grpc/rule-0"
        ]
    );
    assert_eq!(
        path_of(&routes[0]),
        PathSpecifier::Path("/proto.EchoTestService/Echo".into())
    );
    assert_eq!(
        exact_header_value(&routes[0], "x-test-case").as_deref(),
        Some("set")
    );
    assert_eq!(
        header_option(&routes[0].request_headers_to_add[0]),
        (
            "x-header-set".into(),
            "set-overwrites-values".into(),
            HeaderAppendAction::OverwriteIfExistsOrAdd
        )
    );
    assert_eq!(
        path_of(&routes[1]),
        PathSpecifier::Prefix("/pkg.Svc/".into())
    );
    match path_of(&routes[2]) {
        PathSpecifier::SafeRegex(re) => assert_eq!(re.regex, "/[^/]+/Ping"),
        other => panic!("expected a regex, got {other:?}"),
    }
    assert_eq!(
        weights_of(&routes[3]),
        [
            (
                "outbound|7070||echo-v1.mesh.svc.cluster.local".to_string(),
                70
            ),
            (
                "outbound|7070||echo-v2.mesh.svc.cluster.local".to_string(),
                30
            )
        ]
    );
    assert_eq!(forward(&routes[3]).timeout, Some(Duration::default()));
}

#[test]
fn a_grpc_route_wins_over_an_http_route_on_the_same_port() {
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "web",
            vec![parent("echo", None)],
            vec![rule(vec![], vec![backend("echo-v1", 80, None)])],
        )
        .grpc_route(
            "mesh",
            "rpc",
            vec![parent("echo", Some(7070))],
            vec![grpc_rule(vec![], vec![backend("echo-v2", 7070, None)])],
        )
        .compile();
    assert_eq!(
        routes_of(&mesh, "mesh", "echo.mesh:7070")[0].name,
        "mesh/rpc/rule-0"
    );
    assert_eq!(
        routes_of(&mesh, "mesh", "echo.mesh:80")[0].name,
        "mesh/web/rule-0"
    );
    assert_eq!(mesh.warnings().len(), 1, "{:?}", mesh.warnings());
    assert!(mesh.warnings()[0].message.contains("GEP-1426"));
}

// ---------------------------------------------------------------------------------------------
// Endpoints

fn endpoints_of(mesh: &Mesh, cluster: &str) -> Vec<(Option<String>, Vec<SocketAddr>)> {
    let assignment: ClusterLoadAssignment = decode(
        &mesh.snapshot_for_key(&key("mesh")),
        ResourceType::Endpoint,
        cluster,
    );
    assert_eq!(assignment.cluster_name, cluster);
    assignment
        .endpoints
        .iter()
        .map(|locality| {
            let zone = locality.locality.as_ref().map(|l| l.zone.clone());
            let addresses = locality
                .lb_endpoints
                .iter()
                .map(|e| match &e.host_identifier {
                    Some(HostIdentifier::Endpoint(endpoint)) => {
                        match endpoint.address.as_ref().and_then(|a| a.address.as_ref()) {
                            Some(address::Address::SocketAddress(s)) => {
                                let ip: IpAddr = s.address.parse().expect("an IP");
                                let Some(PortSpecifier::PortValue(port)) = s.port_specifier else {
                                    panic!("no port");
                                };
                                SocketAddr::new(ip, u16::try_from(port).expect("a port"))
                            }
                            other => panic!("unexpected address {other:?}"),
                        }
                    }
                    other => panic!("unexpected endpoint {other:?}"),
                })
                .collect();
            (zone, addresses)
        })
        .collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

#[test]
fn workloads_are_endpoints_of_the_services_selecting_them() {
    let mesh = Rev::default().echo_services().compile_with(&workloads(vec![
        workload(
            "v1-a",
            "mesh",
            &[("app", "echo"), ("version", "v1")],
            "127.0.10.1",
            Some("zone-b"),
        ),
        workload(
            "v1-b",
            "mesh",
            &[("app", "echo"), ("version", "v1"), ("extra", "x")],
            "127.0.10.2",
            None,
        ),
        workload(
            "v2",
            "mesh",
            &[("app", "echo"), ("version", "v2")],
            "127.0.10.3",
            Some("zone-a"),
        ),
        workload(
            "consumer",
            "consumer",
            &[("app", "echo"), ("version", "v1")],
            "127.0.10.4",
            None,
        ),
    ]));
    assert_eq!(
        endpoints_of(&mesh, V1_80),
        [
            (None, vec![addr("127.0.10.2:8080")]),
            (Some("zone-b".into()), vec![addr("127.0.10.1:8080")]),
        ],
        "targetPort 8080; the workload in another namespace is not an endpoint"
    );
    assert_eq!(
        endpoints_of(&mesh, V2_8080),
        [(Some("zone-a".into()), vec![addr("127.0.10.3:8080")])]
    );
    assert_eq!(
        endpoints_of(&mesh, ECHO_80),
        [
            (None, vec![addr("127.0.10.2:8080")]),
            (Some("zone-a".into()), vec![addr("127.0.10.3:8080")]),
            (Some("zone-b".into()), vec![addr("127.0.10.1:8080")]),
        ]
    );
}

#[test]
fn a_sidecar_change_recomputes_endpoints_only_and_is_a_no_op_when_none_moved() {
    let compiled =
        compile_revision("rev-1", &Rev::default().echo_services().revision).expect("compiles");
    let before = compiled.mesh(&Workloads::default());
    let stranger = workload("client", "mesh", &[("app", "client")], "127.0.10.9", None);
    let with_stranger = compiled.mesh(&workloads(vec![stranger.clone()]));
    assert!(
        with_stranger.serves_the_same_as(&before),
        "a sidecar no Service selects changes nothing"
    );
    let v1 = workload(
        "v1",
        "mesh",
        &[("app", "echo"), ("version", "v1")],
        "127.0.10.1",
        None,
    );
    let with_v1 = compiled.mesh(&workloads(vec![stranger, v1]));
    assert!(!with_v1.serves_the_same_as(&before));
    assert_eq!(
        endpoints_of(&with_v1, V1_80),
        [(None, vec![addr("127.0.10.1:8080")])]
    );
    let snapshot = with_v1.snapshot_for_key(&key("mesh"));
    let old = before.snapshot_for_key(&key("mesh"));
    for t in [
        ResourceType::Cluster,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        assert_eq!(snapshot.type_version(t), old.type_version(t), "{t} moved");
    }
    assert_ne!(
        snapshot.type_version(ResourceType::Endpoint),
        old.type_version(ResourceType::Endpoint)
    );
    let recompiled = compile_revision("rev-1", &Rev::default().echo_services().revision)
        .expect("compiles")
        .mesh(&Workloads::default());
    assert!(
        !recompiled.serves_the_same_as(&before),
        "another compile of the revision is published (its revision id may differ)"
    );
}

#[test]
fn endpoint_slices_give_ready_addresses_at_the_matching_port() {
    let mesh = Rev::default()
        .service(
            "mesh",
            "vm",
            &[],
            &[("http", 80, Some(8080), None), ("grpc", 7070, None, None)],
        )
        .service(
            "mesh",
            "empty",
            &[("app", "none")],
            &[("http", 80, None, None)],
        )
        .slice(
            "mesh",
            "vm-1",
            "vm",
            &[("http", 18080), ("grpc", 17070)],
            &[
                ("10.0.0.2", None, Some("onprem")),
                ("10.0.0.1", Some(true), Some("onprem")),
                ("10.0.0.3", Some(false), None),
            ],
        )
        .compile();
    assert_eq!(
        endpoints_of(&mesh, "outbound|80||vm.mesh.svc.cluster.local"),
        [(
            Some("onprem".into()),
            vec![addr("10.0.0.1:18080"), addr("10.0.0.2:18080")]
        )],
        "not-ready endpoints are left out; the slice port named like the Service port is used"
    );
    assert_eq!(
        endpoints_of(&mesh, "outbound|7070||vm.mesh.svc.cluster.local")[0].1,
        [addr("10.0.0.1:17070"), addr("10.0.0.2:17070")]
    );
    assert!(
        endpoints_of(&mesh, "outbound|80||empty.mesh.svc.cluster.local").is_empty(),
        "an empty assignment is valid"
    );
}

// ---------------------------------------------------------------------------------------------
// Origins, versions, determinism

#[test]
fn resources_carry_their_origins() {
    let mesh = Rev::default()
        .echo_services() // lines 10, 20, 30
        .slice(
            "mesh",
            "extra",
            "echo",
            &[("http", 8080)],
            &[("10.1.0.1", None, None)],
        ) // line 40
        .http_route(
            "mesh",
            "r",
            vec![parent("echo", Some(80))],
            vec![rule(vec![], vec![backend("echo-v1", 80, None)])],
        ) // 50
        .compile();
    let snapshot = mesh.snapshot_for_key(&key("mesh"));
    let origins =
        |t: ResourceType, name: &str| snapshot.get(t, name).expect("resource").origins.clone();
    assert_eq!(origins(ResourceType::Cluster, ECHO_80), ["mesh.yaml:10"]);
    assert_eq!(origins(ResourceType::Cluster, V1_80), ["mesh.yaml:20"]);
    assert_eq!(
        origins(ResourceType::Endpoint, ECHO_80),
        ["mesh.yaml:10", "mesh.yaml:40"]
    );
    assert_eq!(
        origins(ResourceType::Route, "echo.mesh:80"),
        ["mesh.yaml:10", "mesh.yaml:50"]
    );
    assert_eq!(
        origins(ResourceType::Route, "echo.mesh:8080"),
        ["mesh.yaml:10"]
    );
}

fn versions(snapshot: &Snapshot) -> BTreeMap<(ResourceType, String), String> {
    ResourceType::ALL
        .iter()
        .flat_map(|t| {
            snapshot
                .resources(*t)
                .iter()
                .map(move |(name, r)| ((*t, name.clone()), r.version.clone()))
        })
        .collect()
}

fn weighted_revision(v1_weight: u32) -> Rev {
    Rev::default().echo_services().http_route(
        "mesh",
        "weights",
        vec![parent("echo", Some(80))],
        vec![rule(
            vec![],
            vec![
                backend("echo-v1", 80, Some(v1_weight)),
                backend("echo-v2", 80, Some(10)),
            ],
        )],
    )
}

#[test]
fn equal_input_gives_equal_versions() {
    let w = workloads(vec![
        workload(
            "b",
            "mesh",
            &[("app", "echo"), ("version", "v2")],
            "127.0.0.3",
            None,
        ),
        workload(
            "a",
            "mesh",
            &[("app", "echo"), ("version", "v1")],
            "127.0.0.2",
            Some("z"),
        ),
    ]);
    let first = weighted_revision(90)
        .compile_with(&w)
        .snapshot_for_key(&key("mesh"));
    let second = weighted_revision(90)
        .compile_with(&w)
        .snapshot_for_key(&key("mesh"));
    assert_eq!(versions(&first), versions(&second));
    for t in ResourceType::ALL {
        assert_eq!(first.type_version(t), second.type_version(t));
    }
}

#[test]
fn changing_one_weight_changes_only_the_route_configuration() {
    let before = weighted_revision(90)
        .compile()
        .snapshot_for_key(&key("mesh"));
    let after = weighted_revision(80)
        .compile()
        .snapshot_for_key(&key("mesh"));
    let (before, after) = (versions(&before), versions(&after));
    let changed: Vec<&(ResourceType, String)> = before
        .keys()
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert_eq!(
        changed,
        [&(ResourceType::Route, "echo.mesh:80".to_string())],
        "one route configuration, the weighted port's"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors

fn messages(errors: &[Diagnostic]) -> Vec<String> {
    errors.iter().map(|d| d.message.clone()).collect()
}

fn assert_error_mentions(rev: Rev, needles: &[&str]) {
    let errors = rev.errors();
    let all = messages(&errors).join("\n");
    for needle in needles {
        assert!(
            all.contains(needle),
            "expected an error mentioning {needle:?}, got:\n{all}"
        );
    }
}

#[test]
fn a_backend_with_weight_that_names_no_service_is_an_error_with_its_position() {
    let mut rev = Rev::default().echo_services().http_route(
        "mesh",
        "broken",
        vec![parent("echo", Some(80))],
        vec![rule(vec![], vec![backend("echo-v3", 80, Some(5))])],
    );
    Arc::make_mut(&mut rev.revision.http_routes[0])
        .value
        .spec
        .rules[0]
        .value
        .backend_refs[0]
        .pos = pos("routes/broken.yaml", 12);
    let errors = rev.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].pos, pos("routes/broken.yaml", 12));
    assert_eq!(
        errors[0].message,
        "HTTPRoute mesh/broken: spec.rules[0].backendRefs[0]: \"echo-v3\" does not name a Service in namespace \"mesh\""
    );
}

#[test]
fn unsupported_or_invalid_fields_are_errors_naming_the_field() {
    // A redirect is not a GRPCRoute filter.
    let mut grpc = grpc_rule(vec![], vec![backend("echo", 7070, None)]);
    grpc.filters = vec![sp(redirect(RequestRedirect::default()))];
    assert_error_mentions(
        Rev::default().echo_services().grpc_route(
            "mesh",
            "g",
            vec![parent("echo", Some(7070))],
            vec![grpc],
        ),
        &["spec.rules[0].filters[0].type: filter RequestRedirect is not supported in a GRPCRoute"],
    );

    // gRPC to an HTTP/1.1 port.
    assert_error_mentions(
        Rev::default().echo_services().grpc_route(
            "mesh",
            "g",
            vec![parent("echo", Some(7070))],
            vec![grpc_rule(vec![], vec![backend("echo", 80, None)])],
        ),
        &["backendRefs[0]: port 80 of Service mesh/echo speaks HTTP/1.1"],
    );

    // ReplacePrefixMatch needs a prefix match.
    assert_error_mentions(
        Rev::default().echo_services().http_route(
            "mesh",
            "r",
            vec![parent("echo", Some(80))],
            vec![with_filters(
                rule(
                    vec![path(PathMatchType::Exact, "/x")],
                    vec![backend("echo", 80, None)],
                ),
                vec![url_rewrite(UrlRewrite {
                    hostname: None,
                    path: Some(replace_prefix("/y")),
                })],
            )],
        ),
        &["spec.rules[0].matches[0].path: ReplacePrefixMatch needs a PathPrefix match"],
    );

    // A bad regex, a missing parent port, a non-HTTP parent port, hostnames, a bad timeout.
    let mut rev = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "regex",
            vec![parent("echo", Some(80))],
            vec![rule(
                vec![path(PathMatchType::RegularExpression, "/(unclosed")],
                vec![backend("echo", 80, None)],
            )],
        )
        .http_route(
            "mesh",
            "port",
            vec![parent("echo", Some(81)), parent("echo", Some(9090))],
            vec![rule(vec![], vec![])],
        )
        .http_route(
            "mesh",
            "hosts",
            vec![parent("echo", None)],
            vec![rule(vec![], vec![])],
        );
    Arc::make_mut(&mut rev.revision.http_routes[2])
        .value
        .spec
        .hostnames = vec!["echo.example".into()];
    Arc::make_mut(&mut rev.revision.http_routes[2])
        .value
        .spec
        .rules[0]
        .value
        .timeouts = Some(sp(HttpRouteTimeouts {
        request: Some("soon".into()),
        backend_request: None,
    }));
    assert_error_mentions(
        rev,
        &[
            "HTTPRoute mesh/regex: spec.rules[0].matches[0].path.value: \"/(unclosed\" is not a valid RE2 regular expression",
            "spec.parentRefs[0].port: Service mesh/echo has no port 81",
            "spec.parentRefs[1].port: port 9090 of Service mesh/echo is not an HTTP or gRPC port",
            "spec.hostnames: not supported on a route attached to a Service",
            "spec.rules[0].timeouts.request: \"soon\" is not a Gateway API duration",
        ],
    );

    // A filter whose payload does not match its type; a Host header modification.
    let mut mismatched = filter(HttpFilterType::RequestHeaderModifier);
    mismatched.response_header_modifier = Some(HeaderModifier::default());
    assert_error_mentions(
        Rev::default().echo_services().http_route(
            "mesh",
            "f",
            vec![parent("echo", Some(80))],
            vec![with_filters(
                rule(vec![], vec![backend("echo", 80, None)]),
                vec![mismatched, request_headers(&[("Host", "x")], &[], &[])],
            )],
        ),
        &[
            "filters[0].responseHeaderModifier: set on a filter of type RequestHeaderModifier",
            "filters[1].requestHeaderModifier.set[0]: the Host header cannot be modified",
        ],
    );
}

#[test]
fn a_parent_ref_without_the_core_group_is_an_error_and_gateway_parents_are_warnings() {
    let mut no_group = parent("echo", Some(80));
    no_group.group = None;
    assert_error_mentions(
        Rev::default().echo_services().http_route(
            "mesh",
            "r",
            vec![no_group],
            vec![rule(vec![], vec![])],
        ),
        &["spec.parentRefs[0].group: a Service parent needs group \"\""],
    );

    let gateway = ParentRef {
        group: None,
        kind: None,
        namespace: None,
        name: "ingress".into(),
        section_name: None,
        port: None,
    };
    let mesh = Rev::default()
        .echo_services()
        .http_route(
            "mesh",
            "north-south",
            vec![gateway],
            vec![rule(vec![], vec![backend("echo", 80, None)])],
        )
        .compile();
    assert_eq!(mesh.warnings().len(), 1);
    assert!(
        mesh.warnings()[0].message.contains("is not a Service"),
        "{:?}",
        mesh.warnings()
    );
    assert_eq!(routes_of(&mesh, "mesh", "echo.mesh:80")[0].name, "default");
}

#[test]
fn invalid_endpoint_slices_and_service_names_are_errors() {
    let mut rev = Rev::default()
        .service("mesh", "Bad_Name", &[], &[("http", 80, None, None)])
        .service("mesh", "vm", &[], &[("http", 80, None, None)])
        .slice(
            "mesh",
            "vm-1",
            "vm",
            &[("http", 80)],
            &[("not-an-ip", None, None)],
        );
    rev.revision.endpoint_slices.values_mut().for_each(|s| {
        Arc::make_mut(s).value.endpoints.push(sp(SliceEndpoint {
            addresses: vec!["::1".into()],
            conditions: EndpointConditions::default(),
            hostname: None,
            node_name: None,
            zone: None,
            target_ref: None,
        }))
    });
    assert_error_mentions(
        rev,
        &[
            "Service mesh/Bad_Name: name \"Bad_Name\" is not a DNS label",
            "endpoints[0].addresses[0]: \"not-an-ip\" is not an IP address",
            "endpoints[1].addresses[0]: \"::1\" is not an IPv4 address",
        ],
    );
}

#[test]
fn the_consistency_check_refuses_a_route_to_a_missing_cluster() {
    let rev = Rev::default().echo_services();
    let mesh = rev.compile();
    let compiled = mesh.compiled();
    let mut findings = findings::Findings::default();
    let services = ServiceIndex::build(&rev.revision, &mut findings);
    let vhosts = listener::vhost_sources(&services);
    let clean_tables = routes::compile_routes(&rev.revision, &services, &mut findings);
    assert!(findings.errors.is_empty());
    let mut tables = clean_tables.clone();
    let mut broken = routes_of(&mesh, "mesh", "echo.mesh:80").remove(0);
    broken.action = Some(Action::Route(RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(
            "outbound|80||gone.mesh.svc.cluster.local".into(),
        )),
        ..Default::default()
    }));
    tables
        .producer
        .entry(ObjectKey::new("mesh", "echo"))
        .or_default()
        .insert(
            80,
            routes::PortRoutes {
                routes: vec![broken],
                origins: vec!["mesh.yaml:99".into()],
            },
        );
    let clusters: Vec<_> = compiled.clusters.resources().values().cloned().collect();
    let mut findings = findings::Findings::default();
    check_consistency(
        &clusters,
        &compiled.endpoints,
        &vhosts,
        &tables,
        &mut findings,
    );
    assert_eq!(findings.errors.len(), 1, "{:?}", findings.errors);
    assert!(findings.errors[0]
        .message
        .contains("\"outbound|80||gone.mesh.svc.cluster.local\", which does not exist"));

    let mut findings = findings::Findings::default();
    check_consistency(
        &clusters,
        &compiled.endpoints.without(ECHO_80),
        &vhosts,
        &clean_tables,
        &mut findings,
    );
    assert_eq!(findings.errors.len(), 1, "{:?}", findings.errors);
    assert!(findings.errors[0]
        .message
        .contains("has no ClusterLoadAssignment"));
}

#[test]
fn prefix_replacements_avoid_double_and_missing_slashes() {
    use filters::{replace_prefix as replace, PrefixReplacement};
    assert_eq!(
        replace("/foo", "/xyz"),
        PrefixReplacement::Prefix("/xyz".into())
    );
    assert_eq!(
        replace("/foo", "/xyz/"),
        PrefixReplacement::Prefix("/xyz".into())
    );
    assert_eq!(
        replace("/", "/xyz"),
        PrefixReplacement::Prefix("/xyz/".into())
    );
    assert_eq!(replace("/", "/"), PrefixReplacement::Prefix("/".into()));
    assert_eq!(replace("/", ""), PrefixReplacement::Prefix("/".into()));
    for empty in ["", "/"] {
        let PrefixReplacement::Regex(r) = replace("/a.b", empty) else {
            panic!("expected a regex for {empty:?}");
        };
        assert_eq!(r.pattern.map(|p| p.regex).as_deref(), Some("^/a\\.b/*"));
        assert_eq!(r.substitution, "/");
    }
}

#[test]
fn every_fixture_compiles_the_same_by_parts_as_whole() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut folders = vec![
        root.join("examples/mesh"),
        root.join("tests/fixtures/manifests/valid"),
    ];
    let conformance = root.join("tests/fixtures/conformance");
    let tests = std::fs::read_dir(conformance.join("tests")).expect("conformance tests");
    let (mut compiled, mut split) = (0, 0);
    for test in tests {
        let test = test.expect("conformance test").path();
        let folder = std::env::temp_dir().join(format!(
            "sluice-parts-{}-{}",
            std::process::id(),
            test.file_stem().and_then(|s| s.to_str()).unwrap_or("test")
        ));
        std::fs::create_dir_all(&folder).expect("temp folder");
        std::fs::copy(conformance.join("base.yaml"), folder.join("base.yaml")).expect("base");
        std::fs::copy(&test, folder.join("test.yaml")).expect("test");
        folders.push(folder);
    }
    for folder in &folders {
        let revision = crate::manifest::load_dir(folder, &Default::default())
            .unwrap_or_else(|errors| panic!("{} does not load: {errors:?}", folder.display()));
        split += usize::from(revision.parts().len() > 1);
        compile_checked(&revision).expect("compiles");
        compiled += 1;
        if folder.starts_with(std::env::temp_dir()) {
            let _ = std::fs::remove_dir_all(folder);
        }
    }
    assert!(compiled >= 10, "only {compiled} fixtures");
    assert!(
        split * 2 >= compiled,
        "{split} of {compiled} split into parts"
    );
}

#[test]
fn a_cached_compile_recompiles_only_the_changed_part_and_equals_a_fresh_one() {
    let base = Rev::default()
        .echo_services()
        .service(
            "other",
            "api",
            &[("app", "api")],
            &[("http", 80, None, None)],
        )
        .http_route(
            "other",
            "api",
            vec![parent("api", Some(80))],
            vec![rule(vec![], vec![backend("api", 80, None)])],
        );
    let mut cache = CompileCache::default();
    let first = compile_revision_cached("rev-1", &base.revision, &mut cache).expect("compiles");
    let parts = base.revision.parts().len();
    assert!(parts >= 2, "{parts} parts");
    assert_eq!(cache.parts_compiled(), parts);

    // Same objects: nothing is compiled again, and every resource is the same allocation.
    let again = compile_revision_cached("rev-2", &base.revision, &mut cache).expect("compiles");
    assert_eq!(cache.parts_compiled(), parts);
    for (name, resource) in again.routes.resources() {
        assert!(
            Arc::ptr_eq(resource, &first.routes.resources()[name]),
            "{name}"
        );
    }

    // One route changed: only its part is compiled, and the result is a fresh compile's.
    let mut changed = base.clone();
    let route = Arc::make_mut(&mut changed.revision.http_routes[0]);
    route.value.spec.rules[0].value.backend_refs[0].value.weight = Some(0);
    let cached = compile_revision_cached("rev-3", &changed.revision, &mut cache).expect("compiles");
    assert_eq!(cache.parts_compiled(), parts + 1);
    let fresh = compile_revision("rev-3", &changed.revision).expect("compiles");
    assert_eq!(cached.routes, fresh.routes);
    assert_eq!(cached.clusters, fresh.clusters);
    assert_ne!(cached.routes, first.routes);
    // Types the change did not touch keep the first revision's maps, shared.
    assert!(std::ptr::eq(
        cached.clusters.resources(),
        first.clusters.resources()
    ));
    assert!(std::ptr::eq(
        cached.scopes.resources(),
        first.scopes.resources()
    ));
    assert!(!std::ptr::eq(
        cached.routes.resources(),
        first.routes.resources()
    ));

    // A part whose result was dropped (not in the latest revision) is compiled again.
    compile_revision_cached("rev-4", &base.revision, &mut cache).expect("compiles");
    assert_eq!(cache.parts_compiled(), parts + 2);

    // Endpoints: with the same workload set, the next mesh reuses those of unchanged parts.
    let workloads = Arc::new(Workloads::default());
    let before = first.mesh_after(&workloads, None);
    let after = cached.mesh_after(&workloads, Some(&before));
    let fresh = fresh.mesh(&workloads);
    assert_eq!(after.endpoints, fresh.endpoints);
    // Per port plan, the changed part's endpoints are built again, the others reused...
    let api = "outbound|80||api.other.svc.cluster.local";
    let built_before: HashMap<&str, &Arc<Resource>> = (before.by_plan.values())
        .map(|r| (r.name.as_str(), r))
        .collect();
    for resource in after.by_plan.values() {
        let reused = Arc::ptr_eq(resource, built_before[resource.name.as_str()]);
        assert_eq!(reused, resource.name != api, "{}", resource.name);
    }
    // ...and as a weight change leaves every endpoint set equal, the mesh keeps the map.
    assert!(std::ptr::eq(
        after.endpoints.resources(),
        before.endpoints.resources()
    ));
    // Another set of the same workloads (none changed): everything is reused.
    let other = Arc::new(Workloads::default());
    let again = cached.mesh_after(&other, Some(&after));
    assert!(std::ptr::eq(
        again.endpoints.resources(),
        after.endpoints.resources()
    ));
}

#[test]
fn a_sidecar_coming_changing_or_going_rebuilds_only_the_endpoints_selecting_it() {
    let compiled =
        compile_revision("rev-1", &Rev::default().echo_services().revision).expect("compiles");
    let echo = |node: &str, namespace: &str, version: &str, address: &str| {
        let labels = [("app", "echo"), ("version", version)];
        Arc::new(workload(node, namespace, &labels, address, None))
    };
    let v1 = echo("v1", "mesh", "v1", "127.0.10.1");
    let v2 = echo("v2", "mesh", "v2", "127.0.10.2");
    let moved_v1 = echo("v1", "mesh", "v1", "127.0.10.3");
    // In another namespace, with the labels of v2: selected by nothing.
    let elsewhere = echo("far", "other", "v2", "127.0.10.8");
    let stranger = Arc::new(workload(
        "client",
        "mesh",
        &[("app", "client")],
        "127.0.10.9",
        None,
    ));
    // Each step: (workloads, the Services whose ports' endpoints must be built again).
    let (echo, echo_v1, echo_v2) = ("echo", "echo-v1", "echo-v2");
    let steps: Vec<(Vec<Arc<Workload>>, Vec<&str>)> = vec![
        (vec![stranger.clone()], vec![]),
        (vec![stranger.clone(), elsewhere.clone()], vec![]),
        (
            vec![stranger.clone(), elsewhere, v2.clone()],
            vec![echo, echo_v2],
        ),
        (vec![stranger.clone(), v2.clone()], vec![]),
        (
            vec![stranger.clone(), v2.clone(), v1.clone()],
            vec![echo, echo_v1],
        ),
        (
            vec![stranger.clone(), v2.clone(), moved_v1],
            vec![echo, echo_v1],
        ),
        (vec![v2], vec![echo, echo_v1]),
        (vec![], vec![echo, echo_v2]),
    ];
    let first = Arc::new(Workloads::default());
    let mut previous = compiled.mesh_after(&first, None);
    for (i, (list, rebuilt)) in steps.into_iter().enumerate() {
        // The registry shares the workload of a node that did not change between sets.
        let set = Arc::new(Workloads {
            by_node: list.into_iter().map(|w| (w.node.id.clone(), w)).collect(),
        });
        let next = compiled.mesh_after(&set, Some(&previous));
        assert_eq!(
            next.endpoints,
            compiled.mesh(&set).endpoints,
            "step {i}: as a fresh build"
        );
        let before: HashMap<&str, &Arc<Resource>> = (previous.by_plan.values())
            .map(|r| (r.name.as_str(), r))
            .collect();
        for resource in next.by_plan.values() {
            let reused = Arc::ptr_eq(resource, before[resource.name.as_str()]);
            let name = resource.name.as_str();
            let selecting = rebuilt
                .iter()
                .any(|service| name.contains(&format!("||{service}.mesh.")));
            assert_eq!(reused, !selecting, "step {i}: {name}");
        }
        assert_eq!(
            std::ptr::eq(next.endpoints.resources(), previous.endpoints.resources()),
            rebuilt.is_empty(),
            "step {i}: the map is kept exactly when nothing was rebuilt"
        );
        previous = next;
    }
}
