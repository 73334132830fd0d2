//! GAMMA routes (HTTPRoute and GRPCRoute attached to Services) compiled into per-Service-port
//! route tables, ordered by Gateway API precedence.
//!
//! A route in its parent Service's namespace is a producer route: it applies to every client.
//! A route in another namespace is a consumer route: it applies only to clients in its own
//! namespace, and for them it replaces every producer route of that Service (on all its ports).
//! A parentRef without a port attaches the route to every HTTP/gRPC port of the Service.
//!
//! A Service port with routes answers only what its rules match (Envoy's 404 otherwise), as
//! Gateway API requires; one without routes sends everything to its own cluster.
//! When an HTTPRoute and a GRPCRoute attach to the same Service port for the same clients, the
//! GRPCRoute wins and the HTTPRoute is reported as not used there (GEP-1426).
//! Across routes of one kind, ties of specificity go to the older route, then to the one first
//! by `namespace/name` (the order of the revision's lists), then to the first rule, then to the
//! first match.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, MaxStreamDuration,
};
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, WeightedCluster,
};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};

use super::filters::{
    compile_backends, compile_filters, Backend, Filters, HeaderOps, RouteCtx, Scope,
};
use super::findings::Findings;
use super::matches::{
    compile_grpc_match, compile_http_match, match_everything, CompiledMatch, Specificity,
};
use super::origin;
use super::services::ServiceIndex;
use super::timeouts::route_timeout;
use crate::manifest::model::{GrpcRouteRule, HttpRouteRule, ParentRef};
use crate::manifest::{ObjectKey, Pos, Revision, Spanned};

/// The ordered routes of one Service port for one set of clients.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PortRoutes {
    pub routes: Vec<Route>,
    /// `file:line` of every route object that contributed.
    pub origins: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct RouteTables {
    /// Producer routes: Service, then port.
    pub producer: BTreeMap<ObjectKey, BTreeMap<u16, PortRoutes>>,
    /// Consumer routes: client namespace, then Service, then port.
    pub consumer: BTreeMap<String, BTreeMap<ObjectKey, BTreeMap<u16, PortRoutes>>>,
}

impl RouteTables {
    /// The routes clients in `namespace` use for `port` of `service`; `None` means the Service's
    /// default route. Consumer routes of the client's namespace replace the producer routes of
    /// the whole Service.
    pub fn for_clients(
        &self,
        namespace: &str,
        service: &ObjectKey,
        port: u16,
    ) -> Option<&PortRoutes> {
        if namespace != service.namespace {
            if let Some(by_port) = self.consumer.get(namespace).and_then(|s| s.get(service)) {
                return by_port.get(&port);
            }
        }
        self.producer_routes(service, port)
    }

    /// The producer routes of `port` of `service`: what clients without consumer routes for
    /// it use. `None` means the Service's default route.
    pub fn producer_routes(&self, service: &ObjectKey, port: u16) -> Option<&PortRoutes> {
        self.producer
            .get(service)
            .and_then(|by_port| by_port.get(&port))
    }

    /// Every table, producer and consumer.
    pub fn all(&self) -> impl Iterator<Item = &PortRoutes> {
        self.producer
            .values()
            .chain(self.consumer.values().flat_map(BTreeMap::values))
            .flat_map(BTreeMap::values)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Clients {
    Producer,
    Consumer(String),
}

/// Sort key of one Envoy route in its table: smaller comes first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    specificity: Reverse<Specificity>,
    route: usize,
    rule: usize,
    matched: usize,
}

/// One Envoy route compiled from a rule match, before it is placed in tables.
struct CompiledRoute {
    specificity: Specificity,
    rule: usize,
    matched: usize,
    route: Route,
}

#[derive(Default)]
struct KindEntries {
    entries: Vec<(Rank, Route)>,
    routes: BTreeMap<ObjectKey, Pos>,
}

#[derive(Default)]
struct Pending {
    http: KindEntries,
    grpc: KindEntries,
}

pub(crate) fn compile_routes(
    revision: &Revision,
    services: &ServiceIndex,
    findings: &mut Findings,
) -> RouteTables {
    let mut pending: BTreeMap<(Clients, ObjectKey, u16), Pending> = BTreeMap::new();

    for (index, route) in revision.http_routes.iter().enumerate() {
        let ctx = RouteCtx {
            kind: "HTTPRoute",
            key: &route.key,
            services,
        };
        let spec = &route.value.spec;
        let parents = service_parents(
            &ctx,
            &route.pos,
            &spec.parent_refs,
            &spec.hostnames,
            findings,
        );
        if parents.is_empty() {
            continue;
        }
        let compiled = compile_http_rules(&ctx, &spec.rules, findings);
        for (service, port) in parents {
            let kind = &mut pending
                .entry((clients_of(&route.key, &service), service, port))
                .or_default()
                .http;
            add_entries(kind, index, &route.key, &route.pos, &compiled);
        }
    }
    for (index, route) in revision.grpc_routes.iter().enumerate() {
        let ctx = RouteCtx {
            kind: "GRPCRoute",
            key: &route.key,
            services,
        };
        let spec = &route.value.spec;
        let parents = service_parents(
            &ctx,
            &route.pos,
            &spec.parent_refs,
            &spec.hostnames,
            findings,
        );
        if parents.is_empty() {
            continue;
        }
        let compiled = compile_grpc_rules(&ctx, &spec.rules, findings);
        for (service, port) in parents {
            let kind = &mut pending
                .entry((clients_of(&route.key, &service), service, port))
                .or_default()
                .grpc;
            add_entries(kind, index, &route.key, &route.pos, &compiled);
        }
    }

    let mut tables = RouteTables::default();
    for ((clients, service, port), pending) in pending {
        let for_whom = match &clients {
            Clients::Producer => String::new(),
            Clients::Consumer(ns) => format!(" for clients in namespace {ns:?}"),
        };
        if !pending.grpc.routes.is_empty() {
            let grpc_names: Vec<String> = pending
                .grpc
                .routes
                .keys()
                .map(ToString::to_string)
                .collect();
            for (http_key, http_pos) in &pending.http.routes {
                findings.warning(
                    http_pos,
                    format!(
                        "HTTPRoute {http_key} is not used on Service {service} port {port}{for_whom}: \
                         GRPCRoute {} attaches there too, and a GRPCRoute takes precedence over an \
                         HTTPRoute on the same parent (GEP-1426)",
                        grpc_names.join(", ")
                    ),
                );
            }
        }
        let mut chosen = if pending.grpc.routes.is_empty() {
            pending.http
        } else {
            pending.grpc
        };
        chosen.entries.sort_by(|a, b| a.0.cmp(&b.0));
        let port_routes = PortRoutes {
            routes: chosen.entries.into_iter().map(|(_, route)| route).collect(),
            origins: chosen
                .routes
                .values()
                .map(origin)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let by_port = match clients {
            Clients::Producer => tables.producer.entry(service).or_default(),
            Clients::Consumer(ns) => tables
                .consumer
                .entry(ns)
                .or_default()
                .entry(service)
                .or_default(),
        };
        by_port.insert(port, port_routes);
    }
    tables
}

fn clients_of(route: &ObjectKey, service: &ObjectKey) -> Clients {
    if route.namespace == service.namespace {
        Clients::Producer
    } else {
        Clients::Consumer(route.namespace.clone())
    }
}

fn add_entries(
    kind: &mut KindEntries,
    index: usize,
    key: &ObjectKey,
    pos: &Pos,
    compiled: &[CompiledRoute],
) {
    kind.routes.insert(key.clone(), pos.clone());
    kind.entries.extend(compiled.iter().map(|c| {
        (
            Rank {
                specificity: Reverse(c.specificity),
                route: index,
                rule: c.rule,
                matched: c.matched,
            },
            c.route.clone(),
        )
    }));
}

/// The (Service, port) pairs a route attaches to, validated.
fn service_parents(
    ctx: &RouteCtx<'_>,
    route_pos: &Pos,
    parent_refs: &[Spanned<ParentRef>],
    hostnames: &[String],
    findings: &mut Findings,
) -> BTreeSet<(ObjectKey, u16)> {
    let mut out = BTreeSet::new();
    let mut service_parent_seen = false;
    if parent_refs.is_empty() {
        findings.warning(
            route_pos,
            ctx.at("spec.parentRefs: the route has no parent, so it is not used"),
        );
    }
    for (i, spanned) in parent_refs.iter().enumerate() {
        let p = &spanned.value;
        let pos = &spanned.pos;
        let field = format!("spec.parentRefs[{i}]");
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        match (p.group.as_deref(), kind) {
            (Some(""), "Service") => {}
            (None, "Service") => {
                findings.error(
                    pos,
                    ctx.at(&format!(
                        "{field}.group: a Service parent needs group \"\" (the core API group); \
                         without it the group defaults to gateway.networking.k8s.io"
                    )),
                );
                continue;
            }
            (group, kind) => {
                findings.warning(
                    pos,
                    ctx.at(&format!(
                        "{field}: parent {kind} {:?} (group {:?}) is not a Service; Sluice serves \
                         only routes attached to Services (GAMMA), so it ignores this parent",
                        p.name,
                        group.unwrap_or("gateway.networking.k8s.io")
                    )),
                );
                continue;
            }
        }
        service_parent_seen = true;
        if let Some(section) = &p.section_name {
            findings.error(
                pos,
                ctx.at(&format!(
                    "{field}.sectionName: {section:?} is not supported for a Service parent; use port"
                )),
            );
            continue;
        }
        let namespace = p.namespace.as_deref().unwrap_or(&ctx.key.namespace);
        let Some(service) = ctx.services.get(namespace, &p.name) else {
            findings.error(
                pos,
                ctx.at(&format!(
                    "{field}: {:?} does not name a Service in namespace {namespace:?}",
                    p.name
                )),
            );
            continue;
        };
        match p.port {
            Some(n) => match service.served_port(n) {
                Ok(port) => {
                    out.insert((service.key.clone(), port.port));
                }
                Err(e) => findings.error(pos, ctx.at(&format!("{field}.port: {e}"))),
            },
            None => {
                let before = out.len();
                out.extend(
                    service
                        .served_ports()
                        .map(|port| (service.key.clone(), port.port)),
                );
                if out.len() == before && service.served_ports().next().is_none() {
                    findings.error(
                        pos,
                        ctx.at(&format!(
                            "{field}: Service {} has no HTTP or gRPC port",
                            service.key
                        )),
                    );
                }
            }
        }
    }
    if service_parent_seen && !hostnames.is_empty() {
        findings.error(
            route_pos,
            ctx.at(
                "spec.hostnames: not supported on a route attached to a Service: the Service \
                 itself selects the requests; remove the field",
            ),
        );
    }
    out
}

/// `NS/ROUTE/RULE[/match-J]`, where RULE is the rule's name or `rule-I`.
fn route_name(
    key: &ObjectKey,
    rule_name: Option<&str>,
    rule: usize,
    matched: usize,
    matches: usize,
) -> String {
    let rule = match rule_name {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => format!("rule-{rule}"),
    };
    if matches > 1 {
        format!("{}/{}/{rule}/match-{matched}", key.namespace, key.name)
    } else {
        format!("{}/{}/{rule}", key.namespace, key.name)
    }
}

/// A route without rules: Gateway API's default rule matches everything and, having no
/// backends, answers 500.
fn default_rule_route(key: &ObjectKey) -> CompiledRoute {
    let everything = match_everything();
    CompiledRoute {
        specificity: everything.specificity,
        rule: 0,
        matched: 0,
        route: Route {
            name: format!("{}/{}/rule-0", key.namespace, key.name),
            r#match: Some(everything.route_match),
            action: Some(internal_error()),
            ..Default::default()
        },
    }
}

fn internal_error() -> Action {
    Action::DirectResponse(DirectResponseAction {
        status: 500,
        ..Default::default()
    })
}

fn compile_http_rules(
    ctx: &RouteCtx<'_>,
    rules: &[Spanned<HttpRouteRule>],
    findings: &mut Findings,
) -> Vec<CompiledRoute> {
    if rules.is_empty() {
        return vec![default_rule_route(ctx.key)];
    }
    let mut out = Vec::new();
    for (r, spanned) in rules.iter().enumerate() {
        let rule = &spanned.value;
        let field = format!("spec.rules[{r}]");
        let filters = compile_filters(
            &rule.filters,
            &format!("{field}.filters"),
            Scope::HttpRule,
            ctx,
            findings,
        );
        let backends = compile_backends(
            &rule.backend_refs,
            &format!("{field}.backendRefs"),
            ctx,
            findings,
        );
        let timeout = rule
            .timeouts
            .as_ref()
            .and_then(|t| match route_timeout(&t.value) {
                Ok(timeout) => timeout,
                Err(e) => {
                    findings.error(&t.pos, ctx.at(&format!("{field}.timeouts.{e}")));
                    None
                }
            });
        if filters.redirect.is_some() && !rule.backend_refs.is_empty() {
            findings.error(
                &spanned.pos,
                ctx.at(&format!(
                    "{field}.backendRefs: a rule with a RequestRedirect filter cannot have \
                     backendRefs (the redirect answers the request itself)"
                )),
            );
        }
        let matches: Vec<(usize, CompiledMatch, Pos)> = if rule.matches.is_empty() {
            vec![(0, match_everything(), spanned.pos.clone())]
        } else {
            rule.matches
                .iter()
                .enumerate()
                .filter_map(|(m, spanned_match)| {
                    compile_http_match(
                        spanned_match,
                        &ctx.at(&format!("{field}.matches[{m}]")),
                        findings,
                    )
                    .map(|c| (m, c, spanned_match.pos.clone()))
                })
                .collect()
        };
        let match_count = rule.matches.len().max(1);
        for (m, compiled, match_pos) in matches {
            let action = if let Some(redirect) = &filters.redirect {
                match redirect.to_action(&compiled.path) {
                    Ok(action) => Action::Redirect(action),
                    Err(e) => {
                        findings.error(
                            &match_pos,
                            ctx.at(&format!("{field}.matches[{m}].path: {e}")),
                        );
                        continue;
                    }
                }
            } else {
                match forward_action(&backends, timeout) {
                    Some(mut action) => {
                        if let Some(rewrite) = &filters.rewrite {
                            if let Err(e) = rewrite.apply(&compiled.path, &mut action) {
                                findings.error(
                                    &match_pos,
                                    ctx.at(&format!("{field}.matches[{m}].path: {e}")),
                                );
                                continue;
                            }
                        }
                        action.request_mirror_policies = filters.mirrors.clone();
                        Action::Route(action)
                    }
                    None => internal_error(),
                }
            };
            out.push(CompiledRoute {
                specificity: compiled.specificity,
                rule: r,
                matched: m,
                route: with_header_ops(
                    Route {
                        name: route_name(ctx.key, rule.name.as_deref(), r, m, match_count),
                        r#match: Some(compiled.route_match),
                        action: Some(action),
                        ..Default::default()
                    },
                    &filters,
                ),
            });
        }
    }
    out
}

fn compile_grpc_rules(
    ctx: &RouteCtx<'_>,
    rules: &[Spanned<GrpcRouteRule>],
    findings: &mut Findings,
) -> Vec<CompiledRoute> {
    if rules.is_empty() {
        return vec![default_rule_route(ctx.key)];
    }
    let mut out = Vec::new();
    for (r, spanned) in rules.iter().enumerate() {
        let rule = &spanned.value;
        let field = format!("spec.rules[{r}]");
        let filters = compile_filters(
            &rule.filters,
            &format!("{field}.filters"),
            Scope::GrpcRule,
            ctx,
            findings,
        );
        let backends = compile_backends(
            &rule.backend_refs,
            &format!("{field}.backendRefs"),
            ctx,
            findings,
        );
        let matches: Vec<(usize, CompiledMatch)> = if rule.matches.is_empty() {
            vec![(0, match_everything())]
        } else {
            rule.matches
                .iter()
                .enumerate()
                .filter_map(|(m, spanned_match)| {
                    compile_grpc_match(
                        spanned_match,
                        &ctx.at(&format!("{field}.matches[{m}]")),
                        findings,
                    )
                    .map(|c| (m, c))
                })
                .collect()
        };
        let match_count = rule.matches.len().max(1);
        for (m, compiled) in matches {
            let action = match forward_action(&backends, Some(Duration::default())) {
                Some(mut action) => {
                    action.max_stream_duration = Some(grpc_deadlines());
                    action.request_mirror_policies = filters.mirrors.clone();
                    Action::Route(action)
                }
                None => internal_error(),
            };
            out.push(CompiledRoute {
                // gRPC matches rank among themselves: a gRPC "match everything" has no service.
                specificity: if rule.matches.is_empty() {
                    [0; 5]
                } else {
                    compiled.specificity
                },
                rule: r,
                matched: m,
                route: with_header_ops(
                    Route {
                        name: route_name(ctx.key, rule.name.as_deref(), r, m, match_count),
                        r#match: Some(compiled.route_match),
                        action: Some(action),
                        ..Default::default()
                    },
                    &filters,
                ),
            });
        }
    }
    out
}

/// gRPC calls can stream for as long as they like, so their routes have no route timeout;
/// the client's `grpc-timeout` header bounds each call instead.
pub(crate) fn grpc_deadlines() -> MaxStreamDuration {
    MaxStreamDuration {
        grpc_timeout_header_max: Some(Duration::default()),
        ..Default::default()
    }
}

fn with_header_ops(mut route: Route, filters: &Filters) -> Route {
    route.request_headers_to_add = filters.request.add.clone();
    route.request_headers_to_remove = filters.request.remove.clone();
    route.response_headers_to_add = filters.response.add.clone();
    route.response_headers_to_remove = filters.response.remove.clone();
    route
}

fn no_ops(ops: &HeaderOps) -> bool {
    ops.add.is_empty() && ops.remove.is_empty()
}

/// Forwarding to `backends`, or `None` when none takes traffic (the rule answers 500).
/// A single backend without filters is a plain `cluster`; anything else is `weighted_clusters`,
/// whose entries also carry backend-level header changes.
fn forward_action(backends: &[Backend], timeout: Option<Duration>) -> Option<RouteAction> {
    let cluster_specifier = match backends {
        [] => return None,
        [only] if no_ops(&only.request) && no_ops(&only.response) => {
            ClusterSpecifier::Cluster(only.cluster.clone())
        }
        many => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|b| ClusterWeight {
                    name: b.cluster.clone(),
                    weight: Some(UInt32Value { value: b.weight }),
                    request_headers_to_add: b.request.add.clone(),
                    request_headers_to_remove: b.request.remove.clone(),
                    response_headers_to_add: b.response.add.clone(),
                    response_headers_to_remove: b.response.remove.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    Some(RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout,
        ..Default::default()
    })
}
