//! The retention policy: with `--keep-versions 3`, a long run of published versions leaves the
//! newest three in the object store plus every version the live pointer's kept history names,
//! and each of those still loads (so a rollback to any of them works). On `file://` a removed
//! version leaves no empty folder behind.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use freshet::ids::ModelName;
use freshet::subjects::BUCKET_MODELS;
use freshet_model::store::{ArtifactStore, Cause, PointerStore, Pointers, Slot, Verified};
use freshet_tests::{Stack, eventually};

const EXAMPLES: u64 = 480;
const KEEP: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_go_and_every_named_one_stays() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("kept")?;
    let keep = KEEP.to_string();
    let args = [
        "--model",
        "kept",
        "--batch-size",
        "4",
        "--publish-every-batches",
        "1",
        "--keep-versions",
        &keep,
        // By count alone: an hourly snapshot would keep one more when the run crosses an hour.
        "--keep-hourly-for",
        "0s",
    ];
    let train = stack.spawn("train", &args)?;
    stack
        .publish_examples(&model, 0..EXAMPLES, |n| {
            let x = (n % 10) as f32 / 10.0;
            (vec![x, 1.0 - x], f32::from(x > 0.5))
        })
        .await?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let live = eventually(
        Duration::from_secs(120),
        "every example learned",
        || async {
            let pointer = pointers.get(&model, Slot::Live).await.ok()?.value?;
            let manifest = artifacts.manifest(&model, pointer.version).await.ok()?;
            (manifest.high_water_mark >= EXAMPLES).then_some(manifest)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;

    let named: BTreeSet<u64> = pointers
        .history(&model, Slot::Live)
        .await?
        .into_iter()
        .map(|(_, p)| p.version)
        .collect();
    assert!(
        (live.version as usize) > named.len() + KEEP,
        "enough versions ({}) for some to go beyond the {} the history names",
        live.version,
        named.len()
    );
    let newest: BTreeSet<u64> = (live.version + 1 - KEEP as u64..=live.version).collect();
    let expected: BTreeSet<u64> = named.union(&newest).copied().collect();
    // Pruning runs beside training; wait for the pass after the last publish.
    eventually(Duration::from_secs(30), "old versions removed", || async {
        let stored: BTreeSet<u64> = artifacts.versions(&model).await.ok()?.into_iter().collect();
        (stored == expected).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: expected {expected:?}"))?;

    // On disk, the folders are exactly the kept versions: none left empty by a deletion.
    let model_dir = stack.dir.path().join("artifacts/models/kept");
    let folders: BTreeSet<u64> = std::fs::read_dir(&model_dir)?
        .map(|entry| {
            entry
                .unwrap()
                .file_name()
                .to_string_lossy()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        folders,
        expected,
        "version folders in {}",
        model_dir.display()
    );

    // Every named version loads, so the oldest one in the history is a valid rollback target.
    for &version in &named {
        artifacts.load(&model, version).await?;
    }
    let oldest = *named.first().unwrap();
    let current = pointers.get(&model, Slot::Live).await?;
    let verified = Verified::check(&artifacts, &model, oldest).await?;
    pointers
        .move_to(
            &model,
            Slot::Live,
            &verified,
            Cause::Rollback,
            "rollback in a test",
            current.revision,
        )
        .await?;
    assert_eq!(
        pointers
            .get(&model, Slot::Live)
            .await?
            .value
            .unwrap()
            .version,
        oldest
    );
    Ok(())
}
