//! train: mini-batch incremental learning of one model from EXAMPLES, publishing versions.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod handler;
mod population;
mod processor;
mod quality;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use freshet::config::{FunctionArgs, ModelArgs};
use freshet::control::{DriftNotice, KIND_DRIFT, Reaction};
use freshet::ids::ModelName;
use freshet::runtime::FunctionContext;
use freshet::runtime::order::OrderGuard;
use freshet::stats::ewma::Decay;
use freshet::store::Declarations;
use freshet::subjects::{BUCKET_MODELS, STREAM_EXAMPLES};
use freshet_model::store::{ArtifactArgs, Pointers};
use freshet_model::{Dimensions, Hyper, ModelConfig, ModelKind, Optimizer};
use futures::StreamExt;

use crate::quality::{Quality, QualityConfig};

/// Trains one model from its examples: each batch is learned in steps of a few rows (one by
/// default), each step's rows scored first (prequential metrics); every few batches a new immutable version goes to the object store and the model's
/// live pointer moves to it. Messages are acknowledged only once the version holding them is live.
#[derive(Debug, Parser)]
#[command(name = "freshet-train", version)]
#[command(mut_arg("model", |a| a.help("Model to train (its examples are on <prefix>.examples.<model>)")))]
struct Args {
    #[command(flatten)]
    function: FunctionArgs,
    #[command(flatten)]
    artifacts: ArtifactArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Model family: logistic, mlp, factorization_machine, or fourier (random Fourier features
    /// under a logistic output, for a few features with a non-linear boundary); a lineage keeps
    /// the kind it began with
    #[arg(long = "kind", env = "FRESHET_MODEL_KIND", default_value = "logistic")]
    kind: ModelKind,
    /// Hidden ReLU units of an mlp (default 16), cosine features of a fourier model (default 256)
    #[arg(long = "hidden", env = "FRESHET_HIDDEN")]
    hidden: Option<usize>,
    /// Latent factors per feature of a factorization_machine
    #[arg(long = "factors", env = "FRESHET_FACTORS", default_value_t = freshet_model::DEFAULT_FACTORS)]
    factors: usize,
    /// Seed of the initial parameters (mlp, factorization_machine, fourier)
    #[arg(long = "seed", env = "FRESHET_SEED", default_value_t = 0)]
    seed: u64,
    /// Optimizer: sgd, or adam (β1 0.9, β2 0.999, ε 1e-8; its moments are saved in the artifact)
    #[arg(long = "optimizer", env = "FRESHET_OPTIMIZER", default_value = "sgd")]
    optimizer: Optimizer,
    /// Initial learning rate η0 of each optimizer step; the rate at step t is η0 / (1 + α·t)
    #[arg(
        long = "learning-rate",
        env = "FRESHET_LEARNING_RATE",
        default_value_t = Hyper::default().learning_rate
    )]
    learning_rate: f64,
    /// Learning-rate decay α per step; 0 keeps the rate constant, so the model keeps following
    /// a concept that drifts
    #[arg(long = "lr-decay", env = "FRESHET_LR_DECAY", default_value_t = Hyper::default().decay)]
    lr_decay: f64,
    /// L2 regularisation λ
    #[arg(long = "l2", env = "FRESHET_L2", default_value_t = Hyper::default().l2)]
    l2: f64,
    /// Rows per optimizer step within a fetched batch: 1 learns each row in turn, as an online
    /// learner does, whatever the batch size; 0 takes one step per batch (faster for wide
    /// models, at a cost in accuracy that grows with the batch)
    #[arg(
        long = "rows-per-step",
        env = "FRESHET_ROWS_PER_STEP",
        default_value_t = Hyper::default().rows_per_step
    )]
    rows_per_step: usize,
    /// Publish a version after this many trained batches...
    #[arg(
        long = "publish-every-batches",
        env = "FRESHET_PUBLISH_EVERY_BATCHES",
        default_value_t = 1
    )]
    publish_every_batches: usize,
    /// ...or this long after the oldest unpublished example was stored (or after the last
    /// version, if later), whichever comes first
    #[arg(long = "publish-interval", env = "FRESHET_PUBLISH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    publish_interval: Duration,
    /// Versions kept in the object store besides every version a pointer (or its kept history)
    /// names; older ones are deleted after each publish. 0 keeps every version
    #[arg(
        long = "keep-versions",
        env = "FRESHET_KEEP_VERSIONS",
        default_value_t = 100
    )]
    keep_versions: usize,
    /// Besides those, every version written within this long (e.g. 1h); 0s keeps none by age.
    /// At about a version a second, an hour is some 3600 versions in the object store
    #[arg(long = "keep-all-for", env = "FRESHET_KEEP_ALL_FOR", default_value = "0s", value_parser = humantime::parse_duration)]
    keep_all_for: Duration,
    /// Besides those, the newest version of each clock hour (UTC) written within this long (e.g.
    /// 7d: 168 versions), so `freshet models rollback --to-time` reaches this morning's model;
    /// 0s keeps none
    #[arg(long = "keep-hourly-for", env = "FRESHET_KEEP_HOURLY_FOR", default_value = "7d", value_parser = humantime::parse_duration)]
    keep_hourly_for: Duration,
    /// β of an exponentially weighted input scaler: each feature is standardised by the same
    /// EWMA mean and variance featurize keeps of it (its --ewma-decay), which follow features
    /// whose scale drifts; nearer 1 remembers longer (0.999 ≈ the last thousand examples).
    /// Unset, the scaler is Welford's over every example. A lineage keeps the scaler it began with
    #[arg(long = "scaler-decay", env = "FRESHET_SCALER_DECAY")]
    scaler_decay: Option<Decay>,
    /// Members learning beside live, offered to the promotion gate as the candidate: `none`,
    /// `auto` (logistic, mlp and fourier, with the model's settings) or kinds separated by
    /// commas (e.g. `logistic,fourier`). Every member learns every example in the same batches;
    /// after each live version the challenger leading the others over the metrics window (by
    /// --population-margin to take over from the one chosen before), if it leads live too, is
    /// published to the candidate slot, and the gate promotes it if it beats live on examples
    /// neither learned. The model's own --kind is always a member
    #[arg(
        long = "population",
        env = "FRESHET_POPULATION",
        default_value = "none"
    )]
    population: String,
    /// Accuracy over the metrics window by which a challenger must lead the one chosen before
    /// to replace it as the candidate (hysteresis: the choice does not flap)
    #[arg(
        long = "population-margin",
        env = "FRESHET_POPULATION_MARGIN",
        default_value_t = population::MARGIN
    )]
    population_margin: f64,
    /// Examples in the prequential metrics window
    #[arg(
        long = "metrics-window",
        env = "FRESHET_METRICS_WINDOW",
        default_value_t = 1000
    )]
    metrics_window: usize,
    /// Data quality: examples in the window over which the share of suspect (unreadable or
    /// out-of-range) examples is measured
    #[arg(
        long = "quarantine-window",
        env = "FRESHET_QUARANTINE_WINDOW",
        default_value_t = 200
    )]
    quarantine_window: usize,
    /// Data quality: the share of the window at which a quarantine starts (the learned ranges
    /// freeze until it ends; only suspect examples are held out); 1 never starts one
    #[arg(
        long = "quarantine-enter",
        env = "FRESHET_QUARANTINE_ENTER",
        default_value_t = 0.2
    )]
    quarantine_enter: f64,
    /// Data quality: the share at or below which the quarantine ends
    #[arg(
        long = "quarantine-exit",
        env = "FRESHET_QUARANTINE_EXIT",
        default_value_t = 0.05
    )]
    quarantine_exit: f64,
    /// Data quality: a value is out of range when it lies more than this many spans of the
    /// learned range beyond it (such an example is never learned)
    #[arg(
        long = "quarantine-span-factor",
        env = "FRESHET_QUARANTINE_SPAN_FACTOR",
        default_value_t = 4.0
    )]
    quarantine_span_factor: f32,
}

/// mimalloc: the functions allocate and free many small buffers per message, which it serves
/// faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Forwards the reactions drift requests for `model` (raise the learning rate, train a
/// candidate) to the trainer, which applies them before its next batch. A reaction requested
/// while no trainer runs is not replayed: drift detects the change again if it persists.
async fn listen_for_reactions(
    ctx: &FunctionContext,
    model: &ModelName,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<(Reaction, u64)>> {
    let mut notices = ctx
        .client
        .subscribe(ctx.subjects.control(model, KIND_DRIFT))
        .await?;
    let (requests, reactions) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = notices.next().await {
            match serde_json::from_slice::<DriftNotice>(&message.payload) {
                Ok(notice) => {
                    if let Some(reaction) = notice.requested() {
                        tracing::info!(%reaction, monitored = %notice.target, sequence = notice.sequence, episode = notice.episode, "drift asks for a reaction");
                        if requests.send((reaction, notice.sequence)).is_err() {
                            return;
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "unreadable drift event; ignored"),
            }
        }
    });
    Ok(reactions)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = FunctionContext::start("train", args.function).await?;
    // CloudEvents pushed to /events (Knative Eventing) join the stream this function reads.
    ctx.serve_http(ctx.ingress(freshet::runtime::ingress::Input::Examples))
        .await?;
    let models = ctx.key_value(BUCKET_MODELS).await?;
    let (pointers, declarations) = (Pointers::new(models.clone()), Declarations::new(models));
    let config = ModelConfig {
        // The kind's dimensions come from their own flags; one it does not have is ignored.
        kind: args.kind.with_dimensions(Dimensions {
            hidden: args.hidden,
            factors: Some(args.factors),
        }),
        hyper: Hyper {
            learning_rate: args.learning_rate,
            decay: args.lr_decay,
            l2: args.l2,
            optimizer: args.optimizer,
            rows_per_step: args.rows_per_step,
        },
        seed: args.seed,
        scaler_decay: args.scaler_decay,
    };
    config.validate()?;
    let members = population::members(
        &args.population,
        &config,
        Dimensions {
            hidden: args.hidden,
            factors: Some(args.factors),
        },
    )
    .map_err(|e| anyhow::anyhow!("--population: {e}"))?;
    anyhow::ensure!(
        (0.0..1.0).contains(&args.population_margin),
        "--population-margin must be in [0, 1)"
    );
    let metrics = processor::TrainMetrics::default();
    // train's own metrics carry the model it trains; the consumer loop's are per process.
    metrics.register(&ctx.metrics.for_model(&args.model.name.to_string()));
    let durable = format!("train-{}", args.model.name);
    let io = processor::Io {
        subjects: ctx.subjects.clone(),
        artifacts: args.artifacts.open()?,
        pointers,
        declarations,
        control: ctx.js.clone(),
        order: OrderGuard::new(
            ctx.stream(STREAM_EXAMPLES).await?,
            ctx.subjects.examples(&args.model.name),
            durable.clone(),
        ),
    };
    let cadence = processor::Cadence {
        every_batches: args.publish_every_batches.max(1),
        every: args.publish_interval,
        retention: freshet_model::store::Retention {
            keep_newest: args.keep_versions,
            keep_all_for: chrono::Duration::from_std(args.keep_all_for)
                .context("--keep-all-for is too long")?,
            keep_hourly_for: chrono::Duration::from_std(args.keep_hourly_for)
                .context("--keep-hourly-for is too long")?,
        },
    };
    anyhow::ensure!(
        args.quarantine_window > 0
            && (0.0..=1.0).contains(&args.quarantine_exit)
            && args.quarantine_exit < args.quarantine_enter
            && args.quarantine_enter <= 1.0
            && args.quarantine_span_factor > 0.0,
        "quarantine settings: the window must be positive and 0 <= exit < enter <= 1, span factor > 0"
    );
    let quality = Quality::new(QualityConfig {
        window: args.quarantine_window,
        enter: args.quarantine_enter,
        exit: args.quarantine_exit,
        span_factor: args.quarantine_span_factor,
        ..QualityConfig::default()
    });
    let mut trainer = processor::Trainer::new(
        args.model.name.clone(),
        config,
        cadence,
        args.metrics_window,
        io,
        metrics,
        quality,
    );
    trainer.with_population(
        members,
        population::SelectionConfig {
            margin: args.population_margin,
            min_examples: population::min_examples(args.metrics_window),
        },
    );
    trainer.listen(listen_for_reactions(&ctx, &args.model.name).await?);
    // One trainer per model: the others stand by until the lease is free.
    let lease_key = format!("train.{}", args.model.name);
    let outcome = ctx
        .exclusively(&lease_key, async {
            trainer.resume().await?;
            // Held messages wait for the version that learns them; at most this many batches.
            let max_held = ctx
                .args
                .batch_size()
                .saturating_mul(args.publish_every_batches.max(1));
            ctx.consume(
                STREAM_EXAMPLES,
                &durable,
                vec![ctx.subjects.examples(&args.model.name)],
                max_held,
                trainer,
            )
            .await
        })
        .await;
    ctx.flush_spans().await;
    outcome
}
