//! The views whose label is not final yet, held until it is.
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
//!   for every example) and **held**: a key of its id, the prediction, and the event time at
//!   which its label becomes final (`final_at`, which featurize writes on it);
//! - a **correction** naming a held view settles it as a **positive**;
//! - a held view whose `final_at` the examples' event-time watermark has passed, with no
//!   correction, settles as a **negative**. The watermark is the latest event time of any example
//!   folded, less a lateness ([`PendingConfig::lateness_ms`]) for featurize partitions that run
//!   behind the others: a correction comes from the partition of the view's user, and
//!   `final_at` is final for that partition's own events only.
//!
//! Only settled errors reach the error detectors. The buffer is bounded
//! ([`PendingConfig::capacity`]): a view that arrives when it is full is **not held** (counted),
//! rather than pushing out the oldest. Evicting the oldest would drop exactly the views about
//! to settle as negatives while the corrections of the younger ones still settle as positives,
//! and the error read would rise with the traffic; declining the newest keeps what is judged a
//! sample chosen without regard to its label. The buffer follows one chain of live versions
//! (see [`crate::bank`]): a view scored by another chain drops the held views of the old one,
//! whose errors no detector of the new chain should read.
//!
//! Everything is plain data that the bank's checkpoint stores (ids as 64-bit keys, so a held
//! view costs about 45 bytes of JSON whatever its id's length), and every operation depends only
//! on the examples folded, in stream order: a checkpoint read back after a crash settles the same
//! views with the same errors as the run that wrote it.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// Views held at most, by default: about 450 KB of checkpoint, within the server's 1 MB message
/// beside the detectors.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// How far the watermark trails the latest example event time, by default (milliseconds).
pub const DEFAULT_LATENESS_MS: i64 = 60_000;

/// The buffer's settings; part of the bank's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfig {
    /// Views held at most; a view beyond them is not held (and its error never judged).
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

/// A view's error, its label now final.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settled {
    /// The chain of live versions that scored the view.
    pub chain: u64,
    /// The live model's probability of a purchase when the view arrived.
    pub probability: f64,
    /// Whether a correction made it a positive (else the horizon passed without one).
    pub positive: bool,
}

/// What became of a fake negative offered to the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Held,
    /// The buffer was full: not held, never judged.
    Overflow,
    /// A view with the same key is held already (the first is kept).
    Duplicate,
}

/// One held view as stored: key of its id, prediction, `final_at` (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Stored(u64, f32, i64);

/// The buffer as the checkpoint stores it: held views in settling order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredPending {
    chain: Option<u64>,
    latest: Option<i64>,
    held: Vec<Stored>,
}

/// The held views of one model, with the watermark that settles them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredPending", into = "StoredPending")]
pub struct Pending {
    /// The chain of versions whose predictions are held.
    chain: Option<u64>,
    /// The latest event time of any example folded (ms since the epoch).
    latest: Option<i64>,
    /// Prediction and `final_at` by key.
    by_key: HashMap<u64, (f32, i64)>,
    /// (`final_at`, key) of every held view: the settling order.
    due: BTreeSet<(i64, u64)>,
}

impl From<StoredPending> for Pending {
    fn from(stored: StoredPending) -> Self {
        let mut pending = Pending {
            chain: stored.chain,
            latest: stored.latest,
            ..Pending::default()
        };
        for Stored(key, probability, final_at) in stored.held {
            if pending
                .by_key
                .insert(key, (probability, final_at))
                .is_none()
            {
                pending.due.insert((final_at, key));
            }
        }
        pending
    }
}

impl From<Pending> for StoredPending {
    fn from(pending: Pending) -> Self {
        let held = pending
            .due
            .iter()
            .filter_map(|&(final_at, key)| {
                let (probability, _) = pending.by_key.get(&key)?;
                Some(Stored(key, *probability, final_at))
            })
            .collect();
        StoredPending {
            chain: pending.chain,
            latest: pending.latest,
            held,
        }
    }
}

impl Pending {
    /// Views held now.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
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

    /// The live chain that scored an example is `chain`: the views another chain scored are
    /// dropped (returns how many).
    pub fn follow(&mut self, chain: u64) -> usize {
        if self.chain == Some(chain) {
            return 0;
        }
        self.chain = Some(chain);
        let dropped = self.by_key.len();
        self.by_key.clear();
        self.due.clear();
        dropped
    }

    /// Holds the fake negative `id`, scored `probability` by `chain`, final at `final_at` (ms).
    pub fn hold(
        &mut self,
        config: &PendingConfig,
        id: &str,
        chain: u64,
        probability: f64,
        final_at: i64,
    ) -> Hold {
        self.follow(chain);
        let key = key_of(id);
        if self.by_key.contains_key(&key) {
            return Hold::Duplicate;
        }
        if self.by_key.len() >= config.capacity {
            return Hold::Overflow;
        }
        // Predictions are f32 where they come from (the scorer), so this keeps them exactly.
        self.by_key.insert(key, (probability as f32, final_at));
        self.due.insert((final_at, key));
        Hold::Held
    }

    /// The correction of the fake negative `corrects` settles it as a positive, if it is held.
    pub fn correct(&mut self, corrects: &str) -> Option<Settled> {
        let key = key_of(corrects);
        let (probability, final_at) = self.by_key.remove(&key)?;
        self.due.remove(&(final_at, key));
        Some(Settled {
            chain: self.chain?,
            probability: f64::from(probability),
            positive: true,
        })
    }

    /// Settles as negatives, in order of `final_at`, the held views whose `final_at` is before
    /// the watermark (the latest event time less the lateness).
    pub fn settle_due(&mut self, config: &PendingConfig) -> Vec<Settled> {
        let (Some(latest), Some(chain)) = (self.latest, self.chain) else {
            return Vec::new();
        };
        let watermark = latest.saturating_sub(config.lateness_ms);
        let mut settled = Vec::new();
        while let Some(&(final_at, key)) = self.due.first()
            && final_at < watermark
        {
            self.due.pop_first();
            if let Some((probability, _)) = self.by_key.remove(&key) {
                settled.push(Settled {
                    chain,
                    probability: f64::from(probability),
                    positive: false,
                });
            }
        }
        settled
    }
}

/// A fixed 64-bit key of an example id: FNV-1a over its bytes, then the SplitMix64 finaliser.
/// Both are fixed algorithms, so a key read back from a checkpoint matches the id on any machine
/// and release; two of the ten thousand held ids share a key with a chance of about 3·10⁻¹².
fn key_of(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: PendingConfig = PendingConfig {
        capacity: 3,
        lateness_ms: 10,
    };

    fn negative(probability: f64) -> Settled {
        Settled {
            chain: 1,
            probability,
            positive: false,
        }
    }

    #[test]
    fn a_correction_settles_its_view_as_a_positive_and_time_the_others_as_negatives() {
        let mut pending = Pending::default();
        assert_eq!(pending.hold(&CONFIG, "ex-v1", 1, 0.25, 100), Hold::Held);
        assert_eq!(pending.hold(&CONFIG, "ex-v2", 1, 0.5, 110), Hold::Held);
        assert_eq!(pending.hold(&CONFIG, "ex-v3", 1, 0.75, 120), Hold::Held);
        assert_eq!(
            pending.hold(&CONFIG, "ex-v3", 1, 0.75, 120),
            Hold::Duplicate
        );
        // Nothing is due before any event time is known.
        assert!(pending.settle_due(&CONFIG).is_empty());
        assert_eq!(
            pending.correct("ex-v2"),
            Some(Settled {
                chain: 1,
                probability: 0.5,
                positive: true
            })
        );
        assert_eq!(pending.correct("ex-v2"), None, "settled once");
        assert_eq!(pending.correct("ex-unknown"), None);
        // The watermark (latest − lateness) must pass final_at: 110 − 10 = 100 does not.
        pending.advance(110);
        assert!(pending.settle_due(&CONFIG).is_empty());
        pending.advance(105);
        assert_eq!(
            pending.latest(),
            Some(110),
            "the watermark never moves back"
        );
        pending.advance(131);
        assert_eq!(
            pending.settle_due(&CONFIG),
            vec![negative(0.25), negative(0.75)]
        );
        assert!(pending.is_empty());
        // A correction after its view settled finds nothing.
        assert_eq!(pending.correct("ex-v1"), None);
    }

    #[test]
    fn a_full_buffer_declines_new_views_and_keeps_the_old() {
        let mut pending = Pending::default();
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(pending.hold(&CONFIG, id, 1, 0.5, i as i64), Hold::Held);
        }
        assert_eq!(pending.hold(&CONFIG, "d", 1, 0.5, 3), Hold::Overflow);
        assert_eq!(pending.len(), 3);
        assert_eq!(pending.correct("d"), None);
        assert!(pending.correct("a").is_some());
        assert_eq!(pending.hold(&CONFIG, "d", 1, 0.5, 3), Hold::Held);
    }

    #[test]
    fn another_chain_drops_the_views_of_the_old_one() {
        let mut pending = Pending::default();
        pending.hold(&CONFIG, "a", 1, 0.5, 0);
        pending.hold(&CONFIG, "b", 1, 0.5, 0);
        assert_eq!(pending.follow(1), 0);
        assert_eq!(pending.hold(&CONFIG, "c", 2, 0.125, 5), Hold::Held);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending.correct("a"), None);
        assert_eq!(pending.follow(3), 1);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_stored_buffer_settles_exactly_as_the_one_that_wrote_it() {
        let config = PendingConfig {
            capacity: 100,
            lateness_ms: 0,
        };
        let mut pending = Pending::default();
        for i in 0..50_i64 {
            // Probabilities an f32 scorer gives, final times out of order.
            let p = f64::from((i as f32 + 0.5) / 51.0);
            pending.hold(&config, &format!("ex-{i}"), 7, p, (i * 37) % 50);
        }
        pending.advance(20);
        let json = serde_json::to_string(&pending).unwrap();
        let mut restored: Pending = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, pending);
        assert_eq!(serde_json::to_string(&restored).unwrap(), json);
        // About 30 bytes a view here (short keys are rare: most take 20 digits).
        assert!(json.len() < 50 * 50, "{}", json.len());
        for i in (0..50).step_by(3) {
            assert_eq!(
                restored.correct(&format!("ex-{i}")),
                pending.correct(&format!("ex-{i}"))
            );
        }
        restored.advance(40);
        pending.advance(40);
        let settled = restored.settle_due(&config);
        assert_eq!(settled, pending.settle_due(&config));
        assert!(!settled.is_empty());
    }

    #[test]
    fn keys_are_fixed() {
        // A key read back from a checkpoint must match the id on any build.
        assert_eq!(key_of("ex-v1"), 2_217_344_928_652_776_588);
        assert_ne!(key_of("ex-v1"), key_of("ex-v2"));
    }
}
