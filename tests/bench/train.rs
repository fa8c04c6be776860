//! The training benchmark: end-to-end examples/s through a `train` process on JetStream, beside
//! the raw floor measured in the same run (a bare pull consumer that acknowledges every message
//! of the same stream), and freshness: the time from an example's publication to the live
//! pointer naming a version that learned it.
//!
//! Both sides see the same traffic: examples published as fast as JetStream acknowledges them
//! (pipelined, up to a window of unacknowledged publishes), consumed while they arrive. The
//! figure is examples/s from the first publish to the last example consumed (floor) or learned
//! by a live version (train). A second freshness measurement offers a fixed rate instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use freshet::examples::ExampleRecord;
use freshet::ids::ModelName;
use freshet::subjects::{BUCKET_MODELS, STREAM_EXAMPLES};
use freshet_model::store::{ArtifactStore, Slot};
use freshet_tests::Stack;
use futures::StreamExt;
use serde::Serialize;

/// Features of each example.
const WIDTH: usize = 20;

/// Unacknowledged publishes in flight at once.
const PUBLISH_WINDOW: usize = 512;

/// One training run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TrainRun {
    pub floor_per_second: f64,
    pub train_per_second: f64,
    pub freshness_p50_ms: f64,
    pub freshness_p99_ms: f64,
    pub offered_per_second: f64,
    pub offered_freshness_p50_ms: f64,
    pub offered_freshness_p99_ms: f64,
}

fn example(model: &ModelName, n: u64) -> Bytes {
    let x = (n % 97) as f32 / 97.0;
    let record = ExampleRecord {
        id: format!("ex-{model}-{n}"),
        model: model.clone(),
        schema: None,
        features: (0..WIDTH).map(|j| x * (j as f32 + 1.0) % 1.0).collect(),
        label: f32::from(x > 0.5),
        source_event: n.to_string(),
        event_time: None,
        feedback: Default::default(),
        corrects: None,
        final_at: None,
    };
    Bytes::from(record.to_json_bytes())
}

/// Publishes examples `range` of `model`, at most `rate` per second if given; returns each
/// stream sequence with the instant its publish was sent.
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    model: &ModelName,
    range: std::ops::Range<u64>,
    rate: Option<f64>,
) -> anyhow::Result<BTreeMap<u64, Instant>> {
    let started = Instant::now();
    let mut sent = BTreeMap::new();
    let mut pending = std::collections::VecDeque::new();
    for (i, n) in range.enumerate() {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let at = Instant::now();
        pending.push_back((
            at,
            js.publish(subject.to_string(), example(model, n)).await?,
        ));
        if pending.len() >= PUBLISH_WINDOW {
            let (at, ack) = pending.pop_front().expect("the window is full");
            sent.insert(ack.await?.sequence, at);
        }
    }
    for (at, ack) in pending {
        sent.insert(ack.await?.sequence, at);
    }
    Ok(sent)
}

/// The raw floor: a pull consumer acknowledging each message, while `count` are published.
async fn floor(stack: &Stack, count: u64) -> anyhow::Result<f64> {
    let model = ModelName::parse("floor")?;
    let subject = stack.subjects.examples(&model);
    let stream = stack.js.get_stream(STREAM_EXAMPLES).await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench-floor".into()),
            filter_subject: subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let started = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut acked = 0u64;
        while acked < count {
            let Some(message) = messages.next().await else {
                break;
            };
            message
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            acked += 1;
        }
        anyhow::Ok(Instant::now())
    });
    publish(&stack.js, &subject, &model, 0..count, None).await?;
    let done = consuming.await??;
    Ok(count as f64 / (done - started).as_secs_f64())
}

/// Follows the live pointer of `model` from before a measurement starts: records when each
/// high-water mark went live, until one reaches the target sent on `target` (or `timeout`).
fn follow_live(
    models: async_nats::jetstream::kv::Store,
    artifacts: ArtifactStore,
    model: ModelName,
    mut target: tokio::sync::watch::Receiver<u64>,
    timeout: Duration,
    ready: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<(Instant, u64)>>> {
    tokio::spawn(async move {
        // Changes only (not the value live before the measurement).
        let mut watch = models.watch(Slot::Live.key(&model)).await?;
        let _ = ready.send(());
        let deadline = tokio::time::Instant::now() + timeout;
        let mut live = Vec::new();
        loop {
            let covered = live.last().map_or(0, |(_, hwm)| *hwm);
            if covered >= *target.borrow() {
                return Ok(live);
            }
            let entry = tokio::select! {
                entry = tokio::time::timeout_at(deadline, watch.next()) => entry
                    .map_err(|_| anyhow::anyhow!("train did not learn every example in {timeout:?}"))?
                    .ok_or_else(|| anyhow::anyhow!("the pointer watch ended"))??,
                _ = target.changed() => continue,
            };
            let now = Instant::now();
            let Ok(pointer) = serde_json::from_slice::<freshet_model::store::Pointer>(&entry.value)
            else {
                continue;
            };
            let manifest = artifacts.manifest(&model, pointer.version).await?;
            live.push((now, manifest.high_water_mark));
        }
    })
}

/// Publishes `range` (at `rate` if given) while following the live pointer; returns, sorted,
/// each example's delay from its publication to the first live version that learned it, and
/// the time from the first publish until the last example was learned.
async fn publish_and_follow(
    stack: &Stack,
    model: &ModelName,
    range: std::ops::Range<u64>,
    rate: Option<f64>,
    timeout: Duration,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let models = stack.js.get_key_value(BUCKET_MODELS).await?;
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let (set_target, target) = tokio::sync::watch::channel(u64::MAX);
    let (ready, watching) = tokio::sync::oneshot::channel();
    let follower = follow_live(models, artifacts, model.clone(), target, timeout, ready);
    // The clock starts once the watch is in place, so no pointer move goes unseen.
    let _ = watching.await;
    let started = Instant::now();
    let subject = stack.subjects.examples(model);
    let sent = publish(&stack.js, &subject, model, range, rate).await?;
    let last = *sent.keys().next_back().expect("something was published");
    let _ = set_target.send(last);
    let live = follower.await??;
    let mut delays = Vec::with_capacity(sent.len());
    for (sequence, at) in &sent {
        let (learned, _) = live
            .iter()
            .find(|(_, hwm)| hwm >= sequence)
            .expect("the follower stops only once the last example is learned");
        delays.push(learned.saturating_duration_since(*at));
    }
    delays.sort();
    let (done, _) = live
        .last()
        .expect("at least one version covered the examples");
    Ok((delays, *done - started))
}

fn millis(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

/// One run: the floor, then a fresh train process at full speed, then at `offered` examples/s.
pub async fn run(
    stack: &mut Stack,
    run: usize,
    count: u64,
    offered: f64,
) -> anyhow::Result<TrainRun> {
    let floor_per_second = floor(stack, count).await?;
    stack
        .js
        .delete_consumer_from_stream("bench-floor", STREAM_EXAMPLES)
        .await?;

    let model = ModelName::parse(format!("trainbench{run}"))?;
    // Its 20 features are declared before train starts, as an operator would.
    stack.declare(&model, 1, WIDTH).await?;
    stack.spawn(
        "train",
        &[
            "--model",
            model.as_str(),
            "--batch-size",
            "256",
            "--publish-every-batches",
            "4",
            "--publish-interval",
            "50ms",
            "--keep-versions",
            "0",
            "--log",
            "warn",
        ],
    )?;
    // A first version, so the trainer is up and past its start-up before the clock starts.
    publish_and_follow(stack, &model, 0..256, None, Duration::from_secs(60)).await?;
    let (delays, took) = publish_and_follow(
        stack,
        &model,
        256..256 + count,
        None,
        Duration::from_secs(300),
    )
    .await?;
    let train_per_second = count as f64 / took.as_secs_f64();
    let offered_count = (offered * 3.0) as u64;
    let start = 256 + count;
    let (offered_delays, _) = publish_and_follow(
        stack,
        &model,
        start..start + offered_count,
        Some(offered),
        Duration::from_secs(120),
    )
    .await?;
    Ok(TrainRun {
        floor_per_second,
        train_per_second,
        freshness_p50_ms: millis(&delays, 0.5),
        freshness_p99_ms: millis(&delays, 0.99),
        offered_per_second: offered,
        offered_freshness_p50_ms: millis(&offered_delays, 0.5),
        offered_freshness_p99_ms: millis(&offered_delays, 0.99),
    })
}
