//! Keeping the per-stream sets of resource names small. A sidecar of a mesh with a thousand
//! Services subscribes to about two thousand endpoint and two thousand route names and holds
//! about eight thousand resources; thousands of streams each keep such sets for as long as they
//! are connected.
//!
//! - [`intern`] shares one allocation per distinct name across every stream, instead of a
//!   `String` per name per stream.
//! - [`PackedSet`] rebuilds a set into full B-tree nodes once it has doubled: inserting in
//!   ascending order, as a first response or a subscription to every name does, leaves the
//!   nodes about half full.
//! - [`NameSet`], the names a stream subscribes to, is while it can be the snapshot map whose
//!   keys they are: a sidecar naming every resource of a type keeps no set at all.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use super::resource::{ResourceMap, ResourceType, Snapshot};

/// Names no stream holds any more are dropped once the table doubled since the last sweep.
const SWEEP_FROM: usize = 1024;

struct Table {
    names: HashSet<Arc<str>>,
    sweep_at: usize,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| {
    Mutex::new(Table {
        names: HashSet::new(),
        sweep_at: SWEEP_FROM,
    })
});

/// The shared copy of `name`. Names come from sidecars, so the table forgets every name no
/// stream holds any more: a client naming endless made-up resources costs nothing once it is
/// gone.
pub fn intern(name: &str) -> Arc<str> {
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shared) = table.names.get(name) {
        return shared.clone();
    }
    if table.names.len() >= table.sweep_at {
        table.names.retain(|n| Arc::strong_count(n) > 1);
        table.sweep_at = (table.names.len() * 2).max(SWEEP_FROM);
    }
    let shared: Arc<str> = Arc::from(name);
    table.names.insert(shared.clone());
    shared
}

/// Distinct names the table holds (for tests).
#[cfg(test)]
fn interned() -> usize {
    TABLE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .names
        .len()
}

/// Whether the sorted `names` include every key of `map`: one ordered walk.
fn sorted_include_keys_of<'a, V>(
    names: impl Iterator<Item = &'a str>,
    map: &BTreeMap<String, V>,
) -> bool {
    let mut names = names.peekable();
    map.keys().all(|key| {
        while names.next_if(|name| *name < key.as_str()).is_some() {}
        names.next_if(|name| *name == key.as_str()).is_some()
    })
}

/// The names a stream subscribes to for one type. Envoy names every endpoint set and route
/// configuration it needs, and a sidecar that may call every Service needs every one of them:
/// then the names are exactly the keys of a snapshot's map, and the stream keeps that map,
/// shared with the snapshot and every such stream, instead of a set of its own. A name added
/// or removed turns it into a set.
#[derive(Clone, Debug, Default)]
pub struct NameSet {
    /// While the names are exactly the keys of this map.
    keys: Option<Arc<ResourceMap>>,
    /// Otherwise; empty while `keys` is set.
    set: PackedSet<Arc<str>>,
}

impl NameSet {
    /// `names` (in any order, repeats allowed) as a set of their own.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> NameSet {
        // Collected, not inserted one by one: the tree is built with full nodes.
        let set: BTreeSet<Arc<str>> = names.into_iter().map(intern).collect();
        NameSet {
            keys: None,
            set: PackedSet {
                packed_len: set.len(),
                set,
            },
        }
    }

    /// The names as the snapshot's map of `t` when `count` names whose digests
    /// ([`key_digest`](super::resource::key_digest)) sum to `sum()` are exactly its keys:
    /// recognised by count and sum, no name looked up. Envoy's EDS and RDS requests name every
    /// resource of the type in a mesh where any Service may be called. `None` for no names,
    /// and for a wildcard type whose map has a resource named `*` (a `*` in a request is the
    /// wildcard).
    pub fn keys_if_exactly(
        t: ResourceType,
        snapshot: &Snapshot,
        count: usize,
        sum: impl FnOnce() -> u128,
    ) -> Option<NameSet> {
        let map = snapshot.shared_resources(t);
        let exactly = count != 0
            && count == map.len()
            && !(t.is_wildcard_type() && map.contains_key("*"))
            && sum() == snapshot.key_sum(t);
        exactly.then(|| NameSet::keys_of(map))
    }

    /// The keys of `map`, kept as the map itself.
    pub fn keys_of(map: &Arc<ResourceMap>) -> NameSet {
        NameSet {
            keys: Some(Arc::clone(map)),
            set: PackedSet::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(self.set.len(), |keys| keys.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.keys {
            Some(keys) => keys.contains_key(name),
            None => self.set.contains(name),
        }
    }

    /// The names in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let keys = self
            .keys
            .iter()
            .flat_map(|keys| keys.keys().map(String::as_str));
        keys.chain(self.set.iter().map(|name| &**name))
    }

    pub fn insert(&mut self, name: &str) {
        if !self.contains(name) {
            self.set_mut().insert(intern(name));
        }
    }

    /// Removes `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.contains(name) && self.set_mut().remove(name)
    }

    /// Whether the names are exactly the keys of `map`: no walk when they are kept as `map`,
    /// else one ordered walk. Envoy subscribes to every endpoint set and route configuration
    /// by name, so a stream asks this of its whole subscription.
    pub fn are_keys_of(&self, map: &Arc<ResourceMap>) -> bool {
        match &self.keys {
            Some(keys) if Arc::ptr_eq(keys, map) => true,
            _ => self.len() == map.len() && self.iter().eq(map.keys().map(String::as_str)),
        }
    }

    /// Whether the names include every key of `map`.
    pub fn include_keys_of(&self, map: &Arc<ResourceMap>) -> bool {
        match &self.keys {
            Some(keys) if Arc::ptr_eq(keys, map) => true,
            _ => sorted_include_keys_of(self.iter(), map),
        }
    }

    /// Whether the names are kept as `map` itself.
    #[cfg(test)]
    pub fn is_kept_as(&self, map: &Arc<ResourceMap>) -> bool {
        self.keys
            .as_ref()
            .is_some_and(|keys| Arc::ptr_eq(keys, map))
    }

    /// See [`PackedSet::pack`].
    pub fn pack(&mut self) {
        self.set.pack();
    }

    /// The names as a set of their own.
    fn set_mut(&mut self) -> &mut PackedSet<Arc<str>> {
        if let Some(keys) = self.keys.take() {
            // From sorted items the tree is built with full nodes.
            self.set = PackedSet {
                set: keys.keys().map(|key| intern(key)).collect(),
                packed_len: keys.len(),
            };
        }
        &mut self.set
    }
}

/// A `BTreeSet` that [`PackedSet::pack`] rebuilds into full nodes when it has doubled since it
/// was last packed; the rebuild is one pass, paid for by the inserts that doubled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedSet<T> {
    set: BTreeSet<T>,
    packed_len: usize,
}

/// Smaller sets are not worth a rebuild. Tests pack from two items, so the state machines'
/// property tests, whose sets are small, go through rebuilds.
const PACK_FROM: usize = if cfg!(test) { 2 } else { 64 };

impl<T> Default for PackedSet<T> {
    fn default() -> Self {
        PackedSet {
            set: BTreeSet::new(),
            packed_len: 0,
        }
    }
}

impl<T: Ord> PackedSet<T> {
    /// Rebuilds the set if it has doubled since it was last packed.
    pub fn pack(&mut self) {
        let len = self.set.len();
        if len < self.packed_len / 2 {
            // Shrunk: removals merge nodes; measure the next doubling from here.
            self.packed_len = len;
        } else if len >= PACK_FROM && len >= self.packed_len.saturating_mul(2) {
            // Collecting sorted items builds the tree bottom up with full nodes.
            self.set = std::mem::take(&mut self.set).into_iter().collect();
            self.packed_len = len;
        }
    }
}

impl<T> Deref for PackedSet<T> {
    type Target = BTreeSet<T>;

    fn deref(&self) -> &BTreeSet<T> {
        &self.set
    }
}

impl<T> DerefMut for PackedSet<T> {
    fn deref_mut(&mut self) -> &mut BTreeSet<T> {
        &mut self.set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::stream::testing;

    #[test]
    fn equal_names_share_one_allocation_and_unheld_names_are_forgotten() {
        let a = intern("outbound|80||names-test-a");
        let b = intern(&String::from("outbound|80||names-test-a"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "outbound|80||names-test-a");
        // A client naming endless made-up names: the table stays bounded by what is held.
        let held: Vec<Arc<str>> = (0..100).map(|i| intern(&format!("held-{i}"))).collect();
        for i in 0..20 * SWEEP_FROM {
            intern(&format!("made-up-{i}"));
        }
        assert!(interned() < 4 * SWEEP_FROM, "{} names kept", interned());
        for (i, name) in held.iter().enumerate() {
            assert!(
                Arc::ptr_eq(name, &intern(&format!("held-{i}"))),
                "a held name was dropped"
            );
        }
        assert!(Arc::ptr_eq(&a, &intern("outbound|80||names-test-a")));
    }

    fn map(keys: &[&str]) -> Arc<ResourceMap> {
        let resource = |name: &str| Arc::new(testing::resource(ResourceType::Endpoint, name, 0));
        Arc::new(keys.iter().map(|k| (k.to_string(), resource(k))).collect())
    }

    fn name_set(names: &[&str]) -> NameSet {
        let mut set = NameSet::default();
        for name in names {
            set.insert(name);
        }
        set
    }

    #[test]
    fn names_compared_with_a_maps_keys() {
        let abd = map(&["a", "b", "d"]);
        // Kept as a set built name by name, as a set collected at once, and as the keys of an
        // equal map.
        for kept_as in 0..3 {
            let set = |list: &[&str]| match kept_as {
                0 => name_set(list),
                1 => NameSet::from_names(list.iter().rev().copied()),
                _ => NameSet::keys_of(&map(list)),
            };
            assert!(set(&["a", "b", "d"]).are_keys_of(&abd));
            assert!(!set(&["a", "b", "c"]).are_keys_of(&abd));
            assert!(!set(&["a", "b", "d", "e"]).are_keys_of(&abd));
            assert!(set(&["a", "b", "c", "d", "e"]).include_keys_of(&abd));
            assert!(!set(&["a", "c", "d"]).include_keys_of(&abd));
            assert!(!set(&["a", "b"]).include_keys_of(&abd));
            assert!(set(&[]).include_keys_of(&map(&[])));
        }
    }

    #[test]
    fn names_are_recognised_as_a_snapshots_keys_by_count_and_digest_sum() {
        use crate::xds::resource::key_digest;
        let snapshot = |names: &[&str]| {
            let resource = |t, name: &str| (t, testing::resource(t, name, 0));
            Snapshot::new(
                "rev",
                (names.iter())
                    .flat_map(|n| {
                        [
                            resource(ResourceType::Endpoint, n),
                            resource(ResourceType::Cluster, n),
                        ]
                    })
                    .collect(),
            )
        };
        let sum = |names: &[&str]| {
            names
                .iter()
                .fold(0u128, |s, n| s.wrapping_add(key_digest(n)))
        };
        let ab = snapshot(&["a", "b"]);
        let e = ResourceType::Endpoint;
        let names = NameSet::keys_if_exactly(e, &ab, 2, || sum(&["b", "a"])).expect("every name");
        assert!(names.is_kept_as(ab.shared_resources(e)));
        assert!(NameSet::keys_if_exactly(e, &ab, 2, || sum(&["a", "c"])).is_none());
        assert!(NameSet::keys_if_exactly(e, &ab, 3, || sum(&["a", "b", "b"])).is_none());
        assert!(NameSet::keys_if_exactly(e, &snapshot(&[]), 0, || sum(&[])).is_none());
        // A cluster named `*`: a `*` in a CDS request is the wildcard, never that name.
        let star = snapshot(&["*", "a"]);
        let c = ResourceType::Cluster;
        assert!(NameSet::keys_if_exactly(c, &star, 2, || sum(&["*", "a"])).is_none());
        assert!(NameSet::keys_if_exactly(e, &star, 2, || sum(&["*", "a"])).is_some());
    }

    #[test]
    fn a_name_set_is_a_maps_keys_until_a_name_is_added_or_removed() {
        let abd = map(&["a", "b", "d"]);
        let mut set = NameSet::keys_of(&abd);
        assert!(set.are_keys_of(&abd) && set.include_keys_of(&abd));
        assert!(set.contains("b") && !set.contains("c"));
        assert_eq!(set.iter().collect::<Vec<_>>(), ["a", "b", "d"]);
        assert_eq!(set.len(), 3);
        // Adding or removing what it already has or lacks keeps the map.
        set.insert("a");
        assert!(!set.remove("c"));
        assert!(set
            .keys
            .as_ref()
            .is_some_and(|keys| Arc::ptr_eq(keys, &abd)));
        set.insert("c");
        assert!(set.keys.is_none(), "a set of its own");
        assert_eq!(set.iter().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert!(!set.are_keys_of(&abd) && set.include_keys_of(&abd));
        let mut set = NameSet::keys_of(&abd);
        assert!(set.remove("b"));
        assert_eq!(set.iter().collect::<Vec<_>>(), ["a", "d"]);
        assert!(!set.include_keys_of(&abd));
        set.insert("b");
        assert!(set.are_keys_of(&abd), "the same names again");
        assert!(set.keys.is_none());
        assert!(NameSet::keys_of(&map(&[])).is_empty());
    }

    #[test]
    fn a_packed_set_keeps_its_items_and_packs_once_per_doubling() {
        let mut set = PackedSet::default();
        let mut packs = Vec::new();
        for i in 0..1000u32 {
            set.insert(i);
            let before = set.packed_len;
            set.pack();
            if set.packed_len != before {
                packs.push(set.len());
            }
        }
        assert_eq!(packs, [2, 4, 8, 16, 32, 64, 128, 256, 512]);
        assert!(set.iter().copied().eq(0..1000));
        set.retain(|i| *i < 100);
        set.pack();
        assert_eq!(set.packed_len, 100, "shrunk");
        assert!(set.iter().copied().eq(0..100));
        for i in 1000..1100 {
            set.insert(i);
        }
        set.pack();
        assert_eq!(set.packed_len, 200);
        assert_eq!(set.len(), 200);
    }
}
