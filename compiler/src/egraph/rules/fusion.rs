//! Fusion rules: elementwise work merges into fused programs, into reduction prologues, and
//! same-shaped outputs into one multi-output kernel; after saturation, a sum with the map it
//! sums, an op (a GEMM, a max-pool gradient, a sum) with a map over its output (its
//! epilogue), and, after a first extraction, sums over one space that read the same tensors,
//! into one kernel. Every new node is an alternative; the extractor decides which to keep.

use super::{Change, Rule};
use crate::egraph::lang::{ty, EOp, ENode, EG};
use crate::ir::{Op, Program, Shape, TensorType};
use egg::Id;
use std::collections::{BTreeMap, HashSet};

/// Longest fused program (instructions) a rule may build: past this a kernel's registers
/// spill and its compile time grows, while launches saved are already few. The longest that
/// real steps keep are BatchNorm's input gradients with their mean's gradient inlined (87
/// instructions on ResNet-18; under a limit of 96 one of them is not found, as inlining goes
/// through longer alternatives); for sm_90a ptxas gives them at most 40 registers and no
/// spills.
pub const MAX_PROGRAM_INSTRS: usize = 128;

/// Most buffers (operands plus outputs) a fused program may bind: every one is a storage
/// binding of its kernel, and Vulkan devices guarantee few (lavapipe allows 32 per stage,
/// one of which cubecl keeps for its metadata).
pub const MAX_PROGRAM_OPERANDS: usize = 28;

/// Whether a program of this size may be built.
fn fits(p: &Program, operands: usize) -> bool {
    p.instrs.len() <= MAX_PROGRAM_INSTRS && operands + p.outputs.len() <= MAX_PROGRAM_OPERANDS
}

pub(super) fn rules() -> Vec<Rule> {
    vec![
        // map(f, map(g, x)) -> map(f . g, x): the producer runs inside the consumer.
        Rule { name: "map-into-map", algebra: "f(g(x)) in one kernel", find: map_into_map },
        // reduce(map(g, x)) -> reduce_with_prologue(g, x): the reduction reads x directly.
        Rule { name: "map-into-reduce", algebra: "sum(g(x)) in one kernel", find: map_into_reduce },
        // map(f, broadcast(x)) -> map(f, x read with broadcasting): no materialized broadcast.
        Rule { name: "broadcast-into-load", algebra: "f(broadcast(x)) reads x", find: broadcast_into_load },
        // map(f, reshape(x)) -> map(f, x read through the reshape): reshapes are free.
        Rule { name: "reshape-into-load", algebra: "f(reshape(x)) reads x", find: reshape_into_load },
        // map(f, const c) -> map(f with c inlined): constants are immediates, not buffers.
        Rule { name: "const-into-program", algebra: "f(c) computes c in-kernel", find: const_into_program },
        // one_hot(y) -> map(y[i] == c): the labels' one-hot is a comparison with the class
        // coordinate, which the loss's kernels compute where they read it.
        Rule { name: "one-hot-as-map", algebra: "one_hot(y)[i, c] = (y[i] == c)", find: one_hot_as_map },
        // sum(g(x)) * c -> sum(g(x) * c) for c a power of two: a scalar mean needs no kernel
        // after its reduction (exact: scaling by 2^k rounds nothing, barring subnormals).
        Rule { name: "scale-into-reduce", algebra: "sum(x) * 2^k -> sum(x * 2^k)", find: scale_into_reduce },
    ]
}

fn one_hot_as_map(eg: &EG) -> Vec<(Id, Change)> {
    use crate::ir::{CmpOp, Instr};
    let mut out = Vec::new();
    for class in eg.classes() {
        let Some(t) = ty(eg, class.id) else { continue };
        for node in &class.nodes {
            let EOp::Ir(Op::OneHot { .. }) = eg.analysis.op(node.op) else { continue };
            // Labels `[n]` read as `[n, 1]`, compared with the coordinate along the classes.
            let program = Program { views: vec![Shape(vec![t.shape.0[0], 1])], instrs: vec![Instr::Load(0), Instr::Coord(1), Instr::Compare(CmpOp::Eq, 0, 1)], outputs: vec![2] };
            out.push((class.id, Change::Add(EOp::Ir(Op::Fused { program, output: 0, group: 0, ty: t.clone() }), node.children.clone())));
        }
    }
    out
}

/// Whether multiplying by `c` is exact in binary floating point: `c = ±2^k`, normal.
fn is_power_of_two(c: f64) -> bool {
    c.is_normal() && c.to_bits() & ((1u64 << 52) - 1) == 0 && (c as f32).is_normal()
}

/// `mul($0, c)` (or `mul(c, $0)`) reading its one operand whole: `c`, if the program is that.
fn scale_of(p: &Program) -> Option<f64> {
    use crate::ir::{BinaryOp, Instr};
    if p.views.len() != 1 || p.instrs.len() != 3 || p.outputs.len() != 1 {
        return None;
    }
    let Instr::Binary(BinaryOp::Mul, a, b) = p.instrs[p.outputs[0] as usize] else { return None };
    match (p.instrs[a as usize], p.instrs[b as usize]) {
        (Instr::Load(0), Instr::Const(bits)) | (Instr::Const(bits), Instr::Load(0)) => Some(f64::from_bits(bits)),
        _ => None,
    }
}

fn scale_into_reduce(eg: &EG) -> Vec<(Id, Change)> {
    let mut out = Vec::new();
    for class in eg.classes() {
        let Some(t) = ty(eg, class.id) else { continue };
        for node in &class.nodes {
            let Some((p, Kernel::Map { .. })) = program_node(eg, node) else { continue };
            let Some(c) = scale_of(&p).filter(|&c| is_power_of_two(c)) else { continue };
            let sum = node.children[0];
            // Only for a scalar, such as a mean loss or metric that is a step output: a larger
            // scaled sum (a BatchNorm mean) has consumers the scale fuses into at no launch, and
            // where the sum also stays (its other readers) the scaled copy would be a second
            // reduction, which the extractor, greedy per class, does not always see.
            if t.shape.numel() != 1 || p.views[0] != t.shape || ty(eg, sum).map(|s| s.shape.numel()) != Some(1) {
                continue;
            }
            for inner in &eg[sum].nodes {
                let EOp::Ir(Op::FusedReduce { program, op: crate::ir::ReduceOp::Sum, axes, space, .. }) = eg.analysis.op(inner.op) else { continue };
                let mut q = program.clone();
                let at = q.instrs.len() as u32;
                q.instrs.push(crate::ir::Instr::Const(c.to_bits()));
                q.instrs.push(crate::ir::Instr::Binary(crate::ir::BinaryOp::Mul, q.outputs[0], at));
                q.outputs = vec![at + 1];
                let kernel = Kernel::Reduce { op: crate::ir::ReduceOp::Sum, axes: axes.clone(), space: space.clone() };
                let Some((op, ops)) = finish(&kernel, &q, &inner.children) else { continue };
                // The reduction keeps its axes (a [1,1] sum); a scalar mean is that reshaped.
                if ty(eg, sum) == Some(t) {
                    out.push((class.id, Change::Add(op, ops)));
                } else {
                    out.push((class.id, Change::AddReshaped(op, ops, t.shape.clone())));
                }
            }
        }
    }
    out
}

/// A program-carrying node: a fused map or a reduction with its prologue.
#[derive(Clone)]
enum Kernel {
    Map { ty: TensorType },
    Reduce { op: crate::ir::ReduceOp, axes: Vec<usize>, space: TensorType },
}

fn program_node(eg: &EG, node: &ENode) -> Option<(Program, Kernel)> {
    match eg.analysis.op(node.op) {
        EOp::Ir(Op::Fused { program, ty, .. }) if program.outputs.len() == 1 => Some((program.clone(), Kernel::Map { ty: ty.clone() })),
        EOp::Ir(Op::FusedReduce { program, op, axes, space, .. }) => {
            Some((program.clone(), Kernel::Reduce { op: *op, axes: axes.clone(), space: space.clone() }))
        }
        _ => None,
    }
}

impl Kernel {
    /// The iteration space: a map's output, a reduction's input.
    fn space(&self) -> &TensorType {
        match self {
            Kernel::Map { ty } => ty,
            Kernel::Reduce { space, .. } => space,
        }
    }
}

fn rebuild(kernel: &Kernel, program: Program) -> EOp {
    match kernel {
        Kernel::Map { ty } => EOp::Ir(Op::Fused { program, output: 0, group: 0, ty: ty.clone() }),
        Kernel::Reduce { op, axes, space } => EOp::Ir(Op::FusedReduce { program, op: *op, axes: axes.clone(), space: space.clone(), group: 0 }),
    }
}

/// Views of a producer's operands in its consumer's space: the consumer reads the produced
/// class (shape `k`) through `view`; the producer reads operand `j` through `inner[j]`.
fn compose_views(view: &Shape, k: &Shape, inner: &[Shape]) -> Option<Vec<Shape>> {
    if view == k {
        // Broadcasting composes: right-aligned into k, k right-aligned into the space.
        return Some(inner.to_vec());
    }
    // A reshaped read composes only with operands the producer reads whole.
    inner.iter().map(|w| (w.numel() == k.numel() && w == k).then(|| view.clone())).collect()
}

fn finish(kernel: &Kernel, program: &Program, operands: &[Id]) -> Option<(EOp, Vec<Id>)> {
    let (p, ops) = program.canonical(operands);
    fits(&p, ops.len()).then(|| (rebuild(kernel, p), ops))
}

/// Per-pass facts about the e-graph that the fusion rules consult for every consumer.
struct Index {
    /// Classes a leaf or view computes (reading them needs no kernel of their own).
    free: HashSet<Id>,
    /// Classes a leaf computes, or a view of such classes only: a view of a kernel's output
    /// (a reshape of it, say) still needs that kernel.
    leaf_rooted: HashSet<Id>,
}

impl Index {
    fn new(eg: &EG) -> Self {
        let free = eg.classes().filter(|c| c.nodes.iter().any(|n| crate::egraph::cost::is_view(eg, n))).map(|c| c.id).collect();
        let mut leaf_rooted: HashSet<Id> = HashSet::new();
        loop {
            let before = leaf_rooted.len();
            for c in eg.classes() {
                if !leaf_rooted.contains(&c.id)
                    && c.nodes.iter().any(|n| {
                        crate::egraph::cost::is_view(eg, n) && n.children.iter().all(|&ch| leaf_rooted.contains(&eg.find(ch)))
                    })
                {
                    leaf_rooted.insert(c.id);
                }
            }
            if leaf_rooted.len() == before {
                break;
            }
        }
        Index { free, leaf_rooted }
    }

    /// Operands of `n` that need a kernel of their own.
    fn reads_kernels(&self, eg: &EG, n: &ENode) -> usize {
        n.children.iter().filter(|&&c| !self.free.contains(&eg.find(c))).count()
    }

    /// Operands of `n` that are views of a kernel's output: a producer read through them
    /// cannot be inlined until a rule reads it directly.
    fn reads_through_views(&self, eg: &EG, n: &ENode) -> usize {
        n.children
            .iter()
            .filter(|&&c| {
                let c = eg.find(c);
                self.free.contains(&c) && !self.leaf_rooted.contains(&c) && eg[c].nodes.iter().all(|m| program_node(eg, m).is_none())
            })
            .count()
    }

    /// The most fused program node of a class (maps, or reductions when `reduce`): the one
    /// that absorbed the most work (the longest program), then the one reading the fewest
    /// classes that need their own kernel, counting a view of a kernel's output as one (a
    /// producer read through a view cannot be inlined until a rule reads it directly).
    fn most_fused<'a>(&self, eg: &'a EG, class: Id, reduce: bool) -> Option<(Program, Kernel, &'a ENode)> {
        eg[class]
            .nodes
            .iter()
            .filter_map(|n| program_node(eg, n).map(|(p, k)| (p, k, n)))
            .filter(|(_, k, _)| matches!(k, Kernel::Reduce { .. }) == reduce)
            .min_by_key(|(p, _, n)| {
                (std::cmp::Reverse(p.instrs.len()), self.reads_kernels(eg, n) + self.reads_through_views(eg, n), n.children.clone())
            })
    }

    /// The map of a class that reads the fewest classes needing their own kernel, then the
    /// shortest: what a multi-output kernel should compute for it.
    fn self_contained<'a>(&self, eg: &'a EG, class: Id) -> Option<(Program, &'a ENode)> {
        eg[class]
            .nodes
            .iter()
            .filter_map(|n| program_node(eg, n).filter(|(_, k)| matches!(k, Kernel::Map { .. })).map(|(p, _)| (p, n)))
            .min_by_key(|(p, n)| (self.reads_kernels(eg, n), p.instrs.len(), n.children.clone()))
    }
}

/// The most fused single-output map of a class.
fn most_fused<'a>(eg: &'a EG, index: &Index, class: Id) -> Option<(Program, &'a ENode)> {
    index.most_fused(eg, class, false).map(|(p, _, n)| (p, n))
}

/// For the most fused program node of every class, one alternative with every producer it
/// can absorb inlined (each producer in its most fused form), slot by slot while the program
/// stays under [`MAX_PROGRAM_INSTRS`]. One new node per class per iteration keeps growth
/// linear; a producer shared by several consumers is inlined into each (extraction decides
/// whether that recomputation beats a launch: under the cost model it does).
fn inline_producers(eg: &EG, want_reduce: bool) -> Vec<(Id, Change)> {
    let index = Index::new(eg);
    let mut out = Vec::new();
    for class in eg.classes() {
        let Some((program, kernel, node)) = index.most_fused(eg, class.id, want_reduce) else { continue };
        let (mut p, mut ops) = (program.clone(), node.children.clone());
        let mut inlined = false;
        for slot in 0..node.children.len() {
            let child = node.children[slot];
            let Some(kt) = ty(eg, child) else { continue };
            let Some((q, producer)) = most_fused(eg, &index, child) else { continue };
            // Coordinates are the producer's own: only into a program over the same space,
            // reading it whole.
            if q.reads_coords() && (p.views[slot] != kt.shape || kt.shape != kernel.space().shape) {
                continue;
            }
            let Some(views) = compose_views(&p.views[slot], &kt.shape, &q.views) else { continue };
            let (np, nops) = p.inline(&ops, slot as u32, &q, 0, &producer.children, &views);
            let (cp, cops) = np.canonical(&nops);
            if fits(&cp, cops.len()) {
                (p, ops, inlined) = (np, nops, true);
            }
        }
        if inlined {
            if let Some((op, ops)) = finish(&kernel, &p, &ops) {
                out.push((class.id, Change::Add(op, ops)));
            }
        }
    }
    out
}

fn map_into_map(eg: &EG) -> Vec<(Id, Change)> {
    inline_producers(eg, false)
}

fn map_into_reduce(eg: &EG) -> Vec<(Id, Change)> {
    inline_producers(eg, true)
}

/// Replaces every operand that is a broadcast (or reshape) of some `x` by `x` read through
/// the composed view: one new node per program node of a consumer (all of them, not only the
/// most fused: a form with fewer operands is always an alternative worth having, and its own
/// operands are views no more, so this adds at most one node per node).
fn view_into_load(eg: &EG, broadcast: bool) -> Vec<(Id, Change)> {
    let mut out = Vec::new();
    for class in eg.classes() {
        for (program, kernel, node) in class.nodes.iter().filter_map(|n| program_node(eg, n).map(|(p, k)| (p, k, n))) {
            let (mut p, mut ops) = (program.clone(), node.children.clone());
            let mut changed = false;
            for (slot, &child) in node.children.iter().enumerate() {
                let Some(kt) = ty(eg, child) else { continue };
                let found = eg[child].nodes.iter().find_map(|inner| match eg.analysis.op(inner.op) {
                    EOp::Ir(Op::Broadcast { .. }) if broadcast && program.views[slot] == kt.shape => {
                        ty(eg, inner.children[0]).map(|t| (t.shape.clone(), inner.children[0]))
                    }
                    EOp::Ir(Op::Reshape { .. }) if !broadcast => Some((program.views[slot].clone(), inner.children[0])),
                    _ => None,
                });
                if let Some((view, x)) = found {
                    p.views[slot] = view;
                    ops[slot] = x;
                    changed = true;
                }
            }
            if changed {
                if let Some((op, ops)) = finish(&kernel, &p, &ops) {
                    out.push((class.id, Change::Add(op, ops)));
                }
            }
        }
    }
    out
}

/// Inlines every constant operand as an immediate, in every program node of a class (as
/// [`view_into_load`], and for the same reason).
fn const_into_program(eg: &EG) -> Vec<(Id, Change)> {
    let mut out = Vec::new();
    for class in eg.classes() {
        for (program, kernel, node) in class.nodes.iter().filter_map(|n| program_node(eg, n).map(|(p, k)| (p, k, n))) {
            let mut p = program.clone();
            let mut changed = false;
            for (slot, &child) in node.children.iter().enumerate() {
                let value = eg[child].nodes.iter().find_map(|n| match eg.analysis.op(n.op) {
                    EOp::Leaf { op: Op::Const { value }, .. } => Some(*value),
                    _ => None,
                });
                if let Some(v) = value {
                    p = p.with_const(slot as u32, v);
                    changed = true;
                }
            }
            if changed {
                if let Some((op, ops)) = finish(&kernel, &p, &node.children) {
                    out.push((class.id, Change::Add(op, ops)));
                }
            }
        }
    }
    out
}

fn broadcast_into_load(eg: &EG) -> Vec<(Id, Change)> {
    view_into_load(eg, true)
}

fn reshape_into_load(eg: &EG) -> Vec<(Id, Change)> {
    view_into_load(eg, false)
}

/// Sibling (multi-output) fusion, run once after saturation: root classes (step outputs)
/// with the same shape and phase get one multi-output kernel computing all of them, as an
/// alternative to one kernel each. (A member that reads another member through its chosen
/// form would make the kernel read its own output; extraction never picks such a cycle.) For each member it merges the fused map that reads
/// the fewest other maps (the most fused one).
pub(crate) fn sibling_outputs(eg: &mut EG, roots: &[(Id, u32)]) -> usize {
    let index = Index::new(eg);
    let mut groups: BTreeMap<(Shape, u32), Vec<Id>> = BTreeMap::new();
    for &(root, phase) in roots {
        let r = eg.find(root);
        if let Some(t) = ty(eg, r) {
            let members = groups.entry((t.shape.clone(), phase)).or_default();
            if !members.contains(&r) {
                members.push(r);
            }
        }
    }
    let mut added = 0;
    for members in groups.into_values().filter(|m| m.len() > 1) {
        let mut parts: Vec<(Program, Vec<Id>, TensorType)> = Vec::new();
        for &m in &members {
            if let (Some((p, n)), Some(t)) = (index.self_contained(eg, m), ty(eg, m)) {
                // A member reading another member would make the kernel read its own output.
                if n.children.iter().any(|c| members.contains(&eg.find(*c))) {
                    continue;
                }
                parts.push((p, n.children.clone(), t.clone()));
            }
        }
        if parts.len() != members.len() {
            continue;
        }
        // Members in order, as many per kernel as fit the operand and instruction limits.
        let mut chunks: Vec<Vec<usize>> = vec![Vec::new()];
        for i in 0..parts.len() {
            let current = chunks.last_mut().expect("invariant: at least one chunk");
            current.push(i);
            let refs: Vec<(&Program, &[Id])> = current.iter().map(|&j| (&parts[j].0, parts[j].1.as_slice())).collect();
            let (merged, ops) = Program::merge(&refs);
            let (merged, ops) = merged.canonical(&ops);
            if current.len() > 1 && !fits(&merged, ops.len()) {
                current.pop();
                chunks.push(vec![i]);
            }
        }
        for chunk in chunks.into_iter().filter(|c| c.len() > 1) {
            let refs: Vec<(&Program, &[Id])> = chunk.iter().map(|&j| (&parts[j].0, parts[j].1.as_slice())).collect();
            let (merged, ops) = Program::merge(&refs);
            let (merged, ops) = merged.canonical(&ops);
            let types: Vec<TensorType> = chunk.iter().map(|&j| parts[j].2.clone()).collect();
            let classes: Vec<Id> = chunk.iter().map(|&j| members[j]).collect();
            add_tuple(eg, EOp::Multi { program: merged, types }, ops, &classes);
            added += 1;
        }
    }
    eg.rebuild();
    added
}

/// A sum and a map of the same program over the same operands, the map over the sum's whole
/// iteration space (a bias gradient and the gradient it sums, in the backward), run once
/// after saturation: one kernel can compute both, writing each prologue value as it adds it
/// (sums of fewer than `CUBE_REDUCE_MIN` terms).
/// The pair becomes a tuple alternative (`ReduceMap`) whose projections join the two classes;
/// extraction takes it where it saves the map's launch.
pub(crate) fn sum_with_map(eg: &mut EG) -> usize {
    let mut maps: BTreeMap<(Program, Vec<Id>), Id> = BTreeMap::new();
    for class in eg.classes() {
        for node in &class.nodes {
            if let EOp::Ir(Op::Fused { program, ty, .. }) = eg.analysis.op(node.op) {
                if program.outputs.len() == 1 && ty.dtype.is_float() {
                    let children: Vec<Id> = node.children.iter().map(|&c| eg.find(c)).collect();
                    maps.entry((program.clone(), children)).or_insert(class.id);
                }
            }
        }
    }
    let mut pairs: Vec<(Id, Id, Program, Vec<usize>, TensorType, Vec<Id>)> = Vec::new();
    for class in eg.classes() {
        for node in &class.nodes {
            let EOp::Ir(Op::FusedReduce { program, op: crate::ir::ReduceOp::Sum, axes, space, .. }) = eg.analysis.op(node.op) else { continue };
            let children: Vec<Id> = node.children.iter().map(|&c| eg.find(c)).collect();
            let Some(&map) = maps.get(&(program.clone(), children.clone())) else { continue };
            // Only sums a unit per output computes (see `schedule::reduce`): on lavapipe, the
            // cube-per-output form writing its map (the CNN's convolution bias gradients over
            // 25,088 and 100,352 terms) made its SGD step 13% slower queued, against the same
            // kernel times one by one.
            let len: usize = axes.iter().map(|&a| space.shape.0[a]).product();
            // Its operands and both outputs are the kernel's bindings.
            let binds = children.len() + 2;
            if ty(eg, map) != Some(space) || eg.find(map) == eg.find(class.id) || len >= crate::schedule::reduce::CUBE_REDUCE_MIN || binds > MAX_PROGRAM_OPERANDS {
                continue;
            }
            pairs.push((class.id, map, program.clone(), axes.clone(), space.clone(), children));
        }
    }
    // Every matching form of the pair (the fused ones, and the unfused that still read views
    // as kernels) is an alternative; extraction keeps the cheapest.
    pairs.sort_by(|a, b| (a.0, a.1, &a.5).cmp(&(b.0, b.1, &b.5)));
    pairs.dedup_by(|a, b| (a.0, a.1, &a.2, &a.5) == (b.0, b.1, &b.2, &b.5));
    let mut added = 0;
    for (sum, map, program, axes, space, children) in pairs {
        add_tuple(eg, EOp::ReduceMap { program, axes, space }, children, &[sum, map]);
        added += 1;
    }
    eg.rebuild();
    added
}

/// Adds the multi-output kernel `op` over `children`, its output `i` equal to `classes[i]`.
fn add_tuple(eg: &mut EG, op: EOp, children: Vec<Id>, classes: &[Id]) {
    let op = eg.analysis.intern(op);
    let tuple = eg.add(ENode { op, children });
    for (i, &class) in classes.iter().enumerate() {
        let proj = eg.analysis.intern(EOp::Proj(i as u32));
        let p = eg.add(ENode { op: proj, children: vec![tuple] });
        eg.union(class, p);
    }
}

/// After saturation: a map reading the whole output of an op that takes epilogues (a GEMM:
/// the bias and activation after a layer; a max-pool gradient: the ReLU mask after it in the
/// backward; a sum that runs as one launch: a running statistic's update), whole or through a
/// reshape of it, becomes, as an alternative, that op's epilogue: one kernel computes the op,
/// stores its output and stores the map of it (a tuple of the two, `EOp::WithEpilogue`). The
/// map's other operands must not depend on the op's output (a BatchNorm of a convolution
/// reads statistics of it: no epilogue). A sum pairs only with a map that is a step output,
/// each in its most fused form (see below). Extraction keeps it when the whole step gets
/// cheaper.
pub(crate) fn with_epilogue(eg: &mut EG, roots: &[Id]) -> usize {
    let users = Users::new(eg);
    let index = Index::new(eg);
    let roots: HashSet<Id> = roots.iter().map(|&r| eg.find(r)).collect();
    let mut found: Vec<(Id, Id, Op, Vec<Id>, Program, Vec<Id>, Vec<TensorType>)> = Vec::new();
    let mut depends: BTreeMap<Id, HashSet<Id>> = BTreeMap::new();
    for class in eg.classes() {
        let Some(t) = ty(eg, class.id) else { continue };
        let most_fused_map = index.most_fused(eg, class.id, false).map(|(_, _, n)| n.clone());
        for node in &class.nodes {
            let EOp::Ir(Op::Fused { program, .. }) = eg.analysis.op(node.op) else { continue };
            if program.outputs.len() != 1 || !t.dtype.is_float() {
                continue;
            }
            // A sum's epilogue: a step output (a running statistic's update), in its most fused form.
            let sum_epilogue = roots.contains(&class.id) && most_fused_map.as_ref() == Some(node);
            let children: Vec<Id> = node.children.iter().map(|&c| eg.find(c)).collect();
            for (slot, &g) in children.iter().enumerate() {
                // The op's output, read whole over the map's own space (a reshape of it: the same
                // elements in the same order), in this slot only.
                let Some(gt) = ty(eg, g) else { continue };
                if program.views[slot] != t.shape || gt.dtype != t.dtype || gt.shape.numel() != t.shape.numel() || children.iter().filter(|&&c| c == g).count() != 1 {
                    continue;
                }
                let others: Vec<Id> = children.iter().enumerate().filter(|&(k, _)| k != slot).map(|(_, &c)| c).collect();
                // A sum and its epilogue each in their most fused form only, and only a map that
                // is a step output: a class holds many forms of one sum or map, and every map
                // that reads a sum would pair with each (thousands of tuples on ResNet-18, whose
                // every BatchNorm has sums that small maps read, for extraction to try).
                let most_fused_sum = index.most_fused(eg, g, true).map(|(_, _, n)| n.clone());
                for gnode in &eg[g].nodes {
                    let gemm = match eg.analysis.op(gnode.op) {
                        EOp::Ir(op @ Op::FusedReduce { .. }) if op.takes_epilogue() && sum_epilogue && most_fused_sum.as_ref() == Some(gnode) => op.clone(),
                        EOp::Ir(Op::FusedReduce { .. }) => continue,
                        EOp::Ir(op) if op.takes_epilogue() => op.clone(),
                        _ => continue,
                    };
                    // Its operands and both outputs are the kernel's bindings.
                    if gnode.children.len() + others.len() + 2 > MAX_PROGRAM_OPERANDS {
                        continue;
                    }
                    let dep = depends.entry(g).or_insert_with(|| users.dependents(g));
                    if others.iter().any(|o| dep.contains(o)) {
                        continue;
                    }
                    let types = vec![gt.clone(), t.clone()];
                    let gemm_children: Vec<Id> = gnode.children.iter().map(|&c| eg.find(c)).collect();
                    found.push((g, class.id, gemm, gemm_children, program.with_operand_first(slot), others.clone(), types));
                }
            }
        }
    }
    found.sort_by(|a, b| (a.0, a.1, &a.3, &a.5).cmp(&(b.0, b.1, &b.3, &b.5)).then_with(|| format!("{:?}{:?}", a.2, a.4).cmp(&format!("{:?}{:?}", b.2, b.4))));
    found.dedup_by(|a, b| (a.0, a.1, &a.3, &a.5) == (b.0, b.1, &b.3, &b.5) && a.2 == b.2 && a.4 == b.4);
    let mut added = 0;
    for (gemm_class, map_class, gemm, mut children, program, others, types) in found {
        children.extend(others);
        add_tuple(eg, EOp::WithEpilogue { op: gemm, program, types }, children, &[gemm_class, map_class]);
        added += 1;
    }
    eg.rebuild();
    added
}

/// The classes that read each class (through any of their e-nodes): what depends on what.
struct Users(BTreeMap<Id, Vec<Id>>);

impl Users {
    fn new(eg: &EG) -> Self {
        let mut users: BTreeMap<Id, Vec<Id>> = BTreeMap::new();
        for class in eg.classes() {
            for node in &class.nodes {
                for &c in &node.children {
                    users.entry(eg.find(c)).or_default().push(class.id);
                }
            }
        }
        Users(users)
    }

    /// Every class that reads `root`, directly or not.
    fn dependents(&self, root: Id) -> HashSet<Id> {
        let mut seen: HashSet<Id> = HashSet::new();
        let mut stack = vec![root];
        while let Some(c) = stack.pop() {
            for &u in self.0.get(&c).into_iter().flatten() {
                if seen.insert(u) {
                    stack.push(u);
                }
            }
        }
        seen
    }
}

/// Most sums one kernel computes together: each keeps four partial sums in registers.
pub const MAX_SIBLING_SUMS: usize = 4;

/// Sums over a space this small (elements) share a kernel even when they read different
/// tensors (the loss's sums over `[batch, classes]`: the row sums of the exponentials and of
/// the labels' one-hot): their tensors, kept alive until the shared kernel runs, are small.
/// Over a larger space a kernel of unrelated sums could keep large tensors alive longer, which
/// the cost model does not weigh.
pub const SMALL_SUM_SPACE: usize = 1 << 16;

/// After saturation and a first extraction (`chosen`): sums over the same space and axes that
/// read the same tensors over the whole space (a BatchNorm's scale and shift gradients and
/// the sum its input gradient needs, all over the output gradient and the normalized input; a
/// loss and an accuracy over the logits) become, as an alternative, one kernel computing all
/// of them (`EOp::MultiSum`): one launch, and the tensors are read once. Each sum is taken in
/// the form the first extraction chose for it (the most fused form of a class often reads
/// other tensors than the one a step runs); only sums that are not split (see
/// `schedule::reduce`) and do not depend on one another, at most [`MAX_SIBLING_SUMS`] per
/// kernel and as many as the program limits allow. Extraction keeps a group where the whole
/// step gets cheaper.
pub(crate) fn sibling_sums(eg: &mut EG, chosen: &std::collections::HashMap<Id, ENode>) -> usize {
    let mut groups: BTreeMap<(Vec<usize>, Shape), Vec<Member>> = BTreeMap::new();
    let mut classes: Vec<Id> = chosen.keys().map(|&c| eg.find(c)).collect();
    classes.sort();
    classes.dedup();
    for class in classes {
        let Some(node) = chosen.get(&class) else { continue };
        let EOp::Ir(Op::FusedReduce { program, op: crate::ir::ReduceOp::Sum, axes, space, .. }) = eg.analysis.op(node.op) else { continue };
        let len: usize = axes.iter().map(|&a| space.shape.0[a]).product();
        if !space.dtype.is_float() || crate::schedule::reduce::reduce_split(space.shape.numel() / len.max(1), len) > 1 {
            continue;
        }
        let children: Vec<Id> = node.children.iter().map(|&c| eg.find(c)).collect();
        let whole: HashSet<Id> = children.iter().enumerate().filter(|&(k, &c)| program.views[k] == space.shape && ty(eg, c) == Some(space)).map(|(_, &c)| c).collect();
        if !whole.is_empty() || space.shape.numel() <= SMALL_SUM_SPACE {
            groups.entry((axes.clone(), space.shape.clone())).or_default().push(Member { class, program: program.clone(), children, space: space.clone(), whole });
        }
    }
    let users = Users::new(eg);
    let mut added = 0;
    // The groups kept so far: their sums, and every class that reads one of them. One kernel
    // reads every operand of its sums, so two groups that each read a sum of the other would
    // be a cycle; such a group is not offered.
    let mut kept: Vec<(Vec<Id>, HashSet<Id>)> = Vec::new();
    for ((axes, _), members) in groups.into_iter().filter(|(_, m)| m.len() > 1) {
        let depends: Vec<HashSet<Id>> = members.iter().map(|m| users.dependents(m.class)).collect();
        let merged = |chunk: &[usize]| {
            let refs: Vec<(&Program, &[Id])> = chunk.iter().map(|&j| (&members[j].program, members[j].children.as_slice())).collect();
            let (p, ops) = Program::merge(&refs);
            p.canonical(&ops)
        };
        // First fit, in class order: a sum joins the first kernel that reads one of its
        // tensors (any kernel, over a small space), whose sums it neither reads nor is read by,
        // and that stays within the limits.
        let small = members[0].space.shape.numel() <= SMALL_SUM_SPACE;
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        for i in 0..members.len() {
            let fits_in = |chunk: &Vec<usize>| {
                let shares = small || chunk.iter().any(|&j| !members[j].whole.is_disjoint(&members[i].whole));
                let independent = chunk.iter().all(|&j| !depends[j].contains(&members[i].class) && !depends[i].contains(&members[j].class));
                if !shares || !independent || chunk.len() >= MAX_SIBLING_SUMS {
                    return false;
                }
                let mut with = chunk.clone();
                with.push(i);
                let (p, ops) = merged(&with);
                fits(&p, ops.len())
            };
            match chunks.iter().position(fits_in) {
                Some(c) => chunks[c].push(i),
                None => chunks.push(vec![i]),
            }
        }
        for chunk in chunks.into_iter().filter(|c| c.len() > 1) {
            let sums: Vec<Id> = chunk.iter().map(|&j| members[j].class).collect();
            let readers: HashSet<Id> = chunk.iter().flat_map(|&j| depends[j].iter().copied()).collect();
            if creates_cycle(&kept, &sums, &readers) {
                continue;
            }
            kept.push((sums.clone(), readers));
            let (program, ops) = merged(&chunk);
            add_tuple(eg, EOp::MultiSum { program, axes: axes.clone(), space: members[chunk[0]].space.clone() }, ops, &sums);
            added += 1;
        }
    }
    eg.rebuild();
    added
}

/// A sum [`sibling_sums`] may group: its class, chosen program and operands, and the tensors
/// it reads over the whole space.
struct Member {
    class: Id,
    program: Program,
    children: Vec<Id>,
    space: TensorType,
    whole: HashSet<Id>,
}

/// Whether adding the group of `sums` (read by `readers`) to the `kept` groups closes a cycle
/// among the groups: group A reads group B when a sum of A reads (directly or not) a sum of B.
fn creates_cycle(kept: &[(Vec<Id>, HashSet<Id>)], sums: &[Id], readers: &HashSet<Id>) -> bool {
    let reads = |a_sums: &[Id], b_readers: &HashSet<Id>| a_sums.iter().any(|s| b_readers.contains(s));
    // Groups the new one reaches by reading, transitively; a cycle if one of them reads it.
    let mut reached: Vec<usize> = (0..kept.len()).filter(|&k| reads(sums, &kept[k].1)).collect();
    let mut i = 0;
    while i < reached.len() {
        let from = reached[i];
        if reads(&kept[from].0, readers) {
            return true;
        }
        for k in 0..kept.len() {
            if !reached.contains(&k) && reads(&kept[from].0, &kept[k].1) {
                reached.push(k);
            }
        }
        i += 1;
    }
    false
}
