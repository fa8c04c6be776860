//! freshet: keeps machine-learning models fresh in real time on NATS JetStream.
//!
//! This crate is the library every function (featurize, train, drift, predict) and the `freshet`
//! CLI share. A map of it:
//!
//! - [`events`]: the CloudEvents contract and its validation; [`ids`]: checked identifiers.
//! - [`examples`]: the training example featurize publishes and train consumes.
//! - [`features`]: the bookstore features, computed by the same code at training and serving time.
//! - [`aggregates`]: streaming per-entity aggregates: EWMA scaling and event-time windows.
//! - [`model`]: the burn models, their artifacts and manifests.
//! - [`store`]: model artifacts in object storage; pointers (with the cause of each move) and
//!   entity state in JetStream KV; the follower that keeps a pointer's version loaded.
//! - [`subjects`]: every subject, stream, bucket and header name, from one prefix.
//! - [`topology`]: the streams, buckets and consumers, provisioned idempotently.
//! - [`config`], [`connect`]: settings from flags and environment, and the NATS connection.
//! - [`error`]: rejections (bad input, dead-lettered) versus failures (transient, retried).
//! - [`serving`]: the prediction request/reply protocol.
//! - [`runtime`]: the JetStream consumer loop, HTTP probes and metrics, the guard in front of
//!   every other HTTP route (credentials, rate, limits), the CloudEvents HTTP binding, shutdown,
//!   logging.
//! - [`trace`]: W3C trace context (`traceparent`) carried in NATS and HTTP headers;
//!   [`telemetry`]: the spans it names, exported to an OpenTelemetry collector when configured.

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod aggregates;
pub mod config;
pub mod connect;
pub mod control;
pub mod error;
pub mod events;
pub mod examples;
pub mod features;
pub mod ids;
pub mod model;
pub mod runtime;
pub mod serving;
pub mod store;
pub mod subjects;
pub mod telemetry;
pub mod topology;
pub mod trace;

#[cfg(test)]
mod properties;
