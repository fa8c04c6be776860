//! Format 2, the first artifact format: logistic regression only, read but no longer written.
//!
//! Inside the common envelope (`frame.rs`) the header is JSON naming the kind, `n_features`, the
//! step, the record's length and SHA-256, and the scaler's statistics as JSON; the record is a
//! burnpack module record keyed `linear.weight`, `linear.bias`, written from the burn module
//! below. Models are now written as format 3 (`mod.rs`), which also stores Adam's moments and
//! keeps the scaler's `f64` statistics exact (`serde_json` does not round-trip every `f64`
//! without its `float_roundtrip` feature). A golden artifact written by the code that defined
//! this format (`testdata/logistic_format2.bin`) proves such models still load and train on.

use burn::module::{Module, ParamId};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use serde::{Deserialize, Serialize};

use super::frame::sha256_hex;
use crate::error::ModelError;
use crate::kind::ModelKind;
use crate::learner::Snapshot;
use crate::optim::OptimizerState;
use crate::params::read_f32;
use crate::scaler::StandardScaler;

/// Fixed burn parameter ids of format-2 records (see [`LogisticRegression::zeros`]).
const WEIGHT_PARAM_ID: u64 = 1;
const BIAS_PARAM_ID: u64 = 2;

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
    kind: String,
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
/// checksum [`super::decode`] has already checked.
pub(super) fn decode(header: &[u8], record: &[u8]) -> Result<Snapshot, ModelError> {
    let decode = |msg: String| ModelError::Decode(msg);
    let header: ArtifactHeader =
        serde_json::from_slice(header).map_err(|e| decode(format!("header: {e}")))?;
    if header.kind != ModelKind::Logistic.name() {
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
        kind: ModelKind::Logistic,
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
    use crate::artifact::frame::{DIGEST_LEN, MAGIC};
    use crate::synthetic::linear_batch;
    use crate::{ARTIFACT_FORMAT_VERSION, Hyper, ModelConfig, ModelScorer, Trainer};
    use sha2::{Digest, Sha256};

    /// A format-2 artifact written by the code that defined format 2: 3 features, 5 SGD steps.
    const FORMAT2: &[u8] = include_bytes!("testdata/logistic_format2.bin");

    /// What the fixture was trained with (any valid hyperparameters decode it).
    fn config() -> ModelConfig {
        ModelConfig {
            hyper: Hyper {
                learning_rate: 1.0,
                decay: 0.01,
                l2: 1e-4,
                rows_per_step: 0,
                ..Hyper::default()
            },
            ..ModelConfig::default()
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

        let mut trainer = Trainer::from_bytes(FORMAT2, &config()).unwrap();
        assert_eq!(
            (trainer.kind(), trainer.step(), trainer.n_features()),
            (ModelKind::Logistic, 5, 3)
        );
        let scorer = trainer.scorer();
        let (w, b) = scorer.linear_weights().unwrap();
        assert_eq!(w, weights_then);
        assert_eq!(b.to_bits(), bias.to_bits());
        let (rows, labels) = linear_batch(0, 64, 3);
        assert_eq!(trainer.train_batch(&rows, &labels).unwrap().step, 6);

        // Once trained further it is written in the current format, and reads back exactly.
        let bytes = trainer.to_bytes().unwrap();
        let header_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[12..12 + header_len]).unwrap();
        assert_eq!(header["format"], ARTIFACT_FORMAT_VERSION);
        let restored = Trainer::from_bytes(&bytes, &config()).unwrap();
        assert_eq!(restored.to_bytes().unwrap(), bytes);
    }
}
