//! The verifier: checks every invariant a well-formed graph holds. A failure is always a
//! bug in plateau (the builders reject bad user input before a node exists).

use super::graph::{leaf_kind, leaf_name, Graph, OutputKind};
use super::infer::infer;
use super::op::Op;
use crate::error::IrError;
use std::collections::BTreeSet;

impl Graph {
    /// Checks operand counts and positions, re-infers every type, checks that operands come
    /// before their users (so index order is topological), that named leaves are unique and
    /// that outputs point at live nodes.
    pub fn verify(&self) -> Result<(), IrError> {
        let bad = |msg: String| Err(IrError::Invariant(msg));
        let mut names = BTreeSet::new();
        // The reduction of each group: sums sharing a kernel reduce one space the same way.
        let mut group_sums: std::collections::BTreeMap<u32, (crate::NodeId, (super::op::ReduceOp, Vec<usize>, super::shape::TensorType))> = std::collections::BTreeMap::new();
        let mut group_members: std::collections::BTreeMap<u32, Vec<crate::NodeId>> = std::collections::BTreeMap::new();
        let mut map_groups: BTreeSet<u32> = BTreeSet::new();
        for id in self.node_ids() {
            let node = self.node(id);
            let operands = self.operands(id);
            let mut positions: Vec<usize> = self
                .petgraph()
                .edges_directed(id.0, petgraph::Direction::Incoming)
                .map(|e| e.weight().position)
                .collect();
            positions.sort();
            if positions != (0..operands.len()).collect::<Vec<_>>() {
                return bad(format!("{id} has operand positions {positions:?}"));
            }
            if node.op.is_leaf() {
                if !operands.is_empty() {
                    return bad(format!("leaf {id} has operands"));
                }
                if let (Some(kind), Some(name)) = (leaf_kind(&node.op), leaf_name(&node.op)) {
                    if !names.insert((kind, name.to_string())) {
                        return bad(format!("{kind} `{name}` appears twice"));
                    }
                }
                continue;
            }
            for o in &operands {
                if o.index() >= id.index() {
                    return bad(format!("{id} uses {o}, which does not come before it"));
                }
            }
            // An epilogue runs in the kernel of operand 0, where that node is: an op that takes
            // epilogues, whose other operands are computed before it.
            if let Op::Epilogue { .. } = node.op {
                let of = operands[0];
                if !self.node(of).op.takes_epilogue() {
                    return bad(format!("epilogue {id} of {of}, whose `{}` takes none", self.node(of).op.mnemonic()));
                }
                if let Some(o) = operands[1..].iter().find(|o| o.index() >= of.index()) {
                    return bad(format!("epilogue {id} reads {o}, which does not come before {of}, whose kernel runs it"));
                }
            }
            if let Op::Fused { group, .. } = &node.op {
                map_groups.insert(*group);
            }
            if let Op::FusedReduce { op, axes, space, group, .. } = &node.op {
                if *group != 0 {
                    let members = group_members.entry(*group).or_default();
                    if let Some(m) = operands.iter().find(|o| members.contains(o)) {
                        return bad(format!("{id} reads {m}, which shares its kernel group g{group}"));
                    }
                    members.push(id);
                    let this = (*op, axes.clone(), space.clone());
                    match group_sums.get(group) {
                        Some((first, reduce)) if *reduce != this || *op != super::op::ReduceOp::Sum => {
                            return bad(format!("{id} shares kernel group g{group} with {first}, which is not a sum over the same space and axes"));
                        }
                        Some(_) => {}
                        None => {
                            group_sums.insert(*group, (id, this));
                        }
                    }
                }
            }
            let types: Vec<_> = operands.iter().map(|&o| self.node(o).ty.clone()).collect();
            let ty = infer(&node.op, &types).map_err(|e| IrError::Invariant(format!("{id}: {e}")))?;
            if ty != node.ty {
                return bad(format!("{id} is typed {} but its op gives {}", node.ty, ty));
            }
        }
        // A kernel of several sums writes no map (only a single sum writes the map it sums).
        if let Some((g, _)) = group_members.iter().find(|(g, m)| m.len() > 1 && map_groups.contains(g)) {
            return bad(format!("kernel k{g} has several sums and a map"));
        }
        let mut out_names = BTreeSet::new();
        for out in self.outputs() {
            self.try_node(out.node).map_err(|e| IrError::Invariant(format!("output {}: {e}", out.name)))?;
            if !out_names.insert(out.name.as_str()) {
                return bad(format!("output `{}` appears twice", out.name));
            }
            if let OutputKind::StateUpdate { state } = out.kind {
                let st = self.try_node(state).map_err(|e| IrError::Invariant(format!("update {}: {e}", out.name)))?;
                if !matches!(leaf_kind(&st.op), Some("state" | "param")) || st.ty != self.node(out.node).ty {
                    return bad(format!("update `{}` does not match its state", out.name));
                }
            }
        }
        Ok(())
    }
}
