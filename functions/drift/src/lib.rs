//! drift's pure logic as a library: the detectors, the bank that runs them on a model's examples
//! with their false alarms controlled family-wise, and the episodes their signals make. The
//! benchmark suite (`freshet-bench --suite detectors`) measures the very code the drift function
//! runs.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bank;
pub mod detectors;
pub mod episodes;
pub mod pending;
