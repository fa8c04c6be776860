//! Push delivery, for Knative Eventing: a CloudEvent POSTed to a function's `/events` (structured
//! or binary mode) enters the same stream its JetStream messages come from, so the function's
//! one handler processes it under the same rules.
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
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use chrono::Utc;
use serde_json::json;

use crate::error::{RejectReason, Rejection};
use crate::events::{self, Event, EventData};
use crate::examples::ExampleRecord;
use crate::runtime::dead_letter::{self, Origin};
use crate::subjects::{Subjects, header_value};
use crate::telemetry::{SpanKind, Spans};
use crate::trace::TraceContext;

/// Content type of a structured-mode CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

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

/// The CloudEvent an HTTP request carries, as the JSON envelope a producer would publish:
/// structured mode (`Content-Type: application/cloudevents+json`, the body is the envelope) as
/// it is; binary mode (attributes in `ce-` headers, the body is `data`) assembled from them.
pub fn envelope_from_http(
    headers: &HeaderMap,
    body: &[u8],
    max_bytes: usize,
) -> Result<Vec<u8>, Rejection> {
    if body.len() > max_bytes {
        return Err(Rejection::new(
            RejectReason::Oversized,
            "$",
            format!("event is {} bytes, the limit is {max_bytes}", body.len()),
        ));
    }
    let text = |name: &str| -> Result<Option<String>, Rejection> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_string).map_err(|_| {
                    Rejection::new(
                        RejectReason::InvalidEnvelope,
                        name,
                        "header is not visible ASCII",
                    )
                })
            })
            .transpose()
    };
    let content_type = text(header::CONTENT_TYPE.as_str())?;
    let media_type = content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    if media_type.as_deref() == Some(CLOUDEVENTS_JSON) {
        return Ok(body.to_vec());
    }
    let Some(specversion) = text("ce-specversion")? else {
        return Err(Rejection::new(
            RejectReason::InvalidEnvelope,
            "$",
            format!(
                "not a CloudEvent: send the envelope with Content-Type: {CLOUDEVENTS_JSON} \
                 (structured mode), or the data with ce-specversion, ce-id, ce-source and \
                 ce-type headers (binary mode)"
            ),
        ));
    };
    let data: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, "data", e.to_string()))?;
    let mut envelope = serde_json::Map::new();
    envelope.insert("specversion".into(), specversion.into());
    for (attribute, name) in [
        ("id", "ce-id"),
        ("source", "ce-source"),
        ("type", "ce-type"),
        ("time", "ce-time"),
        ("subject", "ce-subject"),
    ] {
        if let Some(value) = text(name)? {
            envelope.insert(attribute.into(), value.into());
        }
    }
    if let Some(content_type) = content_type {
        envelope.insert("datacontenttype".into(), content_type.into());
    }
    envelope.insert("data".into(), data);
    serde_json::to_vec(&envelope)
        .map_err(|e| Rejection::new(RejectReason::InvalidEnvelope, "$", e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const DATA: &str = r#"{"user":"u1","item":"b1","action":"view"}"#;

    #[test]
    fn both_modes_give_the_envelope_the_decoder_accepts() {
        let structured = format!(
            r#"{{"specversion":"1.0","id":"e1","source":"s","type":"user_action","data":{DATA}}}"#
        );
        let from_structured = envelope_from_http(
            &headers(&[(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )]),
            structured.as_bytes(),
            1 << 16,
        )
        .unwrap();
        let from_binary = envelope_from_http(
            &headers(&[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-id", "e1"),
                ("ce-source", "s"),
                ("ce-type", "user_action"),
                ("ce-time", "2026-11-27T12:00:00Z"),
            ]),
            DATA.as_bytes(),
            1 << 16,
        )
        .unwrap();
        let a = events::decode(&from_structured, 1 << 16).unwrap();
        let b = events::decode(&from_binary, 1 << 16).unwrap();
        assert_eq!((a.id.as_str(), &a.data), (b.id.as_str(), &b.data));
        assert_eq!(b.time.unwrap().to_rfc3339(), "2026-11-27T12:00:00+00:00");
    }

    #[test]
    fn what_is_not_a_cloud_event_is_refused_with_its_reason() {
        let plain = envelope_from_http(&headers(&[]), DATA.as_bytes(), 1 << 16).unwrap_err();
        assert_eq!(plain.reason, RejectReason::InvalidEnvelope);
        let broken = envelope_from_http(
            &headers(&[("ce-specversion", "1.0"), ("ce-id", "e1")]),
            b"{not json",
            1 << 16,
        )
        .unwrap_err();
        assert_eq!(
            (broken.reason, broken.field.as_str()),
            (RejectReason::MalformedJson, "data")
        );
        let big = envelope_from_http(&headers(&[]), &[b' '; 100], 10).unwrap_err();
        assert_eq!(big.reason, RejectReason::Oversized);
        // Binary mode without a type: assembled, then refused by the decoder like any event.
        let untyped = envelope_from_http(
            &headers(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "e1"),
                ("ce-source", "s"),
            ]),
            DATA.as_bytes(),
            1 << 16,
        )
        .unwrap();
        assert_eq!(
            events::decode(&untyped, 1 << 16).unwrap_err().reason,
            RejectReason::InvalidEnvelope
        );
    }
}
