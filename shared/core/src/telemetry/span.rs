//! One finished span as freshet records it: the ids of the trace context it was (see
//! [`crate::trace::TraceContext`]), a name and kind, when it started and ended, attributes and a
//! status. Plain data, turned into OTLP JSON by [`super::otlp`].

use std::time::SystemTime;

use crate::trace::{SpanId, TraceContext, TraceId};

/// What kind of work a span stands for (OTLP's `SpanKind`, whose numbers the JSON carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    /// Answering a request (predict over NATS or HTTP, `/events`).
    Server = 2,
    Client = 3,
    Producer = 4,
    /// Handling a message taken from a stream (the consumer loop).
    Consumer = 5,
}

/// An attribute's value. Integers travel as decimal strings in OTLP JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::String(value.to_string())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::String(value)
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Value {
        Value::Int(value)
    }
}

/// Saturates at `i64::MAX`, OTLP's largest integer.
impl From<u64> for Value {
    fn from(value: u64) -> Value {
        Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Bool(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Value {
        Value::Double(value)
    }
}

/// How the work a span stands for ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Status {
    /// Nothing said (OTLP's default): the work went as expected.
    #[default]
    Unset,
    Ok,
    /// It failed, and why.
    Error(String),
}

/// A span: started by [`super::Spans::start`] for a sampled trace, finished by
/// [`super::Spans::end`].
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub name: String,
    pub kind: SpanKind,
    pub trace_id: TraceId,
    /// The span freshet acted as: the `parent-id` of the `traceparent` it sent on.
    pub span_id: SpanId,
    /// The span of the `traceparent` it received, if any.
    pub parent_span_id: Option<SpanId>,
    pub start: SystemTime,
    /// Set when the span is ended; the start until then.
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: Status,
}

impl Span {
    /// The span `trace` stands for, started at `start`.
    pub fn new(trace: &TraceContext, name: &str, kind: SpanKind, start: SystemTime) -> Span {
        Span {
            name: name.to_string(),
            kind,
            trace_id: trace.trace_id(),
            span_id: trace.span_id(),
            parent_span_id: trace.parent_span_id(),
            start,
            end: start,
            attributes: Vec::new(),
            status: Status::Unset,
        }
    }

    /// Sets an attribute, replacing an earlier value of the same key.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.attributes.push((key, value)),
        }
    }

    /// Marks the span failed, with why.
    pub fn fail(&mut self, message: impl Into<String>) {
        self.status = Status::Error(message.into());
    }
}
