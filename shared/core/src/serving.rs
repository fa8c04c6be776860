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
    /// Live, or candidate when an A/B split routed this request to it.
    #[serde(default = "default_variant")]
    pub variant: Variant,
}

fn default_variant() -> Variant {
    Variant::Live
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
    /// One id per score, to send back with an `outcome` event; empty when the predictor does
    /// not record predictions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prediction_ids: Vec<String>,
}

/// Which model version answered: the live one, or the candidate under an A/B split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Live,
    Candidate,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Live => "live",
            Variant::Candidate => "candidate",
        }
    }
}

/// A request for the top-N items for a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    pub user: EntityId,
    /// How many items to return (1 to [`MAX_RECOMMENDATIONS`]; 10 when absent).
    #[serde(default)]
    pub top: Option<usize>,
}

/// The most items one recommend request may ask for.
pub const MAX_RECOMMENDATIONS: usize = 100;

/// One recommended item, with the FEATURES revision of the item state it was scored on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub item: String,
    pub score: f32,
    pub item_revision: u64,
}

/// The top-N items for a user, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendResponse {
    pub model: String,
    pub version: u64,
    pub user: String,
    pub user_revision: u64,
    pub items: Vec<Recommendation>,
}

/// One scored request as PREDICTIONS holds it: the score given (served) or the other variant's
/// score of the same row (shadow).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    pub prediction_id: String,
    pub model: String,
    pub version: u64,
    pub variant: Variant,
    /// True for the score returned to the caller, false for a shadow score.
    pub served: bool,
    pub score: f32,
    /// The row scored. Kept in memory for the shadow score; not recorded on PREDICTIONS, where
    /// the outcome join and the gate need only scores (and the row would double a record's size).
    #[serde(default, skip_serializing)]
    pub features: Vec<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    pub at: chrono::DateTime<chrono::Utc>,
    /// The W3C trace the request came in (its `traceparent`), when it carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<crate::trace::TraceId>,
}

/// A served prediction and, when a second variant was loaded, its shadow score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedPrediction {
    pub served: PredictionRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<PredictionRecord>,
}

/// The predictions a predictor recorded over a few milliseconds, as one PREDICTIONS message.
///
/// Recording each prediction as its own stored message would cost the server a second stored
/// message per request, doubling its work per prediction; a batch costs one per few hundred.
/// Entry `i` is the prediction whose id is `PredictionId { batch, index: i }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionBatch {
    pub model: String,
    pub batch: String,
    pub entries: Vec<RecordedPrediction>,
}

/// A prediction id says where its record is: `<batch>-<index>`, the batch message's id and the
/// entry's position in it, so the outcome join fetches one message by subject and indexes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictionId {
    pub batch: String,
    pub index: usize,
}

impl PredictionId {
    /// Reads an id of the form `<batch>-<index>`; `None` for any other text (such an id was not
    /// given by a freshet predictor, so nothing can be joined to it).
    pub fn parse(id: &str) -> Option<PredictionId> {
        let (batch, index) = id.rsplit_once('-')?;
        let valid_batch = !batch.is_empty()
            && batch
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_batch || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(PredictionId {
            batch: batch.to_string(),
            index: index.parse().ok()?,
        })
    }
}

impl std::fmt::Display for PredictionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.batch, self.index)
    }
}

/// Endpoint subjects of a model's predictor.
pub fn endpoint_single(
    subjects: &crate::subjects::Subjects,
    model: &crate::ids::ModelName,
) -> String {
    subjects.predict(model)
}

pub fn endpoint_recommend(
    subjects: &crate::subjects::Subjects,
    model: &crate::ids::ModelName,
) -> String {
    format!("{}.recommend", subjects.predict(model))
}

pub fn endpoint_batch(
    subjects: &crate::subjects::Subjects,
    model: &crate::ids::ModelName,
) -> String {
    format!("{}.batch", subjects.predict(model))
}

/// Why a call to a predictor did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("nobody serves {subject}: is a predictor for this model running?")]
    NoResponders { subject: String },
    #[error("no answer on {subject} within {timeout:?}")]
    TimedOut {
        subject: String,
        timeout: std::time::Duration,
    },
    #[error("request on {subject} failed: {source}")]
    Request {
        subject: String,
        source: async_nats::RequestError,
    },
    /// The predictor answered with a service error (`code` 400: the request, 503: no version).
    #[error("the predictor refused the request ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("the predictor's reply is not what was asked for: {source}: {reply}")]
    Decode {
        source: serde_json::Error,
        reply: String,
    },
}

/// Sends `request` as JSON to a predictor endpoint and decodes its reply: the one client of the
/// prediction protocol, used by the CLI, the demo, the tests and the benchmark.
pub async fn call<Req: Serialize, Resp: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    request: &Req,
    timeout: std::time::Duration,
) -> Result<Resp, CallError> {
    use async_nats::RequestErrorKind;
    let body =
        serde_json::to_vec(request).expect("protocol requests are plain data and always serialise");
    let message = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(timeout));
    let reply = match client.send_request(subject.clone(), message).await {
        Ok(reply) => reply,
        Err(err) => {
            return Err(match err.kind() {
                RequestErrorKind::NoResponders => CallError::NoResponders { subject },
                RequestErrorKind::TimedOut => CallError::TimedOut { subject, timeout },
                _ => CallError::Request {
                    subject,
                    source: err,
                },
            });
        }
    };
    if let Some(headers) = &reply.headers
        && let Some(message) = headers.get(async_nats::service::NATS_SERVICE_ERROR)
    {
        let code = headers
            .get(async_nats::service::NATS_SERVICE_ERROR_CODE)
            .map_or("?", |c| c.as_str());
        return Err(CallError::Refused {
            code: code.to_string(),
            message: message.to_string(),
        });
    }
    serde_json::from_slice(&reply.payload).map_err(|source| CallError::Decode {
        source,
        reply: String::from_utf8_lossy(&reply.payload)
            .chars()
            .take(200)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prediction_id_round_trips_and_foreign_ids_are_refused() {
        let id = PredictionId {
            batch: "0b9c6f1e-2f4a-4b8e-9d31-5c2d7a1e8f00".into(),
            index: 41,
        };
        assert_eq!(PredictionId::parse(&id.to_string()), Some(id));
        for foreign in [
            "", "41", "-41", "batch-", "batch-4x", "a.b-1", "a>-1", "a b-2",
        ] {
            assert_eq!(PredictionId::parse(foreign), None, "{foreign:?}");
        }
    }
}
