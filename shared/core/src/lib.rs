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
//!    - [`stats`]: checked values and the EWMA, used by the domain and by the model's scaler.
//! 2. **Domain** (the bookstore example): [`aggregates`]: streaming per-entity event-time
//!    windows; [`features`]: the bookstore features, computed by the same
//!    code at training and serving time.
//! 3. **Models** are a crate of their own, `freshet-model` (`shared/model/`): burn and
//!    object_store are linked only by the programs that train, watch or serve a model.
//! 4. **Store**: [`store`]: compare-and-set in JetStream KV, for entity state and the model
//!    pointers, and leases.
//! 5. **Telemetry**: [`telemetry`]: the spans [`trace`] names, exported to an OpenTelemetry
//!    collector when configured.
//! 6. **Runtime**: [`config`], [`connect`]: settings from flags and environment, and the NATS
//!    connection; [`runtime`]: the JetStream consumer loop, the CloudEvents HTTP binding and push
//!    ingress, HTTP probes, dead-lettering, logging, and the
//!    [`FunctionContext`](runtime::FunctionContext) that wires them for a function.
//!
//! Splitting along these layers gives this contract-and-runtime crate (layers 1, 4, 5 and 6),
//! the model crate, and a bookstore crate (2). No edge crosses that split upwards: the
//! functions that read artifacts open the store from the model crate's `ArtifactArgs`, and the
//! EWMA the model's scaler shares with the domain is in [`stats`].

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
