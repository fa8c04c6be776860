//! `freshet generate`: writes a story's synthetic stream (see [`crate::stories`]) to stdout as
//! JSON Lines CloudEvents, ready for `freshet publish`: the bookstore by default, or `--story
//! fraud` (card payments and chargebacks) or `--story sensors` (machine readings and failures).
//!
//! The bookstore stream starts now unless `--start` says otherwise: featurize refuses an event that comes
//! more than its allowed lateness behind the newest one it has seen, so a second run must not
//! go back to where the first began. Event ids carry the start, so a run that starts elsewhere
//! in time is other events, not duplicates of an earlier run's; the same seed and start give the
//! same stream, ids included.
//!
//! By default events are one second apart, so any label horizon passes within seconds. With
//! `--rate` they are live traffic instead: that many actions per second of event time from the
//! start, purchases some minutes after their views (a share of them much later, past the label
//! horizon) and users who leave for good. Send such a stream in real time with `freshet publish
//! --rate` at the same rate, so its event times stay near the clock.
//!
//! The fraud and sensors streams span days of event time (a chargeback comes days after its
//! payment), so without `--start` or `--rate` they end now rather than start now: history up to
//! the present, which featurize takes at once. With `--rate` they are live from `--start` (or
//! now) at that many events a second, like the bookstore.

use std::io::{BufWriter, ErrorKind, Write};

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use clap::Args;
use freshet::config::{parse_fraction, parse_positive};
use freshet::events::Event;
use freshet::ids::EntityId;

use crate::bookstore::{self, BookstoreConfig, Traffic, Viral};
use crate::stories::fraud::{self, FraudConfig};
use crate::stories::sensors::{self, SensorsConfig};

/// The stories `freshet generate` can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Story {
    /// Users viewing, carting and buying books
    Bookstore,
    /// Card payments, stolen cards used in bursts, chargebacks days later
    Fraud,
    /// Machines reporting four sensors, wearing out before they fail; sensors that stick
    Sensors,
}

/// Arguments of `freshet generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Which stream: the bookstore, card payments or machine sensors
    #[arg(long = "story", value_enum, default_value_t = Story::Bookstore)]
    pub story: Story,
    /// Number of users (u0001, u0002, ...)
    #[arg(long = "users", default_value_t = 100)]
    pub users: usize,
    /// Number of catalogue items (b0001, b0002, ...), each announced by a new_item event first
    #[arg(long = "items", default_value_t = 50)]
    pub items: usize,
    /// Number of user_action events after the catalogue; for fraud, of honest transactions;
    /// for sensors, of readings
    #[arg(long = "events", default_value_t = 10_000)]
    pub events: usize,
    /// fraud: number of cards (c00001, ...); one in ten is stolen at some point
    #[arg(long = "cards", default_value_t = 500)]
    pub cards: usize,
    /// fraud: the event time the transactions span, without --rate
    #[arg(long = "span", default_value = "30d", value_parser = humantime::parse_duration)]
    pub span: Duration,
    /// sensors: number of devices (d0001, ...), each reading four sensors
    #[arg(long = "devices", default_value_t = 20)]
    pub devices: usize,
    /// Random seed: the same seed gives the same stream, event ids included
    #[arg(long = "seed", default_value_t = 42)]
    pub seed: u64,
    /// Id of an item that appears part-way through and then draws much of the traffic
    #[arg(long = "viral-item")]
    pub viral_item: Option<EntityId>,
    /// Where the viral item appears, as a fraction of the user actions (0 to 1)
    #[arg(long = "viral-at", default_value_t = 0.5, requires = "viral_item", value_parser = parse_fraction)]
    pub viral_at: f64,
    /// Event time of the first event, in RFC 3339 (e.g. 2026-03-01T09:00:00Z) [default: now].
    /// featurize refuses events further ahead of the clock than its --max-future-skew, so a
    /// long stream that starts now is published at its own pace (freshet publish --rate) or
    /// started earlier
    #[arg(long = "start", value_parser = parse_start)]
    pub start: Option<DateTime<Utc>>,
    /// Live traffic: this many user actions per second of event time, from the start (see
    /// above)
    #[arg(long = "rate", value_parser = parse_positive)]
    pub rate: Option<f64>,
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

fn parse_start(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|err| {
            format!("{text:?} is not an RFC 3339 time such as 2026-03-01T09:00:00Z: {err}")
        })
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
                start: self.start(),
                rate,
                purchase_delay: self.purchase_delay,
                late_share: self.late_share,
                late_delay: self.late_delay,
                churn: self.churn,
            }),
        }
    }

    /// When the first event happens: `--start`, else now (to the second).
    pub fn start(&self) -> DateTime<Utc> {
        self.start.unwrap_or_else(|| Utc::now().trunc_subsecs(0))
    }
}

/// Moves the stream in time so its first event happens at `start`, keeping the gaps between
/// events, and gives each event an id that names the start (`<id>-<start in Unix seconds>`).
fn starting_at(mut events: Vec<Event>, start: DateTime<Utc>) -> Vec<Event> {
    let Some(first) = events.iter().find_map(|event| event.time) else {
        return events;
    };
    let shift = start - first;
    for event in &mut events {
        event.time = event.time.map(|time| time + shift);
        event.id = format!("{}-{}", event.id, start.timestamp());
    }
    events
}

impl GenerateArgs {
    /// The fraud story these arguments describe.
    pub fn fraud_config(&self) -> FraudConfig {
        let span = match self.rate {
            Some(rate) => Duration::from_secs_f64(self.events as f64 / rate),
            None => self.span,
        };
        let mut config =
            FraudConfig::new(self.story_start(span), self.cards, self.events, self.seed);
        config.span = span;
        config
    }

    /// The sensors story these arguments describe.
    pub fn sensors_config(&self) -> SensorsConfig {
        let mut config = SensorsConfig::new(self.start(), self.devices, self.events, self.seed);
        if let Some(rate) = self.rate {
            // Every device reads its four sensors once an interval.
            let per_second = rate / (self.devices.max(1) * sensors::SENSORS.len()) as f64;
            config.interval = Duration::from_secs_f64(1.0 / per_second);
        }
        config.start = self.story_start(config.span());
        config
    }

    /// Where a story spanning `span` starts: `--start`; under `--rate`, now; else `span` before
    /// now, so it ends now.
    fn story_start(&self, span: Duration) -> DateTime<Utc> {
        match (self.start, self.rate) {
            (Some(start), _) => start,
            (None, Some(_)) => self.start(),
            (None, None) => self.start() - chrono::Duration::from_std(span).unwrap_or_default(),
        }
    }
}

/// The JSON Lines of the stream `args` asks for.
fn stream_lines(args: &GenerateArgs) -> Vec<Vec<u8>> {
    match args.story {
        Story::Bookstore => starting_at(bookstore::generate(&args.config()), args.start())
            .iter()
            .map(Event::to_json_bytes)
            .collect(),
        Story::Fraud => cloud_event_lines(&fraud::generate(&args.fraud_config()).events),
        Story::Sensors => cloud_event_lines(&sensors::generate(&args.sensors_config()).events),
    }
}

fn cloud_event_lines(events: &[freshet::events::CloudEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|event| serde_json::to_vec(event).expect("a generated CloudEvent always serialises"))
        .collect()
}

/// Runs `freshet generate`.
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let lines = stream_lines(args);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let written = lines.iter().try_for_each(|line| {
        out.write_all(line)?;
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
        assert_eq!(args(&["--rate", "5", "--churn", "0.3"]).churn, 0.3);
        for bad in ["1.5", "-0.1", "NaN"] {
            assert!(try_args(&["--rate", "5", "--churn", bad]).is_err(), "{bad}");
        }
        assert!(try_args(&["--rate", "0"]).is_err());
    }

    fn try_args(extra: &[&str]) -> Result<GenerateArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            generate: GenerateArgs,
        }
        let argv = ["generate", "--users", "3", "--items", "2", "--events", "5"];
        clap::Parser::try_parse_from(argv.iter().chain(extra)).map(|cli: Cli| cli.generate)
    }

    fn args(extra: &[&str]) -> GenerateArgs {
        try_args(extra).unwrap()
    }

    fn stream(args: &GenerateArgs) -> Vec<Event> {
        starting_at(bookstore::generate(&args.config()), args.start())
    }

    #[test]
    fn the_stream_starts_at_the_time_asked_and_keeps_its_pace() {
        let args = args(&["--start", "2026-03-01T09:00:00+01:00"]);
        let start = DateTime::parse_from_rfc3339("2026-03-01T08:00:00Z").unwrap();
        let events = stream(&args);
        let times: Vec<_> = events.iter().map(|e| e.time.unwrap()).collect();
        assert_eq!(times[0], start);
        let original = bookstore::generate(&args.config());
        for (moved, was) in events.windows(2).zip(original.windows(2)) {
            assert_eq!(
                moved[1].time.unwrap() - moved[0].time.unwrap(),
                was[1].time.unwrap() - was[0].time.unwrap()
            );
        }
    }

    #[test]
    fn a_start_that_is_not_rfc_3339_is_refused() {
        assert!(parse_start("yesterday").is_err());
        assert!(parse_start("2026-03-01").is_err());
    }

    #[test]
    fn another_start_gives_other_ids_and_the_same_start_the_same_ones() {
        let first = stream(&args(&["--start", "2026-03-01T08:00:00Z"]));
        let again = stream(&args(&["--start", "2026-03-01T08:00:00Z"]));
        let later = stream(&args(&["--start", "2026-03-01T10:00:00Z"]));
        let ids = |events: &[Event]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&first), ids(&again));
        assert!(
            ids(&first).iter().all(|id| !ids(&later).contains(id)),
            "a run that starts elsewhere in time must not be taken for duplicates"
        );
    }

    #[test]
    fn without_start_the_stream_starts_now() {
        let before = Utc::now().trunc_subsecs(0);
        let events = stream(&args(&[]));
        let first = events[0].time.unwrap();
        assert!(first >= before && first <= Utc::now(), "{first} is not now");
    }

    #[test]
    fn a_rate_makes_live_traffic_from_the_start_given() {
        assert_eq!(args(&[]).config().traffic, None);
        let live = args(&[
            "--rate",
            "50",
            "--start",
            "2026-12-01T10:00:00Z",
            "--purchase-delay",
            "30s",
            "--churn",
            "0.1",
        ])
        .config();
        let traffic = live.traffic.unwrap();
        assert_eq!(traffic.rate, 50.0);
        assert_eq!(traffic.start.to_rfc3339(), "2026-12-01T10:00:00+00:00");
        assert_eq!(traffic.purchase_delay, Duration::from_secs(30));
        assert_eq!((traffic.late_share, traffic.churn), (0.1, 0.1));
        assert!(try_args(&["--churn", "0.1"]).is_err());
        assert!(try_args(&["--rate", "0"]).is_err());
    }

    /// Arguments with no bookstore sizes set.
    fn story_args(extra: &[&str]) -> GenerateArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            generate: GenerateArgs,
        }
        let cli: Cli = clap::Parser::try_parse_from(["generate"].iter().chain(extra)).unwrap();
        cli.generate
    }

    fn lines(extra: &[&str]) -> Vec<serde_json::Value> {
        stream_lines(&story_args(extra))
            .iter()
            .map(|line| serde_json::from_slice(line).unwrap())
            .collect()
    }

    #[test]
    fn the_fraud_and_sensors_stories_end_now_unless_told_where_to_start() {
        let fraud = lines(&["--story", "fraud", "--cards", "20", "--events", "300"]);
        let sensors = lines(&["--story", "sensors", "--devices", "2", "--events", "400"]);
        for stream in [&fraud, &sensors] {
            let last =
                DateTime::parse_from_rfc3339(stream.last().unwrap()["time"].as_str().unwrap())
                    .unwrap();
            let lag = Utc::now() - last.to_utc();
            assert!(
                lag >= chrono::Duration::zero() && lag < chrono::Duration::days(2),
                "lag {lag}"
            );
        }
        assert!(
            fraud
                .iter()
                .all(|e| ["transaction", "chargeback"].contains(&e["type"].as_str().unwrap()))
        );
        assert!(sensors.iter().any(|e| e["type"] == "reading"));

        let started = lines(&[
            "--story",
            "sensors",
            "--devices",
            "2",
            "--events",
            "400",
            "--start",
            "2026-03-01T08:00:00Z",
        ]);
        assert_eq!(
            started[0]["time"].as_str().unwrap().get(..16),
            Some("2026-03-01T08:00")
        );
    }

    #[test]
    fn a_rate_sets_the_pace_of_every_story() {
        let readings = story_args(&[
            "--story",
            "sensors",
            "--devices",
            "5",
            "--rate",
            "10",
            "--events",
            "1000",
        ]);
        // Five devices of four sensors at ten readings a second: each device every two seconds.
        assert_eq!(readings.sensors_config().interval, Duration::from_secs(2));
        let payments = story_args(&["--story", "fraud", "--rate", "2", "--events", "1000"]);
        assert_eq!(payments.fraud_config().span, Duration::from_secs(500));
    }
}
