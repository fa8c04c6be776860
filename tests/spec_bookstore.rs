//! The bookstore as a spec computes what the hand-written bookstore computes: every user action of
//! a generated stream is planned by featurize's handler (`plan_batch`, which records the features
//! each action saw in its user's mutation) and run through the spec engine with
//! `infra/features/bookstore.toml`, and the two feature vectors agree. Pure: no server.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use freshet::events::{Event, EventData};
use freshet::ids::ModelName;
use freshet::stats::Decay;
use freshet_cli::bookstore::{BookstoreConfig, Traffic, Viral, generate};
use freshet_features::bookstore;
use freshet_features::spec::{self, Engine, EventRef, ReadEvent, States};
use freshet_featurize::handler::{
    EntityState, Mutation, Position, Routed, Settings, plan_batch, work_for,
};
use freshet_featurize::labels::{LabelSettings, Method, NegativeRate};

const SPEC: &str = include_str!("../infra/features/bookstore.toml");

fn settings() -> Settings {
    Settings {
        model: ModelName::parse("bookstore").unwrap(),
        popularity: bookstore::popularity_spec(
            bookstore::DEFAULT_OUT_OF_ORDERNESS,
            bookstore::DEFAULT_ALLOWED_LATENESS,
        )
        .unwrap(),
        labels: LabelSettings {
            horizon: TimeDelta::minutes(30),
            out_of_orderness: TimeDelta::seconds(5),
            negative_rate: NegativeRate::ALL,
            method: Method::FakeNegative,
        },
        scaling_decay: Decay::default(),
        max_future_skew: TimeDelta::minutes(5),
    }
}

/// The features featurize's handler gives each user action, by event id.
fn handler_features(events: &[Event]) -> BTreeMap<String, Vec<f32>> {
    let settings = settings();
    let mut states: BTreeMap<String, EntityState> = BTreeMap::new();
    let mut features = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        let at = event.time.unwrap();
        let routed = Routed {
            event_id: event.id.clone(),
            position: Position {
                partition: 0,
                sequence: i as u64 + 1,
            },
            at,
            received: at,
            work: work_for(event, at),
            trace: None,
        };
        let plan = plan_batch(&settings, &[routed], &mut states);
        assert!(plan.rejected.is_empty(), "{:?}", plan.rejected);
        for mutation in plan.mutations.values().flatten() {
            if let Mutation::UserAction {
                event_id,
                features: vector,
                ..
            } = mutation
            {
                features.insert(event_id.clone(), vector.clone());
            }
        }
    }
    features
}

/// `event` as `engine` reads it (every generated event fits the bookstore spec).
fn read_event(engine: &Engine, event: &Event) -> ReadEvent {
    let cloud = event.to_cloud_event();
    engine
        .read(&EventRef {
            event_type: &cloud.event_type,
            id: &cloud.id,
            time: event.time.unwrap(),
            data: &cloud.data,
        })
        .unwrap()
        .unwrap()
}

/// The features the spec engine gives each user action (before applying it), by event id.
fn engine_features(engine: &Engine, events: &[Event]) -> BTreeMap<String, Vec<f32>> {
    let mut states = States::new();
    let mut features = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        let mut read = read_event(engine, event);
        // What featurize would fetch: the lookups first, then every state the event touches.
        let lookups = engine.lookup_keys(&read);
        engine.resolve(&mut read, &states);
        let touched = engine.state_keys(&read);
        if matches!(event.data, EventData::UserAction(_)) {
            assert!(lookups.iter().all(|k| k.starts_with("bookstore.item.")));
            let vector = engine.features(&read, &states, read.at);
            features.insert(event.id.clone(), vector);
        }
        let position = spec::Position {
            partition: 0,
            sequence: i as u64 + 1,
        };
        let updates = engine.updates(&read, position);
        for update in &updates {
            assert!(touched.contains(&update.key), "{} not fetched", update.key);
            let state = states.entry(update.key.clone()).or_default();
            assert!(engine.apply_update(state, update));
            // A redelivery changes nothing; a state read back from its JSON is the same.
            assert!(!engine.apply_update(state, update));
            *state = spec::EntityState::decode(&state.encode()).unwrap();
        }
    }
    features
}

/// Compares the two on `events`; returns (actions compared, values not bit-identical).
fn compare(events: &[Event], tolerance: f32) -> (usize, usize) {
    let engine = Engine::from_toml(SPEC).unwrap_or_else(|e| panic!("{e}"));
    let schema = engine.schema();
    let hand = bookstore::schema();
    assert_eq!(schema.name, hand.name);
    assert_eq!(schema.version, hand.version);
    assert_eq!(
        schema.features, hand.features,
        "the same features, in order"
    );
    assert_eq!(schema.monitoring, hand.monitoring, "monitored alike");
    let expected = handler_features(events);
    let got = engine_features(&engine, events);
    assert_eq!(got.len(), expected.len());
    let mut inexact = 0;
    for (id, want) in &expected {
        let have = &got[id];
        for (i, (a, b)) in have.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= tolerance,
                "{id}: {} is {a} by the spec, {b} by bookstore.rs\nspec:     {have:?}\nbookstore {want:?}",
                hand.features[i]
            );
            inexact += usize::from(a.to_bits() != b.to_bits());
        }
    }
    (expected.len(), inexact)
}

#[test]
fn the_spec_computes_the_bookstore_features_of_a_generated_stream() {
    let events = generate(&BookstoreConfig {
        users: 40,
        items: 30,
        actions: 4_000,
        seed: 11,
        viral: Some(Viral {
            item: freshet::ids::EntityId::parse("viral").unwrap(),
            at: 0.5,
        }),
        changes: Vec::new(),
        traffic: None,
    });
    let (actions, inexact) = compare(&events, 1e-6);
    assert_eq!(actions, 4_000);
    assert_eq!(inexact, 0, "the same arithmetic gives the same bits");
}

#[test]
fn the_spec_computes_the_bookstore_features_of_live_traffic() {
    // Millisecond event times, purchases minutes after their views, users who leave.
    let start = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap();
    let events = generate(&BookstoreConfig {
        users: 60,
        items: 40,
        actions: 3_000,
        seed: 5,
        viral: None,
        changes: Vec::new(),
        traffic: Some(Traffic {
            purchase_delay: Duration::from_secs(90),
            ..Traffic::live(start, 4.0)
        }),
    });
    let (actions, inexact) = compare(&events, 1e-6);
    assert!(actions > 2_000, "{actions}");
    assert_eq!(inexact, 0, "the same arithmetic gives the same bits");
}

/// The FEATURES bytes featurize would write per user action, and the mean item state: the spec's
/// states are JSON of named aggregates (readable in the bucket, a little larger than
/// bookstore.rs's fields) and it keeps the user's taste under its own key, one write more per
/// action. Deterministic sizes, printed for the record (`cargo test -p freshet-tests --test
/// spec_bookstore -- --nocapture`), bounded so a change that bloats the states is noticed.
#[test]
fn the_spec_states_stay_near_the_size_of_bookstore_rs_states() {
    let events = generate(&BookstoreConfig {
        users: 100,
        items: 50,
        actions: 20_000,
        seed: 1,
        viral: None,
        changes: Vec::new(),
        traffic: None,
    });
    let popularity = settings().popularity;
    let mut users: BTreeMap<String, bookstore::UserState> = BTreeMap::new();
    let mut items: BTreeMap<String, bookstore::ItemState> = BTreeMap::new();
    let mut categories: BTreeMap<String, bookstore::CategoryState> = BTreeMap::new();
    let mut hand_bytes = 0;
    for event in &events {
        let at = event.time.unwrap();
        match &event.data {
            EventData::UserAction(action) => {
                let item = items.entry(action.item.to_string()).or_default();
                let category = item.category.clone();
                let _ = item.apply_action(action.action, at, &popularity, DateTime::<Utc>::MAX_UTC);
                hand_bytes += json_len(&*item);
                let user = users.entry(action.user.to_string()).or_default();
                user.apply(action.action, category.as_deref(), at);
                hand_bytes += json_len(&*user);
                if let Some(category) = category {
                    let state = categories.entry(category).or_default();
                    state.apply(action.action);
                    hand_bytes += json_len(&*state);
                }
            }
            EventData::NewItem(new_item) => {
                let item = items.entry(new_item.item.to_string()).or_default();
                item.apply_new_item(&new_item.category, new_item.price, at);
                hand_bytes += json_len(&*item);
            }
            _ => {}
        }
    }
    let engine = Engine::from_toml(SPEC).unwrap();
    let mut states = States::new();
    let mut spec_bytes = 0;
    for (i, event) in events.iter().enumerate() {
        let mut read = read_event(&engine, event);
        engine.resolve(&mut read, &states);
        let position = spec::Position {
            partition: 0,
            sequence: i as u64 + 1,
        };
        for update in engine.updates(&read, position) {
            let state = states.entry(update.key.clone()).or_default();
            engine.apply_update(state, &update);
            spec_bytes += state.encode().len();
        }
    }
    let mean = |sizes: Vec<usize>| sizes.iter().sum::<usize>() / sizes.len().max(1);
    let hand_item = mean(items.values().map(json_len).collect());
    let spec_item = mean(
        states
            .iter()
            .filter(|(key, _)| key.starts_with("bookstore.item."))
            .map(|(_, s)| s.encode().len())
            .collect(),
    );
    eprintln!(
        "20,000 actions: bookstore.rs writes {hand_bytes} B of state, the spec {spec_bytes} B \
         ({:.2}x); mean item state {hand_item} B and {spec_item} B",
        spec_bytes as f64 / hand_bytes as f64
    );
    assert!(
        spec_item < hand_item * 3 / 2,
        "{spec_item} B vs {hand_item} B"
    );
    assert!(
        spec_bytes < hand_bytes * 2,
        "{spec_bytes} B vs {hand_bytes} B"
    );
}

/// JSON size of a bookstore.rs state.
fn json_len<T: serde::Serialize>(state: &T) -> usize {
    serde_json::to_vec(state).unwrap().len()
}
