//! What functions tell each other on CONTROL (`<prefix>.control.<model>.<kind>`): the reaction a
//! drift detection requests, the part of a drift event train acts on, and the promotion gate's
//! decisions with their evidence.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::ModelName;

/// The CONTROL kind of drift detections.
pub const KIND_DRIFT: &str = "drift";
/// The CONTROL kind of the promotion gate's decisions.
pub const KIND_GATE: &str = "gate";
/// The CONTROL kind of train's quarantine changes.
pub const KIND_QUARANTINE: &str = "quarantine";

/// What a detection asks the rest of the system to do about the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reaction {
    /// Tell people; change nothing.
    Alert,
    /// Ask train to raise the learning rate, so the model catches up with the change faster.
    RaiseLr,
    /// Ask train to fit a candidate beside the live version, for the gate to judge.
    TrainCandidate,
}

impl Reaction {
    /// The name used in flags and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reaction::Alert => "alert",
            Reaction::RaiseLr => "raise_lr",
            Reaction::TrainCandidate => "train_candidate",
        }
    }
}

impl fmt::Display for Reaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a reaction name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reaction {0:?}: use alert, raise_lr or train_candidate")]
pub struct UnknownReaction(String);

impl FromStr for Reaction {
    type Err = UnknownReaction;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "alert" => Ok(Reaction::Alert),
            "raise_lr" => Ok(Reaction::RaiseLr),
            "train_candidate" => Ok(Reaction::TrainCandidate),
            other => Err(UnknownReaction(other.to_string())),
        }
    }
}

/// What train reads of a drift event: enough to decide whether to react. Other fields are
/// ignored, so the event can grow without breaking train.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DriftNotice {
    pub kind: String,
    pub model: ModelName,
    /// `warning` or `drift`; train reacts to `drift` only.
    pub level: String,
    /// The feature's name, or `error` for the live model's prediction error.
    pub target: String,
    /// Stream sequence of the example that made the detector signal.
    pub sequence: u64,
    pub reaction: Reaction,
}

impl DriftNotice {
    /// The reaction this notice asks for, if it asks for one (a confirmed drift, not a warning).
    pub fn requested(&self) -> Option<Reaction> {
        (self.kind == KIND_DRIFT && self.level == "drift" && self.reaction != Reaction::Alert)
            .then_some(self.reaction)
    }
}

/// What the promotion gate decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateAction {
    /// The candidate became live.
    Promote,
    /// The candidate beat live on recent examples but forgot older ones: it stays a candidate.
    HoldForForgetting,
    /// The candidate did not win within its allowance of examples and was withdrawn.
    Withdraw,
    /// Live did worse than the version it replaced, which was made live again.
    Rollback,
    /// The version made live held its own against the one it replaced; no rollback.
    Confirm,
}

impl GateAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GateAction::Promote => "promote",
            GateAction::HoldForForgetting => "hold_for_forgetting",
            GateAction::Withdraw => "withdraw",
            GateAction::Rollback => "rollback",
            GateAction::Confirm => "confirm",
        }
    }
}

impl fmt::Display for GateAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Accuracy of two versions scored on the same examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub examples: usize,
    /// The live version's accuracy on them.
    pub live_accuracy: f64,
    /// The other version's (candidate, or the version live replaced).
    pub challenger_accuracy: f64,
}

impl Comparison {
    /// How much better the challenger did.
    pub fn advantage(&self) -> f64 {
        self.challenger_accuracy - self.live_accuracy
    }
}

/// A gate decision on `<prefix>.control.<model>.gate`, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// Always `"gate"`.
    pub kind: String,
    pub model: ModelName,
    pub action: GateAction,
    /// The live version when the decision was taken.
    pub live_version: u64,
    /// The version compared with it: the candidate, or the version live replaced.
    pub challenger_version: u64,
    /// Both scored on the same recent labelled examples, which neither had learned.
    pub recent: Comparison,
    /// Both scored on held-back older examples (the forgetting guard), for promotions.
    pub held_back: Option<Comparison>,
    /// The thresholds the decision applied, in words (margin, tolerance, minimum examples).
    pub rule: String,
    /// Stream sequence of the last example the evidence includes.
    pub sequence: u64,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_reacts_to_confirmed_drifts_that_ask_for_something() {
        let notice = |level: &str, reaction: Reaction| DriftNotice {
            kind: KIND_DRIFT.into(),
            model: "bookstore".parse().unwrap(),
            level: level.into(),
            target: "error".into(),
            sequence: 7,
            reaction,
        };
        assert_eq!(
            notice("drift", Reaction::TrainCandidate).requested(),
            Some(Reaction::TrainCandidate)
        );
        assert_eq!(
            notice("drift", Reaction::RaiseLr).requested(),
            Some(Reaction::RaiseLr)
        );
        assert_eq!(
            notice("warning", Reaction::TrainCandidate).requested(),
            None
        );
        assert_eq!(notice("drift", Reaction::Alert).requested(), None);
    }

    #[test]
    fn a_drift_event_is_read_as_a_notice_whatever_else_it_carries() {
        let body = r#"{"kind":"drift","model":"bookstore","detector":"ddm","target":"error","feature":null,
            "level":"drift","statistic":1.5,"window":{"first":1,"last":9},"sequence":9,"live_version":3,
            "reaction":"train_candidate","event_time":"2026-11-27T00:00:00Z"}"#;
        let notice: DriftNotice = serde_json::from_str(body).unwrap();
        assert_eq!(notice.requested(), Some(Reaction::TrainCandidate));
        assert_eq!(notice.sequence, 9);
    }
}
