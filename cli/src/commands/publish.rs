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
//! The input is read and each line routed by [`crate::event_lines`], which `freshet replay`
//! shares.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use freshet::config::parse_positive;
use freshet::events::DEFAULT_MAX_EVENT_BYTES;
use tokio::time::Instant;

use super::{GlobalArgs, connect, emit, emit_json, key_values};
use crate::event_lines::{LineReader, open_input, pace_offset, prepare};
use crate::publisher::{MAX_IN_FLIGHT, Publisher};

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
    #[arg(long = "rate", value_parser = parse_positive)]
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

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
    fn rates_must_be_positive_and_finite() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            publish: PublishArgs,
        }
        let rate = |text: &str| {
            clap::Parser::try_parse_from(["publish", "--rate", text])
                .map(|cli: Cli| cli.publish.rate)
        };
        assert_eq!(rate("250").unwrap(), Some(250.0));
        for bad in ["0", "-3", "inf", "fast"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
    }
}
