//! featurize's runtime adapter: reads entity state from FEATURES, asks the handler what changes,
//! publishes the example, then writes the state back by compare-and-set. The order is what makes
//! the effect exactly-once: the example goes out first (JetStream drops a republished duplicate by
//! its id), then each entity's state records the event's position, so a redelivered event finds
//! its mark and changes nothing twice.

use async_nats::jetstream::{self, kv, message::PublishMessage};
use bytes::Bytes;
use freshet::error::Failure;
use freshet::events::{self, Event};
use freshet::examples::ExampleRecord;
use freshet::features::{ItemState, UserState, item_key, user_key};
use freshet::ids::ModelName;
use freshet::runtime::{Disposition, Incoming, Processor};
use freshet::store::kv::{CasError, Versioned, compare_and_set, read};
use freshet::subjects::Subjects;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::handler::{self, Position, Work};

/// How often one state write is retried when another replica wrote the same key in between.
const MAX_CAS_ATTEMPTS: usize = 32;

pub struct Featurizer {
    pub js: jetstream::Context,
    pub features: kv::Store,
    pub subjects: Subjects,
    /// The model the bookstore examples are for.
    pub model: ModelName,
    pub max_event_bytes: usize,
}

impl Processor for Featurizer {
    async fn process(&mut self, batch: &[Incoming]) -> Vec<Disposition> {
        let mut out = Vec::with_capacity(batch.len());
        let mut failed = false;
        for message in batch {
            if failed {
                // Keep per-entity order: nothing after a failure is handled before it.
                out.push(Disposition::Retry(Failure::new("featurize", "an earlier message in the batch failed")));
                continue;
            }
            let disposition = self.handle(message).await;
            failed = matches!(disposition, Disposition::Retry(_));
            out.push(disposition);
        }
        out
    }
}

impl Featurizer {
    async fn handle(&self, message: &Incoming) -> Disposition {
        let event = match events::decode(&message.payload, self.max_event_bytes) {
            Ok(event) => event,
            Err(rejection) => return Disposition::Reject(rejection),
        };
        let partition = match handler::route(&self.subjects, &message.subject, &event) {
            Ok(partition) => partition,
            Err(rejection) => return Disposition::Reject(rejection),
        };
        let position = Position {
            partition,
            sequence: message.stream_sequence,
        };
        let at = handler::event_time(&event, message.published);
        let result = match handler::work_for(&event, at) {
            Work::UserAction(action) => self.user_action(&event, &action, at, position).await,
            Work::NewItem(new_item) => {
                self.update(&item_key(&new_item.item), |item: &ItemState| {
                    handler::next_item_state_for_new_item(item, &new_item, at, position)
                })
                .await
            }
            Work::Example(record) => self.publish_example(&record).await,
            Work::Nothing => Ok(()),
        };
        match result {
            Ok(()) => Disposition::Ack,
            Err(failure) => Disposition::Retry(failure),
        }
    }

    async fn user_action(
        &self,
        event: &Event,
        action: &freshet::events::UserAction,
        at: chrono::DateTime<chrono::Utc>,
        position: Position,
    ) -> Result<(), Failure> {
        let user_key = user_key(&action.user);
        let item_key = item_key(&action.item);
        let user: Versioned<UserState> = self.read(&user_key).await?;
        let item: Versioned<ItemState> = self.read(&item_key).await?;
        let user_state = user.value.clone().unwrap_or_default();
        let item_state = item.value.clone().unwrap_or_default();
        if !user_state.applied.contains(position.partition, position.sequence) {
            let example = handler::example_for_action(&self.model, &event.id, action, &user_state, &item_state, at);
            self.publish_example(&example).await?;
        }
        let category = item_state.category.clone();
        self.update_from(&user_key, user, |u: &UserState| {
            handler::next_user_state(u, action, category.as_deref(), at, position)
        })
        .await?;
        self.update_from(&item_key, item, |i: &ItemState| {
            handler::next_item_state_for_action(i, action, at, position)
        })
        .await
    }

    async fn publish_example(&self, example: &ExampleRecord) -> Result<(), Failure> {
        let publish = PublishMessage::build()
            .payload(Bytes::from(example.to_json_bytes()))
            .message_id(&example.id);
        self.js
            .send_publish(self.subjects.examples(&example.model), publish)
            .await
            .map_err(|e| Failure::new("publish example", e))?
            .await
            .map_err(|e| Failure::new("publish example", e))?;
        Ok(())
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Versioned<T>, Failure> {
        let raw = read(&self.features, key).await?;
        let value = match raw.value {
            None => None,
            // State this version cannot read is a bug or a schema change, not bad input: fail
            // loudly and retry rather than silently starting the entity from scratch.
            Some(bytes) => Some(
                serde_json::from_slice(&bytes).map_err(|e| Failure::new(format!("decode FEATURES {key}"), e))?,
            ),
        };
        Ok(Versioned {
            value,
            revision: raw.revision,
        })
    }

    async fn update<T, F>(&self, key: &str, next: F) -> Result<(), Failure>
    where
        T: DeserializeOwned + Serialize + Default + Clone,
        F: Fn(&T) -> Option<T>,
    {
        let current = self.read(key).await?;
        self.update_from(key, current, next).await
    }

    /// Compare-and-set loop: apply `next` to the state read, write it at that revision, and on a
    /// conflict re-read and apply again (`next` returns `None` once the event is already applied).
    async fn update_from<T, F>(&self, key: &str, mut current: Versioned<T>, next: F) -> Result<(), Failure>
    where
        T: DeserializeOwned + Serialize + Default + Clone,
        F: Fn(&T) -> Option<T>,
    {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let state = current.value.clone().unwrap_or_default();
            let Some(updated) = next(&state) else {
                return Ok(());
            };
            let bytes = serde_json::to_vec(&updated).expect("entity state is plain data and always serialises");
            match compare_and_set(&self.features, key, Bytes::from(bytes), current.revision).await {
                Ok(_) => return Ok(()),
                Err(CasError::Conflict { .. }) => current = self.read(key).await?,
                Err(CasError::Failed(failure)) => return Err(failure),
            }
        }
        Err(Failure::new(format!("update FEATURES {key}"), "too many concurrent writers"))
    }
}
