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
//!
//! Fixed thresholds ignore how many values each window holds: a PSI of 0.25 is a near certainty
//! between windows of thousands and a coin toss between windows of fifty. The streaming detector
//! can instead take its levels as significance levels ([`PsiSignificance`]), turned into
//! thresholds from the chi-squared distribution PSI follows when nothing changed, for the
//! windows' sizes, the bins drawn and the measured dispersion of the reference; and its
//! reference can slide just behind the recent window, so that what changes slowly by
//! construction is followed rather than reported. drift runs it that way.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::stats::chi_squared_upper_quantile;
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
    /// The reference slides with the stream: it is always the `reference_size` values just
    /// before the recent window (in the bins drawn from the first reference). Off, the reference
    /// is the first values and stays until a drift.
    #[serde(default)]
    pub sliding_reference: bool,
    /// Levels from significance levels rather than the fixed PSI thresholds of `psi` (see
    /// [`PsiSignificance`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub significance: Option<PsiSignificance>,
}

impl Default for StreamingPsiConfig {
    fn default() -> Self {
        StreamingPsiConfig {
            psi: PsiConfig::default(),
            reference_size: 1_000,
            recent_size: 500,
            sliding_reference: false,
            significance: None,
        }
    }
}

/// PSI levels as significance levels of one evaluation. With independent values and `k` bins,
/// PSI between a window of `n` values and a reference of `N` is asymptotically
/// (1/n + 1/N) · χ²(k − 1) when nothing changed (it is Jeffreys' divergence, which agrees with
/// the chi-squared statistic of homogeneity to second order). The threshold for level `α` is
/// then
///
/// ```text
/// threshold(α) = φ · (1/n + 1/N) · χ²_{k−1}(1 − α)
/// ```
///
/// where `φ ≥ 1` is the dispersion of the reference: examples arrive in bursts (one user's
/// views, one item's hour), which makes bin shares vary more than independent values would.
/// It is measured when the bins are drawn, as the chi-squared statistic of the bins' counts in
/// [`DISPERSION_BLOCKS`] consecutive blocks of the reference against the whole, over its degrees
/// of freedom, and never taken below 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PsiSignificance {
    /// Level of one evaluation at which a shift is a drift.
    pub drift: f64,
    /// Level at which it is a warning (larger than `drift`).
    pub warning: f64,
}

/// Consecutive blocks of the reference compared to measure its dispersion.
pub const DISPERSION_BLOCKS: usize = 20;

impl PsiSignificance {
    fn validate(&self) -> Result<(), DetectorError> {
        if !(self.drift > 0.0 && self.drift <= self.warning && self.warning < 1.0) {
            return Err(config_error(
                "psi",
                "significance levels must satisfy 0 < drift ≤ warning < 1",
            ));
        }
        Ok(())
    }
}

/// The thresholds a calibrated detector applies to its current bins.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PsiThresholds {
    pub warning: f64,
    pub drift: f64,
    /// The reference's dispersion φ the thresholds include.
    pub dispersion: f64,
}

/// A window of bin indices, oldest first. It is kept in checkpoints as a string of one
/// character per value (`0-9a-zA-Z`) while every bin fits one, which is a few kilobytes for
/// thousands of values; otherwise as a list of numbers.
#[derive(Debug, Clone, Default, PartialEq)]
struct BinWindow(VecDeque<usize>);

const BIN_DIGITS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

impl Serialize for BinWindow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.iter().all(|&b| b < BIN_DIGITS.len()) {
            let text: String = self.0.iter().map(|&b| char::from(BIN_DIGITS[b])).collect();
            serializer.serialize_str(&text)
        } else {
            serializer.collect_seq(self.0.iter())
        }
    }
}

impl<'de> Deserialize<'de> for BinWindow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Text(String),
            List(VecDeque<usize>),
        }
        match Stored::deserialize(deserializer)? {
            Stored::List(bins) => Ok(BinWindow(bins)),
            Stored::Text(text) => text
                .bytes()
                .map(|c| BIN_DIGITS.iter().position(|&d| d == c))
                .collect::<Option<VecDeque<usize>>>()
                .map(BinWindow)
                .ok_or_else(|| serde::de::Error::custom("a bin window holds a foreign digit")),
        }
    }
}

/// A window of bin indices with its count per bin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct CountedWindow {
    bins: BinWindow,
    counts: Vec<u64>,
}

impl CountedWindow {
    fn new(bins: usize) -> CountedWindow {
        CountedWindow {
            bins: BinWindow::default(),
            counts: vec![0; bins],
        }
    }

    fn len(&self) -> usize {
        self.bins.0.len()
    }

    fn push(&mut self, bin: usize) {
        self.bins.0.push_back(bin);
        self.counts[bin] += 1;
    }

    /// Drops and returns the oldest bin once the window holds more than `size`.
    fn trim(&mut self, size: usize) -> Option<usize> {
        if self.len() <= size {
            return None;
        }
        let old = self.bins.0.pop_front()?;
        self.counts[old] -= 1;
        Some(old)
    }
}

/// PSI on a stream: the first `reference_size` values make the reference, then each update
/// slides a window of the last `recent_size` values and, once it is full, reports its PSI with
/// its level: the fixed thresholds of [`PsiConfig::level`], or with a [`PsiSignificance`] the
/// thresholds it calibrates when the bins are drawn. With `sliding_reference`, each value
/// leaving the recent window joins the reference and the oldest reference value leaves, so a
/// slow evolution (entities' histories maturing, say) is followed while a sudden change still
/// shows. After a drift the detector starts afresh: the next values make a new reference. The
/// statistic is the PSI, 0 until the recent window first fills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamingPsi {
    config: StreamingPsiConfig,
    /// The reference while it fills; emptied once the bins are drawn from it.
    filling: Vec<f64>,
    bins: Option<PsiBins>,
    /// The recent window.
    recent: CountedWindow,
    /// The sliding reference (`sliding_reference` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<CountedWindow>,
    /// The calibrated thresholds of the current bins (`significance` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thresholds: Option<PsiThresholds>,
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
        if let Some(significance) = &config.significance {
            significance.validate()?;
        }
        Ok(StreamingPsi::fresh(config))
    }

    fn fresh(config: StreamingPsiConfig) -> StreamingPsi {
        StreamingPsi {
            config,
            filling: Vec::with_capacity(config.reference_size),
            bins: None,
            recent: CountedWindow::default(),
            reference: None,
            thresholds: None,
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

    /// The calibrated thresholds of the current bins, with a [`PsiSignificance`] once the
    /// reference is complete.
    pub fn thresholds(&self) -> Option<PsiThresholds> {
        self.thresholds
    }

    /// Values in the reference the recent window is compared with (0 while it fills).
    pub fn reference_len(&self) -> usize {
        match (&self.bins, &self.reference) {
            (None, _) => 0,
            (Some(_), Some(reference)) => reference.len(),
            (Some(_), None) => self.config.reference_size,
        }
    }

    /// Values in the recent window.
    pub fn recent_len(&self) -> usize {
        self.recent.len()
    }

    /// Draws the bins from the filled reference and sets up what compares against them.
    fn draw_bins(&mut self) -> Result<(), DetectorError> {
        let bins = PsiBins::from_reference(&self.filling, &self.config.psi)?;
        let k = bins.edges.len() + 1;
        self.recent = CountedWindow::new(k);
        if self.config.sliding_reference {
            let mut reference = CountedWindow::new(k);
            for x in &self.filling {
                reference.push(bins.bin_of(*x));
            }
            self.reference = Some(reference);
        }
        self.thresholds = self.config.significance.and_then(|significance| {
            (k >= 2).then(|| {
                let dispersion = dispersion(&self.filling, &bins);
                let scale = dispersion
                    * (1.0 / self.config.recent_size as f64
                        + 1.0 / self.config.reference_size as f64);
                PsiThresholds {
                    warning: scale * chi_squared_upper_quantile(significance.warning, k - 1),
                    drift: scale * chi_squared_upper_quantile(significance.drift, k - 1),
                    dispersion,
                }
            })
        });
        self.bins = Some(bins);
        self.filling = Vec::new();
        Ok(())
    }

    fn level(&self, value: f64) -> Level {
        match (&self.config.significance, &self.thresholds) {
            (None, _) => self.config.psi.level(value),
            // One bin only (a constant reference): nothing to compare.
            (Some(_), None) => Level::Stable,
            (Some(_), Some(t)) if value >= t.drift => Level::Drift,
            (Some(_), Some(t)) if value >= t.warning => Level::Warning,
            (Some(_), Some(_)) => Level::Stable,
        }
    }
}

/// The dispersion φ of `values` in `bins`: the chi-squared statistic of the bins' counts in
/// [`DISPERSION_BLOCKS`] consecutive blocks against the shares of the whole, over its degrees of
/// freedom; 1 when there are too few values for blocks of ten, and never below 1.
fn dispersion(values: &[f64], bins: &PsiBins) -> f64 {
    let k = bins.edges.len() + 1;
    let blocks = DISPERSION_BLOCKS.min(values.len() / 10);
    if blocks < 2 || k < 2 {
        return 1.0;
    }
    let size = values.len() / blocks;
    let mut whole = vec![0u64; k];
    for x in &values[..blocks * size] {
        whole[bins.bin_of(*x)] += 1;
    }
    let total = (blocks * size) as f64;
    let mut statistic = 0.0;
    for block in values[..blocks * size].chunks(size) {
        let mut counts = vec![0u64; k];
        for x in block {
            counts[bins.bin_of(*x)] += 1;
        }
        for (observed, all) in counts.iter().zip(&whole) {
            let expected = size as f64 * *all as f64 / total;
            if expected > 0.0 {
                statistic += (*observed as f64 - expected).powi(2) / expected;
            }
        }
    }
    let occupied = whole.iter().filter(|c| **c > 0).count();
    let dof = (blocks - 1) * occupied.saturating_sub(1);
    if dof == 0 {
        return 1.0;
    }
    (statistic / dof as f64).max(1.0)
}

/// PSI between two windows given as counts per bin, each share floored at `epsilon`.
fn psi_between(recent: &[u64], n: usize, reference: &[u64], total: usize, epsilon: f64) -> f64 {
    recent.iter().zip(reference).fold(0.0, |sum, (c, r)| {
        let c = (*c as f64 / n as f64).max(epsilon);
        let r = (*r as f64 / total as f64).max(epsilon);
        sum + (c - r) * (c / r).ln()
    })
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
                self.draw_bins()?;
            }
            return Ok(Detection::stable(0.0));
        };
        let bin = bins.bin_of(x);
        self.recent.push(bin);
        if let Some(old) = self.recent.trim(self.config.recent_size)
            && let Some(reference) = self.reference.as_mut()
        {
            reference.push(old);
            reference.trim(self.config.reference_size);
        }
        if self.recent.len() < self.config.recent_size {
            return Ok(Detection::stable(0.0));
        }
        let value = match &self.reference {
            Some(reference) => psi_between(
                &self.recent.counts,
                self.recent.len(),
                &reference.counts,
                reference.len(),
                self.config.psi.epsilon,
            ),
            None => bins.psi_of_counts(&self.recent.counts, self.recent.len()),
        };
        let level = self.level(value);
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
        assert_eq!(stream.recent_len(), 50);
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

    fn calibrated(reference_size: usize, recent_size: usize, drift: f64) -> StreamingPsi {
        StreamingPsi::new(StreamingPsiConfig {
            reference_size,
            recent_size,
            sliding_reference: true,
            significance: Some(PsiSignificance {
                drift,
                warning: drift * 10.0,
            }),
            ..Default::default()
        })
        .unwrap()
    }

    /// A deterministic uniform value in [0, 1) for index `i`.
    fn uniform(i: u64) -> f64 {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 29;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn calibrated_thresholds_follow_the_windows_and_the_bins() {
        let mut stream = calibrated(2_000, 1_000, 1e-8);
        for i in 0..2_000 {
            stream.update(uniform(i)).unwrap();
        }
        let t = stream.thresholds().unwrap();
        // Ten bins of independent values: dispersion near 1, and the drift threshold is
        // (1/1000 + 1/2000) · χ²₉ at 1e-8 (55.449, as scipy gives it), times the dispersion.
        assert!((1.0..1.3).contains(&t.dispersion), "{t:?}");
        let expected = t.dispersion * 0.0015 * chi_squared_upper_quantile(1e-8, 9);
        assert!((t.drift - expected).abs() < 1e-12);
        assert!((chi_squared_upper_quantile(1e-8, 9) - 55.449_105).abs() < 1e-5);
        assert!(t.warning < t.drift);
        assert_eq!((stream.reference_len(), stream.recent_len()), (2_000, 0));
    }

    #[test]
    fn a_calibrated_stream_is_quiet_on_independent_values_and_sees_a_jump() {
        let mut stream = calibrated(2_000, 1_000, 1e-8);
        let mut signals = 0;
        for i in 0..100_000 {
            let d = stream.update(uniform(i)).unwrap();
            signals += usize::from(d.level != Level::Stable);
        }
        assert_eq!(signals, 0);
        assert_eq!(stream.reference_len(), 2_000);
        // A fifth of the values move above everything seen: found within the recent window.
        let at = (0..1_000u64)
            .find(|&i| {
                let x = uniform(200_000 + i);
                let x = if i % 5 == 0 { 2.0 + x } else { x };
                stream.update(x).unwrap().is_drift()
            })
            .unwrap();
        assert!(at < 1_000, "{at}");
    }

    #[test]
    fn a_sliding_reference_follows_a_slow_evolution() {
        // The values creep upwards by a whole range over 200,000 values.
        let creep = |i: u64| uniform(i) + i as f64 / 200_000.0;
        let mut sliding = calibrated(2_000, 1_000, 1e-8);
        let mut fixed = StreamingPsi::new(StreamingPsiConfig {
            sliding_reference: false,
            ..*sliding.config()
        })
        .unwrap();
        let (mut sliding_drifts, mut fixed_drifts) = (0, 0);
        for i in 0..200_000 {
            sliding_drifts += usize::from(sliding.update(creep(i)).unwrap().is_drift());
            fixed_drifts += usize::from(fixed.update(creep(i)).unwrap().is_drift());
        }
        assert_eq!(sliding_drifts, 0);
        assert!(fixed_drifts > 10, "{fixed_drifts}");
    }

    #[test]
    fn bursts_raise_the_dispersion_and_the_thresholds() {
        // Each value repeated ten times in a row: bin shares vary across blocks as if the
        // windows held a tenth of their values.
        let mut bursty = calibrated(2_000, 1_000, 1e-8);
        for i in 0..2_000 {
            bursty.update(uniform(i / 10)).unwrap();
        }
        let t = bursty.thresholds().unwrap();
        assert!(t.dispersion > 5.0, "{t:?}");
    }

    #[test]
    fn bin_windows_are_kept_compactly_and_read_back() {
        let mut stream = calibrated(100, 50, 1e-6);
        for i in 0..300 {
            stream.update(uniform(i)).unwrap();
        }
        let json = serde_json::to_value(&stream).unwrap();
        let recent = json["recent"]["bins"].as_str().unwrap();
        assert_eq!(recent.len(), 50);
        assert_eq!(json["reference"]["bins"].as_str().unwrap().len(), 100);
        let back: StreamingPsi = serde_json::from_value(json).unwrap();
        assert_eq!(back, stream);
        // Bins beyond the digits are kept as numbers.
        let wide = BinWindow(VecDeque::from([3, 70, 1]));
        let json = serde_json::to_value(&wide).unwrap();
        assert_eq!(json, serde_json::json!([3, 70, 1]));
        assert_eq!(serde_json::from_value::<BinWindow>(json).unwrap(), wide);
        assert!(serde_json::from_str::<BinWindow>("\"0a!\"").is_err());
    }

    #[test]
    fn a_constant_reference_is_quiet_until_values_leave_it() {
        let mut stream = calibrated(100, 50, 1e-6);
        for _ in 0..300 {
            assert_eq!(stream.update(1.0).unwrap().level, Level::Stable);
        }
        // Its one edge is the constant itself: values above it fill the upper bin.
        assert_eq!(stream.bins().unwrap().edges(), &[1.0]);
        let at = (0..50).find(|_| stream.update(5.0).unwrap().is_drift());
        assert!(at.is_some_and(|at| at < 10), "{at:?}");
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
        assert!(
            StreamingPsi::new(StreamingPsiConfig {
                significance: Some(PsiSignificance {
                    drift: 0.1,
                    warning: 0.01
                }),
                ..Default::default()
            })
            .is_err()
        );
    }
}
