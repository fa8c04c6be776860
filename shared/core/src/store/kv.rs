//! Compare-and-set on a JetStream KV key: the one primitive that makes concurrent replicas safe.
//!
//! Every write names the revision it read (0 for "the key has never been written"); a write
//! based on a stale read fails with [`CasError::Conflict`] and the caller re-reads and retries.

use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::error::Failure;

/// A value read from KV with the revision to compare against when writing it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// `None` when the key was never written or was deleted.
    pub value: Option<T>,
    /// The revision a write must expect; 0 when the key has no history.
    pub revision: u64,
}

/// Why a compare-and-set did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error("key {key} changed since revision {expected}")]
    Conflict { key: String, expected: u64 },
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// Reads a key's raw bytes and revision; deleted keys read as absent with their tombstone's revision.
pub async fn read(store: &kv::Store, key: &str) -> Result<Versioned<Bytes>, Failure> {
    let entry = store
        .entry(key)
        .await
        .map_err(|e| Failure::new(format!("read KV key {key}"), e))?;
    Ok(match entry {
        None => Versioned {
            value: None,
            revision: 0,
        },
        Some(entry) => Versioned {
            value: matches!(entry.operation, kv::Operation::Put).then_some(entry.value),
            revision: entry.revision,
        },
    })
}

/// Writes `value` if the key is still at `expected` (0: never written). Returns the new revision.
pub async fn compare_and_set(
    store: &kv::Store,
    key: &str,
    value: Bytes,
    expected: u64,
) -> Result<u64, CasError> {
    store
        .update(key, value, expected)
        .await
        .map_err(|err| cas_error("write", key, expected, err))
}

/// Deletes the key (a tombstone, kept in its history) if it is still at `expected`.
pub async fn compare_and_delete(
    store: &kv::Store,
    key: &str,
    expected: u64,
) -> Result<(), CasError> {
    store
        .delete_expect_revision(key, Some(expected))
        .await
        .map_err(|err| cas_error("delete", key, expected, err))
}

/// A conflict when the key moved past `expected`, a failure otherwise.
fn cas_error(operation: &str, key: &str, expected: u64, err: kv::UpdateError) -> CasError {
    if err.kind() == kv::UpdateErrorKind::WrongLastRevision {
        CasError::Conflict {
            key: key.to_string(),
            expected,
        }
    } else {
        CasError::Failed(Failure::new(format!("{operation} KV key {key}"), err))
    }
}
