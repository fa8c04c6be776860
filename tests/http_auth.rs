//! Nobody in who does not belong, over HTTP: real functions on loopback, each given bearer tokens
//! (and predict a client CA), asked by callers without a credential, with a wrong token, with a
//! token rotated out of the token file while the function runs, and with a client certificate
//! from another CA. Each is refused, and nothing is stored (featurize's push ingress puts no
//! message on EVENTS) or scored (predict records no prediction); a caller with a valid credential
//! is served. Also: `POST /events` is off unless turned on, a body over the limit is 413, a
//! caller over its rate is 429 with `Retry-After` while another is served, slow clients are cut
//! off, and `/metrics` and `freshet view` take their own credentials.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use freshet::serving::PredictionBatch;
use freshet::subjects::{STREAM_DEAD_LETTER, STREAM_EVENTS, STREAM_PREDICTIONS};
use freshet_cli::stack::free_port;
use freshet_model::store::Slot;
use freshet_tests::{
    Authority, ModelWriter, Stack, bookstore_row_infer, eventually, http_client_with_token,
    https_client, start_view_with, write_tokens,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEPT: &str = "kept-token-0123456789abcdef";
const ROTATED: &str = "rotated-token-0123456789abcdef";
const FLOODER: &str = "flooder-token-0123456789abcdef";
const WRONG: &str = "wrong-token-0123456789abcdef";
const METRICS: &str = "metrics-token-0123456789abcdef";

/// The value of `freshet_http_refused_total` for `reason` in a metrics text.
fn refused(metrics: &str, reason: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("freshet_http_refused_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of {reason} in:\n{metrics}"))
}

/// A binary-mode `new_item` CloudEvent request to `url`.
fn new_item(http: &reqwest::Client, url: &str, id: &str) -> reqwest::RequestBuilder {
    http.post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "tests/http_auth")
        .header("ce-type", "new_item")
        .header("content-type", "application/json")
        .body(json!({"item": id, "category": "fantasy", "price": 9.5}).to_string())
}

/// The ids of the events EVENTS holds.
async fn stored_ids(stack: &Stack) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = stack
        .read_stream(STREAM_EVENTS, 100)
        .await?
        .iter()
        .map(|m| m.json()["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Sends raw bytes on a new connection and returns what comes back until the server closes it
/// (or 10 s pass), and how long that took.
fn raw_exchange(port: u16, request: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_ingress_stores_only_what_its_callers_send() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let dir = stack.dir.path().to_path_buf();
    let tokens = write_tokens(&dir.join("tokens"), &[KEPT, ROTATED]);
    let metrics_tokens = write_tokens(&dir.join("metrics-tokens"), &[METRICS]);
    let port = free_port()?;
    let featurize = stack.spawn(
        "featurize",
        &[
            "--http-port",
            &port.to_string(),
            "--events",
            "on",
            "--http-tokens",
            &tokens.display().to_string(),
            "--http-tokens-reload",
            "100ms",
            "--metrics-tokens",
            &metrics_tokens.display().to_string(),
            "--http-max-body-bytes",
            "2048",
            "--http-header-timeout",
            "1s",
            "--http-body-timeout",
            "1s",
        ],
    )?;
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}/events");
    let anonymous = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    // The probes answer anyone.
    eventually(Duration::from_secs(30), "featurize's /healthz", || async {
        let response = anonymous.get(format!("{base}/healthz")).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.log_of("featurize", featurize)))?;

    // Refused: no credential, a wrong token.
    let missing = new_item(&anonymous, &url, "no-credential").send().await?;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers()["www-authenticate"],
        "Bearer realm=\"freshet\""
    );
    let wrong = http_client_with_token(WRONG);
    let refused_wrong = new_item(&wrong, &url, "wrong-token").send().await?;
    assert_eq!(refused_wrong.status(), StatusCode::UNAUTHORIZED);

    // Served: both tokens of the file.
    let kept = http_client_with_token(KEPT);
    let rotated = http_client_with_token(ROTATED);
    for (client, id) in [(&kept, "kept-1"), (&rotated, "rotated-1")] {
        let response = new_item(client, &url, id).send().await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{id}");
    }

    // Rotated out: removed from the file while featurize runs, refused within a reload. Until
    // then it resends an event already stored, which is stored once.
    write_tokens(&tokens, &[KEPT]);
    eventually(
        Duration::from_secs(10),
        "the rotated-out token refused",
        || async {
            let response = new_item(&rotated, &url, "rotated-1").send().await.ok()?;
            (response.status() == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await?;
    let after_rotation = new_item(&rotated, &url, "rotated-2").send().await?;
    assert_eq!(after_rotation.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        new_item(&kept, &url, "kept-2").send().await?.status(),
        StatusCode::ACCEPTED
    );

    // Too large: 413 with a valid token, and not stored.
    let large = kept
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "too-large")
        .header("ce-source", "tests/http_auth")
        .header("ce-type", "new_item")
        .header("content-type", "application/json")
        .body(format!("{{\"item\": \"{}\"}}", "x".repeat(4096)))
        .send()
        .await?;
    assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Slow clients: headers that never end are cut off; a body that never comes is 408.
    let (answer, took) = raw_exchange(port, b"POST /events HTTP/1.1\r\nHost: freshet\r\n");
    assert!(answer.is_empty(), "{answer}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let slow_body = format!(
        "POST /events HTTP/1.1\r\nHost: freshet\r\nAuthorization: Bearer {KEPT}\r\n\
         ce-specversion: 1.0\r\nce-id: slow-body\r\nce-source: tests\r\nce-type: new_item\r\n\
         content-type: application/json\r\nContent-Length: 100\r\n\r\n{{\"item\""
    );
    let (answer, _) = raw_exchange(port, slow_body.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Stored: exactly the events of valid callers; nothing refused reached the stream, nor the
    // dead-letter subject (a refused caller's request is not an event).
    assert_eq!(stored_ids(&stack).await?, ["kept-1", "kept-2", "rotated-1"]);
    assert_eq!(stack.stream_len(STREAM_DEAD_LETTER).await?, 0);

    // /metrics takes its own tokens: not none, not a serving token.
    let metrics_url = format!("{base}/metrics");
    assert_eq!(
        anonymous.get(&metrics_url).send().await?.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        kept.get(&metrics_url).send().await?.status(),
        StatusCode::UNAUTHORIZED
    );
    let metrics = http_client_with_token(METRICS)
        .get(&metrics_url)
        .send()
        .await?
        .text()
        .await?;
    assert!(refused(&metrics, "missing_credential") >= 2, "{metrics}");
    assert!(refused(&metrics, "wrong_credential") >= 3, "{metrics}");
    assert_eq!(refused(&metrics, "body_too_large"), 1);
    assert_eq!(refused(&metrics, "header_timeout"), 1);
    assert_eq!(refused(&metrics, "body_timeout"), 1);
    // The credentials themselves are never logged.
    let log = stack.log_of("featurize", featurize);
    for token in [KEPT, ROTATED, WRONG, METRICS] {
        assert!(!log.contains(token), "{token} in the log:\n{log}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_is_off_unless_turned_on_and_on_needs_a_credential() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let port = free_port()?;
    let featurize = stack.spawn("featurize", &["--http-port", &port.to_string()])?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("http://127.0.0.1:{port}/events");
    let off = eventually(Duration::from_secs(30), "featurize's HTTP port", || async {
        new_item(&http, &url, "pushed-while-off").send().await.ok()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.log_of("featurize", featurize)))?;
    assert_eq!(off.status(), StatusCode::NOT_FOUND);
    assert!(stored_ids(&stack).await?.is_empty());

    // On, with no token and no client CA: featurize refuses to start, and says why.
    let unguarded = stack.spawn("featurize", &["--http-port", "0", "--events", "on"])?;
    let status = eventually(Duration::from_secs(30), "featurize to exit", || {
        let status = stack.process(unguarded).try_status().ok().flatten();
        async move { status }
    })
    .await?;
    assert!(!status.success());
    assert!(
        stack
            .log_of("featurize", unguarded)
            .contains("FRESHET_HTTP_TOKENS"),
        "{}",
        stack.log_of("featurize", unguarded)
    );
    Ok(())
}

/// How many predictions PREDICTIONS holds (in batches of records).
async fn recorded(stack: &Stack) -> anyhow::Result<usize> {
    let mut predictions = 0;
    for message in stack.read_stream(STREAM_PREDICTIONS, 1000).await? {
        let batch: PredictionBatch = serde_json::from_slice(&message.payload)?;
        predictions += batch.entries.len();
    }
    Ok(predictions)
}

/// What predict's HTTP test needs: a CA and the certificates of the server, a client and a
/// stranger.
struct Certificates {
    ca: std::path::PathBuf,
    server: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
    stranger: (std::path::PathBuf, std::path::PathBuf),
}

fn certificates(dir: &Path) -> Certificates {
    let authority = Authority::new("freshet callers");
    let stranger = Authority::new("someone else");
    Certificates {
        ca: authority.write(&dir.join("ca.pem")),
        server: authority.issue(dir, "predict"),
        client: authority.issue(dir, "frontend"),
        stranger: stranger.issue(dir, "stranger"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_predictor_scores_only_for_its_callers() -> anyhow::Result<()> {
    freshet::connect::choose_tls_provider();
    let mut stack = Stack::start().await?;
    let dir = stack.dir.path().to_path_buf();
    let certs = certificates(&dir);
    let tokens = write_tokens(&dir.join("tokens"), &[KEPT, ROTATED, FLOODER]);
    let mut writer = ModelWriter::new(&stack, "bookstore").await?;
    let first = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &first.sha256).await?;
    let port = free_port()?;
    let path = |p: &Path| p.display().to_string();
    let predict = stack.spawn(
        "predict",
        &[
            "--http-port",
            &port.to_string(),
            "--http-tokens",
            &path(&tokens),
            "--http-tokens-reload",
            "100ms",
            "--http-tls-cert",
            &path(&certs.server.0),
            "--http-tls-key",
            &path(&certs.server.1),
            "--http-client-ca",
            &path(&certs.ca),
            "--http-rate",
            "20",
            "--http-max-body-bytes",
            "4096",
        ],
    )?;
    let base = format!("https://127.0.0.1:{port}");
    let infer_url = format!("{base}/v2/models/bookstore/infer");
    let body = bookstore_row_infer();
    let anonymous = https_client(&certs.ca, None, None)?;
    // The protocol's own probe answers anyone.
    eventually(
        Duration::from_secs(60),
        "predict ready over HTTPS",
        || async {
            let response = anonymous
                .get(format!("{base}/v2/health/ready"))
                .send()
                .await
                .ok()?;
            (response.status() == StatusCode::OK).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.log_of("predict", predict)))?;
    let with_token = |token: &str| https_client(&certs.ca, None, Some(token));

    // Refused: no credential; a wrong token; a certificate from another CA (the handshake fails,
    // no request is read); a CloudEvent without a credential.
    let status = |r: reqwest::Response| r.status();
    assert_eq!(
        status(anonymous.post(&infer_url).json(&body).send().await?),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(
            with_token(WRONG)?
                .post(&infer_url)
                .json(&body)
                .send()
                .await?
        ),
        StatusCode::UNAUTHORIZED
    );
    let stranger = https_client(
        &certs.ca,
        Some((&certs.stranger.0, &certs.stranger.1)),
        None,
    )?;
    assert!(
        stranger.post(&infer_url).json(&body).send().await.is_err(),
        "a certificate from another CA was let in"
    );
    let event = json!({"specversion": "1.0", "id": "p-1", "source": "tests", "type": "predict_request",
        "data": {"features": body["inputs"][0]["data"]}});
    let cloud_event = anonymous
        .post(format!("{base}/"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await?;
    assert_eq!(cloud_event.status(), StatusCode::UNAUTHORIZED);

    // Served: a token of the file, and a certificate of the CA without a token.
    let kept = with_token(KEPT)?;
    let rotated = with_token(ROTATED)?;
    let client = https_client(&certs.ca, Some((&certs.client.0, &certs.client.1)), None)?;
    for (who, http) in [
        ("kept", &kept),
        ("rotated", &rotated),
        ("certificate", &client),
    ] {
        let response = http.post(&infer_url).json(&body).send().await?;
        assert_eq!(response.status(), StatusCode::OK, "{who}");
        let answer: Value = response.json().await?;
        assert!(
            answer["outputs"][0]["data"][0].as_f64().is_some(),
            "{answer}"
        );
    }

    // Rotated out while predict runs: refused within a reload (asked for metadata meanwhile,
    // which scores nothing).
    write_tokens(&tokens, &[KEPT, FLOODER]);
    eventually(
        Duration::from_secs(10),
        "the rotated-out token refused",
        || async {
            let response = rotated
                .get(format!("{base}/v2/models/bookstore"))
                .send()
                .await
                .ok()?;
            (response.status() == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await?;
    assert_eq!(
        status(rotated.post(&infer_url).json(&body).send().await?),
        StatusCode::UNAUTHORIZED
    );
    // Too large: 413, unscored.
    let large = json!({"inputs": [{"name": "features", "shape": [1, 2000], "datatype": "FP64",
        "data": vec![0.5; 2000]}]});
    assert_eq!(
        status(kept.post(&infer_url).json(&large).send().await?),
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Scored: exactly the three served requests, recorded on PREDICTIONS.
    eventually(
        Duration::from_secs(10),
        "three recorded predictions",
        || async { (recorded(&stack).await.ok()? == 3).then_some(()) },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorded(&stack).await?, 3);

    // A flood beyond the rate (20/s) is refused with 429 and Retry-After; another caller is
    // still served.
    let flooder = with_token(FLOODER)?;
    let (mut served, mut throttled) = (0, 0);
    for _ in 0..60 {
        let response = flooder
            .get(format!("{base}/v2/models/bookstore"))
            .send()
            .await?;
        match response.status() {
            StatusCode::OK => served += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after: u64 = response.headers()["retry-after"].to_str()?.parse()?;
                assert!(retry_after >= 1);
                throttled += 1;
            }
            other => panic!("the flood got {other}"),
        }
    }
    assert!(
        served >= 20 && throttled > 0,
        "served {served}, throttled {throttled}"
    );
    assert_eq!(
        status(kept.post(&infer_url).json(&body).send().await?),
        StatusCode::OK
    );
    let metrics = anonymous
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(refused(&metrics, "rate_limited"), throttled);
    assert!(refused(&metrics, "tls_handshake") >= 1, "{metrics}");
    let log = stack.log_of("predict", predict);
    for token in [KEPT, ROTATED, WRONG, FLOODER] {
        assert!(!log.contains(token), "{token} in the log:\n{log}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_shows_its_state_only_to_its_callers() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let tokens = write_tokens(&stack.dir.path().join("view-tokens"), &[KEPT]);
    let (_view, url) = start_view_with(&stack, &["--http-tokens", &tokens.display().to_string()])?;
    let anonymous = reqwest::Client::new();
    // The page holds no data and is open; the state is not.
    let page = anonymous.get(&url).send().await?;
    assert_eq!(page.status(), StatusCode::OK);
    let state_url = format!("{url}api/state");
    assert_eq!(
        anonymous.get(&state_url).send().await?.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        http_client_with_token(WRONG)
            .get(&state_url)
            .send()
            .await?
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let state = http_client_with_token(KEPT).get(&state_url).send().await?;
    assert_eq!(state.status(), StatusCode::OK);
    let state: Value = state.json().await?;
    assert!(state["now"].as_i64().is_some(), "{state}");
    Ok(())
}
