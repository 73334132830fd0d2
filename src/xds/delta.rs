//! Incremental (delta) ADS: a pure state machine per stream (requests and snapshots in,
//! responses out, no I/O).
//!
//! For each type the machine keeps the client's subscriptions and the version of every resource
//! the client holds as far as the server knows (seeded by `initial_resource_versions` on
//! reconnect). After every request and every new snapshot it sends, per type, only the resources
//! that are new or changed and removes only what the client holds and should no longer have.
//! Responses go out in make-before-break order (CDS, EDS, LDS, RDS), with endpoint and cluster
//! removals in responses of their own at the end.
//!
//! Rule numbers in comments refer to `XDS_CHECKLIST.md`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::names::{NameSet, PackedSet};
use super::reply::{DeltaReply, Reply, Resources};
use super::request::DeltaRequest;
use super::resource::{Resource, ResourceMap, ResourceType, Snapshot};
use super::stream::{
    changed_between, content_hash, response_version, settle_acked, Event, NackRecord, NonceCounter,
    Output, Settled, TypeStatus,
};

/// How many unanswered responses per type are remembered: a NACK may answer a response older
/// than the latest one, and each delta response stands on its own, so its changes are undone.
const RECENT_RESPONSES: usize = 8;

/// One delta ADS stream.
#[derive(Debug, Default)]
pub struct DeltaStream {
    /// Source of a fresh nonce for every response (rule 1).
    nonces: NonceCounter,
    /// Per-type state, indexed by [`ResourceType::index`]; a NACK of one type leaves the others
    /// alone (rule 24).
    types: [TypeState; ResourceType::COUNT],
}

/// The protocol state of one type on the stream.
#[derive(Debug, Default)]
struct TypeState {
    /// What `/debug/syncz` shows.
    status: TypeStatus,
    /// A request for this type arrived; nothing of a type nobody asked for is sent (rule 8).
    requested: bool,
    /// The client subscribes to every resource of the type (LDS/CDS only), by `*` or by the
    /// legacy empty first request (rule 25).
    wildcard: bool,
    /// Names the client subscribed to explicitly, without `*`: shared with every stream, and
    /// when they are every name of the type, the snapshot's map itself.
    names: NameSet,
    /// Every resource the client holds as far as the server knows, by name. Only these may
    /// appear in `removed_resources` (rule 22).
    held: HeldSet,
    /// Names to send even if the client holds them at the current version: a subscribe is
    /// always answered (rule 20), and a changed cluster's endpoints are sent again (rule 11).
    force: BTreeSet<String>,
    /// The first request of LDS/CDS on a stream is answered even when nothing is new: Envoy
    /// waits for that answer before it finishes initialising.
    must_answer: bool,
    /// Content hash of the client's state after the latest rejected response. While what the
    /// client should hold still hashes to it, only forced names are sent: the rejected config is
    /// not resent in a loop (rule 4).
    rejected_hash: Option<String>,
    /// Responses of this type the client has not ACKed yet, newest last; an ACK drops the one
    /// it answers and every earlier one.
    recent: VecDeque<SentRecord>,
    /// Nonce of the latest response already ACKed or NACKed, so a repeated request with that
    /// nonce is not counted twice.
    answered_nonce: Option<String>,
    /// Skips planning while the snapshot content and the plan's inputs are unchanged.
    settled: Settled,
    /// How often a plan walked every name (not settled, not sent from a shared diff).
    #[cfg(test)]
    full_walks: usize,
}

/// A response as remembered for ACK and NACK handling.
#[derive(Debug)]
struct SentRecord {
    /// The response's nonce, which the client's ACK or NACK names.
    nonce: String,
    /// The response's version, reported as sent, ACKed or NACKed.
    version: String,
    /// Content hash of the client's state once it applied the response.
    hash: String,
    /// What the response changed, so a NACK can restore the client's previous state.
    undo: Undo,
}

/// What one response changed for the client, as a NACK of it needs to know.
#[derive(Debug)]
enum Undo {
    /// Every resource the response added or removed, with what the client held of that name
    /// before (`None`: nothing).
    Names(Vec<(Held, Option<Held>)>),
    /// The response left the client holding exactly the snapshot's map `after`, and carried
    /// every entry of it that `before` did not hold at the same version and every name of
    /// `before` it lacks, nothing forced: what it changed is the difference of the two, worked
    /// out only when it is needed. A first answer of thousands of resources is remembered as
    /// two pointers, not an entry per resource per stream.
    Whole {
        before: HeldSet,
        after: Arc<ResourceMap>,
    },
}

impl Undo {
    /// Each name the response changed: what it sent (or, for a removal, what the client held),
    /// and what the client held before. Added and updated names first, then removed ones,
    /// each in name order, as the response carried them.
    fn changes(&self) -> Vec<(HeldRef<'_>, Option<HeldRef<'_>>)> {
        match self {
            Undo::Names(names) => names
                .iter()
                .map(|(entry, before)| (HeldRef::from(entry), before.as_ref().map(HeldRef::from)))
                .collect(),
            Undo::Whole { before, after } => {
                let mut changes = Vec::new();
                let mut removed = Vec::new();
                let mut held = before.iter().peekable();
                for resource in after.values() {
                    let name = resource.name.as_str();
                    while let Some(gone) = held.next_if(|h| h.name() < name) {
                        removed.push((gone, Some(gone)));
                    }
                    let prior = held.next_if(|h| h.name() == name);
                    if prior.map(HeldRef::version) != Some(resource.version.as_str()) {
                        changes.push((HeldRef::Sent(resource), prior));
                    }
                }
                removed.extend(held.map(|gone| (gone, Some(gone))));
                changes.append(&mut removed);
                changes
            }
        }
    }

    /// Forgets what the client held before of every name `keep` refuses: a NACK then leaves
    /// those names unheld.
    fn forget_before(&mut self, keep: impl Fn(&str) -> bool) {
        if let Undo::Whole { .. } = self {
            let names = (self.changes().into_iter())
                .map(|(entry, before)| (entry.to_held(), before.map(HeldRef::to_held)))
                .collect();
            *self = Undo::Names(names);
        }
        if let Undo::Names(names) = self {
            for (entry, before) in names {
                if !keep(entry.name()) {
                    *before = None;
                }
            }
        }
    }
}

/// A resource the client holds: one Sluice sent, shared with the snapshot it came from (no
/// copy of its name or version per stream), or one the client declared on reconnect. Ordered
/// and compared by name alone, so a set of them is a map from name to version.
#[derive(Clone, Debug)]
enum Held {
    Sent(Arc<Resource>),
    /// Name and version, from `initial_resource_versions`.
    Declared(Box<(String, String)>),
}

impl Held {
    fn name(&self) -> &str {
        HeldRef::from(self).name()
    }
}

impl std::borrow::Borrow<str> for Held {
    fn borrow(&self) -> &str {
        self.name()
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

/// A resource the client holds, borrowed from a [`HeldSet`].
#[derive(Clone, Copy, Debug)]
enum HeldRef<'a> {
    Sent(&'a Arc<Resource>),
    Declared(&'a (String, String)),
}

impl<'a> HeldRef<'a> {
    fn name(self) -> &'a str {
        match self {
            HeldRef::Sent(resource) => &resource.name,
            HeldRef::Declared(declared) => &declared.0,
        }
    }

    fn version(self) -> &'a str {
        match self {
            HeldRef::Sent(resource) => &resource.version,
            HeldRef::Declared(declared) => &declared.1,
        }
    }

    fn to_held(self) -> Held {
        match self {
            HeldRef::Sent(resource) => Held::Sent(Arc::clone(resource)),
            HeldRef::Declared(declared) => Held::Declared(Box::new(declared.clone())),
        }
    }
}

impl<'a> From<&'a Held> for HeldRef<'a> {
    fn from(held: &'a Held) -> Self {
        match held {
            Held::Sent(resource) => HeldRef::Sent(resource),
            Held::Declared(declared) => HeldRef::Declared(declared),
        }
    }
}

/// Everything the client holds of a type. Once a stream holds exactly one snapshot map (the
/// usual state of a stream in sync with a whole type), that map is kept, shared with the
/// snapshot and every other stream, instead of an entry per resource per stream; the first
/// change made entry by entry turns it back into a set.
#[derive(Debug, Default)]
struct HeldSet {
    /// When present, exactly what the client holds, and `set` is empty.
    map: Option<Arc<ResourceMap>>,
    set: PackedSet<Held>,
}

impl HeldSet {
    fn shared(map: &Arc<ResourceMap>) -> HeldSet {
        HeldSet {
            map: Some(Arc::clone(map)),
            set: PackedSet::default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.map
            .as_ref()
            .map_or(self.set.is_empty(), |map| map.is_empty())
    }

    fn get(&self, name: &str) -> Option<HeldRef<'_>> {
        match &self.map {
            Some(map) => map.get(name).map(HeldRef::Sent),
            None => self.set.get(name).map(HeldRef::from),
        }
    }

    /// In name order (one of the two is empty).
    fn iter(&self) -> impl Iterator<Item = HeldRef<'_>> {
        let map = self
            .map
            .iter()
            .flat_map(|map| map.values().map(HeldRef::Sent));
        map.chain(self.set.iter().map(HeldRef::from))
    }

    /// The entries one by one, to change them.
    fn set_mut(&mut self) -> &mut PackedSet<Held> {
        if let Some(map) = self.map.take() {
            *self.set = map.values().map(|r| Held::Sent(Arc::clone(r))).collect();
        }
        &mut self.set
    }

    fn pack(&mut self) {
        self.set.pack();
    }
}

/// What one type sends in one sync.
#[derive(Debug, Default)]
struct Plan {
    /// Resources to send: new, changed or forced; the snapshot's map itself when that is all of
    /// it.
    added: Resources,
    /// Names the client holds that it should no longer have.
    removed: Vec<String>,
    /// Send even when empty (first LDS/CDS answer).
    answer: bool,
    /// Once sent, the client holds exactly every resource of the snapshot's map: the content
    /// hash of its state is the snapshot's type version.
    holds_all: bool,
}

impl DeltaStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// One request from the client, as the stream's decoder gives it. `snapshot` is this
    /// node's current snapshot.
    pub fn handle_request(
        &mut self,
        decoded: &DeltaRequest,
        snapshot: &Snapshot,
    ) -> Output<DeltaReply> {
        let request = &decoded.request;
        let Some(t) = ResourceType::from_type_url(&request.type_url) else {
            // Rule 7: answer nothing, touch nothing; other types carry on.
            return Output {
                responses: Vec::new(),
                events: vec![Event::UnknownType {
                    type_url: request.type_url.clone(),
                }],
            };
        };
        let mut events = Vec::new();
        let state = &mut self.types[t.index()];
        state.handle_ack_or_nack(t, request, &mut events);
        state.update_subscription(t, decoded, snapshot);
        // A request may arrive with a snapshot newer than the last one handed to
        // `handle_snapshot` (rule 12): syncing every type here keeps make-before-break order.
        let mut out = self.sync(snapshot);
        events.append(&mut out.events);
        out.events = events;
        out
    }

    /// A new snapshot was published for this node.
    pub fn handle_snapshot(&mut self, snapshot: &Snapshot) -> Output<DeltaReply> {
        self.sync(snapshot)
    }

    pub fn status(&self, t: ResourceType) -> &TypeStatus {
        &self.types[t.index()].status
    }

    /// Every type's status, in make-before-break order.
    pub fn statuses(&self) -> impl Iterator<Item = (ResourceType, &TypeStatus)> {
        ResourceType::ALL
            .into_iter()
            .map(|t| (t, &self.types[t.index()].status))
    }

    /// Decides, per type, what to send, and emits it in make-before-break order (rule 9).
    fn sync(&mut self, snapshot: &Snapshot) -> Output<DeltaReply> {
        let mut plans: [Option<Plan>; ResourceType::COUNT] = Default::default();
        for t in ResourceType::ALL {
            plans[t.index()] = self.plan(t, snapshot);
            if t == ResourceType::Cluster {
                if let Some(plan) = &plans[t.index()] {
                    self.force_endpoints_of_changed_clusters(plan, snapshot);
                }
            }
        }

        // Removals of endpoints and clusters go last, once listeners and routes have moved off
        // them; when a single type sends, there is nothing to order and one response does.
        let sending_types = plans.iter().filter(|p| p.is_some()).count();
        let mut tail: Vec<(ResourceType, Vec<String>)> = Vec::new();
        if sending_types > 1 {
            for t in [ResourceType::Endpoint, ResourceType::Cluster] {
                if let Some(plan) = &mut plans[t.index()] {
                    if !plan.removed.is_empty() {
                        tail.push((t, std::mem::take(&mut plan.removed)));
                    }
                }
            }
        }

        let mut out = Output::default();
        for t in ResourceType::ALL {
            if let Some(plan) = plans[t.index()].take() {
                // When the plan leaves the client holding the whole snapshot map, the content
                // hash of its state is the type version: no need to hash every name. (Not when
                // removals follow in the tail: until then it holds more.)
                let whole_map = plan.holds_all && !tail.iter().any(|(tail_t, _)| *tail_t == t);
                if !plan.added.is_empty() || !plan.removed.is_empty() || plan.answer {
                    self.emit(t, plan.added, plan.removed, whole_map, snapshot, &mut out);
                }
            }
        }
        for (t, removed) in tail {
            self.emit(t, Resources::default(), removed, false, snapshot, &mut out);
        }
        for state in &mut self.types {
            state.held.pack();
            state.names.pack();
        }
        out
    }

    /// What to send for `t` now, if anything.
    fn plan(&mut self, t: ResourceType, snapshot: &Snapshot) -> Option<Plan> {
        let state = &mut self.types[t.index()];
        if !state.requested {
            return None;
        }
        if state.settled.skip(snapshot.type_version(t)) {
            return None;
        }
        let map = snapshot.shared_resources(t);
        if let Some(base) = state.settled.holds_all_of.take() {
            // The client holds every resource of `base` and nothing else; with the same names
            // now, only what changed between the two maps is sent.
            if let Some(changed) = changed_between(&base, map) {
                state.settled.holds_all_of = Some(map.clone());
                if changed.is_empty() {
                    return None;
                }
                return Some(Plan {
                    added: Resources::List(changed.to_vec()),
                    removed: Vec::new(),
                    answer: false,
                    holds_all: true,
                });
            }
        }
        #[cfg(test)]
        {
            state.full_walks += 1;
        }
        let desired = state.desired(t, snapshot);
        if let Some(rejected) = &state.rejected_hash {
            if *rejected != desired.hash() {
                // The config moved on from what was rejected: the next change is sent (rule 4).
                state.rejected_hash = None;
            }
        }
        let suppressed = state.rejected_hash.is_some();
        // One ordered walk over what the client should hold and what it holds (both sorted by
        // name): thousands of names cost one comparison each, not a tree search each.
        let mut added: Vec<Arc<Resource>> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        // Entries a reconnecting client declared at the snapshot's version: they become the
        // snapshot's own resources (shared, not a boxed copy of name and version).
        let mut declared_current: Vec<Arc<Resource>> = Vec::new();
        // Holding the very map the client should hold, nothing forced: nothing to compare.
        let holds_desired = state.force.is_empty()
            && matches!((&state.held, &desired),
                (HeldSet { map: Some(held), .. }, Desired::All { resources, .. }) if std::ptr::eq(&**held, *resources));
        // Holding nothing and due the whole map (a sidecar connecting): all of it is sent.
        let lacks_all =
            !suppressed && state.held.is_empty() && matches!(desired, Desired::All { .. });
        if !holds_desired && !lacks_all {
            let mut held = state.held.iter().peekable();
            for (name, resource) in desired.iter() {
                while let Some(gone) = held.next_if(|h| h.name() < name) {
                    if !suppressed {
                        removed.push(gone.name().to_string());
                    }
                }
                let entry = held.next_if(|h| h.name() == name);
                if let Some(HeldRef::Declared(declared)) = entry {
                    if declared.1 == resource.version {
                        declared_current.push(Arc::clone(resource));
                    }
                }
                let version = entry.map(HeldRef::version);
                let forced = !state.force.is_empty() && state.force.contains(name);
                if forced || (!suppressed && version != Some(resource.version.as_str())) {
                    added.push(Arc::clone(resource));
                }
            }
            if suppressed {
                drop(held);
            } else {
                removed.extend(held.map(|gone| gone.name().to_string()));
            }
        }
        if !declared_current.is_empty() {
            // One ordered pass rebuilding the set, not a tree search per entry.
            let mut current = declared_current.into_iter().peekable();
            let set = state.held.set_mut();
            **set = std::mem::take(&mut **set)
                .into_iter()
                .map(|h| match current.next_if(|r| r.name == h.name()) {
                    Some(resource) => Held::Sent(resource),
                    None => h,
                })
                .collect();
        }
        // Every resource of the map, in name order, is the map: it goes out as the snapshot's
        // own, not as a list per stream.
        let added = match desired {
            Desired::All { resources, .. } if lacks_all || added.len() == resources.len() => {
                Resources::Map(Arc::clone(map))
            }
            _ => Resources::List(added),
        };
        let answer = state.must_answer && t.is_wildcard_type() && state.subscribed();
        let holds_all = !suppressed && matches!(desired, Desired::All { .. });
        if holds_all {
            state.settled.holds_all_of = Some(map.clone());
        }
        if added.is_empty() && removed.is_empty() && !answer {
            if state.status.sent_version.is_none() && !suppressed && !state.held.is_empty() {
                // A reconnecting client declared exactly what it should hold (rule 23): nothing
                // is sent, and it is in sync with this snapshot, which the debug API must show.
                let version = response_version(&snapshot.revision, &desired.hash());
                state.status.sent_version = Some(version.clone());
                state.status.acked_version = Some(version);
            }
            return None;
        }
        Some(Plan {
            added,
            removed,
            answer,
            holds_all,
        })
    }

    /// Rule 11: a cluster that changes gets its endpoints again right after it, even when they
    /// did not change; Envoy drops a cluster's endpoints when it updates the cluster.
    fn force_endpoints_of_changed_clusters(&mut self, clusters: &Plan, snapshot: &Snapshot) {
        let held = &self.types[ResourceType::Cluster.index()].held;
        let changed: Vec<String> = clusters
            .added
            .iter()
            .filter(|c| {
                held.get(c.name.as_str())
                    .is_some_and(|h| h.version() != c.version)
            })
            .map(|c| c.name.clone())
            .collect();
        let endpoints = &mut self.types[ResourceType::Endpoint.index()];
        for name in changed {
            if endpoints.requested
                && endpoints.covers(&name)
                && snapshot.get(ResourceType::Endpoint, &name).is_some()
            {
                endpoints.force.insert(name);
                endpoints.settled.clear();
            }
        }
    }

    /// Builds, records and queues one response. `whole_map`: once the client applies it, it
    /// holds exactly the snapshot's map of the type; the stream then keeps that map, and the
    /// content hash of the client's state is the type version.
    fn emit(
        &mut self,
        t: ResourceType,
        added: Resources,
        removed: Vec<String>,
        whole_map: bool,
        snapshot: &Snapshot,
        out: &mut Output<DeltaReply>,
    ) {
        let nonce = self.nonces.next();
        let state = &mut self.types[t.index()];
        let map = snapshot.shared_resources(t);
        // An answer that changes nothing (a reconnecting client declared it all) needs nothing
        // to undo; what the client held then is dropped at once.
        let changes_something = !added.is_empty() || !removed.is_empty();
        let undo = if whole_map && changes_something && state.force.is_empty() {
            let before = std::mem::replace(&mut state.held, HeldSet::shared(map));
            let undo = Undo::Whole {
                before,
                after: Arc::clone(map),
            };
            #[cfg(test)]
            tests::assert_undo_lists(&undo, &added, &removed);
            undo
        } else {
            Undo::Names(state.record_changes(&added, &removed, whole_map.then_some(map)))
        };
        if !state.force.is_empty() {
            for resource in &added {
                state.force.remove(&resource.name);
            }
        }
        let hash = if whole_map {
            snapshot.type_version(t).to_string()
        } else {
            content_hash(state.held.iter().map(|h| (h.name(), h.version())))
        };
        #[cfg(test)]
        debug_assert_eq!(
            hash,
            content_hash(state.held.iter().map(|h| (h.name(), h.version()))),
            "the version's hash is the hash of what the client holds"
        );
        let version = response_version(&snapshot.revision, &hash);
        let response = DeltaReply {
            system_version_info: version.clone(),
            resource_type: t,
            resources: added,
            removed_resources: removed,
            nonce: nonce.clone(),
        };
        out.events.push(Event::Sent {
            resource_type: t,
            version: version.clone(),
            resources: response.resources.len(),
            removed: response.removed_resources.len(),
            bytes: response.encoded_len(),
        });
        out.responses.push(response);

        state.must_answer = false;
        state.status.sent_version = Some(version.clone());
        if state.recent.len() == RECENT_RESPONSES {
            state.recent.pop_front();
        }
        state.recent.push_back(SentRecord {
            nonce,
            version,
            hash,
            undo,
        });
    }
}

/// What the client should hold of one type: the snapshot's whole map (wildcard), or the
/// subscribed names that exist. The wildcard case borrows the map instead of copying it.
enum Desired<'a> {
    All {
        resources: &'a ResourceMap,
        /// The snapshot's type version, which is the content hash of the whole map.
        hash: &'a str,
    },
    Named(BTreeMap<&'a str, &'a Arc<Resource>>),
}

impl<'a> Desired<'a> {
    fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Resource>)> {
        let (all, named) = match self {
            Desired::All { resources, .. } => (Some(resources.iter()), None),
            Desired::Named(map) => (None, Some(map.iter())),
        };
        let all = all.into_iter().flatten().map(|(n, r)| (n.as_str(), r));
        let named = named.into_iter().flatten().map(|(n, r)| (*n, *r));
        all.chain(named)
    }

    /// The content hash of the client's state once it holds exactly this.
    fn hash(&self) -> String {
        match self {
            Desired::All { hash, .. } => (*hash).to_string(),
            Desired::Named(_) => content_hash(
                self.iter()
                    .map(|(name, resource)| (name, resource.version.as_str())),
            ),
        }
    }
}

impl TypeState {
    /// Applies a response's changes to what the client holds, one entry at a time, and returns
    /// each with what the client held of that name before. `whole`: the client then holds
    /// exactly that map, which is kept instead.
    fn record_changes(
        &mut self,
        added: &Resources,
        removed: &[String],
        whole: Option<&Arc<ResourceMap>>,
    ) -> Vec<(Held, Option<Held>)> {
        let mut changes = Vec::with_capacity(added.len() + removed.len());
        if let Some(map) = whole {
            for resource in added {
                let before = self.held.get(&resource.name).map(HeldRef::to_held);
                changes.push((Held::Sent(Arc::clone(resource)), before));
            }
            for name in removed {
                if let Some(before) = self.held.get(name).map(HeldRef::to_held) {
                    changes.push((before.clone(), Some(before)));
                }
            }
            self.held = HeldSet::shared(map);
        } else {
            let held = self.held.set_mut();
            for resource in added {
                let before = held.replace(Held::Sent(Arc::clone(resource)));
                changes.push((Held::Sent(Arc::clone(resource)), before));
            }
            for name in removed {
                if let Some(before) = held.take(name.as_str()) {
                    changes.push((before.clone(), Some(before)));
                }
            }
        }
        changes
    }

    fn subscribed(&self) -> bool {
        self.wildcard || !self.names.is_empty()
    }

    fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// What the client should hold: every resource in wildcard mode, else the subscribed names
    /// that exist. Always from the current snapshot (rule 12).
    fn desired<'a>(&self, t: ResourceType, snapshot: &'a Snapshot) -> Desired<'a> {
        let all = snapshot.resources(t);
        // Envoy names every resource of the type (all EDS clusters, every scope's routes): then
        // the client wants the whole map, as in wildcard mode, and nothing is looked up.
        if self.wildcard || self.names.are_keys_of(snapshot.shared_resources(t)) {
            return Desired::All {
                resources: all,
                hash: snapshot.type_version(t),
            };
        }
        Desired::Named(
            self.names
                .iter()
                .filter_map(|name| all.get_key_value(name).map(|(k, r)| (k.as_str(), r)))
                .collect(),
        )
    }

    /// ACK and NACK are told apart by `error_detail` alone (rule 3).
    fn handle_ack_or_nack(
        &mut self,
        t: ResourceType,
        request: &DeltaDiscoveryRequest,
        events: &mut Vec<Event>,
    ) {
        let nonce = request.response_nonce.as_str();
        if nonce.is_empty() || self.answered_nonce.as_deref() == Some(nonce) {
            return;
        }
        let position = self.recent.iter().position(|r| r.nonce == nonce);
        let is_latest = position.is_some_and(|p| p + 1 == self.recent.len());
        if let Some(detail) = &request.error_detail {
            let (version, rejected) = match position {
                Some(p) => self.undo(p),
                // A nonce of an earlier stream, or one too old to remember: report it only.
                None => (String::new(), Vec::new()),
            };
            if is_latest {
                self.answered_nonce = Some(nonce.to_string());
            }
            self.status.last_nack = Some(NackRecord::now(version.clone(), detail.message.clone()));
            events.push(Event::Nack {
                resource_type: t,
                version,
                message: detail.message.clone(),
                rejected,
            });
        } else if let Some(p) = position {
            let acked = settle_acked(&mut self.recent, p);
            // An ACK of an older response says nothing of the newer one still unanswered.
            if let (true, Some(latest)) = (is_latest, acked) {
                self.status.acked_version = Some(latest.version.clone());
                self.answered_nonce = Some(nonce.to_string());
                events.push(Event::Ack {
                    resource_type: t,
                    version: latest.version,
                });
            }
        }
    }

    /// The client rejected the response at `position` in `recent` and kept what it had: restore
    /// that in `held` for every name no later response touched, and hold back the rejected
    /// content until the config changes. Returns the response's version and names.
    fn undo(&mut self, position: usize) -> (String, Vec<String>) {
        let later: BTreeSet<&str> = self
            .recent
            .iter()
            .skip(position + 1)
            .flat_map(|r| r.undo.changes().into_iter().map(|(entry, _)| entry.name()))
            .collect();
        let Some(record) = self.recent.get(position) else {
            return (String::new(), Vec::new());
        };
        let changes = record.undo.changes();
        let mut restore = Vec::new();
        for (entry, before) in &changes {
            let name = entry.name();
            if !later.contains(name) && self.covers(name) {
                restore.push((name.to_string(), before.map(HeldRef::to_held)));
            }
        }
        let version = record.version.clone();
        let rejected = (changes.iter())
            .map(|(entry, _)| entry.name().to_string())
            .collect();
        self.rejected_hash = Some(record.hash.clone());
        self.settled.clear();
        for (name, before) in restore {
            match before {
                Some(before) => {
                    self.held.set_mut().replace(before);
                }
                None => {
                    self.held.set_mut().remove(name.as_str());
                }
            }
        }
        (version, rejected)
    }

    /// Applies the request's subscribe and unsubscribe lists, whatever its nonce (rule 20), and
    /// on the first request of the type, the versions the client already holds (rule 23).
    fn update_subscription(
        &mut self,
        t: ResourceType,
        decoded: &DeltaRequest,
        snapshot: &Snapshot,
    ) {
        let request = &decoded.request;
        let first = !self.requested;
        if first || !decoded.subscribe.is_empty() || !request.resource_names_unsubscribe.is_empty()
        {
            self.settled.clear();
        }
        if first {
            self.requested = true;
            self.must_answer = true;
            // Rule 25, the protocol's legacy wildcard: an LDS/CDS stream whose first request
            // subscribes to nothing subscribes to everything.
            if t.is_wildcard_type() && decoded.subscribe.is_empty() {
                self.wildcard = true;
            }
            let declared = &decoded.declared;
            let map = snapshot.shared_resources(t);
            // A client reconnecting in sync declares exactly the snapshot's map: it holds that
            // map, found by the count and digest sum of the pairs rather than pair by pair.
            if !declared.is_empty()
                && declared.len() == map.len()
                && declared.sum() == snapshot.entry_sum(t)
            {
                self.held = HeldSet::shared(map);
            } else {
                // A later pair of the same name replaces an earlier one, as in a protobuf map.
                let held = self.held.set_mut();
                for (name, version) in declared.iter() {
                    held.replace(Held::Declared(Box::new((
                        name.to_string(),
                        version.to_string(),
                    ))));
                }
            }
        }
        let subscribe = &decoded.subscribe;
        // A first request naming every resource of the type keeps the snapshot's map as names.
        let every_name = if first && self.names.is_empty() {
            NameSet::keys_if_exactly(t, snapshot, subscribe.len(), || subscribe.sum())
        } else {
            None
        };
        if let Some(names) = every_name {
            self.names = names;
            // Nothing to force (see below): on a first request the stream holds only what was
            // declared, and every name it does not hold exists in this snapshot, so it is sent
            // in answer to this very request.
        } else {
            for name in subscribe.iter() {
                if name == "*" && t.is_wildcard_type() {
                    self.wildcard = true;
                    continue;
                }
                self.names.insert(name);
                // A subscribe is answered even when the client holds the resource (rule 20),
                // except for what it declared on reconnect: only what changed is sent then
                // (rule 23). On the first request the stream holds only what was declared.
                if !(first && self.held.get(name).is_some()) {
                    self.force.insert(name.to_string());
                }
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" && t.is_wildcard_type() {
                self.wildcard = false;
                continue;
            }
            // Rule 21: unsubscribing a name never subscribed changes nothing.
            self.names.remove(name.as_str());
            self.force.remove(name);
        }
        // The client drops what it no longer subscribes to; no removal is sent for it. Only an
        // unsubscribe (or the first request's declared versions) can leave such names; an ACK
        // changes nothing here.
        let (wildcard, names) = (self.wildcard, &self.names);
        // Checked only when the subscription narrowed: an ACK walks nothing.
        let keeps_all =
            || (self.held.map.as_ref()).is_some_and(|map| wildcard || names.include_keys_of(map));
        if (first || !request.resource_names_unsubscribe.is_empty()) && !keeps_all() {
            self.held
                .set_mut()
                .retain(|h| wildcard || names.contains(h.name()));
        }
        if !request.resource_names_unsubscribe.is_empty() {
            // Also from the state it would go back to on a NACK of a response sent before
            // this request: a name subscribed again later is not held from back then.
            for record in &mut self.recent {
                record
                    .undo
                    .forget_before(|name| wildcard || names.contains(name));
            }
        }
        self.status.subscribed = self.subscribed();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    use prost::bytes::Bytes;
    use prost::Message;

    use super::*;
    use crate::xds::grpc::MessageDecoder;
    use crate::xds::request::DeltaDecoder;
    use crate::xds::stream::testing::{
        any_name, base_with_route, mesh, nack_detail, snapshot, to_proto,
    };
    use crate::xds::stream::SyncState;
    use ResourceType::{Cluster as C, Endpoint as E, Listener as L, Route as R};

    /// A stream with the checks every response of every test must pass: a fresh nonce (rule 1),
    /// only subscribed types, no name twice, every `Any` of the response's type and named as
    /// its resource (rule 8), and one `Sent` event per response.
    struct Harness {
        stream: DeltaStream,
        snapshot: Snapshot,
        nonces: HashSet<String>,
    }

    impl Harness {
        fn new(snapshot: Snapshot) -> Self {
            Harness {
                stream: DeltaStream::new(),
                snapshot,
                nonces: HashSet::new(),
            }
        }

        fn request(&mut self, request: DeltaDiscoveryRequest) -> Output<DeltaDiscoveryResponse> {
            let out = to_proto(
                self.stream
                    .handle_request(&decoded(&request), &self.snapshot),
            );
            check_responses(&self.stream, &out, &mut self.nonces);
            out
        }

        fn publish(&mut self, snapshot: Snapshot) -> Output<DeltaDiscoveryResponse> {
            self.snapshot = snapshot;
            let out = to_proto(self.stream.handle_snapshot(&self.snapshot));
            check_responses(&self.stream, &out, &mut self.nonces);
            out
        }

        fn subscribe(&mut self, t: ResourceType, names: &[&str]) -> Output<DeltaDiscoveryResponse> {
            self.request(request(t, names, &[], ""))
        }

        fn unsubscribe(
            &mut self,
            t: ResourceType,
            names: &[&str],
        ) -> Output<DeltaDiscoveryResponse> {
            self.request(request(t, &[], names, ""))
        }

        fn ack(&mut self, response: &DeltaDiscoveryResponse) -> Output<DeltaDiscoveryResponse> {
            self.request(request(type_of(response), &[], &[], &response.nonce))
        }

        fn nack(&mut self, response: &DeltaDiscoveryResponse) -> Output<DeltaDiscoveryResponse> {
            let mut nack = request(type_of(response), &[], &[], &response.nonce);
            nack.error_detail = nack_detail("rejected by test");
            self.request(nack)
        }
    }

    pub(super) fn check_responses(
        stream: &DeltaStream,
        out: &Output<DeltaDiscoveryResponse>,
        nonces: &mut HashSet<String>,
    ) {
        let sent: Vec<&Event> = out
            .events
            .iter()
            .filter(|e| matches!(e, Event::Sent { .. }))
            .collect();
        assert_eq!(
            sent.len(),
            out.responses.len(),
            "one Sent event per response"
        );
        for (response, event) in out.responses.iter().zip(sent) {
            let t = type_of(response);
            assert!(
                stream.status(t).subscribed,
                "sent {t}, which nobody subscribed to"
            );
            assert!(nonces.insert(response.nonce.clone()), "nonce reused");
            let mut names = BTreeSet::new();
            for resource in &response.resources {
                let body = resource.resource.as_ref().expect("a body");
                assert_eq!(any_name(t, body), resource.name);
                assert_eq!(
                    resource.version,
                    crate::xds::resource::content_version(&body.value)
                );
                assert!(
                    names.insert(resource.name.as_str()),
                    "{t} {} twice",
                    resource.name
                );
            }
            for name in &response.removed_resources {
                assert!(names.insert(name.as_str()), "{t} {name} twice");
            }
            let Event::Sent {
                resource_type,
                version,
                resources,
                removed,
                bytes,
            } = event
            else {
                unreachable!()
            };
            assert_eq!(*resource_type, t);
            assert_eq!(*version, response.system_version_info);
            assert_eq!(*resources, response.resources.len());
            assert_eq!(*removed, response.removed_resources.len());
            assert_eq!(*bytes, response.encoded_len());
        }
    }

    /// A whole-map answer carries exactly the difference of the two sets it is remembered by:
    /// checked on every such answer the tests make.
    pub(super) fn assert_undo_lists(undo: &Undo, added: &Resources, removed: &[String]) {
        let changes = undo.changes();
        let changed = changes.iter().map(|(entry, _)| entry.name());
        let sent =
            (added.iter().map(|r| r.name.as_str())).chain(removed.iter().map(String::as_str));
        assert!(
            changed.eq(sent),
            "a whole-map answer carries exactly the difference of the two sets"
        );
    }

    pub(super) fn request(
        t: ResourceType,
        subscribe: &[&str],
        unsubscribe: &[&str],
        nonce: &str,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: t.type_url().into(),
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    /// `request` as the stream's decoder reads it off the wire.
    pub(super) fn decoded(request: &DeltaDiscoveryRequest) -> DeltaRequest {
        DeltaDecoder
            .decode(Bytes::from(request.encode_to_vec()))
            .expect("a well-formed request")
    }

    pub(super) fn type_of(response: &DeltaDiscoveryResponse) -> ResourceType {
        ResourceType::from_type_url(&response.type_url).expect("response of a known type")
    }

    type Summary = (ResourceType, Vec<String>, Vec<String>);

    /// `(type, added, removed)` of each response, for order assertions.
    fn summary(out: &Output<DeltaDiscoveryResponse>) -> Vec<Summary> {
        out.responses
            .iter()
            .map(|r| {
                (
                    type_of(r),
                    r.resources.iter().map(|x| x.name.clone()).collect(),
                    r.removed_resources.clone(),
                )
            })
            .collect()
    }

    fn s(t: ResourceType, added: &[&str], removed: &[&str]) -> Summary {
        let strings = |v: &[&str]| v.iter().map(|n| n.to_string()).collect();
        (t, strings(added), strings(removed))
    }

    /// Clusters a and b with their endpoints, listener l and route r.
    fn base(revision: &str) -> Snapshot {
        base_with_route(revision, 0)
    }

    /// A harness subscribed to every type of [`base`], every response ACKed.
    fn synced() -> Harness {
        let mut h = Harness::new(base("rev1"));
        for (t, names) in [
            (C, &[][..]),
            (E, &["a", "b"][..]),
            (L, &[][..]),
            (R, &["r"][..]),
        ] {
            let out = h.subscribe(t, names);
            assert_eq!(out.responses.len(), 1, "first {t} request answered");
            assert!(h.ack(&out.responses[0]).responses.is_empty());
        }
        h
    }

    #[test]
    fn a_client_holding_a_whole_map_keeps_the_snapshots_map_not_a_copy() {
        let shares = |h: &Harness, t: ResourceType| {
            matches!(&h.stream.types[t.index()].held,
                HeldSet { map: Some(map), .. } if Arc::ptr_eq(map, h.snapshot.shared_resources(t)))
        };
        let mut h = synced();
        // CDS and LDS by wildcard, EDS and RDS by naming every resource.
        for t in [C, E, L, R] {
            assert!(shares(&h, t), "{t} after the first responses");
        }
        let out = h.publish(mesh("rev2", [1, 0], [0, 0], 1));
        for response in &out.responses {
            h.ack(response);
        }
        for t in [C, E, R] {
            assert!(shares(&h, t), "{t} after a change");
        }
        // Nothing of LDS changed or was sent: the stream keeps the earlier, equal map.
        assert!(h.stream.types[L.index()].held.map.is_some());
        // A NACK restores entry by entry: the client holds a set that is no snapshot's map.
        let out = h.publish(mesh("rev3", [2, 0], [0, 0], 1));
        let cds = out
            .responses
            .iter()
            .find(|r| type_of(r) == C)
            .expect("a CDS response");
        h.nack(cds);
        assert!(!shares(&h, C));
        assert!(h.stream.types[C.index()].held.get("a").is_some());
    }

    #[test]
    fn a_client_naming_every_resource_keeps_the_snapshots_map_as_its_names() {
        let names_are_map = |h: &Harness, t: ResourceType| {
            h.stream.types[t.index()]
                .names
                .is_kept_as(h.snapshot.shared_resources(t))
        };
        let mut h = synced();
        assert!(names_are_map(&h, E) && names_are_map(&h, R));
        // A name added or removed: a set of the names.
        h.subscribe(E, &["c"]);
        assert!(!names_are_map(&h, E));
        assert_eq!(
            h.stream.types[E.index()].names.iter().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        h.unsubscribe(E, &["c"]);
        assert!(h.stream.types[E.index()]
            .names
            .are_keys_of(h.snapshot.shared_resources(E)));

        // A reconnect in sync: the names and what is held are the snapshot's maps, and
        // nothing is sent.
        let mut h2 = Harness::new(h.snapshot.clone());
        let mut first = request(E, &["b", "a"], &[], "");
        first.initial_resource_versions = h
            .snapshot
            .resources(E)
            .iter()
            .map(|(n, r)| (n.clone(), r.version.clone()))
            .collect();
        assert!(h2.request(first).responses.is_empty());
        assert!(names_are_map(&h2, E));
        assert!(h2.stream.types[E.index()].held.map.is_some());
        // Every name but one, or every name with one twice: a set, answered as before.
        for names in [&["a"][..], &["a", "b", "b"]] {
            let mut h3 = Harness::new(h.snapshot.clone());
            let out = h3.request(request(E, names, &[], ""));
            assert!(!names_are_map(&h3, E), "{names:?}");
            let names: BTreeSet<&str> = names.iter().copied().collect();
            let sent: Vec<&str> = names.into_iter().collect();
            assert_eq!(summary(&out), [s(E, &sent, &[])]);
        }
    }

    #[test]
    fn a_client_holding_a_whole_map_is_sent_the_shared_diff_without_walking_every_name() {
        let mut h = synced();
        let walks = |h: &Harness| ResourceType::ALL.map(|t| h.stream.types[t.index()].full_walks);
        let before = walks(&h);
        // Cluster a and the route change; CDS is wildcard, EDS and RDS name every resource.
        let out = h.publish(mesh("rev2", [1, 0], [0, 0], 1));
        assert_eq!(
            summary(&out),
            [s(C, &["a"], &[]), s(E, &["a"], &[]), s(R, &["r"], &[])],
            "the changed cluster, its endpoints again (rule 11), the changed route"
        );
        for response in &out.responses {
            h.ack(response);
        }
        let after = walks(&h);
        assert_eq!(
            after[C.index()],
            before[C.index()],
            "CDS from the shared diff"
        );
        assert_eq!(
            after[R.index()],
            before[R.index()],
            "RDS from the shared diff"
        );
        // The forced endpoints needed a full plan; the next change of them does not.
        let out = h.publish(mesh("rev3", [1, 0], [0, 1], 1));
        assert_eq!(summary(&out), [s(E, &["b"], &[])]);
        h.ack(&out.responses[0]);
        assert_eq!(walks(&h)[E.index()], after[E.index()]);
        // A removal changes the names: a full walk, which removes it.
        let out = h.publish(snapshot(
            "rev4",
            &[
                (C, "a", 1),
                (E, "a", 0),
                (E, "b", 1),
                (L, "l", 0),
                (R, "r", 1),
            ],
        ));
        assert_eq!(summary(&out), [s(C, &[], &["b"])]);
        assert_eq!(walks(&h)[C.index()], after[C.index()] + 1);
    }

    #[test]
    fn acks_and_changes_of_other_types_do_not_plan_unchanged_types_again() {
        let mut h = synced();
        let plans =
            |h: &Harness| ResourceType::ALL.map(|t| h.stream.types[t.index()].settled.full_plans);
        let before = plans(&h);
        let out = h.publish(base_with_route("rev2", 1));
        assert_eq!(summary(&out), vec![s(R, &["r"], &[])]);
        assert!(h.ack(&out.responses[0]).responses.is_empty());
        let after = plans(&h);
        for t in [C, E, L] {
            assert_eq!(after[t.index()], before[t.index()], "{t} planned again");
        }
        assert_eq!(after[R.index()], before[R.index()] + 1);
        assert_eq!(h.stream.status(R).state(), SyncState::Synced);
    }

    #[test]
    fn nack_after_unsubscribing_does_not_bring_back_what_the_client_dropped() {
        let mut h = Harness::new(snapshot("rev1", &[(L, "a", 0)]));
        let first = h.subscribe(L, &[]);
        let changed = h.publish(snapshot("rev2", &[(L, "c", 0)]));
        assert_eq!(summary(&changed), vec![s(L, &["c"], &["a"])]);
        // Off the wildcard (the client drops "a" and "c"), then back on "a" alone, both
        // requests still naming the first response's nonce.
        let stale = first.responses[0].nonce.clone();
        assert!(h
            .request(request(L, &[], &["*"], &stale))
            .responses
            .is_empty());
        assert!(h
            .request(request(L, &["a"], &[], &stale))
            .responses
            .is_empty());
        // The client rejects the change; it held "a" before it, but dropped it since.
        let out = h.nack(&changed.responses[0]);
        assert!(out.responses.is_empty(), "{:?}", summary(&out));
    }

    #[test]
    fn rule_01_every_response_has_a_fresh_nonce() {
        let mut h = Harness::new(base("rev1"));
        let first = h.subscribe(C, &[]);
        let second = h.publish(snapshot("rev2", &[(C, "a", 1)]));
        assert_ne!(first.responses[0].nonce, second.responses[0].nonce);
    }

    #[test]
    fn rule_02_only_changed_resources_are_sent_and_the_version_moves_with_them() {
        let mut h = synced();
        let cds_before = h.stream.status(C).sent_version.clone();
        let lds_before = h.stream.status(L).sent_version.clone();
        let out = h.publish(mesh("rev2", [7, 0], [0, 0], 0));
        // Cluster a, and its endpoints again (rule 11); no LDS.
        assert_eq!(summary(&out), [s(C, &["a"], &[]), s(E, &["a"], &[])]);
        assert_ne!(h.stream.status(C).sent_version, cds_before);
        assert_eq!(h.stream.status(L).sent_version, lds_before);
        assert!(out.responses[0].system_version_info.starts_with("rev2-"));
        // Resource versions are content hashes.
        let a = h.snapshot.get(C, "a").map(|r| r.version.clone());
        assert_eq!(Some(out.responses[0].resources[0].version.clone()), a);
    }

    #[test]
    fn rule_03_error_detail_with_the_latest_nonce_is_a_nack() {
        let mut h = Harness::new(base("rev1"));
        let out = h.subscribe(C, &[]);
        let response = out.responses[0].clone();
        let out = h.nack(&response);
        assert!(out.responses.is_empty());
        assert_eq!(
            out.events,
            [Event::Nack {
                resource_type: C,
                version: response.system_version_info.clone(),
                message: "rejected by test".into(),
                rejected: vec!["a".into(), "b".into()],
            }]
        );
        assert_eq!(h.stream.status(C).state(), SyncState::Nacked);
    }

    #[test]
    fn rule_04_nack_is_not_resent() {
        let mut h = synced();
        let bad = h.publish(snapshot(
            "rev2",
            &[
                (C, "a", 0),
                (C, "b", 0),
                (E, "a", 0),
                (E, "b", 0),
                (L, "l", 9),
                (R, "r", 0),
            ],
        ));
        assert_eq!(summary(&bad), [s(L, &["l"], &[])]);
        assert!(
            h.nack(&bad.responses[0]).responses.is_empty(),
            "rejected config resent"
        );
        let same = snapshot(
            "rev3",
            &[
                (C, "a", 0),
                (C, "b", 0),
                (E, "a", 0),
                (E, "b", 0),
                (L, "l", 9),
                (R, "r", 0),
            ],
        );
        assert!(h.publish(same).responses.is_empty());
        assert_eq!(h.stream.status(L).state(), SyncState::Nacked);
        // The next change is sent once.
        let fixed = snapshot(
            "rev4",
            &[
                (C, "a", 0),
                (C, "b", 0),
                (E, "a", 0),
                (E, "b", 0),
                (L, "l", 2),
                (R, "r", 0),
            ],
        );
        let out = h.publish(fixed.clone());
        assert_eq!(summary(&out), [s(L, &["l"], &[])]);
        assert!(h.publish(fixed).responses.is_empty());
        h.ack(&out.responses[0]);
        assert_eq!(h.stream.status(L).state(), SyncState::Synced);
    }

    #[test]
    fn rule_04_a_nacked_removal_is_sent_again_with_the_next_change() {
        let mut h = synced();
        let out = h.publish(snapshot(
            "rev2",
            &[
                (C, "a", 0),
                (E, "a", 0),
                (E, "b", 0),
                (L, "l", 0),
                (R, "r", 0),
            ],
        ));
        assert_eq!(summary(&out), [s(C, &[], &["b"])]);
        h.nack(&out.responses[0]);
        // The client kept b; once clusters change again, b's removal goes with the change.
        let out = h.publish(snapshot(
            "rev3",
            &[
                (C, "a", 1),
                (E, "a", 0),
                (E, "b", 0),
                (L, "l", 0),
                (R, "r", 0),
            ],
        ));
        assert_eq!(
            summary(&out),
            [s(C, &["a"], &[]), s(E, &["a"], &[]), s(C, &[], &["b"])]
        );
    }

    #[test]
    fn rule_05_ack_and_identical_snapshot_send_nothing() {
        let mut h = synced();
        assert!(h.publish(base("rev1")).responses.is_empty());
        assert!(h.publish(base("rev2")).responses.is_empty());
        for t in [C, E, L, R] {
            assert_eq!(h.stream.status(t).state(), SyncState::Synced, "{t}");
        }
    }

    #[test]
    fn rule_06_node_is_only_needed_on_the_first_request() {
        let mut h = Harness::new(base("rev1"));
        let mut first = request(C, &[], &[], "");
        first.node = Some(Default::default());
        let out = h.request(first);
        assert!(h
            .ack(&out.responses[0])
            .events
            .iter()
            .any(|e| matches!(e, Event::Ack { .. })));
        assert_eq!(summary(&h.subscribe(E, &["a"])), [s(E, &["a"], &[])]);
    }

    #[test]
    fn rule_07_unknown_type_leaves_other_types_alone() {
        let mut h = synced();
        for url in ["type.googleapis.com/foo.Bar", ""] {
            let mut req = request(C, &["x"], &[], "");
            req.type_url = url.into();
            let out = h.request(req);
            assert_eq!(out.responses, []);
            assert_eq!(
                out.events,
                [Event::UnknownType {
                    type_url: url.into()
                }]
            );
        }
        let out = h.publish(snapshot(
            "rev2",
            &[
                (C, "a", 0),
                (C, "b", 0),
                (C, "c", 0),
                (E, "a", 0),
                (E, "b", 0),
                (L, "l", 0),
                (R, "r", 0),
            ],
        ));
        assert_eq!(summary(&out), [s(C, &["c"], &[])]);
    }

    #[test]
    fn rule_08_types_nobody_asked_for_are_never_sent() {
        let mut h = Harness::new(base("rev1"));
        h.subscribe(C, &[]);
        let out = h.publish(snapshot(
            "rev2",
            &[
                (C, "a", 0),
                (C, "b", 0),
                (E, "a", 1),
                (L, "l", 1),
                (R, "r", 1),
            ],
        ));
        assert_eq!(summary(&out), []);
    }

    #[test]
    fn rule_09_make_before_break_adds_first_and_removes_clusters_last() {
        // Add cluster y, move the route from x to y, drop x.
        let mut h = Harness::new(snapshot(
            "rev1",
            &[(C, "x", 0), (E, "x", 0), (L, "l", 0), (R, "r", 0)],
        ));
        for (t, names) in [
            (C, &[][..]),
            (E, &["x", "y"][..]),
            (L, &[][..]),
            (R, &["r"][..]),
        ] {
            let out = h.subscribe(t, names);
            h.ack(&out.responses[0]);
        }
        let out = h.publish(snapshot(
            "rev2",
            &[(C, "y", 0), (E, "y", 0), (L, "l", 0), (R, "r", 1)],
        ));
        assert_eq!(
            summary(&out),
            [
                s(C, &["y"], &[]),
                s(E, &["y"], &[]),
                s(R, &["r"], &[]),
                s(E, &[], &["x"]),
                s(C, &[], &["x"]),
            ]
        );
        // Only the last CDS response counts for ACK.
        assert!(h.ack(&out.responses[0]).events.is_empty());
        h.ack(&out.responses[4]);
        assert_eq!(h.stream.status(C).state(), SyncState::Synced);
    }

    #[test]
    fn rule_09_a_lone_change_is_one_response() {
        let mut h = synced();
        let out = h.publish(snapshot(
            "rev2",
            &[
                (C, "a", 0),
                (C, "c", 0),
                (E, "a", 0),
                (E, "b", 0),
                (L, "l", 0),
                (R, "r", 0),
            ],
        ));
        assert_eq!(summary(&out), [s(C, &["c"], &["b"])]);
    }

    #[test]
    fn rule_10_children_do_not_wait_for_the_parent_ack() {
        let mut h = Harness::new(base("rev1"));
        assert_eq!(h.subscribe(C, &[]).responses.len(), 1);
        let out = h.subscribe(E, &["a", "b"]);
        assert_eq!(summary(&out), [s(E, &["a", "b"], &[])]);
    }

    #[test]
    fn rule_11_cluster_change_resends_its_endpoints() {
        let mut h = synced();
        let out = h.publish(mesh("rev2", [1, 0], [0, 0], 0));
        assert_eq!(summary(&out), [s(C, &["a"], &[]), s(E, &["a"], &[])]);
        // A new cluster does not: Envoy subscribes to its endpoints.
        let out = h.publish(snapshot(
            "rev3",
            &[
                (C, "a", 1),
                (C, "b", 0),
                (C, "c", 0),
                (E, "a", 0),
                (E, "b", 0),
                (E, "c", 0),
                (L, "l", 0),
                (R, "r", 0),
            ],
        ));
        assert_eq!(summary(&out), [s(C, &["c"], &[])]);
    }

    #[test]
    fn rule_12_a_request_is_answered_from_the_current_snapshot() {
        let mut h = synced();
        h.snapshot = snapshot(
            "rev2",
            &[
                (C, "a", 0),
                (C, "b", 0),
                (C, "c", 0),
                (E, "a", 0),
                (E, "b", 0),
                (E, "c", 0),
                (L, "l", 0),
                (R, "r", 0),
            ],
        );
        let out = h.subscribe(E, &["c"]);
        assert_eq!(summary(&out), [s(C, &["c"], &[]), s(E, &["c"], &[])]);
        assert!(h
            .stream
            .handle_snapshot(&h.snapshot.clone())
            .responses
            .is_empty());
    }

    #[test]
    fn rule_13_first_responses_are_complete() {
        let mut h = Harness::new(base("rev1"));
        assert_eq!(summary(&h.subscribe(C, &[])), [s(C, &["a", "b"], &[])]);
        assert_eq!(summary(&h.subscribe(L, &[])), [s(L, &["l"], &[])]);
        // No clusters at all: the first request still gets its (empty) answer.
        let mut h = Harness::new(snapshot("rev1", &[(L, "l", 0)]));
        assert_eq!(summary(&h.subscribe(C, &[])), [s(C, &[], &[])]);
        assert!(h
            .publish(snapshot("rev2", &[(L, "l", 0)]))
            .responses
            .is_empty());
    }

    #[test]
    fn rule_20_a_subscribe_is_always_answered() {
        let mut h = synced();
        // Subscribing to a it already has: sent again.
        let again = h.subscribe(E, &["a"]);
        assert_eq!(summary(&again), [s(E, &["a"], &[])]);
        assert_eq!(summary(&h.subscribe(E, &["a"])), [s(E, &["a"], &[])]);
        let eds_nonce = again.responses[0].nonce.clone();
        // With a stale nonce, too.
        let out = h.request(request(E, &["b"], &[], &eds_nonce));
        assert_eq!(summary(&out), [s(E, &["b"], &[])]);
        // Subscribed before it exists: sent when it appears.
        assert!(h.subscribe(E, &["c"]).responses.is_empty());
        let out = h.publish(snapshot(
            "rev2",
            &[
                (C, "a", 0),
                (C, "b", 0),
                (E, "a", 0),
                (E, "b", 0),
                (E, "c", 0),
                (L, "l", 0),
                (R, "r", 0),
            ],
        ));
        assert_eq!(summary(&out), [s(E, &["c"], &[])]);
    }

    #[test]
    fn rule_21_unsubscribing_a_name_never_subscribed_is_a_no_op() {
        let mut h = synced();
        let out = h.unsubscribe(E, &["nope"]);
        assert!(out.responses.is_empty() && out.events.is_empty());
        assert!(h.stream.status(E).subscribed);
        assert_eq!(h.stream.status(E).state(), SyncState::Synced);
    }

    #[test]
    fn rule_22_removals_only_for_what_the_client_holds() {
        let mut h = synced();
        // Never existed: no removal.
        assert!(h.subscribe(E, &["ghost"]).responses.is_empty());
        // Unsubscribed, then deleted: the client dropped it itself; no removal.
        assert!(h.unsubscribe(E, &["b"]).responses.is_empty());
        let out = h.publish(snapshot(
            "rev2",
            &[(C, "a", 0), (E, "a", 0), (L, "l", 0), (R, "r", 0)],
        ));
        assert_eq!(summary(&out), [s(C, &[], &["b"])]);
        // Held and deleted: removed.
        let out = h.publish(snapshot("rev3", &[(C, "a", 0), (L, "l", 0), (R, "r", 0)]));
        assert_eq!(summary(&out), [s(E, &[], &["a"])]);
    }

    #[test]
    fn rule_23_reconnect_sends_only_what_changed() {
        let h = synced();
        let current = h
            .snapshot
            .get(C, "a")
            .map(|r| r.version.clone())
            .unwrap_or_default();
        let mut h = Harness::new(snapshot(
            "rev2",
            &[(C, "a", 0), (C, "b", 1), (E, "a", 0), (E, "b", 0)],
        ));
        let mut first = request(C, &[], &[], "");
        first.initial_resource_versions = HashMap::from([
            ("a".to_string(), current),
            ("b".to_string(), "stale".to_string()),
            ("c".to_string(), "deleted".to_string()),
        ]);
        assert_eq!(summary(&h.request(first)), [s(C, &["b"], &["c"])]);
        // EDS: names the client holds at their current version are not sent again.
        let a = h
            .snapshot
            .get(E, "a")
            .map(|r| r.version.clone())
            .unwrap_or_default();
        let mut first = request(E, &["a", "b"], &[], "");
        first.initial_resource_versions = HashMap::from([("a".to_string(), a)]);
        assert_eq!(summary(&h.request(first)), [s(E, &["b"], &[])]);
        // Nothing changed at all: CDS is still answered, EDS is not.
        let mut h2 = Harness::new(h.snapshot.clone());
        let held = |t| {
            h.snapshot
                .resources(t)
                .iter()
                .map(|(n, r)| (n.clone(), r.version.clone()))
                .collect::<HashMap<_, _>>()
        };
        let mut first = request(C, &[], &[], "");
        first.initial_resource_versions = held(C);
        assert_eq!(summary(&h2.request(first)), [s(C, &[], &[])]);
        let mut first = request(E, &["a", "b"], &[], "");
        first.initial_resource_versions = held(E);
        assert!(h2.request(first).responses.is_empty());
        // ...and the debug API shows that client as in sync, not as never sent.
        assert_eq!(h2.stream.status(E).state(), SyncState::Synced);
        // What it declared at the current version is the snapshot's own resource, shared;
        // only a version the snapshot does not have is kept as a copy.
        for t in [C, E] {
            let held = &h2.stream.types[t.index()].held;
            assert!(held.iter().all(|h| matches!(h, HeldRef::Sent(_))), "{t}");
            // Declared exactly: the stream holds the snapshot's map itself, found by the sum
            // of the declared pairs, with no entry of its own.
            assert!(
                matches!(held, HeldSet { map: Some(map), .. } if Arc::ptr_eq(map, h2.snapshot.shared_resources(t))),
                "{t}"
            );
        }
        // One version off (same count): entry by entry, and that one resource is sent.
        let mut h3 = Harness::new(h.snapshot.clone());
        let mut first = request(E, &["a", "b"], &[], "");
        first.initial_resource_versions = held(E);
        first
            .initial_resource_versions
            .insert("b".to_string(), "stale".to_string());
        assert_eq!(summary(&h3.request(first)), [s(E, &["b"], &[])]);
        let first_c = &h.stream.types[C.index()].held;
        assert!(first_c
            .iter()
            .any(|h| matches!(h, HeldRef::Sent(r) if r.name == "a")));
    }

    #[test]
    fn rule_24_types_have_separate_state() {
        let mut h = synced();
        let out = h.publish(mesh("rev2", [1, 0], [0, 0], 1));
        assert_eq!(out.responses.len(), 3);
        for response in &out.responses {
            if type_of(response) == R {
                h.nack(response);
            } else {
                h.ack(response);
            }
        }
        assert_eq!(h.stream.status(R).state(), SyncState::Nacked);
        for t in [C, E, L] {
            assert_eq!(h.stream.status(t).state(), SyncState::Synced, "{t}");
        }
    }

    #[test]
    fn rule_25_wildcard_follows_the_protocol_examples() {
        let all = snapshot("rev1", &[(C, "a", 0), (C, "b", 0), (C, "c", 0)]);
        let mut h = Harness::new(all.clone());
        // Subscribe unset: a subscription to `*`.
        assert_eq!(summary(&h.subscribe(C, &[])), [s(C, &["a", "b", "c"], &[])]);
        // Subscribe A: `*` continues, A added (and answered, rule 20).
        assert_eq!(summary(&h.subscribe(C, &["a"])), [s(C, &["a"], &[])]);
        // Unsubscribe `*`: A continues; the client drops the rest itself.
        assert!(h.unsubscribe(C, &["*"]).responses.is_empty());
        // Subscribe unset again: A continues, no wildcard.
        assert!(h.subscribe(C, &[]).responses.is_empty());
        let out = h.publish(snapshot("rev2", &[(C, "a", 1), (C, "b", 1), (C, "d", 0)]));
        assert_eq!(summary(&out), [s(C, &["a"], &[])]);

        // `*` explicitly, with a name, on the first request.
        let mut h = Harness::new(all.clone());
        assert_eq!(
            summary(&h.subscribe(C, &["*", "b"])),
            [s(C, &["a", "b", "c"], &[])]
        );
        // Explicit names alone are not wildcard; a later `*` is.
        let mut h = Harness::new(all);
        assert_eq!(summary(&h.subscribe(C, &["b"])), [s(C, &["b"], &[])]);
        assert_eq!(summary(&h.subscribe(C, &["*"])), [s(C, &["a", "c"], &[])]);
        // `*` is no wildcard for EDS.
        assert!(h.subscribe(E, &["*"]).responses.is_empty());
    }

    #[test]
    fn nack_of_an_older_response_restores_only_what_later_ones_did_not_touch() {
        let mut h = synced();
        let first = h.publish(mesh("rev2", [1, 1], [0, 0], 0));
        let second = h.publish(mesh("rev3", [2, 1], [0, 0], 0));
        assert_eq!(summary(&second)[0], s(C, &["a"], &[]));
        // The client rejected the first CDS (a and b) and will take the second (a): b is sent
        // again.
        let out = h.nack(&first.responses[0]);
        assert!(matches!(&out.events[0], Event::Nack { rejected, .. } if rejected.len() == 2));
        // b is a changed cluster for the client, so its endpoints follow (rule 11).
        assert_eq!(summary(&out), [s(C, &["b"], &[]), s(E, &["b"], &[])]);
        h.ack(&second.responses[0]);
    }

    #[test]
    fn an_ack_forgets_what_the_responses_it_settles_changed() {
        let mut h = synced();
        let kept = |h: &Harness| -> usize {
            h.stream.types[C.index()]
                .recent
                .iter()
                .map(|r| r.undo.changes().len())
                .sum()
        };
        let out = h.publish(mesh("rev2", [1, 1], [0, 0], 0));
        assert_eq!(
            kept(&h),
            2,
            "this response's two changes, until it is answered"
        );
        h.ack(&out.responses[0]);
        // A client answers in order: what it ACKed, and all before, can no longer be NACKed.
        assert_eq!(kept(&h), 0);
    }

    /// A sidecar connecting is sent every resource of a type: the reply carries the snapshot's
    /// map itself, not a list of its resources per stream (12,000 `Arc`s in a mesh of 1,000
    /// Services, held until the reply is written).
    #[test]
    fn an_answer_of_the_whole_map_carries_the_map_not_a_list() {
        let snapshot = base("rev1");
        let is_the_map = |reply: &DeltaReply, t: ResourceType| match &reply.resources {
            Resources::Map(map) => Arc::ptr_eq(map, snapshot.shared_resources(t)),
            Resources::List(_) => false,
        };
        let mut stream = DeltaStream::new();
        let first = stream.handle_request(&decoded(&request(C, &[], &[], "")), &snapshot);
        assert!(is_the_map(&first.responses[0], C));
        // EDS naming every cluster wants the whole map too.
        let first = stream.handle_request(&decoded(&request(E, &["a", "b"], &[], "")), &snapshot);
        assert!(is_the_map(&first.responses[0], E));
        // So does a reconnecting client that declared every name at a stale version.
        let mut stream = DeltaStream::new();
        let mut reconnect = request(C, &[], &[], "");
        reconnect.initial_resource_versions = HashMap::from([
            ("a".to_string(), "stale".to_string()),
            ("b".to_string(), "stale".to_string()),
        ]);
        let out = stream.handle_request(&decoded(&reconnect), &snapshot);
        assert!(is_the_map(&out.responses[0], C));
        // Part of a map is a list of that part.
        let out = stream.handle_request(&decoded(&request(E, &["a"], &[], "")), &snapshot);
        let Resources::List(list) = &out.responses[0].resources else {
            panic!("one of two endpoints sent as the map");
        };
        assert_eq!(
            list.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn a_stream_in_sync_keeps_no_record_of_what_it_sent() {
        let mut h = synced();
        let records = |h: &Harness, t: ResourceType| {
            let recent = &h.stream.types[t.index()].recent;
            (recent.len(), recent.capacity())
        };
        for t in [C, E, L, R] {
            assert_eq!(
                records(&h, t),
                (0, 0),
                "{t} after its first response is ACKed"
            );
        }
        let first = h.publish(mesh("rev2", [1, 0], [0, 0], 0));
        let second = h.publish(mesh("rev3", [2, 0], [0, 0], 0));
        assert_eq!(records(&h, C).0, 2);
        // An ACK of the older response settles it alone; the newer one can still be NACKed.
        h.ack(&first.responses[0]);
        assert_eq!(records(&h, C).0, 1);
        assert_ne!(
            h.stream.status(C).acked_version,
            h.stream.status(C).sent_version
        );
        h.ack(&second.responses[0]);
        assert_eq!(records(&h, C), (0, 0));
        assert_eq!(
            h.stream.status(C).acked_version,
            h.stream.status(C).sent_version
        );
    }

    #[test]
    fn a_whole_map_answer_is_remembered_by_the_two_maps_not_an_entry_per_resource() {
        let listed = |h: &Harness, t: ResourceType| -> usize {
            (h.stream.types[t.index()].recent.iter())
                .map(|r| match &r.undo {
                    Undo::Names(names) => names.len(),
                    Undo::Whole { .. } => 0,
                })
                .sum()
        };
        let mut h = Harness::new(base("rev1"));
        let first = h.subscribe(C, &[]);
        assert_eq!(summary(&first), [s(C, &["a", "b"], &[])]);
        assert_eq!(
            listed(&h, C),
            0,
            "a first answer lists nothing per resource"
        );
        // Rejected whole: the client holds nothing again, and both names are reported.
        let out = h.nack(&first.responses[0]);
        assert!(
            matches!(&out.events[0], Event::Nack { rejected, .. } if *rejected == ["a", "b"]),
            "{:?}",
            out.events
        );
        assert!(h.stream.types[C.index()].held.is_empty());

        let mut h = synced();
        let before = h.snapshot.get(C, "b").map(|r| r.version.clone());
        let out = h.publish(mesh("rev2", [1, 1], [0, 0], 0));
        assert_eq!(
            listed(&h, C),
            0,
            "a change that leaves the whole map lists nothing"
        );
        h.nack(&out.responses[0]);
        // What the client kept is back, entry by entry.
        let held = &h.stream.types[C.index()].held;
        assert_eq!(
            held.get("b").map(|h| h.version().to_string()),
            before,
            "the version held before the rejected change"
        );
    }
}

/// Property tests: a simulated client applies every response; after every step it holds exactly
/// what it subscribes to in the current snapshot, except while a NACKed config is still current.
#[cfg(test)]
mod proptests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;

    use super::tests::{check_responses, decoded, request, type_of};
    use super::*;
    use crate::xds::stream::testing::{nack_detail, resource, to_proto};

    const NAMES: [&str; 3] = ["a", "b", "c"];

    /// Per type, per name: absent or a content variant.
    type Spec = [[Option<u32>; 3]; ResourceType::COUNT];

    #[derive(Clone, Debug)]
    enum Step {
        /// Names are indices into [`NAMES`]; 3 is `*`.
        Subscribe {
            t: usize,
            names: Vec<usize>,
            stale: bool,
        },
        Unsubscribe {
            t: usize,
            names: Vec<usize>,
            stale: bool,
        },
        Ack {
            t: usize,
        },
        Nack {
            t: usize,
        },
        Publish(Spec),
        Reconnect,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        proptest::array::uniform5(proptest::array::uniform3(proptest::option::of(0u32..3)))
    }

    fn step() -> impl Strategy<Value = Step> {
        let names = || proptest::collection::vec(0usize..4, 0..3);
        prop_oneof![
            3 => (0usize..ResourceType::COUNT, names(), any::<bool>())
                .prop_map(|(t, names, stale)| Step::Subscribe { t, names, stale }),
            1 => (0usize..ResourceType::COUNT, names(), any::<bool>())
                .prop_map(|(t, names, stale)| Step::Unsubscribe { t, names, stale }),
            3 => (0usize..ResourceType::COUNT).prop_map(|t| Step::Ack { t }),
            1 => (0usize..ResourceType::COUNT).prop_map(|t| Step::Nack { t }),
            2 => spec().prop_map(Step::Publish),
            1 => Just(Step::Reconnect),
        ]
    }

    fn build(spec: &Spec, revision: u32) -> Snapshot {
        let mut items = Vec::new();
        for t in ResourceType::ALL {
            for (name, variant) in NAMES.iter().zip(spec[t.index()]) {
                if let Some(variant) = variant {
                    items.push((t, resource(t, name, variant)));
                }
            }
        }
        Snapshot::new(format!("rev{revision}"), items)
    }

    /// The simulated client's view of one type.
    #[derive(Clone, Debug, Default)]
    struct ClientType {
        requested: bool,
        wildcard: bool,
        names: BTreeSet<String>,
        /// What it holds: name → resource version.
        held: BTreeMap<String, String>,
        before_latest: BTreeMap<String, String>,
        latest_nonce: Option<String>,
        previous_nonce: String,
        pending: bool,
        /// What it should hold when it NACKed; no check while that is still the case.
        nack_hold: Option<BTreeMap<String, String>>,
    }

    impl ClientType {
        fn covers(&self, name: &str) -> bool {
            self.wildcard || self.names.contains(name)
        }

        /// Drops what it no longer subscribes to, as Envoy does.
        fn forget_unsubscribed(&mut self) {
            let (wildcard, names) = (self.wildcard, self.names.clone());
            let keep = move |n: &String, _: &mut String| wildcard || names.contains(n);
            self.held.retain(keep.clone());
            self.before_latest.retain(keep);
        }
    }

    struct Sim {
        stream: DeltaStream,
        snapshot: Snapshot,
        revision: u32,
        client: [ClientType; ResourceType::COUNT],
        nonces: HashSet<String>,
    }

    impl Sim {
        fn new() -> Self {
            Sim {
                stream: DeltaStream::new(),
                snapshot: Snapshot::new("rev0", Vec::new()),
                revision: 0,
                client: Default::default(),
                nonces: HashSet::new(),
            }
        }

        fn send(&mut self, request: DeltaDiscoveryRequest) {
            let out = to_proto(
                self.stream
                    .handle_request(&decoded(&request), &self.snapshot),
            );
            self.deliver(out);
        }

        fn deliver(&mut self, out: Output<DeltaDiscoveryResponse>) {
            check_responses(&self.stream, &out, &mut self.nonces);
            for response in &out.responses {
                let t = type_of(response);
                let c = &mut self.client[t.index()];
                c.before_latest = c.held.clone();
                for resource in &response.resources {
                    assert!(
                        c.covers(&resource.name),
                        "{t} {} not asked for",
                        resource.name
                    );
                    c.held
                        .insert(resource.name.clone(), resource.version.clone());
                }
                for name in &response.removed_resources {
                    // Rule 22: only what the client holds is removed.
                    assert!(
                        c.held.remove(name).is_some(),
                        "{t} {name} removed but not held"
                    );
                }
                if let Some(nonce) = c.latest_nonce.replace(response.nonce.clone()) {
                    c.previous_nonce = nonce;
                }
                c.pending = true;
            }
        }

        /// The nonce of a subscription change: an older one when `stale`, else the latest one,
        /// which ACKs a pending response as Envoy's requests do.
        fn nonce_for_change(&mut self, t: ResourceType, stale: bool) -> String {
            let c = &mut self.client[t.index()];
            if stale {
                return c.previous_nonce.clone();
            }
            c.pending = false;
            c.latest_nonce.clone().unwrap_or_default()
        }

        fn run(&mut self, step: &Step) {
            match step {
                Step::Subscribe { t, names, stale } => {
                    let t = ResourceType::ALL[*t];
                    let nonce = self.nonce_for_change(t, *stale);
                    let c = &mut self.client[t.index()];
                    let subscribe: Vec<&str> = names
                        .iter()
                        .filter_map(|&i| match NAMES.get(i) {
                            Some(name) => Some(*name),
                            None if t.is_wildcard_type() => Some("*"),
                            None => None,
                        })
                        .collect();
                    if !c.requested && t.is_wildcard_type() && subscribe.is_empty() {
                        c.wildcard = true;
                    }
                    for name in &subscribe {
                        if *name == "*" {
                            c.wildcard = true;
                        } else {
                            c.names.insert(name.to_string());
                        }
                    }
                    c.requested = true;
                    self.send(request(t, &subscribe, &[], &nonce));
                }
                Step::Unsubscribe { t, names, stale } => {
                    let t = ResourceType::ALL[*t];
                    if !self.client[t.index()].requested {
                        return;
                    }
                    let nonce = self.nonce_for_change(t, *stale);
                    let c = &mut self.client[t.index()];
                    let unsubscribe: Vec<&str> = names
                        .iter()
                        .filter_map(|&i| match NAMES.get(i) {
                            Some(name) => Some(*name),
                            None if t.is_wildcard_type() => Some("*"),
                            None => None,
                        })
                        .collect();
                    for name in &unsubscribe {
                        if *name == "*" {
                            c.wildcard = false;
                        } else {
                            c.names.remove(*name);
                        }
                    }
                    c.forget_unsubscribed();
                    self.send(request(t, &[], &unsubscribe, &nonce));
                }
                Step::Ack { t } => {
                    let t = ResourceType::ALL[*t];
                    let c = &mut self.client[t.index()];
                    if !c.pending {
                        return;
                    }
                    c.pending = false;
                    let nonce = c.latest_nonce.clone().unwrap_or_default();
                    self.send(request(t, &[], &[], &nonce));
                }
                Step::Nack { t } => {
                    let t = ResourceType::ALL[*t];
                    let expected = self.expected(t);
                    let c = &mut self.client[t.index()];
                    if !c.pending {
                        return;
                    }
                    c.pending = false;
                    c.held = c.before_latest.clone();
                    c.nack_hold = Some(expected);
                    let mut nack =
                        request(t, &[], &[], &c.latest_nonce.clone().unwrap_or_default());
                    nack.error_detail = nack_detail("rejected by the simulated client");
                    self.send(nack);
                }
                Step::Publish(spec) => {
                    self.revision += 1;
                    self.snapshot = build(spec, self.revision);
                    let out = to_proto(self.stream.handle_snapshot(&self.snapshot));
                    self.deliver(out);
                }
                Step::Reconnect => {
                    self.stream = DeltaStream::new();
                    self.nonces.clear();
                    for t in ResourceType::ALL {
                        let c = &mut self.client[t.index()];
                        c.latest_nonce = None;
                        c.previous_nonce.clear();
                        c.pending = false;
                        c.nack_hold = None;
                        c.requested &= c.wildcard || !c.names.is_empty();
                        if !c.requested {
                            continue;
                        }
                        // Envoy's first request on a new stream: its subscriptions (the legacy
                        // empty list for wildcard alone) and the versions it holds.
                        let mut subscribe: Vec<&str> = c.names.iter().map(String::as_str).collect();
                        if c.wildcard && !subscribe.is_empty() {
                            subscribe.push("*");
                        }
                        let mut first = request(t, &subscribe, &[], "");
                        first.initial_resource_versions = c
                            .held
                            .iter()
                            .map(|(n, v)| (n.clone(), v.clone()))
                            .collect::<HashMap<_, _>>();
                        self.send(first);
                    }
                }
            }
        }

        fn expected(&self, t: ResourceType) -> BTreeMap<String, String> {
            let c = &self.client[t.index()];
            self.snapshot
                .resources(t)
                .iter()
                .filter(|(name, _)| c.covers(name))
                .map(|(name, r)| (name.clone(), r.version.clone()))
                .collect()
        }

        fn check(&mut self) {
            for t in ResourceType::ALL {
                let expected = self.expected(t);
                let c = &mut self.client[t.index()];
                if let Some(hold) = &c.nack_hold {
                    if *hold == expected {
                        continue;
                    }
                    c.nack_hold = None;
                }
                if c.requested {
                    assert_eq!(c.held, expected, "{t}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn client_converges_to_its_subscriptions(
            first in spec(),
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            let mut sim = Sim::new();
            sim.run(&Step::Publish(first));
            for step in &steps {
                sim.run(step);
                sim.check();
            }
        }
    }
}
