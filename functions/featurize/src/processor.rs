//! featurize's runtime adapter, one batch at a time: read every FEATURES key the batch touches
//! (concurrently: users, items and the partitions' scaling states first, then the categories of
//! the items read; keys changed since the last state write and keys only this consumer writes
//! come from memory when it has them), plan the batch in memory, and publish its examples (acks
//! awaited together). The batch's events are then held: the changed keys are written back by
//! compare-and-set when a state write falls due ([`StateWrites`]), each key once for every batch
//! since the last, and only then are the events acknowledged.
//!
//! That order is what makes the effect exactly-once. Examples go out first with an id derived from
//! their event, so a republished one is dropped by JetStream; each entity's state then records the
//! positions it applied, so a redelivered event finds its mark and changes nothing twice. A crash
//! before a state write loses only the held events' acknowledgements: they are redelivered and
//! replayed on the states last written, as one batch, to the same examples. Keys are written in
//! phases (see `handler::write_phase`): scaling states, then users, then items and categories,
//! because a user's state is the record of which of its actions were decided and which examples
//! went out. A write that loses to another replica re-reads the key and replays the mutations
//! for it. Events the plan refuses (too late for their item's windows) are dead-lettered and
//! acknowledged with the events held.
//!
//! The processor owns the clock of the labels decided by time: every [`LabelTicks::every`] its
//! tick reads each of its partitions' label state, works out the partition's time
//! ([`handler::decision_time`]: its event-time watermark, run on with the wall clock once the
//! partition has been quiet for [`LabelTicks::idle_after`]), reads the due slots and the users of
//! the buckets whose time has passed, decides their views ([`handler::plan_due`]), publishes the
//! examples that publishes (ids derived from the views, so a repeated tick's are duplicates),
//! and writes every unwritten state; only then does it drain the decided buckets, in a second
//! write. A crash between the two leaves buckets whose users have nothing left to decide: the
//! next tick drains them. It then exports the partitions' label health.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use freshet_features::labels::{LabelHealth, LabelState, label_state_key};
use prometheus_client::metrics::gauge::Gauge;

use async_nats::jetstream::{self, kv, message::PublishMessage};
use bytes::Bytes;
use freshet::error::{Failure, Rejection};
use freshet::events;
use freshet::runtime::order::{OrderCheck, OrderGuard, chain_link, follows_directly};
use freshet::runtime::{Commit, Disposition, Incoming, Processor};
use freshet::store::kv::{CasError, compare_and_set, read};
use freshet::subjects::{Subjects, header_value};
use freshet::trace::TraceContext;
use futures::future::{join_all, try_join_all};

use crate::cache::StateCache;
use crate::handler::{self, DuePlan, EntityState, Mutation, Position, Routed, Settings, Work};

/// How often one state write is retried when another replica wrote the same key in between.
const MAX_CAS_ATTEMPTS: usize = 32;

pub struct Featurizer {
    pub js: jetstream::Context,
    pub features: kv::Store,
    pub subjects: Subjects,
    /// The model, windows and labelling the plans follow.
    pub settings: Settings,
    pub max_event_bytes: usize,
    /// Keeps events in stream order across redeliveries (the entity marks rely on it).
    pub order: OrderGuard,
    /// The last event handled in order; starts at the consumer's acknowledgement floor.
    pub mark: Option<u64>,
    /// The consumer sequence of the event at the mark, if it was a first delivery: the next
    /// first delivery after it needs no look at the stream to be known in order (most events,
    /// since a durable's events are spread over the stream between other partitions').
    pub mark_delivery: Option<u64>,
    /// The states this consumer wrote last, which it need not read back.
    pub cache: StateCache,
    /// When the states the held events changed are written.
    pub state_writes: StateWrites,
    /// The states changed since they were last written, and how.
    pub unwritten: Unwritten,
    /// The partitions this consumer has: those whose waiting views its tick decides.
    pub partitions: Vec<u32>,
    /// When labels are decided by time, and the partitions' quiet spells.
    pub ticks: LabelTicks,
    /// Label health, exported on `/metrics`.
    pub label_metrics: LabelMetrics,
}

/// The clock of the labels decided by time.
#[derive(Debug, Clone)]
pub struct LabelTicks {
    /// How often the tick runs.
    pub every: Duration,
    /// How long a partition handles no user action before its event time runs on with the wall
    /// clock (see [`handler::decision_time`]).
    pub idle_after: Duration,
    /// When the next tick is due.
    pub next: Instant,
    /// When each partition last handled a user action (or the processor started).
    pub last_action: BTreeMap<u32, Instant>,
    /// When the processor started: a partition's quiet spell counts from then at the earliest,
    /// so a restart does not jump event time ahead by the time it was down.
    pub started: Instant,
    /// Whether the label health warning is on (logged when that changes).
    pub warned: bool,
}

impl LabelTicks {
    pub fn new(every: Duration, idle_after: Duration) -> LabelTicks {
        let now = Instant::now();
        LabelTicks {
            every,
            idle_after,
            next: now + every,
            last_action: BTreeMap::new(),
            started: now,
            warned: false,
        }
    }

    /// How long `partition` has handled no user action, at `now`.
    fn idle(&self, partition: u32, now: Instant) -> TimeDelta {
        let since = self
            .last_action
            .get(&partition)
            .copied()
            .unwrap_or(self.started);
        TimeDelta::from_std(now.saturating_duration_since(since)).unwrap_or(TimeDelta::MAX)
    }
}

/// Label health featurize exports (see [`freshet_features::labels::LabelHealth`]), over its partitions.
#[derive(Clone, Default)]
pub struct LabelMetrics {
    pub waiting: Gauge,
    pub oldest_waiting_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub observed_conversion_rate: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub positive_share: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl LabelMetrics {
    pub fn register(&self, metrics: &freshet::metrics::Metrics) {
        metrics.register(
            "labels_waiting",
            "Views waiting for their label (their horizon has not passed and no purchase labelled them)",
            self.waiting.clone(),
        );
        metrics.register(
            "labels_oldest_waiting_seconds",
            "How far the latest event time is past the oldest waiting view (beyond the label horizon, labels are not being decided)",
            self.oldest_waiting_seconds.clone(),
        );
        metrics.register(
            "labels_observed_conversion_rate",
            "Views a purchase within the horizon labelled 1, per view that began waiting, over the last 10 minutes of event time",
            self.observed_conversion_rate.clone(),
        );
        metrics.register(
            "labels_positive_share",
            "Positives among the examples published over the last 10 minutes of event time, a correction counted as turning its fake negative positive",
            self.positive_share.clone(),
        );
    }
}

/// How often featurize writes the states its events changed. Every write of a key folds all of
/// its events since the last write into one compare-and-set, so fewer writes cost the server
/// less per event; the events wait unacknowledged meanwhile, which costs no freshness (their
/// examples are published with their batch).
#[derive(Debug, Clone, Copy)]
pub struct StateWrites {
    /// Once this many events are held ...
    pub every_events: usize,
    /// ... or this long after the first of them was handled, whichever comes first.
    pub interval: Duration,
}

impl StateWrites {
    /// Whether the states `held` events changed, the first handled at `since`, are due to be
    /// written at `now`.
    fn due(&self, held: usize, since: Option<Instant>, now: Instant) -> bool {
        held >= self.every_events.max(1)
            || since.is_some_and(|since| now.duration_since(since) >= self.interval)
    }
}

/// FEATURES keys changed by held events and not written yet.
#[derive(Default)]
pub struct Unwritten {
    keys: BTreeMap<String, UnwrittenKey>,
    /// Events held since the last write, and when the first of them was handled.
    held: usize,
    since: Option<Instant>,
}

/// One FEATURES key changed by held events.
struct UnwrittenKey {
    /// The state as the held events left it.
    state: EntityState,
    /// The revision last written or read, to compare-and-set against.
    revision: u64,
    /// The mutations since, to replay on a fresher state should another writer have written the
    /// key in between.
    mutations: Vec<Mutation>,
}

/// A FEATURES key as read: its state and the revision to write against.
struct Read {
    state: EntityState,
    revision: u64,
}

impl Processor for Featurizer {
    async fn process(&mut self, batch: &mut [Incoming]) -> Vec<Disposition> {
        let mut dispositions: Vec<Option<Disposition>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        let mut mark = match self.mark {
            Some(mark) => mark,
            None => match self.order.ack_floor().await {
                Ok(floor) => floor,
                Err(failure) => return retry_all(batch.len(), &failure),
            },
        };
        let mut mark_delivery = self.mark_delivery.filter(|_| self.mark.is_some());
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].stream_sequence);
        let mut routed = Vec::with_capacity(batch.len());
        let mut routed_at = Vec::with_capacity(batch.len());
        let mut waiting: Option<Failure> = None;
        for i in order {
            let sequence = batch[i].stream_sequence;
            if let Some(failure) = &waiting {
                dispositions[i] = Some(Disposition::Defer(failure.duplicate()));
                continue;
            }
            if sequence <= mark {
                // Handled before (a redelivery): its effects are durable once the states are
                // written, unless it was refused and its dead letter could not be stored;
                // refusing it again stores that (the dead letter's id makes a second copy a
                // duplicate).
                dispositions[i] = Some(match self.route(&batch[i]) {
                    Err(rejection) => Disposition::RejectHeld(rejection),
                    Ok(_) => Disposition::Hold,
                });
                continue;
            }
            let (delivery, delivered) = (batch[i].consumer_sequence, batch[i].delivered);
            if !follows_directly(mark_delivery, delivery, delivered)
                && let Err(failure) = self.order.admit(sequence, &mut mark, "featurize").await
            {
                dispositions[i] = Some(Disposition::Defer(failure.duplicate()));
                waiting = Some(failure);
                continue;
            }
            mark = sequence;
            mark_delivery = chain_link(delivery, delivered);
            let route = self.route(&batch[i]);
            if let Ok(Routed {
                trace: Some(trace), ..
            }) = &route
                && batch[i].trace.is_none()
            {
                // Traced by its envelope only: the loop's span and logs name that trace too.
                batch[i].trace = Some(trace.clone());
            }
            match route {
                Ok(r) => {
                    routed.push(r);
                    routed_at.push(i);
                }
                Err(rejection) => dispositions[i] = Some(Disposition::RejectHeld(rejection)),
            }
        }
        match self.handle(&routed).await {
            Ok(rejected) => {
                for &i in &routed_at {
                    dispositions[i] = Some(Disposition::Hold);
                }
                for (index, rejection) in rejected {
                    if let Some(&i) = routed_at.get(index) {
                        dispositions[i] = Some(Disposition::RejectHeld(rejection));
                    }
                }
                // Only now is everything up to `mark` handled.
                self.mark = Some(mark);
                self.mark_delivery = mark_delivery;
            }
            Err(failure) => {
                for i in routed_at {
                    dispositions[i] = Some(Disposition::Retry(failure.duplicate()));
                }
                // The next event delivered may follow the failed ones in delivery order while
                // they wait for redelivery (a consumer leader that took over can even number
                // it straight after the mark): only the stream can tell it is next now.
                self.mark_delivery = None;
            }
        }
        if waiting.is_some() {
            self.mark_delivery = None;
        }
        let held = dispositions
            .iter()
            .filter(|d| matches!(d, Some(Disposition::Hold | Disposition::RejectHeld(_))))
            .count();
        if held > 0 {
            self.unwritten.held += held;
            self.unwritten.since.get_or_insert_with(Instant::now);
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

    async fn commit(&mut self, final_commit: bool) -> Result<Commit, Failure> {
        if !self.unwritten.keys.is_empty() {
            let due =
                self.state_writes
                    .due(self.unwritten.held, self.unwritten.since, Instant::now());
            if !(final_commit || due) {
                return Ok(Commit::Pending);
            }
            self.write_unwritten().await?;
        }
        // Nothing is unwritten: every held event is durable.
        self.unwritten.held = 0;
        self.unwritten.since = None;
        Ok(Commit::Durable)
    }

    fn commit_due(&self) -> Option<Instant> {
        self.unwritten
            .since
            .map(|since| since + self.state_writes.interval)
    }

    async fn tick(&mut self) {
        self.ticks.next = Instant::now() + self.ticks.every;
        if !self.settings.labels.waits() {
            return;
        }
        match self.decide_due().await {
            Ok(states) => self.report_health(&states),
            Err(failure) => {
                tracing::warn!(error = %failure, "cannot decide the labels time decides; trying again at the next tick")
            }
        }
    }

    fn tick_due(&self) -> Option<Instant> {
        self.settings.labels.waits().then_some(self.ticks.next)
    }
}

/// The label states among `states`, by partition.
fn label_states(
    keys: &BTreeMap<u32, String>,
    states: &BTreeMap<String, EntityState>,
) -> Vec<LabelState> {
    keys.values()
        .filter_map(|key| match states.get(key) {
            Some(EntityState::Labels(labels)) => Some(labels.clone()),
            _ => None,
        })
        .collect()
}

fn retry_all(n: usize, failure: &Failure) -> Vec<Disposition> {
    (0..n)
        .map(|_| Disposition::Retry(failure.duplicate()))
        .collect()
}

impl Featurizer {
    fn route(&self, message: &Incoming) -> Result<Routed, freshet::error::Rejection> {
        let (event, envelope_trace) =
            events::decode_traced(&message.payload, self.max_event_bytes)?;
        let partition = handler::route(&self.subjects, &message.subject, &event)?;
        let at = handler::event_time(&event, message.published, self.settings.max_future_skew)?;
        // The message's `traceparent` header, else the envelope's tracing extension.
        let trace = match &message.trace {
            Some(trace) => Some(trace.clone()),
            None => envelope_trace.as_ref().map(TraceContext::child),
        };
        Ok(Routed {
            work: handler::work_for(&event, at),
            event_id: event.id,
            position: Position {
                partition,
                sequence: message.stream_sequence,
            },
            at,
            received: message.published,
            trace,
        })
    }

    /// Plans a batch and publishes its examples; returns the events refused, by their index in
    /// `batch`. The states it changed join the unwritten ones; a batch that fails leaves those as
    /// they were.
    async fn handle(&mut self, batch: &[Routed]) -> Result<Vec<(usize, Rejection)>, Failure> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut states = BTreeMap::new();
        let mut revisions = BTreeMap::new();
        let now = Instant::now();
        for routed in batch {
            if matches!(routed.work, Work::UserAction(_)) {
                self.ticks
                    .last_action
                    .insert(routed.position.partition, now);
            }
        }
        let keys = handler::keys_of(&self.settings, batch);
        self.take_known(&keys, &mut states, &mut revisions);
        self.read_all(keys, &mut states, &mut revisions).await?;
        // An action's category is known only from its item's state.
        let categories = handler::category_keys_of(batch, &states);
        self.take_known(&categories, &mut states, &mut revisions);
        self.read_all(categories, &mut states, &mut revisions)
            .await?;
        let mut plan = handler::plan_batch(&self.settings, batch, &mut states);
        // The key sets above are what planning touches; a unit test holds them to it.
        if let Some(key) = plan
            .mutations
            .keys()
            .find(|key| !revisions.contains_key(*key))
        {
            return Err(Failure::new(
                format!("update FEATURES {key}"),
                "the plan changed a key that was not read",
            ));
        }
        self.publish_examples(&plan.examples, &plan.origins, batch)
            .await?;
        self.keep(states, &revisions, &mut plan.mutations);
        if !plan.rejected.is_empty() {
            tracing::debug!(
                refused = plan.rejected.len(),
                "events refused as late for their item's windows"
            );
        }
        Ok(plan.rejected)
    }

    /// Takes back the states a batch or a tick read and changed: a changed key joins the unwritten
    /// ones with its mutations; one read and not changed goes to the cache.
    fn keep(
        &mut self,
        states: BTreeMap<String, EntityState>,
        revisions: &BTreeMap<String, u64>,
        mutations: &mut BTreeMap<String, Vec<Mutation>>,
    ) {
        for (key, state) in states {
            let Some(&revision) = revisions.get(&key) else {
                continue;
            };
            let mutations = mutations.remove(&key).unwrap_or_default();
            match self.unwritten.keys.get_mut(&key) {
                Some(unwritten) => {
                    unwritten.state = state;
                    unwritten.mutations.extend(mutations);
                }
                None if mutations.is_empty() => {
                    // What was read and not changed is as current as it was.
                    self.cache.put(key, state, revision);
                }
                None => {
                    let unwritten = UnwrittenKey {
                        state,
                        revision,
                        mutations,
                    };
                    self.unwritten.keys.insert(key, unwritten);
                }
            }
        }
    }

    /// Reads `keys` (from memory when known) into `states` and `revisions`.
    async fn load(
        &mut self,
        keys: BTreeSet<String>,
        states: &mut BTreeMap<String, EntityState>,
        revisions: &mut BTreeMap<String, u64>,
    ) -> Result<(), Failure> {
        self.take_known(&keys, states, revisions);
        self.read_all(keys, states, revisions).await
    }

    /// The tick's work: decides the views of every due bucket of this consumer's partitions,
    /// publishes what that publishes, writes every unwritten state, then drains the decided
    /// buckets and writes again. Returns the partitions' label states as they end.
    async fn decide_due(&mut self) -> Result<Vec<LabelState>, Failure> {
        let settings = self.settings.clone();
        let now = Instant::now();
        let mut states = BTreeMap::new();
        let mut revisions = BTreeMap::new();
        let label_keys: BTreeMap<u32, String> = self
            .partitions
            .iter()
            .map(|&p| (p, label_state_key(&settings.model, p)))
            .collect();
        self.load(
            label_keys.values().cloned().collect(),
            &mut states,
            &mut revisions,
        )
        .await?;
        // Per partition, the buckets whose time has passed.
        let mut due: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        let mut slots = BTreeSet::new();
        for (&partition, key) in &label_keys {
            let Some(EntityState::Labels(labels)) = states.get(key) else {
                continue;
            };
            let idle = self.ticks.idle(partition, now);
            let idle_after = TimeDelta::from_std(self.ticks.idle_after).unwrap_or(TimeDelta::MAX);
            let Some(through) = handler::decision_time(
                labels.latest_event_at,
                settings.labels.out_of_orderness,
                idle,
                idle_after,
            ) else {
                continue;
            };
            let (buckets, keys) = handler::due_slots(&settings, partition, labels, through);
            if !buckets.is_empty() {
                due.insert(partition, buckets);
                slots.extend(keys);
            }
        }
        let mut plans: Vec<(u32, DuePlan)> = Vec::new();
        if !due.is_empty() {
            self.load(slots, &mut states, &mut revisions).await?;
            let users: BTreeMap<u32, BTreeSet<String>> = due
                .iter()
                .map(|(&p, buckets)| (p, handler::due_users(&settings, p, buckets, &states)))
                .collect();
            self.load(
                users.values().flatten().cloned().collect(),
                &mut states,
                &mut revisions,
            )
            .await?;
            for (partition, buckets) in &due {
                let plan = handler::plan_due(&settings, buckets, &users[partition], &mut states);
                plans.push((*partition, plan));
            }
            let examples: Vec<_> = plans
                .iter()
                .flat_map(|(_, plan)| plan.examples.iter().cloned())
                .collect();
            self.publish_examples(&examples, &[], &[]).await?;
            let mut mutations = BTreeMap::new();
            for (_, plan) in &mut plans {
                for (key, list) in std::mem::take(&mut plan.mutations) {
                    mutations.entry(key).or_insert_with(Vec::new).extend(list);
                }
            }
            self.keep(std::mem::take(&mut states), &revisions, &mut mutations);
        } else {
            self.keep(
                std::mem::take(&mut states),
                &revisions,
                &mut BTreeMap::new(),
            );
        }
        // Every decision is durable before a bucket is drained (the held events' states too,
        // which is harmless: they are acknowledged at the next commit).
        self.write_unwritten().await?;
        let mut revisions = BTreeMap::new();
        if !plans.is_empty() {
            let mut keys: BTreeSet<String> = label_keys.values().cloned().collect();
            for (partition, plan) in &plans {
                keys.extend(handler::drain_keys(&settings, *partition, plan));
            }
            self.load(keys, &mut states, &mut revisions).await?;
            let mut mutations = BTreeMap::new();
            let at = Utc::now();
            for (partition, plan) in &plans {
                let decided_at = plan.through.unwrap_or(at);
                handler::drain(
                    &settings,
                    *partition,
                    plan,
                    decided_at,
                    &mut states,
                    &mut mutations,
                );
            }
            let labels = label_states(&label_keys, &states);
            self.keep(states, &revisions, &mut mutations);
            self.write_unwritten().await?;
            return Ok(labels);
        }
        self.load(
            label_keys.values().cloned().collect(),
            &mut states,
            &mut revisions,
        )
        .await?;
        let labels = label_states(&label_keys, &states);
        self.keep(states, &revisions, &mut BTreeMap::new());
        Ok(labels)
    }

    /// Exports the label health of the partitions' states, and says in the log when the share of
    /// positives published parts from the observed conversion rate, and when they meet again.
    fn report_health(&mut self, states: &[LabelState]) {
        let health = LabelHealth::of(states, self.settings.labels.horizon);
        let metrics = &self.label_metrics;
        metrics.waiting.set(health.waiting as i64);
        metrics
            .oldest_waiting_seconds
            .set(health.oldest_waiting_seconds.unwrap_or(0.0));
        if let Some(rate) = health.observed_conversion_rate() {
            metrics.observed_conversion_rate.set(rate);
        }
        if let Some(share) = health.positive_share() {
            metrics.positive_share.set(share);
        }
        match health.warning() {
            Some(warning) if !self.ticks.warned => {
                self.ticks.warned = true;
                tracing::warn!(model = %self.settings.model, method = %self.settings.labels.method,
                    waiting = health.waiting, "{warning}");
            }
            None if self.ticks.warned
                && health.recent.views >= freshet_features::labels::MIN_VIEWS_TO_COMPARE =>
            {
                self.ticks.warned = false;
                tracing::info!(model = %self.settings.model, "the share of positives published meets the observed conversion rate again");
            }
            _ => {}
        }
    }

    /// Writes every unwritten key, phase by phase (see `handler::write_phase`): a key of a later
    /// phase is not written before every key of the earlier ones is. A key written stays written
    /// if another fails; it moves to the cache.
    async fn write_unwritten(&mut self) -> Result<(), Failure> {
        let phases: BTreeSet<u8> = self
            .unwritten
            .keys
            .keys()
            .map(|key| handler::write_phase(key))
            .collect();
        for phase in phases {
            let keys: Vec<String> = self
                .unwritten
                .keys
                .keys()
                .filter(|key| handler::write_phase(key) == phase)
                .cloned()
                .collect();
            let this = &*self;
            let written = join_all(keys.iter().map(|key| {
                let unwritten = &this.unwritten.keys[key];
                this.write(
                    key,
                    unwritten.state.clone(),
                    unwritten.revision,
                    &unwritten.mutations,
                )
            }))
            .await;
            let mut failure = None;
            for (key, outcome) in keys.into_iter().zip(written) {
                match outcome {
                    Ok((state, revision)) => {
                        self.unwritten.keys.remove(&key);
                        self.cache.put(key, state, revision);
                    }
                    Err(failed) => failure = Some(failed),
                }
            }
            if let Some(failure) = failure {
                return Err(failure);
            }
        }
        Ok(())
    }

    /// Puts the known states of `keys` into `states` and `revisions`: an unwritten one as the
    /// held events left it (a copy: the batch may fail), else a cached one (taken out of the
    /// cache until the batch puts it back).
    fn take_known(
        &mut self,
        keys: &BTreeSet<String>,
        states: &mut BTreeMap<String, EntityState>,
        revisions: &mut BTreeMap<String, u64>,
    ) {
        for key in keys {
            let known = match self.unwritten.keys.get(key) {
                Some(unwritten) => Some((unwritten.state.clone(), unwritten.revision)),
                None => self.cache.take(key),
            };
            if let Some((state, revision)) = known {
                states.insert(key.clone(), state);
                revisions.insert(key.clone(), revision);
            }
        }
    }

    /// Reads the `keys` not in `states` yet, concurrently, into `states` and `revisions`.
    async fn read_all(
        &self,
        keys: impl IntoIterator<Item = String>,
        states: &mut BTreeMap<String, EntityState>,
        revisions: &mut BTreeMap<String, u64>,
    ) -> Result<(), Failure> {
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|key| !states.contains_key(key))
            .collect();
        let reads = try_join_all(keys.iter().map(|key| self.read(key))).await?;
        for (key, read) in keys.into_iter().zip(reads) {
            revisions.insert(key.clone(), read.revision);
            states.insert(key, read.state);
        }
        Ok(())
    }

    /// Publishes examples, each in the trace of the event of `batch` that caused it (by its index
    /// in `origins`, when that event carried one), and waits for JetStream to store them all.
    async fn publish_examples(
        &self,
        examples: &[freshet::examples::ExampleRecord],
        origins: &[usize],
        batch: &[Routed],
    ) -> Result<(), Failure> {
        let mut acks = Vec::with_capacity(examples.len());
        for (i, example) in examples.iter().enumerate() {
            let mut publish = PublishMessage::build()
                .payload(Bytes::from(example.to_json_bytes()))
                .message_id(header_value(&example.id));
            let origin = origins.get(i).and_then(|&origin| batch.get(origin));
            if let Some(trace) = origin.and_then(|routed| routed.trace.as_ref()) {
                publish = trace.stamp(publish);
            }
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
        let state = match raw.value {
            Some(bytes) => EntityState::decode(key, &bytes),
            None => EntityState::empty(key)
                .ok_or_else(|| handler::StateError::UnknownKey(key.to_string())),
        }
        .map_err(|e| Failure::new(format!("decode FEATURES {key}"), e))?;
        Ok(Read {
            state,
            revision: raw.revision,
        })
    }

    /// Writes `state` at `revision`; on a conflict re-reads and replays `mutations` on the fresher
    /// state (mutations already applied there are skipped by their positions). Returns the state
    /// stored and its revision.
    async fn write(
        &self,
        key: &str,
        mut state: EntityState,
        mut revision: u64,
        mutations: &[Mutation],
    ) -> Result<(EntityState, u64), Failure> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let bytes = Bytes::from(state.encode());
            match compare_and_set(&self.features, key, bytes, revision).await {
                Ok(written) => return Ok((state, written)),
                Err(CasError::Conflict { .. }) => {
                    let fresh = self.read(key).await?;
                    state = fresh.state;
                    revision = fresh.revision;
                    let changed = mutations.iter().fold(false, |changed, m| {
                        state.apply(m, &self.settings).is_some() | changed
                    });
                    if !changed {
                        return Ok((state, revision));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_written_once_so_many_events_are_held_or_so_long_whichever_comes_first() {
        let writes = StateWrites {
            every_events: 4096,
            interval: Duration::from_millis(100),
        };
        let first = Instant::now();
        let at = |ms| first + Duration::from_millis(ms);
        // Nothing held since the last write: nothing due.
        assert!(!writes.due(0, None, at(500)));
        // Fewer events within the interval wait; as many are due at once.
        assert!(!writes.due(4095, Some(first), at(99)));
        assert!(writes.due(4096, Some(first), at(1)));
        // One event is due once the interval has passed since it was handled.
        assert!(writes.due(1, Some(first), at(100)));
        // A count of zero does not make events wait for the interval.
        let zero = StateWrites {
            every_events: 0,
            interval: Duration::from_secs(3600),
        };
        assert!(zero.due(1, Some(first), first));
    }
}
