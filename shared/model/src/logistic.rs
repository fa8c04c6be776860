//! Logistic regression: one linear unit `σ(w·x + b)`.
//!
//! The simplest kind, and the default: its weights read directly as the effect of each
//! standardised feature, which is what `freshet models diff` compares between versions. The
//! parameters, in storage order, are the weights `w [n, 1]` and the bias `b [1, 1]`; they start
//! at zero, so a fresh model scores every row 0.5. The L2 penalty `(λ/2)·‖w‖²` applies to the
//! weights only: the bias only shifts the decision threshold and should not be pulled towards
//! p = 0.5. Training (with a closed-form gradient for this kind), scoring and artifacts are shared
//! with the other kinds (`learner.rs`, `artifact.rs`); this file holds the shapes and the two
//! forward passes, burn's and the host's. (The first artifact format, which only logistic models
//! were written in, is read by `artifact/format2.rs`.)

use burn::tensor::Tensor;

use super::error::ModelError;
use super::params::{ParamSpec, shape_error};

/// Parameter tensors: the weights `[n, 1]`, then the bias `[1, 1]`.
pub(crate) fn specs(n_features: usize) -> Vec<ParamSpec> {
    vec![
        ParamSpec {
            rows: n_features,
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

/// Logits `x·w + b`, shape `[m, 1]`, for inputs `[m, n]`.
pub(crate) fn forward(params: &[Tensor<2>], x: Tensor<2>) -> Result<Tensor<2>, ModelError> {
    let [w, b] = params else {
        return Err(shape_error());
    };
    Ok(x.matmul(w.clone()).add(b.clone()))
}

/// The logit `w·x + b` of one scaled row.
pub(crate) fn logit(params: &[Vec<f32>], x: &[f32]) -> Result<f32, ModelError> {
    let [w, b] = params else {
        return Err(shape_error());
    };
    let (Some(b), true) = (b.first(), w.len() == x.len()) else {
        return Err(shape_error());
    };
    let dot: f32 = w.iter().zip(x).map(|(w, x)| w * x).sum();
    Ok(dot + b)
}

/// Adds `dz·∂z/∂θ` of one scaled row to `grads`, where `dz` is the loss's derivative in the
/// logit `z`: `dz·x` for the weights, `dz` for the bias.
pub(crate) fn add_gradient(
    params: &[Vec<f32>],
    x: &[f32],
    dz: f32,
    grads: &mut [Vec<f32>],
) -> Result<(), ModelError> {
    let ([w, _], [gw, gb]) = (params, grads) else {
        return Err(shape_error());
    };
    let (Some(gb), true) = (gb.first_mut(), w.len() == x.len() && gw.len() == x.len()) else {
        return Err(shape_error());
    };
    for (g, x) in gw.iter_mut().zip(x) {
        *g += dz * x;
    }
    *gb += dz;
    Ok(())
}

/// Initial parameters: all zero.
pub(crate) fn init(n_features: usize) -> Vec<Vec<f32>> {
    vec![vec![0.0; n_features], vec![0.0]]
}

/// The weights, one per feature in feature order, and the bias of a parameter list.
pub(crate) fn weights_and_bias(params: &[Vec<f32>]) -> Option<(&[f32], f32)> {
    match params {
        [w, b] => Some((w.as_slice(), *b.first()?)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::synthetic::linear_batch;
    use crate::{Hyper, ModelConfig, Optimizer, Trainer};

    fn config(hyper: Hyper) -> ModelConfig {
        ModelConfig {
            hyper,
            ..ModelConfig::default()
        }
    }

    fn hyper() -> Hyper {
        Hyper {
            learning_rate: 1.0,
            decay: 0.01,
            l2: 1e-4,
            rows_per_step: 0,
            ..Hyper::default()
        }
    }

    /// The weights and bias of a logistic trainer's current model.
    fn weights(trainer: &Trainer) -> (Vec<f32>, f32) {
        let scorer = trainer.scorer();
        let (w, b) = scorer.linear_weights().unwrap();
        (w.to_vec(), b)
    }

    #[test]
    fn learns_separable_task_prequentially() {
        let mut trainer = Trainer::new(&config(hyper()), 3).unwrap();
        let mut tail = (0usize, 0usize);
        let mut first = None;
        for b in 0..50 {
            let (rows, labels) = linear_batch(b, 64, 3);
            let report = trainer.train_batch(&rows, &labels).unwrap();
            assert_eq!(report.examples, 64);
            assert_eq!(report.step, b + 1);
            assert!((report.learning_rate - 1.0 / (1.0 + 0.01 * b as f64)).abs() < 1e-15);
            assert!(report.log_loss_sum.is_finite());
            first.get_or_insert(report.clone());
            if b >= 40 {
                tail.0 += report.correct;
                tail.1 += report.examples;
            }
        }
        // Zero weights predict p = 0.5 for everything: log-loss is exactly ln 2 per row.
        let first = first.unwrap();
        assert!((first.log_loss_sum / 64.0 - std::f64::consts::LN_2).abs() < 1e-6);
        let accuracy = tail.0 as f64 / tail.1 as f64;
        assert!(accuracy > 0.9, "prequential accuracy {accuracy}");
        eprintln!("prequential accuracy over the last 10 batches: {accuracy}");
        // The label is x0 + 0.5·x1 > 0.2: both weights positive, x0's the larger; x2 is noise.
        let (w, _) = weights(&trainer);
        assert!(w[0] > 0.0 && w[1] > 0.0 && w[0] > w[1], "weights {w:?}");
    }

    #[test]
    fn learns_with_adam_too() {
        let adam = Hyper {
            learning_rate: 0.05,
            optimizer: Optimizer::adam(),
            ..hyper()
        };
        let mut trainer = Trainer::new(&config(adam), 3).unwrap();
        let (mut correct, mut seen) = (0, 0);
        for b in 0..50 {
            let (rows, labels) = linear_batch(b, 64, 3);
            let report = trainer.train_batch(&rows, &labels).unwrap();
            if b >= 40 {
                correct += report.correct;
                seen += report.examples;
            }
        }
        let accuracy = correct as f64 / seen as f64;
        assert!(accuracy > 0.9, "prequential accuracy {accuracy}");
    }

    #[test]
    fn weights_are_the_parameters_in_feature_order() {
        let params = vec![vec![0.5, -1.0, 2.0], vec![0.25]];
        assert_eq!(
            weights_and_bias(&params),
            Some((&[0.5f32, -1.0, 2.0][..], 0.25))
        );
        assert_eq!(logit(&params, &[1.0, 1.0, 1.0]).unwrap(), 1.75);
        assert_eq!(weights_and_bias(&[vec![1.0]]), None);
        assert_eq!(weights_and_bias(&[vec![1.0], vec![]]), None);
        let fresh = Trainer::new(&config(hyper()), 3).unwrap();
        assert_eq!(weights(&fresh), (vec![0.0; 3], 0.0));
    }
}
