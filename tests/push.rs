//! Push delivery (Knative Eventing): CloudEvents POSTed to a function's `/events`, in binary
//! and structured mode, join the stream the function reads and are handled like published
//! ones: featurize updates the entities, train learns the example, a repeated event is stored
//! once, and a malformed one (or, at train, one that is not an example) is answered 400 and
//! dead-lettered with its reason. `/events` is turned on (`--events on`) and asks for a token,
//! as a deployment has it; tests/http_auth.rs has the callers it refuses.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::subjects::{
    BUCKET_FEATURES, BUCKET_MODELS, HEADER_FUNCTION, HEADER_REASON, STREAM_DEAD_LETTER,
    STREAM_EVENTS,
};
use freshet_cli::stack::free_port;
use freshet_features::bookstore::{FEATURE_NAMES, ItemState, UserState, item_key, user_key};
use freshet_model::store::{ArtifactStore, PointerStore, Pointers, Slot};
use freshet_tests::{Stack, cloud_event, eventually, http_client_with_token, write_tokens};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// POSTs a binary-mode CloudEvent: attributes in `ce-` headers, `data` as the body.
async fn post_binary(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    event_type: &str,
    data: Value,
) -> (StatusCode, Value) {
    let response = http
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "tests/push")
        .header("ce-type", event_type)
        .header("content-type", "application/json")
        .body(data.to_string())
        .send()
        .await
        .unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// POSTs a structured-mode CloudEvent: the whole envelope as the body.
async fn post_structured(http: &reqwest::Client, url: &str, body: String) -> (StatusCode, Value) {
    let response = http
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .body(body)
        .send()
        .await
        .unwrap();
    (
        response.status(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_events_are_handled_like_published_ones() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    const BROKER_TOKEN: &str = "broker-token-for-push-tests";
    let tokens = write_tokens(&stack.dir.path().join("tokens"), &[BROKER_TOKEN]);
    stack.set_env("FRESHET_EVENTS", "on");
    stack.set_env("FRESHET_HTTP_TOKENS", &tokens.display().to_string());
    let (featurize_port, train_port) = (free_port()?, free_port()?);
    stack.spawn(
        "featurize",
        &[
            "--label-horizon",
            "0s",
            "--http-port",
            &featurize_port.to_string(),
        ],
    )?;
    let train = stack.spawn(
        "train",
        &[
            "--publish-interval",
            "100ms",
            "--http-port",
            &train_port.to_string(),
        ],
    )?;
    let featurize_url = format!("http://127.0.0.1:{featurize_port}/events");
    let train_url = format!("http://127.0.0.1:{train_port}/events");
    let http = http_client_with_token(BROKER_TOKEN);
    // Wait for featurize's HTTP server.
    eventually(Duration::from_secs(30), "featurize's HTTP port", || async {
        http.get(format!("http://127.0.0.1:{featurize_port}/healthz"))
            .send()
            .await
            .ok()
    })
    .await?;

    // Binary mode: a book is listed; sent twice, stored once.
    let book = json!({"item": "b1", "category": "fantasy", "price": 12.0});
    let (status, first) =
        post_binary(&http, &featurize_url, "push-b1", "new_item", book.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(
        (first["stream"].as_str(), first["duplicate"].as_bool()),
        (Some(STREAM_EVENTS), Some(false))
    );
    let (status, again) = post_binary(&http, &featurize_url, "push-b1", "new_item", book).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["duplicate"], true, "{again}");

    // Structured mode: a view of it.
    let view = cloud_event(
        "push-v1",
        "user_action",
        json!({"user": "u1", "item": "b1", "action": "view"}),
    );
    let (status, body) = post_structured(&http, &featurize_url, view.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(stack.stream_len(STREAM_EVENTS).await?, 2);

    let features = stack.js.get_key_value(BUCKET_FEATURES).await?;
    let (user, item): (UserState, ItemState) = eventually(
        Duration::from_secs(30),
        "featurize applied the pushed events",
        || async {
            let user = features.get(user_key(&"u1".parse().ok()?)).await.ok()??;
            let item = features.get(item_key(&"b1".parse().ok()?)).await.ok()??;
            Some((
                serde_json::from_slice(&user).ok()?,
                serde_json::from_slice(&item).ok()?,
            ))
        },
    )
    .await?;
    assert_eq!(user.views, 1);
    assert_eq!((item.category.as_deref(), item.views), (Some("fantasy"), 1));

    // Malformed: 400 with the reason, and on the dead-letter subject, not lost.
    let (status, refused) = post_structured(&http, &featurize_url, "{oops".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"]["reason"], "malformed_json", "{refused}");
    let letters = eventually(Duration::from_secs(10), "the dead letter", || async {
        let letters = stack.read_stream(STREAM_DEAD_LETTER, 10).await.ok()?;
        (!letters.is_empty()).then_some(letters)
    })
    .await?;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header(HEADER_REASON), Some("malformed_json"));
    assert_eq!(letters[0].header(HEADER_FUNCTION), Some("featurize"));
    assert_eq!(&letters[0].payload[..], b"{oops");

    // train takes an example event straight to EXAMPLES, and learns it with the view's.
    let example = json!({
        "model": "bookstore",
        "features": vec![0.5; FEATURE_NAMES.len()],
        "label": 1.0,
    });
    let (status, stored) = post_binary(&http, &train_url, "push-ex1", "example", example).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{stored}");
    assert_eq!(stored["stream"], "EXAMPLES");
    let model = freshet::ids::ModelName::parse("bookstore")?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    eventually(
        Duration::from_secs(30),
        "a version that learned both examples",
        || async {
            let live = pointers.get(&model, Slot::Live).await.ok()?.value?;
            let manifest = artifacts.manifest(&model, live.version).await.ok()?;
            (manifest.metrics.examples_total == 2).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;
    // Any other event pushed to train is featurize's: refused, and dead-lettered by train.
    let (status, refused) = post_binary(
        &http,
        &train_url,
        "push-v2",
        "user_action",
        json!({"user": "u2", "item": "b1", "action": "view"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["error"]["field"], "type");
    let letters = stack.read_stream(STREAM_DEAD_LETTER, 10).await?;
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[1].header(HEADER_FUNCTION), Some("train"));
    Ok(())
}
