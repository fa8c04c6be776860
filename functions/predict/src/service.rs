//! Serving over NATS: a NATS micro service (discoverable with `nats micro ls`, with ping, info and
//! stats) whose endpoints score one request, a batch, or recommend the top-N items for a user.
//!
//! When a candidate version is loaded, an A/B split can route a share of entities to it, and the
//! variant that did not answer scores the same request off the response path (shadow). Both
//! scores are recorded on PREDICTIONS under the prediction's id, where outcomes are joined to them.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::kv;
use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use chrono::Utc;
use freshet::ids::{EntityId, ModelName};
use freshet::serving::{
    BatchResponse, PredictRequest, PredictResponse, PredictionRecord, Provenance, RecommendRequest,
    RecommendResponse, Recommendation, SERVICE_NAME, Variant, endpoint_batch, endpoint_recommend,
    endpoint_single,
};
use freshet::store::kv::read;
use freshet::subjects::Subjects;
use freshet::telemetry::{Span, SpanKind, Spans};
use freshet::trace::TraceContext;
use freshet_features::bookstore::{ItemState, UserState, feature_vector, item_key, user_key};
use freshet_model::store::follow::{Loaded, VersionCell};
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::catalog::Catalog;
use crate::handler::{self, Query, ServeError};
use crate::recorder::Recorder;
use crate::spans::{Answered, answered};

/// Label naming the variant that answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VariantLabel {
    pub variant: String,
}

/// Labels of the request-latency histogram: how the request came (`nats`, `http`), the endpoint
/// it asked (`single`, `batch`, `recommend`, `infer`, `cloudevent`), and whether it was answered
/// or refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub transport: String,
    pub endpoint: String,
    pub outcome: String,
}

/// Request latencies from 100 µs to about 6.5 s: a prediction answers in well under a
/// millisecond when its features are in a row, a batch or a recommendation in milliseconds.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Serving metrics, per variant.
#[derive(Clone)]
pub struct ServeMetrics {
    pub predictions: Family<VariantLabel, Counter>,
    pub refused_requests: Counter,
    /// From a request's arrival to its answer (or refusal) being ready to send.
    pub request_seconds: Family<RequestLabel, Histogram, fn() -> Histogram>,
}

impl Default for ServeMetrics {
    fn default() -> Self {
        ServeMetrics {
            predictions: Family::default(),
            refused_requests: Counter::default(),
            request_seconds: Family::new_with_constructor(request_histogram),
        }
    }
}

impl ServeMetrics {
    pub fn register(&self, metrics: &freshet::metrics::Metrics) {
        metrics.register(
            "predictions",
            "Predictions answered, by the variant that answered",
            self.predictions.clone(),
        );
        metrics.register(
            "refused_requests",
            "Requests answered with an error",
            self.refused_requests.clone(),
        );
        metrics.register(
            "request_seconds",
            "Time to answer a request, by transport, endpoint and outcome (answered, refused)",
            self.request_seconds.clone(),
        );
    }

    fn count(&self, variant: Variant) {
        self.predictions
            .get_or_create(&VariantLabel {
                variant: variant.as_str().to_string(),
            })
            .inc();
    }
}

/// Times one request from its arrival, for [`ServeMetrics::request_seconds`].
pub struct RequestTimer {
    started: Instant,
    transport: &'static str,
    endpoint: &'static str,
}

impl RequestTimer {
    /// Starts timing a request that came over `transport` to `endpoint`.
    pub fn start(transport: &'static str, endpoint: &'static str) -> RequestTimer {
        RequestTimer {
            started: Instant::now(),
            transport,
            endpoint,
        }
    }

    /// Records the request as answered (`answered`) or refused, now.
    pub fn finish(self, metrics: &ServeMetrics, answered: bool) {
        let outcome = if answered { "answered" } else { "refused" };
        metrics
            .request_seconds
            .get_or_create(&RequestLabel {
                transport: self.transport.to_string(),
                endpoint: self.endpoint.to_string(),
                outcome: outcome.to_string(),
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// The versions one request is answered and shadowed by.
struct Assignment {
    variant: Variant,
    serving: Arc<Loaded>,
    shadow: Option<Arc<Loaded>>,
}

/// Raw feature rows scored by one version.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRows {
    pub version: u64,
    pub scores: Vec<f32>,
    pub prediction_ids: Vec<String>,
}

/// What a request handler needs. Shared behind an `Arc` by the NATS and HTTP handlers: its
/// stream handles' clones would copy their whole configuration, once per request.
pub struct Server {
    pub model: ModelName,
    pub live: VersionCell,
    pub candidate: VersionCell,
    /// Share of entities (0 to 1) the candidate answers for, when one is loaded.
    pub candidate_share: f64,
    /// Records predictions (and shadow scores) on PREDICTIONS; `None` when recording is off.
    pub recorder: Option<Recorder>,
    pub catalog: Catalog,
    pub features: kv::Store,
    pub subjects: Subjects,
    pub metrics: ServeMetrics,
    /// Where the span of each request of a sampled trace goes.
    pub spans: Spans,
}

impl Server {
    fn serving(&self) -> Result<Arc<Loaded>, ServeError> {
        self.live.current().ok_or_else(|| {
            ServeError::unavailable(format!("model {} has no live version yet", self.model))
        })
    }

    /// Picks the answering variant for `entity` and the one that shadows it.
    fn assign(&self, entity: Option<&str>) -> Result<Assignment, ServeError> {
        let live = self.serving()?;
        let candidate = self.candidate.current();
        Ok(
            match handler::choose_variant(entity, self.candidate_share, candidate.is_some()) {
                Variant::Candidate => match candidate {
                    Some(candidate) => Assignment {
                        variant: Variant::Candidate,
                        serving: candidate,
                        shadow: Some(live),
                    },
                    None => Assignment {
                        variant: Variant::Live,
                        serving: live,
                        shadow: None,
                    },
                },
                Variant::Live => Assignment {
                    variant: Variant::Live,
                    serving: live,
                    shadow: candidate,
                },
            },
        )
    }

    async fn read_state<T: serde::de::DeserializeOwned + Default>(
        &self,
        key: &str,
    ) -> Result<(T, u64), ServeError> {
        let raw = read(&self.features, key)
            .await
            .map_err(|e| ServeError::unavailable(e.to_string()))?;
        let state = match raw.value {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ServeError::unavailable(format!("unreadable FEATURES {key}: {e}")))?,
            None => T::default(),
        };
        Ok((state, raw.revision))
    }

    /// Builds request-time features from FEATURES with the same code featurize uses. The user and
    /// item are read from the bucket; the item's category (an aggregate of all its items, which
    /// moves slowly) comes from the catalogue's watched copy, saving a third, sequential read.
    async fn pair_features(
        &self,
        user: &EntityId,
        item: &EntityId,
    ) -> Result<(Vec<f32>, Provenance), ServeError> {
        let (user_key, item_key) = (user_key(user), item_key(item));
        let ((user_state, user_revision), (item_state, item_revision)) = tokio::try_join!(
            self.read_state::<UserState>(&user_key),
            self.read_state::<ItemState>(&item_key)
        )?;
        let category = self.catalog.categories().of(&item_state);
        Ok((
            feature_vector(&user_state, &item_state, &category, Utc::now()),
            Provenance {
                user_revision,
                item_revision,
            },
        ))
    }

    fn require_bookstore_schema(&self, model: &Loaded) -> Result<(), ServeError> {
        if model.manifest.schema.name == freshet_features::bookstore::SCHEMA_NAME {
            Ok(())
        } else {
            Err(ServeError::bad_request(format!(
                "model {} takes raw feature vectors ({} schema); send \"features\"",
                self.model, model.manifest.schema.name
            )))
        }
    }

    async fn row_for(
        &self,
        request: &PredictRequest,
        model: &Loaded,
    ) -> Result<(Vec<f32>, Option<Provenance>), ServeError> {
        match handler::query_for(request, model.scorer.n_features())? {
            Query::Features(row) => Ok((row, None)),
            Query::Pair { user, item } => {
                self.require_bookstore_schema(model)?;
                let (row, provenance) = self.pair_features(&user, &item).await?;
                Ok((row, Some(provenance)))
            }
        }
    }

    /// Answers one request; `trace` is the trace it came in, recorded with the prediction.
    pub async fn predict_one(
        &self,
        payload: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<PredictResponse, ServeError> {
        let request = handler::parse_single(payload)?;
        let assignment = self.assign(request.user.as_ref().map(EntityId::as_str))?;
        let model = &assignment.serving;
        let (row, provenance) = self.row_for(&request, model).await?;
        let score = model
            .scorer
            .score(&row)
            .map_err(|e| ServeError::bad_request(e.to_string()))?;
        self.metrics.count(assignment.variant);
        let shadow = assignment
            .shadow
            .map(|shadow| (other(assignment.variant), shadow));
        let prediction_id = self.record(
            PredictionRecord {
                prediction_id: String::new(),
                model: self.model.to_string(),
                version: model.manifest.version,
                variant: assignment.variant,
                served: true,
                score,
                features: row,
                user: request.user.as_ref().map(ToString::to_string),
                item: request.item.as_ref().map(ToString::to_string),
                at: Utc::now(),
                trace_id: trace.map(TraceContext::trace_id),
            },
            shadow,
        );
        Ok(PredictResponse {
            model: self.model.to_string(),
            version: model.manifest.version,
            score,
            prediction_id,
            provenance,
            variant: assignment.variant,
        })
    }

    pub async fn predict_batch(
        &self,
        payload: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<BatchResponse, ServeError> {
        let batch = handler::parse_batch(payload)?;
        let live = self.serving()?;
        // Request-time features of all instances are read from FEATURES concurrently.
        let rows: Vec<Vec<f32>> =
            futures::future::try_join_all(batch.instances.iter().map(|r| self.row_for(r, &live)))
                .await?
                .into_iter()
                .map(|(row, _)| row)
                .collect();
        let scores = live
            .scorer
            .score_batch(&rows)
            .map_err(|e| ServeError::bad_request(e.to_string()))?;
        self.metrics.count(Variant::Live);
        let prediction_ids = self.record_rows(&live, rows, &scores, &batch.instances, trace);
        Ok(BatchResponse {
            model: self.model.to_string(),
            version: live.manifest.version,
            scores,
            prediction_ids,
        })
    }

    /// The top-N items of the catalogue for a user, scored on request-time features.
    pub async fn recommend(&self, payload: &[u8]) -> Result<RecommendResponse, ServeError> {
        let request: RecommendRequest = serde_json::from_slice(payload)
            .map_err(|e| ServeError::bad_request(format!("invalid recommend request: {e}")))?;
        let top = handler::recommend_size(request.top)?;
        let assignment = self.assign(Some(request.user.as_str()))?;
        let model = &assignment.serving;
        self.require_bookstore_schema(model)?;
        let (user, user_revision) = self
            .read_state::<UserState>(&user_key(&request.user))
            .await?;
        let items = self.catalog.snapshot();
        let categories = self.catalog.categories();
        let now = Utc::now();
        let rows: Vec<Vec<f32>> = items
            .iter()
            .map(|item| feature_vector(&user, &item.state, &categories.of(&item.state), now))
            .collect();
        let scores = model
            .scorer
            .score_batch(&rows)
            .map_err(|e| ServeError::bad_request(e.to_string()))?;
        self.metrics.count(assignment.variant);
        let items = handler::top_n(&scores, top)
            .into_iter()
            .map(|i| Recommendation {
                item: items[i].id.clone(),
                score: scores[i],
                item_revision: items[i].revision,
            })
            .collect();
        Ok(RecommendResponse {
            model: self.model.to_string(),
            version: model.manifest.version,
            user: request.user.to_string(),
            user_revision,
            items,
        })
    }

    /// Scores raw feature rows (the HTTP inference path): validated like any request, answered
    /// by the live version. Returns the version, the scores and one prediction id per row (none
    /// when recording is off).
    pub fn score_rows(
        &self,
        rows: &[Vec<f64>],
        trace: Option<&TraceContext>,
    ) -> Result<ScoredRows, ServeError> {
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
        let scores = live
            .scorer
            .score_batch(&checked)
            .map_err(|e| ServeError::bad_request(e.to_string()))?;
        self.metrics.count(Variant::Live);
        let prediction_ids = self.record_rows(&live, checked, &scores, &[], trace);
        Ok(ScoredRows {
            version: live.manifest.version,
            scores,
            prediction_ids,
        })
    }

    /// Records rows the live version scored, each shadowed by the candidate when one is loaded;
    /// `requests` (empty for raw rows) names the user and item of each row, `trace` the trace
    /// the request came in.
    fn record_rows(
        &self,
        live: &Loaded,
        rows: Vec<Vec<f32>>,
        scores: &[f32],
        requests: &[PredictRequest],
        trace: Option<&TraceContext>,
    ) -> Vec<String> {
        if self.recorder.is_none() {
            return Vec::new();
        }
        let shadow = self.candidate.current();
        let at = Utc::now();
        rows.into_iter()
            .zip(scores)
            .enumerate()
            .map(|(i, (features, &score))| {
                let request = requests.get(i);
                self.record(
                    PredictionRecord {
                        prediction_id: String::new(),
                        model: self.model.to_string(),
                        version: live.manifest.version,
                        variant: Variant::Live,
                        served: true,
                        score,
                        features,
                        user: request
                            .and_then(|r| r.user.as_ref())
                            .map(ToString::to_string),
                        item: request
                            .and_then(|r| r.item.as_ref())
                            .map(ToString::to_string),
                        at,
                        trace_id: trace.map(TraceContext::trace_id),
                    },
                    shadow.clone().map(|model| (Variant::Candidate, model)),
                )
            })
            .collect()
    }

    /// Records the served prediction, to be shadowed by `shadow` off the response path, and
    /// returns its id. Without a recorder the id is still unique, but nothing can join to it.
    fn record(&self, served: PredictionRecord, shadow: Option<(Variant, Arc<Loaded>)>) -> String {
        match &self.recorder {
            Some(recorder) => recorder.append(served, shadow),
            None => uuid::Uuid::new_v4().to_string(),
        }
    }
}

fn other(variant: Variant) -> Variant {
    match variant {
        Variant::Live => Variant::Candidate,
        Variant::Candidate => Variant::Live,
    }
}

/// One request being answered: the trace it is handled in (a child of its `traceparent`, if it
/// has one) and that trace's span, when it is exported.
struct Answering {
    trace: Option<TraceContext>,
    span: Option<Span>,
    timer: RequestTimer,
}

impl Answering {
    /// Starts answering `request` at `endpoint` (`predict <endpoint>` names its span).
    fn begin(server: &Server, request: &service::Request, endpoint: &'static str) -> Answering {
        let timer = RequestTimer::start("nats", endpoint);
        let trace = request
            .message
            .headers
            .as_ref()
            .and_then(TraceContext::handling_nats);
        let mut span = server.spans.start_span(
            trace.as_ref(),
            &format!("predict {endpoint}"),
            SpanKind::Server,
        );
        if let Some(span) = &mut span {
            span.set("messaging.system", "nats");
            span.set(
                "messaging.destination.name",
                request.message.subject.as_str(),
            );
        }
        Answering { trace, span, timer }
    }

    fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// Replies with `result`, in the request's trace (an untraced request's reply has no
    /// headers added), and ends the span.
    async fn reply<T: serde::Serialize + Answered>(
        mut self,
        server: &Server,
        request: &service::Request,
        result: Result<T, ServeError>,
    ) {
        answered(
            &mut self.span,
            &server.model,
            result.as_ref().map(Answered::version),
        );
        let headers = self
            .trace
            .as_ref()
            .map_or_else(async_nats::HeaderMap::new, TraceContext::nats_headers);
        let reply = reply(result, &server.metrics);
        self.timer.finish(&server.metrics, reply.is_ok());
        let _ = request.respond_with_headers(reply, headers).await;
        server.spans.end(self.span);
    }
}

fn reply<T: serde::Serialize>(
    result: Result<T, ServeError>,
    metrics: &ServeMetrics,
) -> Result<Bytes, service::error::Error> {
    match result {
        Ok(value) => Ok(Bytes::from(
            serde_json::to_vec(&value).expect("responses are plain data and always serialise"),
        )),
        Err(err) => {
            metrics.refused_requests.inc();
            Err(service::error::Error {
                status: err.message,
                code: err.code,
            })
        }
    }
}

/// Starts the NATS micro service and serves until shutdown.
pub async fn serve(
    client: async_nats::Client,
    server: Arc<Server>,
    mut shutdown: freshet::shutdown::Shutdown,
) -> anyhow::Result<()> {
    let service = client
        .service_builder()
        .description(format!("freshet predictor for model {}", server.model))
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("starting the NATS service: {e}"))?;
    let endpoint = |name: &'static str, subject: String| {
        let builder = service.endpoint_builder().name(name);
        async move {
            builder
                .add(subject)
                .await
                .map_err(|e| anyhow::anyhow!("adding the {name} endpoint: {e}"))
        }
    };
    let mut single = endpoint("predict", endpoint_single(&server.subjects, &server.model)).await?;
    let mut batch = endpoint(
        "predict-batch",
        endpoint_batch(&server.subjects, &server.model),
    )
    .await?;
    let mut recommend = endpoint(
        "recommend",
        endpoint_recommend(&server.subjects, &server.model),
    )
    .await?;
    tracing::info!(subject = %endpoint_single(&server.subjects, &server.model), "serving predictions over NATS");
    loop {
        // A request that waits on I/O (a FEATURES read) continues in a task of its own, so it
        // never holds up the others; one that does not (a feature vector) is answered here at
        // once, without the hand-over to another worker thread that would cost it latency.
        tokio::select! {
            Some(request) = single.next() => {
                let server = server.clone();
                let mut answer = Box::pin(async move {
                    let answering = Answering::begin(&server, &request, "single");
                    let result = server.predict_one(&request.message.payload, answering.trace()).await;
                    answering.reply(&server, &request, result).await;
                });
                if futures::FutureExt::now_or_never(&mut answer).is_none() {
                    tokio::spawn(answer);
                }
            }
            Some(request) = batch.next() => {
                let server = server.clone();
                tokio::spawn(async move {
                    let answering = Answering::begin(&server, &request, "batch");
                    let result = server.predict_batch(&request.message.payload, answering.trace()).await;
                    answering.reply(&server, &request, result).await;
                });
            }
            Some(request) = recommend.next() => {
                let server = server.clone();
                tokio::spawn(async move {
                    let answering = Answering::begin(&server, &request, "recommend");
                    let result = server.recommend(&request.message.payload).await;
                    answering.reply(&server, &request, result).await;
                });
            }
            _ = shutdown.wait() => break,
        }
    }
    let _ = service.stop().await;
    Ok(())
}
