//! The Page-Hinkley test (Page 1954; Hinkley 1971), two-sided, as River's `PageHinkley` with
//! mode "both".
//!
//! It tracks the cumulative deviation of each value from the running mean, less a tolerance δ for
//! an upward change and plus δ for a downward one, each sum faded by α. It signals a change when
//! the upward sum rises more than λ above its minimum or the downward sum falls more than λ below
//! its maximum, once at least `min_instances` values have been seen. Defaults are River's:
//! min_instances 30, δ 0.005, λ 50, α 1 - 0.0001.
//!
//! River starts the minimum at +∞ and the maximum at -1 (not at 0), and rounds as written below;
//! both choices move detection indexes, so they are kept.

use serde::{Deserialize, Serialize};

use super::{Detection, Detector, DetectorError, Level, RunningMean, check_value, config_error};

/// Page-Hinkley parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PageHinkleyConfig {
    /// Values seen before a change may be signalled.
    pub min_instances: u64,
    /// Tolerance δ: deviations smaller than this do not accumulate.
    pub delta: f64,
    /// Threshold λ: larger means fewer, surer detections.
    pub threshold: f64,
    /// Fading factor α applied to both cumulative sums at each step.
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

/// One two-sided Page-Hinkley detector. Its statistic is the larger of the upward and downward
/// test values (0 until the first value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    config: PageHinkleyConfig,
    mean: RunningMean,
    sum_increase: f64,
    sum_decrease: f64,
    /// River starts this at +∞; `None` stands for it because JSON cannot hold ∞.
    min_increase: Option<f64>,
    max_decrease: f64,
    drift_detected: bool,
}

impl PageHinkley {
    /// A detector with `config`, refused if a parameter is out of range.
    pub fn new(config: PageHinkleyConfig) -> Result<PageHinkley, DetectorError> {
        let finite = |v: f64| v.is_finite();
        if !(finite(config.delta) && config.delta >= 0.0) {
            return Err(config_error("page_hinkley", "delta must be ≥ 0"));
        }
        if !(finite(config.threshold) && config.threshold > 0.0) {
            return Err(config_error("page_hinkley", "threshold must be > 0"));
        }
        if !(config.alpha > 0.0 && config.alpha <= 1.0) {
            return Err(config_error("page_hinkley", "alpha must be in (0, 1]"));
        }
        Ok(PageHinkley::fresh(config))
    }

    fn fresh(config: PageHinkleyConfig) -> PageHinkley {
        PageHinkley {
            config,
            mean: RunningMean::default(),
            sum_increase: 0.0,
            sum_decrease: 0.0,
            min_increase: None,
            max_decrease: -1.0,
            drift_detected: false,
        }
    }

    /// The configuration this detector runs with.
    pub fn config(&self) -> &PageHinkleyConfig {
        &self.config
    }

    /// Values seen since the detector last started afresh, including the one that signalled.
    pub fn observations(&self) -> u64 {
        // The count is a float only to round like River; it is always a small whole number.
        self.mean.n as u64
    }

    /// Whether the current deviation is upward (the mean rose) rather than downward.
    pub fn upward(&self) -> bool {
        let (up, down) = self.tests();
        up >= down
    }

    /// The upward and downward test values.
    fn tests(&self) -> (f64, f64) {
        let up = self.min_increase.map_or(0.0, |min| self.sum_increase - min);
        let down = self.max_decrease - self.sum_decrease;
        (up, down)
    }
}

impl Default for PageHinkley {
    fn default() -> Self {
        PageHinkley::fresh(PageHinkleyConfig::default())
    }
}

impl Detector for PageHinkley {
    fn name(&self) -> &'static str {
        "page_hinkley"
    }

    fn update(&mut self, x: f64) -> Result<Detection, DetectorError> {
        let x = check_value(x)?;
        if self.drift_detected {
            self.reset();
        }
        self.mean.update(x);
        let dev = x - self.mean.mean;
        let alpha = self.config.alpha;
        // Written as River writes it: (α·sum + dev) - δ, not α·sum + (dev - δ).
        self.sum_increase = alpha * self.sum_increase + dev - self.config.delta;
        self.sum_decrease = alpha * self.sum_decrease + dev + self.config.delta;
        if self.min_increase.is_none_or(|min| self.sum_increase < min) {
            self.min_increase = Some(self.sum_increase);
        }
        if self.sum_decrease > self.max_decrease {
            self.max_decrease = self.sum_decrease;
        }
        let (up, down) = self.tests();
        let statistic = up.max(down);
        if self.mean.n >= self.config.min_instances as f64
            && (up > self.config.threshold || down > self.config.threshold)
        {
            self.drift_detected = true;
            return Ok(Detection::new(Level::Drift, statistic));
        }
        Ok(Detection::stable(statistic))
    }

    fn reset(&mut self) {
        *self = PageHinkley::fresh(self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic noise source in [-0.5, 0.5), so tests need no random-number crate.
    fn noise(i: u64) -> f64 {
        let x = (i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 33) as f64;
        x / (1u64 << 31) as f64 - 0.5
    }

    fn first_drift(ph: &mut PageHinkley, values: impl Iterator<Item = f64>) -> Option<usize> {
        values
            .enumerate()
            .find(|(_, x)| ph.update(*x).unwrap().is_drift())
            .map(|(i, _)| i)
    }

    #[test]
    fn stays_quiet_on_a_constant_and_on_a_stationary_stream() {
        let mut ph = PageHinkley::default();
        assert_eq!(first_drift(&mut ph, (0..5_000).map(|_| 3.0)), None);
        let mut ph = PageHinkley::default();
        assert_eq!(
            first_drift(&mut ph, (0..5_000).map(|i| 1.0 + noise(i))),
            None
        );
    }

    #[test]
    fn detects_a_mean_shift_soon_after_it_happens_and_reports_its_direction() {
        let mut ph = PageHinkley::default();
        let values = (0..3_000u64).map(|i| if i < 1_000 { noise(i) } else { 5.0 + noise(i) });
        let at = first_drift(&mut ph, values).unwrap();
        assert!((1_000..1_030).contains(&at), "detected at {at}");
        assert!(ph.upward());
        assert_eq!(ph.observations(), at as u64 + 1);

        let mut ph = PageHinkley::default();
        let values = (0..3_000u64).map(|i| if i < 500 { 10.0 + noise(i) } else { noise(i) });
        assert!(first_drift(&mut ph, values).is_some());
        assert!(!ph.upward());
    }

    #[test]
    fn does_not_signal_before_min_instances() {
        // A jump at the second value is far beyond λ, yet nothing is said before 30 values.
        let mut ph = PageHinkley::default();
        let values = (0..100).map(|i| if i == 0 { 0.0 } else { 1_000.0 });
        let at = first_drift(&mut ph, values).unwrap();
        assert_eq!(at, 29);
    }

    #[test]
    fn a_refused_value_leaves_the_state_untouched() {
        let mut ph = PageHinkley::default();
        ph.update(1.0).unwrap();
        let before = ph.clone();
        assert!(matches!(
            ph.update(f64::NAN),
            Err(DetectorError::NonFinite { .. })
        ));
        assert!(matches!(
            ph.update(f64::INFINITY),
            Err(DetectorError::NonFinite { .. })
        ));
        assert_eq!(ph, before);
    }

    #[test]
    fn starts_afresh_after_a_drift() {
        let mut ph = PageHinkley::default();
        let values = (0..200u64).map(|i| if i < 50 { 0.0 } else { 100.0 });
        first_drift(&mut ph, values).unwrap();
        ph.update(7.0).unwrap();
        assert_eq!(ph.observations(), 1);
        assert_eq!(ph.mean.mean, 7.0);
    }

    #[test]
    fn refuses_a_bad_configuration() {
        for config in [
            PageHinkleyConfig {
                threshold: 0.0,
                ..Default::default()
            },
            PageHinkleyConfig {
                alpha: 1.5,
                ..Default::default()
            },
            PageHinkleyConfig {
                delta: f64::NAN,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                PageHinkley::new(config),
                Err(DetectorError::Config { .. })
            ));
        }
    }
}
