//! The pipeline benchmark: events through featurize → train with a predictor live, beside the
//! JetStream floors and the Python peer measured in the same run.
//!
//! - **Throughput**: bookstore actions published pipelined as fast as JetStream acknowledges
//!   them; the clock runs from the first publish until the predictor answers with a version that
//!   learned the last of them.
//! - **Freshness**: the time from publishing an event to the first predictor reply served by a
//!   version that learned from it. A prober asks the predictor about every millisecond and keeps
//!   each reply's version; each version's manifest says up to which EXAMPLES sequence it learned,
//!   and each event's example (found by its `source_event`) has its sequence. So an event's
//!   freshness is the first reply whose version's high-water mark covers its example, minus the
//!   instant the event was published. Measured at full speed (mostly queueing), at fixed offered
//!   loads and near the most the pipeline sustains.
//! - **Floors**: publish with async acknowledgements, and two hops (EVENTS → republish to
//!   EXAMPLES → a consumer acknowledging), the I/O skeleton of featurize → train.
//! - **Peer**: `tools/peer/` (nats-py, River `learn_one` per event, a pickle every 1,000 events
//!   announced on a KV key, a Python predictor watching it), on the same events, probed the same
//!   way (its replies carry the last stream sequence their model learned).
//!
//! Every scenario runs on a fresh nats-server, so no stream's history slows the next.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use freshet::subjects::{STREAM_EVENTS, STREAM_EXAMPLES};
use freshet_model::store::ArtifactStore;
use freshet_tests::{Stack, bookstore_action, bookstore_events, event_message};
use futures::StreamExt;
use serde::Serialize;

/// Books in the catalogue published before the timed actions.
const ITEMS: usize = 200;
/// Unacknowledged publishes in flight at once.
const PUBLISH_WINDOW: usize = 512;
/// Actions published (and learned) before the clock starts, so every process is past start-up.
const WARM_UP: usize = 1_000;

/// How long featurize and train each let a batch gather, and how soon after its oldest unpublished
/// example was stored train publishes a version: together at most about 20 ms of an event's
/// freshness. Tuned for freshness: featurize's own default wait (20 ms) lets more of an entity's
/// events share one state write, for less CPU per event and longer freshness.
const BATCH_WAIT: &str = "5ms";
const PUBLISH_INTERVAL: &str = "10ms";

/// Pause between two probes of a predictor.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// How freshet runs in one scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Setup {
    /// featurize processes, the partitions split evenly between them (1, 2 or 4).
    pub replicas: usize,
    /// train's batch size.
    pub batch: usize,
}

impl Setup {
    pub const DEFAULT: Setup = Setup {
        replicas: 1,
        batch: 256,
    };
}

/// One measured stretch: how many events, at what rate, and their freshness.
#[derive(Debug, Clone, Serialize)]
pub struct Stretch {
    /// Offered events/s, or `None` for as fast as JetStream takes them.
    pub offered_per_second: Option<f64>,
    pub events: usize,
    /// Events/s from the first publish until a reply came from a version that learned them all.
    pub events_per_second: f64,
    pub freshness_p50_ms: f64,
    pub freshness_p99_ms: f64,
    pub freshness_max_ms: f64,
    /// Where freshet's freshness went, stage by stage (the peer has no stages to tell apart).
    pub stages: Option<Stages>,
    /// Distinct versions the prober was served while this stretch was measured.
    pub versions_served: usize,
    /// CPU time each process spent per event over the stretch, µs (a measure that the other
    /// loads of a shared machine do not move, unlike rates).
    pub cpu_us_per_event: BTreeMap<String, f64>,
    /// Messages each stream stored per event over the stretch (KV buckets are streams too):
    /// the server's work beside the events and examples themselves.
    pub stored_per_event: BTreeMap<String, f64>,
}

/// The median and 99th percentile of one stage's share of freshness.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StageLatency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl StageLatency {
    fn of(mut delays: Vec<Duration>) -> StageLatency {
        delays.sort();
        StageLatency {
            p50_ms: millis(&delays, 0.5),
            p99_ms: millis(&delays, 0.99),
        }
    }
}

/// An event's freshness split at the instants the pipeline left a trace of, read from the
/// machine's one wall clock (the server stamps stored messages, train its manifests):
/// - **featurize**: published → its example stored in EXAMPLES;
/// - **train**: example stored → the version that first answered for it written (the batch
///   gathering, training, and train's publish interval);
/// - **serve**: that version written → its first reply (pointer compare-and-set, the
///   predictor's watch, verified load and swap, and at most one probe interval).
///
/// The three add up to the event's freshness; their percentiles, each taken alone, do not.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stages {
    pub featurize: StageLatency,
    pub train: StageLatency,
    pub serve: StageLatency,
}

/// Each stream's last sequence: how many messages it has stored so far.
async fn stored(js: &jetstream::Context) -> anyhow::Result<BTreeMap<String, u64>> {
    // One listing carries every stream's state: no request per stream.
    let mut streams = js.streams();
    let mut stored = BTreeMap::new();
    while let Some(info) = streams.next().await {
        let info = info?;
        stored.insert(info.config.name, info.state.last_sequence);
    }
    Ok(stored)
}

/// Messages stored per event by each stream between two readings.
fn stored_per_event(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    events: usize,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, end)| {
            let start = before.get(name).copied().unwrap_or(0);
            (name.clone(), (end - start) as f64 / events.max(1) as f64)
        })
        .filter(|(_, per_event)| *per_event > 0.0)
        .collect()
}

/// The processes of a scenario, by role, for CPU accounting.
#[derive(Debug, Clone, Default)]
struct Processes(Vec<(String, u32)>);

impl Processes {
    /// CPU seconds (user + system) so far, summed by role; this benchmark's own process (the
    /// publisher and the prober) is "bench".
    fn cpu_seconds(&self) -> BTreeMap<String, f64> {
        let mut seconds = BTreeMap::new();
        let own = std::process::id();
        for (role, pid) in self
            .0
            .iter()
            .map(|(r, p)| (r.as_str(), *p))
            .chain([("bench", own)])
        {
            *seconds.entry(role.to_string()).or_insert(0.0) += cpu_seconds(pid).unwrap_or(0.0);
        }
        seconds
    }
}

/// CPU seconds a process has used, from /proc/<pid>/stat (utime and stime, in clock ticks).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space whatever the kernel's HZ.
    Some(ticks / 100.0)
}

/// CPU µs per event by role between two readings.
fn cpu_per_event(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    events: usize,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(role, end)| {
            let start = before.get(role).copied().unwrap_or(0.0);
            (role.clone(), (end - start) * 1e6 / events.max(1) as f64)
        })
        .collect()
}

/// When each event was published and its sequence in the stream that the measured model's
/// progress is counted in (EXAMPLES for freshet, EVENTS for the peer).
struct Sent {
    id: String,
    at: Instant,
    /// `at` on the wall clock, which the server's and train's timestamps are read on.
    wall: SystemTime,
    events_sequence: u64,
}

/// A predictor's answer: when it arrived, up to which sequence its model had learned, and when
/// that version was written (freshet's manifests say; the peer's pickles do not).
#[derive(Debug, Clone, Copy)]
struct Probe {
    at: Instant,
    wall: SystemTime,
    covered: u64,
    written: Option<SystemTime>,
}

/// What a probe's reply said: the sequence its model covers, and when that version was written.
type Answer = (u64, Option<SystemTime>);

/// An event ready to publish: its id, subject and message.
type Outgoing = (String, String, jetstream::message::PublishMessage);

/// Encodes `events` for [`publish`]. Done before a measurement starts, as a producer has its
/// events' bytes at hand: encoding (and checking) them while publishing would take CPU from the
/// processes measured and count in the publisher's.
fn encode(stack: &Stack, events: &[serde_json::Value]) -> anyhow::Result<Vec<Outgoing>> {
    events
        .iter()
        .map(|event| {
            let id = event["id"].as_str().unwrap_or_default().to_string();
            event_message(&stack.subjects, event).map(|(subject, message)| (id, subject, message))
        })
        .collect()
}

/// Publishes `messages` pipelined (at most `rate` per second if given), recording when each was
/// sent and its EVENTS sequence.
async fn publish(
    stack: &Stack,
    messages: Vec<Outgoing>,
    rate: Option<f64>,
) -> anyhow::Result<Vec<Sent>> {
    let started = Instant::now();
    let mut sent = Vec::with_capacity(messages.len());
    let mut pending = VecDeque::new();
    for (i, (id, subject, message)) in messages.into_iter().enumerate() {
        if let Some(rate) = rate {
            tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into())
                .await;
        }
        let (at, wall) = (Instant::now(), SystemTime::now());
        let ack = stack.js.send_publish(subject, message).await?;
        pending.push_back((id, (at, wall), ack));
        if pending.len() >= PUBLISH_WINDOW {
            let (id, (at, wall), ack) = pending.pop_front().expect("the window is full");
            sent.push(Sent {
                id,
                at,
                wall,
                events_sequence: ack.await?.sequence,
            });
        }
    }
    for (id, (at, wall), ack) in pending {
        sent.push(Sent {
            id,
            at,
            wall,
            events_sequence: ack.await?.sequence,
        });
    }
    Ok(sent)
}

/// Each event beside the first probe whose reply covered it (events no reply covered are left
/// out). `sequence_of` gives the sequence the probes' coverage is counted in.
fn first_replies<'a>(
    sent: &'a [Sent],
    probes: &'a [Probe],
    sequence_of: impl Fn(&Sent) -> u64,
) -> Vec<(&'a Sent, &'a Probe)> {
    // The most any reply so far had covered: a rollback (a lower reply) never un-learns an event.
    let mut most = Vec::with_capacity(probes.len());
    let mut high = 0;
    for probe in probes {
        high = high.max(probe.covered);
        most.push(high);
    }
    sent.iter()
        .filter_map(|event| {
            let sequence = sequence_of(event);
            let first = most.partition_point(|covered| *covered < sequence);
            probes.get(first).map(|probe| (event, probe))
        })
        .collect()
}

/// Each event's freshness, sorted: its first covering reply minus its publication.
fn freshness(replies: &[(&Sent, &Probe)]) -> Vec<Duration> {
    let mut delays: Vec<Duration> = replies
        .iter()
        .map(|(event, probe)| probe.at.saturating_duration_since(event.at))
        .collect();
    delays.sort();
    delays
}

/// The time from `from` to `to` on the wall clock; zero if a clock step put them in reverse.
fn between(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

/// Freshness split into stages, from each example's storing instant (by event id) and the
/// writing instant of each first reply's version; `None` if the replies do not say when.
fn stages(replies: &[(&Sent, &Probe)], examples: &HashMap<String, Example>) -> Option<Stages> {
    let mut split = (Vec::new(), Vec::new(), Vec::new());
    for (event, probe) in replies {
        let (example, written) = (examples.get(&event.id)?, probe.written?);
        split.0.push(between(event.wall, example.stored));
        split.1.push(between(example.stored, written));
        split.2.push(between(written, probe.wall));
    }
    Some(Stages {
        featurize: StageLatency::of(split.0),
        train: StageLatency::of(split.1),
        serve: StageLatency::of(split.2),
    })
}

fn millis(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

/// Waits until the newest probe covers `sequence`.
async fn covered(
    probes: &tokio::sync::watch::Receiver<u64>,
    sequence: u64,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut probes = probes.clone();
    loop {
        if *probes.borrow_and_update() >= sequence {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not learned in {timeout:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), probes.changed()).await;
    }
}

/// One stretch's figures; `examples`, when given, splits its freshness into stages.
fn stretch(
    measured: &Measured,
    probes: &[Probe],
    sequence_of: impl Fn(&Sent) -> u64,
    examples: Option<&HashMap<String, Example>>,
) -> Stretch {
    let Measured {
        offered,
        sent,
        done,
        cpu,
        stored,
    } = measured;
    let (offered, done) = (*offered, *done);
    let replies = first_replies(sent, probes, sequence_of);
    let delays = freshness(&replies);
    let first = sent.first().map_or(done, |s| s.at);
    // This stretch's probes only: the later stretches on the same stack have their own.
    let window = probes.iter().filter(|p| p.at >= first && p.at <= done);
    let mut served: Vec<u64> = window.map(|p| p.covered).collect();
    served.dedup();
    Stretch {
        offered_per_second: offered,
        events: sent.len(),
        events_per_second: sent.len() as f64 / (done - first).as_secs_f64(),
        freshness_p50_ms: millis(&delays, 0.5),
        freshness_p99_ms: millis(&delays, 0.99),
        freshness_max_ms: delays.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        stages: examples.and_then(|examples| stages(&replies, examples)),
        versions_served: served.len(),
        cpu_us_per_event: cpu.clone(),
        stored_per_event: stored.clone(),
    }
}

/// One stretch as it was run, before the probes are matched to it.
struct Measured {
    offered: Option<f64>,
    sent: Vec<Sent>,
    done: Instant,
    cpu: BTreeMap<String, f64>,
    stored: BTreeMap<String, f64>,
}

/// A predictor under measurement: a prober asking it, and the coverage of its newest reply.
struct Prober {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Probe>>,
    newest: tokio::sync::watch::Receiver<u64>,
}

impl Prober {
    /// Starts probing with `ask`, which returns what the reply's model had learned up to and
    /// when it was written.
    fn start<F, Fut>(ask: F) -> Prober
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Option<Answer>> + Send,
    {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (report, newest) = tokio::sync::watch::channel(0);
        // Asks every PROBE_INTERVAL until stopped, keeping what each reply covered.
        let task = tokio::spawn(async move {
            let mut probes = Vec::new();
            while !*stopped.borrow() {
                if let Some((covered, written)) = ask().await {
                    report.send_modify(|c| *c = (*c).max(covered));
                    probes.push(Probe {
                        at: Instant::now(),
                        wall: SystemTime::now(),
                        covered,
                        written,
                    });
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
            probes
        });
        Prober { stop, task, newest }
    }

    async fn finish(self) -> anyhow::Result<Vec<Probe>> {
        let _ = self.stop.send(true);
        Ok(self.task.await?)
    }
}

/// freshet's prober: asks the bookstore predictor and looks up each version's high-water mark
/// and writing instant in its manifest.
fn freshet_prober(stack: &Stack) -> anyhow::Result<Prober> {
    let client = stack.client.clone();
    let subject = freshet::serving::endpoint_single(&stack.subjects, &"bookstore".parse()?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let model: freshet::ids::ModelName = "bookstore".parse()?;
    let request = freshet_tests::bookstore_row_request();
    let marks = std::sync::Arc::new(tokio::sync::Mutex::new(HashMap::<u64, Answer>::new()));
    Ok(Prober::start(move || {
        let (client, subject, artifacts, model, request, marks) = (
            client.clone(),
            subject.clone(),
            artifacts.clone(),
            model.clone(),
            request.clone(),
            marks.clone(),
        );
        async move {
            let reply: freshet::serving::PredictResponse =
                freshet::serving::call(&client, subject, &request, Duration::from_secs(5))
                    .await
                    .ok()?;
            let mut marks = marks.lock().await;
            if let Some(answer) = marks.get(&reply.version) {
                return Some(*answer);
            }
            let manifest = artifacts.manifest(&model, reply.version).await.ok()?;
            let answer = (
                manifest.high_water_mark,
                Some(SystemTime::from(manifest.created_at)),
            );
            marks.insert(reply.version, answer);
            Some(answer)
        }
    }))
}

/// A source event's example in EXAMPLES.
struct Example {
    sequence: u64,
    /// When the server stored it.
    stored: SystemTime,
}

/// Each source event's example, by the event's id.
async fn examples(stack: &Stack, count: usize) -> anyhow::Result<HashMap<String, Example>> {
    let stored = stack.read_stream(STREAM_EXAMPLES, count).await?;
    Ok(stored
        .into_iter()
        .filter_map(|message| {
            let record = message.json();
            Some((
                record["source_event"].as_str()?.to_string(),
                Example {
                    sequence: message.sequence,
                    stored: message.stored,
                },
            ))
        })
        .collect())
}

/// A fresh server with featurize, train and predict running as `setup` says, the catalogue and
/// [`WARM_UP`] actions learned and served, and a prober asking the predictor.
async fn freshet_stack(setup: Setup) -> anyhow::Result<(Stack, Prober, Processes)> {
    let mut stack = Stack::start().await?;
    let mut roles = Vec::new();
    // One replica runs as featurize runs by default: one durable over every partition, so it
    // caches the item and category states all partitions write.
    let partitions: &[Option<&str>] = match setup.replicas {
        1 => &[None],
        2 => &[Some("0,1"), Some("2,3")],
        4 => &[Some("0"), Some("1"), Some("2"), Some("3")],
        n => anyhow::bail!("{n} featurize replicas: 1, 2 or 4 split the 4 partitions evenly"),
    };
    for partition in partitions {
        roles.push("featurize");
        let mut args = vec![
            "--label-horizon",
            "0s",
            "--batch-wait",
            BATCH_WAIT,
            "--log",
            "warn",
        ];
        if let Some(partition) = partition {
            args.extend(["--partition", partition]);
        }
        stack.spawn("featurize", &args)?;
    }
    let batch = setup.batch.to_string();
    roles.push("train");
    stack.spawn(
        "train",
        &[
            "--batch-size",
            &batch,
            "--batch-wait",
            BATCH_WAIT,
            "--publish-every-batches",
            "4",
            "--publish-interval",
            PUBLISH_INTERVAL,
            "--keep-versions",
            "50",
            "--log",
            "warn",
        ],
    )?;
    roles.push("predict");
    stack.spawn("predict", &["--log", "warn"])?;
    let mut processes = vec![("nats-server".to_string(), stack.nats.pid().unwrap_or(0))];
    for (index, role) in roles.into_iter().enumerate() {
        processes.push((role.to_string(), stack.process(index).pid().unwrap_or(0)));
    }
    let events = bookstore_events(ITEMS, WARM_UP, "warm");
    let (catalogue, actions) = events.split_at(ITEMS);
    publish(&stack, encode(&stack, catalogue)?, None).await?;
    stack.await_items(ITEMS).await?;
    publish(&stack, encode(&stack, actions)?, None).await?;
    let prober = freshet_prober(&stack)?;
    covered(
        &prober.newest,
        WARM_UP as u64,
        Duration::from_secs(120),
        "the warm-up actions",
    )
    .await?;
    Ok((stack, prober, Processes(processes)))
}

/// Publishes `actions` (numbered from `first`) at `rate` through a running freshet and measures
/// the stretch.
async fn freshet_stretch(
    stack: &Stack,
    (prober, processes): (&Prober, &Processes),
    first: usize,
    actions: usize,
    rate: Option<f64>,
) -> anyhow::Result<Measured> {
    let events: Vec<_> = (first..first + actions)
        .map(|n| bookstore_action(n, ITEMS, "bench"))
        .collect();
    let messages = encode(stack, &events)?;
    let cpu = processes.cpu_seconds();
    let streams = stored(&stack.js).await?;
    let sent = publish(stack, messages, rate).await?;
    let examples_before = (WARM_UP + first) as u64;
    let total = examples_before + actions as u64;
    // Every action's example is in EXAMPLES in order of its arrival; the last sequence is reached
    // once all are, and a reply covering it covers them all.
    crate::featurize::examples_reach(stack, total).await?;
    let last = stack.last_sequence(STREAM_EXAMPLES).await?;
    let done = covered(
        &prober.newest,
        last,
        Duration::from_secs(600),
        "the actions",
    )
    .await?;
    Ok(Measured {
        offered: rate,
        cpu: cpu_per_event(&cpu, &processes.cpu_seconds(), actions),
        stored: stored_per_event(&streams, &stored(&stack.js).await?, actions),
        sent,
        done,
    })
}

/// An offered load: a fixed rate, or a share of the rate this run measured at full speed.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    PerSecond(f64),
    ShareOfFullSpeed(f64),
}

/// freshet at full speed with `actions`, then at each offered load for `seconds`, on one fresh
/// stack.
pub async fn freshet(
    setup: Setup,
    actions: usize,
    loads: &[Load],
    seconds: f64,
) -> anyhow::Result<Vec<Stretch>> {
    let (stack, prober, processes) = freshet_stack(setup).await?;
    let running = (&prober, &processes);
    let full = freshet_stretch(&stack, running, 0, actions, None).await?;
    let full_speed = actions as f64 / (full.done - full.sent[0].at).as_secs_f64();
    let mut measured = vec![full];
    let mut first = actions;
    for load in loads {
        let rate = match *load {
            Load::PerSecond(rate) => rate,
            Load::ShareOfFullSpeed(share) => (full_speed * share).round(),
        };
        let count = ((rate * seconds) as usize).max(1);
        measured.push(freshet_stretch(&stack, running, first, count, Some(rate)).await?);
        first += count;
    }
    let probes = prober.finish().await?;
    let examples = examples(&stack, WARM_UP + first).await?;
    let missing = measured
        .iter()
        .flat_map(|m| &m.sent)
        .filter(|s| !examples.contains_key(&s.id))
        .count();
    anyhow::ensure!(missing == 0, "{missing} published actions have no example");
    let sequence_of = |sent: &Sent| examples[&sent.id].sequence;
    Ok(measured
        .iter()
        .map(|m| stretch(m, &probes, sequence_of, Some(&examples)))
        .collect())
}

/// The floors, each on a fresh server: publishing with async acknowledgements, and two hops.
#[derive(Debug, Clone, Serialize)]
pub struct Floors {
    pub publish_per_second: f64,
    pub two_hops_per_second: f64,
    /// CPU per event of the two hops: the server, and this process (publisher and both hops).
    pub two_hops_cpu_us_per_event: BTreeMap<String, f64>,
}

pub async fn floors(actions: usize) -> anyhow::Result<Floors> {
    let events = bookstore_events(ITEMS, actions, "floor");
    let stack = Stack::start().await?;
    let sent = publish(&stack, encode(&stack, &events)?, None).await?;
    let publish_per_second = events.len() as f64 / since_first(&sent).as_secs_f64();
    drop(stack);

    let stack = Stack::start().await?;
    let target = stack.subjects.examples(&"floor".parse()?);
    let first_hop = relay(
        &stack.js,
        STREAM_EVENTS,
        None,
        Some(target.clone()),
        events.len(),
    )
    .await?;
    let second_hop = relay(&stack.js, STREAM_EXAMPLES, Some(target), None, events.len()).await?;
    let messages = encode(&stack, &events)?;
    let processes = Processes(vec![("nats-server".into(), stack.nats.pid().unwrap_or(0))]);
    let cpu = processes.cpu_seconds();
    let sent = publish(&stack, messages, None).await?;
    first_hop.await??;
    second_hop.await??;
    Ok(Floors {
        publish_per_second,
        two_hops_per_second: events.len() as f64 / since_first(&sent).as_secs_f64(),
        two_hops_cpu_us_per_event: cpu_per_event(&cpu, &processes.cpu_seconds(), events.len()),
    })
}

/// The time since the first of `sent` was published.
fn since_first(sent: &[Sent]) -> Duration {
    sent.first()
        .map_or(Duration::ZERO, |first| first.at.elapsed())
}

/// A bare hop: pulls `count` messages of `stream` in batches of 1024 (featurize's default batch
/// size, so both pull alike), publishes each to `to` if given (all acknowledged), then
/// acknowledges the batch.
pub async fn relay(
    js: &jetstream::Context,
    stream: &str,
    filter: Option<String>,
    to: Option<String>,
    count: usize,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some(format!("floor-{}", stream.to_lowercase())),
            filter_subject: filter.unwrap_or_default(),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let js = js.clone();
    Ok(tokio::spawn(async move {
        let mut relayed = 0;
        while relayed < count {
            let mut batch = consumer
                .batch()
                .max_messages(1024)
                .expires(Duration::from_millis(100))
                .messages()
                .await?;
            let (mut held, mut acks) = (Vec::new(), Vec::new());
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
                if let Some(to) = &to {
                    acks.push(js.publish(to.clone(), message.payload.clone()).await?);
                }
                held.push(message);
            }
            for ack in acks {
                ack.await?;
            }
            for message in &held {
                message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            relayed += held.len();
        }
        anyhow::Ok(())
    }))
}

/// The Python peer's two processes; killed, by pid, when dropped.
struct Peer(Vec<std::process::Child>);

impl Drop for Peer {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // SIGTERM first, so the trainer prints its rate; then make sure.
            freshet_tests::stack::signal(child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The repository's root (the benchmark may be started from anywhere).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// The Python with River and nats-py, installed by `tools/river/install.sh`.
pub fn peer_python() -> anyhow::Result<PathBuf> {
    let root = repository();
    let python = root.join(".tools/river-venv/bin/python");
    let status = std::process::Command::new("bash")
        .arg(root.join("tools/river/install.sh"))
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "tools/river/install.sh failed");
    Ok(python)
}

/// The peer on a fresh server: warm-up learned and served, then each stretch (full speed with
/// `actions`, then each offered rate) measured like freshet's.
pub async fn peer(
    python: &Path,
    actions: usize,
    rates: &[f64],
    seconds: f64,
) -> anyhow::Result<Vec<Stretch>> {
    let stack = Stack::start().await?;
    let root = repository();
    let store = stack.dir.path().join("peer");
    let log = |name: &str| std::fs::File::create(stack.dir.path().join(format!("{name}.log")));
    let trainer = std::process::Command::new(python)
        .arg(root.join("tools/peer/trainer.py"))
        .args(["--nats-url", &stack.nats.url(), "--store"])
        .arg(&store)
        .args(["--stream", STREAM_EVENTS])
        .stderr(log("peer-trainer")?)
        .spawn()?;
    let mut processes = Peer(vec![trainer]);
    processes.0.push(
        std::process::Command::new(python)
            .arg(root.join("tools/peer/predictor.py"))
            .args(["--nats-url", &stack.nats.url()])
            .stderr(log("peer-predictor")?)
            .spawn()?,
    );
    let accounts = Processes(vec![
        ("nats-server".into(), stack.nats.pid().unwrap_or(0)),
        ("peer trainer".into(), processes.0[0].id()),
        ("peer predictor".into(), processes.0[1].id()),
    ]);
    let client = stack.client.clone();
    let prober = Prober::start(move || {
        let client = client.clone();
        async move {
            let reply = tokio::time::timeout(
                Duration::from_secs(5),
                client.request("peer.predict", Bytes::from_static(b"{\"x\": {}}")),
            )
            .await
            .ok()?
            .ok()?;
            let reply: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
            reply["last_sequence"]
                .as_u64()
                .map(|covered| (covered, None))
        }
    });
    let events = bookstore_events(ITEMS, WARM_UP, "warm");
    let warm = publish(&stack, encode(&stack, &events)?, None).await?;
    let last = warm.last().map_or(0, |s| s.events_sequence);
    covered(
        &prober.newest,
        last,
        Duration::from_secs(120),
        "the peer's warm-up",
    )
    .await
    .map_err(|e| {
        let trainer = std::fs::read_to_string(stack.dir.path().join("peer-trainer.log"));
        anyhow::anyhow!("{e}; trainer log:\n{}", trainer.unwrap_or_default())
    })?;
    let mut measured = Vec::new();
    let mut first = 0;
    let mut plan = vec![(None, actions)];
    plan.extend(
        rates
            .iter()
            .map(|rate| (Some(*rate), (rate * seconds) as usize)),
    );
    for (rate, count) in plan {
        // The peer announces every 1,000 learned actions: whole thousands are measured.
        let count = count.div_ceil(1_000) * 1_000;
        let events: Vec<_> = (first..first + count)
            .map(|n| bookstore_action(n, ITEMS, "bench"))
            .collect();
        let messages = encode(&stack, &events)?;
        let cpu = accounts.cpu_seconds();
        let streams = stored(&stack.js).await?;
        let sent = publish(&stack, messages, rate).await?;
        let last = sent.last().map_or(0, |s| s.events_sequence);
        let done = covered(&prober.newest, last, Duration::from_secs(900), "the peer").await?;
        measured.push(Measured {
            offered: rate,
            cpu: cpu_per_event(&cpu, &accounts.cpu_seconds(), count),
            stored: stored_per_event(&streams, &stored(&stack.js).await?, count),
            sent,
            done,
        });
        first += count;
    }
    let probes = prober.finish().await?;
    drop(processes);
    Ok(measured
        .iter()
        .map(|m| stretch(m, &probes, |s| s.events_sequence, None))
        .collect())
}

/// What the suite measures, from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    pub runs: usize,
    pub actions: usize,
    pub rate: f64,
    pub low_rate: f64,
    pub seconds: f64,
    pub scale: bool,
    pub peer_actions: Option<usize>,
}

/// The scale curve's setups besides [`Setup::DEFAULT`].
const SCALE: [Setup; 4] = [
    Setup {
        replicas: 2,
        batch: 256,
    },
    Setup {
        replicas: 4,
        batch: 256,
    },
    Setup {
        replicas: 1,
        batch: 64,
    },
    Setup {
        replicas: 1,
        batch: 1024,
    },
];

/// One run of everything: floors, freshet's default setup at every load, the scale curve at
/// full speed and the fixed load, and the peer.
#[derive(Debug, Clone, Serialize)]
struct Run {
    floors: Floors,
    freshet: Vec<Stretch>,
    scale: Vec<(Setup, Vec<Stretch>)>,
    peer: Option<Vec<Stretch>>,
}

/// The median over runs of one figure.
fn med(runs: &[Run], figure: impl Fn(&Run) -> f64) -> f64 {
    crate::median(runs.iter().map(figure).collect())
}

/// Runs the suite `plan.runs` times, prints the medians as Markdown tables, returns every run.
pub async fn suite(plan: &Plan) -> anyhow::Result<serde_json::Value> {
    let python = match plan.peer_actions {
        Some(_) => Some(peer_python()?),
        None => None,
    };
    let loads = [
        Load::PerSecond(plan.rate),
        Load::PerSecond(plan.low_rate),
        Load::ShareOfFullSpeed(0.9),
    ];
    let mut runs = Vec::new();
    for run in 0..plan.runs {
        let floors = floors(plan.actions).await?;
        eprintln!("  run {}: floors {floors:?}", run + 1);
        let freshet = freshet(Setup::DEFAULT, plan.actions, &loads, plan.seconds).await?;
        eprintln!("  run {}: freshet {freshet:?}", run + 1);
        let mut scale = Vec::new();
        if plan.scale {
            for setup in SCALE {
                let stretches = self::freshet(
                    setup,
                    plan.actions,
                    &[Load::PerSecond(plan.rate)],
                    plan.seconds,
                )
                .await?;
                eprintln!("  run {}: {setup:?} {stretches:?}", run + 1);
                scale.push((setup, stretches));
            }
        }
        let peer = match (&python, plan.peer_actions) {
            (Some(python), Some(actions)) => {
                let peer = peer(python, actions, &[plan.low_rate], plan.seconds).await?;
                eprintln!("  run {}: peer {peer:?}", run + 1);
                Some(peer)
            }
            _ => None,
        };
        runs.push(Run {
            floors,
            freshet,
            scale,
            peer,
        });
    }
    print(plan, &runs);
    Ok(serde_json::json!({
        "actions": plan.actions, "rate": plan.rate, "low_rate": plan.low_rate,
        "seconds": plan.seconds, "runs": runs,
    }))
}

fn print(plan: &Plan, runs: &[Run]) {
    let two_hops = med(runs, |r| r.floors.two_hops_per_second);
    println!("\n| JetStream floors (bookstore events) | median |");
    println!("| --- | ---: |");
    println!(
        "| publish, async acknowledgements (window {PUBLISH_WINDOW}) | {:.0} events/s |",
        med(runs, |r| r.floors.publish_per_second)
    );
    println!("| two hops: pull → republish to EXAMPLES → pull + ack | {two_hops:.0} events/s |");

    let row = |name: &str, stretch: &dyn Fn(&Run) -> &Stretch| {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
            med(runs, |r| stretch(r).events_per_second),
            med(runs, |r| stretch(r).freshness_p50_ms),
            med(runs, |r| stretch(r).freshness_p99_ms),
            med(runs, |r| stretch(r).freshness_max_ms),
        );
    };
    println!(
        "\n| events → featurize → train → predictor reply | events/s | freshness p50 ms | p99 ms | max ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    row("freshet, full speed", &|r| &r.freshet[0]);
    row(&format!("freshet, {:.0}/s offered", plan.rate), &|r| {
        &r.freshet[1]
    });
    row(&format!("freshet, {:.0}/s offered", plan.low_rate), &|r| {
        &r.freshet[2]
    });
    let near_max = med(runs, |r| {
        r.freshet[3].offered_per_second.unwrap_or(f64::NAN)
    });
    row(
        &format!("freshet, 0.9× its full speed offered ({near_max:.0}/s)"),
        &|r| &r.freshet[3],
    );
    print_stages(plan, runs, near_max);
    let full = med(runs, |r| r.freshet[0].events_per_second);
    let peers: Option<Vec<&Vec<Stretch>>> = runs.iter().map(|r| r.peer.as_ref()).collect();
    if let Some(peers) = &peers {
        let m = |i: usize, f: fn(&Stretch) -> f64| {
            crate::median(peers.iter().map(|p| f(&p[i])).collect())
        };
        for (i, name) in [
            "Python peer (nats-py, River learn_one, pickles), full speed".to_string(),
            format!("Python peer, {:.0}/s offered", plan.low_rate),
        ]
        .iter()
        .enumerate()
        {
            println!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
                m(i, |s| s.events_per_second),
                m(i, |s| s.freshness_p50_ms),
                m(i, |s| s.freshness_p99_ms),
                m(i, |s| s.freshness_max_ms),
            );
        }
        println!(
            "\n- freshet at full speed / the peer at full speed: {:.2}×",
            full / m(0, |s| s.events_per_second)
        );
        println!(
            "- at {:.0}/s, the peer's freshness p99 / freshet's: {:.1}×",
            plan.low_rate,
            m(1, |s| s.freshness_p99_ms) / med(runs, |r| r.freshet[2].freshness_p99_ms)
        );
    }
    println!(
        "- freshet at full speed / two-hop floor: {:.2}×",
        full / two_hops
    );

    // Per-event measures of freshet at full speed and at the low rate, and of the peer: CPU by
    // process (what the two cores were spent on, unmoved by other load) and messages stored.
    let per_event_rows = |of: fn(&Stretch) -> &BTreeMap<String, f64>| {
        let mut rows: Vec<(String, Vec<&BTreeMap<String, f64>>)> = vec![
            (
                "freshet, full speed".into(),
                runs.iter().map(|r| of(&r.freshet[0])).collect(),
            ),
            (
                format!("freshet, {:.0}/s offered", plan.low_rate),
                runs.iter().map(|r| of(&r.freshet[2])).collect(),
            ),
        ];
        if let Some(peers) = &peers {
            rows.push((
                "Python peer, full speed".into(),
                peers.iter().map(|p| of(&p[0])).collect(),
            ));
        }
        rows
    };
    let mut cpu_rows = per_event_rows(|s| &s.cpu_us_per_event);
    cpu_rows.insert(
        0,
        (
            "two-hop floor".into(),
            runs.iter()
                .map(|r| &r.floors.two_hops_cpu_us_per_event)
                .collect(),
        ),
    );
    per_event_table("CPU µs per event", &cpu_rows, 0);
    let stored_rows = per_event_rows(|s| &s.stored_per_event);
    per_event_table("messages stored per event", &stored_rows, 2);
    if runs.iter().all(|r| r.scale.len() == SCALE.len()) {
        println!(
            "\n| scale: featurize replicas, train batch | full speed events/s | ratio to 1 replica, batch 256 | freshness at {:.0}/s, p50 / p99 ms |",
            plan.rate
        );
        println!("| --- | ---: | ---: | ---: |");
        let line = |setup: Setup, stretch: &dyn Fn(&Run) -> &[Stretch]| {
            let rate = med(runs, |r| stretch(r)[0].events_per_second);
            println!(
                "| {} replica(s), batch {} | {rate:.0} | {:.2}× | {:.0} / {:.0} |",
                setup.replicas,
                setup.batch,
                rate / full,
                med(runs, |r| stretch(r)[1].freshness_p50_ms),
                med(runs, |r| stretch(r)[1].freshness_p99_ms),
            );
        };
        line(Setup::DEFAULT, &|r| &r.freshet);
        for (i, setup) in SCALE.into_iter().enumerate() {
            line(setup, &|r| &r.scale[i].1);
        }
    }
}

/// Where freshet's freshness went at each load, stage by stage (medians over runs).
fn print_stages(plan: &Plan, runs: &[Run], near_max: f64) {
    println!(
        "\n| freshet's freshness by stage, p50 / p99 ms | featurize (published → example stored) | train (→ version written) | serve (→ first reply) |"
    );
    println!("| --- | ---: | ---: | ---: |");
    let names = [
        "full speed".to_string(),
        format!("{:.0}/s offered", plan.rate),
        format!("{:.0}/s offered", plan.low_rate),
        format!("{near_max:.0}/s offered"),
    ];
    for (i, name) in names.iter().enumerate() {
        let stage = |of: fn(&Stages) -> StageLatency| {
            let p = |q: fn(StageLatency) -> f64| {
                med(runs, |r| {
                    r.freshet[i].stages.map_or(f64::NAN, |s| q(of(&s)))
                })
            };
            format!("{:.0} / {:.0}", p(|l| l.p50_ms), p(|l| l.p99_ms))
        };
        println!(
            "| {name} | {} | {} | {} |",
            stage(|s| s.featurize),
            stage(|s| s.train),
            stage(|s| s.serve)
        );
    }
}

/// A Markdown table of per-event figures by key (process or stream), each cell the median over
/// runs; a key some run lacks shows "–".
fn per_event_table(title: &str, rows: &[(String, Vec<&BTreeMap<String, f64>>)], decimals: usize) {
    let keys: std::collections::BTreeSet<&String> = rows
        .iter()
        .flat_map(|(_, maps)| maps.iter().flat_map(|m| m.keys()))
        .collect();
    println!(
        "\n| {title} | {} | total |",
        keys.iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("| --- |{} ---: |", " ---: |".repeat(keys.len()));
    for (name, maps) in rows {
        let cells: Vec<String> = keys
            .iter()
            .map(|key| {
                if maps.iter().all(|m| m.contains_key(*key)) {
                    let value = crate::median(maps.iter().map(|m| m[*key]).collect());
                    format!("{value:.decimals$}")
                } else {
                    "–".into()
                }
            })
            .collect();
        let total = crate::median(maps.iter().map(|m| m.values().sum()).collect());
        println!("| {name} | {} | {total:.decimals$} |", cells.join(" | "));
    }
}
