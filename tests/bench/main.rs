//! `freshet-bench`: every benchmark suite, each with its floor measured in the same run (`make
//! bench`). Medians over several runs are reported, because shared machines are noisy.
//!
//! - `pipeline` ([`pipeline`]): events through featurize → train to a predictor's reply, beside
//!   the JetStream floors and the Python peer;
//! - `predict` (this file): the predictor against a bare echo, and by model size;
//! - `train`, `featurize`, `detectors` (with drift's bank on bookstore examples, `bank.rs`),
//!   `soak`: in their modules.
//!
//! The functions are the binaries built beside this one, so build all in release. The predictor
//! suite starts a nats-server and a predictor, writes a model version, and measures:
//! - the floor: a bare NATS echo responder in a process of its own (this binary, started with
//!   `--echo-responder`), so the floor crosses the same process boundary a predictor does; the
//!   same echo inside this process is reported beside it for reference;
//! - the predictor over NATS: single requests, single requests while versions swap every 50 ms,
//!   and batches of 64 rows;
//! - the predictor over HTTP (Open Inference Protocol `infer`), single rows;
//! - the predictor's resident memory after the load;
//! - an authorised HTTP caller's latency while another caller floods beyond its rate ([`flood`]).
//!
//! Latency is measured with one request in flight at a time (p50/p99/p999); throughput with 32
//! concurrent requesters for a fixed time. In each round the predictor's requests take turns
//! with the echo floor's, request by request, first without swaps and then while swapping, and
//! the ratios are taken within the round. Everything runs on loopback and stops by itself.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

mod bank;
mod cgroup;
mod detectors;
mod featurize;
mod flood;
mod pipeline;
mod soak;
mod train;

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use freshet_model::store::{Cause, PointerStore, Slot, Verified};
use freshet_tests::{ModelWriter, Stack};
use futures::StreamExt;
use serde::Serialize;

/// freshet's benchmark suites, each beside its floor (and the pipeline beside a Python peer)
/// measured in the same run.
#[derive(Debug, Clone, Parser)]
struct Args {
    /// Runs per scenario; medians over runs are reported
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sequential requests per latency measurement
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    /// Seconds per throughput measurement
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent requesters for throughput
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Where to write the machine-readable results
    #[arg(long, default_value = "target/bench/predict.json")]
    json: std::path::PathBuf,
    /// Which suites to run: pipeline, predict, train, featurize, scale (featurize replicas
    /// under a CPU quota each; needs root for cgroups, skipped otherwise), detectors, and soak
    /// (not run unless named; about 4 minutes) (comma-separated)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pipeline,predict,train,featurize,scale,detectors"
    )]
    suite: Vec<String>,
    /// Pipeline: actions published at full speed through featurize → train
    #[arg(long, default_value_t = 50_000)]
    pipeline_actions: usize,
    /// Pipeline: the fixed offered load for freshness, events/s
    #[arg(long, default_value_t = 10_000.0)]
    pipeline_rate: f64,
    /// Pipeline: the low offered load at which freshet and the peer are compared, events/s
    #[arg(long, default_value_t = 1_000.0)]
    pipeline_low_rate: f64,
    /// Pipeline: seconds of each offered load
    #[arg(long, default_value_t = 5.0)]
    pipeline_seconds: f64,
    /// Pipeline: skip the scale curve (2 and 4 featurize replicas, train batches of 64 and 1024)
    #[arg(long)]
    pipeline_without_scale: bool,
    /// Pipeline: skip the Python peer (nothing to install)
    #[arg(long)]
    pipeline_without_peer: bool,
    /// Pipeline: actions the Python peer learns at full speed
    #[arg(long, default_value_t = 20_000)]
    peer_actions: usize,
    /// Streams per family in the detectors suite (each 10,000 observations)
    #[arg(long, default_value_t = 20)]
    detector_seeds: u64,
    /// Run the detectors suite without River (no reference column; nothing to install)
    #[arg(long)]
    detectors_without_river: bool,
    /// Detectors suite, the bank on bookstore examples: generated actions of the stationary
    /// stream (2.7 M give over a million examples)
    #[arg(long, default_value_t = 2_700_000)]
    bank_stationary_actions: usize,
    /// The bank on bookstore examples: actions of each stream with a change (halfway)
    #[arg(long, default_value_t = 200_000)]
    bank_change_actions: usize,
    /// The bank on bookstore examples: streams per change
    #[arg(long, default_value_t = 5)]
    bank_change_seeds: u64,
    /// Soak: pointer moves while the predictor serves
    #[arg(long, default_value_t = 10_000)]
    soak_swaps: usize,
    /// Soak: time between pointer moves
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    soak_interval: Duration,
    /// Flood: requests per second each HTTP caller may make (the guarded predictor's
    /// --http-rate); the authorised caller sends half as many
    #[arg(long, default_value_t = 1_000)]
    flood_rate_limit: u32,
    /// Flood: requests the flooder offers per second
    #[arg(long, default_value_t = 10_000.0)]
    flood_offered: f64,
    /// Flood: concurrent requesters of the flood
    #[arg(long, default_value_t = 32)]
    flood_concurrency: usize,
    /// Flood: the authorised caller's requests per window (quiet, beside a refused flood, beside
    /// a served one)
    #[arg(long, default_value_t = 5_000)]
    flood_requests: usize,
    /// Examples per training run (published as fast as JetStream takes them)
    #[arg(long, default_value_t = 100_000)]
    train_examples: u64,
    /// User actions per featurize run (after a 200-book catalogue)
    #[arg(long, default_value_t = 30_000)]
    featurize_actions: usize,
    /// Scale: featurize replicas at each point of the curve (each divides 8 partitions)
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    scale_replicas: Vec<usize>,
    /// Scale: CPUs each replica may use (its cgroup's quota); small enough that the replicas,
    /// not nats-server, limit throughput until the server saturates
    #[arg(long, default_value_t = 0.1)]
    scale_cpus: f64,
    /// Offered load for the fixed-rate freshness measurement, examples/s
    #[arg(long, default_value_t = 5_000.0)]
    offered_rate: f64,
    /// Run only a bare echo responder on `bench.echo` at this NATS URL (the floor's process)
    #[arg(long, hide = true)]
    echo_responder: Option<String>,
    /// Run only a swapper at this NATS URL: move bookstore's live pointer through versions
    /// 2..=120 of the store at --swap-store every 50 ms, until killed (a process of its own, as
    /// a trainer is, so its work does not land in the requester's latency)
    #[arg(long, hide = true)]
    swapper: Option<String>,
    #[arg(long, hide = true)]
    swap_store: Option<String>,
}

/// Answers every request on `subject` with its own payload, doing nothing else.
async fn echo(client: async_nats::Client, subject: &str) -> anyhow::Result<()> {
    let mut requests = client.subscribe(subject.to_string()).await?;
    while let Some(message) = requests.next().await {
        if let Some(reply) = message.reply {
            let _ = client.publish(reply, message.payload).await;
        }
    }
    Ok(())
}

/// Kills the echo process when the benchmark ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One scenario's medians.
#[derive(Debug, Clone, Serialize)]
struct Row {
    scenario: String,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    per_second: f64,
    unit: &'static str,
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A request that can be sent many times: over NATS or over HTTP.
#[derive(Clone)]
enum Target {
    Nats {
        client: async_nats::Client,
        subject: String,
        body: Bytes,
    },
    Http {
        client: reqwest::Client,
        url: String,
        body: Bytes,
    },
}

impl Target {
    async fn send(&self) -> anyhow::Result<()> {
        match self {
            Target::Nats {
                client,
                subject,
                body,
            } => {
                let reply = client.request(subject.clone(), body.clone()).await?;
                if reply
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Service-Error"))
                    .is_some()
                {
                    anyhow::bail!("service error: {:?}", reply.headers);
                }
            }
            Target::Http { client, url, body } => {
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                if !response.status().is_success() {
                    anyhow::bail!("HTTP {}", response.status());
                }
                response.bytes().await?;
            }
        }
        Ok(())
    }
}

/// One run of one scenario.
#[derive(Debug, Clone, Copy)]
struct Measured {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    per_second: f64,
    errors: usize,
}

/// Latencies of `requests` requests to each target, one request in flight, sorted, and the
/// failed requests. The targets take turns request by request (who goes first rotates), so
/// each one's figures come from the same moments of a shared machine.
async fn latencies(
    targets: &[&Target],
    requests: usize,
) -> anyhow::Result<Vec<(Vec<Duration>, usize)>> {
    for target in targets {
        for _ in 0..200 {
            target.send().await?;
        }
    }
    let mut measured = vec![(Vec::with_capacity(requests), 0); targets.len()];
    for i in 0..requests {
        for turn in 0..targets.len() {
            let k = (i + turn) % targets.len();
            let started = Instant::now();
            match targets[k].send().await {
                Ok(()) => measured[k].0.push(started.elapsed()),
                Err(_) => measured[k].1 += 1,
            }
        }
    }
    for (latencies, _) in &mut measured {
        latencies.sort();
    }
    Ok(measured)
}

/// Latency percentiles with one request in flight, then throughput with `concurrency`.
async fn measure(
    target: &Target,
    args: &Args,
    rows_per_request: usize,
) -> anyhow::Result<Measured> {
    let (latencies, errors) = latencies(&[target], args.requests)
        .await?
        .pop()
        .expect("one target measured");
    throughput(target, args, rows_per_request, (latencies, errors)).await
}

/// Throughput with `concurrency` requesters, completing the figures of `latencies` (sorted)
/// and their failed requests.
async fn throughput(
    target: &Target,
    args: &Args,
    rows_per_request: usize,
    (latencies, mut errors): (Vec<Duration>, usize),
) -> anyhow::Result<Measured> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let (mut done, mut failed) = (0usize, 0usize);
            while Instant::now() < deadline {
                match target.send().await {
                    Ok(()) => done += 1,
                    Err(_) => failed += 1,
                }
            }
            (done, failed)
        }));
    }
    let mut done = 0;
    for worker in workers {
        let (d, f) = worker.await?;
        done += d;
        errors += f;
    }
    Ok(Measured {
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        p999_us: percentile(&latencies, 0.999),
        per_second: (done * rows_per_request) as f64 / args.seconds,
        errors,
    })
}

async fn scenario(
    name: &str,
    unit: &'static str,
    target: &Target,
    args: &Args,
    rows: usize,
) -> anyhow::Result<Row> {
    let mut samples = Samples::new(name, unit);
    for _ in 0..args.runs {
        samples.record(measure(target, args, rows).await?)?;
    }
    Ok(samples.row())
}

/// One scenario's figures, run by run, until they are summarised as a [`Row`] of medians.
struct Samples {
    name: String,
    unit: &'static str,
    runs: Vec<Measured>,
}

impl Samples {
    fn new(name: &str, unit: &'static str) -> Samples {
        Samples {
            name: name.into(),
            unit,
            runs: Vec::new(),
        }
    }

    /// Keeps one run's figures; a run with a failed request fails the benchmark.
    fn record(&mut self, run: Measured) -> anyhow::Result<Measured> {
        let Measured {
            p50_us,
            p99_us,
            p999_us,
            per_second,
            errors,
        } = run;
        eprintln!(
            "  {} run {}: p50 {p50_us:.0} µs, p99 {p99_us:.0} µs, p999 {p999_us:.0} µs, {per_second:.0} {}, {errors} errors",
            self.name,
            self.runs.len() + 1,
            self.unit
        );
        anyhow::ensure!(errors == 0, "{}: {errors} failed requests", self.name);
        self.runs.push(run);
        Ok(run)
    }

    fn row(&self) -> Row {
        let med = |f: fn(&Measured) -> f64| median(self.runs.iter().map(f).collect());
        Row {
            scenario: self.name.clone(),
            p50_us: med(|m| m.p50_us),
            p99_us: med(|m| m.p99_us),
            p999_us: med(|m| m.p999_us),
            per_second: med(|m| m.per_second),
            unit: self.unit,
        }
    }
}

/// The swapper process: moves bookstore's live pointer through versions 2..=120 every 50 ms.
async fn swap_forever(url: &str, store: &str) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let pointers = freshet_model::store::Pointers::new(
        js.get_key_value(freshet::subjects::BUCKET_MODELS).await?,
    );
    let artifacts = freshet_model::store::ArtifactStore::from_url(store)?;
    let model = freshet::ids::ModelName::parse("bookstore")?;
    // Written by the bench itself: verified once here, not at every swap.
    let mut versions = Vec::new();
    for version in 2..=120 {
        versions.push(Verified::check(&artifacts, &model, version).await?);
    }
    for version in versions.iter().cycle() {
        let current = pointers.get(&model, Slot::Live).await?;
        pointers
            .move_to(
                &model,
                Slot::Live,
                version,
                Cause::Operator,
                "bench swap",
                current.revision,
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(url) = &args.echo_responder {
        return echo(async_nats::connect(url).await?, "bench.echo").await;
    }
    if let (Some(url), Some(store)) = (&args.swapper, &args.swap_store) {
        return swap_forever(url, store).await;
    }
    let mut stack = Stack::start().await?;
    let mut report = serde_json::json!({
        "date": chrono::Utc::now(), "runs": args.runs, "machine": machine(),
    });
    if args.suite.iter().any(|s| s == "pipeline") {
        eprintln!("pipeline: {} runs", args.runs);
        report["pipeline"] = pipeline::suite(&pipeline::Plan {
            runs: args.runs,
            actions: args.pipeline_actions,
            rate: args.pipeline_rate,
            low_rate: args.pipeline_low_rate,
            seconds: args.pipeline_seconds,
            scale: !args.pipeline_without_scale,
            peer_actions: (!args.pipeline_without_peer).then_some(args.peer_actions),
        })
        .await?;
    }
    if args.suite.iter().any(|s| s == "predict") {
        report["predict"] = predict_suite(&mut stack, &args).await?;
    }
    if args.suite.iter().any(|s| s == "train") {
        report["train"] = train_suite(&mut stack, &args).await?;
    }
    if args.suite.iter().any(|s| s == "featurize") {
        report["featurize"] = featurize_suite(&args).await?;
    }
    if args.suite.iter().any(|s| s == "scale") {
        report["scale"] = scale_suite(&args).await?;
    }
    if args.suite.iter().any(|s| s == "detectors") {
        let dir = args.json.parent().unwrap_or(std::path::Path::new("."));
        let bank = bank::Sizes {
            stationary_actions: args.bank_stationary_actions,
            change_actions: args.bank_change_actions,
            change_seeds: args.bank_change_seeds,
        };
        report["detectors"] = detectors::run(
            args.detector_seeds,
            bank,
            dir,
            !args.detectors_without_river,
        )?;
    }
    if args.suite.iter().any(|s| s == "soak") {
        report["soak"] = soak::run(&mut stack, args.soak_swaps, args.soak_interval).await?;
    }
    std::fs::create_dir_all(args.json.parent().unwrap_or(std::path::Path::new(".")))?;
    std::fs::write(&args.json, serde_json::to_vec_pretty(&report)?)?;
    Ok(())
}

/// A line naming the machine the figures came from.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// featurize: events/s with one and two replicas against the pull+republish+ack floor.
async fn featurize_suite(args: &Args) -> anyhow::Result<serde_json::Value> {
    eprintln!(
        "featurize: {} actions per run, {} runs",
        args.featurize_actions, args.runs
    );
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let figures = featurize::run(args.featurize_actions).await?;
        eprintln!("  run {}: {figures:?}", run + 1);
        runs.push(figures);
    }
    let med = |f: fn(&featurize::FeaturizeRun) -> f64| median(runs.iter().map(f).collect());
    let floor = med(|r| r.floor_per_second);
    println!("\n| featurize (bookstore events) | median |");
    println!("| --- | ---: |");
    println!("| raw pull + republish + ack floor | {floor:.0} events/s |");
    for (name, value) in [
        ("featurize, 1 replica", med(|r| r.one_replica_per_second)),
        (
            "featurize, 2 replicas (partitions split)",
            med(|r| r.two_replicas_per_second),
        ),
    ] {
        println!(
            "| {name} | {value:.0} events/s ({:.2}× the floor) |",
            value / floor
        );
    }
    let (decode, parse) = (
        med(|r| r.decode_us_per_event),
        med(|r| r.json_parse_us_per_event),
    );
    println!(
        "| decoding an event alone (typed and checked) | {decode:.2} µs ({:.2}× a parse into a JSON tree, {parse:.2} µs) |",
        decode / parse
    );
    Ok(serde_json::json!({ "actions": args.featurize_actions, "runs": runs }))
}

/// Scale-out on one machine: featurize with 1, 2, 4 and 8 replicas, each held to a CPU quota,
/// beside the raw floor of the same run (the server's limit, with nothing held back). Runs take
/// turns over the points, so every point meets the same moments of a shared machine.
async fn scale_suite(args: &Args) -> anyhow::Result<serde_json::Value> {
    if let Err(why) = cgroup::available() {
        eprintln!("scale: skipped, no CPU quota can be set here: {why:#}");
        println!("\nscale: skipped, no CPU quota can be set here ({why:#})");
        return Ok(serde_json::json!({ "skipped": format!("{why:#}") }));
    }
    eprintln!(
        "scale: featurize replicas {:?} at {} CPUs each, {} actions per point, {} runs",
        args.scale_replicas, args.scale_cpus, args.featurize_actions, args.runs
    );
    let mut floors = Vec::new();
    let mut points: Vec<Vec<featurize::ScalePoint>> = vec![Vec::new(); args.scale_replicas.len()];
    for run in 0..args.runs {
        floors.push(featurize::floor(args.featurize_actions).await?);
        for (i, &replicas) in args.scale_replicas.iter().enumerate() {
            let point =
                featurize::scale_point(replicas, args.scale_cpus, args.featurize_actions).await?;
            eprintln!("  run {}: {point:?}", run + 1);
            points[i].push(point);
        }
    }
    let floor = median(floors.clone());
    let one = points
        .first()
        .map(|runs| median(runs.iter().map(|p| p.events_per_second).collect()))
        .unwrap_or(f64::NAN);
    println!(
        "\n| featurize replicas, {} CPUs each ({} partitions) | events/s | × one replica | of linear | throttled periods |",
        args.scale_cpus,
        featurize::SCALE_PARTITIONS
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (i, &replicas) in args.scale_replicas.iter().enumerate() {
        let rate = median(points[i].iter().map(|p| p.events_per_second).collect());
        let throttled = median(points[i].iter().map(|p| p.throttled_share).collect());
        println!(
            "| {replicas} | {rate:.0} | {:.2}× | {:.2} | {:.0}% |",
            rate / one,
            rate / (one * replicas as f64),
            throttled * 100.0
        );
    }
    println!(
        "| raw floor (pull + republish + ack, no quota) | {floor:.0} | {:.2}× | | |",
        floor / one
    );
    Ok(serde_json::json!({
        "cpus_per_replica": args.scale_cpus,
        "partitions": featurize::SCALE_PARTITIONS,
        "actions": args.featurize_actions,
        "floors": floors,
        "points": points,
    }))
}

/// Training: examples/s through train against the raw consume-and-ack floor, and freshness.
async fn train_suite(stack: &mut Stack, args: &Args) -> anyhow::Result<serde_json::Value> {
    eprintln!(
        "training: {} examples per run, {} runs",
        args.train_examples, args.runs
    );
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let figures = train::run(stack, run, args.train_examples, args.offered_rate).await?;
        eprintln!("  run {}: {figures:?}", run + 1);
        runs.push(figures);
    }
    let med = |f: fn(&train::TrainRun) -> f64| median(runs.iter().map(f).collect());
    let (floor, through) = (med(|r| r.floor_per_second), med(|r| r.train_per_second));
    println!("\n| training on JetStream (20 features, batch 256) | median |");
    println!("| --- | ---: |");
    println!("| raw pull + ack floor | {floor:.0} examples/s |");
    println!(
        "| train, end to end (learned by a live version) | {through:.0} examples/s ({:.2}× the floor) |",
        through / floor
    );
    println!(
        "| freshness at full speed, p50 / p99 | {:.0} / {:.0} ms |",
        med(|r| r.freshness_p50_ms),
        med(|r| r.freshness_p99_ms)
    );
    println!(
        "| freshness at {:.0} examples/s offered, p50 / p99 | {:.0} / {:.0} ms |",
        args.offered_rate,
        med(|r| r.offered_freshness_p50_ms),
        med(|r| r.offered_freshness_p99_ms)
    );
    Ok(serde_json::json!({ "examples": args.train_examples, "runs": runs }))
}

/// The predictor against its echo floor.
async fn predict_suite(stack: &mut Stack, args: &Args) -> anyhow::Result<serde_json::Value> {
    let args = args.clone();
    let mut writer = ModelWriter::new(stack, "bookstore").await?;
    let first = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &first.sha256).await?;
    let http_port = freshet_tests::stack::free_port()?;
    let predict = stack.spawn(
        "predict",
        &["--http-port", &http_port.to_string(), "--log", "warn"],
    )?;
    let request = freshet_tests::bookstore_row_request();
    let single = Bytes::from(serde_json::to_vec(&request)?);
    freshet_tests::eventually(
        Duration::from_secs(30),
        "the predictor to serve",
        || async { stack.predict("bookstore", &request).await.ok() },
    )
    .await?;

    // The floor: a responder that echoes, doing nothing else, in a process of its own like the
    // predictor; and the same responder inside this process, for reference.
    let _echo_process = Child(
        std::process::Command::new(std::env::current_exe()?)
            .args(["--echo-responder", &stack.nats.url()])
            .spawn()?,
    );
    tokio::spawn(echo(stack.client.clone(), "bench.echo.local"));
    freshet_tests::eventually(Duration::from_secs(10), "the echo responder", || async {
        stack
            .client
            .request("bench.echo", Bytes::from_static(b"ping"))
            .await
            .ok()
    })
    .await?;

    let client = stack.client.clone();
    let nats = |subject: &str, body: &Bytes| Target::Nats {
        client: client.clone(),
        subject: subject.into(),
        body: body.clone(),
    };
    eprintln!("measuring (medians of {} runs)", args.runs);
    // The versions the swapper moves through are written beforehand, and a process of its own
    // moves the pointer (as a trainer would), so neither training nor the pointer writes run in
    // this process while it measures.
    for version in 2..=120 {
        writer.write_version(version).await?;
    }
    // Pointer writes, read from the bucket's stream (a KV handle's status is cached).
    let js = stack.js.clone();
    let pointer_writes = || async {
        anyhow::Ok(
            js.get_stream("KV_MODELS")
                .await?
                .info()
                .await?
                .state
                .last_sequence,
        )
    };
    // Paired measurement. In each round the predictor's latencies are measured with the echo
    // floor's, the two taking turns request by request: a slow spell of a shared machine then
    // weighs on both sides of the ratio. That is done without swaps, then while versions swap
    // every 50 ms; the swapping predictor's ratio to its echo over the steady one's ratio to
    // its echo is what swaps cost, with the machine's state in between divided out.
    let mut echo_floor = Samples::new("NATS echo, separate process (floor)", "req/s");
    let mut serving = Samples::new("predict single, NATS", "req/s");
    let mut swapping = Samples::new("predict single, NATS, swapping every 50 ms", "req/s");
    let (mut to_echo, mut to_steady, mut swaps) = (Vec::new(), Vec::new(), 0);
    let predict_single = nats("freshet.predict.bookstore", &single);
    let echo_single = nats("bench.echo", &single);
    let paired = |args: Args| {
        let (predict, echo) = (predict_single.clone(), echo_single.clone());
        async move {
            let mut measured = latencies(&[&echo, &predict], args.requests).await?;
            let predicted = measured.pop().expect("two targets measured");
            let echoed = measured.pop().expect("two targets measured");
            anyhow::Ok((
                throughput(&echo, &args, 1, echoed).await?,
                throughput(&predict, &args, 1, predicted).await?,
            ))
        }
    };
    for _ in 0..args.runs {
        let (floor, steady) = paired(args.clone()).await?;
        let (floor, steady) = (echo_floor.record(floor)?, serving.record(steady)?);
        let writes_before = pointer_writes().await?;
        let swapper = Child(
            std::process::Command::new(std::env::current_exe()?)
                .args(["--swapper", &stack.nats.url(), "--swap-store"])
                .arg(stack.artifacts_url())
                .spawn()?,
        );
        freshet_tests::eventually(Duration::from_secs(30), "the swapper to start", || async {
            (pointer_writes().await.ok()? > writes_before).then_some(())
        })
        .await?;
        let (swapping_floor, swapped) = paired(args.clone()).await?;
        let swapped = swapping.record(swapped)?;
        drop(swapper);
        swaps += pointer_writes().await? - writes_before;
        let steady_over_echo = steady.p99_us / floor.p99_us;
        to_echo.push(steady_over_echo);
        to_steady.push(swapped.p99_us / swapping_floor.p99_us / steady_over_echo);
    }
    eprintln!("  {swaps} swaps while swapping");
    let paired = serde_json::json!({
        "predict_p99_over_echo_p99": to_echo.clone(),
        "swapping_p99_over_steady_p99": to_steady.clone(),
        "median_predict_over_echo": median(to_echo),
        "median_swapping_over_steady": median(to_steady),
    });
    let mut rows = vec![echo_floor.row()];
    rows.push(
        scenario(
            "NATS echo, inside the requesting process",
            "req/s",
            &nats("bench.echo.local", &single),
            &args,
            1,
        )
        .await?,
    );
    rows.push(serving.row());
    rows.push(swapping.row());

    // The predictor's own cost, without recording each prediction on PREDICTIONS (a second
    // predictor serving another model with --record-predictions false).
    serve_unrecorded(stack, "plain", Default::default()).await?;
    freshet_tests::eventually(
        Duration::from_secs(30),
        "the second predictor to serve",
        || async { stack.predict("plain", &request).await.ok() },
    )
    .await?;
    rows.push(
        scenario(
            "predict single, NATS, not recording predictions",
            "req/s",
            &nats("freshet.predict.plain", &single),
            &args,
            1,
        )
        .await?,
    );

    let batch = Bytes::from(serde_json::to_vec(
        &serde_json::json!({"instances": vec![request.clone(); 64]}),
    )?);
    rows.push(
        scenario(
            "predict batch of 64, NATS",
            "rows/s",
            &nats("freshet.predict.bookstore.batch", &batch),
            &args,
            64,
        )
        .await?,
    );

    let infer = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "features", "shape": [1, freshet_features::bookstore::FEATURE_NAMES.len()], "datatype": "FP32", "data": request.features}]
    }))?);
    let http = Target::Http {
        client: reqwest::Client::new(),
        url: format!("http://127.0.0.1:{http_port}/v2/models/bookstore/infer"),
        body: infer,
    };
    match http.send().await {
        Ok(()) => {
            rows.push(scenario("predict single, HTTP (OIP infer)", "req/s", &http, &args, 1).await?)
        }
        Err(err) => eprintln!("  HTTP inference unavailable ({err}); skipped"),
    }
    let rss = stack.process(predict).pid().and_then(resident_kib);
    let sizes = model_sizes(stack, &args, &client, &single, &batch).await?;

    let floor = rows[0].clone();
    println!("| scenario | p50 µs | p99 µs | p999 µs | throughput | p99 / floor p99 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} {} | {:.2} |",
            row.scenario,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            row.per_second,
            row.unit,
            row.p99_us / floor.p99_us
        );
    }
    println!(
        "\npaired, requests taking turns with the echo's (median of the rounds' ratios): predictor p99 / echo p99 {:.2}×; \
         p99 while swapping / p99 not swapping {:.2}× ({swaps} swaps)",
        paired["median_predict_over_echo"]
            .as_f64()
            .unwrap_or(f64::NAN),
        paired["median_swapping_over_steady"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
    if let Some(kib) = rss {
        println!(
            "\npredictor resident memory after the load: {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    let flood = flood::run(
        stack,
        flood::Plan {
            rounds: args.runs,
            rate: args.flood_rate_limit,
            requests: args.flood_requests,
            flood_rate: args.flood_offered,
            flood_concurrency: args.flood_concurrency,
        },
    )
    .await?;
    Ok(serde_json::json!({
        "requests": args.requests, "seconds": args.seconds, "concurrency": args.concurrency,
        "rows": rows, "paired": paired, "predict_rss_kib": rss, "swaps": swaps, "model_sizes": sizes,
        "flood": flood,
    }))
}

/// The scale curve of model size: a predictor per model (not recording predictions, so the
/// model's own cost shows) serving a logistic regression and mlps of growing width, single rows
/// and batches of 64.
async fn model_sizes(
    stack: &mut Stack,
    args: &Args,
    client: &async_nats::Client,
    single: &Bytes,
    batch: &Bytes,
) -> anyhow::Result<Vec<serde_json::Value>> {
    use freshet_model::{ModelConfig, ModelKind};
    let sizes = [
        ("logistic", ModelConfig::default()),
        (
            "mlp64",
            ModelConfig {
                kind: ModelKind::Mlp { hidden: 64 },
                ..Default::default()
            },
        ),
        (
            "mlp1024",
            ModelConfig {
                kind: ModelKind::Mlp { hidden: 1024 },
                ..Default::default()
            },
        ),
        (
            "mlp4096",
            ModelConfig {
                kind: ModelKind::Mlp {
                    hidden: freshet_model::MAX_HIDDEN,
                },
                ..Default::default()
            },
        ),
    ];
    let mut measured = Vec::new();
    for (name, config) in sizes {
        let manifest = serve_unrecorded(stack, name, config).await?;
        let model = freshet::ids::ModelName::parse(name)?;
        let request = freshet_tests::bookstore_row_request();
        freshet_tests::eventually(Duration::from_secs(30), "the sized predictor", || async {
            stack.predict(model.as_str(), &request).await.ok()
        })
        .await?;
        let target = |subject: String, body: &Bytes| Target::Nats {
            client: client.clone(),
            subject,
            body: body.clone(),
        };
        let endpoint = freshet::serving::endpoint_single(&stack.subjects, &model);
        let one = scenario(name, "req/s", &target(endpoint.clone(), single), args, 1).await?;
        let batch_endpoint = freshet::serving::endpoint_batch(&stack.subjects, &model);
        let many = scenario(name, "rows/s", &target(batch_endpoint, batch), args, 64).await?;
        measured.push(serde_json::json!({
            "model": name, "parameters": parameters(&config), "artifact_bytes": manifest.size_bytes,
            "single": one, "batch_of_64": many,
        }));
    }
    println!(
        "\n| model (16 features) | parameters | artifact | single p50 / p99 µs | single req/s | batch of 64 p50 / p99 µs | rows/s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &measured {
        let f = |path: &str, key: &str| row[path][key].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.1} KiB | {:.0} / {:.0} | {:.0} | {:.0} / {:.0} | {:.0} |",
            row["model"].as_str().unwrap_or_default(),
            row["parameters"],
            row["artifact_bytes"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            f("single", "p50_us"),
            f("single", "p99_us"),
            f("single", "per_second"),
            f("batch_of_64", "p50_us"),
            f("batch_of_64", "p99_us"),
            f("batch_of_64", "per_second"),
        );
    }
    Ok(measured)
}

/// Writes version 1 of a model of `config` named `name`, makes it live, and starts a predictor
/// for it that does not record predictions; returns the version's manifest.
async fn serve_unrecorded(
    stack: &mut Stack,
    name: &str,
    config: freshet_model::ModelConfig,
) -> anyhow::Result<freshet_model::Manifest> {
    let mut writer = ModelWriter::with_config(stack, name, config).await?;
    let manifest = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &manifest.sha256).await?;
    stack.spawn(
        "predict",
        &[
            "--model",
            name,
            "--record-predictions",
            "false",
            "--http-port",
            "0",
            "--log",
            "warn",
        ],
    )?;
    Ok(manifest)
}

/// Trainable parameters of a model of `config` over the bookstore's features.
fn parameters(config: &freshet_model::ModelConfig) -> usize {
    config
        .kind
        .parameter_count(freshet_features::bookstore::FEATURE_NAMES.len())
        .unwrap_or_default()
}
