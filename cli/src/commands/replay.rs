//! `freshet replay`: publishes a recorded stream of CloudEvents (JSON Lines, a file or stdin)
//! again at a chosen rate, to load-test the pipeline or rebuild what it derives.
//!
//! Each line goes where `freshet publish` would send it, validated the same way, with its id as
//! `Nats-Msg-Id` ([`prepare`], [`Publisher`], shared with `freshet publish`). Events are stored
//! in file order, each once: a replay rides out a server restart by sending again, in order and
//! under the same ids, what was not acknowledged, and running the same file again inside the
//! duplicate window resumes where the stream's acknowledgements say (see
//! [`crate::publisher`]). A line that is not a valid event is reported with its number and
//! skipped; it never stops the replay.
//!
//! With `--rate N` event `i` is sent at `start + i/N`: deadlines are absolute, so a slow send is
//! made up by the next ones and the rate does not drift. Without a rate (or with 0) events go
//! as fast as JetStream acknowledges them, with a bounded window of acks in flight. Progress is
//! a bar redrawn in place on stderr when stderr is a terminal, and a status line every few
//! seconds otherwise; the summary goes to stdout.
//!
//! The bar is hand-written (about 190 lines with its state, the status line and the terminal handling) rather than
//! indicatif's: a replay needs the status-line fallback off a terminal anyway, where indicatif
//! draws nothing, its figures (acknowledged, rejected, target rate) come from the publisher, not
//! from a counter the bar owns, and [`render_bar`] is a pure function the tests read. indicatif
//! 0.18 would add console, unit-prefix and itself to the build (see the parent module's note
//! for the measurement); it is the better choice once there are several bars at once or
//! spinners.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use freshet::config::parse_non_negative;
use freshet::events::DEFAULT_MAX_EVENT_BYTES;
use freshet::subjects::Subjects;
use serde::Serialize;
use tokio::time::Instant;

use super::{GlobalArgs, connect, emit, emit_json};
use crate::event_lines::{LineReader, open_input, pace_offset, prepare};
use crate::publisher::{MAX_IN_FLIGHT, Publisher, Summary};

/// How often the bar is redrawn on a terminal.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// How often a status line is written when stderr is not a terminal.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// Longest wait between progress updates while a slow replay waits for its next deadline.
const PACING_TICK: Duration = Duration::from_millis(250);

/// Arguments of `freshet replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// JSON Lines file of CloudEvents, or "-" for stdin
    pub file: PathBuf,
    /// Target events per second; 0 or unset replays as fast as JetStream acknowledges
    #[arg(long = "rate", value_parser = parse_non_negative)]
    pub rate: Option<f64>,
    /// Replay only the first N events (non-blank lines, valid or not) of the input
    #[arg(long = "limit")]
    pub limit: Option<u64>,
    /// Largest event accepted, in bytes; larger lines are reported and skipped
    #[arg(long = "max-event-bytes", env = "FRESHET_MAX_EVENT_BYTES", default_value_t = DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// How long an event may go unacknowledged, sent again all the while, before the replay
    /// gives up; keep it inside the EVENTS duplicate window (FRESHET_DUPLICATE_WINDOW), within
    /// which a resent event is stored once
    #[arg(long = "retry-for", env = "FRESHET_RETRY_FOR", default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
}

/// What a replay did, for `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplaySummary {
    /// Events JetStream stored.
    pub published: u64,
    /// Events JetStream recognised by id and did not store again.
    pub duplicates: u64,
    /// Lines that were not valid events, skipped.
    pub rejected: u64,
    /// Sends repeated after an acknowledgement failed (the server restarting, say).
    pub resent: u64,
    pub elapsed_seconds: f64,
    /// Acknowledged events (stored or duplicate) per second.
    pub events_per_second: f64,
    /// The rate asked for; `None` when unpaced.
    pub target_rate: Option<f64>,
}

impl ReplaySummary {
    fn new(summary: &Summary, target_rate: Option<f64>) -> ReplaySummary {
        ReplaySummary {
            published: summary.published,
            duplicates: summary.duplicates,
            rejected: summary.invalid,
            resent: summary.resent,
            elapsed_seconds: summary.elapsed_seconds,
            events_per_second: summary.events_per_second,
            target_rate,
        }
    }

    /// The one-line human form.
    pub fn line(&self) -> String {
        let resent = if self.resent > 0 {
            format!(", {} sends repeated", self.resent)
        } else {
            String::new()
        };
        format!(
            "replayed: {} published, {} duplicates, {} rejected lines{resent} in {:.2}s ({:.1} events/s{})",
            self.published,
            self.duplicates,
            self.rejected,
            self.elapsed_seconds,
            self.events_per_second,
            self.target_rate
                .map_or_else(String::new, |rate| format!(", target {rate}"))
        )
    }
}

/// Where a replay stands, for the progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressState {
    /// Lines handled (sent or rejected).
    pub done: u64,
    /// Lines the replay will handle, when known (a file, not stdin).
    pub total: Option<u64>,
    pub rejected: u64,
    pub elapsed: Duration,
}

impl ProgressState {
    /// Lines handled per second so far.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.done as f64 / seconds
        } else {
            0.0
        }
    }

    /// Time left at the rate so far; unknown without a total or before anything was done.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.total?;
        let rate = self.rate();
        (rate > 0.0).then(|| Duration::from_secs_f64(total.saturating_sub(self.done) as f64 / rate))
    }

    fn counts(&self) -> String {
        match self.total {
            Some(total) => {
                let percent = (self.done.min(total) * 100)
                    .checked_div(total)
                    .unwrap_or(100);
                format!("{}/{total} {percent:>3}%", self.done)
            }
            None => format!("{} events", self.done),
        }
    }

    fn timing(&self) -> String {
        let mut text = format!(
            "{:.1} ev/s  elapsed {}",
            self.rate(),
            format_clock(self.elapsed)
        );
        if self.total.is_some() {
            let eta = self.eta().map_or_else(|| "?".to_string(), format_clock);
            text.push_str(&format!("  ETA {eta}"));
        }
        if self.rejected > 0 {
            text.push_str(&format!("  {} rejected", self.rejected));
        }
        text
    }
}

/// The progress bar line, at most `width - 1` characters so redrawing with `\r` never wraps:
/// `[#########---------] 450/1000  45%  200.0 ev/s  elapsed 0:02  ETA 0:03`. The bar narrows
/// to fit, and goes when there is no room for it or no total to measure against.
pub fn render_bar(state: &ProgressState, width: usize) -> String {
    let text = format!("{}  {}", state.counts(), state.timing());
    let room = width.saturating_sub(1);
    let Some(total) = state.total else {
        return truncate(&text, room);
    };
    // One of two fixed widths, so the bar does not jitter as the numbers grow.
    let spare = room.saturating_sub(text.chars().count() + 3);
    let bar_width = match spare {
        30.. => 30,
        12.. => 12,
        _ => return truncate(&text, room),
    };
    let filled = if total == 0 {
        bar_width
    } else {
        (state.done.min(total) as f64 / total as f64 * bar_width as f64) as usize
    };
    format!(
        "[{}{}] {text}",
        "#".repeat(filled),
        "-".repeat(bar_width - filled)
    )
}

/// The status line written every few seconds when stderr is not a terminal.
pub fn render_status(state: &ProgressState) -> String {
    format!("replay: {}  {}", state.counts(), state.timing())
}

fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

/// A duration as a clock: "0:07", "2:05", "1:02:03".
pub fn format_clock(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, secs) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}:{minutes:02}:{secs:02}")
    } else {
        format!("{minutes}:{secs:02}")
    }
}

/// The progress display on stderr: a bar redrawn in place on a terminal, else a status line
/// every [`STATUS_EVERY`]. Notes (rejected lines) are printed above the bar.
struct Progress {
    terminal: bool,
    width: usize,
    total: Option<u64>,
    started: Instant,
    last_shown: Option<Instant>,
    /// Whether a bar is on screen and must be cleared before other output.
    drawn: bool,
}

impl Progress {
    fn new(total: Option<u64>, started: Instant) -> Progress {
        // The width of the terminal, as the shell exports it; 80 columns otherwise.
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .filter(|&c: &usize| c >= 20)
            .unwrap_or(80);
        Progress {
            terminal: std::io::stderr().is_terminal(),
            width,
            total,
            started,
            last_shown: None,
            drawn: false,
        }
    }

    fn state(&self, done: u64, summary: &Summary) -> ProgressState {
        ProgressState {
            done,
            total: self.total,
            rejected: summary.invalid,
            elapsed: self.started.elapsed(),
        }
    }

    /// Shows the progress if it is time to.
    fn update(&mut self, done: u64, summary: &Summary) {
        let now = Instant::now();
        let every = if self.terminal {
            REDRAW_EVERY
        } else {
            STATUS_EVERY
        };
        match self.last_shown {
            Some(last) if now - last < every => return,
            None if !self.terminal && now - self.started < every => return,
            _ => {}
        }
        self.last_shown = Some(now);
        let state = self.state(done, summary);
        let mut err = std::io::stderr().lock();
        // Progress is a courtesy: a stderr that cannot be written must not stop the replay.
        let _ = if self.terminal {
            self.drawn = true;
            write!(err, "\r{}\x1b[K", render_bar(&state, self.width)).and_then(|()| err.flush())
        } else {
            writeln!(err, "{}", render_status(&state))
        };
    }

    /// Prints a message on a line of its own, above the bar.
    fn note(&mut self, message: &str) {
        self.clear();
        eprintln!("{message}");
        self.last_shown = self.last_shown.filter(|_| !self.terminal);
    }

    /// Removes the bar from the screen.
    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[K");
            self.drawn = false;
        }
    }
}

/// Non-blank lines in the input (up to `limit`) when it is a regular file: the progress total.
/// `None` for stdin or a pipe, which cannot be read twice.
async fn count_events(file: &std::path::Path, limit: Option<u64>) -> anyhow::Result<Option<u64>> {
    if file.as_os_str() == "-" {
        return Ok(None);
    }
    match tokio::fs::metadata(file).await {
        Ok(meta) if meta.is_file() => {}
        _ => return Ok(None),
    }
    let mut lines = LineReader::new(open_input(Some(file)).await?);
    let mut count = 0;
    while limit.is_none_or(|limit| count < limit) && lines.next_line().await?.is_some() {
        count += 1;
    }
    Ok(Some(count))
}

/// Runs `freshet replay`.
pub async fn run(global: &GlobalArgs, args: &ReplayArgs) -> anyhow::Result<()> {
    let total = count_events(&args.file, args.limit).await?;
    let mut lines = LineReader::new(open_input(Some(&args.file)).await?);
    let nats = connect(global).await?;
    let rate = args.rate.filter(|&rate| rate > 0.0);
    let mut publisher = Publisher::new(nats.client.clone(), MAX_IN_FLIGHT, args.retry_for);
    let started = Instant::now();
    let mut progress = Progress::new(total, started);
    let replayed = replay_lines(
        &mut lines,
        &mut publisher,
        &mut progress,
        args,
        rate,
        &nats.subjects,
    )
    .await;
    // The bar goes before anything else is printed, an error included.
    progress.clear();
    replayed?;
    let mut summary = publisher.summary().clone();
    summary.finish(started.elapsed());
    let summary = ReplaySummary::new(&summary, rate);
    if global.json {
        return emit_json(&summary);
    }
    emit(&format!("{}\n", summary.line()))
}

/// Sends every line (up to the limit), each at its deadline when paced, and waits for the last
/// ack.
async fn replay_lines(
    lines: &mut LineReader,
    publisher: &mut Publisher,
    progress: &mut Progress,
    args: &ReplayArgs,
    rate: Option<f64>,
    subjects: &Subjects,
) -> anyhow::Result<()> {
    let mut done: u64 = 0;
    while args.limit.is_none_or(|limit| done < limit) {
        let Some((line_number, line)) = lines.next_line().await? else {
            break;
        };
        done += 1;
        match prepare(line, false, args.max_event_bytes, subjects) {
            Err(problem) => {
                publisher.refuse();
                progress.note(&format!("line {line_number}: {problem}"));
            }
            Ok(outgoing) => {
                if let Some(rate) = rate {
                    let deadline = progress.started + pace_offset(publisher.sent(), rate);
                    // Wait in short steps, so a slow replay's progress keeps moving.
                    while Instant::now() < deadline {
                        publisher
                            .settle_until(deadline.min(Instant::now() + PACING_TICK))
                            .await?;
                        progress.update(done - 1, publisher.summary());
                    }
                }
                if let Err(problem) = publisher.send(line_number, outgoing).await? {
                    progress.note(&format!("line {line_number}: {problem}"));
                }
            }
        }
        progress.update(done, publisher.summary());
    }
    publisher.settle_all().await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn state(done: u64, total: Option<u64>, seconds: u64) -> ProgressState {
        ProgressState {
            done,
            total,
            rejected: 0,
            elapsed: Duration::from_secs(seconds),
        }
    }

    #[test]
    fn rates_may_be_zero_for_unpaced() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            replay: ReplayArgs,
        }
        let rate = |text: &str| {
            clap::Parser::try_parse_from(["replay", "events.jsonl", "--rate", text])
                .map(|cli: Cli| cli.replay.rate)
        };
        assert_eq!(rate("0").unwrap(), Some(0.0));
        assert_eq!(rate("2.5").unwrap(), Some(2.5));
        for bad in ["-1", "NaN", "fast"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_eta_follows_the_rate_so_far() {
        let s = state(450, Some(1000), 2);
        assert_eq!(s.rate(), 225.0);
        assert_eq!(s.eta().unwrap().as_secs_f64().round(), 2.0);
        assert_eq!(state(0, Some(10), 0).eta(), None);
        assert_eq!(state(5, None, 1).eta(), None);
        assert_eq!(state(10, Some(10), 1).eta(), Some(Duration::ZERO));
    }

    #[test]
    fn the_bar_shows_counts_rate_and_times_within_the_width() {
        let line = render_bar(&state(450, Some(1000), 2), 80);
        assert!(
            line.ends_with("] 450/1000  45%  225.0 ev/s  elapsed 0:02  ETA 0:02"),
            "{line}"
        );
        assert!(line.starts_with("[#"), "{line}");
        assert!(line.chars().count() < 80, "{line}");
        let filled = line.chars().filter(|&c| c == '#').count();
        let empty = line.chars().filter(|&c| c == '-').count();
        assert_eq!(filled, (filled + empty) * 45 / 100, "{line}");

        let full = render_bar(&state(1000, Some(1000), 5), 80);
        assert!(!full.contains('-'), "{full}");
        assert!(full.contains("1000/1000 100%"), "{full}");
    }

    #[test]
    fn a_narrow_terminal_drops_the_bar_and_truncates() {
        let line = render_bar(&state(450, Some(1000), 2), 40);
        assert!(line.starts_with("450/1000"), "{line}");
        assert_eq!(line.chars().count(), 39);
    }

    #[test]
    fn without_a_total_there_is_no_bar_and_no_eta() {
        let line = render_bar(&state(30, None, 3), 80);
        assert_eq!(line, "30 events  10.0 ev/s  elapsed 0:03");
        let status = render_status(&ProgressState {
            rejected: 2,
            ..state(30, Some(60), 3)
        });
        assert_eq!(
            status,
            "replay: 30/60  50%  10.0 ev/s  elapsed 0:03  ETA 0:03  2 rejected"
        );
    }

    #[test]
    fn clocks_are_compact() {
        assert_eq!(format_clock(Duration::from_millis(7900)), "0:07");
        assert_eq!(format_clock(Duration::from_secs(125)), "2:05");
        assert_eq!(format_clock(Duration::from_secs(3723)), "1:02:03");
    }

    #[test]
    fn the_summary_line_says_everything_once() {
        let mut counts = Summary {
            published: 95,
            duplicates: 5,
            invalid: 1,
            ..Default::default()
        };
        counts.finish(Duration::from_millis(500));
        let summary = ReplaySummary::new(&counts, Some(200.0));
        assert_eq!(
            summary.line(),
            "replayed: 95 published, 5 duplicates, 1 rejected lines in 0.50s (200.0 events/s, target 200)"
        );
        assert!(!ReplaySummary::new(&counts, None).line().contains("target"));
        counts.resent = 12;
        assert_eq!(
            ReplaySummary::new(&counts, None).line(),
            "replayed: 95 published, 5 duplicates, 1 rejected lines, 12 sends repeated in 0.50s (200.0 events/s)"
        );
    }
}
