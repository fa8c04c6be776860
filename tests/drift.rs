//! drift against a real server: a shift in one feature of a model's examples is reported on
//! CONTROL for that feature, as one episode, and a drift function killed with SIGKILL mid-stream
//! and restarted neither loses nor double-counts an example (its checkpoint in DRIFT counts each
//! once) nor reports a transition twice, nor opens the episode again.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use freshet::subjects::{BUCKET_DRIFT, STREAM_CONTROL};
use freshet_features::bookstore::FEATURE_NAMES;
use freshet_model::store::Slot;
use freshet_tests::{ModelWriter, Stack, eventually};

const BEFORE: u64 = 600;
const AFTER: u64 = 600;

/// The feature that shifts.
const SHIFTED: usize = 5;

/// A bookstore-shaped row whose feature `SHIFTED` moves up by 3 after the shift.
fn row(n: u64) -> (Vec<f32>, f32) {
    let wobble = ((n * 7_919) % 100) as f32 / 100.0;
    let mut features: Vec<f32> = (0..FEATURE_NAMES.len())
        .map(|i| i as f32 * 0.1 + wobble)
        .collect();
    if n >= BEFORE {
        features[SHIFTED] += 3.0;
    }
    (features, f32::from(wobble > 0.5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shift_is_reported_once_across_a_kill_and_nothing_is_counted_twice() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    let mut writer = ModelWriter::new(&stack, "bookstore").await?;
    let first = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &first.sha256).await?;
    let args = [
        "--batch-size",
        "25",
        "--psi-reference-size",
        "300",
        "--psi-recent-size",
        "150",
        "--warm-up",
        "0",
    ];
    let mut drift = stack.spawn("drift", &args)?;
    let model = writer.model.clone();
    stack.publish_examples(&model, 0..BEFORE, row).await?;
    stack
        .publish_examples(&model, BEFORE..BEFORE + 150, row)
        .await?;
    // Killed mid-stream, restarted: the checkpoint carries on.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stack.process(drift).kill()?;
    drift = stack.spawn("drift", &args)?;
    stack
        .publish_examples(&model, BEFORE + 150..BEFORE + AFTER, row)
        .await?;

    let checkpoints = stack.js.get_key_value(BUCKET_DRIFT).await?;
    let checkpoint = eventually(
        Duration::from_secs(90),
        "every example folded in",
        || async {
            let bytes = checkpoints.get("bookstore").await.ok()??;
            let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            (json["last_sequence"].as_u64()? >= BEFORE + AFTER).then_some(json)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ndrift log:\n{}", stack.log_of("drift", drift)))?;
    assert_eq!(
        checkpoint["examples"].as_u64(),
        Some(BEFORE + AFTER),
        "each example observed exactly once"
    );

    let control = stack.read_stream(STREAM_CONTROL, 10_000).await?;
    let events: Vec<serde_json::Value> = control
        .iter()
        .map(|m| m.json())
        .filter(|j| j["kind"] == "drift")
        .collect();
    let psi: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["detector"] == "psi" && e["level"] == "drift")
        .collect();
    assert!(!psi.is_empty(), "the shift is detected: {events:?}");
    for event in &psi {
        assert_eq!(event["target"], FEATURE_NAMES[SHIFTED], "{event}");
        assert!(
            event["sequence"].as_u64().unwrap() > BEFORE,
            "not before the shift: {event}"
        );
    }
    let mut seen = BTreeMap::new();
    for event in &events {
        let key = (event["episode"].as_u64(), event["state"].to_string());
        assert!(seen.insert(key, ()).is_none(), "reported twice: {event}");
    }
    // One change, one episode: the restart continued it rather than opening another.
    assert!(events.iter().all(|e| e["episode"] == 1), "{events:?}");
    assert_eq!(checkpoint["episodes"]["open"]["id"], 1, "{checkpoint}");
    Ok(())
}
