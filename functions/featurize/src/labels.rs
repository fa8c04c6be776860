//! Labels with a horizon: whether a user who looked at a book bought it soon after.
//!
//! A `view` or `add_to_cart` publishes nothing at once. The user's state keeps it as a
//! [`PendingView`] (item, event time, event id and the features of that moment), one per item,
//! at most [`MAX_PENDING_VIEWS`]. Then, as the user's later events arrive:
//!
//! - a `purchase` of a pending item within the horizon after the view (and not before it) labels
//!   the view 1: a positive example with the view's features and id `ex-<view event id>`;
//! - a `purchase` with no such view is a positive example of its own, with the features of the
//!   moment of the purchase and id `ex-<purchase event id>`;
//! - a pending view whose horizon has passed by the user's event-time watermark (the latest event
//!   time of the user minus the out-of-orderness bound) labels 0: a negative example. This is
//!   checked whenever the user's next event arrives, so a user who never comes back leaves their
//!   last views unlabelled;
//! - a view beyond [`MAX_PENDING_VIEWS`] pushes the oldest pending one out as a negative.
//!
//! Negatives are sampled: each is kept with the configured probability, decided by a hash of its
//! view's event id, so a redelivered event makes the same decision. A horizon of zero labels every
//! action at once, as earlier schema versions did: 1 for a purchase, 0 (sampled) otherwise.
//!
//! Everything here depends only on the user's state and the event, and a user's events arrive in
//! stream order from one partition, so a redelivery (before the user's state recorded the event)
//! labels exactly the same examples with exactly the same ids, and JetStream drops the republished
//! ones. Their feature values may differ on a replay (they are read from item and category states
//! other partitions also move), which the de-duplication makes harmless.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use freshet::events::Action;
use freshet::ids::EntityId;
use freshet_features::bookstore::{MAX_PENDING_VIEWS, PendingView, UserState};

/// The share of negative examples kept, between 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NegativeRate(f64);

/// Why a negative rate was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the negative rate must be a number between 0 and 1, got {0:?}")]
pub struct RateError(String);

impl NegativeRate {
    /// Every negative is kept.
    pub const ALL: NegativeRate = NegativeRate(1.0);

    pub fn new(rate: f64) -> Result<NegativeRate, RateError> {
        // Written so that NaN fails the comparison and is refused.
        if (0.0..=1.0).contains(&rate) {
            Ok(NegativeRate(rate))
        } else {
            Err(RateError(rate.to_string()))
        }
    }

    /// Whether the negative example of event `event_id` is kept: a fixed function of the id, so
    /// every delivery of the event decides alike, and about `rate` of all ids are kept.
    pub fn keeps(self, event_id: &str) -> bool {
        unit_hash(event_id) < self.0
    }
}

impl FromStr for NegativeRate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<NegativeRate, RateError> {
        let rate: f64 = s.trim().parse().map_err(|_| RateError(s.to_string()))?;
        NegativeRate::new(rate)
    }
}

impl fmt::Display for NegativeRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A hash of `text` mapped to [0, 1): FNV-1a over the bytes, then the SplitMix64 finaliser so that
/// ids differing in one character land far apart. Both are fixed algorithms, so the value is the
/// same on every machine and release (unlike the standard library's hasher).
fn unit_hash(text: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // The top 53 bits, as a double in [0, 1).
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// How actions become labelled examples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelSettings {
    /// How long after a view a purchase still labels it 1; zero labels every action at once.
    pub horizon: TimeDelta,
    /// How far the user's watermark trails their latest event time.
    pub out_of_orderness: TimeDelta,
    pub negative_rate: NegativeRate,
}

/// One labelled example an action decided: whose event it stands for, the features it carries
/// and the label.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    /// The event the example's id derives from: the view for a labelled view, else the action.
    pub source_event: String,
    pub features: Vec<f32>,
    pub label: f32,
    /// Event time of the source event.
    pub at: DateTime<Utc>,
}

impl Labelled {
    fn negative(view: PendingView) -> Labelled {
        Labelled {
            source_event: view.event,
            features: view.features,
            label: 0.0,
            at: view.at,
        }
    }
}

/// One user action as labelling sees it.
#[derive(Debug, Clone, Copy)]
pub struct ActionEvent<'a> {
    pub action: Action,
    pub item: &'a EntityId,
    pub at: DateTime<Utc>,
    pub event_id: &'a str,
    /// The feature vector before the action.
    pub features: &'a [f32],
}

/// Updates the user's pending views for one action and returns the examples it labels, in order
/// (sampled negatives left out). Counts are not touched: [`UserState::apply`] does that.
pub fn label(
    user: &mut UserState,
    act: ActionEvent<'_>,
    settings: &LabelSettings,
) -> Vec<Labelled> {
    let mut labelled = Vec::new();
    if settings.horizon <= TimeDelta::zero() {
        labelled.push(Labelled {
            source_event: act.event_id.to_string(),
            features: act.features.to_vec(),
            label: if act.action == Action::Purchase {
                1.0
            } else {
                0.0
            },
            at: act.at,
        });
    } else {
        let latest = user.last_event_at.map_or(act.at, |last| last.max(act.at));
        let watermark = latest
            .checked_sub_signed(settings.out_of_orderness)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        // Expired first: the user's progress says their horizon has passed, whatever this
        // action is.
        let (expired, open): (Vec<PendingView>, Vec<PendingView>) =
            std::mem::take(&mut user.pending)
                .into_iter()
                .partition(|view| {
                    view.at
                        .checked_add_signed(settings.horizon)
                        .is_some_and(|due| due <= watermark)
                });
        user.pending = open;
        labelled.extend(expired.into_iter().map(Labelled::negative));
        match act.action {
            Action::View | Action::AddToCart => {
                // A second look at an item already pending changes nothing: the label is about
                // the first one.
                if !user.pending.iter().any(|view| view.item == *act.item) {
                    user.pending.push(PendingView {
                        item: act.item.clone(),
                        at: act.at,
                        event: act.event_id.to_string(),
                        features: act.features.to_vec(),
                    });
                    if user.pending.len() > MAX_PENDING_VIEWS {
                        let oldest = user.pending.remove(0);
                        labelled.push(Labelled::negative(oldest));
                    }
                }
            }
            Action::Purchase => {
                let within = |view: &PendingView| {
                    view.item == *act.item
                        && view.at <= act.at
                        && act.at.signed_duration_since(view.at) <= settings.horizon
                };
                match user.pending.iter().position(within) {
                    Some(i) => {
                        let view = user.pending.remove(i);
                        labelled.push(Labelled {
                            label: 1.0,
                            ..Labelled::negative(view)
                        });
                    }
                    None => labelled.push(Labelled {
                        source_event: act.event_id.to_string(),
                        features: act.features.to_vec(),
                        label: 1.0,
                        at: act.at,
                    }),
                }
            }
        }
    }
    labelled.retain(|l| l.label > 0.0 || settings.negative_rate.keeps(&l.source_event));
    labelled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn settings(horizon_s: i64) -> LabelSettings {
        LabelSettings {
            horizon: TimeDelta::seconds(horizon_s),
            out_of_orderness: TimeDelta::seconds(5),
            negative_rate: NegativeRate::ALL,
        }
    }

    /// Labels one action and applies its counts, as featurize does; returns (source, label) pairs.
    fn act(
        user: &mut UserState,
        action: Action,
        item: &str,
        t: i64,
        id: &str,
        settings: &LabelSettings,
    ) -> Vec<(String, f32)> {
        let item = EntityId::parse(item).unwrap();
        let features = [t as f32];
        let out = label(
            user,
            ActionEvent {
                action,
                item: &item,
                at: at(t),
                event_id: id,
                features: &features,
            },
            settings,
        );
        user.apply(action, None, at(t));
        out.into_iter().map(|l| (l.source_event, l.label)).collect()
    }

    fn pair(id: &str, label: f32) -> (String, f32) {
        (id.to_string(), label)
    }

    #[test]
    fn a_purchase_within_the_horizon_labels_the_view() {
        let s = settings(600);
        let mut user = UserState::default();
        assert!(act(&mut user, Action::View, "b1", 0, "v1", &s).is_empty());
        assert!(act(&mut user, Action::AddToCart, "b1", 10, "c1", &s).is_empty());
        assert_eq!(user.pending.len(), 1, "a second look at b1 adds nothing");
        let item = EntityId::parse("b1").unwrap();
        let features = [42.0];
        let out = label(
            &mut user,
            ActionEvent {
                action: Action::Purchase,
                item: &item,
                at: at(300),
                event_id: "p1",
                features: &features,
            },
            &s,
        );
        assert_eq!(
            out,
            vec![Labelled {
                source_event: "v1".into(),
                features: vec![0.0],
                label: 1.0,
                at: at(0),
            }],
            "the view's id, features and time"
        );
        assert!(user.pending.is_empty());
    }

    #[test]
    fn the_horizon_passing_labels_the_view_negative_at_the_users_next_event() {
        let s = settings(600);
        let mut user = UserState::default();
        act(&mut user, Action::View, "b1", 0, "v1", &s);
        act(&mut user, Action::View, "b2", 100, "v2", &s);
        // 604 s: watermark 599 s, the horizon of v1 ends at 600 s.
        assert!(act(&mut user, Action::View, "b3", 604, "v3", &s).is_empty());
        // 605 s: watermark 600 s.
        assert_eq!(
            act(&mut user, Action::View, "b4", 605, "v4", &s),
            vec![pair("v1", 0.0)]
        );
        // A purchase of b2 after its horizon: b2's view expires first, and the purchase stands
        // on its own.
        assert_eq!(
            act(&mut user, Action::Purchase, "b2", 800, "p2", &s),
            vec![pair("v2", 0.0), pair("p2", 1.0)]
        );
        let pending: Vec<&str> = user.pending.iter().map(|v| v.event.as_str()).collect();
        assert_eq!(pending, ["v3", "v4"]);
    }

    #[test]
    fn a_purchase_does_not_label_a_view_after_it_or_of_another_item() {
        let s = settings(600);
        let mut user = UserState::default();
        act(&mut user, Action::View, "b1", 100, "v1", &s);
        // Out of order: a purchase of b1 stamped before the view.
        assert_eq!(
            act(&mut user, Action::Purchase, "b1", 98, "p1", &s),
            vec![pair("p1", 1.0)]
        );
        assert_eq!(
            act(&mut user, Action::Purchase, "b9", 120, "p9", &s),
            vec![pair("p9", 1.0)]
        );
        assert_eq!(user.pending.len(), 1);
    }

    #[test]
    fn pending_views_are_bounded_and_the_oldest_leaves_as_negative() {
        let s = settings(3600);
        let mut user = UserState::default();
        for i in 0..MAX_PENDING_VIEWS {
            assert!(
                act(
                    &mut user,
                    Action::View,
                    &format!("b{i}"),
                    0,
                    &format!("v{i}"),
                    &s
                )
                .is_empty()
            );
        }
        assert_eq!(
            act(&mut user, Action::View, "new", 1, "vnew", &s),
            vec![pair("v0", 0.0)]
        );
        assert_eq!(user.pending.len(), MAX_PENDING_VIEWS);
        assert_eq!(user.pending.last().unwrap().event, "vnew");
    }

    #[test]
    fn a_zero_horizon_labels_every_action_at_once() {
        let s = settings(0);
        let mut user = UserState::default();
        assert_eq!(
            act(&mut user, Action::View, "b1", 0, "v1", &s),
            vec![pair("v1", 0.0)]
        );
        assert_eq!(
            act(&mut user, Action::AddToCart, "b1", 0, "c1", &s),
            vec![pair("c1", 0.0)]
        );
        assert_eq!(
            act(&mut user, Action::Purchase, "b1", 0, "p1", &s),
            vec![pair("p1", 1.0)]
        );
        assert!(user.pending.is_empty());
    }

    #[test]
    fn labelling_is_a_function_of_the_state_and_the_event() {
        let s = settings(60);
        let mut user = UserState::default();
        act(&mut user, Action::View, "b1", 0, "v1", &s);
        act(&mut user, Action::View, "b2", 10, "v2", &s);
        let before = user.clone();
        let mut again = user.clone();
        let first = act(&mut user, Action::Purchase, "b2", 100, "p", &s);
        let second = act(&mut again, Action::Purchase, "b2", 100, "p", &s);
        assert_eq!(first, second);
        assert_eq!(user, again);
        assert_ne!(user, before);
    }

    #[test]
    fn negatives_are_sampled_by_event_id_and_positives_always_kept() {
        let half = LabelSettings {
            negative_rate: NegativeRate::new(0.5).unwrap(),
            ..settings(0)
        };
        let ids: Vec<String> = (0..4000).map(|i| format!("evt-{i}")).collect();
        let kept: Vec<bool> = ids.iter().map(|id| half.negative_rate.keeps(id)).collect();
        let share = kept.iter().filter(|&&k| k).count() as f64 / ids.len() as f64;
        assert!((share - 0.5).abs() < 0.03, "{share}");
        // The same id decides alike every time.
        assert!(
            ids.iter()
                .zip(&kept)
                .all(|(id, &k)| half.negative_rate.keeps(id) == k)
        );
        let mut user = UserState::default();
        let mut negatives = 0;
        for (i, id) in ids.iter().take(200).enumerate() {
            let out = act(&mut user, Action::View, "b1", i as i64, id, &half);
            negatives += out.len();
            assert_eq!(out.is_empty(), !kept[i]);
            assert_eq!(
                act(
                    &mut user,
                    Action::Purchase,
                    "b1",
                    i as i64,
                    &format!("p{i}"),
                    &half
                )
                .len(),
                1
            );
        }
        assert!(negatives > 50 && negatives < 150);
        assert!(!NegativeRate::new(0.0).unwrap().keeps("x"));
        assert!(NegativeRate::ALL.keeps("x"));
    }

    #[test]
    fn rates_are_checked() {
        assert_eq!("0.25".parse::<NegativeRate>(), Ok(NegativeRate(0.25)));
        for bad in ["1.5", "-0.1", "NaN", "half", ""] {
            assert!(bad.parse::<NegativeRate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let s = LabelSettings {
            horizon: TimeDelta::MAX,
            out_of_orderness: TimeDelta::MAX,
            negative_rate: NegativeRate::ALL,
        };
        let mut user = UserState::default();
        for (t, id) in [
            (DateTime::<Utc>::MAX_UTC, "a"),
            (DateTime::<Utc>::MIN_UTC, "b"),
        ] {
            let item = EntityId::parse("b1").unwrap();
            for action in [Action::View, Action::Purchase] {
                let _ = label(
                    &mut user,
                    ActionEvent {
                        action,
                        item: &item,
                        at: t,
                        event_id: id,
                        features: &[],
                    },
                    &s,
                );
                user.apply(action, None, t);
            }
        }
    }
}
