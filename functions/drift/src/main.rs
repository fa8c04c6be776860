//! drift: watches a model's examples for changes in each feature's distribution and in the live
//! version's prediction error, and reports them on CONTROL.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod control;
mod gate;
mod live;
mod metrics;
mod processor;
mod promotion;
mod settling;

use clap::Parser;
use freshet::config::{FunctionArgs, ModelArgs, parse_duration};
use freshet::control::Reaction;
use freshet::runtime::FunctionContext;
use freshet::runtime::order::OrderGuard;
use freshet::subjects::{BUCKET_DRIFT, BUCKET_MODELS, STREAM_EXAMPLES};
use freshet_model::store::{ArtifactArgs, Follower, Pointers, Slot, VersionCell};

// The bank lives in the library (the benchmark runs it); its modules name it `crate::bank`.
use crate::bank::{Bank, BankConfig, DetectorList};
use crate::gate::GateConfig;
use freshet_drift::bank;
use freshet_drift::detectors::{
    AdwinConfig, KswinConfig, PageHinkleyConfig, PsiConfig, StreamingPsiConfig,
};
use freshet_drift::episodes::EpisodeConfig;
use freshet_drift::pending::PendingConfig;

/// Watches one model's examples: each feature the schema's monitoring plan watches (PSI by
/// default) and the live version's prediction error on each labelled example (ADWIN by
/// default), with false alarms controlled family-wise. Signals make episodes (opened, confirmed,
/// resolved), each transition published on <prefix>.control.<model>.drift; the record that
/// confirms an episode requests the reaction configured for the model, unless another is in
/// flight. Detector state and episodes are checkpointed in the DRIFT bucket (key <model>) before
/// messages are acknowledged, so a restart neither loses nor double-counts an example, nor
/// reports an episode twice.
#[derive(Debug, Parser)]
#[command(name = "freshet-drift", version)]
#[command(mut_arg("model", |a| a.help("Model whose examples are watched")))]
struct Args {
    #[command(flatten)]
    function: FunctionArgs,
    #[command(flatten)]
    artifacts: ArtifactArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Detectors on every watched feature, comma-separated: psi, page_hinkley, adwin, kswin; or
    /// none
    #[arg(
        long = "feature-detectors",
        env = "FRESHET_FEATURE_DETECTORS",
        default_value = "psi"
    )]
    feature_detectors: DetectorList,
    /// Detectors on the live version's prediction error, comma-separated: adwin and ddm read
    /// the 0/1 error, page_hinkley the log loss; or none. Only a rise is reported. They start
    /// afresh whenever live moves to another chain of versions
    #[arg(
        long = "error-detectors",
        env = "FRESHET_ERROR_DETECTORS",
        default_value = "adwin"
    )]
    error_detectors: DetectorList,
    /// The feature family's false-alarm budget per example, split equally over its tests
    /// (watched features × feature detectors): each test's significance level
    #[arg(
        long = "feature-alpha",
        env = "FRESHET_FEATURE_ALPHA",
        default_value_t = 1e-7
    )]
    feature_alpha: f64,
    /// The error family's false-alarm budget per example, split equally over the error
    /// detectors (ADWIN's δ, DDM's normal tail)
    #[arg(
        long = "error-alpha",
        env = "FRESHET_ERROR_ALPHA",
        default_value_t = 1e-3
    )]
    error_alpha: f64,
    /// Examples of a schema read before its features are watched, and of the model before its
    /// error is: while featurize's entity states fill and the first labels wait for their
    /// horizon, every feature and the error move by construction
    #[arg(long = "warm-up", env = "FRESHET_WARM_UP", default_value_t = 2_000)]
    warm_up: u64,
    /// Examples without any signal after which an open episode is resolved (the re-arm span: a
    /// new episode can open only after it)
    #[arg(long = "rearm", env = "FRESHET_REARM", default_value_t = 10_000)]
    rearm: u64,
    /// Views whose prediction is held until their label is final (delayed feedback: a fake
    /// negative waits for its correction or its final_at). A view beyond them is not held, and
    /// its error never judged (counted, logged)
    #[arg(
        long = "pending-views",
        env = "FRESHET_PENDING_VIEWS",
        default_value_t = freshet_drift::pending::DEFAULT_CAPACITY
    )]
    pending_views: usize,
    /// How far the event time that settles held views as negatives trails the latest example's:
    /// a correction from a featurize partition running behind the others by less is on time
    #[arg(long = "feedback-lateness", env = "FRESHET_FEEDBACK_LATENESS", default_value = "1m", value_parser = parse_duration)]
    feedback_lateness: std::time::Duration,
    /// Reaction requested when an episode is confirmed: alert, raise_lr or train_candidate
    /// (carried out by train and the promotion gate, not by drift)
    #[arg(long = "reaction", env = "FRESHET_REACTION", default_value = "alert")]
    reaction: Reaction,
    /// PSI: values making a feature's reference window (it then slides just behind the recent
    /// window)
    #[arg(
        long = "psi-reference-size",
        env = "FRESHET_PSI_REFERENCE_SIZE",
        default_value_t = 4_000
    )]
    psi_reference_size: usize,
    /// PSI: values in the sliding recent window compared with the reference
    #[arg(
        long = "psi-recent-size",
        env = "FRESHET_PSI_RECENT_SIZE",
        default_value_t = 2_000
    )]
    psi_recent_size: usize,
    /// PSI: quantile bins drawn from the reference
    #[arg(long = "psi-bins", env = "FRESHET_PSI_BINS", default_value_t = 10)]
    psi_bins: usize,
    /// Page-Hinkley threshold λ, in the units of what it reads (it takes no share of a budget)
    #[arg(
        long = "ph-threshold",
        env = "FRESHET_PH_THRESHOLD",
        default_value_t = 50.0
    )]
    ph_threshold: f64,
    /// Page-Hinkley tolerance δ
    #[arg(long = "ph-delta", env = "FRESHET_PH_DELTA", default_value_t = 0.005)]
    ph_delta: f64,
    /// ADWIN tests its cuts every this many values
    #[arg(long = "adwin-clock", env = "FRESHET_ADWIN_CLOCK", default_value_t = 1)]
    adwin_clock: u64,
    /// KSWIN sliding window size (at least twice the 30 values each test compares)
    #[arg(
        long = "kswin-window",
        env = "FRESHET_KSWIN_WINDOW",
        default_value_t = 100
    )]
    kswin_window: usize,
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
        let defaults = BankConfig::default();
        BankConfig {
            feature_detectors: self.feature_detectors.0.clone(),
            error_detectors: self.error_detectors.0.clone(),
            feature_alpha: self.feature_alpha,
            error_alpha: self.error_alpha,
            warm_up: self.warm_up,
            episodes: EpisodeConfig { rearm: self.rearm },
            pending: PendingConfig {
                capacity: self.pending_views,
                lateness_ms: i64::try_from(self.feedback_lateness.as_millis()).unwrap_or(i64::MAX),
            },
            psi: StreamingPsiConfig {
                psi: PsiConfig {
                    bins: self.psi_bins,
                    ..defaults.psi.psi
                },
                reference_size: self.psi_reference_size,
                recent_size: self.psi_recent_size,
                ..defaults.psi
            },
            page_hinkley: PageHinkleyConfig {
                threshold: self.ph_threshold,
                delta: self.ph_delta,
                ..defaults.page_hinkley
            },
            adwin: AdwinConfig {
                clock: self.adwin_clock,
                ..defaults.adwin
            },
            kswin: KswinConfig {
                window_size: self.kswin_window,
                ..defaults.kswin
            },
            ddm: defaults.ddm,
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
    let bank_config = args.bank_config();
    let pending = bank_config.pending;
    let bank = Bank::new(bank_config)?;
    let gate_config = args.gate_config()?;
    let ctx = FunctionContext::start("drift", args.function).await?;
    // CloudEvents pushed to /events (Knative Eventing) join the stream this function reads.
    ctx.serve_http(ctx.ingress(freshet::runtime::ingress::Input::Examples))
        .await?;
    // drift's own metrics carry the model it watches; the consumer loop's are per process.
    let model_metrics = ctx.metrics.for_model(&args.model.name.to_string());
    let metrics = metrics::DriftMetrics::default();
    metrics.register(&model_metrics, bank.config());

    let pointers = Pointers::new(ctx.js.get_key_value(BUCKET_MODELS).await?);
    let fallback = VersionCell::default();
    let follower = |slot: Slot, fallback: Option<VersionCell>| -> anyhow::Result<_> {
        Ok(Follower::new(
            args.model.name.clone(),
            slot,
            pointers.clone(),
            args.artifacts.open()?,
            live::DriftHooks {
                fallback,
                metrics: metrics.clone(),
            },
        ))
    };
    let mut live_follower = follower(Slot::Live, Some(fallback.clone()))?;
    let mut candidate_follower = follower(Slot::Candidate, None)?;
    let (live, candidate) = (live_follower.cell(), candidate_follower.cell());
    let promotion = (!args.no_gate).then(|| {
        let gate_metrics = promotion::GateMetrics::default();
        gate_metrics.register(&model_metrics);
        promotion::Promotion {
            model: args.model.name.clone(),
            gate: gate::Gate::new(gate_config),
            versions: promotion::Versions {
                candidate,
                fallback,
            },
            pointers: pointers.clone(),
            control: ctx.js.clone(),
            subjects: ctx.subjects.clone(),
            metrics: gate_metrics,
            settling: settling::Settling::new(pending),
        }
    });
    let durable = format!("drift-{}", args.model.name);
    let io = processor::Io {
        js: ctx.js.clone(),
        subjects: ctx.subjects.clone(),
        checkpoints: ctx.js.get_key_value(BUCKET_DRIFT).await?,
        order: OrderGuard::new(
            ctx.js.get_stream(STREAM_EXAMPLES).await?,
            ctx.subjects.examples(&args.model.name),
            durable.clone(),
        ),
        live,
        max_checkpoint_bytes: ctx.client.server_info().max_payload,
    };
    // The checkpoint is read with the first batch, under the lease: it is then the last
    // holder's final write.
    let processor = processor::DriftProcessor::new(
        args.model.name.clone(),
        args.reaction,
        bank,
        io,
        metrics,
        promotion,
    );
    // One drift per model: two would fight over the checkpoint. The others stand by.
    let lease_key = format!("drift.{}", args.model.name);
    let outcome = ctx
        .exclusively(&lease_key, async {
            // The first batch is scored by the version live now; the watch follows it from there.
            let stopped =
                |mut shutdown: freshet::shutdown::Shutdown| async move { shutdown.wait().await };
            live_follower.load_current().await;
            tokio::spawn(live_follower.run(stopped(ctx.shutdown.clone())));
            if !args.no_gate {
                candidate_follower.load_current().await;
                tokio::spawn(candidate_follower.run(stopped(ctx.shutdown.clone())));
            }
            ctx.consume(
                STREAM_EXAMPLES,
                &durable,
                vec![ctx.subjects.examples(&args.model.name)],
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
    fn detectors_budgets_and_reaction_are_chosen_by_flag() {
        let args = Args::try_parse_from([
            "drift",
            "--feature-detectors",
            "kswin,adwin",
            "--error-detectors",
            "none",
            "--reaction",
            "train_candidate",
            "--feature-alpha",
            "1e-6",
            "--rearm",
            "300",
        ])
        .unwrap();
        let config = args.bank_config();
        assert_eq!(
            config.feature_detectors,
            vec![DetectorKind::Kswin, DetectorKind::Adwin]
        );
        assert!(config.error_detectors.is_empty());
        assert_eq!(config.feature_alpha, 1e-6);
        assert_eq!(config.episodes.rearm, 300);
        assert_eq!(args.reaction, Reaction::TrainCandidate);
        assert!(Bank::new(config).is_ok());
        assert!(Args::try_parse_from(["drift", "--reaction", "retrain"]).is_err());
        assert!(Args::try_parse_from(["drift", "--error-detectors", "psi,ks"]).is_err());
        let misplaced = Args::try_parse_from(["drift", "--feature-detectors", "ddm"]).unwrap();
        assert!(Bank::new(misplaced.bank_config()).is_err());
        let overspent = Args::try_parse_from(["drift", "--error-alpha", "0.7"]).unwrap();
        assert!(Bank::new(overspent.bank_config()).is_err());
        let held = Args::try_parse_from([
            "drift",
            "--pending-views",
            "500",
            "--feedback-lateness",
            "30s",
        ])
        .unwrap();
        assert_eq!(
            held.bank_config().pending,
            PendingConfig {
                capacity: 500,
                lateness_ms: 30_000
            }
        );
        let none_held = Args::try_parse_from(["drift", "--pending-views", "0"]).unwrap();
        assert!(Bank::new(none_held.bank_config()).is_err());
    }

    #[test]
    fn help_names_every_environment_variable() {
        let help = Args::command().render_long_help().to_string();
        for var in [
            "FRESHET_FEATURE_DETECTORS",
            "FRESHET_ERROR_DETECTORS",
            "FRESHET_FEATURE_ALPHA",
            "FRESHET_ERROR_ALPHA",
            "FRESHET_WARM_UP",
            "FRESHET_REARM",
            "FRESHET_REACTION",
            "FRESHET_PSI_REFERENCE_SIZE",
            "FRESHET_PSI_RECENT_SIZE",
            "FRESHET_PSI_BINS",
            "FRESHET_PH_THRESHOLD",
            "FRESHET_PH_DELTA",
            "FRESHET_ADWIN_CLOCK",
            "FRESHET_KSWIN_WINDOW",
        ] {
            assert!(help.contains(var), "{var}");
        }
    }
}
