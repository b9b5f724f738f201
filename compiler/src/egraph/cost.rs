//! The cost model, in one place.
//!
//! A kernel's cost is the triple `(launches, bytes, arithmetic)`, compared
//! lexicographically: on a GPU a training step of small and mid-sized models is dominated by
//! kernel launches (each costs microseconds of latency and a full pass over memory), then
//! by the bytes moved (bandwidth-bound elementwise work), and only then by arithmetic.
//!
//! - A kernel (fused elementwise program, reduction, multi-output program, a sum that also
//!   writes its prologue as a map, several sums over one space, a GEMM with a map over its
//!   output as its epilogue, macro-op, copy)
//!   costs 1 launch, the bytes of its operand buffers plus its outputs (from the shape
//!   analysis; a broadcast operand is read from its own, smaller buffer), and its arithmetic
//!   (program length per element, or the flops of a macro-op), saturating.
//! - Views cost nothing: leaves, reshapes, contiguous slices (parameter views of the arena,
//!   micro-batches), concatenation along the first axis (each part is written in place into
//!   the concatenated buffer) and projections of a multi-output kernel.
//!
//! Extraction is DAG-aware: a class shared by several users is paid once.

use super::lang::{EOp, EG, ENode};
use crate::ir::{Op, Shape};
use std::ops::Add;

/// `(launches, bytes, arithmetic)`, compared lexicographically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cost {
    pub launches: u64,
    pub bytes: u64,
    pub arithmetic: u64,
}

impl Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            launches: self.launches.saturating_add(o.launches),
            bytes: self.bytes.saturating_add(o.bytes),
            arithmetic: self.arithmetic.saturating_add(o.arithmetic),
        }
    }
}

/// Whether a slice reads one contiguous range of its operand's buffer: every axis after the
/// last partial one is whole and every axis before it has extent 1.
pub fn slice_is_contiguous(shape: &Shape, start: &[usize], end: &[usize]) -> bool {
    match (0..shape.rank()).rev().find(|&i| !(start[i] == 0 && end[i] == shape.0[i])) {
        None => true,
        Some(last) => (0..last).all(|i| end[i] - start[i] == 1),
    }
}

/// Whether an e-node is a view (free) rather than a kernel.
pub fn is_view(eg: &EG, node: &ENode) -> bool {
    match eg.analysis.op(node.op) {
        EOp::Leaf { .. } | EOp::Proj(_) => true,
        EOp::Multi { .. } | EOp::ReduceMap { .. } | EOp::WithEpilogue { .. } | EOp::MultiSum { .. } => false,
        EOp::Ir(op) => match op {
            Op::Reshape { .. } => true,
            Op::Concat { axis, .. } => *axis == 0,
            Op::Slice { start, end } => match eg[node.children[0]].data.as_ref() {
                Some(t) => slice_is_contiguous(&t.shape, start, end),
                None => false,
            },
            _ => false,
        },
    }
}

fn bytes_of(eg: &EG, id: egg::Id) -> u64 {
    eg[id].data.as_ref().map(|t| (t.shape.numel() * t.dtype.size_bytes()) as u64).unwrap_or(0)
}

/// The arithmetic of a node that takes an epilogue, computing `out`: two operations per
/// multiply-add for a matmul, a sum's prologue and addition over its space, and for the others
/// (as before they could take an epilogue) their output's bytes.
fn gemm_arithmetic(eg: &EG, op: &Op, children: &[egg::Id], out: &crate::ir::TensorType) -> u64 {
    match op {
        Op::MatMul { .. } => {
            let k = eg[children[0]].data.as_ref().map(|t| t.shape.numel()).unwrap_or(0) as u64 / out.shape.0[0].max(1) as u64;
            (out.shape.numel() as u64).saturating_mul(2 * k)
        }
        Op::FusedReduce { program, space, .. } => (space.shape.numel() as u64).saturating_mul(program.arithmetic_len() as u64 + 1),
        _ => (out.shape.numel() * out.dtype.size_bytes()) as u64,
    }
}

/// The cost of running `node` itself (its operands are paid by their own classes).
pub fn node_cost(eg: &EG, node: &ENode, class: egg::Id) -> Cost {
    if is_view(eg, node) {
        return Cost::default();
    }
    let reads: u64 = node.children.iter().map(|&c| bytes_of(eg, c)).sum();
    let (writes, arithmetic) = match eg.analysis.op(node.op) {
        EOp::Multi { program, types } => {
            let n = types.first().map(|t| t.shape.numel()).unwrap_or(0) as u64;
            (types.iter().map(|t| (t.shape.numel() * t.dtype.size_bytes()) as u64).sum(), n.saturating_mul(program.arithmetic_len() as u64))
        }
        EOp::ReduceMap { program, space, .. } | EOp::MultiSum { program, space, .. } => {
            let types = super::lang::tuple_types(eg.analysis.op(node.op)).unwrap_or_default();
            let adds = program.outputs.len() as u64;
            (types.iter().map(|t| (t.shape.numel() * t.dtype.size_bytes()) as u64).sum(), (space.shape.numel() as u64).saturating_mul(program.arithmetic_len() as u64 + adds))
        }
        EOp::Ir(Op::Fused { program, ty, .. }) => (bytes_of(eg, class), (ty.shape.numel() as u64).saturating_mul(program.arithmetic_len() as u64)),
        EOp::Ir(Op::FusedReduce { program, space, .. }) => {
            (bytes_of(eg, class), (space.shape.numel() as u64).saturating_mul(program.arithmetic_len() as u64 + 1))
        }
        // Output 0 counts as written, though the schedule stores it only when something other
        // than the epilogue reads it (an overestimate the extractor shares with every choice
        // it compares); memory is not part of the cost.
        EOp::WithEpilogue { op: gemm, program, types } => {
            let out = &types[0];
            let gemm_arith = gemm_arithmetic(eg, gemm, &node.children, out);
            let map = (types[1].shape.numel() as u64).saturating_mul(program.arithmetic_len() as u64);
            (types.iter().map(|t| (t.shape.numel() * t.dtype.size_bytes()) as u64).sum(), gemm_arith.saturating_add(map))
        }
        EOp::Ir(op @ (Op::MatMul { .. } | Op::Conv2d(_))) => match eg[class].data.as_ref() {
            Some(out) => (bytes_of(eg, class), gemm_arithmetic(eg, op, &node.children, out)),
            None => (0, 0),
        },
        _ => (bytes_of(eg, class), bytes_of(eg, class)),
    };
    Cost { launches: 1, bytes: reads.saturating_add(writes), arithmetic }
}
