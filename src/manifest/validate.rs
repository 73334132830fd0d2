//! Semantic checks that need no Envoy knowledge beyond its hard limits: Kubernetes name rules,
//! the rules of the Gateway API schema (CRD validations and CEL rules) and references between
//! objects. Each finding carries the position of the field it is about, found in the YAML tree
//! of the object's document.
//!
//! Findings that only matter once a route is compiled for a sidecar (which ports speak HTTP,
//! parents that are Gateways, EndpointSlices that no Service uses) are left to `compile`, so one
//! problem is reported once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

use super::de::child_path;
use super::model::{
    BackendObjectRef, EndpointSlice, GrpcRoute, HeaderMatch, HeaderModifier, HttpBackendRef,
    HttpFilterType, HttpHeader, HttpRoute, HttpRouteFilter, HttpRouteMatch, HttpRouteTimeouts,
    IntOrString, ObjectMeta, ParentRef, PathMatchType, PathModifier, PathModifierType, Service,
    ValueMatchType,
};
use super::re2;
use super::yaml::{Node, NodeKind};
use super::{Diagnostic, Object, ObjectKey, Pos, Revision};

/// The kinds Sluice reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Service,
    EndpointSlice,
    HttpRoute,
    GrpcRoute,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
        })
    }
}

/// The YAML tree of each object's document, to position findings on fields.
pub(crate) type Trees = HashMap<(Kind, ObjectKey), Arc<Node>>;

/// Gateway API's maximum weight.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Gateway API's maximum header value length (`HTTPHeader.value`, header matches).
pub const MAX_HEADER_VALUE: usize = 4096;
/// Gateway API's maximum header name length.
pub const MAX_HEADER_NAME: usize = 256;
/// Gateway API's maximum path and query value length.
pub const MAX_PATH: usize = 1024;

/// Checks every object of `rev`; findings are errors or warnings, in no particular order.
pub(crate) fn validate(rev: &Revision, trees: &Trees) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for obj in rev.services.values() {
        let mut c = Ctx::new(&mut out, Kind::Service, obj, trees);
        service(&mut c, &obj.value);
    }
    for obj in rev.endpoint_slices.values() {
        let mut c = Ctx::new(&mut out, Kind::EndpointSlice, obj, trees);
        endpoint_slice(&mut c, &obj.value);
    }
    for obj in &rev.http_routes {
        let mut c = Ctx::new(&mut out, Kind::HttpRoute, obj, trees);
        http_route(&mut c, &obj.value, rev);
    }
    for obj in &rev.grpc_routes {
        let mut c = Ctx::new(&mut out, Kind::GrpcRoute, obj, trees);
        grpc_route(&mut c, &obj.value, rev);
    }
    overlapping_matches(rev, trees, &mut out);
    out
}

/// Where findings about one object go.
struct Ctx<'a> {
    out: &'a mut Vec<Diagnostic>,
    kind: Kind,
    key: &'a ObjectKey,
    root: Option<&'a Node>,
    fallback: &'a Pos,
}

impl<'a> Ctx<'a> {
    fn new<T>(
        out: &'a mut Vec<Diagnostic>,
        kind: Kind,
        obj: &'a Object<T>,
        trees: &'a Trees,
    ) -> Self {
        Ctx {
            out,
            kind,
            key: &obj.key,
            root: trees.get(&(kind, obj.key.clone())).map(AsRef::as_ref),
            fallback: &obj.pos,
        }
    }

    /// `HTTPRoute shop/checkout`.
    fn what(&self) -> String {
        format!("{} {}", self.kind, self.key)
    }

    fn ns(&self) -> &str {
        &self.key.namespace
    }

    /// Position of the node at `path` (`spec.rules[0].matches[1]`), or of its deepest ancestor
    /// present in the tree.
    fn pos(&self, path: &str) -> Pos {
        match self.root {
            Some(root) => node_pos(locate(root, path), &self.fallback.file),
            None => self.fallback.clone(),
        }
    }

    /// Position of `key` itself in the mapping at `map_path`.
    fn key_pos(&self, map_path: &str, key: &str) -> Pos {
        let Some(root) = self.root else {
            return self.fallback.clone();
        };
        let map = locate(root, map_path);
        let node = map.get_key(key).unwrap_or(map);
        node_pos(node, &self.fallback.file)
    }

    fn error(&mut self, path: &str, message: impl fmt::Display) {
        let pos = self.pos(path);
        self.out
            .push(Diagnostic::error(pos, with_path(path, message)));
    }

    fn warning(&mut self, path: &str, message: impl fmt::Display) {
        let pos = self.pos(path);
        self.out
            .push(Diagnostic::warning(pos, with_path(path, message)));
    }

    /// An error about the value of `key` in the mapping at `map_path` (keys such as label keys
    /// may hold dots, so they cannot be part of a path to [`Ctx::pos`]).
    fn error_at_value(&mut self, map_path: &str, key: &str, message: impl fmt::Display) {
        let pos = match self.root {
            Some(root) => {
                let map = locate(root, map_path);
                node_pos(map.get(key).unwrap_or(map), &self.fallback.file)
            }
            None => self.fallback.clone(),
        };
        let path = child_path(map_path, key);
        self.out
            .push(Diagnostic::error(pos, with_path(&path, message)));
    }

    fn error_at_key(&mut self, map_path: &str, key: &str, message: impl fmt::Display) {
        let pos = self.key_pos(map_path, key);
        let path = child_path(map_path, key);
        self.out
            .push(Diagnostic::error(pos, with_path(&path, message)));
    }

    /// The Service `name` in `namespace` (the object's own by default).
    fn service<'r>(
        &self,
        rev: &'r Revision,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<&'r Object<Service>> {
        let ns = namespace.unwrap_or(self.ns());
        rev.services
            .get(&ObjectKey::new(ns, name))
            .map(AsRef::as_ref)
    }
}

fn with_path(path: &str, message: impl fmt::Display) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

fn node_pos(node: &Node, file: &Arc<str>) -> Pos {
    node.pos(file)
}

/// Follows `a.b[2].c` from `root` as far as the tree goes.
fn locate<'n>(root: &'n Node, path: &str) -> &'n Node {
    let mut node = root;
    if path.is_empty() {
        return node;
    }
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            match node.get(name) {
                Some(n) => node = n,
                None => return node,
            }
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else {
                return node;
            };
            let index = inner[..end].parse::<usize>().ok();
            match (&node.kind, index) {
                (NodeKind::Seq(items), Some(i)) if i < items.len() => node = &items[i],
                _ => return node,
            }
            rest = &inner[end + 1..];
        }
    }
    node
}

// ---------------------------------------------------------------------------------------------
// Names

const DNS_LABEL_RULE: &str =
    "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters (RFC 1123 label)";
const DNS_SUBDOMAIN_RULE: &str = "lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit, at most 253 characters (RFC 1123 subdomain)";

fn label_part_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && label_part_ok(s)
}

pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(label_part_ok)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters; empty allowed if `empty`.
fn is_qualified_part(s: &str, empty: bool) -> bool {
    if s.is_empty() {
        return empty;
    }
    let b = s.as_bytes();
    s.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Why `key` is not a valid label or annotation key.
fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if !is_dns_subdomain(prefix) {
            return Some(format!(
                "key {key:?} has an invalid prefix {prefix:?}: it must be {DNS_SUBDOMAIN_RULE}"
            ));
        }
    }
    if !is_qualified_part(name, false) {
        return Some(format!(
            "key {key:?} is not a valid label key: the name part must be letters, digits, '-', '_' \
             and '.', starting and ending with a letter or digit, at most 63 characters"
        ));
    }
    None
}

/// Hostname without wildcard (`PreciseHostname`).
fn is_hostname(s: &str) -> bool {
    is_dns_subdomain(s)
}

/// An HTTP token (RFC 7230), which is what Gateway API's `HTTPHeaderName` allows.
fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_HEADER_NAME
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn meta(c: &mut Ctx<'_>, m: &ObjectMeta, label_name: bool) {
    let what = c.kind;
    if label_name {
        if !is_dns_label(&m.name) {
            c.error(
                "metadata.name",
                format!(
                    "{:?} is not a valid {what} name: use {DNS_LABEL_RULE}",
                    m.name
                ),
            );
        }
    } else if !is_dns_subdomain(&m.name) {
        c.error(
            "metadata.name",
            format!(
                "{:?} is not a valid {what} name: use {DNS_SUBDOMAIN_RULE}",
                m.name
            ),
        );
    }
    if let Some(ns) = &m.namespace {
        if !is_dns_label(ns) {
            c.error(
                "metadata.namespace",
                format!("{ns:?} is not a valid namespace: use {DNS_LABEL_RULE}"),
            );
        }
    }
    labels(c, "metadata.labels", &m.labels);
    for key in m.annotations.keys() {
        if let Some(problem) = label_key_problem(key) {
            c.error_at_key("metadata.annotations", key, problem);
        }
    }
    if let Some(ts) = &m.creation_timestamp {
        if humantime::parse_rfc3339(ts).is_err() {
            c.error(
                "metadata.creationTimestamp",
                format!("{ts:?} is not an RFC 3339 UTC time such as \"2024-05-01T12:00:00Z\""),
            );
        }
    }
}

fn labels(c: &mut Ctx<'_>, path: &str, map: &BTreeMap<String, String>) {
    for (key, value) in map {
        if let Some(problem) = label_key_problem(key) {
            c.error_at_key(path, key, problem);
        }
        if !is_qualified_part(value, true) {
            c.error_at_value(
                path,
                key,
                format!(
                    "{value:?} is not a valid label value: use at most 63 letters, digits, '-', '_' \
                     and '.', starting and ending with a letter or digit"
                ),
            );
        }
    }
}

/// The creation time used for route precedence; `None` if absent or malformed.
pub(crate) fn creation_time(m: &ObjectMeta) -> Option<SystemTime> {
    m.creation_timestamp
        .as_deref()
        .and_then(|ts| humantime::parse_rfc3339(ts).ok())
}

// ---------------------------------------------------------------------------------------------
// Service and EndpointSlice

fn service(c: &mut Ctx<'_>, svc: &Service) {
    meta(c, &svc.metadata, true);
    labels(c, "spec.selector", &svc.spec.selector);
    let ports = &svc.spec.ports;
    let mut numbers: HashMap<u16, usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, spanned) in ports.iter().enumerate() {
        let p = &spanned.value;
        let path = format!("spec.ports[{i}]");
        if p.port == 0 {
            c.error(&format!("{path}.port"), "0 is not a valid port (1..65535)");
        } else if let Some(first) = numbers.insert(p.port, i) {
            numbers.insert(p.port, first);
            c.error(
                &format!("{path}.port"),
                format!(
                    "port {} is declared twice in {} (first in spec.ports[{first}])",
                    p.port,
                    c.what()
                ),
            );
        }
        match &p.name {
            Some(name) => {
                if !is_dns_label(name) {
                    c.error(
                        &format!("{path}.name"),
                        format!("{name:?} is not a valid port name: use {DNS_LABEL_RULE}"),
                    );
                }
                if let Some(first) = names.insert(name, i) {
                    names.insert(name, first);
                    c.error(
                        &format!("{path}.name"),
                        format!(
                            "port name {name:?} is used twice in {} (first in spec.ports[{first}])",
                            c.what()
                        ),
                    );
                }
            }
            None if ports.len() > 1 => c.error(
                &path,
                "every port needs a name when a Service has more than one port",
            ),
            None => {}
        }
        if let Some(proto) = &p.protocol {
            if proto != "TCP" {
                c.error(
                    &format!("{path}.protocol"),
                    format!(
                        "protocol {proto:?} is not supported: Sluice routes TCP (HTTP and gRPC)"
                    ),
                );
            }
        }
        match &p.target_port {
            None => {}
            Some(IntOrString::Int(0)) => c.error(
                &format!("{path}.targetPort"),
                "0 is not a valid targetPort (1..65535)",
            ),
            Some(IntOrString::Int(_)) => {}
            Some(IntOrString::String(s)) if s.parse::<u16>().is_ok() => c.error(
                &format!("{path}.targetPort"),
                format!("targetPort \"{s}\" is quoted: write it as a number"),
            ),
            Some(IntOrString::String(s)) => c.error(
                &format!("{path}.targetPort"),
                format!(
                    "named targetPort {s:?} is not supported: sidecars do not announce their \
                     container ports; give the port number"
                ),
            ),
        }
    }
}

fn endpoint_slice(c: &mut Ctx<'_>, slice: &EndpointSlice) {
    meta(c, &slice.metadata, false);
    let family = slice.address_type.as_str();
    if !matches!(family, "IPv4" | "IPv6") {
        c.error(
            "addressType",
            format!("addressType {family:?} is not supported: Envoy endpoints need IP addresses (IPv4 or IPv6)"),
        );
    }
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let addresses = &ep.value.addresses;
        if addresses.is_empty() || addresses.len() > 100 {
            c.error(
                &format!("endpoints[{i}].addresses"),
                format!(
                    "an endpoint needs 1 to 100 addresses, found {}",
                    addresses.len()
                ),
            );
        }
        for (j, a) in addresses.iter().enumerate() {
            let ok = match family {
                "IPv4" => a.parse::<Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<Ipv6Addr>().is_ok(),
                _ => true,
            };
            if !ok {
                c.error(
                    &format!("endpoints[{i}].addresses[{j}]"),
                    format!("{a:?} is not an {family} address"),
                );
            }
        }
    }
    let mut names = HashMap::new();
    for (i, p) in slice.ports.iter().enumerate() {
        let path = format!("ports[{i}]");
        if p.port == 0 {
            c.error(&format!("{path}.port"), "0 is not a valid port (1..65535)");
        }
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty() && !is_dns_label(name) {
            c.error(
                &format!("{path}.name"),
                format!("{name:?} is not a valid port name: use {DNS_LABEL_RULE}"),
            );
        }
        if let Some(first) = names.insert(name, i) {
            names.insert(name, first);
            c.error(
                &format!("{path}.name"),
                format!("port name {name:?} is used twice (first in ports[{first}])"),
            );
        }
        if let Some(proto) = &p.protocol {
            if proto != "TCP" {
                c.error(
                    &format!("{path}.protocol"),
                    format!(
                        "protocol {proto:?} is not supported: Sluice routes TCP (HTTP and gRPC)"
                    ),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

/// Gateway API list limits.
struct ListLimits {
    rules: usize,
    matches: usize,
}

const HTTP_LIMITS: ListLimits = ListLimits {
    rules: 16,
    matches: 64,
};
const GRPC_LIMITS: ListLimits = ListLimits {
    rules: 16,
    matches: 8,
};

fn too_many(c: &mut Ctx<'_>, path: &str, what: &str, n: usize, max: usize) {
    if n > max {
        c.error(
            path,
            format!("{n} {what}, above Gateway API's limit of {max}"),
        );
    }
}

fn parent_refs(
    c: &mut Ctx<'_>,
    refs: &[super::Spanned<ParentRef>],
    hostnames: &[String],
    rev: &Revision,
) {
    too_many(c, "spec.parentRefs", "parentRefs", refs.len(), 32);
    let mut seen: HashMap<(String, String, Option<u16>), usize> = HashMap::new();
    let mut service_parent = false;
    for (i, spanned) in refs.iter().enumerate() {
        let p = &spanned.value;
        let path = format!("spec.parentRefs[{i}]");
        // Parents that are not Services (Gateways) are compile's to report: it ignores them.
        match (p.group.as_deref(), p.kind.as_deref()) {
            (Some(""), Some("Service")) => {}
            (None, Some("Service")) => {
                c.error(
                    &path,
                    "a Service parent needs group \"\" (the core API group); without it the group \
                     defaults to gateway.networking.k8s.io",
                );
                continue;
            }
            _ => continue,
        }
        service_parent = true;
        let ns = p.namespace.as_deref().unwrap_or(c.ns()).to_string();
        if let Some(first) = seen.insert((ns.clone(), p.name.clone(), p.port), i) {
            seen.insert((ns.clone(), p.name.clone(), p.port), first);
            c.error(
                &path,
                format!("the same parent as spec.parentRefs[{first}]"),
            );
        }
        if !is_dns_label(&p.name) {
            c.error(
                &format!("{path}.name"),
                format!(
                    "{:?} is not a valid Service name: use {DNS_LABEL_RULE}",
                    p.name
                ),
            );
        }
        if let Some(ns) = &p.namespace {
            if !is_dns_label(ns) {
                c.error(
                    &format!("{path}.namespace"),
                    format!("{ns:?} is not a valid namespace: use {DNS_LABEL_RULE}"),
                );
            }
        }
        if let Some(section) = &p.section_name {
            c.error(
                &format!("{path}.sectionName"),
                format!("{section:?}: sectionName is not supported for a Service parent; use port"),
            );
        }
        match c.service(rev, p.namespace.as_deref(), &p.name) {
            None => c.error(
                &path,
                format!(
                    "parentRef {:?} of {} does not name a Service in namespace {ns:?}",
                    p.name,
                    c.what()
                ),
            ),
            Some(svc) => {
                if let Some(port) = p.port {
                    if !has_port(&svc.value, port) {
                        c.error(
                            &format!("{path}.port"),
                            no_such_port(&svc.key, &svc.value, port),
                        );
                    }
                }
            }
        }
    }
    if service_parent && !hostnames.is_empty() {
        c.error(
            "spec.hostnames",
            "not supported on a route attached to a Service: the Service itself selects the \
             requests; remove the field",
        );
    }
}

fn has_port(svc: &Service, port: u16) -> bool {
    svc.spec.ports.iter().any(|p| p.value.port == port)
}

fn no_such_port(key: &ObjectKey, svc: &Service, port: u16) -> String {
    let ports: Vec<String> = svc
        .spec
        .ports
        .iter()
        .map(|p| p.value.port.to_string())
        .collect();
    if ports.is_empty() {
        format!("Service {key} has no port {port}: it declares no ports")
    } else {
        format!(
            "Service {key} has no port {port}; its ports are {}",
            ports.join(", ")
        )
    }
}

fn rule_names<'m>(c: &mut Ctx<'_>, names: impl Iterator<Item = Option<&'m String>>) {
    let mut seen = HashMap::new();
    for (i, name) in names.enumerate() {
        let Some(name) = name else { continue };
        let path = format!("spec.rules[{i}].name");
        if !is_dns_label(name) {
            c.error(
                &path,
                format!("{name:?} is not a valid rule name: use {DNS_LABEL_RULE}"),
            );
        }
        if let Some(first) = seen.insert(name.as_str(), i) {
            seen.insert(name.as_str(), first);
            c.error(
                &path,
                format!("rule name {name:?} is used twice (first in spec.rules[{first}])"),
            );
        }
    }
}

fn http_route(c: &mut Ctx<'_>, route: &HttpRoute, rev: &Revision) {
    meta(c, &route.metadata, false);
    parent_refs(c, &route.spec.parent_refs, &route.spec.hostnames, rev);
    let rules = &route.spec.rules;
    too_many(c, "spec.rules", "rules", rules.len(), HTTP_LIMITS.rules);
    rule_names(c, rules.iter().map(|r| r.value.name.as_ref()));
    for (i, spanned) in rules.iter().enumerate() {
        let rule = &spanned.value;
        let path = format!("spec.rules[{i}]");
        too_many(
            c,
            &format!("{path}.matches"),
            "matches",
            rule.matches.len(),
            HTTP_LIMITS.matches,
        );
        for (j, m) in rule.matches.iter().enumerate() {
            http_match(c, &format!("{path}.matches[{j}]"), &m.value);
        }
        let has_redirect = filters(c, &format!("{path}.filters"), &rule.filters, false, rev);
        let prefix_only = rule.matches.len() <= 1
            && rule.matches.iter().all(|m| {
                m.value
                    .path
                    .as_ref()
                    .and_then(|p| p.value.match_type)
                    .is_none_or(|t| t == PathMatchType::PathPrefix)
            });
        for (k, f) in rule.filters.iter().enumerate() {
            let f = &f.value;
            let modifier = f
                .request_redirect
                .as_ref()
                .and_then(|r| r.path.as_ref())
                .or(f.url_rewrite.as_ref().and_then(|r| r.path.as_ref()));
            if let Some(m) = modifier {
                if m.modifier_type == PathModifierType::ReplacePrefixMatch && !prefix_only {
                    c.error(
                        &format!("{path}.filters[{k}]"),
                        "replacePrefixMatch needs a rule with exactly one PathPrefix match",
                    );
                }
            }
        }
        if has_redirect && !rule.backend_refs.is_empty() {
            c.error(
                &format!("{path}.backendRefs"),
                "a rule with a RequestRedirect filter cannot have backendRefs",
            );
        }
        backend_refs(c, &path, &rule.backend_refs, rev);
        if let Some(t) = &rule.timeouts {
            timeouts(c, &format!("{path}.timeouts"), &t.value);
        }
    }
}

fn grpc_route(c: &mut Ctx<'_>, route: &GrpcRoute, rev: &Revision) {
    meta(c, &route.metadata, false);
    parent_refs(c, &route.spec.parent_refs, &route.spec.hostnames, rev);
    let rules = &route.spec.rules;
    too_many(c, "spec.rules", "rules", rules.len(), GRPC_LIMITS.rules);
    rule_names(c, rules.iter().map(|r| r.value.name.as_ref()));
    for (i, spanned) in rules.iter().enumerate() {
        let rule = &spanned.value;
        let path = format!("spec.rules[{i}]");
        too_many(
            c,
            &format!("{path}.matches"),
            "matches",
            rule.matches.len(),
            GRPC_LIMITS.matches,
        );
        for (j, m) in rule.matches.iter().enumerate() {
            let mpath = format!("{path}.matches[{j}]");
            if let Some(method) = &m.value.method {
                let mp = format!("{mpath}.method");
                match method.match_type.unwrap_or(ValueMatchType::Exact) {
                    ValueMatchType::Exact => {
                        if method.service.is_none() && method.method.is_none() {
                            c.error(&mp, "a method match needs a service, a method or both");
                        }
                        if let Some(s) = &method.service {
                            if !is_grpc_service(s) {
                                c.error(
                                    &format!("{mp}.service"),
                                    format!("{s:?} is not a gRPC service name (such as \"pkg.v1.Echo\")"),
                                );
                            }
                        }
                        if let Some(m) = &method.method {
                            if !is_grpc_method(m) {
                                c.error(
                                    &format!("{mp}.method"),
                                    format!("{m:?} is not a gRPC method name (such as \"Echo\")"),
                                );
                            }
                        }
                    }
                    ValueMatchType::RegularExpression => {
                        if method.service.is_none() && method.method.is_none() {
                            c.error(&mp, "a method match needs a service, a method or both");
                        }
                        for (field, value) in
                            [("service", &method.service), ("method", &method.method)]
                        {
                            if let Some(v) = value {
                                regex(c, &format!("{mp}.{field}"), v);
                            }
                        }
                    }
                }
            }
            header_matches(c, &format!("{mpath}.headers"), &m.value.headers, true);
        }
        filters(c, &format!("{path}.filters"), &rule.filters, true, rev);
        backend_refs(c, &path, &rule.backend_refs, rev);
    }
}

/// `^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`
fn is_grpc_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    s.len() <= 1024 && !s.is_empty() && s.split('.').all(is_grpc_ident)
}

/// `^[A-Za-z_][A-Za-z_0-9]*$`
fn is_grpc_method(s: &str) -> bool {
    s.len() <= 1024 && is_grpc_ident(s)
}

fn is_grpc_ident(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn regex(c: &mut Ctx<'_>, path: &str, pattern: &str) {
    if let Err(e) = re2::check(pattern) {
        c.error(path, e);
    }
}

fn http_match(c: &mut Ctx<'_>, path: &str, m: &HttpRouteMatch) {
    if let Some(p) = &m.path {
        let p = &p.value;
        let vpath = format!("{path}.path.value");
        let value = p.value.as_deref().unwrap_or("/");
        if value.len() > MAX_PATH {
            c.error(
                &vpath,
                format!(
                    "path is {} characters long, above the limit of {MAX_PATH}",
                    value.len()
                ),
            );
        }
        match p.match_type.unwrap_or(PathMatchType::PathPrefix) {
            PathMatchType::RegularExpression => regex(c, &vpath, value),
            t => {
                if !value.starts_with('/') {
                    c.error(&vpath, format!("{value:?} must start with '/'"));
                } else if let Some(problem) = path_problem(value) {
                    c.error(
                        &vpath,
                        format!("{value:?} {problem} (not allowed for type {t:?})"),
                    );
                }
            }
        }
    }
    header_matches(c, &format!("{path}.headers"), &m.headers, true);
    header_matches(c, &format!("{path}.queryParams"), &m.query_params, false);
}

/// Gateway API's rules for Exact and PathPrefix values.
fn path_problem(value: &str) -> Option<&'static str> {
    if value.contains("//") {
        Some("contains '//'")
    } else if value.contains("/./") || value.ends_with("/.") {
        Some("contains a '.' segment")
    } else if value.contains("/../") || value.ends_with("/..") {
        Some("contains a '..' segment")
    } else if value.to_ascii_lowercase().contains("%2f") {
        Some("contains an encoded '/' (%2F)")
    } else if value.contains('#') {
        Some("contains '#'")
    } else if value.contains('?') {
        Some("contains '?' (match query parameters with queryParams)")
    } else if value.chars().any(|ch| ch.is_control() || ch == ' ') {
        Some("contains spaces or control characters")
    } else {
        None
    }
}

/// Header (`headers = true`) or query parameter matches.
fn header_matches(
    c: &mut Ctx<'_>,
    path: &str,
    list: &[super::Spanned<HeaderMatch>],
    headers: bool,
) {
    let noun = if headers { "header" } else { "query parameter" };
    too_many(c, path, &format!("{noun} matches"), list.len(), 16);
    let mut seen = HashMap::new();
    for (i, h) in list.iter().enumerate() {
        let h = &h.value;
        let ipath = format!("{path}[{i}]");
        if !is_http_token(&h.name) {
            c.error(
                &format!("{ipath}.name"),
                format!("{:?} is not a valid {noun} name (letters, digits and !#$%&'*+-.^_`|~, at most {MAX_HEADER_NAME})", h.name),
            );
        }
        let key = if headers {
            h.name.to_ascii_lowercase()
        } else {
            h.name.clone()
        };
        if let Some(first) = seen.insert(key.clone(), i) {
            seen.insert(key, first);
            c.error(
                &format!("{ipath}.name"),
                format!(
                    "{noun} {:?} is matched twice (first in {path}[{first}])",
                    h.name
                ),
            );
        }
        let max = if headers { MAX_HEADER_VALUE } else { MAX_PATH };
        match h.match_type.unwrap_or(ValueMatchType::Exact) {
            ValueMatchType::RegularExpression => regex(c, &format!("{ipath}.value"), &h.value),
            ValueMatchType::Exact => header_value(c, &format!("{ipath}.value"), &h.value, max),
        }
    }
}

fn header_value(c: &mut Ctx<'_>, path: &str, value: &str, max: usize) {
    if value.is_empty() {
        c.error(path, "the value must not be empty");
    } else if value.len() > max {
        c.error(
            path,
            format!(
                "the value is {} bytes long, above the limit of {max}",
                value.len()
            ),
        );
    } else if value.contains(['\r', '\n', '\0']) {
        c.error(path, "a header value cannot contain CR, LF or NUL");
    }
}

/// Checks a list of filters; returns whether it holds a RequestRedirect.
fn filters(
    c: &mut Ctx<'_>,
    path: &str,
    list: &[super::Spanned<HttpRouteFilter>],
    grpc: bool,
    rev: &Revision,
) -> bool {
    too_many(c, path, "filters", list.len(), 16);
    let mut seen: Vec<(HttpFilterType, usize)> = Vec::new();
    let has = |t| list.iter().any(|f| f.value.filter_type == t);
    let redirect = has(HttpFilterType::RequestRedirect);
    let rewrite = has(HttpFilterType::URLRewrite);
    if redirect && rewrite {
        c.error(
            path,
            "a rule cannot have both a RequestRedirect and a URLRewrite filter",
        );
    }
    for (i, spanned) in list.iter().enumerate() {
        let f = &spanned.value;
        let fpath = format!("{path}[{i}]");
        let t = f.filter_type;
        if grpc
            && matches!(
                t,
                HttpFilterType::RequestRedirect | HttpFilterType::URLRewrite
            )
        {
            c.error(
                &format!("{fpath}.type"),
                format!("filter {t:?} is not supported in a GRPCRoute"),
            );
            continue;
        }
        if t != HttpFilterType::RequestMirror {
            if let Some(&(_, first)) = seen.iter().find(|(s, _)| *s == t) {
                c.error(
                    &format!("{fpath}.type"),
                    format!("filter {t:?} appears twice (first in {path}[{first}])"),
                );
            } else {
                seen.push((t, i));
            }
        }
        let fields = [
            (
                HttpFilterType::RequestHeaderModifier,
                "requestHeaderModifier",
                f.request_header_modifier.is_some(),
            ),
            (
                HttpFilterType::ResponseHeaderModifier,
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            (
                HttpFilterType::RequestRedirect,
                "requestRedirect",
                f.request_redirect.is_some(),
            ),
            (
                HttpFilterType::URLRewrite,
                "urlRewrite",
                f.url_rewrite.is_some(),
            ),
            (
                HttpFilterType::RequestMirror,
                "requestMirror",
                f.request_mirror.is_some(),
            ),
        ];
        for (ft, field, set) in fields {
            if ft == t && !set {
                c.error(
                    &fpath,
                    format!("a filter of type {t:?} needs the field {field}"),
                );
            } else if ft != t && set {
                c.error(
                    &format!("{fpath}.{field}"),
                    format!("{field} does not belong in a filter of type {t:?}"),
                );
            }
        }
        if let Some(m) = &f.request_header_modifier {
            header_modifier(c, &format!("{fpath}.requestHeaderModifier"), m);
        }
        if let Some(m) = &f.response_header_modifier {
            header_modifier(c, &format!("{fpath}.responseHeaderModifier"), m);
        }
        if let Some(r) = &f.request_redirect {
            let rpath = format!("{fpath}.requestRedirect");
            if let Some(s) = &r.scheme {
                if s != "http" && s != "https" {
                    c.error(
                        &format!("{rpath}.scheme"),
                        format!("{s:?} must be \"http\" or \"https\""),
                    );
                }
            }
            if let Some(h) = &r.hostname {
                if !is_hostname(h) {
                    c.error(
                        &format!("{rpath}.hostname"),
                        format!("{h:?} is not a hostname"),
                    );
                }
            }
            if r.port == Some(0) {
                c.error(&format!("{rpath}.port"), "0 is not a valid port (1..65535)");
            }
            if let Some(code) = r.status_code {
                if ![301, 302, 303, 307, 308].contains(&code) {
                    c.error(
                        &format!("{rpath}.statusCode"),
                        format!("{code} is not one of 301, 302, 303, 307, 308"),
                    );
                }
            }
            if let Some(p) = &r.path {
                path_modifier(c, &format!("{rpath}.path"), p);
            }
        }
        if let Some(r) = &f.url_rewrite {
            let rpath = format!("{fpath}.urlRewrite");
            if let Some(h) = &r.hostname {
                if !is_hostname(h) {
                    c.error(
                        &format!("{rpath}.hostname"),
                        format!("{h:?} is not a hostname"),
                    );
                }
            }
            if let Some(p) = &r.path {
                path_modifier(c, &format!("{rpath}.path"), p);
            }
        }
        if let Some(m) = &f.request_mirror {
            let mpath = format!("{fpath}.requestMirror");
            object_ref(c, &format!("{mpath}.backendRef"), &m.backend_ref, rev);
            if m.percent.is_some() && m.fraction.is_some() {
                c.error(&mpath, "set percent or fraction, not both");
            }
            if let Some(p) = m.percent {
                if p > 100 {
                    c.error(&format!("{mpath}.percent"), format!("{p} is more than 100"));
                }
            }
            if let Some(fr) = &m.fraction {
                let denominator = fr.denominator.unwrap_or(100);
                if denominator == 0 || fr.numerator > denominator {
                    c.error(
                        &format!("{mpath}.fraction"),
                        format!(
                            "{}/{denominator} is not a fraction between 0 and 1",
                            fr.numerator
                        ),
                    );
                }
            }
        }
    }
    redirect
}

fn header_modifier(c: &mut Ctx<'_>, path: &str, m: &HeaderModifier) {
    let lists: [(&str, &[HttpHeader]); 2] = [("set", &m.set), ("add", &m.add)];
    for (list, headers) in lists {
        let lpath = format!("{path}.{list}");
        too_many(c, &lpath, "headers", headers.len(), 16);
        let mut seen = HashMap::new();
        for (i, h) in headers.iter().enumerate() {
            let hpath = format!("{lpath}[{i}]");
            if !is_http_token(&h.name) {
                c.error(
                    &format!("{hpath}.name"),
                    format!("{:?} is not a valid HTTP header name", h.name),
                );
            }
            if let Some(first) = seen.insert(h.name.to_ascii_lowercase(), i) {
                seen.insert(h.name.to_ascii_lowercase(), first);
                c.error(
                    &format!("{hpath}.name"),
                    format!(
                        "header {:?} is listed twice in {list} (first in {lpath}[{first}])",
                        h.name
                    ),
                );
            }
            header_value(c, &format!("{hpath}.value"), &h.value, MAX_HEADER_VALUE);
        }
    }
    let rpath = format!("{path}.remove");
    too_many(c, &rpath, "headers", m.remove.len(), 16);
    let mut seen = BTreeSet::new();
    for (i, name) in m.remove.iter().enumerate() {
        if !is_http_token(name) {
            c.error(
                &format!("{rpath}[{i}]"),
                format!("{name:?} is not a valid HTTP header name"),
            );
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            c.error(
                &format!("{rpath}[{i}]"),
                format!("header {name:?} is listed twice in remove"),
            );
        }
    }
}

fn path_modifier(c: &mut Ctx<'_>, path: &str, m: &PathModifier) {
    let (wanted, other, value) = match m.modifier_type {
        PathModifierType::ReplaceFullPath => (
            "replaceFullPath",
            ("replacePrefixMatch", &m.replace_prefix_match),
            &m.replace_full_path,
        ),
        PathModifierType::ReplacePrefixMatch => (
            "replacePrefixMatch",
            ("replaceFullPath", &m.replace_full_path),
            &m.replace_prefix_match,
        ),
    };
    if other.1.is_some() {
        c.error(
            &format!("{path}.{}", other.0),
            format!("not allowed with type {:?}", m.modifier_type),
        );
    }
    match value {
        None => c.error(
            path,
            format!("type {:?} needs the field {wanted}", m.modifier_type),
        ),
        Some(v) => {
            let vpath = format!("{path}.{wanted}");
            if !v.starts_with('/') {
                c.error(&vpath, format!("{v:?} must start with '/'"));
            } else if v.len() > MAX_PATH {
                c.error(
                    &vpath,
                    format!(
                        "path is {} characters long, above the limit of {MAX_PATH}",
                        v.len()
                    ),
                );
            } else if v.contains(['?', '#']) || v.chars().any(|ch| ch.is_control() || ch == ' ') {
                c.error(
                    &vpath,
                    format!("{v:?} must not contain '?', '#', spaces or control characters"),
                );
            }
        }
    }
}

/// Group and kind of a reference to a Service, which default to the core Service.
fn service_group_kind(
    c: &mut Ctx<'_>,
    path: &str,
    group: Option<&str>,
    kind: Option<&str>,
) -> bool {
    let mut ok = true;
    if let Some(g) = group {
        if !g.is_empty() {
            c.error(
                &format!("{path}.group"),
                format!(
                    "group {g:?} is not supported: a backend must be a core Service (group \"\")"
                ),
            );
            ok = false;
        }
    }
    if let Some(k) = kind {
        if k != "Service" {
            c.error(
                &format!("{path}.kind"),
                format!("kind {k:?} is not supported: a backend must be a Service"),
            );
            ok = false;
        }
    }
    ok
}

/// The backendRef of a RequestMirror filter.
fn object_ref(c: &mut Ctx<'_>, path: &str, r: &BackendObjectRef, rev: &Revision) {
    if !service_group_kind(c, path, r.group.as_deref(), r.kind.as_deref()) {
        return;
    }
    reference(
        c,
        path,
        "mirror backendRef",
        &r.name,
        r.namespace.as_deref(),
        r.port,
        1,
        rev,
    );
}

/// Checks a reference to a Service; `weight` 0 makes a missing Service a warning.
#[allow(clippy::too_many_arguments)]
fn reference(
    c: &mut Ctx<'_>,
    path: &str,
    noun: &str,
    name: &str,
    namespace: Option<&str>,
    port: Option<u16>,
    weight: u32,
    rev: &Revision,
) {
    if !is_dns_label(name) {
        c.error(
            &format!("{path}.name"),
            format!("{name:?} is not a valid Service name: use {DNS_LABEL_RULE}"),
        );
        return;
    }
    if let Some(ns) = namespace {
        if !is_dns_label(ns) {
            c.error(
                &format!("{path}.namespace"),
                format!("{ns:?} is not a valid namespace: use {DNS_LABEL_RULE}"),
            );
            return;
        }
    }
    match port {
        None => c.error(
            path,
            format!("{noun} {name:?} needs a port: Gateway API requires one for a Service backend"),
        ),
        Some(0) => c.error(&format!("{path}.port"), "0 is not a valid port (1..65535)"),
        Some(_) => {}
    }
    let ns = namespace.unwrap_or(c.ns()).to_string();
    match c.service(rev, namespace, name) {
        None if weight == 0 => c.warning(
            path,
            format!(
                "{noun} {name:?} of {} does not name a Service in namespace {ns:?} (its weight is 0, so no request goes there)",
                c.what()
            ),
        ),
        None => c.error(
            path,
            format!("{noun} {name:?} of {} does not name a Service in namespace {ns:?}", c.what()),
        ),
        Some(svc) => {
            if let Some(p) = port.filter(|p| *p != 0) {
                if !has_port(&svc.value, p) {
                    c.error(&format!("{path}.port"), no_such_port(&svc.key, &svc.value, p));
                }
            }
        }
    }
}

fn backend_refs(
    c: &mut Ctx<'_>,
    rule_path: &str,
    refs: &[super::Spanned<HttpBackendRef>],
    rev: &Revision,
) {
    let path = format!("{rule_path}.backendRefs");
    too_many(c, &path, "backendRefs", refs.len(), 16);
    for (i, spanned) in refs.iter().enumerate() {
        let b = &spanned.value;
        let bpath = format!("{path}[{i}]");
        let weight = b.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            c.error(
                &format!("{bpath}.weight"),
                format!("weight {weight} is above the maximum of {MAX_WEIGHT}"),
            );
        }
        if service_group_kind(c, &bpath, b.group.as_deref(), b.kind.as_deref()) {
            reference(
                c,
                &bpath,
                "backendRef",
                &b.name,
                b.namespace.as_deref(),
                b.port,
                weight,
                rev,
            );
        }
        filters(c, &format!("{bpath}.filters"), &b.filters, false, rev);
    }
    if !refs.is_empty() && refs.iter().all(|b| b.value.weight == Some(0)) {
        c.warning(
            &path,
            "every backendRef of this rule has weight 0, so its requests are answered with HTTP 500",
        );
    }
}

/// A Gateway API duration (`^([0-9]{1,5}(h|m|s|ms)){1,4}$`) in milliseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let mut rest = s.as_bytes();
    let mut groups = 0;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let n: u64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = match rest {
            [b'm', b's', ..] => (1, 2),
            [b'h', ..] => (3_600_000, 1),
            [b'm', ..] => (60_000, 1),
            [b's', ..] => (1_000, 1),
            _ => return None,
        };
        rest = &rest[len..];
        total += n * unit_ms;
        groups += 1;
        if groups > 4 {
            return None;
        }
    }
    (groups > 0).then_some(total)
}

fn timeouts(c: &mut Ctx<'_>, path: &str, t: &HttpRouteTimeouts) {
    let mut parsed = |field: &str, value: &Option<String>| -> Option<u64> {
        let v = value.as_deref()?;
        let ms = parse_duration(v);
        if ms.is_none() {
            c.error(
                &format!("{path}.{field}"),
                format!(
                    "{v:?} is not a Gateway API duration: 1 to 4 groups of up to 5 digits and a unit \
                     (h, m, s, ms), such as \"10s\" or \"1m30s\"; \"0s\" disables the timeout"
                ),
            );
        }
        ms
    };
    let request = parsed("request", &t.request);
    let backend = parsed("backendRequest", &t.backend_request);
    if let (Some(r), Some(b)) = (request, backend) {
        if r != 0 && b > r {
            c.error(
                &format!("{path}.backendRequest"),
                format!(
                    "{:?} is longer than request {:?}; backendRequest must not exceed request",
                    t.backend_request.as_deref().unwrap_or_default(),
                    t.request.as_deref().unwrap_or_default()
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes that claim the same requests

/// Warns when two routes in the same namespace claim the same parent with an identical match:
/// valid Gateway API, which gives the requests to the route first in precedence order (oldest,
/// then alphabetical), but rarely what was meant.
fn overlapping_matches(rev: &Revision, trees: &Trees, out: &mut Vec<Diagnostic>) {
    // (kind, route namespace, parent namespace, parent name, port, match) -> first route
    type Claim = (Kind, String, String, String, Option<u16>, String);
    let mut claims: HashMap<Claim, (&ObjectKey, Pos)> = HashMap::new();
    let mut reported = BTreeSet::new();
    /// A route's parents and the (path, signature) of each of its matches.
    type RouteMatches<'r> = (
        Kind,
        &'r ObjectKey,
        &'r Pos,
        &'r [super::Spanned<ParentRef>],
        Vec<(String, String)>,
    );
    let mut routes: Vec<RouteMatches<'_>> = Vec::new();
    for r in &rev.http_routes {
        let mut matches = Vec::new();
        for (i, rule) in r.value.spec.rules.iter().enumerate() {
            if rule.value.matches.is_empty() {
                matches.push((
                    format!("spec.rules[{i}]"),
                    http_signature(&HttpRouteMatch::default()),
                ));
            }
            for (j, m) in rule.value.matches.iter().enumerate() {
                matches.push((
                    format!("spec.rules[{i}].matches[{j}]"),
                    http_signature(&m.value),
                ));
            }
        }
        routes.push((
            Kind::HttpRoute,
            &r.key,
            &r.pos,
            &r.value.spec.parent_refs,
            matches,
        ));
    }
    for r in &rev.grpc_routes {
        let mut matches = Vec::new();
        for (i, rule) in r.value.spec.rules.iter().enumerate() {
            if rule.value.matches.is_empty() {
                matches.push((format!("spec.rules[{i}]"), "*".to_string()));
            }
            for (j, m) in rule.value.matches.iter().enumerate() {
                matches.push((
                    format!("spec.rules[{i}].matches[{j}]"),
                    format!("{:?}", m.value),
                ));
            }
        }
        routes.push((
            Kind::GrpcRoute,
            &r.key,
            &r.pos,
            &r.value.spec.parent_refs,
            matches,
        ));
    }
    for (kind, key, pos, parents, matches) in routes {
        let tree = trees.get(&(kind, key.clone()));
        for p in parents {
            let p = &p.value;
            if p.kind.as_deref() != Some("Service") {
                continue;
            }
            let parent_ns = p.namespace.clone().unwrap_or_else(|| key.namespace.clone());
            for (path, signature) in &matches {
                let claim: Claim = (
                    kind,
                    key.namespace.clone(),
                    parent_ns.clone(),
                    p.name.clone(),
                    p.port,
                    signature.clone(),
                );
                let here = match tree {
                    Some(root) => locate(root, path).pos(&pos.file),
                    None => pos.clone(),
                };
                match claims.get(&claim) {
                    None => {
                        claims.insert(claim, (key, here));
                    }
                    Some((first, first_pos)) if *first != key => {
                        if reported.insert((
                            kind,
                            (*first).clone(),
                            key.clone(),
                            parent_ns.clone(),
                            p.name.clone(),
                        )) {
                            out.push(Diagnostic::warning(
                                here,
                                format!(
                                    "{path}: {kind} {key} has the same match as {kind} {first} ({first_pos}) \
                                     for Service {parent_ns}/{}; Gateway API precedence (oldest, then \
                                     alphabetical) gives those requests to {first}",
                                    p.name
                                ),
                            ));
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// A canonical form of an HTTP match: equal for matches that select the same requests as
/// written (defaults filled in, header names lowercased, lists sorted).
fn http_signature(m: &HttpRouteMatch) -> String {
    let (t, v) = match &m.path {
        Some(p) => (
            p.value.match_type.unwrap_or(PathMatchType::PathPrefix),
            p.value.value.clone().unwrap_or_else(|| "/".into()),
        ),
        None => (PathMatchType::PathPrefix, "/".into()),
    };
    let mut headers: Vec<String> = m
        .headers
        .iter()
        .map(|h| {
            format!(
                "{}:{:?}:{}",
                h.value.name.to_ascii_lowercase(),
                h.value.match_type.unwrap_or(ValueMatchType::Exact),
                h.value.value
            )
        })
        .collect();
    headers.sort();
    let mut query: Vec<String> = m
        .query_params
        .iter()
        .map(|h| {
            format!(
                "{}:{:?}:{}",
                h.value.name,
                h.value.match_type.unwrap_or(ValueMatchType::Exact),
                h.value.value
            )
        })
        .collect();
    query.sort();
    format!("{t:?} {v:?} {headers:?} {query:?} {:?}", m.method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_label("echo-v1"));
        assert!(!is_dns_label("Echo"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain("a_b"));
        assert!(label_key_problem("app.kubernetes.io/name").is_none());
        assert!(label_key_problem("version").is_none());
        assert!(label_key_problem("a/b/c").is_some());
        assert!(label_key_problem("Bad_Prefix/x").is_some());
        assert!(label_key_problem("-x").is_some());
        assert!(is_qualified_part("", true));
        assert!(is_qualified_part("v1.2_x", true));
        assert!(!is_qualified_part("v1 ", true));
        assert!(is_http_token("x-request-id"));
        assert!(!is_http_token("x request"));
        assert!(!is_http_token(":authority"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s"), Some(0));
        assert_eq!(parse_duration("10s"), Some(10_000));
        assert_eq!(parse_duration("1h2m3s4ms"), Some(3_723_004));
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("99999h"), Some(99_999 * 3_600_000));
        for bad in [
            "",
            "-1s",
            "1",
            "1d",
            "100000s",
            "1s1s1s1s1s",
            "1.5s",
            "s",
            "10 s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn locate_follows_paths() {
        let file: Arc<str> = Arc::from("f.yaml");
        let docs = super::super::yaml::parse(
            &file,
            b"spec:\n  rules:\n  - matches:\n    - path: {value: /a}\n",
            &Default::default(),
        )
        .unwrap();
        let root = &docs[0].root;
        let n = locate(root, "spec.rules[0].matches[0].path.value");
        assert_eq!((n.line, n.column), (4, 21));
        // Missing parts stop at the deepest node that exists.
        let n = locate(root, "spec.rules[0].matches[3].path");
        assert_eq!((n.line, n.column), (4, 7));
    }
}
