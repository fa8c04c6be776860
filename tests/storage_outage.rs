//! The object store unreachable for a while: train, writing its versions to an S3-compatible
//! server (moto) that is frozen mid-stream, neither acknowledges nor loses anything meanwhile;
//! once the store answers again it publishes, and the lineage learned every example exactly once.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::ids::ModelName;
use freshet::subjects::{BUCKET_MODELS, STREAM_EXAMPLES};
use freshet_model::store::{ArtifactStore, PointerStore, Pointers, Slot};
use freshet_tests::{S3Server, Stack, assert_lineage_tiles, eventually, live_through};

fn row(n: u64) -> (Vec<f32>, f32) {
    let x = (n % 10) as f32 / 10.0;
    (vec![x, 1.0 - x, (n % 3) as f32], f32::from(x > 0.5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_waits_out_an_unreachable_store_and_loses_nothing() -> anyhow::Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("models").await?;
    let mut stack = Stack::start().await?;
    stack.use_object_store("s3://models/outage", s3.client_env());
    let model = ModelName::parse("outage")?;
    let args = [
        "--model",
        "outage",
        "--batch-size",
        "50",
        "--publish-interval",
        "200ms",
        "--keep-versions",
        "0",
    ];
    let train = stack.spawn("train", &args)?;
    // This process reads the store with the same client settings, from the standard AWS
    // variables. This binary runs only this test, and no other thread reads or writes the
    // environment (the runtime's workers do not).
    for (key, value) in s3.client_env() {
        #[allow(unsafe_code)]
        // SAFETY: as above, nothing else touches the environment concurrently.
        unsafe {
            std::env::set_var(key, value);
        }
    }
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let log = |stack: &Stack| stack.log_of("train", train);

    stack.publish_examples(&model, 0..500, row).await?;
    eventually(
        Duration::from_secs(60),
        "the first examples learned",
        || live_through(&pointers, &artifacts, &model, 500),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", log(&stack)))?;

    // The store stops answering; examples keep coming.
    s3.pause();
    stack.publish_examples(&model, 500..1_000, row).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pointer = pointers.get(&model, Slot::Live).await?.value.unwrap();
    let held = stack
        .js
        .get_stream(STREAM_EXAMPLES)
        .await?
        .consumer_info("train-outage")
        .await?;
    s3.resume();
    assert!(
        held.ack_floor.stream_sequence < 1_000,
        "nothing past what a stored version holds is acknowledged while the store is away: {:?}",
        held.ack_floor
    );

    // Back: everything is published, each example once.
    let live = eventually(Duration::from_secs(120), "every example learned", || {
        live_through(&pointers, &artifacts, &model, 1_000)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", log(&stack)))?;
    assert!(live.version > pointer.version);
    assert_lineage_tiles(&artifacts, &model, &live, 1_000).await?;
    Ok(())
}
