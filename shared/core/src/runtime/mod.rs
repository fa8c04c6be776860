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

/// Starts logging to stderr: JSON lines (`format = "json"`, see [`json_logs`]) or human text,
/// filtered by `filter` in tracing's EnvFilter syntax.
pub fn init_tracing(filter: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::util::SubscriberInitExt;
    // A second call (tests that start functions in process) keeps the first logger.
    if format == "json" {
        let _ = json_logs(filter, std::io::stderr).try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .compact()
            .try_init();
    }
}

/// The JSON-lines logger: one object per event, its fields at the top level beside `timestamp`,
/// `level` and `target` (the module that logged). An event's own fields must therefore never be
/// called `target`, `level`, `timestamp` or `message` for anything else, or a log pipeline keeps
/// one of two keys; and an optional value is logged as its value (`previous = Some(33u64)` gives
/// `"previous":33`) or left out, never through `?` as `"Some(33)"`.
pub fn json_logs<W>(
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .finish()
}
