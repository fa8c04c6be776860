//! The outcome join: `outcome` events (the true label of an earlier prediction, by its id) are
//! matched to the prediction recorded on PREDICTIONS, so live accuracy is measured per variant (`model_info`
//! names the version of each), and each joined outcome is published on `<prefix>.control.<model>.outcome` for the
//! promotion gate. Runs as a durable consumer (`outcomes-<model>`) shared by all replicas, so each
//! outcome is joined once.

use async_nats::jetstream::{self, message::PublishMessage, stream::LastRawMessageErrorKind};
use bytes::Bytes;
use freshet::error::Failure;
use freshet::events::{self, EventData};
use freshet::ids::ModelName;
use freshet::runtime::{Disposition, Incoming, Processor};
use freshet::serving::{PredictionBatch, PredictionId, RecordedPrediction};
use freshet::subjects::Subjects;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::json;

/// Labels of the live-accuracy counters: the variant (live or candidate) that scored. Not the
/// version, which would start new series with every version trained (one a second under load):
/// `model_info` says which version each variant is.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub variant: String,
}

/// Live accuracy per variant: `outcomes_correct / outcomes`.
#[derive(Clone, Default)]
pub struct OutcomeMetrics {
    pub outcomes: Family<OutcomeLabel, Counter>,
    pub correct: Family<OutcomeLabel, Counter>,
    pub unmatched: Counter,
}

impl OutcomeMetrics {
    pub fn register(&self, metrics: &freshet::metrics::Metrics) {
        metrics.register(
            "outcomes",
            "Outcomes joined to the prediction they label, by the variant that scored",
            self.outcomes.clone(),
        );
        metrics.register(
            "outcomes_correct",
            "Joined outcomes the prediction got right (score > 0.5 for label 1)",
            self.correct.clone(),
        );
        metrics.register(
            "outcomes_unmatched",
            "Outcomes whose prediction is not on PREDICTIONS (another model, or expired)",
            self.unmatched.clone(),
        );
    }
}

/// Whether a score called the label right.
pub fn is_correct(score: f32, label: f64) -> bool {
    freshet_model::predicts_positive(score) == (label >= 0.5)
}

pub struct OutcomeJoiner {
    pub model: ModelName,
    pub js: jetstream::Context,
    pub predictions: jetstream::stream::Stream,
    pub subjects: Subjects,
    pub max_event_bytes: usize,
    pub metrics: OutcomeMetrics,
}

impl OutcomeJoiner {
    /// The recorded prediction an id names, if its batch is on PREDICTIONS.
    async fn recorded(&self, prediction_id: &str) -> Result<Option<RecordedPrediction>, Failure> {
        let Some(id) = PredictionId::parse(prediction_id) else {
            return Ok(None);
        };
        let subject = self.subjects.prediction_batch(&self.model, &id.batch);
        match self
            .predictions
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => Ok(serde_json::from_slice::<PredictionBatch>(&message.payload)
                .ok()
                .and_then(|mut batch| {
                    (id.index < batch.entries.len()).then(|| batch.entries.swap_remove(id.index))
                })),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(Failure::new(format!("read {subject}"), err)),
        }
    }

    async fn join(&self, message: &Incoming) -> Result<(), Failure> {
        // Invalid events are dead-lettered by featurize, which reads the same stream; here they
        // are simply not outcomes.
        let Ok(event) = events::decode(&message.payload, self.max_event_bytes) else {
            return Ok(());
        };
        let EventData::Outcome(outcome) = &event.data else {
            return Ok(());
        };
        let id = outcome.prediction_id.as_str();
        let Some(RecordedPrediction { served, shadow }) = self.recorded(id).await? else {
            self.metrics.unmatched.inc();
            return Ok(());
        };
        let mut joined = json!({"kind": "outcome", "model": self.model, "prediction_id": id, "label": outcome.label});
        for record in std::iter::once(&served).chain(shadow.as_ref()) {
            let correct = is_correct(record.score, outcome.label);
            let label = OutcomeLabel {
                variant: record.variant.as_str().to_string(),
            };
            self.metrics.outcomes.get_or_create(&label).inc();
            if correct {
                self.metrics.correct.get_or_create(&label).inc();
            }
            let role = if record.served { "served" } else { "shadow" };
            joined[role] = json!({"version": record.version, "variant": record.variant, "score": record.score, "correct": correct});
        }
        let publish = PublishMessage::build()
            .payload(Bytes::from(joined.to_string()))
            .message_id(format!("outcome-{}-{id}", self.model));
        self.js
            .send_publish(self.subjects.control(&self.model, "outcome"), publish)
            .await
            .map_err(|e| Failure::new("publish joined outcome", e))?
            .await
            .map_err(|e| Failure::new("publish joined outcome", e))?;
        Ok(())
    }
}

impl Processor for OutcomeJoiner {
    async fn process(&mut self, batch: &mut [Incoming]) -> Vec<Disposition> {
        let mut out = Vec::with_capacity(batch.len());
        for message in batch {
            out.push(match self.join(message).await {
                Ok(()) => Disposition::Ack,
                Err(failure) => Disposition::Retry(failure),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correctness_thresholds_at_one_half() {
        assert!(is_correct(0.7, 1.0) && is_correct(0.2, 0.0) && is_correct(0.5, 0.0));
        assert!(!is_correct(0.5, 1.0) && !is_correct(0.49, 1.0) && !is_correct(0.9, 0.0));
    }
}
