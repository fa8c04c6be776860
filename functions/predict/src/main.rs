//! predict: a stateless predictor that hot-swaps to each new live version of its model.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod catalog;
mod handler;
mod http;
mod outcomes;
mod readiness;
mod recorder;
mod service;
mod spans;
mod swaps;

use clap::Parser;
use freshet::config::{FunctionArgs, ModelArgs, parse_fraction};
use freshet::runtime::FunctionContext;
use std::sync::Arc;

use freshet::subjects::{BUCKET_FEATURES, BUCKET_MODELS, STREAM_EVENTS, STREAM_PREDICTIONS};
use freshet_model::store::{ArtifactArgs, Follower, Pointers, Slot};

/// Serves a model over NATS request/reply on <prefix>.predict.<model> (and .batch), watching
/// MODELS for the model's live pointer and swapping each new version in with no failed request.
#[derive(Debug, Parser)]
#[command(name = "freshet-predict", version)]
#[command(mut_arg("model", |a| a.help("Model to serve")))]
struct Args {
    #[command(flatten)]
    function: FunctionArgs,
    #[command(flatten)]
    artifacts: ArtifactArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// Share of entities (0 to 1) answered by the candidate version when one is loaded (A/B);
    /// the other variant always scores in shadow
    #[arg(long = "candidate-share", env = "FRESHET_CANDIDATE_SHARE", default_value_t = 0.0, value_parser = parse_fraction)]
    candidate_share: f64,
    /// Record every prediction on PREDICTIONS (needed for shadow comparison and the outcome join)
    #[arg(long = "record-predictions", env = "FRESHET_RECORD_PREDICTIONS", default_value_t = true, action = clap::ArgAction::Set)]
    record_predictions: bool,
    /// Oldest the live version may be (e.g. "10m"); older, /readyz fails. Unbounded if unset
    #[arg(long = "max-model-age", env = "FRESHET_MAX_MODEL_AGE", value_parser = humantime::parse_duration)]
    max_model_age: Option<std::time::Duration>,
}

/// mimalloc: the functions allocate and free many small buffers per message, which it serves
/// faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Its CloudEvents endpoint is `POST /`, answered with a prediction: nothing is pushed to it.
    anyhow::ensure!(
        args.function.events == freshet::config::PushEvents::Off,
        "predict takes no pushed events (--events): its CloudEvents endpoint is POST /"
    );
    let ctx = Arc::new(FunctionContext::start("predict", args.function).await?);
    // predict's own metrics carry the model it serves; the consumer loop's are per process.
    let model_metrics = ctx.metrics.for_model(&args.model.name.to_string());
    let swap_metrics = swaps::SwapMetrics::default();
    swap_metrics.register(&model_metrics);
    let serve_metrics = service::ServeMetrics::default();
    serve_metrics.register(&model_metrics);
    let recorder = args.record_predictions.then(|| {
        let metrics = recorder::RecorderMetrics::default();
        metrics.register(&model_metrics);
        recorder::Recorder::new(metrics)
    });
    let pointers = Pointers::new(ctx.js.get_key_value(BUCKET_MODELS).await?);
    let features = ctx.js.get_key_value(BUCKET_FEATURES).await?;
    let announcements =
        swaps::Announcements::start(ctx.js.clone(), &ctx.subjects, &args.model.name);
    let follower = |slot: Slot| -> anyhow::Result<_> {
        Ok(Follower::new(
            args.model.name.clone(),
            slot,
            pointers.clone(),
            args.artifacts.open()?,
            swaps::SwapHooks {
                model: args.model.name.clone(),
                slot,
                metrics: swap_metrics.clone(),
                announcements: announcements.clone(),
            },
        ))
    };
    let (live, candidate) = (follower(Slot::Live)?, follower(Slot::Candidate)?);
    let server = std::sync::Arc::new(service::Server {
        model: args.model.name.clone(),
        live: live.cell(),
        candidate: candidate.cell(),
        candidate_share: args.candidate_share,
        recorder: recorder.clone(),
        catalog: catalog::Catalog::default(),
        features: features.clone(),
        subjects: ctx.subjects.clone(),
        metrics: serve_metrics,
        spans: ctx.spans.clone(),
    });
    let stopped = |mut shutdown: freshet::shutdown::Shutdown| async move { shutdown.wait().await };
    let mut tasks = vec![
        tokio::spawn(live.run(stopped(ctx.shutdown.clone()))),
        tokio::spawn(candidate.run(stopped(ctx.shutdown.clone()))),
    ];
    tasks.push(tokio::spawn(
        server
            .catalog
            .clone()
            .follow(features, ctx.shutdown.clone()),
    ));
    tasks.push(tokio::spawn(readiness::track(
        server.live.clone(),
        ctx.readiness.clone(),
        model_metrics.clone(),
        args.max_model_age,
        ctx.shutdown.clone(),
    )));
    ctx.http
        .warn_if_open("predict's Open Inference Protocol and CloudEvents endpoints");
    ctx.serve_http_with(
        http::probe_routes(ctx.readiness.clone()),
        http::routes(server.clone()),
    )
    .await?;

    // The outcome join runs beside serving, on its own durable consumer of EVENTS.
    let outcome_metrics = outcomes::OutcomeMetrics::default();
    outcome_metrics.register(&model_metrics);
    let joiner = outcomes::OutcomeJoiner {
        model: args.model.name.clone(),
        js: ctx.js.clone(),
        predictions: ctx.js.get_stream(STREAM_PREDICTIONS).await?,
        subjects: ctx.subjects.clone(),
        max_event_bytes: ctx.args.max_event_bytes,
        metrics: outcome_metrics,
    };
    let join_ctx = ctx.clone();
    let durable = format!("outcomes-{}", args.model.name);
    let filter = join_ctx.subjects.events_stored_type("outcome");
    let batch_size = join_ctx.args.batch_size();
    tasks.push(tokio::spawn(async move {
        if let Err(err) = join_ctx
            .consume_alongside(STREAM_EVENTS, &durable, vec![filter], batch_size, joiner)
            .await
        {
            tracing::error!(error = %err, "the outcome join stopped");
        }
    }));

    // Recorded predictions are flushed until serving has stopped, so the last answers given are
    // recorded too.
    let (served_all, serving_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(recorder) = recorder {
        // A connection of its own: a batch of records (tens of KB) never queues on the socket,
        // or in the server's read of it, ahead of a reply.
        let recording =
            freshet::connect::connect(&ctx.args.common.nats, "predict-recorder").await?;
        tasks.push(tokio::spawn(recorder.flush_until(
            ctx.args.common.nats.jetstream(recording),
            ctx.subjects.clone(),
            args.model.name.clone(),
            async move {
                let _ = serving_stopped.await;
            },
        )));
    }
    let served = service::serve(ctx.client.clone(), server, ctx.shutdown.clone()).await;
    drop(served_all);
    if served.is_ok() {
        for task in tasks {
            let _ = task.await;
        }
    }
    ctx.flush_spans().await;
    served?;
    tracing::info!("predictor stopped");
    Ok(())
}
