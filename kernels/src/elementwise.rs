//! The fused elementwise kernel: one `#[cube]` interpreter whose program is a comptime
//! argument, so cubecl compiles (and caches) one kernel per distinct program.

use crate::program::{Access, KInstr, KernelProgram};
use cubecl::prelude::*;
use plateau_compiler::ir::{BinaryOp, CmpOp, UnaryOp};

/// The index operand `acc` reads at iteration position `pos`.
#[cube]
pub fn load_index(pos: usize, #[comptime] acc: Access) -> usize {
    let mut idx = comptime!(acc.offset).runtime();
    if comptime!(acc.identity) {
        idx += pos;
    } else {
        #[unroll]
        for a in 0..acc.axes.len() {
            let axis = comptime!(acc.axes[a]);
            let d = comptime!(axis.0);
            let e = comptime!(axis.1);
            let s = comptime!(axis.2);
            idx += ((pos / d) % e) * s;
        }
    }
    idx
}

/// Runs `prog` at position `pos`, pushing one register per instruction.
#[cube]
pub fn run_program(inputs: &Sequence<Array<f32>>, pos: usize, #[comptime] prog: KernelProgram) -> Sequence<f32> {
    let mut regs = Sequence::<f32>::new();
    #[unroll]
    for i in 0..prog.instrs.len() {
        let ins = comptime!(prog.instrs[i]);
        match ins {
            KInstr::Load(k) => {
                let acc = comptime!(prog.access[k].clone());
                let input = inputs.index(k);
                let idx = load_index(pos, acc);
                regs.push(input[idx]);
            }
            KInstr::Const(bits) => {
                let c = comptime!(f32::from_bits(bits));
                regs.push(c);
            }
            KInstr::Unary(op, a) => {
                let x = *regs.index(a);
                let v = match op {
                    UnaryOp::Neg => -x,
                    UnaryOp::Exp => f32::exp(x),
                    UnaryOp::Log => f32::ln(x),
                    UnaryOp::Sqrt => f32::sqrt(x),
                    UnaryOp::Recip => f32::recip(x),
                    UnaryOp::Abs => f32::abs(x),
                    UnaryOp::Sign => f32::cast_from(x > 0.0) - f32::cast_from(x < 0.0),
                };
                regs.push(v);
            }
            KInstr::Binary(op, a, b) => {
                let x = *regs.index(a);
                let y = *regs.index(b);
                let v = match op {
                    BinaryOp::Add => x + y,
                    BinaryOp::Sub => x - y,
                    BinaryOp::Mul => x * y,
                    BinaryOp::Div => x / y,
                    BinaryOp::Max => f32::max(x, y),
                    BinaryOp::Min => f32::min(x, y),
                };
                regs.push(v);
            }
            KInstr::Compare(op, a, b) => {
                let x = *regs.index(a);
                let y = *regs.index(b);
                let v = match op {
                    CmpOp::Lt => f32::cast_from(x < y),
                    CmpOp::Le => f32::cast_from(x <= y),
                    CmpOp::Gt => f32::cast_from(x > y),
                    CmpOp::Ge => f32::cast_from(x >= y),
                    CmpOp::Eq => f32::cast_from(x == y),
                    CmpOp::Ne => f32::cast_from(x != y),
                };
                regs.push(v);
            }
            KInstr::Select(c, a, b) => {
                let v = select(*regs.index(c) != 0.0, *regs.index(a), *regs.index(b));
                regs.push(v);
            }
        }
    }
    regs
}

/// Every output of `prog` at each of the `n` positions of the iteration space.
#[cube(launch)]
pub fn fused_map(inputs: &Sequence<Array<f32>>, outputs: &mut Sequence<Array<f32>>, #[comptime] n: usize, #[comptime] prog: KernelProgram) {
    let pos = ABSOLUTE_POS;
    if pos < n {
        let regs = run_program(inputs, pos, prog.clone());
        #[unroll]
        for o in 0..prog.outputs.len() {
            let r = comptime!(prog.outputs[o]);
            let off = comptime!(prog.output_offsets[o]);
            let out = outputs.index_mut(o);
            out[off + pos] = *regs.index(r);
        }
    }
}
