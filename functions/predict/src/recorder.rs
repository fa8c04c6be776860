//! Records predictions on PREDICTIONS in batches, off the response path.
//!
//! A request appends its record to the open batch (a vector push under a lock held for
//! nanoseconds, never across an await) and gets back the prediction id, which says where the
//! record will be: `<batch>-<index>`. A flusher task closes the batch every few milliseconds, or
//! as soon as it is full, scores the shadow variant on the recorded rows, and publishes the
//! whole batch as one message. One stored message per few hundred predictions instead of one
//! per prediction is what keeps recording from doubling the server's work per request.
//!
//! Recording is best effort by design: a batch that cannot be published (server away) is
//! counted and dropped, because holding predictions in memory without bound would let an
//! outage take the predictor down with it; a lost record only thins the outcome join.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use freshet::ids::ModelName;
use freshet::serving::{
    PredictionBatch, PredictionId, PredictionRecord, RecordedPrediction, Variant,
};
use freshet::subjects::Subjects;
use freshet_model::store::follow::Loaded;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

/// Most predictions in one batch message (about 300 bytes each: a batch stays well under the
/// server's default 1 MiB message limit).
pub const MAX_BATCH: usize = 256;
/// Longest a prediction waits before its batch is published.
pub const MAX_WAIT: Duration = Duration::from_millis(20);
/// Closed batches waiting for the flusher; beyond this the oldest is dropped (and counted). This
/// bounds what an overloaded predictor holds for PREDICTIONS: 16 batches are 4,096 predictions,
/// 80 ms at 50,000 requests/s. At 64 the waiting predictions took the predictor's resident
/// memory under full load from 43 to 64 MiB (the predictor benchmark); a longer backlog only
/// delays the drop when PREDICTIONS cannot keep up.
const MAX_CLOSED: usize = 16;
/// Batches published and not yet stored. Waiting for PREDICTIONS to store them before
/// publishing more keeps the backlog here, where it is bounded: published without a wait, an
/// overloaded server's slow reading would let batches pile up in the client's outgoing queue,
/// which is bounded in messages, not bytes (the predictor's memory under full load went from
/// 41 to 67 MiB when its throughput rose by a fifth).
const MAX_UNSTORED: usize = 4;

/// A batch on its way to PREDICTIONS: its predictions and the acknowledgement to wait for.
type Publishing = (u64, jetstream::context::PublishAckFuture);

/// A served prediction waiting in a batch, with the version that should shadow it.
struct Pending {
    served: PredictionRecord,
    shadow: Option<(Variant, Arc<Loaded>)>,
}

struct OpenBatch {
    id: String,
    entries: Vec<Pending>,
}

impl OpenBatch {
    fn new() -> OpenBatch {
        OpenBatch {
            id: uuid::Uuid::new_v4().simple().to_string(),
            entries: Vec::with_capacity(16),
        }
    }
}

#[derive(Default)]
struct Batches {
    open: Option<OpenBatch>,
    closed: VecDeque<OpenBatch>,
}

/// Recorder metrics.
#[derive(Clone, Default)]
pub struct RecorderMetrics {
    pub recorded: Counter,
    pub dropped: Counter,
    pub shadow_scores: Counter,
}

impl RecorderMetrics {
    pub fn register(&self, metrics: &freshet::metrics::Metrics) {
        metrics.register(
            "predictions_recorded",
            "Predictions published to PREDICTIONS (in batches)",
            self.recorded.clone(),
        );
        metrics.register(
            "predictions_unrecorded",
            "Predictions not recorded because PREDICTIONS could not take them",
            self.dropped.clone(),
        );
        metrics.register(
            "shadow_scores",
            "Requests also scored by the other variant, off the response path",
            self.shadow_scores.clone(),
        );
    }
}

/// The shared handle requests append to; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    batches: Arc<Mutex<Batches>>,
    wake: Arc<Notify>,
    pub metrics: RecorderMetrics,
}

impl Recorder {
    pub fn new(metrics: RecorderMetrics) -> Recorder {
        Recorder {
            batches: Arc::default(),
            wake: Arc::default(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Batches> {
        // A panic while holding this lock could only come from a Vec push; the batches are
        // still consistent, so a poisoned lock is used as is.
        self.batches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a served prediction (its `prediction_id` is set here) and returns that id.
    pub fn append(
        &self,
        mut served: PredictionRecord,
        shadow: Option<(Variant, Arc<Loaded>)>,
    ) -> String {
        let mut batches = self.lock();
        let open = batches.open.get_or_insert_with(OpenBatch::new);
        let id = PredictionId {
            batch: open.id.clone(),
            index: open.entries.len(),
        }
        .to_string();
        served.prediction_id.clone_from(&id);
        open.entries.push(Pending { served, shadow });
        if open.entries.len() >= MAX_BATCH {
            let full = batches.open.take().expect("the open batch was just filled");
            batches.closed.push_back(full);
            if batches.closed.len() > MAX_CLOSED
                && let Some(lost) = batches.closed.pop_front()
            {
                self.metrics.dropped.inc_by(lost.entries.len() as u64);
            }
            drop(batches);
            self.wake.notify_one();
        }
        id
    }

    /// Everything recorded so far, the open batch included.
    fn take(&self) -> Vec<OpenBatch> {
        let mut batches = self.lock();
        let mut out: Vec<OpenBatch> = batches.closed.drain(..).collect();
        out.extend(batches.open.take());
        out
    }

    /// Publishes batches until `shutdown` fires, then publishes what is left and waits for
    /// PREDICTIONS to store it.
    pub async fn flush_until(
        self,
        js: jetstream::Context,
        subjects: Subjects,
        model: ModelName,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut unstored = VecDeque::new();
        loop {
            let stop = tokio::select! {
                () = &mut shutdown => true,
                () = self.wake.notified() => false,
                () = tokio::time::sleep(MAX_WAIT) => false,
            };
            for batch in self.take() {
                if unstored.len() >= MAX_UNSTORED
                    && let Some(oldest) = unstored.pop_front()
                {
                    self.settle(oldest).await;
                }
                if let Some(publishing) = self.publish(&js, &subjects, &model, batch).await {
                    unstored.push_back(publishing);
                }
            }
            if stop {
                for publishing in unstored {
                    self.settle(publishing).await;
                }
                return;
            }
        }
    }

    /// Counts a published batch as recorded once PREDICTIONS has stored it, as lost otherwise.
    async fn settle(&self, (count, ack): Publishing) {
        match ack.await {
            Ok(_) => {
                self.metrics.recorded.inc_by(count);
            }
            Err(err) => {
                self.metrics.dropped.inc_by(count);
                tracing::debug!(error = %err, "PREDICTIONS did not store recorded predictions");
            }
        }
    }

    /// Encodes `batch` (scoring its shadows) and publishes it; returns its size and the
    /// acknowledgement to wait for, or `None` if it was lost (and counted).
    async fn publish(
        &self,
        js: &jetstream::Context,
        subjects: &Subjects,
        model: &ModelName,
        batch: OpenBatch,
    ) -> Option<Publishing> {
        let count = batch.entries.len() as u64;
        let subject = subjects.prediction_batch(model, &batch.id);
        let (model, recorder) = (model.to_string(), self.clone());
        // Shadow scoring and encoding run on a blocking-pool thread: the OS time-slices it with
        // the serving loop instead of it holding an async worker for the whole batch.
        let encoded = tokio::task::spawn_blocking(move || {
            let message = PredictionBatch {
                model,
                batch: batch.id,
                entries: batch
                    .entries
                    .into_iter()
                    .map(|pending| recorder.with_shadow(pending))
                    .collect(),
            };
            serde_json::to_vec(&message)
                .expect("a prediction batch is plain data and always serialises")
        })
        .await;
        let Ok(bytes) = encoded else {
            self.metrics.dropped.inc_by(count);
            return None;
        };
        match js.publish(subject, Bytes::from(bytes)).await {
            Ok(ack) => Some((count, ack)),
            Err(err) => {
                self.metrics.dropped.inc_by(count);
                tracing::debug!(error = %err, "cannot record predictions");
                None
            }
        }
    }

    /// Scores the shadow variant on the row the served variant saw.
    fn with_shadow(&self, pending: Pending) -> RecordedPrediction {
        let Pending { served, shadow } = pending;
        let shadow = shadow.and_then(|(variant, model)| {
            let score = model.scorer.score(&served.features).ok()?;
            self.metrics.shadow_scores.inc();
            Some(PredictionRecord {
                version: model.manifest.version,
                variant,
                served: false,
                score,
                ..served.clone()
            })
        });
        RecordedPrediction { served, shadow }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet::serving::Variant;

    fn record(score: f32) -> PredictionRecord {
        PredictionRecord {
            prediction_id: String::new(),
            model: "m".into(),
            version: 1,
            variant: Variant::Live,
            served: true,
            score,
            features: vec![score],
            user: None,
            item: None,
            at: chrono::Utc::now(),
            trace_id: None,
        }
    }

    #[test]
    fn ids_name_the_batch_and_the_position_of_each_record() {
        let recorder = Recorder::new(RecorderMetrics::default());
        let ids: Vec<PredictionId> = (0..MAX_BATCH + 3)
            .map(|i| PredictionId::parse(&recorder.append(record(i as f32), None)).unwrap())
            .collect();
        let batches = recorder.take();
        assert_eq!(batches.len(), 2, "a full batch closes and a new one opens");
        assert_eq!(batches[0].entries.len(), MAX_BATCH);
        assert_eq!(batches[1].entries.len(), 3);
        for (i, id) in ids.iter().enumerate() {
            let batch = batches.iter().find(|b| b.id == id.batch).unwrap();
            let entry = &batch.entries[id.index];
            assert_eq!(entry.served.score, i as f32);
            assert_eq!(entry.served.prediction_id, id.to_string());
        }
        assert!(
            recorder.take().is_empty(),
            "taken batches are not taken twice"
        );
    }

    #[test]
    fn an_unflushed_backlog_is_bounded_and_counted() {
        let recorder = Recorder::new(RecorderMetrics::default());
        for i in 0..MAX_BATCH * (MAX_CLOSED + 2) {
            recorder.append(record(i as f32), None);
        }
        let kept: usize = recorder.take().iter().map(|b| b.entries.len()).sum();
        assert_eq!(kept, MAX_BATCH * MAX_CLOSED);
        assert_eq!(recorder.metrics.dropped.get(), 2 * MAX_BATCH as u64);
    }
}
