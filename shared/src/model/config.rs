//! What a deployment chooses per model name: the kind, its hyperparameters, the seed and the
//! input scaler ([`ModelConfig`]).

use serde::{Deserialize, Serialize};

use super::error::ModelError;
use super::fm::DEFAULT_FACTORS;
use super::hyper::Hyper;
use super::learner::Arch;
use super::manifest::ModelKind;
use super::mlp::DEFAULT_HIDDEN;
use crate::aggregates::ewma::Decay;

/// Largest accepted MLP width; a bound so a typo cannot allocate gigabytes per row.
pub const MAX_HIDDEN: usize = 4096;

/// Largest accepted number of factorization-machine factors, for the same reason.
pub const MAX_FACTORS: usize = 1024;

/// Everything that defines a model besides its data: what a deployment writes per model name,
/// e.g. in TOML:
///
/// ```toml
/// kind = "factorization_machine"
/// factors = 8
/// seed = 7
/// hyper = { learning_rate = 0.02, optimizer = { type = "adam" } }
/// ```
///
/// Omitted fields take their defaults; unknown fields are rejected, so a misspelt setting is an
/// error rather than silently ignored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The model family. Default `logistic`.
    pub kind: ModelKind,
    /// Learning rate, its decay, L2 penalty and optimizer.
    pub hyper: Hyper,
    /// Hidden ReLU units of an `mlp` (1 to [`MAX_HIDDEN`]). Default 16; other kinds ignore it.
    pub hidden: usize,
    /// Latent factors per feature of a `factorization_machine` (1 to [`MAX_FACTORS`]).
    /// Default 8; other kinds ignore it.
    pub factors: usize,
    /// Seed of the initial parameters of `mlp` and `factorization_machine` (logistic
    /// regression starts at zero). Default 0.
    pub seed: u64,
    /// β of an exponentially weighted input scaler (the same EWMA as featurize's scaling
    /// state), which follows features whose scale drifts; unset, the scaler is Welford's over
    /// every example. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaler_decay: Option<Decay>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Logistic,
            hyper: Hyper::default(),
            hidden: DEFAULT_HIDDEN,
            factors: DEFAULT_FACTORS,
            seed: 0,
            scaler_decay: None,
        }
    }
}

impl ModelConfig {
    /// Rejects invalid hyperparameters, and a width or factor count out of range for the kind
    /// that uses it.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.hyper.validate()?;
        match self.kind {
            ModelKind::Logistic => {}
            ModelKind::Mlp => {
                if !(1..=MAX_HIDDEN).contains(&self.hidden) {
                    return Err(ModelError::InvalidConfig {
                        name: "hidden",
                        value: self.hidden as f64,
                    });
                }
            }
            ModelKind::FactorizationMachine => {
                if !(1..=MAX_FACTORS).contains(&self.factors) {
                    return Err(ModelError::InvalidConfig {
                        name: "factors",
                        value: self.factors as f64,
                    });
                }
            }
        }
        Ok(())
    }

    pub(crate) fn arch(&self) -> Arch {
        match self.kind {
            ModelKind::Logistic => Arch::Logistic,
            ModelKind::Mlp => Arch::Mlp {
                hidden: self.hidden,
            },
            ModelKind::FactorizationMachine => Arch::Fm {
                factors: self.factors,
            },
        }
    }
}
