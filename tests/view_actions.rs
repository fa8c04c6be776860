//! Actions in `freshet view`: without `--action-tokens` the view is read-only (no action routes);
//! with them, a rollback, a pin and an unpin are previewed (both versions scored on the model's
//! recent examples), refused without a token, with a wrong one or unconfirmed, and done once
//! confirmed, through the same verified moves as the CLI, recording who did each.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::ids::ModelName;
use freshet::subjects::BUCKET_MODELS;
use freshet_model::store::{Cause, PointerStore, Pointers, Slot};
use freshet_tests::{Stack, eventually, http_client_with_token, start_view_with};
use serde_json::{Value, json};

const ANA: &str = "ana-token-0123456789abcdef";
const EXAMPLES: u64 = 100;

fn row(n: u64) -> (Vec<f32>, f32) {
    let x = (n % 10) as f32 / 10.0;
    (vec![x, 1.0 - x], f32::from(x > 0.5))
}

/// POSTs `body` to the view's `path` with `token`; returns the status and the JSON answer.
async fn post(url: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let client = match token {
        Some(token) => http_client_with_token(token),
        None => reqwest::Client::new(),
    };
    let response = client
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_actions_need_a_token_a_preview_and_a_confirmation() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("acted")?;
    let train = stack.spawn(
        "train",
        &[
            "--model",
            "acted",
            "--batch-size",
            "10",
            "--publish-every-batches",
            "1",
        ],
    )?;
    stack.publish_examples(&model, 0..EXAMPLES, row).await?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let live = eventually(Duration::from_secs(90), "train caught up", || async {
        let live = pointers.get(&model, Slot::Live).await.ok()?.value?;
        (live.version >= 5).then_some(live.version)
    })
    .await?;
    // Nothing else moves live while the test acts.
    stack.process(train).terminate(Duration::from_secs(10))?;
    let live = pointers
        .get(&model, Slot::Live)
        .await?
        .value
        .unwrap()
        .version
        .max(live);

    // Read-only without action tokens: the routes do not exist.
    let (read_only, url) = start_view_with(&stack, &["--model", "acted"])?;
    assert_eq!(
        reqwest::get(format!("{url}api/actions"))
            .await?
            .status()
            .as_u16(),
        404
    );
    let rollback = json!({"model": "acted", "action": "rollback", "version": 1, "confirm": true});
    assert_eq!(
        post(&url, "api/actions", Some(ANA), rollback.clone())
            .await
            .0,
        404
    );
    drop(read_only);

    let tokens = stack.dir.path().join("action-tokens");
    std::fs::create_dir_all(&tokens)?;
    std::fs::write(tokens.join("ana"), ANA)?;
    let (_view, url) = start_view_with(
        &stack,
        &[
            "--model",
            "acted",
            "--action-tokens",
            tokens.to_str().unwrap(),
        ],
    )?;
    assert_eq!(
        reqwest::get(format!("{url}api/actions"))
            .await?
            .status()
            .as_u16(),
        200
    );

    // No token, a wrong one: refused, nothing moves.
    let preview = json!({"model": "acted", "action": "rollback", "version": 1});
    assert_eq!(
        post(&url, "api/actions/preview", None, preview.clone())
            .await
            .0,
        401
    );
    let wrong = "wrong-token-0123456789abcdef";
    assert_eq!(
        post(&url, "api/actions", Some(wrong), rollback.clone())
            .await
            .0,
        401
    );

    // The preview: both versions on the recent examples.
    let (status, shown) = post(&url, "api/actions/preview", Some(ANA), preview).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        (
            shown["live_version"].as_u64(),
            shown["target_version"].as_u64(),
            shown["by"].as_str()
        ),
        (Some(live), Some(1), Some("ana")),
        "{shown}"
    );
    assert_eq!(
        shown["evidence"]["examples"].as_u64(),
        Some(EXAMPLES),
        "{shown}"
    );
    for accuracy in ["live_accuracy", "target_accuracy"] {
        let value = shown["evidence"][accuracy].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&value), "{shown}");
    }

    // Unconfirmed: refused. Confirmed: done, recorded with who.
    let unconfirmed = json!({"model": "acted", "action": "rollback", "version": 1});
    assert_eq!(
        post(&url, "api/actions", Some(ANA), unconfirmed).await.0,
        400
    );
    assert_eq!(
        pointers
            .get(&model, Slot::Live)
            .await?
            .value
            .unwrap()
            .version,
        live
    );
    let (status, done) = post(&url, "api/actions", Some(ANA), rollback).await;
    assert_eq!(status, 200, "{done}");
    let pointer = pointers.get(&model, Slot::Live).await?.value.unwrap();
    assert_eq!((pointer.version, pointer.cause), (1, Cause::Rollback));
    assert!(pointer.reason.contains("by ana"), "{}", pointer.reason);

    // Pin and unpin, with who in the hold.
    let pin = json!({"model": "acted", "action": "pin", "version": live, "reason": "known good", "confirm": true});
    let (status, done) = post(&url, "api/actions", Some(ANA), pin).await;
    assert_eq!(status, 200, "{done}");
    let pointer = pointers.get(&model, Slot::Live).await?.value.unwrap();
    assert_eq!((pointer.version, pointer.cause), (live, Cause::Pin));
    let hold = pointers.hold(&model).await?.value.unwrap();
    assert_eq!((hold.pinned, hold.by.as_str()), (Some(live), "ana"));
    // Pinned: a rollback from the view is refused like one from the CLI.
    let again = json!({"model": "acted", "action": "rollback", "version": 1, "confirm": true});
    let (status, refused) = post(&url, "api/actions", Some(ANA), again).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("pinned"),
        "{refused}"
    );
    let unpin = json!({"model": "acted", "action": "unpin", "confirm": true});
    assert_eq!(post(&url, "api/actions", Some(ANA), unpin).await.0, 200);
    assert_eq!(pointers.hold(&model).await?.value, None);
    Ok(())
}
