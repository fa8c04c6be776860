//! `freshet models declare` against a real server: it declares a model's feature schema, shows
//! it, refuses other features under the same version (exit 1), replaces it under a new version,
//! and train learns under what was declared.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::ids::ModelName;
use freshet::subjects::BUCKET_MODELS;
use freshet_model::store::{ArtifactStore, Pointers};
use freshet_tests::{Stack, eventually, live_through};

/// Runs `freshet models declare ARGS` against the stack; returns (exit code, stdout, stderr).
fn declare(stack: &Stack, args: &[&str]) -> (Option<i32>, String, String) {
    stack.run_cli(&[&["models", "declare"], args].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_sets_shows_and_guards_a_models_schema() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("churn")?;

    // Nothing declared yet: not found.
    let (code, _, err) = declare(&stack, &["churn"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("no declared schema"), "{err}");

    let (code, out, err) = declare(&stack, &["churn", "--features", "tenure,spend"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("churn declared: churn v1 with 2 features"),
        "{out}"
    );
    let (code, out, err) = declare(&stack, &["churn", "--features", "tenure,spend"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("was declared already"), "{out}");

    // Other features under the same version: refused, and the declaration stands.
    let (code, _, err) = declare(&stack, &["churn", "--features", "tenure,spend,visits"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("tenure,spend"),
        "names what is declared: {err}"
    );
    assert_eq!(stack.declared(&model).await?.unwrap().n_features(), 2);

    // Under a new version they replace it.
    let (code, out, err) = declare(
        &stack,
        &[
            "churn",
            "--features",
            "tenure,spend,visits",
            "--schema-version",
            "2",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let json: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(json["outcome"], "replaced", "{json}");
    let (code, out, err) = declare(&stack, &["churn", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(shown["schema"]["version"], 2, "{shown}");
    assert_eq!(
        shown["schema"]["features"],
        serde_json::json!(["tenure", "spend", "visits"])
    );

    // train learns under the declaration.
    let train = stack.spawn(
        "train",
        &[
            "--model",
            "churn",
            "--publish-every-batches",
            "1",
            "--publish-interval",
            "200ms",
        ],
    )?;
    stack
        .publish_examples(&model, 0..20, |n| (vec![0.1, 0.2, (n % 2) as f32], 1.0))
        .await?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let live = eventually(Duration::from_secs(60), "a live version", || {
        live_through(&pointers, &artifacts, &model, 20)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;
    assert_eq!(live.schema.features, ["tenure", "spend", "visits"]);
    assert_eq!(
        (live.schema.name.as_str(), live.schema.version),
        ("churn", 2)
    );
    assert_eq!(live.metrics.examples_total, 20);
    Ok(())
}
