//! The promotion gate's adapter: scores each labelled example with the live version, the
//! candidate and the version live replaced, feeds the [`Gate`], and carries out what it
//! proposes by compare-and-set on the pointers in MODELS. Every decision is published on
//! `<prefix>.control.<model>.gate` with its evidence, and the pointer's cause (promotion,
//! rollback) and reason (the accuracies) say why it moved, so the pointer's history is the audit
//! trail.
//!
//! What to do about a proposal is decided in [`crate::gate::plan_step`], pure: a pointer is only
//! moved if it still names the versions that were judged; otherwise the decision waits for the
//! next example. A candidate is promoted only when it holds exactly the live version's examples
//! (train publishes both together), so train continues from it without losing or repeating one.

use std::sync::Arc;

use async_nats::jetstream;
use bytes::Bytes;
use chrono::Utc;
use freshet::control::{Comparison, ControlSink, GateAction, GateDecision, KIND_GATE};
use freshet::error::Failure;
use freshet::examples::ExampleRecord;
use freshet::ids::ModelName;
use freshet::subjects::Subjects;
use freshet_model::predicts_positive;
use freshet_model::store::follow::{Loaded, VersionCell};
use freshet_model::store::{
    CasError, Cause, Pointer, PointerStore, Pointers, Slot, Verified, Versioned,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::bank::Scored;
use crate::control::labelling;
use crate::gate::{Gate, Held, PointerNow, Proposal, Standing, Step, plan_step};
use crate::settling::{Score, Scoring, Settling};

/// Labels of the decision counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

/// The gate's decisions, by action.
#[derive(Clone, Default)]
pub struct GateMetrics {
    pub decisions: Family<ActionLabel, Counter>,
}

impl GateMetrics {
    pub fn register(&self, metrics: &freshet::metrics::Metrics) {
        metrics.register(
            "gate_decisions",
            "Promotion gate decisions (promote, hold_for_forgetting, withdraw, rollback, confirm, held_by_pin)",
            self.decisions.clone(),
        );
    }
}

/// The versions the gate compares with live (the batch brings live itself), as the followers keep them.
pub struct Versions {
    pub candidate: VersionCell,
    pub fallback: VersionCell,
}

/// The gate's adapter for one model. Generic over where the pointers live and where its
/// decisions go (MODELS and CONTROL in production, memory in unit tests).
pub struct Promotion<P = Pointers, C = jetstream::Context> {
    pub model: ModelName,
    pub gate: Gate,
    pub versions: Versions,
    pub pointers: P,
    pub control: C,
    pub subjects: Subjects,
    pub metrics: GateMetrics,
    /// The examples judged, held until their labels are final.
    pub settling: Settling,
}

/// Each row's score under `model`: its probability where it had not learned the example.
fn scores(model: Option<&Loaded>, rows: &[(u64, &ExampleRecord, Option<Scored>)]) -> Vec<Score> {
    let Some(model) = model else {
        return vec![Score::Absent; rows.len()];
    };
    let width = model.scorer.n_features();
    let scorable: Vec<Vec<f32>> = rows
        .iter()
        .filter(|(_, e, _)| e.features.len() == width)
        .map(|(_, e, _)| e.features.clone())
        .collect();
    // burn is blocking CPU work: keep it off the async workers' hot path.
    let Ok(scores) = tokio::task::block_in_place(|| model.scorer.score_batch(&scorable)) else {
        return vec![Score::Learned; rows.len()];
    };
    let mut scores = scores.into_iter();
    rows.iter()
        .map(|(sequence, example, _)| {
            if example.features.len() != width {
                return Score::Learned;
            }
            let score = scores.next().unwrap_or(0.5);
            if *sequence <= model.manifest.high_water_mark {
                Score::Learned
            } else {
                Score::Probability(score)
            }
        })
        .collect()
}

/// A loaded version as the gate's plan sees it.
fn held(version: &Loaded) -> Held {
    Held {
        version: version.version(),
        high_water_mark: version.manifest.high_water_mark,
    }
}

/// Accuracy of `live` and `challenger` on the same rows.
fn compare(live: &Loaded, challenger: &Loaded, rows: &[&(Vec<f32>, f32)]) -> Comparison {
    let accuracy = |model: &Loaded| {
        let features: Vec<Vec<f32>> = rows.iter().map(|(f, _)| f.clone()).collect();
        let scores =
            tokio::task::block_in_place(|| model.scorer.score_batch(&features)).unwrap_or_default();
        let right = scores
            .iter()
            .zip(rows)
            .filter(|(s, (_, label))| predicts_positive(**s) == (*label >= 0.5))
            .count();
        right as f64 / rows.len().max(1) as f64
    };
    Comparison {
        examples: rows.len(),
        live_accuracy: accuracy(live),
        challenger_accuracy: accuracy(challenger),
    }
}

impl<P: PointerStore, C: ControlSink> Promotion<P, C> {
    /// Judges the batch's labelled examples (stream order) and acts on the first decision that
    /// moves a pointer; the rest of the batch is judged with the next one's versions.
    pub async fn judge(
        &mut self,
        live: Option<&Arc<Loaded>>,
        rows: &[(u64, &ExampleRecord, Option<Scored>)],
    ) {
        let Some(live) = live.filter(|_| !rows.is_empty()) else {
            return;
        };
        let candidate = self.versions.candidate.current();
        let fallback = self.versions.fallback.current();
        let live_chain = live.manifest.lineage_root();
        let candidate_version = candidate.as_ref().map_or(0, |c| c.version());
        let candidate_chain = candidate.as_ref().map_or(0, |c| c.manifest.lineage_root());
        let fallback_version = fallback.as_ref().map_or(0, |f| f.version());
        let candidate_scores = scores(candidate.as_deref(), rows);
        let fallback_scores = scores(fallback.as_deref(), rows);
        // After a pointer moved, the rest of the batch still goes into the line (its
        // corrections settle views scored before), but nothing more is judged until the next
        // batch, which is judged with the versions loaded then.
        let mut moved = false;
        for (i, (sequence, example, scored)) in rows.iter().enumerate() {
            let scoring = Scoring {
                live_chain,
                row: example.features.clone(),
                // Live was scored by the caller only where it had not learned the example.
                live: scored.map_or(Score::Learned, |s| Score::Probability(s.probability as f32)),
                candidate: (candidate_scores[i], candidate_version, candidate_chain),
                fallback: (fallback_scores[i], fallback_version),
            };
            let event_time = example.event_time.map(|t| t.timestamp_millis());
            self.settling.offer(
                *sequence,
                &labelling(example),
                example.label,
                event_time,
                scoring,
            );
            if moved {
                continue;
            }
            for (_, scoring, positive) in self.settling.release() {
                let proposals = self.gate.observe(scoring.judged(positive));
                for proposal in proposals {
                    match self
                        .carry_out(
                            proposal,
                            live,
                            candidate.as_ref(),
                            fallback.as_ref(),
                            *sequence,
                        )
                        .await
                    {
                        Ok(changed) => moved |= changed,
                        Err(failure) => {
                            tracing::warn!(model = %self.model, error = %failure, "the gate could not act; it tries again with the next example")
                        }
                    }
                }
                if moved {
                    // What else this release holds was scored by versions one of which is no
                    // longer where it was judged: the gate's trials begin again.
                    break;
                }
            }
        }
    }

    /// Carries out one proposal; `Ok(true)` when a pointer moved. What to do is decided by
    /// [`plan_step`] on what stands now: the versions judged, the held-back comparison (scored
    /// here, for a promotion) and the pointers as read here.
    async fn carry_out(
        &mut self,
        proposal: Proposal,
        live: &Arc<Loaded>,
        candidate: Option<&Arc<Loaded>>,
        fallback: Option<&Arc<Loaded>>,
        sequence: u64,
    ) -> Result<bool, Failure> {
        let held_back = match (proposal, candidate) {
            (Proposal::Promote { .. }, Some(candidate)) => {
                let held: Vec<&(Vec<f32>, f32)> = self.gate.held_back().collect();
                Some(compare(live, candidate, &held))
            }
            _ => None,
        };
        let live_pointer = self.pointers.get(&self.model, Slot::Live).await?;
        let candidate_pointer = self.pointers.get(&self.model, Slot::Candidate).await?;
        let now = |read: &Versioned<Pointer>| PointerNow {
            version: read.value.as_ref().map(|p| p.version),
            revision: read.revision,
        };
        let standing = Standing {
            live: held(live),
            candidate: candidate.map(|c| held(c)),
            fallback: fallback.map(|f| held(f)),
            held_back,
            live_pointer: now(&live_pointer),
            candidate_pointer: now(&candidate_pointer),
            pinned: self
                .pointers
                .hold(&self.model)
                .await?
                .value
                .and_then(|hold| hold.pinned),
        };
        let live_version = live.version();
        match plan_step(&self.gate, &proposal, &standing) {
            Step::Wait => Ok(false),
            Step::HoldForForgetting {
                candidate,
                recent,
                held_back,
            } => {
                self.gate.hold();
                self.record(
                    GateAction::HoldForForgetting,
                    live_version,
                    candidate,
                    recent,
                    Some(held_back),
                    sequence,
                )
                .await?;
                Ok(false)
            }
            Step::Promote {
                candidate: version,
                recent,
                held_back,
                reason,
                live_revision,
                candidate_revision,
            } => {
                // The plan promotes only the candidate it was given.
                let Some(candidate) = candidate else {
                    return Ok(false);
                };
                // The candidate was loaded and verified to be judged.
                let promoted = self
                    .pointers
                    .promote(
                        &self.model,
                        &Verified::held(&candidate.manifest),
                        &reason,
                        live_revision,
                        candidate_revision,
                    )
                    .await;
                match promoted {
                    Ok(promoted) => {
                        if let Some(error) = promoted.candidate_left {
                            tracing::warn!(model = %self.model, %error, "promoted, but the candidate pointer could not be removed");
                        }
                    }
                    Err(CasError::Conflict { .. }) => return Ok(false),
                    Err(CasError::Failed(failure)) => return Err(failure),
                }
                self.close_candidate_trial();
                self.record(
                    GateAction::Promote,
                    live_version,
                    version,
                    recent,
                    Some(held_back),
                    sequence,
                )
                .await?;
                Ok(true)
            }
            Step::Withdraw {
                candidate,
                recent,
                revision,
            } => {
                if let Some(revision) = revision {
                    match self
                        .pointers
                        .withdraw(&self.model, Slot::Candidate, revision)
                        .await
                    {
                        Ok(()) => {}
                        Err(CasError::Conflict { .. }) => return Ok(false),
                        Err(CasError::Failed(failure)) => return Err(failure),
                    }
                }
                self.close_candidate_trial();
                self.record(
                    GateAction::Withdraw,
                    live_version,
                    candidate,
                    recent,
                    None,
                    sequence,
                )
                .await?;
                Ok(true)
            }
            Step::Rollback {
                to,
                recent,
                reason,
                live_revision,
            } => {
                // The plan rolls back only to the fallback it was given.
                let Some(fallback) = fallback else {
                    return Ok(false);
                };
                // The fallback was loaded and verified to be judged.
                let moved = self
                    .pointers
                    .move_to(
                        &self.model,
                        Slot::Live,
                        &Verified::held(&fallback.manifest),
                        Cause::Rollback,
                        &reason,
                        live_revision,
                    )
                    .await;
                match moved {
                    Ok(_) => {}
                    Err(CasError::Conflict { .. }) => return Ok(false),
                    Err(CasError::Failed(failure)) => return Err(failure),
                }
                self.close_rollback_trial();
                self.record(
                    GateAction::Rollback,
                    live_version,
                    to,
                    recent,
                    None,
                    sequence,
                )
                .await?;
                Ok(true)
            }
            Step::HeldByPin {
                pinned,
                promote,
                challenger,
                recent,
            } => {
                tracing::info!(model = %self.model, pinned, challenger, promote, "live is pinned; the gate holds back");
                // Judged afresh: a promotion after a new window of examples, a rollback not at all
                // (the pinned version is the operator's choice, not a jump to be judged).
                if promote {
                    self.gate.hold();
                } else {
                    self.close_rollback_trial();
                }
                self.record(
                    GateAction::HeldByPin,
                    live_version,
                    challenger,
                    recent,
                    None,
                    sequence,
                )
                .await?;
                Ok(false)
            }
            Step::Confirm { replaced, recent } => {
                self.close_rollback_trial();
                self.record(
                    GateAction::Confirm,
                    live_version,
                    replaced,
                    recent,
                    None,
                    sequence,
                )
                .await?;
                Ok(false)
            }
        }
    }

    /// Ends the candidate trial and forgets the candidate (promoted or withdrawn).
    fn close_candidate_trial(&mut self) {
        self.gate.end_candidate_trial();
        self.versions.candidate.clear();
    }

    /// Ends the rollback trial and forgets the fallback (rolled back to, or the jump confirmed).
    fn close_rollback_trial(&mut self) {
        self.gate.end_rollback_trial();
        self.versions.fallback.clear();
    }

    /// Publishes the decision on CONTROL and waits for JetStream to store it.
    async fn record(
        &self,
        action: GateAction,
        live: u64,
        challenger: u64,
        recent: Comparison,
        held_back: Option<Comparison>,
        sequence: u64,
    ) -> Result<(), Failure> {
        let decision = GateDecision {
            kind: KIND_GATE.to_string(),
            model: self.model.clone(),
            action,
            live_version: live,
            challenger_version: challenger,
            recent,
            held_back,
            rule: self.gate.config().describe(),
            sequence,
            at: Utc::now(),
        };
        tracing::warn!(model = %self.model, %action, live, challenger,
            live_accuracy = recent.live_accuracy, challenger_accuracy = recent.challenger_accuracy, examples = recent.examples, "gate decision");
        self.metrics
            .decisions
            .get_or_create(&ActionLabel {
                action: action.as_str().to_string(),
            })
            .inc();
        let body =
            serde_json::to_vec(&decision).map_err(|e| Failure::new("encode a gate decision", e))?;
        self.control
            .store(
                self.subjects.control(&self.model, KIND_GATE),
                Some(format!(
                    "gate-{}-{action}-{live}-{challenger}-{sequence}",
                    self.model
                )),
                Bytes::from(body),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use freshet::control::MemoryControl;
    use freshet_model::store::MemoryPointers;

    use freshet::examples::Feedback;

    use super::*;
    use crate::gate::GateConfig;

    /// A version of 3 features that learned the stream through `high_water_mark`.
    fn loaded(version: u64, high_water_mark: u64) -> Arc<Loaded> {
        let config = freshet_model::ModelConfig::default();
        let bytes = freshet_model::Trainer::new(&config, 3)
            .unwrap()
            .to_bytes()
            .unwrap();
        let manifest = freshet_model::Manifest {
            model: "m".into(),
            version,
            parent: None,
            config,
            schema: freshet::examples::FeatureSchema {
                name: "m".into(),
                version: 1,
                features: vec!["a".into(), "b".into(), "c".into()],
                monitoring: Vec::new(),
            },
            sha256: freshet_model::sha256_hex(&bytes),
            size_bytes: bytes.len() as u64,
            created_at: Utc::now(),
            step: 1,
            learned: None,
            high_water_mark,
            metrics: freshet_model::TrainingMetrics::at_chance(high_water_mark, 0),
            // Each a chain of its own.
            lineage: Some(version),
            traces: Vec::new(),
        };
        Arc::new(Loaded {
            manifest,
            scorer: freshet_model::ModelScorer::from_bytes(&bytes).unwrap(),
        })
    }

    fn pointer(version: &Loaded, cause: Cause) -> Option<Pointer> {
        Some(Pointer {
            version: version.version(),
            sha256: version.manifest.sha256.clone(),
            updated_at: Utc::now(),
            cause,
            reason: "set".into(),
        })
    }

    /// A gate on memory stores whose candidate trial ends after 20 comparable examples.
    fn promotion() -> Promotion<MemoryPointers, MemoryControl> {
        Promotion {
            model: ModelName::parse("m").unwrap(),
            gate: Gate::new(GateConfig {
                min_examples: 10,
                max_candidate_examples: 20,
                held_back: 5,
                horizon: 10,
                ..GateConfig::default()
            }),
            versions: Versions {
                candidate: VersionCell::default(),
                fallback: VersionCell::default(),
            },
            pointers: MemoryPointers::new(),
            control: MemoryControl::new(),
            subjects: Subjects::default(),
            metrics: GateMetrics::default(),
            settling: Settling::new(freshet_drift::pending::PendingConfig::default()),
        }
    }

    /// Labelled examples at sequences `from..from + n`, which live scored (it had not learned
    /// them).
    fn examples(from: u64, n: u64) -> Vec<(u64, ExampleRecord, Option<Scored>)> {
        (from..from + n)
            .map(|sequence| {
                let example = ExampleRecord {
                    id: format!("ex-{sequence}"),
                    model: ModelName::parse("m").unwrap(),
                    schema: None,
                    label: f32::from(sequence.is_multiple_of(2)),
                    features: vec![0.1, 0.2, 0.3],
                    source_event: sequence.to_string(),
                    event_time: None,
                    feedback: Default::default(),
                    corrects: None,
                    final_at: None,
                };
                let scored = Scored {
                    version: 5,
                    probability: 0.5,
                };
                (sequence, example, Some(scored))
            })
            .collect()
    }

    async fn judge(
        promotion: &mut Promotion<MemoryPointers, MemoryControl>,
        live: &Arc<Loaded>,
        rows: &[(u64, ExampleRecord, Option<Scored>)],
    ) {
        let rows: Vec<(u64, &ExampleRecord, Option<Scored>)> =
            rows.iter().map(|(s, e, scored)| (*s, e, *scored)).collect();
        promotion.judge(Some(live), &rows).await;
    }

    /// Live trained, and `candidate` named by the candidate pointer and loaded.
    fn offer(
        promotion: &mut Promotion<MemoryPointers, MemoryControl>,
        live: &Loaded,
        candidate: &Arc<Loaded>,
    ) {
        let model = promotion.model.clone();
        promotion
            .pointers
            .force(&model, Slot::Live, pointer(live, Cause::Train));
        promotion.pointers.force(
            &model,
            Slot::Candidate,
            pointer(candidate, Cause::Candidate),
        );
        promotion.versions.candidate.store(candidate.clone());
    }

    fn decisions(control: &MemoryControl) -> Vec<String> {
        control
            .published()
            .iter()
            .map(|p| p.json()["action"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_candidate_no_better_than_live_is_withdrawn_and_the_decision_recorded() {
        let mut promotion = promotion();
        let (live, candidate) = (loaded(5, 900), loaded(7, 900));
        let model = promotion.model.clone();
        offer(&mut promotion, &live, &candidate);
        // The same parameters as live: never better, withdrawn after 20 comparable examples.
        judge(&mut promotion, &live, &examples(901, 19)).await;
        assert!(decisions(&promotion.control).is_empty());
        judge(&mut promotion, &live, &examples(920, 1)).await;
        assert_eq!(decisions(&promotion.control), ["withdraw"]);
        let record = promotion.control.published()[0].json();
        assert_eq!(
            (
                record["live_version"].as_u64(),
                record["challenger_version"].as_u64()
            ),
            (Some(5), Some(7))
        );
        assert_eq!(
            promotion.control.published()[0].message_id.as_deref(),
            Some("gate-m-withdraw-5-7-920")
        );
        let left = promotion
            .pointers
            .get(&model, Slot::Candidate)
            .await
            .unwrap();
        assert_eq!(left.value, None, "the candidate pointer is removed");
        assert!(promotion.versions.candidate.current().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fake_negatives_are_judged_once_their_labels_are_final() {
        let mut promotion = promotion();
        let (live, candidate) = (loaded(5, 900), loaded(7, 900));
        offer(&mut promotion, &live, &candidate);
        let start = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let minutes = |n: i64| start + chrono::Duration::minutes(n);
        // Twenty views out at once as fake negatives, final a minute later.
        let mut views = examples(901, 20);
        for (_, view, _) in &mut views {
            view.label = 0.0;
            view.feedback = Feedback::FakeNegative;
            view.event_time = Some(start);
            view.final_at = Some(minutes(1));
        }
        judge(&mut promotion, &live, &views).await;
        assert!(
            decisions(&promotion.control).is_empty(),
            "nothing is judged while the labels may change"
        );
        // A correction settles one view; the correction itself is not judged.
        let mut correction = examples(921, 1);
        correction[0].1.label = 1.0;
        correction[0].1.feedback = Feedback::Correction;
        correction[0].1.corrects = Some("ex-901".into());
        correction[0].1.event_time = Some(start);
        judge(&mut promotion, &live, &correction).await;
        assert!(decisions(&promotion.control).is_empty());
        // Event time passes the views' final_at (and the lateness): all twenty are judged,
        // and the candidate, no better than live, is withdrawn at the twentieth.
        let mut later = examples(922, 1);
        later[0].1.event_time = Some(minutes(3));
        judge(&mut promotion, &live, &later).await;
        assert_eq!(decisions(&promotion.control), ["withdraw"]);
        assert_eq!(
            promotion.control.published()[0].message_id.as_deref(),
            Some("gate-m-withdraw-5-7-922")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_candidate_train_replaced_since_it_was_judged_stays() {
        let mut promotion = promotion();
        let (live, judged, newer) = (loaded(5, 900), loaded(7, 900), loaded(8, 900));
        let model = promotion.model.clone();
        promotion
            .pointers
            .force(&model, Slot::Live, pointer(&live, Cause::Train));
        // train published candidate 8 while the gate still judged 7.
        promotion
            .pointers
            .force(&model, Slot::Candidate, pointer(&newer, Cause::Candidate));
        promotion.versions.candidate.store(judged);
        judge(&mut promotion, &live, &examples(901, 20)).await;
        assert!(decisions(&promotion.control).is_empty());
        let left = promotion
            .pointers
            .get(&model, Slot::Candidate)
            .await
            .unwrap();
        assert_eq!(left.value.map(|p| p.version), Some(8));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_jump_no_worse_than_the_version_it_replaced_is_confirmed() {
        let mut promotion = promotion();
        let (live, replaced) = (loaded(5, 900), loaded(3, 400));
        let model = promotion.model.clone();
        promotion
            .pointers
            .force(&model, Slot::Live, pointer(&live, Cause::Operator));
        promotion.versions.fallback.store(replaced);
        judge(&mut promotion, &live, &examples(901, 10)).await;
        assert_eq!(decisions(&promotion.control), ["confirm"]);
        assert!(promotion.versions.fallback.current().is_none());
        let still = promotion.pointers.get(&model, Slot::Live).await.unwrap();
        assert_eq!(still.value.map(|p| p.version), Some(5), "live stays");
    }
}
