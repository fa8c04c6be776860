//! The `fourier` kind through the pipeline: `train --kind fourier` learns a boundary no linear
//! model can (the sign of x0·x1) from example events, publishes versions whose artifacts load
//! and verify like any other kind's, and a restarted trainer continues the live version's
//! lineage (loaded from the store and checked against its manifest) rather than starting over.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::ids::ModelName;
use freshet::subjects::{BUCKET_MODELS, STREAM_EXAMPLES};
use freshet_model::store::{ArtifactStore, Pointers};
use freshet_model::{ModelKind, ModelScorer};
use freshet_tests::{Stack, eventually, live_through};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_learns_a_non_linear_boundary_with_the_fourier_kind() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("quadrants")?;
    let args = [
        "--model",
        model.as_str(),
        "--kind",
        "fourier",
        "--metrics-window",
        "1000",
        "--publish-interval",
        "200ms",
    ];
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;

    stack.publish_examples(&model, 0..4000, example).await?;
    let last = stack.last_sequence(STREAM_EXAMPLES).await?;
    let train = stack.spawn("train", &args)?;
    let first = eventually(Duration::from_secs(120), "every example learned", || {
        live_through(&pointers, &artifacts, &model, last)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;
    assert_eq!(first.config.kind, ModelKind::Fourier { hidden: 256 });
    assert_eq!(first.metrics.examples_total, 4000);
    // A logistic model stays near one half on this task; the kernel machine learns it.
    assert!(
        first.metrics.prequential_accuracy > 0.9,
        "{:?}",
        first.metrics
    );

    // The live version loads verified against its manifest, as a predictor loads it, and
    // scores the four quadrants as the boundary says.
    let (manifest, bytes) = artifacts.load(&model, first.version).await?;
    assert_eq!(manifest.version, first.version);
    let scorer = ModelScorer::from_bytes(&bytes)?;
    assert_eq!(scorer.kind(), ModelKind::Fourier { hidden: 256 });
    for (x, positive) in [
        ([0.6f32, 0.5], true),
        ([-0.5, -0.6], true),
        ([0.6, -0.5], false),
        ([-0.5, 0.6], false),
    ] {
        let p = scorer.score(&x)?;
        assert_eq!(p > 0.5, positive, "{x:?}: {p}");
    }

    // A restarted trainer resumes from the live version and keeps its kind and lineage.
    stack.process(train).terminate(Duration::from_secs(10))?;
    stack.publish_examples(&model, 4000..4500, example).await?;
    let last = stack.last_sequence(STREAM_EXAMPLES).await?;
    let again = stack.spawn("train", &args)?;
    let resumed = eventually(Duration::from_secs(120), "the new examples learned", || {
        live_through(&pointers, &artifacts, &model, last)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", again)))?;
    assert_eq!(resumed.config.kind, ModelKind::Fourier { hidden: 256 });
    assert_eq!(resumed.metrics.examples_total, 4500);
    assert!(
        resumed.step > first.step,
        "{} after {}",
        resumed.step,
        first.step
    );
    assert!(resumed.version > first.version);
    Ok(())
}
