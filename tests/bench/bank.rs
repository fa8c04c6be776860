//! drift's bank with its defaults on bookstore examples, beside River's detectors on the same
//! series: how many episodes a stationary shop opens per million examples, and how soon one
//! opens after an injected change (the busiest category repriced ×3, or the buying propensity of
//! half the items flipped).
//!
//! Examples are built in-process from generated bookstore events with featurize's own entity
//! states and `feature_vector`, labelled and ordered as featurize labels and publishes them (a
//! 30-minute horizon; `tests/drift_episodes.rs` runs featurize itself end to end), so this
//! measures the bank. The model is a logistic regression trained online as train trains it, each example
//! scored before it is learned, as drift scores it with the live version.
//!
//! River has no bank: beside it, River's ADWIN and Page-Hinkley with their defaults each run on
//! every series the bank watches (the four watched features and the error, ADWIN on the squared
//! error of the probability as drift reads it), one detector per series with no family control,
//! as a user wiring River's detectors up by hand would.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use freshet::events::{Action, EventData};
use freshet::monitoring::Watch;
use freshet_cli::bookstore::{BookstoreConfig, Change, ChangeAt, busiest_category, generate};
use freshet_drift::bank::{Bank, BankConfig, Observation, Scored};
use freshet_drift::episodes::ReactionPolicy;
use freshet_features::bookstore::{
    CategoryState, DEFAULT_ALLOWED_LATENESS, DEFAULT_OUT_OF_ORDERNESS, FEATURE_NAMES, ItemState,
    MAX_PENDING_VIEWS, MONITORING, SCHEMA_NAME, SCHEMA_VERSION, UserState, feature_vector,
    popularity_spec,
};
use serde::Serialize;

use crate::detectors::{Outcome, Stream, r6, run_river};

const USERS: usize = 100;
const ITEMS: usize = 50;
/// How much to generate.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// User actions of the stationary stream (2.7 M give over a million examples).
    pub stationary_actions: usize,
    /// User actions of each stream with a change, which comes halfway.
    pub change_actions: usize,
    /// Streams per change.
    pub change_seeds: u64,
}

/// One labelled example.
struct Example {
    features: Vec<f32>,
    label: f32,
}

/// A view waiting for its label, as featurize keeps it.
struct Pending {
    item: String,
    at: DateTime<Utc>,
    features: Vec<f32>,
}

/// The examples of `config`'s events, labelled and ordered as featurize labels and publishes
/// them (a view is 1 if the user buys the item within the 30-minute horizon, 0 once the user's
/// next event passes it; one pending view per item, at most 32 per user; see
/// `functions/featurize/src/labels.rs`), and the index of the first example whose view came
/// after the change.
fn examples(config: &BookstoreConfig) -> (Vec<Example>, Option<usize>) {
    let horizon = TimeDelta::minutes(30);
    let out_of_orderness = TimeDelta::seconds(5);
    let events = generate(config);
    let changed_from = config.changes.first().and_then(|c| {
        let at = (c.at * config.actions as f64).floor() as usize;
        events
            .iter()
            .filter(|e| matches!(e.data, EventData::UserAction(_)))
            .nth(at)
            .and_then(|e| e.time)
    });
    let spec = popularity_spec(DEFAULT_OUT_OF_ORDERNESS, DEFAULT_ALLOWED_LATENESS)
        .expect("the default popularity windows are valid");
    let mut users: HashMap<String, (UserState, Vec<Pending>)> = HashMap::new();
    let mut items: HashMap<String, ItemState> = HashMap::new();
    let mut categories: HashMap<String, CategoryState> = HashMap::new();
    let mut out = Vec::new();
    let mut first_changed = None;
    let mut emit = |features: Vec<f32>, label: bool, at: DateTime<Utc>, out: &mut Vec<Example>| {
        if first_changed.is_none() && changed_from.is_some_and(|c| at >= c) {
            first_changed = Some(out.len());
        }
        out.push(Example {
            features,
            label: f32::from(u8::from(label)),
        });
    };
    for event in &events {
        let Some(at) = event.time else { continue };
        match &event.data {
            EventData::NewItem(new) => items
                .entry(new.item.to_string())
                .or_default()
                .apply_new_item(&new.category, new.price, at),
            EventData::UserAction(action) => {
                let (user, pending) = users.entry(action.user.to_string()).or_default();
                let item = items.entry(action.item.to_string()).or_default();
                let category_name = item.category.clone();
                let category = category_name
                    .as_ref()
                    .and_then(|c| categories.get(c))
                    .cloned()
                    .unwrap_or_default();
                let features = feature_vector(user, item, &category, at);
                let watermark =
                    user.last_event_at.map_or(at, |last| last.max(at)) - out_of_orderness;
                let (expired, open): (Vec<Pending>, Vec<Pending>) = std::mem::take(pending)
                    .into_iter()
                    .partition(|view| view.at + horizon <= watermark);
                *pending = open;
                for view in expired {
                    emit(view.features, false, view.at, &mut out);
                }
                let name = action.item.to_string();
                match action.action {
                    Action::View | Action::AddToCart => {
                        if !pending.iter().any(|view| view.item == name) {
                            pending.push(Pending {
                                item: name,
                                at,
                                features,
                            });
                            if pending.len() > MAX_PENDING_VIEWS {
                                let oldest = pending.remove(0);
                                emit(oldest.features, false, oldest.at, &mut out);
                            }
                        }
                    }
                    Action::Purchase => {
                        match pending
                            .iter()
                            .position(|v| v.item == name && v.at <= at && at - v.at <= horizon)
                        {
                            Some(i) => {
                                let view = pending.remove(i);
                                emit(view.features, true, view.at, &mut out);
                            }
                            None => emit(features, true, at, &mut out),
                        }
                    }
                }
                user.apply(action.action, category_name.as_deref(), at);
                let _ = item.apply_action(action.action, at, &spec, at);
                if let Some(name) = category_name {
                    categories.entry(name).or_default().apply(action.action);
                }
            }
            _ => {}
        }
    }
    (out, first_changed)
}

/// The live model's probability for each example, as drift would score it: a logistic
/// regression trained online (mini-batches of 64 at a learning rate of 0.05), its inputs
/// standardised by exponentially weighted moments (β = 0.999, train's `--scaler-decay`, which
/// follows the running counts that grow with the shop's age), each example scored before it
/// is learned.
fn prequential_scores(examples: &[Example]) -> Vec<f64> {
    const BATCH: usize = 64;
    const RATE: f64 = 0.05;
    const BETA: f64 = 0.999;
    let width = examples.first().map_or(0, |e| e.features.len());
    let (mut mean, mut variance) = (vec![0f64; width], vec![1f64; width]);
    let (mut weights, mut bias) = (vec![0f64; width], 0f64);
    let mut scores = Vec::with_capacity(examples.len());
    let mut batch: Vec<(Vec<f64>, f64)> = Vec::with_capacity(BATCH);
    for (i, example) in examples.iter().enumerate() {
        if i == 0 {
            mean = example.features.iter().map(|v| f64::from(*v)).collect();
        }
        let x: Vec<f64> = example
            .features
            .iter()
            .enumerate()
            .map(|(j, v)| (f64::from(*v) - mean[j]) / variance[j].sqrt().max(1e-3))
            .collect();
        let z = bias + weights.iter().zip(&x).map(|(w, x)| w * x).sum::<f64>();
        scores.push(1.0 / (1.0 + (-z).exp()));
        for (j, v) in example.features.iter().enumerate() {
            let delta = f64::from(*v) - mean[j];
            mean[j] += (1.0 - BETA) * delta;
            variance[j] = BETA * (variance[j] + (1.0 - BETA) * delta * delta);
        }
        batch.push((x, f64::from(example.label)));
        if batch.len() == BATCH {
            let mut gradient = vec![0f64; width];
            let mut gradient_bias = 0f64;
            for (x, y) in &batch {
                let z = bias + weights.iter().zip(x).map(|(w, x)| w * x).sum::<f64>();
                let error = 1.0 / (1.0 + (-z).exp()) - y;
                for (g, xj) in gradient.iter_mut().zip(x) {
                    *g += error * xj;
                }
                gradient_bias += error;
            }
            for (w, g) in weights.iter_mut().zip(&gradient) {
                *w -= RATE * g / BATCH as f64;
            }
            bias -= RATE * gradient_bias / BATCH as f64;
            batch.clear();
        }
    }
    scores
}

/// What the bank made of one stream.
#[derive(Debug, Clone, Serialize)]
struct BankRun {
    examples: usize,
    /// Episodes opened (warning or drift) and confirmed, each at the example index it happened.
    opened: Vec<usize>,
    confirmed: Vec<usize>,
    /// Detector signals, by detector and target.
    signals: HashMap<String, usize>,
    /// Each confirmed episode's headline: detector, target, and where it opened.
    headlines: Vec<String>,
    seconds: f64,
}

/// Runs the bank with its defaults over `examples`, scored `scores`.
fn run_bank(examples: &[Example], scores: &[f64]) -> BankRun {
    let bank = Bank::new(BankConfig::default()).expect("the defaults are valid");
    let mut checkpoint = bank.fresh();
    let plan: Vec<Watch> = MONITORING.iter().map(|(w, _)| *w).collect();
    let schema = (SCHEMA_NAME.to_string(), SCHEMA_VERSION);
    let policy = ReactionPolicy {
        reaction: freshet::control::Reaction::Alert,
        outstanding: None,
    };
    let mut run = BankRun {
        examples: examples.len(),
        opened: Vec::new(),
        confirmed: Vec::new(),
        signals: HashMap::new(),
        headlines: Vec::new(),
        seconds: 0.0,
    };
    let start = std::time::Instant::now();
    for (i, (example, score)) in examples.iter().zip(scores).enumerate() {
        let folded = bank.fold(
            &mut checkpoint,
            &Observation {
                sequence: i as u64 + 1,
                schema: Some(&schema),
                plan: &plan,
                features: &example.features,
                label: example.label,
                feedback: freshet_drift::bank::Labelling::Final,
                event_time: None,
                scored: Some(Scored {
                    version: 1,
                    probability: *score,
                }),
            },
            &policy,
        );
        for finding in &folded.findings {
            let target = match finding.target {
                freshet_drift::bank::Target::Feature(j) => FEATURE_NAMES[j].to_string(),
                freshet_drift::bank::Target::Error => "error".to_string(),
            };
            *run.signals
                .entry(format!("{} on {target}", finding.detector))
                .or_default() += 1;
        }
        if let Some(transition) = folded.transition {
            use freshet::control::EpisodeState;
            let episode = &transition.episode;
            if transition.state() == EpisodeState::Drift {
                let headline = episode.headline();
                let target = match headline.target {
                    freshet_drift::bank::Target::Feature(j) => FEATURE_NAMES[j],
                    freshet_drift::bank::Target::Error => "error",
                };
                run.headlines.push(format!(
                    "{} on {target} at {i} (opened at {}; {:.4} vs {:.4}, {:?} older, {:?} newer)",
                    headline.detector,
                    episode.opened - 1,
                    headline.statistic,
                    headline.threshold.unwrap_or(f64::NAN),
                    headline.reference,
                    headline.recent
                ));
            }
            match transition.state() {
                EpisodeState::Warning => run.opened.push(i),
                EpisodeState::Drift if episode.opened == i as u64 + 1 => {
                    run.opened.push(i);
                    run.confirmed.push(i);
                }
                EpisodeState::Drift => run.confirmed.push(i),
                EpisodeState::Resolved => {}
            }
        }
    }
    run.seconds = start.elapsed().as_secs_f64();
    run
}

/// The series the bank watches, as River streams (features and the squared error), named
/// `bookstore <series>, <scenario>`.
fn series(
    examples: &[Example],
    scores: &[f64],
    scenario: &str,
    seed: u64,
    change: Option<usize>,
) -> Vec<Stream> {
    let watched: Vec<usize> = MONITORING
        .iter()
        .enumerate()
        .filter(|(_, (w, _))| *w != Watch::Ignore)
        .map(|(j, _)| j)
        .collect();
    let stream = |family: String, values: Vec<f64>| Stream {
        family,
        seed,
        binary: false,
        change,
        detectors: vec!["adwin", "page_hinkley"],
        values,
    };
    let mut out: Vec<Stream> = watched
        .iter()
        .map(|&j| {
            stream(
                format!("bookstore {}, {scenario}", FEATURE_NAMES[j]),
                examples
                    .iter()
                    .map(|e| r6(f64::from(e.features[j])))
                    .collect(),
            )
        })
        .collect();
    out.push(stream(
        format!("bookstore error, {scenario}"),
        examples
            .iter()
            .zip(scores)
            .map(|(e, p)| r6((p - f64::from(e.label)).powi(2)))
            .collect(),
    ));
    out
}

fn config(actions: usize, seed: u64, changes: Vec<ChangeAt>) -> BookstoreConfig {
    BookstoreConfig {
        users: USERS,
        items: ITEMS,
        actions,
        seed,
        viral: None,
        changes,
        traffic: None,
    }
}

/// The category most viewed in the stationary run of `seed`.
fn busiest(seed: u64) -> usize {
    busiest_category(&generate(&config(40_000, seed, Vec::new()))).unwrap_or(0)
}

/// The delay of `detections` after `change` (first at or after it) and the detections before.
fn delay_and_false(detections: &[usize], change: usize) -> (Option<usize>, usize) {
    (
        detections
            .iter()
            .find(|&&i| i >= change)
            .map(|i| i - change),
        detections.iter().filter(|&&i| i < change).count(),
    )
}

/// Runs the stationary stream and the streams with changes, on both sides; prints the tables.
pub fn run(sizes: Sizes, dir: &Path, with_river: bool) -> anyhow::Result<serde_json::Value> {
    let mut river_streams = Vec::new();
    // Stationary.
    let (stationary, _) = examples(&config(sizes.stationary_actions, 42, Vec::new()));
    let scores = prequential_scores(&stationary);
    let calm = run_bank(&stationary, &scores);
    river_streams.extend(series(&stationary, &scores, "stationary", 42, None));
    // Changes.
    let mut changed = Vec::new();
    for seed in 0..sizes.change_seeds {
        for (name, change) in [
            (
                "busiest category repriced ×3",
                Change::Reprice {
                    category: busiest(seed),
                    factor: 3.0,
                },
            ),
            (
                "propensity of half the items flipped",
                Change::FlipPropensity,
            ),
        ] {
            let (examples, first_changed) = examples(&config(
                sizes.change_actions,
                seed,
                vec![ChangeAt { change, at: 0.5 }],
            ));
            let first_changed = first_changed.unwrap_or(examples.len());
            let scores = prequential_scores(&examples);
            let run = run_bank(&examples, &scores);
            river_streams.extend(series(&examples, &scores, name, seed, Some(first_changed)));
            changed.push((name, seed, first_changed, run));
        }
    }
    let (river_version, river) = if with_river {
        run_river(&river_streams, dir, "bank")?
    } else {
        ("(not run)".to_string(), Vec::new())
    };
    let river_of = |family: &str, seed: u64, detector: &str| -> Option<&Outcome> {
        river
            .iter()
            .find(|o| o.family == family && o.seed == seed && o.detector == detector)
    };

    let per_million = |n: usize, examples: usize| n as f64 * 1e6 / examples as f64;
    println!(
        "\nBank with defaults, bookstore ({USERS} users, {ITEMS} items), stationary: {} examples in {:.1} s ({:.0} examples/s)",
        calm.examples,
        calm.seconds,
        calm.examples as f64 / calm.seconds
    );
    println!(
        "\n| stationary bookstore series | freshet (bank, defaults) | River ADWIN | River Page-Hinkley |"
    );
    println!("| --- | --- | --- | --- |");
    println!(
        "| all watched, one family | {} episodes ({:.2}/M), {} confirmed; signals {:?} | — | — |",
        calm.opened.len(),
        per_million(calm.opened.len(), calm.examples),
        calm.confirmed.len(),
        calm.signals
    );
    let mut river_calm = serde_json::Map::new();
    for stream in river_streams.iter().filter(|s| s.change.is_none()) {
        let alarms = |d: &str| {
            river_of(&stream.family, stream.seed, d).map_or("—".to_string(), |o| {
                format!(
                    "{} ({:.1}/M)",
                    o.detections.len(),
                    per_million(o.detections.len(), stream.values.len())
                )
            })
        };
        println!(
            "| {} | (in the family above) | {} | {} |",
            stream.family,
            alarms("adwin"),
            alarms("page_hinkley")
        );
        river_calm.insert(
            stream.family.clone(),
            serde_json::json!({
                "adwin": river_of(&stream.family, stream.seed, "adwin").map(|o| o.detections.len()),
                "page_hinkley": river_of(&stream.family, stream.seed, "page_hinkley").map(|o| o.detections.len()),
            }),
        );
    }
    println!(
        "\n| change ({} seeds × {} actions, halfway) | freshet: episodes before, delay of the confirmation (examples) | River ADWIN on the error: false before, delay | River ADWIN on item_log_price: false before, delay |",
        sizes.change_seeds, sizes.change_actions
    );
    println!("| --- | --- | --- | --- |");
    let mut changes_json = Vec::new();
    for (name, seed, first_changed, run) in &changed {
        let (delay, before) = delay_and_false(&run.confirmed, *first_changed);
        let opened_before = run.opened.iter().filter(|&&i| i < *first_changed).count();
        let river_cell = |series: &str| {
            river_of(&format!("bookstore {series}, {name}"), *seed, "adwin").map_or(
                "—".to_string(),
                |o| {
                    let (delay, before) = delay_and_false(&o.detections, *first_changed);
                    format!(
                        "{before}, {}",
                        delay.map_or("missed".into(), |d| d.to_string())
                    )
                },
            )
        };
        println!(
            "| {name}, seed {seed} | {opened_before}, {} | {} | {} |",
            delay.map_or("missed".into(), |d| d.to_string()),
            river_cell("error"),
            river_cell("item_log_price")
        );
        eprintln!(
            "{name}, seed {seed}: change at {first_changed}; confirmed: {:?}",
            run.headlines
        );
        changes_json.push(serde_json::json!({
            "change": name, "seed": seed, "first_changed": first_changed,
            "examples": run.examples, "episodes_before": opened_before,
            "confirmed_before": before, "delay": delay, "signals": run.signals,
            "confirmed": run.headlines,
        }));
    }
    Ok(serde_json::json!({
        "river_version": river_version,
        "stationary": {"examples": calm.examples, "opened": calm.opened, "confirmed": calm.confirmed,
            "signals": calm.signals, "seconds": calm.seconds, "river": river_calm},
        "changes": changes_json,
    }))
}
