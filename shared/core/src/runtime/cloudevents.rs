//! The CloudEvents HTTP protocol binding (CloudEvents 1.0, JSON event format), one
//! implementation for every HTTP endpoint that takes events: the push ingress (`/events`) and
//! predict's `/`.
//!
//! A request carries one event, in either mode the binding defines:
//!
//! - **structured**: `Content-Type: application/cloudevents+json`, the body is the envelope;
//! - **binary**: the attributes in `ce-` headers (`ce-specversion`, `ce-id`, `ce-source` and
//!   `ce-type` required; `ce-time`, `ce-subject` optional), the body is `data`, described by the
//!   request's `Content-Type`.
//!
//! Either way the result is the JSON envelope a producer would have published, so each endpoint
//! checks it with the rules it already has for envelopes. Only JSON data is accepted, and a
//! batch (`application/cloudevents-batch+json`) is refused: one event per request.

use axum::http::{HeaderMap, header};

use crate::error::{RejectReason, Rejection};

/// Content type of a structured-mode CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// Content type of a batch of CloudEvents, which is refused.
pub const CLOUDEVENTS_BATCH_JSON: &str = "application/cloudevents-batch+json";

/// The attributes a binary-mode event must carry, with their headers.
const REQUIRED: [(&str, &str); 3] = [
    ("id", "ce-id"),
    ("source", "ce-source"),
    ("type", "ce-type"),
];
/// The optional attributes a binary-mode event may carry, with their headers.
const OPTIONAL: [(&str, &str); 2] = [("time", "ce-time"), ("subject", "ce-subject")];

/// Whether `content_type` describes JSON data (`application/json`, or any `+json` type).
pub fn is_json(content_type: &str) -> bool {
    content_type.starts_with("application/json") || content_type.contains("+json")
}

/// The one CloudEvent an HTTP request carries, as the JSON envelope a producer would publish:
/// structured mode as it is, binary mode assembled from its headers and body. Refused: a body
/// over `max_bytes`, a batch, a request that is in neither mode, binary mode without a required
/// attribute or with data that is not JSON.
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
    let content_type = text(headers, header::CONTENT_TYPE.as_str())?;
    let media_type = content_type
        .as_deref()
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    match media_type.as_deref() {
        Some(CLOUDEVENTS_JSON) => return Ok(body.to_vec()),
        Some(CLOUDEVENTS_BATCH_JSON) => {
            return Err(invalid(
                "$",
                "batched CloudEvents are not accepted; send one event per request",
            ));
        }
        _ => {}
    }
    let Some(specversion) = text(headers, "ce-specversion")? else {
        return Err(invalid(
            "$",
            &format!(
                "not a CloudEvent: send the envelope with Content-Type: {CLOUDEVENTS_JSON} \
                 (structured mode), or the data with ce-specversion, ce-id, ce-source and \
                 ce-type headers (binary mode)"
            ),
        ));
    };
    let mut envelope = serde_json::Map::new();
    envelope.insert("specversion".into(), specversion.into());
    for (attribute, name) in REQUIRED {
        let value = text(headers, name)?.ok_or_else(|| {
            invalid(
                name,
                &format!("a binary-mode CloudEvent needs the {name} header"),
            )
        })?;
        envelope.insert(attribute.into(), value.into());
    }
    for (attribute, name) in OPTIONAL {
        if let Some(value) = text(headers, name)? {
            envelope.insert(attribute.into(), value.into());
        }
    }
    if let Some(content_type) = content_type {
        if !is_json(&content_type) {
            return Err(invalid(
                "datacontenttype",
                &format!(
                    "data of content type {:?} is not JSON; only JSON data is accepted",
                    content_type.chars().take(64).collect::<String>()
                ),
            ));
        }
        envelope.insert("datacontenttype".into(), content_type.into());
    }
    let data: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Rejection::new(RejectReason::MalformedJson, "data", e.to_string()))?;
    envelope.insert("data".into(), data);
    serde_json::to_vec(&envelope).map_err(|e| invalid("$", &e.to_string()))
}

/// A header's value, which must be visible ASCII.
fn text(headers: &HeaderMap, name: &str) -> Result<Option<String>, Rejection> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| invalid(name, "header is not visible ASCII"))
        })
        .transpose()
}

fn invalid(field: &str, detail: &str) -> Rejection {
    Rejection::new(RejectReason::InvalidEnvelope, field, detail)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::events;

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
        assert_eq!(from_structured, structured.as_bytes());
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
        // Without a content type the data is still read as JSON.
        let untyped = envelope_from_http(
            &headers(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "e1"),
                ("ce-source", "s"),
                ("ce-type", "user_action"),
            ]),
            DATA.as_bytes(),
            1 << 16,
        )
        .unwrap();
        assert_eq!(events::decode(&untyped, 1 << 16).unwrap().data, a.data);
    }

    #[test]
    fn what_is_not_one_json_cloud_event_is_refused_with_its_reason() {
        let refused = |pairs: &[(&'static str, &str)], body: &[u8]| {
            let rejection = envelope_from_http(&headers(pairs), body, 1 << 16).unwrap_err();
            (rejection.reason, rejection.field)
        };
        let invalid = |field: &str| (RejectReason::InvalidEnvelope, field.to_string());
        let binary = [
            ("ce-specversion", "1.0"),
            ("ce-id", "e1"),
            ("ce-source", "s"),
            ("ce-type", "user_action"),
        ];
        assert_eq!(refused(&[], DATA.as_bytes()), invalid("$"));
        assert_eq!(
            refused(&[("content-type", "application/json")], DATA.as_bytes()),
            invalid("$")
        );
        assert_eq!(
            refused(&[("content-type", CLOUDEVENTS_BATCH_JSON)], b"[]"),
            invalid("$")
        );
        assert_eq!(refused(&binary[..3], DATA.as_bytes()), invalid("ce-type"));
        assert_eq!(
            refused(&[binary[0], binary[2], binary[3]], DATA.as_bytes()),
            invalid("ce-id")
        );
        assert_eq!(
            refused(
                &[
                    binary[0],
                    binary[1],
                    binary[2],
                    binary[3],
                    ("content-type", "text/csv")
                ],
                b"1,2"
            ),
            invalid("datacontenttype")
        );
        assert_eq!(
            refused(&binary, b"{not json"),
            (RejectReason::MalformedJson, "data".to_string())
        );
        let big = envelope_from_http(&headers(&[]), &[b' '; 100], 10).unwrap_err();
        assert_eq!(big.reason, RejectReason::Oversized);
        assert!(is_json("application/json; charset=utf-8") && is_json("application/vnd.x+json"));
        assert!(!is_json("text/plain"));
    }
}
