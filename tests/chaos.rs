//! Chaos: a long replay of bookstore events, a tenth of them malformed or hostile, through
//! featurize and train while processes are killed, the server is restarted and paused; then an
//! audit that nothing was lost, nothing was learned twice and every bad event was kept with its
//! reason.
//!
//! Size and seed come from the environment: `FRESHET_CHAOS_ACTIONS` (default 3,000, the size
//! `make test` runs; `make chaos` runs 1,000,000) and `FRESHET_CHAOS_SEED` (default 7). Faults are
//! scheduled by position in the replay, from the seed:
//! - SIGKILL of featurize or train (one per 150 actions, at least 6 and at most 40), each
//!   restarted after 50–500 ms; every fifth one is a SIGTERM of train instead (a graceful stop in
//!   the middle of a batch);
//! - nats-server restarted at 25 %, 50 % and 75 % of the replay;
//! - nats-server paused (SIGSTOP) for 1.5 s at 60 %, then resumed (SIGCONT), a network pause as
//!   the clients see it;
//! - a schema race: the first event, sent while featurize starts and declares the bookstore
//!   schema, is an `example` for the bookstore model with 3 features. Whichever comes first, it
//!   must not choose the model's schema: train dead-letters it (`schema_mismatch`) and learns
//!   every bookstore example.
//!
//! A predictor serves throughout and is asked every 20 ms; it may fail only while the server is
//! away (and for 10 s after, while clients reconnect).
//!
//! The audit fails on any discrepancy and prints a table: every valid action is one example
//! (none lost, none twice); the versions' learned ranges tile the examples stream exactly;
//! every example train did not learn is on the dead-letter subject as quarantined (or, the stray
//! one, as `schema_mismatch`); every bad event
//! is on the dead-letter subject with a reason; repeated event ids added nothing; the live model's
//! weights are finite.
//!
//! A second scenario replays a generated bookstore file with `freshet replay` into featurize at
//! its defaults (the 30-minute label horizon, where an event stored late is refused as `late`),
//! with a featurize standing by for the lease, one event dated 2099 in the file, and the server
//! killed at a quarter of the replay (SIGKILL, 2 s down) and stopped at half of it for 16 s (long
//! enough for every request the standby makes to time out, and for the holder's lease to age out).
//! A featurize that exits is started again, as Kubernetes would; the one holding the lease is
//! killed at three quarters. Its audit: the replay finished; every line is stored once, in file
//! order; featurize applied every valid action exactly once (users' and items' counts), refused
//! only the 2099 event (as `future`) and nothing as `late`; no featurize exited but on purpose
//! (status 3, a lease lost while the server was away). Its size is `FRESHET_CHAOS_ACTIONS`, at
//! most 200,000.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use freshet::examples::ExampleRecord;
use freshet::ids::ModelName;
use freshet::subjects::{BUCKET_MODELS, HEADER_REASON, STREAM_DEAD_LETTER, STREAM_EXAMPLES};
use freshet_model::ModelScorer;
use freshet_model::store::{ArtifactStore, Pointers};
use freshet_tests::{
    Stack, bookstore_action, bookstore_events, event_message, eventually, live_through,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ITEMS: usize = 40;
const PREFIX: &str = "chaos";

/// Calls `visit` with the reason header and payload of every message of `stream`, reading it in
/// batches with an ephemeral consumer (the streams of a full run do not fit in memory).
async fn for_each_message(
    stack: &Stack,
    stream: &str,
    mut visit: impl FnMut(Option<&str>, &[u8]),
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let consumer = stack
        .js
        .get_stream(stream)
        .await?
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    loop {
        let mut batch = consumer.fetch().max_messages(1_000).messages().await?;
        let mut any = false;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!(e))?;
            let reason = message
                .headers
                .as_ref()
                .and_then(|h| h.get(HEADER_REASON))
                .map(|v| v.as_str());
            visit(reason, &message.payload);
            any = true;
        }
        if !any {
            return Ok(());
        }
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The kinds of bad input, one per bad event in turn.
const BAD_KINDS: [&str; 10] = [
    "truncated_json",
    "wrong_types",
    "huge_string",
    "huge_array",
    "deep_nesting",
    "non_finite_and_huge_numbers",
    "unknown_type",
    "missing_id",
    "invalid_utf8",
    "repeated_id",
];

/// Bad event `n` of kind `kind`: its bytes carry the marker `bad-<n>` so the audit can find it
/// on the dead-letter subject. `None` for a repeated id, which is a valid event sent again.
fn bad_event(n: usize, kind: &str) -> Option<(String, Vec<u8>)> {
    let id = format!("bad-{n}");
    let envelope = |ty: &str, data: serde_json::Value| {
        serde_json::json!({"specversion": "1.0", "id": id, "source": "chaos", "type": ty,
            "time": "2026-11-26T12:00:00Z", "data": data})
        .to_string()
        .into_bytes()
    };
    let bytes = match kind {
        "truncated_json" => {
            format!(r#"{{"specversion":"1.0","id":"{id}","type":"user_action","data":{{"user":"#)
                .into_bytes()
        }
        "wrong_types" => envelope(
            "user_action",
            serde_json::json!({"user": 42, "item": [1, 2], "action": true}),
        ),
        "huge_string" => envelope(
            "user_action",
            serde_json::json!({"user": "x".repeat(70_000), "item": "b1", "action": "view"}),
        ),
        "huge_array" => envelope(
            "new_item",
            serde_json::json!({"item": "b1", "category": (0..5_000).collect::<Vec<u32>>(), "price": 3.0}),
        ),
        "deep_nesting" => {
            let mut nested = String::from("1");
            for _ in 0..2_000 {
                nested = format!(r#"{{"a":{nested}}}"#);
            }
            format!(r#"{{"specversion":"1.0","id":"{id}","type":"user_action","data":{nested}}}"#)
                .into_bytes()
        }
        "non_finite_and_huge_numbers" => match n % 3 {
            0 => envelope(
                "new_item",
                serde_json::json!({"item": id, "category": "c1", "price": 1e308}),
            ),
            1 => format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"chaos","type":"new_item","data":{{"item":"b1","category":"c1","price":NaN}}}}"#
            )
            .into_bytes(),
            _ => format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"chaos","type":"new_item","data":{{"item":"b1","category":"c1","price":1e999}}}}"#
            )
            .into_bytes(),
        },
        "unknown_type" => envelope("refund", serde_json::json!({"user": "u1", "amount": 3})),
        "missing_id" => serde_json::json!({"specversion": "1.0", "source": "chaos", "type": "user_action",
            "data": {"user": id, "item": "b1", "action": "view"}})
        .to_string()
        .into_bytes(),
        "invalid_utf8" => {
            let mut bytes = format!(r#"{{"id":"{id}","user":""#).into_bytes();
            bytes.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, b'"', b'}']);
            bytes
        }
        _ => return None,
    };
    Some((kind.to_string(), bytes))
}

/// What happened during the replay.
#[derive(Debug, Default)]
struct Faults {
    kills: usize,
    terminations: usize,
    server_restarts: usize,
    server_pauses: usize,
    publish_retries: usize,
}

/// The running function processes, by name, and their restarts.
struct Functions {
    featurize: usize,
    train: usize,
}

const FEATURIZE_ARGS: [&str; 2] = ["--label-horizon", "0s"];

/// The id of the stray example of the schema race.
const STRAY: &str = "schema-race";
const TRAIN_ARGS: [&str; 4] = ["--keep-versions", "0", "--publish-interval", "300ms"];

/// How long after the server is back a client may still fail while it reconnects.
const RECONNECT: Duration = Duration::from_secs(10);

/// Asks the predictor for one prediction every 20 ms until `stop`, once it first answers;
/// returns when each request was sent and whether it succeeded.
async fn request_predictions(
    client: async_nats::Client,
    subjects: freshet::subjects::Subjects,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<(Instant, bool)>> {
    let model = ModelName::parse("bookstore")?;
    let subject = freshet::serving::endpoint_single(&subjects, &model);
    let request = freshet_tests::bookstore_row_request();
    let ask = || {
        freshet::serving::call::<_, freshet::serving::PredictResponse>(
            &client,
            subject.clone(),
            &request,
            Duration::from_secs(2),
        )
    };
    let ready = Instant::now() + Duration::from_secs(120);
    while ask().await.is_err() {
        anyhow::ensure!(Instant::now() < ready, "the predictor never answered");
        if stop.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut outcomes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        outcomes.push((at, ask().await.is_ok()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(outcomes)
}

/// A fault the schedule injects.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL (every fifth time SIGTERM of train) of a function, restarted after a pause.
    Kill,
    RestartServer,
    PauseServer,
}

/// Publishes, retrying while the server is away; a retried valid event keeps its id, so it is
/// stored once.
async fn publish(
    js: &async_nats::jetstream::Context,
    subject: String,
    message: PublishMessage,
    retries: &AtomicUsize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            js.send_publish(subject.clone(), message.clone())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(_) if Instant::now() < deadline => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => anyhow::bail!("publishing for a minute: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_learned_twice_and_every_bad_event_is_kept() -> anyhow::Result<()> {
    let actions = env_or("FRESHET_CHAOS_ACTIONS", 3_000) as usize;
    let seed = env_or("FRESHET_CHAOS_SEED", 7);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stack = Stack::start().await?;
    let model = ModelName::parse("bookstore")?;
    let mut functions = Functions {
        featurize: stack.spawn("featurize", &FEATURIZE_ARGS)?,
        train: stack.spawn("train", &TRAIN_ARGS)?,
    };
    // The schema race: while featurize starts, an example for its model with other features.
    let no_retries = AtomicUsize::new(0);
    let stray = freshet_tests::cloud_event(
        STRAY,
        "example",
        serde_json::json!({"model": "bookstore", "features": [0.1, 0.2, 0.3], "label": 1}),
    );
    let (subject, message) = event_message(&stack.subjects, &stray)?;
    publish(&stack.js, subject, message, &no_retries).await?;
    // A predictor serves throughout; it is never killed, so its only excuse for a failed request
    // is a server that was down or paused.
    stack.spawn("predict", &["--record-predictions", "false"])?;
    let mut faults = Faults::default();

    // The catalogue first, so every action finds its book.
    for item in bookstore_events(ITEMS, 0, PREFIX) {
        let (subject, message) = event_message(&stack.subjects, &item)?;
        publish(&stack.js, subject, message, &no_retries).await?;
    }
    stack.await_items(ITEMS).await?;

    // The schedule of faults, by action index.
    let kills = (actions / 150).clamp(6, 40);
    let mut kill_at: BTreeSet<usize> = BTreeSet::new();
    while kill_at.len() < kills {
        kill_at.insert(rng.random_range(actions / 20..actions));
    }
    let restart_at: BTreeSet<usize> = [actions / 4, actions / 2, 3 * actions / 4].into();
    let pause_at = 3 * actions / 5;

    // The replay, generated as it is published (a million events do not fit in memory as
    // JSON values): each valid action, and after every ninth a bad event, a tenth of the stream.
    // Bad event k is of kind BAD_KINDS[k % 10]; the repeated-id kind sends an earlier valid
    // action again. A task of its own publishes, so faults land while events flow and the
    // publisher has to ride them out.
    let bad_total = (0..actions).filter(|n| n % 9 == 8).count();
    let bad_kind = |k: usize| BAD_KINDS[k % BAD_KINDS.len()];
    let repeated = (0..bad_total)
        .filter(|&k| bad_kind(k) == "repeated_id")
        .count();
    let progress = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let stop_requests = Arc::new(AtomicBool::new(false));
    let requester = tokio::spawn(request_predictions(
        stack.client.clone(),
        stack.subjects.clone(),
        stop_requests.clone(),
    ));
    let mut server_away: Vec<(Instant, Instant)> = Vec::new();
    let publisher = tokio::spawn({
        let (js, subjects) = (stack.js.clone(), stack.subjects.clone());
        let (progress, retries) = (progress.clone(), retries.clone());
        async move {
            for n in 0..actions {
                let (subject, message) =
                    event_message(&subjects, &bookstore_action(n, ITEMS, PREFIX))?;
                publish(&js, subject, message, &retries).await?;
                if n % 9 == 8 {
                    let k = n / 9;
                    let (subject, message) = match bad_event(k, bad_kind(k)) {
                        Some((_, bytes)) => (
                            subjects.event("user_action", "chaos"),
                            PublishMessage::build().payload(Bytes::from(bytes)),
                        ),
                        None => event_message(
                            &subjects,
                            &bookstore_action(k * 7_919 % (n + 1), ITEMS, PREFIX),
                        )?,
                    };
                    publish(&js, subject, message, &retries).await?;
                }
                progress.store(n + 1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    });

    // The faults, in order of the position at which each is due.
    let mut schedule: Vec<(usize, Fault)> = kill_at.iter().map(|&n| (n, Fault::Kill)).collect();
    schedule.extend(restart_at.iter().map(|&n| (n, Fault::RestartServer)));
    schedule.push((pause_at, Fault::PauseServer));
    schedule.sort_by_key(|(n, _)| *n);
    let started = Instant::now();
    for (at, fault) in schedule {
        while progress.load(Ordering::Relaxed) < at && !publisher.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match fault {
            Fault::Kill => {
                let terminate = (faults.kills + faults.terminations) % 5 == 4;
                let victim = if terminate || rng.random_bool(0.5) {
                    "train"
                } else {
                    "featurize"
                };
                let index = if victim == "train" {
                    functions.train
                } else {
                    functions.featurize
                };
                if terminate {
                    stack.process(index).terminate(Duration::from_secs(10))?;
                    faults.terminations += 1;
                } else {
                    stack.process(index).kill()?;
                    faults.kills += 1;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
                let args: &[&str] = if victim == "train" {
                    &TRAIN_ARGS
                } else {
                    &FEATURIZE_ARGS
                };
                let fresh = stack.spawn(victim, args)?;
                if victim == "train" {
                    functions.train = fresh;
                } else {
                    functions.featurize = fresh;
                }
            }
            Fault::RestartServer => {
                let from = Instant::now();
                tokio::task::block_in_place(|| stack.nats.restart())?;
                server_away.push((from, Instant::now()));
                faults.server_restarts += 1;
            }
            Fault::PauseServer => {
                let from = Instant::now();
                stack.nats.pause();
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                stack.nats.resume();
                server_away.push((from, Instant::now()));
                faults.server_pauses += 1;
            }
        }
    }
    publisher.await??;
    faults.publish_retries = retries.load(Ordering::Relaxed);
    stop_requests.store(true, Ordering::Relaxed);
    let predictions = requester.await??;
    // A request fails excusably from the moment the server went away until clients have had
    // time to reconnect after it came back.
    let excused = |at: Instant| {
        server_away
            .iter()
            .any(|&(from, to)| at + Duration::from_millis(100) >= from && at <= to + RECONNECT)
    };
    let failed: Vec<Instant> = predictions
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(at, _)| *at)
        .collect();
    let failed_unexcused = failed.iter().filter(|&&at| !excused(at)).count();
    let replay = started.elapsed();

    // Every valid action becomes one example, and train learns up to the last.
    let logs = |stack: &Stack, functions: &Functions| {
        let tail = |log: String| log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        format!(
            "featurize log (newest first):\n{}\ntrain log (newest first):\n{}",
            tail(stack.log_of("featurize", functions.featurize)),
            tail(stack.log_of("train", functions.train))
        )
    };
    eventually(
        Duration::from_secs(300),
        "one example per action",
        || async {
            (stack.stream_len(STREAM_EXAMPLES).await.ok()? as usize >= actions).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack, &functions)))?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let last = stack.last_sequence(STREAM_EXAMPLES).await?;
    let live = eventually(Duration::from_secs(300), "every example learned", || {
        live_through(&pointers, &artifacts, &model, last)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack, &functions)))?;
    // featurize reaches the bad events after the last valid one: wait until the dead-letter
    // subject holds at least as many messages as bad events were sent.
    eventually(
        Duration::from_secs(300),
        "every bad event handled",
        || async {
            (stack.stream_len(STREAM_DEAD_LETTER).await.ok()? as usize >= bad_total - repeated)
                .then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack, &functions)))?;
    // Time for a late duplicate to show, if there were one.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Examples: exactly one per valid action (counted by the action's number).
    let mut examples_per_action = vec![0u32; actions];
    let (mut examples, mut unexpected, mut strays) = (0usize, 0usize, 0usize);
    for_each_message(&stack, STREAM_EXAMPLES, |_, payload| {
        examples += 1;
        let example = ExampleRecord::decode(payload).ok();
        if example.as_ref().is_some_and(|e| e.source_event == STRAY) {
            strays += 1;
            return;
        }
        let action = example
            .and_then(|e| {
                e.source_event
                    .strip_prefix(&format!("{PREFIX}-act-"))?
                    .parse::<usize>()
                    .ok()
            })
            .filter(|&n| n < actions);
        match action {
            Some(n) => examples_per_action[n] += 1,
            None => unexpected += 1,
        }
    })
    .await?;
    let duplicates = examples_per_action.iter().filter(|&&c| c > 1).count();
    let lost = examples_per_action.iter().filter(|&&c| c == 0).count();

    // Dead letters: each bad event found by its marker, with a reason; train's quarantine.
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut kept = vec![false; bad_total];
    let (mut quarantined, mut stray_refused) = (0u64, 0u64);
    for_each_message(&stack, STREAM_DEAD_LETTER, |reason, payload| {
        let reason = reason.unwrap_or("(none)").to_string();
        if reason == "quarantined" {
            quarantined += 1;
        } else if reason == "schema_mismatch" {
            stray_refused += u64::from(payload.windows(STRAY.len()).any(|w| w == STRAY.as_bytes()));
        } else if let Some(at) = payload.windows(4).position(|w| w == b"bad-") {
            let digits: String = payload[at + 4..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| char::from(b))
                .collect();
            if let Some(flag) = digits.parse::<usize>().ok().and_then(|k| kept.get_mut(k)) {
                *flag = true;
            }
        }
        *by_reason.entry(reason).or_default() += 1;
    })
    .await?;
    let bad_lost: Vec<(usize, &str)> = (0..bad_total)
        .filter(|&k| bad_kind(k) != "repeated_id" && !kept[k])
        .map(|k| (k, bad_kind(k)))
        .collect();

    // The lineage: learned ranges tile 1..=last; learned + quarantined = every example.
    let mut ranges = Vec::new();
    let mut manifest = live.clone();
    loop {
        if let Some(range) = manifest.learned {
            ranges.push(range);
        }
        match manifest.parent {
            Some(parent) => manifest = artifacts.manifest(&model, parent).await?,
            None => break,
        }
    }
    ranges.reverse();
    let gaps_or_overlaps = ranges
        .windows(2)
        .filter(|pair| pair[1].first != pair[0].last + 1)
        .count();
    let (_, bytes) = artifacts.load(&model, live.version).await?;
    let scorer = ModelScorer::from_bytes(&bytes)?;
    let probes = [
        vec![0.0f32; scorer.n_features()],
        vec![1.0f32; scorer.n_features()],
    ];
    let finite = probes
        .iter()
        .all(|row| scorer.score(row).is_ok_and(f32::is_finite));

    println!(
        "\nchaos audit (seed {seed}, replay {:.1} s)",
        replay.as_secs_f64()
    );
    println!("| faults | count |\n| --- | ---: |");
    println!("| SIGKILL of featurize or train | {} |", faults.kills);
    println!("| SIGTERM of train | {} |", faults.terminations);
    println!("| nats-server restarts | {} |", faults.server_restarts);
    println!(
        "| nats-server pauses (SIGSTOP 1.5 s) | {} |",
        faults.server_pauses
    );
    println!("| publishes retried | {} |", faults.publish_retries);
    println!("\n| events and examples | count |\n| --- | ---: |");
    println!("| valid actions published | {actions} |");
    println!("| bad events published | {} |", bad_total - repeated);
    println!("| valid events sent again (repeated id) | {repeated} |");
    println!("| examples | {examples} |");
    println!(
        "| examples learned by the live lineage | {} |",
        live.metrics.examples_total
    );
    println!("| examples quarantined | {quarantined} |");
    println!("| stray examples of the schema race refused | {stray_refused} of {strays} |");
    println!("| examples twice (duplicates) | {duplicates} |");
    println!("| actions without an example (lost) | {lost} |");
    println!(
        "| bad events not on the dead-letter subject | {} |",
        bad_lost.len()
    );
    println!("| learned ranges with a gap or overlap | {gaps_or_overlaps} |");
    println!("| live weights finite | {finite} |");
    println!("| predictions requested | {} |", predictions.len());
    println!(
        "| predictions failed while the server was away | {} |",
        failed.len() - failed_unexcused
    );
    println!("| predictions failed otherwise | {failed_unexcused} |");
    println!("\n| dead letters by reason | count |\n| --- | ---: |");
    for (reason, count) in &by_reason {
        println!("| {reason} | {count} |");
    }

    assert_eq!(duplicates, 0, "an action became two examples");
    assert_eq!(lost, 0, "an action became no example");
    assert_eq!(unexpected, 0, "an example from nowhere");
    assert_eq!(examples, actions + strays);
    assert_eq!(
        strays, 1,
        "the stray example of the schema race became one example"
    );
    assert_eq!(
        stray_refused, 1,
        "the stray example was refused as schema_mismatch"
    );
    assert_eq!(
        live.schema,
        freshet_features::bookstore::schema(),
        "the declared schema, whoever came first"
    );
    assert!(
        bad_lost.is_empty(),
        "bad events not dead-lettered: {bad_lost:?}"
    );
    assert!(
        !by_reason.contains_key("(none)"),
        "a dead letter without a reason"
    );
    assert_eq!(gaps_or_overlaps, 0, "learned ranges: {ranges:?}");
    assert_eq!(ranges.first().map(|r| r.first), Some(1), "{ranges:?}");
    assert_eq!(ranges.last().map(|r| r.last), Some(last), "{ranges:?}");
    assert_eq!(
        live.metrics.examples_total + quarantined + stray_refused,
        last,
        "every example learned once, quarantined or (the stray one) refused"
    );
    assert!(finite, "the live model's scores are finite");
    assert_eq!(failed_unexcused, 0, "predictions failed with the server up");
    assert!(
        predictions.len() > 100,
        "the predictor was asked throughout"
    );
    assert!(faults.kills + faults.terminations >= 6 && faults.server_restarts == 3);
    Ok(())
}

/// The featurize processes of the replay scenario, started again whenever one exits.
struct Replicas {
    running: Vec<usize>,
    /// Exit statuses of the ones that exited by themselves.
    exits: Vec<Option<i32>>,
    killed: usize,
}

impl Replicas {
    /// Starts again every replica that exited, recording how it exited.
    fn restart_exited(&mut self, stack: &mut Stack) -> anyhow::Result<()> {
        let mut still = Vec::new();
        for index in std::mem::take(&mut self.running) {
            match stack.process(index).try_status()? {
                Some(status) => {
                    self.exits.push(status.code());
                    still.push(stack.spawn("featurize", &[])?);
                }
                None => still.push(index),
            }
        }
        self.running = still;
        Ok(())
    }

    /// Kills the replica holding the lease and starts another.
    async fn kill_holder(&mut self, stack: &mut Stack) -> anyhow::Result<bool> {
        let leases = stack
            .js
            .get_key_value(freshet::subjects::BUCKET_LEASES)
            .await?;
        let Some(holder) = leases.get("featurize.featurize").await? else {
            return Ok(false);
        };
        let holder = String::from_utf8_lossy(&holder).to_string();
        let pid: Option<u32> = holder.split('-').nth(1).and_then(|p| p.parse().ok());
        let Some(position) = self
            .running
            .iter()
            .position(|&i| stack.process(i).pid() == pid)
        else {
            return Ok(false);
        };
        let index = self.running.remove(position);
        stack.process(index).kill()?;
        self.killed += 1;
        self.running.push(stack.spawn("featurize", &[])?);
        Ok(true)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_through_server_restarts_and_a_takeover_loses_no_valid_event() -> anyhow::Result<()>
{
    use freshet::events::{Event, EventData, UserAction};
    use freshet::subjects::{BUCKET_FEATURES, STREAM_EVENTS};
    use freshet_features::bookstore::{ItemState, UserState};
    use futures::TryStreamExt;

    let actions = env_or("FRESHET_CHAOS_ACTIONS", 3_000).min(200_000) as usize;
    let seed = env_or("FRESHET_CHAOS_SEED", 7);
    let mut stack = Stack::start().await?;

    // The file: a generated bookstore, and at a third of it one action dated 2099 on an item
    // that is acted on after it.
    let mut events = freshet_cli::bookstore::generate(&freshet_cli::bookstore::BookstoreConfig {
        users: 100,
        items: ITEMS,
        actions,
        seed,
        viral: None,
        changes: Vec::new(),
        traffic: None,
    });
    let at = events.len() / 3;
    let EventData::UserAction(later) = &events[at].data else {
        anyhow::bail!("event {at} of the file is not an action");
    };
    let future = Event {
        id: "chaos-from-2099".into(),
        source: "chaos".into(),
        time: chrono::DateTime::parse_from_rfc3339("2099-01-01T00:00:00Z")
            .ok()
            .map(|t| t.to_utc()),
        data: EventData::UserAction(UserAction {
            user: "u9999".parse()?,
            item: later.item.clone(),
            action: freshet::events::Action::View,
        }),
    };
    events.insert(at, future);
    let valid_actions = events
        .iter()
        .filter(|e| e.id != "chaos-from-2099" && matches!(e.data, EventData::UserAction(_)))
        .count() as u64;
    let file = stack.dir.path().join("bookstore.jsonl");
    let mut text = Vec::new();
    for event in &events {
        text.extend(event.to_json_bytes());
        text.push(b'\n');
    }
    std::fs::write(&file, text)?;

    // featurize at its defaults, a second one standing by for the lease.
    let mut replicas = Replicas {
        running: vec![stack.spawn("featurize", &[])?],
        exits: Vec::new(),
        killed: 0,
    };
    eventually(
        Duration::from_secs(30),
        "the first featurize holds the lease",
        || async {
            let leases = stack
                .js
                .get_key_value(freshet::subjects::BUCKET_LEASES)
                .await
                .ok()?;
            leases.get("featurize.featurize").await.ok()?
        },
    )
    .await?;
    replicas.running.push(stack.spawn("featurize", &[])?);

    // Paced so that a small run lasts about eight seconds; a large one goes as fast as it can.
    let total = events.len() as u64;
    let rate = (total as f64 / 8.0).max(1.0).to_string();
    let replay_log = std::fs::File::create(stack.dir.path().join("replay.log"))?;
    let mut replaying = std::process::Command::new(freshet_cli::stack::bin_dir()?.join("freshet"))
        .args(["replay", "--json", "--rate", &rate])
        .arg(&file)
        .envs(stack.env())
        .stdout(std::process::Stdio::piped())
        .stderr(replay_log)
        .spawn()?;

    let started = Instant::now();
    let (mut killed_server, mut stopped_server, mut killed_holder) = (false, false, false);
    let replayed = loop {
        replicas.restart_exited(&mut stack)?;
        if let Some(status) = replaying.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the replay did not finish"
        );
        let stored = stack.stream_len(STREAM_EVENTS).await.unwrap_or(0);
        if !killed_server && stored >= total / 4 {
            tokio::task::block_in_place(|| {
                stack.nats.kill_and_restart_after(Duration::from_secs(2))
            })?;
            killed_server = true;
        } else if killed_server && !stopped_server && stored >= total / 2 {
            tokio::task::block_in_place(|| stack.nats.restart_after(Duration::from_secs(16)))?;
            stopped_server = true;
        } else if stopped_server && !killed_holder && stored >= 3 * total / 4 {
            killed_holder = replicas.kill_holder(&mut stack).await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut summary = String::new();
    if let Some(mut out) = replaying.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut summary)?;
    }
    let replay_log = std::fs::read_to_string(stack.dir.path().join("replay.log"))?;
    let logs = |stack: &Stack, replicas: &Replicas| {
        replicas
            .running
            .iter()
            .map(|&i| {
                let log = stack.log_of("featurize", i);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!("featurize {i} (newest first):\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(replayed.code(), Some(0), "{summary}\n{replay_log}");
    // A fast replay can end before the holder could be killed (the lease changing hands after
    // the server's stop, when no running replica holds it): the takeover then happens while
    // featurize works through what the replay stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !killed_holder && Instant::now() < deadline {
        replicas.restart_exited(&mut stack)?;
        killed_holder = replicas.kill_holder(&mut stack).await?;
        if !killed_holder {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // featurize takes everything, whoever holds the lease by then.
    let stream = stack.js.get_stream(STREAM_EVENTS).await?;
    let caught_up = eventually(
        Duration::from_secs(600),
        "featurize through the replay",
        || async {
            let info = stream.consumer_info("featurize").await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
    replicas.restart_exited(&mut stack)?;
    caught_up.map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&stack, &replicas)))?;

    // Every line once, in file order.
    let mut position = 0usize;
    let mut out_of_order: Option<(usize, String)> = None;
    for_each_message(&stack, STREAM_EVENTS, |_, payload| {
        let id = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .unwrap_or_default();
        if out_of_order.is_none()
            && events.get(position).map(|e| e.id.as_str()) != Some(id.as_str())
        {
            out_of_order = Some((position, id));
        }
        position += 1;
    })
    .await?;

    // Every valid action applied once to its user and its item; only the 2099 one refused.
    let features = stack.js.get_key_value(BUCKET_FEATURES).await?;
    let keys: Vec<String> = features.keys().await?.try_collect().await?;
    let (mut by_users, mut by_items) = (0u64, 0u64);
    for key in &keys {
        let Some(bytes) = features.get(key).await? else {
            continue;
        };
        if key.starts_with("user.") {
            let user: UserState = serde_json::from_slice(&bytes)?;
            by_users += user.views + user.carts + user.purchases;
        } else if key.starts_with("item.") {
            let item: ItemState = serde_json::from_slice(&bytes)?;
            by_items += item.views + item.carts + item.purchases;
        }
    }
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut refused_ids = Vec::new();
    for_each_message(&stack, STREAM_DEAD_LETTER, |reason, payload| {
        *by_reason
            .entry(reason.unwrap_or("(none)").to_string())
            .or_default() += 1;
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) {
            refused_ids.push(value["id"].as_str().unwrap_or_default().to_string());
        }
    })
    .await?;
    let unexpected_exits: Vec<Option<i32>> = replicas
        .exits
        .iter()
        .copied()
        .filter(|&c| c != Some(3))
        .collect();

    println!(
        "\nreplay chaos audit (seed {seed}, {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!("| what | count |\n| --- | ---: |");
    println!("| lines in the file | {total} |");
    println!("| valid actions | {valid_actions} |");
    println!("| events stored | {position} |");
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap_or_default();
    println!(
        "| replay: published / duplicates / sends repeated | {} / {} / {} |",
        summary["published"], summary["duplicates"], summary["resent"]
    );
    println!(
        "| server killed (2 s down) / stopped (16 s down) | {} / {} |",
        u8::from(killed_server),
        u8::from(stopped_server)
    );
    println!("| lease holders killed | {} |", replicas.killed);
    println!(
        "| featurize exits, status 3 (lease lost, deliberate) | {} |",
        replicas.exits.len() - unexpected_exits.len()
    );
    println!(
        "| featurize exits, any other status | {} |",
        unexpected_exits.len()
    );
    println!("| actions counted by users / by items | {by_users} / {by_items} |");
    for (reason, count) in &by_reason {
        println!("| dead-lettered {reason} | {count} |");
    }

    assert!(
        killed_server && stopped_server && killed_holder,
        "every fault happened"
    );
    assert!(
        out_of_order.is_none(),
        "stored out of file order at {out_of_order:?}"
    );
    assert_eq!(position as u64, total, "every line stored once");
    assert!(
        unexpected_exits.is_empty(),
        "featurize exited with {unexpected_exits:?}\n{}",
        logs(&stack, &replicas)
    );
    assert_eq!(refused_ids, ["chaos-from-2099"], "{by_reason:?}");
    assert_eq!(by_reason.get("future"), Some(&1));
    assert_eq!(
        (by_users, by_items),
        (valid_actions, valid_actions),
        "every valid action applied once"
    );
    Ok(())
}
