//! `freshet publish` against a real server: a file whose lines are all events publishes them and
//! exits 0; a file with invalid lines publishes the valid ones, names each invalid line, and
//! exits 1 saying how many lines were invalid and why, so a script cannot take a partly
//! published file for a published one.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;

use freshet::subjects::STREAM_EVENTS;
use freshet_tests::{Stack, bookstore_action, run_cli};

/// Runs `freshet publish FILE --json` against the stack; returns (exit code, stdout, stderr).
fn publish(stack: &Stack, file: &Path) -> (Option<i32>, String, String) {
    let run = run_cli(stack.freshet().arg("publish").arg(file).arg("--json"));
    (run.code, run.stdout, run.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_exits_non_zero_when_any_line_was_invalid() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let dir = stack.dir.path();

    let good = dir.join("good.jsonl");
    let lines: Vec<String> = (0..3)
        .map(|n| bookstore_action(n, 10, "good").to_string())
        .collect();
    std::fs::write(&good, lines.join("\n") + "\n")?;
    let (code, out, err) = publish(&stack, &good);
    assert_eq!(code, Some(0), "every line published:\n{out}\n{err}");
    assert_eq!(stack.stream_len(STREAM_EVENTS).await?, 3);

    // One valid event among three invalid lines (as observed: 3 of 4 invalid).
    let mixed = dir.join("mixed.jsonl");
    let steal = bookstore_action(1, 10, "mixed")
        .to_string()
        .replacen("\"view\"", "\"steal\"", 1);
    let text = [
        bookstore_action(0, 10, "mixed").to_string(),
        "{not json".to_string(),
        steal,
        r#"{"specversion":"1.0","id":"x","source":"t","type":"click","data":{}}"#.to_string(),
    ]
    .join("\n");
    std::fs::write(&mixed, text)?;
    let (code, out, err) = publish(&stack, &mixed);
    assert_eq!(
        code,
        Some(1),
        "invalid lines must fail the run:\n{out}\n{err}"
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (summary["published"].as_u64(), summary["invalid"].as_u64()),
        (Some(1), Some(3)),
        "the summary is still printed: {summary}"
    );
    for expected in [
        "line 2: malformed_json",
        "line 3: invalid_data",
        "line 4: unknown_type",
        "3 of 4 lines were invalid and not published (1 invalid_data, 1 malformed_json, 1 unknown_type)",
    ] {
        assert!(err.contains(expected), "{expected:?} missing in\n{err}");
    }
    assert_eq!(
        stack.stream_len(STREAM_EVENTS).await?,
        4,
        "the valid line is published"
    );
    Ok(())
}
