//! The training hyperparameters every model kind shares, and the learning-rate schedule.
//!
//! Every kind takes the step `p ← p − η_t·d` (see [`optim`](super::optim) for the direction
//! `d`), with the learning rate decaying as `η_t = η0 / (1 + α·t)` over the update counter `t`:
//! [`Hyper::learning_rate_at`] is that schedule, and the only place it is computed. The counter is
//! stored in every artifact, so a restored model continues the schedule where it stopped, and a
//! drift reaction can restart it ([`Trainer::restarted`](super::Trainer::restarted)).
//!
//! `Hyper` is also written into every manifest, and read back with `#[serde(default)]`: a new
//! field needs a default that reproduces how older manifests were trained, and a different
//! schedule shape is a change to what stored manifests mean, not only to this function.

use serde::{Deserialize, Serialize};

use super::error::ModelError;
use super::optim::Optimizer;

/// Training hyperparameters, shared by every model kind. The learning rate at step `t` is
/// `learning_rate / (1 + decay·t)`, whichever optimizer applies it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hyper {
    /// Initial learning rate η0 (> 0). Default 0.1.
    pub learning_rate: f64,
    /// Learning-rate decay α (≥ 0); 0 keeps the rate constant. Default 0.01.
    pub decay: f64,
    /// L2 penalty λ (≥ 0) on the weights, not the biases. Default 1e-4.
    pub l2: f64,
    /// The update rule. Defaults to SGD, which is what manifests written before this field
    /// existed were trained with.
    pub optimizer: Optimizer,
}

impl Default for Hyper {
    fn default() -> Self {
        Self {
            learning_rate: 0.1,
            decay: 0.01,
            l2: 1e-4,
            optimizer: Optimizer::Sgd,
        }
    }
}

impl Hyper {
    /// The learning rate used for the update taken at step `t` (before `t` is incremented).
    pub fn learning_rate_at(&self, t: u64) -> f64 {
        // u64 → f64 rounds above 2^53, which only shifts an already vanishing rate.
        self.learning_rate / (1.0 + self.decay * t as f64)
    }

    /// Rejects values that would make training meaningless (non-finite, non-positive rate,
    /// negative decay or penalty, Adam settings out of range).
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(ModelError::InvalidConfig {
                name: "learning_rate",
                value: self.learning_rate,
            });
        }
        if !(self.decay.is_finite() && self.decay >= 0.0) {
            return Err(ModelError::InvalidConfig {
                name: "decay",
                value: self.decay,
            });
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(ModelError::InvalidConfig {
                name: "l2",
                value: self.l2,
            });
        }
        self.optimizer.validate()
    }
}
