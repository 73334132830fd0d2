//! HTTPRoute and GRPCRoute matches as Envoy `RouteMatch`es, with the specificity that orders
//! them.
//!
//! Path matches: `Exact` is Envoy's `path`; `PathPrefix` is `path_separated_prefix`, which
//! matches whole path elements as Gateway API requires (`/foo` matches `/foo` and `/foo/bar`,
//! not `/foobar`), with a trailing `/` of the value ignored and `/` itself a plain `prefix`;
//! `RegularExpression` is a `safe_regex` (RE2, matched against the whole path).
//!
//! Precedence (Gateway API, continuing on ties): an `Exact` path, then a `RegularExpression`
//! path (its order is left to implementations; before prefixes, so that a regex rule is not
//! shadowed by a catch-all `/`, as Envoy Gateway does), then `PathPrefix` paths, each by the
//! number of characters of the value; then a method match; then the most header matches; then
//! the most query parameter matches. For GRPCRoute: the most characters of service, then of
//! method, then the most header matches.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, QueryParameterMatcher, RouteMatch};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};

use super::findings::Findings;
use crate::manifest::model::{
    GrpcRouteMatch, HeaderMatch, HttpMethod, HttpRouteMatch, PathMatchType, ValueMatchType,
};
use crate::manifest::{Pos, Spanned};

/// Higher sorts first, compared element by element.
pub(crate) type Specificity = [usize; 5];

/// What the path part of a match was, as rewrites need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MatchedPath {
    /// A `PathPrefix` match: the value without trailing `/`, or `/` itself.
    Prefix(String),
    Exact,
    Regex,
}

pub(crate) struct CompiledMatch {
    pub route_match: RouteMatch,
    pub specificity: Specificity,
    pub path: MatchedPath,
}

/// The match every rule without matches has: path prefix `/`.
pub(crate) fn match_everything() -> CompiledMatch {
    CompiledMatch {
        route_match: RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        },
        specificity: [0, 1, 0, 0, 0],
        path: MatchedPath::Prefix("/".into()),
    }
}

const EXACT_CLASS: usize = 2;
const REGEX_CLASS: usize = 1;
const PREFIX_CLASS: usize = 0;

pub(crate) fn compile_http_match(
    m: &Spanned<HttpRouteMatch>,
    field: &str,
    findings: &mut Findings,
) -> Option<CompiledMatch> {
    let errors_before = findings.errors.len();
    let (path_specifier, class, length, path) = match &m.path {
        None => (
            PathSpecifier::Prefix("/".into()),
            PREFIX_CLASS,
            1,
            MatchedPath::Prefix("/".into()),
        ),
        Some(p) => {
            let value = p.value.value.as_deref().unwrap_or("/");
            let field = format!("{field}.path");
            match p.value.match_type.unwrap_or(PathMatchType::PathPrefix) {
                PathMatchType::Exact => {
                    check_path(value, &field, &p.pos, findings);
                    (
                        PathSpecifier::Path(value.into()),
                        EXACT_CLASS,
                        value.len(),
                        MatchedPath::Exact,
                    )
                }
                PathMatchType::PathPrefix => {
                    check_path(value, &field, &p.pos, findings);
                    let trimmed = value.trim_end_matches('/');
                    if trimmed.is_empty() {
                        (
                            PathSpecifier::Prefix("/".into()),
                            PREFIX_CLASS,
                            1,
                            MatchedPath::Prefix("/".into()),
                        )
                    } else {
                        (
                            PathSpecifier::PathSeparatedPrefix(trimmed.into()),
                            PREFIX_CLASS,
                            trimmed.len(),
                            MatchedPath::Prefix(trimmed.into()),
                        )
                    }
                }
                PathMatchType::RegularExpression => {
                    check_regex(value, &format!("{field}.value"), &p.pos, findings);
                    (
                        PathSpecifier::SafeRegex(regex(value)),
                        REGEX_CLASS,
                        value.len(),
                        MatchedPath::Regex,
                    )
                }
            }
        }
    };

    let mut headers = header_matchers(&m.headers, &format!("{field}.headers"), findings);
    let header_count = headers.len();
    if let Some(method) = m.method {
        headers.push(exact_header(":method", method_name(method)));
    }
    let query_parameters =
        query_matchers(&m.query_params, &format!("{field}.queryParams"), findings);
    if findings.errors.len() > errors_before {
        return None;
    }
    Some(CompiledMatch {
        specificity: [
            class,
            length,
            usize::from(m.method.is_some()),
            header_count,
            query_parameters.len(),
        ],
        route_match: RouteMatch {
            path_specifier: Some(path_specifier),
            headers,
            query_parameters,
            ..Default::default()
        },
        path,
    })
}

/// A GRPCRoute match. The request path of a gRPC call is `/SERVICE/METHOD`.
pub(crate) fn compile_grpc_match(
    m: &Spanned<GrpcRouteMatch>,
    field: &str,
    findings: &mut Findings,
) -> Option<CompiledMatch> {
    let errors_before = findings.errors.len();
    let (path_specifier, service_len, method_len) = match &m.method {
        None => (PathSpecifier::Prefix("/".into()), 0, 0),
        Some(method_match) => {
            let field = format!("{field}.method");
            let service = method_match.service.as_deref().filter(|s| !s.is_empty());
            let method = method_match.method.as_deref().filter(|s| !s.is_empty());
            let lengths = (service.map_or(0, str::len), method.map_or(0, str::len));
            match method_match.match_type.unwrap_or(ValueMatchType::Exact) {
                ValueMatchType::Exact => {
                    if let Some(s) = service {
                        if !is_grpc_service(s) {
                            findings.error(
                                &m.pos,
                                format!("{field}.service: {s:?} is not a gRPC service name (such as \"pkg.v1.Echo\")"),
                            );
                        }
                    }
                    if let Some(mm) = method {
                        if !is_grpc_method(mm) {
                            findings.error(
                                &m.pos,
                                format!("{field}.method: {mm:?} is not a gRPC method name (such as \"Echo\")"),
                            );
                        }
                    }
                    let spec = match (service, method) {
                        (Some(s), Some(mm)) => PathSpecifier::Path(format!("/{s}/{mm}")),
                        (Some(s), None) => PathSpecifier::Prefix(format!("/{s}/")),
                        (None, Some(mm)) => {
                            PathSpecifier::SafeRegex(regex(&format!("/[^/]+/{}", escape_regex(mm))))
                        }
                        (None, None) => {
                            findings.error(
                                &m.pos,
                                format!("{field}: an Exact method match needs a service, a method or both"),
                            );
                            PathSpecifier::Prefix("/".into())
                        }
                    };
                    (spec, lengths.0, lengths.1)
                }
                ValueMatchType::RegularExpression => {
                    if let Some(s) = service {
                        check_regex(s, &format!("{field}.service"), &m.pos, findings);
                    }
                    if let Some(mm) = method {
                        check_regex(mm, &format!("{field}.method"), &m.pos, findings);
                    }
                    let pattern = format!(
                        "/(?:{})/(?:{})",
                        service.unwrap_or("[^/]+"),
                        method.unwrap_or("[^/]+")
                    );
                    (
                        PathSpecifier::SafeRegex(regex(&pattern)),
                        lengths.0,
                        lengths.1,
                    )
                }
            }
        }
    };
    let headers = header_matchers(&m.headers, &format!("{field}.headers"), findings);
    if findings.errors.len() > errors_before {
        return None;
    }
    Some(CompiledMatch {
        specificity: [service_len, method_len, headers.len(), 0, 0],
        route_match: RouteMatch {
            path_specifier: Some(path_specifier),
            headers,
            ..Default::default()
        },
        path: MatchedPath::Regex,
    })
}

fn header_matchers(
    matches: &[Spanned<HeaderMatch>],
    field: &str,
    findings: &mut Findings,
) -> Vec<HeaderMatcher> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, h) in matches.iter().enumerate() {
        let field = format!("{field}[{i}]");
        if !is_header_name(&h.name) {
            findings.error(
                &h.pos,
                format!("{field}.name: {:?} is not a valid HTTP header name", h.name),
            );
            continue;
        }
        let name = h.name.to_ascii_lowercase();
        if !seen.insert(name.clone()) {
            findings.error(
                &h.pos,
                format!(
                    "{field}.name: header {:?} is matched twice (names are case-insensitive)",
                    h.name
                ),
            );
            continue;
        }
        let pattern = match h.match_type.unwrap_or(ValueMatchType::Exact) {
            ValueMatchType::Exact => MatchPattern::Exact(h.value.value.clone()),
            ValueMatchType::RegularExpression => {
                check_regex(&h.value.value, &format!("{field}.value"), &h.pos, findings);
                MatchPattern::SafeRegex(regex(&h.value.value))
            }
        };
        out.push(HeaderMatcher {
            name,
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: false,
            })),
            ..Default::default()
        });
    }
    out
}

fn query_matchers(
    matches: &[Spanned<HeaderMatch>],
    field: &str,
    findings: &mut Findings,
) -> Vec<QueryParameterMatcher> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, q) in matches.iter().enumerate() {
        let field = format!("{field}[{i}]");
        if q.name.is_empty()
            || q.name.contains(['&', '=', '#', '?'])
            || q.name.chars().any(char::is_whitespace)
        {
            findings.error(
                &q.pos,
                format!(
                    "{field}.name: {:?} is not a valid query parameter name",
                    q.name
                ),
            );
            continue;
        }
        // Query parameter names are case-sensitive in Gateway API.
        if !seen.insert(q.name.clone()) {
            findings.error(
                &q.pos,
                format!(
                    "{field}.name: query parameter {:?} is matched twice",
                    q.name
                ),
            );
            continue;
        }
        let pattern = match q.match_type.unwrap_or(ValueMatchType::Exact) {
            ValueMatchType::Exact => MatchPattern::Exact(q.value.value.clone()),
            ValueMatchType::RegularExpression => {
                check_regex(&q.value.value, &format!("{field}.value"), &q.pos, findings);
                MatchPattern::SafeRegex(regex(&q.value.value))
            }
        };
        out.push(QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(pattern),
                    ignore_case: false,
                },
            )),
        });
    }
    out
}

pub(crate) fn exact_header(name: &str, value: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(value.into())),
            ignore_case: false,
        })),
        ..Default::default()
    }
}

fn method_name(method: HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Head => "HEAD",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Connect => "CONNECT",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Trace => "TRACE",
        HttpMethod::Patch => "PATCH",
    }
}

/// An RE2 matcher (Envoy's default engine).
pub(crate) fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.into(),
        engine_type: None,
    }
}

/// Escapes the characters RE2 gives a meaning to.
pub(crate) fn escape_regex(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Refuses what RE2 would refuse, as far as the Rust `regex-syntax` parser (which follows RE2's
/// syntax: no look-around, no back-references) can tell. Envoy NACKs a bad regex otherwise.
fn check_regex(pattern: &str, field: &str, pos: &Pos, findings: &mut Findings) {
    if let Err(e) = regex_syntax::Parser::new().parse(pattern) {
        let reason = e.to_string();
        let reason = reason.lines().last().unwrap_or_default().trim().to_string();
        findings.error(
            pos,
            format!("{field}: {pattern:?} is not a valid RE2 regular expression: {reason}"),
        );
    }
}

/// A path value: absolute, without query or fragment, as Gateway API's schema requires.
fn check_path(value: &str, field: &str, pos: &Pos, findings: &mut Findings) {
    if !value.starts_with('/') {
        findings.error(pos, format!("{field}.value: {value:?} must start with '/'"));
    } else if value.contains(['?', '#'])
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        findings.error(
            pos,
            format!(
                "{field}.value: {value:?} must not contain '?', '#', spaces or control characters"
            ),
        );
    }
}

/// An HTTP token (RFC 7230), what Gateway API allows as a header name.
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_grpc_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(is_grpc_method)
}

fn is_grpc_method(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
