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

/// Runs `prog` at position `pos` (in units of `N`-wide vectors), pushing one register per
/// instruction. Operands marked `splat` are read as one scalar from `splats` and broadcast.
#[cube]
pub fn run_program<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, splats: &Sequence<Array<f32>>, pos: usize, #[comptime] prog: KernelProgram) -> Sequence<Vector<f32, N>> {
    run_program_with::<N>(inputs, splats, pos, Vector::<f32, N>::new(0.0), prog, false)
}

/// [`run_program`], where operand 0 is `first` rather than a load when `first_given` (a
/// GEMM's epilogue: operand 0 is the value the GEMM computed; the other operands' slots
/// count from 0 without it).
#[cube]
pub fn run_program_with<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    splats: &Sequence<Array<f32>>,
    pos: usize,
    first: Vector<f32, N>,
    #[comptime] prog: KernelProgram,
    #[comptime] first_given: bool,
) -> Sequence<Vector<f32, N>> {
    let mut regs = Sequence::<Vector<f32, N>>::new();
    let zero = Vector::<f32, N>::new(0.0);
    #[unroll]
    for i in 0..prog.instrs.len() {
        let ins = comptime!(prog.instrs[i]);
        match ins {
            KInstr::Load(k) => {
                let acc = comptime!(prog.access[k].clone());
                if comptime!(first_given && k == 0) {
                    regs.push(first);
                } else if comptime!(acc.splat) {
                    let input = splats.index(comptime!(acc.slot));
                    regs.push(Vector::<f32, N>::new(input[load_index(pos, acc.clone())]));
                } else {
                    let input = inputs.index(comptime!(acc.slot));
                    regs.push(input[load_index(pos, acc.clone())]);
                }
            }
            KInstr::Const(bits) => {
                let c = comptime!(f32::from_bits(bits));
                regs.push(Vector::<f32, N>::new(c));
            }
            KInstr::Unary(op, a) => {
                let x = *regs.index(a);
                let v = match op {
                    // Not `-x`: cubecl's CUDA C++ has no unary minus on its vector types
                    // (`float_4`), and NVRTC refuses it. `x * -1` is the same IEEE negation,
                    // signed zeros included.
                    UnaryOp::Neg => x * Vector::<f32, N>::new(-1.0),
                    UnaryOp::Exp => x.exp(),
                    UnaryOp::Log => x.ln(),
                    UnaryOp::Sqrt => x.sqrt(),
                    UnaryOp::Recip => x.recip(),
                    UnaryOp::Abs => x.abs(),
                    UnaryOp::Sign => Vector::<f32, N>::cast_from(x.greater_than(zero)) - Vector::<f32, N>::cast_from(x.less_than(zero)),
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
                    BinaryOp::Max => max(x, y),
                    BinaryOp::Min => min(x, y),
                };
                regs.push(v);
            }
            KInstr::Compare(op, a, b) => {
                let x = *regs.index(a);
                let y = *regs.index(b);
                let c = match op {
                    CmpOp::Lt => x.less_than(y),
                    CmpOp::Le => x.less_equal(y),
                    CmpOp::Gt => x.greater_than(y),
                    CmpOp::Ge => x.greater_equal(y),
                    CmpOp::Eq => x.equal(y),
                    CmpOp::Ne => x.not_equal(y),
                };
                regs.push(Vector::<f32, N>::cast_from(c));
            }
            KInstr::Select(c, a, b) => {
                let v = select_many((*regs.index(c)).not_equal(zero), *regs.index(a), *regs.index(b));
                regs.push(v);
            }
            // Only in scalar programs (`KernelProgram::vectorized` refuses it): `pos` is an
            // element's position.
            KInstr::Coord { divisor, extent } => {
                regs.push(Vector::<f32, N>::new(f32::cast_from((pos / divisor) % extent)));
            }
        }
    }
    regs
}

/// Stores `v`, the value a kernel computed at element `i` of its output: at `out_at + i` of
/// `out` when `store`, and each output of the epilogue `epi` (operand 0: `v`; the others read
/// from `epi_in` at `i`) into `epi_out`, when there is one.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn store_with_epilogue<N: Size>(
    out: &mut Array<f32>,
    epi_in: &Sequence<Array<Vector<f32, N>>>,
    epi_out: &mut Sequence<Array<Vector<f32, N>>>,
    i: usize,
    v: f32,
    #[comptime] out_at: usize,
    #[comptime] epi: Option<KernelProgram>,
    #[comptime] store: bool,
) {
    if comptime!(store) {
        out[out_at + i] = v;
    }
    run_epilogue::<N>(epi_in, epi_out, i, Vector::<f32, N>::new(v), epi);
}

/// The epilogue `epi` (if any) of the value `v` a kernel computed at element `i` of its
/// output: operand 0 is `v`, the others are read from `epi_in` at `i`; each output is stored
/// into `epi_out`.
#[cube]
pub fn run_epilogue<N: Size>(
    epi_in: &Sequence<Array<Vector<f32, N>>>,
    epi_out: &mut Sequence<Array<Vector<f32, N>>>,
    i: usize,
    v: Vector<f32, N>,
    #[comptime] epi: Option<KernelProgram>,
) {
    if comptime!(epi.is_some()) {
        let prog = comptime!(epi.clone().unwrap());
        let splats = Sequence::<Array<f32>>::new();
        let regs = run_program_with::<N>(epi_in, &splats, i, v, prog.clone(), true);
        store_outputs::<N>(&regs, epi_out, i, prog);
    }
}

/// Stores each output of `prog` (its registers `regs`) at position `i` of its array in
/// `outputs`, after the output's element offset.
#[cube]
fn store_outputs<N: Size>(regs: &Sequence<Vector<f32, N>>, outputs: &mut Sequence<Array<Vector<f32, N>>>, i: usize, #[comptime] prog: KernelProgram) {
    #[unroll]
    for o in 0..prog.outputs.len() {
        let reg = comptime!(prog.outputs[o]);
        let at = comptime!(prog.output_offsets[o]);
        let dst = outputs.index_mut(o);
        dst[at + i] = *regs.index(reg);
    }
}

/// Every output of `prog` at each of the `n` positions (vectors of `N` elements) of the
/// iteration space.
#[cube(launch_unchecked)]
pub fn fused_map<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    splats: &Sequence<Array<f32>>,
    outputs: &mut Sequence<Array<Vector<f32, N>>>,
    #[comptime] n: usize,
    #[comptime] prog: KernelProgram,
) {
    let pos = ABSOLUTE_POS;
    if pos < n {
        let regs = run_program::<N>(inputs, splats, pos, prog.clone());
        store_outputs::<N>(&regs, outputs, pos, prog);
    }
}
