//! Runtime adapters around the pure handlers: the JetStream consumer loop, the HTTP server (probes,
//! metrics, and the guard in front of every other route), the CloudEvents HTTP binding and push
//! ingress, dead-lettering and logging. The metrics registry and the shutdown signal they use are
//! leaf modules of their own ([`crate::metrics`], [`crate::shutdown`]), so the store and telemetry
//! layers below use them too.

pub mod cloudevents;
pub mod dead_letter;
pub mod function;
pub mod http;
pub mod ingress;
pub mod order;
pub mod pull;

pub use function::FunctionContext;
pub use http::Readiness;
pub use pull::{Commit, Disposition, Incoming, LoopSettings, Processor};

/// Starts logging to stderr: JSON lines (`format = "json"`) or human text, filtered by `filter`
/// in tracing's EnvFilter syntax.
pub fn init_tracing(filter: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
}
