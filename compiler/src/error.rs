//! The compiler's error type.

use crate::ir::{NodeId, TensorType};
use thiserror::Error;

/// Errors raised while building, checking or transforming IR graphs.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum IrError {
    /// The operands of an op do not fit it (a user error: the model is wrong).
    #[error("shape error in `{op}`: {reason}; operands: {}", list_types(.operands))]
    Shape { op: String, operands: Vec<TensorType>, reason: String },
    /// An op was given the wrong number of operands.
    #[error("`{op}` takes {expected} operand(s), got {got}")]
    Arity { op: String, expected: usize, got: usize },
    /// Two leaves of the same kind share a name.
    #[error("{kind} `{name}` is declared twice")]
    DuplicateLeaf { kind: &'static str, name: String },
    /// A node id that is not in the graph.
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    /// A request that the op set cannot express (bad attribute values and the like).
    #[error("invalid `{op}`: {reason}")]
    Invalid { op: String, reason: String },
    /// The verifier found a broken invariant: always a bug in plateau.
    #[error("invariant violated (a bug in plateau): {0}")]
    Invariant(String),
}

fn list_types(types: &[TensorType]) -> String {
    if types.is_empty() {
        return "none".to_string();
    }
    types.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
}
