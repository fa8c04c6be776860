//! A small multilayer perceptron: standardised input → `hidden` ReLU units → one logit.
//!
//! It is the smallest model that learns interactions the linear model cannot (a label that
//! depends on the sign of `x0·x1`, say) without being told which features interact. Parameters,
//! in storage order: `W1 [n, h]`, `b1 [1, h]`, `W2 [h, 1]`, `b2 [1, 1]`; the L2 penalty applies
//! to `W1` and `W2`. Weights start seeded and uniform: He's range `±√(6/n)` for the ReLU layer
//! (it keeps the activations' variance stable through a ReLU), Glorot's `±√(6/(h+1))` for the
//! output; biases start at zero. Two trainers built from the same configuration are therefore
//! identical. Training and artifacts are shared with the other kinds (`learner.rs`, `artifact.rs`);
//! this file holds the shapes and the two forward passes, burn's for gradients and the host's
//! for scoring.

use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::error::ModelError;
use super::init::SeededRng;
use super::params::{ParamSpec, shape_error};

/// Hidden units when the configuration does not say.
pub const DEFAULT_HIDDEN: usize = 16;

/// Largest accepted width; a bound so a typo cannot allocate gigabytes per row.
pub const MAX_HIDDEN: usize = 4096;

/// Parameter tensors in storage order.
pub(crate) fn specs(n_features: usize, hidden: usize) -> Vec<ParamSpec> {
    let weight = |rows, cols| ParamSpec {
        rows,
        cols,
        decay: true,
        trained: true,
    };
    let bias = |cols| ParamSpec {
        rows: 1,
        cols,
        decay: false,
        trained: true,
    };
    vec![
        weight(n_features, hidden),
        bias(hidden),
        weight(hidden, 1),
        bias(1),
    ]
}

/// Seeded initial parameters (see the module docs).
pub(crate) fn init(n_features: usize, hidden: usize, seed: u64) -> Vec<Vec<f32>> {
    let uniform = |tensor: u64, len: usize, fan_in: usize, fan_out: usize| {
        let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
        let mut rng = SeededRng::for_tensor(seed, tensor);
        (0..len).map(|_| rng.uniform(limit)).collect::<Vec<f32>>()
    };
    vec![
        // He: fan_in only, i.e. 6 / (n + 0).
        uniform(0, n_features * hidden, n_features, 0),
        vec![0.0; hidden],
        uniform(2, hidden, hidden, 1),
        vec![0.0],
    ]
}

/// Logits `relu(x·W1 + b1)·W2 + b2`, shape `[m, 1]`, for inputs `[m, n]`.
pub(crate) fn forward(params: &[Tensor<2>], x: Tensor<2>) -> Result<Tensor<2>, ModelError> {
    let [w1, b1, w2, b2] = params else {
        return Err(shape_error());
    };
    let hidden = relu(x.matmul(w1.clone()).add(b1.clone()));
    Ok(hidden.matmul(w2.clone()).add(b2.clone()))
}

/// The logit of one scaled row, in the same order of operations as [`forward`].
pub(crate) fn logit(params: &[Vec<f32>], hidden: usize, x: &[f32]) -> Result<f32, ModelError> {
    let (z, _) = logit_and_hidden(params, hidden, x)?;
    Ok(z)
}

/// The logit of one scaled row and the hidden units' inputs `x·W1 + b1` it went through.
fn logit_and_hidden(
    params: &[Vec<f32>],
    hidden: usize,
    x: &[f32],
) -> Result<(f32, Vec<f32>), ModelError> {
    let [w1, b1, w2, b2] = params else {
        return Err(shape_error());
    };
    let (Some(b2), true) = (
        b2.first(),
        hidden > 0
            && w1.len() == x.len().saturating_mul(hidden)
            && b1.len() == hidden
            && w2.len() == hidden,
    ) else {
        return Err(shape_error());
    };
    let mut pre = vec![0.0f32; hidden];
    for (xi, row) in x.iter().zip(w1.chunks_exact(hidden)) {
        for (acc, w) in pre.iter_mut().zip(row) {
            *acc += xi * w;
        }
    }
    let mut z = 0.0f32;
    for ((pre, b), w) in pre.iter_mut().zip(b1).zip(w2) {
        *pre += b;
        // f32::max would turn NaN into 0 and hide an overflow; report it instead.
        if !pre.is_finite() {
            return Ok((f32::NAN, Vec::new()));
        }
        z += pre.max(0.0) * w;
    }
    Ok((z + b2, pre))
}

/// Adds `dz·∂z/∂θ` of one scaled row to `grads`, where `dz` is the loss's derivative in the
/// logit `z` (backpropagation through the one hidden layer; a unit at exactly 0 passes no
/// gradient, as burn's ReLU does).
pub(crate) fn add_gradient(
    params: &[Vec<f32>],
    hidden: usize,
    x: &[f32],
    dz: f32,
    grads: &mut [Vec<f32>],
) -> Result<(), ModelError> {
    let (z, pre) = logit_and_hidden(params, hidden, x)?;
    let ([_, _, w2, _], [g1, gb1, g2, gb2]) = (params, grads) else {
        return Err(shape_error());
    };
    if !z.is_finite() {
        return Err(ModelError::NonFinite {
            what: "training loss".into(),
        });
    }
    let (Some(gb2), true) = (
        gb2.first_mut(),
        g1.len() == w2.len().saturating_mul(x.len()) && gb1.len() == hidden && g2.len() == hidden,
    ) else {
        return Err(shape_error());
    };
    *gb2 += dz;
    let mut back = vec![0.0f32; hidden];
    for (((pre, w), g2), back) in pre.iter().zip(w2).zip(g2.iter_mut()).zip(back.iter_mut()) {
        if *pre > 0.0 {
            *g2 += dz * pre;
            *back = dz * w;
        }
    }
    for (g, b) in gb1.iter_mut().zip(&back) {
        *g += b;
    }
    for (xi, row) in x.iter().zip(g1.chunks_exact_mut(hidden)) {
        for (g, b) in row.iter_mut().zip(&back) {
            *g += xi * b;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::synthetic::{learning_config, linear_batch, prequential_accuracy, xor_batch};
    use crate::{ModelConfig, ModelKind, Optimizer, Trainer};

    fn config(optimizer: Optimizer) -> ModelConfig {
        let mlp = ModelKind::Mlp {
            hidden: DEFAULT_HIDDEN,
        };
        learning_config(mlp, optimizer, 11)
    }

    #[test]
    fn same_config_same_initial_model() {
        let a = Trainer::new(&config(Optimizer::Sgd), 5).unwrap();
        let b = Trainer::new(&config(Optimizer::Sgd), 5).unwrap();
        assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
        let other_seed = ModelConfig {
            seed: 12,
            ..config(Optimizer::Sgd)
        };
        assert_ne!(
            Trainer::new(&other_seed, 5).unwrap().to_bytes().unwrap(),
            a.to_bytes().unwrap()
        );
        let params = init(5, 16, 11);
        let limit = (6.0f32 / 5.0).sqrt();
        assert!(params[0].iter().all(|w| w.abs() <= limit));
        assert!(params[0].iter().any(|w| w.abs() > limit / 2.0));
        assert_eq!(params[1], vec![0.0; 16]);
    }

    #[test]
    fn learns_a_separable_task() {
        for optimizer in [Optimizer::Sgd, Optimizer::adam()] {
            let mut trainer = Trainer::new(&config(optimizer), 4).unwrap();
            let accuracy = prequential_accuracy(&mut trainer, 60, 10, |b| linear_batch(b, 64, 4));
            eprintln!("mlp {optimizer:?}: separable accuracy {accuracy}");
            assert!(accuracy > 0.9, "{optimizer:?}: accuracy {accuracy}");
        }
    }

    #[test]
    fn learns_the_sign_of_a_product() {
        for optimizer in [Optimizer::Sgd, Optimizer::adam()] {
            let mut trainer = Trainer::new(&config(optimizer), 4).unwrap();
            let accuracy = prequential_accuracy(&mut trainer, 150, 20, |b| xor_batch(b, 64, 4));
            eprintln!("mlp {optimizer:?}: xor accuracy {accuracy}");
            assert!(accuracy >= 0.85, "{optimizer:?}: accuracy {accuracy}");
        }
    }
}
