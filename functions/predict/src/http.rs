//! Serving over HTTP: the Open Inference Protocol (KServe v2, REST) endpoints and CloudEvents by
//! POST on `/`, on the same [`Server`] as the NATS service. The protocol's JSON is turned into
//! feature rows (and scores back into its JSON) by plain functions below; the axum handlers only
//! route, call the server and map [`ServeError`]s to the protocol's `{"error": "..."}` bodies.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::Utc;
use freshet::events::{CloudEvent, EventType, SPEC_VERSION};
use freshet::examples::FeatureSchema;
use freshet::ids::{EntityId, ModelName};
use freshet::runtime::Readiness;
use freshet::runtime::cloudevents::{self, CLOUDEVENTS_JSON};
use freshet::serving::{BatchRequest, PredictRequest, PredictResponse};
use freshet::telemetry::{Span, SpanKind};
use freshet::trace::TraceContext;
use freshet_model::store::follow::Loaded;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::handler::ServeError;
use crate::service::{RequestTimer, Server};
use crate::spans::answered;

/// The platform this predictor reports in model metadata.
pub const PLATFORM: &str = "freshet-burn";
/// The input carrying ready feature rows.
pub const INPUT_FEATURES: &str = "features";
/// The freshet extension input carrying (user, item) pairs whose features the predictor builds.
pub const INPUT_USER_ITEM: &str = "user_item";
/// The one output: the probability of the positive class.
pub const OUTPUT_SCORE: &str = "score";
/// The header of the protocol's binary tensor extension (tritonclient's default): the length of
/// the JSON part of a body whose tensors follow it as raw bytes.
pub const BINARY_HEADER: &str = "inference-header-content-length";
/// Why a binary tensor request is refused, and what to send instead.
pub const BINARY_REFUSAL: &str = "binary tensor data (the Inference-Header-Content-Length \
     extension) is not supported: send each input's values as JSON in \"data\" (tritonclient: \
     InferInput.set_data_from_numpy(array, binary_data=False) and \
     InferRequestedOutput(\"score\", binary_data=False))";
/// The CloudEvent type a predictor answers.
pub const EVENT_PREDICT_REQUEST: &str = "predict_request";
/// The CloudEvent type of its answer.
pub const EVENT_PREDICTION: &str = "prediction";

#[derive(Clone)]
struct Http {
    server: Arc<Server>,
}

/// The protocol's health probes, open to anyone as `/healthz` and `/readyz` are.
pub fn probe_routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/v2/health/live", get(health_live))
        .route("/v2/health/ready", get(health_ready))
        .with_state(readiness)
}

/// The predictor's serving routes: the Open Inference Protocol and CloudEvents, to be served
/// behind the guard (they answer only callers with a credential when credentials are set). Their
/// bodies' size is the guard's to limit (`--http-max-body-bytes`).
pub fn routes(server: Arc<Server>) -> Router {
    Router::new()
        .route("/", post(cloud_event))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(version_infer),
        )
        .with_state(Http { server })
}

// ---------------------------------------------------------------------------------------------
// Open Inference Protocol: the JSON shapes and their conversions (no I/O).

/// An inference request (`POST .../infer`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    pub inputs: Vec<InferInput>,
    /// Accepted for compatibility; nothing in it changes how a request is scored.
    #[serde(default)]
    pub parameters: Option<Value>,
    /// Requested outputs; there is only `score`, so it is accepted and ignored.
    #[serde(default)]
    pub outputs: Option<Value>,
}

/// One input tensor of a request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    /// Absent only in a binary tensor request (`parameters.binary_data_size`), which is refused
    /// with [`BINARY_REFUSAL`].
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// What an inference request asks to score.
#[derive(Debug, Clone, PartialEq)]
pub enum InferQuery {
    /// Ready feature rows, checked by the server against the model.
    Rows(Vec<Vec<f64>>),
    /// (user, item) pairs whose features the predictor builds, as a batch request.
    Pairs(BatchRequest),
}

/// An inference response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
    /// `prediction_ids`: one per row, to send back with an `outcome` event, when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// One output tensor of a response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    pub data: Vec<f32>,
}

/// Parses an inference request body.
pub fn parse_infer(body: &[u8]) -> Result<InferRequest, ServeError> {
    serde_json::from_slice(body)
        .map_err(|e| ServeError::bad_request(format!("invalid inference request: {e}")))
}

/// Turns the request's one input into what to score. Rows are not checked against the model
/// here (the server does, on the version it scores with), only against the input's own shape.
pub fn infer_query(request: &InferRequest) -> Result<InferQuery, ServeError> {
    let input = match request.inputs.as_slice() {
        [input] => input,
        inputs => {
            return Err(ServeError::bad_request(format!(
                "give exactly one input (\"{INPUT_FEATURES}\" or \"{INPUT_USER_ITEM}\"), not {}",
                inputs.len()
            )));
        }
    };
    let name = input.name.as_str();
    let binary = |parameters: &Option<Value>| {
        parameters
            .as_ref()
            .is_some_and(|p| p.get("binary_data_size").is_some())
    };
    if binary(&input.parameters) {
        return Err(ServeError::bad_request(BINARY_REFUSAL.to_string()));
    }
    let Some(data) = &input.data else {
        return Err(ServeError::bad_request(format!(
            "input {name} has no \"data\": give its values as a JSON array"
        )));
    };
    let shape = matrix_shape(name, &input.shape)?;
    let values = flatten(name, data, &shape)?;
    match (name, input.datatype.as_str()) {
        (INPUT_FEATURES, "FP32" | "FP64") => {
            let numbers = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64().ok_or_else(|| {
                        ServeError::bad_request(format!("{name}.data[{i}] is {v}, not a number"))
                    })
                })
                .collect::<Result<Vec<f64>, _>>()?;
            Ok(InferQuery::Rows(
                numbers
                    .chunks(shape[1].max(1))
                    .map(<[f64]>::to_vec)
                    .collect(),
            ))
        }
        (INPUT_USER_ITEM, "BYTES") => {
            if shape[1] != 2 {
                return Err(ServeError::bad_request(format!(
                    "{name} has shape [rows, 2] (user, item), not [{}, {}]",
                    shape[0], shape[1]
                )));
            }
            let ids = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let text = v.as_str().ok_or_else(|| {
                        ServeError::bad_request(format!("{name}.data[{i}] is {v}, not a string"))
                    })?;
                    EntityId::parse(text)
                        .map_err(|e| ServeError::bad_request(format!("{name}.data[{i}] {e}")))
                })
                .collect::<Result<Vec<EntityId>, _>>()?;
            let instances = ids
                .chunks(2)
                .map(|pair| PredictRequest {
                    user: pair.first().cloned(),
                    item: pair.get(1).cloned(),
                    ..Default::default()
                })
                .collect();
            Ok(InferQuery::Pairs(BatchRequest { instances }))
        }
        (INPUT_FEATURES, other) | (INPUT_USER_ITEM, other) => {
            let wanted = if name == INPUT_FEATURES {
                "FP32 or FP64"
            } else {
                "BYTES"
            };
            Err(ServeError::bad_request(format!(
                "input {name} has datatype {wanted}, not {other:?}"
            )))
        }
        (other, _) => Err(ServeError::bad_request(format!(
            "unknown input {other:?}: send \"{INPUT_FEATURES}\" (FP32 or FP64, shape [rows, \
             n_features]) or \"{INPUT_USER_ITEM}\" (BYTES, shape [rows, 2])"
        ))),
    }
}

/// Checks an input's shape is a matrix `[rows, columns]` of non-negative sizes.
fn matrix_shape(name: &str, shape: &[i64]) -> Result<[usize; 2], ServeError> {
    let bad = || {
        ServeError::bad_request(format!(
            "{name} has shape {shape:?}; expected [rows, columns] of non-negative sizes"
        ))
    };
    match shape {
        [rows, columns] => Ok([
            usize::try_from(*rows).map_err(|_| bad())?,
            usize::try_from(*columns).map_err(|_| bad())?,
        ]),
        _ => Err(bad()),
    }
}

/// The values of `data` in row-major order, checked against `shape`. `data` may be flat, or
/// nested one array per dimension (e.g. an array of rows); anything in between is refused, so a
/// ragged row cannot hide behind a matching total.
fn flatten<'a>(name: &str, data: &'a Value, shape: &[usize]) -> Result<Vec<&'a Value>, ServeError> {
    let mut out = Vec::new();
    flatten_into(name, data, shape, &mut out)?;
    Ok(out)
}

fn flatten_into<'a>(
    path: &str,
    data: &'a Value,
    shape: &[usize],
    out: &mut Vec<&'a Value>,
) -> Result<(), ServeError> {
    let Value::Array(items) = data else {
        return Err(ServeError::bad_request(format!(
            "{path}: expected an array of values, got {}",
            kind(data)
        )));
    };
    if !items.iter().any(Value::is_array) {
        let expected = shape
            .iter()
            .try_fold(1usize, |n, d| n.checked_mul(*d))
            .ok_or_else(|| {
                ServeError::bad_request(format!("{path}: shape {shape:?} is too large"))
            })?;
        if items.len() != expected {
            return Err(ServeError::bad_request(format!(
                "{path}: shape {shape:?} holds {expected} values, data has {}",
                items.len()
            )));
        }
        out.extend(items);
        return Ok(());
    }
    let Some((&outer, inner)) = shape.split_first().filter(|(_, inner)| !inner.is_empty()) else {
        return Err(ServeError::bad_request(format!(
            "{path}: data is nested deeper than shape {shape:?}"
        )));
    };
    if items.len() != outer {
        return Err(ServeError::bad_request(format!(
            "{path}: expected {outer} nested arrays, data has {}",
            items.len()
        )));
    }
    for (i, item) in items.iter().enumerate() {
        flatten_into(&format!("{path}[{i}]"), item, inner, out)?;
    }
    Ok(())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The response for `scores`, one per row, answered by `version`.
pub fn infer_response(
    model: &ModelName,
    version: u64,
    id: Option<String>,
    scores: Vec<f32>,
    prediction_ids: Vec<String>,
) -> InferResponse {
    InferResponse {
        parameters: (!prediction_ids.is_empty())
            .then(|| json!({ "prediction_ids": prediction_ids })),
        model_name: model.to_string(),
        model_version: version.to_string(),
        id,
        outputs: vec![OutputTensor {
            name: OUTPUT_SCORE.to_string(),
            shape: vec![scores.len(), 1],
            datatype: "FP32".to_string(),
            data: scores,
        }],
    }
}

/// Model metadata for the serving version. A request gives one input: ready rows (`features`),
/// or, for a model of the bookstore schema, whose features the predictor builds from FEATURES,
/// (user, item) pairs (`user_item`). A model of another schema takes rows only.
pub fn model_metadata_json(model: &ModelName, version: u64, schema: &FeatureSchema) -> Value {
    let mut inputs = vec![
        json!({"name": INPUT_FEATURES, "datatype": "FP32", "shape": [-1, schema.n_features()]}),
    ];
    if schema.name == freshet_features::bookstore::SCHEMA_NAME {
        inputs.push(json!({"name": INPUT_USER_ITEM, "datatype": "BYTES", "shape": [-1, 2]}));
    }
    let one_of: Vec<&Value> = inputs.iter().map(|input| &input["name"]).collect();
    json!({
        "name": model.as_str(),
        "versions": [version.to_string()],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": [{"name": OUTPUT_SCORE, "datatype": "FP32", "shape": [-1, 1]}],
        "parameters": {
            "inputs_one_of": one_of,
            "feature_names": schema.features,
            "schema": schema.name,
            "schema_version": schema.version,
        },
    })
}

/// Parses a version from a path segment.
fn parse_version(text: &str) -> Result<u64, ServeError> {
    text.parse().map_err(|_| {
        ServeError::bad_request(format!(
            "version {text:?} is not a number (versions are 1, 2, ...)"
        ))
    })
}

fn not_found(message: String) -> ServeError {
    ServeError { code: 404, message }
}

fn internal(message: String) -> ServeError {
    ServeError { code: 500, message }
}

// ---------------------------------------------------------------------------------------------
// CloudEvents: the envelope's checks and the answer (no I/O); both modes are read by the shared
// HTTP binding, freshet::runtime::cloudevents.

/// What a CloudEvent POSTed to `/` carried, whichever the mode.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    pub id: String,
    pub event_type: String,
    /// The event's data as JSON bytes.
    pub data: Vec<u8>,
}

/// Reads the CloudEvent an HTTP request carries (structured or binary mode, by the shared
/// binding) and checks its envelope: specversion 1.0, an id and a source, JSON data.
pub fn incoming_event(headers: &HeaderMap, body: &[u8]) -> Result<IncomingEvent, ServeError> {
    // The body's size was limited by the guard before it got here.
    let envelope = cloudevents::envelope_from_http(headers, body, usize::MAX)
        .map_err(|rejection| ServeError::bad_request(rejection.detail))?;
    let envelope: CloudEvent = serde_json::from_slice(&envelope)
        .map_err(|e| ServeError::bad_request(format!("malformed CloudEvent: {e}")))?;
    check_attributes(&envelope.specversion, &envelope.id, &envelope.source)?;
    if let Some(content_type) = &envelope.datacontenttype
        && !cloudevents::is_json(content_type)
    {
        return Err(ServeError::bad_request(format!(
            "data of content type {:?} is not JSON; only JSON data is accepted",
            truncate(content_type)
        )));
    }
    if envelope.data.is_null() {
        return Err(ServeError::bad_request(
            "the CloudEvent has no data (only JSON \"data\" is accepted, not \"data_base64\")",
        ));
    }
    let data = serde_json::to_vec(&envelope.data)
        .map_err(|e| internal(format!("re-encoding the event's data: {e}")))?;
    Ok(IncomingEvent {
        id: envelope.id,
        event_type: envelope.event_type,
        data,
    })
}

fn check_attributes(specversion: &str, id: &str, source: &str) -> Result<(), ServeError> {
    if specversion != SPEC_VERSION {
        return Err(ServeError::bad_request(format!(
            "CloudEvents specversion {:?} is not supported, expected \"{SPEC_VERSION}\"",
            truncate(specversion)
        )));
    }
    if id.trim().is_empty() || source.trim().is_empty() {
        return Err(ServeError::bad_request(
            "a CloudEvent needs a non-empty id and source",
        ));
    }
    Ok(())
}

/// Refuses event types other than `predict_request`, saying where they belong.
pub fn check_event_type(event_type: &str) -> Result<(), ServeError> {
    if event_type == EVENT_PREDICT_REQUEST {
        return Ok(());
    }
    let message = match EventType::parse(event_type) {
        Some(known) => format!(
            "{} events are ingested by featurize (publish them to JetStream); a predictor \
             answers only {EVENT_PREDICT_REQUEST} events",
            known.as_str()
        ),
        None => format!(
            "unknown event type {:?}; a predictor answers only {EVENT_PREDICT_REQUEST} events \
             (data: a prediction request)",
            truncate(event_type)
        ),
    };
    Err(ServeError::bad_request(message))
}

/// The structured CloudEvent answering a prediction request.
pub fn prediction_event(
    model: &ModelName,
    response: &PredictResponse,
) -> Result<CloudEvent, ServeError> {
    let data = serde_json::to_value(response)
        .map_err(|e| internal(format!("encoding the prediction: {e}")))?;
    Ok(CloudEvent {
        specversion: SPEC_VERSION.to_string(),
        id: response.prediction_id.clone(),
        source: format!("freshet-predict/{model}"),
        event_type: EVENT_PREDICTION.to_string(),
        subject: None,
        time: Some(Utc::now()),
        datacontenttype: Some("application/json".to_string()),
        data,
        extensions: BTreeMap::new(),
    })
}

/// Keeps hostile strings out of error messages at a readable length.
fn truncate(value: &str) -> String {
    value.chars().take(64).collect()
}

// ---------------------------------------------------------------------------------------------
// Handlers.

/// The protocol's error form, `{"error": "..."}`, with the error's status.
fn error_response(err: ServeError) -> Response {
    let status = u16::try_from(err.code)
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"error": err.message}))).into_response()
}

fn respond<T: IntoResponse>(result: Result<T, ServeError>) -> Response {
    match result {
        Ok(value) => value.into_response(),
        Err(err) => error_response(err),
    }
}

/// A body that could not be read, as a protocol error.
fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ServeError> {
    body.map_err(|rejection| ServeError {
        code: usize::from(rejection.status().as_u16()),
        message: format!("cannot read the request body ({})", rejection.body_text()),
    })
}

impl Http {
    /// Refuses names other than the served model's.
    fn check_model(&self, name: &str) -> Result<(), ServeError> {
        if name == self.server.model.as_str() {
            Ok(())
        } else {
            Err(not_found(format!(
                "unknown model {:?}; this predictor serves {}",
                truncate(name),
                self.server.model
            )))
        }
    }

    /// The serving version, which must be `wanted` when one is named.
    fn serving(&self, wanted: Option<u64>) -> Result<Arc<Loaded>, ServeError> {
        let live = self.server.live.current().ok_or_else(|| {
            ServeError::unavailable(format!(
                "model {} has no live version yet",
                self.server.model
            ))
        })?;
        check_version(&self.server.model, wanted, live.manifest.version)?;
        Ok(live)
    }
}

/// A request for a given version is answered only by that version.
fn check_version(model: &ModelName, wanted: Option<u64>, serving: u64) -> Result<(), ServeError> {
    match wanted {
        Some(wanted) if wanted != serving => Err(not_found(format!(
            "model {model} version {wanted} is not served here; the live version is {serving}"
        ))),
        _ => Ok(()),
    }
}

async fn server_metadata() -> Json<Value> {
    Json(
        json!({"name": freshet::serving::SERVICE_NAME, "version": env!("CARGO_PKG_VERSION"), "extensions": []}),
    )
}

async fn health_live() -> Json<Value> {
    Json(json!({"live": true}))
}

async fn health_ready(State(readiness): State<Readiness>) -> Response {
    if readiness.is_ready() {
        (StatusCode::OK, Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false})),
        )
            .into_response()
    }
}

fn metadata(http: &Http, name: &str, version: Option<&str>) -> Result<Json<Value>, ServeError> {
    http.check_model(name)?;
    let wanted = version.map(parse_version).transpose()?;
    let live = http.serving(wanted)?;
    Ok(Json(model_metadata_json(
        &http.server.model,
        live.manifest.version,
        &live.manifest.schema,
    )))
}

async fn model_metadata(State(http): State<Http>, Path(name): Path<String>) -> Response {
    respond(metadata(&http, &name, None))
}

async fn version_metadata(
    State(http): State<Http>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    respond(metadata(&http, &name, Some(&version)))
}

fn readiness_of(http: &Http, name: &str, version: Option<&str>) -> Response {
    let checked = http
        .check_model(name)
        .and_then(|()| version.map(parse_version).transpose());
    let wanted = match checked {
        Ok(wanted) => wanted,
        Err(err) => return error_response(err),
    };
    match http.serving(wanted) {
        Ok(live) => {
            Json(json!({"name": name, "ready": true, "version": live.manifest.version.to_string()}))
                .into_response()
        }
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"name": name, "ready": false, "error": err.message})),
        )
            .into_response(),
    }
}

async fn model_ready(State(http): State<Http>, Path(name): Path<String>) -> Response {
    readiness_of(&http, &name, None)
}

async fn version_ready(
    State(http): State<Http>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    readiness_of(&http, &name, Some(&version))
}

async fn run_infer(
    http: &Http,
    name: &str,
    version: Option<&str>,
    request: (&HeaderMap, Result<Bytes, BytesRejection>),
    trace: Option<&TraceContext>,
) -> Result<Json<InferResponse>, ServeError> {
    let (headers, body) = request;
    if headers.contains_key(BINARY_HEADER) {
        return Err(ServeError::bad_request(BINARY_REFUSAL.to_string()));
    }
    let body = body_of(body)?;
    http.check_model(name)?;
    let wanted = version.map(parse_version).transpose()?;
    // Fail fast on a version that is not serving, before parsing or scoring anything.
    http.serving(wanted)?;
    let request = parse_infer(&body)?;
    let (served, scores, prediction_ids) = match infer_query(&request)? {
        InferQuery::Rows(rows) => {
            let scored = http.server.score_rows(&rows, trace)?;
            (scored.version, scored.scores, scored.prediction_ids)
        }
        InferQuery::Pairs(batch) => {
            let payload = serde_json::to_vec(&batch)
                .map_err(|e| internal(format!("encoding the batch request: {e}")))?;
            let response = http.server.predict_batch(&payload, trace).await?;
            (response.version, response.scores, response.prediction_ids)
        }
    };
    // A swap may have landed between the check above and the scoring.
    check_version(&http.server.model, wanted, served)?;
    Ok(Json(infer_response(
        &http.server.model,
        served,
        request.id,
        scores,
        prediction_ids,
    )))
}

async fn infer(
    State(http): State<Http>,
    Path(name): Path<String>,
    Traced(trace): Traced,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let timer = RequestTimer::start("http", "infer");
    let span = http.start_span(trace.as_ref(), "predict infer", "/v2/models/{name}/infer");
    let result = run_infer(&http, &name, None, (&headers, body), trace.as_ref()).await;
    http.answer(timer, span, trace.as_ref(), result.map(served_infer))
}

async fn version_infer(
    State(http): State<Http>,
    Path((name, version)): Path<(String, String)>,
    Traced(trace): Traced,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let timer = RequestTimer::start("http", "infer");
    let route = "/v2/models/{name}/versions/{version}/infer";
    let span = http.start_span(trace.as_ref(), "predict infer", route);
    let request = (&headers, body);
    let result = run_infer(&http, &name, Some(&version), request, trace.as_ref()).await;
    http.answer(timer, span, trace.as_ref(), result.map(served_infer))
}

/// An inference response with the version that gave it.
fn served_infer(response: Json<InferResponse>) -> (u64, Response) {
    let version = response.model_version.parse().unwrap_or_default();
    (version, response.into_response())
}

/// Answers a CloudEvent; the version that answered, and the answer.
async fn run_cloud_event(
    http: &Http,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    trace: Option<&TraceContext>,
) -> Result<(u64, Response), ServeError> {
    let body = body_of(body)?;
    let event = incoming_event(headers, &body)?;
    check_event_type(&event.event_type)?;
    let prediction = http.server.predict_one(&event.data, trace).await?;
    let answer = prediction_event(&http.server.model, &prediction)?;
    Ok((
        prediction.version,
        ([(header::CONTENT_TYPE, CLOUDEVENTS_JSON)], Json(answer)).into_response(),
    ))
}

async fn cloud_event(
    State(http): State<Http>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let timer = RequestTimer::start("http", "cloudevent");
    let trace = TraceContext::handling_http(&headers);
    let span = http.start_span(trace.as_ref(), "predict cloudevent", "/");
    let result = run_cloud_event(&http, &headers, body, trace.as_ref()).await;
    http.answer(timer, span, trace.as_ref(), result)
}

impl Http {
    /// The span `name` of a request to `route` handled in `trace`, when it is exported.
    fn start_span(&self, trace: Option<&TraceContext>, name: &str, route: &str) -> Option<Span> {
        let mut span = self.server.spans.start_span(trace, name, SpanKind::Server);
        if let Some(span) = &mut span {
            span.set("http.request.method", "POST");
            span.set("http.route", route);
        }
        span
    }

    /// The response to a request answered with `result` (the version that answered and its
    /// answer), in the request's trace; ends its span and records its latency.
    fn answer(
        &self,
        timer: RequestTimer,
        mut span: Option<Span>,
        trace: Option<&TraceContext>,
        result: Result<(u64, Response), ServeError>,
    ) -> Response {
        answered(
            &mut span,
            &self.server.model,
            result.as_ref().map(|(version, _)| *version),
        );
        timer.finish(&self.server.metrics, result.is_ok());
        let response = with_trace(respond(result.map(|(_, response)| response)), trace);
        if let Some(span) = &mut span {
            span.set(
                "http.response.status_code",
                i64::from(response.status().as_u16()),
            );
        }
        self.server.spans.end(span);
        response
    }
}

/// The trace an HTTP request is handled in: a child of its `traceparent` header (a fresh trace
/// if that is invalid), or `None`. Read in place, without copying the request's headers.
struct Traced(Option<TraceContext>);

impl<S: Send + Sync> FromRequestParts<S> for Traced {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Traced, Self::Rejection> {
        Ok(Traced(TraceContext::handling_http(&parts.headers)))
    }
}

/// Adds the trace a request was handled in to its response (`traceparent`, `tracestate`), so
/// the caller can join its trace with the prediction recorded under the same trace id.
fn with_trace(mut response: Response, trace: Option<&TraceContext>) -> Response {
    if let Some(trace) = trace {
        trace.insert_http(response.headers_mut());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(body: Value) -> Result<InferQuery, ServeError> {
        infer_query(&parse_infer(body.to_string().as_bytes())?)
    }

    fn features(shape: Value, data: Value) -> Value {
        json!({"inputs": [{"name": "features", "shape": shape, "datatype": "FP32", "data": data}]})
    }

    #[test]
    fn reads_flat_and_nested_rows_alike() {
        let expected = InferQuery::Rows(vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
        let flat = query(features(json!([2, 3]), json!([1, 2, 3, 4, 5, 6]))).unwrap();
        let nested = query(features(json!([2, 3]), json!([[1, 2, 3], [4, 5, 6]]))).unwrap();
        assert_eq!(flat, expected);
        assert_eq!(nested, expected);
        let fp64 = json!({"id": "r1", "inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP64", "data": [0.5, -1e3]}],
            "parameters": {"x": 1}, "outputs": [{"name": "score"}]});
        assert_eq!(
            query(fp64).unwrap(),
            InferQuery::Rows(vec![vec![0.5, -1000.0]])
        );
    }

    #[test]
    fn reads_user_item_pairs_as_a_batch() {
        let body = json!({"inputs": [{"name": "user_item", "shape": [2, 2], "datatype": "BYTES",
            "data": ["u1", "b7", "u2", "b3"]}]});
        let InferQuery::Pairs(batch) = query(body).unwrap() else {
            panic!("pairs expected")
        };
        assert_eq!(batch.instances.len(), 2);
        assert_eq!(batch.instances[1].user.as_ref().unwrap().as_str(), "u2");
        assert_eq!(batch.instances[1].item.as_ref().unwrap().as_str(), "b3");
    }

    #[test]
    fn refuses_what_does_not_match_its_shape_or_type() {
        let cases = [
            features(json!([2, 3]), json!([1, 2, 3, 4, 5])),
            features(json!([2, 3]), json!([[1, 2, 3], [4, 5]])),
            features(json!([2, 2]), json!([[1, 2, 3], [4]])),
            features(json!([2, 3]), json!([[1, 2, 3], 4, 5, 6])),
            features(json!([1, 2]), json!([[[1, 2]]])),
            features(json!([6]), json!([1, 2, 3, 4, 5, 6])),
            features(json!([-1, 2]), json!([1, 2])),
            features(json!([1, 2]), json!([1, "2"])),
            features(json!([1, 2]), json!({"a": 1})),
            features(json!([4_611_686_018_427_387_904_i64, 4]), json!([1])),
            json!({"inputs": [{"name": "features", "shape": [1, 1], "datatype": "INT8", "data": [1]}]}),
            json!({"inputs": [{"name": "pixels", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}),
            json!({"inputs": [{"name": "user_item", "shape": [1, 3], "datatype": "BYTES", "data": ["u", "b", "c"]}]}),
            json!({"inputs": [{"name": "user_item", "shape": [1, 2], "datatype": "BYTES", "data": ["u.1", "b"]}]}),
            json!({"inputs": [{"name": "user_item", "shape": [1, 2], "datatype": "BYTES", "data": ["u", 1]}]}),
            json!({"inputs": []}),
            json!({"input": []}),
            json!({"inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP32"}]}),
        ];
        for body in cases {
            let err = query(body.clone()).unwrap_err();
            assert_eq!(err.code, 400, "{body}: {err}");
            assert!(!err.message.is_empty());
        }
        assert_eq!(parse_infer(b"{not json").unwrap_err().code, 400);
    }

    #[test]
    fn binary_tensors_are_refused_saying_what_to_send_instead() {
        let binary = json!({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32",
            "parameters": {"binary_data_size": 8}}]});
        let err = query(binary).unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (400, BINARY_REFUSAL));
        let no_data =
            json!({"inputs": [{"name": "features", "shape": [1, 1], "datatype": "FP32"}]});
        let err = query(no_data).unwrap_err();
        assert!(err.message.contains("has no \"data\""), "{}", err.message);
    }

    #[test]
    fn answers_in_the_protocol_shape() {
        let model = ModelName::parse("bookstore").unwrap();
        let response = infer_response(&model, 7, Some("r1".into()), vec![0.25, 0.75], vec![]);
        assert_eq!(
            serde_json::to_value(&response).unwrap(),
            json!({"model_name": "bookstore", "model_version": "7", "id": "r1",
                "outputs": [{"name": "score", "shape": [2, 1], "datatype": "FP32", "data": [0.25, 0.75]}]})
        );
        let anonymous = infer_response(&model, 7, None, vec![0.5], vec!["b-0".into()]);
        let anonymous = serde_json::to_value(&anonymous).unwrap();
        assert!(anonymous.get("id").is_none());
        assert_eq!(
            anonymous["parameters"],
            json!({"prediction_ids": ["b-0"]}),
            "recorded rows carry their ids for the outcome join"
        );
        let meta = model_metadata_json(&model, 3, &freshet_features::bookstore::schema());
        assert_eq!(meta["versions"], json!(["3"]));
        assert_eq!(
            meta["inputs"][0]["shape"],
            json!([-1, freshet_features::bookstore::FEATURE_NAMES.len()])
        );
        assert_eq!(
            meta["parameters"]["feature_names"],
            json!(freshet_features::bookstore::FEATURE_NAMES)
        );
        assert_eq!(
            meta["inputs"][1],
            json!({"name": "user_item", "datatype": "BYTES", "shape": [-1, 2]})
        );
        assert_eq!(
            meta["parameters"]["inputs_one_of"],
            json!(["features", "user_item"])
        );
        // A model of raw vectors takes rows only: the predictor builds no features for it.
        let raw = FeatureSchema {
            name: "raw".into(),
            version: 0,
            features: vec!["f0".into(), "f1".into()],
            monitoring: Vec::new(),
        };
        let meta = model_metadata_json(&model, 1, &raw);
        assert_eq!(meta["inputs"].as_array().unwrap().len(), 1, "{meta}");
        assert_eq!(meta["parameters"]["inputs_one_of"], json!(["features"]));
    }

    #[test]
    fn checks_named_versions() {
        let model = ModelName::parse("m").unwrap();
        assert!(check_version(&model, None, 3).is_ok());
        assert!(check_version(&model, Some(3), 3).is_ok());
        assert_eq!(check_version(&model, Some(2), 3).unwrap_err().code, 404);
        assert_eq!(parse_version("x").unwrap_err().code, 400);
        assert_eq!(parse_version("-1").unwrap_err().code, 400);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn reads_structured_and_binary_cloud_events() {
        let envelope = json!({"specversion": "1.0", "id": "e1", "source": "s", "type": "predict_request",
            "data": {"features": [1, 2]}});
        let structured = incoming_event(
            &headers(&[(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )]),
            envelope.to_string().as_bytes(),
        )
        .unwrap();
        let binary = incoming_event(
            &headers(&[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-id", "e1"),
                ("ce-source", "s"),
                ("ce-type", "predict_request"),
            ]),
            br#"{"features":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(structured, binary);
        assert_eq!(structured.event_type, EVENT_PREDICT_REQUEST);
    }

    #[test]
    fn refuses_malformed_cloud_events() {
        let structured = [("content-type", CLOUDEVENTS_JSON)];
        let cases: Vec<(HeaderMap, Vec<u8>)> = vec![
            (headers(&structured), b"{not json".to_vec()),
            (headers(&structured), br#"{"specversion":"1.0","source":"s","type":"predict_request","data":{}}"#.to_vec()),
            (headers(&structured), br#"{"specversion":"0.3","id":"1","source":"s","type":"predict_request","data":{}}"#.to_vec()),
            (headers(&structured), br#"{"specversion":"1.0","id":" ","source":"s","type":"predict_request","data":{}}"#.to_vec()),
            (headers(&structured), br#"{"specversion":"1.0","id":"1","source":"s","type":"predict_request"}"#.to_vec()),
            (headers(&structured), br#"{"specversion":"1.0","id":"1","source":"s","type":"predict_request","datacontenttype":"text/plain","data":"x"}"#.to_vec()),
            (headers(&[("content-type", "application/json")]), br#"{"features":[1]}"#.to_vec()),
            (headers(&[("content-type", "application/cloudevents-batch+json")]), b"[]".to_vec()),
            (headers(&[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "s")]), b"{}".to_vec()),
            (headers(&[("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "s"), ("ce-type", "predict_request"), ("content-type", "text/csv")]), b"1,2".to_vec()),
        ];
        for (headers, body) in cases {
            let err = incoming_event(&headers, &body).unwrap_err();
            assert_eq!(err.code, 400, "{}: {err}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn answers_only_prediction_requests() {
        assert!(check_event_type("predict_request").is_ok());
        let known = check_event_type("user_action").unwrap_err();
        assert!(known.message.contains("featurize"), "{known}");
        assert_eq!(check_event_type("click").unwrap_err().code, 400);
        let model = ModelName::parse("bookstore").unwrap();
        let response: PredictResponse = serde_json::from_value(
            json!({"model": "bookstore", "version": 4, "score": 0.5, "prediction_id": "p-1"}),
        )
        .unwrap();
        let event = prediction_event(&model, &response).unwrap();
        assert_eq!(event.event_type, "prediction");
        assert_eq!(event.id, "p-1");
        assert_eq!(event.source, "freshet-predict/bookstore");
        assert_eq!(event.data["version"], 4);
    }

    #[test]
    fn maps_errors_to_statuses() {
        assert_eq!(
            error_response(ServeError::bad_request("x")).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            error_response(not_found("x".into())).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            error_response(ServeError {
                code: 99_999,
                message: "x".into()
            })
            .status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
