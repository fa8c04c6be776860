//! OpenTelemetry span export, against a real nats-server, the real binaries and an OTLP/HTTP
//! receiver this test runs on loopback (the collector's side of the protocol: POST /v1/traces
//! with an `ExportTraceServiceRequest` in JSON, decoded here from the specification, not with
//! freshet's own types). An event published with a sampled `traceparent` yields one trace:
//! featurize's span a child of the producer's, train's a child of featurize's (the span the
//! example's `traceparent` names), and a prediction request's span a child of the request's.
//! An unsampled trace yields no span.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use freshet::subjects::STREAM_EXAMPLES;
use freshet::trace::{TRACEPARENT, TraceParent};
use freshet_tests::{
    Stack, bookstore_events, bookstore_row_infer, bookstore_row_request, cloud_event, eventually,
    infer, view_action,
};
use serde_json::{Value, json};

/// The producer's span, sampled.
const PRODUCER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";
/// A producer's span whose trace is not sampled (flags 00).
const UNSAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
/// A producer's span carried only in the event's envelope (the CloudEvents tracing extension).
const ENVELOPED: &str = "00-77777777777777777777777777777777-8888888888888888-01";
const ENVELOPED_TRACE: &str = "77777777777777777777777777777777";
/// A prediction request's span, sampled, over NATS and over HTTP.
const REQUEST: &str = "00-11111111111111111111111111111111-2222222222222222-01";
const REQUEST_TRACE: &str = "11111111111111111111111111111111";
const HTTP_REQUEST: &str = "00-33333333333333333333333333333333-4444444444444444-01";
const HTTP_REQUEST_TRACE: &str = "33333333333333333333333333333333";
/// A refused event pushed over HTTP, sampled.
const PUSHED: &str = "00-55555555555555555555555555555555-6666666666666666-01";
const PUSHED_TRACE: &str = "55555555555555555555555555555555";

/// One span as a collector received it, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Value,
}

impl Received {
    fn id(&self, field: &str) -> &str {
        self.span[field].as_str().unwrap_or_default()
    }

    /// The value of attribute `key`, whatever its type (`intValue` is a decimal string).
    fn attribute(&self, key: &str) -> Option<Value> {
        self.span["attributes"]
            .as_array()?
            .iter()
            .find(|kv| kv["key"] == key)
            .and_then(|kv| kv["value"].as_object()?.values().next().cloned())
    }
}

/// An OTLP/HTTP receiver on a free loopback port: its base URL and what it received.
async fn collector() -> anyhow::Result<(String, Arc<Mutex<Vec<Received>>>)> {
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let kept = kept.clone();
            async move {
                if headers
                    .get("content-type")
                    .is_none_or(|v| v != "application/json")
                {
                    return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}");
                }
                let Ok(request) = serde_json::from_slice::<Value>(&body) else {
                    return (StatusCode::BAD_REQUEST, "{}");
                };
                kept.lock().unwrap().extend(decode(&request));
                (StatusCode::OK, "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, received))
}

/// The spans of an `ExportTraceServiceRequest`, each with its resource's service name.
fn decode(request: &Value) -> Vec<Received> {
    let mut spans = Vec::new();
    for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource_spans["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|kv| kv["key"] == "service.name")
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string();
        for scope in resource_spans["scopeSpans"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for span in scope["spans"].as_array().into_iter().flatten() {
                spans.push(Received {
                    service: service.clone(),
                    span: span.clone(),
                });
            }
        }
    }
    spans
}

/// The first span received from `service` in `trace`.
fn span_of(received: &Mutex<Vec<Received>>, service: &str, trace: &str) -> Option<Received> {
    received
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.service == service && r.id("traceId") == trace)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_trace_is_exported_from_producer_to_prediction() -> anyhow::Result<()> {
    let (endpoint, received) = collector().await?;
    let mut stack = Stack::start().await?;
    stack.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    stack.set_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let featurize_port = freshet_tests::stack::free_port()?;
    let featurize = stack.spawn(
        "featurize",
        &[
            "--label-horizon",
            "0s",
            "--http-port",
            &featurize_port.to_string(),
            // A push with no credential, as in local development.
            "--events",
            "insecure-anonymous",
        ],
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
    stack.set_env("OTEL_SERVICE_NAME", "bookshop-predict");
    let predict_port = freshet_tests::stack::free_port()?;
    let predict = stack.spawn("predict", &["--http-port", &predict_port.to_string()])?;
    // The first span from `service` in `trace`, waited for (with the functions' logs if none).
    let span_from = |service: &'static str, trace: &'static str| {
        let (received, stack) = (&received, &stack);
        async move {
            let what = format!("a span of {service} in trace {trace}");
            eventually(Duration::from_secs(60), &what, || async {
                span_of(received, service, trace)
            })
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}\nfeaturize:\n{}\ntrain:\n{}\npredict:\n{}",
                    stack.log_of("featurize", featurize),
                    stack.log_of("train", train),
                    stack.log_of("predict", predict)
                )
            })
        }
    };

    for item in bookstore_events(2, 0, "otel") {
        stack.publish_event(&item).await?;
    }
    for (id, user, item, traceparent) in [
        ("unsampled", "u2", "b1", UNSAMPLED),
        ("sampled", "u1", "b0", PRODUCER),
    ] {
        let event = view_action(id, user, item);
        stack
            .publish_event_with(&event, &[(TRACEPARENT, traceparent)])
            .await?;
    }
    let mut enveloped = view_action("enveloped", "u3", "b1");
    enveloped[TRACEPARENT] = json!(ENVELOPED);
    stack.publish_event(&enveloped).await?;

    // featurize's span: a child of the producer's, and the parent its example names.
    let featurized = span_from("freshet-featurize", PRODUCER_TRACE).await?;
    assert_eq!(featurized.span["name"], "featurize process");
    assert_eq!(featurized.span["kind"], 5, "CONSUMER");
    assert_eq!(featurized.id("parentSpanId"), PRODUCER_SPAN);
    assert_eq!(
        featurized.attribute("messaging.system"),
        Some(json!("nats"))
    );
    // Held until the states it changed are written; the span ends when it is acknowledged.
    assert_eq!(
        featurized.attribute("freshet.disposition"),
        Some(json!("hold"))
    );
    assert!(
        featurized
            .attribute("messaging.destination.name")
            .is_some_and(|s| s.as_str().unwrap_or_default().contains("user_action"))
    );
    let examples = eventually(Duration::from_secs(30), "three examples", || async {
        let examples = stack.read_stream(STREAM_EXAMPLES, 10).await.ok()?;
        (examples.len() == 3).then_some(examples)
    })
    .await?;
    let example = examples
        .iter()
        .find(|m| m.json()["source_event"] == "sampled")
        .unwrap();
    let sent = TraceParent::parse(example.header(TRACEPARENT).unwrap()).unwrap();
    assert_eq!(featurized.id("spanId"), sent.parent_id.to_string());

    // An event traced by its envelope only is featurize's span too, a child of the envelope's.
    let from_envelope = span_from("freshet-featurize", ENVELOPED_TRACE).await?;
    assert_eq!(from_envelope.span["name"], "featurize process");
    assert_eq!(from_envelope.id("parentSpanId"), &ENVELOPED[36..52]);
    let example = examples
        .iter()
        .find(|m| m.json()["source_event"] == "enveloped")
        .unwrap();
    let sent = TraceParent::parse(example.header(TRACEPARENT).unwrap()).unwrap();
    assert_eq!(from_envelope.id("spanId"), sent.parent_id.to_string());

    // train's span: a child of featurize's, ended once the version holding it is live.
    let trained = span_from("freshet-train", PRODUCER_TRACE).await?;
    assert_eq!(trained.span["name"], "train process");
    assert_eq!(trained.id("parentSpanId"), featurized.id("spanId"));
    assert_eq!(
        trained.attribute("freshet.disposition"),
        Some(json!("hold"))
    );
    assert!(trained.attribute("freshet.stream_sequence").is_some());

    // A prediction request over NATS: the predictor's span is a child of the request's.
    stack
        .await_serving("bookstore", Duration::from_secs(30))
        .await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(TRACEPARENT, REQUEST);
    let reply = stack
        .predict_with_headers("bookstore", &bookstore_row_request(), headers)
        .await?;
    let answered: freshet::serving::PredictResponse = serde_json::from_slice(&reply.payload)?;
    let reply_parent = TraceParent::parse(
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(TRACEPARENT))
            .unwrap()
            .as_str(),
    )
    .unwrap();
    // And over HTTP (Open Inference Protocol).
    let response = infer(
        predict_port,
        "bookstore",
        &bookstore_row_infer(),
        Some(HTTP_REQUEST),
    )
    .await?;
    assert!(response.status().is_success(), "{}", response.status());

    let predicted = span_from("bookshop-predict", REQUEST_TRACE).await?;
    assert_eq!(predicted.span["name"], "predict single");
    assert_eq!(predicted.span["kind"], 2, "SERVER");
    assert_eq!(predicted.id("parentSpanId"), &REQUEST[36..52]);
    assert_eq!(predicted.id("spanId"), reply_parent.parent_id.to_string());
    assert_eq!(
        predicted.attribute("freshet.model"),
        Some(json!("bookstore"))
    );
    assert_eq!(
        predicted.attribute("freshet.model.version"),
        Some(json!(answered.version.to_string()))
    );
    assert!(predicted.span.get("status").is_none(), "{}", predicted.span);
    let inferred = span_from("bookshop-predict", HTTP_REQUEST_TRACE).await?;
    assert_eq!(inferred.span["name"], "predict infer");
    assert_eq!(inferred.id("parentSpanId"), &HTTP_REQUEST[36..52]);
    assert_eq!(
        inferred.attribute("http.response.status_code"),
        Some(json!("200"))
    );

    // A refused push to featurize's /events is answered in a span, failed with the reason.
    let refused = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{featurize_port}/events"))
        .header(TRACEPARENT, PUSHED)
        .header("content-type", "application/cloudevents+json")
        .json(&cloud_event("pushed", "user_action", json!({"user": "u9"})))
        .send()
        .await?;
    assert_eq!(refused.status(), reqwest::StatusCode::BAD_REQUEST);
    let pushed = span_from("freshet-featurize", PUSHED_TRACE).await?;
    assert_eq!(pushed.span["name"], "POST /events");
    assert_eq!(pushed.id("parentSpanId"), &PUSHED[36..52]);
    assert_eq!(pushed.span["status"]["code"], 2, "ERROR");

    // The resource names each process; the unsampled trace was never exported, though its
    // event was handled before the sampled one's spans arrived.
    let all = received.lock().unwrap().clone();
    let resource_ok = all.iter().all(|r| !r.service.is_empty());
    assert!(resource_ok, "every span has a service.name");
    assert!(
        all.iter().all(|r| r.id("traceId") != UNSAMPLED_TRACE),
        "an unsampled trace is not exported"
    );
    let unsampled = examples
        .iter()
        .find(|m| m.json()["source_event"] == "unsampled")
        .unwrap();
    assert_eq!(
        TraceParent::parse(unsampled.header(TRACEPARENT).unwrap())
            .unwrap()
            .trace_id
            .to_string(),
        UNSAMPLED_TRACE,
        "the unsampled trace still travels"
    );
    Ok(())
}
