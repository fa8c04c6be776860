//! Watches a pointer of the model in MODELS (`<model>.live` or `<model>.candidate`; current value
//! first, then every change), loads each new version beside the serving one, verifies it
//! (checksum, schema, a test inference) and only then swaps it in. A version that fails any check is refused: the previous one keeps serving, and the
//! refusal is logged, counted and announced on CONTROL.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use freshet::ids::ModelName;
use freshet::store::{ArtifactStore, Pointer, Slot};
use freshet::subjects::{Subjects, pointer_key};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;

use crate::handler;
use crate::live::{Live, LiveModel};

/// Metrics of the swap path.
#[derive(Clone, Default)]
pub struct SwapMetrics {
    pub swaps: Counter,
    pub refused: Counter,
    pub live_version: Gauge,
}

impl SwapMetrics {
    pub fn register(&self, metrics: &freshet::metrics::Metrics) {
        metrics.register("swaps", "Model versions swapped in", self.swaps.clone());
        metrics.register(
            "refused_versions",
            "Model versions refused (missing, corrupt, incompatible)",
            self.refused.clone(),
        );
        metrics.register(
            "live_version",
            "The model version serving now",
            self.live_version.clone(),
        );
    }
}

/// Everything the watcher of one pointer needs.
pub struct Watcher {
    pub model: ModelName,
    pub slot: Slot,
    pub models: kv::Store,
    pub artifacts: ArtifactStore,
    pub live: Live,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub metrics: SwapMetrics,
}

impl Watcher {
    /// Loads, verifies and warms one version.
    async fn load(&self, pointer: &Pointer) -> Result<LiveModel, String> {
        let (manifest, scorer) = self
            .artifacts
            .load_pointed(&self.model, pointer)
            .await
            .map_err(|refusal| refusal.reason)?;
        handler::check_compatible(&manifest.schema)?;
        Ok(LiveModel { manifest, scorer })
    }

    async fn refuse(&self, pointer: &Pointer, reason: &str) {
        self.metrics.refused.inc();
        tracing::error!(model = %self.model, version = pointer.version, %reason, "refused a model version; the previous one keeps serving");
        let body = json!({"kind": "version_refused", "model": self.model, "slot": self.slot.as_str(),
            "version": pointer.version, "reason": reason, "serving": self.live.version()});
        if let Err(err) = self
            .js
            .publish(
                self.subjects.control(&self.model, "refused"),
                Bytes::from(body.to_string()),
            )
            .await
        {
            tracing::warn!(error = %err, "cannot announce the refusal on CONTROL");
        }
    }

    async fn apply(&self, entry: kv::Entry) {
        if entry.operation != kv::Operation::Put {
            match self.slot {
                Slot::Live => {
                    tracing::warn!(model = %self.model, "live pointer deleted; keeping the serving version")
                }
                Slot::Candidate => {
                    tracing::info!(model = %self.model, "candidate withdrawn");
                    self.live.clear();
                }
            }
            return;
        }
        let pointer: Pointer = match serde_json::from_slice(&entry.value) {
            Ok(pointer) => pointer,
            Err(err) => {
                tracing::error!(model = %self.model, error = %err, "unreadable live pointer; keeping the serving version");
                return;
            }
        };
        if self.live.version() == Some(pointer.version) {
            return;
        }
        match self.load(&pointer).await {
            Ok(model) => {
                let previous = self.live.version();
                self.live.swap(model);
                self.metrics.swaps.inc();
                if self.slot == Slot::Live {
                    self.metrics.live_version.set(pointer.version as i64);
                }
                tracing::info!(model = %self.model, slot = self.slot.as_str(), version = pointer.version, ?previous, "swapped in a new version");
            }
            Err(reason) => self.refuse(&pointer, &reason).await,
        }
    }

    /// Runs until the process stops, re-establishing the watch if it breaks.
    pub async fn run(self, mut shutdown: freshet::shutdown::Shutdown) {
        let key = pointer_key(&self.model, self.slot.as_str());
        let mut attempt = 0i64;
        while !shutdown.is_triggered() {
            let mut watch = match self.models.watch_with_history(&key).await {
                Ok(watch) => watch,
                Err(err) => {
                    attempt += 1;
                    tracing::warn!(error = %err, slot = self.slot.as_str(), "cannot watch the pointer; retrying");
                    tokio::time::sleep(freshet::runtime::pull::retry_delay(attempt)).await;
                    continue;
                }
            };
            attempt = 0;
            loop {
                tokio::select! {
                    next = watch.next() => match next {
                        Some(Ok(entry)) => self.apply(entry).await,
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "pointer watch error; re-watching");
                            tokio::time::sleep(Duration::from_millis(200)).await;
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
