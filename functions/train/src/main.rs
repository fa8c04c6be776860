//! train: mini-batch incremental learning of one model from EXAMPLES, publishing versions.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod handler;
mod trainer;

use std::time::Duration;

use clap::Parser;
use freshet::aggregates::ewma::Decay;
use freshet::config::FunctionArgs;
use freshet::ids::ModelName;
use freshet::model::{Hyper, ModelConfig, ModelKind, Optimizer};
use freshet::runtime::FunctionContext;
use freshet::runtime::order::OrderGuard;
use freshet::store::Pointers;
use freshet::subjects::{BUCKET_MODELS, STREAM_EXAMPLES};

/// Trains one model from its examples: each batch is scored (prequential metrics), then learned
/// with SGD; every few batches a new immutable version goes to the object store and the model's
/// live pointer moves to it. Messages are acknowledged only once the version holding them is live.
#[derive(Debug, Parser)]
#[command(name = "train", version)]
struct Args {
    #[command(flatten)]
    function: FunctionArgs,
    /// Model to train (its examples are on <prefix>.examples.<model>)
    #[arg(long = "model", env = "FRESHET_MODEL", default_value = "bookstore")]
    model: ModelName,
    /// Model family: logistic, mlp or factorization_machine (a lineage keeps the kind it began
    /// with)
    #[arg(long = "kind", env = "FRESHET_MODEL_KIND", default_value = "logistic")]
    kind: ModelKind,
    /// Hidden ReLU units of an mlp
    #[arg(long = "hidden", env = "FRESHET_HIDDEN", default_value_t = freshet::model::DEFAULT_HIDDEN)]
    hidden: usize,
    /// Latent factors per feature of a factorization_machine
    #[arg(long = "factors", env = "FRESHET_FACTORS", default_value_t = freshet::model::DEFAULT_FACTORS)]
    factors: usize,
    /// Seed of the initial parameters (mlp, factorization_machine)
    #[arg(long = "seed", env = "FRESHET_SEED", default_value_t = 0)]
    seed: u64,
    /// Optimizer: sgd, or adam (β1 0.9, β2 0.999, ε 1e-8; its moments are saved in the artifact)
    #[arg(long = "optimizer", env = "FRESHET_OPTIMIZER", default_value = "sgd")]
    optimizer: Optimizer,
    /// Initial learning rate η0; the rate at step t is η0 / (1 + α·t)
    #[arg(
        long = "learning-rate",
        env = "FRESHET_LEARNING_RATE",
        default_value_t = 0.5
    )]
    learning_rate: f64,
    /// Learning-rate decay α
    #[arg(long = "lr-decay", env = "FRESHET_LR_DECAY", default_value_t = 0.01)]
    lr_decay: f64,
    /// L2 regularisation λ
    #[arg(long = "l2", env = "FRESHET_L2", default_value_t = 1e-4)]
    l2: f64,
    /// Publish a version after this many trained batches...
    #[arg(
        long = "publish-every-batches",
        env = "FRESHET_PUBLISH_EVERY_BATCHES",
        default_value_t = 1
    )]
    publish_every_batches: usize,
    /// ...or this long after the first unpublished batch, whichever comes first
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
    /// β of an exponentially weighted input scaler: each feature is standardised by the same
    /// EWMA mean and variance featurize keeps of it (its --ewma-decay), which follow features
    /// whose scale drifts; nearer 1 remembers longer (0.999 ≈ the last thousand examples).
    /// Unset, the scaler is Welford's over every example. A lineage keeps the scaler it began with
    #[arg(long = "scaler-decay", env = "FRESHET_SCALER_DECAY")]
    scaler_decay: Option<Decay>,
    /// Examples in the prequential metrics window
    #[arg(
        long = "metrics-window",
        env = "FRESHET_METRICS_WINDOW",
        default_value_t = 1000
    )]
    metrics_window: usize,
}

/// mimalloc: the functions allocate and free many small buffers per message, which it serves
/// faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = FunctionContext::start("train", args.function).await?;
    // CloudEvents pushed to /events (Knative Eventing) join the stream this function reads.
    ctx.serve_http(ctx.ingress(freshet::runtime::ingress::Input::Examples))
        .await?;
    let pointers = Pointers::new(ctx.js.get_key_value(BUCKET_MODELS).await?);
    let config = ModelConfig {
        kind: args.kind,
        hyper: Hyper {
            learning_rate: args.learning_rate,
            decay: args.lr_decay,
            l2: args.l2,
            optimizer: args.optimizer,
        },
        hidden: args.hidden,
        factors: args.factors,
        seed: args.seed,
        scaler_decay: args.scaler_decay,
    };
    config.validate()?;
    let metrics = trainer::TrainMetrics::default();
    metrics.register(&ctx.metrics);
    let durable = format!("train-{}", args.model);
    let io = trainer::Io {
        js: ctx.js.clone(),
        subjects: ctx.subjects.clone(),
        artifacts: ctx.artifacts()?,
        pointers,
        order: OrderGuard::new(
            ctx.js.get_stream(STREAM_EXAMPLES).await?,
            ctx.subjects.examples(&args.model),
            durable.clone(),
        ),
    };
    let cadence = trainer::Cadence {
        every_batches: args.publish_every_batches.max(1),
        every: args.publish_interval,
        keep_versions: args.keep_versions,
    };
    let mut trainer = trainer::Trainer::new(
        args.model.clone(),
        config,
        cadence,
        args.metrics_window,
        io,
        metrics,
    );
    // One trainer per model: the others stand by until the lease is free.
    let lease_key = format!("train.{}", args.model);
    ctx.exclusively(&lease_key, async {
        trainer.resume().await?;
        // Held messages wait for the version that learns them; at most this many batches.
        let max_held = ctx
            .args
            .batch_size()
            .saturating_mul(args.publish_every_batches.max(1));
        ctx.consume(
            STREAM_EXAMPLES,
            &durable,
            vec![ctx.subjects.examples(&args.model)],
            max_held,
            trainer,
        )
        .await
    })
    .await
}
