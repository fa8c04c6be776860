//! drift's CONTROL records and the glue between an example and the bank, all pure: which examples
//! the live model may score, what the bank reads of an example (its features and the schema's
//! monitoring plan for them), and what an episode's transition becomes on
//! `<prefix>.control.<model>.drift`, with the deterministic `Nats-Msg-Id` that lets JetStream drop
//! the copy a redelivered batch would publish again.
//!
//! The record that confirms an episode names the reaction requested for the model. drift only
//! requests it: acting on it (raising the learning rate, training a candidate) belongs to train
//! and the promotion gate.

use chrono::{DateTime, Utc};
use freshet::control::{
    DRIFT_FORMAT, DriftEpisodeRecord, DriftSignal, EpisodeState, KIND_DRIFT, SequenceSpan,
};
use freshet::examples::{ExampleRecord, FeatureSchema, Feedback};
use freshet::ids::ModelName;
use freshet::monitoring::Watch;

use crate::bank::{Finding, Labelling, Observation, Scored, Target};
use freshet_drift::episodes::{Episode, ReactionDecision, Transition};

/// What every record of one batch shares.
#[derive(Debug, Clone, Copy)]
pub struct RecordContext<'a> {
    pub model: &'a ModelName,
    pub live_version: Option<u64>,
    /// The live version's schema, which names the features of the examples that follow it.
    pub live: Option<&'a FeatureSchema>,
}

/// What a detector signal watched, for the logs: `error`, or the feature by its index (its name
/// needs the schema, which the record of an episode resolves).
pub fn monitored(target: Target) -> String {
    match target {
        Target::Feature(index) => format!("feature {index}"),
        Target::Error => "error".to_string(),
    }
}

/// Logs an episode's transition. What the signal watched (a feature's name, or `error`) is the
/// field `monitored`: `target` is the logger's own (the module that logged), and a JSON log with
/// two `target` keys keeps one. Optional values are logged as values or left out, never as
/// `Some(..)`.
pub fn log_transition(record: &DriftEpisodeRecord) {
    let monitored = record.target.as_str();
    let withheld = record.reaction_withheld.as_deref();
    match record.state {
        EpisodeState::Drift => {
            tracing::warn!(model = %record.model, episode = record.episode, detector = %record.detector, monitored,
                statistic = record.statistic, threshold = record.threshold, sequence = record.sequence,
                reaction = %record.reaction, withheld, "drift confirmed")
        }
        EpisodeState::Warning => {
            tracing::info!(model = %record.model, episode = record.episode, detector = %record.detector, monitored,
                statistic = record.statistic, threshold = record.threshold, sequence = record.sequence, "drift warning: episode opened")
        }
        EpisodeState::Resolved => {
            tracing::info!(model = %record.model, episode = record.episode, opened = record.opened, confirmed = record.confirmed,
                signals = record.signals.len(), sequence = record.sequence, "drift episode resolved")
        }
    }
}

/// The record of `transition`, which happened at `example` (stored at `published`).
pub fn record(
    context: RecordContext<'_>,
    transition: &Transition,
    example: &ExampleRecord,
    published: DateTime<Utc>,
) -> DriftEpisodeRecord {
    let episode = &transition.episode;
    let headline = signal(episode.headline(), example, context.live);
    let (reaction, reaction_withheld) = match (&episode.reaction, episode.state) {
        // Only the confirmation asks; the resolution repeats nothing.
        (Some(decision), EpisodeState::Drift) => (
            decision.requested(),
            match decision {
                ReactionDecision::Withheld { reason, .. } => Some(reason.clone()),
                _ => None,
            },
        ),
        _ => (freshet::control::Reaction::Alert, None),
    };
    DriftEpisodeRecord {
        kind: KIND_DRIFT.to_string(),
        format: DRIFT_FORMAT,
        model: context.model.clone(),
        episode: episode.id,
        state: episode.state,
        level: episode.state.as_str().to_string(),
        detector: headline.detector,
        target: headline.target,
        feature: headline.feature,
        statistic: headline.statistic,
        threshold: headline.threshold,
        window: headline.window,
        sequence: transition_sequence(episode),
        span: SequenceSpan {
            first: episode.opened,
            last: episode.resolved.unwrap_or(episode.last_active),
            count: None,
        },
        opened: episode.opened,
        confirmed: episode.confirmed,
        resolved: episode.resolved,
        signals: episode
            .signals
            .iter()
            .map(|f| signal(f, example, context.live))
            .collect(),
        live_version: context.live_version,
        reaction,
        reaction_withheld,
        event_time: example.event_time.unwrap_or(published),
    }
}

/// The example at which the episode entered its current state.
fn transition_sequence(episode: &Episode) -> u64 {
    match episode.state {
        EpisodeState::Warning => episode.opened,
        EpisodeState::Drift => episode.confirmed.unwrap_or(episode.opened),
        EpisodeState::Resolved => episode.resolved.unwrap_or(episode.last_active),
    }
}

fn signal(finding: &Finding, example: &ExampleRecord, live: Option<&FeatureSchema>) -> DriftSignal {
    let (target, feature) = match finding.target {
        Target::Feature(i) => (feature_name(i, example, live), Some(i)),
        Target::Error => ("error".to_string(), None),
    };
    DriftSignal {
        detector: finding.detector.as_str().to_string(),
        target,
        feature,
        level: match finding.level {
            freshet_drift::detectors::Level::Warning => "warning",
            _ => "drift",
        }
        .to_string(),
        statistic: finding.statistic,
        threshold: finding.threshold,
        window: SequenceSpan {
            first: finding.window.first,
            last: finding.window.last,
            count: Some(finding.window.count),
        },
        reference_examples: finding.reference,
        recent_examples: finding.recent,
        sequence: finding.sequence,
    }
}

/// `drift-<model>-episode-<id>-<state>`: each transition of an episode happens once, so the same
/// transition always gets the same id and no two share one.
pub fn message_id(model: &ModelName, transition: &Transition) -> String {
    format!(
        "drift-{model}-episode-{}-{}",
        transition.episode.id,
        transition.state()
    )
}

/// The bookstore schema, built once.
static BOOKSTORE: std::sync::LazyLock<FeatureSchema> =
    std::sync::LazyLock::new(freshet_features::bookstore::schema);

/// The schema that names and plans the features of `example`: the live schema's when the
/// example follows it, the bookstore schema's for bookstore examples, else none.
fn schema_of<'a>(
    example: &ExampleRecord,
    live: Option<&'a FeatureSchema>,
) -> Option<&'a FeatureSchema> {
    match live.filter(|schema| example.follows(schema)) {
        Some(live) => Some(live),
        None => example.follows(&BOOKSTORE).then_some(&*BOOKSTORE),
    }
}

/// The name of feature `index` of `example`: the live schema's when the example follows it, the
/// bookstore schema's for bookstore examples, else `f<index>` as train names unnamed features.
pub fn feature_name(index: usize, example: &ExampleRecord, live: Option<&FeatureSchema>) -> String {
    schema_of(example, live)
        .and_then(|schema| schema.features.get(index).cloned())
        .unwrap_or_else(|| format!("f{index}"))
}

/// The name of feature `index` when no example is at hand (a checkpoint read at start): the
/// live schema's, else the bookstore's, else `f<index>`.
pub fn feature_name_of(index: usize, live: Option<&FeatureSchema>) -> String {
    live.unwrap_or(&BOOKSTORE)
        .features
        .get(index)
        .cloned()
        .unwrap_or_else(|| format!("f{index}"))
}

/// What drift watches of each feature of `example`: the plan of the schema it follows. A live
/// schema without a plan (a manifest written before plans existed) borrows the bookstore's when
/// it is the bookstore schema; a schema with no plan at all watches every value (an empty plan).
pub fn plan(example: &ExampleRecord, live: Option<&FeatureSchema>) -> Vec<Watch> {
    let schema = match schema_of(example, live) {
        Some(schema)
            if schema.monitoring.is_empty()
                && schema.name == BOOKSTORE.name
                && schema.version == BOOKSTORE.version
                && schema.features == BOOKSTORE.features =>
        {
            &*BOOKSTORE
        }
        Some(schema) => schema,
        None => return Vec::new(),
    };
    (0..schema.n_features()).map(|i| schema.watch(i)).collect()
}

/// What the bank reads of the example stored at `sequence`, with `plan` for its features.
pub fn observation<'a>(
    sequence: u64,
    example: &'a ExampleRecord,
    plan: &'a [Watch],
    scored: Option<Scored>,
) -> Observation<'a> {
    Observation {
        sequence,
        schema: example.schema.as_ref(),
        plan,
        features: &example.features,
        label: example.label,
        feedback: labelling(example),
        event_time: example.event_time,
        scored,
    }
}

/// What `example` says of its label, for the error detectors.
pub fn labelling(example: &ExampleRecord) -> Labelling<'_> {
    match example.feedback {
        Feedback::Final => Labelling::Final,
        Feedback::FakeNegative => Labelling::FakeNegative {
            id: &example.id,
            final_at: example.final_at,
        },
        // A correction without `corrects` is refused when the example is decoded.
        Feedback::Correction => match &example.corrects {
            Some(corrects) => Labelling::Correction { corrects },
            None => Labelling::Final,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::{DetectorKind, Window};
    use freshet::control::{DriftNotice, Reaction};
    use freshet_drift::detectors::Level;
    use freshet_drift::episodes::{EpisodeConfig, Episodes, ReactionPolicy};

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
            feedback: Default::default(),
            corrects: None,
            final_at: None,
        }
    }

    fn bookstore_example() -> ExampleRecord {
        example(
            Some(("bookstore", freshet_features::bookstore::SCHEMA_VERSION)),
            freshet_features::bookstore::FEATURE_NAMES.len(),
        )
    }

    fn finding(sequence: u64, target: Target, level: Level) -> Finding {
        Finding {
            sequence,
            detector: DetectorKind::Psi,
            target,
            level,
            statistic: 0.31,
            threshold: Some(0.12),
            window: Window {
                first: 12,
                last: sequence,
                count: 400,
            },
            reference: Some(2_000),
            recent: Some(1_000),
        }
    }

    /// The transitions of an episode opened by a warning on feature 8 at 800, confirmed by
    /// ADWIN on the error at 812 and resolved at 5,900.
    fn lifecycle(policy: &ReactionPolicy<'_>) -> Vec<Transition> {
        let config = EpisodeConfig { rearm: 5_000 };
        let mut episodes = Episodes::default();
        let warning = finding(800, Target::Feature(8), Level::Warning);
        let drift = Finding {
            detector: DetectorKind::Adwin,
            ..finding(812, Target::Error, Level::Drift)
        };
        let mut out = Vec::new();
        for sequence in 800..6_000 {
            let findings: Vec<Finding> = [warning, drift]
                .into_iter()
                .filter(|f| f.sequence == sequence)
                .collect();
            out.extend(episodes.observe(&config, sequence, sequence, &findings, false, policy));
        }
        out
    }

    #[test]
    fn each_transition_is_one_record_that_readers_of_format_one_understand() {
        let published = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let context = RecordContext {
            model: &model(),
            live_version: Some(7),
            live: None,
        };
        let policy = ReactionPolicy {
            reaction: Reaction::TrainCandidate,
            outstanding: None,
        };
        let transitions = lifecycle(&policy);
        assert_eq!(transitions.len(), 3);
        let ex = bookstore_example();
        let records: Vec<DriftEpisodeRecord> = transitions
            .iter()
            .map(|t| record(context, t, &ex, published))
            .collect();
        let json = serde_json::to_value(&records[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "drift", "format": 2, "model": "bookstore", "episode": 1,
                "state": "drift", "level": "drift",
                "detector": "adwin", "target": "error", "feature": null,
                "statistic": 0.31, "threshold": 0.12,
                "window": {"first": 12, "last": 812, "count": 400},
                "sequence": 812,
                "span": {"first": 800, "last": 812},
                "opened": 800, "confirmed": 812, "resolved": null,
                "signals": [
                    {"detector": "psi", "target": "item_log_price", "feature": 8, "level": "warning",
                     "statistic": 0.31, "threshold": 0.12,
                     "window": {"first": 12, "last": 800, "count": 400},
                     "reference_examples": 2000, "recent_examples": 1000, "sequence": 800},
                    {"detector": "adwin", "target": "error", "feature": null, "level": "drift",
                     "statistic": 0.31, "threshold": 0.12,
                     "window": {"first": 12, "last": 812, "count": 400},
                     "reference_examples": 2000, "recent_examples": 1000, "sequence": 812},
                ],
                "live_version": 7, "reaction": "train_candidate",
                "event_time": "2023-11-14T22:13:20Z",
            })
        );
        // What train reads: one request, on the confirmation only.
        let requests: Vec<Option<Reaction>> = records
            .iter()
            .map(|r| {
                serde_json::from_value::<DriftNotice>(serde_json::to_value(r).unwrap())
                    .unwrap()
                    .requested()
            })
            .collect();
        assert_eq!(requests, vec![None, Some(Reaction::TrainCandidate), None]);
        assert_eq!(
            (records[0].level.as_str(), records[0].detector.as_str()),
            ("warning", "psi")
        );
        assert_eq!(records[0].target, "item_log_price");
        assert_eq!(records[2].level, "resolved");
        assert_eq!((records[2].sequence, records[2].span.last), (5_812, 5_812));
        let ids: Vec<String> = transitions
            .iter()
            .map(|t| message_id(&model(), t))
            .collect();
        assert_eq!(
            ids,
            vec![
                "drift-bookstore-episode-1-warning",
                "drift-bookstore-episode-1-drift",
                "drift-bookstore-episode-1-resolved"
            ]
        );
        let timed = ExampleRecord {
            event_time: Some(DateTime::from_timestamp(1_600_000_000, 0).unwrap()),
            ..ex
        };
        let r = record(context, &transitions[0], &timed, published);
        assert_eq!(r.event_time, timed.event_time.unwrap());
    }

    /// The JSON log lines `log_transition` writes for each transition of an episode, through
    /// the functions' own JSON logger.
    fn json_log_lines(records: &[DriftEpisodeRecord]) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let logger =
            freshet::runtime::json_logs(tracing_subscriber::EnvFilter::new("info"), move || {
                writer.clone()
            });
        tracing::subscriber::with_default(logger, || records.iter().for_each(log_transition));
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    /// The keys of a JSON object's text in order, duplicates kept (a `Map` would keep one).
    fn keys_of(line: &str) -> Vec<String> {
        struct Keys(Vec<String>);
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                mut self,
                mut map: A,
            ) -> Result<Vec<String>, A::Error> {
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    self.0.push(key);
                }
                Ok(self.0)
            }
        }
        let mut de = serde_json::Deserializer::from_str(line);
        serde::Deserializer::deserialize_map(&mut de, Keys(Vec::new())).unwrap()
    }

    #[test]
    fn json_logs_of_an_episode_have_one_target_and_plain_values() {
        let policy = ReactionPolicy {
            reaction: Reaction::RaiseLr,
            outstanding: Some("candidate v9 is under judgement"),
        };
        let context = RecordContext {
            model: &model(),
            live_version: Some(7),
            live: None,
        };
        let records: Vec<DriftEpisodeRecord> = lifecycle(&policy)
            .iter()
            .map(|t| {
                let published = DateTime::from_timestamp(0, 0).unwrap();
                record(context, t, &bookstore_example(), published)
            })
            .collect();
        let lines = json_log_lines(&records);
        assert_eq!(lines.len(), 3, "{lines:?}");
        for line in &lines {
            let mut keys = keys_of(line);
            keys.sort();
            let before = keys.len();
            keys.dedup();
            assert_eq!(keys.len(), before, "a key appears twice: {line}");
            assert!(!line.contains("Some("), "Debug formatting leaks: {line}");
        }
        let fields: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // `target` stays the module that logged; what the signal watched has a field of its own.
        for f in &fields {
            let target = f["target"].as_str().unwrap_or_default();
            assert!(target.ends_with("::control"), "{f}");
        }
        assert_eq!(fields[0]["monitored"], "item_log_price");
        assert_eq!(fields[0]["threshold"], 0.12);
        assert_eq!(fields[1]["monitored"], "error");
        assert_eq!(fields[1]["withheld"], "candidate v9 is under judgement");
        assert_eq!(fields[2]["confirmed"], 812);
        assert_eq!(fields[2]["opened"], 800);
    }

    #[test]
    fn a_withheld_reaction_is_said_and_not_requested() {
        let policy = ReactionPolicy {
            reaction: Reaction::RaiseLr,
            outstanding: Some("candidate v9 is under judgement"),
        };
        let transitions = lifecycle(&policy);
        let context = RecordContext {
            model: &model(),
            live_version: None,
            live: None,
        };
        let r = record(
            context,
            &transitions[1],
            &bookstore_example(),
            DateTime::from_timestamp(0, 0).unwrap(),
        );
        assert_eq!(r.reaction, Reaction::Alert);
        assert_eq!(
            r.reaction_withheld.as_deref(),
            Some("candidate v9 is under judgement")
        );
    }

    #[test]
    fn features_are_named_and_planned_from_the_schema_they_follow() {
        let live = FeatureSchema {
            name: "custom".into(),
            version: 3,
            features: vec!["age".into(), "income".into()],
            monitoring: vec![
                freshet::monitoring::Monitoring::new(Watch::Ignore, "grows with time"),
                freshet::monitoring::Monitoring::new(Watch::Log1p, "a raw amount"),
            ],
        };
        let custom = example(Some(("custom", 3)), 2);
        assert_eq!(feature_name(1, &custom, Some(&live)), "income");
        assert_eq!(
            plan(&custom, Some(&live)),
            vec![Watch::Ignore, Watch::Log1p]
        );
        assert_eq!(feature_name(1, &custom, None), "f1");
        assert_eq!(plan(&custom, None), Vec::<Watch>::new());
        let raw = example(None, 2);
        assert_eq!(feature_name(0, &raw, Some(&live)), "age");
        let older = example(Some(("custom", 2)), 2);
        assert!(!older.follows(&live));
        assert_eq!(feature_name(0, &older, Some(&live)), "f0");
        let wider = example(None, 3);
        assert!(!wider.follows(&live));
        assert_eq!(feature_name(2, &wider, Some(&live)), "f2");
        let bookstore = bookstore_example();
        assert_eq!(
            feature_name(0, &bookstore, Some(&live)),
            freshet_features::bookstore::FEATURE_NAMES[0]
        );
        let expected: Vec<Watch> = freshet_features::bookstore::MONITORING
            .iter()
            .map(|(w, _)| *w)
            .collect();
        assert_eq!(plan(&bookstore, None), expected);
        // A live bookstore version written before plans existed watches by the bookstore plan.
        let unplanned = FeatureSchema {
            monitoring: Vec::new(),
            ..freshet_features::bookstore::schema()
        };
        assert_eq!(plan(&bookstore, Some(&unplanned)), expected);
    }
}
