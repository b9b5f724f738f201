//! The frontend's error type: every error names the caller's location in the model code.

use plateau_compiler::IrError;
use std::panic::Location;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum FrontendError {
    /// An op was applied to operands that do not fit it.
    #[error("{source} (at {location})")]
    Op { source: IrError, location: String },
    /// A layer was configured with impossible values.
    #[error("invalid {layer}: {reason} (at {location})")]
    Config { layer: String, reason: String, location: String },
    /// A model name the registry does not know.
    #[error("unknown model `{0}` (expected one of: mlp, cnn, resnet18, wrn16-K for a width K >= 1)")]
    UnknownModel(String),
}

impl FrontendError {
    pub(crate) fn op(source: IrError, at: &'static Location<'static>) -> Self {
        FrontendError::Op { source, location: at.to_string() }
    }

    pub(crate) fn config(layer: impl Into<String>, reason: impl Into<String>, at: &'static Location<'static>) -> Self {
        FrontendError::Config { layer: layer.into(), reason: reason.into(), location: at.to_string() }
    }
}

pub type Result<T, E = FrontendError> = std::result::Result<T, E>;
