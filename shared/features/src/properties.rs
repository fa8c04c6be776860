//! Property tests (proptest) of the feature builder: a feature vector is finite for any entity
//! states and any time, however large the counts, odd the price or far the dates. They run in
//! `make test` with a bounded number of cases. (The event decoder's properties are in the
//! contract crate.)

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;

use crate::bookstore::{CategoryState, ItemState, UserState, feature_vector};

fn time() -> impl Strategy<Value = Option<DateTime<Utc>>> {
    prop::option::of((-62_000_000_000i64..250_000_000_000).prop_map(|s| {
        Utc.timestamp_opt(s, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
    }))
}

fn counts() -> impl Strategy<Value = (u64, u64, u64)> {
    (any::<u64>(), any::<u64>(), any::<u64>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn a_feature_vector_is_finite_for_any_state(
        (views, carts, purchases) in counts(),
        (item_views, item_carts, item_purchases) in counts(),
        (category_views, category_carts, category_purchases) in counts(),
        price in prop::option::of(prop_oneof![any::<f64>(), Just(1e12), Just(-1.0), Just(f64::NAN)]),
        user_seen in time(),
        item_seen in time(),
        first_seen in time(),
        now in time(),
    ) {
        let user = UserState { views, carts, purchases, last_event_at: user_seen, ..UserState::default() };
        let item = ItemState {
            category: Some("c".into()), price, views: item_views, carts: item_carts,
            purchases: item_purchases, first_seen, last_event_at: item_seen, ..ItemState::default()
        };
        let category = CategoryState {
            views: category_views, carts: category_carts, purchases: category_purchases, ..CategoryState::default()
        };
        let now = now.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let vector = feature_vector(&user, &item, &category, now);
        prop_assert!(vector.iter().all(|x| x.is_finite()), "{vector:?}");
    }
}
