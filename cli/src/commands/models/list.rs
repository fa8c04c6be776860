//! `freshet models list`: every model, its live and candidate versions, the live pointer's age,
//! its hold and how many versions the artifact store keeps.

use std::collections::BTreeSet;

use chrono::Utc;
use freshet::ids::ModelName;
use freshet::subjects::BUCKET_MODELS;
use freshet_model::store::{Hold, Pointer};
use serde::Serialize;

use super::{GlobalArgs, Table, age_seconds, connect, emit, emit_json, format_age, open_artifacts};
use super::{open_pointers, read_all_pointers};

/// One line of `freshet models list`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub model: String,
    pub live: Option<Pointer>,
    pub candidate: Option<Pointer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    pub live_age_seconds: Option<u64>,
    /// Versions with a manifest in the artifact store; `None` when the store could not be read.
    pub stored_versions: Option<usize>,
}

pub(super) async fn list(global: &GlobalArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let pointers = read_all_pointers(&open_pointers(&nats.js).await?).await?;
    let artifacts = open_artifacts(global)?;
    // An unreachable artifact store should not hide what the pointers say: the table is printed
    // with what could be read, then the command fails, so a script does not take it for whole.
    let mut unreadable: Option<anyhow::Error> = None;
    let stored_models = artifacts.models().await.unwrap_or_else(|err| {
        eprintln!("warning: cannot list models in {}: {err}", artifacts.url());
        unreadable.get_or_insert(err.into());
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
                unreadable.get_or_insert(err.into());
                None
            }
        };
        summaries.push(ModelSummary {
            model: model.to_string(),
            live_age_seconds: pair.live.as_ref().map(|p| age_seconds(p.updated_at, now)),
            live: pair.live,
            candidate: pair.candidate,
            hold: pair.hold,
            stored_versions,
        });
    }
    print_list(global, &summaries, artifacts.url(), now)?;
    match unreadable {
        Some(err) => Err(err.context(format!(
            "the artifact store {} could not be read: versions are missing from the list",
            artifacts.url()
        ))),
        None => Ok(()),
    }
}

/// Prints `freshet models list`'s table (or JSON).
fn print_list(
    global: &GlobalArgs,
    summaries: &[ModelSummary],
    store_url: &str,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    if global.json {
        return emit_json(&summaries);
    }
    if summaries.is_empty() {
        return emit(&format!(
            "no models: no pointers in {BUCKET_MODELS} and no versions in {store_url}\n"
        ));
    }
    let mut table = Table::new(&["MODEL", "LIVE", "CANDIDATE", "LIVE AGE", "VERSIONS", "HOLD"])
        .align_right(&[1, 2, 3, 4]);
    let version = |p: &Option<Pointer>| {
        p.as_ref()
            .map_or("-".to_string(), |p| p.version.to_string())
    };
    for s in summaries {
        table.row(vec![
            s.model.clone(),
            version(&s.live),
            version(&s.candidate),
            s.live
                .as_ref()
                .map_or("-".to_string(), |p| format_age(p.updated_at, now)),
            s.stored_versions.map_or("?".to_string(), |n| n.to_string()),
            s.hold.as_ref().map_or("-".to_string(), |h| {
                format!("{} by {} ({})", h.describe(), h.by, h.reason)
            }),
        ]);
    }
    emit(&table.to_string())
}
