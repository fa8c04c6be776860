//! Keeping a consumer's messages in stream order across redeliveries.
//!
//! JetStream delivers a durable consumer's messages in order, but a redelivery can come late: a
//! dead replica's pull request may still take a message that a new replica's pull then passes
//! over. A function whose exactly-once bookkeeping is a high-water mark (train's manifest, the
//! per-partition marks of featurize's entity state) must then not handle the later messages
//! first. [`OrderGuard::check`] tells whether a message is the next one on the consumer's filter
//! after a mark, looking at the stream itself (the next message on the filter, as the stream's
//! leader has it) and stepping over messages the consumer has already acknowledged. The check reads the stream
//! through [`OrderCheck`], so a processor's unit tests run it against [`MemoryOrder`].

use std::future::Future;

use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};

use crate::error::Failure;

/// What the in-order check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contiguity {
    /// Nothing on the filter lies between the mark and the message: handle it.
    InOrder,
    /// An earlier message is acknowledged already: move the mark past it and look again.
    Skip(u64),
    /// An earlier message is still to come (pending redelivery): wait for it.
    Wait(u64),
}

/// The pure rule: `next_on_filter` is the first message on the filter after the mark,
/// `ack_floor` the consumer's acknowledgement floor.
pub fn contiguity(sequence: u64, next_on_filter: Option<u64>, ack_floor: u64) -> Contiguity {
    match next_on_filter {
        Some(next) if next < sequence && next <= ack_floor => Contiguity::Skip(next),
        Some(next) if next < sequence => Contiguity::Wait(next),
        _ => Contiguity::InOrder,
    }
}

/// Whether a message certainly comes straight after the one at a processor's mark on the
/// consumer's filter, without asking the stream: both were first deliveries and the consumer
/// delivered nothing in between. A consumer delivers each message the first time in stream
/// order, so every message on the filter before this one was delivered before it; had one lain
/// between the mark and this one, its delivery would sit between theirs. Any redelivery, or a
/// delivery to another replica, breaks the chain of consumer sequences, and the full check runs.
///
/// `previous` is the consumer sequence of the message at the mark when that was a first
/// delivery (`None` otherwise, or when the mark came from elsewhere).
pub fn follows_directly(
    previous: Option<u64>,
    consumer_sequence: Option<u64>,
    delivered: i64,
) -> bool {
    delivered == 1
        && matches!((previous, consumer_sequence), (Some(p), Some(c)) if p.checked_add(1) == Some(c))
}

/// What a processor keeps of the message at its mark for [`follows_directly`]: its consumer
/// sequence, if it was a first delivery.
pub fn chain_link(consumer_sequence: Option<u64>, delivered: i64) -> Option<u64> {
    consumer_sequence.filter(|_| delivered == 1)
}

/// What the in-order check reads of a consumer's stream: [`OrderGuard`] asks JetStream,
/// [`MemoryOrder`] answers from a list in unit tests. [`check`](Self::check) and
/// [`admit`](Self::admit) are the rule, the same for both.
pub trait OrderCheck: Send + Sync {
    /// The consumer's acknowledgement floor: every message at or below it is handled.
    fn ack_floor(&self) -> impl Future<Output = Result<u64, Failure>> + Send;

    /// The first message on the consumer's filter after `after`, if any.
    fn next_on_filter(
        &self,
        after: u64,
    ) -> impl Future<Output = Result<Option<u64>, Failure>> + Send;

    /// [`check`](Self::check) as a consumer loop wants it: `Err` with the failure to retry the
    /// message by when it must come back later (an earlier message is still to come, or the
    /// check itself failed); `who` names the function in that failure.
    fn admit(
        &self,
        sequence: u64,
        mark: &mut u64,
        who: &str,
    ) -> impl Future<Output = Result<(), Failure>> + Send {
        async move {
            match self.check(sequence, mark).await? {
                None => Ok(()),
                Some(missing) => {
                    tracing::debug!(
                        sequence,
                        missing,
                        "message arrived before an earlier one; waiting for it"
                    );
                    Err(Failure::new(
                        who.to_string(),
                        format!("waiting for message {missing}"),
                    ))
                }
            }
        }
    }

    /// Whether the message at `sequence` is the next one on the filter after `mark`, moving
    /// `mark` past messages already acknowledged. `Ok(Some(missing))` names the earlier message
    /// to wait for. Costs nothing when `sequence` directly follows `mark`.
    fn check(
        &self,
        sequence: u64,
        mark: &mut u64,
    ) -> impl Future<Output = Result<Option<u64>, Failure>> + Send {
        async move {
            for _ in 0..64 {
                if sequence == *mark + 1 {
                    return Ok(None);
                }
                let next = self.next_on_filter(*mark).await?;
                let floor = if next.is_some_and(|n| n < sequence) {
                    self.ack_floor().await?
                } else {
                    0
                };
                match contiguity(sequence, next, floor) {
                    Contiguity::InOrder => return Ok(None),
                    // Every message on the filter at or below the floor is acknowledged: step
                    // over them all at once (after a rollback that is every example since the
                    // version rolled back to).
                    Contiguity::Skip(handled) => *mark = handled.max(floor.min(sequence - 1)),
                    Contiguity::Wait(missing) => return Ok(Some(missing)),
                }
            }
            Err(Failure::new(
                "order check",
                "too many acknowledged messages to step over at once",
            ))
        }
    }
}

/// The stream, filter and consumer a function's order check looks at.
#[derive(Clone)]
pub struct OrderGuard {
    stream: Stream,
    filter: String,
    durable: String,
}

impl OrderGuard {
    pub fn new(
        stream: Stream,
        filter: impl Into<String>,
        durable: impl Into<String>,
    ) -> OrderGuard {
        OrderGuard {
            stream,
            filter: filter.into(),
            durable: durable.into(),
        }
    }
}

impl OrderCheck for OrderGuard {
    async fn ack_floor(&self) -> Result<u64, Failure> {
        let info = self
            .stream
            .consumer_info(&self.durable)
            .await
            .map_err(|e| {
                Failure::new(
                    format!("read the acknowledgement floor of {}", self.durable),
                    e,
                )
            })?;
        Ok(info.ack_floor.stream_sequence)
    }

    async fn next_on_filter(&self, after: u64) -> Result<Option<u64>, Failure> {
        // Asked of the stream's leader, never a direct get: any replica answers a direct get,
        // and one still catching up (just restarted, or back from a partition) lacks the latest
        // messages. Told that nothing follows the mark, the guard would let a later message
        // through, and the high-water mark would pass the earlier ones unhandled.
        match self
            .stream
            .raw_message_builder()
            .sequence(after + 1)
            .next_by_subject(self.filter.clone())
            .send()
            .await
        {
            Ok(message) => Ok(Some(message.sequence)),
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(Failure::new(
                format!("look up the next message on {}", self.filter),
                err,
            )),
        }
    }
}

/// A consumer's stream in memory, for unit tests of processors: the sequences stored on its
/// filter and its acknowledgement floor; clones share them.
#[derive(Debug, Clone, Default)]
pub struct MemoryOrder {
    state: std::sync::Arc<std::sync::Mutex<(std::collections::BTreeSet<u64>, u64)>>,
}

impl MemoryOrder {
    /// A stream holding `sequences` on the filter, nothing acknowledged.
    pub fn new(sequences: impl IntoIterator<Item = u64>) -> MemoryOrder {
        let order = MemoryOrder::default();
        order.state().0.extend(sequences);
        order
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (std::collections::BTreeSet<u64>, u64)> {
        // A test that panicked while holding the lock has failed already; its data is intact.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores more messages on the filter.
    pub fn store(&self, sequences: impl IntoIterator<Item = u64>) {
        self.state().0.extend(sequences);
    }

    /// Moves the acknowledgement floor.
    pub fn acknowledge_through(&self, floor: u64) {
        self.state().1 = floor;
    }
}

impl OrderCheck for MemoryOrder {
    async fn ack_floor(&self) -> Result<u64, Failure> {
        Ok(self.state().1)
    }

    async fn next_on_filter(&self, after: u64) -> Result<Option<u64>, Failure> {
        Ok(self.state().0.range(after + 1..).next().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unbroken_chain_of_first_deliveries_skips_the_stream_lookup() {
        // The next delivery after a first-delivered mark, itself a first delivery.
        assert!(follows_directly(Some(7), Some(8), 1));
        // A redelivery: something else may lie between.
        assert!(!follows_directly(Some(7), Some(8), 2));
        // A delivery in between went elsewhere (another replica, or a redelivery).
        assert!(!follows_directly(Some(7), Some(9), 1));
        // The mark came from the acknowledgement floor, or from a redelivered message.
        assert!(!follows_directly(None, Some(8), 1));
        // Unreadable metadata.
        assert!(!follows_directly(Some(7), None, 1));
        assert!(!follows_directly(Some(u64::MAX), Some(0), 1));
        assert_eq!(chain_link(Some(8), 1), Some(8));
        assert_eq!(chain_link(Some(8), 3), None);
        assert_eq!(chain_link(None, 1), None);
    }

    #[test]
    fn gaps_are_waited_for_unless_already_acknowledged() {
        assert_eq!(contiguity(7, Some(7), 0), Contiguity::InOrder);
        assert_eq!(contiguity(7, None, 0), Contiguity::InOrder);
        assert_eq!(
            contiguity(7, Some(5), 4),
            Contiguity::Wait(5),
            "5 is pending somewhere: wait"
        );
        assert_eq!(
            contiguity(7, Some(5), 6),
            Contiguity::Skip(5),
            "5 was acknowledged: not a gap"
        );
    }

    #[tokio::test]
    async fn the_check_waits_for_a_gap_and_steps_over_what_is_acknowledged() {
        let stream = MemoryOrder::new([3, 5, 8, 9]);
        let mut mark = 3;
        // 5 is next on the filter after 3: in order (4 is another filter's).
        assert_eq!(stream.check(5, &mut mark).await.unwrap(), None);
        let mut mark = 5;
        assert_eq!(stream.check(9, &mut mark).await.unwrap(), Some(8));
        assert!(stream.admit(9, &mut mark, "train").await.is_err());
        stream.acknowledge_through(8);
        assert_eq!(stream.check(9, &mut mark).await.unwrap(), None);
        assert_eq!(mark, 8, "stepped over the acknowledged 8");
    }
}
