//! The state the engine keeps per entity, stored as JSON in FEATURES as bookstore's states are:
//! the kept strings other events look up, one aggregate per slot of the plan, and the
//! per-partition applied marks that make every event count once across redeliveries.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregates::EventTimeWindows;
use crate::applied::Applied;
use freshet::stats::Ewma;

/// What the engine knows about one entity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityState {
    /// The latest value of each kept string field, by field name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kept: BTreeMap<String, String>,
    /// One aggregate per slot, by the slot's id (its definition). A slot of a definition the plan
    /// no longer has is kept as it was and read by nobody; one whose stored shape does not match
    /// its definition starts afresh.
    #[serde(default)]
    pub slots: BTreeMap<String, SlotState>,
    /// Highest stream sequence applied, per partition.
    #[serde(default)]
    pub applied: Applied,
}

impl EntityState {
    /// Decodes a stored state.
    pub fn decode(bytes: &[u8]) -> Result<EntityState, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The JSON stored for this state.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("entity state is plain data with finite numbers and always serialises")
    }
}

/// The stored form of one aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    Count(u64),
    /// n, Σx, Σx² of a number field.
    Moments {
        n: u64,
        sum: f64,
        sum_sq: f64,
    },
    Min(f64),
    Max(f64),
    Distinct(BTreeSet<String>),
    Last(f64),
    /// An event time (first or last seen), at the event's own precision.
    Time(DateTime<Utc>),
    Ewma(Ewma),
    Windows(EventTimeWindows),
    /// A decayed sum as of event time `at_ms`.
    Decayed {
        value: f64,
        at_ms: i64,
    },
}
