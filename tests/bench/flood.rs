//! A flood beyond the rate: does a caller flooding a predictor's HTTP endpoint slow another,
//! authorised caller, once the guard answers the flood with 429?
//!
//! A predictor of its own (model `guarded`, recording predictions as a deployment does) is given
//! two bearer tokens and a rate per caller (`--http-rate`, with a burst of a tenth of a second's
//! worth). The authorised caller sends Open Inference Protocol requests at a steady pace, half its
//! rate, one in flight, and its latencies are taken; the flooder, with the other token, offers
//! many times the rate from concurrent requesters. Three conditions take turns, one second each
//! (the first tenth of each second is not measured, so requests of the previous second have
//! drained):
//!
//! - **quiet**: the authorised caller alone;
//! - **flood refused**: the flood beside it, beyond the rate, answered 429 but for the rate;
//! - **flood served** (the reference): the same flood against a twin predictor with no rate
//!   limit, which scores and records every request of it; the authorised caller then asks the
//!   twin.
//!
//! Taking turns second by second, the three conditions sample the same spells of a shared machine
//! (as the predictor suite's requests take turns with the echo's). A round's ratios are each flood
//! condition's p99 over the quiet one's; they are read against the usual spread, how far the
//! quiet p99s differ from round to round. The flood's requesters run in this process, on the
//! same two cores as everything else: the cores each side used are reported beside the
//! latencies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use freshet_model::store::Slot;
use freshet_tests::{ModelWriter, Stack};
use serde::Serialize;

use crate::pipeline::cpu_seconds;
use crate::{median, percentile};

const AUTHORISED: &str = "bench-authorised-token-0123456789";
const FLOODER: &str = "bench-flooder-token-0123456789";
/// How long each condition lasts before the next takes its turn.
const SLICE: Duration = Duration::from_secs(1);
/// The start of a slice that is not measured: requests of the previous condition drain.
const SETTLE: Duration = Duration::from_millis(100);

/// What the flood scenario runs.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub rounds: usize,
    /// Requests per caller per second the guarded predictor allows (`--http-rate`).
    pub rate: u32,
    /// Latencies to take per condition and round (about: whole slices are run); the authorised
    /// caller sends half the rate.
    pub requests: usize,
    /// Requests per second the flooder offers.
    pub flood_rate: f64,
    /// Concurrent requesters of the flood.
    pub flood_concurrency: usize,
}

/// What runs beside the authorised caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flood {
    None,
    /// Beyond the rate of the guarded predictor: refused but for the rate.
    Refused,
    /// Against the twin with no rate limit: all served.
    Served,
}

const CONDITIONS: [Flood; 3] = [Flood::None, Flood::Refused, Flood::Served];

impl Flood {
    fn name(self) -> &'static str {
        match self {
            Flood::None => "quiet",
            Flood::Refused => "flood refused (429)",
            Flood::Served => "flood served (no rate limit)",
        }
    }

    fn index(self) -> usize {
        CONDITIONS.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// One condition of one round: the authorised caller's latencies, and what the flood got.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub flood: Flood,
    pub requests: usize,
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
    let (rate, burst) = (plan.rate.to_string(), (plan.rate / 10).max(1).to_string());
    let mut predictors = Vec::new();
    for limited in [true, false] {
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
        if limited {
            args.extend(["--http-rate", &rate, "--http-burst", &burst]);
        }
        let index = stack.spawn("predict", &args)?;
        predictors.push(Predictor {
            url: format!("http://127.0.0.1:{port}/v2/models/guarded/infer"),
            pid: stack.process(index).pid().unwrap_or(0),
        });
    }
    let predictors = Arc::new(predictors);
    let body = Bytes::from(serde_json::to_vec(&freshet_tests::bookstore_row_infer())?);
    let authorised = freshet_tests::http_client_with_token(AUTHORISED);
    for predictor in predictors.iter() {
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
    let mut rounds = Vec::new();
    for round in 0..plan.rounds {
        let windows = measure_round(&predictors, &body, &authorised, round, plan).await?;
        for window in &windows {
            eprintln!(
                "  round {} {}: {} requests, p50 {:.0} µs, p99 {:.0} µs, p999 {:.0} µs, {} failed; flood sent {:.0}/s, 429 {:.0}/s, served {:.0}/s; predictor {:.2} cores, requesters {:.2}",
                round + 1,
                window.flood.name(),
                window.requests,
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
        }
        rounds.push(windows);
    }
    report(&rounds, plan)
}

/// Prints the table and returns the figures as JSON.
fn report(rounds: &[Vec<Window>], plan: Plan) -> anyhow::Result<serde_json::Value> {
    let of = |kind: Flood| -> Vec<&Window> { rounds.iter().map(|r| &r[kind.index()]).collect() };
    let ratios = |kind: Flood| -> Vec<f64> {
        rounds
            .iter()
            .map(|r| r[kind.index()].p99_us / r[Flood::None.index()].p99_us)
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
    for kind in CONDITIONS {
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
        "\nrounds' p99 over the quiet p99: flood refused {} (median {:.2}×), flood served {} (median {:.2}×); usual spread (largest / smallest quiet p99): {spread:.2}×",
        listed(&refused),
        median(refused.clone()),
        listed(&served),
        median(served.clone()),
    );
    Ok(serde_json::json!({
        "rate_per_caller": plan.rate, "burst": (plan.rate / 10).max(1),
        "authorised_per_second": plan.rate / 2, "flood_offered_per_second": plan.flood_rate,
        "flood_concurrency": plan.flood_concurrency, "requests_per_condition": plan.requests,
        "slice_ms": SLICE.as_millis(), "rounds": rounds,
        "refused_p99_over_quiet": refused.clone(), "median_refused_over_quiet": median(refused),
        "served_p99_over_quiet": served.clone(), "median_served_over_quiet": median(served),
        "quiet_spread": spread,
    }))
}

/// The condition in force `elapsed` into a round (which starts with condition `round`), and
/// whether the moment is measured (past the slice's settling time).
fn condition_at(elapsed: Duration, round: usize) -> (Flood, bool) {
    let slice = (elapsed.as_nanos() / SLICE.as_nanos()) as usize;
    let into = elapsed.saturating_sub(SLICE * slice as u32);
    (
        CONDITIONS[(slice + round) % CONDITIONS.len()],
        into >= SETTLE,
    )
}

/// What the flood got under each condition.
#[derive(Default)]
struct FloodCounts {
    sent: [AtomicU64; 3],
    refused: [AtomicU64; 3],
    served: [AtomicU64; 3],
    without_retry_after: AtomicU64,
}

/// One round: the three conditions taking turns a slice at a time, each for as many slices as
/// give it about `requests` measured latencies.
async fn measure_round(
    predictors: &Arc<Vec<Predictor>>,
    body: &Bytes,
    authorised: &reqwest::Client,
    round: usize,
    plan: Plan,
) -> anyhow::Result<Vec<Window>> {
    let pace = f64::from(plan.rate) / 2.0;
    let per_slice = pace * (SLICE - SETTLE).as_secs_f64();
    let slices =
        (plan.requests as f64 / per_slice).ceil().max(1.0) as u32 * CONDITIONS.len() as u32;
    let started = Instant::now();
    let end = started + SLICE * slices;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let client = freshet_tests::http_client_with_token(FLOODER);
    let each = Duration::from_secs_f64(plan.flood_concurrency as f64 / plan.flood_rate);
    let mut tasks = Vec::new();
    for _ in 0..plan.flood_concurrency {
        let (client, body, predictors) = (client.clone(), body.clone(), predictors.clone());
        let (stop, counts) = (stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(each);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                let now = Instant::now();
                let (flood, settled) = condition_at(now - started, round);
                let measured = settled && now < end;
                let url = match flood {
                    Flood::None => continue,
                    Flood::Refused => &predictors[0].url,
                    Flood::Served => &predictors[1].url,
                };
                let i = flood.index();
                if measured {
                    counts.sent[i].fetch_add(1, Ordering::Relaxed);
                }
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let answer =
                    response.map(|r| (r.status(), r.headers().contains_key("retry-after")));
                match answer {
                    Ok((status, _)) if status.is_success() && measured => {
                        counts.served[i].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((reqwest::StatusCode::TOO_MANY_REQUESTS, retry_after)) => {
                        if measured {
                            counts.refused[i].fetch_add(1, Ordering::Relaxed);
                        }
                        if !retry_after {
                            counts.without_retry_after.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
        }));
    }
    // CPU by condition: read at every slice's measured start and end.
    let cpu_by_condition = {
        let predictors = predictors.clone();
        tokio::spawn(async move {
            let mut used = [(0.0f64, 0.0f64, 0.0f64); 3];
            for slice in 0..slices {
                tokio::time::sleep_until((started + SLICE * slice + SETTLE).into()).await;
                let (flood, _) = condition_at(SLICE * slice + SETTLE, round);
                let pid = predictors[usize::from(flood == Flood::Served)].pid;
                let read = || {
                    (
                        cpu_seconds(pid).unwrap_or(f64::NAN),
                        cpu_seconds(std::process::id()).unwrap_or(f64::NAN),
                    )
                };
                let before = read();
                tokio::time::sleep_until((started + SLICE * (slice + 1)).into()).await;
                let after = read();
                let entry = &mut used[flood.index()];
                entry.0 += after.0 - before.0;
                entry.1 += after.1 - before.1;
                entry.2 += (SLICE - SETTLE).as_secs_f64();
            }
            used
        })
    };
    let mut latencies: [Vec<Duration>; 3] = Default::default();
    let mut failed = [0usize; 3];
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(2.0 / f64::from(plan.rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < end {
        ticks.tick().await;
        let (flood, measured) = condition_at(started.elapsed(), round);
        let url = &predictors[usize::from(flood == Flood::Served)].url;
        let asked = Instant::now();
        let response = authorised
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let i = flood.index();
        match response {
            Ok(response) if response.status().is_success() => {
                response.bytes().await?;
                if measured {
                    latencies[i].push(asked.elapsed());
                }
            }
            _ => failed[i] += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let used = cpu_by_condition.await?;
    Ok(CONDITIONS
        .iter()
        .map(|&flood| {
            let i = flood.index();
            let mut measured = std::mem::take(&mut latencies[i]);
            measured.sort();
            let (predictor, requesters, seconds) = used[i];
            let per_second = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64 / seconds;
            Window {
                flood,
                requests: measured.len(),
                p50_us: percentile(&measured, 0.5),
                p99_us: percentile(&measured, 0.99),
                p999_us: percentile(&measured, 0.999),
                failed: failed[i],
                flood_sent_per_second: per_second(&counts.sent[i]),
                flood_refused_per_second: per_second(&counts.refused[i]),
                flood_served_per_second: per_second(&counts.served[i]),
                refused_without_retry_after: counts.without_retry_after.load(Ordering::Relaxed),
                predictor_cores: predictor / seconds,
                requester_cores: requesters / seconds,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_take_turns_a_slice_at_a_time() {
        let at = |ms: u64, round| condition_at(Duration::from_millis(ms), round);
        assert_eq!(at(0, 0), (Flood::None, false));
        assert_eq!(at(150, 0), (Flood::None, true));
        assert_eq!(at(1050, 0), (Flood::Refused, false));
        assert_eq!(at(2500, 0), (Flood::Served, true));
        assert_eq!(at(3500, 0), (Flood::None, true));
        assert_eq!(at(500, 1), (Flood::Refused, true));
    }
}
