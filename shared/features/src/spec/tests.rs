//! The spec and the engine, tested on small specs: every aggregation against values computed by
//! hand, exactly-once application, events that do not fit, and the problems a spec can have.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::*;
use freshet::monitoring::Watch;
use freshet::stats::{Decay, Ewma};

/// A time `seconds` after a whole minute.
fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_699_999_980 + seconds, 0).unwrap()
}

/// Compiles `text`, pinning whatever fingerprint it has.
fn engine(text: &str) -> Engine {
    let fingerprint = compile_unpinned(text)
        .unwrap_or_else(|e| panic!("{e}"))
        .fingerprint();
    let pinned = text.replacen(
        "[schema]\n",
        &format!("[schema]\nfingerprint = \"{fingerprint}\"\n"),
        1,
    );
    Engine::from_toml(&pinned).unwrap_or_else(|e| panic!("{e}"))
}

/// The problems of a spec that does not compile, as `LINE:COL: message` lines.
fn problems(text: &str) -> Vec<String> {
    match compile_unpinned(text) {
        Ok(_) => panic!("compiled:\n{text}"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

const HEAD: &str = r#"[schema]
name = "t"
version = 1

[events.e.fields]
k = { path = "k", type = "string" }
x = { path = "m.x", type = "number" }
c = { path = "c", type = "string" }
tag = { path = "tag", type = "string", optional = true }

[events.f.fields]
k = { path = "k", type = "string" }

[entities.ent]
key = ["k"]
events = ["e", "f"]

[windows.minute]
size = "1m"
history = 10
out_of_orderness = "5s"
allowed_lateness = "1m"

[label]
example = { event = "e" }
positive = { event = "f" }
match = ["k"]
horizon = "1h"
feedback = "wait"
"#;

/// A spec of HEAD plus these features, each emitted and watched.
fn spec(features: &[&str]) -> String {
    let mut text = HEAD.to_string();
    for feature in features {
        text.push_str("\n[[feature]]\n");
        text.push_str(feature);
        if !feature.contains("emit = false") {
            text.push_str("\nwatch = \"value\"\nreason = \"a test feature, watched as it is\"\n");
        }
    }
    text
}

fn e(k: &str, x: f64, c: &str) -> serde_json::Value {
    json!({"k": k, "m": {"x": x}, "c": c})
}

/// Runs `events` (type, data, seconds) in order at consecutive positions, returns the states.
fn run(engine: &Engine, events: &[(&str, serde_json::Value, i64)]) -> States {
    let mut states = States::new();
    for (sequence, (kind, data, seconds)) in events.iter().enumerate() {
        let mut read = read_event(engine, kind, &format!("ev{sequence}"), *seconds, data);
        engine.resolve(&mut read, &states);
        let position = Position {
            partition: 0,
            sequence: sequence as u64 + 1,
        };
        engine.apply(&read, position, &mut states);
    }
    states
}

/// An event of type `event_type` with id `id` at `seconds`, read by `engine` (it fits the spec).
fn read_event(
    engine: &Engine,
    event_type: &str,
    id: &str,
    seconds: i64,
    data: &serde_json::Value,
) -> ReadEvent {
    engine
        .read(&EventRef {
            event_type,
            id,
            time: at(seconds),
            data,
        })
        .unwrap()
        .unwrap()
}

/// The features of an `e` event with `data` at `seconds`.
fn features(engine: &Engine, states: &States, data: serde_json::Value, seconds: i64) -> Vec<f32> {
    let read = read_event(engine, "e", "probe", seconds, &data);
    engine.features(&read, states, at(seconds))
}

fn close(a: f32, b: f64) -> bool {
    (f64::from(a) - b).abs() < 1e-5 * (1.0 + b.abs())
}

#[test]
fn counts_sums_and_extremes_follow_the_events() {
    let engine = engine(&spec(&[
        "name = \"n\"\nkind = \"count\"\nentity = \"ent\"",
        "name = \"n_e\"\nkind = \"count\"\nentity = \"ent\"\non = [\"e\"]",
        "name = \"n_red\"\nkind = \"count\"\nentity = \"ent\"\non = [\"e\"]\nwhere = { c = [\"red\", \"crimson\"] }",
        "name = \"sum\"\nkind = \"sum\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"",
        "name = \"mean\"\nkind = \"mean\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"",
        "name = \"std\"\nkind = \"std\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"",
        "name = \"min\"\nkind = \"min\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"",
        "name = \"max\"\nkind = \"max\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"",
        "name = \"last\"\nkind = \"last\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\ndefault = -1",
        "name = \"delta\"\nkind = \"delta\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"",
    ]));
    let fresh = features(&engine, &States::new(), e("a", 5.0, "red"), 0);
    assert_eq!(
        fresh,
        vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    );
    let states = run(
        &engine,
        &[
            ("e", e("a", 2.0, "red"), 0),
            ("e", e("a", 4.0, "blue"), 1),
            ("f", json!({"k": "a"}), 2),
            ("e", e("a", 9.0, "crimson"), 3),
            ("e", e("b", 100.0, "red"), 4),
        ],
    );
    let v = features(&engine, &states, e("a", 5.0, "red"), 10);
    let std = ((4.0 + 16.0 + 81.0) / 3.0 - 25.0f64).sqrt();
    let expected = [4.0, 3.0, 2.0, 15.0, 5.0, std, 2.0, 9.0, 9.0, -4.0];
    for (i, (got, want)) in v.iter().zip(expected).enumerate() {
        assert!(
            close(*got, want),
            "{}: {got} != {want}",
            engine.feature_names()[i]
        );
    }
}

#[test]
fn distinct_values_are_bounded_and_tell_what_is_new() {
    let engine = engine(&spec(&[
        "name = \"colours\"\nkind = \"distinct\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"c\"\nmax = 2",
        "name = \"new\"\nkind = \"is_new\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"c\"\nmax = 2",
    ]));
    assert_eq!(
        features(&engine, &States::new(), e("a", 0.0, "red"), 0),
        vec![0.0, 1.0],
        "anything is new to an entity never seen"
    );
    let states = run(
        &engine,
        &[
            ("e", e("a", 0.0, "red"), 0),
            ("e", e("a", 0.0, "red"), 1),
            ("e", e("a", 0.0, "blue"), 2),
            ("e", e("a", 0.0, "green"), 3),
        ],
    );
    assert_eq!(
        features(&engine, &states, e("a", 0.0, "red"), 5),
        vec![2.0, 0.0]
    );
    assert_eq!(
        features(&engine, &states, e("a", 0.0, "green"), 5),
        vec![2.0, 1.0],
        "past the bound a value is not remembered, so it stays new"
    );
}

#[test]
fn times_since_are_in_their_unit_and_never_negative() {
    let engine = engine(&spec(&[
        "name = \"idle_m\"\nkind = \"since_last\"\nentity = \"ent\"\nunit = \"m\"\ndefault = 99",
        "name = \"age_h\"\nkind = \"since_first\"\nentity = \"ent\"\nunit = \"h\"",
        "name = \"idle_e\"\nkind = \"since_last\"\nentity = \"ent\"\non = [\"e\"]",
    ]));
    assert_eq!(
        features(&engine, &States::new(), e("a", 0.0, "r"), 0),
        vec![99.0, 0.0, 0.0]
    );
    let states = run(
        &engine,
        &[
            ("e", e("a", 0.0, "r"), 600),
            ("f", json!({"k": "a"}), 1200),
            ("e", e("a", 0.0, "r"), 300),
        ],
    );
    let v = features(&engine, &states, e("a", 0.0, "r"), 1200 + 3 * 60);
    assert!(close(v[0], 3.0), "{v:?}");
    assert!(
        close(v[1], (1380.0 - 300.0) / 3600.0),
        "the earliest event, not the first applied"
    );
    assert!(close(v[2], 1380.0 - 600.0), "the latest e");
    let before = features(&engine, &states, e("a", 0.0, "r"), 0);
    assert_eq!(before, vec![0.0, 0.0, 0.0]);
}

#[test]
fn ewma_moments_and_zscores_are_freshet_stats() {
    let engine = engine(&spec(&[
        "name = \"mu\"\nkind = \"ewma_mean\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\ndecay = 0.8",
        "name = \"sigma\"\nkind = \"ewma_std\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\ndecay = 0.8",
        "name = \"z\"\nkind = \"zscore\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\ndecay = 0.8\ntransform = [\"clamp(-3, 3)\"]",
    ]));
    let xs = [1.0, 3.0, 2.0, 8.0];
    let mut reference = Ewma::new(Decay::new(0.8).unwrap());
    let mut events = Vec::new();
    for (i, x) in xs.iter().enumerate() {
        reference.update(*x).unwrap();
        events.push(("e", e("a", *x, "r"), i as i64));
    }
    assert_eq!(
        engine.plan().entities[0].slots.len(),
        1,
        "three features share one EWMA"
    );
    let states = run(&engine, &events);
    let v = features(&engine, &states, e("a", 4.0, "r"), 10);
    let m = reference.moments();
    assert!(close(v[0], m.mean().unwrap()));
    assert!(close(v[1], m.std_dev().unwrap()));
    assert!(close(v[2], reference.standardize(4.0).clamp(-3.0, 3.0)));
    let far = features(&engine, &states, e("a", 1e9, "r"), 10);
    assert_eq!(far[2], 3.0, "clamped");
}

#[test]
fn decayed_counts_halve_every_half_life() {
    let engine = engine(&spec(&[
        "name = \"d\"\nkind = \"decayed_count\"\nentity = \"ent\"\nhalf_life = \"1m\"",
        "name = \"ds\"\nkind = \"decayed_sum\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\nhalf_life = \"1m\"",
    ]));
    let states = run(
        &engine,
        &[
            ("e", e("a", 4.0, "r"), 0),
            ("e", e("a", 2.0, "r"), 60),
            // Out of order: counted at its own time's weight.
            ("f", json!({"k": "a"}), 0),
        ],
    );
    let v = features(&engine, &states, e("a", 0.0, "r"), 120);
    assert!(close(v[0], 0.25 + 0.5 + 0.25), "{v:?}");
    assert!(close(v[1], 4.0 * 0.25 + 2.0 * 0.5), "{v:?}");
}

#[test]
fn windowed_aggregates_sum_the_span_and_refuse_late_events() {
    let engine = engine(&spec(&[
        "name = \"n5\"\nkind = \"count\"\nentity = \"ent\"\non = [\"e\"]\nwindow = \"minute\"\nspan = 5",
        "name = \"red5\"\nkind = \"count\"\nentity = \"ent\"\non = [\"e\"]\nwhere = { c = \"red\" }\nwindow = \"minute\"\nspan = 5",
        "name = \"sum5\"\nkind = \"sum\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\nwindow = \"minute\"\nspan = 5",
        "name = \"mean1\"\nkind = \"mean\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\nwindow = \"minute\"\ndefault = -1",
        "name = \"std5\"\nkind = \"std\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\nwindow = \"minute\"\nspan = 5",
    ]));
    let windows = |engine: &Engine| {
        engine.plan().entities[0]
            .slots
            .iter()
            .filter(|s| s.id.starts_with("windows"))
            .count()
    };
    assert_eq!(
        windows(&engine),
        3,
        "the plain count shares the red count's windows; the sum and the squares have their own"
    );
    let states = run(
        &engine,
        &[
            ("e", e("a", 1.0, "red"), 0),
            ("e", e("a", 3.0, "blue"), 70),
            ("e", e("a", 5.0, "red"), 130),
            // Late: the watermark is 125 s, the window [0, 60) is final at 120 s.
            ("e", e("a", 100.0, "red"), 10),
            ("e", e("a", 7.0, "blue"), 400),
        ],
    );
    // At 150 s the span is [−120, 180): the first three events.
    let v = features(&engine, &states, e("a", 0.0, "r"), 150);
    let std = ((1.0 + 9.0 + 25.0) / 3.0 - 9.0f64).sqrt();
    for (got, want) in v.iter().zip([3.0, 2.0, 9.0, 5.0, std]) {
        assert!(close(*got, want), "{v:?}");
    }
    // At 400 s the span is [120, 420): the third and the last; the current minute the last.
    let v = features(&engine, &states, e("a", 0.0, "r"), 400);
    for (got, want) in v.iter().zip([2.0, 1.0, 12.0, 7.0, 1.0]) {
        assert!(close(*got, want), "{v:?}");
    }
    // An empty current window gives the mean's default.
    let v = features(&engine, &states, e("a", 0.0, "r"), 500);
    assert_eq!(v[3], -1.0);
}

#[test]
fn derived_features_combine_others_in_any_declared_order() {
    let engine = engine(&spec(&[
        // Declared before what it reads.
        "name = \"rate\"\nkind = \"rate\"\nhits = \"reds\"\ntrials = \"all\"\nprior = \"prior\"\nweight = 4",
        "name = \"reds\"\nkind = \"count\"\nentity = \"ent\"\non = [\"e\"]\nwhere = { c = \"red\" }\nemit = false",
        "name = \"all\"\nkind = \"count\"\nentity = \"ent\"\non = [\"e\"]\nemit = false",
        "name = \"prior\"\nkind = \"value\"\nfield = \"x\"",
        "name = \"share\"\nkind = \"ratio\"\nof = [\"reds\", \"all\"]\ndefault = 0.5",
        "name = \"others\"\nkind = \"difference\"\nof = [\"all\", \"reds\"]\ntransform = [\"log1p\", \"scale(2)\"]",
        "name = \"fresh\"\nkind = \"since_first\"\nentity = \"ent\"\ntransform = [\"exp_decay(60)\"]",
    ]));
    assert_eq!(
        engine.feature_names(),
        vec!["rate", "prior", "share", "others", "fresh"]
    );
    let v = features(&engine, &States::new(), e("a", 0.25, "r"), 0);
    assert_eq!(v, vec![0.25, 0.25, 0.5, 0.0, 1.0]);
    let states = run(
        &engine,
        &[
            ("e", e("a", 0.0, "red"), 0),
            ("e", e("a", 0.0, "red"), 1),
            ("e", e("a", 0.0, "blue"), 2),
        ],
    );
    let v = features(&engine, &states, e("a", 0.25, "r"), 60);
    assert!(close(v[0], (2.0 + 4.0 * 0.25) / (3.0 + 4.0)));
    assert!(close(v[2], 2.0 / 3.0));
    assert!(close(v[3], 2.0 * 2f64.ln()));
    assert!(close(v[4], (-1.0f64).exp()));
}

#[test]
fn every_feature_is_finite_for_extreme_inputs() {
    let engine = engine(&spec(&[
        "name = \"z\"\nkind = \"zscore\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\ndecay = 0.5",
        "name = \"sum\"\nkind = \"sum\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"",
        "name = \"std\"\nkind = \"std\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\nwindow = \"minute\"",
        "name = \"r\"\nkind = \"ratio\"\nof = [\"sum\", \"z\"]",
        "name = \"d\"\nkind = \"decayed_sum\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\nhalf_life = \"1ms\"",
    ]));
    let big = 1e12;
    let states = run(
        &engine,
        &[
            ("e", e("a", big, "r"), 0),
            ("e", e("a", -big, "r"), 0),
            ("e", e("a", big, "r"), 0),
        ],
    );
    for now in [0, -1_000_000_000, 1_000_000_000] {
        for x in [big, -big, 0.0] {
            let v = features(&engine, &states, e("a", x, "r"), now);
            assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
        }
    }
}

#[test]
fn an_event_counts_once_and_states_survive_json() {
    let engine = engine(&spec(&[
        "name = \"n\"\nkind = \"count\"\nentity = \"ent\"",
        "name = \"w\"\nkind = \"count\"\nentity = \"ent\"\nwindow = \"minute\"",
    ]));
    let data = e("a", 1.0, "r");
    let read = read_event(&engine, "e", "x", 0, &data);
    let position = Position {
        partition: 2,
        sequence: 7,
    };
    let updates = engine.updates(&read, position);
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].key, "t.ent.a");
    let mut state = EntityState::default();
    assert!(engine.apply_update(&mut state, &updates[0]));
    assert!(
        !engine.apply_update(&mut state, &updates[0]),
        "a redelivery"
    );
    let decoded = EntityState::decode(&state.encode()).unwrap();
    assert_eq!(decoded, state);
    let states = States::from([(updates[0].key.clone(), decoded)]);
    assert_eq!(engine.features(&read, &states, at(1)), vec![1.0, 1.0]);
    // Another partition's event at the same sequence is another event.
    let other = engine.updates(
        &read,
        Position {
            partition: 3,
            sequence: 7,
        },
    );
    assert!(engine.apply_update(&mut state, &other[0]));
}

#[test]
fn keys_escape_what_a_kv_key_cannot_hold() {
    let engine = engine(&spec(&["name = \"n\"\nkind = \"count\"\nentity = \"ent\""]));
    let data = e("Sci Fi/é", 1.0, "r");
    let read = read_event(&engine, "e", "x", 0, &data);
    assert_eq!(engine.state_keys(&read), vec!["t.ent.Sci_20Fi_2F_C3_A9"]);
}

#[test]
fn events_that_do_not_fit_name_the_field() {
    let engine = engine(&spec(&["name = \"n\"\nkind = \"count\"\nentity = \"ent\""]));
    let read = |kind: &str, data: serde_json::Value| {
        engine.read(&EventRef {
            event_type: kind,
            id: "x",
            time: at(0),
            data: &data,
        })
    };
    assert_eq!(read("other", json!({})), Ok(None), "not this spec's event");
    let missing = read("e", json!({"k": "a", "c": "r", "m": {}})).unwrap_err();
    assert_eq!(missing.path(), "data.m.x");
    assert_eq!(missing.to_string(), "data.m.x is missing");
    let wrong = read("e", json!({"k": "a", "c": "r", "m": {"x": "1"}})).unwrap_err();
    assert_eq!(wrong.to_string(), "data.m.x must be a number, got a string");
    let huge = read("e", json!({"k": "a", "c": "r", "m": {"x": 1e13}})).unwrap_err();
    assert_eq!(huge.path(), "data.m.x");
    let empty = read("e", json!({"k": "", "c": "r", "m": {"x": 1}})).unwrap_err();
    assert_eq!(empty.path(), "data.k");
    let not_object = read("e", json!([1, 2])).unwrap_err();
    assert_eq!(not_object.path(), "data.c");
    // An optional field may be absent or null, but not of the wrong type.
    assert!(read("e", json!({"k": "a", "c": "r", "m": {"x": 1}, "tag": null})).is_ok());
    let tag = read("e", json!({"k": "a", "c": "r", "m": {"x": 1}, "tag": 3})).unwrap_err();
    assert_eq!(tag.path(), "data.tag");
}

const FRAUD: &str = include_str!("../../../../infra/features/fraud.toml");
const SENSORS: &str = include_str!("../../../../infra/features/sensors.toml");

#[test]
fn the_shipped_specs_compile_and_every_feature_is_monitored() {
    for text in [FRAUD, SENSORS] {
        let engine = Engine::from_toml(text).unwrap_or_else(|e| panic!("{e}"));
        let schema = engine.schema();
        assert_eq!(schema.features.len(), schema.monitoring.len());
        assert!(schema.monitoring.iter().all(|m| m.reason.len() > 20));
        assert_eq!(freshet::store::declarations::validate(&schema), Ok(()));
    }
}

#[test]
fn a_chargeback_counts_against_the_merchant_it_looks_up() {
    let engine = Engine::from_toml(FRAUD).unwrap();
    let txn = |id: &str, card: &str, merchant: &str, amount: f64, country: &str| {
        json!({"id": id, "card": card, "merchant": merchant, "merchant_category": "electronics",
               "amount": amount, "country": country})
    };
    let mut states = States::new();
    let mut step = |kind: &str, data: serde_json::Value, seconds: i64, sequence: u64| {
        let mut read = read_event(&engine, kind, &format!("ev{sequence}"), seconds, &data);
        for key in engine.lookup_keys(&read) {
            assert!(key.starts_with("fraud.transaction."), "{key}");
        }
        engine.resolve(&mut read, &states);
        let features = engine
            .example_match(&read)
            .map(|_| engine.features(&read, &states, read.at));
        engine.apply(
            &read,
            Position {
                partition: 0,
                sequence,
            },
            &mut states,
        );
        (read, features)
    };
    step("transaction", txn("t1", "c1", "m1", 20.0, "FR"), 0, 1);
    step("transaction", txn("t2", "c1", "m1", 25.0, "FR"), 10, 2);
    let (chargeback, none) = step(
        "chargeback",
        json!({"card": "c1", "transaction": "t1"}),
        7_200,
        3,
    );
    assert!(none.is_none(), "a chargeback makes no example");
    assert_eq!(
        engine.value(&chargeback, "merchant"),
        Some(&Value::Str("m1".into()))
    );
    assert_eq!(
        engine.positive_match(&chargeback),
        Some(vec!["t1".to_string()])
    );
    // A chargeback of a transaction never seen counts against no merchant.
    step(
        "chargeback",
        json!({"card": "c9", "transaction": "t404"}),
        7_201,
        4,
    );
    let (probe, v) = step("transaction", txn("t3", "c1", "m1", 2000.0, "US"), 7_202, 5);
    assert_eq!(engine.example_match(&probe), Some(vec!["t3".to_string()]));
    let v = v.unwrap();
    let names = engine.feature_names();
    let get = |name: &str| v[names.iter().position(|n| *n == name).unwrap()];
    let category = (1.0 + 100.0 * 0.01) / (2.0 + 100.0);
    assert!(close(get("merchant_category_risk"), category));
    assert!(close(
        get("merchant_risk"),
        (1.0 + 20.0 * category) / (2.0 + 20.0)
    ));
    assert_eq!(get("card_new_country"), 1.0);
    assert!(close(get("card_log_countries"), 2f64.ln()));
    assert!(get("card_amount_zscore") > 9.0, "{v:?}");
    assert!(close(get("card_log_txn_1m"), 0.0), "two hours later");
    assert!(close(get("card_log_txn_1h"), 0.0), "two hours later");
    assert!(close(get("card_log_txn_1d"), 3f64.ln()), "{v:?}");
    assert!(close(
        get("card_log_idle_minutes"),
        (7192.0f64 / 60.0).ln_1p()
    ));
    assert!(close(get("card_log_chargebacks"), 2f64.ln()));
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn a_failure_labels_readings_of_its_device() {
    let engine = Engine::from_toml(SENSORS).unwrap();
    let reading = json!({"device": "d1", "sensor": "temp", "value": 20.0});
    let read = read_event(&engine, "reading", "r", 0, &reading);
    assert_eq!(engine.example_match(&read), Some(vec!["d1".to_string()]));
    assert_eq!(
        engine.state_keys(&read),
        vec!["sensors.channel.d1.temp", "sensors.device.d1"]
    );
    let failure = json!({"device": "d1"});
    let read = read_event(&engine, "failure", "f", 0, &failure);
    assert_eq!(engine.positive_match(&read), Some(vec!["d1".to_string()]));
    assert_eq!(engine.label().horizon_ms, 3_600_000);
}

// ---- Problems in specs ----

#[test]
fn bad_toml_is_located() {
    let p = problems("[schema]\nname = \"t\"\nversion = \n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("3:"), "{p:?}");
}

#[test]
fn a_misspelt_key_is_an_error_not_ignored() {
    let text = spec(&["name = \"n\"\nkind = \"count\"\nentiy = \"ent\""]);
    let p = problems(&text);
    assert!(p[0].contains("unknown field `entiy`"), "{p:?}");
    let line = text.lines().position(|l| l.starts_with("entiy")).unwrap() + 1;
    assert!(p[0].starts_with(&format!("{line}:1:")), "{p:?}");
}

#[test]
fn an_unknown_feature_reference_is_located() {
    let text = spec(&[
        "name = \"n\"\nkind = \"count\"\nentity = \"ent\"",
        "name = \"r\"\nkind = \"ratio\"\nof = [\"n\", \"nope\"]",
    ]);
    let p = problems(&text);
    let line = text.lines().position(|l| l.starts_with("of = ")).unwrap() + 1;
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(&format!("{line}:6: unknown feature \"nope\"")),
        "{p:?}"
    );
}

#[test]
fn a_cycle_of_derived_features_is_named() {
    let p = problems(&spec(&[
        "name = \"a\"\nkind = \"ratio\"\nof = [\"b\", \"b\"]",
        "name = \"b\"\nkind = \"difference\"\nof = [\"c\", \"c\"]",
        "name = \"c\"\nkind = \"rate\"\nhits = \"a\"\ntrials = \"a\"\nprior = 0.5\nweight = 1",
    ]));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("features form a cycle: a -> b -> c -> a"),
        "{p:?}"
    );
}

#[test]
fn every_emitted_feature_needs_monitoring_with_a_reason() {
    let mut text = HEAD.to_string();
    text.push_str(
        "\n[[feature]]\nname = \"n\"\nkind = \"count\"\nentity = \"ent\"\nwatch = \"value\"\n",
    );
    text.push_str("\n[[feature]]\nname = \"m\"\nkind = \"count\"\nentity = \"ent\"\n");
    text.push_str("\n[[feature]]\nname = \"o\"\nkind = \"count\"\nentity = \"ent\"\nwatch = \"often\"\nreason = \"because it is a test\"\n");
    text.push_str(
        "\n[[feature]]\nname = \"h\"\nkind = \"count\"\nentity = \"ent\"\nemit = false\n",
    );
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(p[0].contains("feature n has no reason"), "{p:?}");
    assert!(p[1].contains("feature m has no monitoring"), "{p:?}");
    assert!(p[2].contains("watch \"often\" is not"), "{p:?}");
}

#[test]
fn names_and_settings_are_checked_and_all_problems_reported() {
    let text = spec(&[
        "name = \"a\"\nkind = \"count\"\nentity = \"nobody\"",
        "name = \"b\"\nkind = \"count\"\nentity = \"ent\"\nwindow = \"week\"",
        "name = \"c\"\nkind = \"sum\"\nentity = \"ent\"\nfield = \"c\"",
        "name = \"d\"\nkind = \"count\"\nentity = \"ent\"\nwindow = \"minute\"\nspan = 11",
        "name = \"e\"\nkind = \"count\"\nentity = \"ent\"\ndecay = 0.5",
        "name = \"f\"\nkind = \"median\"\nentity = \"ent\"",
        "name = \"g\"\nkind = \"ewma_mean\"\nentity = \"ent\"\nfield = \"x\"\non = [\"e\"]\ndecay = 1.5",
        "name = \"h\"\nkind = \"count\"\nentity = \"ent\"\nwhere = { x = \"1\" }",
        "name = \"i\"\nkind = \"min\"\nentity = \"ent\"\nfield = \"x\"\nwindow = \"minute\"",
        "name = \"a\"\nkind = \"value\"\nfield = \"x\"\ntransform = [\"sqrt\"]",
    ]);
    let p = problems(&text).join("\n");
    for expected in [
        "unknown entity \"nobody\"",
        "unknown window \"week\"",
        "field c is not a number field of event e",
        "span must be from 1 to the window's history (10)",
        "decay does not apply to a count feature",
        "unknown kind \"median\"",
        "decay must be strictly between 0 and 1",
        "where x: x is not a string field of event e",
        "a min feature is over all time",
        "feature a is declared twice",
        "unknown transform \"sqrt\"",
    ] {
        assert!(p.contains(expected), "{expected} missing in\n{p}");
    }
    // Reported in the order of the text.
    let lines: Vec<usize> = p
        .lines()
        .map(|l| l.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{p}");
}

#[test]
fn entities_lookups_and_the_label_are_checked() {
    let text = r#"[schema]
name = "t"
version = 1
[events.e.fields]
k = { path = "k", type = "string" }
x = { path = "x", type = "number" }
m = { lookup = "ent.nothing" }
[events.f.fields]
j = { path = "j", type = "string" }
[entities.ent]
key = ["k"]
events = ["e", "f", "g"]
[entities.num]
key = ["x"]
events = ["e"]
[label]
example = { event = "e" }
positive = { event = "f" }
match = ["k"]
horizon = "soon"
feedback = "later"
[[feature]]
name = "n"
kind = "count"
entity = "ent"
watch = "value"
reason = "a test feature, watched as it is"
"#;
    let p = problems(text).join("\n");
    for expected in [
        "lookup \"ent.nothing\": entity ent does not keep nothing",
        "entity ent: unknown event type \"g\"",
        "key field k of entity ent is not a field of event f",
        "key field x of entity num must be a string",
        "match field k is not a field of event f",
        "horizon: ",
        "feedback \"later\" is not \"fnw\" or \"wait\"",
    ] {
        assert!(p.contains(expected), "{expected} missing in\n{p}");
    }
}

#[test]
fn the_fingerprint_follows_features_not_monitoring_or_comments() {
    let base = spec(&["name = \"n\"\nkind = \"count\"\nentity = \"ent\""]);
    let fingerprint = |text: &str| compile_unpinned(text).unwrap().fingerprint();
    let f = fingerprint(&base);
    assert_eq!(f.len(), 16);
    let commented = format!(
        "# a comment\n{}",
        base.replace("watch = \"value\"", "watch = \"ignore\"")
    );
    assert_eq!(
        fingerprint(&commented),
        f,
        "monitoring and comments do not change values"
    );
    let bumped = base.replace("version = 1", "version = 2");
    assert_eq!(fingerprint(&bumped), f, "the version is not part of it");
    let changed = base.replace(
        "kind = \"count\"\nentity = \"ent\"",
        "kind = \"count\"\nentity = \"ent\"\non = [\"f\"]",
    );
    assert_ne!(fingerprint(&changed), f);
    let moved = base.replace("path = \"m.x\"", "path = \"x\"");
    assert_ne!(
        fingerprint(&moved),
        f,
        "a field's path changes what is read"
    );

    // Pinned and unchanged: fine. Changed without a new pin: refused, naming the new one.
    let pinned = base.replacen(
        "[schema]\n",
        &format!("[schema]\nfingerprint = \"{f}\"\n"),
        1,
    );
    assert!(Engine::from_toml(&pinned).is_ok());
    let edited = pinned.replace("path = \"m.x\"", "path = \"x\"");
    let err = Engine::from_toml(&edited).unwrap_err().to_string();
    assert!(
        err.starts_with("2:15: the features changed since fingerprint"),
        "{err}"
    );
    assert!(err.contains(&fingerprint(&moved)), "{err}");
    let unpinned = Engine::from_toml(&base).unwrap_err().to_string();
    assert!(
        unpinned.contains("[schema] has no fingerprint"),
        "{unpinned}"
    );
}

#[test]
fn monitoring_reaches_the_schema() {
    let engine = engine(&spec(&[
        "name = \"n\"\nkind = \"count\"\nentity = \"ent\"",
        "name = \"h\"\nkind = \"count\"\nentity = \"ent\"\non = [\"f\"]\nemit = false",
    ]));
    let schema = engine.schema();
    assert_eq!(schema.features, vec!["n"]);
    assert_eq!(schema.monitoring[0].watch, Watch::Value);
    assert_eq!((schema.name.as_str(), schema.version), ("t", 1));
}

#[test]
fn stored_aggregates_are_named_by_their_definition_in_words() {
    let features = [
        "name = \"n\"\nkind = \"count\"\nentity = \"ent\"\non = [\"e\"]\nwhere = { c = [\"red\", \"blue\"] }",
        "name = \"w\"\nkind = \"sum\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\nwindow = \"minute\"\nspan = 2",
        "name = \"z\"\nkind = \"zscore\"\nentity = \"ent\"\non = [\"e\"]\nfield = \"x\"\ndecay = 0.9",
    ];
    let ids = |text: &str| -> Vec<String> {
        compile_unpinned(text).unwrap().entities[0]
            .slots
            .iter()
            .map(|s| s.id.clone())
            .collect()
    };
    let before = ids(&spec(&features));
    assert_eq!(
        before,
        vec![
            "count on e where c=red|blue",
            "windows(1m/1m, 5s late 1m, 10) of x on e",
            "ewma(0.9) of x on e",
        ]
    );
    // A field added elsewhere leaves the stored aggregates' names, and so their state, alone.
    let grown = spec(&features).replace(
        "[events.f.fields]\n",
        "[events.f.fields]\naaa = { path = \"aaa\", type = \"number\", optional = true }\n",
    );
    assert_eq!(ids(&grown), before);
}

#[test]
fn an_event_late_for_its_windows_is_told_before_it_is_applied() {
    let engine = engine(&spec(&[
        "name = \"w\"\nkind = \"count\"\nentity = \"ent\"\non = [\"e\"]\nwindow = \"minute\"",
        "name = \"n\"\nkind = \"count\"\nentity = \"ent\"",
    ]));
    let states = run(&engine, &[("e", e("a", 1.0, "r"), 600)]);
    let read = |seconds: i64| {
        engine
            .read(&EventRef {
                event_type: "e",
                id: "late",
                time: at(seconds),
                data: &e("a", 1.0, "r"),
            })
            .unwrap()
            .unwrap()
    };
    let unbounded = DateTime::<Utc>::MAX_UTC;
    // Watermark 595 s: [480, 540) is final at 600 s, [420, 480) at 540 s.
    assert!(engine.check_late(&read(530), &states, unbounded).is_ok());
    let (key, late) = engine
        .check_late(&read(470), &states, unbounded)
        .unwrap_err();
    assert_eq!(key, "t.ent.a");
    assert!(late.is_late(), "{late}");
    let (_, future) = engine.check_late(&read(700), &states, at(650)).unwrap_err();
    assert!(!future.is_late(), "{future}");
    // Applied anyway, it is counted over all time and left out of the windows.
    let mut states = states;
    engine.apply(
        &read(470),
        Position {
            partition: 0,
            sequence: 9,
        },
        &mut states,
    );
    assert_eq!(
        features(&engine, &states, e("a", 0.0, "r"), 470),
        vec![0.0, 2.0]
    );
}

#[test]
fn a_request_with_only_entity_ids_gets_the_features_of_its_states() {
    let engine = engine(&spec(&[
        "name = \"n\"\nkind = \"count\"\nentity = \"ent\"",
        "name = \"x\"\nkind = \"value\"\nfield = \"x\"\ndefault = -1",
    ]));
    let states = run(
        &engine,
        &[("e", e("a", 1.0, "r"), 0), ("f", json!({"k": "a"}), 1)],
    );
    let request = json!({"k": "a"});
    let event = EventRef {
        event_type: "e",
        id: "request",
        time: at(5),
        data: &request,
    };
    assert!(
        engine.read(&event).is_err(),
        "an event must carry its fields"
    );
    let read = engine.read_request(&event).unwrap().unwrap();
    assert_eq!(engine.features(&read, &states, at(5)), vec![2.0, -1.0]);
    let wrong = json!({"k": "a", "m": {"x": "high"}});
    let wrong = EventRef {
        data: &wrong,
        ..event
    };
    assert_eq!(engine.read_request(&wrong).unwrap_err().path(), "data.m.x");
}

#[test]
fn a_windowed_count_becomes_a_rate_over_the_span_elapsed_since_the_first_event() {
    let engine = engine(&spec(&[
        "name = \"n5\"\nkind = \"count\"\nentity = \"ent\"\nwindow = \"minute\"\nspan = 5\nemit = false",
        "name = \"elapsed\"\nkind = \"window_elapsed\"\nwindow = \"minute\"\nspan = 5\nunit = \"m\"",
        "name = \"age\"\nkind = \"since_first\"\nentity = \"ent\"\nunit = \"m\"\ndefault = 5",
        "name = \"covered\"\nkind = \"least\"\nof = [\"elapsed\", \"age\"]\ntransform = [\"clamp(1, 5)\"]",
        "name = \"longest\"\nkind = \"greatest\"\nof = [\"elapsed\", \"age\", \"n5\"]",
        "name = \"per_minute\"\nkind = \"ratio\"\nof = [\"n5\", \"covered\"]",
    ]));
    let states = run(
        &engine,
        &[("e", e("a", 0.0, "r"), 100), ("e", e("a", 0.0, "r"), 130)],
    );
    // At 150 s the five windows are [-120, 180): 4.5 minutes of them have elapsed, but the
    // entity was first seen 50 s ago, which counts as the one minute the clamp allows at least.
    let v = features(&engine, &states, e("a", 0.0, "r"), 150);
    assert!(close(v[0], 4.5), "{v:?}");
    assert!(close(v[1], 50.0 / 60.0), "{v:?}");
    assert_eq!(v[2], 1.0);
    assert!(close(v[3], 4.5));
    assert!(close(v[4], 2.0), "two events in a minute");
    // Ten minutes on, a whole span has elapsed since its start and the entity is older.
    let v = features(&engine, &states, e("a", 0.0, "r"), 700);
    assert!(close(v[0], 4.0 + 40.0 / 60.0), "{v:?}");
    assert!(close(v[2], 4.0 + 40.0 / 60.0), "{v:?}");
    assert_eq!(v[4], 0.0);
}
