//! The e-graph language: IR ops (elementwise ones already as one-instruction fused programs),
//! plus multi-output kernels and their projections. Ops are interned in the analysis, so an
//! e-node is a small `(op id, children)` pair.

use crate::ir::{Op, Program, TensorType};
use egg::{DidMerge, EGraph, Id, Language};
use std::collections::HashMap;

/// What an e-node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum EOp {
    /// A leaf of the step (input, parameter, state, scalar, constant) with its type.
    Leaf { op: Op, ty: TensorType },
    /// An IR op. Elementwise work appears as `Op::Fused` (single output, group 0) and
    /// reductions as `Op::FusedReduce`.
    Ir(Op),
    /// Several elementwise outputs of one kernel over one iteration space; its e-class is a
    /// tuple, read through `Proj`.
    Multi { program: Program, types: Vec<TensorType> },
    /// A sum that also writes every value of its prologue: output 0 is the reduction over
    /// `axes`, output 1 the map of `program` over `space`. Its e-class is a tuple.
    ReduceMap { program: Program, axes: Vec<usize>, space: TensorType },
    /// A kernel that takes an epilogue (`op`: see [`crate::ir::Op::takes_epilogue`]) and a map
    /// over its output in one kernel: output 0 is `op`'s, output 1 the map `program`'s, which
    /// reads `op`'s output as its operand 0. The children are `op`'s operands, then the
    /// program's other operands. Its e-class is a tuple.
    WithEpilogue { op: Op, program: Program, types: Vec<TensorType> },
    /// Several sums over one iteration space in one kernel: output `i` is the sum over `axes`
    /// of the program's output `i` over `space`. Its e-class is a tuple.
    MultiSum { program: Program, axes: Vec<usize>, space: TensorType },
    /// Output `i` of a `Multi`, a `ReduceMap`, a `WithEpilogue` or a `MultiSum`.
    Proj(u32),
}

/// The types of a tuple e-node's outputs.
pub fn tuple_types(op: &EOp) -> Option<Vec<TensorType>> {
    match op {
        EOp::Multi { types, .. } | EOp::WithEpilogue { types, .. } => Some(types.clone()),
        EOp::ReduceMap { axes, space, .. } => Some(vec![reduced(space, axes), space.clone()]),
        EOp::MultiSum { program, axes, space } => Some(vec![reduced(space, axes); program.outputs.len()]),
        _ => None,
    }
}

/// The type of a reduction over `axes` of `space` (reduced axes kept with size 1).
fn reduced(space: &TensorType, axes: &[usize]) -> TensorType {
    let mut dims = space.shape.0.clone();
    for &a in axes {
        dims[a] = 1;
    }
    TensorType { dtype: space.dtype, shape: crate::ir::Shape(dims) }
}

/// Whether the op is a kernel with several outputs (its e-class is a tuple, read through
/// `Proj`).
pub fn is_tuple(op: &EOp) -> bool {
    matches!(op, EOp::Multi { .. } | EOp::ReduceMap { .. } | EOp::WithEpilogue { .. } | EOp::MultiSum { .. })
}

/// An interned op with its children.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ENode {
    pub op: u32,
    pub children: Vec<Id>,
}

impl Language for ENode {
    type Discriminant = (u32, usize);

    fn discriminant(&self) -> Self::Discriminant {
        (self.op, self.children.len())
    }

    fn matches(&self, other: &Self) -> bool {
        self.op == other.op && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

/// The shape/dtype analysis, which also owns the op table. Tuple classes (`Multi`) have no
/// single type.
#[derive(Default)]
pub struct Types {
    ops: Vec<EOp>,
    index: HashMap<String, u32>,
}

impl Types {
    /// The id of `op`, interning it on first use (ids follow first use: deterministic).
    pub fn intern(&mut self, op: EOp) -> u32 {
        let key = format!("{op:?}");
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        self.ops.push(op);
        let i = self.ops.len() as u32 - 1;
        self.index.insert(key, i);
        i
    }

    pub fn op(&self, id: u32) -> &EOp {
        &self.ops[id as usize]
    }
}

pub type EG = EGraph<ENode, Types>;

impl egg::Analysis<ENode> for Types {
    type Data = Option<TensorType>;

    fn make(egraph: &mut EG, enode: &ENode, _id: Id) -> Self::Data {
        let ch = |i: usize| egraph[enode.children[i]].data.clone();
        match egraph.analysis.op(enode.op) {
            EOp::Leaf { ty, .. } => Some(ty.clone()),
            EOp::Multi { .. } | EOp::ReduceMap { .. } | EOp::WithEpilogue { .. } | EOp::MultiSum { .. } => None,
            EOp::Proj(i) => egraph[enode.children[0]].nodes.iter().find_map(|n| tuple_types(egraph.analysis.op(n.op)).and_then(|t| t.get(*i as usize).cloned())),
            EOp::Ir(op) => {
                let types: Option<Vec<TensorType>> = (0..enode.children.len()).map(ch).collect();
                types.and_then(|types| crate::ir::infer(op, &types).ok())
            }
        }
    }

    fn merge(&mut self, a: &mut Self::Data, b: Self::Data) -> DidMerge {
        match (a.is_none(), b) {
            (true, Some(b)) => {
                *a = Some(b);
                DidMerge(true, false)
            }
            (false, Some(_)) => DidMerge(false, false),
            (_, None) => DidMerge(false, a.is_some()),
        }
    }
}

/// The type of class `id`; every class but a tuple has one.
pub fn ty(eg: &EG, id: Id) -> Option<&TensorType> {
    eg[id].data.as_ref()
}

