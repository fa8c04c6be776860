//! Data-quality quarantine, pure: a broken sensor or an upstream bug shows as a burst of invalid
//! or out-of-range values, and a model must not learn from it.
//!
//! Every example is assessed before it is learned. It is *flagged* when it could not be read as
//! an example, or when a feature lies far outside the range the model has learned from: beyond
//! `[min − k·span, max + k·span]` of the values accepted so far, where `span` is the wider of the
//! observed range and the largest magnitude seen (at least 1, so a feature that was constant may
//! still move by a few units). A flagged example is *suspect*: it is never learned, and goes to
//! the dead-letter subject (reason `quarantined`), kept for review and replay.
//!
//! When the flagged share of the last `window` examples reaches `enter`, a quarantine starts; it
//! ends once the share falls to `exit` or below. While it lasts, the learned ranges are frozen:
//! examples that are not suspect are learned as always, but do not widen the range, so a burst
//! cannot walk the accepted range out step by step with values each just inside it. Only what is
//! suspect is held out: an earlier design paused training for the whole burst, and a burst of 300
//! examples with values of ±1e12 then held out 4,042 valid examples that carried no sign of the
//! fault. Valid examples cannot be kept aside to learn after the burst either: a version records
//! one contiguous range of the stream, and held messages are bounded by the consumer's
//! acknowledgements in flight. The quarantine's start and end are reported (on CONTROL, by the
//! caller) with how many suspect examples it held out and how many valid ones it learned.

use std::collections::VecDeque;

/// When examples are held out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityConfig {
    /// Examples in the sliding window the flagged share is measured over.
    pub window: usize,
    /// Flagged share at which the quarantine starts.
    pub enter: f64,
    /// Flagged share at or below which it ends.
    pub exit: f64,
    /// `k`: how many spans beyond the learned range a value may lie.
    pub span_factor: f32,
    /// Examples accepted before ranges are enforced (until then only unreadable ones are flagged).
    pub warm_up: u64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            window: 200,
            enter: 0.2,
            exit: 0.05,
            span_factor: 4.0,
            warm_up: 200,
        }
    }
}

/// What to do with one example.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Learn,
    /// Held out, with why.
    HoldOut(String),
}

/// The quarantine began or finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Started,
    Ended,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Started => "started",
            Change::Ended => "ended",
        }
    }
}

/// A change of the quarantine state, with its counts, for CONTROL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub change: Change,
    /// The flagged share of the window when it changed.
    pub flagged_share: f64,
    /// Suspect examples held out: at the start, the window's; at the end, every one from the
    /// start's window on.
    pub suspect_held_out: u64,
    /// Valid examples learned while the quarantine lasted.
    pub valid_learned: u64,
}

/// The monitor of one model's examples.
#[derive(Debug, Clone)]
pub struct Quality {
    config: QualityConfig,
    /// Per feature, the smallest and largest accepted value.
    ranges: Vec<(f32, f32)>,
    accepted: u64,
    recent: VecDeque<bool>,
    flagged_in_window: usize,
    quarantined: bool,
    /// Suspect examples held out and valid ones learned since the quarantine started.
    suspect_held_out: u64,
    valid_learned: u64,
}

impl Quality {
    pub fn new(config: QualityConfig) -> Quality {
        Quality {
            config,
            ranges: Vec::new(),
            accepted: 0,
            recent: VecDeque::with_capacity(config.window),
            flagged_in_window: 0,
            quarantined: false,
            suspect_held_out: 0,
            valid_learned: 0,
        }
    }

    /// Whether a quarantine is on.
    #[cfg(test)]
    pub fn quarantined(&self) -> bool {
        self.quarantined
    }

    /// The accepted range of feature `i`.
    #[cfg(test)]
    fn range(&self, i: usize) -> (f32, f32) {
        self.ranges[i]
    }

    /// The flagged share of the window.
    pub fn flagged_share(&self) -> f64 {
        if self.recent.is_empty() {
            0.0
        } else {
            self.flagged_in_window as f64 / self.recent.len() as f64
        }
    }

    /// Why `row` is out of range, if it is.
    fn out_of_range(&self, row: &[f32]) -> Option<String> {
        if self.accepted < self.config.warm_up || self.ranges.len() != row.len() {
            return None;
        }
        row.iter()
            .zip(&self.ranges)
            .enumerate()
            .find_map(|(i, (&x, &(min, max)))| {
                let span = (max - min).max(min.abs()).max(max.abs()).max(1.0);
                let slack = self.config.span_factor * span;
                (x < min - slack || x > max + slack).then(|| {
                    format!("feature {i} = {x} is outside the learned range [{min}, {max}] by more than {slack}")
                })
            })
    }

    /// Assesses the next example (`None`: it could not be read as one) and says whether it may be
    /// learned, and whether the quarantine started or ended with it.
    pub fn assess(&mut self, row: Option<&[f32]>) -> (Verdict, Option<Transition>) {
        let flag = match row {
            None => Some("unreadable example".to_string()),
            Some(row) => self.out_of_range(row),
        };
        self.recent.push_back(flag.is_some());
        self.flagged_in_window += usize::from(flag.is_some());
        if self.recent.len() > self.config.window && self.recent.pop_front() == Some(true) {
            self.flagged_in_window -= 1;
        }
        let share = self.flagged_share();
        let change = if !self.quarantined && share >= self.config.enter {
            self.quarantined = true;
            // The flagged examples of the window were held out already, each as it came.
            self.suspect_held_out = self.flagged_in_window as u64;
            self.valid_learned = 0;
            Some(Change::Started)
        } else if self.quarantined && share <= self.config.exit {
            self.quarantined = false;
            Some(Change::Ended)
        } else {
            if self.quarantined {
                self.suspect_held_out += u64::from(flag.is_some());
            }
            None
        };
        let transition = change.map(|change| Transition {
            change,
            flagged_share: share,
            suspect_held_out: self.suspect_held_out,
            valid_learned: self.valid_learned,
        });
        let verdict = match (flag, row) {
            (Some(why), _) => Verdict::HoldOut(why),
            (None, Some(row)) => {
                if self.quarantined {
                    // Learned, but the range stays where it was before the burst.
                    self.valid_learned += 1;
                } else {
                    self.accept(row);
                }
                Verdict::Learn
            }
            (None, None) => unreachable!("an unreadable example is always flagged"),
        };
        (verdict, transition)
    }

    fn accept(&mut self, row: &[f32]) {
        if self.ranges.len() != row.len() {
            self.ranges = row.iter().map(|&x| (x, x)).collect();
        } else {
            for (range, &x) in self.ranges.iter_mut().zip(row) {
                range.0 = range.0.min(x);
                range.1 = range.1.max(x);
            }
        }
        self.accepted += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(n: u64) -> Vec<f32> {
        vec![(n % 10) as f32, 100.0 + (n % 7) as f32]
    }

    #[test]
    fn a_burst_holds_out_only_what_is_suspect_and_reports_both_counts() {
        let mut quality = Quality::new(QualityConfig::default());
        for n in 0..500 {
            assert_eq!(
                quality.assess(Some(&clean(n))).0,
                Verdict::Learn,
                "clean {n}"
            );
        }
        // A broken sensor: every other example reads 1e6 on feature 1.
        let mut transitions = Vec::new();
        let (mut held_out, mut learned_during) = (0u64, 0u64);
        for n in 0..200u64 {
            let mut row = clean(n);
            if n.is_multiple_of(2) {
                row[1] = 1e6;
            }
            let (verdict, transition) = quality.assess(Some(&row));
            assert_eq!(
                matches!(verdict, Verdict::HoldOut(_)),
                n.is_multiple_of(2),
                "{n}: the corrupt one is held out, the clean one learned"
            );
            transitions.extend(transition.map(|t| (n, t)));
            if quality.quarantined() {
                held_out += u64::from(n.is_multiple_of(2));
                learned_during += u64::from(!n.is_multiple_of(2));
            }
        }
        // 20% of a 200-example window is 40 flagged: the 40th corrupt example, at index 78.
        let (at, started) = transitions[0];
        assert_eq!((at, started.change), (78, Change::Started));
        assert_eq!((started.suspect_held_out, started.valid_learned), (40, 0));
        assert!(quality.quarantined());
        for n in 0..400u64 {
            let (verdict, transition) = quality.assess(Some(&clean(n)));
            assert_eq!(verdict, Verdict::Learn, "{n}");
            if quality.quarantined() {
                learned_during += 1;
            }
            transitions.extend(transition.map(|t| (n, t)));
        }
        // After 179 clean examples the window keeps the burst's last 21, of which 10 are
        // corrupt: 5%, and the quarantine ends.
        assert_eq!(transitions.len(), 2);
        let (at, ended) = transitions[1];
        assert_eq!((at, ended.change), (178, Change::Ended));
        // Every corrupt example since the start's window, and every clean one learned meanwhile.
        assert_eq!(ended.suspect_held_out, 40 + held_out - 1);
        assert_eq!(ended.suspect_held_out, 100);
        assert_eq!(ended.valid_learned, learned_during);
        assert_eq!(ended.valid_learned, 61 + 178);
    }

    #[test]
    fn ranges_do_not_widen_during_a_quarantine() {
        let mut quality = Quality::new(QualityConfig::default());
        for n in 0..300 {
            quality.assess(Some(&clean(n)));
        }
        assert_eq!(quality.range(0), (0.0, 9.0));
        // Unreadable examples start a quarantine; values inside the slack are learned meanwhile
        // but leave the range as it was.
        for _ in 0..50 {
            quality.assess(None);
        }
        assert!(quality.quarantined());
        assert_eq!(quality.assess(Some(&[40.0, 100.0])).0, Verdict::Learn);
        assert_eq!(quality.range(0), (0.0, 9.0));
        // Outside a quarantine the same value widens it.
        let mut calm = Quality::new(QualityConfig::default());
        for n in 0..300 {
            calm.assess(Some(&clean(n)));
        }
        calm.assess(Some(&[40.0, 100.0]));
        assert_eq!(calm.range(0), (0.0, 40.0));
    }

    #[test]
    fn scattered_outliers_are_held_out_without_pausing() {
        let mut quality = Quality::new(QualityConfig::default());
        for n in 0..300 {
            quality.assess(Some(&clean(n)));
        }
        for n in 0..1000u64 {
            let mut row = clean(n);
            if n % 50 == 0 {
                row[0] = -1e9;
            }
            let (verdict, transition) = quality.assess(Some(&row));
            assert_eq!(transition, None);
            assert_eq!(verdict == Verdict::Learn, n % 50 != 0, "{n}");
        }
    }

    #[test]
    fn ranges_follow_gradual_growth_and_unreadable_examples_count() {
        let mut quality = Quality::new(QualityConfig::default());
        // A count that keeps growing is never out of range.
        for n in 0..5000u64 {
            assert_eq!(quality.assess(Some(&[n as f32])).0, Verdict::Learn);
        }
        // Before warm-up nothing is out of range, but unreadable examples are flagged.
        let mut fresh = Quality::new(QualityConfig::default());
        assert_eq!(fresh.assess(Some(&[1e30])).0, Verdict::Learn);
        let changes: Vec<Change> = (0..50)
            .filter_map(|_| fresh.assess(None).1.map(|t| t.change))
            .collect();
        assert_eq!(changes, vec![Change::Started]);
    }
}
