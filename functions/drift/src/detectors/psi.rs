//! The population stability index (PSI) between a reference window and a recent one, and a
//! streaming detector built on it.
//!
//! Bins come from the reference: the inner edges are its quantiles at 1/b, 2/b, …, (b-1)/b
//! (linear interpolation between order statistics, numpy's default), with repeated edges merged,
//! so a reference with many ties yields fewer bins. Bins are right-closed: a value equal to an
//! edge falls in the bin below it. With `r_i` and `c_i` the shares of the reference and of the
//! recent window in bin `i`, each raised to at least ε so that empty bins keep the logarithm
//! finite,
//!
//! ```text
//! PSI = Σ_i (c_i - r_i) · ln(c_i / r_i)
//! ```
//!
//! summed in bin order. The usual reading: below 0.1 stable, from 0.1 a moderate shift (reported
//! as a warning), from 0.25 a significant one (reported as a drift). Defaults: 10 bins, ε 1e-4.
//! River has no PSI; `river_parity.rs` checks these values against the same formula computed in
//! Python.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{Detection, Detector, DetectorError, Level, check_value, config_error};

/// PSI parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PsiConfig {
    /// Quantile bins taken from the reference (before merging repeated edges), at least 2.
    pub bins: usize,
    /// Floor on every bin's share, so that an empty bin contributes a large but finite term.
    pub epsilon: f64,
    /// PSI from which a shift is moderate (a warning).
    pub moderate: f64,
    /// PSI from which a shift is significant (a drift).
    pub significant: f64,
}

impl Default for PsiConfig {
    fn default() -> Self {
        PsiConfig {
            bins: 10,
            epsilon: 1e-4,
            moderate: 0.1,
            significant: 0.25,
        }
    }
}

impl PsiConfig {
    /// How a PSI value reads under these thresholds.
    pub fn level(&self, psi: f64) -> Level {
        if psi >= self.significant {
            Level::Drift
        } else if psi >= self.moderate {
            Level::Warning
        } else {
            Level::Stable
        }
    }

    fn validate(&self) -> Result<(), DetectorError> {
        if self.bins < 2 {
            return Err(config_error("psi", "bins must be ≥ 2"));
        }
        if !(self.epsilon > 0.0 && self.epsilon < 1.0) {
            return Err(config_error("psi", "epsilon must be in (0, 1)"));
        }
        if !(self.moderate.is_finite()
            && self.moderate > 0.0
            && self.significant.is_finite()
            && self.moderate <= self.significant)
        {
            return Err(config_error(
                "psi",
                "thresholds must satisfy 0 < moderate ≤ significant",
            ));
        }
        Ok(())
    }
}

/// Bins drawn from a reference window, with the reference's share in each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PsiBins {
    /// Inner edges, strictly increasing; there is one more bin than edges.
    edges: Vec<f64>,
    /// The reference's share in each bin, floored at ε.
    reference: Vec<f64>,
    epsilon: f64,
}

impl PsiBins {
    /// Bins from the finite values of `reference` (non-finite ones are left out, as missing);
    /// refused if none is finite or the configuration is invalid.
    pub fn from_reference(reference: &[f64], config: &PsiConfig) -> Result<PsiBins, DetectorError> {
        config.validate()?;
        let mut sorted: Vec<f64> = reference
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        if sorted.is_empty() {
            return Err(DetectorError::EmptyWindow {
                window: "reference",
            });
        }
        sorted.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = Vec::with_capacity(config.bins - 1);
        for i in 1..config.bins {
            let edge = quantile(&sorted, i as f64 / config.bins as f64);
            if edges.last().is_none_or(|last| edge > *last) {
                edges.push(edge);
            }
        }
        let mut bins = PsiBins {
            edges,
            reference: Vec::new(),
            epsilon: config.epsilon,
        };
        let counts = bins.counts(&sorted);
        bins.reference = bins.shares(&counts, sorted.len());
        Ok(bins)
    }

    /// The inner bin edges, strictly increasing.
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// The bin `x` falls in: the number of edges strictly below it.
    pub fn bin_of(&self, x: f64) -> usize {
        self.edges.partition_point(|edge| *edge < x)
    }

    /// PSI of the finite values of `recent` against the reference (non-finite ones are left out,
    /// as missing); refused if none is finite.
    pub fn psi(&self, recent: &[f64]) -> Result<f64, DetectorError> {
        let finite: Vec<f64> = recent.iter().copied().filter(|x| x.is_finite()).collect();
        if finite.is_empty() {
            return Err(DetectorError::EmptyWindow { window: "recent" });
        }
        Ok(self.psi_of_counts(&self.counts(&finite), finite.len()))
    }

    fn counts(&self, values: &[f64]) -> Vec<u64> {
        let mut counts = vec![0u64; self.edges.len() + 1];
        for x in values {
            counts[self.bin_of(*x)] += 1;
        }
        counts
    }

    fn shares(&self, counts: &[u64], n: usize) -> Vec<f64> {
        counts
            .iter()
            .map(|c| (*c as f64 / n as f64).max(self.epsilon))
            .collect()
    }

    /// PSI of a window of `n` values with `counts` per bin; `n` is at least 1.
    fn psi_of_counts(&self, counts: &[u64], n: usize) -> f64 {
        self.shares(counts, n)
            .iter()
            .zip(&self.reference)
            .fold(0.0, |sum, (c, r)| sum + (c - r) * (c / r).ln())
    }
}

/// Linear interpolation between order statistics of a sorted, non-empty slice (numpy's default
/// quantile, Hyndman and Fan's type 7).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let h = (n - 1) as f64 * q;
    let lo = h.floor() as usize;
    if lo + 1 >= n {
        return sorted[n - 1];
    }
    sorted[lo] + (h - lo as f64) * (sorted[lo + 1] - sorted[lo])
}

/// PSI of `recent` against `reference`, binned by `config`; non-finite values are left out of
/// both, as missing. Refused if either window holds no finite value.
pub fn psi(reference: &[f64], recent: &[f64], config: &PsiConfig) -> Result<f64, DetectorError> {
    PsiBins::from_reference(reference, config)?.psi(recent)
}

/// Parameters of [`StreamingPsi`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StreamingPsiConfig {
    pub psi: PsiConfig,
    /// Values that make up the reference, taken first from the stream.
    pub reference_size: usize,
    /// Values in the sliding recent window compared against it.
    pub recent_size: usize,
}

impl Default for StreamingPsiConfig {
    fn default() -> Self {
        StreamingPsiConfig {
            psi: PsiConfig::default(),
            reference_size: 1_000,
            recent_size: 500,
        }
    }
}

/// PSI on a stream: the first `reference_size` values make the reference, then each update
/// slides a window of the last `recent_size` values and, once it is full, reports its PSI with
/// the level of [`PsiConfig::level`]. After a drift the detector starts afresh: the next values
/// make a new reference. The statistic is the PSI, 0 until the recent window first fills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamingPsi {
    config: StreamingPsiConfig,
    /// The reference while it fills; emptied once the bins are drawn from it.
    filling: Vec<f64>,
    bins: Option<PsiBins>,
    /// Bin of each value in the recent window, oldest first.
    recent: VecDeque<usize>,
    /// Values of the recent window in each bin.
    counts: Vec<u64>,
    drift_detected: bool,
}

impl StreamingPsi {
    /// A detector with `config`, refused if a parameter is out of range.
    pub fn new(config: StreamingPsiConfig) -> Result<StreamingPsi, DetectorError> {
        config.psi.validate()?;
        if config.reference_size == 0 || config.recent_size == 0 {
            return Err(config_error(
                "psi",
                "reference_size and recent_size must be ≥ 1",
            ));
        }
        Ok(StreamingPsi::fresh(config))
    }

    fn fresh(config: StreamingPsiConfig) -> StreamingPsi {
        StreamingPsi {
            config,
            filling: Vec::with_capacity(config.reference_size),
            bins: None,
            recent: VecDeque::with_capacity(config.recent_size + 1),
            counts: Vec::new(),
            drift_detected: false,
        }
    }

    /// The configuration this detector runs with.
    pub fn config(&self) -> &StreamingPsiConfig {
        &self.config
    }

    /// The bins of the current reference, once it is complete.
    pub fn bins(&self) -> Option<&PsiBins> {
        self.bins.as_ref()
    }
}

impl Default for StreamingPsi {
    fn default() -> Self {
        StreamingPsi::fresh(StreamingPsiConfig::default())
    }
}

impl Detector for StreamingPsi {
    fn name(&self) -> &'static str {
        "psi"
    }

    fn update(&mut self, x: f64) -> Result<Detection, DetectorError> {
        let x = check_value(x)?;
        if self.drift_detected {
            self.reset();
        }
        let Some(bins) = &self.bins else {
            self.filling.push(x);
            if self.filling.len() == self.config.reference_size {
                let bins = PsiBins::from_reference(&self.filling, &self.config.psi)?;
                self.counts = vec![0; bins.edges.len() + 1];
                self.bins = Some(bins);
                self.filling = Vec::new();
            }
            return Ok(Detection::stable(0.0));
        };
        let bin = bins.bin_of(x);
        self.recent.push_back(bin);
        self.counts[bin] += 1;
        if self.recent.len() > self.config.recent_size
            && let Some(old) = self.recent.pop_front()
        {
            self.counts[old] -= 1;
        }
        if self.recent.len() < self.config.recent_size {
            return Ok(Detection::stable(0.0));
        }
        let value = bins.psi_of_counts(&self.counts, self.recent.len());
        let level = self.config.psi.level(value);
        self.drift_detected = level == Level::Drift;
        Ok(Detection::new(level, value))
    }

    fn reset(&mut self) {
        *self = StreamingPsi::fresh(self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_windows_score_zero() {
        let values: Vec<f64> = (0..1_000).map(|i| f64::from((i * 37) % 101)).collect();
        assert_eq!(psi(&values, &values, &PsiConfig::default()), Ok(0.0));
    }

    #[test]
    fn quantile_edges_by_hand() {
        // 0..=9 into 5 bins: edges at the 20th, 40th, 60th and 80th percentiles, (n - 1)·q
        // from the bottom; 9 · 0.6 rounds below 5.4, as it does in numpy.
        let reference: Vec<f64> = (0..10).map(f64::from).collect();
        let config = PsiConfig {
            bins: 5,
            ..Default::default()
        };
        let bins = PsiBins::from_reference(&reference, &config).unwrap();
        assert_eq!(bins.edges(), &[1.8, 3.6, 5.399_999_999_999_999_5, 7.2]);
        assert_eq!(bins.bin_of(1.8), 0);
        assert_eq!(bins.bin_of(1.9), 1);
        assert_eq!(bins.bin_of(100.0), 4);
        // Everything recent in the top bin: four empty bins at ε and one bin at 1.
        let value = bins.psi(&[9.0, 9.0]).unwrap();
        let expected =
            4.0 * (1e-4 - 0.2) * (1e-4f64 / 0.2).ln() + (1.0 - 0.2) * (1.0f64 / 0.2).ln();
        assert!((value - expected).abs() < 1e-12, "{value} vs {expected}");
        assert_eq!(config.level(value), Level::Drift);
    }

    #[test]
    fn ties_merge_edges_and_non_finite_values_are_left_out() {
        let reference = [0.0, 0.0, 0.0, 0.0, 1.0, f64::NAN];
        let bins = PsiBins::from_reference(&reference, &PsiConfig::default()).unwrap();
        // Quantiles 0.1 to 0.7 are all 0 and merge into one edge; 0.8 and 0.9 fall between the
        // last 0 and the 1.
        assert_eq!(bins.edges().len(), 3);
        assert_eq!(bins.edges()[0], 0.0);
        assert!((bins.edges()[1] - 0.2).abs() < 1e-12 && (bins.edges()[2] - 0.6).abs() < 1e-12);
        assert_eq!(
            bins.psi(&[f64::INFINITY]),
            Err(DetectorError::EmptyWindow { window: "recent" })
        );
        assert!(psi(&[f64::NAN], &[1.0], &PsiConfig::default()).is_err());
    }

    #[test]
    fn levels_follow_the_usual_thresholds() {
        let config = PsiConfig::default();
        assert_eq!(config.level(0.05), Level::Stable);
        assert_eq!(config.level(0.1), Level::Warning);
        assert_eq!(config.level(0.2), Level::Warning);
        assert_eq!(config.level(0.25), Level::Drift);
    }

    #[test]
    fn the_stream_fills_its_reference_then_slides() {
        let mut stream = StreamingPsi::new(StreamingPsiConfig {
            reference_size: 100,
            recent_size: 50,
            ..Default::default()
        })
        .unwrap();
        // A constant stream: the same bin throughout, so PSI 0 once the recent window fills.
        for i in 0..300 {
            let d = stream.update(3.0).unwrap();
            assert_eq!(d, Detection::stable(0.0), "at {i}");
        }
        assert!(stream.bins().is_some());
        assert_eq!(stream.recent.len(), 50);
        let before = stream.clone();
        assert!(stream.update(f64::NAN).is_err());
        assert_eq!(stream, before);
        // A jump: the recent window drifts as soon as enough of it lies above the reference.
        let at = (0..50)
            .find(|_| stream.update(10.0).unwrap().is_drift())
            .unwrap();
        assert!(at < 10, "drift after {at} jumped values");
        stream.update(10.0).unwrap();
        assert!(stream.bins().is_none());
    }

    #[test]
    fn refuses_bad_configurations() {
        let bad = [
            PsiConfig {
                bins: 1,
                ..Default::default()
            },
            PsiConfig {
                epsilon: 0.0,
                ..Default::default()
            },
            PsiConfig {
                moderate: 0.3,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(psi(&[1.0], &[1.0], &config).is_err());
        }
        assert!(
            StreamingPsi::new(StreamingPsiConfig {
                recent_size: 0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
