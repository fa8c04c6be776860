//! Functions reconnect and resume after the nats-server restarts: events published before, during
//! and after the restart are all featurized, each exactly once, and the probes say so; and a
//! standby waiting for a lease outlives a restart and takes over when the holder dies.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use freshet::subjects::{BUCKET_LEASES, STREAM_EXAMPLES};
use freshet_tests::{Stack, cloud_event, eventually};
use serde_json::json;

fn action(n: usize) -> serde_json::Value {
    cloud_event(
        &format!("r-{n}"),
        "user_action",
        json!({"user": format!("u{}", n % 7), "item": format!("b{}", n % 5), "action": "view"}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn featurize_resumes_after_a_server_restart() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let port = freshet_tests::stack::free_port()?;
    // Every view labelled at once, so each event becomes one example.
    let featurize = stack.spawn(
        "featurize",
        &["--http-port", &port.to_string(), "--label-horizon", "0s"],
    )?;
    for n in 0..500 {
        stack.publish_event(&action(n)).await?;
    }
    eventually(
        Duration::from_secs(30),
        "the first events featurized",
        || async { (stack.stream_len(STREAM_EXAMPLES).await.ok()? >= 500).then_some(()) },
    )
    .await?;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    assert_eq!(http.get(url("/healthz")).send().await?.status(), 200);
    assert_eq!(http.get(url("/readyz")).send().await?.status(), 200);
    // Acknowledged once the states they changed are written, shortly after their examples.
    let acked = "freshet_messages_acked_total{function=\"featurize\"} 500";
    let metrics = eventually(
        Duration::from_secs(10),
        "every event acknowledged",
        || async {
            let metrics = http
                .get(url("/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics.contains(acked).then_some(metrics)
        },
    )
    .await;
    assert!(
        metrics.is_ok(),
        "{}",
        http.get(url("/metrics")).send().await?.text().await?
    );

    stack.nats.restart()?;
    // The test's own client reconnects too; publish more once it has.
    eventually(
        Duration::from_secs(30),
        "the test client to reconnect",
        || async { stack.publish_event(&action(500)).await.ok() },
    )
    .await?;
    for n in 501..1_000 {
        stack.publish_event(&action(n)).await?;
    }
    let examples = eventually(
        Duration::from_secs(60),
        "every event featurized after the restart",
        || async {
            let n = stack.stream_len(STREAM_EXAMPLES).await.ok()?;
            (n >= 1_000).then_some(n)
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nfeaturize log:\n{}",
            stack.log_of("featurize", featurize)
        )
    })?;
    assert_eq!(examples, 1_000, "one example per event, none twice");
    assert!(
        stack.process(featurize).try_status()?.is_none(),
        "featurize kept running"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_waits_for_the_lease_through_a_server_restart_and_takes_over()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let args = ["--label-horizon", "0s"];
    let holder = stack.spawn("featurize", &args)?;
    let leases = stack.js.get_key_value(BUCKET_LEASES).await?;
    let lease = "featurize.featurize";
    let holder_name = eventually(
        Duration::from_secs(30),
        "the first replica holds the lease",
        || async { leases.get(lease).await.ok()? },
    )
    .await?;
    let standby = stack.spawn("featurize", &args)?;
    eventually(
        Duration::from_secs(30),
        "the second replica stands by",
        || async {
            stack
                .log_of("featurize", standby)
                .contains("standing by")
                .then_some(())
        },
    )
    .await?;

    // Down long enough for a whole attempt of the standby's to fail (its create times out after
    // 5 s, the read of the key that follows after 10 more), as in a slow restart of a big store.
    tokio::task::block_in_place(|| stack.nats.restart_after(Duration::from_secs(16)))?;
    eventually(
        Duration::from_secs(30),
        "the test client to reconnect",
        || async { stack.publish_event(&action(0)).await.ok() },
    )
    .await?;
    assert!(
        stack.process(standby).try_status()?.is_none(),
        "the standby exited during the restart:\n{}",
        stack.log_of("featurize", standby)
    );

    // The holder dies without releasing the lease; the standby takes it once it ages out.
    stack.process(holder).kill()?;
    for n in 1..100 {
        stack.publish_event(&action(n)).await?;
    }
    eventually(
        Duration::from_secs(60),
        "the standby featurizes every event",
        || async { (stack.stream_len(STREAM_EXAMPLES).await.ok()? >= 100).then_some(()) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nstandby log:\n{}", stack.log_of("featurize", standby)))?;
    let taken = leases.get(lease).await?;
    assert!(
        taken.is_some() && taken != Some(holder_name),
        "the standby holds the lease"
    );
    assert!(
        stack.process(standby).try_status()?.is_none(),
        "the standby kept running"
    );
    Ok(())
}
