//! Exponentially weighted moving mean and variance, and the online standard scaling built on them.
//!
//! With decay β, each observation x updates μ ← β·μ + (1−β)·x, then σ² ← β·σ² + (1−β)·(x − μ)²
//! using the new μ; the first observation sets μ = x and σ² = 0. Unlike the Welford scaler in
//! the model (which weighs all history equally), an EWMA forgets at rate β, so scaling follows a
//! feature whose distribution drifts. The effective memory is about 1/(1−β) observations: 20 for
//! the default β = 0.95.
//!
//! [`Ewma`] tracks one value; [`EwmaVector`] tracks a fixed list of named features and stores β
//! once. A refused value (NaN, ∞, beyond ±[`MAX_ABS_VALUE`]) leaves the state as it was.

use serde::{Deserialize, Serialize};

use super::{MAX_ABS_VALUE, ValueError, check_value};

/// The decay used when none is configured.
pub const DEFAULT_DECAY: f64 = 0.95;
/// Standard deviations below this are treated as this, so a constant feature scales to 0, not
/// to ±∞ or NaN. The same floor as the model's scaler.
const MIN_STD: f64 = 1e-6;

/// Why an EWMA refused a setting or a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EwmaError {
    /// β must lie strictly between 0 and 1: 0 would forget everything, 1 would learn nothing.
    #[error("decay must be strictly between 0 and 1, got {beta}")]
    InvalidDecay { beta: f64 },
    /// The value of a single [`Ewma`] was refused.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A value of one feature of an [`EwmaVector`] was refused.
    #[error("feature {feature}: {source}")]
    FeatureValue { feature: String, source: ValueError },
    /// A vector of values did not have one value per feature.
    #[error("got {got} values for {expected} features")]
    FeatureCount { expected: usize, got: usize },
    /// A feature name was given twice when building an [`EwmaVector`].
    #[error("feature {name} is named twice")]
    DuplicateFeature { name: String },
    /// A feature name that the [`EwmaVector`] does not track.
    #[error("unknown feature {name}")]
    UnknownFeature { name: String },
}

/// The decay β of an EWMA, checked to lie strictly between 0 and 1 (also when decoded).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Decay(f64);

impl Decay {
    /// Checks `beta` and wraps it.
    pub fn new(beta: f64) -> Result<Decay, EwmaError> {
        // Written so that NaN fails both comparisons and is refused.
        if beta > 0.0 && beta < 1.0 {
            Ok(Decay(beta))
        } else {
            Err(EwmaError::InvalidDecay { beta })
        }
    }

    /// β itself.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Decay {
    fn default() -> Decay {
        Decay(DEFAULT_DECAY)
    }
}

impl std::str::FromStr for Decay {
    type Err = EwmaError;

    fn from_str(text: &str) -> Result<Decay, EwmaError> {
        let beta = text
            .trim()
            .parse::<f64>()
            .map_err(|_| EwmaError::InvalidDecay { beta: f64::NAN })?;
        Decay::new(beta)
    }
}

impl TryFrom<f64> for Decay {
    type Error = EwmaError;

    fn try_from(beta: f64) -> Result<Decay, EwmaError> {
        Decay::new(beta)
    }
}

impl From<Decay> for f64 {
    fn from(decay: Decay) -> f64 {
        decay.0
    }
}

/// The running moments of one value, without its decay (an [`EwmaVector`] shares one β).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EwmaMoments {
    /// Observations folded in; 0 means `mean` and `var` are not yet meaningful.
    count: u64,
    mean: f64,
    var: f64,
}

impl EwmaMoments {
    /// Observations folded in (saturating at `u64::MAX`).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The weighted mean μ, once at least one value was seen.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }

    /// The weighted variance σ², once at least one value was seen.
    pub fn variance(&self) -> Option<f64> {
        // A decoded state could carry a slightly negative variance; it means 0.
        (self.count > 0).then_some(self.var.max(0.0))
    }

    /// The weighted standard deviation σ, once at least one value was seen.
    pub fn std_dev(&self) -> Option<f64> {
        self.variance().map(f64::sqrt)
    }

    /// The standard score (x − μ) / max(σ, 10⁻⁶), finite for every input: a constant feature
    /// scales to 0, NaN is read as the mean (0), and ±∞ or values beyond ±[`MAX_ABS_VALUE`] are
    /// clamped to that bound first. Before any observation there is no scale, and the answer is 0.
    pub fn standardize(&self, x: f64) -> f64 {
        if self.count == 0 || x.is_nan() {
            return 0.0;
        }
        let x = x.clamp(-MAX_ABS_VALUE, MAX_ABS_VALUE);
        let std = self.var.max(0.0).sqrt().max(MIN_STD);
        // Bounded inputs keep this finite; the clamp guards a hand-edited state with a huge mean.
        ((x - self.mean) / std).clamp(-f64::MAX, f64::MAX)
    }

    /// The moments after observing `x`, or why `x` was refused. `self` is left untouched, so a
    /// caller updating several moments can commit all of them or none.
    fn updated(&self, decay: Decay, x: f64) -> Result<EwmaMoments, ValueError> {
        let x = check_value(x)?;
        if self.count == 0 {
            return Ok(EwmaMoments {
                count: 1,
                mean: x,
                var: 0.0,
            });
        }
        let (mean, var) = ewma_step(decay, self.mean, self.var, x);
        Ok(EwmaMoments {
            count: self.count.saturating_add(1),
            mean,
            var,
        })
    }
}

/// One EWMA step from (μ, σ²) after a first value: μ ← β·μ + (1 − β)·x, then
/// σ² ← β·σ² + (1 − β)·(x − μ)² with the new μ. The one place the formula is written: the
/// features' scaling state and the models' exponentially weighted scaler both step with it.
pub fn ewma_step(decay: Decay, mean: f64, var: f64, x: f64) -> (f64, f64) {
    let beta = decay.get();
    let mean = beta * mean + (1.0 - beta) * x;
    let var = beta * var + (1.0 - beta) * (x - mean) * (x - mean);
    (mean, var)
}

/// The EWMA mean and variance of one value, with its decay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    decay: Decay,
    moments: EwmaMoments,
}

impl Ewma {
    /// An EWMA that has seen nothing.
    pub fn new(decay: Decay) -> Ewma {
        Ewma {
            decay,
            moments: EwmaMoments::default(),
        }
    }

    pub fn decay(&self) -> Decay {
        self.decay
    }

    /// The running moments: count, mean, variance.
    pub fn moments(&self) -> &EwmaMoments {
        &self.moments
    }

    /// Folds `x` in. A refused value changes nothing.
    pub fn update(&mut self, x: f64) -> Result<(), EwmaError> {
        self.moments = self.moments.updated(self.decay, x)?;
        Ok(())
    }

    /// The standard score of `x` under the current moments; see [`EwmaMoments::standardize`].
    pub fn standardize(&self, x: f64) -> f64 {
        self.moments.standardize(x)
    }
}

/// One EWMA per named feature, in a fixed order, sharing one decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EwmaVector {
    decay: Decay,
    features: Vec<(String, EwmaMoments)>,
}

impl EwmaVector {
    /// EWMAs for `names`, in that order, none of which has seen anything.
    pub fn new<I, S>(decay: Decay, names: I) -> Result<EwmaVector, EwmaError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut features: Vec<(String, EwmaMoments)> = Vec::new();
        for name in names {
            let name = name.into();
            if features.iter().any(|(known, _)| *known == name) {
                return Err(EwmaError::DuplicateFeature { name });
            }
            features.push((name, EwmaMoments::default()));
        }
        Ok(EwmaVector { decay, features })
    }

    pub fn decay(&self) -> Decay {
        self.decay
    }

    /// Weighs later observations by `decay`; the moments so far are kept.
    pub fn set_decay(&mut self, decay: Decay) {
        self.decay = decay;
    }

    /// The feature names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.features.iter().map(|(name, _)| name.as_str())
    }

    /// How many features are tracked.
    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The moments of feature `name`.
    pub fn get(&self, name: &str) -> Option<&EwmaMoments> {
        self.features
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, moments)| moments)
    }

    /// Folds in one value per feature, in order. All are checked before any is applied: on
    /// error, nothing changes.
    pub fn update(&mut self, values: &[f64]) -> Result<(), EwmaError> {
        self.check_len(values)?;
        let decay = self.decay;
        let updated = self
            .features
            .iter()
            .zip(values)
            .map(|((name, moments), &x)| {
                moments
                    .updated(decay, x)
                    .map_err(|source| EwmaError::FeatureValue {
                        feature: name.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for ((_, moments), new) in self.features.iter_mut().zip(updated) {
            *moments = new;
        }
        Ok(())
    }

    /// Folds `x` into feature `name` only, for features that arrive on their own.
    pub fn update_feature(&mut self, name: &str, x: f64) -> Result<(), EwmaError> {
        let decay = self.decay;
        let Some((_, moments)) = self.features.iter_mut().find(|(known, _)| known == name) else {
            return Err(EwmaError::UnknownFeature {
                name: name.to_string(),
            });
        };
        *moments = moments
            .updated(decay, x)
            .map_err(|source| EwmaError::FeatureValue {
                feature: name.to_string(),
                source,
            })?;
        Ok(())
    }

    /// The standard scores of one value per feature, in order; see
    /// [`EwmaMoments::standardize`].
    pub fn standardize(&self, values: &[f64]) -> Result<Vec<f64>, EwmaError> {
        self.check_len(values)?;
        Ok(self
            .features
            .iter()
            .zip(values)
            .map(|((_, moments), &x)| moments.standardize(x))
            .collect())
    }

    fn check_len(&self, values: &[f64]) -> Result<(), EwmaError> {
        if values.len() == self.features.len() {
            Ok(())
        } else {
            Err(EwmaError::FeatureCount {
                expected: self.features.len(),
                got: values.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn decay_is_checked_also_when_decoded() {
        for beta in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(Decay::new(beta), Err(EwmaError::InvalidDecay { .. })),
                "{beta}"
            );
        }
        assert_eq!(Decay::new(0.5).unwrap().get(), 0.5);
        assert_eq!(Decay::default().get(), 0.95);
        assert_eq!(serde_json::to_string(&Decay::default()).unwrap(), "0.95");
        assert!(serde_json::from_str::<Decay>("1.5").is_err());
        assert!(serde_json::from_str::<Ewma>(r#"{"decay":0,"moments":{}}"#).is_err());
    }

    #[test]
    fn a_short_sequence_matches_the_formula_by_hand() {
        // β = 0.5 and x = 2, 4, 8:
        //   μ₁ = 2,                       σ²₁ = 0
        //   μ₂ = 0.5·2 + 0.5·4 = 3,       σ²₂ = 0.5·0 + 0.5·(4 − 3)² = 0.5
        //   μ₃ = 0.5·3 + 0.5·8 = 5.5,     σ²₃ = 0.5·0.5 + 0.5·(8 − 5.5)² = 3.375
        let mut ewma = Ewma::new(Decay::new(0.5).unwrap());
        let expected = [(2.0, 2.0, 0.0), (4.0, 3.0, 0.5), (8.0, 5.5, 3.375)];
        for (count, (x, mean, var)) in (1..).zip(expected) {
            ewma.update(x).unwrap();
            assert_eq!(ewma.moments().count(), count);
            assert_eq!(ewma.moments().mean(), Some(mean));
            assert_eq!(ewma.moments().variance(), Some(var));
        }
        assert_eq!(ewma.standardize(5.5), 0.0);
        assert!(close(ewma.standardize(5.5 + 3.375f64.sqrt()), 1.0, 1e-12));
        assert!(close(
            ewma.standardize(5.5 - 2.0 * 3.375f64.sqrt()),
            -2.0,
            1e-12
        ));
    }

    #[test]
    fn the_default_decay_matches_the_formula_by_hand() {
        // β = 0.95 and x = 10, 20: μ₂ = 9.5 + 1 = 10.5, σ²₂ = 0.05·(20 − 10.5)² = 4.5125.
        let mut ewma = Ewma::default();
        ewma.update(10.0).unwrap();
        ewma.update(20.0).unwrap();
        assert!(close(ewma.moments().mean().unwrap(), 10.5, 1e-15));
        assert!(close(ewma.moments().variance().unwrap(), 4.5125, 1e-13));
    }

    /// μ_t and σ²_t recomputed from scratch as explicit weighted sums over the whole history:
    /// μ_t = β^(t−1)·x₁ + Σ_{i=2..t} (1−β)·β^(t−i)·x_i and σ²_t = Σ_{i=2..t} (1−β)·β^(t−i)·(x_i − μ_i)².
    fn naive(beta: f64, xs: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let means: Vec<f64> = (1..=xs.len())
            .map(|t| {
                let mut mean = beta.powi(t as i32 - 1) * xs[0];
                for i in 2..=t {
                    mean += (1.0 - beta) * beta.powi((t - i) as i32) * xs[i - 1];
                }
                mean
            })
            .collect();
        let vars = (1..=xs.len())
            .map(|t| {
                (2..=t)
                    .map(|i| {
                        let d = xs[i - 1] - means[i - 1];
                        (1.0 - beta) * beta.powi((t - i) as i32) * d * d
                    })
                    .sum()
            })
            .collect();
        (means, vars)
    }

    #[test]
    fn a_long_sequence_matches_a_naive_recomputation() {
        let mut rng = StdRng::seed_from_u64(7);
        for beta in [0.5, 0.95, 0.999] {
            // A drifting signal with noise, so the mean moves and the variance is not constant.
            let xs: Vec<f64> = (0..1500)
                .map(|i| (i as f64 / 100.0).sin() * 50.0 + rng.random_range(-5.0..5.0))
                .collect();
            let (means, vars) = naive(beta, &xs);
            let mut ewma = Ewma::new(Decay::new(beta).unwrap());
            for (t, &x) in xs.iter().enumerate() {
                ewma.update(x).unwrap();
                let m = ewma.moments();
                assert!(close(m.mean().unwrap(), means[t], 1e-9), "β {beta}, t {t}");
                assert!(
                    close(m.variance().unwrap(), vars[t], 1e-9),
                    "β {beta}, t {t}"
                );
            }
        }
    }

    #[test]
    fn a_constant_feature_scales_to_zero() {
        let mut ewma = Ewma::default();
        for _ in 0..100 {
            ewma.update(7.0).unwrap();
        }
        assert_eq!(ewma.moments().variance(), Some(0.0));
        assert_eq!(ewma.standardize(7.0), 0.0);
        assert!(ewma.standardize(8.0).is_finite());
    }

    #[test]
    fn refused_values_leave_the_state_unchanged() {
        let mut ewma = Ewma::default();
        ewma.update(1.0).unwrap();
        ewma.update(3.0).unwrap();
        let before = ewma;
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(
                ewma.update(x),
                Err(EwmaError::Value(ValueError::NonFinite { .. }))
            ));
        }
        for x in [1e308, -1e13] {
            assert!(matches!(
                ewma.update(x),
                Err(EwmaError::Value(ValueError::OutOfRange { .. }))
            ));
        }
        assert_eq!(ewma, before);
    }

    #[test]
    fn standardize_is_finite_for_any_input() {
        let empty = Ewma::default();
        assert_eq!(empty.standardize(42.0), 0.0, "no scale yet");
        let mut ewma = Ewma::default();
        ewma.update(MAX_ABS_VALUE).unwrap();
        ewma.update(-MAX_ABS_VALUE).unwrap();
        for x in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN_POSITIVE,
            0.0,
        ] {
            assert!(ewma.standardize(x).is_finite(), "{x}");
        }
        assert_eq!(ewma.standardize(f64::NAN), 0.0);
        // A hand-edited state with an absurd mean still gives a finite answer.
        let odd: Ewma =
            serde_json::from_str(r#"{"decay":0.5,"moments":{"count":3,"mean":1e308,"var":-1}}"#)
                .unwrap();
        assert!(odd.standardize(-1e12).is_finite());
        assert_eq!(odd.moments().variance(), Some(0.0));
    }

    #[test]
    fn extreme_values_keep_the_moments_finite() {
        let mut ewma = Ewma::new(Decay::new(0.01).unwrap());
        for i in 0..1000 {
            let x = if i % 2 == 0 {
                MAX_ABS_VALUE
            } else {
                -MAX_ABS_VALUE
            };
            ewma.update(x).unwrap();
        }
        let m = ewma.moments();
        assert!(m.mean().unwrap().is_finite() && m.variance().unwrap().is_finite());
    }

    #[test]
    fn a_vector_tracks_each_named_feature() {
        let mut vector = EwmaVector::new(Decay::new(0.5).unwrap(), ["price", "views"]).unwrap();
        assert_eq!(vector.names().collect::<Vec<_>>(), ["price", "views"]);
        vector.update(&[2.0, 100.0]).unwrap();
        vector.update(&[4.0, 100.0]).unwrap();
        vector.update_feature("price", 8.0).unwrap();
        let price = vector.get("price").unwrap();
        assert_eq!((price.mean(), price.variance()), (Some(5.5), Some(3.375)));
        let views = vector.get("views").unwrap();
        assert_eq!((views.count(), views.mean()), (2, Some(100.0)));
        assert_eq!(vector.standardize(&[5.5, 100.0]).unwrap(), [0.0, 0.0]);

        let json = serde_json::to_string(&vector).unwrap();
        assert_eq!(serde_json::from_str::<EwmaVector>(&json).unwrap(), vector);
    }

    #[test]
    fn a_vector_refuses_bad_input_as_a_whole() {
        assert_eq!(
            EwmaVector::new(Decay::default(), ["a", "b", "a"]),
            Err(EwmaError::DuplicateFeature {
                name: "a".to_string()
            })
        );
        let mut vector = EwmaVector::new(Decay::default(), ["a", "b"]).unwrap();
        vector.update(&[1.0, 2.0]).unwrap();
        let before = vector.clone();
        assert_eq!(
            vector.update(&[1.0]),
            Err(EwmaError::FeatureCount {
                expected: 2,
                got: 1
            })
        );
        assert!(matches!(
            vector.update(&[5.0, f64::NAN]),
            Err(EwmaError::FeatureValue { ref feature, .. }) if feature == "b"
        ));
        assert!(matches!(
            vector.update_feature("c", 1.0),
            Err(EwmaError::UnknownFeature { .. })
        ));
        assert!(matches!(
            vector.update_feature("a", f64::INFINITY),
            Err(EwmaError::FeatureValue { .. })
        ));
        assert!(vector.standardize(&[1.0, 2.0, 3.0]).is_err());
        assert_eq!(
            vector, before,
            "the valid first value was not applied either"
        );
    }
}
