//! `freshet status`: one look at the whole system: how much each stream holds, how far behind each
//! consumer of EVENTS and EXAMPLES is, which version each model serves and since when, and how
//! many messages were dead-lettered for which reason.
//!
//! Missing pieces (an unprovisioned stream, no MODELS bucket) are shown as missing rather than
//! failing the command: status is what an operator runs when something is wrong.

use std::collections::BTreeMap;

use anyhow::Context;
use async_nats::jetstream;
use chrono::Utc;
use freshet::subjects::{
    BUCKET_MODELS, STREAM_CONTROL, STREAM_DEAD_LETTER, STREAM_EVENTS, STREAM_EXAMPLES,
    STREAM_PREDICTIONS,
};
use futures::TryStreamExt;
use serde::Serialize;

use super::models::{open_pointers, read_all_pointers};
use super::{
    GlobalArgs, Table, age_seconds, connect, emit, emit_json, format_age_seconds, format_bytes,
    is_stream_not_found,
};

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
}

/// Everything `freshet status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub streams: Vec<StreamStatus>,
    pub consumers: Vec<ConsumerStatus>,
    /// `None` when the MODELS bucket does not exist.
    pub models: Option<Vec<ModelStatus>>,
    /// Dead-lettered messages by reason (the last token of the dead-letter subject).
    pub dead_letters: BTreeMap<String, u64>,
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
pub async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
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
                    })
                    .collect(),
            )
        }
        Err(err) => {
            tracing::debug!(error = %format!("{err:#}"), "MODELS bucket unavailable");
            None
        }
    };
    let status = Status {
        streams,
        consumers,
        models,
        dead_letters,
    };
    if global.json {
        return emit_json(&status);
    }
    emit(&render(&status))
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
            let mut table =
                Table::new(&["MODEL", "LIVE", "LIVE AGE", "CANDIDATE"]).align_right(&[1, 2, 3]);
            for m in models {
                table.row(vec![
                    m.model.clone(),
                    dash(m.live_version),
                    m.live_age_seconds
                        .map_or("-".to_string(), format_age_seconds),
                    dash(m.candidate_version),
                ]);
            }
            text.push_str(&table.to_string());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
