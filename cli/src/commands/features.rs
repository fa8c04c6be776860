//! `freshet features check FILE`: validates a feature spec offline (see
//! `freshet_features::spec`). Each problem prints as `FILE:LINE:COL: message`, as compilers
//! print theirs, so editors jump to it; the command then exits 1. A valid spec prints a summary:
//! the schema and its fingerprint, the events and entities, and every feature with how drift
//! watches it and why.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use freshet_features::spec::Engine;
use freshet_features::spec::plan::Source;

use super::{GlobalArgs, Table, emit, emit_json, key_values};

/// `freshet features ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum FeaturesCommand {
    /// Validate a feature spec (TOML) offline: print each problem as FILE:LINE:COL, or a summary
    Check(CheckArgs),
}

/// Arguments of `freshet features check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The spec, e.g. infra/features/fraud.toml
    pub file: PathBuf,
}

pub fn run(global: &GlobalArgs, command: &FeaturesCommand) -> anyhow::Result<()> {
    match command {
        FeaturesCommand::Check(args) => check(global, args),
    }
}

fn check(global: &GlobalArgs, args: &CheckArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let engine = match Engine::from_toml(&text) {
        Ok(engine) => engine,
        Err(errors) => {
            let shown = args.file.display();
            for problem in &errors.0 {
                eprintln!("{shown}:{problem}");
            }
            anyhow::bail!(
                "{shown}: {} problem{}",
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
        }
    };
    if global.json {
        return emit_json(&serde_json::json!({
            "schema": engine.schema(),
            "fingerprint": engine.fingerprint(),
        }));
    }
    emit(&summary(&engine))
}

/// The summary of a valid spec.
fn summary(engine: &Engine) -> String {
    let plan = engine.plan();
    let schema = engine.schema();
    let mut text = key_values(&[
        (
            "schema",
            format!("{} version {}", schema.name, schema.version),
        ),
        ("fingerprint", engine.fingerprint().to_string()),
        (
            "label",
            format!(
                "{} made positive by a later {} with the same {}, within {}; feedback {:?}",
                plan.events[plan.label.example.event].name,
                plan.events[plan.label.positive.event].name,
                plan.label
                    .matching
                    .iter()
                    .map(|&f| plan.fields[f].as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                humantime::format_duration(std::time::Duration::from_millis(
                    plan.label.horizon_ms.max(0) as u64
                )),
                plan.label.feedback,
            )
            .to_lowercase(),
        ),
    ]);
    text.push('\n');
    let mut events = Table::new(&["EVENT", "FIELDS"]);
    for event in &plan.events {
        let fields: Vec<String> = event
            .fields
            .iter()
            .map(|f| {
                let name = &plan.fields[f.field];
                match &f.source {
                    Source::Path(path) => format!("{name}=data.{}", path.join(".")),
                    Source::Lookup { entity, field } => format!(
                        "{name}={}.{}",
                        plan.entities[*entity].name, plan.fields[*field]
                    ),
                }
            })
            .collect();
        events.row(vec![event.name.clone(), fields.join(" ")]);
    }
    text.push_str(&events.to_string());
    text.push('\n');
    let mut entities = Table::new(&["ENTITY", "KEY", "UPDATED BY", "AGGREGATES"]).align_right(&[3]);
    for entity in &plan.entities {
        let names = |list: &[usize], all: &dyn Fn(usize) -> String| {
            list.iter().map(|&i| all(i)).collect::<Vec<_>>().join(",")
        };
        entities.row(vec![
            entity.name.clone(),
            names(&entity.key, &|f| plan.fields[f].clone()),
            names(&entity.events, &|e| plan.events[e].name.clone()),
            entity.slots.len().to_string(),
        ]);
    }
    text.push_str(&entities.to_string());
    text.push('\n');
    let mut features = Table::new(&["#", "FEATURE", "WATCH", "REASON"]).align_right(&[0]);
    for (i, (name, monitoring)) in schema
        .features
        .iter()
        .zip(schema.monitoring.iter())
        .enumerate()
    {
        features.row(vec![
            i.to_string(),
            name.clone(),
            monitoring.watch.as_str().to_string(),
            monitoring.reason.clone(),
        ]);
    }
    text.push_str(&features.to_string());
    text
}
