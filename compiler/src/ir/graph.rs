//! The IR graph: a petgraph `StableDiGraph` of typed nodes, with named outputs.

use super::infer::infer;
use super::op::{BinaryOp, CmpOp, Op, ReduceOp, UnaryOp};
use super::shape::{DType, Shape, TensorType};
use crate::error::IrError;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// A node of the graph. Displays as `%7`, as in the text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub(crate) NodeIndex);

impl NodeId {
    pub fn index(self) -> usize {
        self.0.index()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0.index())
    }
}

/// One value of the program: the op that computes it and its type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
}

/// An edge from an operand to its user; `position` is the operand's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operand {
    pub position: usize,
}

/// What a graph output means to whoever runs the graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputKind {
    /// A value the caller reads (loss, accuracy, a gradient).
    Value,
    /// The next value of a `State` or `Param` leaf (parameters, optimizer state, BatchNorm
    /// running statistics).
    StateUpdate { state: NodeId },
}

/// A named result of the graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub name: String,
    pub node: NodeId,
    pub kind: OutputKind,
}

/// A program in plateau's IR.
///
/// Nodes are only ever appended, and an op's operands must exist before it, so node index
/// order is a topological order. Structurally identical nodes are shared (hash-consing), so
/// passes that rebuild a value get the existing node back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Graph {
    graph: StableDiGraph<Node, Operand>,
    outputs: Vec<Output>,
    #[serde(skip)]
    interned: HashMap<String, NodeId>,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a leaf (`input`, `param`, `state`, `scalar` or `const`) of the given type.
    pub fn leaf(&mut self, op: Op, dtype: DType, shape: impl Into<Shape>) -> Result<NodeId, IrError> {
        let shape = shape.into();
        if !op.is_leaf() {
            return Err(IrError::Invalid { op: op.to_string(), reason: "not a leaf".into() });
        }
        if let (Some(kind), Some(name)) = (leaf_kind(&op), leaf_name(&op)) {
            if self.find_leaf(kind, name).is_some() {
                return Err(IrError::DuplicateLeaf { kind, name: name.to_string() });
            }
        }
        if let Op::Const { value } = op {
            if !shape.0.is_empty() {
                return Err(IrError::Invalid { op: op.to_string(), reason: "constants have shape []".into() });
            }
            let key = format!("const {:x} {dtype}", value.to_bits());
            if let Some(&id) = self.interned.get(&key) {
                return Ok(id);
            }
            let id = NodeId(self.graph.add_node(Node { op, ty: TensorType { dtype, shape } }));
            self.interned.insert(key, id);
            return Ok(id);
        }
        Ok(NodeId(self.graph.add_node(Node { op, ty: TensorType { dtype, shape } })))
    }

    /// Adds `op` applied to `operands`, inferring its type; returns the existing node when an
    /// identical one is already in the graph.
    pub fn add(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId, IrError> {
        let types = operands
            .iter()
            .map(|&o| self.try_node(o).map(|n| n.ty.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let ty = infer(&op, &types)?;
        let key = format!("{op:?} {:?}", operands.iter().map(|o| o.index()).collect::<Vec<_>>());
        if let Some(&id) = self.interned.get(&key) {
            return Ok(id);
        }
        let id = NodeId(self.graph.add_node(Node { op, ty }));
        for (position, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o.0, id.0, Operand { position });
        }
        self.interned.insert(key, id);
        Ok(id)
    }

    pub fn try_node(&self, id: NodeId) -> Result<&Node, IrError> {
        self.graph.node_weight(id.0).ok_or(IrError::UnknownNode(id))
    }

    /// The node `id`. Panics on an id from another graph.
    pub fn node(&self, id: NodeId) -> &Node {
        self.graph.node_weight(id.0).expect("invariant: node ids come from this graph")
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.node(id).ty
    }

    pub fn shape(&self, id: NodeId) -> &Shape {
        &self.node(id).ty.shape
    }

    pub fn dtype(&self, id: NodeId) -> DType {
        self.node(id).ty.dtype
    }

    /// The operands of `id`, in position order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<_> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (e.weight().position, NodeId(e.source())))
            .collect();
        edges.sort();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// The nodes that use `id`, in index order, each once.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let set: BTreeSet<NodeId> =
            self.graph.edges_directed(id.0, Direction::Outgoing).map(|e| NodeId(e.target())).collect();
        set.into_iter().collect()
    }

    /// All nodes in index order, which is a topological order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.graph.node_indices().map(NodeId)
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// The node of output `name`.
    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.node)
    }

    /// Declares `node` a graph output named `name`.
    pub fn add_output(&mut self, name: impl Into<String>, node: NodeId, kind: OutputKind) -> Result<(), IrError> {
        let name = name.into();
        self.try_node(node)?;
        if self.outputs.iter().any(|o| o.name == name) {
            return Err(IrError::DuplicateLeaf { kind: "output", name });
        }
        if let OutputKind::StateUpdate { state } = &kind {
            let st = self.try_node(*state)?;
            if !matches!(st.op, Op::State { .. } | Op::Param { .. }) || st.ty != self.node(node).ty {
                return Err(IrError::Invalid {
                    op: format!("update {name}"),
                    reason: format!("{} is not a state of type {}", state, self.node(node).ty),
                });
            }
        }
        self.outputs.push(Output { name, node, kind });
        Ok(())
    }

    /// The leaf of `kind` ("input", "param", "state", "scalar") named `name`.
    pub fn find_leaf(&self, kind: &str, name: &str) -> Option<NodeId> {
        self.node_ids().find(|&id| {
            let op = &self.node(id).op;
            leaf_kind(op) == Some(kind) && leaf_name(op) == Some(name)
        })
    }

    /// All leaves of `kind`, in index order.
    pub fn leaves(&self, kind: &str) -> Vec<NodeId> {
        self.node_ids().filter(|&id| leaf_kind(&self.node(id).op) == Some(kind)).collect()
    }

    /// Rebuilds the hash-consing table (after deserialization).
    pub fn reintern(&mut self) {
        self.interned.clear();
        for id in self.node_ids().collect::<Vec<_>>() {
            let node = self.node(id);
            let key = match node.op {
                Op::Const { value } => format!("const {:x} {}", value.to_bits(), node.ty.dtype),
                _ if node.op.is_leaf() => continue,
                _ => format!("{:?} {:?}", node.op, self.operands(id).iter().map(|o| o.index()).collect::<Vec<_>>()),
            };
            self.interned.entry(key).or_insert(id);
        }
    }

    pub(crate) fn petgraph(&self) -> &StableDiGraph<Node, Operand> {
        &self.graph
    }

    // ---- builders used by passes and the frontend ----------------------------

    /// A constant of the given value broadcast to `shape`.
    pub fn full(&mut self, value: f64, dtype: DType, shape: &Shape) -> Result<NodeId, IrError> {
        let c = self.leaf(Op::Const { value }, dtype, Shape::scalar())?;
        if shape.rank() == 0 {
            return Ok(c);
        }
        self.add(Op::Broadcast { shape: shape.clone() }, &[c])
    }

    /// A constant shaped and typed like `like`.
    pub fn full_like(&mut self, value: f64, like: NodeId) -> Result<NodeId, IrError> {
        let ty = self.ty(like).clone();
        self.full(value, ty.dtype, &ty.shape)
    }

    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId, IrError> {
        self.add(Op::Unary(op), &[x])
    }

    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.add(Op::Binary(op), &[a, b])
    }

    pub fn compare(&mut self, op: CmpOp, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.add(Op::Compare(op), &[a, b])
    }

    pub fn select(&mut self, cond: NodeId, a: NodeId, b: NodeId) -> Result<NodeId, IrError> {
        self.add(Op::Select, &[cond, a, b])
    }

    /// `x * value`, with the constant broadcast to `x`'s shape.
    pub fn scale(&mut self, x: NodeId, value: f64) -> Result<NodeId, IrError> {
        let c = self.full_like(value, x)?;
        self.binary(BinaryOp::Mul, x, c)
    }

    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axes: &[usize]) -> Result<NodeId, IrError> {
        self.add(Op::Reduce { op, axes: axes.to_vec() }, &[x])
    }

    /// The sum of every element of `x`, as a scalar of shape `[]`.
    pub fn sum_all(&mut self, x: NodeId) -> Result<NodeId, IrError> {
        let rank = self.shape(x).rank();
        let axes: Vec<usize> = (0..rank).collect();
        let s = if rank == 0 { x } else { self.reduce(ReduceOp::Sum, x, &axes)? };
        self.reshape(s, Shape::scalar())
    }

    /// Reshape; returns `x` itself when the shape already matches.
    pub fn reshape(&mut self, x: NodeId, shape: impl Into<Shape>) -> Result<NodeId, IrError> {
        let shape = shape.into();
        if *self.shape(x) == shape {
            return Ok(x);
        }
        self.add(Op::Reshape { shape }, &[x])
    }

    /// Broadcast; returns `x` itself when the shape already matches.
    pub fn broadcast(&mut self, x: NodeId, shape: &Shape) -> Result<NodeId, IrError> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        self.add(Op::Broadcast { shape: shape.clone() }, &[x])
    }

    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> Result<NodeId, IrError> {
        self.add(Op::Permute { perm: perm.to_vec() }, &[x])
    }
}

/// The kind of a named leaf: "input", "param", "state" or "scalar".
pub fn leaf_kind(op: &Op) -> Option<&'static str> {
    match op {
        Op::Input { .. } => Some("input"),
        Op::Param { .. } => Some("param"),
        Op::State { .. } => Some("state"),
        Op::Scalar { .. } => Some("scalar"),
        _ => None,
    }
}

/// The name of a named leaf.
pub fn leaf_name(op: &Op) -> Option<&str> {
    match op {
        Op::Input { name } | Op::Param { name } | Op::State { name } | Op::Scalar { name } => Some(name),
        _ => None,
    }
}
