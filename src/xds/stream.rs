//! What the SotW and delta state machines share: their outputs, events and per-type status.
//!
//! Both machines are pure: the gRPC server feeds them requests and snapshots and writes out the
//! responses they return, [`super::reply`] types that share the snapshot's resources. The [`Event`]s are for logs and metrics, the [`TypeStatus`] of each
//! type is what `/debug/syncz` shows.
//!
//! # Versions and nonces
//! - A response's version (`version_info` in SotW, `system_version_info` in delta) is
//!   `{revision, first 12 chars}-{content hash}`, see [`response_version`]. The content hash is
//!   taken over the sorted `(name, version)` pairs the client holds once it applies the response,
//!   so equal content gives an equal hash on every stream, replica and restart. Whether a type is
//!   sent is decided by comparing content hashes, never revisions: a new commit that leaves a
//!   type untouched sends nothing for it.
//!   In delta that is the client's whole state of the type, not only the response's changes,
//!   so SotW and delta clients of the same config report the same versions.
//! - Nonces come from a per-stream counter, so every response of a stream has a fresh one and a
//!   request answering an older response is recognised as stale.
//!
//! # NACKs
//! A NACK is a request with `error_detail`, nothing else. The machine then takes the client to
//! hold what it held before the rejected response and sends nothing more of that type while the
//! config the client should hold is unchanged. Once it changes (a new snapshot or a new
//! subscription), the client is brought to the whole current state, once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

use super::resource::{content_version, Resource, ResourceMap, ResourceType};

/// What one call into a state machine produced: responses to write, in order, and events to
/// log or count.
#[derive(Clone, Debug, PartialEq)]
pub struct Output<R> {
    /// Responses to write to the stream, in this order (make-before-break).
    pub responses: Vec<R>,
    /// What happened, for logs and metrics.
    pub events: Vec<Event>,
}

impl<R> Default for Output<R> {
    fn default() -> Self {
        Output {
            responses: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl<R> Output<R> {
    /// Nothing to send and nothing to report.
    pub fn is_empty(&self) -> bool {
        self.responses.is_empty() && self.events.is_empty()
    }
}

/// Something worth a log line or a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client applied the latest response of this type.
    Ack {
        resource_type: ResourceType,
        version: String,
    },
    /// The client rejected a response. `version` is the rejected response's version (empty when
    /// the nonce names no response of this stream), `rejected` the names of the resources it
    /// held (in delta, its removed names too), so the NACK can be traced to manifests.
    Nack {
        resource_type: ResourceType,
        version: String,
        message: String,
        rejected: Vec<String>,
    },
    /// A request for a type this server does not serve; other types are unaffected.
    UnknownType { type_url: String },
    /// A response was produced.
    Sent {
        resource_type: ResourceType,
        version: String,
        resources: usize,
        removed: usize,
        /// Encoded size of the response.
        bytes: usize,
    },
}

/// The last NACK of a type, as `/debug/syncz` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NackRecord {
    /// Version of the rejected response.
    pub version: String,
    /// Envoy's `error_detail.message`.
    pub message: String,
    /// When the NACK arrived, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

impl NackRecord {
    pub(crate) fn now(version: String, message: String) -> NackRecord {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        NackRecord {
            version,
            message,
            at_unix_ms,
        }
    }
}

/// The protocol state of one resource type on one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    /// The client currently asks for something of this type.
    pub subscribed: bool,
    /// Version of the latest response of this type on this stream.
    pub sent_version: Option<String>,
    /// Version of the latest response the client ACKed.
    pub acked_version: Option<String>,
    /// The latest NACK, kept after later ACKs so an operator can still read it.
    pub last_nack: Option<NackRecord>,
}

/// A type's sync state as `/debug/syncz` names it (`SYNCED`, `STALE`, `NACKED`, `NOT_SENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncState {
    /// The client ACKed the latest response.
    Synced,
    /// The latest response is neither ACKed nor NACKed yet.
    Stale,
    /// The client rejected the latest response.
    Nacked,
    /// Nothing of this type was sent on this stream.
    NotSent,
}

impl TypeStatus {
    pub fn state(&self) -> SyncState {
        let Some(sent) = &self.sent_version else {
            return SyncState::NotSent;
        };
        if self.acked_version.as_ref() == Some(sent) {
            SyncState::Synced
        } else if self.last_nack.as_ref().is_some_and(|n| &n.version == sent) {
            SyncState::Nacked
        } else {
            SyncState::Stale
        }
    }
}

/// Forgets the unanswered responses of a type up to and including `acked`, the one an ACK
/// names, and returns that one: the client answers in order, so neither it nor an earlier one
/// can be NACKed any more. The queue is freed once empty: a stream in sync keeps no record.
pub(crate) fn settle_acked<R>(unanswered: &mut VecDeque<R>, acked: usize) -> Option<R> {
    let settled = unanswered.drain(..=acked).next_back();
    if unanswered.is_empty() {
        *unanswered = VecDeque::new();
    }
    settled
}

/// The version string of a response: the snapshot's revision, shortened to 12 characters, and
/// the content hash of what the client holds once it applies the response.
pub fn response_version(revision: &str, content_hash: &str) -> String {
    let short = match revision.char_indices().nth(12) {
        Some((end, _)) => &revision[..end],
        None => revision,
    };
    if short.is_empty() {
        return content_hash.to_string();
    }
    let mut version = String::with_capacity(short.len() + 1 + content_hash.len());
    version.push_str(short);
    version.push('-');
    version.push_str(content_hash);
    version
}

/// Hash over `(name, version)` pairs, which must come sorted by name. Encoded as the snapshot
/// encodes its type versions, so a full set hashes to [`super::resource::Snapshot::type_version`].
pub fn content_hash<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut buf = Vec::new();
    for (name, version) in pairs {
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        buf.extend_from_slice(version.as_bytes());
        buf.push(0);
    }
    content_version(&buf)
}

/// Whether one type of a stream needs planning against a snapshot. It remembers the snapshot
/// type version the type was last planned against; while nothing the plan depends on
/// (subscription, what the client holds, forced resends, a rejection) changes, planning again
/// against the same content would send nothing, so it is skipped. This keeps ACKs and changes to
/// other types from comparing thousands of names per stream. Whoever changes a plan input calls
/// [`Settled::clear`].
#[derive(Debug, Default)]
pub(crate) struct Settled {
    /// A digest of the type version last planned against: kept in the stream itself, so the
    /// check on every ACK and change reads no memory of its own elsewhere.
    at: Option<u128>,
    /// The snapshot map the client holds exactly (every resource of it, nothing else, nothing
    /// rejected), when the last plan left it so: the next snapshot then needs only the
    /// resources that changed between the two maps (see [`changed_between`]).
    pub(crate) holds_all_of: Option<Arc<ResourceMap>>,
    /// How often the type was planned in full (not skipped as settled).
    #[cfg(test)]
    pub(crate) full_plans: usize,
}

impl Settled {
    /// True when the type was last planned against `type_version` and nothing moved since;
    /// otherwise remembers `type_version` for the plan about to run.
    pub(crate) fn skip(&mut self, type_version: &str) -> bool {
        let at = xxh3_128(type_version.as_bytes());
        if self.at == Some(at) {
            return true;
        }
        self.at = Some(at);
        #[cfg(test)]
        {
            self.full_plans += 1;
        }
        false
    }

    pub(crate) fn clear(&mut self) {
        self.at = None;
        self.holds_all_of = None;
    }
}

/// The resources of `new` whose version differs from `old`'s, when both maps hold the same
/// names (`None` otherwise). Every stream of the same snapshots asks the same question, so the
/// answer is computed once and shared: a change costs each stream what changed, not a walk
/// over every name.
pub(crate) fn changed_between(
    old: &Arc<ResourceMap>,
    new: &Arc<ResourceMap>,
) -> Option<Arc<Vec<Arc<Resource>>>> {
    type Entry = (
        Arc<ResourceMap>,
        Arc<ResourceMap>,
        Option<Arc<Vec<Arc<Resource>>>>,
    );
    /// Recent answers; holding both maps keeps their addresses from being reused.
    static RECENT: Mutex<VecDeque<Entry>> = Mutex::new(VecDeque::new());
    const KEPT: usize = 16;

    if Arc::ptr_eq(old, new) {
        return Some(Arc::new(Vec::new()));
    }
    let mut recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, _, answer)) = recent
        .iter()
        .find(|(o, n, _)| Arc::ptr_eq(o, old) && Arc::ptr_eq(n, new))
    {
        return answer.clone();
    }
    let answer = diff_same_names(old, new).map(Arc::new);
    if recent.len() == KEPT {
        recent.pop_front();
    }
    recent.push_back((old.clone(), new.clone(), answer.clone()));
    answer
}

fn diff_same_names(old: &ResourceMap, new: &ResourceMap) -> Option<Vec<Arc<Resource>>> {
    if old.len() != new.len() {
        return None;
    }
    let mut changed = Vec::new();
    for ((old_name, old_resource), (new_name, new_resource)) in old.iter().zip(new) {
        if old_name != new_name {
            return None;
        }
        if !Arc::ptr_eq(old_resource, new_resource) && old_resource.version != new_resource.version
        {
            changed.push(Arc::clone(new_resource));
        }
    }
    Some(changed)
}

/// Per-stream nonce source: a counter, so every response gets a fresh nonce.
#[derive(Clone, Debug, Default)]
pub(crate) struct NonceCounter {
    /// The last nonce handed out; 0 before the first response.
    last: u64,
}

impl NonceCounter {
    pub(crate) fn next(&mut self) -> String {
        self.last += 1;
        self.last.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::resource::{Resource, Snapshot};
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn status(sent: Option<&str>, acked: Option<&str>, nack: Option<&str>) -> TypeStatus {
        TypeStatus {
            subscribed: true,
            sent_version: sent.map(str::to_string),
            acked_version: acked.map(str::to_string),
            last_nack: nack.map(|v| NackRecord::now(v.to_string(), "bad".into())),
        }
    }

    #[test]
    fn sync_state_follows_sent_acked_and_nacked_versions() {
        assert_eq!(status(None, None, None).state(), SyncState::NotSent);
        assert_eq!(
            status(Some("a"), Some("a"), None).state(),
            SyncState::Synced
        );
        assert_eq!(status(Some("b"), Some("a"), None).state(), SyncState::Stale);
        assert_eq!(
            status(Some("b"), Some("a"), Some("b")).state(),
            SyncState::Nacked
        );
        // An old NACK does not make a newer, unanswered response NACKED.
        assert_eq!(
            status(Some("c"), Some("a"), Some("b")).state(),
            SyncState::Stale
        );
        // ACKed after an older NACK: SYNCED, the NACK is kept for the operator.
        assert_eq!(
            status(Some("c"), Some("c"), Some("b")).state(),
            SyncState::Synced
        );
    }

    #[test]
    fn sync_state_serializes_as_syncz_names_it() {
        let names: Vec<String> = [
            SyncState::Synced,
            SyncState::Stale,
            SyncState::Nacked,
            SyncState::NotSent,
        ]
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
        assert_eq!(
            names,
            ["\"SYNCED\"", "\"STALE\"", "\"NACKED\"", "\"NOT_SENT\""]
        );
    }

    #[test]
    fn response_version_joins_short_revision_and_hash() {
        assert_eq!(
            response_version("0123456789abcdef0123", "ffff"),
            "0123456789ab-ffff"
        );
        assert_eq!(response_version("", "ffff"), "ffff");
        assert_eq!(response_version("abc", "ffff"), "abc-ffff");
        assert_eq!(
            response_version("0123456789abcdef", "ffff"),
            "0123456789ab-ffff"
        );
        // Twelve characters, not bytes.
        assert_eq!(
            response_version("ééééééééééééé", "ffff"),
            "éééééééééééé-ffff"
        );
    }

    #[test]
    fn content_hash_of_a_full_set_is_the_snapshot_type_version() {
        let snapshot = Snapshot::new(
            "r1",
            ["a", "b"]
                .into_iter()
                .map(|n| {
                    let c = Cluster {
                        name: n.into(),
                        ..Default::default()
                    };
                    (
                        ResourceType::Cluster,
                        Resource::new(ResourceType::Cluster, n, &c),
                    )
                })
                .collect(),
        );
        let hash = content_hash(
            snapshot
                .resources(ResourceType::Cluster)
                .iter()
                .map(|(n, r)| (n.as_str(), r.version.as_str())),
        );
        assert_eq!(hash, snapshot.type_version(ResourceType::Cluster));
    }

    #[test]
    fn nonces_are_fresh() {
        let mut nonces = NonceCounter::default();
        let a = nonces.next();
        let b = nonces.next();
        assert_ne!(a, b);
    }
}

/// Builders and checks shared by the SotW and delta tests.
#[cfg(test)]
pub(crate) mod testing {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, LocalityLbEndpoints,
    };
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::{
        RouteConfiguration, ScopedRouteConfiguration, VirtualHost,
    };
    use envoy_types::pb::google::protobuf::{Any, Duration};
    use envoy_types::pb::google::rpc::Status;
    use prost::Message;

    use super::Output;
    use crate::xds::reply::Reply;
    use crate::xds::resource::{Resource, ResourceType, Snapshot};

    /// The generated messages of a state machine's replies, which the tests inspect, once each
    /// reply's own encoding is checked to be byte for byte prost's encoding of that message.
    pub fn to_proto<R: Reply>(out: Output<R>) -> Output<R::Proto> {
        let responses = out
            .responses
            .iter()
            .map(|reply| {
                let proto = reply.to_proto();
                let mut wire = Vec::new();
                reply.encode_to(&mut wire);
                assert_eq!(wire, proto.encode_to_vec(), "reply encoded unlike prost");
                assert_eq!(reply.encoded_len(), wire.len());
                proto
            })
            .collect();
        Output {
            responses,
            events: out.events,
        }
    }

    /// A resource of type `t` named `name`; `variant` changes its content (and so its version).
    pub fn resource(t: ResourceType, name: &str, variant: u32) -> Resource {
        match t {
            ResourceType::Cluster => Resource::new(
                t,
                name,
                &Cluster {
                    name: name.into(),
                    connect_timeout: Some(Duration {
                        seconds: i64::from(variant) + 1,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
            ),
            ResourceType::Endpoint => Resource::new(
                t,
                name,
                &ClusterLoadAssignment {
                    cluster_name: name.into(),
                    endpoints: vec![LocalityLbEndpoints {
                        priority: variant,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
            ResourceType::Listener => Resource::new(
                t,
                name,
                &Listener {
                    name: name.into(),
                    stat_prefix: format!("v{variant}"),
                    ..Default::default()
                },
            ),
            ResourceType::ScopedRoute => Resource::new(
                t,
                name,
                &ScopedRouteConfiguration {
                    name: name.into(),
                    route_configuration_name: format!("v{variant}"),
                    ..Default::default()
                },
            ),
            ResourceType::Route => Resource::new(
                t,
                name,
                &RouteConfiguration {
                    name: name.into(),
                    virtual_hosts: vec![VirtualHost {
                        name: format!("v{variant}"),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
        }
    }

    /// A snapshot from `(type, name, variant)` triples.
    pub fn snapshot(revision: &str, items: &[(ResourceType, &str, u32)]) -> Snapshot {
        Snapshot::new(
            revision,
            items
                .iter()
                .map(|&(t, name, variant)| (t, resource(t, name, variant)))
                .collect(),
        )
    }

    /// The small mesh most state-machine tests use: clusters `a` and `b`, their endpoints,
    /// listener `l` and route configuration `r`, each at the given content variant.
    pub fn mesh(revision: &str, clusters: [u32; 2], endpoints: [u32; 2], route: u32) -> Snapshot {
        use ResourceType::{Cluster as C, Endpoint as E, Listener as L, Route as R};
        snapshot(
            revision,
            &[
                (C, "a", clusters[0]),
                (C, "b", clusters[1]),
                (E, "a", endpoints[0]),
                (E, "b", endpoints[1]),
                (L, "l", 0),
                (R, "r", route),
            ],
        )
    }

    /// [`mesh`] with everything at content 0 but the route configuration.
    pub fn base_with_route(revision: &str, route_variant: u32) -> Snapshot {
        mesh(revision, [0, 0], [0, 0], route_variant)
    }

    /// The resource name inside an `Any` of type `t`; panics when the body is not a `t`, which
    /// is what rule 8 checks.
    pub fn any_name(t: ResourceType, any: &Any) -> String {
        assert_eq!(
            any.type_url,
            t.type_url(),
            "Any of the wrong type in a {t} response"
        );
        let bytes = any.value.as_slice();
        match t {
            ResourceType::Cluster => Cluster::decode(bytes).map(|m| m.name),
            ResourceType::Endpoint => ClusterLoadAssignment::decode(bytes).map(|m| m.cluster_name),
            ResourceType::Listener => Listener::decode(bytes).map(|m| m.name),
            ResourceType::ScopedRoute => ScopedRouteConfiguration::decode(bytes).map(|m| m.name),
            ResourceType::Route => RouteConfiguration::decode(bytes).map(|m| m.name),
        }
        .unwrap_or_else(|e| panic!("undecodable {t} resource: {e}"))
    }

    pub fn nack_detail(message: &str) -> Option<Status> {
        Some(Status {
            code: 3,
            message: message.into(),
            details: Vec::new(),
        })
    }
}
