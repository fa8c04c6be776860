//! The featurize benchmark: events/s through featurize with one replica (all partitions) and
//! with two (partitions split), beside the raw floor measured in the same run: a bare consumer
//! of the same stream that pulls each event, republishes it to EXAMPLES (acknowledged) and
//! acknowledges it, the I/O skeleton of featurize without its state.
//!
//! Each scenario runs on a fresh server. The catalogue is featurized first; then the actions are
//! published pipelined and the clock runs from the first publish until every action has its
//! example (featurize runs with `--label-horizon 0s`: one example per action, at once).
//!
//! Decoding is also timed alone, on one core with no server: [`freshet::events::decode_traced`]
//! (the envelope and data typed and checked, as featurize reads each event) beside a parse of the
//! same bytes into a JSON tree, which checks nothing.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use freshet::events::DEFAULT_MAX_EVENT_BYTES;
use freshet::subjects::{STREAM_EVENTS, STREAM_EXAMPLES};
use freshet_tests::{Stack, bookstore_events};
use serde::Serialize;

const ITEMS: usize = 200;
/// Unacknowledged publishes in flight at once.
const PUBLISH_WINDOW: usize = 512;

/// One run's figures: events/s, and decoding's µs per event.
#[derive(Debug, Clone, Serialize)]
pub struct FeaturizeRun {
    pub floor_per_second: f64,
    pub one_replica_per_second: f64,
    pub two_replicas_per_second: f64,
    pub decode_us_per_event: f64,
    pub json_parse_us_per_event: f64,
}

/// Passes over the events for each decoding figure; the median pass counts.
const DECODE_PASSES: usize = 5;

/// µs per event to decode the run's events, and to parse them into a JSON tree. The passes take
/// turns, so both meet the same moments of a shared machine.
fn decoding(actions: usize) -> anyhow::Result<(f64, f64)> {
    let encoded = bookstore_events(ITEMS, actions, "d")
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    let per_event = |started: Instant| started.elapsed().as_secs_f64() * 1e6 / encoded.len() as f64;
    let (mut decode, mut parse) = (Vec::new(), Vec::new());
    for _ in 0..DECODE_PASSES {
        let started = Instant::now();
        for bytes in &encoded {
            let decoded = freshet::events::decode_traced(black_box(bytes), DEFAULT_MAX_EVENT_BYTES);
            anyhow::ensure!(black_box(decoded).is_ok(), "a bookstore event was refused");
        }
        decode.push(per_event(started));
        let started = Instant::now();
        for bytes in &encoded {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(
                bytes,
            ))?);
        }
        parse.push(per_event(started));
    }
    Ok((crate::median(decode), crate::median(parse)))
}

/// Publishes `events` pipelined; returns when every publish is acknowledged.
async fn publish(stack: &Stack, events: &[serde_json::Value]) -> anyhow::Result<()> {
    let mut pending = std::collections::VecDeque::new();
    for event in events {
        let subject = stack.subjects.event(
            event["type"].as_str().unwrap_or_default(),
            event["data"]["user"]
                .as_str()
                .or_else(|| event["data"]["item"].as_str())
                .unwrap_or_default(),
        );
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(Bytes::from(serde_json::to_vec(event)?))
            .message_id(event["id"].as_str().unwrap_or_default());
        pending.push_back(stack.js.send_publish(subject, message).await?);
        if pending.len() >= PUBLISH_WINDOW {
            pending.pop_front().expect("the window is full").await?;
        }
    }
    for ack in pending {
        ack.await?;
    }
    Ok(())
}

/// Waits until EXAMPLES holds `count` messages.
pub async fn examples_reach(stack: &Stack, count: u64) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while stack.stream_len(STREAM_EXAMPLES).await? < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "EXAMPLES stopped at fewer than {count}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Instant::now())
}

/// Featurize with `replicas` (each `args`), the catalogue first, then `actions` timed.
async fn featurize(replicas: &[&[&str]], actions: usize) -> anyhow::Result<f64> {
    let mut stack = Stack::start().await?;
    for args in replicas {
        spawn_featurize(&mut stack, args)?;
    }
    measure(&stack, actions).await
}

fn spawn_featurize(stack: &mut Stack, args: &[&str]) -> anyhow::Result<usize> {
    let mut all = vec!["--label-horizon", "0s", "--log", "warn"];
    all.extend_from_slice(args);
    stack.spawn("featurize", &all)
}

/// Publishes the catalogue, waits until featurize has taken it in, then times `actions` actions
/// from the first publish until every one has its example; events/s.
async fn measure(stack: &Stack, actions: usize) -> anyhow::Result<f64> {
    let events = bookstore_events(ITEMS, actions, "b");
    let (catalogue, actions_only) = events.split_at(ITEMS);
    publish(stack, catalogue).await?;
    // The catalogue makes no examples; give featurize a moment to take it in.
    let features = stack
        .js
        .get_key_value(freshet::subjects::BUCKET_FEATURES)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while features
        .get(freshet_features::bookstore::item_key(
            &format!("b{}", ITEMS - 1).parse()?,
        ))
        .await?
        .is_none()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the catalogue was not featurized"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    publish(stack, actions_only).await?;
    let done = examples_reach(stack, actions as u64).await?;
    Ok(actions as f64 / (done - started).as_secs_f64())
}

/// EVENTS partitions in the scale curve: enough for its largest number of replicas.
pub const SCALE_PARTITIONS: u32 = 8;

/// One point of the scale curve.
#[derive(Debug, Clone, Serialize)]
pub struct ScalePoint {
    pub replicas: usize,
    pub events_per_second: f64,
    /// Share of scheduler periods in which a replica used up its quota (mean over replicas):
    /// near 1, the replicas are what limits; well below, something else is (the server).
    pub throttled_share: f64,
}

/// The partitions replica `index` of `replicas` reads, of [`SCALE_PARTITIONS`].
fn partitions_of(index: usize, replicas: usize) -> String {
    (0..SCALE_PARTITIONS as usize)
        .filter(|partition| partition % replicas == index)
        .map(|partition| partition.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// featurize with `replicas` processes on [`SCALE_PARTITIONS`] partitions, each held to `cpus`
/// CPUs by its own cgroup; nats-server and the benchmark run without a quota. One replica runs
/// as featurize runs by default (one durable over every partition); more split the partitions
/// evenly.
pub async fn scale_point(replicas: usize, cpus: f64, actions: usize) -> anyhow::Result<ScalePoint> {
    anyhow::ensure!(
        replicas >= 1 && (SCALE_PARTITIONS as usize).is_multiple_of(replicas),
        "{replicas} replicas do not split {SCALE_PARTITIONS} partitions evenly"
    );
    // Declared before the stack, so dropped after it: a group is removed once its process ended.
    let mut quotas = Vec::new();
    let mut stack = Stack::start_with_partitions(SCALE_PARTITIONS).await?;
    for index in 0..replicas {
        let partitions = partitions_of(index, replicas);
        let args: Vec<&str> = if replicas == 1 {
            Vec::new()
        } else {
            vec!["--partition", &partitions]
        };
        let process = spawn_featurize(&mut stack, &args)?;
        let pid = stack
            .process(process)
            .pid()
            .ok_or_else(|| anyhow::anyhow!("featurize replica {index} did not start"))?;
        let quota = crate::cgroup::Quota::new(&format!("featurize-{replicas}-{index}"), cpus)?;
        quota.add(pid)?;
        quotas.push(quota);
    }
    let events_per_second = measure(&stack, actions).await?;
    let mut throttled = Vec::new();
    for quota in &quotas {
        throttled.push(quota.throttling()?.share());
    }
    drop(stack);
    Ok(ScalePoint {
        replicas,
        events_per_second,
        throttled_share: throttled.iter().sum::<f64>() / throttled.len().max(1) as f64,
    })
}

/// The floor: pull, republish to EXAMPLES (acknowledged), acknowledge, for each event, a batch
/// of 1,024 at a time like featurize.
pub async fn floor(actions: usize) -> anyhow::Result<f64> {
    let stack = Stack::start().await?;
    let events = bookstore_events(ITEMS, actions, "f");
    let target = stack.subjects.examples(&"floor".parse()?);
    let relay =
        crate::pipeline::relay(&stack.js, STREAM_EVENTS, None, Some(target), events.len()).await?;
    let started = Instant::now();
    publish(&stack, &events).await?;
    relay.await??;
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// One run of the three scenarios, and of decoding.
pub async fn run(actions: usize) -> anyhow::Result<FeaturizeRun> {
    let (decode_us_per_event, json_parse_us_per_event) = decoding(actions)?;
    Ok(FeaturizeRun {
        decode_us_per_event,
        json_parse_us_per_event,
        floor_per_second: floor(actions).await?,
        one_replica_per_second: featurize(&[&[]], actions).await?,
        two_replicas_per_second: featurize(
            &[&["--partition", "0,1"], &["--partition", "2,3"]],
            actions,
        )
        .await?,
    })
}
