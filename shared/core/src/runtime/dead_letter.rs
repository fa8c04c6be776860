//! Publishing refused input to the dead-letter subject, with the reason in headers and the original
//! bytes as payload, so nothing is lost and every refusal can be read, counted and replayed.
//! Every header value is ASCII, whatever the input held, so every client can read them.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;

use crate::error::{Failure, Rejection};
use crate::subjects::{
    HEADER_DETAIL, HEADER_FIELD, HEADER_FUNCTION, HEADER_REASON, HEADER_SOURCE_SEQUENCE,
    HEADER_SOURCE_SUBJECT, Subjects, header_value,
};
use crate::trace::TraceContext;

/// Where a refused message came from.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    pub subject: &'a str,
    /// Stream sequence, when the message came from a stream (HTTP input has none).
    pub stream_sequence: Option<u64>,
    /// A stable id of the input, for de-duplicating repeated refusals of one redelivered message.
    pub dedup_id: String,
    /// The trace of the function's handling of the input, when it carried one: the dead letter
    /// is sent on in it (`traceparent`, `tracestate`).
    pub trace: Option<&'a TraceContext>,
}

/// The most characters of one header value taken from the input: a hostile event must not grow
/// the headers without bound. The whole text is still in the payload, which is the input itself.
const MAX_HEADER_TEXT: usize = 512;

/// A header value from text the input chose: ASCII (see [`header_value`]), and at most
/// [`MAX_HEADER_TEXT`] characters of it escaped.
fn header_text(text: &str) -> String {
    let taken: String = text.chars().take(MAX_HEADER_TEXT).collect();
    header_value(&taken)
}

/// The headers of a dead letter: the reason, the field and detail of the refusal, the function
/// and where the input came from, each value ASCII.
pub fn headers(function: &str, rejection: &Rejection, origin: &Origin<'_>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_REASON, rejection.reason.as_str());
    headers.insert(HEADER_FIELD, header_text(&rejection.field).as_str());
    headers.insert(HEADER_DETAIL, header_text(&rejection.detail).as_str());
    headers.insert(HEADER_FUNCTION, header_value(function).as_str());
    headers.insert(HEADER_SOURCE_SUBJECT, header_text(origin.subject).as_str());
    if let Some(seq) = origin.stream_sequence {
        headers.insert(HEADER_SOURCE_SEQUENCE, seq.to_string().as_str());
    }
    if let Some(trace) = origin.trace {
        trace.insert_nats(&mut headers);
    }
    headers
}

/// Publishes one refused message and waits for JetStream to store it.
pub async fn publish(
    js: &jetstream::Context,
    subjects: &Subjects,
    function: &str,
    rejection: &Rejection,
    origin: &Origin<'_>,
    payload: Bytes,
) -> Result<(), Failure> {
    let subject = subjects.dead_letter(function, rejection.reason.as_str());
    let publish = PublishMessage::build()
        .payload(payload)
        .headers(headers(function, rejection, origin))
        .message_id(header_value(&format!("dlq-{function}-{}", origin.dedup_id)));
    js.send_publish(subject, publish)
        .await
        .map_err(|e| Failure::new("publish to dead-letter", e))?
        .await
        .map_err(|e| Failure::new("publish to dead-letter", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RejectReason;

    #[test]
    fn every_header_value_is_ascii_whatever_the_input_held() {
        let rejection = crate::events::check_number("data.price", 1e300).unwrap_err();
        assert!(rejection.detail.contains('±'), "{}", rejection.detail);
        let hostile = Rejection::new(
            RejectReason::InvalidData,
            "data.prïce\r\nForged: yes",
            "é".repeat(2 * MAX_HEADER_TEXT),
        );
        let origin = Origin {
            subject: "freshet.events.0.new_item.b1",
            stream_sequence: Some(7),
            dedup_id: "7".into(),
            trace: None,
        };
        for rejection in [&rejection, &hostile] {
            let headers = headers("featurize", rejection, &origin);
            let mut values = 0;
            for (name, value) in headers.iter() {
                for value in value {
                    let text = value.as_str();
                    assert!(
                        text.bytes().all(|b| (b' '..=b'~').contains(&b)),
                        "{name}: {text:?}"
                    );
                    values += 1;
                }
            }
            assert_eq!(values, 6);
        }
        let detail = headers("featurize", &rejection, &origin);
        assert_eq!(
            detail.get(HEADER_DETAIL).map(|v| v.as_str()),
            Some("1e300 is beyond \\u{b1}1e12")
        );
        let long = headers("featurize", &hostile, &origin);
        let detail = long
            .get(HEADER_DETAIL)
            .map(|v| v.as_str())
            .unwrap_or_default();
        assert_eq!(
            detail,
            "\\u{e9}".repeat(MAX_HEADER_TEXT),
            "capped, then escaped"
        );
    }
}
