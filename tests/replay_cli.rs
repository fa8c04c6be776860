//! `freshet replay` against a real server: every event of a file lands in EVENTS exactly once,
//! a second replay adds nothing (deduplicated by id), a line that is not an event is reported
//! with its number and skipped, `--rate` paces by the clock, and `--limit` stops early. A replay
//! rides out the server being killed and restarted: it finishes, every event is stored once and
//! in file order, and featurize refuses none as late.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use freshet::subjects::{STREAM_DEAD_LETTER, STREAM_EVENTS};
use freshet_cli::bookstore::{BookstoreConfig, generate};
use freshet_cli::stack::bin_dir;
use freshet_tests::{Stack, bookstore_action, eventually};

/// What one run of the binary gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `freshet replay FILE ARGS` against the stack.
fn replay(stack: &Stack, file: &Path, args: &[&str]) -> Run {
    let started = Instant::now();
    let output = Command::new(bin_dir().unwrap().join("freshet"))
        .arg("replay")
        .arg(file)
        .args(args)
        .envs(stack.env())
        .output()
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    }
}

/// A JSON Lines file of `n` user actions with one line that is not an event after the 10th.
fn write_events(dir: &Path, n: usize) -> std::path::PathBuf {
    let mut text = String::new();
    for i in 0..n {
        if i == 10 {
            text.push_str("{\"specversion\":\"1.0\",\"id\":\"broken\",\"type\":\"user_action\"\n");
            text.push('\n'); // blank lines are skipped silently
        }
        text.push_str(&bookstore_action(i, 10, "replay").to_string());
        text.push('\n');
    }
    let path = dir.join("events.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_publishes_each_event_once_at_the_rate_asked() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let file = write_events(stack.dir.path(), 100);

    // 100 events at 200/s: the last is due 99/200 s after the first.
    let run = replay(&stack, &file, &["--rate", "200", "--json"]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (
            summary["published"].as_u64(),
            summary["duplicates"].as_u64(),
            summary["rejected"].as_u64()
        ),
        (Some(100), Some(0), Some(1)),
        "{summary}"
    );
    assert!(
        summary["elapsed_seconds"].as_f64().unwrap() >= 0.45,
        "{summary}"
    );
    assert!(run.took >= Duration::from_millis(450), "{:?}", run.took);
    let rate = summary["events_per_second"].as_f64().unwrap();
    assert!(
        (150.0..=230.0).contains(&rate),
        "paced at {rate}/s: {summary}"
    );
    // The bad line is named by its number in the file; stderr is not a terminal, so no bar.
    assert!(
        run.stderr.contains("line 11: malformed_json"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains('\r'), "{}", run.stderr);

    let stored = stack.read_stream(STREAM_EVENTS, 1000).await?;
    assert_eq!(stored.len(), 100);
    let ids: BTreeSet<&str> = stored
        .iter()
        .map(|m| m.header("Nats-Msg-Id").unwrap())
        .collect();
    assert_eq!(ids.len(), 100, "every event exactly once");
    assert!(stored.iter().all(|m| m.json()["type"] == "user_action"));

    // Again, unpaced and readable: JetStream recognises every id, the stream stays as it was.
    let run = replay(&stack, &file, &["--rate", "0"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("replayed: 0 published, 100 duplicates, 1 rejected lines in "),
        "{}",
        run.stdout
    );
    assert_eq!(stack.stream_len(STREAM_EVENTS).await?, 100);

    // --limit counts lines from the top, the bad one included: 11 lines, 10 events.
    let run = replay(&stack, &file, &["--limit", "11", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (summary["duplicates"].as_u64(), summary["rejected"].as_u64()),
        (Some(10), Some(1)),
        "{summary}"
    );

    // Stdin works too ("-"), and a missing file is an error, not a hang.
    let output = Command::new(bin_dir().unwrap().join("freshet"))
        .args(["replay", "-", "--json"])
        .envs(stack.env())
        .stdin(std::fs::File::open(&file)?)
        .output()?;
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(summary["duplicates"].as_u64(), Some(100), "{summary}");
    let run = replay(&stack, &stack.dir.path().join("absent.jsonl"), &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("absent.jsonl"), "{}", run.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_rides_out_a_server_restart_storing_each_event_once_in_file_order()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // featurize with its defaults: the 30-minute label horizon, a minute of allowed lateness. An
    // event stored a thousand lines (seconds of event time) late would be refused as late.
    let featurize = stack.spawn("featurize", &[])?;
    let events = generate(&BookstoreConfig {
        users: 100,
        items: 50,
        actions: 20_000,
        seed: 7,
        viral: None,
        changes: Vec::new(),
        traffic: None,
    });
    let mut text = Vec::new();
    for event in &events {
        text.extend(event.to_json_bytes());
        text.push(b'\n');
    }
    let file = stack.dir.path().join("bookstore.jsonl");
    std::fs::write(&file, text)?;

    let replaying = Command::new(bin_dir()?.join("freshet"))
        .arg("replay")
        .arg(&file)
        .arg("--json")
        .envs(stack.env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let total = events.len() as u64;
    eventually(
        Duration::from_secs(60),
        "a quarter of the replay stored",
        || async { (stack.stream_len(STREAM_EVENTS).await.ok()? >= total / 4).then_some(()) },
    )
    .await?;
    // Killed with a thousand acknowledgements in flight, and back only after they have timed out
    // (5 s): whatever the socket held is lost, and whatever the client queued goes out after.
    tokio::task::block_in_place(|| stack.nats.kill_and_restart_after(Duration::from_secs(6)))?;
    let output = tokio::task::spawn_blocking(move || replaying.wait_with_output()).await??;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(
        summary["published"].as_u64().unwrap() + summary["duplicates"].as_u64().unwrap(),
        total,
        "{summary}"
    );
    assert!(
        summary["resent"].as_u64().unwrap() > 0,
        "the restart cost no resend: {summary}"
    );

    // Every event once, in file order.
    let stored = eventually(Duration::from_secs(30), "the test client back", || async {
        stack
            .read_stream(STREAM_EVENTS, events.len() + 10)
            .await
            .ok()
    })
    .await?;
    let stored_ids: Vec<String> = stored
        .iter()
        .map(|m| m.json()["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let file_ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    if stored_ids != file_ids {
        let first = stored_ids.iter().zip(&file_ids).position(|(a, b)| a != b);
        panic!(
            "{} stored for {} in the file; first difference at position {first:?}",
            stored_ids.len(),
            file_ids.len()
        );
    }

    // featurize takes them all and refuses none.
    let consumer = stack.js.get_stream(STREAM_EVENTS).await?;
    eventually(
        Duration::from_secs(120),
        "featurize through the replay",
        || async {
            let info = consumer.consumer_info("featurize").await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.log_of("featurize", featurize)))?;
    let refused = stack.read_stream(STREAM_DEAD_LETTER, 100).await?;
    let reasons: Vec<Option<&str>> = refused
        .iter()
        .map(|letter| letter.header(freshet::subjects::HEADER_REASON))
        .collect();
    assert!(reasons.is_empty(), "dead-lettered: {reasons:?}");
    Ok(())
}
