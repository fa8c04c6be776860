//! The event contract: CloudEvents 1.0 in JSON structured mode, with typed `data` per event type.
//!
//! [`decode`] is the only way bytes become an [`Event`]; it refuses anything a function should not
//! act on with a [`Rejection`] that names the field and the reason, so the dead-letter subject
//! explains itself. Numbers a model could see are checked here, once: no NaN, no infinity, nothing
//! beyond ±[`MAX_ABS_VALUE`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{RejectReason, Rejection};
use crate::ids::{EntityId, ModelName};
use crate::trace::TraceContext;

/// The only CloudEvents version spoken.
pub const SPEC_VERSION: &str = "1.0";
/// Default limit on one encoded event; larger events are rejected as `oversized`.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;
/// The largest magnitude a feature, price or label may have. Finite values beyond it (1e308) are
/// as harmful to a model as infinities: one step of SGD turns them into one.
pub const MAX_ABS_VALUE: f64 = 1e12;
/// The most features one example may carry.
pub const MAX_FEATURES: usize = 1024;
const MAX_ID_LEN: usize = 256;
const MAX_TEXT_LEN: usize = 256;

/// A CloudEvents 1.0 envelope in JSON structured mode. Extension attributes (such as
/// `traceparent`) are kept in `extensions` and passed along untouched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// RFC 3339, read strictly (see [`crate::event_time`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::event_time::deserialize_option"
    )]
    pub time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

/// The event types freshet understands; the string form is the CloudEvent `type` and the type
/// token of the event's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    UserAction,
    NewItem,
    Example,
    Outcome,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::UserAction,
        EventType::NewItem,
        EventType::Example,
        EventType::Outcome,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserAction => "user_action",
            EventType::NewItem => "new_item",
            EventType::Example => "example",
            EventType::Outcome => "outcome",
        }
    }

    pub fn parse(value: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == value)
    }
}

/// What a user did to an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    View,
    AddToCart,
    Purchase,
}

/// `user_action`: a user viewed, carted or bought an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAction {
    pub user: EntityId,
    pub item: EntityId,
    pub action: Action,
}

/// `new_item`: an item entered the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    pub item: EntityId,
    pub category: String,
    pub price: f64,
}

/// `example`: a labelled feature vector for a named model, already featurized upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExampleData {
    pub model: ModelName,
    pub features: Vec<f64>,
    pub label: f64,
    /// How the label relates to delayed feedback (see [`Feedback`]); `final` when absent.
    #[serde(default, skip_serializing_if = "Feedback::is_final")]
    pub feedback: Feedback,
    /// For a [`Feedback::Correction`]: the id of the example it corrects (`ex-<event id>` of
    /// the fake negative). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrects: Option<String>,
    /// For a [`Feedback::FakeNegative`]: the event time (RFC 3339) from which its label is
    /// final, no correction following it after that (featurize writes the view's time plus the
    /// label horizon plus its out-of-orderness bound). drift holds the view's prediction until a
    /// correction or this time settles its label, and judges its error then; a fake negative
    /// without it is never judged. Absent otherwise.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::event_time::deserialize_option"
    )]
    pub final_at: Option<DateTime<Utc>>,
}

/// How an example's label relates to delayed feedback: whether it is final, or part of
/// fake-negative weighting (Ktena et al., RecSys 2019), where a view goes out at once as a
/// negative and a positive duplicate follows if it converts. train weighs each example's loss
/// by it, with `p` the model's own prediction for the row (held fixed in the step): a final
/// label 1, a fake negative (1 − p)(1 + p), a correction 1 + p. The derivation is in
/// functions/featurize/README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feedback {
    /// The label is final (every example before delayed feedback was).
    #[default]
    Final,
    /// A negative sent before its label was known (label 0); a correction may follow.
    FakeNegative,
    /// The positive duplicate of an earlier fake negative (label 1), which `corrects` names.
    Correction,
}

impl Feedback {
    pub fn is_final(&self) -> bool {
        *self == Feedback::Final
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Feedback::Final => "final",
            Feedback::FakeNegative => "fake_negative",
            Feedback::Correction => "correction",
        }
    }
}

/// Checks that an example's `feedback`, `corrects` and label agree: a fake negative is labelled
/// 0 and a correction 1 and names the example it corrects (an id of at most 256 characters);
/// only a correction names one. `prefix` is prepended to the field names in a refusal.
pub fn check_feedback(
    prefix: &str,
    feedback: Feedback,
    corrects: Option<&str>,
    label: f64,
) -> Result<(), Rejection> {
    let field = |name: &str| format!("{prefix}{name}");
    match (feedback, corrects) {
        (Feedback::Correction, None) => Err(invalid_data(
            &field("corrects"),
            "a correction must name the example it corrects".into(),
        )),
        (Feedback::Correction, Some(id)) if id.is_empty() || id.len() > MAX_ID_LEN => {
            Err(invalid_data(
                &field("corrects"),
                format!("must be 1 to {MAX_ID_LEN} characters"),
            ))
        }
        (Feedback::Correction, Some(_)) if label != 1.0 => Err(invalid_data(
            &field("label"),
            format!("a correction is a positive; got {label}"),
        )),
        (Feedback::FakeNegative, _) if label != 0.0 => Err(invalid_data(
            &field("label"),
            format!("a fake negative is labelled 0; got {label}"),
        )),
        (Feedback::Final | Feedback::FakeNegative, Some(_)) => Err(invalid_data(
            &field("corrects"),
            format!(
                "only a correction names an example it corrects; this one is {}",
                feedback.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks that only a fake negative says when its label becomes final (`final_at`): a final
/// label is final already, and a correction is the final label of its fake negative.
pub fn check_final_at(
    prefix: &str,
    feedback: Feedback,
    has_final_at: bool,
) -> Result<(), Rejection> {
    if has_final_at && feedback != Feedback::FakeNegative {
        return Err(invalid_data(
            &format!("{prefix}final_at"),
            format!(
                "only a fake negative says when its label becomes final; this one is {}",
                feedback.as_str()
            ),
        ));
    }
    Ok(())
}

/// `outcome`: the true label of an earlier prediction, by the prediction's id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub prediction_id: EntityId,
    pub label: f64,
}

/// The typed payload of a valid event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    UserAction(UserAction),
    NewItem(NewItem),
    Example(ExampleData),
    Outcome(Outcome),
}

impl EventData {
    pub fn event_type(&self) -> EventType {
        match self {
            EventData::UserAction(_) => EventType::UserAction,
            EventData::NewItem(_) => EventType::NewItem,
            EventData::Example(_) => EventType::Example,
            EventData::Outcome(_) => EventType::Outcome,
        }
    }

    /// The entity whose events must stay in order: it names the event's subject, and so its
    /// partition.
    pub fn partition_key(&self) -> &str {
        match self {
            EventData::UserAction(a) => a.user.as_str(),
            EventData::NewItem(n) => n.item.as_str(),
            EventData::Example(e) => e.model.as_str(),
            EventData::Outcome(o) => o.prediction_id.as_str(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let value = match self {
            EventData::UserAction(d) => serde_json::to_value(d),
            EventData::NewItem(d) => serde_json::to_value(d),
            EventData::Example(d) => serde_json::to_value(d),
            EventData::Outcome(d) => serde_json::to_value(d),
        };
        value.expect("event data is plain structs of strings and finite numbers")
    }
}

/// A validated event: envelope attributes plus typed data.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub time: Option<DateTime<Utc>>,
    pub data: EventData,
}

impl Event {
    /// Encodes the event as a structured-mode CloudEvent.
    pub fn to_cloud_event(&self) -> CloudEvent {
        CloudEvent {
            specversion: SPEC_VERSION.to_string(),
            id: self.id.clone(),
            source: self.source.clone(),
            event_type: self.data.event_type().as_str().to_string(),
            subject: None,
            time: self.time,
            datacontenttype: Some("application/json".to_string()),
            data: self.data.to_json(),
            extensions: BTreeMap::new(),
        }
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_cloud_event())
            .expect("a CloudEvent built from a valid event always serialises")
    }
}

/// Decodes and validates one structured-mode CloudEvent.
pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Event, Rejection> {
    decode_envelope(bytes, max_bytes).map(|(event, _)| event)
}

/// Decodes and validates one structured-mode CloudEvent, and reads the trace context its
/// envelope carries in the CloudEvents distributed-tracing extension (`traceparent` and
/// `tracestate` attributes): `None` without a `traceparent` attribute, a fresh trace for an
/// invalid one (see [`TraceContext::received`]). The event is never refused for its trace.
pub fn decode_traced(
    bytes: &[u8],
    max_bytes: usize,
) -> Result<(Event, Option<TraceContext>), Rejection> {
    let (event, trace) = decode_envelope(bytes, max_bytes)?;
    let trace = trace.parent.map(|parent| {
        let text = |value: &serde_json::Value| value.as_str().map(str::to_string);
        TraceContext::received(
            Some(text(&parent).as_deref().unwrap_or("")),
            trace.state.as_ref().and_then(text).as_deref(),
        )
    });
    Ok((event, trace.flatten()))
}

/// What decoding reads of an envelope: the attributes an [`Event`] keeps, and the trace
/// extension. Other extension attributes are skipped unread, so decoding is one pass from bytes
/// to fields, with no intermediate JSON tree of the whole envelope. (No `#[serde(flatten)]`
/// here: it would buffer the whole envelope again.)
#[derive(Deserialize)]
struct Envelope {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default, deserialize_with = "crate::event_time::deserialize_option")]
    time: Option<DateTime<Utc>>,
    #[serde(default)]
    datacontenttype: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
    /// Any JSON value is kept, `null` included, because an invalid `traceparent` starts a fresh
    /// trace rather than none.
    #[serde(default, deserialize_with = "present")]
    traceparent: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    tracestate: Option<serde_json::Value>,
}

/// The trace extension as sent.
struct TraceAttributes {
    parent: Option<serde_json::Value>,
    state: Option<serde_json::Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// Decodes and validates an envelope; returns the event and the envelope's trace attributes.
fn decode_envelope(bytes: &[u8], max_bytes: usize) -> Result<(Event, TraceAttributes), Rejection> {
    if bytes.len() > max_bytes {
        return Err(Rejection::new(
            RejectReason::Oversized,
            "$",
            format!("event is {} bytes, the limit is {max_bytes}", bytes.len()),
        ));
    }
    let envelope = read_envelope(bytes)?;
    check_envelope(&envelope)?;
    let event_type = EventType::parse(&envelope.event_type).ok_or_else(|| {
        Rejection::new(
            RejectReason::UnknownType,
            "type",
            format!(
                "{:?} is not one of user_action, new_item, example, outcome",
                truncate(&envelope.event_type)
            ),
        )
    })?;
    let data = decode_data(event_type, envelope.data)?;
    let event = Event {
        id: envelope.id,
        source: envelope.source,
        time: envelope.time,
        data,
    };
    let trace = TraceAttributes {
        parent: envelope.traceparent,
        state: envelope.tracestate,
    };
    Ok((event, trace))
}

/// Parses the envelope straight from its bytes. Malformed JSON is told apart from well-formed
/// JSON of the wrong shape, which names the offending attribute.
fn read_envelope(bytes: &[u8]) -> Result<Envelope, Rejection> {
    let malformed =
        |e: serde_json::Error| Rejection::new(RejectReason::MalformedJson, "$", e.to_string());
    let is_object = bytes
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|&byte| byte == b'{');
    if !is_object {
        // A struct would also accept a JSON array, field by position: refuse it first, and
        // still call broken input malformed rather than the wrong shape.
        serde_json::from_slice::<serde_json::Value>(bytes).map_err(malformed)?;
        return Err(invalid_envelope("$", "a CloudEvent must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let envelope = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        if err.inner().is_data() {
            let (field, detail) = path_and_detail(err, "");
            invalid_envelope(&field, &detail)
        } else {
            malformed(err.into_inner())
        }
    })?;
    deserializer.end().map_err(malformed)?;
    Ok(envelope)
}

fn check_envelope(envelope: &Envelope) -> Result<(), Rejection> {
    if envelope.specversion != SPEC_VERSION {
        return Err(invalid_envelope(
            "specversion",
            &format!(
                "{:?} is not supported, expected \"1.0\"",
                truncate(&envelope.specversion)
            ),
        ));
    }
    check_text("id", &envelope.id, MAX_ID_LEN).map_err(|d| invalid_envelope("id", &d))?;
    check_text("source", &envelope.source, MAX_ID_LEN)
        .map_err(|d| invalid_envelope("source", &d))?;
    if let Some(content_type) = &envelope.datacontenttype {
        let json = content_type.starts_with("application/json") || content_type.contains("+json");
        if !json {
            return Err(invalid_envelope(
                "datacontenttype",
                &format!(
                    "{:?} is not JSON; only JSON data is accepted",
                    truncate(content_type)
                ),
            ));
        }
    }
    Ok(())
}

fn decode_data(event_type: EventType, data: serde_json::Value) -> Result<EventData, Rejection> {
    if data.is_null() {
        return Err(invalid_data("data", "is missing".to_string()));
    }
    let typed = match event_type {
        EventType::UserAction => EventData::UserAction(typed_data(data)?),
        EventType::NewItem => {
            let item: NewItem = typed_data(data)?;
            check_text("category", &item.category, MAX_TEXT_LEN)
                .map_err(|d| invalid_data("data.category", d))?;
            check_number("data.price", item.price)?;
            if item.price < 0.0 {
                return Err(invalid_data(
                    "data.price",
                    format!("{} is negative", item.price),
                ));
            }
            EventData::NewItem(item)
        }
        EventType::Example => {
            let example: ExampleData = typed_data(data)?;
            if example.features.is_empty() || example.features.len() > MAX_FEATURES {
                return Err(invalid_data(
                    "data.features",
                    format!(
                        "has {} values; 1 to {MAX_FEATURES} are accepted",
                        example.features.len()
                    ),
                ));
            }
            check_numbers("data.features", &example.features)?;
            check_label("data.label", example.label)?;
            check_feedback(
                "data.",
                example.feedback,
                example.corrects.as_deref(),
                example.label,
            )?;
            check_final_at("data.", example.feedback, example.final_at.is_some())?;
            EventData::Example(example)
        }
        EventType::Outcome => {
            let outcome: Outcome = typed_data(data)?;
            check_label("data.label", outcome.label)?;
            EventData::Outcome(outcome)
        }
    };
    Ok(typed)
}

fn typed_data<T: DeserializeOwned>(data: serde_json::Value) -> Result<T, Rejection> {
    from_value_with_path(data, "data").map_err(|(field, detail)| invalid_data(&field, detail))
}

/// Deserialises with the path of the offending field, e.g. `data.price`.
fn from_value_with_path<T: DeserializeOwned>(
    value: serde_json::Value,
    root: &str,
) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|err| path_and_detail(err, root))
}

/// The offending field's path under `root` (`$` for the root itself), and what is wrong with it.
fn path_and_detail<E: std::fmt::Display>(
    err: serde_path_to_error::Error<E>,
    root: &str,
) -> (String, String) {
    let path = err.path().to_string();
    let field = match (root.is_empty(), path.as_str()) {
        (true, ".") => "$".to_string(),
        (true, p) => p.to_string(),
        (false, ".") => root.to_string(),
        (false, p) => format!("{root}.{p}"),
    };
    (field, err.into_inner().to_string())
}

fn check_text(name: &str, value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{name} is empty"));
    }
    if value.len() > max {
        return Err(format!(
            "{name} is {} bytes long, the limit is {max}",
            value.len()
        ));
    }
    // Ids travel in NATS headers (Nats-Msg-Id), where a line break would corrupt the message.
    if value.chars().any(char::is_control) {
        return Err(format!("{name} contains control characters"));
    }
    Ok(())
}

/// Checks every value of a vector as [`check_number`] does; a refusal names the element
/// (`field[i]`). The element's name is only formatted for a refusal: this runs on every
/// example train reads and every row predict scores.
pub fn check_numbers(field: &str, values: &[f64]) -> Result<(), Rejection> {
    match values
        .iter()
        .position(|&value| check_number(field, value).is_err())
    {
        Some(i) => check_number(&format!("{field}[{i}]"), values[i]),
        None => Ok(()),
    }
}

/// Checks that a number is one a model may see.
pub fn check_number(field: &str, value: f64) -> Result<(), Rejection> {
    if !value.is_finite() {
        return Err(Rejection::new(
            RejectReason::NonFinite,
            field,
            format!("{value} is not finite"),
        ));
    }
    if value.abs() > MAX_ABS_VALUE {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            field,
            format!("{value:e} is beyond ±{MAX_ABS_VALUE:e}"),
        ));
    }
    Ok(())
}

fn check_label(field: &str, label: f64) -> Result<(), Rejection> {
    check_number(field, label)?;
    if label != 0.0 && label != 1.0 {
        return Err(invalid_data(
            field,
            format!("{label} is not a binary label (0 or 1)"),
        ));
    }
    Ok(())
}

fn invalid_envelope(field: &str, detail: &str) -> Rejection {
    Rejection::new(RejectReason::InvalidEnvelope, field, detail)
}

fn invalid_data(field: &str, detail: String) -> Rejection {
    Rejection::new(RejectReason::InvalidData, field, detail)
}

/// Keeps hostile strings out of error messages at a readable length.
fn truncate(value: &str) -> String {
    value.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(event_type: &str, data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "specversion": "1.0", "id": "e1", "source": "test", "type": event_type,
            "time": "2026-11-26T10:00:00Z", "data": data,
        }))
        .unwrap()
    }

    fn rejection(bytes: &[u8]) -> Rejection {
        decode(bytes, DEFAULT_MAX_EVENT_BYTES).unwrap_err()
    }

    #[test]
    fn decodes_every_type() {
        let cases = [
            envelope(
                "user_action",
                json!({"user": "u1", "item": "b1", "action": "add_to_cart"}),
            ),
            envelope(
                "new_item",
                json!({"item": "b1", "category": "sci-fi", "price": 12.5}),
            ),
            envelope(
                "example",
                json!({"model": "m", "features": [1.0, -2.0], "label": 1}),
            ),
            envelope("outcome", json!({"prediction_id": "p-1", "label": 0})),
        ];
        let types: Vec<EventType> = cases
            .iter()
            .map(|bytes| {
                decode(bytes, DEFAULT_MAX_EVENT_BYTES)
                    .unwrap()
                    .data
                    .event_type()
            })
            .collect();
        assert_eq!(types, EventType::ALL.to_vec());
    }

    #[test]
    fn examples_say_how_their_label_relates_to_delayed_feedback() {
        let decoded = |data: serde_json::Value| match decode(
            &envelope("example", data),
            DEFAULT_MAX_EVENT_BYTES,
        )
        .unwrap()
        .data
        {
            EventData::Example(example) => example,
            other => panic!("{other:?}"),
        };
        let plain = decoded(json!({"model": "m", "features": [1.0], "label": 1}));
        assert_eq!(
            (plain.feedback, plain.corrects.as_deref()),
            (Feedback::Final, None)
        );
        // A final example is written as before delayed feedback, so older readers take it.
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            json!({"model": "m", "features": [1.0], "label": 1.0})
        );
        let fake = decoded(
            json!({"model": "m", "features": [1.0], "label": 0, "feedback": "fake_negative"}),
        );
        assert_eq!(
            (fake.feedback, fake.final_at),
            (Feedback::FakeNegative, None)
        );
        // A fake negative may say from when its label is final.
        let timed = decoded(json!({"model": "m", "features": [1.0], "label": 0,
            "feedback": "fake_negative", "final_at": "2026-01-01T00:30:05Z"}));
        assert_eq!(
            timed.final_at,
            Some("2026-01-01T00:30:05Z".parse::<DateTime<Utc>>().unwrap())
        );
        let correction = decoded(json!({"model": "m", "features": [1.0], "label": 1,
            "feedback": "correction", "corrects": "ex-v1"}));
        assert_eq!(
            (correction.feedback, correction.corrects.as_deref()),
            (Feedback::Correction, Some("ex-v1"))
        );
        let event = Event {
            id: "p1".into(),
            source: "s".into(),
            time: None,
            data: EventData::Example(correction),
        };
        assert_eq!(
            decode(&event.to_json_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap(),
            event
        );
    }

    #[test]
    fn round_trips_through_a_cloud_event() {
        let bytes = envelope(
            "user_action",
            json!({"user": "u1", "item": "b1", "action": "view"}),
        );
        let event = decode(&bytes, DEFAULT_MAX_EVENT_BYTES).unwrap();
        let again = decode(&event.to_json_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap();
        assert_eq!(event, again);
        assert_eq!(event.data.partition_key(), "u1");
    }

    #[test]
    fn keeps_extension_attributes() {
        let bytes = serde_json::to_vec(&json!({
            "specversion": "1.0", "id": "e1", "source": "s", "type": "outcome",
            "traceparent": "00-abc-def-01", "data": {"prediction_id": "p", "label": 1},
        }))
        .unwrap();
        let ce: CloudEvent = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(ce.extensions["traceparent"], "00-abc-def-01");
    }

    #[test]
    fn reads_past_attributes_it_does_not_use() {
        let bytes = serde_json::to_vec(&json!({
            "subject": "orders", "comexampleext": {"nested": [1, {"deep": null}]},
            "specversion": "1.0", "id": "e1", "source": "s", "type": "outcome",
            "data": {"prediction_id": "p", "label": 1}, "partitionkey": 7,
        }))
        .unwrap();
        let (event, trace) = decode_traced(&bytes, DEFAULT_MAX_EVENT_BYTES).unwrap();
        assert_eq!((event.id.as_str(), trace), ("e1", None));
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b" {}");
        assert_eq!(rejection(&trailing).reason, RejectReason::MalformedJson);
    }

    #[test]
    fn reads_the_trace_an_envelope_carries() {
        let traced = |extensions: serde_json::Value| {
            let mut event = json!({
                "specversion": "1.0", "id": "e1", "source": "s", "type": "outcome",
                "data": {"prediction_id": "p", "label": 1},
            });
            event
                .as_object_mut()
                .unwrap()
                .extend(extensions.as_object().unwrap().clone());
            decode_traced(
                &serde_json::to_vec(&event).unwrap(),
                DEFAULT_MAX_EVENT_BYTES,
            )
            .unwrap()
        };
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (event, trace) = traced(json!({"traceparent": parent, "tracestate": "a=1"}));
        assert_eq!(event.id, "e1");
        let trace = trace.unwrap();
        assert_eq!(trace.parent.to_string(), parent);
        assert_eq!(trace.state.as_deref(), Some("a=1"));
        assert_eq!(traced(json!({})).1, None);
        // An invalid trace starts a fresh one; the event is not refused for it.
        for invalid in [json!("00-zz"), json!(7), json!(null)] {
            let (event, trace) = traced(json!({ "traceparent": invalid }));
            assert_eq!(event.id, "e1");
            assert_ne!(trace.unwrap().parent.to_string(), parent);
        }
    }

    #[test]
    fn says_which_field_is_wrong_and_why() {
        let cases: Vec<(Vec<u8>, RejectReason, &str)> = vec![
            (b"{not json".to_vec(), RejectReason::MalformedJson, "$"),
            (b"\xff\xfe".to_vec(), RejectReason::MalformedJson, "$"),
            (b"[1,2]".to_vec(), RejectReason::InvalidEnvelope, "$"),
            (br#"{"specversion":"1.0","source":"s","type":"outcome","data":{}}"#.to_vec(), RejectReason::InvalidEnvelope, "$"),
            (br#"{"specversion":"0.3","id":"1","source":"s","type":"outcome","data":{}}"#.to_vec(), RejectReason::InvalidEnvelope, "specversion"),
            (br#"{"specversion":"1.0","id":"","source":"s","type":"outcome","data":{}}"#.to_vec(), RejectReason::InvalidEnvelope, "id"),
            (br#"{"specversion":"1.0","id":7,"source":"s","type":"outcome","data":{}}"#.to_vec(), RejectReason::InvalidEnvelope, "id"),
            (br#"{"specversion":"1.0","id":"a\r\nb","source":"s","type":"outcome","data":{}}"#.to_vec(), RejectReason::InvalidEnvelope, "id"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"outcome","time":"yesterday","data":{}}"#.to_vec(), RejectReason::InvalidEnvelope, "time"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"outcome","time":"2026-11-26t10:00:00Z","data":{}}"#.to_vec(), RejectReason::InvalidEnvelope, "time"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"outcome","time":"+12026-11-26T10:00:00Z","data":{}}"#.to_vec(), RejectReason::InvalidEnvelope, "time"),
            (br#"{"specversion":"1.0","id":"1","source":"s","type":"outcome","time":"2016-12-31T23:59:60Z","data":{}}"#.to_vec(), RejectReason::InvalidEnvelope, "time"),
            (envelope("click", json!({})), RejectReason::UnknownType, "type"),
            (envelope("user_action", json!({"user": "u1", "action": "view"})), RejectReason::InvalidData, "data"),
            (envelope("user_action", json!({"user": "u1", "item": "b1", "action": "steal"})), RejectReason::InvalidData, "data.action"),
            (envelope("user_action", json!({"user": "u.1", "item": "b1", "action": "view"})), RejectReason::InvalidData, "data.user"),
            (envelope("user_action", json!({"user": "u1", "item": "b1", "action": "view", "extra": 1})), RejectReason::InvalidData, "data.extra"),
            (envelope("new_item", json!({"item": "b1", "category": "x", "price": "12"})), RejectReason::InvalidData, "data.price"),
            (envelope("new_item", json!({"item": "b1", "category": "x", "price": -1.0})), RejectReason::InvalidData, "data.price"),
            (envelope("new_item", json!({"item": "b1", "category": "x", "price": 1e308})), RejectReason::OutOfRange, "data.price"),
            (envelope("example", json!({"model": "m", "features": [1.0, 1e300], "label": 1})), RejectReason::OutOfRange, "data.features[1]"),
            (envelope("example", json!({"model": "m", "features": [], "label": 1})), RejectReason::InvalidData, "data.features"),
            (envelope("example", json!({"model": "m", "features": [1.0], "label": 0.5})), RejectReason::InvalidData, "data.label"),
            (envelope("example", json!({"model": "m", "features": [1.0, "NaN"], "label": 1})), RejectReason::InvalidData, "data.features[1]"),
            (envelope("example", json!({"model": "m", "features": [1.0], "label": 1, "feedback": "maybe"})), RejectReason::InvalidData, "data.feedback"),
            (envelope("example", json!({"model": "m", "features": [1.0], "label": 1, "feedback": "correction"})), RejectReason::InvalidData, "data.corrects"),
            (envelope("example", json!({"model": "m", "features": [1.0], "label": 1, "feedback": "correction", "corrects": ""})), RejectReason::InvalidData, "data.corrects"),
            (envelope("example", json!({"model": "m", "features": [1.0], "label": 0, "feedback": "correction", "corrects": "ex-v1"})), RejectReason::InvalidData, "data.label"),
            (envelope("example", json!({"model": "m", "features": [1.0], "label": 1, "feedback": "fake_negative"})), RejectReason::InvalidData, "data.label"),
            (envelope("example", json!({"model": "m", "features": [1.0], "label": 1, "corrects": "ex-v1"})), RejectReason::InvalidData, "data.corrects"),
            (envelope("example", json!({"model": "m", "features": [1.0], "label": 1, "final_at": "2026-01-01T00:30:05Z"})), RejectReason::InvalidData, "data.final_at"),
            (envelope("example", json!({"model": "m", "features": [1.0], "label": 0, "feedback": "fake_negative", "final_at": "tomorrow"})), RejectReason::InvalidData, "data.final_at"),
            (envelope("outcome", serde_json::Value::Null), RejectReason::InvalidData, "data"),
        ];
        for (bytes, reason, field) in cases {
            let got = rejection(&bytes);
            assert_eq!(
                (got.reason, got.field.as_str()),
                (reason, field),
                "{}: {got}",
                String::from_utf8_lossy(&bytes)
            );
            assert!(!got.detail.is_empty());
        }
    }

    #[test]
    fn json_cannot_smuggle_non_finite_numbers() {
        // JSON has no NaN or Infinity literals, and serde_json refuses numbers that overflow f64.
        for text in ["NaN", "Infinity", "1e999"] {
            let bytes = format!(
                r#"{{"specversion":"1.0","id":"1","source":"s","type":"example","data":{{"model":"m","features":[{text}],"label":1}}}}"#
            );
            assert_eq!(
                rejection(bytes.as_bytes()).reason,
                RejectReason::MalformedJson,
                "{text}"
            );
        }
        assert_eq!(
            check_number("x", f64::NAN).unwrap_err().reason,
            RejectReason::NonFinite
        );
        assert_eq!(
            check_number("x", f64::NEG_INFINITY).unwrap_err().reason,
            RejectReason::NonFinite
        );
    }

    #[test]
    fn a_refused_vector_names_its_first_bad_element() {
        assert!(check_numbers("features", &[0.0, -1.5, 1e12]).is_ok());
        let refused = check_numbers("features", &[0.0, 1e13, f64::NAN]).unwrap_err();
        assert_eq!(
            (refused.reason, refused.field.as_str()),
            (RejectReason::OutOfRange, "features[1]")
        );
        let refused = check_numbers("data.features", &[1.0, f64::INFINITY]).unwrap_err();
        assert_eq!(
            (refused.reason, refused.field.as_str()),
            (RejectReason::NonFinite, "data.features[1]")
        );
    }

    #[test]
    fn refuses_oversized_and_deeply_nested_input() {
        let big = envelope(
            "new_item",
            json!({"item": "b1", "category": "x".repeat(70_000), "price": 1.0}),
        );
        assert_eq!(rejection(&big).reason, RejectReason::Oversized);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            rejection(deep.as_bytes()).reason,
            RejectReason::MalformedJson
        );
        // Within the size limit, nesting cannot exhaust the stack anywhere in an envelope: what
        // decoding reads (data, the trace) is refused past serde_json's depth limit, and an
        // attribute it does not use is skipped by a loop, without recursion.
        let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
        let outcome = r#"{"prediction_id":"p","label":1}"#;
        let envelope_with = |data: &str, attribute: &str, value: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"1","source":"s","type":"outcome","data":{data},"{attribute}":{value}}}"#
            )
        };
        for refused in [
            envelope_with(&deep, "comexampleext", "1"),
            envelope_with(outcome, "traceparent", &deep),
        ] {
            assert_eq!(
                rejection(refused.as_bytes()).reason,
                RejectReason::MalformedJson
            );
        }
        let skipped = envelope_with(outcome, "comexampleext", &deep);
        assert!(decode(skipped.as_bytes(), DEFAULT_MAX_EVENT_BYTES).is_ok());
    }
}
