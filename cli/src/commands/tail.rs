//! `freshet tail`: the last messages of a stream (dead letters, CONTROL events, events,
//! examples, predictions), readable, and with `--follow` every new one as it is stored.
//!
//! It reads with an ephemeral ordered consumer, so it acknowledges nothing and changes nothing.
//! Human output is one line per message: sequence, time, subject, the dead-letter reason and
//! detail when there are any, and the payload (cut at `--width`). `--json` prints one JSON object
//! per line (JSON Lines, for `jq`): the payload as JSON when it is JSON, else as text.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use clap::{Args, ValueEnum};
use freshet::subjects::{
    HEADER_DETAIL, HEADER_FUNCTION, HEADER_REASON, STREAM_CONTROL, STREAM_DEAD_LETTER,
    STREAM_EVENTS, STREAM_EXAMPLES, STREAM_PREDICTIONS,
};
use futures::StreamExt;
use serde::Serialize;

use super::{GlobalArgs, NotFound, connect, emit};

/// Which stream to tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// Refused input, with its reason (DEAD_LETTER)
    DeadLetter,
    /// Drift detections, gate decisions, versions, quarantines (CONTROL)
    Control,
    /// Incoming events (EVENTS)
    Events,
    /// Labelled examples (EXAMPLES)
    Examples,
    /// Recorded predictions (PREDICTIONS)
    Predictions,
}

impl Source {
    fn stream(self) -> &'static str {
        match self {
            Source::DeadLetter => STREAM_DEAD_LETTER,
            Source::Control => STREAM_CONTROL,
            Source::Events => STREAM_EVENTS,
            Source::Examples => STREAM_EXAMPLES,
            Source::Predictions => STREAM_PREDICTIONS,
        }
    }
}

/// Arguments of `freshet tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// What to read
    #[arg(value_enum)]
    pub source: Source,
    /// Start with this many of the newest messages (0: only new ones, with --follow)
    #[arg(long = "last", default_value_t = 10)]
    pub last: u64,
    /// Keep printing new messages as they are stored, until interrupted
    #[arg(long = "follow", short = 'f')]
    pub follow: bool,
    /// Only messages on subjects matching this filter (e.g. 'freshet.dead_letter.featurize.>')
    #[arg(long = "subject")]
    pub subject: Option<String>,
    /// Characters of payload shown per line (human output)
    #[arg(long = "width", default_value_t = 160)]
    pub width: usize,
}

/// One message, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Line {
    sequence: u64,
    time: String,
    subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function: Option<String>,
    payload: serde_json::Value,
}

/// The payload as JSON if it is JSON, else as (lossy) text.
fn payload_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// `text` cut to `width` characters, with an ellipsis when cut.
fn cut(text: &str, width: usize) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(width).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

fn human(line: &Line, width: usize) -> String {
    let payload = match &line.payload {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let why = match (&line.reason, &line.detail) {
        (Some(reason), Some(detail)) => format!("  [{reason}: {detail}]"),
        (Some(reason), None) => format!("  [{reason}]"),
        _ => String::new(),
    };
    format!(
        "{:>8}  {}  {}{why}  {}\n",
        line.sequence,
        line.time,
        line.subject,
        cut(&payload.replace('\n', " "), width)
    )
}

pub async fn run(global: &GlobalArgs, args: &TailArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let name = args.source.stream();
    let mut stream = nats
        .js
        .get_stream(name)
        .await
        .map_err(|_| NotFound(format!("no stream {name} (run `freshet provision`)")))?;
    let state = stream
        .info()
        .await
        .context("reading the stream")?
        .state
        .clone();
    if state.messages == 0 && !args.follow {
        return Ok(());
    }
    let start = state
        .last_sequence
        .saturating_sub(args.last.saturating_sub(1))
        .max(state.first_sequence);
    let deliver_policy = if args.last == 0 {
        DeliverPolicy::New
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: start,
        }
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy,
            filter_subject: args.subject.clone().unwrap_or_default(),
            ..Default::default()
        })
        .await
        .context("opening an ordered consumer")?;
    let mut messages = consumer.messages().await.context("reading the stream")?;
    loop {
        // Without --follow, stop once nothing newer than the last stored message is left.
        let next = if args.follow {
            messages.next().await
        } else {
            match tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
                Ok(next) => next,
                Err(_) => break,
            }
        };
        let Some(message) = next else { break };
        let message = message
            .map_err(|e| anyhow::anyhow!(e))
            .context("reading a message")?;
        let info = message.info().map_err(|e| anyhow::anyhow!(e))?;
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let line = Line {
            sequence: info.stream_sequence,
            time: chrono::DateTime::from_timestamp_nanos(
                i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX),
            )
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            subject: message.subject.to_string(),
            reason: header(HEADER_REASON),
            detail: header(HEADER_DETAIL),
            function: header(HEADER_FUNCTION),
            payload: payload_value(&message.payload),
        };
        if global.json {
            let mut text = serde_json::to_string(&line).context("encoding JSON output")?;
            text.push('\n');
            emit(&text)?;
        } else {
            emit(&human(&line, args.width))?;
        }
        if !args.follow && info.stream_sequence >= state.last_sequence {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_when_they_can_be_and_cut_for_people() {
        assert_eq!(payload_value(br#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(
            payload_value(b"{\"a\":\xff"),
            serde_json::Value::String("{\"a\":\u{fffd}".into())
        );
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("abc", 3), "abc");
        let line = Line {
            sequence: 7,
            time: "2026-11-27T06:00:00Z".into(),
            subject: "freshet.dead_letter.featurize.malformed_json".into(),
            reason: Some("malformed_json".into()),
            detail: Some("EOF while parsing".into()),
            function: Some("featurize".into()),
            payload: serde_json::Value::String("{\"id\":".into()),
        };
        assert_eq!(
            human(&line, 80),
            "       7  2026-11-27T06:00:00Z  freshet.dead_letter.featurize.malformed_json  [malformed_json: EOF while parsing]  {\"id\":\n"
        );
    }
}
