//! An edge predictor: `predict` at a remote site, connected to a NATS leaf node whose link to
//! the hub (where JetStream, featurize and train run) crosses a cuttable [`Link`]. The leaf has
//! no JetStream of its own; the predictor addresses the hub's JetStream by its domain
//! (`FRESHET_JETSTREAM_DOMAIN`), so its pointer watch and its reads of the MODELS bucket cross
//! the leaf connection.
//!
//! While the link is up the predictor follows the hub's live pointer; cut, it keeps answering
//! the site's clients with the last version it loaded, although train moves the pointer on; the
//! link restored, it catches up to the version live at the hub.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use freshet::serving::{PredictRequest, PredictResponse};
use freshet::subjects::{BUCKET_MODELS, Subjects};
use freshet_model::store::{PointerStore, Pointers, Slot};
use freshet_tests::links::Link;
use freshet_tests::{
    ConfiguredServer, bookstore_events, event_message, eventually, spawn_function, stack,
    test_topology,
};

const ITEMS: usize = 20;

/// `actions` generated user actions (after the catalogue when `with_catalogue`), published to
/// the hub and acknowledged.
async fn publish(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    actions: usize,
    with_catalogue: bool,
) -> anyhow::Result<()> {
    let subjects = Subjects::default();
    let events = bookstore_events(ITEMS, actions, prefix);
    let skip = if with_catalogue { 0 } else { ITEMS };
    for event in events.iter().skip(skip) {
        let (subject, message) = event_message(&subjects, event)?;
        js.send_publish(subject, message).await?.await?;
    }
    Ok(())
}

/// The version the predictor at the edge answers with, asked through the leaf node.
async fn served_version(edge: &async_nats::Client, model: &freshet::ids::ModelName) -> Option<u64> {
    let request = PredictRequest {
        features: Some(vec![0.5; freshet_features::bookstore::FEATURE_NAMES.len()]),
        ..Default::default()
    };
    let endpoint = freshet::serving::endpoint_single(&Subjects::default(), model);
    let reply: PredictResponse =
        freshet::serving::call(edge, endpoint, &request, Duration::from_secs(2))
            .await
            .ok()?;
    Some(reply.version)
}

/// How many leaf connections the server with monitoring port `monitor` has (`/leafz`).
async fn leaf_connections(monitor: u16) -> Option<u64> {
    let leafz: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{monitor}/leafz"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    leafz["leafnodes"].as_u64()
}

fn folder(dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_predictor_serves_its_last_version_while_cut_off_and_catches_up()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let outcome = std::panic::AssertUnwindSafe(cut_off_and_restored(dir.path()));
    let outcome = futures::FutureExt::catch_unwind(outcome).await;
    if !matches!(outcome, Ok(Ok(()))) {
        // The servers' and functions' logs, for whoever investigates the failure.
        eprintln!("logs kept in {}", dir.keep().display());
    }
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn cut_off_and_restored(dir: &Path) -> anyhow::Result<()> {
    let (hub_dir, leaf_dir) = (folder(dir, "hub")?, folder(dir, "leaf")?);
    let leafnode_port = stack::free_port()?;
    let store = hub_dir.join("jetstream");
    let hub = ConfiguredServer::start(
        &hub_dir,
        |port| {
            format!(
                "listen: \"127.0.0.1:{port}\"\nlog_file: {:?}\njetstream {{ store_dir: {store:?}, domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:{leafnode_port}\", no_advertise: true }}\n",
                hub_dir.join("nats-server.log")
            )
        },
        &[],
    )?;
    // The hub does not tell the leaf its own leafnode address, so every reconnection crosses
    // the link.
    let link = Link::start(leafnode_port).await?;
    let leaf_monitor = stack::free_port()?;
    let leaf = ConfiguredServer::start(
        &leaf_dir,
        |port| {
            format!(
                "listen: \"127.0.0.1:{port}\"\nlog_file: {:?}\nhttp: \"127.0.0.1:{leaf_monitor}\"\nleafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ] }}\n",
                leaf_dir.join("nats-server.log"),
                link.port()
            )
        },
        &[],
    )?;

    let topology = dir.join("topology.toml");
    std::fs::write(&topology, test_topology())?;
    let env = |port: u16| {
        [
            ("FRESHET_NATS_URL", format!("nats://127.0.0.1:{port}")),
            ("FRESHET_TOPOLOGY", topology.display().to_string()),
            (
                "FRESHET_OBJECT_STORE",
                format!("file://{}", dir.join("artifacts").display()),
            ),
        ]
    };
    let _featurize = spawn_function(
        "featurize",
        &["--label-horizon", "0s"],
        &env(hub.port),
        &hub_dir,
    )?;
    let _train = spawn_function(
        "train",
        &[
            "--publish-every-batches",
            "1",
            "--publish-interval",
            "300ms",
        ],
        &env(hub.port),
        &hub_dir,
    )?;
    // At the edge, JetStream is the hub's, addressed by its domain across the leaf connection.
    let mut edge_env = env(leaf.port).to_vec();
    edge_env.push(("FRESHET_JETSTREAM_DOMAIN", "hub".to_string()));
    let _predict = spawn_function("predict", &[], &edge_env, &leaf_dir)?;
    let logs = || {
        [("hub", "featurize"), ("hub", "train"), ("leaf", "predict")]
            .map(|(site, f)| {
                let log = std::fs::read_to_string(dir.join(site).join(format!("{f}.log")))
                    .unwrap_or_default();
                let tail: String = log.lines().rev().take(60).collect::<Vec<_>>().join("\n");
                format!("--- {f} at the {site} (newest first)\n{tail}")
            })
            .join("\n")
    };
    let with_logs = |e: anyhow::Error| anyhow::anyhow!("{e}\n{}", logs());

    let hub_client = async_nats::connect(format!("nats://127.0.0.1:{}", hub.port)).await?;
    let js = async_nats::jetstream::new(hub_client);
    let edge = async_nats::connect(format!("nats://127.0.0.1:{}", leaf.port)).await?;
    let model = freshet::ids::ModelName::parse("bookstore")?;

    // Linked: the edge serves what train publishes at the hub.
    eventually(
        Duration::from_secs(30),
        "featurize to provision EVENTS",
        || async { js.get_stream("EVENTS").await.ok() },
    )
    .await
    .map_err(with_logs)?;
    publish(&js, "edge-a", 300, true).await?;
    let pointers = Pointers::new(
        eventually(Duration::from_secs(30), "the MODELS bucket", || async {
            js.get_key_value(BUCKET_MODELS).await.ok()
        })
        .await?,
    );
    let live_at_hub = || async {
        pointers
            .get(&model, Slot::Live)
            .await
            .ok()?
            .value
            .map(|pointer| pointer.version)
    };
    let before = eventually(
        Duration::from_secs(60),
        "the edge to serve a version",
        || async { served_version(&edge, &model).await },
    )
    .await
    .map_err(with_logs)?;

    // Cut: the leaf loses its link; train moves live on at the hub.
    link.isolate(leaf.pid());
    eventually(
        Duration::from_secs(10),
        "the leaf connection down",
        || async { (leaf_connections(leaf_monitor).await? == 0).then_some(()) },
    )
    .await?;
    let settled = live_at_hub().await.unwrap_or(before);
    publish(&js, "edge-b", 300, false).await?;
    let moved = eventually(
        Duration::from_secs(60),
        "train to publish while the edge is cut off",
        || async {
            live_at_hub()
                .await
                .filter(|&version| version > settled.max(before))
        },
    )
    .await
    .map_err(with_logs)?;
    // The edge keeps answering, with the version it had.
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(served_version(&edge, &model).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        answers
            .iter()
            .all(|answer| answer.is_some_and(|version| version < moved)),
        "cut off, the edge answers every request with a version it had: {answers:?} (live at the hub: {moved})\n{}",
        logs()
    );

    // Restored: the edge catches up to what is live at the hub.
    link.heal();
    let latest = live_at_hub().await.unwrap_or(moved);
    eventually(Duration::from_secs(60), "the edge to catch up", || async {
        served_version(&edge, &model)
            .await
            .filter(|&version| version >= latest)
    })
    .await
    .map_err(with_logs)?;
    Ok(())
}
