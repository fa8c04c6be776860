//! Prometheus metrics every function exports on `/metrics`, plus a registry functions add to.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::RejectReason;

/// Label set naming a dead-letter reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The metrics of the consumer loop, shared by every function.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub messages_in: Counter,
    pub messages_acked: Counter,
    pub retries: Counter,
    pub dead_letter: Family<ReasonLabel, Counter>,
    pub batch_seconds: Histogram,
    pub ready: Gauge,
}

impl Metrics {
    /// Creates the registry with the common metrics, prefixed `freshet_` and labelled with the
    /// function's name.
    pub fn new(function: &str) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "freshet",
            [("function".into(), function.to_string().into())].into_iter(),
        );
        let metrics = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            messages_in: Counter::default(),
            messages_acked: Counter::default(),
            retries: Counter::default(),
            dead_letter: Family::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            ready: Gauge::default(),
        };
        registry.register(
            "messages_in",
            "Messages received from JetStream",
            metrics.messages_in.clone(),
        );
        registry.register(
            "messages_acked",
            "Messages acknowledged after their effects were durable",
            metrics.messages_acked.clone(),
        );
        registry.register(
            "retries",
            "Messages negatively acknowledged for redelivery after a transient failure",
            metrics.retries.clone(),
        );
        registry.register(
            "dead_letter",
            "Messages refused and sent to the dead-letter subject, by reason",
            metrics.dead_letter.clone(),
        );
        registry.register(
            "batch_seconds",
            "Time to handle one batch, from receipt to acknowledgement",
            metrics.batch_seconds.clone(),
        );
        registry.register(
            "ready",
            "1 when the function is ready to serve",
            metrics.ready.clone(),
        );
        for reason in RejectReason::ALL {
            // Pre-register every reason so dashboards show zeros rather than gaps.
            let _ = metrics.dead_letter.get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            });
        }
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            ..metrics
        }
    }

    /// Registers a function's own metric beside the common ones.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .expect("the metrics registry lock is never held across a panic")
            .register(name, help, metric);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .expect("the metrics registry lock is never held across a panic");
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %err, "cannot encode metrics");
        }
        out
    }

    pub fn count_rejection(&self, reason: &str) {
        self.dead_letter
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}
