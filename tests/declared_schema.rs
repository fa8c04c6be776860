//! A model learns under its declared schema and keeps every valid example, on a real nats-server.
//!
//! (a) A stray `example` event with 3 features, sent before featurize's first bookstore example,
//! once chose the bookstore model's schema (train took it from the first example it saw) and
//! made every later bookstore example a `schema_mismatch`. featurize now declares the bookstore
//! schema when it starts; the stray example is dead-lettered and nothing else changes.
//!
//! (b) A burst of 300 examples with values of ±1e12 among valid ones once paused training and held
//! out 4,042 valid examples. Now only the suspect examples are held out: every valid one is
//! learned, exactly once, and the quarantine's CONTROL records say how many of each.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::ids::ModelName;
use freshet::subjects::{BUCKET_MODELS, HEADER_REASON, STREAM_CONTROL, STREAM_DEAD_LETTER};
use freshet_model::Manifest;
use freshet_model::store::{ArtifactStore, Pointers};
use freshet_tests::{Stack, bookstore_events, cloud_event, eventually, live_through};
use serde_json::json;

/// The live version once its high-water mark reaches `last`.
async fn live_through_sequence(
    stack: &Stack,
    model: &ModelName,
    last: u64,
    train: usize,
) -> anyhow::Result<Manifest> {
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    eventually(
        Duration::from_secs(120),
        &format!("a live version through sequence {last}"),
        || live_through(&pointers, &artifacts, model, last),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))
}

/// The reasons of the dead letters `function` wrote, in order.
async fn dead_letter_reasons(stack: &Stack, function: &str) -> anyhow::Result<Vec<String>> {
    let prefix = format!("{}.dead_letter.{function}.", stack.subjects.prefix());
    Ok(stack
        .read_stream(STREAM_DEAD_LETTER, 100_000)
        .await?
        .iter()
        .filter(|m| m.subject.starts_with(&prefix))
        .filter_map(|m| m.header(HEADER_REASON).map(str::to_string))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_example_cannot_choose_the_bookstore_schema() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("bookstore")?;
    let train = stack.spawn(
        "train",
        &[
            "--publish-every-batches",
            "1",
            "--publish-interval",
            "200ms",
        ],
    )?;
    // The stray example is the first event of the stream, so it is featurize's first example.
    stack
        .publish_event(&cloud_event(
            "stray-1",
            "example",
            json!({"model": "bookstore", "features": [0.1, 0.2, 0.3], "label": 1}),
        ))
        .await?;
    stack.spawn("featurize", &["--label-horizon", "0s"])?;
    for event in bookstore_events(20, 200, "hj") {
        stack.publish_event(&event).await?;
    }

    // 1 stray example and 200 bookstore examples: every bookstore one is learned.
    let live = live_through_sequence(&stack, &model, 201, train).await?;
    assert_eq!(live.schema, freshet_features::bookstore::schema());
    assert_eq!(live.high_water_mark, 201);
    assert_eq!(live.metrics.examples_total, 200, "{:?}", live.metrics);
    let refused = dead_letter_reasons(&stack, "train").await?;
    assert_eq!(refused, ["schema_mismatch"], "only the stray example");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_extreme_values_loses_no_valid_example() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("burst")?;
    // 300 valid examples (past the monitor's warm-up of 200), then 600 in which every other one
    // carries ±1e12 (the largest value accepted as input at all), then 400 valid ones.
    let extreme = |n: u64| (300..900).contains(&n) && n % 2 == 1;
    let row = |n: u64| {
        let x = (n % 10) as f32 / 10.0;
        if extreme(n) {
            let sign = if n % 4 == 1 { 1.0 } else { -1.0 };
            (vec![sign * 1e12, 0.5], 1.0)
        } else {
            (vec![x, 1.0 - x], f32::from(x > 0.5))
        }
    };
    let train = stack.spawn(
        "train",
        &[
            "--model",
            "burst",
            "--publish-every-batches",
            "4",
            "--publish-interval",
            "200ms",
        ],
    )?;
    stack.publish_examples(&model, 0..1300, row).await?;
    let suspect = (0..1300).filter(|&n| extreme(n)).count() as u64;
    assert_eq!(suspect, 300);

    let live = live_through_sequence(&stack, &model, 1300, train).await?;
    assert_eq!(
        live.metrics.examples_total,
        1300 - suspect,
        "every valid example learned, once: {:?}",
        live.metrics
    );
    let refused = dead_letter_reasons(&stack, "train").await?;
    assert_eq!(refused.len() as u64, suspect);
    assert!(refused.iter().all(|r| r == "quarantined"), "{refused:?}");

    let records: Vec<serde_json::Value> = stack
        .read_stream(STREAM_CONTROL, 100_000)
        .await?
        .iter()
        .filter(|m| m.subject == stack.subjects.control(&model, "quarantine"))
        .map(|m| m.json())
        .collect();
    let states: Vec<&str> = records
        .iter()
        .map(|r| r["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, ["started", "ended"], "{records:?}");
    let ended = &records[1];
    assert_eq!(ended["suspect_held_out"], suspect, "{ended}");
    // Every valid example of the burst was learned while the quarantine lasted, and then some.
    assert!(ended["valid_learned"].as_u64().unwrap() >= 300, "{ended}");
    Ok(())
}
