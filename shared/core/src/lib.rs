//! freshet: keeps machine-learning models fresh in real time on NATS JetStream.
//!
//! This crate (`freshet-shared`, `shared/core/`) is the contract and the runtime every function
//! (featurize, train, drift, predict) and the `freshet` CLI share. Two crates sit on it: the
//! features (`freshet-features`, `shared/features/`: the aggregates and the bookstore example's
//! features) and the models (`freshet-model`, `shared/model/`: burn models, their artifacts in
//! object storage, the model pointers and their follower). Only the programs that train, watch
//! or serve a model link the model crate, so featurize compiles neither burn nor object_store.
//!
//! Inside this crate the modules form layers: each uses only its own layer and those below it,
//! never one above (`layers.rs` checks it, and the same order inside the other two crates).
//!
//! 1. **Contract**: what travels between the functions and what every layer may use.
//!    - [`ids`]: checked identifiers; [`error`]: rejections (bad input, dead-lettered) versus
//!      failures (transient, retried); [`retry`]: riding out a server restart (capped backoff
//!      with jitter); [`trace`]: W3C trace context (`traceparent`) carried in NATS and HTTP
//!      headers.
//!    - [`events`]: the CloudEvents contract and its validation; [`event_time`]: its `time`,
//!      strict RFC 3339; [`examples`]: the training example featurize publishes and train
//!      consumes, and the feature schema it follows; [`control`]: the CONTROL messages;
//!      [`serving`]: the prediction request/reply protocol.
//!    - [`subjects`]: every subject, stream, bucket and header name, from one prefix;
//!      [`topology`]: the streams, buckets and consumers, provisioned idempotently.
//!    - [`monitoring`]: how drift watches each feature of a schema, and why.
//!    - [`metrics`]: the Prometheus registry every function exports; [`shutdown`]: graceful
//!      shutdown as an injected value.
//!    - [`stats`]: checked values and the EWMA, which the features keep per entity and the
//!      model's input scaler applies.
//! 2. **Store**: [`store`]: compare-and-set in JetStream KV (entity state, drift's state, the
//!    model pointers), and leases.
//! 3. **Telemetry**: [`telemetry`]: the spans [`trace`] names, exported to an OpenTelemetry
//!    collector when configured.
//! 4. **Runtime**: [`config`], [`connect`]: settings from flags and environment, and the NATS
//!    connection; [`runtime`]: the JetStream consumer loop, the CloudEvents HTTP binding and push
//!    ingress, the HTTP server (probes, metrics, and the guard in front of every other route:
//!    credentials, rate, limits), dead-lettering, logging, and the
//!    [`FunctionContext`](runtime::FunctionContext) that wires them for a function. The
//!    object-store settings are not here: a function that reads artifacts flattens the model
//!    crate's `ArtifactArgs` beside its [`config::FunctionArgs`].

// Tests state their expectations with unwrap; a failed unwrap is a failed test.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod connect;
pub mod control;
pub mod error;
pub mod event_time;
pub mod events;
pub mod examples;
pub mod ids;
pub mod metrics;
pub mod monitoring;
pub mod retry;
pub mod runtime;
pub mod serving;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod subjects;
pub mod telemetry;
pub mod topology;
pub mod trace;

#[cfg(test)]
mod layers;
#[cfg(test)]
mod properties;
