//! `freshet models pin|unpin|pause|resume` with train running: a pinned model's live pointer
//! stays on the pinned version while examples keep arriving (they wait in the stream), hand-made
//! moves are refused, `list` and `status` show the hold; once unpinned (or resumed) train
//! carries on and the lineage learned every example exactly once (its ranges tile the stream).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::ids::ModelName;
use freshet::subjects::BUCKET_MODELS;
use freshet_model::store::{ArtifactStore, Cause, PointerStore, Pointers, Slot};
use freshet_tests::{Stack, assert_lineage_tiles, eventually, live_through};

/// How long a held model is watched for a move that must not happen.
const HELD_FOR: Duration = Duration::from_secs(4);

fn row(n: u64) -> (Vec<f32>, f32) {
    let x = (n % 10) as f32 / 10.0;
    (vec![x, 1.0 - x], f32::from(x > 0.5))
}

/// Runs `freshet ARGS --json`; returns (exit code, stdout as JSON, stderr).
fn cli(stack: &Stack, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, stdout, stderr) = stack.run_cli(&all);
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (code, json, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_or_paused_model_stays_and_then_learns_every_example_once() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("held")?;
    let train = stack.spawn(
        "train",
        &[
            "--model",
            "held",
            "--batch-size",
            "10",
            "--publish-every-batches",
            "1",
        ],
    )?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let caught_up = |through: u64| {
        let (pointers, artifacts, model) = (&pointers, &artifacts, &model);
        async move {
            eventually(Duration::from_secs(90), "train caught up", || {
                live_through(pointers, artifacts, model, through)
            })
            .await
        }
    };
    stack.publish_examples(&model, 0..200, row).await?;
    let before = caught_up(200)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;

    // Pin what is live. The pin is itself a move of live, with its cause.
    let (code, pinned, stderr) = cli(
        &stack,
        &[
            "models",
            "pin",
            "held",
            "--by",
            "ana",
            "--reason",
            "incident 12",
        ],
    );
    assert_eq!(code, Some(0), "{pinned} {stderr}");
    let version = pinned["to_version"].as_u64().unwrap();
    assert_eq!(version, before.version);
    let live = pointers.get(&model, Slot::Live).await?;
    let pin_revision = live.revision;
    let pointer = live.value.unwrap();
    assert_eq!((pointer.version, pointer.cause), (version, Cause::Pin));
    assert!(pointer.reason.contains("ana"), "{}", pointer.reason);

    // Examples keep arriving; live does not move, and nothing of them is learned.
    stack.publish_examples(&model, 200..400, row).await?;
    tokio::time::sleep(HELD_FOR).await;
    let live = pointers.get(&model, Slot::Live).await?;
    assert_eq!(
        (live.revision, live.value.map(|p| p.version)),
        (pin_revision, Some(version)),
        "live moved while pinned"
    );
    assert!(
        artifacts
            .versions(&model)
            .await?
            .iter()
            .all(|&v| v <= version),
        "no version is even written while pinned"
    );

    // A hand-made move is refused while pinned; list and status show the hold.
    let (code, _, stderr) = cli(&stack, &["models", "rollback", "held", "--to", "1"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("pinned"), "{stderr}");
    let (code, list, _) = cli(&stack, &["models", "list"]);
    assert_eq!(code, Some(0));
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "held")
        .unwrap();
    assert_eq!(entry["hold"]["pinned"].as_u64(), Some(version), "{entry}");
    assert_eq!(entry["hold"]["by"], "ana");
    let (_, status, _) = cli(&stack, &["status"]);
    let held = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "held")
        .unwrap();
    assert_eq!(held["hold"], format!("pinned v{version}"));

    // Unpinned, train carries on: every example learned once.
    let (code, released, stderr) = cli(&stack, &["models", "unpin", "held", "--by", "ana"]);
    assert_eq!(
        (code, &released["hold"]),
        (Some(0), &serde_json::Value::Null),
        "{stderr}"
    );
    let after = caught_up(400)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;
    assert_lineage_tiles(&artifacts, &model, &after, 400).await?;

    // Paused: no version, the examples wait; resumed, they are learned, once.
    let (code, paused, stderr) = cli(&stack, &["models", "pause", "held", "--by", "bo"]);
    assert_eq!(
        (code, paused["hold"]["paused"].as_bool()),
        (Some(0), Some(true)),
        "{stderr}"
    );
    let paused_at = pointers.get(&model, Slot::Live).await?;
    stack.publish_examples(&model, 400..450, row).await?;
    tokio::time::sleep(HELD_FOR).await;
    assert_eq!(
        pointers.get(&model, Slot::Live).await?.revision,
        paused_at.revision,
        "live moved while paused"
    );
    let (code, _, stderr) = cli(&stack, &["models", "resume", "held", "--by", "bo"]);
    assert_eq!(code, Some(0), "{stderr}");
    let resumed = caught_up(450)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\ntrain log:\n{}", stack.log_of("train", train)))?;
    assert_lineage_tiles(&artifacts, &model, &resumed, 450).await?;

    // The hold's history is the audit trail: who held and released it.
    let history = pointers.hold_history(&model).await?;
    let who: Vec<Option<(String, bool, Option<u64>)>> = history
        .into_iter()
        .map(|(_, hold)| hold.map(|h| (h.by, h.paused, h.pinned)))
        .collect();
    assert_eq!(
        who,
        [
            Some(("ana".to_string(), false, Some(version))),
            None,
            Some(("bo".to_string(), true, None)),
            None
        ]
    );
    Ok(())
}
