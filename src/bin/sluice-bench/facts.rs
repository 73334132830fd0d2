//! What responses mean to a sidecar, worked out once and shared by every simulated sidecar.
//!
//! Ten thousand sidecars receive the same clusters, endpoints, listeners and routes. Decoding
//! every response in every sidecar would make the generator, not the server, the bottleneck.
//! So what a sidecar needs from a response (which clusters are EDS clusters and what their
//! endpoints are called, whether a listener fetches route scopes over scoped RDS or names route
//! configurations itself, which route configuration each scope fetches over RDS) is decoded
//! once per distinct resource: keyed by `(type, name, version)` in delta, and by a hash of the
//! resource's bytes in SotW.
//!
//! What a sidecar holds of a type is a [`Held`] state, interned here: a sidecar keeps only a
//! [`StateId`] per type. In delta a state is the `name → version` map the sidecar would send as
//! `initial_resource_versions` on reconnect; a response moves a sidecar from one state to the
//! next, and that transition is computed once per (state, response) and then looked up. Equal
//! maps are one state, so "the route version moved" is a change of state id. In SotW a state
//! is one whole response of the type (its `version_info` and what it asks to follow).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::ConfigSource;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::ScopedRouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::scoped_routes::ConfigSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::bytes::Bytes;
use prost::Message;
use sluice::xds::resource::ResourceType;
use xxhash_rust::xxh3::Xxh3;

use crate::wire::{self, DeltaResponse, SotwResponse};

/// An interned [`Held`] state.
pub type StateId = u32;

/// Holding nothing: every type's state before its first response.
pub const EMPTY: StateId = 0;

const HCM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// A set of resource names a sidecar subscribes to (its EDS or RDS names), interned so equal
/// sets are one `Arc`, with the request pieces that name them encoded once.
#[derive(Debug)]
pub struct NameSet {
    pub names: Vec<Arc<str>>,
    /// `resource_names_subscribe` listing every name (delta).
    pub delta_subscribe: Bytes,
    /// `resource_names` listing every name (SotW).
    pub sotw_names: Bytes,
}

/// What one resource makes a sidecar ask for next.
#[derive(Clone, Debug)]
struct Follow {
    /// Names of the next type: an EDS cluster's endpoints, the route configurations a listener
    /// names itself (`rds`), a scope's route configuration.
    names: Arc<[Arc<str>]>,
    /// A listener whose connection manager reads its routes through scoped RDS over ADS: the
    /// sidecar subscribes to every route scope (a wildcard subscription).
    scoped_rds: bool,
}

/// One resource as a delta sidecar holds it.
#[derive(Clone, Debug)]
struct Entry {
    version: Arc<str>,
    follow: Follow,
}

/// What a sidecar holds of one type. Immutable once interned.
#[derive(Debug)]
pub struct Held {
    /// Delta: every resource held, by name. Empty in SotW.
    entries: BTreeMap<Arc<str>, Entry>,
    /// SotW: the `version_info` of the response. Empty in delta.
    pub version_info: Bytes,
    /// The names the next type must subscribe to (from CDS: EDS; from LDS: the RDS names its
    /// listeners name themselves; from scoped RDS: the RDS names of the scopes).
    pub follow: Arc<NameSet>,
    /// LDS: some listener reads its routes through scoped RDS over ADS, so the sidecar
    /// subscribes to the route scopes, and to the route configurations they name.
    pub scoped_rds: bool,
    /// `initial_resource_versions` with every entry, encoded on first use (delta reconnect).
    delta_initial: OnceLock<Bytes>,
}

impl Held {
    /// The `initial_resource_versions` piece of a delta reconnect request.
    pub fn delta_initial(&self) -> Bytes {
        self.delta_initial
            .get_or_init(|| {
                wire::encode(&DeltaDiscoveryRequest {
                    initial_resource_versions: self
                        .entries
                        .iter()
                        .map(|(name, entry)| (name.to_string(), entry.version.to_string()))
                        .collect(),
                    ..Default::default()
                })
            })
            .clone()
    }
}

/// The shared decode cache and state table.
#[derive(Debug)]
pub struct Facts {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    states: Vec<Arc<Held>>,
    /// Delta: state by a hash of its `(name, version)` pairs.
    delta_by_content: HashMap<u64, StateId>,
    /// Delta: `(state before, response key)` → state after.
    transitions: HashMap<(StateId, u64), StateId>,
    /// SotW: state by type and the response's key (a hash of all of it but the nonce).
    sotw_by_response: HashMap<(u8, u64), StateId>,
    /// What each distinct resource makes a sidecar follow, by `(type, resource key)`.
    follows: HashMap<(u8, u64), Follow>,
    name_sets: HashMap<u64, Arc<NameSet>>,
    strings: HashSet<Arc<str>>,
    /// Resources decoded (each distinct one once).
    decoded: u64,
    /// Resources that failed to decode, with the first few reasons.
    decode_errors: u64,
    first_errors: Vec<String>,
}

impl Default for Facts {
    fn default() -> Self {
        let empty_set = Arc::new(NameSet::new(Vec::new()));
        let mut name_sets = HashMap::new();
        name_sets.insert(names_hash(&[]), empty_set.clone());
        let empty = Arc::new(Held {
            entries: BTreeMap::new(),
            version_info: Bytes::new(),
            follow: empty_set,
            scoped_rds: false,
            delta_initial: OnceLock::new(),
        });
        let mut delta_by_content = HashMap::new();
        delta_by_content.insert(content_hash(&empty.entries), EMPTY);
        Facts {
            inner: Mutex::new(Inner {
                states: vec![empty],
                delta_by_content,
                transitions: HashMap::new(),
                sotw_by_response: HashMap::new(),
                follows: HashMap::new(),
                name_sets,
                strings: HashSet::new(),
                decoded: 0,
                decode_errors: 0,
                first_errors: Vec::new(),
            }),
        }
    }
}

impl Facts {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self, id: StateId) -> Arc<Held> {
        let inner = self.lock();
        inner.states[id as usize].clone()
    }

    /// The state a delta sidecar holding `before` is in once it applied the response `message`,
    /// whose [`wire::scan`] key is `key`. The message is decoded only if this (state, response)
    /// pair was never seen.
    pub fn apply_delta(
        &self,
        t: ResourceType,
        before: StateId,
        key: u64,
        message: &Bytes,
    ) -> Result<StateId, prost::DecodeError> {
        let mut inner = self.lock();
        if let Some(after) = inner.transitions.get(&(before, key)) {
            return Ok(*after);
        }
        let response = DeltaResponse::decode(message.clone())?;
        let mut entries = inner.states[before as usize].entries.clone();
        for resource in &response.resources {
            let name = inner.intern(&resource.name);
            let version = inner.intern(&resource.version);
            let resource_key = delta_resource_key(&resource.name, &resource.version);
            let body = resource
                .resource
                .as_ref()
                .map(|any| &any.value[..])
                .unwrap_or_default();
            let follow = inner.follow(t, resource_key, body);
            entries.insert(name, Entry { version, follow });
        }
        for name in &response.removed_resources {
            entries.remove(String::from_utf8_lossy(name).as_ref());
        }
        let hash = content_hash(&entries);
        let after = match inner.delta_by_content.get(&hash) {
            Some(id) => *id,
            None => {
                let follow = inner.name_set(entries.values().flat_map(|e| e.follow.names.iter()));
                let scoped_rds = entries.values().any(|e| e.follow.scoped_rds);
                let id = inner.push(Held {
                    entries,
                    version_info: Bytes::new(),
                    follow,
                    scoped_rds,
                    delta_initial: OnceLock::new(),
                });
                inner.delta_by_content.insert(hash, id);
                id
            }
        };
        inner.transitions.insert((before, key), after);
        Ok(after)
    }

    /// The state a SotW sidecar is in once it applied the response `message`, whose
    /// [`wire::scan`] key is `key`. The message is decoded only if it was never seen.
    pub fn apply_sotw(
        &self,
        t: ResourceType,
        key: u64,
        message: &Bytes,
    ) -> Result<StateId, prost::DecodeError> {
        let mut inner = self.lock();
        if let Some(id) = inner.sotw_by_response.get(&(t as u8, key)) {
            return Ok(*id);
        }
        let response = SotwResponse::decode(message.clone())?;
        let mut follows = Vec::new();
        for any in &response.resources {
            let resource_key = xxhash_rust::xxh3::xxh3_64(&any.value);
            follows.push(inner.follow(t, resource_key, &any.value));
        }
        let follow = inner.name_set(follows.iter().flat_map(|f| f.names.iter()));
        let scoped_rds = follows.iter().any(|f| f.scoped_rds);
        let id = inner.push(Held {
            entries: BTreeMap::new(),
            // A copy: the response's bytes point into a receive buffer that must be freed.
            version_info: Bytes::copy_from_slice(&response.version_info),
            follow,
            scoped_rds,
            delta_initial: OnceLock::new(),
        });
        inner.sotw_by_response.insert((t as u8, key), id);
        Ok(id)
    }

    /// The route configurations a sidecar subscribes to over RDS, holding the listeners
    /// `listeners` and the route scopes `scopes`: those its listeners name, and, when a listener
    /// reads its routes through scoped RDS, those its scopes name.
    pub fn route_names(&self, listeners: &Held, scopes: &Held) -> Arc<NameSet> {
        if !listeners.scoped_rds || scopes.follow.names.is_empty() {
            return listeners.follow.clone();
        }
        if listeners.follow.names.is_empty() {
            return scopes.follow.clone();
        }
        let mut inner = self.lock();
        inner.name_set(
            listeners
                .follow
                .names
                .iter()
                .chain(scopes.follow.names.iter()),
        )
    }

    /// How many distinct resources were decoded, and how many of those failed.
    pub fn decode_counts(&self) -> (u64, u64, Vec<String>) {
        let inner = self.lock();
        (
            inner.decoded,
            inner.decode_errors,
            inner.first_errors.clone(),
        )
    }
}

impl Inner {
    fn push(&mut self, held: Held) -> StateId {
        let id = StateId::try_from(self.states.len()).unwrap_or(StateId::MAX);
        self.states.push(Arc::new(held));
        id
    }

    fn intern(&mut self, bytes: &[u8]) -> Arc<str> {
        let text = String::from_utf8_lossy(bytes);
        if let Some(found) = self.strings.get(text.as_ref()) {
            return found.clone();
        }
        let interned: Arc<str> = Arc::from(text.as_ref());
        self.strings.insert(interned.clone());
        interned
    }

    /// What a resource makes a sidecar follow, decoding it the first time it is seen.
    fn follow(&mut self, t: ResourceType, resource_key: u64, body: &[u8]) -> Follow {
        if let Some(found) = self.follows.get(&(t as u8, resource_key)) {
            return found.clone();
        }
        self.decoded += 1;
        let decoded = match decode_follow(t, body) {
            Ok(decoded) => decoded,
            Err(err) => {
                self.decode_errors += 1;
                if self.first_errors.len() < 5 {
                    self.first_errors.push(format!("{t}: {err}"));
                }
                Decoded::default()
            }
        };
        let follow = Follow {
            names: decoded
                .names
                .iter()
                .map(|n| self.intern(n.as_bytes()))
                .collect(),
            scoped_rds: decoded.scoped_rds,
        };
        self.follows.insert((t as u8, resource_key), follow.clone());
        follow
    }

    fn name_set<'a>(&mut self, names: impl Iterator<Item = &'a Arc<str>>) -> Arc<NameSet> {
        let sorted: BTreeSet<&Arc<str>> = names.collect();
        let names: Vec<Arc<str>> = sorted.into_iter().cloned().collect();
        let hash = names_hash(&names);
        self.name_sets
            .entry(hash)
            .or_insert_with(|| Arc::new(NameSet::new(names)))
            .clone()
    }
}

impl NameSet {
    fn new(names: Vec<Arc<str>>) -> NameSet {
        let strings: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        NameSet {
            delta_subscribe: wire::encode(&DeltaDiscoveryRequest {
                resource_names_subscribe: strings.clone(),
                ..Default::default()
            }),
            sotw_names: wire::encode(&DiscoveryRequest {
                resource_names: strings,
                ..Default::default()
            }),
            names,
        }
    }
}

/// The request piece holding only `type_url`, per type: delta.
pub fn delta_type_part(t: ResourceType) -> Bytes {
    static PARTS: LazyLock<[Bytes; ResourceType::COUNT]> = LazyLock::new(|| {
        ResourceType::ALL.map(|t| {
            wire::encode(&DeltaDiscoveryRequest {
                type_url: t.type_url().to_string(),
                ..Default::default()
            })
        })
    });
    PARTS[t.index()].clone()
}

/// The request piece holding only `type_url`, per type: SotW.
pub fn sotw_type_part(t: ResourceType) -> Bytes {
    static PARTS: LazyLock<[Bytes; ResourceType::COUNT]> = LazyLock::new(|| {
        ResourceType::ALL.map(|t| {
            wire::encode(&DiscoveryRequest {
                type_url: t.type_url().to_string(),
                ..Default::default()
            })
        })
    });
    PARTS[t.index()].clone()
}

/// What [`decode_follow`] found in one resource.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decoded {
    names: Vec<String>,
    scoped_rds: bool,
}

/// Decodes a resource for what it makes a sidecar ask for next: an EDS cluster's
/// `ClusterLoadAssignment` name (its `service_name`, else its own name); for a listener, the
/// route configurations its HTTP connection managers name (`rds`) and whether one reads its
/// routes through scoped RDS over ADS (`scoped_routes` with `scoped_rds`); a scope's route
/// configuration, unless the scope is `on_demand` (Envoy fetches those at the first request
/// that needs them). Other clusters (such as `ORIGINAL_DST` passthrough) and other types ask for
/// nothing; so do connection managers with inline routes or inline scopes, or whose scopes or
/// routes come from elsewhere than ADS.
fn decode_follow(t: ResourceType, body: &[u8]) -> Result<Decoded, prost::DecodeError> {
    let mut decoded = Decoded::default();
    match t {
        ResourceType::Cluster => {
            let cluster = Cluster::decode(body)?;
            let eds = matches!(
                cluster.cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(kind)) if kind == DiscoveryType::Eds as i32
            );
            if eds {
                let service_name = cluster
                    .eds_cluster_config
                    .map(|eds| eds.service_name)
                    .filter(|name| !name.is_empty());
                decoded.names.push(service_name.unwrap_or(cluster.name));
            }
        }
        ResourceType::Listener => {
            let listener = Listener::decode(body)?;
            let chains = listener
                .filter_chains
                .iter()
                .chain(listener.default_filter_chain.as_ref());
            for filter in chains.flat_map(|chain| chain.filters.iter()) {
                let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
                    continue;
                };
                if any.type_url != HCM_TYPE_URL {
                    continue;
                }
                match HttpConnectionManager::decode(&any.value[..])?.route_specifier {
                    Some(RouteSpecifier::Rds(rds)) => decoded.names.push(rds.route_config_name),
                    Some(RouteSpecifier::ScopedRoutes(scoped)) => {
                        let scopes_over_ads = matches!(
                            &scoped.config_specifier,
                            Some(ConfigSpecifier::ScopedRds(srds))
                                if is_ads(srds.scoped_rds_config_source.as_ref())
                        );
                        if scopes_over_ads && is_ads(scoped.rds_config_source.as_ref()) {
                            decoded.scoped_rds = true;
                        }
                    }
                    _ => {}
                }
            }
        }
        ResourceType::ScopedRoute => {
            let scope = ScopedRouteConfiguration::decode(body)?;
            if !scope.on_demand && !scope.route_configuration_name.is_empty() {
                decoded.names.push(scope.route_configuration_name);
            }
        }
        ResourceType::Endpoint | ResourceType::Route => {}
    }
    Ok(decoded)
}

/// Whether a config source is the ADS stream (`ads: {}`).
fn is_ads(source: Option<&ConfigSource>) -> bool {
    matches!(
        source.and_then(|s| s.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_))
    )
}

fn delta_resource_key(name: &[u8], version: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(name);
    hasher.update(&[0]);
    hasher.update(version);
    hasher.digest()
}

fn content_hash(entries: &BTreeMap<Arc<str>, Entry>) -> u64 {
    let mut hasher = Xxh3::new();
    for (name, entry) in entries {
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(entry.version.as_bytes());
        hasher.update(&[0]);
    }
    hasher.digest()
}

fn names_hash(names: &[Arc<str>]) -> u64 {
    let mut hasher = Xxh3::new();
    for name in names {
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AnyBytes, DeltaResource};
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;

    fn cluster(name: &str, eds: bool) -> Vec<u8> {
        let kind = if eds {
            DiscoveryType::Eds
        } else {
            DiscoveryType::OriginalDst
        };
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
            eds_cluster_config: eds.then(EdsClusterConfig::default),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// A delta response's bytes and key, as a sidecar receives them.
    fn delta(resources: &[(&str, &str, Vec<u8>)], removed: &[&str]) -> (u64, Bytes) {
        let message = wire::encode(&DeltaResponse {
            resources: resources
                .iter()
                .map(|(name, version, body)| DeltaResource {
                    name: Bytes::copy_from_slice(name.as_bytes()),
                    version: Bytes::copy_from_slice(version.as_bytes()),
                    resource: Some(AnyBytes {
                        type_url: Bytes::new(),
                        value: Bytes::from(body.clone()),
                    }),
                })
                .collect(),
            removed_resources: removed
                .iter()
                .map(|n| Bytes::copy_from_slice(n.as_bytes()))
                .collect(),
            ..Default::default()
        });
        (wire::scan(&message).expect("scans").key, message)
    }

    fn apply(facts: &Facts, before: StateId, (key, message): &(u64, Bytes)) -> StateId {
        facts
            .apply_delta(ResourceType::Cluster, before, *key, message)
            .expect("decodes")
    }

    fn follow_names(facts: &Facts, id: StateId) -> Vec<String> {
        facts
            .state(id)
            .follow
            .names
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    #[test]
    fn eds_clusters_are_followed_and_others_are_not() {
        let facts = Facts::default();
        let response = delta(
            &[
                ("a", "1", cluster("a", true)),
                ("pass", "1", cluster("pass", false)),
            ],
            &[],
        );
        let id = apply(&facts, EMPTY, &response);
        assert_eq!(follow_names(&facts, id), ["a"]);
    }

    #[test]
    fn equal_content_is_one_state_and_a_new_version_is_another() {
        let facts = Facts::default();
        let first = delta(&[("a", "1", cluster("a", true))], &[]);
        let one = apply(&facts, EMPTY, &first);
        assert_eq!(apply(&facts, one, &first), one);
        let second = delta(&[("a", "2", cluster("a", true))], &[]);
        let two = apply(&facts, one, &second);
        assert_ne!(two, one);
        let removed = apply(&facts, two, &delta(&[], &["a"]));
        assert_eq!(removed, EMPTY);
        assert_eq!(
            facts.decode_counts().0,
            2,
            "each (name, version) decoded once"
        );
    }

    fn listener(route_specifier: RouteSpecifier) -> Vec<u8> {
        use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
        use envoy_types::pb::google::protobuf::Any;
        let hcm = HttpConnectionManager {
            route_specifier: Some(route_specifier),
            ..Default::default()
        };
        Listener {
            name: "l".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "hcm".into(),
                    config_type: Some(ConfigType::TypedConfig(Any {
                        type_url: HCM_TYPE_URL.into(),
                        value: hcm.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn scope(name: &str, on_demand: bool) -> Vec<u8> {
        ScopedRouteConfiguration {
            name: name.into(),
            route_configuration_name: name.into(),
            on_demand,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn ads() -> Option<ConfigSource> {
        use envoy_types::pb::envoy::config::core::v3::AggregatedConfigSource;
        Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        })
    }

    #[test]
    fn a_listener_with_scoped_rds_over_ads_asks_for_scopes_and_one_with_rds_for_its_routes() {
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
            Rds, ScopedRds, ScopedRoutes,
        };
        let scoped = listener(RouteSpecifier::ScopedRoutes(ScopedRoutes {
            name: "s".into(),
            rds_config_source: ads(),
            config_specifier: Some(ConfigSpecifier::ScopedRds(ScopedRds {
                scoped_rds_config_source: ads(),
                ..Default::default()
            })),
            ..Default::default()
        }));
        let decoded = decode_follow(ResourceType::Listener, &scoped).expect("decodes");
        assert_eq!(
            decoded,
            Decoded {
                names: Vec::new(),
                scoped_rds: true
            }
        );
        let classic = listener(RouteSpecifier::Rds(Rds {
            route_config_name: "r".into(),
            config_source: ads(),
        }));
        let decoded = decode_follow(ResourceType::Listener, &classic).expect("decodes");
        assert_eq!(
            decoded,
            Decoded {
                names: vec!["r".into()],
                scoped_rds: false
            }
        );
    }

    #[test]
    fn scopes_name_their_route_configurations_unless_on_demand_and_removals_shrink_them() {
        let facts = Facts::default();
        let apply = |before, response: &(u64, Bytes)| {
            facts
                .apply_delta(ResourceType::ScopedRoute, before, response.0, &response.1)
                .expect("decodes")
        };
        let response = delta(
            &[
                ("a:80", "1", scope("a:80", false)),
                ("b:80", "1", scope("b:80", false)),
                ("lazy:80", "1", scope("lazy:80", true)),
            ],
            &[],
        );
        let all = apply(EMPTY, &response);
        assert_eq!(follow_names(&facts, all), ["a:80", "b:80"]);
        let fewer = apply(all, &delta(&[], &["b:80"]));
        assert_eq!(follow_names(&facts, fewer), ["a:80"]);

        // RDS follows the scopes only for a listener that reads its routes through them.
        let mut listeners = Held {
            entries: BTreeMap::new(),
            version_info: Bytes::new(),
            follow: facts.state(EMPTY).follow.clone(),
            scoped_rds: true,
            delta_initial: OnceLock::new(),
        };
        let scopes = facts.state(fewer);
        assert!(Arc::ptr_eq(
            &facts.route_names(&listeners, &scopes),
            &scopes.follow
        ));
        listeners.scoped_rds = false;
        assert!(facts.route_names(&listeners, &scopes).names.is_empty());
    }

    #[test]
    fn the_reconnect_piece_lists_every_held_version() {
        let facts = Facts::default();
        let response = delta(
            &[
                ("a", "1", cluster("a", true)),
                ("b", "7", cluster("b", true)),
            ],
            &[],
        );
        let id = apply(&facts, EMPTY, &response);
        let request =
            DeltaDiscoveryRequest::decode(facts.state(id).delta_initial()).expect("decodes");
        assert_eq!(request.initial_resource_versions.len(), 2);
        assert_eq!(request.initial_resource_versions["b"], "7");
    }
}
