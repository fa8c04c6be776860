//! Optional export of the spans freshet acts as to an OpenTelemetry collector (OTLP over HTTP,
//! JSON encoding), so a producer's trace shows featurize, train, drift and predict in it.
//!
//! [`crate::trace`] carries the W3C context; this module records and sends spans with exactly its
//! ids. Its parts:
//!
//! - [`config`]: the standard `OTEL_*` settings, checked at start-up.
//! - [`span`]: a finished span as plain data.
//! - [`otlp`]: spans as an OTLP/HTTP JSON `ExportTraceServiceRequest`.
//! - [`exporter`]: the background task that batches spans and POSTs them.
//!
//! The message path only ever touches [`Spans`]: with export off it is `None` inside, and every
//! call returns at once (no clock read, no allocation). With export on, only a message of a
//! sampled trace (W3C flag `01`, the producer's decision) gets a span; finishing it is a
//! `try_send` on a bounded channel, and a span that finds the channel full is dropped and
//! counted, never waited for.
//!
//! ## Why not the OpenTelemetry SDK
//!
//! This exporter is about 1,400 lines. The `opentelemetry` 0.33 crates with OTLP/HTTP JSON
//! (`opentelemetry`, `opentelemetry_sdk`, `opentelemetry-otlp`) would replace the encoding and the
//! batching, and were measured against it (a probe crate, `cargo build --timings`, debug, on this
//! project's machines): 11 crates this workspace does not build today and about 55 s of compile
//! (of which `opentelemetry_sdk` 19 s). The cost that decided it is behaviour, not build time: the
//! SDK's stable batch processor runs its own OS thread with a blocking HTTP client (a second
//! `reqwest` runtime beside tokio's) and panics when that thread cannot be spawned; its tokio
//! variant is behind an `experimental_` feature. freshet needs three things the SDK makes
//! indirect: a span whose trace and parent ids are exactly the W3C context that came with a NATS
//! message (here a plain struct, there a remote parent `Context`), nothing on the message path but
//! a `try_send` when on and nothing at all when off, and the export's health on `/metrics`
//! ([`ExportMetrics`]). `tests/otel_export.rs` decodes what is sent with its own reading of the
//! OTLP specification, so interoperability is tested against the protocol, not against this code.
//! Revisit when the SDK's async batch processor is stable.

pub mod config;
pub mod exporter;
pub mod otlp;
pub mod span;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

pub use config::{ConfigError, ExportConfig, OtlpArgs};
pub use exporter::ExportMetrics;
pub use span::{Span, SpanKind, Status, Value};

use crate::trace::TraceContext;

/// What the exporter task is sent.
enum Command {
    Span(Span),
    /// Export everything sent before, then answer.
    Flush(oneshot::Sender<()>),
}

struct Queue {
    sender: mpsc::Sender<Command>,
    metrics: ExportMetrics,
}

/// Where finished spans go: the exporter's queue, or nowhere when export is off. Cheap to clone.
#[derive(Clone, Default)]
pub struct Spans {
    queue: Option<Arc<Queue>>,
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_on() {
            "Spans(on)"
        } else {
            "Spans(off)"
        })
    }
}

impl Spans {
    /// No export: every span is skipped at once.
    pub fn off() -> Spans {
        Spans::default()
    }

    /// Starts `function`'s exporter task when `args` name an endpoint (export off otherwise),
    /// registering its metrics in `metrics`. Must be called within a Tokio runtime.
    pub fn start(
        args: &OtlpArgs,
        function: &str,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Spans, ConfigError> {
        let Some(config) = args.resolve(function)? else {
            return Ok(Spans::off());
        };
        let client = exporter::client().map_err(ConfigError::HttpClient)?;
        let export_metrics = ExportMetrics::default();
        export_metrics.register(metrics);
        tracing::info!(endpoint = %config.endpoint, service = %config.service_name, "exporting spans of sampled traces over OTLP/HTTP");
        let (spans, receiver) = Spans::queue(config.max_queue_size, export_metrics.clone());
        tokio::spawn(exporter::run(config, client, receiver, export_metrics));
        Ok(spans)
    }

    /// A handle on a queue of `capacity` spans, and its receiving end.
    fn queue(capacity: usize, metrics: ExportMetrics) -> (Spans, mpsc::Receiver<Command>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let queue = Queue { sender, metrics };
        (
            Spans {
                queue: Some(Arc::new(queue)),
            },
            receiver,
        )
    }

    /// Whether spans are exported at all.
    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// A span for the work `trace` stands for, started now; `None` (at no cost) when export is
    /// off, the work is untraced, or its trace is not sampled.
    pub fn start_span(
        &self,
        trace: Option<&TraceContext>,
        name: &str,
        kind: SpanKind,
    ) -> Option<Span> {
        self.queue.as_ref()?;
        self.start_span_at(trace, name, kind, SystemTime::now())
    }

    /// Like [`start_span`](Self::start_span), for work that started at `start`.
    pub fn start_span_at(
        &self,
        trace: Option<&TraceContext>,
        name: &str,
        kind: SpanKind,
        start: SystemTime,
    ) -> Option<Span> {
        self.queue.as_ref()?;
        let trace = trace.filter(|t| t.sampled())?;
        Some(Span::new(trace, name, kind, start))
    }

    /// Ends `span` now and queues it for export; a full queue drops it (counted). Never waits.
    pub fn end(&self, span: Option<Span>) {
        let (Some(queue), Some(mut span)) = (&self.queue, span) else {
            return;
        };
        span.end = SystemTime::now().max(span.start);
        match queue.sender.try_send(Command::Span(span)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => queue.metrics.dropped("queue_full", 1),
            Err(mpsc::error::TrySendError::Closed(_)) => queue.metrics.dropped("stopped", 1),
        }
    }

    /// Exports what is queued, waiting at most `timeout` (for shutdown: call last).
    pub async fn flush(&self, timeout: Duration) {
        let Some(queue) = &self.queue else {
            return;
        };
        let (done, flushed) = oneshot::channel();
        let flush = async {
            if queue.sender.send(Command::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        };
        if tokio::time::timeout(timeout, flush).await.is_err() {
            tracing::warn!(
                ?timeout,
                "spans still queued at shutdown were not all exported"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    fn handling(traceparent: &str) -> TraceContext {
        TraceContext::handling(Some(traceparent), None).unwrap()
    }

    #[test]
    fn off_records_nothing() {
        let spans = Spans::off();
        assert!(!spans.is_on());
        assert_eq!(
            spans.start_span(Some(&handling(SAMPLED)), "x", SpanKind::Server),
            None
        );
        spans.end(None);
    }

    #[test]
    fn only_sampled_traces_are_queued_with_freshets_ids() {
        let (spans, mut receiver) = Spans::queue(8, ExportMetrics::default());
        let unsampled = handling(UNSAMPLED);
        assert_eq!(
            spans.start_span(Some(&unsampled), "train process", SpanKind::Consumer),
            None
        );
        assert_eq!(
            spans.start_span(None, "train process", SpanKind::Consumer),
            None
        );
        let fresh = TraceContext::handling(Some("00-garbage-01"), None).unwrap();
        assert_eq!(
            spans.start_span(Some(&fresh), "train process", SpanKind::Consumer),
            None,
            "a fresh root trace is not sampled"
        );
        let sampled = handling(SAMPLED);
        let span = spans.start_span(Some(&sampled), "train process", SpanKind::Consumer);
        spans.end(span);
        let Ok(Command::Span(span)) = receiver.try_recv() else {
            panic!("the sampled span was not queued");
        };
        assert!(receiver.try_recv().is_err(), "only the sampled span");
        assert_eq!(span.trace_id, sampled.trace_id());
        assert_eq!(span.span_id, sampled.span_id());
        assert_eq!(span.parent_span_id, sampled.parent_span_id());
        assert!(span.end >= span.start);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let metrics = ExportMetrics::default();
        let (spans, mut receiver) = Spans::queue(2, metrics.clone());
        let trace = handling(SAMPLED);
        // No runtime here: anything that waited would hang the test.
        for _ in 0..5 {
            spans.end(spans.start_span(Some(&trace), "drift process", SpanKind::Consumer));
        }
        assert_eq!(metrics.dropped_count("queue_full"), 3);
        let mut queued = 0;
        while receiver.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 2);
        drop(receiver);
        spans.end(spans.start_span(Some(&trace), "drift process", SpanKind::Consumer));
        assert_eq!(metrics.dropped_count("stopped"), 1);
    }
}
