//! [`Trainer`], the one training API over every model kind: a [`ModelConfig`] says which model
//! to train and how, a `Trainer` trains it, and a [`ModelScorer`] serves it.
//!
//! The functions that train and predict do not need to know which kind a model name uses: the
//! configuration picks it, the artifact records it, and [`ModelScorer::from_bytes`] reads it
//! back from the artifact's header (format-2 logistic artifacts included). Every kind behaves
//! the same at this level: inputs are standardised by the model's own scaler, a batch is learned
//! in steps of a few rows, each scored prequentially before its step, a batch with a non-finite
//! update is discarded whole, and an artifact restores a
//! trainer that continues exactly where the original stopped (Adam's moments included).

use super::artifact;
use super::config::ModelConfig;
use super::error::ModelError;
use super::hyper::Hyper;
use super::kind::ModelKind;
use super::learner::{BatchReport, Learner};
use super::scorer::ModelScorer;

/// Trains a model of any kind one mini-batch at a time.
///
/// Each [`train_batch`](Self::train_batch) learns the batch in steps of [`Hyper::step_rows`]
/// rows, each step's rows scored just before it (the prequential, test-then-train measurement);
/// on any error the trainer is unchanged.
#[derive(Debug)]
pub struct Trainer {
    config: ModelConfig,
    learner: Learner,
}

impl Trainer {
    /// A fresh model for rows of `n_features` values: logistic regression at zero, the other
    /// kinds initialised from `config.seed`.
    pub fn new(config: &ModelConfig, n_features: usize) -> Result<Trainer, ModelError> {
        config.validate()?;
        Ok(Trainer {
            config: *config,
            learner: Learner::new(
                config.kind,
                n_features,
                config.hyper,
                config.seed,
                config.scaler_decay,
            )?,
        })
    }

    /// Restores a trainer from [`to_bytes`](Self::to_bytes) output (or a format-2 logistic
    /// artifact) to continue training it.
    ///
    /// The artifact fixes the kind and dimensions, which must match `config` (a different kind,
    /// width or factor count is a different model, refused as [`ModelError::Decode`]); the
    /// hyperparameters come from `config` and may change between versions. If the optimizer
    /// changed, Adam starts from zero moments or its moments are dropped.
    pub fn from_bytes(bytes: &[u8], config: &ModelConfig) -> Result<Trainer, ModelError> {
        config.validate()?;
        let snapshot = artifact::decode(bytes)?;
        if snapshot.kind != config.kind {
            return Err(ModelError::Decode(format!(
                "the artifact holds {}, the configuration asks for {}",
                snapshot.kind.describe(),
                config.kind.describe()
            )));
        }
        Ok(Trainer {
            config: *config,
            learner: Learner::restore(snapshot, config.hyper)?,
        })
    }

    /// A copy of this model whose learning-rate schedule starts again at η0 (step 0), keeping its
    /// weights, scaler and optimizer moments: what a drift reaction trains, so the copy catches up
    /// with a changed concept at the full rate instead of the decayed one.
    pub fn restarted(&self) -> Result<Trainer, ModelError> {
        let mut snapshot = self.learner.snapshot().clone();
        snapshot.step = 0;
        Ok(Trainer {
            config: self.config,
            learner: Learner::restore(snapshot, self.config.hyper)?,
        })
    }

    /// Learns the batch in steps of [`Hyper::step_rows`] rows, each step's rows scored by the
    /// model as it is just before that step (so [`BatchReport::scores`] and `correct` measure
    /// learning as River's predict-then-learn loop does, whatever the batch size).
    ///
    /// Input errors (row width, non-finite features, labels other than 0 and 1, an empty or
    /// mismatched batch) are reported before any work. An update that would make the loss, a
    /// gradient, a parameter or an optimizer moment non-finite is discarded with
    /// [`ModelError::NonFinite`]. Either way the trainer is left exactly as it was.
    pub fn train_batch(
        &mut self,
        rows: &[Vec<f32>],
        labels: &[f32],
    ) -> Result<BatchReport, ModelError> {
        self.learner.train_batch(rows, labels)
    }

    /// Serialises the model, its scaler, step and optimizer state (format
    /// [`ARTIFACT_FORMAT_VERSION`](super::ARTIFACT_FORMAT_VERSION)). Equal states give equal
    /// bytes, so the SHA-256 identifies the model.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        artifact::encode(self.learner.snapshot())
    }

    /// An inference copy of the current model, independent of further training.
    pub fn scorer(&self) -> ModelScorer {
        ModelScorer::new(self.learner.host_model())
    }

    /// Updates taken so far (`t`).
    pub fn step(&self) -> u64 {
        self.learner.snapshot().step
    }

    /// The model family.
    pub fn kind(&self) -> ModelKind {
        self.config.kind
    }

    /// Number of input features.
    pub fn n_features(&self) -> usize {
        self.learner.snapshot().n_features
    }

    /// The configuration in use (as given to [`new`](Self::new) or
    /// [`from_bytes`](Self::from_bytes)).
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The hyperparameters in use.
    pub fn hyper(&self) -> Hyper {
        self.learner.hyper()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::synthetic::{linear_batch, xor_batch};
    use crate::{DEFAULT_FACTORS, DEFAULT_HIDDEN, Dimensions, MAX_FACTORS, Optimizer};
    use std::time::Instant;

    const KINDS: [ModelKind; 4] = [
        ModelKind::Logistic,
        ModelKind::Mlp { hidden: 8 },
        ModelKind::FactorizationMachine { factors: 4 },
        ModelKind::Fourier { hidden: 16 },
    ];

    fn optimizers() -> [Optimizer; 2] {
        [Optimizer::Sgd, Optimizer::adam()]
    }

    fn config(kind: ModelKind, optimizer: Optimizer) -> ModelConfig {
        ModelConfig {
            kind,
            hyper: Hyper {
                learning_rate: if optimizer == Optimizer::Sgd {
                    0.5
                } else {
                    0.02
                },
                decay: 0.01,
                l2: 1e-4,
                optimizer,
                rows_per_step: 0,
            },
            seed: 3,
            scaler_decay: None,
        }
    }

    fn bits(scores: &[f32]) -> Vec<u32> {
        scores.iter().map(|s| s.to_bits()).collect()
    }

    #[test]
    fn a_restarted_copy_keeps_the_model_and_learns_at_the_initial_rate() {
        for kind in KINDS {
            let mut trainer = Trainer::new(&config(kind, Optimizer::Sgd), 4).unwrap();
            for b in 0..20 {
                let (rows, labels) = linear_batch(b, 16, 4);
                trainer.train_batch(&rows, &labels).unwrap();
            }
            let mut restarted = trainer.restarted().unwrap();
            assert_eq!((trainer.step(), restarted.step()), (20, 0), "{kind:?}");
            let (rows, labels) = linear_batch(99, 16, 4);
            assert_eq!(
                bits(&trainer.scorer().score_batch(&rows).unwrap()),
                bits(&restarted.scorer().score_batch(&rows).unwrap()),
                "{kind:?}: the same model"
            );
            // The next step moves the restarted copy further: η0 against η0 / (1 + 20α).
            let before = trainer.scorer().score_batch(&rows).unwrap();
            let mut continued =
                Trainer::from_bytes(&trainer.to_bytes().unwrap(), trainer.config()).unwrap();
            continued.train_batch(&rows, &labels).unwrap();
            restarted.train_batch(&rows, &labels).unwrap();
            let moved = |after: Vec<f32>| -> f32 {
                after.iter().zip(&before).map(|(a, b)| (a - b).abs()).sum()
            };
            assert!(
                moved(restarted.scorer().score_batch(&rows).unwrap())
                    > moved(continued.scorer().score_batch(&rows).unwrap()),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn an_invalid_configuration_trains_nothing() {
        for (config, name) in [
            (
                ModelConfig {
                    kind: ModelKind::Mlp { hidden: 0 },
                    ..ModelConfig::default()
                },
                "hidden",
            ),
            (
                ModelConfig {
                    kind: ModelKind::FactorizationMachine {
                        factors: MAX_FACTORS + 1,
                    },
                    ..ModelConfig::default()
                },
                "factors",
            ),
            (
                ModelConfig {
                    hyper: Hyper {
                        optimizer: Optimizer::Adam {
                            beta1: 0.9,
                            beta2: 1.5,
                            epsilon: 1e-8,
                        },
                        ..Hyper::default()
                    },
                    ..ModelConfig::default()
                },
                "beta2",
            ),
        ] {
            assert!(
                matches!(Trainer::new(&config, 3), Err(ModelError::InvalidConfig { name: n, .. }) if n == name),
                "{config:?}"
            );
        }
    }

    #[test]
    fn every_kind_and_optimizer_continues_exactly_after_a_round_trip() {
        for kind in KINDS {
            for optimizer in optimizers() {
                let config = config(kind, optimizer);
                let mut original = Trainer::new(&config, 5).unwrap();
                for b in 0..8 {
                    let (rows, labels) = linear_batch(b, 32, 5);
                    original.train_batch(&rows, &labels).unwrap();
                }
                let bytes = original.to_bytes().unwrap();
                let mut restored = Trainer::from_bytes(&bytes, &config).unwrap();
                assert_eq!(
                    restored.to_bytes().unwrap(),
                    bytes,
                    "{kind:?} {optimizer:?}"
                );
                assert_eq!((restored.step(), restored.kind()), (8, kind));
                assert_eq!(restored.n_features(), 5);

                for b in 8..16 {
                    let (rows, labels) = linear_batch(b, 32, 5);
                    let a = original.train_batch(&rows, &labels).unwrap();
                    let r = restored.train_batch(&rows, &labels).unwrap();
                    assert_eq!(a.log_loss_sum.to_bits(), r.log_loss_sum.to_bits());
                    assert_eq!(bits(&a.scores), bits(&r.scores));
                    assert_eq!(a, r);
                }
                // Parameters, scaler and Adam's moments are all in the bytes: equal bytes mean
                // bit-identical state.
                assert_eq!(
                    original.to_bytes().unwrap(),
                    restored.to_bytes().unwrap(),
                    "{kind:?} {optimizer:?}"
                );
                let scorer = ModelScorer::from_bytes(&original.to_bytes().unwrap()).unwrap();
                assert_eq!(scorer.kind(), kind);
                assert_eq!((scorer.step(), scorer.n_features()), (16, 5));
            }
        }
    }

    #[test]
    fn host_scores_equal_burn_forward_pass() {
        for kind in KINDS {
            for optimizer in optimizers() {
                let mut trainer = Trainer::new(&config(kind, optimizer), 6).unwrap();
                for b in 0..10 {
                    let (rows, labels) = xor_batch(b, 32, 6);
                    trainer.train_batch(&rows, &labels).unwrap();
                }
                let (rows, _) = xor_batch(99, 64, 6);
                let host = trainer.scorer().score_batch(&rows).unwrap();
                let burn = trainer.learner.burn_probabilities(&rows).unwrap();
                let worst = host
                    .iter()
                    .zip(&burn)
                    .map(|(h, b)| (h - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    worst <= 1e-5,
                    "{kind:?} {optimizer:?}: worst difference {worst}"
                );
                for (row, p) in rows.iter().zip(&host) {
                    assert_eq!(trainer.scorer().score(row).unwrap().to_bits(), p.to_bits());
                }
            }
        }
    }

    #[test]
    fn prequential_scores_are_the_scorers() {
        for kind in KINDS {
            let mut trainer = Trainer::new(&config(kind, Optimizer::adam()), 4).unwrap();
            for b in 0..5 {
                let (rows, labels) = linear_batch(b, 32, 4);
                trainer.train_batch(&rows, &labels).unwrap();
            }
            let scorer = trainer.scorer();
            let (rows, labels) = linear_batch(5, 32, 4);
            let scores = scorer.score_batch(&rows).unwrap();
            let report = trainer.train_batch(&rows, &labels).unwrap();
            assert_eq!(bits(&report.scores), bits(&scores));
            // The scorer is a snapshot: training afterwards does not change it.
            assert_eq!(bits(&scorer.score_batch(&rows).unwrap()), bits(&scores));
        }
    }

    #[test]
    fn bad_input_is_rejected_and_every_kind_unchanged() {
        for kind in KINDS {
            let mut trainer = Trainer::new(&config(kind, Optimizer::adam()), 3).unwrap();
            let (rows, labels) = linear_batch(0, 16, 3);
            trainer.train_batch(&rows, &labels).unwrap();
            let before = trainer.to_bytes().unwrap();
            let good = vec![0.1f32, 0.2, 0.3];
            assert_eq!(
                trainer
                    .train_batch(&[good.clone(), vec![1.0, 2.0]], &[0.0, 1.0])
                    .unwrap_err(),
                ModelError::FeatureCount {
                    row: 1,
                    expected: 3,
                    got: 2
                }
            );
            assert!(matches!(
                trainer.train_batch(&[vec![0.0, f32::NAN, 0.0]], &[1.0]),
                Err(ModelError::NonFiniteFeature {
                    row: 0,
                    column: 1,
                    ..
                })
            ));
            assert!(matches!(
                trainer.train_batch(std::slice::from_ref(&good), &[0.5]),
                Err(ModelError::Label { index: 0, .. })
            ));
            assert_eq!(
                trainer
                    .train_batch(std::slice::from_ref(&good), &[1.0, 0.0])
                    .unwrap_err(),
                ModelError::LabelCount { rows: 1, labels: 2 }
            );
            assert_eq!(
                trainer.train_batch(&[], &[]).unwrap_err(),
                ModelError::EmptyBatch
            );
            assert_eq!(trainer.to_bytes().unwrap(), before, "{kind:?}");

            let scorer = trainer.scorer();
            assert!(matches!(
                scorer.score(&[1.0]),
                Err(ModelError::FeatureCount {
                    expected: 3,
                    got: 1,
                    ..
                })
            ));
            assert!(matches!(
                scorer.score(&[0.0, 0.0, f32::INFINITY]),
                Err(ModelError::NonFiniteFeature { column: 2, .. })
            ));
            assert_eq!(scorer.score_batch(&[]).unwrap(), Vec::<f32>::new());
        }
        assert!(matches!(
            Trainer::new(&ModelConfig::default(), 0),
            Err(ModelError::InvalidConfig {
                name: "n_features",
                ..
            })
        ));
        let nan_rate = ModelConfig {
            hyper: Hyper {
                learning_rate: f64::NAN,
                ..Hyper::default()
            },
            ..ModelConfig::default()
        };
        assert!(matches!(
            Trainer::new(&nan_rate, 3),
            Err(ModelError::InvalidConfig {
                name: "learning_rate",
                ..
            })
        ));
    }

    /// A learning rate of 1e30 makes the parameters enormous after one batch; features of 1e30
    /// then overflow the forward pass. The update must be refused and the trainer left
    /// bit-identical, for every kind and optimizer whose forward pass such inputs can overflow:
    /// a fourier model's features are cosines, bounded by √2 whatever the input, so rows cannot
    /// poison it (an overflowing update can: `overflowing_update_is_discarded_for_every_kind`).
    #[test]
    fn poisoned_batch_is_discarded_for_every_kind() {
        for kind in KINDS
            .into_iter()
            .filter(|k| !matches!(k, ModelKind::Fourier { .. }))
        {
            for optimizer in optimizers() {
                let mut config = config(kind, optimizer);
                config.hyper.learning_rate = 1e30;
                config.hyper.decay = 0.0;
                let mut trainer = Trainer::new(&config, 3).unwrap();
                let (rows, labels) = linear_batch(0, 32, 3);
                trainer.train_batch(&rows, &labels).unwrap();
                let before = trainer.to_bytes().unwrap();

                let poison = vec![
                    vec![1e30f32, -1e30, 1e30],
                    vec![-1e30, 1e30, -1e30],
                    vec![1e30, 1e30, 1e30],
                    vec![-1e30, -1e30, 1e30],
                ];
                let err = trainer
                    .train_batch(&poison, &[1.0, 0.0, 1.0, 0.0])
                    .unwrap_err();
                assert!(
                    matches!(err, ModelError::NonFinite { .. }),
                    "{kind:?} {optimizer:?}: {err:?}"
                );
                assert_eq!(
                    trainer.to_bytes().unwrap(),
                    before,
                    "{kind:?} {optimizer:?}"
                );
                assert_eq!(trainer.step(), 1);
            }
        }
    }

    /// A batch is learned whole or not at all: a row that poisons the model halfway through a
    /// batch of one-row steps refuses the batch, and the rows stepped before it are undone too.
    #[test]
    fn a_batch_poisoned_halfway_is_refused_whole() {
        for kind in KINDS {
            let config = ModelConfig {
                hyper: Hyper {
                    learning_rate: 0.05,
                    rows_per_step: 1,
                    ..Hyper::default()
                },
                ..config(kind, Optimizer::Sgd)
            };
            let mut trainer = Trainer::new(&config, 3).unwrap();
            let (rows, labels) = linear_batch(0, 32, 3);
            trainer.train_batch(&rows, &labels).unwrap();
            let before = trainer.to_bytes().unwrap();
            let (mut rows, mut labels) = linear_batch(1, 8, 3);
            // Scaled by the model's scaler it overflows f32: its score is not finite.
            rows.insert(4, vec![3e38, -3e38, 3e38]);
            labels.insert(4, 1.0);
            let err = trainer.train_batch(&rows, &labels).unwrap_err();
            assert!(
                matches!(err, ModelError::NonFinite { .. }),
                "{kind:?}: {err:?}"
            );
            assert_eq!(trainer.to_bytes().unwrap(), before, "{kind:?}");
            assert_eq!(trainer.step(), 32, "{kind:?}");
        }
    }

    /// With a learning rate near f64::MAX the very first update overflows f32 even though the
    /// scores and the loss were finite: it is the update that must be rolled back.
    #[test]
    fn overflowing_update_is_discarded_for_every_kind() {
        for kind in KINDS {
            for optimizer in optimizers() {
                let mut config = config(kind, optimizer);
                config.hyper.learning_rate = 1e300;
                let mut trainer = Trainer::new(&config, 3).unwrap();
                let fresh = trainer.to_bytes().unwrap();
                let (rows, labels) = linear_batch(0, 32, 3);
                let err = trainer.train_batch(&rows, &labels).unwrap_err();
                assert_eq!(
                    err,
                    ModelError::NonFinite {
                        what: "updated weights".into()
                    },
                    "{kind:?} {optimizer:?}"
                );
                assert_eq!(trainer.to_bytes().unwrap(), fresh);
                assert_eq!(trainer.step(), 0);
            }
        }
    }

    #[test]
    fn restore_checks_the_shape_and_adapts_the_optimizer() {
        let mlp = config(ModelKind::Mlp { hidden: 8 }, Optimizer::Sgd);
        let mut trainer = Trainer::new(&mlp, 4).unwrap();
        let (rows, labels) = linear_batch(0, 16, 4);
        trainer.train_batch(&rows, &labels).unwrap();
        let bytes = trainer.to_bytes().unwrap();

        let wider = ModelConfig {
            kind: ModelKind::Mlp { hidden: 9 },
            ..mlp
        };
        let fm = ModelConfig {
            kind: ModelKind::FactorizationMachine { factors: 4 },
            ..mlp
        };
        for other in [wider, fm] {
            match Trainer::from_bytes(&bytes, &other) {
                Err(ModelError::Decode(msg)) => assert!(msg.contains("8 hidden units"), "{msg}"),
                other => panic!("expected a decode error, got {other:?}"),
            }
        }

        // SGD lineage continued with Adam: fresh moments, the step counter carries on.
        let adam = ModelConfig {
            hyper: Hyper {
                optimizer: Optimizer::adam(),
                learning_rate: 0.01,
                ..mlp.hyper
            },
            ..mlp
        };
        let mut switched = Trainer::from_bytes(&bytes, &adam).unwrap();
        let (rows, labels) = linear_batch(1, 16, 4);
        assert_eq!(switched.train_batch(&rows, &labels).unwrap().step, 2);
        // …and back to SGD, dropping the moments.
        let mut back = Trainer::from_bytes(&switched.to_bytes().unwrap(), &mlp).unwrap();
        assert_eq!(back.train_batch(&rows, &labels).unwrap().step, 3);
        assert!(back.to_bytes().unwrap().len() < switched.to_bytes().unwrap().len());
    }

    #[test]
    fn only_a_logistic_regression_has_a_weight_per_feature() {
        for kind in KINDS {
            let mut trainer = Trainer::new(&config(kind, Optimizer::Sgd), 3).unwrap();
            let (rows, labels) = linear_batch(0, 16, 3);
            trainer.train_batch(&rows, &labels).unwrap();
            let scorer = trainer.scorer();
            match (kind, scorer.linear_weights()) {
                (ModelKind::Logistic, Some((w, b))) => {
                    assert_eq!(w.len(), 3);
                    assert!(w.iter().chain([&b]).any(|v| *v != 0.0), "trained");
                    // They travel with the artifact.
                    let restored = ModelScorer::from_bytes(&trainer.to_bytes().unwrap()).unwrap();
                    assert_eq!(restored.linear_weights(), Some((w, b)));
                }
                (ModelKind::Logistic, None) => panic!("a logistic model has weights"),
                (_, weights) => assert_eq!(weights, None, "{kind:?}"),
            }
        }
    }

    #[test]
    fn types_are_thread_safe() {
        fn send_sync_static<T: Send + Sync + 'static>() {}
        fn send_static<T: Send + 'static>() {}
        send_sync_static::<ModelScorer>();
        send_sync_static::<ModelConfig>();
        send_static::<Trainer>();
    }

    /// Training throughput per kind at batch 256 × 20 features, and single-row scoring cost.
    /// A measurement, not a test: `cargo test -p freshet-shared --lib measure_ -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "measurement; run by hand"]
    fn measure_training_rates() {
        let batches: Vec<_> = (0..8).map(|b| linear_batch(b, 256, 20)).collect();
        for kind in KINDS {
            for optimizer in optimizers() {
                let defaults = Dimensions {
                    hidden: Some(DEFAULT_HIDDEN),
                    factors: Some(DEFAULT_FACTORS),
                };
                let config = config(kind.with_dimensions(defaults), optimizer);
                let mut trainer = Trainer::new(&config, 20).unwrap();
                for (rows, labels) in &batches[..2] {
                    trainer.train_batch(rows, labels).unwrap();
                }
                let steps = 40;
                let start = Instant::now();
                for i in 0..steps {
                    let (rows, labels) = &batches[i % batches.len()];
                    trainer.train_batch(rows, labels).unwrap();
                }
                let elapsed = start.elapsed();
                let scorer = trainer.scorer();
                let row = &batches[0].0[0];
                let n = 20_000u32;
                let score_start = Instant::now();
                for _ in 0..n {
                    std::hint::black_box(scorer.score(std::hint::black_box(row)).unwrap());
                }
                eprintln!(
                    "{kind:?} {optimizer:?}: {:.0} examples/s ({:.2} ms/step), score() {:?}/row",
                    (steps * 256) as f64 / elapsed.as_secs_f64(),
                    elapsed.as_secs_f64() * 1e3 / steps as f64,
                    score_start.elapsed() / n,
                );
            }
        }
    }
}
