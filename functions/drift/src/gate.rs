//! The promotion gate's rules, pure: which version should be live, judged on labelled examples.
//!
//! Two trials run on the examples drift reads, each comparing the live version with a
//! challenger on the same examples, counting only examples neither has learned (above both
//! versions' high-water marks), so neither is flattered by its training data:
//!
//! - **Candidate trial**, while `<model>.candidate` names a version: over a sliding window of
//!   the last `min_examples` comparable examples, when the candidate's accuracy beats live's by
//!   `margin`, it is proposed for promotion. It must then pass the forgetting guard: scored on a
//!   held-back sample of older examples (drawn from the `horizon` examples before the recent
//!   window), it may not trail live by more than `forgetting_tolerance`. A candidate that has not
//!   won after `max_candidate_examples` comparable examples is withdrawn.
//! - **Rollback trial**, after live jumped to a version that does not continue the previous one
//!   (a promotion, by the gate or by hand): the version it replaced stays loaded as the
//!   fallback. After `min_examples` comparable examples, if the fallback beats live by
//!   `rollback_threshold`, live is rolled back to it; otherwise the jump is confirmed.
//!
//! Accuracy thresholds at one half, as the rest of freshet scores.

use std::collections::VecDeque;

use freshet::control::Comparison;

/// The gate's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateConfig {
    /// Comparable examples a decision needs (the recent window).
    pub min_examples: usize,
    /// Accuracy by which a candidate must beat live.
    pub margin: f64,
    /// Comparable examples after which a candidate that has not won is withdrawn.
    pub max_candidate_examples: usize,
    /// Older examples held back for the forgetting guard.
    pub held_back: usize,
    /// How far back (in examples before the recent window) the held-back sample reaches.
    pub horizon: usize,
    /// Accuracy a candidate may lose against live on the held-back sample.
    pub forgetting_tolerance: f64,
    /// Accuracy by which the replaced version must beat live to be made live again.
    pub rollback_threshold: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            min_examples: 500,
            margin: 0.02,
            max_candidate_examples: 20_000,
            held_back: 500,
            horizon: 5_000,
            forgetting_tolerance: 0.02,
            rollback_threshold: 0.05,
        }
    }
}

impl GateConfig {
    /// The rule in words, recorded with each decision.
    pub fn describe(&self) -> String {
        format!(
            "promote when the candidate beats live by {:.3} over {} examples neither learned and trails it by at most {:.3} on {} held-back older examples; withdraw after {}; roll back when the replaced version beats live by {:.3} over {}",
            self.margin,
            self.min_examples,
            self.forgetting_tolerance,
            self.held_back,
            self.max_candidate_examples,
            self.rollback_threshold,
            self.min_examples
        )
    }

    /// Held-back examples needed before any promotion: the guard is never skipped.
    fn held_back_needed(&self) -> usize {
        self.held_back.min(50)
    }
}

/// Where one version stands on one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No such version loaded.
    Absent,
    /// The version had learned the example: not comparable.
    Learned,
    /// Scored on it: whether it called the label right.
    Scored(bool),
}

/// One labelled example as the versions in play saw it.
#[derive(Debug, Clone, Copy)]
pub struct Judged<'a> {
    /// The chain of the live version (its first version): the trials' windows restart when live
    /// moves to another one, so a window never mixes two models' records.
    pub live_chain: u64,
    pub row: &'a [f32],
    pub label: f32,
    pub live: Verdict,
    /// The candidate and its version.
    pub candidate: (Verdict, u64),
    /// The candidate's chain: its trial restarts when train replaces it with a new fork.
    pub candidate_chain: u64,
    /// The version live replaced and its number.
    pub fallback: (Verdict, u64),
}

/// What the gate proposes; the adapter carries it out (and checks the forgetting guard).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Proposal {
    Promote { candidate: u64, recent: Comparison },
    Withdraw { candidate: u64, recent: Comparison },
    Rollback { to: u64, recent: Comparison },
    Confirm { replaced: u64, recent: Comparison },
}

/// Live against one challenger over a sliding window.
#[derive(Debug, Clone, Default)]
struct Trial {
    /// (live right, challenger right), oldest first.
    window: VecDeque<(bool, bool)>,
    /// Comparable examples since the trial began.
    seen: usize,
}

impl Trial {
    fn record(&mut self, live: bool, challenger: bool, capacity: usize) {
        self.window.push_back((live, challenger));
        if self.window.len() > capacity {
            self.window.pop_front();
        }
        self.seen += 1;
    }

    fn comparison(&self) -> Comparison {
        let n = self.window.len().max(1) as f64;
        let live = self.window.iter().filter(|(l, _)| *l).count() as f64;
        let challenger = self.window.iter().filter(|(_, c)| *c).count() as f64;
        Comparison {
            examples: self.window.len(),
            live_accuracy: live / n,
            challenger_accuracy: challenger / n,
        }
    }
}

/// The gate's state for one model (kept in memory: after a restart the trials begin again).
#[derive(Debug, Clone)]
pub struct Gate {
    config: GateConfig,
    candidate: Option<Trial>,
    rollback: Option<Trial>,
    live_chain: Option<u64>,
    candidate_chain: Option<u64>,
    /// The most recent labelled examples, not yet old enough to be held back.
    recent: VecDeque<(Vec<f32>, f32)>,
    /// A systematic sample of the examples that left `recent` within the horizon.
    held_back: VecDeque<(Vec<f32>, f32)>,
    aged: u64,
}

impl Gate {
    pub fn new(config: GateConfig) -> Gate {
        Gate {
            config,
            candidate: None,
            rollback: None,
            live_chain: None,
            candidate_chain: None,
            recent: VecDeque::new(),
            held_back: VecDeque::new(),
            aged: 0,
        }
    }

    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// The held-back sample the forgetting guard scores both versions on.
    pub fn held_back(&self) -> impl ExactSizeIterator<Item = &(Vec<f32>, f32)> {
        self.held_back.iter()
    }

    /// Whether a candidate that trails live by `held_back` on older examples may be promoted.
    pub fn remembers(&self, held_back: &Comparison) -> bool {
        held_back.challenger_accuracy >= held_back.live_accuracy - self.config.forgetting_tolerance
    }

    /// The candidate won recently but forgot older examples: judge it afresh on new ones.
    pub fn hold(&mut self) {
        if let Some(trial) = self.candidate.as_mut() {
            trial.window.clear();
        }
    }

    /// Ends the candidate trial (promoted or withdrawn).
    pub fn end_candidate_trial(&mut self) {
        self.candidate = None;
    }

    /// Ends the rollback trial (rolled back or confirmed).
    pub fn end_rollback_trial(&mut self) {
        self.rollback = None;
    }

    fn age(&mut self, row: &[f32], label: f32) {
        self.recent.push_back((row.to_vec(), label));
        if self.recent.len() <= self.config.min_examples {
            return;
        }
        let Some(old) = self.recent.pop_front() else {
            return;
        };
        let stride = (self.config.horizon / self.config.held_back.max(1)).max(1) as u64;
        if self.aged.is_multiple_of(stride) {
            self.held_back.push_back(old);
            if self.held_back.len() > self.config.held_back {
                self.held_back.pop_front();
            }
        }
        self.aged += 1;
    }

    /// Folds one labelled example into the trials and says what, if anything, should change.
    pub fn observe(&mut self, judged: Judged<'_>) -> Vec<Proposal> {
        let config = self.config;
        let mut proposals = Vec::new();
        self.age(judged.row, judged.label);
        if self.live_chain.replace(judged.live_chain) != Some(judged.live_chain) {
            self.hold();
        }
        if self.candidate_chain.replace(judged.candidate_chain) != Some(judged.candidate_chain) {
            self.candidate = None;
        }

        let (candidate, candidate_version) = judged.candidate;
        match (candidate, judged.live) {
            (Verdict::Absent, _) => self.candidate = None,
            (Verdict::Scored(challenger), Verdict::Scored(live)) => {
                let trial = self.candidate.get_or_insert_with(Trial::default);
                trial.record(live, challenger, config.min_examples);
                let recent = trial.comparison();
                if recent.examples >= config.min_examples
                    && recent.advantage() >= config.margin
                    && self.held_back.len() >= config.held_back_needed()
                {
                    proposals.push(Proposal::Promote {
                        candidate: candidate_version,
                        recent,
                    });
                } else if trial.seen >= config.max_candidate_examples {
                    proposals.push(Proposal::Withdraw {
                        candidate: candidate_version,
                        recent,
                    });
                }
            }
            _ => {
                self.candidate.get_or_insert_with(Trial::default);
            }
        }

        let (fallback, fallback_version) = judged.fallback;
        match (fallback, judged.live) {
            (Verdict::Absent, _) => self.rollback = None,
            (Verdict::Scored(challenger), Verdict::Scored(live)) => {
                let trial = self.rollback.get_or_insert_with(Trial::default);
                trial.record(live, challenger, config.min_examples);
                let recent = trial.comparison();
                if recent.examples >= config.min_examples {
                    proposals.push(if recent.advantage() >= config.rollback_threshold {
                        Proposal::Rollback {
                            to: fallback_version,
                            recent,
                        }
                    } else {
                        Proposal::Confirm {
                            replaced: fallback_version,
                            recent,
                        }
                    });
                }
            }
            _ => {
                self.rollback.get_or_insert_with(Trial::default);
            }
        }
        proposals
    }
}

/// A version in play, as the adapter loaded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub version: u64,
    /// The last stream sequence it learned.
    pub high_water_mark: u64,
}

/// What a pointer names as the adapter read it, and the revision a move compares against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointerNow {
    pub version: Option<u64>,
    pub revision: u64,
}

/// What the adapter knows when it carries out a proposal: the versions judged and the pointers
/// as they stand now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    pub live: Held,
    pub candidate: Option<Held>,
    pub fallback: Option<Held>,
    /// Live and the candidate scored on the held-back sample, for a promotion.
    pub held_back: Option<Comparison>,
    pub live_pointer: PointerNow,
    pub candidate_pointer: PointerNow,
    /// The version an operator pinned live, if the model is pinned: nothing moves live.
    pub pinned: Option<u64>,
}

/// What the adapter does about one proposal.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing now: the challenger is not loaded, the candidate and live were published apart,
    /// or a pointer no longer names the version judged. The next example is judged with what is
    /// loaded then.
    Wait,
    /// The candidate won on recent examples but forgets older ones: record it, and judge it
    /// afresh on new examples ([`Gate::hold`]).
    HoldForForgetting {
        candidate: u64,
        recent: Comparison,
        held_back: Comparison,
    },
    /// Make the candidate live, by compare-and-set on both pointers at these revisions.
    Promote {
        candidate: u64,
        recent: Comparison,
        held_back: Comparison,
        reason: String,
        live_revision: u64,
        candidate_revision: u64,
    },
    /// Withdraw the candidate: remove its pointer at `revision` (`None`: it is gone already).
    Withdraw {
        candidate: u64,
        recent: Comparison,
        revision: Option<u64>,
    },
    /// Move live back to the version it replaced, by compare-and-set at `live_revision`.
    Rollback {
        to: u64,
        recent: Comparison,
        reason: String,
        live_revision: u64,
    },
    /// The jump stands: record it and forget the version live replaced.
    Confirm { replaced: u64, recent: Comparison },
    /// Live is pinned: the promotion (`promote`) or rollback the gate would have made is not
    /// made; record that it held back, and judge afresh.
    HeldByPin {
        pinned: u64,
        promote: bool,
        challenger: u64,
        recent: Comparison,
    },
}

/// Decides what to do about `proposal`, given what stands now. A pointer is only moved if it
/// still names the versions that were judged; a candidate is promoted only when it passes the
/// forgetting guard and holds exactly live's examples (train publishes both together), so train
/// continues from it without losing or repeating one.
pub fn plan_step(gate: &Gate, proposal: &Proposal, standing: &Standing) -> Step {
    let judged = |held: Option<Held>, version: u64| held.filter(|h| h.version == version);
    let names = |pointer: PointerNow, version: u64| pointer.version == Some(version);
    if let Some(pinned) = standing.pinned {
        match *proposal {
            Proposal::Promote { candidate, recent } => {
                return Step::HeldByPin {
                    pinned,
                    promote: true,
                    challenger: candidate,
                    recent,
                };
            }
            Proposal::Rollback { to, recent } => {
                return Step::HeldByPin {
                    pinned,
                    promote: false,
                    challenger: to,
                    recent,
                };
            }
            // Neither moves live.
            Proposal::Withdraw { .. } | Proposal::Confirm { .. } => {}
        }
    }
    match *proposal {
        Proposal::Promote { candidate, recent } => {
            let (Some(held), Some(held_back)) =
                (judged(standing.candidate, candidate), standing.held_back)
            else {
                return Step::Wait;
            };
            if !gate.remembers(&held_back) {
                return Step::HoldForForgetting {
                    candidate,
                    recent,
                    held_back,
                };
            }
            if held.high_water_mark != standing.live.high_water_mark
                || !names(standing.live_pointer, standing.live.version)
                || !names(standing.candidate_pointer, candidate)
            {
                return Step::Wait;
            }
            Step::Promote {
                candidate,
                recent,
                held_back,
                reason: format!(
                    "gate: promote (accuracy {:.3} vs {:.3} over {} recent examples; {:.3} vs {:.3} held back)",
                    recent.challenger_accuracy,
                    recent.live_accuracy,
                    recent.examples,
                    held_back.challenger_accuracy,
                    held_back.live_accuracy
                ),
                live_revision: standing.live_pointer.revision,
                candidate_revision: standing.candidate_pointer.revision,
            }
        }
        Proposal::Withdraw { candidate, recent } => {
            if judged(standing.candidate, candidate).is_none() {
                return Step::Wait;
            }
            match standing.candidate_pointer.version {
                None => Step::Withdraw {
                    candidate,
                    recent,
                    revision: None,
                },
                Some(version) if version == candidate => Step::Withdraw {
                    candidate,
                    recent,
                    revision: Some(standing.candidate_pointer.revision),
                },
                // train replaced the candidate since: the new one gets its own trial.
                Some(_) => Step::Wait,
            }
        }
        Proposal::Rollback { to, recent } => {
            if judged(standing.fallback, to).is_none()
                || !names(standing.live_pointer, standing.live.version)
            {
                return Step::Wait;
            }
            Step::Rollback {
                to,
                recent,
                reason: format!(
                    "gate: rollback (accuracy {:.3} vs {:.3} over {} recent examples)",
                    recent.challenger_accuracy, recent.live_accuracy, recent.examples
                ),
                live_revision: standing.live_pointer.revision,
            }
        }
        Proposal::Confirm { replaced, recent } => {
            if judged(standing.fallback, replaced).is_none() {
                return Step::Wait;
            }
            Step::Confirm { replaced, recent }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GateConfig {
        GateConfig {
            min_examples: 100,
            margin: 0.05,
            max_candidate_examples: 1_000,
            held_back: 50,
            horizon: 200,
            forgetting_tolerance: 0.05,
            rollback_threshold: 0.1,
        }
    }

    /// Right on `hits` of every 100 examples (the first `hits` of each hundred).
    fn right(n: usize, hits: usize) -> bool {
        n % 100 < hits
    }

    fn judged(row: &[f32], live: Verdict, candidate: Verdict, fallback: Verdict) -> Judged<'_> {
        Judged {
            live_chain: 1,
            row,
            label: 1.0,
            live,
            candidate: (candidate, 7),
            candidate_chain: 7,
            fallback: (fallback, 3),
        }
    }

    #[test]
    fn a_better_candidate_is_proposed_once_the_window_and_the_held_back_sample_fill() {
        let mut gate = Gate::new(config());
        let row = [0.0f32];
        let mut first = None;
        for n in 0..1_000 {
            let proposals = gate.observe(judged(
                &row,
                Verdict::Scored(right(n, 70)),
                Verdict::Scored(right(n, 90)),
                Verdict::Absent,
            ));
            if let Some(Proposal::Promote { candidate, recent }) = proposals.first() {
                assert_eq!(*candidate, 7);
                assert_eq!(recent.examples, 100);
                assert!((recent.advantage() - 0.2).abs() < 1e-9, "{recent:?}");
                first = Some(n);
                break;
            }
        }
        // 100 examples fill the window; 50 held back need 100 more to age past it, one in four
        // of the next 200 (horizon 200 / 50): the 300th example.
        assert_eq!(first, Some(296));
        assert_eq!(gate.held_back().len(), 50);
    }

    #[test]
    fn an_equal_candidate_is_withdrawn_and_in_sample_examples_do_not_count() {
        let mut gate = Gate::new(config());
        let row = [0.0f32];
        for n in 0..500 {
            // Learned by the candidate: not comparable, nothing proposed.
            let proposals = gate.observe(judged(
                &row,
                Verdict::Scored(true),
                Verdict::Learned,
                Verdict::Absent,
            ));
            assert!(proposals.is_empty(), "{n}");
        }
        let mut withdrawn = None;
        for n in 0..2_000 {
            let same = right(n, 80);
            let proposals = gate.observe(judged(
                &row,
                Verdict::Scored(same),
                Verdict::Scored(same),
                Verdict::Absent,
            ));
            if matches!(proposals.first(), Some(Proposal::Withdraw { .. })) {
                withdrawn = Some(n);
                break;
            }
            assert!(proposals.is_empty(), "{n}: {proposals:?}");
        }
        assert_eq!(withdrawn, Some(999));
    }

    #[test]
    fn a_worse_jump_is_rolled_back_and_a_good_one_confirmed() {
        let row = [0.0f32];
        let mut gate = Gate::new(config());
        let mut last = Vec::new();
        for n in 0..100 {
            last = gate.observe(judged(
                &row,
                Verdict::Scored(right(n, 40)),
                Verdict::Absent,
                Verdict::Scored(right(n, 85)),
            ));
            if n < 99 {
                assert!(last.is_empty());
            }
        }
        assert!(
            matches!(last[..], [Proposal::Rollback { to: 3, recent }] if recent.examples == 100),
            "{last:?}"
        );
        let mut gate = Gate::new(config());
        for n in 0..100 {
            last = gate.observe(judged(
                &row,
                Verdict::Scored(right(n, 80)),
                Verdict::Absent,
                Verdict::Scored(right(n, 85)),
            ));
        }
        assert!(
            matches!(last[..], [Proposal::Confirm { replaced: 3, .. }]),
            "{last:?}"
        );
    }

    #[test]
    fn the_forgetting_guard_applies_its_tolerance_and_a_hold_restarts_the_window() {
        let gate = Gate::new(config());
        let held = |live: f64, challenger: f64| Comparison {
            examples: 50,
            live_accuracy: live,
            challenger_accuracy: challenger,
        };
        assert!(gate.remembers(&held(0.9, 0.86)));
        assert!(!gate.remembers(&held(0.9, 0.84)));

        let mut gate = Gate::new(config());
        let row = [0.0f32];
        let mut promotions = Vec::new();
        for n in 0..700 {
            let proposals = gate.observe(judged(
                &row,
                Verdict::Scored(right(n, 50)),
                Verdict::Scored(right(n, 90)),
                Verdict::Absent,
            ));
            if !proposals.is_empty() {
                promotions.push(n);
                gate.hold();
            }
        }
        // Held at 296, then judged afresh on 100 new examples each time.
        assert_eq!(promotions, vec![296, 396, 496, 596, 696]);
    }

    fn comparison(live: f64, challenger: f64) -> Comparison {
        Comparison {
            examples: 100,
            live_accuracy: live,
            challenger_accuracy: challenger,
        }
    }

    /// Live is version 5 (through sequence 900), the candidate 7 (through 900), the version live
    /// replaced 3; both pointers name what was judged.
    fn standing() -> Standing {
        Standing {
            live: Held {
                version: 5,
                high_water_mark: 900,
            },
            candidate: Some(Held {
                version: 7,
                high_water_mark: 900,
            }),
            fallback: Some(Held {
                version: 3,
                high_water_mark: 400,
            }),
            held_back: Some(comparison(0.8, 0.79)),
            live_pointer: PointerNow {
                version: Some(5),
                revision: 11,
            },
            candidate_pointer: PointerNow {
                version: Some(7),
                revision: 12,
            },
            pinned: None,
        }
    }

    #[test]
    fn a_promotion_moves_both_pointers_only_as_they_were_judged() {
        let gate = Gate::new(config());
        let recent = comparison(0.7, 0.9);
        let promote = Proposal::Promote {
            candidate: 7,
            recent,
        };
        let Step::Promote {
            candidate,
            live_revision,
            candidate_revision,
            reason,
            held_back,
            ..
        } = plan_step(&gate, &promote, &standing())
        else {
            panic!("a promotion");
        };
        assert_eq!((candidate, live_revision, candidate_revision), (7, 11, 12));
        assert_eq!(held_back, comparison(0.8, 0.79));
        assert!(reason.contains("0.900 vs 0.700"), "{reason}");
        // Forgetting older examples (beyond the tolerance of 0.05): held, whatever the pointers.
        let mut forgets = standing();
        forgets.held_back = Some(comparison(0.8, 0.7));
        forgets.live_pointer.version = Some(6);
        assert_eq!(
            plan_step(&gate, &promote, &forgets),
            Step::HoldForForgetting {
                candidate: 7,
                recent,
                held_back: comparison(0.8, 0.7)
            }
        );
        // Each reason to wait: published apart, a pointer moved, the candidate replaced or gone,
        // the held-back sample not scored.
        let mut apart = standing();
        apart.candidate = Some(Held {
            version: 7,
            high_water_mark: 880,
        });
        let mut live_moved = standing();
        live_moved.live_pointer.version = Some(6);
        let mut candidate_moved = standing();
        candidate_moved.candidate_pointer.version = Some(8);
        let mut replaced = standing();
        replaced.candidate = Some(Held {
            version: 8,
            high_water_mark: 900,
        });
        let mut unloaded = standing();
        unloaded.candidate = None;
        let mut unscored = standing();
        unscored.held_back = None;
        for waits in [
            apart,
            live_moved,
            candidate_moved,
            replaced,
            unloaded,
            unscored,
        ] {
            assert_eq!(plan_step(&gate, &promote, &waits), Step::Wait, "{waits:?}");
        }
    }

    #[test]
    fn a_withdrawal_removes_only_the_candidate_judged() {
        let gate = Gate::new(config());
        let recent = comparison(0.8, 0.8);
        let withdraw = Proposal::Withdraw {
            candidate: 7,
            recent,
        };
        assert_eq!(
            plan_step(&gate, &withdraw, &standing()),
            Step::Withdraw {
                candidate: 7,
                recent,
                revision: Some(12)
            }
        );
        let mut gone = standing();
        gone.candidate_pointer.version = None;
        assert_eq!(
            plan_step(&gate, &withdraw, &gone),
            Step::Withdraw {
                candidate: 7,
                recent,
                revision: None
            },
            "a pointer removed already: the trial still ends"
        );
        let mut newer = standing();
        newer.candidate_pointer.version = Some(8);
        assert_eq!(plan_step(&gate, &withdraw, &newer), Step::Wait);
    }

    #[test]
    fn a_rollback_needs_live_as_judged_and_a_confirmation_only_the_fallback() {
        let gate = Gate::new(config());
        let recent = comparison(0.6, 0.8);
        let rollback = Proposal::Rollback { to: 3, recent };
        let Step::Rollback {
            to, live_revision, ..
        } = plan_step(&gate, &rollback, &standing())
        else {
            panic!("a rollback");
        };
        assert_eq!((to, live_revision), (3, 11));
        let mut moved = standing();
        moved.live_pointer.version = Some(9);
        assert_eq!(plan_step(&gate, &rollback, &moved), Step::Wait);
        let confirm = Proposal::Confirm {
            replaced: 3,
            recent,
        };
        assert_eq!(
            plan_step(&gate, &confirm, &moved),
            Step::Confirm {
                replaced: 3,
                recent
            }
        );
        let mut forgotten = standing();
        forgotten.fallback = None;
        assert_eq!(plan_step(&gate, &rollback, &forgotten), Step::Wait);
        assert_eq!(plan_step(&gate, &confirm, &forgotten), Step::Wait);
    }

    #[test]
    fn a_pinned_model_is_neither_promoted_nor_rolled_back() {
        let gate = Gate::new(config());
        let mut pinned = standing();
        pinned.pinned = Some(5);
        let recent = comparison(0.6, 0.9);
        assert_eq!(
            plan_step(
                &gate,
                &Proposal::Promote {
                    candidate: 7,
                    recent
                },
                &pinned
            ),
            Step::HeldByPin {
                pinned: 5,
                promote: true,
                challenger: 7,
                recent
            }
        );
        assert_eq!(
            plan_step(&gate, &Proposal::Rollback { to: 3, recent }, &pinned),
            Step::HeldByPin {
                pinned: 5,
                promote: false,
                challenger: 3,
                recent
            }
        );
        // What does not move live goes on: a losing candidate is still withdrawn.
        assert!(matches!(
            plan_step(
                &gate,
                &Proposal::Withdraw {
                    candidate: 7,
                    recent
                },
                &pinned
            ),
            Step::Withdraw { .. }
        ));
        // The same promotion unpinned goes ahead.
        assert!(matches!(
            plan_step(
                &gate,
                &Proposal::Promote {
                    candidate: 7,
                    recent
                },
                &standing()
            ),
            Step::Promote { .. }
        ));
    }
}
