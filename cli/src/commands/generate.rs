//! `freshet generate`: writes the synthetic bookstore stream (see [`crate::bookstore`]) to stdout
//! as JSON Lines CloudEvents, ready for `freshet publish`.

use std::io::{BufWriter, ErrorKind, Write};

use anyhow::Context;
use clap::Args;
use freshet::ids::EntityId;

use crate::bookstore::{self, BookstoreConfig, Viral};

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
            traffic: None,
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
}
