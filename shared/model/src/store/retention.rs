//! Which versions a retention pass keeps: the newest few, every version of a recent span, one
//! per hour of a longer span, and every version a pointer names. Pure: the versions come with
//! when they were written and `now` is passed in, so the policy is tested on plain timestamps.
//!
//! Why time as well as count: at about a version a second under load, a count alone (100 by
//! default) reaches back less than two minutes, and the pointers' own history in MODELS is
//! bounded by the bucket's history depth (64 writes a key, the most JetStream KV keeps), so
//! "go back to this morning's model" needs versions kept by age. A rollback to a kept version
//! names it (`freshet models rollback --to V`) or a time (`--to-time`), and is verified against
//! its manifest like any other; it does not need the pointer's history to reach it.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, DurationRound, Utc};

/// How many versions, and which, a retention pass keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many versions (0: keep every version; the other rules then do nothing).
    pub keep_newest: usize,
    /// Every version written within this long before now.
    pub keep_all_for: Duration,
    /// The newest version of each clock hour (UTC) within this long before now.
    pub keep_hourly_for: Duration,
}

impl Retention {
    /// Keeps only the newest `keep_newest` (and the named versions).
    pub fn newest(keep_newest: usize) -> Retention {
        Retention {
            keep_newest,
            keep_all_for: Duration::zero(),
            keep_hourly_for: Duration::zero(),
        }
    }

    /// The versions of `stored` (each with when it was written) this policy removes at `now`,
    /// ascending; never one in `named` (a version a pointer names now or in its kept history).
    pub fn versions_to_delete(
        &self,
        stored: &[(u64, DateTime<Utc>)],
        named: &BTreeSet<u64>,
        now: DateTime<Utc>,
    ) -> Vec<u64> {
        if self.keep_newest == 0 {
            return Vec::new();
        }
        let mut sorted = stored.to_vec();
        sorted.sort_unstable_by_key(|(version, _)| *version);
        sorted.dedup_by_key(|(version, _)| *version);
        let mut kept: BTreeSet<u64> = named.clone();
        kept.extend(sorted.iter().rev().take(self.keep_newest).map(|(v, _)| *v));
        let within =
            |at: DateTime<Utc>, span: Duration| span > Duration::zero() && now - at <= span;
        kept.extend(
            sorted
                .iter()
                .filter(|(_, at)| within(*at, self.keep_all_for))
                .map(|(v, _)| *v),
        );
        // The newest version of each hour: versions ascend with time, so the last seen wins.
        let mut hourly = std::collections::BTreeMap::new();
        for &(version, at) in sorted
            .iter()
            .filter(|(_, at)| within(*at, self.keep_hourly_for))
        {
            let hour = at.duration_trunc(Duration::hours(1)).unwrap_or(at);
            hourly.insert(hour, version);
        }
        kept.extend(hourly.into_values());
        sorted
            .into_iter()
            .map(|(v, _)| v)
            .filter(|v| !kept.contains(v))
            .collect()
    }
}

/// The version to roll back to for "the model of `at`": the newest of `stored` written at or
/// before `at`, if any.
pub fn version_at(stored: &[(u64, DateTime<Utc>)], at: DateTime<Utc>) -> Option<u64> {
    stored
        .iter()
        .filter(|(_, written)| *written <= at)
        .max_by_key(|(version, written)| (*written, *version))
        .map(|(version, _)| *version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-12-06T{hour:02}:{minute:02}:00Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A version every 10 minutes from 00:00 to 11:50: version 1 at 00:00, 72 at 11:50.
    fn every_ten_minutes() -> Vec<(u64, DateTime<Utc>)> {
        (0..72u64)
            .map(|i| (i + 1, at((i / 6) as u32, (i % 6 * 10) as u32)))
            .collect()
    }

    fn kept(policy: Retention, named: &[u64]) -> Vec<u64> {
        let stored = every_ten_minutes();
        let named = named.iter().copied().collect();
        let doomed = policy.versions_to_delete(&stored, &named, at(12, 0));
        stored
            .into_iter()
            .map(|(v, _)| v)
            .filter(|v| !doomed.contains(v))
            .collect()
    }

    #[test]
    fn a_count_alone_keeps_the_newest_and_the_named() {
        assert_eq!(kept(Retention::newest(3), &[2]), [2, 70, 71, 72]);
        assert!(kept(Retention::newest(0), &[]).len() == 72, "0 keeps all");
    }

    #[test]
    fn every_version_of_the_recent_span_and_one_an_hour_of_the_longer_one() {
        let policy = Retention {
            keep_newest: 2,
            keep_all_for: Duration::minutes(30),
            keep_hourly_for: Duration::hours(3),
        };
        // 11:30 to 11:50 (within 30 min of 12:00: 70..=72), the last of the hours 09, 10 and
        // 11 within 3 hours (09:50 is version 60, 10:50 66, 11:50 72), and the newest two.
        assert_eq!(kept(policy, &[]), [60, 66, 70, 71, 72]);
        // A week of hourly snapshots reaches the first hour: "this morning's model".
        let week = Retention {
            keep_hourly_for: Duration::days(7),
            ..policy
        };
        assert_eq!(
            kept(week, &[]),
            [6, 12, 18, 24, 30, 36, 42, 48, 54, 60, 66, 70, 71, 72]
        );
    }

    #[test]
    fn the_model_of_a_time_is_the_newest_written_by_then() {
        let stored = every_ten_minutes();
        assert_eq!(version_at(&stored, at(8, 5)), Some(49));
        assert_eq!(version_at(&stored, at(8, 0)), Some(49));
        assert_eq!(version_at(&stored, at(23, 0)), Some(72));
        let kept: Vec<_> = stored.into_iter().filter(|(v, _)| v % 6 == 0).collect();
        assert_eq!(
            version_at(&kept, at(8, 5)),
            Some(48),
            "the hour before's snapshot"
        );
        assert_eq!(version_at(&kept, at(0, 5)), None);
    }
}
