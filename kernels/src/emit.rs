//! Device-free emission: CUDA C++ for scheduled kernels, with no GPU present.

use crate::lower::{lower, KernelCall};
use crate::program::KernelProgram;
use plateau_compiler::ir::Program;
use plateau_compiler::{Graph, NodeId, Shape};

/// The CUDA C++ source of the fused elementwise kernel running `program` over `space`.
pub fn fused_map_cuda(program: &Program, space: &Shape, name: &str) -> Result<String, String> {
    let mut sources = KernelCall::map(KernelProgram::new(program, space), space.numel()).cuda_sources(name)?;
    Ok(sources.remove(0).1)
}

/// The CUDA C++ source of the kernel computing `nodes` of a fused graph; `offset` gives each
/// node's element offset in its buffer and `workspace` a split GEMM's workspace offset (from
/// the schedule's memory plan), as (kernel name, source) per launch: a split GEMM is two
/// kernels, the second named `{name}_sum`.
pub fn kernel_cuda(g: &Graph, nodes: &[NodeId], offset: &dyn Fn(NodeId) -> usize, workspace: Option<usize>, name: &str) -> Result<Vec<(String, String)>, String> {
    lower(g, nodes, offset, workspace)?.call.cuda_sources(name)
}
