//! `freshet models list|show|rollback|promote`: what models exist, which version each serves,
//! what a version is (its manifest) and how its live pointer moved; and moving that pointer by
//! hand, by compare-and-set, to a version that is verified first.
//!
//! A model is known if it has a pointer in the MODELS bucket or a version in the artifact store;
//! either alone is worth showing (pointers without artifacts are broken, artifacts without
//! pointers are not yet promoted).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use async_nats::jetstream;
use chrono::Utc;
use clap::{Args, Subcommand};
use freshet::ids::ModelName;
use freshet::model::Manifest;
use freshet::store::{ArtifactError, ArtifactStore, Pointer, Pointers, Slot};
use freshet::subjects::BUCKET_MODELS;
use futures::TryStreamExt;
use serde::Serialize;

use super::{
    GlobalArgs, NotFound, Table, age_seconds, connect, emit, emit_json, format_age, key_values,
    open_artifacts,
};

/// The `freshet models` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum ModelsCommand {
    /// List every model: live and candidate versions, age of the live pointer, stored versions
    List,
    /// Show the manifest of a model's live version (or --version) and the live pointer's history
    Show(ShowArgs),
    /// Move the live pointer back to an earlier version (the one before the current, or --to);
    /// predictors swap to it. Stop train first, or it moves the pointer on at its next version
    Rollback(RollbackArgs),
    /// Make the candidate version live (and remove the candidate pointer)
    Promote(PromoteArgs),
}

/// Arguments of `freshet models rollback`.
#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// Model name
    pub model: ModelName,
    /// Version to go back to; the live pointer's previous version if unset
    #[arg(long = "to")]
    pub to: Option<u64>,
    /// Why, recorded in the pointer and its history
    #[arg(long = "reason", default_value = "rollback by an operator")]
    pub reason: String,
}

/// Arguments of `freshet models promote`.
#[derive(Debug, Clone, Args)]
pub struct PromoteArgs {
    /// Model name
    pub model: ModelName,
    /// Why, recorded in the pointer and its history
    #[arg(long = "reason", default_value = "promoted by an operator")]
    pub reason: String,
}

/// What a pointer move did, for people and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct PointerMove {
    pub model: String,
    pub from_version: Option<u64>,
    pub to_version: u64,
    pub reason: String,
    pub revision: u64,
}

/// Arguments of `freshet models show`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// Model name
    pub model: ModelName,
    /// Version to show instead of the live one
    #[arg(long = "version")]
    pub version: Option<u64>,
}

/// Both pointers of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelPointers {
    pub live: Option<Pointer>,
    pub candidate: Option<Pointer>,
}

/// Opens the MODELS bucket.
pub async fn open_pointers(js: &jetstream::Context) -> anyhow::Result<Pointers> {
    let bucket = js.get_key_value(BUCKET_MODELS).await.with_context(|| {
        format!("opening KV bucket {BUCKET_MODELS} (run `freshet provision` if it does not exist)")
    })?;
    Ok(Pointers::new(bucket))
}

/// Splits a MODELS key (`<model>.live`, `<model>.candidate`) into its model and slot.
pub fn parse_pointer_key(key: &str) -> Option<(ModelName, Slot)> {
    let (model, slot) = key.rsplit_once('.')?;
    let slot = match slot {
        "live" => Slot::Live,
        "candidate" => Slot::Candidate,
        _ => return None,
    };
    Some((ModelName::parse(model).ok()?, slot))
}

/// Every model with a pointer in MODELS, with both its pointers.
pub async fn read_all_pointers(
    pointers: &Pointers,
) -> anyhow::Result<BTreeMap<ModelName, ModelPointers>> {
    let keys: Vec<String> = pointers
        .bucket()
        .keys()
        .await
        .context("listing the keys of MODELS")?
        .try_collect()
        .await
        .context("listing the keys of MODELS")?;
    let mut models: BTreeMap<ModelName, ModelPointers> = BTreeMap::new();
    for key in keys {
        let Some((model, slot)) = parse_pointer_key(&key) else {
            tracing::debug!(key, "skipping a MODELS key that is not a model pointer");
            continue;
        };
        let pointer = pointers
            .get(&model, slot)
            .await
            .with_context(|| format!("reading pointer {key}"))?
            .value;
        let entry = models.entry(model).or_default();
        match slot {
            Slot::Live => entry.live = pointer,
            Slot::Candidate => entry.candidate = pointer,
        }
    }
    Ok(models)
}

/// One line of `freshet models list`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub model: String,
    pub live: Option<Pointer>,
    pub candidate: Option<Pointer>,
    pub live_age_seconds: Option<u64>,
    /// Versions with a manifest in the artifact store; `None` when the store could not be read.
    pub stored_versions: Option<usize>,
}

/// Runs `freshet models ...`.
pub async fn run(global: &GlobalArgs, command: &ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List => list(global).await,
        ModelsCommand::Show(args) => show(global, args).await,
        ModelsCommand::Rollback(args) => rollback(global, args).await,
        ModelsCommand::Promote(args) => promote(global, args).await,
    }
}

/// The version a rollback goes to: `to`, or the latest earlier value of the pointer naming
/// another version than the current one.
pub fn rollback_target(current: u64, history: &[(u64, Pointer)], to: Option<u64>) -> Option<u64> {
    match to {
        Some(version) => Some(version),
        None => history
            .iter()
            .rev()
            .map(|(_, pointer)| pointer.version)
            .find(|&version| version != current),
    }
}

async fn rollback(global: &GlobalArgs, args: &RollbackArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let pointers = open_pointers(&nats.js).await?;
    let live = pointers.get(&args.model, Slot::Live).await?;
    let Some(current) = live.value else {
        return Err(NotFound(format!("{} has no live version to roll back", args.model)).into());
    };
    let history = pointers.history(&args.model, Slot::Live).await?;
    let target = rollback_target(current.version, &history, args.to).ok_or_else(|| {
        NotFound(format!(
            "{} has no earlier live version in its pointer history; name one with --to",
            args.model
        ))
    })?;
    let moved = move_pointer(
        global,
        &pointers,
        &args.model,
        target,
        Some(current.version),
        live.revision,
        &args.reason,
    )
    .await?;
    report_move(global, &moved)
}

async fn promote(global: &GlobalArgs, args: &PromoteArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let pointers = open_pointers(&nats.js).await?;
    let candidate = pointers.get(&args.model, Slot::Candidate).await?;
    let Some(candidate_pointer) = candidate.value else {
        return Err(NotFound(format!("{} has no candidate to promote", args.model)).into());
    };
    let live = pointers.get(&args.model, Slot::Live).await?;
    let moved = move_pointer(
        global,
        &pointers,
        &args.model,
        candidate_pointer.version,
        live.value.map(|p| p.version),
        live.revision,
        &args.reason,
    )
    .await?;
    // The candidate is live now; a predictor shadowing it would only compare it with itself.
    if let Err(err) = pointers
        .bucket()
        .delete_expect_revision(
            &freshet::subjects::pointer_key(&args.model, Slot::Candidate.as_str()),
            Some(candidate.revision),
        )
        .await
    {
        eprintln!("warning: the candidate pointer was not removed: {err}");
    }
    report_move(global, &moved)
}

/// Verifies `version` (its artifact loads and matches its manifest's checksum), then moves the
/// live pointer to it if nobody moved it since `expected`.
async fn move_pointer(
    global: &GlobalArgs,
    pointers: &Pointers,
    model: &ModelName,
    version: u64,
    from_version: Option<u64>,
    expected: u64,
    reason: &str,
) -> anyhow::Result<PointerMove> {
    let artifacts = open_artifacts(global)?;
    let manifest = artifacts
        .manifest(model, version)
        .await
        .map_err(|err| NotFound(format!("version {version} of {model}: {err}")))?;
    let pointer = Pointer {
        version,
        sha256: manifest.sha256.clone(),
        updated_at: Utc::now(),
        reason: reason.to_string(),
    };
    artifacts
        .load_pointed(model, &pointer)
        .await
        .map_err(|refusal| {
            anyhow::anyhow!(
                "version {version} of {model} is refused: {}",
                refusal.reason
            )
        })?;
    let revision = pointers
        .set(model, Slot::Live, &pointer, expected)
        .await
        .with_context(|| {
            format!("moving {model}'s live pointer (if it moved meanwhile, run the command again)")
        })?;
    Ok(PointerMove {
        model: model.to_string(),
        from_version,
        to_version: version,
        reason: reason.to_string(),
        revision,
    })
}

fn report_move(global: &GlobalArgs, moved: &PointerMove) -> anyhow::Result<()> {
    if global.json {
        return emit_json(moved);
    }
    println!(
        "{} live: version {} -> {} ({}), pointer revision {}",
        moved.model,
        moved
            .from_version
            .map_or_else(|| "none".to_string(), |v| v.to_string()),
        moved.to_version,
        moved.reason,
        moved.revision
    );
    Ok(())
}

async fn list(global: &GlobalArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let pointers = read_all_pointers(&open_pointers(&nats.js).await?).await?;
    let artifacts = open_artifacts(global)?;
    // An unreachable artifact store should not hide what the pointers say: warn and go on.
    let stored_models = artifacts.models().await.unwrap_or_else(|err| {
        eprintln!("warning: cannot list models in {}: {err}", artifacts.url());
        Vec::new()
    });
    let mut names: BTreeSet<ModelName> = pointers.keys().cloned().collect();
    for name in stored_models {
        match ModelName::parse(name.as_str()) {
            Ok(model) => {
                names.insert(model);
            }
            Err(err) => {
                tracing::debug!(name, %err, "skipping an artifact folder that is not a model name")
            }
        }
    }
    let now = Utc::now();
    let mut summaries = Vec::new();
    for model in names {
        let pair = pointers.get(&model).cloned().unwrap_or_default();
        let stored_versions = match artifacts.versions(&model).await {
            Ok(versions) => Some(versions.len()),
            Err(err) => {
                eprintln!("warning: cannot list versions of {model}: {err}");
                None
            }
        };
        summaries.push(ModelSummary {
            model: model.to_string(),
            live_age_seconds: pair.live.as_ref().map(|p| age_seconds(p.updated_at, now)),
            live: pair.live,
            candidate: pair.candidate,
            stored_versions,
        });
    }
    if global.json {
        return emit_json(&summaries);
    }
    if summaries.is_empty() {
        return emit(&format!(
            "no models: no pointers in {BUCKET_MODELS} and no versions in {}\n",
            artifacts.url()
        ));
    }
    let mut table = Table::new(&["MODEL", "LIVE", "CANDIDATE", "LIVE AGE", "VERSIONS"])
        .align_right(&[1, 2, 3, 4]);
    let version = |p: &Option<Pointer>| {
        p.as_ref()
            .map_or("-".to_string(), |p| p.version.to_string())
    };
    for s in &summaries {
        table.row(vec![
            s.model.clone(),
            version(&s.live),
            version(&s.candidate),
            s.live
                .as_ref()
                .map_or("-".to_string(), |p| format_age(p.updated_at, now)),
            s.stored_versions.map_or("?".to_string(), |n| n.to_string()),
        ]);
    }
    emit(&table.to_string())
}

/// What `freshet models show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDetail {
    pub model: String,
    pub live: Option<Pointer>,
    pub candidate: Option<Pointer>,
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

async fn show(global: &GlobalArgs, args: &ShowArgs) -> anyhow::Result<()> {
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
    let detail = ModelDetail {
        model: model.to_string(),
        live,
        candidate,
        stored_versions,
        manifest,
        live_history,
    };
    if global.json {
        return emit_json(&detail);
    }
    emit(&render_detail(&detail))
}

async fn read_manifest(
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
                "v{} ({} ago, {})",
                p.version,
                format_age(p.updated_at, now),
                p.reason
            )
        })
    };
    let mut text = key_values(&[
        ("model", detail.model.clone()),
        ("live", pointer(&detail.live)),
        ("candidate", pointer(&detail.candidate)),
        ("stored versions", list_versions(&detail.stored_versions)),
        ("version", m.version.to_string()),
        (
            "parent",
            m.parent.map_or("-".to_string(), |p| p.to_string()),
        ),
        (
            "kind",
            serde_json::to_value(m.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        ),
        (
            "hyper-parameters",
            format!(
                "learning_rate={} decay={} l2={}",
                m.hyper.learning_rate, m.hyper.decay, m.hyper.l2
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
    let mut table =
        Table::new(&["REVISION", "VERSION", "UPDATED AT", "REASON", "SHA256"]).align_right(&[0, 1]);
    for entry in &detail.live_history {
        let p = &entry.pointer;
        table.row(vec![
            entry.revision.to_string(),
            p.version.to_string(),
            p.updated_at.to_rfc3339(),
            p.reason.clone(),
            p.sha256.chars().take(12).collect(),
        ]);
    }
    text.push_str(&table.to_string());
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn pointer(version: u64) -> Pointer {
        Pointer {
            version,
            sha256: String::new(),
            updated_at: Utc::now(),
            reason: String::new(),
        }
    }

    #[test]
    fn a_rollback_goes_to_the_latest_other_version_unless_told() {
        let history = vec![
            (1, pointer(1)),
            (2, pointer(2)),
            (3, pointer(3)),
            (4, pointer(3)),
        ];
        assert_eq!(rollback_target(3, &history, None), Some(2));
        assert_eq!(rollback_target(3, &history, Some(1)), Some(1));
        assert_eq!(rollback_target(1, &[(1, pointer(1))], None), None);
    }

    #[test]
    fn pointer_keys_name_a_model_and_a_slot() {
        let (model, slot) = parse_pointer_key("bookstore.live").unwrap();
        assert_eq!((model.as_str(), slot), ("bookstore", Slot::Live));
        assert_eq!(
            parse_pointer_key("churn-2.candidate").unwrap().1,
            Slot::Candidate
        );
        assert!(parse_pointer_key("bookstore.other").is_none());
        assert!(parse_pointer_key("bookstore").is_none());
        assert!(parse_pointer_key("Bad.live").is_none());
    }
}
