//! Publishing a file's events to JetStream in file order, with many acknowledgements in flight,
//! through server restarts: the producer side of `freshet publish` and `freshet replay`.
//!
//! **Why order needs care.** Up to [`MAX_IN_FLIGHT`] events are sent before the first is
//! acknowledged, since waiting for each ack caps a producer at one round trip per event. When
//! the server goes away, the events still in the client's socket are lost, while the ones the
//! client queued meanwhile go out after it reconnects: sent again naively, the lost ones would
//! be stored *after* those, a thousand lines late, and featurize would refuse them as `late`.
//!
//! **What prevents it.** Every event names the one sent before it in the
//! `Nats-Expected-Last-Msg-Id` header, and JetStream stores an event only if the stream's last
//! message is that one. Once an event is lost, every event queued behind it is refused, so
//! nothing after a gap is stored before the gap is filled. (The server checks `Nats-Msg-Id`
//! first: an event the stream already holds is acknowledged as a duplicate whatever it names.)
//!
//! **Recovery.** When an acknowledgement fails (a timeout, the connection lost, JetStream not
//! ready after a restart, or "wrong last message id"), the publisher drops the acknowledgements
//! still awaited, then sends the failed event alone, under the same `Nats-Msg-Id`, with capped,
//! jittered backoff until the stream acknowledges it (stored, or a duplicate if it was stored
//! and only its ack was lost). Then it sends the events after it again, in order, chained to it.
//! JetStream's duplicate window makes each resend idempotent, so it gives up (exit 1) after
//! `retry_for` without an acknowledgement, which must stay inside that window. Running the same
//! file again within the window resumes where the stream's acknowledgements say: the events it
//! holds come back as duplicates, and the first one it lacks is chained to the last it has.
//!
//! **Limits.** Another producer writing to the stream at the same time breaks the chain now and
//! then; each break costs one recovery (the events stay in order, the run slows down). An event
//! without an id (a `--raw` line) cannot be deduplicated or named: a resend may store it twice,
//! and the event after it goes unchained.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use anyhow::bail;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self};
use bytes::Bytes;
use freshet::retry::{Backoff, Verdict};
use freshet::subjects::header_value;
use serde::Serialize;
use tokio::time::Instant;

/// The most publish acks awaited at once.
pub const MAX_IN_FLIGHT: usize = 1024;

/// One line ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub subject: String,
    /// The event id, sent as `Nats-Msg-Id`; absent only for `--raw` lines without a usable id.
    pub message_id: Option<String>,
    pub payload: Bytes,
}

/// What a publish run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Events JetStream stored.
    pub published: u64,
    /// Events JetStream recognised by message id and did not store again (an event stored in
    /// this run whose acknowledgement was lost counts here once it is resent).
    pub duplicates: u64,
    /// Lines refused (not published).
    pub invalid: u64,
    /// Sends repeated after an acknowledgement failed (the server restarting, say).
    pub resent: u64,
    pub elapsed_seconds: f64,
    /// Acknowledged events (stored or duplicate) per second.
    pub events_per_second: f64,
}

impl Summary {
    /// Events JetStream acknowledged, stored or recognised as duplicates.
    pub fn acknowledged(&self) -> u64 {
        self.published + self.duplicates
    }

    /// Records how long the run took, and the acknowledged events per second that makes.
    pub fn finish(&mut self, elapsed: Duration) {
        self.elapsed_seconds = elapsed.as_secs_f64();
        self.events_per_second = if self.elapsed_seconds > 0.0 {
            self.acknowledged() as f64 / self.elapsed_seconds
        } else {
            0.0
        };
    }
}

type PendingAck = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// An event sent and not yet acknowledged.
struct Sent {
    line_number: u64,
    outgoing: Outgoing,
    /// When it was first sent: every resend must come within the duplicate window of it.
    first_sent: Instant,
    ack: PendingAck,
}

/// Publishes prepared lines in order with a bounded window of acks in flight, resending what
/// was not acknowledged (see the module documentation), and counts what JetStream stored, what
/// it recognised as a duplicate, and what was refused.
///
/// Acks are settled in send order. A send waits for the oldest ack only when the window is
/// full; [`settle_until`](Self::settle_until) settles acks while a paced run waits for its next
/// deadline, so the counts stay current.
pub struct Publisher {
    js: jetstream::Context,
    client: async_nats::Client,
    window: usize,
    retry_for: Duration,
    in_flight: VecDeque<Sent>,
    /// The `Nats-Msg-Id` header of the last event sent: what the next one expects last.
    chain: Option<String>,
    /// Whether the stream ever acknowledged an event of this run: "no responders" before that,
    /// on the first connection, means no stream takes these subjects.
    acknowledged_any: bool,
    first_connects: u64,
    sent: u64,
    summary: Summary,
}

impl Publisher {
    /// A publisher keeping at most `window` (at least 1) acks in flight, resending an event
    /// for up to `retry_for` before giving up.
    pub fn new(client: async_nats::Client, window: usize, retry_for: Duration) -> Publisher {
        let first_connects = connects(&client);
        Publisher {
            js: jetstream::new(client.clone()),
            client,
            window: window.max(1),
            retry_for,
            in_flight: VecDeque::new(),
            chain: None,
            acknowledged_any: false,
            first_connects,
            sent: 0,
            summary: Summary::default(),
        }
    }

    /// Events sent so far (acknowledged or not; resends not counted).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sent events whose ack has not been settled yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The counts so far; the timing fields are left for the caller's [`Summary::finish`].
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Counts a line that was refused before sending.
    pub fn refuse(&mut self) {
        self.summary.invalid += 1;
    }

    /// Sends one line, first waiting for the oldest ack if the window is full. A line the client
    /// refuses to send (larger than the server's max_payload) is counted as invalid and its
    /// problem returned as `Ok(Err(..))`; the run goes on.
    pub async fn send(
        &mut self,
        line_number: u64,
        outgoing: Outgoing,
    ) -> anyhow::Result<Result<(), String>> {
        while self.in_flight.len() >= self.window {
            self.settle_next().await?;
        }
        let sent = self.dispatch(line_number, outgoing, Instant::now()).await;
        if sent.is_ok() {
            self.sent += 1;
        }
        Ok(sent)
    }

    /// Sends an event chained to the one sent before it; its ack joins the window. A failure
    /// to send is settled like a failed ack, in its turn.
    async fn dispatch(
        &mut self,
        line_number: u64,
        outgoing: Outgoing,
        first_sent: Instant,
    ) -> Result<(), String> {
        let id = outgoing.message_id.as_deref().map(header_value);
        let mut message = PublishMessage::build().payload(outgoing.payload.clone());
        if let Some(id) = &id {
            message = message.message_id(id);
            if let Some(last) = &self.chain {
                message = message.expected_last_message_id(last);
            }
        }
        let ack: PendingAck = match self
            .js
            .send_publish(outgoing.subject.clone(), message)
            .await
        {
            Ok(ack) => Box::pin(ack.into_future()),
            Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                self.refuse();
                return Err(format!("larger than the server's max_payload: {err}"));
            }
            Err(err) => Box::pin(std::future::ready(Err(err))),
        };
        self.chain = id;
        self.in_flight.push_back(Sent {
            line_number,
            outgoing,
            first_sent,
            ack,
        });
        Ok(())
    }

    /// Settles acks as they arrive until `deadline`, then returns.
    pub async fn settle_until(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let Some(front) = self.in_flight.front_mut() else {
                tokio::time::sleep_until(deadline).await;
                return Ok(());
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Ok(()),
                ack = front.ack.as_mut() => self.settle_front(ack).await?,
            }
        }
    }

    /// Waits for every ack still in flight.
    pub async fn settle_all(&mut self) -> anyhow::Result<()> {
        while !self.in_flight.is_empty() {
            self.settle_next().await?;
        }
        Ok(())
    }

    async fn settle_next(&mut self) -> anyhow::Result<()> {
        if let Some(front) = self.in_flight.front_mut() {
            let ack = front.ack.as_mut().await;
            self.settle_front(ack).await?;
        }
        Ok(())
    }

    /// Counts the oldest event's ack; a failed one starts a recovery, and one that can never
    /// succeed (no stream for the subject) ends the run.
    async fn settle_front(&mut self, ack: Result<PublishAck, PublishError>) -> anyhow::Result<()> {
        let Some(sent) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match ack {
            Ok(ack) => {
                self.count(&ack);
                Ok(())
            }
            Err(err) => match self.verdict(&err) {
                Verdict::Definite => Err(self.definite(sent.line_number, err)),
                Verdict::Transient => self.recover(sent, err).await,
            },
        }
    }

    fn count(&mut self, ack: &PublishAck) {
        self.acknowledged_any = true;
        if ack.duplicate {
            self.summary.duplicates += 1;
        } else {
            self.summary.published += 1;
        }
    }

    /// Sends `failed` again alone until the stream acknowledges it, then every event sent after
    /// it again, in order: see the module documentation.
    async fn recover(&mut self, failed: Sent, error: PublishError) -> anyhow::Result<()> {
        // Whatever their acks say, the events after the failed one are sent again after it;
        // the stream keeps each once.
        let after: Vec<Sent> = self.in_flight.drain(..).collect();
        tracing::warn!(
            line = failed.line_number,
            %error,
            following = after.len(),
            "no acknowledgement; sending the line again, then the ones after it, in order"
        );
        let id = failed.outgoing.message_id.as_deref().map(header_value);
        let mut backoff = Backoff::default();
        let mut error = error;
        loop {
            self.summary.resent += 1;
            if error.kind() != PublishErrorKind::WrongLastMessageId {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            if failed.first_sent.elapsed() > self.retry_for {
                bail!(
                    "line {}: not acknowledged for {} ({error}); it and the lines after it may \
                     not be stored. Run the same file again within the stream's duplicate window: \
                     what the stream holds is dropped as duplicates, and the rest follows in order",
                    failed.line_number,
                    humantime::format_duration(self.retry_for)
                );
            }
            let mut message = PublishMessage::build().payload(failed.outgoing.payload.clone());
            if let Some(id) = &id {
                message = message.message_id(id);
            }
            let acked = match self
                .js
                .send_publish(failed.outgoing.subject.clone(), message)
                .await
            {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            match acked {
                Ok(ack) => {
                    self.count(&ack);
                    break;
                }
                Err(err) if self.verdict(&err) == Verdict::Definite => {
                    return Err(self.definite(failed.line_number, err));
                }
                Err(err) => error = err,
            }
        }
        self.chain = id;
        self.summary.resent += after.len() as u64;
        // At most the window less one: none of these sends waits for an ack.
        for sent in after {
            if let Err(problem) = self
                .dispatch(sent.line_number, sent.outgoing, sent.first_sent)
                .await
            {
                tracing::warn!(line = sent.line_number, problem, "not sent again");
            }
        }
        Ok(())
    }

    /// Whether sending the event again may get it stored.
    fn verdict(&self, error: &PublishError) -> Verdict {
        match error.kind() {
            // "No responders": no stream takes the subject, or the stream is not loaded yet
            // after a server restart. Before any acknowledgement, on the first connection, it is
            // the former.
            PublishErrorKind::StreamNotFound => {
                if self.acknowledged_any || connects(&self.client) > self.first_connects {
                    Verdict::Transient
                } else {
                    Verdict::Definite
                }
            }
            PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::WrongLastSequence => {
                Verdict::Definite
            }
            PublishErrorKind::Other => {
                // A JetStream answer other than "unavailable" (503) is definite; anything else
                // (an unreadable reply, a request that could not be sent) may pass next time.
                match std::error::Error::source(error)
                    .and_then(|source| source.downcast_ref::<jetstream::Error>())
                {
                    Some(answer) if answer.code() != 503 => Verdict::Definite,
                    _ => Verdict::Transient,
                }
            }
            _ => Verdict::Transient,
        }
    }

    fn definite(&self, line_number: u64, error: PublishError) -> anyhow::Error {
        if error.kind() == PublishErrorKind::StreamNotFound {
            anyhow::anyhow!(
                "line {line_number}: no stream stores event subjects; run `freshet provision` first"
            )
        } else {
            anyhow::Error::new(error).context(format!("publishing line {line_number}"))
        }
    }
}

fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_rate_what_was_acknowledged() {
        let mut summary = Summary {
            published: 30,
            duplicates: 10,
            invalid: 5,
            ..Default::default()
        };
        summary.finish(Duration::from_secs(2));
        assert_eq!(
            (summary.elapsed_seconds, summary.events_per_second),
            (2.0, 20.0)
        );
        summary.finish(Duration::ZERO);
        assert_eq!(summary.events_per_second, 0.0);
    }
}
