//! Host-side launches on any cubecl runtime: upload, launch, read back.

use crate::lower::KernelCall;
use crate::program::KernelProgram;
use cubecl::prelude::*;
use cubecl::server::Handle;
use plateau_compiler::ir::Program;
use plateau_compiler::Shape;

/// Threads per cube for elementwise kernels.
pub const BLOCK: u32 = 256;

/// Uploads f32 data.
pub fn upload<R: Runtime>(client: &ComputeClient<R>, data: &[f32]) -> Handle {
    // A zero-sized buffer is not allowed; empty tensors get one unused element.
    if data.is_empty() {
        return client.create_from_slice(f32::as_bytes(&[0.0]));
    }
    client.create_from_slice(f32::as_bytes(data))
}

/// Reads `len` f32 values back.
pub fn download<R: Runtime>(client: &ComputeClient<R>, handle: Handle, len: usize) -> Result<Vec<f32>, String> {
    check(client)?;
    let bytes = client.read_one(handle).map_err(|e| format!("{e:?}"))?;
    Ok(f32::from_bytes(&bytes)[..len].to_vec())
}

/// Waits for the device and reports any error it recorded since the last check: a kernel
/// that failed to compile or launch (cubecl reports these here, not at launch).
pub fn check<R: Runtime>(client: &ComputeClient<R>) -> Result<(), String> {
    cubecl::future::block_on(client.sync()).map_err(|e| e.to_string())
}

/// Launches the fused program over `space`: `inputs` are (buffer, element count) pairs in the
/// program's operand order; one output buffer per program output, each `space.numel()` long.
pub fn launch_fused_map<R: Runtime>(client: &ComputeClient<R>, program: &Program, space: &Shape, inputs: &[(Handle, usize)], outputs: &[Handle]) {
    let n = space.numel();
    if n == 0 {
        return;
    }
    let call = KernelCall::map(KernelProgram::new(program, space), n);
    // SAFETY: each input handle holds `len` f32 values (at least one), each output `n`.
    let ins = inputs.iter().map(|(h, len)| unsafe { ArrayArg::from_raw_parts(h.clone(), (*len).max(1)) }).collect();
    let outs = outputs.iter().map(|h| unsafe { ArrayArg::from_raw_parts(h.clone(), n) }).collect();
    call.launch(client, ins, outs);
}

/// Runs the fused program on host data and returns every output.
pub fn fused_map_on<R: Runtime>(client: &ComputeClient<R>, program: &Program, space: &Shape, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
    let handles: Vec<(Handle, usize)> = inputs.iter().map(|d| (upload(client, d), d.len())).collect();
    let n = space.numel();
    let outputs: Vec<Handle> = program.outputs.iter().map(|_| client.empty(n.max(1) * 4)).collect();
    launch_fused_map(client, program, space, &handles, &outputs);
    outputs.into_iter().map(|h| download(client, h, n)).collect()
}

/// Runs a reduction of `program`'s output over `axes` of `space` on host data; the result has
/// `space` with the reduced axes at size 1, row-major.
pub fn fused_reduce_on<R: Runtime>(
    client: &ComputeClient<R>,
    program: &Program,
    op: plateau_compiler::ir::ReduceOp,
    axes: &[usize],
    space: &Shape,
    inputs: &[&[f32]],
) -> Result<Vec<f32>, String> {
    let layout = crate::reduce::ReduceLayout::new(space, axes);
    let outputs = layout.outputs;
    // SAFETY: each handle holds `d.len()` f32 values (at least one).
    let ins = inputs.iter().map(|d| unsafe { ArrayArg::from_raw_parts(upload(client, d), d.len().max(1)) }).collect();
    let out = client.empty(outputs.max(1) * 4);
    if outputs > 0 {
        // SAFETY: `out` holds `outputs` f32 values.
        let arg = unsafe { ArrayArg::from_raw_parts(out.clone(), outputs) };
        crate::reduce::launch_reduce::<R>(client, op, ins, vec![arg], None, layout, KernelProgram::new(program, space), crate::reduce::no_epilogue());
    }
    download(client, out, outputs)
}
