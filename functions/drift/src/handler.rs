//! drift's pure logic: the Page-Hinkley test (Page 1954; Hinkley 1971) on a stream of values,
//! and a bank of them, one per feature of a model's examples.
//!
//! Page-Hinkley tracks the cumulative deviation of each value from the running mean, less a
//! tolerance δ, and signals a change when that sum rises more than λ above its minimum (an upward
//! shift) or falls more than λ below its maximum (a downward one). Defaults follow River's
//! `PageHinkley`: min_instances 30, δ 0.005, λ 50, α (forgetting factor) 1 - 0.0001.

use serde::{Deserialize, Serialize};

/// Page-Hinkley parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PageHinkleyConfig {
    pub min_instances: u64,
    pub delta: f64,
    pub threshold: f64,
    pub alpha: f64,
}

impl Default for PageHinkleyConfig {
    fn default() -> Self {
        PageHinkleyConfig {
            min_instances: 30,
            delta: 0.005,
            threshold: 50.0,
            alpha: 1.0 - 0.0001,
        }
    }
}

/// One Page-Hinkley detector, two-sided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    config: PageHinkleyConfig,
    count: u64,
    mean: f64,
    sum_up: f64,
    min_up: f64,
    sum_down: f64,
    max_down: f64,
}

/// A detected change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The test statistic when it crossed the threshold.
    pub statistic: f64,
    /// Observations seen since the previous reset.
    pub observations: u64,
    pub upward: bool,
}

impl PageHinkley {
    pub fn new(config: PageHinkleyConfig) -> PageHinkley {
        PageHinkley {
            config,
            count: 0,
            mean: 0.0,
            sum_up: 0.0,
            min_up: 0.0,
            sum_down: 0.0,
            max_down: 0.0,
        }
    }

    fn reset(&mut self) {
        *self = PageHinkley::new(self.config);
    }

    /// Feeds one value; returns the change it reveals, if any (the detector then starts afresh).
    pub fn update(&mut self, x: f64) -> Option<Change> {
        if !x.is_finite() {
            return None;
        }
        self.count += 1;
        self.mean += (x - self.mean) / self.count as f64;
        self.sum_up = self.config.alpha * self.sum_up + (x - self.mean - self.config.delta);
        self.sum_down = self.config.alpha * self.sum_down + (x - self.mean + self.config.delta);
        self.min_up = self.min_up.min(self.sum_up);
        self.max_down = self.max_down.max(self.sum_down);
        if self.count < self.config.min_instances {
            return None;
        }
        let up = self.sum_up - self.min_up;
        let down = self.max_down - self.sum_down;
        let (statistic, upward) = if up >= down {
            (up, true)
        } else {
            (down, false)
        };
        if statistic > self.config.threshold {
            let change = Change {
                statistic,
                observations: self.count,
                upward,
            };
            self.reset();
            return Some(change);
        }
        None
    }
}

/// One detector per feature.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FeatureDetectors {
    config: PageHinkleyConfig,
    detectors: Vec<PageHinkley>,
}

impl FeatureDetectors {
    pub fn new(config: PageHinkleyConfig) -> FeatureDetectors {
        FeatureDetectors {
            config,
            detectors: Vec::new(),
        }
    }

    /// Feeds one example's features; returns (feature index, change) for each detection.
    pub fn update(&mut self, features: &[f32]) -> Vec<(usize, Change)> {
        if self.detectors.len() < features.len() {
            let config = self.config;
            self.detectors
                .resize_with(features.len(), || PageHinkley::new(config));
        }
        features
            .iter()
            .zip(self.detectors.iter_mut())
            .enumerate()
            .filter_map(|(i, (x, detector))| detector.update(f64::from(*x)).map(|c| (i, c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic noise source, so tests need no random-number crate.
    fn noise(i: u64) -> f64 {
        let x = (i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 33) as f64;
        x / (1u64 << 31) as f64 - 0.5
    }

    #[test]
    fn stays_quiet_on_a_stationary_stream() {
        let mut ph = PageHinkley::new(PageHinkleyConfig::default());
        assert!((0..5_000).all(|i| ph.update(1.0 + noise(i)).is_none()));
    }

    #[test]
    fn detects_a_mean_shift_soon_after_it_happens() {
        let mut ph = PageHinkley::new(PageHinkleyConfig::default());
        let change_at = 1_000u64;
        let detected = (0..3_000u64)
            .find(|&i| {
                ph.update(if i < change_at {
                    noise(i)
                } else {
                    5.0 + noise(i)
                })
                .is_some()
            })
            .expect("a shift of 5 is detected");
        assert!(
            detected > change_at && detected < change_at + 30,
            "detected at {detected}"
        );
    }

    #[test]
    fn detects_downward_shifts_too_and_ignores_non_finite_values() {
        let mut ph = PageHinkley::new(PageHinkleyConfig::default());
        assert!(ph.update(f64::NAN).is_none());
        let hit =
            (0..3_000u64).find_map(|i| ph.update(if i < 500 { 10.0 + noise(i) } else { noise(i) }));
        assert!(!hit.expect("detected").upward);
    }

    #[test]
    fn a_bank_reports_the_feature_that_moved() {
        let mut bank = FeatureDetectors::new(PageHinkleyConfig::default());
        let mut hits = Vec::new();
        for i in 0..2_000u64 {
            let moved = if i < 1_000 { 0.0 } else { 8.0 };
            hits.extend(bank.update(&[noise(i) as f32, (moved + noise(i + 7)) as f32]));
        }
        assert!(
            !hits.is_empty() && hits.iter().all(|(feature, _)| *feature == 1),
            "{hits:?}"
        );
    }
}
