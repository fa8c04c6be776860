//! The hot-swap follower: keeps the version a model pointer names loaded, verified and ready to
//! score, beside whatever serves now, and swaps it in atomically. predict serves from it and
//! drift scores with it; both follow `<model>.live` and `<model>.candidate` this way.
//!
//! A [`Follower`] watches its pointer (the current value first, then every change), loads each
//! new version ([`ArtifactReader::load_pointed`]: the bytes against the manifest's size and
//! sha256, the manifest against the pointer, the model decoded, a test inference), lets the
//! function check it ([`Hooks::prepare`]: predict checks the schema it builds features for) and
//! only then stores it in its [`VersionCell`]. Readers take a snapshot without a lock and score on
//! it; a swap never waits for them and they never wait for a swap.
//!
//! What it does when things go wrong:
//!
//! - a version that fails any check is **refused** ([`Hooks::refused`]) and the version loaded
//!   keeps serving;
//! - a load that failed because the object store could not be reached is **retried** with one
//!   backoff ([`Backoff`]) until it loads, is refused, or the pointer moves on;
//! - when the live pointer names a refused version and **nothing is loaded yet** (a predictor
//!   started while live names a damaged artifact), it serves the newest version of the pointer's
//!   history that loads instead, and says so ([`VersionCell::stand_in`]) until the pointer names a
//!   version that loads;
//! - a removed candidate pointer empties the cell; a removed live pointer keeps the version
//!   loaded (a model is never left without one by accident);
//! - a broken watch is watched again (the current value first, so nothing is missed), and the
//!   follower stops when its shutdown future completes.
//!
//! Each swap is reported before readers see it ([`Hooks::swapping`]: the version replaced, the
//! new one and the [`Cause`] of the pointer move), so drift keeps the version a promotion
//! replaced for its gate.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::StreamExt;
use tokio::time::Instant;

use crate::store::artifacts::{ArtifactReader, VersionRefusal};
use crate::store::pointers::{Cause, Pointer, PointerChange, PointerStore, Slot};
use crate::{Manifest, ModelScorer};
use freshet::ids::ModelName;

/// A loaded, verified version, ready to score.
pub struct Loaded {
    pub manifest: Manifest,
    pub scorer: ModelScorer,
}

impl Loaded {
    /// The version number, from its manifest.
    pub fn version(&self) -> u64 {
        self.manifest.version
    }
}

/// Why a cell serves a version its pointer does not name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandIn {
    /// The version served instead: the newest of the pointer's history that loads.
    pub serving: u64,
    /// The version the pointer names, which was refused.
    pub refused: u64,
    /// Why it was refused.
    pub reason: String,
}

/// One loaded version, swapped atomically. Clones share it.
#[derive(Clone, Default)]
pub struct VersionCell {
    loaded: Arc<ArcSwapOption<Loaded>>,
    stand_in: Arc<ArcSwapOption<StandIn>>,
}

impl VersionCell {
    /// The version loaded, if any: hold it for the duration of one request (or batch), which then
    /// finishes on the version it started with.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.loaded.load_full()
    }

    /// The number of the version loaded.
    pub fn version(&self) -> Option<u64> {
        self.loaded.load().as_ref().map(|loaded| loaded.version())
    }

    /// Set while the version loaded stands in for one its pointer names but that was refused.
    pub fn stand_in(&self) -> Option<Arc<StandIn>> {
        self.stand_in.load_full()
    }

    /// Makes `loaded` the version of the cell.
    pub fn store(&self, loaded: Arc<Loaded>) {
        self.loaded.store(Some(loaded));
    }

    /// Empties the cell (a candidate withdrawn, the gate's fallback no longer needed).
    pub fn clear(&self) {
        self.loaded.store(None);
        self.stand_in.store(None);
    }

    fn set_stand_in(&self, stand_in: Option<StandIn>) {
        self.stand_in.store(stand_in.map(Arc::new));
    }
}

/// A swap about to happen.
pub struct Swap<'a> {
    pub slot: Slot,
    /// The version replaced, if one was loaded.
    pub previous: Option<&'a Arc<Loaded>>,
    pub next: &'a Arc<Loaded>,
    /// The cause of the pointer move that led to the swap.
    pub cause: Cause,
    /// Set when `next` stands in for the version the pointer names.
    pub stand_in: Option<&'a StandIn>,
}

/// A version refused; the cell keeps what it had.
pub struct Refusal<'a> {
    pub slot: Slot,
    /// The pointer naming the refused version.
    pub pointer: &'a Pointer,
    pub reason: &'a str,
    /// The version that keeps serving, if any.
    pub serving: Option<u64>,
}

/// What a function adds to following a pointer. Every method has a default that does nothing.
pub trait Hooks: Send + Sync {
    /// Checks a loaded version before it may be swapped in; an error refuses it with that reason.
    fn prepare(&self, _loaded: &Loaded) -> Result<(), String> {
        Ok(())
    }

    /// Called just before `swap.next` replaces `swap.previous` in the cell.
    fn swapping(&self, _swap: &Swap<'_>) {}

    /// Called when a version is refused.
    fn refused(&self, _refusal: &Refusal<'_>) {}

    /// Called when a removed candidate pointer emptied the cell.
    fn cleared(&self) {}
}

impl Hooks for () {}

/// The one retry policy of a follower: after the `n`th failed attempt at loading a version (or
/// at watching the pointer), wait `first · 2ⁿ⁻¹`, at most `longest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub longest: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            longest: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait after the `attempt`th failure (1 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.clamp(1, 32) - 1;
        self.first
            .saturating_mul(1u32 << doublings.min(20))
            .min(self.longest)
    }
}

/// A version whose load failed transiently, and when to try again.
struct Pending {
    pointer: Pointer,
    attempt: u32,
    at: Instant,
}

/// Follows one pointer of one model into a [`VersionCell`].
pub struct Follower<P, A, H = ()> {
    model: ModelName,
    slot: Slot,
    pointers: P,
    artifacts: A,
    hooks: H,
    cell: VersionCell,
    backoff: Backoff,
    pending: Option<Pending>,
}

impl<P: PointerStore, A: ArtifactReader, H: Hooks> Follower<P, A, H> {
    /// A follower of `model`'s `slot`, with an empty cell and the default backoff.
    pub fn new(model: ModelName, slot: Slot, pointers: P, artifacts: A, hooks: H) -> Self {
        Follower {
            model,
            slot,
            pointers,
            artifacts,
            hooks,
            cell: VersionCell::default(),
            backoff: Backoff::default(),
            pending: None,
        }
    }

    /// Retries with `backoff` instead of the default.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The cell this follower keeps loaded; readers keep a clone.
    pub fn cell(&self) -> VersionCell {
        self.cell.clone()
    }

    /// Loads the version the pointer names now, so that what starts next (drift's first batch)
    /// has it. Without a pointer, or if it cannot be read, [`run`](Self::run) catches up.
    pub async fn load_current(&mut self) {
        match self.pointers.get(&self.model, self.slot).await {
            Ok(current) => match current.value {
                Some(pointer) => self.follow(pointer, 1).await,
                None => {
                    tracing::info!(model = %self.model, slot = self.slot.as_str(), "no version in this slot yet")
                }
            },
            Err(failure) => {
                tracing::warn!(model = %self.model, slot = self.slot.as_str(), error = %failure, "cannot read the pointer; the watch catches up")
            }
        }
    }

    /// Follows the pointer until `shutdown` completes, watching it again whenever the watch
    /// breaks.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failed_watches = 0u32;
        loop {
            let watched = tokio::select! {
                watched = self.pointers.watch(&self.model, self.slot) => watched,
                () = &mut shutdown => return,
            };
            let mut changes = match watched {
                Ok(changes) => {
                    failed_watches = 0;
                    changes
                }
                Err(failure) => {
                    failed_watches += 1;
                    tracing::warn!(model = %self.model, slot = self.slot.as_str(), error = %failure, "cannot watch the pointer; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(self.backoff.delay(failed_watches)) => continue,
                        () = &mut shutdown => return,
                    }
                }
            };
            loop {
                let retry_at = self.pending.as_ref().map(|pending| pending.at);
                tokio::select! {
                    change = changes.next() => match change {
                        Some(Ok(change)) => self.apply(change).await,
                        Some(Err(failure)) => {
                            tracing::warn!(model = %self.model, slot = self.slot.as_str(), error = %failure, "the pointer watch broke; watching again");
                            break;
                        }
                        None => break,
                    },
                    () = sleep_until(retry_at), if retry_at.is_some() => self.retry().await,
                    () = &mut shutdown => return,
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.backoff.first) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// Acts on one change of the pointer; a newer value replaces a load waiting to be retried.
    async fn apply(&mut self, change: PointerChange) {
        self.pending = None;
        match change {
            PointerChange::Set { pointer, .. } => self.follow(pointer, 1).await,
            PointerChange::Removed { .. } => match self.slot {
                Slot::Candidate => {
                    tracing::info!(model = %self.model, "candidate withdrawn");
                    self.cell.clear();
                    self.hooks.cleared();
                }
                Slot::Live => {
                    tracing::warn!(model = %self.model, serving = self.cell.version(), "live pointer removed; keeping the version loaded")
                }
            },
            PointerChange::Unreadable { error, .. } => {
                tracing::error!(model = %self.model, slot = self.slot.as_str(), %error, "unreadable pointer; keeping the version loaded")
            }
        }
    }

    /// Tries the load that failed transiently again.
    async fn retry(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.follow(pending.pointer, pending.attempt).await;
        }
    }

    /// Loads the version `pointer` names (the `attempt`th time) and swaps it in.
    async fn follow(&mut self, pointer: Pointer, attempt: u32) {
        if let Some(current) = self.cell.current()
            && current.version() == pointer.version
        {
            if self.cell.stand_in().is_some() {
                // The pointer came back to the version standing in: it is the pointed one now.
                self.swap(current, pointer.cause, None);
            }
            return;
        }
        match self.load(&pointer).await {
            Ok(loaded) => self.swap(Arc::new(loaded), pointer.cause, None),
            Err(refusal) if refusal.transient => {
                let wait = self.backoff.delay(attempt);
                tracing::warn!(model = %self.model, slot = self.slot.as_str(), version = pointer.version, attempt,
                    reason = %refusal.reason, ?wait, "cannot load the version yet; retrying");
                self.pending = Some(Pending {
                    pointer,
                    attempt: attempt.saturating_add(1),
                    at: Instant::now() + wait,
                });
            }
            Err(refusal) => self.refuse(&pointer, &refusal.reason).await,
        }
    }

    /// Loads and checks one version.
    async fn load(&self, pointer: &Pointer) -> Result<Loaded, VersionRefusal> {
        let (manifest, scorer) = self.artifacts.load_pointed(&self.model, pointer).await?;
        let loaded = Loaded { manifest, scorer };
        self.hooks
            .prepare(&loaded)
            .map_err(|reason| VersionRefusal {
                transient: false,
                reason,
            })?;
        Ok(loaded)
    }

    /// Refuses the version `pointer` names; live with nothing loaded falls back.
    async fn refuse(&mut self, pointer: &Pointer, reason: &str) {
        tracing::error!(model = %self.model, slot = self.slot.as_str(), version = pointer.version, %reason,
            serving = self.cell.version(), "refused a version; the one loaded stays");
        self.hooks.refused(&Refusal {
            slot: self.slot,
            pointer,
            reason,
            serving: self.cell.version(),
        });
        if self.slot != Slot::Live {
            return;
        }
        match self.cell.stand_in() {
            // Still standing in: the note names the newest refusal.
            Some(standing) => self.cell.set_stand_in(Some(StandIn {
                serving: standing.serving,
                refused: pointer.version,
                reason: reason.to_string(),
            })),
            None if self.cell.current().is_none() => self.fall_back(pointer, reason).await,
            None => {}
        }
    }

    /// Loads the newest version of the pointer's history that loads, standing in for the one
    /// `refused` names.
    async fn fall_back(&mut self, refused: &Pointer, reason: &str) {
        let history = match self.pointers.history(&self.model, self.slot).await {
            Ok(history) => history,
            Err(failure) => {
                tracing::error!(model = %self.model, error = %failure, "cannot read the pointer's history to fall back; nothing serves until the pointer moves");
                return;
            }
        };
        let mut tried = BTreeSet::from([refused.version]);
        for (_, earlier) in history.iter().rev() {
            if !tried.insert(earlier.version) {
                continue;
            }
            match self.load(earlier).await {
                Ok(loaded) => {
                    tracing::warn!(model = %self.model, serving = earlier.version, refused = refused.version,
                        "serving the newest earlier version that loads until the live pointer names one that does");
                    let stand_in = StandIn {
                        serving: earlier.version,
                        refused: refused.version,
                        reason: reason.to_string(),
                    };
                    self.swap(Arc::new(loaded), refused.cause, Some(stand_in));
                    return;
                }
                Err(refusal) => {
                    tracing::info!(model = %self.model, version = earlier.version, reason = %refusal.reason, "an earlier version cannot stand in either")
                }
            }
        }
        tracing::error!(model = %self.model, refused = refused.version, "no version of the pointer's history loads; nothing serves until the pointer moves");
    }

    fn swap(&self, next: Arc<Loaded>, cause: Cause, stand_in: Option<StandIn>) {
        let previous = self.cell.current();
        self.hooks.swapping(&Swap {
            slot: self.slot,
            previous: previous.as_ref(),
            next: &next,
            cause,
            stand_in: stand_in.as_ref(),
        });
        tracing::info!(model = %self.model, slot = self.slot.as_str(), version = next.version(), %cause,
            previous = previous.as_ref().map(|p| p.version()), stand_in = stand_in.is_some(), "swapped in a version");
        if stand_in.is_some() {
            self.cell.set_stand_in(stand_in);
            self.cell.store(next);
        } else {
            self.cell.store(next);
            self.cell.set_stand_in(None);
        }
    }
}

/// Sleeps until `at`; never completes without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use chrono::Utc;
    use object_store::ObjectStoreExt;

    use super::*;
    use crate::store::memory::MemoryPointers;
    use crate::store::{ArtifactError, ArtifactStore};
    use crate::{ModelConfig, Trainer, TrainingMetrics, sha256_hex};
    use freshet::examples::FeatureSchema;

    /// Artifacts in memory whose next `unreachable` loads fail as if the store were away.
    #[derive(Clone)]
    struct Flaky {
        store: ArtifactStore,
        unreachable: Arc<AtomicU32>,
    }

    impl ArtifactReader for Flaky {
        async fn manifest(
            &self,
            model: &ModelName,
            version: u64,
        ) -> Result<Manifest, ArtifactError> {
            self.store.manifest(model, version).await
        }

        async fn load_pointed(
            &self,
            model: &ModelName,
            pointer: &Pointer,
        ) -> Result<(Manifest, ModelScorer), VersionRefusal> {
            let away = self
                .unreachable
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if away {
                return Err(VersionRefusal {
                    transient: true,
                    reason: "the store did not answer".into(),
                });
            }
            self.store.load_pointed(model, pointer).await
        }
    }

    /// One swap as the hooks saw it: previous version, next version, cause, standing in.
    type Swapped = (Option<u64>, u64, Cause, bool);

    /// What the hooks saw: every swap, refused versions (with the one serving), clears; and a
    /// version `prepare` refuses.
    #[derive(Default)]
    struct Seen {
        swaps: Mutex<Vec<Swapped>>,
        refused: Mutex<Vec<(u64, Option<u64>)>>,
        cleared: AtomicU32,
        unprepared: Option<u64>,
    }

    impl Hooks for Arc<Seen> {
        fn prepare(&self, loaded: &Loaded) -> Result<(), String> {
            match self.unprepared {
                Some(version) if version == loaded.version() => Err("incompatible".into()),
                _ => Ok(()),
            }
        }

        fn swapping(&self, swap: &Swap<'_>) {
            self.swaps.lock().unwrap().push((
                swap.previous.map(|p| p.version()),
                swap.next.version(),
                swap.cause,
                swap.stand_in.is_some(),
            ));
        }

        fn refused(&self, refusal: &Refusal<'_>) {
            self.refused
                .lock()
                .unwrap()
                .push((refusal.pointer.version, refusal.serving));
        }

        fn cleared(&self) {
            self.cleared.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Bench {
        model: ModelName,
        pointers: MemoryPointers,
        artifacts: Flaky,
        seen: Arc<Seen>,
    }

    impl Bench {
        fn new() -> Bench {
            Bench::refusing(None)
        }

        fn refusing(unprepared: Option<u64>) -> Bench {
            Bench {
                model: ModelName::parse("m").unwrap(),
                pointers: MemoryPointers::new(),
                artifacts: Flaky {
                    store: ArtifactStore::from_url("memory://").unwrap(),
                    unreachable: Arc::default(),
                },
                seen: Arc::new(Seen {
                    unprepared,
                    ..Seen::default()
                }),
            }
        }

        fn follower(&self, slot: Slot) -> Follower<MemoryPointers, Flaky, Arc<Seen>> {
            Follower::new(
                self.model.clone(),
                slot,
                self.pointers.clone(),
                self.artifacts.clone(),
                self.seen.clone(),
            )
            .with_backoff(Backoff {
                first: Duration::from_millis(1),
                longest: Duration::from_millis(4),
            })
        }

        /// Stores version `version` and returns the pointer naming it, moved for `cause`.
        async fn version(&self, version: u64, cause: Cause) -> Pointer {
            let trainer = Trainer::new(&ModelConfig::default(), 3).unwrap();
            let bytes = trainer.to_bytes().unwrap();
            let manifest = Manifest {
                model: self.model.to_string(),
                version,
                parent: None,
                config: *trainer.config(),
                schema: FeatureSchema {
                    name: "raw".into(),
                    version: 0,
                    features: vec!["a".into(), "b".into(), "c".into()],
                    monitoring: Vec::new(),
                },
                sha256: sha256_hex(&bytes),
                size_bytes: bytes.len() as u64,
                created_at: Utc::now(),
                step: 0,
                learned: None,
                high_water_mark: version,
                lineage: None,
                traces: Vec::new(),
                metrics: TrainingMetrics::at_chance(0, 0),
            };
            self.artifacts
                .store
                .put_version(&manifest, &bytes)
                .await
                .unwrap();
            Pointer {
                version,
                sha256: manifest.sha256,
                updated_at: Utc::now(),
                cause,
                reason: "test".into(),
            }
        }

        /// Flips a byte of a stored version, so it no longer verifies.
        async fn damage(&self, version: u64) {
            let path = object_store::path::Path::from(format!("models/m/{version}/model.bin"));
            let store = self.artifacts.store.object_store();
            let mut bytes = store
                .get(&path)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec();
            bytes[20] ^= 0x5a;
            store.put(&path, bytes.into()).await.unwrap();
        }

        fn point(&self, slot: Slot, pointer: &Pointer) -> PointerChange {
            let revision = self
                .pointers
                .force(&self.model, slot, Some(pointer.clone()));
            PointerChange::Set {
                revision,
                pointer: pointer.clone(),
            }
        }

        fn swaps(&self) -> Vec<Swapped> {
            self.seen.swaps.lock().unwrap().clone()
        }

        fn refused(&self) -> Vec<(u64, Option<u64>)> {
            self.seen.refused.lock().unwrap().clone()
        }
    }

    #[tokio::test]
    async fn swaps_each_new_version_in_and_keeps_the_loaded_one_on_a_refusal() {
        let bench = Bench::refusing(Some(4));
        let mut follower = bench.follower(Slot::Live);
        let cell = follower.cell();
        let v1 = bench.version(1, Cause::Train).await;
        follower.apply(bench.point(Slot::Live, &v1)).await;
        assert_eq!(cell.version(), Some(1));
        // The same version again (a re-watch delivers the current value): nothing happens.
        follower.apply(bench.point(Slot::Live, &v1)).await;
        let v2 = bench.version(2, Cause::Rollback).await;
        follower.apply(bench.point(Slot::Live, &v2)).await;
        assert_eq!(cell.version(), Some(2));
        // Damaged, missing, refused by the function's check: v2 keeps serving.
        let v3 = bench.version(3, Cause::Train).await;
        bench.damage(3).await;
        follower.apply(bench.point(Slot::Live, &v3)).await;
        let missing = Pointer {
            version: 9,
            ..v3.clone()
        };
        follower.apply(bench.point(Slot::Live, &missing)).await;
        let v4 = bench.version(4, Cause::Train).await;
        follower.apply(bench.point(Slot::Live, &v4)).await;
        assert_eq!(cell.version(), Some(2));
        assert_eq!(bench.refused(), [(3, Some(2)), (9, Some(2)), (4, Some(2))]);
        assert_eq!(
            bench.swaps(),
            [
                (None, 1, Cause::Train, false),
                (Some(1), 2, Cause::Rollback, false)
            ]
        );
        assert!(cell.stand_in().is_none(), "something was loaded already");
        // A removed live pointer keeps the version; a broken value too.
        follower
            .apply(PointerChange::Removed { revision: 99 })
            .await;
        follower
            .apply(PointerChange::Unreadable {
                revision: 100,
                error: "not JSON".into(),
            })
            .await;
        assert_eq!(cell.version(), Some(2));
    }

    #[tokio::test]
    async fn a_removed_candidate_empties_the_cell() {
        let bench = Bench::new();
        let mut follower = bench.follower(Slot::Candidate);
        let cell = follower.cell();
        let v5 = bench.version(5, Cause::Candidate).await;
        follower.apply(bench.point(Slot::Candidate, &v5)).await;
        assert_eq!(cell.version(), Some(5));
        follower.apply(PointerChange::Removed { revision: 7 }).await;
        assert!(cell.current().is_none());
        assert_eq!(bench.seen.cleared.load(Ordering::SeqCst), 1);
        // A damaged candidate with nothing loaded: refused, and no fallback for a candidate.
        let v6 = bench.version(6, Cause::Candidate).await;
        bench.damage(6).await;
        follower.apply(bench.point(Slot::Candidate, &v6)).await;
        assert!(cell.current().is_none());
        assert_eq!(bench.refused(), [(6, None)]);
    }

    #[tokio::test]
    async fn an_unreachable_store_is_retried_until_the_version_loads_or_the_pointer_moves() {
        let bench = Bench::new();
        let mut follower = bench.follower(Slot::Live);
        let cell = follower.cell();
        let v1 = bench.version(1, Cause::Train).await;
        bench.artifacts.unreachable.store(3, Ordering::SeqCst);
        follower.apply(bench.point(Slot::Live, &v1)).await;
        assert!(cell.current().is_none());
        for attempt in 2..=4 {
            let pending = follower.pending.as_ref().expect("a retry is due");
            assert_eq!((pending.pointer.version, pending.attempt), (1, attempt));
            follower.retry().await;
        }
        assert_eq!(cell.version(), Some(1));
        assert!(follower.pending.is_none());
        assert!(
            bench.refused().is_empty(),
            "an unreachable store is no verdict"
        );

        // The pointer moves on while a retry is due: the new version replaces it.
        let v2 = bench.version(2, Cause::Train).await;
        let v3 = bench.version(3, Cause::Train).await;
        bench.artifacts.unreachable.store(1, Ordering::SeqCst);
        follower.apply(bench.point(Slot::Live, &v2)).await;
        assert_eq!(
            follower.pending.as_ref().map(|p| p.pointer.version),
            Some(2)
        );
        follower.apply(bench.point(Slot::Live, &v3)).await;
        assert!(follower.pending.is_none());
        assert_eq!(cell.version(), Some(3));
        assert_eq!(
            bench.swaps().iter().map(|s| s.1).collect::<Vec<_>>(),
            [1, 3]
        );
    }

    #[tokio::test]
    async fn live_naming_a_damaged_version_at_start_serves_the_newest_earlier_one_until_fixed() {
        let bench = Bench::new();
        let v1 = bench.version(1, Cause::Train).await;
        let v2 = bench.version(2, Cause::Train).await;
        let v3 = bench.version(3, Cause::Operator).await;
        bench.point(Slot::Live, &v1);
        bench.point(Slot::Live, &v2);
        bench.point(Slot::Live, &v3);
        bench.damage(3).await;
        bench.damage(2).await;
        let mut follower = bench.follower(Slot::Live);
        let cell = follower.cell();
        follower.load_current().await;
        assert_eq!(cell.version(), Some(1));
        let stand_in = cell.stand_in().expect("it says it stands in");
        assert_eq!((stand_in.serving, stand_in.refused), (1, 3));
        assert!(
            stand_in.reason.contains("verification"),
            "{}",
            stand_in.reason
        );
        assert_eq!(bench.swaps(), [(None, 1, Cause::Operator, true)]);
        assert_eq!(bench.refused(), [(3, None)]);

        // Another damaged version: still standing in, for the newest refusal.
        let v4 = bench.version(4, Cause::Train).await;
        bench.damage(4).await;
        follower.apply(bench.point(Slot::Live, &v4)).await;
        assert_eq!(cell.version(), Some(1));
        assert_eq!(
            cell.stand_in().map(|f| (f.serving, f.refused)),
            Some((1, 4))
        );

        // Live is fixed: the follower moves on and the note goes.
        let v5 = bench.version(5, Cause::Train).await;
        follower.apply(bench.point(Slot::Live, &v5)).await;
        assert_eq!(cell.version(), Some(5));
        assert!(cell.stand_in().is_none());
        assert_eq!(
            bench.swaps().last(),
            Some(&(Some(1), 5, Cause::Train, false))
        );
    }

    #[tokio::test]
    async fn a_pointer_moved_back_to_the_version_standing_in_ends_the_fallback() {
        let bench = Bench::new();
        let v1 = bench.version(1, Cause::Train).await;
        let v2 = bench.version(2, Cause::Train).await;
        bench.point(Slot::Live, &v1);
        bench.point(Slot::Live, &v2);
        bench.damage(2).await;
        let mut follower = bench.follower(Slot::Live);
        let cell = follower.cell();
        follower.load_current().await;
        assert!(cell.stand_in().is_some());
        let back = Pointer {
            cause: Cause::Rollback,
            ..v1
        };
        follower.apply(bench.point(Slot::Live, &back)).await;
        assert_eq!(cell.version(), Some(1));
        assert!(cell.stand_in().is_none());
        assert_eq!(
            bench.swaps().last(),
            Some(&(Some(1), 1, Cause::Rollback, false))
        );
    }

    #[tokio::test]
    async fn nothing_in_the_history_loads_so_nothing_serves() {
        let bench = Bench::new();
        let v1 = bench.version(1, Cause::Train).await;
        bench.point(Slot::Live, &v1);
        bench.damage(1).await;
        let mut follower = bench.follower(Slot::Live);
        let cell = follower.cell();
        follower.load_current().await;
        assert!(cell.current().is_none() && cell.stand_in().is_none());
        assert_eq!(bench.refused(), [(1, None)]);
    }

    /// Waits (a few seconds at most) until `check` holds.
    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_running_follower_watches_again_after_a_break_and_stops_on_shutdown() {
        let bench = Bench::new();
        let v1 = bench.version(1, Cause::Train).await;
        bench.point(Slot::Live, &v1);
        let follower = bench.follower(Slot::Live);
        let cell = follower.cell();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(follower.run(async move {
            let _ = stopped.await;
        }));
        until("v1 loaded", || cell.version() == Some(1)).await;
        until("a watch", || bench.pointers.open_watches() == 1).await;
        bench.pointers.break_watches();
        until("a new watch", || bench.pointers.open_watches() == 1).await;
        let v2 = bench.version(2, Cause::Train).await;
        bench.point(Slot::Live, &v2);
        until("v2 loaded", || cell.version() == Some(2)).await;
        // A transient failure is retried by the running follower on its own.
        let v3 = bench.version(3, Cause::Train).await;
        bench.artifacts.unreachable.store(2, Ordering::SeqCst);
        bench.point(Slot::Live, &v3);
        until("v3 loaded", || cell.version() == Some(3)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the follower stops on shutdown")
            .unwrap();
        assert_eq!(
            bench.swaps().iter().map(|s| s.1).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
}
