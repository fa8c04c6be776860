//! The example producers in examples/ (Python with nats-py, and bash speaking the NATS protocol
//! over /dev/tcp) publish events that featurize takes like any other: each is acknowledged by
//! JetStream, lands in EVENTS under its entity's subject, and changes that entity's state. Bad
//! input is reported with a failing exit code and publishes nothing.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use freshet::features::{ItemState, UserState, item_key, user_key};
use freshet::subjects::{BUCKET_FEATURES, STREAM_EVENTS};
use freshet_tests::{Stack, eventually};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `command` (each producer runs under `timeout 30`, so a stuck one fails the test) with
/// `stdin`.
fn run(mut command: Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn shell_producer(port: u16, args: &[&str]) -> Command {
    let mut command = Command::new("timeout");
    command
        .arg("30")
        .arg("bash")
        .arg(repository().join("examples/produce.sh"))
        .args(args)
        .env("NATS_PORT", port.to_string());
    command
}

fn python_producer(url: &str) -> Command {
    let mut command = Command::new("timeout");
    command
        .arg("30")
        .arg(repository().join(".tools/venv/bin/python"))
        .arg(repository().join("examples/producer.py"))
        .args(["--server", url]);
    command
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_shell_producers_feed_featurize() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.spawn("featurize", &["--label-horizon", "0s"])?;
    let port = stack.nats.port();

    // The shell producer lists a book, and says what JetStream stored.
    let listed = run(
        shell_producer(
            port,
            &[
                "new_item",
                "b1",
                r#"{"item":"b1","category":"fantasy","price":12.5}"#,
            ],
        ),
        "",
    );
    assert!(listed.status.success(), "{}", text(&listed));
    let ack: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(ack["stream"], STREAM_EVENTS, "{}", text(&listed));
    assert_eq!(ack["seq"], 1);

    // The Python producer sends two actions on it.
    let lines = concat!(
        r#"{"type": "user_action", "data": {"user": "u1", "item": "b1", "action": "view"}}"#,
        "\n",
        r#"{"type": "user_action", "data": {"user": "u1", "item": "b1", "action": "purchase"}}"#,
        "\n"
    );
    let acted = run(python_producer(&stack.nats.url()), lines);
    assert!(acted.status.success(), "{}", text(&acted));
    let summary: serde_json::Value = serde_json::from_slice(&acted.stdout).unwrap();
    assert_eq!(summary, serde_json::json!({"stored": 2, "failed": 0}));

    // featurize took all three: the item has its category and both actions, the user both.
    let features = stack.js.get_key_value(BUCKET_FEATURES).await?;
    let (item, user) = eventually(
        Duration::from_secs(30),
        "featurize applied the produced events",
        || async {
            let item: ItemState =
                serde_json::from_slice(&features.get(item_key(&"b1".parse().ok()?)).await.ok()??)
                    .ok()?;
            let user: UserState =
                serde_json::from_slice(&features.get(user_key(&"u1".parse().ok()?)).await.ok()??)
                    .ok()?;
            (item.views + item.purchases == 2).then_some((item, user))
        },
    )
    .await?;
    assert_eq!(item.category.as_deref(), Some("fantasy"));
    assert_eq!(item.price, Some(12.5));
    assert_eq!((user.views, user.purchases), (1, 1));

    // Bad input: a line without its entity is reported, and nothing more is stored.
    let bad = run(
        python_producer(&stack.nats.url()),
        r#"{"type": "user_action", "data": {"item": "b1", "action": "view"}}"#,
    );
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("data.user"));
    // A subject no stream captures: no acknowledgement, a failing exit code.
    let mut nowhere = shell_producer(port, &["user_action", "u1", "{}"]);
    nowhere.env("FRESHET_SUBJECT_PREFIX", "nowhere");
    let lost = run(nowhere, "");
    assert_eq!(lost.status.code(), Some(1), "{}", text(&lost));
    assert_eq!(stack.stream_len(STREAM_EVENTS).await?, 3);
    Ok(())
}
