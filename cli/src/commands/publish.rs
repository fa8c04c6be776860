//! `freshet publish`: reads CloudEvents as JSON Lines and publishes each to its event subject,
//! with the event id as `Nats-Msg-Id` so a re-run inside the duplicate window stores nothing new.
//!
//! Lines are validated with the same decoder the functions use; invalid ones are reported on
//! stderr and skipped, unless `--raw` pushes everything through (to exercise the dead-letter
//! path). A run that skipped any line ends with an error naming how many and why (exit code
//! 1), after publishing the valid ones: a script must not take a partly published file for a
//! published one. The [`Publisher`] keeps up to [`MAX_IN_FLIGHT`] publish acks outstanding, stores the
//! events in file order, and rides out a server restart by sending again, in order and under
//! the same ids, what was not acknowledged.
//!
//! The pieces `freshet replay` shares are public here: [`open_input`] and [`LineReader`] (the
//! input, line by line), [`prepare`] (subject, id, validation) and [`pace_offset`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use freshet::events::{self, DEFAULT_MAX_EVENT_BYTES};
use freshet::ids::EntityId;
use freshet::subjects::Subjects;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use super::{GlobalArgs, connect, emit, emit_json, key_values};
pub use crate::publisher::{MAX_IN_FLIGHT, Outgoing, Publisher, Summary};
/// The subject tokens used in `--raw` mode when a line's type or entity cannot be read.
const UNKNOWN_TOKEN: &str = "unknown";

/// Arguments of `freshet publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// JSON Lines file of CloudEvents; stdin when absent or "-"
    pub file: Option<PathBuf>,
    /// Publish every line as is, invalid ones too (to "<type>.<entity>" when readable, else
    /// "unknown.unknown"), so bad input reaches the functions' dead-letter path
    #[arg(long = "raw")]
    pub raw: bool,
    /// Publish at most this many events per second; as fast as acks allow when unset
    #[arg(long = "rate", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Largest event accepted, in bytes; larger lines are reported as oversized
    #[arg(long = "max-event-bytes", env = "FRESHET_MAX_EVENT_BYTES", default_value_t = DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// How long an event may go unacknowledged, sent again all the while, before the run gives
    /// up; keep it inside the EVENTS duplicate window (FRESHET_DUPLICATE_WINDOW), within which a
    /// resent event is stored once
    #[arg(long = "retry-for", env = "FRESHET_RETRY_FOR", default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of events per second"
        )),
    }
}

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

/// Runs `freshet publish`.
pub async fn run(global: &GlobalArgs, args: &PublishArgs) -> anyhow::Result<()> {
    let mut lines = LineReader::new(open_input(args.file.as_deref()).await?);
    let nats = connect(global).await?;
    let started = Instant::now();
    let mut publisher = Publisher::new(nats.client.clone(), MAX_IN_FLIGHT, args.retry_for);
    let mut refused = RefusedLines::default();
    while let Some((line_number, line)) = lines.next_line().await? {
        refused.read += 1;
        let outgoing = match prepare(line, args.raw, args.max_event_bytes, &nats.subjects) {
            Ok(outgoing) => outgoing,
            Err(problem) => {
                publisher.refuse();
                refused.record(&problem);
                eprintln!("line {line_number}: {problem}");
                continue;
            }
        };
        if let Some(rate) = args.rate {
            publisher
                .settle_until(started + pace_offset(publisher.sent(), rate))
                .await?;
        }
        if let Err(problem) = publisher.send(line_number, outgoing).await? {
            refused.record(&problem);
            eprintln!("line {line_number}: {problem}");
        }
    }
    publisher.settle_all().await?;
    let mut summary = publisher.summary().clone();
    summary.finish(started.elapsed());
    if global.json {
        emit_json(&summary)?;
    } else {
        emit(&key_values(&[
            ("published", summary.published.to_string()),
            ("duplicates", summary.duplicates.to_string()),
            ("invalid", summary.invalid.to_string()),
            ("resent", summary.resent.to_string()),
            ("elapsed", format!("{:.2}s", summary.elapsed_seconds)),
            ("events/s", format!("{:.0}", summary.events_per_second)),
        ]))?;
    }
    refused.verdict()
}

/// The lines a run did not publish, counted by reason, so the run can end by saying how many
/// and why after each was reported with its line number.
#[derive(Debug, Default)]
struct RefusedLines {
    /// Non-blank lines read.
    read: u64,
    /// Refused lines by reason (the problem's leading token, e.g. "invalid_data").
    by_reason: BTreeMap<String, u64>,
}

impl RefusedLines {
    /// Counts one refused line; `problem` is what was printed for it.
    fn record(&mut self, problem: &str) {
        let reason = problem.split(':').next().unwrap_or(problem).trim();
        *self.by_reason.entry(reason.to_string()).or_default() += 1;
    }

    /// `Ok` when every line read was published; else the error that ends the run.
    fn verdict(&self) -> anyhow::Result<()> {
        let refused: u64 = self.by_reason.values().sum();
        if refused == 0 {
            return Ok(());
        }
        let reasons: Vec<String> = self
            .by_reason
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        anyhow::bail!(
            "{refused} of {} lines were invalid and not published ({}); each is reported above \
             with its line number (--raw publishes them anyway, to exercise the dead-letter path)",
            self.read,
            reasons.join(", ")
        )
    }
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
    fn a_run_with_refused_lines_fails_saying_how_many_and_why() {
        let mut refused = RefusedLines {
            read: 4,
            ..RefusedLines::default()
        };
        assert!(
            refused.verdict().is_ok(),
            "nothing refused, nothing to report"
        );
        refused.record("invalid_data: data.action: unknown action \"steal\"");
        refused.record("malformed_json: $: expected value at line 1 column 1");
        refused.record("invalid_data: data.user: missing field");
        let message = refused.verdict().unwrap_err().to_string();
        assert!(
            message.starts_with(
                "3 of 4 lines were invalid and not published (2 invalid_data, 1 malformed_json)"
            ),
            "{message}"
        );
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

    #[test]
    fn rates_must_be_positive_and_finite() {
        assert_eq!(parse_rate("250").unwrap(), 250.0);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
