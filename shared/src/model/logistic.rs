//! Logistic regression in burn, trained online by mini-batch SGD, and its byte artifact.
//!
//! [`LogisticTrainer`] owns the autodiff model and the optimizer. Each call to
//! [`LogisticTrainer::train_batch`] is *prequential* (test-then-train): the batch is first scored
//! by the current model, which is the honest accuracy/log-loss of a model that has never seen
//! those examples, and only then is one SGD step taken with learning rate `η0 / (1 + α·t)`.
//! An update that makes any weight NaN/∞ is discarded, so a trainer only ever holds finite
//! weights. [`Scorer`] is the inference-only copy (plain `Device::flex()`, no autodiff) that
//! serving code shares between threads.
//!
//! The artifact written by [`LogisticTrainer::to_bytes`] is self-describing:
//!
//! ```text
//! b"FRESHETM" | u32 LE header length | header JSON | burnpack record | SHA-256 of all before
//! ```
//!
//! The header carries the format version, model kind, feature count, SGD step, the input
//! scaler's state and the length and SHA-256 of the record; the trailing digest covers header
//! and record alike, so a truncated or corrupted artifact is rejected as [`ModelError::Decode`]
//! before burn ever parses it.
//!
//! L2 regularisation is applied by hand, as the term `(λ/2)·‖w‖²` added to the loss, on the
//! weights only (not the bias). Its gradient `λ·w` is exactly what burn's coupled
//! `WeightDecayConfig` adds, but burn's decay would also shrink the bias, which only shifts the
//! decision threshold and should not be pulled towards 0.5. The optimizer is plain SGD (no
//! momentum), so its only state is the step counter `t`, which the artifact stores.

use burn::module::{Module, ParamId};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::store::ModuleRecord;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ModelError;
use super::manifest::{ModelKind, sha256_hex};
use super::scaler::StandardScaler;

/// Version of the artifact layout written by [`LogisticTrainer::to_bytes`]; bump it when the
/// header or the module's field paths change, because burn keys record tensors by field path.
pub const ARTIFACT_FORMAT_VERSION: u32 = 2;

/// Length of the trailing SHA-256 digest.
const DIGEST_LEN: usize = 32;

/// Leading bytes of every artifact, so a random blob is rejected before JSON parsing.
const MAGIC: &[u8; 8] = b"FRESHETM";

/// Upper bound on the JSON header; a real one is ~200 bytes, and a bound keeps a corrupted
/// length field from being trusted.
const MAX_HEADER_LEN: usize = 64 * 1024;

/// Fixed burn parameter ids (see [`LogisticRegression::zeros`]).
const WEIGHT_PARAM_ID: u64 = 1;
const BIAS_PARAM_ID: u64 = 2;

/// Probabilities are clamped to `[P_CLAMP, 1 - P_CLAMP]` for log-loss so one confident mistake
/// costs at most ~16 nats instead of infinity.
const P_CLAMP: f64 = 1e-7;

/// The burn module: one linear unit (`n_features → 1`, with bias) whose output is the logit.
///
/// Field names are part of the artifact format (records are keyed `linear.weight`,
/// `linear.bias`): renaming them breaks old artifacts.
#[derive(Module, Debug)]
struct LogisticRegression {
    linear: Linear,
}

impl LogisticRegression {
    /// A model with all weights and the bias at exactly zero, so training is reproducible.
    fn zeros(n_features: usize, device: &Device) -> Self {
        let mut linear = LinearConfig::new(n_features, 1)
            .with_bias(true)
            .with_initializer(Initializer::Zeros)
            .init(device);
        // burn draws parameter ids at random and writes them into the record, which would make
        // identical weights serialise to different bytes (and SHA-256s). Ids only need to be
        // unique within one module, so fixed ones make artifacts a pure function of the weights.
        linear.weight.id = ParamId::from(WEIGHT_PARAM_ID);
        if let Some(bias) = linear.bias.as_mut() {
            bias.id = ParamId::from(BIAS_PARAM_ID);
        }
        Self { linear }
    }

    /// Logits, shape `[n, 1]`, for inputs of shape `[n, n_features]`.
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear.forward(x)
    }

    /// Reads weights and bias back to the host.
    fn read_params(&self) -> Result<(Vec<f32>, f32), ModelError> {
        let weights = read_f32(self.linear.weight.val())?;
        let bias = match &self.linear.bias {
            Some(bias) => read_f32(bias.val())?,
            None => return Err(ModelError::Backend("model has no bias parameter".into())),
        };
        match bias.as_slice() {
            [b] => Ok((weights, *b)),
            other => Err(ModelError::Backend(format!(
                "bias has {} values, expected 1",
                other.len()
            ))),
        }
    }
}

/// Copies a tensor to the host as `f32`, casting if the backend stored another float type.
fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    tensor
        .try_into_data_as::<f32>()
        .map_err(|e| ModelError::Backend(e.to_string()))?
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Backend(e.to_string()))
}

/// SGD hyperparameters. The learning rate at step `t` is `learning_rate / (1 + decay·t)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hyper {
    /// Initial learning rate η0 (> 0). Default 0.1.
    pub learning_rate: f64,
    /// Learning-rate decay α (≥ 0); 0 keeps the rate constant. Default 0.01.
    pub decay: f64,
    /// L2 penalty λ (≥ 0) on the weights, not the bias. Default 1e-4.
    pub l2: f64,
}

impl Default for Hyper {
    fn default() -> Self {
        Self {
            learning_rate: 0.1,
            decay: 0.01,
            l2: 1e-4,
        }
    }
}

impl Hyper {
    /// The learning rate used for the update taken at step `t` (before `t` is incremented).
    pub fn learning_rate_at(&self, t: u64) -> f64 {
        // u64 → f64 rounds above 2^53, which only shifts an already vanishing rate.
        self.learning_rate / (1.0 + self.decay * t as f64)
    }

    /// Rejects values that would make training meaningless (non-finite, non-positive rate,
    /// negative decay or penalty).
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(ModelError::InvalidConfig {
                name: "learning_rate",
                value: self.learning_rate,
            });
        }
        if !(self.decay.is_finite() && self.decay >= 0.0) {
            return Err(ModelError::InvalidConfig {
                name: "decay",
                value: self.decay,
            });
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(ModelError::InvalidConfig {
                name: "l2",
                value: self.l2,
            });
        }
        Ok(())
    }
}

/// What one [`LogisticTrainer::train_batch`] call measured and did.
///
/// `correct` and `log_loss_sum` are prequential: computed with the model as it was *before*
/// this batch's update. Sums (not means) so callers can aggregate over windows exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    /// Rows in the batch.
    pub examples: usize,
    /// Rows whose prediction (`p ≥ 0.5` ⇒ 1) matched the label.
    pub correct: usize,
    /// Sum over rows of `-ln p(label)`, with `p` clamped to `[1e-7, 1 - 1e-7]`.
    pub log_loss_sum: f64,
    /// The step counter `t` after this update.
    pub step: u64,
    /// The learning rate this update used.
    pub learning_rate: f64,
    /// Each row's prequential probability of class 1, in batch order (for ranking metrics).
    pub scores: Vec<f32>,
}

/// Header JSON of the artifact. Unknown fields are tolerated so a newer writer can add
/// informational fields without breaking older readers; `format` guards real layout changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ArtifactHeader {
    format: u32,
    kind: ModelKind,
    n_features: u64,
    step: u64,
    record_len: u64,
    record_sha256: String,
    /// The input scaler's state. Absent in artifacts written before scaling existed, which
    /// then score unscaled rows as they always did.
    #[serde(default)]
    scaler: Option<StandardScaler>,
}

/// Checks every row has `n_features` finite values.
fn validate_rows<R: AsRef<[f32]>>(rows: &[R], n_features: usize) -> Result<(), ModelError> {
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

/// Row-major `[rows.len(), n_features]` input tensor; rows must already be validated.
fn input_tensor<R: AsRef<[f32]>>(rows: &[R], n_features: usize, device: &Device) -> Tensor<2> {
    let mut flat = Vec::with_capacity(rows.len() * n_features);
    for row in rows {
        flat.extend_from_slice(row.as_ref());
    }
    Tensor::<2>::from_data(TensorData::new(flat, [rows.len(), n_features]), device)
}

/// Probabilities for validated rows, refusing NaN/∞ (possible when `w·x` overflows f32).
fn probabilities(
    model: &LogisticRegression,
    x: Tensor<2>,
    what: &str,
) -> Result<Vec<f32>, ModelError> {
    let probs = read_f32(sigmoid(model.forward(x)))?;
    if probs.iter().any(|p| !p.is_finite()) {
        return Err(ModelError::NonFinite { what: what.into() });
    }
    Ok(probs)
}

/// Trains a logistic regression one mini-batch at a time (see the module docs).
pub struct LogisticTrainer {
    /// The model on the autodiff device; always holds finite weights.
    model: LogisticRegression,
    optim: ModuleOptimizer,
    device: Device,
    /// Number of updates taken so far; drives the learning-rate schedule.
    t: u64,
    n_features: usize,
    hyper: Hyper,
    /// Host copy of the parameters, refreshed on every accepted update, so `weights()`/`bias()`
    /// are infallible and the finiteness check after an update reads the device only once.
    weights: Vec<f32>,
    bias: f32,
    /// Standardises inputs before the linear unit; learned alongside the weights.
    scaler: Option<StandardScaler>,
}

impl std::fmt::Debug for LogisticTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogisticTrainer")
            .field("n_features", &self.n_features)
            .field("step", &self.t)
            .field("hyper", &self.hyper)
            .finish_non_exhaustive()
    }
}

impl LogisticTrainer {
    /// A trainer for `n_features` inputs with all weights and the bias at zero and `t = 0`.
    pub fn new(n_features: usize, hyper: Hyper) -> Result<Self, ModelError> {
        hyper.validate()?;
        if n_features == 0 {
            return Err(ModelError::InvalidConfig {
                name: "n_features",
                value: 0.0,
            });
        }
        let device = Device::flex().autodiff();
        let model = LogisticRegression::zeros(n_features, &device);
        Ok(Self {
            model,
            optim: Self::optimizer(),
            device,
            t: 0,
            n_features,
            hyper,
            weights: vec![0.0; n_features],
            bias: 0.0,
            scaler: Some(StandardScaler::new(n_features)),
        })
    }

    /// Plain SGD: no momentum (so no optimizer state beyond `t`) and no burn weight decay
    /// (L2 is in the loss, weights only).
    fn optimizer() -> ModuleOptimizer {
        SgdConfig::new().init()
    }

    /// Scores the batch with the current model, then takes one SGD step on it.
    ///
    /// On any error the trainer is unchanged: input errors are detected before any work, and an
    /// update that yields non-finite weights is discarded with [`ModelError::NonFinite`].
    pub fn train_batch(
        &mut self,
        rows: &[Vec<f32>],
        labels: &[f32],
    ) -> Result<BatchReport, ModelError> {
        if rows.len() != labels.len() {
            return Err(ModelError::LabelCount {
                rows: rows.len(),
                labels: labels.len(),
            });
        }
        if rows.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        validate_rows(rows, self.n_features)?;
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

        let n = rows.len();
        // Test with the scaler as it was, like a predictor serving this model would; then fold
        // the batch into the scaler and learn on the rows as the updated scaler sees them.
        let probs = {
            let scaled = scale_rows(self.scaler.as_ref(), rows);
            let x = input_tensor(&scaled, self.n_features, &self.device);
            read_f32(sigmoid(self.model.forward(x)))?
        };
        if probs.iter().any(|p| !p.is_finite()) {
            return Err(ModelError::NonFinite {
                what: "prequential scores".into(),
            });
        }
        let mut correct = 0usize;
        let mut log_loss_sum = 0.0f64;
        for (p, y) in probs.iter().zip(labels) {
            let positive = *y == 1.0;
            if (*p >= 0.5) == positive {
                correct += 1;
            }
            let p = f64::from(*p).clamp(P_CLAMP, 1.0 - P_CLAMP);
            log_loss_sum -= if positive { p.ln() } else { (1.0 - p).ln() };
        }

        let mut scaler = self.scaler.clone();
        if let Some(scaler) = scaler.as_mut() {
            scaler.update(rows);
        }
        let scaled = scale_rows(scaler.as_ref(), rows);
        let logits = self
            .model
            .forward(input_tensor(&scaled, self.n_features, &self.device));

        // Train: mean binary cross-entropy on logits, in the numerically stable form that
        // burn's BinaryCrossEntropyLoss uses with `logits = true`: (1 - y)·z − log σ(z).
        let y = Tensor::<2>::from_data(TensorData::new(labels.to_vec(), [n, 1]), &self.device);
        let mut loss = (y.neg() + 1.0)
            .mul(logits.clone())
            .sub(log_sigmoid(logits))
            .mean();
        if self.hyper.l2 > 0.0 {
            let w = self.model.linear.weight.val();
            loss = loss.add(w.square().sum().mul_scalar(0.5 * self.hyper.l2));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);

        let learning_rate = self.hyper.learning_rate_at(self.t);
        // Step copies, so a rejected update leaves model and optimizer exactly as they were.
        // Cloning a module or optimizer shares tensor storage; it does not copy the weights.
        let mut optim = self.optim.clone();
        let candidate = optim.step(learning_rate, self.model.clone(), grads);
        let (weights, bias) = candidate.read_params()?;
        if !bias.is_finite() || weights.iter().any(|w| !w.is_finite()) {
            return Err(ModelError::NonFinite {
                what: "updated weights".into(),
            });
        }

        self.model = candidate;
        self.optim = optim;
        self.weights = weights;
        self.bias = bias;
        self.scaler = scaler;
        self.t = self.t.saturating_add(1);
        Ok(BatchReport {
            examples: n,
            correct,
            log_loss_sum,
            step: self.t,
            learning_rate,
            scores: probs,
        })
    }

    /// An inference copy of the current model (no autodiff), independent of further training.
    pub fn scorer(&self) -> Scorer {
        Scorer {
            model: self.model.valid(),
            device: Device::flex(),
            n_features: self.n_features,
            step: self.t,
            scaler: self.scaler.clone(),
        }
    }

    /// Serialises the model and step counter as a self-describing artifact (see module docs).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        encode_artifact(
            self.model.valid(),
            self.n_features,
            self.t,
            self.scaler.clone(),
        )
    }

    /// Restores a trainer from [`to_bytes`](Self::to_bytes) output, continuing the learning-rate
    /// schedule from the stored step. `hyper` is supplied by the caller (it lives in the
    /// manifest), so a deployment may change it between versions.
    pub fn from_bytes(bytes: &[u8], hyper: Hyper) -> Result<Self, ModelError> {
        hyper.validate()?;
        let device = Device::flex().autodiff();
        let decoded = decode_artifact(bytes, &device)?;
        Ok(Self {
            model: decoded.model,
            optim: Self::optimizer(),
            device,
            t: decoded.step,
            n_features: decoded.n_features,
            hyper,
            weights: decoded.weights,
            bias: decoded.bias,
            scaler: decoded.scaler,
        })
    }

    /// Current weights, one per feature, in feature order.
    pub fn weights(&self) -> Vec<f32> {
        self.weights.clone()
    }

    /// Current bias (intercept).
    pub fn bias(&self) -> f32 {
        self.bias
    }

    /// Updates taken so far (`t`).
    pub fn step(&self) -> u64 {
        self.t
    }

    /// Number of input features.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// The hyperparameters in use.
    pub fn hyper(&self) -> Hyper {
        self.hyper
    }
}

/// Inference-only logistic regression on plain `Device::flex()`; cheap to share (`Arc`) and
/// safe to call from many threads at once.
#[derive(Debug, Clone)]
pub struct Scorer {
    model: LogisticRegression,
    device: Device,
    n_features: usize,
    step: u64,
    scaler: Option<StandardScaler>,
}

impl Scorer {
    /// Loads a scorer from a trainer artifact ([`LogisticTrainer::to_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let device = Device::flex();
        let decoded = decode_artifact(bytes, &device)?;
        Ok(Self {
            model: decoded.model,
            device,
            n_features: decoded.n_features,
            step: decoded.step,
            scaler: decoded.scaler,
        })
    }

    /// Number of input features each row must have.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// The training step `t` of the model this scorer was made from.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Probability of class 1 for each row. An empty batch gives an empty result.
    pub fn score_batch(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        validate_rows(rows, self.n_features)?;
        let scaled = scale_rows(self.scaler.as_ref(), rows);
        let x = input_tensor(&scaled, self.n_features, &self.device);
        probabilities(&self.model, x, "scores")
    }

    /// Probability of class 1 for one row.
    pub fn score(&self, row: &[f32]) -> Result<f32, ModelError> {
        validate_row(row, 0, self.n_features)?;
        let scaled = scale_rows(self.scaler.as_ref(), std::slice::from_ref(&row));
        let x = input_tensor(&scaled, self.n_features, &self.device);
        let probs = probabilities(&self.model, x, "score")?;
        probs
            .first()
            .copied()
            .ok_or_else(|| ModelError::Backend("empty output for one row".into()))
    }
}

/// Validated rows as the scaler sees them (unchanged without a scaler).
fn scale_rows<R: AsRef<[f32]>>(scaler: Option<&StandardScaler>, rows: &[R]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|row| match scaler {
            Some(scaler) => scaler.transform(row.as_ref()),
            None => row.as_ref().to_vec(),
        })
        .collect()
}

/// A decoded artifact: module on the requested device plus its host-side parameters.
struct Decoded {
    model: LogisticRegression,
    n_features: usize,
    step: u64,
    weights: Vec<f32>,
    bias: f32,
    scaler: Option<StandardScaler>,
}

fn encode_artifact(
    model: LogisticRegression,
    n_features: usize,
    step: u64,
    scaler: Option<StandardScaler>,
) -> Result<Vec<u8>, ModelError> {
    let record = model
        .into_record()
        .into_bytes()
        .map_err(|e| ModelError::Encode(e.to_string()))?;
    let record: &[u8] = &record;
    let header = ArtifactHeader {
        format: ARTIFACT_FORMAT_VERSION,
        kind: ModelKind::Logistic,
        n_features: n_features as u64,
        step,
        record_len: record.len() as u64,
        record_sha256: sha256_hex(record),
        scaler,
    };
    let header = serde_json::to_vec(&header).map_err(|e| ModelError::Encode(e.to_string()))?;
    let header_len = u32::try_from(header.len())
        .ok()
        .filter(|len| (*len as usize) <= MAX_HEADER_LEN)
        .ok_or_else(|| ModelError::Encode(format!("header too large: {} bytes", header.len())))?;

    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + record.len() + DIGEST_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(record);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

fn decode_artifact(bytes: &[u8], device: &Device) -> Result<Decoded, ModelError> {
    let decode = |msg: String| ModelError::Decode(msg);

    let body_len = bytes
        .len()
        .checked_sub(DIGEST_LEN)
        .ok_or_else(|| decode("shorter than its checksum".into()))?;
    let (bytes, digest) = bytes.split_at(body_len);
    if Sha256::digest(bytes).as_slice() != digest {
        return Err(decode(
            "artifact checksum does not match its contents".into(),
        ));
    }
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| decode("not a freshet model artifact (bad magic)".into()))?;
    let (len_bytes, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| decode("truncated before header length".into()))?;
    let header_len = u32::from_le_bytes(*len_bytes) as usize;
    if header_len > MAX_HEADER_LEN || header_len > rest.len() {
        return Err(decode(format!(
            "header length {header_len} exceeds the {} bytes available",
            rest.len()
        )));
    }
    let (header, record) = rest.split_at(header_len);
    let header: ArtifactHeader =
        serde_json::from_slice(header).map_err(|e| decode(format!("header: {e}")))?;

    if header.format != ARTIFACT_FORMAT_VERSION {
        return Err(decode(format!(
            "unsupported artifact format {} (this build reads {ARTIFACT_FORMAT_VERSION})",
            header.format
        )));
    }
    if header.kind != ModelKind::Logistic {
        return Err(decode(format!(
            "model kind {:?} is not logistic",
            header.kind
        )));
    }
    if header.record_len != record.len() as u64 {
        return Err(decode(format!(
            "record is {} bytes, header says {} (truncated or padded)",
            record.len(),
            header.record_len
        )));
    }
    // The record must physically hold n_features f32 weights; checking this before building the
    // module bounds the allocation by the input size, whatever the header claims.
    let n_features = usize::try_from(header.n_features)
        .ok()
        .filter(|n| *n > 0 && n.saturating_mul(4) <= record.len())
        .ok_or_else(|| {
            decode(format!(
                "n_features {} is impossible for a {}-byte record",
                header.n_features,
                record.len()
            ))
        })?;
    if let Some(scaler) = &header.scaler {
        scaler.validate(n_features)?;
    }
    let actual = sha256_hex(record);
    if actual != header.record_sha256 {
        return Err(decode(format!(
            "record checksum {actual} does not match header {}",
            header.record_sha256
        )));
    }

    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(record.to_vec()))
        .map_err(|e| decode(format!("record: {e}")))?
        // A record written as another float type is converted rather than trusted, so every
        // later read as f32 holds.
        .cast_to_module_dtype();
    let model = LogisticRegression::zeros(n_features, device)
        .try_load_record(record)
        .map_err(|e| decode(format!("record does not fit the model: {e}")))?;
    let (weights, bias) = model.read_params().map_err(|e| decode(e.to_string()))?;
    if weights.len() != n_features {
        return Err(decode(format!(
            "record has {} weights, header says {n_features}",
            weights.len()
        )));
    }
    if !bias.is_finite() || weights.iter().any(|w| !w.is_finite()) {
        return Err(decode("record holds non-finite weights".into()));
    }
    Ok(Decoded {
        model,
        n_features,
        step: header.step,
        weights,
        bias,
        scaler: header.scaler,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::time::Instant;

    /// Deterministic pseudo-random features in [-1, 1) from a splitmix-style hash, so tests
    /// need no RNG crate and every run sees the same data.
    fn feature(i: u64, j: u64) -> f32 {
        let mut z = i
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(j.wrapping_mul(0xBF58_476D_1CE4_E5B9))
            .wrapping_add(0x94D0_49BB_1331_11EB);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Batch `b` of a linearly separable task: y = 1 iff x0 + 0.5·x1 > 0.2 (x2 is noise).
    fn batch(b: u64, size: u64) -> (Vec<Vec<f32>>, Vec<f32>) {
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for k in 0..size {
            let i = b * size + k;
            let row: Vec<f32> = (0..3).map(|j| feature(i, j)).collect();
            labels.push(if row[0] + 0.5 * row[1] > 0.2 {
                1.0
            } else {
                0.0
            });
            rows.push(row);
        }
        (rows, labels)
    }

    fn hyper() -> Hyper {
        Hyper {
            learning_rate: 1.0,
            decay: 0.01,
            l2: 1e-4,
        }
    }

    fn trained(batches: u64) -> LogisticTrainer {
        let mut trainer = LogisticTrainer::new(3, hyper()).unwrap();
        for b in 0..batches {
            let (rows, labels) = batch(b, 64);
            trainer.train_batch(&rows, &labels).unwrap();
        }
        trainer
    }

    #[test]
    fn learns_separable_task_prequentially() {
        let start = Instant::now();
        let mut trainer = LogisticTrainer::new(3, hyper()).unwrap();
        let mut tail = (0usize, 0usize);
        let mut first = None;
        for b in 0..50 {
            let (rows, labels) = batch(b, 64);
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
        let w = trainer.weights();
        assert!(w[0] > 0.0 && w[1] > 0.0 && w[0] > w[1], "weights {w:?}");
        eprintln!("50 batches x 64 trained in {:?}", start.elapsed());
    }

    #[test]
    fn training_is_deterministic() {
        let a = trained(10);
        let b = trained(10);
        assert_eq!(a.weights(), b.weights());
        assert_eq!(a.bias().to_bits(), b.bias().to_bits());
        // Same weights, same artifact bytes: the SHA-256 identifies the model.
        assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
        assert_eq!(
            LogisticTrainer::new(3, hyper())
                .unwrap()
                .to_bytes()
                .unwrap(),
            LogisticTrainer::new(3, hyper())
                .unwrap()
                .to_bytes()
                .unwrap()
        );
    }

    #[test]
    fn round_trip_preserves_weights_step_and_continuation() {
        let mut original = trained(20);
        let bytes = original.to_bytes().unwrap();
        eprintln!("artifact for 3 features: {} bytes", bytes.len());
        let mut restored = LogisticTrainer::from_bytes(&bytes, hyper()).unwrap();
        assert_eq!(restored.step(), 20);
        assert_eq!(restored.n_features(), 3);
        assert_eq!(restored.weights(), original.weights());
        assert_eq!(restored.bias().to_bits(), original.bias().to_bits());
        assert_eq!(restored.to_bytes().unwrap(), bytes);

        let (rows, _) = batch(99, 64);
        assert_eq!(
            original.scorer().score_batch(&rows).unwrap(),
            restored.scorer().score_batch(&rows).unwrap()
        );
        assert_eq!(
            Scorer::from_bytes(&bytes)
                .unwrap()
                .score_batch(&rows)
                .unwrap(),
            original.scorer().score_batch(&rows).unwrap()
        );

        for b in 20..30 {
            let (rows, labels) = batch(b, 64);
            let r1 = original.train_batch(&rows, &labels).unwrap();
            let r2 = restored.train_batch(&rows, &labels).unwrap();
            assert_eq!(r1, r2);
        }
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(original.weights()), bits(restored.weights()));
        assert_eq!(original.bias().to_bits(), restored.bias().to_bits());
        assert_eq!(original.step(), 30);
    }

    #[test]
    fn scorer_matches_prequential_scores() {
        let mut trainer = trained(15);
        let scorer = trainer.scorer();
        let (rows, labels) = batch(15, 64);
        let scores = scorer.score_batch(&rows).unwrap();
        let report = trainer.train_batch(&rows, &labels).unwrap();

        let correct = scores
            .iter()
            .zip(&labels)
            .filter(|(p, y)| (**p >= 0.5) == (**y == 1.0))
            .count();
        let log_loss: f64 = scores
            .iter()
            .zip(&labels)
            .map(|(p, y)| {
                let p = f64::from(*p).clamp(P_CLAMP, 1.0 - P_CLAMP);
                if *y == 1.0 { -p.ln() } else { -(1.0 - p).ln() }
            })
            .sum();
        assert_eq!(report.correct, correct);
        assert_eq!(report.log_loss_sum.to_bits(), log_loss.to_bits());

        // The scorer is a snapshot: training afterwards does not change it.
        assert_eq!(scorer.score_batch(&rows).unwrap(), scores);
        for (row, p) in rows.iter().zip(&scores) {
            // Equal to the bit today; the tolerance only allows a backend that sums a [1, n]
            // product in another order than an [n, d] one.
            let single = scorer.score(row).unwrap();
            assert!((single - p).abs() <= 1e-6, "{single} vs {p}");
            if single.to_bits() != p.to_bits() {
                eprintln!("single-row score differs in the last bits: {single} vs {p}");
            }
        }
    }

    #[test]
    fn bad_input_is_rejected_and_model_unchanged() {
        let mut trainer = trained(5);
        let before = (trainer.weights(), trainer.bias(), trainer.step());
        let good = vec![0.1f32, 0.2, 0.3];

        let err = trainer
            .train_batch(&[good.clone(), vec![1.0, 2.0]], &[0.0, 1.0])
            .unwrap_err();
        assert_eq!(
            err,
            ModelError::FeatureCount {
                row: 1,
                expected: 3,
                got: 2
            }
        );
        let err = trainer
            .train_batch(&[good.clone(), vec![1.0, f32::NAN, 0.0]], &[0.0, 1.0])
            .unwrap_err();
        assert!(matches!(
            err,
            ModelError::NonFiniteFeature {
                row: 1,
                column: 1,
                ..
            }
        ));
        let err = trainer
            .train_batch(&[vec![f32::INFINITY, 0.0, 0.0]], &[1.0])
            .unwrap_err();
        assert!(matches!(
            err,
            ModelError::NonFiniteFeature {
                row: 0,
                column: 0,
                ..
            }
        ));
        let err = trainer
            .train_batch(&[good.clone(), good.clone()], &[1.0, 0.5])
            .unwrap_err();
        assert_eq!(
            err,
            ModelError::Label {
                index: 1,
                value: 0.5
            }
        );
        let err = trainer
            .train_batch(std::slice::from_ref(&good), &[1.0, 0.0])
            .unwrap_err();
        assert_eq!(err, ModelError::LabelCount { rows: 1, labels: 2 });
        assert_eq!(
            trainer.train_batch(&[], &[]).unwrap_err(),
            ModelError::EmptyBatch
        );

        assert_eq!((trainer.weights(), trainer.bias(), trainer.step()), before);

        let scorer = trainer.scorer();
        assert!(matches!(
            scorer.score(&[1.0]),
            Err(ModelError::FeatureCount {
                expected: 3,
                got: 1,
                ..
            })
        ));
        assert!(matches!(
            scorer.score(&[0.0, f32::NEG_INFINITY, 0.0]),
            Err(ModelError::NonFiniteFeature { column: 1, .. })
        ));
        assert_eq!(scorer.score_batch(&[]).unwrap(), Vec::<f32>::new());

        assert!(matches!(
            LogisticTrainer::new(0, Hyper::default()),
            Err(ModelError::InvalidConfig {
                name: "n_features",
                ..
            })
        ));
        let bad = Hyper {
            learning_rate: f64::NAN,
            ..Hyper::default()
        };
        assert!(matches!(
            LogisticTrainer::new(3, bad),
            Err(ModelError::InvalidConfig {
                name: "learning_rate",
                ..
            })
        ));
    }

    #[test]
    fn divergent_update_is_discarded() {
        let mut trainer = LogisticTrainer::new(
            3,
            Hyper {
                learning_rate: 1e10,
                decay: 0.0,
                l2: 0.0,
            },
        )
        .unwrap();
        let (rows, labels) = batch(0, 8);
        trainer.train_batch(&rows, &labels).unwrap();
        let before = (trainer.weights(), trainer.bias(), trainer.step());
        let bytes_before = trainer.to_bytes().unwrap();

        // With trained weights (~1e9) the scores overflow first: w·x is ±∞ or ∞ − ∞.
        let huge = vec![vec![1e30f32, -1e30, 1e30]; 4];
        let err = trainer
            .train_batch(&huge, &[1.0, 0.0, 1.0, 1.0])
            .unwrap_err();
        assert!(matches!(err, ModelError::NonFinite { .. }), "{err:?}");
        assert_eq!((trainer.weights(), trainer.bias(), trainer.step()), before);
        assert!(trainer.weights().iter().all(|w| w.is_finite()));
        assert_eq!(trainer.to_bytes().unwrap(), bytes_before);

        // Still trainable afterwards, from the kept model.
        let (rows, labels) = batch(1, 8);
        assert_eq!(trainer.train_batch(&rows, &labels).unwrap().step, 2);
    }

    #[test]
    fn overflowing_update_is_discarded_after_scoring() {
        // Zero weights score p = 0.5 finitely, so it is the update itself that overflows f32
        // and must be rolled back.
        let mut trainer = LogisticTrainer::new(
            3,
            Hyper {
                learning_rate: 1e40,
                decay: 0.0,
                l2: 1e-4,
            },
        )
        .unwrap();
        // Scaled, these rows are ±1; a step of 1e40 takes any weight past f32::MAX.
        let huge = vec![
            vec![1e30f32, 1e30, -1e30],
            vec![-1e30, -1e30, 1e30],
            vec![1e30, 1e30, -1e30],
            vec![-1e30, -1e30, 1e30],
        ];
        let err = trainer
            .train_batch(&huge, &[1.0, 0.0, 1.0, 1.0])
            .unwrap_err();
        assert_eq!(
            err,
            ModelError::NonFinite {
                what: "updated weights".into()
            }
        );
        assert_eq!(trainer.weights(), vec![0.0; 3]);
        assert_eq!(trainer.bias(), 0.0);
        assert_eq!(trainer.step(), 0);
    }

    #[test]
    fn garbage_and_truncated_bytes_are_decode_errors() {
        let bytes = trained(3).to_bytes().unwrap();
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"FRESHETM".to_vec(),
            b"not a model at all".to_vec(),
            vec![0xFF; 4096],
        ];
        for cut in [1, 8, 11, 12, 20, bytes.len() / 2, bytes.len() - 1] {
            cases.push(bytes[..cut].to_vec());
        }
        let mut padded = bytes.clone();
        padded.push(0);
        cases.push(padded);
        for i in (0..bytes.len()).step_by(7) {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x55;
            cases.push(flipped);
        }
        for case in &cases {
            match LogisticTrainer::from_bytes(case, hyper()) {
                Err(ModelError::Decode(_)) => {}
                Ok(_) => panic!("decoded corrupted bytes (len {})", case.len()),
                Err(other) => panic!("unexpected error {other:?}"),
            }
            assert!(matches!(
                Scorer::from_bytes(case),
                Err(ModelError::Decode(_))
            ));
        }
    }

    /// Corrupts the burnpack record itself and re-signs the header, so burn's own parser (not
    /// our checksum) faces the damage: it must return errors, never panic.
    #[test]
    fn corrupted_record_with_valid_header_never_panics() {
        let bytes = trained(3).to_bytes().unwrap();
        let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let header: ArtifactHeader = serde_json::from_slice(&bytes[12..12 + header_len]).unwrap();
        let record = bytes[12 + header_len..].to_vec();
        let rebuild = |record: &[u8]| {
            let h = ArtifactHeader {
                record_len: record.len() as u64,
                record_sha256: sha256_hex(record),
                ..header.clone()
            };
            let h = serde_json::to_vec(&h).unwrap();
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&(h.len() as u32).to_le_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(record);
            out
        };
        let mut outcomes = (0usize, 0usize);
        for i in 0..record.len() {
            for mask in [0x01u8, 0x80, 0xFF] {
                let mut r = record.clone();
                r[i] ^= mask;
                match Scorer::from_bytes(&rebuild(&r)) {
                    Ok(_) => outcomes.0 += 1,
                    Err(ModelError::Decode(_)) => outcomes.1 += 1,
                    Err(other) => panic!("unexpected error {other:?}"),
                }
            }
        }
        for cut in 0..record.len() {
            assert!(matches!(
                Scorer::from_bytes(&rebuild(&record[..cut])),
                Err(ModelError::Decode(_))
            ));
        }
        eprintln!(
            "record bit flips: {} loaded, {} rejected",
            outcomes.0, outcomes.1
        );
    }

    #[test]
    fn types_are_thread_safe() {
        fn send_sync_static<T: Send + Sync + 'static>() {}
        fn send_static<T: Send + 'static>() {}
        send_sync_static::<Scorer>();
        send_static::<LogisticTrainer>();
    }

    #[test]
    fn single_row_scoring_is_cheap() {
        let scorer = trained(5).scorer();
        let row = vec![0.3f32, -0.2, 0.9];
        for _ in 0..100 {
            scorer.score(&row).unwrap();
        }
        let n = 2000;
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(scorer.score(std::hint::black_box(&row)).unwrap());
        }
        eprintln!("score(): {:?} per row (debug build)", start.elapsed() / n);
    }
}
