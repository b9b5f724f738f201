//! Fusion by equality saturation: the step program goes into an egg e-graph, rewrite rules
//! add fused alternatives, and DAG-aware extraction under the cost model picks the kernels.
//! Nothing here knows which optimizer built the program.

mod cost;
mod extract;
mod lang;
mod rules;

pub use cost::{slice_is_contiguous, Cost};
pub use rules::{MAX_PROGRAM_INSTRS, MAX_PROGRAM_OPERANDS};

/// Every rewrite rule as (name, algebra), in the order they run.
pub fn rule_table() -> Vec<(&'static str, &'static str)> {
    rules::all().iter().map(|r| (r.name, r.algebra)).collect()
}

use crate::error::IrError;
use crate::ir::{Graph, Instr, NodeId, Op, OutputKind, Program};
use crate::step::{Phase, Step};
use egg::Id;
use lang::{EOp, ENode, Types, EG};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Bounds on saturation. Hitting one is not an error: extraction uses what was found.
#[derive(Clone, Debug)]
pub struct Limits {
    pub iterations: usize,
    pub nodes: usize,
    pub time: Duration,
}

/// Fusion chains in real steps are a few ops deep, and each iteration lengthens every fused
/// program by one producer, so 12 iterations reach the instruction cap; 200k e-nodes and 10 s
/// bound pathological graphs (ResNet-18's SAM step stays far below both).
pub const DEFAULT_LIMITS: Limits = Limits { iterations: 12, nodes: 200_000, time: Duration::from_secs(10) };

/// Why saturation stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    Saturated,
    IterationLimit,
    NodeLimit,
    TimeLimit,
}

/// What the rewriter did.
#[derive(Clone, Debug)]
pub struct Report {
    pub iterations: usize,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    pub stop: StopReason,
    /// Rules applied, by name, with how many changes each proposed.
    pub rule_hits: BTreeMap<&'static str, usize>,
    /// Extraction failed and the program was kept unfused (always correct).
    pub fallback: bool,
    /// The rewriter ran (off: one kernel per op, and the schedule fuses nothing either).
    pub rewrite: bool,
    /// The extracted program's cost.
    pub cost: Cost,
    pub seconds: f64,
}

/// A step after fusion: the same program with fused kernels, and each node's phase.
#[derive(Clone, Debug)]
pub struct Fused {
    pub graph: Graph,
    pub phases: BTreeMap<NodeId, Phase>,
    pub report: Report,
    /// The step's label inputs, by name, with the number of classes their one-hot has: a
    /// label outside `0..classes` is the caller's error, which the fused program (one-hot
    /// labels compared where they are read) cannot report itself.
    pub labels: BTreeMap<String, usize>,
}

/// The inputs that feed a one-hot, with its number of classes.
fn label_inputs(g: &Graph) -> BTreeMap<String, usize> {
    let mut labels = BTreeMap::new();
    for id in g.node_ids() {
        if let Op::OneHot { classes } = g.node(id).op {
            if let Op::Input { name } = &g.node(g.operands(id)[0]).op {
                labels.insert(name.clone(), classes);
            }
        }
    }
    labels
}

/// Converts a step node's op to its e-graph form: elementwise ops become one-instruction
/// fused programs, reductions become reductions with an identity prologue.
fn to_eop(g: &Graph, id: NodeId) -> EOp {
    let node = g.node(id);
    let views = || g.operands(id).iter().map(|&o| g.shape(o).clone()).collect::<Vec<_>>();
    let fused = |instr: Instr| EOp::Ir(Op::Fused { program: Program::of_instr(views(), instr), output: 0, group: 0, ty: node.ty.clone() });
    match &node.op {
        op if op.is_leaf() => EOp::Leaf { op: op.clone(), ty: node.ty.clone() },
        Op::Unary(u) => fused(Instr::Unary(*u, 0)),
        Op::Binary(b) => fused(Instr::Binary(*b, 0, 1)),
        Op::Compare(c) => fused(Instr::Compare(*c, 0, 1)),
        Op::Select => fused(Instr::Select(0, 1, 2)),
        Op::Reduce { op, axes } => {
            let x = g.operands(id)[0];
            let program = Program::identity(g.shape(x).clone());
            EOp::Ir(Op::FusedReduce { program, op: *op, axes: axes.clone(), space: g.ty(x).clone(), group: 0 })
        }
        op => EOp::Ir(op.clone()),
    }
}

fn phase_rank(p: Phase) -> u32 {
    p as u32
}

/// Fuses `step` into kernels. With `rewrite` off, only the one-op-per-kernel conversion and
/// extraction run: the unfused schedule.
pub fn fuse(step: &Step, limits: &Limits, rewrite: bool) -> Result<Fused, IrError> {
    let start = Instant::now();
    let g = &step.graph;
    let mut eg: EG = EG::new(Types::default());
    let mut class_of: HashMap<NodeId, Id> = HashMap::new();
    let mut class_phase: HashMap<Id, Phase> = HashMap::new();
    for id in g.node_ids() {
        if g.node(id).op == Op::StopGradient {
            // It computes nothing: its users read its operand.
            class_of.insert(id, class_of[&g.operands(id)[0]]);
            continue;
        }
        let op = eg.analysis.intern(to_eop(g, id));
        let children = g.operands(id).iter().map(|o| class_of[o]).collect();
        let c = eg.add(ENode { op, children });
        class_of.insert(id, c);
        let phase = step.phases.get(&id).copied().unwrap_or(Phase::Forward);
        class_phase.entry(c).or_insert(phase);
    }
    eg.rebuild();

    let mut report = Report {
        iterations: 0,
        egraph_nodes: 0,
        egraph_classes: 0,
        stop: StopReason::Saturated,
        rule_hits: BTreeMap::new(),
        fallback: false,
        rewrite,
        cost: Cost::default(),
        seconds: 0.0,
    };
    // Classes a rule created that hold no step node, with the class they serve: they take its
    // phase.
    let mut derived: Vec<(Id, Id)> = Vec::new();
    if rewrite {
        let rules = rules::all();
        'outer: loop {
            if report.iterations >= limits.iterations {
                report.stop = StopReason::IterationLimit;
                break;
            }
            report.iterations += 1;
            let mut changed = false;
            for rule in &rules {
                let changes = (rule.find)(&eg);
                let mut hits = 0;
                for (class, change) in changes {
                    let other = match change {
                        rules::Change::Union(id) => id,
                        rules::Change::Add(op, children) => {
                            let op = eg.analysis.intern(op);
                            eg.add(ENode { op, children })
                        }
                        rules::Change::AddReshaped(op, children, shape) => {
                            let op = eg.analysis.intern(op);
                            let inner = eg.add(ENode { op, children });
                            derived.push((inner, class));
                            let reshape = eg.analysis.intern(EOp::Ir(Op::Reshape { shape }));
                            eg.add(ENode { op: reshape, children: vec![inner] })
                        }
                        rules::Change::AddOver { parts, op, rest } => {
                            let mut children = Vec::new();
                            for (part, ch) in parts {
                                let part = eg.analysis.intern(part);
                                let c = eg.add(ENode { op: part, children: ch });
                                derived.push((c, class));
                                children.push(c);
                            }
                            children.extend(rest);
                            let op = eg.analysis.intern(op);
                            eg.add(ENode { op, children })
                        }
                    };
                    if eg.union(class, other) {
                        hits += 1;
                    }
                }
                eg.rebuild();
                if hits > 0 {
                    *report.rule_hits.entry(rule.name).or_default() += hits;
                    changed = true;
                }
                if eg.total_number_of_nodes() > limits.nodes {
                    report.stop = StopReason::NodeLimit;
                    break 'outer;
                }
                if start.elapsed() > limits.time {
                    report.stop = StopReason::TimeLimit;
                    break 'outer;
                }
            }
            if !changed {
                break;
            }
        }
        let roots: Vec<(Id, u32)> = g
            .outputs()
            .iter()
            .map(|o| {
                let c = class_of[&o.node];
                (c, phase_rank(*class_phase.get(&c).unwrap_or(&Phase::Forward)))
            })
            .collect();
        let groups = rules::sibling_outputs(&mut eg, &roots);
        if groups > 0 {
            report.rule_hits.insert("sibling-outputs", groups);
        }
        let pairs = rules::sum_with_map(&mut eg);
        if pairs > 0 {
            report.rule_hits.insert("sum-with-map", pairs);
        }
        let output_classes: Vec<Id> = g.outputs().iter().map(|o| class_of[&o.node]).collect();
        let epilogues = rules::with_epilogue(&mut eg, &output_classes);
        if epilogues > 0 {
            report.rule_hits.insert("epilogue", epilogues);
        }
        // Sums are grouped in the forms a first extraction chooses for them.
        let first_roots: Vec<Id> = g.outputs().iter().map(|o| eg.find(class_of[&o.node])).collect();
        if let Some(first) = extract::extract(&eg, &first_roots) {
            let sums = rules::sibling_sums(&mut eg, &first.choice);
            if sums > 0 {
                report.rule_hits.insert("sibling-sums", sums);
            }
        }
    }
    report.egraph_nodes = eg.total_number_of_nodes();
    report.egraph_classes = eg.number_of_classes();

    let roots: Vec<Id> = g.outputs().iter().map(|o| eg.find(class_of[&o.node])).collect();
    // Rebuild in the step's own order (each class where its first step node was), so values
    // are computed early and die early, as the step builder laid them out.
    let order: Vec<Id> = g.node_ids().map(|id| eg.find(class_of[&id])).collect();
    let built = extract::extract(&eg, &roots).and_then(|ex| {
        report.cost = ex.cost;
        rebuild_graph(&eg, &ex.choice, &order).ok()
    });
    let (graph, class_nodes) = match built {
        Some(b) => b,
        None if rewrite => {
            let mut unfused = fuse(step, limits, false)?;
            unfused.report = Report { fallback: true, seconds: start.elapsed().as_secs_f64(), ..report };
            return Ok(unfused);
        }
        None => return Err(IrError::Invariant("extraction of the unfused program failed".into())),
    };
    let mut out = graph;
    for (o, &r) in g.outputs().iter().zip(&roots) {
        let node = class_nodes[&r];
        let kind = match o.kind {
            OutputKind::Value => OutputKind::Value,
            OutputKind::StateUpdate { state } => OutputKind::StateUpdate { state: class_nodes[&eg.find(class_of[&state])] },
        };
        out.add_output(o.name.clone(), node, kind)?;
    }
    // Phase of each fused node: the earliest phase among the step nodes its class holds.
    let mut canon_phase: HashMap<Id, Phase> = HashMap::new();
    for (&c, &p) in &class_phase {
        let e = canon_phase.entry(eg.find(c)).or_insert(p);
        if p < *e {
            *e = p;
        }
    }
    for &(inner, target) in &derived {
        if let Some(&p) = canon_phase.get(&eg.find(target)) {
            let e = canon_phase.entry(eg.find(inner)).or_insert(p);
            if p < *e {
                *e = p;
            }
        }
    }
    let mut phases = BTreeMap::new();
    for (c, &n) in &class_nodes {
        phases.insert(n, canon_phase.get(c).copied().unwrap_or(Phase::Descent));
    }
    out.verify()?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(Fused { graph: out, phases, report, labels: label_inputs(g) })
}

/// Builds the IR graph of the extracted choice (the classes it reaches), operands before
/// users, visiting classes in `order`. Fails on a cyclic choice.
fn rebuild_graph(eg: &EG, choice: &HashMap<Id, ENode>, order: &[Id]) -> Result<(Graph, HashMap<Id, NodeId>), IrError> {
    struct Ctx<'a> {
        eg: &'a EG,
        choice: &'a HashMap<Id, ENode>,
        g: Graph,
        done: HashMap<Id, NodeId>,
        visiting: std::collections::HashSet<Id>,
        groups: HashMap<Id, u32>,
        next_group: u32,
    }
    fn visit(cx: &mut Ctx, c: Id) -> Result<NodeId, IrError> {
        let c = cx.eg.find(c);
        if let Some(&n) = cx.done.get(&c) {
            return Ok(n);
        }
        if !cx.visiting.insert(c) {
            return Err(IrError::Invariant("cyclic extraction".into()));
        }
        let node = cx.choice.get(&c).ok_or_else(|| IrError::Invariant("class without a choice".into()))?.clone();
        let id = match cx.eg.analysis.op(node.op).clone() {
            EOp::Leaf { op, ty } => {
                let named = crate::ir::leaf_kind(&op).zip(crate::ir::leaf_name(&op));
                match named.and_then(|(k, n)| cx.g.find_leaf(k, n)) {
                    Some(existing) => existing,
                    None => cx.g.leaf(op, ty.dtype, ty.shape)?,
                }
            }
            EOp::Ir(op) => {
                let ops = node.children.iter().map(|&ch| visit(cx, ch)).collect::<Result<Vec<_>, _>>()?;
                let op = match op {
                    Op::Fused { program, output, ty, .. } => {
                        cx.next_group += 1;
                        Op::Fused { program, output, group: cx.next_group, ty }
                    }
                    other => other,
                };
                cx.g.add(op, &ops)?
            }
            EOp::Proj(i) => {
                let multi = cx.eg.find(node.children[0]);
                let mnode = cx.choice.get(&multi).ok_or_else(|| IrError::Invariant("projection of an unchosen kernel".into()))?.clone();
                let ops = mnode.children.iter().map(|&ch| visit(cx, ch)).collect::<Result<Vec<_>, _>>()?;
                let group = match cx.groups.get(&multi) {
                    Some(&gid) => gid,
                    None => {
                        cx.next_group += 1;
                        cx.groups.insert(multi, cx.next_group);
                        cx.next_group
                    }
                };
                match cx.eg.analysis.op(mnode.op).clone() {
                    EOp::Multi { program, types } => cx.g.add(Op::Fused { program, output: i, group, ty: types[i as usize].clone() }, &ops)?,
                    EOp::ReduceMap { program, axes, space } if i == 0 => {
                        cx.g.add(Op::FusedReduce { program, op: crate::ir::ReduceOp::Sum, axes, space, group }, &ops)?
                    }
                    EOp::ReduceMap { program, space, .. } => cx.g.add(Op::Fused { program, output: 0, group, ty: space }, &ops)?,
                    // Each sum keeps its own program and operands; the schedule runs the
                    // group's sums as one kernel.
                    EOp::MultiSum { program, axes, space } => {
                        let one = Program { outputs: vec![program.outputs[i as usize]], ..program };
                        let (one, operands) = one.canonical(&ops);
                        cx.g.add(Op::FusedReduce { program: one, op: crate::ir::ReduceOp::Sum, axes, space, group }, &operands)?
                    }
                    // Both projections name the same GEMM node (the graph hash-conses it); the
                    // schedule gives the epilogue its GEMM's kernel.
                    EOp::WithEpilogue { op: gemm, program, types } => {
                        let n = gemm.arity();
                        let gemm_node = cx.g.add(gemm, &ops[..n])?;
                        if i == 0 {
                            gemm_node
                        } else {
                            let mut operands = vec![gemm_node];
                            operands.extend_from_slice(&ops[n..]);
                            // The epilogue launches where its GEMM is. When the GEMM was built
                            // before this map's other operands (another tuple reached it
                            // first), the map runs as a kernel of its own instead.
                            if ops[n..].iter().all(|o| o.index() < gemm_node.index()) {
                                cx.g.add(Op::Epilogue { program, ty: types[1].clone() }, &operands)?
                            } else {
                                cx.next_group += 1;
                                cx.g.add(Op::Fused { program, output: 0, group: cx.next_group, ty: types[1].clone() }, &operands)?
                            }
                        }
                    }
                    _ => return Err(IrError::Invariant("projection of a non-tuple".into())),
                }
            }
            EOp::Multi { .. } | EOp::ReduceMap { .. } | EOp::WithEpilogue { .. } | EOp::MultiSum { .. } => {
                return Err(IrError::Invariant("a tuple class used as a value".into()))
            }
        };
        cx.visiting.remove(&c);
        cx.done.insert(c, id);
        Ok(id)
    }
    let mut cx = Ctx { eg, choice, g: Graph::new(), done: HashMap::new(), visiting: Default::default(), groups: HashMap::new(), next_group: 0 };
    for &c in order {
        if choice.contains_key(&c) {
            visit(&mut cx, c)?;
        }
    }
    Ok((cx.g, cx.done))
}
