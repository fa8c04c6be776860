//! `freshet status`: one look at the whole system: how much each stream holds, how far behind each
//! consumer of EVENTS and EXAMPLES is, which version each model serves and since when, each
//! model's drift episode (the one open, else the last), each model's label health (see
//! [`freshet_features::labels`]: views waiting for a label and the age of the oldest, the
//! observed conversion rate beside the share of positives published and the live model's mean
//! prediction, with a warning when they part), and how many messages were dead-lettered for which
//! reason.
//!
//! Missing pieces (an unprovisioned stream, no MODELS bucket) are shown as missing rather than
//! failing the command: status is what an operator runs when something is wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use chrono::{TimeDelta, Utc};
use clap::Args;
use freshet::subjects::{
    BUCKET_FEATURES, BUCKET_MODELS, STREAM_CONTROL, STREAM_DEAD_LETTER, STREAM_EVENTS,
    STREAM_EXAMPLES, STREAM_PREDICTIONS,
};
use freshet_features::labels::{LabelHealth, LabelState, calibration_warning};
use futures::TryStreamExt;
use serde::Serialize;

use super::models::{open_pointers, read_all_pointers};
use super::{
    GlobalArgs, Table, age_seconds, connect, emit, emit_json, format_age_seconds, format_bytes,
    is_stream_not_found,
};

/// Arguments of `freshet status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// featurize's label horizon (the same variable sets both), by which the age of the oldest
    /// view waiting for its label is told
    #[arg(long = "label-horizon", env = "FRESHET_LABEL_HORIZON", default_value = "30m", value_parser = humantime::parse_duration)]
    pub label_horizon: Duration,
}

/// Every stream status reports on, in display order.
const STREAMS: [&str; 5] = [
    STREAM_EVENTS,
    STREAM_EXAMPLES,
    STREAM_PREDICTIONS,
    STREAM_CONTROL,
    STREAM_DEAD_LETTER,
];
/// The streams whose consumers' lag is reported.
const CONSUMED_STREAMS: [&str; 2] = [STREAM_EVENTS, STREAM_EXAMPLES];

/// What one stream holds; all `None` when the stream does not exist.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub exists: bool,
    pub messages: Option<u64>,
    pub bytes: Option<u64>,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
}

/// How far behind one durable consumer is.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    pub stream: String,
    pub name: String,
    /// Messages not yet delivered: the lag.
    pub num_pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub num_ack_pending: usize,
    pub num_redelivered: usize,
}

/// The live version of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub model: String,
    pub live_version: Option<u64>,
    pub live_age_seconds: Option<u64>,
    pub candidate_version: Option<u64>,
    /// What an operator holds the model at (pinned, paused), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
}

/// A model's latest drift episode, as its last record on CONTROL tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftStatus {
    pub model: String,
    /// `None` when drift has published no episode for the model (or CONTROL no longer holds it).
    pub episode: Option<EpisodeStatus>,
}

/// The state of one episode and the signal that speaks for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpisodeStatus {
    pub id: u64,
    /// `warning` or `drift` while open; `resolved` once closed.
    pub state: String,
    pub opened: u64,
    /// The example of its latest transition.
    pub sequence: u64,
    pub detector: String,
    pub target: String,
    pub statistic: f64,
    pub threshold: Option<f64>,
    /// Detectors and targets that signalled in it.
    pub signals: usize,
    /// The reaction its confirmation requested (`alert` when none), and why one was withheld.
    pub reaction: String,
    pub reaction_withheld: Option<String>,
}

impl EpisodeStatus {
    /// Reads a drift record of format 2; `None` for anything else (a format-1 detection).
    pub fn from_record(record: &serde_json::Value) -> Option<EpisodeStatus> {
        let text = |key: &str| record.get(key)?.as_str().map(str::to_string);
        let number = |key: &str| record.get(key)?.as_u64();
        Some(EpisodeStatus {
            id: number("episode")?,
            state: text("state")?,
            opened: number("opened")?,
            sequence: number("sequence")?,
            detector: text("detector")?,
            target: text("target")?,
            statistic: record.get("statistic")?.as_f64()?,
            threshold: record.get("threshold").and_then(serde_json::Value::as_f64),
            signals: record
                .get("signals")
                .and_then(serde_json::Value::as_array)
                .map_or(0, Vec::len),
            reaction: text("reaction").unwrap_or_else(|| "alert".to_string()),
            reaction_withheld: text("reaction_withheld"),
        })
    }

    pub fn is_open(&self) -> bool {
        self.state != "resolved"
    }
}

/// Everything `freshet status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub streams: Vec<StreamStatus>,
    pub consumers: Vec<ConsumerStatus>,
    /// `None` when the MODELS bucket does not exist.
    pub models: Option<Vec<ModelStatus>>,
    /// Each model's latest drift episode; `None` when CONTROL or MODELS does not exist.
    pub drift: Option<Vec<DriftStatus>>,
    /// Each model's label health; `None` when the FEATURES bucket does not exist.
    pub labels: Option<Vec<LabelStatus>>,
    /// Dead-lettered messages by reason (the last token of the dead-letter subject).
    pub dead_letters: BTreeMap<String, u64>,
}

/// The labels featurize publishes for one model, beside what its live version predicts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelStatus {
    pub model: String,
    /// Over featurize's partitions; `None` when featurize has recorded none for the model.
    pub health: Option<LabelHealth>,
    /// The share of positives among the views that waited, as observed.
    pub observed_conversion_rate: Option<f64>,
    /// The share of positives among the examples published.
    pub positive_share: Option<f64>,
    /// The live version's mean prediction over its metrics window; `None` when the artifact
    /// store cannot be read or the version predates it.
    pub mean_prediction: Option<f64>,
    /// Why the labels or the model look wrong, when they do.
    pub warnings: Vec<String>,
}

impl LabelStatus {
    /// The status of `model`'s labels from their health and the live mean prediction.
    pub fn new(model: &str, health: Option<LabelHealth>, mean_prediction: Option<f64>) -> Self {
        let observed = health.and_then(|h| h.observed_conversion_rate());
        let mut warnings: Vec<String> = health.and_then(|h| h.warning()).into_iter().collect();
        let enough = health
            .is_some_and(|h| h.recent.views >= freshet_features::labels::MIN_VIEWS_TO_COMPARE);
        if let (true, Some(mean), Some(observed)) = (enough, mean_prediction, observed)
            && let Some(warning) =
                calibration_warning(mean, observed, "the observed conversion rate")
        {
            warnings.push(warning);
        }
        LabelStatus {
            model: model.to_string(),
            health,
            observed_conversion_rate: observed,
            positive_share: health.and_then(|h| h.positive_share()),
            mean_prediction,
            warnings,
        }
    }
}

/// The label health of `model` over the partitions featurize recorded, read from the FEATURES
/// stream's last value of each `labels.<model>.<partition>` key (no other key is read); `None`
/// when there is none (or no FEATURES bucket yet).
pub async fn label_health(
    js: &jetstream::Context,
    model: &str,
    horizon: Duration,
) -> anyhow::Result<Option<LabelHealth>> {
    let stream = match js.get_stream(format!("KV_{BUCKET_FEATURES}")).await {
        Ok(stream) => stream,
        Err(err) if is_stream_not_found(&err) => return Ok(None),
        Err(err) => return Err(err).context("opening the FEATURES bucket"),
    };
    let filter = format!("$KV.{BUCKET_FEATURES}.labels.{model}.*");
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(&filter)
        .await
        .context("listing the label states in FEATURES")?
        .try_collect()
        .await
        .context("listing the label states in FEATURES")?;
    let mut states = Vec::with_capacity(subjects.len());
    for (subject, _) in subjects {
        let message = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message,
            // Purged or deleted since it was listed: nothing to count.
            Err(err)
                if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                continue;
            }
            Err(err) => return Err(err).with_context(|| format!("reading {subject}")),
        };
        // A delete or purge marker has no body.
        if message.payload.is_empty() {
            continue;
        }
        let state: LabelState = serde_json::from_slice(&message.payload)
            .with_context(|| format!("decoding the label state at {subject}"))?;
        states.push(state);
    }
    if states.is_empty() {
        return Ok(None);
    }
    let horizon = TimeDelta::from_std(horizon).unwrap_or(TimeDelta::MAX);
    Ok(Some(LabelHealth::of(&states, horizon)))
}

/// Adds up per-subject counts of `<prefix>.dead_letter.<function>.<reason>` by reason.
pub fn dead_letters_by_reason(
    per_subject: impl IntoIterator<Item = (String, u64)>,
) -> BTreeMap<String, u64> {
    let mut by_reason = BTreeMap::new();
    for (subject, count) in per_subject {
        let reason = subject.rsplit('.').next().unwrap_or_default().to_string();
        *by_reason.entry(reason).or_insert(0) += count;
    }
    by_reason
}

/// Runs `freshet status`.
pub async fn run(global: &GlobalArgs, args: &StatusArgs) -> anyhow::Result<()> {
    let nats = connect(global).await?;
    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    let mut dead_letters = BTreeMap::new();
    for name in STREAMS {
        let stream = match nats.js.get_stream(name).await {
            Ok(stream) => stream,
            Err(err) if is_stream_not_found(&err) => {
                streams.push(StreamStatus {
                    name: name.to_string(),
                    exists: false,
                    messages: None,
                    bytes: None,
                    first_sequence: None,
                    last_sequence: None,
                });
                continue;
            }
            Err(err) => return Err(err).with_context(|| format!("reading stream {name}")),
        };
        // get_stream fetched the info just now; no need to ask again.
        let state = &stream.cached_info().state;
        streams.push(StreamStatus {
            name: name.to_string(),
            exists: true,
            messages: Some(state.messages),
            bytes: Some(state.bytes),
            first_sequence: Some(state.first_sequence),
            last_sequence: Some(state.last_sequence),
        });
        if CONSUMED_STREAMS.contains(&name) {
            consumers.extend(consumer_statuses(&stream, name).await?);
        }
        if name == STREAM_DEAD_LETTER {
            dead_letters = count_dead_letters(&stream, &nats.subjects.dead_letter_all()).await?;
        }
    }
    let models = match open_pointers(&nats.js).await {
        Ok(pointers) => {
            let now = Utc::now();
            let all = read_all_pointers(&pointers).await?;
            Some(
                all.into_iter()
                    .map(|(model, pair)| ModelStatus {
                        model: model.to_string(),
                        live_version: pair.live.as_ref().map(|p| p.version),
                        live_age_seconds: pair
                            .live
                            .as_ref()
                            .map(|p| age_seconds(p.updated_at, now)),
                        candidate_version: pair.candidate.as_ref().map(|p| p.version),
                        hold: pair.hold.as_ref().map(|h| h.describe()),
                    })
                    .collect::<Vec<_>>(),
            )
        }
        Err(err) => {
            tracing::debug!(error = %format!("{err:#}"), "MODELS bucket unavailable");
            None
        }
    };
    let drift = match (&models, nats.js.get_stream(STREAM_CONTROL).await) {
        (Some(models), Ok(control)) => {
            let mut drift = Vec::with_capacity(models.len());
            for model in models {
                drift.push(latest_episode(&control, &nats.subjects, &model.model).await?);
            }
            Some(drift)
        }
        _ => None,
    };
    let labels = match &models {
        Some(models) if nats.js.get_key_value(BUCKET_FEATURES).await.is_ok() => {
            let artifacts = super::open_artifacts(global).ok();
            let mut labels = Vec::with_capacity(models.len());
            for model in models {
                let health = label_health(&nats.js, &model.model, args.label_horizon).await?;
                let mean_prediction = match (&artifacts, model.live_version) {
                    (Some(artifacts), Some(version)) => {
                        live_mean_prediction(artifacts, &model.model, version).await
                    }
                    _ => None,
                };
                labels.push(LabelStatus::new(&model.model, health, mean_prediction));
            }
            Some(labels)
        }
        _ => None,
    };
    let status = Status {
        streams,
        consumers,
        models,
        drift,
        labels,
        dead_letters,
    };
    if global.json {
        return emit_json(&status);
    }
    emit(&render(&status))
}

/// The mean prediction recorded in a version's manifest, if the store can tell.
async fn live_mean_prediction(
    artifacts: &freshet_model::store::ArtifactStore,
    model: &str,
    version: u64,
) -> Option<f64> {
    let name = freshet::ids::ModelName::parse(model).ok()?;
    match artifacts.manifest(&name, version).await {
        Ok(manifest) => manifest.metrics.mean_prediction,
        Err(err) => {
            tracing::debug!(error = %err, model, version, "live manifest unavailable");
            None
        }
    }
}

/// The latest drift episode of `model`: its last record on CONTROL.
async fn latest_episode(
    control: &jetstream::stream::Stream,
    subjects: &freshet::subjects::Subjects,
    model: &str,
) -> anyhow::Result<DriftStatus> {
    let episode = match freshet::ids::ModelName::parse(model) {
        Ok(name) => {
            let subject = subjects.control(&name, freshet::control::KIND_DRIFT);
            match control.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => serde_json::from_slice::<serde_json::Value>(&message.payload)
                    .ok()
                    .and_then(|record| EpisodeStatus::from_record(&record)),
                Err(err)
                    if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    None
                }
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("reading the last record on {subject}"));
                }
            }
        }
        Err(_) => None,
    };
    Ok(DriftStatus {
        model: model.to_string(),
        episode,
    })
}

async fn consumer_statuses(
    stream: &jetstream::stream::Stream,
    name: &str,
) -> anyhow::Result<Vec<ConsumerStatus>> {
    let infos: Vec<jetstream::consumer::Info> = stream
        .consumers()
        .try_collect()
        .await
        .with_context(|| format!("listing the consumers of {name}"))?;
    let mut statuses: Vec<ConsumerStatus> = infos
        .into_iter()
        .map(|info| ConsumerStatus {
            stream: name.to_string(),
            name: info.name,
            num_pending: info.num_pending,
            num_ack_pending: info.num_ack_pending,
            num_redelivered: info.num_redelivered,
        })
        .collect();
    statuses.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(statuses)
}

/// Counts dead-lettered messages per subject with the stream's subject state (no message is read).
pub(crate) async fn count_dead_letters(
    stream: &jetstream::stream::Stream,
    filter: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let per_subject: Vec<(String, usize)> = stream
        .info_with_subjects(filter)
        .await
        .context("reading the subjects of DEAD_LETTER")?
        .try_collect()
        .await
        .context("reading the subjects of DEAD_LETTER")?;
    Ok(dead_letters_by_reason(
        per_subject
            .into_iter()
            .map(|(subject, count)| (subject, count as u64)),
    ))
}

/// The human-readable form of a status.
pub fn render(status: &Status) -> String {
    let dash = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut streams = Table::new(&["STREAM", "MESSAGES", "BYTES", "FIRST SEQ", "LAST SEQ"])
        .align_right(&[1, 2, 3, 4]);
    for s in &status.streams {
        if !s.exists {
            streams.row(vec![s.name.clone(), "missing".to_string()]);
            continue;
        }
        streams.row(vec![
            s.name.clone(),
            dash(s.messages),
            s.bytes.map_or("-".to_string(), format_bytes),
            dash(s.first_sequence),
            dash(s.last_sequence),
        ]);
    }
    let mut text = streams.to_string();
    if status.streams.iter().any(|s| !s.exists) {
        text.push_str("(missing streams: run `freshet provision`)\n");
    }

    text.push('\n');
    if status.consumers.is_empty() {
        text.push_str(&format!(
            "no consumers on {} yet\n",
            CONSUMED_STREAMS.join(" or ")
        ));
    } else {
        let mut consumers = Table::new(&[
            "STREAM",
            "CONSUMER",
            "PENDING",
            "ACK PENDING",
            "REDELIVERED",
        ])
        .align_right(&[2, 3, 4]);
        for c in &status.consumers {
            consumers.row(vec![
                c.stream.clone(),
                c.name.clone(),
                c.num_pending.to_string(),
                c.num_ack_pending.to_string(),
                c.num_redelivered.to_string(),
            ]);
        }
        text.push_str(&consumers.to_string());
    }

    text.push('\n');
    match &status.models {
        None => text.push_str(&format!(
            "bucket {BUCKET_MODELS} is missing (run `freshet provision`)\n"
        )),
        Some(models) if models.is_empty() => text.push_str("no model pointers yet\n"),
        Some(models) => {
            let mut table = Table::new(&["MODEL", "LIVE", "LIVE AGE", "CANDIDATE", "HOLD"])
                .align_right(&[1, 2, 3]);
            for m in models {
                table.row(vec![
                    m.model.clone(),
                    dash(m.live_version),
                    m.live_age_seconds
                        .map_or("-".to_string(), format_age_seconds),
                    dash(m.candidate_version),
                    m.hold.clone().unwrap_or_else(|| "-".to_string()),
                ]);
            }
            text.push_str(&table.to_string());
        }
    }

    if let Some(drift) = &status.drift {
        text.push('\n');
        text.push_str(&render_drift(drift));
    }

    if let Some(labels) = &status.labels {
        text.push('\n');
        text.push_str(&render_labels(labels));
    }

    text.push('\n');
    if status.dead_letters.is_empty() {
        text.push_str("no dead letters\n");
    } else {
        let mut table = Table::new(&["DEAD-LETTER REASON", "MESSAGES"]).align_right(&[1]);
        for (reason, count) in &status.dead_letters {
            table.row(vec![reason.clone(), count.to_string()]);
        }
        text.push_str(&table.to_string());
    }
    text
}

/// The label table: one row per model, then its warnings.
pub fn render_labels(labels: &[LabelStatus]) -> String {
    let percent = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    let mut table = Table::new(&[
        "MODEL",
        "WAITING VIEWS",
        "OLDEST WAITING",
        "CONVERSION",
        "POSITIVES PUBLISHED",
        "MEAN PREDICTION",
    ])
    .align_right(&[1, 2, 3, 4, 5]);
    for label in labels {
        let Some(health) = &label.health else {
            table.row(vec![
                label.model.clone(),
                "-".into(),
                "no labels yet".into(),
            ]);
            continue;
        };
        table.row(vec![
            label.model.clone(),
            health.waiting.to_string(),
            health
                .oldest_waiting_seconds
                .map_or("-".to_string(), |s| format_age_seconds(s as u64)),
            percent(label.observed_conversion_rate),
            percent(label.positive_share),
            percent(label.mean_prediction),
        ]);
    }
    let mut text = table.to_string();
    text.push_str(&format!(
        "(conversion and positives over the last {} minutes of event time)\n",
        freshet_features::labels::RECENT_MINUTES
    ));
    for label in labels {
        for warning in &label.warnings {
            text.push_str(&format!("WARNING {}: {warning}\n", label.model));
        }
    }
    text
}

/// The drift table: one row per model, its open episode or else its last one.
pub fn render_drift(drift: &[DriftStatus]) -> String {
    let mut table = Table::new(&[
        "MODEL",
        "EPISODE",
        "STATE",
        "SINCE EXAMPLE",
        "SIGNAL",
        "DETECTORS",
        "REACTION",
    ])
    .align_right(&[1, 3, 5]);
    for model in drift {
        let Some(e) = &model.episode else {
            table.row(vec![model.model.clone(), "-".into(), "no episode".into()]);
            continue;
        };
        let state = if e.is_open() {
            format!("{} (open)", e.state)
        } else {
            e.state.clone()
        };
        let signal = match e.threshold {
            Some(t) => format!(
                "{} on {}: {:.4} vs {:.4}",
                e.detector, e.target, e.statistic, t
            ),
            None => format!("{} on {}: {:.4}", e.detector, e.target, e.statistic),
        };
        let reaction = match &e.reaction_withheld {
            Some(why) => format!("withheld ({why})"),
            None => e.reaction.clone(),
        };
        table.row(vec![
            model.model.clone(),
            e.id.to_string(),
            state,
            e.opened.to_string(),
            signal,
            e.signals.to_string(),
            reaction,
        ]);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use freshet_features::labels::LabelCounts;

    use super::*;

    fn health(views: u64, conversions: u64, examples: u64, positives: u64) -> LabelHealth {
        LabelHealth {
            waiting: 420,
            oldest_waiting_seconds: Some(95.0),
            recent: LabelCounts {
                views,
                conversions,
                examples,
                positives,
                ..LabelCounts::default()
            },
        }
    }

    #[test]
    fn label_health_shows_rates_side_by_side_and_warns_when_they_part() {
        let healthy = LabelStatus::new("bookstore", Some(health(1000, 80, 1100, 85)), Some(0.09));
        assert!(healthy.warnings.is_empty(), "{:?}", healthy.warnings);
        // Waiting for the horizon, before a first one has passed: positives only.
        let skewed = LabelStatus::new("skewed", Some(health(1000, 80, 100, 95)), Some(0.97));
        assert_eq!(skewed.warnings.len(), 2, "{:?}", skewed.warnings);
        let quiet = LabelStatus::new("quiet", None, None);
        let text = render_labels(&[healthy, skewed, quiet]);
        assert!(text.contains("420"), "{text}");
        assert!(
            text.contains("8.0%") && text.contains("7.7%") && text.contains("9.0%"),
            "{text}"
        );
        assert!(
            text.contains("WARNING skewed: positives are 95.0%"),
            "{text}"
        );
        assert!(
            text.contains("WARNING skewed: the model's mean prediction 97.0%"),
            "{text}"
        );
        assert!(!text.contains("WARNING bookstore"), "{text}");
        assert!(text.contains("no labels yet"), "{text}");
        // Too few views to tell: no warning either way.
        let young = LabelStatus::new("young", Some(health(50, 4, 10, 10)), Some(0.9));
        assert!(young.warnings.is_empty());
    }

    #[test]
    fn the_latest_drift_record_tells_the_episode() {
        let record = serde_json::json!({
            "kind": "drift", "format": 2, "model": "bookstore", "episode": 3, "state": "drift",
            "level": "drift", "detector": "psi", "target": "item_log_price", "feature": 8,
            "statistic": 0.0407, "threshold": 0.0400, "window": {"first": 1, "last": 24489},
            "sequence": 24489, "span": {"first": 24477, "last": 24489}, "opened": 24477,
            "confirmed": 24489, "resolved": null, "signals": [{}, {}], "live_version": 40,
            "reaction": "raise_lr", "event_time": "2026-01-01T00:00:00Z"
        });
        let episode = EpisodeStatus::from_record(&record).unwrap();
        assert!(episode.is_open());
        assert_eq!((episode.id, episode.signals), (3, 2));
        let text = render_drift(&[
            DriftStatus {
                model: "bookstore".into(),
                episode: Some(episode.clone()),
            },
            DriftStatus {
                model: "quiet".into(),
                episode: None,
            },
        ]);
        assert!(text.contains("drift (open)"), "{text}");
        assert!(
            text.contains("psi on item_log_price: 0.0407 vs 0.0400"),
            "{text}"
        );
        assert!(
            text.contains("raise_lr") && text.contains("no episode"),
            "{text}"
        );
        // A resolved episode is closed; a format-1 detection is not an episode.
        let resolved = EpisodeStatus {
            state: "resolved".into(),
            ..episode
        };
        assert!(!resolved.is_open());
        let old = serde_json::json!({"kind": "drift", "detector": "ddm", "level": "drift"});
        assert_eq!(EpisodeStatus::from_record(&old), None);
    }

    #[test]
    fn dead_letters_are_grouped_by_the_last_subject_token() {
        let counts = dead_letters_by_reason([
            ("freshet.dead_letter.featurize.invalid_data".to_string(), 3),
            ("freshet.dead_letter.train.invalid_data".to_string(), 2),
            (
                "freshet.dead_letter.featurize.malformed_json".to_string(),
                1,
            ),
        ]);
        assert_eq!(counts.get("invalid_data"), Some(&5));
        assert_eq!(counts.get("malformed_json"), Some(&1));
        assert_eq!(counts.len(), 2);
    }
}
