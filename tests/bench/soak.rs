//! Soak: a predictor under steady load while its live version swaps thousands of times. Resident
//! memory and p99 latency must not grow: the run is cut into ten windows of equal swap counts,
//! and the last window is compared with the first (the first is taken after a warm-up).
//!
//! One requester sends single predictions over NATS back to back; a swapper moves
//! `<model>.live` through 120 pre-written versions every `interval`. Every request must succeed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use freshet_model::store::Slot;
use freshet_tests::{ModelWriter, Stack};
use serde::Serialize;

use crate::{Target, percentile, resident_kib};

/// One window of the soak.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub swaps: usize,
    pub requests: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub resident_kib: u64,
}

/// Runs the soak with `swaps` pointer moves, one every `interval`.
pub async fn run(
    stack: &mut Stack,
    swaps: usize,
    interval: Duration,
) -> anyhow::Result<serde_json::Value> {
    let mut writer = ModelWriter::new(stack, "soak").await?;
    let mut versions = Vec::new();
    for version in 1..=120 {
        versions.push((version, writer.write_version(version).await?.sha256));
    }
    writer.point(Slot::Live, 1, &versions[0].1).await?;
    let predict = stack.spawn(
        "predict",
        &[
            "--model",
            "soak",
            "--log",
            "warn",
            "--record-predictions",
            "false",
        ],
    )?;
    let pid = stack.process(predict).pid().unwrap_or(0);
    let request = freshet_tests::bookstore_row_request();
    freshet_tests::eventually(
        Duration::from_secs(30),
        "the predictor to serve",
        || async { stack.predict("soak", &request).await.ok() },
    )
    .await?;
    let target = Target::Nats {
        client: stack.client.clone(),
        subject: "freshet.predict.soak".into(),
        body: Bytes::from(serde_json::to_vec(&request)?),
    };
    for _ in 0..500 {
        target.send().await?;
    }

    let done = Arc::new(AtomicBool::new(false));
    let swapped = Arc::new(AtomicUsize::new(0));
    let swapper = tokio::spawn({
        let (done, swapped) = (done.clone(), swapped.clone());
        async move {
            for (version, sha256) in versions.iter().cycle().skip(1).take(swaps) {
                writer.point(Slot::Live, *version, sha256).await?;
                swapped.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(interval).await;
            }
            done.store(true, Ordering::Relaxed);
            anyhow::Ok(())
        }
    });

    let per_window = swaps.div_ceil(10).max(1);
    let mut windows = Vec::new();
    let mut latencies = Vec::new();
    let mut errors = 0usize;
    let started = Instant::now();
    let mut window_end = per_window;
    loop {
        let at = Instant::now();
        match target.send().await {
            Ok(()) => latencies.push(at.elapsed()),
            Err(_) => errors += 1,
        }
        let finished = done.load(Ordering::Relaxed);
        // A window closes at its swap count; requests after the last swap only close a window
        // if the run ended short of ten.
        let boundary = swapped.load(Ordering::Relaxed) >= window_end;
        if boundary || (finished && windows.len() < 10 && !latencies.is_empty()) {
            latencies.sort();
            let window = Window {
                swaps: swapped.load(Ordering::Relaxed),
                requests: latencies.len(),
                p50_us: percentile(&latencies, 0.5),
                p99_us: percentile(&latencies, 0.99),
                resident_kib: resident_kib(pid).unwrap_or(0),
            };
            eprintln!("  soak window {}: {window:?}", windows.len() + 1);
            windows.push(window);
            latencies.clear();
            window_end += per_window;
        }
        if finished {
            break;
        }
    }
    swapper.await??;
    anyhow::ensure!(errors == 0, "soak: {errors} failed requests");
    let (first, last) = (&windows[0], &windows[windows.len() - 1]);
    println!(
        "\n| soak: {swaps} swaps every {} ms, {:.0} s | first window | last window | change |",
        interval.as_millis(),
        started.elapsed().as_secs_f64()
    );
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| predict p99, µs | {:.0} | {:.0} | {:+.1} % |",
        first.p99_us,
        last.p99_us,
        100.0 * (last.p99_us / first.p99_us - 1.0)
    );
    println!(
        "| predict p50, µs | {:.0} | {:.0} | {:+.1} % |",
        first.p50_us,
        last.p50_us,
        100.0 * (last.p50_us / first.p50_us - 1.0)
    );
    println!(
        "| predictor resident memory, MiB | {:.1} | {:.1} | {:+.1} % |",
        first.resident_kib as f64 / 1024.0,
        last.resident_kib as f64 / 1024.0,
        100.0 * (last.resident_kib as f64 / first.resident_kib.max(1) as f64 - 1.0)
    );
    println!(
        "| requests (all succeeded) | {} | {} | |",
        first.requests, last.requests
    );
    Ok(
        serde_json::json!({ "swaps": swaps, "interval_ms": interval.as_millis() as u64, "errors": errors, "windows": windows }),
    )
}
