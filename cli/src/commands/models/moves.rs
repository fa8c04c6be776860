//! `freshet models rollback|promote|set`: moving a model's live pointer by hand, to a version
//! verified first, by compare-and-set, with the move's cause; refused while the model is pinned.
//! The live view's actions make the same moves.

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use freshet::ids::ModelName;
use freshet_model::store::retention::version_at;
use freshet_model::store::{
    ArtifactStore, Cause, Pointer, PointerStore, Pointers, Slot, Verified, Versioned,
};
use serde::Serialize;

use super::open_pointers;
use super::{GlobalArgs, NotFound, connect, emit_json, open_artifacts};

/// Arguments of `freshet models rollback`.
#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// Model name
    pub model: ModelName,
    /// Version to go back to; the live pointer's previous version if unset
    #[arg(long = "to", conflicts_with = "to_time")]
    pub to: Option<u64>,
    /// Go back to the model of this time: the newest stored version written at or before it.
    /// An RFC 3339 time (2026-12-06T08:00:00Z) or how long ago (3h, 90m). Reaches as far back
    /// as train's retention keeps versions (--keep-all-for, --keep-hourly-for), beyond the
    /// pointer's own history
    #[arg(long = "to-time", value_parser = parse_time)]
    pub to_time: Option<chrono::DateTime<Utc>>,
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

/// Arguments of `freshet models set`.
#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    /// Model name
    pub model: ModelName,
    /// Version to make live
    pub version: u64,
    /// Why, recorded in the pointer and its history
    #[arg(long = "reason", default_value = "set by an operator")]
    pub reason: String,
}

/// What a pointer move did, for people and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct PointerMove {
    pub model: String,
    pub from_version: Option<u64>,
    pub to_version: u64,
    pub cause: Cause,
    pub reason: String,
    pub revision: u64,
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

/// A time given as RFC 3339, or as how long ago (`3h`).
fn parse_time(text: &str) -> Result<chrono::DateTime<Utc>, String> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text)
        .map_err(|e| format!("neither an RFC 3339 time nor a duration ago: {e}"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Ok(Utc::now() - ago)
}

pub(super) async fn rollback(global: &GlobalArgs, args: &RollbackArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let pointers = open_pointers(&nats.js).await?;
    let live = pointers.get(&args.model, Slot::Live).await?;
    let Some(current) = live.value.as_ref() else {
        return Err(NotFound(format!("{} has no live version to roll back", args.model)).into());
    };
    let to = match args.to_time {
        Some(time) => {
            let stored = open_artifacts(global)?.versions_dated(&args.model).await?;
            let version = version_at(&stored, time).ok_or_else(|| {
                NotFound(format!(
                    "{} has no stored version written at or before {}; the oldest kept is {}",
                    args.model,
                    time.to_rfc3339(),
                    stored.first().map_or("none".to_string(), |(v, at)| format!(
                        "{v} ({})",
                        at.to_rfc3339()
                    ))
                ))
            })?;
            Some(version)
        }
        None => args.to,
    };
    let history = pointers.history(&args.model, Slot::Live).await?;
    let target = rollback_target(current.version, &history, to).ok_or_else(|| {
        NotFound(format!(
            "{} has no earlier live version in its pointer history; name one with --to",
            args.model
        ))
    })?;
    move_live(
        global,
        &pointers,
        &args.model,
        target,
        live,
        Cause::Rollback,
        &args.reason,
    )
    .await
}

pub(super) async fn promote(global: &GlobalArgs, args: &PromoteArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let pointers = open_pointers(&nats.js).await?;
    refuse_if_pinned(&pointers, &args.model).await?;
    let candidate = pointers.get(&args.model, Slot::Candidate).await?;
    let Some(candidate_pointer) = candidate.value else {
        return Err(NotFound(format!("{} has no candidate to promote", args.model)).into());
    };
    let live = pointers.get(&args.model, Slot::Live).await?;
    let artifacts = open_artifacts(global)?;
    let verified = verify(&artifacts, &args.model, candidate_pointer.version).await?;
    // The candidate pointer is removed too: a predictor shadowing live with it would only compare
    // it with itself.
    let promoted = pointers
        .promote(
            &args.model,
            &verified,
            &args.reason,
            live.revision,
            candidate.revision,
        )
        .await
        .with_context(|| moving(&args.model))?;
    if let Some(err) = promoted.candidate_left {
        eprintln!("warning: the candidate pointer was not removed: {err}");
    }
    report_move(
        global,
        &PointerMove {
            model: args.model.to_string(),
            from_version: live.value.map(|p| p.version),
            to_version: candidate_pointer.version,
            cause: Cause::Promotion,
            reason: args.reason.clone(),
            revision: promoted.live_revision,
        },
    )
}

pub(super) async fn set(global: &GlobalArgs, args: &SetArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let pointers = open_pointers(&nats.js).await?;
    let live = pointers.get(&args.model, Slot::Live).await?;
    move_live(
        global,
        &pointers,
        &args.model,
        args.version,
        live,
        Cause::Operator,
        &args.reason,
    )
    .await
}

/// Verifies `version`, moves the live pointer to it for `cause` if it is still where `live` was
/// read, and reports the move.
async fn move_live(
    global: &GlobalArgs,
    pointers: &Pointers,
    model: &ModelName,
    version: u64,
    live: Versioned<Pointer>,
    cause: Cause,
    reason: &str,
) -> anyhow::Result<()> {
    refuse_if_pinned(pointers, model).await?;
    let artifacts = open_artifacts(global)?;
    let verified = verify(&artifacts, model, version).await?;
    let revision = pointers
        .move_to(model, Slot::Live, &verified, cause, reason, live.revision)
        .await
        .with_context(|| moving(model))?;
    report_move(
        global,
        &PointerMove {
            model: model.to_string(),
            from_version: live.value.map(|p| p.version),
            to_version: version,
            cause,
            reason: reason.to_string(),
            revision,
        },
    )
}

/// A pinned model's live pointer moves only by `pin` or once `unpin`ned: a hand-made move
/// would undo what the operator who pinned it decided.
pub(crate) async fn refuse_if_pinned(pointers: &Pointers, model: &ModelName) -> anyhow::Result<()> {
    let hold = pointers
        .hold(model)
        .await
        .context("reading the model's hold")?;
    if let Some(hold) = hold.value
        && let Some(version) = hold.pinned
    {
        anyhow::bail!(
            "{model} is pinned to version {version} by {} ({}); `freshet models unpin {model}` first, or pin another version",
            hold.by,
            hold.reason
        );
    }
    Ok(())
}

/// Checks that `version` exists (not found otherwise), and that it loads and verifies as a
/// predictor will load it, before any pointer names it.
pub(crate) async fn verify(
    artifacts: &ArtifactStore,
    model: &ModelName,
    version: u64,
) -> anyhow::Result<Verified> {
    artifacts
        .manifest(model, version)
        .await
        .map_err(|err| NotFound(format!("version {version} of {model}: {err}")))?;
    Verified::check(artifacts, model, version)
        .await
        .map_err(|refusal| {
            anyhow::anyhow!(
                "version {version} of {model} is refused: {}",
                refusal.reason
            )
        })
}

/// The context of a move that failed.
pub(crate) fn moving(model: &ModelName) -> String {
    format!("moving {model}'s live pointer (if it moved meanwhile, run the command again)")
}

pub(crate) fn report_move(global: &GlobalArgs, moved: &PointerMove) -> anyhow::Result<()> {
    if global.json {
        return emit_json(moved);
    }
    println!(
        "{} live: version {} -> {} ({}: {}), pointer revision {}",
        moved.model,
        moved
            .from_version
            .map_or_else(|| "none".to_string(), |v| v.to_string()),
        moved.to_version,
        moved.cause,
        moved.reason,
        moved.revision
    );
    Ok(())
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
            cause: Cause::Train,
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
}
