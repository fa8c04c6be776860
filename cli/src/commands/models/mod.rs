//! `freshet models list|show|rollback|promote|set|diff|declare|pin|unpin|pause|resume`: what
//! models exist, which version each serves, what a version is (its manifest), how its live
//! pointer moved and what changed between two versions; and moving that pointer by hand, by
//! compare-and-set, to a version that is verified first, recording the move's cause (rollback,
//! promotion, operator, pin). `declare` (in [`super::declare`]) declares the feature schema of a
//! model's examples; `pin`, `unpin`, `pause` and `resume` (in [`hold`]) hold a model.
//!
//! A model is known if it has a pointer in the MODELS bucket or a version in the artifact store;
//! either alone is worth showing (pointers without artifacts are broken, artifacts without
//! pointers are not yet promoted).
//!
//! One file a subcommand: [`list`], [`show`], [`moves`] (rollback, promote, set, which the live
//! view's actions make too), [`diff`] and [`hold`] (pin, unpin, pause, resume); this module
//! holds what they share: reading every model's pointers and hold.

use std::collections::BTreeMap;

use anyhow::Context;
use async_nats::jetstream;
use clap::Subcommand;
use freshet::ids::ModelName;
use freshet::subjects::BUCKET_MODELS;
use freshet_model::store::HoldChange;
use freshet_model::store::{Hold, Pointer, PointerStore, Pointers, Slot};
use serde::Serialize;

mod diff;
pub(crate) mod hold;
mod list;
pub(crate) mod moves;
mod show;

pub use diff::DiffArgs;
pub use moves::{PointerMove, PromoteArgs, RollbackArgs, SetArgs};
pub use show::ShowArgs;

use super::{
    GlobalArgs, NotFound, Table, age_seconds, connect, emit, emit_json, format_age,
    format_age_seconds, format_bytes, key_values, open_artifacts,
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
    /// Make a version live by hand when it is neither a rollback nor a promotion (a version
    /// trained elsewhere, say). Stop train first, or it moves the pointer on at its next version
    Set(SetArgs),
    /// Compare two versions (numbers, "live" or "candidate"): lineage, examples learned,
    /// metrics, settings, schema, checksum, and how far the weights moved
    Diff(DiffArgs),
    /// Declare the feature schema of a model's examples (--features or --file), or show it;
    /// train learns only examples that follow it
    Declare(super::declare::DeclareArgs),
    /// Keep live on a version (the one live now if none is named): the gate neither promotes
    /// nor rolls back, and train takes no examples (they wait in the stream) until `unpin`
    Pin(hold::PinArgs),
    /// Release a pin: train carries on from the pinned version, and the gate judges again
    Unpin(hold::HoldArgs),
    /// Stop train learning the model: its examples wait in the stream, unacknowledged
    Pause(hold::HoldArgs),
    /// Let train learn the model again after `pause`
    Resume(hold::HoldArgs),
}

/// Both pointers of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelPointers {
    pub live: Option<Pointer>,
    pub candidate: Option<Pointer>,
    /// What an operator holds the model at (pin, pause), if anything.
    pub hold: Option<Hold>,
}

/// Opens the MODELS bucket.
pub async fn open_pointers(js: &jetstream::Context) -> anyhow::Result<Pointers> {
    let bucket = js.get_key_value(BUCKET_MODELS).await.with_context(|| {
        format!("opening KV bucket {BUCKET_MODELS} (run `freshet provision` if it does not exist)")
    })?;
    Ok(Pointers::new(bucket))
}

/// Every model with a pointer in MODELS, with both its pointers.
pub async fn read_all_pointers(
    pointers: &Pointers,
) -> anyhow::Result<BTreeMap<ModelName, ModelPointers>> {
    let mut models: BTreeMap<ModelName, ModelPointers> = BTreeMap::new();
    for (model, slot) in pointers.keys().await? {
        let pointer = pointers
            .get(&model, slot)
            .await
            .with_context(|| format!("reading pointer {}", slot.key(&model)))?
            .value;
        let entry = models.entry(model).or_default();
        match slot {
            Slot::Live => entry.live = pointer,
            Slot::Candidate => entry.candidate = pointer,
        }
    }
    for (model, entry) in &mut models {
        entry.hold = pointers
            .hold(model)
            .await
            .with_context(|| format!("reading {model}'s hold"))?
            .value;
    }
    Ok(models)
}

/// Runs `freshet models ...`.
pub async fn run(global: &GlobalArgs, command: &ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List => list::list(global).await,
        ModelsCommand::Show(args) => show::show(global, args).await,
        ModelsCommand::Rollback(args) => moves::rollback(global, args).await,
        ModelsCommand::Promote(args) => moves::promote(global, args).await,
        ModelsCommand::Set(args) => moves::set(global, args).await,
        ModelsCommand::Diff(args) => diff::diff(global, args).await,
        ModelsCommand::Declare(args) => super::declare::run(global, args).await,
        ModelsCommand::Pin(args) => hold::pin(global, args).await,
        ModelsCommand::Unpin(args) => hold::change(global, args, HoldChange::Unpin).await,
        ModelsCommand::Pause(args) => hold::change(global, args, HoldChange::Pause).await,
        ModelsCommand::Resume(args) => hold::change(global, args, HoldChange::Resume).await,
    }
}
