//! Spans as an OTLP `ExportTraceServiceRequest` in the OTLP/HTTP JSON encoding: the protobuf
//! JSON mapping with OTLP's exceptions. Field names are lowerCamelCase; trace and span ids are
//! lower-case hex strings (not base64); enums (span kind, status code) are integers; 64-bit
//! integers (timestamps, `intValue`) are decimal strings; empty optional fields are left out.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::span::{Span, Status, Value};
use crate::trace::{SpanId, TraceId};

/// The instrumentation scope every span is reported under.
pub const SCOPE_NAME: &str = "freshet";

/// OTLP's status codes.
const STATUS_OK: u8 = 1;
const STATUS_ERROR: u8 = 2;

/// The resource the spans of one process belong to: its attributes (`service.name` and the like).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub attributes: Vec<(String, Value)>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportTraceServiceRequest<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: ResourceJson<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
struct ResourceJson<'a> {
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeSpans<'a> {
    scope: Scope,
    spans: Vec<SpanJson<'a>>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpanJson<'a> {
    trace_id: TraceId,
    span_id: SpanId,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<SpanId>,
    name: &'a str,
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attributes: Vec<KeyValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusJson<'a>>,
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    value: AnyValue<'a>,
}

/// `AnyValue`: one of its fields, named for the value's type.
#[derive(Serialize)]
enum AnyValue<'a> {
    #[serde(rename = "stringValue")]
    String(&'a str),
    #[serde(rename = "intValue")]
    Int(String),
    #[serde(rename = "boolValue")]
    Bool(bool),
    #[serde(rename = "doubleValue")]
    Double(f64),
}

#[derive(Serialize)]
struct StatusJson<'a> {
    code: u8,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

/// Attributes as `KeyValue`s.
fn key_values<K: AsRef<str>>(attributes: &[(K, Value)]) -> Vec<KeyValue<'_>> {
    attributes
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.as_ref(),
            value: any_value(value),
        })
        .collect()
}

fn any_value(value: &Value) -> AnyValue<'_> {
    match value {
        Value::String(text) => AnyValue::String(text),
        Value::Int(number) => AnyValue::Int(number.to_string()),
        Value::Bool(flag) => AnyValue::Bool(*flag),
        Value::Double(number) => AnyValue::Double(*number),
    }
}

/// Nanoseconds since the Unix epoch, as a decimal string (0 for a time before it).
fn unix_nanos(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
        .to_string()
}

fn span_json(span: &Span) -> SpanJson<'_> {
    let status = match &span.status {
        Status::Unset => None,
        Status::Ok => Some(StatusJson {
            code: STATUS_OK,
            message: "",
        }),
        Status::Error(message) => Some(StatusJson {
            code: STATUS_ERROR,
            message,
        }),
    };
    SpanJson {
        trace_id: span.trace_id,
        span_id: span.span_id,
        parent_span_id: span.parent_span_id,
        name: &span.name,
        kind: span.kind as u8,
        start_time_unix_nano: unix_nanos(span.start),
        end_time_unix_nano: unix_nanos(span.end),
        attributes: key_values(&span.attributes),
        status,
    }
}

/// The body of one export: `spans` of `resource`, as JSON bytes.
pub fn encode(resource: &Resource, spans: &[Span]) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
        resource_spans: [ResourceSpans {
            resource: ResourceJson {
                attributes: key_values(&resource.attributes),
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: SCOPE_NAME,
                    version: env!("CARGO_PKG_VERSION"),
                },
                spans: spans.iter().map(span_json).collect(),
            }],
        }],
    };
    serde_json::to_vec(&request).expect("spans are plain data and always serialise")
}

/// The spans a receiver refused, from an `ExportTraceServiceResponse` (`partialSuccess`), and
/// its message; `None` when it accepted them all (or answered with something else than JSON).
pub fn rejected(response: &[u8]) -> Option<(u64, String)> {
    let value: serde_json::Value = serde_json::from_slice(response).ok()?;
    let partial = value.get("partialSuccess")?;
    // An int64 field: a decimal string in the mapping, though some receivers send a number.
    let count = match partial.get("rejectedSpans")? {
        serde_json::Value::String(text) => text.parse().ok()?,
        number => number.as_u64()?,
    };
    let message = partial
        .get("errorMessage")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    (count > 0).then_some((count, message))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::telemetry::span::SpanKind;
    use crate::trace::TraceContext;

    const HANDLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_span_encodes_to_the_otlp_json_shape() {
        let trace = TraceContext::handling(Some(HANDLED), None).unwrap();
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let mut span = Span::new(&trace, "featurize process", SpanKind::Consumer, start);
        span.end = start + Duration::from_millis(5);
        span.set("messaging.system", "nats");
        span.set("freshet.stream_sequence", 42u64);
        span.set("freshet.retried", false);
        span.set("freshet.score", 0.25);
        span.fail("invalid_envelope: data.item: missing");
        let resource = Resource {
            attributes: vec![("service.name".to_string(), "freshet-featurize".into())],
        };
        let body: serde_json::Value = serde_json::from_slice(&encode(&resource, &[span])).unwrap();
        let expected = json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "freshet-featurize"}}
            ]},
            "scopeSpans": [{
                "scope": {"name": "freshet", "version": env!("CARGO_PKG_VERSION")},
                "spans": [{
                    "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                    "spanId": trace.span_id().to_string(),
                    "parentSpanId": "00f067aa0ba902b7",
                    "name": "featurize process",
                    "kind": 5,
                    "startTimeUnixNano": "1700000000123456789",
                    "endTimeUnixNano": "1700000000128456789",
                    "attributes": [
                        {"key": "messaging.system", "value": {"stringValue": "nats"}},
                        {"key": "freshet.stream_sequence", "value": {"intValue": "42"}},
                        {"key": "freshet.retried", "value": {"boolValue": false}},
                        {"key": "freshet.score", "value": {"doubleValue": 0.25}}
                    ],
                    "status": {"code": 2, "message": "invalid_envelope: data.item: missing"}
                }]
            }]
        }]});
        assert_eq!(body, expected);
        let span_id = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"]
            .as_str()
            .unwrap();
        assert!(
            span_id.len() == 16
                && span_id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{span_id} is 16 lower-case hex digits"
        );
    }

    #[test]
    fn a_root_span_has_no_parent_and_an_unset_status_is_left_out() {
        let trace = TraceContext::received(Some(HANDLED), None).unwrap();
        let span = Span::new(&trace, "predict single", SpanKind::Server, UNIX_EPOCH);
        let body: serde_json::Value =
            serde_json::from_slice(&encode(&Resource { attributes: vec![] }, &[span])).unwrap();
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["spanId"], "00f067aa0ba902b7");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["startTimeUnixNano"], "0");
        for absent in ["parentSpanId", "status", "attributes"] {
            assert!(span.get(absent).is_none(), "{absent} in {span}");
        }
    }

    #[test]
    fn reads_a_partial_success() {
        let partial = br#"{"partialSuccess": {"rejectedSpans": "3", "errorMessage": "too old"}}"#;
        assert_eq!(rejected(partial), Some((3, "too old".to_string())));
        assert_eq!(
            rejected(br#"{"partialSuccess": {"rejectedSpans": 2}}"#),
            Some((2, String::new()))
        );
        assert_eq!(rejected(b"{}"), None);
        assert_eq!(rejected(br#"{"partialSuccess": {}}"#), None);
        assert_eq!(rejected(b"\x0a\x00"), None);
    }
}
