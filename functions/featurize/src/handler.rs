//! featurize's pure logic: which state changes and which example an event causes, given the
//! entity state read from FEATURES, and which waiting views time decides ([`plan_due`]). No
//! NATS, no clock: time comes in as an argument, so every rule here is tested with plain values.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use freshet::error::{RejectReason, Rejection};
use freshet::events::{Action, Event, EventData, NewItem, UserAction};
use freshet::examples::ExampleRecord;
use freshet::ids::{EntityId, ModelName};
use freshet::stats::ewma::Decay;
use freshet::subjects::Subjects;
use freshet::trace::TraceContext;
use freshet_features::aggregates::WindowSpec;
use freshet_features::bookstore::{
    self, Applied, CategoryState, ItemState, ScalingState, UserState,
};
use freshet_features::labels::{
    DueBuckets, DueSlot, LabelCounts, LabelState, LabelUpdate, due_slot_key, label_state_key,
};

use crate::labels::{self, ActionEvent, LabelSettings, Labelled, Outcome};

/// Where a stored event sits: its partition and stream sequence, the exactly-once coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: u32,
    pub sequence: u64,
}

/// Checks that the subject an event arrived on agrees with its content, and returns its partition.
/// A mismatch would put an entity's events in two partitions and break their order.
pub fn route(subjects: &Subjects, subject: &str, event: &Event) -> Result<u32, Rejection> {
    let (partition, type_token, entity_token) =
        subjects.parse_stored_event(subject).ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidEnvelope,
                "subject",
                format!("{subject} is not an event subject"),
            )
        })?;
    let expected_type = event.data.event_type().as_str();
    let expected_entity = event.data.partition_key();
    if type_token != expected_type || entity_token != expected_entity {
        return Err(Rejection::new(
            RejectReason::InvalidEnvelope,
            "subject",
            format!(
                "published as {type_token}.{entity_token} but the event is {expected_type} about {expected_entity}; \
                 publish to <prefix>.events.{expected_type}.{expected_entity}"
            ),
        ));
    }
    Ok(partition)
}

/// The time an event counts at: its own `time`, or when JetStream stored it (`received`).
///
/// An event time more than `max_future_skew` after `received` is refused as
/// [`RejectReason::Future`]: one such event would move its item's watermark (and its user's
/// label progress) that far ahead, and every honest event after it would be late. The bound is
/// counted from when the server stored the event, not from when featurize happens to handle it,
/// so a redelivery, a replay of the stream or a lagging consumer judges the event exactly as the
/// first delivery did.
pub fn event_time(
    event: &Event,
    received: DateTime<Utc>,
    max_future_skew: TimeDelta,
) -> Result<DateTime<Utc>, Rejection> {
    let Some(time) = event.time else {
        return Ok(received);
    };
    let latest = latest_allowed(received, max_future_skew);
    if time > latest {
        return Err(Rejection::new(
            RejectReason::Future,
            "time",
            format!(
                "{} is {} s after the event was stored ({}); at most {} s ahead is accepted \
                 (--max-future-skew)",
                time.to_rfc3339(),
                time.signed_duration_since(received).num_seconds(),
                received.to_rfc3339(),
                max_future_skew.num_seconds(),
            ),
        ));
    }
    Ok(time)
}

/// The latest event time accepted for an event stored at `received`.
pub fn latest_allowed(received: DateTime<Utc>, max_future_skew: TimeDelta) -> DateTime<Utc> {
    received
        .checked_add_signed(max_future_skew)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// What an event asks of featurize, before any state is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    UserAction(UserAction),
    NewItem(NewItem),
    /// Publish this already-featurized example.
    Example(ExampleRecord),
    /// Nothing for featurize (outcomes are joined by predict).
    Nothing,
}

/// Sorts an event into the work it needs.
pub fn work_for(event: &Event, at: DateTime<Utc>) -> Work {
    match &event.data {
        EventData::UserAction(action) => Work::UserAction(action.clone()),
        EventData::NewItem(item) => Work::NewItem(item.clone()),
        EventData::Example(data) => Work::Example(ExampleRecord::from_event(&event.id, data, at)),
        EventData::Outcome(_) => Work::Nothing,
    }
}

/// How featurize turns actions into state and examples: the settings every plan and every
/// replayed mutation use.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The model the bookstore examples are for (and whose label states and due index are kept).
    pub model: ModelName,
    /// The popularity windows of an item that has none yet (an item keeps the settings it was
    /// built with).
    pub popularity: WindowSpec,
    pub labels: LabelSettings,
    /// β of the EWMA mean and variance kept per feature for scaling (see
    /// [`freshet_features::bookstore::ScalingState`]).
    pub scaling_decay: Decay,
    /// How far ahead of when it was stored an event's time may be (see [`event_time`]).
    pub max_future_skew: TimeDelta,
}

impl Settings {
    /// How the due index cuts time for the label horizon.
    pub fn due_buckets(&self) -> DueBuckets {
        DueBuckets::for_horizon(self.labels.horizon)
    }
}

/// One change to one entity's state, recorded so it can be applied again on a fresher copy of the
/// state if a compare-and-set loses to another writer.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// A user acted on an item of `category`; `features` is the pair's vector before the action,
    /// which the user's pending views and examples carry.
    UserAction {
        action: Action,
        item: EntityId,
        category: Option<String>,
        at: DateTime<Utc>,
        event_id: String,
        features: Vec<f32>,
        position: Position,
    },
    /// An item was acted on; `latest_allowed` is the latest event time its windows take then.
    ItemAction {
        action: Action,
        at: DateTime<Utc>,
        latest_allowed: DateTime<Utc>,
        position: Position,
    },
    /// An item entered the catalogue.
    NewItem {
        category: String,
        price: f64,
        at: DateTime<Utc>,
        position: Position,
    },
    /// An item of the category was acted on.
    CategoryAction { action: Action, position: Position },
    /// The user's action at `position` was refused as late.
    UserRefused { position: Position },
    /// The event at `position` published examples with these features.
    Scale {
        examples: Vec<Vec<f32>>,
        position: Position,
    },
    /// A user action on the partition did this to its label state.
    Label {
        update: LabelUpdate,
        position: Position,
    },
    /// A view of `user` began waiting, falling due in `bucket`.
    Index {
        bucket: i64,
        user: EntityId,
        position: Position,
    },
    /// Time decided these waiting views of the user (by event id). Idempotent: it names what it
    /// removes, so it needs no position.
    Decided { views: Vec<String> },
    /// These due buckets were decided and are drained from the partition's label state; deciding
    /// them published `counts` at `at`. Idempotent but for the counts, which a replay after a
    /// crash between the decisions and the drain leaves out (a health statistic).
    Drained {
        buckets: Vec<i64>,
        at: DateTime<Utc>,
        counts: LabelCounts,
    },
    /// These due buckets are drained from a slot. Idempotent.
    DrainedSlot { buckets: Vec<i64> },
}

impl Mutation {
    /// The stream position of the event that caused it; `None` for what time decided (the
    /// tick), which is idempotent instead.
    fn position(&self) -> Option<Position> {
        match self {
            Mutation::UserAction { position, .. }
            | Mutation::ItemAction { position, .. }
            | Mutation::NewItem { position, .. }
            | Mutation::CategoryAction { position, .. }
            | Mutation::UserRefused { position }
            | Mutation::Scale { position, .. }
            | Mutation::Label { position, .. }
            | Mutation::Index { position, .. } => Some(*position),
            Mutation::Decided { .. } | Mutation::Drained { .. } | Mutation::DrainedSlot { .. } => {
                None
            }
        }
    }
}

/// The state of one FEATURES key.
#[derive(Debug, Clone, PartialEq)]
pub enum EntityState {
    User(UserState),
    Item(ItemState),
    Category(CategoryState),
    Scaling(ScalingState),
    Labels(LabelState),
    Due(DueSlot),
}

impl EntityState {
    /// The empty state of `key`, by its prefix; `None` for a key featurize does not keep.
    pub fn empty(key: &str) -> Option<EntityState> {
        let (prefix, _) = key.split_once('.')?;
        Some(match prefix {
            "user" => EntityState::User(UserState::default()),
            "item" => EntityState::Item(ItemState::default()),
            "category" => EntityState::Category(CategoryState::default()),
            "scaling" => EntityState::Scaling(ScalingState::default()),
            "labels" => EntityState::Labels(LabelState::default()),
            "due" => EntityState::Due(DueSlot::default()),
            _ => return None,
        })
    }

    /// Decodes the stored state of `key`.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<EntityState, StateError> {
        let error = |source| StateError::Decode {
            key: key.to_string(),
            source,
        };
        match EntityState::empty(key) {
            Some(EntityState::User(_)) => serde_json::from_slice(bytes).map(EntityState::User),
            Some(EntityState::Item(_)) => serde_json::from_slice(bytes).map(EntityState::Item),
            Some(EntityState::Category(_)) => {
                serde_json::from_slice(bytes).map(EntityState::Category)
            }
            Some(EntityState::Scaling(_)) => {
                serde_json::from_slice(bytes).map(EntityState::Scaling)
            }
            Some(EntityState::Labels(_)) => serde_json::from_slice(bytes).map(EntityState::Labels),
            Some(EntityState::Due(_)) => serde_json::from_slice(bytes).map(EntityState::Due),
            None => return Err(StateError::UnknownKey(key.to_string())),
        }
        .map_err(error)
    }

    /// The JSON stored for this state.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            EntityState::User(user) => serde_json::to_vec(user),
            EntityState::Item(item) => serde_json::to_vec(item),
            EntityState::Category(category) => serde_json::to_vec(category),
            EntityState::Scaling(scaling) => serde_json::to_vec(scaling),
            EntityState::Labels(labels) => serde_json::to_vec(labels),
            EntityState::Due(slot) => serde_json::to_vec(slot),
        }
        .expect("entity state is plain data with finite numbers and always serialises")
    }

    fn applied(&self) -> &Applied {
        match self {
            EntityState::User(user) => &user.applied,
            EntityState::Item(item) => &item.applied,
            EntityState::Category(category) => &category.applied,
            EntityState::Scaling(scaling) => &scaling.applied,
            EntityState::Labels(labels) => &labels.applied,
            EntityState::Due(slot) => &slot.applied,
        }
    }

    fn applied_mut(&mut self) -> &mut Applied {
        match self {
            EntityState::User(user) => &mut user.applied,
            EntityState::Item(item) => &mut item.applied,
            EntityState::Category(category) => &mut category.applied,
            EntityState::Scaling(scaling) => &mut scaling.applied,
            EntityState::Labels(labels) => &mut labels.applied,
            EntityState::Due(slot) => &mut slot.applied,
        }
    }

    /// Applies a mutation unless its position was already applied. Returns `None` if nothing
    /// changed, else what labelling a user action did (nothing for other mutations). Replaying a
    /// user action on the same state labels the same examples.
    pub fn apply(&mut self, mutation: &Mutation, settings: &Settings) -> Option<Outcome> {
        let position = mutation.position();
        if position.is_some_and(|p| self.applied().contains(p.partition, p.sequence)) {
            return None;
        }
        let labelled = match (&mut *self, mutation) {
            (
                EntityState::User(user),
                Mutation::UserAction {
                    action,
                    item,
                    category,
                    at,
                    event_id,
                    features,
                    ..
                },
            ) => {
                let outcome = labels::label(
                    user,
                    ActionEvent {
                        action: *action,
                        item,
                        at: *at,
                        event_id,
                        features,
                    },
                    &settings.labels,
                );
                user.apply(*action, category.as_deref(), *at);
                outcome
            }
            (
                EntityState::Item(item),
                Mutation::ItemAction {
                    action,
                    at,
                    latest_allowed,
                    ..
                },
            ) => {
                // An action judged on time when planned that another partition's events made
                // late since: counted, left out of the final windows (see ItemState).
                let _ = item.apply_action(*action, *at, &settings.popularity, *latest_allowed);
                Outcome::default()
            }
            (
                EntityState::Item(item),
                Mutation::NewItem {
                    category,
                    price,
                    at,
                    ..
                },
            ) => {
                item.apply_new_item(category, *price, *at);
                Outcome::default()
            }
            (EntityState::Category(category), Mutation::CategoryAction { action, .. }) => {
                category.apply(*action);
                Outcome::default()
            }
            (EntityState::User(user), Mutation::UserRefused { position }) => {
                // `refuse` marks the position itself.
                user.refuse(position.partition, position.sequence);
                return Some(Outcome::default());
            }
            (EntityState::Scaling(scaling), Mutation::Scale { examples, .. }) => {
                for features in examples {
                    // feature_vector's values are finite and far inside the aggregates' bound,
                    // so no update is refused.
                    let _ = scaling.observe(features, settings.scaling_decay);
                }
                Outcome::default()
            }
            (EntityState::Labels(labels), Mutation::Label { update, .. }) => {
                labels.record(update, settings.due_buckets());
                Outcome::default()
            }
            (EntityState::Due(slot), Mutation::Index { bucket, user, .. }) => {
                slot.index(*bucket, user);
                Outcome::default()
            }
            (EntityState::User(user), Mutation::Decided { views }) => {
                let before = user.pending.len();
                user.pending.retain(|view| !views.contains(&view.event));
                if user.pending.len() == before {
                    return None;
                }
                return Some(Outcome::default());
            }
            (
                EntityState::Labels(labels),
                Mutation::Drained {
                    buckets,
                    at,
                    counts,
                },
            ) => {
                labels.drain(buckets, *at, *counts);
                return Some(Outcome::default());
            }
            (EntityState::Due(slot), Mutation::DrainedSlot { buckets }) => {
                slot.drain(buckets);
                return Some(Outcome::default());
            }
            // Keys are derived from the event, so a key never meets another kind's mutation.
            _ => return None,
        };
        if let Some(position) = position {
            self.applied_mut()
                .record(position.partition, position.sequence);
        }
        Some(labelled)
    }
}

/// Why a stored state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("FEATURES {key}: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("FEATURES {0} is not a key featurize keeps")]
    UnknownKey(String),
}

/// One routed event of a batch, ready to plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub event_id: String,
    pub position: Position,
    pub at: DateTime<Utc>,
    /// When JetStream stored the event: what [`event_time`] bounds `at` by.
    pub received: DateTime<Utc>,
    pub work: Work,
    /// The trace featurize handles the event in, when it carried one; the examples its handling
    /// publishes are sent on in it.
    pub trace: Option<TraceContext>,
}

/// What a batch does: the examples to publish, per FEATURES key the mutations to write, and the
/// events refused (by their index in the batch).
#[derive(Debug, Default, PartialEq)]
pub struct BatchPlan {
    pub examples: Vec<ExampleRecord>,
    /// For each example, the index in the batch of the event whose handling published it. A
    /// view's example is published when its label is decided: by the purchase that made it
    /// positive, or the later event that found its horizon passed (or, with fake-negative
    /// weighting, by the view itself, and its correction by the purchase).
    pub origins: Vec<usize>,
    pub mutations: BTreeMap<String, Vec<Mutation>>,
    pub rejected: Vec<(usize, Rejection)>,
}

/// The order of a batch's writes, lowest first; the keys of one phase are written concurrently.
///
/// A user's state is the record of which of the user's actions were decided, applied or refused
/// as late, and of which examples went out: once it holds an action, a redelivery publishes the
/// action's examples no more. So the scaling states, which fold those examples in, and the
/// partitions' label states and due slots, which count and index what labelling the action did,
/// are written before it (as the examples are published before any state), and the items and
/// categories the actions touch after it: a key of a later phase never holds an action its user
/// has not recorded. An action its user lacks has then left no trace in any state but those of
/// the first phase (which skip it by its mark), and a replay may judge it afresh, on the same
/// user state, to the same outcome; an action its user holds is replayed on the other keys as it
/// was decided.
pub fn write_phase(key: &str) -> u8 {
    if key.starts_with("scaling.") || key.starts_with("labels.") || key.starts_with("due.") {
        0
    } else if key.starts_with("user.") {
        1
    } else {
        2
    }
}

/// The FEATURES keys a batch reads before planning: its users and items, the scaling state of
/// each partition it has user actions from and, when views wait for their label, each such
/// partition's label state and the due slot a view of the batch would be indexed in. The
/// categories are known only once the items are read: see [`category_keys_of`].
pub fn keys_of(settings: &Settings, batch: &[Routed]) -> BTreeSet<String> {
    let model = &settings.model;
    let mut keys = BTreeSet::new();
    for routed in batch {
        match &routed.work {
            Work::UserAction(action) => {
                let partition = routed.position.partition;
                keys.insert(bookstore::user_key(&action.user));
                keys.insert(bookstore::item_key(&action.item));
                keys.insert(bookstore::scaling_key(model, partition));
                if settings.labels.waits() {
                    keys.insert(label_state_key(model, partition));
                    if action.action != Action::Purchase {
                        keys.insert(due_slot_of(settings, partition, routed.at));
                    }
                }
            }
            Work::NewItem(item) => {
                keys.insert(bookstore::item_key(&item.item));
            }
            Work::Example(_) | Work::Nothing => {}
        }
    }
    keys
}

/// The category keys a batch's plan touches, given the item states read: the category of each
/// item acted on, and each category a `new_item` of the batch gives (it may be the item's
/// category by the time a later action of the batch is planned).
pub fn category_keys_of(
    batch: &[Routed],
    states: &BTreeMap<String, EntityState>,
) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for routed in batch {
        match &routed.work {
            Work::UserAction(action) => {
                if let Some(EntityState::Item(item)) =
                    states.get(&bookstore::item_key(&action.item))
                    && let Some(category) = &item.category
                {
                    keys.insert(bookstore::category_key(category));
                }
            }
            Work::NewItem(item) => {
                keys.insert(bookstore::category_key(&item.category));
            }
            Work::Example(_) | Work::Nothing => {}
        }
    }
    keys
}

/// The state of `key` as planned so far, or the empty one.
/// Plans a batch in stream order against `states` (the states read, updated in place).
///
/// A user action too late for every popularity window of its item is refused as
/// [`RejectReason::Late`] and has no effect: no count, no window, no label, no example; only its
/// user's state records the refusal. Each action is judged once: one its user's state already
/// holds was decided by an earlier attempt (a redelivery after a partial write), and is refused
/// again if it was refused, else its mutations are replayed where missing, with no examples (the
/// user's state says they went out). Only an action its user lacks (see [`write_phase`]) is
/// judged, and an item's watermark never moves back, so a refused action stays refused. The one
/// case that can differ: an action accepted by an attempt that failed before its user was
/// written, whose item another partition moved past it in between, is refused on the replay, and
/// the examples the first attempt published stay published.
pub fn plan_batch(
    settings: &Settings,
    batch: &[Routed],
    states: &mut BTreeMap<String, EntityState>,
) -> BatchPlan {
    let mut plan = BatchPlan::default();
    for (index, routed) in batch.iter().enumerate() {
        match &routed.work {
            Work::UserAction(action) => {
                if let Err(rejection) = plan_action(settings, routed, action, states, &mut plan) {
                    plan.rejected.push((index, rejection));
                }
            }
            Work::NewItem(new_item) => {
                let key = bookstore::item_key(&new_item.item);
                let mutation = Mutation::NewItem {
                    category: new_item.category.clone(),
                    price: new_item.price,
                    at: routed.at,
                    position: routed.position,
                };
                record(states, &mut plan, &key, mutation, settings);
            }
            Work::Example(record) => plan.examples.push(record.clone()),
            Work::Nothing => {}
        }
        plan.origins.resize(plan.examples.len(), index);
    }
    plan
}

fn plan_action(
    settings: &Settings,
    routed: &Routed,
    action: &UserAction,
    states: &mut BTreeMap<String, EntityState>,
    plan: &mut BatchPlan,
) -> Result<(), Rejection> {
    let position = routed.position;
    let user_key = bookstore::user_key(&action.user);
    let item_key = bookstore::item_key(&action.item);
    // Read in place: the states are borrowed until the mutations below are recorded.
    let (empty_user, empty_item, empty_category) = (
        UserState::default(),
        ItemState::default(),
        CategoryState::default(),
    );
    let user = match states.get(&user_key) {
        Some(EntityState::User(user)) => user,
        _ => &empty_user,
    };
    let item = match states.get(&item_key) {
        Some(EntityState::Item(item)) => item,
        _ => &empty_item,
    };
    let category_key = item.category.as_deref().map(bookstore::category_key);
    let category = match category_key.as_deref().and_then(|key| states.get(key)) {
        Some(EntityState::Category(category)) => category,
        _ => &empty_category,
    };
    if user.has_refused(position.partition, position.sequence) {
        return Err(Rejection::new(
            RejectReason::Late,
            "time",
            format!(
                "event at {} was refused as late for its item's windows when first handled",
                routed.at
            ),
        ));
    }
    let decided = user.applied.contains(position.partition, position.sequence);
    let latest_allowed = latest_allowed(routed.received, settings.max_future_skew);
    if !decided
        && let Err(refused) = item.check_late(routed.at, &settings.popularity, latest_allowed)
    {
        // Future times were refused by `event_time` already; the windows check again.
        let reason = if refused.is_late() {
            RejectReason::Late
        } else {
            RejectReason::Future
        };
        let refused = refused.to_string();
        let mutation = Mutation::UserRefused { position };
        record(states, plan, &user_key, mutation, settings);
        return Err(Rejection::new(reason, "time", refused));
    }
    let features = bookstore::feature_vector(user, item, category, routed.at);
    let user_mutation = Mutation::UserAction {
        action: action.action,
        item: action.item.clone(),
        category: item.category.clone(),
        at: routed.at,
        event_id: routed.event_id.clone(),
        features,
        position,
    };
    let outcome = record(states, plan, &user_key, user_mutation, settings);
    let item_mutation = Mutation::ItemAction {
        action: action.action,
        at: routed.at,
        latest_allowed,
        position,
    };
    record(states, plan, &item_key, item_mutation, settings);
    if let Some(key) = &category_key {
        let mutation = Mutation::CategoryAction {
            action: action.action,
            position,
        };
        record(states, plan, key, mutation, settings);
    }
    // What labelling did is recorded on the partition's keys only when the user took the
    // action now: an action its user already holds was counted and indexed before it.
    let Some(outcome) = outcome else {
        return Ok(());
    };
    let partition = position.partition;
    if settings.labels.waits() {
        let due = |at: DateTime<Utc>| settings.labels.due(at);
        let update = LabelUpdate {
            at: routed.at,
            indexed: outcome.waiting.map(due),
            resolved: outcome.decided.iter().copied().map(due).collect(),
            counts: outcome.counts(),
        };
        let mutation = Mutation::Label { update, position };
        record(
            states,
            plan,
            &label_state_key(&settings.model, partition),
            mutation,
            settings,
        );
        if let Some(at) = outcome.waiting {
            let mutation = Mutation::Index {
                bucket: settings.due_buckets().bucket_of(due(at)),
                user: action.user.clone(),
                position,
            };
            let slot = due_slot_of(settings, partition, at);
            record(states, plan, &slot, mutation, settings);
        }
    }
    if !outcome.examples.is_empty() {
        let scaling_key = bookstore::scaling_key(&settings.model, partition);
        let mutation = Mutation::Scale {
            examples: outcome
                .examples
                .iter()
                .map(|l| l.features.clone())
                .collect(),
            position,
        };
        record(states, plan, &scaling_key, mutation, settings);
        plan.examples.extend(
            outcome
                .examples
                .into_iter()
                .map(|l| example_of(&settings.model, l)),
        );
    }
    Ok(())
}

/// The time up to which a partition's waiting views are decided: its event-time watermark (the
/// latest user-action time minus the out-of-orderness) or, once the partition has handled no
/// user action for `idle_after` of wall-clock time, that watermark run on by the wall-clock time
/// beyond it. `None` before the partition's first user action.
///
/// So a busy partition decides by event time alone, whatever its users do (a replay of old
/// events included), and a quiet one decides a view due at `t` about `idle_after` plus the
/// out-of-orderness after `t`, when its events ran on the wall clock.
pub fn decision_time(
    latest_event_at: Option<DateTime<Utc>>,
    out_of_orderness: TimeDelta,
    idle: TimeDelta,
    idle_after: TimeDelta,
) -> Option<DateTime<Utc>> {
    let watermark = latest_event_at?.checked_sub_signed(out_of_orderness)?;
    let run_on = (idle - idle_after).max(TimeDelta::zero());
    Some(
        watermark
            .checked_add_signed(run_on)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

/// The due buckets of a partition a tick decides at `through` (those whole before it), and the
/// due slots they are kept in: what the tick reads after the label state.
pub fn due_slots(
    settings: &Settings,
    partition: u32,
    labels: &LabelState,
    through: DateTime<Utc>,
) -> (Vec<i64>, BTreeSet<String>) {
    let buckets = settings.due_buckets();
    let due = labels.due_buckets(through, buckets);
    let slots = due
        .iter()
        .map(|&bucket| due_slot_key(&settings.model, partition, buckets.slot_of(bucket)))
        .collect();
    (due, slots)
}

/// The users with a view in the due buckets, from the slots read: what the tick reads last.
pub fn due_users(
    settings: &Settings,
    partition: u32,
    due: &[i64],
    states: &BTreeMap<String, EntityState>,
) -> BTreeSet<String> {
    let buckets = settings.due_buckets();
    let mut users = BTreeSet::new();
    for &bucket in due {
        let key = due_slot_key(&settings.model, partition, buckets.slot_of(bucket));
        if let Some(EntityState::Due(slot)) = states.get(&key) {
            users.extend(slot.users(bucket).map(bookstore::user_key));
        }
    }
    users
}

/// What time decides on one partition at a tick.
#[derive(Debug, Default, PartialEq)]
pub struct DuePlan {
    /// The examples deciding publishes (with fake-negative weighting, none: the negatives went
    /// out with the views).
    pub examples: Vec<ExampleRecord>,
    /// Per user key, the views decided.
    pub mutations: BTreeMap<String, Vec<Mutation>>,
    /// The buckets decided: drained ([`drain`]) once the users' states are written.
    pub buckets: Vec<i64>,
    /// Every view due before this is decided.
    pub through: Option<DateTime<Utc>>,
    /// What deciding published, for label health.
    pub counts: LabelCounts,
}

/// Decides the views of the due buckets `due` of a partition (see [`due_slots`] and
/// [`due_users`]), on `states` (the users read, changed in place): every view of those users due
/// before the end of the last of the buckets. Views due later stay; they are indexed in later
/// buckets.
pub fn plan_due(
    settings: &Settings,
    due: &[i64],
    users: &BTreeSet<String>,
    states: &mut BTreeMap<String, EntityState>,
) -> DuePlan {
    let mut plan = DuePlan::default();
    let Some(&last) = due.iter().max() else {
        return plan;
    };
    let through = settings.due_buckets().end(last);
    plan.through = Some(through);
    plan.buckets = due.to_vec();
    for key in users {
        let Some(EntityState::User(user)) = states.get(key) else {
            continue;
        };
        let mut after = user.clone();
        let (decided, examples) = labels::decide_due(&mut after, through, &settings.labels);
        if decided.is_empty() {
            continue;
        }
        let views = decided.into_iter().map(|view| view.event).collect();
        apply_to(
            states,
            &mut plan.mutations,
            key,
            Mutation::Decided { views },
            settings,
        );
        plan.counts += labels::count_examples(&examples);
        plan.examples
            .extend(examples.into_iter().map(|l| example_of(&settings.model, l)));
    }
    plan
}

/// The keys [`drain`] changes: the partition's label state and the slots of the decided
/// buckets.
pub fn drain_keys(settings: &Settings, partition: u32, decided: &DuePlan) -> BTreeSet<String> {
    let buckets = settings.due_buckets();
    decided
        .buckets
        .iter()
        .map(|&bucket| due_slot_key(&settings.model, partition, buckets.slot_of(bucket)))
        .chain([label_state_key(&settings.model, partition)])
        .collect()
}

/// The mutations that drain a partition's decided buckets, once the users' decisions are
/// written: the label state drops them (counting what deciding published, at `at`) and their
/// slots forget them. Applied to `states`, recorded in `mutations`.
pub fn drain(
    settings: &Settings,
    partition: u32,
    decided: &DuePlan,
    at: DateTime<Utc>,
    states: &mut BTreeMap<String, EntityState>,
    mutations: &mut BTreeMap<String, Vec<Mutation>>,
) {
    if decided.buckets.is_empty() {
        return;
    }
    let buckets = settings.due_buckets();
    let mut by_slot: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for &bucket in &decided.buckets {
        by_slot
            .entry(due_slot_key(
                &settings.model,
                partition,
                buckets.slot_of(bucket),
            ))
            .or_default()
            .push(bucket);
    }
    let drained = Mutation::Drained {
        buckets: decided.buckets.clone(),
        at,
        counts: decided.counts,
    };
    let key = label_state_key(&settings.model, partition);
    apply_to(states, mutations, &key, drained, settings);
    for (slot, buckets) in by_slot {
        apply_to(
            states,
            mutations,
            &slot,
            Mutation::DrainedSlot { buckets },
            settings,
        );
    }
}

/// The due slot a view at `at` of `partition` is indexed in.
fn due_slot_of(settings: &Settings, partition: u32, at: DateTime<Utc>) -> String {
    let buckets = settings.due_buckets();
    let bucket = buckets.bucket_of(settings.labels.due(at));
    due_slot_key(&settings.model, partition, buckets.slot_of(bucket))
}

/// The example record of a labelled example of the bookstore schema.
fn example_of(model: &ModelName, labelled: Labelled) -> ExampleRecord {
    ExampleRecord {
        id: ExampleRecord::id_for(&labelled.source_event),
        model: model.clone(),
        schema: Some((
            bookstore::SCHEMA_NAME.to_string(),
            bookstore::SCHEMA_VERSION,
        )),
        features: labelled.features,
        label: labelled.label,
        source_event: labelled.source_event,
        event_time: Some(labelled.at),
        feedback: labelled.feedback,
        corrects: labelled.corrects,
        final_at: labelled.final_at,
    }
}

/// Applies `mutation` to the planned state of `key` and, if it changed anything, records it for
/// writing; returns what [`EntityState::apply`] returned.
fn record(
    states: &mut BTreeMap<String, EntityState>,
    plan: &mut BatchPlan,
    key: &str,
    mutation: Mutation,
    settings: &Settings,
) -> Option<Outcome> {
    apply_to(states, &mut plan.mutations, key, mutation, settings)
}

/// [`record`] into any map of mutations (a batch's, or a tick's).
fn apply_to(
    states: &mut BTreeMap<String, EntityState>,
    mutations: &mut BTreeMap<String, Vec<Mutation>>,
    key: &str,
    mutation: Mutation,
    settings: &Settings,
) -> Option<Outcome> {
    if !states.contains_key(key) {
        states.insert(key.to_string(), EntityState::empty(key)?);
    }
    let applied = states.get_mut(key)?.apply(&mutation, settings);
    if applied.is_some() {
        mutations.entry(key.to_string()).or_default().push(mutation);
    }
    applied
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeDelta;
    use freshet::events::{DEFAULT_MAX_EVENT_BYTES, decode};
    use freshet_features::bookstore::{FEATURE_NAMES, popularity_spec};

    use super::*;
    use crate::labels::{Method, NegativeRate};

    /// A time `s` seconds after a whole minute.
    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_699_999_980 + s, 0).unwrap()
    }

    fn settings(horizon_s: i64) -> Settings {
        Settings {
            model: ModelName::parse("bookstore").unwrap(),
            popularity: popularity_spec(Duration::from_secs(5), Duration::from_secs(60)).unwrap(),
            labels: LabelSettings {
                horizon: TimeDelta::seconds(horizon_s),
                out_of_orderness: TimeDelta::seconds(5),
                negative_rate: NegativeRate::ALL,
                method: Method::Wait,
            },
            scaling_decay: Decay::default(),
            max_future_skew: TimeDelta::minutes(5),
        }
    }

    fn user_action(user: &str, item: &str, action: Action) -> Work {
        Work::UserAction(UserAction {
            user: EntityId::parse(user).unwrap(),
            item: EntityId::parse(item).unwrap(),
            action,
        })
    }

    fn new_item(item: &str, category: &str) -> Work {
        Work::NewItem(NewItem {
            item: EntityId::parse(item).unwrap(),
            category: category.into(),
            price: 9.5,
        })
    }

    fn event(json: serde_json::Value) -> Event {
        decode(&serde_json::to_vec(&json).unwrap(), DEFAULT_MAX_EVENT_BYTES).unwrap()
    }

    /// Event `e<seq>` of partition 1 at `t` seconds.
    fn routed_at(seq: u64, t: i64, work: Work) -> Routed {
        Routed {
            event_id: format!("e{seq}"),
            position: Position {
                partition: 1,
                sequence: seq,
            },
            at: at(t),
            received: at(t),
            work,
            trace: None,
        }
    }

    fn routed(seq: u64, work: Work) -> Routed {
        routed_at(seq, seq as i64, work)
    }

    fn user(states: &BTreeMap<String, EntityState>, key: &str) -> UserState {
        match &states[key] {
            EntityState::User(user) => user.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn item(states: &BTreeMap<String, EntityState>, key: &str) -> ItemState {
        match &states[key] {
            EntityState::Item(item) => item.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn category(states: &BTreeMap<String, EntityState>, key: &str) -> CategoryState {
        match &states[key] {
            EntityState::Category(category) => category.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn ids_and_labels(plan: &BatchPlan) -> Vec<(&str, f32)> {
        plan.examples
            .iter()
            .map(|e| (e.id.as_str(), e.label))
            .collect()
    }

    /// The refused events, by index, with reason and field (the detail names the watermark).
    fn refusals(plan: &BatchPlan) -> Vec<(usize, RejectReason, &str)> {
        plan.rejected
            .iter()
            .map(|(i, r)| (*i, r.reason, r.field.as_str()))
            .collect()
    }

    #[test]
    fn routes_only_events_whose_subject_matches() {
        let subjects = Subjects::default();
        let e = event(
            serde_json::json!({"specversion":"1.0","id":"1","source":"t","type":"user_action",
            "data":{"user":"u1","item":"b1","action":"view"}}),
        );
        assert_eq!(
            route(&subjects, "freshet.events.2.user_action.u1", &e),
            Ok(2)
        );
        for wrong in [
            "freshet.events.2.user_action.u2",
            "freshet.events.2.new_item.u1",
            "freshet.events.x.user_action.u1",
        ] {
            let err = route(&subjects, wrong, &e).unwrap_err();
            assert_eq!(
                (err.reason, err.field.as_str()),
                (RejectReason::InvalidEnvelope, "subject"),
                "{wrong}"
            );
        }
    }

    #[test]
    fn a_zero_horizon_gives_an_example_per_action_once_and_in_order() {
        let settings = settings(0);
        let batch = vec![
            routed(1, new_item("b1", "poetry")),
            routed(2, user_action("u1", "b1", Action::View)),
            routed(3, user_action("u1", "b1", Action::AddToCart)),
            routed(4, user_action("u1", "b1", Action::Purchase)),
        ];
        let mut states = BTreeMap::new();
        let plan = plan_batch(&settings, &batch, &mut states);
        assert_eq!(
            ids_and_labels(&plan),
            [("ex-e2", 0.0), ("ex-e3", 0.0), ("ex-e4", 1.0)]
        );
        assert!(plan.rejected.is_empty());
        let example = &plan.examples[2];
        assert_eq!(example.features.len(), FEATURE_NAMES.len());
        assert_eq!(
            example.schema,
            Some(("bookstore".to_string(), bookstore::SCHEMA_VERSION))
        );
        assert_eq!(example.event_time, Some(at(4)));
        // The purchase's example saw the view and the cart before it: the state moves through
        // the batch: one cart and no purchase in one view, towards the priors 0.2 and 0.1.
        let feature = |name: &str| {
            let column = FEATURE_NAMES.iter().position(|n| *n == name).unwrap();
            f64::from(example.features[column])
        };
        assert!((feature("user_cart_rate") - 1.8 / 5.0).abs() < 1e-6);
        assert!((feature("user_purchase_rate") - 0.4 / 5.0).abs() < 1e-6);
        assert_eq!(plan.mutations["user.u1"].len(), 3);
        assert_eq!(plan.mutations["item.b1"].len(), 4);
        assert_eq!(plan.mutations["category.poetry"].len(), 3);
        assert_eq!(plan.mutations["scaling.bookstore.1"].len(), 3);
        let u = user(&states, "user.u1");
        assert_eq!(
            (u.views, u.carts, u.purchases, u.category_views["poetry"]),
            (1, 1, 1, 1)
        );
        let c = category(&states, "category.poetry");
        assert_eq!((c.views, c.carts, c.purchases), (1, 1, 1));
        let windows = item(&states, "item.b1").popularity.unwrap();
        assert_eq!(windows.recent(at(4), 1).unwrap().count, 3);
        match &states["scaling.bookstore.1"] {
            EntityState::Scaling(s) => {
                assert_eq!(s.ewma.get(FEATURE_NAMES[0]).unwrap().count(), 3)
            }
            other => panic!("{other:?}"),
        }

        // Redelivered after the states were written: no example, no mutation.
        let again = plan_batch(&settings, &batch, &mut states);
        assert!(
            again.examples.is_empty() && again.mutations.is_empty(),
            "{again:?}"
        );
    }

    #[test]
    fn a_view_waits_for_its_label_and_a_purchase_makes_it_positive() {
        let settings = settings(600);
        let mut states = BTreeMap::new();
        let first = vec![
            routed(1, new_item("b1", "poetry")),
            routed_at(2, 10, user_action("u1", "b1", Action::View)),
            routed_at(3, 20, user_action("u1", "b2", Action::View)),
        ];
        let plan = plan_batch(&settings, &first, &mut states);
        assert!(plan.examples.is_empty(), "views wait");
        assert!(!plan.mutations.contains_key("scaling.bookstore.1"));
        let view_features = user(&states, "user.u1").pending[0].features.clone();
        let second = vec![
            routed_at(4, 300, user_action("u1", "b1", Action::Purchase)),
            // The user's next event after b2's horizon labels it 0.
            routed_at(5, 630, user_action("u1", "b3", Action::View)),
        ];
        let plan = plan_batch(&settings, &second, &mut states);
        assert_eq!(ids_and_labels(&plan), [("ex-e2", 1.0), ("ex-e3", 0.0)]);
        // Published by the purchase and by the view after the horizon: they carry those traces.
        assert_eq!(plan.origins, [0, 1]);
        assert_eq!(plan.examples[0].features, view_features, "as at the view");
        assert_eq!(plan.examples[0].event_time, Some(at(10)));
        assert_eq!(plan.examples[0].source_event, "e2");
        assert_eq!(plan.mutations["scaling.bookstore.1"].len(), 2);
        let pending: Vec<String> = user(&states, "user.u1")
            .pending
            .iter()
            .map(|v| v.event.clone())
            .collect();
        assert_eq!(pending, ["e5"]);
    }

    #[test]
    fn a_late_action_is_refused_entirely_and_the_batch_goes_on() {
        let settings = settings(0);
        let batch = vec![
            routed_at(1, 600, user_action("u1", "b1", Action::View)),
            // Its minute [420, 480) was final at 540 s; the watermark is 595 s.
            routed_at(2, 470, user_action("u2", "b1", Action::Purchase)),
            // Within the lateness: the window [480, 540) is final only at 600 s.
            routed_at(3, 530, user_action("u2", "b1", Action::View)),
        ];
        let mut states = BTreeMap::new();
        let plan = plan_batch(&settings, &batch, &mut states);
        assert_eq!(plan.rejected.len(), 1);
        let (index, rejection) = &plan.rejected[0];
        assert_eq!(
            (*index, rejection.reason, rejection.field.as_str()),
            (1, RejectReason::Late, "time")
        );
        assert_eq!(RejectReason::Late.as_str(), "late");
        assert_eq!(ids_and_labels(&plan), [("ex-e1", 0.0), ("ex-e3", 0.0)]);
        let u2 = user(&states, "user.u2");
        assert_eq!((u2.views, u2.purchases), (1, 0), "no trace of the purchase");
        assert_eq!(u2.last_event_at, Some(at(530)));
        let b1 = item(&states, "item.b1");
        assert_eq!((b1.views, b1.purchases), (2, 0));
        assert_eq!(
            b1.popularity.unwrap().late_count(),
            0,
            "judged, never applied"
        );
        // The refusal is the one trace, on the user, so that a replay refuses it again.
        let at_2: Vec<&Mutation> = plan
            .mutations
            .values()
            .flatten()
            .filter(|m| m.position().is_some_and(|p| p.sequence == 2))
            .collect();
        assert!(
            matches!(at_2[..], [Mutation::UserRefused { .. }]),
            "{at_2:?}"
        );
        assert_eq!(u2.refused, [(1, 2)]);
        let again = plan_batch(&settings, &batch, &mut states);
        assert_eq!(refusals(&again), refusals(&plan), "refused again");
        assert!(again.examples.is_empty() && again.mutations.is_empty());
    }

    #[test]
    fn event_times_further_ahead_of_their_storing_than_the_skew_are_refused_as_future() {
        let skew = TimeDelta::minutes(5);
        let stored = at(600);
        let with_time = |time: Option<&str>| {
            let mut json = serde_json::json!({"specversion": "1.0", "id": "e1", "source": "t",
                "type": "user_action", "data": {"user": "u1", "item": "b1", "action": "view"}});
            if let Some(time) = time {
                json["time"] = time.into();
            }
            event(json)
        };
        let stored_text = stored.to_rfc3339();
        // (the event's time, the time it counts at; None: refused)
        let cases = [
            (None, Some(stored)),
            (Some(stored_text.clone()), Some(stored)),
            (Some(at(-86_400).to_rfc3339()), Some(at(-86_400))),
            (Some(at(900).to_rfc3339()), Some(at(900))),
            (Some(at(901).to_rfc3339()), None),
            (Some("2099-01-01T00:00:00Z".to_string()), None),
        ];
        for (time, expected) in cases {
            let judged = event_time(&with_time(time.as_deref()), stored, skew);
            match (judged, expected) {
                (Ok(got), Some(want)) => assert_eq!(got, want, "{time:?}"),
                (Err(refused), None) => {
                    assert_eq!(
                        (refused.reason, refused.field.as_str()),
                        (RejectReason::Future, "time"),
                        "{time:?}"
                    );
                    assert!(refused.detail.contains("--max-future-skew"), "{refused}");
                }
                (judged, _) => panic!("{time:?}: {judged:?}"),
            }
        }
    }

    #[test]
    fn a_future_action_moves_no_watermark_and_later_honest_actions_are_learned() {
        let settings = settings(0);
        let mut states = BTreeMap::new();
        // Listed, then viewed; then an action dated a year ahead that got past event_time (the
        // windows refuse it all the same), then more honest views of the item.
        let mut far = routed_at(3, 365 * 24 * 3600, user_action("u2", "b1", Action::View));
        far.received = at(2);
        let batch = [
            routed_at(1, 0, new_item("b1", "c1")),
            routed_at(2, 1, user_action("u1", "b1", Action::View)),
            far,
            routed_at(4, 3, user_action("u3", "b1", Action::View)),
            routed_at(5, 4, user_action("u1", "b1", Action::Purchase)),
        ];
        let plan = plan_batch(&settings, &batch, &mut states);
        let refused: Vec<(usize, RejectReason)> =
            plan.rejected.iter().map(|(i, r)| (*i, r.reason)).collect();
        assert_eq!(refused, [(2, RejectReason::Future)]);
        assert_eq!(plan.examples.len(), 3, "every honest action is an example");
        let EntityState::Item(b1) = &states["item.b1"] else {
            panic!("no item state")
        };
        assert_eq!(b1.views + b1.purchases, 3);
        let windows = b1.popularity.as_ref().unwrap();
        assert_eq!(windows.watermark(), Some(at(4 - 5)));
    }

    #[test]
    fn an_action_its_user_holds_is_never_judged_late_again() {
        let settings = settings(0);
        let view = routed_at(1, 10, user_action("u1", "b1", Action::View));
        let mut states = BTreeMap::new();
        plan_batch(&settings, std::slice::from_ref(&view), &mut states);
        // The user was written, the item was not; meanwhile another partition moved the item's
        // watermark far past the view.
        let mut b1 = ItemState::default();
        b1.apply_action(Action::View, at(4000), &settings.popularity, at(4000))
            .unwrap();
        states.insert("item.b1".into(), EntityState::Item(b1));
        let plan = plan_batch(&settings, &[view], &mut states);
        assert!(plan.rejected.is_empty());
        assert!(plan.examples.is_empty(), "its example went out before");
        assert_eq!(plan.mutations.keys().collect::<Vec<_>>(), ["item.b1"]);
        // Counted; its final window is left as it was.
        let b1 = item(&states, "item.b1");
        assert_eq!(b1.views, 2);
        assert_eq!(b1.popularity.unwrap().late_count(), 1);
    }

    #[test]
    fn a_replay_after_any_partial_write_ends_where_a_clean_run_does() {
        replays_after_partial_writes(settings(600), &[("ex-e2", 1.0), ("ex-e4", 0.0)]);
        let fnw = Settings {
            labels: LabelSettings {
                method: Method::FakeNegative,
                ..settings(600).labels
            },
            ..settings(600)
        };
        replays_after_partial_writes(
            fnw,
            &[
                ("ex-e2", 0.0),
                ("ex-e3", 1.0),
                ("ex-e4", 0.0),
                ("ex-e5", 0.0),
                ("ex-e7", 0.0),
            ],
        );
    }

    fn replays_after_partial_writes(settings: Settings, expected: &[(&str, f32)]) {
        let batch = vec![
            routed(1, new_item("b1", "poetry")),
            routed_at(2, 10, user_action("u1", "b1", Action::View)),
            routed_at(3, 20, user_action("u1", "b1", Action::Purchase)),
            routed_at(4, 30, user_action("u1", "b2", Action::View)),
            routed_at(5, 900, user_action("u1", "b1", Action::View)),
            // Late for b1 (its window [60, 120) was final at 180 s), then an action past it.
            routed_at(6, 100, user_action("u1", "b1", Action::Purchase)),
            routed_at(7, 910, user_action("u1", "b2", Action::View)),
        ];
        let mut clean = BTreeMap::new();
        let clean_plan = plan_batch(&settings, &batch, &mut clean);
        assert_eq!(ids_and_labels(&clean_plan), expected);
        assert!(clean_plan.mutations.contains_key("labels.bookstore.1"));
        assert_eq!(clean_plan.rejected.len(), 1);
        let keys: Vec<String> = clean_plan.mutations.keys().cloned().collect();
        let written = |mask: u32, key: &str| {
            keys.iter()
                .position(|k| k == key)
                .is_some_and(|i| mask & (1 << i) != 0)
        };
        // Every subset of the keys written before a crash that the write phases allow.
        for mask in 0..(1u32 << keys.len()) {
            let phase_started = |phase: u8| {
                keys.iter()
                    .any(|key| write_phase(key) == phase && written(mask, key))
            };
            let phase_done = |phase: u8| {
                keys.iter()
                    .filter(|key| write_phase(key) == phase)
                    .all(|key| written(mask, key))
            };
            if (phase_started(1) && !phase_done(0)) || (phase_started(2) && !phase_done(1)) {
                continue;
            }
            let mut stored: BTreeMap<String, EntityState> = keys
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, key)| (key.clone(), clean[key].clone()))
                .collect();
            let replay = plan_batch(&settings, &batch, &mut stored);
            // Every count, window, mark and pending view as in the clean run. Feature values
            // are left out: those of a replayed action come from item and category states that
            // may already hold later events, as between any two interleavings of partitions.
            assert_eq!(fingerprint(&stored), fingerprint(&clean), "mask {mask:b}");
            assert_eq!(refusals(&replay), refusals(&clean_plan), "mask {mask:b}");
            if written(mask, "user.u1") {
                assert!(replay.examples.is_empty());
            } else {
                assert_eq!(ids_and_labels(&replay), ids_and_labels(&clean_plan));
            }
        }
        // With nothing written, the replay is the clean run, feature values included.
        let mut stored = BTreeMap::new();
        assert_eq!(plan_batch(&settings, &batch, &mut stored), clean_plan);
        assert_eq!(stored, clean);
    }

    /// The states with feature values blanked out (pending views keep their item, time and id;
    /// scaling states their counts and marks).
    fn fingerprint(states: &BTreeMap<String, EntityState>) -> BTreeMap<String, EntityState> {
        let mut states = states.clone();
        for state in states.values_mut() {
            match state {
                EntityState::User(user) => {
                    for view in &mut user.pending {
                        view.features.clear();
                    }
                }
                EntityState::Scaling(scaling) => {
                    let counts: Vec<f32> = FEATURE_NAMES
                        .iter()
                        .map(|name| scaling.ewma.get(name).map_or(0, |m| m.count()) as f32)
                        .collect();
                    let mut blank = ScalingState {
                        applied: scaling.applied.clone(),
                        ..ScalingState::default()
                    };
                    blank.observe(&counts, Decay::default()).unwrap();
                    *scaling = blank;
                }
                EntityState::Item(_)
                | EntityState::Category(_)
                | EntityState::Labels(_)
                | EntityState::Due(_) => {}
            }
        }
        states
    }

    #[test]
    fn mutations_replay_on_a_fresher_state() {
        let settings = settings(0);
        let mutation = Mutation::ItemAction {
            action: Action::Purchase,
            at: at(0),
            latest_allowed: at(300),
            position: Position {
                partition: 0,
                sequence: 9,
            },
        };
        let mut fresher = EntityState::Item(ItemState {
            views: 5,
            ..Default::default()
        });
        assert!(fresher.apply(&mutation, &settings).is_some());
        assert!(
            fresher.apply(&mutation, &settings).is_none(),
            "a position applies once"
        );
        match fresher {
            EntityState::Item(item) => assert_eq!((item.views, item.purchases), (5, 1)),
            other => panic!("{other:?}"),
        }
        let mut user = EntityState::User(UserState::default());
        assert!(
            user.apply(&mutation, &settings).is_none(),
            "a user key never takes an item mutation"
        );
    }

    #[test]
    fn keys_cover_users_items_scaling_and_the_categories_of_items_read() {
        let settings = settings(0);
        let batch = vec![
            routed(1, user_action("u1", "b1", Action::View)),
            routed(2, new_item("b2", "Science Fiction")),
            routed(3, user_action("u1", "b2", Action::View)),
            routed(4, Work::Nothing),
        ];
        assert_eq!(
            keys_of(&settings, &batch).into_iter().collect::<Vec<_>>(),
            ["item.b1", "item.b2", "scaling.bookstore.1", "user.u1"]
        );
        let mut states = BTreeMap::new();
        states.insert(
            "item.b1".to_string(),
            EntityState::Item(ItemState {
                category: Some("poetry".into()),
                ..Default::default()
            }),
        );
        assert_eq!(
            category_keys_of(&batch, &states)
                .into_iter()
                .collect::<Vec<_>>(),
            ["category.Science_20Fiction", "category.poetry"]
        );
        // Planning touches no key beyond those.
        let mut read: BTreeSet<String> = keys_of(&settings, &batch);
        read.extend(category_keys_of(&batch, &states));
        let plan = plan_batch(&settings, &batch, &mut states);
        assert!(plan.mutations.keys().all(|k| read.contains(k)), "{plan:?}");
        assert_eq!(plan.mutations["category.Science_20Fiction"].len(), 1);
    }

    /// Settings with fake-negative weighting and a ten-minute horizon.
    fn fnw() -> Settings {
        Settings {
            labels: LabelSettings {
                method: Method::FakeNegative,
                ..settings(600).labels
            },
            ..settings(600)
        }
    }

    #[test]
    fn with_fake_negatives_a_view_goes_out_at_once_and_a_purchase_corrects_it() {
        let settings = fnw();
        let mut states = BTreeMap::new();
        let batch = vec![
            routed(1, new_item("b1", "poetry")),
            routed_at(2, 10, user_action("u1", "b1", Action::View)),
            routed_at(3, 200, user_action("u1", "b1", Action::Purchase)),
            routed_at(4, 210, user_action("u2", "b1", Action::View)),
        ];
        let plan = plan_batch(&settings, &batch, &mut states);
        assert_eq!(
            ids_and_labels(&plan),
            [("ex-e2", 0.0), ("ex-e3", 1.0), ("ex-e4", 0.0)]
        );
        assert_eq!(plan.origins, [1, 2, 3]);
        let (negative, correction) = (&plan.examples[0], &plan.examples[1]);
        assert_eq!(negative.feedback, freshet::examples::Feedback::FakeNegative);
        assert_eq!(correction.feedback, freshet::examples::Feedback::Correction);
        assert_eq!(correction.corrects.as_deref(), Some("ex-e2"));
        assert_eq!(
            (&correction.features, correction.event_time),
            (&negative.features, Some(at(10))),
            "the view's features and time"
        );
        assert_eq!(correction.source_event, "e3");
        // Both are valid records.
        for example in &plan.examples {
            ExampleRecord::decode(&example.to_json_bytes()).unwrap();
        }
        // The partition's label state counts and indexes what labelling did.
        let EntityState::Labels(labels) = &states["labels.bookstore.1"] else {
            panic!("no label state")
        };
        assert_eq!(labels.latest_event_at, Some(at(210)));
        assert_eq!(labels.waiting(), 1, "u2's view waits; u1's converted");
        let recent = labels.recent();
        assert_eq!(
            (
                recent.views,
                recent.conversions,
                recent.examples,
                recent.positives
            ),
            (2, 1, 2, 1)
        );
        let slot = due_slot_of(&settings, 1, at(210));
        let EntityState::Due(due) = &states[&slot] else {
            panic!("no due slot")
        };
        let bucket = settings.due_buckets().bucket_of(at(810));
        assert_eq!(
            due.users(bucket).map(|u| u.as_str()).collect::<Vec<_>>(),
            ["u2"]
        );
        // Planning touched only the keys read for it.
        let mut read = keys_of(&settings, &batch);
        read.extend(category_keys_of(&batch, &states));
        assert!(plan.mutations.keys().all(|k| read.contains(k)), "{plan:?}");
    }

    #[test]
    fn a_partitions_time_is_its_watermark_run_on_by_the_wall_clock_once_quiet() {
        let ooo = TimeDelta::seconds(5);
        let after = TimeDelta::seconds(60);
        assert_eq!(decision_time(None, ooo, TimeDelta::zero(), after), None);
        // Busy: the watermark.
        assert_eq!(
            decision_time(Some(at(100)), ooo, TimeDelta::seconds(3), after),
            Some(at(95))
        );
        // Quiet for 90 s: 30 s past the idleness bound.
        assert_eq!(
            decision_time(Some(at(100)), ooo, TimeDelta::seconds(90), after),
            Some(at(125))
        );
        assert_eq!(
            decision_time(Some(at(100)), ooo, TimeDelta::MAX, after),
            Some(DateTime::<Utc>::MAX_UTC)
        );
    }

    /// Runs a tick at `through` on `states` as the processor does: plan, then drain; returns the
    /// plan.
    fn tick(
        settings: &Settings,
        states: &mut BTreeMap<String, EntityState>,
        through: DateTime<Utc>,
    ) -> DuePlan {
        let EntityState::Labels(labels) = states["labels.bookstore.1"].clone() else {
            panic!("no label state")
        };
        let (due, slots) = due_slots(settings, 1, &labels, through);
        assert!(slots.iter().all(|key| key.starts_with("due.bookstore.1.")));
        let users = due_users(settings, 1, &due, states);
        let plan = plan_due(settings, &due, &users, states);
        let mut mutations = BTreeMap::new();
        drain(settings, 1, &plan, through, states, &mut mutations);
        assert!(plan.mutations.keys().all(|k| users.contains(k)));
        assert!(
            mutations
                .keys()
                .all(|k| drain_keys(settings, 1, &plan).contains(k))
        );
        plan
    }

    #[test]
    fn time_decides_the_views_of_users_who_never_return() {
        for (method, negatives) in [
            (Method::Wait, vec![("ex-e2", 0.0)]),
            (Method::FakeNegative, vec![]),
        ] {
            let settings = Settings {
                labels: LabelSettings {
                    method,
                    ..settings(600).labels
                },
                ..settings(600)
            };
            let mut states = BTreeMap::new();
            let batch = vec![
                // u1 views b1 and never comes back; u2 views b2 a little later.
                routed_at(2, 10, user_action("u1", "b1", Action::View)),
                routed_at(3, 300, user_action("u2", "b2", Action::View)),
            ];
            plan_batch(&settings, &batch, &mut states);
            // Before u1's view is due (610 s): nothing.
            let early = tick(&settings, &mut states, at(600));
            assert!(early.examples.is_empty() && early.buckets.is_empty());
            // After it: u1's view is decided, u2's waits.
            let plan = tick(&settings, &mut states, at(650));
            let decided: Vec<(&str, f32)> = plan
                .examples
                .iter()
                .map(|e| (e.id.as_str(), e.label))
                .collect();
            assert_eq!(decided, negatives, "{method}");
            assert_eq!(plan.mutations.keys().collect::<Vec<_>>(), ["user.u1"]);
            assert!(user(&states, "user.u1").pending.is_empty());
            assert_eq!(user(&states, "user.u2").pending.len(), 1);
            let EntityState::Labels(labels) = &states["labels.bookstore.1"] else {
                panic!()
            };
            assert_eq!((labels.waiting(), labels.buckets.len()), (1, 1));
            // Ticking again decides nothing more, and the drained bucket is gone from its slot.
            let again = tick(&settings, &mut states, at(650));
            assert!(again.examples.is_empty() && again.mutations.is_empty());
            let slot = due_slot_of(&settings, 1, at(10));
            let EntityState::Due(due) = &states[&slot] else {
                panic!()
            };
            assert_eq!(
                due.users(settings.due_buckets().bucket_of(at(610))).count(),
                0
            );
            // A redelivered view of u1 finds it applied: nothing is indexed twice.
            let replay = plan_batch(&settings, &batch[..1], &mut states);
            assert!(replay.examples.is_empty() && replay.mutations.is_empty());
        }
    }

    #[test]
    fn a_view_a_purchase_decided_is_not_decided_again_by_time() {
        let settings = settings(600);
        let mut states = BTreeMap::new();
        plan_batch(
            &settings,
            &[
                routed_at(2, 10, user_action("u1", "b1", Action::View)),
                routed_at(3, 20, user_action("u1", "b1", Action::Purchase)),
            ],
            &mut states,
        );
        let plan = tick(&settings, &mut states, at(700));
        assert!(plan.examples.is_empty() && plan.mutations.is_empty());
        assert_eq!(plan.buckets.len(), 1, "its bucket is drained all the same");
        let EntityState::Labels(labels) = &states["labels.bookstore.1"] else {
            panic!()
        };
        assert_eq!(labels.waiting(), 0);
        assert!(labels.buckets.is_empty());
    }

    #[test]
    fn states_round_trip_by_key() {
        for key in [
            "user.u1",
            "item.b1",
            "category.x",
            "scaling.bookstore.0",
            "labels.bookstore.0",
            "due.bookstore.0.17",
        ] {
            let state = EntityState::empty(key).unwrap();
            assert_eq!(EntityState::decode(key, &state.encode()).unwrap(), state);
        }
        assert!(EntityState::empty("other.x").is_none());
        assert!(matches!(
            EntityState::decode("other.x", b"{}"),
            Err(StateError::UnknownKey(_))
        ));
        assert!(matches!(
            EntityState::decode("user.u1", b"[1]"),
            Err(StateError::Decode { .. })
        ));
    }

    #[test]
    fn examples_and_outcomes_are_sorted_into_work() {
        let ex = event(
            serde_json::json!({"specversion":"1.0","id":"x1","source":"t","type":"example",
            "data":{"model":"m","features":[1.5, 2.0],"label":1}}),
        );
        match work_for(&ex, at(0)) {
            Work::Example(record) => assert_eq!(
                (record.features, record.label, record.id),
                (vec![1.5, 2.0], 1.0, "ex-x1".to_string())
            ),
            other => panic!("{other:?}"),
        }
        let outcome = event(
            serde_json::json!({"specversion":"1.0","id":"o1","source":"t","type":"outcome",
            "data":{"prediction_id":"p1","label":0}}),
        );
        assert_eq!(work_for(&outcome, at(0)), Work::Nothing);
    }
}
