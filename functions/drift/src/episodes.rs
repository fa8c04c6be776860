//! Episodes: one alarm per change, however many detectors see it and for however long.
//!
//! A change in the stream moves several inputs and the model's error at once, and a detector that
//! signalled starts afresh and may signal again while the change settles. Reporting each signal
//! is an alarm per tick; an episode groups them. Its lifecycle:
//!
//! - **opened** by the first signal while no episode is open, in state `warning` (a warning
//!   signal) or directly `drift` (a drift signal);
//! - **confirmed** (`warning` → `drift`) by the first drift signal, which is when the model's
//!   reaction is requested, unless another is still outstanding;
//! - joined by every later signal, whatever its detector and target: each becomes one of its
//!   signals (the latest per detector and target), with no new alarm;
//! - **resolved** once no detector has signalled, and none has sat in its warning zone, for
//!   `rearm` of the model's examples. This is the re-arm rule: a shift that persists keeps its
//!   episode open (detectors that restart on it and signal again join it), and only a change
//!   after a quiet spell opens a new one.
//!
//! One episode is open at a time, so at most one reaction per model is requested at a time from
//! this side. Everything here is plain data kept in drift's checkpoint: a restart continues the
//! open episode, and a redelivered example (at or below the checkpoint's mark) is never observed,
//! so nothing is opened or confirmed twice.

pub use freshet::control::EpisodeState;
use freshet::control::Reaction;
use serde::{Deserialize, Serialize};

use crate::bank::Finding;
use crate::detectors::Level;

/// Resolved episodes a checkpoint keeps for `freshet status`, newest last.
pub const RECENT_KEPT: usize = 8;

/// The episode settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeConfig {
    /// Examples of the model without any signal or warning after which an open episode is
    /// resolved.
    pub rearm: u64,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        EpisodeConfig { rearm: 10_000 }
    }
}

/// What was decided about the model's reaction when the episode was confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum ReactionDecision {
    /// The configured reaction is `alert`: nothing to request.
    NotConfigured,
    /// Requested from train.
    Requested { reaction: Reaction },
    /// Not requested: another reaction is still outstanding.
    Withheld { reaction: Reaction, reason: String },
}

impl ReactionDecision {
    /// The reaction this decision asks train for (`alert` when none).
    pub fn requested(&self) -> Reaction {
        match self {
            ReactionDecision::Requested { reaction } => *reaction,
            _ => Reaction::Alert,
        }
    }
}

/// The reaction configured for the model, and whether one requested earlier is still in flight
/// (a candidate under judgement, say), as the adapter sees it for a batch.
#[derive(Debug, Clone, Copy)]
pub struct ReactionPolicy<'a> {
    pub reaction: Reaction,
    /// Why a new request must wait, when one must.
    pub outstanding: Option<&'a str>,
}

impl ReactionPolicy<'_> {
    fn decide(&self) -> ReactionDecision {
        match (self.reaction, self.outstanding) {
            (Reaction::Alert, _) => ReactionDecision::NotConfigured,
            (reaction, Some(reason)) => ReactionDecision::Withheld {
                reaction,
                reason: reason.to_string(),
            },
            (reaction, None) => ReactionDecision::Requested { reaction },
        }
    }
}

/// One episode: its lifecycle, the signals that make it up and the reaction decided for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// Per model, from 1.
    pub id: u64,
    pub state: EpisodeState,
    /// Stream sequence of the example that opened it.
    pub opened: u64,
    /// Of the example that confirmed it.
    pub confirmed: Option<u64>,
    /// Of the example that resolved it.
    pub resolved: Option<u64>,
    /// Of the last example at which a detector signalled or sat in its warning zone.
    pub last_active: u64,
    /// The model's examples folded at that example: the re-arm span counts from here.
    last_active_examples: u64,
    /// The signal that opened it.
    pub first: Finding,
    /// The first drift signal, which confirmed it.
    pub confirmation: Option<Finding>,
    /// The latest signal of each detector and target that signalled in it, in the order they
    /// first did; at most one per detector and target.
    pub signals: Vec<Finding>,
    /// Decided when it was confirmed.
    pub reaction: Option<ReactionDecision>,
}

impl Episode {
    /// The finding that speaks for the episode now: the confirmation once there is one.
    pub fn headline(&self) -> &Finding {
        self.confirmation.as_ref().unwrap_or(&self.first)
    }

    fn record(&mut self, finding: &Finding) {
        match self
            .signals
            .iter_mut()
            .find(|s| s.detector == finding.detector && s.target == finding.target)
        {
            // A warning does not overwrite the drift it may follow.
            Some(known) if known.level == Level::Drift && finding.level == Level::Warning => {}
            Some(known) => *known = *finding,
            None => self.signals.push(*finding),
        }
    }

    fn confirm(&mut self, finding: &Finding, policy: &ReactionPolicy<'_>) {
        self.state = EpisodeState::Drift;
        self.confirmed = Some(finding.sequence);
        self.confirmation = Some(*finding);
        self.reaction = Some(policy.decide());
    }
}

/// A change of an episode's state, to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The episode as it is after the change.
    pub episode: Episode,
}

impl Transition {
    pub fn state(&self) -> EpisodeState {
        self.episode.state
    }
}

/// The episodes of one model, as its checkpoint keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episodes {
    /// The id the next episode takes.
    next_id: u64,
    open: Option<Episode>,
    /// The last resolved ones, newest last, at most [`RECENT_KEPT`].
    recent: Vec<Episode>,
}

impl Default for Episodes {
    fn default() -> Self {
        Episodes {
            next_id: 1,
            open: None,
            recent: Vec::new(),
        }
    }
}

impl Episodes {
    /// The open episode, if any.
    pub fn open(&self) -> Option<&Episode> {
        self.open.as_ref()
    }

    /// The last resolved episodes, newest last.
    pub fn recent(&self) -> &[Episode] {
        &self.recent
    }

    /// Episodes opened so far.
    pub fn opened(&self) -> u64 {
        self.next_id - 1
    }

    /// Takes the findings of the example at `sequence` (the `examples`-th of the model), with
    /// `active` telling whether any detector sits in its warning zone after it, and returns the
    /// transitions it caused (at most one).
    pub fn observe(
        &mut self,
        config: &EpisodeConfig,
        sequence: u64,
        examples: u64,
        findings: &[Finding],
        active: bool,
        policy: &ReactionPolicy<'_>,
    ) -> Option<Transition> {
        let drift = findings.iter().find(|f| f.level == Level::Drift);
        let Some(open) = self.open.as_mut() else {
            let first = findings.first()?;
            let mut episode = Episode {
                id: self.next_id,
                state: EpisodeState::Warning,
                opened: sequence,
                confirmed: None,
                resolved: None,
                last_active: sequence,
                last_active_examples: examples,
                first: *first,
                confirmation: None,
                signals: Vec::new(),
                reaction: None,
            };
            self.next_id += 1;
            for finding in findings {
                episode.record(finding);
            }
            if let Some(drift) = drift {
                episode.confirm(drift, policy);
            }
            self.open = Some(episode.clone());
            return Some(Transition { episode });
        };
        if !findings.is_empty() || active {
            open.last_active = sequence;
            open.last_active_examples = examples;
        }
        for finding in findings {
            open.record(finding);
        }
        if open.state == EpisodeState::Warning
            && let Some(drift) = drift
        {
            open.confirm(drift, policy);
            return Some(Transition {
                episode: open.clone(),
            });
        }
        if findings.is_empty()
            && !active
            && examples.saturating_sub(open.last_active_examples) >= config.rearm
        {
            let mut episode = self.open.take()?;
            episode.state = EpisodeState::Resolved;
            episode.resolved = Some(sequence);
            self.recent.push(episode.clone());
            if self.recent.len() > RECENT_KEPT {
                self.recent.remove(0);
            }
            return Some(Transition { episode });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::{DetectorKind, Target, Window};

    fn finding(sequence: u64, detector: DetectorKind, target: Target, level: Level) -> Finding {
        Finding {
            sequence,
            detector,
            target,
            level,
            statistic: 0.3,
            threshold: Some(0.1),
            window: Window {
                first: 1,
                last: sequence,
                count: sequence,
            },
            reference: Some(2_000),
            recent: Some(1_000),
        }
    }

    const CONFIG: EpisodeConfig = EpisodeConfig { rearm: 100 };

    fn policy(outstanding: Option<&str>) -> ReactionPolicy<'_> {
        ReactionPolicy {
            reaction: Reaction::RaiseLr,
            outstanding,
        }
    }

    /// Feeds examples 1..=n (sequence = example count), with `signals` at some of them and
    /// every example in `warm` inside a warning zone; returns the transitions.
    fn run(
        episodes: &mut Episodes,
        n: u64,
        signals: &[(u64, Finding)],
        warm: std::ops::Range<u64>,
    ) -> Vec<(u64, Transition)> {
        let mut out = Vec::new();
        for sequence in 1..=n {
            let findings: Vec<Finding> = signals
                .iter()
                .filter(|(at, _)| *at == sequence)
                .map(|(_, f)| *f)
                .collect();
            let active = warm.contains(&sequence);
            if let Some(t) = episodes.observe(
                &CONFIG,
                sequence,
                sequence,
                &findings,
                active,
                &policy(None),
            ) {
                out.push((sequence, t));
            }
        }
        out
    }

    #[test]
    fn a_change_seen_by_many_detectors_is_one_episode_with_one_request() {
        use DetectorKind::*;
        let psi_price = |at, level| finding(at, Psi, Target::Feature(8), level);
        let signals = [
            (50, psi_price(50, Level::Warning)),
            (60, psi_price(60, Level::Drift)),
            (61, finding(61, Adwin, Target::Error, Level::Drift)),
            (62, finding(62, Psi, Target::Feature(12), Level::Drift)),
            // The restarted PSI signals again on the same shift, within the re-arm span.
            (140, psi_price(140, Level::Drift)),
        ];
        let mut episodes = Episodes::default();
        let transitions = run(&mut episodes, 400, &signals, 0..0);
        let states: Vec<(u64, EpisodeState)> =
            transitions.iter().map(|(at, t)| (*at, t.state())).collect();
        assert_eq!(
            states,
            vec![
                (50, EpisodeState::Warning),
                (60, EpisodeState::Drift),
                (240, EpisodeState::Resolved)
            ]
        );
        let resolved = &transitions[2].1.episode;
        assert_eq!(resolved.id, 1);
        assert_eq!(
            (resolved.opened, resolved.confirmed, resolved.resolved),
            (50, Some(60), Some(240))
        );
        assert_eq!(resolved.last_active, 140);
        assert_eq!(resolved.first.level, Level::Warning);
        assert_eq!(resolved.headline().sequence, 60);
        // One signal per detector and target, the latest kept.
        assert_eq!(resolved.signals.len(), 3);
        assert_eq!(resolved.signals[0].sequence, 140);
        assert_eq!(
            resolved.reaction,
            Some(ReactionDecision::Requested {
                reaction: Reaction::RaiseLr
            })
        );
        assert!(episodes.open().is_none());
        assert_eq!(episodes.recent().len(), 1);
        assert_eq!(episodes.opened(), 1);
    }

    #[test]
    fn a_warning_zone_keeps_an_episode_open_and_a_later_change_opens_another() {
        let warning = finding(10, DetectorKind::Psi, Target::Feature(5), Level::Warning);
        let later = finding(500, DetectorKind::Adwin, Target::Error, Level::Drift);
        let mut episodes = Episodes::default();
        // In the warning zone from 10 to 300: no resolution until 100 examples after it.
        let transitions = run(&mut episodes, 700, &[(10, warning), (500, later)], 10..300);
        let states: Vec<(u64, EpisodeState, u64)> = transitions
            .iter()
            .map(|(at, t)| (*at, t.state(), t.episode.id))
            .collect();
        assert_eq!(
            states,
            vec![
                (10, EpisodeState::Warning, 1),
                (399, EpisodeState::Resolved, 1),
                (500, EpisodeState::Drift, 2),
                (600, EpisodeState::Resolved, 2),
            ]
        );
        // Never confirmed: no reaction was decided.
        assert_eq!(transitions[1].1.episode.reaction, None);
        assert_eq!(transitions[1].1.episode.confirmed, None);
    }

    #[test]
    fn a_reaction_waits_while_another_is_outstanding() {
        let drift = finding(5, DetectorKind::Adwin, Target::Error, Level::Drift);
        let mut episodes = Episodes::default();
        let t = episodes
            .observe(
                &CONFIG,
                5,
                5,
                &[drift],
                false,
                &policy(Some("candidate v9 is under judgement")),
            )
            .unwrap();
        assert_eq!(
            t.episode.reaction,
            Some(ReactionDecision::Withheld {
                reaction: Reaction::RaiseLr,
                reason: "candidate v9 is under judgement".into()
            })
        );
        assert_eq!(t.episode.reaction.unwrap().requested(), Reaction::Alert);
        let alert = ReactionPolicy {
            reaction: Reaction::Alert,
            outstanding: None,
        };
        let mut episodes = Episodes::default();
        let t = episodes
            .observe(&CONFIG, 5, 5, &[drift], false, &alert)
            .unwrap();
        assert_eq!(t.episode.reaction, Some(ReactionDecision::NotConfigured));
    }

    #[test]
    fn only_the_last_resolved_episodes_are_kept_and_ids_keep_counting() {
        let mut episodes = Episodes::default();
        let signals: Vec<(u64, Finding)> = (0..12)
            .map(|k| {
                let at = 1 + k * 200;
                (
                    at,
                    finding(at, DetectorKind::Psi, Target::Feature(0), Level::Drift),
                )
            })
            .collect();
        let transitions = run(&mut episodes, 12 * 200 + 150, &signals, 0..0);
        assert_eq!(transitions.len(), 24);
        assert_eq!(episodes.opened(), 12);
        assert_eq!(episodes.recent().len(), RECENT_KEPT);
        assert_eq!(episodes.recent().last().unwrap().id, 12);
        let json = serde_json::to_string(&episodes).unwrap();
        assert_eq!(serde_json::from_str::<Episodes>(&json).unwrap(), episodes);
    }
}
