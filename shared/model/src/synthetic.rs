//! Deterministic synthetic data for the model tests: no RNG crate, the same data every run.

use super::config::ModelConfig;
use super::hyper::Hyper;
use super::kind::ModelKind;
use super::optim::Optimizer;
use super::trainer::Trainer;

/// Every kind, each small enough that a test over all of them stays quick.
pub(crate) const SMALL_KINDS: [ModelKind; 4] = [
    ModelKind::Logistic,
    ModelKind::Mlp { hidden: 4 },
    ModelKind::FactorizationMachine { factors: 2 },
    ModelKind::Fourier { hidden: 6 },
];

/// What the per-kind learning tests train `kind` with: a rate at which each optimizer learns
/// the tasks below within their batch budgets, a slow decay and a light penalty.
pub(crate) fn learning_config(kind: ModelKind, optimizer: Optimizer, seed: u64) -> ModelConfig {
    let learning_rate = if optimizer == Optimizer::Sgd {
        0.5
    } else {
        0.05
    };
    ModelConfig {
        kind,
        hyper: Hyper {
            learning_rate,
            decay: 0.001,
            l2: 1e-5,
            optimizer,
            rows_per_step: 0,
        },
        seed,
        scaler_decay: None,
    }
}

/// Pseudo-random feature `j` of example `i`, uniform in [-1, 1), from a SplitMix-style hash.
pub(crate) fn feature(i: u64, j: u64) -> f32 {
    let mut z = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(j.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Batch `b` of `size` rows with `n ≥ 2` features, labelled by `rule`.
fn batch(b: u64, size: u64, n: u64, rule: impl Fn(&[f32]) -> bool) -> (Vec<Vec<f32>>, Vec<f32>) {
    let rows: Vec<Vec<f32>> = (0..size)
        .map(|k| (0..n).map(|j| feature(b * size + k, j)).collect())
        .collect();
    let labels = rows
        .iter()
        .map(|row| if rule(row) { 1.0 } else { 0.0 })
        .collect();
    (rows, labels)
}

/// A linearly separable task: y = 1 iff x0 + 0.5·x1 > 0.2; other features are noise.
pub(crate) fn linear_batch(b: u64, size: u64, n: u64) -> (Vec<Vec<f32>>, Vec<f32>) {
    batch(b, size, n, |x| x[0] + 0.5 * x[1] > 0.2)
}

/// An interaction task no linear model can learn: y = 1 iff x0·x1 > 0 (an XOR of signs);
/// other features are noise.
pub(crate) fn xor_batch(b: u64, size: u64, n: u64) -> (Vec<Vec<f32>>, Vec<f32>) {
    batch(b, size, n, |x| x[0] * x[1] > 0.0)
}

/// Trains on batches `0..batches` and returns the prequential accuracy over the last `tail`.
pub(crate) fn prequential_accuracy(
    trainer: &mut Trainer,
    batches: u64,
    tail: u64,
    data: impl Fn(u64) -> (Vec<Vec<f32>>, Vec<f32>),
) -> f64 {
    let (mut correct, mut seen) = (0usize, 0usize);
    for b in 0..batches {
        let (rows, labels) = data(b);
        let report = match trainer.train_batch(&rows, &labels) {
            Ok(report) => report,
            Err(e) => panic!("batch {b}: {e}"),
        };
        if b >= batches - tail {
            correct += report.correct;
            seen += report.examples;
        }
    }
    correct as f64 / seen as f64
}
