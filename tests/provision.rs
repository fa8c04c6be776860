//! (b) Provisioning twice changes nothing; a stream whose structure differs is reported, not
//! silently changed, and a function refuses to start against it; a stream whose limits differ
//! is left to a starting function (with a warning) and updated by `freshet provision`. The duplicate window
//! is a setting (`FRESHET_DUPLICATE_WINDOW`) that provisioning applies, and it is exactly the
//! span within which an event sent again is stored once.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream;
use freshet::subjects::{STREAM_EVENTS, STREAM_EXAMPLES, STREAM_PREDICTIONS, Subjects};
use freshet::topology::{self, Provisioned, Topology, TopologyError};
use freshet_tests::stack::NatsServer;

#[tokio::test]
async fn provisioning_is_idempotent_and_refuses_conflicts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(dir.path())?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let topology = Topology::builtin();
    let subjects = Subjects::default();

    let first = topology::provision(&js, &topology, &subjects).await?;
    assert_eq!(first.len(), 9, "five streams and four buckets: {first:?}");
    assert!(
        first
            .iter()
            .all(|(_, outcome)| *outcome == Provisioned::Created),
        "{first:?}"
    );
    let before = js
        .get_stream(STREAM_EXAMPLES)
        .await?
        .info()
        .await?
        .config
        .clone();

    let second = topology::provision(&js, &topology, &subjects).await?;
    assert!(
        second
            .iter()
            .all(|(_, outcome)| *outcome == Provisioned::Unchanged),
        "{second:?}"
    );
    let after = js
        .get_stream(STREAM_EXAMPLES)
        .await?
        .info()
        .await?
        .config
        .clone();
    assert_eq!(before.max_age, after.max_age);
    assert_eq!(before.duplicate_window, after.duplicate_window);

    // Someone changed a limit of EXAMPLES by hand: a function starting runs on it and says so;
    // the operator's provisioning puts the topology's back.
    let mut changed = after.clone();
    changed.max_age = Duration::from_secs(3600);
    js.update_stream(changed.clone()).await?;
    let max_age = || async {
        anyhow::Ok(
            js.get_stream(STREAM_EXAMPLES)
                .await?
                .info()
                .await?
                .config
                .max_age,
        )
    };
    let starting =
        topology::provision_as(&js, &topology, &subjects, topology::ProvisionMode::Create).await?;
    let examples = |report: &[(String, Provisioned)]| {
        report
            .iter()
            .find(|(what, _)| what == "stream EXAMPLES")
            .map(|(_, outcome)| outcome.clone())
    };
    assert!(
        matches!(examples(&starting), Some(Provisioned::LimitsDiffer(ref what)) if what.contains("max_age")),
        "{starting:?}"
    );
    assert_eq!(
        max_age().await?,
        Duration::from_secs(3600),
        "a function leaves it"
    );
    let operator = topology::provision(&js, &topology, &subjects).await?;
    assert!(
        matches!(examples(&operator), Some(Provisioned::Updated(ref what)) if what.contains("max_age")),
        "{operator:?}"
    );
    assert_eq!(max_age().await?, before.max_age, "the operator restores it");

    // Someone changed what EXAMPLES holds: provisioning must say so and leave it alone.
    let mut restructured = after.clone();
    restructured.subjects.push("elsewhere.examples.>".into());
    js.update_stream(restructured).await?;
    let err = topology::provision(&js, &topology, &subjects)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TopologyError::Conflict { kind: "stream", .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("EXAMPLES") && message.contains("subjects"),
        "{message}"
    );
    let untouched = js
        .get_stream(STREAM_EXAMPLES)
        .await?
        .info()
        .await?
        .config
        .subjects
        .len();
    assert_eq!(untouched, 2);
    Ok(())
}

#[tokio::test]
async fn a_conflicting_stream_that_does_not_exist_yet_is_created_with_the_partition_transform()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(dir.path())?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    // An unrelated stream already owns a subject freshet needs: the server refuses the overlap,
    // and provisioning reports which stream it was creating.
    js.create_stream(stream::Config {
        name: "SQUATTER".into(),
        subjects: vec!["freshet.examples.>".into()],
        ..Default::default()
    })
    .await?;
    let err = topology::provision(&js, &Topology::builtin(), &Subjects::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("EXAMPLES"), "{err}");

    // Events are stored under their partition: one entity, one partition.
    js.delete_stream("SQUATTER").await?;
    topology::provision(&js, &Topology::builtin(), &Subjects::default()).await?;
    let subjects = Subjects::default();
    let mut partitions = std::collections::BTreeMap::new();
    for (i, user) in ["u1", "u2", "u1", "u3", "u1", "u2"].iter().enumerate() {
        let ack = js
            .publish(subjects.event("user_action", user), format!("{i}").into())
            .await?
            .await?;
        let message = js
            .get_stream("EVENTS")
            .await?
            .get_raw_message(ack.sequence)
            .await?;
        let (partition, event_type, entity) = subjects
            .parse_stored_event(&message.subject)
            .expect("a partitioned subject");
        assert_eq!((event_type, entity), ("user_action", *user));
        assert!(partition < Topology::builtin().partitions);
        let previous = partitions.insert(user.to_string(), partition);
        assert!(
            previous.is_none() || previous == Some(partition),
            "{user} moved partitions"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_duplicate_window_is_what_the_stream_deduplicates_within()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(&dir.path().join("jetstream"))?;
    let provisioned = std::process::Command::new(freshet_tests::stack::bin_dir()?.join("freshet"))
        .arg("provision")
        .env("FRESHET_NATS_URL", nats.url())
        .env("FRESHET_DUPLICATE_WINDOW", "2s")
        .output()?;
    assert!(
        provisioned.status.success(),
        "{}",
        String::from_utf8_lossy(&provisioned.stderr)
    );
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    for name in [STREAM_EVENTS, STREAM_EXAMPLES] {
        let window = js
            .get_stream(name)
            .await?
            .info()
            .await?
            .config
            .duplicate_window;
        assert_eq!(window, Duration::from_secs(2), "{name}");
    }
    let predictions = js
        .get_stream(STREAM_PREDICTIONS)
        .await?
        .info()
        .await?
        .config
        .duplicate_window;
    assert_eq!(predictions, Duration::from_secs(120));

    // Within the window an event sent again is stored once; after it, it is a new message.
    let subjects = Subjects::default();
    let send = || async {
        let message = PublishMessage::build()
            .payload("{}".into())
            .message_id("e-1");
        js.send_publish(subjects.event("user_action", "u1"), message)
            .await?
            .await
    };
    let first = send().await?;
    let again = send().await?;
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(again.sequence, first.sequence);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let late = send().await?;
    assert!(!late.duplicate, "the window is over: the id is forgotten");
    assert_eq!(late.sequence, first.sequence + 1);
    Ok(())
}
