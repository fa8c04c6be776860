//! The background task that sends spans: it gathers them from the queue into batches (up to
//! the batch size, or whatever waited the schedule delay) and POSTs each as OTLP/HTTP JSON.
//!
//! An export that fails with 429, 502, 503 or 504, or that did not reach the receiver, is tried
//! once more after a pause (the receiver's `Retry-After`, at most 5 s, else 1 s); any other
//! failure drops the batch. Spans dropped are counted by reason, and failures are logged at
//! warn at most once per 30 s, so a collector that is away neither floods the logs nor holds
//! up the functions: they never wait for this task.

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::Command;
use super::config::ExportConfig;
use super::otlp::{self, Resource};
use super::span::{Span, Value};
use crate::metrics::ReasonLabel;

/// Longest one export request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before the one retry of an export, when the receiver names none.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause a receiver's `Retry-After` is followed for.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// At most one warning about failed exports per this long.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// Why spans are dropped, registered up front so dashboards show zeros.
const DROP_REASONS: [&str; 4] = ["queue_full", "export_failed", "rejected", "stopped"];

/// The exporter's metrics, beside the function's.
#[derive(Clone, Default)]
pub struct ExportMetrics {
    pub exported: Counter,
    pub dropped: Family<ReasonLabel, Counter>,
}

impl ExportMetrics {
    pub fn register(&self, metrics: &crate::metrics::Metrics) {
        metrics.register(
            "spans_exported",
            "Spans the OpenTelemetry collector accepted",
            self.exported.clone(),
        );
        metrics.register(
            "spans_dropped",
            "Spans not exported, by reason: queue_full (the exporter fell behind), \
             export_failed, rejected (by the collector), stopped",
            self.dropped.clone(),
        );
        for reason in DROP_REASONS {
            self.dropped_counter(reason);
        }
    }

    fn dropped_counter(&self, reason: &str) -> Counter {
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .clone()
    }

    pub fn dropped(&self, reason: &str, spans: u64) {
        self.dropped_counter(reason).inc_by(spans);
    }

    /// Spans dropped for `reason` so far.
    pub fn dropped_count(&self, reason: &str) -> u64 {
        self.dropped_counter(reason).get()
    }
}

/// Why one export did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the collector answered {status}: {body}")]
    Refused {
        status: StatusCode,
        body: String,
        /// The pause it asked for before a retry.
        retry_after: Option<Duration>,
    },
    #[error("cannot reach the collector: {0}")]
    Unreachable(#[from] reqwest::Error),
}

impl ExportError {
    /// Whether the OTLP specification allows trying the same export again.
    fn retryable(&self) -> bool {
        match self {
            ExportError::Refused { status, .. } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            ExportError::Unreachable(err) => !err.is_builder(),
        }
    }

    fn retry_pause(&self) -> Duration {
        match self {
            ExportError::Refused {
                retry_after: Some(pause),
                ..
            } => (*pause).min(MAX_RETRY_PAUSE),
            _ => RETRY_PAUSE,
        }
    }
}

/// POSTs batches to one collector.
struct Sender {
    client: reqwest::Client,
    config: ExportConfig,
    resource: Resource,
    metrics: ExportMetrics,
    last_warning: Option<Instant>,
    /// Failures since the last warning.
    unreported: u64,
}

/// The resource attributes of this process: the service, an instance id unique to this
/// process, the SDK (freshet itself), and the configured extra ones.
fn resource(config: &ExportConfig) -> Resource {
    let mut attributes = vec![
        (
            "service.name".to_string(),
            Value::from(config.service_name.as_str()),
        ),
        (
            "service.instance.id".to_string(),
            Value::from(uuid::Uuid::new_v4().to_string()),
        ),
        (
            "service.version".to_string(),
            Value::from(env!("CARGO_PKG_VERSION")),
        ),
        ("telemetry.sdk.name".to_string(), Value::from("freshet")),
        ("telemetry.sdk.language".to_string(), Value::from("rust")),
        (
            "telemetry.sdk.version".to_string(),
            Value::from(env!("CARGO_PKG_VERSION")),
        ),
    ];
    attributes.extend(config.resource_attributes.iter().cloned());
    Resource { attributes }
}

impl Sender {
    /// Sends `batch` (emptying it), with one retry when that may help.
    async fn export(&mut self, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let spans = batch.len() as u64;
        let body = otlp::encode(&self.resource, batch);
        batch.clear();
        let mut outcome = self.post(body.clone()).await;
        if let Err(err) = &outcome
            && err.retryable()
        {
            tokio::time::sleep(err.retry_pause()).await;
            outcome = self.post(body).await;
        }
        match outcome {
            Ok(None) => {
                self.metrics.exported.inc_by(spans);
            }
            Ok(Some((rejected, message))) => {
                let rejected = rejected.min(spans);
                self.metrics.exported.inc_by(spans - rejected);
                self.metrics.dropped("rejected", rejected);
                self.warn(&format!(
                    "the collector rejected {rejected} of {spans} spans: {message}"
                ));
            }
            Err(err) => {
                self.metrics.dropped("export_failed", spans);
                self.warn(&err.to_string());
            }
        }
    }

    /// One POST; the spans the collector says it rejected, if any.
    async fn post(&self, body: Vec<u8>) -> Result<Option<(u64, String)>, ExportError> {
        let response = self
            .client
            .post(self.config.endpoint.clone())
            .headers(self.config.headers.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await?;
        if status.is_success() {
            return Ok(otlp::rejected(&body));
        }
        Err(ExportError::Refused {
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            retry_after,
        })
    }

    /// Logs a failure, at most once per [`WARN_EVERY`]; the ones in between are counted in it.
    fn warn(&mut self, what: &str) {
        self.unreported += 1;
        if self
            .last_warning
            .is_some_and(|last| last.elapsed() < WARN_EVERY)
        {
            return;
        }
        tracing::warn!(endpoint = %self.config.endpoint, failures = self.unreported, error = what, "span export failed; spans dropped");
        self.last_warning = Some(Instant::now());
        self.unreported = 0;
    }
}

/// The HTTP client exports go through.
pub(super) fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()
}

/// Runs until every [`super::Spans`] handle is gone: gathers spans from `queue` and exports
/// them in batches of at most the batch size, at least every schedule delay; answers a flush
/// once everything sent before it was exported (or dropped).
pub(super) async fn run(
    config: ExportConfig,
    client: reqwest::Client,
    mut queue: tokio::sync::mpsc::Receiver<Command>,
    metrics: ExportMetrics,
) {
    let max_batch = config.max_export_batch_size;
    let mut tick = tokio::time::interval(config.schedule_delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sender = Sender {
        client,
        resource: resource(&config),
        config,
        metrics,
        last_warning: None,
        unreported: 0,
    };
    let mut batch: Vec<Span> = Vec::with_capacity(max_batch);
    loop {
        tokio::select! {
            command = queue.recv() => match command {
                Some(Command::Span(span)) => {
                    batch.push(span);
                    if batch.len() >= max_batch {
                        sender.export(&mut batch).await;
                    }
                }
                Some(Command::Flush(done)) => {
                    sender.export(&mut batch).await;
                    let _ = done.send(());
                }
                None => {
                    sender.export(&mut batch).await;
                    return;
                }
            },
            _ = tick.tick() => sender.export(&mut batch).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode};

    use super::*;
    use crate::telemetry::{OtlpArgs, SpanKind, Spans};
    use crate::trace::TraceContext;

    /// What a test collector was sent: each request's headers and JSON body.
    type Received = Arc<Mutex<Vec<(HeaderMap, serde_json::Value)>>>;

    /// A collector on a free loopback port answering the statuses of `answers` in turn (200
    /// once they run out); the URL of its base endpoint.
    async fn collector(answers: Vec<StatusCode>) -> (String, Received) {
        let received: Received = Arc::default();
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let seen = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: bytes::Bytes| {
                let (seen, answers) = (seen.clone(), answers.clone());
                async move {
                    let json = serde_json::from_slice(&body).unwrap_or_default();
                    seen.lock().unwrap().push((headers, json));
                    let status = answers.lock().unwrap().next().unwrap_or(StatusCode::OK);
                    (status, [("retry-after", "0")], "{}")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, received)
    }

    /// Exports one span of a sampled trace to a collector answering `answers`, flushing;
    /// what the collector received and the function's metrics.
    async fn export_one(
        answers: Vec<StatusCode>,
    ) -> (Vec<(HeaderMap, serde_json::Value)>, crate::metrics::Metrics) {
        let (url, received) = collector(answers).await;
        let metrics = crate::metrics::Metrics::new("test");
        let args = OtlpArgs {
            endpoint: Some(url),
            headers: Some("authorization=Bearer%20t0ken".to_string()),
            schedule_delay_ms: 60_000,
            max_export_batch_size: 512,
            max_queue_size: 64,
            ..OtlpArgs::default()
        };
        let spans = Spans::start(&args, "test", &metrics).unwrap();
        let trace = TraceContext::handling(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None,
        );
        spans.end(spans.start_span(trace.as_ref(), "test process", SpanKind::Consumer));
        spans.flush(Duration::from_secs(5)).await;
        let received = received.lock().unwrap().clone();
        (received, metrics)
    }

    fn counted(metrics: &crate::metrics::Metrics, line: &str) -> bool {
        metrics.encode().lines().any(|l| l == line)
    }

    #[tokio::test]
    async fn a_flush_posts_json_with_the_headers_and_retries_once_when_asked() {
        let (received, metrics) = export_one(vec![StatusCode::SERVICE_UNAVAILABLE]).await;
        assert_eq!(received.len(), 2, "one 503, one retry");
        let (headers, body) = &received[1];
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["authorization"], "Bearer t0ken");
        let resource = &body["resourceSpans"][0]["resource"]["attributes"];
        assert!(
            resource
                .as_array()
                .unwrap()
                .iter()
                .any(|kv| kv["key"] == "service.name"
                    && kv["value"]["stringValue"] == "freshet-test"),
            "{resource}"
        );
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
        assert!(counted(
            &metrics,
            "freshet_spans_exported_total{function=\"test\"} 1"
        ));
    }

    #[tokio::test]
    async fn a_refused_export_is_dropped_and_counted_without_a_retry() {
        let (received, metrics) = export_one(vec![StatusCode::BAD_REQUEST]).await;
        assert_eq!(received.len(), 1);
        assert!(counted(
            &metrics,
            "freshet_spans_dropped_total{function=\"test\",reason=\"export_failed\"} 1"
        ));
        assert!(counted(
            &metrics,
            "freshet_spans_exported_total{function=\"test\"} 0"
        ));
    }
}
