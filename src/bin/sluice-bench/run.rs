//! `sluice-bench run`: the plan, and the phases measured against each server.
//!
//! For every protocol and sidecar count N, Sluice then the floor, each freshly started:
//! 1. memory with the mesh loaded and no sidecar;
//! 2. connect: N sidecars, at most `--concurrency` connecting at once, until all are fully
//!    configured; then memory again, once the server is quiet;
//! 3. idle CPU over `--idle-window`;
//! 4. `--changes` one-file changes, each waited for until every sidecar ACKed the new route
//!    configuration (or a timeout), with the server's CPU and bytes over each;
//! 5. the reconnect storm: every stream dropped at once, then all reconnecting with what they
//!    hold, until every sidecar is back in sync.
//!
//! The generator runs on one tokio thread pinned to CPU 1; the servers are pinned to CPU 0.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::cli::{ProtocolChoice, RunArgs};
use crate::fleet::Fleet;
use crate::kernel::{self, TcpCounters};
use crate::machine::Machine;
use crate::mesh::MeshDir;
use crate::report::{
    self, ChangeMeasurement, Measurement, Outcome, Row, Settings, StormMeasurement,
};
use crate::server::{self, Kind, Launcher, Server};
use crate::sidecar::{Mode, Protocol};
use crate::stats::Summary;

/// Changes measured even when the change budget is spent.
const MIN_CHANGES: usize = 3;
/// Longest wait for every sidecar to ACK one change.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the server to notice every sidecar left, before the storm.
const STREAMS_GONE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a server to go quiet before a reading.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors kept for everything but the sidecars' sockets.
const SPARE_FDS: u64 = 256;

/// What to measure, from the command line with `--quick` and the defaults applied.
#[derive(Debug)]
struct Plan {
    settings: Settings,
    idle_window: Duration,
    timeout: Duration,
    sluice: PathBuf,
    sluice_args: Vec<String>,
    /// After this much time in the changes of one measurement, no new change is started.
    change_budget: Duration,
    /// A server whose resident memory grows past this fails its measurement.
    max_server_memory_kb: u64,
    json: Option<PathBuf>,
    keep: Option<PathBuf>,
}

impl Plan {
    fn from_args(args: RunArgs) -> anyhow::Result<Plan> {
        let quick = args.quick;
        let sidecars = args.sidecars.unwrap_or_else(|| {
            if quick {
                vec![1, 100]
            } else {
                vec![1, 1000, 5000, 10_000]
            }
        });
        if sidecars.is_empty() || sidecars.contains(&0) {
            bail!("--sidecars takes counts above zero, such as 1,1000,5000");
        }
        let protocols = match args.protocol {
            ProtocolChoice::Delta => vec![Protocol::Delta],
            ProtocolChoice::Sotw => vec![Protocol::Sotw],
            ProtocolChoice::Both => vec![Protocol::Delta, Protocol::Sotw],
        };
        let idle_window =
            args.idle_window
                .unwrap_or(Duration::from_secs(if quick { 2 } else { 10 }));
        let sluice = match args.sluice {
            Some(path) => path,
            None => std::env::current_exe()
                .context("locating this executable")?
                .with_file_name("sluice"),
        };
        if !sluice.is_file() {
            bail!(
                "{} does not exist: build it with `cargo build --release --bins`, or pass --sluice",
                sluice.display()
            );
        }
        Ok(Plan {
            settings: Settings {
                services: args.services.unwrap_or(if quick { 50 } else { 1000 }),
                sidecars,
                protocols,
                changes: args.changes.unwrap_or(if quick { 3 } else { 10 }),
                concurrency: args.concurrency.max(1),
                window_kib: args.window,
                storm_concurrency: (args.storm_concurrency > 0).then_some(args.storm_concurrency),
                idle_window_seconds: idle_window.as_secs_f64(),
                servers: args.servers,
            },
            idle_window,
            timeout: args.timeout,
            change_budget: args.change_budget,
            max_server_memory_kb: match args.max_server_memory {
                Some(gib) => (gib * server::GIB_IN_KB) as u64,
                // Most of what is free: the generator needs little, and other processes some.
                None => available_memory_kb()? * 7 / 10,
            },
            sluice,
            sluice_args: args.sluice_args,
            json: args.json,
            keep: args.keep,
        })
    }
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let plan = Plan::from_args(args)?;
    let open_files = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let largest = plan.settings.sidecars.iter().copied().max().unwrap_or(0) as u64;
    if open_files < largest + SPARE_FDS {
        bail!(
            "{largest} sidecars need about {} open files, but RLIMIT_NOFILE allows {open_files}; raise the hard limit (ulimit -Hn)",
            largest + SPARE_FDS
        );
    }
    // The generator gets CPU 1 to itself; the servers get CPU 0.
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(core) = cores.iter().find(|c| c.id == 1) {
        if !core_affinity::set_for_current(*core) {
            eprintln!("sluice-bench: could not pin the generator to CPU 1; running unpinned");
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        tokio::select! {
            result = run(plan, open_files) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; servers stopped and temporary files removed")),
        }
    })
}

async fn run(plan: Plan, open_files: u64) -> anyhow::Result<()> {
    let taskset = server::taskset_works();
    let machine = Machine::probe(open_files, taskset);
    println!("{machine}");
    let settings = &plan.settings;
    println!(
        "settings: {} services, sidecars {:?}, {} changes, connect concurrency {}, storm concurrency {}, idle window {:?}, server memory limit {:.1} GiB",
        settings.services,
        settings.sidecars,
        settings.changes,
        settings.concurrency,
        settings
            .storm_concurrency
            .map_or("all".to_string(), |n| n.to_string()),
        plan.idle_window,
        plan.max_server_memory_kb as f64 / server::GIB_IN_KB,
    );

    // The work folder (mesh and logs) is removed on drop unless --keep names one.
    let temp;
    let work: &Path = match &plan.keep {
        Some(path) => {
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating {}", path.display()))?;
            path
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("sluice-bench-")
                .tempdir()
                .context("creating the work folder")?;
            temp.path()
        }
    };
    let largest = settings.sidecars.iter().copied().max().unwrap_or(0) as u64;
    if let Some(limit) = kernel::tcp_memory_limit_bytes() {
        // Every route configuration (about 1 KiB per service) to every sidecar at once, as when
        // they all connect or reconnect; a change sends only the one that changed.
        let burst = largest * settings.services as u64 * 1024;
        if burst > limit {
            eprintln!(
                "note: the route configurations for {largest} sidecars are about {:.1} GiB, over the kernel's TCP memory limit of {:.1} GiB (net.ipv4.tcp_mem); expect loopback stalls at that size unless the limit is raised",
                burst as f64 / (1u64 << 30) as f64,
                limit as f64 / (1u64 << 30) as f64
            );
        }
    }
    let mesh = MeshDir::generate(work, settings.services)?;
    validate(&plan.sluice, mesh.path())?;
    eprintln!(
        "mesh: {} services in {} (valid by `sluice validate`)",
        mesh.services(),
        mesh.path().display()
    );
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let launcher = Launcher {
        sluice: plan.sluice.clone(),
        sluice_args: plan.sluice_args.clone(),
        bench: std::env::current_exe().context("locating this executable")?,
        taskset,
        logs,
    };

    let mut rows = Vec::new();
    for protocol in &settings.protocols {
        // A server that failed with N sidecars is not tried with more.
        let mut failed_at: Vec<(Kind, usize)> = Vec::new();
        for &sidecars in &settings.sidecars {
            for &kind in &settings.servers {
                if let Some((_, n)) = failed_at.iter().find(|(k, _)| *k == kind) {
                    eprintln!("== {kind}, {protocol}, {sidecars} sidecars: skipped");
                    rows.push(Row {
                        server: kind,
                        protocol: *protocol,
                        sidecars,
                        result: Outcome::Failed(format!("not run: failed with {n} sidecars")),
                    });
                    continue;
                }
                eprintln!("== {kind}, {protocol}, {sidecars} sidecars");
                let result = measure(&plan, &launcher, &mesh, kind, *protocol, sidecars).await;
                let result = match result {
                    Ok(measurement) => Outcome::Ok(Box::new(measurement)),
                    Err(err) => {
                        eprintln!("   FAILED: {err:#}");
                        failed_at.push((kind, sidecars));
                        Outcome::Failed(format!("{err:#}"))
                    }
                };
                rows.push(Row {
                    server: kind,
                    protocol: *protocol,
                    sidecars,
                    result,
                });
            }
        }
    }

    println!("{}", report::tables(settings, &rows));
    if let Some(path) = &plan.json {
        report::write_json(path, &machine, settings, &rows)?;
        eprintln!("raw numbers written to {}", path.display());
    }
    let failed = rows
        .iter()
        .filter(|r| matches!(r.result, Outcome::Failed(_)))
        .count();
    if failed > 0 {
        bail!("{failed} of {} measurements failed", rows.len());
    }
    Ok(())
}

/// `sluice validate MESH`, failing loudly with its output.
fn validate(sluice: &Path, mesh: &Path) -> anyhow::Result<()> {
    let output = std::process::Command::new(sluice)
        .arg("validate")
        .arg(mesh)
        .output()
        .with_context(|| format!("running {} validate", sluice.display()))?;
    if !output.status.success() {
        bail!(
            "`sluice validate` refused the generated mesh ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

async fn measure(
    plan: &Plan,
    launcher: &Launcher,
    mesh: &MeshDir,
    kind: Kind,
    protocol: Protocol,
    sidecars: usize,
) -> anyhow::Result<Measurement> {
    mesh.write_variant(0)?;
    let tag = format!("{protocol}-{sidecars}");
    let mut server = match kind {
        Kind::Sluice => Server::start_sluice(launcher, mesh.path(), &tag).await?,
        Kind::Floor => Server::start_floor(launcher, mesh.path(), &tag).await?,
    };
    let result = measure_server(plan, mesh, &mut server, protocol, sidecars).await;
    let log = server.log().to_path_buf();
    server.stop().await;
    result.map_err(|err| anyhow!("{err:#} (log: {})", log.display()))
}

async fn measure_server(
    plan: &Plan,
    mesh: &MeshDir,
    server: &mut Server,
    protocol: Protocol,
    sidecars: usize,
) -> anyhow::Result<Measurement> {
    let mut m = Measurement::default();
    let tcp_before = TcpCounters::read()?;
    settle(server, None).await?;
    m.rss_empty_kb = server.rss_kb()?;
    let compiles_before = match server.kind {
        Kind::Sluice => {
            let metrics = server.sluice_metrics().await?;
            m.first_compile_ms = Some(metrics.last_compile_seconds * 1e3);
            Some(metrics)
        }
        Kind::Floor => None,
    };

    let window =
        (plan.settings.window_kib > 0).then(|| plan.settings.window_kib.saturating_mul(1024));
    let mut fleet = Fleet::new(protocol, server.xds, sidecars, window)?;
    let watchdog = server.watchdog(plan.max_server_memory_kb);
    let generator = generator_cpu()?;
    let took = fleet
        .connect(
            Mode::Initial,
            Some(plan.settings.concurrency),
            plan.timeout,
            &|| watchdog.check(),
        )
        .await
        .context("connecting")?;
    m.generator_connect_cpu_percent = percent(generator_cpu()? - generator, took);
    m.stream_failures_connect = fleet.stream_failures();
    m.connect_seconds = took.as_secs_f64();
    m.connect_per_second = sidecars as f64 / m.connect_seconds;
    eprintln!(
        "   connect: {sidecars} fully configured in {:.2} s ({:.0}/s)",
        m.connect_seconds, m.connect_per_second
    );
    settle(server, Some(&fleet)).await?;
    if let Some(before) = compiles_before {
        let after = server.sluice_metrics().await?;
        m.connect_compiles = Some((after.compile_count - before.compile_count) as u64);
        m.connect_compile_seconds = Some(after.compile_sum_seconds - before.compile_sum_seconds);
    }
    m.rss_connected_kb = server.rss_kb()?;
    m.generator_rss_kb = generator_rss_kb()?;
    m.kb_per_sidecar = (m.rss_connected_kb as f64 - m.rss_empty_kb as f64) / sidecars as f64;

    let before = server.cpu_seconds()?;
    tokio::time::sleep(plan.idle_window).await;
    m.idle_cpu_percent = percent(server.cpu_seconds()? - before, plan.idle_window);
    m.idle_window_seconds = plan.idle_window.as_secs_f64();
    eprintln!(
        "   memory: {} → {} KiB ({:.1} KiB/sidecar); idle CPU {:.1}%",
        m.rss_empty_kb, m.rss_connected_kb, m.kb_per_sidecar, m.idle_cpu_percent
    );

    let failures = fleet.stream_failures();
    measure_changes(plan, mesh, server, &fleet, &mut m).await?;
    m.stream_failures_changes = fleet.stream_failures() - failures;
    let failures = fleet.stream_failures();
    m.storm = measure_storm(plan, server, &mut fleet).await?;
    m.stream_failures_storm = fleet.stream_failures() - failures;
    let errors = fleet.first_errors();
    if !errors.is_empty() {
        eprintln!("   stream errors (each sidecar reconnected): {errors}");
        m.stream_errors = errors.split("; ").map(str::to_string).collect();
    }
    m.resources_decoded = fleet.facts().decode_counts().0;
    let (_, decode_errors, first) = fleet.facts().decode_counts();
    if decode_errors > 0 {
        eprintln!("   warning: {decode_errors} resources did not decode: {first:?}");
    }
    fleet.disconnect(Duration::from_secs(30)).await?;
    m.kernel_tcp = TcpCounters::read()? - tcp_before;
    if m.kernel_tcp.troubled() {
        eprintln!(
            "   warning: the kernel ran short of TCP memory ({:?}); loopback stalls are in these figures",
            m.kernel_tcp
        );
    }
    Ok(m)
}

async fn measure_changes(
    plan: &Plan,
    mesh: &MeshDir,
    server: &mut Server,
    fleet: &Fleet,
    m: &mut Measurement,
) -> anyhow::Result<()> {
    let sidecars = fleet.len();
    let mut latencies = Vec::new();
    let (mut cpu, mut wall, mut generator_cpu_total) = (0.0, Duration::ZERO, 0.0);
    let phase_started = Instant::now();
    for change in 1..=plan.settings.changes {
        if change > MIN_CHANGES && phase_started.elapsed() > plan.change_budget {
            eprintln!(
                "   {} of {} changes measured: the change budget ({:?}, --change-budget) is spent",
                change - 1,
                plan.settings.changes,
                plan.change_budget
            );
            break;
        }
        settle(server, Some(fleet)).await?;
        let cpu_before = server.cpu_seconds()?;
        let bytes_before = server.bytes_sent().await?;
        let totals_before = fleet.totals();
        let generator = generator_cpu()?;
        let started = Instant::now();
        fleet.tracker().arm(change as u64, started);
        match server.kind {
            Kind::Sluice => mesh.write_variant(change)?,
            Kind::Floor => server.floor_change().await?,
        }
        let watchdog = server.watchdog(plan.max_server_memory_kb);
        let acked = fleet
            .wait_for_acks(sidecars, CHANGE_TIMEOUT, &|| watchdog.check())
            .await?;
        let took = started.elapsed();
        let server_cpu = server.cpu_seconds()? - cpu_before;
        generator_cpu_total += generator_cpu()? - generator;
        // Responses still on their way belong to this change's bytes; a server still pushing
        // may also answer its metrics late.
        fleet
            .wait_quiet(Duration::from_millis(200), Duration::from_secs(10))
            .await;
        if acked < sidecars {
            settle(server, Some(fleet)).await?;
        }
        let client = fleet.totals() - totals_before;
        let server_bytes = server.bytes_sent().await?.saturating_sub(bytes_before);
        let compile_ms = match server.kind {
            Kind::Sluice => Some(server.sluice_metrics().await?.last_compile_seconds * 1e3),
            Kind::Floor => None,
        };
        let samples: Vec<f64> = fleet
            .tracker()
            .latencies()
            .iter()
            .map(|micros| *micros as f64 / 1e3)
            .collect();
        let latency_ms = Summary::of(&samples);
        eprintln!(
            "   change {change}: {acked}/{sidecars} ACKed, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; server CPU {:.2} s; {} KiB sent",
            latency_ms.p50,
            latency_ms.p99,
            latency_ms.max,
            server_cpu,
            server_bytes / 1024
        );
        latencies.extend(samples);
        cpu += server_cpu;
        wall += took;
        m.never_acked += sidecars - acked.min(sidecars);
        m.changes.push(ChangeMeasurement {
            latency_ms,
            acked,
            missing: sidecars - acked.min(sidecars),
            wall_seconds: took.as_secs_f64(),
            server_cpu_seconds: server_cpu,
            server_bytes,
            client_bytes: client.bytes,
            client_responses: client.responses,
            compile_ms,
        });
        if acked < sidecars {
            // The server cannot keep up; more changes would only pile onto this one.
            eprintln!(
                "   no further changes: {} sidecars had not ACKed change {change} after {CHANGE_TIMEOUT:?}",
                sidecars - acked
            );
            break;
        }
    }
    let changes = m.changes.len().max(1) as f64;
    m.change_ms = Summary::of(&latencies);
    m.churn_cpu_percent = (wall >= Duration::from_secs(1)).then(|| percent(cpu, wall));
    m.generator_churn_cpu_percent = percent(generator_cpu_total, wall);
    m.server_bytes_per_change =
        m.changes.iter().map(|c| c.server_bytes as f64).sum::<f64>() / changes;
    m.client_bytes_per_change =
        m.changes.iter().map(|c| c.client_bytes as f64).sum::<f64>() / changes;
    m.server_bytes_per_change_per_sidecar = m.server_bytes_per_change / sidecars as f64;
    m.client_bytes_per_change_per_sidecar = m.client_bytes_per_change / sidecars as f64;
    let mut compiles: Vec<f64> = m.changes.iter().filter_map(|c| c.compile_ms).collect();
    if !compiles.is_empty() {
        compiles.sort_by(f64::total_cmp);
        m.change_compile_ms = Some(compiles[compiles.len() / 2]);
    }
    Ok(())
}

async fn measure_storm(
    plan: &Plan,
    server: &mut Server,
    fleet: &mut Fleet,
) -> anyhow::Result<StormMeasurement> {
    settle(server, Some(fleet)).await?;
    fleet.disconnect(Duration::from_secs(60)).await?;
    // The storm starts once the server has seen every stream go. A server busy with that may
    // answer its metrics late; only the deadline fails the wait.
    let started = Instant::now();
    loop {
        let open = server.open_streams().await;
        if matches!(open, Ok(0)) {
            break;
        }
        if started.elapsed() > STREAMS_GONE_TIMEOUT {
            bail!(
                "the server still counts {open:?} open streams {STREAMS_GONE_TIMEOUT:?} after every sidecar left"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let totals_before = fleet.totals();
    let bytes_before = server.bytes_sent().await?;
    let cpu_before = server.cpu_seconds()?;
    let watchdog = server.watchdog(plan.max_server_memory_kb);
    let took = fleet
        .connect(
            Mode::Reconnect,
            plan.settings.storm_concurrency,
            plan.timeout,
            &|| watchdog.check(),
        )
        .await
        .context("reconnect storm")?;
    let server_cpu_seconds = server.cpu_seconds()? - cpu_before;
    fleet
        .wait_quiet(Duration::from_millis(200), Duration::from_secs(10))
        .await;
    let client = fleet.totals() - totals_before;
    let server_bytes = server.bytes_sent().await?.saturating_sub(bytes_before);
    let storm = StormMeasurement {
        seconds: took.as_secs_f64(),
        per_second: fleet.len() as f64 / took.as_secs_f64(),
        responses: client.responses,
        resources: client.resources,
        client_bytes: client.bytes,
        server_bytes,
        server_cpu_seconds,
    };
    eprintln!(
        "   storm: {} back in sync in {:.2} s ({:.0}/s); {} responses, {} resources, {} KiB",
        fleet.len(),
        storm.seconds,
        storm.per_second,
        storm.responses,
        storm.resources,
        storm.client_bytes / 1024
    );
    Ok(storm)
}

/// Waits until the server used under 5% of a core over half a second and (with a fleet) no
/// response arrived meanwhile; at most [`SETTLE_TIMEOUT`], then measures anyway.
async fn settle(server: &mut Server, fleet: Option<&Fleet>) -> anyhow::Result<()> {
    const WINDOW: Duration = Duration::from_millis(500);
    let started = Instant::now();
    let mut cpu = server.cpu_seconds()?;
    let mut totals = fleet.map(Fleet::totals);
    loop {
        tokio::time::sleep(WINDOW).await;
        let cpu_now = server.cpu_seconds()?;
        let totals_now = fleet.map(Fleet::totals);
        if percent(cpu_now - cpu, WINDOW) < 5.0 && totals_now == totals {
            return Ok(());
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            eprintln!("   (the server was still busy after {SETTLE_TIMEOUT:?}; measuring anyway)");
            return Ok(());
        }
        (cpu, totals) = (cpu_now, totals_now);
    }
}

/// CPU seconds over a wall-clock window, as % of one core.
fn percent(cpu_seconds: f64, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    100.0 * cpu_seconds / wall.as_secs_f64()
}

/// `MemAvailable` from `/proc/meminfo`, in KiB.
fn available_memory_kb() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no MemAvailable in /proc/meminfo"))
}

fn generator_rss_kb() -> anyhow::Result<u64> {
    server::vm_rss_kb("/proc/self/status")
}

fn generator_cpu() -> anyhow::Result<f64> {
    server::process_cpu_seconds("/proc/self/stat")
}
