//! featurize's runtime adapter, one batch at a time: read every FEATURES key the batch touches
//! (concurrently), plan the batch in memory, publish its examples (acks awaited together), then
//! write each changed key back by compare-and-set.
//!
//! That order is what makes the effect exactly-once. Examples go out first with an id derived from
//! their event, so a republished one is dropped by JetStream; each entity's state then records the
//! positions it applied, so a redelivered event finds its mark and changes nothing twice. A write
//! that loses to another replica re-reads the key and replays the batch's mutations for it.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv, message::PublishMessage};
use bytes::Bytes;
use freshet::error::Failure;
use freshet::events;
use freshet::examples::ExampleRecord;
use freshet::features::{ItemState, UserState};
use freshet::ids::ModelName;
use freshet::runtime::order::OrderGuard;
use freshet::runtime::{Disposition, Incoming, Processor};
use freshet::store::kv::{CasError, compare_and_set, read};
use freshet::subjects::Subjects;
use futures::future::try_join_all;

use crate::handler::{self, EntityState, Mutation, Position, Routed};

/// How often one state write is retried when another replica wrote the same key in between.
const MAX_CAS_ATTEMPTS: usize = 32;

pub struct Featurizer {
    pub js: jetstream::Context,
    pub features: kv::Store,
    pub subjects: Subjects,
    /// The model the bookstore examples are for.
    pub model: ModelName,
    pub max_event_bytes: usize,
    /// Keeps events in stream order across redeliveries (the entity marks rely on it).
    pub order: OrderGuard,
    /// The last event handled in order; starts at the consumer's acknowledgement floor.
    pub mark: Option<u64>,
}

/// A FEATURES key as read: its state and the revision to write against.
struct Read {
    state: EntityState,
    revision: u64,
}

impl Processor for Featurizer {
    async fn process(&mut self, batch: &[Incoming]) -> Vec<Disposition> {
        let mut dispositions: Vec<Option<Disposition>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        let mut mark = match self.mark {
            Some(mark) => mark,
            None => match self.order.ack_floor().await {
                Ok(floor) => floor,
                Err(failure) => return retry_all(batch.len(), &failure),
            },
        };
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].stream_sequence);
        let mut routed = Vec::with_capacity(batch.len());
        let mut routed_at = Vec::with_capacity(batch.len());
        let mut waiting: Option<Failure> = None;
        for i in order {
            let sequence = batch[i].stream_sequence;
            if let Some(failure) = &waiting {
                dispositions[i] = Some(Disposition::Retry(failure.duplicate()));
                continue;
            }
            if sequence <= mark {
                // Handled before (a redelivery of an acknowledged event): its effects are durable.
                dispositions[i] = Some(Disposition::Ack);
                continue;
            }
            match self.order.check(sequence, &mut mark).await {
                Ok(None) => {}
                Ok(Some(missing)) => {
                    tracing::debug!(
                        sequence,
                        missing,
                        "event arrived before an earlier one; waiting for it"
                    );
                    let failure = Failure::new("featurize", format!("waiting for event {missing}"));
                    dispositions[i] = Some(Disposition::Retry(failure.duplicate()));
                    waiting = Some(failure);
                    continue;
                }
                Err(failure) => {
                    dispositions[i] = Some(Disposition::Retry(failure.duplicate()));
                    waiting = Some(failure);
                    continue;
                }
            }
            mark = sequence;
            match self.route(&batch[i]) {
                Ok(r) => {
                    routed.push(r);
                    routed_at.push(i);
                }
                Err(rejection) => dispositions[i] = Some(Disposition::Reject(rejection)),
            }
        }
        match self.handle(&routed).await {
            Ok(()) => {
                for i in routed_at {
                    dispositions[i] = Some(Disposition::Ack);
                }
                // Only now is everything up to `mark` handled.
                self.mark = Some(mark);
            }
            Err(failure) => {
                for i in routed_at {
                    dispositions[i] = Some(Disposition::Retry(failure.duplicate()));
                }
            }
        }
        dispositions
            .into_iter()
            .map(|d| {
                d.unwrap_or_else(|| {
                    Disposition::Retry(Failure::new("featurize", "event left unhandled"))
                })
            })
            .collect()
    }
}

fn retry_all(n: usize, failure: &Failure) -> Vec<Disposition> {
    (0..n)
        .map(|_| Disposition::Retry(failure.duplicate()))
        .collect()
}

impl Featurizer {
    fn route(&self, message: &Incoming) -> Result<Routed, freshet::error::Rejection> {
        let event = events::decode(&message.payload, self.max_event_bytes)?;
        let partition = handler::route(&self.subjects, &message.subject, &event)?;
        let at = handler::event_time(&event, message.published);
        Ok(Routed {
            work: handler::work_for(&event, at),
            event_id: event.id,
            position: Position {
                partition,
                sequence: message.stream_sequence,
            },
            at,
        })
    }

    async fn handle(&self, batch: &[Routed]) -> Result<(), Failure> {
        if batch.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = handler::keys_of(batch).into_iter().collect();
        let reads = try_join_all(keys.iter().map(|key| self.read(key))).await?;
        let mut revisions = BTreeMap::new();
        let mut states = BTreeMap::new();
        for (key, read) in keys.into_iter().zip(reads) {
            revisions.insert(key.clone(), read.revision);
            states.insert(key, read.state);
        }
        let plan = handler::plan_batch(&self.model, batch, &mut states);
        self.publish_examples(&plan.examples).await?;
        try_join_all(plan.mutations.iter().map(|(key, mutations)| {
            let state = states.remove(key).expect("every planned key was read");
            self.write(key, state, revisions[key], mutations)
        }))
        .await?;
        Ok(())
    }

    async fn publish_examples(&self, examples: &[ExampleRecord]) -> Result<(), Failure> {
        let mut acks = Vec::with_capacity(examples.len());
        for example in examples {
            let publish = PublishMessage::build()
                .payload(Bytes::from(example.to_json_bytes()))
                .message_id(&example.id);
            acks.push(
                self.js
                    .send_publish(self.subjects.examples(&example.model), publish)
                    .await
                    .map_err(|e| Failure::new("publish example", e))?,
            );
        }
        try_join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
            .await
            .map_err(|e| Failure::new("publish example", e))?;
        Ok(())
    }

    async fn read(&self, key: &str) -> Result<Read, Failure> {
        let raw = read(&self.features, key).await?;
        // State this version cannot read is a bug or a schema change, not bad input: fail loudly
        // and retry rather than silently starting the entity from scratch.
        let decode_error = |e| Failure::new(format!("decode FEATURES {key}"), e);
        let state = if key.starts_with("user.") {
            EntityState::User(match raw.value {
                Some(bytes) => serde_json::from_slice::<UserState>(&bytes).map_err(decode_error)?,
                None => UserState::default(),
            })
        } else {
            EntityState::Item(match raw.value {
                Some(bytes) => serde_json::from_slice::<ItemState>(&bytes).map_err(decode_error)?,
                None => ItemState::default(),
            })
        };
        Ok(Read {
            state,
            revision: raw.revision,
        })
    }

    /// Writes `state` at `revision`; on a conflict re-reads and replays `mutations` on the fresher
    /// state (mutations already applied there are skipped by their positions).
    async fn write(
        &self,
        key: &str,
        mut state: EntityState,
        mut revision: u64,
        mutations: &[Mutation],
    ) -> Result<(), Failure> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let bytes = match &state {
                EntityState::User(user) => serde_json::to_vec(user),
                EntityState::Item(item) => serde_json::to_vec(item),
            }
            .expect("entity state is plain data and always serialises");
            match compare_and_set(&self.features, key, Bytes::from(bytes), revision).await {
                Ok(_) => return Ok(()),
                Err(CasError::Conflict { .. }) => {
                    let fresh = self.read(key).await?;
                    state = fresh.state;
                    revision = fresh.revision;
                    let changed = mutations
                        .iter()
                        .fold(false, |changed, m| state.apply(m) | changed);
                    if !changed {
                        return Ok(());
                    }
                }
                Err(CasError::Failed(failure)) => return Err(failure),
            }
        }
        Err(Failure::new(
            format!("update FEATURES {key}"),
            "too many concurrent writers",
        ))
    }
}
