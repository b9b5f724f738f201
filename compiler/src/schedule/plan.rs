//! The memory plan: every value gets a place in a buffer; leaves are persistent buffers,
//! kernel results live in a pool from their producer to their last reader. Views (reshapes,
//! contiguous slices, first-axis concatenations) take no memory of their own, an elementwise
//! kernel may write over an operand that dies with it, and a state's new value overwrites
//! the state once nothing reads the old one. A split GEMM or sum gets a workspace for its
//! partial results, live only during its kernel (or until the map that adds up a split sum's
//! slices). The pool is laid out as one, or in pages (for
//! a device that binds less, `Compiled::paged`) that no page-sized temporary straddles, so the
//! device can hold it as one buffer per page.

use super::{is_value_output, Kernel};
use crate::ir::{leaf_kind, leaf_name, Graph, NodeId, Op, OutputKind};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Alignment of every placement in the temporary pool, in bytes (one four-f32 vector).
pub const POOL_ALIGN: u64 = 16;

/// The page size of a pool laid out for any device: wgpu guarantees 128 MiB per storage
/// binding. A pool laid out in pages has no temporary that fits in a page straddle a page
/// boundary, so a device that cannot bind the whole pool at once can hold it as one buffer per
/// page.
pub const POOL_PAGE: u64 = 128 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum BufferKind {
    /// A leaf's storage (`param:params`, `state:momentum`, `input:x`, `scalar:lr`, `const`):
    /// allocated for the whole run.
    Persistent(String),
    /// Pool memory at `offset`, live from kernel `from` to kernel `to`.
    Temp { offset: u64, from: usize, to: usize },
}

#[derive(Clone, Debug, Serialize)]
pub struct Buffer {
    pub id: usize,
    pub bytes: u64,
    pub kind: BufferKind,
}

impl fmt::Display for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BufferKind::Persistent(what) => write!(f, "b{} {} bytes: {}", self.id, self.bytes, what),
            BufferKind::Temp { offset, from, to } => write!(f, "b{} {} bytes: pool+{} live k{}..k{}", self.id, self.bytes, offset, from, to),
        }
    }
}

pub(super) struct Plan {
    pub buffers: Vec<Buffer>,
    /// (buffer, element offset) of every node.
    pub loc: HashMap<NodeId, (usize, usize)>,
    /// The workspace buffer of each split-GEMM kernel.
    pub workspace: BTreeMap<usize, usize>,
    pub peak_bytes: u64,
    /// `None`: one pool, no page boundaries.
    pub page: Option<u64>,
}

impl Plan {
    pub fn location(&self, n: NodeId) -> String {
        match self.loc.get(&n) {
            Some(&(b, 0)) => format!("b{b}"),
            Some(&(b, off)) => format!("b{b}+{off}"),
            None => format!("{n}"),
        }
    }
}

fn bytes(g: &Graph, n: NodeId) -> u64 {
    (g.shape(n).numel() * g.dtype(n).size_bytes()) as u64
}

pub(super) fn plan(g: &Graph, kernels: &[Kernel], kernel_of: &BTreeMap<NodeId, usize>, page: Option<u64>, unstored: &BTreeSet<NodeId>) -> Plan {
    let end = kernels.len();
    // The kernel that first needs each node's storage: its producer, or for a view the
    // producer of what it views.
    let mut loc: HashMap<NodeId, (usize, usize)> = HashMap::new();
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut first: Vec<usize> = Vec::new();
    let mut last: Vec<usize> = Vec::new();
    let new_buffer = |buffers: &mut Vec<Buffer>, first: &mut Vec<usize>, last: &mut Vec<usize>, bytes: u64, kind: BufferKind, at: usize| {
        buffers.push(Buffer { id: buffers.len(), bytes, kind });
        first.push(at);
        last.push(at);
        buffers.len() - 1
    };
    // Concat parts are written in place into the concatenation.
    let mut part_of: HashMap<NodeId, (NodeId, usize)> = HashMap::new();
    for id in g.node_ids() {
        if let Op::Concat { axis: 0, .. } = g.node(id).op {
            let mut off = 0;
            for p in g.operands(id) {
                // The producer writes its part directly, through any reshapes.
                let mut src = p;
                while let Op::Reshape { .. } = g.node(src).op {
                    src = g.operands(src)[0];
                }
                part_of.entry(src).or_insert((id, off));
                off += g.shape(p).numel();
            }
        }
    }
    let state_of: HashMap<NodeId, NodeId> = g
        .outputs()
        .iter()
        .filter_map(|o| match o.kind {
            OutputKind::StateUpdate { state } => Some((o.node, state)),
            OutputKind::Value => None,
        })
        .collect();
    // Last kernel reading each node (views forward their readers to their source).
    let mut reads: HashMap<NodeId, usize> = HashMap::new();
    for (k, kernel) in kernels.iter().enumerate() {
        for o in super::kernel_reads(g, &kernel.nodes) {
            let e = reads.entry(o).or_insert(k);
            *e = (*e).max(k);
        }
    }
    for id in g.node_ids().collect::<Vec<_>>().into_iter().rev() {
        if !super::is_kernel(g, id) && !g.node(id).op.is_leaf() {
            if let Some(&r) = reads.get(&id) {
                for o in g.operands(id) {
                    let e = reads.entry(o).or_insert(r);
                    *e = (*e).max(r);
                }
            }
        }
    }

    for id in g.node_ids() {
        // A GEMM output that only its epilogue reads, inside its kernel, takes no memory.
        if unstored.contains(&id) {
            continue;
        }
        let node = g.node(id);
        let at = kernel_of.get(&id).copied().unwrap_or(0);
        let placed = if node.op.is_leaf() {
            let what = match (leaf_kind(&node.op), leaf_name(&node.op)) {
                (Some(k), Some(n)) => format!("{k}:{n}"),
                _ => "const".to_string(),
            };
            (new_buffer(&mut buffers, &mut first, &mut last, bytes(g, id), BufferKind::Persistent(what), 0), 0)
        } else if !super::is_kernel(g, id) {
            let src = g.operands(id);
            match &node.op {
                Op::Slice { start, .. } => {
                    let (b, off) = loc[&src[0]];
                    let strides = g.shape(src[0]).strides();
                    (b, off + start.iter().zip(&strides).map(|(s, st)| s * st).sum::<usize>())
                }
                Op::Concat { .. } => match loc.get(&id) {
                    Some(&l) => l,
                    None => (new_buffer(&mut buffers, &mut first, &mut last, bytes(g, id), BufferKind::Temp { offset: 0, from: 0, to: 0 }, 0), 0),
                },
                _ => loc[&src[0]],
            }
        } else if let Some(&(concat, off)) = part_of.get(&id) {
            let b = match loc.get(&concat) {
                Some(&(b, base)) => (b, base + off),
                None => {
                    let b = new_buffer(&mut buffers, &mut first, &mut last, bytes(g, concat), BufferKind::Temp { offset: 0, from: at, to: at }, at);
                    loc.insert(concat, (b, 0));
                    (b, off)
                }
            };
            b
        } else {
            let elementwise = matches!(node.op, Op::Fused { .. });
            // An epilogue writes each element where it reads its operands, like a map, but its
            // op's kernel reads the op's operands anywhere: it may overwrite a state only the
            // epilogue reads (a running statistic after its sum).
            let epilogue_of = match node.op {
                Op::Epilogue { .. } => Some(g.operands(id)[0]),
                _ => None,
            };
            let same = |b: usize| buffers[b].bytes == bytes(g, id);
            // A state's new value overwrites the state when nothing reads the old one later.
            let state_slot = state_of.get(&id).and_then(|s| {
                let (b, off) = loc[s];
                let mapped = elementwise || epilogue_of.is_some_and(|op| !reads_through_views(g, op).contains(s));
                (mapped && off == 0 && same(b) && reads.get(s).is_none_or(|&r| r <= at) && last[b] <= at).then_some((b, 0))
            });
            // Otherwise write over an operand's temporary that dies here.
            let in_place = state_slot.or_else(|| {
                if !elementwise {
                    return None;
                }
                g.operands(id).into_iter().find_map(|o| {
                    let &(b, off) = loc.get(&o)?;
                    let temp = matches!(buffers[b].kind, BufferKind::Temp { .. });
                    // The operand itself fills the buffer (not a smaller view at its start), so
                    // every element is read at the position it is written.
                    (temp && off == 0 && same(b) && bytes(g, o) == bytes(g, id) && last[b] <= at && !is_value_output(g, o) && !state_of.contains_key(&o))
                        .then_some((b, 0))
                })
            });
            match in_place {
                Some(l) => l,
                None => (new_buffer(&mut buffers, &mut first, &mut last, bytes(g, id), BufferKind::Temp { offset: 0, from: at, to: at }, at), 0),
            }
        };
        loc.insert(id, placed);
        let b = placed.0;
        let mut until = reads.get(&id).copied().unwrap_or(at).max(at);
        if is_value_output(g, id) || state_of.contains_key(&id) {
            until = end;
        }
        last[b] = last[b].max(until);
        if matches!(buffers[b].kind, BufferKind::Temp { .. }) && first[b] > at && kernel_of.contains_key(&id) {
            first[b] = at;
        }
    }

    // A split kernel's partial results live only while it runs.
    let mut workspace = BTreeMap::new();
    for (k, kernel) in kernels.iter().enumerate() {
        let len = kernel.nodes.iter().map(|&n| super::workspace_len(g, n)).max().unwrap_or(0);
        if len > 0 {
            let b = new_buffer(&mut buffers, &mut first, &mut last, (len * g.dtype(kernel.nodes[0]).size_bytes()) as u64, BufferKind::Temp { offset: 0, from: k, to: k }, k);
            // Until the kernel that adds up the slices, when that is not this one.
            last[b] = kernel.summed_by.unwrap_or(k);
            workspace.insert(k, b);
        }
    }

    // Offline placement: buffers in some order (sizes rounded up to `POOL_ALIGN`), each at the
    // lowest offset that no already-placed buffer with an overlapping lifetime occupies.
    // Lifetimes are inclusive: a buffer read by kernel k cannot share memory with one written
    // by kernel k. Greedy placement depends on the order, so four are tried (largest first,
    // earliest first on ties; earliest first; largest lifetime x size first; largest first,
    // latest to die first on ties) and the lowest peak kept, the first order on ties: the
    // result is never worse than largest-first alone.
    let temps: Vec<usize> = (0..buffers.len()).filter(|&b| matches!(buffers[b].kind, BufferKind::Temp { .. })).collect();
    let place = |order: &[usize]| -> (u64, Vec<u64>) {
        let mut placed: Vec<(u64, u64, usize, usize)> = Vec::new(); // (offset, bytes, first, last)
        let mut offsets = vec![0u64; buffers.len()];
        let mut pool_peak = 0u64;
        for &b in order {
            // Every placement starts on a 16-byte boundary, so kernels can move four f32 at once.
            let size = buffers[b].bytes.max(1).next_multiple_of(POOL_ALIGN);
            let conflicts: Vec<(u64, u64)> =
                placed.iter().filter(|&&(_, _, f, l)| f <= last[b] && first[b] <= l).map(|&(o, s, _, _)| (o, s)).collect();
            // The lowest offset where the buffer overlaps no live buffer (and, if it fits in a
            // page, crosses no page boundary): from 0, jump past every overlap (no position
            // before the end of an overlapping buffer can be free), or to the next page.
            let mut offset = 0u64;
            loop {
                if let Some(page) = page.filter(|&p| size <= p) {
                    if offset / page != (offset + size - 1) / page {
                        offset = (offset / page + 1) * page;
                    }
                }
                match conflicts.iter().filter(|&&(o, s)| o < offset + size && offset < o + s).map(|&(o, s)| o + s).max() {
                    Some(end) => offset = end,
                    None => break,
                }
            }
            placed.push((offset, size, first[b], last[b]));
            offsets[b] = offset;
            pool_peak = pool_peak.max(offset + buffers[b].bytes);
        }
        (pool_peak, offsets)
    };
    let mut orders: Vec<Vec<usize>> = vec![temps.clone(), temps.clone(), temps.clone(), temps];
    orders[0].sort_by_key(|&b| (std::cmp::Reverse(buffers[b].bytes), first[b], b));
    orders[1].sort_by_key(|&b| (first[b], std::cmp::Reverse(buffers[b].bytes), b));
    orders[2].sort_by_key(|&b| (std::cmp::Reverse(buffers[b].bytes.saturating_mul((last[b] - first[b] + 1) as u64)), b));
    orders[3].sort_by_key(|&b| (std::cmp::Reverse(buffers[b].bytes), std::cmp::Reverse(last[b]), b));
    let (pool_peak, offsets) = orders.iter().map(|o| place(o)).min_by_key(|p| p.0).expect("four orders");
    for &b in &orders[0] {
        buffers[b].kind = BufferKind::Temp { offset: offsets[b], from: first[b], to: last[b].min(end.saturating_sub(1)) };
    }
    let persistent: u64 = buffers.iter().filter(|b| matches!(b.kind, BufferKind::Persistent(_))).map(|b| b.bytes).sum();
    Plan { buffers, loc, workspace, peak_bytes: persistent + pool_peak, page }
}

/// What node `id` reads, looking through the views between it and the kernels or leaves that
/// compute them (a parameter read as a slice of the arena reads the arena).
fn reads_through_views(g: &Graph, id: NodeId) -> Vec<NodeId> {
    through_views(g, g.operands(id))
}

/// `reads`, and what the views among them view, down to the kernels and leaves that hold them.
pub(super) fn through_views(g: &Graph, reads: Vec<NodeId>) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut stack = reads;
    while let Some(o) = stack.pop() {
        if out.contains(&o) {
            continue;
        }
        out.push(o);
        if !super::is_kernel(g, o) && !g.node(o).op.is_leaf() {
            stack.extend(g.operands(o));
        }
    }
    out
}
