//! `freshet models pin|unpin|pause|resume`: holding a model (see
//! [`freshet_model::store::hold`]). Each changes `<model>.hold` in MODELS by compare-and-set,
//! recording who (`--by`, or the login name) and why; a pin also moves live to the pinned version
//! with the cause `pin`, even when live names it already, so a trainer's publish based on an
//! earlier revision of the pointer fails instead of slipping past the pin.

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use freshet::ids::ModelName;
use freshet_model::store::{
    ArtifactStore, CasError, Cause, Hold, HoldChange, PointerStore, Pointers, Slot, hold,
};
use serde::Serialize;

use super::super::{GlobalArgs, NotFound, connect, emit_json, open_artifacts};
use super::moves::{PointerMove, moving, report_move, verify};
use super::open_pointers;

/// Attempts at a pin while train keeps moving live underneath it.
const PIN_ATTEMPTS: usize = 5;

/// Arguments of `freshet models pin`.
#[derive(Debug, Clone, Args)]
pub struct PinArgs {
    /// Model name
    pub model: ModelName,
    /// Version to keep live; the version live once the pin is in place if unset (a named
    /// version other than live's is a rollback: what live learned since is not carried on)
    pub version: Option<u64>,
    #[command(flatten)]
    pub who: Who,
}

/// Arguments of `freshet models unpin|pause|resume`.
#[derive(Debug, Clone, Args)]
pub struct HoldArgs {
    /// Model name
    pub model: ModelName,
    #[command(flatten)]
    pub who: Who,
}

/// Who holds or releases a model, and why: recorded in `<model>.hold` and its history.
#[derive(Debug, Clone, Args)]
pub struct Who {
    /// Why, recorded with the hold
    #[arg(long = "reason", default_value = "")]
    pub reason: String,
    /// Who does it; the login name ($USER) if unset
    #[arg(long = "by", env = "FRESHET_OPERATOR")]
    pub by: Option<String>,
}

impl Who {
    fn name(&self) -> String {
        self.by
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "operator".to_string())
    }
}

/// What a hold change did, for people and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    pub model: String,
    /// The hold now (`None`: released).
    pub hold: Option<Hold>,
    pub revision: u64,
}

/// Writes `change` to the model's hold by compare-and-set; returns the hold and its revision.
pub(crate) async fn write_hold(
    pointers: &Pointers,
    model: &ModelName,
    change: HoldChange,
    who: &Who,
) -> anyhow::Result<HoldReport> {
    let current = pointers.hold(model).await?;
    let next = hold::apply(
        current.value.as_ref(),
        change,
        &who.name(),
        &who.reason,
        Utc::now(),
    );
    if next.is_none() && current.value.is_none() {
        // Nothing held, nothing to release.
        return Ok(HoldReport {
            model: model.to_string(),
            hold: None,
            revision: current.revision,
        });
    }
    let revision = pointers
        .set_hold(model, next.as_ref(), current.revision)
        .await
        .with_context(|| {
            format!("changing {model}'s hold (if it changed meanwhile, run the command again)")
        })?;
    Ok(HoldReport {
        model: model.to_string(),
        hold: next,
        revision,
    })
}

fn report(global: &GlobalArgs, report: &HoldReport) -> anyhow::Result<()> {
    if global.json {
        return emit_json(report);
    }
    match &report.hold {
        Some(hold) => println!(
            "{}: {} by {} ({}), hold revision {}",
            report.model,
            hold.describe(),
            hold.by,
            hold.reason,
            report.revision
        ),
        None => println!(
            "{}: not held; train and the gate move live again",
            report.model
        ),
    }
    Ok(())
}

/// `freshet models unpin|pause|resume`.
pub async fn change(
    global: &GlobalArgs,
    args: &HoldArgs,
    change: HoldChange,
) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let pointers = open_pointers(&nats.js).await?;
    let done = write_hold(&pointers, &args.model, change, &args.who).await?;
    report(global, &done)
}

/// `freshet models pin`.
pub async fn pin(global: &GlobalArgs, args: &PinArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let pointers = open_pointers(&nats.js).await?;
    let artifacts = open_artifacts(global)?;
    let (held, moved) = pin_live(
        &pointers,
        &artifacts,
        &args.model,
        args.version,
        &args.who.name(),
        &args.who.reason,
    )
    .await?;
    if !global.json {
        report(global, &held)?;
    }
    report_move(global, &moved)
}

/// Pins `model` to `version` (the version live once the hold is in place if `None`) for `by`:
/// the hold first (train stops taking batches), then live, so no version of train's goes live
/// after the pin.
pub async fn pin_live(
    pointers: &Pointers,
    artifacts: &ArtifactStore,
    model: &ModelName,
    version: Option<u64>,
    by: &str,
    reason: &str,
) -> anyhow::Result<(HoldReport, PointerMove)> {
    let who = Who {
        reason: reason.to_string(),
        by: Some(by.to_string()),
    };
    for _ in 0..PIN_ATTEMPTS {
        let live = pointers.get(model, Slot::Live).await?;
        let target = match (version, &live.value) {
            (Some(version), _) => version,
            (None, Some(live)) => live.version,
            (None, None) => {
                return Err(NotFound(format!(
                    "{model} has no live version to pin; name one (freshet models pin {model} VERSION)"
                ))
                .into());
            }
        };
        let verified = verify(artifacts, model, target).await?;
        let held = write_hold(pointers, model, HoldChange::Pin(target), &who).await?;
        // train may have published between the reading of live and the hold: pin what is live
        // now, or move live to the version named.
        let now = pointers.get(model, Slot::Live).await?;
        if version.is_none() && now.value.as_ref().map(|p| p.version) != Some(target) {
            continue;
        }
        let reason = format!("pinned by {by}: {reason}");
        match pointers
            .move_to(
                model,
                Slot::Live,
                &verified,
                Cause::Pin,
                &reason,
                now.revision,
            )
            .await
        {
            Ok(revision) => {
                let moved = PointerMove {
                    model: model.to_string(),
                    from_version: now.value.map(|p| p.version),
                    to_version: target,
                    cause: Cause::Pin,
                    reason,
                    revision,
                };
                return Ok((held, moved));
            }
            Err(CasError::Conflict { .. }) => continue,
            Err(err) => return Err(anyhow::Error::new(err).context(moving(model))),
        }
    }
    anyhow::bail!(
        "{model}'s live pointer kept moving while it was pinned ({PIN_ATTEMPTS} attempts); the hold is in place, run the command again"
    )
}
