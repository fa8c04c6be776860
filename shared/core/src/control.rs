//! What functions tell each other on CONTROL (`<prefix>.control.<model>.<kind>`): drift's
//! episodes and the reaction one requests, the part of a drift record train acts on, and the
//! promotion gate's decisions with their evidence, train's quarantines; and [`ControlSink`],
//! where a function publishes them (JetStream, or memory in unit tests).
//!
//! Drift records come in two formats. Format 1 (no `format` field) was one record per detector
//! signal. Format 2 is one record per transition of an episode (opened as a warning, confirmed as
//! a drift, resolved), with every field of format 1 kept at its meaning for the signal that speaks
//! for the episode, so a reader of format 1 (train's [`DriftNotice`]) keeps working: it sees a
//! `level` of `warning`, `drift` or `resolved`, and a reaction other than `alert` only on the
//! record that confirms an episode.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Failure;
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

/// What train reads of a drift record: enough to decide whether to react. Other fields are
/// ignored, so the record can grow without breaking train.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DriftNotice {
    pub kind: String,
    pub model: ModelName,
    /// `warning`, `drift` or `resolved`; train reacts to `drift` only.
    pub level: String,
    /// The feature's name, or `error` for the live model's prediction error.
    pub target: String,
    /// Stream sequence of the example that made the detector signal.
    pub sequence: u64,
    pub reaction: Reaction,
    /// The episode the record belongs to (format 2).
    #[serde(default)]
    pub episode: Option<u64>,
}

/// The drift record format this build writes.
pub const DRIFT_FORMAT: u32 = 2;

/// Where a drift episode is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeState {
    /// Opened by a warning; not confirmed yet.
    Warning,
    /// Confirmed by a drift signal.
    Drift,
    /// Quiet for the re-arm span; closed.
    Resolved,
}

impl EpisodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            EpisodeState::Warning => "warning",
            EpisodeState::Drift => "drift",
            EpisodeState::Resolved => "resolved",
        }
    }
}

impl fmt::Display for EpisodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Examples (stream sequences in EXAMPLES), first and last included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceSpan {
    pub first: u64,
    pub last: u64,
    /// How many of the model's examples it holds, when known (examples of other models sit
    /// between its sequences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// One detector's signal in an episode, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftSignal {
    pub detector: String,
    /// The feature's name, or `error` for the live model's prediction error.
    pub target: String,
    /// The feature's index in the example's vector; `None` for the error.
    pub feature: Option<usize>,
    /// `warning` or `drift`.
    pub level: String,
    /// The detector's statistic when it signalled (each detector's is named in drift's README).
    pub statistic: f64,
    /// What the statistic had to reach, when the detector has one.
    pub threshold: Option<f64>,
    /// The examples the detector read since it last started afresh.
    pub window: SequenceSpan,
    /// Examples compared as the reference and as the recent part, when the detector says.
    pub reference_examples: Option<u64>,
    pub recent_examples: Option<u64>,
    /// The example at which it signalled.
    pub sequence: u64,
}

/// A transition of a drift episode on `<prefix>.control.<model>.drift` (format 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftEpisodeRecord {
    /// Always `"drift"`.
    pub kind: String,
    /// [`DRIFT_FORMAT`].
    pub format: u32,
    pub model: ModelName,
    /// The episode's number, per model from 1.
    pub episode: u64,
    /// The state the episode has just entered.
    pub state: EpisodeState,
    /// The state again, under the name format 1 gave the signal's level.
    pub level: String,
    /// The signal that speaks for the episode (its confirmation once there is one, else the one
    /// that opened it): detector, target, feature index, statistic, threshold and window.
    pub detector: String,
    pub target: String,
    pub feature: Option<usize>,
    pub statistic: f64,
    pub threshold: Option<f64>,
    pub window: SequenceSpan,
    /// Stream sequence of the example at which the transition happened.
    pub sequence: u64,
    /// The examples the episode spans: from the one that opened it to the last at which a
    /// detector signalled or sat in its warning zone (to the one that resolved it, once resolved).
    pub span: SequenceSpan,
    /// Where each transition happened.
    pub opened: u64,
    pub confirmed: Option<u64>,
    pub resolved: Option<u64>,
    /// Every detector and target that signalled in the episode (the latest signal of each).
    pub signals: Vec<DriftSignal>,
    /// The live version when the example was read.
    pub live_version: Option<u64>,
    /// The reaction this record asks train for: the one configured for the model, on the
    /// record that confirms the episode, unless another is outstanding; `alert` otherwise.
    pub reaction: Reaction,
    /// Why the configured reaction was not requested, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction_withheld: Option<String>,
    /// The transition's example's event time, or when EXAMPLES stored it if it carries none.
    pub event_time: DateTime<Utc>,
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
    /// The gate would have promoted or rolled back, but an operator pinned live: nothing moved.
    HeldByPin,
}

impl GateAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GateAction::Promote => "promote",
            GateAction::HoldForForgetting => "hold_for_forgetting",
            GateAction::Withdraw => "withdraw",
            GateAction::Rollback => "rollback",
            GateAction::Confirm => "confirm",
            GateAction::HeldByPin => "held_by_pin",
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

/// A start or end of train's data-quality quarantine, on `<prefix>.control.<model>.quarantine`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// Always `"quarantine"`.
    pub kind: String,
    pub model: ModelName,
    /// `started` or `ended`.
    pub state: String,
    /// Stream sequence of the example at which the state changed.
    pub sequence: u64,
    /// The share of suspect examples over the monitor's window then.
    pub flagged_share: f64,
    /// Suspect examples (unreadable, or far outside the learned range) held out: at the start,
    /// those in the window that started it; at the end, every one since the start.
    pub suspect_held_out: u64,
    /// Examples that were not suspect and were learned while the quarantine lasted (at the
    /// start: 0). None is held out: the quarantine holds out only what is suspect.
    pub valid_learned: u64,
    pub at: DateTime<Utc>,
}

/// Where a function publishes its CONTROL records: JetStream ([`jetstream::Context`]), or
/// [`MemoryControl`] in unit tests.
pub trait ControlSink: Send + Sync {
    /// Publishes `body` on `subject` (deduplicated by `message_id` when given) and waits until
    /// JetStream has stored it.
    fn store(
        &self,
        subject: String,
        message_id: Option<String>,
        body: Bytes,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Publishes like [`store`](Self::store) without waiting for the acknowledgement: for
    /// notices that are best effort (the state they announce is durable elsewhere).
    fn send(
        &self,
        subject: String,
        message_id: Option<String>,
        body: Bytes,
    ) -> impl Future<Output = Result<(), Failure>> + Send {
        self.store(subject, message_id, body)
    }
}

fn control_message(message_id: Option<String>, body: Bytes) -> PublishMessage {
    let message = PublishMessage::build().payload(body);
    match message_id {
        Some(id) => message.message_id(id),
        None => message,
    }
}

impl ControlSink for jetstream::Context {
    async fn store(
        &self,
        subject: String,
        message_id: Option<String>,
        body: Bytes,
    ) -> Result<(), Failure> {
        let operation = format!("publish on {subject}");
        self.send_publish(subject, control_message(message_id, body))
            .await
            .map_err(|e| Failure::new(operation.clone(), e))?
            .await
            .map_err(|e| Failure::new(operation, e))?;
        Ok(())
    }

    async fn send(
        &self,
        subject: String,
        message_id: Option<String>,
        body: Bytes,
    ) -> Result<(), Failure> {
        let operation = format!("publish on {subject}");
        // The acknowledgement is awaited in the background (and dropped).
        self.send_publish(subject, control_message(message_id, body))
            .await
            .map_err(|e| Failure::new(operation, e))?;
        Ok(())
    }
}

/// One record a [`MemoryControl`] received.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub subject: String,
    pub message_id: Option<String>,
    pub body: Bytes,
}

impl Published {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// CONTROL kept in memory, for unit tests; clones share it. Like the stream, a second record
/// under a message id already stored is dropped.
#[derive(Debug, Clone, Default)]
pub struct MemoryControl {
    published: Arc<Mutex<Vec<Published>>>,
}

impl MemoryControl {
    pub fn new() -> MemoryControl {
        MemoryControl::default()
    }

    /// Every record stored so far, oldest first.
    pub fn published(&self) -> Vec<Published> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ControlSink for MemoryControl {
    async fn store(
        &self,
        subject: String,
        message_id: Option<String>,
        body: Bytes,
    ) -> Result<(), Failure> {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let duplicate =
            message_id.is_some() && published.iter().any(|p| p.message_id == message_id);
        if !duplicate {
            published.push(Published {
                subject,
                message_id,
                body,
            });
        }
        Ok(())
    }
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
            episode: None,
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
    fn an_episode_record_is_read_as_a_notice_by_readers_of_format_one() {
        let record = DriftEpisodeRecord {
            kind: KIND_DRIFT.into(),
            format: DRIFT_FORMAT,
            model: "bookstore".parse().unwrap(),
            episode: 4,
            state: EpisodeState::Drift,
            level: "drift".into(),
            detector: "adwin".into(),
            target: "error".into(),
            feature: None,
            statistic: 0.21,
            threshold: Some(0.12),
            window: SequenceSpan {
                first: 10,
                last: 900,
                count: Some(445),
            },
            sequence: 900,
            span: SequenceSpan {
                first: 880,
                last: 900,
                count: None,
            },
            opened: 880,
            confirmed: Some(900),
            resolved: None,
            signals: Vec::new(),
            live_version: Some(12),
            reaction: Reaction::RaiseLr,
            reaction_withheld: None,
            event_time: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let json = serde_json::to_vec(&record).unwrap();
        let notice: DriftNotice = serde_json::from_slice(&json).unwrap();
        assert_eq!(notice.requested(), Some(Reaction::RaiseLr));
        assert_eq!((notice.sequence, notice.episode), (900, Some(4)));
        let back: DriftEpisodeRecord = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, record);
        // The resolution asks nothing.
        let resolved = DriftEpisodeRecord {
            state: EpisodeState::Resolved,
            level: "resolved".into(),
            reaction: Reaction::Alert,
            ..record
        };
        let notice: DriftNotice =
            serde_json::from_slice(&serde_json::to_vec(&resolved).unwrap()).unwrap();
        assert_eq!(notice.requested(), None);
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
