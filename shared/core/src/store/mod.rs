//! State in JetStream KV: the compare-and-set helpers every writer of a bucket uses ([`kv`]): the
//! entity features, drift's state, and the model pointers of the model crate
//! (`freshet_model::store`); and leases, for work one replica does at a time ([`lease`]).

pub mod kv;
pub mod lease;

pub use kv::{CasError, Versioned};
