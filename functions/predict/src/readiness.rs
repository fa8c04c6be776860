//! Readiness of a predictor: a version serves, and it is no older than the freshness bound. A
//! predictor serving a fallback (live names a version that was refused, and an earlier one stands
//! in) is ready, and `/readyz` says which version serves and why.

use std::time::Duration;

use chrono::Utc;
use freshet::metrics::Metrics;
use freshet::runtime::Readiness;
use freshet::shutdown::Shutdown;
use freshet_model::store::follow::{StandIn, VersionCell};
use prometheus_client::metrics::gauge::Gauge;

/// Whether a predictor whose live version was created `age` ago may call itself ready.
pub fn is_ready(age: Option<Duration>, max_age: Option<Duration>) -> bool {
    match (age, max_age) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(age), Some(max)) => age <= max,
    }
}

/// What `/readyz` adds while a fallback serves.
pub fn fallback_note(stand_in: &StandIn) -> String {
    format!(
        "serving fallback version {}: live names version {}, which was refused ({})",
        stand_in.serving, stand_in.refused, stand_in.reason
    )
}

/// Re-evaluates readiness, its note and the model-age gauge twice a second until shutdown.
pub async fn track(
    live: VersionCell,
    readiness: Readiness,
    metrics: Metrics,
    max_age: Option<Duration>,
    mut shutdown: Shutdown,
) {
    let age_gauge: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    metrics.register(
        "model_age_seconds",
        "Age of the live version (since its creation by train)",
        age_gauge.clone(),
    );
    loop {
        let age = live.current().map(|m| {
            (Utc::now() - m.manifest.created_at)
                .to_std()
                .unwrap_or(Duration::ZERO)
        });
        age_gauge.set(age.map_or(0.0, |a| a.as_secs_f64()));
        readiness.set_note(live.stand_in().as_deref().map(fallback_note));
        let ready = is_ready(age, max_age);
        if ready != readiness.is_ready() {
            if !ready && age.is_some() {
                tracing::warn!(
                    age_seconds = age.map(|a| a.as_secs_f64()),
                    max_age_seconds = max_age.map(|a| a.as_secs_f64()),
                    "live version is older than the freshness bound; not ready"
                );
            }
            readiness.set(ready, &metrics);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_a_fresh_enough_version() {
        let minute = Duration::from_secs(60);
        assert!(!is_ready(None, None));
        assert!(is_ready(Some(minute * 600), None));
        assert!(is_ready(Some(minute), Some(minute * 2)));
        assert!(!is_ready(Some(minute * 3), Some(minute * 2)));
    }

    #[test]
    fn the_note_names_the_version_serving_and_the_one_refused() {
        let note = fallback_note(&StandIn {
            serving: 1,
            refused: 3,
            reason: "sha256 mismatch".into(),
        });
        assert_eq!(
            note,
            "serving fallback version 1: live names version 3, which was refused (sha256 mismatch)"
        );
    }
}
