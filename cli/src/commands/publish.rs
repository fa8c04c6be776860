//! `freshet publish`: reads CloudEvents as JSON Lines and publishes each to its event subject,
//! with the event id as `Nats-Msg-Id` so a re-run inside the duplicate window stores nothing new.
//!
//! Lines are validated with the same decoder the functions use; invalid ones are reported on
//! stderr and skipped, unless `--raw` pushes everything through (to exercise the dead-letter
//! path). Up to [`MAX_IN_FLIGHT`] publish acks are outstanding at once: waiting for each ack
//! before the next send would cap throughput at one round trip per event.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use clap::Args;
use freshet::events::{self, DEFAULT_MAX_EVENT_BYTES};
use freshet::ids::EntityId;
use freshet::subjects::Subjects;
use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use super::{GlobalArgs, connect, emit, emit_json, key_values};

/// The most publish acks awaited at once.
pub const MAX_IN_FLIGHT: usize = 1024;
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
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of events per second"
        )),
    }
}

/// One line ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub subject: String,
    /// The `Nats-Msg-Id`; absent only for `--raw` lines without a usable id.
    pub message_id: Option<String>,
    pub payload: Bytes,
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

/// Raw lines skip validation, but a NATS header still cannot carry a control character.
fn is_header_safe(value: &str) -> bool {
    !value.chars().any(char::is_control)
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
        .filter(|id| !id.is_empty() && is_header_safe(id))
        .map(str::to_string);
    (subject, message_id)
}

/// What a publish run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Events JetStream stored.
    pub published: u64,
    /// Events JetStream recognised by message id and did not store again.
    pub duplicates: u64,
    /// Lines refused (not published).
    pub invalid: u64,
    pub elapsed_seconds: f64,
    /// Acknowledged events (stored or duplicate) per second.
    pub events_per_second: f64,
}

/// Runs `freshet publish`.
pub async fn run(global: &GlobalArgs, args: &PublishArgs) -> anyhow::Result<()> {
    let mut input: Box<dyn AsyncBufRead + Unpin + Send> = match &args.file {
        Some(path) if path.as_os_str() != "-" => Box::new(BufReader::new(
            tokio::fs::File::open(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?,
        )),
        _ => Box::new(BufReader::new(tokio::io::stdin())),
    };
    let nats = connect(global).await?;
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut in_flight: VecDeque<(u64, PublishAckFuture)> = VecDeque::with_capacity(MAX_IN_FLIGHT);
    let mut sent: u64 = 0;
    let mut line_number: u64 = 0;
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = input
            .read_until(b'\n', &mut buffer)
            .await
            .context("reading events")?;
        if read == 0 {
            break;
        }
        line_number += 1;
        let line = trim_line_end(&buffer);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let outgoing = match prepare(line, args.raw, args.max_event_bytes, &nats.subjects) {
            Ok(outgoing) => outgoing,
            Err(problem) => {
                summary.invalid += 1;
                eprintln!("line {line_number}: {problem}");
                continue;
            }
        };
        if let Some(rate) = args.rate {
            // Pacing against the start time, not the previous send, keeps the average rate exact.
            tokio::time::sleep_until(started + Duration::from_secs_f64(sent as f64 / rate)).await;
        }
        if in_flight.len() >= MAX_IN_FLIGHT
            && let Some((number, ack)) = in_flight.pop_front()
        {
            settle(number, ack, &mut summary).await?;
        }
        let mut message = PublishMessage::build().payload(outgoing.payload);
        if let Some(id) = &outgoing.message_id {
            message = message.message_id(id);
        }
        match nats.js.send_publish(outgoing.subject, message).await {
            Ok(ack) => in_flight.push_back((line_number, ack)),
            Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                summary.invalid += 1;
                eprintln!("line {line_number}: larger than the server's max_payload: {err}");
                continue;
            }
            Err(err) => return Err(err).with_context(|| format!("publishing line {line_number}")),
        }
        sent += 1;
    }
    while let Some((number, ack)) = in_flight.pop_front() {
        settle(number, ack, &mut summary).await?;
    }
    summary.elapsed_seconds = started.elapsed().as_secs_f64();
    let acked = (summary.published + summary.duplicates) as f64;
    summary.events_per_second = if summary.elapsed_seconds > 0.0 {
        acked / summary.elapsed_seconds
    } else {
        0.0
    };
    if global.json {
        return emit_json(&summary);
    }
    emit(&key_values(&[
        ("published", summary.published.to_string()),
        ("duplicates", summary.duplicates.to_string()),
        ("invalid", summary.invalid.to_string()),
        ("elapsed", format!("{:.2}s", summary.elapsed_seconds)),
        ("events/s", format!("{:.0}", summary.events_per_second)),
    ]))
}

/// Waits for one publish ack and counts it.
async fn settle(
    line_number: u64,
    ack: PublishAckFuture,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    match ack.await {
        Ok(ack) if ack.duplicate => summary.duplicates += 1,
        Ok(_) => summary.published += 1,
        Err(err) if err.kind() == PublishErrorKind::StreamNotFound => {
            bail!(
                "line {line_number}: no stream stores event subjects; run `freshet provision` first"
            )
        }
        Err(err) => {
            return Err(err).with_context(|| format!("waiting for the ack of line {line_number}"));
        }
    }
    Ok(())
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
    fn ids_with_line_breaks_are_refused_instead_of_breaking_the_header() {
        let bad = VALID.replace("\"e1\"", "\"e\\r\\n1\"");
        let problem =
            prepare(bad.as_bytes(), false, DEFAULT_MAX_EVENT_BYTES, &subjects()).unwrap_err();
        assert!(problem.starts_with("invalid_envelope: id: "), "{problem}");
        let raw = prepare(bad.as_bytes(), true, DEFAULT_MAX_EVENT_BYTES, &subjects()).unwrap();
        assert_eq!(raw.message_id, None);
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
    fn rates_must_be_positive_and_finite() {
        assert_eq!(parse_rate("250").unwrap(), 250.0);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
