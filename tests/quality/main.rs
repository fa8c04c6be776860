//! `freshet-quality`: freshet's models, trained prequentially on public stream files.
//!
//! Each file is a CSV written by `tests/quality/streams.py` (a header of feature names, then one
//! example per line with the label, 0 or 1, last). For every batch size asked for, a fresh
//! [`Trainer`] of the chosen kind (logistic regression unless `--kind` says otherwise) walks the
//! file in order, `batch` rows per [`Trainer::train_batch`] call, which learns them in steps of
//! `--rows-per-step` rows; since each step's rows are scored before that step learns them,
//! summing [`BatchReport::correct`] gives the prequential accuracy that River's
//! `predict_one`-then-`learn_one` loop measures on the same rows. Only the `train_batch` calls
//! are timed (parsing and bookkeeping are not), which is the counterpart of timing River's
//! `learn_one` alone, except that here the time also covers the scoring.
//!
//! The learning flags default to [`Hyper::default`], what `train` ships with;
//! `--scale-rate-by-step` multiplies the rate by the rows of a step, so that one setting means
//! the same per-row step at every step size.
//!
//! Training is deterministic, so every run of a setting gets the same accuracy; runs are
//! repeated only to take the median rate, because this machine is shared and noisy.
//!
//! With `--pipeline` the files go through nats-server and the `train` binary with its shipped
//! defaults instead (`pipeline.rs`); the learning flags do not apply there.

mod pipeline;
mod population;

/// drift's promotion gate, the very rules drift runs (pure, no I/O), for `--population`.
#[path = "../../functions/drift/src/gate.rs"]
#[allow(dead_code)]
mod gate;
/// train's choice among a population's members, the very module train runs.
#[path = "../../functions/train/src/population.rs"]
#[allow(dead_code)]
mod selection;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use freshet_model::{
    BatchReport, Hyper, ModelConfig, ModelKind, Optimizer, Trainer, predicts_positive,
};
use serde::Serialize;

/// Train freshet's logistic model prequentially on stream files and report accuracy and rate.
#[derive(Debug, Parser)]
struct Args {
    /// Stream files, as written by tests/quality/streams.py
    #[arg(required = true)]
    streams: Vec<PathBuf>,
    /// Rows per train_batch call; repeat the flag for several settings
    #[arg(long = "batch", default_values_t = [1, 32])]
    batches: Vec<usize>,
    /// Initial learning rate η0 (the rate at step t is η0 / (1 + decay·t))
    #[arg(long, default_value_t = Hyper::default().learning_rate)]
    learning_rate: f64,
    /// Learning-rate decay α per step (0 keeps the rate constant)
    #[arg(long, default_value_t = Hyper::default().decay)]
    decay: f64,
    /// L2 penalty λ on the weights
    #[arg(long, default_value_t = Hyper::default().l2)]
    l2: f64,
    /// Model kind: logistic, mlp, factorization_machine or fourier
    #[arg(long, default_value = "logistic")]
    kind: ModelKind,
    /// Hidden units of an mlp (default 16), cosine features of a fourier model (default 256)
    #[arg(long)]
    hidden: Option<usize>,
    /// Optimizer: sgd or adam
    #[arg(long, default_value = "sgd")]
    optimizer: Optimizer,
    /// Rows per optimizer step within a batch; 0 takes one step per batch
    #[arg(long, default_value_t = Hyper::default().rows_per_step)]
    rows_per_step: usize,
    /// Multiply the learning rate by the rows of a step (the linear scaling rule): a step is the
    /// mean gradient of its rows, so this moves the weights per row about as far as one row per
    /// step does
    #[arg(long)]
    scale_rate_by_step: bool,
    /// Timed runs per setting, after one untimed warm-up run; the median rate is reported
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where to write the machine-readable results
    #[arg(long)]
    json: Option<PathBuf>,
    /// Publish each file as examples and train it with the `train` binary and its shipped
    /// defaults (needs nats-server in .tools and `train` built beside this binary)
    #[arg(long)]
    pipeline: bool,
    /// With --pipeline: one more argument for `train` (repeat the flag for each), e.g. to run
    /// the defaults it shipped before
    #[arg(long = "train-arg", allow_hyphen_values = true)]
    train_args: Vec<String>,
    /// Train a population as `train --population` declares it (e.g. `auto`) with the shipped
    /// settings, judged by drift's gate, and report what live served (`population.rs`)
    #[arg(long)]
    population: Option<String>,
    /// With --population: train's prequential metrics window, over which members are compared
    #[arg(long, default_value_t = 1000)]
    metrics_window: usize,
}

/// One stream file in memory, in the shape `train_batch` takes.
#[derive(Debug, Clone, PartialEq)]
struct Stream {
    features: Vec<String>,
    rows: Vec<Vec<f32>>,
    labels: Vec<f32>,
}

/// Parses a stream CSV. Every value must be a finite number and every label 0 or 1, so a bad
/// file fails here with its line number rather than as a model error mid-run.
fn parse_stream(text: &str) -> anyhow::Result<Stream> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bail!("the file is empty");
    };
    let mut features: Vec<String> = header.split(',').map(|s| s.trim().to_owned()).collect();
    if features.pop().as_deref() != Some("label") {
        bail!("the last column of the header must be `label`");
    }
    ensure!(!features.is_empty(), "the header names no feature");

    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (index, line) in lines {
        let number = index + 1;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        ensure!(
            fields.len() == features.len() + 1,
            "line {number} has {} fields, the header {}",
            fields.len(),
            features.len() + 1
        );
        let (label, values) = fields
            .split_last()
            .context("a line with fields has a last one")?;
        let mut row = Vec::with_capacity(values.len());
        for (value, name) in values.iter().zip(&features) {
            let parsed: f32 = value
                .parse()
                .with_context(|| format!("line {number}, `{name}`: `{value}` is not a number"))?;
            // f32 overflows to ∞ above ~3.4e38 as well, which the model would reject anyway.
            ensure!(
                parsed.is_finite(),
                "line {number}, `{name}`: `{value}` is not finite"
            );
            row.push(parsed);
        }
        let label = match *label {
            "0" => 0.0,
            "1" => 1.0,
            other => bail!("line {number}: label `{other}` is not 0 or 1"),
        };
        rows.push(row);
        labels.push(label);
    }
    ensure!(!rows.is_empty(), "the file has a header but no rows");
    Ok(Stream {
        features,
        rows,
        labels,
    })
}

fn read_stream(path: &Path) -> anyhow::Result<Stream> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_stream(&text).with_context(|| format!("{} is not a stream file", path.display()))
}

/// What one prequential pass measured.
#[derive(Debug, Clone, PartialEq)]
struct Pass {
    correct: usize,
    log_loss_sum: f64,
    /// Whether each row's prequential prediction was right, in file order: what the recovery
    /// after a concept change is measured from.
    hits: Vec<bool>,
    /// Time inside `train_batch` calls only.
    train: Duration,
}

/// One prequential pass over the stream with a fresh model, `batch` rows per update.
fn train_prequentially(
    stream: &Stream,
    batch: usize,
    config: &ModelConfig,
) -> anyhow::Result<Pass> {
    let mut trainer = Trainer::new(config, stream.features.len())?;
    let mut pass = Pass {
        correct: 0,
        log_loss_sum: 0.0,
        hits: Vec::with_capacity(stream.rows.len()),
        train: Duration::ZERO,
    };
    for (rows, labels) in stream.rows.chunks(batch).zip(stream.labels.chunks(batch)) {
        let start = Instant::now();
        let report: BatchReport = trainer
            .train_batch(rows, labels)
            .with_context(|| format!("update {} failed", trainer.step() + 1))?;
        pass.train += start.elapsed();
        pass.correct += report.correct;
        pass.log_loss_sum += report.log_loss_sum;
        pass.hits.extend(
            report
                .scores
                .iter()
                .zip(labels)
                .map(|(p, y)| predicts_positive(*p) == (*y == 1.0)),
        );
    }
    Ok(pass)
}

/// One stream at one batch size, as reported.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    stream: String,
    file: PathBuf,
    rows: usize,
    features: usize,
    batch: usize,
    accuracy: f64,
    log_loss: f64,
    /// The name of the model kind trained.
    kind: &'static str,
    /// The settings this outcome trained with (the rate already scaled, if asked).
    hyper: Hyper,
    /// Median over runs of the time inside `train_batch`.
    train_seconds: f64,
    rows_per_second: f64,
    /// Each row's prequential prediction, `1` right and `0` wrong, in file order.
    hits: String,
}

/// Everything one invocation measured, as written by `--json`.
#[derive(Debug, Serialize)]
struct Report {
    /// The settings as given, before any scaling by batch size.
    hyper: Hyper,
    scale_rate_by_step: bool,
    runs: usize,
    build: &'static str,
    results: Vec<Outcome>,
}

fn measure(path: &Path, stream: &Stream, batch: usize, args: &Args) -> anyhow::Result<Outcome> {
    let hyper = Hyper {
        learning_rate: args.learning_rate,
        decay: args.decay,
        l2: args.l2,
        optimizer: args.optimizer,
        rows_per_step: args.rows_per_step,
    };
    let scale = if args.scale_rate_by_step {
        hyper.step_rows(batch) as f64
    } else {
        1.0
    };
    let hyper = Hyper {
        learning_rate: args.learning_rate * scale,
        ..hyper
    };
    let config = ModelConfig {
        kind: args.kind.with_dimensions(freshet_model::Dimensions {
            hidden: args.hidden,
            factors: None,
        }),
        hyper,
        ..ModelConfig::default()
    };
    // One untimed pass first: the first pass in a process also pays for the allocator's and
    // the backend's start-up, which made whichever stream came first look up to 2x slower.
    let warm_up = train_prequentially(stream, batch, &config)?;
    let mut passes = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        passes.push(train_prequentially(stream, batch, &config)?);
    }
    let reference = &warm_up;
    // Training is a pure function of rows and settings; a difference would make the accuracy
    // column meaningless, so it is an error rather than a footnote.
    ensure!(
        passes
            .iter()
            .all(|p| p.correct == reference.correct && p.log_loss_sum == reference.log_loss_sum),
        "runs of the same setting disagree on accuracy"
    );
    let mut times: Vec<Duration> = passes.iter().map(|p| p.train).collect();
    times.sort();
    let median = times[times.len() / 2].as_secs_f64();
    let rows = stream.rows.len();
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(Outcome {
        stream: name,
        file: path.to_path_buf(),
        rows,
        features: stream.features.len(),
        batch,
        kind: args.kind.name(),
        hyper,
        accuracy: reference.correct as f64 / rows as f64,
        log_loss: reference.log_loss_sum / rows as f64,
        train_seconds: median,
        rows_per_second: rows as f64 / median,
        hits: reference
            .hits
            .iter()
            .map(|hit| if *hit { '1' } else { '0' })
            .collect(),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(
        args.batches.iter().all(|b| *b >= 1),
        "--batch must be at least 1"
    );
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    if build == "debug" {
        eprintln!("warning: debug build; rates are ~10x below a release build");
    }

    if args.pipeline {
        return run_pipeline(&args);
    }
    if let Some(declared) = &args.population {
        return run_population(&args, declared, build);
    }
    let mut results = Vec::new();
    println!("| stream | rows | batch | rows/step | η0 | accuracy | log-loss | train rows/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for path in &args.streams {
        let stream = read_stream(path)?;
        for &batch in &args.batches {
            let outcome = measure(path, &stream, batch, &args)
                .with_context(|| format!("{} at batch {batch}", path.display()))?;
            println!(
                "| {} | {} | {} | {} | {} | {:.4} | {:.4} | {:.0} |",
                outcome.stream,
                outcome.rows,
                outcome.batch,
                outcome.hyper.step_rows(outcome.batch),
                outcome.hyper.learning_rate,
                outcome.accuracy,
                outcome.log_loss,
                outcome.rows_per_second
            );
            results.push(outcome);
        }
    }

    if let Some(json) = &args.json {
        let report = Report {
            hyper: Hyper {
                learning_rate: args.learning_rate,
                decay: args.decay,
                l2: args.l2,
                optimizer: args.optimizer,
                rows_per_step: args.rows_per_step,
            },
            scale_rate_by_step: args.scale_rate_by_step,
            runs: args.runs,
            build,
            results,
        };
        if let Some(parent) = json.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(json, text + "\n")
            .with_context(|| format!("cannot write {}", json.display()))?;
    }
    Ok(())
}

/// One stream learned by a population, as reported.
#[derive(Debug, Clone, Serialize)]
struct PopulationOutcome {
    stream: String,
    file: PathBuf,
    rows: usize,
    features: usize,
    batch: usize,
    /// The members' shipped settings (the kind aside).
    hyper: Hyper,
    /// Of what live served: each row's prequential prediction by the member live then.
    accuracy: f64,
    log_loss: f64,
    /// Each member's own prequential accuracy over the file.
    members: Vec<(&'static str, f64)>,
    promotions: Vec<population::Promotion>,
    /// Median over runs of the time training every member (and the gate's scoring).
    train_seconds: f64,
    rows_per_second: f64,
    hits: String,
}

/// `--population`: every file learned by the declared population, judged by drift's gate.
fn run_population(args: &Args, declared: &str, build: &str) -> anyhow::Result<()> {
    let mut results = Vec::new();
    println!(
        "| stream | rows | batch | population | served accuracy | members | promotions | rows/s |"
    );
    println!("| --- | ---: | ---: | --- | ---: | --- | --- | ---: |");
    for path in &args.streams {
        let stream = read_stream(path)?;
        for &batch in &args.batches {
            let reference = population::run(&stream, declared, batch, args.metrics_window)
                .with_context(|| format!("{} at batch {batch}", path.display()))?;
            let mut times = vec![reference.train];
            for _ in 1..args.runs {
                let again = population::run(&stream, declared, batch, args.metrics_window)?;
                ensure!(
                    again.hits == reference.hits,
                    "runs of the same population disagree"
                );
                times.push(again.train);
            }
            times.sort();
            let median = times[times.len() / 2].as_secs_f64();
            let rows = stream.rows.len();
            let outcome = PopulationOutcome {
                stream: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string()),
                file: path.clone(),
                rows,
                features: stream.features.len(),
                batch,
                hyper: Hyper::default(),
                accuracy: reference.hits.iter().filter(|h| **h).count() as f64 / rows as f64,
                log_loss: reference.log_loss_sum / rows as f64,
                members: reference.members.clone(),
                promotions: reference.promotions.clone(),
                train_seconds: median,
                rows_per_second: rows as f64 / median,
                hits: reference
                    .hits
                    .iter()
                    .map(|hit| if *hit { '1' } else { '0' })
                    .collect(),
            };
            println!(
                "| {} | {} | {} | {declared} | {:.4} | {} | {} | {:.0} |",
                outcome.stream,
                rows,
                batch,
                outcome.accuracy,
                outcome
                    .members
                    .iter()
                    .map(|(k, a)| format!("{k} {:.4}", a))
                    .collect::<Vec<_>>()
                    .join(", "),
                outcome
                    .promotions
                    .iter()
                    .map(|p| format!("{}→{} at {}", p.from, p.to, p.row))
                    .collect::<Vec<_>>()
                    .join(", "),
                outcome.rows_per_second
            );
            results.push(outcome);
        }
    }
    if let Some(json) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "mode": "population",
            "population": declared,
            "metrics_window": args.metrics_window,
            "runs": args.runs,
            "build": build,
            "results": results,
        }))?;
        if let Some(parent) = json.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(json, text + "\n")
            .with_context(|| format!("cannot write {}", json.display()))?;
    }
    Ok(())
}

/// One stream through the pipeline, as reported.
#[derive(Debug, Clone, Serialize)]
struct PipelineOutcome {
    stream: String,
    file: PathBuf,
    rows: usize,
    /// Rows in the live version's prequential window (all of them unless train held some back).
    window_examples: u64,
    accuracy: f64,
    log_loss: f64,
    /// From starting train to the version that learned the last row going live.
    seconds: f64,
    rows_per_second: f64,
    /// The raw floor of the same run: a bare pull consumer draining the same backlog.
    floor_rows_per_second: f64,
}

/// `--pipeline`: every file through nats-server and `train` with its shipped defaults.
fn run_pipeline(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Vec::new();
    println!(
        "| stream | rows | learned | accuracy | log-loss | end-to-end rows/s | raw JetStream rows/s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for path in &args.streams {
        let stream = read_stream(path)?;
        let pass = runtime
            .block_on(pipeline::train_through_pipeline(&stream, &args.train_args))
            .with_context(|| format!("{} through the pipeline", path.display()))?;
        let outcome = PipelineOutcome {
            stream: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            file: path.clone(),
            rows: stream.rows.len(),
            window_examples: pass.window_examples,
            accuracy: pass.accuracy,
            log_loss: pass.log_loss,
            seconds: pass.seconds,
            rows_per_second: stream.rows.len() as f64 / pass.seconds,
            floor_rows_per_second: pass.floor_rows_per_second,
        };
        println!(
            "| {} | {} | {} | {:.4} | {:.4} | {:.0} | {:.0} |",
            outcome.stream,
            outcome.rows,
            outcome.window_examples,
            outcome.accuracy,
            outcome.log_loss,
            outcome.rows_per_second,
            outcome.floor_rows_per_second
        );
        results.push(outcome);
    }
    if let Some(json) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "mode": "pipeline",
            "train_args": args.train_args,
            "results": results,
        }))?;
        std::fs::write(json, text + "\n")
            .with_context(|| format!("cannot write {}", json.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_labels_in_order() {
        let stream = parse_stream("a,b,label\n1.5,-2,1\n0,3e2,0\n").unwrap();
        assert_eq!(stream.features, ["a", "b"]);
        assert_eq!(stream.rows, vec![vec![1.5, -2.0], vec![0.0, 300.0]]);
        assert_eq!(stream.labels, vec![1.0, 0.0]);
    }

    #[test]
    fn rejects_non_finite_values_with_their_line_and_column() {
        for bad in ["nan", "inf", "-inf", "1e39"] {
            let err = parse_stream(&format!("a,b,label\n1,2,0\n3,{bad},1\n")).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("line 3, `b`: `{bad}` is not finite"),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_malformed_files() {
        let cases = [
            ("", "the file is empty"),
            (
                "a,b\n1,0\n",
                "the last column of the header must be `label`",
            ),
            ("label\n1\n", "the header names no feature"),
            ("a,label\n", "the file has a header but no rows"),
            ("a,label\n1,2\n", "line 2: label `2` is not 0 or 1"),
            ("a,label\n1,0,0\n", "line 2 has 3 fields, the header 2"),
            ("a,label\nx,0\n", "line 2, `a`: `x` is not a number"),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_stream(text).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn accuracy_is_prequential_and_batch_one_learns_a_separable_stream() {
        // x > 0 ⇔ label 1; alternating signs so both classes arrive from the start.
        let rows: Vec<Vec<f32>> = (0..400)
            .map(|i| vec![if i % 2 == 0 { 1.0 } else { -1.0 } * (1.0 + (i % 7) as f32)])
            .collect();
        let labels = rows.iter().map(|r| f32::from(r[0] > 0.0)).collect();
        let stream = Stream {
            features: vec!["x".into()],
            rows,
            labels,
        };
        let pass = train_prequentially(&stream, 1, &ModelConfig::default()).unwrap();
        // Only a handful of early rows can be wrong once the sign is learnt...
        assert!(pass.correct >= 395, "{pass:?}");
        // ...but some must be: the second row (class 0) is scored by a model that has only seen
        // class 1, which a score taken after learning would hide.
        assert!(pass.correct < 400, "{pass:?}");
    }
}
