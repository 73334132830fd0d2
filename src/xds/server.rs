//! The ADS gRPC server: one task per stream, feeding the SotW or delta state machine with the
//! client's requests and with every snapshot published for its node.
//!
//! A stream task `select!`s on drain, the next request and a change of snapshot. Snapshots reach
//! it through a `watch` channel, which keeps only the newest value: a sidecar that stops reading
//! blocks only its own task, and when it reads again it is sent the newest configuration, never
//! a backlog.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use envoy_types::pb::envoy::config::core::v3::Node;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tracing::{debug, info, warn};

use super::delta::DeltaStream;
use super::grpc::AdsService;
use super::grpc::{MessageDecoder, Requests};
use super::reply::{DeltaReply, Reply, SotwReply};
use super::request::{DeltaDecoder, DeltaRequest, SotwDecoder, SotwRequest};
use super::resource::{ResourceType, Snapshot, SnapshotView};
use super::sotw::SotwStream;
use super::stream::{Event, Output, TypeStatus};
use crate::metrics::Metrics;
use crate::node::NodeInfo;

/// The newest published configuration, or `None` before the first revision is ready. Streams
/// that connect before then wait: an empty answer would delete the sidecar's whole config.
pub type ViewReceiver = watch::Receiver<Option<Arc<dyn SnapshotView>>>;

/// Told when sidecars connect and disconnect (the endpoint registry listens).
pub trait ConnectionObserver: Send + Sync + 'static {
    fn connected(&self, stream_id: u64, node: &Arc<NodeInfo>);
    fn disconnected(&self, stream_id: u64);
}

/// Which ADS flavour a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Sotw,
    Delta,
}

/// What the debug API shows about one open stream.
#[derive(Clone, Debug)]
pub struct StreamEntry {
    /// Shared with the stream's task and the endpoint registry: one copy per sidecar.
    pub node: Arc<NodeInfo>,
    pub protocol: Protocol,
    pub connected_at: SystemTime,
    /// Per resource type, indexed by [`ResourceType::index`].
    pub types: [TypeStatus; ResourceType::COUNT],
    /// When the client last ACKed each type.
    pub acked_at: [Option<SystemTime>; ResourceType::COUNT],
    /// Manifest origins of the resources in the last rejected response, per type.
    pub nack_origins: [Vec<String>; ResourceType::COUNT],
    /// The snapshot the stream is serving.
    pub snapshot: Option<Arc<Snapshot>>,
}

/// Every open stream, by stream id. Each stream task writes only its own entry.
#[derive(Debug)]
pub struct Streams {
    /// Boxed: the map's tables keep spare slots, and a slot holds a pointer, not an entry.
    entries: DashMap<u64, Box<StreamEntry>>,
    /// Bumped when a stream ACKs or closes: whoever waits for convergence re-checks then.
    progress: watch::Sender<u64>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            entries: DashMap::new(),
            progress: watch::Sender::new(0),
        }
    }
}

impl Streams {
    /// Changes whenever a stream ACKs or closes.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    fn progressed(&self) {
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A copy of every entry, sorted by node id then connection time.
    pub fn list(&self) -> Vec<StreamEntry> {
        let mut entries: Vec<StreamEntry> = self
            .entries
            .iter()
            .map(|e| StreamEntry::clone(e.value()))
            .collect();
        entries.sort_by(|a, b| {
            (a.node.id.as_str(), a.connected_at).cmp(&(b.node.id.as_str(), b.connected_at))
        });
        entries
    }

    /// The newest stream of a node.
    pub fn by_node(&self, node_id: &str) -> Option<StreamEntry> {
        self.entries
            .iter()
            .filter(|e| e.node.id == node_id)
            .max_by_key(|e| e.connected_at)
            .map(|e| StreamEntry::clone(e.value()))
    }

    /// True when every open stream serves `view`'s snapshot for its node and has ACKed every
    /// type it was sent.
    pub fn all_synced(&self, view: &dyn SnapshotView) -> bool {
        self.entries.iter().all(|e| {
            let current = view.snapshot_for(&e.node);
            e.snapshot
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &current))
                && e.types.iter().all(|t| {
                    !t.subscribed || t.sent_version.is_none() || t.sent_version == t.acked_version
                })
        })
    }
}

/// Everything stream tasks share.
pub struct Shared {
    pub view: ViewReceiver,
    pub streams: Arc<Streams>,
    pub metrics: Arc<Metrics>,
    pub observer: Arc<dyn ConnectionObserver>,
    /// Flips to true when the server drains: every stream ends so sidecars reconnect elsewhere.
    pub shutdown: watch::Receiver<bool>,
    next_stream_id: AtomicU64,
}

impl Shared {
    pub fn new(
        view: ViewReceiver,
        streams: Arc<Streams>,
        metrics: Arc<Metrics>,
        observer: Arc<dyn ConnectionObserver>,
        shutdown: watch::Receiver<bool>,
    ) -> Shared {
        Shared {
            view,
            streams,
            metrics,
            observer,
            shutdown,
            next_stream_id: AtomicU64::new(1),
        }
    }
}

/// The ADS service; cheap to clone.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

/// How many responses may wait for a slow client before its stream task stops producing more.
const RESPONSE_BUFFER: usize = 4;
/// How many requests may arrive before the first revision is ready; more is a misbehaving client.
const MAX_PENDING_REQUESTS: usize = 256;

impl AdsServer {
    pub fn new(shared: Arc<Shared>) -> AdsServer {
        AdsServer { shared }
    }

    /// The gRPC service to add to a tonic server.
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }

    /// Starts the task of one stream; its replies come out of the returned stream.
    pub(super) fn start<M: StateMachine>(
        &self,
        machine: M,
        requests: Requests<M::Decoder>,
    ) -> ReplyStream<M::Response> {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let shared = self.shared.clone();
        let stream_id = shared.next_stream_id.fetch_add(1, Relaxed);
        // The machine is boxed: a task's future is as large as its largest state, and an
        // argument moved into a local is counted twice there.
        tokio::spawn(run_stream(
            Box::new(machine),
            requests,
            tx,
            shared,
            stream_id,
        ));
        Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|sent: Sent<M::Response>| sent.map(|reply| *reply).map_err(|status| *status)),
        )
    }
}

/// A reply or the status ending the stream, as the stream's task hands it to the codec: boxed,
/// because the channel between them allocates its slots 32 at a time, for every stream.
type Sent<R> = Result<Box<R>, Box<Status>>;

/// The replies of one stream, as the gRPC codec takes them.
pub(super) type ReplyStream<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send + 'static>>;

/// The two state machines seen through one interface, so one stream loop drives both.
pub(super) trait StateMachine: Default + Send + 'static {
    type Request: Send + 'static;
    /// Decodes the stream's requests; one per stream, so it may remember earlier ones.
    type Decoder: MessageDecoder<Item = Self::Request> + Default;
    type Response: Reply;
    const PROTOCOL: Protocol;
    fn node(request: &Self::Request) -> Option<&Node>;
    fn handle_request(
        &mut self,
        request: &Self::Request,
        snapshot: &Snapshot,
    ) -> Output<Self::Response>;
    fn handle_snapshot(&mut self, snapshot: &Snapshot) -> Output<Self::Response>;
    fn status(&self, resource_type: ResourceType) -> &TypeStatus;
}

impl StateMachine for SotwStream {
    type Request = SotwRequest;
    type Decoder = SotwDecoder;
    type Response = SotwReply;
    const PROTOCOL: Protocol = Protocol::Sotw;

    fn node(request: &SotwRequest) -> Option<&Node> {
        request.request.node.as_ref()
    }

    fn handle_request(&mut self, request: &SotwRequest, snapshot: &Snapshot) -> Output<SotwReply> {
        SotwStream::handle_decoded(self, request, snapshot)
    }

    fn handle_snapshot(&mut self, snapshot: &Snapshot) -> Output<SotwReply> {
        SotwStream::handle_snapshot(self, snapshot)
    }

    fn status(&self, resource_type: ResourceType) -> &TypeStatus {
        SotwStream::status(self, resource_type)
    }
}

impl StateMachine for DeltaStream {
    type Request = DeltaRequest;
    type Decoder = DeltaDecoder;
    type Response = DeltaReply;
    const PROTOCOL: Protocol = Protocol::Delta;

    fn node(request: &DeltaRequest) -> Option<&Node> {
        request.request.node.as_ref()
    }

    fn handle_request(
        &mut self,
        request: &DeltaRequest,
        snapshot: &Snapshot,
    ) -> Output<DeltaReply> {
        DeltaStream::handle_request(self, request, snapshot)
    }

    fn handle_snapshot(&mut self, snapshot: &Snapshot) -> Output<DeltaReply> {
        DeltaStream::handle_snapshot(self, snapshot)
    }

    fn status(&self, resource_type: ResourceType) -> &TypeStatus {
        DeltaStream::status(self, resource_type)
    }
}

/// Why a stream loop stopped.
enum End {
    /// The client closed its side or the connection broke: routine.
    ClientGone,
    /// The server is draining.
    Shutdown,
}

async fn run_stream<M: StateMachine>(
    machine: Box<M>,
    mut requests: Requests<M::Decoder>,
    tx: mpsc::Sender<Sent<M::Response>>,
    shared: Arc<Shared>,
    stream_id: u64,
) {
    let mut shutdown = shared.shutdown.clone();
    // Requests are large (~750 bytes inline): a variable holding one across an await would be
    // a slot in this future for the stream's life, so the first goes straight into a Vec.
    let pending = tokio::select! {
        message = requests.message() => match message {
            Ok(Some(request)) => vec![request],
            Ok(None) | Err(_) => return,
        },
        _ = crate::shutdown::drained(&mut shutdown) => return,
    };
    // Nothing was sent yet, so the channel has room for the refusal.
    let node = match (pending.first())
        .and_then(M::node)
        .map(crate::bootstrap::node_info_from_proto)
    {
        Some(Ok(node)) => Arc::new(node),
        Some(Err(message)) => {
            warn!(stream_id, error = %message, "refused stream: invalid node metadata");
            let _ = tx.try_send(Err(Box::new(Status::invalid_argument(message))));
            return;
        }
        None => {
            let _ = tx.try_send(Err(Box::new(Status::invalid_argument(
                "the first request of a stream must carry the node",
            ))));
            return;
        }
    };
    info!(stream_id, node = %node.id, namespace = %node.namespace, protocol = ?M::PROTOCOL, "sidecar connected");
    shared.metrics.connected_streams.fetch_add(1, Relaxed);
    shared.streams.entries.insert(
        stream_id,
        Box::new(StreamEntry {
            node: Arc::clone(&node),
            protocol: M::PROTOCOL,
            connected_at: SystemTime::now(),
            types: Default::default(),
            acked_at: Default::default(),
            nack_origins: Default::default(),
            snapshot: None,
        }),
    );
    shared.observer.connected(stream_id, &node);

    let mut task = StreamTask {
        machine,
        tx,
        shared: shared.clone(),
        stream_id,
        node,
        snapshot: None,
        shutdown,
    };
    let end = task.run(pending, requests).await;
    match end {
        End::ClientGone => info!(stream_id, node = %task.node.id, "sidecar disconnected"),
        End::Shutdown => info!(stream_id, node = %task.node.id, "stream closed for shutdown"),
    }
    shared.streams.entries.remove(&stream_id);
    shared.streams.progressed();
    shared.metrics.connected_streams.fetch_sub(1, Relaxed);
    shared.observer.disconnected(stream_id);
}

struct StreamTask<M: StateMachine> {
    machine: Box<M>,
    tx: mpsc::Sender<Sent<M::Response>>,
    shared: Arc<Shared>,
    stream_id: u64,
    node: Arc<NodeInfo>,
    /// The snapshot last handed to the state machine.
    snapshot: Option<Arc<Snapshot>>,
    shutdown: watch::Receiver<bool>,
}

impl<M: StateMachine> StreamTask<M> {
    /// Serves the stream, starting with the `pending` requests.
    async fn run(
        &mut self,
        mut pending: Vec<M::Request>,
        mut requests: Requests<M::Decoder>,
    ) -> End {
        let mut shutdown = self.shutdown.clone();
        let mut view = self.shared.view.clone();
        loop {
            // Requests wait until a first revision is served; after that they are handled at once.
            if self.snapshot.is_none() {
                let current = view.borrow_and_update().clone();
                if let Some(current) = current {
                    self.snapshot = Some(current.snapshot_for(&self.node));
                }
            }
            if let Some(snapshot) = self.snapshot.clone() {
                let mut waiting = std::mem::take(&mut pending).into_iter();
                // Each request is handled and dropped before the await (see `run_stream`).
                while let Some(output) =
                    (waiting.next()).map(|request| self.machine.handle_request(&request, &snapshot))
                {
                    // Boxed, as below: its state would otherwise be part of every stream's
                    // task for the stream's life.
                    if let Some(end) = Box::pin(self.emit(output, &snapshot)).await {
                        return end;
                    }
                }
            }
            tokio::select! {
                biased;
                _ = crate::shutdown::drained(&mut shutdown) => return End::Shutdown,
                changed = view.changed() => {
                    if changed.is_err() {
                        return End::Shutdown;
                    }
                    let current = view.borrow_and_update().clone();
                    let Some(current) = current else { continue };
                    let next = current.snapshot_for(&self.node);
                    let previous = self.snapshot.replace(next.clone());
                    if let Some(previous) = previous {
                        if !Arc::ptr_eq(&previous, &next) {
                            let output = self.machine.handle_snapshot(&next);
                            if let Some(end) = Box::pin(self.emit(output, &next)).await {
                                return end;
                            }
                        }
                    }
                }
                message = requests.message() => match message {
                    Ok(Some(request)) => {
                        if pending.len() >= MAX_PENDING_REQUESTS {
                            drop(request);
                            warn!(stream_id = self.stream_id, node = %self.node.id, "closing stream: too many requests before the first revision");
                            // Nothing was sent yet, so the channel has room; and no await here
                            // keeps `request`'s slot in this future (see `run_stream`).
                            let _ = self.tx.try_send(Err(Box::new(Status::resource_exhausted("too many requests before the first revision"))));
                            return End::ClientGone;
                        }
                        pending.push(request);
                    }
                    Ok(None) => return End::ClientGone,
                    Err(status) => {
                        debug!(stream_id = self.stream_id, node = %self.node.id, code = ?status.code(), message = status.message(), "stream ended by the transport");
                        return End::ClientGone;
                    }
                },
            }
        }
    }

    /// Records the state machine's events, updates the debug entry, and sends the responses in
    /// order. Returns why the stream must end, if it must.
    async fn emit(&mut self, output: Output<M::Response>, snapshot: &Arc<Snapshot>) -> Option<End> {
        let metrics = &self.shared.metrics;
        let mut nack_origins: [Option<Vec<String>>; ResourceType::COUNT] = Default::default();
        let mut acked_at: [Option<SystemTime>; ResourceType::COUNT] = Default::default();
        for event in &output.events {
            match event {
                Event::Sent {
                    resource_type,
                    version,
                    resources,
                    removed,
                    bytes,
                } => {
                    let i = resource_type.index();
                    metrics.pushes[i].fetch_add(1, Relaxed);
                    metrics.resources_sent[i].fetch_add(*resources as u64, Relaxed);
                    metrics.bytes_sent[i].fetch_add(*bytes as u64, Relaxed);
                    debug!(node = %self.node.id, r#type = %resource_type, %version, resources, removed, bytes, "sent");
                }
                Event::Ack {
                    resource_type,
                    version,
                } => {
                    acked_at[resource_type.index()] = Some(SystemTime::now());
                    debug!(node = %self.node.id, r#type = %resource_type, %version, "acked");
                }
                Event::Nack {
                    resource_type,
                    version,
                    message,
                    rejected,
                } => {
                    metrics.nacks[resource_type.index()].fetch_add(1, Relaxed);
                    let origins: Vec<String> = rejected
                        .iter()
                        .filter_map(|name| snapshot.get(*resource_type, name))
                        .flat_map(|r| r.origins.iter().cloned())
                        .collect();
                    warn!(node = %self.node.id, r#type = %resource_type, %version, error = %message, resources = ?rejected, origins = ?origins, "sidecar rejected configuration");
                    nack_origins[resource_type.index()] = Some(origins);
                }
                Event::UnknownType { type_url } => {
                    metrics.unknown_type_requests.fetch_add(1, Relaxed);
                    debug!(node = %self.node.id, %type_url, "request for a type Sluice does not serve");
                }
            }
        }
        let acked = acked_at.iter().any(Option::is_some);
        if let Some(mut entry) = self.shared.streams.entries.get_mut(&self.stream_id) {
            // Most responses move one type's versions: copy only what moved.
            for resource_type in ResourceType::ALL {
                let status = self.machine.status(resource_type);
                let shown = &mut entry.types[resource_type.index()];
                if shown != status {
                    shown.clone_from(status);
                }
            }
            for (slot, at) in entry.acked_at.iter_mut().zip(acked_at) {
                if at.is_some() {
                    *slot = at;
                }
            }
            for (slot, origins) in entry.nack_origins.iter_mut().zip(nack_origins) {
                if let Some(origins) = origins {
                    *slot = origins;
                }
            }
            entry.snapshot = Some(snapshot.clone());
        }
        if acked {
            self.shared.streams.progressed();
        }
        for response in output.responses {
            tokio::select! {
                sent = self.tx.send(Ok(Box::new(response))) => {
                    if sent.is_err() {
                        return Some(End::ClientGone);
                    }
                }
                _ = crate::shutdown::drained(&mut self.shutdown) => return Some(End::Shutdown),
            }
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    struct NoObserver;

    impl ConnectionObserver for NoObserver {
        fn connected(&self, _: u64, _: &Arc<NodeInfo>) {}
        fn disconnected(&self, _: u64) {}
    }

    /// What stream tasks share, with no revision served yet and nobody told of connections.
    pub(crate) fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(
            watch::channel(None).1,
            Arc::new(Streams::default()),
            Arc::new(Metrics::default()),
            Arc::new(NoObserver),
            watch::channel(false).1,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::grpc::request_stream;
    use tonic::body::Body;

    /// The task's future, allocated when the stream starts and kept for its life.
    fn task_bytes<M: StateMachine>() -> usize {
        let requests = request_stream(
            tonic::codegen::http::Request::new(Body::empty()),
            M::Decoder::default(),
            1024,
        )
        .expect("an uncompressed call");
        let (tx, _rx) = mpsc::channel(RESPONSE_BUFFER);
        let task = run_stream::<M>(Box::default(), requests, tx, testing::shared(), 1);
        std::mem::size_of_val(&task)
    }

    /// Every connected sidecar keeps its stream's task and the channel from it to the codec:
    /// the task's future is as large as its largest state, and the channel allocates its slots
    /// 32 at a time. Both were once over 10 KB per sidecar (the state machine held twice,
    /// each response's bookkeeping inline, a request kept across awaits, replies and statuses
    /// of ~100 bytes in the slots); the task was still 4 KB while variables that had held a
    /// request (~750 bytes inline) were in scope across an await.
    #[test]
    fn a_streams_lasting_allocations_stay_small() {
        for (protocol, bytes) in [
            ("delta", task_bytes::<DeltaStream>()),
            ("SotW", task_bytes::<SotwStream>()),
        ] {
            assert!(
                bytes <= 2 * 1024,
                "a {protocol} stream's task is {bytes} bytes"
            );
        }
        assert!(std::mem::size_of::<Sent<DeltaReply>>() <= 16);
        assert!(std::mem::size_of::<Sent<SotwReply>>() <= 16);
    }

    /// `/debug/syncz` keeps an entry per stream in a map whose tables are up to half empty; a
    /// slot holds a pointer to the entry (once ~1 KB inline, so each sidecar paid about 2 KB).
    #[test]
    fn a_debug_entry_takes_one_pointer_in_the_map() {
        fn slot_bytes<K, V>(_: &DashMap<K, V>) -> usize {
            std::mem::size_of::<(K, V)>()
        }
        let streams = Streams::default();
        assert_eq!(slot_bytes(&streams.entries), 16);
        // What the pointer saves: an entry is far larger than it.
        assert!(std::mem::size_of::<StreamEntry>() > 256);
    }
}
