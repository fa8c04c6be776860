//! `freshet models diff` against a real store: two versions written as train writes them are
//! compared field by field, with how far the weights moved, readable or as JSON; a version that
//! does not exist exits with the not-found code.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use freshet_model::store::Slot;
use freshet_tests::{ModelWriter, Stack, run_cli};

/// Runs `freshet models diff ARGS` against the stack; returns (exit code, stdout, stderr).
fn diff(stack: &Stack, args: &[&str]) -> (Option<i32>, String, String) {
    let run = run_cli(stack.freshet().args(["models", "diff"]).args(args));
    (run.code, run.stdout, run.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_compares_two_versions_and_their_weights() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut writer = ModelWriter::new(&stack, "bookstore").await?;
    for version in 1..=3 {
        writer.write_version(version).await?;
    }
    let live = writer.artifacts.manifest(&writer.model, 3).await?;
    writer.point(Slot::Live, 3, &live.sha256).await?;

    let (code, out, err) = diff(&stack, &["bookstore", "1", "3"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("model bookstore: v1 -> v3 (v3 continued training from v1, 2 versions on)"),
        "names both versions and follows the parents between them:\n{out}"
    );
    for expected in ["examples total", "+32", "high-water mark", "|w_b - w_a|"] {
        assert!(out.contains(expected), "{expected:?} missing in\n{out}");
    }

    let (code, out, err) = diff(&stack, &["bookstore", "2", "live", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (json["a"]["version"].as_u64(), json["b"]["version"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(
        (json["relation"].as_str(), json["generations"].as_u64()),
        (Some("descendant"), Some(1))
    );
    assert_eq!(json["examples_gained"].as_i64(), Some(16));
    let weights = &json["weights"];
    assert_eq!(
        weights["features_compared"].as_u64(),
        Some(freshet_features::bookstore::FEATURE_NAMES.len() as u64)
    );
    assert!(weights["l2_distance"].as_f64().unwrap() > 0.0, "{weights}");
    let largest = weights["largest_changes"].as_array().unwrap();
    assert!(
        freshet_features::bookstore::FEATURE_NAMES
            .contains(&largest[0]["feature"].as_str().unwrap()),
        "{weights}"
    );

    // A version that does not exist, and a pointer that is not set: exit code 3.
    let (code, _, err) = diff(&stack, &["bookstore", "1", "99"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("99"), "{err}");
    let (code, _, err) = diff(&stack, &["bookstore", "1", "candidate"]);
    assert_eq!(code, Some(3), "{err}");
    Ok(())
}
