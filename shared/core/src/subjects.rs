//! Every subject, stream, bucket and header name freshet uses, derived from one prefix, and the
//! escaping that keeps header values ASCII ([`header_value`]).
//!
//! Producers publish an event to `<prefix>.events.<type>.<entity>`. The EVENTS stream rewrites
//! that on ingest (a subject transform with the server's `partition()` function) to
//! `<prefix>.events.<partition>.<type>.<entity>`, so one entity's events always share a partition
//! and stay in order, while partitions can be consumed in parallel.

use crate::ids::ModelName;

/// Header carrying the dead-letter reason label.
pub const HEADER_REASON: &str = "Freshet-Reason";
/// Header carrying the field at fault, for dead-lettered messages.
pub const HEADER_FIELD: &str = "Freshet-Field";
/// Header carrying the human-readable rejection detail.
pub const HEADER_DETAIL: &str = "Freshet-Detail";
/// Header naming the subject a dead-lettered message was first published to.
pub const HEADER_SOURCE_SUBJECT: &str = "Freshet-Source-Subject";
/// Header naming the stream sequence a dead-lettered message had.
pub const HEADER_SOURCE_SEQUENCE: &str = "Freshet-Source-Sequence";
/// Header naming the function that dead-lettered a message.
pub const HEADER_FUNCTION: &str = "Freshet-Function";

/// Names of the streams and buckets. Fixed, so every tool finds them without configuration.
pub const STREAM_EVENTS: &str = "EVENTS";
pub const STREAM_EXAMPLES: &str = "EXAMPLES";
pub const STREAM_PREDICTIONS: &str = "PREDICTIONS";
pub const STREAM_CONTROL: &str = "CONTROL";
pub const STREAM_DEAD_LETTER: &str = "DEAD_LETTER";
pub const BUCKET_FEATURES: &str = "FEATURES";
pub const BUCKET_MODELS: &str = "MODELS";
pub const BUCKET_LEASES: &str = "LEASES";
pub const BUCKET_DRIFT: &str = "DRIFT";

/// `text` made fit for a NATS header value: printable ASCII is kept, and everything else (line
/// breaks, other control characters, any non-ASCII character) is written as a Rust-style escape,
/// `\u{b1}` for "±", with the backslash itself doubled so that distinct texts stay distinct (a
/// message id built from an event id still deduplicates exactly).
///
/// NATS headers are read as HTTP-style ASCII by most clients: nats-py 2.11 silently drops every
/// header of a message in which one value holds a non-ASCII byte, and a line break would end the
/// header early.
pub fn header_value(text: &str) -> String {
    let mut value = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => value.push_str("\\\\"),
            ' '..='~' => value.push(c),
            _ => value.extend(c.escape_unicode()),
        }
    }
    value
}

/// The prefix every subject starts with by default.
pub const DEFAULT_PREFIX: &str = "freshet";

/// Subject names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

/// Why a prefix was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "subject prefix {prefix:?} is invalid: use dot-separated tokens of letters, digits, '_' or '-'"
)]
pub struct PrefixError {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let valid_token = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if prefix.split('.').all(valid_token) {
            Ok(Subjects {
                prefix: prefix.to_string(),
            })
        } else {
            Err(PrefixError {
                prefix: prefix.to_string(),
            })
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where a producer publishes an event of `event_type` about `entity`.
    pub fn event(&self, event_type: &str, entity: &str) -> String {
        format!("{}.events.{event_type}.{entity}", self.prefix)
    }

    /// The subjects the EVENTS stream listens on (before its partitioning transform).
    pub fn events_ingest(&self) -> String {
        format!("{}.events.*.*", self.prefix)
    }

    /// The stored subject template the ingest transform writes, partitioning by entity.
    pub fn events_partitioned_template(&self, partitions: u32) -> String {
        format!(
            "{}.events.{{{{partition({partitions},2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
            self.prefix
        )
    }

    /// Every stored event, whatever its partition.
    pub fn events_stored_all(&self) -> String {
        format!("{}.events.*.*.*", self.prefix)
    }

    /// Stored events of one type, in every partition.
    pub fn events_stored_type(&self, event_type: &str) -> String {
        format!("{}.events.*.{event_type}.*", self.prefix)
    }

    /// Stored events of one partition.
    pub fn events_stored_partition(&self, partition: u32) -> String {
        format!("{}.events.{partition}.*.*", self.prefix)
    }

    /// Training examples for one model.
    pub fn examples(&self, model: &ModelName) -> String {
        format!("{}.examples.{model}", self.prefix)
    }

    pub fn examples_all(&self) -> String {
        format!("{}.examples.*", self.prefix)
    }

    /// Where one batch of recorded predictions is stored. One subject per batch lets the
    /// outcome join fetch it directly by subject from a prediction's id.
    pub fn prediction_batch(&self, model: &ModelName, batch: &str) -> String {
        format!("{}.predictions.{model}.{batch}", self.prefix)
    }

    pub fn predictions_all(&self) -> String {
        format!("{}.predictions.>", self.prefix)
    }

    /// Control events (new versions, drift, refused loads) about one model.
    pub fn control(&self, model: &ModelName, kind: &str) -> String {
        format!("{}.control.{model}.{kind}", self.prefix)
    }

    pub fn control_all(&self) -> String {
        format!("{}.control.>", self.prefix)
    }

    /// Where `function` sends input it refused for `reason`.
    pub fn dead_letter(&self, function: &str, reason: &str) -> String {
        format!("{}.dead_letter.{function}.{reason}", self.prefix)
    }

    pub fn dead_letter_all(&self) -> String {
        format!("{}.dead_letter.>", self.prefix)
    }

    /// The request/reply subject a model's predictors answer on.
    pub fn predict(&self, model: &ModelName) -> String {
        format!("{}.predict.{model}", self.prefix)
    }

    /// Splits a stored event subject into (partition, type token, entity token).
    pub fn parse_stored_event<'a>(&self, subject: &'a str) -> Option<(u32, &'a str, &'a str)> {
        let rest = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".events.")?;
        let mut tokens = rest.split('.');
        let partition = tokens.next()?.parse().ok()?;
        let event_type = tokens.next()?;
        let entity = tokens.next()?;
        tokens
            .next()
            .is_none()
            .then_some((partition, event_type, entity))
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_every_subject_from_the_prefix() {
        let s = Subjects::new("acme.ml").unwrap();
        let m = ModelName::parse("bookstore").unwrap();
        assert_eq!(
            s.event("user_action", "u1"),
            "acme.ml.events.user_action.u1"
        );
        assert_eq!(s.examples(&m), "acme.ml.examples.bookstore");
        assert_eq!(
            s.dead_letter("featurize", "non_finite"),
            "acme.ml.dead_letter.featurize.non_finite"
        );
        assert_eq!(
            s.events_partitioned_template(4),
            "acme.ml.events.{{partition(4,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"
        );
        assert_eq!(
            s.parse_stored_event("acme.ml.events.3.user_action.u1"),
            Some((3, "user_action", "u1"))
        );
        assert_eq!(
            s.parse_stored_event("acme.ml.events.x.user_action.u1"),
            None
        );
        assert_eq!(s.parse_stored_event("other.events.3.user_action.u1"), None);
    }

    #[test]
    fn header_values_are_printable_ascii_and_distinct_texts_stay_distinct() {
        let cases = [
            ("1e300 is beyond ±1e12", "1e300 is beyond \\u{b1}1e12"),
            ("line\r\nbreak\ttab", "line\\u{d}\\u{a}break\\u{9}tab"),
            ("é", "\\u{e9}"),
            ("\\u{e9}", "\\\\u{e9}"),
            ("plain id-42 {x}", "plain id-42 {x}"),
            ("", ""),
        ];
        for (text, expected) in cases {
            let value = header_value(text);
            assert_eq!(value, expected, "{text:?}");
            assert!(value.chars().all(|c| (' '..='~').contains(&c)), "{value:?}");
        }
        assert_ne!(header_value("é"), header_value("\\u{e9}"));
    }

    #[test]
    fn refuses_prefixes_that_are_not_subject_tokens() {
        for bad in ["", "a..b", "a.*", "a b", ".a", "a.>"] {
            assert!(Subjects::new(bad).is_err(), "{bad:?}");
        }
    }
}
