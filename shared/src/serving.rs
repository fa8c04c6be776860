//! The prediction protocol spoken on `<prefix>.predict.<model>` (NATS request/reply), shared by
//! the predictor and its clients (the CLI, tests, benchmarks).
//!
//! A request names either a feature vector or a (user, item) pair whose features the predictor
//! builds from FEATURES with the same code featurize uses. Errors come back as a NATS service
//! error: headers `Nats-Service-Error` (the message) and `Nats-Service-Error-Code` (400, 404, 503).

use serde::{Deserialize, Serialize};

use crate::ids::EntityId;

/// Service name under which predictors register (`nats micro ls` shows it).
pub const SERVICE_NAME: &str = "freshet-predict";
/// The most rows one batch request may carry.
pub const MAX_BATCH_ROWS: usize = 1024;

/// One prediction request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// A ready feature vector, in the model's schema order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<f64>>,
    /// A user, with `item`: the predictor reads both from FEATURES and builds the vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<EntityId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<EntityId>,
}

/// Where request-time features came from: the FEATURES revisions read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub user_revision: u64,
    pub item_revision: u64,
}

/// One prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictResponse {
    pub model: String,
    /// The model version that produced the score.
    pub version: u64,
    /// Probability of the positive class.
    pub score: f32,
    /// Id of this prediction on the PREDICTIONS stream, for joining outcomes.
    pub prediction_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// A batch of requests, answered in order by one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub instances: Vec<PredictRequest>,
}

/// The answers to a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub model: String,
    pub version: u64,
    pub scores: Vec<f32>,
}

/// Endpoint subjects of a model's predictor.
pub fn endpoint_single(
    subjects: &crate::subjects::Subjects,
    model: &crate::ids::ModelName,
) -> String {
    subjects.predict(model)
}

pub fn endpoint_batch(
    subjects: &crate::subjects::Subjects,
    model: &crate::ids::ModelName,
) -> String {
    format!("{}.batch", subjects.predict(model))
}
