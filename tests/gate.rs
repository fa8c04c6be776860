//! Models stay healthy with no human step, against a real server with train and drift running:
//!
//! - an abrupt concept change is detected on the live model's error, train forks a candidate,
//!   the gate promotes it once it beats live on examples neither learned (and on held-back older
//!   ones), and live accuracy recovers, while the lineage still learns each example exactly once;
//! - a bad version made live by hand is rolled back to the version it replaced;
//! - an operator's rollback is a rollback whatever its reason says: the gate drops the version it
//!   kept as the fallback, so it never proposes to undo the operator's move, and the live view
//!   marks a rollback;
//! - a burst of corrupted feature values pauses training (quarantine): no corrupted example is
//!   learned, every one is kept on the dead-letter subject, and training resumes after the burst.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::ids::ModelName;
use freshet::subjects::{
    BUCKET_MODELS, HEADER_REASON, STREAM_CONTROL, STREAM_DEAD_LETTER, STREAM_EXAMPLES,
};
use freshet_model::store::{ArtifactStore, Cause, PointerStore, Pointers, Slot, Verified};
use freshet_model::{Manifest, ModelConfig, ModelScorer, Trainer, predicts_positive};
use freshet_tests::{
    Stack, assert_lineage_tiles, eventually, live_through, start_view, view_state,
};

const WIDTH: usize = 4;

/// A deterministic pseudo-random value in [-1, 1) for example `n`, feature `j`.
fn noise(n: u64, j: usize) -> f32 {
    let mut x =
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (j as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x % 20_000) as f32 / 10_000.0 - 1.0
}

/// Example `n` under concept A (label: x0 + x1 > 0) or, `flipped`, its opposite.
fn example(n: u64, flipped: bool) -> (Vec<f32>, f32) {
    let features: Vec<f32> = (0..WIDTH).map(|j| noise(n, j)).collect();
    let positive = features[0] + features[1] > 0.0;
    (features, f32::from(positive != flipped))
}

/// Accuracy of `manifest`'s model on 1,000 fresh examples of the concept.
async fn accuracy(
    artifacts: &ArtifactStore,
    model: &ModelName,
    manifest: &Manifest,
    flipped: bool,
) -> f64 {
    let (_, bytes) = artifacts.load(model, manifest.version).await.unwrap();
    let scorer = ModelScorer::from_bytes(&bytes).unwrap();
    let right = (1_000_000..1_001_000u64)
        .filter(|&n| {
            let (row, label) = example(n, flipped);
            predicts_positive(scorer.score(&row).unwrap()) == (label >= 0.5)
        })
        .count();
    right as f64 / 1_000.0
}

/// Publishes examples `range` in chunks of 50, pausing between chunks, as a live stream would.
async fn stream(
    stack: &Stack,
    model: &ModelName,
    range: std::ops::Range<u64>,
    flipped: impl Fn(u64) -> bool,
) {
    let mut start = range.start;
    while start < range.end {
        let end = (start + 50).min(range.end);
        stack
            .publish_examples(model, start..end, |n| example(n, flipped(n)))
            .await
            .unwrap();
        start = end;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Gate decisions of `action` on CONTROL.
async fn decisions(stack: &Stack, action: &str) -> Vec<serde_json::Value> {
    stack
        .read_stream(STREAM_CONTROL, 100_000)
        .await
        .unwrap_or_default()
        .iter()
        .map(|m| m.json())
        .filter(|j| j["kind"] == "gate" && j["action"] == action)
        .collect()
}

const TRAIN_ARGS: [&str; 14] = [
    "--model",
    "gated",
    // Every version is kept, for the lineage audit.
    "--keep-versions",
    "0",
    "--batch-size",
    "50",
    // A decayed schedule adapts slowly: what a candidate with a fresh one is for. One step per
    // batch at the former default rate, so the schedule decays per batch, not per row.
    "--rows-per-step",
    "0",
    "--learning-rate",
    "0.5",
    "--lr-decay",
    "0.5",
    "--publish-interval",
    "300ms",
];

const DRIFT_ARGS: [&str; 16] = [
    "--model",
    "gated",
    "--feature-detectors",
    "none",
    "--reaction",
    "train_candidate",
    "--gate-min-examples",
    "300",
    "--gate-margin",
    "0.05",
    "--gate-held-back",
    "200",
    "--gate-horizon",
    "600",
    "--gate-forgetting-tolerance",
    "0.05",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concept_change_is_detected_and_a_promoted_candidate_recovers_accuracy()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("gated")?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let train = stack.spawn("train", &TRAIN_ARGS)?;
    let drift = stack.spawn("drift", &DRIFT_ARGS)?;
    let logs = |stack: &Stack| {
        format!(
            "train log:\n{}\ndrift log:\n{}",
            stack.log_of("train", train),
            stack.log_of("drift", drift)
        )
    };

    const BEFORE: u64 = 3_000;
    stream(&stack, &model, 0..BEFORE, |_| false).await;
    let before = eventually(Duration::from_secs(60), "concept A learned", || {
        live_through(&pointers, &artifacts, &model, BEFORE)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack)))?;
    assert!(accuracy(&artifacts, &model, &before, false).await > 0.9);

    // The concept flips; the stream goes on until the gate has promoted a candidate.
    let mut published = BEFORE;
    let mut promoted = Vec::new();
    while published < BEFORE + 12_000 && promoted.is_empty() {
        stream(&stack, &model, published..published + 500, |_| true).await;
        published += 500;
        // A candidate may already have won before the change (its restarted schedule fits
        // better than live's decayed one): the promotion looked for is one after it.
        promoted = decisions(&stack, "promote")
            .await
            .into_iter()
            .filter(|d| d["sequence"].as_u64() > Some(BEFORE + 1))
            .collect();
    }
    assert!(
        !promoted.is_empty(),
        "no promotion after {published} examples\n{}",
        logs(&stack)
    );
    // And a little more, so train continues from the promoted version.
    stream(&stack, &model, published..published + 1_000, |_| true).await;
    published += 1_000;
    let live = eventually(Duration::from_secs(60), "every example learned", || {
        live_through(&pointers, &artifacts, &model, published)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack)))?;

    let control: Vec<serde_json::Value> = stack
        .read_stream(STREAM_CONTROL, 100_000)
        .await?
        .iter()
        .map(|m| m.json())
        .collect();
    let drift_seen = control.iter().any(|j| {
        j["kind"] == "drift"
            && j["level"] == "drift"
            && j["target"] == "error"
            && j["sequence"].as_u64() > Some(BEFORE)
    });
    assert!(
        drift_seen,
        "the change is detected on the live model's error\n{}",
        logs(&stack)
    );
    let decision = &promoted[0];
    let (live_accuracy, candidate_accuracy) = (
        decision["recent"]["live_accuracy"].as_f64().unwrap(),
        decision["recent"]["challenger_accuracy"].as_f64().unwrap(),
    );
    assert!(candidate_accuracy >= live_accuracy + 0.05, "{decision}");
    assert!(
        decision["held_back"]["examples"].as_u64().unwrap() >= 50,
        "{decision}"
    );
    // Live continues from the promoted candidate: it is in the live version's ancestry.
    let promoted_version = decision["challenger_version"].as_u64().unwrap();
    let mut ancestor = live.clone();
    while ancestor.version != promoted_version
        && let Some(parent) = ancestor.parent
    {
        ancestor = artifacts.manifest(&model, parent).await?;
    }
    assert!(
        ancestor.version == promoted_version,
        "the promoted version {promoted_version} is not an ancestor of live {}\n{}",
        live.version,
        logs(&stack)
    );
    // The promoted candidate is no longer a candidate (a later drift may have forked another).
    let candidate = pointers.get(&model, Slot::Candidate).await?.value;
    assert!(
        candidate
            .as_ref()
            .is_none_or(|p| p.version > promoted_version),
        "the promoted candidate's pointer is removed: {candidate:?}"
    );

    // Live accuracy recovered, and the lineage through the candidate learned every example
    // exactly once.
    let recovered = accuracy(&artifacts, &model, &live, true).await;
    assert!(
        recovered > 0.9,
        "accuracy on the new concept {recovered}\n{}",
        logs(&stack)
    );
    assert_lineage_tiles(&artifacts, &model, &live, published).await?;
    Ok(())
}

/// Stores a model fitted to the opposite labels as a new version, like `good` in all else, and
/// makes it live by hand; returns its manifest.
async fn deploy_inverted(
    artifacts: &ArtifactStore,
    pointers: &Pointers,
    model: &ModelName,
    good: &Manifest,
) -> anyhow::Result<Manifest> {
    let config = ModelConfig::default();
    let mut inverted = Trainer::new(&config, WIDTH)?;
    for b in 0..40u64 {
        let (rows, labels): (Vec<Vec<f32>>, Vec<f32>) =
            (b * 50..(b + 1) * 50).map(|n| example(n, true)).unzip();
        inverted.train_batch(&rows, &labels)?;
    }
    let bytes = inverted.to_bytes()?;
    let version = artifacts.versions(model).await?.last().copied().unwrap() + 10;
    let bad = Manifest {
        version,
        parent: None,
        config: ModelConfig {
            hyper: freshet_model::Hyper {
                learning_rate: 0.01,
                ..config.hyper
            },
            ..config
        },
        sha256: freshet_model::sha256_hex(&bytes),
        size_bytes: bytes.len() as u64,
        step: inverted.step(),
        created_at: chrono::Utc::now(),
        lineage: None,
        ..good.clone()
    };
    artifacts.put_version(&bad, &bytes).await?;
    let current = pointers.get(model, Slot::Live).await?;
    pointers
        .move_to(
            model,
            Slot::Live,
            &Verified::held(&bad),
            Cause::Operator,
            "deployed by hand",
            current.revision,
        )
        .await?;
    Ok(bad)
}

/// The version drift's live follower holds, from its `freshet_live_version` gauge.
async fn drift_live_version(port: u16) -> Option<u64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("freshet_live_version{"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_version_made_live_by_hand_is_rolled_back() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("gated")?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let train = stack.spawn("train", &TRAIN_ARGS)?;
    // Drift only alerts here: no candidate competes with the rollback.
    let mut args = DRIFT_ARGS;
    args[5] = "alert";
    let drift = stack.spawn("drift", &args)?;
    const GOOD: u64 = 2_000;
    stream(&stack, &model, 0..GOOD, |_| false).await;
    let good = eventually(Duration::from_secs(60), "concept A learned", || {
        live_through(&pointers, &artifacts, &model, GOOD)
    })
    .await?;

    // A model fitted to the opposite labels, deployed by hand as a new version.
    let current = pointers.get(&model, Slot::Live).await?;
    let bad = deploy_inverted(&artifacts, &pointers, &model, &good).await?;
    assert!(accuracy(&artifacts, &model, &bad, false).await < 0.2);
    let replaced = current.value.unwrap().version;

    let mut published = GOOD;
    let mut rolled_back = Vec::new();
    while published < GOOD + 6_000 && rolled_back.is_empty() {
        stream(&stack, &model, published..published + 300, |_| false).await;
        published += 300;
        rolled_back = decisions(&stack, "rollback").await;
    }
    assert!(
        !rolled_back.is_empty(),
        "no rollback after {published} examples\ntrain log:\n{}\ndrift log:\n{}",
        stack.log_of("train", train),
        stack.log_of("drift", drift)
    );
    let decision = &rolled_back[0];
    assert_eq!(
        decision["challenger_version"].as_u64(),
        Some(replaced),
        "{decision}"
    );
    let history = pointers.history(&model, Slot::Live).await?;
    assert!(
        history
            .iter()
            .any(|(_, p)| p.cause == Cause::Rollback && p.version == replaced),
        "{history:?}"
    );
    // Training continues from the restored version, which answers well again.
    stream(&stack, &model, published..published + 300, |_| false).await;
    published += 300;
    let live = eventually(Duration::from_secs(60), "training continues", || {
        live_through(&pointers, &artifacts, &model, published)
    })
    .await?;
    assert!(accuracy(&artifacts, &model, &live, false).await > 0.9);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rollback_is_a_rollback_whatever_its_reason_says() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("gated")?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let train = stack.spawn("train", &TRAIN_ARGS)?;
    // Drift only alerts: no candidate. Its live version is read from its metrics.
    let drift_port = freshet_tests::stack::free_port()?.to_string();
    let mut args = DRIFT_ARGS.to_vec();
    args[5] = "alert";
    args.extend(["--http-port", &drift_port]);
    let drift = stack.spawn("drift", &args)?;
    let drift_port: u16 = drift_port.parse()?;
    let logs = |stack: &Stack| {
        format!(
            "train log:\n{}\ndrift log:\n{}",
            stack.log_of("train", train),
            stack.log_of("drift", drift)
        )
    };
    let drift_follows = |version: u64, what: &'static str| {
        eventually(Duration::from_secs(20), what, move || async move {
            (drift_live_version(drift_port).await? == version).then_some(())
        })
    };
    const GOOD: u64 = 2_000;
    stream(&stack, &model, 0..GOOD, |_| false).await;
    let good = eventually(Duration::from_secs(60), "concept A learned", || {
        live_through(&pointers, &artifacts, &model, GOOD)
    })
    .await?;
    drift_follows(good.version, "drift following the good version")
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack)))?;
    // Live jumps to a bad version by hand: drift keeps the good one as the gate's fallback.
    let bad = deploy_inverted(&artifacts, &pointers, &model, &good).await?;
    drift_follows(bad.version, "drift following the bad version")
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack)))?;

    // The operator rolls back, in words that do not say "rollback".
    let output = std::process::Command::new(freshet_cli::stack::bin_dir()?.join("freshet"))
        .args(["models", "rollback", "gated", "--to"])
        .arg(good.version.to_string())
        .args(["--reason", "bad batch"])
        .envs(stack.env())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "freshet models rollback: {output:?}"
    );
    drift_follows(good.version, "drift following the restored version")
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack)))?;

    // The live view calls the move a rollback.
    let (_view, url) = start_view(&stack)?;
    let view_kind = eventually(
        Duration::from_secs(20),
        "the operator's move in the view",
        || async {
            let state = view_state(&url).await?;
            state["models"][0]["moves"]
                .as_array()?
                .iter()
                .find(|m| {
                    m["from"].as_u64() == Some(bad.version)
                        && m["version"].as_u64() == Some(good.version)
                })
                .map(|m| m["kind"].clone())
        },
    )
    .await?;

    // Enough examples for the gate to judge any trial several times over, all read by drift.
    stream(&stack, &model, GOOD..GOOD + 1_500, |_| false).await;
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
    // The bad version is no fallback: the gate never judges it against the restored one (and so
    // can never propose to undo the operator's rollback).
    let judged_bad: Vec<serde_json::Value> = stack
        .read_stream(STREAM_CONTROL, 100_000)
        .await?
        .iter()
        .map(|m| m.json())
        .filter(|j| j["kind"] == "gate" && j["challenger_version"].as_u64() == Some(bad.version))
        .collect();
    assert!(
        view_kind == "rollback" && judged_bad.is_empty(),
        "the view calls the move {view_kind}, and the gate judged the rolled-back version as a \
         fallback: {judged_bad:?}\n{}",
        logs(&stack)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_corrupted_values_is_quarantined_and_training_resumes() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("gated")?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let train = stack.spawn("train", &TRAIN_ARGS)?;
    // A broken sensor: from example 1,000 to 1,299, every other one reads 1e6 on feature 0.
    let corrupt = |n: u64| (1_000..1_300).contains(&n) && n.is_multiple_of(2);
    let row = |n: u64| {
        let (mut features, label) = example(n, false);
        if corrupt(n) {
            features[0] = 1e6;
        }
        (features, label)
    };
    const TOTAL: u64 = 2_000;
    for start in (0..TOTAL).step_by(100) {
        stack
            .publish_examples(&model, start..start + 100, row)
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = eventually(Duration::from_secs(60), "every example handled", || {
        live_through(&pointers, &artifacts, &model, TOTAL)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;

    let control: Vec<serde_json::Value> = stack
        .read_stream(STREAM_CONTROL, 100_000)
        .await?
        .iter()
        .map(|m| m.json())
        .filter(|j| j["kind"] == "quarantine")
        .collect();
    let states: Vec<&str> = control
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["started", "ended"], "{control:?}");
    // Stream sequences are the example numbers plus one.
    let (started, ended) = (
        control[0]["sequence"].as_u64().unwrap(),
        control[1]["sequence"].as_u64().unwrap(),
    );
    assert!(
        (1_001..1_301).contains(&started) && ended > 1_300 && ended < TOTAL,
        "{control:?}"
    );

    let quarantined: Vec<serde_json::Value> = stack
        .read_stream(STREAM_DEAD_LETTER, 100_000)
        .await?
        .iter()
        .filter(|m| m.header(HEADER_REASON) == Some("quarantined"))
        .map(|m| m.json())
        .collect();
    let held: std::collections::BTreeSet<u64> = quarantined
        .iter()
        .filter_map(|j| j["source_event"].as_str()?.parse().ok())
        .collect();
    for n in (0..TOTAL).filter(|&n| corrupt(n)) {
        assert!(held.contains(&n), "corrupt example {n} is kept for review");
    }
    // Only the corrupt examples were held out: every clean one was learned, during the burst
    // too, and the quarantine's end says how many of each.
    let corrupted: std::collections::BTreeSet<u64> = (0..TOTAL).filter(|&n| corrupt(n)).collect();
    assert_eq!(held, corrupted);
    assert_eq!(control[1]["suspect_held_out"], 150, "{control:?}");
    assert!(
        control[1]["valid_learned"].as_u64().unwrap() >= 150,
        "{control:?}"
    );
    // Training resumed: the live version counts every example but the quarantined ones, and it
    // still answers well (no 1e6 reached its scaler).
    assert_eq!(live.metrics.examples_total, TOTAL - held.len() as u64);
    assert!(accuracy(&artifacts, &model, &live, false).await > 0.9);
    Ok(())
}
