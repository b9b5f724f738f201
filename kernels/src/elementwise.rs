//! The fused elementwise kernel: one `#[cube]` interpreter whose program is a comptime
//! argument, so cubecl compiles (and caches) one kernel per distinct program.

use crate::program::{Access, KInstr, KernelProgram};
use crate::reduce::CUBE_REDUCE_UNITS;
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
    run_program_with::<N>(inputs, splats, pos, Vector::<f32, N>::new(0.0), prog, None)
}

/// [`run_program`], where operand `given` is `value` rather than a load (a GEMM's
/// epilogue: operand 0 is the value the GEMM computed; a map summing a split sum's slices:
/// the sum); the other operands' slots count without it.
#[cube]
pub fn run_program_with<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    splats: &Sequence<Array<f32>>,
    pos: usize,
    value: Vector<f32, N>,
    #[comptime] prog: KernelProgram,
    #[comptime] given: Option<usize>,
) -> Sequence<Vector<f32, N>> {
    let mut regs = Sequence::<Vector<f32, N>>::new();
    let zero = Vector::<f32, N>::new(0.0);
    #[unroll]
    for i in 0..prog.instrs.len() {
        let ins = comptime!(prog.instrs[i]);
        match ins {
            KInstr::Load(k) => {
                let acc = comptime!(prog.access[k].clone());
                if comptime!(given == Some(k)) {
                    regs.push(value);
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
        let regs = run_program_with::<N>(epi_in, &splats, i, v, prog.clone(), comptime!(Some(0usize)));
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

/// [`fused_map`] reading operand `slices.operand` as the sum of a split sum's slices (see
/// `plateau_compiler::schedule::reduce`): every cube first adds up the `slices.count` partial
/// sums at `slices.offset` of `workspace` in the order the split sum's own second launch
/// does, so that every cube holds the same value, bit for bit; cube 0 also stores it at
/// `slices.total` of `total` (the sum's place). The cube is [`CUBE_REDUCE_UNITS`] units, and
/// the cubes stride over the `n` positions, however many the launch gives (each adds up the
/// slices once).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn fused_map_slices<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    splats: &Sequence<Array<f32>>,
    outputs: &mut Sequence<Array<Vector<f32, N>>>,
    workspace: &Array<f32>,
    total: &mut Array<f32>,
    #[comptime] n: usize,
    #[comptime] prog: KernelProgram,
    #[comptime] slices: Slices,
) {
    let tid = UNIT_POS as usize;
    let mut smem = SharedMemory::<f32>::new(CUBE_REDUCE_UNITS);
    let sum = sum_slices(workspace, &mut smem, tid, slices);
    if CUBE_POS == 0 && tid == 0 {
        total[comptime!(slices.total)] = sum;
    }
    let value = Vector::<f32, N>::new(sum);
    let stride = CUBE_COUNT as usize * comptime!(CUBE_REDUCE_UNITS);
    let mut pos = ABSOLUTE_POS;
    while pos < n {
        let regs = run_program_with::<N>(inputs, splats, pos, value, prog.clone(), comptime!(Some(slices.operand)));
        store_outputs::<N>(&regs, outputs, pos, prog.clone());
        pos += stride;
    }
}

/// Where a map reads a split sum's slices: its operand `operand` is the sum of `count`
/// partial sums at element `offset` of the workspace, stored at element `total` of the sum's
/// buffer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Slices {
    pub operand: usize,
    pub count: usize,
    pub offset: usize,
    pub total: usize,
}

/// The sum of `slices.count` values at `slices.offset` of `workspace`, by a whole cube of
/// [`CUBE_REDUCE_UNITS`] units, every unit getting it: unit `u` sums values `u`, `u + 256`, ...
/// into four interleaved partial sums added as `(p0 + p1) + (p2 + p3)`, then the units' sums
/// meet in a tree in shared memory: the order of `plateau_kernels::reduce`'s cube-per-output
/// sum, which a split sum's second launch runs. A few hundred cycles on a GPU; on a CPU
/// device each barrier costs (see `plateau_runtime::device::adds_up_slices`).
#[cube]
fn sum_slices(workspace: &Array<f32>, smem: &mut SharedMemory<f32>, tid: usize, #[comptime] slices: Slices) -> f32 {
    let step = comptime!(CUBE_REDUCE_UNITS);
    let end = comptime!(slices.count);
    let at = comptime!(slices.offset);
    let mut p0 = 0.0f32;
    let mut p1 = 0.0f32;
    let mut p2 = 0.0f32;
    let mut p3 = 0.0f32;
    let mut r = tid;
    while r + comptime!(3 * step) < end {
        p0 += workspace[at + r];
        p1 += workspace[at + r + step];
        p2 += workspace[at + r + comptime!(2 * step)];
        p3 += workspace[at + r + comptime!(3 * step)];
        r += comptime!(4 * step);
    }
    while r < end {
        p0 += workspace[at + r];
        r += step;
    }
    smem[tid] = (p0 + p1) + (p2 + p3);
    sync_cube();
    #[unroll]
    for level in 0..comptime!(CUBE_REDUCE_UNITS.trailing_zeros() as usize) {
        let s = comptime!(CUBE_REDUCE_UNITS >> (level + 1));
        if tid < s {
            smem[tid] = smem[tid] + smem[tid + s];
        }
        sync_cube();
    }
    smem[0]
}
