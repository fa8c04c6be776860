//! `freshet models show`: a version's manifest (the live one unless told) and the live pointer's
//! history.

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use freshet::ids::ModelName;
use freshet::subjects::BUCKET_MODELS;
use freshet_model::Manifest;
use freshet_model::store::{ArtifactError, ArtifactStore, Hold, Pointer, PointerStore, Slot};
use serde::Serialize;

use super::open_pointers;
use super::{
    GlobalArgs, NotFound, Table, connect, emit, emit_json, format_age, key_values, open_artifacts,
};

/// Arguments of `freshet models show`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// Model name
    pub model: ModelName,
    /// Version to show instead of the live one
    #[arg(long = "version")]
    pub version: Option<u64>,
}

/// What `freshet models show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDetail {
    pub model: String,
    pub live: Option<Pointer>,
    pub candidate: Option<Pointer>,
    /// What an operator holds the model at (pin, pause), if anything.
    pub hold: Option<Hold>,
    pub stored_versions: Vec<u64>,
    pub manifest: Manifest,
    /// Past values of the live pointer, oldest first, with their KV revisions.
    pub live_history: Vec<PointerRevision>,
}

/// One past value of a pointer.
#[derive(Debug, Clone, Serialize)]
pub struct PointerRevision {
    pub revision: u64,
    #[serde(flatten)]
    pub pointer: Pointer,
}

pub(super) async fn show(global: &GlobalArgs, args: &ShowArgs) -> anyhow::Result<()> {
    let model = &args.model;
    let nats = connect(global).await?;
    let pointers = open_pointers(&nats.js).await?;
    let artifacts = open_artifacts(global)?;
    let live = pointers
        .get(model, Slot::Live)
        .await
        .context("reading the live pointer")?
        .value;
    let candidate = pointers
        .get(model, Slot::Candidate)
        .await
        .context("reading the candidate pointer")?
        .value;
    let stored_versions = artifacts.versions(model).await?;
    if live.is_none() && candidate.is_none() && stored_versions.is_empty() {
        return Err(NotFound(format!(
            "model {model} is unknown: no pointer in {BUCKET_MODELS} and no version in {}",
            artifacts.url()
        ))
        .into());
    }
    let version = match (args.version, &live) {
        (Some(version), _) => version,
        (None, Some(live)) => live.version,
        (None, None) => {
            return Err(NotFound(format!(
                "model {model} has no live version; stored versions: {}; pick one with --version",
                list_versions(&stored_versions)
            ))
            .into());
        }
    };
    let manifest = read_manifest(&artifacts, model, version).await?;
    let live_history = pointers
        .history(model, Slot::Live)
        .await
        .context("reading the live pointer's history")?
        .into_iter()
        .map(|(revision, pointer)| PointerRevision { revision, pointer })
        .collect();
    let hold = pointers
        .hold(model)
        .await
        .context("reading the model's hold")?
        .value;
    let detail = ModelDetail {
        model: model.to_string(),
        live,
        candidate,
        hold,
        stored_versions,
        manifest,
        live_history,
    };
    if global.json {
        return emit_json(&detail);
    }
    emit(&render_detail(&detail))
}

pub(super) async fn read_manifest(
    artifacts: &ArtifactStore,
    model: &ModelName,
    version: u64,
) -> anyhow::Result<Manifest> {
    match artifacts.manifest(model, version).await {
        Ok(manifest) => Ok(manifest),
        Err(err @ ArtifactError::Missing { .. }) => Err(NotFound(err.to_string()).into()),
        Err(err) => Err(err.into()),
    }
}

fn list_versions(versions: &[u64]) -> String {
    if versions.is_empty() {
        return "none".to_string();
    }
    versions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The human-readable form of a model's detail.
pub fn render_detail(detail: &ModelDetail) -> String {
    let m = &detail.manifest;
    let now = Utc::now();
    let pointer = |p: &Option<Pointer>| {
        p.as_ref().map_or("-".to_string(), |p| {
            format!(
                "v{} ({} ago, {}: {})",
                p.version,
                format_age(p.updated_at, now),
                p.cause,
                p.reason
            )
        })
    };
    let mut text = key_values(&[
        ("model", detail.model.clone()),
        ("live", pointer(&detail.live)),
        ("candidate", pointer(&detail.candidate)),
        (
            "hold",
            detail.hold.as_ref().map_or("-".to_string(), |h| {
                format!(
                    "{} by {} at {} ({})",
                    h.describe(),
                    h.by,
                    h.at.to_rfc3339(),
                    h.reason
                )
            }),
        ),
        ("stored versions", list_versions(&detail.stored_versions)),
        ("version", m.version.to_string()),
        (
            "parent",
            m.parent.map_or("-".to_string(), |p| p.to_string()),
        ),
        ("kind", m.config.kind.name().to_string()),
        (
            "hyper-parameters",
            format!(
                "learning_rate={} decay={} l2={}",
                m.config.hyper.learning_rate, m.config.hyper.decay, m.config.hyper.l2
            ),
        ),
        (
            "schema",
            format!(
                "{} v{} ({})",
                m.schema.name,
                m.schema.version,
                m.schema.features.join(", ")
            ),
        ),
        ("sha256", m.sha256.clone()),
        ("size", format!("{} bytes", m.size_bytes)),
        ("created_at", m.created_at.to_rfc3339()),
        ("step", m.step.to_string()),
        (
            "learned",
            m.learned
                .map_or("-".to_string(), |r| format!("{}..={}", r.first, r.last)),
        ),
        ("high-water mark", m.high_water_mark.to_string()),
        ("examples total", m.metrics.examples_total.to_string()),
        ("window examples", m.metrics.window_examples.to_string()),
        ("accuracy", format!("{:.4}", m.metrics.prequential_accuracy)),
        ("log-loss", format!("{:.4}", m.metrics.log_loss)),
        (
            "ROC AUC",
            m.metrics
                .roc_auc
                .map_or("-".to_string(), |auc| format!("{auc:.4}")),
        ),
    ]);
    text.push_str("\nlive pointer history (oldest first)\n");
    if detail.live_history.is_empty() {
        text.push_str("(none)\n");
        return text;
    }
    let mut table = Table::new(&[
        "REVISION",
        "VERSION",
        "UPDATED AT",
        "CAUSE",
        "REASON",
        "SHA256",
    ])
    .align_right(&[0, 1]);
    for entry in &detail.live_history {
        let p = &entry.pointer;
        table.row(vec![
            entry.revision.to_string(),
            p.version.to_string(),
            p.updated_at.to_rfc3339(),
            p.cause.to_string(),
            p.reason.clone(),
            p.sha256.chars().take(12).collect(),
        ]);
    }
    text.push_str(&table.to_string());
    text
}
