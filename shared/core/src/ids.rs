//! Domain identifiers as newtypes with a parsing constructor.
//!
//! Entity ids end up as NATS subject tokens and KV keys, model names as KV keys and object paths,
//! so each is checked once, where it enters, against the strictest of those grammars.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest entity id accepted; longer ones are almost certainly a bug upstream.
pub const MAX_ENTITY_ID_LEN: usize = 128;
/// The longest model name accepted.
pub const MAX_MODEL_NAME_LEN: usize = 64;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is {len} characters long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("contains {found:?}; allowed are {allowed}")]
    BadCharacter { found: char, allowed: &'static str },
}

fn check(
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    let len = value.chars().count();
    if len > max {
        return Err(IdError::TooLong { len, max });
    }
    match value.chars().find(|c| !ok(*c)) {
        Some(found) => Err(IdError::BadCharacter { found, allowed }),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $allowed:expr, $ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check(&value, $max, $allowed, $ok)?;
                Ok($name(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                $name::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A user or item id: letters, digits, `_`, `-` and `=`, so it is a valid subject token and KV key.
    EntityId,
    MAX_ENTITY_ID_LEN,
    "ASCII letters, digits, '_', '-', '='",
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=')
);

id_type!(
    /// A model's name: lower-case letters, digits, `_` and `-`.
    ModelName,
    MAX_MODEL_NAME_LEN,
    "lower-case ASCII letters, digits, '_', '-'",
    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_ids_must_be_subject_tokens() {
        assert!(EntityId::parse("user-42").is_ok());
        assert_eq!(EntityId::parse(""), Err(IdError::Empty));
        assert!(matches!(
            EntityId::parse("a.b"),
            Err(IdError::BadCharacter { found: '.', .. })
        ));
        assert!(matches!(
            EntityId::parse("a*"),
            Err(IdError::BadCharacter { found: '*', .. })
        ));
        assert!(matches!(
            EntityId::parse("a b"),
            Err(IdError::BadCharacter { found: ' ', .. })
        ));
        let long = "x".repeat(MAX_ENTITY_ID_LEN + 1);
        assert!(matches!(
            EntityId::parse(long),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn model_names_are_lower_case() {
        assert!(ModelName::parse("bookstore").is_ok());
        assert!(ModelName::parse("Bookstore").is_err());
        assert!(ModelName::parse("book.store").is_err());
    }

    #[test]
    fn deserializing_checks_the_grammar() {
        let err = serde_json::from_str::<EntityId>("\"a.b\"").unwrap_err();
        assert!(
            err.to_string().contains("'.'") || err.to_string().contains("\".\""),
            "{err}"
        );
    }
}
