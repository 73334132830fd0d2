//! `sluice-bench`: measures `sluice serve` under many simulated Envoy sidecars, next to a floor.
//!
//! `sluice-bench run` generates a mesh, starts the real `sluice serve` pinned to CPU 0, connects
//! N simulated sidecars over loopback from CPU 1, and measures connect time, memory per sidecar,
//! idle CPU, how long a one-file change takes to be ACKed by every sidecar, the bytes a change
//! costs, compile times and a reconnect storm. It then measures the same against the floor
//! (`sluice-bench floor`, a hidden subcommand): a responder that serves the same compiled mesh
//! from pre-encoded bytes with no bookkeeping, i.e. what the transport alone costs. Every Sluice
//! figure is reported next to the floor's.
//!
//! # Layout
//! - [`cli`]: the command line.
//! - [`run`]: one whole run: the plan, the phases per (protocol, server, N), the report.
//! - [`mesh`]: the generated mesh and the one file each change rewrites.
//! - [`server`]: the process under test (Sluice or the floor): start, readiness, `/proc` and
//!   `/metrics` readings, triggering a change; killed on drop.
//! - [`fleet`]: N simulated sidecars: connect, changes, disconnect and reconnect.
//! - [`sidecar`]: one simulated Envoy: the ADS conversation (delta or SotW).
//! - [`facts`]: what responses mean, decoded once per distinct resource and shared.
//! - [`grpc`]: a sidecar's bidirectional gRPC stream over its own tonic `Channel`.
//! - [`wire`]: reading responses cheaply, and the request and floor codecs.
//! - [`floor`]: the floor server.
//! - [`machine`]: facts about this machine, printed at the top.
//! - [`kernel`]: the host's TCP counters, to tell when loopback buffers ran out.
//! - [`stats`], [`report`]: percentiles, the tables and the JSON.

#![forbid(unsafe_code)]

mod cli;
mod facts;
mod fleet;
mod floor;
mod grpc;
mod kernel;
mod machine;
mod mesh;
mod report;
mod run;
mod server;
mod sidecar;
mod stats;
mod wire;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Run(args) => run::main(*args),
        cli::Command::Floor(args) => floor::main(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sluice-bench: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
