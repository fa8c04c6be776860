//! `freshet generate`: writes the synthetic bookstore stream (see [`crate::bookstore`]) to stdout
//! as JSON Lines CloudEvents, ready for `freshet publish`.
//!
//! By default events are one second apart from a fixed start, so any label horizon passes within
//! seconds. With `--rate` they are live traffic instead: that many actions per second of event
//! time from now (or `--start`), purchases some minutes after their views (a share of them much
//! later, past the label horizon) and users who leave for good. Send such a stream in real time
//! with `freshet replay --rate` at the same rate, so its event times stay near the clock.

use std::io::{BufWriter, ErrorKind, Write};

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use freshet::ids::EntityId;

use crate::bookstore::{self, BookstoreConfig, Traffic, Viral};

/// Arguments of `freshet generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Number of users (u0001, u0002, ...)
    #[arg(long = "users", default_value_t = 100)]
    pub users: usize,
    /// Number of catalogue items (b0001, b0002, ...), each announced by a new_item event first
    #[arg(long = "items", default_value_t = 50)]
    pub items: usize,
    /// Number of user_action events after the catalogue
    #[arg(long = "events", default_value_t = 10_000)]
    pub events: usize,
    /// Random seed: the same seed gives the same stream, event ids included
    #[arg(long = "seed", default_value_t = 42)]
    pub seed: u64,
    /// Id of an item that appears part-way through and then draws much of the traffic
    #[arg(long = "viral-item")]
    pub viral_item: Option<EntityId>,
    /// Where the viral item appears, as a fraction of the user actions (0 to 1)
    #[arg(long = "viral-at", default_value_t = 0.5, requires = "viral_item", value_parser = parse_fraction)]
    pub viral_at: f64,
    /// Live traffic: this many user actions per second of event time, from --start (see above)
    #[arg(long = "rate", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// When live traffic begins (RFC 3339); now when absent
    #[arg(long = "start", requires = "rate")]
    pub start: Option<DateTime<Utc>>,
    /// Mean delay from a view to the purchase that follows it, under --rate
    #[arg(long = "purchase-delay", default_value = "2m", requires = "rate", value_parser = humantime::parse_duration)]
    pub purchase_delay: Duration,
    /// Share of purchases made much later, under --rate
    #[arg(long = "late-share", default_value_t = 0.1, requires = "rate", value_parser = parse_fraction)]
    pub late_share: f64,
    /// Mean delay of those late purchases, under --rate
    #[arg(long = "late-delay", default_value = "1h", requires = "rate", value_parser = humantime::parse_duration)]
    pub late_delay: Duration,
    /// Chance that a user leaves for good after a visit, under --rate
    #[arg(long = "churn", default_value_t = 0.02, requires = "rate", value_parser = parse_fraction)]
    pub churn: f64,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of actions per second"
        )),
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a fraction between 0 and 1")),
    }
}

impl GenerateArgs {
    /// The generator settings these arguments describe.
    pub fn config(&self) -> BookstoreConfig {
        BookstoreConfig {
            users: self.users,
            items: self.items,
            actions: self.events,
            seed: self.seed,
            viral: self.viral_item.clone().map(|item| Viral {
                item,
                at: self.viral_at,
            }),
            changes: Vec::new(),
            traffic: self.rate.map(|rate| Traffic {
                start: self.start.unwrap_or_else(Utc::now),
                rate,
                purchase_delay: self.purchase_delay,
                late_share: self.late_share,
                late_delay: self.late_delay,
                churn: self.churn,
            }),
        }
    }
}

/// Runs `freshet generate`.
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let events = bookstore::generate(&args.config());
    let mut out = BufWriter::new(std::io::stdout().lock());
    let written = events.iter().try_for_each(|event| {
        out.write_all(&event.to_json_bytes())?;
        out.write_all(b"\n")
    });
    match written.and_then(|()| out.flush()) {
        // `freshet generate | head` closing the pipe early is the reader's choice, not an error.
        Err(err) if err.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing events to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_between_zero_and_one() {
        assert_eq!(parse_fraction("0.3"), Ok(0.3));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("NaN").is_err());
    }

    #[test]
    fn a_rate_makes_live_traffic_from_the_start_given() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            generate: GenerateArgs,
        }
        let fixed = Cli::parse_from(["generate"]).generate.config();
        assert_eq!(fixed.traffic, None);
        let live = Cli::parse_from([
            "generate",
            "--rate",
            "50",
            "--start",
            "2026-12-01T10:00:00Z",
            "--purchase-delay",
            "30s",
            "--churn",
            "0.1",
        ])
        .generate
        .config();
        let traffic = live.traffic.unwrap();
        assert_eq!(traffic.rate, 50.0);
        assert_eq!(traffic.start.to_rfc3339(), "2026-12-01T10:00:00+00:00");
        assert_eq!(traffic.purchase_delay, Duration::from_secs(30));
        assert_eq!((traffic.late_share, traffic.churn), (0.1, 0.1));
        assert!(Cli::try_parse_from(["generate", "--churn", "0.1"]).is_err());
        assert!(Cli::try_parse_from(["generate", "--rate", "0"]).is_err());
    }
}
