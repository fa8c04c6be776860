//! The `freshet` operator tool as a library: the commands behind the binary, the ordered,
//! restart-proof publisher they share, the synthetic stream of each story (bookstore, fraud,
//! sensors), and the local stack (nats-server plus function processes) that the demo and the
//! integration tests start. Keeping them here, not in `main.rs`, lets tests call them.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod commands;
pub mod event_lines;
pub mod publisher;
pub mod stack;
pub mod stories;

/// The bookstore story, where most of the code and tests first met it.
pub use stories::bookstore;
