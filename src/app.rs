//! Wiring only: builds the pieces of `sluice serve`, connects their channels, runs them, and
//! drains them on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cli::ServeArgs;
use crate::debug::{self, DebugState};
use crate::manifest::LoadOptions;
use crate::metrics::Metrics;
use crate::publisher::{Publisher, SourceStatus, Warmup};
use crate::registry::Registry;
use crate::shutdown::drained;
use crate::source::dir::DirSource;
use crate::source::git::{self, Credentials, GitOptions, GitSource, Repo, Ssh};
use crate::source::webhook::{self, Secret, WebhookConfig, WebhookMetrics};
use crate::source::{CandidateSender, FetchStatus};
use crate::xds::csds::CsdsServer;
use crate::xds::server::{AdsServer, Shared, Streams};

/// How long a drain waits for streams and listeners to close before the process exits anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The source task, built from `--dir` or `--repo`.
enum Source {
    Dir(DirSource),
    Git(GitSource),
}

impl Source {
    async fn run(self, shutdown: watch::Receiver<bool>) {
        match self {
            Source::Dir(source) => source.run(shutdown).await,
            Source::Git(source) => source.run(shutdown).await,
        }
    }
}

/// Builds the source and what `/debug/source` starts with.
fn build_source(
    args: &ServeArgs,
    options: LoadOptions,
    candidates: CandidateSender,
    fetch_status: watch::Sender<FetchStatus>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Source, SourceStatus)> {
    if let Some(dir) = &args.dir {
        if args.webhook_listen.is_some() {
            bail!("--webhook-listen triggers fetches of --repo; a folder given with --dir is watched without it");
        }
        let status = SourceStatus {
            repo: Some(dir.display().to_string()),
            ..SourceStatus::default()
        };
        let source = DirSource::new(dir.clone(), options, candidates, metrics);
        return Ok((Source::Dir(source), status));
    }
    let Some(repo) = &args.repo else {
        bail!("give --repo URL|PATH or --dir PATH");
    };
    let repo = Repo::parse(repo)?;
    git::remote::check_branch(&args.branch)?;
    let path = match &args.path {
        Some(path) => git::split_path(path).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    if args.poll_interval.is_zero() {
        bail!("--poll-interval must be above zero");
    }
    let status = SourceStatus {
        repo: Some(repo.display.clone()),
        branch: Some(args.branch.clone()),
        ..SourceStatus::default()
    };
    let credentials = Credentials::from_sources(args.git_credentials_file.clone(), |name| {
        std::env::var(name).ok()
    });
    let git_options = GitOptions {
        repo,
        branch: args.branch.clone(),
        path,
        poll_interval: args.poll_interval,
        cache_dir: args.cache_dir.clone(),
        credentials,
        ssh: Ssh {
            key_file: args.ssh_key_file.clone(),
            known_hosts: args.ssh_known_hosts.clone(),
        },
        load: options,
    };
    let source = GitSource::new(git_options, candidates, fetch_status, metrics)
        .context("creating the git cache folder")?;
    Ok((Source::Git(source), status))
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    raise_open_file_limit();
    let options = LoadOptions {
        allow_empty: args.allow_empty,
        ..LoadOptions::default()
    };
    let metrics = Arc::new(Metrics::default());
    let streams = Arc::new(Streams::default());
    let (shutdown_tx, shutdown) = watch::channel(false);

    let (candidates_tx, candidates) = watch::channel(None);
    let (view_tx, view) = watch::channel(None);
    let (fetch_tx, fetch) = watch::channel(FetchStatus::default());
    let (source, initial_status) =
        build_source(&args, options, candidates_tx, fetch_tx, metrics.clone())?;
    let webhook = match (&source, args.webhook_listen) {
        (Source::Git(git), Some(addr)) => {
            let Some(secret_file) = &args.webhook_secret_file else {
                bail!("--webhook-listen needs --webhook-secret-file: hooks are only taken signed with its secret");
            };
            let config = Arc::new(WebhookConfig {
                secret: Secret::from_file(secret_file)?,
                branch: args.branch.clone(),
            });
            let metrics = Arc::new(WebhookMetrics::default());
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the webhook listener on {addr}"))?;
            info!(webhook = %listener.local_addr()?, "taking Git push webhooks");
            let router = webhook::router(config, git.trigger(), metrics.clone());
            Some((listener, router, metrics))
        }
        _ => None,
    };
    let fetch = matches!(source, Source::Git(_)).then_some(fetch);
    let (status_tx, status) = watch::channel(initial_status);
    let (registry, registry_handle, workloads) = Registry::new(args.endpoint_grace);

    let xds_listener = bind_xds(args.xds_listen)
        .with_context(|| format!("binding the xDS listener on {}", args.xds_listen))?;
    let debug_listener = TcpListener::bind(args.debug_listen)
        .await
        .with_context(|| format!("binding the debug listener on {}", args.debug_listen))?;
    info!(xds = %xds_listener.local_addr()?, debug = %debug_listener.local_addr()?, source = status.borrow().repo.as_deref().unwrap_or_default(), "sluice serving");

    let publisher = Publisher {
        candidates,
        workloads,
        view: view_tx,
        status: status_tx,
        metrics: metrics.clone(),
        streams: streams.clone(),
        warmup: Warmup {
            min: args.startup_warmup,
            settle: Duration::from_millis(300),
            max: args.startup_warmup.max(args.endpoint_grace),
        },
        compile_cache: Default::default(),
    };
    let shared = Arc::new(Shared::new(
        view.clone(),
        streams.clone(),
        metrics.clone(),
        Arc::new(registry_handle),
        shutdown.clone(),
    ));
    let debug_state = DebugState {
        status,
        fetch,
        webhook: webhook.as_ref().map(|(_, _, metrics)| metrics.clone()),
        streams,
        view,
        metrics,
    };

    let registry_task = tokio::spawn(registry.run());
    let source_task = tokio::spawn(source.run(shutdown.clone()));
    let publisher_task = tokio::spawn(publisher.run(shutdown.clone()));
    let keepalive = (args.xds_keepalive_interval, args.xds_keepalive_timeout);
    let xds_task = tokio::spawn(run_xds(xds_listener, shared, keepalive, shutdown.clone()));
    let debug_task = tokio::spawn(run_debug(debug_listener, debug_state, shutdown.clone()));
    let webhook_task = webhook.map(|(listener, router, _)| {
        tokio::spawn(webhook::run(listener, router, shutdown.clone()))
    });

    wait_for_signal().await;
    info!("draining: closing every stream so sidecars reconnect elsewhere");
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let _ = xds_task.await;
        let _ = debug_task.await;
        if let Some(task) = webhook_task {
            let _ = task.await;
        }
        let _ = source_task.await;
        let _ = publisher_task.await;
    })
    .await;
    if drained.is_err() {
        info!("drain timed out; exiting");
    }
    registry_task.abort();
    Ok(())
}

/// How many connections may wait to be accepted on the xDS port (the kernel caps it at
/// `net.core.somaxconn`). Every sidecar of a node pool reconnects at once after a restart;
/// tokio's default of 1,024 overflows then, and each dropped SYN costs a sidecar a second.
const XDS_LISTEN_BACKLOG: u32 = 8192;

fn bind_xds(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(XDS_LISTEN_BACKLOG)
}

async fn run_xds(
    listener: TcpListener,
    shared: Arc<Shared>,
    (keepalive_interval, keepalive_timeout): (Duration, Duration),
    mut shutdown: watch::Receiver<bool>,
) {
    // Socket options of accepted connections are set here: tonic's builder settings for them
    // apply only to listeners it binds itself. Without TCP_NODELAY the last segment of a push
    // waits for the sidecar's delayed ACK (about 40 ms on Linux).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let result = tonic::transport::Server::builder()
        // Keepalives notice half-open streams of sidecars that vanished without a FIN.
        .http2_keepalive_interval(Some(keepalive_interval))
        .http2_keepalive_timeout(Some(keepalive_timeout))
        .max_concurrent_streams(Some(64))
        .add_service(CsdsServer::new(shared.streams.clone()).into_service())
        .add_service(AdsServer::new(shared).into_service())
        .serve_with_incoming_shutdown(incoming, async move { drained(&mut shutdown).await })
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "xDS server failed");
    }
}

async fn run_debug(listener: TcpListener, state: DebugState, mut shutdown: watch::Receiver<bool>) {
    let result = axum::serve(listener, debug::router(state))
        .with_graceful_shutdown(async move { drained(&mut shutdown).await })
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "debug server failed");
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Every sidecar holds a connection open: raise the soft limit on open files to the hard one, as
/// a server holding thousands of them must (the default soft limit is often 1,024).
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < 16_384 => {
            warn!(limit, "open-file limit is low: each connected sidecar takes one; raise the hard limit (ulimit -Hn) for large meshes")
        }
        Ok(limit) => debug!(limit, "open-file limit"),
        Err(error) => warn!(%error, "could not raise the open-file limit"),
    }
}
