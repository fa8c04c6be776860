//! featurize's exactly-once effect, compared against a clean run: the same bookstore events
//! replayed (a) by one featurize that runs undisturbed, (b) by one killed with SIGKILL again and
//! again while a short ack wait forces redeliveries, (c) by two replicas splitting the partitions
//! and (d) by a replica and a standby that takes over when the first is killed, must leave
//! byte-identical FEATURES entries and the same EXAMPLES.
//!
//! featurize runs with `--label-horizon 0s`, so every action is one example. "The same EXAMPLES"
//! is exact for everything an example's own partition decides: its id, its label and the user's
//! features, and the item's price and idle time (every test event has the same time). An item
//! and its category are touched by users of every partition, so the other item columns of an
//! example depend on how the partitions interleaved in that run (as they would between any two
//! runs of a partitioned stream processor); for them the test checks each value lies between the
//! state when the run began and the final state. For the same reason the scaling states
//! (`scaling.<model>.<partition>`, EWMAs of those vectors) are compared by what they counted, not
//! by their moments.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use freshet::examples::ExampleRecord;
use freshet::subjects::{BUCKET_FEATURES, STREAM_EVENTS, STREAM_EXAMPLES};
use freshet_features::bookstore::{
    CategoryState, FEATURE_NAMES, ItemState, ScalingState, category_key,
};
use freshet_tests::{Stack, bookstore_events, eventually};
use futures::{StreamExt, TryStreamExt};

const ITEMS: usize = 12;
const ACTIONS: usize = 900;
/// Columns of the feature vector that come from the user's state alone (and the item's category,
/// known from the catalogue before any action): the cart and purchase rates, the category share
/// and the idle time.
const USER_COLUMNS: [usize; 4] = [0, 1, 2, 5];
/// Item columns every run agrees on: price and idle time, from the catalogue and the one event
/// time of the test.
const ITEM_FIXED_COLUMNS: [usize; 2] = [8, 10];
/// featurize labels every action at once.
const AT_ONCE: [&str; 2] = ["--label-horizon", "0s"];

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
    stack.await_items(ITEMS).await?;
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
    // Examples go out before the states are written: done means every featurize consumer has
    // acknowledged every event (a takeover may still be finishing the last batch's writes).
    eventually(
        Duration::from_secs(120),
        "every event acknowledged",
        || async {
            let mut events = stack.js.get_stream(STREAM_EVENTS).await.ok()?;
            let last = events.info().await.ok()?.state.last_sequence;
            let mut names = events.consumer_names();
            let mut all_done = true;
            while let Some(name) = names.next().await {
                let name = name.ok()?;
                if name.starts_with("featurize") {
                    let info = events.consumer_info(&name).await.ok()?;
                    all_done &= info.num_ack_pending == 0
                        && info.num_pending == 0
                        && info.ack_floor.stream_sequence
                            >= last.min(info.delivered.stream_sequence);
                }
            }
            all_done.then_some(())
        },
    )
    .await?;
    // Time for a redelivered duplicate to show up, if there were one.
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
        if key.starts_with("scaling.") {
            assert_eq!(
                scaling_counts(state),
                scaling_counts(&other.features[key]),
                "{what}: examples counted in FEATURES {key}"
            );
            assert_eq!(
                state["applied"], other.features[key]["applied"],
                "{what}: FEATURES {key}"
            );
        } else {
            assert_eq!(state, &other.features[key], "{what}: FEATURES {key}");
        }
    }
    for (id, expected) in &clean.examples {
        let got = &other.examples[id];
        assert_eq!(got.label, expected.label, "{what}: label of {id}");
        for column in USER_COLUMNS {
            assert_eq!(
                got.features[column], expected.features[column],
                "{what}: user feature {} of {id}",
                FEATURE_NAMES[column]
            );
        }
        // Price comes from the item's new_item event, featurized before any action, and its idle
        // time from the one event time of the test.
        for column in ITEM_FIXED_COLUMNS {
            assert_eq!(
                got.features[column], expected.features[column],
                "{what}: {id} {}",
                FEATURE_NAMES[column]
            );
        }
        // The item's and category's counts when this action was featurized lie between none and
        // the final ones, whatever the interleaving. A purchase rate is (purchases + 4·prior) /
        // (views + 4): the category's with prior 0.1, the item's with the category's rate as its
        // prior; a cart rate the same with carts, and prior 0.2. Every action of the test falls
        // in one popularity window, within the item's first minute, so a rate per minute of the
        // last five is their count.
        let end: ItemState =
            serde_json::from_value(clean.features[&format!("item.{}", id_item(id))].clone())
                .unwrap();
        let category_name = end.category.as_deref().expect("the catalogue came first");
        let category: CategoryState =
            serde_json::from_value(clean.features[&category_key(category_name)].clone()).unwrap();
        let (views, carts, purchases) = (end.views as f32, end.carts as f32, end.purchases as f32);
        let actions = (end.views + end.carts + end.purchases) as f32;
        let (category_views, category_purchases) = (
            category.views.max(category.purchases) as f32,
            category.purchases as f32,
        );
        let prior_low = 0.4 / (category_views + 4.0);
        let prior_high = (category_purchases + 0.4) / 4.0;
        let category_carts = category.carts as f32;
        let cart_prior_low = 0.8 / (category_views.max(category_carts) + 4.0);
        let cart_prior_high = (category_carts + 0.8) / 4.0;
        let bounds = [
            (
                6,
                4.0 * cart_prior_low / (views.max(carts) + 4.0),
                (carts + 4.0 * cart_prior_high) / 4.0,
            ),
            (
                7,
                4.0 * prior_low / (views.max(purchases) + 4.0),
                (purchases + 4.0 * prior_high) / 4.0,
            ),
            (9, 0.0, 1.0),
            (11, 0.0, (1.0 + actions).ln()),
            (12, 0.0, (1.0 + purchases).ln()),
            (3, cart_prior_low, cart_prior_high),
            (4, prior_low, prior_high),
        ];
        for (column, low, high) in bounds {
            let value = got.features[column];
            assert!(
                (low - 1e-5..=high + 1e-5).contains(&value),
                "{what}: {id} {} = {value}, outside [{low}, {high}]",
                FEATURE_NAMES[column]
            );
        }
    }
}

/// How many examples a scaling state folded in, per feature.
fn scaling_counts(state: &serde_json::Value) -> Vec<u64> {
    let state: ScalingState = serde_json::from_value(state.clone()).unwrap();
    FEATURE_NAMES
        .iter()
        .map(|name| state.ewma.get(name).map_or(0, |m| m.count()))
        .collect()
}

/// The item an action example is about, from the generator's rule (`r-act-<n>` → item index).
fn id_item(example_id: &str) -> String {
    let n: usize = example_id.rsplit('-').next().unwrap().parse().unwrap();
    format!("b{}", (n * 7 + n / 3) % ITEMS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_replicas_give_the_state_of_a_clean_run() -> anyhow::Result<()> {
    let clean = replay("the clean run", async |stack| {
        stack.spawn("featurize", &["--batch-size", "32", AT_ONCE[0], AT_ONCE[1]])?;
        publish(stack).await
    })
    .await?;
    let killed = replay("the run killed six times", async |stack| {
        let args = ["--batch-size", "16", AT_ONCE[0], AT_ONCE[1]];
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
        let args = |partitions: &'static str| {
            [
                "--batch-size",
                "16",
                "--partition",
                partitions,
                AT_ONCE[0],
                AT_ONCE[1],
            ]
        };
        stack.spawn("featurize", &args("0,1"))?;
        stack.spawn("featurize", &args("2,3"))?;
        publish(stack).await
    })
    .await?;
    assert_same(&clean, &replicas, "two replicas");
    // Two replicas of one durable: one works, the other stands by and takes over when the first
    // is killed.
    let standby = replay("a standby taking over", async |stack| {
        let args = ["--batch-size", "16", AT_ONCE[0], AT_ONCE[1]];
        let first = stack.spawn("featurize", &args)?;
        stack.spawn("featurize", &args)?;
        publish(stack).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.process(first).kill()?;
        Ok(())
    })
    .await?;
    assert_same(&clean, &standby, "a standby taking over");
    Ok(())
}
