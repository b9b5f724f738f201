//! How a long sum runs. A reduction kernel gives each output one cube (256 units striding
//! over its terms, four loads in flight each, then a tree in shared memory) when its terms are
//! many, else one unit. A sum with very few outputs leaves a GPU nearly idle that way: the
//! squared norm of ResNet-18's 11.2M-parameter arena (SAM's ascent) would be one cube on one
//! SM walking 44.7 MB.
//!
//! So a sum with fewer than [`REDUCE_SPLIT_OUTPUTS`] outputs is cut, like a split GEMM, into
//! `split` slices of at least [`REDUCE_MIN_SLICE`] terms each, enough for about
//! [`REDUCE_TARGET_CUBES`] cubes (an H100 or H200 keeps about eight 256-unit cubes on each of
//! its 132 SMs). Slice `s` of output `o` writes its partial sum to
//! `workspace[s * outputs + o]` (placed by the memory plan, live only during the kernel), and
//! a second launch sums each output's slices in a fixed order (deterministic, no atomics).
//! Such a kernel counts as two launches. The rules are shared by the schedule (launches and
//! workspace memory) and the lowering.
//!
//! Unless the sum is a scalar (SAM's squared norm) whose first reader is an elementwise map
//! (SAM's perturbation `w + rho g / ||g||`): then that map adds up the slices itself
//! ([`slices_readers`]): each of its cubes first sums the slices in the order the second
//! launch would (so the result is the same, bit for bit, in every cube), one unit stores the
//! sum where the second launch would have, and the map reads it from a register. The
//! workspace lives until the map. One launch and its dependency fewer: SAM's step is then
//! exactly twice SGD's launches on every model (the ascent's norm and perturbation take
//! the launches of the descent SGD runs twice and SAM once, and of the loss value the
//! adversarial pass does not compute). The price is each cube of the map reading the slices
//! (at most [`REDUCE_TARGET_CUBES`] values, from cache) and a tree in shared memory.
//!
//! Two reductions in turn over one space and axes, the second reading the first's result
//! (a BatchNorm's mean and variance), run as one kernel when they are consecutive
//! ([`chains`]).

use super::{kernel_reads, Kernel};
use crate::ir::{Graph, NodeId, Op, OutputKind, ReduceOp};
use std::collections::BTreeMap;

/// Reductions at least this long run a cube per output (a strided walk, then a tree in shared
/// memory); shorter ones one unit per output.
pub const CUBE_REDUCE_MIN: usize = 1024;

/// A split sum aims for about this many cubes.
pub const REDUCE_TARGET_CUBES: usize = 1024;
/// Only sums with fewer outputs than this split (the squared norms of SAM's ascent, whose
/// one cube would run on one SM). With more, each output's cube keeps four loads in flight
/// per unit (see `plateau_kernels::reduce`), and the second launch and its dependency cost
/// more than they save: on lavapipe, splitting the CNN's bias gradients (32 and 64 outputs
/// over 100,352 and 25,088 terms) made its SAM step 2-3% slower against two SGD steps.
pub const REDUCE_SPLIT_OUTPUTS: usize = 8;
/// A split sum never makes a slice shorter than this many terms (16 per unit of a cube).
pub const REDUCE_MIN_SLICE: usize = 4096;

/// The number of slices of a sum with `outputs` outputs of `len` terms each (1: no split).
pub fn reduce_split(outputs: usize, len: usize) -> usize {
    if outputs == 0 || outputs >= REDUCE_SPLIT_OUTPUTS {
        return 1;
    }
    REDUCE_TARGET_CUBES.div_ceil(outputs).min(len / REDUCE_MIN_SLICE).max(1)
}

/// `(outputs, terms per output)` of the sum computing node `id`, if it is a sum.
pub fn reduce_dims(g: &Graph, id: NodeId) -> Option<(usize, usize)> {
    match &g.node(id).op {
        Op::FusedReduce { op: ReduceOp::Sum, axes, space, .. } => {
            let len: usize = axes.iter().map(|&a| space.shape.0[a]).product();
            Some((space.shape.numel() / len.max(1), len))
        }
        _ => None,
    }
}

/// The split of the sum computing `id` (1 for any other node).
pub fn split_of(g: &Graph, id: NodeId) -> usize {
    reduce_dims(g, id).map_or(1, |(outputs, len)| reduce_split(outputs, len))
}

/// Workspace elements (f32) the kernel computing `id` needs: `split * outputs` for a split
/// sum, else 0.
pub fn workspace_len(g: &Graph, id: NodeId) -> usize {
    match (split_of(g, id), reduce_dims(g, id)) {
        (split, Some((outputs, _))) if split > 1 => split * outputs,
        _ => 0,
    }
}

/// The node a chain of reshapes views.
pub fn view_base(g: &Graph, mut id: NodeId) -> NodeId {
    while let Op::Reshape { .. } = g.node(id).op {
        id = g.operands(id)[0];
    }
    id
}

/// Whether `id` is `target` or a view of it (a reshape, a contiguous slice, a concatenation
/// along the first axis: no kernel of their own, so reading them reads `target`'s place).
fn views(g: &Graph, id: NodeId, target: NodeId) -> bool {
    id == target || (!super::is_kernel(g, id) && !g.node(id).op.is_leaf() && g.operands(id).into_iter().any(|o| views(g, o, target)))
}

/// Split sums whose slices the first kernel reading the sum adds up, as (sum kernel, reader
/// kernel), in launch order: a split sum of one output whose first reader (through any view)
/// is a map (one elementwise program) reading it through exactly one operand, the sum itself
/// or a reshape of it (the map gives that operand the value it adds up; any other view of the
/// sum, a concatenation holding it, would read the place the map has yet to store it in).
pub fn slices_readers(g: &Graph, kernels: &[Kernel]) -> BTreeMap<usize, usize> {
    let mut folds: BTreeMap<usize, usize> = BTreeMap::new();
    for (k, kernel) in kernels.iter().enumerate() {
        let sum = kernel.nodes[0];
        let sums = kernel.nodes.iter().filter(|&&n| matches!(g.node(n).op, Op::FusedReduce { .. })).count();
        if kernel.split <= 1 || sums != 1 || !matches!(g.node(sum).op, Op::FusedReduce { op: ReduceOp::Sum, .. }) || reduce_dims(g, sum).map(|d| d.0) != Some(1) {
            continue;
        }
        let Some(m) = kernels[k + 1..].iter().find(|m| kernel_reads(g, &m.nodes).iter().any(|&o| views(g, o, sum))) else { continue };
        let map = m.nodes.iter().all(|&n| matches!(g.node(n).op, Op::Fused { .. }));
        let operands = g.operands(m.nodes[0]);
        let reading: Vec<NodeId> = operands.into_iter().filter(|&o| views(g, o, sum)).collect();
        if map && reading.len() == 1 && view_base(g, reading[0]) == sum && !folds.values().any(|&r| r == m.id) {
            folds.insert(k, m.id);
        }
    }
    folds
}

/// Kernels `a` (in launch order) whose reduction the next kernel's sums read, so that one
/// kernel runs both in turn (`Kernel::chain`; `plateau_kernels::reduce::fused_reduce_chain`):
/// kernel `a` is one unsplit reduction (a sum or a max) and its epilogues; kernel `a + 1` is
/// unsplit sums over the same space and axes (and their epilogues) whose programs read `a`'s
/// result through one operand, that result itself or a reshape of it, viewed as the result's
/// own shape (each output reads its own value). A BatchNorm's mean and then its variance; a
/// row's maximum and then its sums of exponentials. The second reduction reads its operands
/// again (the kernel moves no fewer bytes, but for the first's result); a launch and its wait
/// are saved. Pairs do not overlap.
pub fn chains(g: &Graph, kernels: &[Kernel]) -> Vec<usize> {
    let reduce = |n: NodeId| match &g.node(n).op {
        Op::FusedReduce { op, axes, space, .. } => Some((*op, axes.clone(), space.shape.clone())),
        _ => None,
    };
    let epilogue_of = |n: NodeId, of: &dyn Fn(NodeId) -> bool| matches!(g.node(n).op, Op::Epilogue { .. }) && of(g.operands(n)[0]);
    let mut out: Vec<usize> = Vec::new();
    for a in 0..kernels.len().saturating_sub(1) {
        if out.last().is_some_and(|&p| p + 1 == a) {
            continue;
        }
        let (ka, kb) = (&kernels[a], &kernels[a + 1]);
        let first = ka.nodes[0];
        let Some((_, axes, space)) = reduce(first) else { continue };
        if ka.split > 1 || kb.split > 1 || !ka.nodes[1..].iter().all(|&n| epilogue_of(n, &|o| o == first)) {
            continue;
        }
        let sums: Vec<NodeId> = kb.nodes.iter().copied().filter(|&n| reduce(n).is_some()).collect();
        let same = |n: NodeId| reduce(n) == Some((ReduceOp::Sum, axes.clone(), space.clone()));
        if sums.is_empty() || reduce(kb.nodes[0]).is_none() || !sums.iter().all(|&n| same(n)) || !kb.nodes.iter().all(|&n| sums.contains(&n) || epilogue_of(n, &|o| sums.contains(&o))) {
            continue;
        }
        // Every read of the first's result by the sums' programs: one node, the result or a
        // reshape of it, viewed whole.
        let mut reading: Vec<NodeId> = Vec::new();
        let mut whole = true;
        for &n in &sums {
            let Op::FusedReduce { program, .. } = &g.node(n).op else { unreachable!("sums are reductions") };
            for (i, o) in g.operands(n).into_iter().enumerate() {
                if views(g, o, first) {
                    whole &= view_base(g, o) == first && program.views[i] == *g.shape(first);
                    if !reading.contains(&o) {
                        reading.push(o);
                    }
                }
            }
        }
        if !whole || reading.len() != 1 {
            continue;
        }
        // Nothing else passes between the two: the second reads no output of the first's
        // epilogues (one unit writes those, with no barrier before the second runs), and
        // neither reads a state the other's epilogues update in place.
        let (reads_a, reads_b) = (reads_through(g, &ka.nodes), reads_through(g, &kb.nodes));
        let updated = |nodes: &[NodeId]| -> Vec<NodeId> {
            g.outputs().iter().filter_map(|o| match o.kind {
                OutputKind::StateUpdate { state } if nodes.contains(&o.node) => Some(state),
                _ => None,
            }).collect()
        };
        let clash = ka.nodes[1..].iter().any(|e| reads_b.contains(e))
            || updated(&ka.nodes).iter().any(|s| reads_b.contains(s))
            || updated(&kb.nodes).iter().any(|s| reads_a.contains(s));
        // The kernel binds both parts' buffers (operands they share, twice; not the first's
        // result, which the second is given).
        let bindings = kernel_reads(g, &ka.nodes).len() + ka.nodes.len() + kernel_reads(g, &kb.nodes).len() - 1 + kb.nodes.len();
        if !clash && bindings <= crate::egraph::MAX_PROGRAM_OPERANDS {
            out.push(a);
        }
    }
    out
}

/// Everything the kernel computing `nodes` reads, and what the views among it view, down to
/// the kernels and leaves that hold them.
fn reads_through(g: &Graph, nodes: &[NodeId]) -> Vec<NodeId> {
    super::plan::through_views(g, kernel_reads(g, nodes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{BinaryOp, DType, Instr, OutputKind, Program, Shape, TensorType};
    use crate::step::Phase;

    fn kernel(id: usize, g: &Graph, nodes: Vec<NodeId>) -> Kernel {
        let split = crate::schedule::split_of(g, nodes[0]);
        Kernel { id, name: String::new(), phase: Phase::Ascent, body: vec![], inputs: vec![], outputs: vec![], bytes: 0, split, workspace: None, summed_by: None, sums_slices_of: None, chain: None, nodes }
    }

    /// A map over `[n]` of `x` and a scalar `s` (read through `view`): `x * s`.
    fn scale(g: &mut Graph, x: NodeId, s: NodeId, n: usize) -> NodeId {
        let view = g.shape(s).clone();
        let program = Program { views: vec![Shape(vec![n]), view], instrs: vec![Instr::Load(0), Instr::Load(1), Instr::Binary(BinaryOp::Mul, 0, 1)], outputs: vec![2] };
        g.add(Op::Fused { program, output: 0, group: 0, ty: TensorType { dtype: DType::F32, shape: Shape(vec![n]) } }, &[x, s]).unwrap()
    }

    /// A BatchNorm's statistics: the mean (with its running average as an epilogue, a state
    /// update) and the variance reading it chain; not when the variance's kernel reads the
    /// mean's epilogue output, nor a state the mean's epilogue updates, nor over other axes,
    /// nor when the second is not next.
    #[test]
    fn consecutive_reductions_reading_the_first_chain() {
        let (n, c) = (8, 4);
        let space = Shape(vec![n, c, 2, 2]);
        let stat = Shape(vec![1, c, 1, 1]);
        let ty = |shape: &Shape| TensorType { dtype: DType::F32, shape: shape.clone() };
        let build = |variant: u8| {
            let mut g = Graph::new();
            let x = g.leaf(Op::Input { name: "x".into() }, DType::F32, space.clone()).unwrap();
            let running = g.leaf(Op::State { name: "running".into() }, DType::F32, stat.clone()).unwrap();
            let mean = g.add(Op::FusedReduce { program: Program::identity(space.clone()), op: ReduceOp::Sum, axes: vec![0, 2, 3], space: ty(&space), group: 0 }, &[x]).unwrap();
            let avg = Program { views: vec![g.shape(mean).clone(), g.shape(mean).clone()], instrs: vec![Instr::Load(0), Instr::Load(1), Instr::Binary(BinaryOp::Add, 0, 1)], outputs: vec![2] };
            let epi = g.add(Op::Epilogue { program: avg, ty: ty(g.shape(mean)) }, &[mean, running]).unwrap();
            g.add_output("running", epi, OutputKind::StateUpdate { state: running }).unwrap();
            // The variance's prologue: (x - mean)^2, and x * epi (variant 1) or x * running (2).
            let mut views = vec![space.clone(), g.shape(mean).clone()];
            let mut operands = vec![x, mean];
            let mut instrs = vec![Instr::Load(0), Instr::Load(1), Instr::Binary(BinaryOp::Sub, 0, 1), Instr::Binary(BinaryOp::Mul, 2, 2)];
            if variant == 1 || variant == 2 {
                views.push(stat.clone());
                operands.push(if variant == 1 { epi } else { running });
                instrs.extend([Instr::Load(2), Instr::Binary(BinaryOp::Mul, 3, 4)]);
            }
            let out = instrs.len() as u32 - 1;
            // Variant 3 sums over every axis: not the mean's.
            let axes = if variant == 3 { vec![0, 1, 2, 3] } else { vec![0, 2, 3] };
            let var = g.add(Op::FusedReduce { program: Program { views, instrs, outputs: vec![out] }, op: ReduceOp::Sum, axes, space: ty(&space), group: 0 }, &operands).unwrap();
            (g, mean, epi, var)
        };
        for (variant, chained) in [(0, true), (1, false), (2, false), (3, false)] {
            let (g, mean, epi, var) = build(variant);
            let kernels = vec![kernel(0, &g, vec![mean, epi]), kernel(1, &g, vec![var])];
            assert_eq!(chains(&g, &kernels), if chained { vec![0] } else { vec![] }, "variant {variant}");
        }
        // Not consecutive: something runs between them.
        let (g, mean, epi, var) = build(0);
        let kernels = vec![kernel(0, &g, vec![mean, epi]), kernel(1, &g, vec![epi]), kernel(2, &g, vec![var])];
        assert!(chains(&g, &kernels).is_empty());
    }

    /// The first reader of a split sum of one output adds up its slices when it is a map
    /// reading the sum (or a reshape of it) through one operand; not when a kernel reading a
    /// view holding the sum (a concatenation) comes first, nor when the map reads it twice.
    #[test]
    fn the_first_map_reading_a_split_scalar_sum_adds_up_its_slices() {
        let n = 20_000;
        let mut g = Graph::new();
        let x = g.leaf(Op::Input { name: "x".into() }, DType::F32, vec![n]).unwrap();
        let y = g.leaf(Op::Input { name: "y".into() }, DType::F32, vec![3]).unwrap();
        let sq = Program { views: vec![Shape(vec![n])], instrs: vec![Instr::Load(0), Instr::Binary(BinaryOp::Mul, 0, 0)], outputs: vec![1] };
        let sum = g.add(Op::FusedReduce { program: sq, op: ReduceOp::Sum, axes: vec![0], space: TensorType { dtype: DType::F32, shape: Shape(vec![n]) }, group: 0 }, &[x]).unwrap();
        let flat = g.add(Op::Reshape { shape: Shape(vec![]) }, &[sum]).unwrap();
        let both = g.add(Op::Concat { axis: 0, count: 2 }, &[sum, y]).unwrap();
        let direct = scale(&mut g, x, sum, n);
        let reshaped = scale(&mut g, x, flat, n);
        let square = Program { views: vec![Shape(vec![4])], instrs: vec![Instr::Load(0), Instr::Binary(BinaryOp::Mul, 0, 0)], outputs: vec![1] };
        let via_concat = g.add(Op::Fused { program: square, output: 0, group: 0, ty: TensorType { dtype: DType::F32, shape: Shape(vec![4]) } }, &[both]).unwrap();
        let program = Program { views: vec![Shape(vec![n]), Shape(vec![1]), Shape(vec![])], instrs: vec![Instr::Load(0), Instr::Load(1), Instr::Load(2), Instr::Binary(BinaryOp::Mul, 0, 1), Instr::Binary(BinaryOp::Mul, 3, 2)], outputs: vec![4] };
        let twice = g.add(Op::Fused { program, output: 0, group: 0, ty: TensorType { dtype: DType::F32, shape: Shape(vec![n]) } }, &[x, sum, flat]).unwrap();
        let s = kernel(0, &g, vec![sum]);
        assert_eq!(s.split, 4);
        for (reader, fold) in [(direct, true), (reshaped, true), (via_concat, false), (twice, false)] {
            let kernels = vec![s.clone(), kernel(1, &g, vec![reader]), kernel(2, &g, vec![direct])];
            let want: BTreeMap<usize, usize> = if fold { [(0, 1)].into() } else { BTreeMap::new() };
            assert_eq!(slices_readers(&g, &kernels), want, "reader {reader}");
        }
        // Unsplit, or more than one output: no slices to add up.
        let short = g.add(Op::FusedReduce { program: Program::identity(Shape(vec![3])), op: ReduceOp::Sum, axes: vec![0], space: TensorType { dtype: DType::F32, shape: Shape(vec![3]) }, group: 0 }, &[y]).unwrap();
        let read_short = scale(&mut g, x, short, n);
        assert!(slices_readers(&g, &[kernel(0, &g, vec![short]), kernel(1, &g, vec![read_short])]).is_empty());
    }

    #[test]
    fn long_sums_with_few_outputs_split() {
        // SAM's squared norm of ResNet-18's arena: one output, 11,173,962 terms.
        assert_eq!(reduce_split(1, 11_173_962), 1024);
        // The MLP's arena (269,322 terms): slices of at least 4,096 cap it at 65.
        assert_eq!(reduce_split(1, 269_322), 65);
        // Too short to split, or enough outputs: a mean loss over 1,280 terms, the CNN's
        // first bias gradient (32 outputs over 100,352 terms), a BatchNorm statistic of
        // ResNet-18's first stage (64 channels over 131,072 terms), a bias gradient of the
        // MLP (256 outputs over a batch of 128).
        assert_eq!(reduce_split(1, 1_280), 1);
        assert_eq!(reduce_split(7, 1 << 20), 147);
        assert_eq!(reduce_split(8, 1 << 20), 1);
        assert_eq!(reduce_split(32, 100_352), 1);
        assert_eq!(reduce_split(64, 131_072), 1);
        assert_eq!(reduce_split(256, 128), 1);
    }
}
