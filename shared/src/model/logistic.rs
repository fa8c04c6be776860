//! Logistic regression, trained online.
//!
//! [`LogisticTrainer`] learns one linear unit `σ(w·x + b)` a mini-batch at a time. Each call to
//! [`LogisticTrainer::train_batch`] is *prequential* (test-then-train): the batch is first scored
//! by the current model, which is the honest accuracy/log-loss of a model that has never seen
//! those examples, and only then is one optimizer step taken with learning rate `η0 / (1 + α·t)`
//! (SGD or Adam, see [`Hyper`]). An update that makes the loss or any weight NaN/∞ is discarded,
//! so a trainer only ever holds finite weights. [`Scorer`] is the inference-only copy that
//! serving code shares between threads. The training machinery itself is shared with the other
//! kinds (`learner.rs`); this file holds what is particular to the linear model, and the decoder
//! for artifact format 2, which only logistic models were ever written in.
//!
//! L2 regularisation is the term `(λ/2)·‖w‖²` in the loss, on the weights only: the bias only
//! shifts the decision threshold and should not be pulled towards p = 0.5.
//!
//! Format 2 (read, no longer written) is
//!
//! ```text
//! b"FRESHETM" | u32 LE header length | header JSON | burnpack record | SHA-256 of all before
//! ```
//!
//! with the weights in a burn module record keyed `linear.weight`, `linear.bias`, and the
//! scaler's statistics as JSON in the header. Models are now written as format 3
//! (`artifact.rs`), which also stores Adam's moments and keeps the scaler's `f64` statistics
//! exact (`serde_json` does not round-trip every `f64` without its `float_roundtrip` feature).

use burn::module::{Module, ParamId};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::artifact;
use super::error::ModelError;
use super::hyper::Hyper;
use super::learner::{Arch, BatchReport, HostModel, Learner, Snapshot};
use super::manifest::{ModelKind, sha256_hex};
use super::optim::OptimizerState;
use super::params::{ParamSpec, read_f32, shape_error};
use super::scaler::StandardScaler;

pub use super::artifact::ARTIFACT_FORMAT_VERSION;

/// Fixed burn parameter ids of format-2 records (see [`LogisticRegression::zeros`]).
const WEIGHT_PARAM_ID: u64 = 1;
const BIAS_PARAM_ID: u64 = 2;

/// Parameter tensors: the weights `[n, 1]`, then the bias `[1, 1]`.
pub(crate) fn specs(n_features: usize) -> Vec<ParamSpec> {
    vec![
        ParamSpec {
            rows: n_features,
            cols: 1,
            decay: true,
        },
        ParamSpec {
            rows: 1,
            cols: 1,
            decay: false,
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

/// Trains a logistic regression one mini-batch at a time (see the module docs).
///
/// The same model is available as [`ModelKind::Logistic`] through
/// [`Trainer`](super::Trainer); this type keeps the linear model's own accessors
/// ([`weights`](Self::weights), [`bias`](Self::bias)).
#[derive(Debug)]
pub struct LogisticTrainer {
    learner: Learner,
}

impl LogisticTrainer {
    /// A trainer for `n_features` inputs with all weights and the bias at zero and `t = 0`.
    pub fn new(n_features: usize, hyper: Hyper) -> Result<Self, ModelError> {
        Ok(Self {
            learner: Learner::new(Arch::Logistic, n_features, hyper, 0, None)?,
        })
    }

    /// Scores the batch with the current model, then takes one optimizer step on it.
    ///
    /// On any error the trainer is unchanged: input errors are detected before any work, and an
    /// update that yields a non-finite loss or weights is discarded with
    /// [`ModelError::NonFinite`].
    pub fn train_batch(
        &mut self,
        rows: &[Vec<f32>],
        labels: &[f32],
    ) -> Result<BatchReport, ModelError> {
        self.learner.train_batch(rows, labels)
    }

    /// An inference copy of the current model, independent of further training.
    pub fn scorer(&self) -> Scorer {
        Scorer {
            model: self.learner.host_model(),
        }
    }

    /// Serialises the model, step counter, scaler and optimizer state as a self-describing
    /// artifact (format [`ARTIFACT_FORMAT_VERSION`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        artifact::encode(self.learner.snapshot())
    }

    /// Restores a trainer from [`to_bytes`](Self::to_bytes) output or a format-2 artifact,
    /// continuing the learning-rate schedule (and Adam's moments) from where it stopped.
    /// `hyper` is supplied by the caller (it lives in the manifest), so a deployment may change
    /// it between versions.
    pub fn from_bytes(bytes: &[u8], hyper: Hyper) -> Result<Self, ModelError> {
        let snapshot = logistic_only(artifact::decode(bytes)?)?;
        Ok(Self {
            learner: Learner::restore(snapshot, hyper)?,
        })
    }

    /// Current weights, one per feature, in feature order.
    pub fn weights(&self) -> Vec<f32> {
        self.learner
            .snapshot()
            .params
            .first()
            .cloned()
            .unwrap_or_default()
    }

    /// Current bias (intercept).
    pub fn bias(&self) -> f32 {
        self.learner
            .snapshot()
            .params
            .get(1)
            .and_then(|b| b.first())
            .copied()
            .unwrap_or(0.0)
    }

    /// Updates taken so far (`t`).
    pub fn step(&self) -> u64 {
        self.learner.snapshot().step
    }

    /// Number of input features.
    pub fn n_features(&self) -> usize {
        self.learner.snapshot().n_features
    }

    /// The hyperparameters in use.
    pub fn hyper(&self) -> Hyper {
        self.learner.hyper()
    }
}

/// Refuses artifacts of other kinds, which the logistic types cannot represent.
fn logistic_only(snapshot: Snapshot) -> Result<Snapshot, ModelError> {
    if snapshot.arch == Arch::Logistic {
        Ok(snapshot)
    } else {
        Err(ModelError::Decode(format!(
            "model kind {:?} is not logistic",
            snapshot.arch.kind()
        )))
    }
}

/// Inference-only logistic regression on host vectors; cheap to share (`Arc`) and safe to call
/// from many threads at once. [`ModelScorer`](super::ModelScorer) scores every kind.
#[derive(Debug, Clone)]
pub struct Scorer {
    model: HostModel,
}

impl Scorer {
    /// Loads a scorer from a logistic artifact ([`LogisticTrainer::to_bytes`], or format 2).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let snapshot = logistic_only(artifact::decode(bytes)?)?;
        Ok(Self {
            model: HostModel::from_snapshot(snapshot),
        })
    }

    /// Number of input features each row must have.
    pub fn n_features(&self) -> usize {
        self.model.n_features
    }

    /// The training step `t` of the model this scorer was made from.
    pub fn step(&self) -> u64 {
        self.model.step
    }

    /// Probability of class 1 for each row. An empty batch gives an empty result.
    pub fn score_batch(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        self.model.score_batch(rows)
    }

    /// Probability of class 1 for one row.
    pub fn score(&self, row: &[f32]) -> Result<f32, ModelError> {
        self.model.score(row)
    }
}

/// The burn module format-2 records were written from: one linear unit (`n_features → 1`, with
/// bias). Field names are the record keys (`linear.weight`, `linear.bias`).
#[derive(Module, Debug)]
struct LogisticRegression {
    linear: Linear,
}

impl LogisticRegression {
    /// A model with all weights and the bias at zero, to load a record into.
    fn zeros(n_features: usize, device: &Device) -> Self {
        let mut linear = LinearConfig::new(n_features, 1)
            .with_bias(true)
            .with_initializer(Initializer::Zeros)
            .init(device);
        // Format 2 wrote these fixed ids (burn otherwise draws them at random, which made equal
        // weights serialise to different bytes).
        linear.weight.id = ParamId::from(WEIGHT_PARAM_ID);
        if let Some(bias) = linear.bias.as_mut() {
            bias.id = ParamId::from(BIAS_PARAM_ID);
        }
        Self { linear }
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

/// Header JSON of a format-2 artifact. Unknown fields are tolerated.
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

/// Decodes the header and burnpack record of a format-2 artifact whose framing and trailing
/// checksum [`artifact::decode`] has already checked.
pub(crate) fn decode_format2(header: &[u8], record: &[u8]) -> Result<Snapshot, ModelError> {
    let decode = |msg: String| ModelError::Decode(msg);
    let header: ArtifactHeader =
        serde_json::from_slice(header).map_err(|e| decode(format!("header: {e}")))?;
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
    let model = LogisticRegression::zeros(n_features, &Device::flex())
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
    Ok(Snapshot {
        arch: Arch::Logistic,
        n_features,
        seed: 0,
        step: header.step,
        scaler: header.scaler,
        params: vec![weights, vec![bias]],
        // Format 2 was only ever written by plain SGD, whose sole state is the step counter.
        optim: OptimizerState::Sgd,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::model::Optimizer;
    use crate::model::artifact::{DIGEST_LEN, MAGIC};
    use crate::model::learner::P_CLAMP;
    use sha2::{Digest, Sha256};
    use std::time::Instant;

    /// A format-2 artifact written by the code that defined format 2: 3 features, 5 SGD steps.
    const FORMAT2: &[u8] = include_bytes!("testdata/logistic_format2.bin");

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
            ..Hyper::default()
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
    fn learns_with_adam_too() {
        let adam = Hyper {
            learning_rate: 0.05,
            optimizer: Optimizer::adam(),
            ..hyper()
        };
        let mut trainer = LogisticTrainer::new(3, adam).unwrap();
        let (mut correct, mut seen) = (0, 0);
        for b in 0..50 {
            let (rows, labels) = batch(b, 64);
            let report = trainer.train_batch(&rows, &labels).unwrap();
            if b >= 40 {
                correct += report.correct;
                seen += report.examples;
            }
        }
        let accuracy = correct as f64 / seen as f64;
        assert!(accuracy > 0.9, "prequential accuracy {accuracy}");
        // Adam's state travels with the model.
        let bytes = trainer.to_bytes().unwrap();
        let restored = LogisticTrainer::from_bytes(&bytes, adam).unwrap();
        assert_eq!(restored.to_bytes().unwrap(), bytes);
        assert_eq!(restored.hyper().optimizer, Optimizer::adam());
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
            .filter(|(p, y)| crate::model::predicts_positive(**p) == (**y == 1.0))
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
                ..Hyper::default()
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
                ..Hyper::default()
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

    /// Corrupts the burnpack record of a format-2 artifact and re-signs header and trailer, so
    /// burn's own parser (not our checksums) faces the damage: it must return errors, never
    /// panic.
    #[test]
    fn corrupted_format2_record_with_valid_checksums_never_panics() {
        let bytes = FORMAT2;
        let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[12..12 + header_len]).unwrap();
        let parsed: ArtifactHeader = serde_json::from_str(header).unwrap();
        let record = bytes[12 + header_len..bytes.len() - DIGEST_LEN].to_vec();
        // The header is patched as text: re-serialising it would change the scaler's floats,
        // because serde_json's default parser does not round-trip every f64 (the reason format
        // 3 stores them as bytes).
        let rebuild = |record: &[u8]| {
            let h = header
                .replace(
                    &format!("\"record_len\":{}", parsed.record_len),
                    &format!("\"record_len\":{}", record.len()),
                )
                .replace(&parsed.record_sha256, &sha256_hex(record));
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&(h.len() as u32).to_le_bytes());
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(record);
            let digest = Sha256::digest(&out);
            out.extend_from_slice(&digest);
            out
        };
        assert_eq!(
            rebuild(&record),
            bytes,
            "the rebuild reproduces the fixture"
        );
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

    #[test]
    fn format2_artifact_still_decodes_and_continues() {
        // What the writing code reported for this fixture.
        let weights = [1_064_030_252u32, 1_057_193_725, 3_212_357_797].map(f32::from_bits);
        let bias = f32::from_bits(3_191_024_750);
        let probe = [vec![0.5f32, -0.25, 1.0], vec![-1.0, 0.75, 0.0]];
        let expected = [0.236_282_18f32, 0.268_54];

        let scorer = Scorer::from_bytes(FORMAT2).unwrap();
        assert_eq!((scorer.n_features(), scorer.step()), (3, 5));
        let scores = scorer.score_batch(&probe).unwrap();
        for (got, want) in scores.iter().zip(expected) {
            // burn's forward pass then, the host's now: equal up to summation order.
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        let any = crate::model::ModelScorer::from_bytes(FORMAT2).unwrap();
        assert_eq!(any.kind(), ModelKind::Logistic);
        assert_eq!(any.score_batch(&probe).unwrap(), scores);
        let config = crate::model::ModelConfig::default();
        let any = crate::model::Trainer::from_bytes(FORMAT2, &config).unwrap();
        assert_eq!(
            (any.kind(), any.step(), any.n_features()),
            (ModelKind::Logistic, 5, 3)
        );

        let mut trainer = LogisticTrainer::from_bytes(FORMAT2, hyper()).unwrap();
        assert_eq!(trainer.weights(), weights.to_vec());
        assert_eq!(trainer.bias().to_bits(), bias.to_bits());
        let (rows, labels) = batch(0, 64);
        assert_eq!(trainer.train_batch(&rows, &labels).unwrap().step, 6);

        // Once trained further it is written in the current format, and reads back exactly.
        let bytes = trainer.to_bytes().unwrap();
        let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[12..12 + header_len]).unwrap();
        assert_eq!(header["format"], ARTIFACT_FORMAT_VERSION);
        let restored = LogisticTrainer::from_bytes(&bytes, hyper()).unwrap();
        assert_eq!(restored.to_bytes().unwrap(), bytes);
    }
}
