//! cubecl lowering of plateau's scheduled kernels.
//!
//! This crate is where each kernel of a compiled schedule becomes a cubecl `#[cube]`
//! function (fused elementwise programs, reductions, matmul/conv via cubek). It depends on
//! the compiler's IR and on cubecl 0.10 / cubek 0.2, with CUDA behind the `cuda` feature.
//! Until the lowering lands it only fixes those dependencies, so the workspace always
//! builds against the pinned versions with and without `--features cuda`.

pub use cubecl;
pub use cubek;
