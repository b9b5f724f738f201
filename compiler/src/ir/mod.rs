//! The IR: typed nodes in a petgraph graph, shape inference, verifier, text and DOT forms.

mod graph;
mod import;
mod infer;
mod op;
mod program;
mod shape;
mod text;
mod verify;

pub use graph::{leaf_kind, leaf_name, Graph, Node, NodeId, Operand, Output, OutputKind};
pub use import::is_leaf_kind;
pub use infer::{conv_out, infer, pool_out};
pub use op::{dropout_uniform, BinaryOp, CmpOp, Conv2dAttrs, Op, PoolAttrs, ReduceOp, UnaryOp};
pub use program::{apply_binary, apply_compare, apply_unary, round_to, Instr, Program};
pub use shape::{DType, Shape, TensorType};
