//! Fused elementwise programs on the reference interpreter.

use super::tensor::Tensor;
use plateau_compiler::ir::{round_to, Program};
use plateau_compiler::{Shape, TensorType};

/// Per iteration axis, the stride of an operand read through `view` (0 where it broadcasts).
fn broadcast_strides(view: &Shape, space: &Shape) -> Vec<usize> {
    let vs = view.strides();
    let lead = space.rank() - view.rank();
    (0..space.rank()).map(|ax| if ax < lead || view.0[ax - lead] == 1 { 0 } else { vs[ax - lead] }).collect()
}

/// Output `output` of `program` at every element of `space`.
pub fn map(program: &Program, output: u32, args: &[&Tensor], space: &TensorType) -> Vec<f64> {
    let strides: Vec<Vec<usize>> = program.views.iter().map(|v| broadcast_strides(v, &space.shape)).collect();
    let dims = &space.shape.0;
    let mut coords = vec![0usize; dims.len()];
    let mut regs = Vec::with_capacity(program.instrs.len());
    let out_at = program.outputs[output as usize] as usize;
    // Arithmetic runs in the operands' float type; only the stored result takes `space`'s.
    let dtype = args.iter().map(|a| a.dtype()).find(|d| d.is_float()).unwrap_or(space.dtype);
    (0..space.shape.numel())
        .map(|lin| {
            let mut rem = lin;
            for ax in (0..dims.len()).rev() {
                coords[ax] = rem % dims[ax];
                rem /= dims[ax];
            }
            program.eval(
                dtype,
                |i| {
                    let s = &strides[i as usize];
                    args[i as usize].data[coords.iter().zip(s).map(|(c, st)| c * st).sum::<usize>()]
                },
                |a| coords[a as usize] as f64,
                &mut regs,
            );
            round_to(space.dtype, regs[out_at])
        })
        .collect()
}
