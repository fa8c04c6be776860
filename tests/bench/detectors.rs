//! Drift detectors against River's on the same streams, in one run.
//!
//! Streams with one known change point (seeded, values rounded to 6 decimals so both sides read
//! the very same doubles) and stationary ones; each detector runs with its defaults (River's
//! defaults: ADWIN δ = 0.002, Page-Hinkley threshold 50, DDM 2σ/3σ, KSWIN α = 0.005 over a
//! window of 100). Reported per detector and family: how many streams saw the change, the median
//! detection delay (observations from the change to the first signal at or after it), false
//! alarms (signals before the change, or anywhere on a stationary stream) per 10,000
//! stationary observations, and the median update rate (observations/s, the update loop alone).
//! River runs in `.tools/river-venv` (`tools/river/install.sh`); PSI has no River counterpart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

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

/// One generated stream.
#[derive(Debug, Clone, Serialize)]
struct Stream {
    family: &'static str,
    seed: u64,
    binary: bool,
    /// Index of the change, if the stream has one.
    change: Option<usize>,
    detectors: Vec<&'static str>,
    values: Vec<f64>,
}

/// Detections and update time of one detector over one stream.
#[derive(Debug, Clone, serde::Deserialize)]
struct Outcome {
    family: String,
    seed: u64,
    detector: String,
    detections: Vec<usize>,
    seconds: f64,
}

fn r6(x: f64) -> f64 {
    format!("{x:.6}").parse().unwrap_or(x)
}

fn gauss(rng: &mut StdRng, mu: f64) -> f64 {
    // Box-Muller: two uniforms in (0, 1] give one standard normal.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    r6(mu + (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos())
}

fn streams(seeds: u64) -> Vec<Stream> {
    let real = vec!["adwin", "page_hinkley", "kswin", "psi"];
    let binary = vec!["ddm", "adwin", "page_hinkley", "kswin"];
    let mut out = Vec::new();
    for seed in 0..seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let bernoulli = |rng: &mut StdRng, p: f64| f64::from(u8::from(rng.random::<f64>() < p));
        out.push(Stream {
            family: "error rate 0.1 → 0.3",
            seed,
            binary: true,
            change: Some(CHANGE),
            detectors: binary.clone(),
            values: (0..LENGTH)
                .map(|i| bernoulli(&mut rng, if i < CHANGE { 0.1 } else { 0.3 }))
                .collect(),
        });
        out.push(Stream {
            family: "error rate 0.1, stationary",
            seed,
            binary: true,
            change: None,
            detectors: binary.clone(),
            values: (0..LENGTH).map(|_| bernoulli(&mut rng, 0.1)).collect(),
        });
        out.push(Stream {
            family: "mean N(0,1) → N(1,1)",
            seed,
            binary: false,
            change: Some(CHANGE),
            detectors: real.clone(),
            values: (0..LENGTH)
                .map(|i| gauss(&mut rng, if i < CHANGE { 0.0 } else { 1.0 }))
                .collect(),
        });
        out.push(Stream {
            family: "N(0,1), stationary",
            seed,
            binary: false,
            change: None,
            detectors: real.clone(),
            values: (0..LENGTH).map(|_| gauss(&mut rng, 0.0)).collect(),
        });
    }
    out
}

fn detector(name: &str, seed: u64) -> Box<dyn Detector> {
    match name {
        "adwin" => Box::new(Adwin::new(AdwinConfig::default()).unwrap()),
        "page_hinkley" => Box::new(PageHinkley::new(PageHinkleyConfig::default()).unwrap()),
        "ddm" => Box::new(Ddm::new(DdmConfig::default()).unwrap()),
        "kswin" => Box::new(
            Kswin::new(KswinConfig {
                seed,
                ..KswinConfig::default()
            })
            .unwrap(),
        ),
        "psi" => Box::new(StreamingPsi::new(StreamingPsiConfig::default()).unwrap()),
        other => unreachable!("no detector {other}"),
    }
}

fn run_freshet(streams: &[Stream]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for stream in streams {
        for &name in &stream.detectors {
            let mut detector = detector(name, stream.seed);
            let mut detections = Vec::new();
            let start = Instant::now();
            for (i, &x) in stream.values.iter().enumerate() {
                if detector.update(x).is_ok_and(|d| d.is_drift()) {
                    detections.push(i);
                }
            }
            let seconds = start.elapsed().as_secs_f64();
            out.push(Outcome {
                family: stream.family.to_string(),
                seed: stream.seed,
                detector: name.to_string(),
                detections,
                seconds,
            });
        }
    }
    out
}

fn run_river(streams: &[Stream], dir: &Path) -> anyhow::Result<(String, Vec<Outcome>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let install = std::process::Command::new("bash")
        .arg(root.join("tools/river/install.sh"))
        .status()?;
    anyhow::ensure!(install.success(), "tools/river/install.sh failed");
    std::fs::create_dir_all(dir)?;
    let input = dir.join("detector-streams.json");
    let output = dir.join("detector-river.json");
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
    false_alarms_per_10k: f64,
    observations_per_second: f64,
}

fn figures(outcomes: &[&Outcome], streams: &[Stream]) -> Figures {
    let change_of = |o: &Outcome| {
        streams
            .iter()
            .find(|s| s.family == o.family && s.seed == o.seed)
            .and_then(|s| s.change)
    };
    let mut delays = Vec::new();
    let mut false_alarms = 0usize;
    let mut stationary_observations = 0usize;
    for outcome in outcomes {
        let change = change_of(outcome);
        let before = change.unwrap_or(LENGTH);
        stationary_observations += before;
        false_alarms += outcome.detections.iter().filter(|&&i| i < before).count();
        if let Some(change) = change
            && let Some(first) = outcome.detections.iter().find(|&&i| i >= change)
        {
            delays.push((first - change) as f64);
        }
    }
    Figures {
        streams: outcomes.len(),
        detected: delays.len(),
        median_delay: (!delays.is_empty()).then(|| median(delays)),
        false_alarms_per_10k: false_alarms as f64 * 10_000.0
            / stationary_observations.max(1) as f64,
        observations_per_second: median(
            outcomes
                .iter()
                .map(|o| LENGTH as f64 / o.seconds.max(1e-9))
                .collect(),
        ),
    }
}

fn table(outcomes: &[Outcome], streams: &[Stream]) -> BTreeMap<(String, String), Figures> {
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
            format!("{delay}; {:.2} false/10k; {rate}", f.false_alarms_per_10k)
        }
    }
}

/// Runs both sides over `seeds` streams per family and prints the table.
pub fn run(seeds: u64, dir: &Path, with_river: bool) -> anyhow::Result<serde_json::Value> {
    let streams = streams(seeds);
    let ours = table(&run_freshet(&streams), &streams);
    let (river_version, river) = if with_river {
        run_river(&streams, dir)?
    } else {
        ("(not run)".to_string(), Vec::new())
    };
    let theirs = table(&river, &streams);
    println!(
        "\n| detector | stream ({seeds} seeds × {LENGTH}, change at {CHANGE}) | freshet | River {river_version} | throughput ratio |"
    );
    println!("| --- | --- | --- | --- | ---: |");
    for (key, figures) in &ours {
        let reference = theirs.get(key);
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
                "detector": key.0, "stream": key.1, "freshet": figures, "river": theirs.get(key),
            })
        })
        .collect();
    Ok(
        serde_json::json!({ "seeds": seeds, "length": LENGTH, "change": CHANGE, "river_version": river_version, "rows": rows }),
    )
}
