//! Publishing refused input to the dead-letter subject, with the reason in headers and the original
//! bytes as payload, so nothing is lost and every refusal can be read, counted and replayed.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;

use crate::error::{Failure, Rejection};
use crate::subjects::{
    HEADER_DETAIL, HEADER_FIELD, HEADER_FUNCTION, HEADER_REASON, HEADER_SOURCE_SEQUENCE,
    HEADER_SOURCE_SUBJECT, Subjects,
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

/// Header values cannot hold line breaks, and a hostile event must not grow them without bound.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
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
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_REASON, rejection.reason.as_str());
    headers.insert(HEADER_FIELD, header_safe(&rejection.field).as_str());
    headers.insert(HEADER_DETAIL, header_safe(&rejection.detail).as_str());
    headers.insert(HEADER_FUNCTION, function);
    headers.insert(HEADER_SOURCE_SUBJECT, header_safe(origin.subject).as_str());
    if let Some(seq) = origin.stream_sequence {
        headers.insert(HEADER_SOURCE_SEQUENCE, seq.to_string().as_str());
    }
    if let Some(trace) = origin.trace {
        trace.insert_nats(&mut headers);
    }
    let subject = subjects.dead_letter(function, rejection.reason.as_str());
    let publish = PublishMessage::build()
        .payload(payload)
        .headers(headers)
        .message_id(format!("dlq-{function}-{}", origin.dedup_id));
    js.send_publish(subject, publish)
        .await
        .map_err(|e| Failure::new("publish to dead-letter", e))?
        .await
        .map_err(|e| Failure::new("publish to dead-letter", e))?;
    Ok(())
}
