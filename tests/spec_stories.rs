//! The fraud and sensors specs on their generated stories (`freshet generate --story`): every
//! event fits its spec (none would be dead-lettered), every feature stays finite, and the
//! features carry the signal the stories hide (each spec's best single feature ranks the
//! examples that its label makes positive well above chance). Pure: no server.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use freshet::events::CloudEvent;
use freshet_cli::stories::{fraud, sensors};
use freshet_features::spec::{Engine, EventRef, Position, States};

/// Runs `events` through `engine` in order; returns each example's features, event time and
/// label match, and each positive event's (match, time).
#[allow(clippy::type_complexity)]
fn run(
    engine: &Engine,
    events: &[CloudEvent],
) -> (
    Vec<(Vec<f32>, DateTime<Utc>, Vec<String>)>,
    BTreeMap<Vec<String>, Vec<DateTime<Utc>>>,
) {
    let mut states = States::new();
    let mut examples = Vec::new();
    let mut positives: BTreeMap<Vec<String>, Vec<DateTime<Utc>>> = BTreeMap::new();
    for (i, event) in events.iter().enumerate() {
        let mut read = engine
            .read(&EventRef {
                event_type: &event.event_type,
                id: &event.id,
                time: event.time.unwrap(),
                data: &event.data,
            })
            .unwrap_or_else(|err| panic!("{}: {err}", event.id))
            .unwrap_or_else(|| panic!("{}: {} is not in the spec", event.id, event.event_type));
        engine.resolve(&mut read, &states);
        if let Some(key) = engine.example_match(&read) {
            let features = engine.features(&read, &states, read.at);
            assert!(features.iter().all(|x| x.is_finite()), "{features:?}");
            examples.push((features, read.at, key));
        }
        if let Some(key) = engine.positive_match(&read) {
            positives.entry(key).or_default().push(read.at);
        }
        let position = Position {
            partition: 0,
            sequence: i as u64 + 1,
        };
        engine.apply(&read, position, &mut states);
    }
    (examples, positives)
}

/// Each example's label: a positive event with its match within the horizon after it.
fn labels(
    engine: &Engine,
    examples: &[(Vec<f32>, DateTime<Utc>, Vec<String>)],
    positives: &BTreeMap<Vec<String>, Vec<DateTime<Utc>>>,
) -> Vec<bool> {
    let horizon = chrono::TimeDelta::milliseconds(engine.label().horizon_ms);
    examples
        .iter()
        .map(|(_, at, key)| {
            positives
                .get(key)
                .is_some_and(|times| times.iter().any(|t| t >= at && *t <= *at + horizon))
        })
        .collect()
}

/// ROC AUC of `scores` for `labels` (ties count half), oriented so 0.5 is chance and 1 perfect
/// in whichever direction the feature points.
fn auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut ranked: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < ranked.len() {
        let mut j = i;
        while j < ranked.len() && ranked[j].0 == ranked[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        rank_sum += mid * ranked[i..j].iter().filter(|r| r.1).count() as f64;
        i = j;
    }
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    let auc = (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg);
    auc.max(1.0 - auc)
}

/// The AUC of every feature, by name, printed for the record.
fn feature_aucs(engine: &Engine, events: &[CloudEvent]) -> BTreeMap<String, f64> {
    let (examples, positives) = run(engine, events);
    let labels = labels(engine, &examples, &positives);
    let positive = labels.iter().filter(|l| **l).count();
    eprintln!(
        "{}: {} examples, {positive} positive",
        engine.schema().name,
        examples.len()
    );
    assert!(positive > 0 && positive < labels.len());
    engine
        .feature_names()
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let scores: Vec<f32> = examples.iter().map(|(f, _, _)| f[i]).collect();
            let auc = auc(&scores, &labels);
            eprintln!("  {name:<28} AUC {auc:.3}");
            (name.to_string(), auc)
        })
        .collect()
}

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

#[test]
fn the_fraud_spec_reads_its_story_and_its_features_find_the_thieves() {
    let engine = Engine::from_toml(include_str!("../infra/features/fraud.toml")).unwrap();
    let story = fraud::generate(&fraud::FraudConfig::new(start(), 300, 20_000, 3));
    let aucs = feature_aucs(&engine, &story.events);
    let best = aucs.values().copied().fold(0.0, f64::max);
    assert!(best > 0.75, "{aucs:?}");
    for stateful in ["card_log_txn_1h", "card_amount_zscore", "card_new_country"] {
        assert!(aucs[stateful] > 0.6, "{stateful}: {aucs:?}");
    }
}

#[test]
fn the_sensors_spec_reads_its_story_and_its_features_see_wear() {
    let engine = Engine::from_toml(include_str!("../infra/features/sensors.toml")).unwrap();
    let story = sensors::generate(&sensors::SensorsConfig::new(start(), 20, 40_000, 3));
    let aucs = feature_aucs(&engine, &story.events);
    let best = aucs.values().copied().fold(0.0, f64::max);
    assert!(best > 0.6, "{aucs:?}");
}
