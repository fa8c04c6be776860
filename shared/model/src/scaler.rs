//! Online standard scaling: each feature is centred on its running mean and divided by its
//! running standard deviation: Welford's algorithm over every example seen, or, with a decay β,
//! the exponentially weighted mean and variance featurize keeps of each feature
//! ([`freshet::stats::ewma`], the same step), which follow features whose scale drifts.
//!
//! Raw features live on very different scales (a log view count reaches 10, a rate stays below
//! 1); SGD on them is ill-conditioned and learns the small ones barely at all. The scaler's state
//! is part of the model artifact, so training and serving scale identically.

use serde::{Deserialize, Serialize};

use super::error::ModelError;
use freshet::stats::ewma::{Decay, ewma_step};

/// Standard deviations below this are treated as this, so a constant feature maps to 0, not ∞.
const MIN_STD: f64 = 1e-6;

/// Running mean and variance per feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    count: u64,
    mean: Vec<f64>,
    /// Sum of squared deviations from the mean (Welford's M2); with a decay, the exponentially
    /// weighted variance itself.
    m2: Vec<f64>,
    /// β of the exponentially weighted statistics; `None` for Welford's, over every example.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decay: Option<Decay>,
}

impl StandardScaler {
    /// A scaler that has seen nothing: it centres on 0 and does not rescale.
    pub fn new(n_features: usize) -> StandardScaler {
        StandardScaler::with_decay(n_features, None)
    }

    /// A scaler that has seen nothing, exponentially weighted by `decay` if given.
    pub fn with_decay(n_features: usize, decay: Option<Decay>) -> StandardScaler {
        StandardScaler {
            count: 0,
            mean: vec![0.0; n_features],
            m2: vec![0.0; n_features],
            decay,
        }
    }

    /// β of an exponentially weighted scaler; `None` for Welford's.
    pub fn decay(&self) -> Option<Decay> {
        self.decay
    }

    /// Width of the rows it scales.
    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    /// Examples seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Folds validated rows into the running statistics.
    pub fn update<R: AsRef<[f32]>>(&mut self, rows: &[R]) {
        for row in rows {
            self.count += 1;
            let n = self.count as f64;
            for ((mean, m2), x) in self
                .mean
                .iter_mut()
                .zip(self.m2.iter_mut())
                .zip(row.as_ref())
            {
                let x = f64::from(*x);
                match self.decay {
                    // The first value is the mean; the variance (in `m2`) starts at 0.
                    Some(_) if n == 1.0 => (*mean, *m2) = (x, 0.0),
                    Some(decay) => (*mean, *m2) = ewma_step(decay, *mean, *m2, x),
                    None => {
                        let delta = x - *mean;
                        *mean += delta / n;
                        *m2 += delta * (x - *mean);
                    }
                }
            }
        }
    }

    /// The scaled copy of a validated row. Until two examples are seen, rows are only centred.
    pub fn transform(&self, row: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(row.len());
        self.transform_into(&self.deviations(), row, &mut out);
        out
    }

    /// The per-feature standard deviations [`transform`](Self::transform) divides by. Computed
    /// once per batch by callers that scale many rows: a square root per value would otherwise
    /// cost more than the model's own arithmetic.
    pub(crate) fn deviations(&self) -> Vec<f64> {
        self.m2
            .iter()
            .map(|m2| {
                if self.count <= 1 {
                    1.0
                } else if self.decay.is_some() {
                    m2.sqrt().max(MIN_STD)
                } else {
                    (m2 / self.count as f64).sqrt().max(MIN_STD)
                }
            })
            .collect()
    }

    /// Appends the scaled `row` to `out`, given [`deviations`](Self::deviations) of this
    /// scaler; the same values as `transform`, bit for bit.
    pub(crate) fn transform_into(&self, deviations: &[f64], row: &[f32], out: &mut Vec<f32>) {
        out.extend(
            row.iter()
                .zip(self.mean.iter().zip(deviations))
                .map(|(x, (mean, std))| ((f64::from(*x) - mean) / std) as f32),
        );
    }

    /// The raw state, for the binary artifact: JSON would not round-trip every `f64` exactly,
    /// and a restored trainer must scale exactly as the one that wrote it.
    pub(crate) fn parts(&self) -> (u64, &[f64], &[f64]) {
        (self.count, &self.mean, &self.m2)
    }

    /// Rebuilds a state from [`parts`](Self::parts) and [`decay`](Self::decay); callers then
    /// [`validate`](Self::validate).
    pub(crate) fn from_parts(
        count: u64,
        mean: Vec<f64>,
        m2: Vec<f64>,
        decay: Option<Decay>,
    ) -> StandardScaler {
        StandardScaler {
            count,
            mean,
            m2,
            decay,
        }
    }

    /// Checks a decoded state is usable: the right width and finite statistics.
    pub fn validate(&self, n_features: usize) -> Result<(), ModelError> {
        if self.mean.len() != n_features || self.m2.len() != n_features {
            return Err(ModelError::Decode(format!(
                "scaler has {} features, the model {n_features}",
                self.mean.len()
            )));
        }
        if self.mean.iter().chain(&self.m2).any(|v| !v.is_finite())
            || self.m2.iter().any(|v| *v < 0.0)
        {
            return Err(ModelError::Decode(
                "scaler holds non-finite or negative statistics".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_batch_mean_and_population_deviation() {
        let rows = [vec![1.0f32, 10.0], vec![3.0, 10.0], vec![5.0, 10.0]];
        let mut scaler = StandardScaler::new(2);
        scaler.update(&rows[..1]);
        scaler.update(&rows[1..]);
        let std = (8.0f64 / 3.0).sqrt();
        let scaled = scaler.transform(&[5.0, 10.0]);
        assert!(
            (f64::from(scaled[0]) - 2.0 / std).abs() < 1e-6,
            "{scaled:?}"
        );
        assert_eq!(scaled[1], 0.0, "a constant feature maps to zero");
        assert_eq!(scaler.count(), 3);
    }

    #[test]
    fn before_two_examples_rows_are_only_centred() {
        let mut scaler = StandardScaler::new(1);
        assert_eq!(scaler.transform(&[4.0]), vec![4.0]);
        scaler.update(&[[4.0f32]]);
        assert_eq!(scaler.transform(&[6.0]), vec![2.0]);
    }

    #[test]
    fn a_decayed_scaler_follows_the_features_ewma() {
        let beta = Decay::new(0.5).unwrap();
        let mut scaler = StandardScaler::with_decay(1, Some(beta));
        let mut ewma = freshet::stats::ewma::Ewma::new(beta);
        for x in [3.0f32, 5.0, 4.0, 10.0, 11.0, 12.0] {
            scaler.update(&[[x]]);
            ewma.update(f64::from(x)).unwrap();
        }
        // The same statistics as featurize's scaling state, bit for bit.
        let moments = ewma.moments();
        assert_eq!(scaler.parts().1[0], moments.mean().unwrap());
        assert_eq!(scaler.parts().2[0], moments.variance().unwrap());
        let std = moments.variance().unwrap().sqrt();
        let expected = ((12.0 - moments.mean().unwrap()) / std) as f32;
        assert_eq!(scaler.transform(&[12.0]), vec![expected]);
        // It forgets: after a shift, the mean is nearer the new level than Welford's.
        let mut welford = StandardScaler::new(1);
        for x in [3.0f32, 5.0, 4.0, 10.0, 11.0, 12.0] {
            welford.update(&[[x]]);
        }
        assert!(scaler.parts().1[0] > welford.parts().1[0]);
    }

    #[test]
    fn refuses_a_state_that_does_not_fit() {
        let scaler = StandardScaler::new(2);
        assert!(scaler.validate(2).is_ok());
        assert!(scaler.validate(3).is_err());
        let broken = StandardScaler {
            count: 2,
            mean: vec![f64::NAN],
            m2: vec![0.0],
            decay: None,
        };
        assert!(broken.validate(1).is_err());
    }
}
