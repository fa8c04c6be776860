//! featurize's pure logic: which state changes and which example an event causes, given the
//! entity state read from FEATURES. No NATS, no clock: time comes in as an argument, so every
//! rule here is tested with plain values.

use chrono::{DateTime, Utc};
use freshet::error::{RejectReason, Rejection};
use freshet::events::{Action, Event, EventData, ExampleData, NewItem, UserAction};
use freshet::examples::ExampleRecord;
use freshet::features::{self, ItemState, UserState};
use freshet::ids::ModelName;
use freshet::subjects::Subjects;

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

/// The time an event counts at: its own `time`, or when JetStream stored it.
pub fn event_time(event: &Event, stored_at: DateTime<Utc>) -> DateTime<Utc> {
    event.time.unwrap_or(stored_at)
}

/// The training example a user action yields, from the state *before* the action: the model
/// learns to predict the action from what was known when it happened.
pub fn example_for_action(
    model: &ModelName,
    event_id: &str,
    action: &UserAction,
    user: &UserState,
    item: &ItemState,
    at: DateTime<Utc>,
) -> ExampleRecord {
    ExampleRecord {
        id: ExampleRecord::id_for(event_id),
        model: model.clone(),
        schema: Some((features::SCHEMA_NAME.to_string(), features::SCHEMA_VERSION)),
        features: features::feature_vector(user, item, at),
        label: if action.action == Action::Purchase {
            1.0
        } else {
            0.0
        },
        source_event: event_id.to_string(),
        event_time: Some(at),
    }
}

/// The example an `example` event carries, as train expects it.
pub fn example_passthrough(event_id: &str, data: &ExampleData, at: DateTime<Utc>) -> ExampleRecord {
    ExampleRecord {
        id: ExampleRecord::id_for(event_id),
        model: data.model.clone(),
        schema: None,
        features: data.features.iter().map(|&x| x as f32).collect(),
        label: data.label as f32,
        source_event: event_id.to_string(),
        event_time: Some(at),
    }
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
        EventData::Example(data) => Work::Example(example_passthrough(&event.id, data, at)),
        EventData::Outcome(_) => Work::Nothing,
    }
}

/// One change to one entity's state, recorded so it can be applied again on a fresher copy of the
/// state if a compare-and-set loses to another writer.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// A user acted on an item of `category`.
    UserAction {
        action: Action,
        category: Option<String>,
        at: DateTime<Utc>,
        position: Position,
    },
    /// An item was acted on.
    ItemAction {
        action: Action,
        at: DateTime<Utc>,
        position: Position,
    },
    /// An item entered the catalogue.
    NewItem {
        category: String,
        price: f64,
        at: DateTime<Utc>,
        position: Position,
    },
}

/// The state of one FEATURES key.
#[derive(Debug, Clone, PartialEq)]
pub enum EntityState {
    User(UserState),
    Item(ItemState),
}

impl EntityState {
    /// Applies a mutation unless its position was already applied. Returns whether it changed.
    pub fn apply(&mut self, mutation: &Mutation) -> bool {
        match (self, mutation) {
            (
                EntityState::User(user),
                Mutation::UserAction {
                    action,
                    category,
                    at,
                    position,
                },
            ) => {
                if user.applied.contains(position.partition, position.sequence) {
                    return false;
                }
                user.apply(*action, category.as_deref(), *at);
                user.applied.record(position.partition, position.sequence);
                true
            }
            (
                EntityState::Item(item),
                Mutation::ItemAction {
                    action,
                    at,
                    position,
                },
            ) => {
                if item.applied.contains(position.partition, position.sequence) {
                    return false;
                }
                item.apply_action(*action, *at);
                item.applied.record(position.partition, position.sequence);
                true
            }
            (
                EntityState::Item(item),
                Mutation::NewItem {
                    category,
                    price,
                    at,
                    position,
                },
            ) => {
                if item.applied.contains(position.partition, position.sequence) {
                    return false;
                }
                item.apply_new_item(category, *price, *at);
                item.applied.record(position.partition, position.sequence);
                true
            }
            // Keys are derived from the event, so a user key never meets an item mutation.
            _ => false,
        }
    }
}

/// One routed event of a batch, ready to plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub event_id: String,
    pub position: Position,
    pub at: DateTime<Utc>,
    pub work: Work,
}

/// What a batch does: the examples to publish, and per FEATURES key, the mutations to write.
#[derive(Debug, Default, PartialEq)]
pub struct BatchPlan {
    pub examples: Vec<ExampleRecord>,
    pub mutations: std::collections::BTreeMap<String, Vec<Mutation>>,
}

/// The FEATURES keys a batch reads.
pub fn keys_of(batch: &[Routed]) -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    for routed in batch {
        match &routed.work {
            Work::UserAction(action) => {
                keys.insert(features::user_key(&action.user));
                keys.insert(features::item_key(&action.item));
            }
            Work::NewItem(item) => {
                keys.insert(features::item_key(&item.item));
            }
            Work::Example(_) | Work::Nothing => {}
        }
    }
    keys
}

/// Plans a batch in stream order against `states` (the states read, updated in place). An event
/// whose user state already holds its position was fully handled before a redelivery: it yields
/// no example, and its mutations change nothing.
pub fn plan_batch(
    model: &ModelName,
    batch: &[Routed],
    states: &mut std::collections::BTreeMap<String, EntityState>,
) -> BatchPlan {
    let mut plan = BatchPlan::default();
    for routed in batch {
        match &routed.work {
            Work::UserAction(action) => {
                let user_key = features::user_key(&action.user);
                let item_key = features::item_key(&action.item);
                let user = match states.get(&user_key) {
                    Some(EntityState::User(user)) => user.clone(),
                    _ => UserState::default(),
                };
                let item = match states.get(&item_key) {
                    Some(EntityState::Item(item)) => item.clone(),
                    _ => ItemState::default(),
                };
                if !user
                    .applied
                    .contains(routed.position.partition, routed.position.sequence)
                {
                    plan.examples.push(example_for_action(
                        model,
                        &routed.event_id,
                        action,
                        &user,
                        &item,
                        routed.at,
                    ));
                }
                let user_mutation = Mutation::UserAction {
                    action: action.action,
                    category: item.category.clone(),
                    at: routed.at,
                    position: routed.position,
                };
                let item_mutation = Mutation::ItemAction {
                    action: action.action,
                    at: routed.at,
                    position: routed.position,
                };
                record(
                    states,
                    &mut plan,
                    user_key,
                    EntityState::User(user),
                    user_mutation,
                );
                record(
                    states,
                    &mut plan,
                    item_key,
                    EntityState::Item(item),
                    item_mutation,
                );
            }
            Work::NewItem(new_item) => {
                let key = features::item_key(&new_item.item);
                let item = match states.get(&key) {
                    Some(EntityState::Item(item)) => item.clone(),
                    _ => ItemState::default(),
                };
                let mutation = Mutation::NewItem {
                    category: new_item.category.clone(),
                    price: new_item.price,
                    at: routed.at,
                    position: routed.position,
                };
                record(states, &mut plan, key, EntityState::Item(item), mutation);
            }
            Work::Example(record) => plan.examples.push(record.clone()),
            Work::Nothing => {}
        }
    }
    plan
}

fn record(
    states: &mut std::collections::BTreeMap<String, EntityState>,
    plan: &mut BatchPlan,
    key: String,
    mut state: EntityState,
    mutation: Mutation,
) {
    if state.apply(&mutation) {
        plan.mutations
            .entry(key.clone())
            .or_default()
            .push(mutation);
    }
    states.insert(key, state);
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet::events::{DEFAULT_MAX_EVENT_BYTES, decode};
    use freshet::ids::EntityId;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn view(user: &str, item: &str, action: Action) -> UserAction {
        UserAction {
            user: EntityId::parse(user).unwrap(),
            item: EntityId::parse(item).unwrap(),
            action,
        }
    }

    fn event(json: serde_json::Value) -> Event {
        decode(&serde_json::to_vec(&json).unwrap(), DEFAULT_MAX_EVENT_BYTES).unwrap()
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

    fn routed(seq: u64, work: Work) -> Routed {
        Routed {
            event_id: format!("e{seq}"),
            position: Position {
                partition: 1,
                sequence: seq,
            },
            at: at(seq as i64),
            work,
        }
    }

    #[test]
    fn a_batch_applies_each_position_once_and_in_order() {
        let model = ModelName::parse("bookstore").unwrap();
        let new_item = NewItem {
            item: EntityId::parse("b1").unwrap(),
            category: "poetry".into(),
            price: 9.5,
        };
        let batch = vec![
            routed(1, Work::NewItem(new_item)),
            routed(2, Work::UserAction(view("u1", "b1", Action::View))),
            routed(3, Work::UserAction(view("u1", "b1", Action::Purchase))),
        ];
        let mut states = Default::default();
        let plan = plan_batch(&model, &batch, &mut states);
        assert_eq!(plan.examples.len(), 2);
        assert_eq!((plan.examples[0].label, plan.examples[1].label), (0.0, 1.0));
        // The purchase's example saw the view before it: the state moves through the batch.
        let viewed = UserState {
            views: 1,
            ..Default::default()
        };
        assert_eq!(
            plan.examples[1].features[0],
            features::feature_vector(&viewed, &ItemState::default(), at(3))[0]
        );
        assert_eq!(plan.mutations["user.u1"].len(), 2);
        assert_eq!(plan.mutations["item.b1"].len(), 3);
        match &states["user.u1"] {
            EntityState::User(user) => assert_eq!(
                (user.views, user.purchases, user.category_views["poetry"]),
                (1, 1, 1)
            ),
            other => panic!("{other:?}"),
        }

        // Redelivered after the states were written: no example, no mutation.
        let again = plan_batch(&model, &batch, &mut states);
        assert!(
            again.examples.is_empty() && again.mutations.is_empty(),
            "{again:?}"
        );
    }

    #[test]
    fn mutations_replay_on_a_fresher_state() {
        let mutation = Mutation::ItemAction {
            action: Action::Purchase,
            at: at(0),
            position: Position {
                partition: 0,
                sequence: 9,
            },
        };
        let mut fresher = EntityState::Item(ItemState {
            views: 5,
            ..Default::default()
        });
        assert!(fresher.apply(&mutation));
        assert!(!fresher.apply(&mutation), "a position applies once");
        match fresher {
            EntityState::Item(item) => assert_eq!((item.views, item.purchases), (5, 1)),
            other => panic!("{other:?}"),
        }
        let mut user = EntityState::User(UserState::default());
        assert!(
            !user.apply(&mutation),
            "a user key never takes an item mutation"
        );
    }

    #[test]
    fn keys_cover_users_and_items() {
        let batch = vec![
            routed(1, Work::UserAction(view("u1", "b1", Action::View))),
            routed(2, Work::Nothing),
        ];
        assert_eq!(
            keys_of(&batch).into_iter().collect::<Vec<_>>(),
            vec!["item.b1".to_string(), "user.u1".to_string()]
        );
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
