//! `--population`: a model's population as train runs it and drift's gate judges it, in this
//! process, on a stream file.
//!
//! Every member (`--population`, e.g. `auto`: logistic, mlp and fourier with the shipped
//! settings) learns every batch, each row scored by each member before its own step on it. Live
//! begins as the first member (train's default kind). After each batch, as train publishes a
//! version per batch, the challenger train's rule chooses ([`crate::selection`], the very module
//! train runs) is "published" as the candidate: a snapshot of it, and one of live. The rows of
//! the next batch, which neither snapshot has learned, are judged by drift's gate
//! ([`crate::gate`], the very module drift runs, with its default thresholds); when it proposes a
//! promotion and the candidate passes the forgetting guard on the gate's held-back sample, the
//! candidate's member is live from the next batch on, and the member it replaced stays a
//! challenger. The accuracy reported is that of what was served: each row's prequential
//! prediction by the member live when it arrived.
//!
//! What differs from the pipeline: the promotion takes effect at the next batch (through the
//! pipeline, when drift's gate reads the examples and train next publishes); a candidate not
//! offered at a version is absent until offered again (through the pipeline, the stale version
//! stays in the slot but cannot be promoted, as it does not hold live's examples); and no
//! rollback trial runs (the gate keeps the replaced version as a fallback for one).

use std::time::{Duration, Instant};

use anyhow::Context;
use freshet_model::{Dimensions, ModelConfig, ModelScorer, Trainer, predicts_positive};
use serde::Serialize;

use crate::Stream;
use crate::gate::{Gate, GateConfig, Judged, Proposal, Verdict};
use crate::selection::{self, Selection, SelectionConfig, Standing};

/// One promotion the gate made.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Promotion {
    /// The row (0-based, file order) after whose batch the promoted member became live.
    pub(crate) row: usize,
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
}

/// What one pass of the population measured.
pub(crate) struct PopulationPass {
    /// Each row's served prediction, right or wrong, in file order.
    pub(crate) hits: Vec<bool>,
    pub(crate) log_loss_sum: f64,
    /// Each member's own prequential accuracy over the whole file.
    pub(crate) members: Vec<(&'static str, f64)>,
    pub(crate) promotions: Vec<Promotion>,
    /// Time inside the members' `train_batch` calls, and the snapshots and gate scoring.
    pub(crate) train: Duration,
}

/// A member's accuracy over its most recent rows, as train's metrics window holds it.
struct Window {
    capacity: usize,
    hits: std::collections::VecDeque<bool>,
}

impl Window {
    fn push(&mut self, hit: bool) {
        self.hits.push_back(hit);
        if self.hits.len() > self.capacity {
            self.hits.pop_front();
        }
    }

    fn standing(&self, member: usize) -> Standing {
        let n = self.hits.len();
        Standing {
            member,
            accuracy: self.hits.iter().filter(|h| **h).count() as f64 / n.max(1) as f64,
            examples: n as u64,
        }
    }
}

/// A published version: its number, the member, and a scorer of it as it was.
struct Published {
    version: u64,
    member: usize,
    scorer: ModelScorer,
}

fn snapshot(trainer: &Trainer) -> anyhow::Result<ModelScorer> {
    Ok(ModelScorer::from_bytes(&trainer.to_bytes()?)?)
}

/// Accuracy of `scorer` on `rows`.
fn right(scorer: &ModelScorer, row: &[f32], label: f32) -> anyhow::Result<bool> {
    Ok(predicts_positive(scorer.score(row)?) == (label >= 0.5))
}

/// One pass of the population `declared` (as `train --population` reads it) over `stream`,
/// `batch` rows per batch, with train's metrics window of `window` rows.
pub(crate) fn run(
    stream: &Stream,
    declared: &str,
    batch: usize,
    window: usize,
) -> anyhow::Result<PopulationPass> {
    let configs = selection::members(declared, &ModelConfig::default(), Dimensions::default())
        .map_err(|e| anyhow::anyhow!("--population: {e}"))?;
    anyhow::ensure!(!configs.is_empty(), "--population names no member");
    let width = stream.features.len();
    let mut trainers = configs
        .iter()
        .map(|c| Trainer::new(c, width))
        .collect::<Result<Vec<_>, _>>()?;
    let mut windows: Vec<Window> = configs
        .iter()
        .map(|_| Window {
            capacity: window,
            hits: Default::default(),
        })
        .collect();
    let mut correct = vec![0usize; configs.len()];
    let choice = SelectionConfig {
        margin: selection::MARGIN,
        min_examples: selection::min_examples(window),
    };
    let mut selection = Selection::default();
    let mut gate = Gate::new(GateConfig::default());
    let (mut live, mut live_chain, mut next_version) = (0usize, 1u64, 1u64);
    let mut live_version: Option<Published> = None;
    let mut candidate: Option<Published> = None;
    let mut pass = PopulationPass {
        hits: Vec::with_capacity(stream.rows.len()),
        log_loss_sum: 0.0,
        members: Vec::new(),
        promotions: Vec::new(),
        train: Duration::ZERO,
    };
    for (index, (rows, labels)) in stream
        .rows
        .chunks(batch)
        .zip(stream.labels.chunks(batch))
        .enumerate()
    {
        let start = Instant::now();
        // The gate judges the batch with the versions published before it.
        // Like drift, it reads every labelled example, with or without a candidate (the
        // forgetting guard's held-back sample fills from them).
        let mut promote = None;
        if let Some(l) = &live_version {
            for (row, &label) in rows.iter().zip(labels) {
                let (verdict, version, chain) = match &candidate {
                    Some(c) => (
                        Verdict::Scored(right(&c.scorer, row, label)?),
                        c.version,
                        c.member as u64 + 1,
                    ),
                    None => (Verdict::Absent, 0, 0),
                };
                let proposals = gate.observe(Judged {
                    live_chain,
                    row,
                    label,
                    live: Verdict::Scored(right(&l.scorer, row, label)?),
                    candidate: (verdict, version),
                    candidate_chain: chain,
                    fallback: (Verdict::Absent, 0),
                });
                let Some(c) = &candidate else {
                    continue;
                };
                for proposal in proposals {
                    match proposal {
                        Proposal::Promote { .. } => {
                            let (mut l_right, mut c_right) = (0usize, 0usize);
                            let held: Vec<(Vec<f32>, f32)> = gate.held_back().cloned().collect();
                            for (row, label) in &held {
                                l_right += usize::from(right(&l.scorer, row, *label)?);
                                c_right += usize::from(right(&c.scorer, row, *label)?);
                            }
                            let n = held.len().max(1) as f64;
                            let held_back = freshet::control::Comparison {
                                examples: held.len(),
                                live_accuracy: l_right as f64 / n,
                                challenger_accuracy: c_right as f64 / n,
                            };
                            if gate.remembers(&held_back) {
                                promote = Some(c.member);
                            } else {
                                gate.hold();
                            }
                        }
                        Proposal::Withdraw { .. } => gate.end_candidate_trial(),
                        Proposal::Rollback { .. } | Proposal::Confirm { .. } => {}
                    }
                }
                if promote.is_some() {
                    break;
                }
            }
        }
        // Every member learns the batch; what was served is live's prequential prediction.
        for (member, trainer) in trainers.iter_mut().enumerate() {
            let report = trainer
                .train_batch(rows, labels)
                .with_context(|| format!("batch {index} of member {member}"))?;
            correct[member] += report.correct;
            for (p, y) in report.scores.iter().zip(labels) {
                let hit = predicts_positive(*p) == (*y == 1.0);
                windows[member].push(hit);
                if member == live {
                    pass.hits.push(hit);
                }
            }
            if member == live {
                pass.log_loss_sum += report.log_loss_sum;
            }
        }
        // The versions of this batch: live's, and the chosen challenger's if it leads live.
        if let Some(member) = promote {
            pass.promotions.push(Promotion {
                row: (index + 1) * batch,
                from: configs[live].kind.name(),
                to: configs[member].kind.name(),
            });
            live = member;
            live_chain += 1;
            gate.end_candidate_trial();
            selection.reset();
        }
        live_version = Some(Published {
            version: next_version,
            member: live,
            scorer: snapshot(&trainers[live])?,
        });
        next_version += 1;
        let standings: Vec<Standing> = (0..configs.len())
            .filter(|&m| m != live)
            .map(|m| windows[m].standing(m))
            .collect();
        candidate = match selection.choose(&choice, &windows[live].standing(live), &standings) {
            Some(member) => {
                next_version += 1;
                Some(Published {
                    version: next_version - 1,
                    member,
                    scorer: snapshot(&trainers[member])?,
                })
            }
            None => None,
        };
        pass.train += start.elapsed();
    }
    let rows = stream.rows.len() as f64;
    pass.members = configs
        .iter()
        .zip(&correct)
        .map(|(c, n)| (c.kind.name(), *n as f64 / rows))
        .collect();
    debug_assert!(live_version.is_none_or(|v| v.member == live));
    Ok(pass)
}
