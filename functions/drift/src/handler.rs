//! drift's CONTROL events and the glue between an example and the bank, all pure: which examples
//! the live model may score, what the bank reads of an example, and what a [`Finding`] becomes on
//! `<prefix>.control.<model>.drift`, with the deterministic `Nats-Msg-Id` that lets JetStream drop
//! the copy a redelivered batch would publish again.
//!
//! The event names the reaction configured for the model. drift only requests it: acting on it
//! (raising the learning rate, training a candidate) belongs to train and the promotion gate.

use chrono::{DateTime, Utc};
use freshet::control::Reaction;
use freshet::examples::ExampleRecord;
use freshet::ids::ModelName;
use freshet::model::FeatureSchema;
use serde::{Deserialize, Serialize};

use crate::bank::{DetectorKind, Finding, Observation, Scored, Target, Window};
use freshet_drift::detectors::Level;

/// The body of a drift event on `<prefix>.control.<model>.drift`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftEvent {
    /// Always `"drift"`.
    pub kind: String,
    pub model: ModelName,
    pub detector: DetectorKind,
    /// The feature's name, or `"error"` for the live model's prediction error.
    pub target: String,
    /// The feature's index in the example's vector; `None` for the error.
    pub feature: Option<usize>,
    pub level: Level,
    /// The detector's statistic when it signalled.
    pub statistic: f64,
    /// The examples (stream sequences) the detector read since it last started afresh.
    pub window: Window,
    /// Stream sequence of the example that made the detector signal.
    pub sequence: u64,
    /// The live version when the example was read (whose errors an error detector watches).
    pub live_version: Option<u64>,
    /// The reaction configured for the model, requested here and carried out elsewhere.
    pub reaction: Reaction,
    /// The signalling example's event time, or when EXAMPLES stored it if it carries none.
    pub event_time: DateTime<Utc>,
}

/// What every event of one batch shares.
#[derive(Debug, Clone, Copy)]
pub struct EventContext<'a> {
    pub model: &'a ModelName,
    pub reaction: Reaction,
    pub live_version: Option<u64>,
}

/// The event for `finding`, whose example is `example` (stored at `published`), with the feature
/// names of `live` when the example follows the live model's schema.
pub fn event(
    context: EventContext<'_>,
    finding: &Finding,
    example: &ExampleRecord,
    published: DateTime<Utc>,
    live: Option<&FeatureSchema>,
) -> DriftEvent {
    let (target, feature) = match finding.target {
        Target::Feature(i) => (feature_name(i, example, live), Some(i)),
        Target::Error => ("error".to_string(), None),
    };
    DriftEvent {
        kind: "drift".to_string(),
        model: context.model.clone(),
        detector: finding.detector,
        target,
        feature,
        level: finding.level,
        statistic: finding.statistic,
        window: finding.window,
        sequence: finding.sequence,
        live_version: context.live_version,
        reaction: context.reaction,
        event_time: example.event_time.unwrap_or(published),
    }
}

/// `drift-<model>-<detector>-<target>-<sequence>`, the target being `f<index>` or `error`: the
/// same finding always gets the same id, and no two findings share one (a detector signals at
/// most once per example and target).
pub fn message_id(model: &ModelName, finding: &Finding) -> String {
    let target = match finding.target {
        Target::Feature(i) => format!("f{i}"),
        Target::Error => "error".to_string(),
    };
    format!(
        "drift-{model}-{}-{target}-{}",
        finding.detector, finding.sequence
    )
}

/// The name of feature `index` of `example`: the live schema's when the example follows it, the
/// bookstore schema's for bookstore examples, else `f<index>` as train names unnamed features.
pub fn feature_name(index: usize, example: &ExampleRecord, live: Option<&FeatureSchema>) -> String {
    let bookstore = freshet::features::schema();
    let named = live
        .filter(|schema| follows(example, schema))
        .or(follows(example, &bookstore).then_some(&bookstore))
        .and_then(|schema| schema.features.get(index));
    match named {
        Some(name) => name.clone(),
        None => format!("f{index}"),
    }
}

/// Whether `example` follows `schema`, as train checks it: the same width, and the same name and
/// version when the example names a schema.
pub fn follows(example: &ExampleRecord, schema: &FeatureSchema) -> bool {
    example.features.len() == schema.n_features()
        && example
            .schema
            .as_ref()
            .is_none_or(|(name, version)| *name == schema.name && *version == schema.version)
}

/// What the bank reads of the example stored at `sequence`.
pub fn observation(
    sequence: u64,
    example: &ExampleRecord,
    scored: Option<Scored>,
) -> Observation<'_> {
    Observation {
        sequence,
        schema: example.schema.as_ref(),
        features: &example.features,
        label: example.label,
        scored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelName {
        ModelName::parse("bookstore").unwrap()
    }

    fn example(schema: Option<(&str, u32)>, width: usize) -> ExampleRecord {
        ExampleRecord {
            id: "ex-e1".into(),
            model: model(),
            schema: schema.map(|(n, v)| (n.to_string(), v)),
            features: vec![0.5; width],
            label: 1.0,
            source_event: "e1".into(),
            event_time: None,
        }
    }

    fn finding(target: Target) -> Finding {
        Finding {
            sequence: 812,
            detector: DetectorKind::Psi,
            target,
            level: Level::Drift,
            statistic: 0.31,
            window: Window {
                first: 12,
                last: 812,
                count: 400,
            },
        }
    }

    #[test]
    fn an_event_carries_everything_a_reader_needs() {
        let published = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let context = EventContext {
            model: &model(),
            reaction: Reaction::TrainCandidate,
            live_version: Some(7),
        };
        let ex = example(
            Some(("bookstore", freshet::features::SCHEMA_VERSION)),
            freshet::features::FEATURE_NAMES.len(),
        );
        let event = event(context, &finding(Target::Feature(5)), &ex, published, None);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "drift", "model": "bookstore", "detector": "psi",
                "target": freshet::features::FEATURE_NAMES[5], "feature": 5, "level": "drift", "statistic": 0.31,
                "window": {"first": 12, "last": 812, "count": 400}, "sequence": 812,
                "live_version": 7, "reaction": "train_candidate",
                "event_time": "2023-11-14T22:13:20Z",
            })
        );
        let back: DriftEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);

        let timed = ExampleRecord {
            event_time: Some(DateTime::from_timestamp(1_600_000_000, 0).unwrap()),
            ..ex
        };
        let error = super::event(context, &finding(Target::Error), &timed, published, None);
        assert_eq!((error.target.as_str(), error.feature), ("error", None));
        assert_eq!(error.event_time, timed.event_time.unwrap());
    }

    #[test]
    fn message_ids_are_stable_and_distinct() {
        let m = model();
        assert_eq!(
            message_id(&m, &finding(Target::Feature(3))),
            "drift-bookstore-psi-f3-812"
        );
        assert_eq!(
            message_id(&m, &finding(Target::Error)),
            "drift-bookstore-psi-error-812"
        );
        let other = Finding {
            detector: DetectorKind::PageHinkley,
            ..finding(Target::Feature(3))
        };
        assert_eq!(
            message_id(&m, &other),
            "drift-bookstore-page_hinkley-f3-812"
        );
    }

    #[test]
    fn features_are_named_from_the_schema_they_follow() {
        let live = FeatureSchema {
            name: "custom".into(),
            version: 3,
            features: vec!["age".into(), "income".into()],
            monitoring: Vec::new(),
        };
        let custom = example(Some(("custom", 3)), 2);
        assert_eq!(feature_name(1, &custom, Some(&live)), "income");
        assert_eq!(feature_name(1, &custom, None), "f1");
        let raw = example(None, 2);
        assert_eq!(feature_name(0, &raw, Some(&live)), "age");
        let older = example(Some(("custom", 2)), 2);
        assert!(!follows(&older, &live));
        assert_eq!(feature_name(0, &older, Some(&live)), "f0");
        let wider = example(None, 3);
        assert!(!follows(&wider, &live));
        assert_eq!(feature_name(2, &wider, Some(&live)), "f2");
        let bookstore = example(
            Some(("bookstore", freshet::features::SCHEMA_VERSION)),
            freshet::features::FEATURE_NAMES.len(),
        );
        assert_eq!(
            feature_name(0, &bookstore, Some(&live)),
            freshet::features::FEATURE_NAMES[0]
        );
    }

    #[test]
    fn reactions_parse_by_name() {
        for reaction in [Reaction::Alert, Reaction::RaiseLr, Reaction::TrainCandidate] {
            assert_eq!(reaction.as_str().parse::<Reaction>(), Ok(reaction));
            assert_eq!(
                serde_json::to_value(reaction).unwrap(),
                serde_json::Value::from(reaction.as_str())
            );
        }
        assert!("retrain".parse::<Reaction>().is_err());
    }
}
