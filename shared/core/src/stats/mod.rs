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

#[cfg(test)]
mod tests {
    use super::*;

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
