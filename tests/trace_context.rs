//! W3C trace context through the pipeline, against a real nats-server and the real binaries: an
//! event published with `traceparent` becomes an example carrying a child of it (same trace id,
//! another parent id, its `tracestate`), a dead letter carrying it, log lines naming it, and a
//! model version whose manifest lists its trace id; a prediction request with `traceparent` is
//! answered (over NATS and HTTP) with a child of it and recorded with its trace id. An invalid
//! `traceparent` loses nothing: the event is handled in a fresh trace.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use freshet::ids::ModelName;
use freshet::serving::{PredictResponse, PredictionBatch, PredictionId};
use freshet::subjects::{BUCKET_MODELS, STREAM_DEAD_LETTER, STREAM_EXAMPLES, STREAM_PREDICTIONS};
use freshet::trace::{TRACEPARENT, TRACESTATE, TraceParent};
use freshet_model::store::{ArtifactStore, Pointers, Slot};
use freshet_tests::{
    ModelWriter, Stack, bookstore_row_infer, bookstore_row_request, cloud_event, eventually, infer,
    view_action,
};
use serde_json::json;

/// The producer's span, as a traced producer would send it.
const PRODUCER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// A trace carried in the envelope (the CloudEvents distributed-tracing extension) instead.
const ENVELOPE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
const ENVELOPE_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
/// A trace carried by a refused event.
const REFUSED: &str = "00-11111111111111111111111111111111-2222222222222222-01";
const REFUSED_TRACE: &str = "11111111111111111111111111111111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_goes_from_the_producer_through_featurize_into_a_model_version()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // Every view labelled at once: each action becomes one example, published while handling it.
    let featurize = stack.spawn(
        "featurize",
        &["--label-horizon", "0s", "--log-format", "json"],
    )?;
    let train = stack.spawn(
        "train",
        &[
            "--publish-every-batches",
            "1",
            "--publish-interval",
            "200ms",
        ],
    )?;
    for i in 0..3 {
        stack
            .publish_event(&cloud_event(
                &format!("item-{i}"),
                "new_item",
                json!({"item": format!("b{i}"), "category": "c", "price": 5.0 + i as f64}),
            ))
            .await?;
    }
    stack
        .publish_event_with(
            &view_action("traced", "u1", "b0"),
            &[(TRACEPARENT, PRODUCER), (TRACESTATE, "congo=t61rcWkgMzE")],
        )
        .await?;
    stack
        .publish_event_with(
            &view_action("invalid", "u2", "b1"),
            &[(TRACEPARENT, "00-not-a-trace-01")],
        )
        .await?;
    stack
        .publish_event_with(&view_action("untraced", "u3", "b2"), &[])
        .await?;
    let mut enveloped = view_action("enveloped", "u4", "b0");
    enveloped["traceparent"] = json!(ENVELOPE);
    stack.publish_event_with(&enveloped, &[]).await?;
    // Refused (no item): dead-lettered in its trace.
    let refused = cloud_event(
        "refused",
        "user_action",
        json!({"user": "u5", "action": "view"}),
    );
    let message = PublishMessage::build()
        .payload(serde_json::to_vec(&refused)?.into())
        .message_id("refused")
        .header(TRACEPARENT, REFUSED);
    stack
        .js
        .send_publish(stack.subjects.event("user_action", "u5"), message)
        .await?
        .await?;

    let examples = eventually(Duration::from_secs(60), "four examples", || async {
        let examples = stack.read_stream(STREAM_EXAMPLES, 100).await.ok()?;
        (examples.len() == 4).then_some(examples)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.log_of("featurize", featurize)))?;
    let example_of = |event: &str| {
        examples
            .iter()
            .find(|m| m.json()["source_event"] == event)
            .unwrap_or_else(|| panic!("no example of {event}"))
    };
    let parent_of = |event: &str| {
        example_of(event)
            .header(TRACEPARENT)
            .map(|v| TraceParent::parse(v).unwrap_or_else(|| panic!("{event}: invalid {v}")))
    };

    // The traced event's example: the same trace, featurize's own span, the same flags and state.
    let producer = TraceParent::parse(PRODUCER).unwrap();
    let traced = parent_of("traced").unwrap();
    assert_eq!(traced.trace_id, producer.trace_id);
    assert_ne!(traced.parent_id, producer.parent_id);
    assert_eq!(traced.flags, producer.flags);
    assert_eq!(
        example_of("traced").header(TRACESTATE),
        Some("congo=t61rcWkgMzE")
    );
    // An invalid traceparent loses nothing: the event is handled, in a fresh trace.
    let fresh = parent_of("invalid").expect("a fresh trace for an invalid traceparent");
    assert_ne!(fresh.trace_id, producer.trace_id);
    // No trace, no header; a trace in the envelope is continued like a header's.
    assert_eq!(parent_of("untraced"), None);
    let enveloped = parent_of("enveloped").unwrap();
    assert_eq!(enveloped.trace_id.to_string(), ENVELOPE_TRACE);
    assert_ne!(enveloped.to_string(), ENVELOPE);

    // The refused event's dead letter carries its trace, and the log line about it names it.
    let dead = eventually(Duration::from_secs(30), "the dead letter", || async {
        let dead = stack.read_stream(STREAM_DEAD_LETTER, 10).await.ok()?;
        dead.into_iter().next()
    })
    .await?;
    let dead_parent = TraceParent::parse(dead.header(TRACEPARENT).unwrap()).unwrap();
    assert_eq!(dead_parent.trace_id.to_string(), REFUSED_TRACE);
    let logged = eventually(Duration::from_secs(10), "the refusal logged", || async {
        let log = stack.log_of("featurize", featurize);
        log.lines()
            .find(|line| line.contains("refused input") && line.contains(REFUSED_TRACE))
            .map(str::to_string)
    })
    .await?;
    let line: serde_json::Value = serde_json::from_str(&logged)?;
    assert!(
        line.to_string()
            .contains(&format!(r#""trace_id":"{REFUSED_TRACE}""#)),
        "{line}"
    );

    // train learns the four examples into versions whose manifests name the traces they learned.
    let model = ModelName::parse("bookstore")?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let live = eventually(
        Duration::from_secs(60),
        "a live version that learned every example",
        || async { freshet_tests::live_through(&pointers, &artifacts, &model, 4).await },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.log_of("train", train)))?;
    let mut traces = Vec::new();
    let mut manifest = Some(live);
    while let Some(version) = manifest {
        traces.extend(version.traces.clone());
        manifest = match version.parent {
            Some(parent) => Some(artifacts.manifest(&model, parent).await?),
            None => None,
        };
    }
    traces.sort();
    let mut expected = vec![
        PRODUCER_TRACE.to_string(),
        fresh.trace_id.to_string(),
        ENVELOPE_TRACE.to_string(),
    ];
    expected.sort();
    assert_eq!(traces, expected, "the untraced example adds none");
    assert!(
        stack.log_of("train", train).contains(PRODUCER_TRACE),
        "the published version's log line names its traces"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_prediction_is_answered_and_recorded_in_its_trace() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let mut writer = ModelWriter::new(&stack, "bookstore").await?;
    let first = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &first.sha256).await?;
    let port = freshet_tests::stack::free_port()?;
    stack.spawn("predict", &["--http-port", &port.to_string()])?;
    stack
        .await_serving("bookstore", Duration::from_secs(20))
        .await?;

    // Over NATS: the reply carries a child of the request's trace, and its state.
    let request = bookstore_row_request();
    let (stack, request) = (&stack, &request);
    let ask = move |headers| stack.predict_with_headers("bookstore", request, headers);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(TRACEPARENT, PRODUCER);
    headers.insert(TRACESTATE, "congo=t61rcWkgMzE");
    let reply = ask(headers).await?;
    let reply_headers = reply.headers.clone().unwrap_or_default();
    let answered = TraceParent::parse(reply_headers.get(TRACEPARENT).unwrap().as_str()).unwrap();
    let producer = TraceParent::parse(PRODUCER).unwrap();
    assert_eq!(answered.trace_id, producer.trace_id);
    assert_ne!(answered.parent_id, producer.parent_id);
    assert_eq!(
        reply_headers.get(TRACESTATE).map(|v| v.as_str()),
        Some("congo=t61rcWkgMzE")
    );
    let traced: PredictResponse = serde_json::from_slice(&reply.payload)?;
    // An untraced request gets no trace headers; an invalid trace is answered in a fresh one.
    let plain = ask(async_nats::HeaderMap::new()).await?;
    assert!(
        plain
            .headers
            .as_ref()
            .is_none_or(|h| h.get(TRACEPARENT).is_none())
    );
    let mut invalid = async_nats::HeaderMap::new();
    invalid.insert(TRACEPARENT, "00-zz-01");
    let fresh = ask(invalid).await?;
    let fresh = fresh.headers.unwrap_or_default();
    let fresh = TraceParent::parse(fresh.get(TRACEPARENT).unwrap().as_str()).unwrap();
    assert_ne!(fresh.trace_id, producer.trace_id);

    // The prediction is recorded with the request's trace id.
    let id = PredictionId::parse(&traced.prediction_id).unwrap();
    let recorded = eventually(
        Duration::from_secs(20),
        "the prediction recorded",
        || async {
            let stored = stack.read_stream(STREAM_PREDICTIONS, 100).await.ok()?;
            stored.iter().find_map(|m| {
                let batch: PredictionBatch = serde_json::from_slice(&m.payload).ok()?;
                (batch.batch == id.batch).then(|| batch.entries[id.index].served.clone())
            })
        },
    )
    .await?;
    assert_eq!(recorded.prediction_id, traced.prediction_id);
    assert_eq!(recorded.trace_id, Some(producer.trace_id));

    // Over HTTP (Open Inference Protocol): the `traceparent` request header gets a child of it
    // in the response; a request without one gets none.
    let row = bookstore_row_infer();
    let response = infer(port, "bookstore", &row, Some(PRODUCER)).await?;
    assert!(response.status().is_success(), "{}", response.status());
    let answered = TraceParent::parse(response.headers()[TRACEPARENT].to_str().unwrap()).unwrap();
    assert_eq!(answered.trace_id, producer.trace_id);
    assert_ne!(answered.parent_id, producer.parent_id);
    let untraced = infer(port, "bookstore", &row, None).await?;
    assert!(untraced.status().is_success());
    assert!(!untraced.headers().contains_key(TRACEPARENT));
    // An error answer is in the trace too.
    let refused = infer(port, "bookstore", &json!({"inputs": []}), Some(PRODUCER)).await?;
    assert_eq!(refused.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(refused.headers()[TRACEPARENT].to_str().unwrap()[3..35] == *PRODUCER_TRACE);
    Ok(())
}
