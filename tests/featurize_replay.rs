//! featurize's exactly-once effect, compared against a clean run: the same bookstore events
//! replayed (a) by one featurize that runs undisturbed, (b) by one killed with SIGKILL again and
//! again while a short ack wait forces redeliveries, (c) by two replicas splitting the partitions
//! and (d) by a replica and a standby that takes over when the first is killed, must leave
//! byte-identical FEATURES entries and the same EXAMPLES.
//!
//! "The same EXAMPLES" is exact for everything an example's own partition decides: its id, its
//! label and the user's features. An item is touched by users of every partition, so the item
//! columns of an example depend on how the partitions interleaved in that run (as they would
//! between any two runs of a partitioned stream processor); for them the test checks each value
//! lies between the item's state when the run began and its final state.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use freshet::examples::ExampleRecord;
use freshet::features::{FEATURE_NAMES, ItemState};
use freshet::subjects::{BUCKET_FEATURES, STREAM_EXAMPLES};
use freshet_tests::{Stack, bookstore_events, eventually};
use futures::TryStreamExt;

const ITEMS: usize = 12;
const ACTIONS: usize = 900;
/// Columns of the feature vector that come from the user's state alone.
const USER_COLUMNS: usize = 3;

/// A run's result: every FEATURES entry, and every example by id.
struct Outcome {
    features: BTreeMap<String, serde_json::Value>,
    examples: BTreeMap<String, ExampleRecord>,
}

/// Publishes the catalogue, waits until featurize knows it (so every user action sees its item's
/// category), then publishes the actions.
async fn publish(stack: &Stack) -> anyhow::Result<()> {
    let events = bookstore_events(ITEMS, ACTIONS, "r");
    let (items, actions) = events.split_at(ITEMS);
    for event in items {
        stack.publish_event(event).await?;
    }
    let features = stack.js.get_key_value(BUCKET_FEATURES).await?;
    eventually(
        Duration::from_secs(60),
        "the catalogue featurized",
        || async {
            let keys: Vec<String> = features.keys().await.ok()?.try_collect().await.ok()?;
            (keys.iter().filter(|k| k.starts_with("item.")).count() == ITEMS).then_some(())
        },
    )
    .await?;
    for event in actions {
        stack.publish_event(event).await?;
    }
    Ok(())
}

/// Waits for one example per action (and a little longer, for a duplicate to show if there were
/// one), then reads FEATURES and EXAMPLES.
async fn outcome(stack: &Stack, what: &str) -> anyhow::Result<Outcome> {
    let done = eventually(Duration::from_secs(180), what, || async {
        let n = stack.stream_len(STREAM_EXAMPLES).await.ok()?;
        (n as usize >= ACTIONS).then_some(())
    })
    .await;
    if let Err(err) = done {
        let n = stack.stream_len(STREAM_EXAMPLES).await?;
        let tail = |log: String| log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
        anyhow::bail!(
            "{err}: {n} examples\nfirst featurize log (end, newest first):\n{}\nlast:\n{}",
            tail(stack.log_of("featurize", 0)),
            tail(stack.log_of("featurize", stack.started() - 1))
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stored = stack.read_stream(STREAM_EXAMPLES, ACTIONS * 2).await?;
    assert_eq!(stored.len(), ACTIONS, "{what}: one example per action");
    let mut examples = BTreeMap::new();
    for message in stored {
        let example = ExampleRecord::decode(&message.payload).unwrap();
        let id = example.id.clone();
        assert!(
            examples.insert(id.clone(), example).is_none(),
            "{what}: {id} published twice"
        );
    }
    let store = stack.js.get_key_value(BUCKET_FEATURES).await?;
    let mut features = BTreeMap::new();
    let keys: Vec<String> = store.keys().await?.try_collect().await?;
    for key in keys {
        let bytes = store.get(&key).await?.unwrap();
        features.insert(key, serde_json::from_slice(&bytes)?);
    }
    Ok(Outcome { features, examples })
}

/// Runs the replay with `run` driving featurize processes on a fresh stack.
async fn replay<F>(what: &str, run: F) -> anyhow::Result<Outcome>
where
    F: AsyncFnOnce(&mut Stack) -> anyhow::Result<()>,
{
    let mut stack = Stack::start().await?;
    run(&mut stack).await?;
    outcome(&stack, what).await
}

fn assert_same(clean: &Outcome, other: &Outcome, what: &str) {
    assert_eq!(
        clean.features.keys().collect::<Vec<_>>(),
        other.features.keys().collect::<Vec<_>>(),
        "{what}: the same FEATURES keys"
    );
    for (key, state) in &clean.features {
        assert_eq!(state, &other.features[key], "{what}: FEATURES {key}");
    }
    for (id, expected) in &clean.examples {
        let got = &other.examples[id];
        assert_eq!(got.label, expected.label, "{what}: label of {id}");
        assert_eq!(
            got.features[..USER_COLUMNS],
            expected.features[..USER_COLUMNS],
            "{what}: user features of {id}"
        );
        // Price and age come from the item's new_item event, featurized before any action.
        assert_eq!(
            got.features[5..],
            expected.features[5..],
            "{what}: item price and age of {id}"
        );
        // The item's counts when this action was featurized lie between none and the final
        // ones, whatever the interleaving; the purchase rate is (purchases + 0.4) / (views + 4)
        // (a prior of 0.1 weighted as four views).
        let end: ItemState =
            serde_json::from_value(clean.features[&format!("item.{}", id_item(id))].clone())
                .unwrap();
        let (views, purchases) = (end.views as f32, end.purchases as f32);
        let bounds = [
            (3, 0.0, (1.0 + views).ln()),
            (4, 0.4 / (views + 4.0), (purchases + 0.4) / 4.0),
        ];
        for (column, low, high) in bounds {
            let value = got.features[column];
            assert!(
                (low - 1e-6..=high + 1e-6).contains(&value),
                "{what}: {id} {} = {value}, outside [{low}, {high}]",
                FEATURE_NAMES[column]
            );
        }
    }
}

/// The item an action example is about, from the generator's rule (`r-act-<n>` → item index).
fn id_item(example_id: &str) -> String {
    let n: usize = example_id.rsplit('-').next().unwrap().parse().unwrap();
    format!("b{}", (n * 7 + n / 3) % ITEMS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_replicas_give_the_state_of_a_clean_run() -> anyhow::Result<()> {
    let clean = replay("the clean run", async |stack| {
        stack.spawn("featurize", &["--batch-size", "32"])?;
        publish(stack).await
    })
    .await?;
    let killed = replay("the run killed six times", async |stack| {
        let args = ["--batch-size", "16"];
        let mut featurize = stack.spawn("featurize", &args)?;
        publish(stack).await?;
        let mut delay = 57u64;
        for _ in 0..6 {
            delay = (delay * 7_919 + 311) % 500 + 100;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            stack.process(featurize).kill()?;
            featurize = stack.spawn("featurize", &args)?;
        }
        Ok(())
    })
    .await?;
    assert_same(&clean, &killed, "killed");
    // Two replicas scale across partitions: each works its own durables.
    let replicas = replay("two replicas", async |stack| {
        stack.spawn("featurize", &["--batch-size", "16", "--partition", "0,1"])?;
        stack.spawn("featurize", &["--batch-size", "16", "--partition", "2,3"])?;
        publish(stack).await
    })
    .await?;
    assert_same(&clean, &replicas, "two replicas");
    // Two replicas of one durable: one works, the other stands by and takes over when the first
    // is killed.
    let standby = replay("a standby taking over", async |stack| {
        let first = stack.spawn("featurize", &["--batch-size", "16"])?;
        stack.spawn("featurize", &["--batch-size", "16"])?;
        publish(stack).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.process(first).kill()?;
        Ok(())
    })
    .await?;
    assert_same(&clean, &standby, "a standby taking over");
    Ok(())
}
