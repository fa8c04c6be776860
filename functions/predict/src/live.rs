//! The model serving right now, swapped atomically. Readers take a cheap snapshot (`load_full`)
//! and score on it; a swap never waits for them and they never wait for a swap, so a request in
//! flight finishes on the version it started with.

use arc_swap::ArcSwapOption;
use freshet::model::{Manifest, ModelScorer};
use std::sync::Arc;

/// A loaded, verified, warmed version.
pub struct LiveModel {
    pub manifest: Manifest,
    pub scorer: ModelScorer,
}

/// One slot predictors read from: the live version, or the candidate.
#[derive(Clone, Default)]
pub struct Live {
    slot: Arc<ArcSwapOption<LiveModel>>,
}

impl Live {
    /// The serving version, if any; hold it for the duration of one request.
    pub fn current(&self) -> Option<Arc<LiveModel>> {
        self.slot.load_full()
    }

    pub fn version(&self) -> Option<u64> {
        self.slot.load().as_ref().map(|m| m.manifest.version)
    }

    /// Makes `model` the serving version.
    pub fn swap(&self, model: LiveModel) {
        self.slot.store(Some(Arc::new(model)));
    }

    /// Empties the slot (a candidate withdrawn).
    pub fn clear(&self) {
        self.slot.store(None);
    }
}
