//! The live version drift scores examples with, to watch its prediction error.
//!
//! A [`Follower`] follows `<model>.live` in MODELS (its current value first, then every change),
//! loads each new version from the object store, verifies it (the bytes against the manifest's
//! size and sha256, the manifest's sha256 against the pointer's, the model's width against the
//! manifest's schema) and swaps it in. A version that fails is refused, logged and counted, and
//! the previous one stays: predict refuses the same version and keeps serving the previous one,
//! so the error drift measures remains that of the model answering requests.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use async_nats::jetstream::kv;
use freshet::ids::ModelName;
use freshet::model::{Manifest, ModelScorer};
use freshet::runtime::Shutdown;
use freshet::runtime::pull::retry_delay;
use freshet::store::{ArtifactStore, Pointer, Slot, VersionRefusal};
use freshet::subjects::pointer_key;
use futures::StreamExt;

use crate::metrics::DriftMetrics;

/// Attempts at loading a version while the object store is unreachable, before giving up on it
/// until the pointer moves again.
const LOAD_ATTEMPTS: i64 = 5;

/// A loaded, verified version.
pub struct LiveModel {
    pub manifest: Manifest,
    pub scorer: ModelScorer,
}

impl LiveModel {
    /// The version number, from its manifest.
    pub fn version(&self) -> u64 {
        self.manifest.version
    }
}

/// The live version, swapped atomically: a batch takes a snapshot and scores on it throughout.
#[derive(Clone, Default)]
pub struct Live {
    slot: Arc<ArcSwapOption<LiveModel>>,
}

impl Live {
    /// The live version, if one is loaded; hold it for the duration of one batch.
    pub fn current(&self) -> Option<Arc<LiveModel>> {
        self.slot.load_full()
    }

    fn version(&self) -> Option<u64> {
        self.slot.load().as_ref().map(|m| m.version())
    }

    fn swap(&self, model: LiveModel) {
        self.slot.store(Some(Arc::new(model)));
    }
}

/// Follows one model's live pointer into a [`Live`].
pub struct Follower {
    pub model: ModelName,
    pub models: kv::Store,
    pub artifacts: ArtifactStore,
    pub live: Live,
    pub metrics: DriftMetrics,
}

impl Follower {
    /// Loads the version the pointer names now, so the first batch is scored by it. Without a
    /// pointer (no model trained yet), or if the read fails, the watch catches up later.
    pub async fn load_current(&self) {
        let key = pointer_key(&self.model, Slot::Live.as_str());
        match self.models.entry(&key).await {
            Ok(Some(entry)) => self.apply(entry).await,
            Ok(None) => {
                tracing::info!(model = %self.model, "no live version yet; errors are watched once there is one")
            }
            Err(err) => {
                tracing::warn!(model = %self.model, error = %err, "cannot read the live pointer; the watch will catch up")
            }
        }
    }

    async fn load(&self, pointer: &Pointer) -> Result<LiveModel, VersionRefusal> {
        let (manifest, scorer) = self.artifacts.load_pointed(&self.model, pointer).await?;
        Ok(LiveModel { manifest, scorer })
    }

    async fn apply(&self, entry: kv::Entry) {
        if entry.operation != kv::Operation::Put {
            tracing::warn!(model = %self.model, "live pointer deleted; keeping the version loaded");
            return;
        }
        let pointer: Pointer = match serde_json::from_slice(&entry.value) {
            Ok(pointer) => pointer,
            Err(err) => {
                tracing::error!(model = %self.model, error = %err, "unreadable live pointer; keeping the version loaded");
                return;
            }
        };
        if self.live.version() == Some(pointer.version) {
            return;
        }
        for attempt in 1..=LOAD_ATTEMPTS {
            match self.load(&pointer).await {
                Ok(model) => {
                    let previous = self.live.version();
                    self.live.swap(model);
                    self.metrics.live_version.set(pointer.version as i64);
                    tracing::info!(model = %self.model, version = pointer.version, ?previous, "following a new live version; its errors are watched afresh");
                    return;
                }
                Err(refusal) if refusal.transient && attempt < LOAD_ATTEMPTS => {
                    tracing::warn!(model = %self.model, version = pointer.version, reason = %refusal.reason, "cannot load the live version yet; retrying");
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(refusal) => {
                    self.metrics.refused_versions.inc();
                    tracing::error!(model = %self.model, version = pointer.version, reason = %refusal.reason, previous = ?self.live.version(),
                        "refused a live version; errors stay those of the version loaded");
                    return;
                }
            }
        }
    }

    /// Runs until shutdown, re-establishing the watch if it breaks.
    pub async fn run(self, mut shutdown: Shutdown) {
        let key = pointer_key(&self.model, Slot::Live.as_str());
        let mut attempt = 0i64;
        while !shutdown.is_triggered() {
            let mut watch = match self.models.watch_with_history(&key).await {
                Ok(watch) => watch,
                Err(err) => {
                    attempt += 1;
                    tracing::warn!(error = %err, "cannot watch the live pointer; retrying");
                    tokio::time::sleep(retry_delay(attempt)).await;
                    continue;
                }
            };
            attempt = 0;
            loop {
                tokio::select! {
                    next = watch.next() => match next {
                        Some(Ok(entry)) => self.apply(entry).await,
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "live pointer watch error; watching again");
                            tokio::time::sleep(retry_delay(1)).await;
                            break;
                        }
                        None => break,
                    },
                    _ = shutdown.wait() => return,
                }
            }
        }
    }
}
