//! Process-wide counters, rendered as Prometheus text by the debug API.
//!
//! Plain atomics: every writer adds, nobody locks, and a scrape reads a consistent-enough view.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::xds::resource::ResourceType;

#[derive(Debug, Default)]
pub struct Metrics {
    /// ADS streams currently open.
    pub connected_streams: AtomicU64,
    /// Responses sent, per resource type.
    pub pushes: [AtomicU64; ResourceType::COUNT],
    /// Resources sent (added or updated), per type.
    pub resources_sent: [AtomicU64; ResourceType::COUNT],
    /// Encoded bytes of responses sent, per type.
    pub bytes_sent: [AtomicU64; ResourceType::COUNT],
    /// NACKs received, per type.
    pub nacks: [AtomicU64; ResourceType::COUNT],
    /// Requests for a type URL Sluice does not serve.
    pub unknown_type_requests: AtomicU64,
    /// Revisions compiled and published.
    pub revisions_applied: AtomicU64,
    /// Revisions refused because they failed to load or compile.
    pub revisions_refused: AtomicU64,
    /// Compile time of the last compile, and the sum over all compiles, in microseconds.
    pub last_compile_micros: AtomicU64,
    pub compile_micros_sum: AtomicU64,
    pub compiles: AtomicU64,
    /// Endpoint recomputations after sidecars came or went, and how many moved an endpoint
    /// (and were published); their time, in microseconds.
    pub endpoint_updates: AtomicU64,
    pub endpoint_updates_published: AtomicU64,
    pub endpoint_update_micros_sum: AtomicU64,
    /// From a revision being published to every connected sidecar having ACKed it.
    pub last_convergence_micros: AtomicU64,
    pub convergence_micros_sum: AtomicU64,
    pub convergences: AtomicU64,
    /// Source fetch/read attempts that failed (unreadable folder, unreachable remote).
    pub source_errors: AtomicU64,
    /// Git fetches that succeeded and that failed.
    pub git_fetches_ok: AtomicU64,
    pub git_fetches_error: AtomicU64,
    /// When a git fetch last succeeded, in milliseconds since the Unix epoch (0: never).
    pub git_last_success_millis: AtomicU64,
    /// Looks at `--dir`: walks of the whole folder, and looks at only the paths change
    /// notifications named.
    pub dir_walks: AtomicU64,
    pub dir_path_looks: AtomicU64,
}

impl Metrics {
    pub fn record_compile(&self, micros: u64) {
        self.last_compile_micros.store(micros, Relaxed);
        self.compile_micros_sum.fetch_add(micros, Relaxed);
        self.compiles.fetch_add(1, Relaxed);
    }

    pub fn record_endpoint_update(&self, micros: u64, published: bool) {
        self.endpoint_updates.fetch_add(1, Relaxed);
        self.endpoint_update_micros_sum.fetch_add(micros, Relaxed);
        if published {
            self.endpoint_updates_published.fetch_add(1, Relaxed);
        }
    }

    pub fn record_convergence(&self, micros: u64) {
        self.last_convergence_micros.store(micros, Relaxed);
        self.convergence_micros_sum.fetch_add(micros, Relaxed);
        self.convergences.fetch_add(1, Relaxed);
    }

    pub fn record_git_success(&self, at: std::time::SystemTime) {
        let millis = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.git_last_success_millis.store(millis, Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        gauge(
            &mut out,
            "sluice_connected_sidecars",
            "ADS streams currently open.",
            self.connected_streams.load(Relaxed),
        );
        per_type(
            &mut out,
            "sluice_xds_pushes_total",
            "xDS responses sent.",
            &self.pushes,
        );
        per_type(
            &mut out,
            "sluice_xds_resources_sent_total",
            "Resources added or updated in xDS responses.",
            &self.resources_sent,
        );
        per_type(
            &mut out,
            "sluice_xds_bytes_sent_total",
            "Encoded bytes of xDS responses.",
            &self.bytes_sent,
        );
        per_type(
            &mut out,
            "sluice_xds_nacks_total",
            "NACKs received from sidecars.",
            &self.nacks,
        );
        counter(
            &mut out,
            "sluice_xds_unknown_type_requests_total",
            "Requests for a type URL Sluice does not serve.",
            self.unknown_type_requests.load(Relaxed),
        );
        counter(
            &mut out,
            "sluice_revisions_applied_total",
            "Revisions compiled and served.",
            self.revisions_applied.load(Relaxed),
        );
        counter(
            &mut out,
            "sluice_revisions_refused_total",
            "Revisions refused because they failed to load or compile.",
            self.revisions_refused.load(Relaxed),
        );
        counter(
            &mut out,
            "sluice_source_errors_total",
            "Failed attempts to read or fetch the source.",
            self.source_errors.load(Relaxed),
        );
        header(
            &mut out,
            "sluice_git_fetches_total",
            "Fetches of --repo, by result.",
            "counter",
        );
        let _ = writeln!(
            out,
            "sluice_git_fetches_total{{result=\"ok\"}} {}\nsluice_git_fetches_total{{result=\"error\"}} {}",
            self.git_fetches_ok.load(Relaxed),
            self.git_fetches_error.load(Relaxed)
        );
        header(
            &mut out,
            "sluice_dir_looks_total",
            "Looks at --dir for changes: walks of the whole folder, and looks at only the paths change notifications named.",
            "counter",
        );
        let _ = writeln!(
            out,
            "sluice_dir_looks_total{{how=\"walk\"}} {}\nsluice_dir_looks_total{{how=\"paths\"}} {}",
            self.dir_walks.load(Relaxed),
            self.dir_path_looks.load(Relaxed)
        );
        header(
            &mut out,
            "sluice_git_last_success_timestamp_seconds",
            "When a fetch of --repo last succeeded (Unix time; 0: never).",
            "gauge",
        );
        let _ = writeln!(
            out,
            "sluice_git_last_success_timestamp_seconds {}",
            self.git_last_success_millis.load(Relaxed) as f64 / 1e3
        );
        summary(
            &mut out,
            "sluice_compile_seconds",
            "Time to compile a revision (sidecar endpoint updates are counted apart).",
            self.compile_micros_sum.load(Relaxed),
            self.compiles.load(Relaxed),
        );
        gauge_seconds(
            &mut out,
            "sluice_last_compile_seconds",
            "Time the last compile took.",
            self.last_compile_micros.load(Relaxed),
        );
        summary(
            &mut out,
            "sluice_endpoint_update_seconds",
            "Time to recompute endpoints after sidecars came or went.",
            self.endpoint_update_micros_sum.load(Relaxed),
            self.endpoint_updates.load(Relaxed),
        );
        counter(
            &mut out,
            "sluice_endpoint_updates_published_total",
            "Endpoint recomputations that moved an endpoint and were published.",
            self.endpoint_updates_published.load(Relaxed),
        );
        summary(
            &mut out,
            "sluice_convergence_seconds",
            "From a revision being served to every connected sidecar having ACKed it.",
            self.convergence_micros_sum.load(Relaxed),
            self.convergences.load(Relaxed),
        );
        gauge_seconds(
            &mut out,
            "sluice_last_convergence_seconds",
            "Convergence time of the last revision.",
            self.last_convergence_micros.load(Relaxed),
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge_seconds(out: &mut String, name: &str, help: &str, micros: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {}", micros as f64 / 1e6);
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

fn per_type(out: &mut String, name: &str, help: &str, values: &[AtomicU64; ResourceType::COUNT]) {
    header(out, name, help, "counter");
    for resource_type in ResourceType::ALL {
        let value = values[resource_type.index()].load(Relaxed);
        let _ = writeln!(out, "{name}{{type=\"{resource_type}\"}} {value}");
    }
}

fn summary(out: &mut String, name: &str, help: &str, sum_micros: u64, count: u64) {
    header(out, name, help, "summary");
    let _ = writeln!(out, "{name}_sum {}", sum_micros as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_type_counters_with_labels() {
        let metrics = Metrics::default();
        metrics.pushes[ResourceType::Route.index()].fetch_add(3, Relaxed);
        metrics.record_compile(1500);
        let text = metrics.render();
        assert!(
            text.contains("sluice_xds_pushes_total{type=\"rds\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sluice_xds_pushes_total{type=\"cds\"} 0"),
            "{text}"
        );
        assert!(text.contains("sluice_compile_seconds_count 1"), "{text}");
        metrics.git_fetches_error.fetch_add(2, Relaxed);
        metrics.record_git_success(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_500));
        let text = metrics.render();
        assert!(
            text.contains("sluice_git_fetches_total{result=\"ok\"} 0\nsluice_git_fetches_total{result=\"error\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sluice_git_last_success_timestamp_seconds 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_last_compile_seconds 0.0015"),
            "{text}"
        );
    }
}
