//! Route filters and backendRefs: header modifiers, redirects, URL rewrites, mirrors, and the
//! Services (clusters) that backendRefs and mirrors name.
//!
//! Every field is either compiled or refused with an error that names it. Header values are
//! literal in Gateway API, while Envoy reads `%` in them as the start of a substitution, so `%`
//! is written as `%%`.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{
    HostRewriteSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::{RedirectAction, RouteAction};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;

use super::findings::Findings;
use super::matches::{escape_regex, is_header_name, regex, MatchedPath};
use super::services::{PortEntry, Protocol, ServiceIndex};
use crate::manifest::model::{
    HeaderModifier, HttpBackendRef, HttpFilterType, HttpRouteFilter, PathModifier,
    PathModifierType, RequestMirror, RequestRedirect, UrlRewrite,
};
use crate::manifest::{ObjectKey, Pos, Spanned};

/// Gateway API's upper bound for a backendRef weight.
const MAX_WEIGHT: u32 = 1_000_000;

/// The route being compiled, for resolving references and naming it in messages.
pub(crate) struct RouteCtx<'a> {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: &'static str,
    pub key: &'a ObjectKey,
    pub services: &'a ServiceIndex,
}

impl RouteCtx<'_> {
    /// `HTTPRoute ns/name: FIELD`, the start of every message about the route.
    pub fn at(&self, field: &str) -> String {
        format!("{} {}: {field}", self.kind, self.key)
    }
}

/// Header additions and removals, for a request or a response.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct HeaderOps {
    pub add: Vec<HeaderValueOption>,
    pub remove: Vec<String>,
}

/// A `ReplaceFullPath` or `ReplacePrefixMatch` path modifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathChange {
    Full(String),
    Prefix(String),
}

#[derive(Clone, Debug)]
pub(crate) struct Redirect {
    scheme: Option<String>,
    hostname: Option<String>,
    port: Option<u16>,
    status: RedirectResponseCode,
    path: Option<PathChange>,
}

#[derive(Clone, Debug)]
pub(crate) struct Rewrite {
    hostname: Option<String>,
    path: Option<PathChange>,
}

/// The filters of one rule (or of one backendRef), compiled.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filters {
    pub request: HeaderOps,
    pub response: HeaderOps,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub mirrors: Vec<RequestMirrorPolicy>,
}

/// Where a filter list sits; each place supports different filter types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    HttpRule,
    GrpcRule,
    Backend,
}

fn type_name(t: HttpFilterType) -> &'static str {
    match t {
        HttpFilterType::RequestHeaderModifier => "RequestHeaderModifier",
        HttpFilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
        HttpFilterType::RequestRedirect => "RequestRedirect",
        HttpFilterType::URLRewrite => "URLRewrite",
        HttpFilterType::RequestMirror => "RequestMirror",
    }
}

fn payload_field(t: HttpFilterType) -> &'static str {
    match t {
        HttpFilterType::RequestHeaderModifier => "requestHeaderModifier",
        HttpFilterType::ResponseHeaderModifier => "responseHeaderModifier",
        HttpFilterType::RequestRedirect => "requestRedirect",
        HttpFilterType::URLRewrite => "urlRewrite",
        HttpFilterType::RequestMirror => "requestMirror",
    }
}

pub(crate) fn compile_filters(
    filters: &[Spanned<HttpRouteFilter>],
    field: &str,
    scope: Scope,
    ctx: &RouteCtx<'_>,
    findings: &mut Findings,
) -> Filters {
    let mut out = Filters::default();
    let mut seen = BTreeSet::new();
    for (i, spanned) in filters.iter().enumerate() {
        let filter = &spanned.value;
        let pos = &spanned.pos;
        let field = format!("{field}[{i}]");
        let t = filter.filter_type;
        let supported = match scope {
            Scope::HttpRule => true,
            Scope::GrpcRule => matches!(
                t,
                HttpFilterType::RequestHeaderModifier
                    | HttpFilterType::ResponseHeaderModifier
                    | HttpFilterType::RequestMirror
            ),
            Scope::Backend => matches!(
                t,
                HttpFilterType::RequestHeaderModifier | HttpFilterType::ResponseHeaderModifier
            ),
        };
        if !supported {
            let place = match scope {
                Scope::GrpcRule => "in a GRPCRoute",
                _ => "on a backendRef (put it on the rule)",
            };
            findings.error(
                pos,
                ctx.at(&format!(
                    "{field}.type: filter {} is not supported {place}",
                    type_name(t)
                )),
            );
            continue;
        }
        let present = [
            (
                filter.request_header_modifier.is_some(),
                HttpFilterType::RequestHeaderModifier,
            ),
            (
                filter.response_header_modifier.is_some(),
                HttpFilterType::ResponseHeaderModifier,
            ),
            (
                filter.request_redirect.is_some(),
                HttpFilterType::RequestRedirect,
            ),
            (filter.url_rewrite.is_some(), HttpFilterType::URLRewrite),
            (
                filter.request_mirror.is_some(),
                HttpFilterType::RequestMirror,
            ),
        ];
        let mut payload_ok = true;
        for (is_set, other) in present {
            if is_set && other != t {
                findings.error(
                    pos,
                    ctx.at(&format!(
                        "{field}.{}: set on a filter of type {}; only {} may be set",
                        payload_field(other),
                        type_name(t),
                        payload_field(t)
                    )),
                );
                payload_ok = false;
            }
        }
        if !payload_ok {
            continue;
        }
        if t != HttpFilterType::RequestMirror && !seen.insert(type_name(t)) {
            findings.error(
                pos,
                ctx.at(&format!(
                    "{field}.type: filter {} appears twice in the list",
                    type_name(t)
                )),
            );
            continue;
        }
        let missing = || {
            ctx.at(&format!(
                "{field}.{}: required by type {}",
                payload_field(t),
                type_name(t)
            ))
        };
        match t {
            HttpFilterType::RequestHeaderModifier => match &filter.request_header_modifier {
                Some(m) => {
                    out.request = header_ops(
                        m,
                        &format!("{field}.requestHeaderModifier"),
                        pos,
                        ctx,
                        findings,
                    )
                }
                None => findings.error(pos, missing()),
            },
            HttpFilterType::ResponseHeaderModifier => match &filter.response_header_modifier {
                Some(m) => {
                    out.response = header_ops(
                        m,
                        &format!("{field}.responseHeaderModifier"),
                        pos,
                        ctx,
                        findings,
                    )
                }
                None => findings.error(pos, missing()),
            },
            HttpFilterType::RequestRedirect => match &filter.request_redirect {
                Some(r) => {
                    out.redirect =
                        redirect(r, &format!("{field}.requestRedirect"), pos, ctx, findings)
                }
                None => findings.error(pos, missing()),
            },
            HttpFilterType::URLRewrite => match &filter.url_rewrite {
                Some(r) => {
                    out.rewrite = rewrite(r, &format!("{field}.urlRewrite"), pos, ctx, findings)
                }
                None => findings.error(pos, missing()),
            },
            HttpFilterType::RequestMirror => match &filter.request_mirror {
                Some(m) => {
                    if let Some(policy) =
                        mirror(m, &format!("{field}.requestMirror"), pos, ctx, findings)
                    {
                        out.mirrors.push(policy);
                    }
                }
                None => findings.error(pos, missing()),
            },
        }
    }
    if out.redirect.is_some() && out.rewrite.is_some() {
        findings.error(
            filters.first().map(|f| &f.pos).unwrap_or(&Pos::default()),
            ctx.at(&format!(
                "{field}: a rule cannot have both a RequestRedirect and a URLRewrite filter"
            )),
        );
    }
    if out.redirect.is_some() && !out.mirrors.is_empty() {
        findings.error(
            filters.first().map(|f| &f.pos).unwrap_or(&Pos::default()),
            ctx.at(&format!(
                "{field}: a rule cannot have both a RequestRedirect and a RequestMirror filter \
                 (a redirected request is not forwarded, so there is nothing to mirror)"
            )),
        );
    }
    out
}

fn header_ops(
    m: &HeaderModifier,
    field: &str,
    pos: &Pos,
    ctx: &RouteCtx<'_>,
    findings: &mut Findings,
) -> HeaderOps {
    let mut ops = HeaderOps::default();
    for (list, items, action) in [
        ("set", &m.set, HeaderAppendAction::OverwriteIfExistsOrAdd),
        ("add", &m.add, HeaderAppendAction::AppendIfExistsOrAdd),
    ] {
        let mut seen = BTreeSet::new();
        for (i, header) in items.iter().enumerate() {
            let field = format!("{field}.{list}[{i}]");
            let Some(name) = modifiable_header(&header.name, &field, pos, ctx, findings) else {
                continue;
            };
            if !seen.insert(name.clone()) {
                findings.error(
                    pos,
                    ctx.at(&format!(
                        "{field}.name: header {:?} is listed twice in {list} (names are case-insensitive)",
                        header.name
                    )),
                );
                continue;
            }
            if header.value.contains(['\r', '\n', '\0']) {
                findings.error(
                    pos,
                    ctx.at(&format!(
                        "{field}.value: a header value cannot contain CR, LF or NUL"
                    )),
                );
                continue;
            }
            ops.add.push(HeaderValueOption {
                header: Some(HeaderValue {
                    key: name,
                    value: header.value.replace('%', "%%"),
                    raw_value: Vec::new(),
                }),
                append_action: action as i32,
                keep_empty_value: header.value.is_empty(),
                ..Default::default()
            });
        }
    }
    let mut seen = BTreeSet::new();
    for (i, name) in m.remove.iter().enumerate() {
        let field = format!("{field}.remove[{i}]");
        let Some(name) = modifiable_header(name, &field, pos, ctx, findings) else {
            continue;
        };
        if seen.insert(name.clone()) {
            ops.remove.push(name);
        } else {
            findings.error(
                pos,
                ctx.at(&format!("{field}: header {name:?} is listed twice")),
            );
        }
    }
    ops
}

/// The lowercased header name, if Envoy lets a route change it.
fn modifiable_header(
    name: &str,
    field: &str,
    pos: &Pos,
    ctx: &RouteCtx<'_>,
    findings: &mut Findings,
) -> Option<String> {
    if !is_header_name(name) {
        findings.error(
            pos,
            ctx.at(&format!(
                "{field}: {name:?} is not a valid HTTP header name"
            )),
        );
        return None;
    }
    let lower = name.to_ascii_lowercase();
    if lower == "host" {
        // Envoy refuses to add or remove Host (and pseudo-headers) in header mutations.
        findings.error(
            pos,
            ctx.at(&format!(
                "{field}: the Host header cannot be modified this way; use a URLRewrite filter \
                 with a hostname"
            )),
        );
        return None;
    }
    Some(lower)
}

fn path_change(
    m: &PathModifier,
    field: &str,
    pos: &Pos,
    ctx: &RouteCtx<'_>,
    findings: &mut Findings,
) -> Option<PathChange> {
    match m.modifier_type {
        PathModifierType::ReplaceFullPath => {
            if m.replace_prefix_match.is_some() {
                findings.error(
                    pos,
                    ctx.at(&format!(
                        "{field}.replacePrefixMatch: not allowed with type ReplaceFullPath"
                    )),
                );
                return None;
            }
            match m.replace_full_path.as_deref() {
                Some(p) if valid_replacement_path(p) && !p.is_empty() => {
                    Some(PathChange::Full(p.into()))
                }
                Some(p) => {
                    findings.error(
                        pos,
                        ctx.at(&format!(
                            "{field}.replaceFullPath: {p:?} must start with '/' and contain no \
                             '?', '#' or spaces"
                        )),
                    );
                    None
                }
                None => {
                    findings.error(
                        pos,
                        ctx.at(&format!(
                            "{field}.replaceFullPath: required by type ReplaceFullPath"
                        )),
                    );
                    None
                }
            }
        }
        PathModifierType::ReplacePrefixMatch => {
            if m.replace_full_path.is_some() {
                findings.error(
                    pos,
                    ctx.at(&format!(
                        "{field}.replaceFullPath: not allowed with type ReplacePrefixMatch"
                    )),
                );
                return None;
            }
            match m.replace_prefix_match.as_deref() {
                Some(p) if p.is_empty() || valid_replacement_path(p) => {
                    Some(PathChange::Prefix(p.into()))
                }
                Some(p) => {
                    findings.error(
                        pos,
                        ctx.at(&format!(
                            "{field}.replacePrefixMatch: {p:?} must start with '/' and contain no \
                             '?', '#' or spaces"
                        )),
                    );
                    None
                }
                None => {
                    findings.error(
                        pos,
                        ctx.at(&format!(
                            "{field}.replacePrefixMatch: required by type ReplacePrefixMatch"
                        )),
                    );
                    None
                }
            }
        }
    }
}

fn valid_replacement_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains(['?', '#'])
        && !p.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A hostname as Gateway API's `PreciseHostname`: DNS labels, no port, no wildcard.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn redirect(
    r: &RequestRedirect,
    field: &str,
    pos: &Pos,
    ctx: &RouteCtx<'_>,
    findings: &mut Findings,
) -> Option<Redirect> {
    let before = findings.errors.len();
    if let Some(scheme) = &r.scheme {
        if scheme != "http" && scheme != "https" {
            findings.error(
                pos,
                ctx.at(&format!(
                    "{field}.scheme: {scheme:?} must be \"http\" or \"https\""
                )),
            );
        }
    }
    if let Some(host) = &r.hostname {
        if !valid_hostname(host) {
            findings.error(
                pos,
                ctx.at(&format!("{field}.hostname: {host:?} is not a hostname")),
            );
        }
    }
    if r.port == Some(0) {
        findings.error(pos, ctx.at(&format!("{field}.port: 0 is not a valid port")));
    }
    let status = match r.status_code.unwrap_or(302) {
        301 => RedirectResponseCode::MovedPermanently,
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        other => {
            findings.error(
                pos,
                ctx.at(&format!(
                    "{field}.statusCode: {other} is not one of 301, 302, 303, 307, 308"
                )),
            );
            RedirectResponseCode::Found
        }
    };
    let path = r
        .path
        .as_ref()
        .and_then(|p| path_change(p, &format!("{field}.path"), pos, ctx, findings));
    (findings.errors.len() == before).then(|| Redirect {
        scheme: r.scheme.clone(),
        hostname: r.hostname.clone(),
        port: r.port,
        status,
        path,
    })
}

fn rewrite(
    r: &UrlRewrite,
    field: &str,
    pos: &Pos,
    ctx: &RouteCtx<'_>,
    findings: &mut Findings,
) -> Option<Rewrite> {
    let before = findings.errors.len();
    if let Some(host) = &r.hostname {
        if !valid_hostname(host) {
            findings.error(
                pos,
                ctx.at(&format!("{field}.hostname: {host:?} is not a hostname")),
            );
        }
    }
    let path = r
        .path
        .as_ref()
        .and_then(|p| path_change(p, &format!("{field}.path"), pos, ctx, findings));
    (findings.errors.len() == before).then(|| Rewrite {
        hostname: r.hostname.clone(),
        path,
    })
}

/// How Envoy replaces a matched path prefix.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PrefixReplacement {
    Prefix(String),
    Regex(RegexMatchAndSubstitute),
}

/// Gateway API's `ReplacePrefixMatch` for a match on `matched` (no trailing `/`, or `/`).
/// Envoy's `prefix_rewrite` swaps the matched characters, which is right except at the edges:
/// replacing `/foo` with `/` would turn `/foo/bar` into `//bar`, so an empty or `/` replacement
/// becomes a regex that also eats the separators; and a match on `/` keeps the separator after
/// the new prefix (`/bar` with `/xyz` gives `/xyz/bar`, not `/xyzbar`). A trailing `/` of the
/// replacement is dropped, as Gateway API's examples have it (`/foo/bar` with `/xyz/` gives
/// `/xyz/bar`).
pub(crate) fn replace_prefix(matched: &str, replacement: &str) -> PrefixReplacement {
    let replacement = replacement.trim_end_matches('/');
    if matched == "/" {
        PrefixReplacement::Prefix(format!("{replacement}/"))
    } else if replacement.is_empty() {
        PrefixReplacement::Regex(RegexMatchAndSubstitute {
            pattern: Some(regex(&format!("^{}/*", escape_regex(matched)))),
            substitution: "/".into(),
        })
    } else {
        PrefixReplacement::Prefix(replacement.into())
    }
}

/// A literal for the substitution of an RE2 rewrite, where `\` starts a back-reference.
fn literal_substitution(s: &str) -> String {
    s.replace('\\', "\\\\")
}

fn prefix_of(path: &MatchedPath) -> Result<&str, String> {
    match path {
        MatchedPath::Prefix(p) => Ok(p),
        _ => Err("ReplacePrefixMatch needs a PathPrefix match; this match is not one".into()),
    }
}

impl Redirect {
    /// The redirect for one match of the rule.
    pub fn to_action(&self, path: &MatchedPath) -> Result<RedirectAction, String> {
        let path_rewrite_specifier = match &self.path {
            None => None,
            Some(PathChange::Full(p)) => Some(PathRewriteSpecifier::PathRedirect(p.clone())),
            Some(PathChange::Prefix(p)) => Some(match replace_prefix(prefix_of(path)?, p) {
                PrefixReplacement::Prefix(p) => PathRewriteSpecifier::PrefixRewrite(p),
                PrefixReplacement::Regex(r) => PathRewriteSpecifier::RegexRewrite(r),
            }),
        };
        Ok(RedirectAction {
            host_redirect: self.hostname.clone().unwrap_or_default(),
            port_redirect: self.port.map(u32::from).unwrap_or(0),
            response_code: self.status as i32,
            strip_query: false,
            scheme_rewrite_specifier: self
                .scheme
                .clone()
                .map(SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier,
        })
    }
}

impl Rewrite {
    /// Writes the rewrite into the forwarding action of one match of the rule.
    pub fn apply(&self, path: &MatchedPath, action: &mut RouteAction) -> Result<(), String> {
        if let Some(host) = &self.hostname {
            action.host_rewrite_specifier =
                Some(HostRewriteSpecifier::HostRewriteLiteral(host.clone()));
        }
        match &self.path {
            None => {}
            Some(PathChange::Full(p)) => {
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex("^/.*$")),
                    substitution: literal_substitution(p),
                });
            }
            Some(PathChange::Prefix(p)) => match replace_prefix(prefix_of(path)?, p) {
                PrefixReplacement::Prefix(p) => action.prefix_rewrite = p,
                PrefixReplacement::Regex(r) => action.regex_rewrite = Some(r),
            },
        }
        Ok(())
    }
}

fn mirror(
    m: &RequestMirror,
    field: &str,
    pos: &Pos,
    ctx: &RouteCtx<'_>,
    findings: &mut Findings,
) -> Option<RequestMirrorPolicy> {
    let b = &m.backend_ref;
    let port = match resolve_service_port(
        ctx,
        b.group.as_deref(),
        b.kind.as_deref(),
        b.namespace.as_deref(),
        &b.name,
        b.port,
    ) {
        Ok(port) => port,
        Err(e) => {
            findings.error(pos, ctx.at(&format!("{field}.backendRef: {e}")));
            return None;
        }
    };
    let fraction = match (m.percent, &m.fraction) {
        (Some(_), Some(_)) => {
            findings.error(
                pos,
                ctx.at(&format!("{field}: set percent or fraction, not both")),
            );
            return None;
        }
        (Some(p), None) if p > 100 => {
            findings.error(
                pos,
                ctx.at(&format!("{field}.percent: {p} is more than 100")),
            );
            return None;
        }
        (Some(p), None) => (p < 100).then_some(FractionalPercent {
            numerator: p,
            denominator: DenominatorType::Hundred as i32,
        }),
        (None, Some(f)) => {
            let denominator = f.denominator.unwrap_or(100);
            if denominator == 0 || f.numerator > denominator {
                findings.error(
                    pos,
                    ctx.at(&format!(
                        "{field}.fraction: {}/{denominator} is not a fraction between 0 and 1",
                        f.numerator
                    )),
                );
                return None;
            }
            (f.numerator < denominator).then(|| match denominator {
                100 => FractionalPercent {
                    numerator: f.numerator,
                    denominator: DenominatorType::Hundred as i32,
                },
                10_000 => FractionalPercent {
                    numerator: f.numerator,
                    denominator: DenominatorType::TenThousand as i32,
                },
                1_000_000 => FractionalPercent {
                    numerator: f.numerator,
                    denominator: DenominatorType::Million as i32,
                },
                d => FractionalPercent {
                    // Rounded down to a millionth: the finest Envoy offers.
                    numerator: u32::try_from(u64::from(f.numerator) * 1_000_000 / u64::from(d))
                        .unwrap_or(1_000_000),
                    denominator: DenominatorType::Million as i32,
                },
            })
        }
        (None, None) => None,
    };
    Some(RequestMirrorPolicy {
        cluster: port.cluster.clone(),
        runtime_fraction: fraction.map(|f| RuntimeFractionalPercent {
            default_value: Some(f),
            runtime_key: String::new(),
        }),
        ..Default::default()
    })
}

/// The served Service port a backendRef or mirror names, or why there is none.
pub(crate) fn resolve_service_port<'a>(
    ctx: &RouteCtx<'a>,
    group: Option<&str>,
    kind: Option<&str>,
    namespace: Option<&str>,
    name: &str,
    port: Option<u16>,
) -> Result<&'a PortEntry, String> {
    let group = group.unwrap_or("");
    let kind = kind.unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err(format!(
            "only Services (group \"\", kind \"Service\") can be backends, not group {group:?} kind {kind:?}"
        ));
    }
    let namespace = namespace.unwrap_or(&ctx.key.namespace);
    let Some(service) = ctx.services.get(namespace, name) else {
        return Err(format!(
            "{name:?} does not name a Service in namespace {namespace:?}"
        ));
    };
    match port {
        Some(n) => service.served_port(n),
        None => match service.ports.as_slice() {
            [only] => service.served_port(only.port),
            _ => Err(format!(
                "port is required: Service {} has {} ports",
                service.key,
                service.ports.len()
            )),
        },
    }
}

/// One backend with a non-zero weight.
#[derive(Clone, Debug)]
pub(crate) struct Backend {
    pub cluster: String,
    pub weight: u32,
    pub request: HeaderOps,
    pub response: HeaderOps,
}

/// The backends of a rule that take traffic (weight > 0). A weight-0 backendRef is left out
/// without being resolved: it takes no traffic, and the loader already warned when its Service
/// is missing.
pub(crate) fn compile_backends(
    refs: &[Spanned<HttpBackendRef>],
    field: &str,
    ctx: &RouteCtx<'_>,
    findings: &mut Findings,
) -> Vec<Backend> {
    let grpc = ctx.kind == "GRPCRoute";
    let mut out = Vec::new();
    let mut total: u64 = 0;
    for (i, spanned) in refs.iter().enumerate() {
        let b = &spanned.value;
        let pos = &spanned.pos;
        let field = format!("{field}[{i}]");
        let weight = b.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            findings.error(
                pos,
                ctx.at(&format!(
                    "{field}.weight: {weight} is more than {MAX_WEIGHT}"
                )),
            );
            continue;
        }
        if weight == 0 {
            continue;
        }
        let port = match resolve_service_port(
            ctx,
            b.group.as_deref(),
            b.kind.as_deref(),
            b.namespace.as_deref(),
            &b.name,
            b.port,
        ) {
            Ok(port) => port,
            Err(e) => {
                findings.error(pos, ctx.at(&format!("{field}: {e}")));
                continue;
            }
        };
        if grpc && port.protocol != Some(Protocol::Http2) {
            findings.error(
                pos,
                ctx.at(&format!(
                    "{field}: port {} of Service {}/{} speaks HTTP/1.1, but gRPC needs HTTP/2; set \
                     its appProtocol to grpc or kubernetes.io/h2c (or name it grpc-...)",
                    port.port,
                    b.namespace.as_deref().unwrap_or(&ctx.key.namespace),
                    b.name
                )),
            );
            continue;
        }
        let filters = compile_filters(
            &b.filters,
            &format!("{field}.filters"),
            Scope::Backend,
            ctx,
            findings,
        );
        total += u64::from(weight);
        out.push(Backend {
            cluster: port.cluster.clone(),
            weight,
            request: filters.request,
            response: filters.response,
        });
    }
    if total > u64::from(u32::MAX) {
        findings.error(
            refs.first().map(|r| &r.pos).unwrap_or(&Pos::default()),
            ctx.at(&format!(
                "{field}: the weights add up to {total}, more than Envoy accepts ({})",
                u32::MAX
            )),
        );
    }
    out
}
