//! Models that freshet trains incrementally, and the records written beside them.
//!
//! Three kinds of binary classifier, all trained online in burn, one mini-batch at a time, with
//! SGD or Adam under a decaying learning rate, and all scored prequentially (each batch is
//! scored by the model *before* it learns from it):
//!
//! - [`logistic`]: logistic regression;
//! - [`mlp`]: a small multilayer perceptron, for interactions nobody listed;
//! - [`fm`]: a factorization machine, the recommender's model of user × item interactions.
//!
//! [`hyper`] holds the hyperparameters ([`Hyper`]) every kind trains with, and the
//! learning-rate schedule. One API serves every kind: a [`ModelConfig`] per model name (in
//! `config.rs`), a [`Trainer`] (`trainer.rs`) and a [`ModelScorer`] (`scorer.rs`). Underneath,
//! `learner.rs` holds the training step they share and the [`BatchReport`] it measures,
//! [`optim`] the update rules and their state, [`scaler`] the input standardisation, and
//! `artifact/` the self-describing byte format. [`manifest`] describes one stored model version:
//! what it is, which examples it learned, its checksum and its training metrics.
//! Every fallible function here returns [`ModelError`]; none panics on bad input, because
//! inputs arrive from a stream and artifacts from an object store.

mod artifact;
mod config;
mod error;
pub mod fm;
pub mod hyper;
mod init;
mod learner;
pub mod logistic;
pub mod manifest;
pub mod mlp;
pub mod optim;
mod params;
pub mod scaler;
mod scorer;
#[cfg(test)]
mod synthetic;
mod trainer;

pub use artifact::{ARTIFACT_FORMAT_VERSION, sha256_hex};
pub use config::{MAX_FACTORS, MAX_HIDDEN, ModelConfig};
pub use error::ModelError;
pub use fm::DEFAULT_FACTORS;
pub use hyper::Hyper;
pub use learner::{BatchReport, predicts_positive};
pub use manifest::{FeatureSchema, Manifest, ModelKind, SequenceRange, TrainingMetrics};
pub use mlp::DEFAULT_HIDDEN;
pub use optim::Optimizer;
pub use scaler::StandardScaler;
pub use scorer::ModelScorer;
pub use trainer::Trainer;
