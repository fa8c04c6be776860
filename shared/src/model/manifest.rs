//! The manifest stored beside each model version: identity, lineage, provenance and metrics.
//!
//! A model artifact is opaque bytes; the manifest is the JSON that says what those bytes are
//! (kind, feature schema, hyperparameters), where they came from (parent version, which stream
//! sequences were learned, the high-water mark of everything folded in), how good the model was
//! when written (prequential metrics), and how to check the bytes are intact (size and SHA-256,
//! see [`Manifest::verify`]). Readers should verify before loading.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ModelError;
use super::logistic::Hyper;
use crate::monitoring::{Monitoring, Watch};

/// Which model family an artifact holds; selects the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Logistic regression: [`LogisticTrainer`](super::LogisticTrainer) /
    /// [`Scorer`](super::Scorer), or [`Trainer`](super::Trainer).
    Logistic,
    /// A one-hidden-layer ReLU perceptron (`mlp.rs`).
    Mlp,
    /// A degree-2 factorization machine (`fm.rs`).
    FactorizationMachine,
}

impl std::str::FromStr for ModelKind {
    type Err = String;

    /// Reads a kind by its configuration name (`logistic`, `mlp`, `factorization_machine`).
    fn from_str(text: &str) -> Result<ModelKind, String> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
            format!("{text:?} is not a model kind: logistic, mlp or factorization_machine")
        })
    }
}

/// Names and order of the features a model expects; a model is only valid for the schema
/// (name and version) it was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSchema {
    /// Schema name, e.g. the featurize function that produces the vectors.
    pub name: String,
    /// Schema version; bumped whenever features are added, removed or reordered.
    pub version: u32,
    /// Feature names in vector order.
    pub features: Vec<String>,
    /// How drift watches each feature, in vector order (see [`crate::monitoring`]). Empty (and
    /// left out) when the schema declares no plan, as in manifests written before plans existed:
    /// every feature is then read as its value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitoring: Vec<Monitoring>,
}

impl FeatureSchema {
    /// Number of features, i.e. the length every input row must have.
    pub fn n_features(&self) -> usize {
        self.features.len()
    }

    /// How drift reads feature `index`: the declared plan's entry, else its value.
    pub fn watch(&self, index: usize) -> Watch {
        self.monitoring
            .get(index)
            .map_or(crate::monitoring::UNDECLARED, |m| m.watch)
    }
}

/// An inclusive range of stream sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceRange {
    /// First sequence included.
    pub first: u64,
    /// Last sequence included (inclusive).
    pub last: u64,
}

/// Training metrics at the time a version was written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainingMetrics {
    /// Examples learned by this version and all its ancestors.
    pub examples_total: u64,
    /// Examples in the window the two metrics below are computed over.
    pub window_examples: u64,
    /// Prequential (test-then-train) accuracy over the window, in [0, 1].
    pub prequential_accuracy: f64,
    /// Mean prequential log-loss (nats per example) over the window.
    pub log_loss: f64,
    /// Prequential ROC AUC over the window; absent while the window holds one class only.
    #[serde(default)]
    pub roc_auc: Option<f64>,
}

/// Everything recorded about one stored model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name (the lineage this version belongs to).
    pub model: String,
    /// Version number within the lineage.
    pub version: u64,
    /// The version this one continued training from, if any.
    pub parent: Option<u64>,
    /// Model family of the artifact.
    pub kind: ModelKind,
    /// Hyperparameters used to train this version.
    pub hyper: Hyper,
    /// The whole model configuration (kind, hyperparameters, width, factors, seed); absent in
    /// manifests written before model kinds could be chosen (those are logistic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<super::ModelConfig>,
    /// Feature schema the model expects.
    pub schema: FeatureSchema,
    /// Lower-case hex SHA-256 of the artifact bytes.
    pub sha256: String,
    /// Length of the artifact in bytes.
    pub size_bytes: u64,
    /// When this version was written.
    pub created_at: DateTime<Utc>,
    /// Update counter `t` stored in the artifact (it drives the learning-rate schedule).
    pub step: u64,
    /// Stream sequences of the examples this version learned (beyond its parent); `None` if it
    /// learned nothing new (e.g. a re-publish).
    pub learned: Option<SequenceRange>,
    /// Highest example stream sequence included in this version or any ancestor; training
    /// resumes after it.
    pub high_water_mark: u64,
    /// Prequential metrics when the version was written.
    pub metrics: TrainingMetrics,
    /// The first version of the unbroken chain of training steps this version belongs to; absent
    /// when this version starts one (a new model, a candidate's first version, or a manifest
    /// written before chains were recorded). Drift keeps watching one chain's errors across its
    /// steps, and a move of the live pointer to another chain is a jump the gate judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<u64>,
    /// The W3C trace ids of the traced examples this version learned (beyond its parent), as 32
    /// hex digits: at most the first and the last 16 distinct ones of its learned range, so a
    /// version can be followed back to the producers' traces. Empty, and left out, when none was
    /// traced (and in manifests written before traces were recorded). Kept as plain strings: a
    /// manifest stays readable whatever another writer put here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<String>,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Manifest {
    /// The first version of this version's chain of training steps.
    pub fn lineage_root(&self) -> u64 {
        self.lineage.unwrap_or(self.version)
    }

    /// Checks `bytes` have the recorded size and SHA-256.
    ///
    /// Size is checked first (cheap, and a clearer message for truncation); the hash comparison
    /// ignores hex case so a manifest written by another tool in upper case still verifies.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), ModelError> {
        let size = bytes.len() as u64;
        if size != self.size_bytes {
            return Err(ModelError::ChecksumMismatch {
                expected: format!("size:{}", self.size_bytes),
                actual: format!("size:{size}"),
            });
        }
        let actual = sha256_hex(bytes);
        if !actual.eq_ignore_ascii_case(&self.sha256) {
            return Err(ModelError::ChecksumMismatch {
                expected: format!("sha256:{}", self.sha256),
                actual: format!("sha256:{actual}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn manifest(bytes: &[u8]) -> Manifest {
        Manifest {
            model: "churn".into(),
            version: 7,
            parent: Some(6),
            kind: ModelKind::Logistic,
            hyper: Hyper::default(),
            config: None,
            schema: FeatureSchema {
                name: "churn-features".into(),
                version: 2,
                features: vec!["a".into(), "b".into(), "c".into()],
                monitoring: Vec::new(),
            },
            sha256: sha256_hex(bytes),
            size_bytes: bytes.len() as u64,
            created_at: DateTime::parse_from_rfc3339("2025-01-02T03:04:05.123Z")
                .unwrap()
                .with_timezone(&Utc),
            step: 120,
            learned: Some(SequenceRange {
                first: 1001,
                last: 2000,
            }),
            high_water_mark: 2000,
            lineage: None,
            traces: Vec::new(),
            metrics: TrainingMetrics {
                examples_total: 7680,
                window_examples: 640,
                prequential_accuracy: 0.93,
                log_loss: 0.21,
                roc_auc: None,
            },
        }
    }

    #[test]
    fn json_round_trip() {
        let m = manifest(b"model bytes");
        let json = serde_json::to_string_pretty(&m).unwrap();
        assert!(json.contains("\"kind\": \"logistic\""), "{json}");
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        assert_eq!(m.schema.n_features(), 3);

        let none = Manifest {
            parent: None,
            learned: None,
            ..m
        };
        let json = serde_json::to_string(&none).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), none);
    }

    #[test]
    fn traces_are_optional_and_left_out_when_empty() {
        let m = manifest(b"model bytes");
        let json = serde_json::to_string(&m).unwrap();
        assert!(!json.contains("traces"), "{json}");
        let traced = Manifest {
            traces: vec!["4bf92f3577b34da6a3ce929d0e0e4736".into()],
            ..m.clone()
        };
        let json = serde_json::to_string(&traced).unwrap();
        assert!(
            json.contains(r#""traces":["4bf92f3577b34da6a3ce929d0e0e4736"]"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), traced);
        // A manifest written before traces were recorded still reads, and verifies its bytes.
        let mut old: serde_json::Value = serde_json::to_value(&m).unwrap();
        old.as_object_mut().unwrap().remove("traces");
        let old: Manifest = serde_json::from_value(old).unwrap();
        assert!(old.traces.is_empty());
        old.verify(b"model bytes").unwrap();
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verify_detects_flipped_byte_and_size() {
        let bytes = b"some model artifact bytes".to_vec();
        let m = manifest(&bytes);
        m.verify(&bytes).unwrap();

        let mut flipped = bytes.clone();
        flipped[3] ^= 0x01;
        match m.verify(&flipped) {
            Err(ModelError::ChecksumMismatch { expected, actual }) => {
                assert_eq!(expected, format!("sha256:{}", m.sha256));
                assert_eq!(actual, format!("sha256:{}", sha256_hex(&flipped)));
            }
            other => panic!("expected checksum mismatch, got {other:?}"),
        }
        assert!(matches!(
            m.verify(&bytes[..bytes.len() - 1]),
            Err(ModelError::ChecksumMismatch { .. })
        ));
    }
}
