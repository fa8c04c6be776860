//! The training example: what featurize publishes on `<prefix>.examples.<model>` and train learns
//! from. Its id, derived from the source event's id, is the `Nats-Msg-Id`, so a featurize replica
//! that republishes after a crash is de-duplicated by JetStream. Its feature vector follows a
//! [`FeatureSchema`], which a model's manifest records too.
//!
//! With delayed feedback an example also says how its label came about ([`Feedback`]): final,
//! a fake negative sent before the label was known, or the correction of one (which names it in
//! `corrects`); a fake negative also says from when its label is final (`final_at`: no
//! correction follows it after that event time), so drift can judge the view's error once its
//! label is. These fields are left out when the label is final, so such a record reads as it
//! always did; a reader from before them refuses a record that has them, so train and drift must
//! be upgraded before featurize.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{RejectReason, Rejection};
pub use crate::events::Feedback;
use crate::events::{MAX_FEATURES, check_feedback, check_final_at, check_numbers};
use crate::ids::ModelName;
use crate::monitoring::{Monitoring, Watch};

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

/// One labelled feature vector for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleRecord {
    /// Unique and deterministic: `ex-<source event id>`.
    pub id: String,
    pub model: ModelName,
    /// The feature schema the vector follows (name and version), or `None` for examples that
    /// arrived already featurized as `example` events.
    pub schema: Option<(String, u32)>,
    pub features: Vec<f32>,
    /// 0 or 1.
    pub label: f32,
    /// The CloudEvent id this example came from.
    pub source_event: String,
    /// When the action whose features the example carries happened (for a labelled view, the
    /// view, whatever decided its label).
    pub event_time: Option<DateTime<Utc>>,
    /// How the label relates to delayed feedback; `final` (and left out) for a final label.
    #[serde(default, skip_serializing_if = "Feedback::is_final")]
    pub feedback: Feedback,
    /// For a correction: the id of the fake negative it corrects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrects: Option<String>,
    /// For a fake negative: the event time from which its label is final, a correction no
    /// longer following it (see [`crate::events::ExampleData::final_at`]). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_at: Option<DateTime<Utc>>,
}

/// [`ExampleRecord`] as read from the wire, before its features are checked and narrowed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WideExample {
    id: String,
    model: ModelName,
    schema: Option<(String, u32)>,
    features: Vec<f64>,
    label: f32,
    source_event: String,
    event_time: Option<DateTime<Utc>>,
    #[serde(default)]
    feedback: Feedback,
    #[serde(default)]
    corrects: Option<String>,
    #[serde(default)]
    final_at: Option<DateTime<Utc>>,
}

impl ExampleRecord {
    pub fn id_for(source_event: &str) -> String {
        format!("ex-{source_event}")
    }

    /// The record of an `example` event, whose features were computed by the producer: the
    /// same whether featurize takes it from EVENTS or a function takes it by push.
    pub fn from_event(
        event_id: &str,
        data: &crate::events::ExampleData,
        at: chrono::DateTime<chrono::Utc>,
    ) -> ExampleRecord {
        ExampleRecord {
            id: ExampleRecord::id_for(event_id),
            model: data.model.clone(),
            schema: None,
            features: data.features.iter().map(|&x| x as f32).collect(),
            label: data.label as f32,
            source_event: event_id.to_string(),
            event_time: Some(at),
            feedback: data.feedback,
            corrects: data.corrects.clone(),
            final_at: data.final_at,
        }
    }

    /// Decodes and checks an example so a model never sees a malformed or non-finite one.
    ///
    /// Features are read as `f64` and range-checked before they become `f32`, so a value too
    /// large for `f32` (1e39) is refused as `out_of_range` rather than read as infinity.
    pub fn decode(bytes: &[u8]) -> Result<ExampleRecord, Rejection> {
        let wide: WideExample = serde_json::from_slice(bytes)
            .map_err(|e| Rejection::new(RejectReason::InvalidData, "$", e.to_string()))?;
        check_numbers("features", &wide.features)?;
        let record = ExampleRecord {
            id: wide.id,
            model: wide.model,
            schema: wide.schema,
            // In range (|x| ≤ 1e12) and finite, so the narrowing is finite too.
            features: wide.features.iter().map(|&x| x as f32).collect(),
            label: wide.label,
            source_event: wide.source_event,
            event_time: wide.event_time,
            feedback: wide.feedback,
            corrects: wide.corrects,
            final_at: wide.final_at,
        };
        if record.features.is_empty() || record.features.len() > MAX_FEATURES {
            return Err(Rejection::new(
                RejectReason::InvalidData,
                "features",
                format!(
                    "has {} values; 1 to {MAX_FEATURES} are accepted",
                    record.features.len()
                ),
            ));
        }
        if record.label != 0.0 && record.label != 1.0 {
            return Err(Rejection::new(
                RejectReason::InvalidData,
                "label",
                format!("{} is not 0 or 1", record.label),
            ));
        }
        check_feedback(
            "",
            record.feedback,
            record.corrects.as_deref(),
            f64::from(record.label),
        )?;
        check_final_at("", record.feedback, record.final_at.is_some())?;
        Ok(record)
    }

    /// Whether the example follows `schema`: as many features, and the same schema name and
    /// version when the example names one (an `example` event's record names none).
    pub fn follows(&self, schema: &FeatureSchema) -> bool {
        self.features.len() == schema.n_features()
            && self
                .schema
                .as_ref()
                .is_none_or(|(name, version)| *name == schema.name && *version == schema.version)
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an example is plain data and always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_what_a_model_would_see() {
        let good = ExampleRecord {
            id: ExampleRecord::id_for("e1"),
            model: ModelName::parse("m").unwrap(),
            schema: None,
            features: vec![1.0, 2.0],
            label: 1.0,
            source_event: "e1".into(),
            event_time: None,
            feedback: Feedback::Final,
            corrects: None,
            final_at: None,
        };
        assert_eq!(ExampleRecord::decode(&good.to_json_bytes()).unwrap(), good);
        // A final example is written as before delayed feedback; a correction names its fake
        // negative, and a record that says otherwise is refused.
        assert!(
            !String::from_utf8(good.to_json_bytes())
                .unwrap()
                .contains("feedback")
        );
        let correction = ExampleRecord {
            id: ExampleRecord::id_for("p1"),
            feedback: Feedback::Correction,
            corrects: Some(ExampleRecord::id_for("e1")),
            ..good.clone()
        };
        assert_eq!(
            ExampleRecord::decode(&correction.to_json_bytes()).unwrap(),
            correction
        );
        for (bad, field) in [
            (
                ExampleRecord {
                    corrects: None,
                    ..correction.clone()
                },
                "corrects",
            ),
            (
                ExampleRecord {
                    label: 0.0,
                    ..correction.clone()
                },
                "label",
            ),
            (
                ExampleRecord {
                    feedback: Feedback::FakeNegative,
                    corrects: None,
                    ..correction.clone()
                },
                "label",
            ),
            (
                ExampleRecord {
                    feedback: Feedback::Final,
                    ..correction.clone()
                },
                "corrects",
            ),
            (
                ExampleRecord {
                    final_at: Some(DateTime::<Utc>::UNIX_EPOCH),
                    ..correction.clone()
                },
                "final_at",
            ),
        ] {
            assert_eq!(
                ExampleRecord::decode(&bad.to_json_bytes())
                    .unwrap_err()
                    .field,
                field,
                "{bad:?}"
            );
        }
        let bad_label = ExampleRecord {
            label: 0.3,
            ..good.clone()
        };
        assert_eq!(
            ExampleRecord::decode(&bad_label.to_json_bytes())
                .unwrap_err()
                .field,
            "label"
        );
        let huge = ExampleRecord {
            features: vec![1.0, 1e30],
            ..good.clone()
        };
        assert_eq!(
            ExampleRecord::decode(&huge.to_json_bytes())
                .unwrap_err()
                .reason,
            RejectReason::OutOfRange
        );
        let beyond_f32 = br#"{"id":"ex-e1","model":"m","schema":null,"features":[1e39,0],"label":1,"source_event":"e1","event_time":null}"#;
        let refused = ExampleRecord::decode(beyond_f32).unwrap_err();
        assert_eq!(
            (refused.reason, refused.field.as_str()),
            (RejectReason::OutOfRange, "features[0]")
        );
        let empty = ExampleRecord {
            features: vec![],
            ..good
        };
        assert_eq!(
            ExampleRecord::decode(&empty.to_json_bytes())
                .unwrap_err()
                .field,
            "features"
        );
        assert_eq!(
            ExampleRecord::decode(b"{").unwrap_err().reason,
            RejectReason::InvalidData
        );
    }
}
