//! Serving over NATS: a NATS micro service (discoverable with `nats micro ls`, with ping, info and
//! stats) whose endpoints score one request or a batch on the live version. Each prediction is
//! also published to PREDICTIONS with its id and version, so outcomes can be joined to it later.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use chrono::Utc;
use freshet::features::{ItemState, UserState, feature_vector, item_key, user_key};
use freshet::ids::ModelName;
use freshet::serving::{
    BatchResponse, PredictRequest, PredictResponse, Provenance, SERVICE_NAME, endpoint_batch,
    endpoint_single,
};
use freshet::store::kv::read;
use freshet::subjects::Subjects;
use futures::StreamExt;
use serde_json::json;

use crate::handler::{self, Query, ServeError};
use crate::live::{Live, LiveModel};

/// What a request handler needs; cheap to clone into each request's task.
#[derive(Clone)]
pub struct Server {
    pub model: ModelName,
    pub live: Live,
    pub features: kv::Store,
    pub js: jetstream::Context,
    pub subjects: Subjects,
}

impl Server {
    fn serving(&self) -> Result<Arc<LiveModel>, ServeError> {
        self.live.current().ok_or_else(|| {
            ServeError::unavailable(format!("model {} has no live version yet", self.model))
        })
    }

    /// Builds request-time features from FEATURES with the same code featurize uses.
    async fn pair_features(
        &self,
        user: &freshet::ids::EntityId,
        item: &freshet::ids::EntityId,
    ) -> Result<(Vec<f32>, Provenance), ServeError> {
        let unavailable = |e: freshet::error::Failure| ServeError::unavailable(e.to_string());
        let (user_key, item_key) = (user_key(user), item_key(item));
        let (user_raw, item_raw) = tokio::try_join!(
            read(&self.features, &user_key),
            read(&self.features, &item_key)
        )
        .map_err(unavailable)?;
        let decode_user = |b: &Bytes| {
            serde_json::from_slice::<UserState>(b).map_err(|e| {
                ServeError::unavailable(format!("unreadable state of user {user}: {e}"))
            })
        };
        let decode_item = |b: &Bytes| {
            serde_json::from_slice::<ItemState>(b).map_err(|e| {
                ServeError::unavailable(format!("unreadable state of item {item}: {e}"))
            })
        };
        let user_state = user_raw
            .value
            .as_ref()
            .map(decode_user)
            .transpose()?
            .unwrap_or_default();
        let item_state = item_raw
            .value
            .as_ref()
            .map(decode_item)
            .transpose()?
            .unwrap_or_default();
        let provenance = Provenance {
            user_revision: user_raw.revision,
            item_revision: item_raw.revision,
        };
        Ok((
            feature_vector(&user_state, &item_state, Utc::now()),
            provenance,
        ))
    }

    async fn row_for(
        &self,
        request: &PredictRequest,
        live: &LiveModel,
    ) -> Result<(Vec<f32>, Option<Provenance>), ServeError> {
        match handler::query_for(request, live.scorer.n_features())? {
            Query::Features(row) => Ok((row, None)),
            Query::Pair { user, item } => {
                if live.manifest.schema.name != freshet::features::SCHEMA_NAME {
                    return Err(ServeError::bad_request(format!(
                        "model {} takes raw feature vectors ({} schema); send \"features\"",
                        self.model, live.manifest.schema.name
                    )));
                }
                let (row, provenance) = self.pair_features(&user, &item).await?;
                Ok((row, Some(provenance)))
            }
        }
    }

    pub async fn predict_one(&self, payload: &[u8]) -> Result<PredictResponse, ServeError> {
        let request = handler::parse_single(payload)?;
        let live = self.serving()?;
        let (row, provenance) = self.row_for(&request, &live).await?;
        let score = live
            .scorer
            .score(&row)
            .map_err(|e| ServeError::bad_request(e.to_string()))?;
        let response = PredictResponse {
            model: self.model.to_string(),
            version: live.manifest.version,
            score,
            prediction_id: uuid::Uuid::new_v4().to_string(),
            provenance,
        };
        self.record(&response, &row).await;
        Ok(response)
    }

    pub async fn predict_batch(&self, payload: &[u8]) -> Result<BatchResponse, ServeError> {
        let batch = handler::parse_batch(payload)?;
        let live = self.serving()?;
        let mut rows = Vec::with_capacity(batch.instances.len());
        for request in &batch.instances {
            rows.push(self.row_for(request, &live).await?.0);
        }
        let scores = live
            .scorer
            .score_batch(&rows)
            .map_err(|e| ServeError::bad_request(e.to_string()))?;
        Ok(BatchResponse {
            model: self.model.to_string(),
            version: live.manifest.version,
            scores,
        })
    }

    /// Scores raw feature rows (the HTTP inference path): validated like any request, answered
    /// by one version.
    pub fn score_rows(&self, rows: &[Vec<f64>]) -> Result<(Arc<LiveModel>, Vec<f32>), ServeError> {
        if rows.is_empty() || rows.len() > freshet::serving::MAX_BATCH_ROWS {
            return Err(ServeError::bad_request(format!(
                "a batch holds 1 to {} rows, this one {}",
                freshet::serving::MAX_BATCH_ROWS,
                rows.len()
            )));
        }
        let live = self.serving()?;
        let checked = rows
            .iter()
            .map(|row| handler::feature_row(row, live.scorer.n_features()))
            .collect::<Result<Vec<_>, _>>()?;
        let scores = live.scorer.score_batch(&checked).map_err(|e| ServeError::bad_request(e.to_string()))?;
        Ok((live, scores))
    }

    /// Publishes the prediction to PREDICTIONS without waiting for the stream's ack: the caller's
    /// latency must not include it, and a lost record only thins the outcome join.
    async fn record(&self, response: &PredictResponse, row: &[f32]) {
        let body = json!({"prediction_id": response.prediction_id, "model": response.model, "version": response.version,
            "score": response.score, "features": row, "variant": "live", "at": Utc::now()});
        if let Err(err) = self
            .js
            .publish(
                self.subjects.predictions(&self.model),
                Bytes::from(body.to_string()),
            )
            .await
        {
            tracing::debug!(error = %err, "cannot record a prediction");
        }
    }
}

fn reply<T: serde::Serialize>(
    result: Result<T, ServeError>,
) -> Result<Bytes, service::error::Error> {
    match result {
        Ok(value) => Ok(Bytes::from(
            serde_json::to_vec(&value).expect("responses are plain data and always serialise"),
        )),
        Err(err) => Err(service::error::Error {
            status: err.message,
            code: err.code,
        }),
    }
}

/// Starts the NATS micro service and serves until shutdown.
pub async fn serve(
    client: async_nats::Client,
    server: Server,
    mut shutdown: freshet::runtime::Shutdown,
) -> anyhow::Result<()> {
    let service = client
        .service_builder()
        .description(format!("freshet predictor for model {}", server.model))
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("starting the NATS service: {e}"))?;
    let mut single = service
        .endpoint_builder()
        .name("predict")
        .add(endpoint_single(&server.subjects, &server.model))
        .await
        .map_err(|e| anyhow::anyhow!("adding the predict endpoint: {e}"))?;
    let mut batch = service
        .endpoint_builder()
        .name("predict-batch")
        .add(endpoint_batch(&server.subjects, &server.model))
        .await
        .map_err(|e| anyhow::anyhow!("adding the batch endpoint: {e}"))?;
    tracing::info!(subject = %endpoint_single(&server.subjects, &server.model), "serving predictions over NATS");
    loop {
        tokio::select! {
            Some(request) = single.next() => {
                let server = server.clone();
                tokio::spawn(async move {
                    let result = server.predict_one(&request.message.payload).await;
                    if let Err(err) = request.respond(reply(result)).await {
                        tracing::debug!(error = %err, "cannot send a reply");
                    }
                });
            }
            Some(request) = batch.next() => {
                let server = server.clone();
                tokio::spawn(async move {
                    let result = server.predict_batch(&request.message.payload).await;
                    if let Err(err) = request.respond(reply(result)).await {
                        tracing::debug!(error = %err, "cannot send a reply");
                    }
                });
            }
            _ = shutdown.wait() => break,
        }
    }
    let _ = service.stop().await;
    Ok(())
}
