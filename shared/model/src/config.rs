//! What a deployment chooses per model name: the kind with its dimensions, the hyperparameters,
//! the seed and the input scaler ([`ModelConfig`]).

use serde::{Deserialize, Serialize};

use super::error::ModelError;
use super::hyper::Hyper;
use super::kind::{Dimensions, ModelKind};
use freshet::stats::ewma::Decay;

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
/// The kind's dimensions are fields of their own beside `kind` (`hidden` for an `mlp`, default
/// 16; `factors` for a `factorization_machine`, default 8), and a dimension the kind does not
/// have is ignored. Omitted fields take their defaults; unknown fields are rejected, so a
/// misspelt setting is an error rather than silently ignored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ConfigFields", into = "ConfigFields")]
pub struct ModelConfig {
    /// The model family and its dimensions. Default `logistic`.
    pub kind: ModelKind,
    /// Learning rate, its decay, L2 penalty and optimizer.
    pub hyper: Hyper,
    /// Seed of the initial parameters of `mlp` and `factorization_machine` (logistic
    /// regression starts at zero). Default 0.
    pub seed: u64,
    /// β of an exponentially weighted input scaler (the same EWMA as featurize's scaling
    /// state), which follows features whose scale drifts; unset, the scaler is Welford's over
    /// every example. Default unset.
    pub scaler_decay: Option<Decay>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Logistic,
            hyper: Hyper::default(),
            seed: 0,
            scaler_decay: None,
        }
    }
}

impl ModelConfig {
    /// Rejects invalid hyperparameters, and a width or factor count out of range.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.hyper.validate()?;
        self.kind.validate()
    }
}

/// A [`ModelConfig`] as it is written: the kind by name, its dimensions as fields beside it.
/// Manifests written before a configuration left out the dimensions its kind does not have
/// wrote both `hidden` and `factors`; they still read.
#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConfigFields {
    kind: String,
    hyper: Hyper,
    #[serde(skip_serializing_if = "Option::is_none")]
    hidden: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    factors: Option<usize>,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scaler_decay: Option<Decay>,
}

impl Default for ConfigFields {
    fn default() -> Self {
        ModelConfig::default().into()
    }
}

impl From<ModelConfig> for ConfigFields {
    fn from(config: ModelConfig) -> ConfigFields {
        let Dimensions { hidden, factors } = config.kind.dimensions();
        ConfigFields {
            kind: config.kind.name().to_string(),
            hyper: config.hyper,
            hidden,
            factors,
            seed: config.seed,
            scaler_decay: config.scaler_decay,
        }
    }
}

impl TryFrom<ConfigFields> for ModelConfig {
    type Error = String;

    fn try_from(fields: ConfigFields) -> Result<ModelConfig, String> {
        let dimensions = Dimensions {
            hidden: fields.hidden,
            factors: fields.factors,
        };
        Ok(ModelConfig {
            kind: fields
                .kind
                .parse::<ModelKind>()?
                .with_dimensions(dimensions),
            hyper: fields.hyper,
            seed: fields.seed,
            scaler_decay: fields.scaler_decay,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{DEFAULT_FACTORS, DEFAULT_HIDDEN, Optimizer};

    #[test]
    fn names_defaults_and_unknown_fields() {
        let config: ModelConfig = toml::from_str(
            "kind = \"factorization_machine\"\nseed = 7\n\
             hyper = { learning_rate = 0.02, optimizer = { type = \"adam\" } }",
        )
        .unwrap();
        assert_eq!(
            config.kind,
            ModelKind::FactorizationMachine {
                factors: DEFAULT_FACTORS
            }
        );
        assert_eq!(config.seed, 7);
        assert_eq!(config.hyper.optimizer, Optimizer::adam());
        assert_eq!(config.hyper.decay, Hyper::default().decay);
        let config: ModelConfig = serde_json::from_str(r#"{"kind":"mlp"}"#).unwrap();
        assert_eq!(
            config.kind,
            ModelKind::Mlp {
                hidden: DEFAULT_HIDDEN
            }
        );
        let config: ModelConfig = serde_json::from_str(r#"{"kind":"mlp","hidden":4}"#).unwrap();
        assert_eq!(config.kind, ModelKind::Mlp { hidden: 4 });
        assert_eq!(
            serde_json::from_str::<ModelConfig>("{}").unwrap(),
            ModelConfig::default()
        );
        assert!(serde_json::from_str::<ModelConfig>(r#"{"hiden":4}"#).is_err());
        assert!(serde_json::from_str::<ModelConfig>(r#"{"kind":"tree"}"#).is_err());

        // Manifests written before the optimizer existed still decode, as SGD.
        let hyper: Hyper =
            serde_json::from_str(r#"{"learning_rate":0.5,"decay":0.0,"l2":0.0}"#).unwrap();
        assert_eq!(hyper.optimizer, Optimizer::Sgd);
    }

    /// A configuration is written with the dimensions its kind has, and the configurations
    /// manifests recorded before (every dimension, whatever the kind) read as the same model.
    #[test]
    fn written_with_its_own_dimensions_and_read_from_the_old_layout() {
        let fm = ModelConfig {
            kind: ModelKind::FactorizationMachine { factors: 4 },
            seed: 3,
            ..ModelConfig::default()
        };
        let json = serde_json::to_value(fm).unwrap();
        assert_eq!(json["kind"], "factorization_machine");
        assert_eq!(json["factors"], 4);
        assert!(json.get("hidden").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<ModelConfig>(json).unwrap(), fm);

        // Written before the step size existed: one step per batch, and the rates of then.
        let then = Hyper {
            learning_rate: 0.1,
            decay: 0.01,
            l2: 1e-4,
            optimizer: Optimizer::Sgd,
            rows_per_step: 0,
        };
        let old = r#"{"kind":"factorization_machine","hyper":{"learning_rate":0.1,
            "decay":0.01,"l2":0.0001,"optimizer":{"type":"sgd"}},"hidden":16,"factors":4,
            "seed":3}"#;
        assert_eq!(
            serde_json::from_str::<ModelConfig>(old).unwrap(),
            ModelConfig { hyper: then, ..fm }
        );
        let old = r#"{"kind":"logistic","hyper":{"learning_rate":0.1,"decay":0.01,
            "l2":0.0001,"optimizer":{"type":"sgd"}},"hidden":16,"factors":8,"seed":0}"#;
        assert_eq!(
            serde_json::from_str::<ModelConfig>(old).unwrap(),
            ModelConfig {
                hyper: then,
                ..ModelConfig::default()
            }
        );
    }
}
