//! Retention by time: with `--keep-versions 2 --keep-all-for 1h`, a run of versions far longer
//! than the count and than the live pointer's history in MODELS (64 writes) keeps every version
//! of the hour on `file://` storage, and `freshet models rollback --to-time` goes back to the
//! model of a moment the pointer's history no longer reaches.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use freshet::ids::ModelName;
use freshet::subjects::BUCKET_MODELS;
use freshet_model::store::{ArtifactStore, Cause, PointerStore, Pointers, Slot};
use freshet_tests::{Stack, eventually, live_through};

/// Examples after the moment rolled back to: at 4 a batch and a version a batch, 100 versions,
/// more than the pointer's history holds.
const LATER: u64 = 400;

fn row(n: u64) -> (Vec<f32>, f32) {
    let x = (n % 10) as f32 / 10.0;
    (vec![x, 1.0 - x], f32::from(x > 0.5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_the_last_hour_stay_and_a_rollback_reaches_them_by_time() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("aged")?;
    let train = stack.spawn(
        "train",
        &[
            "--model",
            "aged",
            "--batch-size",
            "4",
            "--publish-every-batches",
            "1",
            "--keep-versions",
            "2",
            "--keep-all-for",
            "1h",
            "--keep-hourly-for",
            "0s",
        ],
    )?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let caught_up = |through: u64| {
        let (pointers, artifacts, model) = (&pointers, &artifacts, &model);
        async move {
            eventually(Duration::from_secs(120), "train caught up", || {
                live_through(pointers, artifacts, model, through)
            })
            .await
        }
    };
    stack.publish_examples(&model, 0..40, row).await?;
    let morning = caught_up(40)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;
    // Written before this moment; every later version after it.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let moment = Utc::now();
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    stack.publish_examples(&model, 40..40 + LATER, row).await?;
    let live = caught_up(40 + LATER)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;
    let history: BTreeSet<u64> = pointers
        .history(&model, Slot::Live)
        .await?
        .into_iter()
        .map(|(_, p)| p.version)
        .collect();
    assert!(
        !history.contains(&morning.version),
        "the pointer's history ({} writes) no longer names version {}",
        history.len(),
        morning.version
    );
    // Retention passes ran (one follows the last publish) and removed nothing of the hour.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stored: Vec<u64> = artifacts.versions(&model).await?;
    assert_eq!(
        stored,
        (1..=live.version).collect::<Vec<_>>(),
        "every version of the hour is kept, not only the newest 2 and the named"
    );

    let at = moment.to_rfc3339_opts(SecondsFormat::Millis, true);
    let (code, stdout, stderr) =
        stack.run_cli(&["models", "rollback", "aged", "--to-time", &at, "--json"]);
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    let moved: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(
        moved["to_version"].as_u64(),
        Some(morning.version),
        "{moved}"
    );
    let pointer = pointers.get(&model, Slot::Live).await?.value.unwrap();
    assert_eq!(
        (pointer.version, pointer.cause),
        (morning.version, Cause::Rollback)
    );
    // A time before any version: nothing to go back to (not found).
    let (code, _, stderr) = stack.run_cli(&[
        "models",
        "rollback",
        "aged",
        "--to-time",
        "2000-01-01T00:00:00Z",
    ]);
    assert_eq!(code, Some(3), "{stderr}");
    Ok(())
}
