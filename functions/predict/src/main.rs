//! predict: a stateless predictor that hot-swaps to each new live version of its model.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod handler;
mod http;
mod live;
mod readiness;
mod service;
mod watch;

use clap::Parser;
use freshet::config::FunctionArgs;
use freshet::ids::ModelName;
use freshet::runtime::FunctionContext;
use freshet::subjects::{BUCKET_FEATURES, BUCKET_MODELS};

/// Serves a model over NATS request/reply on <prefix>.predict.<model> (and .batch), watching
/// MODELS for the model's live pointer and swapping each new version in with no failed request.
#[derive(Debug, Parser)]
#[command(name = "predict", version)]
struct Args {
    #[command(flatten)]
    function: FunctionArgs,
    /// Model to serve
    #[arg(long = "model", env = "FRESHET_MODEL", default_value = "bookstore")]
    model: ModelName,
    /// Oldest the live version may be (e.g. "10m"); older, /readyz fails. Unbounded if unset
    #[arg(long = "max-model-age", env = "FRESHET_MAX_MODEL_AGE", value_parser = humantime::parse_duration)]
    max_model_age: Option<std::time::Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = FunctionContext::start("predict", args.function).await?;
    let live = live::Live::default();
    let swap_metrics = watch::SwapMetrics::default();
    swap_metrics.register(&ctx.metrics);
    let watcher = watch::Watcher {
        model: args.model.clone(),
        models: ctx.js.get_key_value(BUCKET_MODELS).await?,
        artifacts: ctx.artifacts()?,
        live: live.clone(),
        js: ctx.js.clone(),
        subjects: ctx.subjects.clone(),
        metrics: swap_metrics,
    };
    let watch_task = tokio::spawn(watcher.run(ctx.shutdown.clone()));
    let server = service::Server {
        model: args.model,
        live,
        features: ctx.js.get_key_value(BUCKET_FEATURES).await?,
        js: ctx.js.clone(),
        subjects: ctx.subjects.clone(),
    };
    ctx.serve_http(http::routes(server.clone(), ctx.readiness.clone())).await?;
    tokio::spawn(readiness::track(server.live.clone(), ctx.readiness.clone(), ctx.metrics.clone(), args.max_model_age, ctx.shutdown.clone()));
    service::serve(ctx.client.clone(), server, ctx.shutdown.clone()).await?;
    let _ = watch_task.await;
    tracing::info!("predictor stopped");
    Ok(())
}
