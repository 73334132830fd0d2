//! State-of-the-world ADS: a pure state machine per stream (requests and snapshots in, responses
//! out, no I/O).
//!
//! For each type the machine keeps what the client subscribes to and what it holds as far as the
//! server knows. After every request and every new snapshot it computes, per type, what the
//! client should hold; a type is sent when, and only when, that differs in content from what it
//! holds (or the client is owed an answer). Responses go out in make-before-break order (CDS,
//! EDS, LDS, scoped RDS, RDS), with cluster removals in a final CDS response, so a route never
//! names a cluster the sidecar does not have yet and no cluster disappears while a route still
//! uses it.
//!
//! LDS, CDS and scoped RDS responses are the full set: a name missing from one is deleted. EDS
//! and RDS responses carry only what the client does not hold yet at its current version (and
//! the endpoints a changed cluster needs again, rule 11): Envoy applies an EDS/RDS response per
//! resource and deletes nothing by absence, so a change of one of 2,000 route configurations
//! sends that one.
//!
//! Rule numbers in comments refer to `XDS_CHECKLIST.md`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::names::NameSet;
use super::reply::{Reply, Resources, SotwReply};
use super::request::{NameList, Names, SotwRequest};
use super::resource::{Resource, ResourceMap, ResourceType, Snapshot};
use super::stream::{
    changed_between, content_hash, response_version, settle_acked, Event, NackRecord, NonceCounter,
    Output, Settled, TypeStatus,
};

/// How many responses per type are remembered, to name the version and resources of a NACK
/// that answers an older response (the CDS of a make-before-break pair, say).
const RECENT_RESPONSES: usize = 4;

/// Resources by name, as the client holds them or should.
/// Shared with the snapshot when it is all of a type (a wildcard subscription).
type Held = Arc<ResourceMap>;

/// One SotW ADS stream.
#[derive(Debug, Default)]
pub struct SotwStream {
    /// Source of a fresh nonce for every response (rule 1).
    nonces: NonceCounter,
    /// Per-type state, indexed by [`ResourceType::index`]; types never mix (rule 24 holds here
    /// too).
    types: [TypeState; ResourceType::COUNT],
}

/// The protocol state of one type on the stream.
#[derive(Debug, Default)]
struct TypeState {
    /// What `/debug/syncz` shows.
    status: TypeStatus,
    /// A request for this type arrived; nothing of a type nobody asked for is sent (rule 8).
    requested: bool,
    /// Some request for this type named resources. Until then an empty name list means
    /// wildcard for LDS/CDS (the protocol's legacy wildcard); after, it means "nothing".
    ever_named: bool,
    /// The client subscribes to every resource of the type (LDS/CDS only).
    wildcard: bool,
    /// Names the client asked for, without `*`: shared with every stream, and when they are
    /// every name of the type, the snapshot's map itself.
    names: NameSet,
    /// What the client holds as far as the server knows. For LDS/CDS/scoped RDS the last
    /// response it did not reject. For EDS/RDS every resource it got and did not reject (a
    /// response adds to what it holds; a resource deleted from the snapshot stays with the
    /// client), narrowed to what it still subscribes to (a client drops what it unsubscribes
    /// from, so a name requested again is sent again, rule 19). A name missing here is one the
    /// client may not hold at any version the server knows of: it is sent.
    held: Held,
    /// Whether `held` is known (LDS/CDS/scoped RDS; for EDS/RDS an unknown `held` is empty, so
    /// everything subscribed is sent). Before the first response of a stream the client may
    /// hold anything (from an earlier stream); when it rejects that response it keeps that
    /// unknown config, and the next change must be sent whatever it hashes to.
    held_known: bool,
    /// What the client held before the latest response (and whether that was known); restored
    /// when that response is NACKed, since a client keeps its previous config.
    held_before_latest: Option<(bool, Before)>,
    /// The first request of a type on a stream is answered even when its version says the
    /// client is current: Envoy waits for that answer before it finishes initialising.
    must_answer: bool,
    /// EDS names to send although the client holds them at their current version: their
    /// cluster changed, and Envoy drops a cluster's endpoints when it updates the cluster
    /// (rule 11, envoy issue 13009). Consumed by the next plan.
    forced: BTreeSet<String>,
    /// LDS/CDS/scoped RDS: content hash of the latest rejected response. While what the client
    /// should hold still hashes to it, nothing is sent: the rejected config is not resent in a
    /// loop (rule 4).
    rejected_hash: Option<String>,
    /// EDS/RDS: name → version of resources the client rejected and does not hold. While
    /// everything the client lacks is among them, nothing is sent (rule 4); the next real change
    /// (or a forced resend) sends them again with it. Pruned to what is still lacking at each
    /// plan, and emptied by every response (which carries all that is lacking).
    rejected: BTreeMap<String, String>,
    /// The responses of this type the client has not answered yet, newest last (at most
    /// [`RECENT_RESPONSES`]): a NACK names one of them. An ACK settles it and every earlier one.
    recent: VecDeque<SentRecord>,
    /// Nonce of the latest response already ACKed or NACKed, so a repeated request with that
    /// nonce is not counted twice.
    answered_nonce: Option<String>,
    /// Skips planning while the snapshot content and the plan's inputs are unchanged.
    settled: Settled,
    /// How often an EDS/RDS plan walked every name (not settled, not sent from a shared diff).
    #[cfg(test)]
    full_walks: usize,
}

/// How to return `held` to what it was before the latest response.
#[derive(Debug)]
enum Before {
    /// LDS/CDS/scoped RDS: the whole previous set, which the response replaced.
    Set(Held),
    /// EDS/RDS: for each name the response carried, the entry it replaced (none: the client did
    /// not hold the name, or holds it at a version the server does not know).
    /// Keyed by the resource the response carried (its name), so no name is copied.
    Entries(Vec<(Arc<Resource>, Option<Arc<Resource>>)>),
}

/// A response as remembered for ACK and NACK handling.
#[derive(Debug)]
struct SentRecord {
    /// The response's nonce, which the client's ACK or NACK names.
    nonce: String,
    /// The response's version, reported as sent, ACKed or NACKed.
    version: String,
    /// Content hash of the response (for EDS/RDS, of the full set the client holds after it).
    hash: String,
    /// The resources in it, by name: names for NACK reports, and for EDS/RDS what to forget
    /// when a response older than the latest is NACKed. The response's own map: for a full
    /// answer the snapshot's, shared, not a list of every resource per stream.
    resources: Held,
}

impl SotwStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// One request from the client, as a generated message (tests and tools; the stream's
    /// decoder gives [`Self::handle_decoded`] its requests). `snapshot` is this node's current
    /// snapshot.
    pub fn handle_request(
        &mut self,
        request: &DiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Output<SotwReply> {
        self.handle_decoded(&SotwRequest::from(request.clone()), snapshot)
    }

    /// [`Self::handle_request`] for a request as the stream's decoder gives it: its names read
    /// where they lie in the message, or left out because they repeat the previous request's
    /// of the type.
    pub fn handle_decoded(
        &mut self,
        decoded: &SotwRequest,
        snapshot: &Snapshot,
    ) -> Output<SotwReply> {
        let names = match &decoded.names {
            Names::Listed(names) => Some(names),
            Names::AsBefore => None,
        };
        self.handle(&decoded.request, names, snapshot)
    }

    /// `names`: `None` when they are those of the previous request of the type.
    fn handle(
        &mut self,
        request: &DiscoveryRequest,
        names: Option<&NameList>,
        snapshot: &Snapshot,
    ) -> Output<SotwReply> {
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
        state.update_subscription(t, names, snapshot);
        // A request may arrive with a snapshot newer than the last one handed to
        // `handle_snapshot` (rule 12): syncing every type here keeps make-before-break order.
        let mut out = self.sync(snapshot);
        events.append(&mut out.events);
        out.events = events;
        out
    }

    /// A new snapshot was published for this node.
    pub fn handle_snapshot(&mut self, snapshot: &Snapshot) -> Output<SotwReply> {
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
    fn sync(&mut self, snapshot: &Snapshot) -> Output<SotwReply> {
        let mut plans: [Option<Plan>; ResourceType::COUNT] = Default::default();
        for t in ResourceType::ALL {
            plans[t.index()] = self.plan(t, snapshot);
            if t == ResourceType::Cluster {
                if let Some(clusters) = &plans[t.index()] {
                    self.force_endpoints_of_changed_clusters(&clusters.content, snapshot);
                }
            }
        }

        let cluster = ResourceType::Cluster.index();
        let others_sent = plans.iter().skip(1).any(Option::is_some);
        let mut out = Output::default();
        let mut final_clusters = None;
        if let Some(clusters) = plans[cluster].take() {
            let state = &self.types[cluster];
            let held = &state.held;
            // Clusters being removed that the client still asks for (those it stopped asking
            // for it wants gone at once).
            let removed: Vec<(&String, &Arc<Resource>)> = held
                .iter()
                .filter(|(name, _)| !clusters.content.contains_key(*name) && state.covers(name))
                .collect();
            if !removed.is_empty() && others_sent {
                // Keep them, at the content the client has, until the other types have moved
                // off them; the final CDS then drops them.
                let mut union = BTreeMap::clone(&clusters.content);
                for (name, resource) in removed {
                    union.insert(name.clone(), resource.clone());
                }
                let union = Arc::new(ResourceMap::from(union));
                let hash = hash_of(&union);
                if hash != hash_of(held) {
                    let plan = Plan {
                        content: union,
                        hash,
                        whole: None,
                    };
                    self.emit(ResourceType::Cluster, plan, snapshot, &mut out);
                }
                final_clusters = Some(clusters);
            } else {
                self.emit(ResourceType::Cluster, clusters, snapshot, &mut out);
            }
        }
        for t in &ResourceType::ALL[1..] {
            if let Some(plan) = plans[t.index()].take() {
                self.emit(*t, plan, snapshot, &mut out);
            }
        }
        if let Some(clusters) = final_clusters {
            self.emit(ResourceType::Cluster, clusters, snapshot, &mut out);
        }
        out
    }

    /// What to send for `t` now, if anything.
    fn plan(&mut self, t: ResourceType, snapshot: &Snapshot) -> Option<Plan> {
        let state = &mut self.types[t.index()];
        let forced = std::mem::take(&mut state.forced);
        if !state.requested || !state.subscribed() {
            // Rule 18: EDS/RDS with no names is an unsubscription; nothing is sent.
            return None;
        }
        if state.settled.skip(snapshot.type_version(t)) {
            return None;
        }
        if !t.is_wildcard_type() {
            return state.plan_partial(t, snapshot, &forced);
        }
        let desired = state.desired(t, snapshot);
        let hash = if state.wildcard {
            // The whole map's hash, already computed once for the snapshot.
            snapshot.type_version(t).to_string()
        } else {
            hash_of(&desired)
        };
        if state.rejected_hash.as_ref().is_some_and(|h| *h != hash) {
            // The config moved on from what was rejected: the next change is sent (rule 4).
            state.rejected_hash = None;
        }
        let changed = !state.held_known
            || !(Arc::ptr_eq(&desired, &state.held) || hash == hash_of(&state.held));
        // An empty LDS or CDS is a real answer: it deletes everything, and the snapshot truly
        // has none.
        let wanted = state.must_answer || (changed && state.rejected_hash.is_none());
        wanted.then_some(Plan {
            content: desired,
            hash,
            whole: None,
        })
    }

    /// Rule 11: a cluster whose content changes gets its endpoints again in the EDS response
    /// that follows the CDS, even when they did not change. Only those endpoints: an EDS
    /// response need not carry the others.
    fn force_endpoints_of_changed_clusters(&mut self, clusters: &Held, snapshot: &Snapshot) {
        let held = &self.types[ResourceType::Cluster.index()].held;
        let endpoints = &self.types[ResourceType::Endpoint.index()];
        if !endpoints.requested {
            return;
        }
        let forced: BTreeSet<String> = clusters
            .iter()
            .filter(|(name, resource)| {
                held.get(*name)
                    .is_some_and(|old| old.version != resource.version)
                    && endpoints.covers(name)
                    && snapshot.get(ResourceType::Endpoint, name).is_some()
            })
            .map(|(name, _)| name.clone())
            .collect();
        if !forced.is_empty() {
            let endpoints = &mut self.types[ResourceType::Endpoint.index()];
            endpoints.forced = forced;
            endpoints.settled.clear();
        }
    }

    /// Builds, records and queues one response holding exactly `plan.content`.
    fn emit(
        &mut self,
        t: ResourceType,
        plan: Plan,
        snapshot: &Snapshot,
        out: &mut Output<SotwReply>,
    ) {
        let Plan {
            content,
            hash,
            whole,
        } = plan;
        let nonce = self.nonces.next();
        let state = &mut self.types[t.index()];
        let version = response_version(&snapshot.revision, &hash);
        // Only LDS/CDS/scoped RDS delete by absence; for EDS/RDS a missing name deletes nothing.
        let removed = if t.is_wildcard_type() {
            state
                .held
                .keys()
                .filter(|name| !content.contains_key(*name))
                .count()
        } else {
            0
        };
        let sent = Arc::clone(&content);
        let response = SotwReply {
            version_info: version.clone(),
            resource_type: t,
            resources: Resources::Map(Arc::clone(&content)),
            nonce: nonce.clone(),
        };
        out.events.push(Event::Sent {
            resource_type: t,
            version: version.clone(),
            resources: content.len(),
            removed,
            bytes: response.encoded_len(),
        });
        out.responses.push(response);

        let before = if t.is_wildcard_type() {
            // The response is the client's new set.
            Before::Set(std::mem::replace(&mut state.held, content))
        } else {
            // The client adds the response to what it holds. It carries everything the client
            // lacked, rejected resources included: none stays rejected.
            state.rejected.clear();
            if let Some(whole) = whole {
                let entries = content
                    .values()
                    .map(|resource| (resource.clone(), state.held.get(&resource.name).cloned()))
                    .collect();
                // What it held is among the names it subscribes to, all of which the map has.
                state.held = whole;
                Before::Entries(entries)
            } else {
                let held = Arc::make_mut(&mut state.held).edit();
                Before::Entries(
                    content
                        .values()
                        .map(|resource| {
                            let old = held.insert(resource.name.clone(), resource.clone());
                            (resource.clone(), old)
                        })
                        .collect(),
                )
            }
        };
        state.held_before_latest = Some((state.held_known, before));
        state.held_known = true;
        state.must_answer = false;
        state.status.sent_version = Some(version.clone());
        if state.recent.len() == RECENT_RESPONSES {
            state.recent.pop_front();
        }
        state.recent.push_back(SentRecord {
            nonce,
            version,
            hash,
            resources: sent,
        });
    }
}

/// A response to send: its resources, and the content hash its version carries (for EDS/RDS
/// that of everything the client holds once it applies the response, so a partial response
/// has the version a full one would have).
#[derive(Debug)]
struct Plan {
    content: Held,
    hash: String,
    /// EDS/RDS: the snapshot map the client holds exactly once it applies the response (it
    /// subscribes to every name of the map); kept as `held`, shared, instead of a copy.
    whole: Option<Held>,
}

impl TypeState {
    /// Whether `resource_names` is the subscription already in force (as
    /// [`Self::update_subscription`] would read it), without copying a name: a SotW ACK
    /// repeats every name it subscribes to.
    fn asks_for_the_same(&self, t: ResourceType, resource_names: &NameList) -> bool {
        let wildcard = t.is_wildcard_type() && resource_names.iter().any(|name| name == "*");
        if t.is_wildcard_type() {
            let ever_named = self.ever_named || !resource_names.is_empty();
            if ever_named != self.ever_named || (wildcard || !ever_named) != self.wildcard {
                return false;
            }
        }
        // Names in ascending order without `*` (as clients mostly send them) compare in one
        // walk; anything else is sorted first.
        let mut previous: Option<&str> = None;
        let ascending = resource_names.iter().all(|name| {
            let after = previous.is_none_or(|previous| previous < name);
            previous = Some(name);
            after
        });
        if !wildcard && ascending {
            return resource_names.len() == self.names.len()
                && resource_names.iter().eq(self.names.iter());
        }
        let names: BTreeSet<&str> = resource_names
            .iter()
            .filter(|name| !(wildcard && *name == "*"))
            .collect();
        names.len() == self.names.len() && names.into_iter().eq(self.names.iter())
    }

    fn subscribed(&self) -> bool {
        self.wildcard || !self.names.is_empty()
    }

    fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// EDS/RDS: the subscribed resources the client does not hold at their current version, and
    /// the `forced` ones (rule 11), when they are to be sent. Always from the current snapshot,
    /// even for names requested against an older one (rule 12). One ordered walk over the
    /// subscribed and held names; nothing is copied unless it is sent.
    fn plan_partial(
        &mut self,
        t: ResourceType,
        snapshot: &Snapshot,
        forced: &BTreeSet<String>,
    ) -> Option<Plan> {
        let map = snapshot.shared_resources(t);
        if let Some(base) = self.settled.holds_all_of.take() {
            // The client holds every resource of `base` at its version and subscribes to
            // exactly its names; with the same names now, only what changed between the two
            // maps (computed once for every stream) is sent.
            if forced.is_empty() && self.rejected.is_empty() && !self.must_answer {
                if let Some(changed) = changed_between(&base, map) {
                    self.settled.holds_all_of = Some(map.clone());
                    if changed.is_empty() {
                        return None;
                    }
                    let pending = changed.iter().map(|r| (r.name.clone(), r.clone()));
                    return Some(Plan {
                        content: Arc::new(pending.collect()),
                        hash: snapshot.type_version(t).to_string(),
                        whole: Some(map.clone()),
                    });
                }
            }
        }
        #[cfg(test)]
        {
            self.full_walks += 1;
        }
        // Envoy names every resource of the type (all EDS clusters, every scope's routes).
        let names_all = self.names.are_keys_of(map);
        let pending = if names_all && self.held.is_empty() {
            // Every name, none held (a first request): every resource of the map is lacking,
            // so the map itself is sent, shared, not a copy built entry by entry.
            Arc::clone(map)
        } else {
            let mut pending = BTreeMap::new();
            let mut held = self.held.iter().peekable();
            for name in self.names.iter() {
                while held.next_if(|(h, _)| h.as_str() < name).is_some() {}
                let had = held.next_if(|(h, _)| h.as_str() == name).map(|(_, r)| r);
                let Some(resource) = snapshot.get(t, name) else {
                    continue;
                };
                if forced.contains(name) || had.is_none_or(|h| h.version != resource.version) {
                    pending.insert(name.to_string(), resource.clone());
                }
            }
            Arc::new(ResourceMap::from(pending))
        };
        // A rejected resource stays rejected while the client still lacks it at that version.
        self.rejected
            .retain(|name, version| pending.get(name).is_some_and(|r| r.version == *version));
        // Rule 4: nothing is sent while all that is lacking was rejected. SotW cannot delete
        // EDS/RDS resources, so an empty response tells the client nothing; names requested
        // before they exist are sent once they appear (rule 19).
        let wanted = self.must_answer || !forced.is_empty() || pending.len() > self.rejected.len();
        if names_all && (pending.is_empty() || wanted) {
            // Once this is sent (or with nothing lacking), the client holds the whole map.
            self.settled.holds_all_of = Some(map.clone());
        }
        if pending.is_empty() || !wanted {
            return None;
        }
        // The version of the full set the client holds once it applies the response.
        let hash = if names_all {
            snapshot.type_version(t).to_string()
        } else {
            content_hash(self.names.iter().filter_map(|name| {
                snapshot
                    .get(t, name)
                    .map(|resource| (name, resource.version.as_str()))
            }))
        };
        Some(Plan {
            content: pending,
            hash,
            whole: names_all.then(|| map.clone()),
        })
    }

    /// LDS/CDS/scoped RDS: what the client should hold: every resource in wildcard mode, else
    /// the requested names that exist. Always from the current snapshot, even for names
    /// requested against an older one (rule 12).
    fn desired(&self, t: ResourceType, snapshot: &Snapshot) -> Held {
        if self.wildcard {
            return Arc::clone(snapshot.shared_resources(t));
        }
        Arc::new(
            self.names
                .iter()
                .filter_map(|name| {
                    snapshot
                        .get(t, name)
                        .map(|resource| (name.to_string(), resource.clone()))
                })
                .collect(),
        )
    }

    /// ACK and NACK are told apart by `error_detail` alone (rule 3). An ACK moves the state
    /// only when it answers the latest response: an older one was superseded by what was sent
    /// since. So, mostly, is a NACK of an older LDS/CDS/scoped RDS response (a full set came
    /// after it). An EDS/RDS response is not: a NACK of an older one makes the server forget
    /// what only that response carried.
    fn handle_ack_or_nack(
        &mut self,
        t: ResourceType,
        request: &DiscoveryRequest,
        events: &mut Vec<Event>,
    ) {
        let nonce = request.response_nonce.as_str();
        if nonce.is_empty() || self.answered_nonce.as_deref() == Some(nonce) {
            return;
        }
        let is_latest = self.recent.back().is_some_and(|r| r.nonce == nonce);
        if let Some(detail) = &request.error_detail {
            let position = self.recent.iter().position(|r| r.nonce == nonce);
            let record = position.map(|i| &self.recent[i]);
            let version = record.map(|r| r.version.clone()).unwrap_or_default();
            let rejected = record
                .map(|r| r.resources.keys().cloned().collect())
                .unwrap_or_default();
            match position {
                Some(i) if is_latest => {
                    let record = &self.recent[i];
                    if t.is_wildcard_type() {
                        self.rejected_hash = Some(record.hash.clone());
                    } else {
                        for resource in record.resources.values() {
                            if self.names.contains(resource.name.as_str()) {
                                self.rejected
                                    .insert(resource.name.clone(), resource.version.clone());
                            }
                        }
                    }
                    self.settled.clear();
                    if let Some((known, before)) = self.held_before_latest.take() {
                        self.held_known = known;
                        self.restore(before);
                    }
                    self.answered_nonce = Some(nonce.to_string());
                }
                Some(i) if !t.is_wildcard_type() => {
                    self.forget_rejected(i);
                    self.settled.clear();
                }
                Some(_) => {
                    // The latest response, a full set, supersedes it; but should the client
                    // reject that one too, it keeps neither, and what it held before the latest
                    // is not known.
                    if let Some((known, _)) = &mut self.held_before_latest {
                        *known = false;
                    }
                }
                None => {}
            }
            self.status.last_nack = Some(NackRecord::now(version.clone(), detail.message.clone()));
            events.push(Event::Nack {
                resource_type: t,
                version,
                message: detail.message.clone(),
                rejected,
            });
        } else if let Some(p) = self.recent.iter().position(|r| r.nonce == nonce) {
            let acked = settle_acked(&mut self.recent, p);
            // Rule 17: an ACK of an older nonce says nothing of the newer response on its way.
            if let (true, Some(latest)) = (is_latest, acked) {
                self.status.acked_version = Some(latest.version.clone());
                self.held_before_latest = None;
                self.answered_nonce = Some(nonce.to_string());
                events.push(Event::Ack {
                    resource_type: t,
                    version: latest.version,
                });
            }
        }
    }

    /// Returns `held` to what it was before the latest response.
    fn restore(&mut self, before: Before) {
        match before {
            Before::Set(held) => self.held = held,
            Before::Entries(entries) => {
                let held = Arc::make_mut(&mut self.held).edit();
                for (sent, old) in entries {
                    match old {
                        Some(resource) => held.insert(sent.name.clone(), resource),
                        None => held.remove(&sent.name),
                    };
                }
            }
        }
    }

    /// EDS/RDS: the client rejected `recent[index]`, older than the latest response, and kept
    /// what it had before. Responses since carried only what changed, so for each resource that
    /// no later response carried the client holds a version the server no longer knows: it is
    /// forgotten, and counted as rejected (sent again with the next real change, rule 4). One
    /// the latest response carried again is held at that version, unless the latest is
    /// rejected too.
    fn forget_rejected(&mut self, index: usize) {
        let TypeState {
            recent,
            held,
            held_before_latest,
            rejected,
            ..
        } = self;
        let latest = recent.len() - 1;
        let carried = |record: &SentRecord, name: &str| record.resources.contains_key(name);
        for resource in recent[index].resources.values() {
            let name = resource.name.as_str();
            if recent
                .range(index + 1..latest)
                .any(|record| carried(record, name))
            {
                continue;
            }
            if carried(&recent[latest], name) {
                if let Some((_, Before::Entries(entries))) = held_before_latest {
                    if let Ok(i) =
                        entries.binary_search_by(|(sent, _)| sent.name.as_str().cmp(name))
                    {
                        entries[i].1 = None;
                    }
                }
            } else if held.contains_key(name) {
                Arc::make_mut(held).edit().remove(name);
                rejected.insert(name.to_string(), resource.version.clone());
            }
        }
    }

    /// Takes the request's names as the new subscription, whatever its nonce (rule 17);
    /// `None`: the names of the previous request of the type, already in force.
    fn update_subscription(
        &mut self,
        t: ResourceType,
        resource_names: Option<&NameList>,
        snapshot: &Snapshot,
    ) {
        if !self.requested {
            self.requested = true;
            self.must_answer = true;
            self.settled.clear();
        }
        // An ACK repeats the subscription: then nothing the plan depends on moves here.
        if let Some(names) = resource_names {
            if !self.asks_for_the_same(t, names) {
                self.settled.clear();
                self.replace_names(t, names, snapshot);
            }
        }
        if !self.subscribed() {
            // Nothing asked for: the client holds nothing of the type any more, and a later
            // subscription starts afresh, even for content it once rejected.
            self.held = Held::default();
            self.held_known = true;
            self.held_before_latest = None;
            self.rejected_hash = None;
            self.rejected.clear();
            self.settled.clear();
        }
        self.status.subscribed = self.subscribed();
    }

    fn replace_names(&mut self, t: ResourceType, resource_names: &NameList, snapshot: &Snapshot) {
        // Every name of the type: kept as the snapshot's map.
        let sum = || resource_names.sum();
        let mut names = NameSet::keys_if_exactly(t, snapshot, resource_names.len(), sum)
            .unwrap_or_else(|| NameSet::from_names(resource_names.iter()));
        if t.is_wildcard_type() {
            // Rule 25, the protocol's wildcard rules: `*` subscribes to everything; an empty
            // list does too, until some request of the stream named a resource.
            if !names.is_empty() {
                self.ever_named = true;
            }
            self.wildcard = names.remove("*") || !self.ever_named;
        }
        self.names = names;
        if !t.is_wildcard_type() {
            // An EDS/RDS client forgets what it no longer asks for, so a name asked for again
            // must be sent again (rule 19). LDS/CDS need no such care: they are full sets, the
            // client deletes what a response lacks, so a changed subscription changes what it
            // should hold and the next response is sent.
            let names = &self.names;
            if self.held.keys().any(|name| !names.contains(name.as_str())) {
                Arc::make_mut(&mut self.held)
                    .edit()
                    .retain(|name, _| names.contains(name.as_str()));
            }
            if let Some((_, Before::Entries(entries))) = &mut self.held_before_latest {
                entries.retain(|(sent, _)| names.contains(sent.name.as_str()));
            }
            self.rejected
                .retain(|name, _| names.contains(name.as_str()));
        }
    }
}

fn hash_of(resources: &Held) -> String {
    content_hash(
        resources
            .iter()
            .map(|(name, resource)| (name.as_str(), resource.version.as_str())),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use prost::Message;

    use super::*;
    use crate::xds::stream::testing::{
        any_name, base_with_route, mesh, nack_detail, snapshot, to_proto,
    };
    use crate::xds::stream::SyncState;
    use ResourceType::{Cluster as C, Endpoint as E, Listener as L, Route as R};

    /// A stream with the checks every response of every test must pass: a fresh nonce (rule 1),
    /// only subscribed types, no name twice, every `Any` of the response's type (rule 8), and
    /// one `Sent` event per response.
    struct Harness {
        stream: SotwStream,
        snapshot: Snapshot,
        nonces: HashSet<String>,
    }

    impl Harness {
        fn new(snapshot: Snapshot) -> Self {
            Harness {
                stream: SotwStream::new(),
                snapshot,
                nonces: HashSet::new(),
            }
        }

        fn request(&mut self, request: DiscoveryRequest) -> Output<DiscoveryResponse> {
            let out = to_proto(self.stream.handle_request(&request, &self.snapshot));
            self.check(out)
        }

        fn publish(&mut self, snapshot: Snapshot) -> Output<DiscoveryResponse> {
            self.snapshot = snapshot;
            let out = to_proto(self.stream.handle_snapshot(&self.snapshot));
            self.check(out)
        }

        fn subscribe(&mut self, t: ResourceType, names: &[&str]) -> Output<DiscoveryResponse> {
            self.request(request(t, names, "", ""))
        }

        fn ack(
            &mut self,
            response: &DiscoveryResponse,
            names: &[&str],
        ) -> Output<DiscoveryResponse> {
            let t = type_of(response);
            self.request(request(t, names, &response.version_info, &response.nonce))
        }

        fn nack(
            &mut self,
            response: &DiscoveryResponse,
            names: &[&str],
        ) -> Output<DiscoveryResponse> {
            let t = type_of(response);
            let mut nack = request(t, names, "", &response.nonce);
            nack.error_detail = nack_detail("rejected by test");
            self.request(nack)
        }

        fn check(&mut self, out: Output<DiscoveryResponse>) -> Output<DiscoveryResponse> {
            check_responses(&self.stream, &out, &mut self.nonces);
            out
        }
    }

    pub(super) fn check_responses(
        stream: &SotwStream,
        out: &Output<DiscoveryResponse>,
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
            let names = names_of(response);
            let unique: BTreeSet<&String> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "a name twice in {t}: {names:?}");
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
            if !t.is_wildcard_type() {
                assert_eq!(*removed, 0, "{t} deletes nothing by absence");
            }
            assert_eq!(*version, response.version_info);
            assert_eq!(*resources, response.resources.len());
            assert_eq!(*bytes, response.encoded_len());
        }
    }

    pub(super) fn request(
        t: ResourceType,
        names: &[&str],
        version: &str,
        nonce: &str,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: t.type_url().into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    pub(super) fn type_of(response: &DiscoveryResponse) -> ResourceType {
        ResourceType::from_type_url(&response.type_url).expect("response of a known type")
    }

    pub(super) fn names_of(response: &DiscoveryResponse) -> Vec<String> {
        let t = type_of(response);
        response.resources.iter().map(|a| any_name(t, a)).collect()
    }

    /// `(type, names)` of each response, for order assertions.
    fn summary(out: &Output<DiscoveryResponse>) -> Vec<(ResourceType, Vec<String>)> {
        out.responses
            .iter()
            .map(|r| (type_of(r), names_of(r)))
            .collect()
    }

    fn s(t: ResourceType, names: &[&str]) -> (ResourceType, Vec<String>) {
        (t, names.iter().map(|n| n.to_string()).collect())
    }

    /// Clusters a and b with their endpoints, listener l and route r.
    fn base(revision: &str) -> Snapshot {
        base_with_route(revision, 0)
    }

    /// What a client of [`base`] subscribes to: everything, EDS and RDS by name.
    const BASE_SUBSCRIPTIONS: [(ResourceType, &[&str]); 4] =
        [(C, &[]), (E, &["a", "b"]), (L, &[]), (R, &["r"])];

    /// A harness subscribed to every type of [`base`], every response ACKed.
    fn synced() -> Harness {
        let mut h = Harness::new(base("rev1"));
        for (t, names) in BASE_SUBSCRIPTIONS {
            let out = h.subscribe(t, names);
            assert_eq!(out.responses.len(), 1, "first {t} request answered");
            assert!(h.ack(&out.responses[0], names).responses.is_empty());
        }
        h
    }

    #[test]
    fn a_client_naming_every_resource_holds_the_snapshots_map_not_a_copy() {
        let shares = |h: &Harness, t: ResourceType| {
            Arc::ptr_eq(
                &h.stream.types[t.index()].held,
                h.snapshot.shared_resources(t),
            )
        };
        let remembered = |h: &Harness, t: ResourceType| {
            let state = &h.stream.types[t.index()];
            Arc::clone(
                &state
                    .recent
                    .back()
                    .expect("a response is unanswered")
                    .resources,
            )
        };
        // EDS and RDS name every resource of the type; CDS and LDS are wildcard.
        let mut h = Harness::new(base("rev1"));
        let mut first = Vec::new();
        for (t, names) in BASE_SUBSCRIPTIONS {
            let out = h.subscribe(t, names);
            first.push((out.responses[0].clone(), names));
        }
        // Until the client answers, the full answer is remembered as the snapshot's map, not a
        // list of every resource per stream.
        for t in [C, E, L, R] {
            assert!(
                Arc::ptr_eq(&remembered(&h, t), h.snapshot.shared_resources(t)),
                "{t}"
            );
        }
        for (response, names) in first {
            assert!(h.ack(&response, names).responses.is_empty());
        }
        for t in [C, E, L, R] {
            assert!(shares(&h, t), "{t}");
        }
        // Their names are the snapshot's maps too, not sets of their own.
        for t in [E, R] {
            let names = &h.stream.types[t.index()].names;
            assert!(names.is_kept_as(h.snapshot.shared_resources(t)), "{t}");
        }
        let out = h.publish(mesh("rev2", [0, 0], [0, 1], 1));
        // The change's answer is remembered as what it carried.
        assert_eq!(remembered(&h, E).keys().collect::<Vec<_>>(), ["b"]);
        for (response, names) in out.responses.iter().zip([&["a", "b"][..], &["r"][..]]) {
            h.ack(response, names);
        }
        for t in [E, R] {
            assert!(shares(&h, t), "{t} after a change");
        }
        // Naming fewer than all: the stream keeps its own map of what it got.
        let mut h = Harness::new(base("rev1"));
        let out = h.subscribe(E, &["a"]);
        h.ack(&out.responses[0], &["a"]);
        assert!(!shares(&h, E));
        assert_eq!(h.stream.types[E.index()].held.len(), 1);
        let names = &h.stream.types[E.index()].names;
        assert!(!names.is_kept_as(h.snapshot.shared_resources(E)));
        assert_eq!(names.iter().collect::<Vec<_>>(), ["a"]);
        // Every name, one of them twice: a set of its own, the same subscription.
        let out = h.subscribe(E, &["b", "a", "b"]);
        assert_eq!(summary(&out), [s(E, &["b"])]);
        let names = &h.stream.types[E.index()].names;
        assert!(!names.is_kept_as(h.snapshot.shared_resources(E)));
        assert!(names.are_keys_of(h.snapshot.shared_resources(E)));
    }

    #[test]
    fn a_first_request_naming_every_resource_is_answered_with_the_snapshots_map() {
        let snapshot = base("rev1");
        let plan = |names: &[&str]| {
            let mut state = TypeState::default();
            let Names::Listed(names) = SotwRequest::from(request(E, names, "", "")).names else {
                unreachable!("a request of its own lists its names");
            };
            state.update_subscription(E, Some(&names), &snapshot);
            state.plan_partial(E, &snapshot, &BTreeSet::new())
        };
        let all = plan(&["b", "a"]).expect("a plan");
        assert!(Arc::ptr_eq(&all.content, snapshot.shared_resources(E)));
        // Naming fewer: a map of its own, of just those.
        let some = plan(&["a"]).expect("a plan");
        assert_eq!(some.content.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn a_client_holding_every_named_resource_is_sent_the_shared_diff_without_walking_every_name() {
        let mut h = synced();
        let walks = |h: &Harness| [E, R].map(|t| h.stream.types[t.index()].full_walks);
        let before = walks(&h);
        let out = h.publish(mesh("rev2", [0, 0], [0, 1], 1));
        assert_eq!(summary(&out), [s(E, &["b"]), s(R, &["r"])]);
        let full = h.publish(mesh("rev2-same", [0, 0], [0, 1], 1));
        assert!(full.responses.is_empty());
        for (response, names) in out.responses.iter().zip([&["a", "b"][..], &["r"][..]]) {
            h.ack(response, names);
        }
        let out = h.publish(mesh("rev3", [0, 0], [1, 1], 2));
        assert_eq!(summary(&out), [s(E, &["a"]), s(R, &["r"])]);
        // The version is the full set's, as a walk would have computed it.
        let all_names = ["a", "b"].map(String::from);
        let expected = content_hash(all_names.iter().map(|n| {
            let version = h
                .snapshot
                .get(E, n)
                .map(|r| r.version.as_str())
                .unwrap_or("");
            (n.as_str(), version)
        }));
        assert!(
            out.responses[0].version_info.ends_with(&expected),
            "{out:?}"
        );
        assert_eq!(walks(&h), before, "EDS and RDS from the shared diff");
    }

    #[test]
    fn acks_and_changes_of_other_types_do_not_plan_unchanged_types_again() {
        let mut h = synced();
        let plans =
            |h: &Harness| ResourceType::ALL.map(|t| h.stream.types[t.index()].settled.full_plans);
        let before = plans(&h);
        let out = h.publish(base_with_route("rev2", 1));
        assert_eq!(summary(&out), vec![s(R, &["r"])]);
        assert!(h.ack(&out.responses[0], &["r"]).responses.is_empty());
        let after = plans(&h);
        for t in [C, E, L] {
            assert_eq!(after[t.index()], before[t.index()], "{t} planned again");
        }
        assert_eq!(after[R.index()], before[R.index()] + 1);
        assert_eq!(h.stream.status(R).state(), SyncState::Synced);
    }

    #[test]
    fn a_wildcard_stream_holds_the_snapshots_map_not_a_copy() {
        let h = synced();
        for t in [C, L] {
            assert!(
                Arc::ptr_eq(
                    &h.stream.types[t.index()].held,
                    h.snapshot.shared_resources(t)
                ),
                "{t}"
            );
        }
    }

    #[test]
    fn rule_01_every_response_has_a_fresh_nonce() {
        let mut h = Harness::new(base("rev1"));
        let first = h.subscribe(C, &[]);
        let second = h.publish(snapshot("rev2", &[(C, "a", 1)]));
        assert_ne!(first.responses[0].nonce, second.responses[0].nonce);
    }

    #[test]
    fn rule_02_type_version_moves_only_with_its_resources() {
        let mut h = synced();
        let cds_before = h.stream.status(C).sent_version.clone();
        let lds_before = h.stream.status(L).sent_version.clone();
        let out = h.publish(mesh("rev2", [7, 0], [0, 0], 0));
        // CDS, and EDS again for the changed cluster (rule 11); no LDS.
        assert_eq!(summary(&out), [s(C, &["a", "b"]), s(E, &["a"])]);
        assert_ne!(h.stream.status(C).sent_version, cds_before);
        assert_eq!(h.stream.status(L).sent_version, lds_before);
        // The version carries the revision and the content hash.
        let version = &out.responses[0].version_info;
        assert!(version.starts_with("rev2-"), "{version}");
    }

    #[test]
    fn rule_03_error_detail_with_same_version_and_nonce_is_a_nack() {
        let mut h = Harness::new(base("rev1"));
        let out = h.subscribe(C, &[]);
        let response = &out.responses[0];
        let mut nack = request(C, &[], &response.version_info, &response.nonce);
        nack.error_detail = nack_detail("cluster a: bad");
        let out = h.request(nack);
        assert!(out.responses.is_empty());
        assert_eq!(
            out.events,
            [Event::Nack {
                resource_type: C,
                version: response.version_info.clone(),
                message: "cluster a: bad".into(),
                rejected: vec!["a".into(), "b".into()],
            }]
        );
        assert_eq!(h.stream.status(C).state(), SyncState::Nacked);
        let nack = h.stream.status(C).last_nack.clone().expect("nack recorded");
        assert_eq!(nack.version, response.version_info);
        assert_eq!(nack.message, "cluster a: bad");
    }

    #[test]
    fn rule_04_nack_is_not_resent() {
        let mut h = synced();
        let bad = h.publish(mesh("rev2", [9, 0], [0, 0], 0));
        assert_eq!(summary(&bad), [s(C, &["a", "b"]), s(E, &["a"])]);
        let cds = bad.responses[0].clone();
        let eds = bad.responses[1].clone();
        assert!(h.ack(&eds, &["a", "b"]).responses.is_empty());
        let out = h.nack(&cds, &[]);
        assert!(out.responses.is_empty(), "rejected config resent");
        // The same content republished under a new revision, and another request: silence.
        let same = mesh("rev3", [9, 0], [0, 0], 0);
        assert!(h.publish(same).responses.is_empty());
        assert!(h.subscribe(C, &[]).responses.is_empty());
        assert_eq!(h.stream.status(C).state(), SyncState::Nacked);
        // The next real change is sent, once.
        let fixed = mesh("rev4", [3, 0], [0, 0], 0);
        let out = h.publish(fixed.clone());
        assert_eq!(summary(&out), [s(C, &["a", "b"]), s(E, &["a"])]);
        assert!(h.publish(fixed).responses.is_empty());
        h.ack(&out.responses[0], &[]);
        assert_eq!(h.stream.status(C).state(), SyncState::Synced);
    }

    #[test]
    fn rule_05_ack_and_identical_snapshot_send_nothing() {
        let mut h = synced();
        assert!(h.publish(base("rev1")).responses.is_empty());
        assert!(
            h.publish(base("rev2")).responses.is_empty(),
            "a new revision alone sends nothing"
        );
        for t in [C, E, L, R] {
            assert_eq!(h.stream.status(t).state(), SyncState::Synced, "{t}");
        }
    }

    #[test]
    fn rule_06_node_is_only_needed_on_the_first_request() {
        let mut h = Harness::new(base("rev1"));
        let mut first = request(C, &[], "", "");
        first.node = Some(Default::default());
        let out = h.request(first);
        // Later requests carry no node and still work.
        assert!(h
            .ack(&out.responses[0], &[])
            .events
            .iter()
            .any(|e| matches!(e, Event::Ack { .. })));
        assert_eq!(h.subscribe(E, &["a"]).responses.len(), 1);
    }

    #[test]
    fn rule_07_unknown_type_leaves_other_types_alone() {
        let mut h = synced();
        for url in ["type.googleapis.com/foo.Bar", ""] {
            let out = h.request(DiscoveryRequest {
                type_url: url.into(),
                resource_names: vec!["x".into()],
                ..Default::default()
            });
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
        assert_eq!(summary(&out), [s(C, &["a", "b", "c"])]);
    }

    #[test]
    fn rule_08_types_nobody_asked_for_are_never_sent() {
        let mut h = Harness::new(base("rev1"));
        h.subscribe(C, &[]);
        let out = h.publish(snapshot(
            "rev2",
            &[(C, "a", 0), (E, "a", 1), (L, "l", 1), (R, "r", 1)],
        ));
        assert_eq!(summary(&out), [s(C, &["a"])]);
    }

    #[test]
    fn rule_09_make_before_break_adds_clusters_first_and_removes_them_last() {
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
            h.ack(&out.responses[0], names);
        }
        let out = h.publish(snapshot(
            "rev2",
            &[(C, "y", 0), (E, "y", 0), (L, "l", 0), (R, "r", 1)],
        ));
        assert_eq!(
            summary(&out),
            [s(C, &["x", "y"]), s(E, &["y"]), s(R, &["r"]), s(C, &["y"])]
        );
        // x is kept at exactly the content the client has.
        assert_eq!(out.responses[0].resources[0], h_cluster("x", 0));
        // Only the last CDS counts for ACK.
        let first_cds = out.responses[0].clone();
        let last_cds = out.responses[3].clone();
        assert!(h.ack(&first_cds, &[]).events.is_empty());
        assert_eq!(h.stream.status(C).state(), SyncState::Stale);
        h.ack(&last_cds, &[]);
        assert_eq!(h.stream.status(C).state(), SyncState::Synced);
    }

    fn h_cluster(name: &str, variant: u32) -> envoy_types::pb::google::protobuf::Any {
        crate::xds::stream::testing::resource(C, name, variant).body
    }

    #[test]
    fn rule_09_listeners_come_before_routes_and_a_lone_removal_is_one_response() {
        let mut h = synced();
        let out = h.publish(snapshot(
            "rev2",
            &[
                (C, "a", 0),
                (E, "a", 0),
                (E, "b", 0),
                (L, "l", 1),
                (R, "r", 1),
            ],
        ));
        // The client holds a and b: the first CDS of the pair would change nothing, so only
        // the final one goes, after the routes.
        assert_eq!(summary(&out), [s(L, &["l"]), s(R, &["r"]), s(C, &["a"])]);
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
        assert_eq!(summary(&out), [s(C, &["a"])]);
    }

    #[test]
    fn rule_10_children_do_not_wait_for_the_parent_ack() {
        let mut h = Harness::new(base("rev1"));
        let cds = h.subscribe(C, &[]);
        assert_eq!(cds.responses.len(), 1);
        // CDS not ACKed (Envoy ACKs it only once the endpoints arrived): EDS still goes out.
        let out = h.subscribe(E, &["a", "b"]);
        assert_eq!(summary(&out), [s(E, &["a", "b"])]);
    }

    #[test]
    fn rule_11_cluster_change_resends_its_endpoints() {
        let mut h = synced();
        let out = h.publish(mesh("rev2", [1, 0], [0, 0], 0));
        // Only a's endpoints: b's cluster did not change, and an EDS response need not carry
        // everything.
        assert_eq!(summary(&out), [s(C, &["a", "b"]), s(E, &["a"])]);
        // Same content, so the same content hash; a new snapshot revision.
        assert!(out.responses[1].version_info.starts_with("rev2-"));
        // A new cluster alone does not: Envoy asks for its endpoints.
        let mut h = synced();
        let out = h.publish(snapshot(
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
        ));
        assert_eq!(summary(&out), [s(C, &["a", "b", "c"])]);
    }

    #[test]
    fn rule_12_a_request_is_answered_from_the_current_snapshot() {
        let mut h = synced();
        // The snapshot changed (cluster c added) and the request for c's endpoints arrives
        // before the stream saw the new snapshot.
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
        let out = h.subscribe(E, &["a", "b", "c"]);
        assert_eq!(summary(&out), [s(C, &["a", "b", "c"]), s(E, &["c"])]);
        assert!(h
            .stream
            .handle_snapshot(&h.snapshot.clone())
            .responses
            .is_empty());
    }

    #[test]
    fn rule_13_first_responses_after_reconnect_are_complete() {
        let mut h = synced();
        let version = h.stream.status(C).sent_version.clone().unwrap_or_default();
        // A new stream: the client says it has the current version; it is answered in full.
        let mut h2 = Harness::new(h.snapshot.clone());
        let out = h2.request(request(C, &[], &version, ""));
        assert_eq!(summary(&out), [s(C, &["a", "b"])]);
        assert_eq!(
            out.responses[0].version_info, version,
            "versions survive a reconnect"
        );
        // A snapshot with no clusters at all: the first request still gets its (empty) answer.
        let mut empty = Harness::new(snapshot("rev1", &[(L, "l", 0)]));
        assert_eq!(summary(&empty.subscribe(C, &[])), [s(C, &[])]);
        assert!(empty
            .publish(snapshot("rev2", &[(L, "l", 0)]))
            .responses
            .is_empty());
        h.publish(base("rev2"));
    }

    #[test]
    fn rule_16_lds_and_cds_are_full_sets() {
        let mut h = Harness::new(snapshot("rev1", &[(C, "a", 0), (C, "b", 0), (C, "c", 0)]));
        let out = h.subscribe(C, &[]);
        h.ack(&out.responses[0], &[]);
        let out = h.publish(snapshot("rev2", &[(C, "a", 0), (C, "c", 0)]));
        assert_eq!(summary(&out), [s(C, &["a", "c"])]);
        let out = h.publish(snapshot("rev3", &[]));
        assert_eq!(
            summary(&out),
            [s(C, &[])],
            "an empty set deletes everything"
        );
    }

    /// A full answer carries the snapshot's map itself, not a list of its resources per
    /// stream; what a client lacks of a type is the map of just that.
    #[test]
    fn a_full_answer_carries_the_snapshots_map_not_a_list() {
        let snapshot = base("rev1");
        let mut stream = SotwStream::new();
        for (t, names) in BASE_SUBSCRIPTIONS {
            let out = stream.handle_request(&request(t, names, "", ""), &snapshot);
            let Resources::Map(map) = &out.responses[0].resources else {
                panic!("{t} sent as a list");
            };
            assert!(Arc::ptr_eq(map, snapshot.shared_resources(t)), "{t}");
        }
        let mut stream = SotwStream::new();
        let out = stream.handle_request(&request(E, &["a"], "", ""), &snapshot);
        assert_eq!(
            (out.responses[0].resources.iter())
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
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
        let cds = |out: Output<DiscoveryResponse>| {
            (out.responses.into_iter())
                .find(|r| type_of(r) == C)
                .expect("a CDS response")
        };
        let first = cds(h.publish(mesh("rev2", [1, 0], [0, 0], 0)));
        let second = cds(h.publish(mesh("rev3", [2, 0], [0, 0], 0)));
        assert_eq!(records(&h, C).0, 2);
        // An ACK of the older response settles it alone and is no ACK of the newer one, which
        // can still be NACKed.
        let out = h.ack(&first, &[]);
        assert!(!out.events.iter().any(|e| matches!(e, Event::Ack { .. })));
        assert_eq!(records(&h, C).0, 1);
        let out = h.nack(&second, &[]);
        assert!(out.events.iter().any(|e| matches!(
            e,
            Event::Nack { version, .. } if *version == second.version_info
        )));
        let third = cds(h.publish(mesh("rev4", [3, 0], [0, 0], 0)));
        h.ack(&third, &[]);
        assert_eq!(records(&h, C), (0, 0));
        assert_eq!(
            h.stream.status(C).acked_version,
            h.stream.status(C).sent_version
        );
    }

    #[test]
    fn rule_17_a_stale_nonce_is_no_ack_but_its_names_count() {
        let mut h = synced();
        // The nonce of the EDS response the client ACKed.
        let eds = h.stream.types[E.index()]
            .answered_nonce
            .clone()
            .expect("the first EDS response was ACKed");
        let out = h.publish(mesh("rev2", [0, 0], [1, 0], 0));
        let pushed = out.responses[0].clone();
        // The client, not yet seeing the push, drops b with the older nonce.
        let out = h.request(request(E, &["a"], "", &eds));
        assert!(!out.events.iter().any(|e| matches!(e, Event::Ack { .. })));
        assert_eq!(h.stream.status(E).state(), SyncState::Stale);
        assert!(out.responses.is_empty(), "{:?}", summary(&out));
        // And adds b back, still with the stale nonce: b is sent again (a is on its way).
        let out = h.request(request(E, &["a", "b"], "", &eds));
        assert_eq!(summary(&out), [s(E, &["b"])]);
        assert!(h.ack(&pushed, &["a", "b"]).events.is_empty(), "superseded");
    }

    #[test]
    fn rule_18_empty_eds_names_unsubscribe() {
        let mut h = synced();
        let out = h.subscribe(E, &[]);
        assert!(out.responses.is_empty());
        assert!(!h.stream.status(E).subscribed);
        let out = h.publish(mesh("rev2", [0, 0], [1, 1], 0));
        assert!(out.responses.is_empty(), "{:?}", summary(&out));
        let out = h.subscribe(R, &[]);
        assert!(out.responses.is_empty());
    }

    #[test]
    fn rule_19_names_requested_again_are_sent_again() {
        let mut h = Harness::new(base("rev1"));
        let mut sent = Vec::new();
        for names in [&["a"][..], &["a", "b"], &["a"], &["a", "b"]] {
            sent.push(summary(&h.subscribe(E, names)));
        }
        assert_eq!(
            sent,
            [
                vec![s(E, &["a"])],
                vec![s(E, &["b"])],
                vec![],
                vec![s(E, &["b"])],
            ]
        );
        // Unsubscribed entirely, then asked again: sent again.
        assert!(h.subscribe(E, &[]).responses.is_empty());
        assert_eq!(summary(&h.subscribe(E, &["a"])), [s(E, &["a"])]);
    }

    #[test]
    fn rule_19_names_requested_before_they_exist_are_sent_when_they_appear() {
        let mut h = Harness::new(base("rev1"));
        let out = h.subscribe(E, &["x"]);
        assert!(out.responses.is_empty(), "no empty EDS response");
        let out = h.publish(snapshot("rev2", &[(E, "x", 0)]));
        assert_eq!(summary(&out), [s(E, &["x"])]);
        let out = h.subscribe(R, &["nope"]);
        assert!(out.responses.is_empty());
    }

    /// A harness subscribed over RDS to route configurations r1, r2 and r3 at `variants`, ACKed.
    fn three_routes(variants: [u32; 3]) -> Harness {
        let mut h = Harness::new(routes("rev1", variants));
        let out = h.subscribe(R, &ROUTES);
        assert_eq!(summary(&out), [s(R, &ROUTES)]);
        h.ack(&out.responses[0], &ROUTES);
        h
    }

    const ROUTES: [&str; 3] = ["r1", "r2", "r3"];

    fn routes(revision: &str, variants: [u32; 3]) -> Snapshot {
        let items: Vec<_> = ROUTES
            .iter()
            .zip(variants)
            .map(|(n, v)| (R, *n, v))
            .collect();
        snapshot(revision, &items)
    }

    #[test]
    fn eds_and_rds_responses_carry_only_what_changed() {
        let mut h = three_routes([0, 0, 0]);
        let changed = routes("rev2", [1, 0, 0]);
        let out = h.publish(changed.clone());
        assert_eq!(summary(&out), [s(R, &["r1"])]);
        assert!(matches!(
            &out.events[..],
            [Event::Sent {
                resources: 1,
                removed: 0,
                ..
            }]
        ));
        // Its version is the one a full response would carry: a new stream's first answer.
        let mut fresh = Harness::new(changed);
        let full = fresh.subscribe(R, &ROUTES);
        assert_eq!(summary(&full), [s(R, &ROUTES)]);
        assert_eq!(
            out.responses[0].version_info,
            full.responses[0].version_info
        );
        assert!(h.ack(&out.responses[0], &ROUTES).responses.is_empty());
        assert_eq!(h.stream.status(R).state(), SyncState::Synced);
        // Endpoints alike.
        let mut h = synced();
        let out = h.publish(mesh("rev2", [0, 0], [0, 1], 0));
        assert_eq!(summary(&out), [s(E, &["b"])]);
    }

    #[test]
    fn rule_11_only_the_changed_clusters_endpoints_are_forced() {
        // Cluster a changes, b's endpoints change, c is untouched.
        let items = |cluster_a, endpoints_b| {
            snapshot(
                "rev",
                &[
                    (C, "a", cluster_a),
                    (C, "b", 0),
                    (C, "c", 0),
                    (E, "a", 0),
                    (E, "b", endpoints_b),
                    (E, "c", 0),
                ],
            )
        };
        let mut h = Harness::new(items(0, 0));
        for (t, names) in [(C, &[][..]), (E, &["a", "b", "c"][..])] {
            let out = h.subscribe(t, names);
            h.ack(&out.responses[0], names);
        }
        let out = h.publish(items(1, 1));
        assert_eq!(summary(&out), [s(C, &["a", "b", "c"]), s(E, &["a", "b"])]);
        // Forced once: the same content again sends nothing.
        assert!(h.publish(items(1, 1)).responses.is_empty());
    }

    #[test]
    fn rule_04_a_rejected_partial_response_goes_again_only_with_the_next_change() {
        let mut h = three_routes([0, 0, 0]);
        let bad = h.publish(routes("rev2", [1, 0, 0]));
        assert_eq!(summary(&bad), [s(R, &["r1"])]);
        assert!(h.nack(&bad.responses[0], &ROUTES).responses.is_empty());
        // Neither the same content again, nor dropping a name, resends it.
        assert!(h.publish(routes("rev3", [1, 0, 0])).responses.is_empty());
        assert!(h.subscribe(R, &["r1", "r2"]).responses.is_empty());
        // The next real change goes out with r1, which the client still lacks.
        let out = h.publish(routes("rev4", [1, 1, 0]));
        assert_eq!(summary(&out), [s(R, &["r1", "r2"])]);
        // Re-adding a name sends it (rule 19), even with a rejected resource pending.
        let mut h = three_routes([0, 0, 0]);
        let bad = h.publish(routes("rev2", [1, 0, 0]));
        h.nack(&bad.responses[0], &ROUTES);
        assert!(h.subscribe(R, &["r1", "r2"]).responses.is_empty());
        assert_eq!(summary(&h.subscribe(R, &ROUTES)), [s(R, &["r1", "r3"])]);
    }

    #[test]
    fn nack_of_an_older_partial_response_sends_its_resources_with_the_next_change() {
        let mut h = three_routes([0, 0, 0]);
        // Two changes in quick succession: two responses before the client answers either.
        let first = h.publish(routes("rev2", [1, 0, 0]));
        let second = h.publish(routes("rev3", [1, 1, 0]));
        assert_eq!(summary(&first), [s(R, &["r1"])]);
        assert_eq!(summary(&second), [s(R, &["r2"])]);
        // The client rejects the first, keeping r1 at 0, and takes the second.
        let out = h.nack(&first.responses[0], &ROUTES);
        assert!(out.responses.is_empty(), "{:?}", summary(&out));
        assert!(h.ack(&second.responses[0], &ROUTES).responses.is_empty());
        // r1 goes again with the next change.
        let out = h.publish(routes("rev4", [1, 1, 1]));
        assert_eq!(summary(&out), [s(R, &["r1", "r3"])]);
        h.ack(&out.responses[0], &ROUTES);

        // A later response carried r1 again: after the older NACK the client holds r1 from
        // that one...
        let first = h.publish(routes("rev5", [2, 1, 1]));
        let second = h.publish(routes("rev6", [3, 2, 1]));
        assert_eq!(summary(&second), [s(R, &["r1", "r2"])]);
        h.nack(&first.responses[0], &ROUTES);
        h.ack(&second.responses[0], &ROUTES);
        assert_eq!(
            summary(&h.publish(routes("rev7", [3, 2, 2]))),
            [s(R, &["r3"])]
        );
        // ...and when it rejects both, neither.
        let first = h.publish(routes("rev8", [4, 2, 2]));
        let second = h.publish(routes("rev9", [5, 3, 2]));
        assert_eq!(summary(&second), [s(R, &["r1", "r2"])]);
        assert!(h.nack(&first.responses[0], &ROUTES).responses.is_empty());
        assert!(h.nack(&second.responses[0], &ROUTES).responses.is_empty());
        assert_eq!(
            summary(&h.publish(routes("rev10", [5, 3, 3]))),
            [s(R, &["r1", "r2", "r3"])]
        );
    }

    #[test]
    fn a_route_configuration_deleted_then_restored_unchanged_sends_nothing() {
        let mut h = three_routes([0, 0, 0]);
        // The client keeps an RDS resource a response lacks: a deletion tells it nothing, and
        // it still holds the configuration when it comes back.
        let deleted = snapshot("rev2", &[(R, "r1", 0), (R, "r3", 0)]);
        assert!(h.publish(deleted).responses.is_empty());
        assert!(h.publish(routes("rev3", [0, 0, 0])).responses.is_empty());
        let out = h.publish(routes("rev4", [0, 1, 0]));
        assert_eq!(summary(&out), [s(R, &["r2"])]);
    }

    #[test]
    fn rule_24_types_have_separate_state() {
        let mut h = synced();
        let out = h.publish(mesh("rev2", [1, 0], [0, 0], 1));
        for response in &out.responses {
            let t = type_of(response);
            let names: Vec<String> = names_of(response);
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let names = if t.is_wildcard_type() { vec![] } else { names };
            if t == R {
                h.nack(response, &names);
            } else {
                h.ack(response, &names);
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
        // Unset names: a subscription to `*`.
        let mut h = Harness::new(all.clone());
        assert_eq!(summary(&h.subscribe(C, &[])), [s(C, &["a", "b", "c"])]);
        // `*` and A: continuing `*`, adding A: nothing new to send.
        assert!(h.subscribe(C, &["*", "a"]).responses.is_empty());
        // A alone: `*` is dropped; the full set is now A.
        assert_eq!(summary(&h.subscribe(C, &["a"])), [s(C, &["a"])]);
        // Unset again: no longer wildcard, but an unsubscription from everything.
        assert!(h.subscribe(C, &[]).responses.is_empty());
        assert!(!h.stream.status(C).subscribed);
        assert!(h
            .publish(snapshot("rev2", &[(C, "a", 1), (C, "d", 0)]))
            .responses
            .is_empty());

        // `*` on the first request is wildcard too; explicit names alone are not.
        let mut h = Harness::new(all.clone());
        assert_eq!(
            summary(&h.subscribe(L, &["*"])),
            [s(L, &[])],
            "no listeners: an empty answer"
        );
        assert_eq!(summary(&h.subscribe(C, &["*"])), [s(C, &["a", "b", "c"])]);
        let mut h = Harness::new(all);
        assert_eq!(summary(&h.subscribe(C, &["b", "x"])), [s(C, &["b"])]);
        // `*` is no wildcard for EDS.
        assert!(h.subscribe(E, &["*"]).responses.is_empty());
    }

    #[test]
    fn nack_of_the_first_response_on_a_new_stream_sends_the_next_change() {
        // The client rejected the first response of a new stream and kept whatever it had from
        // the old one, which this stream never saw: the next change must go out.
        let mut h = Harness::new(snapshot("rev1", &[(C, "c", 0)]));
        let out = h.subscribe(C, &["c"]);
        h.nack(&out.responses[0], &["c"]);
        let out = h.publish(snapshot("rev2", &[]));
        assert_eq!(summary(&out), [s(C, &[])]);
    }

    #[test]
    fn nacks_of_an_older_and_then_the_latest_full_response_assume_neither_was_applied() {
        let mut h = Harness::new(snapshot("rev1", &[(C, "a", 0)]));
        let out = h.subscribe(C, &[]);
        h.ack(&out.responses[0], &[]);
        let first = h.publish(snapshot("rev2", &[(C, "a", 0), (C, "b", 0)]));
        let second = h.publish(snapshot("rev3", &[(C, "a", 0)]));
        // The client rejects both, in turn: it still holds a alone.
        assert!(h.nack(&first.responses[0], &[]).responses.is_empty());
        assert!(h.nack(&second.responses[0], &[]).responses.is_empty());
        // b comes back: the client never got it, so it is sent.
        let out = h.publish(snapshot("rev4", &[(C, "a", 0), (C, "b", 0)]));
        assert_eq!(summary(&out), [s(C, &["a", "b"])]);
    }

    #[test]
    fn make_before_break_keeps_only_clusters_still_asked_for() {
        let mut h = Harness::new(snapshot("rev1", &[(C, "c", 0)]));
        let out = h.subscribe(C, &[]);
        h.ack(&out.responses[0], &[]);
        h.subscribe(L, &[]);
        // The client rejects the deletion of c and keeps it...
        let out = h.publish(snapshot("rev2", &[]));
        h.nack(&out.responses[0], &[]);
        // ...then asks for b alone: c is no longer wanted.
        assert!(h.subscribe(C, &["*", "b"]).responses.is_empty());
        assert!(h.subscribe(C, &["b"]).responses.is_empty());
        let out = h.publish(snapshot("rev3", &[(C, "b", 0), (L, "b", 0)]));
        assert_eq!(summary(&out), [s(C, &["b"]), s(L, &["b"])]);
    }

    #[test]
    fn nack_of_an_older_response_is_reported_without_touching_state() {
        let mut h = synced();
        let first = h.publish(mesh("rev2", [1, 0], [0, 0], 0));
        h.publish(mesh("rev3", [2, 0], [0, 0], 0));
        let out = h.nack(&first.responses[0], &[]);
        assert!(out.responses.is_empty());
        assert!(matches!(&out.events[..], [Event::Nack { rejected, .. }] if rejected.len() == 2));
        assert_eq!(h.stream.status(C).state(), SyncState::Stale);
    }
}

/// Property tests: a simulated client applies every response (an LDS/CDS/scoped RDS one replaces
/// what it holds, an EDS/RDS one adds to it) and answers them in order; after every step it holds
/// what it subscribes to in the current snapshot, except while a NACKed config is still current
/// (EDS/RDS: while all it lacks are resources it rejected).
#[cfg(test)]
mod proptests {
    use std::collections::HashSet;

    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use proptest::prelude::*;

    use super::tests::{check_responses, names_of, request, type_of};
    use super::*;
    use crate::xds::resource::content_version;
    use crate::xds::stream::testing::{any_name, nack_detail, resource, to_proto};

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
        /// Answer the oldest unanswered response while a newer one is still to be answered, as
        /// Envoy answers each response in turn.
        AckOlder {
            t: usize,
        },
        NackOlder {
            t: usize,
        },
        Publish(Spec),
        /// Publish the current snapshot with one resource changed, added or deleted.
        Change {
            t: usize,
            name: usize,
            variant: Option<u32>,
        },
        Reconnect,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        proptest::array::uniform5(proptest::array::uniform3(proptest::option::of(0u32..3)))
    }

    fn step() -> impl Strategy<Value = Step> {
        let names = || proptest::collection::vec(0usize..4, 0..3);
        let t = || 0..ResourceType::COUNT;
        prop_oneof![
            3 => (t(), names(), any::<bool>())
                .prop_map(|(t, names, stale)| Step::Subscribe { t, names, stale }),
            1 => (t(), names(), any::<bool>())
                .prop_map(|(t, names, stale)| Step::Unsubscribe { t, names, stale }),
            3 => t().prop_map(|t| Step::Ack { t }),
            1 => t().prop_map(|t| Step::Nack { t }),
            2 => t().prop_map(|t| Step::AckOlder { t }),
            2 => t().prop_map(|t| Step::NackOlder { t }),
            2 => spec().prop_map(Step::Publish),
            3 => (t(), 0usize..3, proptest::option::of(0u32..3))
                .prop_map(|(t, name, variant)| Step::Change { t, name, variant }),
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
        /// The names it sends, `*` included.
        list: BTreeSet<String>,
        ever_named: bool,
        wildcard: bool,
        names: BTreeSet<String>,
        /// What it holds: name → resource version.
        held: BTreeMap<String, String>,
        /// What it held before the oldest response it has not answered.
        base: BTreeMap<String, String>,
        /// Responses applied but not answered yet, oldest first: nonce and content.
        unanswered: Vec<(String, BTreeMap<String, String>)>,
        /// Nonce and version of the latest response.
        latest: Option<(String, String)>,
        previous_nonce: String,
        acked_version: String,
        /// LDS/CDS/scoped RDS: what it should hold when it NACKed; no check while that is
        /// still the case.
        nack_hold: Option<BTreeMap<String, String>>,
        /// EDS/RDS: resources (name → version) it rejected since the latest response. While
        /// all it lacks are among them the server may stay silent (rule 4); a pair it no longer
        /// lacks is dropped, and the next response must bring everything.
        rejected: BTreeMap<String, String>,
    }

    /// What a client holds after applying `responses` to `base`.
    fn replay(
        t: ResourceType,
        base: &BTreeMap<String, String>,
        responses: &[(String, BTreeMap<String, String>)],
    ) -> BTreeMap<String, String> {
        let mut held = base.clone();
        for (_, got) in responses {
            apply(t, &mut held, got);
        }
        held
    }

    fn apply(t: ResourceType, held: &mut BTreeMap<String, String>, got: &BTreeMap<String, String>) {
        if t.is_wildcard_type() {
            held.clone_from(got);
        } else {
            held.extend(got.iter().map(|(n, v)| (n.clone(), v.clone())));
        }
    }

    impl ClientType {
        /// The protocol's rules, applied to the list the client sends.
        fn set_list(&mut self, t: ResourceType, list: BTreeSet<String>) {
            if !list.is_empty() {
                self.ever_named = true;
            }
            self.wildcard = t.is_wildcard_type() && (list.contains("*") || !self.ever_named);
            self.names = list.iter().filter(|n| *n != "*").cloned().collect();
            self.list = list;
            if !self.wildcard && self.names.is_empty() {
                self.held.clear();
                self.base.clear();
                for (_, got) in &mut self.unanswered {
                    got.clear();
                }
                self.rejected.clear();
            } else if !t.is_wildcard_type() {
                let names = &self.names;
                self.held.retain(|n, _| names.contains(n));
                self.base.retain(|n, _| names.contains(n));
                for (_, got) in &mut self.unanswered {
                    got.retain(|n, _| names.contains(n));
                }
                self.rejected.retain(|n, _| names.contains(n));
            }
        }

        /// Answers every response: the latest, and implicitly all before it.
        fn answer_all(&mut self) {
            self.unanswered.clear();
            self.base.clone_from(&self.held);
        }

        fn subscribed(&self) -> bool {
            self.wildcard || !self.names.is_empty()
        }
    }

    struct Sim {
        stream: SotwStream,
        /// Requests go through the wire and the stream's decoder, which leaves out names
        /// that repeat the previous request's.
        decoder: crate::xds::request::SotwDecoder,
        snapshot: Snapshot,
        spec: Spec,
        revision: u32,
        client: [ClientType; ResourceType::COUNT],
        nonces: HashSet<String>,
    }

    impl Sim {
        fn new() -> Self {
            Sim {
                stream: SotwStream::new(),
                decoder: Default::default(),
                snapshot: Snapshot::new("rev0", Vec::new()),
                spec: Spec::default(),
                revision: 0,
                client: Default::default(),
                nonces: HashSet::new(),
            }
        }

        fn send(&mut self, t: ResourceType, version: String, nonce: String, nack: bool) {
            let c = &self.client[t.index()];
            let list: Vec<&str> = c.list.iter().map(String::as_str).collect();
            let mut req = request(t, &list, &version, &nonce);
            if nack {
                req.error_detail = nack_detail("rejected by the simulated client");
            }
            let wire = prost::bytes::Bytes::from(prost::Message::encode_to_vec(&req));
            let decoded = self.decoder.decode_bytes(wire).expect("decodes");
            let out = to_proto(self.stream.handle_decoded(&decoded, &self.snapshot));
            self.deliver(out);
        }

        fn deliver(&mut self, out: Output<DiscoveryResponse>) {
            check_responses(&self.stream, &out, &mut self.nonces);
            for response in &out.responses {
                let t = type_of(response);
                let c = &mut self.client[t.index()];
                let mut got = BTreeMap::new();
                for (any, name) in response.resources.iter().zip(names_of(response)) {
                    assert!(
                        c.wildcard || c.names.contains(&name),
                        "{t} {name} not asked for"
                    );
                    assert_eq!(any_name(t, any), name);
                    got.insert(name, content_version(&any.value));
                }
                apply(t, &mut c.held, &got);
                c.unanswered.push((response.nonce.clone(), got));
                // A response carries all the client lacks, rejected resources included.
                c.rejected.clear();
                if let Some((nonce, _)) = c.latest.take() {
                    c.previous_nonce = nonce;
                }
                c.latest = Some((response.nonce.clone(), response.version_info.clone()));
            }
        }

        /// A request changing the list; `stale` sends an older nonce, else it also ACKs.
        fn change_list(&mut self, t: ResourceType, list: BTreeSet<String>, stale: bool) {
            let c = &mut self.client[t.index()];
            let (version, nonce) = if !c.requested {
                (String::new(), String::new())
            } else if stale {
                (c.acked_version.clone(), c.previous_nonce.clone())
            } else {
                let (nonce, version) = c.latest.clone().unwrap_or_default();
                if !c.unanswered.is_empty() {
                    c.answer_all();
                    c.acked_version = version;
                }
                (c.acked_version.clone(), nonce)
            };
            c.requested = true;
            c.set_list(t, list);
            self.send(t, version, nonce, false);
        }

        fn run(&mut self, step: &Step) {
            match step {
                Step::Subscribe { t, names, stale } => {
                    let t = ResourceType::ALL[*t];
                    let c = &self.client[t.index()];
                    let mut list = c.list.clone();
                    for &i in names {
                        match NAMES.get(i) {
                            Some(name) => list.insert(name.to_string()),
                            None if t.is_wildcard_type() => list.insert("*".into()),
                            None => false,
                        };
                    }
                    // Like Envoy, keep a wildcard subscription when naming more resources.
                    if c.wildcard && !list.is_empty() {
                        list.insert("*".into());
                    }
                    self.change_list(t, list, *stale);
                }
                Step::Unsubscribe { t, names, stale } => {
                    let t = ResourceType::ALL[*t];
                    let c = &self.client[t.index()];
                    if !c.requested {
                        return;
                    }
                    let mut list = c.list.clone();
                    for &i in names {
                        list.remove(NAMES.get(i).copied().unwrap_or("*"));
                    }
                    self.change_list(t, list, *stale);
                }
                Step::Ack { t } => {
                    let t = ResourceType::ALL[*t];
                    let c = &mut self.client[t.index()];
                    if c.unanswered.is_empty() {
                        return;
                    }
                    let (nonce, version) = c.latest.clone().unwrap_or_default();
                    c.answer_all();
                    c.acked_version = version.clone();
                    self.send(t, version, nonce, false);
                }
                Step::Nack { t } => {
                    let t = ResourceType::ALL[*t];
                    let expected = self.expected(t);
                    let c = &mut self.client[t.index()];
                    let Some((nonce, got)) = c.unanswered.pop() else {
                        return;
                    };
                    // It applied the ones before (and ACKed them, which changes nothing).
                    c.held = replay(t, &c.base, &c.unanswered);
                    c.answer_all();
                    if t.is_wildcard_type() {
                        c.nack_hold = Some(expected);
                    } else {
                        c.rejected.extend(got);
                    }
                    let version = c.acked_version.clone();
                    self.send(t, version, nonce, true);
                }
                Step::AckOlder { t } => {
                    let t = ResourceType::ALL[*t];
                    let c = &mut self.client[t.index()];
                    if c.unanswered.len() < 2 {
                        return;
                    }
                    let (nonce, got) = c.unanswered.remove(0);
                    apply(t, &mut c.base, &got);
                    // An ACK names the version of the response it answers.
                    let version = self.stream.types[t.index()]
                        .recent
                        .iter()
                        .find(|r| r.nonce == nonce)
                        .map(|r| r.version.clone())
                        .unwrap_or_default();
                    self.send(t, version, nonce, false);
                }
                Step::NackOlder { t } => {
                    let t = ResourceType::ALL[*t];
                    let c = &mut self.client[t.index()];
                    // Only a response the server still remembers can be traced.
                    if !(2..=RECENT_RESPONSES).contains(&c.unanswered.len()) {
                        return;
                    }
                    let (nonce, got) = c.unanswered.remove(0);
                    c.held = replay(t, &c.base, &c.unanswered);
                    if !t.is_wildcard_type() {
                        for (name, version) in got {
                            if !c
                                .unanswered
                                .iter()
                                .any(|(_, later)| later.contains_key(&name))
                            {
                                c.rejected.insert(name, version);
                            }
                        }
                    }
                    let version = c.acked_version.clone();
                    self.send(t, version, nonce, true);
                }
                Step::Publish(spec) => self.publish(*spec),
                Step::Change { t, name, variant } => {
                    let mut spec = self.spec;
                    spec[*t][*name] = *variant;
                    self.publish(spec);
                }
                Step::Reconnect => {
                    self.stream = SotwStream::new();
                    self.decoder = Default::default();
                    self.nonces.clear();
                    for t in ResourceType::ALL {
                        let c = &mut self.client[t.index()];
                        let was_requested = c.requested && c.subscribed();
                        c.latest = None;
                        c.previous_nonce.clear();
                        c.answer_all();
                        c.nack_hold = None;
                        c.rejected.clear();
                        c.ever_named = false;
                        c.requested = was_requested;
                        if was_requested {
                            let list = c.list.clone();
                            c.set_list(t, list);
                            let version = c.acked_version.clone();
                            self.send(t, version, String::new(), false);
                        }
                    }
                }
            }
        }

        fn publish(&mut self, spec: Spec) {
            self.spec = spec;
            self.revision += 1;
            self.snapshot = build(&spec, self.revision);
            let out = to_proto(self.stream.handle_snapshot(&self.snapshot));
            self.deliver(out);
        }

        fn expected(&self, t: ResourceType) -> BTreeMap<String, String> {
            let c = &self.client[t.index()];
            self.snapshot
                .resources(t)
                .iter()
                .filter(|(name, _)| c.wildcard || c.names.contains(*name))
                .map(|(name, r)| (name.clone(), r.version.clone()))
                .collect()
        }

        fn check(&mut self) {
            for t in ResourceType::ALL {
                let expected = self.expected(t);
                let c = &mut self.client[t.index()];
                if !c.requested {
                    continue;
                }
                if let Some(hold) = &c.nack_hold {
                    if *hold == expected {
                        continue;
                    }
                    c.nack_hold = None;
                }
                if t.is_wildcard_type() {
                    assert_eq!(c.held, expected, "{t}");
                } else {
                    // SotW cannot delete EDS/RDS resources; only what exists is checked.
                    let lacking: BTreeMap<&String, &String> = expected
                        .iter()
                        .filter(|(name, version)| c.held.get(*name) != Some(*version))
                        .collect();
                    c.rejected
                        .retain(|name, version| lacking.get(name) == Some(&&*version));
                    assert_eq!(
                        lacking.len(),
                        c.rejected.len(),
                        "{t} lacks {lacking:?}, rejected only {:?}",
                        c.rejected
                    );
                    assert!(c.held.keys().all(|n| c.names.contains(n)), "{t}");
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
