//! Random Fourier features (Rahimi & Recht, 2007) under a logistic output: the model for a few
//! features with a non-linear boundary, where logistic regression stays near chance and the
//! small MLP learns slowly one row at a time.
//!
//! Each standardised row `x` is mapped to `D` features `φⱼ(x) = √2·cos(x·ωⱼ + bⱼ)` by frequencies
//! `ωⱼ` drawn from a normal distribution and phases `bⱼ` drawn uniformly from a period, and the
//! logit is `φ(x)·v + c`. A dot product of two such maps approximates a Gaussian kernel between
//! the rows, so the learned linear output is a kernel machine fitted online at the cost of a
//! logistic regression over `D` inputs; only `v` and `c` learn, the frequencies and phases stay as
//! drawn. The √2 gives every feature unit variance, like a standardised input, so one learning
//! rate suits this kind and the logistic one.
//!
//! A kernel's width decides how local the boundary is, and the right one depends on the data: on
//! River's Bananas stream (2 features) a width of 0.5 standard deviations was best among 0.3 to
//! 4, on the 9- and 10-feature streams of the quality comparison 2 to 4. The frequencies are
//! therefore drawn at four widths, [`BANDWIDTHS`], a quarter of the features each: the output
//! weights choose among them, a sum of Gaussian kernels at several scales.
//!
//! Parameters, in storage order: `Ω [n, D]` and `b [1, D]` (drawn from the seed, never
//! trained, so the artifact stores the very features the model was trained on), `v [D, 1]` (the
//! L2 penalty applies) and `c [1, 1]`, both starting at zero, so a fresh model scores every row
//! 0.5. `D` is the kind's `hidden` dimension (its cosine units). Training and artifacts are
//! shared with the other kinds (`learner.rs`, `artifact/`); this file holds the shapes, the
//! draws and the two forward passes, and the backward pass of the host.

use std::f64::consts::PI;

use burn::tensor::Tensor;

use super::error::ModelError;
use super::init::SeededRng;
use super::params::{ParamSpec, shape_error};

/// Cosine features when the configuration does not say.
pub const DEFAULT_FOURIER_FEATURES: usize = 256;

/// Largest accepted number of features; a bound so a typo cannot allocate gigabytes per row.
pub const MAX_FOURIER_FEATURES: usize = 4096;

/// Kernel widths, in standard deviations of the standardised inputs, each drawn for a quarter
/// of the features (feature `j` at `BANDWIDTHS[j % 4]`); see the module docs.
pub const BANDWIDTHS: [f64; 4] = [0.5, 1.0, 2.0, 4.0];

/// Parameter tensors in storage order (see the module docs).
pub(crate) fn specs(n_features: usize, features: usize) -> Vec<ParamSpec> {
    vec![
        ParamSpec::fixed(n_features, features),
        ParamSpec::fixed(1, features),
        ParamSpec {
            rows: features,
            cols: 1,
            decay: true,
            trained: true,
        },
        ParamSpec {
            rows: 1,
            cols: 1,
            decay: false,
            trained: true,
        },
    ]
}

/// Seeded frequencies and phases, zero output weights (see the module docs).
pub(crate) fn init(n_features: usize, features: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = SeededRng::for_tensor(seed, 0);
    // Row-major [n, D]: column j is feature j's frequency, at the width of its quarter.
    let omega = (0..n_features * features)
        .map(|k| rng.normal(1.0 / BANDWIDTHS[(k % features) % BANDWIDTHS.len()]))
        .collect();
    let mut rng = SeededRng::for_tensor(seed, 1);
    // cos has period 2π, so [−π, π) is a whole period.
    let phases = (0..features).map(|_| rng.uniform(PI)).collect();
    vec![omega, phases, vec![0.0; features], vec![0.0]]
}

/// Logits `√2·cos(x·Ω + b)·v + c`, shape `[m, 1]`, for inputs `[m, n]`.
pub(crate) fn forward(params: &[Tensor<2>], x: Tensor<2>) -> Result<Tensor<2>, ModelError> {
    let [omega, b, v, c] = params else {
        return Err(shape_error());
    };
    let features = x
        .matmul(omega.clone())
        .add(b.clone())
        .cos()
        .mul_scalar(std::f32::consts::SQRT_2);
    Ok(features.matmul(v.clone()).add(c.clone()))
}

/// The logit of one scaled row, in the same order of operations as [`forward`].
pub(crate) fn logit(params: &[Vec<f32>], features: usize, x: &[f32]) -> Result<f32, ModelError> {
    let mut phi = Vec::new();
    logit_and_features(params, features, x, &mut phi)
}

/// The logit of one scaled row, leaving its features `φ(x)` in `phi`.
fn logit_and_features(
    params: &[Vec<f32>],
    features: usize,
    x: &[f32],
    phi: &mut Vec<f32>,
) -> Result<f32, ModelError> {
    let [omega, b, v, c] = params else {
        return Err(shape_error());
    };
    let (Some(c), true) = (
        c.first(),
        features > 0
            && omega.len() == x.len().saturating_mul(features)
            && b.len() == features
            && v.len() == features,
    ) else {
        return Err(shape_error());
    };
    phi.clear();
    phi.resize(features, 0.0);
    for (xi, row) in x.iter().zip(omega.chunks_exact(features)) {
        for (acc, w) in phi.iter_mut().zip(row) {
            *acc += xi * w;
        }
    }
    let mut z = 0.0f32;
    for ((phi, b), v) in phi.iter_mut().zip(b).zip(v) {
        *phi = (*phi + b).cos() * std::f32::consts::SQRT_2;
        z += *phi * v;
    }
    Ok(z + c)
}

/// Adds `dz·∂z/∂θ` of one scaled row to `grads`, where `dz` is the loss's derivative in the
/// logit `z`: `dz·φ(x)` for `v`, `dz` for `c`, nothing for the frequencies and phases, which do
/// not learn.
pub(crate) fn add_gradient(
    params: &[Vec<f32>],
    features: usize,
    x: &[f32],
    dz: f32,
    grads: &mut [Vec<f32>],
) -> Result<(), ModelError> {
    let mut phi = Vec::with_capacity(features);
    let z = logit_and_features(params, features, x, &mut phi)?;
    if !z.is_finite() {
        return Err(ModelError::NonFinite {
            what: "training loss".into(),
        });
    }
    let [_, _, gv, gc] = grads else {
        return Err(shape_error());
    };
    let (Some(gc), true) = (gc.first_mut(), gv.len() == phi.len()) else {
        return Err(shape_error());
    };
    for (g, phi) in gv.iter_mut().zip(&phi) {
        *g += dz * phi;
    }
    *gc += dz;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::synthetic::{feature, learning_config, prequential_accuracy, xor_batch};
    use crate::{Hyper, ModelConfig, ModelKind, Optimizer, Trainer};

    const FOURIER: ModelKind = ModelKind::Fourier {
        hidden: DEFAULT_FOURIER_FEATURES,
    };

    #[test]
    fn draws_are_seeded_at_their_widths_and_the_output_starts_at_zero() {
        let (n, d) = (3, 400);
        let params = init(n, d, 9);
        assert_eq!(params, init(n, d, 9));
        assert_ne!(params, init(n, d, 10));
        assert_eq!(
            (params[2].clone(), params[3].clone()),
            (vec![0.0; d], vec![0.0])
        );
        assert!(
            params[1]
                .iter()
                .all(|b| (-PI as f32..PI as f32).contains(b))
        );
        // Each quarter's frequencies have the spread 1 / width.
        for (q, width) in BANDWIDTHS.iter().enumerate() {
            let values: Vec<f64> = params[0]
                .iter()
                .enumerate()
                .filter(|(k, _)| (k % d) % 4 == q)
                .map(|(_, w)| f64::from(*w))
                .collect();
            let std = (values.iter().map(|w| w * w).sum::<f64>() / values.len() as f64).sqrt();
            assert!((std * width - 1.0).abs() < 0.15, "width {width}: std {std}");
        }
        // A fresh model knows nothing.
        let x: Vec<f32> = (0..n as u64).map(|j| feature(3, j)).collect();
        assert_eq!(logit(&params, d, &x).unwrap(), 0.0);
    }

    /// The features approximate a Gaussian kernel: φ(x)·φ(y)/D ≈ the mean over the widths of
    /// exp(−‖x − y‖² / 2σ²), the property the model is chosen for.
    #[test]
    fn features_approximate_a_mixture_of_gaussian_kernels() {
        let (n, d) = (2, 4096);
        let params = init(n, d, 1);
        let features = |x: &[f32]| {
            let mut phi = Vec::new();
            let probe = vec![
                params[0].clone(),
                params[1].clone(),
                vec![0.0; d],
                vec![0.0],
            ];
            logit_and_features(&probe, d, x, &mut phi).unwrap();
            phi
        };
        for (x, y) in [
            ([0.0f32, 0.0], [0.0f32, 0.0]),
            ([0.2, -0.1], [0.5, 0.3]),
            ([1.0, 0.0], [0.0, 1.0]),
        ] {
            let (a, b) = (features(&x), features(&y));
            let estimate: f64 =
                a.iter().zip(&b).map(|(a, b)| f64::from(a * b)).sum::<f64>() / d as f64;
            let distance: f64 = x
                .iter()
                .zip(&y)
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum();
            let kernel = BANDWIDTHS
                .iter()
                .map(|s| (-distance / (2.0 * s * s)).exp())
                .sum::<f64>()
                / BANDWIDTHS.len() as f64;
            assert!((estimate - kernel).abs() < 0.06, "{estimate} vs {kernel}");
        }
    }

    /// Frequencies and phases never move, whichever optimizer; the output does.
    #[test]
    fn only_the_output_learns() {
        for optimizer in [Optimizer::Sgd, Optimizer::adam()] {
            let config = learning_config(ModelKind::Fourier { hidden: 32 }, optimizer, 4);
            let mut trainer = Trainer::new(&config, 3).unwrap();
            let before = init(3, 32, 4);
            prequential_accuracy(&mut trainer, 10, 1, |b| xor_batch(b, 16, 3));
            let after = crate::artifact::decode(&trainer.to_bytes().unwrap())
                .unwrap()
                .params;
            assert_eq!(after[..2], before[..2], "{optimizer:?}");
            assert_ne!(after[2], before[2], "{optimizer:?}");
        }
    }

    /// The sign of a product, which logistic regression cannot learn, at the shipped settings
    /// (one row per step, η0 0.005, SGD): what the kind is for.
    #[test]
    fn learns_the_sign_of_a_product_at_the_shipped_settings() {
        let config = ModelConfig {
            kind: FOURIER,
            hyper: Hyper::default(),
            ..ModelConfig::default()
        };
        let mut trainer = Trainer::new(&config, 2).unwrap();
        let accuracy = prequential_accuracy(&mut trainer, 60, 10, |b| xor_batch(b, 64, 2));
        eprintln!("fourier: xor accuracy {accuracy}");
        assert!(accuracy >= 0.9, "accuracy {accuracy}");
    }
}
