//! The schedule: the fused program as an ordered list of kernel launches over buffers, each
//! kernel tagged with its phase, with a liveness-based memory plan.

pub mod gemm;
mod plan;
pub mod reduce;

use crate::egraph::{Fused, Report};
use crate::ir::{Graph, NodeId, Op, OutputKind};
use crate::step::{Phase, Step};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write};

pub use plan::{Buffer, BufferKind, POOL_ALIGN, POOL_PAGE};

/// One kernel launch.
#[derive(Clone, Debug, Serialize)]
pub struct Kernel {
    /// `k0`, `k1`, ... in launch order.
    pub id: usize,
    /// The op family: `fused`, `fused_reduce_sum`, `matmul`, `conv2d_grad_weight`, ...
    pub name: String,
    pub phase: Phase,
    /// What it computes, one line per output (fused programs as expressions).
    pub body: Vec<String>,
    /// Buffers read (`b3`, or `b0+200704` for a view at an element offset).
    pub inputs: Vec<String>,
    /// Buffers written.
    pub outputs: Vec<String>,
    /// Bytes read plus bytes written.
    pub bytes: u64,
    /// Slices of a split GEMM (along k; see [`gemm`]) or of a split sum (see [`reduce`]); 1:
    /// not split. A split kernel is two launches.
    pub split: usize,
    /// The buffer of a split kernel's partial results (for a kernel summing another's slices,
    /// that kernel's).
    pub workspace: Option<usize>,
    /// A split sum whose slices the first kernel reading the sum adds up as it reads it (that
    /// kernel; see [`reduce::slices_readers`]): one launch, not two.
    pub summed_by: Option<usize>,
    /// The split sum (kernel) whose slices this map adds up, storing the sum, before it reads it.
    pub sums_slices_of: Option<usize>,
    /// Two reductions in turn (see [`reduce::chains`]): `nodes[..i]` the first (a sum or a max
    /// and its epilogues), `nodes[i..]` the sums reading its result, and theirs.
    pub chain: Option<usize>,
    /// The fused-graph nodes this kernel computes.
    #[serde(skip)]
    pub nodes: Vec<NodeId>,
}

impl Kernel {
    /// Device launches: one, or two for a split kernel (the slices, then their sum), unless
    /// the kernel reading the sum adds up the slices.
    pub fn launches(&self) -> usize {
        if self.split > 1 && self.summed_by.is_none() { 2 } else { 1 }
    }
}

/// A compiled step: kernels in launch order and the memory they use.
#[derive(Clone, Debug, Serialize)]
pub struct Schedule {
    pub launches: usize,
    /// Launches outside the forward and backward passes (SAM's ascent and the descent).
    pub optimizer_launches: usize,
    pub bytes_moved: u64,
    pub peak_memory_bytes: u64,
    pub param_count: usize,
    /// Page size of the pool layout: no temporary smaller than a page crosses a multiple of it.
    /// `None`: laid out as one pool (see [`Compiled::paged`]).
    pub page_bytes: Option<u64>,
    /// Split sums read first by a map have their slices added up by that map (see
    /// [`reduce::slices_readers`]; [`Compiled::laid_out`] turns it off for a device where it
    /// costs more than the launch it saves).
    pub sums_in_readers: bool,
    pub kernels: Vec<Kernel>,
    pub buffers: Vec<Buffer>,
    /// Where every fused-graph node lives: (buffer, element offset).
    #[serde(skip)]
    pub locations: BTreeMap<NodeId, (usize, usize)>,
}

/// A step compiled end to end: the fused program, its schedule and the rewriter's report.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub fused: Graph,
    pub phases: BTreeMap<NodeId, Phase>,
    pub schedule: Schedule,
    pub report: Report,
    /// Label inputs by name, with their number of classes (see [`crate::egraph::Fused`]):
    /// runners refuse a label outside `0..classes` when it is set.
    pub labels: BTreeMap<String, usize>,
}

/// Whether a fused-graph node is computed by a kernel (rather than being a leaf or a view).
pub fn is_kernel(g: &Graph, id: NodeId) -> bool {
    let node = g.node(id);
    match &node.op {
        op if op.is_leaf() => false,
        Op::Reshape { .. } => false,
        Op::Concat { axis, .. } => *axis != 0,
        Op::Slice { start, end } => {
            let x = g.operands(id)[0];
            !crate::egraph::slice_is_contiguous(g.shape(x), start, end)
        }
        _ => true,
    }
}

/// The nodes a kernel computing `nodes` reads: their operands, except the output of the op
/// (a GEMM, a max-pool gradient or a sum) whose epilogue reads it in the same kernel, for which the
/// op's own operands (when the kernel does not store the op's output, the op is not among
/// `nodes`).
pub(crate) fn kernel_reads(g: &Graph, nodes: &[NodeId]) -> Vec<NodeId> {
    let mut reads: Vec<NodeId> = Vec::new();
    let add = |o: NodeId, reads: &mut Vec<NodeId>| {
        if !reads.contains(&o) && !nodes.contains(&o) {
            reads.push(o);
        }
    };
    for &n in nodes {
        let operands = g.operands(n);
        for (pos, &o) in operands.iter().enumerate() {
            if pos == 0 && matches!(g.node(n).op, Op::Epilogue { .. }) {
                if !nodes.contains(&o) {
                    for p in g.operands(o) {
                        add(p, &mut reads);
                    }
                }
                continue;
            }
            add(o, &mut reads);
        }
    }
    reads
}

/// Lays out the kernels of a fused step over an arena of `param_count` parameters: one launch
/// per kernel node (one per group for multi-output programs), in the fused graph's topological
/// order; the pool as one, or in pages of `page` bytes; with `sums_in_readers`, a split sum's
/// slices added up by the map first reading it (never for an unfused program).
pub fn schedule(fused: Fused, param_count: usize, page: Option<u64>, sums_in_readers: bool) -> Compiled {
    let g = &fused.graph;
    let mut kernels: Vec<Kernel> = Vec::new();
    let mut group_kernel: BTreeMap<u32, usize> = BTreeMap::new();
    let mut kernel_of: BTreeMap<NodeId, usize> = BTreeMap::new();
    for id in g.node_ids() {
        if !is_kernel(g, id) {
            continue;
        }
        let node = g.node(id);
        let body = match &node.op {
            Op::Fused { program, output, .. } => program.expr(*output as usize),
            Op::Epilogue { program, .. } => program.expr(0),
            op => op.to_string(),
        };
        let phase = fused.phases.get(&id).copied().unwrap_or(Phase::Forward);
        // An epilogue runs in its op's kernel (operand 0), which it follows.
        if let Op::Epilogue { .. } = node.op {
            let k = kernel_of[&g.operands(id)[0]];
            kernels[k].nodes.push(id);
            kernels[k].body.push(body);
            kernels[k].phase = kernels[k].phase.max(phase);
            kernel_of.insert(id, k);
            continue;
        }
        let group = match node.op {
            Op::Fused { group, .. } => Some(group),
            Op::FusedReduce { group, .. } if group != 0 => Some(group),
            _ => None,
        };
        if let Some(group) = group {
            if let Some(&k) = group_kernel.get(&group) {
                let kernel = &mut kernels[k];
                let leads_map = matches!(g.node(kernel.nodes[0]).op, Op::Fused { .. });
                if matches!(node.op, Op::FusedReduce { .. }) && leads_map {
                    // A reduction that also writes its prologue as a map: it leads the kernel.
                    // (Sums sharing a kernel keep their order.)
                    kernel.nodes.insert(0, id);
                    kernel.body.insert(0, body);
                    kernel.name = node.op.mnemonic().to_string();
                    kernel.split = split_of(g, id);
                } else {
                    kernel.nodes.push(id);
                    kernel.body.push(body);
                }
                kernel.phase = kernel.phase.max(phase);
                kernel_of.insert(id, k);
                continue;
            }
            group_kernel.insert(group, kernels.len());
        }
        kernel_of.insert(id, kernels.len());
        kernels.push(Kernel {
            id: kernels.len(),
            name: node.op.mnemonic().to_string(),
            phase,
            body: vec![body],
            inputs: vec![],
            outputs: vec![],
            bytes: 0,
            split: split_of(g, id),
            workspace: None,
            summed_by: None,
            sums_slices_of: None,
            chain: None,
            nodes: vec![id],
        });
    }
    // An op whose output only its epilogues read (a max-pool gradient whose masked value is
    // all the backward needs, say) is not stored: its kernel writes the epilogues' outputs
    // alone, and the op leaves the kernel's nodes (which are what it stores).
    let mut unstored: BTreeSet<NodeId> = BTreeSet::new();
    for k in kernels.iter_mut() {
        let gemm = k.nodes[0];
        let epilogue = |n: NodeId| matches!(g.node(n).op, Op::Epilogue { .. }) && g.operands(n)[0] == gemm;
        let output = g.outputs().iter().any(|o| o.node == gemm);
        if k.nodes.len() > 1 && k.nodes[1..].iter().all(|&n| epilogue(n)) && !output && g.users(gemm).into_iter().all(epilogue) {
            k.nodes.remove(0);
            unstored.insert(gemm);
        }
    }
    // Two reductions in turn over one space, the second reading the first, in one kernel
    // (with the rewriter on).
    if fused.report.rewrite {
        merge_chains(g, &mut kernels, &mut kernel_of);
    }
    // A split sum's slices added up by the map that first reads the sum (with the rewriter
    // on: off, every op is its own kernel).
    let sums_in_readers = sums_in_readers && fused.report.rewrite;
    if sums_in_readers {
        for (k, m) in reduce::slices_readers(g, &kernels) {
            kernels[k].summed_by = Some(m);
            kernels[m].sums_slices_of = Some(k);
        }
    }
    let plan = plan::plan(g, &kernels, &kernel_of, page, &unstored);
    for (k, &b) in &plan.workspace {
        kernels[*k].workspace = Some(b);
        if let Some(m) = kernels[*k].summed_by {
            kernels[m].workspace = Some(b);
        }
    }
    for k in kernels.iter_mut() {
        let inputs = kernel_reads(g, &k.nodes);
        k.inputs = inputs.iter().map(|&i| plan.location(i)).collect();
        k.outputs = k.nodes.iter().map(|&n| plan.location(n)).collect();
        let size = |n: &NodeId| (g.shape(*n).numel() * g.dtype(*n).size_bytes()) as u64;
        k.bytes = inputs.iter().map(size).sum::<u64>() + k.nodes.iter().map(size).sum::<u64>();
        // A split kernel writes its partial results and reads them back.
        k.bytes += k.workspace.map_or(0, |b| 2 * plan.buffers[b].bytes);
        // Two reductions in turn each read what they both read.
        if let Some(i) = k.chain {
            let first = kernel_reads(g, &k.nodes[..i]);
            k.bytes += kernel_reads(g, &k.nodes[i..]).iter().filter(|n| first.contains(n)).map(size).sum::<u64>();
        }
    }
    // A map adding up a split sum's slices reads them once (counted once: the split kernel
    // writes them) rather than the sum, and stores the sum, which the split kernel never
    // writes.
    for m in 0..kernels.len() {
        let (Some(k), Some(ws)) = (kernels[m].sums_slices_of, kernels[m].workspace) else { continue };
        let sum = kernels[k].nodes[0];
        let (sum_at, ws_bytes) = (plan.location(sum), plan.buffers[ws].bytes);
        for i in kernels[m].inputs.iter_mut().filter(|i| **i == sum_at) {
            *i = format!("b{ws}");
        }
        kernels[m].outputs.push(sum_at);
        kernels[m].bytes -= ws_bytes;
        kernels[k].bytes -= ws_bytes + (g.shape(sum).numel() * g.dtype(sum).size_bytes()) as u64;
    }
    let schedule = Schedule {
        launches: kernels.iter().map(Kernel::launches).sum(),
        optimizer_launches: kernels.iter().filter(|k| k.phase.is_optimizer()).map(Kernel::launches).sum(),
        bytes_moved: kernels.iter().map(|k| k.bytes).sum(),
        peak_memory_bytes: plan.peak_bytes,
        param_count,
        page_bytes: plan.page,
        sums_in_readers,
        kernels,
        locations: plan.loc.iter().map(|(&n, &l)| (n, l)).collect(),
        buffers: plan.buffers,
    };
    Compiled { fused: fused.graph, phases: fused.phases, schedule, report: fused.report, labels: fused.labels }
}

/// Puts each pair of [`reduce::chains`] in one kernel (`Kernel::chain`), renumbering the
/// kernels and `kernel_of`.
fn merge_chains(g: &Graph, kernels: &mut Vec<Kernel>, kernel_of: &mut BTreeMap<NodeId, usize>) {
    let chains: BTreeSet<usize> = reduce::chains(g, kernels).into_iter().collect();
    // Old kernel index -> new: the second of each pair joins the first.
    let mut to = Vec::with_capacity(kernels.len());
    for k in 0..kernels.len() {
        let joins = k > 0 && chains.contains(&(k - 1));
        to.push(if joins { to[k - 1] } else { to.last().map_or(0, |&t| t + 1) });
    }
    for &a in chains.iter().rev() {
        let b = kernels.remove(a + 1);
        let k = &mut kernels[a];
        k.chain = Some(k.nodes.len());
        k.name = "fused_reduce_chain".into();
        k.nodes.extend(b.nodes);
        k.body.extend(b.body);
        k.phase = k.phase.max(b.phase);
    }
    for (i, k) in kernels.iter_mut().enumerate() {
        k.id = i;
    }
    for k in kernel_of.values_mut() {
        *k = to[*k];
    }
}

impl Schedule {
    /// Launches per phase.
    pub fn launches_by_phase(&self) -> BTreeMap<Phase, usize> {
        let mut m = BTreeMap::new();
        for k in &self.kernels {
            *m.entry(k.phase).or_default() += k.launches();
        }
        m
    }

    /// The element offset in the pool of kernel `k`'s workspace (a split kernel's).
    pub fn workspace_offset(&self, k: &Kernel) -> Option<usize> {
        k.workspace.map(|b| match self.buffers[b].kind {
            BufferKind::Temp { offset, .. } => offset as usize / 4,
            BufferKind::Persistent(_) => 0,
        })
    }

    /// The kernels of one phase.
    pub fn phase(&self, p: Phase) -> Vec<&Kernel> {
        self.kernels.iter().filter(|k| k.phase == p).collect()
    }
}

/// The readable text form: a summary, the buffers, then one line per kernel.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        let split = |sums: bool| self.kernels.iter().filter(|k| k.split > 1 && k.name.starts_with("fused_reduce") == sums).count();
        let parts: Vec<String> = [(split(false), "GEMM"), (split(true), "sum")]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} split {what}{}", if *n == 1 { "" } else { "s" }))
            .collect();
        let kernels = if parts.is_empty() { String::new() } else { format!(" in {} kernels ({})", self.kernels.len(), parts.join(", ")) };
        let _ = writeln!(
            s,
            "schedule: {} launches ({} optimizer){kernels}, {} bytes moved, peak memory {} bytes, {} parameters",
            self.launches, self.optimizer_launches, self.bytes_moved, self.peak_memory_bytes, self.param_count
        );
        for b in &self.buffers {
            let _ = writeln!(s, "  {b}");
        }
        for k in &self.kernels {
            let split = match (k.workspace, k.summed_by, k.sums_slices_of) {
                (Some(b), Some(m), _) => format!(" split {} (workspace b{b}, summed in k{m})", k.split),
                (Some(_), None, Some(s)) => format!(" (sums the slices of k{s})"),
                (Some(b), None, None) => format!(" split {} (workspace b{b})", k.split),
                _ => String::new(),
            };
            let _ = writeln!(s, "k{} [{}] {}({}) -> {}{split}", k.id, k.phase, k.name, k.inputs.join(", "), k.outputs.join(", "));
            for line in &k.body {
                let _ = writeln!(s, "      {line}");
            }
        }
        f.write_str(&s)
    }
}

/// The slices of the kernel computing `id`: a split GEMM's or a split sum's (1: not split).
pub fn split_of(g: &Graph, id: NodeId) -> usize {
    gemm::split_of(g, id).max(reduce::split_of(g, id))
}

/// Workspace elements (f32) of the kernel computing `id` (0: none).
pub fn workspace_len(g: &Graph, id: NodeId) -> usize {
    gemm::workspace_len(g, id).max(reduce::workspace_len(g, id))
}

/// Whether an output of the fused graph is read by the caller after the step.
pub(crate) fn is_value_output(g: &Graph, id: NodeId) -> bool {
    g.outputs().iter().any(|o| o.node == id && o.kind == OutputKind::Value)
}

/// Fuses and schedules `step`, its temporaries laid out as one pool; with `rewrite` off the
/// program stays one op per kernel.
pub fn compile_step(step: &Step, rewrite: bool) -> Result<Compiled, crate::IrError> {
    let fused = crate::egraph::fuse(step, &crate::egraph::DEFAULT_LIMITS, rewrite)?;
    Ok(schedule(fused, step.arena.len, None, true))
}

/// [`compile_step`] with the pool laid out in pages of `page` bytes (see [`Compiled::paged`]).
pub fn compile_step_paged(step: &Step, rewrite: bool, page: u64) -> Result<Compiled, crate::IrError> {
    let fused = crate::egraph::fuse(step, &crate::egraph::DEFAULT_LIMITS, rewrite)?;
    Ok(schedule(fused, step.arena.len, Some(page_size(page)), true))
}

/// `page` rounded down to a multiple of [`POOL_ALIGN`], at least that.
fn page_size(page: u64) -> u64 {
    (page - page % POOL_ALIGN).max(POOL_ALIGN)
}

impl Compiled {
    /// The same kernels with the pool of temporaries laid out in pages of `page` bytes
    /// (rounded down to [`POOL_ALIGN`], at least that): for a device that binds at most that
    /// much per buffer and so holds the pool as one buffer per page. A temporary that fits in
    /// a page crosses no page boundary; the peak may grow by what the page ends leave unused
    /// (at most a few MB: ResNet-18's SAM step at batch 128 in 128 MiB pages, 2.6 MB).
    pub fn paged(&self, page: u64) -> Compiled {
        self.laid_out(Some(page), self.schedule.sums_in_readers)
    }

    /// The same kernels laid out again: the pool as one (`page` `None`) or in pages of `page`
    /// bytes, with split sums' slices added up by their readers or not (never where the
    /// rewriter was off).
    pub fn laid_out(&self, page: Option<u64>, sums_in_readers: bool) -> Compiled {
        let fused = Fused { graph: self.fused.clone(), phases: self.phases.clone(), report: self.report.clone(), labels: self.labels.clone() };
        schedule(fused, self.schedule.param_count, page.map(page_size), sums_in_readers)
    }
}
