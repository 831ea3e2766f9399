//! A bounded map that forgets its least recently used entries.
//!
//! Owns the eviction policy of every cache whose size would otherwise grow
//! with what tenants create (compiled modules, resolved job versions): each
//! is bounded by a number of entries and by a total weight (bytes, for
//! compiled code), and the entry used longest ago goes first. It never
//! decides what an entry weighs or whether a value is worth keeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// A map of at most `max_entries` entries of at most `max_weight` in total.
pub struct Lru<K, V> {
    state: Mutex<State<K, V>>,
    max_entries: usize,
    max_weight: u64,
}

struct State<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Bumped on every use; an entry's `used` is the tick of its last use.
    tick: u64,
    weight: u64,
}

struct Slot<V> {
    value: V,
    weight: u64,
    used: u64,
}

impl<K: Eq + Hash + Clone, V: Clone> Lru<K, V> {
    /// An empty map; `max_entries` is at least one.
    pub fn new(max_entries: usize, max_weight: u64) -> Self {
        Self {
            state: Mutex::new(State {
                map: HashMap::new(),
                tick: 0,
                weight: 0,
            }),
            max_entries: max_entries.max(1),
            max_weight,
        }
    }

    // A poisoned lock means a thread panicked while holding it; every
    // operation leaves the map consistent before anything can panic, so
    // keep using it.
    fn lock(&self) -> std::sync::MutexGuard<'_, State<K, V>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value for `key`, marked as just used.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        let slot = state.map.get_mut(key)?;
        slot.used = tick;
        Some(slot.value.clone())
    }

    /// Inserts `value` unless `key` is present, and answers the value now
    /// stored (the earlier one when two callers raced). Entries used longest
    /// ago are dropped until the bounds hold again; a value heavier than
    /// the whole bound is returned without being kept.
    pub fn insert(&self, key: K, value: V, weight: u64) -> V {
        self.store(key, value, weight, false)
    }

    /// Stores `value` for `key`, replacing any earlier value.
    pub fn put(&self, key: K, value: V, weight: u64) {
        self.store(key, value, weight, true);
    }

    fn store(&self, key: K, value: V, weight: u64, replace: bool) -> V {
        let mut state = self.lock();
        state.tick += 1;
        let tick = state.tick;
        if let Some(slot) = state.map.get_mut(&key) {
            slot.used = tick;
            if !replace {
                return slot.value.clone();
            }
            let old = std::mem::replace(&mut slot.weight, 0);
            state.weight -= old;
            state.map.remove(&key);
        }
        if weight > self.max_weight {
            return value;
        }
        while !state.map.is_empty()
            && (state.map.len() >= self.max_entries || state.weight + weight > self.max_weight)
        {
            let Some(oldest) = state
                .map
                .iter()
                .min_by_key(|(_, slot)| slot.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(gone) = state.map.remove(&oldest) {
                state.weight -= gone.weight;
            }
        }
        state.weight += weight;
        state.map.insert(
            key,
            Slot {
                value: value.clone(),
                weight,
                used: tick,
            },
        );
        value
    }

    /// Forgets every entry whose key `doomed` picks (a record removed from
    /// its store, say).
    pub fn remove_where(&self, doomed: impl Fn(&K) -> bool) {
        let mut state = self.lock();
        let mut freed = 0;
        state.map.retain(|key, slot| {
            let keep = !doomed(key);
            if !keep {
                freed += slot.weight;
            }
            keep
        });
        state.weight -= freed;
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.lock().map.is_empty()
    }

    /// Total weight held.
    #[cfg(test)]
    pub fn weight(&self) -> u64 {
        self.lock().weight
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let lru = Lru::new(2, u64::MAX);
        lru.insert("a", 1, 0);
        lru.insert("b", 2, 0);
        assert_eq!(lru.get(&"a"), Some(1));
        lru.insert("c", 3, 0);
        assert_eq!(lru.get(&"b"), None, "b was used longest ago");
        assert_eq!(lru.get(&"a"), Some(1));
        assert_eq!(lru.get(&"c"), Some(3));
    }

    #[test]
    fn the_weight_bound_holds() {
        let lru = Lru::new(100, 10);
        lru.insert(1, (), 4);
        lru.insert(2, (), 4);
        lru.insert(3, (), 4);
        assert_eq!((lru.len(), lru.weight()), (2, 8));
        assert_eq!(lru.get(&1), None);
        // Heavier than the bound: answered, not kept.
        lru.insert(4, (), 11);
        assert_eq!(lru.get(&4), None);
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn put_replaces() {
        let lru = Lru::new(4, 100);
        lru.put("k", 1, 3);
        lru.put("k", 2, 5);
        assert_eq!((lru.get(&"k"), lru.weight(), lru.len()), (Some(2), 5, 1));
    }

    #[test]
    fn remove_where_forgets_the_picked_entries_and_their_weight() {
        let lru = Lru::new(8, 100);
        lru.put(("a", 1), (), 3);
        lru.put(("a", 2), (), 4);
        lru.put(("b", 1), (), 5);
        lru.remove_where(|(name, _)| *name == "a");
        assert_eq!((lru.len(), lru.weight()), (1, 5));
        assert_eq!(lru.get(&("a", 1)), None);
        assert_eq!(lru.get(&("b", 1)), Some(()));
    }

    #[test]
    fn a_racing_insert_keeps_the_first_value() {
        let lru = Lru::new(4, 100);
        assert_eq!(lru.insert("k", 1, 1), 1);
        assert_eq!(lru.insert("k", 2, 1), 1);
        assert_eq!(lru.weight(), 1);
    }
}
