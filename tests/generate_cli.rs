//! `freshet generate` piped into `freshet publish` twice, against a real server and featurize: a
//! run made earlier (`--start` ten minutes ago), then one with the default start (now) and the
//! same seed. The second is taken as new events, neither dead-lettered as late behind the first
//! run's watermark (as every run was when each began at 2026-01-01) nor deduplicated against the
//! first run's ids.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::subjects::{STREAM_DEAD_LETTER, STREAM_EXAMPLES};
use freshet_tests::{Stack, eventually, run_cli};

const ITEMS: u64 = 10;
/// More seconds of event time than featurize's allowed lateness (1m) plus its out-of-orderness,
/// fewer than its --max-future-skew (5m).
const ACTIONS: u64 = 150;

/// Runs `freshet generate ARGS` and publishes its output; returns publish's stdout.
fn generate_and_publish(stack: &Stack, args: &[&str]) -> String {
    let (items, actions) = (ITEMS.to_string(), ACTIONS.to_string());
    let generated = run_cli(
        stack
            .freshet()
            .args(["generate", "--users", "5", "--items", &items])
            .args(["--events", &actions])
            .args(args),
    );
    assert_eq!(generated.code, Some(0), "{}", generated.stderr);
    let file = stack.dir.path().join("generated.jsonl");
    std::fs::write(&file, &generated.stdout).unwrap();
    let published = run_cli(stack.freshet().arg("publish").arg(&file));
    assert_eq!(published.code, Some(0), "{published:?}");
    published.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_generated_run_is_neither_late_nor_a_duplicate() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack.spawn("featurize", &["--label-horizon", "0s"])?;

    let earlier = (chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    let first = generate_and_publish(&stack, &["--start", &earlier]);
    assert!(
        first.contains(&format!("published   {}", ITEMS + ACTIONS)),
        "{first}"
    );
    eventually(Duration::from_secs(60), "first run's examples", || async {
        (stack.stream_len(STREAM_EXAMPLES).await.ok()? == ACTIONS).then_some(())
    })
    .await?;

    let second = generate_and_publish(&stack, &[]);
    assert!(
        second.contains(&format!("published   {}", ITEMS + ACTIONS)),
        "{second}"
    );
    let settled = eventually(Duration::from_secs(60), "second run's examples", || async {
        (stack.stream_len(STREAM_EXAMPLES).await.ok()? == 2 * ACTIONS).then_some(())
    })
    .await;
    let letters = stack.read_stream(STREAM_DEAD_LETTER, 10).await?;
    let subjects: Vec<&str> = letters.iter().map(|m| m.subject.as_str()).collect();
    assert!(letters.is_empty(), "dead-lettered: {subjects:?}");
    settled
}
