//! Drift detectors against River's on the same streams, in one run, in three parts:
//!
//! 1. each detector with River's defaults on both sides: streams with one known change point
//!    (seeded, values rounded to 6 decimals so both sides read the very same doubles) and
//!    stationary ones, 10,000 observations each (River's defaults: ADWIN δ = 0.002,
//!    Page-Hinkley threshold 50, DDM 2σ/3σ, KSWIN α = 0.005 over a window of 100);
//! 2. the detectors as drift runs them by default (`<name>@drift`: each test at its family's
//!    share of the budget, see `BankConfig`), beside River's defaults on the same sequences,
//!    with the stationary families also a million observations long (five streams of 200,000),
//!    for false alarms per million;
//! 3. drift's whole bank with its defaults on bookstore examples (`bank.rs`), beside River's
//!    detectors on the same series.
//!
//! Reported per detector and family: how many streams saw the change, the median detection delay
//! (observations from the change to the first signal at or after it), false alarms (signals
//! before the change, or anywhere on a stationary stream) per 10,000 and per million stationary
//! observations, and the median update rate (observations/s, the update loop alone). River runs
//! in `.tools/river-venv` (`tools/river/install.sh`); PSI has no River counterpart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use freshet_drift::bank::{AnyDetector, BankConfig, DetectorKind, Family};
use freshet_drift::detectors::{
    Adwin, AdwinConfig, Ddm, DdmConfig, Detector, Kswin, KswinConfig, PageHinkley,
    PageHinkleyConfig, StreamingPsi, StreamingPsiConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::median;

const LENGTH: usize = 10_000;
const CHANGE: usize = 5_000;
/// The million-long stationary families: this many streams of `LONG_LENGTH`.
const LONG_STREAMS: u64 = 5;
const LONG_LENGTH: usize = 200_000;
/// The features the bookstore's monitoring plan watches: the feature family's tests with PSI.
fn bookstore_feature_tests() -> usize {
    freshet_features::bookstore::MONITORING
        .iter()
        .filter(|(watch, _)| *watch != freshet::monitoring::Watch::Ignore)
        .count()
}

/// One generated stream.
#[derive(Debug, Clone, Serialize)]
pub struct Stream {
    pub family: String,
    pub seed: u64,
    pub binary: bool,
    /// Index of the change, if the stream has one.
    pub change: Option<usize>,
    pub detectors: Vec<&'static str>,
    pub values: Vec<f64>,
}

/// Detections and update time of one detector over one stream.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Outcome {
    pub family: String,
    pub seed: u64,
    pub detector: String,
    pub detections: Vec<usize>,
    pub seconds: f64,
}

pub fn r6(x: f64) -> f64 {
    format!("{x:.6}").parse().unwrap_or(x)
}

fn gauss(rng: &mut StdRng, mu: f64) -> f64 {
    // Box-Muller: two uniforms in (0, 1] give one standard normal.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    r6(mu + (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos())
}

fn bernoulli(rng: &mut StdRng, p: f64) -> f64 {
    f64::from(u8::from(rng.random::<f64>() < p))
}

fn streams(seeds: u64) -> Vec<Stream> {
    let real = vec!["adwin", "page_hinkley", "kswin", "psi", "psi@drift"];
    let binary = vec![
        "ddm",
        "adwin",
        "page_hinkley",
        "kswin",
        "adwin@drift",
        "ddm@drift",
    ];
    let mut out = Vec::new();
    for seed in 0..seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        out.push(Stream {
            family: "error rate 0.1 → 0.3".into(),
            seed,
            binary: true,
            change: Some(CHANGE),
            detectors: binary.clone(),
            values: (0..LENGTH)
                .map(|i| bernoulli(&mut rng, if i < CHANGE { 0.1 } else { 0.3 }))
                .collect(),
        });
        out.push(Stream {
            family: "error rate 0.1, stationary".into(),
            seed,
            binary: true,
            change: None,
            detectors: binary.clone(),
            values: (0..LENGTH).map(|_| bernoulli(&mut rng, 0.1)).collect(),
        });
        out.push(Stream {
            family: "mean N(0,1) → N(1,1)".into(),
            seed,
            binary: false,
            change: Some(CHANGE),
            detectors: real.clone(),
            values: (0..LENGTH)
                .map(|i| gauss(&mut rng, if i < CHANGE { 0.0 } else { 1.0 }))
                .collect(),
        });
        out.push(Stream {
            family: "N(0,1), stationary".into(),
            seed,
            binary: false,
            change: None,
            detectors: real.clone(),
            values: (0..LENGTH).map(|_| gauss(&mut rng, 0.0)).collect(),
        });
    }
    // A million stationary observations per family, for false alarms per million. KSWIN is left
    // out: River's takes minutes per million.
    for k in 0..LONG_STREAMS {
        let seed = 1_000 + k;
        let mut rng = StdRng::seed_from_u64(seed);
        out.push(Stream {
            family: "error rate 0.1, stationary ×1M".into(),
            seed,
            binary: true,
            change: None,
            detectors: vec!["ddm", "adwin", "page_hinkley", "adwin@drift", "ddm@drift"],
            values: (0..LONG_LENGTH).map(|_| bernoulli(&mut rng, 0.1)).collect(),
        });
        out.push(Stream {
            family: "N(0,1), stationary ×1M".into(),
            seed,
            binary: false,
            change: None,
            detectors: vec!["adwin", "page_hinkley", "psi@drift"],
            values: (0..LONG_LENGTH).map(|_| gauss(&mut rng, 0.0)).collect(),
        });
    }
    out
}

/// A detector as River's defaults configure it, or (`<name>@drift`) as drift's defaults do.
enum Runner {
    Plain(Box<dyn Detector>),
    Drift(Box<AnyDetector>),
}

impl Runner {
    fn update(&mut self, x: f64) -> bool {
        match self {
            Runner::Plain(d) => d.update(x).is_ok_and(|d| d.is_drift()),
            Runner::Drift(d) => d.update(x).is_ok_and(|d| d.is_drift()),
        }
    }
}

/// The detector drift runs by default as `kind` in `family`, where the family holds `tests`.
pub fn as_drift_runs_it(kind: DetectorKind, family: Family, tests: usize) -> AnyDetector {
    let config = BankConfig::default();
    config
        .detector(kind, config.test_level(family, tests))
        .unwrap()
}

fn detector(name: &str, seed: u64) -> Runner {
    match name {
        "adwin" => Runner::Plain(Box::new(Adwin::new(AdwinConfig::default()).unwrap())),
        "page_hinkley" => Runner::Plain(Box::new(
            PageHinkley::new(PageHinkleyConfig::default()).unwrap(),
        )),
        "ddm" => Runner::Plain(Box::new(Ddm::new(DdmConfig::default()).unwrap())),
        "kswin" => Runner::Plain(Box::new(
            Kswin::new(KswinConfig {
                seed,
                ..KswinConfig::default()
            })
            .unwrap(),
        )),
        "psi" => Runner::Plain(Box::new(
            StreamingPsi::new(StreamingPsiConfig::default()).unwrap(),
        )),
        "adwin@drift" => Runner::Drift(Box::new(as_drift_runs_it(
            DetectorKind::Adwin,
            Family::Error,
            1,
        ))),
        "ddm@drift" => Runner::Drift(Box::new(as_drift_runs_it(
            DetectorKind::Ddm,
            Family::Error,
            1,
        ))),
        "psi@drift" => Runner::Drift(Box::new(as_drift_runs_it(
            DetectorKind::Psi,
            Family::Features,
            bookstore_feature_tests(),
        ))),
        other => unreachable!("no detector {other}"),
    }
}

pub fn run_freshet(streams: &[Stream]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for stream in streams {
        for &name in &stream.detectors {
            let mut detector = detector(name, stream.seed);
            let mut detections = Vec::new();
            let start = Instant::now();
            for (i, &x) in stream.values.iter().enumerate() {
                if detector.update(x) {
                    detections.push(i);
                }
            }
            let seconds = start.elapsed().as_secs_f64();
            out.push(Outcome {
                family: stream.family.clone(),
                seed: stream.seed,
                detector: name.to_string(),
                detections,
                seconds,
            });
        }
    }
    out
}

/// Runs River's detectors (with its defaults) named in each stream over it; `<name>@drift` runs
/// are freshet's only. Returns River's version and the outcomes.
pub fn run_river(
    streams: &[Stream],
    dir: &Path,
    file: &str,
) -> anyhow::Result<(String, Vec<Outcome>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let install = std::process::Command::new("bash")
        .arg(root.join("tools/river/install.sh"))
        .status()?;
    anyhow::ensure!(install.success(), "tools/river/install.sh failed");
    std::fs::create_dir_all(dir)?;
    let input = dir.join(format!("{file}-streams.json"));
    let output = dir.join(format!("{file}-river.json"));
    std::fs::write(
        &input,
        serde_json::to_vec(&serde_json::json!({ "streams": streams }))?,
    )?;
    let status = std::process::Command::new(root.join(".tools/river-venv/bin/python"))
        .arg(root.join("tools/river/detectors.py"))
        .arg(&input)
        .arg(&output)
        .status()?;
    anyhow::ensure!(status.success(), "tools/river/detectors.py failed");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&output)?)?;
    let version = report["river_version"].as_str().unwrap_or("?").to_string();
    let outcomes = serde_json::from_value(report["results"].clone())?;
    Ok((version, outcomes))
}

/// The figures of one detector on one family.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    streams: usize,
    detected: usize,
    median_delay: Option<f64>,
    /// The longest delay among the streams that saw the change.
    max_delay: Option<f64>,
    false_alarms: usize,
    stationary_observations: usize,
    false_alarms_per_10k: f64,
    false_alarms_per_million: f64,
    observations_per_second: f64,
}

fn figures(outcomes: &[&Outcome], streams: &[Stream]) -> Figures {
    let stream_of = |o: &Outcome| {
        streams
            .iter()
            .find(|s| s.family == o.family && s.seed == o.seed)
    };
    let mut delays = Vec::new();
    let mut false_alarms = 0usize;
    let mut stationary_observations = 0usize;
    let mut rates = Vec::new();
    for outcome in outcomes {
        let Some(stream) = stream_of(outcome) else {
            continue;
        };
        let before = stream.change.unwrap_or(stream.values.len());
        stationary_observations += before;
        false_alarms += outcome.detections.iter().filter(|&&i| i < before).count();
        if let Some(change) = stream.change
            && let Some(first) = outcome.detections.iter().find(|&&i| i >= change)
        {
            delays.push((first - change) as f64);
        }
        rates.push(stream.values.len() as f64 / outcome.seconds.max(1e-9));
    }
    let max_delay = delays.iter().copied().reduce(f64::max);
    let stationary = stationary_observations.max(1) as f64;
    Figures {
        streams: outcomes.len(),
        detected: delays.len(),
        median_delay: (!delays.is_empty()).then(|| median(delays)),
        max_delay,
        false_alarms,
        stationary_observations,
        false_alarms_per_10k: false_alarms as f64 * 1e4 / stationary,
        false_alarms_per_million: false_alarms as f64 * 1e6 / stationary,
        observations_per_second: median(rates),
    }
}

pub fn table(outcomes: &[Outcome], streams: &[Stream]) -> BTreeMap<(String, String), Figures> {
    let mut grouped: BTreeMap<(String, String), Vec<&Outcome>> = BTreeMap::new();
    for outcome in outcomes {
        grouped
            .entry((outcome.detector.clone(), outcome.family.clone()))
            .or_default()
            .push(outcome);
    }
    grouped
        .into_iter()
        .map(|(key, group)| (key, figures(&group, streams)))
        .collect()
}

fn cell(figures: Option<&Figures>) -> String {
    match figures {
        None => "—".into(),
        Some(f) => {
            let delay = match (f.median_delay, f.detected) {
                (Some(d), n) => format!("{n}/{} seen, delay {d:.0}", f.streams),
                (None, _) => "no change".into(),
            };
            let rate = f.observations_per_second;
            let rate = if rate >= 1e6 {
                format!("{:.1} M obs/s", rate / 1e6)
            } else {
                format!("{:.1} k obs/s", rate / 1e3)
            };
            let alarms = if f.stationary_observations >= 1_000_000 {
                format!(
                    "{} false in {:.1} M ({:.2}/M)",
                    f.false_alarms,
                    f.stationary_observations as f64 / 1e6,
                    f.false_alarms_per_million
                )
            } else {
                format!("{:.2} false/10k", f.false_alarms_per_10k)
            };
            format!("{delay}; {alarms}; {rate}")
        }
    }
}

/// River's counterpart of a detector name: the name itself, or for `<name>@drift` River's
/// `<name>` with its defaults.
fn counterpart(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// Runs both sides over `seeds` streams per family (and the million-long stationary ones),
/// prints the tables, then runs the bank on bookstore examples.
pub fn run(
    seeds: u64,
    bank: crate::bank::Sizes,
    dir: &Path,
    with_river: bool,
) -> anyhow::Result<serde_json::Value> {
    let streams = streams(seeds);
    let ours = table(&run_freshet(&streams), &streams);
    let (river_version, river) = if with_river {
        run_river(&streams, dir, "detector")?
    } else {
        ("(not run)".to_string(), Vec::new())
    };
    let theirs = table(&river, &streams);
    println!(
        "\n| detector | stream ({seeds} seeds × {LENGTH}, change at {CHANGE}; ×1M: {LONG_STREAMS} × {LONG_LENGTH}) | freshet | River {river_version} | throughput ratio |"
    );
    println!("| --- | --- | --- | --- | ---: |");
    for (key, figures) in &ours {
        let reference = theirs.get(&(counterpart(&key.0).to_string(), key.1.clone()));
        let ratio = reference.map_or("—".into(), |r| {
            format!(
                "{:.1}×",
                figures.observations_per_second / r.observations_per_second
            )
        });
        println!(
            "| {} | {} | {} | {} | {ratio} |",
            key.0,
            key.1,
            cell(Some(figures)),
            cell(reference)
        );
    }
    let rows: Vec<serde_json::Value> = ours
        .iter()
        .map(|(key, figures)| {
            serde_json::json!({
                "detector": key.0, "stream": key.1, "freshet": figures,
                "river": theirs.get(&(counterpart(&key.0).to_string(), key.1.clone())),
            })
        })
        .collect();
    let bank = crate::bank::run(bank, dir, with_river)?;
    Ok(serde_json::json!({
        "seeds": seeds, "length": LENGTH, "change": CHANGE,
        "long": {"streams": LONG_STREAMS, "length": LONG_LENGTH},
        "river_version": river_version, "rows": rows, "bank": bank,
    }))
}
