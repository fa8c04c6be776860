//! The pipeline on a 3-node JetStream cluster (every stream, bucket and consumer replicated 3,
//! infra/topology-cluster.toml) through three faults during a replay:
//!
//! - one node SIGKILLed a third of the way in and restarted at two thirds;
//! - a rolling restart: each node in turn killed, started again and waited for until healthy,
//!   as an operator upgrades a cluster, while events keep coming;
//! - a network partition: one node cut off from the other two for some seconds while it keeps
//!   running (every route crosses a [`Link`], so the node is isolated on loopback, with no second
//!   host), its clients still connected to it.
//!
//! Each ends the same way: no event is lost (every action becomes exactly one example), no
//! example is trained twice (the live lineage's learned ranges tile the stream exactly), and
//! the predictor keeps answering: with two of three nodes up the quorum holds, so a request may
//! fail only in the seconds after a fault, while clients move off a node and leaders are
//! re-elected. A failed run keeps the servers' and functions' logs and says where.
//!
//! Run by `make cluster`, not `make test`, until they pass 50 runs in a row. They found a loss
//! of examples (in 2 of 12 rolling restarts, 49 events; in 1 of 15 partitions, 11): a batch whose
//! examples failed to publish while the client's server was rejoining was nak'ed, later events
//! were admitted without asking the stream (taken to follow the mark in delivery order; how a
//! consumer leader's failover numbers deliveries is the likely way), and the high-water marks
//! passed the failed events, which were then acknowledged as already handled, with no example. featurize and train now check against the
//! stream (asking its leader) after any failed or deferred batch; since then 10 of 10 rolling
//! restarts and 6 of 6 partitions kept every example. Twelve more runs of all three later the
//! same day: every node loss (12) and partition (12) kept every example, but 3 of 12 rolling
//! restarts lost examples again (1, 1 and 49 of 1,200; the consumer acknowledged all 1,220
//! events, and DEAD_LETTER was empty). Each lost run of events began at the first event of a
//! batch whose examples failed to publish ("no stream found" or a timed-out acknowledgement
//! while EXAMPLES changed leader), retried up to four times and then acknowledged with no further
//! attempt logged, most likely as already handled (`sequence <= mark`). Two ways the mark can pass
//! them are still to rule out: the order check stepping over messages at or below the
//! consumer's acknowledgement floor as read during a consumer leader's change, and the stream
//! answering "no message after the mark" while its leader changes.

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
use freshet_tests::links::Link;
use freshet_tests::{
    assert_lineage_tiles, bookstore_events, event_message, eventually, live_through, spawn_function,
};

const NODES: usize = 3;
const ITEMS: usize = 20;
const ACTIONS: u64 = 1200;
/// How long after a fault a request may fail.
const FAILOVER: Duration = Duration::from_secs(15);

/// One cluster node, its route traffic through its own [`Link`]; SIGKILLed (by its pid) when
/// dropped.
struct Node {
    name: String,
    port: u16,
    monitor_port: u16,
    cluster_port: u16,
    link: Link,
    store: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, routes: &str) -> anyhow::Result<()> {
        let child = Command::new(find_nats_server()?)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .args(["-n", &self.name, "--cluster_name", "freshet"])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
            ])
            // Other nodes reach this one only through its link, which can cut it off.
            .args([
                "--cluster_advertise",
                &format!("127.0.0.1:{}", self.link.port()),
            ])
            .args(["--routes", routes])
            .args(["-js", "-sd"])
            .arg(&self.store)
            // Its log, kept with the functions' when a run fails.
            .arg("-l")
            .arg(self.store.with_extension("log"))
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

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

/// The nodes, shared by the replay and the faults that run beside it.
#[derive(Clone)]
struct Cluster {
    nodes: Arc<Mutex<Vec<Node>>>,
    /// Each node's `--routes`.
    routes: Vec<String>,
}

impl Cluster {
    async fn start(dir: &Path) -> anyhow::Result<Cluster> {
        let mut nodes = Vec::new();
        for n in 0..NODES {
            let cluster_port = free_port()?;
            nodes.push(Node {
                name: format!("n{n}"),
                port: free_port()?,
                monitor_port: free_port()?,
                cluster_port,
                link: Link::start(cluster_port).await?,
                store: dir.join(format!("n{n}")),
                child: None,
            });
        }
        // Each node is told of the others' links (not its own: it would only find itself).
        let routes: Vec<String> = (0..NODES)
            .map(|me| {
                nodes
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != me)
                    .map(|(_, node)| format!("nats://127.0.0.1:{}", node.link.port()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        for (node, routes) in nodes.iter_mut().zip(&routes) {
            node.start(routes)?;
        }
        Ok(Cluster {
            nodes: Arc::new(Mutex::new(nodes)),
            routes,
        })
    }

    fn urls(&self) -> String {
        let nodes = self.nodes.lock().unwrap();
        nodes.iter().map(Node::url).collect::<Vec<_>>().join(",")
    }

    fn kill(&self, n: usize) {
        self.nodes.lock().unwrap()[n].kill();
    }

    fn start_node(&self, n: usize) -> anyhow::Result<()> {
        self.nodes.lock().unwrap()[n].start(&self.routes[n])
    }

    /// Waits until node `n` says it is healthy: JetStream on and every stream and consumer
    /// replica on it current (nats-server's `/healthz`).
    async fn healthy(&self, n: usize) -> anyhow::Result<()> {
        let port = self.nodes.lock().unwrap()[n].monitor_port;
        let url = format!("http://127.0.0.1:{port}/healthz");
        eventually(Duration::from_secs(60), "the node healthy", || async {
            let response = reqwest::get(&url).await.ok()?;
            response.status().is_success().then_some(())
        })
        .await
    }

    /// Node `n`'s routes to other nodes (nats-server's `/routez`): each one's id and how long it
    /// has been up.
    async fn routes_of(&self, n: usize) -> Option<serde_json::Value> {
        let port = self.nodes.lock().unwrap()[n].monitor_port;
        reqwest::get(format!("http://127.0.0.1:{port}/routez"))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Whether node `n` has a route that has lasted a second or more: an isolated node's
    /// attempts to reconnect are closed at once, so it has only fleeting ones.
    async fn has_lasting_route(&self, n: usize) -> Option<bool> {
        let routez = self.routes_of(n).await?;
        let routes = routez["routes"].as_array()?;
        Some(routes.iter().any(|route| {
            let uptime = route["uptime"].as_str().unwrap_or_default();
            // nats-server writes durations as "0s", "1s", "2m3s", "1h2m3s".
            uptime != "0s" && !uptime.ends_with("ms") && !uptime.ends_with("µs")
        }))
    }

    /// Cuts node `n` off from the others on every link: its routes close, and it keeps running.
    fn isolate(&self, n: usize) {
        let nodes = self.nodes.lock().unwrap();
        if let Some(pid) = nodes[n].pid() {
            for node in nodes.iter() {
                node.link.isolate(pid);
            }
        }
    }

    fn heal(&self) {
        for node in self.nodes.lock().unwrap().iter() {
            node.link.heal();
        }
    }
}

/// What happens to the cluster during a replay, started when the replay reaches an event.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL a node (it stays down until [`Fault::Start`]).
    Kill(usize),
    Start(usize),
    /// Every node in turn: killed, started again a second later, and waited for until healthy.
    RollingRestart,
    /// A node cut off from the others for a while, then reconnected.
    Partition(usize, Duration),
}

/// When a fault changed the cluster, for judging failed requests.
type Changes = Arc<Mutex<Vec<Instant>>>;

impl Fault {
    async fn run(self, cluster: Cluster, changes: Changes) -> anyhow::Result<()> {
        let changed = || changes.lock().unwrap().push(Instant::now());
        match self {
            Fault::Kill(n) => {
                cluster.kill(n);
                changed();
            }
            Fault::Start(n) => {
                cluster.start_node(n)?;
                changed();
            }
            Fault::RollingRestart => {
                for n in 0..NODES {
                    cluster.kill(n);
                    changed();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    cluster.start_node(n)?;
                    changed();
                    cluster.healthy(n).await?;
                }
            }
            Fault::Partition(n, lasting) => {
                cluster.isolate(n);
                changed();
                // The partition is real: the node keeps no route to the others.
                let cut = eventually(
                    Duration::from_secs(10),
                    "the node without a lasting route",
                    || async { (!cluster.has_lasting_route(n).await?).then_some(()) },
                )
                .await;
                tokio::time::sleep(lasting).await;
                cluster.heal();
                changed();
                if cut.is_err() {
                    anyhow::bail!(
                        "node {n} kept a route while cut off: {:#}",
                        cluster.routes_of(n).await.unwrap_or_default()
                    );
                }
                eventually(
                    Duration::from_secs(30),
                    "the node's routes back",
                    || async { cluster.has_lasting_route(n).await?.then_some(()) },
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// How a scenario replays and what happens meanwhile.
struct Scenario {
    /// Faults, each started when the replay reaches the given share of its actions (and after
    /// the previous fault finished).
    faults: Vec<(f64, Fault)>,
    /// Publish at most this many events a second, so that slow faults happen during the replay.
    pace: Option<f64>,
}

/// One cluster at a time: three nodes and three functions already fill a small machine.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir()?;
    let outcome = replay_through_faults(dir.path(), scenario).await;
    if outcome.is_err() {
        // The servers' and functions' logs, for whoever investigates the failure.
        eprintln!("logs kept in {}", dir.keep().display());
    }
    outcome
}

async fn replay_through_faults(dir: &Path, scenario: Scenario) -> anyhow::Result<()> {
    let cluster = Cluster::start(dir).await?;
    let urls = cluster.urls();
    let topology_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/topology-cluster.toml"),
    )?
    .replace("ack_wait = \"30s\"", "ack_wait = \"3s\"");
    let topology_path = dir.join("topology.toml");
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

    let artifacts_url = format!("file://{}", dir.join("artifacts").display());
    let spawn = |function: &str, args: &[&str]| {
        let envs = [
            ("FRESHET_NATS_URL", urls.clone()),
            ("FRESHET_TOPOLOGY", topology_path.display().to_string()),
            ("FRESHET_OBJECT_STORE", artifacts_url.clone()),
        ];
        spawn_function(function, args, &envs, dir)
    };
    let featurize_process = spawn("featurize", &["--label-horizon", "0s"])?;
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
                let log = std::fs::read_to_string(dir.join(format!("{f}.log"))).unwrap_or_default();
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

    // Replay, starting each fault when its share of the actions is published; the producer
    // retries a publish that failed (its id makes a retry count once).
    let events = bookstore_events(ITEMS, ACTIONS as usize, "cl");
    let changes: Changes = Arc::default();
    let mut pending = scenario.faults.iter().copied().peekable();
    let mut running: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    let mut faults_started = 0;
    let started = Instant::now();
    for (n, event) in events.iter().enumerate() {
        let share = n.saturating_sub(ITEMS) as f64 / ACTIONS as f64;
        if n >= ITEMS
            && pending.peek().is_some_and(|(at, _)| share >= *at)
            && running.as_ref().is_none_or(|task| task.is_finished())
        {
            if let Some(task) = running.take() {
                task.await??;
            }
            let (_, fault) = pending.next().unwrap();
            running = Some(tokio::spawn(fault.run(cluster.clone(), changes.clone())));
            faults_started += 1;
        }
        if let Some(pace) = scenario.pace {
            let due = started + Duration::from_secs_f64(n as f64 / pace);
            tokio::time::sleep_until(due.into()).await;
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
    let replay_ended = Instant::now();
    if let Some(task) = running.take() {
        task.await??;
    }
    anyhow::ensure!(
        faults_started == scenario.faults.len(),
        "only {faults_started} of {} faults started during the replay",
        scenario.faults.len()
    );
    let changes = changes.lock().unwrap().clone();
    anyhow::ensure!(
        changes.iter().all(|at| *at <= replay_ended),
        "a fault ended after the replay: slow the replay down (pace)"
    );

    // Every action became one example, and the live lineage learned each exactly once.
    // The test's own client may have been on a node that went away: retry its requests too.
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
                "featurize's pid now: {:?}\nits consumer: {info:#?}\nEXAMPLES holds {examples_info:?}",
                featurize_process.pid()
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

    // The predictor kept answering: a request failed only in the seconds after a fault, and
    // it answers every request now.
    stop.store(true, Ordering::Relaxed);
    requester.await?;
    let answered = answered.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "predictor during the replay: {answered} answered, {} failed; featurize restarted {} times after losing its lease",
        failures.len(),
        featurize_process.restarts()
    );
    assert!(answered > 0);
    for failure in &failures {
        assert!(
            changes
                .iter()
                .any(|&change| *failure >= change && *failure <= change + FAILOVER),
            "a request failed {:?} after the first fault, outside any failover window\n{}",
            failure.duration_since(changes[0]),
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

#[ignore = "not yet 50 clean runs in a row since the loss of examples it found was fixed; run with make cluster"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_mid_replay_loses_and_repeats_nothing() -> anyhow::Result<()> {
    run(Scenario {
        faults: vec![(1.0 / 3.0, Fault::Kill(1)), (2.0 / 3.0, Fault::Start(1))],
        pace: None,
    })
    .await
}

#[ignore = "not yet 50 clean runs in a row since the loss of examples it found was fixed; run with make cluster"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_mid_replay_loses_and_repeats_nothing() -> anyhow::Result<()> {
    run(Scenario {
        faults: vec![(0.1, Fault::RollingRestart)],
        // About 40 s of replay: three restarts, each waited for until healthy, fit in it.
        pace: Some(25.0),
    })
    .await
}

#[ignore = "not yet 50 clean runs in a row since the loss of examples it found was fixed; run with make cluster"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_loses_and_repeats_nothing() -> anyhow::Result<()> {
    run(Scenario {
        // Longer than a lease lives (10 s): a function on the cut-off node loses its lease,
        // exits and is started again, as a deployment restarts it.
        faults: vec![(0.2, Fault::Partition(1, Duration::from_secs(12)))],
        pace: Some(50.0),
    })
    .await
}
