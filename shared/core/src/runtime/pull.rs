//! The one JetStream consumer loop every function runs: receive a batch, hand it to the function's
//! [`Processor`], apply each message's [`Disposition`], and acknowledge last.
//!
//! A message is acknowledged only after everything it caused is durable. Refused input is
//! published to the dead-letter subject before it is terminated; a transient failure is
//! negatively acknowledged with a growing delay. On shutdown the loop stops receiving, lets the
//! processor commit what it holds, acknowledges, and returns; the process then exits 0.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::Instrument;

use crate::error::{Failure, Rejection};
use crate::metrics::Metrics;
use crate::runtime::dead_letter::{self, Origin};
use crate::shutdown::Shutdown;
use crate::subjects::Subjects;
use crate::telemetry::{Span, SpanKind, Spans};
use crate::trace::TraceContext;

/// One received message, as a processor sees it: no NATS handles, just data.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub subject: String,
    pub payload: Bytes,
    /// Stream sequence: the message's position in its stream, the unit of exactly-once bookkeeping.
    pub stream_sequence: u64,
    /// How many times this message has been delivered (1 the first time).
    pub delivered: i64,
    /// The consumer's delivery sequence: one more for every delivery, redeliveries included
    /// (`None` if the message's metadata could not be read).
    pub consumer_sequence: Option<u64>,
    /// When JetStream stored the message: the same on every redelivery, so a handler that uses it
    /// as "now" stays deterministic.
    pub published: DateTime<Utc>,
    /// The trace context of this function's handling of the message, when the message carried a
    /// `traceparent` header: a child of it (a fresh trace if it was invalid). What the message
    /// causes is sent on with it. `None`, at no cost, for an untraced message.
    pub trace: Option<TraceContext>,
}

/// What to do with one message after the processor has seen it.
#[derive(Debug)]
pub enum Disposition {
    /// Its effects are durable: acknowledge.
    Ack,
    /// Its effects are pending in the processor: acknowledge when [`Processor::commit`] says so.
    Hold,
    /// Refuse it for good: publish to dead-letter, then terminate.
    Reject(Rejection),
    /// Refuse it, publish it to dead-letter now, but acknowledge it only with the held messages:
    /// for a processor whose progress mark counts refused messages as handled, so the mark and
    /// the acknowledgements become durable together.
    RejectHeld(Rejection),
    /// Try again later: negatively acknowledge with a backoff.
    Retry(Failure),
    /// Not yet: an earlier message must be handled first (the order guard). Negatively
    /// acknowledged with a short fixed delay, not a growing backoff: the earlier message is
    /// expected soon, and a message that waited many times must not then sit out a long delay
    /// while the ones after it wait for it in turn.
    Defer(Failure),
}

/// How long a deferred message stays away.
pub const DEFER_DELAY: Duration = Duration::from_millis(200);

/// What a commit achieved for the messages held so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Not due yet: keep holding.
    Pending,
    /// Everything held is durable: acknowledge it.
    Durable,
    /// The held effects were thrown away (another writer won a compare-and-set): hand the
    /// messages back for redelivery at once.
    Abandoned,
}

/// A function's logic as the loop drives it.
pub trait Processor: Send {
    /// Handles a batch; returns one disposition per message, in order. After a `Retry`, a
    /// processor should return `Retry` for the rest of the batch too, so per-entity order holds.
    ///
    /// A processor that finds a message's trace context in its payload (an envelope's tracing
    /// extension) where no header carried one sets the message's `trace` to the context it
    /// handles it in, so the loop's span and log lines for the message name it too.
    fn process(&mut self, batch: &mut [Incoming]) -> impl Future<Output = Vec<Disposition>> + Send;

    /// Makes held effects durable when due (or at once when `final_commit`). An error is
    /// transient: the messages stay held and the commit is offered again.
    fn commit(
        &mut self,
        final_commit: bool,
    ) -> impl Future<Output = Result<Commit, Failure>> + Send {
        let _ = final_commit;
        async { Ok(Commit::Pending) }
    }

    /// When a commit of what it holds falls due by time alone, if it will: the loop offers a
    /// commit then even if no message arrives, instead of at its next idle tick.
    fn commit_due(&self) -> Option<Instant> {
        None
    }

    /// Work that falls due by time alone, which no message brings (featurize deciding the labels
    /// of views whose horizon has passed): called once [`tick_due`](Self::tick_due) has passed,
    /// after a batch or while the loop waits for one. It makes what it changes durable itself;
    /// a failure is its own to log and retry at a later tick.
    fn tick(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// When [`tick`](Self::tick) falls due next, if ever.
    fn tick_due(&self) -> Option<Instant> {
        None
    }

    /// Whether a batch's wait may count from when its first message was stored (see `Gather`).
    /// A processor whose batch is a unit of work only says yes. One whose batch size shapes what
    /// it computes says no: a training step's size must not follow how busy the loop was, so its
    /// batches wait the whole wait from when the loop took their first message.
    fn lingers(&self) -> bool {
        true
    }
}

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// The function's name, for dead-letter subjects and logs.
    pub function: String,
    pub batch_size: usize,
    /// How long a batch may fill: counted from when its first message was stored, or for a
    /// processor that does not linger from when the loop took it (see `Gather`).
    pub batch_wait: Duration,
    /// How often to offer the processor a commit while no message arrives.
    pub idle_tick: Duration,
    /// Redelivery happens after this; held messages are kept alive well within it.
    pub ack_wait: Duration,
    /// Where the span of each message of a sampled trace goes (`<function> process`, from the
    /// batch's arrival until its disposition was carried out: for a held message, until it is
    /// acknowledged).
    pub spans: Spans,
}

/// A message whose acknowledgement waits for the processor's commit, with its span.
struct Held {
    message: jetstream::Message,
    span: Option<Box<Span>>,
}

/// Delay before redelivering a message that failed `delivered` times: 100 ms doubling to 30 s.
pub fn retry_delay(delivered: i64) -> Duration {
    let exponent = delivered.clamp(1, 10) as u32 - 1;
    Duration::from_millis(100u64.saturating_mul(1 << exponent)).min(Duration::from_secs(30))
}

/// Runs the loop until shutdown. Returns an error only if the consumer cannot be read at all
/// after shutdown was requested; transient errors are logged and retried.
pub async fn run<P: Processor>(
    js: jetstream::Context,
    consumer: PullConsumer,
    subjects: Subjects,
    settings: LoopSettings,
    metrics: Metrics,
    mut processor: P,
    mut shutdown: Shutdown,
) {
    let mut held: Vec<Held> = Vec::new();
    let mut held_since = Instant::now();
    let mut reconnect_attempt: i64 = 0;
    'outer: while !shutdown.is_triggered() {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(settings.batch_size)
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(err) => {
                reconnect_attempt += 1;
                tracing::warn!(error = %err, "cannot start pulling; retrying");
                tokio::time::sleep(retry_delay(reconnect_attempt)).await;
                continue;
            }
        };
        reconnect_attempt = 0;
        loop {
            // Wait for the first message of a batch, offering the processor a commit when idle.
            let first = tokio::select! {
                next = messages.next() => next,
                _ = tokio::time::sleep_until(idle_wake(&processor, &held, settings.idle_tick)) => {
                    tick_if_due(&mut processor).await;
                    commit_held(&mut processor, &mut held, &metrics, &settings.spans, false).await;
                    keep_alive(&held, &mut held_since, settings.ack_wait).await;
                    continue;
                }
                _ = shutdown.wait() => break 'outer,
            };
            let mut batch = match first {
                Some(Ok(message)) => vec![message],
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "pull failed; resubscribing");
                    tokio::time::sleep(retry_delay(1)).await;
                    continue 'outer;
                }
                None => continue 'outer,
            };
            let gather = Gather::after(
                &batch[0],
                processor.lingers(),
                settings.batch_size,
                settings.batch_wait,
            );
            while batch.len() < settings.batch_size {
                let deadline = tokio::time::Instant::from_std(gather.deadline(batch.len()));
                match tokio::time::timeout_at(deadline, messages.next()).await {
                    Ok(Some(Ok(message))) => batch.push(message),
                    Ok(Some(Err(err))) => {
                        tracing::warn!(error = %err, "pull failed mid-batch");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            if held.is_empty() {
                held_since = Instant::now();
            }
            handle_batch(
                &js,
                &subjects,
                &settings,
                &metrics,
                &mut processor,
                batch,
                &mut held,
            )
            .await;
            tick_if_due(&mut processor).await;
            commit_held(&mut processor, &mut held, &metrics, &settings.spans, false).await;
            keep_alive(&held, &mut held_since, settings.ack_wait).await;
        }
    }
    finish(&mut processor, &mut held, &metrics, &settings.spans).await;
}

/// How long a batch gathers after its first message arrived. A producer's linger: the wait
/// counts from when JetStream stored that message, so a message that queued while the previous
/// batch was handled does not wait again, which would lengthen every cycle of a busy consumer and
/// add to its queue. But the batch always takes the messages the stream already held when its
/// first was delivered (up to the batch size), waiting for them as long as `batch_wait` from
/// now: a consumer that is behind still handles full batches, not whatever had reached its
/// buffer. A processor that does not linger ([`Processor::lingers`]) waits the whole wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gather {
    /// The batch closes at this size or at `backlog_deadline`, whichever comes first ...
    backlog: usize,
    backlog_deadline: Instant,
    /// ... and beyond it, at `linger_deadline` (never later than `backlog_deadline`).
    linger_deadline: Instant,
}

impl Gather {
    fn after(
        first: &jetstream::Message,
        lingers: bool,
        batch_size: usize,
        batch_wait: Duration,
    ) -> Self {
        let (stored, pending) = match first.info() {
            Ok(info) => (
                lingers.then(|| SystemTime::from(info.published)),
                info.pending,
            ),
            Err(_) => (None, 0),
        };
        Self::plan(
            stored,
            pending,
            batch_size,
            batch_wait,
            SystemTime::now(),
            Instant::now(),
        )
    }

    /// `stored`: when the first message was stored (`None` if unknown or not to linger: the
    /// whole wait);
    /// `pending`: how many more the stream held for this consumer when it was delivered.
    fn plan(
        stored: Option<SystemTime>,
        pending: u64,
        batch_size: usize,
        batch_wait: Duration,
        wall_now: SystemTime,
        now: Instant,
    ) -> Self {
        // A server clock ahead of ours counts as just stored: never more than `batch_wait`.
        let waited = stored.map_or(Duration::ZERO, |stored| {
            wall_now.duration_since(stored).unwrap_or_default()
        });
        let pending = usize::try_from(pending).unwrap_or(usize::MAX);
        Self {
            backlog: pending.saturating_add(1).min(batch_size),
            backlog_deadline: now + batch_wait,
            linger_deadline: now + batch_wait.saturating_sub(waited),
        }
    }

    /// When a batch that holds `gathered` messages stops waiting for more.
    fn deadline(&self, gathered: usize) -> Instant {
        if gathered < self.backlog {
            self.backlog_deadline
        } else {
            self.linger_deadline
        }
    }
}

/// When the loop, waiting for a batch, offers the processor a commit (and its tick) next.
fn idle_wake<P: Processor>(
    processor: &P,
    held: &[Held],
    idle_tick: Duration,
) -> tokio::time::Instant {
    let now = Instant::now();
    let commit = processor.commit_due().filter(|_| !held.is_empty());
    let due = commit.into_iter().chain(processor.tick_due()).min();
    tokio::time::Instant::from_std(now + idle_wait(due, idle_tick, now))
}

/// Runs the processor's tick if it has fallen due.
async fn tick_if_due<P: Processor>(processor: &mut P) {
    if processor
        .tick_due()
        .is_some_and(|due| due <= Instant::now())
    {
        processor.tick().await;
    }
}

/// How long the loop waits idle before offering a commit: the idle tick, or less when a commit
/// falls due sooner. A due time already past means the commit after the last batch did not go
/// through; the idle tick paces its retries.
fn idle_wait(due: Option<Instant>, idle_tick: Duration, now: Instant) -> Duration {
    due.filter(|due| *due > now)
        .map_or(idle_tick, |due| (due - now).min(idle_tick))
}

async fn handle_batch<P: Processor>(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &LoopSettings,
    metrics: &Metrics,
    processor: &mut P,
    batch: Vec<jetstream::Message>,
    held: &mut Vec<Held>,
) {
    let started = Instant::now();
    // With span export on, the batch's arrival and the spans' name; nothing at all otherwise.
    let exported = settings
        .spans
        .is_on()
        .then(|| (SystemTime::now(), format!("{} process", settings.function)));
    metrics.messages_in.inc_by(batch.len() as u64);
    if let Some(Ok(info)) = batch.last().map(|m| m.info()) {
        metrics.observe_pending(info.stream, info.consumer, info.pending);
    }
    let mut incoming: Vec<Incoming> = batch
        .iter()
        .map(|m| {
            let (stream_sequence, delivered, consumer_sequence, published) = match m.info() {
                Ok(info) => {
                    let nanos =
                        i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX);
                    (
                        info.stream_sequence,
                        info.delivered,
                        Some(info.consumer_sequence),
                        DateTime::from_timestamp_nanos(nanos),
                    )
                }
                Err(_) => (0, 1, None, Utc::now()),
            };
            Incoming {
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
                stream_sequence,
                delivered,
                consumer_sequence,
                published,
                trace: m.headers.as_ref().and_then(TraceContext::handling_nats),
            }
        })
        .collect();
    let mut dispositions = processor.process(&mut incoming).await;
    if dispositions.len() != batch.len() {
        // A processor bug must not lose messages: retry whatever has no disposition.
        tracing::error!(
            got = dispositions.len(),
            expected = batch.len(),
            "processor returned the wrong number of dispositions"
        );
        dispositions.resize_with(batch.len(), || {
            Disposition::Retry(Failure::new("process", "no disposition returned"))
        });
    }
    // Every retried message of a batch waits the same delay, so they come back in stream order.
    let retry_after = incoming
        .iter()
        .zip(&dispositions)
        .filter(|(_, d)| matches!(d, Disposition::Retry(_)))
        .map(|(m, _)| m.delivered)
        .max()
        .unwrap_or(1);
    for ((message, input), disposition) in batch.into_iter().zip(&incoming).zip(dispositions) {
        let mut span = exported.as_ref().and_then(|(arrived, name)| {
            settings
                .spans
                .start_span_at(input.trace.as_ref(), name, SpanKind::Consumer, *arrived)
        });
        if let Some(span) = &mut span {
            describe(span, input, &disposition);
        }
        let log = log_span(&disposition, input.trace.as_ref());
        // Carries the disposition out; gives back the message if it is now held.
        let settle = async {
            match disposition {
                Disposition::Ack => {
                    ack(&message, AckKind::Ack, metrics).await;
                    None
                }
                Disposition::Hold => Some(message),
                Disposition::Reject(rejection) => {
                    if dead_letter_input(js, subjects, settings, metrics, input, &rejection).await {
                        ack(&message, AckKind::Ack, metrics).await;
                    } else {
                        nak(&message, retry_delay(input.delivered), metrics).await;
                    }
                    None
                }
                Disposition::RejectHeld(rejection) => {
                    if dead_letter_input(js, subjects, settings, metrics, input, &rejection).await {
                        Some(message)
                    } else {
                        nak(&message, retry_delay(input.delivered), metrics).await;
                        None
                    }
                }
                Disposition::Retry(failure) => {
                    tracing::warn!(subject = %input.subject, seq = input.stream_sequence, delivered = input.delivered, error = %failure, "transient failure; will redeliver");
                    nak(&message, retry_delay(retry_after), metrics).await;
                    None
                }
                Disposition::Defer(failure) => {
                    tracing::debug!(subject = %input.subject, seq = input.stream_sequence, delivered = input.delivered, reason = %failure, "deferred");
                    nak(&message, DEFER_DELAY, metrics).await;
                    None
                }
            }
        };
        match settle.instrument(log).await {
            Some(message) => held.push(Held {
                message,
                span: span.map(Box::new),
            }),
            None => settings.spans.end(span),
        }
    }
    metrics
        .batch_seconds
        .observe(started.elapsed().as_secs_f64());
}

/// The attributes of a message's span (OpenTelemetry's messaging conventions, and freshet's
/// position and disposition); refused and retried messages are errors, with why.
fn describe(span: &mut Span, input: &Incoming, disposition: &Disposition) {
    span.set("messaging.system", "nats");
    span.set("messaging.destination.name", input.subject.as_str());
    span.set("messaging.operation", "process");
    span.set("freshet.stream_sequence", input.stream_sequence);
    span.set("freshet.delivered", input.delivered);
    let name = match disposition {
        Disposition::Ack => "ack",
        Disposition::Hold => "hold",
        Disposition::Reject(rejection) | Disposition::RejectHeld(rejection) => {
            span.fail(rejection.to_string());
            "reject"
        }
        Disposition::Retry(failure) => {
            span.fail(failure.to_string());
            "retry"
        }
        Disposition::Defer(_) => "defer",
    };
    span.set("freshet.disposition", name);
}

/// Ends the span of a held message now settled; `failure` says why it was handed back instead
/// of acknowledged.
fn end_held(spans: &Spans, span: Option<Box<Span>>, failure: Option<&str>) {
    spans.end(span.map(|span| {
        let mut span = *span;
        if let Some(failure) = failure {
            span.fail(failure);
        }
        span
    }));
}

/// The span a message's disposition is carried out in: for a traced message that is logged
/// about (refused, retried, deferred), one naming its trace and span, so its log lines can be
/// joined with the producer's trace; otherwise none, which costs nothing.
fn log_span(disposition: &Disposition, trace: Option<&TraceContext>) -> tracing::Span {
    match (disposition, trace) {
        (Disposition::Ack | Disposition::Hold, _) | (_, None) => tracing::Span::none(),
        (_, Some(trace)) => tracing::info_span!(
            "message",
            trace_id = %trace.trace_id(),
            span_id = %trace.span_id()
        ),
    }
}

/// Attempts at dead-lettering one input before it is handed back for redelivery. The processors
/// count a refused input as handled in order the moment they refuse it, so a redelivered copy
/// may be acknowledged as already handled: the dead letter must be stored now, while the server
/// is briefly away too (a restart, a pause), not left to a redelivery.
const DEAD_LETTER_ATTEMPTS: i64 = 10;

/// Publishes a refused input to the dead-letter subject, retrying with backoff; false if every
/// attempt failed (then the message is redelivered rather than lost).
async fn dead_letter_input(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &LoopSettings,
    metrics: &Metrics,
    input: &Incoming,
    rejection: &Rejection,
) -> bool {
    tracing::info!(subject = %input.subject, seq = input.stream_sequence, reason = %rejection.reason, field = %rejection.field, detail = %rejection.detail, "refused input; sent to dead-letter");
    let origin = Origin {
        subject: &input.subject,
        stream_sequence: Some(input.stream_sequence),
        dedup_id: input.stream_sequence.to_string(),
        trace: input.trace.as_ref(),
    };
    for attempt in 1..=DEAD_LETTER_ATTEMPTS {
        let published = dead_letter::publish(
            js,
            subjects,
            &settings.function,
            rejection,
            &origin,
            input.payload.clone(),
        )
        .await;
        match published {
            Ok(()) => {
                metrics.count_rejection(rejection.reason.as_str());
                return true;
            }
            Err(failure) => {
                tracing::warn!(error = %failure, attempt, "dead-letter publish failed");
                if attempt < DEAD_LETTER_ATTEMPTS {
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
            }
        }
    }
    false
}

async fn ack(message: &jetstream::Message, kind: AckKind, metrics: &Metrics) {
    // A lost ack means a redelivery, which the processors recognise; it is not worth a retry here.
    match message.ack_with(kind).await {
        Ok(()) => {
            metrics.messages_acked.inc();
            if let Ok(info) = message.info() {
                let stored =
                    i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX);
                metrics.observe_ack(
                    info.stream,
                    info.consumer,
                    DateTime::from_timestamp_nanos(stored),
                );
            }
        }
        Err(err) => tracing::warn!(error = %err, "ack failed; the message will be redelivered"),
    }
}

async fn nak(message: &jetstream::Message, delay: Duration, metrics: &Metrics) {
    metrics.retries.inc();
    if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(error = %err, "nak failed; the message will be redelivered after ack_wait");
    }
}

async fn commit_held<P: Processor>(
    processor: &mut P,
    held: &mut Vec<Held>,
    metrics: &Metrics,
    spans: &Spans,
    final_commit: bool,
) {
    if held.is_empty() && !final_commit {
        return;
    }
    match processor.commit(final_commit).await {
        Ok(Commit::Durable) => {
            for Held { message, span } in held.drain(..) {
                ack(&message, AckKind::Ack, metrics).await;
                end_held(spans, span, None);
            }
        }
        Ok(Commit::Pending) => {}
        Ok(Commit::Abandoned) => {
            for Held { message, span } in held.drain(..) {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                end_held(spans, span, Some("its effects were abandoned; redelivered"));
            }
        }
        Err(failure) => {
            tracing::warn!(error = %failure, held = held.len(), "commit failed; holding and retrying")
        }
    }
}

/// Held messages must not reach ack_wait, or JetStream redelivers them while they are pending.
async fn keep_alive(held: &[Held], held_since: &mut Instant, ack_wait: Duration) {
    if held.is_empty() || held_since.elapsed() < ack_wait / 3 {
        return;
    }
    for Held { message, .. } in held {
        let _ = message.ack_with(AckKind::Progress).await;
    }
    *held_since = Instant::now();
}

async fn finish<P: Processor>(
    processor: &mut P,
    held: &mut Vec<Held>,
    metrics: &Metrics,
    spans: &Spans,
) {
    for attempt in 1..=5 {
        commit_held(processor, held, metrics, spans, true).await;
        if held.is_empty() {
            break;
        }
        tokio::time::sleep(retry_delay(attempt)).await;
    }
    for Held { message, span } in held.drain(..) {
        // Not durable: hand it back for another replica to process now rather than after ack_wait.
        let _ = message.ack_with(AckKind::Nak(None)).await;
        end_held(spans, span, Some("not durable at shutdown; redelivered"));
    }
    tracing::info!("consumer loop stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(1), Duration::from_millis(100));
        assert_eq!(retry_delay(2), Duration::from_millis(200));
        assert_eq!(retry_delay(0), Duration::from_millis(100));
        assert_eq!(retry_delay(1_000), Duration::from_secs(30));
    }

    #[test]
    fn an_idle_loop_offers_a_commit_when_it_falls_due() {
        let tick = Duration::from_millis(50);
        let now = Instant::now();
        // Nothing due: the idle tick.
        assert_eq!(idle_wait(None, tick, now), tick);
        // Due in 7 ms: then, not at the tick.
        let due = now + Duration::from_millis(7);
        assert_eq!(idle_wait(Some(due), tick, now), Duration::from_millis(7));
        // Due after the tick: the tick comes first.
        let due = now + Duration::from_secs(1);
        assert_eq!(idle_wait(Some(due), tick, now), tick);
        // Due already (a commit that did not go through): retried at the tick, not in a spin.
        let due = now.checked_sub(Duration::from_millis(3)).unwrap_or(now);
        assert_eq!(idle_wait(Some(due), tick, now), tick);
    }

    #[test]
    fn a_batch_lingers_from_its_first_storage_but_takes_the_backlog_whole() {
        let wait = Duration::from_millis(20);
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let now = Instant::now();
        let ms = Duration::from_millis;
        // Just stored, nothing behind it: the whole wait, whatever the batch holds.
        let gather = Gather::plan(Some(wall), 0, 256, wait, wall, now);
        assert_eq!(gather.deadline(1), now + wait);
        assert_eq!(gather.deadline(200), now + wait);
        // Stored 15 ms ago while the last batch was handled: 5 ms left.
        let gather = Gather::plan(Some(wall - ms(15)), 0, 256, wait, wall, now);
        assert_eq!(gather.deadline(1), now + ms(5));
        // Queued longer than the wait: nothing more to wait for once the backlog is in ...
        let gather = Gather::plan(Some(wall - ms(50)), 9, 256, wait, wall, now);
        assert_eq!(gather.deadline(10), now);
        // ... but the 9 stored behind it are waited for, up to the whole wait.
        assert_eq!(gather.deadline(1), now + wait);
        assert_eq!(gather.deadline(9), now + wait);
        // A backlog larger than the batch: the batch fills.
        let gather = Gather::plan(Some(wall - ms(50)), 10_000, 256, wait, wall, now);
        assert_eq!(gather.deadline(255), now + wait);
        // A server clock ahead of ours: never longer than the wait. No metadata, or a processor
        // that does not linger: the whole wait.
        let gather = Gather::plan(Some(wall + Duration::from_secs(3)), 0, 256, wait, wall, now);
        assert_eq!(gather.deadline(1), now + wait);
        let gather = Gather::plan(None, 0, 256, wait, wall, now);
        assert_eq!(gather.deadline(1), now + wait);
    }
}
