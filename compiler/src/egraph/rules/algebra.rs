//! Algebraic rules on layout, matmul and sums: targeted identities, no blanket commutativity.

use super::{Change, Rule};
use crate::egraph::lang::{ty, EOp, EG};
use crate::ir::{Op, Shape};
use egg::Id;

pub(super) fn rules() -> Vec<Rule> {
    vec![
        // permute(permute(x, p), q) -> x when q undoes p: the backward's transposes cancel.
        Rule { name: "permute-permute-cancel", algebra: "(x^T)^T -> x", find: permute_permute },
        // matmul(permute(a), b) -> matmul{ta}(a, b): transposes become operand strides.
        Rule { name: "matmul-absorbs-transpose", algebra: "matmul(a^T, b) -> matmul{ta}(a, b)", find: matmul_absorbs_transpose },
        // permute(matmul(a, b)) -> matmul{tb,ta}(b, a): (AB)^T = B^T A^T.
        Rule { name: "transpose-of-matmul", algebra: "(a b)^T -> b^T a^T", find: transpose_of_matmul },
        // sum(a + b) -> sum(a) + sum(b), sum(-a) -> -sum(a), sum(a * c) -> sum(a) * c and
        // sum(broadcast(c)) -> n c, for c constant along the summed axes (n terms each); these
        // round differently, as any reordered sum does. A sum of a combination becomes a
        // combination of sums, which a kernel reading the sums computes in passing, and whose
        // parts may be sums computed anyway or sharing another sum's kernel (BatchNorm's
        // backward: its mean's gradient is a combination of sums over the same tensors).
        Rule { name: "sum-is-linear", algebra: "sum(a + c b) -> sum(a) + c sum(b)", find: sum_is_linear },
    ]
}

/// Whether an operand read through `view` is constant along `axes` of `space` (views are
/// right-aligned into the space: a missing or size-1 dimension is constant).
fn constant_along(view: &Shape, space: &Shape, axes: &[usize]) -> bool {
    let lead = space.rank() - view.rank().min(space.rank());
    view.rank() <= space.rank() && axes.iter().all(|&a| a < lead || view.0[a - lead] == 1)
}

fn sum_is_linear(eg: &EG) -> Vec<(Id, Change)> {
    use crate::ir::{BinaryOp, Instr, Program, ReduceOp, UnaryOp};
    let mut out = Vec::new();
    for class in eg.classes() {
        let Some(t) = ty(eg, class.id) else { continue };
        for node in &class.nodes {
            // A plain sum (the step's own, before any prologue is fused into it) of a tensor of
            // the space's shape (not read through a reshape).
            let EOp::Ir(Op::FusedReduce { program, op: ReduceOp::Sum, axes, space, group: 0 }) = eg.analysis.op(node.op) else { continue };
            if *program != Program::identity(space.shape.clone()) || ty(eg, node.children[0]).map(|x| &x.shape) != Some(&space.shape) {
                continue;
            }
            let sum_of = |view: &Shape, x: Id| {
                (EOp::Ir(Op::FusedReduce { program: Program::identity(view.clone()), op: ReduceOp::Sum, axes: axes.clone(), space: space.clone(), group: 0 }), vec![x])
            };
            let map = |instr: Instr, views: Vec<Shape>| EOp::Ir(Op::Fused { program: Program::of_instr(views, instr), output: 0, group: 0, ty: t.clone() });
            for inner in &eg[node.children[0]].nodes {
                // sum(broadcast(x)) -> x * n, x constant along the axes (n elements each).
                if let EOp::Ir(Op::Broadcast { .. }) = eg.analysis.op(inner.op) {
                    let Some(x) = ty(eg, inner.children[0]) else { continue };
                    if constant_along(&x.shape, &space.shape, axes) {
                        let n: usize = axes.iter().map(|&a| space.shape.0[a]).product();
                        let p = Program { views: vec![x.shape.clone()], instrs: vec![Instr::Load(0), Instr::Const((n as f64).to_bits()), Instr::Binary(BinaryOp::Mul, 0, 1)], outputs: vec![2] };
                        out.push((class.id, Change::Add(EOp::Ir(Op::Fused { program: p, output: 0, group: 0, ty: t.clone() }), vec![inner.children[0]])));
                    }
                    continue;
                }
                let EOp::Ir(Op::Fused { program: q, .. }) = eg.analysis.op(inner.op) else { continue };
                // One instruction over its operands, each loaded once.
                let n = q.views.len();
                if q.outputs.len() != 1 || q.instrs.len() != n + 1 || (0..n).any(|i| q.instrs[i] != Instr::Load(i as u32)) {
                    continue;
                }
                let whole = |i: usize| q.views[i] == space.shape;
                let ch = &inner.children;
                let change = match q.instrs[n] {
                    Instr::Unary(UnaryOp::Neg, 0) if whole(0) => {
                        Change::AddOver { parts: vec![sum_of(&q.views[0], ch[0])], op: map(Instr::Unary(UnaryOp::Neg, 0), vec![t.shape.clone()]), rest: vec![] }
                    }
                    Instr::Binary(op @ (BinaryOp::Add | BinaryOp::Sub), 0, 1) if whole(0) && whole(1) => Change::AddOver {
                        parts: vec![sum_of(&q.views[0], ch[0]), sum_of(&q.views[1], ch[1])],
                        op: map(Instr::Binary(op, 0, 1), vec![t.shape.clone(), t.shape.clone()]),
                        rest: vec![],
                    },
                    // sum(a * c) and sum(a / c), c constant along the axes (either side of a product).
                    Instr::Binary(op @ (BinaryOp::Mul | BinaryOp::Div), x, y) if x != y => {
                        let (a, c) = if whole(x as usize) { (x as usize, y as usize) } else { (y as usize, x as usize) };
                        if !whole(a) || whole(c) || !constant_along(&q.views[c], &space.shape, axes) || (op == BinaryOp::Div && a != x as usize) {
                            continue;
                        }
                        Change::AddOver { parts: vec![sum_of(&q.views[a], ch[a])], op: map(Instr::Binary(op, 0, 1), vec![t.shape.clone(), q.views[c].clone()]), rest: vec![ch[c]] }
                    }
                    _ => continue,
                };
                out.push((class.id, change));
            }
        }
    }
    out
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
