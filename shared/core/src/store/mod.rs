//! State in JetStream KV: the compare-and-set helpers every writer of a bucket uses ([`kv`]): the
//! entity features, drift's state, the feature schema declared for each model ([`declarations`])
//! and the model pointers of the model crate (`freshet_model::store`); and leases, for work one
//! replica does at a time ([`lease`]).

pub mod declarations;
pub mod kv;
pub mod lease;

pub use declarations::{DeclarationStore, Declarations, MemoryDeclarations};
pub use kv::{CasError, Versioned};
