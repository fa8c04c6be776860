//! `freshet view`: a small web page showing the system live: event rate, freshness, model
//! versions over time with promotions and rollbacks marked, prequential and live accuracy with
//! drift detections marked, and the health of the labels the model learns from.
//!
//! `GET /` is one self-contained page (`view/page.html`: inline SVG and vanilla JavaScript, no
//! external resources) that polls `GET /api/state` every second. The state is assembled from what
//! the system itself records, gathered by three tasks:
//!
//! - a sampler, every second: the EVENTS and EXAMPLES streams' last sequences (whose differences
//!   are the rates), dead letters by reason, the manifests in the artifact store, the stored time
//!   of the example at each live version's high-water mark, and the age of the oldest example the
//!   live version has not learned yet, and each model's label health (featurize's label states in
//!   FEATURES beside the live version's mean prediction, as `freshet status` shows them);
//! - a watch of the MODELS bucket from its oldest kept revision: every write of `<model>.live` and
//!   `<model>.candidate`, with the server's write time and the writer's reason;
//! - an ordered consumer of CONTROL from the window's start: drift detections, gate decisions,
//!   quarantines, train's version notices, outcomes joined by predict, refusals.
//!
//! Turning those records into chart series is pure and lives in [`series`].
//!
//! With `--action-tokens`, [`actions`] adds promote, roll back, pin and unpin, each previewed,
//! confirmed and recorded with who did it; without, the view is read-only.
//!
//! `/api/state` is behind the same guard as every function's routes (`--http-tokens`,
//! `--http-client-ca`, and the limits): the page itself holds no data and is open, and sends the
//! token it was given in its address's fragment (`#token=...`, which a browser never sends to a
//! server) with each request for the state.

mod actions;
mod series;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull, kv};
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use clap::Args;
use freshet::config::HttpArgs;
use freshet::ids::ModelName;
use freshet::runtime::http::{HttpGuard, Surface};
use freshet::shutdown::Shutdown;
use freshet::subjects::{
    BUCKET_MODELS, STREAM_CONTROL, STREAM_DEAD_LETTER, STREAM_EVENTS, STREAM_EXAMPLES, Subjects,
};
use freshet_model::store::{ArtifactStore, Pointer, Slot};
use futures::StreamExt;
use serde::Serialize;

use self::series::{
    ControlRecord, DriftMark, GateMark, LIVE_ACCURACY_WINDOW, LabelPoint, MAX_POINTS, Millis, Move,
    MoveKind, OutcomeRecord, Point, PointerWrite, QuarantineMark, VersionInfo, VersionPoint,
};
use super::status::{LabelStatus, count_dead_letters, label_health};
use super::{GlobalArgs, connect, emit, is_stream_not_found, open_artifacts};

/// The page, embedded so the binary serves it from anywhere.
const PAGE: &str = include_str!("view/page.html");

/// How often the sampler reads the streams, the store and the live version's backlog.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Most records of one kind kept per model (outcomes can arrive by the thousand per second).
const MAX_RECORDS: usize = 50_000;
/// Most drift records kept per model (episode transitions, or format-1 detections, which could
/// come every few examples).
const MAX_DRIFT_MARKS: usize = 2_000;
/// Most example stored-time lookups per sample, so a long history is caught up gradually.
const MAX_LOOKUPS: usize = 100;
/// Lines in the page's list of recent decisions.
const LOG_LINES: usize = 15;

/// Arguments of `freshet view`.
#[derive(Debug, Clone, Args)]
pub struct ViewArgs {
    /// TCP port to serve on (0: any free port; the URL is printed)
    #[arg(long = "port", env = "FRESHET_VIEW_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on
    #[arg(long = "bind", env = "FRESHET_VIEW_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Show only this model (every model if unset)
    #[arg(long = "model")]
    pub model: Option<ModelName>,
    /// How far back the charts reach
    #[arg(long = "window", default_value = "30m", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// featurize's label horizon (the same variable sets both), by which the age of the oldest
    /// view waiting for its label is told
    #[arg(long = "label-horizon", env = "FRESHET_LABEL_HORIZON", default_value = "30m", value_parser = humantime::parse_duration)]
    pub label_horizon: Duration,
    /// Who may act from the view (promote, roll back, pin, unpin): bearer tokens, one a line
    /// (or a directory of them, one a file, the file's name saying who). Without it the view is
    /// read-only. Kept apart from --http-tokens, which only lets people read
    #[arg(long = "action-tokens", env = "FRESHET_VIEW_ACTION_TOKENS")]
    pub action_tokens: Option<std::path::PathBuf>,
    /// Who may read the view's state, and how much (the functions' HTTP settings)
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Milliseconds since the Unix epoch from nanoseconds (what async-nats' times give).
fn millis_from_nanos(nanos: i128) -> Millis {
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// What the view gathered about one model.
#[derive(Debug, Default)]
struct ModelRecords {
    /// Writes of its pointers, by KV revision.
    writes: BTreeMap<u64, PointerWrite>,
    versions: BTreeMap<u64, VersionInfo>,
    /// Versions whose info came from their manifest (a notice on CONTROL does not replace it).
    from_manifest: BTreeSet<u64>,
    /// Versions train announced as live on CONTROL.
    announced: BTreeSet<u64>,
    /// Stored time of the EXAMPLES message at a sequence; `None` once it is known to be gone.
    example_times: BTreeMap<u64, Option<Millis>>,
    backlog_age: VecDeque<Point>,
    live_outcomes: VecDeque<OutcomeRecord>,
    candidate_outcomes: VecDeque<OutcomeRecord>,
    drift: VecDeque<DriftMark>,
    gate: VecDeque<GateMark>,
    quarantine: VecDeque<QuarantineMark>,
    refusals: VecDeque<(Millis, String)>,
    /// The mean prediction each version's manifest records, where it does.
    mean_predictions: BTreeMap<u64, f64>,
    /// Label health, sampled each second.
    labels: VecDeque<LabelPoint>,
    /// The latest label sample, with its warnings.
    label_status: Option<LabelStatus>,
}

impl ModelRecords {
    fn writes(&self) -> Vec<PointerWrite> {
        self.writes.values().cloned().collect()
    }

    /// The current value of a slot and since when.
    fn current(&self, slot: Slot) -> Option<(Millis, Option<u64>, String)> {
        self.writes
            .values()
            .rev()
            .find(|w| w.slot == slot)
            .map(|w| (w.t, w.version, w.reason.clone()))
    }

    /// Forgets what is older than `from`, keeping each slot's last write before it (the value
    /// in force when the window starts) and the versions the kept writes name.
    fn prune(&mut self, from: Millis) {
        let mut keep_before: BTreeSet<u64> = BTreeSet::new();
        for slot in [Slot::Live, Slot::Candidate] {
            if let Some(w) = self
                .writes
                .values()
                .rev()
                .find(|w| w.slot == slot && w.t < from)
            {
                keep_before.insert(w.revision);
            }
        }
        self.writes
            .retain(|revision, w| w.t >= from || keep_before.contains(revision));
        let named: BTreeSet<u64> = self.writes.values().filter_map(|w| w.version).collect();
        self.versions
            .retain(|v, info| info.created_at >= from || named.contains(v));
        let prune = |queue: &mut VecDeque<Point>| {
            while queue.front().is_some_and(|p| p.0 < from) {
                queue.pop_front();
            }
        };
        prune(&mut self.backlog_age);
        for queue in [&mut self.live_outcomes, &mut self.candidate_outcomes] {
            // The rolling accuracy at the window's start needs the outcomes just before it.
            while queue.len() > LIVE_ACCURACY_WINDOW && queue[LIVE_ACCURACY_WINDOW].t < from {
                queue.pop_front();
            }
        }
        self.drift.retain(|m| m.t >= from);
        self.gate.retain(|m| m.t >= from);
        self.quarantine.retain(|m| m.t >= from);
        self.refusals.retain(|(t, _)| *t >= from);
        self.labels.retain(|p| p.0 >= from);
    }

    fn apply(&mut self, record: ControlRecord) {
        match record {
            ControlRecord::Drift(mark) => {
                series::push_bounded(&mut self.drift, mark, MAX_DRIFT_MARKS)
            }
            ControlRecord::Gate(mark) => series::push_bounded(&mut self.gate, mark, MAX_RECORDS),
            ControlRecord::Quarantine(mark) => {
                series::push_bounded(&mut self.quarantine, mark, MAX_RECORDS)
            }
            ControlRecord::Outcome { live, candidate } => {
                if let Some(o) = live {
                    series::push_bounded(&mut self.live_outcomes, o, MAX_RECORDS);
                }
                if let Some(o) = candidate {
                    series::push_bounded(&mut self.candidate_outcomes, o, MAX_RECORDS);
                }
            }
            ControlRecord::Version(info) => {
                self.announced.insert(info.version);
                if !self.from_manifest.contains(&info.version) {
                    self.versions.insert(info.version, info);
                }
            }
            ControlRecord::Refusal(t, text) => {
                series::push_bounded(&mut self.refusals, (t, text), MAX_RECORDS)
            }
        }
    }
}

/// Everything the view gathered, shared by the gatherers and the HTTP handlers.
#[derive(Debug, Default)]
struct Collected {
    events: VecDeque<(Millis, u64)>,
    examples: VecDeque<(Millis, u64)>,
    messages: BTreeMap<&'static str, u64>,
    dead_letters: BTreeMap<String, u64>,
    models: BTreeMap<String, ModelRecords>,
    /// What could not be read, by source; cleared when the source reads again.
    errors: BTreeMap<&'static str, String>,
}

impl Collected {
    fn model(&mut self, name: &str) -> &mut ModelRecords {
        self.models.entry(name.to_string()).or_default()
    }

    fn fail(&mut self, source: &'static str, err: &anyhow::Error) {
        let text = super::error_message(err);
        tracing::warn!(source, error = %text, "live view source unreadable");
        self.errors.insert(source, text);
    }

    fn ok(&mut self, source: &'static str) {
        self.errors.remove(source);
    }
}

/// What the gatherers and the HTTP handlers share.
struct View {
    js: jetstream::Context,
    subjects: Subjects,
    artifacts: ArtifactStore,
    model: Option<ModelName>,
    window: Duration,
    label_horizon: Duration,
    collected: Mutex<Collected>,
}

impl View {
    fn collected(&self) -> MutexGuard<'_, Collected> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.collected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wanted(&self, model: &str) -> bool {
        self.model.as_ref().is_none_or(|m| m.as_str() == model)
    }

    fn window_start(&self, now: Millis) -> Millis {
        now - i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX / 2)
    }
}

/// Runs `freshet view` until interrupted.
pub async fn run(global: &GlobalArgs, args: &ViewArgs) -> anyhow::Result<()> {
    // Checked before connecting, so a wrong path fails at once.
    let guard = HttpGuard::new(&args.http, None)
        .context("configuring the view's HTTP server (FRESHET_HTTP_*)")?;
    if !args.bind.is_loopback() {
        guard.warn_if_open("freshet view's state");
    }
    let action_tokens = args
        .action_tokens
        .as_deref()
        .map(freshet::runtime::http::tokens::TokenFile::open)
        .transpose()
        .context("reading the view's action tokens (--action-tokens)")?;
    let nats = connect(global).await?;
    let pointers = super::models::open_pointers(&nats.js).await?;
    let artifacts = open_artifacts(global)?;
    let actions = action_tokens.map(|tokens| {
        Arc::new(actions::Actions {
            tokens,
            js: nats.js.clone(),
            subjects: nats.subjects.clone(),
            pointers: pointers.clone(),
            artifacts: artifacts.clone(),
        })
    });
    let context = Arc::new(View {
        js: nats.js,
        subjects: nats.subjects,
        artifacts,
        model: args.model.clone(),
        window: args.window,
        label_horizon: args.label_horizon,
        collected: Mutex::new(Collected::default()),
    });
    let shutdown = Shutdown::on_signals();
    guard.start(&shutdown);
    let tasks = [
        tokio::spawn(sample_forever(context.clone())),
        tokio::spawn(follow_pointers(context.clone())),
        tokio::spawn(follow_control(context.clone())),
    ];
    let state_routes = Router::new()
        .route("/api/state", get(state))
        .with_state(context);
    let mut router = Router::new()
        .route("/", get(page))
        .merge(guard.protect(Surface::Serving, state_routes));
    if let Some(actions) = actions {
        let reload = args.http.tokens_reload;
        tokio::spawn(
            actions
                .tokens
                .clone()
                .reload_every(reload, shutdown.clone()),
        );
        router = router.merge(
            Router::new()
                .route("/api/actions", get(actions::enabled).post(actions::act))
                .route("/api/actions/preview", post(actions::preview))
                .with_state(actions),
        );
    }
    let (address, server) =
        freshet::runtime::http::serve(&args.bind.to_string(), args.port, router, &guard, shutdown)
            .await
            .with_context(|| format!("listening on {}:{}", args.bind, args.port))?;
    let scheme = if guard.tls().is_some() {
        "https"
    } else {
        "http"
    };
    emit(&format!("live view on {scheme}://{address}/\n"))?;
    let served = server.await.context("serving the live view");
    for task in tasks {
        task.abort();
    }
    served
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

async fn state(State(context): State<Arc<View>>) -> impl IntoResponse {
    let now = now_millis();
    let body = assemble(&context.collected(), now, context.window_start(now));
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body))
}

/// Samples once a second until the task is aborted.
async fn sample_forever(context: Arc<View>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sample(&context).await;
    }
}

/// One sample: stream sequences and dead letters, manifests, example times, backlogs.
async fn sample(context: &View) {
    let t = now_millis();
    for (name, source) in [(STREAM_EVENTS, "EVENTS"), (STREAM_EXAMPLES, "EXAMPLES")] {
        match stream_state(&context.js, name).await {
            Ok((last_sequence, messages)) => {
                let mut guard = context.collected();
                let collected = &mut *guard;
                collected.ok(source);
                collected.messages.insert(name, messages);
                let queue = if name == STREAM_EVENTS {
                    &mut collected.events
                } else {
                    &mut collected.examples
                };
                series::push_bounded(queue, (t, last_sequence), MAX_RECORDS);
            }
            Err(err) => context.collected().fail(source, &err),
        }
    }
    match dead_letters(context).await {
        Ok((total, by_reason)) => {
            let mut collected = context.collected();
            collected.ok("DEAD_LETTER");
            collected.messages.insert(STREAM_DEAD_LETTER, total);
            collected.dead_letters = by_reason;
        }
        Err(err) => context.collected().fail("DEAD_LETTER", &err),
    }
    match read_manifests(context).await {
        Ok(()) => context.collected().ok("artifacts"),
        Err(err) => context.collected().fail("artifacts", &err),
    }
    match sample_examples(context, t).await {
        Ok(()) => context.collected().ok("EXAMPLES times"),
        Err(err) => context.collected().fail("EXAMPLES times", &err),
    }
    match sample_labels(context, t).await {
        Ok(()) => context.collected().ok("labels"),
        Err(err) => context.collected().fail("labels", &err),
    }
    let from = context.window_start(t);
    let mut guard = context.collected();
    let collected = &mut *guard;
    for queue in [&mut collected.events, &mut collected.examples] {
        // One sample before the window start keeps the first rate inside it.
        while queue.len() > 1 && queue[1].0 < from {
            queue.pop_front();
        }
    }
    for records in collected.models.values_mut() {
        records.prune(from);
    }
}

/// A stream's last sequence and message count.
async fn stream_state(js: &jetstream::Context, name: &str) -> anyhow::Result<(u64, u64)> {
    let stream = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(err) if is_stream_not_found(&err) => {
            anyhow::bail!("stream {name} does not exist (run `freshet provision`)")
        }
        Err(err) => return Err(err).with_context(|| format!("reading stream {name}")),
    };
    let state = &stream.cached_info().state;
    Ok((state.last_sequence, state.messages))
}

async fn dead_letters(context: &View) -> anyhow::Result<(u64, BTreeMap<String, u64>)> {
    let stream = context
        .js
        .get_stream(STREAM_DEAD_LETTER)
        .await
        .context("reading stream DEAD_LETTER")?;
    let total = stream.cached_info().state.messages;
    let by_reason = if total == 0 {
        BTreeMap::new()
    } else {
        count_dead_letters(&stream, &context.subjects.dead_letter_all()).await?
    };
    Ok((total, by_reason))
}

/// Reads the manifest of every stored version not read yet (manifests never change).
async fn read_manifests(context: &View) -> anyhow::Result<()> {
    let stored = context
        .artifacts
        .models()
        .await
        .with_context(|| format!("listing models in {}", context.artifacts.url()))?;
    for name in stored.iter().filter(|name| context.wanted(name)) {
        let Ok(model) = ModelName::parse(name) else {
            continue;
        };
        let versions = context
            .artifacts
            .versions(&model)
            .await
            .with_context(|| format!("listing versions of {model}"))?;
        let from = context.window_start(now_millis());
        let unread: Vec<u64> = {
            let mut collected = context.collected();
            let records = collected.model(name);
            versions
                .into_iter()
                .filter(|v| !records.from_manifest.contains(v))
                .collect()
        };
        for version in unread {
            let manifest = context
                .artifacts
                .manifest(&model, version)
                .await
                .with_context(|| format!("reading the manifest of {model} version {version}"))?;
            let info = VersionInfo {
                version,
                created_at: manifest.created_at.timestamp_millis(),
                high_water_mark: manifest.high_water_mark,
                prequential_accuracy: manifest.metrics.prequential_accuracy,
                log_loss: manifest.metrics.log_loss,
                examples_total: manifest.metrics.examples_total,
            };
            let mut collected = context.collected();
            let records = collected.model(name);
            if let Some(mean) = manifest.metrics.mean_prediction {
                records.mean_predictions.insert(version, mean);
            }
            records.from_manifest.insert(version);
            let named = records.writes.values().any(|w| w.version == Some(version));
            if info.created_at >= from || named {
                records.versions.insert(version, info);
            }
        }
    }
    Ok(())
}

/// Looks up the stored time of the examples live versions learned last, and samples how long
/// the oldest example the live version has not learned has waited.
async fn sample_examples(context: &View, t: Millis) -> anyhow::Result<()> {
    let stream = context
        .js
        .get_stream(STREAM_EXAMPLES)
        .await
        .context("reading stream EXAMPLES")?;
    // What to look up, read under the lock; the lookups happen without it.
    let wanted: Vec<(String, Vec<u64>, Option<u64>)> = {
        let collected = context.collected();
        collected
            .models
            .iter()
            .map(|(name, records)| {
                let marks: Vec<u64> = records
                    .writes
                    .values()
                    .filter_map(|w| w.version)
                    .filter_map(|v| records.versions.get(&v))
                    .map(|info| info.high_water_mark)
                    .filter(|mark| *mark > 0 && !records.example_times.contains_key(mark))
                    .collect::<BTreeSet<u64>>()
                    .into_iter()
                    .rev()
                    .take(MAX_LOOKUPS)
                    .collect();
                let live_mark = match records.current(Slot::Live) {
                    Some((_, Some(version), _)) => {
                        records.versions.get(&version).map(|i| i.high_water_mark)
                    }
                    _ => None,
                };
                (name.clone(), marks, live_mark)
            })
            .collect()
    };
    for (name, marks, live_mark) in wanted {
        let mut found = Vec::new();
        for mark in marks {
            match stream.get_raw_message(mark).await {
                Ok(message) => found.push((
                    mark,
                    Some(millis_from_nanos(message.time.unix_timestamp_nanos())),
                )),
                Err(err)
                    if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    found.push((mark, None))
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("reading EXAMPLES message {mark}"));
                }
            }
        }
        let backlog = match live_mark {
            None => None,
            Some(mark) => {
                let subject = context
                    .subjects
                    .examples(&ModelName::parse(&name).context("a model name from MODELS")?);
                match stream
                    .get_first_raw_message_by_subject(&subject, mark + 1)
                    .await
                {
                    Ok(message) => Some(
                        (t - millis_from_nanos(message.time.unix_timestamp_nanos())).max(0) as f64
                            / 1000.0,
                    ),
                    Err(err)
                        if err.kind()
                            == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                    {
                        Some(0.0)
                    }
                    Err(err) => {
                        return Err(err).with_context(|| format!("reading {subject} after {mark}"));
                    }
                }
            }
        };
        let mut collected = context.collected();
        let records = collected.model(&name);
        records.example_times.extend(found);
        if let Some(age) = backlog {
            series::push_bounded(&mut records.backlog_age, Point(t, age), MAX_RECORDS);
        }
    }
    Ok(())
}

/// Samples each model's label health from FEATURES, beside its live version's mean prediction.
async fn sample_labels(context: &View, t: Millis) -> anyhow::Result<()> {
    let wanted: Vec<(String, Option<f64>)> = {
        let collected = context.collected();
        collected
            .models
            .iter()
            .filter(|(name, _)| context.wanted(name))
            .map(|(name, records)| {
                let mean = match records.current(Slot::Live) {
                    Some((_, Some(version), _)) => records.mean_predictions.get(&version).copied(),
                    _ => None,
                };
                (name.clone(), mean)
            })
            .collect()
    };
    for (name, mean) in wanted {
        let health = label_health(&context.js, &name, context.label_horizon).await?;
        let status = LabelStatus::new(&name, health, mean);
        let mut collected = context.collected();
        let records = collected.model(&name);
        series::push_bounded(
            &mut records.labels,
            LabelPoint(
                t,
                status.positive_share,
                status.observed_conversion_rate,
                status.mean_prediction,
            ),
            MAX_RECORDS,
        );
        records.label_status = Some(status);
    }
    Ok(())
}

/// Follows every write of MODELS from its oldest kept revision, re-establishing the watch after
/// an error from where it stopped.
async fn follow_pointers(context: Arc<View>) {
    let mut next_revision = 1;
    loop {
        if let Err(err) = follow_pointers_once(&context, &mut next_revision).await {
            context.collected().fail("MODELS", &err);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn follow_pointers_once(context: &View, next_revision: &mut u64) -> anyhow::Result<()> {
    let bucket = context
        .js
        .get_key_value(BUCKET_MODELS)
        .await
        .with_context(|| format!("opening KV bucket {BUCKET_MODELS} (run `freshet provision`)"))?;
    let mut watch = bucket
        .watch_all_from_revision(*next_revision)
        .await
        .context("watching MODELS")?;
    context.collected().ok("MODELS");
    while let Some(entry) = watch.next().await {
        let entry = entry.context("watching MODELS")?;
        *next_revision = entry.revision + 1;
        let Some((model, slot)) = Slot::parse_key(&entry.key) else {
            continue;
        };
        if !context.wanted(model.as_str()) {
            continue;
        }
        let (version, cause, reason) = match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Pointer>(&entry.value) {
                Ok(pointer) => (Some(pointer.version), Some(pointer.cause), pointer.reason),
                Err(err) => {
                    tracing::debug!(key = entry.key, %err, "skipping an unreadable pointer");
                    continue;
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => (None, None, "removed".to_string()),
        };
        let write = PointerWrite {
            revision: entry.revision,
            t: millis_from_nanos(entry.created.unix_timestamp_nanos()),
            slot,
            version,
            cause,
            reason,
        };
        context
            .collected()
            .model(model.as_str())
            .writes
            .insert(write.revision, write);
    }
    Ok(())
}

/// `DeliverPolicy::ByStartTime` at `start`. async-nats takes a `time` date, and this crate
/// speaks chrono, so the policy is read from its JSON form (RFC 3339) instead.
fn deliver_from(start: DateTime<Utc>) -> anyhow::Result<DeliverPolicy> {
    serde_json::from_value(serde_json::json!({
        "deliver_policy": "by_start_time",
        "opt_start_time": start.to_rfc3339(),
    }))
    .context("building a start-time deliver policy")
}

/// Follows CONTROL from the window's start, resuming after the last message read when the
/// consumer has to be made again.
async fn follow_control(context: Arc<View>) {
    let mut next_sequence = None;
    loop {
        if let Err(err) = follow_control_once(&context, &mut next_sequence).await {
            context.collected().fail("CONTROL", &err);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn follow_control_once(
    context: &View,
    next_sequence: &mut Option<u64>,
) -> anyhow::Result<()> {
    let stream = context
        .js
        .get_stream(STREAM_CONTROL)
        .await
        .context("reading stream CONTROL")?;
    let deliver_policy = match *next_sequence {
        Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        None => {
            let from = context.window_start(now_millis());
            deliver_from(DateTime::from_timestamp_millis(from).unwrap_or_default())?
        }
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy,
            filter_subject: context.subjects.control_all(),
            ..Default::default()
        })
        .await
        .context("opening an ordered consumer on CONTROL")?;
    let mut messages = consumer.messages().await.context("reading CONTROL")?;
    context.collected().ok("CONTROL");
    while let Some(message) = messages.next().await {
        let message = message
            .map_err(|e| anyhow::anyhow!(e))
            .context("reading CONTROL")?;
        let info = message.info().map_err(|e| anyhow::anyhow!(e))?;
        *next_sequence = Some(info.stream_sequence + 1);
        let t = millis_from_nanos(info.published.unix_timestamp_nanos());
        let Some((model, kind)) =
            series::parse_control_subject(context.subjects.prefix(), &message.subject)
        else {
            continue;
        };
        if !context.wanted(model) {
            continue;
        }
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
            continue;
        };
        let Some(record) = series::parse_control(kind, &body, t) else {
            continue;
        };
        context.collected().model(model).apply(record);
    }
    Ok(())
}

/// The body of `GET /api/state`.
#[derive(Debug, Serialize)]
struct StateView {
    now: Millis,
    /// The charts' left edge: the oldest data inside the window (the window's start at most).
    from: Millis,
    window_seconds: u64,
    /// Messages per stream.
    streams: BTreeMap<&'static str, u64>,
    dead_letters: BTreeMap<String, u64>,
    event_rate: Vec<Point>,
    example_rate: Vec<Point>,
    models: Vec<ModelView>,
    /// Notable decisions, newest first.
    log: Vec<LogLine>,
    /// Sources that could not be read, in words.
    errors: Vec<String>,
}

/// A slot's current value.
#[derive(Debug, Serialize)]
struct SlotNow {
    version: u64,
    since: Millis,
    reason: String,
}

/// One model's series.
#[derive(Debug, Serialize)]
struct ModelView {
    name: String,
    live: Option<SlotNow>,
    candidate: Option<SlotNow>,
    live_steps: Vec<(Millis, Option<u64>)>,
    candidate_steps: Vec<(Millis, Option<u64>)>,
    moves: Vec<Move>,
    prequential: Vec<VersionPoint>,
    candidate_prequential: Vec<VersionPoint>,
    live_accuracy: Vec<VersionPoint>,
    candidate_accuracy: Vec<VersionPoint>,
    freshness: Vec<VersionPoint>,
    backlog_age: Vec<Point>,
    drift: Vec<DriftMark>,
    gate: Vec<GateMark>,
    quarantine: Vec<QuarantineMark>,
    /// The latest label health, with its warnings; `None` before the first sample.
    labels: Option<LabelStatus>,
    /// Positive share, observed conversion rate and mean prediction over time.
    label_rates: Vec<LabelPoint>,
}

/// One line of the recent-decisions list.
#[derive(Debug, Serialize)]
struct LogLine {
    t: Millis,
    model: String,
    kind: String,
    text: String,
}

/// Everything the page shows, from what was gathered, for the window `[from, now]`.
fn assemble(collected: &Collected, now: Millis, window_start: Millis) -> StateView {
    let samples =
        |queue: &VecDeque<(Millis, u64)>| -> Vec<(Millis, u64)> { queue.iter().copied().collect() };
    let inside = |points: Vec<Point>| -> Vec<Point> {
        let points: Vec<Point> = points.into_iter().filter(|p| p.0 >= window_start).collect();
        series::thin(&points, MAX_POINTS)
    };
    let event_rate = inside(series::rates(&samples(&collected.events)));
    let example_rate = inside(series::rates(&samples(&collected.examples)));
    let mut log = Vec::new();
    let models: Vec<ModelView> = collected
        .models
        .iter()
        .map(|(name, records)| model_view(name, records, now, window_start, &mut log))
        .collect();
    log.sort_by_key(|line: &LogLine| std::cmp::Reverse(line.t));
    log.truncate(LOG_LINES);

    // The charts start at the oldest thing to show, so a young system fills the width.
    let oldest = event_rate
        .iter()
        .map(|p| p.0)
        .chain(models.iter().flat_map(|m| {
            m.live_steps
                .iter()
                .map(|s| s.0)
                .chain(m.prequential.iter().map(|p| p.0))
                .chain(m.live_accuracy.iter().map(|p| p.0))
                .chain(m.drift.iter().map(|d| d.t))
        }))
        .min()
        .unwrap_or(now - 60_000);
    StateView {
        now,
        from: oldest.max(window_start).min(now - 10_000),
        window_seconds: u64::try_from((now - window_start) / 1000).unwrap_or(0),
        streams: collected.messages.clone(),
        dead_letters: collected.dead_letters.clone(),
        event_rate,
        example_rate,
        models,
        log,
        errors: collected
            .errors
            .iter()
            .map(|(source, text)| format!("{source}: {text}"))
            .collect(),
    }
}

fn model_view(
    name: &str,
    records: &ModelRecords,
    now: Millis,
    from: Millis,
    log: &mut Vec<LogLine>,
) -> ModelView {
    let writes = records.writes();
    let slot_now = |slot: Slot| match records.current(slot) {
        Some((since, Some(version), reason)) => Some(SlotNow {
            version,
            since,
            reason,
        }),
        _ => None,
    };
    let all_moves = series::live_moves(&writes);
    let moves: Vec<Move> = all_moves.iter().filter(|m| m.t >= from).cloned().collect();
    let live_members: BTreeSet<u64> = writes
        .iter()
        .filter(|w| w.slot == Slot::Live)
        .filter_map(|w| w.version)
        .chain(records.announced.iter().copied())
        .collect();
    let candidate_members: BTreeSet<u64> = writes
        .iter()
        .filter(|w| w.slot == Slot::Candidate)
        .filter_map(|w| w.version)
        .filter(|v| !live_members.contains(v))
        .collect();
    let example_times: BTreeMap<u64, Millis> = records
        .example_times
        .iter()
        .filter_map(|(sequence, t)| t.map(|t| (*sequence, t)))
        .collect();

    let mut line = |t: Millis, kind: &str, text: String| {
        log.push(LogLine {
            t,
            model: name.to_string(),
            kind: kind.to_string(),
            text,
        })
    };
    for m in moves.iter().filter(|m| m.kind != MoveKind::Train) {
        let from_text = m.from.map_or("none".to_string(), |v| format!("v{v}"));
        line(
            m.t,
            kind_name(m.kind),
            format!("live {from_text} → v{}: {}", m.version, m.reason),
        );
    }
    for g in &records.gate {
        line(
            g.t,
            "gate",
            format!(
                "gate {}: live v{} {:.3} vs v{} {:.3} over {} examples",
                g.action,
                g.live_version,
                g.live_accuracy,
                g.challenger_version,
                g.challenger_accuracy,
                g.examples
            ),
        );
    }
    for (t, text) in series::drift_lines(&records.drift) {
        line(t, "drift", text);
    }
    for q in &records.quarantine {
        line(
            q.t,
            "quarantine",
            format!("training quarantine {}", q.state),
        );
    }
    for (t, text) in &records.refusals {
        line(*t, "refused", text.clone());
    }

    let drift: Vec<DriftMark> = records.drift.iter().cloned().collect();
    ModelView {
        name: name.to_string(),
        live: slot_now(Slot::Live),
        candidate: slot_now(Slot::Candidate),
        live_steps: series::steps(&writes, Slot::Live, from, now),
        candidate_steps: series::steps(&writes, Slot::Candidate, from, now),
        freshness: series::freshness(&all_moves, &records.versions, &example_times, from),
        moves,
        prequential: series::thin(
            &series::prequential(&records.versions, &live_members, from),
            MAX_POINTS,
        ),
        candidate_prequential: series::thin(
            &series::prequential(&records.versions, &candidate_members, from),
            MAX_POINTS,
        ),
        live_accuracy: series::live_accuracy(&records.live_outcomes, LIVE_ACCURACY_WINDOW, from),
        candidate_accuracy: series::live_accuracy(
            &records.candidate_outcomes,
            LIVE_ACCURACY_WINDOW,
            from,
        ),
        backlog_age: series::thin(
            &records
                .backlog_age
                .iter()
                .copied()
                .filter(|p| p.0 >= from)
                .collect::<Vec<_>>(),
            MAX_POINTS,
        ),
        // The newest marks when there are more than a chart can show.
        drift: drift[drift.len().saturating_sub(MAX_POINTS)..].to_vec(),
        gate: records.gate.iter().cloned().collect(),
        quarantine: records.quarantine.iter().cloned().collect(),
        labels: records.label_status.clone(),
        label_rates: series::label_rates(&records.labels, from),
    }
}

fn kind_name(kind: MoveKind) -> &'static str {
    match kind {
        MoveKind::First => "first",
        MoveKind::Train => "train",
        MoveKind::Promotion => "promotion",
        MoveKind::Rollback => "rollback",
        MoveKind::Manual => "manual",
    }
}

#[cfg(test)]
mod tests {
    use freshet_model::store::Cause;

    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        for external in ["http://", "https://", "//cdn", "@import", "<link"] {
            assert!(
                !PAGE
                    .replace("http://www.w3.org/2000/svg", "")
                    .contains(external),
                "the page must not load {external} resources: the view runs offline"
            );
        }
        for chart in ["event-rate", "freshness", "versions", "accuracy", "labels"] {
            assert!(PAGE.contains(&format!("\"{chart}\"")), "{chart}");
        }
    }

    #[test]
    fn start_time_policies_are_read_from_rfc3339() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let DeliverPolicy::ByStartTime { start_time } = deliver_from(start).unwrap() else {
            panic!("a start-time policy");
        };
        assert_eq!(start_time.unix_timestamp(), 1_700_000_000);
    }

    #[test]
    fn state_assembles_series_markers_and_the_decision_log() {
        let mut collected = Collected {
            events: [(1_000, 0), (2_000, 50), (3_000, 150)]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let records = collected.model("bookstore");
        for (revision, t, version, cause) in [
            (1, 1_000, 1, Cause::Train),
            (2, 2_000, 2, Cause::Train),
            (3, 3_000, 1, Cause::Rollback),
        ] {
            records.writes.insert(
                revision,
                PointerWrite {
                    revision,
                    t,
                    slot: Slot::Live,
                    version: Some(version),
                    cause: Some(cause),
                    reason: "bad batch".into(),
                },
            );
        }
        for (version, created_at, mark) in [(1, 900, 10), (2, 1_900, 20)] {
            records.versions.insert(
                version,
                VersionInfo {
                    version,
                    created_at,
                    high_water_mark: mark,
                    prequential_accuracy: 0.5 + version as f64 / 10.0,
                    log_loss: 0.6,
                    examples_total: mark,
                },
            );
        }
        records.example_times = [(10, Some(800)), (20, None)].into_iter().collect();
        records.apply(ControlRecord::Drift(DriftMark {
            t: 2_500,
            level: "drift".into(),
            detector: "ddm".into(),
            target: "error".into(),
            statistic: 2.0,
            live_version: Some(2),
            episode: None,
            threshold: None,
            signals: 0,
            reaction: None,
            reaction_withheld: None,
        }));
        collected.errors.insert("CONTROL", "boom".into());

        let state = assemble(&collected, 4_000, 0);
        assert_eq!(
            state.event_rate,
            vec![Point(2_000, 50.0), Point(3_000, 100.0)]
        );
        let model = &state.models[0];
        assert_eq!(model.live.as_ref().map(|l| l.version), Some(1));
        assert_eq!(model.moves.len(), 3);
        assert_eq!(model.moves[2].kind, MoveKind::Rollback);
        assert_eq!(model.prequential.len(), 2);
        // Version 2's newest example is gone from EXAMPLES: no freshness point for it.
        let freshness: Vec<(Millis, u64)> = model.freshness.iter().map(|p| (p.0, p.2)).collect();
        assert_eq!(freshness, vec![(1_000, 1), (3_000, 1)]);
        assert_eq!(model.live_steps.last(), Some(&(4_000, Some(1))));
        let kinds: Vec<&str> = state.log.iter().map(|l| l.kind.as_str()).collect();
        assert_eq!(kinds, vec!["rollback", "drift", "first"]);
        assert_eq!(state.errors, vec!["CONTROL: boom".to_string()]);
        // The oldest thing shown is version 1's creation, but the charts span ten seconds at least.
        assert_eq!(state.from, -6_000);
    }

    #[test]
    fn label_health_is_shown_beside_the_mean_prediction_with_its_warnings() {
        use freshet_features::labels::{LabelCounts, LabelHealth};

        let mut collected = Collected::default();
        let records = collected.model("bookstore");
        records.labels = [
            LabelPoint(500, Some(0.08), Some(0.08), Some(0.08)),
            LabelPoint(1_000, Some(0.05), Some(0.08), Some(0.5)),
            LabelPoint(2_000, None, None, None),
        ]
        .into_iter()
        .collect();
        // Positives published at 5 % of examples while 8 % of views convert, and a model that
        // predicts 50 %: both parted.
        let health = LabelHealth {
            waiting: 42,
            oldest_waiting_seconds: Some(30.0),
            recent: LabelCounts {
                views: 1_000,
                conversions: 80,
                examples: 1_000,
                positives: 50,
                ..LabelCounts::default()
            },
        };
        records.label_status = Some(LabelStatus::new("bookstore", Some(health), Some(0.5)));
        records.prune(800);

        let state = assemble(&collected, 3_000, 800);
        let model = &state.models[0];
        assert_eq!(
            model.label_rates,
            vec![LabelPoint(1_000, Some(0.05), Some(0.08), Some(0.5))]
        );
        let json = serde_json::to_value(model).unwrap();
        assert_eq!(json["labels"]["health"]["waiting"], 42);
        assert_eq!(json["labels"]["observed_conversion_rate"], 0.08);
        assert_eq!(json["labels"]["mean_prediction"], 0.5);
        let warnings = json["labels"]["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(PAGE.contains("data-label-warning"));
    }

    #[test]
    fn pruning_keeps_the_value_in_force_at_the_window_start() {
        let mut records = ModelRecords::default();
        for (revision, t, version) in [(1, 100, 1), (2, 200, 2), (3, 900, 3)] {
            records.writes.insert(
                revision,
                PointerWrite {
                    revision,
                    t,
                    slot: Slot::Live,
                    version: Some(version),
                    cause: Some(Cause::Train),
                    reason: "train".into(),
                },
            );
        }
        records.backlog_age = [Point(100, 1.0), Point(600, 2.0)].into_iter().collect();
        records.prune(500);
        let kept: Vec<u64> = records.writes.keys().copied().collect();
        assert_eq!(kept, vec![2, 3]);
        assert_eq!(records.backlog_age.len(), 1);
    }
}
