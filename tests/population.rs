//! The gate picks the model: `train --population` trains a logistic model and a fourier model on
//! the same examples, on a boundary no linear model fits (the sign of x0·x1). The fourier
//! member, leading live on train's window, is published as the candidate; drift's gate promotes
//! it once it beats live on examples neither learned (and passes the forgetting guard); train
//! continues from it, and the live lineage still learns every example exactly once.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::ids::ModelName;
use freshet::subjects::{BUCKET_MODELS, STREAM_CONTROL};
use freshet_model::ModelKind;
use freshet_model::store::{ArtifactStore, PointerStore, Pointers, Slot};
use freshet_tests::{Stack, assert_lineage_tiles, eventually, live_through};

/// Example `n`: two features uniform in [-1, 1) from a SplitMix-style hash, labelled 1 when
/// they have the same sign.
fn example(n: u64) -> (Vec<f32>, f32) {
    let feature = |j: u64| {
        let mut z = n
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(j.wrapping_mul(0xBF58_476D_1CE4_E5B9));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let x = vec![feature(0), feature(1)];
    let label = f32::from(x[0] * x[1] > 0.0);
    (x, label)
}

const TRAIN_ARGS: [&str; 16] = [
    "--model",
    "picked",
    "--population",
    "logistic,fourier",
    "--hidden",
    "64",
    "--metrics-window",
    "300",
    // Every version is kept, for the lineage audit.
    "--keep-versions",
    "0",
    "--batch-size",
    "50",
    "--publish-interval",
    "200ms",
    "--kind",
    "logistic",
];

const DRIFT_ARGS: [&str; 16] = [
    "--model",
    "picked",
    "--feature-detectors",
    "none",
    "--reaction",
    "alert",
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
async fn the_gate_promotes_the_member_that_fits_and_the_lineage_tiles() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("picked")?;
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

    // A live stream, in chunks, until the gate has promoted a candidate.
    let mut published = 0u64;
    let mut promoted = Vec::new();
    while published < 12_000 && promoted.is_empty() {
        for _ in 0..10 {
            stack
                .publish_examples(&model, published..published + 50, example)
                .await?;
            published += 50;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        promoted = stack
            .read_stream(STREAM_CONTROL, 100_000)
            .await
            .unwrap_or_default()
            .iter()
            .map(|m| m.json())
            .filter(|j| j["kind"] == "gate" && j["action"] == "promote")
            .collect();
    }
    assert!(
        !promoted.is_empty(),
        "no promotion after {published} examples\n{}",
        logs(&stack)
    );
    let decision = &promoted[0];
    let promoted_version = decision["challenger_version"].as_u64().unwrap();
    let candidate = artifacts.manifest(&model, promoted_version).await?;
    assert_eq!(
        candidate.config.kind,
        ModelKind::Fourier { hidden: 64 },
        "{decision}"
    );
    let (live_accuracy, challenger_accuracy) = (
        decision["recent"]["live_accuracy"].as_f64().unwrap(),
        decision["recent"]["challenger_accuracy"].as_f64().unwrap(),
    );
    assert!(challenger_accuracy >= live_accuracy + 0.05, "{decision}");

    // More examples, so train continues from the promoted version.
    for _ in 0..10 {
        stack
            .publish_examples(&model, published..published + 50, example)
            .await?;
        published += 50;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let live = eventually(Duration::from_secs(120), "every example learned", || {
        live_through(&pointers, &artifacts, &model, published)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack)))?;
    assert_eq!(live.config.kind, ModelKind::Fourier { hidden: 64 });
    let mut ancestor = live.clone();
    while ancestor.version != promoted_version
        && let Some(parent) = ancestor.parent
    {
        ancestor = artifacts.manifest(&model, parent).await?;
    }
    assert_eq!(
        ancestor.version,
        promoted_version,
        "live {} does not continue the promoted version\n{}",
        live.version,
        logs(&stack)
    );
    assert!(
        live.metrics.prequential_accuracy > 0.85,
        "{:?}",
        live.metrics
    );
    // The promoted version's pointer is gone; the logistic member, now a challenger, trails
    // live and is not offered.
    let candidate_now = pointers.get(&model, Slot::Candidate).await?.value;
    assert!(
        candidate_now
            .as_ref()
            .is_none_or(|p| p.version != promoted_version),
        "{candidate_now:?}"
    );
    assert_lineage_tiles(&artifacts, &model, &live, published).await?;
    Ok(())
}
