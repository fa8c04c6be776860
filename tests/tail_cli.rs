//! `freshet tail` against a real server: the newest dead letters, readable with their reasons,
//! or as JSON Lines; `--last` bounds how far back it starts; without `--follow` it stops by
//! itself.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

use freshet::subjects::STREAM_DEAD_LETTER;
use freshet_cli::stack::bin_dir;
use freshet_tests::{Stack, eventually};

/// Runs `freshet tail ARGS` against the stack; returns (exit code, stdout).
fn tail(stack: &Stack, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(bin_dir().unwrap().join("freshet"))
        .arg("tail")
        .args(args)
        .envs(stack.env())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_newest_dead_letters_with_their_reasons() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.spawn("featurize", &[])?;
    let bad: [&[u8]; 3] = [
        br#"{"specversion":"1.0","id":"t-1","type":"user_action","data":{"user":"#,
        br#"{"specversion":"1.0","id":"t-2","source":"t","type":"refund","data":{}}"#,
        br#"{"specversion":"1.0","source":"t","type":"user_action","data":{"user":"u","item":"b","action":"view"}}"#,
    ];
    for payload in bad {
        stack
            .publish_raw("user_action", "u", payload.to_vec())
            .await?;
    }
    eventually(Duration::from_secs(30), "three dead letters", || async {
        (stack.stream_len(STREAM_DEAD_LETTER).await.ok()? >= 3).then_some(())
    })
    .await?;

    let (code, out) = tail(&stack, &["dead-letter", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<&str> = lines
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["malformed_json", "unknown_type", "invalid_envelope"],
        "{out}"
    );
    assert_eq!(
        lines[1]["payload"]["id"], "t-2",
        "a JSON payload is printed as JSON"
    );
    assert!(lines.iter().all(|l| l["function"] == "featurize"));

    let (code, out) = tail(&stack, &["dead-letter", "--last", "1"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("freshet.dead_letter.featurize.invalid_envelope  [invalid_envelope: "),
        "{out}"
    );

    // An empty stream prints nothing and exits at once.
    let (code, out) = tail(&stack, &["predictions"]);
    assert_eq!((code, out.as_str()), (Some(0), ""));
    Ok(())
}
