//! The `freshet` subcommands, and what they all share: the global settings, connecting to NATS
//! (and failing fast when no server answers), printing aligned tables or JSON, and mapping an
//! error to the process exit code (1 operational, 3 not found; clap exits 2 on usage errors).
//!
//! [`Table`] is hand-written on purpose (as is `freshet replay`'s progress bar, see
//! [`replay`]): it is 75 lines, and its output is plain text columns separated by spaces, which
//! scripts cut with awk and tests compare byte for byte. comfy-table 8 draws bordered tables by
//! default and sizes them to the terminal through crossterm; used plainly it would do what this
//! does, for crates the workspace does not have yet (comfy-table and crossterm; for the bar,
//! indicatif, console and unit-prefix): five crates and about 19 s of a clean build on two cores
//! for the pair (measured with indicatif 0.18 and comfy-table 8.0). Worth adopting when a table must wrap cells to the
//! terminal's width, or handle wide (CJK, emoji) characters, which [`Table`] counts as one
//! column each.

pub mod declare;
pub mod demo;
pub mod generate;
pub mod models;
pub mod predict;
pub mod provision;
pub mod publish;
pub mod replay;
pub mod status;
pub mod tail;
pub mod view;

use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::connection::State;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use clap::Args;
use freshet::config::CommonArgs;
use freshet::subjects::Subjects;
use freshet_model::store::ArtifactArgs;
use serde::Serialize;

/// The name this tool's connections carry in the server's connection list.
const CONNECTION_NAME: &str = "freshet-cli";

/// Settings every command accepts. `main` marks them global, so they may follow the subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub artifacts: ArtifactArgs,
    /// Print machine-readable JSON on stdout instead of tables
    #[arg(long = "json")]
    pub json: bool,
    /// How long to wait for a NATS server to accept the connection before giving up
    #[arg(long = "connect-timeout", env = "FRESHET_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Diagnostics filter for stderr, in tracing's EnvFilter syntax (e.g. "info,freshet=debug")
    #[arg(long = "log", env = "FRESHET_LOG", default_value = "warn")]
    pub log: String,
}

/// A ready connection: the client, its JetStream context and the subject names.
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
}

/// Connects and waits until the server has accepted the connection.
///
/// `freshet::connect::connect` retries the first connection forever in the background (right for
/// a function waiting out a server restart), so by itself a command against a server that is down
/// would hang on its first request; an operator wants a prompt, clear error instead.
pub async fn connect(global: &GlobalArgs) -> anyhow::Result<Nats> {
    let subjects = global.common.subjects()?;
    let client = freshet::connect::connect(&global.common.nats, CONNECTION_NAME).await?;
    let deadline = Instant::now() + global.connect_timeout;
    while client.connection_state() != State::Connected {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "no NATS server accepted a connection at {} within {} (is it running? are the credentials right?)",
                global.common.nats.urls.join(","),
                humantime::format_duration(global.connect_timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let js = global.common.nats.jetstream(client.clone());
    Ok(Nats {
        client,
        js,
        subjects,
    })
}

/// Opens the artifact store the global settings name.
pub fn open_artifacts(global: &GlobalArgs) -> anyhow::Result<freshet_model::store::ArtifactStore> {
    Ok(global.artifacts.open()?)
}

/// The error of a command asked about something that does not exist (exit code 3).
#[derive(Debug)]
pub struct NotFound(pub String);

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// Exit code for "not found".
pub const EXIT_NOT_FOUND: u8 = 3;
/// Exit code for an operational error.
pub const EXIT_FAILURE: u8 = 1;

/// The exit code an error stands for: 3 when something asked for does not exist, else 1.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    if err.chain().any(|cause| cause.is::<NotFound>()) {
        ExitCode::from(EXIT_NOT_FOUND)
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// The error and its causes on one line, each cause once. Many library errors print their
/// source in their own message and also return it as `source()`, so a plain `{:#}` would say
/// the same thing twice.
pub fn error_message(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Writes `text` to stdout. A closed pipe (`freshet status | head`) is not an error: the reader
/// has all it wanted.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("writing to stdout")
        }
        _ => Ok(()),
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn emit_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON output")?;
    text.push('\n');
    emit(&text)
}

/// A table printed with aligned columns: text left-aligned, chosen columns (numbers) right-aligned.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right_aligned: Vec<usize>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            right_aligned: Vec::new(),
        }
    }

    /// Right-aligns the columns at these indexes, as numbers read best.
    pub fn align_right(mut self, columns: &[usize]) -> Table {
        self.right_aligned = columns.to_vec();
        self
    }

    /// Adds a row; missing cells print empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn cell(&self, row: usize, column: usize) -> &str {
        self.rows[row].get(column).map(String::as_str).unwrap_or("")
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.header.len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                let cells = (0..self.rows.len()).map(|r| self.cell(r, c).chars().count());
                cells
                    .chain([self.header[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut line = |cells: Vec<&str>| -> fmt::Result {
            let mut text = String::new();
            for (c, cell) in cells.into_iter().enumerate() {
                if c > 0 {
                    text.push_str("  ");
                }
                let pad = " ".repeat(widths[c].saturating_sub(cell.chars().count()));
                if self.right_aligned.contains(&c) {
                    text.push_str(&pad);
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    text.push_str(&pad);
                }
            }
            writeln!(f, "{}", text.trim_end())
        };
        line(self.header.iter().map(String::as_str).collect())?;
        for row in 0..self.rows.len() {
            line((0..columns).map(|c| self.cell(row, c)).collect())?;
        }
        Ok(())
    }
}

/// Aligned `key  value` lines, for one record (a manifest, a prediction, a summary).
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(key, value)| format!("{key:<width$}  {value}\n"))
        .collect()
}

/// How long ago `then` was, compactly ("42s", "3m 5s", "2h 10m", "4d 3h"). A time in the future
/// (clock skew between hosts) reads as "0s" rather than a negative age.
pub fn format_age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format_age_seconds(age_seconds(then, now))
}

/// Whole seconds from `then` to `now`, never negative.
pub fn age_seconds(then: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    u64::try_from((now - then).num_seconds()).unwrap_or(0)
}

/// An age given in whole seconds, in the compact form of [`format_age`].
pub fn format_age_seconds(seconds: u64) -> String {
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{minutes}m {secs}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// A byte count in binary units ("512 B", "1.5 KiB", "3.2 GiB").
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Whether a JetStream "get stream" error means the stream does not exist (as opposed to the
/// request failing).
pub fn is_stream_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let mut table = Table::new(&["NAME", "COUNT"]).align_right(&[1]);
        table.row(vec!["EVENTS".into(), "12".into()]);
        table.row(vec!["DEAD_LETTER".into(), "3".into()]);
        assert_eq!(
            table.to_string(),
            "NAME         COUNT\nEVENTS          12\nDEAD_LETTER      3\n"
        );
    }

    #[test]
    fn tables_tolerate_short_rows_and_no_rows() {
        let mut table = Table::new(&["A", "B"]);
        assert!(table.is_empty());
        assert_eq!(table.to_string(), "A  B\n");
        table.row(vec!["x".into()]);
        assert_eq!(table.to_string(), "A  B\nx\n");
    }

    #[test]
    fn ages_are_compact_and_never_negative() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let after = |s: i64| t0 + chrono::Duration::seconds(s);
        assert_eq!(format_age(t0, after(42)), "42s");
        assert_eq!(format_age(t0, after(185)), "3m 5s");
        assert_eq!(format_age(t0, after(2 * 3600 + 600)), "2h 10m");
        assert_eq!(format_age(t0, after(4 * 86_400 + 3 * 3600)), "4d 3h");
        assert_eq!(format_age(after(10), t0), "0s");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn not_found_maps_to_exit_code_3_even_under_context() {
        let err = anyhow::Error::new(NotFound("model x".into())).context("showing model x");
        assert_eq!(exit_code(&err), ExitCode::from(EXIT_NOT_FOUND));
        assert_eq!(
            exit_code(&anyhow::anyhow!("boom")),
            ExitCode::from(EXIT_FAILURE)
        );
    }

    #[test]
    fn error_messages_say_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "cannot read t.toml: {}", self.0)
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = anyhow::Error::new(Wrapper(io)).context("provisioning");
        assert_eq!(
            error_message(&err),
            "provisioning: cannot read t.toml: no such file"
        );
    }

    #[test]
    fn key_values_align_on_the_longest_key() {
        assert_eq!(
            key_values(&[("a", "1".into()), ("long", "2".into())]),
            "a     1\nlong  2\n"
        );
    }
}
