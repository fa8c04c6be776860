//! Poison reaches train two ways, and neither changes the model: examples whose values overflow
//! `f32` are dead-lettered with a reason before any model sees them, and a batch whose update
//! would turn the weights non-finite (here forced by an absurd learning rate) is discarded,
//! reported on CONTROL and dead-lettered, while the live version keeps finite weights.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use bytes::Bytes;
use freshet::ids::ModelName;
use freshet::subjects::{BUCKET_MODELS, HEADER_REASON, STREAM_CONTROL, STREAM_DEAD_LETTER};
use freshet_model::ModelScorer;
use freshet_model::store::{ArtifactStore, PointerStore, Pointers, Slot};
use freshet_tests::{Stack, eventually};

fn row(n: u64) -> (Vec<f32>, f32) {
    let x = (n % 10) as f32 / 10.0;
    (vec![x, 1.0 - x], f32::from(x > 0.5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_examples_and_updates_leave_the_model_unchanged() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("poison")?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let args = ["--model", "poison", "--batch-size", "8"];
    let train = stack.spawn("train", &args)?;
    stack.publish_examples(&model, 0..32, row).await?;
    let live_before = eventually(Duration::from_secs(60), "a live version", || async {
        let pointer = pointers.get(&model, Slot::Live).await.ok()?.value?;
        let manifest = artifacts.manifest(&model, pointer.version).await.ok()?;
        (manifest.high_water_mark >= 32).then_some(manifest)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;

    // Values beyond f32 (1e39 reads as infinity) and beyond the accepted range.
    for (n, value) in [(0, "1e39"), (1, "-1e39"), (2, "1e30")] {
        let body = format!(
            r#"{{"id":"ex-poison-{n}","model":"poison","schema":null,"features":[{value},0.5],"label":1,"source_event":"p{n}","event_time":null}}"#
        );
        stack
            .js
            .publish(stack.subjects.examples(&model), Bytes::from(body))
            .await?
            .await?;
    }
    let reasons = eventually(Duration::from_secs(30), "poison dead-lettered", || async {
        let dead = stack.read_stream(STREAM_DEAD_LETTER, 100).await.ok()?;
        let reasons: Vec<String> = dead
            .iter()
            .filter_map(|m| m.header(HEADER_REASON).map(str::to_string))
            .collect();
        (reasons.len() >= 3).then_some(reasons)
    })
    .await?;
    assert_eq!(reasons, ["out_of_range"; 3], "each refused with its reason");
    // The model learned nothing from them: good examples after them still train, and the
    // count of examples learned is the good ones only.
    stack.publish_examples(&model, 32..40, row).await?;
    let live_after = eventually(
        Duration::from_secs(60),
        "the good examples after",
        || async {
            let pointer = pointers.get(&model, Slot::Live).await.ok()?.value?;
            let manifest = artifacts.manifest(&model, pointer.version).await.ok()?;
            (manifest.high_water_mark >= 43).then_some(manifest)
        },
    )
    .await?;
    assert_eq!(live_after.metrics.examples_total, 40);
    assert!(live_after.version > live_before.version);
    let status = stack.process(train).terminate(Duration::from_secs(20))?;
    assert!(status.success());

    // An update that overflows: a learning rate of 1e38 blows the weights up within a few
    // batches. Every refused batch is reported, and the live version always scores finitely.
    // One step per batch with an L2 penalty: the first step from zero weights stays finite (a
    // live version to keep), the penalty on the weights it made overflows the next one.
    let wild = stack.spawn(
        "train",
        &[
            "--model",
            "wild",
            "--batch-size",
            "8",
            "--learning-rate",
            "1e38",
            "--rows-per-step",
            "0",
            "--l2",
            "1e-4",
            "--lr-decay",
            "0",
        ],
    )?;
    let wild_model = ModelName::parse("wild")?;
    stack.publish_examples(&wild_model, 0..200, row).await?;
    let refused = eventually(
        Duration::from_secs(60),
        "a refused batch on CONTROL",
        || async {
            let control = stack.read_stream(STREAM_CONTROL, 1000).await.ok()?;
            control
                .iter()
                .map(|m| m.json())
                .find(|j| j["kind"] == "batch_refused" && j["model"] == "wild")
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", wild)))?;
    assert!(refused["examples"].as_u64().unwrap() > 0, "{refused}");
    let pointer = pointers.get(&wild_model, Slot::Live).await?.value.unwrap();
    let (_, bytes) = artifacts.load(&wild_model, pointer.version).await?;
    let scorer = ModelScorer::from_bytes(&bytes)?;
    assert!(scorer.score(&[0.5, 0.5]).is_ok_and(f32::is_finite));
    Ok(())
}
