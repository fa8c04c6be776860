//! The two ways handling a message can go wrong, and what the runtime does about each.
//!
//! A [`Rejection`] is the message's fault: it will never succeed, so it is terminated and copied
//! to the dead-letter subject with its reason. A [`Failure`] is the world's fault (a server
//! unreachable, a compare-and-set lost): nothing was acknowledged, and the message is redelivered
//! after a backoff. Keeping the two apart is what lets a function be both lossless and unjammed.

use std::fmt;

/// Why an input was refused. The string form is a stable label: it is the last token of the
/// dead-letter subject, the `Freshet-Reason` header and the `reason` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not JSON, or not UTF-8.
    MalformedJson,
    /// Larger than the configured maximum event size.
    Oversized,
    /// The CloudEvents envelope is missing an attribute or has a wrong one.
    InvalidEnvelope,
    /// The event `type` is not one freshet knows.
    UnknownType,
    /// The `data` of a known type is missing a field or has a wrong one.
    InvalidData,
    /// A number is NaN or infinite.
    NonFinite,
    /// A finite number beyond the range a model may see (|x| > 1e12), e.g. 1e308.
    OutOfRange,
    /// An example whose shape does not fit the schema declared for the model it names.
    SchemaMismatch,
    /// An example for a model that has no declared schema (and no version to take one from):
    /// nothing says what its features are, so none is learned until one is declared.
    Undeclared,
    /// An event whose event time lies before every window it belongs to could still accept it:
    /// behind the watermark by more than the allowed lateness.
    Late,
    /// An event whose event time lies further ahead of when it was stored than the configured
    /// bound (featurize's `--max-future-skew`): a clock gone wrong, or an event meant to push a
    /// watermark forward and make every honest event after it late.
    Future,
    /// Held out of training while a burst of invalid or out-of-range values lasts, or itself far
    /// outside the range the model has seen; kept here for review and replay.
    Quarantined,
}

impl RejectReason {
    /// Every reason, for metrics pre-registration and status tables.
    pub const ALL: [RejectReason; 12] = [
        RejectReason::MalformedJson,
        RejectReason::Oversized,
        RejectReason::InvalidEnvelope,
        RejectReason::UnknownType,
        RejectReason::InvalidData,
        RejectReason::NonFinite,
        RejectReason::OutOfRange,
        RejectReason::SchemaMismatch,
        RejectReason::Undeclared,
        RejectReason::Late,
        RejectReason::Future,
        RejectReason::Quarantined,
    ];

    /// The stable label of this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::Oversized => "oversized",
            RejectReason::InvalidEnvelope => "invalid_envelope",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::InvalidData => "invalid_data",
            RejectReason::NonFinite => "non_finite",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::SchemaMismatch => "schema_mismatch",
            RejectReason::Undeclared => "undeclared",
            RejectReason::Late => "late",
            RejectReason::Future => "future",
            RejectReason::Quarantined => "quarantined",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message refused for good, with the field at fault and a sentence saying why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {field}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    /// Where in the message the problem is, as a path (`data.price`, `id`, `$` for the whole).
    pub field: String,
    /// What is wrong, for a person reading the dead-letter subject.
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, field: impl Into<String>, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            field: field.into(),
            detail: detail.into(),
        }
    }
}

/// A transient failure: the message is fine, the attempt was not. It is retried after a backoff.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct Failure {
    /// What was being done, e.g. "publish example" or "update FEATURES user.u1".
    pub operation: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl Failure {
    pub fn new(
        operation: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Failure {
            operation: operation.into(),
            source: source.into(),
        }
    }

    /// The same failure again, for each of several messages it holds back (the source is kept
    /// as its message: errors are not cloneable).
    pub fn duplicate(&self) -> Failure {
        Failure::new(self.operation.clone(), self.source.to_string())
    }
}
