//! How drift watches each feature of a schema: a plain-data declaration (what is read, and why)
//! that a feature schema carries beside each feature's name.
//!
//! A feature is not always a distribution worth comparing between a reference window and a recent
//! one. A running count grows with every event of its entity, and a time since a fixed moment
//! grows with the clock: a recent window always sits above its reference, so a detector reading
//! them reports the passage of time as drift. The schema says, feature by feature, whether drift
//! reads the value, a bounded transform of it, or nothing, and gives the reason in words so that
//! an operator reading an alarm (or its absence) knows what was and was not watched.

use serde::{Deserialize, Serialize};

/// What drift reads of one feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Watch {
    /// The value as the schema computes it: already bounded (a rate, a share, a clamped and
    /// logged duration, a logged count over a moving window).
    Value,
    /// ln(1 + max(x, 0)): a raw count or amount, whose long tail would otherwise dominate the
    /// detectors that read a mean. Distribution detectors (PSI, KSWIN) compare ranks and read it
    /// exactly as the value.
    Log1p,
    /// Not watched: the feature moves by construction (a running count, a time since), or its
    /// examples are too dependent on one another for a window comparison to mean anything.
    Ignore,
}

impl Watch {
    /// The name used in schemas, flags and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Watch::Value => "value",
            Watch::Log1p => "log1p",
            Watch::Ignore => "ignore",
        }
    }

    /// What drift reads of the value `x`: `None` when the feature is not watched or `x` is not
    /// finite.
    pub fn read(self, x: f64) -> Option<f64> {
        let read = match self {
            Watch::Value => x,
            Watch::Log1p => x.max(0.0).ln_1p(),
            Watch::Ignore => return None,
        };
        read.is_finite().then_some(read)
    }
}

/// How drift watches one feature, and why: one entry of a schema's monitoring plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Monitoring {
    pub watch: Watch,
    /// Why this feature is read this way, in a sentence an operator can act on.
    pub reason: String,
}

impl Monitoring {
    pub fn new(watch: Watch, reason: &str) -> Monitoring {
        Monitoring {
            watch,
            reason: reason.to_string(),
        }
    }
}

/// The plan of a schema that declares none (manifests written before plans existed, schemas of
/// raw examples): every feature is read as its value.
pub const UNDECLARED: Watch = Watch::Value;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_finite_and_bounded_by_the_transform() {
        assert_eq!(Watch::Value.read(2.5), Some(2.5));
        assert_eq!(Watch::Value.read(f64::NAN), None);
        assert_eq!(Watch::Log1p.read(0.0), Some(0.0));
        assert_eq!(Watch::Log1p.read(-3.0), Some(0.0));
        assert!((Watch::Log1p.read(99.0).unwrap() - 100f64.ln()).abs() < 1e-12);
        assert_eq!(Watch::Log1p.read(f64::INFINITY), None);
        assert_eq!(Watch::Ignore.read(1.0), None);
    }

    #[test]
    fn a_plan_entry_is_plain_data() {
        let entry = Monitoring::new(Watch::Ignore, "a running count");
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"watch": "ignore", "reason": "a running count"})
        );
        assert_eq!(serde_json::from_value::<Monitoring>(json).unwrap(), entry);
        for watch in [Watch::Value, Watch::Log1p, Watch::Ignore] {
            assert_eq!(
                serde_json::to_value(watch).unwrap(),
                serde_json::Value::from(watch.as_str())
            );
        }
    }
}
