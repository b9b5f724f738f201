//! Copying one graph into another, with some of its nodes replaced: how the step builder
//! instantiates a model's loss once per pass (at `w`, at `w + e`, per micro-batch).

use super::graph::{leaf_kind, leaf_name, Graph, NodeId};
use super::op::Op;
use crate::error::IrError;
use std::collections::HashMap;

impl Graph {
    /// Appends every node of `src` to this graph, except those in `subst`, which map to the
    /// given nodes of this graph. Named leaves not substituted are shared by kind and name
    /// (created when missing). Returns where each node of `src` went. Outputs are not copied.
    pub fn import(&mut self, src: &Graph, subst: &HashMap<NodeId, NodeId>) -> Result<HashMap<NodeId, NodeId>, IrError> {
        let mut map = HashMap::with_capacity(src.len());
        for id in src.node_ids() {
            let to = if let Some(&t) = subst.get(&id) {
                t
            } else {
                let node = src.node(id);
                if node.op.is_leaf() {
                    match (leaf_kind(&node.op), leaf_name(&node.op)) {
                        (Some(kind), Some(name)) => match self.find_leaf(kind, name) {
                            Some(existing) => existing,
                            None => self.leaf(node.op.clone(), node.ty.dtype, node.ty.shape.clone())?,
                        },
                        _ => self.leaf(node.op.clone(), node.ty.dtype, node.ty.shape.clone())?,
                    }
                } else {
                    let operands: Vec<NodeId> = src.operands(id).iter().map(|o| map[o]).collect();
                    self.add(node.op.clone(), &operands)?
                }
            };
            map.insert(id, to);
        }
        Ok(map)
    }
}

/// Whether an op is a named leaf of `kind`.
pub fn is_leaf_kind(op: &Op, kind: &str) -> bool {
    leaf_kind(op) == Some(kind)
}
