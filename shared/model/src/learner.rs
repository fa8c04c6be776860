//! The training and scoring core that every model kind shares.
//!
//! A model is a kind with its dimensions ([`ModelKind`]) plus a list of `f32` parameter tensors held on the
//! host. [`Learner::train_batch`] takes one prequential step: it validates the batch, scores it
//! with the host forward pass (the very code a predictor runs, so the reported accuracy is what
//! serving would have seen), weighs each row from that score ([`RowWeight`]: 1, or fake-negative
//! weighting's importance weights), folds the batch into a copy of the input scaler, builds burn
//! leaf tensors from the parameters on the autodiff device, computes the weighted mean binary
//! cross-entropy on logits `(1/n)·Σ wᵢ·ℓᵢ` plus `(λ/2)·Σ‖W‖²` over weight tensors (never
//! biases), lets burn differentiate it, and
//! hands the gradients to the host optimizer ([`OptimizerState`]). The result is committed only
//! if the loss, the gradients, every parameter and every optimizer moment are finite; otherwise
//! the learner is left bit-identical and [`ModelError::NonFinite`] is returned.
//!
//! Parameters live on the host rather than in burn modules because everything around a step
//! wants them there: scoring single rows without tensor overhead, checking finiteness, the
//! optimizer update, and an artifact that stores them exactly. burn's part is the gradient.
//! The per-kind mathematics (shapes, initialisation, forward passes) is in `logistic.rs`,
//! `mlp.rs` and `fm.rs`; [`ModelKind`] dispatches to it.

use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::error::ModelError;
use super::hyper::Hyper;
use super::kind::ModelKind;
use super::optim::OptimizerState;
use super::params::{ParamSpec, read_f32, shape_error};
use super::scaler::StandardScaler;
use super::weighting::RowWeight;
use freshet::stats::ewma::Decay;

/// Probabilities are clamped to `[P_CLAMP, 1 - P_CLAMP]` for log-loss so one confident mistake
/// costs at most ~16 nats instead of infinity.
pub(crate) const P_CLAMP: f64 = 1e-7;

/// The class a probability predicts: 1 when `p > 0.5`, else 0. A score of exactly 0.5 (an
/// untrained model, for one) carries no information; it is called 0, as River and scikit-learn
/// do, so prequential accuracies compare row for row.
pub fn predicts_positive(p: f32) -> bool {
    p > 0.5
}

/// The cross-entropy of probability `p` for a row of class `positive`: `-ln p(label)`, with `p`
/// clamped to `[1e-7, 1 - 1e-7]`, as every prequential log-loss here is measured.
pub fn log_loss(p: f32, positive: bool) -> f64 {
    let p = f64::from(p).clamp(P_CLAMP, 1.0 - P_CLAMP);
    if positive { -p.ln() } else { -(1.0 - p).ln() }
}

/// What one `train_batch` call measured and did.
///
/// `correct` and `log_loss_sum` are prequential: computed with the model as it was *before*
/// this batch's update. Sums (not means) so callers can aggregate over windows exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    /// Rows in the batch.
    pub examples: usize,
    /// Rows whose prediction (`p > 0.5` ⇒ 1, see [`predicts_positive`])
    /// matched the label.
    pub correct: usize,
    /// Sum over rows of `-ln p(label)`, with `p` clamped to `[1e-7, 1 - 1e-7]`.
    pub log_loss_sum: f64,
    /// The step counter `t` after this update.
    pub step: u64,
    /// The learning rate this update used.
    pub learning_rate: f64,
    /// Each row's prequential probability of class 1, in batch order (for ranking metrics).
    pub scores: Vec<f32>,
    /// Each row's loss weight in the step, in batch order (all 1 unless rows were weighted; see
    /// [`RowWeight`]), computed from `scores`.
    #[serde(default)]
    pub weights: Vec<f32>,
}

/// Everything a model artifact holds: enough to score, and to continue training exactly.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) kind: ModelKind,
    pub(crate) n_features: usize,
    /// Seed the parameters were initialised from (provenance only once trained).
    pub(crate) seed: u64,
    /// Updates taken so far (`t`); drives the learning-rate schedule.
    pub(crate) step: u64,
    /// Input standardisation; `None` only in logistic artifacts from before scaling existed.
    pub(crate) scaler: Option<StandardScaler>,
    /// Parameter tensors in [`ModelKind::specs`] order.
    pub(crate) params: Vec<Vec<f32>>,
    pub(crate) optim: OptimizerState,
}

/// Trains one model a mini-batch at a time (see the module docs).
pub(crate) struct Learner {
    state: Snapshot,
    specs: Vec<ParamSpec>,
    hyper: Hyper,
    /// The autodiff device the gradient graphs are built on.
    device: Device,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner")
            .field("kind", &self.state.kind)
            .field("n_features", &self.state.n_features)
            .field("step", &self.state.step)
            .field("hyper", &self.hyper)
            .finish_non_exhaustive()
    }
}

impl Learner {
    /// A fresh model for `n_features` inputs, initialised from `seed`, at `t = 0`.
    pub(crate) fn new(
        kind: ModelKind,
        n_features: usize,
        hyper: Hyper,
        seed: u64,
        scaler_decay: Option<Decay>,
    ) -> Result<Learner, ModelError> {
        hyper.validate()?;
        if n_features == 0 {
            return Err(ModelError::InvalidConfig {
                name: "n_features",
                value: 0.0,
            });
        }
        let specs = kind.specs(n_features).ok_or(ModelError::InvalidConfig {
            name: "n_features",
            value: n_features as f64,
        })?;
        let sizes: Vec<usize> = specs.iter().map(ParamSpec::len).collect();
        let state = Snapshot {
            kind,
            n_features,
            seed,
            step: 0,
            scaler: Some(StandardScaler::with_decay(n_features, scaler_decay)),
            params: kind.init(n_features, seed),
            optim: OptimizerState::fresh(&hyper.optimizer, &sizes),
        };
        Ok(Learner {
            state,
            specs,
            hyper,
            device: Device::flex().autodiff(),
        })
    }

    /// Continues training a decoded model with (possibly changed) hyperparameters; see
    /// [`OptimizerState::continue_as`] for what happens when the optimizer changed.
    pub(crate) fn restore(mut state: Snapshot, hyper: Hyper) -> Result<Learner, ModelError> {
        hyper.validate()?;
        let specs = state
            .kind
            .specs(state.n_features)
            .filter(|specs| {
                specs.len() == state.params.len()
                    && specs
                        .iter()
                        .zip(&state.params)
                        .all(|(s, p)| s.len() == p.len())
            })
            .ok_or_else(shape_error)?;
        let sizes: Vec<usize> = specs.iter().map(ParamSpec::len).collect();
        state.optim = state.optim.continue_as(&hyper.optimizer, &sizes);
        Ok(Learner {
            state,
            specs,
            hyper,
            device: Device::flex().autodiff(),
        })
    }

    /// The state an artifact stores.
    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.state
    }

    /// The hyperparameters in use.
    pub(crate) fn hyper(&self) -> Hyper {
        self.hyper
    }

    /// An independent inference copy of the current model.
    pub(crate) fn host_model(&self) -> HostModel {
        HostModel {
            kind: self.state.kind,
            n_features: self.state.n_features,
            step: self.state.step,
            scaler: self.state.scaler.clone(),
            params: self.state.params.clone(),
        }
    }

    /// Scores the batch with the current model, then takes one optimizer step on it, each row's
    /// loss weighted as `weighting` says (an empty slice weighs every row 1).
    ///
    /// On any error the learner is unchanged: input errors are detected before any work, and
    /// an update with any non-finite result is discarded with [`ModelError::NonFinite`].
    pub(crate) fn train_batch(
        &mut self,
        rows: &[Vec<f32>],
        labels: &[f32],
        weighting: &[RowWeight],
    ) -> Result<BatchReport, ModelError> {
        validate_batch(rows, labels, self.state.n_features)?;
        if !weighting.is_empty() && weighting.len() != rows.len() {
            return Err(ModelError::WeightCount {
                rows: rows.len(),
                weights: weighting.len(),
            });
        }
        let n = rows.len();
        let state = &self.state;

        // Test with the scaler as it was, like a predictor serving this model would.
        let probs = probabilities(
            state.kind,
            &state.params,
            state.scaler.as_ref(),
            rows,
            "prequential scores",
        )?;
        let mut correct = 0usize;
        let mut log_loss_sum = 0.0f64;
        for (p, y) in probs.iter().zip(labels) {
            let positive = *y == 1.0;
            if predicts_positive(*p) == positive {
                correct += 1;
            }
            log_loss_sum += log_loss(*p, positive);
        }
        // The model's own probabilities, held fixed: no gradient flows through a weight.
        let weights: Vec<f32> = probs
            .iter()
            .enumerate()
            .map(|(i, &p)| weighting.get(i).copied().unwrap_or_default().weight(p))
            .collect();

        // Then fold the batch into the scaler and learn on the rows as the updated scaler sees
        // them; the new scaler is committed together with the parameters, or not at all.
        let mut scaler = state.scaler.clone();
        if let Some(scaler) = scaler.as_mut() {
            scaler.update(rows);
        }
        let grads = match state.kind {
            ModelKind::Logistic => {
                self.logistic_gradients(scaler.as_ref(), rows, labels, &weights)?
            }
            ModelKind::Mlp { .. } | ModelKind::FactorizationMachine { .. } => {
                self.autodiff_gradients(scaler.as_ref(), rows, labels, &weights)?
            }
        };

        let learning_rate = self.hyper.learning_rate_at(state.step);
        let (params, optim) =
            state
                .optim
                .step(&self.hyper.optimizer, learning_rate, &state.params, &grads)?;

        let state = &mut self.state;
        state.params = params;
        state.optim = optim;
        state.scaler = scaler;
        state.step = state.step.saturating_add(1);
        Ok(BatchReport {
            examples: n,
            correct,
            log_loss_sum,
            step: state.step,
            learning_rate,
            scores: probs,
            weights,
        })
    }

    /// The parameters as burn tensors of their shapes, on `device`.
    fn param_tensors(&self, device: &Device) -> Vec<Tensor<2>> {
        self.specs
            .iter()
            .zip(&self.state.params)
            .map(|(spec, values)| {
                Tensor::<2>::from_data(
                    TensorData::new(values.clone(), [spec.rows, spec.cols]),
                    device,
                )
            })
            .collect()
    }

    /// Gradients of the weighted mean cross-entropy plus the L2 penalty, by burn's autodiff
    /// over the kind's forward graph. Errors if the loss or any gradient is not finite.
    fn autodiff_gradients(
        &self,
        scaler: Option<&StandardScaler>,
        rows: &[Vec<f32>],
        labels: &[f32],
        weights: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let state = &self.state;
        let x = input_tensor(scaler, rows, state.n_features, &self.device);
        let leaves = self
            .param_tensors(&self.device)
            .into_iter()
            .map(Tensor::require_grad)
            .collect::<Vec<_>>();
        let logits = state.kind.forward(&leaves, x)?;
        let y = Tensor::<2>::from_data(
            TensorData::new(labels.to_vec(), [rows.len(), 1]),
            &self.device,
        );
        let w = Tensor::<2>::from_data(
            TensorData::new(weights.to_vec(), [rows.len(), 1]),
            &self.device,
        );
        let mut loss = cross_entropy_on_logits(logits, y, w);
        if self.hyper.l2 > 0.0 {
            for (leaf, spec) in leaves.iter().zip(&self.specs) {
                if spec.decay {
                    loss = loss.add(leaf.clone().square().sum().mul_scalar(0.5 * self.hyper.l2));
                }
            }
        }
        let gradients = loss.backward();
        check_loss(loss)?;
        let mut grads = Vec::with_capacity(leaves.len());
        for (leaf, spec) in leaves.iter().zip(&self.specs) {
            let grad = leaf
                .grad(&gradients)
                .ok_or_else(|| ModelError::Backend("a parameter received no gradient".into()))?;
            grads.push(finite_gradient(read_f32(grad)?, spec)?);
        }
        Ok(grads)
    }

    /// The same gradients for logistic regression in closed form, with burn tensors on the
    /// plain (non-autodiff) flex device: for logits z = Xw + b, row weights ω and
    /// d = ω∘(σ(z) − y)/n, the gradient is Xᵀd + λw for the weights and Σd for the bias.
    /// Recording a graph to differentiate two parameters cost more than the arithmetic itself,
    /// and this is the model whose training rate matters most.
    fn logistic_gradients(
        &self,
        scaler: Option<&StandardScaler>,
        rows: &[Vec<f32>],
        labels: &[f32],
        weights: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let state = &self.state;
        let (n, n_features) = (rows.len(), state.n_features);
        let device = Device::flex();
        let [w, b] = state.params.as_slice() else {
            return Err(shape_error());
        };
        let x = input_tensor(scaler, rows, n_features, &device);
        let w = Tensor::<2>::from_data(TensorData::new(w.clone(), [n_features, 1]), &device);
        let b = Tensor::<2>::from_data(TensorData::new(b.clone(), [1, 1]), &device);
        let y = Tensor::<2>::from_data(TensorData::new(labels.to_vec(), [n, 1]), &device);
        let omega = Tensor::<2>::from_data(TensorData::new(weights.to_vec(), [n, 1]), &device);
        let z = x.clone().matmul(w.clone()).add(b);
        let mut loss = cross_entropy_on_logits(z.clone(), y.clone(), omega.clone());
        let d = burn::tensor::activation::sigmoid(z)
            .sub(y)
            .mul(omega)
            .div_scalar(n as f32);
        let mut grad_w = x.transpose().matmul(d.clone());
        if self.hyper.l2 > 0.0 {
            loss = loss.add(w.clone().square().sum().mul_scalar(0.5 * self.hyper.l2));
            grad_w = grad_w.add(w.mul_scalar(self.hyper.l2));
        }
        check_loss(loss)?;
        Ok(vec![
            finite_gradient(read_f32(grad_w)?, &self.specs[0])?,
            finite_gradient(read_f32(d.sum())?, &self.specs[1])?,
        ])
    }

    /// Probabilities from burn's forward pass (plain flex device, current scaler), to check the
    /// host forward pass against.
    #[cfg(test)]
    pub(crate) fn burn_probabilities(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        let device = Device::flex();
        let state = &self.state;
        let leaves = self.param_tensors(&device);
        let x = input_tensor(state.scaler.as_ref(), rows, state.n_features, &device);
        let logits = state.kind.forward(&leaves, x)?;
        read_f32(burn::tensor::activation::sigmoid(logits))
    }
}

/// Inference-only copy of a model: host vectors and no burn, so scoring one row is a few hundred
/// multiply-adds with no tensor set-up, and the value is trivially `Send + Sync`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostModel {
    pub(crate) kind: ModelKind,
    pub(crate) n_features: usize,
    pub(crate) step: u64,
    scaler: Option<StandardScaler>,
    params: Vec<Vec<f32>>,
}

impl HostModel {
    /// The scoring part of a decoded artifact.
    pub(crate) fn from_snapshot(snapshot: Snapshot) -> HostModel {
        HostModel {
            kind: snapshot.kind,
            n_features: snapshot.n_features,
            step: snapshot.step,
            scaler: snapshot.scaler,
            params: snapshot.params,
        }
    }

    /// The parameter tensors, in the kind's storage order.
    pub(crate) fn params(&self) -> &[Vec<f32>] {
        &self.params
    }

    /// Probability of class 1 for one row.
    pub(crate) fn score(&self, row: &[f32]) -> Result<f32, ModelError> {
        validate_row(row, 0, self.n_features)?;
        probability(self.kind, &self.params, self.scaler.as_ref(), row, "score")
    }

    /// Probability of class 1 for each row; an empty batch gives an empty result.
    pub(crate) fn score_batch(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        validate_rows(rows, self.n_features)?;
        probabilities(
            self.kind,
            &self.params,
            self.scaler.as_ref(),
            rows,
            "scores",
        )
    }
}

/// σ(logit) of a validated, unscaled row. A logit that overflowed `f32` is refused rather than
/// saturated to 0 or 1: it means the model cannot represent this input, not that it is sure.
fn probability(
    kind: ModelKind,
    params: &[Vec<f32>],
    scaler: Option<&StandardScaler>,
    row: &[f32],
    what: &str,
) -> Result<f32, ModelError> {
    Ok(probabilities(kind, params, scaler, std::slice::from_ref(&row), what)?[0])
}

/// [`probability`] of each row, scaling with one set of deviations and one buffer for all.
fn probabilities<R: AsRef<[f32]>>(
    kind: ModelKind,
    params: &[Vec<f32>],
    scaler: Option<&StandardScaler>,
    rows: &[R],
    what: &str,
) -> Result<Vec<f32>, ModelError> {
    let deviations = scaler.map(StandardScaler::deviations);
    let mut scaled = Vec::new();
    rows.iter()
        .map(|row| {
            let z = match (scaler, &deviations) {
                (Some(scaler), Some(deviations)) => {
                    scaled.clear();
                    scaler.transform_into(deviations, row.as_ref(), &mut scaled);
                    kind.logit(params, &scaled)?
                }
                _ => kind.logit(params, row.as_ref())?,
            };
            if !z.is_finite() {
                return Err(ModelError::NonFinite { what: what.into() });
            }
            Ok(1.0 / (1.0 + (-z).exp()))
        })
        .collect()
}

/// Checks the shape of a training batch and its labels, then every row.
pub(crate) fn validate_batch(
    rows: &[Vec<f32>],
    labels: &[f32],
    n_features: usize,
) -> Result<(), ModelError> {
    if rows.len() != labels.len() {
        return Err(ModelError::LabelCount {
            rows: rows.len(),
            labels: labels.len(),
        });
    }
    if rows.is_empty() {
        return Err(ModelError::EmptyBatch);
    }
    validate_rows(rows, n_features)?;
    if let Some((index, value)) = labels
        .iter()
        .enumerate()
        .find(|(_, y)| **y != 0.0 && **y != 1.0)
    {
        return Err(ModelError::Label {
            index,
            value: *value,
        });
    }
    Ok(())
}

/// Checks every row has `n_features` finite values.
pub(crate) fn validate_rows<R: AsRef<[f32]>>(
    rows: &[R],
    n_features: usize,
) -> Result<(), ModelError> {
    for (i, row) in rows.iter().enumerate() {
        validate_row(row.as_ref(), i, n_features)?;
    }
    Ok(())
}

fn validate_row(row: &[f32], index: usize, n_features: usize) -> Result<(), ModelError> {
    if row.len() != n_features {
        return Err(ModelError::FeatureCount {
            row: index,
            expected: n_features,
            got: row.len(),
        });
    }
    if let Some((column, value)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ModelError::NonFiniteFeature {
            row: index,
            column,
            value: *value,
        });
    }
    Ok(())
}

/// Weighted mean binary cross-entropy on logits, `(1/n)·Σ ωᵢ·ℓᵢ`, each term in the numerically
/// stable form that burn's BinaryCrossEntropyLoss uses with `logits = true`: (1 − y)·z − log σ(z).
/// The weights `ω` are finite and in [0, 2] ([`RowWeight::weight`]), so they cannot make a
/// finite loss non-finite.
fn cross_entropy_on_logits(logits: Tensor<2>, y: Tensor<2>, weights: Tensor<2>) -> Tensor<1> {
    (y.neg() + 1.0)
        .mul(logits.clone())
        .sub(log_sigmoid(logits))
        .mul(weights)
        .mean()
}

fn check_loss(loss: Tensor<1>) -> Result<(), ModelError> {
    if read_f32(loss)?.iter().any(|l| !l.is_finite()) {
        return Err(ModelError::NonFinite {
            what: "training loss".into(),
        });
    }
    Ok(())
}

fn finite_gradient(grad: Vec<f32>, spec: &ParamSpec) -> Result<Vec<f32>, ModelError> {
    if grad.len() != spec.len() {
        return Err(shape_error());
    }
    if grad.iter().any(|g| !g.is_finite()) {
        return Err(ModelError::NonFinite {
            what: "gradients".into(),
        });
    }
    Ok(grad)
}

/// Row-major `[rows.len(), n_features]` input tensor of validated rows, scaled if there is a
/// scaler.
fn input_tensor(
    scaler: Option<&StandardScaler>,
    rows: &[Vec<f32>],
    n_features: usize,
    device: &Device,
) -> Tensor<2> {
    let mut flat = Vec::with_capacity(rows.len() * n_features);
    let deviations = scaler.map(StandardScaler::deviations);
    for row in rows {
        match (scaler, &deviations) {
            (Some(scaler), Some(deviations)) => scaler.transform_into(deviations, row, &mut flat),
            _ => flat.extend_from_slice(row),
        }
    }
    Tensor::<2>::from_data(TensorData::new(flat, [rows.len(), n_features]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::linear_batch;

    /// The report's counts are the scores' own: correct by [`predicts_positive`], log-loss by
    /// the clamped cross-entropy, from the scores a scorer made just before the update.
    #[test]
    fn the_report_measures_the_scores_before_the_update() {
        let hyper = Hyper {
            learning_rate: 1.0,
            ..Hyper::default()
        };
        for kind in [
            ModelKind::Logistic,
            ModelKind::Mlp { hidden: 4 },
            ModelKind::FactorizationMachine { factors: 2 },
        ] {
            let mut learner = Learner::new(kind, 3, hyper, 1, None).unwrap();
            for b in 0..15 {
                let (rows, labels) = linear_batch(b, 64, 3);
                learner.train_batch(&rows, &labels, &[]).unwrap();
            }
            let scorer = learner.host_model();
            let (rows, labels) = linear_batch(15, 64, 3);
            let scores = scorer.score_batch(&rows).unwrap();
            let report = learner.train_batch(&rows, &labels, &[]).unwrap();

            let correct = scores
                .iter()
                .zip(&labels)
                .filter(|(p, y)| predicts_positive(**p) == (**y == 1.0))
                .count();
            let log_loss: f64 = scores
                .iter()
                .zip(&labels)
                .map(|(p, y)| {
                    let p = f64::from(*p).clamp(P_CLAMP, 1.0 - P_CLAMP);
                    if *y == 1.0 { -p.ln() } else { -(1.0 - p).ln() }
                })
                .sum();
            assert_eq!(report.correct, correct, "{kind:?}");
            assert_eq!(
                report.log_loss_sum.to_bits(),
                log_loss.to_bits(),
                "{kind:?}"
            );
            assert_eq!(report.scores, scores, "{kind:?}");

            // The scorer is a snapshot: training afterwards does not change it.
            assert_eq!(scorer.score_batch(&rows).unwrap(), scores);
            for (row, p) in rows.iter().zip(&scores) {
                // Equal to the bit today; the tolerance only allows a backend that sums a
                // [1, n] product in another order than an [n, d] one.
                let single = scorer.score(row).unwrap();
                assert!((single - p).abs() <= 1e-6, "{kind:?}: {single} vs {p}");
            }
        }
    }

    #[test]
    fn closed_form_logistic_gradients_equal_autodiff() {
        let hyper = Hyper {
            l2: 0.01,
            ..Hyper::default()
        };
        let mut learner = Learner::new(ModelKind::Logistic, 5, hyper, 0, None).unwrap();
        let rows: Vec<Vec<f32>> = (0..64)
            .map(|i| {
                (0..5)
                    .map(|j| ((i * 7 + j * 3) % 11) as f32 - 5.0)
                    .collect()
            })
            .collect();
        let labels: Vec<f32> = rows.iter().map(|r| f32::from(r[0] + r[2] > 0.0)).collect();
        // From non-zero weights, so the penalty and every feature's gradient take part.
        for _ in 0..3 {
            learner.train_batch(&rows, &labels, &[]).unwrap();
        }
        let scaler = learner.state.scaler.clone();
        // Unweighted, and with rows weighted as fake-negative weighting weighs them.
        let uneven: Vec<f32> = (0..rows.len()).map(|i| (i % 5) as f32 * 0.4).collect();
        for weights in [vec![1.0; rows.len()], uneven] {
            let exact = learner
                .logistic_gradients(scaler.as_ref(), &rows, &labels, &weights)
                .unwrap();
            let traced = learner
                .autodiff_gradients(scaler.as_ref(), &rows, &labels, &weights)
                .unwrap();
            assert_eq!(exact.len(), traced.len());
            for (a, b) in exact.iter().flatten().zip(traced.iter().flatten()) {
                assert!((a - b).abs() <= 1e-6 + 1e-5 * b.abs(), "{a} vs {b}");
            }
        }
    }
}
