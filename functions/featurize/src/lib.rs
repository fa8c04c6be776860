//! featurize as a library: the pure planning of what events and time do to entity state and
//! labels ([`handler`], [`labels`]), and the runtime adapter that drives it on JetStream
//! ([`processor`], with its [`cache`]). The binary (`main.rs`) wires them; the benchmark suite
//! (`freshet-bench --suite labels`) runs the very labelling the function runs.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cache;
pub mod handler;
pub mod labels;
pub mod processor;
