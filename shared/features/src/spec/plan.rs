//! A compiled spec: every name resolved to an index, every setting checked, every feature in an
//! order where what it reads comes first. The engine ([`super::Engine`]) runs a plan; nothing in
//! it refers back to the TOML text.
//!
//! The plan's value-affecting parts serialise to a canonical JSON whose SHA-256 is the spec's
//! fingerprint ([`Plan::fingerprint`]): monitoring, the schema's name and version, comments and
//! layout are left out, so the fingerprint changes exactly when some feature value can.

use serde::Serialize;

use crate::aggregates::WindowSpec;
use freshet::monitoring::Monitoring;
use freshet::stats::Decay;

/// The type of an event field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Number,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
        }
    }
}

/// Where an event's field comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A dotted path into the CloudEvent's `data` (`"a.b"` is `data.a.b`).
    Path(Vec<String>),
    /// A string field kept by another entity (its `keep` list), the entity keyed by this event's
    /// own fields of the same names as its key.
    Lookup { entity: usize, field: usize },
}

/// One field an event type declares.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldPlan {
    /// Index into [`Plan::fields`].
    pub field: usize,
    pub source: Source,
    pub kind: FieldType,
    pub optional: bool,
}

/// One event type the spec reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventPlan {
    pub name: String,
    pub fields: Vec<FieldPlan>,
    /// The entities this event type updates (indexes into [`Plan::entities`]).
    pub updates: Vec<usize>,
}

/// An entity whose state is kept: keyed by fields, updated by events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityPlan {
    pub name: String,
    /// Key fields, in key order.
    pub key: Vec<usize>,
    /// Event types (indexes into [`Plan::events`]) that update it.
    pub events: Vec<usize>,
    /// String fields whose latest value is kept, for other events' lookups.
    pub keep: Vec<usize>,
    /// The aggregates kept, deduplicated across features.
    pub slots: Vec<SlotPlan>,
}

/// An equality filter: the field's value must be one of `values`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filter {
    pub field: usize,
    pub values: Vec<String>,
}

/// What a windowed or decayed aggregate adds per event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    /// 1 per event (0 when the filter does not match): a count.
    One,
    /// The field's value (0 when the filter does not match).
    Field(usize),
    /// The field's square, for a windowed deviation.
    Square(usize),
}

/// One aggregate kept in an entity's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotKind {
    Count,
    /// n, sum and sum of squares of a number field.
    Moments {
        field: usize,
    },
    Min {
        field: usize,
    },
    Max {
        field: usize,
    },
    /// The distinct values of a string field, at most `max` of them.
    Distinct {
        field: usize,
        max: usize,
    },
    Last {
        field: usize,
    },
    FirstSeen,
    LastSeen,
    Ewma {
        field: usize,
        decay: Decay,
    },
    /// Event-time windows: every event of `on` is added (so all of them move the watermark),
    /// with the amount when the filter matches and 0 when not.
    Windows {
        spec: WindowSpec,
        amount: Amount,
    },
    /// A sum decaying by half every `half_life_ms` of event time.
    Decayed {
        half_life_ms: i64,
        amount: Amount,
    },
}

/// An aggregate with the events it takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotPlan {
    /// Its name in the stored state: the definition itself, so two features asking for the same
    /// aggregate share it, and a state read under an edited spec finds only what still means the
    /// same.
    pub id: String,
    /// Event types (indexes into [`Plan::events`]) it takes.
    pub on: Vec<usize>,
    pub filter: Vec<Filter>,
    pub kind: SlotKind,
}

/// What a feature reads of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Read {
    Count,
    Sum,
    Mean,
    Std,
    Min,
    Max,
    Distinct,
    Last,
    /// Time since, in units of `unit_ms`.
    Since {
        unit_ms: i64,
    },
    EwmaMean,
    EwmaStd,
    /// (the example event's field − μ) / σ under the entity's EWMA.
    Zscore {
        field: usize,
    },
    /// The example event's field minus the entity's last value of it.
    Delta {
        field: usize,
    },
    /// 1 when the example event's field is not among the entity's distinct values, else 0.
    IsNew {
        field: usize,
    },
    /// The events the `span` windows ending at the end of now's slide took.
    WindowEvents {
        span: u32,
    },
    /// The sum of the amounts of those windows: for a filtered count, the events it counts.
    WindowCount {
        span: u32,
    },
    WindowSum {
        span: u32,
    },
    /// Mean and deviation over the span: two slots, the sum and the sum of squares (`square`).
    WindowMean {
        span: u32,
    },
    WindowStd {
        span: u32,
        square: usize,
    },
    /// A decayed sum, decayed to now.
    Decayed,
}

/// How a feature's raw value is computed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    /// A slot of an entity, keyed by the example event's fields.
    Slot {
        entity: usize,
        slot: usize,
        read: Read,
    },
    /// A field of the example event itself.
    Field(usize),
    /// a / b, `default` when b is 0.
    Ratio(usize, usize),
    /// a − b.
    Difference(usize, usize),
    /// The smallest of the features.
    Least(Vec<usize>),
    /// The largest of the features.
    Greatest(Vec<usize>),
    /// The time from the start of the `span` windows ending at the end of now's slide to now,
    /// in units of `unit_ms`: how much of a recent span has elapsed (a rate over the span
    /// divides by it). Stateless.
    WindowElapsed {
        spec: WindowSpec,
        span: u32,
        unit_ms: i64,
    },
    /// (hits + weight · prior) / (max(trials, hits) + weight).
    Rate {
        hits: usize,
        trials: usize,
        prior: Prior,
        weight: f64,
    },
}

/// The prior of a smoothed rate: a number, or another feature (a group's rate).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prior {
    Value(f64),
    Feature(usize),
}

/// A bounded transform applied to a feature's value, in order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// ln(1 + max(x, 0)).
    Log1p,
    Clamp(f64, f64),
    /// exp(−max(x, 0) / τ): 1 for a fresh age, towards 0 for an old one.
    ExpDecay(f64),
    /// x · k.
    Scale(f64),
}

/// One feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeaturePlan {
    pub name: String,
    pub expr: Expr,
    /// The value when the aggregate has seen nothing (or a ratio's denominator is 0).
    pub default: f64,
    pub transforms: Vec<Transform>,
    /// Whether it is in the feature vector (else it only feeds others).
    pub emit: bool,
    /// How drift watches it; `None` for a feature not emitted.
    #[serde(skip)]
    pub monitoring: Option<Monitoring>,
}

/// Delayed-feedback handling of the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackMode {
    /// Publish each example at once as a fake negative, and a correction if its label comes.
    Fnw,
    /// Hold each example until its label comes or the horizon passes.
    Wait,
}

/// Events of one type, narrowed by a filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventMatch {
    pub event: usize,
    pub filter: Vec<Filter>,
}

/// The label: which events make examples, which later event makes one positive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelPlan {
    pub example: EventMatch,
    pub positive: EventMatch,
    /// Fields present in both events whose values must be equal.
    pub matching: Vec<usize>,
    pub horizon_ms: i64,
    pub feedback: FeedbackMode,
}

/// A compiled spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    pub version: u32,
    /// Every field name declared by any event, once.
    pub fields: Vec<String>,
    pub events: Vec<EventPlan>,
    pub entities: Vec<EntityPlan>,
    /// In evaluation order: each reads only features before it.
    pub features: Vec<FeaturePlan>,
    /// Indexes into `features` of the emitted ones, in the order the spec lists them.
    pub output: Vec<usize>,
    pub label: LabelPlan,
}

impl Plan {
    /// SHA-256 (hex, first 16 digits) of the canonical JSON of everything that decides feature
    /// values: fields and paths, entities, aggregates, features in vector order, the label.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(self).expect("a plan is plain data and always serialises");
        let digest = sha2::Sha256::digest(&json);
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The index of an event type by name.
    pub fn event(&self, name: &str) -> Option<usize> {
        self.events.iter().position(|e| e.name == name)
    }
}
