//! The synthetic streams `freshet generate` writes and the demos tell, one story a domain:
//!
//! - [`bookstore`]: users viewing, carting and buying books (recommendations);
//! - [`fraud`]: card transactions, a few cards stolen and used in bursts, chargebacks days later
//!   (fraud detection, with labels that arrive late);
//! - [`sensors`]: machines reporting four sensors, wearing out before they fail, and sensors
//!   that stick or report the impossible (predictive maintenance, with bad data to refuse).
//!
//! Each is deterministic (the same settings and seed give the same events, ids included) and
//! carries a signal that only state over time reveals: a model on the raw fields of one event
//! alone does worse than one on the features an entity's history gives. Each story also returns
//! its ground truth (which transactions were fraud, when machines failed, which readings were
//! faulty), so tests and benchmarks can judge what was learned.

pub mod bookstore;
pub mod fraud;
pub mod sensors;

use chrono::{DateTime, Duration, Utc};
use freshet::events::{CloudEvent, SPEC_VERSION};
use rand::Rng;
use rand::rngs::StdRng;

/// The CloudEvent `source` of every generated event.
pub const SOURCE: &str = "freshet-generate";

/// An exponentially distributed duration with the given mean.
pub(crate) fn exponential(mean: std::time::Duration, rng: &mut StdRng) -> Duration {
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    Duration::microseconds((-u.ln() * mean.as_secs_f64() * 1e6) as i64)
}

/// A standard normal draw (Box–Muller).
pub(crate) fn standard_normal(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let v: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// An index drawn with probability proportional to its weight (weights are non-negative and
/// not all zero).
pub(crate) fn weighted_index(weights: &[f64], rng: &mut StdRng) -> usize {
    let total: f64 = weights.iter().sum();
    let mut left = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
    for (index, weight) in weights.iter().enumerate() {
        if left < *weight {
            return index;
        }
        left -= weight;
    }
    weights.len().saturating_sub(1)
}

/// A money amount rounded to cents.
pub(crate) fn cents(amount: f64) -> f64 {
    (amount * 100.0).round() / 100.0
}

/// An event of a domain's own type, as a structured-mode CloudEvent. Its `data` is the domain's
/// fields; featurize reads them by the paths a feature spec declares.
pub(crate) fn domain_event(
    id: String,
    event_type: &str,
    time: DateTime<Utc>,
    data: serde_json::Value,
) -> CloudEvent {
    CloudEvent {
        specversion: SPEC_VERSION.to_string(),
        id,
        source: SOURCE.to_string(),
        event_type: event_type.to_string(),
        subject: None,
        time: Some(time),
        datacontenttype: Some("application/json".to_string()),
        data,
        extensions: Default::default(),
    }
}

/// Puts timed events in time order (creation order within one time, so a cause emitted before
/// its effect at the same instant stays first) and names them `evt-<seed>-<start>-<n>` in that
/// order: the start in the id makes a run that starts elsewhere in time other events, not
/// duplicates of an earlier run's.
pub(crate) fn in_time_order(
    mut events: Vec<(DateTime<Utc>, CloudEvent)>,
    seed: u64,
    start: DateTime<Utc>,
) -> Vec<CloudEvent> {
    events.sort_by_key(|(time, _)| *time);
    events
        .into_iter()
        .enumerate()
        .map(|(n, (_, mut event))| {
            event.id = format!("evt-{seed}-{}-{n}", start.timestamp());
            event
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draws_have_the_moments_asked_for() {
        let mut rng = StdRng::seed_from_u64(3);
        let n = 20_000;
        let normals: Vec<f64> = (0..n).map(|_| standard_normal(&mut rng)).collect();
        let mean = normals.iter().sum::<f64>() / n as f64;
        let var = normals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");

        let mean_secs = (0..n)
            .map(|_| exponential(std::time::Duration::from_secs(60), &mut rng).num_milliseconds())
            .sum::<i64>() as f64
            / n as f64
            / 1000.0;
        assert!((mean_secs - 60.0).abs() < 2.0, "mean {mean_secs} s");

        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[weighted_index(&[1.0, 0.0, 3.0], &mut rng)] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = counts[2] as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }
}
