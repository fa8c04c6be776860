//! `--pipeline`: the same stream files through the pipeline a user runs, instead of a
//! [`Trainer`](freshet_model::Trainer) in this process.
//!
//! For each file a fresh nats-server is started and provisioned (the test harness's
//! [`Stack`]); every row is published to EXAMPLES as an example of the model `quality`, in file
//! order, and then the `train` binary (built beside this one) is started with its shipped
//! defaults: batches of 256 fetched from the backlog, its learning settings untouched unless
//! `--train-arg` says otherwise. The one flag it always gets is a prequential window as long as
//! the file, so that the live version's manifest reports the accuracy over every row. The figure is read from that manifest once it
//! has learned the last row; the rate is rows over the time from starting `train` to that
//! version going live (start-up included). Beside it, the same run measures the raw floor: a
//! bare pull consumer draining the same backlog, acknowledging every message, before `train`
//! starts (its own durable, deleted after, so `train` still finds every row).

use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream::consumer;
use freshet::ids::ModelName;
use freshet::subjects::{BUCKET_MODELS, STREAM_EXAMPLES};
use freshet_model::store::{ArtifactStore, Pointers};
use freshet_tests::{Stack, live_through};
use futures::StreamExt;

use crate::Stream;

/// What one stream measured through the pipeline.
pub(crate) struct PipelinePass {
    /// Examples in the live version's prequential window: every row unless train's data-quality
    /// check held some back.
    pub(crate) window_examples: u64,
    pub(crate) accuracy: f64,
    pub(crate) log_loss: f64,
    pub(crate) seconds: f64,
    /// The raw floor: rows per second a bare pull consumer drained and acknowledged the same
    /// backlog at.
    pub(crate) floor_rows_per_second: f64,
}

/// Longest wait for train to learn a file.
const TIMEOUT: Duration = Duration::from_secs(600);

/// Publishes `stream` as examples, runs `train` with its defaults over them and reads the
/// prequential figures of the version that learned the last row.
pub(crate) async fn train_through_pipeline(
    stream: &Stream,
    train_args: &[String],
) -> anyhow::Result<PipelinePass> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("quality")?;
    let rows = stream.rows.clone();
    let labels = stream.labels.clone();
    stack
        .publish_examples(&model, 0..rows.len() as u64, |n| {
            (rows[n as usize].clone(), labels[n as usize])
        })
        .await?;
    let last = stack
        .last_sequence(freshet::subjects::STREAM_EXAMPLES)
        .await?;
    let floor_rows_per_second = floor(&stack, &model, rows.len() as u64).await?;
    let window = rows.len().to_string();
    let started = Instant::now();
    let mut args = vec![
        "--model",
        model.as_str(),
        "--metrics-window",
        &window,
        "--log",
        "warn",
    ];
    args.extend(train_args.iter().map(String::as_str));
    let train = stack.spawn("train", &args)?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let manifest = loop {
        if let Some(manifest) = live_through(&pointers, &artifacts, &model, last).await {
            break manifest;
        }
        if started.elapsed() > TIMEOUT {
            bail!(
                "train did not learn the {} rows in {TIMEOUT:?}; its log:\n{}",
                rows.len(),
                stack.log_of("train", train)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let metrics = manifest.metrics;
    Ok(PipelinePass {
        window_examples: metrics.window_examples,
        accuracy: metrics.prequential_accuracy,
        log_loss: metrics.log_loss,
        seconds,
        floor_rows_per_second,
    })
}

/// Rows per second a pull consumer of its own drains the model's backlog of `count` examples
/// at, acknowledging each: what JetStream alone costs `train` for the same rows.
async fn floor(stack: &Stack, model: &ModelName, count: u64) -> anyhow::Result<f64> {
    const DURABLE: &str = "quality-floor";
    let stream = stack.js.get_stream(STREAM_EXAMPLES).await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(DURABLE.into()),
            filter_subject: stack.subjects.examples(model),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer.messages().await?;
    let mut acked = 0u64;
    while acked < count {
        let Some(message) = messages.next().await else {
            bail!("the floor's consumer ended after {acked} of {count} rows");
        };
        message
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        acked += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(messages);
    stream.delete_consumer(DURABLE).await?;
    Ok(count as f64 / seconds)
}
