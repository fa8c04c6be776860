//! The training and scoring core that every model kind shares.
//!
//! A model is a kind with its dimensions ([`ModelKind`]) plus a list of `f32` parameter tensors
//! held on the host. [`Learner::train_batch`] validates a batch, then learns it in steps of
//! [`Hyper::step_rows`] rows (one by default): a batch fetched from the stream is a unit of I/O
//! and acknowledgement, and one optimizer step per batch of 256 cost up to 9 points of accuracy
//! (BENCHMARKS.md, "Model quality"). Each step scores its rows with the host forward pass (the
//! very code a predictor runs) before learning them, weighs each row from that score
//! ([`RowWeight`]: 1, or fake-negative weighting's importance weights, held fixed), folds them
//! into the input scaler, computes the gradient of the weighted mean binary cross-entropy on
//! logits `(1/m)·Σ ωᵢ·ℓᵢ` plus `(λ/2)·Σ‖W‖²` over weight tensors (never biases), and hands it to
//! the host optimizer ([`OptimizerState`]).
//!
//! The gradient of a small step is computed on the host, by each kind's backward pass
//! (`add_gradient` in its file); a large one (rows × parameters ≥ [`HOST_STEP_VALUES`]) by burn,
//! in closed form for logistic regression and by autodiff for the others. A test holds the two
//! equal. burn's graph has a fixed cost per call that is more than the whole arithmetic of a step
//! of one row of these small models.
//!
//! The steps run on a copy of the model that is committed when the whole batch is learned: if
//! any logit, gradient, parameter or optimizer moment is not finite, the learner is left
//! bit-identical and [`ModelError::NonFinite`] is returned, so a version has learned every row of
//! its batches or nothing of a refused one.
//!
//! Parameters live on the host rather than in burn modules because everything around a step
//! wants them there: scoring single rows without tensor overhead, checking finiteness, the
//! optimizer update, and an artifact that stores them exactly. The per-kind mathematics (shapes,
//! initialisation, forward and backward passes) is in `logistic.rs`, `mlp.rs` and `fm.rs`;
//! [`ModelKind`] dispatches to it.

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
use freshet::stats;
use freshet::stats::ewma::Decay;

/// Rows × parameters of a step below which its gradient is computed on the host: measured
/// against burn's flex backend (BENCHMARKS.md, "Model quality"), where one call's graph costs
/// more than the arithmetic of a small step.
const HOST_STEP_VALUES: usize = 1 << 16;

/// The class a probability predicts: 1 when `p > 0.5`, else 0. A score of exactly 0.5 (an
/// untrained model, for one) carries no information; it is called 0, as River and scikit-learn
/// do, so prequential accuracies compare row for row.
pub fn predicts_positive(p: f32) -> bool {
    p > 0.5
}

/// The cross-entropy of probability `p` for a row of class `positive` ([`stats::log_loss`], so
/// train's prequential log loss and drift's error stream are one measure).
pub fn log_loss(p: f32, positive: bool) -> f64 {
    stats::log_loss(f64::from(p), positive)
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
    /// Each row's loss weight in its step, in batch order (all 1 unless rows were weighted; see
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
    /// Steps of fewer rows × parameters than this take their gradient on the host
    /// ([`HOST_STEP_VALUES`]; a measurement sets it to compare the two).
    host_step_values: usize,
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
            host_step_values: HOST_STEP_VALUES,
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
            host_step_values: HOST_STEP_VALUES,
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

    /// Learns the batch in steps of [`Hyper::step_rows`] rows, each step's rows scored by the
    /// model as it is before that step (the prequential measurement), then folded into the
    /// scaler and learned in one optimizer step, each row's loss weighted as `weighting` says
    /// from its prequential score (an empty slice weighs every row 1).
    ///
    /// The whole batch is learned by a copy of the model, committed only at the end: on any
    /// error the learner is unchanged. Input errors are detected before any work, and a step
    /// with any non-finite result refuses the whole batch with [`ModelError::NonFinite`], so a
    /// version either learned every row of its batches or none of a refused one.
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
        let step_rows = self.hyper.step_rows(n);
        let mut state = self.state.clone();
        let mut scores = Vec::with_capacity(n);
        let mut weights: Vec<f32> = Vec::with_capacity(n);
        let mut learning_rate = self.hyper.learning_rate_at(state.step);
        let mut grads: Vec<Vec<f32>> = state.params.iter().map(|p| vec![0.0; p.len()]).collect();
        let mut deviations = state.scaler.as_ref().map(StandardScaler::deviations);
        for (rows, labels) in rows.chunks(step_rows).zip(labels.chunks(step_rows)) {
            // Test with the scaler as it was, like a predictor serving this model would...
            let step_scores = probabilities_with(
                state.kind,
                &state.params,
                state.scaler.as_ref().zip(deviations.as_deref()),
                rows,
                "prequential scores",
            )?;
            // ...weigh each row by the model's own probability before the step, held fixed
            // (no gradient flows through a weight)...
            let first = scores.len();
            let step_weights: Vec<f32> = step_scores
                .iter()
                .enumerate()
                .map(|(j, &p)| {
                    weighting
                        .get(first + j)
                        .copied()
                        .unwrap_or_default()
                        .weight(p)
                })
                .collect();
            scores.extend(step_scores);
            // ...then fold the rows into the scaler and learn them as the updated scaler sees
            // them, as River's pipeline does per row.
            if let Some(scaler) = state.scaler.as_mut() {
                scaler.update(rows);
                deviations = Some(scaler.deviations());
            }
            let scaling = state.scaler.as_ref().zip(deviations.as_deref());
            if self.on_host(rows.len()) {
                host_gradients(
                    state.kind,
                    &state.params,
                    &self.specs,
                    self.hyper.l2,
                    scaling,
                    rows,
                    labels,
                    &step_weights,
                    &mut grads,
                )?;
            } else {
                grads = self.burn_gradients(&state, rows, labels, &step_weights)?;
            }
            weights.extend(step_weights);
            learning_rate = self.hyper.learning_rate_at(state.step);
            state.optim.apply(
                &self.hyper.optimizer,
                learning_rate,
                &mut state.params,
                &grads,
            )?;
            state.step = state.step.saturating_add(1);
        }

        let mut correct = 0usize;
        let mut log_loss_sum = 0.0f64;
        for (p, y) in scores.iter().zip(labels) {
            let positive = *y == 1.0;
            if predicts_positive(*p) == positive {
                correct += 1;
            }
            log_loss_sum += log_loss(*p, positive);
        }
        self.state = state;
        Ok(BatchReport {
            examples: n,
            correct,
            log_loss_sum,
            step: self.state.step,
            learning_rate,
            scores,
            weights,
        })
    }

    /// Whether a step of `rows` rows computes its gradient on the host rather than with burn:
    /// below [`HOST_STEP_VALUES`] rows × parameters a burn graph's fixed cost per call is more
    /// than the arithmetic (BENCHMARKS.md, "Model quality").
    fn on_host(&self, rows: usize) -> bool {
        let parameters: usize = self.specs.iter().map(ParamSpec::len).sum();
        rows.saturating_mul(parameters) < self.host_step_values
    }

    /// A step's gradient by burn: in closed form for logistic regression, by autodiff for the
    /// other kinds.
    fn burn_gradients(
        &self,
        state: &Snapshot,
        rows: &[Vec<f32>],
        labels: &[f32],
        weights: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        match state.kind {
            ModelKind::Logistic => {
                self.logistic_gradients(&state.params, state.scaler.as_ref(), rows, labels, weights)
            }
            ModelKind::Mlp { .. }
            | ModelKind::FactorizationMachine { .. }
            | ModelKind::Fourier { .. } => {
                self.autodiff_gradients(&state.params, state.scaler.as_ref(), rows, labels, weights)
            }
        }
    }

    /// The parameters as burn tensors of their shapes, on `device`.
    fn param_tensors(&self, params: &[Vec<f32>], device: &Device) -> Vec<Tensor<2>> {
        self.specs
            .iter()
            .zip(params)
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
        params: &[Vec<f32>],
        scaler: Option<&StandardScaler>,
        rows: &[Vec<f32>],
        labels: &[f32],
        weights: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let state = &self.state;
        let x = input_tensor(scaler, rows, state.n_features, &self.device);
        // A tensor that is not trained (random features' frequencies) is a constant of the
        // graph: no gradient is computed for it, and its step is zero.
        let leaves = self
            .param_tensors(params, &self.device)
            .into_iter()
            .zip(&self.specs)
            .map(|(t, spec)| if spec.trained { t.require_grad() } else { t })
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
            if !spec.trained {
                grads.push(vec![0.0; spec.len()]);
                continue;
            }
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
        params: &[Vec<f32>],
        scaler: Option<&StandardScaler>,
        rows: &[Vec<f32>],
        labels: &[f32],
        weights: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let (n, n_features) = (rows.len(), self.state.n_features);
        let device = Device::flex();
        let [w, b] = params else {
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
        let leaves = self.param_tensors(&state.params, &device);
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
    probabilities_with(kind, params, scaler.zip(deviations.as_deref()), rows, what)
}

/// [`probabilities`] with the scaler's [`deviations`](StandardScaler::deviations) already
/// computed.
fn probabilities_with<R: AsRef<[f32]>>(
    kind: ModelKind,
    params: &[Vec<f32>],
    scaling: Option<(&StandardScaler, &[f64])>,
    rows: &[R],
    what: &str,
) -> Result<Vec<f32>, ModelError> {
    let mut scaled = Vec::new();
    rows.iter()
        .map(|row| {
            let z = match scaling {
                Some((scaler, deviations)) => {
                    scaled.clear();
                    scaler.transform_into(deviations, row.as_ref(), &mut scaled);
                    kind.logit(params, &scaled)?
                }
                None => kind.logit(params, row.as_ref())?,
            };
            if !z.is_finite() {
                return Err(ModelError::NonFinite { what: what.into() });
            }
            Ok(1.0 / (1.0 + (-z).exp()))
        })
        .collect()
}

/// A step's gradient on the host, into `grads` (shaped as the parameters): the mean over the
/// rows of the weighted cross-entropy's gradient, `ω·(σ(z) − y)/m · ∂z/∂θ` for each row's logit
/// `z` and weight `ω` (the
/// kind's [`add_gradient`](ModelKind::add_gradient)), plus `λ·W` on the weight tensors. The
/// same gradient as burn's (a test holds them equal). Errors if a logit or a gradient is not
/// finite.
#[allow(clippy::too_many_arguments)] // one step's inputs, each needed
fn host_gradients(
    kind: ModelKind,
    params: &[Vec<f32>],
    specs: &[ParamSpec],
    l2: f64,
    scaling: Option<(&StandardScaler, &[f64])>,
    rows: &[Vec<f32>],
    labels: &[f32],
    weights: &[f32],
    grads: &mut [Vec<f32>],
) -> Result<(), ModelError> {
    for g in grads.iter_mut() {
        g.fill(0.0);
    }
    let per_row = 1.0 / rows.len() as f32;
    let mut scaled = Vec::new();
    for (i, (row, y)) in rows.iter().zip(labels).enumerate() {
        let omega = weights.get(i).copied().unwrap_or(1.0);
        let x = match scaling {
            Some((scaler, deviations)) => {
                scaled.clear();
                scaler.transform_into(deviations, row, &mut scaled);
                scaled.as_slice()
            }
            None => row.as_slice(),
        };
        let z = kind.logit(params, x)?;
        if !z.is_finite() {
            return Err(ModelError::NonFinite {
                what: "training loss".into(),
            });
        }
        let p = 1.0 / (1.0 + (-z).exp());
        kind.add_gradient(params, x, omega * (p - y) * per_row, grads)?;
    }
    let l2 = l2 as f32;
    for ((g, p), spec) in grads.iter_mut().zip(params).zip(specs) {
        if spec.decay && l2 > 0.0 {
            for (g, p) in g.iter_mut().zip(p) {
                *g += l2 * p;
            }
        }
        if g.iter().any(|g| !g.is_finite()) {
            return Err(ModelError::NonFinite {
                what: "gradients".into(),
            });
        }
    }
    Ok(())
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
    use crate::synthetic::{SMALL_KINDS, linear_batch};

    /// The report's counts are the scores' own: correct by [`predicts_positive`], log-loss by
    /// the clamped cross-entropy, from the scores a scorer made just before the update.
    #[test]
    fn the_report_measures_the_scores_before_the_update() {
        // One step per batch: every row is scored by the model before the batch.
        let hyper = Hyper {
            learning_rate: 1.0,
            rows_per_step: 0,
            ..Hyper::default()
        };
        for kind in SMALL_KINDS {
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
                    let p = f64::from(*p).clamp(stats::LOG_LOSS_CLAMP, 1.0 - stats::LOG_LOSS_CLAMP);
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

    /// The gradient every step takes (host, or burn's for large steps) is one gradient: for
    /// every kind the host's equals burn's autodiff, and for logistic regression burn's closed
    /// form too, with the L2 penalty, from trained (non-zero) parameters.
    #[test]
    fn host_gradients_equal_burns() {
        let hyper = Hyper {
            l2: 0.01,
            learning_rate: 0.1,
            ..Hyper::default()
        };
        for kind in SMALL_KINDS {
            let mut learner = Learner::new(kind, 5, hyper, 2, None).unwrap();
            let rows: Vec<Vec<f32>> = (0..64)
                .map(|i| {
                    (0..5)
                        .map(|j| ((i * 7 + j * 3) % 11) as f32 - 5.0)
                        .collect()
                })
                .collect();
            let labels: Vec<f32> = rows.iter().map(|r| f32::from(r[0] + r[2] > 0.0)).collect();
            for _ in 0..3 {
                learner.train_batch(&rows, &labels, &[]).unwrap();
            }
            let state = learner.state.clone();
            let scaler = state.scaler.as_ref();
            let deviations = scaler.map(StandardScaler::deviations);
            // Unweighted, and with rows weighted as fake-negative weighting weighs them.
            let uneven: Vec<f32> = (0..rows.len()).map(|i| (i % 5) as f32 * 0.4).collect();
            for weights in [vec![1.0; rows.len()], uneven] {
                let mut host: Vec<Vec<f32>> =
                    state.params.iter().map(|p| vec![0.0; p.len()]).collect();
                host_gradients(
                    kind,
                    &state.params,
                    &learner.specs,
                    hyper.l2,
                    scaler.zip(deviations.as_deref()),
                    &rows,
                    &labels,
                    &weights,
                    &mut host,
                )
                .unwrap();
                let mut references = vec![
                    learner
                        .autodiff_gradients(&state.params, scaler, &rows, &labels, &weights)
                        .unwrap(),
                ];
                if kind == ModelKind::Logistic {
                    references.push(
                        learner
                            .logistic_gradients(&state.params, scaler, &rows, &labels, &weights)
                            .unwrap(),
                    );
                }
                for reference in references {
                    assert_eq!(host.len(), reference.len());
                    for (a, b) in host.iter().flatten().zip(reference.iter().flatten()) {
                        assert!(
                            (a - b).abs() <= 1e-5 + 1e-4 * b.abs(),
                            "{kind:?}: {a} vs {b}"
                        );
                    }
                    assert!(host.iter().flatten().any(|g| *g != 0.0), "{kind:?}");
                }
            }
        }
    }

    /// At one row per step a batch learns exactly as the same rows one batch each would, and
    /// scores each row with the model that learned every row before it.
    #[test]
    fn one_row_per_step_learns_a_batch_as_rows_one_at_a_time() {
        let hyper = Hyper {
            learning_rate: 0.05,
            rows_per_step: 1,
            ..Hyper::default()
        };
        for kind in SMALL_KINDS {
            let mut whole = Learner::new(kind, 3, hyper, 1, None).unwrap();
            let mut single = Learner::new(kind, 3, hyper, 1, None).unwrap();
            let (rows, labels) = linear_batch(0, 40, 3);
            let report = whole.train_batch(&rows, &labels, &[]).unwrap();
            let mut scores = Vec::new();
            for (row, label) in rows.iter().zip(&labels) {
                let one = single
                    .train_batch(std::slice::from_ref(row), &[*label], &[])
                    .unwrap();
                scores.extend(one.scores);
            }
            assert_eq!(report.scores, scores, "{kind:?}");
            assert_eq!(report.step, 40);
            assert_eq!(whole.state, single.state, "{kind:?}");
        }
    }

    /// Rows per second of training batches of 256 × 20 features in steps of 1 to 256 rows, with
    /// every step's gradient on the host and with every one in burn: what [`HOST_STEP_VALUES`]
    /// was chosen from. A measurement, not a test: `cargo test --release -p freshet-model --lib
    /// measure_ -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement; run by hand"]
    fn measure_host_and_burn_steps() {
        use crate::{DEFAULT_FACTORS, DEFAULT_HIDDEN};
        let batches: Vec<_> = (0..8).map(|b| linear_batch(b, 256, 20)).collect();
        for kind in [
            ModelKind::Logistic,
            ModelKind::Mlp {
                hidden: DEFAULT_HIDDEN,
            },
            ModelKind::FactorizationMachine {
                factors: DEFAULT_FACTORS,
            },
        ] {
            for rows_per_step in [1, 4, 16, 64, 0] {
                let hyper = Hyper {
                    learning_rate: 0.01,
                    rows_per_step,
                    ..Hyper::default()
                };
                let mut line = format!("{kind:?} rows/step {rows_per_step}:");
                for (path, values) in [("host", usize::MAX), ("burn", 0)] {
                    let mut learner = Learner::new(kind, 20, hyper, 1, None).unwrap();
                    learner.host_step_values = values;
                    let start = std::time::Instant::now();
                    let mut rows_done = 0usize;
                    while start.elapsed() < std::time::Duration::from_millis(700) {
                        for (rows, labels) in &batches {
                            learner.train_batch(rows, labels, &[]).unwrap();
                            rows_done += rows.len();
                        }
                    }
                    let rate = rows_done as f64 / start.elapsed().as_secs_f64();
                    line.push_str(&format!(" {path} {rate:.0} rows/s;"));
                }
                eprintln!("{line}");
            }
        }
    }
}
