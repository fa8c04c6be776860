//! A degree-2 factorization machine (Rendle, 2010), the bookstore recommender's model.
//!
//! The logit is `w0 + Σᵢ wᵢxᵢ + Σᵢ<ⱼ ⟨vᵢ, vⱼ⟩ xᵢxⱼ`: a bias, a linear term, and every pairwise
//! product of features weighted by the dot product of two learned `k`-dimensional factors. The
//! input vector mixes user features and item features, so the pairwise terms include every
//! user × item interaction, each learned through shared factors rather than a weight of its own
//! (which is what lets it generalise to pairs seldom seen together). Rendle's identity
//! `Σᵢ<ⱼ ⟨vᵢ, vⱼ⟩ xᵢxⱼ = ½ Σ_f [(Σᵢ v_if xᵢ)² − Σᵢ v_if² xᵢ²]` makes the forward pass O(k·n).
//!
//! Parameters, in storage order: `w0 [1, 1]`, `w [n, 1]`, `V [n, k]`; the L2 penalty applies to
//! `w` and `V`. `w0` and `w` start at zero; `V` starts seeded and small-normal (σ = 0.1), since
//! at `V = 0` every pairwise gradient is zero and the factors would never move. Training and
//! artifacts are shared with the other kinds (`learner.rs`, `artifact.rs`); this file holds the
//! shapes and the two forward passes, burn's for gradients and the host's for scoring.

use burn::tensor::Tensor;

use super::error::ModelError;
use super::init::SeededRng;
use super::params::{ParamSpec, shape_error};

/// Latent factors per feature when the configuration does not say.
pub const DEFAULT_FACTORS: usize = 8;

/// Largest accepted number of factors, a bound so a typo cannot allocate gigabytes per row.
pub const MAX_FACTORS: usize = 1024;

/// Standard deviation of the initial factors: small enough that the pairwise term starts near
/// zero, large enough that its gradients do not.
const FACTOR_INIT_STD: f64 = 0.1;

/// Parameter tensors in storage order.
pub(crate) fn specs(n_features: usize, factors: usize) -> Vec<ParamSpec> {
    vec![
        ParamSpec {
            rows: 1,
            cols: 1,
            decay: false,
            trained: true,
        },
        ParamSpec {
            rows: n_features,
            cols: 1,
            decay: true,
            trained: true,
        },
        ParamSpec {
            rows: n_features,
            cols: factors,
            decay: true,
            trained: true,
        },
    ]
}

/// Seeded initial parameters (see the module docs).
pub(crate) fn init(n_features: usize, factors: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = SeededRng::for_tensor(seed, 2);
    vec![
        vec![0.0],
        vec![0.0; n_features],
        (0..n_features * factors)
            .map(|_| rng.normal(FACTOR_INIT_STD))
            .collect(),
    ]
}

/// Logits, shape `[m, 1]`, for inputs `[m, n]`, by Rendle's O(k·n) identity.
pub(crate) fn forward(params: &[Tensor<2>], x: Tensor<2>) -> Result<Tensor<2>, ModelError> {
    let [w0, w, v] = params else {
        return Err(shape_error());
    };
    let linear = x.clone().matmul(w.clone()).add(w0.clone());
    let sum_sq = x.clone().matmul(v.clone()).square(); // [m, k]: (Σᵢ v_if xᵢ)²
    let sq_sum = x.square().matmul(v.clone().square()); // [m, k]: Σᵢ v_if² xᵢ²
    let pairs = sum_sq.sub(sq_sum).sum_dim(1).mul_scalar(0.5); // [m, 1]
    Ok(linear.add(pairs))
}

/// The logit of one scaled row, by the same identity as [`forward`].
pub(crate) fn logit(params: &[Vec<f32>], factors: usize, x: &[f32]) -> Result<f32, ModelError> {
    let [w0, w, v] = params else {
        return Err(shape_error());
    };
    let (Some(w0), true) = (
        w0.first(),
        factors > 0 && w.len() == x.len() && v.len() == x.len().saturating_mul(factors),
    ) else {
        return Err(shape_error());
    };
    let mut sum = vec![0.0f32; factors];
    let mut sq = vec![0.0f32; factors];
    let mut linear = 0.0f32;
    for ((xi, wi), vi) in x.iter().zip(w).zip(v.chunks_exact(factors)) {
        linear += wi * xi;
        let xi2 = xi * xi;
        for ((s, q), v) in sum.iter_mut().zip(sq.iter_mut()).zip(vi) {
            *s += v * xi;
            *q += v * v * xi2;
        }
    }
    let pairs: f32 = sum.iter().zip(&sq).map(|(s, q)| s * s - q).sum();
    Ok(linear + w0 + 0.5 * pairs)
}

/// Adds `dz·∂z/∂θ` of one scaled row to `grads`, where `dz` is the loss's derivative in the
/// logit `z`: `dz` for `w0`, `dz·xᵢ` for `wᵢ`, and `dz·(xᵢ·s_f − v_if·xᵢ²)` for `v_if`, with
/// `s_f = Σⱼ v_jf·xⱼ`.
pub(crate) fn add_gradient(
    params: &[Vec<f32>],
    factors: usize,
    x: &[f32],
    dz: f32,
    grads: &mut [Vec<f32>],
) -> Result<(), ModelError> {
    let ([_, w, v], [g0, gw, gv]) = (params, grads) else {
        return Err(shape_error());
    };
    let n = x.len();
    let (Some(g0), true) = (
        g0.first_mut(),
        factors > 0
            && w.len() == n
            && gw.len() == n
            && v.len() == n.saturating_mul(factors)
            && gv.len() == v.len(),
    ) else {
        return Err(shape_error());
    };
    let mut sum = vec![0.0f32; factors];
    for (xi, vi) in x.iter().zip(v.chunks_exact(factors)) {
        for (s, v) in sum.iter_mut().zip(vi) {
            *s += v * xi;
        }
    }
    *g0 += dz;
    for (((xi, gwi), vi), gvi) in x
        .iter()
        .zip(gw.iter_mut())
        .zip(v.chunks_exact(factors))
        .zip(gv.chunks_exact_mut(factors))
    {
        *gwi += dz * xi;
        let xi2 = xi * xi;
        for ((g, v), s) in gvi.iter_mut().zip(vi).zip(&sum) {
            *g += dz * (xi * s - v * xi2);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::synthetic::{
        feature, learning_config, linear_batch, prequential_accuracy, xor_batch,
    };
    use crate::{ModelConfig, ModelKind, Optimizer, Trainer};

    const FM: ModelKind = ModelKind::FactorizationMachine {
        factors: DEFAULT_FACTORS,
    };

    fn config(kind: ModelKind, optimizer: Optimizer) -> ModelConfig {
        learning_config(kind, optimizer, 5)
    }

    #[test]
    fn identity_matches_the_explicit_pairwise_sum() {
        let (n, k) = (6, 4);
        let params = init(n, k, 3);
        let params = vec![
            vec![0.25],
            (0..n as u64).map(|j| feature(99, j)).collect(),
            params[2].clone(),
        ];
        let x: Vec<f32> = (0..n as u64).map(|j| feature(7, j)).collect();
        let v = &params[2];
        let mut explicit = f64::from(params[0][0]);
        for i in 0..n {
            explicit += f64::from(params[1][i]) * f64::from(x[i]);
            for j in i + 1..n {
                let dot: f64 = (0..k)
                    .map(|f| f64::from(v[i * k + f]) * f64::from(v[j * k + f]))
                    .sum();
                explicit += dot * f64::from(x[i]) * f64::from(x[j]);
            }
        }
        let fast = logit(&params, k, &x).unwrap();
        assert!(
            (f64::from(fast) - explicit).abs() < 1e-5,
            "{fast} vs {explicit}"
        );
    }

    #[test]
    fn learns_a_separable_task() {
        for optimizer in [Optimizer::Sgd, Optimizer::adam()] {
            let mut trainer = Trainer::new(&config(FM, optimizer), 4).unwrap();
            let accuracy = prequential_accuracy(&mut trainer, 60, 10, |b| linear_batch(b, 64, 4));
            eprintln!("fm {optimizer:?}: separable accuracy {accuracy}");
            assert!(accuracy > 0.9, "{optimizer:?}: accuracy {accuracy}");
        }
    }

    /// The point of the recommender model: a label decided by an interaction of two features
    /// (here the sign of x0·x1), which no linear model can represent.
    #[test]
    fn learns_an_interaction_that_logistic_regression_cannot() {
        let mut logistic = Trainer::new(&config(ModelKind::Logistic, Optimizer::Sgd), 4).unwrap();
        let linear = prequential_accuracy(&mut logistic, 150, 20, |b| xor_batch(b, 64, 4));
        eprintln!("logistic: xor accuracy {linear}");
        assert!(linear <= 0.6, "logistic accuracy {linear}");
        for optimizer in [Optimizer::Sgd, Optimizer::adam()] {
            let mut fm = Trainer::new(&config(FM, optimizer), 4).unwrap();
            let accuracy = prequential_accuracy(&mut fm, 150, 20, |b| xor_batch(b, 64, 4));
            eprintln!("fm {optimizer:?}: xor accuracy {accuracy}");
            assert!(accuracy >= 0.85, "{optimizer:?}: accuracy {accuracy}");
        }
    }
}
