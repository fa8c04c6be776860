//! (c) Invalid events land on the dead-letter subject with a reason, while valid ones keep
//! flowing through featurize. An action too late for its item's event-time windows is refused
//! the same way, as "late". Every header of a dead letter is ASCII, which nats-py reads.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use freshet::subjects::{
    HEADER_DETAIL, HEADER_FIELD, HEADER_REASON, HEADER_SOURCE_SEQUENCE, STREAM_DEAD_LETTER,
    STREAM_EXAMPLES,
};
use freshet_tests::{Stack, cloud_event, eventually, headers_seen_by_nats_py};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_dead_lettered_with_a_reason() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // Every view labelled at once, so each valid event becomes one example.
    let featurize = stack.spawn("featurize", &["--label-horizon", "0s"])?;
    // An hour before the valid views of b1 (all at 12:00): once one of them is in, the window of
    // 11:00 was final long ago. Listed last, so valid views of b1 precede it.
    let mut late = cloud_event(
        "late-1",
        "user_action",
        json!({"user": "u1", "item": "b1", "action": "view"}),
    );
    late["time"] = json!("2026-11-26T11:00:00Z");
    // RFC 3339 as chrono reads it, not as the CloudEvents contract does.
    let mut lowercase_t = cloud_event(
        "lower-t",
        "user_action",
        json!({"user": "u1", "item": "b1", "action": "view"}),
    );
    lowercase_t["time"] = json!("2026-11-26t12:00:00Z");

    let bad: Vec<(&str, &str, Vec<u8>, &str, &str)> = vec![
        ("user_action", "u1", b"{\"specversion\":\"1.0\",".to_vec(), "malformed_json", "$"),
        ("user_action", "u1", b"\xff\xfe\xfd".to_vec(), "malformed_json", "$"),
        ("user_action", "u1", serde_json::to_vec(&cloud_event("bad-1", "user_action", json!({"user": "u1", "action": "view"})))?, "invalid_data", "data"),
        ("user_action", "u1", serde_json::to_vec(&cloud_event("bad-2", "user_action", json!({"user": "u1", "item": 42, "action": "view"})))?, "invalid_data", "data.item"),
        ("new_item", "b1", serde_json::to_vec(&cloud_event("bad-3", "new_item", json!({"item": "b1", "category": "x", "price": 1e300})))?, "out_of_range", "data.price"),
        ("new_item", "b1", br#"{"specversion":"1.0","id":"bad-4","source":"t","type":"new_item","data":{"item":"b1","category":"x","price":NaN}}"#.to_vec(), "malformed_json", "$"),
        ("example", "m", serde_json::to_vec(&cloud_event("bad-5", "example", json!({"model": "m", "features": [1.0, "2"], "label": 1})))?, "invalid_data", "data.features[1]"),
        ("click", "u1", serde_json::to_vec(&cloud_event("bad-6", "click", json!({})))?, "unknown_type", "type"),
        ("user_action", "u9", serde_json::to_vec(&cloud_event("bad-7", "user_action", json!({"user": "u1", "item": "b1", "action": "view"})))?, "invalid_envelope", "subject"),
        ("user_action", "u1", serde_json::to_vec(&lowercase_t)?, "invalid_envelope", "time"),
        ("user_action", "u1", serde_json::to_vec(&late)?, "late", "time"),
    ];
    let mut valid_actions = 0;
    for (i, (event_type, entity, payload, _, _)) in bad.iter().enumerate() {
        stack
            .publish_raw(event_type, entity, payload.clone())
            .await?;
        // Valid events interleaved with the bad ones must keep flowing.
        stack
            .publish_event(&cloud_event(
                &format!("good-{i}"),
                "user_action",
                json!({"user": "u1", "item": "b1", "action": "view"}),
            ))
            .await?;
        valid_actions += 1;
    }

    let dead = eventually(
        Duration::from_secs(30),
        "every invalid event on the dead-letter stream",
        || async {
            let n = stack.stream_len(STREAM_DEAD_LETTER).await.ok()?;
            (n as usize >= bad.len()).then_some(())
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nfeaturize log:\n{}",
            stack.log_of("featurize", featurize)
        )
    });
    dead?;
    let letters = stack.read_stream(STREAM_DEAD_LETTER, 100).await?;
    assert_eq!(
        letters.len(),
        bad.len(),
        "exactly one dead letter per invalid event"
    );
    let by_payload: BTreeMap<Vec<u8>, _> =
        letters.iter().map(|l| (l.payload.to_vec(), l)).collect();
    for (_, _, payload, reason, field) in &bad {
        let letter = by_payload.get(payload).unwrap_or_else(|| {
            panic!(
                "no dead letter keeps {:?}",
                String::from_utf8_lossy(payload)
            )
        });
        assert_eq!(
            letter.header(HEADER_REASON),
            Some(*reason),
            "{}",
            String::from_utf8_lossy(payload)
        );
        assert_eq!(letter.header(HEADER_FIELD), Some(*field));
        assert!(letter.header(HEADER_SOURCE_SEQUENCE).is_some());
        assert_eq!(
            letter.subject,
            format!("freshet.dead_letter.featurize.{reason}")
        );
    }
    // Every header value is ASCII, so every client reads them: nats-py 2.11 drops all the
    // headers of a message if one holds anything else (the out_of_range detail has a "±").
    for letter in &letters {
        for (name, value) in &letter.headers {
            assert!(
                value.bytes().all(|b| (b' '..=b'~').contains(&b)),
                "{name}: {value:?}"
            );
        }
    }
    let seen = headers_seen_by_nats_py(&stack.nats.url(), STREAM_DEAD_LETTER, letters.len())?;
    let reasons: Vec<Option<&str>> = seen.iter().map(|h| h[HEADER_REASON].as_str()).collect();
    let expected: Vec<Option<&str>> = letters.iter().map(|l| l.header(HEADER_REASON)).collect();
    assert_eq!(reasons, expected, "nats-py reads every reason");
    let out_of_range = seen
        .iter()
        .find(|h| h[HEADER_REASON] == "out_of_range")
        .and_then(|h| h[HEADER_DETAIL].as_str());
    assert_eq!(out_of_range, Some("1e300 is beyond \\u{b1}1e12"));

    let examples = eventually(
        Duration::from_secs(30),
        "an example per valid event",
        || async {
            let n = stack.stream_len(STREAM_EXAMPLES).await.ok()?;
            (n == valid_actions).then_some(n)
        },
    )
    .await?;
    assert_eq!(examples, valid_actions);
    assert!(
        stack.process(featurize).try_status()?.is_none(),
        "featurize is still running"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_action_is_dead_lettered_and_poisons_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let featurize = stack.spawn("featurize", &["--label-horizon", "0s"])?;
    let view = |id: &str, user: &str, time: &str| {
        let mut event = cloud_event(
            id,
            "user_action",
            json!({"user": user, "item": "b1", "action": "view"}),
        );
        event["time"] = json!(time);
        event
    };
    stack
        .publish_event(&cloud_event(
            "list-b1",
            "new_item",
            json!({"item": "b1", "category": "c1", "price": 9.5}),
        ))
        .await?;
    stack
        .publish_event(&view("honest-1", "u1", "2026-11-26T12:00:00Z"))
        .await?;
    // Dated 2099: taken, it would move b1's watermark there, and every honest view after it
    // would be late.
    stack
        .publish_event(&view("from-2099", "u2", "2099-01-01T00:00:00Z"))
        .await?;
    for (n, user) in ["u3", "u4", "u1"].into_iter().enumerate() {
        let time = format!("2026-11-26T12:00:{:02}Z", 5 * (n + 1));
        stack
            .publish_event(&view(&format!("honest-{}", n + 2), user, &time))
            .await?;
    }
    let logs = || stack.log_of("featurize", featurize);
    let letters = eventually(
        Duration::from_secs(30),
        "the future view dead-lettered",
        || async {
            let letters = stack.read_stream(STREAM_DEAD_LETTER, 10).await.ok()?;
            (!letters.is_empty()).then_some(letters)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    let examples = eventually(
        Duration::from_secs(30),
        "an example per honest view",
        || async {
            let examples = stack.read_stream(STREAM_EXAMPLES, 10).await.ok()?;
            (examples.len() >= 4).then_some(examples)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    // Time for anything more to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let letters_now = stack.read_stream(STREAM_DEAD_LETTER, 10).await?;
    assert_eq!(
        letters_now.len(),
        letters.len(),
        "only the future view refused"
    );
    let reasons: Vec<(Option<&str>, Option<&str>)> = letters
        .iter()
        .map(|l| (l.header(HEADER_REASON), l.header(HEADER_FIELD)))
        .collect();
    assert_eq!(reasons, [(Some("future"), Some("time"))]);
    assert!(letters[0].json()["id"] == "from-2099");
    let mut sources: Vec<String> = examples
        .iter()
        .map(|e| {
            e.json()["source_event"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    sources.sort();
    assert_eq!(sources, ["honest-1", "honest-2", "honest-3", "honest-4"]);
    Ok(())
}
