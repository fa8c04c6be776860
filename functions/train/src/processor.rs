//! train's runtime adapter: plans each batch ([`handler::plan_batch`]), learns it in memory,
//! holds the messages, and on the publishing cadence writes the new version to object storage
//! and moves `<model>.live` by compare-and-set. Only then are the held messages acknowledged, so
//! a crash at any instant loses nothing and learns nothing twice: the restarted trainer resumes
//! from the live version, whose high-water mark says which examples it already holds.
//!
//! The adapter does the I/O the plan needs and nothing else: it reads the model's declared
//! schema, asks the stream whether an example is next in order, trains with burn on a blocking
//! thread, publishes to CONTROL, and writes versions and pointers. It is generic over where those
//! go ([`PointerStore`], [`DeclarationStore`], [`ControlSink`], [`OrderCheck`]), so its unit tests
//! run it on memory stores and a `memory://` object store, without a server.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use bytes::Bytes;
use chrono::Utc;
use freshet::control::{ControlSink, KIND_QUARANTINE, QuarantineRecord, Reaction};
use freshet::error::{Failure, RejectReason, Rejection};
use freshet::examples::FeatureSchema;
use freshet::ids::ModelName;
use freshet::runtime::order::{OrderCheck, OrderGuard};
use freshet::runtime::{Commit, Disposition, Incoming, Processor};
use freshet::store::{DeclarationStore, Declarations};
use freshet::subjects::Subjects;
use freshet::trace::TraceSample;
use freshet_model::store::{
    ArtifactError, ArtifactStore, CasError, Cause, Hold, PointerStore, Pointers, Retention, Slot,
    Verified,
};
use freshet_model::{Manifest, ModelConfig, ModelError, Trainer as ModelTrainer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;

use crate::handler::{self, BatchPlan, Marks, MetricsWindow, NextVersion, Row, SchemaChoice, Step};
use crate::population::{self, Held, Now, Origin, Selection, SelectionConfig, Standing};
use crate::quality::{Change, Quality, Transition};

/// When a new version is published.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// After this many trained batches.
    pub every_batches: usize,
    /// Or this long after the oldest unpublished example was stored (or after the last version, if
    /// that was later), whichever comes first.
    pub every: Duration,
    /// Which versions stay in the object store besides those a pointer names (a newest count of
    /// 0 keeps all).
    pub retention: Retention,
}

/// How old the declared schema may be when a batch is planned: it is read again after this (and
/// at once when an example does not follow it).
const DECLARATION_REFRESH: Duration = Duration::from_secs(1);

/// How old the model's hold may be when a batch is planned (it is always read again before a
/// version is published), and how long a held trainer waits before handing a batch back: the
/// examples go back to the stream unacknowledged and return about this often.
const HOLD_REFRESH: Duration = Duration::from_secs(1);

/// The model as last published, plus what has been learned since.
struct Lineage {
    trainer: ModelTrainer,
    schema: FeatureSchema,
    /// The last version published (of this chain or, for a new chain, the version it follows).
    live: Option<Manifest>,
    pointer_revision: u64,
    window: MetricsWindow,
    /// A copy trained beside it since a drift, published to `<model>.candidate` for the gate.
    candidate: Option<Candidate>,
    /// Its next version begins a chain of its own: it was begun for a newly declared schema.
    new_chain: bool,
}

/// A candidate: forked from the live model when a drift asked for one, with its learning-rate
/// schedule restarted, and trained on every example since. It is published with each live
/// version and holds the same examples, so when the gate promotes it, training continues from
/// it without losing or repeating one.
struct Candidate {
    trainer: ModelTrainer,
    /// Its last version (at first, the live version it was forked from).
    published: Option<Manifest>,
    /// The candidate pointer's revision the next write must expect.
    pointer_revision: u64,
    /// Examples learned since its last version.
    pending: Option<freshet_model::SequenceRange>,
    window: MetricsWindow,
    /// Not published yet: its first version starts a chain of its own.
    forked: bool,
    /// Traces of the examples learned since its last version.
    traces: TraceSample,
}

/// Examples learned in memory but not yet in a published version.
#[derive(Default)]
struct PendingUpdate {
    batches: usize,
    range: Option<freshet_model::SequenceRange>,
    /// When the wait for the version holding these examples started (see
    /// [`handler::pending_age`]).
    since: Option<Instant>,
    /// Traces of the examples learned, for the next version's manifest.
    traces: TraceSample,
}

/// The model's population (see [`crate::population`]): the members' configurations, the
/// challengers learning beside live, and which of them is offered as the candidate.
struct Population {
    members: Vec<ModelConfig>,
    config: SelectionConfig,
    selection: Selection,
    /// Every member but live's, in the order declared.
    challengers: Vec<Challenger>,
    /// The candidate pointer's revision the next write of a challenger must expect.
    candidate_revision: u64,
    /// Live as of its last version, and which member it is: when the gate promotes a
    /// challenger, the lineage it replaced joins the challengers from here.
    live_saved: Option<(usize, Saved)>,
}

/// A member other than live's: it learns every example live learns, in the same batches.
struct Challenger {
    /// Its index among the population's members.
    member: usize,
    trainer: ModelTrainer,
    window: MetricsWindow,
    /// Its last version; before it has one, the live version it began after (if any).
    published: Option<Manifest>,
    /// Examples learned since `published`.
    pending: Option<freshet_model::SequenceRange>,
    /// Its next version begins a chain of its own.
    new_chain: bool,
    traces: TraceSample,
    /// Where it stood at the last live version: what it returns to when the examples learned
    /// since are handed back (a pointer conflict, a hold), so it learns none of them twice.
    saved: Saved,
}

/// A member as it stood at a live version.
#[derive(Clone)]
struct Saved {
    bytes: Vec<u8>,
    window: MetricsWindow,
    published: Option<Manifest>,
    pending: Option<freshet_model::SequenceRange>,
    new_chain: bool,
    /// Live's high-water mark then: the state holds exactly the examples up to it (those it
    /// learned since its own `published`, and before).
    mark: u64,
    n_features: usize,
}

impl Challenger {
    fn save(&self, mark: u64) -> Result<Saved, ModelError> {
        Ok(Saved {
            bytes: self.trainer.to_bytes()?,
            window: self.window.clone(),
            published: self.published.clone(),
            pending: self.pending,
            new_chain: self.new_chain,
            mark,
            n_features: self.trainer.n_features(),
        })
    }

    fn restore(member: usize, config: &ModelConfig, saved: &Saved) -> Option<Challenger> {
        let trainer = ModelTrainer::from_bytes(&saved.bytes, config).ok()?;
        Some(Challenger {
            member,
            trainer,
            window: saved.window.clone(),
            published: saved.published.clone(),
            pending: saved.pending,
            new_chain: saved.new_chain,
            traces: TraceSample::default(),
            saved: saved.clone(),
        })
    }

    /// A member continued from its version `manifest` (which holds live's examples up to
    /// `mark`): its next version follows that one.
    fn resume(
        member: usize,
        config: &ModelConfig,
        manifest: &Manifest,
        bytes: &[u8],
        mark: u64,
        window_size: usize,
    ) -> Option<Challenger> {
        let trainer = ModelTrainer::from_bytes(bytes, config).ok()?;
        let window = MetricsWindow::new(window_size, manifest.metrics.examples_total);
        let saved = Saved {
            bytes: bytes.to_vec(),
            window: window.clone(),
            published: Some(manifest.clone()),
            pending: None,
            new_chain: false,
            mark,
            n_features: trainer.n_features(),
        };
        Some(Challenger {
            member,
            trainer,
            window,
            published: Some(manifest.clone()),
            pending: None,
            new_chain: false,
            traces: TraceSample::default(),
            saved,
        })
    }

    /// A member with fresh parameters beginning after `lineage`'s live version: its first
    /// version follows that one and begins a chain of its own, as a newly declared schema's
    /// does, and its history counts live's examples up to it.
    fn fresh(
        member: usize,
        config: &ModelConfig,
        lineage: &Lineage,
        window_size: usize,
    ) -> Result<Challenger, ModelError> {
        let trainer = ModelTrainer::new(config, lineage.trainer.n_features())?;
        let live = lineage.live.as_ref();
        let mut challenger = Challenger {
            member,
            trainer,
            window: MetricsWindow::new(window_size, live.map_or(0, |m| m.metrics.examples_total)),
            published: live.cloned(),
            pending: None,
            new_chain: live.is_some(),
            traces: TraceSample::default(),
            saved: Saved {
                bytes: Vec::new(),
                window: MetricsWindow::new(window_size, 0),
                published: None,
                pending: None,
                new_chain: false,
                mark: 0,
                n_features: 0,
            },
        };
        challenger.saved = challenger.save(live.map_or(0, |m| m.high_water_mark))?;
        Ok(challenger)
    }

    fn standing(&self) -> Standing {
        let metrics = self.window.snapshot();
        Standing {
            member: self.member,
            accuracy: metrics.prequential_accuracy,
            examples: metrics.window_examples,
        }
    }
}

impl Population {
    fn new(members: Vec<ModelConfig>, config: SelectionConfig) -> Population {
        Population {
            members,
            config,
            selection: Selection::default(),
            challengers: Vec::new(),
            candidate_revision: 0,
            live_saved: None,
        }
    }

    /// Makes the challengers every member but `lineage`'s, each as it stood at live's version:
    /// a challenger saved at live's mark returns to that state; the one the gate promoted
    /// (live is now its version) leaves the challengers and its window continues as live's;
    /// the member live was before joins them from its last version; `named` (the version the
    /// candidate pointer names, as read on start) restores its member; any other begins fresh.
    fn rejoin(
        &mut self,
        model: &ModelName,
        lineage: &mut Lineage,
        named: Option<(Manifest, Vec<u8>)>,
        window_size: usize,
    ) {
        let now = Now {
            live_member: self
                .members
                .iter()
                .position(|c| c == lineage.trainer.config()),
            live_version: lineage.live.as_ref().map(|m| m.version),
            mark: lineage.live.as_ref().map_or(0, |m| m.high_water_mark),
            n_features: lineage.trainer.n_features(),
        };
        let held = |saved: &Saved| Held {
            mark: saved.mark,
            n_features: saved.n_features,
            published: saved.published.as_ref().map(|p| p.version),
        };
        let old = std::mem::take(&mut self.challengers);
        let live_saved = self.live_saved.take();
        let mut promoted = false;
        for (member, config) in self.members.iter().enumerate() {
            let before = old.iter().find(|c| c.member == member);
            let named = named
                .as_ref()
                .filter(|(manifest, _)| manifest.config == *config);
            let origin = population::origin(
                member,
                &now,
                before.map(|c| held(&c.saved)),
                live_saved.as_ref().map(|(m, saved)| (*m, held(saved))),
                named.map(|(manifest, _)| Held {
                    mark: manifest.high_water_mark,
                    n_features: manifest.schema.n_features(),
                    published: Some(manifest.version),
                }),
            );
            let restored = match origin {
                Origin::Promoted => {
                    if let Some(c) = before {
                        lineage.window = c.saved.window.clone();
                    }
                    promoted = true;
                    tracing::info!(model = %model, kind = config.kind.name(), version = ?now.live_version, "live is now this member's lineage");
                    continue;
                }
                Origin::Live => continue,
                Origin::Saved => before.and_then(|c| Challenger::restore(member, config, &c.saved)),
                Origin::WasLive => live_saved
                    .as_ref()
                    .and_then(|(_, saved)| Challenger::restore(member, config, saved)),
                Origin::Named => named.and_then(|(manifest, bytes)| {
                    let c = Challenger::resume(member, config, manifest, bytes, now.mark, window_size);
                    if c.is_some() {
                        tracing::info!(model = %model, kind = config.kind.name(), version = manifest.version, "resuming a member from its candidate version");
                    }
                    c
                }),
                Origin::Fresh => None,
            };
            let challenger = match restored {
                Some(c) => c,
                None => match Challenger::fresh(member, config, lineage, window_size) {
                    Ok(c) => {
                        tracing::info!(model = %model, kind = config.kind.name(), after = ?now.live_version, "a member begins with fresh parameters");
                        c
                    }
                    Err(err) => {
                        tracing::warn!(model = %model, kind = config.kind.name(), error = %err, "cannot begin a member; it sits out");
                        continue;
                    }
                },
            };
            self.challengers.push(challenger);
        }
        if promoted || now.live_member.is_none() {
            self.selection.reset();
        }
    }

    /// Saves every member as it stands at `live`'s new version (live's bytes given).
    fn save(&mut self, lineage: &Lineage, live_bytes: &[u8]) {
        let Some(live) = lineage.live.as_ref() else {
            return;
        };
        let mark = live.high_water_mark;
        if let Some(member) = self
            .members
            .iter()
            .position(|c| c == lineage.trainer.config())
        {
            self.live_saved = Some((
                member,
                Saved {
                    bytes: live_bytes.to_vec(),
                    window: lineage.window.clone(),
                    published: Some(live.clone()),
                    pending: None,
                    new_chain: false,
                    mark,
                    n_features: lineage.trainer.n_features(),
                },
            ));
        }
        self.challengers.retain_mut(|c| match c.save(mark) {
            Ok(saved) => {
                c.saved = saved;
                true
            }
            Err(err) => {
                tracing::warn!(kind = c.trainer.kind().name(), error = %err, "cannot save a member; it sits out");
                false
            }
        });
    }
}

/// Metrics train exports beside the common ones.
#[derive(Clone, Default)]
pub struct TrainMetrics {
    pub versions_deleted: Counter,
    pub batches_refused: Counter,
    pub examples_trained: Counter,
    pub versions_published: Counter,
    pub pointer_conflicts: Counter,
    pub live_version: Gauge,
    pub prequential_accuracy: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub candidate_version: Gauge,
    pub candidates_started: Counter,
    pub learning_rate_restarts: Counter,
    pub reactions_ignored: Counter,
    pub examples_quarantined: Counter,
    pub quarantined: Gauge,
    pub positive_share: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub mean_prediction: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while the model is held (pinned or paused) and train takes no batch.
    pub held: Gauge,
}

impl TrainMetrics {
    pub fn register(&self, metrics: &freshet::metrics::Metrics) {
        metrics.register(
            "batches_refused",
            "Batches whose update was discarded (non-finite loss, gradient or weights)",
            self.batches_refused.clone(),
        );
        metrics.register(
            "versions_deleted",
            "Old versions removed from the object store by the retention policy",
            self.versions_deleted.clone(),
        );
        metrics.register(
            "examples_trained",
            "Examples learned (prequentially scored first)",
            self.examples_trained.clone(),
        );
        metrics.register(
            "versions_published",
            "Model versions written and made live",
            self.versions_published.clone(),
        );
        metrics.register(
            "pointer_conflicts",
            "Live pointer compare-and-set conflicts (another trainer won)",
            self.pointer_conflicts.clone(),
        );
        metrics.register(
            "live_version",
            "The version this trainer last made live",
            self.live_version.clone(),
        );
        metrics.register(
            "candidate_version",
            "The candidate version this trainer last published (0: none)",
            self.candidate_version.clone(),
        );
        metrics.register(
            "candidates_started",
            "Candidates forked from the live model because a drift asked for one",
            self.candidates_started.clone(),
        );
        metrics.register(
            "learning_rate_restarts",
            "Learning-rate schedules restarted because a drift asked for it",
            self.learning_rate_restarts.clone(),
        );
        metrics.register(
            "reactions_ignored",
            "Reactions drift asked for while another was still in flight",
            self.reactions_ignored.clone(),
        );
        metrics.register(
            "examples_quarantined",
            "Examples held out of training as suspect (far outside the learned range, or unreadable)",
            self.examples_quarantined.clone(),
        );
        metrics.register(
            "quarantined",
            "1 while a burst of suspect values lasts (the learned ranges are frozen meanwhile)",
            self.quarantined.clone(),
        );
        metrics.register(
            "held",
            "1 while the model is held (pinned or paused by an operator) and no batch is taken",
            self.held.clone(),
        );
        metrics.register(
            "prequential_accuracy",
            "Accuracy over the recent window, scored before learning",
            self.prequential_accuracy.clone(),
        );
        metrics.register(
            "positive_share",
            "Share of positives among the examples of the recent window, a correction counted as turning its fake negative positive",
            self.positive_share.clone(),
        );
        metrics.register(
            "mean_prediction",
            "Mean prequential probability over the examples of the recent window (beside positive_share and featurize's observed conversion rate: calibration)",
            self.mean_prediction.clone(),
        );
    }
}

/// Where a trainer reads and writes: in production the MODELS bucket (pointers and
/// declarations), JetStream (CONTROL, and the stream the order check reads) and the object store.
pub struct Io<P = Pointers, D = Declarations, C = jetstream::Context, O = OrderGuard> {
    pub subjects: Subjects,
    pub artifacts: ArtifactStore,
    pub pointers: P,
    pub declarations: D,
    pub control: C,
    /// The in-order check on the model's examples and the trainer's consumer.
    pub order: O,
}

pub struct Trainer<P = Pointers, D = Declarations, C = jetstream::Context, O = OrderGuard> {
    pub model: ModelName,
    /// The configured model; a lineage that already exists keeps the configuration its live
    /// version was trained with.
    pub config: ModelConfig,
    pub cadence: Cadence,
    pub window_size: usize,
    pub metrics: TrainMetrics,
    io: Io<P, D, C, O>,
    /// See [`Marks::chain`].
    chain: Option<(u64, u64)>,
    lineage: Option<Lineage>,
    pending: PendingUpdate,
    /// Wakes the retention task (started with the first publish).
    prune_requests: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Reactions drift asked for, applied before the next batch.
    reactions: Option<tokio::sync::mpsc::UnboundedReceiver<(Reaction, u64)>>,
    /// Examples the lineage had learned when the learning rate was last raised.
    raised_at: Option<u64>,
    quality: Quality,
    /// The highest version number this trainer wrote: live and candidate versions share the
    /// numbering, so each takes the next number instead of colliding with the other's.
    last_version: u64,
    /// When this trainer last published a live version.
    last_published: Option<Instant>,
    /// Whether the live model's mean prediction has parted from the share of positives it
    /// learned (logged when that changes).
    miscalibrated: bool,
    /// The model's declared schema as last read (`None`: none declared), and when it was read.
    declared: Option<FeatureSchema>,
    declared_at: Option<Instant>,
    /// A newly declared schema waits for the examples learned under the old one to be
    /// published: the next commit is due at once.
    flush: bool,
    /// The model's hold (pin or pause) as last read, and when it was read.
    hold: Option<Hold>,
    hold_read_at: Option<Instant>,
    /// The lineage in memory may no longer be live's (the model was held: what was learned was
    /// thrown away, or live was pinned elsewhere): it is loaded again before the next batch.
    reload: bool,
    /// The members learning beside live, when the model has a population.
    population: Option<Population>,
}

/// Whether a batch can be planned now.
enum Footing {
    Ready,
    /// The examples learned under the previous schema are being published first.
    Flushing,
}

impl<P, D, C, O> Trainer<P, D, C, O>
where
    P: PointerStore + Clone + 'static,
    D: DeclarationStore,
    C: ControlSink,
    O: OrderCheck,
{
    pub fn new(
        model: ModelName,
        config: ModelConfig,
        cadence: Cadence,
        window_size: usize,
        io: Io<P, D, C, O>,
        metrics: TrainMetrics,
        quality: Quality,
    ) -> Self {
        Trainer {
            model,
            config,
            cadence,
            window_size,
            metrics,
            io,
            chain: None,
            lineage: None,
            pending: PendingUpdate::default(),
            prune_requests: None,
            reactions: None,
            raised_at: None,
            quality,
            last_version: 0,
            last_published: None,
            miscalibrated: false,
            declared: None,
            declared_at: None,
            flush: false,
            hold: None,
            hold_read_at: None,
            reload: false,
            population: None,
        }
    }

    /// Trains `members` (configurations; see [`crate::population::members`]) beside live, and
    /// offers the challenger `selection` chooses as the candidate after each live version.
    pub fn with_population(&mut self, members: Vec<ModelConfig>, selection: SelectionConfig) {
        self.population = (members.len() > 1).then(|| Population::new(members, selection));
    }

    /// Makes the population's challengers follow the lineage now in memory (see
    /// [`Population::rejoin`]), reading the candidate pointer: its revision, and on start the
    /// member version it names.
    async fn rejoin_population(&mut self, on_start: bool) -> anyhow::Result<()> {
        let Some(mut population) = self.population.take() else {
            return Ok(());
        };
        let outcome = async {
            let pointer = self.io.pointers.get(&self.model, Slot::Candidate).await?;
            population.candidate_revision = pointer.revision;
            let Some(lineage) = self.lineage.as_mut() else {
                population.challengers.clear();
                return Ok(());
            };
            let mut named = None;
            if on_start && let Some(candidate) = pointer.value {
                match self.io.artifacts.load(&self.model, candidate.version).await {
                    Ok((manifest, bytes)) => named = Some((manifest, bytes.to_vec())),
                    Err(err) => {
                        tracing::warn!(model = %self.model, version = candidate.version, error = %err, "cannot load the candidate; its member begins fresh")
                    }
                }
            }
            population.rejoin(&self.model, lineage, named, self.window_size);
            anyhow::Ok(())
        }
        .await;
        self.population = Some(population);
        outcome
    }

    /// After a live version: offers the chosen challenger as the candidate (unless a candidate
    /// forked for a drift holds the slot), then saves every member as it stands.
    async fn offer_challenger(&mut self, live_bytes: &[u8]) {
        let Some(mut population) = self.population.take() else {
            return;
        };
        if let Some(lineage) = self.lineage.as_ref() {
            let live = lineage.window.snapshot();
            let live = Standing {
                member: usize::MAX,
                accuracy: live.prequential_accuracy,
                examples: live.window_examples,
            };
            let standings: Vec<Standing> = population
                .challengers
                .iter()
                .map(Challenger::standing)
                .collect();
            let before = population.selection.chosen();
            let offer = population
                .selection
                .choose(&population.config, &live, &standings);
            if population.selection.chosen() != before
                && let Some(chosen) = population.selection.chosen()
            {
                tracing::info!(model = %self.model, kind = population.members[chosen].kind.name(),
                    live_accuracy = live.accuracy, "the population's leading challenger changed");
            }
            if let Some(member) = offer
                && lineage.candidate.is_none()
            {
                self.publish_challenger(&mut population, member).await;
            }
        }
        if let Some(lineage) = self.lineage.as_ref() {
            population.save(lineage, live_bytes);
        }
        self.population = Some(population);
    }

    /// Writes challenger `member`'s new version and moves `<model>.candidate` to it. Best
    /// effort, as for a candidate forked for a drift: a version that cannot be written or
    /// pointed at is left as an orphan, and the member's next version covers its examples.
    async fn publish_challenger(&mut self, population: &mut Population, member: usize) {
        let Some(lineage) = self.lineage.as_ref() else {
            return;
        };
        let Some(challenger) = population
            .challengers
            .iter_mut()
            .find(|c| c.member == member)
        else {
            return;
        };
        let Some(range) = challenger.pending else {
            return;
        };
        let bytes = match challenger.trainer.to_bytes() {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(model = %self.model, error = %err, "cannot encode a challenger");
                return;
            }
        };
        let mut manifest = handler::next_manifest(
            NextVersion {
                model: &self.model,
                parent: challenger.published.as_ref(),
                config: *challenger.trainer.config(),
                schema: lineage.schema.clone(),
                step: challenger.trainer.step(),
                learned: range,
                metrics: challenger.window.snapshot(),
                created_at: Utc::now(),
                new_chain: challenger.new_chain,
                traces: challenger.traces.to_strings(),
            },
            &bytes,
        );
        manifest.version = manifest.version.max(self.last_version + 1);
        if let Err(failure) =
            store_version(&self.io.artifacts, &self.model, &mut manifest, &bytes).await
        {
            tracing::warn!(model = %self.model, error = %failure, "cannot store a challenger; it is offered with the next version");
            return;
        }
        self.last_version = manifest.version;
        let reason = format!("train: population member {}", manifest.config.kind.name());
        match self
            .io
            .pointers
            .move_to(
                &self.model,
                Slot::Candidate,
                &Verified::held(&manifest),
                Cause::Candidate,
                &reason,
                population.candidate_revision,
            )
            .await
        {
            Ok(revision) => {
                tracing::info!(model = %self.model, version = manifest.version, kind = manifest.config.kind.name(),
                    high_water_mark = manifest.high_water_mark, accuracy = manifest.metrics.prequential_accuracy,
                    "published a challenger as the candidate");
                self.metrics.candidate_version.set(manifest.version as i64);
                population.candidate_revision = revision;
                challenger.published = Some(manifest);
                challenger.pending = None;
                challenger.new_chain = false;
                challenger.traces = TraceSample::default();
            }
            Err(CasError::Conflict { .. }) => {
                // Withdrawn or promoted by the gate, or moved by hand: offered again at the
                // next version against the pointer as it stands then.
                tracing::info!(model = %self.model, "the candidate pointer moved; the challenger is offered again with the next version");
                if let Ok(pointer) = self.io.pointers.get(&self.model, Slot::Candidate).await {
                    population.candidate_revision = pointer.revision;
                }
            }
            Err(CasError::Failed(failure)) => {
                tracing::warn!(model = %self.model, error = %failure, "cannot move the candidate pointer; the challenger is offered again with the next version");
            }
        }
    }

    /// Where the reactions drift requests arrive.
    pub fn listen(&mut self, reactions: tokio::sync::mpsc::UnboundedReceiver<(Reaction, u64)>) {
        self.reactions = Some(reactions);
    }

    /// Applies the reactions that arrived since the last batch.
    async fn react(&mut self) {
        let mut requested = Vec::new();
        if let Some(reactions) = self.reactions.as_mut() {
            while let Ok(reaction) = reactions.try_recv() {
                requested.push(reaction);
            }
        }
        for (reaction, sequence) in requested {
            let Some(lineage) = self.lineage.as_mut() else {
                tracing::info!(model = %self.model, %reaction, "no model yet; nothing to react with");
                continue;
            };
            // One reaction in flight per model: a second request (a repeated record, another
            // episode) waits until the first has run its course.
            let learned = lineage.window.snapshot().examples_total;
            if reaction != Reaction::Alert
                && let Some(busy) = handler::reaction_in_flight(
                    lineage.candidate.is_some(),
                    self.raised_at,
                    learned,
                    self.window_size as u64,
                )
            {
                self.metrics.reactions_ignored.inc();
                tracing::info!(model = %self.model, %reaction, sequence, busy, "drift asks for a reaction while another is in flight; ignored");
                continue;
            }
            match reaction {
                Reaction::Alert => {}
                Reaction::RaiseLr => match lineage.trainer.restarted() {
                    Ok(restarted) => {
                        lineage.trainer = restarted;
                        self.raised_at = Some(learned);
                        self.metrics.learning_rate_restarts.inc();
                        tracing::info!(model = %self.model, "drift: learning-rate schedule restarted at its initial rate");
                    }
                    Err(err) => {
                        tracing::warn!(model = %self.model, error = %err, "cannot restart the learning rate")
                    }
                },
                Reaction::TrainCandidate => {
                    let revision = match self.io.pointers.get(&self.model, Slot::Candidate).await {
                        Ok(pointer) => pointer.revision,
                        Err(failure) => {
                            tracing::warn!(model = %self.model, error = %failure, "cannot read the candidate pointer; no candidate this time");
                            continue;
                        }
                    };
                    match lineage.trainer.restarted() {
                        Ok(trainer) => {
                            lineage.candidate = Some(Candidate {
                                trainer,
                                published: lineage.live.clone(),
                                pointer_revision: revision,
                                pending: self.pending.range,
                                traces: self.pending.traces.clone(),
                                forked: true,
                                // The candidate's history is live's up to the fork.
                                window: MetricsWindow::new(
                                    self.window_size,
                                    lineage.window.snapshot().examples_total,
                                ),
                            });
                            self.metrics.candidates_started.inc();
                            tracing::info!(model = %self.model, from = lineage.live.as_ref().map(|m| m.version),
                                "drift: training a candidate beside the live model");
                        }
                        Err(err) => {
                            tracing::warn!(model = %self.model, error = %err, "cannot fork a candidate")
                        }
                    }
                }
            }
        }
    }

    /// Reads the declared schema when the last reading is older than [`DECLARATION_REFRESH`],
    /// or when an example of the batch does not follow it (it may have changed just before).
    async fn read_declaration(&mut self, rows: &[Row]) -> Result<(), Failure> {
        let stale = self
            .declared_at
            .is_none_or(|at| at.elapsed() >= DECLARATION_REFRESH);
        let surprised = handler::surprises(rows, self.declared.as_ref());
        if !stale && !surprised {
            return Ok(());
        }
        match self.io.declarations.declared(&self.model).await {
            Ok(read) => {
                if read.value != self.declared {
                    match &read.value {
                        Some(schema) => {
                            tracing::info!(model = %self.model, schema = %schema.name, version = schema.version, features = schema.n_features(), "declared schema read")
                        }
                        None => {
                            tracing::warn!(model = %self.model, "the model has no declared schema")
                        }
                    }
                }
                self.declared = read.value;
                self.declared_at = Some(Instant::now());
                Ok(())
            }
            // A declaration read earlier (or the lineage's schema) still holds for examples that
            // follow it; a surprise must wait for the answer.
            Err(failure) if !surprised && (self.declared.is_some() || self.lineage.is_some()) => {
                tracing::warn!(model = %self.model, error = %failure, "cannot read the declared schema; keeping the one read before");
                Ok(())
            }
            Err(failure) => Err(failure),
        }
    }

    /// Makes the lineage follow the declaration: begins one under the declared schema when
    /// there is none, and a new chain when the declaration names other inputs than the lineage
    /// was trained on (once what was learned under the old one is published).
    fn settle_schema(&mut self) -> Result<Footing, Rejection> {
        let trained = self.lineage.as_ref().map(|l| &l.schema);
        match handler::schema_choice(self.declared.as_ref(), trained) {
            SchemaChoice::Undeclared => Ok(Footing::Ready),
            SchemaChoice::Continue(schema) => {
                match self.lineage.as_mut() {
                    Some(lineage) => lineage.schema = schema,
                    None => {
                        self.lineage = Some(self.fresh_lineage(schema, None, 0)?);
                        self.seed_population();
                    }
                }
                Ok(Footing::Ready)
            }
            SchemaChoice::NewChain(schema) => {
                if self.pending.range.is_some() {
                    self.flush = true;
                    return Ok(Footing::Flushing);
                }
                let (live, revision) = self
                    .lineage
                    .take()
                    .map_or((None, 0), |old| (old.live, old.pointer_revision));
                tracing::warn!(model = %self.model, schema = %schema.name, version = schema.version, features = schema.n_features(),
                    follows = ?live.as_ref().map(|m| m.version), "a new schema is declared; beginning a new chain of versions under it");
                self.lineage = Some(self.fresh_lineage(schema, live, revision)?);
                self.seed_population();
                Ok(Footing::Ready)
            }
        }
    }

    /// Begins the population's challengers beside a lineage just begun (no example learned
    /// since its live version, so nothing is pending).
    fn seed_population(&mut self) {
        if let (Some(population), Some(lineage)) = (self.population.as_mut(), self.lineage.as_mut())
        {
            population.rejoin(&self.model, lineage, None, self.window_size);
        }
    }

    /// A lineage with fresh parameters under `schema`, whose first version follows `live` (if
    /// any) and begins a chain of its own when it does.
    fn fresh_lineage(
        &self,
        schema: FeatureSchema,
        live: Option<Manifest>,
        pointer_revision: u64,
    ) -> Result<Lineage, Rejection> {
        let trainer = ModelTrainer::new(&self.config, schema.n_features()).map_err(|err| {
            Rejection::new(RejectReason::SchemaMismatch, "features", err.to_string())
        })?;
        Ok(Lineage {
            trainer,
            schema,
            new_chain: live.is_some(),
            live,
            pointer_revision,
            window: MetricsWindow::new(self.window_size, 0),
            candidate: None,
        })
    }

    /// Reads the model's hold when the last reading is older than [`HOLD_REFRESH`] (or at once
    /// when `now`). Returns whether the model is held. A hold that cannot be read keeps the
    /// last reading; with none yet the batch is retried.
    async fn read_hold(&mut self, now: bool) -> Result<bool, Failure> {
        let stale = now
            || self
                .hold_read_at
                .is_none_or(|at| at.elapsed() >= HOLD_REFRESH);
        if stale {
            match self.io.pointers.hold(&self.model).await {
                Ok(read) => {
                    if read.value != self.hold {
                        match &read.value {
                            Some(hold) => {
                                tracing::warn!(model = %self.model, hold = %hold.describe(), by = %hold.by, reason = %hold.reason, "the model is held: no batch is taken until it is released")
                            }
                            None => {
                                tracing::info!(model = %self.model, "the model's hold was released; learning resumes from the live version")
                            }
                        }
                    }
                    self.hold = read.value;
                    self.hold_read_at = Some(Instant::now());
                }
                Err(failure) if self.hold_read_at.is_some() => {
                    tracing::warn!(model = %self.model, error = %failure, "cannot read the model's hold; keeping the one read before");
                }
                Err(failure) => return Err(failure),
            }
        }
        let held = self.hold.as_ref().is_some_and(Hold::stops_training);
        self.metrics.held.set(i64::from(held));
        if held {
            self.reload = true;
        }
        Ok(held)
    }

    /// Throws away what was learned since the live version (the model is held): the messages
    /// holding it are handed back, and the lineage is loaded again once the hold is released.
    fn abandon_pending(&mut self) -> Commit {
        tracing::info!(model = %self.model, examples = ?self.pending.range, "the model is held; handing back the examples learned since the live version");
        self.pending = PendingUpdate::default();
        self.flush = false;
        self.chain = None;
        self.reload = true;
        Commit::Abandoned
    }

    /// Loads live (and the candidate) again after a hold: live may have been pinned to another
    /// version, and what was learned in memory was thrown away.
    async fn reload_after_hold(&mut self) -> anyhow::Result<()> {
        self.lineage = self.load_live().await?;
        self.pending = PendingUpdate::default();
        self.chain = None;
        self.flush = false;
        self.resume_candidate().await?;
        self.rejoin_population(false).await?;
        if let Some(live) = self.lineage.as_ref().and_then(|l| l.live.as_ref()) {
            tracing::info!(model = %self.model, version = live.version, high_water_mark = live.high_water_mark, "resuming from the live version after a hold");
            self.metrics.live_version.set(live.version as i64);
        }
        self.reload = false;
        Ok(())
    }

    fn marks(&self) -> Marks {
        Marks {
            high_water_mark: self
                .lineage
                .as_ref()
                .and_then(|l| l.live.as_ref())
                .map_or(0, |m| m.high_water_mark),
            pending_last: self.pending.range.map(|r| r.last),
            chain: self.chain,
        }
    }

    /// Asks the stream, in order, about the new examples that do not directly follow the one
    /// before them; returns the first that must wait, with why.
    async fn admit(&self, marks: &Marks, rows: &[Row]) -> Option<(usize, Failure)> {
        for lookup in handler::lookups(marks, rows) {
            let mut after = lookup.after;
            if let Err(failure) = self
                .io
                .order
                .admit(lookup.sequence, &mut after, "train")
                .await
            {
                return Some((lookup.index, failure));
            }
        }
        None
    }

    /// Learns the planned rows with the live model (and the candidate, if one trains). Returns
    /// why the update was discarded, if it was: the model is then unchanged.
    async fn learn(&mut self, plan: &BatchPlan, batch: &[Incoming]) -> Option<Rejection> {
        if plan.learn.is_empty() {
            return None;
        }
        let lineage = self
            .lineage
            .as_mut()
            .expect("rows are only planned for learning under a schema, which a lineage has");
        let (rows, labels, weighting) = (&plan.features, &plan.labels, &plan.weighting);
        // burn is blocking CPU work: keep it off the async workers' hot path.
        match tokio::task::block_in_place(|| {
            lineage
                .trainer
                .train_weighted_batch(rows, labels, weighting)
        }) {
            Ok(report) => {
                lineage.window.record(&report, labels, weighting);
                self.metrics.examples_trained.inc_by(report.examples as u64);
                self.pending.batches += 1;
                let traces = plan.learn.iter().filter_map(|&i| batch[i].trace.as_ref());
                for trace in traces.clone() {
                    self.pending.traces.add(trace.trace_id());
                }
                if let Some(population) = self.population.as_mut() {
                    // Every member learns the batch live learned, each scoring a row before
                    // its own step on it.
                    population.challengers.retain_mut(|challenger| {
                        match tokio::task::block_in_place(|| {
                            challenger
                                .trainer
                                .train_weighted_batch(rows, labels, weighting)
                        }) {
                            Ok(report) => {
                                challenger.window.record(&report, labels, weighting);
                                for trace in traces.clone() {
                                    challenger.traces.add(trace.trace_id());
                                }
                                true
                            }
                            Err(err) => {
                                tracing::warn!(model = %self.model, kind = challenger.trainer.kind().name(), error = %err,
                                    "a challenger refused a batch live took; it sits out until live's next reload");
                                false
                            }
                        }
                    });
                }
                if let Some(candidate) = lineage.candidate.as_mut() {
                    match tokio::task::block_in_place(|| {
                        candidate
                            .trainer
                            .train_weighted_batch(rows, labels, weighting)
                    }) {
                        Ok(report) => {
                            candidate.window.record(&report, labels, weighting);
                            for trace in traces {
                                candidate.traces.add(trace.trace_id());
                            }
                        }
                        Err(err) => {
                            tracing::warn!(model = %self.model, error = %err, "the candidate refused a batch the live model took; dropping the candidate");
                            lineage.candidate = None;
                        }
                    }
                }
                None
            }
            Err(err) => {
                // The update was discarded (the model is unchanged); the examples are kept on
                // the dead-letter subject for review instead of being retried forever.
                tracing::warn!(model = %self.model, error = %err, examples = rows.len(), "batch refused; model unchanged");
                self.metrics.batches_refused.inc();
                let sequences: Vec<u64> = plan
                    .learn
                    .iter()
                    .map(|&i| batch[i].stream_sequence)
                    .collect();
                self.report_refused_batch(&sequences, &err).await;
                Some(handler::refusal(&err))
            }
        }
    }

    /// Adds the batch's handled examples to the update not published yet (and the candidate's).
    fn book(&mut self, plan: &BatchPlan) {
        let Some(range) = plan.handled else {
            return;
        };
        if let Some(candidate) = self.lineage.as_mut().and_then(|l| l.candidate.as_mut()) {
            candidate.pending = Some(handler::widen(candidate.pending, range));
        }
        for challenger in self
            .population
            .iter_mut()
            .flat_map(|p| p.challengers.iter_mut())
        {
            challenger.pending = Some(handler::widen(challenger.pending, range));
        }
        // Refused examples count as handled: the next version's mark covers them too.
        self.pending.range = Some(handler::widen(self.pending.range, range));
        if self.pending.since.is_none() {
            let oldest = plan.oldest_stored.map_or(Duration::ZERO, |stored| {
                (Utc::now() - stored).to_std().unwrap_or_default()
            });
            let since_last = self.last_published.map(|at| at.elapsed());
            let age = handler::pending_age(oldest, since_last);
            self.pending.since = Some(Instant::now().checked_sub(age).unwrap_or_else(Instant::now));
        }
        self.chain = plan.chain;
    }

    /// Resumes the candidate the pointer names if it holds exactly the live version's examples
    /// (both were published together); a candidate left behind by a crash between the two writes
    /// is not continued, and the gate withdraws it in time.
    async fn resume_candidate(&mut self) -> anyhow::Result<()> {
        let Some(lineage) = self.lineage.as_mut() else {
            return Ok(());
        };
        let Some(live) = lineage.live.as_ref() else {
            return Ok(());
        };
        let pointer = self.io.pointers.get(&self.model, Slot::Candidate).await?;
        let Some(candidate) = pointer.value else {
            return Ok(());
        };
        let (manifest, bytes) = self
            .io
            .artifacts
            .load(&self.model, candidate.version)
            .await?;
        if manifest.high_water_mark != live.high_water_mark {
            tracing::warn!(model = %self.model, candidate = manifest.version, "the candidate does not hold the live version's examples; not continuing it");
            return Ok(());
        }
        if manifest.config != *lineage.trainer.config() {
            // Another kind than live's: a population member's version (the population resumes
            // it), not a copy of live forked for a drift.
            tracing::info!(model = %self.model, candidate = manifest.version, kind = manifest.config.kind.name(), "the candidate is another configuration than live's; not continuing it as live's copy");
            return Ok(());
        }
        let trainer = ModelTrainer::from_bytes(&bytes, lineage.trainer.config())?;
        tracing::info!(model = %self.model, version = manifest.version, "resuming the candidate");
        lineage.candidate = Some(Candidate {
            trainer,
            window: MetricsWindow::new(self.window_size, manifest.metrics.examples_total),
            published: Some(manifest),
            pointer_revision: pointer.revision,
            pending: None,
            forked: false,
            traces: TraceSample::default(),
        });
        Ok(())
    }

    /// Writes the candidate's new version and moves `<model>.candidate` to it. Best effort: the
    /// live version is committed already; a candidate that cannot be written is dropped.
    async fn publish_candidate(&mut self) {
        let Some(lineage) = self.lineage.as_mut() else {
            return;
        };
        let Some(candidate) = lineage.candidate.as_mut() else {
            return;
        };
        let Some(range) = candidate.pending else {
            return;
        };
        let bytes = match candidate.trainer.to_bytes() {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(model = %self.model, error = %err, "cannot encode the candidate; dropping it");
                lineage.candidate = None;
                return;
            }
        };
        let mut manifest = handler::next_manifest(
            NextVersion {
                model: &self.model,
                parent: candidate.published.as_ref(),
                config: *candidate.trainer.config(),
                schema: lineage.schema.clone(),
                step: candidate.trainer.step(),
                learned: range,
                metrics: candidate.window.snapshot(),
                created_at: Utc::now(),
                new_chain: candidate.forked,
                traces: candidate.traces.to_strings(),
            },
            &bytes,
        );
        let expected = candidate.pointer_revision;
        manifest.version = manifest.version.max(self.last_version + 1);
        if let Err(failure) =
            store_version(&self.io.artifacts, &self.model, &mut manifest, &bytes).await
        {
            tracing::warn!(model = %self.model, error = %failure, "cannot store the candidate; it is published with the next version");
            return;
        }
        self.last_version = manifest.version;
        let lineage = self.lineage.as_mut().expect("checked above");
        // This trainer wrote and hashed the bytes it points at.
        match self
            .io
            .pointers
            .move_to(
                &self.model,
                Slot::Candidate,
                &Verified::held(&manifest),
                Cause::Candidate,
                "train: candidate after a drift",
                expected,
            )
            .await
        {
            Ok(revision) => {
                let candidate = lineage.candidate.as_mut().expect("checked above");
                tracing::info!(model = %self.model, version = manifest.version, high_water_mark = manifest.high_water_mark,
                    accuracy = manifest.metrics.prequential_accuracy, "published a candidate version");
                self.metrics.candidate_version.set(manifest.version as i64);
                candidate.pointer_revision = revision;
                candidate.published = Some(manifest);
                candidate.pending = None;
                candidate.traces = TraceSample::default();
                candidate.forked = false;
            }
            Err(CasError::Conflict { .. }) => {
                tracing::info!(model = %self.model, "the candidate pointer moved (withdrawn or promoted); dropping the candidate");
                lineage.candidate = None;
                self.metrics.candidate_version.set(0);
            }
            Err(CasError::Failed(failure)) => {
                tracing::warn!(model = %self.model, error = %failure, "cannot move the candidate pointer; it is retried with the next version");
            }
        }
    }

    /// Tells CONTROL that the quarantine started or ended, with its counts.
    async fn announce_quarantine(&self, transition: &Transition, sequence: u64) {
        let record = QuarantineRecord {
            kind: KIND_QUARANTINE.to_string(),
            model: self.model.clone(),
            state: transition.change.as_str().to_string(),
            sequence,
            flagged_share: transition.flagged_share,
            suspect_held_out: transition.suspect_held_out,
            valid_learned: transition.valid_learned,
            at: Utc::now(),
        };
        let body = serde_json::to_vec(&record).expect("a quarantine record is plain data");
        let id = format!("quarantine-{}-{}-{sequence}", self.model, record.state);
        let subject = self.io.subjects.control(&self.model, KIND_QUARANTINE);
        if let Err(err) = self
            .io
            .control
            .send(subject, Some(id), Bytes::from(body))
            .await
        {
            tracing::warn!(error = %err, "cannot report the quarantine on CONTROL");
        }
    }

    /// Loads the live version, if any, so training continues its lineage and schedule, and
    /// reads the declared schema.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.lineage = self.load_live().await?;
        let declared = self.io.declarations.declared(&self.model).await?;
        self.declared = declared.value;
        self.declared_at = Some(Instant::now());
        match &self.declared {
            Some(schema) => {
                tracing::info!(model = %self.model, schema = %schema.name, version = schema.version, features = schema.n_features(), "declared schema")
            }
            None if self.lineage.is_some() => {
                tracing::warn!(model = %self.model, "no declared schema; learning under the live version's until one is declared")
            }
            None => {
                tracing::warn!(model = %self.model, "no declared schema: examples are refused as undeclared until one is declared (freshet models declare)")
            }
        }
        self.resume_candidate().await?;
        self.rejoin_population(true).await?;
        if let Some(live) = self.lineage.as_ref().and_then(|l| l.live.as_ref()) {
            tracing::info!(model = %self.model, version = live.version, high_water_mark = live.high_water_mark, "resuming from the live version");
            self.metrics.live_version.set(live.version as i64);
        }
        Ok(())
    }

    async fn load_live(&self) -> anyhow::Result<Option<Lineage>> {
        let pointer = self.io.pointers.get(&self.model, Slot::Live).await?;
        let Some(live) = pointer.value else {
            return Ok(None);
        };
        let (manifest, bytes) = self
            .io
            .artifacts
            .load(&self.model, live.version)
            .await
            .with_context(|| format!("loading live version {} of {}", live.version, self.model))?;
        // The lineage continues as it was trained: a changed configuration (another kind, say)
        // applies to a new model name, not halfway through a lineage.
        let config = manifest.config;
        if config != self.config {
            tracing::warn!(model = %self.model, live = ?config, configured = ?self.config,
                "the live version was trained with another configuration; continuing with its own");
        }
        let trainer = ModelTrainer::from_bytes(&bytes, &config)
            .with_context(|| format!("decoding live version {} of {}", live.version, self.model))?;
        Ok(Some(Lineage {
            trainer,
            schema: manifest.schema.clone(),
            window: MetricsWindow::new(self.window_size, manifest.metrics.examples_total),
            pointer_revision: pointer.revision,
            live: Some(manifest),
            candidate: None,
            new_chain: false,
        }))
    }

    async fn publish(&mut self) -> Result<Commit, Failure> {
        let Some(range) = self.pending.range else {
            return Ok(Commit::Durable);
        };
        let Some(lineage) = self.lineage.as_ref() else {
            // Every example so far was refused (no schema is declared): the refusals are
            // durable once dead-lettered. The range stays, so the first version covers it; the
            // next commit falls due with the next refusals.
            self.pending.since = None;
            self.pending.batches = 0;
            return Ok(Commit::Durable);
        };
        let bytes = lineage
            .trainer
            .to_bytes()
            .map_err(|e| Failure::new("encode model", e))?;
        let mut manifest = handler::next_manifest(
            NextVersion {
                model: &self.model,
                parent: lineage.live.as_ref(),
                config: *lineage.trainer.config(),
                schema: lineage.schema.clone(),
                step: lineage.trainer.step(),
                learned: range,
                metrics: lineage.window.snapshot(),
                created_at: Utc::now(),
                new_chain: lineage.new_chain,
                traces: self.pending.traces.to_strings(),
            },
            &bytes,
        );
        manifest.version = manifest.version.max(self.last_version + 1);
        store_version(&self.io.artifacts, &self.model, &mut manifest, &bytes).await?;
        self.last_version = manifest.version;
        // This trainer wrote and hashed the bytes it points at.
        let revision = match self
            .io
            .pointers
            .move_to(
                &self.model,
                Slot::Live,
                &Verified::held(&manifest),
                Cause::Train,
                "train",
                lineage.pointer_revision,
            )
            .await
        {
            Ok(revision) => revision,
            Err(CasError::Conflict { .. }) => {
                // Another trainer moved the pointer: its history wins. Reload it and let the held
                // examples be redelivered and learned on top of it.
                self.metrics.pointer_conflicts.inc();
                tracing::warn!(model = %self.model, "live pointer moved by another writer; reloading and retrying the held examples");
                self.pending = PendingUpdate::default();
                self.flush = false;
                self.lineage = self
                    .load_live()
                    .await
                    .map_err(|e| Failure::new("reload live version", e))?;
                // A promoted challenger is live now: the members return to where they stood at
                // the last version, and live continues as the promoted one's lineage.
                self.rejoin_population(false)
                    .await
                    .map_err(|e| Failure::new("rejoin the population", e))?;
                return Ok(Commit::Abandoned);
            }
            Err(CasError::Failed(failure)) => return Err(failure),
        };
        tracing::info!(model = %self.model, version = manifest.version, first = range.first, last = range.last,
            accuracy = manifest.metrics.prequential_accuracy, traces = %manifest.traces.join(","),
            "published a new live version");
        self.announce(&manifest).await;
        self.metrics.versions_published.inc();
        self.metrics.live_version.set(manifest.version as i64);
        self.metrics
            .prequential_accuracy
            .set(manifest.metrics.prequential_accuracy);
        self.watch_calibration(&manifest.metrics);
        let lineage = self
            .lineage
            .as_mut()
            .expect("checked at the top of publish");
        lineage.pointer_revision = revision;
        lineage.live = Some(manifest);
        lineage.new_chain = false;
        self.pending = PendingUpdate::default();
        self.flush = false;
        self.last_published = Some(Instant::now());
        self.publish_candidate().await;
        self.offer_challenger(&bytes).await;
        self.prune_in_background();
        Ok(Commit::Durable)
    }

    /// Exports the window's positive share and mean prediction, and says in the log when they
    /// part by more than [`freshet_features::labels::PARTED_FACTOR`] and when they meet again.
    fn watch_calibration(&mut self, metrics: &freshet_model::TrainingMetrics) {
        let (Some(share), Some(mean)) = (metrics.positive_share, metrics.mean_prediction) else {
            return;
        };
        self.metrics.positive_share.set(share);
        self.metrics.mean_prediction.set(mean);
        if metrics.window_examples < freshet_features::labels::MIN_VIEWS_TO_COMPARE {
            return;
        }
        match freshet_features::labels::calibration_warning(
            mean,
            share,
            "the share of positives it learned",
        ) {
            Some(warning) if !self.miscalibrated => {
                self.miscalibrated = true;
                tracing::warn!(model = %self.model, mean_prediction = mean, positive_share = share, "{warning}");
            }
            None if self.miscalibrated => {
                self.miscalibrated = false;
                tracing::info!(model = %self.model, mean_prediction = mean, positive_share = share, "the model's mean prediction meets the share of positives it learned again");
            }
            _ => {}
        }
    }

    /// Asks for a retention pass off the training path. Requests made while a pass runs, or
    /// within [`RETENTION_PASS_INTERVAL`] after it, are folded into one more pass, so the last
    /// publish is always followed by one; a failed pass is only logged (nothing depends on
    /// deletion).
    fn prune_in_background(&mut self) {
        if self.cadence.retention.keep_newest == 0 {
            return;
        }
        let requests = self.prune_requests.get_or_insert_with(|| {
            let requests = std::sync::Arc::new(tokio::sync::Notify::new());
            let (model, artifacts, pointers) = (
                self.model.clone(),
                self.io.artifacts.clone(),
                self.io.pointers.clone(),
            );
            let (keep, deleted) = (
                self.cadence.retention,
                self.metrics.versions_deleted.clone(),
            );
            let wakeups = requests.clone();
            tokio::spawn(async move {
                loop {
                    wakeups.notified().await;
                    match prune(&model, &artifacts, &pointers, keep).await {
                        Ok(n) => {
                            deleted.inc_by(n);
                        }
                        Err(err) => {
                            tracing::warn!(model = %model, error = %err, "retention pass failed");
                        }
                    }
                    tokio::time::sleep(RETENTION_PASS_INTERVAL).await;
                }
            });
            requests
        });
        requests.notify_one();
    }

    /// Tells CONTROL that a batch's update was discarded, naming its examples' sequences. The
    /// message id makes a redelivered batch's report a duplicate, not a second report.
    async fn report_refused_batch(&self, sequences: &[u64], error: &ModelError) {
        let (first, last) = (
            sequences.iter().min().copied().unwrap_or_default(),
            sequences.iter().max().copied().unwrap_or_default(),
        );
        let body = json!({
            "kind": "batch_refused", "model": self.model, "first": first, "last": last,
            "examples": sequences.len(), "error": error.to_string(), "at": Utc::now(),
        });
        let id = format!("refused-{}-{first}-{last}", self.model);
        let subject = self.io.subjects.control(&self.model, "refused_batch");
        let body = Bytes::from(body.to_string());
        if let Err(err) = self.io.control.send(subject, Some(id), body).await {
            tracing::warn!(error = %err, "cannot report the refused batch on CONTROL");
        }
    }

    /// Tells CONTROL about the new version. Best effort: the pointer is the source of truth.
    async fn announce(&self, manifest: &Manifest) {
        let body = json!({
            "kind": "version_published", "model": manifest.model, "version": manifest.version,
            "parent": manifest.parent, "learned": manifest.learned, "high_water_mark": manifest.high_water_mark,
            "metrics": manifest.metrics, "created_at": manifest.created_at,
        });
        let subject = self.io.subjects.control(&self.model, "version");
        let body = Bytes::from(body.to_string());
        if let Err(err) = self.io.control.send(subject, None, body).await {
            tracing::warn!(error = %err, "cannot announce the new version on CONTROL");
        }
    }
}

/// Writes a new version, taking the next free number if another writer (an orphan of a crash,
/// or the candidate) holds this one.
async fn store_version(
    artifacts: &ArtifactStore,
    model: &ModelName,
    manifest: &mut Manifest,
    bytes: &[u8],
) -> Result<(), Failure> {
    for _ in 0..8 {
        match artifacts.put_version(manifest, bytes).await {
            Ok(()) => return Ok(()),
            Err(ArtifactError::VersionExists { .. }) => {
                let taken = artifacts
                    .versions(model)
                    .await
                    .map_err(|e| Failure::new("list versions", e))?;
                let next = taken.last().copied().unwrap_or(0).max(manifest.version) + 1;
                tracing::info!(model = %model, taken = manifest.version, next, "version number taken (an orphan, or the candidate); using the next one");
                manifest.version = next;
            }
            Err(e) => {
                return Err(Failure::new(
                    format!("store version {} of {}", manifest.version, model),
                    e,
                ));
            }
        }
    }
    Err(Failure::new(
        "store version",
        "no free version number after 8 attempts",
    ))
}

/// The least time between two retention passes. Each pass reads the pointers' histories, and
/// each reading is a consumer the server creates and keeps until it idles out: one pass per
/// publish, at dozens of versions a second, left hundreds of them on MODELS and cost the server
/// more CPU per event than the events themselves (the pipeline benchmark). Deleting a few
/// seconds late costs nothing.
const RETENTION_PASS_INTERVAL: Duration = Duration::from_secs(2);

/// Deletes the versions the retention policy lets go and returns how many. A version a pointer
/// names now or in its kept history stays, so rollback always finds its target.
async fn prune(
    model: &ModelName,
    artifacts: &ArtifactStore,
    pointers: &impl PointerStore,
    retention: Retention,
) -> anyhow::Result<u64> {
    let mut named = std::collections::BTreeSet::new();
    for slot in Slot::ALL {
        named.extend(
            pointers
                .history(model, slot)
                .await?
                .into_iter()
                .map(|(_, p)| p.version),
        );
        named.extend(pointers.get(model, slot).await?.value.map(|p| p.version));
    }
    let stored = artifacts.versions_dated(model).await?;
    let doomed = retention.versions_to_delete(&stored, &named, Utc::now());
    for &version in &doomed {
        artifacts.delete_version(model, version).await?;
    }
    if !doomed.is_empty() {
        tracing::info!(model = %model, deleted = doomed.len(), kept = stored.len() - doomed.len(), "old versions removed");
    }
    Ok(doomed.len() as u64)
}

impl<P, D, C, O> Processor for Trainer<P, D, C, O>
where
    P: PointerStore + Clone + 'static,
    D: DeclarationStore,
    C: ControlSink,
    O: OrderCheck,
{
    /// Handles the batch in stream order (see [`handler::plan_batch`]): examples already learned
    /// are acknowledged, new ones are learned (or refused) strictly in sequence, and an example
    /// whose predecessor has not been seen yet waits for it (it is redelivered after a short
    /// delay).
    ///
    /// A batch handed back whole, or one with an example that must wait, drops the chain of
    /// first deliveries ([`Marks::chain`]): what the consumer delivers next is checked against
    /// the stream, since a consumer leader that took over may number it straight after the mark.
    async fn process(&mut self, batch: &mut [Incoming]) -> Vec<Disposition> {
        match self.read_hold(false).await {
            Ok(false) => {}
            Ok(true) => {
                // Held: the batch goes back to the stream, unacknowledged. The wait keeps the
                // consumer from cycling through the backlog while nothing can be learned.
                tokio::time::sleep(HOLD_REFRESH).await;
                self.chain = None;
                return batch
                    .iter()
                    .map(|_| Disposition::Defer(Failure::new("train", "the model is held")))
                    .collect();
            }
            Err(failure) => {
                self.chain = None;
                return batch
                    .iter()
                    .map(|_| Disposition::Retry(failure.duplicate()))
                    .collect();
            }
        }
        if self.reload
            && let Err(err) = self.reload_after_hold().await
        {
            let failure = Failure::new("reload the live version after a hold", err);
            self.chain = None;
            return batch
                .iter()
                .map(|_| Disposition::Retry(failure.duplicate()))
                .collect();
        }
        self.react().await;
        let rows: Vec<Row> = batch.iter().map(Row::of).collect();
        if let Err(failure) = self.read_declaration(&rows).await {
            self.chain = None;
            return batch
                .iter()
                .map(|_| Disposition::Retry(failure.duplicate()))
                .collect();
        }
        match self.settle_schema() {
            Ok(Footing::Ready) => {}
            Ok(Footing::Flushing) => {
                self.chain = None;
                return batch
                    .iter()
                    .map(|_| {
                        Disposition::Defer(Failure::new(
                            "train",
                            "publishing what was learned under the previous schema first",
                        ))
                    })
                    .collect();
            }
            Err(rejection) => {
                self.chain = None;
                return batch
                    .iter()
                    .map(|_| Disposition::Reject(rejection.clone()))
                    .collect();
            }
        }
        let marks = self.marks();
        let mut waiting = self.admit(&marks, &rows).await;
        let schema = self.lineage.as_ref().map(|l| &l.schema);
        let plan = handler::plan_batch(
            &self.model,
            &marks,
            schema,
            &mut self.quality,
            &rows,
            waiting.as_ref().map(|(index, _)| *index),
        );
        let discarded = self.learn(&plan, batch).await;
        self.metrics.examples_quarantined.inc_by(plan.held_out);
        for (transition, sequence) in &plan.quarantine {
            tracing::warn!(model = %self.model, state = transition.change.as_str(), sequence, share = transition.flagged_share,
                suspect_held_out = transition.suspect_held_out, valid_learned = transition.valid_learned, "data-quality quarantine");
            self.metrics
                .quarantined
                .set(i64::from(transition.change == Change::Started));
            self.announce_quarantine(transition, *sequence).await;
        }
        self.book(&plan);
        if waiting.is_some() {
            // Examples after the one that waits may be numbered straight after the mark by a
            // consumer leader that took over: until the wait is over, ask the stream.
            self.chain = None;
        }
        plan.steps
            .into_iter()
            .enumerate()
            .map(|(index, step)| match step {
                Step::Acknowledge => Disposition::Ack,
                Step::Hold => Disposition::Hold,
                Step::Learn => match &discarded {
                    None => Disposition::Hold,
                    Some(rejection) => Disposition::RejectHeld(rejection.clone()),
                },
                Step::Refuse(rejection) => Disposition::RejectHeld(rejection),
                Step::Wait => match waiting.take_if(|(first, _)| *first == index) {
                    Some((_, failure)) => Disposition::Defer(failure),
                    None => {
                        Disposition::Defer(Failure::new("train", "waiting for an earlier example"))
                    }
                },
            })
            .collect()
    }

    async fn commit(&mut self, final_commit: bool) -> Result<Commit, Failure> {
        if self.pending.range.is_none() {
            return Ok(Commit::Durable);
        }
        if self.hold.as_ref().is_some_and(Hold::stops_training) {
            return Ok(self.abandon_pending());
        }
        let due = final_commit
            || self.flush
            || self.pending.batches >= self.cadence.every_batches
            || self
                .pending
                .since
                .is_some_and(|since| since.elapsed() >= self.cadence.every);
        if !due {
            return Ok(Commit::Pending);
        }
        // A hold set since the last batch stops this version: read it now, not a second ago.
        // (A pin also moves live, so a publish racing it fails its compare-and-set.)
        if self.read_hold(true).await? {
            return Ok(self.abandon_pending());
        }
        self.publish().await
    }

    /// A batch is one optimizer step, and the learning rate decays per step: batches closed early
    /// because the loop was busy would take more, smaller steps, and learn less from the same
    /// examples (a drifted model's candidate could then not catch up with the new concept).
    fn lingers(&self) -> bool {
        false
    }

    fn commit_due(&self) -> Option<Instant> {
        if self.flush {
            return Some(Instant::now());
        }
        self.pending
            .range
            .and(self.pending.since)
            .map(|since| since + self.cadence.every)
    }
}

#[cfg(test)]
mod tests {
    use freshet::control::MemoryControl;
    use freshet::examples::ExampleRecord;
    use freshet::runtime::order::MemoryOrder;
    use freshet::store::MemoryDeclarations;
    use freshet_model::ModelKind;
    use freshet_model::store::{MemoryPointers, Pointer};

    use super::*;
    use crate::quality::QualityConfig;

    type MemoryTrainer = Trainer<MemoryPointers, MemoryDeclarations, MemoryControl, MemoryOrder>;

    /// A trainer on memory stores, and handles on what it writes.
    struct Bench {
        trainer: MemoryTrainer,
        model: ModelName,
        pointers: MemoryPointers,
        declarations: MemoryDeclarations,
        control: MemoryControl,
        artifacts: ArtifactStore,
        /// The consumer's next delivery sequence.
        delivery: u64,
    }

    impl Bench {
        fn new() -> Bench {
            Bench::on(
                MemoryPointers::new(),
                MemoryDeclarations::new(),
                ArtifactStore::from_url("memory://").unwrap(),
                QualityConfig::default(),
            )
        }

        /// Another trainer on the same stores, as after a restart.
        fn restarted(&self) -> Bench {
            Bench::on(
                self.pointers.clone(),
                self.declarations.clone(),
                self.artifacts.clone(),
                QualityConfig::default(),
            )
        }

        fn on(
            pointers: MemoryPointers,
            declarations: MemoryDeclarations,
            artifacts: ArtifactStore,
            quality: QualityConfig,
        ) -> Bench {
            let model = ModelName::parse("m").unwrap();
            let control = MemoryControl::new();
            let io = Io {
                subjects: Subjects::default(),
                artifacts: artifacts.clone(),
                pointers: pointers.clone(),
                declarations: declarations.clone(),
                control: control.clone(),
                order: MemoryOrder::new(1..=1_000),
            };
            let cadence = Cadence {
                every_batches: 1,
                every: Duration::from_secs(3_600),
                retention: Retention::newest(0),
            };
            let trainer = Trainer::new(
                model.clone(),
                ModelConfig::default(),
                cadence,
                100,
                io,
                TrainMetrics::default(),
                Quality::new(quality),
            );
            Bench {
                trainer,
                model,
                pointers,
                declarations,
                control,
                artifacts,
                delivery: 0,
            }
        }

        /// A bench whose model declared `name` v1 of `width` features, its trainer resumed.
        async fn declared(name: &str, width: usize) -> Bench {
            let mut bench = Bench::new();
            bench.declare(name, 1, width).await;
            bench.trainer.resume().await.unwrap();
            bench
        }

        async fn declare(&self, name: &str, version: u32, width: usize) -> FeatureSchema {
            let schema = FeatureSchema {
                name: name.into(),
                version,
                features: (0..width).map(|i| format!("x{i}")).collect(),
                monitoring: Vec::new(),
            };
            self.declarations
                .declare(&self.model, &schema)
                .await
                .unwrap();
            schema
        }

        /// Hands the trainer the examples stored at `sequences` (first deliveries, in order),
        /// each with `width` features; returns the dispositions.
        async fn process(&mut self, examples: &[(u64, usize)]) -> Vec<Disposition> {
            let mut batch: Vec<Incoming> = examples
                .iter()
                .map(|&(sequence, width)| {
                    self.delivery += 1;
                    incoming(&self.model, sequence, self.delivery, vec![0.5; width])
                })
                .collect();
            self.trainer.process(&mut batch).await
        }

        async fn live(&self) -> Option<Manifest> {
            self.named_by(Slot::Live).await
        }

        /// The manifest of the version `slot` names, if it names one.
        async fn named_by(&self, slot: Slot) -> Option<Manifest> {
            let pointer = self.pointers.get(&self.model, slot).await.unwrap().value?;
            Some(
                self.artifacts
                    .manifest(&self.model, pointer.version)
                    .await
                    .unwrap(),
            )
        }

        fn control(&self, kind: &str) -> Vec<serde_json::Value> {
            self.control
                .published()
                .iter()
                .filter(|p| p.subject.ends_with(&format!(".{kind}")))
                .map(|p| p.json())
                .collect()
        }
    }

    fn incoming(model: &ModelName, sequence: u64, delivery: u64, features: Vec<f32>) -> Incoming {
        let record = ExampleRecord {
            id: format!("ex-{sequence}"),
            model: model.clone(),
            schema: None,
            label: f32::from(sequence.is_multiple_of(2)),
            features,
            source_event: sequence.to_string(),
            event_time: None,
            feedback: Default::default(),
            corrects: None,
            final_at: None,
        };
        Incoming {
            subject: format!("freshet.examples.{model}"),
            payload: Bytes::from(record.to_json_bytes()),
            stream_sequence: sequence,
            delivered: 1,
            consumer_sequence: Some(delivery),
            published: Utc::now(),
            trace: None,
        }
    }

    /// The reason of each refusal, `-` for a message held, `ack` for one acknowledged.
    fn outcomes(dispositions: &[Disposition]) -> Vec<String> {
        dispositions
            .iter()
            .map(|d| match d {
                Disposition::Ack => "ack".to_string(),
                Disposition::Hold => "-".to_string(),
                Disposition::RejectHeld(r) | Disposition::Reject(r) => r.reason.to_string(),
                Disposition::Retry(_) => "retry".to_string(),
                Disposition::Defer(_) => "defer".to_string(),
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_model_takes_no_batch_and_learns_the_waiting_examples_once_released() {
        let mut bench = Bench::declared("m", 2).await;
        assert_eq!(
            outcomes(&bench.process(&[(1, 2), (2, 2)]).await),
            ["-", "-"]
        );
        assert_eq!(bench.trainer.commit(false).await.unwrap(), Commit::Durable);
        // Learned, not yet published, when an operator pauses the model: the version is not
        // published, and the example is handed back.
        assert_eq!(outcomes(&bench.process(&[(3, 2)]).await), ["-"]);
        let paused = freshet_model::store::hold::apply(
            None,
            freshet_model::store::HoldChange::Pause,
            "ana",
            "test",
            Utc::now(),
        );
        let revision = bench
            .pointers
            .set_hold(&bench.model, paused.as_ref(), 0)
            .await
            .unwrap();
        assert_eq!(
            bench.trainer.commit(false).await.unwrap(),
            Commit::Abandoned
        );
        // Held: every example waits in the stream.
        assert_eq!(
            outcomes(&bench.process(&[(3, 2), (4, 2)]).await),
            ["defer", "defer"]
        );
        assert_eq!(bench.live().await.unwrap().version, 1);
        // Released: the waiting examples are learned once, on top of live.
        bench
            .pointers
            .set_hold(&bench.model, None, revision)
            .await
            .unwrap();
        tokio::time::sleep(HOLD_REFRESH).await;
        assert_eq!(
            outcomes(&bench.process(&[(3, 2), (4, 2)]).await),
            ["-", "-"]
        );
        assert_eq!(bench.trainer.commit(false).await.unwrap(), Commit::Durable);
        let live = bench.live().await.unwrap();
        assert_eq!(
            (
                live.version,
                live.parent,
                live.learned.map(|r| (r.first, r.last)),
                live.metrics.examples_total
            ),
            (2, Some(1), Some((3, 4)), 4)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn examples_wait_for_a_declaration_and_a_stray_one_cannot_choose_the_schema() {
        let mut bench = Bench::new();
        bench.trainer.resume().await.unwrap();
        // No schema declared: nothing is learned, and nothing stands in for a declaration.
        let refused = bench.process(&[(1, 3), (2, 3)]).await;
        assert_eq!(outcomes(&refused), ["undeclared", "undeclared"]);
        assert_eq!(bench.trainer.commit(true).await.unwrap(), Commit::Durable);
        assert_eq!(bench.live().await, None);
        // Declared with 4 features: a stray example with 3 that arrives first is refused, and
        // the model is the declared one.
        let declared = bench.declare("churn", 1, 4).await;
        let handled = bench.process(&[(3, 3), (4, 4), (5, 4)]).await;
        assert_eq!(outcomes(&handled), ["schema_mismatch", "-", "-"]);
        assert_eq!(bench.trainer.commit(false).await.unwrap(), Commit::Durable);
        let live = bench.live().await.unwrap();
        assert_eq!(live.schema, declared);
        assert_eq!(
            (
                live.version,
                live.high_water_mark,
                live.metrics.examples_total
            ),
            (1, 5, 2)
        );
        assert_eq!(live.learned.map(|r| (r.first, r.last)), Some((1, 5)));
        let announced = bench.control("version");
        assert_eq!(announced.len(), 1);
        assert_eq!(announced[0]["version"], 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_trainer_learns_nothing_twice() {
        let mut bench = Bench::declared("churn", 2).await;
        bench.process(&[(1, 2), (2, 2), (3, 2)]).await;
        bench.trainer.commit(false).await.unwrap();
        // A crash after the version went live and before the acknowledgements: the batch comes
        // back to a restarted trainer, which acknowledges it without learning it again.
        let mut restarted = bench.restarted();
        restarted.trainer.resume().await.unwrap();
        let again = restarted.process(&[(2, 2), (3, 2), (4, 2)]).await;
        assert_eq!(outcomes(&again), ["ack", "ack", "-"]);
        restarted.trainer.commit(false).await.unwrap();
        let live = restarted.live().await.unwrap();
        assert_eq!(
            (live.version, live.parent, live.high_water_mark),
            (2, Some(1), 4)
        );
        assert_eq!(live.metrics.examples_total, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pointer_moved_by_another_writer_hands_the_examples_back() {
        let mut bench = Bench::declared("churn", 2).await;
        bench.process(&[(1, 2), (2, 2)]).await;
        bench.trainer.commit(false).await.unwrap();
        let first = bench.live().await.unwrap();
        // An operator sets live again (to the same version, with a new revision).
        bench.pointers.force(
            &bench.model,
            Slot::Live,
            Some(Pointer {
                version: first.version,
                sha256: first.sha256.clone(),
                updated_at: Utc::now(),
                cause: Cause::Operator,
                reason: "set by hand".into(),
            }),
        );
        assert_eq!(outcomes(&bench.process(&[(3, 2)]).await), ["-"]);
        assert_eq!(
            bench.trainer.commit(false).await.unwrap(),
            Commit::Abandoned
        );
        // Reloaded from live: the redelivered example is learned on top of it.
        let mut redelivered = vec![incoming(&bench.model, 3, 9, vec![0.5; 2])];
        redelivered[0].delivered = 2;
        let again = bench.trainer.process(&mut redelivered).await;
        assert_eq!(outcomes(&again), ["-"]);
        assert_eq!(bench.trainer.commit(false).await.unwrap(), Commit::Durable);
        let live = bench.live().await.unwrap();
        assert_eq!(
            (live.parent, live.high_water_mark),
            (Some(first.version), 3)
        );
        assert_eq!(live.metrics.examples_total, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_declaration_begins_a_new_chain_once_the_old_examples_are_published() {
        let mut bench = Bench::declared("churn", 2).await;
        bench.process(&[(1, 2), (2, 2)]).await;
        bench.trainer.commit(false).await.unwrap();
        // One more example under v1, not published yet, when v2 (3 features) is declared.
        bench.trainer.cadence.every_batches = 10;
        assert_eq!(outcomes(&bench.process(&[(3, 2)]).await), ["-"]);
        let v2 = bench.declare("churn", 2, 3).await;
        let deferred = bench.process(&[(4, 3)]).await;
        assert_eq!(outcomes(&deferred), ["defer"]);
        assert!(
            bench
                .trainer
                .commit_due()
                .is_some_and(|at| at <= Instant::now())
        );
        assert_eq!(bench.trainer.commit(false).await.unwrap(), Commit::Durable);
        let old = bench.live().await.unwrap();
        assert_eq!(
            (old.version, old.high_water_mark, old.schema.version),
            (2, 3, 1)
        );
        // The example comes back and begins the new chain.
        let mut redelivered = vec![incoming(&bench.model, 4, 9, vec![0.5; 3])];
        redelivered[0].delivered = 2;
        assert_eq!(
            outcomes(&bench.trainer.process(&mut redelivered).await),
            ["-"]
        );
        bench.trainer.commit(true).await.unwrap();
        let new = bench.live().await.unwrap();
        assert_eq!(new.schema, v2);
        assert_eq!(
            (new.version, new.parent, new.high_water_mark),
            (3, Some(2), 4)
        );
        assert_eq!(new.lineage_root(), 3, "a chain of its own");
        assert_eq!(new.metrics.examples_total, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quarantine_reports_what_it_held_out_and_what_it_learned() {
        let mut bench = Bench::on(
            MemoryPointers::new(),
            MemoryDeclarations::new(),
            ArtifactStore::from_url("memory://").unwrap(),
            QualityConfig {
                window: 10,
                enter: 0.3,
                exit: 0.0,
                span_factor: 4.0,
                warm_up: 5,
            },
        );
        bench.declare("churn", 1, 2).await;
        bench.trainer.resume().await.unwrap();
        bench.trainer.cadence.every_batches = 100;
        let warm: Vec<(u64, usize)> = (1..=10).map(|n| (n, 2)).collect();
        bench.process(&warm).await;
        // Three examples far out of range among clean ones.
        let mut batch: Vec<Incoming> = (11..=30)
            .map(|n| {
                let value = if (11..=13).contains(&n) { 1e9 } else { 0.5 };
                incoming(&bench.model, n, n, vec![value, 0.5])
            })
            .collect();
        let outcome = outcomes(&bench.trainer.process(&mut batch).await);
        assert_eq!(outcome[..3], ["quarantined"; 3]);
        assert!(outcome[3..].iter().all(|o| o == "-"), "{outcome:?}");
        let records = bench.control("quarantine");
        let states: Vec<&str> = records
            .iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["started", "ended"], "{records:?}");
        assert_eq!(records[0]["suspect_held_out"], 3);
        assert_eq!(records[0]["valid_learned"], 0);
        // Ended when the window held none: ten clean examples after the last suspect one, the
        // first nine of them learned while it lasted.
        assert_eq!(
            (
                records[1]["suspect_held_out"].as_u64(),
                records[1]["valid_learned"].as_u64()
            ),
            (Some(3), Some(9))
        );
        assert_eq!(records[1]["sequence"], 23);
        assert_eq!(bench.trainer.metrics.examples_quarantined.get(), 3);
    }

    /// Example `n` of a boundary no linear model fits: two features in [-1, 1), labelled 1 when
    /// they have the same sign; first delivered as the consumer's `delivery`-th message.
    fn quadrant(model: &ModelName, sequence: u64, delivery: u64) -> Incoming {
        let feature = |j: u64| {
            let mut z = sequence
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(j.wrapping_mul(0xBF58_476D_1CE4_E5B9));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let features = vec![feature(0), feature(1)];
        let mut message = incoming(model, sequence, delivery, features.clone());
        let mut record = ExampleRecord::decode(&message.payload).unwrap();
        record.label = f32::from(features[0] * features[1] > 0.0);
        message.payload = Bytes::from(record.to_json_bytes());
        message
    }

    /// Gives `bench`'s trainer a population of `kinds` (hidden width `hidden`), a challenger
    /// leading by 0.01 over 100 examples being offered as the candidate.
    fn with_population(bench: &mut Bench, kinds: &str, hidden: usize) {
        let members = crate::population::members(
            kinds,
            &ModelConfig::default(),
            freshet_model::Dimensions {
                hidden: Some(hidden),
                factors: None,
            },
        )
        .unwrap();
        bench.trainer.with_population(
            members,
            SelectionConfig {
                margin: 0.01,
                min_examples: 100,
            },
        );
    }

    /// The next 100 quadrant examples after `sequence`, delivered in order after `bench`'s last.
    fn quadrant_batch(bench: &mut Bench, sequence: &mut u64) -> Vec<Incoming> {
        (0..100)
            .map(|_| {
                *sequence += 1;
                bench.delivery += 1;
                quadrant(&bench.model, *sequence, bench.delivery)
            })
            .collect()
    }

    /// The learned ranges along the lineage ending at `live`, oldest first.
    async fn lineage_ranges(bench: &Bench, live: &Manifest) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        let mut manifest = live.clone();
        loop {
            let learned = manifest.learned.unwrap();
            ranges.push((learned.first, learned.last));
            match manifest.parent {
                Some(parent) => {
                    manifest = bench
                        .artifacts
                        .manifest(&bench.model, parent)
                        .await
                        .unwrap()
                }
                None => break,
            }
        }
        ranges.reverse();
        ranges
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_promoted_member_continues_as_live_and_the_member_it_replaced_keeps_learning() {
        let mut bench = Bench::new();
        with_population(&mut bench, "fourier", 64);
        bench.declare("quadrants", 1, 2).await;
        bench.trainer.resume().await.unwrap();
        let mut sequence = 0;
        for _ in 0..12 {
            let mut examples = quadrant_batch(&mut bench, &mut sequence);
            bench.trainer.process(&mut examples).await;
            assert_eq!(bench.trainer.commit(false).await.unwrap(), Commit::Durable);
        }
        // Live is the logistic model; the fourier member leads it and is the candidate, holding
        // exactly live's examples.
        let live = bench.live().await.unwrap();
        assert_eq!(live.config.kind, ModelKind::Logistic);
        let candidate = bench.named_by(Slot::Candidate).await.unwrap();
        assert_eq!(candidate.config.kind, ModelKind::Fourier { hidden: 64 });
        assert_eq!(candidate.high_water_mark, live.high_water_mark);
        assert!(
            candidate.metrics.prequential_accuracy > live.metrics.prequential_accuracy + 0.1,
            "{:?} against {:?}",
            candidate.metrics,
            live.metrics
        );
        // Every example once along the candidate's own chain, from the first.
        assert_eq!(
            lineage_ranges(&bench, &candidate).await.first().unwrap().0,
            1
        );

        // Learned, not yet published, when the gate promotes the candidate: the update is
        // handed back, and learned again on top of the promoted version.
        let mut examples = quadrant_batch(&mut bench, &mut sequence);
        let held = bench.trainer.process(&mut examples).await;
        assert!(held.iter().all(|d| matches!(d, Disposition::Hold)));
        let (pointers, model) = (&bench.pointers, &bench.model);
        let live_revision = pointers.get(model, Slot::Live).await.unwrap().revision;
        let candidate_revision = pointers.get(model, Slot::Candidate).await.unwrap().revision;
        bench
            .pointers
            .promote(
                &bench.model,
                &Verified::held(&candidate),
                "gate",
                live_revision,
                candidate_revision,
            )
            .await
            .unwrap();
        assert_eq!(
            bench.trainer.commit(false).await.unwrap(),
            Commit::Abandoned
        );
        for message in &mut examples {
            message.delivered = 2;
        }
        bench.trainer.process(&mut examples).await;
        assert_eq!(bench.trainer.commit(false).await.unwrap(), Commit::Durable);
        let after = bench.live().await.unwrap();
        assert_eq!(after.config.kind, ModelKind::Fourier { hidden: 64 });
        assert_eq!(after.parent, Some(candidate.version));
        assert_eq!(after.high_water_mark, 1_300);
        assert_eq!(after.metrics.examples_total, 1_300);
        let ranges = lineage_ranges(&bench, &after).await;
        assert_eq!(ranges.first().unwrap().0, 1);
        assert!(
            ranges.windows(2).all(|w| w[1].0 == w[0].1 + 1),
            "{ranges:?}"
        );
        // The logistic lineage learns on as a challenger, from where it stood: it holds the
        // same examples as live.
        let population = bench.trainer.population.as_ref().unwrap();
        let kinds: Vec<&str> = population
            .challengers
            .iter()
            .map(|c| c.trainer.kind().name())
            .collect();
        assert_eq!(kinds, ["logistic"]);
        let logistic = &population.challengers[0];
        assert_eq!(logistic.published.as_ref().unwrap().version, live.version);
        assert_eq!(logistic.window.snapshot().examples_total, 1_300);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_trainer_resumes_the_candidates_member_and_begins_the_others_after_live() {
        let mut bench = Bench::new();
        with_population(&mut bench, "mlp,fourier", 16);
        bench.declare("quadrants", 1, 2).await;
        bench.trainer.resume().await.unwrap();
        let mut sequence = 0;
        for _ in 0..10 {
            let mut examples = quadrant_batch(&mut bench, &mut sequence);
            bench.trainer.process(&mut examples).await;
            bench.trainer.commit(false).await.unwrap();
        }
        let before = bench.named_by(Slot::Candidate).await.unwrap();
        let offered = before.config.kind;
        assert_ne!(offered, ModelKind::Logistic);

        // Another trainer takes over: the member the candidate pointer names resumes from its
        // version; the other begins fresh, its first version to follow live's.
        let mut restarted = bench.restarted();
        with_population(&mut restarted, "mlp,fourier", 16);
        restarted.trainer.resume().await.unwrap();
        let members = &restarted.trainer.population.as_ref().unwrap().challengers;
        let resumed = members
            .iter()
            .find(|c| c.trainer.kind() == offered)
            .unwrap();
        assert_eq!(resumed.published.as_ref().unwrap().version, before.version);
        assert!(!resumed.new_chain);
        let fresh = members
            .iter()
            .find(|c| c.trainer.kind() != offered)
            .unwrap();
        let live = restarted.live().await.unwrap();
        assert_eq!(fresh.published.as_ref().unwrap().version, live.version);
        assert!(fresh.new_chain);
        assert_eq!(fresh.window.snapshot().examples_total, 1_000);

        restarted.delivery = bench.delivery;
        for _ in 0..2 {
            let mut examples = quadrant_batch(&mut restarted, &mut sequence);
            restarted.trainer.process(&mut examples).await;
            restarted.trainer.commit(false).await.unwrap();
        }
        // The candidate's chain learned every example once, across the restart.
        let after = restarted.named_by(Slot::Candidate).await.unwrap();
        assert_eq!(after.config.kind, offered);
        assert_eq!(after.high_water_mark, 1_200);
        assert_eq!(after.metrics.examples_total, 1_200);
        let ranges = lineage_ranges(&restarted, &after).await;
        assert_eq!(ranges.first().unwrap().0, 1);
        assert!(
            ranges.windows(2).all(|w| w[1].0 == w[0].1 + 1),
            "{ranges:?}"
        );
    }
}
