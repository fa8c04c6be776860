//! Model pointers: `<model>.live` and `<model>.candidate` in the MODELS bucket.
//!
//! A pointer names an immutable version and its checksum. Trainers move it by compare-and-set,
//! so two writers can never fork a model's history; the bucket's history is the audit trail, and
//! a rollback is one more pointer write.

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::Failure;
use crate::ids::ModelName;
use crate::store::kv::{CasError, Versioned, compare_and_set, read};
use crate::subjects::pointer_key;

/// Which pointer of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    Live,
    Candidate,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Live => "live",
            Slot::Candidate => "candidate",
        }
    }
}

/// The value of a pointer key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    pub version: u64,
    pub sha256: String,
    pub updated_at: DateTime<Utc>,
    /// Who moved the pointer and why ("train", "promote", "rollback by ops").
    pub reason: String,
}

/// Reads and moves model pointers.
#[derive(Clone)]
pub struct Pointers {
    kv: kv::Store,
}

impl Pointers {
    pub fn new(kv: kv::Store) -> Pointers {
        Pointers { kv }
    }

    pub fn bucket(&self) -> &kv::Store {
        &self.kv
    }

    /// The pointer and the revision to compare against when moving it.
    pub async fn get(&self, model: &ModelName, slot: Slot) -> Result<Versioned<Pointer>, Failure> {
        let key = pointer_key(model, slot.as_str());
        let raw = read(&self.kv, &key).await?;
        let value = match raw.value {
            None => None,
            Some(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| Failure::new(format!("decode pointer {key}"), e))?,
            ),
        };
        Ok(Versioned {
            value,
            revision: raw.revision,
        })
    }

    /// Moves the pointer if nobody moved it since `expected` (0: it never existed).
    pub async fn set(
        &self,
        model: &ModelName,
        slot: Slot,
        pointer: &Pointer,
        expected: u64,
    ) -> Result<u64, CasError> {
        let key = pointer_key(model, slot.as_str());
        let bytes =
            serde_json::to_vec(pointer).expect("a pointer is plain data and always serialises");
        compare_and_set(&self.kv, &key, Bytes::from(bytes), expected).await
    }

    /// Removes the pointer (a candidate withdrawn or promoted) if nobody moved it since
    /// `expected`; the removal is kept in the bucket's history.
    pub async fn withdraw(
        &self,
        model: &ModelName,
        slot: Slot,
        expected: u64,
    ) -> Result<(), Failure> {
        let key = pointer_key(model, slot.as_str());
        self.kv
            .delete_expect_revision(&key, Some(expected))
            .await
            .map_err(|e| Failure::new(format!("withdraw {key}"), e))
    }

    /// Past values of the pointer, oldest first (as many as the bucket keeps).
    pub async fn history(
        &self,
        model: &ModelName,
        slot: Slot,
    ) -> Result<Vec<(u64, Pointer)>, Failure> {
        let key = pointer_key(model, slot.as_str());
        let mut entries = match self.kv.history(&key).await {
            Ok(entries) => entries,
            Err(e) => return Err(Failure::new(format!("history of {key}"), e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| Failure::new(format!("history of {key}"), e))?;
            if entry.operation == kv::Operation::Put
                && let Ok(pointer) = serde_json::from_slice(&entry.value)
            {
                out.push((entry.revision, pointer));
            }
        }
        Ok(out)
    }
}
