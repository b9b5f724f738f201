//! Device-free emission: a scheduled kernel expanded with cubecl's `KernelBuilder` and
//! compiled by cubecl's CUDA C++ compiler, with no GPU present.

use crate::elementwise::fused_map;
use crate::host::BLOCK;
use crate::program::KernelProgram;
use cubecl::prelude::*;
use cubecl_cpp::cuda::{mma::CudaWmmaCompiler, CudaDialect};
use cubecl_cpp::shared::{CompilationOptions, CppCompiler};
use plateau_compiler::ir::Program;
use plateau_compiler::Shape;

/// cubecl's CUDA compiler (the one `cubecl::cuda` uses).
type CudaCompiler = CppCompiler<CudaDialect<CudaWmmaCompiler>>;

fn arrays(n: usize) -> SequenceCompilationArg<Array<f32>> {
    SequenceCompilationArg { values: (0..n).map(|_| ArrayCompilationArg { inplace: None }).collect() }
}

/// The CUDA C++ source of the fused elementwise kernel running `program` over `space`.
pub fn fused_map_cuda(program: &Program, space: &Shape, name: &str) -> Result<String, String> {
    let prog = KernelProgram::new(program, space);
    let mut builder = KernelBuilder::default();
    let addr = AddressType::U32;
    addr.register(&mut builder.scope);
    let inputs = <Sequence<Array<f32>> as LaunchArg>::expand(&arrays(program.views.len()), &mut builder);
    let outputs = <Sequence<Array<f32>> as LaunchArg>::expand_output(&arrays(program.outputs.len()), &mut builder);
    fused_map::expand(&mut builder.scope, inputs, outputs, space.numel(), prog);
    let def = builder.build(KernelSettings::default().cube_dim(CubeDim::new_1d(BLOCK)).address_type(addr).kernel_name(name));
    let compiled = <CudaCompiler as cubecl::Compiler>::compile(
        &mut CudaCompiler::default(),
        def,
        &CompilationOptions::default(),
        ExecutionMode::Checked,
        addr.unsigned_type(),
    )
    .map_err(|e| format!("{e:?}"))?;
    Ok(compiled.to_string())
}
