//! ADWIN, adaptive windowing (Bifet & Gavaldà 2007), in its ADWIN2 form with an exponential
//! histogram, as River's `ADWIN`.
//!
//! The window of recent values is summarised by buckets: row `i` of the histogram holds up to
//! `max_buckets` buckets of 2^i values each (a total and a variance), so a window of `W` values
//! costs O(max_buckets · log W) memory. Every `clock` values, once the window is longer than
//! `grace_period`, each split of the window into an older part W0 and a newer part W1 (both at
//! least `min_window_length` long, cut at bucket boundaries) is tested:
//!
//! ```text
//! |mean(W0) - mean(W1)| > sqrt(2 · m · σ²_W · δ') + 2/3 · δ' · m
//! m  = 1/(n0 - min_window_length + 1) + 1/(n1 - min_window_length + 1)
//! δ' = ln(2 · ln(W) / δ)
//! ```
//!
//! where σ²_W is the window's variance. A cut that holds means drift; the oldest buckets are then
//! dropped while a cut still holds, and, as in River, the whole detector starts afresh with the
//! next value. Defaults are River's: δ 0.002, clock 32, max_buckets 5, min_window_length 5,
//! grace_period 10. The arithmetic is ordered as River's so that the indexes match bit for bit.

use serde::{Deserialize, Serialize};

use super::{Detection, Detector, DetectorError, Level, check_value, config_error};

/// ADWIN parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdwinConfig {
    /// Confidence δ of the cut test, in (0, 1): smaller means fewer, surer detections.
    pub delta: f64,
    /// Cuts are tested every `clock` values (1 tests after every value).
    pub clock: u64,
    /// Buckets of each size kept before the two oldest merge.
    pub max_buckets: usize,
    /// Shortest sub-window a cut may leave on either side.
    pub min_window_length: u64,
    /// No cut is tested until the window is longer than this.
    pub grace_period: u64,
}

impl Default for AdwinConfig {
    fn default() -> Self {
        AdwinConfig {
            delta: 0.002,
            clock: 32,
            max_buckets: 5,
            min_window_length: 5,
            grace_period: 10,
        }
    }
}

/// The summary of 2^row consecutive values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Bucket {
    total: f64,
    /// Sum of squared deviations from the bucket's mean.
    variance: f64,
}

/// One ADWIN detector. Its statistic is the mean of the current window (River's `estimation`),
/// 0 while the window is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adwin {
    config: AdwinConfig,
    /// `rows[i]` holds buckets of 2^i values, oldest first; the last row holds the oldest values.
    rows: Vec<Vec<Bucket>>,
    total: f64,
    /// Sum of squared deviations from the window's mean.
    variance: f64,
    /// Values in the window, as a float because every comparison it enters is between floats.
    width: f64,
    tick: u64,
    drift_detected: bool,
    /// The first cut of the detection the last update made, its evidence; gone when the
    /// detector starts afresh with the next value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_cut: Option<Cut>,
}

/// A split of the window that held: the evidence of a detection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cut {
    /// Values in the older part W0 and the newer part W1.
    pub older: u64,
    pub newer: u64,
    /// Their means.
    pub older_mean: f64,
    pub newer_mean: f64,
    /// The bound |mean(W0) - mean(W1)| exceeded.
    pub bound: f64,
}

impl Cut {
    /// |mean(W0) - mean(W1)|, the statistic the bound is compared with.
    pub fn gap(&self) -> f64 {
        (self.older_mean - self.newer_mean).abs()
    }
}

impl Adwin {
    /// A detector with `config`, refused if a parameter is out of range.
    pub fn new(config: AdwinConfig) -> Result<Adwin, DetectorError> {
        if !(config.delta > 0.0 && config.delta < 1.0) {
            return Err(config_error("adwin", "delta must be in (0, 1)"));
        }
        if config.clock == 0 {
            return Err(config_error("adwin", "clock must be ≥ 1"));
        }
        if config.max_buckets == 0 {
            return Err(config_error("adwin", "max_buckets must be ≥ 1"));
        }
        if config.min_window_length == 0 {
            return Err(config_error("adwin", "min_window_length must be ≥ 1"));
        }
        Ok(Adwin::fresh(config))
    }

    fn fresh(config: AdwinConfig) -> Adwin {
        Adwin {
            config,
            rows: vec![Vec::with_capacity(config.max_buckets + 1)],
            total: 0.0,
            variance: 0.0,
            width: 0.0,
            tick: 0,
            drift_detected: false,
            last_cut: None,
        }
    }

    /// The first cut of the detection the last update made (`None` if it made none).
    pub fn last_cut(&self) -> Option<Cut> {
        self.last_cut
    }

    /// The configuration this detector runs with.
    pub fn config(&self) -> &AdwinConfig {
        &self.config
    }

    /// Values in the current window.
    pub fn width(&self) -> u64 {
        // Always a whole number: sums and differences of powers of two.
        self.width as u64
    }

    /// Mean of the current window, 0 when it is empty.
    pub fn estimation(&self) -> f64 {
        if self.width == 0.0 {
            0.0
        } else {
            self.total / self.width
        }
    }

    /// Sample variance of the current window (River's `variance` divided by the width), 0 when
    /// it is empty.
    pub fn variance(&self) -> f64 {
        if self.width == 0.0 {
            0.0
        } else {
            self.variance / self.width
        }
    }

    fn bucket_size(row: usize) -> f64 {
        // Rows never exceed 64: each holds at least 2^row values and widths fit in a u64.
        2f64.powi(row as i32)
    }

    fn insert(&mut self, x: f64) {
        self.rows[0].push(Bucket {
            total: x,
            variance: 0.0,
        });
        self.width += 1.0;
        if self.width > 1.0 {
            let d = x - self.total / (self.width - 1.0);
            self.variance += (self.width - 1.0) * d * d / self.width;
        }
        self.total += x;
        self.compress();
    }

    /// Merges the two oldest buckets of any row that has overflowed into the next row.
    fn compress(&mut self) {
        let max = self.config.max_buckets;
        let mut row = 0;
        while self.rows[row].len() > max {
            let n = Adwin::bucket_size(row);
            let (a, b) = (self.rows[row][0], self.rows[row][1]);
            let (mean_a, mean_b) = (a.total / n, b.total / n);
            // Chan et al.'s pairwise update: the merged spread adds n·n/(n+n)·(Δmean)².
            let merged = Bucket {
                total: a.total + b.total,
                variance: a.variance
                    + b.variance
                    + n * n * (mean_a - mean_b) * (mean_a - mean_b) / (n + n),
            };
            self.rows[row].drain(..2);
            if row + 1 == self.rows.len() {
                self.rows.push(Vec::with_capacity(max + 1));
            }
            self.rows[row + 1].push(merged);
            row += 1;
        }
    }

    /// Drops the oldest bucket.
    fn delete_oldest(&mut self) {
        let last = self.rows.len() - 1;
        let n = Adwin::bucket_size(last);
        let bucket = self.rows[last].remove(0);
        let mean = bucket.total / n;
        self.width -= n;
        self.total -= bucket.total;
        let window_mean = self.total / self.width;
        self.variance -= bucket.variance
            + n * self.width * (mean - window_mean) * (mean - window_mean) / (n + self.width);
        if self.rows[last].is_empty() {
            self.rows.pop();
        }
    }

    /// Tests every cut, oldest first, and drops the oldest bucket while one holds.
    fn detect(&mut self) -> bool {
        self.tick += 1;
        if !self.tick.is_multiple_of(self.config.clock)
            || self.width <= self.config.grace_period as f64
        {
            return false;
        }
        let min_len = self.config.min_window_length as f64;
        let mut detected = false;
        'shrink: loop {
            let (mut n0, mut n1) = (0.0, self.width);
            let (mut u0, mut u1) = (0.0, self.total);
            for row in (0..self.rows.len()).rev() {
                let size = Adwin::bucket_size(row);
                let count = self.rows[row].len();
                for k in 0..count {
                    let t = self.rows[row][k].total;
                    n0 += size;
                    n1 -= size;
                    u0 += t;
                    u1 -= t;
                    // The newest value cannot start W1: W1 would be empty.
                    if row == 0 && k == count - 1 {
                        break 'shrink;
                    }
                    let delta_mean = u0 / n0 - u1 / n1;
                    if n1 >= min_len && n0 >= min_len && self.cut_holds(n0, n1, delta_mean) {
                        if !detected {
                            self.last_cut = Some(Cut {
                                older: n0 as u64,
                                newer: n1 as u64,
                                older_mean: u0 / n0,
                                newer_mean: u1 / n1,
                                bound: self.cut_bound(n0, n1),
                            });
                        }
                        detected = true;
                        // n1 ≥ min_window_length ≥ 1 remains, so the window never empties.
                        self.delete_oldest();
                        continue 'shrink;
                    }
                }
            }
            break;
        }
        detected
    }

    fn cut_holds(&self, n0: f64, n1: f64, delta_mean: f64) -> bool {
        // Rounding can leave the variance a hair below 0; the bound is then NaN and the cut
        // fails, as in River.
        delta_mean.abs() > self.cut_bound(n0, n1)
    }

    /// The bound a cut into `n0` older and `n1` newer values must exceed.
    fn cut_bound(&self, n0: f64, n1: f64) -> f64 {
        let min_len = self.config.min_window_length as f64;
        let delta_prime = (2.0 * self.width.ln() / self.config.delta).ln();
        let m_recip = 1.0 / (n0 - min_len + 1.0) + 1.0 / (n1 - min_len + 1.0);
        (2.0 * m_recip * (self.variance / self.width) * delta_prime).sqrt()
            + 2.0 / 3.0 * delta_prime * m_recip
    }
}

impl Default for Adwin {
    fn default() -> Self {
        Adwin::fresh(AdwinConfig::default())
    }
}

impl Detector for Adwin {
    fn name(&self) -> &'static str {
        "adwin"
    }

    fn update(&mut self, x: f64) -> Result<Detection, DetectorError> {
        let x = check_value(x)?;
        if self.drift_detected {
            self.reset();
        }
        self.insert(x);
        self.drift_detected = self.detect();
        let level = if self.drift_detected {
            Level::Drift
        } else {
            Level::Stable
        };
        Ok(Detection::new(level, self.estimation()))
    }

    fn reset(&mut self) {
        *self = Adwin::fresh(self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drifts(adwin: &mut Adwin, values: impl Iterator<Item = f64>) -> Vec<usize> {
        values
            .enumerate()
            .filter(|(_, x)| adwin.update(*x).unwrap().is_drift())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn keeps_exact_window_statistics() {
        let mut adwin = Adwin::default();
        for x in [1.0, 2.0, 3.0, 4.0, 5.0] {
            adwin.update(x).unwrap();
        }
        assert_eq!(adwin.width(), 5);
        assert_eq!(adwin.estimation(), 3.0);
        // Sum of squared deviations 10 over 5 values.
        assert!((adwin.variance() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn buckets_merge_into_an_exponential_histogram() {
        let mut adwin = Adwin::new(AdwinConfig {
            clock: u64::MAX,
            ..Default::default()
        })
        .unwrap();
        for i in 0..200 {
            adwin.update(f64::from(i % 7)).unwrap();
        }
        assert_eq!(adwin.width(), 200);
        let counted: f64 = adwin
            .rows
            .iter()
            .enumerate()
            .map(|(row, buckets)| buckets.len() as f64 * Adwin::bucket_size(row))
            .sum();
        assert_eq!(counted, 200.0);
        assert!(adwin.rows.iter().all(|row| row.len() <= 5));
        let mean = (0..200).map(|i| f64::from(i % 7)).sum::<f64>() / 200.0;
        let expected = (0..200)
            .map(|i| (f64::from(i % 7) - mean).powi(2))
            .sum::<f64>()
            / 200.0;
        assert!((adwin.variance() - expected).abs() < 1e-9);
    }

    #[test]
    fn stays_quiet_on_a_constant_stream() {
        let mut adwin = Adwin::default();
        assert!(drifts(&mut adwin, (0..5_000).map(|_| 1.0)).is_empty());
        assert_eq!(adwin.width(), 5_000);
    }

    #[test]
    fn detects_a_large_shift_and_then_starts_afresh() {
        let mut adwin = Adwin::default();
        let found = drifts(
            &mut adwin,
            (0..224).map(|i| if i < 200 { 0.0 } else { 100.0 }),
        );
        // The first test after the shift runs at the next multiple of the clock, 223.
        assert_eq!(found, vec![223]);
        // The cuts dropped the old values, down to the last buckets straddling the shift.
        assert!(adwin.width() < 224 && adwin.estimation() > 50.0);
        adwin.update(50.0).unwrap();
        assert_eq!(adwin.width(), 1);
    }

    #[test]
    fn tests_nothing_within_the_grace_period() {
        let mut adwin = Adwin::new(AdwinConfig {
            clock: 1,
            grace_period: 100,
            ..Default::default()
        })
        .unwrap();
        let found = drifts(&mut adwin, (0..100).map(|i| if i < 50 { 0.0 } else { 1e3 }));
        assert!(found.is_empty());
    }

    #[test]
    fn a_refused_value_leaves_the_state_untouched() {
        let mut adwin = Adwin::default();
        adwin.update(1.0).unwrap();
        let before = adwin.clone();
        assert!(adwin.update(f64::NAN).is_err());
        assert!(adwin.update(-1e300).is_err());
        assert_eq!(adwin, before);
    }

    #[test]
    fn refuses_a_bad_configuration() {
        for config in [
            AdwinConfig {
                delta: 0.0,
                ..Default::default()
            },
            AdwinConfig {
                clock: 0,
                ..Default::default()
            },
            AdwinConfig {
                max_buckets: 0,
                ..Default::default()
            },
        ] {
            assert!(Adwin::new(config).is_err());
        }
    }
}
