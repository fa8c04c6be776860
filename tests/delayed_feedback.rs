//! Delayed feedback end to end on a real nats-server: a dense live stream (`freshet generate
//! --rate`'s traffic: visits at 40 actions a second of event time, purchases a mean of a minute
//! after their views and one in ten a mean of a quarter of an hour after, users who leave for
//! good), published as fast as the server takes it, through featurize and train.
//!
//! - With fake-negative weighting (the default), from a minute past the first horizon of event
//!   time on, the share of positives train learned stays within a quarter of the share an oracle
//!   told every label at once would learn, and the model's mean prediction within 1.5× of the
//!   stream's true conversion rate, in every version train published. (Before that the first
//!   views' corrections are still on their way: at one minute the share learned is about half
//!   the true share and the mean prediction about half the true rate.) Every view goes out at once, once; every correction names a view of the same
//!   user and item with a purchase within the horizon after it, at most one per view.
//! - Waiting for the horizon, every view older than the horizon at the end is labelled exactly
//!   once (1 if and only if a purchase of the item by its user followed within the horizon),
//!   those of users who never came back too: time decided them, not the user's next event.
//! - `freshet status` and the live view show the same label health: the observed conversion rate
//!   near the true rate, the share of positives and the mean prediction beside it, no warning.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use freshet::events::{Action, Event, EventData};
use freshet::examples::{ExampleRecord, Feedback};
use freshet::ids::ModelName;
use freshet::subjects::STREAM_EXAMPLES;
use freshet_cli::bookstore::{BookstoreConfig, Traffic, generate};
use freshet_model::store::ArtifactStore;
use freshet_tests::Stack;

const USERS: usize = 400;
const ITEMS: usize = 80;
/// User actions per second of event time, and how many: eight minutes of a live shop.
const RATE: f64 = 40.0;
const ACTIONS: usize = 19_200;
/// featurize's label horizon.
const HORIZON: TimeDelta = TimeDelta::minutes(3);

/// The live stream, ending about now (so a quiet partition's wall clock runs on from its end).
fn stream() -> (Vec<Event>, Traffic) {
    let span = TimeDelta::seconds((ACTIONS as f64 / RATE) as i64);
    let traffic = Traffic {
        purchase_delay: Duration::from_secs(60),
        late_share: 0.1,
        late_delay: Duration::from_secs(900),
        churn: 0.02,
        ..Traffic::live(Utc::now() - span, RATE)
    };
    let events = generate(&BookstoreConfig {
        users: USERS,
        items: ITEMS,
        actions: ACTIONS,
        seed: 11,
        viral: None,
        changes: Vec::new(),
        traffic: Some(traffic),
    });
    (events, traffic)
}

/// One user action with its event's id and time.
struct Act<'a> {
    id: &'a str,
    at: DateTime<Utc>,
    user: String,
    item: String,
    action: Action,
}

fn acts(events: &[Event]) -> Vec<Act<'_>> {
    events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::UserAction(a) => Some(Act {
                id: &e.id,
                at: e.time.unwrap(),
                user: a.user.to_string(),
                item: a.item.to_string(),
                action: a.action,
            }),
            _ => None,
        })
        .collect()
}

/// Whether the view `view` converts: its user buys its item within the horizon after it.
fn converts(view: &Act<'_>, purchases: &HashMap<(&str, &str), Vec<DateTime<Utc>>>) -> bool {
    purchases
        .get(&(view.user.as_str(), view.item.as_str()))
        .is_some_and(|times| {
            times
                .iter()
                .any(|t| *t > view.at && *t <= view.at + HORIZON)
        })
}

fn purchases_of<'a>(acts: &'a [Act<'a>]) -> HashMap<(&'a str, &'a str), Vec<DateTime<Utc>>> {
    let mut purchases: HashMap<(&str, &str), Vec<DateTime<Utc>>> = HashMap::new();
    for act in acts.iter().filter(|a| a.action == Action::Purchase) {
        purchases
            .entry((act.user.as_str(), act.item.as_str()))
            .or_default()
            .push(act.at);
    }
    purchases
}

/// Runs the stream through featurize (with `flags`) and train; returns the examples published
/// (with their EXAMPLES sequences), the stack and the stream.
async fn run(flags: &[&str]) -> anyhow::Result<(Stack, Vec<(u64, ExampleRecord)>, Vec<Event>)> {
    let mut stack = Stack::start().await?;
    let horizon = format!("{}s", HORIZON.num_seconds());
    let mut args = vec!["--label-horizon", &horizon, "--label-idle-after", "2s"];
    args.extend_from_slice(flags);
    let featurize = stack.spawn("featurize", &args)?;
    // Batches as small as the live stream's at this rate with the default batch wait (200 ms):
    // published faster than it happened, the stream would otherwise fill whole batches, and
    // the model would take fewer, larger steps than it does live.
    let train = stack.spawn(
        "train",
        &[
            "--publish-interval",
            "200ms",
            "--batch-size",
            "8",
            "--keep-versions",
            "0",
        ],
    )?;
    let (events, _) = stream();
    stack.publish_bookstore(&events, ITEMS).await?;
    let logs = |stack: &Stack| {
        format!(
            "featurize log:\n{}\ntrain log:\n{}",
            stack.log_of("featurize", featurize),
            stack.log_of("train", train)
        )
    };
    // Done once EXAMPLES has stopped growing (the tick has had its wall-clock time to decide
    // the views of the last seconds) and train has published a version that learned it all.
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let model = ModelName::parse("bookstore")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let mut previous = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let last = stack.last_sequence(STREAM_EXAMPLES).await?;
        let learned = match artifacts.versions(&model).await?.last() {
            Some(&version) => artifacts.manifest(&model, version).await?.high_water_mark,
            None => 0,
        };
        if last > 0 && last == previous && learned >= last {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the stream was not learned in time ({learned} of {last})\n{}",
            logs(&stack)
        );
        previous = last;
    }
    let examples = stack
        .read_stream(STREAM_EXAMPLES, 1_000_000)
        .await?
        .into_iter()
        .map(|m| (m.sequence, ExampleRecord::decode(&m.payload).unwrap()))
        .collect();
    Ok((stack, examples, events))
}

/// How long after its horizon's end a view may still be waiting: until featurize decides it, its
/// partition's watermark (the out-of-orderness behind its latest event) or tick has to pass it.
const DECIDED_WITHIN: TimeDelta = TimeDelta::seconds(30);

/// The views featurize sends at once (fake-negative weighting) or labels once (waiting): each
/// view of an item its user has no view of waiting. A view waits until a purchase of its item
/// or its horizon's end, whichever comes first; featurize decides the end a little later (see
/// [`DECIDED_WITHIN`]), so a view just past it may find the older one still waiting:
/// [`uncovered`] allows for that.
fn waiting_views<'a>(acts: &'a [Act<'a>]) -> Vec<&'a Act<'a>> {
    let mut waiting: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
    let mut views = Vec::new();
    for act in acts {
        let key = (act.user.as_str(), act.item.as_str());
        if waiting.get(&key).is_some_and(|t| act.at > *t + HORIZON) {
            waiting.remove(&key);
        }
        match act.action {
            Action::Purchase => {
                waiting.remove(&key);
            }
            Action::View | Action::AddToCart => {
                if let std::collections::hash_map::Entry::Vacant(slot) = waiting.entry(key) {
                    slot.insert(act.at);
                    if act.action == Action::View {
                        views.push(act);
                    }
                }
            }
        }
    }
    views
}

/// The purchases with no view of their item waiting: positives of their own.
fn own_purchases<'a>(acts: &'a [Act<'a>]) -> impl Iterator<Item = &'a Act<'a>> + 'a {
    let views = waiting_views(acts);
    let mut last_view: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
    let mut views = views.into_iter().peekable();
    acts.iter().filter(move |act| {
        while let Some(view) = views.next_if(|v| v.at <= act.at) {
            last_view.insert((view.user.as_str(), view.item.as_str()), view.at);
        }
        let key = (act.user.as_str(), act.item.as_str());
        act.action == Action::Purchase
            && last_view
                .remove(&key)
                .is_none_or(|at| act.at > at + HORIZON)
    })
}

/// The ids of `views` not `sent` and not covered by an earlier sent view of the same user and
/// item still waiting: within the horizon and [`DECIDED_WITHIN`] of it, with no purchase of the
/// item between.
fn uncovered<'a>(
    acts: &'a [Act<'a>],
    views: &'a [&'a Act<'a>],
    sent: impl Fn(&Act<'_>) -> bool + 'a,
) -> impl Iterator<Item = &'a str> + 'a {
    let mut history: HashMap<(&str, &str), Vec<&Act<'_>>> = HashMap::new();
    for act in acts {
        history
            .entry((act.user.as_str(), act.item.as_str()))
            .or_default()
            .push(act);
    }
    views.iter().filter_map(move |view| {
        if sent(view) {
            return None;
        }
        let history = &history[&(view.user.as_str(), view.item.as_str())];
        let earlier = history.partition_point(|a| a.at < view.at);
        let before = history[..earlier]
            .iter()
            .rev()
            .take_while(|a| a.action != Action::Purchase)
            .find(|a| a.action == Action::View && sent(a));
        match before {
            Some(waiting) if view.at <= waiting.at + HORIZON + DECIDED_WITHIN => None,
            _ => Some(view.id),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_negative_weighting_learns_the_true_rate_a_minute_past_the_first_horizon()
-> anyhow::Result<()> {
    let (stack, examples, events) = run(&[]).await?;
    let acts = acts(&events);
    let purchases = purchases_of(&acts);
    let end = acts.last().unwrap().at;
    let start = acts.first().unwrap().at;

    // The stream's true conversion rate, over the views whose horizon ended before its end.
    let views: Vec<&Act<'_>> = waiting_views(&acts);
    let settled: Vec<&&Act<'_>> = views.iter().filter(|v| v.at + HORIZON <= end).collect();
    let converted = settled.iter().filter(|v| converts(v, &purchases)).count();
    let true_rate = converted as f64 / settled.len() as f64;
    assert!(
        (0.02..0.5).contains(&true_rate),
        "a stream with {converted} conversions of {} views",
        settled.len()
    );
    // The share of positives an oracle told every label at once would learn: the views' and
    // those of purchases with no view waiting (a positive of their own), over both.
    let own_purchases = own_purchases(&acts)
        .filter(|a| a.at + HORIZON <= end)
        .count();
    let true_share = (converted + own_purchases) as f64 / (settled.len() + own_purchases) as f64;

    // Every view once, at once; corrections only of views converted within the horizon.
    let ids: HashSet<&str> = examples.iter().map(|(_, e)| e.id.as_str()).collect();
    assert_eq!(ids.len(), examples.len(), "an example id published twice");
    let by_id: HashMap<&str, &ExampleRecord> =
        examples.iter().map(|(_, e)| (e.id.as_str(), e)).collect();
    let sent = |v: &Act<'_>| by_id.contains_key(format!("ex-{}", v.id).as_str());
    let missing: Vec<&str> = uncovered(&acts, &views, sent).take(5).collect();
    assert!(missing.is_empty(), "views never sent: {missing:?}");
    let act_of: HashMap<&str, &Act<'_>> = acts.iter().map(|a| (a.id, a)).collect();
    let mut corrected = HashSet::new();
    for (_, correction) in examples
        .iter()
        .filter(|(_, e)| e.feedback == Feedback::Correction)
    {
        let corrects = correction.corrects.as_deref().unwrap();
        assert!(corrected.insert(corrects), "{corrects} corrected twice");
        let view = act_of[corrects.trim_start_matches("ex-")];
        let purchase = act_of[correction.source_event.as_str()];
        assert_eq!(
            (purchase.action, &purchase.user, &purchase.item),
            (Action::Purchase, &view.user, &view.item)
        );
        assert!(purchase.at > view.at && purchase.at <= view.at + HORIZON);
        assert_eq!(by_id[corrects].feedback, Feedback::FakeNegative);
    }

    // What train learned, version by version, once its window is a minute past the first
    // horizon: before that the corrections of the first views are still on their way.
    let artifacts = ArtifactStore::from_url(&stack.artifacts_url())?;
    let model = ModelName::parse("bookstore")?;
    // A correction carries its view's (earlier) time: the stream's time is that of the others.
    let time_of: BTreeMap<u64, DateTime<Utc>> = examples
        .iter()
        .filter(|(_, e)| e.feedback != Feedback::Correction)
        .filter_map(|(sequence, e)| Some((*sequence, e.event_time?)))
        .collect();
    let mut checked = 0;
    let mut report = Vec::new();
    for version in artifacts.versions(&model).await? {
        let manifest = artifacts.manifest(&model, version).await?;
        let metrics = &manifest.metrics;
        // The window's first example: the window holds `window_examples` examples up to the
        // high-water mark (and the corrections among them).
        let first = manifest
            .high_water_mark
            .saturating_sub(metrics.window_examples);
        let Some((_, at)) = time_of.range(first..).next() else {
            continue;
        };
        if *at < start + HORIZON + TimeDelta::minutes(1) || metrics.window_examples < 500 {
            continue;
        }
        let (share, mean) = (
            metrics.positive_share.unwrap(),
            metrics.mean_prediction.unwrap(),
        );
        report.push(format!(
            "v{version} from {}s: share {share:.4}, mean prediction {mean:.4}",
            (*at - start).num_seconds()
        ));
        checked += 1;
        assert!(
            (share / true_share - 1.0).abs() <= 0.25,
            "the share of positives learned parted from the true share {true_share:.4}:\n{}",
            report.join("\n")
        );
        assert!(
            (1.0 / 1.5..=1.5).contains(&(mean / true_rate)),
            "the mean prediction parted from the true rate {true_rate:.4}:\n{}",
            report.join("\n")
        );
    }
    assert!(
        checked >= 10,
        "only {checked} versions past the first horizon"
    );

    // `freshet status` shows the same: the observed conversion rate near the true rate, the
    // share of positives published and the live model's mean prediction beside it, no view
    // waiting past its horizon, and no warning.
    let horizon = format!("{}s", HORIZON.num_seconds());
    let status = |json: bool| -> anyhow::Result<String> {
        let mut command =
            std::process::Command::new(freshet_cli::stack::bin_dir()?.join("freshet"));
        command
            .args(["status", "--label-horizon", &horizon])
            .envs(stack.env());
        if json {
            command.arg("--json");
        }
        let output = command.output()?;
        anyhow::ensure!(
            output.status.success(),
            "freshet status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    };
    let json: serde_json::Value = serde_json::from_str(&status(true)?)?;
    let labels = &json["labels"][0];
    assert_eq!(labels["model"], "bookstore", "{json}");
    let observed = labels["observed_conversion_rate"].as_f64().unwrap();
    let share = labels["positive_share"].as_f64().unwrap();
    let mean = labels["mean_prediction"].as_f64().unwrap();
    assert!(
        (observed / true_rate - 1.0).abs() <= 0.25,
        "observed {observed} beside the true rate {true_rate}: {labels}"
    );
    assert!((share / true_share - 1.0).abs() <= 0.25, "{labels}");
    assert!((1.0 / 1.5..=1.5).contains(&(mean / true_rate)), "{labels}");
    let oldest = labels["health"]["oldest_waiting_seconds"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        oldest <= (HORIZON + DECIDED_WITHIN).as_seconds_f64(),
        "{labels}"
    );
    assert_eq!(labels["warnings"], serde_json::json!([]), "{labels}");
    let text = status(false)?;
    assert!(
        text.contains("WAITING VIEWS") && text.contains("MEAN PREDICTION"),
        "{text}"
    );

    // And so does the live view: the same numbers, and their course over time.
    let (_view, url) = freshet_tests::start_view_with(&stack, &["--label-horizon", &horizon])?;
    let model = freshet_tests::eventually(
        Duration::from_secs(30),
        "label health in the live view",
        || async {
            let state = freshet_tests::view_state(&url).await?;
            let model = state["models"].as_array()?.first()?.clone();
            (model["labels"]["mean_prediction"].is_number()
                && !model["label_rates"].as_array()?.is_empty())
            .then_some(model)
        },
    )
    .await?;
    assert_eq!(
        model["labels"]["observed_conversion_rate"], labels["observed_conversion_rate"],
        "{model}"
    );
    assert_eq!(
        model["labels"]["warnings"],
        serde_json::json!([]),
        "{model}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_labels_every_view_past_its_horizon_once_returning_user_or_not()
-> anyhow::Result<()> {
    let (_stack, examples, events) = run(&["--delayed-feedback", "wait"]).await?;
    let acts = acts(&events);
    let purchases = purchases_of(&acts);
    let end = acts.last().unwrap().at;

    let ids: HashSet<&str> = examples.iter().map(|(_, e)| e.id.as_str()).collect();
    assert_eq!(ids.len(), examples.len(), "an example id published twice");
    let by_id: HashMap<&str, &ExampleRecord> =
        examples.iter().map(|(_, e)| (e.id.as_str(), e)).collect();
    // When each user last acted: a view after which its user never acts again within its
    // horizon can only be decided by time.
    let mut last_act: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for act in &acts {
        last_act.insert(act.user.as_str(), act.at);
    }
    let views: Vec<&Act<'_>> = waiting_views(&acts)
        .into_iter()
        .filter(|v| v.at + HORIZON <= end)
        .collect();
    let sent = |v: &Act<'_>| by_id.contains_key(format!("ex-{}", v.id).as_str());
    let missing: Vec<&str> = uncovered(&acts, &views, sent).take(5).collect();
    assert!(missing.is_empty(), "views never labelled: {missing:?}");
    let (mut labelled, mut unreturned) = (0, 0);
    for view in views.iter().filter(|v| sent(v)) {
        let example = by_id[format!("ex-{}", view.id).as_str()];
        assert_eq!(example.feedback, Feedback::Final);
        let expected = if converts(view, &purchases) { 1.0 } else { 0.0 };
        assert_eq!(example.label, expected, "the label of {}", view.id);
        labelled += 1;
        if last_act[view.user.as_str()] <= view.at + HORIZON {
            unreturned += 1;
        }
    }
    assert!(labelled > 5_000, "{labelled} views labelled");
    assert!(
        unreturned > 100,
        "only {unreturned} views of users who never came back"
    );
    Ok(())
}
