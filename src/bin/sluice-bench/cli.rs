//! The command line of `sluice-bench`. `///` comments are the help text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-bench",
    about = "Benchmark `sluice serve` with simulated Envoy sidecars, next to a pre-encoded floor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a mesh, start Sluice and the floor, and measure both with N simulated sidecars.
    Run(Box<RunArgs>),
    /// Serve a mesh from pre-encoded responses (started by `run`; not meant to be run by hand).
    #[command(hide = true)]
    Floor(FloorArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolChoice {
    Delta,
    Sotw,
    Both,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Numbers of simulated sidecars to measure, comma-separated [default: 1,1000,5000,10000;
    /// --quick: 1,100].
    #[arg(long, value_delimiter = ',')]
    pub sidecars: Option<Vec<usize>>,
    /// Services in the generated mesh, each with a v1 and a v2 [default: 1000; --quick: 50].
    #[arg(long)]
    pub services: Option<usize>,
    /// ADS flavour the sidecars speak.
    #[arg(long, value_enum, default_value_t = ProtocolChoice::Delta)]
    pub protocol: ProtocolChoice,
    /// One-file changes measured per sidecar count [default: 10; --quick: 3].
    #[arg(long)]
    pub changes: Option<usize>,
    /// Write every raw number to this file as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A small smoke configuration: 1 and 100 sidecars, 50 services, 3 changes, 2 s idle window.
    #[arg(long)]
    pub quick: bool,
    /// Sidecars connecting (not yet fully configured) at once during the connect phase.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Each sidecar's HTTP/2 receive window in KiB, for its connection and its stream
    /// [default: hyper's, 2 MiB per stream and 5 MiB per connection]. Small windows keep many
    /// sidecars from filling the kernel's TCP memory, but cost a round trip per window.
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub window: u32,
    /// Sidecars reconnecting at once in the reconnect storm (0: all of them).
    #[arg(long, default_value_t = 0)]
    pub storm_concurrency: usize,
    /// How long the server's idle CPU is sampled [default: 10s; --quick: 2s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_window: Option<Duration>,
    /// Time allowed for the changes of one measurement: once spent, no new change starts
    /// (at least 3 are measured).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub change_budget: Duration,
    /// Longest wait for any one phase (connect, a change, the storm) before the row fails.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// A server whose resident memory grows past this many GiB fails its measurement, before
    /// the machine runs out [default: 70% of the memory available at start].
    #[arg(long)]
    pub max_server_memory: Option<f64>,
    /// An extra argument for `sluice serve` (repeat for more), e.g.
    /// `--sluice-arg=--xds-keepalive-timeout=60s`.
    #[arg(long = "sluice-arg", allow_hyphen_values = true)]
    pub sluice_args: Vec<String>,
    /// The `sluice` binary [default: `sluice` next to this executable].
    #[arg(long)]
    pub sluice: Option<PathBuf>,
    /// The servers to measure, each with every protocol and sidecar count.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sluice,floor"
    )]
    pub servers: Vec<crate::server::Kind>,
    /// Keep the generated mesh and the servers' logs in this folder instead of a temporary one.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FloorArgs {
    /// The mesh folder to compile once at start.
    #[arg(long)]
    pub mesh: PathBuf,
    /// Address of the ADS listener.
    #[arg(long)]
    pub listen: SocketAddr,
}
