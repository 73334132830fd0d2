//! The verdict on one answer (EXPECTATIONS.md §0.4, plus the strict checks of §3), and the
//! weighted-distribution arithmetic (§2). Pure functions, unit-tested in tests/conformance.rs.

use std::collections::BTreeMap;

use super::model::{Expect, RedirectExpect};

/// What one request observed: what the client got and what the backend reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub status: u16,
    /// Response headers the client received, in order.
    pub response_headers: Vec<(String, String)>,
    /// The answering pod's hostname; empty when no backend answered (a 404 or a redirect that
    /// the proxy produced itself).
    pub hostname: String,
    /// Headers (or metadata) the backend received, every value.
    pub request_headers: Vec<(String, String)>,
    /// The request target the backend received (path and query).
    pub url: Option<String>,
    /// The Host (`:authority`) the backend received.
    pub host: Option<String>,
}

impl Observed {
    /// Every value of a response header, case-insensitively.
    fn response_values(&self, name: &str) -> Vec<&str> {
        values(&self.response_headers, name)
    }
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Checks one attempt of a request sent to `path` (empty means `/`). `Err` names the first
/// expectation that failed.
pub fn check(expect: &Expect, observed: &Observed, path: &str, strict: bool) -> Result<(), String> {
    // 1. Status.
    let accepted: &[u16] = if expect.status.is_empty() {
        &[200]
    } else {
        &expect.status
    };
    if !accepted.contains(&observed.status) {
        return Err(format!(
            "status {} (expected {})",
            observed.status,
            join_codes(accepted)
        ));
    }
    // 2. Request headers the backend must have, all values joined by "," without spaces.
    for (name, want) in &expect.request_headers {
        let got = values(&observed.request_headers, name);
        if got.is_empty() {
            return Err(format!(
                "the backend did not receive header {name:?} (expected {want:?})"
            ));
        }
        let joined = got.join(",");
        if joined != *want {
            return Err(format!(
                "the backend received header {name:?} = {joined:?}, expected {want:?}"
            ));
        }
    }
    // 3. Request headers the backend must not have.
    for name in &expect.absent_request_headers {
        let got = values(&observed.request_headers, name);
        if !got.is_empty() {
            return Err(format!(
                "the backend received header {name:?} = {:?}, which must be absent",
                got.join(",")
            ));
        }
    }
    // 4. Response headers that must be absent.
    for name in &expect.absent_response_headers {
        let got = observed.response_values(name);
        if !got.is_empty() {
            return Err(format!(
                "the response has header {name:?} = {:?}, which must be absent",
                got.join(",")
            ));
        }
    }
    // 5. Response headers that must equal a value; only the last value counts.
    for (name, want) in &expect.response_headers {
        match observed.response_values(name).last() {
            None => {
                return Err(format!(
                    "the response has no header {name:?} (expected {want:?})"
                ))
            }
            Some(got) if got != want => {
                return Err(format!(
                    "the response has header {name:?} = {got:?}, expected {want:?}"
                ))
            }
            Some(_) => {}
        }
    }
    // 6. Backend: a prefix of the responder's hostname.
    if let Some(prefix) = &expect.backend {
        if !observed.hostname.starts_with(prefix.as_str()) {
            return Err(format!(
                "answered by {:?}, expected a pod of {prefix}",
                if observed.hostname.is_empty() {
                    "no backend"
                } else {
                    observed.hostname.as_str()
                }
            ));
        }
    }
    if strict {
        let path = if path.is_empty() { "/" } else { path };
        check_strict(expect, observed, path)?;
    }
    Ok(())
}

fn join_codes(codes: &[u16]) -> String {
    codes
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The checks the Go mesh harness leaves out (§3): the path and Host the backend saw and the
/// redirect's `Location`.
fn check_strict(expect: &Expect, observed: &Observed, path: &str) -> Result<(), String> {
    if let Some(want) = &expect.backend_path {
        if observed.url.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "strict: the backend received path {:?}, expected {want:?}",
                observed.url
            ));
        }
    }
    if let Some(want) = &expect.backend_host {
        if observed.host.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "strict: the backend received Host {:?}, expected {want:?}",
                observed.host
            ));
        }
    }
    if let Some(want) = &expect.redirect {
        if is_redirect(observed.status) {
            let location = observed
                .response_values("location")
                .last()
                .map(|l| l.to_string())
                .ok_or_else(|| "strict: the redirect has no Location header".to_owned())?;
            check_location(want, &location, path)?;
        }
    }
    Ok(())
}

pub fn is_redirect(status: u16) -> bool {
    matches!(status, 300..=305 | 307 | 308)
}

/// A `Location` split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub scheme: String,
    pub host: String,
    /// Empty when the URL has none.
    pub port: String,
    /// Path (and query) from the first `/` after the authority; `/` when there is none.
    pub path: String,
}

/// Parses an absolute `scheme://host[:port][/path]` URL.
pub fn parse_location(location: &str) -> Result<Location, String> {
    let (scheme, rest) = location
        .split_once("://")
        .ok_or_else(|| format!("Location {location:?} is not an absolute URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("Location {location:?} has an unclosed IPv6 address"))?;
        (host, after.strip_prefix(':').unwrap_or_default())
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (authority, ""),
        }
    };
    Ok(Location {
        scheme: scheme.to_owned(),
        host: host.to_owned(),
        port: port.to_owned(),
        path: path.to_owned(),
    })
}

/// The Gateway-side rules for an expected redirect (EXPECTATIONS.md, end of §1.18), for a
/// request that was sent as `http` to `original_path`.
pub fn check_location(
    want: &RedirectExpect,
    location: &str,
    original_path: &str,
) -> Result<(), String> {
    let got = parse_location(location)?;
    let scheme = want.scheme.as_deref().unwrap_or("http");
    if got.scheme != scheme {
        return Err(format!(
            "strict: Location {location:?} has scheme {:?}, expected {scheme:?}",
            got.scheme
        ));
    }
    if let Some(host) = &want.host {
        if got.host != *host {
            return Err(format!(
                "strict: Location {location:?} has host {:?}, expected {host:?}",
                got.host
            ));
        }
    }
    let path = want.path.as_deref().unwrap_or(original_path);
    if got.path != path {
        return Err(format!(
            "strict: Location {location:?} has path {:?}, expected {path:?}",
            got.path
        ));
    }
    match want.port {
        Some(port) => {
            if got.port != port.to_string() {
                return Err(format!(
                    "strict: Location {location:?} has port {:?}, expected {port}",
                    got.port
                ));
            }
        }
        None => {
            let default = if scheme == "https" { "443" } else { "80" };
            if !got.port.is_empty() && got.port != default {
                return Err(format!(
                    "strict: Location {location:?} has port {:?}, expected none or {default}",
                    got.port
                ));
            }
        }
    }
    Ok(())
}

/// A pod's hostname without its last two `-`-separated parts (`echo-v1-5d8c7b9f6-abcde` gives
/// `echo-v1`); a hostname with fewer than three parts is kept whole.
pub fn bucket(hostname: &str) -> &str {
    let parts: Vec<&str> = hostname.split('-').collect();
    if parts.len() < 3 {
        return hostname;
    }
    let kept: usize = parts[..parts.len() - 2]
        .iter()
        .map(|p| p.len())
        .sum::<usize>()
        + (parts.len() - 3);
    &hostname[..kept]
}

/// The number of requests of one distribution attempt (§2).
pub const DISTRIBUTION_REQUESTS: usize = 500;
/// How far each observed share may be from the expected one (§2).
pub const DISTRIBUTION_TOLERANCE: f64 = 0.05;
/// How many distribution attempts a test gets (§2).
pub const DISTRIBUTION_TRIES: usize = 10;

/// Judges one distribution attempt from the hostnames of its answers (§2 steps 2 to 4).
pub fn check_distribution(hostnames: &[String], shares: &[(String, f64)]) -> Result<(), String> {
    if hostnames.len() != DISTRIBUTION_REQUESTS {
        return Err(format!(
            "{} answers, expected {DISTRIBUTION_REQUESTS}",
            hostnames.len()
        ));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for hostname in hostnames {
        if hostname.is_empty() {
            return Err("an answer came from no backend".to_owned());
        }
        let name = bucket(hostname);
        if !shares.iter().any(|(backend, _)| backend == name) {
            return Err(format!(
                "answer from {hostname:?} ({name}), which is not an expected backend"
            ));
        }
        *counts.entry(name).or_default() += 1;
    }
    let active = shares.iter().filter(|(_, share)| *share > 0.0).count();
    if counts.len() != active {
        return Err(format!(
            "answers from {} backends ({counts:?}), expected {active}",
            counts.len()
        ));
    }
    for (backend, expected) in shares {
        let count = counts.get(backend.as_str()).copied().unwrap_or(0);
        if *expected > 0.0 && count == 0 {
            return Err(format!("{backend} received no request"));
        }
        let share = count as f64 / DISTRIBUTION_REQUESTS as f64;
        if (share - expected).abs() > DISTRIBUTION_TOLERANCE {
            return Err(format!(
                "{backend} received {count} of {DISTRIBUTION_REQUESTS} ({share}), expected \
                 {expected} ± {DISTRIBUTION_TOLERANCE} ({counts:?})"
            ));
        }
    }
    Ok(())
}

/// Parses the `Key=Value` lines of a gRPC echo reply into an [`Observed`].
pub fn observed_from_grpc(message: &str, response_headers: Vec<(String, String)>) -> Observed {
    let mut observed = Observed {
        response_headers,
        ..Observed::default()
    };
    let mut status = None;
    for line in message.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "StatusCode" if status.is_none() => status = value.parse::<u16>().ok(),
            "Hostname" if observed.hostname.is_empty() => observed.hostname = value.to_owned(),
            "Host" if observed.host.is_none() => observed.host = Some(value.to_owned()),
            "RequestHeader" => {
                if let Some((name, value)) = value.split_once(':') {
                    observed
                        .request_headers
                        .push((name.to_owned(), value.to_owned()));
                }
            }
            _ => {}
        }
    }
    observed.status = status.unwrap_or(0);
    observed
}
