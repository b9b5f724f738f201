//! The runtime's error type.

use plateau_compiler::{IrError, TensorType};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum RuntimeError {
    /// A leaf of the graph has no value bound to it.
    #[error("no value bound for {kind} `{name}`")]
    MissingBinding { kind: &'static str, name: String },
    /// A bound value does not have the leaf's type.
    #[error("{kind} `{name}` expects {expected}, got {got}")]
    BindingMismatch { kind: &'static str, name: String, expected: TensorType, got: TensorType },
    /// A tensor was built from the wrong number of elements.
    #[error("a {ty} tensor needs {expected} elements, got {got}")]
    DataLength { ty: TensorType, expected: usize, got: usize },
    /// A class label outside `0..classes`.
    #[error("label {label} at position {position} is outside 0..{classes}")]
    LabelOutOfRange { label: i64, position: usize, classes: usize },
    /// An environment variable plateau reads holds a value it does not take.
    #[error("{name}={value:?}: expected {expected}")]
    Setting { name: &'static str, value: String, expected: &'static str },
    /// The backend cannot run something the program needs.
    #[error("unsupported on this backend: {0}")]
    Unsupported(String),
    /// The device reported an error (a kernel failed to compile or launch, memory ran out).
    #[error("device error: {0}")]
    Device(String),
    #[error(transparent)]
    Ir(#[from] IrError),
}
