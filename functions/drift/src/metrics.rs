//! The metrics drift exports beside the common ones, on `/metrics`.
//!
//! Observations, detections and episode transitions are counted when the checkpoint holding them
//! is written, so a batch folded again after a lost compare-and-set is not counted twice. Label
//! values are bounded: detectors are five, states three, and a feature is named only among the
//! first [`MAX_NAMED_FEATURES`] of its schema (the others share the label `feature`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::bank::{BankConfig, DetectorKind};
use freshet::control::EpisodeState;
use freshet_drift::detectors::Level;

/// Features beyond this index are labelled `feature` rather than by name.
pub const MAX_NAMED_FEATURES: usize = 64;

/// What an observation fed: `features` (one per example) or `error` (one per scored example).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: String,
}

/// Which detector reported, at what level, on `feature` or `error`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectionLabel {
    pub detector: String,
    pub target: String,
    pub level: String,
}

impl DetectionLabel {
    /// The label of a detection by `detector` on the error stream (`error`) or a feature.
    pub fn new(detector: DetectorKind, error: bool, level: Level) -> DetectionLabel {
        DetectionLabel {
            detector: detector.as_str().to_string(),
            target: if error { "error" } else { "feature" }.to_string(),
            level: level.as_str().to_string(),
        }
    }
}

/// The detector and target of an episode's headline signal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EpisodeLabel {
    pub detector: String,
    /// The feature's name, `feature` beyond [`MAX_NAMED_FEATURES`], or `error`.
    pub target: String,
}

impl EpisodeLabel {
    /// For a signal of `detector` on feature `(index, name)`, or on the error (`None`).
    pub fn new(detector: DetectorKind, feature: Option<(usize, String)>) -> EpisodeLabel {
        let target = match feature {
            None => "error".to_string(),
            Some((index, name)) if index < MAX_NAMED_FEATURES => name,
            Some(_) => "feature".to_string(),
        };
        EpisodeLabel {
            detector: detector.as_str().to_string(),
            target,
        }
    }
}

/// A transition: the state an episode entered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

impl StateLabel {
    pub fn new(state: EpisodeState) -> StateLabel {
        StateLabel {
            state: state.as_str().to_string(),
        }
    }
}

/// What became of the reaction when an episode was confirmed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReactionLabel {
    pub outcome: String,
}

impl ReactionLabel {
    pub fn new(requested: bool) -> ReactionLabel {
        ReactionLabel {
            outcome: if requested { "requested" } else { "withheld" }.to_string(),
        }
    }
}

/// What became of a delayed label (see [`crate::bank::FeedbackCounts`]).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedbackLabel {
    pub outcome: String,
}

/// The outcomes of delayed labels, in the order of [`FeedbackLabel`]'s values.
pub const FEEDBACK_OUTCOMES: [&str; 7] = [
    "held",
    "overflow",
    "untimed",
    "dropped",
    "settled_positive",
    "settled_negative",
    "unmatched",
];

impl FeedbackLabel {
    pub fn new(outcome: &str) -> FeedbackLabel {
        FeedbackLabel {
            outcome: outcome.to_string(),
        }
    }
}

/// Counters and gauges of one drift function, cloned into the processor and the live follower.
#[derive(Clone, Default)]
pub struct DriftMetrics {
    pub observations: Family<StreamLabel, Counter>,
    pub detections: Family<DetectionLabel, Counter>,
    pub episodes: Family<StateLabel, Counter>,
    pub episodes_open: Family<EpisodeLabel, Gauge>,
    pub reactions: Family<ReactionLabel, Counter>,
    pub improvements: Counter,
    pub checkpoint_writes: Counter,
    pub checkpoint_conflicts: Counter,
    pub error_resets: Counter,
    pub live_version: Gauge,
    pub refused_versions: Counter,
    pub feedback: Family<FeedbackLabel, Counter>,
    pub pending_views: Gauge,
}

impl DriftMetrics {
    /// Registers every metric, with a zero for each configured detector and level, and each
    /// episode state, so dashboards show zeros rather than gaps.
    pub fn register(&self, metrics: &freshet::metrics::Metrics, config: &BankConfig) {
        metrics.register(
            "observations",
            "Examples folded into the detectors, by stream (features, error)",
            self.observations.clone(),
        );
        metrics.register(
            "detections",
            "Detector signals (each joins an episode), by detector, target and level",
            self.detections.clone(),
        );
        metrics.register(
            "drift_episodes",
            "Drift episodes entering each state: warning (opened by a warning), drift (confirmed), resolved",
            self.episodes.clone(),
        );
        metrics.register(
            "drift_episodes_open",
            "1 while an episode is open, by the detector and target of its headline signal",
            self.episodes_open.clone(),
        );
        metrics.register(
            "drift_reactions",
            "Reactions at confirmed episodes: requested, or withheld while another was in flight",
            self.reactions.clone(),
        );
        metrics.register(
            "error_improvements",
            "Times an error detector found the error had fallen (not a drift) and started afresh",
            self.improvements.clone(),
        );
        metrics.register(
            "checkpoint_writes",
            "Detector checkpoints written to the DRIFT bucket",
            self.checkpoint_writes.clone(),
        );
        metrics.register(
            "checkpoint_conflicts",
            "Checkpoint compare-and-set conflicts (another writer won; the batch is redelivered)",
            self.checkpoint_conflicts.clone(),
        );
        metrics.register(
            "error_detector_resets",
            "Times the error detectors started afresh for a new live version",
            self.error_resets.clone(),
        );
        metrics.register(
            "live_version",
            "The live version whose errors are watched",
            self.live_version.clone(),
        );
        metrics.register(
            "refused_versions",
            "Live versions that could not be loaded or verified",
            self.refused_versions.clone(),
        );
        metrics.register(
            "drift_delayed_labels",
            "Fake negatives and corrections, by what became of them: held until final, not held \
             (overflow: the buffer was full; untimed: no final_at), dropped (live moved to another \
             chain), settled_positive (a correction), settled_negative (final_at passed), \
             unmatched (a correction naming no held view)",
            self.feedback.clone(),
        );
        metrics.register(
            "drift_pending_views",
            "Views whose prediction is held until their label is final",
            self.pending_views.clone(),
        );
        for outcome in FEEDBACK_OUTCOMES {
            let _ = self.feedback.get_or_create(&FeedbackLabel::new(outcome));
        }
        for stream in ["features", "error"] {
            let _ = self.observations.get_or_create(&StreamLabel {
                stream: stream.to_string(),
            });
        }
        for state in [
            EpisodeState::Warning,
            EpisodeState::Drift,
            EpisodeState::Resolved,
        ] {
            let _ = self.episodes.get_or_create(&StateLabel::new(state));
        }
        for requested in [true, false] {
            let _ = self.reactions.get_or_create(&ReactionLabel::new(requested));
        }
        let watched = config
            .feature_detectors
            .iter()
            .map(|d| (*d, false))
            .chain(config.error_detectors.iter().map(|d| (*d, true)));
        for (detector, error) in watched {
            for level in [Level::Warning, Level::Drift] {
                let _ = self
                    .detections
                    .get_or_create(&DetectionLabel::new(detector, error, level));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn episode_labels_are_bounded() {
        let named = EpisodeLabel::new(DetectorKind::Psi, Some((8, "item_log_price".into())));
        assert_eq!(named.target, "item_log_price");
        let far = EpisodeLabel::new(DetectorKind::Psi, Some((500, "f500".into())));
        assert_eq!(far.target, "feature");
        let error = EpisodeLabel::new(DetectorKind::Adwin, None);
        assert_eq!(
            (error.detector.as_str(), error.target.as_str()),
            ("adwin", "error")
        );
    }
}
