//! Where state lives: model artifacts in object storage, model pointers, the feature schema
//! declared for each model and entity features in JetStream KV, all written by compare-and-set;
//! the follower that keeps a pointer's version loaded; and leases, for work one replica does at a
//! time.

pub mod artifacts;
pub mod declarations;
pub mod follow;
pub mod kv;
pub mod lease;
pub mod memory;
pub mod pointers;

pub use artifacts::{ArtifactError, ArtifactReader, ArtifactStore, VersionRefusal};
pub use declarations::{DeclarationStore, Declarations, MemoryDeclarations};
pub use follow::{Backoff, Follower, Hooks, Loaded, StandIn, VersionCell};
pub use kv::{CasError, Versioned};
pub use memory::MemoryPointers;
pub use pointers::{
    Cause, Pointer, PointerChange, PointerChanges, PointerStore, Pointers, Promoted, Slot, Verified,
};
