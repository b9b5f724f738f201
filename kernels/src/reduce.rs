//! Reductions with a fused prologue: each output element is computed by one unit, which
//! walks the reduced axes, evaluates the prologue program at each position and accumulates,
//! or by a cube (long reductions), whose units stride over the terms and meet in a tree.
//! Sums keep four partial sums per unit, so that four terms' loads are in flight at once
//! rather than each waiting for the previous addition. A sum kernel sums every output of its
//! program (several sums over one space sharing their loads), and a single sum may run an
//! epilogue on each result as it stores it. A split sum (few outputs, see
//! `plateau_compiler::schedule::reduce`) runs its slices as cubes into a workspace, then sums
//! them. The kernels are written over `N`-wide vectors and launched with `N = 1`.

use crate::elementwise::{run_epilogue, run_program, run_program_with};
use crate::program::KernelProgram;
use cubecl::prelude::*;
use plateau_compiler::Shape;

/// Where a reduction reads: for the output index and the reduced index, the
/// (divisor, extent, stride-in-space) of each axis they cover.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ReduceLayout {
    pub kept: Vec<(usize, usize, usize)>,
    pub reduced: Vec<(usize, usize, usize)>,
    pub outputs: usize,
    pub reduce_len: usize,
    /// A cube per output (long reductions), else a unit per output.
    pub cube: bool,
}

impl ReduceLayout {
    pub fn new(space: &Shape, axes: &[usize]) -> Self {
        let ss = space.strides();
        let mut out_dims: Vec<usize> = space.0.clone();
        for &a in axes {
            out_dims[a] = 1;
        }
        let os = Shape(out_dims).strides();
        let red: Vec<usize> = (0..space.rank()).filter(|a| axes.contains(a)).collect();
        let red_dims: Vec<usize> = red.iter().map(|&a| space.0[a]).collect();
        let rs = Shape(red_dims.clone()).strides();
        let kept = (0..space.rank()).filter(|a| !axes.contains(a) && space.0[*a] > 1).map(|a| (os[a], space.0[a], ss[a])).collect();
        let reduced = red.iter().enumerate().filter(|(_, &a)| space.0[a] > 1).map(|(i, &a)| (rs[i], space.0[a], ss[a])).collect();
        ReduceLayout {
            kept,
            reduced,
            outputs: space.numel() / red_dims.iter().product::<usize>().max(1),
            reduce_len: red_dims.iter().product(),
            cube: red_dims.iter().product::<usize>() >= CUBE_REDUCE_MIN,
        }
    }
}

#[cube]
fn position(i: usize, #[comptime] axes: Vec<(usize, usize, usize)>) -> usize {
    let mut p = 0usize;
    #[unroll]
    for a in 0..axes.len() {
        let axis = comptime!(axes[a]);
        let d = comptime!(axis.0);
        let e = comptime!(axis.1);
        let s = comptime!(axis.2);
        p += ((i / d) % e) * s;
    }
    p
}

/// The prologue's value at reduced index `r` of output `o` (a max reduction's single output).
#[cube]
fn prologue_at<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, base: usize, r: usize, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram) -> Vector<f32, N> {
    let splats = Sequence::<Array<f32>>::new();
    let regs = run_program::<N>(inputs, &splats, base + position(r, comptime!(layout.reduced.clone())), prog.clone());
    *regs.index(comptime!(prog.outputs[0]))
}

/// Runs the prologue at reduced index `r` and adds each of its `K` outputs into the partial
/// sums `part[j * K + k]`; when the kernel writes the prologue as a map too (`map`, a
/// single-output sum), stores the value at its position of the space in `outputs[K]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn accumulate<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    outputs: &mut Sequence<Array<Vector<f32, N>>>,
    part: &mut Array<Vector<f32, N>>,
    base: usize,
    r: usize,
    #[comptime] j: usize,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] map: Option<usize>,
    value: Vector<f32, N>,
    #[comptime] given: Option<usize>,
) {
    let pos = base + position(r, comptime!(layout.reduced.clone()));
    let splats = Sequence::<Array<f32>>::new();
    let regs = run_program_with::<N>(inputs, &splats, pos, value, prog.clone(), given);
    let count = comptime!(prog.outputs.len());
    #[unroll]
    for k in 0..count {
        let reg = comptime!(prog.outputs[k]);
        part[comptime!(j * count + k)] += *regs.index(reg);
    }
    if comptime!(map.is_some()) {
        let dst = outputs.index_mut(count);
        dst[comptime!(map.unwrap_or(0)) + pos] = *regs.index(comptime!(prog.outputs[0]));
    }
}

/// The sums of the prologue's outputs over reduced indices `start, start + step, ...` below
/// `end`, into `sums[k]`: four interleaved partial sums per output (four independent loads per
/// iteration), added in a fixed order at the end.
#[cube]
#[allow(clippy::too_many_arguments)]
fn strided_sums<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    outputs: &mut Sequence<Array<Vector<f32, N>>>,
    sums: &mut Array<Vector<f32, N>>,
    base: usize,
    start: usize,
    end: usize,
    #[comptime] step: usize,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] map: Option<usize>,
    value: Vector<f32, N>,
    #[comptime] given: Option<usize>,
) {
    let count = comptime!(prog.outputs.len());
    let mut part = Array::<Vector<f32, N>>::new(comptime!(4 * count));
    #[unroll]
    for j in 0..comptime!(4 * count) {
        part[j] = Vector::<f32, N>::new(0.0);
    }
    let mut r = start;
    while r + comptime!(3 * step) < end {
        accumulate::<N>(inputs, outputs, &mut part, base, r, comptime!(0usize), layout.clone(), prog.clone(), map, value, given);
        accumulate::<N>(inputs, outputs, &mut part, base, r + comptime!(step), comptime!(1usize), layout.clone(), prog.clone(), map, value, given);
        accumulate::<N>(inputs, outputs, &mut part, base, r + comptime!(2 * step), comptime!(2usize), layout.clone(), prog.clone(), map, value, given);
        accumulate::<N>(inputs, outputs, &mut part, base, r + comptime!(3 * step), comptime!(3usize), layout.clone(), prog.clone(), map, value, given);
        r += comptime!(4 * step);
    }
    while r < end {
        accumulate::<N>(inputs, outputs, &mut part, base, r, comptime!(0usize), layout.clone(), prog.clone(), map, value, given);
        r += comptime!(step);
    }
    #[unroll]
    for k in 0..count {
        sums[k] = (part[k] + part[comptime!(count + k)]) + (part[comptime!(2 * count + k)] + part[comptime!(3 * count + k)]);
    }
}

/// The terms output `o` sums: all of them, or none for a unit or cube past the last output.
#[cube]
fn terms(o: usize, #[comptime] layout: ReduceLayout) -> usize {
    let mut end = 0usize;
    if o < comptime!(layout.outputs) {
        end = comptime!(layout.reduce_len);
    }
    end
}

/// Cube `o`'s sums of the prologue's outputs (as [`strided_sums`], its units striding over
/// the terms), met in a tree in shared memory and given back in `sums` to every unit.
#[cube]
#[allow(clippy::too_many_arguments)]
fn cube_sums<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    outputs: &mut Sequence<Array<Vector<f32, N>>>,
    sums: &mut Array<Vector<f32, N>>,
    base: usize,
    o: usize,
    tid: usize,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] map: Option<usize>,
    value: Vector<f32, N>,
    #[comptime] given: Option<usize>,
) {
    let count = comptime!(prog.outputs.len());
    let mut smem = SharedMemory::<Vector<f32, N>>::new(comptime!(count * CUBE_REDUCE_UNITS));
    strided_sums::<N>(inputs, outputs, sums, base, tid, terms(o, layout.clone()), comptime!(CUBE_REDUCE_UNITS), layout, prog, map, value, given);
    tree_sums::<N>(&mut smem, sums, tid, count);
    #[unroll]
    for k in 0..count {
        sums[k] = smem[comptime!(k * CUBE_REDUCE_UNITS)];
    }
}

/// The maximum of the prologue over the terms of the output at `base`, by one unit.
#[cube]
fn unit_max<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, base: usize, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram) -> Vector<f32, N> {
    let mut acc = prologue_at::<N>(inputs, base, 0, layout.clone(), prog.clone());
    for r in 1..comptime!(layout.reduce_len) {
        acc = max(acc, prologue_at::<N>(inputs, base, r, layout.clone(), prog.clone()));
    }
    acc
}

/// The maximum of the prologue over the terms of the output at `base`, by a cube (its units
/// striding over the terms, then a tree), given to every unit.
#[cube]
fn cube_max<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, base: usize, tid: usize, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram) -> Vector<f32, N> {
    let mut smem = SharedMemory::<Vector<f32, N>>::new(CUBE_REDUCE_UNITS);
    // Every unit starts from a real element (reduce_len >= CUBE_REDUCE_UNITS here).
    let mut acc = prologue_at::<N>(inputs, base, tid, layout.clone(), prog.clone());
    let mut r = tid + comptime!(CUBE_REDUCE_UNITS);
    while r < comptime!(layout.reduce_len) {
        acc = max(acc, prologue_at::<N>(inputs, base, r, layout.clone(), prog.clone()));
        r += comptime!(CUBE_REDUCE_UNITS);
    }
    smem[tid] = acc;
    tree_max::<N>(smem, tid)
}

/// `outputs[k][o] = sum_r output k of the prologue at the space position of (o, r)`, for
/// each of the program's `K` outputs (several sums over one space share their loads): one
/// unit per output `o`, or, when `layout.cube`, cube `o`, whose units stride over the terms
/// and meet in a tree per output. With `map` (a single-output sum), every prologue value is
/// also stored in `outputs[1]` at element offset `map`: the kernel of a sum and the map it
/// sums. With an epilogue (a single-output sum without a map), each sum goes through `epi` as
/// it is stored (see [`run_epilogue`]), and is itself stored only when `store`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn fused_reduce_sum<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    outputs: &mut Sequence<Array<Vector<f32, N>>>,
    epi_in: &Sequence<Array<Vector<f32, N>>>,
    epi_out: &mut Sequence<Array<Vector<f32, N>>>,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] map: Option<usize>,
    #[comptime] epi: Option<KernelProgram>,
    #[comptime] store: bool,
) {
    let count = comptime!(prog.outputs.len());
    let mut sums = Array::<Vector<f32, N>>::new(count);
    if comptime!(layout.cube) {
        let o = CUBE_POS;
        let tid = UNIT_POS as usize;
        let base = position(o, comptime!(layout.kept.clone()));
        cube_sums::<N>(inputs, outputs, &mut sums, base, o, tid, layout.clone(), prog.clone(), map, Vector::<f32, N>::new(0.0), comptime!(Option::<usize>::None));
        if tid == 0 && o < comptime!(layout.outputs) {
            store_sums::<N>(outputs, epi_in, epi_out, &sums, o, prog, epi, store);
        }
    } else {
        let o = ABSOLUTE_POS;
        let base = position(o, comptime!(layout.kept.clone()));
        strided_sums::<N>(inputs, outputs, &mut sums, base, 0usize, terms(o, layout.clone()), comptime!(1usize), layout.clone(), prog.clone(), map, Vector::<f32, N>::new(0.0), comptime!(Option::<usize>::None));
        if o < comptime!(layout.outputs) {
            store_sums::<N>(outputs, epi_in, epi_out, &sums, o, prog, epi, store);
        }
    }
}

/// One of the two reductions of a chained kernel (see [`fused_reduce_chain`]): a sum of one or
/// more outputs, or a max of one, with an epilogue on a single output's result, stored only
/// when `store`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ChainPart {
    pub op: plateau_compiler::ir::ReduceOp,
    pub prog: KernelProgram,
    pub epi: Option<KernelProgram>,
    pub store: bool,
}

/// Two reductions over one space and axes, the second reading the first's result of its own
/// output (a BatchNorm's mean then variance, a row's maximum then its sums of exponentials),
/// in one kernel: each output's unit or cube computes reduction `a` exactly as its own kernel
/// would (the same order of additions, or of maxima), stores it (and runs its epilogue), then
/// computes `b` with its operand `given` set to that result rather than loaded (the value the
/// separate kernel would load). `b` may sum several outputs.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn fused_reduce_chain<N: Size>(
    in_a: &Sequence<Array<Vector<f32, N>>>,
    out_a: &mut Sequence<Array<Vector<f32, N>>>,
    epi_in_a: &Sequence<Array<Vector<f32, N>>>,
    epi_out_a: &mut Sequence<Array<Vector<f32, N>>>,
    in_b: &Sequence<Array<Vector<f32, N>>>,
    out_b: &mut Sequence<Array<Vector<f32, N>>>,
    epi_in_b: &Sequence<Array<Vector<f32, N>>>,
    epi_out_b: &mut Sequence<Array<Vector<f32, N>>>,
    #[comptime] layout: ReduceLayout,
    #[comptime] a: ChainPart,
    #[comptime] b: ChainPart,
    #[comptime] given: usize,
) {
    let count = comptime!(b.prog.outputs.len());
    let sum_a = comptime!(a.op == plateau_compiler::ir::ReduceOp::Sum);
    let zero = Vector::<f32, N>::new(0.0);
    let mut first = Array::<Vector<f32, N>>::new(comptime!(1usize));
    let mut sums = Array::<Vector<f32, N>>::new(count);
    if comptime!(layout.cube) {
        let o = CUBE_POS;
        let tid = UNIT_POS as usize;
        let base = position(o, comptime!(layout.kept.clone()));
        if comptime!(sum_a) {
            cube_sums::<N>(in_a, out_a, &mut first, base, o, tid, layout.clone(), a.prog.clone(), comptime!(Option::<usize>::None), zero, comptime!(Option::<usize>::None));
        } else {
            first[0] = cube_max::<N>(in_a, base, tid, layout.clone(), a.prog.clone());
        }
        if tid == 0 && o < comptime!(layout.outputs) {
            store_sums::<N>(out_a, epi_in_a, epi_out_a, &first, o, a.prog.clone(), a.epi.clone(), a.store);
        }
        cube_sums::<N>(in_b, out_b, &mut sums, base, o, tid, layout.clone(), b.prog.clone(), comptime!(Option::<usize>::None), first[0], comptime!(Some(given)));
        if tid == 0 && o < comptime!(layout.outputs) {
            store_sums::<N>(out_b, epi_in_b, epi_out_b, &sums, o, b.prog, b.epi, b.store);
        }
    } else {
        let o = ABSOLUTE_POS;
        if o < comptime!(layout.outputs) {
            let base = position(o, comptime!(layout.kept.clone()));
            if comptime!(sum_a) {
                strided_sums::<N>(in_a, out_a, &mut first, base, 0usize, comptime!(layout.reduce_len), comptime!(1usize), layout.clone(), a.prog.clone(), comptime!(Option::<usize>::None), zero, comptime!(Option::<usize>::None));
            } else {
                first[0] = unit_max::<N>(in_a, base, layout.clone(), a.prog.clone());
            }
            store_sums::<N>(out_a, epi_in_a, epi_out_a, &first, o, a.prog.clone(), a.epi.clone(), a.store);
            strided_sums::<N>(in_b, out_b, &mut sums, base, 0usize, comptime!(layout.reduce_len), comptime!(1usize), layout.clone(), b.prog.clone(), comptime!(Option::<usize>::None), first[0], comptime!(Some(given)));
            store_sums::<N>(out_b, epi_in_b, epi_out_b, &sums, o, b.prog, b.epi, b.store);
        }
    }
}

/// Stores each sum of output `o` (`sums[k]` into `outputs[k]`), through the epilogue `epi`
/// when there is one.
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_sums<N: Size>(
    outputs: &mut Sequence<Array<Vector<f32, N>>>,
    epi_in: &Sequence<Array<Vector<f32, N>>>,
    epi_out: &mut Sequence<Array<Vector<f32, N>>>,
    sums: &Array<Vector<f32, N>>,
    o: usize,
    #[comptime] prog: KernelProgram,
    #[comptime] epi: Option<KernelProgram>,
    #[comptime] store: bool,
) {
    if comptime!(store) {
        #[unroll]
        for k in 0..prog.outputs.len() {
            let dst = outputs.index_mut(k);
            dst[comptime!(prog.output_offsets[k]) + o] = sums[k];
        }
    }
    run_epilogue::<N>(epi_in, epi_out, o, sums[0usize], epi);
}

/// `output[o] = max_r prologue(space position of (o, r))`.
#[cube(launch_unchecked)]
pub fn fused_reduce_max<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, output: &mut Array<Vector<f32, N>>, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram) {
    let o = ABSOLUTE_POS;
    if o < comptime!(layout.outputs) {
        let base = position(o, comptime!(layout.kept.clone()));
        output[comptime!(prog.output_offsets[0]) + o] = unit_max::<N>(inputs, base, layout.clone(), prog.clone());
    }
}

pub use plateau_compiler::schedule::reduce::CUBE_REDUCE_MIN;

/// Units per cube in the cube-per-output reduction (a power of two).
pub const CUBE_REDUCE_UNITS: usize = 256;

/// Stores `sums` (one per output) at `smem[k * CUBE_REDUCE_UNITS + tid]`, then sums each
/// output's values in a tree into `smem[k * CUBE_REDUCE_UNITS]`.
#[cube]
fn tree_sums<N: Size>(smem: &mut SharedMemory<Vector<f32, N>>, sums: &Array<Vector<f32, N>>, tid: usize, #[comptime] count: usize) {
    #[unroll]
    for k in 0..count {
        smem[comptime!(k * CUBE_REDUCE_UNITS) + tid] = sums[k];
    }
    sync_cube();
    #[unroll]
    for level in 0..comptime!(CUBE_REDUCE_UNITS.trailing_zeros() as usize) {
        let s = comptime!(CUBE_REDUCE_UNITS >> (level + 1));
        if tid < s {
            #[unroll]
            for k in 0..count {
                let at = comptime!(k * CUBE_REDUCE_UNITS) + tid;
                smem[at] = smem[at] + smem[at + s];
            }
        }
        sync_cube();
    }
}

#[cube]
fn tree_max<N: Size>(mut smem: SharedMemory<Vector<f32, N>>, tid: usize) -> Vector<f32, N> {
    sync_cube();
    #[unroll]
    for k in 0..comptime!(CUBE_REDUCE_UNITS.trailing_zeros() as usize) {
        let s = comptime!(CUBE_REDUCE_UNITS >> (k + 1));
        if tid < s {
            smem[tid] = max(smem[tid], smem[tid + s]);
        }
        sync_cube();
    }
    smem[0]
}

/// `output[o] = max_r prologue(..)` with cube `o` computing output `o`.
#[cube(launch_unchecked)]
pub fn fused_reduce_max_cube<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, output: &mut Array<Vector<f32, N>>, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram) {
    let o = CUBE_POS;
    let tid = UNIT_POS as usize;
    let base = position(o, comptime!(layout.kept.clone()));
    let total = cube_max::<N>(inputs, base, tid, layout.clone(), prog.clone());
    if tid == 0 && o < comptime!(layout.outputs) {
        output[comptime!(prog.output_offsets[0]) + o] = total;
    }
}

/// Slice `s` of output `o` of a split sum (see `plateau_compiler::schedule::reduce`; a
/// single-output program): cube `s * outputs + o` sums the slice's terms into
/// `outputs[0][workspace_offset + s * outputs + o]`, the workspace. With `map`, every prologue
/// value is also stored in `outputs[1]` at element offset `map`.
#[cube(launch_unchecked)]
pub fn fused_reduce_sum_slices<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    outputs: &mut Sequence<Array<Vector<f32, N>>>,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] split: usize,
    #[comptime] workspace_offset: usize,
    #[comptime] map: Option<usize>,
) {
    let cube = CUBE_POS;
    let o = cube % comptime!(layout.outputs);
    let s = cube / comptime!(layout.outputs);
    let tid = UNIT_POS as usize;
    let mut smem = SharedMemory::<Vector<f32, N>>::new(CUBE_REDUCE_UNITS);
    let base = position(o, comptime!(layout.kept.clone()));
    let slice = comptime!(layout.reduce_len.div_ceil(split));
    // Cubes past the last slice (the grid is rounded up) find no terms.
    let mut end = s * slice + slice;
    if end > comptime!(layout.reduce_len) {
        end = comptime!(layout.reduce_len);
    }
    let mut sums = Array::<Vector<f32, N>>::new(comptime!(1usize));
    strided_sums::<N>(inputs, outputs, &mut sums, base, s * slice + tid, end, comptime!(CUBE_REDUCE_UNITS), layout.clone(), prog.clone(), map, Vector::<f32, N>::new(0.0), comptime!(Option::<usize>::None));
    tree_sums::<N>(&mut smem, &sums, tid, comptime!(1usize));
    if tid == 0 && s < comptime!(split) {
        let workspace = outputs.index_mut(comptime!(0usize));
        workspace[comptime!(workspace_offset) + cube] = smem[tid];
    }
}

/// The second launch of a split sum: each output's slices, summed from the workspace (read
/// as `[split, outputs]`) into the output at `output_offset` by a cube per output, in a fixed
/// order (a strided walk, then the tree), so that no unit waits on a chain of loads.
pub fn slices_sum(outputs: usize, split: usize, workspace_offset: usize, output_offset: usize) -> (ReduceLayout, KernelProgram) {
    let space = Shape(vec![split, outputs]);
    let identity = plateau_compiler::ir::Program::identity(space.clone());
    let layout = ReduceLayout { cube: true, ..ReduceLayout::new(&space, &[0]) };
    (layout, KernelProgram::new(&identity, &space).with_offsets(&[workspace_offset], &[output_offset]))
}

/// The arrays as a kernel's sequence argument.
pub(crate) fn seq<R: Runtime, T: LaunchArg<RuntimeArg<R> = ArrayArg<R>>>(arrays: Vec<ArrayArg<R>>) -> SequenceArg<R, T> {
    let mut s = SequenceArg::new();
    for a in arrays {
        s.push(a);
    }
    s
}

/// Launches the reduction of `prog` with `layout` (choosing the form by length): a max
/// writes `outputs[0]`; a sum writes one output per program output, then, with `map` (an
/// element offset), every prologue value into the last array; with an epilogue `epi`, its
/// other operands are `epi_in` and its outputs `epi_out` (see [`fused_reduce_sum`]).
#[allow(clippy::too_many_arguments)]
pub fn launch_reduce<R: Runtime>(
    client: &ComputeClient<R>,
    op: plateau_compiler::ir::ReduceOp,
    inputs: Vec<ArrayArg<R>>,
    mut outputs: Vec<ArrayArg<R>>,
    map: Option<usize>,
    layout: ReduceLayout,
    prog: KernelProgram,
    (epi_in, epi_out, epi, store): (Vec<ArrayArg<R>>, Vec<ArrayArg<R>>, Option<KernelProgram>, bool),
) {
    use plateau_compiler::ir::ReduceOp;
    let units = if layout.cube { layout.outputs.max(1) * CUBE_REDUCE_UNITS } else { layout.outputs.max(1) };
    let dim = CubeDim::new_1d(if layout.cube { CUBE_REDUCE_UNITS as u32 } else { crate::host::BLOCK });
    let count = cubecl::calculate_cube_count_elemwise(client, units, dim);
    // SAFETY: as for every kernel of `KernelCall::launch`: positions guarded, extents from the
    // buffers' shapes.
    unsafe {
        match (op, layout.cube) {
            (ReduceOp::Sum, _) => {
                fused_reduce_sum::launch_unchecked::<R>(client, count, dim, 1, seq(inputs), seq(outputs), seq(epi_in), seq(epi_out), layout, prog, map, epi, store)
            }
            (ReduceOp::Max, false) => fused_reduce_max::launch_unchecked::<R>(client, count, dim, 1, seq(inputs), outputs.remove(0), layout, prog),
            (ReduceOp::Max, true) => fused_reduce_max_cube::launch_unchecked::<R>(client, count, dim, 1, seq(inputs), outputs.remove(0), layout, prog),
        }
    }
}

/// A launch without an epilogue, for [`launch_reduce`].
pub fn no_epilogue<R: Runtime>() -> (Vec<ArrayArg<R>>, Vec<ArrayArg<R>>, Option<KernelProgram>, bool) {
    (Vec::new(), Vec::new(), None, true)
}
