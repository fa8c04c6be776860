//! The engine: runs a [`Plan`] on events. Pure: no I/O, no clock; states come in and updates go
//! out, so featurize can keep the states in FEATURES and predict can read them back.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::compile::{SpecErrors, compile};
use super::plan::*;
use super::state::{EntityState, SlotState};
use crate::aggregates::{AddError, EventTimeWindows, WindowSpec};
use freshet::examples::FeatureSchema;
use freshet::stats::{Ewma, MAX_ABS_VALUE, ValueError, check_value};

/// The longest string an event field may hold, in bytes.
pub const MAX_TEXT_LEN: usize = 256;

/// The states the engine reads, by FEATURES key.
pub type States = BTreeMap<String, EntityState>;

/// An incoming event as the engine sees it: a CloudEvent's type, id, time and `data`.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    pub event_type: &'a str,
    pub id: &'a str,
    /// The time the event counts at (its own `time`, or when it was stored).
    pub time: DateTime<Utc>,
    pub data: &'a serde_json::Value,
}

/// A field value read from an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Num(f64),
}

impl Value {
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Num(_) => None,
        }
    }

    fn as_num(&self) -> Option<f64> {
        match self {
            Value::Num(x) => Some(*x),
            Value::Str(_) => None,
        }
    }
}

/// An event whose fields were read and checked against the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadEvent {
    /// Index of its type in the plan.
    event: usize,
    pub id: String,
    pub at: DateTime<Utc>,
    /// One value per field of the plan (`None`: not in this event, optional and absent, or a
    /// lookup not resolved).
    values: Vec<Option<Value>>,
}

impl ReadEvent {
    fn num(&self, field: usize) -> Option<f64> {
        self.values.get(field)?.as_ref()?.as_num()
    }

    fn str(&self, field: usize) -> Option<&str> {
        self.values.get(field)?.as_ref()?.as_str()
    }
}

/// Why an event does not fit the spec: every variant names the field's path in the CloudEvent,
/// which is what a dead letter's reason says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("{path} is missing")]
    Missing { path: String },
    #[error("{path} must be a {expected}, got {got}")]
    WrongType {
        path: String,
        expected: &'static str,
        got: String,
    },
    #[error("{path}: {source}")]
    Number { path: String, source: ValueError },
    #[error("{path} must be 1 to {MAX_TEXT_LEN} bytes")]
    Text { path: String },
}

impl EventError {
    /// The path of the offending field, from the CloudEvent's root (`data.amount`).
    pub fn path(&self) -> &str {
        match self {
            EventError::Missing { path }
            | EventError::WrongType { path, .. }
            | EventError::Number { path, .. }
            | EventError::Text { path } => path,
        }
    }
}

/// The exactly-once coordinates of a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: u32,
    pub sequence: u64,
}

/// One change to one entity's state: the event as read, to be applied to the state under `key`.
/// It can be applied again on a fresher copy of the state if a compare-and-set loses, and is
/// skipped by a state that has already applied its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub key: String,
    entity: usize,
    event: ReadEvent,
    pub position: Position,
}

/// The spec engine: a compiled plan and what runs it.
#[derive(Debug, Clone)]
pub struct Engine {
    plan: Plan,
    fingerprint: String,
}

impl Engine {
    /// Parses, checks and compiles a spec.
    pub fn from_toml(text: &str) -> Result<Engine, SpecErrors> {
        let plan = compile(text)?;
        let fingerprint = plan.fingerprint();
        Ok(Engine { plan, fingerprint })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The fingerprint of everything that decides feature values (see [`Plan::fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The emitted feature names, in vector order.
    pub fn feature_names(&self) -> Vec<&str> {
        self.plan
            .output
            .iter()
            .map(|&i| self.plan.features[i].name.as_str())
            .collect()
    }

    /// The schema for manifests: name, version, features and how drift watches each.
    pub fn schema(&self) -> FeatureSchema {
        FeatureSchema {
            name: self.plan.name.clone(),
            version: self.plan.version,
            features: self.feature_names().iter().map(|s| s.to_string()).collect(),
            monitoring: self
                .plan
                .output
                .iter()
                .filter_map(|&i| self.plan.features[i].monitoring.clone())
                .collect(),
        }
    }

    /// Reads an event's fields. `Ok(None)` for an event type the spec does not read; an error
    /// naming the field for one that does not fit. Looked-up fields are left for [`Engine::resolve`].
    pub fn read(&self, event: &EventRef) -> Result<Option<ReadEvent>, EventError> {
        self.read_fields(event, false)
    }

    /// Reads a request to score as if it were an event of its type: predict has the entity ids
    /// and whatever fields the caller sent, so a missing field is left absent (the features
    /// reading it take their default) instead of refused. A field present but of the wrong type
    /// is refused as in [`Engine::read`].
    pub fn read_request(&self, event: &EventRef) -> Result<Option<ReadEvent>, EventError> {
        self.read_fields(event, true)
    }

    fn read_fields(
        &self,
        event: &EventRef,
        all_optional: bool,
    ) -> Result<Option<ReadEvent>, EventError> {
        let Some(index) = self.plan.event(event.event_type) else {
            return Ok(None);
        };
        let mut values = vec![None; self.plan.fields.len()];
        for field in &self.plan.events[index].fields {
            let Source::Path(path) = &field.source else {
                continue;
            };
            let shown = || format!("data.{}", path.join("."));
            let mut at = Some(event.data);
            for part in path {
                at = at.and_then(|v| v.get(part));
            }
            let value = match at {
                None | Some(serde_json::Value::Null) if field.optional || all_optional => continue,
                None | Some(serde_json::Value::Null) => {
                    return Err(EventError::Missing { path: shown() });
                }
                Some(v) => v,
            };
            let wrong = |expected| EventError::WrongType {
                path: shown(),
                expected,
                got: kind_of(value).to_string(),
            };
            values[field.field] = Some(match field.kind {
                FieldType::String => {
                    let s = value.as_str().ok_or_else(|| wrong("string"))?;
                    if s.is_empty() || s.len() > MAX_TEXT_LEN {
                        return Err(EventError::Text { path: shown() });
                    }
                    Value::Str(s.to_string())
                }
                FieldType::Number => {
                    let x = value.as_f64().ok_or_else(|| wrong("number"))?;
                    let x = check_value(x).map_err(|source| EventError::Number {
                        path: shown(),
                        source,
                    })?;
                    Value::Num(x)
                }
            });
        }
        Ok(Some(ReadEvent {
            event: index,
            id: event.id.to_string(),
            at: event.time,
            values,
        }))
    }

    /// The event type of a read event.
    pub fn event_type(&self, event: &ReadEvent) -> &str {
        &self.plan.events[event.event].name
    }

    /// The value of a field of a read event, by name.
    pub fn value<'e>(&self, event: &'e ReadEvent, field: &str) -> Option<&'e Value> {
        let index = self.plan.fields.iter().position(|f| f == field)?;
        event.values.get(index)?.as_ref()
    }

    /// The FEATURES key of `entity`'s state for this event, if the event carries its key:
    /// `SCHEMA.ENTITY.PART[.PART...]`, each part with every byte other than a letter, a digit or
    /// `-` written `_XX` (so the key is valid in a KV bucket and two keys never collide).
    fn key(&self, entity: usize, event: &ReadEvent) -> Option<String> {
        let plan = &self.plan.entities[entity];
        let mut key = format!("{}.{}", self.plan.name, plan.name);
        for &field in &plan.key {
            key.push('.');
            escape_into(&mut key, event.str(field)?);
        }
        Some(key)
    }

    /// The keys of the states [`Engine::resolve`] reads.
    pub fn lookup_keys(&self, event: &ReadEvent) -> Vec<String> {
        let mut keys = BTreeSet::new();
        for field in &self.plan.events[event.event].fields {
            if let Source::Lookup { entity, .. } = field.source
                && let Some(key) = self.key(entity, event)
            {
                keys.insert(key);
            }
        }
        keys.into_iter().collect()
    }

    /// Fills the event's looked-up fields from the states of [`Engine::lookup_keys`]. A field
    /// the state does not keep (an entity never seen) stays absent, and so do the entities keyed
    /// by it: their states are neither read nor updated.
    pub fn resolve(&self, event: &mut ReadEvent, states: &States) {
        for field in &self.plan.events[event.event].fields {
            if let Source::Lookup {
                entity,
                field: kept,
            } = field.source
            {
                let found = self
                    .key(entity, event)
                    .and_then(|key| states.get(&key))
                    .and_then(|state| state.kept.get(&self.plan.fields[kept]))
                    .cloned();
                event.values[field.field] = found.map(Value::Str);
            }
        }
    }

    /// The keys of every state this event updates and, if it makes an example, every state its
    /// features read: what to fetch before [`Engine::features`] and [`Engine::updates`].
    pub fn state_keys(&self, event: &ReadEvent) -> Vec<String> {
        let mut keys = BTreeSet::new();
        for &entity in &self.plan.events[event.event].updates {
            keys.extend(self.key(entity, event));
        }
        if event.event == self.plan.label.example.event {
            for feature in &self.plan.features {
                if let Expr::Slot { entity, .. } = feature.expr {
                    keys.extend(self.key(entity, event));
                }
            }
        }
        keys.into_iter().collect()
    }

    /// The state updates this event causes, one per entity it updates whose key it carries.
    pub fn updates(&self, event: &ReadEvent, position: Position) -> Vec<Update> {
        self.plan.events[event.event]
            .updates
            .iter()
            .filter_map(|&entity| {
                Some(Update {
                    key: self.key(entity, event)?,
                    entity,
                    event: event.clone(),
                    position,
                })
            })
            .collect()
    }

    /// Whether the event would be too late for every window of some windowed aggregate it
    /// enters, or after `latest_allowed` (see [`EventTimeWindows::add_within`]): the key of the
    /// first such state and why. Nothing changes. featurize refuses such an event as late before
    /// applying it, as it refuses a bookstore action late for its item's windows; applied anyway
    /// (a replay), it is counted where it can be and left out of the final windows.
    pub fn check_late(
        &self,
        event: &ReadEvent,
        states: &States,
        latest_allowed: DateTime<Utc>,
    ) -> Result<(), (String, AddError)> {
        for &entity in &self.plan.events[event.event].updates {
            let Some(key) = self.key(entity, event) else {
                continue;
            };
            let Some(state) = states.get(&key) else {
                continue;
            };
            for slot in &self.plan.entities[entity].slots {
                if !slot.on.contains(&event.event) {
                    continue;
                }
                if let (SlotKind::Windows { .. }, Some(SlotState::Windows(windows))) =
                    (&slot.kind, state.slots.get(&slot.id))
                {
                    let mut probe = windows.clone();
                    if let Err(err) = probe.add_within(event.at, 0.0, latest_allowed) {
                        return Err((key, err));
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies an update unless its position was already applied; returns whether the state
    /// changed.
    pub fn apply_update(&self, state: &mut EntityState, update: &Update) -> bool {
        let Position {
            partition,
            sequence,
        } = update.position;
        if state.applied.contains(partition, sequence) {
            return false;
        }
        let plan = &self.plan.entities[update.entity];
        let event = &update.event;
        for &field in &plan.keep {
            if let Some(value) = event.str(field) {
                state
                    .kept
                    .insert(self.plan.fields[field].clone(), value.to_string());
            }
        }
        for slot in &plan.slots {
            if slot.on.contains(&event.event)
                && let Some(fresh) = apply_slot(slot, state.slots.get_mut(&slot.id), event)
            {
                state.slots.insert(slot.id.clone(), fresh);
            }
        }
        state.applied.record(partition, sequence);
        true
    }

    /// Applies every update of `event` to `states` (a state missing from the map starts empty).
    pub fn apply(&self, event: &ReadEvent, position: Position, states: &mut States) {
        for update in self.updates(event, position) {
            let state = states.entry(update.key.clone()).or_default();
            self.apply_update(state, &update);
        }
    }

    /// The feature vector of an example event at `now` (its event time at training time, the
    /// clock at request time), from the states of [`Engine::state_keys`] (a missing state is
    /// an entity never seen). Every value is finite.
    pub fn features(&self, event: &ReadEvent, states: &States, now: DateTime<Utc>) -> Vec<f32> {
        let empty = EntityState::default();
        let mut values: Vec<f64> = Vec::with_capacity(self.plan.features.len());
        for feature in &self.plan.features {
            let raw = match &feature.expr {
                Expr::Slot { entity, slot, read } => {
                    let state = self
                        .key(*entity, event)
                        .and_then(|key| states.get(&key))
                        .unwrap_or(&empty);
                    let slots = &self.plan.entities[*entity].slots;
                    read_slot(&slots[*slot], slots, state, *read, event, now)
                }
                Expr::Field(field) => event.num(*field),
                Expr::Ratio(a, b) => (values[*b] != 0.0).then(|| values[*a] / values[*b]),
                Expr::Difference(a, b) => Some(values[*a] - values[*b]),
                Expr::Least(list) => list.iter().map(|&f| values[f]).reduce(f64::min),
                Expr::Greatest(list) => list.iter().map(|&f| values[f]).reduce(f64::max),
                Expr::WindowElapsed {
                    spec,
                    span,
                    unit_ms,
                } => Some(window_elapsed(spec, *span, now) as f64 / *unit_ms as f64),
                Expr::Rate {
                    hits,
                    trials,
                    prior,
                    weight,
                } => {
                    let (h, t) = (values[*hits], values[*trials]);
                    let p = match prior {
                        Prior::Value(p) => *p,
                        Prior::Feature(f) => values[*f],
                    };
                    let denominator = t.max(h) + weight;
                    (denominator > 0.0).then(|| (h + weight * p) / denominator)
                }
            };
            let mut x = raw.unwrap_or(feature.default);
            for transform in &feature.transforms {
                x = match *transform {
                    Transform::Log1p => x.max(0.0).ln_1p(),
                    Transform::Clamp(lo, hi) => x.clamp(lo, hi),
                    Transform::ExpDecay(tau) => (-x.max(0.0) / tau).exp(),
                    Transform::Scale(k) => x * k,
                };
            }
            values.push(finite(x));
        }
        self.plan
            .output
            .iter()
            .map(|&i| finite(values[i]) as f32)
            .collect()
    }

    /// The label's settings: horizon, delayed-feedback mode, which events take part.
    pub fn label(&self) -> &LabelPlan {
        &self.plan.label
    }

    /// If the event makes an example, the values of the label's match fields (what a later
    /// positive event must carry to label it).
    pub fn example_match(&self, event: &ReadEvent) -> Option<Vec<String>> {
        self.matching(event, &self.plan.label.example)
    }

    /// If the event makes examples positive, the values of the label's match fields.
    pub fn positive_match(&self, event: &ReadEvent) -> Option<Vec<String>> {
        self.matching(event, &self.plan.label.positive)
    }

    fn matching(&self, event: &ReadEvent, side: &EventMatch) -> Option<Vec<String>> {
        if event.event != side.event || !passes(&side.filter, event) {
            return None;
        }
        self.plan
            .label
            .matching
            .iter()
            .map(|&f| event.str(f).map(str::to_string))
            .collect()
    }
}

/// NaN becomes 0 and everything is clamped to ±[`MAX_ABS_VALUE`]: a model never sees a
/// non-finite number, and an f32 holds every value.
fn finite(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-MAX_ABS_VALUE, MAX_ABS_VALUE)
    }
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn escape_into(key: &mut String, part: &str) {
    for byte in part.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            key.push(char::from(byte));
        } else {
            key.push_str(&format!("_{byte:02X}"));
        }
    }
}

fn passes(filter: &[Filter], event: &ReadEvent) -> bool {
    filter.iter().all(|f| {
        event
            .str(f.field)
            .is_some_and(|v| f.values.iter().any(|allowed| allowed == v))
    })
}

/// The amount a windowed or decayed slot adds for this event: `None` when the field it needs is
/// absent.
fn amount(amount: Amount, matches: bool, event: &ReadEvent) -> Option<f64> {
    let x = match amount {
        Amount::One => 1.0,
        Amount::Field(f) => event.num(f)?,
        Amount::Square(f) => {
            let x = event.num(f)?;
            (x * x).min(MAX_ABS_VALUE)
        }
    };
    Some(if matches { x } else { 0.0 })
}

/// Applies the event to one slot. Returns a fresh state to store when the slot had none (or one
/// of another shape); otherwise updates in place and returns `None`.
fn apply_slot(
    slot: &SlotPlan,
    stored: Option<&mut SlotState>,
    event: &ReadEvent,
) -> Option<SlotState> {
    let matches = passes(&slot.filter, event);
    let at = event.at.timestamp_millis();
    let aggregating_all = matches!(
        slot.kind,
        SlotKind::Windows { .. } | SlotKind::Decayed { .. }
    );
    if !matches && !aggregating_all {
        return None;
    }
    let mut fresh = None;
    let state: &mut SlotState = match stored {
        Some(s) if same_shape(&slot.kind, s) => s,
        _ => fresh.insert(empty_slot(&slot.kind)),
    };
    match (&slot.kind, state) {
        (SlotKind::Count, SlotState::Count(n)) => *n = n.saturating_add(1),
        (SlotKind::Moments { field }, SlotState::Moments { n, sum, sum_sq }) => {
            let x = event.num(*field)?;
            *n = n.saturating_add(1);
            *sum += x;
            *sum_sq += x * x;
        }
        (SlotKind::Min { field }, SlotState::Min(m)) => *m = m.min(event.num(*field)?),
        (SlotKind::Max { field }, SlotState::Max(m)) => *m = m.max(event.num(*field)?),
        (SlotKind::Distinct { field, max }, SlotState::Distinct(set)) => {
            let v = event.str(*field)?;
            if set.len() < *max && !set.contains(v) {
                set.insert(v.to_string());
            }
        }
        (SlotKind::Last { field }, SlotState::Last(last)) => *last = event.num(*field)?,
        (SlotKind::FirstSeen, SlotState::Time(t)) => *t = (*t).min(event.at),
        (SlotKind::LastSeen, SlotState::Time(t)) => *t = (*t).max(event.at),
        (SlotKind::Ewma { field, .. }, SlotState::Ewma(ewma)) => {
            // Values were checked when the event was read, so none is refused here.
            let _ = ewma.update(event.num(*field)?);
        }
        (SlotKind::Windows { amount: a, .. }, SlotState::Windows(windows)) => {
            let x = amount(*a, matches, event)?;
            // A late event is counted as late by the windows and changes none of them; events
            // dated too far ahead are refused before they reach the engine.
            let _ = windows.add(event.at, x);
        }
        (
            SlotKind::Decayed {
                half_life_ms,
                amount: a,
            },
            SlotState::Decayed { value, at_ms },
        ) => {
            let x = amount(*a, matches, event)?;
            if at >= *at_ms {
                *value = *value * halving(at.saturating_sub(*at_ms), *half_life_ms) + x;
                *at_ms = at;
            } else {
                *value += x * halving(at_ms.saturating_sub(at), *half_life_ms);
            }
            *value = value.clamp(-MAX_ABS_VALUE, MAX_ABS_VALUE);
        }
        _ => return None,
    }
    fresh
}

/// 2^(−elapsed / half_life).
fn halving(elapsed_ms: i64, half_life_ms: i64) -> f64 {
    (-(elapsed_ms as f64) / half_life_ms as f64).exp2()
}

/// The state of a slot that has seen nothing yet (min, max and times start at a bound any value
/// replaces, and read as "nothing seen" until then).
fn empty_slot(kind: &SlotKind) -> SlotState {
    match kind {
        SlotKind::Count => SlotState::Count(0),
        SlotKind::Moments { .. } => SlotState::Moments {
            n: 0,
            sum: 0.0,
            sum_sq: 0.0,
        },
        SlotKind::Min { .. } => SlotState::Min(f64::INFINITY),
        SlotKind::Max { .. } => SlotState::Max(f64::NEG_INFINITY),
        SlotKind::Distinct { .. } => SlotState::Distinct(BTreeSet::new()),
        SlotKind::Last { .. } => SlotState::Last(0.0),
        SlotKind::FirstSeen => SlotState::Time(DateTime::<Utc>::MAX_UTC),
        SlotKind::LastSeen => SlotState::Time(DateTime::<Utc>::MIN_UTC),
        SlotKind::Ewma { decay, .. } => SlotState::Ewma(Ewma::new(*decay)),
        SlotKind::Windows { spec, .. } => SlotState::Windows(EventTimeWindows::new(*spec)),
        SlotKind::Decayed { .. } => SlotState::Decayed {
            value: 0.0,
            at_ms: i64::MIN,
        },
    }
}

fn same_shape(kind: &SlotKind, state: &SlotState) -> bool {
    matches!(
        (kind, state),
        (SlotKind::Count, SlotState::Count(_))
            | (SlotKind::Moments { .. }, SlotState::Moments { .. })
            | (SlotKind::Min { .. }, SlotState::Min(_))
            | (SlotKind::Max { .. }, SlotState::Max(_))
            | (SlotKind::Distinct { .. }, SlotState::Distinct(_))
            | (SlotKind::Last { .. }, SlotState::Last(_))
            | (SlotKind::FirstSeen | SlotKind::LastSeen, SlotState::Time(_))
            | (SlotKind::Ewma { .. }, SlotState::Ewma(_))
            | (SlotKind::Windows { .. }, SlotState::Windows(_))
            | (SlotKind::Decayed { .. }, SlotState::Decayed { .. })
    )
}

/// What a feature reads of a slot: `None` when the slot has seen nothing (the feature's default
/// then applies).
fn read_slot(
    slot: &SlotPlan,
    slots: &[SlotPlan],
    state: &EntityState,
    read: Read,
    event: &ReadEvent,
    now: DateTime<Utc>,
) -> Option<f64> {
    let now_ms = now.timestamp_millis();
    let stored = state.slots.get(&slot.id);
    match (read, stored) {
        // A never-seen entity has seen no value: any value is new to it.
        (Read::IsNew { field }, None) => event.str(field).map(|_| 1.0),
        (_, None) => None,
        (Read::Count, Some(SlotState::Count(n))) => Some(*n as f64),
        (Read::Sum, Some(SlotState::Moments { n, sum, .. })) => (*n > 0).then_some(*sum),
        (Read::Mean, Some(SlotState::Moments { n, sum, .. })) => (*n > 0).then(|| sum / *n as f64),
        (Read::Std, Some(SlotState::Moments { n, sum, sum_sq })) => {
            (*n > 0).then(|| deviation(*n as f64, *sum, *sum_sq))
        }
        (Read::Min, Some(SlotState::Min(m))) | (Read::Max, Some(SlotState::Max(m))) => {
            m.is_finite().then_some(*m)
        }
        (Read::Distinct, Some(SlotState::Distinct(set))) => Some(set.len() as f64),
        (Read::IsNew { field }, Some(SlotState::Distinct(set))) => event
            .str(field)
            .map(|v| if set.contains(v) { 0.0 } else { 1.0 }),
        (Read::Last, Some(SlotState::Last(x))) => Some(*x),
        (Read::Delta { field }, Some(SlotState::Last(x))) => event.num(field).map(|v| v - x),
        (Read::Since { unit_ms }, Some(SlotState::Time(t))) => {
            // The bounds an empty slot starts at are never an event's time.
            let seen = *t != DateTime::<Utc>::MAX_UTC && *t != DateTime::<Utc>::MIN_UTC;
            seen.then(|| {
                let ms = now.signed_duration_since(*t).num_milliseconds();
                ms.max(0) as f64 / unit_ms as f64
            })
        }
        (Read::EwmaMean, Some(SlotState::Ewma(e))) => e.moments().mean(),
        (Read::EwmaStd, Some(SlotState::Ewma(e))) => e.moments().std_dev(),
        (Read::Zscore { field }, Some(SlotState::Ewma(e))) => (e.moments().count() > 0)
            .then(|| event.num(field).map(|x| e.standardize(x)))
            .flatten(),
        (Read::WindowEvents { span }, Some(SlotState::Windows(w))) => {
            Some(span_totals(w, now_ms, span).0)
        }
        (Read::WindowCount { span } | Read::WindowSum { span }, Some(SlotState::Windows(w))) => {
            Some(span_totals(w, now_ms, span).1)
        }
        (Read::WindowMean { span }, Some(SlotState::Windows(w))) => {
            let (n, sum) = span_totals(w, now_ms, span);
            (n > 0.0).then(|| sum / n)
        }
        (Read::WindowStd { span, square }, Some(SlotState::Windows(w))) => {
            let (n, sum) = span_totals(w, now_ms, span);
            let sum_sq = match state.slots.get(&slots[square].id) {
                Some(SlotState::Windows(sq)) => span_totals(sq, now_ms, span).1,
                _ => return None,
            };
            (n > 0.0).then(|| deviation(n, sum, sum_sq))
        }
        (Read::Decayed, Some(SlotState::Decayed { value, at_ms })) => {
            let half_life = match slot.kind {
                SlotKind::Decayed { half_life_ms, .. } => half_life_ms,
                _ => return None,
            };
            Some(value * halving(now_ms.saturating_sub(*at_ms).max(0), half_life))
        }
        _ => None,
    }
}

/// The population standard deviation from n, Σx and Σx².
fn deviation(n: f64, sum: f64, sum_sq: f64) -> f64 {
    let mean = sum / n;
    (sum_sq / n - mean * mean).max(0.0).sqrt()
}

/// The (count, sum) of the `span` windows ending at the end of `now`'s slide. Windows already
/// evicted (only possible for a `now` well before the latest event) count as empty, so the
/// answer is always defined.
fn span_totals(windows: &EventTimeWindows, now_ms: i64, span: u32) -> (f64, f64) {
    DateTime::from_timestamp_millis(now_ms).map_or((0.0, 0.0), |now| windows.span_totals(now, span))
}

/// Milliseconds from the start of the `span` windows ending at the end of `now`'s slide to
/// `now` (as [`EventTimeWindows::recent`] aligns them).
fn window_elapsed(spec: &WindowSpec, span: u32, now: DateTime<Utc>) -> i64 {
    let size = i64::try_from(spec.size().as_millis()).unwrap_or(i64::MAX);
    let slide = i64::try_from(spec.slide().as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let t = now.timestamp_millis();
    let end = t
        .div_euclid(slide)
        .saturating_mul(slide)
        .saturating_add(slide);
    let start = end.saturating_sub(size.saturating_mul(i64::from(span)));
    t.saturating_sub(start)
}
