//! An operator's rollback is a rollback whatever words its reason uses: with train and drift
//! running, a bad version made live by hand is rolled back with `freshet models rollback --to V
//! --reason "bad batch"`. drift's gate drops the version it had kept as the fallback (it opens
//! no trial of the bad version against the restored one, so it never proposes to undo the
//! operator's move), and the live view marks the move as a rollback.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use freshet::ids::ModelName;
use freshet::model::{Manifest, ModelConfig, Trainer};
use freshet::store::{ArtifactStore, Cause, PointerStore, Pointers, Slot, Verified};
use freshet::subjects::{BUCKET_MODELS, STREAM_CONTROL, STREAM_EXAMPLES};
use freshet_cli::stack::bin_dir;
use freshet_tests::{Stack, eventually, live_through};

const WIDTH: usize = 4;

/// Example `n`: label x0 + x1 > 0 (or its opposite, `flipped`).
fn example(n: u64, flipped: bool) -> (Vec<f32>, f32) {
    let features: Vec<f32> = (0..WIDTH)
        .map(|j| {
            let x = n
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((j as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9));
            ((x >> 11) % 20_000) as f32 / 10_000.0 - 1.0
        })
        .collect();
    let positive = features[0] + features[1] > 0.0;
    (features, f32::from(positive != flipped))
}

/// Publishes examples `range` in chunks of 50, as a live stream would.
async fn stream(stack: &Stack, model: &ModelName, range: std::ops::Range<u64>) {
    let mut start = range.start;
    while start < range.end {
        let end = (start + 50).min(range.end);
        stack
            .publish_examples(model, start..end, |n| example(n, false))
            .await
            .unwrap();
        start = end;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process this test started, killed (by its own handle) when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `freshet view --port 0`; returns it and the URL it printed.
fn start_view(stack: &Stack) -> anyhow::Result<(Started, String)> {
    let mut child = Command::new(bin_dir()?.join("freshet"))
        .args(["view", "--port", "0", "--window", "10m"])
        .envs(stack.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stack.dir.path().join("view.log"))?)
        .spawn()?;
    let stdout = child.stdout.take().unwrap();
    let started = Started(child);
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        if let Some(Ok(line)) = BufReader::new(stdout).lines().next() {
            let _ = sender.send(line);
        }
    });
    let line = receiver
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow::anyhow!("freshet view printed no URL within 30 s"))?;
    let url = line
        .strip_prefix("live view on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected first line: {line}"))?
        .to_string();
    Ok((started, url))
}

/// The value of drift's `freshet_live_version` gauge.
async fn drift_live_version(port: u16) -> Option<u64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("freshet_live_version{") || l.starts_with("freshet_live_version "))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rollback_is_a_rollback_whatever_its_reason_says() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("gated")?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let train = stack.spawn(
        "train",
        &[
            "--model",
            "gated",
            "--keep-versions",
            "0",
            "--batch-size",
            "50",
            "--publish-interval",
            "300ms",
        ],
    )?;
    let drift_port = freshet_tests::stack::free_port()?;
    let drift = stack.spawn(
        "drift",
        &[
            "--model",
            "gated",
            "--feature-detectors",
            "none",
            "--reaction",
            "alert",
            "--gate-min-examples",
            "300",
            "--http-port",
            &drift_port.to_string(),
        ],
    )?;
    let logs = |stack: &Stack| {
        format!(
            "train log:\n{}\ndrift log:\n{}",
            stack.log_of("train", train),
            stack.log_of("drift", drift)
        )
    };
    const GOOD: u64 = 2_000;
    stream(&stack, &model, 0..GOOD).await;
    let good = eventually(Duration::from_secs(60), "the concept learned", || {
        live_through(&pointers, &artifacts, &model, GOOD)
    })
    .await?;
    eventually(
        Duration::from_secs(20),
        "drift following the good version",
        || async { (drift_live_version(drift_port).await? == good.version).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack)))?;

    // A model fitted to the opposite labels, deployed by hand as a new version: live jumps to
    // it, and drift keeps the good version as the fallback.
    let config = ModelConfig::default();
    let mut inverted = Trainer::new(&config, WIDTH)?;
    for b in 0..40u64 {
        let (rows, labels): (Vec<Vec<f32>>, Vec<f32>) =
            (b * 50..(b + 1) * 50).map(|n| example(n, true)).unzip();
        inverted.train_batch(&rows, &labels)?;
    }
    let bytes = inverted.to_bytes()?;
    let bad_version = artifacts.versions(&model).await?.last().copied().unwrap() + 10;
    let bad = Manifest {
        version: bad_version,
        parent: None,
        sha256: freshet::model::sha256_hex(&bytes),
        size_bytes: bytes.len() as u64,
        step: inverted.step(),
        created_at: chrono::Utc::now(),
        lineage: None,
        ..good.clone()
    };
    artifacts.put_version(&bad, &bytes).await?;
    let current = pointers.get(&model, Slot::Live).await?;
    pointers
        .move_to(
            &model,
            Slot::Live,
            &Verified::held(&bad),
            Cause::Operator,
            "deployed by hand",
            current.revision,
        )
        .await?;
    eventually(
        Duration::from_secs(20),
        "drift following the bad version",
        || async { (drift_live_version(drift_port).await? == bad_version).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack)))?;

    // The operator rolls back, in words that do not say "rollback".
    let output = Command::new(bin_dir()?.join("freshet"))
        .args(["models", "rollback", "gated", "--to"])
        .arg(good.version.to_string())
        .args(["--reason", "bad batch"])
        .envs(stack.env())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "freshet models rollback: {output:?}"
    );
    eventually(
        Duration::from_secs(20),
        "drift following the restored version",
        || async { (drift_live_version(drift_port).await? == good.version).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack)))?;

    // The live view calls the move a rollback.
    let (_view, url) = start_view(&stack)?;
    let view_kind = eventually(
        Duration::from_secs(20),
        "the operator's move in the view",
        || async {
            let state: serde_json::Value = reqwest::get(format!("{url}api/state"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            state["models"][0]["moves"]
                .as_array()?
                .iter()
                .find(|m| {
                    m["from"].as_u64() == Some(bad_version)
                        && m["version"].as_u64() == Some(good.version)
                })
                .map(|m| m["kind"].clone())
        },
    )
    .await?;

    // Enough examples for the gate to have judged any trial several times over, all of them
    // read by drift.
    const MORE: u64 = 1_500;
    stream(&stack, &model, GOOD..GOOD + MORE).await;
    let last = stack.last_sequence(STREAM_EXAMPLES).await?;
    let examples = stack.js.get_stream(STREAM_EXAMPLES).await?;
    eventually(
        Duration::from_secs(60),
        "drift reading every example",
        || async {
            let info = examples.consumer_info("drift-gated").await.ok()?;
            (info.ack_floor.stream_sequence >= last).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack)))?;
    let judged_bad: Vec<serde_json::Value> = stack
        .read_stream(STREAM_CONTROL, 100_000)
        .await?
        .iter()
        .map(|m| m.json())
        .filter(|j| j["kind"] == "gate" && j["challenger_version"].as_u64() == Some(bad_version))
        .collect();

    assert!(
        view_kind == "rollback" && judged_bad.is_empty(),
        "the view calls the move {view_kind}, and the gate judged the rolled-back version as a \
         fallback: {judged_bad:?}\n{}",
        logs(&stack)
    );
    Ok(())
}
