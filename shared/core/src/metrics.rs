//! Prometheus metrics every function exports on `/metrics`, plus a registry functions add to.
//!
//! Label values are bounded: a reason, a consumer, a slot, a variant, and the `model` of
//! [`Metrics::for_model`] (one per model a process serves). A model *version* is never a label of
//! a counter or histogram, where each new version would start series that never end: it is the
//! value of a gauge (`live_version`) or of the info metric [`ModelInfo`], whose series for a slot
//! is replaced when the slot moves.

pub mod exposition;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

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

/// Label set naming the durable consumer a consumer loop works (a process works one or two).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabel {
    pub stream: String,
    pub consumer: String,
}

impl ConsumerLabel {
    fn new(stream: &str, consumer: &str) -> ConsumerLabel {
        ConsumerLabel {
            stream: stream.to_string(),
            consumer: consumer.to_string(),
        }
    }
}

/// A histogram family of the delays from storage to acknowledgement, 1 ms to about 9 minutes.
pub type DelayHistograms = Family<ConsumerLabel, Histogram, fn() -> Histogram>;

fn ack_delay_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// The metrics of the consumer loop, shared by every function.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// The `model` label this handle adds to what is registered through it ([`Metrics::for_model`]).
    model: Option<Arc<str>>,
    pub messages_in: Counter,
    pub messages_acked: Counter,
    pub retries: Counter,
    pub dead_letter: Family<ReasonLabel, Counter>,
    pub batch_seconds: Histogram,
    pub ready: Gauge,
    /// Messages of the stream not yet delivered to the consumer, as of its latest delivery: the
    /// backlog (JetStream's `num_pending`; KEDA's lag adds the delivered but unacknowledged).
    pub consumer_pending: Family<ConsumerLabel, Gauge>,
    /// From when JetStream stored a message to its acknowledgement, once everything it caused
    /// was durable: how fresh the consumer's output is (for train, until the version that learned
    /// it was live).
    pub ack_delay: DelayHistograms,
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
            model: None,
            messages_in: Counter::default(),
            messages_acked: Counter::default(),
            retries: Counter::default(),
            dead_letter: Family::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            ready: Gauge::default(),
            consumer_pending: Family::default(),
            ack_delay: Family::new_with_constructor(ack_delay_histogram),
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
        registry.register(
            "consumer_pending",
            "Messages in the stream not yet delivered to the consumer, as of its latest delivery",
            metrics.consumer_pending.clone(),
        );
        registry.register(
            "ack_delay_seconds",
            "From when JetStream stored a message to its acknowledgement (its effects durable)",
            metrics.ack_delay.clone(),
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

    /// A handle on the same registry that labels what is registered through it with
    /// `model="<model>"`: for the metrics of a function that serves or trains one model.
    pub fn for_model(&self, model: &str) -> Metrics {
        Metrics {
            model: Some(Arc::from(model)),
            ..self.clone()
        }
    }

    /// Registers a function's own metric beside the common ones (with the `model` label of a
    /// handle from [`Metrics::for_model`]).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        let mut registry = self
            .registry
            .lock()
            .expect("the metrics registry lock is never held across a panic");
        match &self.model {
            Some(model) => registry
                .sub_registry_with_label(("model".into(), model.to_string().into()))
                .register(name, help, metric),
            None => registry.register(name, help, metric),
        }
    }

    /// The OpenMetrics text exposition of every metric.
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

    /// Every metric in `format` (see [`exposition`]).
    pub fn encode_as(&self, format: exposition::Format) -> String {
        match format {
            exposition::Format::OpenMetrics => self.encode(),
            exposition::Format::Classic => exposition::to_classic(&self.encode()),
        }
    }

    /// Records the backlog a delivery of `stream`'s `consumer` reported.
    pub fn observe_pending(&self, stream: &str, consumer: &str, pending: u64) {
        self.consumer_pending
            .get_or_create(&ConsumerLabel::new(stream, consumer))
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// Records the acknowledgement, now, of a message JetStream stored at `stored`. A clock
    /// behind the server's counts as no delay rather than a negative one.
    pub fn observe_ack(&self, stream: &str, consumer: &str, stored: DateTime<Utc>) {
        let delay = (Utc::now() - stored).to_std().unwrap_or_default();
        self.ack_delay
            .get_or_create(&ConsumerLabel::new(stream, consumer))
            .observe(delay.as_secs_f64());
    }

    pub fn count_rejection(&self, reason: &str) {
        self.dead_letter
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Label set of [`ModelInfo`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotVersionLabel {
    pub slot: String,
    pub version: String,
}

/// `model_info{slot, version} 1`: the version each slot of a model holds now. Moving a slot
/// replaces its series, so the metric has one series per slot however many versions come and go.
#[derive(Clone, Default)]
pub struct ModelInfo {
    family: Family<SlotVersionLabel, Gauge>,
    /// The version each slot's series names now.
    current: Arc<Mutex<BTreeMap<String, String>>>,
}

impl ModelInfo {
    /// Registers `model_info` (through a [`Metrics::for_model`] handle, so it carries `model`).
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(
            "model_info",
            "1 for the version each slot (live, candidate) of the model holds now",
            self.family.clone(),
        );
    }

    /// `slot` now holds `version`.
    pub fn set(&self, slot: &str, version: u64) {
        let version = version.to_string();
        let mut current = self
            .current
            .lock()
            .expect("the model info lock is never held across a panic");
        if current.get(slot) == Some(&version) {
            return;
        }
        if let Some(previous) = current.insert(slot.to_string(), version.clone()) {
            self.family.remove(&SlotVersionLabel {
                slot: slot.to_string(),
                version: previous,
            });
        }
        self.family
            .get_or_create(&SlotVersionLabel {
                slot: slot.to_string(),
                version,
            })
            .set(1);
    }

    /// `slot` holds no version (a withdrawn candidate).
    pub fn clear(&self, slot: &str) {
        let mut current = self
            .current
            .lock()
            .expect("the model info lock is never held across a panic");
        if let Some(previous) = current.remove(slot) {
            self.family.remove(&SlotVersionLabel {
                slot: slot.to_string(),
                version: previous,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(text: &str, name: &str) -> Vec<String> {
        text.lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_model_handle_labels_what_it_registers_and_only_that() {
        let metrics = Metrics::new("predict");
        let swaps: Counter = Counter::default();
        metrics
            .for_model("bookstore")
            .register("swaps", "Swaps", swaps.clone());
        swaps.inc();
        let text = metrics.encode();
        assert_eq!(
            series(&text, "freshet_swaps_total"),
            ["freshet_swaps_total{function=\"predict\",model=\"bookstore\"} 1"]
        );
        assert_eq!(
            series(&text, "freshet_ready"),
            ["freshet_ready{function=\"predict\"} 0"]
        );
    }

    #[test]
    fn backlog_and_acknowledgement_delay_are_per_consumer() {
        let metrics = Metrics::new("train");
        metrics.observe_pending("EXAMPLES", "train-bookstore", 42);
        metrics.observe_ack(
            "EXAMPLES",
            "train-bookstore",
            Utc::now() - chrono::Duration::seconds(3),
        );
        // A server clock ahead of this one is no delay, not a negative one.
        metrics.observe_ack(
            "EXAMPLES",
            "train-bookstore",
            Utc::now() + chrono::Duration::seconds(3),
        );
        let text = metrics.encode();
        assert_eq!(
            series(&text, "freshet_consumer_pending"),
            [
                "freshet_consumer_pending{function=\"train\",stream=\"EXAMPLES\",consumer=\"train-bookstore\"} 42"
            ]
        );
        let label = "function=\"train\",stream=\"EXAMPLES\",consumer=\"train-bookstore\"";
        assert!(
            text.contains(&format!("freshet_ack_delay_seconds_count{{{label}}} 2")),
            "{text}"
        );
        // One delay of about 3 s, one of 0: both under the 4.096 s bucket, one under 1 ms.
        let bucket = |le: &str| {
            series(&text, "freshet_ack_delay_seconds_bucket")
                .into_iter()
                .find(|line| line.contains(&format!("le=\"{le}\"")))
                .and_then(|line| line.rsplit(' ').next().map(str::to_string))
        };
        assert_eq!(bucket("0.001").as_deref(), Some("1"), "{text}");
        assert_eq!(bucket("4.096").as_deref(), Some("2"), "{text}");
    }

    #[test]
    fn model_info_keeps_one_series_per_slot_however_many_versions_pass() {
        let metrics = Metrics::new("predict");
        let info = ModelInfo::default();
        info.register(&metrics.for_model("bookstore"));
        for version in 1..=50 {
            info.set("live", version);
        }
        info.set("candidate", 7);
        let mut info_series = series(&metrics.encode(), "freshet_model_info");
        info_series.sort();
        assert_eq!(
            info_series,
            [
                "freshet_model_info{function=\"predict\",model=\"bookstore\",slot=\"candidate\",version=\"7\"} 1",
                "freshet_model_info{function=\"predict\",model=\"bookstore\",slot=\"live\",version=\"50\"} 1",
            ]
        );
        info.clear("candidate");
        assert_eq!(series(&metrics.encode(), "freshet_model_info").len(), 1);
    }
}
