//! plateau's compiler: the IR, autodiff, and (later) the step builder and fusion.
//! Nothing here knows about devices or cubecl.

pub mod autodiff;
pub mod egraph;
pub mod schedule;
mod error;
pub mod ir;
pub mod step;

pub use autodiff::{differentiate, hvp};
pub use error::IrError;
pub use ir::{DType, Graph, NodeId, Op, Shape, TensorType};
pub use schedule::{compile_step, Compiled, Schedule};
pub use step::{build_eval_step, build_naive_step, build_step, BaseOptimizer, LossModel, OptimizerSpec, Phase, Sam, SamNorm, Step};
