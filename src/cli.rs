//! The command line: `sluice serve`, `sluice bootstrap` and `sluice validate`.
//!
//! Every `serve` flag also reads an environment variable (`SLUICE_DIR`, `SLUICE_XDS_LISTEN`, ...),
//! so the same binary is configured the same way in a container and on a VM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bootstrap::XdsProtocol;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "An xDS control plane for Envoy sidecars, driven by Git"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a manifest folder to Envoy sidecars over ADS.
    Serve(ServeArgs),
    /// Print an Envoy bootstrap (YAML) for one sidecar.
    Bootstrap(BootstrapArgs),
    /// Load and compile a manifest folder exactly as `serve` would, and print every problem.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Git repository to follow: `https://`, `ssh://` (or `user@host:path`), `git://`,
    /// `file://` or a local path. Never put a password in it: see `--git-credentials-file`.
    #[arg(
        long,
        env = "SLUICE_REPO",
        conflicts_with = "dir",
        required_unless_present = "dir"
    )]
    pub repo: Option<String>,
    /// Branch of `--repo` to follow.
    #[arg(long, env = "SLUICE_BRANCH", default_value = "main")]
    pub branch: String,
    /// Only read manifests below this folder of the repository (default: the whole repository).
    #[arg(long, env = "SLUICE_PATH")]
    pub path: Option<PathBuf>,
    /// How often to fetch `--repo` (`500ms`, `5s`, `1m`).
    #[arg(long, env = "SLUICE_POLL_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Where remotes are fetched to (a private bare repository per `--repo` and `--branch`,
    /// kept across restarts). Default: a temporary folder, removed at exit.
    #[arg(long, env = "SLUICE_CACHE_DIR", conflicts_with = "dir")]
    pub cache_dir: Option<PathBuf>,
    /// File holding HTTP(S) credentials for `--repo`: `username:password`, or a token alone,
    /// on its first line; read at each fetch. Without it, `SLUICE_GIT_USERNAME` and
    /// `SLUICE_GIT_PASSWORD` (or `SLUICE_GIT_TOKEN`) are used when set.
    #[arg(long, env = "SLUICE_GIT_CREDENTIALS_FILE", conflicts_with = "dir")]
    pub git_credentials_file: Option<PathBuf>,
    /// Private key for `ssh://` remotes (`ssh -i KEY -o IdentitiesOnly=yes`).
    #[arg(long, env = "SLUICE_SSH_KEY_FILE", conflicts_with = "dir")]
    pub ssh_key_file: Option<PathBuf>,
    /// known_hosts file for `ssh://` remotes; host keys are always checked
    /// (`StrictHostKeyChecking=yes`). Default: ssh's own (`~/.ssh/known_hosts`).
    #[arg(long, env = "SLUICE_SSH_KNOWN_HOSTS", conflicts_with = "dir")]
    pub ssh_known_hosts: Option<PathBuf>,
    /// Serve a plain folder and watch it for changes (for a git-sync sidecar).
    #[arg(long, env = "SLUICE_DIR")]
    pub dir: Option<PathBuf>,
    /// Address of the gRPC ADS listener.
    #[arg(long, env = "SLUICE_XDS_LISTEN", default_value = "0.0.0.0:18000")]
    pub xds_listen: SocketAddr,
    /// Address of the debug HTTP listener.
    #[arg(long, env = "SLUICE_DEBUG_LISTEN", default_value = "127.0.0.1:19000")]
    pub debug_listen: SocketAddr,
    /// Address of the Git push webhook listener (off unless given): a push to `--branch`
    /// signed by GitHub (`X-Hub-Signature-256`) or carrying GitLab's token (`X-Gitlab-Token`)
    /// fetches at once. Needs `--webhook-secret-file`.
    #[arg(long, env = "SLUICE_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// File holding the webhook secret (the one the Git host signs hooks with).
    #[arg(long, env = "SLUICE_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// How often the xDS server pings an idle sidecar connection (HTTP/2 keepalive), so a
    /// sidecar that vanished without closing its connection is noticed.
    #[arg(long, env = "SLUICE_XDS_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub xds_keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "SLUICE_XDS_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub xds_keepalive_timeout: Duration,
    /// How long a disconnected sidecar's endpoints stay.
    #[arg(long, env = "SLUICE_ENDPOINT_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub endpoint_grace: Duration,
    /// How long after start-up to gather reconnecting sidecars before the first revision is
    /// served, so a restart never hands a sidecar endpoint sets that miss its peers. Serving
    /// waits at least this long and until no new sidecar appeared for 300ms, at most
    /// `--endpoint-grace`.
    #[arg(long, env = "SLUICE_STARTUP_WARMUP", default_value = "1s", value_parser = parse_duration)]
    pub startup_warmup: Duration,
    /// Serve a revision that holds no Service at all (it deletes the whole mesh).
    #[arg(long, env = "SLUICE_ALLOW_EMPTY")]
    pub allow_empty: bool,
    /// Log format on stderr.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Unique sidecar id.
    #[arg(long)]
    pub node_id: String,
    /// The workload's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The workload's labels (`k=v,k2=v2`); Service selectors match them.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The workload's own address, where other sidecars reach its application.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Where Sluice's ADS listener is (`HOST:PORT`).
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds_address: String,
    /// ADS flavour.
    #[arg(long, value_enum, default_value_t = XdsProtocol::Delta)]
    pub xds_protocol: XdsProtocol,
    /// The sidecar's outbound HTTP listener, which the application sends requests to.
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound_listen: SocketAddr,
    /// Envoy's admin listener.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_listen: SocketAddr,
    /// Locality zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// Locality region.
    #[arg(long)]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The manifest folder.
    pub path: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Accept a folder that holds no Service.
    #[arg(long)]
    pub allow_empty: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Parses `500ms`, `5s`, `1m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("invalid duration {text:?}: {err}"))
}

/// Parses `k=v,k2=v2` (empty: no labels).
pub fn parse_labels(text: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut labels = std::collections::BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not of the form key=value"))?;
        if key.is_empty() {
            return Err(format!("label {pair:?} has an empty key"));
        }
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return Err(format!("label {key:?} is given twice"));
        }
    }
    Ok(labels)
}

impl From<BootstrapArgs> for crate::bootstrap::BootstrapOptions {
    fn from(args: BootstrapArgs) -> Self {
        crate::bootstrap::BootstrapOptions {
            node_id: args.node_id,
            namespace: args.namespace,
            labels: args.labels,
            address: args.address,
            xds_address: args.xds_address,
            protocol: args.xds_protocol,
            outbound_listen: args.outbound_listen,
            admin_listen: args.admin_listen,
            zone: args.zone,
            region: args.region,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_reject_malformed_pairs() {
        let labels = parse_labels("app=echo, version=v1").expect("valid labels");
        assert_eq!(labels.get("app").map(String::as_str), Some("echo"));
        assert_eq!(labels.get("version").map(String::as_str), Some("v1"));
        assert!(parse_labels("").expect("empty is fine").is_empty());
        assert!(parse_labels("app").is_err());
        assert!(parse_labels("=x").is_err());
        assert!(parse_labels("a=1,a=2").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn serve_needs_exactly_one_source() {
        assert!(Cli::try_parse_from(["sluice", "serve"]).is_err());
        assert!(Cli::try_parse_from(["sluice", "serve", "--dir", "a", "--repo", "b"]).is_err());
        assert!(Cli::try_parse_from(["sluice", "serve", "--dir", "a"]).is_ok());
        assert!(
            Cli::try_parse_from(["sluice", "serve", "--repo", "https://example.com/m.git"]).is_ok()
        );
        assert!(
            Cli::try_parse_from(["sluice", "serve", "--dir", "a", "--ssh-key-file", "k"]).is_err(),
            "git flags make no sense with --dir"
        );
    }
}
