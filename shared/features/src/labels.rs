//! What featurize keeps per partition about labels not decided yet, and the health of the labels
//! it publishes. featurize writes it to FEATURES; `freshet status` and `freshet view` read it.
//!
//! # The due index
//!
//! A view (or add-to-cart) waits in its user's state until a purchase labels it or its label
//! horizon passes (`functions/featurize/src/labels.rs`). So that time can decide it when its
//! user never comes back, without reading every user, each partition indexes its waiting views
//! by when they fall due (the view's time plus the horizon):
//!
//! - due times are cut into [`DueBuckets`] (the horizon / 256 wide, rounded up to whole seconds,
//!   at least one): a bucket is named by its start, in Unix seconds;
//! - the users with a view falling due in a bucket are kept in a [`DueSlot`], at FEATURES key
//!   `due.<model>.<partition>.<slot>`, with `slot` the bucket's number modulo [`DUE_SLOTS`]: a
//!   slot can hold several buckets, so a partition never has more than [`DUE_SLOTS`] such keys,
//!   and a drained bucket leaves no key behind;
//! - the partition's [`LabelState`], at `labels.<model>.<partition>`, lists the buckets that hold
//!   views, each with how many views were indexed there and how many of those were decided early
//!   (by a purchase, or by their user's own later events).
//!
//! Once the partition's time passes a bucket's end, featurize's tick reads the bucket's users,
//! decides each one's views due before that end, and then drains the bucket (from the slot and
//! the list). The tick reads only the users of the buckets due, never every user.
//!
//! **Memory bound.** A [`LabelState`] holds one entry per bucket with views: at most the 256
//! buckets of one horizon plus those of the out-of-orderness and future skew past the
//! partition's latest event (and, briefly, the buckets of late views, drained at the next tick),
//! some 30 bytes each, plus [`KEPT_MINUTES`] minutes of counts: about 10 kB with the defaults. A
//! [`DueSlot`] holds the ids of the users with a view falling due within one bucket: at most the
//! partition's distinct viewing users per bucket width (8 s with the 30-minute default horizon),
//! about 12 bytes each. The users' pending views themselves stay in their states, at most
//! [`crate::bookstore::MAX_PENDING_VIEWS`] each.
//!
//! # Label health
//!
//! The state also counts, per minute of event time, what the partition's actions did to labels
//! ([`LabelCounts`]); over the last [`RECENT_MINUTES`] they give the observed conversion rate
//! (views labelled positive by a purchase within the horizon, per view that began waiting) and
//! the share of positives among the examples published (a correction counted as turning its fake
//! negative positive). [`LabelHealth`] adds them up over partitions, and [`parted`] says when two
//! rates part by more than [`PARTED_FACTOR`].

use std::collections::{BTreeMap, BTreeSet};
use std::ops::AddAssign;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::bookstore::Applied;
use freshet::ids::{EntityId, ModelName};

/// Due buckets a partition spreads over: a bucket's slot is its number modulo this.
pub const DUE_SLOTS: i64 = 1024;
/// Buckets per label horizon (the bucket width is the horizon divided by this, at least 1 s).
pub const BUCKETS_PER_HORIZON: i64 = 256;
/// Minutes of event time the health rates are taken over.
pub const RECENT_MINUTES: i64 = 10;
/// Minutes of counts a label state keeps (a little more than it reports).
pub const KEPT_MINUTES: i64 = 15;
/// Two rates that differ by more than this factor either way have parted: a warning in
/// featurize's and train's logs and in `freshet status`.
pub const PARTED_FACTOR: f64 = 1.5;
/// Views that must have begun waiting within the recent minutes before the rates are compared:
/// fewer say too little to warn on.
pub const MIN_VIEWS_TO_COMPARE: u64 = 200;

/// FEATURES key of a partition's label state.
pub fn label_state_key(model: &ModelName, partition: u32) -> String {
    format!("labels.{model}.{partition}")
}

/// FEATURES key of one due slot of a partition.
pub fn due_slot_key(model: &ModelName, partition: u32, slot: i64) -> String {
    format!("due.{model}.{partition}.{slot}")
}

/// How due times are cut into buckets for a label horizon. The width follows the horizon
/// featurize runs with: changing the horizon of a running deployment leaves the views indexed
/// under the old width to their users' own later events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueBuckets {
    seconds: i64,
}

impl DueBuckets {
    /// The buckets of `horizon`: 1/256 of it, rounded up to whole seconds, at least one.
    pub fn for_horizon(horizon: TimeDelta) -> DueBuckets {
        let seconds = horizon.num_seconds().max(1);
        DueBuckets {
            seconds: ((seconds + BUCKETS_PER_HORIZON - 1) / BUCKETS_PER_HORIZON).max(1),
        }
    }

    /// The width of a bucket, in seconds.
    pub fn seconds(&self) -> i64 {
        self.seconds
    }

    /// The bucket a due time falls in: its start in Unix seconds.
    pub fn bucket_of(&self, due: DateTime<Utc>) -> i64 {
        due.timestamp().div_euclid(self.seconds) * self.seconds
    }

    /// When a bucket ends: a view due before it belongs to it or an earlier one.
    pub fn end(&self, bucket: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(bucket.saturating_add(self.seconds), 0)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The slot a bucket is kept in.
    pub fn slot_of(&self, bucket: i64) -> i64 {
        bucket.div_euclid(self.seconds).rem_euclid(DUE_SLOTS)
    }
}

/// What one piece of label work counted, for label health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelCounts {
    /// Views (and add-to-carts) that began waiting for a label.
    pub views: u64,
    /// Waiting views a purchase within the horizon labelled positive.
    pub conversions: u64,
    /// Examples published, corrections left out.
    pub examples: u64,
    /// Positive examples published, corrections included.
    pub positives: u64,
    /// Corrections published (fake-negative weighting's positive duplicates).
    pub corrections: u64,
}

impl AddAssign for LabelCounts {
    fn add_assign(&mut self, other: LabelCounts) {
        self.views += other.views;
        self.conversions += other.conversions;
        self.examples += other.examples;
        self.positives += other.positives;
        self.corrections += other.corrections;
    }
}

impl LabelCounts {
    pub fn is_empty(&self) -> bool {
        *self == LabelCounts::default()
    }
}

/// The views indexed in one due bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketCount {
    /// Views indexed there.
    pub views: u64,
    /// Of those, views decided before the bucket was drained.
    pub resolved: u64,
}

impl BucketCount {
    /// Views still waiting.
    pub fn waiting(&self) -> u64 {
        self.views.saturating_sub(self.resolved)
    }
}

/// What one user action did to a partition's label state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelUpdate {
    /// Event time of the action.
    pub at: DateTime<Utc>,
    /// The due time of the view it made wait, if it did.
    pub indexed: Option<DateTime<Utc>>,
    /// The due times of the waiting views it decided.
    pub resolved: Vec<DateTime<Utc>>,
    pub counts: LabelCounts,
}

/// A partition's label bookkeeping (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelState {
    /// The latest event time of a user action on the partition: its event-time progress.
    pub latest_event_at: Option<DateTime<Utc>>,
    /// Buckets holding views, by start (Unix seconds).
    pub buckets: BTreeMap<i64, BucketCount>,
    /// Counts per minute of event time (Unix minutes), the last [`KEPT_MINUTES`].
    pub minutes: BTreeMap<i64, LabelCounts>,
    pub applied: Applied,
}

impl LabelState {
    /// Folds in one user action's update.
    pub fn record(&mut self, update: &LabelUpdate, buckets: DueBuckets) {
        self.latest_event_at = Some(
            self.latest_event_at
                .map_or(update.at, |latest| latest.max(update.at)),
        );
        if let Some(due) = update.indexed {
            let bucket = buckets.bucket_of(due);
            self.buckets.entry(bucket).or_default().views += 1;
        }
        for &due in &update.resolved {
            // A bucket drained already has nothing left to count.
            if let Some(count) = self.buckets.get_mut(&buckets.bucket_of(due)) {
                count.resolved += 1;
            }
        }
        self.count(update.at, update.counts);
    }

    /// Drops drained buckets and counts what deciding them published at `at`.
    pub fn drain(&mut self, buckets: &[i64], at: DateTime<Utc>, counts: LabelCounts) {
        for bucket in buckets {
            self.buckets.remove(bucket);
        }
        self.count(at, counts);
    }

    fn count(&mut self, at: DateTime<Utc>, counts: LabelCounts) {
        if counts.is_empty() {
            return;
        }
        *self.minutes.entry(minute_of(at)).or_default() += counts;
        let latest = self.latest_event_at.map_or(minute_of(at), minute_of);
        let keep_from = latest.max(minute_of(at)) - KEPT_MINUTES + 1;
        self.minutes.retain(|minute, _| *minute >= keep_from);
    }

    /// The buckets whose whole span lies before `through`: those a tick may decide.
    pub fn due_buckets(&self, through: DateTime<Utc>, buckets: DueBuckets) -> Vec<i64> {
        self.buckets
            .keys()
            .copied()
            .filter(|&bucket| buckets.end(bucket) <= through)
            .collect()
    }

    /// Views waiting for a label.
    pub fn waiting(&self) -> u64 {
        self.buckets.values().map(BucketCount::waiting).sum()
    }

    /// The start of the earliest bucket with a view still waiting: the oldest waiting view
    /// falls due at or after it.
    pub fn oldest_waiting_due(&self) -> Option<DateTime<Utc>> {
        let (&bucket, _) = self.buckets.iter().find(|(_, c)| c.waiting() > 0)?;
        DateTime::from_timestamp(bucket, 0)
    }

    /// The counts of the last [`RECENT_MINUTES`] minutes up to the latest event.
    pub fn recent(&self) -> LabelCounts {
        let mut total = LabelCounts::default();
        let Some(latest) = self.latest_event_at.map(minute_of) else {
            return total;
        };
        for (_, counts) in self.minutes.range(latest - RECENT_MINUTES + 1..) {
            total += *counts;
        }
        total
    }
}

/// The Unix minute of a time.
fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

/// One slot of a partition's due index: the users with a view falling due in each of its
/// buckets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DueSlot {
    pub buckets: BTreeMap<i64, BTreeSet<EntityId>>,
    pub applied: Applied,
}

impl DueSlot {
    pub fn index(&mut self, bucket: i64, user: &EntityId) {
        self.buckets.entry(bucket).or_default().insert(user.clone());
    }

    pub fn drain(&mut self, buckets: &[i64]) {
        for bucket in buckets {
            self.buckets.remove(bucket);
        }
    }

    /// The users of a bucket.
    pub fn users(&self, bucket: i64) -> impl Iterator<Item = &EntityId> {
        self.buckets.get(&bucket).into_iter().flatten()
    }
}

/// Whether two non-negative rates differ by more than [`PARTED_FACTOR`] either way (a rate of 0
/// beside a positive one has parted).
pub fn parted(a: f64, b: f64) -> bool {
    a > PARTED_FACTOR * b || b > PARTED_FACTOR * a
}

/// Label health over some partitions, as featurize's metrics, `freshet status` and the live view
/// show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelHealth {
    /// Views waiting for a label.
    pub waiting: u64,
    /// How far the latest event time is past the oldest waiting view (in seconds, to within a
    /// bucket): beyond the horizon, labels are not being decided.
    pub oldest_waiting_seconds: Option<f64>,
    /// Counts of the last [`RECENT_MINUTES`] of event time.
    pub recent: LabelCounts,
}

impl LabelHealth {
    /// The health of the partitions whose states are given, for a label horizon.
    pub fn of<'a>(states: impl IntoIterator<Item = &'a LabelState>, horizon: TimeDelta) -> Self {
        let mut health = LabelHealth::default();
        for state in states {
            health.waiting += state.waiting();
            health.recent += state.recent();
            if let (Some(due), Some(latest)) = (state.oldest_waiting_due(), state.latest_event_at) {
                let view = due.checked_sub_signed(horizon).unwrap_or(due);
                let age = (latest - view).num_milliseconds().max(0) as f64 / 1000.0;
                health.oldest_waiting_seconds =
                    Some(health.oldest_waiting_seconds.map_or(age, |a| a.max(age)));
            }
        }
        health
    }

    /// Conversions per view that began waiting, over the recent minutes.
    pub fn observed_conversion_rate(&self) -> Option<f64> {
        (self.recent.views > 0).then(|| self.recent.conversions as f64 / self.recent.views as f64)
    }

    /// Positives among the examples published over the recent minutes.
    pub fn positive_share(&self) -> Option<f64> {
        (self.recent.examples > 0)
            .then(|| (self.recent.positives as f64 / self.recent.examples as f64).min(1.0))
    }

    /// Why the labels look wrong, if they do: the share of positives published parted from the
    /// observed conversion rate, once enough views were seen to tell.
    pub fn warning(&self) -> Option<String> {
        if self.recent.views < MIN_VIEWS_TO_COMPARE {
            return None;
        }
        let (share, observed) = (self.positive_share()?, self.observed_conversion_rate()?);
        parted(share, observed).then(|| {
            format!(
                "positives are {:.1}% of the examples published but {:.1}% of views convert \
                 (over the last {RECENT_MINUTES} minutes of event time): the model is taught \
                 another conversion rate than the shop's",
                100.0 * share,
                100.0 * observed
            )
        })
    }
}

/// Why a model looks miscalibrated, if it does: its mean prediction parted from a reference
/// conversion rate (`what` names the reference).
pub fn calibration_warning(mean_prediction: f64, reference: f64, what: &str) -> Option<String> {
    parted(mean_prediction, reference).then(|| {
        format!(
            "the model's mean prediction {:.1}% is more than {PARTED_FACTOR}× away from {what} \
             {:.1}%",
            100.0 * mean_prediction,
            100.0 * reference
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets of 8 s, those of a 30-minute horizon.
    const EIGHT: DueBuckets = DueBuckets { seconds: 8 };

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn buckets_cut_a_horizon_in_256_and_slots_wrap() {
        let width = |h| DueBuckets::for_horizon(h).seconds();
        assert_eq!(width(TimeDelta::minutes(30)), 8);
        assert_eq!(width(TimeDelta::seconds(60)), 1);
        assert_eq!(width(TimeDelta::zero()), 1);
        assert_eq!(width(TimeDelta::days(7)), 2363);
        let buckets = EIGHT;
        let bucket = buckets.bucket_of(at(13));
        assert_eq!(bucket % 8, 0);
        assert!(DateTime::from_timestamp(bucket, 0).unwrap() <= at(13));
        assert!(buckets.end(bucket) > at(13));
        assert_eq!(
            buckets.slot_of(bucket + 8 * DUE_SLOTS),
            buckets.slot_of(bucket)
        );
        assert_ne!(buckets.slot_of(bucket + 8), buckets.slot_of(bucket));
        // Before 1970 too.
        let early = DateTime::from_timestamp(-13, 0).unwrap();
        assert!(DateTime::from_timestamp(buckets.bucket_of(early), 0).unwrap() <= early);
        assert!((0..DUE_SLOTS).contains(&buckets.slot_of(buckets.bucket_of(early))));
    }

    #[test]
    fn waiting_views_are_indexed_resolved_and_drained() {
        let mut state = LabelState::default();
        let view = |t: i64, due: i64| LabelUpdate {
            at: at(t),
            indexed: Some(at(due)),
            counts: LabelCounts {
                views: 1,
                examples: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        state.record(&view(0, 600), EIGHT);
        state.record(&view(1, 601), EIGHT);
        state.record(&view(30, 630), EIGHT);
        assert_eq!(state.waiting(), 3);
        assert_eq!(state.latest_event_at, Some(at(30)));
        // A purchase converts the view due at 601.
        state.record(
            &LabelUpdate {
                at: at(40),
                resolved: vec![at(601)],
                counts: LabelCounts {
                    conversions: 1,
                    positives: 1,
                    corrections: 1,
                    ..Default::default()
                },
                ..Default::default()
            },
            EIGHT,
        );
        assert_eq!(state.waiting(), 2);
        let first = EIGHT.bucket_of(at(600));
        assert_eq!(
            state.oldest_waiting_due(),
            DateTime::from_timestamp(first, 0)
        );
        // Only whole buckets are due.
        let before_end = EIGHT.end(first) - TimeDelta::seconds(1);
        assert!(state.due_buckets(before_end, EIGHT).is_empty());
        let due = state.due_buckets(at(620), EIGHT);
        assert_eq!(due, [first]);
        state.drain(&due, at(620), LabelCounts::default());
        assert_eq!(state.waiting(), 1);
        // Resolving a view of a drained bucket changes nothing.
        state.record(
            &LabelUpdate {
                at: at(41),
                resolved: vec![at(600)],
                ..Default::default()
            },
            EIGHT,
        );
        assert_eq!(state.waiting(), 1);
        let health = LabelHealth::of([&state], TimeDelta::seconds(600));
        assert_eq!(health.waiting, 1);
        assert_eq!(
            (health.recent.views, health.recent.conversions),
            (3, 1),
            "{health:?}"
        );
        assert_eq!(health.observed_conversion_rate(), Some(1.0 / 3.0));
        assert_eq!(health.positive_share(), Some(1.0 / 3.0));
        // The oldest waiting view (at 30 s) is some 11 s behind the latest event (41 s).
        let age = health.oldest_waiting_seconds.unwrap();
        assert!((3.0..=19.0).contains(&age), "{age}");
    }

    #[test]
    fn counts_are_kept_for_the_recent_minutes_only() {
        let mut state = LabelState::default();
        for minute in 0..30 {
            state.record(
                &LabelUpdate {
                    at: at(minute * 60),
                    counts: LabelCounts {
                        views: 1,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                EIGHT,
            );
        }
        assert_eq!(state.minutes.len() as i64, KEPT_MINUTES);
        assert_eq!(state.recent().views as i64, RECENT_MINUTES);
    }

    #[test]
    fn health_warns_once_the_published_share_parts_from_the_observed_rate() {
        let health = |views, conversions, examples, positives| LabelHealth {
            recent: LabelCounts {
                views,
                conversions,
                examples,
                positives,
                corrections: 0,
            },
            ..Default::default()
        };
        // Waiting for the horizon: 500 views, 40 conversions, and only the positives out.
        assert!(health(500, 40, 45, 44).warning().is_some());
        // Fake negatives at once: the share follows the rate.
        assert_eq!(health(500, 40, 505, 45).warning(), None);
        // Too few views to tell.
        assert_eq!(health(50, 4, 5, 5).warning(), None);
        assert!(parted(0.0, 0.1) && parted(0.2, 0.1) && !parted(0.12, 0.1) && !parted(0.0, 0.0));
        assert!(calibration_warning(0.9, 0.08, "the observed conversion rate").is_some());
        assert_eq!(calibration_warning(0.09, 0.08, "x"), None);
    }

    #[test]
    fn due_slots_keep_users_per_bucket() {
        let mut slot = DueSlot::default();
        let (u1, u2) = (
            EntityId::parse("u1").unwrap(),
            EntityId::parse("u2").unwrap(),
        );
        slot.index(8, &u1);
        slot.index(8, &u1);
        slot.index(8, &u2);
        slot.index(8 + 8 * DUE_SLOTS, &u2);
        assert_eq!(slot.users(8).count(), 2);
        slot.drain(&[8]);
        assert_eq!(slot.users(8).count(), 0);
        assert_eq!(slot.users(8 + 8 * DUE_SLOTS).count(), 1);
    }
}
