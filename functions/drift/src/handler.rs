//! drift's pure logic: a bank of two-sided Page-Hinkley detectors, one per feature of a model's
//! examples, each fed that feature's values in order.
//!
//! The detector itself, [`PageHinkley`](crate::detectors::PageHinkley) with River's defaults
//! (min_instances 30, δ 0.005, λ 50, α 1 - 0.0001), lives in `detectors/page_hinkley.rs`.

use serde::{Deserialize, Serialize};

pub use crate::detectors::PageHinkleyConfig;
use crate::detectors::{Detector, DetectorError, PageHinkley};

/// A detected change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The test statistic when it crossed the threshold.
    pub statistic: f64,
    /// Observations seen since the previous detection, including this one.
    pub observations: u64,
    pub upward: bool,
}

/// One detector per feature, each started from the same fresh detector.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FeatureDetectors {
    fresh: PageHinkley,
    detectors: Vec<PageHinkley>,
}

impl FeatureDetectors {
    /// A bank whose detectors run with `config`, refused if a parameter is out of range.
    pub fn new(config: PageHinkleyConfig) -> Result<FeatureDetectors, DetectorError> {
        Ok(FeatureDetectors {
            fresh: PageHinkley::new(config)?,
            detectors: Vec::new(),
        })
    }

    /// Feeds one example's features; returns (feature index, change) for each detection. A
    /// non-finite feature value is skipped: that feature's detector ignores it.
    pub fn update(&mut self, features: &[f32]) -> Vec<(usize, Change)> {
        if self.detectors.len() < features.len() {
            self.detectors.resize(features.len(), self.fresh.clone());
        }
        features
            .iter()
            .zip(self.detectors.iter_mut())
            .enumerate()
            .filter_map(|(i, (x, detector))| {
                let detection = detector.update(f64::from(*x)).ok()?;
                detection.is_drift().then(|| {
                    (
                        i,
                        Change {
                            statistic: detection.statistic,
                            observations: detector.observations(),
                            upward: detector.upward(),
                        },
                    )
                })
            })
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
    fn a_bank_reports_the_feature_that_moved() {
        let mut bank = FeatureDetectors::new(PageHinkleyConfig::default()).unwrap();
        let mut hits = Vec::new();
        for i in 0..2_000u64 {
            let moved = if i < 1_000 { 0.0 } else { 8.0 };
            hits.extend(bank.update(&[noise(i) as f32, (moved + noise(i + 7)) as f32]));
        }
        assert!(
            !hits.is_empty() && hits.iter().all(|(feature, _)| *feature == 1),
            "{hits:?}"
        );
        let (_, change) = hits[0];
        assert!(change.upward && change.statistic > 50.0);
        assert!(change.observations > 1_000 && change.observations < 1_030);
    }

    #[test]
    fn a_bank_skips_non_finite_features() {
        let mut bank = FeatureDetectors::new(PageHinkleyConfig::default()).unwrap();
        for i in 0..100u64 {
            let hits = bank.update(&[f32::NAN, noise(i) as f32, f32::INFINITY]);
            assert!(hits.is_empty());
        }
        assert_eq!(bank.detectors[0].observations(), 0);
        assert_eq!(bank.detectors[1].observations(), 100);
    }
}
