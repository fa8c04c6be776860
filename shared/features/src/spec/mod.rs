//! Declarative features: a TOML spec per model, and the engine that runs it on any domain's
//! events. The bookstore's hand-written features ([`crate::bookstore`]) are one such spec
//! (`infra/features/bookstore.toml`); `infra/features/fraud.toml` and `sensors.toml` are two more.
//!
//! # The spec
//!
//! ```toml
//! [schema]
//! name = "fraud"             # the schema name manifests carry
//! version = 1                # bumped whenever a feature's meaning changes
//! fingerprint = "…"          # of the features; `freshet features check` prints it
//!
//! [events.transaction.fields]          # an event type (the CloudEvent `type`) and its fields
//! card = { path = "card", type = "string" }          # data.card, required
//! amount = { path = "amount", type = "number" }      # finite, within ±1e12
//! note = { path = "meta.note", type = "string", optional = true }
//! [events.chargeback.fields]
//! txn = { path = "transaction", type = "string" }
//! merchant = { lookup = "transaction.merchant" }     # kept by entity `transaction`
//!
//! [entities.card]                      # state kept in FEATURES, keyed by fields
//! key = ["card"]                       # each event of `events` must carry them
//! events = ["transaction"]             # the event types that update it
//! keep = ["merchant"]                  # string fields kept for other events' lookups
//!
//! [windows.minute]                     # event-time windows (see crate::aggregates::window)
//! size = "1m"                          # slide = size (tumbling) unless `slide` is given
//! history = 60                         # windows a feature may sum (its `span`)
//! out_of_orderness = "5s"
//! allowed_lateness = "1m"
//!
//! [[feature]]                          # the features, in vector order
//! name = "card_txn_1h"
//! kind = "count"
//! entity = "card"
//! window = "minute"
//! span = 60
//! transform = ["log1p"]
//! watch = "value"                      # how drift watches it: value | log1p | ignore
//! reason = "…why…"                     # required for every emitted feature
//!
//! [label]
//! example = { event = "transaction" }                 # events that make examples
//! positive = { event = "chargeback" }                 # a later event that makes one positive
//! match = ["txn"]                                     # fields both carry, equal values
//! horizon = "30d"
//! feedback = "fnw"                                    # fnw | wait
//! ```
//!
//! # The vocabulary
//!
//! An aggregate reads the state of `entity`, keyed by the example event's fields of the same
//! names as the entity's key: a user's event reads the item's state through its `item` field,
//! which is how one entity's features join another's. `on` narrows the event types counted (by
//! default every type updating the entity), `where = { field = "v" }` or `{ field = ["v", "w"] }`
//! the events by string fields. `default` (0 unless given) is the value when the aggregate has
//! seen nothing.
//!
//! | kind | value | keys |
//! | --- | --- | --- |
//! | `count` | events counted | `window` + `span` optional |
//! | `sum`, `mean`, `std` | of a number `field` (`std` the population deviation) | `window` + `span` optional; a windowed mean or std takes no `where` |
//! | `min`, `max`, `last` | of a number `field`, over all time | |
//! | `distinct` | distinct values of a string `field`, at most `max` (≤ 256) kept | |
//! | `is_new` | 1 if the example's `field` is not among those `max` kept values, else 0 | |
//! | `since_last`, `since_first` | time from the entity's latest (earliest) event to now, in `unit` (ms, s, m, h, d; s by default), never negative | |
//! | `ewma_mean`, `ewma_std` | EWMA of a number `field` with β = `decay` ([`freshet::stats::ewma`]) | |
//! | `zscore` | (example's `field` − μ) / σ under that EWMA | |
//! | `delta` | the example's `field` minus the entity's last value of it | |
//! | `decayed_count`, `decayed_sum` | a count (sum of `field`) halving every `half_life` of event time | |
//! | `value` | a number `field` of the example event itself | |
//! | `window_elapsed` | time from the start of the `span` windows ending at the end of now's slide to now, in `unit`: the part of a recent span that has elapsed, to make a windowed count a rate | `window`, `span`, `unit` |
//! | `ratio`, `difference` | `of = ["a", "b"]`: a / b (`default` when b = 0), a − b | |
//! | `least`, `greatest` | `of = ["a", "b", ...]`: the smallest, the largest | |
//! | `rate` | (hits + weight · prior) / (max(trials, hits) + weight): a rate smoothed towards `prior`, a number or a feature (a group's rate: a category's rate as a new item's prior) | `hits`, `trials`, `prior`, `weight` |
//!
//! Windowed aggregates use [`crate::aggregates::EventTimeWindows`] with the window's watermark
//! and allowed lateness: every event of `on` enters the windows (so each moves the watermark
//! alike), adding its amount when `where` matches and 0 when not; a late event changes no
//! window. The value is the sum of the `span` windows ending at the end of now's slide.
//!
//! Transforms, applied in order: `log1p` (ln(1 + max(x, 0))), `clamp(LO, HI)`, `exp_decay(TAU)`
//! (exp(−max(x, 0)/τ), "newness" of an age), `scale(K)`. A feature with `emit = false` is not in
//! the vector (and not monitored): it feeds others, e.g. the raw counts of a rate. Every value a
//! model sees is finite: NaN becomes 0 and values are clamped to ±1e12.
//!
//! # The fingerprint
//!
//! [`Plan::fingerprint`] hashes everything that decides feature values (fields and their paths
//! and types, entities, windows, features in vector order, the label), not the monitoring, the
//! comments or the layout. The spec pins it under `[schema]`: a spec whose features no longer
//! give the pinned fingerprint is refused, naming the version to bump and the fingerprint to pin.
//! An edit that changes features therefore cannot pass `freshet features check` without touching
//! the line beside `version`; the manifest will carry the fingerprint too, so that predict
//! refuses a model whose schema has the same version but another fingerprint.
//!
//! # How featurize and predict call it
//!
//! featurize, per event at `position` (its partition and stream sequence):
//! 1. [`Engine::read`] the CloudEvent ([`EventRef`]): `Ok(None)` for a type the spec does not
//!    read; [`EventError`] names the field path for the dead letter;
//! 2. fetch the states of [`Engine::lookup_keys`] and [`Engine::resolve`] looked-up fields;
//! 3. fetch the states of [`Engine::state_keys`] (in one batch with the other events'), and
//!    dead-letter the event as late if [`Engine::check_late`] says so (bounded by the time the
//!    event was stored plus the clock skew allowed, as today);
//! 4. if [`Engine::example_match`] says the event makes an example, [`Engine::features`] at its
//!    event time, before the event is applied, and hand the example to labelling ([`Engine::label`]
//!    gives horizon and feedback mode; [`Engine::positive_match`] finds what a later event labels);
//! 5. [`Engine::updates`], each applied with [`Engine::apply_update`] (which skips a position the
//!    state has already applied, so redeliveries count once, and can be replayed on a fresher
//!    state after a lost compare-and-set), and [`EntityState::encode`] into FEATURES.
//!
//! predict builds the same [`ReadEvent`] from the request's entity ids and whatever fields it
//! has ([`Engine::read_request`] on the request's `data`: a missing field is absent, not an
//! error), runs steps 2–4 with the clock as now, and so computes exactly the features featurize
//! published, from the same states and the same spec.

pub mod compile;
pub mod engine;
pub mod plan;
mod raw;
pub mod state;

pub use compile::{Problem, SpecErrors, compile, compile_unpinned};
pub use engine::{Engine, EventError, EventRef, Position, ReadEvent, States, Update, Value};
pub use plan::Plan;
pub use state::{EntityState, SlotState};

#[cfg(test)]
mod tests;
