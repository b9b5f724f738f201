//! cubecl lowering of plateau's scheduled kernels: fused elementwise programs as one
//! comptime-programmed `#[cube]` interpreter, and device-free CUDA C++ emission. Depends on
//! cubecl 0.10 / cubek 0.2, with CUDA behind the `cuda` feature.

pub mod call;
pub mod elementwise;
pub mod emit;
pub mod gemm;
pub mod host;
pub mod lower;
pub mod macros;
pub mod program;
pub mod reduce;
pub mod window;

pub use cubecl;
pub use cubek;
pub use program::{access, Access, KInstr, KernelProgram};
