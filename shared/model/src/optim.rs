//! The update rules a model can train with, and the state they carry between batches.
//!
//! Both rules take the step `p ← p − η_t·d` with the rate `η_t = η0 / (1 + α·t)`, which
//! [`Hyper::learning_rate_at`](super::Hyper::learning_rate_at) in `hyper.rs` computes (change the
//! schedule there); they differ in the direction `d`: the gradient itself (SGD), or
//! Adam's bias-corrected ratio of running gradient moments (Kingma & Ba, 2015). The update is
//! computed here, on host vectors, rather than by burn's optimizers, for two reasons: the state
//! is then plain numbers that the artifact stores bit for bit (so a trainer restored from bytes
//! continues exactly as the one that wrote them), and a rejected update is simply never
//! committed.

use serde::{Deserialize, Serialize};

use super::error::ModelError;

/// Which update rule training uses. Written in configuration as `{ type = "sgd" }` or
/// `{ type = "adam", beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 }` (omitted Adam fields take
/// those defaults).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Optimizer {
    /// Plain stochastic gradient descent: no state beyond the step counter.
    #[default]
    Sgd,
    /// Adam: per-parameter first and second gradient moments, bias-corrected.
    Adam {
        /// Decay of the first moment (mean gradient), in [0, 1). Default 0.9.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Decay of the second moment (mean squared gradient), in [0, 1). Default 0.999.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Added to the root of the second moment so a parameter that never saw a gradient
        /// does not divide by zero (> 0). Default 1e-8.
        #[serde(default = "default_epsilon")]
        epsilon: f64,
    },
}

fn default_beta1() -> f64 {
    0.9
}

fn default_beta2() -> f64 {
    0.999
}

fn default_epsilon() -> f64 {
    1e-8
}

impl std::str::FromStr for Optimizer {
    type Err = String;

    /// Reads `sgd`, or `adam` with its default moments' decays and epsilon.
    fn from_str(text: &str) -> Result<Optimizer, String> {
        match text {
            "sgd" => Ok(Optimizer::Sgd),
            "adam" => Ok(Optimizer::adam()),
            other => Err(format!("{other:?} is not an optimizer: sgd or adam")),
        }
    }
}

impl Optimizer {
    /// Adam with the usual defaults (β1 0.9, β2 0.999, ε 1e-8).
    pub fn adam() -> Optimizer {
        Optimizer::Adam {
            beta1: default_beta1(),
            beta2: default_beta2(),
            epsilon: default_epsilon(),
        }
    }

    /// Rejects moment decays outside [0, 1) and a non-positive or non-finite ε.
    pub fn validate(&self) -> Result<(), ModelError> {
        let Optimizer::Adam {
            beta1,
            beta2,
            epsilon,
        } = *self
        else {
            return Ok(());
        };
        for (name, beta) in [("beta1", beta1), ("beta2", beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(ModelError::InvalidConfig { name, value: beta });
            }
        }
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(ModelError::InvalidConfig {
                name: "epsilon",
                value: epsilon,
            });
        }
        Ok(())
    }
}

/// What an optimizer remembers between updates, per parameter tensor in model order.
///
/// Adam's moments are kept in `f64`: they are sums of many small terms, and the parameters they
/// move are rounded to `f32` only at the end of each update.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OptimizerState {
    /// SGD needs nothing.
    Sgd,
    /// Adam's updates taken so far (for bias correction) and its two moments.
    Adam {
        steps: u64,
        m: Vec<Vec<f64>>,
        v: Vec<Vec<f64>>,
    },
}

impl OptimizerState {
    /// The state before any update, for parameter tensors of the given sizes.
    pub(crate) fn fresh(optimizer: &Optimizer, sizes: &[usize]) -> OptimizerState {
        match optimizer {
            Optimizer::Sgd => OptimizerState::Sgd,
            Optimizer::Adam { .. } => OptimizerState::Adam {
                steps: 0,
                m: sizes.iter().map(|n| vec![0.0; *n]).collect(),
                v: sizes.iter().map(|n| vec![0.0; *n]).collect(),
            },
        }
    }

    /// The state a restored trainer continues with when its configuration names `optimizer`:
    /// kept if it is already that rule's state, otherwise started afresh (an SGD lineage that
    /// switches to Adam begins with zero moments; Adam's moments are dropped on a switch to SGD).
    pub(crate) fn continue_as(self, optimizer: &Optimizer, sizes: &[usize]) -> OptimizerState {
        match (optimizer, self) {
            (Optimizer::Adam { .. }, state @ OptimizerState::Adam { .. }) => state,
            (optimizer, _) => OptimizerState::fresh(optimizer, sizes),
        }
    }

    /// Adam's update count, `None` for SGD.
    #[cfg(test)]
    pub(crate) fn adam_steps(&self) -> Option<u64> {
        match self {
            OptimizerState::Sgd => None,
            OptimizerState::Adam { steps, .. } => Some(*steps),
        }
    }

    /// One update with learning rate `learning_rate`, in place: `params` and this state become
    /// the updated ones.
    ///
    /// Any non-finite parameter or moment is reported with [`ModelError::NonFinite`]; by then
    /// the values may be partly updated, so a caller works on a copy it commits only on success
    /// (the learner steps a copy of the model through a whole batch).
    pub(crate) fn apply(
        &mut self,
        optimizer: &Optimizer,
        learning_rate: f64,
        params: &mut [Vec<f32>],
        grads: &[Vec<f32>],
    ) -> Result<(), ModelError> {
        let fits = params.len() == grads.len()
            && params.iter().zip(grads).all(|(p, g)| p.len() == g.len());
        if !fits {
            return Err(ModelError::Backend(
                "gradients do not match the parameters".into(),
            ));
        }
        let mut finite = true;
        match *optimizer {
            Optimizer::Sgd => {
                for (p, g) in params.iter_mut().zip(grads) {
                    for (p, g) in p.iter_mut().zip(g) {
                        *p = (f64::from(*p) - learning_rate * f64::from(*g)) as f32;
                        finite &= p.is_finite();
                    }
                }
                *self = OptimizerState::Sgd;
            }
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                let moments_fit = |moments: &[Vec<f64>]| {
                    moments.len() == params.len()
                        && moments
                            .iter()
                            .zip(params.iter())
                            .all(|(m, p)| m.len() == p.len())
                };
                match self {
                    OptimizerState::Adam { m, v, .. } if moments_fit(m) && moments_fit(v) => {}
                    OptimizerState::Adam { steps, .. } if *steps > 0 => {
                        return Err(ModelError::Backend(
                            "Adam moments do not match the parameters".into(),
                        ));
                    }
                    _ => {
                        let sizes: Vec<usize> = params.iter().map(Vec::len).collect();
                        *self = OptimizerState::fresh(optimizer, &sizes);
                    }
                }
                let OptimizerState::Adam { steps, m, v } = self else {
                    return Err(ModelError::Backend("Adam has no moments".into()));
                };
                *steps = steps.saturating_add(1);
                // Past 2^31 updates β^t is 0 in f64 anyway, so saturating the exponent is exact.
                let exponent = i32::try_from(*steps).unwrap_or(i32::MAX);
                let correction1 = 1.0 - beta1.powi(exponent);
                let correction2 = 1.0 - beta2.powi(exponent);
                for (((p, g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
                    for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                    {
                        let g = f64::from(*g);
                        *m = beta1 * *m + (1.0 - beta1) * g;
                        *v = beta2 * *v + (1.0 - beta2) * g * g;
                        if !(m.is_finite() && v.is_finite()) {
                            return Err(ModelError::NonFinite {
                                what: "optimizer moments".into(),
                            });
                        }
                        let direction = (*m / correction1) / ((*v / correction2).sqrt() + epsilon);
                        *p = (f64::from(*p) - learning_rate * direction) as f32;
                        finite &= p.is_finite();
                    }
                }
            }
        }
        if !finite {
            return Err(ModelError::NonFinite {
                what: "updated weights".into(),
            });
        }
        Ok(())
    }

    /// [`apply`](Self::apply) on copies: the parameters and state after one update.
    #[cfg(test)]
    pub(crate) fn step(
        &self,
        optimizer: &Optimizer,
        learning_rate: f64,
        params: &[Vec<f32>],
        grads: &[Vec<f32>],
    ) -> Result<(Vec<Vec<f32>>, OptimizerState), ModelError> {
        let (mut params, mut state) = (params.to_vec(), self.clone());
        state.apply(optimizer, learning_rate, &mut params, grads)?;
        Ok((params, state))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_and_defaults() {
        assert_eq!(
            serde_json::to_string(&Optimizer::Sgd).unwrap(),
            r#"{"type":"sgd"}"#
        );
        let adam: Optimizer = serde_json::from_str(r#"{"type":"adam"}"#).unwrap();
        assert_eq!(adam, Optimizer::adam());
        let adam: Optimizer = toml::from_str("type = \"adam\"\nbeta1 = 0.8").unwrap();
        assert_eq!(
            adam,
            Optimizer::Adam {
                beta1: 0.8,
                beta2: 0.999,
                epsilon: 1e-8
            }
        );
        assert!(serde_json::from_str::<Optimizer>(r#"{"type":"lbfgs"}"#).is_err());
    }

    #[test]
    fn rejects_out_of_range_settings() {
        assert!(Optimizer::adam().validate().is_ok());
        for (beta1, beta2, epsilon, name) in [
            (1.0, 0.999, 1e-8, "beta1"),
            (-0.1, 0.999, 1e-8, "beta1"),
            (0.9, f64::NAN, 1e-8, "beta2"),
            (0.9, 0.999, 0.0, "epsilon"),
        ] {
            let err = Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            }
            .validate()
            .unwrap_err();
            assert!(
                matches!(err, ModelError::InvalidConfig { name: n, .. } if n == name),
                "{err:?}"
            );
        }
    }

    #[test]
    fn adam_first_step_moves_each_parameter_by_the_learning_rate() {
        // After one update m̂ = g and v̂ = g², so the step is η·g/(|g| + ε) ≈ ±η whatever |g|.
        let state = OptimizerState::fresh(&Optimizer::adam(), &[3]);
        let (params, state) = state
            .step(
                &Optimizer::adam(),
                0.01,
                &[vec![1.0, 1.0, 1.0]],
                &[vec![100.0, -1e-3, 0.0]],
            )
            .unwrap();
        assert!((params[0][0] - 0.99).abs() < 1e-6, "{params:?}");
        assert!((params[0][1] - 1.01).abs() < 1e-4, "{params:?}");
        assert_eq!(params[0][2], 1.0);
        assert_eq!(state.adam_steps(), Some(1));
    }

    #[test]
    fn sgd_is_gradient_times_rate_and_refuses_overflow() {
        let (params, _) = OptimizerState::Sgd
            .step(&Optimizer::Sgd, 0.5, &[vec![1.0, 2.0]], &[vec![2.0, -4.0]])
            .unwrap();
        assert_eq!(params, vec![vec![0.0, 4.0]]);
        let err = OptimizerState::Sgd
            .step(&Optimizer::Sgd, 1e40, &[vec![0.0]], &[vec![1.0]])
            .unwrap_err();
        assert_eq!(
            err,
            ModelError::NonFinite {
                what: "updated weights".into()
            }
        );
        assert!(
            OptimizerState::Sgd
                .step(&Optimizer::Sgd, 0.1, &[vec![0.0]], &[vec![1.0, 2.0]])
                .is_err()
        );
    }
}
