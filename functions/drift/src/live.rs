//! The versions drift scores examples with: the live one, to watch its prediction error, and for
//! the promotion gate the candidate and the version live replaced.
//!
//! A [`Follower`] follows `<model>.live` (or `<model>.candidate`) in MODELS (its current value first, then every change),
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
use freshet::runtime::pull::retry_delay;
use freshet::shutdown::Shutdown;
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

    fn swap(&self, model: Arc<LiveModel>) {
        self.slot.store(Some(model));
    }

    /// Empties the slot (a candidate withdrawn, a fallback no longer needed).
    pub fn clear(&self) {
        self.slot.store(None);
    }
}

/// Whether moving live from `previous` to `next` (for `reason`) jumps to a version that does not
/// continue it: a promotion, rather than a later step of train's chain or a rollback (a move
/// whose reason says so). Manifests written before chains were recorded continue their parent.
pub fn jumps(previous: &Manifest, next: &Manifest, reason: &str) -> bool {
    let legacy_step = next.lineage.is_none()
        && previous.lineage.is_none()
        && next.parent == Some(previous.version);
    next.lineage_root() != previous.lineage_root() && !legacy_step && !reason.contains("rollback")
}

/// Follows one of a model's pointers into a [`Live`].
pub struct Follower {
    pub model: ModelName,
    /// The pointer followed.
    pub slot: Slot,
    pub models: kv::Store,
    pub artifacts: ArtifactStore,
    pub live: Live,
    /// For the live pointer: where the version replaced by a jump is kept for the gate, and
    /// emptied when live goes back to an older version.
    pub fallback: Option<Live>,
    pub metrics: DriftMetrics,
}

impl Follower {
    /// Loads the version the pointer names now, so the first batch is scored by it. Without a
    /// pointer (no model trained yet), or if the read fails, the watch catches up later.
    pub async fn load_current(&self) {
        let key = pointer_key(&self.model, self.slot.as_str());
        match self.models.entry(&key).await {
            Ok(Some(entry)) => self.apply(entry).await,
            Ok(None) => {
                tracing::info!(model = %self.model, slot = self.slot.as_str(), "no version in this slot yet")
            }
            Err(err) => {
                tracing::warn!(model = %self.model, slot = self.slot.as_str(), error = %err, "cannot read the pointer; the watch will catch up")
            }
        }
    }

    async fn load(&self, pointer: &Pointer) -> Result<LiveModel, VersionRefusal> {
        let (manifest, scorer) = self.artifacts.load_pointed(&self.model, pointer).await?;
        Ok(LiveModel { manifest, scorer })
    }

    async fn apply(&self, entry: kv::Entry) {
        if entry.operation != kv::Operation::Put {
            if self.slot == Slot::Candidate {
                tracing::info!(model = %self.model, "candidate withdrawn");
                self.live.clear();
            } else {
                tracing::warn!(model = %self.model, "live pointer deleted; keeping the version loaded");
            }
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
                    let model = Arc::new(model);
                    let previous = self.live.current();
                    if let (Some(fallback), Some(previous)) = (&self.fallback, &previous) {
                        if jumps(&previous.manifest, &model.manifest, &pointer.reason) {
                            tracing::info!(model = %self.model, from = previous.version(), to = model.version(), "live jumped to a version that does not continue the previous one; the gate compares them");
                            fallback.swap(previous.clone());
                        } else if pointer.reason.contains("rollback") {
                            fallback.clear();
                        }
                    }
                    self.live.swap(model);
                    if self.slot == Slot::Live {
                        self.metrics.live_version.set(pointer.version as i64);
                    }
                    tracing::info!(model = %self.model, slot = self.slot.as_str(), version = pointer.version,
                        previous = ?previous.map(|p| p.version()), "following a new version");
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
        let key = pointer_key(&self.model, self.slot.as_str());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: u64, parent: Option<u64>, lineage: Option<u64>) -> Manifest {
        let bytes = [0u8; 4];
        Manifest {
            model: "m".into(),
            version,
            parent,
            config: Default::default(),
            schema: freshet::features::schema(),
            sha256: freshet::model::sha256_hex(&bytes),
            size_bytes: 4,
            created_at: chrono::Utc::now(),
            step: 1,
            learned: None,
            high_water_mark: 0,
            metrics: freshet::model::TrainingMetrics {
                examples_total: 0,
                window_examples: 0,
                prequential_accuracy: 0.5,
                log_loss: 0.69,
                roc_auc: None,
            },
            lineage,
            traces: Vec::new(),
        }
    }

    #[test]
    fn a_jump_leaves_the_chain_forward() {
        let live = manifest(10, Some(9), Some(1));
        // train's next step, even past versions the candidate took.
        assert!(!jumps(&live, &manifest(13, Some(10), Some(1)), "train"));
        // A candidate's version (its own chain, whatever its number), or one made by hand.
        assert!(jumps(
            &live,
            &manifest(8, Some(7), Some(6)),
            "gate: promote"
        ));
        assert!(jumps(&live, &manifest(20, None, None), "deployed by hand"));
        // Back to the version a jump replaced: a rollback, not a jump.
        assert!(!jumps(
            &live,
            &manifest(5, Some(4), Some(2)),
            "gate: rollback (...)"
        ));
        // Manifests without chains continue their parent.
        assert!(!jumps(
            &manifest(3, Some(2), None),
            &manifest(4, Some(3), None),
            "train"
        ));
        assert!(jumps(
            &manifest(3, Some(2), None),
            &manifest(9, Some(7), None),
            "promote"
        ));
    }
}
