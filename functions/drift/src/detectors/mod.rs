//! Drift detectors: each reads one stream of numbers, one value at a time, and says whether the
//! stream has changed. They are pure state machines (no clock, no I/O), one per file, behind the
//! common [`Detector`] trait, and follow River's `river.drift` definitions and defaults so that the
//! same parameters on the same sequence signal at the same indexes (`river_parity.rs` checks it).
//!
//! | detector | watches | levels |
//! | --- | --- | --- |
//! | [`Adwin`] | the mean, over an adaptive window | drift |
//! | [`PageHinkley`] | the mean, cumulative deviation (both directions) | drift |
//! | [`Ddm`] | a binary error rate | warning, drift |
//! | [`Kswin`] | the whole distribution (Kolmogorov-Smirnov) | drift |
//! | [`StreamingPsi`] | the binned distribution against a reference | warning, drift |
//!
//! Like River, a detector that signalled drift starts afresh on its next update, so each change is
//! reported once. Every detector's state is plain data (`Serialize`, `Deserialize`, `PartialEq`):
//! a checkpoint written as JSON and read back continues exactly where the original would have.
//!
//! Inputs must be finite and within ±[`MAX_MAGNITUDE`]: anything else is refused with a
//! [`DetectorError`] and leaves the detector untouched, so one bad value never poisons the state.

mod adwin;
mod ddm;
mod kswin;
mod page_hinkley;
mod psi;
mod stats;

#[cfg(test)]
mod checkpoint_tests;
#[cfg(test)]
mod river_parity;

pub use adwin::{Adwin, AdwinConfig, Cut};
pub use ddm::{Ddm, DdmConfig};
pub use kswin::{Kswin, KswinConfig, ks_two_sample};
pub use page_hinkley::{PageHinkley, PageHinkleyConfig};
pub use psi::{
    DISPERSION_BLOCKS, PsiBins, PsiConfig, PsiSignificance, PsiThresholds, StreamingPsi,
    StreamingPsiConfig, psi,
};
pub use stats::{chi_squared_survival, chi_squared_upper_quantile, normal_upper_quantile};

use serde::{Deserialize, Serialize};

/// The largest magnitude a detector accepts. ADWIN squares deviations and sums them over its
/// window; bounding inputs far beyond any real feature keeps every running sum finite, and so
/// every checkpoint representable in JSON (which has no infinities).
pub const MAX_MAGNITUDE: f64 = 1e100;

/// How strongly a detector believes the stream has changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// No evidence of change.
    Stable,
    /// A change may be under way (only DDM and PSI have this level).
    Warning,
    /// A change is detected; the detector starts afresh on its next update.
    Drift,
}

impl Level {
    /// The level's name, as serialised: `stable`, `warning` or `drift`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Stable => "stable",
            Level::Warning => "warning",
            Level::Drift => "drift",
        }
    }
}

/// What one update revealed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub level: Level,
    /// The detector's test statistic after this update; each detector documents which one it
    /// reports and what it reports before it has seen enough values (always a finite number).
    pub statistic: f64,
}

impl Detection {
    /// A detection at `level` with `statistic`.
    pub fn new(level: Level, statistic: f64) -> Detection {
        Detection { level, statistic }
    }

    /// A stable reading with `statistic`.
    pub fn stable(statistic: f64) -> Detection {
        Detection::new(Level::Stable, statistic)
    }

    /// Whether this update detected a drift.
    pub fn is_drift(&self) -> bool {
        self.level == Level::Drift
    }

    /// Whether this update is in the warning zone.
    pub fn is_warning(&self) -> bool {
        self.level == Level::Warning
    }
}

/// Why a detector refused a value or a configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectorError {
    /// NaN or ±∞: the value was ignored and the state is unchanged.
    #[error("value {value} is not finite; it was ignored")]
    NonFinite { value: f64 },
    /// Beyond ±[`MAX_MAGNITUDE`]: the value was ignored and the state is unchanged.
    #[error("value {value} is beyond ±{MAX_MAGNITUDE:e}; it was ignored")]
    OutOfRange { value: f64 },
    /// DDM reads a stream of errors, 1 for an error and 0 for a success.
    #[error("value {value} is neither 0 nor 1; {detector} reads a stream of errors")]
    NotBinary { detector: &'static str, value: f64 },
    /// A parameter is outside the range the detector's definition allows.
    #[error("invalid {detector} configuration: {reason}")]
    Config {
        detector: &'static str,
        reason: String,
    },
    /// A window given to PSI holds no finite value.
    #[error("the {window} window holds no finite value")]
    EmptyWindow { window: &'static str },
}

/// A change detector on a stream of numbers.
pub trait Detector {
    /// A short name for logs and events, such as `"adwin"`.
    fn name(&self) -> &'static str;

    /// Feeds one value and says what it revealed. A refused value (see [`DetectorError`]) leaves
    /// the detector exactly as it was.
    fn update(&mut self, x: f64) -> Result<Detection, DetectorError>;

    /// Forgets every value seen, keeping the configuration.
    fn reset(&mut self);
}

/// Accepts `x` if it is finite and within ±[`MAX_MAGNITUDE`].
fn check_value(x: f64) -> Result<f64, DetectorError> {
    if !x.is_finite() {
        Err(DetectorError::NonFinite { value: x })
    } else if x.abs() > MAX_MAGNITUDE {
        Err(DetectorError::OutOfRange { value: x })
    } else {
        Ok(x)
    }
}

/// A configuration error for `detector`.
fn config_error(detector: &'static str, reason: impl Into<String>) -> DetectorError {
    DetectorError::Config {
        detector,
        reason: reason.into(),
    }
}

/// River's running mean (`river.stats.Mean`): the count is a float and the update is written as
/// `mean += (1 / n) * (x - mean)`, which rounds differently from `(x - mean) / n`. DDM and
/// Page-Hinkley compare against thresholds, so matching River's indexes needs River's rounding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct RunningMean {
    n: f64,
    mean: f64,
}

impl RunningMean {
    fn update(&mut self, x: f64) {
        self.n += 1.0;
        self.mean += (1.0 / self.n) * (x - self.mean);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_finite_and_huge_values() {
        assert!(matches!(
            check_value(f64::NAN),
            Err(DetectorError::NonFinite { .. })
        ));
        assert!(matches!(
            check_value(f64::NEG_INFINITY),
            Err(DetectorError::NonFinite { .. })
        ));
        assert!(matches!(
            check_value(1e101),
            Err(DetectorError::OutOfRange { .. })
        ));
        assert_eq!(check_value(-1e100), Ok(-1e100));
    }

    #[test]
    fn the_running_mean_rounds_like_river() {
        // River gives 2.333333333333333 here; (x - mean) / n would give 2.3333333333333335.
        let mut mean = RunningMean::default();
        for x in [1.0, 2.0, 4.0] {
            mean.update(x);
        }
        assert_eq!(mean.n, 3.0);
        assert_eq!(mean.mean, 2.333_333_333_333_333);
        assert_ne!(mean.mean, 7.0 / 3.0);
    }
}
