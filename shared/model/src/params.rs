//! The parameter plumbing every model kind shares: a kind describes its parameter tensors as
//! [`ParamSpec`]s (shape, whether the L2 penalty applies, whether it is trained at all), stored
//! row-major as host `f32` vectors; [`read_f32`] brings a burn tensor back to the host, and
//! [`shape_error`] reports a parameter list that does not fit its kind.

use burn::tensor::Tensor;

use super::error::ModelError;

/// Shape of one parameter tensor, stored row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParamSpec {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Whether the L2 penalty applies: weights yes, biases no (a bias only shifts the decision
    /// threshold and should not be pulled towards p = 0.5).
    pub(crate) decay: bool,
    /// Whether the optimizer moves it: false for values that are drawn once and kept, such as
    /// random features' frequencies, whose gradient is taken as zero.
    pub(crate) trained: bool,
}

impl ParamSpec {
    /// A tensor that is drawn once and never trained (nor penalised).
    pub(crate) fn fixed(rows: usize, cols: usize) -> ParamSpec {
        ParamSpec {
            rows,
            cols,
            decay: false,
            trained: false,
        }
    }

    /// Number of values.
    pub(crate) fn len(&self) -> usize {
        self.rows.saturating_mul(self.cols)
    }
}

/// The error for parameter lists that do not fit their architecture; unreachable through the
/// public API (construction and decoding check shapes), but reported rather than panicking.
pub(crate) fn shape_error() -> ModelError {
    ModelError::Backend("parameters do not fit the model architecture".into())
}

/// Copies a tensor to the host as `f32`, casting if the backend stored another float type.
pub(crate) fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    tensor
        .try_into_data_as::<f32>()
        .map_err(|e| ModelError::Backend(e.to_string()))?
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Backend(e.to_string()))
}
