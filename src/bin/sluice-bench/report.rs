//! What a run measured, printed as tables (one set per protocol, rows = sidecar counts, each
//! Sluice figure beside the floor's and their ratio) and written as JSON with every raw number.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::machine::Machine;
use crate::server::Kind;
use crate::sidecar::Protocol;
use crate::stats::Summary;

/// Everything measured against one server with one protocol and one sidecar count.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measurement {
    /// From starting all sidecars to every one fully configured (ACKed CDS, EDS, LDS, scoped
    /// RDS and RDS).
    pub connect_seconds: f64,
    pub connect_per_second: f64,
    /// The server's VmRSS with the mesh loaded and no sidecar.
    pub rss_empty_kb: u64,
    /// The server's VmRSS with every sidecar connected and settled.
    pub rss_connected_kb: u64,
    pub kb_per_sidecar: f64,
    /// The server's CPU over the idle window, in % of one core.
    pub idle_cpu_percent: f64,
    pub idle_window_seconds: f64,
    pub changes: Vec<ChangeMeasurement>,
    /// Over every sidecar of every change: milliseconds from the change to the sidecar's ACK of
    /// the new route configuration.
    pub change_ms: Summary,
    /// Sidecars that had not ACKed a change when its wait timed out, summed over changes.
    pub never_acked: usize,
    /// The server's CPU over all change windows / their wall time, in % of one core.
    /// `None` when the change windows add up to under a second: CPU time is counted in clock
    /// ticks (10 ms), too coarse for shorter windows.
    pub churn_cpu_percent: Option<f64>,
    /// Mean over changes of the server's response bytes (Sluice: `sluice_xds_bytes_sent_total`).
    pub server_bytes_per_change: f64,
    /// Mean over changes of the response bytes the sidecars received.
    pub client_bytes_per_change: f64,
    /// The two above divided by the number of sidecars.
    pub server_bytes_per_change_per_sidecar: f64,
    pub client_bytes_per_change_per_sidecar: f64,
    /// Sluice only: the first whole-mesh compile and the median compile after a change.
    pub first_compile_ms: Option<f64>,
    pub change_compile_ms: Option<f64>,
    /// Sluice only: compiles while the sidecars connected, and their total time.
    pub connect_compiles: Option<u64>,
    pub connect_compile_seconds: Option<f64>,
    pub storm: StormMeasurement,
    /// The generator's own CPU (this process) while sidecars connected and over the change
    /// windows, in % of one core: near 100 means the generator, not the server, set the pace.
    pub generator_connect_cpu_percent: f64,
    pub generator_churn_cpu_percent: f64,
    /// Streams that failed and were reconnected, per phase: while connecting, over the changes,
    /// in the storm. Sidecars reconnect as Envoy does, so a failure costs time, not the run.
    pub stream_failures_connect: u64,
    pub stream_failures_changes: u64,
    pub stream_failures_storm: u64,
    /// The first few stream errors, when there were any.
    pub stream_errors: Vec<String>,
    /// The generator's own VmRSS with every sidecar connected.
    pub generator_rss_kb: u64,
    /// The host kernel's TCP counters over the whole measurement.
    pub kernel_tcp: crate::kernel::TcpCounters,
    /// Distinct resources the generator decoded (each once, whatever the sidecar count).
    pub resources_decoded: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChangeMeasurement {
    pub latency_ms: Summary,
    pub acked: usize,
    pub missing: usize,
    pub wall_seconds: f64,
    pub server_cpu_seconds: f64,
    pub server_bytes: u64,
    pub client_bytes: u64,
    pub client_responses: u64,
    pub compile_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StormMeasurement {
    /// From reconnecting all sidecars to every one back in sync.
    pub seconds: f64,
    pub per_second: f64,
    pub responses: u64,
    pub resources: u64,
    pub client_bytes: u64,
    pub server_bytes: u64,
    pub server_cpu_seconds: f64,
}

/// One measurement, or why it failed.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub server: Kind,
    pub protocol: Protocol,
    pub sidecars: usize,
    #[serde(flatten)]
    pub result: Outcome,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok(Box<Measurement>),
    Failed(String),
}

impl Row {
    fn measurement(&self) -> Option<&Measurement> {
        match &self.result {
            Outcome::Ok(m) => Some(m),
            Outcome::Failed(_) => None,
        }
    }
}

/// The settings of a run, as printed and written.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub services: usize,
    pub sidecars: Vec<usize>,
    pub protocols: Vec<Protocol>,
    pub changes: usize,
    pub concurrency: usize,
    /// Each sidecar's HTTP/2 receive window, in KiB (0: hyper's defaults).
    pub window_kib: u32,
    pub storm_concurrency: Option<usize>,
    pub idle_window_seconds: f64,
    pub servers: Vec<Kind>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    machine: &'a Machine,
    settings: &'a Settings,
    measurements: &'a [Row],
}

pub fn write_json(
    path: &Path,
    machine: &Machine,
    settings: &Settings,
    rows: &[Row],
) -> anyhow::Result<()> {
    let report = JsonReport {
        machine,
        settings,
        measurements: rows,
    };
    let text = serde_json::to_string_pretty(&report).context("serializing the report")?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The tables of every protocol, as Markdown.
pub fn tables(settings: &Settings, rows: &[Row]) -> String {
    let mut out = String::new();
    for protocol in &settings.protocols {
        let pairs: Vec<(usize, Option<&Row>, Option<&Row>)> = settings
            .sidecars
            .iter()
            .map(|n| {
                let find = |kind| {
                    rows.iter()
                        .find(|r| r.protocol == *protocol && r.sidecars == *n && r.server == kind)
                };
                (*n, find(Kind::Sluice), find(Kind::Floor))
            })
            .collect();
        let _ = writeln!(
            out,
            "\n### {protocol} ADS, {} services: Sluice / floor (×ratio)\n",
            settings.services
        );
        table(
            &mut out,
            &pairs,
            &[
                ("connect s", &|m| Some(m.connect_seconds), 2),
                ("sidecars/s", &|m| Some(m.connect_per_second), 0),
                ("KB/sidecar", &|m| Some(m.kb_per_sidecar), 1),
                ("idle CPU %", &|m| Some(m.idle_cpu_percent), 1),
                ("storm s", &|m| Some(m.storm.seconds), 2),
                ("storm sidecars/s", &|m| Some(m.storm.per_second), 0),
                ("storm resources", &|m| Some(m.storm.resources as f64), 0),
            ],
        );
        out.push('\n');
        table(
            &mut out,
            &pairs,
            &[
                ("changes", &|m| Some(m.changes.len() as f64), 0),
                ("change p50 ms", &|m| Some(m.change_ms.p50), 0),
                ("p99 ms", &|m| Some(m.change_ms.p99), 0),
                ("max ms", &|m| Some(m.change_ms.max), 0),
                ("never ACKed", &|m| Some(m.never_acked as f64), 0),
                (
                    "dropped streams",
                    &|m| {
                        Some(
                            (m.stream_failures_connect
                                + m.stream_failures_changes
                                + m.stream_failures_storm) as f64,
                        )
                    },
                    0,
                ),
                ("churn CPU %", &|m| m.churn_cpu_percent, 0),
                (
                    "sent KB/change",
                    &|m| Some(m.server_bytes_per_change / 1024.0),
                    0,
                ),
                (
                    "recv KB/change/sidecar",
                    &|m| Some(m.client_bytes_per_change_per_sidecar / 1024.0),
                    1,
                ),
            ],
        );
        let compiles: Vec<String> = pairs
            .iter()
            .filter_map(|(n, sluice, _)| {
                let m = (*sluice)?.measurement()?;
                Some(format!(
                    "N={n}: first {} ms, after a change {} ms, {} compiles ({} s) while connecting",
                    fmt(m.first_compile_ms, 1),
                    fmt(m.change_compile_ms, 1),
                    fmt(m.connect_compiles.map(|c| c as f64), 0),
                    fmt(m.connect_compile_seconds, 2),
                ))
            })
            .collect();
        if !compiles.is_empty() {
            let _ = writeln!(out, "\nSluice compiles (from /metrics):");
            for line in compiles {
                let _ = writeln!(out, "- {line}");
            }
        }
        let generator: Vec<String> = pairs
            .iter()
            .flat_map(|(n, sluice, floor)| [(n, sluice), (n, floor)])
            .filter_map(|(n, row)| {
                let row = (*row)?;
                let m = row.measurement()?;
                Some(format!(
                    "{} N={n}: {:.0}% connecting, {:.0}% in changes",
                    row.server, m.generator_connect_cpu_percent, m.generator_churn_cpu_percent
                ))
            })
            .collect();
        if !generator.is_empty() {
            let _ = writeln!(
                out,
                "\nGenerator CPU (near 100%: the generator, not the server, set the pace): {}",
                generator.join("; ")
            );
        }
        for (n, sluice, floor) in &pairs {
            for row in [sluice, floor].into_iter().flatten() {
                if let Some(m) = row.measurement() {
                    let tcp = &m.kernel_tcp;
                    if tcp.troubled() {
                        let _ = writeln!(
                            out,
                            "\n{} N={n}: the kernel ran short of TCP memory ({} pressure events, {} pruned queues, {} retransmitted segments): figures include loopback stalls",
                            row.server, tcp.memory_pressures, tcp.prunes, tcp.retransmitted_segments
                        );
                    }
                }
                if let Outcome::Failed(reason) = &row.result {
                    let _ = writeln!(out, "\n{} N={n} failed: {reason}", row.server);
                }
            }
        }
    }
    out
}

type Figure<'a> = (&'a str, &'a dyn Fn(&Measurement) -> Option<f64>, usize);

fn table(out: &mut String, pairs: &[(usize, Option<&Row>, Option<&Row>)], figures: &[Figure<'_>]) {
    let _ = write!(out, "| N |");
    for (name, _, _) in figures {
        let _ = write!(out, " {name} |");
    }
    let _ = write!(out, "\n|---:|");
    for _ in figures {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for (n, sluice, floor) in pairs {
        let _ = write!(out, "| {n} |");
        let sluice = sluice.and_then(Row::measurement);
        let floor = floor.and_then(Row::measurement);
        for (_, get, digits) in figures {
            let s = sluice.and_then(get);
            let f = floor.and_then(get);
            let _ = write!(out, " {} |", cell(s, f, *digits));
        }
        out.push('\n');
    }
}

/// `S / F (×R)`, or what is known of it.
fn cell(sluice: Option<f64>, floor: Option<f64>, digits: usize) -> String {
    match (sluice, floor) {
        (None, None) => "–".into(),
        (Some(s), None) => fmt(Some(s), digits),
        (None, Some(f)) => format!("– / {}", fmt(Some(f), digits)),
        (Some(s), Some(f)) => {
            let ratio = if f.abs() > f64::EPSILON {
                format!(" (×{:.1})", s / f)
            } else {
                String::new()
            };
            format!("{} / {}{ratio}", fmt(Some(s), digits), fmt(Some(f), digits))
        }
    }
}

fn fmt(value: Option<f64>, digits: usize) -> String {
    match value {
        Some(v) => format!("{v:.digits$}"),
        None => "–".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_both_figures_and_the_ratio() {
        assert_eq!(cell(Some(3.0), Some(1.5), 1), "3.0 / 1.5 (×2.0)");
        assert_eq!(cell(Some(3.0), Some(0.0), 0), "3 / 0");
        assert_eq!(cell(Some(3.0), None, 0), "3");
        assert_eq!(cell(None, None, 0), "–");
    }
}
