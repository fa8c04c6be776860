//! [`ModelKind`]: which model family, with its dimensions. The one place that knows every kind.
//!
//! A configuration chooses a kind, the learner trains it, an artifact records it and a scorer reads
//! it back, all through this enum: each `match` on it is here, and dispatches to the kind's own
//! file (`logistic.rs`, `mlp.rs`, `fm.rs`, `fourier.rs`) for its shapes, initial parameters and
//! forward passes. Adding a kind is a new file for its mathematics plus a variant and its arms
//! here; a kind with a dimension of a new name also adds that name to [`Dimensions`], to the
//! artifact header (`artifact/mod.rs`), to [`ModelConfig`](super::ModelConfig)'s fields and to
//! train's flags, which write dimensions as separate fields beside the kind's name.

use burn::tensor::Tensor;

use super::error::ModelError;
use super::params::ParamSpec;
use super::{fm, fourier, logistic, mlp};

/// A model family with its dimensions.
///
/// Written as its [`name`](Self::name) (`logistic`, `mlp`, `factorization_machine`, `fourier`)
/// with each
/// dimension under its own name beside it, in configurations, manifests and artifact headers
/// alike; [`from_str`](std::str::FromStr::from_str) reads a name with default dimensions, and
/// [`with_dimensions`](Self::with_dimensions) sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// Logistic regression: one linear unit (`logistic.rs`).
    Logistic,
    /// A one-hidden-layer ReLU perceptron (`mlp.rs`).
    Mlp {
        /// Hidden units (1 to [`MAX_HIDDEN`](super::MAX_HIDDEN)).
        hidden: usize,
    },
    /// A degree-2 factorization machine (`fm.rs`).
    FactorizationMachine {
        /// Latent factors per feature (1 to [`MAX_FACTORS`](super::MAX_FACTORS)).
        factors: usize,
    },
    /// Random Fourier features under a logistic output, for a few features with a non-linear
    /// boundary (`fourier.rs`).
    Fourier {
        /// Cosine features (1 to [`MAX_FOURIER_FEATURES`](super::MAX_FOURIER_FEATURES)), written
        /// under the name `hidden`: they are the model's one hidden layer, of fixed weights.
        hidden: usize,
    },
}

/// A kind's dimensions, each under its own name, as they are written beside the kind's name;
/// `None` where a kind has no such dimension (or a writer left it out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dimensions {
    /// Hidden units of an `mlp`, cosine features of a `fourier` model.
    pub hidden: Option<usize>,
    /// Latent factors per feature of a `factorization_machine`.
    pub factors: Option<usize>,
}

impl ModelKind {
    /// Every kind's name, in the order the help texts list them.
    pub const NAMES: [&'static str; 4] = ["logistic", "mlp", "factorization_machine", "fourier"];

    /// The kind's name in configurations, manifests, artifact headers and flags.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Logistic => "logistic",
            ModelKind::Mlp { .. } => "mlp",
            ModelKind::FactorizationMachine { .. } => "factorization_machine",
            ModelKind::Fourier { .. } => "fourier",
        }
    }

    /// The kind's dimensions, each under its name; the others `None`.
    pub fn dimensions(self) -> Dimensions {
        match self {
            ModelKind::Logistic => Dimensions::default(),
            ModelKind::Mlp { hidden } | ModelKind::Fourier { hidden } => Dimensions {
                hidden: Some(hidden),
                ..Dimensions::default()
            },
            ModelKind::FactorizationMachine { factors } => Dimensions {
                factors: Some(factors),
                ..Dimensions::default()
            },
        }
    }

    /// This kind with each of its dimensions that `dimensions` gives replaced; a dimension this
    /// kind does not have is ignored (one setting of `--hidden` serves whichever kind is chosen).
    pub fn with_dimensions(self, dimensions: Dimensions) -> ModelKind {
        match self {
            ModelKind::Logistic => ModelKind::Logistic,
            ModelKind::Mlp { hidden } => ModelKind::Mlp {
                hidden: dimensions.hidden.unwrap_or(hidden),
            },
            ModelKind::FactorizationMachine { factors } => ModelKind::FactorizationMachine {
                factors: dimensions.factors.unwrap_or(factors),
            },
            ModelKind::Fourier { hidden } => ModelKind::Fourier {
                hidden: dimensions.hidden.unwrap_or(hidden),
            },
        }
    }

    /// The kind called `name` with exactly `dimensions`: every dimension it has given and
    /// non-zero, and no other. What an artifact header must say; anything else means the header
    /// was not written by this encoder.
    pub(crate) fn exactly(name: &str, dimensions: Dimensions) -> Result<ModelKind, String> {
        let kind = name.parse::<ModelKind>()?.with_dimensions(dimensions);
        if kind.dimensions() != dimensions {
            return Err(format!(
                "the dimensions {dimensions:?} are not those of a {name} model"
            ));
        }
        // A zero dimension leaves a parameter tensor empty.
        if kind.specs(1).is_none() {
            return Err(format!(
                "a {name} model cannot have the dimensions {dimensions:?}"
            ));
        }
        Ok(kind)
    }

    /// Rejects a width or factor count out of range.
    pub fn validate(self) -> Result<(), ModelError> {
        let (name, value, max) = match self {
            ModelKind::Logistic => return Ok(()),
            ModelKind::Mlp { hidden } => ("hidden", hidden, mlp::MAX_HIDDEN),
            ModelKind::FactorizationMachine { factors } => ("factors", factors, fm::MAX_FACTORS),
            ModelKind::Fourier { hidden } => ("hidden", hidden, fourier::MAX_FOURIER_FEATURES),
        };
        if (1..=max).contains(&value) {
            Ok(())
        } else {
            Err(ModelError::InvalidConfig {
                name,
                value: value as f64,
            })
        }
    }

    /// The kind in words, for messages: "a logistic regression", "an mlp with 16 hidden units".
    pub fn describe(self) -> String {
        match self {
            ModelKind::Logistic => "a logistic regression".into(),
            ModelKind::Mlp { hidden } => format!("an mlp with {hidden} hidden units"),
            ModelKind::FactorizationMachine { factors } => {
                format!("a factorization machine with {factors} factors")
            }
            ModelKind::Fourier { hidden } => {
                format!("a logistic model over {hidden} random Fourier features")
            }
        }
    }

    /// Trainable parameters of this kind over `n_features` inputs, or `None` when a dimension
    /// is zero or the count overflows.
    pub fn parameter_count(self, n_features: usize) -> Option<usize> {
        Some(self.specs(n_features)?.iter().map(ParamSpec::len).sum())
    }

    /// Parameter tensors in storage order, or `None` when a dimension is zero or the total
    /// size overflows (only possible for dimensions read from a damaged artifact).
    pub(crate) fn specs(self, n_features: usize) -> Option<Vec<ParamSpec>> {
        let specs = match self {
            ModelKind::Logistic => logistic::specs(n_features),
            ModelKind::Mlp { hidden } => mlp::specs(n_features, hidden),
            ModelKind::FactorizationMachine { factors } => fm::specs(n_features, factors),
            ModelKind::Fourier { hidden } => fourier::specs(n_features, hidden),
        };
        let mut total = 0usize;
        for spec in &specs {
            if spec.rows == 0 || spec.cols == 0 {
                return None;
            }
            total = total.checked_add(spec.rows.checked_mul(spec.cols)?)?;
        }
        // Every value must also be addressable as bytes (8 per value for Adam's moments).
        total.checked_mul(16)?;
        Some(specs)
    }

    /// Initial parameters: zeros for logistic regression, seeded draws for the others.
    pub(crate) fn init(self, n_features: usize, seed: u64) -> Vec<Vec<f32>> {
        match self {
            ModelKind::Logistic => logistic::init(n_features),
            ModelKind::Mlp { hidden } => mlp::init(n_features, hidden, seed),
            ModelKind::FactorizationMachine { factors } => fm::init(n_features, factors, seed),
            ModelKind::Fourier { hidden } => fourier::init(n_features, hidden, seed),
        }
    }

    /// Logits `[m, 1]` for inputs `[m, n_features]`, as a burn graph over `params`.
    pub(crate) fn forward(
        self,
        params: &[Tensor<2>],
        x: Tensor<2>,
    ) -> Result<Tensor<2>, ModelError> {
        match self {
            ModelKind::Logistic => logistic::forward(params, x),
            ModelKind::Mlp { .. } => mlp::forward(params, x),
            ModelKind::FactorizationMachine { .. } => fm::forward(params, x),
            ModelKind::Fourier { .. } => fourier::forward(params, x),
        }
    }

    /// The logit of one scaled row, computed on the host in `f32` like the burn graph.
    pub(crate) fn logit(self, params: &[Vec<f32>], x: &[f32]) -> Result<f32, ModelError> {
        match self {
            ModelKind::Logistic => logistic::logit(params, x),
            ModelKind::Mlp { hidden } => mlp::logit(params, hidden, x),
            ModelKind::FactorizationMachine { factors } => fm::logit(params, factors, x),
            ModelKind::Fourier { hidden } => fourier::logit(params, hidden, x),
        }
    }

    /// Adds `dz·∂z/∂θ` of one scaled row to `grads` (shaped as the parameters), where `dz` is
    /// the loss's derivative in the row's logit `z`: the host gradient of a training step.
    pub(crate) fn add_gradient(
        self,
        params: &[Vec<f32>],
        x: &[f32],
        dz: f32,
        grads: &mut [Vec<f32>],
    ) -> Result<(), ModelError> {
        match self {
            ModelKind::Logistic => logistic::add_gradient(params, x, dz, grads),
            ModelKind::Mlp { hidden } => mlp::add_gradient(params, hidden, x, dz, grads),
            ModelKind::FactorizationMachine { factors } => {
                fm::add_gradient(params, factors, x, dz, grads)
            }
            ModelKind::Fourier { hidden } => fourier::add_gradient(params, hidden, x, dz, grads),
        }
    }

    /// A logistic regression's weights (one per feature, in feature order) and bias; `None` for
    /// the other kinds, which have no single weight per feature.
    pub(crate) fn linear_weights(self, params: &[Vec<f32>]) -> Option<(&[f32], f32)> {
        match self {
            ModelKind::Logistic => logistic::weights_and_bias(params),
            ModelKind::Mlp { .. }
            | ModelKind::FactorizationMachine { .. }
            | ModelKind::Fourier { .. } => None,
        }
    }
}

impl std::str::FromStr for ModelKind {
    type Err = String;

    /// Reads a kind by its name, with the default dimensions
    /// ([`DEFAULT_HIDDEN`](super::DEFAULT_HIDDEN), [`DEFAULT_FACTORS`](super::DEFAULT_FACTORS),
    /// [`DEFAULT_FOURIER_FEATURES`](super::DEFAULT_FOURIER_FEATURES)).
    fn from_str(name: &str) -> Result<ModelKind, String> {
        match name {
            "logistic" => Ok(ModelKind::Logistic),
            "mlp" => Ok(ModelKind::Mlp {
                hidden: mlp::DEFAULT_HIDDEN,
            }),
            "factorization_machine" => Ok(ModelKind::FactorizationMachine {
                factors: fm::DEFAULT_FACTORS,
            }),
            "fourier" => Ok(ModelKind::Fourier {
                hidden: fourier::DEFAULT_FOURIER_FEATURES,
            }),
            other => Err(format!(
                "{other:?} is not a model kind: {}",
                ModelKind::NAMES.join(", ")
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::synthetic::SMALL_KINDS as KINDS;

    #[test]
    fn a_kind_is_its_name_and_its_dimensions() {
        for (kind, name) in KINDS.iter().zip(ModelKind::NAMES) {
            assert_eq!(kind.name(), name);
            let named: ModelKind = name.parse().unwrap();
            assert_eq!(named.name(), name);
            assert_eq!(named.with_dimensions(kind.dimensions()), *kind);
            assert_eq!(ModelKind::exactly(name, kind.dimensions()), Ok(*kind));
        }
        assert_eq!(
            "mlp".parse(),
            Ok(ModelKind::Mlp {
                hidden: mlp::DEFAULT_HIDDEN
            })
        );
        assert!("tree".parse::<ModelKind>().unwrap_err().contains("mlp"));
    }

    #[test]
    fn dimensions_set_only_what_the_kind_has() {
        let both = Dimensions {
            hidden: Some(5),
            factors: Some(7),
        };
        assert_eq!(
            KINDS.map(|k| k.with_dimensions(both)),
            [
                ModelKind::Logistic,
                ModelKind::Mlp { hidden: 5 },
                ModelKind::FactorizationMachine { factors: 7 },
                ModelKind::Fourier { hidden: 5 },
            ]
        );
        assert_eq!(
            KINDS.map(|k| k.with_dimensions(Dimensions::default())),
            KINDS
        );
        // An artifact header must give exactly the kind's dimensions, none zero.
        for (name, dimensions) in [
            ("logistic", both),
            ("mlp", Dimensions::default()),
            ("mlp", both),
            (
                "mlp",
                Dimensions {
                    hidden: Some(0),
                    factors: None,
                },
            ),
            ("factorization_machine", Dimensions::default()),
            ("tree", Dimensions::default()),
        ] {
            assert!(
                ModelKind::exactly(name, dimensions).is_err(),
                "{name} {dimensions:?}"
            );
        }
    }

    #[test]
    fn counts_and_validation() {
        assert_eq!(ModelKind::Logistic.parameter_count(16), Some(17));
        assert_eq!(
            ModelKind::Mlp { hidden: 64 }.parameter_count(16),
            Some(16 * 64 + 2 * 64 + 1)
        );
        assert_eq!(
            ModelKind::FactorizationMachine { factors: 8 }.parameter_count(16),
            Some(16 * 9 + 1)
        );
        assert_eq!(
            ModelKind::Fourier { hidden: 256 }.parameter_count(2),
            Some(2 * 256 + 256 + 256 + 1)
        );
        assert_eq!(ModelKind::Mlp { hidden: 0 }.parameter_count(16), None);
        for kind in KINDS {
            kind.validate().unwrap();
        }
        for (kind, name) in [
            (ModelKind::Mlp { hidden: 0 }, "hidden"),
            (
                ModelKind::Mlp {
                    hidden: mlp::MAX_HIDDEN + 1,
                },
                "hidden",
            ),
            (ModelKind::FactorizationMachine { factors: 0 }, "factors"),
            (ModelKind::Fourier { hidden: 0 }, "hidden"),
        ] {
            assert!(
                matches!(kind.validate(), Err(ModelError::InvalidConfig { name: n, .. }) if n == name)
            );
        }
    }
}
