//! The byte artifact every model kind is stored as, and the decoder that reads every format.
//!
//! ```text
//! b"FRESHETM" | u32 LE header length | header JSON | record | SHA-256 of all before
//! ```
//!
//! The magic rejects random blobs before any parsing, and the trailing digest covers header and
//! record alike, so a truncated or corrupted artifact is rejected as [`ModelError::Decode`]
//! before a single field is trusted (`frame.rs`). The header's `format` selects the layout:
//!
//! - **3** (written for every kind): the header names the kind, the dimensions (`n_features`,
//!   and `hidden` or `factors`), the initialisation seed, the step `t`, the scaler's example
//!   count, the optimizer (with Adam's update count), and the record's length and SHA-256. The
//!   record is little-endian numbers: the scaler's means and M2 sums (`f64` × n each, if there is
//!   a scaler), the parameters (`f32`, tensor by tensor in the kind's order), then Adam's first
//!   and second moments (`f64`, same order) if the optimizer is Adam. Raw numbers because they
//!   round-trip exactly (a restored trainer continues bit for bit), no third-party parser ever
//!   sees untrusted bytes, and the expected record length follows from the header alone, so the
//!   decoder allocates nothing the input does not already hold.
//! - **4**: format 3 with `scaler_decay` in the header: the scaler is exponentially weighted,
//!   and its second statistics are variances, not M2 sums. Written only for such a scaler, so
//!   a reader that knows format 3 alone refuses it instead of scaling with the wrong formula,
//!   and keeps reading every other artifact.
//! - **2** (logistic only, read but no longer written): see `format2.rs`.
//!
//! The header repeats `record_len` and `record_sha256` under the names format 2 used, so a
//! reader built before format 3 fails with "unsupported artifact format 3" rather than a
//! puzzling parse error.

use serde::{Deserialize, Serialize};

use super::error::ModelError;
use super::kind::{Dimensions, ModelKind};
use super::learner::Snapshot;
use super::optim::OptimizerState;
use super::params::ParamSpec;
use super::scaler::StandardScaler;
use frame::{frame, unframe};
use freshet::stats::ewma::Decay;

mod format2;
mod frame;

pub use frame::sha256_hex;

/// Version of the artifact layout this build writes. Bump it when the header or the record
/// layout changes, and keep a decoder for every version that was ever written.
pub const ARTIFACT_FORMAT_VERSION: u32 = 3;

/// Format 3 with an exponentially weighted scaler (`scaler_decay` in the header).
pub const FORMAT_DECAYED_SCALER: u32 = 4;

/// The first format, logistic regression with a burnpack record; still read.
const FORMAT_LOGISTIC_BURNPACK: u32 = 2;

/// Header JSON of format 3. Unknown fields are tolerated so a newer writer can add
/// informational fields without breaking older readers; `format` guards real layout changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    format: u32,
    /// The kind's name.
    kind: String,
    n_features: u64,
    /// Hidden units of an MLP, cosine features of a fourier model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hidden: Option<u64>,
    /// Latent factors per feature; factorization machine only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    factors: Option<u64>,
    seed: u64,
    step: u64,
    /// Examples the scaler has seen; `None` if the model has no scaler (a logistic model from
    /// before scaling existed), and then the record holds no scaler statistics.
    scaler_count: Option<u64>,
    /// β of an exponentially weighted scaler (format 4 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scaler_decay: Option<Decay>,
    optimizer: SavedOptimizer,
    record_len: u64,
    record_sha256: String,
}

/// Which optimizer state the record carries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum SavedOptimizer {
    /// None: SGD's only state is the step counter.
    Sgd,
    /// Adam's moments, after `steps` Adam updates.
    Adam { steps: u64 },
}

/// Serialises a model in the current format.
pub(crate) fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, ModelError> {
    let mut record = Vec::new();
    let scaler_count = snapshot.scaler.as_ref().map(|scaler| {
        let (count, mean, m2) = scaler.parts();
        for value in mean.iter().chain(m2) {
            record.extend_from_slice(&value.to_le_bytes());
        }
        count
    });
    for value in snapshot.params.iter().flatten() {
        record.extend_from_slice(&value.to_le_bytes());
    }
    let optimizer = match &snapshot.optim {
        OptimizerState::Sgd => SavedOptimizer::Sgd,
        OptimizerState::Adam { steps, m, v } => {
            for value in m.iter().chain(v).flatten() {
                record.extend_from_slice(&value.to_le_bytes());
            }
            SavedOptimizer::Adam { steps: *steps }
        }
    };
    let Dimensions { hidden, factors } = snapshot.kind.dimensions();
    let scaler_decay = snapshot.scaler.as_ref().and_then(StandardScaler::decay);
    let header = Header {
        format: if scaler_decay.is_some() {
            FORMAT_DECAYED_SCALER
        } else {
            ARTIFACT_FORMAT_VERSION
        },
        kind: snapshot.kind.name().to_string(),
        n_features: snapshot.n_features as u64,
        hidden: hidden.map(|h| h as u64),
        factors: factors.map(|f| f as u64),
        seed: snapshot.seed,
        step: snapshot.step,
        scaler_count,
        scaler_decay,
        optimizer,
        record_len: record.len() as u64,
        record_sha256: sha256_hex(&record),
    };
    let header = serde_json::to_vec(&header).map_err(|e| ModelError::Encode(e.to_string()))?;
    frame(&header, &record)
}

/// Decodes an artifact of any format this build reads.
pub(crate) fn decode(bytes: &[u8]) -> Result<Snapshot, ModelError> {
    /// Just enough of any header to choose the decoder.
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let (header, record) = unframe(bytes)?;
    let format: Format =
        serde_json::from_slice(header).map_err(|e| ModelError::Decode(format!("header: {e}")))?;
    match format.format {
        ARTIFACT_FORMAT_VERSION | FORMAT_DECAYED_SCALER => decode_format3(header, record),
        FORMAT_LOGISTIC_BURNPACK => format2::decode(header, record),
        other => Err(ModelError::Decode(format!(
            "unsupported artifact format {other} (this build reads \
             {FORMAT_LOGISTIC_BURNPACK}, {ARTIFACT_FORMAT_VERSION} and {FORMAT_DECAYED_SCALER})"
        ))),
    }
}

/// Formats 3 and 4: one layout; 4 says the scaler is exponentially weighted.
fn decode_format3(header: &[u8], record: &[u8]) -> Result<Snapshot, ModelError> {
    let decode = |msg: String| ModelError::Decode(msg);
    let header: Header =
        serde_json::from_slice(header).map_err(|e| decode(format!("header: {e}")))?;
    let decayed = header.format == FORMAT_DECAYED_SCALER;
    if decayed != header.scaler_decay.is_some() || (decayed && header.scaler_count.is_none()) {
        return Err(decode(format!(
            "format {} with scaler_decay {:?} and a scaler {}: only format \
             {FORMAT_DECAYED_SCALER} has an exponentially weighted scaler, and it has a scaler",
            header.format,
            header.scaler_decay.map(Decay::get),
            if header.scaler_count.is_some() {
                "present"
            } else {
                "absent"
            },
        )));
    }
    let n_features = usize::try_from(header.n_features)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| decode("n_features is zero or too large".into()))?;
    let dimension = |value: Option<u64>| {
        value
            .map(usize::try_from)
            .transpose()
            .map_err(|_| decode("a dimension is too large".into()))
    };
    let dimensions = Dimensions {
        hidden: dimension(header.hidden)?,
        factors: dimension(header.factors)?,
    };
    // Exactly the kind's own dimensions, or the header was not written by this encoder.
    let kind =
        ModelKind::exactly(&header.kind, dimensions).map_err(|e| decode(format!("header: {e}")))?;
    let specs = kind
        .specs(n_features)
        .ok_or_else(|| decode("dimensions overflow".into()))?;
    // `specs` checked that 16 bytes per parameter value fit in usize.
    let n_params: usize = specs.iter().map(ParamSpec::len).sum();
    let scaler_bytes = match header.scaler_count {
        Some(_) => n_features.checked_mul(16),
        None => Some(0),
    };
    let adam_bytes = match header.optimizer {
        SavedOptimizer::Sgd => 0,
        SavedOptimizer::Adam { .. } => n_params * 16,
    };
    let expected = scaler_bytes
        .and_then(|s| s.checked_add(n_params * 4))
        .and_then(|s| s.checked_add(adam_bytes));
    if expected != Some(record.len()) || header.record_len != record.len() as u64 {
        return Err(decode(format!(
            "record is {} bytes, its header says {} and the model needs {} \
             (truncated, padded or mislabelled)",
            record.len(),
            header.record_len,
            expected.map_or_else(|| "more than can be addressed".into(), |n| n.to_string()),
        )));
    }
    let actual = sha256_hex(record);
    if actual != header.record_sha256 {
        return Err(decode(format!(
            "record checksum {actual} does not match header {}",
            header.record_sha256
        )));
    }

    let mut reader = Reader { rest: record };
    let scaler = match header.scaler_count {
        Some(count) => {
            let mean = reader.f64s(n_features)?;
            let m2 = reader.f64s(n_features)?;
            let scaler = StandardScaler::from_parts(count, mean, m2, header.scaler_decay);
            scaler.validate(n_features)?;
            Some(scaler)
        }
        None => None,
    };
    let params = specs
        .iter()
        .map(|spec| reader.f32s(spec.len()))
        .collect::<Result<Vec<_>, _>>()?;
    if params.iter().flatten().any(|p| !p.is_finite()) {
        return Err(decode("record holds non-finite parameters".into()));
    }
    let optim = match header.optimizer {
        SavedOptimizer::Sgd => OptimizerState::Sgd,
        SavedOptimizer::Adam { steps } => {
            let mut moments = || {
                specs
                    .iter()
                    .map(|spec| reader.f64s(spec.len()))
                    .collect::<Result<Vec<_>, _>>()
            };
            let m = moments()?;
            let v = moments()?;
            let finite = m.iter().chain(&v).flatten().all(|x| x.is_finite());
            if !finite || v.iter().flatten().any(|x| *x < 0.0) {
                return Err(decode(
                    "record holds non-finite or negative optimizer moments".into(),
                ));
            }
            OptimizerState::Adam { steps, m, v }
        }
    };
    Ok(Snapshot {
        kind,
        n_features,
        seed: header.seed,
        step: header.step,
        scaler,
        params,
        optim,
    })
}

/// Reads little-endian numbers off the front of a record.
struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, bytes: usize) -> Result<&[u8], ModelError> {
        let (head, rest) = self
            .rest
            .split_at_checked(bytes)
            .ok_or_else(|| ModelError::Decode("record ends early".into()))?;
        self.rest = rest;
        Ok(head)
    }

    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, ModelError> {
        let bytes = self.take(n.saturating_mul(4))?;
        Ok(bytes
            .as_chunks::<4>()
            .0
            .iter()
            .map(|b| f32::from_le_bytes(*b))
            .collect())
    }

    fn f64s(&mut self, n: usize) -> Result<Vec<f64>, ModelError> {
        let bytes = self.take(n.saturating_mul(8))?;
        Ok(bytes
            .as_chunks::<8>()
            .0
            .iter()
            .map(|b| f64::from_le_bytes(*b))
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::synthetic::linear_batch;
    use crate::{Hyper, ModelConfig, ModelScorer, Optimizer, Trainer};

    /// A small trained artifact of every kind, with SGD and with Adam, and its config.
    fn artifacts() -> Vec<(ModelConfig, Vec<u8>)> {
        let mut out = Vec::new();
        for kind in [
            ModelKind::Logistic,
            ModelKind::Mlp { hidden: 3 },
            ModelKind::FactorizationMachine { factors: 2 },
            ModelKind::Fourier { hidden: 4 },
        ] {
            for optimizer in [Optimizer::Sgd, Optimizer::adam()] {
                for scaler_decay in [None, Some(Decay::new(0.9).unwrap())] {
                    let config = ModelConfig {
                        kind,
                        hyper: Hyper {
                            optimizer,
                            rows_per_step: 0,
                            ..Hyper::default()
                        },
                        seed: 1,
                        scaler_decay,
                    };
                    let mut trainer = Trainer::new(&config, 2).unwrap();
                    let (rows, labels) = linear_batch(0, 8, 2);
                    trainer.train_batch(&rows, &labels).unwrap();
                    out.push((config, trainer.to_bytes().unwrap()));
                }
            }
        }
        out
    }

    fn assert_rejected(bytes: &[u8], config: &ModelConfig, what: &str) {
        match ModelScorer::from_bytes(bytes) {
            Err(ModelError::Decode(_)) => {}
            Ok(_) => panic!("{what}: decoded"),
            Err(other) => panic!("{what}: unexpected error {other:?}"),
        }
        assert!(
            matches!(
                Trainer::from_bytes(bytes, config),
                Err(ModelError::Decode(_))
            ),
            "{what}"
        );
    }

    /// Splits a well-formed artifact into its header JSON and record.
    fn parts(bytes: &[u8]) -> (Header, Vec<u8>) {
        let (header, record) = unframe(bytes).unwrap();
        (serde_json::from_slice(header).unwrap(), record.to_vec())
    }

    /// Frames a header and record with correct checksums, as a forger (or a bug) would.
    fn resign(header: &Header, record: &[u8], fix_record_fields: bool) -> Vec<u8> {
        let mut header = header.clone();
        if fix_record_fields {
            header.record_len = record.len() as u64;
            header.record_sha256 = sha256_hex(record);
        }
        frame(&serde_json::to_vec(&header).unwrap(), record).unwrap()
    }

    #[test]
    fn every_truncation_and_bit_flip_is_a_decode_error() {
        for (config, bytes) in artifacts() {
            ModelScorer::from_bytes(&bytes).unwrap();
            for cut in 0..bytes.len() {
                assert_rejected(
                    &bytes[..cut],
                    &config,
                    &format!("{:?} cut at {cut}", config.kind),
                );
            }
            let mut padded = bytes.clone();
            padded.push(0);
            assert_rejected(&padded, &config, "padded");
            for i in 0..bytes.len() {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << (i % 8);
                assert_rejected(&flipped, &config, &format!("{:?} flip at {i}", config.kind));
            }
        }
        for garbage in [&b""[..], b"FRESHETM", b"not a model at all", &[0xFF; 4096]] {
            assert_rejected(garbage, &ModelConfig::default(), "garbage");
        }
    }

    /// Damage behind valid checksums reaches the record parser itself: it must load a model or
    /// refuse it, never panic, never allocate beyond the input.
    #[test]
    fn resigned_damage_is_loaded_or_refused_never_a_panic() {
        let mut outcomes = (0usize, 0usize);
        for (config, bytes) in artifacts() {
            let (header, record) = parts(&bytes);
            assert_eq!(
                resign(&header, &record, false),
                bytes,
                "the forger is faithful"
            );
            for i in 0..record.len() {
                for mask in [0x01u8, 0x80, 0xFF] {
                    let mut r = record.clone();
                    r[i] ^= mask;
                    match ModelScorer::from_bytes(&resign(&header, &r, true)) {
                        Ok(scorer) => {
                            outcomes.0 += 1;
                            // Whatever loaded is still safe to score with.
                            let _ = scorer.score(&[0.5, -0.5]);
                        }
                        Err(ModelError::Decode(_)) => outcomes.1 += 1,
                        Err(other) => panic!("unexpected error {other:?}"),
                    }
                }
            }
            for cut in 0..record.len() {
                assert_rejected(
                    &resign(&header, &record[..cut], true),
                    &config,
                    "short record",
                );
            }

            let huge = u64::MAX / 2;
            let tampered: Vec<(&str, Header)> = vec![
                (
                    "n_features 0",
                    Header {
                        n_features: 0,
                        ..header.clone()
                    },
                ),
                (
                    "n_features huge",
                    Header {
                        n_features: huge,
                        ..header.clone()
                    },
                ),
                (
                    "n_features 3",
                    Header {
                        n_features: 3,
                        ..header.clone()
                    },
                ),
                (
                    "hidden huge",
                    Header {
                        hidden: Some(huge),
                        factors: Some(huge),
                        ..header.clone()
                    },
                ),
                (
                    "other kind",
                    Header {
                        kind: match header.kind.as_str() {
                            "logistic" => "mlp".into(),
                            _ => "logistic".into(),
                        },
                        hidden: Some(3),
                        ..header.clone()
                    },
                ),
                (
                    "optimizer flipped",
                    Header {
                        optimizer: match header.optimizer {
                            SavedOptimizer::Sgd => SavedOptimizer::Adam { steps: 1 },
                            SavedOptimizer::Adam { .. } => SavedOptimizer::Sgd,
                        },
                        ..header.clone()
                    },
                ),
                (
                    "no scaler",
                    Header {
                        scaler_count: None,
                        ..header.clone()
                    },
                ),
                (
                    "format 5",
                    Header {
                        format: 5,
                        ..header.clone()
                    },
                ),
                // The format and the scaler's decay must agree: a decayed scaler read as
                // Welford's (or the reverse) would scale with the wrong formula.
                (
                    "format and scaler decay disagree",
                    Header {
                        format: if header.scaler_decay.is_some() { 3 } else { 4 },
                        ..header.clone()
                    },
                ),
                (
                    "scaler decay flipped",
                    Header {
                        scaler_decay: match header.scaler_decay {
                            Some(_) => None,
                            None => Some(Decay::new(0.5).unwrap()),
                        },
                        ..header.clone()
                    },
                ),
            ];
            for (what, header) in tampered {
                assert_rejected(&resign(&header, &record, true), &config, what);
            }
        }
        eprintln!(
            "re-signed record damage: {} loaded, {} refused",
            outcomes.0, outcomes.1
        );
    }

    #[test]
    fn equal_state_gives_equal_bytes_and_the_header_names_the_kind() {
        for (config, bytes) in artifacts() {
            let again = {
                let mut trainer = Trainer::new(&config, 2).unwrap();
                let (rows, labels) = linear_batch(0, 8, 2);
                trainer.train_batch(&rows, &labels).unwrap();
                trainer.to_bytes().unwrap()
            };
            assert_eq!(again, bytes);
            let (header, _) = parts(&bytes);
            let format = if config.scaler_decay.is_some() { 4 } else { 3 };
            assert_eq!(
                (header.format, header.kind.as_str()),
                (format, config.kind.name())
            );
            assert_eq!(header.scaler_decay, config.scaler_decay);
            assert_eq!(header.step, 1);
            assert_eq!(header.scaler_count, Some(8));
            let text = String::from_utf8(unframe(&bytes).unwrap().0.to_vec()).unwrap();
            let name = config.kind.name();
            assert!(text.contains(&format!("\"kind\":\"{name}\"")), "{text}");
        }
    }
}
