//! The feature spec as written: TOML deserialised into plain structs that keep the byte span of
//! every value, so that [`super::compile`] can name the line and column of each problem. Nothing
//! here is checked beyond TOML's own types; unknown keys are refused, so a misspelt key is an
//! error rather than a silently ignored setting.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A whole spec file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub schema: Spanned<RawSchema>,
    #[serde(default)]
    pub events: BTreeMap<String, Spanned<RawEvent>>,
    #[serde(default)]
    pub entities: BTreeMap<String, Spanned<RawEntity>>,
    #[serde(default)]
    pub windows: BTreeMap<String, Spanned<RawWindow>>,
    #[serde(default)]
    pub feature: Vec<Spanned<RawFeature>>,
    pub label: Spanned<RawLabel>,
}

/// `[schema]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchema {
    pub name: Spanned<String>,
    pub version: Spanned<i64>,
    pub fingerprint: Option<Spanned<String>>,
}

/// `[events.TYPE]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvent {
    #[serde(default)]
    pub fields: BTreeMap<String, Spanned<RawField>>,
}

/// One field of an event: read from `data` at `path`, or looked up in another entity's state.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    pub path: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub lookup: Option<Spanned<String>>,
    #[serde(default)]
    pub optional: bool,
}

/// `[entities.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntity {
    pub key: Spanned<Vec<String>>,
    pub events: Spanned<Vec<String>>,
    pub keep: Option<Spanned<Vec<String>>>,
}

/// `[windows.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub size: Spanned<String>,
    pub slide: Option<Spanned<String>>,
    pub history: Option<Spanned<i64>>,
    pub out_of_orderness: Option<Spanned<String>>,
    pub allowed_lateness: Option<Spanned<String>>,
}

/// One `[[feature]]`: every key any kind takes; [`super::compile`] checks which apply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeature {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub entity: Option<Spanned<String>>,
    pub field: Option<Spanned<String>>,
    pub on: Option<Spanned<Vec<String>>>,
    #[serde(rename = "where")]
    pub filter: Option<Spanned<BTreeMap<String, toml::Value>>>,
    pub window: Option<Spanned<String>>,
    pub span: Option<Spanned<i64>>,
    pub decay: Option<Spanned<f64>>,
    pub half_life: Option<Spanned<String>>,
    pub max: Option<Spanned<i64>>,
    pub unit: Option<Spanned<String>>,
    pub default: Option<Spanned<f64>>,
    pub of: Option<Spanned<Vec<String>>>,
    pub hits: Option<Spanned<String>>,
    pub trials: Option<Spanned<String>>,
    pub prior: Option<Spanned<toml::Value>>,
    pub weight: Option<Spanned<f64>>,
    pub transform: Option<Spanned<Vec<Spanned<String>>>>,
    pub emit: Option<Spanned<bool>>,
    pub watch: Option<Spanned<String>>,
    pub reason: Option<Spanned<String>>,
}

/// `[label]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLabel {
    pub example: Spanned<RawLabelEvent>,
    pub positive: Spanned<RawLabelEvent>,
    #[serde(rename = "match")]
    pub matching: Spanned<Vec<String>>,
    pub horizon: Spanned<String>,
    pub feedback: Spanned<String>,
}

/// Which events of a type take part in labelling.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLabelEvent {
    pub event: Spanned<String>,
    #[serde(rename = "where")]
    pub filter: Option<Spanned<BTreeMap<String, toml::Value>>>,
}
