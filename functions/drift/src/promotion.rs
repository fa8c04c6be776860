//! The promotion gate's adapter: scores each labelled example with the live version, the
//! candidate and the version live replaced, feeds the [`Gate`], and carries out what it
//! proposes by compare-and-set on the pointers in MODELS. Every decision is published on
//! `<prefix>.control.<model>.gate` with its evidence, and the pointer's cause (promotion,
//! rollback) and reason (the accuracies) say why it moved, so the pointer's history is the audit
//! trail.
//!
//! A pointer is only moved if it still names the versions that were judged; otherwise the
//! decision waits for the next example. A candidate is promoted only when it holds exactly the
//! live version's examples (train publishes both together), so train continues from it without
//! losing or repeating one.

use std::sync::Arc;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use chrono::Utc;
use freshet::control::{Comparison, GateAction, GateDecision, KIND_GATE};
use freshet::error::Failure;
use freshet::examples::ExampleRecord;
use freshet::ids::ModelName;
use freshet::subjects::Subjects;
use freshet_model::predicts_positive;
use freshet_model::store::follow::{Loaded, VersionCell};
use freshet_model::store::{CasError, Cause, PointerStore, Pointers, Slot, Verified};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::bank::Scored;
use crate::gate::{Gate, Judged, Proposal, Verdict};

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
            "Promotion gate decisions (promote, hold_for_forgetting, withdraw, rollback, confirm)",
            self.decisions.clone(),
        );
    }
}

/// The versions the gate compares with live (the batch brings live itself), as the followers keep them.
pub struct Versions {
    pub candidate: VersionCell,
    pub fallback: VersionCell,
}

pub struct Promotion {
    pub model: ModelName,
    pub gate: Gate,
    pub versions: Versions,
    pub pointers: Pointers,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub metrics: GateMetrics,
}

/// Each row's verdict under `model`: right or wrong where it had not learned the example.
fn verdicts(
    model: Option<&Loaded>,
    rows: &[(u64, &ExampleRecord, Option<Scored>)],
) -> Vec<Verdict> {
    let Some(model) = model else {
        return vec![Verdict::Absent; rows.len()];
    };
    let width = model.scorer.n_features();
    let scorable: Vec<Vec<f32>> = rows
        .iter()
        .filter(|(_, e, _)| e.features.len() == width)
        .map(|(_, e, _)| e.features.clone())
        .collect();
    // burn is blocking CPU work: keep it off the async workers' hot path.
    let Ok(scores) = tokio::task::block_in_place(|| model.scorer.score_batch(&scorable)) else {
        return vec![Verdict::Learned; rows.len()];
    };
    let mut scores = scores.into_iter();
    rows.iter()
        .map(|(sequence, example, _)| {
            if example.features.len() != width {
                return Verdict::Learned;
            }
            let score = scores.next().unwrap_or(0.5);
            if *sequence <= model.manifest.high_water_mark {
                Verdict::Learned
            } else {
                Verdict::Scored(predicts_positive(score) == (example.label >= 0.5))
            }
        })
        .collect()
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

impl Promotion {
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
        // Live was scored by the caller only where it had not learned the example.
        let live_verdicts: Vec<Verdict> = rows
            .iter()
            .map(|(_, example, scored)| match scored {
                Some(scored) => Verdict::Scored(
                    predicts_positive(scored.probability as f32) == (example.label >= 0.5),
                ),
                None => Verdict::Learned,
            })
            .collect();
        let candidate_verdicts = verdicts(candidate.as_deref(), rows);
        let fallback_verdicts = verdicts(fallback.as_deref(), rows);
        for (i, (_, example, _)) in rows.iter().enumerate() {
            let proposals = self.gate.observe(Judged {
                live_chain: live.manifest.lineage_root(),
                row: &example.features,
                label: example.label,
                live: live_verdicts[i],
                candidate: (
                    candidate_verdicts[i],
                    candidate.as_ref().map_or(0, |c| c.version()),
                ),
                candidate_chain: candidate.as_ref().map_or(0, |c| c.manifest.lineage_root()),
                fallback: (
                    fallback_verdicts[i],
                    fallback.as_ref().map_or(0, |f| f.version()),
                ),
            });
            let sequence = rows[i].0;
            let mut moved = false;
            for proposal in proposals {
                match self
                    .carry_out(
                        proposal,
                        live,
                        candidate.as_ref(),
                        fallback.as_ref(),
                        sequence,
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
                return;
            }
        }
    }

    /// Carries out one proposal; `Ok(true)` when a pointer moved.
    async fn carry_out(
        &mut self,
        proposal: Proposal,
        live: &Arc<Loaded>,
        candidate: Option<&Arc<Loaded>>,
        fallback: Option<&Arc<Loaded>>,
        sequence: u64,
    ) -> Result<bool, Failure> {
        match proposal {
            Proposal::Promote { recent, .. } => {
                let Some(candidate) = candidate else {
                    return Ok(false);
                };
                let held: Vec<&(Vec<f32>, f32)> = self.gate.held_back().collect();
                let held_back = compare(live, candidate, &held);
                if !self.gate.remembers(&held_back) {
                    self.gate.hold();
                    self.record(
                        GateAction::HoldForForgetting,
                        live,
                        candidate,
                        recent,
                        Some(held_back),
                        sequence,
                    )
                    .await?;
                    return Ok(false);
                }
                if candidate.manifest.high_water_mark != live.manifest.high_water_mark {
                    // Published apart (train between its two writes, or drift behind): wait.
                    return Ok(false);
                }
                let live_pointer = self.pointers.get(&self.model, Slot::Live).await?;
                let candidate_pointer = self.pointers.get(&self.model, Slot::Candidate).await?;
                if live_pointer.value.as_ref().map(|p| p.version) != Some(live.version())
                    || candidate_pointer.value.as_ref().map(|p| p.version)
                        != Some(candidate.version())
                {
                    return Ok(false);
                }
                let reason = format!(
                    "gate: promote (accuracy {:.3} vs {:.3} over {} recent examples; {:.3} vs {:.3} held back)",
                    recent.challenger_accuracy,
                    recent.live_accuracy,
                    recent.examples,
                    held_back.challenger_accuracy,
                    held_back.live_accuracy
                );
                // The candidate was loaded and verified to be judged.
                let promoted = self
                    .pointers
                    .promote(
                        &self.model,
                        &Verified::held(&candidate.manifest),
                        &reason,
                        live_pointer.revision,
                        candidate_pointer.revision,
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
                    live,
                    candidate,
                    recent,
                    Some(held_back),
                    sequence,
                )
                .await?;
                Ok(true)
            }
            Proposal::Withdraw { recent, .. } => {
                let Some(candidate) = candidate else {
                    return Ok(false);
                };
                let pointer = self.pointers.get(&self.model, Slot::Candidate).await?;
                if pointer.value.is_some() {
                    match self
                        .pointers
                        .withdraw(&self.model, Slot::Candidate, pointer.revision)
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
                    live,
                    candidate,
                    recent,
                    None,
                    sequence,
                )
                .await?;
                Ok(true)
            }
            Proposal::Rollback { recent, .. } => {
                let Some(fallback) = fallback else {
                    return Ok(false);
                };
                let live_pointer = self.pointers.get(&self.model, Slot::Live).await?;
                if live_pointer.value.as_ref().map(|p| p.version) != Some(live.version()) {
                    return Ok(false);
                }
                let reason = format!(
                    "gate: rollback (accuracy {:.3} vs {:.3} over {} recent examples)",
                    recent.challenger_accuracy, recent.live_accuracy, recent.examples
                );
                // The fallback was loaded and verified to be judged.
                let moved = self
                    .pointers
                    .move_to(
                        &self.model,
                        Slot::Live,
                        &Verified::held(&fallback.manifest),
                        Cause::Rollback,
                        &reason,
                        live_pointer.revision,
                    )
                    .await;
                match moved {
                    Ok(_) => {}
                    Err(CasError::Conflict { .. }) => return Ok(false),
                    Err(CasError::Failed(failure)) => return Err(failure),
                }
                self.close_rollback_trial();
                self.record(GateAction::Rollback, live, fallback, recent, None, sequence)
                    .await?;
                Ok(true)
            }
            Proposal::Confirm { recent, .. } => {
                let Some(fallback) = fallback else {
                    return Ok(false);
                };
                self.close_rollback_trial();
                self.record(GateAction::Confirm, live, fallback, recent, None, sequence)
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
        live: &Loaded,
        challenger: &Loaded,
        recent: Comparison,
        held_back: Option<Comparison>,
        sequence: u64,
    ) -> Result<(), Failure> {
        let decision = GateDecision {
            kind: KIND_GATE.to_string(),
            model: self.model.clone(),
            action,
            live_version: live.version(),
            challenger_version: challenger.version(),
            recent,
            held_back,
            rule: self.gate.config().describe(),
            sequence,
            at: Utc::now(),
        };
        tracing::warn!(model = %self.model, %action, live = live.version(), challenger = challenger.version(),
            live_accuracy = recent.live_accuracy, challenger_accuracy = recent.challenger_accuracy, examples = recent.examples, "gate decision");
        self.metrics
            .decisions
            .get_or_create(&ActionLabel {
                action: action.as_str().to_string(),
            })
            .inc();
        let body =
            serde_json::to_vec(&decision).map_err(|e| Failure::new("encode a gate decision", e))?;
        let message = PublishMessage::build()
            .payload(Bytes::from(body))
            .message_id(format!(
                "gate-{}-{action}-{}-{}-{sequence}",
                self.model,
                live.version(),
                challenger.version()
            ));
        self.js
            .send_publish(self.subjects.control(&self.model, KIND_GATE), message)
            .await
            .map_err(|e| Failure::new("publish a gate decision", e))?
            .await
            .map_err(|e| Failure::new("publish a gate decision", e))?;
        Ok(())
    }
}
