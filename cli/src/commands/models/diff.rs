//! `freshet models diff`: two versions side by side: lineage, examples learned, metrics,
//! settings, schema, checksum and how far the weights moved.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use clap::Args;
use freshet::examples::FeatureSchema;
use freshet::ids::ModelName;
use freshet_model::store::{ArtifactStore, PointerStore, Pointers, Slot};
use freshet_model::{Manifest, ModelKind, ModelScorer, SequenceRange};
use serde::Serialize;

use super::open_pointers;
use super::show::read_manifest;
use super::{
    GlobalArgs, NotFound, Table, connect, emit, emit_json, format_age_seconds, format_bytes,
    key_values, open_artifacts,
};

/// Arguments of `freshet models diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// Model name
    pub model: ModelName,
    /// The version to compare from: a number, "live" or "candidate"
    pub a: VersionRef,
    /// The version to compare with: a number, "live" or "candidate"
    pub b: VersionRef,
    /// How many of the most changed weights to list
    #[arg(long = "top", default_value_t = 10)]
    pub top: usize,
}

/// A version named on the command line: by number, or by the pointer that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Number(u64),
    Pointer(Slot),
}

impl std::str::FromStr for VersionRef {
    type Err = String;

    /// Reads `12`, `v12`, `live` or `candidate`.
    fn from_str(text: &str) -> Result<VersionRef, String> {
        match text {
            "live" => Ok(VersionRef::Pointer(Slot::Live)),
            "candidate" => Ok(VersionRef::Pointer(Slot::Candidate)),
            _ => text
                .strip_prefix('v')
                .unwrap_or(text)
                .parse()
                .map(VersionRef::Number)
                .map_err(|_| {
                    format!("{text:?} is not a version: a number, \"live\" or \"candidate\"")
                }),
        }
    }
}

/// The per-feature weights of a version, when its artifact decodes to them.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// Feature names, in weight order.
    pub features: Vec<String>,
    pub values: Vec<f32>,
    pub bias: f32,
}

/// One version as the diff reads it: its manifest, and its weights or why there are none.
#[derive(Debug, Clone)]
pub struct VersionData {
    pub manifest: Manifest,
    pub weights: Result<Weights, String>,
}

/// The per-feature weights in a model artifact: a logistic regression's, named by the
/// manifest's schema (its weights act on standardised inputs). Other kinds have no weight per
/// feature to compare, which is said rather than guessed at.
pub fn read_weights(manifest: &Manifest, bytes: &[u8]) -> Result<Weights, String> {
    if manifest.config.kind != ModelKind::Logistic {
        return Err(format!(
            "{} models have no single weight per feature to compare",
            manifest.config.kind.name()
        ));
    }
    let model = ModelScorer::from_bytes(bytes)
        .map_err(|err| format!("the artifact does not decode: {err}"))?;
    let Some((values, bias)) = model.linear_weights() else {
        return Err(format!(
            "the artifact holds a {} model, not the logistic regression its manifest names",
            model.kind().name()
        ));
    };
    let values = values.to_vec();
    let features = if manifest.schema.features.len() == values.len() {
        manifest.schema.features.clone()
    } else {
        (0..values.len()).map(|i| format!("w[{i}]")).collect()
    };
    Ok(Weights {
        features,
        values,
        bias,
    })
}

/// How version B stands to version A in training history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The same version twice.
    Same,
    /// B continued training from A, directly or through versions in between.
    Descendant,
    /// A continued training from B.
    Ancestor,
    /// Both belong to one unbroken chain of training steps (the manifests' lineage), though
    /// the parent links between them could not be followed (a version in between was deleted).
    SameChain,
    /// Neither was found to descend from the other: another chain (a candidate forked off, a
    /// model started again), or a link between them is gone.
    Unrelated,
}

impl Relation {
    /// `generations`: the parent links from the higher version down to the lower one, when the
    /// caller could follow them.
    fn between(a: &Manifest, b: &Manifest, generations: Option<u64>) -> Relation {
        let direct = b.parent == Some(a.version) || a.parent == Some(b.version);
        if a.version == b.version {
            Relation::Same
        } else if generations.is_some() || direct {
            if b.version > a.version || b.parent == Some(a.version) {
                Relation::Descendant
            } else {
                Relation::Ancestor
            }
        } else if a.lineage_root() == b.lineage_root() {
            Relation::SameChain
        } else {
            Relation::Unrelated
        }
    }

    fn describe(self, a: &Manifest, b: &Manifest, generations: Option<u64>) -> String {
        let (va, vb) = (a.version, b.version);
        let steps = |g: Option<u64>| match g {
            Some(1) | None => String::new(),
            Some(g) => format!(", {g} versions on"),
        };
        match self {
            Relation::Same => format!("v{va} is v{vb}"),
            Relation::Descendant => {
                format!("v{vb} continued training from v{va}{}", steps(generations))
            }
            Relation::Ancestor => {
                format!("v{va} continued training from v{vb}{}", steps(generations))
            }
            Relation::SameChain => format!(
                "v{va} and v{vb} are steps of one training chain (root v{})",
                a.lineage_root()
            ),
            Relation::Unrelated => format!("neither v{va} nor v{vb} descends from the other"),
        }
    }
}

/// A setting (kind, hyperparameter, width, seed...) that differs between the versions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingChange {
    /// Dotted path, e.g. `hyper.learning_rate`.
    pub setting: String,
    /// Its value in A; null when A does not record it.
    pub a: serde_json::Value,
    pub b: serde_json::Value,
}

/// How the feature schemas differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchemaDiff {
    /// Same name, version and features in the same order.
    pub same: bool,
    /// Features B has and A has not.
    pub added: Vec<String>,
    /// Features A has and B has not.
    pub removed: Vec<String>,
    /// The features both have are in another order.
    pub reordered: bool,
}

/// One weight that moved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightChange {
    pub feature: String,
    pub a: f32,
    pub b: f32,
    /// `b - a`.
    pub change: f32,
}

/// A weight vector shorter than this (on standardised inputs) carries no signal yet: a model
/// that has barely begun to learn. Relative measures against it would only amplify noise.
pub const NEGLIGIBLE_NORM: f64 = 1e-6;

/// How far the weights moved from A to B, over the features both have (matched by name).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightsDiff {
    pub features_compared: usize,
    /// ‖w_A‖ and ‖w_B‖ (L2, bias excluded).
    pub norm_a: f64,
    pub norm_b: f64,
    /// ‖w_B − w_A‖.
    pub l2_distance: f64,
    /// ‖w_B − w_A‖ / max(‖w_A‖, ‖w_B‖), between 0 and 2 (2: the weights turned around); absent
    /// when both norms are below [`NEGLIGIBLE_NORM`]. Dividing by ‖w_A‖ alone made a version
    /// trained from near-zero weights read as having moved by millions of percent.
    pub relative_change: Option<f64>,
    /// cos(w_A, w_B): 1 when the weights point the same way (one is a rescaled copy of the other),
    /// 0 when they are unrelated, −1 when opposite; absent when either norm is below
    /// [`NEGLIGIBLE_NORM`], where a direction means nothing.
    pub cosine_similarity: Option<f64>,
    pub max_abs_change: f64,
    pub bias_a: f32,
    pub bias_b: f32,
    /// The most changed weights, largest |change| first.
    pub largest_changes: Vec<WeightChange>,
}

/// Everything `freshet models diff` reports: both manifests whole, and what changed from A to B.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionDiff {
    pub model: String,
    pub a: Manifest,
    pub b: Manifest,
    pub relation: Relation,
    /// Parent links from the higher version down to the lower, when one descends from the other
    /// and every version between them is still stored.
    pub generations: Option<u64>,
    /// Seconds from A's creation to B's (negative when B is older).
    pub created_gap_seconds: f64,
    /// Update steps, examples and high-water mark of B minus those of A.
    pub steps_gained: i64,
    pub examples_gained: i64,
    pub high_water_mark_gained: i64,
    pub accuracy_change: f64,
    pub log_loss_change: f64,
    /// Absent unless both versions record a ROC AUC.
    pub roc_auc_change: Option<f64>,
    pub same_artifact: bool,
    pub size_change_bytes: i64,
    pub settings_changed: Vec<SettingChange>,
    pub schema: SchemaDiff,
    /// How far the weights moved; absent when either artifact gives no weights.
    pub weights: Option<WeightsDiff>,
    /// Why `weights` is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights_unavailable: Option<String>,
}

/// Compares two versions of a model. Pure: the manifests and weights are read by the caller,
/// which also follows the parent links between the two (`generations`, see [`VersionDiff`]).
pub fn diff_versions(
    a: &VersionData,
    b: &VersionData,
    generations: Option<u64>,
    top: usize,
) -> VersionDiff {
    let (ma, mb) = (&a.manifest, &b.manifest);
    let gained = |x: u64, y: u64| {
        i64::try_from(y).unwrap_or(i64::MAX) - i64::try_from(x).unwrap_or(i64::MAX)
    };
    let (weights, weights_unavailable) = match (&a.weights, &b.weights) {
        (Ok(wa), Ok(wb)) => (Some(diff_weights(wa, wb, top)), None),
        (Err(why), _) => (None, Some(format!("v{}: {why}", ma.version))),
        (_, Err(why)) => (None, Some(format!("v{}: {why}", mb.version))),
    };
    VersionDiff {
        model: mb.model.clone(),
        relation: Relation::between(ma, mb, generations),
        generations,
        created_gap_seconds: (mb.created_at - ma.created_at).num_milliseconds() as f64 / 1000.0,
        steps_gained: gained(ma.step, mb.step),
        examples_gained: gained(ma.metrics.examples_total, mb.metrics.examples_total),
        high_water_mark_gained: gained(ma.high_water_mark, mb.high_water_mark),
        accuracy_change: mb.metrics.prequential_accuracy - ma.metrics.prequential_accuracy,
        log_loss_change: mb.metrics.log_loss - ma.metrics.log_loss,
        roc_auc_change: mb
            .metrics
            .roc_auc
            .zip(ma.metrics.roc_auc)
            .map(|(b, a)| b - a),
        same_artifact: ma.sha256.eq_ignore_ascii_case(&mb.sha256),
        size_change_bytes: gained(ma.size_bytes, mb.size_bytes),
        settings_changed: diff_settings(ma, mb),
        schema: diff_schema(&ma.schema, &mb.schema),
        weights,
        weights_unavailable,
        a: ma.clone(),
        b: mb.clone(),
    }
}

/// What defines a version besides its data, as JSON: its whole configuration (for a manifest
/// written before configurations, the logistic default with its hyperparameters).
fn settings_of(manifest: &Manifest) -> serde_json::Value {
    serde_json::to_value(manifest.config).unwrap_or_default()
}

/// Every leaf of a JSON value by dotted path.
fn flatten_json(
    prefix: &str,
    value: &serde_json::Value,
    out: &mut BTreeMap<String, serde_json::Value>,
) {
    match value {
        serde_json::Value::Object(fields) if !fields.is_empty() => {
            for (key, field) in fields {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_json(&path, field, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}

fn diff_settings(a: &Manifest, b: &Manifest) -> Vec<SettingChange> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten_json("", &settings_of(a), &mut fa);
    flatten_json("", &settings_of(b), &mut fb);
    let keys: BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let va = fa.get(key).cloned().unwrap_or_default();
            let vb = fb.get(key).cloned().unwrap_or_default();
            (va != vb).then(|| SettingChange {
                setting: key.clone(),
                a: va,
                b: vb,
            })
        })
        .collect()
}

fn diff_schema(a: &FeatureSchema, b: &FeatureSchema) -> SchemaDiff {
    let in_a: BTreeSet<&String> = a.features.iter().collect();
    let in_b: BTreeSet<&String> = b.features.iter().collect();
    let shared_a: Vec<&String> = a.features.iter().filter(|f| in_b.contains(f)).collect();
    let shared_b: Vec<&String> = b.features.iter().filter(|f| in_a.contains(f)).collect();
    SchemaDiff {
        same: a == b,
        added: b
            .features
            .iter()
            .filter(|f| !in_a.contains(f))
            .cloned()
            .collect(),
        removed: a
            .features
            .iter()
            .filter(|f| !in_b.contains(f))
            .cloned()
            .collect(),
        reordered: shared_a != shared_b,
    }
}

fn diff_weights(a: &Weights, b: &Weights, top: usize) -> WeightsDiff {
    let by_name: BTreeMap<&str, f32> = a
        .features
        .iter()
        .map(String::as_str)
        .zip(a.values.iter().copied())
        .collect();
    let mut changes: Vec<WeightChange> = b
        .features
        .iter()
        .zip(&b.values)
        .filter_map(|(feature, &wb)| {
            let wa = *by_name.get(feature.as_str())?;
            Some(WeightChange {
                feature: feature.clone(),
                a: wa,
                b: wb,
                change: wb - wa,
            })
        })
        .collect();
    let norm = |values: &mut dyn Iterator<Item = f32>| {
        values
            .map(|v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt()
    };
    let norm_a = norm(&mut changes.iter().map(|c| c.a));
    let norm_b = norm(&mut changes.iter().map(|c| c.b));
    let l2_distance = norm(&mut changes.iter().map(|c| c.change));
    let larger_norm = norm_a.max(norm_b);
    let relative_change = (larger_norm >= NEGLIGIBLE_NORM).then(|| l2_distance / larger_norm);
    let cosine_similarity = (norm_a.min(norm_b) >= NEGLIGIBLE_NORM).then(|| {
        let dot: f64 = changes
            .iter()
            .map(|c| f64::from(c.a) * f64::from(c.b))
            .sum();
        (dot / (norm_a * norm_b)).clamp(-1.0, 1.0)
    });
    let max_abs_change = changes
        .iter()
        .map(|c| f64::from(c.change.abs()))
        .fold(0.0, f64::max);
    let features_compared = changes.len();
    // Stable: equal changes keep B's feature order.
    changes.sort_by(|x, y| y.change.abs().total_cmp(&x.change.abs()));
    changes.truncate(top);
    WeightsDiff {
        features_compared,
        norm_a,
        norm_b,
        l2_distance,
        relative_change,
        cosine_similarity,
        max_abs_change,
        bias_a: a.bias,
        bias_b: b.bias,
        largest_changes: changes,
    }
}

/// A signed difference of whole numbers, "+3", "-2", "0".
fn signed(change: i64) -> String {
    if change > 0 {
        format!("+{change}")
    } else {
        change.to_string()
    }
}

/// A JSON leaf as a table cell.
fn setting_cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The human-readable form of a diff.
pub fn render_diff(diff: &VersionDiff) -> String {
    let (a, b) = (&diff.a, &diff.b);
    let (va, vb) = (format!("v{}", a.version), format!("v{}", b.version));
    let mut text = format!(
        "model {}: {va} -> {vb} ({})\n\n",
        diff.model,
        diff.relation.describe(a, b, diff.generations)
    );
    let mut table = Table::new(&["FIELD", &va.to_uppercase(), &vb.to_uppercase(), "CHANGE"]);
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("v{v}"));
    let range = |r: Option<SequenceRange>| {
        r.map_or("-".to_string(), |r| format!("{}..={}", r.first, r.last))
    };
    let gap = diff.created_gap_seconds;
    let gap_text = format!(
        "{}{}",
        if gap < 0.0 { "-" } else { "+" },
        format_age_seconds(gap.abs().round() as u64)
    );
    let metric = |x: f64| format!("{x:.4}");
    let schema =
        |s: &FeatureSchema| format!("{} v{} ({} features)", s.name, s.version, s.n_features());
    let schema_change = if diff.schema.same {
        "same".to_string()
    } else {
        let mut parts = Vec::new();
        if !diff.schema.added.is_empty() {
            parts.push(format!("+{}", diff.schema.added.join(", +")));
        }
        if !diff.schema.removed.is_empty() {
            parts.push(format!("-{}", diff.schema.removed.join(", -")));
        }
        if diff.schema.reordered {
            parts.push("reordered".to_string());
        }
        if parts.is_empty() {
            parts.push("renamed or re-versioned".to_string());
        }
        parts.join("; ")
    };
    let rows: Vec<[String; 4]> = vec![
        [
            "created".into(),
            a.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            b.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            gap_text,
        ],
        ["parent".into(), opt(a.parent), opt(b.parent), String::new()],
        [
            "lineage root".into(),
            format!("v{}", a.lineage_root()),
            format!("v{}", b.lineage_root()),
            if a.lineage_root() == b.lineage_root() {
                "same chain".into()
            } else {
                "other chain".into()
            },
        ],
        [
            "kind".into(),
            a.config.kind.name().to_string(),
            b.config.kind.name().to_string(),
            String::new(),
        ],
        [
            "step".into(),
            a.step.to_string(),
            b.step.to_string(),
            signed(diff.steps_gained),
        ],
        [
            "learned".into(),
            range(a.learned),
            range(b.learned),
            String::new(),
        ],
        [
            "high-water mark".into(),
            a.high_water_mark.to_string(),
            b.high_water_mark.to_string(),
            signed(diff.high_water_mark_gained),
        ],
        [
            "examples total".into(),
            a.metrics.examples_total.to_string(),
            b.metrics.examples_total.to_string(),
            signed(diff.examples_gained),
        ],
        [
            "window examples".into(),
            a.metrics.window_examples.to_string(),
            b.metrics.window_examples.to_string(),
            signed(b.metrics.window_examples as i64 - a.metrics.window_examples as i64),
        ],
        [
            "accuracy".into(),
            metric(a.metrics.prequential_accuracy),
            metric(b.metrics.prequential_accuracy),
            format!("{:+.4}", diff.accuracy_change),
        ],
        [
            "log-loss".into(),
            metric(a.metrics.log_loss),
            metric(b.metrics.log_loss),
            format!("{:+.4}", diff.log_loss_change),
        ],
        [
            "ROC AUC".into(),
            a.metrics.roc_auc.map_or("-".into(), metric),
            b.metrics.roc_auc.map_or("-".into(), metric),
            diff.roc_auc_change
                .map_or(String::new(), |c| format!("{c:+.4}")),
        ],
        [
            "schema".into(),
            schema(&a.schema),
            schema(&b.schema),
            schema_change,
        ],
        [
            "sha256".into(),
            a.sha256.chars().take(12).collect(),
            b.sha256.chars().take(12).collect(),
            if diff.same_artifact {
                "same".into()
            } else {
                "differs".into()
            },
        ],
        [
            "size".into(),
            format_bytes(a.size_bytes),
            format_bytes(b.size_bytes),
            format!("{} B", signed(diff.size_change_bytes)),
        ],
    ];
    for row in rows {
        table.row(row.to_vec());
    }
    text.push_str(&table.to_string());

    if diff.settings_changed.is_empty() {
        text.push_str("\nsettings: identical\n");
    } else {
        text.push_str("\nsettings changed\n");
        let mut settings = Table::new(&["SETTING", &va.to_uppercase(), &vb.to_uppercase()]);
        for change in &diff.settings_changed {
            settings.row(vec![
                change.setting.clone(),
                setting_cell(&change.a),
                setting_cell(&change.b),
            ]);
        }
        text.push_str(&settings.to_string());
    }

    match (&diff.weights, &diff.weights_unavailable) {
        (Some(w), _) => {
            text.push_str(&format!(
                "\nweights ({} features compared, on standardised inputs)\n",
                w.features_compared
            ));
            text.push_str(&key_values(&[
                ("|w|", format!("{:.4} -> {:.4}", w.norm_a, w.norm_b)),
                (
                    "|w_b - w_a|",
                    format!(
                        "{:.4}{}",
                        w.l2_distance,
                        w.relative_change
                            .map_or(" (both near zero)".to_string(), |r| format!(
                                " ({:.1}% of the larger |w|)",
                                r * 100.0
                            ))
                    ),
                ),
                (
                    "direction",
                    w.cosine_similarity
                        .map_or("- (a near-zero |w| has none)".to_string(), |c| {
                            format!("cos(w_a, w_b) {c:.4}")
                        }),
                ),
                ("largest |change|", format!("{:.4}", w.max_abs_change)),
                (
                    "bias",
                    format!(
                        "{:.4} -> {:.4} ({:+.4})",
                        w.bias_a,
                        w.bias_b,
                        w.bias_b - w.bias_a
                    ),
                ),
            ]));
            if !w.largest_changes.is_empty() {
                let mut weights =
                    Table::new(&["FEATURE", &va.to_uppercase(), &vb.to_uppercase(), "CHANGE"])
                        .align_right(&[1, 2, 3]);
                for change in &w.largest_changes {
                    weights.row(vec![
                        change.feature.clone(),
                        format!("{:.4}", change.a),
                        format!("{:.4}", change.b),
                        format!("{:+.4}", change.change),
                    ]);
                }
                text.push('\n');
                text.push_str(&weights.to_string());
            }
        }
        (None, Some(why)) => text.push_str(&format!("\nweights: not compared ({why})\n")),
        (None, None) => {}
    }
    text
}

/// The version number a reference names; a pointer is read from MODELS.
async fn resolve_version(
    pointers: Option<&Pointers>,
    model: &ModelName,
    reference: VersionRef,
) -> anyhow::Result<u64> {
    match (reference, pointers) {
        (VersionRef::Number(version), _) => Ok(version),
        (VersionRef::Pointer(slot), Some(pointers)) => pointers
            .get(model, slot)
            .await
            .with_context(|| format!("reading {model}'s {} pointer", slot.as_str()))?
            .value
            .map(|pointer| pointer.version)
            .ok_or_else(|| NotFound(format!("{model} has no {} version", slot.as_str())).into()),
        (VersionRef::Pointer(_), None) => {
            anyhow::bail!("a pointer was named but MODELS was not opened")
        }
    }
}

/// Reads a version's manifest and, for kinds that have them, its verified weights.
async fn read_version(
    artifacts: &ArtifactStore,
    model: &ModelName,
    version: u64,
) -> anyhow::Result<VersionData> {
    let manifest = read_manifest(artifacts, model, version).await?;
    let weights = if manifest.config.kind == ModelKind::Logistic {
        match artifacts.load(model, version).await {
            Ok((manifest, bytes)) => read_weights(&manifest, &bytes),
            Err(err) => Err(err.to_string()),
        }
    } else {
        read_weights(&manifest, &[])
    };
    Ok(VersionData { manifest, weights })
}

/// Most parent links followed between two versions, each one manifest read.
const MAX_GENERATIONS: u64 = 1000;

/// Follows parent links from `newer` down to version `older`; the links followed, or `None`
/// if the chain leads elsewhere, breaks (a version deleted by retention) or is too long.
/// Versions only grow along a chain, so a parent below `older` ends the search.
async fn generations_between(
    artifacts: &ArtifactStore,
    model: &ModelName,
    newer: &Manifest,
    older: u64,
) -> Option<u64> {
    let mut parent = newer.parent;
    for generations in 1..=MAX_GENERATIONS {
        let version = parent.filter(|&p| p >= older)?;
        if version == older {
            return Some(generations);
        }
        parent = artifacts.manifest(model, version).await.ok()?.parent;
    }
    None
}

pub(super) async fn diff(global: &GlobalArgs, args: &DiffArgs) -> anyhow::Result<()> {
    let model = &args.model;
    let artifacts = open_artifacts(global)?;
    // MODELS is only needed to follow a pointer; numbered versions need no NATS server.
    let pointers = if [args.a, args.b]
        .iter()
        .any(|r| matches!(r, VersionRef::Pointer(_)))
    {
        let nats = connect(global).await?;
        Some(open_pointers(&nats.js).await?)
    } else {
        None
    };
    let version_a = resolve_version(pointers.as_ref(), model, args.a).await?;
    let version_b = resolve_version(pointers.as_ref(), model, args.b).await?;
    let a = read_version(&artifacts, model, version_a).await?;
    let b = read_version(&artifacts, model, version_b).await?;
    let (newer, older) = if version_a > version_b {
        (&a.manifest, version_b)
    } else {
        (&b.manifest, version_a)
    };
    let generations = generations_between(&artifacts, model, newer, older).await;
    let diff = diff_versions(&a, &b, generations, args.top);
    if global.json {
        return emit_json(&diff);
    }
    emit(&render_diff(&diff))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use chrono::Utc;
    use freshet_model::{Hyper, ModelConfig, Trainer};

    /// A manifest built from JSON, so optional fields added later take their defaults.
    fn manifest(version: u64, parent: Option<u64>) -> Manifest {
        let created = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::seconds(10 * version as i64);
        serde_json::from_value(serde_json::json!({
            "model": "bookstore",
            "version": version,
            "parent": parent,
            "kind": "logistic",
            "hyper": Hyper::default(),
            "schema": {"name": "bookstore", "version": 1, "features": ["a", "b", "c"]},
            "sha256": format!("{version:064}"),
            "size_bytes": 500,
            "created_at": created,
            "step": 10 * version,
            "learned": {"first": 100 * version - 99, "last": 100 * version},
            "high_water_mark": 100 * version,
            "metrics": {
                "examples_total": 100 * version,
                "window_examples": 100,
                "prequential_accuracy": 0.5 + version as f64 / 100.0,
                "log_loss": 0.7 - version as f64 / 100.0,
                "roc_auc": 0.6,
            },
            "lineage": 1,
        }))
        .unwrap()
    }

    fn weights(values: &[f32], bias: f32) -> Result<Weights, String> {
        Ok(Weights {
            features: vec!["a".into(), "b".into(), "c".into()],
            values: values.to_vec(),
            bias,
        })
    }

    fn data(manifest: Manifest, weights: Result<Weights, String>) -> VersionData {
        VersionData { manifest, weights }
    }

    #[test]
    fn versions_are_named_by_number_or_pointer() {
        assert_eq!("12".parse(), Ok(VersionRef::Number(12)));
        assert_eq!("v3".parse(), Ok(VersionRef::Number(3)));
        assert_eq!("live".parse(), Ok(VersionRef::Pointer(Slot::Live)));
        assert_eq!(
            "candidate".parse(),
            Ok(VersionRef::Pointer(Slot::Candidate))
        );
        assert!("latest".parse::<VersionRef>().is_err());
        assert!("-1".parse::<VersionRef>().is_err());
    }

    #[test]
    fn a_diff_measures_examples_metrics_time_and_weights() {
        let a = data(manifest(3, Some(2)), weights(&[1.0, 2.0, 2.0], 0.5));
        let b = data(manifest(5, Some(4)), weights(&[1.0, 5.0, 6.0], 0.25));
        let diff = diff_versions(&a, &b, None, 2);
        assert_eq!(diff.relation, Relation::SameChain);
        assert_eq!(diff.created_gap_seconds, 20.0);
        assert_eq!(
            (
                diff.steps_gained,
                diff.examples_gained,
                diff.high_water_mark_gained
            ),
            (20, 200, 200)
        );
        assert!((diff.accuracy_change - 0.02).abs() < 1e-12);
        assert!((diff.log_loss_change + 0.02).abs() < 1e-12);
        assert_eq!(diff.roc_auc_change, Some(0.0));
        assert!(!diff.same_artifact);
        assert!(diff.settings_changed.is_empty());
        assert!(diff.schema.same);
        let w = diff.weights.unwrap();
        assert_eq!(w.features_compared, 3);
        assert_eq!((w.norm_a, w.l2_distance, w.max_abs_change), (3.0, 5.0, 4.0));
        // |w_b| = sqrt(1 + 25 + 36) is the larger norm; w_a . w_b = 1 + 10 + 12.
        let norm_b = 62f64.sqrt();
        assert_eq!(w.relative_change, Some(5.0 / norm_b));
        assert!((w.cosine_similarity.unwrap() - 23.0 / (3.0 * norm_b)).abs() < 1e-12);
        assert_eq!((w.bias_a, w.bias_b), (0.5, 0.25));
        let largest: Vec<(&str, f32)> = w
            .largest_changes
            .iter()
            .map(|c| (c.feature.as_str(), c.change))
            .collect();
        assert_eq!(largest, [("c", 4.0), ("b", 3.0)]);
        assert_eq!(diff.weights_unavailable, None);
    }

    #[test]
    fn relations_follow_parents_and_chains() {
        let relation = |a: Manifest, b: Manifest, generations: Option<u64>| {
            let (a, b) = (
                data(a, weights(&[0.0; 3], 0.0)),
                data(b, weights(&[0.0; 3], 0.0)),
            );
            let diff = diff_versions(&a, &b, generations, 0);
            (
                diff.relation,
                diff.relation
                    .describe(&a.manifest, &b.manifest, generations),
            )
        };
        assert_eq!(
            relation(manifest(4, Some(3)), manifest(5, Some(4)), Some(1)),
            (
                Relation::Descendant,
                "v5 continued training from v4".to_string()
            )
        );
        // A direct parent is enough even without the walk.
        assert_eq!(
            relation(manifest(5, Some(4)), manifest(4, Some(3)), None).0,
            Relation::Ancestor
        );
        assert_eq!(
            relation(manifest(2, Some(1)), manifest(7, Some(6)), Some(5)),
            (
                Relation::Descendant,
                "v7 continued training from v2, 5 versions on".to_string()
            )
        );
        assert_eq!(
            relation(manifest(7, Some(6)), manifest(2, Some(1)), Some(5)).0,
            Relation::Ancestor
        );
        assert_eq!(
            relation(manifest(4, Some(3)), manifest(4, Some(3)), None).0,
            Relation::Same
        );
        // Parents not followed: the recorded chain still tells.
        assert_eq!(
            relation(manifest(2, Some(1)), manifest(7, Some(6)), None).0,
            Relation::SameChain
        );
        let fork = Manifest {
            lineage: None,
            ..manifest(9, Some(4))
        };
        assert_eq!(
            relation(manifest(5, Some(4)), fork, None),
            (
                Relation::Unrelated,
                "neither v5 nor v9 descends from the other".to_string()
            )
        );
    }

    #[test]
    fn settings_and_schema_changes_are_listed_by_name() {
        let a = manifest(1, None);
        let mut b = manifest(2, Some(1));
        let a_rate = a.config.hyper.learning_rate;
        b.config.hyper.learning_rate = 0.5;
        b.schema.features = vec!["c".into(), "a".into(), "d".into()];
        let diff = diff_versions(
            &data(a, weights(&[1.0, 1.0, 1.0], 0.0)),
            &data(
                b.clone(),
                Ok(Weights {
                    features: b.schema.features.clone(),
                    values: vec![3.0, 1.0, 7.0],
                    bias: 0.0,
                }),
            ),
            Some(1),
            10,
        );
        assert_eq!(
            diff.settings_changed,
            [SettingChange {
                setting: "hyper.learning_rate".into(),
                a: serde_json::json!(a_rate),
                b: serde_json::json!(0.5),
            }]
        );
        assert_eq!(
            diff.schema,
            SchemaDiff {
                same: false,
                added: vec!["d".into()],
                removed: vec!["b".into()],
                reordered: true,
            }
        );
        // Weights are matched by feature name; "d" and "b" have nothing to compare with.
        let w = diff.weights.unwrap();
        assert_eq!(w.features_compared, 2);
        assert_eq!(w.largest_changes[0].feature, "c");
        assert_eq!(w.l2_distance, 2.0);
    }

    #[test]
    fn missing_weights_are_explained_not_invented() {
        let mut mlp = manifest(2, Some(1));
        mlp.config.kind = ModelKind::Mlp { hidden: 16 };
        let why = read_weights(&mlp, &[]).unwrap_err();
        assert!(why.contains("mlp"), "{why}");
        let diff = diff_versions(
            &data(manifest(1, None), weights(&[0.0; 3], 0.0)),
            &data(mlp, Err(why)),
            Some(1),
            5,
        );
        assert!(diff.weights.is_none());
        assert!(
            diff.weights_unavailable
                .as_deref()
                .unwrap()
                .starts_with("v2: mlp models have no single weight"),
            "{:?}",
            diff.weights_unavailable
        );
        let text = render_diff(&diff);
        assert!(text.contains("weights: not compared (v2: "), "{text}");
    }

    #[test]
    fn weights_decode_from_a_logistic_artifact_by_feature_name() {
        let mut trainer = Trainer::new(&ModelConfig::default(), 3).unwrap();
        let rows = vec![vec![1.0, 0.0, 2.0], vec![0.0, 1.0, -1.0]];
        trainer.train_batch(&rows, &[1.0, 0.0]).unwrap();
        let bytes = trainer.to_bytes().unwrap();
        let weights = read_weights(&manifest(1, None), &bytes).unwrap();
        assert_eq!(weights.features, ["a", "b", "c"]);
        let scorer = trainer.scorer();
        let (values, bias) = scorer.linear_weights().unwrap();
        assert_eq!(weights.values, values);
        assert_eq!(weights.bias, bias);
        assert!(weights.values.iter().any(|w| *w != 0.0));
        assert!(read_weights(&manifest(1, None), b"not a model").is_err());
    }

    #[test]
    fn weights_that_grew_from_near_zero_move_by_a_bounded_share() {
        // As observed: a version trained from weights of about 1e-9 against one that learned.
        let a = data(manifest(1, None), weights(&[1e-9, -2e-9, 0.0], 0.0));
        let b = data(manifest(2, Some(1)), weights(&[1.2, -0.8, 0.5], 0.1));
        let w = diff_versions(&a, &b, None, 3).weights.unwrap();
        let relative = w.relative_change.unwrap();
        assert!(
            (0.99..=1.0).contains(&relative),
            "moving from nothing to |w_b| is about 100% of |w_b|, not {relative}"
        );
        assert_eq!(
            w.cosine_similarity, None,
            "a near-zero |w_a| has no direction"
        );
        let text = render_diff(&diff_versions(&a, &b, None, 3));
        assert!(text.contains("(100.0% of the larger |w|)"), "{text}");

        // Opposite weights: the largest relative change there is, and cosine -1.
        let turned = data(manifest(3, Some(2)), weights(&[-1.2, 0.8, -0.5], 0.1));
        let w = diff_versions(&b, &turned, None, 3).weights.unwrap();
        assert!((w.relative_change.unwrap() - 2.0).abs() < 1e-6);
        assert!((w.cosine_similarity.unwrap() + 1.0).abs() < 1e-6);

        // Both near zero: no share, no direction, and the text says so.
        let zero = data(manifest(4, None), weights(&[0.0, 0.0, 0.0], 0.0));
        let w = diff_versions(&zero, &zero, None, 3).weights.unwrap();
        assert_eq!((w.relative_change, w.cosine_similarity), (None, None));
        let text = render_diff(&diff_versions(&zero, &zero, None, 3));
        assert!(text.contains("0.0000 (both near zero)"), "{text}");
    }

    #[test]
    fn the_rendered_diff_has_a_row_per_field_and_the_weight_movement() {
        let a = data(manifest(3, Some(2)), weights(&[1.0, 2.0, 2.0], 0.5));
        let b = data(manifest(4, Some(3)), weights(&[1.0, 5.0, 6.0], 0.25));
        let text = render_diff(&diff_versions(&a, &b, Some(1), 10));
        assert!(
            text.starts_with("model bookstore: v3 -> v4 (v4 continued training from v3)\n"),
            "{text}"
        );
        for expected in [
            "FIELD            V3",
            "created          2026-01-01T00:00:30Z",
            "+10s",
            "examples total   300",
            "+100",
            "accuracy         0.5300",
            "+0.0100",
            "settings: identical",
            "|w_b - w_a|       5.0000 (63.5% of the larger |w|)",
            "direction         cos(w_a, w_b) 0.9737",
            "bias              0.5000 -> 0.2500 (-0.2500)",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
        let c_row = text.lines().find(|l| l.starts_with("c ")).unwrap();
        assert!(c_row.ends_with("+4.0000"), "{c_row}");
    }
}
