//! Model pointers in memory, for unit tests of what reads and moves them (a follower, the gate,
//! the CLI's moves) without a server. It keeps the KV bucket's rules: one revision counter for
//! every key, compare-and-set on a key's last revision, removals kept in the history, and a
//! watch that delivers the key's current value first (a removal included), then every change.
//!
//! A test can also write what no verified move would (a pointer to a missing or damaged
//! version) with [`MemoryPointers::force`], and break the open watches with
//! [`MemoryPointers::break_watches`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use futures::channel::mpsc;

use crate::store::hold::{self, Hold};
use crate::store::pointers::{Pointer, PointerChange, PointerChanges, PointerStore, Slot, sealed};
use freshet::error::Failure;
use freshet::ids::ModelName;
use freshet::store::kv::{CasError, Versioned};

type Watcher = mpsc::UnboundedSender<Result<PointerChange, Failure>>;

#[derive(Default)]
struct State {
    /// The last revision written, to any key.
    revision: u64,
    /// Every write of each key, oldest first: its revision and the pointer (`None`: removed).
    keys: BTreeMap<String, Vec<(u64, Option<Pointer>)>>,
    holds: BTreeMap<String, Vec<(u64, Option<Hold>)>>,
    watchers: Vec<(String, Watcher)>,
}

impl State {
    fn last_revision(&self, key: &str) -> u64 {
        self.keys
            .get(key)
            .and_then(|writes| writes.last())
            .map_or(0, |(revision, _)| *revision)
    }

    /// Appends a write and tells the key's watchers.
    fn append(&mut self, key: &str, value: Option<Pointer>) -> u64 {
        self.revision += 1;
        let revision = self.revision;
        let change = change(revision, value.clone());
        self.keys
            .entry(key.to_string())
            .or_default()
            .push((revision, value));
        self.watchers.retain(|(watched, watcher)| {
            watched != key || watcher.unbounded_send(Ok(change.clone())).is_ok()
        });
        revision
    }

    fn compare_and_append(
        &mut self,
        key: &str,
        value: Option<Pointer>,
        expected: u64,
    ) -> Result<u64, CasError> {
        if self.last_revision(key) != expected {
            return Err(CasError::Conflict {
                key: key.to_string(),
                expected,
            });
        }
        Ok(self.append(key, value))
    }
}

fn change(revision: u64, value: Option<Pointer>) -> PointerChange {
    match value {
        Some(pointer) => PointerChange::Set { revision, pointer },
        None => PointerChange::Removed { revision },
    }
}

/// Model pointers kept in memory; clones share them.
#[derive(Clone, Default)]
pub struct MemoryPointers {
    state: Arc<Mutex<State>>,
}

impl MemoryPointers {
    pub fn new() -> MemoryPointers {
        MemoryPointers::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; its data is intact.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `value` (`None`: removes the pointer) without any check, as a writer that
    /// verifies nothing would; returns the revision.
    pub fn force(&self, model: &ModelName, slot: Slot, value: Option<Pointer>) -> u64 {
        self.state().append(&slot.key(model), value)
    }

    /// Ends every open watch with an error, as a lost connection would.
    pub fn break_watches(&self) {
        for (_, watcher) in self.state().watchers.drain(..) {
            let _ = watcher
                .unbounded_send(Err(Failure::new("watch a pointer", "the watch was broken")));
        }
    }

    /// How many watches are open now.
    pub fn open_watches(&self) -> usize {
        let mut state = self.state();
        state.watchers.retain(|(_, watcher)| !watcher.is_closed());
        state.watchers.len()
    }
}

impl sealed::Write for MemoryPointers {
    async fn put(
        &self,
        model: &ModelName,
        slot: Slot,
        pointer: &Pointer,
        expected: u64,
    ) -> Result<u64, CasError> {
        self.state()
            .compare_and_append(&slot.key(model), Some(pointer.clone()), expected)
    }

    async fn remove(&self, model: &ModelName, slot: Slot, expected: u64) -> Result<(), CasError> {
        self.state()
            .compare_and_append(&slot.key(model), None, expected)
            .map(|_| ())
    }
}

impl PointerStore for MemoryPointers {
    async fn hold(&self, model: &ModelName) -> Result<Versioned<Hold>, Failure> {
        let state = self.state();
        let last = state.holds.get(&hold::key(model)).and_then(|w| w.last());
        Ok(match last {
            Some((revision, value)) => Versioned {
                value: value.clone(),
                revision: *revision,
            },
            None => Versioned {
                value: None,
                revision: 0,
            },
        })
    }

    async fn set_hold(
        &self,
        model: &ModelName,
        value: Option<&Hold>,
        expected: u64,
    ) -> Result<u64, CasError> {
        let key = hold::key(model);
        let mut state = self.state();
        let last = state
            .holds
            .get(&key)
            .and_then(|w| w.last())
            .map_or(0, |(revision, _)| *revision);
        if last != expected {
            return Err(CasError::Conflict { key, expected });
        }
        state.revision += 1;
        let revision = state.revision;
        state
            .holds
            .entry(key)
            .or_default()
            .push((revision, value.cloned()));
        Ok(revision)
    }

    async fn get(&self, model: &ModelName, slot: Slot) -> Result<Versioned<Pointer>, Failure> {
        let state = self.state();
        let last = state
            .keys
            .get(&slot.key(model))
            .and_then(|writes| writes.last());
        Ok(match last {
            Some((revision, value)) => Versioned {
                value: value.clone(),
                revision: *revision,
            },
            None => Versioned {
                value: None,
                revision: 0,
            },
        })
    }

    async fn history(&self, model: &ModelName, slot: Slot) -> Result<Vec<(u64, Pointer)>, Failure> {
        let state = self.state();
        Ok(state
            .keys
            .get(&slot.key(model))
            .into_iter()
            .flatten()
            .filter_map(|(revision, value)| Some((*revision, value.clone()?)))
            .collect())
    }

    async fn watch(&self, model: &ModelName, slot: Slot) -> Result<PointerChanges, Failure> {
        let key = slot.key(model);
        let (sender, receiver) = mpsc::unbounded();
        let mut state = self.state();
        if let Some((revision, value)) = state.keys.get(&key).and_then(|w| w.last()) {
            let _ = sender.unbounded_send(Ok(change(*revision, value.clone())));
        }
        state.watchers.push((key, sender));
        Ok(receiver.boxed())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::store::pointers::Cause;
    use crate::store::pointers::sealed::Write as _;

    fn pointer(version: u64) -> Pointer {
        Pointer {
            version,
            sha256: format!("{version:02x}"),
            updated_at: Utc::now(),
            cause: Cause::Operator,
            reason: "test".into(),
        }
    }

    #[tokio::test]
    async fn writes_compare_and_set_and_watches_start_from_the_current_value() {
        let store = MemoryPointers::new();
        let model = ModelName::parse("m").unwrap();
        assert_eq!(store.force(&model, Slot::Live, Some(pointer(1))), 1);
        assert_eq!(store.force(&model, Slot::Candidate, Some(pointer(2))), 2);
        let mut watch = store.watch(&model, Slot::Live).await.unwrap();
        assert!(matches!(
            watch.next().await,
            Some(Ok(PointerChange::Set { revision: 1, .. }))
        ));
        assert!(matches!(
            store.put(&model, Slot::Live, &pointer(3), 0).await,
            Err(CasError::Conflict { .. })
        ));
        assert_eq!(
            store.put(&model, Slot::Live, &pointer(3), 1).await.unwrap(),
            3
        );
        store.remove(&model, Slot::Live, 3).await.unwrap();
        assert!(matches!(
            watch.next().await,
            Some(Ok(PointerChange::Set { revision: 3, .. }))
        ));
        assert_eq!(
            watch.next().await.unwrap().unwrap(),
            PointerChange::Removed { revision: 4 }
        );
        let got = store.get(&model, Slot::Live).await.unwrap();
        assert_eq!((got.value, got.revision), (None, 4));
        let versions: Vec<u64> = store
            .history(&model, Slot::Live)
            .await
            .unwrap()
            .iter()
            .map(|(_, p)| p.version)
            .collect();
        assert_eq!(versions, [1, 3]);
        store.break_watches();
        assert!(watch.next().await.unwrap().is_err());
        assert!(watch.next().await.is_none());
    }
}
