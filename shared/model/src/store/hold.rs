//! A model's hold: `<model>.hold` in the MODELS bucket, set by an operator to keep live on one
//! version (a pin) or to stop train learning (a pause), with who set it, why and when.
//!
//! One record per model holds both, so a pin and a pause are read and changed together by one
//! compare-and-set; the key is removed when neither remains, and its history in MODELS is the
//! audit trail of who held and released the model.
//!
//! **A pin also stops training.** train could keep learning into versions nobody serves, but
//! exactly-once rests on acknowledging an example only once the version holding it is live
//! (its high-water mark is the trainer's resume point): a version that is never made live would
//! leave its examples either unacknowledged for as long as the pin lasts (beyond what a
//! consumer may hold) or acknowledged in a version that is then thrown away when the pin is
//! released onto another lineage. So while a model is held, pinned or paused, train takes no
//! batch: its examples wait in the EXAMPLES stream, unacknowledged, and are learned once the
//! hold is released, on top of whatever version is live then.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use freshet::ids::ModelName;

/// The key of `model`'s hold in MODELS: `<model>.hold`.
pub fn key(model: &ModelName) -> String {
    format!("{model}.hold")
}

/// What an operator holds a model at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// The version kept live: the gate neither promotes nor rolls back, and train does not
    /// publish, until it is unpinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<u64>,
    /// train learns nothing until it is resumed.
    #[serde(default)]
    pub paused: bool,
    /// Who set the hold's last change (an operator's name, as given).
    pub by: String,
    /// Why, in their words.
    pub reason: String,
    pub at: DateTime<Utc>,
}

impl Hold {
    /// Whether train must stop: a pin (no version may go live) or a pause.
    pub fn stops_training(&self) -> bool {
        self.paused || self.pinned.is_some()
    }

    /// Short words for tables: `pinned v7`, `paused`, `pinned v7, paused`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(version) = self.pinned {
            parts.push(format!("pinned v{version}"));
        }
        if self.paused {
            parts.push("paused".to_string());
        }
        parts.join(", ")
    }
}

/// A change an operator makes to a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldChange {
    Pin(u64),
    Unpin,
    Pause,
    Resume,
}

/// The hold after `change` to `current` by `by` for `reason` at `at`: `None` when nothing is
/// held any more (the key is then removed).
pub fn apply(
    current: Option<&Hold>,
    change: HoldChange,
    by: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> Option<Hold> {
    let (mut pinned, mut paused) = current.map_or((None, false), |h| (h.pinned, h.paused));
    match change {
        HoldChange::Pin(version) => pinned = Some(version),
        HoldChange::Unpin => pinned = None,
        HoldChange::Pause => paused = true,
        HoldChange::Resume => paused = false,
    }
    (pinned.is_some() || paused).then(|| Hold {
        pinned,
        paused,
        by: by.to_string(),
        reason: reason.to_string(),
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_and_a_pause_are_held_and_released_independently() {
        let at = Utc::now();
        let pinned = apply(None, HoldChange::Pin(7), "ana", "incident 12", at).unwrap();
        assert_eq!((pinned.pinned, pinned.paused), (Some(7), false));
        assert!(pinned.stops_training());
        let both = apply(Some(&pinned), HoldChange::Pause, "bo", "load test", at).unwrap();
        assert_eq!(both.describe(), "pinned v7, paused");
        assert_eq!(both.by, "bo");
        let paused = apply(Some(&both), HoldChange::Unpin, "ana", "", at).unwrap();
        assert_eq!((paused.pinned, paused.paused), (None, true));
        assert!(paused.stops_training());
        assert_eq!(apply(Some(&paused), HoldChange::Resume, "bo", "", at), None);
        assert_eq!(apply(None, HoldChange::Unpin, "bo", "", at), None);
    }

    #[test]
    fn a_hold_reads_back_as_written_and_refuses_unknown_fields() {
        let hold = apply(None, HoldChange::Pin(3), "ana", "why", Utc::now()).unwrap();
        let json = serde_json::to_string(&hold).unwrap();
        assert_eq!(serde_json::from_str::<Hold>(&json).unwrap(), hold);
        let odd = r#"{"paused":true,"by":"a","reason":"","at":"2026-12-06T08:00:00Z","x":1}"#;
        assert!(serde_json::from_str::<Hold>(odd).is_err());
    }
}
