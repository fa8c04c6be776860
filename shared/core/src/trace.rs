//! W3C trace context (`traceparent`, `tracestate`) carried in NATS and HTTP headers, so one trace
//! id follows an event from its producer through featurize, train and predict.
//!
//! Each function that handles a traced message acts as one span, a child of the message's
//! `traceparent` (same trace id, a new random span id, the same flags), and sends that child on
//! whatever the message caused: examples, dead letters, replies. Its logs name the trace id, so
//! they can be joined with the producer's traces. When an OpenTelemetry collector is configured,
//! [`crate::telemetry`] exports those spans, with exactly these ids, for sampled traces.
//!
//! A message without `traceparent` costs nothing here (no allocation, no random draw). A message
//! with an invalid one is never refused for it: the function starts a fresh trace instead, as the
//! W3C recommendation says, and drops the `tracestate` that came with it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The header (and CloudEvents extension attribute) naming the sender's span.
pub const TRACEPARENT: &str = "traceparent";
/// The header (and CloudEvents extension attribute) carrying vendor state, passed through.
pub const TRACESTATE: &str = "tracestate";
/// The longest `tracestate` passed on; a longer one is dropped (the W3C limit is 32 members,
/// and propagators are asked to pass at least 512 characters).
pub const MAX_TRACESTATE_LEN: usize = 512;
/// The header names as NATS header names made once (naming a header by `&str` copies the name).
const TRACEPARENT_NAME: async_nats::HeaderName = async_nats::HeaderName::from_static(TRACEPARENT);
const TRACESTATE_NAME: async_nats::HeaderName = async_nats::HeaderName::from_static(TRACESTATE);
/// The flags of a trace freshet starts itself: not sampled. Whether a trace is recorded is its
/// producer's decision; a trace begun for a broken `traceparent` had no producer to make it.
const ROOT_FLAGS: u8 = 0;
/// Length of a version-00 `traceparent`: `vv-<32 hex>-<16 hex>-ff`.
const TRACEPARENT_LEN: usize = 55;

/// A 16-byte trace id, shown (and serialised) as 32 lower-case hex digits. Never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u8; 16]);

/// An 8-byte span id (the `parent-id` field of a `traceparent`), shown as 16 lower-case hex
/// digits. Never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

/// Fills an id with random bytes, drawing again in the (2^-64 or rarer) case of all zeros,
/// which the recommendation reserves as invalid.
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes != [0; N] {
            return bytes;
        }
    }
}

/// Reads exactly `N` bytes from `2 * N` lower-case hex digits; `None` for anything else
/// (upper case is invalid in a `traceparent`).
fn parse_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Writes `bytes` as lower-case hex into `out` (twice their length). Formatting ids is on the
/// path of every traced message, so it is done by table, not by the formatting machinery.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

fn write_hex<const N: usize>(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut out = [0u8; N];
    hex_into(bytes, &mut out);
    f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
}

impl TraceId {
    /// Reads 32 lower-case hex digits, not all zero.
    pub fn parse(text: &str) -> Option<TraceId> {
        parse_hex(text.as_bytes())
            .filter(|bytes| *bytes != [0; 16])
            .map(TraceId)
    }

    pub fn random() -> TraceId {
        TraceId(random_id())
    }
}

impl SpanId {
    /// Reads 16 lower-case hex digits, not all zero.
    pub fn parse(text: &str) -> Option<SpanId> {
        parse_hex(text.as_bytes())
            .filter(|bytes| *bytes != [0; 8])
            .map(SpanId)
    }

    pub fn random() -> SpanId {
        SpanId(random_id())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex::<32>(&self.0, f)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex::<16>(&self.0, f)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

impl Serialize for TraceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TraceId, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        TraceId::parse(&text).ok_or_else(|| {
            serde::de::Error::custom("a trace id is 32 lower-case hex digits, not all zero")
        })
    }
}

impl Serialize for SpanId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A `traceparent` value: which trace, which span sent it, and the trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The `parent-id` field: the span that sent the message (for a value freshet sends, the span
    /// of the function that handled the message).
    pub parent_id: SpanId,
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` if it is not valid.
    ///
    /// Version `00` must be exactly `00-<trace-id>-<parent-id>-<flags>`. A later version (`01` to
    /// `fe`) is read the same way from its first 55 characters, provided they are followed by
    /// nothing or by `-` (the recommendation's rule for versions this code does not know yet);
    /// version `ff` is invalid. Hex digits must be lower case, and neither id may be all zero.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let bytes = value.as_bytes();
        let version: [u8; 1] = parse_hex(bytes.get(..2)?)?;
        match version[0] {
            0x00 if bytes.len() != TRACEPARENT_LEN => return None,
            0xff => return None,
            _ if bytes.len() < TRACEPARENT_LEN => return None,
            _ if bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] != b'-' => return None,
            _ => {}
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_id = TraceId::parse(value.get(3..35)?)?;
        let parent_id = SpanId::parse(value.get(36..52)?)?;
        let [flags] = parse_hex(&bytes[53..55])?;
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace: random trace and span ids, not sampled.
    pub fn root() -> TraceParent {
        TraceParent {
            trace_id: TraceId::random(),
            parent_id: SpanId::random(),
            flags: ROOT_FLAGS,
        }
    }

    /// The span a receiver of this value works in: the same trace and flags, a new span id.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            parent_id: SpanId::random(),
            ..*self
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Formats as a version-00 value (whatever version it was read from, as the recommendation asks
/// of a sender).
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = *b"00-................................-................-..";
        hex_into(&self.trace_id.0, &mut out[3..35]);
        hex_into(&self.parent_id.0, &mut out[36..52]);
        hex_into(&[self.flags], &mut out[53..55]);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// A trace context: the `traceparent` and the `tracestate` passed along with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub parent: TraceParent,
    /// Vendor state, passed on unchanged; `None` when absent, empty or unusable in a header.
    pub state: Option<Box<str>>,
    /// The span this context's span is a child of (the sender's, for a context handling a
    /// message); `None` for a context as received, whose parent is not known, and for a root.
    pub parent_span: Option<SpanId>,
}

impl TraceContext {
    /// A new trace with no state.
    pub fn root() -> TraceContext {
        TraceContext {
            parent: TraceParent::root(),
            state: None,
            parent_span: None,
        }
    }

    /// The context received in a `traceparent` and `tracestate`: `None` without a
    /// `traceparent`; a fresh root (without the state, which belongs to the invalid trace)
    /// when the `traceparent` is invalid.
    pub fn received(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<TraceContext> {
        let value = traceparent?;
        Some(match TraceParent::parse(value.trim()) {
            Some(parent) => TraceContext {
                parent,
                state: tracestate.and_then(usable_state),
                parent_span: None,
            },
            None => TraceContext::root(),
        })
    }

    /// The context of the span that handles a message received with `traceparent` and
    /// `tracestate`: a child of a valid one (keeping the state), a fresh root for an invalid one,
    /// `None` without one.
    pub fn handling(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<TraceContext> {
        let value = traceparent?;
        Some(match TraceParent::parse(value.trim()) {
            Some(parent) => TraceContext {
                parent: parent.child(),
                state: tracestate.and_then(usable_state),
                parent_span: Some(parent.parent_id),
            },
            None => TraceContext::root(),
        })
    }

    /// The same trace and state, in a new span.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            parent: self.parent.child(),
            state: self.state.clone(),
            parent_span: Some(self.span_id()),
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.parent.trace_id
    }

    /// The span this context is: the `parent-id` it sends on.
    pub fn span_id(&self) -> SpanId {
        self.parent.parent_id
    }

    /// The span this context's span is a child of, when known (see
    /// [`parent_span`](Self::parent_span)).
    pub fn parent_span_id(&self) -> Option<SpanId> {
        self.parent_span
    }

    /// Whether the trace's producer asked for it to be recorded (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.parent.sampled()
    }

    /// The context a NATS message's headers carry (see [`received`](Self::received)). Header
    /// names are matched without regard to case; two `traceparent` values make it invalid.
    pub fn received_nats(headers: &async_nats::HeaderMap) -> Option<TraceContext> {
        let (parent, state) = nats_values(headers)?;
        TraceContext::received(parent, state)
    }

    /// The context of the span handling a NATS message (see [`handling`](Self::handling)).
    pub fn handling_nats(headers: &async_nats::HeaderMap) -> Option<TraceContext> {
        let (parent, state) = nats_values(headers)?;
        TraceContext::handling(parent, state)
    }

    /// The context an HTTP request's headers carry (see [`received`](Self::received)). Two
    /// `traceparent` headers make it invalid; several `tracestate` headers are one list.
    pub fn received_http(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
        let (parent, state) = http_values(headers)?;
        TraceContext::received(Some(parent), state.as_deref())
    }

    /// The context of the span handling an HTTP request (see [`handling`](Self::handling)).
    pub fn handling_http(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
        let (parent, state) = http_values(headers)?;
        TraceContext::handling(Some(parent), state.as_deref())
    }

    /// Adds `traceparent` (and `tracestate`, when there is one) to NATS headers.
    pub fn insert_nats(&self, headers: &mut async_nats::HeaderMap) {
        headers.insert(TRACEPARENT_NAME, self.parent.to_string());
        if let Some(state) = &self.state {
            headers.insert(TRACESTATE_NAME, String::from(&**state));
        }
    }

    /// Adds `traceparent` (and `tracestate`, when there is one) to a JetStream message being
    /// built.
    pub fn stamp(
        &self,
        message: async_nats::jetstream::message::PublishMessage,
    ) -> async_nats::jetstream::message::PublishMessage {
        let message = message.header(TRACEPARENT_NAME, self.parent.to_string());
        match &self.state {
            Some(state) => message.header(TRACESTATE_NAME, String::from(&**state)),
            None => message,
        }
    }

    /// NATS headers holding only this context.
    pub fn nats_headers(&self) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        self.insert_nats(&mut headers);
        headers
    }

    /// Adds `traceparent` (and `tracestate`, when there is one) to HTTP headers.
    pub fn insert_http(&self, headers: &mut axum::http::HeaderMap) {
        use axum::http::HeaderValue;
        if let Ok(value) = HeaderValue::from_str(&self.parent.to_string()) {
            headers.insert(TRACEPARENT, value);
        }
        if let Some(Ok(value)) = self.state.as_deref().map(HeaderValue::from_str) {
            headers.insert(TRACESTATE, value);
        }
    }
}

/// The `traceparent` and `tracestate` values of NATS headers, without allocating; `None` when
/// there is no `traceparent`. Two `traceparent` values give an invalid one (`""`).
fn nats_values(headers: &async_nats::HeaderMap) -> Option<(Option<&str>, Option<&str>)> {
    let (mut parent, mut state) = (None, None);
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name.eq_ignore_ascii_case(TRACEPARENT) {
            parent = Some(match values.as_slice() {
                [one] => one.as_str(),
                _ => "",
            });
        } else if name.eq_ignore_ascii_case(TRACESTATE) {
            state = values.first().map(async_nats::HeaderValue::as_str);
        }
    }
    parent.map(|parent| (Some(parent), state))
}

/// The `traceparent` and `tracestate` values of HTTP headers; `None` when there is no
/// `traceparent`. Two `traceparent` headers (or one that is not text) give an invalid one.
fn http_values(headers: &axum::http::HeaderMap) -> Option<(&str, Option<String>)> {
    let mut parents = headers.get_all(TRACEPARENT).iter();
    let first = parents.next()?;
    let parent = match parents.next() {
        Some(_) => "",
        None => first.to_str().unwrap_or(""),
    };
    // Several `tracestate` field lines are one list (RFC 9110).
    let states: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    Some((parent, (!states.is_empty()).then(|| states.join(","))))
}

/// A `tracestate` worth passing on: not empty, not too long, and safe in a header line.
fn usable_state(state: &str) -> Option<Box<str>> {
    let state = state.trim();
    let usable = !state.is_empty()
        && state.len() <= MAX_TRACESTATE_LEN
        && state.bytes().all(|b| (0x20..0x7f).contains(&b));
    usable.then(|| state.into())
}

/// A bounded record of the traces a range of messages belonged to: the first
/// [`TraceSample::HALF`] distinct trace ids seen and the last [`TraceSample::HALF`] (a model
/// version learns from thousands of examples; its manifest names a few traces to start from).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceSample {
    first: Vec<TraceId>,
    last: std::collections::VecDeque<TraceId>,
}

impl TraceSample {
    /// Trace ids kept from each end of the range.
    pub const HALF: usize = 16;

    /// Records a message's trace id (in stream order). An id already kept is not kept twice.
    pub fn add(&mut self, id: TraceId) {
        if self.first.contains(&id) || self.last.contains(&id) {
            return;
        }
        if self.first.len() < Self::HALF {
            self.first.push(id);
            return;
        }
        if self.last.len() == Self::HALF {
            self.last.pop_front();
        }
        self.last.push_back(id);
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// The ids kept, first ones first, as hex strings.
    pub fn to_strings(&self) -> Vec<String> {
        self.first
            .iter()
            .chain(&self.last)
            .map(ToString::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_a_valid_value() {
        let parent = TraceParent::parse(VALID).unwrap();
        assert_eq!(
            parent.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), VALID);
        let unsampled =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn refuses_invalid_forms() {
        let cases = [
            "",
            "00",
            "garbage",
            // all-zero trace id, all-zero parent id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // upper case hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // version ff, bad version
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // short fields, wrong separators, non-hex
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            // version 00 takes nothing after the flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            // a later version still needs a dash after the known fields
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // multi-byte characters where hex digits belong
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ];
        for case in cases {
            assert_eq!(TraceParent::parse(case), None, "{case:?}");
        }
    }

    #[test]
    fn reads_a_later_version_as_version_00() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let parent = TraceParent::parse(later).unwrap();
        assert_eq!(parent.to_string(), VALID);
        assert!(
            TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some()
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_in_a_new_span() {
        let parent = TraceParent::parse(VALID).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.parent_id, parent.parent_id);
        assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
        let context = TraceContext {
            parent,
            state: Some("congo=t61rcWkgMzE".into()),
            parent_span: None,
        };
        let grandchild = context.child();
        assert_eq!(grandchild.trace_id(), context.trace_id());
        assert_eq!(grandchild.state, context.state);
        assert_eq!(grandchild.parent_span_id(), Some(context.span_id()));
    }

    #[test]
    fn roots_are_valid_new_traces() {
        let (a, b) = (TraceParent::root(), TraceParent::root());
        assert_ne!(a.trace_id, b.trace_id);
        assert!(!a.sampled());
        assert_eq!(TraceParent::parse(&a.to_string()), Some(a));
    }

    #[test]
    fn an_invalid_traceparent_starts_a_fresh_trace_without_its_state() {
        assert_eq!(TraceContext::handling(None, Some("a=b")), None);
        let handled = TraceContext::handling(Some(VALID), Some(" congo=t61rcWkgMzE ")).unwrap();
        assert_eq!(handled.trace_id().to_string(), &VALID[3..35]);
        assert_ne!(handled.span_id().to_string(), &VALID[36..52]);
        assert_eq!(
            handled.parent_span_id().map(|id| id.to_string()).as_deref(),
            Some(&VALID[36..52]),
            "the span handling a message is a child of the sender's"
        );
        assert!(handled.sampled());
        assert_eq!(handled.state.as_deref(), Some("congo=t61rcWkgMzE"));
        let received = TraceContext::received(Some(VALID), None).unwrap();
        assert_eq!(received.parent.to_string(), VALID);
        assert_eq!(received.parent_span_id(), None);
        for invalid in [
            "",
            "nonsense",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let fresh = TraceContext::handling(Some(invalid), Some("a=b")).unwrap();
            assert_ne!(fresh.trace_id().to_string(), &VALID[3..35]);
            assert_eq!(fresh.state, None, "the state belonged to the invalid trace");
            assert_eq!(fresh.parent_span_id(), None, "a fresh trace has no parent");
            assert!(
                !fresh.sampled(),
                "nobody asked for a fresh trace to be recorded"
            );
        }
        // A state that could not travel in a header is dropped, the trace kept.
        let long = "k=".to_string() + &"v".repeat(MAX_TRACESTATE_LEN);
        for state in ["", "a=b\r\nX-Evil: 1", long.as_str()] {
            let handled = TraceContext::handling(Some(VALID), Some(state)).unwrap();
            assert_eq!(handled.state, None, "{state:?}");
        }
    }

    #[test]
    fn reads_and_writes_nats_headers() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "e1");
        assert_eq!(TraceContext::handling_nats(&headers), None);
        headers.insert("Traceparent", VALID);
        headers.insert(TRACESTATE, "congo=t61rcWkgMzE");
        let handled = TraceContext::handling_nats(&headers).unwrap();
        assert_eq!(handled.trace_id().to_string(), &VALID[3..35]);
        let sent = handled.nats_headers();
        let again = TraceContext::received_nats(&sent).unwrap();
        // What travels is the span and its state; its parent stays with the sender.
        assert_eq!(
            (&again.parent, &again.state),
            (&handled.parent, &handled.state)
        );
        // Two values are not one trace.
        let mut doubled = async_nats::HeaderMap::new();
        doubled.append(TRACEPARENT, VALID);
        doubled.append(TRACEPARENT, VALID);
        let fresh = TraceContext::handling_nats(&doubled).unwrap();
        assert_ne!(fresh.trace_id().to_string(), &VALID[3..35]);
    }

    #[test]
    fn reads_and_writes_http_headers() {
        use axum::http::{HeaderMap, HeaderValue};
        let mut headers = HeaderMap::new();
        assert_eq!(TraceContext::handling_http(&headers), None);
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        headers.append(TRACESTATE, HeaderValue::from_static("a=1"));
        headers.append(TRACESTATE, HeaderValue::from_static("b=2"));
        let handled = TraceContext::handling_http(&headers).unwrap();
        assert_eq!(handled.state.as_deref(), Some("a=1,b=2"));
        let received = TraceContext::received_http(&headers).unwrap();
        assert_eq!(received.parent.to_string(), VALID);
        let mut response = HeaderMap::new();
        handled.insert_http(&mut response);
        let sent = response[TRACEPARENT].to_str().unwrap();
        assert_eq!(&sent[3..35], &VALID[3..35]);
        assert_eq!(response[TRACESTATE], "a=1,b=2");
    }

    #[test]
    fn trace_ids_serialise_as_hex() {
        let id = TraceParent::parse(VALID).unwrap().trace_id;
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", &VALID[3..35]));
        assert_eq!(serde_json::from_str::<TraceId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<TraceId>("\"00000000000000000000000000000000\"").is_err());
        let span = TraceParent::parse(VALID).unwrap().parent_id;
        assert_eq!(
            serde_json::to_string(&span).unwrap(),
            format!("\"{}\"", &VALID[36..52])
        );
    }

    #[test]
    fn a_sample_keeps_the_first_and_last_distinct_ids() {
        let ids: Vec<TraceId> = (0..100).map(|_| TraceId::random()).collect();
        let mut sample = TraceSample::default();
        assert!(sample.is_empty());
        for id in &ids {
            sample.add(*id);
            sample.add(*id);
        }
        let kept = sample.to_strings();
        assert_eq!(kept.len(), 2 * TraceSample::HALF);
        let expected: Vec<String> = ids[..16]
            .iter()
            .chain(&ids[84..])
            .map(ToString::to_string)
            .collect();
        assert_eq!(kept, expected);
        let mut small = TraceSample::default();
        small.add(ids[0]);
        small.add(ids[1]);
        small.add(ids[0]);
        assert_eq!(
            small.to_strings(),
            vec![ids[0].to_string(), ids[1].to_string()]
        );
    }
}
