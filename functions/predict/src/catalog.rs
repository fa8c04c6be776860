//! The item catalogue a predictor recommends from: every `item.*` state in FEATURES, kept current
//! by a KV watch (latest values first, then every change), so a recommend request reads one user
//! key and scores items from memory instead of reading the whole bucket.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use freshet::features::ItemState;
use freshet::runtime::Shutdown;
use futures::StreamExt;

/// One item as last seen, with its FEATURES revision (the provenance of a recommendation).
#[derive(Debug, Clone)]
pub struct CatalogItem {
    pub id: String,
    pub state: ItemState,
    pub revision: u64,
}

/// The items, shared between the watch task and request handlers.
#[derive(Clone, Default)]
pub struct Catalog {
    items: Arc<RwLock<BTreeMap<String, CatalogItem>>>,
}

impl Catalog {
    /// A copy of the items, for scoring outside the lock.
    pub fn snapshot(&self) -> Vec<CatalogItem> {
        self.items
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn apply(&self, entry: kv::Entry) {
        let Some(id) = entry.key.strip_prefix("item.") else {
            return;
        };
        let mut items = self
            .items
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<ItemState>(&entry.value) {
                Ok(state) => {
                    items.insert(
                        id.to_string(),
                        CatalogItem {
                            id: id.to_string(),
                            state,
                            revision: entry.revision,
                        },
                    );
                }
                Err(err) => {
                    tracing::warn!(item = id, error = %err, "unreadable item state; left out of recommendations")
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                items.remove(id);
            }
        }
    }

    /// Follows FEATURES until shutdown, re-establishing the watch if it breaks.
    pub async fn follow(self, features: kv::Store, mut shutdown: Shutdown) {
        while !shutdown.is_triggered() {
            let mut watch = match features.watch_with_history("item.*").await {
                Ok(watch) => watch,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot watch the item catalogue; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    next = watch.next() => match next {
                        Some(Ok(entry)) => self.apply(entry),
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "catalogue watch error; re-watching");
                            break;
                        }
                        None => break,
                    },
                    _ = shutdown.wait() => return,
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
