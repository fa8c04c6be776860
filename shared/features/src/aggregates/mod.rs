//! Streaming aggregates that featurize keeps per entity: pure state machines, no I/O and no clock
//! (every time is passed in), so the same code runs in the handler and in table tests.
//!
//! [`window`] keeps event-time windows (tumbling or sliding) of count, sum and mean, with a
//! watermark, an allowed lateness and a bounded number of stored windows. Their state is
//! serialised as JSON into the entity's KV entry, so it is small and validated when decoded.
//! Values are checked as every running statistic checks them ([`check_value`]); the other
//! per-entity aggregate, the EWMA, is in [`freshet::stats::ewma`], since the model's input scaler
//! uses it too.

pub mod window;

pub use window::{
    Accepted, AddError, EventTimeWindows, MAX_STORED_WINDOWS, QueryError, SpecError,
    WindowAggregate, WindowConfig, WindowSpec,
};

pub use freshet::stats::{MAX_ABS_VALUE, ValueError, check_value};
