//! `Recent`: a small in-memory map whose entries expire after a fixed time and whose size is
//! capped (the oldest entries go first). Cards offered (for their feedback), FHIR resource ids
//! handed out (for reads) and JWT ids seen (against replays) are kept in one each.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Recent<K, V> {
    ttl: Duration,
    cap: usize,
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    map: HashMap<K, (Instant, V)>,
    /// Insertion order, for expiry and the cap; a key may appear again after a re-insert (the
    /// map's instant tells which entry is current).
    order: VecDeque<(Instant, K)>,
}

impl<K: Eq + Hash + Clone, V: Clone> Recent<K, V> {
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            cap: cap.max(1),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        // A panic while holding the lock leaves consistent data (every step is complete).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn prune(&self, inner: &mut Inner<K, V>, now: Instant) {
        while let Some((at, key)) = inner.order.front() {
            let expired = now.duration_since(*at) >= self.ttl;
            if !expired && inner.map.len() <= self.cap {
                break;
            }
            let (at, key) = (*at, key.clone());
            inner.order.pop_front();
            if inner.map.get(&key).is_some_and(|(t, _)| *t == at) {
                inner.map.remove(&key);
            }
        }
    }

    /// Remembers `value` under `key` (replacing an older one).
    pub fn insert(&self, key: K, value: V) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.order.push_back((now, key.clone()));
        inner.map.insert(key, (now, value));
        self.prune(&mut inner, now);
    }

    /// Remembers `key` unless it is already there; true if it was new.
    pub fn insert_new(&self, key: K, value: V) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        self.prune(&mut inner, now);
        if inner.map.contains_key(&key) {
            return false;
        }
        inner.order.push_back((now, key.clone()));
        inner.map.insert(key, (now, value));
        self.prune(&mut inner, now);
        true
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.prune(&mut inner, now);
        inner.map.get(key).map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_new_entries_and_caps_the_size() {
        let r = Recent::new(Duration::from_secs(3600), 2);
        r.insert(1, "a");
        r.insert(2, "b");
        assert_eq!(r.get(&1), Some("a"));
        r.insert(3, "c");
        assert_eq!(r.get(&1), None, "the oldest goes over the cap");
        assert_eq!(r.get(&3), Some("c"));
        assert!(!r.insert_new(3, "d"));
        assert_eq!(r.get(&3), Some("c"));
        // Re-inserting a key keeps its newest value.
        r.insert(2, "e");
        r.insert(4, "f");
        assert_eq!(r.get(&2), Some("e"));
    }

    #[test]
    fn entries_expire() {
        let r = Recent::new(Duration::ZERO, 10);
        r.insert(1, ());
        assert_eq!(r.get(&1), None);
        assert!(r.insert_new(1, ()));
    }
}
