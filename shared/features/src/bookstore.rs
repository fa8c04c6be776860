//! The bookstore features: entity state kept in the FEATURES bucket and the feature vector built
//! from it. featurize (training time) and predict (request time) both call [`feature_vector`], so
//! a model is served exactly the features it learned from.
//!
//! Every state carries, per partition, the highest stream sequence already applied to it. A
//! redelivered event at or below that mark is recognised and not counted twice.
//!
//! # The features (schema "bookstore", version 4)
//!
//! No feature grows with the stream's age or an entity's: every one is a rate smoothed towards a
//! prior, a rate per minute over a recent span, a price or a clamped idle time, so its
//! distribution over the views of one minute is the same early in a stream as an hour later
//! (only the spread of a smoothed rate widens as histories lengthen, not its level). This matters
//! beyond drift monitoring: a delayed label carries the features of its view, older than those
//! of the rows learned beside it, and a feature that grows with age then reads "older values
//! convert" (the bias measured in BENCHMARKS.md, section "Delayed feedback"). Version 3's
//! running counts (views, carts and purchases of the user, views of the item), the item's age and
//! its hour-long counts are gone, and the five-minute counts became rates per minute of the span
//! actually covered (a count over the current, partly elapsed minute and the four before it
//! swings with the second of the minute, and fills up over an item's first five minutes). What
//! the counts told about buying is carried by the cart rates, which are known at once where
//! purchases come minutes later. A user's cart and purchase rates within the item's category
//! were tried and left out: they ranked a little better, but the model then followed a change in
//! what users buy (half the catalogue selling against taste) so closely that its error, which
//! drift watches, rose too slowly to confirm the change in time on labels that wait for the
//! horizon (measured in BENCHMARKS.md, section "Delayed feedback").
//!
//! Rates are (hits + 4·prior) / (trials + 4): defined for a brand-new entity (the prior) and
//! dominated by the entity's own counts after a few actions; trials are never fewer than hits.
//! Every value is finite and bounded (below 45) for any state. "Now" is the event time of the
//! action at training time and the clock at request time.
//!
//! | # | name | definition | drift watches |
//! | --- | --- | --- | --- |
//! | 0 | `user_cart_rate` | (add-to-carts + 4·0.2) / (views + 4) | no: a running average |
//! | 1 | `user_purchase_rate` | (purchases + 4·0.1) / (views + 4) | no: a running average |
//! | 2 | `user_category_share` | (views of the item's category + 4·0.5) / (views + 4) | no: a running average |
//! | 3 | `category_cart_rate` | (category add-to-carts + 4·0.2) / (category views + 4): all items of the category | no: a running average |
//! | 4 | `category_purchase_rate` | (category purchases + 4·0.1) / (category views + 4) | no: a running average |
//! | 5 | `user_log_idle_minutes` | ln(1 + minutes since the user's last event), at most 30 days; 30 days for a new user | the value |
//! | 6 | `item_cart_rate` | (add-to-carts + 4·c) / (views + 4), c the category cart rate (feature 3) | no: a running average |
//! | 7 | `item_purchase_rate` | (purchases + 4·p) / (views + 4), p the category purchase rate (feature 4) | no: a running average |
//! | 8 | `item_log_price` | ln(1 + price), 0 when unknown | the value |
//! | 9 | `item_recent_conversion` | (purchases of the item in the last 60 one-minute windows + 4·s) / (actions on it in them + 4); s = (its purchases + 4·s_c) / (its actions + 4) over all time, s_c = (category purchases + 4·0.1/1.3) / (category actions + 4), purchases per action of any kind | no: hour-long overlap |
//! | 10 | `item_log_idle_minutes` | ln(1 + minutes since the item's last event), as for the user | the value |
//! | 11 | `item_log_action_rate_5m` | ln(1 + actions on the item per minute in the last 5 one-minute windows: their count over the minutes those windows have covered by now since the item was first seen, at least 1) | no: slow swings |
//! | 12 | `item_log_purchase_rate_5m` | ln(1 + purchases of it per minute, over the same span) | no: wanders |
//!
//! The last column is the monitoring plan ([`MONITORING`], with each reason in full): what the
//! drift function compares between a reference window and a recent one. The model's prediction
//! error is always watched; the plan only says which inputs can show a change by themselves.
//!
//! The recent spans are event-time windows ([`EventTimeWindows`]): tumbling one-minute windows
//! ending at the end of the current minute, so "the last 5 minutes" is the current, partly
//! elapsed minute and the four before it. A book that goes viral lifts features 9, 11 and 12 with
//! its first events, and the next request already sees them. A category's rates are the priors
//! of its items', so a book listed a second ago starts at its category's level rather than at a
//! bookshop-wide guess.
//!
//! Version 4 reads the states of version 3 as they are: every feature is computed from what both
//! versions keep (counts, category views, first and last event times, popularity windows), so a
//! state written by version 3 yields the features it would have had under version 4.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregates::{
    Accepted, AddError, EventTimeWindows, SpecError, WindowConfig, WindowSpec,
};
use freshet::events::Action;
use freshet::examples::FeatureSchema;
use freshet::ids::{EntityId, ModelName};
use freshet::monitoring::{Monitoring, Watch};
use freshet::stats::{Decay, EwmaError, EwmaVector};

/// The name of the bookstore feature schema, written into every manifest.
pub const SCHEMA_NAME: &str = "bookstore";
/// Bumped whenever a feature's meaning changes; predictors refuse a model of another version.
pub const SCHEMA_VERSION: u32 = 4;
/// The features, in vector order; the module documentation defines each.
pub const FEATURE_NAMES: [&str; 13] = [
    "user_cart_rate",
    "user_purchase_rate",
    "user_category_share",
    "category_cart_rate",
    "category_purchase_rate",
    "user_log_idle_minutes",
    "item_cart_rate",
    "item_purchase_rate",
    "item_log_price",
    "item_recent_conversion",
    "item_log_idle_minutes",
    "item_log_action_rate_5m",
    "item_log_purchase_rate_5m",
];
/// How drift watches each feature, in [`FEATURE_NAMES`] order, and why (see
/// [`freshet::monitoring`]). A feature whose recent values are not comparable with older ones by
/// construction is not watched: comparing them would report the shop's age or the overlap of its
/// own spans, not a change in the shop.
pub const MONITORING: [(Watch, &str); 13] = [
    (
        Watch::Ignore,
        "a running average over the user's whole history: it narrows towards each user's rate as histories lengthen, and answers a change only slowly; a change in buying shows first in the model's error",
    ),
    (
        Watch::Ignore,
        "a running average over the user's whole history: it narrows towards each user's rate as histories lengthen, and answers a change only slowly; a change in buying shows first in the model's error",
    ),
    (
        Watch::Ignore,
        "a running share over the user's whole history: it narrows as histories lengthen, and answers a change in taste only slowly",
    ),
    (
        Watch::Ignore,
        "a running rate over every action in the category: after the first minutes a handful of values creeping as counts grow, which a comparison of quantiles reads as jumps",
    ),
    (
        Watch::Ignore,
        "a running rate over every action in the category: after the first minutes a handful of values creeping as counts grow, which a comparison of quantiles reads as jumps",
    ),
    (
        Watch::Value,
        "clamped and logged time since the user's previous event: how often users come back, steady while their habits are",
    ),
    (
        Watch::Ignore,
        "a running average over the item's whole history: it creeps towards the item's rate as views accumulate, and answers a change only slowly",
    ),
    (
        Watch::Ignore,
        "a running average over the item's whole history: it creeps towards the item's rate as views accumulate, and answers a change only slowly; a change in what sells shows first in the model's error and the five-minute purchases",
    ),
    (
        Watch::Value,
        "the price of what is viewed: steady until prices or the mix of books viewed change",
    ),
    (
        Watch::Ignore,
        "an hour-long moving rate: examples minutes apart share most of its window, so recent values are too dependent for a window comparison; a change in what sells shows first in the model's error",
    ),
    (
        Watch::Value,
        "clamped and logged time since the item's previous event: how evenly attention spreads over the catalogue",
    ),
    (
        Watch::Ignore,
        "the item's traffic rate over five minutes: examples of one item minutes apart share its window, and attention swings more slowly than a window comparison can tell from a change; the item's idle time is watched",
    ),
    (
        Watch::Ignore,
        "the item's sales rate over five minutes: in the order featurize publishes examples (a view's when its label is known) its recent values wander more than a window comparison allows for, even with the measured dispersion; a change in what sells shows in the model's error",
    ),
];
/// A user's per-category view counts keep at most this many categories.
const MAX_CATEGORIES_PER_USER: usize = 64;
/// A user remembers at most this many of their actions refused as late (see
/// [`UserState::refused`]).
pub const MAX_REFUSED_REMEMBERED: usize = 16;
/// A user keeps at most this many views waiting for their label (see [`PendingView`]).
pub const MAX_PENDING_VIEWS: usize = 32;

/// The length of one popularity window.
pub const POPULARITY_WINDOW: Duration = Duration::from_secs(60);
/// How many popularity windows an item keeps queryable: an hour of them.
pub const POPULARITY_HISTORY: u32 = 60;
/// The short and long recent spans of the popularity features, in windows.
const SHORT_SPAN: u32 = 5;
const LONG_SPAN: u32 = 60;
/// How far behind an item's latest event time its watermark trails, unless configured.
pub const DEFAULT_OUT_OF_ORDERNESS: Duration = Duration::from_secs(5);
/// How long past the watermark a popularity window still takes events, unless configured.
pub const DEFAULT_ALLOWED_LATENESS: Duration = Duration::from_secs(60);
/// Idle times are clamped here (30 days, in minutes), and an entity never seen counts as idle
/// that long: long enough to mean "cold", short enough to keep the value bounded.
const MAX_IDLE_MINUTES: f64 = 30.0 * 24.0 * 60.0;

/// The schema for manifests.
pub fn schema() -> FeatureSchema {
    FeatureSchema {
        name: SCHEMA_NAME.to_string(),
        version: SCHEMA_VERSION,
        features: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
        monitoring: MONITORING
            .iter()
            .map(|(watch, reason)| Monitoring::new(*watch, reason))
            .collect(),
    }
}

/// The window settings of item popularity: tumbling one-minute windows, an hour of them kept,
/// with the given out-of-orderness and allowed lateness. Refused when the lateness is so long
/// that an item would keep more windows than [`crate::aggregates::MAX_STORED_WINDOWS`].
pub fn popularity_spec(
    out_of_orderness: Duration,
    allowed_lateness: Duration,
) -> Result<WindowSpec, SpecError> {
    WindowSpec::new(&WindowConfig {
        out_of_orderness,
        allowed_lateness,
        history: POPULARITY_HISTORY,
        ..WindowConfig::tumbling(POPULARITY_WINDOW)
    })
}

/// FEATURES key of a user's state.
pub fn user_key(user: &EntityId) -> String {
    format!("user.{user}")
}

/// FEATURES key of an item's state.
pub fn item_key(item: &EntityId) -> String {
    format!("item.{item}")
}

/// FEATURES key of a category's state. A category is free text, and a KV key takes only
/// `[-/_=.A-Za-z0-9]`: letters, digits and `-` are kept, every other byte becomes `_XX` (its hex
/// value), so the key stays readable for plain names and two names never share a key.
pub fn category_key(category: &str) -> String {
    let mut key = String::with_capacity(9 + category.len());
    key.push_str("category.");
    for byte in category.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            key.push(char::from(byte));
        } else {
            key.push_str(&format!("_{byte:02X}"));
        }
    }
    key
}

/// FEATURES key of the feature scaling of `model` learned from the examples of one partition
/// (see [`ScalingState`]).
pub fn scaling_key(model: &ModelName, partition: u32) -> String {
    format!("scaling.{model}.{partition}")
}

pub use crate::applied::Applied;

/// A view (or add-to-cart) waiting for its label: a purchase of the item within the label
/// horizon makes it a positive example, the horizon passing without one a negative. It keeps the
/// features as they were when the user looked, which is what the example must carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingView {
    pub item: EntityId,
    /// Event time of the view.
    pub at: DateTime<Utc>,
    /// CloudEvent id of the view: the example's id derives from it, whatever labels it.
    pub event: String,
    /// The feature vector at the time of the view, in [`FEATURE_NAMES`] order.
    pub features: Vec<f32>,
}

/// What featurize knows about a user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub views: u64,
    pub carts: u64,
    pub purchases: u64,
    pub category_views: BTreeMap<String, u64>,
    /// The latest event time of the user's actions: the user's event-time progress.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Views waiting for their label, oldest first; at most [`MAX_PENDING_VIEWS`].
    #[serde(default)]
    pub pending: Vec<PendingView>,
    /// (partition, sequence) of the user's latest actions refused as late, oldest first, at most
    /// [`MAX_REFUSED_REMEMBERED`]. The applied marks are high-water marks: once a later action
    /// passed it, a refused action looks applied, and this is what tells a replay to refuse it
    /// again.
    #[serde(default)]
    pub refused: Vec<(u32, u64)>,
    pub applied: Applied,
}

/// What featurize knows about an item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemState {
    pub category: Option<String>,
    pub price: Option<f64>,
    pub views: u64,
    pub carts: u64,
    pub purchases: u64,
    pub first_seen: Option<DateTime<Utc>>,
    /// The latest event time of anything that happened to the item, its listing included.
    #[serde(default)]
    pub last_event_at: Option<DateTime<Utc>>,
    /// Actions on the item per event-time window: each action counts 1 and adds 1 to the sum if
    /// it is a purchase, so a window's count is its actions and its sum its purchases. `None`
    /// until the first action; built with the settings featurize runs with at that moment.
    #[serde(default)]
    pub popularity: Option<EventTimeWindows>,
    pub applied: Applied,
}

/// What featurize knows about a category: the actions on all its items.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CategoryState {
    pub views: u64,
    pub carts: u64,
    pub purchases: u64,
    pub applied: Applied,
}

impl UserState {
    /// Counts one action of this user on an item of `category`.
    pub fn apply(&mut self, action: Action, category: Option<&str>, at: DateTime<Utc>) {
        match action {
            Action::View => {
                self.views = self.views.saturating_add(1);
                if let Some(category) = category {
                    count_in(&mut self.category_views, category);
                }
            }
            Action::AddToCart => self.carts = self.carts.saturating_add(1),
            Action::Purchase => self.purchases = self.purchases.saturating_add(1),
        }
        self.last_event_at = Some(latest(self.last_event_at, at));
    }

    /// Records that the action at `sequence` of `partition` was refused: its position is marked
    /// (it is decided) and remembered as refused, and nothing else changes.
    pub fn refuse(&mut self, partition: u32, sequence: u64) {
        if !self.has_refused(partition, sequence) {
            self.refused.push((partition, sequence));
            if self.refused.len() > MAX_REFUSED_REMEMBERED {
                self.refused.remove(0);
            }
        }
        self.applied.record(partition, sequence);
    }

    /// Whether the action at `sequence` of `partition` was refused, as far as remembered.
    pub fn has_refused(&self, partition: u32, sequence: u64) -> bool {
        self.refused.contains(&(partition, sequence))
    }
}

impl ItemState {
    /// Whether an action at `at` would be too late for every popularity window it belongs to, or
    /// after `latest_allowed` (see [`EventTimeWindows::add_within`]); `spec` builds the windows
    /// of an item without any. Nothing changes: the caller decides whether to apply the action.
    pub fn check_late(
        &self,
        at: DateTime<Utc>,
        spec: &WindowSpec,
        latest_allowed: DateTime<Utc>,
    ) -> Result<(), AddError> {
        let mut windows = self
            .popularity
            .clone()
            .unwrap_or_else(|| EventTimeWindows::new(*spec));
        windows.add_within(at, 0.0, latest_allowed).map(|_| ())
    }

    /// Counts one action on this item, in its totals and its popularity windows (built with
    /// `spec` if it has none yet). Returns the windows' verdict: the totals always count the
    /// action, while a window already final never changes, so an action that has become late
    /// since it was judged on time (another partition moved the watermark in between) is left
    /// out of the windows and counted there as late. An action after `latest_allowed` is left
    /// out of the windows too, so it cannot move their watermark (the caller refuses such
    /// actions before they come here; this is the second line).
    pub fn apply_action(
        &mut self,
        action: Action,
        at: DateTime<Utc>,
        spec: &WindowSpec,
        latest_allowed: DateTime<Utc>,
    ) -> Result<Accepted, AddError> {
        match action {
            Action::View => self.views = self.views.saturating_add(1),
            Action::AddToCart => self.carts = self.carts.saturating_add(1),
            Action::Purchase => self.purchases = self.purchases.saturating_add(1),
        }
        self.first_seen = Some(earliest(self.first_seen, at));
        self.last_event_at = Some(latest(self.last_event_at, at));
        let purchase = if action == Action::Purchase { 1.0 } else { 0.0 };
        self.popularity
            .get_or_insert_with(|| EventTimeWindows::new(*spec))
            .add_within(at, purchase, latest_allowed)
    }

    /// Records the catalogue facts of a `new_item` event.
    pub fn apply_new_item(&mut self, category: &str, price: f64, at: DateTime<Utc>) {
        self.category = Some(category.to_string());
        self.price = Some(price);
        self.first_seen = Some(earliest(self.first_seen, at));
        self.last_event_at = Some(latest(self.last_event_at, at));
    }
}

impl CategoryState {
    /// Counts one action on an item of this category.
    pub fn apply(&mut self, action: Action) {
        match action {
            Action::View => self.views = self.views.saturating_add(1),
            Action::AddToCart => self.carts = self.carts.saturating_add(1),
            Action::Purchase => self.purchases = self.purchases.saturating_add(1),
        }
    }
}

/// Counts one in `category`, unless the map already holds [`MAX_CATEGORIES_PER_USER`] others:
/// a user's state stays bounded however many categories the shop has.
fn count_in(counts: &mut BTreeMap<String, u64>, category: &str) {
    let known = counts.contains_key(category);
    if known || counts.len() < MAX_CATEGORIES_PER_USER {
        let count = counts.entry(category.to_string()).or_insert(0);
        *count = count.saturating_add(1);
    }
}

fn latest(known: Option<DateTime<Utc>>, at: DateTime<Utc>) -> DateTime<Utc> {
    known.map_or(at, |known| known.max(at))
}

fn earliest(known: Option<DateTime<Utc>>, at: DateTime<Utc>) -> DateTime<Utc> {
    known.map_or(at, |known| known.min(at))
}

/// The EWMA mean and variance of each feature over the examples featurize published for one
/// model from one partition: an online standard scaler that follows drifting features (see
/// [`freshet::stats::ewma`]), kept in FEATURES under [`scaling_key`].
///
/// One state per partition, because each partition's examples are folded in stream order by
/// the one replica that owns the partition: the state is written by one writer, never contended,
/// and its `applied` marks make every example count once across redeliveries. A reader wanting
/// one scale per model combines the partitions with [`ScalingState::combine`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingState {
    pub ewma: EwmaVector,
    pub applied: Applied,
}

impl Default for ScalingState {
    fn default() -> ScalingState {
        ScalingState {
            ewma: fresh_ewma(Decay::default()),
            applied: Applied::default(),
        }
    }
}

fn fresh_ewma(decay: Decay) -> EwmaVector {
    EwmaVector::new(decay, FEATURE_NAMES)
        .expect("FEATURE_NAMES are distinct (checked by a unit test)")
}

impl ScalingState {
    /// Folds in one example's features with the decay β = `decay`. A state kept for another
    /// feature list (an earlier schema) starts afresh: its moments describe features that no
    /// longer exist. A state kept with another β keeps its moments and weighs on with `decay`.
    pub fn observe(&mut self, features: &[f32], decay: Decay) -> Result<(), EwmaError> {
        if !self.ewma.names().eq(FEATURE_NAMES) {
            self.ewma = fresh_ewma(decay);
        } else if self.ewma.decay() != decay {
            self.ewma.set_decay(decay);
        }
        let values: Vec<f64> = features.iter().map(|&x| f64::from(x)).collect();
        self.ewma.update(&values)
    }

    /// The (mean, standard deviation) of each feature over every partition's state, weighing
    /// the partitions that have seen an example equally (the mixture of their moments); `None`
    /// for a feature no partition has seen.
    pub fn combine<'a>(
        parts: impl IntoIterator<Item = &'a ScalingState>,
    ) -> Vec<Option<(f64, f64)>> {
        let parts: Vec<&ScalingState> = parts.into_iter().collect();
        FEATURE_NAMES
            .iter()
            .map(|name| {
                let seen: Vec<(f64, f64)> = parts
                    .iter()
                    .filter_map(|part| {
                        let moments = part.ewma.get(name)?;
                        Some((moments.mean()?, moments.variance()?))
                    })
                    .collect();
                if seen.is_empty() {
                    return None;
                }
                let n = seen.len() as f64;
                let mean = seen.iter().map(|(m, _)| m).sum::<f64>() / n;
                let second = seen.iter().map(|(m, v)| v + m * m).sum::<f64>() / n;
                Some((mean, (second - mean * mean).max(0.0).sqrt()))
            })
            .collect()
    }
}

/// The purchase rate (purchases per view) assumed with no evidence at all: about what a
/// bookshop sees. A category starts there, a new item at its category's rate and a new user
/// there too.
pub const PRIOR_PURCHASE_RATE: f64 = 0.1;
/// The add-to-cart rate (add-to-carts per view) assumed with no evidence, in the same way.
pub const PRIOR_CART_RATE: f64 = 0.2;
/// How many observations a prior is worth.
const PRIOR_WEIGHT: f64 = 4.0;

/// A rate shrunk towards `prior` (additive smoothing): defined and sensible for brand-new
/// entities, and dominated by the entity's own counts once it has a few. Trials are never
/// counted fewer than hits (counts of different actions can disagree after a state was capped or
/// an action refused), so a rate stays within [0, 1] for a prior within it.
fn smoothed_rate(hits: f64, trials: f64, prior: f64) -> f64 {
    (hits + PRIOR_WEIGHT * prior) / (trials.max(hits) + PRIOR_WEIGHT)
}

/// The number of a per-category map, 0 for a category not in it (or no category).
fn in_category(counts: &BTreeMap<String, u64>, category: Option<&String>) -> f64 {
    category
        .and_then(|c| counts.get(c))
        .map_or(0.0, |&n| n as f64)
}

/// Every action counted in a state, as a float (a sum of three u64s can overflow one).
fn actions(views: u64, carts: u64, purchases: u64) -> f64 {
    views as f64 + carts as f64 + purchases as f64
}

fn log1p(count: f64) -> f32 {
    count.max(0.0).ln_1p() as f32
}

/// ln(1 + minutes from `since` to `now`), clamped to [0, 30 days]; 30 days when never seen.
fn log_idle_minutes(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> f32 {
    let minutes = since.map_or(MAX_IDLE_MINUTES, |since| {
        let ms = now.signed_duration_since(since).num_milliseconds();
        (ms as f64 / 60_000.0).clamp(0.0, MAX_IDLE_MINUTES)
    });
    log1p(minutes)
}

/// The (actions, purchases) of an item over the `span` windows ending at the end of `now`'s
/// window. Windows already evicted (only possible for a `now` well before the item's latest
/// event) count as empty, so the answer is always defined.
fn popularity(item: &ItemState, now: DateTime<Utc>, span: u32) -> (f64, f64) {
    item.popularity
        .as_ref()
        .map_or((0.0, 0.0), |windows| windows.span_totals(now, span))
}

/// Minutes of event time that the `span` windows ending at the end of `now`'s window have
/// covered by `now` since the item was first seen, at least one: what a count over them is a
/// count of. The current window has only partly elapsed, and a span that began before the item
/// was listed has seen it for less, so a count divided by this is a rate per minute whatever the
/// second of the minute or the item's age (one minute at least keeps the first seconds' rate
/// from dividing by almost nothing).
fn covered_minutes(item: &ItemState, now: DateTime<Utc>, span: u32) -> f64 {
    let size = i64::try_from(POPULARITY_WINDOW.as_millis()).unwrap_or(60_000);
    let full = size.saturating_mul(i64::from(span));
    let t = now.timestamp_millis();
    let end = t.div_euclid(size).saturating_mul(size).saturating_add(size);
    let mut start = end.saturating_sub(full);
    if let Some(first) = item.first_seen {
        start = start.max(first.timestamp_millis());
    }
    let covered = t.saturating_sub(start).clamp(60_000, full.max(60_000));
    covered as f64 / 60_000.0
}

/// The feature vector of a (user, item) pair at time `now`, in [`FEATURE_NAMES`] order, with
/// `category` the state of the item's category (the default for an item without one). Every
/// value is finite and bounded for any state: rates are smoothed, recent counts logged, and time
/// differences clamped.
pub fn feature_vector(
    user: &UserState,
    item: &ItemState,
    category: &CategoryState,
    now: DateTime<Utc>,
) -> Vec<f32> {
    let name = item.category.as_ref();
    let user_views = user.views as f64;
    let user_cart_rate = smoothed_rate(user.carts as f64, user_views, PRIOR_CART_RATE);
    let user_purchase_rate = smoothed_rate(user.purchases as f64, user_views, PRIOR_PURCHASE_RATE);
    let category_views_by_user = in_category(&user.category_views, name);
    let category_views = category.views as f64;
    let category_cart_rate = smoothed_rate(category.carts as f64, category_views, PRIOR_CART_RATE);
    let category_purchase_rate = smoothed_rate(
        category.purchases as f64,
        category_views,
        PRIOR_PURCHASE_RATE,
    );
    // Purchases per action (of any kind), as the popularity windows count them: the category's
    // towards the prior's share of the actions of a visit, the item's towards its category's.
    let category_purchase_share = smoothed_rate(
        category.purchases as f64,
        actions(category.views, category.carts, category.purchases),
        PRIOR_PURCHASE_RATE / (1.0 + PRIOR_CART_RATE + PRIOR_PURCHASE_RATE),
    );
    let item_purchase_share = smoothed_rate(
        item.purchases as f64,
        actions(item.views, item.carts, item.purchases),
        category_purchase_share,
    );
    let (actions_short, purchases_short) = popularity(item, now, SHORT_SPAN);
    let short_minutes = covered_minutes(item, now, SHORT_SPAN);
    let (actions_long, purchases_long) = popularity(item, now, LONG_SPAN);
    let item_views = item.views as f64;
    vec![
        user_cart_rate as f32,
        user_purchase_rate as f32,
        smoothed_rate(category_views_by_user, user_views, 0.5) as f32,
        category_cart_rate as f32,
        category_purchase_rate as f32,
        log_idle_minutes(user.last_event_at, now),
        smoothed_rate(item.carts as f64, item_views, category_cart_rate) as f32,
        smoothed_rate(item.purchases as f64, item_views, category_purchase_rate) as f32,
        log1p(item.price.unwrap_or(0.0)),
        smoothed_rate(purchases_long, actions_long, item_purchase_share) as f32,
        log_idle_minutes(item.last_event_at, now),
        log1p(actions_short / short_minutes),
        log1p(purchases_short / short_minutes),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bookstore_schema_is_a_valid_declaration() {
        // featurize declares it at start; a malformed one would stop featurize instead.
        assert_eq!(freshet::store::declarations::validate(&schema()), Ok(()));
    }

    /// A time `seconds` after a whole minute, so popularity windows start at round offsets.
    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_699_999_980 + seconds, 0).unwrap()
    }

    fn spec() -> WindowSpec {
        popularity_spec(DEFAULT_OUT_OF_ORDERNESS, DEFAULT_ALLOWED_LATENESS).unwrap()
    }

    /// No bound on how far ahead an action may be.
    const UNBOUNDED: DateTime<Utc> = DateTime::<Utc>::MAX_UTC;

    fn index(name: &str) -> usize {
        FEATURE_NAMES.iter().position(|n| *n == name).unwrap()
    }

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-6
    }

    #[test]
    fn the_schema_is_small_and_its_names_distinct() {
        assert!(FEATURE_NAMES.len() <= 16);
        let distinct: std::collections::BTreeSet<_> = FEATURE_NAMES.iter().collect();
        assert_eq!(distinct.len(), FEATURE_NAMES.len());
        assert_eq!(schema().version, 4);
        assert_eq!(ScalingState::default().ewma.len(), FEATURE_NAMES.len());
    }

    #[test]
    fn every_feature_has_a_monitoring_plan_with_a_reason() {
        let schema = schema();
        assert_eq!(schema.monitoring.len(), FEATURE_NAMES.len());
        assert!(schema.monitoring.iter().all(|m| m.reason.len() > 20));
        // Running averages narrow as histories lengthen, and an hour-long rate overlaps itself:
        // not watched as they stand. Prices and idle times are.
        for name in [
            "user_cart_rate",
            "user_purchase_rate",
            "item_cart_rate",
            "item_recent_conversion",
            "category_cart_rate",
        ] {
            assert_eq!(schema.watch(index(name)), Watch::Ignore, "{name}");
        }
        for name in [
            "user_log_idle_minutes",
            "item_log_price",
            "item_log_idle_minutes",
        ] {
            assert_eq!(schema.watch(index(name)), Watch::Value, "{name}");
        }
        let json = serde_json::to_value(&schema).unwrap();
        assert_eq!(json["monitoring"][8]["watch"], "value");
        // A schema written before plans existed still decodes, and watches every value.
        let old: FeatureSchema =
            serde_json::from_str(r#"{"name":"bookstore","version":3,"features":["a","b"]}"#)
                .unwrap();
        assert!(old.monitoring.is_empty());
        assert_eq!(old.watch(1), Watch::Value);
    }

    #[test]
    fn applied_marks_are_per_partition() {
        let mut applied = Applied::default();
        applied.record(1, 10);
        assert!(applied.contains(1, 10) && applied.contains(1, 3));
        assert!(!applied.contains(1, 11) && !applied.contains(2, 3));
        applied.record(1, 5);
        assert!(applied.contains(1, 10), "a mark never moves back");
    }

    #[test]
    fn category_keys_are_valid_kv_keys_and_distinct() {
        assert_eq!(category_key("sci-fi"), "category.sci-fi");
        assert_eq!(
            category_key("Science Fiction"),
            "category.Science_20Fiction"
        );
        assert_eq!(category_key("a_b"), "category.a_5Fb");
        assert_eq!(category_key("é"), "category._C3_A9");
        let names = ["a b", "a_20b", "a_b", "a.b", "a/b", "a b "];
        let keys: std::collections::BTreeSet<String> =
            names.iter().map(|n| category_key(n)).collect();
        assert_eq!(keys.len(), names.len(), "{keys:?}");
        for key in keys {
            let name = key.strip_prefix("category.").unwrap();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{key}"
            );
        }
        let model = ModelName::parse("bookstore").unwrap();
        assert_eq!(scaling_key(&model, 2), "scaling.bookstore.2");
    }

    #[test]
    fn features_of_new_entities_are_defined() {
        let v = feature_vector(
            &UserState::default(),
            &ItemState::default(),
            &CategoryState::default(),
            at(0),
        );
        assert_eq!(v.len(), FEATURE_NAMES.len());
        let idle = (MAX_IDLE_MINUTES.ln_1p()) as f32;
        // An item's recent conversion starts at the prior's purchases per action: 0.1 / 1.3.
        let share = (0.1 / 1.3) as f32;
        assert_eq!(
            v,
            vec![
                0.2, 0.1, 0.5, 0.2, 0.1, idle, 0.2, 0.1, 0.0, share, idle, 0.0, 0.0
            ]
        );
    }

    #[test]
    fn features_follow_the_state() {
        let mut user = UserState::default();
        let mut item = ItemState::default();
        let mut category = CategoryState::default();
        item.apply_new_item("scifi", 19.0, at(0));
        for _ in 0..3 {
            user.apply(Action::View, Some("scifi"), at(10));
            item.apply_action(Action::View, at(10), &spec(), UNBOUNDED)
                .unwrap();
            category.apply(Action::View);
        }
        user.apply(Action::AddToCart, Some("scifi"), at(15));
        item.apply_action(Action::AddToCart, at(15), &spec(), UNBOUNDED)
            .unwrap();
        category.apply(Action::AddToCart);
        user.apply(Action::Purchase, Some("scifi"), at(20));
        item.apply_action(Action::Purchase, at(20), &spec(), UNBOUNDED)
            .unwrap();
        category.apply(Action::Purchase);
        // Elsewhere the user looked at two poems and put one in the cart.
        user.apply(Action::View, Some("poetry"), at(5));
        user.apply(Action::View, Some("poetry"), at(6));
        user.apply(Action::AddToCart, Some("poetry"), at(7));
        // Other items of the category sold well: 16 views, 5 purchases, 3 carts in all.
        for _ in 0..13 {
            category.apply(Action::View);
        }
        for _ in 0..4 {
            category.apply(Action::Purchase);
        }
        for _ in 0..2 {
            category.apply(Action::AddToCart);
        }
        let now = at(7200);
        let v = feature_vector(&user, &item, &category, now);
        let user_cart_rate = (2.0 + 4.0 * 0.2) / (5.0 + 4.0);
        let user_purchase_rate = (1.0 + 4.0 * 0.1) / (5.0 + 4.0);
        assert!(close(v[index("user_cart_rate")], user_cart_rate));
        assert!(close(v[index("user_purchase_rate")], user_purchase_rate));
        assert!(
            close(v[index("user_category_share")], 5.0 / 9.0),
            "(3 + 4·0.5) / (5 + 4)"
        );
        let category_rate = (5.0 + 0.4) / (16.0 + 4.0);
        let category_cart_rate = (3.0 + 0.8) / (16.0 + 4.0);
        assert!(close(v[index("category_purchase_rate")], category_rate));
        assert!(close(v[index("category_cart_rate")], category_cart_rate));
        assert!(
            close(
                v[index("item_purchase_rate")],
                (1.0 + 4.0 * category_rate) / 7.0
            ),
            "the category's rate is the item's prior"
        );
        assert!(close(
            v[index("item_cart_rate")],
            (1.0 + 4.0 * category_cart_rate) / 7.0
        ));
        assert!(close(v[index("item_log_price")], 20f64.ln()));
        let idle = (7180.0f64 / 60.0).ln_1p();
        assert!(
            close(v[index("user_log_idle_minutes")], idle),
            "last seen at 20 s"
        );
        assert!(close(v[index("item_log_idle_minutes")], idle));
        // Two hours later the last hour holds nothing: the recent conversion is the item's own
        // over all time, purchases per action towards its category's.
        let category_share = (5.0 + 4.0 * 0.1 / 1.3) / (24.0 + 4.0);
        let item_share = (1.0 + 4.0 * category_share) / (5.0 + 4.0);
        assert!(close(v[index("item_recent_conversion")], item_share));
        for name in ["item_log_action_rate_5m", "item_log_purchase_rate_5m"] {
            assert_eq!(v[index(name)], 0.0, "{name}");
        }
        // At the time of the purchase, all five actions are recent, and the item has been listed
        // for 20 seconds: counted as a minute.
        let v = feature_vector(&user, &item, &category, at(20));
        assert!(close(v[index("item_log_action_rate_5m")], 6f64.ln()));
        assert!(close(v[index("item_log_purchase_rate_5m")], 2f64.ln()));
        // Four minutes on, the same actions are spread over the four minutes and 20 seconds the
        // span has covered since the listing.
        let v = feature_vector(&user, &item, &category, at(260));
        assert!(close(
            v[index("item_log_action_rate_5m")],
            (5.0f64 / (260.0 / 60.0)).ln_1p()
        ));
        assert!(close(
            v[index("item_recent_conversion")],
            (1.0 + 4.0 * item_share) / (5.0 + 4.0)
        ));
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn no_feature_grows_with_a_history_of_the_same_behaviour() {
        // A user who carts one view in five and buys one in ten, on an item that sells the
        // same, a visit a minute, seen after 100 and after 10,000 visits (at the same phase of
        // the pattern): the features agree within what the prior still weighs after 100.
        let after = |visits: u64| {
            let mut user = UserState::default();
            let mut item = ItemState::default();
            let mut category = CategoryState::default();
            item.apply_new_item("scifi", 19.0, at(0));
            for k in 0..visits {
                let t = at(k as i64 * 60);
                let mut actions = vec![Action::View];
                if k % 5 == 0 {
                    actions.push(Action::AddToCart);
                }
                if k % 10 == 0 {
                    actions.push(Action::Purchase);
                }
                for action in actions {
                    user.apply(action, Some("scifi"), t);
                    let _ = item.apply_action(action, t, &spec(), UNBOUNDED);
                    category.apply(action);
                }
            }
            feature_vector(&user, &item, &category, at(visits as i64 * 60))
        };
        let (young, old) = (after(100), after(10_000));
        for (name, (a, b)) in FEATURE_NAMES.iter().zip(young.iter().zip(&old)) {
            assert!(
                (a - b).abs() < 0.02,
                "{name}: {a} after 100 visits, {b} after 10,000"
            );
        }
    }

    #[test]
    fn a_new_item_starts_at_its_category_rate() {
        let item = ItemState {
            category: Some("poetry".into()),
            ..Default::default()
        };
        let popular = CategoryState {
            views: 100,
            purchases: 50,
            ..Default::default()
        };
        let v = feature_vector(&UserState::default(), &item, &popular, at(0));
        let rate = (50.0 + 0.4) / 104.0;
        assert!(close(v[index("item_purchase_rate")], rate));
        assert!(close(v[index("category_purchase_rate")], rate));
    }

    #[test]
    fn a_viral_item_rises_within_its_first_minute_and_cools_after_an_hour() {
        let mut viral = ItemState::default();
        let mut steady = ItemState::default();
        // The steady seller: 1 view a minute for two hours, a purchase every 10 minutes.
        for minute in 0..120 {
            let action = if minute % 10 == 0 {
                Action::Purchase
            } else {
                Action::View
            };
            steady
                .apply_action(action, at(minute * 60 + 1), &spec(), UNBOUNDED)
                .unwrap();
        }
        // The viral book: 40 views and 10 purchases in the last 30 seconds.
        for k in 0..50 {
            let action = if k % 5 == 0 {
                Action::Purchase
            } else {
                Action::View
            };
            viral
                .apply_action(action, at(119 * 60 + 10 + k / 2), &spec(), UNBOUNDED)
                .unwrap();
        }
        let now = at(119 * 60 + 40);
        let category = CategoryState::default();
        let f = |item: &ItemState| feature_vector(&UserState::default(), item, &category, now);
        let (v, s) = (f(&viral), f(&steady));
        assert!(v[index("item_log_action_rate_5m")] > s[index("item_log_action_rate_5m")]);
        assert!(v[index("item_log_purchase_rate_5m")] > s[index("item_log_purchase_rate_5m")]);
        assert!(
            close(
                s[index("item_log_action_rate_5m")],
                (5.0f64 / (280.0 / 60.0)).ln_1p()
            ),
            "minutes 115–119: five actions in 4 minutes 40 seconds"
        );
        assert!(
            close(v[index("item_log_action_rate_5m")], 50f64.ln_1p()),
            "fifty actions within its first minute"
        );
        assert!(v[index("item_recent_conversion")] > s[index("item_recent_conversion")]);
        // The steady seller's last hour: minutes 60–119, purchases at 60, 70, …, 110; its
        // prior, its purchases per action over all time.
        let steady_share = (12.0 + 4.0 * 0.1 / 1.3) / (120.0 + 4.0);
        assert!(close(
            s[index("item_recent_conversion")],
            (6.0 + 4.0 * steady_share) / (60.0 + 4.0)
        ));
        // An hour and more later, the burst has left both spans: the viral book's recent
        // conversion is its own over all time.
        let later = feature_vector(&UserState::default(), &viral, &category, at(181 * 60));
        let viral_share = (10.0 + 4.0 * 0.1 / 1.3) / (50.0 + 4.0);
        assert!(close(later[index("item_recent_conversion")], viral_share));
    }

    #[test]
    fn an_action_behind_every_window_is_late_and_checking_changes_nothing() {
        let mut item = ItemState::default();
        item.apply_action(Action::View, at(600), &spec(), UNBOUNDED)
            .unwrap();
        let before = item.clone();
        // Watermark 595 s: [540, 600) is final at 660 s, [480, 540) at 600 s, [420, 480) at 540 s.
        assert!(item.check_late(at(560), &spec(), UNBOUNDED).is_ok());
        assert!(item.check_late(at(530), &spec(), UNBOUNDED).is_ok());
        let late = item.check_late(at(470), &spec(), UNBOUNDED).unwrap_err();
        assert!(late.is_late(), "{late}");
        assert_eq!(item, before);
        // Applied anyway (a replay), it is counted but changes no window.
        assert!(
            item.apply_action(Action::View, at(470), &spec(), UNBOUNDED)
                .is_err()
        );
        assert_eq!(item.views, 2);
        let windows = item.popularity.as_ref().unwrap();
        assert_eq!((windows.late_count(), windows.stored_windows()), (1, 1));
        // An item with no windows yet takes anything.
        assert!(
            ItemState::default()
                .check_late(at(-1_000_000), &spec(), UNBOUNDED)
                .is_ok()
        );
    }

    #[test]
    fn an_action_past_the_bound_moves_no_watermark() {
        let mut item = ItemState::default();
        let bound = at(660);
        item.apply_action(Action::View, at(600), &spec(), bound)
            .unwrap();
        let far = at(100 * 365 * 24 * 3600);
        let refused = item.check_late(far, &spec(), bound).unwrap_err();
        assert!(!refused.is_late(), "{refused}");
        // Applied anyway (a replay), it is counted but changes no window and no watermark.
        assert!(
            item.apply_action(Action::View, far, &spec(), bound)
                .is_err()
        );
        let windows = item.popularity.as_ref().unwrap();
        assert_eq!(windows.watermark(), Some(at(595)));
        assert!(item.check_late(at(601), &spec(), bound).is_ok());
    }

    #[test]
    fn queries_before_the_latest_event_still_answer() {
        let mut item = ItemState::default();
        for minute in 0..200 {
            item.apply_action(Action::View, at(minute * 60), &spec(), UNBOUNDED)
                .unwrap();
        }
        // An hour before the latest event, its hour reaches windows already evicted: those
        // count as empty, the rest as kept.
        let v = feature_vector(
            &UserState::default(),
            &item,
            &CategoryState::default(),
            at(150 * 60 + 5),
        );
        assert_eq!(
            popularity(&item, at(150 * 60 + 5), LONG_SPAN),
            (11.0, 0.0),
            "minutes 140–150 kept"
        );
        assert!(close(
            v[index("item_log_action_rate_5m")],
            (5.0f64 / (245.0 / 60.0)).ln_1p()
        ));
    }

    #[test]
    fn extreme_states_still_give_finite_bounded_features() {
        let user = UserState {
            views: u64::MAX,
            carts: u64::MAX,
            purchases: u64::MAX,
            last_event_at: Some(DateTime::<Utc>::MAX_UTC),
            ..Default::default()
        };
        let mut item = ItemState {
            price: Some(1e12),
            first_seen: Some(DateTime::<Utc>::MIN_UTC),
            last_event_at: Some(DateTime::<Utc>::MIN_UTC),
            views: u64::MAX,
            purchases: u64::MAX,
            ..Default::default()
        };
        for t in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, at(0)] {
            let _ = item.apply_action(Action::Purchase, t, &spec(), UNBOUNDED);
        }
        let category = CategoryState {
            views: u64::MAX,
            purchases: u64::MAX,
            ..Default::default()
        };
        for now in [DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC, at(0)] {
            let v = feature_vector(&user, &item, &category, now);
            assert!(v.iter().all(|x| x.is_finite() && x.abs() < 45.0), "{v:?}");
        }
    }

    #[test]
    fn a_user_keeps_a_bounded_number_of_categories() {
        let mut user = UserState::default();
        for i in 0..200 {
            user.apply(Action::View, Some(&format!("c{i}")), at(0));
        }
        assert_eq!(user.category_views.len(), MAX_CATEGORIES_PER_USER);
        assert_eq!(user.views, 200);
    }

    #[test]
    fn refused_actions_are_marked_and_a_bounded_few_remembered() {
        let mut user = UserState::default();
        user.refuse(1, 5);
        user.refuse(1, 5);
        assert!(user.has_refused(1, 5) && user.applied.contains(1, 5));
        assert_eq!(user.refused.len(), 1);
        assert_eq!(
            (user.views, user.last_event_at),
            (0, None),
            "nothing else changes"
        );
        for sequence in 10..40 {
            user.refuse(2, sequence);
        }
        assert_eq!(user.refused.len(), MAX_REFUSED_REMEMBERED);
        assert!(user.has_refused(2, 39) && !user.has_refused(1, 5));
    }

    #[test]
    fn states_of_schema_2_still_decode() {
        let user: UserState = serde_json::from_str(
            r#"{"views":3,"carts":0,"purchases":1,"category_views":{},"last_event_at":null,"applied":{}}"#,
        )
        .unwrap();
        assert_eq!((user.views, user.pending.len()), (3, 0));
        let item: ItemState = serde_json::from_str(
            r#"{"category":"x","price":2.0,"views":1,"carts":0,"purchases":0,"first_seen":null,"applied":{"0":4}}"#,
        )
        .unwrap();
        assert!(item.popularity.is_none() && item.applied.contains(0, 4));
        let mut item = item;
        item.apply_action(Action::View, at(0), &spec(), UNBOUNDED)
            .unwrap();
        let json = serde_json::to_vec(&item).unwrap();
        assert_eq!(serde_json::from_slice::<ItemState>(&json).unwrap(), item);
    }

    #[test]
    fn scaling_follows_the_examples_and_combines_partitions() {
        let mut a = ScalingState::default();
        let mut b = ScalingState::default();
        let row = |x: f32| vec![x; FEATURE_NAMES.len()];
        let beta = Decay::default();
        a.observe(&row(1.0), beta).unwrap();
        b.observe(&row(3.0), beta).unwrap();
        assert!(a.observe(&[1.0], beta).is_err(), "one value per feature");
        let combined = ScalingState::combine([&a, &b]);
        assert_eq!(combined.len(), FEATURE_NAMES.len());
        let (mean, std) = combined[0].unwrap();
        assert!((mean - 2.0).abs() < 1e-12 && (std - 1.0).abs() < 1e-12);
        assert_eq!(ScalingState::combine([&ScalingState::default()])[0], None);
        // A state of an older feature list starts afresh.
        let mut old = ScalingState {
            ewma: EwmaVector::new(Decay::default(), ["a", "b"]).unwrap(),
            applied: Applied::default(),
        };
        old.observe(&row(2.0), beta).unwrap();
        assert_eq!(old.ewma.len(), FEATURE_NAMES.len());
        assert_eq!(old.ewma.get(FEATURE_NAMES[0]).unwrap().count(), 1);
    }

    #[test]
    fn scaling_weighs_by_the_configured_decay() {
        let mean_after = |beta: f64| {
            let beta = Decay::new(beta).unwrap();
            let mut state = ScalingState::default();
            state
                .observe(&vec![1.0; FEATURE_NAMES.len()], beta)
                .unwrap();
            state
                .observe(&vec![3.0; FEATURE_NAMES.len()], beta)
                .unwrap();
            assert_eq!(state.ewma.decay(), beta);
            state.ewma.get(FEATURE_NAMES[0]).unwrap().mean().unwrap()
        };
        // μ = β·μ + (1 − β)·x after a first value of 1.
        assert!((mean_after(0.5) - 2.0).abs() < 1e-12);
        assert!((mean_after(0.95) - 1.1).abs() < 1e-12);
    }
}
