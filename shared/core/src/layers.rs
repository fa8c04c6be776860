//! The layering the crate documentation promises, checked inside each crate of `shared/`: no
//! module names one in a layer above its own. Between the crates Cargo checks it (this crate
//! cannot name the model or the feature crate, and the feature crate cannot name the model
//! crate); inside a crate only this test does. Reads the sources, so a new back-arrow fails here,
//! before it makes a later split of a crate harder.
//!
//! A name is followed through the crate root's re-exports (`crate::Manifest` is a use of the
//! module that defines `Manifest`). In a file directly under `src/`, `super::` names a sibling
//! module, so it is checked too; in a folder's file it names the folder's own module.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// This crate's top-level modules and their layers (see the crate documentation).
const CORE: &[(&str, u8)] = &[
    ("ids", 1),
    ("error", 1),
    ("trace", 1),
    ("events", 1),
    ("examples", 1),
    ("control", 1),
    ("serving", 1),
    ("subjects", 1),
    ("topology", 1),
    ("metrics", 1),
    ("shutdown", 1),
    ("monitoring", 1),
    ("event_time", 1),
    ("retry", 1),
    ("stats", 1),
    ("store", 2),
    ("telemetry", 3),
    ("config", 4),
    ("connect", 4),
    ("runtime", 4),
    ("properties", 5),
];

/// The model crate's modules, each allowed to use only those before it (see its crate
/// documentation): the maths, the artifact format, the API, then the stores built on it.
const MODEL: &[&str] = &[
    "error",
    "init",
    "params",
    "optim",
    "scaler",
    "hyper",
    "weighting",
    "logistic",
    "mlp",
    "fm",
    "fourier",
    "kind",
    "learner",
    "artifact",
    "config",
    "scorer",
    "trainer",
    "manifest",
    "store",
    "synthetic",
];

/// The feature crate's modules: the aggregates and applied marks any domain's features use, the
/// spec engine that runs any domain's declared features on them, then the bookstore's.
const FEATURES: &[(&str, u8)] = &[
    ("aggregates", 1),
    ("applied", 1),
    ("spec", 2),
    ("bookstore", 3),
    ("labels", 4),
    ("properties", 5),
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file before its test module, without comment lines, as one string.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .take_while(|line| *line != "mod tests {")
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that directly follow each `prefix` in `code` (`a::b` gives `b` for `a::`;
/// `a::{b, c::d}` gives `b` and `c`).
fn named_after(code: &str, prefix: &str) -> Vec<String> {
    let ident = |s: &str| {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    let mut names = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let rest = &code[at + prefix.len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                names.extend(group.split(',').map(ident));
            }
            None => names.push(ident(rest)),
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// Which module defines each item the crate root re-exports (`pub use kind::{Dimensions, ..}`
/// maps `Dimensions` to `kind`); an item re-exported from another crate maps to that crate.
fn reexports(lib: &str) -> HashMap<String, String> {
    let mut defined_in = HashMap::new();
    for (at, _) in lib.match_indices("pub use ") {
        let statement = &lib[at + "pub use ".len()..];
        let statement = &statement[..statement.find(';').unwrap_or(statement.len())];
        let Some((module, _)) = statement.split_once("::") else {
            continue;
        };
        let items = match (statement.find('{'), statement.rfind('}')) {
            (Some(open), Some(close)) => &statement[open + 1..close],
            _ => statement,
        };
        for item in items.split(',') {
            let name = match item.split_once(" as ") {
                Some((_, alias)) => alias,
                None => item.rsplit("::").next().unwrap_or(item),
            };
            let name = name.trim();
            if !name.is_empty() {
                defined_in.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    defined_in
}

/// The uses of a module in a higher layer, in the crate at `shared/<dir>` whose top-level
/// modules have the given layers; panics if a module has no layer, or if too few paths were
/// found for the check to mean anything.
fn upward_uses(dir: &str, layers: &[(&str, u8)], at_least: usize) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir)
        .join("src");
    let layer = |module: &str| layers.iter().find(|(m, _)| *m == module).map(|(_, l)| *l);
    let defined_in = reexports(&code(&root.join("lib.rs")));
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut checked = 0;
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap();
        let top = relative.components().next().unwrap().as_os_str();
        let top = Path::new(top).file_stem().unwrap().to_str().unwrap();
        if ["lib", "layers"].contains(&top) {
            continue;
        }
        let own = layer(top).unwrap_or_else(|| panic!("{dir}: {top} has no layer"));
        let code = code(file);
        let mut used = named_after(&code, "crate::");
        if relative.components().count() == 1 {
            used.extend(named_after(&code, "super::"));
        }
        for name in used {
            checked += 1;
            let module = match defined_in.get(&name) {
                Some(module) => module.as_str(),
                None => name.as_str(),
            };
            match layer(module) {
                Some(theirs) if theirs <= own => {}
                // An item re-exported from another crate: below every module of this one.
                None if defined_in.contains_key(&name) => {}
                Some(_) => violations.push(format!("{dir}/{}: {name}", relative.display())),
                None => {
                    violations.push(format!("{dir}/{}: {name} has no layer", relative.display()))
                }
            }
        }
    }
    assert!(
        checked >= at_least,
        "only {checked} paths found in {dir}: is the source tree there?"
    );
    violations
}

#[test]
fn no_module_of_this_crate_names_one_in_a_layer_above_it() {
    let violations = upward_uses("core", CORE, 50);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn model_modules_use_only_the_modules_before_them() {
    let ranks: Vec<(&str, u8)> = (1..).zip(MODEL).map(|(rank, m)| (*m, rank)).collect();
    let violations = upward_uses("model", &ranks, 50);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn the_aggregates_use_no_domain_features() {
    let violations = upward_uses("features", FEATURES, 2);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn a_use_behind_a_reexport_is_followed_to_its_module() {
    let lib = "pub use kind::{Dimensions, ModelKind};\npub use other::Thing as Alias;\n\
               pub use freshet::examples::FeatureSchema;";
    let defined_in = reexports(lib);
    assert_eq!(defined_in["ModelKind"], "kind");
    assert_eq!(defined_in["Dimensions"], "kind");
    assert_eq!(defined_in["Alias"], "other");
    assert_eq!(defined_in["FeatureSchema"], "freshet");
    assert_eq!(
        named_after("use crate::{a::b, c};\nlet x = crate::d::e();", "crate::"),
        ["a", "c", "d"]
    );
}
