//! KSWIN, Kolmogorov-Smirnov windowing (Raab et al. 2020), as River's `KSWIN`.
//!
//! A sliding window holds the last `window_size` values. Once it is full, every update compares
//! its newest `stat_size` values with `stat_size` values drawn without replacement from the older
//! part, by the two-sample Kolmogorov-Smirnov test; a p-value at most α together with a statistic
//! above 0.1 is a drift, after which the detector starts afresh. Defaults are River's: α 0.005,
//! window 100, statistic window 30.
//!
//! The p-value is the exact two-sided one for equal sample sizes, computed as scipy's `ks_2samp`
//! does (`method="auto"` picks it up to 10 000 values per sample, hence the cap on `stat_size`).
//!
//! The draw differs from River's, whose Mersenne Twister is not reproduced here, so detection
//! indexes differ from River's whatever the seed. The sample for the test after the `n`-th value
//! since the last fresh start comes from a `StdRng` keyed by (`seed`, `n`): the generator's state
//! is then two integers, so a checkpoint restores the very same draws, and each fresh start
//! repeats the draws as River's re-seeding does. `StdRng`'s stream is fixed for a given `rand`
//! release (pinned by Cargo.lock), not across releases.

use std::collections::VecDeque;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::{Detection, Detector, DetectorError, Level, check_value, config_error};

/// The largest `stat_size` for which scipy's `method="auto"` uses the exact distribution.
const MAX_STAT_SIZE: usize = 10_000;

/// KSWIN parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KswinConfig {
    /// Significance α of the Kolmogorov-Smirnov test, in (0, 1).
    pub alpha: f64,
    /// Values in the sliding window.
    pub window_size: usize,
    /// Values in each of the two compared samples; less than `window_size`, at most 10 000.
    pub stat_size: usize,
    /// Seed of the draws; the same seed on the same stream gives the same detections.
    pub seed: u64,
}

impl Default for KswinConfig {
    fn default() -> Self {
        KswinConfig {
            alpha: 0.005,
            window_size: 100,
            stat_size: 30,
            seed: 0,
        }
    }
}

/// One KSWIN detector. Its statistic is the Kolmogorov-Smirnov distance of the last test, 0
/// until the window first fills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kswin {
    config: KswinConfig,
    window: VecDeque<f64>,
    /// Values seen since the last fresh start; keys the draw of the next test.
    seen: u64,
    statistic: f64,
    p_value: f64,
    drift_detected: bool,
}

impl Kswin {
    /// A detector with `config`, refused if a parameter is out of range.
    pub fn new(config: KswinConfig) -> Result<Kswin, DetectorError> {
        if !(config.alpha > 0.0 && config.alpha < 1.0) {
            return Err(config_error("kswin", "alpha must be in (0, 1)"));
        }
        if config.stat_size == 0 || config.stat_size >= config.window_size {
            return Err(config_error(
                "kswin",
                "stat_size must be ≥ 1 and smaller than window_size",
            ));
        }
        if config.window_size - config.stat_size < config.stat_size {
            return Err(config_error(
                "kswin",
                "window_size must be at least twice stat_size: the sample is drawn without \
                 replacement from the older part",
            ));
        }
        if config.stat_size > MAX_STAT_SIZE {
            return Err(config_error("kswin", "stat_size must be at most 10000"));
        }
        Ok(Kswin::fresh(config))
    }

    fn fresh(config: KswinConfig) -> Kswin {
        Kswin {
            config,
            window: VecDeque::with_capacity(config.window_size),
            seen: 0,
            statistic: 0.0,
            p_value: 1.0,
            drift_detected: false,
        }
    }

    /// The configuration this detector runs with.
    pub fn config(&self) -> &KswinConfig {
        &self.config
    }

    /// The p-value of the last test, 1 until the window first fills.
    pub fn p_value(&self) -> f64 {
        self.p_value
    }

    /// The generator for the test after the `seen`-th value: keyed by seed and count, so the
    /// draw is a pure function of the detector's serialisable state.
    fn rng(&self) -> StdRng {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.config.seed.to_le_bytes());
        key[8..16].copy_from_slice(&self.seen.to_le_bytes());
        StdRng::from_seed(key)
    }

    fn test(&mut self) {
        let KswinConfig {
            window_size,
            stat_size,
            ..
        } = self.config;
        let older = window_size - stat_size;
        let mut rng = self.rng();
        let sample: Vec<f64> = rand::seq::index::sample(&mut rng, older, stat_size)
            .iter()
            .map(|i| self.window[i])
            .collect();
        let recent: Vec<f64> = self.window.range(older..).copied().collect();
        let (statistic, p_value) = ks_two_sample(&sample, &recent);
        self.statistic = statistic;
        self.p_value = p_value;
    }
}

impl Default for Kswin {
    fn default() -> Self {
        Kswin::fresh(KswinConfig::default())
    }
}

impl Detector for Kswin {
    fn name(&self) -> &'static str {
        "kswin"
    }

    fn update(&mut self, x: f64) -> Result<Detection, DetectorError> {
        let x = check_value(x)?;
        if self.drift_detected {
            // River also trims the window to its newest values on a drift, but then empties it
            // at the next update; only the emptying is observable, so only it is done.
            self.reset();
        }
        self.seen += 1;
        if self.window.len() == self.config.window_size {
            self.window.pop_front();
        }
        self.window.push_back(x);
        if self.window.len() < self.config.window_size {
            return Ok(Detection::stable(self.statistic));
        }
        self.test();
        if self.p_value <= self.config.alpha && self.statistic > 0.1 {
            self.drift_detected = true;
            return Ok(Detection::new(Level::Drift, self.statistic));
        }
        Ok(Detection::stable(self.statistic))
    }

    fn reset(&mut self) {
        *self = Kswin::fresh(self.config);
    }
}

/// The two-sided two-sample Kolmogorov-Smirnov test on samples of equal size: returns the
/// statistic `D` (the largest gap between the empirical distribution functions) and its exact
/// p-value `P(D_{n,n} ≥ d)`, as scipy's `ks_2samp` with `method="auto"`. Returns `(0, 1)` when
/// the sizes differ or a sample is empty, which KSWIN never asks for. Values must be comparable
/// (no NaN); KSWIN only stores checked values.
pub fn ks_two_sample(a: &[f64], b: &[f64]) -> (f64, f64) {
    let n = a.len();
    if n == 0 || b.len() != n {
        return (0.0, 1.0);
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    // Walk both sorted samples; after each distinct value, the gap between the two counts at or
    // below it is the gap between the distribution functions times n. Counts keep D exact.
    let (mut i, mut j, mut h) = (0usize, 0usize, 0usize);
    while i < n || j < n {
        let v = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => break,
        };
        while i < n && a[i] <= v {
            i += 1;
        }
        while j < n && b[j] <= v {
            j += 1;
        }
        h = h.max(i.abs_diff(j));
    }
    let statistic = h as f64 / n as f64;
    (statistic, p_outside_square(n, h))
}

/// `P(D_{n,n} ≥ h/n)`: the share of lattice paths that leave the band |x - y| < h, by the
/// alternating binomial series evaluated Horner-style (scipy's `_compute_prob_outside_square`,
/// whose operation order is kept), clipped to [0, 1].
fn p_outside_square(n: usize, h: usize) -> f64 {
    if h == 0 {
        return 1.0;
    }
    let (n, h) = (n as i64, h as i64);
    let mut p = 0.0;
    let mut k = n / h;
    while k >= 0 {
        let mut term = 1.0;
        for j in 0..h {
            term = (n - k * h - j) as f64 * term / (n + k * h + j + 1) as f64;
        }
        p = term * (1.0 - p);
        k -= 1;
    }
    (2.0 * p).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ks_on_identical_and_disjoint_samples() {
        let a: Vec<f64> = (0..30).map(f64::from).collect();
        assert_eq!(ks_two_sample(&a, &a), (0.0, 1.0));
        let b: Vec<f64> = (100..130).map(f64::from).collect();
        let (d, p) = ks_two_sample(&a, &b);
        assert_eq!(d, 1.0);
        // Of the C(60, 30) equally likely orderings, only the two fully separated ones give D = 1.
        let c_60_30 = (1..=30).fold(1.0, |c, k| c * f64::from(30 + k) / f64::from(k));
        assert!((p * c_60_30 - 2.0).abs() < 1e-12, "{p}");
    }

    #[test]
    fn stays_quiet_on_a_constant_stream() {
        let mut kswin = Kswin::default();
        for _ in 0..2_000 {
            assert_eq!(kswin.update(4.2).unwrap(), Detection::stable(0.0));
        }
        assert_eq!(kswin.p_value(), 1.0);
    }

    #[test]
    fn detects_a_jump_within_a_statistic_window() {
        let mut kswin = Kswin::default();
        let values = (0..400).map(|i| if i < 200 { f64::from(i % 10) } else { 50.0 });
        let at = values
            .enumerate()
            .find(|(_, x)| kswin.update(*x).unwrap().is_drift())
            .map(|(i, _)| i)
            .unwrap();
        assert!((200..230).contains(&at), "detected at {at}");
    }

    #[test]
    fn the_same_seed_draws_the_same_samples() {
        let values: Vec<f64> = (0..3_000).map(|i| f64::from((i * 7919) % 1000)).collect();
        let run = |seed| {
            let mut kswin = Kswin::new(KswinConfig {
                seed,
                ..Default::default()
            })
            .unwrap();
            values
                .iter()
                .map(|x| kswin.update(*x).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn refuses_bad_values_and_configurations() {
        let mut kswin = Kswin::default();
        kswin.update(1.0).unwrap();
        let before = kswin.clone();
        assert!(kswin.update(f64::NAN).is_err());
        assert_eq!(kswin, before);
        for config in [
            KswinConfig {
                stat_size: 100,
                ..Default::default()
            },
            KswinConfig {
                stat_size: 60,
                ..Default::default()
            },
            KswinConfig {
                alpha: 0.0,
                ..Default::default()
            },
        ] {
            assert!(Kswin::new(config).is_err());
        }
    }
}
