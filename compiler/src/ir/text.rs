//! The deterministic text form: one node per line, in topological order, ids renumbered.
//!
//! ```text
//! %3 = matmul %0, %2 : f32[128,256]
//! out loss = %20
//! update 1.running_mean = %31
//! ```

use super::graph::{Graph, NodeId, OutputKind};
use std::collections::HashMap;
use std::fmt::Write;

impl Graph {
    /// Dense ids `0..n` in index (topological) order; equal to the node indices for a graph
    /// nothing was removed from.
    pub fn renumbering(&self) -> HashMap<NodeId, usize> {
        self.node_ids().enumerate().map(|(i, id)| (id, i)).collect()
    }

    /// The text form of the whole graph.
    pub fn to_text(&self) -> String {
        let ids = self.renumbering();
        let mut s = String::new();
        for id in self.node_ids() {
            let node = self.node(id);
            let _ = write!(s, "%{} = {}", ids[&id], node.op);
            for (i, o) in self.operands(id).iter().enumerate() {
                let _ = write!(s, "{} %{}", if i == 0 { "" } else { "," }, ids[o]);
            }
            let _ = writeln!(s, " : {}", node.ty);
        }
        for out in self.outputs() {
            match &out.kind {
                OutputKind::Value => {
                    let _ = writeln!(s, "out {} = %{}", out.name, ids[&out.node]);
                }
                OutputKind::StateUpdate { state } => {
                    let _ = writeln!(s, "update {} (%{}) = %{}", out.name, ids[state], ids[&out.node]);
                }
            }
        }
        s
    }

    /// Graphviz DOT: one box per node labelled with its text-form line, edges labelled with
    /// the operand position when an op has several operands.
    pub fn to_dot(&self) -> String {
        let ids = self.renumbering();
        let mut s = String::from("digraph plateau {\n  node [shape=box, fontname=\"monospace\"];\n");
        for id in self.node_ids() {
            let node = self.node(id);
            let label = format!("%{} = {}\\n{}", ids[&id], node.op, node.ty).replace('"', "\\\"");
            let style = if node.op.is_leaf() { ", style=filled, fillcolor=\"#e8eef7\"" } else { "" };
            let _ = writeln!(s, "  n{} [label=\"{}\"{}];", ids[&id], label, style);
        }
        for id in self.node_ids() {
            let operands = self.operands(id);
            for (pos, o) in operands.iter().enumerate() {
                if operands.len() > 1 {
                    let _ = writeln!(s, "  n{} -> n{} [label=\"{}\"];", ids[o], ids[&id], pos);
                } else {
                    let _ = writeln!(s, "  n{} -> n{};", ids[o], ids[&id]);
                }
            }
        }
        for (i, out) in self.outputs().iter().enumerate() {
            let _ = writeln!(s, "  out{i} [label=\"{}\", shape=ellipse];", out.name.replace('"', "\\\""));
            let _ = writeln!(s, "  n{} -> out{i};", ids[&out.node]);
        }
        s.push_str("}\n");
        s
    }
}
