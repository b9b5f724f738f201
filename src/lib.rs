//! plateau: a training framework that compiles a model's whole training step ahead of time,
//! with Sharpness-Aware Minimization as a first-class optimizer.
//!
//! This facade re-exports the public API of the workspace crates:
//! [`compiler`] (IR, autodiff), [`frontend`] (the model DSL) and [`runtime`] (executors).

pub use plateau_compiler as compiler;
pub use plateau_frontend as frontend;
pub use plateau_kernels as kernels;
pub use plateau_runtime as runtime;

pub use plateau_compiler::{differentiate, hvp, DType, Graph, IrError, NodeId, Op, Shape};
pub use plateau_frontend::{trace, FrontendError, ModelSpec, TraceOptions, TracedModel, Tracer, Var};
pub use plateau_runtime::reference::{evaluate, run, Bindings, Tensor};
