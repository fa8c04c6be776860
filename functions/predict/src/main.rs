//! predict: a stateless predictor that hot-swaps to each new live version of its model.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod handler;
mod live;
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
    let readiness = ctx.readiness.clone();
    let metrics = ctx.metrics.clone();
    let watch_task = tokio::spawn(watcher.run(ctx.shutdown.clone()));
    // Ready once a version serves: until then every request would fail.
    let ready_live = live.clone();
    let mut ready_shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        while ready_live.version().is_none() {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                _ = ready_shutdown.wait() => return,
            }
        }
        readiness.set(true, &metrics);
    });
    ctx.serve_http(axum::Router::new()).await?;
    let server = service::Server {
        model: args.model,
        live,
        features: ctx.js.get_key_value(BUCKET_FEATURES).await?,
        js: ctx.js.clone(),
        subjects: ctx.subjects.clone(),
    };
    service::serve(ctx.client.clone(), server, ctx.shutdown.clone()).await?;
    let _ = watch_task.await;
    tracing::info!("predictor stopped");
    Ok(())
}
