//! Event files, line by line: the JSON Lines input of `freshet publish` and `freshet replay`
//! ([`open_input`], [`LineReader`]), where each line goes or why it is refused ([`prepare`]), and
//! when a paced run sends its next one ([`pace_offset`]). The publishing itself, in file order
//! through server restarts, is [`crate::publisher`].

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use freshet::events;
use freshet::ids::EntityId;
use freshet::subjects::Subjects;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::publisher::Outgoing;
/// The subject tokens used in `--raw` mode when a line's type or entity cannot be read.
const UNKNOWN_TOKEN: &str = "unknown";

/// Decides where a line goes, or why it is not published.
///
/// A valid event is published byte for byte as read, so extension attributes survive.
pub fn prepare(
    line: &[u8],
    raw: bool,
    max_event_bytes: usize,
    subjects: &Subjects,
) -> Result<Outgoing, String> {
    if raw {
        let (subject, message_id) = raw_route(line, subjects);
        return Ok(Outgoing {
            subject,
            message_id,
            payload: Bytes::copy_from_slice(line),
        });
    }
    let event = events::decode(line, max_event_bytes).map_err(|rejection| rejection.to_string())?;
    Ok(Outgoing {
        subject: subjects.event(event.data.event_type().as_str(), event.data.partition_key()),
        message_id: Some(event.id),
        payload: Bytes::copy_from_slice(line),
    })
}

/// The subject and message id of a `--raw` line, read leniently from whatever JSON it holds.
fn raw_route(line: &[u8], subjects: &Subjects) -> (String, Option<String>) {
    let value: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
    let token = |v: Option<&serde_json::Value>| {
        v.and_then(serde_json::Value::as_str)
            .filter(|s| EntityId::parse(*s).is_ok())
            .map(str::to_string)
    };
    let event_type = token(value.get("type"));
    let entity_field = match event_type.as_deref() {
        Some("user_action") => Some("user"),
        Some("new_item") => Some("item"),
        Some("example") => Some("model"),
        Some("outcome") => Some("prediction_id"),
        _ => None,
    };
    let entity =
        entity_field.and_then(|field| token(value.get("data").and_then(|data| data.get(field))));
    let subject = match (event_type, entity) {
        (Some(event_type), Some(entity)) => subjects.event(&event_type, &entity),
        _ => subjects.event(UNKNOWN_TOKEN, UNKNOWN_TOKEN),
    };
    let message_id = value
        .get("id")
        .and_then(serde_json::Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_string);
    (subject, message_id)
}

/// When the event numbered `sent` (from 0) is due, counted from the start of a run paced at
/// `rate` events per second. Every deadline is measured from the start, never from the previous
/// send, so time lost to one slow send is made up by the next ones and the average rate does
/// not drift.
pub fn pace_offset(sent: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(sent as f64 / rate)
}

/// Opens the JSON Lines input: the file, or stdin when there is none or it is "-".
pub async fn open_input(
    file: Option<&Path>,
) -> anyhow::Result<Box<dyn AsyncBufRead + Unpin + Send>> {
    Ok(match file {
        Some(path) if path.as_os_str() != "-" => Box::new(BufReader::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?,
        )),
        _ => Box::new(BufReader::new(tokio::io::stdin())),
    })
}

/// Reads the input a line at a time, numbering lines from 1 as an editor does, without their
/// terminators, and skipping blank ones.
pub struct LineReader {
    input: Box<dyn AsyncBufRead + Unpin + Send>,
    buffer: Vec<u8>,
    line_number: u64,
}

impl LineReader {
    pub fn new(input: Box<dyn AsyncBufRead + Unpin + Send>) -> LineReader {
        LineReader {
            input,
            buffer: Vec::new(),
            line_number: 0,
        }
    }

    /// The next non-blank line and its number; `None` at the end of the input.
    pub async fn next_line(&mut self) -> anyhow::Result<Option<(u64, &[u8])>> {
        loop {
            self.buffer.clear();
            let read = self
                .input
                .read_until(b'\n', &mut self.buffer)
                .await
                .context("reading events")?;
            if read == 0 {
                return Ok(None);
            }
            self.line_number += 1;
            if !trim_line_end(&self.buffer)
                .iter()
                .all(u8::is_ascii_whitespace)
            {
                return Ok(Some((self.line_number, trim_line_end(&self.buffer))));
            }
        }
    }
}

/// The line without its terminator ("\n" or "\r\n").
fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use freshet::events::DEFAULT_MAX_EVENT_BYTES;

    const VALID: &str = r#"{"specversion":"1.0","id":"e1","source":"t","type":"user_action","data":{"user":"u1","item":"b1","action":"view"}}"#;

    fn subjects() -> Subjects {
        Subjects::default()
    }

    #[test]
    fn valid_events_go_to_their_entity_subject_with_their_id() {
        let out = prepare(
            VALID.as_bytes(),
            false,
            DEFAULT_MAX_EVENT_BYTES,
            &subjects(),
        )
        .unwrap();
        assert_eq!(out.subject, "freshet.events.user_action.u1");
        assert_eq!(out.message_id.as_deref(), Some("e1"));
        assert_eq!(out.payload.as_ref(), VALID.as_bytes());
    }

    #[test]
    fn invalid_events_are_refused_with_reason_field_and_detail() {
        let bad = VALID.replace("\"view\"", "\"steal\"");
        let problem =
            prepare(bad.as_bytes(), false, DEFAULT_MAX_EVENT_BYTES, &subjects()).unwrap_err();
        assert!(
            problem.starts_with("invalid_data: data.action: "),
            "{problem}"
        );
        let problem = prepare(VALID.as_bytes(), false, 10, &subjects()).unwrap_err();
        assert!(problem.starts_with("oversized: $: "), "{problem}");
    }

    #[test]
    fn ids_with_line_breaks_are_refused_unless_raw() {
        let bad = VALID.replace("\"e1\"", "\"e\\r\\n1\"");
        let problem =
            prepare(bad.as_bytes(), false, DEFAULT_MAX_EVENT_BYTES, &subjects()).unwrap_err();
        assert!(problem.starts_with("invalid_envelope: id: "), "{problem}");
        // Raw lines keep their id; the publisher escapes it into the header.
        let raw = prepare(bad.as_bytes(), true, DEFAULT_MAX_EVENT_BYTES, &subjects()).unwrap();
        assert_eq!(raw.message_id.as_deref(), Some("e\r\n1"));
    }

    #[test]
    fn raw_lines_keep_their_bytes_and_route_as_well_as_they_can() {
        let cases = [
            (
                VALID.replace("\"view\"", "\"steal\""),
                "freshet.events.user_action.u1",
                Some("e1"),
            ),
            (
                r#"{"id":"x","type":"new_item","data":{"item":"b9","price":1e308}}"#.to_string(),
                "freshet.events.new_item.b9",
                Some("x"),
            ),
            (
                "{not json".to_string(),
                "freshet.events.unknown.unknown",
                None,
            ),
            (
                r#"{"id":"y","type":"click","data":{}}"#.to_string(),
                "freshet.events.unknown.unknown",
                Some("y"),
            ),
            (
                r#"{"id":"z","type":"user_action","data":{"user":"a.b"}}"#.to_string(),
                "freshet.events.unknown.unknown",
                Some("z"),
            ),
            (
                r#"{"type":"user.action","data":{"user":"u1"}}"#.to_string(),
                "freshet.events.unknown.unknown",
                None,
            ),
        ];
        for (line, subject, id) in cases {
            let out = prepare(line.as_bytes(), true, DEFAULT_MAX_EVENT_BYTES, &subjects()).unwrap();
            assert_eq!(
                (out.subject.as_str(), out.message_id.as_deref()),
                (subject, id),
                "{line}"
            );
            assert_eq!(out.payload.as_ref(), line.as_bytes());
        }
    }

    #[test]
    fn line_terminators_are_trimmed() {
        assert_eq!(trim_line_end(b"abc\r\n"), b"abc");
        assert_eq!(trim_line_end(b"abc\n"), b"abc");
        assert_eq!(trim_line_end(b"abc"), b"abc");
    }

    #[test]
    fn paced_deadlines_count_from_the_start() {
        assert_eq!(pace_offset(0, 200.0), Duration::ZERO);
        assert_eq!(pace_offset(100, 200.0), Duration::from_millis(500));
        // A fractional rate keeps exact deadlines too: the 3rd event at 0.4/s is due at 7.5 s.
        assert_eq!(pace_offset(3, 0.4), Duration::from_millis(7500));
    }

    #[tokio::test]
    async fn line_readers_number_every_line_and_skip_blank_ones() {
        let input: &[u8] = b"a\r\n\n  \nb\nc";
        let mut lines = LineReader::new(Box::new(input));
        let mut seen = Vec::new();
        while let Some((number, line)) = lines.next_line().await.unwrap() {
            seen.push((number, String::from_utf8(line.to_vec()).unwrap()));
        }
        assert_eq!(
            seen,
            [
                (1, "a".to_string()),
                (4, "b".to_string()),
                (5, "c".to_string())
            ]
        );
    }
}
