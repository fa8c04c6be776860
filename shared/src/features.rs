//! The bookstore features: entity state kept in the FEATURES bucket and the feature vector built
//! from it. featurize (training time) and predict (request time) both call [`feature_vector`], so
//! a model is served exactly the features it learned from.
//!
//! Every state carries, per partition, the highest stream sequence already applied to it. A
//! redelivered event at or below that mark is recognised and not counted twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::Action;
use crate::ids::EntityId;
use crate::model::FeatureSchema;

/// The name of the bookstore feature schema, written into every manifest.
pub const SCHEMA_NAME: &str = "bookstore";
/// Bumped whenever a feature's meaning changes; predictors refuse a model of another version.
pub const SCHEMA_VERSION: u32 = 2;
/// The features, in vector order.
pub const FEATURE_NAMES: [&str; 7] = [
    "user_log_views",
    "user_purchase_rate",
    "user_category_share",
    "item_log_views",
    "item_purchase_rate",
    "item_log_price",
    "item_log_age_hours",
];
/// A user's per-category view counts keep at most this many categories.
const MAX_CATEGORIES_PER_USER: usize = 64;

/// The schema for manifests.
pub fn schema() -> FeatureSchema {
    FeatureSchema {
        name: SCHEMA_NAME.to_string(),
        version: SCHEMA_VERSION,
        features: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
    }
}

/// FEATURES key of a user's state.
pub fn user_key(user: &EntityId) -> String {
    format!("user.{user}")
}

/// FEATURES key of an item's state.
pub fn item_key(item: &EntityId) -> String {
    format!("item.{item}")
}

/// Highest stream sequence applied, per partition: the exactly-once bookkeeping of one entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(BTreeMap<u32, u64>);

impl Applied {
    /// Whether the event at `sequence` of `partition` has already been applied.
    pub fn contains(&self, partition: u32, sequence: u64) -> bool {
        self.0.get(&partition).is_some_and(|&mark| sequence <= mark)
    }

    pub fn record(&mut self, partition: u32, sequence: u64) {
        let mark = self.0.entry(partition).or_insert(0);
        *mark = (*mark).max(sequence);
    }
}

/// What featurize knows about a user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub views: u64,
    pub carts: u64,
    pub purchases: u64,
    pub category_views: BTreeMap<String, u64>,
    pub last_event_at: Option<DateTime<Utc>>,
    pub applied: Applied,
}

/// What featurize knows about an item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemState {
    pub category: Option<String>,
    pub price: Option<f64>,
    pub views: u64,
    pub carts: u64,
    pub purchases: u64,
    pub first_seen: Option<DateTime<Utc>>,
    pub applied: Applied,
}

impl UserState {
    /// Counts one action of this user on an item of `category`.
    pub fn apply(&mut self, action: Action, category: Option<&str>, at: DateTime<Utc>) {
        match action {
            Action::View => {
                self.views += 1;
                if let Some(category) = category {
                    let known = self.category_views.contains_key(category);
                    if known || self.category_views.len() < MAX_CATEGORIES_PER_USER {
                        *self.category_views.entry(category.to_string()).or_insert(0) += 1;
                    }
                }
            }
            Action::AddToCart => self.carts += 1,
            Action::Purchase => self.purchases += 1,
        }
        self.last_event_at = Some(self.last_event_at.map_or(at, |last| last.max(at)));
    }
}

impl ItemState {
    /// Counts one action on this item.
    pub fn apply_action(&mut self, action: Action, at: DateTime<Utc>) {
        match action {
            Action::View => self.views += 1,
            Action::AddToCart => self.carts += 1,
            Action::Purchase => self.purchases += 1,
        }
        self.first_seen = Some(self.first_seen.map_or(at, |first| first.min(at)));
    }

    /// Records the catalogue facts of a `new_item` event.
    pub fn apply_new_item(&mut self, category: &str, price: f64, at: DateTime<Utc>) {
        self.category = Some(category.to_string());
        self.price = Some(price);
        self.first_seen = Some(self.first_seen.map_or(at, |first| first.min(at)));
    }
}

/// The purchase rate assumed for an entity with no history: about what a bookshop sees. A new
/// item starts there, neither buried nor on top, and moves as its own evidence arrives.
pub const PRIOR_PURCHASE_RATE: f64 = 0.1;
/// How many observations the prior is worth.
const PRIOR_WEIGHT: f64 = 4.0;

/// A rate shrunk towards `prior` (additive smoothing): defined and sensible for brand-new
/// entities, and dominated by the entity's own counts once it has a few.
fn smoothed_rate(hits: u64, trials: u64, prior: f64) -> f32 {
    ((hits as f64 + PRIOR_WEIGHT * prior) / (trials as f64 + PRIOR_WEIGHT)) as f32
}

fn log1p(count: f64) -> f32 {
    count.max(0.0).ln_1p() as f32
}

/// The feature vector of a (user, item) pair at time `now`, in [`FEATURE_NAMES`] order. Every
/// value is finite for any state: counts are logged, rates smoothed, and time differences clamped.
pub fn feature_vector(user: &UserState, item: &ItemState, now: DateTime<Utc>) -> Vec<f32> {
    let category_views = item
        .category
        .as_ref()
        .and_then(|c| user.category_views.get(c))
        .copied()
        .unwrap_or(0);
    let age_hours = item
        .first_seen
        .map(|first| (now - first).num_seconds().max(0) as f64 / 3600.0)
        .unwrap_or(0.0);
    vec![
        log1p(user.views as f64),
        smoothed_rate(
            user.purchases,
            user.views.max(user.purchases),
            PRIOR_PURCHASE_RATE,
        ),
        smoothed_rate(category_views, user.views, 0.5),
        log1p(item.views as f64),
        smoothed_rate(
            item.purchases,
            item.views.max(item.purchases),
            PRIOR_PURCHASE_RATE,
        ),
        log1p(item.price.unwrap_or(0.0)),
        log1p(age_hours),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn applied_marks_are_per_partition() {
        let mut applied = Applied::default();
        applied.record(1, 10);
        assert!(applied.contains(1, 10) && applied.contains(1, 3));
        assert!(!applied.contains(1, 11) && !applied.contains(2, 3));
        applied.record(1, 5);
        assert!(applied.contains(1, 10), "a mark never moves back");
    }

    #[test]
    fn features_of_new_entities_are_defined() {
        let v = feature_vector(&UserState::default(), &ItemState::default(), at(0));
        assert_eq!(v.len(), FEATURE_NAMES.len());
        assert_eq!(v, vec![0.0, 0.1, 0.5, 0.0, 0.1, 0.0, 0.0]);
    }

    #[test]
    fn features_follow_the_state() {
        let mut user = UserState::default();
        let mut item = ItemState::default();
        item.apply_new_item("scifi", 19.0, at(0));
        for _ in 0..3 {
            user.apply(Action::View, Some("scifi"), at(10));
            item.apply_action(Action::View, at(10));
        }
        user.apply(Action::Purchase, Some("scifi"), at(20));
        item.apply_action(Action::Purchase, at(20));
        let v = feature_vector(&user, &item, at(7200));
        assert!((v[0] - 4f32.ln()).abs() < 1e-6);
        assert!((v[1] - 1.4 / 7.0).abs() < 1e-6, "(1 + 4·0.1) / (3 + 4)");
        assert!((v[2] - 5.0 / 7.0).abs() < 1e-6, "(3 + 4·0.5) / (3 + 4)");
        assert!((v[5] - 20f32.ln()).abs() < 1e-6);
        assert!((v[6] - 3f32.ln()).abs() < 1e-6, "2 hours old");
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn extreme_states_still_give_finite_features() {
        let user = UserState {
            views: u64::MAX,
            purchases: u64::MAX,
            ..Default::default()
        };
        let item = ItemState {
            price: Some(1e12),
            first_seen: Some(DateTime::<Utc>::MIN_UTC),
            ..Default::default()
        };
        assert!(
            feature_vector(&user, &item, DateTime::<Utc>::MAX_UTC)
                .iter()
                .all(|x| x.is_finite())
        );
    }

    #[test]
    fn a_user_keeps_a_bounded_number_of_categories() {
        let mut user = UserState::default();
        for i in 0..200 {
            user.apply(Action::View, Some(&format!("c{i}")), at(0));
        }
        assert_eq!(user.category_views.len(), MAX_CATEGORIES_PER_USER);
        assert_eq!(user.views, 200);
    }
}
