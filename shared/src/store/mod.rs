//! Where state lives: model artifacts in object storage, model pointers and entity features in
//! JetStream KV, both written by compare-and-set; and leases, for work one replica does at a time.

pub mod artifacts;
pub mod kv;
pub mod lease;
pub mod pointers;

pub use artifacts::{ArtifactError, ArtifactStore, VersionRefusal};
pub use kv::{CasError, Versioned};
pub use pointers::{Pointer, Pointers, Slot};
