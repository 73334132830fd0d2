//! HTTPRoute `timeouts`, and the Gateway API duration format they are written in.
//!
//! Envoy has one knob that fits both fields when no retries are configured (Sluice configures
//! none): the route timeout, which bounds the whole exchange with the upstream. So `request`
//! becomes `RouteAction.timeout`; `backendRequest` alone becomes it too; with both, the smaller
//! wins (a zero, which disables a timeout, counts as infinite). `per_try_timeout` would be the
//! natural home of `backendRequest`, but Envoy only applies it inside a retry policy.
//! Without `timeouts`, Envoy's default route timeout (15 s) stays: Gateway API leaves the
//! default to the implementation, and a bounded default is the safer one for HTTP/1.1.

use std::time::Duration as StdDuration;

use envoy_types::pb::google::protobuf::Duration;

use crate::manifest::model::HttpRouteTimeouts;

/// Parses a Gateway API duration: 1 to 4 groups of 1 to 5 digits with a unit of `h`, `m`, `s`
/// or `ms` (`1h30m`, `500ms`, `0s`), as the schema's pattern `^([0-9]{1,5}(h|m|s|ms)){1,4}$`.
pub(crate) fn parse_gateway_duration(text: &str) -> Result<StdDuration, String> {
    let invalid = || {
        format!(
            "{text:?} is not a Gateway API duration (1 to 4 groups of a number of at most 5 \
             digits and a unit h, m, s or ms, such as \"10s\", \"1m30s\" or \"500ms\")"
        )
    };
    let bytes = text.as_bytes();
    let mut total = StdDuration::ZERO;
    let mut groups = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &text[start..i];
        if digits.is_empty() || digits.len() > 5 {
            return Err(invalid());
        }
        let value: u64 = digits.parse().map_err(|_| invalid())?;
        let unit_ms = if text[i..].starts_with("ms") {
            i += 2;
            1
        } else if text[i..].starts_with('h') {
            i += 1;
            3_600_000
        } else if text[i..].starts_with('m') {
            i += 1;
            60_000
        } else if text[i..].starts_with('s') {
            i += 1;
            1_000
        } else {
            return Err(invalid());
        };
        total += StdDuration::from_millis(value * unit_ms);
        groups += 1;
    }
    if groups == 0 || groups > 4 {
        return Err(invalid());
    }
    Ok(total)
}

pub(crate) fn to_proto_duration(d: StdDuration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The route timeout for `timeouts`, or `None` to keep Envoy's default. A zero duration
/// disables the timeout, in Gateway API and in Envoy alike.
pub(crate) fn route_timeout(timeouts: &HttpRouteTimeouts) -> Result<Option<Duration>, String> {
    let request = timeouts
        .request
        .as_deref()
        .map(parse_gateway_duration)
        .transpose()
        .map_err(|e| format!("request: {e}"))?;
    let backend = timeouts
        .backend_request
        .as_deref()
        .map(parse_gateway_duration)
        .transpose()
        .map_err(|e| format!("backendRequest: {e}"))?;
    let chosen = match (request, backend) {
        (None, None) => None,
        (Some(r), None) => Some(r),
        (None, Some(b)) => Some(b),
        (Some(r), Some(b)) => {
            if !r.is_zero() && (b.is_zero() || b > r) {
                return Err(format!(
                    "backendRequest ({}) must not be longer than request ({})",
                    timeouts.backend_request.as_deref().unwrap_or_default(),
                    timeouts.request.as_deref().unwrap_or_default()
                ));
            }
            // Zero means no timeout: the other one, if any, bounds the exchange.
            Some(if r.is_zero() { b } else { r.min(b) })
        }
    };
    Ok(chosen.map(to_proto_duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_durations() {
        assert_eq!(
            parse_gateway_duration("10s"),
            Ok(StdDuration::from_secs(10))
        );
        assert_eq!(
            parse_gateway_duration("500ms"),
            Ok(StdDuration::from_millis(500))
        );
        assert_eq!(
            parse_gateway_duration("1h30m2s5ms"),
            Ok(StdDuration::from_millis(5_402_005))
        );
        assert_eq!(parse_gateway_duration("0s"), Ok(StdDuration::ZERO));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "123456s",
            "1h1h1h1h1h",
            "10 s",
            "-1s",
            "1d",
        ] {
            assert!(
                parse_gateway_duration(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn chooses_the_route_timeout() {
        let t = |request: Option<&str>, backend: Option<&str>| {
            route_timeout(&HttpRouteTimeouts {
                request: request.map(String::from),
                backend_request: backend.map(String::from),
            })
        };
        let secs = |s| {
            Ok(Some(Duration {
                seconds: s,
                nanos: 0,
            }))
        };
        assert_eq!(t(None, None), Ok(None));
        assert_eq!(t(Some("10s"), None), secs(10));
        assert_eq!(t(None, Some("3s")), secs(3));
        assert_eq!(t(Some("10s"), Some("3s")), secs(3));
        assert_eq!(t(Some("0s"), Some("3s")), secs(3));
        assert_eq!(t(Some("0s"), None), secs(0));
        assert!(t(Some("3s"), Some("10s")).is_err());
        assert!(t(Some("3s"), Some("0s")).is_err());
        assert!(t(Some("soon"), None).is_err());
    }
}
