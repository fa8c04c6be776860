//! train's pure logic: which examples of a batch to learn, skip or refuse; the prequential metrics
//! window; and the manifest of the next version. No I/O and no clock reads.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use freshet::error::{RejectReason, Rejection};
use freshet::examples::{ExampleRecord, FeatureSchema};
use freshet::ids::ModelName;
use freshet::model::{
    BatchReport, Manifest, ModelConfig, SequenceRange, TrainingMetrics, sha256_hex,
};

/// Where an example's stream sequence stands against what the model already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// At or below the live version's high-water mark: already in a published version.
    AlreadyLearned,
    /// Inside the pending (not yet published) update: already handled, hold it again.
    AlreadyPending,
    /// Not handled yet.
    New,
}

pub fn sequence_verdict(
    sequence: u64,
    high_water_mark: u64,
    pending_last: Option<u64>,
) -> Sequence {
    if sequence <= high_water_mark {
        Sequence::AlreadyLearned
    } else if pending_last.is_some_and(|last| sequence <= last) {
        Sequence::AlreadyPending
    } else {
        Sequence::New
    }
}

/// How long ago the wait for the next version started, given how long ago its oldest example was
/// stored and the last version was published. From the oldest example, so the publish interval
/// bounds how long an example waits to be served, not how long after its batch was trained; but
/// not before the last version, so a backlog of examples stored long ago gets a version per
/// interval rather than one per batch.
pub fn pending_age(
    oldest_example: std::time::Duration,
    since_last_version: Option<std::time::Duration>,
) -> std::time::Duration {
    since_last_version.map_or(oldest_example, |last| last.min(oldest_example))
}

/// Why a reaction drift asks for must be ignored, if it must: one is still in flight. A
/// candidate forked for a drift is in flight until the gate promotes or withdraws it; a raised
/// learning rate until the lineage has learned `settle` examples under it (a metrics window).
pub fn reaction_in_flight(
    candidate_training: bool,
    raised_at: Option<u64>,
    learned: u64,
    settle: u64,
) -> Option<&'static str> {
    if candidate_training {
        Some("a candidate is in training")
    } else if raised_at.is_some_and(|at| learned < at.saturating_add(settle)) {
        Some("the raised learning rate is still settling")
    } else {
        None
    }
}

/// The schema a model takes, from the first example when the model has no version yet.
pub fn schema_for(record: &ExampleRecord) -> FeatureSchema {
    match &record.schema {
        Some((name, version))
            if name == freshet::features::SCHEMA_NAME
                && *version == freshet::features::SCHEMA_VERSION =>
        {
            freshet::features::schema()
        }
        Some((name, version)) => FeatureSchema {
            name: name.clone(),
            version: *version,
            features: (0..record.features.len())
                .map(|i| format!("f{i}"))
                .collect(),
            monitoring: Vec::new(),
        },
        None => FeatureSchema {
            name: "raw".to_string(),
            version: 0,
            features: (0..record.features.len())
                .map(|i| format!("f{i}"))
                .collect(),
            monitoring: Vec::new(),
        },
    }
}

/// Checks that an example fits the model; returns what to learn from it.
pub fn check_record(
    decoded: Result<ExampleRecord, Rejection>,
    schema: &FeatureSchema,
) -> Result<(Vec<f32>, f32), Rejection> {
    let record = decoded?;
    if record.features.len() != schema.n_features() {
        return Err(Rejection::new(
            RejectReason::SchemaMismatch,
            "features",
            format!(
                "has {} values; model {} takes {} ({} v{})",
                record.features.len(),
                record.model,
                schema.n_features(),
                schema.name,
                schema.version
            ),
        ));
    }
    if let Some((name, version)) = &record.schema
        && (name != &schema.name || *version != schema.version)
    {
        return Err(Rejection::new(
            RejectReason::SchemaMismatch,
            "schema",
            format!(
                "is {name} v{version}; model {} takes {} v{}",
                record.model, schema.name, schema.version
            ),
        ));
    }
    Ok((record.features, record.label))
}

/// Prequential results over the most recent examples (at least `capacity`, in whole batches).
#[derive(Debug, Clone)]
pub struct MetricsWindow {
    capacity: usize,
    batches: VecDeque<(usize, usize, f64)>,
    /// The last `capacity` examples' prequential scores and labels, for the ROC AUC.
    scored: VecDeque<(f32, bool)>,
    examples_total: u64,
}

impl MetricsWindow {
    pub fn new(capacity: usize, examples_total: u64) -> MetricsWindow {
        MetricsWindow {
            capacity: capacity.max(1),
            batches: VecDeque::new(),
            scored: VecDeque::new(),
            examples_total,
        }
    }

    pub fn record(&mut self, report: &BatchReport, labels: &[f32]) {
        for (score, label) in report.scores.iter().zip(labels) {
            self.scored.push_back((*score, *label >= 0.5));
        }
        while self.scored.len() > self.capacity {
            self.scored.pop_front();
        }
        self.batches
            .push_back((report.examples, report.correct, report.log_loss_sum));
        self.examples_total += report.examples as u64;
        while self.batches.len() > 1 && self.window_examples() - self.batches[0].0 >= self.capacity
        {
            self.batches.pop_front();
        }
    }

    fn window_examples(&self) -> usize {
        self.batches.iter().map(|b| b.0).sum()
    }

    pub fn snapshot(&self) -> TrainingMetrics {
        let examples = self.window_examples();
        let correct: usize = self.batches.iter().map(|b| b.1).sum();
        let loss: f64 = self.batches.iter().map(|b| b.2).sum();
        let denominator = examples.max(1) as f64;
        TrainingMetrics {
            examples_total: self.examples_total,
            window_examples: examples as u64,
            prequential_accuracy: correct as f64 / denominator,
            log_loss: loss / denominator,
            roc_auc: roc_auc(self.scored.iter().copied()),
        }
    }
}

/// The area under the ROC curve of scored examples: the probability that a random positive
/// scores above a random negative (ties count half), by the rank-sum (Mann–Whitney) formula.
/// `None` when only one class is present.
pub fn roc_auc(scored: impl Iterator<Item = (f32, bool)>) -> Option<f64> {
    let mut scored: Vec<(f32, bool)> = scored.collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = scored.iter().filter(|(_, label)| *label).count() as f64;
    let negatives = scored.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < scored.len() {
        // Tied scores share the mean of their ranks (1-based).
        let mut j = i;
        while j + 1 < scored.len() && scored[j + 1].0 == scored[i].0 {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mean_rank * scored[i..=j].iter().filter(|(_, label)| *label).count() as f64;
        i = j + 1;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// Everything about the next version except its bytes.
pub struct NextVersion<'a> {
    pub model: &'a ModelName,
    pub parent: Option<&'a Manifest>,
    pub config: ModelConfig,
    pub schema: FeatureSchema,
    pub step: u64,
    pub learned: SequenceRange,
    pub metrics: TrainingMetrics,
    pub created_at: DateTime<Utc>,
    /// Whether this version starts a chain of its own (a candidate's first version) rather than
    /// continuing its parent's.
    pub new_chain: bool,
    /// Trace ids of the traced examples it learned (a bounded sample, see
    /// [`freshet::trace::TraceSample`]).
    pub traces: Vec<String>,
}

/// The manifest of the version that follows `parent` and holds `model_bytes`.
pub fn next_manifest(next: NextVersion<'_>, model_bytes: &[u8]) -> Manifest {
    let parent_hwm = next.parent.map_or(0, |p| p.high_water_mark);
    Manifest {
        model: next.model.to_string(),
        version: next.parent.map_or(1, |p| p.version + 1),
        parent: next.parent.map(|p| p.version),
        config: next.config,
        schema: next.schema,
        sha256: sha256_hex(model_bytes),
        size_bytes: model_bytes.len() as u64,
        created_at: next.created_at,
        step: next.step,
        learned: Some(next.learned),
        high_water_mark: parent_hwm.max(next.learned.last),
        metrics: next.metrics,
        lineage: next
            .parent
            .filter(|_| !next.new_chain)
            .map(Manifest::lineage_root),
        traces: next.traces,
    }
}

/// The versions a retention policy removes: all but the newest `keep_newest` of `stored`, and
/// never one in `named` (a version a pointer names now or in its kept history, so a rollback
/// always finds its target). `keep_newest` 0 keeps everything.
pub fn versions_to_delete(
    stored: &[u64],
    keep_newest: usize,
    named: &std::collections::BTreeSet<u64>,
) -> Vec<u64> {
    if keep_newest == 0 {
        return Vec::new();
    }
    let mut sorted = stored.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let old = sorted.len().saturating_sub(keep_newest);
    sorted[..old]
        .iter()
        .copied()
        .filter(|v| !named.contains(v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_for_a_version_starts_at_its_oldest_example_but_not_before_the_last_version() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        // Examples stored 7 ms ago, the last version 1 s ago: the wait started 7 ms ago.
        assert_eq!(pending_age(ms(7), Some(ms(1_000))), ms(7));
        // No version yet: from the oldest example.
        assert_eq!(pending_age(ms(7), None), ms(7));
        // A backlog stored an hour ago, the last version 3 ms ago: from the last version.
        assert_eq!(pending_age(ms(3_600_000), Some(ms(3))), ms(3));
    }

    #[test]
    fn retention_keeps_the_newest_and_every_named_version() {
        let stored: Vec<u64> = (1..=10).collect();
        let named = [2u64, 9].into_iter().collect();
        assert_eq!(
            versions_to_delete(&stored, 3, &named),
            vec![1, 3, 4, 5, 6, 7]
        );
        assert_eq!(versions_to_delete(&stored, 0, &named), Vec::<u64>::new());
        assert_eq!(versions_to_delete(&stored, 20, &named), Vec::<u64>::new());
        let unsorted = [5, 1, 3, 3];
        assert_eq!(
            versions_to_delete(&unsorted, 1, &Default::default()),
            vec![1, 3]
        );
    }

    fn record(features: Vec<f32>) -> ExampleRecord {
        ExampleRecord {
            id: "ex-1".into(),
            model: ModelName::parse("m").unwrap(),
            schema: None,
            features,
            label: 1.0,
            source_event: "1".into(),
            event_time: None,
            feedback: Default::default(),
            corrects: None,
        }
    }

    #[test]
    fn sequences_are_sorted_against_the_marks() {
        assert_eq!(sequence_verdict(10, 10, None), Sequence::AlreadyLearned);
        assert_eq!(sequence_verdict(11, 10, Some(12)), Sequence::AlreadyPending);
        assert_eq!(sequence_verdict(13, 10, Some(12)), Sequence::New);
        assert_eq!(sequence_verdict(1, 0, None), Sequence::New);
    }

    #[test]
    fn one_reaction_at_a_time() {
        assert_eq!(reaction_in_flight(false, None, 5_000, 200), None);
        assert!(reaction_in_flight(true, None, 5_000, 200).is_some());
        // Raised at 5,000: busy until 200 more examples are learned.
        assert!(reaction_in_flight(false, Some(5_000), 5_199, 200).is_some());
        assert_eq!(reaction_in_flight(false, Some(5_000), 5_200, 200), None);
    }

    #[test]
    fn records_must_fit_the_schema() {
        let schema = schema_for(&record(vec![0.0; 3]));
        assert_eq!(
            check_record(Ok(record(vec![1.0; 3])), &schema),
            Ok((vec![1.0; 3], 1.0))
        );
        let err = check_record(Ok(record(vec![1.0; 2])), &schema).unwrap_err();
        assert_eq!(err.reason, RejectReason::SchemaMismatch);
        let mut bookstore = record(vec![1.0; 3]);
        bookstore.schema = Some(("bookstore".into(), 1));
        let err = check_record(Ok(bookstore), &schema).unwrap_err();
        assert_eq!(
            (err.reason, err.field.as_str()),
            (RejectReason::SchemaMismatch, "schema")
        );
    }

    #[test]
    fn the_window_keeps_recent_batches() {
        let mut window = MetricsWindow::new(100, 0);
        for correct in [0, 0, 50, 50] {
            let report = BatchReport {
                examples: 50,
                correct,
                log_loss_sum: 10.0,
                step: 1,
                learning_rate: 0.1,
                scores: vec![0.9; 50],
            };
            window.record(&report, &[1.0; 50]);
        }
        let m = window.snapshot();
        assert_eq!((m.examples_total, m.window_examples), (200, 100));
        assert!((m.prequential_accuracy - 1.0).abs() < 1e-12);
        assert!((m.log_loss - 0.2).abs() < 1e-12);
    }

    #[test]
    fn roc_auc_matches_hand_counts() {
        let perfect = [(0.1, false), (0.2, false), (0.8, true), (0.9, true)];
        assert_eq!(roc_auc(perfect.into_iter()), Some(1.0));
        let reversed = [(0.9, false), (0.8, false), (0.2, true), (0.1, true)];
        assert_eq!(roc_auc(reversed.into_iter()), Some(0.0));
        // Positives 0.6, 0.4; negatives 0.5, 0.4: pairs (0.6>0.5) 1, (0.6>0.4) 1, (0.4<0.5) 0,
        // (0.4=0.4) 0.5, so 2.5 of 4.
        let mixed = [(0.6, true), (0.4, true), (0.5, false), (0.4, false)];
        assert_eq!(roc_auc(mixed.into_iter()), Some(2.5 / 4.0));
        assert_eq!(roc_auc([(0.3, true)].into_iter()), None);
    }

    #[test]
    fn versions_chain_and_the_high_water_mark_never_falls() {
        let model = ModelName::parse("m").unwrap();
        let schema = schema_for(&record(vec![0.0; 2]));
        let metrics = MetricsWindow::new(10, 0).snapshot();
        let at = DateTime::from_timestamp(0, 0).unwrap();
        let first = next_manifest(
            NextVersion {
                model: &model,
                parent: None,
                config: ModelConfig::default(),
                schema: schema.clone(),
                step: 3,
                learned: SequenceRange { first: 1, last: 40 },
                metrics,
                created_at: at,
                new_chain: false,
                traces: Vec::new(),
            },
            b"abc",
        );
        assert_eq!(
            (first.version, first.parent, first.high_water_mark),
            (1, None, 40)
        );
        assert_eq!(first.sha256, sha256_hex(b"abc"));
        let second = next_manifest(
            NextVersion {
                model: &model,
                parent: Some(&first),
                config: ModelConfig::default(),
                schema,
                step: 5,
                learned: SequenceRange {
                    first: 41,
                    last: 90,
                },
                metrics,
                created_at: at,
                new_chain: false,
                traces: Vec::new(),
            },
            b"abcd",
        );
        assert_eq!(
            (
                second.version,
                second.parent,
                second.high_water_mark,
                second.size_bytes
            ),
            (2, Some(1), 90, 4)
        );
        // Both belong to the chain the first began; a candidate's first version starts its own,
        // which its next versions continue.
        assert_eq!((first.lineage_root(), second.lineage_root()), (1, 1));
        let fork = |parent: &Manifest, new_chain: bool| {
            next_manifest(
                NextVersion {
                    model: &model,
                    parent: Some(parent),
                    config: ModelConfig::default(),
                    schema: schema_for(&record(vec![0.0; 2])),
                    step: 1,
                    learned: SequenceRange {
                        first: 91,
                        last: 95,
                    },
                    metrics,
                    created_at: at,
                    new_chain,
                    traces: vec!["4bf92f3577b34da6a3ce929d0e0e4736".into()],
                },
                b"abcde",
            )
        };
        let candidate = fork(&second, true);
        assert_eq!((candidate.lineage, candidate.lineage_root()), (None, 3));
        assert_eq!(candidate.traces, ["4bf92f3577b34da6a3ce929d0e0e4736"]);
        assert!(second.traces.is_empty());
        assert_eq!(fork(&candidate, false).lineage, Some(3));
    }
}
