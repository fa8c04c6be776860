//! Statistics primitives that any layer may use: the check every value folded into a running
//! statistic passes, and [`ewma`], the exponentially weighted mean and variance that featurize
//! keeps per entity and the model's input scaler applies. Pure state machines, no I/O and no
//! clock; states serialise as JSON, so they are small and validated when decoded.
//!
//! Values are refused when they are NaN, infinite or beyond ±[`MAX_ABS_VALUE`], the same bound
//! event decoding applies. That bound is also what keeps every sum, variance and standard score
//! finite, however many values are folded in.

pub mod ewma;
pub mod hash;

pub use ewma::{DEFAULT_DECAY, Decay, Ewma, EwmaError, EwmaMoments, EwmaVector};

pub use crate::events::MAX_ABS_VALUE;

/// Why a value cannot be folded into an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// NaN or ±∞.
    #[error("{value} is not finite")]
    NonFinite { value: f64 },
    /// Finite, but beyond ±[`MAX_ABS_VALUE`].
    #[error("{value:e} is beyond ±{MAX_ABS_VALUE:e}")]
    OutOfRange { value: f64 },
}

/// Returns `value` if an aggregate may take it.
pub fn check_value(value: f64) -> Result<f64, ValueError> {
    if !value.is_finite() {
        Err(ValueError::NonFinite { value })
    } else if value.abs() > MAX_ABS_VALUE {
        Err(ValueError::OutOfRange { value })
    } else {
        Ok(value)
    }
}

/// Probabilities are kept this far from 0 and 1 for the log loss, so one confident miss costs a
/// large but finite loss (about 16 nats) instead of infinity.
pub const LOG_LOSS_CLAMP: f64 = 1e-7;

/// The cross-entropy of predicting `p` for class 1 when the truth is `positive`, in nats:
/// `-ln p(label)`, with `p` clamped to `[LOG_LOSS_CLAMP, 1 - LOG_LOSS_CLAMP]`. Every log loss
/// here, train's prequential one and drift's error stream alike, is this one.
pub fn log_loss(p: f64, positive: bool) -> f64 {
    let p = p.clamp(LOG_LOSS_CLAMP, 1.0 - LOG_LOSS_CLAMP);
    if positive { -p.ln() } else { -(1.0 - p).ln() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_loss_is_the_cross_entropy_and_stays_finite() {
        assert!((log_loss(0.5, true) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((log_loss(0.8, false) - -(0.2f64).ln()).abs() < 1e-12);
        let worst = -LOG_LOSS_CLAMP.ln();
        assert!((log_loss(0.0, true) - worst).abs() < 1e-9);
        assert!((log_loss(1.0, false) - worst).abs() < 1e-6);
        assert!(worst > 16.0 && worst < 16.2);
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(check_value(-3.5), Ok(-3.5));
        assert_eq!(check_value(MAX_ABS_VALUE), Ok(MAX_ABS_VALUE));
        assert!(matches!(
            check_value(f64::NAN),
            Err(ValueError::NonFinite { .. })
        ));
        assert!(matches!(
            check_value(f64::NEG_INFINITY),
            Err(ValueError::NonFinite { .. })
        ));
        assert!(matches!(
            check_value(1e13),
            Err(ValueError::OutOfRange { .. })
        ));
    }
}
