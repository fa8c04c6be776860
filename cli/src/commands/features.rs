//! `freshet features check FILE`: validates a feature spec offline (see
//! `freshet_features::spec`). Each problem prints as `FILE:LINE:COL: message`, as compilers
//! print theirs, so editors jump to it; the command then exits 1. A valid spec prints a summary:
//! the schema and its fingerprint, the events and entities, and every feature with how drift
//! watches it and why.
//!
//! `freshet features show MODEL ENTITY ID`: an entity's state as featurize keeps it in FEATURES
//! (its key and revision, then the state), and with `--pair` the features of a user and an item
//! as predict computes them now, with the very function it serves them with.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use freshet::ids::EntityId;
use freshet::subjects::BUCKET_FEATURES;
use freshet_features::bookstore::{
    self, CategoryState, ItemState, UserState, category_key, feature_vector, item_key, user_key,
};
use freshet_features::spec::Engine;
use freshet_features::spec::plan::Source;
use serde::de::DeserializeOwned;

use super::{GlobalArgs, NotFound, Table, connect, emit, emit_json, key_values};

/// `freshet features ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum FeaturesCommand {
    /// Validate a feature spec (TOML) offline: print each problem as FILE:LINE:COL, or a summary
    Check(CheckArgs),
    /// Print an entity's state in FEATURES; with --pair, the features of a user and an item as
    /// predict computes them now
    Show(ShowArgs),
}

/// The entities featurize keeps state for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Entity {
    User,
    Item,
    Category,
}

/// Arguments of `freshet features show`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The model whose features featurize computes (bookstore)
    pub model: String,
    /// user, item or category
    #[arg(value_enum)]
    pub entity: Entity,
    /// The entity's id (a category's name)
    pub id: String,
    /// With a user, an item (with an item, a user): also print the pair's features
    #[arg(long)]
    pub pair: Option<String>,
    /// The time the pair's features are computed at (RFC 3339), for the features that read the
    /// clock (times since, recent traffic); now when unset
    #[arg(long, requires = "pair", value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|err| {
            format!("{text:?} is not an RFC 3339 time such as 2026-03-01T09:00:00Z: {err}")
        })
}

/// Arguments of `freshet features check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The spec, e.g. infra/features/fraud.toml
    pub file: PathBuf,
}

pub async fn run(global: &GlobalArgs, command: &FeaturesCommand) -> anyhow::Result<()> {
    match command {
        FeaturesCommand::Check(args) => check(global, args),
        FeaturesCommand::Show(args) => show(global, args).await,
    }
}

/// One state read from FEATURES.
struct Stored<T> {
    key: String,
    revision: u64,
    state: T,
}

async fn read<T: DeserializeOwned>(
    features: &async_nats::jetstream::kv::Store,
    key: String,
    what: &str,
) -> anyhow::Result<Stored<T>> {
    let entry = features
        .entry(&key)
        .await
        .with_context(|| format!("reading {key} from {BUCKET_FEATURES}"))?
        .filter(|entry| entry.operation == async_nats::jetstream::kv::Operation::Put)
        .ok_or_else(|| NotFound(format!("{what}: no state in {BUCKET_FEATURES} (key {key})")))?;
    let state = serde_json::from_slice(&entry.value)
        .with_context(|| format!("{key} does not hold a {what} state this build reads"))?;
    Ok(Stored {
        key,
        revision: entry.revision,
        state,
    })
}

fn entity_id(text: &str) -> anyhow::Result<EntityId> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("{text:?} is not an entity id: {e}"))
}

async fn show(global: &GlobalArgs, args: &ShowArgs) -> anyhow::Result<()> {
    if args.model != bookstore::SCHEMA_NAME {
        anyhow::bail!(
            "featurize keeps entity state for the {} model only; feature specs (freshet features check) are not run by featurize yet",
            bookstore::SCHEMA_NAME
        );
    }
    let nats = connect(global).await?;
    let features = nats
        .js
        .get_key_value(BUCKET_FEATURES)
        .await
        .with_context(|| format!("opening {BUCKET_FEATURES} (is the topology provisioned?)"))?;
    let (key, revision, state) = match args.entity {
        Entity::User => {
            let user: Stored<UserState> =
                read(&features, user_key(&entity_id(&args.id)?), "user").await?;
            (user.key, user.revision, serde_json::to_value(user.state)?)
        }
        Entity::Item => {
            let item: Stored<ItemState> =
                read(&features, item_key(&entity_id(&args.id)?), "item").await?;
            (item.key, item.revision, serde_json::to_value(item.state)?)
        }
        Entity::Category => {
            let category: Stored<CategoryState> =
                read(&features, category_key(&args.id), "category").await?;
            (
                category.key,
                category.revision,
                serde_json::to_value(category.state)?,
            )
        }
    };
    let at = args.at.unwrap_or_else(Utc::now);
    let pair = match (&args.pair, args.entity) {
        (None, _) => None,
        (Some(other), Entity::User) => Some(pair_features(&features, &args.id, other, at).await?),
        (Some(other), Entity::Item) => Some(pair_features(&features, other, &args.id, at).await?),
        (Some(_), Entity::Category) => {
            anyhow::bail!("--pair goes with a user (an item) or an item (a user)")
        }
    };
    let names = bookstore::schema().features;
    if global.json {
        let mut out = serde_json::json!({ "key": key, "revision": revision, "state": state });
        if let Some(values) = &pair {
            out["features"] = names
                .iter()
                .zip(values)
                .map(|(name, value)| (name.clone(), serde_json::json!(value)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        return emit_json(&out);
    }
    let mut text = key_values(&[("key", key), ("revision", revision.to_string())]);
    text.push_str(&serde_json::to_string_pretty(&state)?);
    text.push('\n');
    if let Some(values) = pair {
        text.push('\n');
        let mut table = Table::new(&["#", "FEATURE", "VALUE"]).align_right(&[0, 2]);
        for (i, (name, value)) in names.iter().zip(values).enumerate() {
            table.row(vec![i.to_string(), name.clone(), format!("{value:.6}")]);
        }
        text.push_str(&table.to_string());
    }
    emit(&text)
}

/// The features of `user` and `item` at `at`, as predict computes them for a request that names
/// both: an entity with no state yet reads as new, as it does there.
async fn pair_features(
    features: &async_nats::jetstream::kv::Store,
    user: &str,
    item: &str,
    at: DateTime<Utc>,
) -> anyhow::Result<Vec<f32>> {
    let user_state: UserState = read_or_new(features, user_key(&entity_id(user)?)).await?;
    let item_state: ItemState = read_or_new(features, item_key(&entity_id(item)?)).await?;
    let category_state: CategoryState = match &item_state.category {
        Some(name) => read_or_new(features, category_key(name)).await?,
        None => CategoryState::default(),
    };
    Ok(feature_vector(
        &user_state,
        &item_state,
        &category_state,
        at,
    ))
}

async fn read_or_new<T: DeserializeOwned + Default>(
    features: &async_nats::jetstream::kv::Store,
    key: String,
) -> anyhow::Result<T> {
    match read::<T>(features, key, "entity").await {
        Ok(stored) => Ok(stored.state),
        Err(err) if err.is::<NotFound>() => Ok(T::default()),
        Err(err) => Err(err),
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
