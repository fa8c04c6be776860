//! The live view's pure half: what the system recorded (stream samples, pointer moves, manifests,
//! CONTROL messages) in, chart series out. No I/O and no clock: `now` and the window are passed
//! in, so every rule here is tested with plain values.
//!
//! Times are milliseconds since the Unix epoch, the unit the page's JavaScript works in. Every
//! time comes from a record, never from when the view happened to read it: the stored time of a
//! stream message, the write time of a KV entry, a manifest's `created_at`. The one exception is
//! what the view samples itself each second (stream sequences, the live version's backlog), which
//! carries the sampling time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use freshet_model::store::{Cause, Slot};
use serde::Serialize;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// One point of a time series, serialised as `[t, v]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point(pub Millis, pub f64);

/// One point tied to a model version, serialised as `[t, v, version]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VersionPoint(pub Millis, pub f64, pub u64);

/// The most points a series sends to the page: more would not show on a chart a few hundred
/// pixels wide.
pub const MAX_POINTS: usize = 600;

/// Outcomes a live-accuracy point is computed over (the most recent ones at its time).
pub const LIVE_ACCURACY_WINDOW: usize = 100;

/// Per-second rates of a counter sampled over time (a stream's last sequence): one point per
/// sample after the first, at the later sample's time. A counter that went down (a stream
/// deleted and made again) or a repeated sample time gives no point.
pub fn rates(samples: &[(Millis, u64)]) -> Vec<Point> {
    samples
        .windows(2)
        .filter_map(|pair| {
            let ((t0, c0), (t1, c1)) = (pair[0], pair[1]);
            (t1 > t0 && c1 >= c0).then(|| Point(t1, (c1 - c0) as f64 * 1000.0 / (t1 - t0) as f64))
        })
        .collect()
}

/// Keeps at most `max` points, evenly spread, always keeping the last one (the newest value is
/// the one people read).
pub fn thin<T: Copy>(points: &[T], max: usize) -> Vec<T> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let step = (points.len() - 1) as f64 / (max - 1) as f64;
    (0..max)
        .map(|i| points[((i as f64 * step).round() as usize).min(points.len() - 1)])
        .collect()
}

/// One write of a pointer key in MODELS, as the bucket's history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct PointerWrite {
    /// KV revision: orders writes and names each one once.
    pub revision: u64,
    /// When the server stored the write (predictors could see it from then on).
    pub t: Millis,
    pub slot: Slot,
    /// The version named; `None` for a delete (a candidate withdrawn or promoted).
    pub version: Option<u64>,
    /// What the move was; `None` for a delete.
    pub cause: Option<Cause>,
    /// Why the pointer moved, in the writer's words.
    pub reason: String,
}

/// What a move of the live pointer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    /// The first live version.
    First,
    /// train's next version of the same lineage.
    Train,
    /// A candidate made live (by the gate or an operator).
    Promotion,
    /// Back to an earlier version (by the gate or an operator).
    Rollback,
    /// Any other move, e.g. a version deployed by hand.
    Manual,
}

/// Classifies a move of the live pointer by its recorded cause; the first version live is
/// `First` unless it came by a promotion or a rollback.
pub fn classify(cause: Cause, previous: Option<u64>) -> MoveKind {
    match cause {
        Cause::Rollback => MoveKind::Rollback,
        Cause::Promotion => MoveKind::Promotion,
        _ if previous.is_none() => MoveKind::First,
        Cause::Train => MoveKind::Train,
        Cause::Candidate | Cause::Operator | Cause::Pin => MoveKind::Manual,
    }
}

/// A live pointer move, as the page marks it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Move {
    pub t: Millis,
    pub version: u64,
    pub from: Option<u64>,
    pub kind: MoveKind,
    pub reason: String,
}

/// The moves of the live pointer, oldest first, classified; writes that name the version already
/// live (a re-write) are not moves.
pub fn live_moves(writes: &[PointerWrite]) -> Vec<Move> {
    let mut moves = Vec::new();
    let mut current: Option<u64> = None;
    for write in writes.iter().filter(|w| w.slot == Slot::Live) {
        let (Some(version), Some(cause)) = (write.version, write.cause) else {
            current = None;
            continue;
        };
        if current == Some(version) {
            continue;
        }
        moves.push(Move {
            t: write.t,
            version,
            from: current,
            kind: classify(cause, current),
            reason: write.reason.clone(),
        });
        current = Some(version);
    }
    moves
}

/// A step series of the version a slot named over time, `None` while it named none; starts with
/// the value in force at `from` (when there was one) and ends at `now` with the current value,
/// so the line reaches the chart's right edge.
pub fn steps(
    writes: &[PointerWrite],
    slot: Slot,
    from: Millis,
    now: Millis,
) -> Vec<(Millis, Option<u64>)> {
    let mut out: Vec<(Millis, Option<u64>)> = Vec::new();
    let mut before: Option<(Millis, Option<u64>)> = None;
    for write in writes.iter().filter(|w| w.slot == slot) {
        if write.t < from {
            before = Some((from, write.version));
        } else {
            if out.is_empty()
                && let Some(first) = before.take()
            {
                out.push(first);
            }
            if out.last().map(|(_, v)| *v) != Some(write.version) {
                out.push((write.t, write.version));
            }
        }
    }
    if out.is_empty()
        && let Some(first) = before
    {
        out.push(first);
    }
    if let Some(&(t, version)) = out.last()
        && t < now
    {
        out.push((now, version));
    }
    out
}

/// What the view knows of one version: from its manifest in the artifact store, or, once
/// retention deleted that, from train's `version_published` notice on CONTROL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionInfo {
    pub version: u64,
    pub created_at: Millis,
    /// Highest EXAMPLES sequence the version (with its ancestors) learned.
    pub high_water_mark: u64,
    pub prequential_accuracy: f64,
    pub log_loss: f64,
    pub examples_total: u64,
}

/// One sample of a model's label health (see `freshet status`): the share of positives among the
/// examples featurize published, the conversion rate it observed on labelled views, and the live
/// version's mean prediction, each `None` while unknown. Serialised as `[t, share, observed,
/// mean]`, with `null` for an unknown value (the page breaks the line there).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LabelPoint(
    pub Millis,
    pub Option<f64>,
    pub Option<f64>,
    pub Option<f64>,
);

/// The label samples from `from` on, thinned for a chart; a sample that knows none of the three
/// rates (featurize has labelled nothing yet) is left out.
pub fn label_rates(samples: &VecDeque<LabelPoint>, from: Millis) -> Vec<LabelPoint> {
    let points: Vec<LabelPoint> = samples
        .iter()
        .filter(|p| p.0 >= from && (p.1.is_some() || p.2.is_some() || p.3.is_some()))
        .copied()
        .collect();
    thin(&points, MAX_POINTS)
}

/// Prequential accuracy of the versions in `members` (those a slot named), at their creation
/// times, from `from` on.
pub fn prequential(
    versions: &BTreeMap<u64, VersionInfo>,
    members: &BTreeSet<u64>,
    from: Millis,
) -> Vec<VersionPoint> {
    let mut points: Vec<VersionPoint> = members
        .iter()
        .filter_map(|v| versions.get(v))
        .filter(|info| info.created_at >= from && info.examples_total > 0)
        .map(|info| VersionPoint(info.created_at, info.prequential_accuracy, info.version))
        .collect();
    points.sort_by_key(|p| p.0);
    points
}

/// Freshness at each live move from `from` on: seconds from the storing of the newest example
/// the new live version had learned (the EXAMPLES message at its high-water mark) to the move
/// that made it live. It is how old the newest thing the served model knows was when it began
/// to serve. Moves whose version or example time is unknown (a manifest and notice both gone,
/// an example aged out of the stream) give no point.
pub fn freshness(
    moves: &[Move],
    versions: &BTreeMap<u64, VersionInfo>,
    example_times: &BTreeMap<u64, Millis>,
    from: Millis,
) -> Vec<VersionPoint> {
    moves
        .iter()
        .filter(|m| m.t >= from)
        .filter_map(|m| {
            let mark = versions.get(&m.version)?.high_water_mark;
            let stored = example_times.get(&mark)?;
            Some(VersionPoint(
                m.t,
                (m.t - stored).max(0) as f64 / 1000.0,
                m.version,
            ))
        })
        .collect()
}

/// One joined outcome: whether the variant's prediction was right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutcomeRecord {
    /// When predict stored the joined outcome on CONTROL.
    pub t: Millis,
    pub version: u64,
    pub correct: bool,
}

/// Rolling live accuracy: at each outcome from `from` on, the share right among the last
/// `window` outcomes up to it (fewer at the start). Thinned to [`MAX_POINTS`].
pub fn live_accuracy(
    outcomes: &VecDeque<OutcomeRecord>,
    window: usize,
    from: Millis,
) -> Vec<VersionPoint> {
    let window = window.max(1);
    let mut right = 0usize;
    let mut points = Vec::new();
    let all: Vec<&OutcomeRecord> = outcomes.iter().collect();
    for (i, outcome) in all.iter().enumerate() {
        right += usize::from(outcome.correct);
        if i >= window {
            right -= usize::from(all[i - window].correct);
        }
        if outcome.t >= from {
            let n = (i + 1).min(window);
            points.push(VersionPoint(
                outcome.t,
                right as f64 / n as f64,
                outcome.version,
            ));
        }
    }
    thin(&points, MAX_POINTS)
}

/// Pushes `item` onto a bounded queue, dropping the oldest beyond `cap`.
pub fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, cap: usize) {
    queue.push_back(item);
    while queue.len() > cap {
        queue.pop_front();
    }
}

/// Splits `<prefix>.control.<model>.<kind>` into model and kind.
pub fn parse_control_subject<'a>(prefix: &str, subject: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".control.")?;
    let (model, kind) = rest.split_once('.')?;
    (!model.is_empty() && !kind.is_empty() && !kind.contains('.')).then_some((model, kind))
}

/// A drift record as the page marks it: a transition of an episode (format 2: opened as a
/// warning, confirmed as a drift, resolved), or a single detection (format 1, no episode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftMark {
    pub t: Millis,
    /// `warning`, `drift` or `resolved`.
    pub level: String,
    pub detector: String,
    /// The feature's name, or `error` for the live version's prediction error.
    pub target: String,
    pub statistic: f64,
    pub live_version: Option<u64>,
    /// The episode it belongs to (format 2).
    pub episode: Option<u64>,
    /// What the statistic had to reach.
    pub threshold: Option<f64>,
    /// Detectors and targets that signalled in the episode so far.
    pub signals: usize,
    /// The reaction the record requested (`alert`: none), and why one was withheld.
    pub reaction: Option<String>,
    pub reaction_withheld: Option<String>,
}

/// The decision-list line of one episode's transition.
fn episode_line(mark: &DriftMark, episode: u64) -> String {
    let what = if mark.target == "error" {
        "the live version's error".to_string()
    } else {
        mark.target.clone()
    };
    let evidence = match mark.threshold {
        Some(t) => format!("{} {:.4} vs {t:.4}", mark.detector, mark.statistic),
        None => format!("{} {:.4}", mark.detector, mark.statistic),
    };
    let live = mark
        .live_version
        .map_or(String::new(), |v| format!(", live v{v}"));
    let detectors = match mark.signals {
        0 | 1 => String::new(),
        n => format!(", {n} detectors"),
    };
    match mark.level.as_str() {
        "warning" => {
            format!("drift episode {episode} opened: warning on {what} ({evidence}){live}")
        }
        "resolved" => format!("drift episode {episode} resolved{detectors}"),
        _ => {
            let reaction = match (&mark.reaction, &mark.reaction_withheld) {
                (_, Some(why)) => format!("; reaction withheld ({why})"),
                (Some(r), None) if r != "alert" => format!("; {r} requested"),
                _ => String::new(),
            };
            format!(
                "drift episode {episode} confirmed on {what} ({evidence}{detectors}){live}{reaction}"
            )
        }
    }
}

/// The decision-list lines for drift records: one per transition of an episode; for detections
/// of format 1 (warnings left out), detections in the same second make one line, since feature
/// detectors tended to signal together on one shift.
pub fn drift_lines<'a>(marks: impl IntoIterator<Item = &'a DriftMark>) -> Vec<(Millis, String)> {
    let mut lines = Vec::new();
    let mut groups: Vec<Vec<&DriftMark>> = Vec::new();
    for mark in marks {
        if let Some(episode) = mark.episode {
            lines.push((mark.t, episode_line(mark, episode)));
            continue;
        }
        if mark.level != "drift" {
            continue;
        }
        match groups.last_mut() {
            Some(group) if group[0].t.div_euclid(1000) == mark.t.div_euclid(1000) => {
                group.push(mark)
            }
            _ => groups.push(vec![mark]),
        }
    }
    let singles = groups.into_iter().map(|group| {
        let targets: BTreeSet<&str> = group.iter().map(|m| m.target.as_str()).collect();
        let detectors: BTreeSet<&str> = group.iter().map(|m| m.detector.as_str()).collect();
        let live = group
            .iter()
            .find_map(|m| m.live_version)
            .map_or(String::new(), |v| format!(", live v{v}"));
        let what = match targets.len() {
            1 if targets.contains("error") => "the live version's error".to_string(),
            1 => targets.iter().copied().collect::<Vec<_>>().join(""),
            n => {
                let shown: Vec<&str> = targets.iter().copied().take(3).collect();
                let more = n.saturating_sub(shown.len());
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!("{n} targets: {}{more}", shown.join(", "))
            }
        };
        let detectors: Vec<&str> = detectors.into_iter().collect();
        (
            group[0].t,
            format!("drift on {what} ({}){live}", detectors.join(", ")),
        )
    });
    lines.extend(singles);
    lines.sort_by_key(|(t, _)| *t);
    lines
}

/// A gate decision as the page marks it, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateMark {
    pub t: Millis,
    pub action: String,
    pub live_version: u64,
    pub challenger_version: u64,
    pub examples: usize,
    pub live_accuracy: f64,
    pub challenger_accuracy: f64,
}

/// A start or end of train's data-quality quarantine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuarantineMark {
    pub t: Millis,
    /// `started` or `ended` (as train names its transitions).
    pub state: String,
}

/// What one CONTROL message says, read leniently: a field the view does not need may change
/// without breaking it.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlRecord {
    Drift(DriftMark),
    Gate(GateMark),
    Quarantine(QuarantineMark),
    /// A joined outcome: the live variant's verdict and the candidate's, when each scored it.
    Outcome {
        live: Option<OutcomeRecord>,
        candidate: Option<OutcomeRecord>,
    },
    /// train's notice of a new live version.
    Version(VersionInfo),
    /// Something refused (a version predict would not load, a batch train discarded), in words.
    Refusal(Millis, String),
}

/// Reads one CONTROL message of `kind`, stored at `t`. `None` for kinds the view does not chart
/// and for bodies it cannot read.
pub fn parse_control(kind: &str, body: &serde_json::Value, t: Millis) -> Option<ControlRecord> {
    let text = |key: &str| body.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let number = |key: &str| body.get(key).and_then(serde_json::Value::as_u64);
    match kind {
        "drift" => Some(ControlRecord::Drift(DriftMark {
            t,
            level: text("level")?,
            detector: text("detector").unwrap_or_default(),
            target: text("target").unwrap_or_default(),
            statistic: body
                .get("statistic")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0),
            live_version: number("live_version"),
            episode: number("episode"),
            threshold: body.get("threshold").and_then(|v| v.as_f64()),
            signals: body
                .get("signals")
                .and_then(|v| v.as_array())
                .map_or(0, Vec::len),
            reaction: text("reaction"),
            reaction_withheld: text("reaction_withheld"),
        })),
        "gate" => {
            let decision: freshet::control::GateDecision =
                serde_json::from_value(body.clone()).ok()?;
            Some(ControlRecord::Gate(GateMark {
                t,
                action: decision.action.as_str().to_string(),
                live_version: decision.live_version,
                challenger_version: decision.challenger_version,
                examples: decision.recent.examples,
                live_accuracy: decision.recent.live_accuracy,
                challenger_accuracy: decision.recent.challenger_accuracy,
            }))
        }
        "quarantine" => Some(ControlRecord::Quarantine(QuarantineMark {
            t,
            state: text("state")?,
        })),
        "outcome" => {
            let verdict = |variant: &str| {
                ["served", "shadow"].iter().find_map(|role| {
                    let record = body.get(*role)?;
                    (record.get("variant")?.as_str()? == variant).then(|| OutcomeRecord {
                        t,
                        version: record.get("version").and_then(|v| v.as_u64()).unwrap_or(0),
                        correct: record
                            .get("correct")
                            .and_then(|v| v.as_bool())
                            .unwrap_or(false),
                    })
                })
            };
            let (live, candidate) = (verdict("live"), verdict("candidate"));
            (live.is_some() || candidate.is_some())
                .then_some(ControlRecord::Outcome { live, candidate })
        }
        "version" => {
            let metrics = body.get("metrics")?;
            let created_at = text("created_at")
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok())
                .map_or(t, |d| d.timestamp_millis());
            Some(ControlRecord::Version(VersionInfo {
                version: number("version")?,
                created_at,
                high_water_mark: number("high_water_mark").unwrap_or(0),
                prequential_accuracy: metrics.get("prequential_accuracy")?.as_f64()?,
                log_loss: metrics
                    .get("log_loss")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0),
                examples_total: metrics
                    .get("examples_total")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0),
            }))
        }
        "refused" => Some(ControlRecord::Refusal(
            t,
            format!(
                "{} version {} refused by predict: {}",
                text("slot").unwrap_or_else(|| "a".into()),
                number("version").map_or("?".to_string(), |v| v.to_string()),
                text("reason").unwrap_or_default()
            ),
        )),
        "refused_batch" => Some(ControlRecord::Refusal(
            t,
            format!(
                "train discarded a batch of {} examples ({}..={}): {}",
                number("examples").unwrap_or(0),
                number("first").unwrap_or(0),
                number("last").unwrap_or(0),
                text("error").unwrap_or_default()
            ),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(
        revision: u64,
        t: Millis,
        slot: Slot,
        version: Option<u64>,
        cause: Cause,
    ) -> PointerWrite {
        PointerWrite {
            revision,
            t,
            slot,
            version,
            cause: version.map(|_| cause),
            reason: format!("{cause} in other words"),
        }
    }

    #[test]
    fn rates_are_per_second_between_samples_and_skip_resets() {
        let samples = [
            (0, 10),
            (1000, 110),
            (1500, 160),
            (2500, 5),
            (3500, 15),
            (3500, 20),
        ];
        assert_eq!(
            rates(&samples),
            vec![Point(1000, 100.0), Point(1500, 100.0), Point(3500, 10.0)]
        );
        assert!(rates(&[(0, 1)]).is_empty());
    }

    #[test]
    fn thinning_keeps_the_ends_and_bounds_the_count() {
        let points: Vec<u32> = (0..1000).collect();
        let thinned = thin(&points, 10);
        assert_eq!(thinned.len(), 10);
        assert_eq!((thinned[0], thinned[9]), (0, 999));
        assert_eq!(thin(&points[..5], 10), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn moves_are_classified_by_their_recorded_cause() {
        assert_eq!(classify(Cause::Train, None), MoveKind::First);
        assert_eq!(classify(Cause::Operator, None), MoveKind::First);
        assert_eq!(classify(Cause::Train, Some(1)), MoveKind::Train);
        assert_eq!(classify(Cause::Promotion, Some(3)), MoveKind::Promotion);
        assert_eq!(classify(Cause::Promotion, None), MoveKind::Promotion);
        assert_eq!(classify(Cause::Rollback, Some(3)), MoveKind::Rollback);
        assert_eq!(classify(Cause::Operator, Some(3)), MoveKind::Manual);
    }

    #[test]
    fn live_moves_skip_candidate_writes_and_rewrites() {
        let writes = [
            write(1, 100, Slot::Live, Some(1), Cause::Train),
            write(2, 200, Slot::Candidate, Some(7), Cause::Candidate),
            write(3, 300, Slot::Live, Some(2), Cause::Train),
            write(4, 350, Slot::Live, Some(2), Cause::Train),
            write(5, 400, Slot::Live, Some(7), Cause::Promotion),
            write(6, 500, Slot::Live, Some(2), Cause::Rollback),
        ];
        let moves = live_moves(&writes);
        let kinds: Vec<(u64, Option<u64>, MoveKind)> =
            moves.iter().map(|m| (m.version, m.from, m.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (1, None, MoveKind::First),
                (2, Some(1), MoveKind::Train),
                (7, Some(2), MoveKind::Promotion),
                (2, Some(7), MoveKind::Rollback),
            ]
        );
    }

    #[test]
    fn steps_start_with_the_value_in_force_and_reach_now() {
        let writes = [
            write(1, 100, Slot::Live, Some(1), Cause::Train),
            write(2, 200, Slot::Live, Some(2), Cause::Train),
            write(3, 300, Slot::Candidate, Some(9), Cause::Candidate),
            write(4, 400, Slot::Live, Some(3), Cause::Train),
            write(5, 500, Slot::Candidate, None, Cause::Candidate),
        ];
        assert_eq!(
            steps(&writes, Slot::Live, 250, 1000),
            vec![(250, Some(2)), (400, Some(3)), (1000, Some(3))]
        );
        assert_eq!(
            steps(&writes, Slot::Candidate, 0, 1000),
            vec![(300, Some(9)), (500, None), (1000, None)]
        );
        // Nothing moved inside the window: one flat step.
        assert_eq!(
            steps(&writes, Slot::Live, 800, 1000),
            vec![(800, Some(3)), (1000, Some(3))]
        );
        assert!(steps(&[], Slot::Live, 0, 1000).is_empty());
    }

    fn info(version: u64, created_at: Millis, mark: u64, accuracy: f64) -> VersionInfo {
        VersionInfo {
            version,
            created_at,
            high_water_mark: mark,
            prequential_accuracy: accuracy,
            log_loss: 0.5,
            examples_total: mark,
        }
    }

    #[test]
    fn freshness_is_the_age_of_the_newest_learned_example_when_its_version_went_live() {
        let versions: BTreeMap<u64, VersionInfo> = [info(1, 900, 10, 0.6), info(2, 1900, 20, 0.7)]
            .into_iter()
            .map(|i| (i.version, i))
            .collect();
        let example_times: BTreeMap<u64, Millis> = [(10, 700), (20, 1500)].into_iter().collect();
        let moves = live_moves(&[
            write(1, 1000, Slot::Live, Some(1), Cause::Train),
            write(2, 2000, Slot::Live, Some(2), Cause::Train),
            write(3, 9000, Slot::Live, Some(1), Cause::Rollback),
            write(4, 9500, Slot::Live, Some(5), Cause::Operator),
        ]);
        assert_eq!(
            freshness(&moves, &versions, &example_times, 0),
            vec![
                VersionPoint(1000, 0.3, 1),
                VersionPoint(2000, 0.5, 2),
                // A rollback serves older knowledge: the model got staler.
                VersionPoint(9000, 8.3, 1),
            ]
        );
        assert_eq!(freshness(&moves, &versions, &example_times, 1500).len(), 2);
    }

    #[test]
    fn prequential_points_follow_creation_time_for_the_slots_versions() {
        let versions: BTreeMap<u64, VersionInfo> = [
            info(2, 2000, 20, 0.7),
            info(1, 1000, 10, 0.6),
            info(3, 3000, 30, 0.9),
        ]
        .into_iter()
        .map(|i| (i.version, i))
        .collect();
        let members: BTreeSet<u64> = [1, 2, 4].into_iter().collect();
        assert_eq!(
            prequential(&versions, &members, 0),
            vec![VersionPoint(1000, 0.6, 1), VersionPoint(2000, 0.7, 2)]
        );
        assert_eq!(prequential(&versions, &members, 1500).len(), 1);
    }

    #[test]
    fn live_accuracy_rolls_over_the_last_outcomes() {
        let outcomes: VecDeque<OutcomeRecord> = [true, false, true, true]
            .iter()
            .enumerate()
            .map(|(i, &correct)| OutcomeRecord {
                t: i as Millis * 10,
                version: 3,
                correct,
            })
            .collect();
        let points = live_accuracy(&outcomes, 2, 0);
        let values: Vec<f64> = points.iter().map(|p| p.1).collect();
        assert_eq!(values, vec![1.0, 0.5, 0.5, 1.0]);
        // Points before `from` are not sent, but their outcomes still count in the window.
        assert_eq!(
            live_accuracy(&outcomes, 2, 25),
            vec![VersionPoint(30, 1.0, 3)]
        );
    }

    #[test]
    fn control_subjects_name_a_model_and_a_kind() {
        assert_eq!(
            parse_control_subject("freshet", "freshet.control.bookstore.gate"),
            Some(("bookstore", "gate"))
        );
        assert_eq!(
            parse_control_subject("freshet", "freshet.control.bookstore"),
            None
        );
        assert_eq!(
            parse_control_subject("freshet", "other.control.bookstore.gate"),
            None
        );
    }

    #[test]
    fn control_messages_become_records() {
        let drift = serde_json::json!({"kind":"drift","model":"bookstore","detector":"ddm","target":"error",
            "feature":null,"level":"drift","statistic":1.5,"window":{"first":1,"last":9},"sequence":9,
            "live_version":3,"reaction":"alert","event_time":"2026-11-27T00:00:00Z"});
        assert_eq!(
            parse_control("drift", &drift, 5),
            Some(ControlRecord::Drift(DriftMark {
                t: 5,
                level: "drift".into(),
                detector: "ddm".into(),
                target: "error".into(),
                statistic: 1.5,
                live_version: Some(3),
                episode: None,
                threshold: None,
                signals: 0,
                reaction: Some("alert".into()),
                reaction_withheld: None,
            }))
        );

        let gate = serde_json::json!({"kind":"gate","model":"bookstore","action":"promote","live_version":3,
            "challenger_version":5,"recent":{"examples":300,"live_accuracy":0.6,"challenger_accuracy":0.8},
            "held_back":null,"rule":"margin 0.02","sequence":900,"at":"2026-11-27T00:00:00Z"});
        let Some(ControlRecord::Gate(mark)) = parse_control("gate", &gate, 7) else {
            panic!("a gate decision");
        };
        assert_eq!(
            (mark.action.as_str(), mark.challenger_version),
            ("promote", 5)
        );

        let outcome = serde_json::json!({"kind":"outcome","model":"bookstore","prediction_id":"p","label":1,
            "served":{"version":5,"variant":"candidate","score":0.7,"correct":true},
            "shadow":{"version":3,"variant":"live","score":0.2,"correct":false}});
        assert_eq!(
            parse_control("outcome", &outcome, 9),
            Some(ControlRecord::Outcome {
                live: Some(OutcomeRecord {
                    t: 9,
                    version: 3,
                    correct: false
                }),
                candidate: Some(OutcomeRecord {
                    t: 9,
                    version: 5,
                    correct: true
                }),
            })
        );

        let version = serde_json::json!({"kind":"version_published","model":"bookstore","version":4,"parent":3,
            "learned":{"first":1,"last":40},"high_water_mark":40,"created_at":"1970-01-01T00:00:01Z",
            "metrics":{"examples_total":40,"window_examples":40,"prequential_accuracy":0.75,"log_loss":0.5}});
        assert_eq!(
            parse_control("version", &version, 9),
            Some(ControlRecord::Version(info(4, 1000, 40, 0.75)))
        );

        assert_eq!(
            parse_control("quarantine", &serde_json::json!({"state": "started"}), 1),
            Some(ControlRecord::Quarantine(QuarantineMark {
                t: 1,
                state: "started".into()
            }))
        );
        assert_eq!(
            parse_control("drift", &serde_json::json!({"kind": "drift"}), 1),
            None
        );
        assert_eq!(
            parse_control("something_new", &serde_json::json!({}), 1),
            None
        );
    }

    #[test]
    fn each_episode_transition_is_one_line() {
        let record = serde_json::json!({"kind":"drift","format":2,"model":"bookstore","episode":3,
            "state":"drift","level":"drift","detector":"psi","target":"item_log_price","feature":8,
            "statistic":0.0407,"threshold":0.04,"window":{"first":1,"last":9},"sequence":9,
            "span":{"first":5,"last":9},"opened":5,"confirmed":9,"resolved":null,
            "signals":[{},{}],"live_version":40,"reaction":"raise_lr",
            "event_time":"2026-11-27T00:00:00Z"});
        let Some(ControlRecord::Drift(confirmed)) = parse_control("drift", &record, 2_000) else {
            panic!("a drift mark");
        };
        assert_eq!((confirmed.episode, confirmed.signals), (Some(3), 2));
        let opened = DriftMark {
            t: 1_000,
            level: "warning".into(),
            signals: 1,
            reaction: Some("alert".into()),
            ..confirmed.clone()
        };
        let resolved = DriftMark {
            t: 9_000,
            level: "resolved".into(),
            reaction: Some("alert".into()),
            ..confirmed.clone()
        };
        assert_eq!(
            drift_lines([&opened, &confirmed, &resolved]),
            vec![
                (
                    1_000,
                    "drift episode 3 opened: warning on item_log_price (psi 0.0407 vs 0.0400), live v40"
                        .to_string()
                ),
                (
                    2_000,
                    "drift episode 3 confirmed on item_log_price (psi 0.0407 vs 0.0400, 2 detectors), live v40; raise_lr requested"
                        .to_string()
                ),
                (9_000, "drift episode 3 resolved, 2 detectors".to_string()),
            ]
        );
        let withheld = DriftMark {
            reaction: Some("alert".into()),
            reaction_withheld: Some("candidate v9 is still under the gate's judgement".into()),
            ..confirmed
        };
        assert!(
            drift_lines([&withheld])[0]
                .1
                .ends_with("reaction withheld (candidate v9 is still under the gate's judgement)")
        );
    }

    #[test]
    fn drifts_in_one_second_make_one_line() {
        let mark = |t: Millis, level: &str, target: &str, detector: &str| DriftMark {
            t,
            level: level.into(),
            detector: detector.into(),
            target: target.into(),
            statistic: 1.0,
            live_version: Some(4),
            episode: None,
            threshold: None,
            signals: 0,
            reaction: None,
            reaction_withheld: None,
        };
        let marks = [
            mark(1_000, "drift", "a", "psi"),
            mark(1_200, "drift", "b", "page_hinkley"),
            mark(1_300, "warning", "c", "psi"),
            mark(1_400, "drift", "c", "psi"),
            mark(1_500, "drift", "d", "psi"),
            mark(5_000, "drift", "error", "ddm"),
        ];
        assert_eq!(
            drift_lines(&marks),
            vec![
                (
                    1_000,
                    "drift on 4 targets: a, b, c and 1 more (page_hinkley, psi), live v4"
                        .to_string()
                ),
                (
                    5_000,
                    "drift on the live version's error (ddm), live v4".to_string()
                ),
            ]
        );
    }

    #[test]
    fn label_rates_keep_the_window_and_skip_empty_samples() {
        let samples: VecDeque<LabelPoint> = [
            LabelPoint(100, Some(0.1), Some(0.08), None),
            LabelPoint(200, None, None, None),
            LabelPoint(300, Some(0.09), Some(0.08), Some(0.085)),
            LabelPoint(400, Some(0.5), Some(0.08), Some(0.4)),
        ]
        .into_iter()
        .collect();
        let points = label_rates(&samples, 150);
        assert_eq!(
            points.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![300, 400]
        );
        assert_eq!(
            serde_json::to_string(&LabelPoint(1, Some(0.5), None, Some(0.25))).unwrap(),
            "[1,0.5,null,0.25]"
        );
    }

    #[test]
    fn bounded_queues_drop_the_oldest() {
        let mut queue = VecDeque::new();
        for i in 0..5 {
            push_bounded(&mut queue, i, 3);
        }
        assert_eq!(queue, VecDeque::from([2, 3, 4]));
    }
}
