//! freshet's models: those it trains incrementally, the records written beside them, and where
//! they are stored. The functions that train, watch or serve a model (train, drift, predict) and
//! the CLI use this crate; featurize does not, so it compiles neither burn nor object_store.
//!
//! Four kinds of binary classifier, all trained online, each batch in steps of a few rows (one by
//! default), with SGD or Adam, and all scored prequentially (each row is scored by the model
//! *before* the step that learns from it): logistic regression, a small multilayer perceptron (for
//! interactions nobody listed), a factorization machine (the recommender's model of user × item
//! interactions), and a logistic output over random Fourier features (a kernel machine for a few
//! features with a non-linear boundary). One API serves every kind: a [`ModelConfig`] per model
//! name, a [`Trainer`] and a [`ModelScorer`]; a [`Manifest`] describes one stored version. Every
//! fallible function here returns [`ModelError`]; none panics on bad input, because inputs arrive
//! from a stream and artifacts from an object store.
//!
//! The files, each using only those above it (no file imports one below it):
//!
//! - `error.rs` ([`ModelError`]), `init.rs` (seeded initial values), `params.rs` (the shape of
//!   a parameter tensor, shared by every kind);
//! - [`optim`]: the update rules and their state; [`scaler`]: the input standardisation;
//!   [`hyper`]: the hyperparameters ([`Hyper`]) and the learning-rate schedule;
//! - [`logistic`], [`mlp`], [`fm`], [`fourier`]: each kind's mathematics (shapes, initial
//!   parameters, the burn and host forward passes);
//! - `kind.rs`: [`ModelKind`], the kind with its dimensions, which dispatches to those files:
//!   the one place that lists every kind;
//! - `learner.rs`: the training step every kind shares, the host scoring, and the
//!   [`BatchReport`] a step measures;
//! - `artifact/`: the self-describing byte format (`frame.rs` the envelope and checksum,
//!   `mod.rs` the current formats, `format2.rs` the first one, still read);
//! - `config.rs` ([`ModelConfig`]), `scorer.rs` ([`ModelScorer`]), `trainer.rs` ([`Trainer`]);
//! - [`manifest`]: what is recorded beside each stored version: its configuration, the examples
//!   it learned, its checksum and its training metrics;
//! - [`store`]: the versions in object storage (opened from [`store::ArtifactArgs`]), the model
//!   pointers in JetStream KV, and the follower that keeps a pointer's version loaded.
//!
//! A test in the contract crate (`shared/core/src/layers.rs`) checks that order.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod artifact;
mod config;
mod error;
pub mod fm;
pub mod fourier;
pub mod hyper;
mod init;
mod kind;
mod learner;
pub mod logistic;
pub mod manifest;
pub mod mlp;
pub mod optim;
mod params;
pub mod scaler;
mod scorer;
pub mod store;
#[cfg(test)]
mod synthetic;
mod trainer;

pub use artifact::{ARTIFACT_FORMAT_VERSION, sha256_hex};
pub use config::ModelConfig;
pub use error::ModelError;
pub use fm::{DEFAULT_FACTORS, MAX_FACTORS};
pub use fourier::{DEFAULT_FOURIER_FEATURES, MAX_FOURIER_FEATURES};
/// The type of [`Manifest::schema`], defined with the examples that follow it.
pub use freshet::examples::FeatureSchema;
pub use hyper::{DEFAULT_LEARNING_RATE, DEFAULT_ROWS_PER_STEP, Hyper};
pub use kind::{Dimensions, ModelKind};
pub use learner::{BatchReport, predicts_positive};
pub use manifest::{Manifest, SequenceRange, TrainingMetrics};
pub use mlp::{DEFAULT_HIDDEN, MAX_HIDDEN};
pub use optim::Optimizer;
pub use scaler::StandardScaler;
pub use scorer::ModelScorer;
pub use trainer::Trainer;
