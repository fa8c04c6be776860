//! A deterministic synthetic machine-monitoring stream: devices reporting four sensors at a
//! steady pace, wearing out for hours before they fail, and sensors that now and then stick or
//! report what cannot be.
//!
//! Two event types, as a feature spec reads them (`infra/features/sensors.toml`):
//! - `reading`: `{device, sensor, value}`, one sensor's value (sensors: [`SENSORS`]);
//! - `failure`: `{device}`, the device breaking down.
//!
//! What a model can learn, and only from state: in the hours before a failure the device's
//! temperature and vibration creep up and its vibration grows noisier, slowly, so that one
//! reading is within the normal range of the fleet while being far from that device's own
//! recent level (a z-score against its EWMA, a rate of change, a rolling deviation). Devices
//! differ in their normal levels, so a raw value alone says little. A failed device is repaired
//! (no readings for [`REPAIR`]) and comes back at its normal levels.
//!
//! Bad data, which a model must never learn: a sensor that sticks repeats one value exactly for
//! an hour or more, and a rare reading is physically impossible (below absolute zero, a negative
//! vibration, a pressure of 10⁶ bar). The story lists them, so a test can check that the
//! data-quality quarantine kept them out.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use freshet::events::CloudEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::{domain_event, exponential, in_time_order, standard_normal};

/// The event type of one sensor's value.
pub const READING: &str = "reading";
/// The event type of a device breaking down.
pub const FAILURE: &str = "failure";

/// A sensor: its fleet-wide normal level and how devices differ around it, its noise, what wear
/// adds at the moment of failure (in units of its noise), and the range a real value stays in.
pub struct Sensor {
    pub name: &'static str,
    level: f64,
    device_spread: f64,
    noise: f64,
    wear: f64,
    pub valid: (f64, f64),
}

/// The sensors of every device.
pub const SENSORS: [Sensor; 4] = [
    Sensor {
        name: "temperature",
        level: 60.0,
        device_spread: 8.0,
        noise: 0.8,
        wear: 10.0,
        valid: (-40.0, 150.0),
    },
    Sensor {
        name: "vibration",
        level: 2.0,
        device_spread: 0.5,
        noise: 0.15,
        wear: 14.0,
        valid: (0.0, 50.0),
    },
    Sensor {
        name: "pressure",
        level: 5.0,
        device_spread: 1.0,
        noise: 0.1,
        wear: 0.0,
        valid: (0.0, 20.0),
    },
    Sensor {
        name: "current",
        level: 12.0,
        device_spread: 3.0,
        noise: 0.4,
        wear: 5.0,
        valid: (0.0, 100.0),
    },
];

/// How long wear shows before a failure.
pub const WEAR: std::time::Duration = std::time::Duration::from_secs(4 * 3600);
/// How long a failed device is silent.
pub const REPAIR: std::time::Duration = std::time::Duration::from_secs(3600);
/// Chance that a device's sensor sticks, per reading; a stuck sensor stays stuck an hour plus
/// an exponential time with a mean of another.
const STICK_CHANCE: f64 = 0.000_05;
const STUCK_EXTRA: std::time::Duration = std::time::Duration::from_secs(3600);
/// Chance that a reading is physically impossible.
const IMPOSSIBLE_CHANCE: f64 = 0.001;

/// Settings of the monitoring stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorsConfig {
    pub devices: usize,
    /// Readings in all, at most: each device reads its four sensors every `interval`, except
    /// while it is repaired.
    pub readings: usize,
    pub seed: u64,
    pub start: DateTime<Utc>,
    pub interval: std::time::Duration,
    /// Mean time between a device's failures (counted from its start or last repair).
    pub mean_time_between_failures: std::time::Duration,
}

impl SensorsConfig {
    /// `readings` readings of `devices` devices, every minute, a device failing a mean of once
    /// a day.
    pub fn new(start: DateTime<Utc>, devices: usize, readings: usize, seed: u64) -> Self {
        SensorsConfig {
            devices,
            readings,
            seed,
            start,
            interval: std::time::Duration::from_secs(60),
            mean_time_between_failures: std::time::Duration::from_secs(24 * 3600),
        }
    }

    /// The event time the readings span.
    pub fn span(&self) -> std::time::Duration {
        let rounds = self
            .readings
            .div_ceil((self.devices.max(1)) * SENSORS.len());
        self.interval * u32::try_from(rounds).unwrap_or(u32::MAX)
    }
}

/// The stream and what really happened in it.
#[derive(Debug, Clone)]
pub struct SensorsStory {
    pub events: Vec<CloudEvent>,
    /// Every failure: (device, time).
    pub failures: Vec<(String, DateTime<Utc>)>,
    /// Ids of the readings from a stuck sensor or out of its valid range: bad data.
    pub faulty: BTreeSet<String>,
}

/// Generates the stream (see the module documentation).
pub fn generate(config: &SensorsConfig) -> SensorsStory {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let start = config.start;
    let interval = Duration::from_std(config.interval).unwrap_or(Duration::minutes(1));
    let wear = Duration::from_std(WEAR).unwrap_or(Duration::hours(4));
    let repair = Duration::from_std(REPAIR).unwrap_or(Duration::hours(1));
    let per_device = config.readings / (config.devices.max(1) * SENSORS.len());
    let end = start + interval * i32::try_from(per_device).unwrap_or(i32::MAX);
    let mut events = Vec::with_capacity(config.readings + 64);
    let mut failures = Vec::new();
    // Faulty readings are known by their place before ids are given in time order.
    let mut faulty_times: BTreeSet<(DateTime<Utc>, String, &str)> = BTreeSet::new();

    for d in 0..config.devices {
        let device = format!("d{:04}", d + 1);
        let normal: Vec<f64> = SENSORS
            .iter()
            .map(|s| s.level + s.device_spread * standard_normal(&mut rng))
            .collect();
        // A device starts part-way through its life, so failures do not all come late.
        let mut fails_at = start + exponential(config.mean_time_between_failures, &mut rng);
        let mut stuck: [Option<(DateTime<Utc>, f64)>; SENSORS.len()] = [None; SENSORS.len()];
        let mut at =
            start + Duration::milliseconds(rng.random_range(0..interval.num_milliseconds().max(1)));
        while at < end {
            if at >= fails_at {
                events.push((
                    fails_at,
                    domain_event(String::new(), FAILURE, fails_at, json!({"device": device})),
                ));
                failures.push((device.clone(), fails_at));
                at = fails_at + repair;
                fails_at = at + exponential(config.mean_time_between_failures, &mut rng);
                stuck = [None; SENSORS.len()];
                continue;
            }
            // Wear grows with the square of how far into its last hours the device is.
            let worn = {
                let left = (fails_at - at).num_milliseconds() as f64;
                let progress = 1.0 - left / wear.num_milliseconds() as f64;
                progress.clamp(0.0, 1.0).powi(2)
            };
            for (s, sensor) in SENSORS.iter().enumerate() {
                let noisy = sensor.noise * (1.0 + if s == 1 { 2.0 * worn } else { 0.0 });
                let mut value = normal[s]
                    + worn * sensor.wear * sensor.noise
                    + noisy * standard_normal(&mut rng);
                let mut fault = false;
                match stuck[s] {
                    Some((until, held)) if at < until => {
                        value = held;
                        fault = true;
                    }
                    _ => {
                        stuck[s] = None;
                        if rng.random_bool(STICK_CHANCE) {
                            let until =
                                at + Duration::hours(1) + exponential(STUCK_EXTRA, &mut rng);
                            stuck[s] = Some((until, value));
                        }
                    }
                }
                if !fault && rng.random_bool(IMPOSSIBLE_CHANCE) {
                    value = impossible(sensor, &mut rng);
                    fault = true;
                }
                let value = (value * 1000.0).round() / 1000.0;
                if fault {
                    faulty_times.insert((at, device.clone(), sensor.name));
                }
                events.push((
                    at,
                    domain_event(
                        String::new(),
                        READING,
                        at,
                        json!({"device": device, "sensor": sensor.name, "value": value}),
                    ),
                ));
            }
            at += interval;
        }
    }
    let events = in_time_order(events, config.seed, start);
    let faulty = events
        .iter()
        .filter(|e| e.event_type == READING)
        .filter(|e| {
            let key = (
                e.time.unwrap_or(start),
                e.data["device"].as_str().unwrap_or_default().to_string(),
                e.data["sensor"].as_str().unwrap_or_default(),
            );
            faulty_times.contains(&key)
        })
        .map(|e| e.id.clone())
        .collect();
    failures.sort_by_key(|(_, at)| *at);
    SensorsStory {
        events,
        failures,
        faulty,
    }
}

/// A value no working sensor of this kind reports.
fn impossible(sensor: &Sensor, rng: &mut StdRng) -> f64 {
    let (low, high) = sensor.valid;
    if rng.random_bool(0.5) {
        low - (high - low) * rng.random_range(0.5..2.0)
    } else {
        high * 1e4
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn story() -> SensorsStory {
        let start = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .to_utc();
        generate(&SensorsConfig::new(start, 20, 100_000, 5))
    }

    fn reading(event: &CloudEvent) -> (&str, &str, f64) {
        (
            event.data["device"].as_str().unwrap(),
            event.data["sensor"].as_str().unwrap(),
            event.data["value"].as_f64().unwrap(),
        )
    }

    #[test]
    fn the_same_settings_give_the_same_stream_in_time_order() {
        let a = story();
        let b = story();
        assert_eq!(a.events, b.events);
        assert_eq!(a.faulty, b.faulty);
        assert!(a.events.windows(2).all(|w| w[0].time <= w[1].time));
        let readings = a.events.iter().filter(|e| e.event_type == READING).count();
        assert!(
            (95_000..=100_000).contains(&readings),
            "{readings} readings"
        );
        assert!(a.failures.len() >= 10, "{} failures", a.failures.len());
    }

    #[test]
    fn faulty_readings_are_stuck_or_out_of_range_and_no_good_one_is() {
        let story = story();
        let mut last: BTreeMap<(&str, &str), f64> = BTreeMap::new();
        let (mut stuck, mut out_of_range) = (0, 0);
        for event in story.events.iter().filter(|e| e.event_type == READING) {
            let (device, name, value) = reading(event);
            let sensor = SENSORS.iter().find(|s| s.name == name).unwrap();
            let outside = value < sensor.valid.0 || value > sensor.valid.1;
            let repeated = last.get(&(device, name)) == Some(&value);
            if story.faulty.contains(&event.id) {
                assert!(outside || repeated, "{event:?} is listed as faulty");
                stuck += usize::from(repeated);
                out_of_range += usize::from(outside);
            } else {
                assert!(!outside, "{event:?} is out of range but not listed");
            }
            last.insert((device, name), value);
        }
        assert!(
            stuck > 20 && out_of_range > 20,
            "{stuck} stuck, {out_of_range} out of range"
        );
    }

    /// The signal is in state: in the hour before a failure a device's vibration sits far above
    /// its own earlier level, while across the fleet the same values are common.
    #[test]
    fn wear_shows_against_the_device_s_own_level() {
        let story = story();
        let failures: BTreeMap<&str, Vec<DateTime<Utc>>> =
            story
                .failures
                .iter()
                .fold(BTreeMap::new(), |mut map, (d, at)| {
                    map.entry(d.as_str()).or_default().push(*at);
                    map
                });
        let soon_fails = |device: &str, at: DateTime<Utc>| {
            failures.get(device).is_some_and(|times| {
                times
                    .iter()
                    .any(|t| *t >= at && *t - at <= Duration::hours(1))
            })
        };
        let mut baseline: BTreeMap<&str, (f64, f64)> = BTreeMap::new(); // EWMA mean, variance
        let (mut before, mut otherwise) = ((0.0, 0usize), (0.0, 0usize));
        for event in story
            .events
            .iter()
            .filter(|e| e.event_type == READING && !story.faulty.contains(&e.id))
        {
            let (device, name, value) = reading(event);
            if name != "vibration" {
                continue;
            }
            let (mean, var) = baseline.entry(device).or_insert((value, 0.05));
            let z = (value - *mean) / var.sqrt().max(0.01);
            let tally = if soon_fails(device, event.time.unwrap()) {
                &mut before
            } else {
                &mut otherwise
            };
            tally.0 += z;
            tally.1 += 1;
            let delta = value - *mean;
            *mean += 0.005 * delta;
            *var = 0.995 * (*var + 0.005 * delta * delta);
        }
        let mean_z = |t: (f64, usize)| t.0 / t.1.max(1) as f64;
        assert!(
            before.1 > 200,
            "{} readings in the hour before a failure",
            before.1
        );
        assert!(
            mean_z(before) > 1.5 && mean_z(otherwise) < 0.3,
            "z before {} otherwise {}",
            mean_z(before),
            mean_z(otherwise)
        );
    }
}
