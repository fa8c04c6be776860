//! drift's pure logic: the bank of detectors watching one model, the family-wise control of
//! their false alarms, and the checkpoint that holds them and the model's episodes.
//!
//! For each example, in stream order, the bank feeds what the schema's monitoring plan says to
//! watch of each feature (see [`freshet::monitoring`]) to that feature's distribution detectors
//! (PSI by default) and, when the live model scored the example and its label is final, its
//! prediction error to the error detectors (ADWIN by default, reading the squared error of the
//! probability; DDM reads the 0/1 error, Page-Hinkley the log loss). A fake negative's label is
//! not final when it arrives: its prediction is held until a correction or its `final_at`
//! settles it, and errors are judged in stream order once every example before them is settled
//! ([`crate::pending`]). What the detectors report becomes part of an episode
//! ([`crate::episodes`]): one alarm per change. Everything the bank knows is a [`Checkpoint`]: plain data that the function keeps as
//! JSON in the DRIFT bucket. It records the stream sequence of the last example folded in, and
//! folding an example at or below that mark does nothing, so a redelivered batch is neither
//! observed nor reported twice, and a checkpoint read back continues exactly as the run that
//! wrote it would have.
//!
//! **Families.** The detectors of one model make many tests per example: each watched feature
//! times each feature detector, plus each error detector. drift splits a budget of false alarms
//! over them (Bonferroni): the feature family's budget [`BankConfig::feature_alpha`] equally over
//! its tests, the error family's [`BankConfig::error_alpha`] equally over the error detectors;
//! each detector turns its share into its own threshold (a significance level for PSI and KSWIN,
//! ADWIN's δ, DDM's normal deviations). Page-Hinkley's threshold is in the units of what it reads
//! and takes no share; it runs with the λ given. The functions's README has the arithmetic.
//!
//! Only a rise of the error is a change: an error detector that finds the error has fallen (a
//! model still learning, say) starts afresh without reporting. Error detectors watch one chain
//! of live versions at a time: an example scored by another chain starts them afresh, because a
//! new model has its own error level and comparing it with the old one's would report the swap
//! itself as drift. Likewise feature detectors start afresh when the examples' schema (name,
//! version, width or plan) changes, and read nothing for the first [`BankConfig::warm_up`]
//! examples of a schema: while featurize's entity states fill, every feature moves by
//! construction. The error detectors wait as long from the model's first example: a model
//! learning from nothing, whose labels wait for their horizon, has no steady error yet.
//!
//! No clock and no I/O: the adapter (`processor.rs`) scores the examples, publishes the episodes'
//! transitions and writes the checkpoint.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use freshet::monitoring::Watch;
use freshet::stats::log_loss;
use serde::{Deserialize, Serialize};

use crate::detectors::{
    Adwin, AdwinConfig, Ddm, DdmConfig, Detection, Detector, DetectorError, Kswin, KswinConfig,
    Level, PageHinkley, PageHinkleyConfig, PsiSignificance, StreamingPsi, StreamingPsiConfig,
    normal_upper_quantile,
};
use crate::episodes::{EpisodeConfig, Episodes, ReactionPolicy, Transition};
use crate::pending::{Hold, Pending, PendingConfig, Settled};

/// The checkpoint layout this build writes and reads; any other is read for its mark only.
/// Format 1 (no episodes, uncalibrated detectors) is read that way.
pub const CHECKPOINT_FORMAT: u32 = 2;

/// A warning is reported at this many times a test's drift level (PSI, DDM).
pub const WARNING_FACTOR: f64 = 10.0;

/// A detector the bank can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Streaming population stability index, reference against recent values (features).
    Psi,
    /// Two-sided Page-Hinkley on the mean (features; the log loss for errors).
    PageHinkley,
    /// ADWIN on the mean (features; the 0/1 error for errors).
    Adwin,
    /// KSWIN, a Kolmogorov-Smirnov test on a sliding window (features).
    Kswin,
    /// DDM on the 0/1 error (errors only).
    Ddm,
}

impl DetectorKind {
    /// The name used in flags, events, message ids and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectorKind::Psi => "psi",
            DetectorKind::PageHinkley => "page_hinkley",
            DetectorKind::Adwin => "adwin",
            DetectorKind::Kswin => "kswin",
            DetectorKind::Ddm => "ddm",
        }
    }

    /// Whether it can watch a feature's distribution (DDM reads only 0/1 errors).
    fn reads_features(self) -> bool {
        self != DetectorKind::Ddm
    }

    /// Whether it can watch the error stream (PSI and KSWIN compare distributions, which a 0/1
    /// stream barely has).
    fn reads_errors(self) -> bool {
        matches!(
            self,
            DetectorKind::Ddm | DetectorKind::Adwin | DetectorKind::PageHinkley
        )
    }
}

impl fmt::Display for DetectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DetectorKind {
    type Err = BankError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "psi" => Ok(DetectorKind::Psi),
            "page_hinkley" => Ok(DetectorKind::PageHinkley),
            "adwin" => Ok(DetectorKind::Adwin),
            "kswin" => Ok(DetectorKind::Kswin),
            "ddm" => Ok(DetectorKind::Ddm),
            other => Err(BankError::UnknownDetector(other.to_string())),
        }
    }
}

/// A list of detectors as a flag gives it: comma-separated names, or `none`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorList(pub Vec<DetectorKind>);

impl FromStr for DetectorList {
    type Err = BankError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return Ok(DetectorList(Vec::new()));
        }
        text.split(',')
            .map(DetectorKind::from_str)
            .collect::<Result<_, _>>()
            .map(DetectorList)
    }
}

/// Why a bank could not be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BankError {
    #[error("unknown detector {0:?}: use psi, page_hinkley, adwin, kswin or ddm")]
    UnknownDetector(String),
    #[error("{detector} cannot watch {stream}; {hint}")]
    Misplaced {
        detector: DetectorKind,
        stream: &'static str,
        hint: &'static str,
    },
    #[error("{detector} is listed twice for {stream}")]
    Repeated {
        detector: DetectorKind,
        stream: &'static str,
    },
    #[error("no detector is selected: name at least one feature or error detector")]
    Empty,
    #[error("the {family} family's false-alarm budget must be in (0, 0.5), got {alpha}")]
    Budget { family: &'static str, alpha: f64 },
    #[error(
        "examples held for their label: at least one (got {capacity}), and a lateness of zero \
         or more (got {lateness_ms} ms)"
    )]
    Pending { capacity: usize, lateness_ms: i64 },
    #[error(transparent)]
    Detector(#[from] DetectorError),
}

/// Which detectors watch what, their budgets and their parameters. Part of the checkpoint: a
/// checkpoint written under other settings is read for its mark only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankConfig {
    /// Detectors run on every watched feature, in this order.
    pub feature_detectors: Vec<DetectorKind>,
    /// Detectors run on the live model's prediction errors, in this order.
    pub error_detectors: Vec<DetectorKind>,
    /// The feature family's false-alarm budget per example: the sum of the levels of all its
    /// tests (watched features × feature detectors) at one evaluation.
    pub feature_alpha: f64,
    /// The error family's budget per example, split over the error detectors.
    pub error_alpha: f64,
    /// Examples of a schema read before its features are watched, and of the model before its
    /// error is.
    pub warm_up: u64,
    pub episodes: EpisodeConfig,
    /// The views held until their label is final. A checkpoint from before they were held has
    /// none, reads as [`PendingConfig::absent`], and is taken up with fresh detectors.
    #[serde(default = "PendingConfig::absent")]
    pub pending: PendingConfig,
    // Each detector's parameters, the same wherever it runs (ADWIN may watch features and the
    // error alike); the significance of each test comes from its family's budget instead of
    // these (PSI's fixed thresholds, ADWIN's δ, KSWIN's α and DDM's deviations are overwritten).
    pub psi: StreamingPsiConfig,
    pub page_hinkley: PageHinkleyConfig,
    pub adwin: AdwinConfig,
    pub kswin: KswinConfig,
    pub ddm: DdmConfig,
}

impl Default for BankConfig {
    fn default() -> Self {
        BankConfig {
            feature_detectors: vec![DetectorKind::Psi],
            error_detectors: vec![DetectorKind::Adwin],
            feature_alpha: 1e-7,
            error_alpha: 1e-3,
            warm_up: 2_000,
            episodes: EpisodeConfig::default(),
            pending: PendingConfig::default(),
            psi: StreamingPsiConfig {
                reference_size: 4_000,
                recent_size: 2_000,
                sliding_reference: true,
                ..StreamingPsiConfig::default()
            },
            page_hinkley: PageHinkleyConfig::default(),
            // Every value tested, not every 32nd as in River: a cut is found as soon as it
            // holds, which is most of ADWIN's delay on a rising error.
            adwin: AdwinConfig {
                clock: 1,
                ..AdwinConfig::default()
            },
            kswin: KswinConfig::default(),
            ddm: DdmConfig::default(),
        }
    }
}

/// The family a test belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Features,
    Error,
}

impl BankConfig {
    /// The level of one test of `family` when the family holds `tests` tests.
    pub fn test_level(&self, family: Family, tests: usize) -> f64 {
        let budget = match family {
            Family::Features => self.feature_alpha,
            Family::Error => self.error_alpha,
        };
        budget / tests.max(1) as f64
    }

    /// A fresh detector of `kind` whose test runs at `level`, refused if its parameters are out
    /// of range.
    pub fn detector(&self, kind: DetectorKind, level: f64) -> Result<AnyDetector, DetectorError> {
        let warning = (level * WARNING_FACTOR).min(0.5).max(level);
        Ok(match kind {
            DetectorKind::Psi => AnyDetector::Psi(StreamingPsi::new(StreamingPsiConfig {
                significance: Some(PsiSignificance {
                    drift: level,
                    warning,
                }),
                ..self.psi
            })?),
            DetectorKind::PageHinkley => {
                AnyDetector::PageHinkley(PageHinkley::new(self.page_hinkley)?)
            }
            DetectorKind::Adwin => AnyDetector::Adwin(Adwin::new(AdwinConfig {
                delta: level,
                ..self.adwin
            })?),
            DetectorKind::Kswin => AnyDetector::Kswin(Kswin::new(KswinConfig {
                alpha: level,
                ..self.kswin
            })?),
            DetectorKind::Ddm => AnyDetector::Ddm(Ddm::new(DdmConfig {
                drift_threshold: normal_upper_quantile(level),
                warning_threshold: normal_upper_quantile(warning),
                ..self.ddm
            })?),
        })
    }

    /// Fresh tracked detectors for one stream of `family`, each at its share of the family's
    /// budget when the family holds `tests` tests.
    fn fresh_slots(
        &self,
        kinds: &[DetectorKind],
        family: Family,
        tests: usize,
    ) -> Result<Vec<Tracked>, DetectorError> {
        let level = self.test_level(family, tests);
        kinds
            .iter()
            .map(|&kind| Ok(Tracked::new(self.detector(kind, level)?)))
            .collect()
    }

    /// Checks the detectors' places and repetitions, and the budgets.
    fn check(&self) -> Result<(), BankError> {
        if self.feature_detectors.is_empty() && self.error_detectors.is_empty() {
            return Err(BankError::Empty);
        }
        for (family, alpha) in [("feature", self.feature_alpha), ("error", self.error_alpha)] {
            if !(alpha > 0.0 && alpha < 0.5) {
                return Err(BankError::Budget { family, alpha });
            }
        }
        if self.pending.capacity == 0 || self.pending.lateness_ms < 0 {
            return Err(BankError::Pending {
                capacity: self.pending.capacity,
                lateness_ms: self.pending.lateness_ms,
            });
        }
        /// A list of detectors, where it runs, what may run there, and what to say otherwise.
        type Place<'a> = (
            &'a [DetectorKind],
            &'static str,
            fn(DetectorKind) -> bool,
            &'static str,
        );
        let lists: [Place<'_>; 2] = [
            (
                &self.feature_detectors,
                "features",
                DetectorKind::reads_features,
                "ddm reads 0/1 errors; use it in the error detectors",
            ),
            (
                &self.error_detectors,
                "the error stream",
                DetectorKind::reads_errors,
                "use ddm, adwin or page_hinkley there",
            ),
        ];
        for (kinds, stream, fits, hint) in lists {
            for (i, &kind) in kinds.iter().enumerate() {
                if !fits(kind) {
                    return Err(BankError::Misplaced {
                        detector: kind,
                        stream,
                        hint,
                    });
                }
                if kinds[..i].contains(&kind) {
                    return Err(BankError::Repeated {
                        detector: kind,
                        stream,
                    });
                }
            }
        }
        // Every detector must build at the smallest level it can be given.
        let family_sizes = [
            (Family::Features, &self.feature_detectors, 1_000),
            (Family::Error, &self.error_detectors, 1),
        ];
        for (family, kinds, features) in family_sizes {
            self.fresh_slots(kinds, family, features * kinds.len())?;
        }
        Ok(())
    }
}

/// One detector of any kind, as the checkpoint stores it: `{"kind": "psi", "state": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "state", rename_all = "snake_case")]
pub enum AnyDetector {
    Psi(StreamingPsi),
    PageHinkley(PageHinkley),
    Adwin(Adwin),
    Kswin(Kswin),
    Ddm(Ddm),
}

/// What a detector shows for a signal beside its statistic.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Evidence {
    statistic: f64,
    threshold: Option<f64>,
    reference: Option<u64>,
    recent: Option<u64>,
    /// Whether the change raised the watched mean (`None`: no direction, as for PSI).
    upward: Option<bool>,
}

impl AnyDetector {
    pub fn kind(&self) -> DetectorKind {
        match self {
            AnyDetector::Psi(_) => DetectorKind::Psi,
            AnyDetector::PageHinkley(_) => DetectorKind::PageHinkley,
            AnyDetector::Adwin(_) => DetectorKind::Adwin,
            AnyDetector::Kswin(_) => DetectorKind::Kswin,
            AnyDetector::Ddm(_) => DetectorKind::Ddm,
        }
    }

    pub fn update(&mut self, x: f64) -> Result<Detection, DetectorError> {
        match self {
            AnyDetector::Psi(d) => d.update(x),
            AnyDetector::PageHinkley(d) => d.update(x),
            AnyDetector::Adwin(d) => d.update(x),
            AnyDetector::Kswin(d) => d.update(x),
            AnyDetector::Ddm(d) => d.update(x),
        }
    }

    /// The evidence of `detection`, read right after the update that made it.
    fn evidence(&self, detection: &Detection) -> Evidence {
        let plain = Evidence {
            statistic: detection.statistic,
            threshold: None,
            reference: None,
            recent: None,
            upward: None,
        };
        match self {
            AnyDetector::Psi(d) => {
                let threshold = match (d.thresholds(), detection.level) {
                    (Some(t), Level::Warning) => Some(t.warning),
                    (Some(t), _) => Some(t.drift),
                    (None, Level::Warning) => Some(d.config().psi.moderate),
                    (None, _) => Some(d.config().psi.significant),
                };
                Evidence {
                    threshold,
                    reference: Some(d.reference_len() as u64),
                    recent: Some(d.recent_len() as u64),
                    ..plain
                }
            }
            AnyDetector::Adwin(d) => match d.last_cut() {
                Some(cut) if detection.is_drift() => Evidence {
                    statistic: cut.gap(),
                    threshold: Some(cut.bound),
                    reference: Some(cut.older),
                    recent: Some(cut.newer),
                    upward: Some(cut.newer_mean > cut.older_mean),
                },
                _ => plain,
            },
            AnyDetector::PageHinkley(d) => Evidence {
                threshold: Some(d.config().threshold),
                recent: Some(d.observations()),
                upward: Some(d.upward()),
                ..plain
            },
            AnyDetector::Ddm(d) => Evidence {
                threshold: match detection.level {
                    Level::Warning => d.warning_bound(),
                    _ => d.drift_bound(),
                },
                upward: Some(true),
                ..plain
            },
            AnyDetector::Kswin(d) => Evidence {
                recent: Some(d.config().stat_size as u64),
                reference: Some((d.config().window_size - d.config().stat_size) as u64),
                ..plain
            },
        }
    }
}

/// The examples one detector has read since it last started afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Stream sequence of the first example read.
    pub first: u64,
    /// Stream sequence of the last example read (the one that signalled, in a finding).
    pub last: u64,
    /// Values read.
    pub count: u64,
}

/// A detector with the window it has read and what it has already reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tracked {
    detector: AnyDetector,
    /// `None` until the first value since the last fresh start.
    window: Option<Window>,
    /// The detector signalled a drift: like the detector itself, the window starts afresh with
    /// the next value.
    restart: bool,
    /// A warning was reported and the level has not left the warning zone since; a warning is
    /// reported once on entering the zone, not on every value inside it.
    warned: bool,
}

/// What a tracked detector reports after one value.
struct Signal {
    level: Level,
    evidence: Evidence,
    window: Window,
}

impl Tracked {
    fn new(detector: AnyDetector) -> Tracked {
        Tracked {
            detector,
            window: None,
            restart: false,
            warned: false,
        }
    }

    /// Feeds the value of the example at `sequence`; a refused value changes nothing.
    fn observe(&mut self, sequence: u64, x: f64) -> Option<Signal> {
        let detection = self.detector.update(x).ok()?;
        if std::mem::take(&mut self.restart) {
            self.window = None;
        }
        let window = match &mut self.window {
            Some(window) => {
                window.last = sequence;
                window.count += 1;
                *window
            }
            None => *self.window.insert(Window {
                first: sequence,
                last: sequence,
                count: 1,
            }),
        };
        let report = match detection.level {
            Level::Stable => {
                self.warned = false;
                false
            }
            Level::Warning => !std::mem::replace(&mut self.warned, true),
            Level::Drift => {
                self.restart = true;
                self.warned = false;
                true
            }
        };
        report.then(|| Signal {
            level: detection.level,
            evidence: self.detector.evidence(&detection),
            window,
        })
    }
}

/// The feature detectors: `slots[i][j]` watches feature `i` with the `j`-th feature detector;
/// a feature the plan ignores has none.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FeatureState {
    /// Schema (name, version) of the examples watched; `None` for examples without one.
    schema: Option<(String, u32)>,
    /// Features per example under that schema.
    width: usize,
    /// What is watched of each feature.
    plan: Vec<Watch>,
    /// Examples of this schema seen; features are watched once the warm-up is over.
    seen: u64,
    slots: Vec<Vec<Tracked>>,
}

/// The error detectors, in the configured order, and the live version whose errors they read.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ErrorState {
    /// `None` until an example scored by a live version arrives.
    version: Option<u64>,
    slots: Vec<Tracked>,
}

/// Everything the bank knows about one model, as it is stored under `<model>` in DRIFT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_FORMAT`] when written.
    pub format: u32,
    /// Stream sequence of the last example folded in (0: none). Examples at or below it are done.
    pub last_sequence: u64,
    /// Examples folded in since the checkpoint began (refused examples pass without counting).
    pub examples: u64,
    /// The settings the detectors run with.
    pub config: BankConfig,
    features: FeatureState,
    error: ErrorState,
    /// The views whose label is not final yet, with their predictions, and the examples'
    /// event-time watermark that settles them.
    #[serde(default)]
    pending: Pending,
    /// The model's episodes: the open one and the last resolved ones.
    pub episodes: Episodes,
}

impl Checkpoint {
    /// The live version the error detectors are reading, if any.
    pub fn error_version(&self) -> Option<u64> {
        self.error.version
    }

    /// Examples whose error waits to be judged: views waiting for their label, and examples
    /// settled after them.
    pub fn pending_views(&self) -> usize {
        self.pending.len()
    }

    /// The features watched under the current schema (indexes), once any example was read.
    pub fn watched(&self) -> Vec<usize> {
        (0..self.features.plan.len())
            .filter(|&i| self.features.plan[i] != Watch::Ignore)
            .collect()
    }

    /// Whether every stored detector has the kind its place in the configuration says; a
    /// checkpoint that fails this was not written by a bank with its own configuration.
    fn well_formed(&self) -> bool {
        let kinds_match = |slots: &[Tracked], kinds: &[DetectorKind]| {
            slots.len() == kinds.len()
                && slots
                    .iter()
                    .zip(kinds)
                    .all(|(slot, kind)| slot.detector.kind() == *kind)
        };
        let features = &self.features;
        self.format == CHECKPOINT_FORMAT
            && features.slots.len() == features.width
            && features.plan.len() == features.width
            && features
                .slots
                .iter()
                .zip(&features.plan)
                .all(|(slots, watch)| {
                    if *watch == Watch::Ignore {
                        slots.is_empty()
                    } else {
                        kinds_match(slots, &self.config.feature_detectors)
                    }
                })
            && (self.error.slots.is_empty() && self.error.version.is_none()
                || kinds_match(&self.error.slots, &self.config.error_detectors))
    }
}

/// The live model's verdict on one example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The chain of live versions that scored it, named by its first version
    /// ([`Manifest::lineage_root`](freshet_model::Manifest::lineage_root)): the error
    /// detectors follow one chain across train's steps and start afresh when live moves to
    /// another (a promotion, a rollback).
    pub version: u64,
    /// Its probability of class 1.
    pub probability: f64,
}

/// One example as the bank reads it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Its stream sequence in EXAMPLES.
    pub sequence: u64,
    /// Its feature schema (name, version), if it names one.
    pub schema: Option<&'a (String, u32)>,
    /// What to watch of each feature (empty: every value).
    pub plan: &'a [Watch],
    pub features: &'a [f32],
    /// 0 or 1.
    pub label: f32,
    /// Whether its label is final, or a fake negative's or its correction (delayed feedback).
    pub feedback: Labelling<'a>,
    /// When the action it carries happened: the latest one seen, less a lateness, settles the
    /// fake negatives whose `final_at` it passed.
    pub event_time: Option<DateTime<Utc>>,
    /// The live model's score, when a live version could score it.
    pub scored: Option<Scored>,
}

/// What an example says of its label, as the error detectors judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labelling<'a> {
    /// The label is final: its error is judged at once.
    Final,
    /// A fake negative (its label may yet become 1): its prediction is held until its label is
    /// final, from `final_at` unless a correction comes first. Without `final_at` nobody says
    /// when it is final, and its error is never judged.
    FakeNegative {
        id: &'a str,
        final_at: Option<DateTime<Utc>>,
    },
    /// The correction of the fake negative `corrects`: it settles that view as a positive.
    Correction { corrects: &'a str },
}

/// What became of the delayed labels of one fold (or of several, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedbackCounts {
    /// Fake negatives held.
    pub held: u64,
    /// Fake negatives not held because the buffer was full: their errors are never judged.
    pub overflow: u64,
    /// Fake negatives without `final_at`, never judged.
    pub untimed: u64,
    /// Held views dropped because live moved to another chain of versions.
    pub dropped: u64,
    /// Held views a correction settled as positives.
    pub positives: u64,
    /// Held views whose `final_at` passed without a correction, settled as negatives.
    pub negatives: u64,
    /// Corrections naming no held view (not scored, not held, or settled already).
    pub unmatched: u64,
}

impl FeedbackCounts {
    pub fn add(&mut self, other: &FeedbackCounts) {
        self.held += other.held;
        self.overflow += other.overflow;
        self.untimed += other.untimed;
        self.dropped += other.dropped;
        self.positives += other.positives;
        self.negatives += other.negatives;
        self.unmatched += other.unmatched;
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The distribution of the feature at this index.
    Feature(usize),
    /// The live model's prediction error.
    Error,
}

/// A warning or drift one detector reported, with its evidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The example that made the detector signal.
    pub sequence: u64,
    pub detector: DetectorKind,
    pub target: Target,
    /// Warning or drift (never stable).
    pub level: Level,
    /// The detector's statistic at that example: PSI; for ADWIN the gap between the means of
    /// the two parts of its window; for DDM the error rate plus its deviation; for Page-Hinkley
    /// its test value; for KSWIN the Kolmogorov-Smirnov distance.
    pub statistic: f64,
    /// What the statistic had to reach (ADWIN: exceed), when the detector has one.
    pub threshold: Option<f64>,
    /// The examples the detector read since it last started afresh, this one included.
    pub window: Window,
    /// Examples in the part of that window compared as the reference (PSI's reference, ADWIN's
    /// older part), and as the recent part.
    pub reference: Option<u64>,
    pub recent: Option<u64>,
}

/// What folding one example did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Folded {
    /// False when the example was at or below the mark, and nothing happened.
    pub new: bool,
    /// Prediction errors that reached the error detectors: its own if its label is final, and
    /// those of the held views it settled.
    pub errors_observed: u64,
    /// What it did to the views held for their label.
    pub feedback: FeedbackCounts,
    /// The error detectors started afresh for a new live version (the version they left).
    pub error_reset: Option<Option<u64>>,
    pub findings: Vec<Finding>,
    /// An error detector found the error had fallen and started afresh without reporting.
    pub improvements: u64,
    /// What the findings did to the model's episodes.
    pub transition: Option<Transition>,
}

/// How a stored checkpoint was taken up.
#[derive(Debug, Clone, PartialEq)]
pub enum Restored {
    /// Nothing was stored: a fresh start from sequence 0.
    Missing,
    /// As written: detectors continue where they stopped.
    AsWritten,
    /// Written under other settings (or in another shape): its mark and its episodes are
    /// kept, its detectors start afresh.
    Reconfigured,
    /// Unreadable: its mark is kept when even that can be read, else the bank starts from 0.
    Unreadable {
        kept_mark: Option<u64>,
        error: String,
    },
}

/// The detectors' settings, from which checkpoints start and grow.
#[derive(Debug, Clone)]
pub struct Bank {
    config: BankConfig,
    fresh_errors: Vec<Tracked>,
}

impl Bank {
    /// A bank with `config`, refused if a detector is misplaced, repeated or misconfigured, if
    /// a budget is out of range, or if none is selected.
    pub fn new(config: BankConfig) -> Result<Bank, BankError> {
        config.check()?;
        let fresh_errors = config.fresh_slots(
            &config.error_detectors,
            Family::Error,
            config.error_detectors.len(),
        )?;
        Ok(Bank {
            config,
            fresh_errors,
        })
    }

    /// The settings the bank runs with.
    pub fn config(&self) -> &BankConfig {
        &self.config
    }

    /// A checkpoint that has folded nothing.
    pub fn fresh(&self) -> Checkpoint {
        self.fresh_from(0, 0, Episodes::default())
    }

    fn fresh_from(&self, last_sequence: u64, examples: u64, episodes: Episodes) -> Checkpoint {
        Checkpoint {
            format: CHECKPOINT_FORMAT,
            last_sequence,
            examples,
            config: self.config.clone(),
            features: FeatureState::default(),
            error: ErrorState::default(),
            pending: Pending::default(),
            episodes,
        }
    }

    /// Takes up a stored checkpoint: as written if it runs this bank's settings, otherwise its
    /// mark and episodes with fresh detectors (so changed settings never mix with old state,
    /// nothing already folded is read again, and an open episode stays open).
    pub fn restore(&self, checkpoint: Checkpoint) -> (Checkpoint, Restored) {
        if checkpoint.config == self.config && checkpoint.well_formed() {
            (checkpoint, Restored::AsWritten)
        } else {
            let fresh = self.fresh_from(
                checkpoint.last_sequence,
                checkpoint.examples,
                checkpoint.episodes,
            );
            (fresh, Restored::Reconfigured)
        }
    }

    /// Reads a stored checkpoint's bytes (`None`: nothing stored). Never fails: what cannot be
    /// read starts afresh, keeping the mark if at least that is legible, so a damaged (or
    /// older-format) checkpoint costs detector state but never re-reports old examples it can
    /// still name.
    pub fn decode(&self, bytes: Option<&[u8]>) -> (Checkpoint, Restored) {
        let Some(bytes) = bytes else {
            return (self.fresh(), Restored::Missing);
        };
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let format = serde_json::from_slice::<Format>(bytes).map(|f| f.format);
        let decoded = match format {
            Ok(CHECKPOINT_FORMAT) => {
                serde_json::from_slice::<Checkpoint>(bytes).map_err(|err| err.to_string())
            }
            Ok(other) => Err(format!("checkpoint format {other}")),
            Err(err) => Err(err.to_string()),
        };
        match decoded {
            Ok(checkpoint) => self.restore(checkpoint),
            Err(error) => {
                #[derive(Deserialize)]
                struct Mark {
                    last_sequence: u64,
                }
                let kept_mark = serde_json::from_slice::<Mark>(bytes)
                    .ok()
                    .map(|m| m.last_sequence);
                let checkpoint = self.fresh_from(kept_mark.unwrap_or(0), 0, Episodes::default());
                (checkpoint, Restored::Unreadable { kept_mark, error })
            }
        }
    }

    /// Records that the example at `sequence` was handled without being observed (it was
    /// refused), so the mark covers it. False if it was already at or below the mark.
    pub fn pass(&self, checkpoint: &mut Checkpoint, sequence: u64) -> bool {
        if sequence <= checkpoint.last_sequence {
            return false;
        }
        checkpoint.last_sequence = sequence;
        true
    }

    /// Folds one example into `checkpoint`, its findings into the model's episodes under
    /// `policy`. Examples must come in stream order; one at or below the mark is skipped, with
    /// no effect and no finding.
    pub fn fold(
        &self,
        checkpoint: &mut Checkpoint,
        example: &Observation<'_>,
        policy: &ReactionPolicy<'_>,
    ) -> Folded {
        if !self.pass(checkpoint, example.sequence) {
            return Folded::default();
        }
        checkpoint.examples += 1;
        let mut folded = Folded {
            new: true,
            ..Folded::default()
        };
        self.fold_features(checkpoint, example, &mut folded.findings);
        if let Some(at) = example.event_time {
            checkpoint.pending.advance(at.timestamp_millis());
        }
        if !self.fresh_errors.is_empty() {
            self.judge(checkpoint, example, &mut folded);
        }
        let active = checkpoint
            .features
            .slots
            .iter()
            .flatten()
            .chain(&checkpoint.error.slots)
            .any(|slot| slot.warned);
        folded.transition = checkpoint.episodes.observe(
            &self.config.episodes,
            example.sequence,
            checkpoint.examples,
            &folded.findings,
            active,
            policy,
        );
        folded
    }

    fn fold_features(
        &self,
        checkpoint: &mut Checkpoint,
        example: &Observation<'_>,
        findings: &mut Vec<Finding>,
    ) {
        if self.config.feature_detectors.is_empty() {
            return;
        }
        let width = example.features.len();
        let plan: Vec<Watch> = (0..width)
            .map(|i| {
                example
                    .plan
                    .get(i)
                    .copied()
                    .unwrap_or(freshet::monitoring::UNDECLARED)
            })
            .collect();
        let state = &mut checkpoint.features;
        if state.schema.as_ref() != example.schema || state.width != width || state.plan != plan {
            // Another schema: its features mean other things, so their history does not apply.
            let watched = plan.iter().filter(|w| **w != Watch::Ignore).count();
            let tests = watched * self.config.feature_detectors.len();
            // Every detector was built at a thousand features' share when the bank was made;
            // a smaller share only lowers a level, which each accepts.
            let fresh = self
                .config
                .fresh_slots(&self.config.feature_detectors, Family::Features, tests)
                .unwrap_or_default();
            *state = FeatureState {
                schema: example.schema.cloned(),
                width,
                slots: plan
                    .iter()
                    .map(|w| {
                        if *w == Watch::Ignore {
                            Vec::new()
                        } else {
                            fresh.clone()
                        }
                    })
                    .collect(),
                plan,
                seen: 0,
            };
        }
        state.seen += 1;
        if state.seen <= self.config.warm_up {
            return;
        }
        for (i, ((value, slots), watch)) in example
            .features
            .iter()
            .zip(&mut state.slots)
            .zip(&state.plan)
            .enumerate()
        {
            // Decoding refuses non-finite features already; a detector would refuse one too,
            // but the window must not count it either.
            let Some(x) = watch.read(f64::from(*value)) else {
                continue;
            };
            for slot in slots {
                if let Some(signal) = slot.observe(example.sequence, x) {
                    findings.push(finding(
                        example.sequence,
                        slot.detector.kind(),
                        Target::Feature(i),
                        signal,
                    ));
                }
            }
        }
    }

    /// Puts the example in the line of errors to judge (settled if its label is final,
    /// waiting if it is a fake negative), settles the views it settles (a correction's, and
    /// those its event time made due), and judges what the line releases.
    fn judge(&self, checkpoint: &mut Checkpoint, example: &Observation<'_>, folded: &mut Folded) {
        // The model's first examples are its warm-up too: it is still learning from nothing.
        // A score outside [0, 1] is not judged.
        let scored = example.scored.filter(|scored| {
            checkpoint.examples > self.config.warm_up
                && scored.probability.is_finite()
                && (0.0..=1.0).contains(&scored.probability)
        });
        let pending = &mut checkpoint.pending;
        let config = &self.config.pending;
        let counts = &mut folded.feedback;
        if let Some(scored) = scored {
            // What another chain scored is no longer this model's error.
            counts.dropped += pending.follow(scored.version) as u64;
        }
        let sequence = example.sequence;
        let held = match (example.feedback, scored) {
            (Labelling::Final, Some(scored)) if example.label == 0.0 || example.label == 1.0 => {
                Some(pending.judge(
                    config,
                    sequence,
                    scored.version,
                    scored.probability,
                    example.label == 1.0,
                ))
            }
            (Labelling::FakeNegative { final_at: None, .. }, Some(_)) => {
                counts.untimed += 1;
                None
            }
            (
                Labelling::FakeNegative {
                    id,
                    final_at: Some(final_at),
                },
                Some(scored),
            ) => {
                let hold = pending.hold(
                    config,
                    sequence,
                    id,
                    scored.version,
                    scored.probability,
                    final_at.timestamp_millis(),
                );
                counts.held += u64::from(hold == Hold::Held);
                Some(hold)
            }
            // A correction's own score is not judged: it settles the view it corrects, whose
            // prediction is the one made when the view arrived.
            (Labelling::Correction { corrects }, _) => {
                if pending.correct(corrects) {
                    counts.positives += 1;
                } else {
                    counts.unmatched += 1;
                }
                None
            }
            _ => None,
        };
        counts.overflow += u64::from(held == Some(Hold::Overflow));
        counts.negatives += pending.settle_due(config) as u64;
        let Some(chain) = pending.chain() else {
            return;
        };
        for settled in pending.release() {
            self.fold_error(checkpoint, sequence, chain, settled, folded);
        }
    }

    /// Feeds the error of one example whose label is final, scored by `chain`, to the error
    /// detectors, at the example `sequence` that released it.
    fn fold_error(
        &self,
        checkpoint: &mut Checkpoint,
        sequence: u64,
        chain: u64,
        view: Settled,
        folded: &mut Folded,
    ) {
        let state = &mut checkpoint.error;
        if state.version != Some(chain) {
            folded.error_reset = Some(state.version);
            *state = ErrorState {
                version: Some(chain),
                slots: self.fresh_errors.clone(),
            };
        }
        let (p, positive) = (view.probability, view.positive);
        let wrong = (p >= 0.5) != positive;
        folded.errors_observed += 1;
        for slot in &mut state.slots {
            let kind = slot.detector.kind();
            let x = match kind {
                DetectorKind::PageHinkley => log_loss(p, positive),
                // The squared error of the probability (the Brier score), in [0, 1] as ADWIN's
                // bound assumes: it moves with the model's confidence, so a change that leaves
                // its decisions right or wrong alike while its probabilities go astray (a model
                // that mostly says no, and buyers that change) still shows.
                DetectorKind::Adwin => (p - if positive { 1.0 } else { 0.0 }).powi(2),
                _ if wrong => 1.0,
                _ => 0.0,
            };
            let Some(signal) = slot.observe(sequence, x) else {
                continue;
            };
            // A falling error is the model getting better, not a change to act on.
            if signal.evidence.upward == Some(false) {
                folded.improvements += 1;
                slot.warned = false;
                continue;
            }
            folded
                .findings
                .push(finding(sequence, kind, Target::Error, signal));
        }
    }
}

fn finding(sequence: u64, detector: DetectorKind, target: Target, signal: Signal) -> Finding {
    Finding {
        sequence,
        detector,
        target,
        level: signal.level,
        statistic: signal.evidence.statistic,
        threshold: signal.evidence.threshold,
        window: signal.window,
        reference: signal.evidence.reference,
        recent: signal.evidence.recent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic noise source in [-0.5, 0.5), so tests need no random-number crate.
    fn noise(i: u64) -> f64 {
        let x = (i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 33) as f64;
        x / (1u64 << 31) as f64 - 0.5
    }

    /// An example as the adapter would hand it over, owning its data.
    #[derive(Debug, Clone)]
    struct Example {
        sequence: u64,
        schema: Option<(String, u32)>,
        plan: Vec<Watch>,
        features: Vec<f32>,
        label: f32,
        scored: Option<Scored>,
        delayed: Delayed,
        event_time: Option<DateTime<Utc>>,
    }

    /// What an example says of its label, owning its ids.
    #[derive(Debug, Clone, Default)]
    enum Delayed {
        #[default]
        Final,
        FakeNegative(String, Option<DateTime<Utc>>),
        Correction(String),
    }

    impl Example {
        fn observation(&self) -> Observation<'_> {
            Observation {
                sequence: self.sequence,
                schema: self.schema.as_ref(),
                plan: &self.plan,
                features: &self.features,
                label: self.label,
                feedback: match &self.delayed {
                    Delayed::Final => Labelling::Final,
                    Delayed::FakeNegative(id, final_at) => Labelling::FakeNegative {
                        id,
                        final_at: *final_at,
                    },
                    Delayed::Correction(corrects) => Labelling::Correction { corrects },
                },
                event_time: self.event_time,
                scored: self.scored,
            }
        }
    }

    const ALERT: ReactionPolicy<'static> = ReactionPolicy {
        reaction: freshet::control::Reaction::Alert,
        outstanding: None,
    };

    /// A stream of three features (sequences 1, 3, 5, ...: other models' examples sit between)
    /// where feature 1 moves up by `shift` from example `at`, and the live version `version`
    /// misses one example in ten before `at` and one in two after it when `error_rises`.
    fn stream(n: u64, at: u64, shift: f64, error_rises: bool, version: u64) -> Vec<Example> {
        (0..n)
            .map(|i| {
                let moved = if i >= at { shift } else { 0.0 };
                let miss = if error_rises && i >= at {
                    i % 2 == 0
                } else {
                    i % 10 == 0
                };
                Example {
                    sequence: 2 * i + 1,
                    schema: Some(("bookstore".to_string(), 2)),
                    plan: Vec::new(),
                    features: vec![
                        noise(3 * i) as f32,
                        (moved + noise(3 * i + 1)) as f32,
                        (10.0 + noise(3 * i + 2)) as f32,
                    ],
                    label: 1.0,
                    scored: Some(Scored {
                        version,
                        probability: if miss { 0.2 } else { 0.8 },
                    }),
                    delayed: Delayed::Final,
                    event_time: None,
                }
            })
            .collect()
    }

    fn fold_all(bank: &Bank, checkpoint: &mut Checkpoint, examples: &[Example]) -> Vec<Finding> {
        examples
            .iter()
            .flat_map(|e| bank.fold(checkpoint, &e.observation(), &ALERT).findings)
            .collect()
    }

    /// The defaults with small windows and no warm-up, so short streams exercise them.
    fn small() -> BankConfig {
        BankConfig {
            warm_up: 0,
            psi: StreamingPsiConfig {
                reference_size: 300,
                recent_size: 150,
                ..BankConfig::default().psi
            },
            ..Default::default()
        }
    }

    fn config(features: &[DetectorKind], errors: &[DetectorKind]) -> BankConfig {
        BankConfig {
            feature_detectors: features.to_vec(),
            error_detectors: errors.to_vec(),
            ..small()
        }
    }

    #[test]
    fn psi_finds_the_shifted_feature_and_only_it() {
        let bank = Bank::new(small()).unwrap();
        let mut checkpoint = bank.fresh();
        let findings = fold_all(&bank, &mut checkpoint, &stream(4_000, 2_000, 1.0, false, 1));
        let psi: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.detector == DetectorKind::Psi)
            .collect();
        assert!(!psi.is_empty());
        assert!(
            psi.iter().all(|f| f.target == Target::Feature(1)),
            "{psi:?}"
        );
        let drift = psi.iter().find(|f| f.level == Level::Drift).unwrap();
        // The shift starts at sequence 4001; the recent window (150) notices it well within.
        assert!(
            (4_001..4_001 + 2 * 150).contains(&drift.sequence),
            "{drift:?}"
        );
        assert!(drift.statistic >= drift.threshold.unwrap());
        assert_eq!((drift.reference, drift.recent), (Some(300), Some(150)));
        assert_eq!(drift.window.first, 1);
        assert_eq!(drift.window.last, drift.sequence);
        // Odd sequences only: the count is half of the last one, rounded up.
        assert_eq!(drift.window.count, drift.sequence.div_ceil(2));
        // Nothing else drifts: the other features are stationary and the error rate is steady.
        assert!(
            findings
                .iter()
                .all(|f| f.target == Target::Feature(1) || f.level == Level::Warning),
            "{findings:?}"
        );
    }

    #[test]
    fn ddm_finds_a_rising_error_rate() {
        let bank = Bank::new(config(&[], &[DetectorKind::Ddm, DetectorKind::Adwin])).unwrap();
        let mut checkpoint = bank.fresh();
        let findings = fold_all(&bank, &mut checkpoint, &stream(3_000, 1_500, 0.0, true, 4));
        assert!(
            findings
                .iter()
                .all(|f| f.target == Target::Error && f.sequence > 2 * 1_500),
            "nothing before the rise: {findings:?}"
        );
        let ddm = findings
            .iter()
            .find(|f| f.detector == DetectorKind::Ddm && f.level == Level::Drift)
            .unwrap();
        assert!(ddm.sequence < 2 * 1_700, "{ddm:?}");
        assert_eq!(ddm.window.first, 1);
        assert!(ddm.statistic > 0.1);
        assert!(
            findings
                .iter()
                .any(|f| f.detector == DetectorKind::Adwin && f.level == Level::Drift)
        );
        assert_eq!(checkpoint.error_version(), Some(4));
    }

    #[test]
    fn a_redelivered_batch_changes_nothing_and_reports_nothing() {
        let bank = Bank::new(small()).unwrap();
        let mut checkpoint = bank.fresh();
        let examples = stream(4_000, 2_000, 1.0, true, 1);
        let findings = fold_all(&bank, &mut checkpoint, &examples);
        assert!(!findings.is_empty());
        let after = checkpoint.clone();
        // The whole stream again, then its last batch again: nothing moves, nothing is found.
        for batch in [&examples[..], &examples[3_744..]] {
            for example in batch {
                let folded = bank.fold(&mut checkpoint, &example.observation(), &ALERT);
                assert_eq!(folded, Folded::default());
            }
            assert_eq!(checkpoint, after);
        }
        assert!(!bank.pass(&mut checkpoint, examples[10].sequence));
        assert_eq!(checkpoint, after);
    }

    #[test]
    fn a_checkpoint_read_back_mid_stream_continues_like_an_unbroken_run() {
        let bank = Bank::new(config(
            &[
                DetectorKind::Psi,
                DetectorKind::PageHinkley,
                DetectorKind::Adwin,
                DetectorKind::Kswin,
            ],
            &[
                DetectorKind::Ddm,
                DetectorKind::Adwin,
                DetectorKind::PageHinkley,
            ],
        ))
        .unwrap();
        // A feature shift and an error rise, then a new live version with a higher error level.
        let mut examples = stream(4_000, 2_000, 1.0, true, 1);
        for example in stream(1_000, 0, 1.0, true, 2) {
            examples.push(Example {
                sequence: example.sequence + 8_000,
                ..example
            });
        }
        let mut straight = bank.fresh();
        let expected = fold_all(&bank, &mut straight, &examples);
        assert!(expected.iter().any(|f| f.target == Target::Error));
        assert!(expected.iter().any(|f| f.target == Target::Feature(1)));

        // Cut into batches of 256, each checkpoint written to JSON and read back.
        let mut resumed = bank.fresh();
        let mut got = Vec::new();
        for batch in examples.chunks(256) {
            got.extend(fold_all(&bank, &mut resumed, batch));
            let json = serde_json::to_vec(&resumed).unwrap();
            let (restored, how) = bank.decode(Some(&json));
            assert_eq!(how, Restored::AsWritten);
            assert_eq!(restored, resumed);
            resumed = restored;
        }
        assert_eq!(got, expected);
        assert_eq!(resumed, straight);
        assert_eq!(resumed.error_version(), Some(2));
    }

    #[test]
    fn non_finite_values_never_reach_a_detector() {
        let bank = Bank::new(config(
            &[DetectorKind::PageHinkley],
            &[DetectorKind::Ddm, DetectorKind::PageHinkley],
        ))
        .unwrap();
        let mut checkpoint = bank.fresh();
        let good = &stream(50, 0, 0.0, false, 1)[..];
        fold_all(&bank, &mut checkpoint, good);
        let windows = |c: &Checkpoint| {
            let features: Vec<Option<Window>> =
                c.features.slots.iter().map(|s| s[0].window).collect();
            let errors: Vec<Option<Window>> = c.error.slots.iter().map(|s| s.window).collect();
            (features, errors)
        };
        let before = windows(&checkpoint);
        assert_eq!(before.0[0].unwrap().count, 50);
        for (k, probability) in [f64::NAN, f64::INFINITY, -0.1, 1.5].into_iter().enumerate() {
            let bad = Example {
                sequence: 1_000 + k as u64,
                schema: good[0].schema.clone(),
                plan: Vec::new(),
                features: vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY],
                label: 1.0,
                scored: Some(Scored {
                    version: 1,
                    probability,
                }),
                delayed: Delayed::Final,
                event_time: None,
            };
            let folded = bank.fold(&mut checkpoint, &bad.observation(), &ALERT);
            assert!(folded.new && folded.errors_observed == 0 && folded.findings.is_empty());
            assert_eq!(windows(&checkpoint), before);
        }
        // The mark still moved: the examples were handled, just not observed.
        assert_eq!(checkpoint.last_sequence, 1_003);
    }

    #[test]
    fn a_new_live_version_starts_the_error_detectors_afresh() {
        let bank = Bank::new(config(&[], &[DetectorKind::Ddm])).unwrap();
        let mut checkpoint = bank.fresh();
        let first = stream(100, 0, 0.0, false, 3);
        fold_all(&bank, &mut checkpoint, &first);
        assert_eq!(checkpoint.error.slots[0].window.unwrap().count, 100);
        let next = Example {
            sequence: 1_000,
            scored: Some(Scored {
                version: 4,
                probability: 0.9,
            }),
            ..first[0].clone()
        };
        let folded = bank.fold(&mut checkpoint, &next.observation(), &ALERT);
        assert_eq!(folded.error_reset, Some(Some(3)));
        assert_eq!(
            checkpoint.error.slots[0].window,
            Some(Window {
                first: 1_000,
                last: 1_000,
                count: 1
            })
        );
        assert_eq!(checkpoint.error_version(), Some(4));
        // An unscored example leaves the error detectors alone.
        let unscored = Example {
            sequence: 1_001,
            scored: None,
            ..next
        };
        let folded = bank.fold(&mut checkpoint, &unscored.observation(), &ALERT);
        assert!(folded.new && folded.errors_observed == 0 && folded.error_reset.is_none());
    }

    #[test]
    fn a_new_schema_starts_the_feature_detectors_afresh() {
        let bank = Bank::new(config(&[DetectorKind::PageHinkley], &[])).unwrap();
        let mut checkpoint = bank.fresh();
        let examples = stream(10, 0, 0.0, false, 1);
        fold_all(&bank, &mut checkpoint, &examples);
        assert_eq!(checkpoint.features.slots[2][0].window.unwrap().count, 10);
        let wider = Example {
            sequence: 100,
            features: vec![1.0; 4],
            ..examples[0].clone()
        };
        bank.fold(&mut checkpoint, &wider.observation(), &ALERT);
        assert_eq!(checkpoint.features.width, 4);
        assert_eq!(checkpoint.features.slots[2][0].window.unwrap().count, 1);
    }

    #[test]
    fn a_warning_is_reported_once_on_entering_the_zone() {
        let mut raw = Ddm::default();
        let mut tracked = Tracked::new(AnyDetector::Ddm(Ddm::default()));
        let (mut raw_warnings, mut reported) = (0, Vec::new());
        let outcomes = (0..1_000)
            .map(|i| i % 10 == 0)
            .chain(std::iter::repeat(true));
        for (sequence, error) in (1..).zip(outcomes).take(1_200) {
            let x = if error { 1.0 } else { 0.0 };
            let level = raw.update(x).unwrap().level;
            raw_warnings += usize::from(level == Level::Warning);
            if let Some(signal) = tracked.observe(sequence, x) {
                reported.push(signal.level);
            }
            if level == Level::Drift {
                break;
            }
        }
        assert!(raw_warnings > 1, "the zone lasts several values");
        assert_eq!(reported, vec![Level::Warning, Level::Drift]);
    }

    #[test]
    fn settings_are_checked() {
        use DetectorKind::*;
        assert_eq!(
            "psi, adwin".parse::<DetectorList>().unwrap(),
            DetectorList(vec![Psi, Adwin])
        );
        assert_eq!(
            "none".parse::<DetectorList>().unwrap(),
            DetectorList(vec![])
        );
        assert!("psi,ks".parse::<DetectorList>().is_err());
        assert!(matches!(
            Bank::new(config(&[Ddm], &[])),
            Err(BankError::Misplaced { detector: Ddm, .. })
        ));
        assert!(matches!(
            Bank::new(config(&[], &[Psi])),
            Err(BankError::Misplaced { detector: Psi, .. })
        ));
        assert!(matches!(
            Bank::new(config(&[Psi, Psi], &[])),
            Err(BankError::Repeated { .. })
        ));
        assert_eq!(Bank::new(config(&[], &[])).unwrap_err(), BankError::Empty);
        for alpha in [0.0, 0.5, f64::NAN] {
            let mut bad = config(&[Psi], &[]);
            bad.feature_alpha = alpha;
            assert!(matches!(Bank::new(bad), Err(BankError::Budget { .. })));
        }
        let mut bad = config(&[Psi], &[]);
        bad.psi.recent_size = 0;
        assert!(matches!(Bank::new(bad), Err(BankError::Detector(_))));
    }

    #[test]
    fn a_stored_checkpoint_is_taken_up_as_far_as_it_can_be() {
        let bank = Bank::new(config(
            &[DetectorKind::Psi, DetectorKind::PageHinkley],
            &[DetectorKind::Adwin],
        ))
        .unwrap();
        assert_eq!(bank.decode(None), (bank.fresh(), Restored::Missing));
        let mut checkpoint = bank.fresh();
        fold_all(&bank, &mut checkpoint, &stream(20, 0, 0.0, false, 1));
        assert_eq!(checkpoint.last_sequence, 39);

        // Other settings: the mark stays, the detectors start afresh.
        let other = Bank::new(config(&[DetectorKind::Adwin], &[DetectorKind::Ddm])).unwrap();
        let (taken, how) = other.decode(Some(&serde_json::to_vec(&checkpoint).unwrap()));
        assert_eq!(how, Restored::Reconfigured);
        assert_eq!(taken.last_sequence, 39);
        assert_eq!(taken.examples, 20);
        assert_eq!(taken.config, *other.config());
        assert!(taken.features.slots.is_empty() && taken.error.version.is_none());

        // Damaged, but the mark is legible; then not even that.
        let (taken, how) = bank.decode(Some(br#"{"last_sequence": 77, "features": 1}"#));
        assert!(matches!(
            how,
            Restored::Unreadable {
                kept_mark: Some(77),
                ..
            }
        ));
        assert_eq!(taken.last_sequence, 77);
        let (taken, how) = bank.decode(Some(b"\xff"));
        assert!(matches!(
            how,
            Restored::Unreadable {
                kept_mark: None,
                ..
            }
        ));
        assert_eq!(taken, bank.fresh());

        // Another format (the first, which had no episodes; or a later one) is read for its
        // mark only.
        let mut json = serde_json::to_value(&checkpoint).unwrap();
        json["format"] = 1.into();
        let (taken, how) = bank.decode(Some(&serde_json::to_vec(&json).unwrap()));
        assert!(matches!(
            how,
            Restored::Unreadable {
                kept_mark: Some(39),
                ..
            }
        ));
        assert_eq!(taken.last_sequence, 39);

        // A detector of the wrong kind in a slot is not taken as written.
        let mut json = serde_json::to_value(&checkpoint).unwrap();
        json["features"]["slots"][0][0] = json["features"]["slots"][0][1].clone();
        let (_, how) = bank.decode(Some(&serde_json::to_vec(&json).unwrap()));
        assert_eq!(how, Restored::Reconfigured);
    }
    /// Example `i` of a bookstore-like stream: feature 0 a running count (it grows), feature 1
    /// noise, feature 2 noise that shifts up by `shift` from example `at`; the live version
    /// misses one in ten before `at` and one in `after` from it.
    fn shop(i: u64, at: u64, shift: f64, after: u64) -> Example {
        let moved = if i >= at { shift } else { 0.0 };
        let miss = if i >= at {
            i.is_multiple_of(after)
        } else {
            i.is_multiple_of(10)
        };
        Example {
            sequence: i + 1,
            schema: Some(("shop".to_string(), 1)),
            plan: vec![Watch::Ignore, Watch::Value, Watch::Log1p],
            features: vec![
                (i as f64).ln_1p() as f32,
                noise(3 * i) as f32,
                (5.0 + moved + noise(3 * i + 1)).exp_m1() as f32,
            ],
            label: 1.0,
            scored: Some(Scored {
                version: 1,
                probability: if miss { 0.2 } else { 0.8 },
            }),
            delayed: Delayed::Final,
            event_time: None,
        }
    }

    #[test]
    fn the_plan_says_what_is_read_and_counts_the_tests() {
        let bank = Bank::new(config(&[DetectorKind::Psi, DetectorKind::Adwin], &[])).unwrap();
        let mut checkpoint = bank.fresh();
        let examples: Vec<Example> = (0..20_000).map(|i| shop(i, u64::MAX, 0.0, 10)).collect();
        let findings = fold_all(&bank, &mut checkpoint, &examples);
        // The running count would drift at every window; it is not read at all.
        assert!(findings.is_empty(), "{findings:?}");
        assert!(checkpoint.features.slots[0].is_empty());
        assert_eq!(checkpoint.watched(), vec![1, 2]);
        // Two watched features × two detectors share the budget.
        let level = bank.config().feature_alpha / 4.0;
        let AnyDetector::Adwin(adwin) = &checkpoint.features.slots[1][1].detector else {
            panic!("adwin second");
        };
        assert_eq!(adwin.config().delta, level);
        let AnyDetector::Psi(psi) = &checkpoint.features.slots[2][0].detector else {
            panic!("psi first");
        };
        assert_eq!(psi.config().significance.unwrap().drift, level);
    }

    #[test]
    fn the_error_is_read_after_the_warm_up_only() {
        let bank = Bank::new(BankConfig {
            warm_up: 500,
            ..config(&[], &[DetectorKind::Ddm])
        })
        .unwrap();
        let mut checkpoint = bank.fresh();
        let examples: Vec<Example> = (0..800).map(|i| shop(i, u64::MAX, 0.0, 10)).collect();
        fold_all(&bank, &mut checkpoint, &examples);
        let window = checkpoint.error.slots[0].window.unwrap();
        assert_eq!((window.first, window.count), (501, 300));
    }

    #[test]
    fn features_are_read_after_the_warm_up_only() {
        let bank = Bank::new(BankConfig {
            warm_up: 500,
            ..config(&[DetectorKind::PageHinkley], &[])
        })
        .unwrap();
        let mut checkpoint = bank.fresh();
        let examples: Vec<Example> = (0..800).map(|i| shop(i, u64::MAX, 0.0, 10)).collect();
        fold_all(&bank, &mut checkpoint, &examples);
        let window = checkpoint.features.slots[1][0].window.unwrap();
        assert_eq!((window.first, window.count), (501, 300));
    }

    #[test]
    fn each_family_splits_its_budget_and_each_detector_turns_its_share_into_a_threshold() {
        let config = BankConfig {
            error_alpha: 2e-3,
            ..config(&[], &[DetectorKind::Ddm, DetectorKind::Adwin])
        };
        assert_eq!(config.test_level(Family::Error, 2), 1e-3);
        assert_eq!(config.test_level(Family::Features, 5), 2e-8);
        let bank = Bank::new(config).unwrap();
        let slots = &bank.fresh_errors;
        let AnyDetector::Ddm(ddm) = &slots[0].detector else {
            panic!("ddm first");
        };
        // P(Z > 3.0902) = 1e-3 and P(Z > 2.3263) = 1e-2 (ten times the drift level).
        assert!((ddm.config().drift_threshold - 3.090_232).abs() < 1e-5);
        assert!((ddm.config().warning_threshold - 2.326_348).abs() < 1e-5);
        let AnyDetector::Adwin(adwin) = &slots[1].detector else {
            panic!("adwin second");
        };
        assert_eq!((adwin.config().delta, adwin.config().clock), (1e-3, 1));
    }

    #[test]
    fn a_falling_error_is_not_a_change() {
        let bank = Bank::new(config(&[], &[DetectorKind::Adwin])).unwrap();
        let mut checkpoint = bank.fresh();
        // One miss in two, then one in ten: the model got better.
        let examples: Vec<Example> = (0..6_000)
            .map(|i| shop(i, 3_000, 0.0, 10))
            .map(|e| Example {
                scored: e.scored.map(|s| Scored {
                    probability: if e.sequence <= 3_000 && e.sequence % 2 == 0 {
                        0.2
                    } else {
                        s.probability
                    },
                    ..s
                }),
                ..e
            })
            .collect();
        let mut improvements = 0;
        let mut findings = Vec::new();
        for e in &examples {
            let folded = bank.fold(&mut checkpoint, &e.observation(), &ALERT);
            improvements += folded.improvements;
            findings.extend(folded.findings);
        }
        assert!(improvements >= 1);
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn one_change_seen_on_a_feature_and_the_error_is_one_episode() {
        let bank = Bank::new(config(&[DetectorKind::Psi], &[DetectorKind::Adwin])).unwrap();
        let mut checkpoint = bank.fresh();
        let policy = ReactionPolicy {
            reaction: freshet::control::Reaction::TrainCandidate,
            outstanding: None,
        };
        let mut transitions = Vec::new();
        let mut findings = Vec::new();
        for i in 0..20_000 {
            let folded = bank.fold(
                &mut checkpoint,
                &shop(i, 8_000, 1.0, 3).observation(),
                &policy,
            );
            findings.extend(folded.findings);
            transitions.extend(folded.transition);
        }
        // Both the feature and the error signal, each perhaps several times.
        assert!(findings.iter().any(|f| f.target == Target::Feature(2)));
        assert!(findings.iter().any(|f| f.target == Target::Error));
        assert!(findings.iter().all(|f| f.sequence > 8_000), "{findings:?}");
        let states: Vec<(u64, crate::episodes::EpisodeState)> = transitions
            .iter()
            .map(|t| (t.episode.id, t.state()))
            .collect();
        use crate::episodes::EpisodeState::*;
        assert!(
            states == vec![(1, Drift), (1, Resolved)]
                || states == vec![(1, Warning), (1, Drift), (1, Resolved)],
            "{states:?}"
        );
        let resolved = &transitions.last().unwrap().episode;
        assert!(resolved.signals.len() >= 2);
        assert_eq!(
            resolved.reaction.as_ref().unwrap().requested(),
            freshet::control::Reaction::TrainCandidate
        );
        // Its span: from the first signal to the resolution, the re-arm span after the last.
        assert!(resolved.opened > 8_000 && resolved.opened < 8_000 + 1_000);
        assert!(resolved.resolved.unwrap() >= resolved.last_active + 10_000);
    }

    #[test]
    fn episodes_survive_a_change_of_settings() {
        let bank = Bank::new(config(&[DetectorKind::Psi], &[DetectorKind::Adwin])).unwrap();
        let mut checkpoint = bank.fresh();
        for i in 0..9_000 {
            bank.fold(
                &mut checkpoint,
                &shop(i, 8_000, 1.0, 3).observation(),
                &ALERT,
            );
        }
        let open = checkpoint.episodes.open().cloned().unwrap();
        let other = Bank::new(config(&[DetectorKind::Psi], &[DetectorKind::Ddm])).unwrap();
        let (taken, how) = other.decode(Some(&serde_json::to_vec(&checkpoint).unwrap()));
        assert_eq!(how, Restored::Reconfigured);
        assert_eq!(taken.episodes.open(), Some(&open));
    }

    /// A view stream with fake-negative weighting: view `i` at second `i` of event time goes
    /// out as a fake negative (final 60 s later) and, if it converts, its correction follows
    /// `delay` views later. A view converts with probability `rate`, or `after` from view `at`;
    /// the live model `chain` predicts 0.1 for every view.
    fn fnw(n: u64, rate: f64, at: u64, after: f64, delay: u64, chain: u64) -> Vec<Example> {
        let start = DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::days(20_000);
        let time = |i: u64| start + chrono::TimeDelta::seconds(i as i64);
        let mut corrections: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
        let mut examples = Vec::new();
        let push = |examples: &mut Vec<Example>, delayed: Delayed, view: u64, label: f32| {
            examples.push(Example {
                sequence: examples.len() as u64 + 1,
                schema: Some(("bookstore".to_string(), 2)),
                plan: Vec::new(),
                features: vec![noise(view) as f32],
                label,
                scored: Some(Scored {
                    version: chain,
                    probability: 0.1,
                }),
                delayed,
                event_time: Some(time(view)),
            });
        };
        for i in 0..n {
            push(
                &mut examples,
                Delayed::FakeNegative(
                    format!("ex-v{i}"),
                    Some(time(i) + chrono::TimeDelta::seconds(60)),
                ),
                i,
                0.0,
            );
            let p = if i >= at { after } else { rate };
            if noise(7 * i + 3) + 0.5 < p {
                corrections.entry(i + delay).or_default().push(i);
            }
            for view in corrections.remove(&i).unwrap_or_default() {
                push(
                    &mut examples,
                    Delayed::Correction(format!("ex-v{view}")),
                    view,
                    1.0,
                );
            }
        }
        examples
    }

    fn adwin_only() -> BankConfig {
        BankConfig {
            pending: PendingConfig {
                capacity: 1_000,
                lateness_ms: 5_000,
            },
            ..config(&[], &[DetectorKind::Adwin])
        }
    }

    #[test]
    fn a_views_error_is_judged_once_its_label_is_final() {
        let bank = Bank::new(adwin_only()).unwrap();
        let mut checkpoint = bank.fresh();
        let examples = fnw(20_000, 0.1, u64::MAX, 0.1, 20, 1);
        let mut counts = FeedbackCounts::default();
        let (mut judged, mut findings) = (0, Vec::new());
        for e in &examples {
            let folded = bank.fold(&mut checkpoint, &e.observation(), &ALERT);
            counts.add(&folded.feedback);
            judged += folded.errors_observed;
            findings.extend(folded.findings);
        }
        // A model right about the true rate is not wrong on the views that will convert.
        assert!(findings.is_empty(), "{findings:?}");
        let corrections = examples.len() as u64 - 20_000;
        assert_eq!(counts.held, 20_000);
        assert_eq!(
            counts.positives, corrections,
            "every correction settles its view"
        );
        // Views final 60 s after them settle once the watermark (latest − 5 s) passes: all
        // but the last 65 or so.
        let waiting = checkpoint.pending.waiting() as u64;
        assert_eq!(waiting, 20_000 - counts.positives - counts.negatives);
        assert!((60..=70).contains(&waiting), "{waiting}");
        // Released in the views' order: all but what follows the first view still waiting.
        let held = checkpoint.pending_views() as u64;
        assert!(held >= waiting && held < waiting + 20, "{held}");
        assert_eq!(judged, 20_000 - held);
        assert_eq!(
            counts.unmatched + counts.overflow + counts.untimed + counts.dropped,
            0
        );
        assert_eq!(checkpoint.error.slots[0].window.unwrap().count, judged);
    }

    #[test]
    fn a_flip_of_who_buys_shows_in_the_settled_error() {
        let bank = Bank::new(adwin_only()).unwrap();
        let mut checkpoint = bank.fresh();
        let examples = fnw(20_000, 0.1, 10_000, 0.5, 20, 1);
        let first_changed = examples
            .iter()
            .position(|e| matches!(&e.delayed, Delayed::FakeNegative(id, _) if id == "ex-v10000"))
            .unwrap() as u64
            + 1;
        let findings = fold_all(&bank, &mut checkpoint, &examples);
        let drift = findings
            .iter()
            .find(|f| f.level == Level::Drift)
            .expect("the flip is found");
        assert!(drift.sequence > first_changed, "{drift:?}");
        assert!(
            findings.iter().all(|f| f.sequence > first_changed),
            "{findings:?}"
        );
    }

    #[test]
    fn held_views_survive_a_restart_and_settle_exactly_once() {
        let bank = Bank::new(adwin_only()).unwrap();
        let examples = fnw(6_000, 0.1, 3_000, 0.5, 20, 1);
        let mut straight = bank.fresh();
        let expected = fold_all(&bank, &mut straight, &examples);
        let mut resumed = bank.fresh();
        let mut got = Vec::new();
        for batch in examples.chunks(97) {
            // A batch folded, then lost before its checkpoint was written: folded again.
            let mut lost = resumed.clone();
            fold_all(&bank, &mut lost, batch);
            got.extend(fold_all(&bank, &mut resumed, batch));
            // Redelivered after the write: at or below the mark, nothing happens.
            assert!(fold_all(&bank, &mut resumed, batch).is_empty());
            let json = serde_json::to_vec(&resumed).unwrap();
            let (restored, how) = bank.decode(Some(&json));
            assert_eq!(how, Restored::AsWritten);
            assert_eq!(restored, resumed);
            resumed = restored;
        }
        assert_eq!(got, expected);
        assert_eq!(resumed, straight);
        assert!(straight.pending_views() > 0);
    }

    #[test]
    fn a_full_buffer_declines_views_and_another_chain_drops_them() {
        let bank = Bank::new(BankConfig {
            pending: PendingConfig {
                capacity: 10,
                lateness_ms: 0,
            },
            ..adwin_only()
        })
        .unwrap();
        let mut checkpoint = bank.fresh();
        let mut counts = FeedbackCounts::default();
        // Twenty views in one second of event time: nothing settles, ten are declined.
        let crowded: Vec<Example> = fnw(20, 0.0, u64::MAX, 0.0, 1, 1)
            .into_iter()
            .map(|e| Example {
                event_time: examples_start(),
                delayed: match e.delayed {
                    Delayed::FakeNegative(id, _) => Delayed::FakeNegative(id, examples_start()),
                    other => other,
                },
                ..e
            })
            .collect();
        for e in &crowded {
            counts.add(
                &bank
                    .fold(&mut checkpoint, &e.observation(), &ALERT)
                    .feedback,
            );
        }
        assert_eq!((counts.held, counts.overflow), (10, 10));
        assert_eq!(checkpoint.pending_views(), 10);
        // The correction of a declined view finds nothing to settle.
        let late = Example {
            sequence: 100,
            label: 1.0,
            delayed: Delayed::Correction("ex-v15".into()),
            ..crowded[0].clone()
        };
        let folded = bank.fold(&mut checkpoint, &late.observation(), &ALERT);
        assert_eq!((folded.feedback.unmatched, folded.errors_observed), (1, 0));
        // A view scored by another chain: the old chain's views are dropped.
        let other = Example {
            sequence: 101,
            label: 0.0,
            delayed: Delayed::FakeNegative("ex-w1".into(), examples_start()),
            scored: Some(Scored {
                version: 9,
                probability: 0.3,
            }),
            ..crowded[0].clone()
        };
        let folded = bank.fold(&mut checkpoint, &other.observation(), &ALERT);
        assert_eq!((folded.feedback.dropped, folded.feedback.held), (10, 1));
        assert_eq!(checkpoint.pending_views(), 1);
        // A fake negative that does not say when it is final is never judged.
        let untimed = Example {
            sequence: 102,
            delayed: Delayed::FakeNegative("ex-w2".into(), None),
            ..other
        };
        let folded = bank.fold(&mut checkpoint, &untimed.observation(), &ALERT);
        assert_eq!(folded.feedback.untimed, 1);
        assert_eq!(checkpoint.pending_views(), 1);
    }

    fn examples_start() -> Option<DateTime<Utc>> {
        Some(DateTime::<Utc>::UNIX_EPOCH + chrono::TimeDelta::days(20_000))
    }

    #[test]
    fn a_checkpoint_from_before_views_were_held_starts_its_detectors_afresh() {
        let bank = Bank::new(adwin_only()).unwrap();
        let mut checkpoint = bank.fresh();
        fold_all(&bank, &mut checkpoint, &stream(50, 0, 0.0, false, 1));
        let mut json = serde_json::to_value(&checkpoint).unwrap();
        json["config"].as_object_mut().unwrap().remove("pending");
        json.as_object_mut().unwrap().remove("pending");
        let (taken, how) = bank.decode(Some(&serde_json::to_vec(&json).unwrap()));
        assert_eq!(how, Restored::Reconfigured);
        assert_eq!(taken.last_sequence, checkpoint.last_sequence);
        assert!(taken.error.version.is_none());
    }
}
