//! The live view's actions: promote the candidate, roll live back, pin or unpin a model, for
//! people who are not engineers. Only with `--action-tokens`: without it these routes do not
//! exist and the view stays read-only.
//!
//! Each action is two calls. `POST /api/actions/preview` shows the evidence: the two versions
//! (live and the one the action would make live) scored on the model's recent examples from
//! EXAMPLES, as the gate compares them, with how many of those examples neither had learned.
//! `POST /api/actions` then does it, only with `"confirm": true`. Both need a bearer token from
//! the action tokens (separate from `--http-tokens`, which only lets people read); the token's
//! name (its file's name in a directory of tokens, or `token-<digest>`) is who did it, recorded
//! in the pointer's reason (and in the hold for a pin). Moves go through the same verified
//! compare-and-set as `freshet models`, with the same causes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use freshet::examples::ExampleRecord;
use freshet::ids::ModelName;
use freshet::runtime::http::tokens::TokenFile;
use freshet::subjects::{STREAM_EXAMPLES, Subjects};
use freshet_model::store::{
    ArtifactStore, Cause, HoldChange, PointerStore, Pointers, Slot, Verified,
};
use freshet_model::{ModelScorer, predicts_positive};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::commands::models::hold::{HoldReport, Who, pin_live, write_hold};
use crate::commands::models::moves::{PointerMove, refuse_if_pinned, rollback_target};

/// Most recent examples a preview scores.
const PREVIEW_EXAMPLES: usize = 500;
/// How far back before the model's last example a preview looks (EXAMPLES interleaves every
/// model's examples).
const PREVIEW_SPAN: u64 = 8 * PREVIEW_EXAMPLES as u64;
/// How long a preview reads EXAMPLES at most.
const PREVIEW_READ: Duration = Duration::from_secs(2);

/// What the action routes share.
pub struct Actions {
    pub tokens: TokenFile,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub pointers: Pointers,
    pub artifacts: ArtifactStore,
}

/// An action the view offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Promote,
    Rollback,
    Pin,
    Unpin,
}

/// An action asked for (and, for `POST /api/actions`, confirmed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub model: ModelName,
    pub action: Action,
    /// Rollback or pin: the version (the previous live version, or live, if unset).
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub reason: String,
    /// Must be true for the action to be done.
    #[serde(default)]
    pub confirm: bool,
}

/// Two versions scored on the same recent examples.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub examples: usize,
    /// Of them, examples neither version had learned (beyond both high-water marks).
    pub unseen_by_both: usize,
    pub live_accuracy: f64,
    pub target_accuracy: f64,
}

/// What an action would do, and the evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub model: String,
    pub action: Action,
    pub live_version: Option<u64>,
    /// The version the action makes live (`None` for unpin).
    pub target_version: Option<u64>,
    pub evidence: Option<Evidence>,
    /// Who asks (the token's name).
    pub by: String,
}

/// What an action did.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    pub by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<PointerMove>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldReport>,
}

fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "error": message.to_string() })),
    )
        .into_response()
}

/// The caller's name if the request carries an action token; why not otherwise.
fn caller(actions: &Actions, headers: &HeaderMap) -> Result<String, &'static str> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(token) = token else {
        return Err("an action token is required (Authorization: Bearer ...)");
    };
    actions
        .tokens
        .caller(token)
        .map(|name| name.to_string())
        .ok_or("not an action token")
}

/// `GET /api/actions`: the actions are on (the page shows its buttons).
pub async fn enabled() -> impl IntoResponse {
    Json(serde_json::json!({ "actions": ["promote", "rollback", "pin", "unpin"] }))
}

/// `POST /api/actions/preview`.
pub async fn preview(
    State(actions): State<Arc<Actions>>,
    headers: HeaderMap,
    Json(request): Json<ActionRequest>,
) -> Response {
    let by = match caller(&actions, &headers) {
        Ok(by) => by,
        Err(why) => return refuse(StatusCode::UNAUTHORIZED, why),
    };
    match plan(&actions, &request, by).await {
        Ok(preview) => ([(header::CACHE_CONTROL, "no-store")], Json(preview)).into_response(),
        Err(err) => refuse(StatusCode::CONFLICT, format!("{err:#}")),
    }
}

/// `POST /api/actions`: does a confirmed action.
pub async fn act(
    State(actions): State<Arc<Actions>>,
    headers: HeaderMap,
    Json(request): Json<ActionRequest>,
) -> Response {
    let by = match caller(&actions, &headers) {
        Ok(by) => by,
        Err(why) => return refuse(StatusCode::UNAUTHORIZED, why),
    };
    if !request.confirm {
        return refuse(
            StatusCode::BAD_REQUEST,
            "not confirmed: preview the action, then send it again with \"confirm\": true",
        );
    }
    match carry_out(&actions, &request, &by).await {
        Ok(done) => {
            tracing::warn!(model = %request.model, action = ?request.action, by = %by, "action from the live view");
            ([(header::CACHE_CONTROL, "no-store")], Json(done)).into_response()
        }
        Err(err) => refuse(StatusCode::CONFLICT, format!("{err:#}")),
    }
}

/// The version `request` would make live, and live's.
async fn target(
    actions: &Actions,
    request: &ActionRequest,
) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let model = &request.model;
    let live = actions.pointers.get(model, Slot::Live).await?.value;
    let live_version = live.as_ref().map(|p| p.version);
    let target = match request.action {
        Action::Promote => Some(
            actions
                .pointers
                .get(model, Slot::Candidate)
                .await?
                .value
                .context("no candidate to promote")?
                .version,
        ),
        Action::Rollback => {
            let current = live_version.context("no live version to roll back")?;
            let history = actions.pointers.history(model, Slot::Live).await?;
            Some(
                rollback_target(current, &history, request.version)
                    .context("no earlier live version in the pointer's history; name one")?,
            )
        }
        Action::Pin => Some(
            request
                .version
                .or(live_version)
                .context("no live version to pin")?,
        ),
        Action::Unpin => None,
    };
    Ok((live_version, target))
}

async fn plan(actions: &Actions, request: &ActionRequest, by: String) -> anyhow::Result<Preview> {
    let (live_version, target_version) = target(actions, request).await?;
    let evidence = match (live_version, target_version) {
        (Some(live), Some(target)) if live != target => {
            Some(compare(actions, &request.model, live, target).await?)
        }
        _ => None,
    };
    Ok(Preview {
        model: request.model.to_string(),
        action: request.action,
        live_version,
        target_version,
        evidence,
        by,
    })
}

/// The model's most recent examples (at most [`PREVIEW_EXAMPLES`], among the last
/// [`PREVIEW_SPAN`] messages of EXAMPLES up to the model's last), with their stream sequences.
async fn recent_examples(
    actions: &Actions,
    model: &ModelName,
) -> anyhow::Result<Vec<(u64, ExampleRecord)>> {
    let stream = actions
        .js
        .get_stream(STREAM_EXAMPLES)
        .await
        .context("reading stream EXAMPLES")?;
    let subject = actions.subjects.examples(model);
    let last = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => message.sequence,
        Err(err) if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            return Ok(Vec::new());
        }
        Err(err) => return Err(err).context("reading the model's last example"),
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: last.saturating_sub(PREVIEW_SPAN).max(1),
            },
            filter_subject: subject,
            ..Default::default()
        })
        .await
        .context("opening an ordered consumer on EXAMPLES")?;
    let mut messages = consumer.messages().await.context("reading EXAMPLES")?;
    let mut recent = VecDeque::with_capacity(PREVIEW_EXAMPLES);
    let deadline = tokio::time::Instant::now() + PREVIEW_READ;
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(
        deadline.min(tokio::time::Instant::now() + Duration::from_millis(300)),
        messages.next(),
    )
    .await
    {
        let Ok(info) = message.info() else { continue };
        let sequence = info.stream_sequence;
        let pending = info.pending;
        if let Ok(example) = ExampleRecord::decode(&message.payload) {
            if recent.len() == PREVIEW_EXAMPLES {
                recent.pop_front();
            }
            recent.push_back((sequence, example));
        }
        if pending == 0 {
            break;
        }
    }
    Ok(recent.into())
}

/// Accuracy of `version` on the examples, with its high-water mark.
async fn accuracy(
    actions: &Actions,
    model: &ModelName,
    version: u64,
    examples: &[(u64, ExampleRecord)],
) -> anyhow::Result<(f64, u64)> {
    let (manifest, bytes) = actions
        .artifacts
        .load(model, version)
        .await
        .with_context(|| format!("loading version {version}"))?;
    let scorer =
        ModelScorer::from_bytes(&bytes).with_context(|| format!("decoding version {version}"))?;
    let rows: Vec<&(u64, ExampleRecord)> = examples
        .iter()
        .filter(|(_, e)| e.features.len() == scorer.n_features())
        .collect();
    let features: Vec<Vec<f32>> = rows.iter().map(|(_, e)| e.features.clone()).collect();
    let scores = tokio::task::block_in_place(|| scorer.score_batch(&features))
        .with_context(|| format!("scoring with version {version}"))?;
    let right = scores
        .iter()
        .zip(&rows)
        .filter(|(s, (_, e))| predicts_positive(**s) == (e.label >= 0.5))
        .count();
    Ok((
        right as f64 / rows.len().max(1) as f64,
        manifest.high_water_mark,
    ))
}

async fn compare(
    actions: &Actions,
    model: &ModelName,
    live: u64,
    target: u64,
) -> anyhow::Result<Evidence> {
    let examples = recent_examples(actions, model).await?;
    let (live_accuracy, live_mark) = accuracy(actions, model, live, &examples).await?;
    let (target_accuracy, target_mark) = accuracy(actions, model, target, &examples).await?;
    let both = live_mark.max(target_mark);
    Ok(Evidence {
        examples: examples.len(),
        unseen_by_both: examples.iter().filter(|(s, _)| *s > both).count(),
        live_accuracy,
        target_accuracy,
    })
}

async fn carry_out(actions: &Actions, request: &ActionRequest, by: &str) -> anyhow::Result<Done> {
    let model = &request.model;
    let pointers = &actions.pointers;
    let reason = |verb: &str| {
        let mut text = format!("{verb} by {by} in the live view");
        if !request.reason.is_empty() {
            text.push_str(": ");
            text.push_str(&request.reason);
        }
        text
    };
    match request.action {
        Action::Pin => {
            let (hold, moved) = pin_live(
                pointers,
                &actions.artifacts,
                model,
                request.version,
                by,
                &request.reason,
            )
            .await?;
            Ok(Done {
                by: by.to_string(),
                moved: Some(moved),
                hold: Some(hold),
            })
        }
        Action::Unpin => {
            let who = Who {
                reason: request.reason.clone(),
                by: Some(by.to_string()),
            };
            let hold = write_hold(pointers, model, HoldChange::Unpin, &who).await?;
            Ok(Done {
                by: by.to_string(),
                moved: None,
                hold: Some(hold),
            })
        }
        Action::Promote | Action::Rollback => {
            refuse_if_pinned(pointers, model).await?;
            let live = pointers.get(model, Slot::Live).await?;
            let (_, Some(version)) = target(actions, request).await? else {
                anyhow::bail!("nothing to make live");
            };
            let verified = Verified::check(&actions.artifacts, model, version)
                .await
                .map_err(|r| anyhow::anyhow!("version {version} is refused: {}", r.reason))?;
            let (cause, reason) = if request.action == Action::Promote {
                (Cause::Promotion, reason("promoted"))
            } else {
                (Cause::Rollback, reason("rolled back"))
            };
            let revision = if cause == Cause::Promotion {
                let candidate = pointers.get(model, Slot::Candidate).await?;
                pointers
                    .promote(model, &verified, &reason, live.revision, candidate.revision)
                    .await
                    .context("the pointers moved meanwhile; preview again")?
                    .live_revision
            } else {
                pointers
                    .move_to(model, Slot::Live, &verified, cause, &reason, live.revision)
                    .await
                    .context("live moved meanwhile; preview again")?
            };
            Ok(Done {
                by: by.to_string(),
                moved: Some(PointerMove {
                    model: model.to_string(),
                    from_version: live.value.map(|p| p.version),
                    to_version: version,
                    cause,
                    reason,
                    revision,
                }),
                hold: None,
            })
        }
    }
}
