//! train's runtime adapter: learns each batch in memory, holds the messages, and on the
//! publishing cadence writes the new version to object storage and moves `<model>.live` by
//! compare-and-set. Only then are the held messages acknowledged, so a crash at any instant
//! loses nothing and learns nothing twice: the restarted trainer resumes from the live version,
//! whose high-water mark says which examples it already holds.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use bytes::Bytes;
use chrono::Utc;
use freshet::control::{KIND_QUARANTINE, Reaction};
use freshet::error::{Failure, RejectReason, Rejection};
use freshet::examples::{ExampleRecord, FeatureSchema};
use freshet::ids::ModelName;
use freshet::runtime::order::{OrderGuard, chain_link, follows_directly};
use freshet::runtime::{Commit, Disposition, Incoming, Processor};
use freshet::subjects::Subjects;
use freshet::trace::TraceSample;
use freshet_model::store::{
    ArtifactError, ArtifactStore, CasError, Cause, PointerStore, Pointers, Slot, Verified,
};
use freshet_model::{Manifest, ModelConfig, ModelError, SequenceRange, Trainer as ModelTrainer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;

use crate::handler::{self, MetricsWindow, NextVersion, Sequence};
use crate::quality::{Quality, Transition, Verdict};

/// When a new version is published.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// After this many trained batches.
    pub every_batches: usize,
    /// Or this long after the oldest unpublished example was stored (or after the last version, if
    /// that was later), whichever comes first.
    pub every: Duration,
    /// Versions kept in the object store besides those a pointer names (0 keeps all).
    pub keep_versions: usize,
}

/// The model as last published, plus what has been learned since.
struct Lineage {
    trainer: ModelTrainer,
    schema: FeatureSchema,
    live: Option<Manifest>,
    pointer_revision: u64,
    window: MetricsWindow,
    /// A copy trained beside it since a drift, published to `<model>.candidate` for the gate.
    candidate: Option<Candidate>,
}

/// A candidate: forked from the live model when a drift asked for one, with its learning-rate
/// schedule restarted, and trained on every example since. It is published with each live
/// version and holds the same examples, so when the gate promotes it, training continues from
/// it without losing or repeating one.
struct Candidate {
    trainer: ModelTrainer,
    /// Its last version (at first, the live version it was forked from).
    published: Option<Manifest>,
    /// The candidate pointer's revision the next write must expect.
    pointer_revision: u64,
    /// Examples learned since its last version.
    pending: Option<SequenceRange>,
    window: MetricsWindow,
    /// Not published yet: its first version starts a chain of its own.
    forked: bool,
    /// Traces of the examples learned since its last version.
    traces: TraceSample,
}

/// Examples learned in memory but not yet in a published version.
#[derive(Default)]
struct PendingUpdate {
    batches: usize,
    range: Option<SequenceRange>,
    /// When the wait for the version holding these examples started (see
    /// [`handler::pending_age`]).
    since: Option<Instant>,
    /// Traces of the examples learned, for the next version's manifest.
    traces: TraceSample,
}

/// Metrics train exports beside the common ones.
#[derive(Clone, Default)]
pub struct TrainMetrics {
    pub versions_deleted: Counter,
    pub batches_refused: Counter,
    pub examples_trained: Counter,
    pub versions_published: Counter,
    pub pointer_conflicts: Counter,
    pub live_version: Gauge,
    pub prequential_accuracy: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub candidate_version: Gauge,
    pub candidates_started: Counter,
    pub learning_rate_restarts: Counter,
    pub reactions_ignored: Counter,
    pub examples_quarantined: Counter,
    pub quarantined: Gauge,
    pub positive_share: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub mean_prediction: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl TrainMetrics {
    pub fn register(&self, metrics: &freshet::metrics::Metrics) {
        metrics.register(
            "batches_refused",
            "Batches whose update was discarded (non-finite loss, gradient or weights)",
            self.batches_refused.clone(),
        );
        metrics.register(
            "versions_deleted",
            "Old versions removed from the object store by the retention policy",
            self.versions_deleted.clone(),
        );
        metrics.register(
            "examples_trained",
            "Examples learned (prequentially scored first)",
            self.examples_trained.clone(),
        );
        metrics.register(
            "versions_published",
            "Model versions written and made live",
            self.versions_published.clone(),
        );
        metrics.register(
            "pointer_conflicts",
            "Live pointer compare-and-set conflicts (another trainer won)",
            self.pointer_conflicts.clone(),
        );
        metrics.register(
            "live_version",
            "The version this trainer last made live",
            self.live_version.clone(),
        );
        metrics.register(
            "candidate_version",
            "The candidate version this trainer last published (0: none)",
            self.candidate_version.clone(),
        );
        metrics.register(
            "candidates_started",
            "Candidates forked from the live model because a drift asked for one",
            self.candidates_started.clone(),
        );
        metrics.register(
            "learning_rate_restarts",
            "Learning-rate schedules restarted because a drift asked for it",
            self.learning_rate_restarts.clone(),
        );
        metrics.register(
            "reactions_ignored",
            "Reactions drift asked for while another was still in flight",
            self.reactions_ignored.clone(),
        );
        metrics.register(
            "examples_quarantined",
            "Examples held out of training (out of range, or during a burst of bad values)",
            self.examples_quarantined.clone(),
        );
        metrics.register(
            "quarantined",
            "1 while training is paused by a burst of invalid or out-of-range values",
            self.quarantined.clone(),
        );
        metrics.register(
            "prequential_accuracy",
            "Accuracy over the recent window, scored before learning",
            self.prequential_accuracy.clone(),
        );
        metrics.register(
            "positive_share",
            "Share of positives among the examples of the recent window, a correction counted as turning its fake negative positive",
            self.positive_share.clone(),
        );
        metrics.register(
            "mean_prediction",
            "Mean prequential probability over the examples of the recent window (beside positive_share and featurize's observed conversion rate: calibration)",
            self.mean_prediction.clone(),
        );
    }
}

/// Where a trainer reads and writes.
pub struct Io {
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub artifacts: ArtifactStore,
    pub pointers: Pointers,
    /// The in-order check on the model's examples and the trainer's consumer.
    pub order: OrderGuard,
}

pub struct Trainer {
    pub model: ModelName,
    /// The configured model; a lineage that already exists keeps the configuration its live
    /// version was trained with.
    pub config: ModelConfig,
    pub cadence: Cadence,
    pub window_size: usize,
    pub metrics: TrainMetrics,
    js: jetstream::Context,
    subjects: Subjects,
    artifacts: ArtifactStore,
    pointers: Pointers,
    order: OrderGuard,
    /// The stream sequence of the last example handled in order, and its consumer sequence if it
    /// was a first delivery: the next first delivery after it is known to be in order without
    /// asking the stream ([`follows_directly`]). EXAMPLES interleaves every model's examples, so
    /// without this each example of one model would cost a lookup on the stream.
    chain: Option<(u64, u64)>,
    lineage: Option<Lineage>,
    pending: PendingUpdate,
    /// Wakes the retention task (started with the first publish).
    prune_requests: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Reactions drift asked for, applied before the next batch.
    reactions: Option<tokio::sync::mpsc::UnboundedReceiver<(Reaction, u64)>>,
    /// Examples the lineage had learned when the learning rate was last raised.
    raised_at: Option<u64>,
    quality: Quality,
    /// The highest version number this trainer wrote: live and candidate versions share the
    /// numbering, so each takes the next number instead of colliding with the other's.
    last_version: u64,
    /// When this trainer last published a live version.
    last_published: Option<Instant>,
    /// Whether the live model's mean prediction has parted from the share of positives it
    /// learned (logged when that changes).
    miscalibrated: bool,
}

impl Trainer {
    pub fn new(
        model: ModelName,
        config: ModelConfig,
        cadence: Cadence,
        window_size: usize,
        io: Io,
        metrics: TrainMetrics,
        quality: Quality,
    ) -> Trainer {
        Trainer {
            model,
            config,
            cadence,
            window_size,
            metrics,
            js: io.js,
            subjects: io.subjects,
            artifacts: io.artifacts,
            pointers: io.pointers,
            order: io.order,
            chain: None,
            lineage: None,
            pending: PendingUpdate::default(),
            prune_requests: None,
            reactions: None,
            raised_at: None,
            quality,
            last_version: 0,
            last_published: None,
            miscalibrated: false,
        }
    }

    /// Where the reactions drift requests arrive.
    pub fn listen(&mut self, reactions: tokio::sync::mpsc::UnboundedReceiver<(Reaction, u64)>) {
        self.reactions = Some(reactions);
    }

    /// Applies the reactions that arrived since the last batch.
    async fn react(&mut self) {
        let mut requested = Vec::new();
        if let Some(reactions) = self.reactions.as_mut() {
            while let Ok(reaction) = reactions.try_recv() {
                requested.push(reaction);
            }
        }
        for (reaction, sequence) in requested {
            let Some(lineage) = self.lineage.as_mut() else {
                tracing::info!(model = %self.model, %reaction, "no model yet; nothing to react with");
                continue;
            };
            // One reaction in flight per model: a second request (a repeated record, another
            // episode) waits until the first has run its course.
            let learned = lineage.window.snapshot().examples_total;
            if reaction != Reaction::Alert
                && let Some(busy) = handler::reaction_in_flight(
                    lineage.candidate.is_some(),
                    self.raised_at,
                    learned,
                    self.window_size as u64,
                )
            {
                self.metrics.reactions_ignored.inc();
                tracing::info!(model = %self.model, %reaction, sequence, busy, "drift asks for a reaction while another is in flight; ignored");
                continue;
            }
            match reaction {
                Reaction::Alert => {}
                Reaction::RaiseLr => match lineage.trainer.restarted() {
                    Ok(restarted) => {
                        lineage.trainer = restarted;
                        self.raised_at = Some(learned);
                        self.metrics.learning_rate_restarts.inc();
                        tracing::info!(model = %self.model, "drift: learning-rate schedule restarted at its initial rate");
                    }
                    Err(err) => {
                        tracing::warn!(model = %self.model, error = %err, "cannot restart the learning rate")
                    }
                },
                Reaction::TrainCandidate => {
                    let revision = match self.pointers.get(&self.model, Slot::Candidate).await {
                        Ok(pointer) => pointer.revision,
                        Err(failure) => {
                            tracing::warn!(model = %self.model, error = %failure, "cannot read the candidate pointer; no candidate this time");
                            continue;
                        }
                    };
                    match lineage.trainer.restarted() {
                        Ok(trainer) => {
                            lineage.candidate = Some(Candidate {
                                trainer,
                                published: lineage.live.clone(),
                                pointer_revision: revision,
                                pending: self.pending.range,
                                traces: self.pending.traces.clone(),
                                forked: true,
                                // The candidate's history is live's up to the fork.
                                window: MetricsWindow::new(
                                    self.window_size,
                                    lineage.window.snapshot().examples_total,
                                ),
                            });
                            self.metrics.candidates_started.inc();
                            tracing::info!(model = %self.model, from = ?lineage.live.as_ref().map(|m| m.version),
                                "drift: training a candidate beside the live model");
                        }
                        Err(err) => {
                            tracing::warn!(model = %self.model, error = %err, "cannot fork a candidate")
                        }
                    }
                }
            }
        }
    }

    /// Resumes the candidate the pointer names if it holds exactly the live version's examples
    /// (both were published together); a candidate left behind by a crash between the two writes
    /// is not continued, and the gate withdraws it in time.
    async fn resume_candidate(&mut self) -> anyhow::Result<()> {
        let Some(lineage) = self.lineage.as_mut() else {
            return Ok(());
        };
        let Some(live) = lineage.live.as_ref() else {
            return Ok(());
        };
        let pointer = self.pointers.get(&self.model, Slot::Candidate).await?;
        let Some(candidate) = pointer.value else {
            return Ok(());
        };
        let (manifest, bytes) = self.artifacts.load(&self.model, candidate.version).await?;
        if manifest.high_water_mark != live.high_water_mark {
            tracing::warn!(model = %self.model, candidate = manifest.version, "the candidate does not hold the live version's examples; not continuing it");
            return Ok(());
        }
        let trainer = ModelTrainer::from_bytes(&bytes, lineage.trainer.config())?;
        tracing::info!(model = %self.model, version = manifest.version, "resuming the candidate");
        lineage.candidate = Some(Candidate {
            trainer,
            window: MetricsWindow::new(self.window_size, manifest.metrics.examples_total),
            published: Some(manifest),
            pointer_revision: pointer.revision,
            pending: None,
            forked: false,
            traces: TraceSample::default(),
        });
        Ok(())
    }

    /// Writes the candidate's new version and moves `<model>.candidate` to it. Best effort: the
    /// live version is committed already; a candidate that cannot be written is dropped.
    async fn publish_candidate(&mut self) {
        let Some(lineage) = self.lineage.as_mut() else {
            return;
        };
        let Some(candidate) = lineage.candidate.as_mut() else {
            return;
        };
        let Some(range) = candidate.pending else {
            return;
        };
        let bytes = match candidate.trainer.to_bytes() {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(model = %self.model, error = %err, "cannot encode the candidate; dropping it");
                lineage.candidate = None;
                return;
            }
        };
        let mut manifest = handler::next_manifest(
            NextVersion {
                model: &self.model,
                parent: candidate.published.as_ref(),
                config: *candidate.trainer.config(),
                schema: lineage.schema.clone(),
                step: candidate.trainer.step(),
                learned: range,
                metrics: candidate.window.snapshot(),
                created_at: Utc::now(),
                new_chain: candidate.forked,
                traces: candidate.traces.to_strings(),
            },
            &bytes,
        );
        let expected = candidate.pointer_revision;
        manifest.version = manifest.version.max(self.last_version + 1);
        if let Err(failure) =
            store_version(&self.artifacts, &self.model, &mut manifest, &bytes).await
        {
            tracing::warn!(model = %self.model, error = %failure, "cannot store the candidate; it is published with the next version");
            return;
        }
        self.last_version = manifest.version;
        let lineage = self.lineage.as_mut().expect("checked above");
        // This trainer wrote and hashed the bytes it points at.
        match self
            .pointers
            .move_to(
                &self.model,
                Slot::Candidate,
                &Verified::held(&manifest),
                Cause::Candidate,
                "train: candidate after a drift",
                expected,
            )
            .await
        {
            Ok(revision) => {
                let candidate = lineage.candidate.as_mut().expect("checked above");
                tracing::info!(model = %self.model, version = manifest.version, high_water_mark = manifest.high_water_mark,
                    accuracy = manifest.metrics.prequential_accuracy, "published a candidate version");
                self.metrics.candidate_version.set(manifest.version as i64);
                candidate.pointer_revision = revision;
                candidate.published = Some(manifest);
                candidate.pending = None;
                candidate.traces = TraceSample::default();
                candidate.forked = false;
            }
            Err(CasError::Conflict { .. }) => {
                tracing::info!(model = %self.model, "the candidate pointer moved (withdrawn or promoted); dropping the candidate");
                lineage.candidate = None;
                self.metrics.candidate_version.set(0);
            }
            Err(CasError::Failed(failure)) => {
                tracing::warn!(model = %self.model, error = %failure, "cannot move the candidate pointer; it is retried with the next version");
            }
        }
    }

    /// Tells CONTROL that the quarantine started or ended.
    async fn announce_quarantine(&self, transition: Transition, sequence: u64) {
        let body = json!({
            "kind": KIND_QUARANTINE, "model": self.model, "state": transition.as_str(),
            "sequence": sequence, "flagged_share": self.quality.flagged_share(), "at": Utc::now(),
        });
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(Bytes::from(body.to_string()))
            .message_id(format!(
                "quarantine-{}-{}-{sequence}",
                self.model,
                transition.as_str()
            ));
        let subject = self.subjects.control(&self.model, KIND_QUARANTINE);
        if let Err(err) = self.js.send_publish(subject, message).await {
            tracing::warn!(error = %err, "cannot report the quarantine on CONTROL");
        }
    }

    /// Loads the live version, if any, so training continues its lineage and schedule.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.lineage = self.load_live().await?;
        self.resume_candidate().await?;
        if let Some(live) = self.lineage.as_ref().and_then(|l| l.live.as_ref()) {
            tracing::info!(model = %self.model, version = live.version, high_water_mark = live.high_water_mark, "resuming from the live version");
            self.metrics.live_version.set(live.version as i64);
        }
        Ok(())
    }

    async fn load_live(&self) -> anyhow::Result<Option<Lineage>> {
        let pointer = self.pointers.get(&self.model, Slot::Live).await?;
        let Some(live) = pointer.value else {
            return Ok(None);
        };
        let (manifest, bytes) = self
            .artifacts
            .load(&self.model, live.version)
            .await
            .with_context(|| format!("loading live version {} of {}", live.version, self.model))?;
        // The lineage continues as it was trained: a changed configuration (another kind, say)
        // applies to a new model name, not halfway through a lineage.
        let config = manifest.config;
        if config != self.config {
            tracing::warn!(model = %self.model, live = ?config, configured = ?self.config,
                "the live version was trained with another configuration; continuing with its own");
        }
        let trainer = ModelTrainer::from_bytes(&bytes, &config)
            .with_context(|| format!("decoding live version {} of {}", live.version, self.model))?;
        Ok(Some(Lineage {
            trainer,
            schema: manifest.schema.clone(),
            window: MetricsWindow::new(self.window_size, manifest.metrics.examples_total),
            pointer_revision: pointer.revision,
            live: Some(manifest),
            candidate: None,
        }))
    }

    fn lineage_for(&mut self, first: &ExampleRecord) -> Result<&mut Lineage, ModelError> {
        if self.lineage.is_none() {
            let schema = handler::schema_for(first);
            let trainer = ModelTrainer::new(&self.config, schema.n_features())?;
            self.lineage = Some(Lineage {
                trainer,
                schema,
                live: None,
                pointer_revision: 0,
                window: MetricsWindow::new(self.window_size, 0),
                candidate: None,
            });
        }
        Ok(self.lineage.as_mut().expect("set just above when missing"))
    }

    async fn publish(&mut self) -> Result<Commit, Failure> {
        let (Some(lineage), Some(range)) = (self.lineage.as_ref(), self.pending.range) else {
            return Ok(Commit::Durable);
        };
        let bytes = lineage
            .trainer
            .to_bytes()
            .map_err(|e| Failure::new("encode model", e))?;
        let mut manifest = handler::next_manifest(
            NextVersion {
                model: &self.model,
                parent: lineage.live.as_ref(),
                config: *lineage.trainer.config(),
                schema: lineage.schema.clone(),
                step: lineage.trainer.step(),
                learned: range,
                metrics: lineage.window.snapshot(),
                created_at: Utc::now(),
                new_chain: false,
                traces: self.pending.traces.to_strings(),
            },
            &bytes,
        );
        manifest.version = manifest.version.max(self.last_version + 1);
        store_version(&self.artifacts, &self.model, &mut manifest, &bytes).await?;
        self.last_version = manifest.version;
        // This trainer wrote and hashed the bytes it points at.
        let revision = match self
            .pointers
            .move_to(
                &self.model,
                Slot::Live,
                &Verified::held(&manifest),
                Cause::Train,
                "train",
                lineage.pointer_revision,
            )
            .await
        {
            Ok(revision) => revision,
            Err(CasError::Conflict { .. }) => {
                // Another trainer moved the pointer: its history wins. Reload it and let the held
                // examples be redelivered and learned on top of it.
                self.metrics.pointer_conflicts.inc();
                tracing::warn!(model = %self.model, "live pointer moved by another writer; reloading and retrying the held examples");
                self.pending = PendingUpdate::default();
                self.lineage = self
                    .load_live()
                    .await
                    .map_err(|e| Failure::new("reload live version", e))?;
                return Ok(Commit::Abandoned);
            }
            Err(CasError::Failed(failure)) => return Err(failure),
        };
        tracing::info!(model = %self.model, version = manifest.version, first = range.first, last = range.last,
            accuracy = manifest.metrics.prequential_accuracy, traces = %manifest.traces.join(","),
            "published a new live version");
        self.announce(&manifest).await;
        self.metrics.versions_published.inc();
        self.metrics.live_version.set(manifest.version as i64);
        self.metrics
            .prequential_accuracy
            .set(manifest.metrics.prequential_accuracy);
        self.watch_calibration(&manifest.metrics);
        let lineage = self
            .lineage
            .as_mut()
            .expect("checked at the top of publish");
        lineage.pointer_revision = revision;
        lineage.live = Some(manifest);
        self.pending = PendingUpdate::default();
        self.last_published = Some(Instant::now());
        self.publish_candidate().await;
        self.prune_in_background();
        Ok(Commit::Durable)
    }

    /// Exports the window's positive share and mean prediction, and says in the log when they
    /// part by more than [`freshet_features::labels::PARTED_FACTOR`] and when they meet again.
    fn watch_calibration(&mut self, metrics: &freshet_model::TrainingMetrics) {
        let (Some(share), Some(mean)) = (metrics.positive_share, metrics.mean_prediction) else {
            return;
        };
        self.metrics.positive_share.set(share);
        self.metrics.mean_prediction.set(mean);
        if metrics.window_examples < freshet_features::labels::MIN_VIEWS_TO_COMPARE {
            return;
        }
        match freshet_features::labels::calibration_warning(
            mean,
            share,
            "the share of positives it learned",
        ) {
            Some(warning) if !self.miscalibrated => {
                self.miscalibrated = true;
                tracing::warn!(model = %self.model, mean_prediction = mean, positive_share = share, "{warning}");
            }
            None if self.miscalibrated => {
                self.miscalibrated = false;
                tracing::info!(model = %self.model, mean_prediction = mean, positive_share = share, "the model's mean prediction meets the share of positives it learned again");
            }
            _ => {}
        }
    }

    /// Asks for a retention pass off the training path. Requests made while a pass runs, or
    /// within [`RETENTION_PASS_INTERVAL`] after it, are folded into one more pass, so the last
    /// publish is always followed by one; a failed pass is only logged (nothing depends on
    /// deletion).
    fn prune_in_background(&mut self) {
        if self.cadence.keep_versions == 0 {
            return;
        }
        let requests = self.prune_requests.get_or_insert_with(|| {
            let requests = std::sync::Arc::new(tokio::sync::Notify::new());
            let (model, artifacts, pointers) = (
                self.model.clone(),
                self.artifacts.clone(),
                self.pointers.clone(),
            );
            let (keep, deleted) = (
                self.cadence.keep_versions,
                self.metrics.versions_deleted.clone(),
            );
            let wakeups = requests.clone();
            tokio::spawn(async move {
                loop {
                    wakeups.notified().await;
                    match prune(&model, &artifacts, &pointers, keep).await {
                        Ok(n) => {
                            deleted.inc_by(n);
                        }
                        Err(err) => {
                            tracing::warn!(model = %model, error = %err, "retention pass failed");
                        }
                    }
                    tokio::time::sleep(RETENTION_PASS_INTERVAL).await;
                }
            });
            requests
        });
        requests.notify_one();
    }

    /// Writes the version's artifacts. A version number already taken by an orphan (written by
    /// a trainer that died before moving the pointer, or by an earlier attempt of this one) is
    /// skipped: the lineage is in the `parent` field, and orphans never go live.
    /// Tells CONTROL that a batch's update was discarded, naming its examples' sequences. The
    /// message id makes a redelivered batch's report a duplicate, not a second report.
    async fn report_refused_batch(&self, sequences: &[u64], error: &ModelError) {
        let (first, last) = (
            sequences.iter().min().copied().unwrap_or_default(),
            sequences.iter().max().copied().unwrap_or_default(),
        );
        let body = json!({
            "kind": "batch_refused", "model": self.model, "first": first, "last": last,
            "examples": sequences.len(), "error": error.to_string(), "at": Utc::now(),
        });
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(Bytes::from(body.to_string()))
            .message_id(format!("refused-{}-{first}-{last}", self.model));
        let subject = self.subjects.control(&self.model, "refused_batch");
        if let Err(err) = self.js.send_publish(subject, message).await {
            tracing::warn!(error = %err, "cannot report the refused batch on CONTROL");
        }
    }

    /// Tells CONTROL about the new version. Best effort: the pointer is the source of truth.
    async fn announce(&self, manifest: &Manifest) {
        let body = json!({
            "kind": "version_published", "model": manifest.model, "version": manifest.version,
            "parent": manifest.parent, "learned": manifest.learned, "high_water_mark": manifest.high_water_mark,
            "metrics": manifest.metrics, "created_at": manifest.created_at,
        });
        let subject = self.subjects.control(&self.model, "version");
        if let Err(err) = self
            .js
            .publish(subject, Bytes::from(body.to_string()))
            .await
        {
            tracing::warn!(error = %err, "cannot announce the new version on CONTROL");
        }
    }
}

/// Writes a new version, taking the next free number if another writer (an orphan of a crash,
/// or the candidate) holds this one.
async fn store_version(
    artifacts: &ArtifactStore,
    model: &ModelName,
    manifest: &mut Manifest,
    bytes: &[u8],
) -> Result<(), Failure> {
    for _ in 0..8 {
        match artifacts.put_version(manifest, bytes).await {
            Ok(()) => return Ok(()),
            Err(ArtifactError::VersionExists { .. }) => {
                let taken = artifacts
                    .versions(model)
                    .await
                    .map_err(|e| Failure::new("list versions", e))?;
                let next = taken.last().copied().unwrap_or(0).max(manifest.version) + 1;
                tracing::info!(model = %model, taken = manifest.version, next, "version number taken (an orphan, or the candidate); using the next one");
                manifest.version = next;
            }
            Err(e) => {
                return Err(Failure::new(
                    format!("store version {} of {}", manifest.version, model),
                    e,
                ));
            }
        }
    }
    Err(Failure::new(
        "store version",
        "no free version number after 8 attempts",
    ))
}

/// The least time between two retention passes. Each pass reads the pointers' histories, and
/// each reading is a consumer the server creates and keeps until it idles out: one pass per
/// publish, at dozens of versions a second, left hundreds of them on MODELS and cost the server
/// more CPU per event than the events themselves (the pipeline benchmark). Deleting a few
/// seconds late costs nothing.
const RETENTION_PASS_INTERVAL: Duration = Duration::from_secs(2);

/// Deletes the versions the retention policy lets go and returns how many. A version a pointer
/// names now or in its kept history stays, so rollback always finds its target.
async fn prune(
    model: &ModelName,
    artifacts: &ArtifactStore,
    pointers: &Pointers,
    keep_newest: usize,
) -> anyhow::Result<u64> {
    let mut named = std::collections::BTreeSet::new();
    for slot in Slot::ALL {
        named.extend(
            pointers
                .history(model, slot)
                .await?
                .into_iter()
                .map(|(_, p)| p.version),
        );
        named.extend(pointers.get(model, slot).await?.value.map(|p| p.version));
    }
    let stored = artifacts.versions(model).await?;
    let doomed = handler::versions_to_delete(&stored, keep_newest, &named);
    for &version in &doomed {
        artifacts.delete_version(model, version).await?;
    }
    if !doomed.is_empty() {
        tracing::info!(model = %model, deleted = doomed.len(), kept = stored.len() - doomed.len(), "old versions removed");
    }
    Ok(doomed.len() as u64)
}

impl Processor for Trainer {
    /// Handles the batch in stream order: examples already learned are acknowledged, new ones are
    /// learned (or refused) strictly in sequence, and an example whose predecessor has not been
    /// seen yet waits for it (it is redelivered after a short delay).
    async fn process(&mut self, batch: &mut [Incoming]) -> Vec<Disposition> {
        self.react().await;
        let decoded: Vec<Result<ExampleRecord, Rejection>> = batch
            .iter()
            .map(|m| ExampleRecord::decode(&m.payload))
            .collect();
        let mut dispositions: Vec<Option<Disposition>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        if self.lineage.is_none()
            && let Some(first_valid) = decoded.iter().find_map(|d| d.as_ref().ok()).cloned()
            && let Err(err) = self.lineage_for(&first_valid)
        {
            let rejection =
                Rejection::new(RejectReason::SchemaMismatch, "features", err.to_string());
            return batch
                .iter()
                .map(|_| Disposition::Reject(rejection.clone()))
                .collect();
        }
        let high_water_mark = self
            .lineage
            .as_ref()
            .and_then(|l| l.live.as_ref())
            .map_or(0, |m| m.high_water_mark);
        let pending_last = self.pending.range.map(|r| r.last);
        let mut mark = high_water_mark.max(pending_last.unwrap_or(0));
        // The chain holds only while the mark is where it was left: a rollback, a discarded
        // update or a new lineage moves the mark, and the stream is asked again.
        let mut link = self.chain.filter(|&(at, _)| at == mark).map(|(_, c)| c);
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].stream_sequence);
        let (mut rows, mut labels, mut learned_at) = (Vec::new(), Vec::new(), Vec::new());
        let mut weighting = Vec::new();
        let mut handled: Option<SequenceRange> = None;
        // When JetStream stored the first example handled (handled in stream order, so the
        // oldest): the next version is due `every` after.
        let mut oldest_stored = None;
        let mut waiting = false;
        let mut transitions = Vec::new();
        for i in order {
            let sequence = batch[i].stream_sequence;
            if waiting {
                dispositions[i] = Some(Disposition::Defer(Failure::new(
                    "train",
                    "waiting for an earlier example",
                )));
                continue;
            }
            match handler::sequence_verdict(sequence, high_water_mark, pending_last) {
                Sequence::AlreadyLearned => {
                    dispositions[i] = Some(Disposition::Ack);
                    continue;
                }
                Sequence::AlreadyPending => {
                    dispositions[i] = Some(Disposition::Hold);
                    continue;
                }
                Sequence::New if sequence <= mark => {
                    // Delivered twice within one batch: the first copy is being handled.
                    dispositions[i] = Some(Disposition::Hold);
                    continue;
                }
                Sequence::New => {}
            }
            let (delivery, delivered) = (batch[i].consumer_sequence, batch[i].delivered);
            if !follows_directly(link, delivery, delivered)
                && let Err(failure) = self.order.admit(sequence, &mut mark, "train").await
            {
                waiting = true;
                dispositions[i] = Some(Disposition::Defer(failure));
                continue;
            }
            mark = sequence;
            link = chain_link(delivery, delivered);
            oldest_stored.get_or_insert(batch[i].published);
            handled = Some(match handled {
                Some(r) => SequenceRange {
                    first: r.first.min(sequence),
                    last: r.last.max(sequence),
                },
                None => SequenceRange {
                    first: sequence,
                    last: sequence,
                },
            });
            let Some(lineage) = self.lineage.as_ref() else {
                // No example has fitted a model yet, so none can be learned: refuse, in order.
                let rejection = decoded[i]
                    .clone()
                    .err()
                    .unwrap_or_else(|| Rejection::new(RejectReason::InvalidData, "$", "no model"));
                dispositions[i] = Some(Disposition::RejectHeld(rejection));
                continue;
            };
            match handler::check_record(decoded[i].clone(), &lineage.schema) {
                Ok(learnable) => {
                    let (verdict, transition) = self.quality.assess(Some(&learnable.features));
                    transitions.extend(transition.map(|t| (t, sequence)));
                    match verdict {
                        Verdict::Learn => {
                            learned_at.push(i);
                            rows.push(learnable.features);
                            labels.push(learnable.label);
                            weighting.push(learnable.weighting);
                            dispositions[i] = Some(Disposition::Hold);
                        }
                        Verdict::HoldOut(why) => {
                            self.metrics.examples_quarantined.inc();
                            dispositions[i] = Some(Disposition::RejectHeld(Rejection::new(
                                RejectReason::Quarantined,
                                "features",
                                why,
                            )));
                        }
                    }
                }
                Err(rejection) => {
                    let (_, transition) = self.quality.assess(None);
                    transitions.extend(transition.map(|t| (t, sequence)));
                    dispositions[i] = Some(Disposition::RejectHeld(rejection));
                }
            }
        }
        if !rows.is_empty() {
            let lineage = self
                .lineage
                .as_mut()
                .expect("rows are only collected when a lineage exists");
            // burn is blocking CPU work: keep it off the async workers' hot path.
            match tokio::task::block_in_place(|| {
                lineage
                    .trainer
                    .train_weighted_batch(&rows, &labels, &weighting)
            }) {
                Ok(report) => {
                    lineage.window.record(&report, &labels, &weighting);
                    self.metrics.examples_trained.inc_by(report.examples as u64);
                    self.pending.batches += 1;
                    let traces = learned_at.iter().filter_map(|&i| batch[i].trace.as_ref());
                    for trace in traces.clone() {
                        self.pending.traces.add(trace.trace_id());
                    }
                    if let Some(candidate) = lineage.candidate.as_mut() {
                        match tokio::task::block_in_place(|| {
                            candidate
                                .trainer
                                .train_weighted_batch(&rows, &labels, &weighting)
                        }) {
                            Ok(report) => {
                                candidate.window.record(&report, &labels, &weighting);
                                for trace in traces {
                                    candidate.traces.add(trace.trace_id());
                                }
                            }
                            Err(err) => {
                                tracing::warn!(model = %self.model, error = %err, "the candidate refused a batch the live model took; dropping the candidate");
                                lineage.candidate = None;
                            }
                        }
                    }
                }
                Err(err) => {
                    // The update was discarded (the model is unchanged); the examples are kept on
                    // the dead-letter subject for review instead of being retried forever.
                    tracing::warn!(model = %self.model, error = %err, examples = rows.len(), "batch refused; model unchanged");
                    self.metrics.batches_refused.inc();
                    let sequences: Vec<u64> = learned_at
                        .iter()
                        .map(|&i| batch[i].stream_sequence)
                        .collect();
                    self.report_refused_batch(&sequences, &err).await;
                    let reason = match err {
                        ModelError::NonFinite { .. } | ModelError::NonFiniteFeature { .. } => {
                            RejectReason::NonFinite
                        }
                        _ => RejectReason::InvalidData,
                    };
                    let rejection = Rejection::new(reason, "batch", err.to_string());
                    for i in learned_at {
                        dispositions[i] = Some(Disposition::RejectHeld(rejection.clone()));
                    }
                }
            }
        }
        for (transition, sequence) in transitions {
            tracing::warn!(model = %self.model, state = transition.as_str(), sequence, share = self.quality.flagged_share(), "data-quality quarantine");
            self.metrics
                .quarantined
                .set(i64::from(transition == Transition::Started));
            self.announce_quarantine(transition, sequence).await;
        }
        if let Some(range) = handled {
            if let Some(candidate) = self.lineage.as_mut().and_then(|l| l.candidate.as_mut()) {
                candidate.pending = Some(match candidate.pending {
                    Some(r) => SequenceRange {
                        first: r.first.min(range.first),
                        last: r.last.max(range.last),
                    },
                    None => range,
                });
            }
            // Refused examples count as handled: the next version's mark covers them too.
            self.pending.range = Some(match self.pending.range {
                Some(r) => SequenceRange {
                    first: r.first.min(range.first),
                    last: r.last.max(range.last),
                },
                None => range,
            });
            if self.pending.since.is_none() {
                let oldest = oldest_stored.map_or(Duration::ZERO, |stored| {
                    (Utc::now() - stored).to_std().unwrap_or_default()
                });
                let since_last = self.last_published.map(|at| at.elapsed());
                let age = handler::pending_age(oldest, since_last);
                self.pending.since =
                    Some(Instant::now().checked_sub(age).unwrap_or_else(Instant::now));
            }
            self.chain = link.map(|delivery| (mark, delivery));
        }
        dispositions
            .into_iter()
            .map(|d| {
                d.unwrap_or_else(|| {
                    Disposition::Retry(Failure::new("train", "example left unhandled"))
                })
            })
            .collect()
    }

    async fn commit(&mut self, final_commit: bool) -> Result<Commit, Failure> {
        if self.pending.range.is_none() {
            return Ok(Commit::Durable);
        }
        let due = final_commit
            || self.pending.batches >= self.cadence.every_batches
            || self
                .pending
                .since
                .is_some_and(|since| since.elapsed() >= self.cadence.every);
        if !due {
            return Ok(Commit::Pending);
        }
        self.publish().await
    }

    /// A batch is one optimizer step, and the learning rate decays per step: batches closed early
    /// because the loop was busy would take more, smaller steps, and learn less from the same
    /// examples (a drifted model's candidate could then not catch up with the new concept).
    fn lingers(&self) -> bool {
        false
    }

    fn commit_due(&self) -> Option<Instant> {
        self.pending
            .range
            .and(self.pending.since)
            .map(|since| since + self.cadence.every)
    }
}
