//! Optimizer rules: identities that SAM programs as commonly written contain.

use super::{single_output_program, Change, Rule};
use crate::egraph::lang::{ty, EG};
use crate::ir::{BinaryOp, Instr};
use egg::Id;

pub(super) fn rules() -> Vec<Rule> {
    vec![
        // (w + e) - e -> w: the SAM restore disappears; the descent reads w itself.
        Rule { name: "restore-cancels", algebra: "(w + e) - e -> w", find: restore_cancels },
    ]
}

/// `op($0, $1)` over operands read whole: the operands, if the program is exactly that.
fn plain_binary(eg: &EG, node: &crate::egraph::lang::ENode, op: BinaryOp) -> Option<(Id, Id)> {
    let p = single_output_program(eg.analysis.op(node.op))?;
    let whole = p.views.iter().zip(&node.children).all(|(v, &c)| ty(eg, c).map(|t| &t.shape) == Some(v));
    (whole && p.instrs == [Instr::Load(0), Instr::Load(1), Instr::Binary(op, 0, 1)]).then(|| (node.children[0], node.children[1]))
}

fn restore_cancels(eg: &EG) -> Vec<(Id, Change)> {
    let mut out = Vec::new();
    for class in eg.classes() {
        for node in &class.nodes {
            let Some((sum, e)) = plain_binary(eg, node, BinaryOp::Sub) else { continue };
            for inner in &eg[sum].nodes {
                let Some((a, b)) = plain_binary(eg, inner, BinaryOp::Add) else { continue };
                let w = if eg.find(b) == eg.find(e) {
                    a
                } else if eg.find(a) == eg.find(e) {
                    b
                } else {
                    continue;
                };
                if ty(eg, w) == ty(eg, class.id) {
                    out.push((class.id, Change::Union(w)));
                }
            }
        }
    }
    out
}
