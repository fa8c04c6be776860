//! What drift adds to following the live and candidate versions
//! ([`freshet_model::store::follow`]): the rule that keeps, for the promotion gate, the version a jump
//! replaced, and the counting of refusals.
//!
//! Both pointers are followed by the shared [`Follower`](freshet_model::store::Follower): it loads and
//! verifies each new version (the bytes against the manifest's size and sha256, the manifest's
//! sha256 against the pointer's, the model's width against the manifest's schema) and swaps it
//! in; a version that fails is refused and the previous one stays, as predict does, so the error
//! drift measures remains that of the model answering requests.

use freshet_model::Manifest;
use freshet_model::store::follow::{Hooks, Refusal, Swap, VersionCell};
use freshet_model::store::{Cause, Slot};

use crate::metrics::DriftMetrics;

/// Whether moving live from `previous` to `next` (a move of `cause`) jumps to a version that does
/// not continue it: a promotion, rather than a later step of train's chain or a rollback.
/// Manifests written before chains were recorded continue their parent.
pub fn jumps(previous: &Manifest, next: &Manifest, cause: Cause) -> bool {
    let legacy_step = next.lineage.is_none()
        && previous.lineage.is_none()
        && next.parent == Some(previous.version);
    next.lineage_root() != previous.lineage_root() && !legacy_step && cause != Cause::Rollback
}

/// drift's hooks on a follower: for the live pointer, the gate's fallback rule; for both, the
/// live version gauge and the refusal count.
pub struct DriftHooks {
    /// For the live pointer: where the version replaced by a jump is kept for the gate, emptied
    /// when live goes back to an older version.
    pub fallback: Option<VersionCell>,
    pub metrics: DriftMetrics,
}

impl Hooks for DriftHooks {
    fn swapping(&self, swap: &Swap<'_>) {
        if let (Some(fallback), Some(previous)) = (&self.fallback, swap.previous) {
            if jumps(&previous.manifest, &swap.next.manifest, swap.cause) {
                tracing::info!(
                    from = previous.version(),
                    to = swap.next.version(),
                    "live jumped to a version that does not continue the previous one; the gate compares them"
                );
                fallback.store(previous.clone());
            } else if swap.cause == Cause::Rollback {
                fallback.clear();
            }
        }
        if swap.slot == Slot::Live {
            self.metrics.live_version.set(swap.next.version() as i64);
        }
    }

    fn refused(&self, _refusal: &Refusal<'_>) {
        self.metrics.refused_versions.inc();
    }
}

#[cfg(test)]
mod tests {
    use freshet_model::store::follow::Loaded;

    use super::*;

    fn manifest(version: u64, parent: Option<u64>, lineage: Option<u64>) -> Manifest {
        let bytes = [0u8; 4];
        Manifest {
            model: "m".into(),
            version,
            parent,
            config: Default::default(),
            schema: freshet_features::bookstore::schema(),
            sha256: freshet_model::sha256_hex(&bytes),
            size_bytes: 4,
            created_at: chrono::Utc::now(),
            step: 1,
            learned: None,
            high_water_mark: 0,
            metrics: freshet_model::TrainingMetrics::at_chance(0, 0),
            lineage,
            traces: Vec::new(),
        }
    }

    #[test]
    fn a_jump_leaves_the_chain_forward() {
        let live = manifest(10, Some(9), Some(1));
        // train's next step, even past versions the candidate took.
        assert!(!jumps(
            &live,
            &manifest(13, Some(10), Some(1)),
            Cause::Train
        ));
        // A candidate's version (its own chain, whatever its number), or one made by hand.
        assert!(jumps(
            &live,
            &manifest(8, Some(7), Some(6)),
            Cause::Promotion
        ));
        assert!(jumps(&live, &manifest(20, None, None), Cause::Operator));
        // Back to the version a jump replaced: a rollback, not a jump.
        assert!(!jumps(
            &live,
            &manifest(5, Some(4), Some(2)),
            Cause::Rollback
        ));
        // Manifests without chains continue their parent.
        assert!(!jumps(
            &manifest(3, Some(2), None),
            &manifest(4, Some(3), None),
            Cause::Train
        ));
        assert!(jumps(
            &manifest(3, Some(2), None),
            &manifest(9, Some(7), None),
            Cause::Promotion
        ));
    }

    /// A loaded version with `manifest(version, parent, lineage)`.
    fn loaded(version: u64, parent: Option<u64>, lineage: Option<u64>) -> std::sync::Arc<Loaded> {
        let config = freshet_model::ModelConfig::default();
        let bytes = freshet_model::Trainer::new(&config, 3)
            .unwrap()
            .to_bytes()
            .unwrap();
        std::sync::Arc::new(Loaded {
            manifest: manifest(version, parent, lineage),
            scorer: freshet_model::ModelScorer::from_bytes(&bytes).unwrap(),
        })
    }

    #[test]
    fn the_gate_keeps_what_a_jump_replaced_until_a_rollback_whatever_its_reason() {
        let fallback = VersionCell::default();
        let hooks = DriftHooks {
            fallback: Some(fallback.clone()),
            metrics: DriftMetrics::default(),
        };
        let swap = |previous: &std::sync::Arc<Loaded>, next: &std::sync::Arc<Loaded>, cause| {
            hooks.swapping(&Swap {
                slot: Slot::Live,
                previous: Some(previous),
                next,
                cause,
                stand_in: None,
            })
        };
        let (good, next_step, by_hand) = (
            loaded(10, Some(9), Some(1)),
            loaded(11, Some(10), Some(1)),
            loaded(20, None, None),
        );
        swap(&good, &by_hand, Cause::Operator);
        assert_eq!(fallback.version(), Some(10));
        // An operator's rollback (say its reason is "bad batch"): the fallback goes.
        swap(&by_hand, &good, Cause::Rollback);
        assert!(fallback.current().is_none());
        swap(&good, &by_hand, Cause::Promotion);
        // train's next step on the new chain keeps the trial going.
        swap(&by_hand, &loaded(21, Some(20), Some(20)), Cause::Train);
        assert_eq!(fallback.version(), Some(10));
        swap(&good, &next_step, Cause::Train);
        assert_eq!(hooks.metrics.live_version.get(), 11);
    }
}
