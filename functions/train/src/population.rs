//! A model's population, pure: which configurations learn beside live, and which of them train
//! offers the gate as the model's candidate.
//!
//! With `--population`, every member (a kind with the model's settings) learns every example
//! live learns, in the same batches, each scoring a row before its own step learns it (the
//! prequential measurement; members share no parameters, so no member has learned an example
//! when it scores it). One member is live; the others are challengers. After each live version,
//! the challenger this module chooses is published to `<model>.candidate`, holding exactly
//! live's examples, and drift's gate promotes it only if it beats live on examples neither
//! learned, with its forgetting guard. After a promotion live continues as that member's
//! lineage, and the member live was becomes a challenger.
//!
//! # The rule: follow the leader over a sliding window, with hysteresis
//!
//! Every member learns every example, so every member's prequential accuracy over the same
//! recent window is known: a full-information choice among experts, where the published rule
//! is to follow the leader (FTL; Cesa-Bianchi & Lugosi, *Prediction, Learning, and Games*,
//! 2006, ch. 3–4), here over a sliding window so that the choice follows a concept that
//! changes, and lazily: the chosen challenger is replaced only when another leads it by
//! [`SelectionConfig::margin`] on the same window (hysteresis), so two members level with each
//! other do not take turns and restart the gate's trial at every version. A challenger is
//! offered only while it leads live on the window; the gate then judges it on examples neither
//! learned.
//!
//! Why not River's `SuccessiveHalvingClassifier`: it halves the population at fixed budgets and
//! discards the losers for good. That suits a one-off search on a stationary stream; on a
//! stream whose concept changes, the member that fits the new concept may be one discarded
//! under the old. Why not a bandit (`BanditClassifier`): a bandit trains only the arm it pulls,
//! to save computation, and explores to learn the others' worth. Here every member must learn
//! every example anyway, so that a promoted member holds exactly live's examples and the
//! lineage stays exactly-once; with every member's score observed, exploration buys nothing.

use freshet_model::{Dimensions, ModelConfig, ModelKind};

/// The members `--population auto` declares, and the reason in `BENCHMARKS.md` ("Learning
/// quality"): on the six streams of `make quality` the best single kind is logistic on the three
/// linear ones and Phishing, the mlp on Agrawal and fourier on Bananas; the factorization
/// machine is never the best by more than a few tenths, so it is left out (a fourth member
/// costs its training time on every example).
pub const AUTO: [&str; 3] = ["logistic", "mlp", "fourier"];

/// The configurations of a population declared as `text`: `none` (no population), `auto`
/// ([`AUTO`]) or kinds separated by commas. Each member takes `base`'s settings with its own
/// kind (the dimension flags apply to each kind that has them); `base`'s own kind is always a
/// member, first. Returns no member for `none`.
pub fn members(
    text: &str,
    base: &ModelConfig,
    dimensions: Dimensions,
) -> Result<Vec<ModelConfig>, String> {
    let names: Vec<&str> = match text.trim() {
        "none" | "" => return Ok(Vec::new()),
        "auto" => AUTO.to_vec(),
        list => list.split(',').map(str::trim).collect(),
    };
    let mut out = vec![*base];
    for name in names {
        let kind = name.parse::<ModelKind>()?.with_dimensions(dimensions);
        let member = ModelConfig { kind, ..*base };
        member.validate().map_err(|e| e.to_string())?;
        if !out.contains(&member) {
            out.push(member);
        }
    }
    if out.len() < 2 {
        return Err(format!(
            "a population needs a member besides the model's own kind ({})",
            base.kind.name()
        ));
    }
    Ok(out)
}

/// Accuracy by which a challenger must lead the one chosen before to replace it, by default:
/// a point, about one standard error of an accuracy near 0.85 over a window of 1,000 examples.
pub const MARGIN: f64 = 0.01;

/// Examples a member's window must hold before it is compared, for a metrics window of
/// `window` examples: the whole window, up to 200. Members begun together cover the same
/// examples however short their windows; 200 lets the choice be made early, and the gate's
/// trial on examples neither learned (500 by default) guards against choosing on noise.
pub fn min_examples(window: usize) -> u64 {
    (window as u64).min(200)
}

/// How the challenger to offer is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectionConfig {
    /// Accuracy by which another challenger must lead the chosen one to replace it.
    pub margin: f64,
    /// Examples a member's window must hold before it is compared: every member's window then
    /// covers the same recent examples.
    pub min_examples: u64,
}

/// One member's prequential standing over the recent window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// Its index among the population's members.
    pub member: usize,
    pub accuracy: f64,
    pub examples: u64,
}

/// The choice's state: the challenger chosen last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    chosen: Option<usize>,
}

impl Selection {
    /// The challenger chosen last, if any.
    pub fn chosen(&self) -> Option<usize> {
        self.chosen
    }

    /// Chooses among `challengers` (see the module documentation) and returns the one to
    /// publish as the candidate now, if any: the chosen challenger while it leads `live` on
    /// the window. Members with too short a window are not compared; ties go to the member
    /// declared first.
    pub fn choose(
        &mut self,
        config: &SelectionConfig,
        live: &Standing,
        challengers: &[Standing],
    ) -> Option<usize> {
        let eligible = |s: &&Standing| s.examples >= config.min_examples;
        let leader = challengers
            .iter()
            .filter(eligible)
            .fold(None::<&Standing>, |best, s| match best {
                Some(b)
                    if b.accuracy > s.accuracy
                        || (b.accuracy == s.accuracy && b.member < s.member) =>
                {
                    Some(b)
                }
                _ => Some(s),
            });
        let current = self
            .chosen
            .and_then(|c| challengers.iter().filter(eligible).find(|s| s.member == c));
        let chosen = match (current, leader) {
            (Some(current), Some(leader)) if leader.accuracy < current.accuracy + config.margin => {
                current
            }
            (_, Some(leader)) => leader,
            (Some(current), None) => current,
            (None, None) => {
                self.chosen = None;
                return None;
            }
        };
        self.chosen = Some(chosen.member);
        (live.examples >= config.min_examples.min(chosen.examples)
            && chosen.accuracy > live.accuracy)
            .then_some(chosen.member)
    }

    /// Forgets the choice (live became another member, or the population was seeded again).
    pub fn reset(&mut self) {
        self.chosen = None;
    }
}

/// A state a member could take up: the live high-water mark it holds the examples up to, the
/// width it reads, and the version it was last published as (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub mark: u64,
    pub n_features: usize,
    pub published: Option<u64>,
}

/// The lineage in memory, just loaded or begun: which member it is, its version, the mark and
/// the width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub live_member: Option<usize>,
    pub live_version: Option<u64>,
    pub mark: u64,
    pub n_features: usize,
}

/// Where a member's state comes from when the lineage in memory changes (train started, the
/// gate moved live, a hold was released, a new schema began a chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// It is live's member, and live is the version it was last offered as: the gate promoted
    /// it, and live continues as its lineage.
    Promoted,
    /// It is live's member, live being another of its versions: nothing beside live.
    Live,
    /// A challenger returns to its state saved at live's version.
    Saved,
    /// The member live was until now joins the challengers from its last version.
    WasLive,
    /// The version the candidate pointer names (read on start) holds live's examples.
    Named,
    /// None of those holds exactly live's examples: fresh parameters, learning from after
    /// live's version.
    Fresh,
}

/// Where `member`'s state comes from: its own `saved` state, the state of the member live
/// `was_live` (its index), or the candidate version `named` (of this member's configuration),
/// whichever holds exactly the examples up to live's mark and reads its width; otherwise fresh.
/// Only a state at live's mark can continue beside it: one ahead would learn examples twice, one
/// behind would skip some.
pub fn origin(
    member: usize,
    now: &Now,
    saved: Option<Held>,
    was_live: Option<(usize, Held)>,
    named: Option<Held>,
) -> Origin {
    let holds = |held: &Held| held.mark == now.mark && held.n_features == now.n_features;
    if now.live_member == Some(member) {
        return match saved {
            Some(held)
                if holds(&held)
                    && held.published.is_some()
                    && held.published == now.live_version =>
            {
                Origin::Promoted
            }
            _ => Origin::Live,
        };
    }
    if saved.as_ref().is_some_and(holds) {
        Origin::Saved
    } else if was_live.is_some_and(|(m, held)| m == member && holds(&held)) {
        Origin::WasLive
    } else if named.as_ref().is_some_and(holds) {
        Origin::Named
    } else {
        Origin::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: SelectionConfig = SelectionConfig {
        margin: 0.01,
        min_examples: 100,
    };

    fn at(member: usize, accuracy: f64) -> Standing {
        Standing {
            member,
            accuracy,
            examples: 1_000,
        }
    }

    #[test]
    fn a_population_is_declared_once_with_the_models_own_kind_first() {
        let base = ModelConfig::default();
        assert!(
            members("none", &base, Dimensions::default())
                .unwrap()
                .is_empty()
        );
        let auto = members("auto", &base, Dimensions::default()).unwrap();
        let kinds: Vec<&str> = auto.iter().map(|c| c.kind.name()).collect();
        assert_eq!(kinds, ["logistic", "mlp", "fourier"]);
        assert!(auto.iter().all(|c| c.hyper == base.hyper));
        // The model's kind joins the list when it is not in it; repeats count once; the
        // dimension flags apply to the kinds that have them.
        let fourier = ModelConfig {
            kind: ModelKind::Fourier { hidden: 64 },
            ..base
        };
        let listed = members(
            "mlp, logistic,mlp",
            &fourier,
            Dimensions {
                hidden: Some(8),
                factors: None,
            },
        )
        .unwrap();
        let kinds: Vec<ModelKind> = listed.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                ModelKind::Fourier { hidden: 64 },
                ModelKind::Mlp { hidden: 8 },
                ModelKind::Logistic
            ]
        );
        assert!(members("logistic", &base, Dimensions::default()).is_err());
        assert!(members("logistic,tree", &base, Dimensions::default()).is_err());
    }

    #[test]
    fn only_a_state_at_lives_mark_continues_beside_it() {
        let now = Now {
            live_member: Some(1),
            live_version: Some(9),
            mark: 500,
            n_features: 2,
        };
        let at = |mark: u64, published: Option<u64>| Held {
            mark,
            n_features: 2,
            published,
        };
        // The gate promoted member 1's version 9: live continues as its lineage.
        assert_eq!(
            origin(1, &now, Some(at(500, Some(9))), None, None),
            Origin::Promoted
        );
        // Live moved to another of member 1's versions (by hand, or a rollback).
        assert_eq!(
            origin(1, &now, Some(at(500, Some(7))), None, None),
            Origin::Live
        );
        assert_eq!(origin(1, &now, None, None, None), Origin::Live);
        // A challenger saved at live's mark returns to it; the member live was joins from its
        // last version.
        assert_eq!(
            origin(0, &now, Some(at(500, None)), None, None),
            Origin::Saved
        );
        assert_eq!(
            origin(0, &now, None, Some((0, at(500, Some(8)))), None),
            Origin::WasLive
        );
        assert_eq!(
            origin(2, &now, None, Some((0, at(500, Some(8)))), None),
            Origin::Fresh
        );
        // Live was set back to an older version: a state ahead of it would learn examples
        // twice, so the member begins fresh; one of another width cannot read the rows.
        assert_eq!(
            origin(0, &now, Some(at(800, None)), None, None),
            Origin::Fresh
        );
        let wide = Held {
            n_features: 3,
            ..at(500, None)
        };
        assert_eq!(origin(0, &now, Some(wide), None, None), Origin::Fresh);
        // On start, the candidate version holding live's examples resumes its member.
        assert_eq!(
            origin(2, &now, None, None, Some(at(500, Some(10)))),
            Origin::Named
        );
        assert_eq!(
            origin(2, &now, None, None, Some(at(450, Some(10)))),
            Origin::Fresh
        );
    }

    #[test]
    fn the_leader_is_offered_only_while_it_beats_live() {
        let mut selection = Selection::default();
        let live = at(0, 0.60);
        assert_eq!(
            selection.choose(&CONFIG, &live, &[at(1, 0.70), at(2, 0.85)]),
            Some(2)
        );
        // Chosen, but behind live now: nothing is offered, and the choice stands.
        assert_eq!(
            selection.choose(&CONFIG, &at(0, 0.90), &[at(1, 0.70), at(2, 0.85)]),
            None
        );
        assert_eq!(selection.chosen(), Some(2));
    }

    #[test]
    fn the_choice_changes_only_when_another_leads_by_the_margin() {
        let mut selection = Selection::default();
        let live = at(0, 0.5);
        assert_eq!(
            selection.choose(&CONFIG, &live, &[at(1, 0.80), at(2, 0.79)]),
            Some(1)
        );
        // Level within the margin: the choice holds, however the two alternate.
        for (a, b) in [(0.800, 0.805), (0.79, 0.795), (0.81, 0.8195)] {
            assert_eq!(
                selection.choose(&CONFIG, &live, &[at(1, a), at(2, b)]),
                Some(1),
                "{a} {b}"
            );
        }
        // Ahead by the margin: it takes over.
        assert_eq!(
            selection.choose(&CONFIG, &live, &[at(1, 0.80), at(2, 0.811)]),
            Some(2)
        );
    }

    #[test]
    fn short_windows_are_not_compared_and_ties_go_to_the_first_declared() {
        let mut selection = Selection::default();
        let live = at(0, 0.5);
        let fresh = Standing {
            member: 1,
            accuracy: 1.0,
            examples: 10,
        };
        assert_eq!(
            selection.choose(&CONFIG, &live, &[fresh, at(2, 0.7)]),
            Some(2)
        );
        let mut selection = Selection::default();
        assert_eq!(selection.choose(&CONFIG, &live, &[fresh]), None);
        assert_eq!(selection.chosen(), None);
        assert_eq!(
            selection.choose(&CONFIG, &live, &[at(2, 0.7), at(1, 0.7)]),
            Some(1)
        );
        selection.reset();
        assert_eq!(selection.chosen(), None);
    }
}
