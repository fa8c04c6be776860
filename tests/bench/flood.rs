//! A flood beyond the rate: does a caller flooding a predictor's HTTP endpoint slow another,
//! authorised caller, once the guard answers the flood with 429?
//!
//! A predictor of its own (model `guarded`, recording predictions as a deployment does) is given
//! two bearer tokens and a rate per caller (`--http-rate`). The authorised caller sends Open
//! Inference Protocol requests at a steady pace, half its rate, one in flight, and its latencies
//! are taken; the flooder, with the other token, offers many times the rate from concurrent
//! requesters, so most of its requests are answered 429. Each round measures the authorised
//! caller without the flood and then with it, back to back, and the round's ratio is the p99 with
//! the flood over the p99 without. The ratio is read against the usual spread: how far the p99s
//! without a flood differ from round to round.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use freshet::store::Slot;
use freshet_tests::{ModelWriter, Stack};
use serde::Serialize;

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

/// One window: the authorised caller's latencies, and what the flood got meanwhile.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub flood: bool,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub failed: usize,
    pub flood_sent_per_second: f64,
    pub flood_refused_per_second: f64,
    pub flood_served_per_second: f64,
    /// Refusals without a `Retry-After` header (there should be none).
    pub refused_without_retry_after: u64,
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
    let port = freshet_tests::stack::free_port()?;
    stack.spawn(
        "predict",
        &[
            "--model",
            "guarded",
            "--http-port",
            &port.to_string(),
            "--http-tokens",
            &tokens.display().to_string(),
            "--http-rate",
            &plan.rate.to_string(),
            "--log",
            "warn",
        ],
    )?;
    let url = format!("http://127.0.0.1:{port}/v2/models/guarded/infer");
    let body = Bytes::from(serde_json::to_vec(&freshet_tests::bookstore_row_infer())?);
    let authorised = freshet_tests::http_client_with_token(AUTHORISED);
    freshet_tests::eventually(Duration::from_secs(30), "the guarded predictor", || async {
        let response = authorised
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(())
    })
    .await?;
    eprintln!(
        "flood: {} rounds; the authorised caller at {}/s, the flood offering {:.0}/s, the rate {}/s per caller",
        plan.rounds,
        plan.rate / 2,
        plan.flood_rate,
        plan.rate
    );
    let mut windows = Vec::new();
    for round in 0..plan.rounds {
        for flood in [false, true] {
            let window = measure(&url, &body, &authorised, flood, plan).await?;
            eprintln!(
                "  round {} {}: p50 {:.0} µs, p99 {:.0} µs, p999 {:.0} µs, {} failed; flood sent {:.0}/s, 429 {:.0}/s, served {:.0}/s",
                round + 1,
                if flood { "with the flood" } else { "without" },
                window.p50_us,
                window.p99_us,
                window.p999_us,
                window.failed,
                window.flood_sent_per_second,
                window.flood_refused_per_second,
                window.flood_served_per_second,
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
            windows.push(window);
        }
    }
    let quiet: Vec<&Window> = windows.iter().filter(|w| !w.flood).collect();
    let flooded: Vec<&Window> = windows.iter().filter(|w| w.flood).collect();
    let ratios: Vec<f64> = quiet
        .iter()
        .zip(&flooded)
        .map(|(q, f)| f.p99_us / q.p99_us)
        .collect();
    let quiet_p99: Vec<f64> = quiet.iter().map(|w| w.p99_us).collect();
    let spread = quiet_p99.iter().copied().fold(f64::MIN, f64::max)
        / quiet_p99.iter().copied().fold(f64::MAX, f64::min);
    let med = |ws: &[&Window], f: fn(&Window) -> f64| median(ws.iter().map(|w| f(w)).collect());
    println!(
        "\n| authorised caller, {}/s (rate {}/s per caller) | p50 µs | p99 µs | p999 µs | flood offered | flood answered 429 | flood served |",
        plan.rate / 2,
        plan.rate
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, ws) in [("without a flood", &quiet), ("during the flood", &flooded)] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0}/s | {:.0}/s | {:.0}/s |",
            med(ws, |w| w.p50_us),
            med(ws, |w| w.p99_us),
            med(ws, |w| w.p999_us),
            med(ws, |w| w.flood_sent_per_second),
            med(ws, |w| w.flood_refused_per_second),
            med(ws, |w| w.flood_served_per_second),
        );
    }
    println!(
        "\nrounds' p99 with the flood / p99 without: {} (median {:.2}×); usual spread (largest / smallest p99 without a flood): {spread:.2}×",
        ratios
            .iter()
            .map(|r| format!("{r:.2}×"))
            .collect::<Vec<_>>()
            .join(", "),
        median(ratios.clone()),
    );
    Ok(serde_json::json!({
        "rate_per_caller": plan.rate, "authorised_per_second": plan.rate / 2,
        "flood_offered_per_second": plan.flood_rate, "flood_concurrency": plan.flood_concurrency,
        "requests_per_window": plan.requests, "windows": windows,
        "p99_with_flood_over_without": ratios, "median_ratio": median(ratios.clone()),
        "spread_without_flood": spread,
    }))
}

/// One window of the authorised caller's paced requests, with the flood running if `flood`.
async fn measure(
    url: &str,
    body: &Bytes,
    authorised: &reqwest::Client,
    flood: bool,
    plan: Plan,
) -> anyhow::Result<Window> {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let mut flooders = Vec::new();
    if flood {
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
        // The flood's first burst (the bucket full) is spent before measuring.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let (sent, refused, served) = counts.snapshot();
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
