//! Push delivery, for Knative Eventing: a CloudEvent POSTed to a function's `/events` (structured
//! or binary mode, read by the one HTTP binding in [`cloudevents`](crate::runtime::cloudevents))
//! enters the same stream its JetStream messages come from, so the function's one handler
//! processes it under the same rules.
//!
//! The event is checked with the decoder every message goes through ([`events::decode`]); a
//! refused one is dead-lettered with its reason (and answered 400, which a Trigger does not
//! retry). An accepted one is appended to the function's input stream with its id as
//! `Nats-Msg-Id`, and answered 202 once JetStream has stored it: a Trigger's retry of the same
//! event is stored once. It is handled from there, in its entity's partition and order, with
//! the exactly-once marks a stream position gives, which an event handled straight from the
//! request could not have. A server that cannot store it is answered 503, which a Trigger
//! retries. Nothing is acknowledged to the sender before it is durable.
//!
//! An accepted event keeps the request's `traceparent`: the function that handles it from the
//! stream is the next span. A refused one is handled here, in a child span of the request's
//! (the one its dead letter carries), exported as `POST /events` when its trace is sampled.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use chrono::Utc;
use serde_json::json;

use crate::error::{RejectReason, Rejection};
use crate::events::{self, Event, EventData};
use crate::examples::ExampleRecord;
use crate::runtime::cloudevents::envelope_from_http;
use crate::runtime::dead_letter::{self, Origin};
use crate::subjects::{Subjects, header_value};
use crate::telemetry::{SpanKind, Spans};
use crate::trace::TraceContext;

/// Which stream a function reads, and so where a pushed event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// EVENTS (featurize): every event type.
    Events,
    /// EXAMPLES (train, drift): an `example` event becomes its example record, as featurize
    /// would publish it; any other event is refused (it is featurize's to take), so these
    /// functions' users need no right to publish events.
    Examples,
}

/// What `/events` needs.
#[derive(Clone)]
pub struct Ingress {
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    /// The function's name, on dead letters.
    pub function: &'static str,
    pub input: Input,
    pub max_event_bytes: usize,
    /// Where the span of a refusal goes.
    pub spans: Spans,
}

/// The `/events` route.
pub fn routes(ingress: Ingress) -> Router {
    Router::new()
        .route("/events", post(receive))
        .with_state(ingress)
}

async fn receive(State(ingress): State<Ingress>, headers: HeaderMap, body: Bytes) -> Response {
    // The request's trace travels with the stored event (`traceparent` on the message), to be
    // continued by the function that handles it, as if the producer had published it.
    let trace = TraceContext::received_http(&headers);
    let arrived = ingress.spans.is_on().then(std::time::SystemTime::now);
    let decoded =
        envelope_from_http(&headers, &body, ingress.max_event_bytes).and_then(|envelope| {
            Ok((
                events::decode(&envelope, ingress.max_event_bytes)?,
                envelope,
            ))
        });
    let checked = decoded.and_then(|(event, envelope)| {
        if ingress.input == Input::Examples && !matches!(event.data, EventData::Example(_)) {
            return Err(Rejection::new(
                RejectReason::InvalidEnvelope,
                "type",
                format!(
                    "{}'s /events takes example events; send {} events to featurize's",
                    ingress.function,
                    event.data.event_type().as_str()
                ),
            ));
        }
        Ok((event, envelope))
    });
    let (event, envelope) = match checked {
        Ok(checked) => checked,
        Err(rejection) => {
            let handling = trace.as_ref().map(TraceContext::child);
            let mut span = arrived.and_then(|arrived| {
                ingress.spans.start_span_at(
                    handling.as_ref(),
                    "POST /events",
                    SpanKind::Server,
                    arrived,
                )
            });
            if let Some(span) = &mut span {
                span.set("http.request.method", "POST");
                span.set("http.route", "/events");
                span.fail(rejection.to_string());
            }
            let response = refuse(&ingress, &headers, body, rejection, handling.as_ref()).await;
            if let Some(span) = &mut span {
                span.set(
                    "http.response.status_code",
                    i64::from(response.status().as_u16()),
                );
            }
            ingress.spans.end(span);
            return response;
        }
    };
    let (subject, id, payload) = destination(&ingress, &event, envelope);
    let mut message = async_nats::jetstream::message::PublishMessage::build()
        .payload(payload)
        .message_id(header_value(&id));
    if let Some(trace) = &trace {
        message = trace.stamp(message);
    }
    let stored = match ingress.js.send_publish(subject, message).await {
        Ok(ack) => ack.await,
        Err(error) => return unavailable(&error.to_string()),
    };
    match stored {
        Ok(ack) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "id": event.id,
                "stream": ack.stream,
                "sequence": ack.sequence,
                "duplicate": ack.duplicate,
            })),
        )
            .into_response(),
        Err(error) => unavailable(&error.to_string()),
    }
}

/// The subject, message id and payload an accepted event is stored as.
fn destination(ingress: &Ingress, event: &Event, envelope: Vec<u8>) -> (String, String, Bytes) {
    if let (Input::Examples, EventData::Example(data)) = (ingress.input, &event.data) {
        let record =
            ExampleRecord::from_event(&event.id, data, event.time.unwrap_or_else(Utc::now));
        return (
            ingress.subjects.examples(&data.model),
            record.id.clone(),
            Bytes::from(record.to_json_bytes()),
        );
    }
    let subject = ingress
        .subjects
        .event(event.data.event_type().as_str(), event.data.partition_key());
    (subject, event.id.clone(), Bytes::from(envelope))
}

/// Dead-letters a refused event and answers 400 with the reason; 503 if even that failed.
async fn refuse(
    ingress: &Ingress,
    headers: &HeaderMap,
    body: Bytes,
    rejection: Rejection,
    trace: Option<&TraceContext>,
) -> Response {
    let id = headers
        .get("ce-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&body))
        });
    let origin = Origin {
        subject: "http:/events",
        stream_sequence: None,
        dedup_id: format!("http-{id}"),
        trace,
    };
    let published = dead_letter::publish(
        &ingress.js,
        &ingress.subjects,
        ingress.function,
        &rejection,
        &origin,
        body,
    )
    .await;
    if let Err(failure) = published {
        return unavailable(&failure.to_string());
    }
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {
            "reason": rejection.reason.as_str(),
            "field": rejection.field,
            "detail": rejection.detail,
        }})),
    )
        .into_response()
}

fn unavailable(detail: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": format!("the event was not stored; retry: {detail}")})),
    )
        .into_response()
}
