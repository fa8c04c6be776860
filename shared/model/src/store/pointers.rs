//! Model pointers: `<model>.live` and `<model>.candidate` in the MODELS bucket, and every way
//! they move.
//!
//! A pointer names an immutable version and its checksum, with a typed [`Cause`] of the move
//! (train's next version, train's candidate, a promotion, a rollback, an operator's hand-set
//! version) beside a free-text `reason` for people. Code decides what a move *was* from its
//! cause, never from its reason: an operator who writes `--reason "bad batch"` on a rollback
//! still makes a rollback.
//!
//! Every move goes through [`PointerStore`]: [`move_to`](PointerStore::move_to) writes a pointer
//! and [`withdraw`](PointerStore::withdraw) removes one, each by compare-and-set on the revision
//! the writer read, so two writers can never fork a model's history; the bucket's history is the
//! audit trail, and a rollback is one more pointer write. A pointer can only name a
//! [`Verified`] version: one whose artifact the writer loaded and verified, as a follower will
//! ([`Verified::check`]), or one whose bytes it holds verified already (train, which just wrote
//! and hashed them; the gate, which loaded them to judge them: [`Verified::held`]).
//!
//! **Values written before causes were recorded** have no `cause` field. They decode with the
//! cause their writers' fixed reasons gave them (the one place a reason is read, and only when the
//! field is absent): a reason containing "rollback" or "roll back" (the gate's `gate: rollback
//! (...)`, the CLI's default `rollback by an operator`) is a [`Cause::Rollback`]; one containing
//! "promot" (`gate: promote (...)`, `promoted by an operator`) a [`Cause::Promotion`]; `train:
//! candidate ...` a [`Cause::Candidate`]; any other starting with `train` a [`Cause::Train`];
//! anything else an [`Cause::Operator`]. Those are the rules every reader applied to them before,
//! so an old history reads as it always did.

use std::future::Future;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::Manifest;
use crate::store::artifacts::{ArtifactReader, VersionRefusal};
use crate::store::hold::{self, Hold};
use freshet::error::Failure;
use freshet::ids::ModelName;
use freshet::store::kv::{CasError, Versioned, compare_and_delete, compare_and_set, read};

/// Which pointer of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    Live,
    Candidate,
}

impl Slot {
    /// Both slots.
    pub const ALL: [Slot; 2] = [Slot::Live, Slot::Candidate];

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Live => "live",
            Slot::Candidate => "candidate",
        }
    }

    /// The slot's key in MODELS: `<model>.live` or `<model>.candidate`.
    pub fn key(self, model: &ModelName) -> String {
        format!("{model}.{}", self.as_str())
    }

    /// Splits a MODELS key into its model and slot; `None` for a key that is not a pointer.
    pub fn parse_key(key: &str) -> Option<(ModelName, Slot)> {
        let (model, slot) = key.rsplit_once('.')?;
        let slot = Slot::ALL.into_iter().find(|s| s.as_str() == slot)?;
        Some((ModelName::parse(model).ok()?, slot))
    }
}

/// Why a pointer moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// train published the next version of the live chain.
    Train,
    /// train published a version of the candidate it trains beside live.
    Candidate,
    /// A candidate made live (by the gate or an operator).
    Promotion,
    /// Live moved back to a version it served before (by the gate or an operator).
    Rollback,
    /// A version set by hand that is neither a promotion nor a rollback.
    Operator,
    /// An operator pinned live to this version (see [`crate::store::hold`]): written even when
    /// live names it already, so a trainer's publish based on an earlier revision fails.
    Pin,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Train => "train",
            Cause::Candidate => "candidate",
            Cause::Promotion => "promotion",
            Cause::Rollback => "rollback",
            Cause::Operator => "operator",
            Cause::Pin => "pin",
        }
    }

    /// The cause of a value written before causes were recorded, from its reason (see the
    /// module documentation). Used only when the `cause` field is absent.
    fn of_legacy_reason(reason: &str) -> Cause {
        let reason = reason.to_ascii_lowercase();
        if reason.contains("rollback") || reason.contains("roll back") {
            Cause::Rollback
        } else if reason.contains("promot") {
            Cause::Promotion
        } else if reason.starts_with("train: candidate") {
            Cause::Candidate
        } else if reason.starts_with("train") {
            Cause::Train
        } else {
            Cause::Operator
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value of a pointer key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredPointer")]
pub struct Pointer {
    pub version: u64,
    pub sha256: String,
    pub updated_at: DateTime<Utc>,
    /// What the move was.
    pub cause: Cause,
    /// Why, in the writer's words ("train", "gate: promote (accuracy ...)", "bad batch"): for
    /// people; code reads [`cause`](Self::cause).
    pub reason: String,
}

/// A pointer as stored, with or without a cause.
#[derive(Deserialize)]
struct StoredPointer {
    version: u64,
    sha256: String,
    updated_at: DateTime<Utc>,
    #[serde(default)]
    cause: Option<Cause>,
    reason: String,
}

impl From<StoredPointer> for Pointer {
    fn from(stored: StoredPointer) -> Pointer {
        Pointer {
            cause: stored
                .cause
                .unwrap_or_else(|| Cause::of_legacy_reason(&stored.reason)),
            version: stored.version,
            sha256: stored.sha256,
            updated_at: stored.updated_at,
            reason: stored.reason,
        }
    }
}

/// A version a pointer may name: its artifact was verified by the writer moving the pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    version: u64,
    sha256: String,
}

impl Verified {
    /// A version whose verified bytes the writer holds: it wrote and hashed them itself (train),
    /// or loaded them through [`ArtifactReader::load_pointed`] (a follower's loaded version).
    pub fn held(manifest: &Manifest) -> Verified {
        Verified {
            version: manifest.version,
            sha256: manifest.sha256.clone(),
        }
    }

    /// Loads a version someone else wrote and verifies it as a follower will before serving it
    /// (bytes against the manifest, decoded, a test inference), so a pointer never names a
    /// version that predictors would refuse.
    pub async fn check(
        artifacts: &impl ArtifactReader,
        model: &ModelName,
        version: u64,
    ) -> Result<Verified, VersionRefusal> {
        let manifest = artifacts
            .manifest(model, version)
            .await
            .map_err(|e| VersionRefusal {
                transient: e.is_transient(),
                reason: e.to_string(),
            })?;
        let verified = Verified::held(&manifest);
        artifacts
            .load_pointed(model, &verified.pointer(Cause::Operator, ""))
            .await?;
        Ok(verified)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The pointer naming this version, moved now for `cause`.
    fn pointer(&self, cause: Cause, reason: &str) -> Pointer {
        Pointer {
            version: self.version,
            sha256: self.sha256.clone(),
            updated_at: Utc::now(),
            cause,
            reason: reason.to_string(),
        }
    }
}

/// One write of a pointer key, as a watch delivers it.
#[derive(Debug, Clone, PartialEq)]
pub enum PointerChange {
    /// The key names a version.
    Set { revision: u64, pointer: Pointer },
    /// The pointer was removed (a candidate withdrawn or promoted).
    Removed { revision: u64 },
    /// The key holds something that is not a pointer.
    Unreadable { revision: u64, error: String },
}

/// The changes of one pointer: its current value first, then every write.
pub type PointerChanges = BoxStream<'static, Result<PointerChange, Failure>>;

/// What a promotion did.
#[derive(Debug)]
pub struct Promoted {
    /// The live pointer's new revision.
    pub live_revision: u64,
    /// Why the candidate pointer could not be removed after live moved, if it could not.
    pub candidate_left: Option<CasError>,
}

pub(crate) mod sealed {
    use super::*;

    /// The raw compare-and-set, for the implementations of [`PointerStore`] only: every writer
    /// goes through `move_to` and `withdraw`, which take a verified version.
    pub trait Write {
        /// Writes `pointer` if the key is still at `expected` (0: never written). Returns the
        /// new revision.
        fn put(
            &self,
            model: &ModelName,
            slot: Slot,
            pointer: &Pointer,
            expected: u64,
        ) -> impl Future<Output = Result<u64, CasError>> + Send;

        /// Removes the pointer if the key is still at `expected`.
        fn remove(
            &self,
            model: &ModelName,
            slot: Slot,
            expected: u64,
        ) -> impl Future<Output = Result<(), CasError>> + Send;
    }
}

/// Where model pointers live: the MODELS bucket ([`Pointers`]), or memory in unit tests
/// ([`MemoryPointers`](crate::store::memory::MemoryPointers)).
pub trait PointerStore: sealed::Write + Send + Sync {
    /// The pointer and the revision to compare against when moving it.
    fn get(
        &self,
        model: &ModelName,
        slot: Slot,
    ) -> impl Future<Output = Result<Versioned<Pointer>, Failure>> + Send;

    /// Past values of the pointer, oldest first, with their revisions (as many as the store
    /// keeps; removals are left out).
    fn history(
        &self,
        model: &ModelName,
        slot: Slot,
    ) -> impl Future<Output = Result<Vec<(u64, Pointer)>, Failure>> + Send;

    /// The pointer's current value (if it was ever written), then every change.
    fn watch(
        &self,
        model: &ModelName,
        slot: Slot,
    ) -> impl Future<Output = Result<PointerChanges, Failure>> + Send;

    /// The model's hold (pin or pause) and the revision to compare against when changing it.
    fn hold(
        &self,
        model: &ModelName,
    ) -> impl Future<Output = Result<Versioned<Hold>, Failure>> + Send;

    /// Writes the model's hold (`None`: removes it) if nobody changed it since `expected`.
    /// Returns the new revision.
    fn set_hold(
        &self,
        model: &ModelName,
        hold: Option<&Hold>,
        expected: u64,
    ) -> impl Future<Output = Result<u64, CasError>> + Send;

    /// Points `slot` at `to` for `cause` (and `reason`, in words) if nobody moved it since
    /// `expected` (0: it never existed). Returns the new revision.
    fn move_to(
        &self,
        model: &ModelName,
        slot: Slot,
        to: &Verified,
        cause: Cause,
        reason: &str,
        expected: u64,
    ) -> impl Future<Output = Result<u64, CasError>> + Send {
        let pointer = to.pointer(cause, reason);
        async move { self.put(model, slot, &pointer, expected).await }
    }

    /// Removes the pointer (a candidate withdrawn or promoted) if nobody moved it since
    /// `expected`; the removal is kept in the history.
    fn withdraw(
        &self,
        model: &ModelName,
        slot: Slot,
        expected: u64,
    ) -> impl Future<Output = Result<(), CasError>> + Send {
        self.remove(model, slot, expected)
    }

    /// Makes the candidate `candidate` live: moves live to it if live is still at
    /// `live_expected`, then removes the candidate pointer if it is still at
    /// `candidate_expected`, so no predictor shadows live with itself.
    fn promote(
        &self,
        model: &ModelName,
        candidate: &Verified,
        reason: &str,
        live_expected: u64,
        candidate_expected: u64,
    ) -> impl Future<Output = Result<Promoted, CasError>> + Send {
        async move {
            let live_revision = self
                .move_to(
                    model,
                    Slot::Live,
                    candidate,
                    Cause::Promotion,
                    reason,
                    live_expected,
                )
                .await?;
            let candidate_left = self
                .withdraw(model, Slot::Candidate, candidate_expected)
                .await
                .err();
            Ok(Promoted {
                live_revision,
                candidate_left,
            })
        }
    }
}

/// The model pointers in the MODELS bucket.
#[derive(Clone)]
pub struct Pointers {
    kv: kv::Store,
}

impl Pointers {
    pub fn new(kv: kv::Store) -> Pointers {
        Pointers { kv }
    }

    /// Past values of the model's hold, oldest first, with their revisions; a release (the key
    /// removed) is `None`.
    pub async fn hold_history(
        &self,
        model: &ModelName,
    ) -> Result<Vec<(u64, Option<Hold>)>, Failure> {
        let key = hold::key(model);
        let mut entries = match self.kv.history(&key).await {
            Ok(entries) => entries,
            // A key never written has no history (the server answers "no message found").
            Err(_) if self.kv.entry(&key).await.ok().flatten().is_none() => return Ok(Vec::new()),
            Err(e) => return Err(Failure::new(format!("history of {key}"), e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| Failure::new(format!("history of {key}"), e))?;
            let value = match entry.operation {
                kv::Operation::Put => serde_json::from_slice(&entry.value).ok(),
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            out.push((entry.revision, value));
        }
        Ok(out)
    }

    /// Every pointer key in MODELS, as model and slot (keys that are not pointers are skipped).
    pub async fn keys(&self) -> Result<Vec<(ModelName, Slot)>, Failure> {
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| Failure::new("list the keys of MODELS", e))?
            .try_collect()
            .await
            .map_err(|e| Failure::new("list the keys of MODELS", e))?;
        Ok(keys.iter().filter_map(|k| Slot::parse_key(k)).collect())
    }
}

/// Reads a KV entry as a pointer change.
fn change_of(entry: kv::Entry) -> PointerChange {
    let revision = entry.revision;
    match entry.operation {
        kv::Operation::Put => match serde_json::from_slice(&entry.value) {
            Ok(pointer) => PointerChange::Set { revision, pointer },
            Err(e) => PointerChange::Unreadable {
                revision,
                error: e.to_string(),
            },
        },
        kv::Operation::Delete | kv::Operation::Purge => PointerChange::Removed { revision },
    }
}

impl sealed::Write for Pointers {
    async fn put(
        &self,
        model: &ModelName,
        slot: Slot,
        pointer: &Pointer,
        expected: u64,
    ) -> Result<u64, CasError> {
        let bytes =
            serde_json::to_vec(pointer).expect("a pointer is plain data and always serialises");
        compare_and_set(&self.kv, &slot.key(model), Bytes::from(bytes), expected).await
    }

    async fn remove(&self, model: &ModelName, slot: Slot, expected: u64) -> Result<(), CasError> {
        compare_and_delete(&self.kv, &slot.key(model), expected).await
    }
}

impl PointerStore for Pointers {
    async fn get(&self, model: &ModelName, slot: Slot) -> Result<Versioned<Pointer>, Failure> {
        let key = slot.key(model);
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

    async fn hold(&self, model: &ModelName) -> Result<Versioned<Hold>, Failure> {
        let key = hold::key(model);
        let raw = read(&self.kv, &key).await?;
        let value = match raw.value {
            None => None,
            Some(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| Failure::new(format!("decode hold {key}"), e))?,
            ),
        };
        Ok(Versioned {
            value,
            revision: raw.revision,
        })
    }

    async fn set_hold(
        &self,
        model: &ModelName,
        hold: Option<&Hold>,
        expected: u64,
    ) -> Result<u64, CasError> {
        let key = hold::key(model);
        match hold {
            Some(hold) => {
                let bytes =
                    serde_json::to_vec(hold).expect("a hold is plain data and always serialises");
                compare_and_set(&self.kv, &key, Bytes::from(bytes), expected).await
            }
            None => {
                compare_and_delete(&self.kv, &key, expected).await?;
                Ok(read(&self.kv, &key).await?.revision)
            }
        }
    }

    async fn history(&self, model: &ModelName, slot: Slot) -> Result<Vec<(u64, Pointer)>, Failure> {
        let key = slot.key(model);
        let mut entries = self
            .kv
            .history(&key)
            .await
            .map_err(|e| Failure::new(format!("history of {key}"), e))?;
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| Failure::new(format!("history of {key}"), e))?;
            if let PointerChange::Set { revision, pointer } = change_of(entry) {
                out.push((revision, pointer));
            }
        }
        Ok(out)
    }

    async fn watch(&self, model: &ModelName, slot: Slot) -> Result<PointerChanges, Failure> {
        let key = slot.key(model);
        let watch = self
            .kv
            .watch_with_history(&key)
            .await
            .map_err(|e| Failure::new(format!("watch {key}"), e))?;
        Ok(watch
            .map(move |entry| {
                entry
                    .map(change_of)
                    .map_err(|e| Failure::new(format!("watch {key}"), e))
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_a_model_and_a_slot() {
        let model = ModelName::parse("churn-2").unwrap();
        assert_eq!(Slot::Candidate.key(&model), "churn-2.candidate");
        for slot in Slot::ALL {
            assert_eq!(
                Slot::parse_key(&slot.key(&model)),
                Some((model.clone(), slot))
            );
        }
        assert!(Slot::parse_key("bookstore.other").is_none());
        assert!(Slot::parse_key("bookstore").is_none());
        assert!(Slot::parse_key("Bad.live").is_none());
    }

    fn decode(json: &str) -> Pointer {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_pointer_keeps_its_cause_whatever_its_reason_says() {
        let pointer = Pointer {
            version: 3,
            sha256: "ab".into(),
            updated_at: Utc::now(),
            cause: Cause::Rollback,
            reason: "bad batch".into(),
        };
        let json = serde_json::to_string(&pointer).unwrap();
        assert!(json.contains(r#""cause":"rollback""#), "{json}");
        assert_eq!(decode(&json), pointer);
        let promoted = r#"{"version":3,"sha256":"ab","updated_at":"2026-11-27T12:00:00Z",
            "cause":"operator","reason":"gate: rollback (by its words)"}"#;
        assert_eq!(decode(promoted).cause, Cause::Operator);
    }

    #[test]
    fn values_written_before_causes_read_as_their_writers_meant_them() {
        let legacy = |reason: &str| {
            decode(&format!(
                r#"{{"version":3,"sha256":"ab","updated_at":"2026-11-27T12:00:00Z","reason":"{reason}"}}"#
            ))
            .cause
        };
        assert_eq!(legacy("train"), Cause::Train);
        assert_eq!(legacy("train: candidate after a drift"), Cause::Candidate);
        assert_eq!(
            legacy("gate: promote (accuracy 0.9 vs 0.7 ...)"),
            Cause::Promotion
        );
        assert_eq!(legacy("promoted by an operator"), Cause::Promotion);
        assert_eq!(legacy("gate: rollback (accuracy ...)"), Cause::Rollback);
        assert_eq!(legacy("rollback by an operator"), Cause::Rollback);
        assert_eq!(legacy("deployed by hand"), Cause::Operator);
        assert_eq!(legacy("test"), Cause::Operator);
    }
}
