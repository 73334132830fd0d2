//! Envoy resources as the protocol layer sees them: a name, a content-hash version and the
//! encoded bytes, grouped into immutable per-sidecar snapshots.
//!
//! Each resource is encoded once when it is built and its bytes are shared by every stream that
//! sends it. Versions are hashes of those bytes, so they are identical across restarts and
//! replicas, and a reconnecting delta client with `initial_resource_versions` is sent only what
//! really changed.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

use super::reply::Encodings;

/// The five resource types Sluice serves, in make-before-break order: a sidecar must have a
/// cluster before its endpoints, and a cluster before a route may name it (routes are not
/// warmed). Listeners come before route scopes because the scoped-RDS subscription comes from
/// the listener, and scopes before routes because each scope names the route configuration it
/// fetches over RDS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    ScopedRoute,
    Route,
}

impl ResourceType {
    /// How many types there are: the length of every per-type array.
    pub const COUNT: usize = 5;

    pub const ALL: [ResourceType; ResourceType::COUNT] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::ScopedRoute,
        ResourceType::Route,
    ];

    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::ScopedRoute => {
                "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
            }
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name used in metrics, logs and the debug API.
    pub const fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::ScopedRoute => "srds",
            ResourceType::Route => "rds",
        }
    }

    /// LDS, CDS and scoped RDS are wildcard types: a client that names nothing gets everything,
    /// and a state-of-the-world response always holds the full set.
    pub const fn is_wildcard_type(self) -> bool {
        matches!(
            self,
            ResourceType::Cluster | ResourceType::Listener | ResourceType::ScopedRoute
        )
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// One named, encoded resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    /// Hash of the encoded bytes: equal content, equal version, on every replica.
    pub version: String,
    /// The resource, already wrapped in an `Any` of its type.
    pub body: Any,
    /// Where the resource came from (manifest file:line entries), for NACK reports.
    pub origins: Vec<String>,
}

impl Resource {
    /// Encodes `message` once and derives the version from its bytes.
    pub fn new<M: Message>(
        resource_type: ResourceType,
        name: impl Into<String>,
        message: &M,
    ) -> Resource {
        let value = message.encode_to_vec();
        let version = content_version(&value);
        Resource {
            name: name.into(),
            version,
            body: Any {
                type_url: resource_type.type_url().to_string(),
                value,
            },
            origins: Vec::new(),
        }
    }

    pub fn with_origins(mut self, origins: Vec<String>) -> Resource {
        self.origins = origins;
        self
    }
}

/// The version string for encoded bytes: 16 hex digits of a 64-bit hash.
pub fn content_version(bytes: &[u8]) -> String {
    format!("{:016x}", xxh3_64(bytes))
}

/// Every resource of one type, by name. A snapshot's map also keeps the encodings of all its
/// resources that replies sending the whole map share ([`Encodings`]): made by the first such
/// reply on any thread, freed with the map. A map built for one stream (a subset of a type)
/// keeps none.
#[derive(Default)]
pub struct ResourceMap {
    map: BTreeMap<String, Arc<Resource>>,
    encodings: Option<Box<Encodings>>,
}

impl ResourceMap {
    /// A map that streams share, keeping the encodings of replies that send all of it.
    pub fn shared(map: BTreeMap<String, Arc<Resource>>) -> ResourceMap {
        ResourceMap {
            map,
            encodings: Some(Box::default()),
        }
    }

    /// The encodings kept with the map, if it keeps any.
    pub fn encodings(&self) -> Option<&Encodings> {
        self.encodings.as_deref()
    }

    /// The map to change: it keeps no encodings from now on (they would be of other resources).
    pub fn edit(&mut self) -> &mut BTreeMap<String, Arc<Resource>> {
        self.encodings = None;
        &mut self.map
    }
}

/// A copy of the resources, for one stream to change: it keeps no encodings.
impl Clone for ResourceMap {
    fn clone(&self) -> ResourceMap {
        ResourceMap::from(self.map.clone())
    }
}

impl From<BTreeMap<String, Arc<Resource>>> for ResourceMap {
    fn from(map: BTreeMap<String, Arc<Resource>>) -> ResourceMap {
        ResourceMap {
            map,
            encodings: None,
        }
    }
}

impl FromIterator<(String, Arc<Resource>)> for ResourceMap {
    fn from_iter<I: IntoIterator<Item = (String, Arc<Resource>)>>(iter: I) -> ResourceMap {
        ResourceMap::from(iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl Deref for ResourceMap {
    type Target = BTreeMap<String, Arc<Resource>>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<'a> IntoIterator for &'a ResourceMap {
    type Item = (&'a String, &'a Arc<Resource>);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Arc<Resource>>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

/// The resources, whatever encodings are kept.
impl PartialEq for ResourceMap {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Eq for ResourceMap {}

impl fmt::Debug for ResourceMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.map.fmt(f)
    }
}

/// All resources one sidecar should have, per type, sorted by name. Immutable once built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The source revision (commit SHA or directory digest) this snapshot was compiled from.
    pub revision: String,
    /// Shared, so a state-of-the-world stream that holds every resource of a type (a wildcard
    /// subscription) holds the snapshot's map rather than a copy of it.
    resources: [Arc<ResourceMap>; ResourceType::COUNT],
    /// Per type, a hash over every (name, version) pair: the type's version.
    type_versions: [String; ResourceType::COUNT],
    /// Per type, the sum of every (name, version) pair's [`entry_digest`].
    entry_sums: [u128; ResourceType::COUNT],
    /// Per type, the sum of every name's [`key_digest`].
    key_sums: [u128; ResourceType::COUNT],
}

impl Snapshot {
    pub fn new(revision: impl Into<String>, resources: Vec<(ResourceType, Resource)>) -> Snapshot {
        Snapshot::from_shared(
            revision,
            resources
                .into_iter()
                .map(|(t, resource)| (t, Arc::new(resource)))
                .collect(),
        )
    }

    /// A snapshot of resources that other snapshots may share: their bytes are not copied.
    pub fn from_shared(
        revision: impl Into<String>,
        resources: Vec<(ResourceType, Arc<Resource>)>,
    ) -> Snapshot {
        let mut maps: [BTreeMap<String, Arc<Resource>>; ResourceType::COUNT] = Default::default();
        for (resource_type, resource) in resources {
            maps[resource_type.index()].insert(resource.name.clone(), resource);
        }
        Snapshot::from_types(revision, maps.map(TypeResources::from_map))
    }

    /// A snapshot whose per-type maps other snapshots may share too (in [`ResourceType::ALL`]
    /// order): nothing is copied or hashed again.
    pub fn from_types(
        revision: impl Into<String>,
        types: [TypeResources; ResourceType::COUNT],
    ) -> Snapshot {
        let type_versions = types.each_ref().map(|t| t.version.clone());
        let entry_sums = types.each_ref().map(|t| t.entry_sum);
        let key_sums = types.each_ref().map(|t| t.key_sum);
        Snapshot {
            revision: revision.into(),
            resources: types.map(|t| t.map),
            type_versions,
            entry_sums,
            key_sums,
        }
    }

    pub fn resources(&self, resource_type: ResourceType) -> &ResourceMap {
        &self.resources[resource_type.index()]
    }

    /// Every resource of the type, as a map other holders may share.
    pub fn shared_resources(&self, resource_type: ResourceType) -> &Arc<ResourceMap> {
        &self.resources[resource_type.index()]
    }

    pub fn get(&self, resource_type: ResourceType, name: &str) -> Option<&Arc<Resource>> {
        self.resources[resource_type.index()].get(name)
    }

    /// A hash of every resource of the type: it moves when, and only when, one of them changes.
    pub fn type_version(&self, resource_type: ResourceType) -> &str {
        &self.type_versions[resource_type.index()]
    }

    /// The sum of [`entry_digest`] over every resource of the type: whether a set of (name,
    /// version) pairs given in any order is exactly this type's, without sorting or looking up
    /// each (the set must also have as many pairs as the type has resources).
    pub fn entry_sum(&self, resource_type: ResourceType) -> u128 {
        self.entry_sums[resource_type.index()]
    }

    /// The sum of [`key_digest`] over every name of the type: whether a list of names given in
    /// any order is exactly this type's (it must also have as many names).
    pub fn key_sum(&self, resource_type: ResourceType) -> u128 {
        self.key_sums[resource_type.index()]
    }
}

/// A 128-bit hash of one name; sums of them compare sets of names.
pub fn key_digest(name: impl AsRef<[u8]>) -> u128 {
    xxh3_128(name.as_ref())
}

/// A 128-bit hash of one (name, version) pair; sums of them compare sets of pairs. A
/// reconnecting client declares thousands of pairs per type, so a pair that fits a small buffer
/// is hashed in one call (the same digest as the streaming hasher gives, only faster).
pub fn entry_digest(name: impl AsRef<[u8]>, version: impl AsRef<[u8]>) -> u128 {
    let mut buf = [0u8; 256];
    let (name, version) = (name.as_ref(), version.as_ref());
    let len = name.len() + 1 + version.len();
    if let Some(bytes) = buf.get_mut(..len) {
        let (head, tail) = bytes.split_at_mut(name.len());
        head.copy_from_slice(name);
        // `tail` is the separator then the version.
        if let Some((_, rest)) = tail.split_first_mut() {
            rest.copy_from_slice(version);
        }
        return xxh3_128(bytes);
    }
    let mut hasher = Xxh3::new();
    hasher.update(name);
    hasher.update(&[0]);
    hasher.update(version);
    hasher.digest128()
}

/// Every resource of one type, sorted by name, with the type's version: one snapshot's part,
/// which snapshots of sidecars that get the same resources share.
#[derive(Clone, Debug, Default)]
pub struct TypeResources {
    map: Arc<ResourceMap>,
    version: String,
    entry_sum: u128,
    key_sum: u128,
    /// The resources given to [`TypeResources::new_or_previous`], in the order given, when no
    /// two had one name: the next build from the same names in the same order needs no sort.
    built_from: Option<Arc<[Arc<Resource>]>>,
}

/// The resources, whatever they were built from.
impl PartialEq for TypeResources {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
            && self.version == other.version
            && self.entry_sum == other.entry_sum
            && self.key_sum == other.key_sum
    }
}

impl Eq for TypeResources {}

impl TypeResources {
    pub fn new(resources: impl IntoIterator<Item = Arc<Resource>>) -> TypeResources {
        TypeResources::new_or_previous(resources, None)
    }

    /// [`TypeResources::new`], or a clone of `previous` when it holds exactly these resources
    /// (equal content, origins included): a type a change did not touch costs no new map and
    /// no hashing, and stays the same shared map for every stream. When `previous` was built
    /// from the same names in the same order (a revision where only some resources changed),
    /// nothing is sorted: the changed ones replace theirs in `previous`'s map.
    pub fn new_or_previous(
        resources: impl IntoIterator<Item = Arc<Resource>>,
        previous: Option<&TypeResources>,
    ) -> TypeResources {
        let given: Vec<Arc<Resource>> = resources.into_iter().collect();
        if let Some(built) = previous.and_then(|previous| previous.in_same_order(&given)) {
            return built;
        }
        let mut order: Vec<usize> = (0..given.len()).collect();
        // Stable: of resources with one name the last is kept, as `new`'s map keeps it.
        order.sort_by(|&a, &b| given[a].name.cmp(&given[b].name));
        let mut unique: Vec<&Arc<Resource>> = Vec::with_capacity(order.len());
        for resource in order.into_iter().map(|i| &given[i]) {
            match unique.last_mut() {
                Some(last) if last.name == resource.name => *last = resource,
                _ => unique.push(resource),
            }
        }
        let built_from = (unique.len() == given.len()).then(|| Arc::from(given.as_slice()));
        if let Some(previous) = previous {
            let same = previous.map.len() == unique.len()
                && (previous.map.values().zip(&unique))
                    .all(|(old, new)| Arc::ptr_eq(old, new) || old == *new);
            if same {
                return TypeResources {
                    built_from,
                    ..previous.clone()
                };
            }
        }
        let map = unique
            .into_iter()
            .map(|resource| (resource.name.clone(), resource.clone()))
            .collect();
        TypeResources {
            built_from,
            ..TypeResources::from_map(map)
        }
    }

    /// When `given` holds resources of the names `self` was built from, in the same order:
    /// `self` with those whose content changed put in place (the map's keys stay the same).
    fn in_same_order(&self, given: &[Arc<Resource>]) -> Option<TypeResources> {
        let built_from = self.built_from.as_ref()?;
        if built_from.len() != given.len() {
            return None;
        }
        let mut changed = Vec::new();
        for (old, new) in built_from.iter().zip(given) {
            if Arc::ptr_eq(old, new) {
                continue;
            }
            if old.name != new.name {
                return None;
            }
            if old != new {
                changed.push(new.clone());
            }
        }
        let built = if changed.is_empty() {
            self.clone()
        } else {
            self.with(changed)
        };
        Some(TypeResources {
            built_from: Some(Arc::from(given)),
            ..built
        })
    }

    fn from_map(map: BTreeMap<String, Arc<Resource>>) -> TypeResources {
        let (mut entry_sum, mut key_sum) = (0u128, 0u128);
        for (name, resource) in &map {
            entry_sum = entry_sum.wrapping_add(entry_digest(name, &resource.version));
            key_sum = key_sum.wrapping_add(key_digest(name));
        }
        TypeResources::with_sums(map, entry_sum, key_sum)
    }

    /// `map` with its sums (of [`entry_digest`] and [`key_digest`] over its entries).
    fn with_sums(map: BTreeMap<String, Arc<Resource>>, entry_sum: u128, key_sum: u128) -> Self {
        TypeResources {
            version: type_version(&map),
            entry_sum,
            key_sum,
            map: Arc::new(ResourceMap::shared(map)),
            built_from: None,
        }
    }

    /// These resources with `replacements` put in place of (or beside) those of their names.
    /// The sums are moved by the entries replaced rather than summed again over all.
    pub fn with(&self, replacements: impl IntoIterator<Item = Arc<Resource>>) -> TypeResources {
        let mut map = BTreeMap::clone(&self.map);
        let (mut entry_sum, mut key_sum) = (self.entry_sum, self.key_sum);
        for resource in replacements {
            entry_sum = entry_sum.wrapping_add(entry_digest(&resource.name, &resource.version));
            match map.insert(resource.name.clone(), resource.clone()) {
                Some(old) => {
                    entry_sum = entry_sum.wrapping_sub(entry_digest(&old.name, &old.version));
                }
                None => key_sum = key_sum.wrapping_add(key_digest(&resource.name)),
            }
        }
        TypeResources::with_sums(map, entry_sum, key_sum)
    }

    pub fn resources(&self) -> &ResourceMap {
        &self.map
    }

    /// A hash of every (name, version) pair, as [`Snapshot::type_version`] reports it.
    pub fn version(&self) -> &str {
        &self.version
    }
}

fn type_version(resources: &BTreeMap<String, Arc<Resource>>) -> String {
    let mut buf = Vec::with_capacity(resources.len() * 40);
    for (name, resource) in resources {
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        buf.extend_from_slice(resource.version.as_bytes());
        buf.push(0);
    }
    content_version(&buf)
}

/// What the protocol server asks of whoever compiles the configuration: the snapshot for one
/// sidecar. The server knows nothing of where the resources come from.
pub trait SnapshotView: Send + Sync + fmt::Debug {
    fn snapshot_for(&self, node: &crate::node::NodeInfo) -> Arc<Snapshot>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_digest_is_the_hash_of_name_separator_version_at_any_length() {
        // Up to 256 bytes in all the pair is hashed in one call, above by the streaming hasher.
        for (n, v) in [
            (0, 0),
            (1, 1),
            (200, 55),
            (200, 56),
            (255, 0),
            (300, 3),
            (3, 300),
        ] {
            let (name, version) = ("n".repeat(n), "v".repeat(v));
            let mut hasher = Xxh3::new();
            hasher.update(name.as_bytes());
            hasher.update(&[0]);
            hasher.update(version.as_bytes());
            assert_eq!(entry_digest(&name, &version), hasher.digest128(), "{n} {v}");
        }
        assert_ne!(entry_digest("ab", "c"), entry_digest("a", "bc"));
    }

    #[test]
    fn an_unchanged_type_is_the_previous_map_and_a_changed_one_a_new_one() {
        use crate::xds::stream::testing::resource;
        let t = ResourceType::Cluster;
        let make = |variants: &[(&str, u32)]| -> Vec<Arc<Resource>> {
            (variants.iter())
                .map(|(name, variant)| Arc::new(resource(t, name, *variant)))
                .collect()
        };
        let previous = TypeResources::new(make(&[("a", 0), ("b", 0)]));
        // Equal content in other allocations and another order: the previous map itself.
        let same = TypeResources::new_or_previous(make(&[("b", 0), ("a", 0)]), Some(&previous));
        assert!(Arc::ptr_eq(&same.map, &previous.map));
        assert_eq!(same, previous);
        // A changed version, a resource more or fewer, other origins: a new map, as `new`
        // builds it.
        let moved_origin = {
            let mut list = make(&[("a", 0), ("b", 0)]);
            list[1] = Arc::new(resource(t, "b", 0).with_origins(vec!["b.yaml:3".into()]));
            list
        };
        for list in [
            make(&[("a", 0), ("b", 1)]),
            make(&[("a", 0), ("b", 0), ("c", 0)]),
            make(&[("a", 0)]),
            moved_origin,
        ] {
            let built = TypeResources::new_or_previous(list.clone(), Some(&previous));
            assert!(!Arc::ptr_eq(&built.map, &previous.map));
            assert_eq!(built, TypeResources::new(list));
        }
        // Two resources of one name: the later one, as in `new`; none before: built afresh.
        let twice = make(&[("a", 1), ("b", 0), ("a", 0)]);
        let built = TypeResources::new_or_previous(twice.clone(), Some(&previous));
        assert_eq!(built, TypeResources::new(twice.clone()));
        assert!(Arc::ptr_eq(&built.map, &previous.map), "a:0 came last");
        assert_eq!(
            TypeResources::new_or_previous(twice.clone(), None),
            TypeResources::new(twice)
        );
    }

    #[test]
    fn a_build_from_the_same_names_in_the_same_order_replaces_only_what_changed() {
        use crate::xds::stream::testing::resource;
        let t = ResourceType::Cluster;
        let list: Vec<Arc<Resource>> = ["c", "a", "b"]
            .iter()
            .map(|name| Arc::new(resource(t, name, 0)))
            .collect();
        let previous = TypeResources::new_or_previous(list.clone(), None);
        let mut changed = list.clone();
        changed[1] = Arc::new(resource(t, "a", 1));
        let built = TypeResources::new_or_previous(changed.clone(), Some(&previous));
        assert_eq!(built, TypeResources::new(changed.clone()));
        assert!(built.built_from.is_some(), "not taken in order");
        assert!(Arc::ptr_eq(&built.map["a"], &changed[1]));
        assert!(Arc::ptr_eq(&built.map["b"], &previous.map["b"]));
        // Then nothing changed: the same map.
        let again = TypeResources::new_or_previous(changed, Some(&built));
        assert!(Arc::ptr_eq(&again.map, &built.map));
    }
}

#[cfg(test)]
mod proptests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::{Resource, ResourceType, TypeResources};
    use crate::xds::stream::testing::resource;

    /// Lists of resources over a few names, some given twice, in any order, some with origins;
    /// most lists after the first keep the names of the one before, in its order.
    fn lists() -> impl Strategy<Value = Vec<Vec<(usize, u32, bool)>>> {
        let list = proptest::collection::vec((0usize..5, 0u32..3, any::<bool>()), 0..8);
        proptest::collection::vec((list, 0..4), 1..6).prop_map(|steps| {
            let mut lists: Vec<Vec<(usize, u32, bool)>> = Vec::new();
            for (list, fresh) in steps {
                match lists.last() {
                    Some(before) if fresh > 0 => {
                        let names = before.iter().map(|(name, _, _)| *name);
                        let rest = list.iter().chain([&(0, 0, false)]).cycle();
                        let kept = names.zip(rest).map(|(name, (_, v, o))| (name, *v, *o));
                        lists.push(kept.collect());
                    }
                    _ => lists.push(list),
                }
            }
            lists
        })
    }

    fn make(list: &[(usize, u32, bool)]) -> Vec<Arc<Resource>> {
        (list.iter())
            .map(|&(name, variant, origin)| {
                let name = ["a", "b", "c", "d", "e"][name];
                let resource = resource(ResourceType::Cluster, name, variant);
                Arc::new(match origin {
                    true => resource.with_origins(vec![format!("{name}.yaml:1")]),
                    false => resource,
                })
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Each build from the previous one holds exactly what a fresh build holds, and keeps
        /// the previous map when that is equal.
        #[test]
        fn a_build_from_the_previous_is_a_fresh_build(lists in lists()) {
            let mut previous: Option<TypeResources> = None;
            let mut given: Vec<Arc<Resource>> = Vec::new();
            for list in &lists {
                // Half the time the previous build's own allocations, as cached parts give.
                let list: Vec<Arc<Resource>> = make(list)
                    .into_iter()
                    .enumerate()
                    .map(|(i, new)| match given.get(i) {
                        Some(old) if **old == *new && i % 2 == 0 => old.clone(),
                        _ => new,
                    })
                    .collect();
                let built = TypeResources::new_or_previous(list.clone(), previous.as_ref());
                let fresh = TypeResources::new(list.clone());
                prop_assert_eq!(&built, &fresh);
                if let Some(previous) = &previous {
                    prop_assert_eq!(Arc::ptr_eq(&built.map, &previous.map), *previous == fresh);
                    // And resources put in place of theirs or beside them, as a fresh build of
                    // both lists (the later of one name kept).
                    let both = given.iter().chain(&list).cloned();
                    prop_assert_eq!(previous.with(list.clone()), TypeResources::new(both));
                }
                previous = Some(built);
                given = list;
            }
        }
    }
}
