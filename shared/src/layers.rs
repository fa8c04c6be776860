//! The layering the crate documentation promises, checked: no module of this crate names one in
//! a layer above its own, and no file of `model/` uses one below it in [`MODEL_FILES`]. Reads
//! the sources, so a new back-arrow fails here rather than in a later crate split.

use std::path::{Path, PathBuf};

/// Each top-level module and its layer (see the crate documentation).
const LAYERS: &[(&str, u8)] = &[
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
    ("aggregates", 2),
    ("features", 2),
    ("labels", 2),
    ("model", 3),
    ("store", 4),
    ("telemetry", 5),
    ("config", 6),
    ("connect", 6),
    ("runtime", 6),
    ("properties", 7),
];

/// The files of `model/`, each allowed to use only those before it.
const MODEL_FILES: &[&str] = &[
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
    "kind",
    "learner",
    "artifact",
    "config",
    "scorer",
    "trainer",
    "manifest",
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

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

#[test]
fn no_module_names_one_in_a_layer_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut checked = 0;
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap();
        let top = relative.components().next().unwrap().as_os_str();
        let top = Path::new(top).file_stem().unwrap().to_str().unwrap();
        let Some(own) = layer(top) else {
            assert!(
                ["lib", "layers"].contains(&top),
                "{top} has no layer in LAYERS"
            );
            continue;
        };
        for used in named_after(&code(file), "crate::") {
            checked += 1;
            match layer(&used) {
                Some(theirs) if theirs <= own => {}
                Some(_) => violations.push(format!("{}: crate::{used}", relative.display())),
                None => violations.push(format!(
                    "{}: crate::{used} has no layer",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the source tree there?"
    );
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn model_files_use_only_the_files_before_them() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model");
    let rank = |name: &str| MODEL_FILES.iter().position(|f| *f == name);
    let mut violations = Vec::new();
    for (own_rank, own) in MODEL_FILES.iter().enumerate() {
        let file = model.join(format!("{own}.rs"));
        let mut files = vec![];
        if file.exists() {
            files.push(file);
        } else {
            sources(&model.join(own), &mut files);
        }
        assert!(!files.is_empty(), "model/{own} not found");
        for file in files {
            let code = code(&file);
            // In a file of a folder (`artifact/format2.rs`), `super::` is the folder's own module.
            let uses_siblings = file.parent() == Some(model.as_path());
            let mut used = named_after(&code, "crate::model::");
            if uses_siblings {
                used.extend(named_after(&code, "use super::"));
            }
            for name in used {
                match rank(&name) {
                    Some(theirs) if theirs < own_rank => {}
                    _ => violations.push(format!("model/{own}: uses {name}")),
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}
