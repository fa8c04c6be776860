//! The manifest stored beside each model version: identity, lineage, provenance and metrics.
//!
//! A model artifact is opaque bytes; the manifest is the JSON that says what those bytes are
//! (kind, feature schema, hyperparameters), where they came from (parent version, which stream
//! sequences were learned, the high-water mark of everything folded in), how good the model was
//! when written (prequential metrics), and how to check the bytes are intact (size and SHA-256,
//! see [`Manifest::verify`]). Readers should verify before loading.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::artifact::sha256_hex;
use super::config::ModelConfig;
use super::error::ModelError;
use freshet::examples::FeatureSchema;

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
    /// Share of positives among the window's examples, a correction (delayed feedback)
    /// counted as turning its fake negative positive, not as an example of its own: what the
    /// model is taught the conversion rate is. Absent in manifests from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_share: Option<f64>,
    /// Mean prequential probability over the same examples: beside the observed conversion
    /// rate, how well calibrated the model is. Absent like `positive_share`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_prediction: Option<f64>,
}

impl TrainingMetrics {
    /// The metrics of a model that scores at chance (accuracy ½, log loss ln 2) after
    /// `examples_total` examples, `window_examples` of them in the window: what a version with
    /// nothing measured yet (a fixture, a stand-in) records.
    pub fn at_chance(examples_total: u64, window_examples: u64) -> TrainingMetrics {
        TrainingMetrics {
            examples_total,
            window_examples,
            prequential_accuracy: 0.5,
            log_loss: std::f64::consts::LN_2,
            roc_auc: None,
            positive_share: None,
            mean_prediction: None,
        }
    }
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
    /// The configuration this version was trained with: its kind and dimensions,
    /// hyperparameters, seed and scaler. Written as `kind` and `hyper` (which every manifest
    /// has) beside `config` (absent in manifests written before kinds could be chosen, which
    /// are logistic regressions).
    #[serde(flatten, with = "recorded_config")]
    pub config: ModelConfig,
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

/// How a manifest records its [`ModelConfig`]: the kind's name and the hyperparameters as the
/// top-level `kind` and `hyper` that every manifest has had (and readers built before
/// configurations require), and the whole configuration as `config`.
mod recorded_config {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::config::ModelConfig;
    use crate::hyper::Hyper;
    use crate::kind::ModelKind;

    #[derive(Serialize)]
    struct Written<'a> {
        kind: &'static str,
        hyper: &'a Hyper,
        config: &'a ModelConfig,
    }

    #[derive(Deserialize)]
    struct Read {
        kind: String,
        hyper: Hyper,
        #[serde(default)]
        config: Option<ModelConfig>,
    }

    pub fn serialize<S: Serializer>(config: &ModelConfig, out: S) -> Result<S::Ok, S::Error> {
        Written {
            kind: config.kind.name(),
            hyper: &config.hyper,
            config,
        }
        .serialize(out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<ModelConfig, D::Error> {
        let Read {
            kind,
            hyper,
            config,
        } = Read::deserialize(input)?;
        match config {
            Some(config) if config.kind.name() == kind => Ok(config),
            Some(config) => Err(D::Error::custom(format!(
                "the manifest names the kind {kind:?}, its configuration {:?}",
                config.kind.name()
            ))),
            // Written before kinds could be chosen: a logistic regression, default otherwise.
            None if kind == ModelKind::Logistic.name() => Ok(ModelConfig {
                hyper,
                ..ModelConfig::default()
            }),
            None => Err(D::Error::custom(format!(
                "a {kind} manifest without its configuration"
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::{Hyper, ModelKind};

    fn manifest(bytes: &[u8]) -> Manifest {
        Manifest {
            model: "churn".into(),
            version: 7,
            parent: Some(6),
            config: ModelConfig::default(),
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
                positive_share: None,
                mean_prediction: None,
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

    /// Manifests as this code wrote them before the kind and its dimensions were one value: one
    /// from before configurations (logistic, `kind` and `hyper` only), and one whose
    /// configuration carries every dimension whatever its kind.
    #[test]
    fn manifests_written_before_still_read() {
        let old = |config: &str| {
            format!(
                r#"{{"model":"churn","version":7,"parent":6,"kind":"{kind}",
                "hyper":{{"learning_rate":0.5,"decay":0.01,"l2":0.0001,"optimizer":{{"type":"sgd"}}}},
                {config}
                "schema":{{"name":"churn-features","version":2,"features":["a","b","c"]}},
                "sha256":"{sha}","size_bytes":11,"created_at":"2025-01-02T03:04:05.123Z",
                "step":120,"learned":{{"first":1001,"last":2000}},"high_water_mark":2000,
                "metrics":{{"examples_total":7680,"window_examples":640,
                "prequential_accuracy":0.93,"log_loss":0.21,"roc_auc":null}}}}"#,
                kind = if config.is_empty() { "logistic" } else { "mlp" },
                sha = sha256_hex(b"model bytes"),
            )
        };
        // What these manifests' versions were trained with: every field written but the step
        // size, which was always the whole batch.
        let hyper = Hyper {
            learning_rate: 0.5,
            decay: 0.01,
            l2: 1e-4,
            optimizer: crate::Optimizer::Sgd,
            rows_per_step: 0,
        };

        let before_kinds: Manifest = serde_json::from_str(&old("")).unwrap();
        assert_eq!(
            before_kinds.config,
            ModelConfig {
                hyper,
                ..ModelConfig::default()
            }
        );
        assert_eq!(
            before_kinds,
            Manifest {
                config: before_kinds.config,
                ..manifest(b"model bytes")
            }
        );

        let mlp: Manifest = serde_json::from_str(&old(
            r#""config":{"kind":"mlp","hyper":{"learning_rate":0.5,"decay":0.01,"l2":0.0001,
            "optimizer":{"type":"sgd"}},"hidden":32,"factors":8,"seed":4},"#,
        ))
        .unwrap();
        assert_eq!(
            mlp.config,
            ModelConfig {
                kind: ModelKind::Mlp { hidden: 32 },
                hyper,
                seed: 4,
                scaler_decay: None,
            }
        );
        // Written again, `kind` and `hyper` stay where older readers look for them.
        let json = serde_json::to_value(&mlp).unwrap();
        assert_eq!(json["kind"], "mlp");
        assert_eq!(json["hyper"]["learning_rate"], 0.5);
        assert_eq!(json["config"]["hidden"], 32);
        assert_eq!(serde_json::from_value::<Manifest>(json).unwrap(), mlp);

        // A kind that disagrees with its configuration, or a kind other than logistic with no
        // configuration, was never written: it is refused rather than guessed at.
        let mut disagreeing = serde_json::to_value(&mlp).unwrap();
        disagreeing["kind"] = "logistic".into();
        assert!(serde_json::from_value::<Manifest>(disagreeing).is_err());
        let mut bare = serde_json::to_value(&mlp).unwrap();
        bare.as_object_mut().unwrap().remove("config");
        assert!(serde_json::from_value::<Manifest>(bare).is_err());
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
