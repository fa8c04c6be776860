//! The predictor over HTTP: once a trained version is live, the Open Inference Protocol (KServe
//! v2) endpoints and CloudEvents by POST answer with that version, and refuse bad input with a
//! clear status and `{"error": ...}` body. Real nats-server, real binaries, real HTTP.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet_features::bookstore::FEATURE_NAMES;
use freshet_tests::{Stack, bookstore_events, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Features per row: the bookstore schema's.
const N: usize = FEATURE_NAMES.len();

/// A response's status and JSON body (`Null` when the body is not JSON).
async fn parts(response: reqwest::Response) -> (StatusCode, Option<String>, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.bytes().await.unwrap();
    (
        status,
        content_type,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn assert_score(score: &Value) {
    let score = score.as_f64().unwrap();
    assert!(score > 0.0 && score < 1.0, "score {score} is not in (0, 1)");
}

/// Asserts an error answer: the status and a non-empty `error` message.
fn assert_error(got: &(StatusCode, Option<String>, Value), status: StatusCode, what: &str) {
    assert_eq!(got.0, status, "{what}: {:?}", got.2);
    let message = got.2["error"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty(),
        "{what}: no error message in {:?}",
        got.2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_predictor_speaks_open_inference_and_cloud_events() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // Every action labelled at once: train sees both labels from the first events.
    stack.spawn("featurize", &["--label-horizon", "0s"])?;
    stack.spawn(
        "train",
        &[
            "--publish-every-batches",
            "2",
            "--publish-interval",
            "200ms",
        ],
    )?;
    let port = freshet_tests::stack::free_port()?;
    let predict = stack.spawn("predict", &["--http-port", &port.to_string()])?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    for event in &bookstore_events(20, 300, "h") {
        stack.publish_event(event).await?;
    }

    // The predictor answers "ready" for the model once a version serves.
    let ready = eventually(
        Duration::from_secs(90),
        "the predictor to serve a version over HTTP",
        || async {
            let response = http
                .get(format!("{base}/v2/models/bookstore/ready"))
                .send()
                .await
                .ok()?;
            let (status, _, body) = parts(response).await;
            (status == StatusCode::OK).then_some(body)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\npredict log:\n{}", stack.log_of("predict", predict)))?;
    assert_eq!(ready["ready"], true);

    // Server health.
    let live = parts(http.get(format!("{base}/v2/health/live")).send().await?).await;
    assert_eq!((live.0, &live.2), (StatusCode::OK, &json!({"live": true})));
    let server_ready = eventually(Duration::from_secs(30), "/v2/health/ready", || async {
        let got = parts(
            http.get(format!("{base}/v2/health/ready"))
                .send()
                .await
                .ok()?,
        )
        .await;
        (got.0 == StatusCode::OK).then_some(got.2)
    })
    .await?;
    assert_eq!(server_ready, json!({"ready": true}));
    let readyz = http.get(format!("{base}/readyz")).send().await?;
    assert_eq!(readyz.status(), StatusCode::OK);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(metrics.contains("freshet_swaps_total"), "{metrics}");

    // Model metadata: the live version and the schema's features.
    let (status, _, metadata) = parts(
        http.get(format!("{base}/v2/models/bookstore"))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{metadata}");
    assert_eq!(metadata["name"], "bookstore");
    assert_eq!(metadata["platform"], "freshet-burn");
    let version: u64 = metadata["versions"][0].as_str().unwrap().parse()?;
    assert!(version >= 1);
    assert_eq!(metadata["inputs"][0]["name"], "features");
    assert_eq!(metadata["inputs"][0]["shape"], json!([-1, N]));
    assert_eq!(
        metadata["inputs"][1],
        json!({"name": "user_item", "datatype": "BYTES", "shape": [-1, 2]}),
        "the (user, item) input is declared beside the feature rows"
    );
    assert_eq!(metadata["outputs"][0]["name"], "score");
    assert_eq!(
        metadata["parameters"]["feature_names"],
        json!(FEATURE_NAMES)
    );
    let (status, _, unknown) =
        parts(http.get(format!("{base}/v2/models/nope")).send().await?).await;
    assert_error(
        &(status, None, unknown),
        StatusCode::NOT_FOUND,
        "metadata of an unknown model",
    );

    // Inference, with rows flat or nested, answered by the live version (at least the one the
    // metadata named: train keeps publishing while the test runs).
    let infer_url = format!("{base}/v2/models/bookstore/infer");
    let rows = [
        [
            0.3, 0.1, 0.7, 0.2, 0.1, 2.0, 0.25, 0.12, 3.0, 0.08, 1.5, 1.2, 0.3,
        ],
        [0.0; N],
    ];
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    let mut http_prediction_ids = Vec::new();
    for data in [json!(flat), json!(rows)] {
        let request = json!({"id": "req-1", "inputs": [{"name": "features", "shape": [2, N], "datatype": "FP32", "data": data}]});
        let (status, _, body) = parts(http.post(&infer_url).json(&request).send().await?).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["model_name"], "bookstore");
        assert_eq!(body["id"], "req-1");
        let served: u64 = body["model_version"].as_str().unwrap().parse()?;
        assert!(
            served >= version,
            "served {served}, metadata said {version}"
        );
        let output = &body["outputs"][0];
        assert_eq!(output["name"], "score");
        assert_eq!(output["datatype"], "FP32");
        assert_eq!(output["shape"], json!([2, 1]));
        let scores = output["data"].as_array().unwrap();
        assert_eq!(scores.len(), 2);
        scores.iter().for_each(assert_score);
        let ids = body["parameters"]["prediction_ids"].as_array().unwrap();
        assert_eq!(ids.len(), 2, "one recorded prediction id per row: {body}");
        http_prediction_ids.extend(ids.iter().map(|id| id.as_str().unwrap().to_string()));
    }

    // An outcome for a prediction served over HTTP joins to it like one served over NATS.
    let outcome = freshet_tests::cloud_event(
        "o-http",
        "outcome",
        json!({"prediction_id": http_prediction_ids[0], "label": 1}),
    );
    stack.publish_event(&outcome).await?;
    let joined = eventually(
        Duration::from_secs(30),
        "the HTTP outcome joined",
        || async {
            let events = stack
                .read_stream(freshet::subjects::STREAM_CONTROL, 10_000)
                .await
                .ok()?;
            events.iter().map(|e| e.json()).find(|j| {
                j["kind"] == "outcome" && j["prediction_id"] == http_prediction_ids[0].as_str()
            })
        },
    )
    .await?;
    assert_eq!(
        joined["served"]["correct"],
        joined["served"]["score"].as_f64().unwrap() > 0.5,
        "{joined}"
    );

    // The freshet extension: (user, item) pairs, featurized from FEATURES at request time.
    let pairs = json!({"inputs": [{"name": "user_item", "shape": [2, 2], "datatype": "BYTES",
        "data": ["u1", "b7", "u2", "b3"]}]});
    let (status, _, body) = parts(http.post(&infer_url).json(&pairs).send().await?).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([2, 1]));
    body["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .for_each(assert_score);

    // A named version infers only when it is the live one.
    let (status, _, body) = parts(
        http.post(format!("{base}/v2/models/bookstore/versions/999999/infer"))
            .json(&json!({"inputs": [{"name": "features", "shape": [1, N], "datatype": "FP32", "data": vec![0.0; N]}]}))
            .send()
            .await?,
    )
    .await;
    assert_error(
        &(status, None, body),
        StatusCode::NOT_FOUND,
        "a version not serving",
    );

    // Bad input: a clear 400 (or 404 for an unknown model) with an error message.
    let one_row = |data: Value, shape: Value| json!({"inputs": [{"name": "features", "shape": shape, "datatype": "FP32", "data": data}]});
    let mut out_of_range = vec![0.0; N];
    out_of_range[3] = 1e300;
    let bad: Vec<(&str, String, String, StatusCode)> = vec![
        (
            "one feature too few",
            infer_url.clone(),
            one_row(json!(vec![0.0; N - 1]), json!([1, N - 1])).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "shape and data disagree",
            infer_url.clone(),
            one_row(json!(vec![0.0; N]), json!([2, N])).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a value out of range",
            infer_url.clone(),
            one_row(json!(out_of_range), json!([1, N])).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "malformed JSON",
            infer_url.clone(),
            "{\"inputs\": [".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an unknown model",
            format!("{base}/v2/models/nope/infer"),
            one_row(json!(vec![0.0; N]), json!([1, N])).to_string(),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (what, url, body, status) in bad {
        let got = parts(
            http.post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?,
        )
        .await;
        assert_error(&got, status, what);
    }

    // A binary tensor request as tritonclient sends it by default: a JSON header whose length
    // is in Inference-Header-Content-Length, then the tensor's raw little-endian bytes.
    let header = json!({"inputs": [{"name": "features", "shape": [1, N], "datatype": "FP32",
        "parameters": {"binary_data_size": N * 4}}], "parameters": {"binary_data_output": true}})
    .to_string();
    let mut binary = header.clone().into_bytes();
    binary.extend(std::iter::repeat_n(0.5f32.to_le_bytes(), N).flatten());
    let got = parts(
        http.post(&infer_url)
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", header.len())
            .body(binary)
            .send()
            .await?,
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "a binary tensor request");
    let message = got.2["error"].as_str().unwrap();
    assert!(
        message.contains("binary tensor data") && message.contains("binary_data=False"),
        "says what is not supported and what to send instead: {message}"
    );
    // The same header without its binary part still names the extension, not a missing field.
    let got = parts(
        http.post(&infer_url)
            .header("content-type", "application/json")
            .body(header)
            .send()
            .await?,
    )
    .await;
    let message = got.2["error"].as_str().unwrap_or_default();
    assert!(message.contains("binary tensor data"), "{message}");

    // A body beyond the limit is refused before it is buffered. The server then closes that
    // connection rather than read the rest, so this request gets a client of its own: a pooled
    // connection it closed would fail the next request.
    let huge = vec![b' '; 5 * 1024 * 1024];
    let once = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()?;
    let got = parts(once.post(&infer_url).body(huge).send().await?).await;
    assert_eq!(got.0, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", got.2);

    // CloudEvents: structured mode.
    let request_event = json!({"specversion": "1.0", "id": "ce-1", "source": "tests",
        "type": "predict_request", "data": {"user": "u1", "item": "b2"}});
    let (status, content_type, event) = parts(
        http.post(format!("{base}/"))
            .header("content-type", "application/cloudevents+json")
            .body(request_event.to_string())
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/cloudevents+json")
    );
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "prediction");
    assert_eq!(event["source"], "freshet-predict/bookstore");
    assert!(!event["id"].as_str().unwrap().is_empty());
    assert!(event["data"]["version"].as_u64().unwrap() >= version);
    assert_score(&event["data"]["score"]);

    // Binary mode: attributes in headers, the body is the data.
    let (status, _, event) = parts(
        http.post(format!("{base}/"))
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", "ce-2")
            .header("ce-source", "tests")
            .header("ce-type", "predict_request")
            .body(json!({"features": vec![0.5; N]}).to_string())
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["type"], "prediction");
    assert!(event["data"]["version"].as_u64().unwrap() >= version);
    assert_score(&event["data"]["score"]);

    // Events featurize ingests, unknown types and malformed envelopes are refused.
    for (what, event) in [
        (
            "an ingest event",
            json!({"specversion": "1.0", "id": "ce-3", "source": "tests", "type": "user_action",
                "data": {"user": "u1", "item": "b2", "action": "view"}}),
        ),
        (
            "an unknown type",
            json!({"specversion": "1.0", "id": "ce-4", "source": "tests", "type": "click", "data": {}}),
        ),
        (
            "no id",
            json!({"specversion": "1.0", "source": "tests", "type": "predict_request", "data": {}}),
        ),
    ] {
        let got = parts(
            http.post(format!("{base}/"))
                .header("content-type", "application/cloudevents+json")
                .body(event.to_string())
                .send()
                .await?,
        )
        .await;
        assert_error(&got, StatusCode::BAD_REQUEST, what);
    }
    Ok(())
}
