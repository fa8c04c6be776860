//! `freshet-delayed`: delayed-feedback methods side by side on one generated live stream.
//!
//! The stream is `freshet generate --rate`'s live traffic ([`Traffic`]: visits at a given density
//! of event time, purchases an exponential delay after their views with a tail past the horizon,
//! users who leave for good). featurize's own pure planning ([`handler::plan_batch`] for each
//! event, then the tick's [`handler::plan_due`] at the partition's watermark) labels it twice,
//! waiting for the horizon and with fake-negative weighting, all in memory: the examples and the
//! event time at which each is published are exactly what the function would publish on one
//! partition whose events arrive as they happen. A [`Trainer`] with train's defaults
//! ([`Hyper::default`]) then learns each method's examples in the order they are published,
//! `--batch` rows at a time (a batch as train fetches it; it steps within it as its settings
//! say):
//!
//! - **oracle**: every view's true label at the view's own time (the waiting run's labels,
//!   published at once), the bound the others are measured against;
//! - **wait**: waiting for the horizon (`--delayed-feedback wait`);
//! - **fnw**: fake-negative weighting (the default): the fake negatives and corrections, each
//!   row weighted by [`RowWeight`];
//! - **fnc**: fake-negative calibration (Ktena et al. 2019, the other correction of the same
//!   paper): the same examples learned unweighted, and the model's output `b` read as
//!   `b / (1 − b)`, the conversion rate whose duplicated stream has rate `b`.
//!
//! Every view that began waiting, and whose horizon ended inside the stream, is scored by each
//! method's model at the view's time, before anything published at or after it is learned, and
//! judged by its true label (a purchase of the item by its user within the horizon). Per window
//! of view time: log loss, ROC AUC and calibration (mean prediction / true rate).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use clap::Parser;
use freshet::events::{Event, Feedback};
use freshet::examples::ExampleRecord;
use freshet::ids::ModelName;
use freshet::stats::ewma::Decay;
use freshet_cli::bookstore::{BookstoreConfig, START_UNIX_SECONDS, Traffic, generate};
use freshet_features::bookstore::{FEATURE_NAMES, popularity_spec};
use freshet_features::labels::label_state_key;
use freshet_featurize::handler::{self, EntityState, Position, Routed, Settings};
use freshet_featurize::labels::{LabelSettings, Method, NegativeRate};
use freshet_model::{Hyper, ModelConfig, ModelKind, RowWeight, Trainer};
use serde::Serialize;

/// Compare delayed-feedback methods on one generated live stream.
#[derive(Debug, Parser)]
struct Args {
    /// Users of the shop
    #[arg(long, default_value_t = 400)]
    users: usize,
    /// Books in the catalogue
    #[arg(long, default_value_t = 80)]
    items: usize,
    /// User actions per second of event time
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// How much event time the stream spans
    #[arg(long, default_value = "40m", value_parser = humantime::parse_duration)]
    span: Duration,
    /// featurize's label horizon
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    horizon: Duration,
    /// Mean delay from a view to its purchase
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    purchase_delay: Duration,
    /// Share of purchases made much later ...
    #[arg(long, default_value_t = 0.1)]
    late_share: f64,
    /// ... with this mean delay
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    late_delay: Duration,
    /// Chance that a user leaves for good after a visit
    #[arg(long, default_value_t = 0.02)]
    churn: f64,
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Rows per training step (train's batches of a live stream at this rate)
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Width of a window of view time in the table
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Initial learning rate (train's default unless set)
    #[arg(long, default_value_t = Hyper::default().learning_rate)]
    learning_rate: f64,
    /// Learning-rate decay per step (train's default unless set)
    #[arg(long, default_value_t = Hyper::default().decay)]
    lr_decay: f64,
    /// Set this feature to 0 in every row learned and scored (repeat for several): to see what
    /// a feature that moves with the clock does when labels come late
    #[arg(long = "drop-feature", value_parser = feature_index)]
    drop_features: Vec<usize>,
    /// Where to write the figures as JSON
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The index of a bookstore feature, by name.
fn feature_index(name: &str) -> Result<usize, String> {
    FEATURE_NAMES
        .iter()
        .position(|f| *f == name)
        .ok_or_else(|| format!("{name:?} is not one of {FEATURE_NAMES:?}"))
}

/// One example as a method's trainer meets it: published after the stream's `index`-th event.
#[derive(Debug, Clone)]
struct Arrival {
    index: usize,
    features: Vec<f32>,
    label: f32,
    weight: RowWeight,
}

/// A view to score: at the stream's `index`-th event, with its true label.
#[derive(Debug, Clone)]
struct Probe {
    index: usize,
    at: DateTime<Utc>,
    features: Vec<f32>,
    converts: bool,
}

/// featurize's settings with the defaults of the function, but for the horizon and the method.
fn settings(horizon: TimeDelta, method: Method) -> anyhow::Result<Settings> {
    let out_of_orderness = Duration::from_secs(5);
    Ok(Settings {
        model: ModelName::parse("bookstore")?,
        popularity: popularity_spec(out_of_orderness, Duration::from_secs(60))?,
        labels: LabelSettings {
            horizon,
            out_of_orderness: TimeDelta::from_std(out_of_orderness)?,
            negative_rate: NegativeRate::ALL,
            method,
        },
        scaling_decay: Decay::new(0.95)?,
        max_future_skew: TimeDelta::minutes(5),
    })
}

/// Runs featurize's planning over the stream on one partition, in memory: the examples
/// published, each with the index of the event after which it is (the event that published it,
/// or the one whose time let the tick decide it).
fn featurize(events: &[Event], settings: &Settings) -> Vec<(usize, ExampleRecord)> {
    let mut states: BTreeMap<String, EntityState> = BTreeMap::new();
    let mut published = Vec::new();
    let labels_key = label_state_key(&settings.model, 0);
    for (index, event) in events.iter().enumerate() {
        let Some(at) = event.time else { continue };
        let routed = Routed {
            event_id: event.id.clone(),
            position: Position {
                partition: 0,
                sequence: index as u64 + 1,
            },
            at,
            received: at,
            work: handler::work_for(event, at),
            trace: None,
        };
        let plan = handler::plan_batch(settings, &[routed], &mut states);
        published.extend(plan.examples.into_iter().map(|e| (index, e)));
        // The tick, as on a busy partition: every view due before the watermark.
        let Some(EntityState::Labels(labels)) = states.get(&labels_key) else {
            continue;
        };
        let Some(through) = handler::decision_time(
            labels.latest_event_at,
            settings.labels.out_of_orderness,
            TimeDelta::zero(),
            TimeDelta::MAX,
        ) else {
            continue;
        };
        let (due, _) = handler::due_slots(settings, 0, labels, through);
        if due.is_empty() {
            continue;
        }
        let users = handler::due_users(settings, 0, &due, &states);
        let decided = handler::plan_due(settings, &due, &users, &mut states);
        let mut mutations = BTreeMap::new();
        handler::drain(settings, 0, &decided, through, &mut states, &mut mutations);
        published.extend(decided.examples.into_iter().map(|e| (index, e)));
    }
    published
}

/// One method: what its trainer learns, in order, and how its output is read.
struct Run<'a> {
    name: &'static str,
    arrivals: &'a [Arrival],
    /// Fake-negative calibration: read `b` as `b / (1 − b)`.
    calibrate: bool,
    /// Rows per training step.
    batch: usize,
}

/// The probes' predictions by one method: each probe scored before anything published at or
/// after its event is learned.
fn predictions(
    run: &Run<'_>,
    probes: &[Probe],
    config: &ModelConfig,
    n_features: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut trainer = Trainer::new(config, n_features)?;
    let mut scorer = trainer.scorer();
    let mut pending: Vec<&Arrival> = Vec::new();
    let mut next = run.arrivals.iter().peekable();
    let mut out = Vec::with_capacity(probes.len());
    for probe in probes {
        // Learn what was published before the probe's event, in whole batches (a partial batch
        // waits for more rows, as train's batch does within its wait).
        while let Some(arrival) = next.next_if(|a| a.index < probe.index) {
            pending.push(arrival);
            if pending.len() >= run.batch {
                step(&mut trainer, &pending)?;
                pending.clear();
                scorer = trainer.scorer();
            }
        }
        let b = f64::from(scorer.score(&probe.features)?);
        out.push(if run.calibrate {
            (b / (1.0 - b).max(1e-7)).min(1.0)
        } else {
            b
        });
    }
    Ok(out)
}

fn step(trainer: &mut Trainer, rows: &[&Arrival]) -> anyhow::Result<()> {
    let features: Vec<Vec<f32>> = rows.iter().map(|a| a.features.clone()).collect();
    let labels: Vec<f32> = rows.iter().map(|a| a.label).collect();
    let weights: Vec<RowWeight> = rows.iter().map(|a| a.weight).collect();
    trainer.train_weighted_batch(&features, &labels, &weights)?;
    Ok(())
}

/// Figures of one method over one window.
#[derive(Debug, Clone, Copy, Serialize)]
struct Figures {
    log_loss: f64,
    auc: f64,
    calibration: f64,
}

fn figures(scored: &[(f64, bool)]) -> Figures {
    let n = scored.len().max(1) as f64;
    let log_loss = scored
        .iter()
        .map(|&(p, y)| freshet_model::log_loss(p as f32, y))
        .sum::<f64>()
        / n;
    let positives = scored.iter().filter(|s| s.1).count() as f64;
    let mean = scored.iter().map(|s| s.0).sum::<f64>() / n;
    Figures {
        log_loss,
        auc: auc(scored),
        calibration: mean / (positives / n),
    }
}

/// ROC AUC by ranks (ties share their mean rank).
fn auc(scored: &[(f64, bool)]) -> f64 {
    let mut sorted: Vec<(f64, bool)> = scored.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        let mean_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += mean_rank * sorted[i..j].iter().filter(|s| s.1).count() as f64;
        i = j;
    }
    let positives = sorted.iter().filter(|s| s.1).count() as f64;
    let negatives = sorted.len() as f64 - positives;
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[derive(Debug, Serialize)]
struct Window {
    /// Minutes of event time from the stream's start to the window's start.
    from_minute: u64,
    /// The row of every view past the first horizon, not one window.
    past_first_horizon: bool,
    views: usize,
    true_rate: f64,
    methods: BTreeMap<&'static str, Figures>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let horizon = TimeDelta::from_std(args.horizon)?;
    let actions = (args.span.as_secs_f64() * args.rate) as usize;
    let traffic = Traffic {
        purchase_delay: args.purchase_delay,
        late_share: args.late_share,
        late_delay: args.late_delay,
        churn: args.churn,
        // A fixed start, so every run labels the same stream: nothing here reads the clock.
        ..Traffic::live(
            DateTime::from_timestamp(START_UNIX_SECONDS, 0).context("the generator's start")?,
            args.rate,
        )
    };
    let events = generate(&BookstoreConfig {
        users: args.users,
        items: args.items,
        actions,
        seed: args.seed,
        viral: None,
        changes: Vec::new(),
        traffic: Some(traffic),
    });
    let start = events
        .iter()
        .filter_map(|e| e.time)
        .min()
        .context("an empty stream")?;
    let end = events
        .iter()
        .filter_map(|e| e.time)
        .max()
        .context("an empty stream")?;
    let index_of: HashMap<&str, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    eprintln!(
        "{actions} actions over {:?} of event time; labelling twice...",
        args.span
    );

    let waited = featurize(&events, &settings(horizon, Method::Wait)?);
    let weighted = featurize(&events, &settings(horizon, Method::FakeNegative)?);
    // The truth: the waiting run's label of each view (decided by a purchase or the horizon).
    let truth: HashMap<&str, f32> = waited
        .iter()
        .map(|(_, e)| (e.source_event.as_str(), e.label))
        .collect();
    // The probes: every view that began waiting (fnw sends each at once) and was decided.
    let probes: Vec<Probe> = weighted
        .iter()
        .filter(|(_, e)| e.feedback == Feedback::FakeNegative)
        .filter_map(|(index, e)| {
            let at = e.event_time?;
            let label = *truth.get(e.source_event.as_str())?;
            (at + horizon <= end).then(|| Probe {
                index: *index,
                at,
                features: e.features.clone(),
                converts: label > 0.0,
            })
        })
        .collect();
    let strip = |features: &[f32]| {
        let mut features = features.to_vec();
        for &i in &args.drop_features {
            if let Some(value) = features.get_mut(i) {
                *value = 0.0;
            }
        }
        features
    };
    let probes: Vec<Probe> = probes
        .into_iter()
        .map(|probe| Probe {
            features: strip(&probe.features),
            ..probe
        })
        .collect();
    let n_features = probes.first().context("no view to score")?.features.len();
    let arrival = |index: usize, e: &ExampleRecord, weight: RowWeight| Arrival {
        index,
        features: strip(&e.features),
        label: e.label,
        weight,
    };
    // The oracle learns each waiting run's example at its source event: a view's label at the
    // view.
    let mut oracle: Vec<Arrival> = waited
        .iter()
        .filter_map(|(_, e)| {
            let index = *index_of.get(e.source_event.as_str())?;
            Some(arrival(index, e, RowWeight::One))
        })
        .collect();
    oracle.sort_by_key(|a| a.index);
    let wait: Vec<Arrival> = waited
        .iter()
        .map(|(i, e)| arrival(*i, e, RowWeight::One))
        .collect();
    let fnw: Vec<Arrival> = weighted
        .iter()
        .map(|(i, e)| arrival(*i, e, RowWeight::from(e.feedback)))
        .collect();
    let fnc: Vec<Arrival> = weighted
        .iter()
        .map(|(i, e)| arrival(*i, e, RowWeight::One))
        .collect();
    let batch = args.batch.max(1);
    // train's model and defaults (the learning rate and its decay as asked).
    let config = ModelConfig {
        kind: ModelKind::Logistic,
        hyper: Hyper {
            learning_rate: args.learning_rate,
            decay: args.lr_decay,
            ..Hyper::default()
        },
        seed: 0,
        scaler_decay: None,
    };
    config.validate()?;
    let runs = [
        ("oracle", &oracle, false),
        ("wait", &wait, false),
        ("fnw", &fnw, false),
        ("fnc", &fnc, true),
    ]
    .map(|(name, arrivals, calibrate)| Run {
        name,
        arrivals,
        calibrate,
        batch,
    });
    let mut scores: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for run in &runs {
        eprintln!(
            "{}: {} examples learned in batches of {}",
            run.name,
            run.arrivals.len(),
            args.batch
        );
        scores.insert(run.name, predictions(run, &probes, &config, n_features)?);
    }

    // Per window of view time, then past the first horizon as a whole.
    let width = TimeDelta::from_std(args.window)?;
    let minutes = width.num_minutes().max(1) as u64;
    let window_of = |at: DateTime<Utc>| (at - start).num_minutes().max(0) as u64 / minutes;
    let mut windows: BTreeMap<(bool, u64), Vec<usize>> = BTreeMap::new();
    for (i, probe) in probes.iter().enumerate() {
        windows
            .entry((false, window_of(probe.at)))
            .or_default()
            .push(i);
        if probe.at >= start + horizon {
            windows.entry((true, 0)).or_default().push(i);
        }
    }
    let names = ["oracle", "wait", "fnw", "fnc"];
    let mut rows = Vec::new();
    println!(
        "\n| views from | views | true rate | method | log loss (÷ oracle) | ROC AUC (− oracle) | calibration |"
    );
    println!("| --- | ---: | ---: | --- | ---: | ---: | ---: |");
    for (&(summary, window), members) in &windows {
        let truth: Vec<bool> = members.iter().map(|&i| probes[i].converts).collect();
        let true_rate = truth.iter().filter(|y| **y).count() as f64 / truth.len().max(1) as f64;
        let mut methods = BTreeMap::new();
        for name in names {
            let scored: Vec<(f64, bool)> = members
                .iter()
                .zip(&truth)
                .map(|(&i, &y)| (scores[name][i], y))
                .collect();
            methods.insert(name, figures(&scored));
        }
        let label = if summary {
            format!("**past the first horizon ({} min)**", horizon.num_minutes())
        } else {
            format!("min {}–{}", window * minutes, (window + 1) * minutes)
        };
        let oracle = methods["oracle"];
        for name in names {
            let f = methods[name];
            println!(
                "| {label} | {} | {:.2}% | {name} | {:.4} ({:.3}×) | {:.4} ({:+.4}) | {:.3} |",
                members.len(),
                100.0 * true_rate,
                f.log_loss,
                f.log_loss / oracle.log_loss,
                f.auc,
                f.auc - oracle.auc,
                f.calibration
            );
        }
        rows.push(Window {
            from_minute: if summary {
                horizon.num_minutes() as u64
            } else {
                window * minutes
            },
            past_first_horizon: summary,
            views: members.len(),
            true_rate,
            methods,
        });
    }
    if let Some(path) = &args.json {
        if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)?;
        }
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&serde_json::json!({
                "actions": actions,
                "horizon_seconds": horizon.num_seconds(),
                "windows": rows,
            }))?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_ranks_positives_above_negatives_and_ties_count_half() {
        let separated = [(0.1, false), (0.2, false), (0.8, true), (0.9, true)];
        assert_eq!(auc(&separated), 1.0);
        let reversed = [(0.9, false), (0.1, true)];
        assert_eq!(auc(&reversed), 0.0);
        let tied = [(0.5, false), (0.5, true), (0.5, false), (0.5, true)];
        assert_eq!(auc(&tied), 0.5);
        // One positive above one of two negatives, tied with the other: (1 + 0.5) / 2.
        let mixed = [(0.2, false), (0.6, true), (0.6, false)];
        assert_eq!(auc(&mixed), 0.75);
    }

    #[test]
    fn calibration_is_the_mean_prediction_over_the_true_rate() {
        let scored = [(0.5, true), (0.1, false), (0.3, false), (0.3, false)];
        let f = figures(&scored);
        assert!((f.calibration - 0.3 / 0.25).abs() < 1e-12);
        let expected = -(0.5f64.ln() + 0.9f64.ln() + 2.0 * 0.7f64.ln()) / 4.0;
        assert!((f.log_loss - expected).abs() < 1e-6, "{}", f.log_loss);
    }
}
