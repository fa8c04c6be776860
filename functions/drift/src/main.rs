//! drift: watches a model's examples for changes in each feature's distribution and in the live
//! version's prediction error, and reports them on CONTROL.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bank;
mod gate;
mod handler;
mod live;
mod metrics;
mod processor;
mod promotion;

use clap::Parser;
use freshet::config::FunctionArgs;
use freshet::control::Reaction;
use freshet::ids::ModelName;
use freshet::runtime::FunctionContext;
use freshet::runtime::order::OrderGuard;
use freshet::store::{Pointers, Slot};
use freshet::subjects::{BUCKET_DRIFT, BUCKET_MODELS, STREAM_EXAMPLES};

use crate::bank::{Bank, BankConfig, DetectorList};
use crate::gate::GateConfig;
use freshet_drift::detectors::{
    AdwinConfig, DdmConfig, KswinConfig, PageHinkleyConfig, PsiConfig, StreamingPsiConfig,
};

/// Watches one model's examples: each feature's distribution (PSI and Page-Hinkley by default)
/// and the live version's prediction error on each labelled example (DDM and ADWIN by default).
/// Every warning and drift is published on <prefix>.control.<model>.drift with the reaction
/// configured for the model. Detector state is checkpointed in the DRIFT bucket (key <model>)
/// before messages are acknowledged, so a restart neither loses nor double-counts an example.
#[derive(Debug, Parser)]
#[command(name = "drift", version)]
struct Args {
    #[command(flatten)]
    function: FunctionArgs,
    /// Model whose examples are watched
    #[arg(long = "model", env = "FRESHET_MODEL", default_value = "bookstore")]
    model: ModelName,
    /// Detectors on every feature's distribution, comma-separated: psi, page_hinkley, adwin,
    /// kswin; or none
    #[arg(
        long = "feature-detectors",
        env = "FRESHET_FEATURE_DETECTORS",
        default_value = "psi,page_hinkley"
    )]
    feature_detectors: DetectorList,
    /// Detectors on the live version's prediction error, comma-separated: ddm and adwin read the
    /// 0/1 error, page_hinkley the log loss; or none. They start afresh whenever the live version
    /// changes
    #[arg(
        long = "error-detectors",
        env = "FRESHET_ERROR_DETECTORS",
        default_value = "ddm,adwin"
    )]
    error_detectors: DetectorList,
    /// Reaction requested in every event for this model: alert, raise_lr or train_candidate
    /// (carried out by train and the promotion gate, not by drift)
    #[arg(long = "reaction", env = "FRESHET_REACTION", default_value = "alert")]
    reaction: Reaction,
    /// PSI: values making a feature's reference window (the first ones, and again after each
    /// drift)
    #[arg(
        long = "psi-reference-size",
        env = "FRESHET_PSI_REFERENCE_SIZE",
        default_value_t = 1000
    )]
    psi_reference_size: usize,
    /// PSI: values in the sliding recent window compared with the reference
    #[arg(
        long = "psi-recent-size",
        env = "FRESHET_PSI_RECENT_SIZE",
        default_value_t = 500
    )]
    psi_recent_size: usize,
    /// PSI: quantile bins drawn from the reference
    #[arg(long = "psi-bins", env = "FRESHET_PSI_BINS", default_value_t = 10)]
    psi_bins: usize,
    /// PSI from which a shift is a warning
    #[arg(
        long = "psi-warning",
        env = "FRESHET_PSI_WARNING",
        default_value_t = 0.1
    )]
    psi_warning: f64,
    /// PSI from which a shift is a drift
    #[arg(long = "psi-drift", env = "FRESHET_PSI_DRIFT", default_value_t = 0.25)]
    psi_drift: f64,
    /// Page-Hinkley threshold λ: larger means fewer, surer detections
    #[arg(
        long = "ph-threshold",
        env = "FRESHET_PH_THRESHOLD",
        default_value_t = 50.0
    )]
    ph_threshold: f64,
    /// Page-Hinkley tolerance δ
    #[arg(long = "ph-delta", env = "FRESHET_PH_DELTA", default_value_t = 0.005)]
    ph_delta: f64,
    /// ADWIN confidence δ, in (0, 1): smaller means fewer, surer detections
    #[arg(
        long = "adwin-delta",
        env = "FRESHET_ADWIN_DELTA",
        default_value_t = 0.002
    )]
    adwin_delta: f64,
    /// KSWIN significance α of the Kolmogorov-Smirnov test
    #[arg(
        long = "kswin-alpha",
        env = "FRESHET_KSWIN_ALPHA",
        default_value_t = 0.005
    )]
    kswin_alpha: f64,
    /// KSWIN sliding window size (at least twice the 30 values each test compares)
    #[arg(
        long = "kswin-window",
        env = "FRESHET_KSWIN_WINDOW",
        default_value_t = 100
    )]
    kswin_window: usize,
    /// DDM: deviations above the best error rate that mean a warning
    #[arg(
        long = "ddm-warning",
        env = "FRESHET_DDM_WARNING",
        default_value_t = 2.0
    )]
    ddm_warning: f64,
    /// DDM: deviations above the best error rate that mean a drift
    #[arg(long = "ddm-drift", env = "FRESHET_DDM_DRIFT", default_value_t = 3.0)]
    ddm_drift: f64,
    /// Turn the promotion gate off: no pointer is ever moved by drift
    #[arg(long = "no-gate", env = "FRESHET_NO_GATE")]
    no_gate: bool,
    /// Gate: labelled examples neither version learned that a decision needs
    #[arg(
        long = "gate-min-examples",
        env = "FRESHET_GATE_MIN_EXAMPLES",
        default_value_t = 500
    )]
    gate_min_examples: usize,
    /// Gate: accuracy by which a candidate must beat live to be promoted
    #[arg(
        long = "gate-margin",
        env = "FRESHET_GATE_MARGIN",
        default_value_t = 0.02
    )]
    gate_margin: f64,
    /// Gate: examples after which a candidate that has not won is withdrawn
    #[arg(
        long = "gate-max-candidate-examples",
        env = "FRESHET_GATE_MAX_CANDIDATE_EXAMPLES",
        default_value_t = 20_000
    )]
    gate_max_candidate_examples: usize,
    /// Gate, forgetting guard: older examples held back to score a candidate on
    #[arg(
        long = "gate-held-back",
        env = "FRESHET_GATE_HELD_BACK",
        default_value_t = 500
    )]
    gate_held_back: usize,
    /// Gate, forgetting guard: how many examples before the recent window the sample reaches
    #[arg(
        long = "gate-horizon",
        env = "FRESHET_GATE_HORIZON",
        default_value_t = 5_000
    )]
    gate_horizon: usize,
    /// Gate, forgetting guard: accuracy a candidate may lose against live on older examples
    #[arg(
        long = "gate-forgetting-tolerance",
        env = "FRESHET_GATE_FORGETTING_TOLERANCE",
        default_value_t = 0.02
    )]
    gate_forgetting_tolerance: f64,
    /// Gate: accuracy by which the version live replaced must beat live for a rollback
    #[arg(
        long = "gate-rollback-threshold",
        env = "FRESHET_GATE_ROLLBACK_THRESHOLD",
        default_value_t = 0.05
    )]
    gate_rollback_threshold: f64,
}

impl Args {
    fn gate_config(&self) -> anyhow::Result<GateConfig> {
        let config = GateConfig {
            min_examples: self.gate_min_examples,
            margin: self.gate_margin,
            max_candidate_examples: self.gate_max_candidate_examples,
            held_back: self.gate_held_back,
            horizon: self.gate_horizon,
            forgetting_tolerance: self.gate_forgetting_tolerance,
            rollback_threshold: self.gate_rollback_threshold,
        };
        anyhow::ensure!(
            config.min_examples > 0 && config.held_back > 0 && config.horizon > 0,
            "gate: --gate-min-examples, --gate-held-back and --gate-horizon must be positive"
        );
        anyhow::ensure!(
            [
                config.margin,
                config.forgetting_tolerance,
                config.rollback_threshold
            ]
            .iter()
            .all(|x| (0.0..1.0).contains(x)),
            "gate: the margin, tolerance and threshold are accuracies between 0 and 1"
        );
        Ok(config)
    }

    fn bank_config(&self) -> BankConfig {
        BankConfig {
            feature_detectors: self.feature_detectors.0.clone(),
            error_detectors: self.error_detectors.0.clone(),
            psi: StreamingPsiConfig {
                psi: PsiConfig {
                    bins: self.psi_bins,
                    moderate: self.psi_warning,
                    significant: self.psi_drift,
                    ..Default::default()
                },
                reference_size: self.psi_reference_size,
                recent_size: self.psi_recent_size,
                ..Default::default()
            },
            page_hinkley: PageHinkleyConfig {
                threshold: self.ph_threshold,
                delta: self.ph_delta,
                ..Default::default()
            },
            adwin: AdwinConfig {
                delta: self.adwin_delta,
                ..Default::default()
            },
            kswin: KswinConfig {
                alpha: self.kswin_alpha,
                window_size: self.kswin_window,
                ..Default::default()
            },
            ddm: DdmConfig {
                warning_threshold: self.ddm_warning,
                drift_threshold: self.ddm_drift,
                ..Default::default()
            },
        }
    }
}

/// mimalloc: the functions allocate and free many small buffers per message, which it serves
/// faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Settings are checked before connecting, so a typo fails at once.
    let bank = Bank::new(args.bank_config())?;
    let gate_config = args.gate_config()?;
    let ctx = FunctionContext::start("drift", args.function).await?;
    // CloudEvents pushed to /events (Knative Eventing) join the stream this function reads.
    ctx.serve_http(ctx.ingress(freshet::runtime::ingress::Input::Examples))
        .await?;
    let metrics = metrics::DriftMetrics::default();
    metrics.register(&ctx.metrics, bank.config());

    let models = ctx.js.get_key_value(BUCKET_MODELS).await?;
    let (live, candidate, fallback) = (
        live::Live::default(),
        live::Live::default(),
        live::Live::default(),
    );
    let follower = live::Follower {
        model: args.model.clone(),
        slot: Slot::Live,
        models: models.clone(),
        artifacts: ctx.artifacts()?,
        live: live.clone(),
        fallback: Some(fallback.clone()),
        metrics: metrics.clone(),
    };
    let candidate_follower = live::Follower {
        model: args.model.clone(),
        slot: Slot::Candidate,
        models: models.clone(),
        artifacts: ctx.artifacts()?,
        live: candidate.clone(),
        fallback: None,
        metrics: metrics.clone(),
    };
    let promotion = (!args.no_gate).then(|| {
        let gate_metrics = promotion::GateMetrics::default();
        gate_metrics.register(&ctx.metrics);
        promotion::Promotion {
            model: args.model.clone(),
            gate: gate::Gate::new(gate_config),
            versions: promotion::Versions {
                candidate,
                fallback,
            },
            pointers: Pointers::new(models),
            js: ctx.js.clone(),
            subjects: ctx.subjects.clone(),
            metrics: gate_metrics,
        }
    });
    let durable = format!("drift-{}", args.model);
    let io = processor::Io {
        js: ctx.js.clone(),
        subjects: ctx.subjects.clone(),
        checkpoints: ctx.js.get_key_value(BUCKET_DRIFT).await?,
        order: OrderGuard::new(
            ctx.js.get_stream(STREAM_EXAMPLES).await?,
            ctx.subjects.examples(&args.model),
            durable.clone(),
        ),
        live,
        max_checkpoint_bytes: ctx.client.server_info().max_payload,
    };
    // The checkpoint is read with the first batch, under the lease: it is then the last
    // holder's final write.
    let processor = processor::DriftProcessor::new(
        args.model.clone(),
        args.reaction,
        bank,
        io,
        metrics,
        promotion,
    );
    // One drift per model: two would fight over the checkpoint. The others stand by.
    let lease_key = format!("drift.{}", args.model);
    let outcome = ctx
        .exclusively(&lease_key, async {
            // The first batch is scored by the version live now; the watch follows it from there.
            follower.load_current().await;
            tokio::spawn(follower.run(ctx.shutdown.clone()));
            if !args.no_gate {
                candidate_follower.load_current().await;
                tokio::spawn(candidate_follower.run(ctx.shutdown.clone()));
            }
            ctx.consume(
                STREAM_EXAMPLES,
                &durable,
                vec![ctx.subjects.examples(&args.model)],
                ctx.args.batch_size(),
                processor,
            )
            .await
        })
        .await;
    ctx.flush_spans().await;
    outcome
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::bank::DetectorKind;

    #[test]
    fn the_defaults_are_the_banks_defaults() {
        Args::command().debug_assert();
        let args = Args::try_parse_from(["drift"]).unwrap();
        assert_eq!(args.bank_config(), BankConfig::default());
        assert_eq!(args.reaction, Reaction::Alert);
        assert!(Bank::new(args.bank_config()).is_ok());
    }

    #[test]
    fn detectors_and_reaction_are_chosen_by_flag() {
        let args = Args::try_parse_from([
            "drift",
            "--feature-detectors",
            "kswin,adwin",
            "--error-detectors",
            "none",
            "--reaction",
            "train_candidate",
            "--psi-drift",
            "0.3",
        ])
        .unwrap();
        let config = args.bank_config();
        assert_eq!(
            config.feature_detectors,
            vec![DetectorKind::Kswin, DetectorKind::Adwin]
        );
        assert!(config.error_detectors.is_empty());
        assert_eq!(config.psi.psi.significant, 0.3);
        assert_eq!(args.reaction, Reaction::TrainCandidate);
        assert!(Bank::new(config).is_ok());
        assert!(Args::try_parse_from(["drift", "--reaction", "retrain"]).is_err());
        assert!(Args::try_parse_from(["drift", "--error-detectors", "psi,ks"]).is_err());
        let misplaced = Args::try_parse_from(["drift", "--feature-detectors", "ddm"]).unwrap();
        assert!(Bank::new(misplaced.bank_config()).is_err());
    }

    #[test]
    fn help_names_every_environment_variable() {
        let help = Args::command().render_long_help().to_string();
        for var in [
            "FRESHET_FEATURE_DETECTORS",
            "FRESHET_ERROR_DETECTORS",
            "FRESHET_REACTION",
            "FRESHET_PSI_REFERENCE_SIZE",
            "FRESHET_PSI_RECENT_SIZE",
            "FRESHET_PSI_BINS",
            "FRESHET_PSI_WARNING",
            "FRESHET_PSI_DRIFT",
            "FRESHET_PH_THRESHOLD",
            "FRESHET_PH_DELTA",
            "FRESHET_ADWIN_DELTA",
            "FRESHET_KSWIN_ALPHA",
            "FRESHET_KSWIN_WINDOW",
            "FRESHET_DDM_WARNING",
            "FRESHET_DDM_DRIFT",
        ] {
            assert!(help.contains(var), "{var}");
        }
    }
}
