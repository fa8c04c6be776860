//! drift's runtime adapter, one batch at a time: score the new examples with the live version,
//! fold them in stream order into a copy of the checkpoint, publish the episodes' transitions
//! (acks awaited), and hold the messages; the loop then offers a commit, which writes the
//! checkpoint to DRIFT `<model>` by compare-and-set, and only then are the messages acknowledged.
//!
//! That order is what makes a restart cost nothing. An example at or below the stored mark is
//! acknowledged without being observed again, and the episodes live in the checkpoint, so an
//! episode open before a restart stays open and is not reported again. A crash before the write
//! loses only the unwritten copy: the examples come back and are folded again into the stored
//! checkpoint, making the same transitions, and their records carry the same `Nats-Msg-Id`, so
//! JetStream drops the copies (within the CONTROL stream's duplicate window). A write that loses
//! to another writer throws the copy away, reads the winner's checkpoint and hands the batch back
//! for redelivery.

use std::sync::Arc;

use async_nats::jetstream::{self, kv, message::PublishMessage};
use bytes::Bytes;
use freshet::error::{Failure, Rejection};
use freshet::examples::ExampleRecord;
use freshet::ids::ModelName;
use freshet::runtime::order::{OrderCheck, OrderGuard};
use freshet::runtime::{Commit, Disposition, Incoming, Processor};
use freshet::store::kv::{CasError, compare_and_set, read};
use freshet::subjects::Subjects;
use futures::future::try_join_all;

use crate::bank::{Bank, Checkpoint, DetectorKind, FeedbackCounts, Restored, Scored, Target};
use crate::control::{self, RecordContext};
use crate::metrics::{DetectionLabel, DriftMetrics, EpisodeLabel, StreamLabel};
use crate::promotion::Promotion;
use freshet::control::{EpisodeState, Reaction};
use freshet::examples::FeatureSchema;
use freshet_drift::detectors::Level;
use freshet_drift::episodes::{Episode, ReactionPolicy, Transition};
use freshet_model::store::follow::{Loaded, VersionCell};

/// Where drift reads and writes.
pub struct Io {
    pub js: jetstream::Context,
    pub subjects: Subjects,
    /// The DRIFT bucket.
    pub checkpoints: kv::Store,
    /// The in-order check on the model's examples and drift's consumer.
    pub order: OrderGuard,
    pub live: VersionCell,
    /// The largest message the server takes (a checkpoint is one KV value).
    pub max_checkpoint_bytes: usize,
}

/// What a checkpoint not yet written holds beyond the stored one, for the metrics.
#[derive(Debug, Clone, Default)]
struct Tally {
    features: u64,
    errors: u64,
    resets: u64,
    improvements: u64,
    detections: Vec<(DetectorKind, bool, Level)>,
    /// Each transition, with the label of its episode's headline signal.
    transitions: Vec<(EpisodeState, EpisodeLabel)>,
    /// The reaction requested or withheld at each confirmation.
    reactions: Vec<bool>,
    /// What became of the delayed labels.
    feedback: FeedbackCounts,
}

/// Folded but not yet written: the state of the messages held.
struct Pending {
    checkpoint: Checkpoint,
    tally: Tally,
}

/// The consumer of one model's examples: the bank, the checkpoint it was read from, and what
/// has been folded since.
pub struct DriftProcessor {
    model: ModelName,
    /// The checkpoint's key in DRIFT: the model's name.
    key: String,
    reaction: Reaction,
    bank: Bank,
    io: Io,
    metrics: DriftMetrics,
    /// The checkpoint as stored, and the revision the next write must expect.
    stored: Checkpoint,
    revision: u64,
    pending: Option<Pending>,
    /// The stored checkpoint must be read before the next batch: at start (once the consumer
    /// exists, for its acknowledgement floor) and after another writer won.
    stale: bool,
    /// The promotion gate, unless turned off.
    promotion: Option<Promotion>,
    /// The label the open-episodes gauge shows for the stored checkpoint's open episode.
    open_label: Option<EpisodeLabel>,
}

impl DriftProcessor {
    /// A processor that reads the stored checkpoint with its first batch.
    pub fn new(
        model: ModelName,
        reaction: Reaction,
        bank: Bank,
        io: Io,
        metrics: DriftMetrics,
        promotion: Option<Promotion>,
    ) -> DriftProcessor {
        DriftProcessor {
            key: model.to_string(),
            model,
            reaction,
            stored: bank.fresh(),
            bank,
            io,
            metrics,
            revision: 0,
            pending: None,
            stale: true,
            promotion,
            open_label: None,
        }
    }

    /// Reads the stored checkpoint, dropping anything folded since.
    async fn load(&mut self) -> Result<(), Failure> {
        let raw = read(&self.io.checkpoints, &self.key).await?;
        let (mut checkpoint, restored) = self.bank.decode(raw.value.as_deref());
        match &restored {
            Restored::Missing => {
                tracing::info!(model = %self.model, "no drift checkpoint yet; starting afresh")
            }
            Restored::AsWritten => {
                tracing::info!(model = %self.model, last_sequence = checkpoint.last_sequence, error_chain = checkpoint.error_version(), "resuming from the drift checkpoint")
            }
            Restored::Reconfigured => {
                tracing::warn!(model = %self.model, last_sequence = checkpoint.last_sequence, "the drift checkpoint was written under other settings; keeping its mark, starting the detectors afresh")
            }
            Restored::Unreadable { kept_mark, error } => {
                tracing::error!(model = %self.model, ?kept_mark, %error, "unreadable drift checkpoint; starting the detectors afresh")
            }
        }
        // Examples acknowledged beyond the mark are handled although no checkpoint holds them
        // (by a drift that kept its detectors in memory, or before the checkpoint was lost).
        // Starting after them keeps the order guard from stepping over each one in turn.
        let floor = self.io.order.ack_floor().await?;
        if self.bank.pass(&mut checkpoint, floor) {
            tracing::info!(model = %self.model, floor, "examples up to the consumer's acknowledgement floor were handled before this checkpoint; starting after them");
        }
        if let Some(open) = checkpoint.episodes.open() {
            tracing::info!(model = %self.model, episode = open.id, state = %open.state, opened = open.opened, "an episode is open; it continues");
        }
        let live = self.io.live.current();
        let label = checkpoint
            .episodes
            .open()
            .map(|open| episode_label(open, live.as_deref().map(|l| &l.manifest.schema)));
        self.show_open(label);
        self.stored = checkpoint;
        self.revision = raw.revision;
        self.pending = None;
        self.stale = false;
        Ok(())
    }

    /// Sets the open-episodes gauge to `label` (none open: `None`).
    fn show_open(&mut self, label: Option<EpisodeLabel>) {
        if let Some(old) = self.open_label.take() {
            self.metrics.episodes_open.get_or_create(&old).set(0);
        }
        if let Some(label) = &label {
            self.metrics.episodes_open.get_or_create(label).set(1);
        }
        self.open_label = label;
    }

    /// Why a reaction must wait now, if one must: a candidate the gate is still judging is a
    /// reaction in flight (a drift's `train_candidate`, or one made by hand).
    fn outstanding(&self) -> Option<String> {
        let candidate = self.promotion.as_ref()?.versions.candidate.current()?;
        Some(format!(
            "candidate v{} is still under the gate's judgement",
            candidate.version()
        ))
    }

    /// The live version's probability for each new example that follows its schema and that
    /// it has not learned yet. An example at or below the version's high-water mark is in its
    /// training data (drift lagging behind train, after a restart say): its error would be
    /// in-sample and flatter the model, so it is not scored; its features are still watched.
    fn score(
        &self,
        live: Option<&Loaded>,
        batch: &[Incoming],
        decoded: &[Result<ExampleRecord, Rejection>],
        mark: u64,
    ) -> Vec<Option<Scored>> {
        let mut scores = vec![None; batch.len()];
        let Some(live) = live else {
            return scores;
        };
        let scorable: Vec<usize> = (0..batch.len())
            .filter(|&i| {
                let sequence = batch[i].stream_sequence;
                sequence > mark
                    && sequence > live.manifest.high_water_mark
                    && decoded[i].as_ref().is_ok_and(|example| {
                        example.follows(&live.manifest.schema)
                            && example.features.len() == live.scorer.n_features()
                    })
            })
            .collect();
        if scorable.is_empty() {
            return scores;
        }
        let rows: Vec<Vec<f32>> = scorable
            .iter()
            .filter_map(|&i| decoded[i].as_ref().ok().map(|e| e.features.clone()))
            .collect();
        // burn is blocking CPU work: keep it off the async workers' hot path.
        match tokio::task::block_in_place(|| live.scorer.score_batch(&rows)) {
            Ok(probabilities) => {
                for (&i, p) in scorable.iter().zip(probabilities) {
                    scores[i] = Some(Scored {
                        version: live.manifest.lineage_root(),
                        probability: f64::from(p),
                    });
                }
            }
            Err(err) => {
                tracing::warn!(model = %self.model, error = %err, "cannot score the batch; its errors are not watched")
            }
        }
        scores
    }

    /// Publishes one record per transition and waits for JetStream to store them all.
    async fn publish(
        &self,
        transitions: &[(usize, Transition)],
        batch: &[Incoming],
        decoded: &[Result<ExampleRecord, Rejection>],
        live: Option<&Loaded>,
    ) -> Result<(), Failure> {
        let context = RecordContext {
            model: &self.model,
            live_version: live.map(Loaded::version),
            live: live.map(|l| &l.manifest.schema),
        };
        let subject = self.io.subjects.control(&self.model, "drift");
        let mut acks = Vec::with_capacity(transitions.len());
        for (i, transition) in transitions {
            let Ok(example) = &decoded[*i] else {
                continue;
            };
            let record = control::record(context, transition, example, batch[*i].published);
            control::log_transition(&record);
            let body = serde_json::to_vec(&record)
                .map_err(|e| Failure::new("encode a drift record", e))?;
            let message = PublishMessage::build()
                .payload(Bytes::from(body))
                .message_id(control::message_id(&self.model, transition));
            acks.push(
                self.io
                    .js
                    .send_publish(subject.clone(), message)
                    .await
                    .map_err(|e| Failure::new("publish a drift record", e))?,
            );
        }
        try_join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
            .await
            .map_err(|e| Failure::new("publish a drift record", e))?;
        Ok(())
    }

    fn count(&self, tally: &Tally) {
        let observed = |stream: &str, n: u64| {
            self.metrics
                .observations
                .get_or_create(&StreamLabel {
                    stream: stream.to_string(),
                })
                .inc_by(n);
        };
        observed("features", tally.features);
        observed("error", tally.errors);
        self.metrics.error_resets.inc_by(tally.resets);
        let f = &tally.feedback;
        let outcomes = [
            f.held,
            f.overflow,
            f.untimed,
            f.dropped,
            f.positives,
            f.negatives,
            f.unmatched,
        ];
        for (outcome, n) in crate::metrics::FEEDBACK_OUTCOMES.iter().zip(outcomes) {
            self.metrics
                .feedback
                .get_or_create(&crate::metrics::FeedbackLabel::new(outcome))
                .inc_by(n);
        }
        self.metrics.improvements.inc_by(tally.improvements);
        for (detector, error, level) in &tally.detections {
            self.metrics
                .detections
                .get_or_create(&DetectionLabel::new(*detector, *error, *level))
                .inc();
        }
        for (state, _) in &tally.transitions {
            self.metrics
                .episodes
                .get_or_create(&crate::metrics::StateLabel::new(*state))
                .inc();
        }
        for requested in &tally.reactions {
            self.metrics
                .reactions
                .get_or_create(&crate::metrics::ReactionLabel::new(*requested))
                .inc();
        }
    }
}

impl Processor for DriftProcessor {
    /// Handles the batch in stream order: examples under the stored mark are acknowledged, new
    /// ones are folded (or refused) strictly in sequence and held until the checkpoint holding
    /// them is written, and an example whose predecessor has not been seen yet waits for it.
    async fn process(&mut self, batch: &mut [Incoming]) -> Vec<Disposition> {
        if self.stale
            && let Err(failure) = self.load().await
        {
            return batch
                .iter()
                .map(|_| Disposition::Retry(failure.duplicate()))
                .collect();
        }
        let decoded: Vec<Result<ExampleRecord, Rejection>> = batch
            .iter()
            .map(|m| ExampleRecord::decode(&m.payload))
            .collect();
        let (mut working, mut tally) = match &self.pending {
            Some(pending) => (pending.checkpoint.clone(), pending.tally.clone()),
            None => (self.stored.clone(), Tally::default()),
        };
        // One snapshot of the live version for the whole batch: every example is scored first,
        // by the version the events will name.
        let live: Option<Arc<Loaded>> = self.io.live.current();
        let scores = self.score(live.as_deref(), batch, &decoded, working.last_sequence);

        let outstanding = self.outstanding();
        let policy = ReactionPolicy {
            reaction: self.reaction,
            outstanding: outstanding.as_deref(),
        };
        let live_schema = live.as_deref().map(|l| &l.manifest.schema);
        let stored_mark = self.stored.last_sequence;
        let mut mark = working.last_sequence;
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].stream_sequence);
        let mut dispositions: Vec<Option<Disposition>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        let mut new = Vec::new();
        let mut transitions: Vec<(usize, Transition)> = Vec::new();
        let mut waiting = false;
        for i in order {
            let sequence = batch[i].stream_sequence;
            if waiting {
                dispositions[i] = Some(Disposition::Defer(Failure::new(
                    "drift",
                    "waiting for an earlier example",
                )));
                continue;
            }
            if sequence <= stored_mark {
                dispositions[i] = Some(Disposition::Ack);
                continue;
            }
            if sequence <= mark {
                // Folded into the checkpoint not yet written (or a second copy in this batch):
                // acknowledged with it.
                dispositions[i] = Some(Disposition::Hold);
                continue;
            }
            if let Err(failure) = self.io.order.admit(sequence, &mut mark, "drift").await {
                waiting = true;
                dispositions[i] = Some(Disposition::Defer(failure));
                continue;
            }
            mark = sequence;
            new.push(i);
            match &decoded[i] {
                Err(rejection) => {
                    // Refused examples count as handled: the mark covers them too.
                    self.bank.pass(&mut working, sequence);
                    dispositions[i] = Some(Disposition::RejectHeld(rejection.clone()));
                }
                Ok(example) => {
                    let plan = control::plan(example, live_schema);
                    let folded = self.bank.fold(
                        &mut working,
                        &control::observation(sequence, example, &plan, scores[i]),
                        &policy,
                    );
                    tally.features += u64::from(folded.new);
                    tally.errors += folded.errors_observed;
                    tally.feedback.add(&folded.feedback);
                    tally.improvements += folded.improvements;
                    if let Some(Some(left)) = folded.error_reset {
                        tracing::info!(model = %self.model, left, now = working.error_version(), sequence, "live moved to another chain of versions; error detectors start afresh");
                        tally.resets += 1;
                    }
                    for finding in &folded.findings {
                        tracing::debug!(model = %self.model, detector = %finding.detector, monitored = %control::monitored(finding.target), level = finding.level.as_str(),
                            statistic = finding.statistic, threshold = finding.threshold, sequence, "detector signal");
                        tally.detections.push((
                            finding.detector,
                            finding.target == Target::Error,
                            finding.level,
                        ));
                    }
                    if let Some(transition) = folded.transition {
                        let label = episode_label(&transition.episode, live_schema);
                        tally.transitions.push((transition.state(), label));
                        if transition.state() == EpisodeState::Drift
                            && let Some(decision) = &transition.episode.reaction
                        {
                            match decision {
                                freshet_drift::episodes::ReactionDecision::Requested { .. } => {
                                    tally.reactions.push(true)
                                }
                                freshet_drift::episodes::ReactionDecision::Withheld { .. } => {
                                    tally.reactions.push(false)
                                }
                                freshet_drift::episodes::ReactionDecision::NotConfigured => {}
                            }
                        }
                        transitions.push((i, transition));
                    }
                    dispositions[i] = Some(Disposition::Hold);
                }
            }
        }
        let overflow = working_overflow(&tally, self.pending.as_ref());
        if overflow > 0 {
            // Counted and logged once per batch: a stream whose event time stands still (or a
            // horizon's views beyond --pending-views) fills the line, and the examples beyond it
            // are never judged.
            tracing::warn!(model = %self.model, declined = overflow, held = working.pending_views(), capacity = self.bank.config().pending.capacity,
                "the line of examples waiting for their label is full; examples beyond it are not judged");
        }
        if !transitions.is_empty()
            && let Err(failure) = self
                .publish(&transitions, batch, &decoded, live.as_deref())
                .await
        {
            // Nothing of this batch is kept: it is folded again, and published again under the
            // same ids, when it comes back.
            for &i in &new {
                dispositions[i] = Some(Disposition::Retry(failure.duplicate()));
            }
            return finish(dispositions);
        }
        if let Some(promotion) = self.promotion.as_mut() {
            // `new` is in stream order. The gate's trials and its line of examples waiting for
            // final labels live in memory: a redelivered batch is judged again, which only
            // repeats evidence the window already weighs.
            // The live version's scores are the ones computed above for the error detectors.
            let labelled: Vec<(u64, &ExampleRecord, Option<Scored>)> = new
                .iter()
                .filter_map(|&i| {
                    decoded[i]
                        .as_ref()
                        .ok()
                        .map(|e| (batch[i].stream_sequence, e, scores[i]))
                })
                .collect();
            promotion.judge(live.as_ref(), &labelled).await;
        }
        if !new.is_empty() {
            self.pending = Some(Pending {
                checkpoint: working,
                tally,
            });
        }
        finish(dispositions)
    }

    /// Writes the checkpoint holding every held message, by compare-and-set on the revision read.
    async fn commit(&mut self, _final_commit: bool) -> Result<Commit, Failure> {
        let Some(pending) = &self.pending else {
            return Ok(Commit::Durable);
        };
        let bytes = serde_json::to_vec(&pending.checkpoint)
            .map_err(|e| Failure::new("encode the drift checkpoint", e))?;
        if bytes.len() > self.io.max_checkpoint_bytes {
            tracing::error!(model = %self.model, bytes = bytes.len(), max = self.io.max_checkpoint_bytes,
                "the drift checkpoint is too large for one message; lower --psi-reference-size or watch fewer features");
            return Err(Failure::new(
                "write the drift checkpoint",
                format!(
                    "{} bytes exceed the server's max payload of {}",
                    bytes.len(),
                    self.io.max_checkpoint_bytes
                ),
            ));
        }
        match compare_and_set(
            &self.io.checkpoints,
            &self.key,
            Bytes::from(bytes),
            self.revision,
        )
        .await
        {
            Ok(revision) => {
                self.metrics.checkpoint_writes.inc();
                if let Some(pending) = self.pending.take() {
                    self.count(&pending.tally);
                    if let Some((state, label)) = pending.tally.transitions.last() {
                        let open = (*state != EpisodeState::Resolved).then(|| label.clone());
                        self.show_open(open);
                    }
                    self.metrics
                        .pending_views
                        .set(pending.checkpoint.pending_views() as i64);
                    self.stored = pending.checkpoint;
                }
                self.revision = revision;
                Ok(Commit::Durable)
            }
            Err(CasError::Conflict { .. }) => {
                self.metrics.checkpoint_conflicts.inc();
                tracing::warn!(model = %self.model, "drift checkpoint written by another writer; reading it and redelivering the batch");
                // The winner's checkpoint is read before the redelivered batch is handled.
                self.pending = None;
                self.stale = true;
                Ok(Commit::Abandoned)
            }
            Err(CasError::Failed(failure)) => Err(failure),
        }
    }
}

/// Examples this batch declined because the line waiting for labels was full: the tally's overflow less what the
/// batches folded before it (held, not yet written) declined.
fn working_overflow(tally: &Tally, before: Option<&Pending>) -> u64 {
    tally
        .feedback
        .overflow
        .saturating_sub(before.map_or(0, |p| p.tally.feedback.overflow))
}

fn finish(dispositions: Vec<Option<Disposition>>) -> Vec<Disposition> {
    dispositions
        .into_iter()
        .map(|d| {
            d.unwrap_or_else(|| Disposition::Retry(Failure::new("drift", "example left unhandled")))
        })
        .collect()
}

/// The open-episodes gauge's label for `episode`: its headline signal's detector and target.
fn episode_label(episode: &Episode, live: Option<&FeatureSchema>) -> EpisodeLabel {
    let headline = episode.headline();
    let target = match headline.target {
        Target::Feature(i) => Some((i, control::feature_name_of(i, live))),
        Target::Error => None,
    };
    EpisodeLabel::new(headline.detector, target)
}
