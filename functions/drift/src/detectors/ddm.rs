//! DDM, the drift detection method (Gama et al. 2004), on a stream of errors, as River's
//! `drift.binary.DDM`.
//!
//! Each value is 1 for an error and 0 for a success. After `n` values the error rate is `p` with
//! binomial deviation `s = sqrt(p (1 - p) / n)`. Past the warm start the detector remembers the
//! `p_min`, `s_min` at which `p + s` was lowest, then reports a warning when
//! `p + s > p_min + warning_threshold · s_min` and a drift when
//! `p + s > p_min + drift_threshold · s_min`. Only a rise in the error rate is a drift. Defaults
//! are River's: warm start 30, warning 2.0, drift 3.0.
//!
//! As in River, a run of only successes through the warm start leaves `s_min = 0`, so the first
//! error after it is a drift; the detector then starts afresh.

use serde::{Deserialize, Serialize};

use super::{Detection, Detector, DetectorError, Level, RunningMean, check_value, config_error};

/// DDM parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DdmConfig {
    /// Values seen before a warning or drift may be signalled.
    pub warm_start: u64,
    /// Deviations above the best `p + s` that mean a warning (2 is about 95% confidence).
    pub warning_threshold: f64,
    /// Deviations above the best `p + s` that mean a drift (3 is about 99% confidence).
    pub drift_threshold: f64,
}

impl Default for DdmConfig {
    fn default() -> Self {
        DdmConfig {
            warm_start: 30,
            warning_threshold: 2.0,
            drift_threshold: 3.0,
        }
    }
}

/// The error rate and its deviation where `p + s` was lowest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Minimum {
    p: f64,
    s: f64,
}

/// One DDM detector. Its statistic is the current `p + s` (error rate plus its deviation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ddm {
    config: DdmConfig,
    rate: RunningMean,
    /// `None` until the warm start is over (River starts `p_min + s_min` at +∞).
    min: Option<Minimum>,
    drift_detected: bool,
}

impl Ddm {
    /// A detector with `config`, refused if a threshold is not a positive number.
    pub fn new(config: DdmConfig) -> Result<Ddm, DetectorError> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(config.warning_threshold) || !positive(config.drift_threshold) {
            return Err(config_error("ddm", "thresholds must be > 0"));
        }
        Ok(Ddm::fresh(config))
    }

    fn fresh(config: DdmConfig) -> Ddm {
        Ddm {
            config,
            rate: RunningMean::default(),
            min: None,
            drift_detected: false,
        }
    }

    /// The configuration this detector runs with.
    pub fn config(&self) -> &DdmConfig {
        &self.config
    }

    /// The level `p + s` must exceed for a drift: `p_min + drift_threshold · s_min` (`None`
    /// during the warm start).
    pub fn drift_bound(&self) -> Option<f64> {
        self.min
            .map(|min| min.p + self.config.drift_threshold * min.s)
    }

    /// The level `p + s` must exceed for a warning.
    pub fn warning_bound(&self) -> Option<f64> {
        self.min
            .map(|min| min.p + self.config.warning_threshold * min.s)
    }

    /// The error rate since the detector last started afresh.
    pub fn error_rate(&self) -> f64 {
        self.rate.mean
    }

    /// Feeds one outcome: `true` for an error. Never fails.
    pub fn update_error(&mut self, error: bool) -> Detection {
        if self.drift_detected {
            self.reset();
        }
        self.rate.update(if error { 1.0 } else { 0.0 });
        let p = self.rate.mean;
        let n = self.rate.n;
        let s = (p * (1.0 - p) / n).sqrt();
        if n <= self.config.warm_start as f64 {
            return Detection::stable(p + s);
        }
        let min = match self.min {
            Some(min) if p + s > min.p + min.s => min,
            _ => {
                let min = Minimum { p, s };
                self.min = Some(min);
                min
            }
        };
        let level = if p + s > min.p + self.config.drift_threshold * min.s {
            self.drift_detected = true;
            Level::Drift
        } else if p + s > min.p + self.config.warning_threshold * min.s {
            Level::Warning
        } else {
            Level::Stable
        };
        Detection::new(level, p + s)
    }
}

impl Default for Ddm {
    fn default() -> Self {
        Ddm::fresh(DdmConfig::default())
    }
}

impl Detector for Ddm {
    fn name(&self) -> &'static str {
        "ddm"
    }

    /// Feeds one outcome: 1.0 for an error, 0.0 for a success; any other value is refused.
    fn update(&mut self, x: f64) -> Result<Detection, DetectorError> {
        let x = check_value(x)?;
        if x == 1.0 {
            Ok(self.update_error(true))
        } else if x == 0.0 {
            Ok(self.update_error(false))
        } else {
            Err(DetectorError::NotBinary {
                detector: "ddm",
                value: x,
            })
        }
    }

    fn reset(&mut self) {
        *self = Ddm::fresh(self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_quiet_on_constant_streams() {
        for error in [false, true] {
            let mut ddm = Ddm::default();
            for i in 0..2_000 {
                assert_eq!(
                    ddm.update_error(error).level,
                    Level::Stable,
                    "{error} at {i}"
                );
            }
        }
    }

    #[test]
    fn stays_quiet_while_the_error_rate_holds() {
        // One error in four, evenly spread: p + s wobbles by far less than 2·s_min.
        let mut ddm = Ddm::default();
        for i in 0..4_000 {
            let d = ddm.update_error(i % 4 == 0);
            assert_eq!(d.level, Level::Stable, "at {i}");
        }
    }

    #[test]
    fn warns_then_detects_a_rising_error_rate() {
        let mut ddm = Ddm::default();
        for i in 0..1_000 {
            ddm.update_error(i % 10 == 0);
        }
        let mut levels = Vec::new();
        while levels.last() != Some(&Level::Drift) && levels.len() < 200 {
            levels.push(ddm.update_error(true).level);
        }
        let warning = levels.iter().position(|l| *l == Level::Warning).unwrap();
        let drift = levels.iter().position(|l| *l == Level::Drift).unwrap();
        assert!(warning < drift, "warning at {warning}, drift at {drift}");
        // The next outcome starts a fresh detector.
        ddm.update_error(false);
        assert_eq!(ddm.error_rate(), 0.0);
    }

    #[test]
    fn the_first_error_after_a_clean_warm_start_is_a_drift() {
        // River's behaviour: s_min is 0 after 31 successes, so any error exceeds p_min + 3·s_min.
        let mut ddm = Ddm::default();
        for _ in 0..31 {
            assert_eq!(ddm.update_error(false).level, Level::Stable);
        }
        assert!(ddm.update_error(true).is_drift());
    }

    #[test]
    fn refuses_values_that_are_not_outcomes() {
        let mut ddm = Ddm::default();
        ddm.update(1.0).unwrap();
        let before = ddm.clone();
        for bad in [0.5, -1.0, 2.0, f64::NAN, f64::INFINITY] {
            assert!(ddm.update(bad).is_err(), "{bad}");
        }
        assert_eq!(ddm, before);
        assert!(
            Ddm::new(DdmConfig {
                drift_threshold: -1.0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
