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
    let (partition, type_token, entity_token) = subjects.parse_stored_event(subject).ok_or_else(|| {
        Rejection::new(RejectReason::InvalidEnvelope, "subject", format!("{subject} is not an event subject"))
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
        label: if action.action == Action::Purchase { 1.0 } else { 0.0 },
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

/// The user's state after the action, or `None` if this position was already applied.
pub fn next_user_state(
    user: &UserState,
    action: &UserAction,
    item_category: Option<&str>,
    at: DateTime<Utc>,
    position: Position,
) -> Option<UserState> {
    if user.applied.contains(position.partition, position.sequence) {
        return None;
    }
    let mut next = user.clone();
    next.apply(action.action, item_category, at);
    next.applied.record(position.partition, position.sequence);
    Some(next)
}

/// The item's state after an action on it, or `None` if already applied.
pub fn next_item_state_for_action(
    item: &ItemState,
    action: &UserAction,
    at: DateTime<Utc>,
    position: Position,
) -> Option<ItemState> {
    if item.applied.contains(position.partition, position.sequence) {
        return None;
    }
    let mut next = item.clone();
    next.apply_action(action.action, at);
    next.applied.record(position.partition, position.sequence);
    Some(next)
}

/// The item's state after its `new_item` event, or `None` if already applied.
pub fn next_item_state_for_new_item(
    item: &ItemState,
    new_item: &NewItem,
    at: DateTime<Utc>,
    position: Position,
) -> Option<ItemState> {
    if item.applied.contains(position.partition, position.sequence) {
        return None;
    }
    let mut next = item.clone();
    next.apply_new_item(&new_item.category, new_item.price, at);
    next.applied.record(position.partition, position.sequence);
    Some(next)
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

#[cfg(test)]
mod tests {
    use super::*;
    use freshet::events::{DEFAULT_MAX_EVENT_BYTES, decode};
    use freshet::ids::EntityId;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn view(user: &str, item: &str, action: Action) -> UserAction {
        UserAction { user: EntityId::parse(user).unwrap(), item: EntityId::parse(item).unwrap(), action }
    }

    fn event(json: serde_json::Value) -> Event {
        decode(&serde_json::to_vec(&json).unwrap(), DEFAULT_MAX_EVENT_BYTES).unwrap()
    }

    #[test]
    fn routes_only_events_whose_subject_matches() {
        let subjects = Subjects::default();
        let e = event(serde_json::json!({"specversion":"1.0","id":"1","source":"t","type":"user_action",
            "data":{"user":"u1","item":"b1","action":"view"}}));
        assert_eq!(route(&subjects, "freshet.events.2.user_action.u1", &e), Ok(2));
        for wrong in ["freshet.events.2.user_action.u2", "freshet.events.2.new_item.u1", "freshet.events.x.user_action.u1"] {
            let err = route(&subjects, wrong, &e).unwrap_err();
            assert_eq!((err.reason, err.field.as_str()), (RejectReason::InvalidEnvelope, "subject"), "{wrong}");
        }
    }

    #[test]
    fn an_action_is_applied_once_per_position() {
        let action = view("u1", "b1", Action::View);
        let pos = Position { partition: 1, sequence: 7 };
        let user = next_user_state(&UserState::default(), &action, Some("scifi"), at(0), pos).unwrap();
        assert_eq!((user.views, user.category_views["scifi"]), (1, 1));
        assert_eq!(next_user_state(&user, &action, Some("scifi"), at(0), pos), None, "redelivery is recognised");
        let earlier = Position { partition: 1, sequence: 3 };
        assert_eq!(next_user_state(&user, &action, None, at(0), earlier), None);
        let other_partition = Position { partition: 2, sequence: 3 };
        assert!(next_item_state_for_action(&ItemState::default(), &action, at(0), other_partition).is_some());
    }

    #[test]
    fn examples_use_the_state_before_the_action_and_label_purchases() {
        let user = UserState { views: 3, ..Default::default() };
        let item = ItemState { price: Some(10.0), ..Default::default() };
        let model = ModelName::parse("bookstore").unwrap();
        let buy = example_for_action(&model, "e9", &view("u1", "b1", Action::Purchase), &user, &item, at(0));
        assert_eq!((buy.id.as_str(), buy.label), ("ex-e9", 1.0));
        assert_eq!(buy.features, features::feature_vector(&user, &item, at(0)));
        let look = example_for_action(&model, "e10", &view("u1", "b1", Action::View), &user, &item, at(0));
        assert_eq!(look.label, 0.0);
    }

    #[test]
    fn new_items_record_catalogue_facts_once() {
        let new_item = NewItem { item: EntityId::parse("b1").unwrap(), category: "poetry".into(), price: 9.5 };
        let pos = Position { partition: 0, sequence: 1 };
        let item = next_item_state_for_new_item(&ItemState::default(), &new_item, at(5), pos).unwrap();
        assert_eq!((item.category.as_deref(), item.price, item.first_seen), (Some("poetry"), Some(9.5), Some(at(5))));
        assert!(next_item_state_for_new_item(&item, &new_item, at(5), pos).is_none());
    }

    #[test]
    fn examples_and_outcomes_are_sorted_into_work() {
        let ex = event(serde_json::json!({"specversion":"1.0","id":"x1","source":"t","type":"example",
            "data":{"model":"m","features":[1.5, 2.0],"label":1}}));
        match work_for(&ex, at(0)) {
            Work::Example(record) => assert_eq!((record.features, record.label, record.id), (vec![1.5, 2.0], 1.0, "ex-x1".to_string())),
            other => panic!("{other:?}"),
        }
        let outcome = event(serde_json::json!({"specversion":"1.0","id":"o1","source":"t","type":"outcome",
            "data":{"prediction_id":"p1","label":0}}));
        assert_eq!(work_for(&outcome, at(0)), Work::Nothing);
    }
}
