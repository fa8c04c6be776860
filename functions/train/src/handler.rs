//! train's pure logic: the plan of each batch (which examples are acknowledged, held, learned,
//! refused or kept waiting for an earlier one), the schema a model learns under, the prequential
//! metrics window, and the manifest of the next version. No I/O and no clock reads: the adapter
//! ([`crate::processor`]) asks the stream about order, reads the declaration, trains and
//! publishes, and applies the plan.
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
use freshet::runtime::Incoming;
use freshet::runtime::order::{chain_link, follows_directly};
use freshet::store::declarations::same_inputs;
use freshet_model::{
    BatchReport, Manifest, ModelConfig, ModelError, RowWeight, SequenceRange, TrainingMetrics,
    log_loss, predicts_positive, sha256_hex,
};

use crate::quality::{Quality, Transition, Verdict};

/// One message of a batch as train plans it: where it sits in the stream and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub sequence: u64,
    /// How many times it was delivered (1 the first time).
    pub delivered: i64,
    /// The consumer's delivery sequence, if its metadata was readable.
    pub consumer_sequence: Option<u64>,
    /// When JetStream stored it.
    pub published: DateTime<Utc>,
    pub example: Result<ExampleRecord, Rejection>,
}

impl Row {
    /// The row of a received message, its payload decoded and checked.
    pub fn of(message: &Incoming) -> Row {
        Row {
            sequence: message.stream_sequence,
            delivered: message.delivered,
            consumer_sequence: message.consumer_sequence,
            published: message.published,
            example: ExampleRecord::decode(&message.payload),
        }
    }
}

/// Where the model's examples stand before a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// The live version's high-water mark (0: no version yet): examples at or below it are
    /// learned.
    pub high_water_mark: u64,
    /// The last example of the update not published yet.
    pub pending_last: Option<u64>,
    /// The stream sequence of the last example handled in order, and its consumer sequence if it
    /// was a first delivery: the next first delivery after it is known to be in order without
    /// asking the stream ([`follows_directly`]). EXAMPLES interleaves every model's examples, so
    /// without it each example of one model would cost a lookup on the stream.
    pub chain: Option<(u64, u64)>,
}

impl Marks {
    /// The last example handled, published or not.
    pub fn handled(&self) -> u64 {
        self.high_water_mark.max(self.pending_last.unwrap_or(0))
    }

    /// The chain's consumer sequence, if it holds at `mark`: a rollback, a discarded update or a
    /// new lineage moves the mark, and the stream is asked again.
    fn link_at(&self, mark: u64) -> Option<u64> {
        self.chain.filter(|&(at, _)| at == mark).map(|(_, c)| c)
    }
}

/// The batch's rows in stream order (indices into it).
fn stream_order(rows: &[Row]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].sequence);
    order
}

/// A new example whose place the stream must confirm before it is handled: nothing on the
/// model's subject may lie between `after` and it, unless acknowledged already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// Its index in the batch.
    pub index: usize,
    pub sequence: u64,
    /// The example handled just before it.
    pub after: u64,
}

/// The new examples of a batch, in stream order, that the stream must confirm come next: those
/// that do not directly follow the one before them in the consumer's first deliveries. The
/// adapter asks in this order and stops at the first that must wait; [`plan_batch`] then takes
/// that one's index.
pub fn lookups(marks: &Marks, rows: &[Row]) -> Vec<Lookup> {
    let mut mark = marks.handled();
    let mut link = marks.link_at(mark);
    let mut out = Vec::new();
    for index in stream_order(rows) {
        let row = &rows[index];
        if row.sequence <= mark {
            continue;
        }
        if !follows_directly(link, row.consumer_sequence, row.delivered) {
            out.push(Lookup {
                index,
                sequence: row.sequence,
                after: mark,
            });
        }
        mark = row.sequence;
        link = chain_link(row.consumer_sequence, row.delivered);
    }
    out
}

/// What to do with one message of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// In a published version already: acknowledge.
    Acknowledge,
    /// Handled already, in the update not published yet (or a second copy in this batch):
    /// acknowledge it with that update.
    Hold,
    /// Learn it now, and acknowledge it with the version that holds it.
    Learn,
    /// Refuse it (dead-letter), acknowledged with the held messages: the mark covers it.
    Refuse(Rejection),
    /// An earlier example must be handled first: redeliver it shortly.
    Wait,
}

/// A batch's plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchPlan {
    /// One step per row, in the batch's order.
    pub steps: Vec<Step>,
    /// The rows to learn, in stream order, with their features and labels.
    pub learn: Vec<usize>,
    pub features: Vec<Vec<f32>>,
    pub labels: Vec<f32>,
    /// How each row's loss is weighted (delayed feedback; see `freshet_model::weighting`).
    pub weighting: Vec<RowWeight>,
    /// The new examples handled (learned or refused): the next version's mark covers them.
    pub handled: Option<SequenceRange>,
    /// The chain after the batch, when it handled anything.
    pub chain: Option<(u64, u64)>,
    /// When JetStream stored the first example handled (handled in stream order, so the
    /// oldest): the next version is due the publish interval after.
    pub oldest_stored: Option<DateTime<Utc>>,
    /// The quarantine's changes, with the sequence of the example at which each happened.
    pub quarantine: Vec<(Transition, u64)>,
    /// Examples held out as suspect.
    pub held_out: u64,
}

/// The range covering `range` (if any) and `more`.
pub fn widen(range: Option<SequenceRange>, more: SequenceRange) -> SequenceRange {
    match range {
        Some(r) => SequenceRange {
            first: r.first.min(more.first),
            last: r.last.max(more.last),
        },
        None => more,
    }
}

/// Plans a batch in stream order against the model's `marks` and `schema` (`None`: the model
/// has no declared schema, and every new example is refused as undeclared). Each new example is
/// checked against the schema, then assessed by the data-quality monitor (`quality`, updated in
/// place): one that follows the schema and is not suspect is learned. `waiting_from` is the
/// index of the first new example the stream said must wait (see [`lookups`]); it and every
/// later new example wait.
pub fn plan_batch(
    model: &ModelName,
    marks: &Marks,
    schema: Option<&FeatureSchema>,
    quality: &mut Quality,
    rows: &[Row],
    waiting_from: Option<usize>,
) -> BatchPlan {
    let mut plan = BatchPlan {
        steps: vec![Step::Wait; rows.len()],
        ..BatchPlan::default()
    };
    let mut mark = marks.handled();
    let mut link = marks.link_at(mark);
    let mut waiting = false;
    for index in stream_order(rows) {
        let row = &rows[index];
        let step = if waiting {
            Step::Wait
        } else if row.sequence <= marks.high_water_mark {
            Step::Acknowledge
        } else if row.sequence <= mark {
            Step::Hold
        } else if waiting_from == Some(index) {
            waiting = true;
            Step::Wait
        } else {
            mark = row.sequence;
            link = chain_link(row.consumer_sequence, row.delivered);
            plan.oldest_stored.get_or_insert(row.published);
            let single = SequenceRange {
                first: row.sequence,
                last: row.sequence,
            };
            plan.handled = Some(widen(plan.handled, single));
            judge(model, schema, quality, row, index, &mut plan)
        };
        plan.steps[index] = step;
    }
    if plan.handled.is_some() {
        plan.chain = link.map(|delivery| (mark, delivery));
    }
    plan
}

/// The step of a new example: learned, or refused with why.
fn judge(
    model: &ModelName,
    schema: Option<&FeatureSchema>,
    quality: &mut Quality,
    row: &Row,
    index: usize,
    plan: &mut BatchPlan,
) -> Step {
    let Some(schema) = schema else {
        // Nothing says what the model's features are: refuse, in order, until a schema is
        // declared (an unreadable example with its own reason).
        return Step::Refuse(match &row.example {
            Err(rejection) => rejection.clone(),
            Ok(example) => undeclared(&example.model),
        });
    };
    match check_record(row.example.clone(), model, schema) {
        Ok(learnable) => {
            let (verdict, transition) = quality.assess(Some(&learnable.features));
            plan.quarantine
                .extend(transition.map(|t| (t, row.sequence)));
            match verdict {
                Verdict::Learn => {
                    plan.learn.push(index);
                    plan.features.push(learnable.features);
                    plan.labels.push(learnable.label);
                    plan.weighting.push(learnable.weighting);
                    Step::Learn
                }
                Verdict::HoldOut(why) => {
                    plan.held_out += 1;
                    Step::Refuse(Rejection::new(RejectReason::Quarantined, "features", why))
                }
            }
        }
        Err(rejection) => {
            let (_, transition) = quality.assess(None);
            plan.quarantine
                .extend(transition.map(|t| (t, row.sequence)));
            Step::Refuse(rejection)
        }
    }
}

/// The refusal of an example for a model without a declared schema.
pub fn undeclared(model: &ModelName) -> Rejection {
    Rejection::new(
        RejectReason::Undeclared,
        "model",
        format!(
            "model {model} has no declared schema; declare one (freshet models declare {model} --features ...) before sending its examples"
        ),
    )
}

/// The refusal of the examples of a batch whose update the model discarded.
pub fn refusal(error: &ModelError) -> Rejection {
    let reason = match error {
        ModelError::NonFinite { .. } | ModelError::NonFiniteFeature { .. } => {
            RejectReason::NonFinite
        }
        _ => RejectReason::InvalidData,
    };
    Rejection::new(reason, "batch", error.to_string())
}

/// Whether any example of the batch does not follow `declared` (or there is no declaration):
/// the declaration may have changed since it was read, and is read again before the batch is
/// planned.
pub fn surprises(rows: &[Row], declared: Option<&FeatureSchema>) -> bool {
    rows.iter().any(|row| {
        row.example
            .as_ref()
            .is_ok_and(|example| declared.is_none_or(|schema| !example.follows(schema)))
    })
}

/// Under which schema a model learns, given its declaration and the schema its lineage was
/// trained on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaChoice {
    /// Nothing declared and nothing trained: no example can be learned.
    Undeclared,
    /// Learn under this schema, continuing the lineage (or beginning one if there is none).
    Continue(FeatureSchema),
    /// The declaration names other inputs than the lineage was trained on: begin a new chain of
    /// versions, from fresh parameters, under it.
    NewChain(FeatureSchema),
}

/// The schema a model learns under. The declaration decides; a model trained before
/// declarations existed keeps its live version's schema until one is declared (a version
/// someone trained, never a stray example, so nothing arriving first can choose it). A
/// declaration with the lineage's inputs continues it (taking the declaration's monitoring plan);
/// one with other inputs begins a new chain, since the old parameters do not read them.
pub fn schema_choice(
    declared: Option<&FeatureSchema>,
    trained: Option<&FeatureSchema>,
) -> SchemaChoice {
    match (declared, trained) {
        (None, None) => SchemaChoice::Undeclared,
        (None, Some(trained)) => SchemaChoice::Continue(trained.clone()),
        (Some(declared), None) => SchemaChoice::Continue(declared.clone()),
        (Some(declared), Some(trained)) if same_inputs(declared, trained) => {
            SchemaChoice::Continue(declared.clone())
        }
        (Some(declared), Some(_)) => SchemaChoice::NewChain(declared.clone()),
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

/// What train learns from one example: its features, its label and how its loss is weighted.
#[derive(Debug, Clone, PartialEq)]
pub struct Learnable {
    pub features: Vec<f32>,
    pub label: f32,
    pub weighting: RowWeight,
}

/// Checks that an example follows the model's schema; returns what to learn from it.
pub fn check_record(
    decoded: Result<ExampleRecord, Rejection>,
    model: &ModelName,
    schema: &FeatureSchema,
) -> Result<Learnable, Rejection> {
    let record = decoded?;
    if record.features.len() != schema.n_features() {
        return Err(Rejection::new(
            RejectReason::SchemaMismatch,
            "features",
            format!(
                "has {} values; model {model} is declared {} v{} with {} features",
                record.features.len(),
                schema.name,
                schema.version,
                schema.n_features(),
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
                "is {name} v{version}; model {model} is declared {} v{}",
                schema.name, schema.version
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
            final_at: None,
        }
    }

    #[test]
    fn one_reaction_at_a_time() {
        assert_eq!(reaction_in_flight(false, None, 5_000, 200), None);
        assert!(reaction_in_flight(true, None, 5_000, 200).is_some());
        // Raised at 5,000: busy until 200 more examples are learned.
        assert!(reaction_in_flight(false, Some(5_000), 5_199, 200).is_some());
        assert_eq!(reaction_in_flight(false, Some(5_000), 5_200, 200), None);
    }

    fn schema(name: &str, version: u32, width: usize) -> FeatureSchema {
        FeatureSchema {
            name: name.into(),
            version,
            features: (0..width).map(|i| format!("x{i}")).collect(),
            monitoring: Vec::new(),
        }
    }

    fn model() -> ModelName {
        ModelName::parse("m").unwrap()
    }

    /// A first delivery of the example stored at `sequence`, delivered as the consumer's
    /// `delivery`-th message.
    fn row(sequence: u64, delivery: u64, example: Result<ExampleRecord, Rejection>) -> Row {
        Row {
            sequence,
            delivered: 1,
            consumer_sequence: Some(delivery),
            published: DateTime::from_timestamp(1_700_000_000 + sequence as i64, 0).unwrap(),
            example,
        }
    }

    fn fits(sequence: u64, delivery: u64) -> Row {
        row(sequence, delivery, Ok(record(vec![0.5; 3])))
    }

    fn quality() -> Quality {
        Quality::new(crate::quality::QualityConfig::default())
    }

    #[test]
    fn records_must_fit_the_schema() {
        let declared = schema("churn", 1, 3);
        assert_eq!(
            check_record(Ok(record(vec![1.0; 3])), &model(), &declared),
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
            check_record(Ok(correction), &model(), &declared).map(|l| l.weighting),
            Ok(RowWeight::Correction)
        );
        let err = check_record(Ok(record(vec![1.0; 2])), &model(), &declared).unwrap_err();
        assert_eq!(err.reason, RejectReason::SchemaMismatch);
        assert!(
            err.detail.contains("declared churn v1 with 3 features"),
            "{}",
            err.detail
        );
        let mut bookstore = record(vec![1.0; 3]);
        bookstore.schema = Some(("bookstore".into(), 1));
        let err = check_record(Ok(bookstore), &model(), &declared).unwrap_err();
        assert_eq!(
            (err.reason, err.field.as_str()),
            (RejectReason::SchemaMismatch, "schema")
        );
    }

    #[test]
    fn a_batch_is_planned_in_stream_order_against_the_marks() {
        let marks = Marks {
            high_water_mark: 10,
            pending_last: Some(12),
            chain: None,
        };
        // Out of order in the batch; 13 twice; the stream says 17 must wait for an earlier one.
        let rows = vec![
            fits(14, 4),
            fits(9, 1),
            fits(13, 3),
            fits(11, 2),
            fits(13, 5),
            fits(17, 6),
            fits(18, 7),
        ];
        let plan = plan_batch(
            &model(),
            &marks,
            Some(&schema("s", 1, 3)),
            &mut quality(),
            &rows,
            Some(5),
        );
        assert_eq!(
            plan.steps,
            vec![
                Step::Learn,
                Step::Acknowledge,
                Step::Learn,
                Step::Hold,
                Step::Hold,
                Step::Wait,
                Step::Wait
            ]
        );
        // Learned in stream order, and the next version covers 13 and 14.
        assert_eq!(plan.learn, vec![2, 0]);
        assert_eq!(
            plan.handled,
            Some(SequenceRange {
                first: 13,
                last: 14
            })
        );
        assert_eq!(plan.labels, vec![1.0, 1.0]);
        assert_eq!(plan.oldest_stored, Some(rows[2].published));
        // 14 was the consumer's fourth delivery: the chain continues from it.
        assert_eq!(plan.chain, Some((14, 4)));
    }

    #[test]
    fn the_stream_is_asked_only_where_the_chain_of_first_deliveries_breaks() {
        let marks = Marks {
            high_water_mark: 20,
            pending_last: None,
            chain: Some((20, 7)),
        };
        let mut redelivered = fits(23, 9);
        redelivered.delivered = 2;
        let rows = vec![
            fits(21, 8),
            redelivered,
            fits(24, 10),
            fits(25, 11),
            fits(30, 13),
            fits(19, 6),
        ];
        // 21 follows the chain; a redelivery breaks it (and the first delivery after it has
        // nothing to follow); 25 follows 24; 30 comes after a delivery that went elsewhere.
        let asked: Vec<(u64, u64)> = lookups(&marks, &rows)
            .iter()
            .map(|l| (l.sequence, l.after))
            .collect();
        assert_eq!(asked, [(23, 21), (24, 23), (30, 25)]);
        // A chain left at another mark (a rollback moved it) does not count.
        let moved = Marks {
            chain: Some((18, 7)),
            ..marks
        };
        assert_eq!(lookups(&moved, &rows[..1])[0].after, 20);
    }

    #[test]
    fn only_examples_that_follow_the_declared_schema_are_learned() {
        // The race of the chaos run: a stray example with 3 features arrives before the first
        // bookstore example. The declaration decides; the stray one is refused and changes
        // nothing.
        let declared = freshet_features::bookstore::schema();
        let width = declared.n_features();
        let bookstore = |n: u64| {
            let mut example = record(vec![0.5; width]);
            example.schema = Some((declared.name.clone(), declared.version));
            example.id = format!("ex-{n}");
            Ok(example)
        };
        let rows = vec![
            row(1, 1, Ok(record(vec![1.0, 2.0, 3.0]))),
            row(2, 2, bookstore(2)),
            row(3, 3, bookstore(3)),
        ];
        let plan = plan_batch(
            &model(),
            &Marks::default(),
            Some(&declared),
            &mut quality(),
            &rows,
            None,
        );
        assert!(
            matches!(&plan.steps[0], Step::Refuse(r) if r.reason == RejectReason::SchemaMismatch),
            "{:?}",
            plan.steps[0]
        );
        assert_eq!(plan.steps[1..], [Step::Learn, Step::Learn]);
        assert_eq!(plan.learn, vec![1, 2]);
        assert_eq!(plan.features, vec![vec![0.5; width]; 2]);
        // The refused example is handled: the next version's range covers it.
        assert_eq!(plan.handled, Some(SequenceRange { first: 1, last: 3 }));
    }

    #[test]
    fn a_model_without_a_declaration_learns_nothing() {
        let unreadable = Rejection::new(RejectReason::InvalidData, "$", "not an example");
        let rows = vec![fits(1, 1), row(2, 2, Err(unreadable.clone()))];
        let plan = plan_batch(
            &model(),
            &Marks::default(),
            None,
            &mut quality(),
            &rows,
            None,
        );
        assert_eq!(
            plan.steps,
            vec![Step::Refuse(undeclared(&model())), Step::Refuse(unreadable)]
        );
        assert_eq!(undeclared(&model()).reason.as_str(), "undeclared");
        assert!(plan.learn.is_empty());
        assert_eq!(plan.handled, Some(SequenceRange { first: 1, last: 2 }));
    }

    #[test]
    fn suspect_examples_are_held_out_and_the_others_learned() {
        let mut monitor = quality();
        let warm: Vec<Row> = (1..=300).map(|n| fits(n, n)).collect();
        let plan = plan_batch(
            &model(),
            &Marks::default(),
            Some(&schema("s", 1, 3)),
            &mut monitor,
            &warm,
            None,
        );
        assert_eq!(plan.learn.len(), 300);
        let far = row(301, 301, Ok(record(vec![0.5, 1e12, 0.5])));
        let plan = plan_batch(
            &model(),
            &Marks {
                high_water_mark: 300,
                ..Marks::default()
            },
            Some(&schema("s", 1, 3)),
            &mut monitor,
            &[far, fits(302, 302)],
            None,
        );
        assert!(matches!(&plan.steps[0], Step::Refuse(r) if r.reason == RejectReason::Quarantined));
        assert_eq!((plan.steps[1].clone(), plan.held_out), (Step::Learn, 1));
    }

    #[test]
    fn the_declaration_decides_the_schema_and_a_new_one_begins_a_chain() {
        let v1 = schema("churn", 1, 3);
        let mut planned = v1.clone();
        planned.monitoring =
            vec![
                freshet::monitoring::Monitoring::new(freshet::monitoring::Watch::Value, "a rate");
                3
            ];
        let v2 = schema("churn", 2, 4);
        let raw = schema("raw", 0, 3);
        assert_eq!(schema_choice(None, None), SchemaChoice::Undeclared);
        // A model trained before declarations keeps its live version's schema.
        assert_eq!(
            schema_choice(None, Some(&raw)),
            SchemaChoice::Continue(raw.clone())
        );
        assert_eq!(
            schema_choice(Some(&v1), None),
            SchemaChoice::Continue(v1.clone())
        );
        assert_eq!(
            schema_choice(Some(&planned), Some(&v1)),
            SchemaChoice::Continue(planned.clone())
        );
        assert_eq!(
            schema_choice(Some(&v2), Some(&v1)),
            SchemaChoice::NewChain(v2.clone())
        );
        // A lineage a stray example began (3 unnamed features) gives way to the declaration.
        assert_eq!(
            schema_choice(Some(&v1), Some(&raw)),
            SchemaChoice::NewChain(v1.clone())
        );
    }

    #[test]
    fn an_example_the_declaration_does_not_admit_asks_for_it_again() {
        let declared = schema("s", 1, 3);
        assert!(!surprises(&[fits(1, 1)], Some(&declared)));
        assert!(surprises(&[fits(1, 1)], None));
        assert!(surprises(
            &[row(1, 1, Ok(record(vec![1.0; 4])))],
            Some(&declared)
        ));
        let unreadable = Err(Rejection::new(RejectReason::InvalidData, "$", "x"));
        assert!(!surprises(&[row(1, 1, unreadable)], Some(&declared)));
    }

    #[test]
    fn a_discarded_update_refuses_its_examples_with_the_reason() {
        let overflow = ModelError::NonFinite {
            what: "updated weights".into(),
        };
        assert_eq!(refusal(&overflow).reason, RejectReason::NonFinite);
        assert_eq!(
            refusal(&ModelError::EmptyBatch).reason,
            RejectReason::InvalidData
        );
        assert_eq!(
            widen(
                Some(SequenceRange { first: 5, last: 9 }),
                SequenceRange { first: 3, last: 4 }
            ),
            SequenceRange { first: 3, last: 9 }
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
        let schema = schema("s", 1, 2);
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
                schema: schema.clone(),
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
                    schema: schema.clone(),
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
