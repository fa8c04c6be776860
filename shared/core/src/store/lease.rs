//! A lease in the LEASES bucket: one holder at a time for a piece of work (one trainer per model).
//!
//! The bucket's `max_age` is the lease's time to live: a holder that stops renewing (killed,
//! partitioned) loses the lease when its entry ages out, and a standby's `create` then succeeds.
//! Renewal is a compare-and-set on the entry's revision, so a holder learns at once if the lease
//! was taken over.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::retry::Backoff;
use crate::shutdown::Shutdown;
use crate::store::kv::{CasError, compare_and_set};

/// Why a lease cannot be taken, ever: a configuration error. Everything else is retried.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease key (built from the function's name and settings) is not a valid KV key.
    #[error("lease key {key:?} is not a valid KV key: {source}")]
    InvalidKey {
        key: String,
        source: kv::CreateError,
    },
}

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
    ///
    /// A standby may wait here for hours, so it must outlive anything the server goes through
    /// meanwhile: every error but an invalid key (timeouts, a lost connection, JetStream
    /// unavailable or answering 503 while it reloads its streams after a restart) is retried with
    /// capped exponential backoff and jitter ([`Backoff`]). An invalid key is the only definite
    /// error: the key comes from the configuration, and no retry can fix it.
    pub async fn acquire(
        store: kv::Store,
        key: &str,
        holder: &str,
        poll: Duration,
        mut shutdown: Shutdown,
    ) -> Result<Option<Lease>, LeaseError> {
        let mut waiting_logged = false;
        let mut backoff = Backoff::default();
        loop {
            let delay = match store.create(key, Bytes::from(holder.to_string())).await {
                Ok(revision) => return Ok(Some(Lease::held(store, key, holder, revision))),
                Err(err) if err.kind() == kv::CreateErrorKind::InvalidKey => {
                    return Err(LeaseError::InvalidKey {
                        key: key.to_string(),
                        source: err,
                    });
                }
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // A create whose reply was lost (a server restarting) took the lease all
                    // the same: the entry names this holder, which is unique to this process.
                    if let Ok(entry) = crate::store::kv::read(&store, key).await
                        && entry.value.as_deref() == Some(holder.as_bytes())
                    {
                        return Ok(Some(Lease::held(store, key, holder, entry.revision)));
                    }
                    if !waiting_logged {
                        tracing::info!(lease = key, "lease held by another replica; standing by");
                        waiting_logged = true;
                    }
                    backoff.reset();
                    poll
                }
                Err(err) => {
                    let delay = backoff.next_delay().max(poll);
                    tracing::warn!(lease = key, error = %err, retry_in = ?delay, "cannot reach the lease; retrying");
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait() => return Ok(None),
            }
        }
    }

    fn held(store: kv::Store, key: &str, holder: &str, revision: u64) -> Lease {
        tracing::info!(lease = key, holder, "lease acquired");
        Lease {
            store,
            key: key.to_string(),
            holder: holder.to_string(),
            revision,
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
