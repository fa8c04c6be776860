//! The item catalogue a predictor recommends from: every `item.*` state in FEATURES, and every
//! `category.*` state (the priors of the items' features), kept current by a KV watch (latest
//! values first, then every change), so a recommend request reads one user key and scores items
//! from memory instead of reading the whole bucket.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use freshet::shutdown::Shutdown;
use freshet_features::bookstore::{CategoryState, ItemState, category_key};
use futures::StreamExt;

/// One item as last seen, with its FEATURES revision (the provenance of a recommendation).
#[derive(Debug, Clone)]
pub struct CatalogItem {
    pub id: String,
    pub state: ItemState,
    pub revision: u64,
}

/// The items and categories, shared between the watch task and request handlers.
#[derive(Clone, Default)]
pub struct Catalog {
    items: Arc<RwLock<BTreeMap<String, CatalogItem>>>,
    /// By FEATURES key (`category.<escaped name>`).
    categories: Arc<RwLock<BTreeMap<String, CategoryState>>>,
}

/// The categories as last seen, for scoring outside the lock.
#[derive(Debug, Clone, Default)]
pub struct Categories(BTreeMap<String, CategoryState>);

impl Categories {
    /// The state of `item`'s category; the empty one (the bookshop-wide prior) for an item
    /// without a category or one not seen yet.
    pub fn of(&self, item: &ItemState) -> CategoryState {
        item.category
            .as_deref()
            .and_then(|name| self.0.get(&category_key(name)))
            .cloned()
            .unwrap_or_default()
    }
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

    /// A copy of the categories, for scoring outside the lock.
    pub fn categories(&self) -> Categories {
        Categories(
            self.categories
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        )
    }

    fn apply(&self, entry: kv::Entry) {
        self.apply_change(&entry.key, entry.operation, &entry.value, entry.revision);
    }

    fn apply_change(&self, key: &str, operation: kv::Operation, value: &[u8], revision: u64) {
        if key.starts_with("category.") {
            let mut categories = self
                .categories
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match operation {
                kv::Operation::Put => match serde_json::from_slice::<CategoryState>(value) {
                    Ok(state) => {
                        categories.insert(key.to_string(), state);
                    }
                    Err(err) => {
                        // Its items then score with the bookshop-wide prior.
                        categories.remove(key);
                        tracing::warn!(key, error = %err, "unreadable category state; its items use the default prior")
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => {
                    categories.remove(key);
                }
            }
            return;
        }
        let Some(id) = key.strip_prefix("item.") else {
            return;
        };
        let mut items = self
            .items
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match operation {
            kv::Operation::Put => match serde_json::from_slice::<ItemState>(value) {
                Ok(state) => {
                    items.insert(
                        id.to_string(),
                        CatalogItem {
                            id: id.to_string(),
                            state,
                            revision,
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
            let mut watch = match features
                .watch_many_with_history(["item.*", "category.*"])
                .await
            {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn put(catalog: &Catalog, key: &str, json: serde_json::Value, revision: u64) {
        let bytes = serde_json::to_vec(&json).unwrap();
        catalog.apply_change(key, kv::Operation::Put, &bytes, revision);
    }

    #[test]
    fn items_and_categories_follow_the_bucket() {
        let catalog = Catalog::default();
        let item = ItemState {
            category: Some("Science Fiction".into()),
            views: 3,
            ..Default::default()
        };
        put(&catalog, "item.b1", serde_json::to_value(&item).unwrap(), 7);
        let category = CategoryState {
            views: 10,
            purchases: 4,
            ..Default::default()
        };
        put(
            &catalog,
            "category.Science_20Fiction",
            serde_json::to_value(&category).unwrap(),
            8,
        );
        put(&catalog, "user.u1", serde_json::json!({}), 9);
        let items = catalog.snapshot();
        assert_eq!(items.len(), 1);
        assert_eq!((items[0].id.as_str(), items[0].revision), ("b1", 7));
        assert_eq!(catalog.categories().of(&items[0].state), category);
        assert_eq!(
            catalog.categories().of(&ItemState::default()),
            CategoryState::default()
        );

        put(
            &catalog,
            "category.Science_20Fiction",
            serde_json::json!([1]),
            10,
        );
        assert_eq!(
            catalog.categories().of(&items[0].state),
            CategoryState::default(),
            "an unreadable category falls back to the prior"
        );
        catalog.apply_change("item.b1", kv::Operation::Delete, &[], 11);
        assert!(catalog.snapshot().is_empty());
    }
}
