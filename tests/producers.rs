//! The example producers in examples/ (Python with nats-py, and bash speaking the NATS protocol
//! over /dev/tcp) publish events that featurize takes like any other: each is acknowledged by
//! JetStream, lands in EVENTS under its entity's subject, and changes that entity's state. Bad
//! input is reported with a failing exit code and publishes nothing. Both ride out a server
//! restart: what was not acknowledged is sent again under the same id, each event is stored once,
//! and the Python producer's in input order.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use freshet::subjects::{BUCKET_FEATURES, STREAM_EVENTS};
use freshet_features::bookstore::{ItemState, UserState, item_key, user_key};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_shell_producers_ride_out_a_server_restart() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let listing = |n: usize| {
        format!(
            r#"{{"type": "new_item", "data": {{"item": "p{n}", "category": "c", "price": 1.0}}}}"#
        ) + "\n"
    };
    // The Python producer takes its lines as they come: five before the server stops, five
    // while it is down, five once it is back.
    let mut python = python_producer(&stack.nats.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = python.stdin.take().unwrap();
    for n in 0..5 {
        input.write_all(listing(n).as_bytes())?;
    }
    eventually(Duration::from_secs(30), "the first five stored", || async {
        (stack.stream_len(STREAM_EVENTS).await.ok()? >= 5).then_some(())
    })
    .await?;
    let port = stack.nats.port();
    tokio::task::block_in_place(|| stack.nats.stop())?;
    for n in 5..10 {
        input.write_all(listing(n).as_bytes())?;
    }
    // The shell producer starts while the server is down.
    let shell = shell_producer(
        port,
        &[
            "new_item",
            "s1",
            r#"{"item":"s1","category":"c","price":2.0}"#,
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| stack.nats.start_again())?;
    for n in 10..15 {
        input.write_all(listing(n).as_bytes())?;
    }
    drop(input);
    let (python, shell) =
        tokio::task::spawn_blocking(move || (python.wait_with_output(), shell.wait_with_output()))
            .await?;
    let (python, shell) = (python?, shell?);
    assert!(python.status.success(), "{}", text(&python));
    let summary: serde_json::Value = serde_json::from_slice(&python.stdout).unwrap();
    assert_eq!(
        summary,
        serde_json::json!({"stored": 15, "failed": 0}),
        "{}",
        text(&python)
    );
    assert!(shell.status.success(), "{}", text(&shell));

    // Each event once; the Python producer's in the order it read them.
    let stored = eventually(Duration::from_secs(30), "every event readable", || async {
        let stored = stack.read_stream(STREAM_EVENTS, 100).await.ok()?;
        (stored.len() >= 16).then_some(stored)
    })
    .await?;
    let items: Vec<String> = stored
        .iter()
        .map(|m| {
            m.json()["data"]["item"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let python_items: Vec<&String> = items.iter().filter(|i| i.starts_with('p')).collect();
    let expected: Vec<String> = (0..15).map(|n| format!("p{n}")).collect();
    assert_eq!(
        python_items,
        expected.iter().collect::<Vec<_>>(),
        "{}",
        text(&python)
    );
    assert_eq!(items.len(), 16, "{items:?}");
    assert_eq!(items.iter().filter(|i| *i == "s1").count(), 1);
    Ok(())
}
