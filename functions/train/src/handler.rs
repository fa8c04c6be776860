//! train's pure logic: which examples of a batch to learn, skip or refuse; the prequential metrics
//! window; and the manifest of the next version. No I/O and no clock reads.
//!
//! # Prequential metrics under delayed feedback
//!
//! Each example is scored by the model before it learns from it. With fake-negative weighting a
//! view arrives first as a fake negative and, if it converts, again as a correction; scored
//! against the label each carries, the fake negative of a converted view would count as a
//! mistake the model did not make. So the window weighs every example's accuracy and log loss
//! by its loss weight `w` (1 for a final label, `(1 − p)(1 + p)` for a fake negative, `1 + p` for
//! a correction; see `freshet_model::weighting`), the ROC AUC every pair by the product of the
//! pair's weights, and divides by the weights' sum. For a view the model gives `p` whose true
//! rate is `π`, the expected weighted log loss of its examples over their expected weight is
//! `[(1 − p)·ℓ(0) + π·ℓ(1)] / (1 − p + π)`: the log loss against the final label exactly when
//! the model is calibrated (`p = π`), and near it otherwise. With final labels only, every
//! weight is 1 and the metrics are the plain ones. A correction is not an example of its own:
//! the window counts, and the positive share and mean prediction are taken over, the examples
//! that are not corrections, a correction turning its fake negative into a positive.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use freshet::error::{RejectReason, Rejection};
use freshet::examples::{ExampleRecord, FeatureSchema};
use freshet::ids::ModelName;
use freshet_model::{
    BatchReport, Manifest, ModelConfig, RowWeight, SequenceRange, TrainingMetrics, log_loss,
    predicts_positive, sha256_hex,
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
            if name == freshet_features::bookstore::SCHEMA_NAME
                && *version == freshet_features::bookstore::SCHEMA_VERSION =>
        {
            freshet_features::bookstore::schema()
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

/// What train learns from one example: its features, its label and how its loss is weighted.
#[derive(Debug, Clone, PartialEq)]
pub struct Learnable {
    pub features: Vec<f32>,
    pub label: f32,
    pub weighting: RowWeight,
}

/// Checks that an example fits the model; returns what to learn from it.
pub fn check_record(
    decoded: Result<ExampleRecord, Rejection>,
    schema: &FeatureSchema,
) -> Result<Learnable, Rejection> {
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
    Ok(Learnable {
        features: record.features,
        label: record.label,
        weighting: record.feedback.into(),
    })
}

/// What one trained batch adds to the window (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct BatchTally {
    /// Examples that are not corrections.
    examples: usize,
    /// Positive rows, corrections included.
    positives: usize,
    weight_sum: f64,
    weighted_correct: f64,
    weighted_log_loss: f64,
    /// Sum of the prequential scores of the examples that are not corrections.
    score_sum: f64,
}

/// Prequential results over the most recent examples (at least `capacity`, in whole batches).
#[derive(Debug, Clone)]
pub struct MetricsWindow {
    capacity: usize,
    batches: VecDeque<BatchTally>,
    /// The last `capacity` rows' prequential scores, labels and loss weights, for the ROC AUC.
    scored: VecDeque<(f32, bool, f32)>,
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

    /// Adds a trained batch: its report, and each row's label and weighting, in batch order.
    pub fn record(&mut self, report: &BatchReport, labels: &[f32], weighting: &[RowWeight]) {
        let mut tally = BatchTally::default();
        for (i, (&score, &label)) in report.scores.iter().zip(labels).enumerate() {
            let positive = label >= 0.5;
            let weight = report.weights.get(i).copied().unwrap_or(1.0);
            let w = f64::from(weight);
            tally.positives += usize::from(positive);
            tally.weight_sum += w;
            if predicts_positive(score) == positive {
                tally.weighted_correct += w;
            }
            tally.weighted_log_loss += w * log_loss(score, positive);
            if weighting.get(i) != Some(&RowWeight::Correction) {
                tally.examples += 1;
                tally.score_sum += f64::from(score);
            }
            self.scored.push_back((score, positive, weight));
        }
        while self.scored.len() > self.capacity {
            self.scored.pop_front();
        }
        self.batches.push_back(tally);
        self.examples_total += report.examples as u64;
        while self.batches.len() > 1
            && self.window_examples() - self.batches[0].examples >= self.capacity
        {
            self.batches.pop_front();
        }
    }

    fn window_examples(&self) -> usize {
        self.batches.iter().map(|b| b.examples).sum()
    }

    pub fn snapshot(&self) -> TrainingMetrics {
        let sum = |f: fn(&BatchTally) -> f64| self.batches.iter().map(f).sum::<f64>();
        let examples = self.window_examples();
        let positives: usize = self.batches.iter().map(|b| b.positives).sum();
        let weights = sum(|b| b.weight_sum);
        // All weights zero (every row a fake negative the model is sure converts) is no
        // evidence either way: read as nothing learned rather than divide by zero.
        let weighted = |total: f64| if weights > 0.0 { total / weights } else { 0.0 };
        let share = |count: f64| (examples > 0).then(|| count / examples as f64);
        TrainingMetrics {
            examples_total: self.examples_total,
            window_examples: examples as u64,
            prequential_accuracy: weighted(sum(|b| b.weighted_correct)),
            log_loss: weighted(sum(|b| b.weighted_log_loss)),
            roc_auc: weighted_roc_auc(self.scored.iter().copied()),
            // A correction turns its fake negative (an example of the window, or of one just
            // before it) positive: every positive row is one positive example.
            positive_share: share(positives as f64).map(|s| s.min(1.0)),
            mean_prediction: share(sum(|b| b.score_sum)),
        }
    }
}

/// The area under the ROC curve of weighted scored examples: the probability that a random
/// positive scores above a random negative (ties count half), every (positive, negative) pair
/// counting the product of their weights. With every weight 1 it is the rank-sum
/// (Mann–Whitney) formula. `None` unless both classes have weight.
pub fn weighted_roc_auc(scored: impl Iterator<Item = (f32, bool, f32)>) -> Option<f64> {
    let mut scored: Vec<(f32, bool, f64)> = scored
        .map(|(score, positive, weight)| (score, positive, f64::from(weight.max(0.0))))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let class_weight = |class: bool| -> f64 {
        scored
            .iter()
            .filter(|(_, positive, _)| *positive == class)
            .map(|(_, _, w)| w)
            .sum()
    };
    let (positives, negatives) = (class_weight(true), class_weight(false));
    if positives <= 0.0 || negatives <= 0.0 {
        return None;
    }
    // For each positive: the weight of the negatives scored below it, and half of those tied.
    let (mut pairs, mut negatives_below) = (0.0, 0.0);
    let mut i = 0;
    while i < scored.len() {
        let mut j = i;
        while j + 1 < scored.len() && scored[j + 1].0 == scored[i].0 {
            j += 1;
        }
        let tied = &scored[i..=j];
        let tied_positives: f64 = tied.iter().filter(|t| t.1).map(|t| t.2).sum();
        let tied_negatives: f64 = tied.iter().filter(|t| !t.1).map(|t| t.2).sum();
        pairs += tied_positives * (negatives_below + tied_negatives / 2.0);
        negatives_below += tied_negatives;
        i = j + 1;
    }
    Some(pairs / (positives * negatives))
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
            Ok(Learnable {
                features: vec![1.0; 3],
                label: 1.0,
                weighting: RowWeight::One
            })
        );
        let correction = ExampleRecord {
            feedback: freshet::examples::Feedback::Correction,
            corrects: Some("ex-0".into()),
            ..record(vec![1.0; 3])
        };
        assert_eq!(
            check_record(Ok(correction), &schema).map(|l| l.weighting),
            Ok(RowWeight::Correction)
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
                scores: vec![if correct > 0 { 0.9 } else { 0.1 }; 50],
                weights: vec![1.0; 50],
            };
            window.record(&report, &[1.0; 50], &[]);
        }
        let m = window.snapshot();
        assert_eq!((m.examples_total, m.window_examples), (200, 100));
        assert!((m.prequential_accuracy - 1.0).abs() < 1e-12);
        assert!((m.log_loss - -(0.9f64.ln())).abs() < 1e-6);
        assert_eq!(m.positive_share, Some(1.0));
        assert!((m.mean_prediction.unwrap() - 0.9).abs() < 1e-6);
    }

    /// The window of a fake-negative stream: four views scored 0.2 arrive as fake negatives,
    /// one converts and its correction (scored 0.2 too) follows.
    #[test]
    fn under_fake_negatives_the_window_weighs_rows_and_counts_views() {
        let mut window = MetricsWindow::new(100, 0);
        let p = 0.2f32;
        let (negative, correction) = (
            RowWeight::FakeNegative.weight(p),
            RowWeight::Correction.weight(p),
        );
        let report = BatchReport {
            examples: 5,
            correct: 4,
            log_loss_sum: 0.0,
            step: 1,
            learning_rate: 0.1,
            scores: vec![p; 5],
            weights: vec![negative, negative, negative, negative, correction],
        };
        let weighting = [
            RowWeight::FakeNegative,
            RowWeight::FakeNegative,
            RowWeight::FakeNegative,
            RowWeight::FakeNegative,
            RowWeight::Correction,
        ];
        window.record(&report, &[0.0, 0.0, 0.0, 0.0, 1.0], &weighting);
        let m = window.snapshot();
        // Four views, one of them converted; the correction is not a fifth example.
        assert_eq!((m.examples_total, m.window_examples), (5, 4));
        assert_eq!(m.positive_share, Some(0.25));
        assert!((m.mean_prediction.unwrap() - 0.2).abs() < 1e-6);
        let (w0, w1) = (f64::from(negative), f64::from(correction));
        let total = 4.0 * w0 + w1;
        assert!((m.prequential_accuracy - 4.0 * w0 / total).abs() < 1e-9);
        let loss = (4.0 * w0 * -(0.8f64.ln()) + w1 * -(0.2f64.ln())) / total;
        assert!((m.log_loss - loss).abs() < 1e-6, "{} vs {loss}", m.log_loss);
        // Every score ties: the AUC is a half, whatever the weights.
        assert_eq!(m.roc_auc, Some(0.5));
    }

    #[test]
    fn weighted_roc_auc_counts_pairs_by_their_weights() {
        // One positive at 0.6 (weight 2) above a negative at 0.5 (weight 1) and below one at
        // 0.7 (weight 3): 2·1 of 2·4 pair weight is ordered right.
        let scored = [(0.6, true, 2.0), (0.5, false, 1.0), (0.7, false, 3.0)];
        assert_eq!(weighted_roc_auc(scored.into_iter()), Some(0.25));
        assert_eq!(
            weighted_roc_auc([(0.5, true, 0.0), (0.4, false, 1.0)].into_iter()),
            None
        );
    }

    #[test]
    fn roc_auc_matches_hand_counts() {
        let unweighted = |scored: &[(f32, bool)]| {
            weighted_roc_auc(scored.iter().map(|&(score, label)| (score, label, 1.0)))
        };
        let perfect = [(0.1, false), (0.2, false), (0.8, true), (0.9, true)];
        assert_eq!(unweighted(&perfect), Some(1.0));
        let reversed = [(0.9, false), (0.8, false), (0.2, true), (0.1, true)];
        assert_eq!(unweighted(&reversed), Some(0.0));
        // Positives 0.6, 0.4; negatives 0.5, 0.4: pairs (0.6>0.5) 1, (0.6>0.4) 1, (0.4<0.5) 0,
        // (0.4=0.4) 0.5, so 2.5 of 4.
        let mixed = [(0.6, true), (0.4, true), (0.5, false), (0.4, false)];
        assert_eq!(unweighted(&mixed), Some(2.5 / 4.0));
        assert_eq!(unweighted(&[(0.3, true)]), None);
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
