//! A flood beyond the rate: does a caller flooding a predictor's HTTP endpoint slow another,
//! authorised caller, once the guard answers the flood with 429?
//!
//! A predictor of its own (model `guarded`, recording predictions as a deployment does) is given
//! two bearer tokens and a rate per caller (`--http-rate`). The authorised caller sends Open
//! Inference Protocol requests at a steady pace, half its rate, one in flight, and its latencies
//! are taken; the flooder, with the other token, offers many times the rate from concurrent
//! requesters, so most of its requests are answered 429. Each round has three windows, in an
//! order that turns from round to round:
//!
//! - **quiet**: the authorised caller alone;
//! - **refused flood**: the flood beside it, beyond the rate, refused with 429;
//! - **served flood** (the reference): the same flood against a twin predictor with no rate
//!   limit, which scores and records every request of it; the authorised caller then asks the
//!   twin.
//!
//! A round's ratios are each flood window's p99 over the quiet window's. They are read against
//! the usual spread: how far the quiet windows' p99s differ from round to round. The flood's
//! requesters run in this process, on the same two cores as everything else, so what they cost
//! the machine lands in both flood windows alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use freshet::store::Slot;
use freshet_tests::{ModelWriter, Stack};
use serde::Serialize;

use crate::pipeline::cpu_seconds;
use crate::{median, percentile};

const AUTHORISED: &str = "bench-authorised-token-0123456789";
const FLOODER: &str = "bench-flooder-token-0123456789";

/// What the flood scenario runs.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rounds: usize,
    /// Requests per caller per second the predictor allows (`--http-rate`, burst as large).
    pub rate: u32,
    /// Requests the authorised caller sends per window, at half the rate.
    pub requests: usize,
    /// Requests per second the flooder offers.
    pub flood_rate: f64,
    /// Concurrent requesters of the flood.
    pub flood_concurrency: usize,
}

/// What runs beside the authorised caller in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flood {
    None,
    /// Beyond the rate of the guarded predictor: mostly refused.
    Refused,
    /// Against the twin with no rate limit: all served.
    Served,
}

impl Flood {
    fn name(self) -> &'static str {
        match self {
            Flood::None => "quiet",
            Flood::Refused => "flood refused (429)",
            Flood::Served => "flood served (no rate limit)",
        }
    }
}

/// One window: the authorised caller's latencies, and what the flood got meanwhile.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub flood: Flood,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub failed: usize,
    pub flood_sent_per_second: f64,
    pub flood_refused_per_second: f64,
    pub flood_served_per_second: f64,
    /// Refusals without a `Retry-After` header (there should be none).
    pub refused_without_retry_after: u64,
    /// Cores the predictor asked used meanwhile (CPU seconds per second).
    pub predictor_cores: f64,
    /// Cores this process used meanwhile: the authorised caller and the flood's requesters.
    pub requester_cores: f64,
}

/// A predictor under test: where it answers, and its process.
struct Predictor {
    url: String,
    pid: u32,
}

/// Runs the scenario; returns its figures as JSON and prints its table.
pub async fn run(stack: &mut Stack, plan: Plan) -> anyhow::Result<serde_json::Value> {
    let mut writer = ModelWriter::new(stack, "guarded").await?;
    let first = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &first.sha256).await?;
    let tokens = freshet_tests::write_tokens(
        &stack.dir.path().join("bench-tokens"),
        &[AUTHORISED, FLOODER],
    );
    let tokens = tokens.display().to_string();
    let rate = plan.rate.to_string();
    let mut urls = Vec::new();
    for limit in [Some(rate.as_str()), None] {
        let port = freshet_tests::stack::free_port()?.to_string();
        let mut args = vec![
            "--model",
            "guarded",
            "--http-port",
            &port,
            "--http-tokens",
            &tokens,
            "--log",
            "warn",
        ];
        args.extend(limit.iter().flat_map(|rate| ["--http-rate", rate]));
        let index = stack.spawn("predict", &args)?;
        urls.push(Predictor {
            url: format!("http://127.0.0.1:{port}/v2/models/guarded/infer"),
            pid: stack.process(index).pid().unwrap_or(0),
        });
    }
    let (guarded, twin) = (&urls[0], &urls[1]);
    let body = Bytes::from(serde_json::to_vec(&freshet_tests::bookstore_row_infer())?);
    let authorised = freshet_tests::http_client_with_token(AUTHORISED);
    for predictor in [guarded, twin] {
        freshet_tests::eventually(
            Duration::from_secs(30),
            "the guarded predictors",
            || async {
                let response = authorised
                    .post(&predictor.url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await?;
    }
    eprintln!(
        "flood: {} rounds; the authorised caller at {}/s, the flood offering {:.0}/s, the rate {}/s per caller",
        plan.rounds,
        plan.rate / 2,
        plan.flood_rate,
        plan.rate
    );
    let kinds = [Flood::None, Flood::Refused, Flood::Served];
    let mut windows = Vec::new();
    for round in 0..plan.rounds {
        let mut measured = Vec::new();
        for turn in 0..kinds.len() {
            let flood = kinds[(round + turn) % kinds.len()];
            let predictor = if flood == Flood::Served {
                twin
            } else {
                guarded
            };
            let window = measure(predictor, &body, &authorised, flood, plan).await?;
            eprintln!(
                "  round {} {}: p50 {:.0} µs, p99 {:.0} µs, p999 {:.0} µs, {} failed; flood sent {:.0}/s, 429 {:.0}/s, served {:.0}/s; predictor {:.2} cores, requesters {:.2}",
                round + 1,
                flood.name(),
                window.p50_us,
                window.p99_us,
                window.p999_us,
                window.failed,
                window.flood_sent_per_second,
                window.flood_refused_per_second,
                window.flood_served_per_second,
                window.predictor_cores,
                window.requester_cores,
            );
            anyhow::ensure!(
                window.failed == 0,
                "the authorised caller had {} failed requests",
                window.failed
            );
            anyhow::ensure!(
                window.refused_without_retry_after == 0,
                "429 without Retry-After"
            );
            measured.push(window);
        }
        measured.sort_by_key(|w| kinds.iter().position(|k| *k == w.flood));
        windows.push(measured);
    }
    let of = |kind: Flood| -> Vec<&Window> {
        windows
            .iter()
            .flatten()
            .filter(|w| w.flood == kind)
            .collect()
    };
    let ratios = |kind: Flood| -> Vec<f64> {
        windows
            .iter()
            .map(|round| {
                round[kinds.iter().position(|k| *k == kind).unwrap_or(0)].p99_us / round[0].p99_us
            })
            .collect()
    };
    let quiet_p99: Vec<f64> = of(Flood::None).iter().map(|w| w.p99_us).collect();
    let spread = quiet_p99.iter().copied().fold(f64::MIN, f64::max)
        / quiet_p99.iter().copied().fold(f64::MAX, f64::min);
    let med = |ws: &[&Window], f: fn(&Window) -> f64| median(ws.iter().map(|w| f(w)).collect());
    println!(
        "\n| authorised caller, {}/s (rate {}/s per caller) | p50 µs | p99 µs | p999 µs | flood offered | flood answered 429 | flood served | predictor cores | requesters' cores |",
        plan.rate / 2,
        plan.rate
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for kind in kinds {
        let ws = of(kind);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0}/s | {:.0}/s | {:.0}/s | {:.2} | {:.2} |",
            kind.name(),
            med(&ws, |w| w.p50_us),
            med(&ws, |w| w.p99_us),
            med(&ws, |w| w.p999_us),
            med(&ws, |w| w.flood_sent_per_second),
            med(&ws, |w| w.flood_refused_per_second),
            med(&ws, |w| w.flood_served_per_second),
            med(&ws, |w| w.predictor_cores),
            med(&ws, |w| w.requester_cores),
        );
    }
    let listed = |ratios: &[f64]| {
        ratios
            .iter()
            .map(|r| format!("{r:.2}×"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (refused, served) = (ratios(Flood::Refused), ratios(Flood::Served));
    println!(
        "\nrounds' p99 over the quiet window's: flood refused {} (median {:.2}×), flood served {} (median {:.2}×); usual spread (largest / smallest quiet p99): {spread:.2}×",
        listed(&refused),
        median(refused.clone()),
        listed(&served),
        median(served.clone()),
    );
    Ok(serde_json::json!({
        "rate_per_caller": plan.rate, "authorised_per_second": plan.rate / 2,
        "flood_offered_per_second": plan.flood_rate, "flood_concurrency": plan.flood_concurrency,
        "requests_per_window": plan.requests, "rounds": windows,
        "refused_p99_over_quiet": refused.clone(), "median_refused_over_quiet": median(refused),
        "served_p99_over_quiet": served.clone(), "median_served_over_quiet": median(served),
        "quiet_spread": spread,
    }))
}

/// One window of the authorised caller's paced requests to `predictor`, with `flood` beside them
/// (to the same predictor).
async fn measure(
    predictor: &Predictor,
    body: &Bytes,
    authorised: &reqwest::Client,
    flood: Flood,
    plan: Plan,
) -> anyhow::Result<Window> {
    let url = predictor.url.as_str();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let mut flooders = Vec::new();
    if flood != Flood::None {
        let client = freshet_tests::http_client_with_token(FLOODER);
        let each = Duration::from_secs_f64(plan.flood_concurrency as f64 / plan.flood_rate);
        for _ in 0..plan.flood_concurrency {
            let (client, url, body) = (client.clone(), url.to_string(), body.clone());
            let (stop, counts) = (stop.clone(), counts.clone());
            flooders.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(each);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match response.map(|r| (r.status(), r.headers().contains_key("retry-after"))) {
                        Ok((status, _)) if status.is_success() => {
                            counts.served.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((reqwest::StatusCode::TOO_MANY_REQUESTS, retry_after)) => {
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                            if !retry_after {
                                counts.without_retry_after.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {}
                    }
                }
            }));
        }
        // The flood's first burst (the bucket full) is spent, and the flood steady, before
        // measuring.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let (sent, refused, served) = counts.snapshot();
    let cpu = || {
        (
            cpu_seconds(predictor.pid).unwrap_or(f64::NAN),
            cpu_seconds(std::process::id()).unwrap_or(f64::NAN),
        )
    };
    let cpu_before = cpu();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(2.0 / f64::from(plan.rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latencies = Vec::with_capacity(plan.requests);
    let mut failed = 0;
    for _ in 0..plan.requests {
        ticks.tick().await;
        let asked = Instant::now();
        let response = authorised
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => {
                response.bytes().await?;
                latencies.push(asked.elapsed());
            }
            _ => failed += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (sent_after, refused_after, served_after) = counts.snapshot();
    let cpu_after = cpu();
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await?;
    }
    latencies.sort();
    let per_second = |n: u64| n as f64 / seconds;
    Ok(Window {
        flood,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        p999_us: percentile(&latencies, 0.999),
        failed,
        flood_sent_per_second: per_second(sent_after - sent),
        flood_refused_per_second: per_second(refused_after - refused),
        flood_served_per_second: per_second(served_after - served),
        refused_without_retry_after: counts.without_retry_after.load(Ordering::Relaxed),
        predictor_cores: (cpu_after.0 - cpu_before.0) / seconds,
        requester_cores: (cpu_after.1 - cpu_before.1) / seconds,
    })
}

#[derive(Default)]
struct FloodCounts {
    sent: AtomicU64,
    refused: AtomicU64,
    served: AtomicU64,
    without_retry_after: AtomicU64,
}

impl FloodCounts {
    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.served.load(Ordering::Relaxed),
        )
    }
}
