//! `freshet models rollback` moves the live pointer back to a verified earlier version, by
//! compare-and-set, and the predictor swaps to it; without `--to` it goes to the previous
//! version in the pointer's history; a version that does not exist is refused with the
//! not-found exit code and the pointer stays.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

use freshet::serving::PredictRequest;
use freshet::subjects::BUCKET_MODELS;
use freshet_cli::stack::bin_dir;
use freshet_model::store::{Cause, PointerStore, Pointers, Slot};
use freshet_tests::{Stack, eventually};

/// Runs `freshet models ARGS --json` against the stack; returns (exit code, stdout as JSON).
fn models(stack: &Stack, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let output = Command::new(bin_dir().unwrap().join("freshet"))
        .arg("models")
        .args(args)
        .arg("--json")
        .envs(stack.env())
        .output()
        .unwrap();
    let json = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.code(), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_moves_the_live_pointer_and_the_predictor_follows() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let train = stack.spawn(
        "train",
        &[
            "--batch-size",
            "50",
            "--publish-every-batches",
            "1",
            "--publish-interval",
            "50ms",
        ],
    )?;
    stack.spawn("predict", &[])?;
    let model = freshet::ids::ModelName::parse("bookstore")?;
    let n = freshet_features::bookstore::FEATURE_NAMES.len();
    stack
        .publish_examples(&model, 0..300, |i| {
            (vec![(i % 7) as f32 / 7.0; n], (i % 2) as f32)
        })
        .await?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let newest = eventually(
        Duration::from_secs(60),
        "three versions or more",
        || async {
            let live = pointers.get(&model, Slot::Live).await.ok()?.value?;
            (live.version >= 3).then_some(live.version)
        },
    )
    .await?;
    // Training stopped, as the command's help says, so nothing moves the pointer on.
    stack.process(train).terminate(Duration::from_secs(10))?;
    let newest = pointers
        .get(&model, Slot::Live)
        .await?
        .value
        .unwrap()
        .version
        .max(newest);

    let (code, moved) = models(&stack, &["rollback", "bookstore", "--to", "1"]);
    assert_eq!(code, Some(0), "{moved}");
    assert_eq!(
        (moved["from_version"].as_u64(), moved["to_version"].as_u64()),
        (Some(newest), Some(1))
    );
    let live = pointers.get(&model, Slot::Live).await?.value.unwrap();
    assert_eq!(
        (live.version, live.cause, live.reason.as_str()),
        (1, Cause::Rollback, "rollback by an operator")
    );
    let request = PredictRequest {
        features: Some(vec![0.5; n]),
        ..Default::default()
    };
    eventually(
        Duration::from_secs(30),
        "the predictor serving version 1",
        || async {
            let reply = stack.predict("bookstore", &request).await.ok()?;
            (reply.version == 1).then_some(())
        },
    )
    .await?;

    // Without --to: back to the version before, which was the newest.
    let (code, moved) = models(&stack, &["rollback", "bookstore"]);
    assert_eq!(
        (code, moved["to_version"].as_u64()),
        (Some(0), Some(newest)),
        "{moved}"
    );

    // A version that does not exist: refused, exit code 3, the pointer stays.
    let (code, _) = models(&stack, &["rollback", "bookstore", "--to", "999"]);
    assert_eq!(code, Some(3));
    assert_eq!(
        pointers
            .get(&model, Slot::Live)
            .await?
            .value
            .unwrap()
            .version,
        newest
    );
    Ok(())
}
