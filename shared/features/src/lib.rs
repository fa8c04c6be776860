//! freshet's features: what featurize computes from events and predict computes again at request
//! time, so a model is served exactly the features it learned from. It links no model code:
//! featurize, which uses it, compiles neither burn nor object_store.
//!
//! - [`aggregates`]: the streaming per-entity aggregates features are built from (event-time
//!   windows of count, sum and mean; the EWMA is with the contract, in `freshet::stats`), pure
//!   state machines that any feature definition can use;
//! - [`bookstore`]: the bookstore example's features: its entity states (user, item, category),
//!   its feature vector and schema, and how drift monitors each feature;
//! - [`applied`]: the per-partition applied marks that make every entity state count an event
//!   once;
//! - [`spec`]: declarative features: a TOML spec per model (events, entities, features,
//!   label, monitoring) and the engine that runs any spec on the same aggregates;
//! - [`labels`]: the per-partition index of views waiting for their label and the health of the
//!   labels featurize publishes, read back by `freshet status` and `freshet view`.
//!
//! `aggregates`, `applied` and `spec` use nothing of `bookstore` (a test in
//! `shared/core/src/layers.rs` checks it), so any domain's features run on the same aggregates
//! without the bookstore's code.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod aggregates;
pub mod applied;
pub mod bookstore;
pub mod labels;
pub mod spec;

#[cfg(test)]
mod properties;
