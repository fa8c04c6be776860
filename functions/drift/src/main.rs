//! drift: watches a model's examples for changes in each feature's distribution.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

// Only Page-Hinkley is wired into the consumer so far; the other detectors and their re-exports
// are used by tests until the function can choose among them.
#[allow(dead_code, unused_imports)]
mod detectors;
// The bank is not wired into the consumer yet.
#[allow(dead_code)]
mod bank;
mod handler;

use bytes::Bytes;
use clap::Parser;
use freshet::config::FunctionArgs;
use freshet::examples::ExampleRecord;
use freshet::ids::ModelName;
use freshet::runtime::{Disposition, FunctionContext, Incoming, Processor};
use freshet::subjects::{STREAM_EXAMPLES, Subjects};
use serde_json::json;

/// Runs a Page-Hinkley detector on every feature of a model's examples and publishes each
/// detected change on <prefix>.control.<model>.drift.
#[derive(Debug, Parser)]
#[command(name = "drift", version)]
struct Args {
    #[command(flatten)]
    function: FunctionArgs,
    /// Model whose examples are watched
    #[arg(long = "model", env = "FRESHET_MODEL", default_value = "bookstore")]
    model: ModelName,
    /// Page-Hinkley threshold λ: larger means fewer, surer detections
    #[arg(
        long = "ph-threshold",
        env = "FRESHET_PH_THRESHOLD",
        default_value_t = 50.0
    )]
    threshold: f64,
    /// Page-Hinkley tolerance δ
    #[arg(long = "ph-delta", env = "FRESHET_PH_DELTA", default_value_t = 0.005)]
    delta: f64,
}

struct DriftWatcher {
    model: ModelName,
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    detectors: handler::FeatureDetectors,
}

impl Processor for DriftWatcher {
    async fn process(&mut self, batch: &[Incoming]) -> Vec<Disposition> {
        let mut out = Vec::with_capacity(batch.len());
        for message in batch {
            let example = match ExampleRecord::decode(&message.payload) {
                Ok(example) => example,
                Err(rejection) => {
                    out.push(Disposition::Reject(rejection));
                    continue;
                }
            };
            for (feature, change) in self.detectors.update(&example.features) {
                tracing::info!(model = %self.model, feature, statistic = change.statistic, "feature drift detected");
                let body = json!({"kind": "drift", "model": self.model, "detector": "page_hinkley", "feature": feature,
                    "statistic": change.statistic, "window": change.observations, "upward": change.upward,
                    "sequence": message.stream_sequence, "at": message.published});
                if let Err(err) = self
                    .js
                    .publish(
                        self.subjects.control(&self.model, "drift"),
                        Bytes::from(body.to_string()),
                    )
                    .await
                {
                    tracing::warn!(error = %err, "cannot publish a drift event");
                }
            }
            out.push(Disposition::Ack);
        }
        out
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = FunctionContext::start("drift", args.function).await?;
    ctx.serve_http(axum::Router::new()).await?;
    let config = handler::PageHinkleyConfig {
        threshold: args.threshold,
        delta: args.delta,
        ..Default::default()
    };
    let watcher = DriftWatcher {
        model: args.model.clone(),
        js: ctx.js.clone(),
        subjects: ctx.subjects.clone(),
        detectors: handler::FeatureDetectors::new(config)?,
    };
    let durable = format!("drift-{}", args.model);
    let batch_size = ctx.args.batch_size;
    ctx.consume(
        STREAM_EXAMPLES,
        &durable,
        vec![ctx.subjects.examples(&args.model)],
        batch_size,
        watcher,
    )
    .await
}
