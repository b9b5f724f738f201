//! Algebraic rules on layout and matmul: targeted identities, no blanket commutativity.

use super::{Change, Rule};
use crate::egraph::lang::{EOp, EG};
use crate::ir::Op;
use egg::Id;

pub(super) fn rules() -> Vec<Rule> {
    vec![
        // permute(permute(x, p), q) -> x when q undoes p: the backward's transposes cancel.
        Rule { name: "permute-permute-cancel", algebra: "(x^T)^T -> x", find: permute_permute },
        // matmul(permute(a), b) -> matmul{ta}(a, b): transposes become operand strides.
        Rule { name: "matmul-absorbs-transpose", algebra: "matmul(a^T, b) -> matmul{ta}(a, b)", find: matmul_absorbs_transpose },
        // permute(matmul(a, b)) -> matmul{tb,ta}(b, a): (AB)^T = B^T A^T.
        Rule { name: "transpose-of-matmul", algebra: "(a b)^T -> b^T a^T", find: transpose_of_matmul },
    ]
}

fn is_transpose(op: &EOp) -> bool {
    matches!(op, EOp::Ir(Op::Permute { perm }) if perm == &[1, 0])
}

fn permute_permute(eg: &EG) -> Vec<(Id, Change)> {
    let mut out = Vec::new();
    for class in eg.classes() {
        for node in &class.nodes {
            let EOp::Ir(Op::Permute { perm: q }) = eg.analysis.op(node.op) else { continue };
            for inner in &eg[node.children[0]].nodes {
                let EOp::Ir(Op::Permute { perm: p }) = eg.analysis.op(inner.op) else { continue };
                if (0..q.len()).all(|i| p[q[i]] == i) {
                    out.push((class.id, Change::Union(inner.children[0])));
                }
            }
        }
    }
    out
}

fn matmul_absorbs_transpose(eg: &EG) -> Vec<(Id, Change)> {
    let mut out = Vec::new();
    for class in eg.classes() {
        for node in &class.nodes {
            let EOp::Ir(Op::MatMul { ta, tb }) = eg.analysis.op(node.op) else { continue };
            for (pos, &child) in node.children.iter().enumerate() {
                for inner in &eg[child].nodes {
                    if !is_transpose(eg.analysis.op(inner.op)) {
                        continue;
                    }
                    let mut ch = node.children.clone();
                    ch[pos] = inner.children[0];
                    let op = if pos == 0 { Op::MatMul { ta: !ta, tb: *tb } } else { Op::MatMul { ta: *ta, tb: !tb } };
                    out.push((class.id, Change::Add(EOp::Ir(op), ch)));
                }
            }
        }
    }
    out
}

fn transpose_of_matmul(eg: &EG) -> Vec<(Id, Change)> {
    let mut out = Vec::new();
    for class in eg.classes() {
        for node in &class.nodes {
            if !is_transpose(eg.analysis.op(node.op)) {
                continue;
            }
            for inner in &eg[node.children[0]].nodes {
                let EOp::Ir(Op::MatMul { ta, tb }) = eg.analysis.op(inner.op) else { continue };
                let ch = vec![inner.children[1], inner.children[0]];
                out.push((class.id, Change::Add(EOp::Ir(Op::MatMul { ta: !tb, tb: !ta }), ch)));
            }
        }
    }
    out
}
