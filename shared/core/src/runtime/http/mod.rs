//! The HTTP side of every function: `/healthz` (the process is alive), `/readyz` (it is connected
//! and can do its job) and `/metrics` (OpenMetrics or Prometheus text, as the scraper's `Accept`
//! asks: [`crate::metrics::exposition`]), plus any routes the function adds.
//!
//! - [`guard`]: who may call the routes that serve or take data, how often, how many at once,
//!   how large and how slow (shared by every function and `freshet view`);
//! - [`tokens`], [`tls`]: the credentials it accepts (bearer tokens, client certificates);
//! - [`server`]: the connection loop (HTTP or HTTPS, header timeouts, the peer on each request).
//!
//! The probes are never guarded: an orchestrator must always be able to ask whether a process
//! lives. `/metrics` is guarded as its own [`Surface`], with tokens of its own.

pub mod guard;
pub mod server;
pub mod tls;
pub mod tokens;

pub use guard::{GuardError, HttpGuard, Peer, Refusal, Refusals, Surface};
pub use server::serve;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::metrics::exposition;

/// Whether the function is ready; flipped by the function, read by `/readyz` and the `ready` gauge.
/// A note says more when there is more to say (a predictor serving a fallback version).
#[derive(Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    note: Arc<ArcSwapOption<String>>,
}

impl Readiness {
    pub fn set(&self, ready: bool, metrics: &Metrics) {
        self.ready.store(ready, Ordering::Relaxed);
        metrics.ready.set(i64::from(ready));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Adds `note` to what `/readyz` answers (`None` removes it).
    pub fn set_note(&self, note: Option<String>) {
        self.note.store(note.map(Arc::new));
    }

    pub fn note(&self) -> Option<Arc<String>> {
        self.note.load_full()
    }
}

/// The probe routes, `/healthz` and `/readyz`: open to anyone.
pub fn probe_routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// The `/metrics` route (to be guarded as [`Surface::Metrics`]).
pub fn metrics_routes(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let (status, state) = if readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    match readiness.note() {
        Some(note) => (status, format!("{state}: {note}\n")),
        None => (status, format!("{state}\n")),
    }
}

/// Every metric, in the format the scraper's `Accept` header asks for, labelled as what it is.
async fn metrics_text(State(metrics): State<Metrics>, request: HeaderMap) -> impl IntoResponse {
    let accept = request
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = exposition::negotiate(accept);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        metrics.encode_as(format),
    )
}
