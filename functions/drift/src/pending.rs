//! The views whose label is not final yet, held until it is, and their errors released in the
//! order of the views.
//!
//! With fake-negative weighting (featurize's default) every view goes out at once as a negative
//! (`feedback: fake_negative`) and, if the user buys the item within the horizon, a positive
//! duplicate follows (`feedback: correction`, naming the fake negative in `corrects`). A fake
//! negative's label 0 is provisional: judging the live model's prediction against it reads a
//! model that learned the true purchase rate as wrong on every view that will convert, and
//! weighing that error as train weighs its loss makes an estimate too noisy to show a change of
//! who buys. So drift judges a view's error only once its label is final:
//!
//! - a fake negative is scored when it arrives (the live model's prediction at that moment, as
//!   for every example) and **held**: a key of its id, the prediction, and the event time from
//!   which its label is final (`final_at`, which featurize writes on it);
//! - a **correction** naming a held view settles it as a **positive**;
//! - a held view whose `final_at` the examples' event-time watermark has passed, with no
//!   correction, settles as a **negative**. The watermark is the latest event time of any example
//!   folded, less a lateness ([`PendingConfig::lateness_ms`]) for featurize partitions that run
//!   behind the others: a correction comes from the partition of the view's user, and
//!   `final_at` is final for that partition's own events only.
//!
//! Settled errors are **released in stream order of the examples**, each once every example
//! before it is settled: what the error detectors read is the prequential error they would read
//! were every label known at once, a horizon late. Released as they settle instead, the
//! positives (settled by corrections minutes after their views) and the negatives (settled a
//! horizon after theirs, in bursts as the watermark jumps from one featurize batch to the next)
//! would arrive in runs, and a detector that assumes independent values would read a run as a
//! change. An example whose label is final already (a purchase with no view waiting, or any
//! example of `--delayed-feedback wait`) joins the same line, settled: with no view waiting
//! before it, it is released at once.
//!
//! The line is bounded ([`PendingConfig::capacity`]): an example that arrives when it is full is
//! **not held** (counted), rather than pushing out the oldest. Evicting the oldest would drop
//! exactly the views about to settle as negatives while the corrections of the younger ones
//! still settle as positives, and the error read would rise with the traffic; declining the
//! newest keeps what is judged a sample chosen without regard to its label. The line follows one
//! chain of live versions (see [`crate::bank`]): an example scored by another chain drops what
//! the old one scored, whose errors no detector of the new chain should read.
//!
//! Everything is plain data that the bank's checkpoint stores (ids as 64-bit keys, so an
//! example held costs about 55 bytes of JSON whatever its id's length), and every operation
//! depends only on the examples folded, in stream order: a checkpoint read back after a crash
//! settles and releases the same errors as the run that wrote it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// Examples held at most, by default: about 550 KB of checkpoint, within the server's 1 MB
/// message beside the detectors.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// How far the watermark trails the latest example event time, by default (milliseconds).
pub const DEFAULT_LATENESS_MS: i64 = 60_000;

/// The buffer's settings; part of the bank's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfig {
    /// Examples held at most (views waiting, and settled examples waiting for the views before
    /// them); one beyond them is not held, and its error never judged.
    pub capacity: usize,
    /// How far behind the latest example event time the watermark that settles views as
    /// negatives runs, in milliseconds: a correction from a featurize partition that runs
    /// behind the others by less is still on time.
    pub lateness_ms: i64,
}

impl Default for PendingConfig {
    fn default() -> Self {
        PendingConfig {
            capacity: DEFAULT_CAPACITY,
            lateness_ms: DEFAULT_LATENESS_MS,
        }
    }
}

impl PendingConfig {
    /// The settings of a checkpoint written before views were held: no bank runs with them (a
    /// capacity of 0 is refused), so such a checkpoint is taken up with fresh detectors, which
    /// read weighted errors until then.
    pub fn absent() -> Self {
        PendingConfig {
            capacity: 0,
            lateness_ms: 0,
        }
    }
}

/// An example's error, its label final and every example before it released.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settled {
    /// The stream sequence of the example (the view, for a settled view).
    pub sequence: u64,
    /// The live model's probability of class 1 when the example arrived.
    pub probability: f64,
    /// Its final label.
    pub positive: bool,
}

/// What became of an example offered to the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Held,
    /// The line was full: not held, never judged.
    Overflow,
    /// A view with the same key is waiting already (the first is kept).
    Duplicate,
}

/// One example in line: the key of its id (0 for an example final when it came), its
/// prediction, its `final_at` (ms since the epoch; 0 when final), and its label once final.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Entry(u64, f32, i64, Option<bool>);

/// The line as the checkpoint stores it: `[sequence, key, probability, final_at, label]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredPending {
    chain: Option<u64>,
    latest: Option<i64>,
    line: Vec<(u64, u64, f32, i64, Option<bool>)>,
}

/// The examples of one model whose errors are not released yet, with the watermark that settles
/// the views among them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredPending", into = "StoredPending")]
pub struct Pending {
    /// The chain of versions whose predictions are held.
    chain: Option<u64>,
    /// The latest event time of any example folded (ms since the epoch).
    latest: Option<i64>,
    /// Every example held, by stream sequence.
    line: BTreeMap<u64, Entry>,
    /// The sequence of each view waiting for its label, by key.
    waiting: HashMap<u64, u64>,
    /// (`final_at`, sequence) of each view waiting: the order time settles them in.
    due: BTreeSet<(i64, u64)>,
}

impl From<StoredPending> for Pending {
    fn from(stored: StoredPending) -> Self {
        let mut pending = Pending {
            chain: stored.chain,
            latest: stored.latest,
            ..Pending::default()
        };
        for (sequence, key, probability, final_at, label) in stored.line {
            pending
                .line
                .insert(sequence, Entry(key, probability, final_at, label));
            if label.is_none() {
                pending.waiting.insert(key, sequence);
                pending.due.insert((final_at, sequence));
            }
        }
        pending
    }
}

impl From<Pending> for StoredPending {
    fn from(pending: Pending) -> Self {
        StoredPending {
            chain: pending.chain,
            latest: pending.latest,
            line: pending
                .line
                .into_iter()
                .map(|(sequence, Entry(key, p, final_at, label))| {
                    (sequence, key, p, final_at, label)
                })
                .collect(),
        }
    }
}

impl Pending {
    /// Examples held now (views waiting, and settled examples waiting for them).
    pub fn len(&self) -> usize {
        self.line.len()
    }

    pub fn is_empty(&self) -> bool {
        self.line.is_empty()
    }

    /// Views waiting for their label.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The latest example event time seen (ms since the epoch).
    pub fn latest(&self) -> Option<i64> {
        self.latest
    }

    /// An example with event time `at` (ms since the epoch) was folded: the watermark never
    /// moves back.
    pub fn advance(&mut self, at: i64) {
        self.latest = Some(self.latest.map_or(at, |latest| latest.max(at)));
    }

    /// The chain of live versions whose errors are held.
    pub fn chain(&self) -> Option<u64> {
        self.chain
    }

    /// The live chain that scored an example is `chain`: what another chain scored is dropped
    /// (returns how many examples).
    pub fn follow(&mut self, chain: u64) -> usize {
        if self.chain == Some(chain) {
            return 0;
        }
        self.chain = Some(chain);
        let dropped = self.line.len();
        self.line.clear();
        self.waiting.clear();
        self.due.clear();
        dropped
    }

    /// Puts the example at `sequence`, scored `probability` by `chain`, in line: final with
    /// `label`, or (`None`) a fake negative `id` waiting for its label until `final_at` (ms).
    fn enter(
        &mut self,
        config: &PendingConfig,
        sequence: u64,
        chain: u64,
        probability: f64,
        waiting: Option<(&str, i64)>,
        label: Option<bool>,
    ) -> Hold {
        self.follow(chain);
        let key = waiting.map(|(id, _)| key_of(id));
        if key.is_some_and(|key| self.waiting.contains_key(&key)) {
            return Hold::Duplicate;
        }
        if self.line.len() >= config.capacity {
            return Hold::Overflow;
        }
        let final_at = waiting.map_or(0, |(_, at)| at);
        // Predictions are f32 where they come from (the scorer), so this keeps them exactly.
        self.line.insert(
            sequence,
            Entry(key.unwrap_or(0), probability as f32, final_at, label),
        );
        if let Some(key) = key {
            self.waiting.insert(key, sequence);
            self.due.insert((final_at, sequence));
        }
        Hold::Held
    }

    /// Holds the fake negative `id` at `sequence`, scored `probability` by `chain`, until a
    /// correction or `final_at` (ms since the epoch) settles it.
    pub fn hold(
        &mut self,
        config: &PendingConfig,
        sequence: u64,
        id: &str,
        chain: u64,
        probability: f64,
        final_at: i64,
    ) -> Hold {
        self.enter(
            config,
            sequence,
            chain,
            probability,
            Some((id, final_at)),
            None,
        )
    }

    /// Puts an example whose label is final already in line: it is released once every view
    /// before it is settled (at once, when none waits).
    pub fn judge(
        &mut self,
        config: &PendingConfig,
        sequence: u64,
        chain: u64,
        probability: f64,
        positive: bool,
    ) -> Hold {
        self.enter(config, sequence, chain, probability, None, Some(positive))
    }

    /// The correction of the fake negative `corrects` settles it as a positive, if it waits.
    pub fn correct(&mut self, corrects: &str) -> bool {
        let Some(sequence) = self.waiting.remove(&key_of(corrects)) else {
            return false;
        };
        if let Some(entry) = self.line.get_mut(&sequence) {
            self.due.remove(&(entry.2, sequence));
            entry.3 = Some(true);
        }
        true
    }

    /// Settles as negatives the waiting views whose `final_at` is before the watermark (the
    /// latest event time less the lateness); returns how many.
    pub fn settle_due(&mut self, config: &PendingConfig) -> usize {
        let Some(latest) = self.latest else {
            return 0;
        };
        let watermark = latest.saturating_sub(config.lateness_ms);
        let mut settled = 0;
        while let Some(&(final_at, sequence)) = self.due.first()
            && final_at < watermark
        {
            self.due.pop_first();
            if let Some(entry) = self.line.get_mut(&sequence) {
                self.waiting.remove(&entry.0);
                entry.3 = Some(false);
                settled += 1;
            }
        }
        settled
    }

    /// Takes out, in stream order, the settled examples no waiting view precedes.
    pub fn release(&mut self) -> Vec<Settled> {
        let mut released = Vec::new();
        while let Some(entry) = self.line.first_entry()
            && let Entry(_, probability, _, Some(positive)) = *entry.get()
        {
            released.push(Settled {
                sequence: *entry.key(),
                probability: f64::from(probability),
                positive,
            });
            entry.remove();
        }
        released
    }
}

/// A fixed 64-bit key of an example id: FNV-1a over its bytes, then the SplitMix64 finaliser.
/// Both are fixed algorithms, so a key read back from a checkpoint matches the id on any machine
/// and release; two of the ten thousand held ids share a key with a chance of about 3·10⁻¹².
fn key_of(id: &str) -> u64 {
    freshet::stats::hash::mixed(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: PendingConfig = PendingConfig {
        capacity: 4,
        lateness_ms: 10,
    };

    fn settled(sequence: u64, probability: f64, positive: bool) -> Settled {
        Settled {
            sequence,
            probability,
            positive,
        }
    }

    #[test]
    fn views_settle_by_correction_or_time_and_are_released_in_their_order() {
        let mut pending = Pending::default();
        assert_eq!(pending.hold(&CONFIG, 1, "ex-v1", 1, 0.25, 100), Hold::Held);
        assert_eq!(pending.hold(&CONFIG, 2, "ex-v2", 1, 0.5, 110), Hold::Held);
        assert_eq!(
            pending.hold(&CONFIG, 3, "ex-v2", 1, 0.5, 110),
            Hold::Duplicate
        );
        assert_eq!(pending.judge(&CONFIG, 4, 1, 0.75, true), Hold::Held);
        // Nothing is due before any event time is known, and v1 waits: nothing is released.
        assert_eq!(pending.settle_due(&CONFIG), 0);
        assert!(pending.correct("ex-v2"));
        assert!(!pending.correct("ex-v2"), "settled once");
        assert!(!pending.correct("ex-unknown"));
        assert!(pending.release().is_empty(), "v1 still waits");
        assert_eq!(pending.waiting(), 1);
        // The watermark (latest − lateness) must pass final_at: 110 − 10 = 100 does not.
        pending.advance(110);
        assert_eq!(pending.settle_due(&CONFIG), 0);
        pending.advance(105);
        assert_eq!(
            pending.latest(),
            Some(110),
            "the watermark never moves back"
        );
        pending.advance(111);
        assert_eq!(pending.settle_due(&CONFIG), 1);
        assert_eq!(
            pending.release(),
            vec![
                settled(1, 0.25, false),
                settled(2, 0.5, true),
                settled(4, 0.75, true)
            ]
        );
        assert!(pending.is_empty());
        // With nothing waiting, a final example is released at once.
        pending.judge(&CONFIG, 5, 1, 0.5, false);
        assert_eq!(pending.release(), vec![settled(5, 0.5, false)]);
        // A correction after its view settled finds nothing.
        assert!(!pending.correct("ex-v1"));
    }

    #[test]
    fn a_full_line_declines_new_examples_and_keeps_the_old() {
        let mut pending = Pending::default();
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert_eq!(pending.hold(&CONFIG, i as u64, id, 1, 0.5, 0), Hold::Held);
        }
        assert_eq!(pending.hold(&CONFIG, 9, "e", 1, 0.5, 0), Hold::Overflow);
        assert_eq!(pending.judge(&CONFIG, 10, 1, 0.5, true), Hold::Overflow);
        assert_eq!(pending.len(), 4);
        assert!(!pending.correct("e"));
        assert!(pending.correct("a"));
        assert_eq!(pending.release().len(), 1);
        assert_eq!(pending.hold(&CONFIG, 11, "e", 1, 0.5, 0), Hold::Held);
    }

    #[test]
    fn another_chain_drops_what_the_old_one_scored() {
        let mut pending = Pending::default();
        pending.hold(&CONFIG, 1, "a", 1, 0.5, 0);
        pending.judge(&CONFIG, 2, 1, 0.5, true);
        assert_eq!(pending.follow(1), 0);
        assert_eq!(pending.hold(&CONFIG, 3, "c", 2, 0.125, 5), Hold::Held);
        assert_eq!((pending.len(), pending.chain()), (1, Some(2)));
        assert!(!pending.correct("a"));
        assert_eq!(pending.follow(3), 1);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_stored_line_settles_and_releases_exactly_as_the_one_that_wrote_it() {
        let config = PendingConfig {
            capacity: 100,
            lateness_ms: 0,
        };
        let mut pending = Pending::default();
        for i in 0..50_u64 {
            // Probabilities an f32 scorer gives, final times out of order.
            let p = f64::from((i as f32 + 0.5) / 51.0);
            if i % 7 == 0 {
                pending.judge(&config, i, 7, p, i % 2 == 0);
            } else {
                pending.hold(&config, i, &format!("ex-{i}"), 7, p, (i as i64 * 37) % 50);
            }
        }
        pending.advance(20);
        pending.settle_due(&config);
        let json = serde_json::to_string(&pending).unwrap();
        let mut restored: Pending = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, pending);
        assert_eq!(serde_json::to_string(&restored).unwrap(), json);
        for i in (0..50).step_by(3) {
            let id = format!("ex-{i}");
            assert_eq!(restored.correct(&id), pending.correct(&id));
        }
        restored.advance(40);
        pending.advance(40);
        assert_eq!(restored.settle_due(&config), pending.settle_due(&config));
        let released = restored.release();
        assert_eq!(released, pending.release());
        assert!(!released.is_empty());
        assert!(released.windows(2).all(|w| w[0].sequence < w[1].sequence));
    }

    #[test]
    fn a_full_line_of_the_default_size_fits_in_a_checkpoint() {
        // The checkpoint is one message of at most 1 MB, beside the detectors (up to about
        // 240 KB while the bookstore's three PSI references fill).
        let config = PendingConfig::default();
        let mut pending = Pending::default();
        let start = 1_800_000_000_000_i64;
        for i in 0..config.capacity as u64 {
            let id = format!("ex-{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15);
            let p = f64::from((i % 997) as f32 / 997.0 + 1e-4);
            let sequence = 40_000_000 + 3 * i;
            if i % 4 == 0 {
                pending.judge(&config, sequence, 12, p, true);
            } else {
                pending.hold(&config, sequence, &id, 12, p, start + 1_000 * i as i64);
            }
        }
        assert_eq!(pending.len(), config.capacity);
        let bytes = serde_json::to_vec(&pending).unwrap().len();
        assert!(bytes < 650_000, "{bytes}");
    }

    #[test]
    fn keys_are_fixed() {
        // A key read back from a checkpoint must match the id on any build.
        assert_eq!(key_of("ex-v1"), 2_217_344_928_652_776_588);
        assert_ne!(key_of("ex-v1"), key_of("ex-v2"));
    }
}
