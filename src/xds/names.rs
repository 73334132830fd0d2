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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

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

/// Whether `names` are exactly the keys of `map`: one ordered walk, as both are sorted.
/// Envoy subscribes to every endpoint set and route configuration by name, so a stream asks
/// this of its whole subscription.
pub fn are_keys_of<V>(names: &BTreeSet<Arc<str>>, map: &BTreeMap<String, V>) -> bool {
    names.len() == map.len()
        && names
            .iter()
            .map(|n| &**n)
            .eq(map.keys().map(String::as_str))
}

/// Whether `names` include every key of `map`: one ordered walk.
pub fn include_keys_of<V>(names: &BTreeSet<Arc<str>>, map: &BTreeMap<String, V>) -> bool {
    let mut names = names.iter().peekable();
    map.keys().all(|key| {
        while names.next_if(|name| ***name < **key).is_some() {}
        names.next_if(|name| ***name == **key).is_some()
    })
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

    #[test]
    fn names_compared_with_a_maps_keys() {
        let map: BTreeMap<String, ()> = ["a", "b", "d"].map(|k| (k.to_string(), ())).into();
        let names = |list: &[&str]| list.iter().map(|n| intern(n)).collect::<BTreeSet<_>>();
        assert!(are_keys_of(&names(&["a", "b", "d"]), &map));
        assert!(!are_keys_of(&names(&["a", "b", "c"]), &map));
        assert!(!are_keys_of(&names(&["a", "b", "d", "e"]), &map));
        assert!(include_keys_of(&names(&["a", "b", "c", "d", "e"]), &map));
        assert!(!include_keys_of(&names(&["a", "c", "d"]), &map));
        assert!(!include_keys_of(&names(&["a", "b"]), &map));
        assert!(include_keys_of(&names(&[]), &BTreeMap::<String, ()>::new()));
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
