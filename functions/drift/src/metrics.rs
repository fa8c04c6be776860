//! The metrics drift exports beside the common ones, on `/metrics`.
//!
//! Observations and detections are counted when the checkpoint holding them is written, so a
//! batch folded again after a lost compare-and-set is not counted twice.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::bank::{BankConfig, DetectorKind};
use freshet_drift::detectors::Level;

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
            level: match level {
                Level::Stable => "stable",
                Level::Warning => "warning",
                Level::Drift => "drift",
            }
            .to_string(),
        }
    }
}

/// Counters and gauges of one drift function, cloned into the processor and the live follower.
#[derive(Clone, Default)]
pub struct DriftMetrics {
    pub observations: Family<StreamLabel, Counter>,
    pub detections: Family<DetectionLabel, Counter>,
    pub checkpoint_writes: Counter,
    pub checkpoint_conflicts: Counter,
    pub error_resets: Counter,
    pub live_version: Gauge,
    pub refused_versions: Counter,
}

impl DriftMetrics {
    /// Registers every metric, with a zero for each configured detector and level so dashboards
    /// show zeros rather than gaps.
    pub fn register(&self, metrics: &freshet::metrics::Metrics, config: &BankConfig) {
        metrics.register(
            "observations",
            "Examples folded into the detectors, by stream (features, error)",
            self.observations.clone(),
        );
        metrics.register(
            "detections",
            "Warnings and drifts reported, by detector, target and level",
            self.detections.clone(),
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
        for stream in ["features", "error"] {
            let _ = self.observations.get_or_create(&StreamLabel {
                stream: stream.to_string(),
            });
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
