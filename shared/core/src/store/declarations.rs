//! Declared feature schemas: `<model>.schema` in the MODELS bucket says what a model's examples
//! are (the names and order of their features, under a schema name and version). train learns
//! an example only when it follows its model's declaration; it never takes a schema from
//! whichever example arrives first, so one stray example cannot decide what a model is.
//!
//! A declaration is made by whoever produces the model's features: featurize declares the
//! bookstore schema for the model it featurizes for, a feature-spec engine the schema of its
//! spec, and for a model fed with `example` events an operator (`freshet models declare`). Every
//! write goes through [`DeclarationStore::declare`], which applies one rule ([`judge`]) and writes
//! by compare-and-set on the revision it read:
//!
//! - a schema is identified by its name and version: declaring one that is already declared,
//!   feature for feature, changes nothing (a changed monitoring plan, drift's concern, is
//!   written over the old one);
//! - a declaration with other features under the same name and version is refused: features
//!   change only with a new version (or name), so a model's declared version always means one
//!   list;
//! - a declaration under another name or version replaces the current one; train then starts a
//!   new chain of versions for it (its features are not the old model's inputs).

use std::future::Future;

use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::error::Failure;
use crate::events::MAX_FEATURES;
use crate::examples::FeatureSchema;
use crate::ids::ModelName;
use crate::store::kv::{CasError, Versioned, compare_and_set, read};

/// The key of `model`'s declaration in MODELS: `<model>.schema`.
pub fn key(model: &ModelName) -> String {
    format!("{model}.schema")
}

/// What [`judge`] decides about a proposed declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The model has no declaration: write it.
    New,
    /// The same schema is declared already: nothing to write.
    Unchanged,
    /// Another schema (name or version) is declared, or the same one with another monitoring
    /// plan: replace it.
    Replace,
}

/// Why a declaration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the schema is not valid: {0}")]
    Invalid(String),
    #[error(
        "{name} v{version} is declared already with other features ({declared}); declare the changed schema under a new version"
    )]
    Conflicting {
        name: String,
        version: u32,
        /// The declared features, comma-separated.
        declared: String,
    },
}

/// Why a declaration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    #[error("model {model}: {refusal}")]
    Refused { model: String, refusal: Refusal },
    /// Another writer declared at the same moment, every time this one tried.
    #[error("model {model}: the declaration kept changing while it was written")]
    Contended { model: String },
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// What a declaration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub judgement: Judgement,
    /// The declaration's revision in MODELS.
    pub revision: u64,
}

/// Checks that `schema` can be declared at all: a name, 1 to [`MAX_FEATURES`] distinct,
/// non-empty feature names, and a monitoring plan that is empty or names one watch per feature.
pub fn validate(schema: &FeatureSchema) -> Result<(), Refusal> {
    let invalid = |why: String| Err(Refusal::Invalid(why));
    if schema.name.trim().is_empty() {
        return invalid("the schema has no name".into());
    }
    let n = schema.n_features();
    if n == 0 || n > MAX_FEATURES {
        return invalid(format!("{n} features; 1 to {MAX_FEATURES} can be declared"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in &schema.features {
        if name.trim().is_empty() {
            return invalid("a feature has an empty name".into());
        }
        if !seen.insert(name.as_str()) {
            return invalid(format!("feature {name:?} is named twice"));
        }
    }
    if !schema.monitoring.is_empty() && schema.monitoring.len() != n {
        return invalid(format!(
            "the monitoring plan has {} entries for {n} features",
            schema.monitoring.len()
        ));
    }
    Ok(())
}

/// The rule every declaration follows (see the module documentation). `current` is the
/// declaration stored now, `None` when there is none (or it cannot be read, so that declaring
/// again repairs it).
pub fn judge(
    current: Option<&FeatureSchema>,
    proposed: &FeatureSchema,
) -> Result<Judgement, Refusal> {
    validate(proposed)?;
    Ok(match current {
        None => Judgement::New,
        Some(current) if current == proposed => Judgement::Unchanged,
        Some(current) if current.name == proposed.name && current.version == proposed.version => {
            if current.features != proposed.features {
                return Err(Refusal::Conflicting {
                    name: current.name.clone(),
                    version: current.version,
                    declared: current.features.join(","),
                });
            }
            Judgement::Replace
        }
        Some(_) => Judgement::Replace,
    })
}

/// Whether examples following `schema` can be learned by a model trained on `trained`: the same
/// schema name, version and features (the monitoring plan is drift's, and may be added later).
pub fn same_inputs(schema: &FeatureSchema, trained: &FeatureSchema) -> bool {
    schema.name == trained.name
        && schema.version == trained.version
        && schema.features == trained.features
}

pub(crate) mod sealed {
    use super::*;

    /// The raw compare-and-set, for the implementations of [`DeclarationStore`] only: every
    /// writer goes through `declare`, which applies the rule.
    pub trait Write {
        fn put(
            &self,
            model: &ModelName,
            schema: &FeatureSchema,
            expected: u64,
        ) -> impl Future<Output = Result<u64, CasError>> + Send;
    }
}

/// How many times [`DeclarationStore::declare`] reads and tries again when another writer moved
/// the declaration between its read and its write.
const DECLARE_ATTEMPTS: usize = 4;

/// Where declarations live: the MODELS bucket ([`Declarations`]), or memory in unit tests
/// ([`MemoryDeclarations`]).
pub trait DeclarationStore: sealed::Write + Send + Sync {
    /// The model's declaration and the revision to compare against when replacing it. An
    /// unreadable value is a failure that names the key.
    fn declared(
        &self,
        model: &ModelName,
    ) -> impl Future<Output = Result<Versioned<FeatureSchema>, Failure>> + Send;

    /// Declares `schema` for `model` under the rule of [`judge`], by compare-and-set.
    fn declare(
        &self,
        model: &ModelName,
        schema: &FeatureSchema,
    ) -> impl Future<Output = Result<Declared, DeclareError>> + Send {
        async move {
            for _ in 0..DECLARE_ATTEMPTS {
                let (current, revision) = match self.declared(model).await {
                    Ok(read) => (read.value, read.revision),
                    Err(failure) => {
                        tracing::warn!(model = %model, error = %failure, "the declared schema cannot be read; declaring over it");
                        (None, self.revision(model).await?)
                    }
                };
                let judgement =
                    judge(current.as_ref(), schema).map_err(|refusal| DeclareError::Refused {
                        model: model.to_string(),
                        refusal,
                    })?;
                if judgement == Judgement::Unchanged {
                    return Ok(Declared {
                        judgement,
                        revision,
                    });
                }
                match self.put(model, schema, revision).await {
                    Ok(revision) => {
                        return Ok(Declared {
                            judgement,
                            revision,
                        });
                    }
                    Err(CasError::Conflict { .. }) => continue,
                    Err(CasError::Failed(failure)) => return Err(failure.into()),
                }
            }
            Err(DeclareError::Contended {
                model: model.to_string(),
            })
        }
    }

    /// The revision of the model's declaration key, whatever it holds.
    fn revision(&self, model: &ModelName) -> impl Future<Output = Result<u64, Failure>> + Send;
}

/// Declarations in the MODELS bucket.
#[derive(Clone)]
pub struct Declarations {
    kv: kv::Store,
}

impl Declarations {
    pub fn new(kv: kv::Store) -> Declarations {
        Declarations { kv }
    }
}

impl sealed::Write for Declarations {
    async fn put(
        &self,
        model: &ModelName,
        schema: &FeatureSchema,
        expected: u64,
    ) -> Result<u64, CasError> {
        let bytes =
            serde_json::to_vec(schema).expect("a schema is plain data and always serialises");
        compare_and_set(&self.kv, &key(model), Bytes::from(bytes), expected).await
    }
}

impl DeclarationStore for Declarations {
    async fn declared(&self, model: &ModelName) -> Result<Versioned<FeatureSchema>, Failure> {
        let key = key(model);
        let raw = read(&self.kv, &key).await?;
        let value = match raw.value {
            None => None,
            Some(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| Failure::new(format!("decode the declared schema {key}"), e))?,
            ),
        };
        Ok(Versioned {
            value,
            revision: raw.revision,
        })
    }

    async fn revision(&self, model: &ModelName) -> Result<u64, Failure> {
        Ok(read(&self.kv, &key(model)).await?.revision)
    }
}

/// Declarations kept in memory, for unit tests; clones share them. Like the bucket, one
/// revision counter for every key.
#[derive(Clone, Default)]
pub struct MemoryDeclarations {
    state: std::sync::Arc<std::sync::Mutex<MemoryState>>,
}

#[derive(Default)]
struct MemoryState {
    revision: u64,
    keys: std::collections::BTreeMap<String, (u64, FeatureSchema)>,
}

impl MemoryDeclarations {
    pub fn new() -> MemoryDeclarations {
        MemoryDeclarations::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A test that panicked while holding the lock has failed already; its data is intact.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl sealed::Write for MemoryDeclarations {
    async fn put(
        &self,
        model: &ModelName,
        schema: &FeatureSchema,
        expected: u64,
    ) -> Result<u64, CasError> {
        let key = key(model);
        let mut state = self.state();
        let current = state.keys.get(&key).map_or(0, |(revision, _)| *revision);
        if current != expected {
            return Err(CasError::Conflict { key, expected });
        }
        state.revision += 1;
        let revision = state.revision;
        state.keys.insert(key, (revision, schema.clone()));
        Ok(revision)
    }
}

impl DeclarationStore for MemoryDeclarations {
    async fn declared(&self, model: &ModelName) -> Result<Versioned<FeatureSchema>, Failure> {
        let state = self.state();
        Ok(match state.keys.get(&key(model)) {
            Some((revision, schema)) => Versioned {
                value: Some(schema.clone()),
                revision: *revision,
            },
            None => Versioned {
                value: None,
                revision: 0,
            },
        })
    }

    async fn revision(&self, model: &ModelName) -> Result<u64, Failure> {
        Ok(self.declared(model).await?.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(name: &str, version: u32, features: &[&str]) -> FeatureSchema {
        FeatureSchema {
            name: name.into(),
            version,
            features: features.iter().map(|f| f.to_string()).collect(),
            monitoring: Vec::new(),
        }
    }

    #[test]
    fn features_change_only_with_a_new_version() {
        let v1 = schema("churn", 1, &["tenure", "spend"]);
        assert_eq!(judge(None, &v1), Ok(Judgement::New));
        assert_eq!(judge(Some(&v1), &v1.clone()), Ok(Judgement::Unchanged));
        let changed = schema("churn", 1, &["tenure", "spend", "visits"]);
        assert_eq!(
            judge(Some(&v1), &changed),
            Err(Refusal::Conflicting {
                name: "churn".into(),
                version: 1,
                declared: "tenure,spend".into()
            })
        );
        let v2 = schema("churn", 2, &["tenure", "spend", "visits"]);
        assert_eq!(judge(Some(&v1), &v2), Ok(Judgement::Replace));
        // Another name is another schema.
        assert_eq!(
            judge(Some(&v1), &schema("bookstore", 1, &["a"])),
            Ok(Judgement::Replace)
        );
        // The monitoring plan is drift's: it may change under the same version.
        let mut planned = v1.clone();
        planned.monitoring =
            vec![crate::monitoring::Monitoring::new(crate::monitoring::Watch::Value, "a rate"); 2];
        assert_eq!(judge(Some(&v1), &planned), Ok(Judgement::Replace));
        assert!(same_inputs(&planned, &v1), "the inputs are the same");
        assert!(!same_inputs(&v2, &v1));
    }

    #[test]
    fn only_well_formed_schemas_are_declared() {
        assert!(matches!(
            judge(None, &schema("", 1, &["a"])),
            Err(Refusal::Invalid(_))
        ));
        assert!(judge(None, &schema("s", 1, &[])).is_err());
        assert!(judge(None, &schema("s", 1, &["a", " "])).is_err());
        assert!(judge(None, &schema("s", 1, &["a", "b", "a"])).is_err());
        let mut half_planned = schema("s", 1, &["a", "b"]);
        half_planned.monitoring = vec![crate::monitoring::Monitoring::new(
            crate::monitoring::Watch::Value,
            "a rate",
        )];
        assert!(judge(None, &half_planned).is_err());
    }

    #[tokio::test]
    async fn declaring_writes_once_and_refuses_a_silent_change() {
        let store = MemoryDeclarations::new();
        let model = ModelName::parse("churn").unwrap();
        let v1 = schema("churn", 1, &["tenure", "spend"]);
        let first = store.declare(&model, &v1).await.unwrap();
        assert_eq!(first.judgement, Judgement::New);
        let again = store.declare(&model, &v1).await.unwrap();
        assert_eq!(
            again,
            Declared {
                judgement: Judgement::Unchanged,
                revision: first.revision
            }
        );
        let refused = store
            .declare(&model, &schema("churn", 1, &["x", "y", "z"]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                DeclareError::Refused {
                    refusal: Refusal::Conflicting { .. },
                    ..
                }
            ),
            "{refused}"
        );
        assert_eq!(store.declared(&model).await.unwrap().value, Some(v1));
        let v2 = schema("churn", 2, &["x", "y", "z"]);
        assert_eq!(
            store.declare(&model, &v2).await.unwrap().judgement,
            Judgement::Replace
        );
        assert_eq!(store.declared(&model).await.unwrap().value, Some(v2));
        let other = ModelName::parse("other").unwrap();
        assert_eq!(store.declared(&other).await.unwrap().value, None);
    }
}
