//! The FEATURES entries a featurize consumer wrote last, kept so the next batch need not read
//! them back.
//!
//! Only keys no one else writes are kept (see [`StateCache::keeps`]): the users, scaling states,
//! label states and due slots of the consumer's partitions, and, when one consumer has every
//! partition, all keys. The lease
//! on the consumer makes it their only writer, so what it wrote is what a read would return.
//! Every write is still a compare-and-set on the kept revision: should another writer have
//! slipped in (an operator, or a replica that held the lease before), the write fails, the key is
//! read afresh and the batch's mutations are replayed on it, exactly as without the cache.

use std::collections::HashMap;

use crate::handler::EntityState;

/// A bounded map of key → (state, revision), evicting roughly least recently used: entries live
/// in a young and an old generation; a full young generation becomes the old one and the old one
/// is dropped; an entry found in the old generation moves back to the young.
pub struct StateCache {
    young: HashMap<String, (EntityState, u64)>,
    old: HashMap<String, (EntityState, u64)>,
    /// Entries per generation.
    capacity: usize,
    /// Whether this consumer has every partition, and so is the only writer of every key.
    all_partitions: bool,
}

impl StateCache {
    pub fn new(capacity: usize, all_partitions: bool) -> StateCache {
        StateCache {
            young: HashMap::new(),
            old: HashMap::new(),
            capacity: capacity.max(1),
            all_partitions,
        }
    }

    /// Whether `key` is written only by this consumer. Users are partitioned by user id, and
    /// scaling states, label states and due slots by partition; items and categories are shared
    /// by every partition.
    pub fn keeps(&self, key: &str) -> bool {
        self.all_partitions
            || ["user.", "scaling.", "labels.", "due."]
                .iter()
                .any(|prefix| key.starts_with(prefix))
    }

    /// Takes the entry of `key` out of the cache: the caller owns it until it writes it back
    /// with [`StateCache::put`]. A batch that fails leaves what it took out, to be read afresh.
    pub fn take(&mut self, key: &str) -> Option<(EntityState, u64)> {
        self.young.remove(key).or_else(|| self.old.remove(key))
    }

    /// Keeps `state` as the value of `key` at `revision`, if `key` is one this consumer alone
    /// writes.
    pub fn put(&mut self, key: String, state: EntityState, revision: u64) {
        if !self.keeps(&key) {
            return;
        }
        if self.young.len() >= self.capacity && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&key);
        self.young.insert(key, (state, revision));
    }

    /// Entries kept (both generations).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(views: u64) -> EntityState {
        EntityState::User(freshet_features::bookstore::UserState {
            views,
            ..Default::default()
        })
    }

    #[test]
    fn an_entry_is_taken_once_and_put_back_with_its_new_revision() {
        let mut cache = StateCache::new(8, false);
        cache.put("user.u1".into(), user(1), 4);
        assert_eq!(cache.take("user.u1"), Some((user(1), 4)));
        assert_eq!(cache.take("user.u1"), None, "taken entries are gone");
        cache.put("user.u1".into(), user(2), 5);
        assert_eq!(cache.take("user.u1"), Some((user(2), 5)));
    }

    #[test]
    fn shared_keys_are_kept_only_by_a_consumer_of_every_partition() {
        let mut split = StateCache::new(8, false);
        let item = EntityState::empty("item.b1").unwrap();
        split.put("item.b1".into(), item.clone(), 1);
        split.put(
            "category.c1".into(),
            EntityState::empty("category.c1").unwrap(),
            1,
        );
        split.put(
            "scaling.m.0".into(),
            EntityState::empty("scaling.m.0").unwrap(),
            1,
        );
        assert_eq!(split.take("item.b1"), None);
        assert_eq!(split.take("category.c1"), None);
        assert!(split.take("scaling.m.0").is_some());

        let mut whole = StateCache::new(8, true);
        whole.put("item.b1".into(), item.clone(), 1);
        assert_eq!(whole.take("item.b1"), Some((item, 1)));
    }

    #[test]
    fn it_stays_within_two_generations_and_keeps_recent_entries() {
        let mut cache = StateCache::new(2, false);
        for n in 0..10 {
            cache.put(format!("user.u{n}"), user(n), n);
            assert!(cache.len() <= 4, "{} entries", cache.len());
        }
        // The latest entries are kept; the earliest are gone.
        assert_eq!(cache.take("user.u9"), Some((user(9), 9)));
        assert_eq!(cache.take("user.u0"), None);
        // An entry used again moves back to the young generation and outlives older ones.
        let mut cache = StateCache::new(2, false);
        cache.put("user.a".into(), user(1), 1);
        cache.put("user.b".into(), user(2), 1);
        cache.put("user.c".into(), user(3), 1); // a, b become old
        let a = cache.take("user.a").unwrap();
        cache.put("user.a".into(), a.0, a.1); // a young again, with c
        cache.put("user.d".into(), user(4), 1); // young (c, a) becomes old; b dropped
        assert!(cache.take("user.a").is_some());
        assert!(cache.take("user.b").is_none());
    }
}
