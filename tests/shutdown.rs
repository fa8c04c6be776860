//! (d) A function stopped with SIGTERM mid-stream exits 0 and loses nothing: after a restart,
//! every event is reflected exactly once in FEATURES and EXAMPLES. featurize holds its events
//! until it writes the states they changed, and writes them when stopped.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::subjects::{BUCKET_FEATURES, STREAM_EVENTS, STREAM_EXAMPLES};
use freshet_features::bookstore::{UserState, user_key};
use freshet_tests::{Stack, cloud_event, eventually};
use serde_json::json;

const USERS: usize = 10;
const ACTIONS: usize = 3_000;
/// featurize's flags: every view labelled at once, so each event becomes one example.
const ARGS: [&str; 4] = ["--batch-size", "32", "--label-horizon", "0s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_exits_zero_and_loses_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    for n in 0..ACTIONS {
        let event = cloud_event(
            &format!("a-{n}"),
            "user_action",
            json!({"user": format!("u{}", n % USERS), "item": "b1", "action": "view"}),
        );
        stack.publish_event(&event).await?;
    }
    let first = stack.spawn("featurize", &ARGS)?;
    // Stop it once it is visibly mid-stream.
    eventually(
        Duration::from_secs(60),
        "featurize to start producing",
        || async {
            let n = stack.stream_len(STREAM_EXAMPLES).await.ok()?;
            (n > 50).then_some(())
        },
    )
    .await?;
    let status = stack.process(first).terminate(Duration::from_secs(20))?;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        stack.log_of("featurize", first)
    );
    let at_stop = stack.stream_len(STREAM_EXAMPLES).await?;
    assert!(
        (at_stop as usize) < ACTIONS,
        "the stop came mid-stream ({at_stop} of {ACTIONS} done)"
    );

    let second = stack.spawn("featurize", &ARGS)?;
    assert_every_event_featurized_once(&stack, second).await
}

/// Waits until every event is featurized, then checks it was so exactly once: one example per
/// event, and every user's view count right. `last` is the featurize run whose log helps if not.
async fn assert_every_event_featurized_once(stack: &Stack, last: usize) -> anyhow::Result<()> {
    let done = eventually(
        Duration::from_secs(120),
        "every event featurized",
        || async {
            let n = stack.stream_len(STREAM_EXAMPLES).await.ok()?;
            (n as usize >= ACTIONS).then_some(())
        },
    )
    .await;
    if let Err(err) = done {
        let n = stack.stream_len(STREAM_EXAMPLES).await?;
        anyhow::bail!(
            "{err}: {n} examples\nlast featurize log:\n{}",
            stack.log_of("featurize", last)
        );
    }
    // Give a redelivered duplicate time to show up, if there were one.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        stack.stream_len(STREAM_EXAMPLES).await? as usize,
        ACTIONS,
        "one example per event"
    );
    let features = stack.js.get_key_value(BUCKET_FEATURES).await?;
    for u in 0..USERS {
        let bytes = features
            .get(user_key(&format!("u{u}").parse()?))
            .await?
            .expect("every user has state");
        let state: UserState = serde_json::from_slice(&bytes)?;
        assert_eq!(
            state.views as usize,
            ACTIONS / USERS,
            "user u{u} counted each view exactly once"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_again_and_again_loses_nothing_and_counts_nothing_twice() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    for n in 0..ACTIONS {
        let event = cloud_event(
            &format!("k-{n}"),
            "user_action",
            json!({"user": format!("u{}", n % USERS), "item": "b1", "action": "view"}),
        );
        stack.publish_event(&event).await?;
    }
    let mut featurize = stack.spawn("featurize", &ARGS)?;
    let mut delay = 91u64;
    for _ in 0..6 {
        delay = (delay * 7_919 + 311) % 600 + 100;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        stack.process(featurize).kill()?;
        featurize = stack.spawn("featurize", &ARGS)?;
    }
    assert_every_event_featurized_once(&stack, featurize).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn featurize_writes_each_state_once_for_many_batches_and_acknowledges_then()
-> anyhow::Result<()> {
    const GROUPS: usize = 6;
    const PER_GROUP: usize = 5;
    let mut stack = Stack::start().await?;
    let featurize = stack.spawn(
        "featurize",
        &[
            "--batch-size",
            "8",
            "--batch-wait",
            "0s",
            "--label-horizon",
            "0s",
            "--write-states-every-events",
            "100000",
            "--write-states-interval",
            "10m",
        ],
    )?;
    // Groups far enough apart to be batches of their own.
    for group in 0..GROUPS {
        for n in 0..PER_GROUP {
            let event = cloud_event(
                &format!("w-{group}-{n}"),
                "user_action",
                json!({"user": "u1", "item": "b1", "action": "view"}),
            );
            stack.publish_event(&event).await?;
        }
        eventually(Duration::from_secs(60), "the group's examples", || async {
            let n = stack.stream_len(STREAM_EXAMPLES).await.ok()?;
            (n as usize >= (group + 1) * PER_GROUP).then_some(())
        })
        .await?;
    }
    // Every example is out, no state is written, and every event waits for the write.
    assert_eq!(
        stack.last_sequence("KV_FEATURES").await?,
        0,
        "no state written yet"
    );
    let held = stack
        .js
        .get_stream(STREAM_EVENTS)
        .await?
        .consumer_info("featurize")
        .await?
        .num_ack_pending;
    assert_eq!(held, GROUPS * PER_GROUP, "the events wait for their states");

    let status = stack
        .process(featurize)
        .terminate(Duration::from_secs(20))?;
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        stack.log_of("featurize", featurize)
    );
    // Stopping wrote the user, the item and the partition's scaling state once each ...
    assert_eq!(
        stack.last_sequence("KV_FEATURES").await?,
        3,
        "one write per key for {GROUPS} batches"
    );
    let features = stack.js.get_key_value(BUCKET_FEATURES).await?;
    let state: UserState =
        serde_json::from_slice(&features.get(user_key(&"u1".parse()?)).await?.unwrap())?;
    assert_eq!(
        state.views as usize,
        GROUPS * PER_GROUP,
        "every view counted"
    );
    // ... and acknowledged every event.
    let info = stack
        .js
        .get_stream(STREAM_EVENTS)
        .await?
        .consumer_info("featurize")
        .await?;
    assert_eq!(info.num_ack_pending, 0, "every event acknowledged");
    Ok(())
}
