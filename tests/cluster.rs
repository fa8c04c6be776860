//! The pipeline on a 3-node JetStream cluster (every stream, bucket and consumer replicated 3,
//! infra/topology-cluster.toml), with one node SIGKILLed mid-replay and restarted later: no
//! event is lost (every action becomes exactly one example), no example is trained twice (the
//! live lineage's learned ranges tile the stream exactly), and the predictor keeps answering:
//! with two of three nodes up the quorum holds, so requests may fail only while clients move
//! off the killed node and stream leaders are re-elected.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use freshet::serving::PredictRequest;
use freshet::subjects::{BUCKET_MODELS, STREAM_EXAMPLES, Subjects};
use freshet::topology::{self, Topology};
use freshet_cli::stack::{find_nats_server, free_port};
use freshet_model::store::{ArtifactStore, Pointers};
use freshet_tests::{
    assert_lineage_tiles, bookstore_events, event_message, eventually, live_through, spawn_function,
};

const NODES: usize = 3;
const ITEMS: usize = 20;
const ACTIONS: u64 = 1200;

/// One cluster node; SIGKILLed (by its pid) when dropped.
struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, routes: &str) -> anyhow::Result<()> {
        let child = Command::new(find_nats_server()?)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-n", &self.name, "--cluster_name", "freshet"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
            ])
            .args(["--routes", routes])
            .args(["-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cluster(dir: &Path) -> anyhow::Result<(Vec<Node>, String)> {
    let mut nodes = Vec::new();
    for n in 0..NODES {
        nodes.push(Node {
            name: format!("n{n}"),
            port: free_port()?,
            cluster_port: free_port()?,
            store: dir.join(format!("n{n}")),
            child: None,
        });
    }
    let routes = nodes
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
        .collect::<Vec<_>>()
        .join(",");
    for node in &mut nodes {
        node.start(&routes)?;
    }
    Ok((nodes, routes))
}

// Run by `make cluster`, not `make test`: it passed 23 of the last 24 runs here, and the one
// failure (a replay that did not finish within 120 s) is not understood yet.
#[ignore = "passed 23 of 24 runs; run it with make cluster"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_mid_replay_loses_and_repeats_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut nodes, routes) = cluster(dir.path())?;
    let urls = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
    let topology_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/topology-cluster.toml"),
    )?
    .replace("ack_wait = \"30s\"", "ack_wait = \"3s\"");
    let topology_path = dir.path().join("topology.toml");
    std::fs::write(&topology_path, &topology_text)?;
    let topology = Topology::from_file(&topology_path)?;
    let subjects = Subjects::default();

    // The cluster elects a meta leader before it takes JetStream requests.
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(
            urls.split(',')
                .map(|u| u.parse().unwrap())
                .collect::<Vec<async_nats::ServerAddr>>(),
        )
        .await?;
    let js = jetstream::new(client.clone());
    eventually(
        Duration::from_secs(60),
        "the cluster provisioned (R3)",
        || async { topology::provision(&js, &topology, &subjects).await.ok() },
    )
    .await?;

    let artifacts_url = format!("file://{}", dir.path().join("artifacts").display());
    let spawn = |function: &str, args: &[&str]| {
        let envs = [
            ("FRESHET_NATS_URL", urls.clone()),
            ("FRESHET_TOPOLOGY", topology_path.display().to_string()),
            ("FRESHET_OBJECT_STORE", artifacts_url.clone()),
        ];
        spawn_function(function, args, &envs, dir.path())
    };
    let mut featurize_process = spawn("featurize", &["--label-horizon", "0s"])?;
    let _train = spawn(
        "train",
        &[
            "--publish-every-batches",
            "2",
            "--publish-interval",
            "300ms",
        ],
    )?;
    let _predict = spawn("predict", &[])?;
    let logs = || {
        ["featurize", "train", "predict"]
            .map(|f| {
                let log = std::fs::read_to_string(dir.path().join(format!("{f}.log")))
                    .unwrap_or_default();
                let tail: String = log.lines().rev().take(400).collect::<Vec<_>>().join("\n");
                format!("--- {f} (newest first)\n{tail}")
            })
            .join("\n")
    };

    // A requester asks the predictor all along, counting answers and failures.
    let model = freshet::ids::ModelName::parse("bookstore")?;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    // When requests failed, once the predictor had answered a first time (before that it has
    // no version to serve).
    let failures: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let requester = {
        let (client, stop, answered, failures) = (
            client.clone(),
            stop.clone(),
            answered.clone(),
            failures.clone(),
        );
        let endpoint = freshet::serving::endpoint_single(&subjects, &model);
        tokio::spawn(async move {
            let request = PredictRequest {
                features: Some(vec![0.5; freshet_features::bookstore::FEATURE_NAMES.len()]),
                ..Default::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let reply: Result<freshet::serving::PredictResponse, _> = freshet::serving::call(
                    &client,
                    endpoint.clone(),
                    &request,
                    Duration::from_secs(2),
                )
                .await;
                match reply {
                    Ok(_) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) if answered.load(Ordering::Relaxed) > 0 => {
                        failures.lock().unwrap().push(Instant::now());
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Replay; a third of the way in, node 1 dies; it comes back after two thirds. The producer
    // retries a publish that failed (its id makes a retry count once).
    let events = bookstore_events(ITEMS, ACTIONS as usize, "cl");
    let kill_at = ITEMS + ACTIONS as usize / 3;
    let restart_at = ITEMS + 2 * ACTIONS as usize / 3;
    let mut node_changes = Vec::new();
    for (n, event) in events.iter().enumerate() {
        if n == kill_at {
            nodes[1].kill();
            node_changes.push(Instant::now());
        }
        if n == restart_at {
            nodes[1].start(&routes)?;
            node_changes.push(Instant::now());
        }
        let id = event["id"].as_str().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (subject, message) = event_message(&subjects, event)?;
            let stored = match js.send_publish(subject, message).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if stored {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "event {id} could not be published\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(node_changes.len(), 2, "the node was killed and restarted");

    // Every action became one example, and the live lineage learned each exactly once.
    // The test's own client may have been on the node that came back: retry its requests too.
    let models = eventually(Duration::from_secs(30), "the MODELS bucket", || async {
        js.get_key_value(BUCKET_MODELS).await.ok()
    })
    .await?;
    let pointers = Pointers::new(models);
    let artifacts = ArtifactStore::from_url(&artifacts_url)?;
    let live = eventually(
        Duration::from_secs(120),
        "a live version that learned every example",
        || live_through(&pointers, &artifacts, &model, ACTIONS),
    )
    .await;
    let live = match live {
        Ok(live) => live,
        Err(e) => {
            let info = js
                .get_stream("EVENTS")
                .await?
                .consumer_info("featurize")
                .await;
            let examples_info = js
                .get_stream(STREAM_EXAMPLES)
                .await?
                .info()
                .await
                .map(|i| i.state.messages);
            // What a stall looks like, for whoever investigates it.
            eprintln!(
                "featurize exit status: {:?}\nits consumer: {info:#?}\nEXAMPLES holds {examples_info:?}",
                featurize_process.try_status()
            );
            anyhow::bail!("{e}\n{}", logs());
        }
    };
    let examples = eventually(Duration::from_secs(30), "EXAMPLES' length", || async {
        Some(
            js.get_stream(STREAM_EXAMPLES)
                .await
                .ok()?
                .info()
                .await
                .ok()?
                .state
                .messages,
        )
    })
    .await?;
    assert_eq!(
        examples, ACTIONS,
        "one example per action, none lost, none twice"
    );
    assert_eq!(
        live.metrics.examples_total, ACTIONS,
        "every example trained on exactly once"
    );
    assert_lineage_tiles(&artifacts, &model, &live, ACTIONS).await?;

    // The predictor kept answering: a request failed only in the seconds after the node died
    // or came back (clients on it reconnect elsewhere, leaders are re-elected), and it answers
    // every request now.
    stop.store(true, Ordering::Relaxed);
    requester.await?;
    let answered = answered.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "predictor during the replay: {answered} answered, {} failed",
        failures.len()
    );
    assert!(answered > 0);
    let failover = Duration::from_secs(15);
    for failure in &failures {
        assert!(
            node_changes
                .iter()
                .any(|&change| *failure >= change && *failure <= change + failover),
            "a request failed {:?} after the kill, outside any failover window\n{}",
            failure.duration_since(node_changes[0]),
            logs()
        );
    }
    let endpoint = freshet::serving::endpoint_single(&subjects, &model);
    for _ in 0..20 {
        let reply: freshet::serving::PredictResponse = freshet::serving::call(
            &client,
            endpoint.clone(),
            &PredictRequest {
                features: Some(vec![0.5; freshet_features::bookstore::FEATURE_NAMES.len()]),
                ..Default::default()
            },
            Duration::from_secs(2),
        )
        .await?;
        assert!(reply.version >= 1);
    }
    Ok(())
}
