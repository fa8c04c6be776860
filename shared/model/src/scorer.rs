//! [`ModelScorer`], the inference-only model a predictor serves, of any kind.

use super::artifact;
use super::error::ModelError;
use super::kind::ModelKind;
use super::learner::HostModel;

/// Inference-only model of any kind, scoring on host vectors (no burn, no tensors), because
/// predictors call it once per request and tensor set-up would dominate a single row. Cheap to
/// share (`Arc`) and safe to call from many threads at once.
#[derive(Debug, Clone)]
pub struct ModelScorer {
    model: HostModel,
}

impl ModelScorer {
    /// A scorer of a learner's current model.
    pub(crate) fn new(model: HostModel) -> ModelScorer {
        ModelScorer { model }
    }

    /// Loads a scorer from any model artifact; the kind is read from its header.
    pub fn from_bytes(bytes: &[u8]) -> Result<ModelScorer, ModelError> {
        Ok(ModelScorer {
            model: HostModel::from_snapshot(artifact::decode(bytes)?),
        })
    }

    /// Probability of class 1 for one row.
    pub fn score(&self, row: &[f32]) -> Result<f32, ModelError> {
        self.model.score(row)
    }

    /// Probability of class 1 for each row. An empty batch gives an empty result.
    pub fn score_batch(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        self.model.score_batch(rows)
    }

    /// Number of input features each row must have.
    pub fn n_features(&self) -> usize {
        self.model.n_features
    }

    /// The training step `t` of the model this scorer was made from.
    pub fn step(&self) -> u64 {
        self.model.step
    }

    /// The model family.
    pub fn kind(&self) -> ModelKind {
        self.model.kind
    }

    /// A logistic regression's weights, one per feature in feature order, and its bias; they act
    /// on inputs standardised by the model's own scaler. `None` for the other kinds, which have
    /// no single weight per feature.
    pub fn linear_weights(&self) -> Option<(&[f32], f32)> {
        self.model.kind.linear_weights(self.model.params())
    }
}
