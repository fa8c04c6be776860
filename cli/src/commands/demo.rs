//! `freshet demo`: the bookstore story on a private local stack.
//!
//! It starts a nats-server on a free loopback port and every function against `file://` artifacts
//! under `.freshet/demo/`, streams a generated bookstore at a steady rate, and at a known moment
//! launches a book that goes viral. It prints a timeline: versions going live, the launch, the
//! first purchase of the new book and the first live version that learned from it (and how many
//! milliseconds after its publication that was), and where the book ranks in watched users'
//! recommendations. It ends with a summary beside what a nightly retrain would have done, stops
//! everything it started, and exits 0.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use clap::Args;
use freshet::events::{Action, Event, EventData};
use freshet::ids::{EntityId, ModelName};
use freshet::serving::{BatchRequest, BatchResponse, PredictRequest, call, endpoint_batch};
use freshet::subjects::{BUCKET_MODELS, STREAM_EXAMPLES, Subjects};
use freshet::topology::{self, Topology};
use freshet_model::store::{ArtifactStore, PointerStore, Pointers, Slot};

use crate::bookstore::{self, BookstoreConfig, Viral};
use crate::stack::{FunctionProcess, NatsServer};

/// Arguments of `freshet demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// User actions in the generated stream
    #[arg(long = "events", default_value_t = 12_000)]
    pub events: usize,
    /// Events published per second
    #[arg(long = "rate", default_value_t = 1_500)]
    pub rate: usize,
    /// Users and books in the generated bookstore
    #[arg(long = "users", default_value_t = 200)]
    pub users: usize,
    #[arg(long = "items", default_value_t = 40)]
    pub items: usize,
    /// How many top-ranked books count as "recommended"
    #[arg(long = "top", default_value_t = 5)]
    pub top: usize,
    /// Folder for the demo's server store, artifacts and logs (emptied first)
    #[arg(long = "dir", default_value = ".freshet/demo")]
    pub dir: PathBuf,
}

const MODEL: &str = "bookstore";
const VIRAL_ITEM: &str = "b-viral";
/// Users whose recommendations the demo watches.
const PANEL: usize = 5;

/// Something that happened, at a time since the demo started.
struct Timeline {
    start: Instant,
}

impl Timeline {
    fn at(&self, what: &str) {
        println!("  {:>8.2} s  {what}", self.start.elapsed().as_secs_f64());
    }
}

/// Runs the demo.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let timeline = Timeline {
        start: Instant::now(),
    };
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("clearing {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(args.dir.join("logs"))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    println!("freshet demo: a bookstore whose recommender learns while it serves\n");

    let mut nats = NatsServer::start(&dir.join("jetstream"))?;
    let client = async_nats::connect(nats.url())
        .await
        .context("connecting to the demo's nats-server")?;
    let js = jetstream::new(client.clone());
    let subjects = Subjects::default();
    topology::provision(&js, &Topology::builtin(), &subjects).await?;
    timeline.at(&format!(
        "nats-server up on {} (JetStream store {})",
        nats.url(),
        dir.join("jetstream").display()
    ));

    let artifacts_url = format!("file://{}", dir.join("artifacts").display());
    let env: Vec<(String, String)> = vec![
        ("FRESHET_NATS_URL".into(), nats.url()),
        ("FRESHET_OBJECT_STORE".into(), artifacts_url.clone()),
        ("FRESHET_HTTP_PORT".into(), "0".into()),
        ("FRESHET_HTTP_ADDR".into(), "127.0.0.1".into()),
        ("FRESHET_BATCH_WAIT".into(), "50ms".into()),
        ("FRESHET_MODEL".into(), MODEL.into()),
    ];
    let mut functions = Vec::new();
    for (binary, extra) in [
        // Every action labelled at once, so the k-th action is the k-th example (see below).
        (
            "featurize",
            vec!["--label-horizon".to_string(), "0s".to_string()],
        ),
        (
            "train",
            vec![
                "--publish-interval".to_string(),
                "500ms".to_string(),
                "--publish-every-batches".into(),
                "8".into(),
            ],
        ),
        ("predict", vec![]),
        ("drift", vec![]),
    ] {
        let log = dir.join("logs").join(format!("{binary}.log"));
        functions.push(FunctionProcess::spawn_restarting(
            binary, &extra, &env, &log,
        )?);
    }
    timeline.at("featurize, train, predict and drift started (logs in .freshet/demo/logs)");

    let config = BookstoreConfig {
        users: args.users,
        items: args.items,
        actions: args.events,
        seed: 7,
        viral: Some(Viral {
            item: EntityId::parse(VIRAL_ITEM)?,
            at: 0.5,
        }),
        changes: Vec::new(),
        traffic: None,
    };
    let events = bookstore::generate(&config);
    let actions = events
        .iter()
        .filter(|e| matches!(e.data, EventData::UserAction(_)))
        .count();
    // featurize turns the k-th user action into the k-th example of this model, in order, so the
    // first purchase of the new book is learned once a version's high-water mark reaches k.
    let first_viral_purchase_example = events
        .iter()
        .filter(|e| matches!(e.data, EventData::UserAction(_)))
        .position(|e| matches!(&e.data, EventData::UserAction(a) if a.item.as_str() == VIRAL_ITEM && a.action == Action::Purchase))
        .map(|index| index as u64 + 1)
        .context("the generated stream has no purchase of the new book")?;
    let catalogue: Vec<EntityId> = events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::NewItem(item) => Some(item.item.clone()),
            _ => None,
        })
        .collect();
    let panel: Vec<EntityId> = (1..=PANEL)
        .map(|n| EntityId::parse(format!("u{n:04}")))
        .collect::<Result<_, _>>()?;
    println!(
        "\n  streaming {} events ({} users, {} books) at {}/s; the book {VIRAL_ITEM} launches half-way\n",
        events.len(),
        args.users,
        args.items,
        args.rate
    );

    let model = ModelName::parse(MODEL)?;
    let pointers = Pointers::new(js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&artifacts_url)?;
    let story = Story {
        client: client.clone(),
        subjects: subjects.clone(),
        model: model.clone(),
        catalogue,
        panel,
        top: args.top,
    };

    let shared = SharedStatus::default();
    let publisher = tokio::spawn(publish_at_rate(
        js.clone(),
        subjects.clone(),
        events,
        args.rate,
        shared.clone(),
    ));
    let mut seen_version = 0u64;
    let mut launch: Option<(Instant, u64)> = None;
    let mut first_purchase_logged = false;
    let mut learned: Option<(u64, Duration)> = None;
    let mut ranked: Option<(u64, Duration, usize)> = None;
    let mut versions: BTreeMap<u64, f64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut publishing_done = None;
    let mut featurized = false;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Instant::now() > deadline {
            bail!(
                "the demo did not finish within 3 minutes; see the logs in {}",
                dir.join("logs").display()
            );
        }
        if let Some(pointer) = pointers.get(&model, Slot::Live).await?.value
            && pointer.version > seen_version
        {
            let manifest = artifacts.manifest(&model, pointer.version).await?;
            if learned.is_none()
                && manifest.high_water_mark >= first_viral_purchase_example
                && let Some(purchased) = shared.get().first_viral_purchase
            {
                let took = purchased.elapsed();
                learned = Some((pointer.version, took));
                timeline.at(&format!(
                    "v{} live: the first model that learned from a purchase of {VIRAL_ITEM}, {} ms after that purchase was published",
                    pointer.version,
                    took.as_millis()
                ));
            }
            if seen_version == 0 {
                timeline.at(&format!(
                    "first model version v{} live (learned {} examples)",
                    pointer.version, manifest.metrics.examples_total
                ));
            } else if pointer.version / 10 > seen_version / 10 {
                let rank = match launch {
                    Some(_) => match story.rank_for(&story.panel[0]).await {
                        Ok((rank, _)) => {
                            format!("; {VIRAL_ITEM} ranks #{rank} for {}", story.panel[0])
                        }
                        Err(_) => String::new(),
                    },
                    None => String::new(),
                };
                timeline.at(&format!(
                    "v{} live: {} examples learned, prequential accuracy {:.3}{rank}",
                    pointer.version,
                    manifest.metrics.examples_total,
                    manifest.metrics.prequential_accuracy
                ));
            }
            versions.insert(pointer.version, manifest.metrics.prequential_accuracy);
            seen_version = pointer.version;
        }
        let status = shared.get();
        if launch.is_none()
            && let Some(at) = status.launched_at
        {
            launch = Some((at, seen_version));
            timeline.at(&format!(
                "NEW BOOK {VIRAL_ITEM} published (the model serving is v{seen_version})"
            ));
        }
        if !first_purchase_logged && status.first_viral_purchase.is_some() {
            first_purchase_logged = true;
            timeline.at(&format!("first purchase of {VIRAL_ITEM} published"));
        }
        if let Some((launched, _)) = launch
            && ranked.is_none()
            && let Ok((version, in_top)) = story.viral_in_top().await
            && in_top * 2 > PANEL
        {
            let took = launched.elapsed();
            ranked = Some((version, took, in_top));
            timeline.at(&format!(
                "v{version} ranks {VIRAL_ITEM} in the top {} for {in_top} of {PANEL} watched users: {} ms after its launch",
                args.top,
                took.as_millis()
            ));
        }
        if publishing_done.is_none() && publisher.is_finished() {
            publishing_done = Some(Instant::now());
            timeline.at("all events published");
        }
        if !featurized
            && publishing_done.is_some()
            && stream_last(&js, STREAM_EXAMPLES).await >= actions as u64
        {
            featurized = true;
            timeline.at("every event featurized into an example");
        }
        if publishing_done.is_some()
            && learned.is_some()
            && caught_up(&js, &pointers, &artifacts, &model).await
        {
            timeline.at(&format!(
                "every example learned; live version v{seen_version}"
            ));
            break;
        }
    }
    publisher.await.context("publisher task")??;

    let (_, version_at_launch) = launch.context("the viral book was never launched")?;
    let (learned_version, learned_after) =
        learned.context("no version learned the new book's first purchase")?;
    let final_rank = story.rank_for(&story.panel[0]).await?.0;
    let latest = artifacts.manifest(&model, seen_version).await?;

    println!("\n  summary");
    let mut table = super::Table::new(&["", "freshet", "nightly retrain"]);
    table.row(vec![
        "versions published while the book sold".into(),
        format!(
            "{} (v{version_at_launch} was live at its launch)",
            seen_version - version_at_launch
        ),
        "0 until tonight's run".into(),
    ]);
    table.row(vec![
        format!("first purchase of {VIRAL_ITEM} → a live model that learned it"),
        format!("{} ms (v{learned_version})", learned_after.as_millis()),
        "up to 24 h".into(),
    ]);
    table.row(vec![
        format!("{VIRAL_ITEM} in the top {} of most watched users", args.top),
        match ranked {
            Some((version, took, in_top)) => format!(
                "{} ms after launch (v{version}, {in_top}/{PANEL} users)",
                took.as_millis()
            ),
            None => "not reached in this run".into(),
        },
        "after tonight's run, at the earliest".into(),
    ]);
    table.row(vec![
        format!("rank of {VIRAL_ITEM} for {} at the end", story.panel[0]),
        format!("#{final_rank} of {}", story.catalogue.len()),
        "-".into(),
    ]);
    table.row(vec![
        "prequential accuracy / log loss / ROC AUC (latest window)".into(),
        format!(
            "{:.3} / {:.3} / {}",
            latest.metrics.prequential_accuracy,
            latest.metrics.log_loss,
            latest
                .metrics
                .roc_auc
                .map_or("-".to_string(), |auc| format!("{auc:.3}"))
        ),
        "-".into(),
    ]);
    print!("{table}");

    for (mut function, name) in
        functions
            .into_iter()
            .zip(["featurize", "train", "predict", "drift"])
    {
        let status = function.terminate(Duration::from_secs(20))?;
        if !status.success() {
            bail!(
                "{name} exited with {status} on SIGTERM; see {}",
                dir.join("logs").join(format!("{name}.log")).display()
            );
        }
    }
    nats.stop()?;
    timeline.at("stopped every process the demo started; done");
    Ok(())
}

/// What the publisher has done so far, shared with the timeline.
#[derive(Debug, Clone, Copy, Default)]
struct PublisherStatus {
    launched_at: Option<Instant>,
    first_viral_purchase: Option<Instant>,
}

/// The publisher's status, written by its task and read by the timeline.
#[derive(Clone, Default)]
struct SharedStatus(Arc<Mutex<PublisherStatus>>);

impl SharedStatus {
    fn get(&self) -> PublisherStatus {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn note(&self, update: impl FnOnce(&mut PublisherStatus)) {
        update(
            &mut self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }
}

/// Publishes events at `rate` per second, in chunks every 20 ms, waiting for each chunk's acks.
async fn publish_at_rate(
    js: jetstream::Context,
    subjects: Subjects,
    events: Vec<Event>,
    rate: usize,
    status: SharedStatus,
) -> anyhow::Result<()> {
    let per_tick = (rate / 50).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for chunk in events.chunks(per_tick) {
        tick.tick().await;
        let mut acks = Vec::with_capacity(chunk.len());
        for event in chunk {
            let subject =
                subjects.event(event.data.event_type().as_str(), event.data.partition_key());
            // Stamped as sent, like a live shop's events: the predictor reads request-time
            // features (recent popularity windows, idle times) on the wall clock, so event time
            // must run on it too.
            let stamped = Event {
                time: Some(chrono::Utc::now()),
                ..event.clone()
            };
            let message = PublishMessage::build()
                .payload(Bytes::from(stamped.to_json_bytes()))
                .message_id(&event.id);
            acks.push(js.send_publish(subject, message).await?);
        }
        for ack in acks {
            ack.await?;
        }
        for event in chunk {
            match &event.data {
                EventData::NewItem(item) if item.item.as_str() == VIRAL_ITEM => {
                    status.note(|s| s.launched_at = Some(Instant::now()))
                }
                EventData::UserAction(a)
                    if a.item.as_str() == VIRAL_ITEM && a.action == Action::Purchase =>
                {
                    status.note(|s| {
                        s.first_viral_purchase.get_or_insert_with(Instant::now);
                    })
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The last sequence of a stream (0 when unknown).
async fn stream_last(js: &jetstream::Context, stream: &str) -> u64 {
    let Ok(mut stream) = js.get_stream(stream).await else {
        return 0;
    };
    match stream.info().await {
        Ok(info) => info.state.last_sequence,
        Err(_) => 0,
    }
}

/// Whether the live version has learned every example on the stream.
async fn caught_up(
    js: &jetstream::Context,
    pointers: &Pointers,
    artifacts: &ArtifactStore,
    model: &ModelName,
) -> bool {
    let last = stream_last(js, STREAM_EXAMPLES).await;
    if last == 0 {
        return false;
    }
    let Ok(pointer) = pointers.get(model, Slot::Live).await else {
        return false;
    };
    let Some(live) = pointer.value else {
        return false;
    };
    match artifacts.manifest(model, live.version).await {
        Ok(manifest) => manifest.high_water_mark >= last,
        Err(_) => false,
    }
}

/// The recommendation questions the demo asks.
struct Story {
    client: async_nats::Client,
    subjects: Subjects,
    model: ModelName,
    catalogue: Vec<EntityId>,
    panel: Vec<EntityId>,
    top: usize,
}

impl Story {
    /// The viral book's rank (1-based) among the catalogue for `user`, and the version that ranked.
    async fn rank_for(&self, user: &EntityId) -> anyhow::Result<(usize, u64)> {
        let request = BatchRequest {
            instances: self
                .catalogue
                .iter()
                .map(|item| PredictRequest {
                    user: Some(user.clone()),
                    item: Some(item.clone()),
                    ..Default::default()
                })
                .collect(),
        };
        let response: BatchResponse = call(
            &self.client,
            endpoint_batch(&self.subjects, &self.model),
            &request,
            Duration::from_secs(5),
        )
        .await?;
        Ok((
            rank_of(&self.catalogue, &response.scores, VIRAL_ITEM),
            response.version,
        ))
    }

    /// How many watched users have the viral book in their top N, and the version that said so.
    async fn viral_in_top(&self) -> anyhow::Result<(u64, usize)> {
        let mut in_top = 0;
        let mut version = 0;
        for user in &self.panel {
            let (rank, v) = self.rank_for(user).await?;
            version = version.max(v);
            if rank <= self.top {
                in_top += 1;
            }
        }
        Ok((version, in_top))
    }
}

/// 1-based rank of `wanted` when `items` are sorted by descending score.
fn rank_of(items: &[EntityId], scores: &[f32], wanted: &str) -> usize {
    let Some(position) = items.iter().position(|i| i.as_str() == wanted) else {
        return items.len() + 1;
    };
    let own = scores.get(position).copied().unwrap_or(f32::MIN);
    1 + scores.iter().filter(|&&s| s > own).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_strictly_better_scores() {
        let items: Vec<EntityId> = ["a", "b", "c"]
            .iter()
            .map(|s| EntityId::parse(*s).unwrap())
            .collect();
        assert_eq!(rank_of(&items, &[0.2, 0.9, 0.5], "c"), 2);
        assert_eq!(rank_of(&items, &[0.2, 0.9, 0.5], "b"), 1);
        assert_eq!(rank_of(&items, &[0.2, 0.9, 0.5], "zz"), 4);
    }
}
