//! The training hyperparameters every model kind shares, and the learning-rate schedule.
//!
//! Every kind takes the step `p ← p − η_t·d` (see [`optim`](super::optim) for the direction
//! `d`) once per [`Hyper::rows_per_step`] rows of a batch, with the learning rate decaying as
//! `η_t = η0 / (1 + α·t)` over the step counter `t`:
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
///
/// The defaults are what `train` ships with (its flags default to these fields) and what the
/// quality comparison reports as "defaults": SGD at a constant rate, one step per row. A batch
/// fetched from the stream is a unit of I/O and acknowledgement, not of learning; a constant
/// rate keeps the model following a concept that drifts, where a decaying one freezes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hyper {
    /// Initial learning rate η0 (> 0), applied to the mean gradient of a step's rows. Default
    /// [`DEFAULT_LEARNING_RATE`].
    pub learning_rate: f64,
    /// Learning-rate decay α (≥ 0) per step; 0 keeps the rate constant. Default 0.
    pub decay: f64,
    /// L2 penalty λ (≥ 0) on the weights, not the biases. Default 0.
    pub l2: f64,
    /// The update rule. Defaults to SGD, which is what manifests written before this field
    /// existed were trained with.
    pub optimizer: Optimizer,
    /// Rows per optimizer step within a batch: 1 steps once per row, as an online learner
    /// does; 0 takes one step on the whole batch, which is how every version was trained before
    /// this field existed (so a manifest without it reads as 0). Each step's rows are scored
    /// by the model before that step, so the prequential metrics measure the steps, not the
    /// batch. Default [`DEFAULT_ROWS_PER_STEP`].
    #[serde(default)]
    pub rows_per_step: usize,
}

/// η0 that `train` ships with, per row: half River's SGD rate. Of the constant rates tried (0.005
/// to 0.2, SGD and Adam) River's 0.01 was best on the drifting streams of the quality comparison
/// (where it equals River's `StandardScaler | LogisticRegression` row for row), and 0.005 within
/// 0.35 points of it on each (ahead on SEA and Bananas); but at 0.01 the model trained on the
/// bookstore's stationary stream moves enough for drift's default error detector to report a
/// rise (tests/drift_episodes.rs), which 0.005 does not (BENCHMARKS.md, "Model quality").
pub const DEFAULT_LEARNING_RATE: f64 = 0.005;

/// Rows per optimizer step that `train` ships with: one, so a batch of 256 learns as 256 rows
/// one at a time would (BENCHMARKS.md, "Model quality").
pub const DEFAULT_ROWS_PER_STEP: usize = 1;

impl Default for Hyper {
    fn default() -> Self {
        Self {
            learning_rate: DEFAULT_LEARNING_RATE,
            decay: 0.0,
            l2: 0.0,
            optimizer: Optimizer::Sgd,
            rows_per_step: DEFAULT_ROWS_PER_STEP,
        }
    }
}

impl Hyper {
    /// Rows in each optimizer step of a batch of `rows` rows (the last step may have fewer).
    pub fn step_rows(&self, rows: usize) -> usize {
        match self.rows_per_step {
            0 => rows.max(1),
            n => n,
        }
    }

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
