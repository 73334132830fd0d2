use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sluice::cli::{Cli, Command, LogFormat};

/// How often the memory releaser reads the process's CPU time.
const RELEASE_TICK: Duration = Duration::from_millis(250);

/// CPU a burst of work must have used for the memory it freed to be returned after it, in clock
/// ticks (10 ms): connecting hundreds of sidecars, a reconnect storm or loading a large mesh,
/// not a change pushed to a thousand sidecars (30-60 ms), which frees little and whose next
/// one would only fault the returned pages in again.
const RELEASE_AFTER_TICKS: u64 = 25;

/// glibc's malloc keeps what the process frees for reuse and gives back to the system only
/// what is free at the top of its heap. A burst of work (sidecars connecting with large first
/// requests and answers, a reconnect storm, loading the mesh) frees short-lived buffers among
/// long-lived allocations, and a server gone quiet after it would keep their pages resident.
/// Once a burst of at least [`RELEASE_AFTER_TICKS`] of CPU is followed by a whole
/// [`RELEASE_TICK`] without any, `malloc_trim` returns every whole free page. An idle server is
/// never trimmed. 7 KB less per SotW sidecar at 1,000 (BENCHMARKS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory_after_bursts() {
    let releaser = move || {
        let mut bursts = Bursts::default();
        let mut last = cpu_ticks();
        loop {
            std::thread::sleep(RELEASE_TICK);
            let now = cpu_ticks();
            let (Some(before), Some(after)) = (last, now) else {
                return;
            };
            last = now;
            if bursts.ended(after.saturating_sub(before)) {
                let released_kb = release_freed_memory();
                tracing::debug!(released_kb, "returned memory freed after a burst");
            }
        }
    };
    if let Err(err) = std::thread::Builder::new()
        .name("sluice-release".into())
        .spawn(releaser)
    {
        tracing::warn!(error = %err, "not returning freed memory after bursts");
    }
}

/// Returns every whole free page of the heap to the system; the KiB it released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() -> i64 {
    let before = resident_kb();
    // SAFETY: `malloc_trim` takes glibc's arena locks itself and only gives back pages that
    // hold no allocation; no memory the program uses is touched.
    unsafe { libc::malloc_trim(0) };
    match (before, resident_kb()) {
        (Some(before), Some(after)) => before as i64 - after as i64,
        _ => 0,
    }
}

/// Tells, from the CPU ticks used in each [`RELEASE_TICK`], when a burst of work that used at
/// least [`RELEASE_AFTER_TICKS`] ended.
#[derive(Debug, Default)]
struct Bursts {
    /// Ticks used since the last tick without any.
    used: u64,
}

impl Bursts {
    /// True once per long enough burst: at the first tick without CPU after it.
    fn ended(&mut self, ticks_used: u64) -> bool {
        if ticks_used > 0 {
            self.used += ticks_used;
            return false;
        }
        std::mem::take(&mut self.used) >= RELEASE_AFTER_TICKS
    }
}

/// The process's user and system CPU time in clock ticks, all threads (`/proc/self/stat`).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; utime and stime are
    // fields 14 and 15, the 12th and 13th after it.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The process's resident memory in KiB (`/proc/self/statm`, in pages of 4 KiB).
fn resident_kb() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_tracing(args.log_format);
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            release_freed_memory_after_bursts();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("error: starting the runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(sluice::app::serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = format!("{err:#}"), "sluice stopped");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bootstrap(args) => match sluice::bootstrap::render(&args.into()) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
        },
        Command::Validate(args) => sluice::validate::run(&args),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_enough_burst_ends_at_the_first_tick_without_cpu() {
        let mut bursts = Bursts::default();
        let long = RELEASE_AFTER_TICKS - 1;
        let ended: Vec<bool> = [0, 0, long, 1, 0, 0, long, 0, 1, 0, 0]
            .into_iter()
            .map(|ticks| bursts.ended(ticks))
            .collect();
        assert_eq!(
            ended,
            [false, false, false, false, true, false, false, false, false, false, false],
            "only the burst of {RELEASE_AFTER_TICKS} ticks ends with a release"
        );
    }

    #[test]
    fn cpu_ticks_count_this_processs_work() {
        let before = cpu_ticks().expect("/proc/self/stat reads");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = cpu_ticks().expect("/proc/self/stat reads");
        assert!(
            after >= before + 5,
            "{before} -> {after} ticks over 100 ms of work"
        );
    }

    /// Freed blocks between live ones stay resident until released.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn releasing_returns_the_pages_of_freed_blocks_between_live_ones() {
        // 64 KiB blocks are below glibc's mmap threshold: they come from the heap. Every
        // other one stays live, so the freed ones cannot be given back from the heap's top.
        let mut blocks: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; 64 * 1024]).collect();
        let mut kept = Vec::new();
        for (i, block) in blocks.drain(..).enumerate() {
            if i % 2 == 0 {
                kept.push(block);
            }
        }
        let released_kb = release_freed_memory();
        assert!(
            released_kb >= 16 * 1024,
            "{released_kb} KiB released of 32 MiB freed"
        );
        assert_eq!(kept.len(), 512);
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (2 * i) as u8));
    }
}
