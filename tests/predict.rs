//! The predictor against a real nats-server: hot swaps under load with no failed request, refusal
//! of damaged or missing versions, rollback, recommendations with provenance, and the candidate
//! path (A/B split, shadow scores, outcome join).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use freshet::serving::{PredictRequest, PredictionBatch, RecommendResponse, Variant};
use freshet::subjects::{BUCKET_FEATURES, STREAM_CONTROL, STREAM_PREDICTIONS};
use freshet_features::bookstore::{ItemState, UserState, item_key, user_key};
use freshet_model::store::Slot;
use freshet_tests::{ModelWriter, Stack, bookstore_row_request, cloud_event, eventually};
use object_store::ObjectStoreExt;
use object_store::path::Path;

async fn serving_version(stack: &Stack, version: u64) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(20),
        &format!("the predictor to serve v{version}"),
        || async {
            let reply = stack
                .predict("bookstore", &bookstore_row_request())
                .await
                .ok()?;
            (reply.version == version).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_swaps_under_load_fail_no_request() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let mut writer = ModelWriter::new(&stack, "bookstore").await?;
    let first = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &first.sha256).await?;
    stack.spawn("predict", &[])?;
    serving_version(&stack, 1).await?;

    // When each version went live, as seen by the writer.
    let live_since: Arc<Mutex<Vec<(u64, Instant)>>> =
        Arc::new(Mutex::new(vec![(1, Instant::now())]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let client = stack.client.clone();
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut failures = Vec::new();
            let body = Bytes::from(serde_json::to_vec(&bookstore_row_request()).unwrap());
            // Bounded: the loop ends when the swaps are done, or after 60 s at most.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let sent = Instant::now();
                let request = async_nats::Request::new()
                    .payload(body.clone())
                    .timeout(Some(Duration::from_secs(5)));
                match client
                    .send_request("freshet.predict.bookstore", request)
                    .await
                {
                    Ok(reply)
                        if reply
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("Nats-Service-Error"))
                            .is_none() =>
                    {
                        let response: freshet::serving::PredictResponse =
                            serde_json::from_slice(&reply.payload).unwrap();
                        answers.push((sent, Instant::now(), response.version));
                    }
                    Ok(reply) => failures.push(format!("{:?}", reply.headers)),
                    Err(err) => failures.push(err.to_string()),
                }
            }
            (answers, failures)
        }));
    }
    for version in 2..=101 {
        let manifest = writer.write_version(version).await?;
        // Noted before the pointer moves: the predictor may swap and answer before `point`
        // returns, never before it is called.
        live_since.lock().unwrap().push((version, Instant::now()));
        writer.point(Slot::Live, version, &manifest.sha256).await?;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    serving_version(&stack, 101).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let live_since = live_since.lock().unwrap().clone();
    let live_at = |t: Instant| {
        live_since
            .iter()
            .filter(|(_, since)| *since <= t)
            .map(|(v, _)| *v)
            .max()
            .unwrap_or(1)
    };
    let mut answered = 0;
    let mut max_lag = 0;
    let mut versions_seen = std::collections::BTreeSet::new();
    for task in load {
        let (answers, failures) = task.await?;
        assert!(
            failures.is_empty(),
            "{} failed requests: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
        // One client's requests are sequential, so the versions it is served never go back:
        // the predictor swaps its live cell once, and every later request reads the new one.
        let mut previous = 0;
        for (sent, received, version) in answers {
            assert!(
                version <= live_at(received),
                "v{version} answered before it went live"
            );
            assert!(
                version >= previous,
                "v{version} answered after v{previous} had been (a swap went back)"
            );
            previous = version;
            // How far behind the writer the predictor ran is a matter of speed (a busy machine
            // loads a version in more than the 60 ms between swaps): measured, not asserted.
            max_lag = max_lag.max(live_at(sent).saturating_sub(version));
            versions_seen.insert(version);
            answered += 1;
        }
    }
    eprintln!(
        "served {answered} requests over {} versions; at most {max_lag} behind the writer",
        versions_seen.len()
    );
    assert!(
        answered > 400,
        "the load generator kept requests flowing ({answered} answers)"
    );
    // Swaps a busy predictor overtakes are skipped (it loads the newest), so not every version
    // is served; the first is, and enough after it to show swaps under load.
    assert!(
        versions_seen.contains(&1) && versions_seen.len() >= 10,
        "requests saw the swaps happen ({} versions: {versions_seen:?})",
        versions_seen.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_missing_versions_are_refused_and_rollback_works() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let mut writer = ModelWriter::new(&stack, "bookstore").await?;
    let v1 = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &v1.sha256).await?;
    stack.spawn("predict", &[])?;
    serving_version(&stack, 1).await?;

    // v2 is stored, then damaged on disk: its bytes no longer match the manifest's checksum.
    let v2 = writer.write_version(2).await?;
    let path = Path::from("models/bookstore/2/model.bin");
    let mut bytes = writer
        .artifacts
        .object_store()
        .get(&path)
        .await?
        .bytes()
        .await?
        .to_vec();
    bytes[30] ^= 0x5a;
    std::fs::write(
        stack
            .dir
            .path()
            .join("artifacts/models/bookstore/2/model.bin"),
        &bytes,
    )?;
    writer.point(Slot::Live, 2, &v2.sha256).await?;
    // v3 was never written at all.
    writer.point(Slot::Live, 3, "0000").await?;

    let refusals = eventually(
        Duration::from_secs(20),
        "two refusals on CONTROL",
        || async {
            let events = stack.read_stream(STREAM_CONTROL, 100).await.ok()?;
            let refused: Vec<serde_json::Value> = events
                .iter()
                .map(|e| e.json())
                .filter(|j| j["kind"] == "version_refused")
                .collect();
            (refused.len() >= 2).then_some(refused)
        },
    )
    .await?;
    assert_eq!(refusals[0]["version"], 2);
    assert!(
        refusals[0]["reason"]
            .as_str()
            .unwrap()
            .contains("verification"),
        "{}",
        refusals[0]
    );
    assert_eq!(refusals[1]["version"], 3);
    assert!(
        refusals[1]["reason"]
            .as_str()
            .unwrap()
            .contains("not in the object store"),
        "{}",
        refusals[1]
    );
    assert!(refusals.iter().all(|r| r["serving"] == 1));
    assert_eq!(
        stack
            .predict("bookstore", &bookstore_row_request())
            .await?
            .version,
        1,
        "v1 kept serving"
    );

    // A good version goes live, then a rollback moves the pointer back to v1.
    let v4 = writer.write_version(4).await?;
    writer.point(Slot::Live, 4, &v4.sha256).await?;
    serving_version(&stack, 4).await?;
    writer.point(Slot::Live, 1, &v1.sha256).await?;
    serving_version(&stack, 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_answer_their_share_shadow_the_rest_and_outcomes_join() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let mut writer = ModelWriter::new(&stack, "bookstore").await?;
    let live = writer.write_version(1).await?;
    let candidate = writer.write_version(2).await?;
    writer.point(Slot::Live, 1, &live.sha256).await?;
    writer.point(Slot::Candidate, 2, &candidate.sha256).await?;

    // A small catalogue and one user in FEATURES, as featurize would have left them.
    let features = stack.js.get_key_value(BUCKET_FEATURES).await?;
    for (i, price) in [5.0, 20.0, 45.0, 12.0].iter().enumerate() {
        let item = ItemState {
            category: Some("poetry".into()),
            price: Some(*price),
            views: 10 * i as u64,
            purchases: i as u64,
            ..Default::default()
        };
        features
            .put(
                item_key(&format!("b{i}").parse()?),
                serde_json::to_vec(&item)?.into(),
            )
            .await?;
    }
    let user = UserState {
        views: 12,
        purchases: 2,
        ..Default::default()
    };
    let user_revision = features
        .put(user_key(&"u7".parse()?), serde_json::to_vec(&user)?.into())
        .await?;

    stack.spawn("predict", &["--candidate-share", "0.5"])?;
    serving_version(&stack, 1).await?;

    // Recommendations: the top 3 of the 4 items, best first, with the revisions they were scored on.
    let recommend = || async {
        let body =
            Bytes::from(serde_json::to_vec(&serde_json::json!({"user": "u7", "top": 3})).unwrap());
        let reply = stack
            .client
            .request("freshet.predict.bookstore.recommend", body)
            .await
            .ok()?;
        let response: RecommendResponse = serde_json::from_slice(&reply.payload).ok()?;
        (response.items.len() == 3).then_some(response)
    };
    let recommended =
        eventually(Duration::from_secs(20), "three recommendations", recommend).await?;
    assert_eq!(recommended.user_revision, user_revision);
    assert!(
        recommended
            .items
            .windows(2)
            .all(|w| w[0].score >= w[1].score),
        "{recommended:?}"
    );
    assert!(recommended.items.iter().all(|r| r.item_revision > 0));
    // The operator's command asks the same endpoint: the same items in the same order.
    let cli = std::process::Command::new(freshet_tests::stack::bin_dir()?.join("freshet"))
        .args(["recommend", "bookstore", "u7", "--top", "3", "--json"])
        .envs(stack.env())
        .output()?;
    assert!(cli.status.success(), "{cli:?}");
    let from_cli: RecommendResponse = serde_json::from_slice(&cli.stdout)?;
    let items = |r: &RecommendResponse| r.items.iter().map(|i| i.item.clone()).collect::<Vec<_>>();
    assert_eq!(items(&from_cli), items(&recommended));
    assert_eq!(from_cli.user_revision, user_revision);
    let too_many = stack
        .client
        .request(
            "freshet.predict.bookstore.recommend",
            Bytes::from_static(br#"{"user":"u7","top":1000}"#),
        )
        .await?;
    assert!(
        too_many
            .headers
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str()
            == "400"
    );

    // Half of the users (by a consistent hash) get the candidate, the same one every time.
    eventually(Duration::from_secs(20), "the candidate to load", || async {
        let request = PredictRequest {
            user: Some("u1".parse().ok()?),
            item: Some("b1".parse().ok()?),
            ..Default::default()
        };
        let mut variants = std::collections::BTreeSet::new();
        for u in 0..40 {
            let request = PredictRequest {
                user: Some(format!("u{u}").parse().ok()?),
                ..request.clone()
            };
            variants.insert(format!(
                "{:?}",
                stack.predict("bookstore", &request).await.ok()?.variant
            ));
        }
        (variants.len() == 2).then_some(())
    })
    .await?;
    let mut answered = Vec::new();
    for u in 0..40 {
        let request = PredictRequest {
            user: Some(format!("u{u}").parse()?),
            item: Some("b1".parse()?),
            ..Default::default()
        };
        let first = stack.predict("bookstore", &request).await?;
        let again = stack.predict("bookstore", &request).await?;
        assert_eq!(first.variant, again.variant, "u{u} stays in its variant");
        assert_eq!(
            first.version,
            if first.variant == Variant::Candidate {
                2
            } else {
                1
            }
        );
        answered.push(first);
    }
    let candidates = answered
        .iter()
        .filter(|r| r.variant == Variant::Candidate)
        .count();
    assert!(
        (8..=32).contains(&candidates),
        "{candidates} of 40 users on the candidate with a 50% share"
    );

    // Every answer is on PREDICTIONS under its id, with the other variant's shadow score beside
    // it.
    let recorded = eventually(
        Duration::from_secs(20),
        "every answer recorded with its shadow",
        || async {
            let messages = stack.read_stream(STREAM_PREDICTIONS, 1000).await.ok()?;
            let mut recorded = std::collections::BTreeMap::new();
            for message in &messages {
                let batch: PredictionBatch = serde_json::from_slice(&message.payload).ok()?;
                for entry in batch.entries {
                    recorded.insert(entry.served.prediction_id.clone(), entry);
                }
            }
            answered
                .iter()
                .all(|r| recorded.contains_key(&r.prediction_id))
                .then_some(recorded)
        },
    )
    .await?;
    for response in &answered {
        let entry = &recorded[&response.prediction_id];
        assert_eq!(entry.served.version, response.version);
        assert_eq!(entry.served.score, response.score);
        let shadow = entry.shadow.as_ref().expect("a candidate was loaded");
        assert_ne!(
            shadow.version, response.version,
            "the other variant shadows"
        );
        assert_ne!(shadow.variant, response.variant);
    }

    // Outcomes for the first ten predictions join to them, with both variants' verdicts.
    for (i, response) in answered.iter().take(10).enumerate() {
        let outcome = cloud_event(
            &format!("o-{i}"),
            "outcome",
            serde_json::json!({"prediction_id": response.prediction_id, "label": 1}),
        );
        stack.publish_event(&outcome).await?;
    }
    let joined = eventually(
        Duration::from_secs(30),
        "ten joined outcomes on CONTROL",
        || async {
            let events = stack.read_stream(STREAM_CONTROL, 1000).await.ok()?;
            let joined: Vec<serde_json::Value> = events
                .iter()
                .map(|e| e.json())
                .filter(|j| j["kind"] == "outcome")
                .collect();
            (joined.len() >= 10).then_some(joined)
        },
    )
    .await?;
    assert_eq!(joined.len(), 10, "each outcome joined once");
    for outcome in &joined {
        let served = &outcome["served"];
        let shadow = &outcome["shadow"];
        assert!(
            served["version"].is_u64() && shadow["version"].is_u64(),
            "{outcome}"
        );
        assert_ne!(served["version"], shadow["version"], "{outcome}");
        assert_eq!(served["correct"], served["score"].as_f64().unwrap() > 0.5);
    }

    // Withdrawing the candidate sends everyone back to the live version.
    writer.withdraw(Slot::Candidate).await?;
    eventually(
        Duration::from_secs(20),
        "every user on the live version",
        || async {
            let mut all_live = true;
            for u in 0..40 {
                let request = PredictRequest {
                    user: Some(format!("u{u}").parse().ok()?),
                    item: Some("b1".parse().ok()?),
                    ..Default::default()
                };
                all_live &=
                    stack.predict("bookstore", &request).await.ok()?.variant == Variant::Live;
            }
            all_live.then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_live_version_fails_readiness_until_a_fresh_one_arrives() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let mut writer = ModelWriter::new(&stack, "bookstore").await?;
    let v1 = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &v1.sha256).await?;
    let port = freshet_tests::stack::free_port()?;
    stack.spawn(
        "predict",
        &["--max-model-age", "3s", "--http-port", &port.to_string()],
    )?;
    let http = reqwest::Client::new();
    let readyz = || {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16())
        }
    };
    eventually(
        Duration::from_secs(20),
        "ready with a fresh version",
        || async { (readyz().await? == 200).then_some(()) },
    )
    .await?;
    eventually(
        Duration::from_secs(20),
        "not ready once v1 is older than 3 s",
        || async { (readyz().await? == 503).then_some(()) },
    )
    .await?;
    let metrics = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let age: f64 = metrics
        .lines()
        .find(|l| l.starts_with("freshet_model_age_seconds"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the model age gauge is exported");
    assert!(age > 3.0, "{age}");
    // It still answers: staleness is for the orchestrator to act on, not a reason to fail requests.
    assert_eq!(
        stack
            .predict("bookstore", &bookstore_row_request())
            .await?
            .version,
        1
    );
    let v2 = writer.write_version(2).await?;
    writer.point(Slot::Live, 2, &v2.sha256).await?;
    eventually(
        Duration::from_secs(20),
        "ready again with a fresh version",
        || async { (readyz().await? == 200).then_some(()) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predictor_started_on_a_corrupt_live_version_serves_the_newest_good_one()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let mut writer = ModelWriter::new(&stack, "bookstore").await?;
    let v1 = writer.write_version(1).await?;
    writer.point(Slot::Live, 1, &v1.sha256).await?;
    let v2 = writer.write_version(2).await?;
    writer.point(Slot::Live, 2, &v2.sha256).await?;
    let v3 = writer.write_version(3).await?;
    writer.point(Slot::Live, 3, &v3.sha256).await?;
    // v3 is damaged on disk before any predictor starts, and v2 is gone: the newest version of
    // the pointer's history that verifies is v1.
    let damaged = stack
        .dir
        .path()
        .join("artifacts/models/bookstore/3/model.bin");
    let mut bytes = std::fs::read(&damaged)?;
    bytes[30] ^= 0x5a;
    std::fs::write(&damaged, &bytes)?;
    writer.artifacts.delete_version(&writer.model, 2).await?;

    let port = freshet_tests::stack::free_port()?;
    stack.spawn("predict", &["--http-port", &port.to_string()])?;
    let http = reqwest::Client::new();
    let probe = |path: &'static str| {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .ok()?;
            Some((response.status().as_u16(), response.text().await.ok()?))
        }
    };
    let gauge = |metrics: &str, name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("freshet_{name}{{")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };

    serving_version(&stack, 1).await?;
    // Readiness is re-evaluated twice a second.
    let readyz = eventually(
        Duration::from_secs(5),
        "/readyz naming the fallback",
        || async {
            let (status, text) = probe("/readyz").await?;
            (status == 200 && text.contains("fallback")).then_some(text)
        },
    )
    .await?;
    assert!(
        readyz.contains("version 1") && readyz.contains("version 3"),
        "{readyz}"
    );
    let (_, metrics) = probe("/metrics").await.unwrap();
    assert_eq!(gauge(&metrics, "serving_fallback"), Some(1.0), "{metrics}");
    assert_eq!(gauge(&metrics, "live_version"), Some(1.0), "{metrics}");

    // Live is repaired: the predictor moves on to it, and no longer says it falls back.
    let v4 = writer.write_version(4).await?;
    writer.point(Slot::Live, 4, &v4.sha256).await?;
    serving_version(&stack, 4).await?;
    eventually(Duration::from_secs(5), "/readyz without a note", || async {
        let (status, text) = probe("/readyz").await?;
        (status == 200 && text == "ready\n").then_some(())
    })
    .await?;
    let (_, metrics) = probe("/metrics").await.unwrap();
    assert_eq!(gauge(&metrics, "serving_fallback"), Some(0.0), "{metrics}");
    assert_eq!(gauge(&metrics, "live_version"), Some(4.0), "{metrics}");
    Ok(())
}
