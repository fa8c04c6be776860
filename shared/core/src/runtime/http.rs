//! The HTTP side of every function: `/healthz` (the process is alive), `/readyz` (it is connected
//! and can do its job) and `/metrics` (Prometheus text), plus any routes the function adds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

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

#[derive(Clone)]
struct Probes {
    readiness: Readiness,
    metrics: Metrics,
}

/// The probe and metrics routes.
pub fn probe_routes(readiness: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Probes { readiness, metrics })
}

async fn readyz(State(probes): State<Probes>) -> impl IntoResponse {
    let (status, state) = if probes.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    match probes.readiness.note() {
        Some(note) => (status, format!("{state}: {note}\n")),
        None => (status, format!("{state}\n")),
    }
}

async fn metrics_text(State(probes): State<Probes>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        probes.metrics.encode(),
    )
}

/// Binds the HTTP server and serves `router` until shutdown. Returns the bound address (useful
/// with port 0) and the server task.
pub async fn serve(
    addr: &str,
    port: u16,
    router: Router,
    mut shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind((addr, port)).await?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "HTTP server listening");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "HTTP server stopped");
        }
    });
    Ok((bound, task))
}
