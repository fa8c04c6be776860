//! `/metrics` as Prometheus reads it: the body is parsed by Prometheus' own Python client parsers
//! (`prometheus_client`, the OpenMetrics parser for what is served as OpenMetrics, the classic
//! text parser for what is served as `text/plain; version=0.0.4`), with the `Accept` headers
//! Prometheus 2 and 3 send and with none. Every family keeps its type in both; counters carry no
//! version label; predict's metrics carry the model, its request latency is a histogram, and
//! `model_info` names the version serving. Real nats-server, real binaries, real HTTP.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet_tests::{Stack, bookstore_events, bookstore_row_infer, eventually, infer};
use serde_json::Value;

/// What Prometheus 3 asks for by default (its `scrape_protocols`).
const PROMETHEUS_3: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
    application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,\
    text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
/// What Prometheus sends when told to scrape the classic text format only.
const CLASSIC_ONLY: &str = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

const OPEN_METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Parses an exposition with `prometheus_client`: the OpenMetrics parser (strict: it refuses a
/// body without `# EOF`, a counter sample not named `_total`, and more) or the classic text
/// parser. Prints the families as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as open_metrics
from prometheus_client.parser import text_string_to_metric_families as classic
text = sys.stdin.read()
parse = open_metrics if sys.argv[1] == "openmetrics" else classic
print(json.dumps([
    {"name": f.name, "type": f.type,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in parse(text)
]))
"#;

/// The families `prometheus_client` reads in `text`, by its parser for `format`.
fn parse(text: &str, format: &str) -> anyhow::Result<Vec<Value>> {
    use std::io::Write;
    let mut child = std::process::Command::new(freshet_tests::tools_python()?)
        .args(["-c", PARSE, format])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "prometheus_client's {format} parser refused the body: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice::<Vec<Value>>(&output.stdout)?)
}

/// `/metrics` on loopback `port` asked with `accept` (none when `None`): its content type and body.
async fn scrape(port: u16, accept: Option<&str>) -> anyhow::Result<(String, String)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut request = http.get(format!("http://127.0.0.1:{port}/metrics"));
    if let Some(accept) = accept {
        request = request.header(reqwest::header::ACCEPT, accept);
    }
    let response = request.send().await?;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok((content_type, response.text().await?))
}

fn family<'a>(families: &'a [Value], name: &str) -> &'a Value {
    families
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name} in {families:#?}"))
}

/// What every parse of every function's `/metrics` must show.
fn assert_typed_and_bounded(families: &[Value], function: &str, format: &str) {
    for f in families {
        let kind = f["type"].as_str().unwrap();
        assert!(
            !matches!(kind, "unknown" | "untyped"),
            "{function} ({format}): {} parsed as {kind}",
            f["name"]
        );
        if f["name"] != "freshet_model_info" {
            for sample in f["samples"].as_array().unwrap() {
                assert!(
                    sample["labels"].get("version").is_none(),
                    "{function} ({format}): a version label on {sample}"
                );
            }
        }
    }
    assert_eq!(
        family(families, "freshet_messages_in")["type"],
        "counter",
        "{function} ({format})"
    );
    assert_eq!(
        family(families, "freshet_batch_seconds")["type"],
        "histogram",
        "{function} ({format})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_parses_every_function_s_metrics_with_their_types() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let ports = [
        freshet_tests::stack::free_port()?,
        freshet_tests::stack::free_port()?,
        freshet_tests::stack::free_port()?,
    ];
    let featurize = stack.spawn(
        "featurize",
        &[
            "--label-horizon",
            "0s",
            "--http-port",
            &ports[0].to_string(),
        ],
    )?;
    stack.spawn(
        "train",
        &[
            "--publish-every-batches",
            "2",
            "--publish-interval",
            "200ms",
            "--http-port",
            &ports[1].to_string(),
        ],
    )?;
    let predict = stack.spawn("predict", &["--http-port", &ports[2].to_string()])?;
    for event in &bookstore_events(20, 300, "m") {
        stack.publish_event(event).await?;
    }
    // A few answered requests, so the latency histogram has samples.
    let answered = eventually(Duration::from_secs(90), "predict to answer", || async {
        let response = infer(ports[2], "bookstore", &bookstore_row_infer(), None)
            .await
            .ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    answered.map_err(|e| anyhow::anyhow!("{e}\n{}", stack.log_of("predict", predict)))?;
    for _ in 0..5 {
        infer(ports[2], "bookstore", &bookstore_row_infer(), None).await?;
    }
    let _ = featurize;

    for (function, port) in ["featurize", "train", "predict"].into_iter().zip(ports) {
        for accept in [Some(PROMETHEUS_3), Some("application/openmetrics-text")] {
            let (content_type, body) = scrape(port, accept).await?;
            assert_eq!(content_type, OPEN_METRICS, "{function} asked {accept:?}");
            assert!(body.ends_with("# EOF\n"), "{function}: {body}");
            assert_typed_and_bounded(&parse(&body, "openmetrics")?, function, "OpenMetrics");
        }
        for accept in [Some(CLASSIC_ONLY), None] {
            let (content_type, body) = scrape(port, accept).await?;
            assert_eq!(content_type, CLASSIC, "{function} asked {accept:?}");
            assert!(!body.contains("# EOF"), "{function}: {body}");
            assert_typed_and_bounded(&parse(&body, "classic")?, function, "classic");
        }
    }

    // predict's own metrics name the model; the latency of the requests above is a histogram;
    // model_info names the live version, once.
    for (format, accept) in [("openmetrics", Some(PROMETHEUS_3)), ("classic", None)] {
        let families = parse(&scrape(ports[2], accept).await?.1, format)?;
        let latency = family(&families, "freshet_request_seconds");
        assert_eq!(latency["type"], "histogram", "{format}");
        let count = latency["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["name"] == "freshet_request_seconds_count"
                    && s["labels"]["model"] == "bookstore"
                    && s["labels"]["transport"] == "http"
                    && s["labels"]["endpoint"] == "infer"
                    && s["labels"]["outcome"] == "answered"
            })
            .unwrap_or_else(|| panic!("no answered infer requests counted: {latency:#}"));
        assert!(count["value"].as_f64().unwrap() >= 6.0, "{count}");
        let info = family(&families, "freshet_model_info")["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["labels"]["slot"] == "live")
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(info.len(), 1, "{format}: {info:?}");
        assert_eq!(info[0]["labels"]["model"], "bookstore");
        assert_eq!(info[0]["value"], 1.0);
        let live: u64 = info[0]["labels"]["version"].as_str().unwrap().parse()?;
        assert!(live >= 1);
        assert_eq!(
            family(&families, "freshet_swaps")["samples"][0]["labels"]["model"],
            "bookstore"
        );
    }
    Ok(())
}
