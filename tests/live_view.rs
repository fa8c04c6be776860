//! `freshet view` against a running pipeline (featurize, train, drift, predict), opened in
//! headless Chromium: every chart renders with data from what the system recorded (stream rates,
//! freshness per live version, the live pointer's moves with a rollback and a promotion marked,
//! prequential accuracy from the manifests and live accuracy from joined outcomes), the dead
//! letters are counted in the header, and no error banner shows.
//!
//! Needs Debian's chromium (`make browser`, or tools/install-browser.sh).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::BufReader;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use freshet::ids::ModelName;
use freshet::serving::PredictRequest;
use freshet::subjects::BUCKET_MODELS;
use freshet_cli::stack::bin_dir;
use freshet_model::store::{ArtifactStore, Cause, PointerStore, Pointers, Slot, Verified};
use freshet_tests::{
    Stack, Started, bookstore_events, cloud_event, eventually, start_view, view_state,
};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs `freshet ARGS` against the stack, as an operator would; it must succeed.
fn operator(stack: &Stack, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(bin_dir()?.join("freshet"))
        .args(args)
        .envs(stack.env())
        .output()?;
    anyhow::ensure!(output.status.success(), "freshet {args:?}: {output:?}");
    Ok(())
}

/// Waits until the view lists a move of the live pointer of `kind` ("rollback", "promotion").
async fn await_move(url: &str, kind: &str) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(20),
        &format!("the {kind} in the view"),
        || async {
            let state = view_state(url).await?;
            state["models"][0]["moves"]
                .as_array()?
                .iter()
                .any(|m| m["kind"] == kind)
                .then_some(())
        },
    )
    .await
}

/// Points of `series` of the model's view in the state.
fn count(state: &Value, series: &str) -> usize {
    state["models"][0][series].as_array().map_or(0, Vec::len)
}

/// Loads `url` in headless Chromium and returns the DOM after the page's scripts ran (virtual
/// time lets its one-second polls run several times). Killed after a minute.
fn dump_dom(url: &str) -> anyhow::Result<String> {
    let profile = tempfile::tempdir()?;
    let mut child = Started(
        Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", profile.path().display()),
                "--virtual-time-budget=8000",
                "--dump-dom",
                url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut dom = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut dom);
        let _ = sender.send(dom);
    });
    let dom = receiver
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow::anyhow!("chromium did not dump the page within 60 s"))?;
    drop(child);
    Ok(dom)
}

/// The `<svg data-chart="NAME">` element of the dumped page.
fn chart<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("data-chart=\"{name}\""))
        .unwrap_or_else(|| panic!("no chart {name} in the page:\n{dom}"));
    let end = dom[start..].find("</svg>").unwrap() + start;
    &dom[start..end]
}

/// `data-points` of the path drawing `series` in a chart.
fn points(chart: &str, series: &str) -> usize {
    let prefix = format!("<path data-series=\"{series}\" data-points=\"");
    let start = chart
        .find(&prefix)
        .unwrap_or_else(|| panic!("no series {series} in {chart}"))
        + prefix.len();
    chart[start..].split('"').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_charts_a_running_pipeline_in_a_browser() -> anyhow::Result<()> {
    let started = Instant::now();
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `make browser` (tools/install-browser.sh)"
    );
    let mut stack = Stack::start().await?;
    stack.spawn("featurize", &["--label-horizon", "0s"])?;
    let train = stack.spawn(
        "train",
        &[
            "--publish-every-batches",
            "2",
            "--publish-interval",
            "200ms",
        ],
    )?;
    stack.spawn("drift", &[])?;
    let predict = stack.spawn("predict", &[])?;
    let (_view, url) = start_view(&stack)?;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    // Events in waves, so the rate rises and falls and versions follow one another; two bad
    // events for the dead-letter count.
    let events = bookstore_events(20, 900, "view");
    for event in &events[..20] {
        stack.publish_event(event).await?;
    }
    stack.await_items(20).await?;
    for wave in events[20..].chunks(300) {
        for event in wave {
            stack.publish_event(event).await?;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    for n in 0..2 {
        stack
            .publish_raw("user_action", "u1", format!("{{\"not\": \"an event {n}\""))
            .await?;
    }

    // Predictions, then the outcomes that label them: live accuracy.
    let mut asked = Vec::new();
    for n in 0..40usize {
        let request = PredictRequest {
            user: Some(format!("u{}", n % 17).parse()?),
            item: Some(format!("b{}", n % 20).parse()?),
            ..Default::default()
        };
        let reply = eventually(Duration::from_secs(30), "a prediction", || async {
            stack.predict("bookstore", &request).await.ok()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\npredict log:\n{}", stack.log_of("predict", predict)))?;
        asked.push(reply);
    }
    for (n, reply) in asked.iter().enumerate() {
        let label = if n % 4 == 0 { 1 } else { 0 };
        let outcome = cloud_event(
            &format!("view-outcome-{n}"),
            "outcome",
            serde_json::json!({"prediction_id": reply.prediction_id, "label": label}),
        );
        stack.publish_event(&outcome).await?;
    }

    // The view has gathered versions, freshness and outcomes.
    eventually(
        Duration::from_secs(60),
        "versions, freshness and live accuracy in the view",
        || async {
            let state = view_state(&url).await?;
            (count(&state, "moves") >= 3
                && count(&state, "prequential") >= 2
                && count(&state, "freshness") >= 2
                && count(&state, "live_accuracy") >= 2
                && state["event_rate"].as_array()?.len() >= 2)
                .then_some(())
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\ntrain log:\n{}\nview log:\n{}",
            stack.log_of("train", train),
            std::fs::read_to_string(stack.dir.path().join("view.log")).unwrap_or_default()
        )
    })?;

    // An operator rolls back: the view marks it.
    operator(&stack, &["models", "rollback", "bookstore"])?;
    await_move(&url, "rollback").await?;
    // Then promotes a candidate by hand (an earlier version made candidate): marked too.
    let model = ModelName::parse("bookstore")?;
    let pointers = Pointers::new(stack.js.get_key_value(BUCKET_MODELS).await?);
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let live = pointers.get(&model, Slot::Live).await?.value.unwrap();
    let earlier = artifacts
        .versions(&model)
        .await?
        .into_iter()
        .rfind(|&v| v < live.version)
        .unwrap();
    let candidate = pointers.get(&model, Slot::Candidate).await?;
    pointers
        .move_to(
            &model,
            Slot::Candidate,
            &Verified::check(&artifacts, &model, earlier).await?,
            Cause::Operator,
            "made candidate by hand",
            candidate.revision,
        )
        .await?;
    operator(&stack, &["models", "promote", "bookstore"])?;
    await_move(&url, "promotion").await?;
    eventually(
        Duration::from_secs(20),
        "two dead letters in the view",
        || async {
            let state = view_state(&url).await?;
            (state["streams"]["DEAD_LETTER"] == 2).then_some(())
        },
    )
    .await?;

    let dom = dump_dom(&url)?;
    // The banner's container stays empty: no source failed and every poll was answered.
    assert!(
        dom.contains("<div id=\"banner\"></div>"),
        "an error banner shows:\n{dom}"
    );
    assert!(dom.contains("data-dead-letters=\"2\""), "{dom}");
    for (name, main) in [
        ("event-rate", "events"),
        ("freshness", "freshness"),
        ("versions", "live"),
        ("accuracy", "prequential"),
    ] {
        let svg = chart(&dom, name);
        assert!(
            points(svg, main) > 1,
            "chart {name} has no {main} data:\n{svg}"
        );
    }
    assert!(
        points(chart(&dom, "accuracy"), "live") > 1,
        "no live accuracy"
    );
    let versions = chart(&dom, "versions");
    assert!(versions.contains("data-marker=\"rollback\""), "{versions}");
    assert!(versions.contains("data-marker=\"promotion\""), "{versions}");
    assert!(
        versions.contains("data-marker=\"train\"") || versions.contains("data-marker=\"first\""),
        "{versions}"
    );
    assert!(
        dom.contains("rollback by an operator"),
        "the decision list names the rollback"
    );
    eprintln!("live view test took {:?}", started.elapsed());
    Ok(())
}
