//! What predict adds to following its model's pointers ([`freshet_model::store::follow`]): the
//! compatibility check a version must pass before it serves, and the metrics and CONTROL
//! announcements of swaps and refusals.
//!
//! The shared [`Follower`](freshet_model::store::Follower) watches `<model>.live` and
//! `<model>.candidate` (current value first, then every change), loads each new version beside the
//! serving one, verifies it (checksum, a test inference) and, once [`SwapHooks::prepare`] accepts
//! it, swaps it in. A version that fails any check is refused: the previous one keeps serving, and
//! the refusal is logged, counted and announced on CONTROL. A predictor started while live names a
//! version that is refused serves the newest earlier version that loads, and says so
//! (`freshet_serving_fallback`, `/readyz`).

use async_nats::jetstream;
use bytes::Bytes;
use freshet::ids::ModelName;
use freshet::metrics::ModelInfo;
use freshet::subjects::Subjects;
use freshet_model::store::Slot;
use freshet_model::store::follow::{Hooks, Loaded, Refusal, Swap};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use tokio::sync::mpsc;

use crate::handler;

/// Metrics of the swap path.
#[derive(Clone, Default)]
pub struct SwapMetrics {
    pub swaps: Counter,
    pub refused: Counter,
    pub live_version: Gauge,
    pub serving_fallback: Gauge,
    /// The version each slot holds (`model_info{slot, version} 1`): versions are never labels
    /// of the counters above.
    pub info: ModelInfo,
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
        metrics.register(
            "serving_fallback",
            "1 while the version serving stands in for a live version that was refused (live_version names it)",
            self.serving_fallback.clone(),
        );
        self.info.register(metrics);
    }
}

/// predict's hooks on the follower of one pointer.
pub struct SwapHooks {
    pub model: ModelName,
    /// The pointer these hooks follow.
    pub slot: Slot,
    pub metrics: SwapMetrics,
    pub announcements: Announcements,
}

impl Hooks for SwapHooks {
    /// A version whose schema is the bookstore's must be the one this predictor builds features
    /// for; raw-vector models serve as they are.
    fn prepare(&self, loaded: &Loaded) -> Result<(), String> {
        handler::check_compatible(&loaded.manifest.schema)
    }

    fn swapping(&self, swap: &Swap<'_>) {
        self.metrics.swaps.inc();
        self.metrics
            .info
            .set(swap.slot.as_str(), swap.next.version());
        if swap.slot == Slot::Live {
            self.metrics.live_version.set(swap.next.version() as i64);
            self.metrics
                .serving_fallback
                .set(i64::from(swap.stand_in.is_some()));
        }
    }

    fn cleared(&self) {
        self.metrics.info.clear(self.slot.as_str());
    }

    fn refused(&self, refusal: &Refusal<'_>) {
        self.metrics.refused.inc();
        self.announcements
            .send(json!({"kind": "version_refused", "model": self.model,
            "slot": refusal.slot.as_str(), "version": refusal.pointer.version,
            "reason": refusal.reason, "serving": refusal.serving}));
    }
}

/// Announcements on `<prefix>.control.<model>.refused`, published in the order they were made
/// by a task of their own, so a follower never waits on NATS. Clones share the task, which ends
/// once every clone is dropped.
#[derive(Clone)]
pub struct Announcements {
    queue: mpsc::UnboundedSender<serde_json::Value>,
}

impl Announcements {
    pub fn start(js: jetstream::Context, subjects: &Subjects, model: &ModelName) -> Announcements {
        let (queue, mut announcements) = mpsc::unbounded_channel::<serde_json::Value>();
        let subject = subjects.control(model, "refused");
        tokio::spawn(async move {
            while let Some(body) = announcements.recv().await {
                if let Err(err) = js
                    .publish(subject.clone(), Bytes::from(body.to_string()))
                    .await
                {
                    tracing::warn!(error = %err, "cannot announce the refusal on CONTROL");
                }
            }
        });
        Announcements { queue }
    }

    fn send(&self, body: serde_json::Value) {
        // The task only ends when every sender is gone: this one is not.
        let _ = self.queue.send(body);
    }
}
