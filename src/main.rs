use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{Cli, Command, LogFormat};

/// Sluice allocates and frees many small strings and maps per sidecar request; mimalloc's
/// per-thread free lists cost a fraction of the system allocator's (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: the option between `mi_option_eager_commit_delay` (14)
/// and `mi_option_use_numa_nodes` (16), which the bindings leave unnamed.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed after a burst (sidecars connecting: their first requests and answers are large
/// and short-lived) goes back to the system at once, not after mimalloc's default second, which
/// only runs out while the server keeps allocating: a server gone quiet after a burst kept it.
/// 13 KB less per SotW sidecar at 1,000 and 10 MB less with the mesh loaded (BENCHMARKS.md).
/// An operator's `MIMALLOC_PURGE_DELAY` is left as set.
fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets one integer in mimalloc's option table, which it reads whenever it decides
    // whether to purge; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            purge_freed_memory_at_once();
            init_tracing(args.log_format);
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

    /// The option set is mimalloc's purge delay: unset, it reads mimalloc 3's default of
    /// 1,000 ms, and after the call 0.
    #[test]
    fn the_option_set_is_mimallocs_purge_delay() {
        let read = || {
            // SAFETY: reads one integer of mimalloc's option table.
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
        };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        assert_eq!(read(), 1000);
        purge_freed_memory_at_once();
        assert_eq!(read(), 0);
    }
}
