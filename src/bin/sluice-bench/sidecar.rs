//! One simulated Envoy sidecar: its own HTTP/2 connection from its own loopback address, and
//! the ADS conversation Envoy has, in delta or state of the world.
//!
//! First connect, in Envoy's order, each subscription change sent before the ACK of the
//! response that caused it (as Envoy's ADS mux does): CDS (wildcard) → on the CDS response,
//! subscribe to the endpoints of every EDS cluster in it, then ACK CDS → on the EDS response
//! ACK, then ask for LDS (wildcard) → on the LDS response, if its HTTP connection manager reads
//! its routes through scoped RDS over ADS, ask for the route scopes (scoped RDS, a wildcard
//! type: no names), then ACK LDS → on the scoped RDS response subscribe to the route
//! configuration of every scope that is not `on_demand`, then ACK it → ACK RDS. A listener
//! that names its route configuration itself (`rds`) is followed directly: LDS → RDS, and no
//! scoped RDS. The sidecar is *fully configured* once it has ACKed every type it needs. Later
//! responses are ACKed the same way and the subscriptions follow: EDS follows CDS, RDS follows
//! the scopes (and the listeners), so a scope that goes away unsubscribes its routes.
//!
//! Reconnect: every request at once, each carrying what the sidecar holds (delta:
//! `initial_resource_versions`; SotW: the `version_info` it ACKed last), CDS, EDS, RDS, then the
//! wildcard types LDS and scoped RDS (when the listener uses it). A server answers the wildcard
//! types in any case, and EDS and RDS only when something changed; since a stream's responses
//! come in the order of its requests, the sidecar is back in sync once it has ACKed the answers
//! of the wildcard types.
//!
//! A sidecar keeps only a state id per type (see [`crate::facts`]), never whole responses.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use prost::bytes::Bytes;
use sluice::node::keys;
use sluice::xds::resource::ResourceType;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tonic::transport::{Channel, Endpoint};

use crate::facts::{self, Facts, NameSet, StateId, EMPTY};
use crate::grpc;
use crate::wire::{self, DeltaAckFields, Outgoing, SotwAckFields};

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::Endpoint;
const LDS: ResourceType = ResourceType::Listener;
const SRDS: ResourceType = ResourceType::ScopedRoute;
const RDS: ResourceType = ResourceType::Route;

/// Requests queued for the stream; a sidecar has at most five outstanding at once.
const REQUEST_BUFFER: usize = 16;

/// A subscription change that a response makes the sidecar send before it ACKs the response.
#[derive(Debug)]
enum Next {
    /// The first request of a wildcard type, naming nothing.
    Wildcard(ResourceType),
    /// Subscribe the type to exactly these names.
    Names(ResourceType, Arc<NameSet>),
}

/// Which ADS flavour the sidecars speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Delta,
    Sotw,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Delta => "delta",
            Protocol::Sotw => "sotw",
        })
    }
}

/// Whether a stream is a sidecar's first or a reconnect with what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Initial,
    Reconnect,
}

/// Counters every sidecar adds to; read by the fleet between phases.
#[derive(Debug, Default)]
pub struct Counters {
    pub responses: AtomicU64,
    /// Resources in responses (added or updated in delta, all of them in SotW).
    pub resources: AtomicU64,
    /// Encoded size of every response received.
    pub bytes: AtomicU64,
    /// Sidecars that reached fully configured on their current stream.
    pub configured: AtomicU64,
    /// Streams that failed (connect error, stream closed by the server); each is retried.
    pub stream_failures: AtomicU64,
}

/// When each sidecar ACKs the first route configuration of a change, relative to the change.
#[derive(Debug, Default)]
pub struct ChangeTracker {
    inner: Mutex<TrackerInner>,
}

#[derive(Debug, Default)]
struct TrackerInner {
    /// The change being measured (from 1); 0 before any.
    change: u64,
    started: Option<Instant>,
    /// Microseconds from the change to each sidecar's ACK of it.
    latencies: Vec<u64>,
}

impl ChangeTracker {
    /// Starts measuring change `change`, made at `started`.
    pub fn arm(&self, change: u64, started: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.change = change;
        inner.started = Some(started);
        inner.latencies.clear();
    }

    /// How many sidecars have ACKed the current change.
    pub fn acked(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .latencies
            .len()
    }

    /// The latencies of the current change, in microseconds.
    pub fn latencies(&self) -> Vec<u64> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .latencies
            .clone()
    }

    /// A sidecar just ACKed a new route configuration; `seen` is the last change it counted.
    fn record(&self, seen: &mut u64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.change > *seen {
            if let Some(started) = inner.started {
                *seen = inner.change;
                let micros = started.elapsed().as_micros();
                inner
                    .latencies
                    .push(u64::try_from(micros).unwrap_or(u64::MAX));
            }
        }
    }
}

/// What every sidecar of a fleet shares.
#[derive(Debug)]
pub struct Shared {
    pub protocol: Protocol,
    /// The server's ADS endpoint; each sidecar binds its own local address on a copy.
    pub endpoint: Endpoint,
    pub facts: Facts,
    pub counters: Counters,
    pub tracker: ChangeTracker,
    /// The first few failures, for the report.
    pub errors: Mutex<Vec<String>>,
}

impl Shared {
    /// Scans a response and adds it to the counters.
    fn count<'a>(&self, message: &'a Bytes) -> anyhow::Result<wire::Scan<'a>> {
        let scan = wire::scan(message).context("reading a response")?;
        let counters = &self.counters;
        counters.responses.fetch_add(1, Relaxed);
        counters.resources.fetch_add(scan.resources as u64, Relaxed);
        counters.bytes.fetch_add(message.len() as u64, Relaxed);
        Ok(scan)
    }

    fn fail(&self, index: usize, err: &anyhow::Error) {
        self.counters.stream_failures.fetch_add(1, Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() < 10 {
            errors.push(format!("bench-{index}: {err:#}"));
        }
    }
}

/// One simulated sidecar, between streams.
#[derive(Debug)]
pub struct Sidecar {
    pub index: usize,
    /// Its own loopback address: the connection's source and the node's `address`.
    pub ip: Ipv4Addr,
    /// Per type, what it holds (see [`crate::facts`]); kept across reconnects.
    held: [StateId; ResourceType::COUNT],
    /// The last change it recorded an ACK for.
    last_change: u64,
    /// It was fully configured once, so what it holds is whole: a new stream resumes with it.
    configured_once: bool,
}

/// A sidecar's part in one fleet phase (connect or storm), across its reconnects.
#[derive(Debug)]
struct Phase {
    /// Held until fully configured, to bound how many sidecars connect at once.
    permit: Option<OwnedSemaphorePermit>,
    /// Whether this sidecar was counted as fully configured in this phase.
    counted: bool,
}

/// The progress of one stream.
#[derive(Debug, Default)]
struct Progress {
    requested: [bool; ResourceType::COUNT],
    /// Per type, ACKed on this stream, or known to be needed on it no more than it was (a type
    /// with nothing to subscribe to, scoped RDS for a listener that does not use it).
    acked: [bool; ResourceType::COUNT],
    /// EDS and RDS: the names subscribed to on this stream.
    subscribed: [Option<Arc<NameSet>>; ResourceType::COUNT],
    /// SotW: the nonce of the latest response per type, sent again with a subscription change.
    nonces: [Bytes; ResourceType::COUNT],
    configured: bool,
}

impl Sidecar {
    pub fn new(index: usize) -> Sidecar {
        Sidecar {
            index,
            ip: loopback_address(index),
            held: [EMPTY; ResourceType::COUNT],
            last_change: 0,
            configured_once: false,
        }
    }

    /// Connects, converses until `stop` turns true, and returns itself so a later reconnect
    /// knows what it held. When the stream fails it reconnects as Envoy does (with the backoff
    /// `sluice bootstrap` configures), declaring what it holds if it was ever fully configured.
    /// With `gate`, it waits for a permit first and keeps it until fully configured (or its
    /// stream fails), which bounds how many sidecars connect at once.
    pub async fn run(
        mut self,
        shared: Arc<Shared>,
        mut mode: Mode,
        gate: Option<Arc<Semaphore>>,
        mut stop: watch::Receiver<bool>,
    ) -> Sidecar {
        let mut permit = match gate {
            Some(gate) => tokio::select! {
                permit = gate.acquire_owned() => permit.ok(),
                _ = stop.wait_for(|stop| *stop) => return self,
            },
            None => None,
        };
        let mut phase = Phase {
            permit: permit.take(),
            counted: false,
        };
        for attempt in 1u32.. {
            let result = match shared.protocol {
                Protocol::Delta => self.run_delta(&shared, mode, &mut phase, &mut stop).await,
                Protocol::Sotw => self.run_sotw(&shared, mode, &mut phase, &mut stop).await,
            };
            let Err(err) = result else {
                return self;
            };
            shared.fail(self.index, &err);
            phase.permit = None;
            tokio::select! {
                _ = tokio::time::sleep(retry_backoff(self.index, attempt)) => {}
                _ = stop.wait_for(|stop| *stop) => return self,
            }
            if self.configured_once {
                mode = Mode::Reconnect;
            } else {
                self.held = [EMPTY; ResourceType::COUNT];
                mode = Mode::Initial;
            }
        }
        self
    }

    /// The node as `sluice bootstrap` writes it.
    fn node(&self) -> Node {
        let string = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_string())),
        };
        let labels = Struct {
            fields: [("app".to_string(), string("bench-client"))]
                .into_iter()
                .collect(),
        };
        let fields = [
            (keys::NAMESPACE.to_string(), string("default")),
            (
                keys::LABELS.to_string(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            ),
            (keys::ADDRESS.to_string(), string(&self.ip.to_string())),
            (
                keys::OUTBOUND_LISTEN.to_string(),
                string(sluice::node::DEFAULT_OUTBOUND_LISTEN),
            ),
        ];
        Node {
            id: format!("bench-{}", self.index),
            cluster: "default".into(),
            metadata: Some(Struct {
                fields: fields.into_iter().collect(),
            }),
            ..Default::default()
        }
    }

    /// Opens the connection and the stream, with `first` already queued.
    async fn open<Req>(
        &self,
        shared: &Shared,
        path: &'static str,
        first: Vec<Outgoing<Req>>,
    ) -> anyhow::Result<(Channel, mpsc::Sender<Outgoing<Req>>, grpc::Responses)>
    where
        Req: prost::Message + Send + 'static,
    {
        let mut channel = shared
            .endpoint
            .clone()
            .local_address(Some(IpAddr::V4(self.ip)))
            .connect()
            .await
            .with_context(|| format!("connecting from {}", self.ip))?;
        let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
        for request in first {
            tx.send(request)
                .await
                .map_err(|_| anyhow!("request queue closed"))?;
        }
        let responses = grpc::open(&mut channel, path, rx)
            .await
            .context("opening the ADS stream")?;
        Ok((channel, tx, responses))
    }

    async fn run_delta(
        &mut self,
        shared: &Shared,
        mode: Mode,
        phase: &mut Phase,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut progress = Progress::default();
        let node = wire::encode(&DeltaDiscoveryRequest {
            node: Some(self.node()),
            ..Default::default()
        });
        let first = match mode {
            Mode::Initial => {
                progress.requested[CDS.index()] = true;
                vec![Outgoing::Parts(vec![node, facts::delta_type_part(CDS)])]
            }
            Mode::Reconnect => self.delta_reconnect_requests(shared, node, &mut progress),
        };
        let (_channel, tx, mut stream) = self
            .open::<DeltaDiscoveryRequest>(shared, wire::DELTA_PATH, first)
            .await?;
        loop {
            let received = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
                message = stream.next() => match message? {
                    Some(message) => message,
                    None => bail!("the server ended the stream"),
                },
            };
            self.handle_delta(shared, &mut progress, &tx, received)
                .await?;
            self.check_configured(shared, mode, &mut progress, phase);
        }
    }

    /// CDS, EDS, RDS, LDS and scoped RDS (when the listener uses it), each with the versions
    /// held, in one go.
    fn delta_reconnect_requests(
        &self,
        shared: &Shared,
        node: Bytes,
        progress: &mut Progress,
    ) -> Vec<Outgoing<DeltaDiscoveryRequest>> {
        let held = self.held.map(|id| shared.facts.state(id));
        let [clusters, _, listeners, scopes, _] = &held;
        let routes = shared.facts.route_names(listeners, scopes);
        let mut requests = vec![Outgoing::Parts(vec![
            node,
            facts::delta_type_part(CDS),
            clusters.delta_initial(),
        ])];
        progress.requested[CDS.index()] = true;
        for (t, names) in [(EDS, &clusters.follow), (RDS, &routes)] {
            progress.subscribed[t.index()] = Some(names.clone());
            if names.names.is_empty() {
                continue; // no subscription of the type: Envoy sends no request for it
            }
            requests.push(Outgoing::Parts(vec![
                facts::delta_type_part(t),
                names.delta_subscribe.clone(),
                held[t.index()].delta_initial(),
            ]));
            progress.requested[t.index()] = true;
        }
        for t in [LDS, SRDS] {
            if t == SRDS && !listeners.scoped_rds {
                continue;
            }
            requests.push(Outgoing::Parts(vec![
                facts::delta_type_part(t),
                held[t.index()].delta_initial(),
            ]));
            progress.requested[t.index()] = true;
        }
        requests
    }

    async fn handle_delta(
        &mut self,
        shared: &Shared,
        progress: &mut Progress,
        tx: &mpsc::Sender<Outgoing<DeltaDiscoveryRequest>>,
        message: Bytes,
    ) -> anyhow::Result<()> {
        let response = shared.count(&message)?;
        let t = resource_type(response.type_url)?;
        let before = self.held[t.index()];
        let after = shared
            .facts
            .apply_delta(t, before, response.key, &message)
            .context("decoding a response")?;
        self.held[t.index()] = after;
        for next in self.next_requests(shared, progress, t) {
            self.request_delta(progress, tx, next).await?;
        }
        let ack = Outgoing::Parts(vec![
            facts::delta_type_part(t),
            wire::encode(&DeltaAckFields {
                response_nonce: Bytes::copy_from_slice(response.nonce),
            }),
        ]);
        send(tx, ack).await?;
        progress.acked[t.index()] = true;
        if wants_listeners(progress) {
            progress.requested[LDS.index()] = true;
            send(tx, Outgoing::Parts(vec![facts::delta_type_part(LDS)])).await?;
        }
        self.record_route_change(shared, t, before, after);
        Ok(())
    }

    /// What the response of type `t` just applied makes the sidecar ask for, as Envoy does: CDS
    /// → EDS for the EDS clusters; LDS → scoped RDS (wildcard) when a listener reads its routes
    /// through it, and RDS for the route configurations the listeners name (once the scopes are
    /// in, with theirs); scoped RDS → RDS for the route configuration of every scope.
    fn next_requests(
        &self,
        shared: &Shared,
        progress: &mut Progress,
        t: ResourceType,
    ) -> Vec<Next> {
        match t {
            CDS => {
                let clusters = shared.facts.state(self.held[CDS.index()]);
                vec![Next::Names(EDS, clusters.follow.clone())]
            }
            LDS => {
                let listeners = shared.facts.state(self.held[LDS.index()]);
                let mut next = Vec::new();
                if listeners.scoped_rds {
                    if !progress.requested[SRDS.index()] {
                        next.push(Next::Wildcard(SRDS));
                    }
                    if !progress.acked[SRDS.index()] {
                        // The scopes name the route configurations: RDS waits for them.
                        return next;
                    }
                } else if !progress.requested[SRDS.index()] {
                    // No scoped RDS on this stream, and none needed.
                    progress.acked[SRDS.index()] = true;
                }
                next.push(Next::Names(RDS, self.route_names(shared)));
                next
            }
            SRDS => vec![Next::Names(RDS, self.route_names(shared))],
            _ => Vec::new(),
        }
    }

    /// The route configurations the listeners and scopes held make the sidecar subscribe to.
    fn route_names(&self, shared: &Shared) -> Arc<NameSet> {
        let listeners = shared.facts.state(self.held[LDS.index()]);
        let scopes = shared.facts.state(self.held[SRDS.index()]);
        shared.facts.route_names(&listeners, &scopes)
    }

    /// Sends a subscription change: the first request of a wildcard type, or a named type's
    /// names brought to `wanted` (the whole set the first time, then what to add and remove).
    async fn request_delta(
        &self,
        progress: &mut Progress,
        tx: &mpsc::Sender<Outgoing<DeltaDiscoveryRequest>>,
        next: Next,
    ) -> anyhow::Result<()> {
        let (child, wanted) = match next {
            Next::Wildcard(t) => {
                progress.requested[t.index()] = true;
                return send(tx, Outgoing::Parts(vec![facts::delta_type_part(t)])).await;
            }
            Next::Names(child, wanted) => (child, wanted),
        };
        let request = match &progress.subscribed[child.index()] {
            Some(current) if Arc::ptr_eq(current, &wanted) => return Ok(()),
            Some(current) => {
                let (subscribe, unsubscribe) = diff(current, &wanted);
                Outgoing::Message(DeltaDiscoveryRequest {
                    type_url: child.type_url().to_string(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                })
            }
            None => Outgoing::Parts(vec![
                facts::delta_type_part(child),
                wanted.delta_subscribe.clone(),
            ]),
        };
        progress.subscribed[child.index()] = Some(wanted.clone());
        if wanted.names.is_empty() && !progress.requested[child.index()] {
            // Nothing to ask for (a mesh without EDS clusters): Envoy sends no request at all.
            progress.acked[child.index()] = true;
            return Ok(());
        }
        progress.requested[child.index()] = true;
        send(tx, request).await
    }

    /// After a route response is ACKed: when it carried a new route configuration, the change
    /// being tracked reached this sidecar.
    fn record_route_change(
        &mut self,
        shared: &Shared,
        t: ResourceType,
        before: StateId,
        after: StateId,
    ) {
        if t == RDS && before != after && before != EMPTY {
            shared.tracker.record(&mut self.last_change);
        }
    }

    fn check_configured(
        &mut self,
        shared: &Shared,
        mode: Mode,
        progress: &mut Progress,
        phase: &mut Phase,
    ) {
        if progress.configured {
            return;
        }
        let done = match mode {
            Mode::Initial => progress.acked.iter().all(|a| *a),
            // The wildcard types are answered in any case, and last (see the module comment).
            Mode::Reconnect => [CDS, LDS, SRDS]
                .iter()
                .all(|t| progress.acked[t.index()] || !progress.requested[t.index()]),
        };
        if done {
            progress.configured = true;
            self.configured_once = true;
            phase.permit = None;
            if !std::mem::replace(&mut phase.counted, true) {
                shared.counters.configured.fetch_add(1, Relaxed);
            }
        }
    }

    async fn run_sotw(
        &mut self,
        shared: &Shared,
        mode: Mode,
        phase: &mut Phase,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut progress = Progress::default();
        let node = wire::encode(&DiscoveryRequest {
            node: Some(self.node()),
            ..Default::default()
        });
        let first = match mode {
            Mode::Initial => {
                progress.requested[CDS.index()] = true;
                vec![Outgoing::Parts(vec![node, facts::sotw_type_part(CDS)])]
            }
            Mode::Reconnect => self.sotw_reconnect_requests(shared, node, &mut progress),
        };
        let (_channel, tx, mut stream) = self
            .open::<DiscoveryRequest>(shared, wire::SOTW_PATH, first)
            .await?;
        loop {
            let received = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
                message = stream.next() => match message? {
                    Some(message) => message,
                    None => bail!("the server ended the stream"),
                },
            };
            self.handle_sotw(shared, &mut progress, &tx, received)
                .await?;
            self.check_configured(shared, mode, &mut progress, phase);
        }
    }

    /// CDS, EDS, RDS, LDS and scoped RDS (when the listener uses it), each with the version
    /// last ACKed and no nonce, as Envoy resumes.
    fn sotw_reconnect_requests(
        &self,
        shared: &Shared,
        node: Bytes,
        progress: &mut Progress,
    ) -> Vec<Outgoing<DiscoveryRequest>> {
        let held = self.held.map(|id| shared.facts.state(id));
        let [clusters, _, listeners, scopes, _] = &held;
        let routes = shared.facts.route_names(listeners, scopes);
        let version = |held: &facts::Held| {
            wire::encode(&SotwAckFields {
                version_info: held.version_info.clone(),
                response_nonce: Bytes::new(),
            })
        };
        let mut requests = vec![Outgoing::Parts(vec![
            node,
            facts::sotw_type_part(CDS),
            version(clusters),
        ])];
        progress.requested[CDS.index()] = true;
        for (t, names) in [(EDS, &clusters.follow), (RDS, &routes)] {
            progress.subscribed[t.index()] = Some(names.clone());
            if names.names.is_empty() {
                continue; // no subscription of the type: Envoy sends no request for it
            }
            requests.push(Outgoing::Parts(vec![
                facts::sotw_type_part(t),
                names.sotw_names.clone(),
                version(&held[t.index()]),
            ]));
            progress.requested[t.index()] = true;
        }
        for t in [LDS, SRDS] {
            if t == SRDS && !listeners.scoped_rds {
                continue;
            }
            requests.push(Outgoing::Parts(vec![
                facts::sotw_type_part(t),
                version(&held[t.index()]),
            ]));
            progress.requested[t.index()] = true;
        }
        requests
    }

    async fn handle_sotw(
        &mut self,
        shared: &Shared,
        progress: &mut Progress,
        tx: &mpsc::Sender<Outgoing<DiscoveryRequest>>,
        message: Bytes,
    ) -> anyhow::Result<()> {
        let response = shared.count(&message)?;
        let t = resource_type(response.type_url)?;
        let before = self.held[t.index()];
        let after = shared
            .facts
            .apply_sotw(t, response.key, &message)
            .context("decoding a response")?;
        self.held[t.index()] = after;
        // A copy: the response points into a receive buffer that must be freed.
        progress.nonces[t.index()] = Bytes::copy_from_slice(response.nonce);
        for next in self.next_requests(shared, progress, t) {
            self.request_sotw(shared, progress, tx, next).await?;
        }
        let held = shared.facts.state(after);
        let mut parts = vec![facts::sotw_type_part(t)];
        if let Some(names) = &progress.subscribed[t.index()] {
            parts.push(names.sotw_names.clone());
        }
        parts.push(wire::encode(&SotwAckFields {
            version_info: held.version_info.clone(),
            response_nonce: progress.nonces[t.index()].clone(),
        }));
        send(tx, Outgoing::Parts(parts)).await?;
        progress.acked[t.index()] = true;
        if wants_listeners(progress) {
            progress.requested[LDS.index()] = true;
            send(tx, Outgoing::Parts(vec![facts::sotw_type_part(LDS)])).await?;
        }
        self.record_route_change(shared, t, before, after);
        Ok(())
    }

    /// Sends a subscription change: the first request of a wildcard type (no names), or a named
    /// type's request listing every name of `wanted`, with the type's version and nonce.
    async fn request_sotw(
        &self,
        shared: &Shared,
        progress: &mut Progress,
        tx: &mpsc::Sender<Outgoing<DiscoveryRequest>>,
        next: Next,
    ) -> anyhow::Result<()> {
        let (child, wanted) = match next {
            Next::Wildcard(t) => {
                progress.requested[t.index()] = true;
                return send(tx, Outgoing::Parts(vec![facts::sotw_type_part(t)])).await;
            }
            Next::Names(child, wanted) => (child, wanted),
        };
        if progress.subscribed[child.index()]
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &wanted))
        {
            return Ok(());
        }
        progress.subscribed[child.index()] = Some(wanted.clone());
        if wanted.names.is_empty() && !progress.requested[child.index()] {
            progress.acked[child.index()] = true;
            return Ok(());
        }
        progress.requested[child.index()] = true;
        let held = shared.facts.state(self.held[child.index()]);
        let request = Outgoing::Parts(vec![
            facts::sotw_type_part(child),
            wanted.sotw_names.clone(),
            wire::encode(&SotwAckFields {
                version_info: held.version_info.clone(),
                response_nonce: progress.nonces[child.index()].clone(),
            }),
        ]);
        send(tx, request).await
    }
}

/// Whether the sidecar asks for listeners now: Envoy does once its clusters are initialised, that
/// is once it has ACKed CDS and the endpoints of its EDS clusters (if it has any).
fn wants_listeners(progress: &Progress) -> bool {
    !progress.requested[LDS.index()] && progress.acked[CDS.index()] && progress.acked[EDS.index()]
}

/// Envoy's reconnect backoff as `sluice bootstrap` sets it: 0.25 s doubling up to 1 s, with
/// full jitter (a hash of the sidecar and attempt stands in for randomness).
fn retry_backoff(index: usize, attempt: u32) -> Duration {
    let ceiling = 250u64 << attempt.saturating_sub(1).min(2);
    let seed = xxhash_rust::xxh3::xxh3_64(
        &[index.to_le_bytes(), u64::from(attempt).to_le_bytes()].concat(),
    );
    Duration::from_millis(seed % (ceiling + 1))
}

async fn send<M>(tx: &mpsc::Sender<Outgoing<M>>, request: Outgoing<M>) -> anyhow::Result<()> {
    tx.send(request)
        .await
        .map_err(|_| anyhow!("the request stream closed"))
}

fn resource_type(type_url: &[u8]) -> anyhow::Result<ResourceType> {
    let text = String::from_utf8_lossy(type_url);
    ResourceType::from_type_url(&text)
        .ok_or_else(|| anyhow!("a response of a type no request asked for: {text:?}"))
}

/// Names to subscribe and to unsubscribe to go from `current` to `wanted`.
fn diff(current: &NameSet, wanted: &NameSet) -> (Vec<String>, Vec<String>) {
    let current_set: std::collections::HashSet<&str> =
        current.names.iter().map(|n| n.as_ref()).collect();
    let wanted_set: std::collections::HashSet<&str> =
        wanted.names.iter().map(|n| n.as_ref()).collect();
    let subscribe = wanted_set
        .difference(&current_set)
        .map(|n| n.to_string())
        .collect();
    let unsubscribe = current_set
        .difference(&wanted_set)
        .map(|n| n.to_string())
        .collect();
    (subscribe, unsubscribe)
}

/// Sidecar `index`'s address: `127.A.B.C` with A, B, C in 1..=250, so no address is a network
/// or broadcast-looking `.0` or `.255`, and 15 million sidecars fit.
pub fn loopback_address(index: usize) -> Ipv4Addr {
    let c = (index % 250) as u8 + 1;
    let b = ((index / 250) % 250) as u8 + 1;
    let a = ((index / 62_500) % 250) as u8 + 1;
    Ipv4Addr::new(127, a, b, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_distinct() {
        let addresses: std::collections::HashSet<Ipv4Addr> =
            (0..200_000).map(loopback_address).collect();
        assert_eq!(addresses.len(), 200_000);
        assert!(addresses.iter().all(|a| a.is_loopback()));
    }
}
