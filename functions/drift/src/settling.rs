//! The gate's examples held until their labels are final, so that versions are compared on the
//! labels users will have, not on fake negatives.
//!
//! With fake-negative weighting (featurize's default) every view reaches EXAMPLES at once as a
//! negative, and a correction follows if the user buys within the horizon. Judged as they come,
//! a view that converts is two rows, a negative and a positive, and every version calls exactly
//! one of them right whatever it predicts: converting views weigh nothing in an accuracy
//! comparison, and the versions are ranked only by the views that do not convert. The gate would
//! then promote whichever version predicts "no sale" more often, the opposite of what fake-negative
//! weighting teaches the model (the true conversion rate).
//!
//! So the gate scores each example when it arrives (every version in play, as before: what it
//! predicted then is what it is judged on) and holds the scores in the same line drift's error
//! detectors use ([`Pending`]): a correction settles its view as a positive, the event-time
//! watermark passing the view's `final_at` as a negative, and examples are released in stream
//! order once every view before them is settled. A correction itself is not judged; the view it
//! corrects is. Examples whose label is final when they come (a purchase with no view waiting,
//! every example under `--delayed-feedback wait`) pass straight through when nothing waits
//! before them, so the gate behaves as it always did on such streams.
//!
//! The line is in memory, like the gate's trials: after a restart both begin again. It follows
//! one chain of live versions; an example scored by another chain drops what the old chain
//! scored, whose live verdicts would be of a model no longer live.

use std::collections::HashMap;

use freshet_drift::bank::Labelling;
use freshet_drift::pending::{Hold, Pending, PendingConfig};
use freshet_model::predicts_positive;

use crate::gate::{Judged, Verdict};

/// How one version stood on an example when it arrived, before its label was known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Score {
    /// No such version loaded.
    Absent,
    /// The version had learned the example: not comparable.
    Learned,
    /// Its probability of class 1.
    Probability(f32),
}

impl Score {
    /// The verdict once the label is known.
    pub fn verdict(self, positive: bool) -> Verdict {
        match self {
            Score::Absent => Verdict::Absent,
            Score::Learned => Verdict::Learned,
            Score::Probability(p) => Verdict::Scored(predicts_positive(p) == positive),
        }
    }
}

/// One example as the versions in play scored it on arrival.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    /// The chain of the live version that scored it.
    pub live_chain: u64,
    pub row: Vec<f32>,
    pub live: Score,
    /// The candidate's score, its version and its chain.
    pub candidate: (Score, u64, u64),
    /// The score of the version live replaced, and its version.
    pub fallback: (Score, u64),
}

impl Scoring {
    /// The example as the gate judges it, its label final.
    pub fn judged(&self, positive: bool) -> Judged<'_> {
        Judged {
            live_chain: self.live_chain,
            row: &self.row,
            label: if positive { 1.0 } else { 0.0 },
            live: self.live.verdict(positive),
            candidate: (self.candidate.0.verdict(positive), self.candidate.1),
            candidate_chain: self.candidate.2,
            fallback: (self.fallback.0.verdict(positive), self.fallback.1),
        }
    }
}

/// What the line did with an example, for the gate's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// In line: released once its label is final and nothing waits before it.
    Held,
    /// A correction: it settled the view it names (`true`), or that view was not held.
    Corrected(bool),
    /// Not judged: the line was full, the view was held already, or a fake negative came
    /// without `final_at` (nobody says when its label is final).
    Declined,
}

/// The gate's examples whose labels are not final yet, in stream order.
#[derive(Debug, Clone)]
pub struct Settling {
    config: PendingConfig,
    line: Pending,
    scorings: HashMap<u64, Scoring>,
}

impl Settling {
    pub fn new(config: PendingConfig) -> Settling {
        Settling {
            config,
            line: Pending::default(),
            scorings: HashMap::new(),
        }
    }

    /// Examples in line (views waiting, and examples waiting for the views before them).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.scorings.len()
    }

    /// Offers the example at `sequence`, labelled `label` as `labelling` says, with event time
    /// `event_time` (ms since the epoch), scored on arrival as `scoring` says.
    pub fn offer(
        &mut self,
        sequence: u64,
        labelling: &Labelling<'_>,
        label: f32,
        event_time: Option<i64>,
        scoring: Scoring,
    ) -> Offered {
        if let Some(at) = event_time {
            self.line.advance(at);
        }
        let chain = scoring.live_chain;
        if self.line.chain() != Some(chain) {
            self.line.follow(chain);
            self.scorings.clear();
        }
        let hold = match labelling {
            Labelling::Final => self
                .line
                .judge(&self.config, sequence, chain, 0.0, label >= 0.5),
            Labelling::FakeNegative {
                id,
                final_at: Some(final_at),
            } => self.line.hold(
                &self.config,
                sequence,
                id,
                chain,
                0.0,
                final_at.timestamp_millis(),
            ),
            Labelling::FakeNegative { final_at: None, .. } => return Offered::Declined,
            Labelling::Correction { corrects } => {
                return Offered::Corrected(self.line.correct(corrects));
            }
        };
        if hold != Hold::Held {
            return Offered::Declined;
        }
        self.scorings.insert(sequence, scoring);
        Offered::Held
    }

    /// Settles the views the watermark has passed as negatives, and takes out, in stream
    /// order, every example whose label is final and before which no view waits, with its label.
    pub fn release(&mut self) -> Vec<(u64, Scoring, bool)> {
        self.line.settle_due(&self.config);
        self.line
            .release()
            .into_iter()
            .filter_map(|settled| {
                self.scorings
                    .remove(&settled.sequence)
                    .map(|scoring| (settled.sequence, scoring, settled.positive))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    const MINUTE: i64 = 60_000;

    fn config() -> PendingConfig {
        PendingConfig {
            capacity: 100,
            lateness_ms: 0,
        }
    }

    /// Live predicting `live`, a candidate (v7 of chain 5) predicting `candidate`.
    fn scoring(live: f32, candidate: f32) -> Scoring {
        Scoring {
            live_chain: 1,
            row: vec![live, candidate],
            live: Score::Probability(live),
            candidate: (Score::Probability(candidate), 7, 5),
            fallback: (Score::Absent, 0),
        }
    }

    fn fake_negative(id: &str, final_at_ms: i64) -> Labelling<'_> {
        Labelling::FakeNegative {
            id,
            final_at: DateTime::from_timestamp_millis(final_at_ms),
        }
    }

    #[test]
    fn a_view_is_judged_on_its_final_label_in_stream_order() {
        let mut line = Settling::new(config());
        // Two views at minute 0, final at minute 30; a final positive after them.
        let offered = [
            line.offer(
                1,
                &fake_negative("a", 30 * MINUTE),
                0.0,
                Some(0),
                scoring(0.9, 0.1),
            ),
            line.offer(
                2,
                &fake_negative("b", 30 * MINUTE),
                0.0,
                Some(0),
                scoring(0.2, 0.8),
            ),
            line.offer(3, &Labelling::Final, 1.0, Some(MINUTE), scoring(0.7, 0.3)),
        ];
        assert_eq!(offered, [Offered::Held; 3]);
        assert!(
            line.release().is_empty(),
            "nothing is final before the views"
        );
        // The user of view "a" buys: its correction settles it, but "b" still waits.
        let correction = Labelling::Correction { corrects: "a" };
        let offered = line.offer(4, &correction, 1.0, Some(2 * MINUTE), scoring(0.9, 0.1));
        assert_eq!(offered, Offered::Corrected(true));
        let released = line.release();
        assert_eq!(released.len(), 1);
        let (sequence, scoring_a, positive) = &released[0];
        assert_eq!((*sequence, *positive), (1, true));
        let judged = scoring_a.judged(*positive);
        assert_eq!(judged.live, Verdict::Scored(true));
        assert_eq!(judged.candidate, (Verdict::Scored(false), 7));
        assert_eq!(judged.candidate_chain, 5);
        assert_eq!(judged.label, 1.0);
        // Time passes "b"'s final_at: it settles as a negative, and the final positive behind
        // it comes out too; the correction was never in line.
        line.offer(
            5,
            &Labelling::Final,
            0.0,
            Some(31 * MINUTE),
            scoring(0.1, 0.1),
        );
        let released: Vec<(u64, bool)> = line
            .release()
            .into_iter()
            .map(|(sequence, _, positive)| (sequence, positive))
            .collect();
        assert_eq!(released, [(2, false), (3, true), (5, false)]);
        assert_eq!(line.len(), 0);
    }

    #[test]
    fn with_final_labels_nothing_waits() {
        let mut line = Settling::new(config());
        for sequence in 1..=5 {
            line.offer(sequence, &Labelling::Final, 1.0, None, scoring(0.6, 0.4));
            let released = line.release();
            assert_eq!(released.len(), 1);
            assert_eq!(released[0].0, sequence);
        }
    }

    #[test]
    fn what_cannot_be_judged_is_declined_and_another_chain_starts_afresh() {
        let mut line = Settling::new(PendingConfig {
            capacity: 2,
            lateness_ms: 0,
        });
        let untimed = Labelling::FakeNegative {
            id: "u",
            final_at: None,
        };
        assert_eq!(
            line.offer(1, &untimed, 0.0, Some(0), scoring(0.5, 0.5)),
            Offered::Declined
        );
        line.offer(
            2,
            &fake_negative("a", MINUTE),
            0.0,
            Some(0),
            scoring(0.5, 0.5),
        );
        assert_eq!(
            line.offer(
                3,
                &fake_negative("a", MINUTE),
                0.0,
                Some(0),
                scoring(0.5, 0.5)
            ),
            Offered::Declined,
            "a view held already"
        );
        line.offer(
            4,
            &fake_negative("b", MINUTE),
            0.0,
            Some(0),
            scoring(0.5, 0.5),
        );
        assert_eq!(
            line.offer(
                5,
                &fake_negative("c", MINUTE),
                0.0,
                Some(0),
                scoring(0.5, 0.5)
            ),
            Offered::Declined,
            "the line is full"
        );
        assert_eq!(
            line.offer(
                6,
                &Labelling::Correction { corrects: "z" },
                1.0,
                None,
                scoring(0.5, 0.5)
            ),
            Offered::Corrected(false)
        );
        // Live moves to another chain: the views the old one scored are dropped.
        let mut other = scoring(0.5, 0.5);
        other.live_chain = 2;
        line.offer(7, &Labelling::Final, 1.0, Some(0), other);
        let released = line.release();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].0, 7);
        assert_eq!(line.len(), 0);
    }

    #[test]
    fn converting_views_count_for_the_version_that_called_them() {
        // Judged on arrival, a converting view is a negative and a positive, one right for
        // every version; judged on its final label it counts for the version that saw the sale.
        let mut line = Settling::new(config());
        line.offer(
            1,
            &fake_negative("a", MINUTE),
            0.0,
            Some(0),
            scoring(0.2, 0.9),
        );
        line.offer(
            2,
            &Labelling::Correction { corrects: "a" },
            1.0,
            Some(0),
            scoring(0.2, 0.9),
        );
        let released = line.release();
        assert_eq!(released.len(), 1);
        let judged = released[0].1.judged(released[0].2);
        assert_eq!(judged.live, Verdict::Scored(false));
        assert_eq!(judged.candidate.0, Verdict::Scored(true));
    }
}
