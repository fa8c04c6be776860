//! Where models live: immutable versions in object storage ([`artifacts`]), and the pointers in
//! JetStream KV that say which version is live or a candidate, with the cause of each move
//! ([`pointers`], and [`memory`], the same store in memory for unit tests); the [`follow`]er
//! that keeps a pointer's version loaded. The KV helpers they are written with are in
//! [`freshet::store`].

pub mod artifacts;
pub mod follow;
pub mod hold;
pub mod memory;
pub mod pointers;
pub mod retention;

pub use artifacts::{ArtifactArgs, ArtifactError, ArtifactReader, ArtifactStore, VersionRefusal};
pub use follow::{Backoff, Follower, Hooks, Loaded, StandIn, VersionCell};
/// What a compare-and-set of a pointer returns, from the KV helpers.
pub use freshet::store::kv::{CasError, Versioned};
pub use hold::{Hold, HoldChange};
pub use memory::MemoryPointers;
pub use pointers::{
    Cause, Pointer, PointerChange, PointerChanges, PointerStore, Pointers, Promoted, Slot, Verified,
};
pub use retention::Retention;
