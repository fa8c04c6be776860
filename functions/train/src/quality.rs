//! Data-quality quarantine, pure: a broken sensor or an upstream bug shows as a burst of invalid
//! or out-of-range values, and a model must not learn from it.
//!
//! Every example is assessed before it is learned. It is *flagged* when it could not be read as
//! an example, or when a feature lies far outside the range the model has learned from: beyond
//! `[min − k·span, max + k·span]` of the values accepted so far, where `span` is the wider of the
//! observed range and the largest magnitude seen (at least 1, so a feature that was constant may
//! still move by a few units). A flagged example is never learned. When the flagged share of the
//! last `window` examples reaches `enter`, training pauses: every example is held out, clean or
//! not, because a burst seldom corrupts every value it touches. Training resumes once the share
//! falls to `exit` or below. Held-out examples go to the dead-letter subject (reason
//! `quarantined`), kept for review and replay.

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

/// A change of the quarantine state, for CONTROL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Started,
    Ended,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Started => "started",
            Transition::Ended => "ended",
        }
    }
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
        }
    }

    /// Whether training is paused.
    #[cfg(test)]
    pub fn quarantined(&self) -> bool {
        self.quarantined
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
        let transition = if !self.quarantined && share >= self.config.enter {
            self.quarantined = true;
            Some(Transition::Started)
        } else if self.quarantined && share <= self.config.exit {
            self.quarantined = false;
            Some(Transition::Ended)
        } else {
            None
        };
        let verdict = match (flag, row) {
            (Some(why), _) => Verdict::HoldOut(why),
            (None, _) if self.quarantined => Verdict::HoldOut(format!(
                "training paused: {:.0}% of the last {} examples were invalid or out of range",
                share * 100.0,
                self.recent.len()
            )),
            (None, Some(row)) => {
                self.accept(row);
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
    fn a_burst_pauses_training_and_its_end_resumes_it() {
        let mut quality = Quality::new(QualityConfig::default());
        for n in 0..500 {
            assert_eq!(
                quality.assess(Some(&clean(n))).0,
                Verdict::Learn,
                "clean {n}"
            );
        }
        // A broken sensor: every other example reads 1e6 on feature 1.
        let mut started_at = None;
        for n in 0..200u64 {
            let mut row = clean(n);
            if n.is_multiple_of(2) {
                row[1] = 1e6;
            }
            let (verdict, transition) = quality.assess(Some(&row));
            if n.is_multiple_of(2) {
                assert!(
                    matches!(verdict, Verdict::HoldOut(_)),
                    "corrupt {n} is never learned"
                );
            }
            if transition == Some(Transition::Started) {
                started_at = Some(n);
            }
            if started_at.is_some() {
                assert!(matches!(verdict, Verdict::HoldOut(_)), "{n}: paused");
            }
        }
        // 20% of a 200-example window is 40 flagged: the 40th corrupt example, at index 78.
        assert_eq!(started_at, Some(78));
        assert!(quality.quarantined());
        let mut ended_at = None;
        for n in 0..400u64 {
            let (verdict, transition) = quality.assess(Some(&clean(n)));
            if transition == Some(Transition::Ended) {
                ended_at = Some(n);
            }
            assert_eq!(verdict == Verdict::Learn, ended_at.is_some(), "{n}");
        }
        // After 179 clean examples the window keeps the burst's last 21, of which 10 are
        // corrupt: 5%, and training resumes.
        assert_eq!(ended_at, Some(178));
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
        let transitions: Vec<_> = (0..50).filter_map(|_| fresh.assess(None).1).collect();
        assert_eq!(transitions, vec![Transition::Started]);
    }
}
