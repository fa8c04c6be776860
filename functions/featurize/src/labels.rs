//! Labels with a horizon: whether a user who looked at a book bought it soon after, and when
//! that is published.
//!
//! A `view` or `add_to_cart` of an item the user has no view of waiting begins to wait in the
//! user's state as a [`PendingView`] (item, event time, event id and the features of that
//! moment), one per item, at most [`MAX_PENDING_VIEWS`]. Its label is 1 if the user buys the
//! item within the horizon after it (and not before it), else 0. How the label reaches train
//! depends on the [`Method`]:
//!
//! - **fake-negative weighting** (`fnw`, the default; Ktena et al., RecSys 2019): the view is
//!   published at once as a negative (`feedback: fake_negative`, id `ex-<view event id>`); a
//!   purchase within the horizon publishes its positive duplicate (`feedback: correction`, id
//!   `ex-<purchase event id>`, the view's features and time, `corrects: ex-<view event id>`).
//!   train weighs the two so that the model learns the true rate (see `freshet_model::weighting`).
//!   The horizon passing publishes nothing: the negative went out already.
//! - **wait for the horizon** (`wait`): nothing goes out at the view; a purchase within the
//!   horizon publishes the view's positive (id `ex-<view event id>`), and the horizon passing its
//!   negative (same id). Until a first horizon has passed only positives flow, and negatives
//!   arrive a horizon late: kept to compare against.
//!
//! Either way a purchase with no such view waiting is a positive example of its own, with the
//! features of the moment of the purchase and id `ex-<purchase event id>`; a view beyond
//! [`MAX_PENDING_VIEWS`] decides the oldest waiting one (a negative, in `wait`); and a zero
//! horizon labels every action at once, as earlier schema versions did: 1 for a purchase, 0
//! otherwise.
//!
//! A waiting view is decided by time in two ways. Its user's own later events decide it once the
//! user's event-time watermark (their latest event time minus the out-of-orderness bound) passes
//! its due time ([`label`]); and featurize's tick decides it once its partition's time passes
//! it, whether or not the user comes back ([`decide_due`], driven by the due index of
//! `freshet_features::labels`).
//!
//! Negatives are sampled: each is kept with the configured probability, decided by a hash of its
//! view's event id, so a redelivered event makes the same decision. Sampling fake negatives
//! biases fake-negative weighting (its weights assume every view's negative was learned) just as
//! it biases any model: keep the rate at 1 where calibration matters.
//!
//! Everything here depends only on the user's state, the event and the time passed in, and a
//! user's events arrive in stream order from one partition, so a redelivery (before the user's
//! state recorded the event) labels exactly the same examples with exactly the same ids, and
//! JetStream drops the republished ones. Their feature values may differ on a replay (they are
//! read from item and category states other partitions also move), which the de-duplication
//! makes harmless.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use freshet::events::{Action, Feedback};
use freshet::examples::ExampleRecord;
use freshet::ids::EntityId;
use freshet_features::bookstore::{MAX_PENDING_VIEWS, PendingView, UserState};
use freshet_features::labels::LabelCounts;

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
    let h = freshet::stats::hash::mixed(text);
    // The top 53 bits, as a double in [0, 1).
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// How a view's label reaches train (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// Fake-negative weighting: the view at once as a negative, a positive duplicate on a
    /// purchase within the horizon.
    #[default]
    FakeNegative,
    /// The view's example waits until a purchase or the horizon decides its label.
    Wait,
}

/// Why a delayed-feedback method was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the delayed-feedback method must be fnw (fake-negative weighting) or wait, got {0:?}")]
pub struct MethodError(String);

impl FromStr for Method {
    type Err = MethodError;

    fn from_str(s: &str) -> Result<Method, MethodError> {
        match s.trim() {
            "fnw" => Ok(Method::FakeNegative),
            "wait" => Ok(Method::Wait),
            other => Err(MethodError(other.to_string())),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::FakeNegative => "fnw",
            Method::Wait => "wait",
        })
    }
}

/// How actions become labelled examples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelSettings {
    /// How long after a view a purchase still labels it 1; zero labels every action at once.
    pub horizon: TimeDelta,
    /// How far the user's watermark trails their latest event time.
    pub out_of_orderness: TimeDelta,
    pub negative_rate: NegativeRate,
    pub method: Method,
}

impl LabelSettings {
    /// Whether views wait for their label at all (a horizon above zero).
    pub fn waits(&self) -> bool {
        self.horizon > TimeDelta::zero()
    }

    /// When a view at `at` falls due: its horizon ends.
    pub fn due(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        at.checked_add_signed(self.horizon)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// From when the label of a view at `at` is final, written on its fake negative: once an
    /// event of its partition is later than its due time plus the out-of-orderness bound, the
    /// partition's watermark (and its user's) has passed the due time, the view is decided, and
    /// no purchase corrects it any more. drift settles the view then, so the two never disagree
    /// on the horizon.
    pub fn final_at(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        self.due(at)
            .checked_add_signed(self.out_of_orderness)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// One labelled example an action (or the tick) decided: whose event its id derives from, the
/// features it carries, the label, and how the label relates to delayed feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    /// The event the example's id derives from: the view for a view's label or fake negative,
    /// else the action (a purchase, for a correction).
    pub source_event: String,
    pub features: Vec<f32>,
    pub label: f32,
    /// Event time of the action whose features the example carries.
    pub at: DateTime<Utc>,
    pub feedback: Feedback,
    /// For a correction: the id of the fake negative it corrects.
    pub corrects: Option<String>,
    /// For a fake negative: the event time from which its label is final
    /// ([`LabelSettings::final_at`]).
    pub final_at: Option<DateTime<Utc>>,
}

impl Labelled {
    /// The final label `label` of a waiting view.
    fn of_view(view: PendingView, label: f32) -> Labelled {
        Labelled {
            source_event: view.event,
            features: view.features,
            label,
            at: view.at,
            feedback: Feedback::Final,
            corrects: None,
            final_at: None,
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

/// What labelling one action did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The examples it publishes, in order (sampled negatives left out).
    pub examples: Vec<Labelled>,
    /// The event time of the view it made wait, if it did.
    pub waiting: Option<DateTime<Utc>>,
    /// The event times of the waiting views it decided, whichever way.
    pub decided: Vec<DateTime<Utc>>,
    /// Of those, how many a purchase labelled 1.
    pub conversions: u64,
}

impl Outcome {
    /// What the outcome counts for label health.
    pub fn counts(&self) -> LabelCounts {
        let mut counts = count_examples(&self.examples);
        counts.views = u64::from(self.waiting.is_some());
        counts.conversions = self.conversions;
        counts
    }
}

/// The label-health counts of published examples.
pub fn count_examples(examples: &[Labelled]) -> LabelCounts {
    let mut counts = LabelCounts::default();
    for example in examples {
        if example.feedback == Feedback::Correction {
            counts.corrections += 1;
        } else {
            counts.examples += 1;
        }
        counts.positives += u64::from(example.label > 0.0);
    }
    counts
}

/// Updates the user's waiting views for one action and returns the examples it labels, with
/// what it did to the waiting views. Counts are not touched: [`UserState::apply`] does that.
pub fn label(user: &mut UserState, act: ActionEvent<'_>, settings: &LabelSettings) -> Outcome {
    let mut outcome = Outcome::default();
    let own = |label: f32| Labelled {
        source_event: act.event_id.to_string(),
        features: act.features.to_vec(),
        label,
        at: act.at,
        feedback: Feedback::Final,
        corrects: None,
        final_at: None,
    };
    if !settings.waits() {
        outcome
            .examples
            .push(own(if act.action == Action::Purchase {
                1.0
            } else {
                0.0
            }));
    } else {
        let latest = user.last_event_at.map_or(act.at, |last| last.max(act.at));
        let watermark = latest
            .checked_sub_signed(settings.out_of_orderness)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        // Expired first: the user's progress says their horizon has passed, whatever this
        // action is.
        for view in take_due(user, watermark, settings, true) {
            outcome.decided.push(view.at);
            outcome.examples.extend(time_decided(view, settings));
        }
        match act.action {
            Action::View | Action::AddToCart => {
                // A second look at an item already waiting changes nothing: the label is about
                // the first one.
                if !user.pending.iter().any(|view| view.item == *act.item) {
                    user.pending.push(PendingView {
                        item: act.item.clone(),
                        at: act.at,
                        event: act.event_id.to_string(),
                        features: act.features.to_vec(),
                    });
                    outcome.waiting = Some(act.at);
                    if settings.method == Method::FakeNegative {
                        outcome.examples.push(Labelled {
                            feedback: Feedback::FakeNegative,
                            final_at: Some(settings.final_at(act.at)),
                            ..own(0.0)
                        });
                    }
                    if user.pending.len() > MAX_PENDING_VIEWS {
                        let oldest = user.pending.remove(0);
                        outcome.decided.push(oldest.at);
                        outcome.examples.extend(time_decided(oldest, settings));
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
                        outcome.decided.push(view.at);
                        outcome.conversions += 1;
                        outcome.examples.push(match settings.method {
                            Method::Wait => Labelled::of_view(view, 1.0),
                            Method::FakeNegative => Labelled {
                                feedback: Feedback::Correction,
                                corrects: Some(ExampleRecord::id_for(&view.event)),
                                features: view.features,
                                at: view.at,
                                ..own(1.0)
                            },
                        });
                    }
                    None => outcome.examples.push(own(1.0)),
                }
            }
        }
    }
    outcome
        .examples
        .retain(|l| l.label > 0.0 || settings.negative_rate.keeps(&l.source_event));
    outcome
}

/// Decides every waiting view of the user due before `through` (the partition's time, passed in
/// by featurize's tick): removes them from the user's state and returns them with the examples
/// their label publishes (the negatives, when waiting for the horizon; none with fake-negative
/// weighting, whose negatives went out at the views), sampled negatives left out.
pub fn decide_due(
    user: &mut UserState,
    through: DateTime<Utc>,
    settings: &LabelSettings,
) -> (Vec<PendingView>, Vec<Labelled>) {
    let decided = take_due(user, through, settings, false);
    let mut examples: Vec<Labelled> = decided
        .iter()
        .cloned()
        .flat_map(|view| time_decided(view, settings))
        .collect();
    examples.retain(|l| settings.negative_rate.keeps(&l.source_event));
    (decided, examples)
}

/// Removes and returns the user's waiting views whose due time is before `through` (or at it,
/// when `inclusive`).
fn take_due(
    user: &mut UserState,
    through: DateTime<Utc>,
    settings: &LabelSettings,
    inclusive: bool,
) -> Vec<PendingView> {
    let is_due = |view: &PendingView| {
        let due = settings.due(view.at);
        due < through || (inclusive && due == through)
    };
    let (due, open): (Vec<PendingView>, Vec<PendingView>) = std::mem::take(&mut user.pending)
        .into_iter()
        .partition(is_due);
    user.pending = open;
    due
}

/// The example a view's label publishes when time decides it (no purchase within the horizon).
fn time_decided(view: PendingView, settings: &LabelSettings) -> Option<Labelled> {
    (settings.method == Method::Wait).then(|| Labelled::of_view(view, 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    /// Waiting for the horizon, as featurize labelled before delayed feedback.
    fn settings(horizon_s: i64) -> LabelSettings {
        LabelSettings {
            horizon: TimeDelta::seconds(horizon_s),
            out_of_orderness: TimeDelta::seconds(5),
            negative_rate: NegativeRate::ALL,
            method: Method::Wait,
        }
    }

    /// Fake-negative weighting.
    fn fnw(horizon_s: i64) -> LabelSettings {
        LabelSettings {
            method: Method::FakeNegative,
            ..settings(horizon_s)
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
        out.examples
            .into_iter()
            .map(|l| (l.source_event, l.label))
            .collect()
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
            out.examples,
            vec![Labelled {
                source_event: "v1".into(),
                features: vec![0.0],
                label: 1.0,
                at: at(0),
                feedback: Feedback::Final,
                corrects: None,
                final_at: None,
            }],
            "the view's id, features and time"
        );
        assert_eq!((out.decided, out.conversions), (vec![at(0)], 1));
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
    fn fake_negative_weighting_sends_the_view_at_once_and_a_correction_on_purchase() {
        let s = fnw(600);
        let mut user = UserState::default();
        let item = EntityId::parse("b1").unwrap();
        let view = label(
            &mut user,
            ActionEvent {
                action: Action::View,
                item: &item,
                at: at(0),
                event_id: "v1",
                features: &[7.0],
            },
            &s,
        );
        assert_eq!(
            view.examples,
            [Labelled {
                source_event: "v1".into(),
                features: vec![7.0],
                label: 0.0,
                at: at(0),
                feedback: Feedback::FakeNegative,
                corrects: None,
                // The horizon (600 s) and the out-of-orderness bound (5 s) after the view: its
                // user's events from then on decide it, so no purchase corrects it after.
                final_at: Some(at(605)),
            }]
        );
        assert_eq!(view.waiting, Some(at(0)), "it waits for its correction");
        user.apply(Action::View, None, at(0));
        // A second look sends nothing: the label is about the first.
        assert!(act(&mut user, Action::View, "b1", 5, "v1b", &s).is_empty());
        let purchase = label(
            &mut user,
            ActionEvent {
                action: Action::Purchase,
                item: &item,
                at: at(300),
                event_id: "p1",
                features: &[9.0],
            },
            &s,
        );
        assert_eq!(
            purchase.examples,
            [Labelled {
                source_event: "p1".into(),
                features: vec![7.0],
                label: 1.0,
                at: at(0),
                feedback: Feedback::Correction,
                corrects: Some("ex-v1".into()),
                final_at: None,
            }],
            "the view's features and time, under the purchase's id"
        );
        assert_eq!(purchase.conversions, 1);
        let counts = purchase.counts();
        assert_eq!(
            (counts.corrections, counts.positives, counts.examples),
            (1, 1, 0)
        );
        user.apply(Action::Purchase, None, at(300));
        // The horizon passing sends nothing: the negative went out with the view.
        act(&mut user, Action::View, "b2", 700, "v2", &s);
        let late = act(&mut user, Action::Purchase, "b9", 2000, "p9", &s);
        assert_eq!(
            late,
            [pair("p9", 1.0)],
            "a purchase with no view stands alone"
        );
        assert!(user.pending.is_empty());
    }

    #[test]
    fn time_decides_views_whether_or_not_their_user_returns() {
        for (s, negatives) in [(settings(600), vec![pair("v1", 0.0)]), (fnw(600), vec![])] {
            let mut user = UserState::default();
            act(&mut user, Action::View, "b1", 0, "v1", &s);
            act(&mut user, Action::View, "b2", 100, "v2", &s);
            // The partition's time at v1's due time: not before it.
            let (decided, examples) = decide_due(&mut user, at(600), &s);
            assert!(decided.is_empty() && examples.is_empty());
            let (decided, examples) = decide_due(&mut user, at(601), &s);
            let ids: Vec<&str> = decided.iter().map(|v| v.event.as_str()).collect();
            assert_eq!(ids, ["v1"]);
            let examples: Vec<(String, f32)> = examples
                .into_iter()
                .map(|l| (l.source_event, l.label))
                .collect();
            assert_eq!(examples, negatives, "{:?}", s.method);
            // Decided once: again, nothing.
            assert_eq!(decide_due(&mut user, at(601), &s).0, []);
            assert_eq!(user.pending.len(), 1);
        }
    }

    #[test]
    fn methods_are_named_on_the_command_line() {
        assert_eq!("fnw".parse::<Method>(), Ok(Method::FakeNegative));
        assert_eq!("wait".parse::<Method>(), Ok(Method::Wait));
        assert!("both".parse::<Method>().is_err());
        assert_eq!(Method::default().to_string(), "fnw");
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
        for method in [Method::FakeNegative, Method::Wait] {
            let s = LabelSettings {
                horizon: TimeDelta::MAX,
                out_of_orderness: TimeDelta::MAX,
                negative_rate: NegativeRate::ALL,
                method,
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
                    let _ = decide_due(&mut user, t, &s);
                    user.apply(action, None, t);
                }
            }
        }
    }
}
