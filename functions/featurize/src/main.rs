//! featurize: turns events into entity state (FEATURES) and training examples (EXAMPLES).

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod handler;
mod processor;

use clap::Parser;
use freshet::config::FunctionArgs;
use freshet::ids::ModelName;
use freshet::runtime::FunctionContext;
use freshet::runtime::order::OrderGuard;
use freshet::subjects::{BUCKET_FEATURES, STREAM_EVENTS};

/// Streaming features: consumes EVENTS, keeps user and item state in the FEATURES bucket, and
/// publishes a labelled example per user action to EXAMPLES.
#[derive(Debug, Parser)]
#[command(name = "featurize", version)]
struct Args {
    #[command(flatten)]
    function: FunctionArgs,
    /// Model the bookstore examples are published for
    #[arg(long = "model", env = "FRESHET_MODEL", default_value = "bookstore")]
    model: ModelName,
    /// Consume only this partition (durable "featurize-<N>"); all partitions when unset
    #[arg(long = "partition", env = "FRESHET_PARTITION")]
    partition: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = FunctionContext::start("featurize", args.function).await?;
    ctx.serve_http(axum::Router::new()).await?;
    let features = ctx.js.get_key_value(BUCKET_FEATURES).await?;
    let (durable, filter) = match args.partition {
        Some(p) => (
            format!("featurize-{p}"),
            ctx.subjects.events_stored_partition(p),
        ),
        None => ("featurize".to_string(), ctx.subjects.events_stored_all()),
    };
    let featurizer = processor::Featurizer {
        js: ctx.js.clone(),
        features,
        subjects: ctx.subjects.clone(),
        model: args.model,
        max_event_bytes: ctx.args.max_event_bytes,
        order: OrderGuard::new(
            ctx.js.get_stream(STREAM_EVENTS).await?,
            filter.clone(),
            durable.clone(),
        ),
        mark: None,
    };
    let batch_size = ctx.args.batch_size;
    ctx.consume(
        STREAM_EVENTS,
        &durable,
        vec![filter],
        batch_size,
        featurizer,
    )
    .await
}
