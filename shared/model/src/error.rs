//! The one error type of the model code.

/// Everything that can go wrong while training, scoring, encoding or verifying a model.
///
/// Input errors (`FeatureCount`, `NonFiniteFeature`, `Label`, `LabelCount`, `EmptyBatch`) mean
/// the caller's data was rejected and the model is untouched; `NonFinite` means an update (or a
/// score) produced NaN/∞ and was discarded; `Decode`/`ChecksumMismatch` mean stored bytes are
/// not a usable model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A row had the wrong number of features for the model.
    #[error("row {row} has {got} features, the model expects {expected}")]
    FeatureCount {
        /// Index of the offending row in the batch (0 for a single-row call).
        row: usize,
        /// Features the model was built for.
        expected: usize,
        /// Features the row carried.
        got: usize,
    },
    /// A feature value was NaN or infinite.
    #[error("row {row}, feature {column} is not finite ({value})")]
    NonFiniteFeature {
        /// Index of the offending row in the batch (0 for a single-row call).
        row: usize,
        /// Index of the offending feature within the row.
        column: usize,
        /// The value found.
        value: f32,
    },
    /// A label was not exactly 0.0 or 1.0.
    #[error("label {index} is {value}, expected 0.0 or 1.0")]
    Label {
        /// Index of the offending label in the batch.
        index: usize,
        /// The value found.
        value: f32,
    },
    /// The batch had a different number of rows and labels.
    #[error("batch has {rows} rows but {labels} labels")]
    LabelCount {
        /// Rows supplied.
        rows: usize,
        /// Labels supplied.
        labels: usize,
    },
    /// The batch had a different number of rows and row weights.
    #[error("batch has {rows} rows but {weights} row weights")]
    WeightCount {
        /// Rows supplied.
        rows: usize,
        /// Row weights supplied.
        weights: usize,
    },
    /// A training batch had no rows; an SGD step on nothing is undefined (a mean over zero).
    #[error("training batch is empty")]
    EmptyBatch,
    /// A hyperparameter or model dimension is out of range.
    #[error("invalid {name}: {value}")]
    InvalidConfig {
        /// Which setting was rejected (`learning_rate`, `decay`, `l2`, `n_features`).
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A computation produced NaN or infinity; the result was discarded.
    #[error("non-finite values in {what}")]
    NonFinite {
        /// What turned non-finite (e.g. "updated weights", "scores").
        what: String,
    },
    /// Bytes could not be decoded into a model.
    #[error("cannot decode model artifact: {0}")]
    Decode(String),
    /// A model could not be encoded into bytes.
    #[error("cannot encode model artifact: {0}")]
    Encode(String),
    /// Stored bytes do not match the size or SHA-256 a manifest records.
    #[error("checksum mismatch: manifest says {expected}, bytes are {actual}")]
    ChecksumMismatch {
        /// What the manifest records (`sha256:<hex>` or `size:<n>`).
        expected: String,
        /// What the bytes actually are, in the same form.
        actual: String,
    },
    /// A burn operation failed in a way that is not attributable to the input.
    #[error("tensor backend error: {0}")]
    Backend(String),
}
