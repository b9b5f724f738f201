//! Device-free emission: CUDA C++ for scheduled kernels, with no GPU present.

use crate::lower::{lower_scheduled, KernelCall};
use crate::program::KernelProgram;
use plateau_compiler::ir::Program;
use plateau_compiler::schedule::{Kernel, Schedule};
use plateau_compiler::{Graph, NodeId, Shape};

/// The CUDA C++ source of the fused elementwise kernel running `program` over `space`.
pub fn fused_map_cuda(program: &Program, space: &Shape, name: &str) -> Result<String, String> {
    let mut sources = KernelCall::map(KernelProgram::new(program, space), space.numel()).cuda_sources(name)?;
    Ok(sources.remove(0).1)
}

/// The CUDA C++ source of kernel `kernel` of schedule `s` over the fused graph `g` at the
/// places the schedule's memory plan gives, as (kernel name, source) per launch: a split
/// GEMM or sum is two kernels, the second named `{name}_sum`.
pub fn kernel_cuda(g: &Graph, s: &Schedule, kernel: &Kernel, name: &str) -> Result<Vec<(String, String)>, String> {
    lower_scheduled(g, s, kernel, &|n: NodeId| s.locations[&n].1, s.workspace_offset(kernel))?.call.cuda_sources(name)
}
