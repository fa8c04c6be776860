//! freshet: keeps machine-learning models fresh in real time on NATS JetStream.
//!
//! This crate is the library every function (featurize, train, drift, predict) and the `freshet`
//! CLI share. Its modules form layers: each uses only its own layer and those below it, never one
//! above (a test in `layers.rs` checks it), so each layer can become a crate of its own by moving
//! files.
//!
//! 1. **Contract**: what travels between the functions and what every layer may use.
//!    - [`ids`]: checked identifiers; [`error`]: rejections (bad input, dead-lettered) versus
//!      failures (transient, retried); [`retry`]: riding out a server restart (capped backoff
//!      with jitter); [`trace`]: W3C trace context (`traceparent`) carried in NATS and HTTP
//!      headers.
//!    - [`events`]: the CloudEvents contract and its validation; [`event_time`]: its `time`,
//!      strict RFC 3339; [`examples`]: the training
//!      example featurize publishes and train consumes, and the feature schema it follows;
//!      [`control`]: the CONTROL messages; [`serving`]: the prediction request/reply protocol.
//!    - [`subjects`]: every subject, stream, bucket and header name, from one prefix;
//!      [`topology`]: the streams, buckets and consumers, provisioned idempotently.
//!    - [`monitoring`]: how drift watches each feature of a schema, and why.
//!    - [`metrics`]: the Prometheus registry every function exports; [`shutdown`]: graceful
//!      shutdown as an injected value.
//! 2. **Domain** (the bookstore example): [`aggregates`]: streaming per-entity aggregates, EWMA
//!    scaling and event-time windows; [`features`]: the bookstore features, computed by the same
//!    code at training and serving time; [`labels`]: the index of views waiting for their label
//!    and the health of the labels featurize publishes.
//! 3. **Models**: [`model`]: the burn models, their artifacts and manifests.
//! 4. **Store**: [`store`]: model artifacts in object storage; pointers (with the cause of each
//!    move), leases and entity state in JetStream KV; the follower that keeps a pointer's
//!    version loaded.
//! 5. **Telemetry**: [`telemetry`]: the spans [`trace`] names, exported to an OpenTelemetry
//!    collector when configured.
//! 6. **Runtime**: [`config`], [`connect`]: settings from flags and environment, and the NATS
//!    connection; [`runtime`]: the JetStream consumer loop, the CloudEvents HTTP binding and push
//!    ingress, HTTP probes, dead-lettering, logging, and the
//!    [`FunctionContext`](runtime::FunctionContext) that wires them for a function.
//!
//! Splitting along these layers gives a contract-and-runtime crate (layers 1, 4 without
//! `store::artifacts` and `store::follow`, 5 and 6), a model crate (3 with those two, which load
//! and score models: burn and object_store) and a bookstore crate (2). Two edges cross that split
//! today: `runtime::FunctionContext::artifacts` builds a `store::ArtifactStore` (a
//! runtime-to-model edge), and `model`'s input scaler uses `aggregates::ewma` (a model-to-domain
//! edge, so the EWMA belongs with the contract).

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod aggregates;
pub mod config;
pub mod connect;
pub mod control;
pub mod error;
pub mod event_time;
pub mod events;
pub mod examples;
pub mod features;
pub mod ids;
pub mod labels;
pub mod metrics;
pub mod model;
pub mod monitoring;
pub mod retry;
pub mod runtime;
pub mod serving;
pub mod shutdown;
pub mod store;
pub mod subjects;
pub mod telemetry;
pub mod topology;
pub mod trace;

#[cfg(test)]
mod layers;
#[cfg(test)]
mod properties;
