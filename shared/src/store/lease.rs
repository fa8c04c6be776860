//! A lease in the LEASES bucket: one holder at a time for a piece of work (one trainer per model).
//!
//! The bucket's `max_age` is the lease's time to live: a holder that stops renewing (killed,
//! partitioned) loses the lease when its entry ages out, and a standby's `create` then succeeds.
//! Renewal is a compare-and-set on the entry's revision, so a holder learns at once if the lease
//! was taken over.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::error::Failure;
use crate::shutdown::Shutdown;
use crate::store::kv::{CasError, compare_and_set};

/// A held lease.
pub struct Lease {
    store: kv::Store,
    key: String,
    holder: String,
    revision: u64,
}

impl Lease {
    /// Waits until the lease on `key` is free and takes it, polling every `poll`. Returns `None`
    /// if shutdown came first.
    pub async fn acquire(
        store: kv::Store,
        key: &str,
        holder: &str,
        poll: Duration,
        mut shutdown: Shutdown,
    ) -> Result<Option<Lease>, Failure> {
        let mut waiting_logged = false;
        loop {
            match store.create(key, Bytes::from(holder.to_string())).await {
                Ok(revision) => {
                    tracing::info!(lease = key, holder, "lease acquired");
                    return Ok(Some(Lease {
                        store,
                        key: key.to_string(),
                        holder: holder.to_string(),
                        revision,
                    }));
                }
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if !waiting_logged {
                        tracing::info!(lease = key, "lease held by another replica; standing by");
                        waiting_logged = true;
                    }
                }
                Err(err) => return Err(Failure::new(format!("take lease {key}"), err)),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.wait() => return Ok(None),
            }
        }
    }

    /// Renews the lease; an error means it was lost (taken over, or it aged out).
    pub async fn renew(&mut self) -> Result<(), CasError> {
        let renewed = compare_and_set(
            &self.store,
            &self.key,
            Bytes::from(self.holder.clone()),
            self.revision,
        )
        .await;
        match renewed {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            // A renewal whose reply was lost (a server failing over) went through all the same:
            // the entry still names this holder, at a later revision. Anyone else's name there
            // means the lease was taken over.
            Err(conflict @ CasError::Conflict { .. }) => {
                match crate::store::kv::read(&self.store, &self.key).await {
                    Ok(entry) if entry.value.as_deref() == Some(self.holder.as_bytes()) => {
                        self.revision = entry.revision;
                        Ok(())
                    }
                    Ok(_) => Err(conflict),
                    Err(failure) => Err(CasError::Failed(failure)),
                }
            }
            Err(failure) => Err(failure),
        }
    }

    /// Gives the lease up, so a standby takes over without waiting for it to age out.
    pub async fn release(self) {
        if let Err(err) = self
            .store
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::warn!(lease = %self.key, error = %err, "cannot release the lease; it will age out");
        }
    }
}
