//! drift's detectors as a library, so the benchmark suite (`freshet-bench --suite detectors`)
//! measures the very code the drift function runs.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod detectors;
