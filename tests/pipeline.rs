//! (a) Events published to JetStream become a new model version, whose pointer the predictor
//! picks up and serves with the version in every reply; later events make later versions. The
//! trainer scales inputs with the exponentially weighted scaler (`--scaler-decay`), and the
//! predictor scores exactly as the stored artifact does.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::serving::PredictRequest;
use freshet::subjects::{BUCKET_MODELS, STREAM_EXAMPLES};
use freshet_model::store::{ArtifactStore, PointerStore, Pointers, Slot};
use freshet_tests::{Stack, bookstore_events, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_a_served_model_version() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // Every action labelled at once: each becomes one example, in order.
    stack.spawn("featurize", &["--label-horizon", "0s"])?;
    let train = stack.spawn(
        "train",
        &[
            "--publish-every-batches",
            "4",
            "--publish-interval",
            "200ms",
            "--scaler-decay",
            "0.999",
        ],
    )?;
    let predict = stack.spawn("predict", &[])?;

    let events = bookstore_events(20, 400, "first");
    for event in &events {
        stack.publish_event(event).await?;
    }
    let model = freshet::ids::ModelName::parse("bookstore")?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);

    // Every user action becomes an example, and train learns all of them into a live version.
    let examples = eventually(Duration::from_secs(60), "400 examples", || async {
        let n = stack.stream_len(STREAM_EXAMPLES).await.ok()?;
        (n == 400).then_some(n)
    })
    .await?;
    assert_eq!(examples, 400);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let first_live = eventually(
        Duration::from_secs(60),
        "a live version that learned every example",
        || async {
            let live = pointers.get(&model, Slot::Live).await.ok()?.value?;
            let manifest = artifacts.manifest(&model, live.version).await.ok()?;
            (manifest.high_water_mark == 400).then_some(manifest)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;
    assert_eq!(first_live.schema, freshet_features::bookstore::schema());
    assert!(
        first_live.metrics.examples_total >= 400,
        "{:?}",
        first_live.metrics
    );

    // The predictor serves that version, for a raw vector and for a (user, item) pair.
    let request = PredictRequest {
        user: Some("u1".parse()?),
        item: Some("b2".parse()?),
        ..Default::default()
    };
    let reply = eventually(
        Duration::from_secs(30),
        "the predictor to serve the live version",
        || async {
            let reply = stack.predict("bookstore", &request).await.ok()?;
            (reply.version == first_live.version).then_some(reply)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\npredict log:\n{}", stack.log_of("predict", predict)))?;
    assert!(reply.score > 0.0 && reply.score < 1.0);
    let provenance = reply
        .provenance
        .expect("pair requests report the FEATURES revisions read");
    assert!(provenance.user_revision > 0 && provenance.item_revision > 0);
    let raw = stack
        .predict(
            "bookstore",
            &PredictRequest {
                features: Some(vec![0.5; freshet_features::bookstore::FEATURE_NAMES.len()]),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(raw.version, first_live.version);

    // The version records its exponentially weighted scaler, in the format that says so, and
    // the predictor's score is the artifact's own.
    let decay = first_live.config.scaler_decay;
    assert_eq!(decay.map(|d| d.get()), Some(0.999));
    let (_, bytes) = artifacts.load(&model, first_live.version).await?;
    let header_len = u32::from_le_bytes(bytes[8..12].try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[12..12 + header_len])?;
    assert_eq!(
        (header["format"].as_u64(), header["scaler_decay"].as_f64()),
        (Some(4), Some(0.999))
    );
    let scorer = freshet_model::ModelScorer::from_bytes(&bytes)?;
    assert_eq!(
        scorer.score(&[0.5; freshet_features::bookstore::FEATURE_NAMES.len()])?,
        raw.score
    );

    // New events: a later version, which the predictor swaps to.
    for event in &bookstore_events(20, 200, "second")[20..] {
        stack.publish_event(event).await?;
    }
    let later = eventually(
        Duration::from_secs(60),
        "a later version served",
        || async {
            let reply = stack.predict("bookstore", &request).await.ok()?;
            (reply.version > first_live.version).then_some(reply)
        },
    )
    .await?;
    let live = pointers
        .get(&model, Slot::Live)
        .await?
        .value
        .expect("a live pointer");
    assert!(later.version <= live.version);
    let manifest = artifacts.manifest(&model, later.version).await?;
    assert_eq!(
        manifest.parent,
        Some(later.version - 1),
        "versions form one lineage"
    );
    Ok(())
}
