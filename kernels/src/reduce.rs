//! Reductions with a fused prologue: each output element is computed by one unit, which
//! walks the reduced axes, evaluates the prologue program at each position and accumulates,
//! or by a cube (long reductions), whose units stride over the terms and meet in a tree.
//! Sums keep four partial sums per unit, so that four terms' loads are in flight at once
//! rather than each waiting for the previous addition. A split sum (few outputs, see
//! `plateau_compiler::schedule::reduce`) runs its slices as cubes into a workspace, then sums
//! them. The kernels are written over `N`-wide vectors and launched with `N = 1`.

use crate::elementwise::run_program;
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

/// The prologue's value at reduced index `r` of output `o`.
#[cube]
fn prologue_at<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, base: usize, r: usize, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram) -> Vector<f32, N> {
    prologue_value::<N>(inputs, base + position(r, comptime!(layout.reduced.clone())), prog)
}

/// The prologue's value at position `pos` of the space.
#[cube]
fn prologue_value<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, pos: usize, #[comptime] prog: KernelProgram) -> Vector<f32, N> {
    let splats = Sequence::<Array<f32>>::new();
    let regs = run_program::<N>(inputs, &splats, pos, prog.clone());
    *regs.index(comptime!(prog.outputs[0]))
}

/// [`prologue_at`], also storing the value at its position of the space in `map_out` (at
/// element offset `map`) when the kernel writes the prologue as a map too.
#[cube]
fn prologue_store<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    map_out: &mut Array<Vector<f32, N>>,
    base: usize,
    r: usize,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] map: Option<usize>,
) -> Vector<f32, N> {
    let pos = base + position(r, comptime!(layout.reduced.clone()));
    let v = prologue_value::<N>(inputs, pos, prog);
    if comptime!(map.is_some()) {
        map_out[comptime!(map.unwrap_or(0)) + pos] = v;
    }
    v
}

/// The sum of the prologue over reduced indices `start, start + step, ...` below `end`, as
/// four interleaved partial sums (four independent loads per iteration), added in a fixed
/// order at the end; each value is also stored in `map_out` when `map` is set.
#[cube]
#[allow(clippy::too_many_arguments)]
fn strided_sum<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    map_out: &mut Array<Vector<f32, N>>,
    base: usize,
    start: usize,
    end: usize,
    #[comptime] step: usize,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] map: Option<usize>,
) -> Vector<f32, N> {
    let mut a0 = Vector::<f32, N>::new(0.0);
    let mut a1 = Vector::<f32, N>::new(0.0);
    let mut a2 = Vector::<f32, N>::new(0.0);
    let mut a3 = Vector::<f32, N>::new(0.0);
    let mut r = start;
    while r + comptime!(3 * step) < end {
        a0 += prologue_store::<N>(inputs, map_out, base, r, layout.clone(), prog.clone(), map);
        a1 += prologue_store::<N>(inputs, map_out, base, r + comptime!(step), layout.clone(), prog.clone(), map);
        a2 += prologue_store::<N>(inputs, map_out, base, r + comptime!(2 * step), layout.clone(), prog.clone(), map);
        a3 += prologue_store::<N>(inputs, map_out, base, r + comptime!(3 * step), layout.clone(), prog.clone(), map);
        r += comptime!(4 * step);
    }
    while r < end {
        a0 += prologue_store::<N>(inputs, map_out, base, r, layout.clone(), prog.clone(), map);
        r += comptime!(step);
    }
    (a0 + a1) + (a2 + a3)
}

/// The sum of unit `o`'s output (`o` past the last output: nothing).
#[cube]
fn unit_sum<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, map_out: &mut Array<Vector<f32, N>>, o: usize, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram, #[comptime] map: Option<usize>) -> Vector<f32, N> {
    let base = position(o, comptime!(layout.kept.clone()));
    let mut end = 0usize;
    if o < comptime!(layout.outputs) {
        end = comptime!(layout.reduce_len);
    }
    strided_sum::<N>(inputs, map_out, base, 0usize, end, comptime!(1usize), layout.clone(), prog.clone(), map)
}

/// `output[o] = sum_r prologue(space position of (o, r))`.
#[cube(launch)]
pub fn fused_reduce_sum<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, output: &mut Array<Vector<f32, N>>, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram) {
    let o = ABSOLUTE_POS;
    let acc = unit_sum::<N>(inputs, output, o, layout.clone(), prog.clone(), comptime!(None));
    if o < comptime!(layout.outputs) {
        output[comptime!(prog.output_offsets[0]) + o] = acc;
    }
}

/// [`fused_reduce_sum`], also writing every prologue value to `map_out` at element offset
/// `map` (the kernel of a reduction and the map of the same program).
#[cube(launch)]
pub fn fused_reduce_sum_map<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    output: &mut Array<Vector<f32, N>>,
    map_out: &mut Array<Vector<f32, N>>,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] map: usize,
) {
    let o = ABSOLUTE_POS;
    let acc = unit_sum::<N>(inputs, map_out, o, layout.clone(), prog.clone(), comptime!(Some(map)));
    if o < comptime!(layout.outputs) {
        output[comptime!(prog.output_offsets[0]) + o] = acc;
    }
}

/// `output[o] = max_r prologue(space position of (o, r))`.
#[cube(launch)]
pub fn fused_reduce_max<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, output: &mut Array<Vector<f32, N>>, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram) {
    let o = ABSOLUTE_POS;
    if o < comptime!(layout.outputs) {
        let base = position(o, comptime!(layout.kept.clone()));
        let mut acc = prologue_at::<N>(inputs, base, 0, layout.clone(), prog.clone());
        for r in 1..comptime!(layout.reduce_len) {
            acc = max(acc, prologue_at::<N>(inputs, base, r, layout.clone(), prog.clone()));
        }
        output[comptime!(prog.output_offsets[0]) + o] = acc;
    }
}

pub use plateau_compiler::schedule::reduce::CUBE_REDUCE_MIN;

/// Units per cube in the cube-per-output reduction (a power of two).
pub const CUBE_REDUCE_UNITS: usize = 256;

#[cube]
fn tree_sum<N: Size>(mut smem: SharedMemory<Vector<f32, N>>, tid: usize) -> Vector<f32, N> {
    sync_cube();
    #[unroll]
    for k in 0..comptime!(CUBE_REDUCE_UNITS.trailing_zeros() as usize) {
        let s = comptime!(CUBE_REDUCE_UNITS >> (k + 1));
        if tid < s {
            smem[tid] = smem[tid] + smem[tid + s];
        }
        sync_cube();
    }
    smem[0]
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

/// The sum of cube `o`'s output (a cube past the last output finds no terms).
#[cube]
fn cube_sum<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, map_out: &mut Array<Vector<f32, N>>, o: usize, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram, #[comptime] map: Option<usize>) -> Vector<f32, N> {
    let tid = UNIT_POS as usize;
    let mut smem = SharedMemory::<Vector<f32, N>>::new(CUBE_REDUCE_UNITS);
    let base = position(o, comptime!(layout.kept.clone()));
    let mut end = 0usize;
    if o < comptime!(layout.outputs) {
        end = comptime!(layout.reduce_len);
    }
    smem[tid] = strided_sum::<N>(inputs, map_out, base, tid, end, comptime!(CUBE_REDUCE_UNITS), layout.clone(), prog.clone(), map);
    tree_sum::<N>(smem, tid)
}

/// `output[o] = sum_r prologue(..)` with cube `o` computing output `o`.
#[cube(launch)]
pub fn fused_reduce_sum_cube<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, output: &mut Array<Vector<f32, N>>, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram) {
    let o = CUBE_POS;
    let total = cube_sum::<N>(inputs, output, o, layout.clone(), prog.clone(), comptime!(None));
    if UNIT_POS == 0 && o < comptime!(layout.outputs) {
        output[comptime!(prog.output_offsets[0]) + o] = total;
    }
}

/// [`fused_reduce_sum_cube`], also writing every prologue value to `map_out` at offset `map`.
#[cube(launch)]
pub fn fused_reduce_sum_cube_map<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    output: &mut Array<Vector<f32, N>>,
    map_out: &mut Array<Vector<f32, N>>,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] map: usize,
) {
    let o = CUBE_POS;
    let total = cube_sum::<N>(inputs, map_out, o, layout.clone(), prog.clone(), comptime!(Some(map)));
    if UNIT_POS == 0 && o < comptime!(layout.outputs) {
        output[comptime!(prog.output_offsets[0]) + o] = total;
    }
}

/// `output[o] = max_r prologue(..)` with cube `o` computing output `o`.
#[cube(launch)]
pub fn fused_reduce_max_cube<N: Size>(inputs: &Sequence<Array<Vector<f32, N>>>, output: &mut Array<Vector<f32, N>>, #[comptime] layout: ReduceLayout, #[comptime] prog: KernelProgram) {
    let o = CUBE_POS;
    let tid = UNIT_POS as usize;
    let mut smem = SharedMemory::<Vector<f32, N>>::new(CUBE_REDUCE_UNITS);
    let base = position(o, comptime!(layout.kept.clone()));
    // Every unit starts from a real element (reduce_len >= CUBE_REDUCE_UNITS here).
    let mut acc = prologue_at::<N>(inputs, base, tid, layout.clone(), prog.clone());
    let mut r = tid + comptime!(CUBE_REDUCE_UNITS);
    while r < comptime!(layout.reduce_len) {
        acc = max(acc, prologue_at::<N>(inputs, base, r, layout.clone(), prog.clone()));
        r += comptime!(CUBE_REDUCE_UNITS);
    }
    smem[tid] = acc;
    let total = tree_max::<N>(smem, tid);
    if tid == 0 && o < comptime!(layout.outputs) {
        output[comptime!(prog.output_offsets[0]) + o] = total;
    }
}

/// Slice `s` of output `o` of a split sum (see `plateau_compiler::schedule::reduce`): cube
/// `s * outputs + o` sums the slice's terms into `workspace[workspace_offset + s * outputs + o]`.
#[cube(launch)]
pub fn fused_reduce_sum_slices<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    workspace: &mut Array<Vector<f32, N>>,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] split: usize,
    #[comptime] workspace_offset: usize,
) {
    let total = slice_sum::<N>(inputs, workspace, layout.clone(), prog.clone(), split, comptime!(None));
    if UNIT_POS == 0 && CUBE_POS / comptime!(layout.outputs) < comptime!(split) {
        workspace[comptime!(workspace_offset) + CUBE_POS] = total;
    }
}

/// [`fused_reduce_sum_slices`], also writing every prologue value to `map_out` at offset `map`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn fused_reduce_sum_slices_map<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    workspace: &mut Array<Vector<f32, N>>,
    map_out: &mut Array<Vector<f32, N>>,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] split: usize,
    #[comptime] workspace_offset: usize,
    #[comptime] map: usize,
) {
    let total = slice_sum::<N>(inputs, map_out, layout.clone(), prog.clone(), split, comptime!(Some(map)));
    if UNIT_POS == 0 && CUBE_POS / comptime!(layout.outputs) < comptime!(split) {
        workspace[comptime!(workspace_offset) + CUBE_POS] = total;
    }
}

/// The sum of one slice of a split sum: cube `s * outputs + o` takes slice `s` of output `o`.
#[cube]
fn slice_sum<N: Size>(
    inputs: &Sequence<Array<Vector<f32, N>>>,
    map_out: &mut Array<Vector<f32, N>>,
    #[comptime] layout: ReduceLayout,
    #[comptime] prog: KernelProgram,
    #[comptime] split: usize,
    #[comptime] map: Option<usize>,
) -> Vector<f32, N> {
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
    smem[tid] = strided_sum::<N>(inputs, map_out, base, s * slice + tid, end, comptime!(CUBE_REDUCE_UNITS), layout.clone(), prog.clone(), map);
    tree_sum::<N>(smem, tid)
}

/// The second launch of a split sum: each output's slices, summed from the workspace (read
/// as `[split, outputs]`) into the output at `output_offset` by a cube per output, in a fixed
/// order (a strided walk, then the tree), so that no unit waits on a chain of loads.
pub fn slices_sum(outputs: usize, split: usize, workspace_offset: usize, output_offset: usize) -> (ReduceLayout, KernelProgram) {
    let space = Shape(vec![split, outputs]);
    let identity = plateau_compiler::ir::Program { views: vec![space.clone()], instrs: vec![plateau_compiler::ir::Instr::Load(0)], outputs: vec![0] };
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

/// Launches the reduction of `prog` with `layout` (choosing the form by length).
pub fn launch_reduce<R: Runtime>(
    client: &ComputeClient<R>,
    op: plateau_compiler::ir::ReduceOp,
    inputs: Vec<ArrayArg<R>>,
    output: ArrayArg<R>,
    layout: ReduceLayout,
    prog: KernelProgram,
) {
    launch_reduce_map::<R>(client, op, inputs, output, None, layout, prog)
}

/// [`launch_reduce`]; with `map` (an array and the element offset in it), a sum also writes
/// every prologue value there.
pub fn launch_reduce_map<R: Runtime>(
    client: &ComputeClient<R>,
    op: plateau_compiler::ir::ReduceOp,
    inputs: Vec<ArrayArg<R>>,
    output: ArrayArg<R>,
    map: Option<(ArrayArg<R>, usize)>,
    layout: ReduceLayout,
    prog: KernelProgram,
) {
    use plateau_compiler::ir::ReduceOp;
    let outputs = layout.outputs.max(1);
    if layout.cube {
        let dim = CubeDim::new_1d(CUBE_REDUCE_UNITS as u32);
        let count = cubecl::calculate_cube_count_elemwise(client, outputs * CUBE_REDUCE_UNITS, dim);
        match (op, map) {
            (ReduceOp::Sum, None) => fused_reduce_sum_cube::launch::<R>(client, count, dim, 1, seq(inputs), output, layout, prog),
            (ReduceOp::Sum, Some((m, at))) => fused_reduce_sum_cube_map::launch::<R>(client, count, dim, 1, seq(inputs), output, m, layout, prog, at),
            (ReduceOp::Max, _) => fused_reduce_max_cube::launch::<R>(client, count, dim, 1, seq(inputs), output, layout, prog),
        }
    } else {
        let dim = CubeDim::new_1d(crate::host::BLOCK);
        let count = cubecl::calculate_cube_count_elemwise(client, outputs, dim);
        match (op, map) {
            (ReduceOp::Sum, None) => fused_reduce_sum::launch::<R>(client, count, dim, 1, seq(inputs), output, layout, prog),
            (ReduceOp::Sum, Some((m, at))) => fused_reduce_sum_map::launch::<R>(client, count, dim, 1, seq(inputs), output, m, layout, prog, at),
            (ReduceOp::Max, _) => fused_reduce_max::launch::<R>(client, count, dim, 1, seq(inputs), output, layout, prog),
        }
    }
}
