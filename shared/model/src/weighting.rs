//! How much each row's cross-entropy counts in a training step: 1 for a final label, and the
//! importance weights of fake-negative weighting (FNW; Ktena et al., "Addressing Delayed
//! Feedback for Continuous Training with Neural Networks in CTR prediction", RecSys 2019) for
//! the rows of a stream where every view arrives at once as a negative and a positive duplicate
//! follows if it converts.
//!
//! In that stream a view with conversion probability `π` appears once as a negative and, with
//! probability `π`, once more as a positive, so the data's own rate is `b = π / (1 + π)`. FNW
//! weighs a fake negative by `(1 − p)(1 + p)` and a positive duplicate by `1 + p`, where `p` is
//! the model's probability for the row before the step, held fixed (no gradient flows through
//! it): the ratio `π(y | x) / b(y | x)` with the model standing in for the unknown `π`. The
//! expected weighted loss of a view is then `(1 + p)·[(1 − p)·ℓ(0) + π·ℓ(1)]`, whose gradient in
//! the model's output vanishes where the output equals `π`: the model learns the true rate with
//! no second model and no wait.

use freshet::events::Feedback;

/// How one row's loss is weighted (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowWeight {
    /// A final label: weight 1.
    #[default]
    One,
    /// A negative sent before its label was known: `(1 − p)(1 + p)`.
    FakeNegative,
    /// The positive duplicate of a fake negative: `1 + p`.
    Correction,
}

impl RowWeight {
    /// The weight of a row the model gives probability `p` before the step; always in [0, 2].
    pub fn weight(self, p: f32) -> f32 {
        // Probabilities come from a finite logit, so they lie in [0, 1]; the clamp keeps the
        // weight finite and bounded whatever a caller passes.
        let p = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.5
        };
        match self {
            RowWeight::One => 1.0,
            RowWeight::FakeNegative => (1.0 - p) * (1.0 + p),
            RowWeight::Correction => 1.0 + p,
        }
    }
}

impl From<Feedback> for RowWeight {
    fn from(feedback: Feedback) -> RowWeight {
        match feedback {
            Feedback::Final => RowWeight::One,
            Feedback::FakeNegative => RowWeight::FakeNegative,
            Feedback::Correction => RowWeight::Correction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_the_models_own_probability_and_stay_bounded() {
        assert_eq!(RowWeight::One.weight(0.3), 1.0);
        assert!((RowWeight::FakeNegative.weight(0.5) - 0.75).abs() < 1e-7);
        assert!((RowWeight::Correction.weight(0.5) - 1.5).abs() < 1e-7);
        for p in [f32::NAN, f32::INFINITY, -3.0, 7.0] {
            for row in [RowWeight::FakeNegative, RowWeight::Correction] {
                let w = row.weight(p);
                assert!(w.is_finite() && (0.0..=2.0).contains(&w), "{row:?} {p}");
            }
        }
        assert_eq!(RowWeight::from(Feedback::Correction), RowWeight::Correction);
    }

    /// The expected FNW loss of a view is stationary exactly where the model's probability is
    /// the view's conversion rate: for each π, the derivative of
    /// (1 − p)(1 + p)·(−ln(1 − q)) + π·(1 + p)·(−ln q) in q at q = p vanishes at p = π only.
    #[test]
    fn the_weighted_loss_is_stationary_at_the_true_rate() {
        for pi in [0.02f64, 0.08, 0.3, 0.7] {
            let slope = |p: f64| {
                let (neg, pos) = (
                    f64::from(RowWeight::FakeNegative.weight(p as f32)),
                    f64::from(RowWeight::Correction.weight(p as f32)),
                );
                neg / (1.0 - p) - pi * pos / p
            };
            assert!(slope(pi).abs() < 1e-5, "π {pi}: {}", slope(pi));
            // Below π the loss falls as q rises; above it, it rises: π is the minimum.
            assert!(slope(pi * 0.8) < 0.0 && slope((pi * 1.2).min(0.99)) > 0.0);
        }
    }
}
