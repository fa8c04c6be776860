//! Logistic regression: one linear unit `σ(w·x + b)`.
//!
//! The simplest kind, and the default: its weights read directly as the effect of each
//! standardised feature, which is what `freshet models diff` compares between versions. The
//! parameters, in storage order, are the weights `w [n, 1]` and the bias `b [1, 1]`; they start
//! at zero, so a fresh model scores every row 0.5. The L2 penalty `(λ/2)·‖w‖²` applies to the
//! weights only: the bias only shifts the decision threshold and should not be pulled towards
//! p = 0.5. Training (with a closed-form gradient for this kind), scoring and artifacts are shared
//! with the other kinds (`learner.rs`, `artifact.rs`); this file holds the shapes and the two
//! forward passes, burn's and the host's, and the decoder for artifact format 2, which only
//! logistic models were ever written in.
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

use super::error::ModelError;
use super::learner::{Arch, Snapshot};
use super::manifest::{ModelKind, sha256_hex};
use super::optim::OptimizerState;
use super::params::{ParamSpec, read_f32, shape_error};
use super::scaler::StandardScaler;

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
    use crate::model::artifact::{DIGEST_LEN, MAGIC};
    use crate::model::synthetic::linear_batch;
    use crate::model::{Hyper, ModelConfig, ModelScorer, Optimizer, Trainer};
    use sha2::{Digest, Sha256};

    /// A format-2 artifact written by the code that defined format 2: 3 features, 5 SGD steps.
    const FORMAT2: &[u8] = include_bytes!("testdata/logistic_format2.bin");

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
                match ModelScorer::from_bytes(&rebuild(&r)) {
                    Ok(_) => outcomes.0 += 1,
                    Err(ModelError::Decode(_)) => outcomes.1 += 1,
                    Err(other) => panic!("unexpected error {other:?}"),
                }
            }
        }
        for cut in 0..record.len() {
            assert!(matches!(
                ModelScorer::from_bytes(&rebuild(&record[..cut])),
                Err(ModelError::Decode(_))
            ));
        }
        eprintln!(
            "record bit flips: {} loaded, {} rejected",
            outcomes.0, outcomes.1
        );
    }

    #[test]
    fn format2_artifact_still_decodes_and_continues() {
        // What the writing code reported for this fixture.
        let weights_then = [1_064_030_252u32, 1_057_193_725, 3_212_357_797].map(f32::from_bits);
        let bias = f32::from_bits(3_191_024_750);
        let probe = [vec![0.5f32, -0.25, 1.0], vec![-1.0, 0.75, 0.0]];
        let expected = [0.236_282_18f32, 0.268_54];

        let scorer = ModelScorer::from_bytes(FORMAT2).unwrap();
        assert_eq!(scorer.kind(), ModelKind::Logistic);
        assert_eq!((scorer.n_features(), scorer.step()), (3, 5));
        let scores = scorer.score_batch(&probe).unwrap();
        for (got, want) in scores.iter().zip(expected) {
            // burn's forward pass then, the host's now: equal up to summation order.
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }

        let mut trainer = Trainer::from_bytes(FORMAT2, &config(hyper())).unwrap();
        assert_eq!(
            (trainer.kind(), trainer.step(), trainer.n_features()),
            (ModelKind::Logistic, 5, 3)
        );
        let (w, b) = weights(&trainer);
        assert_eq!(w, weights_then.to_vec());
        assert_eq!(b.to_bits(), bias.to_bits());
        let (rows, labels) = linear_batch(0, 64, 3);
        assert_eq!(trainer.train_batch(&rows, &labels).unwrap().step, 6);

        // Once trained further it is written in the current format, and reads back exactly.
        let bytes = trainer.to_bytes().unwrap();
        let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[12..12 + header_len]).unwrap();
        assert_eq!(header["format"], crate::model::ARTIFACT_FORMAT_VERSION);
        let restored = Trainer::from_bytes(&bytes, &config(hyper())).unwrap();
        assert_eq!(restored.to_bytes().unwrap(), bytes);
    }
}
