//! featurize's labels with a horizon and its rule for late actions, end to end, both ways a label
//! can reach train. Waiting for the horizon (`--delayed-feedback wait`): a view waits for its
//! label, a purchase within the horizon labels it 1 under the view's id, the user's next event
//! past the horizon labels another view 0, and an action too late for its item's event-time
//! windows is dead-lettered as "late" and changes nothing. With fake-negative weighting (the
//! default): every view goes out at once as a fake negative saying from when its label is final,
//! and the purchase sends the view's correction under its own id.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::examples::{ExampleRecord, Feedback};
use freshet::subjects::{
    BUCKET_FEATURES, HEADER_FIELD, HEADER_REASON, STREAM_DEAD_LETTER, STREAM_EXAMPLES,
};
use freshet_features::bookstore::{ItemState, UserState, item_key, user_key};
use freshet_tests::{Stack, cloud_event, eventually};
use serde_json::json;

/// An action of user u1 at 12:`minute` on the test's day. One user: one partition, so featurize
/// handles the actions in the order they are published.
fn action(id: &str, item: &str, action: &str, minute: u32) -> serde_json::Value {
    let mut event = cloud_event(
        id,
        "user_action",
        json!({"user": "u1", "item": item, "action": action}),
    );
    event["time"] = json!(format!("2026-11-26T12:{minute:02}:00Z"));
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_wait_for_their_label_and_late_actions_change_nothing() -> anyhow::Result<()> {
    let examples = run(&["--delayed-feedback", "wait"], 2).await?;
    let labels: Vec<(&str, f32)> = examples.iter().map(|e| (e.id.as_str(), e.label)).collect();
    assert_eq!(labels, [("ex-v1", 1.0), ("ex-v2", 0.0)]);
    assert_eq!(
        examples[0].event_time.map(|t| t.to_rfc3339()).as_deref(),
        Some("2026-11-26T12:00:00+00:00"),
        "a labelled view keeps the time (and features) of the view"
    );
    assert_eq!(examples[0].source_event, "v1");
    assert!(examples.iter().all(|e| e.feedback == Feedback::Final));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fake_negatives_views_go_out_at_once_and_a_purchase_corrects_one() -> anyhow::Result<()>
{
    let examples = run(&[], 4).await?;
    let labels: Vec<(&str, f32, Feedback)> = examples
        .iter()
        .map(|e| (e.id.as_str(), e.label, e.feedback))
        .collect();
    assert_eq!(
        labels,
        [
            ("ex-v1", 0.0, Feedback::FakeNegative),
            ("ex-v2", 0.0, Feedback::FakeNegative),
            ("ex-p1", 1.0, Feedback::Correction),
            ("ex-v3", 0.0, Feedback::FakeNegative),
        ]
    );
    let correction = &examples[2];
    assert_eq!(correction.corrects.as_deref(), Some("ex-v1"));
    assert_eq!(
        (&correction.features, correction.event_time),
        (&examples[0].features, examples[0].event_time),
        "the correction carries the view's features and time"
    );
    // Each fake negative says from when its label is final: the ten-minute horizon and the
    // five-second out-of-orderness bound after its view. Nothing else carries a final time.
    let final_at: Vec<(&str, Option<String>)> = examples
        .iter()
        .map(|e| (e.id.as_str(), e.final_at.map(|t| t.to_rfc3339())))
        .collect();
    assert_eq!(
        final_at,
        [
            ("ex-v1", Some("2026-11-26T12:10:05+00:00".to_string())),
            ("ex-v2", Some("2026-11-26T12:11:05+00:00".to_string())),
            ("ex-p1", None),
            ("ex-v3", Some("2026-11-26T12:30:05+00:00".to_string())),
        ]
    );
    Ok(())
}

/// Runs the events through featurize started with `flags` (and a ten-minute horizon), checks
/// the late action and the user's state, and returns the `expected` examples published.
async fn run(flags: &[&str], expected: u64) -> anyhow::Result<Vec<ExampleRecord>> {
    let mut stack = Stack::start().await?;
    let mut args = vec!["--label-horizon", "10m"];
    args.extend_from_slice(flags);
    let featurize = stack.spawn("featurize", &args)?;
    let events = [
        action("v1", "b1", "view", 0),
        action("v2", "b2", "view", 1),
        // Within ten minutes of v1: v1 becomes a positive example.
        action("p1", "b1", "purchase", 5),
        // The user's watermark (12:19:55) is past v2's horizon (12:11): v2 becomes a negative.
        action("v3", "b3", "view", 20),
        // b3's watermark is 12:19:55, and its window of 12:00 was final at 12:02.
        action("late", "b3", "view", 0),
    ];
    for event in &events {
        stack.publish_event(event).await?;
    }

    // The late action is the last: once its dead letter is out, its batch's states are written.
    let letters = eventually(
        Duration::from_secs(30),
        "the late action dead-lettered",
        || async {
            let letters = stack.read_stream(STREAM_DEAD_LETTER, 10).await.ok()?;
            (!letters.is_empty()).then_some(letters)
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nfeaturize log:\n{}",
            stack.log_of("featurize", featurize)
        )
    })?;
    assert_eq!(letters.len(), 1, "only the late action is refused");
    assert_eq!(letters[0].header(HEADER_REASON), Some("late"));
    assert_eq!(letters[0].header(HEADER_FIELD), Some("time"));
    assert_eq!(letters[0].json()["id"], "late");

    eventually(Duration::from_secs(30), "every example", || async {
        let n = stack.stream_len(STREAM_EXAMPLES).await.ok()?;
        (n >= expected).then_some(())
    })
    .await?;
    // Give an unexpected example time to show up, if there were one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let examples: Vec<ExampleRecord> = stack
        .read_stream(STREAM_EXAMPLES, 10)
        .await?
        .iter()
        .map(|m| ExampleRecord::decode(&m.payload).unwrap())
        .collect();

    let features = stack.js.get_key_value(BUCKET_FEATURES).await?;
    let user: UserState =
        serde_json::from_slice(&features.get(user_key(&"u1".parse()?)).await?.unwrap())?;
    assert_eq!(
        (user.views, user.purchases),
        (3, 1),
        "the late view is not counted"
    );
    assert_eq!(user.refused.len(), 1, "the refusal is remembered");
    let pending: Vec<&str> = user.pending.iter().map(|v| v.event.as_str()).collect();
    assert_eq!(pending, ["v3"], "v3 still waits for its label");
    let b3: ItemState =
        serde_json::from_slice(&features.get(item_key(&"b3".parse()?)).await?.unwrap())?;
    assert_eq!(b3.views, 1);
    assert_eq!(
        b3.popularity.unwrap().late_count(),
        0,
        "judged, never applied"
    );
    Ok(examples)
}
