//! `freshet models declare MODEL`: declares the feature schema of a model fed with `example`
//! events (featurize declares the bookstore schema itself), or shows the one declared. train
//! learns an example only when it follows its model's declaration (`freshet::store::declarations`,
//! in `shared/core/src/store/declarations.rs`): names and order of the features, under a schema
//! name and version. Other features under a declared name and version are refused; declare them
//! under a new version, and train begins a new chain of versions for them.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use freshet::examples::FeatureSchema;
use freshet::ids::ModelName;
use freshet::store::declarations::{DeclareError, Judgement};
use freshet::store::{DeclarationStore, Declarations};
use freshet::subjects::BUCKET_MODELS;
use serde::Serialize;

use super::{GlobalArgs, NotFound, connect, emit_json};

/// Arguments of `freshet models declare`.
#[derive(Debug, Clone, Args)]
pub struct DeclareArgs {
    /// Model name
    pub model: ModelName,
    /// The features of its examples, in vector order (comma-separated); without it (and without
    /// --file) the declared schema is shown
    #[arg(long = "features", value_delimiter = ',', conflicts_with = "file")]
    pub features: Vec<String>,
    /// The schema's name (default: the model's)
    #[arg(long = "schema-name", conflicts_with = "file")]
    pub schema_name: Option<String>,
    /// The schema's version; bump it whenever the features change
    #[arg(long = "schema-version", default_value_t = 1, conflicts_with = "file")]
    pub schema_version: u32,
    /// A schema as JSON (`{"name", "version", "features", "monitoring"}`, as manifests hold it)
    #[arg(long = "file")]
    pub file: Option<PathBuf>,
}

impl DeclareArgs {
    /// The schema to declare, if one is given.
    fn schema(&self) -> anyhow::Result<Option<FeatureSchema>> {
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let schema = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a feature schema", path.display()))?;
            return Ok(Some(schema));
        }
        if self.features.is_empty() {
            return Ok(None);
        }
        Ok(Some(FeatureSchema {
            name: self
                .schema_name
                .clone()
                .unwrap_or_else(|| self.model.to_string()),
            version: self.schema_version,
            features: self.features.iter().map(|f| f.trim().to_string()).collect(),
            monitoring: Vec::new(),
        }))
    }
}

/// What `declare` did, for `--json`.
#[derive(Debug, Clone, Serialize)]
struct Declaration {
    model: String,
    schema: FeatureSchema,
    /// `new`, `unchanged` or `replaced`; absent when only shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    revision: u64,
}

/// Runs `freshet models declare`.
pub async fn run(global: &GlobalArgs, args: &DeclareArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let bucket = nats
        .js
        .get_key_value(BUCKET_MODELS)
        .await
        .with_context(|| {
            format!(
                "opening KV bucket {BUCKET_MODELS} (run `freshet provision` if it does not exist)"
            )
        })?;
    let declarations = Declarations::new(bucket);
    let model = &args.model;
    let Some(schema) = args.schema()? else {
        let declared = declarations.declared(model).await?;
        let Some(schema) = declared.value else {
            return Err(NotFound(format!(
                "model {model} has no declared schema; declare one with --features or --file"
            ))
            .into());
        };
        return report(
            global,
            &Declaration {
                model: model.to_string(),
                schema,
                outcome: None,
                revision: declared.revision,
            },
        );
    };
    let declared = declarations
        .declare(model, &schema)
        .await
        .map_err(|err| match err {
            DeclareError::Failed(failure) => anyhow::Error::new(failure),
            refused => anyhow::anyhow!("{refused}"),
        })?;
    let outcome = match declared.judgement {
        Judgement::New => "new",
        Judgement::Unchanged => "unchanged",
        Judgement::Replace => "replaced",
    };
    report(
        global,
        &Declaration {
            model: model.to_string(),
            schema,
            outcome: Some(outcome),
            revision: declared.revision,
        },
    )
}

fn report(global: &GlobalArgs, declaration: &Declaration) -> anyhow::Result<()> {
    if global.json {
        return emit_json(declaration);
    }
    let schema = &declaration.schema;
    let what = match declaration.outcome {
        None => "is declared",
        Some("new") => "declared",
        Some("unchanged") => "was declared already",
        Some(_) => {
            "declared, replacing the previous declaration (with other features, train begins a new chain of versions)"
        }
    };
    println!(
        "{} {what}: {} v{} with {} features ({}), revision {}",
        declaration.model,
        schema.name,
        schema.version,
        schema.n_features(),
        schema.features.join(", "),
        declaration.revision
    );
    Ok(())
}
