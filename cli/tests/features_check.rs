//! `freshet features check FILE` as an operator runs it: the shipped specs pass with a summary,
//! a broken one fails with exit code 1 and one `FILE:LINE:COL: message` per problem.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

fn check(file: &Path) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_freshet"))
        .args(["features", "check"])
        .arg(file)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../infra/features")
        .join(name)
}

#[test]
fn the_shipped_specs_pass_with_a_summary() {
    for (file, features) in [("fraud.toml", 11), ("sensors.toml", 8)] {
        let (code, out, err) = check(&shipped(file));
        assert_eq!(code, Some(0), "{file}: {err}");
        assert!(out.contains("fingerprint"), "{out}");
        let rows = out
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("#  FEATURE"))
            .skip(1)
            .count();
        assert_eq!(rows, features, "{out}");
        for watch in ["value", "ignore"] {
            assert!(out.contains(watch), "{out}");
        }
    }
}

#[test]
fn a_broken_spec_names_each_problem_with_its_line_and_column() {
    let good = std::fs::read_to_string(shipped("sensors.toml")).unwrap();
    let broken = good
        .replacen("entity = \"channel\"", "entity = \"chanel\"", 1)
        .replacen(
            "of = [\"step\", \"seconds_since_reading\"]",
            "of = [\"step\", \"seconds\"]",
            1,
        );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sensors.toml");
    std::fs::write(&file, &broken).unwrap();
    let (code, out, err) = check(&file);
    assert_eq!(code, Some(1), "{out}{err}");
    let shown = file.display().to_string();
    let problems: Vec<&str> = err.lines().filter(|l| l.starts_with(&shown)).collect();
    assert_eq!(problems.len(), 2, "{err}");
    let line_of = |needle: &str| broken.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert!(
        problems[0].starts_with(&format!(
            "{shown}:{}:10: unknown entity \"chanel\"",
            line_of("\"chanel\"")
        )),
        "{err}"
    );
    assert!(
        problems[1].starts_with(&format!(
            "{shown}:{}:6: unknown feature \"seconds\"",
            line_of("\"seconds\"]")
        )),
        "{err}"
    );
    assert!(err.contains("2 problems"), "{err}");
}
