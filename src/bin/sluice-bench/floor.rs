//! The floor: the least an ADS server can do to serve the same mesh to the same sidecars, so
//! Sluice's figures can be read against what the transport alone costs.
//!
//! At start it loads and compiles the mesh once with the Sluice library, and a second time with
//! the changed weights of `svc-0001`, then encodes each type's full response once per
//! protocol, without a nonce, and what a change from the other variant sends. Serving is then
//! only writing bytes: the first request of each type on a stream gets the pre-encoded
//! response, with the stream's nonce appended as field 5 (protobuf allows fields in any order);
//! every later request (the ACKs, subscription changes) is ignored. A delta sidecar that
//! reconnects declaring exactly the current versions gets an empty answer for the wildcard types
//! (CDS, LDS, scoped RDS) and nothing for EDS and RDS, as a real server would send it.
//!
//! On `change` (a line on stdin) every stream is pushed, for each type it asked for that the
//! change touches, in make-before-break order, what a minimal server must send: in delta only
//! the resources that changed (and the names removed); in state of the world the full set of a
//! wildcard type, and only the changed resources of EDS and RDS. A weight change touches one
//! route configuration, so that is all a sidecar gets.
//!
//! The control pipe: the floor prints `ready` once it listens; it answers `change` with `ok` and
//! `stats` with `stats BYTES_SENT OPEN_STREAMS`; it exits when stdin closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{anyhow, Context};
use prost::bytes::Bytes;
use sluice::manifest::{self, LoadOptions};
use sluice::node::NodeInfo;
use sluice::xds::grpc;
use sluice::xds::reply::{DeltaReply, Reply, SotwReply};
use sluice::xds::resource::{ResourceType, Snapshot, SnapshotView};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::BoxFuture;
use tonic::server::NamedService;
use tonic::Status;

use crate::cli::FloorArgs;
use crate::mesh::{self, WEIGHTS};
use crate::sidecar::Protocol;
use crate::wire::{self, Prebuilt, RawDecoder, VersionsDigest};

/// Responses queued per stream before the stream task waits for the client.
const RESPONSE_BUFFER: usize = 4;
/// Largest request taken, as Sluice (and tonic by default) takes.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

pub fn main(args: FloorArgs) -> anyhow::Result<()> {
    let snapshots = [
        compile_variant(&args.mesh, 0)?,
        compile_variant(&args.mesh, 1)?,
    ];
    let variants =
        [0, 1].map(|v| ResourceType::ALL.map(|t| encode_type(&snapshots[v], &snapshots[1 - v], t)));
    let floor = Arc::new(Floor {
        variants,
        variant: watch::Sender::new(0),
        bytes_sent: AtomicU64::new(0),
        streams: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(args.listen, floor))
}

/// One type's pre-encoded responses.
struct TypeResponses {
    delta: Bytes,
    /// A delta response with no resources: the answer to a reconnect that holds everything.
    delta_empty: Bytes,
    sotw: Bytes,
    /// The digest of every resource's name and version, to recognise a delta reconnect that
    /// holds them all.
    versions: VersionsDigest,
    /// What a change from the other variant to this one sends a stream holding the type, per
    /// protocol; `None` when the change leaves the type as it was.
    change_delta: Option<Bytes>,
    change_sotw: Option<Bytes>,
}

/// Everything the floor serves, by variant (the route weights) and type.
struct Floor {
    variants: [[TypeResponses; ResourceType::COUNT]; 2],
    /// The current variant; a change moves it and wakes every stream.
    variant: watch::Sender<usize>,
    bytes_sent: AtomicU64,
    streams: AtomicU64,
}

/// Loads the mesh with `svc-0001`'s weights of `variant` and compiles it with the Sluice library
/// as `sluice serve` would for a sidecar in namespace `default`.
fn compile_variant(root: &Path, variant: usize) -> anyhow::Result<Arc<Snapshot>> {
    let options = LoadOptions::default();
    let mut files = manifest::read_dir(root, &options).map_err(diagnostics)?;
    let changed = mesh::file_name(mesh::CHANGED_SERVICE);
    let file = files
        .iter_mut()
        .find(|f| f.path == changed)
        .ok_or_else(|| anyhow!("{} has no {changed}", root.display()))?;
    file.bytes = mesh::service_file(mesh::CHANGED_SERVICE, WEIGHTS[variant])
        .into_bytes()
        .into();
    let revision_id = sluice::source::dir::revision_id(&files);
    let revision = manifest::load_files(&files, &options).map_err(diagnostics)?;
    let compiled = sluice::compile::compile_mesh(&revision_id, &revision, &Default::default())
        .map_err(diagnostics)?;
    Ok(compiled.snapshot_for(&NodeInfo::new("floor")))
}

fn diagnostics(errors: Vec<manifest::Diagnostic>) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().take(10).map(ToString::to_string).collect();
    anyhow!("the mesh does not compile:\n{}", lines.join("\n"))
}

/// Each type's responses, encoded the way Sluice writes them (its own reply types), without a
/// nonce: an empty proto3 string is not written, so the stream's nonce can be appended.
/// `previous` is the other variant, for what a change to this one sends.
fn encode_type(snapshot: &Snapshot, previous: &Snapshot, t: ResourceType) -> TypeResponses {
    let all: Vec<_> = snapshot.resources(t).values().cloned().collect();
    let version = format!("floor-{}", snapshot.type_version(t));
    let delta = |resources: Vec<_>, removed_resources: Vec<String>| DeltaReply {
        system_version_info: version.clone(),
        resource_type: t,
        resources: resources.into(),
        removed_resources,
        nonce: String::new(),
    };
    let sotw = |resources: Vec<_>| SotwReply {
        version_info: version.clone(),
        resource_type: t,
        resources: resources.into(),
        nonce: String::new(),
    };
    let old = previous.resources(t);
    let changed: Vec<_> = all
        .iter()
        .filter(|r| old.get(&r.name).is_none_or(|o| o.version != r.version))
        .cloned()
        .collect();
    let removed: Vec<String> = old
        .keys()
        .filter(|name| snapshot.get(t, name).is_none())
        .cloned()
        .collect();
    let touched = !changed.is_empty() || !removed.is_empty();
    // State of the world: a wildcard type is always sent whole (what it lacks is removed);
    // EDS and RDS resources stand alone, so only the changed ones are sent, and a removal is
    // the client's business (it unsubscribes).
    let change_sotw = if t.is_wildcard_type() {
        touched.then(|| encode(&sotw(all.clone())))
    } else {
        (!changed.is_empty()).then(|| encode(&sotw(changed.clone())))
    };
    TypeResponses {
        versions: VersionsDigest::of(all.iter().map(|r| (r.name.as_str(), r.version.as_str()))),
        delta: encode(&delta(all.clone(), Vec::new())),
        delta_empty: encode(&delta(Vec::new(), Vec::new())),
        sotw: encode(&sotw(all)),
        change_delta: touched.then(|| encode(&delta(changed, removed))),
        change_sotw,
    }
}

fn encode(reply: &impl Reply) -> Bytes {
    let mut buf = Vec::with_capacity(reply.encoded_len());
    reply.encode_to(&mut buf);
    Bytes::from(buf)
}

impl Floor {
    /// The answer to the first request of type `t` on a stream, if any; `held` is what a delta
    /// request declared in `initial_resource_versions`.
    fn first_answer(
        &self,
        protocol: Protocol,
        t: ResourceType,
        held: VersionsDigest,
    ) -> Option<Bytes> {
        let variant = *self.variant.borrow();
        let responses = &self.variants[variant][t.index()];
        match protocol {
            Protocol::Sotw => Some(responses.sotw.clone()),
            Protocol::Delta => {
                let holds_all = held.entries > 0 && held == responses.versions;
                match (holds_all, t.is_wildcard_type()) {
                    (false, _) => Some(responses.delta.clone()),
                    (true, true) => Some(responses.delta_empty.clone()),
                    (true, false) => None,
                }
            }
        }
    }

    /// What a change to `variant` sends a stream that asked for the types in `answered`, in
    /// make-before-break order.
    fn change(&self, protocol: Protocol, variant: usize, answered: &[bool]) -> Vec<Bytes> {
        ResourceType::ALL
            .iter()
            .filter(|t| answered[t.index()])
            .filter_map(|t| {
                let responses = &self.variants[variant][t.index()];
                match protocol {
                    Protocol::Delta => responses.change_delta.clone(),
                    Protocol::Sotw => responses.change_sotw.clone(),
                }
            })
            .collect()
    }
}

/// Where the two request messages keep what the floor reads.
#[derive(Clone, Copy)]
struct Flavor {
    protocol: Protocol,
    /// `DeltaDiscoveryRequest.type_url` is field 2, `DiscoveryRequest.type_url` field 4.
    type_url_tag: u32,
    /// `DeltaDiscoveryRequest.initial_resource_versions` is field 5.
    versions_tag: Option<u32>,
}

const DELTA: Flavor = Flavor {
    protocol: Protocol::Delta,
    type_url_tag: 2,
    versions_tag: Some(5),
};

const SOTW: Flavor = Flavor {
    protocol: Protocol::Sotw,
    type_url_tag: 4,
    versions_tag: None,
};

async fn serve(listen: SocketAddr, floor: Arc<Floor>) -> anyhow::Result<()> {
    // tonic's HTTP/2 defaults, as `sluice serve` has them, but with TCP_NODELAY on every
    // accepted connection: without it a push ends with a small segment that Nagle holds back
    // until the sidecar's delayed ACK (about 40 ms on Linux). A floor must not pay that.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    let control = control(floor.clone());
    let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |accepted| {
        accepted.and_then(|stream| stream.set_nodelay(true).map(|()| stream))
    });
    tonic::transport::Server::builder()
        .add_service(AdsRouter(floor))
        .serve_with_incoming_shutdown(incoming, control)
        .await
        .context("serving ADS")
}

/// Answers control lines on stdin until it closes.
async fn control(floor: Arc<Floor>) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = match line.trim() {
            "change" => {
                floor.variant.send_modify(|v| *v = (*v + 1) % 2);
                "ok".to_string()
            }
            "stats" => format!(
                "stats {} {}",
                floor.bytes_sent.load(Relaxed),
                floor.streams.load(Relaxed)
            ),
            other => format!("error: unknown command {other:?}"),
        };
        let written = async {
            stdout.write_all(answer.as_bytes()).await?;
            stdout.write_all(b"\n").await?;
            stdout.flush().await
        };
        if written.await.is_err() {
            return;
        }
    }
}

/// Routes the two ADS methods to the floor's stream loop; anything else is `UNIMPLEMENTED`.
#[derive(Clone)]
struct AdsRouter(Arc<Floor>);

impl NamedService for AdsRouter {
    const NAME: &'static str = wire::SERVICE_NAME;
}

impl tower::Service<http::Request<Body>> for AdsRouter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let floor = self.0.clone();
        match request.uri().path() {
            wire::DELTA_PATH => Box::pin(std::future::ready(Ok(call(floor, DELTA, request)))),
            wire::SOTW_PATH => Box::pin(std::future::ready(Ok(call(floor, SOTW, request)))),
            _ => {
                Box::pin(async move { Ok(Status::unimplemented("not an ADS method").into_http()) })
            }
        }
    }
}

/// One ADS call: spawns the stream's task and answers with what it sends, framed as Sluice
/// frames its replies.
fn call(floor: Arc<Floor>, flavor: Flavor, request: http::Request<Body>) -> http::Response<Body> {
    let requests = match grpc::request_stream(request, RawDecoder, MAX_REQUEST_BYTES) {
        Ok(requests) => requests,
        Err(refused) => return refused.into_http(),
    };
    let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
    tokio::spawn(run_stream(floor, flavor, requests, tx));
    grpc::streaming_response(ReceiverStream::new(rx), wire::frame_prebuilt)
}

async fn run_stream(
    floor: Arc<Floor>,
    flavor: Flavor,
    mut requests: grpc::Requests<RawDecoder>,
    tx: mpsc::Sender<Result<Prebuilt, Status>>,
) {
    floor.streams.fetch_add(1, Relaxed);
    let mut answered = [false; ResourceType::COUNT];
    let mut nonce = 0u64;
    let mut variant = floor.variant.subscribe();
    variant.borrow_and_update();
    'stream: loop {
        let bodies = tokio::select! {
            message = requests.message() => match message {
                Ok(Some(request)) => {
                    let Ok(scan) = wire::scan_request(&request, flavor.type_url_tag, flavor.versions_tag) else {
                        break;
                    };
                    let type_url = String::from_utf8_lossy(scan.type_url);
                    let Some(t) = ResourceType::from_type_url(&type_url) else {
                        continue;
                    };
                    if std::mem::replace(&mut answered[t.index()], true) {
                        continue; // an ACK, or a later request: ignored
                    }
                    Vec::from_iter(floor.first_answer(flavor.protocol, t, scan.initial_versions))
                }
                Ok(None) | Err(_) => break,
            },
            changed = variant.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = *variant.borrow_and_update();
                floor.change(flavor.protocol, current, &answered)
            }
        };
        for body in bodies {
            nonce += 1;
            let response = Prebuilt { body, nonce };
            floor
                .bytes_sent
                .fetch_add(response.encoded_len() as u64, Relaxed);
            if tx.send(Ok(response)).await.is_err() {
                break 'stream;
            }
        }
    }
    floor.streams.fetch_sub(1, Relaxed);
}
