//! plateau's frontend: a Rust DSL whose layers trace into the IR.
//!
//! ```
//! use plateau_frontend::{trace, ModelSpec, TraceOptions};
//! let model = trace(&ModelSpec::default(), &TraceOptions::default()).unwrap();
//! assert_eq!(model.params[0].name, "0.weight");
//! ```

mod error;
mod init;
pub mod layers;
mod loss;
mod models;
mod tracer;

pub use error::{FrontendError, Result};
pub use init::Init;
pub use loss::{accuracy, softmax_cross_entropy};
pub use models::{build, trace, trace_with, BasicBlock, ModelSpec, ResNet18, TraceOptions, TracedModel, WideResNet};
pub use tracer::{ParamSpec, StateSpec, Tracer, Var};
