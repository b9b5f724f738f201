//! Reverse-mode autodiff as a graph-to-graph pass: the backward is appended to the same
//! graph, built from ops that are themselves differentiable, so differentiating twice works
//! (Hessian-vector products).

mod vjp;

use crate::error::IrError;
use crate::ir::{BinaryOp, Graph, NodeId, Op};
use std::collections::BTreeMap;

/// Appends the gradient of the scalar `loss` with respect to each node of `wrt` and returns
/// the gradient nodes, in `wrt` order.
///
/// Before: `loss` is a floating-point scalar (shape `[]`). After: the graph holds, for every
/// `wrt` node, a node of the same type computing `d loss / d wrt` (a zero constant when the
/// loss does not depend on it). Only nodes on a path from `wrt` to `loss` get cotangents.
pub fn differentiate(g: &mut Graph, loss: NodeId, wrt: &[NodeId]) -> Result<Vec<NodeId>, IrError> {
    let lt = g.try_node(loss)?.ty.clone();
    if lt.shape.rank() != 0 || !lt.dtype.is_float() {
        return Err(IrError::Invalid {
            op: "differentiate".into(),
            reason: format!("the loss must be a floating-point scalar, got {lt}"),
        });
    }
    for &w in wrt {
        let t = &g.try_node(w)?.ty;
        if !t.dtype.is_float() {
            return Err(IrError::Invalid { op: "differentiate".into(), reason: format!("{w} is {t}, not differentiable") });
        }
    }

    // Nodes that depend on some `wrt` (forward) and that `loss` depends on (backward). A
    // stop_gradient depends on nothing: no cotangent is carried into it.
    let order: Vec<NodeId> = g.node_ids().take_while(|&id| id <= loss).collect();
    let mut depends = BTreeMap::new();
    for &id in &order {
        let d = wrt.contains(&id) || g.operands(id).iter().any(|o| depends.get(o) == Some(&true));
        depends.insert(id, d && g.dtype(id).is_float() && g.node(id).op != Op::StopGradient);
    }
    let mut needed = BTreeMap::new();
    needed.insert(loss, true);
    for &id in order.iter().rev() {
        if needed.get(&id) == Some(&true) {
            for o in g.operands(id) {
                needed.insert(o, true);
            }
        }
    }
    let relevant = |id: &NodeId| depends.get(id) == Some(&true) && needed.get(id) == Some(&true);

    let mut cotangent: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    let one = g.full(1.0, lt.dtype, &lt.shape)?;
    cotangent.insert(loss, one);
    for &id in order.iter().rev() {
        if !relevant(&id) {
            continue;
        }
        let Some(&ct) = cotangent.get(&id) else { continue };
        let operands = g.operands(id);
        for (pos, &o) in operands.iter().enumerate() {
            if !relevant(&o) {
                continue;
            }
            if let Some(contrib) = vjp::vjp(g, id, pos, ct)? {
                let total = match cotangent.get(&o) {
                    Some(&prev) => g.binary(BinaryOp::Add, prev, contrib)?,
                    None => contrib,
                };
                cotangent.insert(o, total);
            }
        }
    }
    wrt.iter()
        .map(|&w| match cotangent.get(&w) {
            Some(&c) => Ok(c),
            None => g.full_like(0.0, w),
        })
        .collect()
}

/// Appends the Hessian-vector products `H v` of the scalar `loss` with respect to `wrt`,
/// as `grad(sum_i <grad_i loss, v_i>)`: the gradient of the gradient.
pub fn hvp(g: &mut Graph, loss: NodeId, wrt: &[NodeId], v: &[NodeId]) -> Result<Vec<NodeId>, IrError> {
    if wrt.len() != v.len() {
        return Err(IrError::Invalid {
            op: "hvp".into(),
            reason: format!("{} directions for {} parameters", v.len(), wrt.len()),
        });
    }
    let grads = differentiate(g, loss, wrt)?;
    let mut dot = None;
    for (&gr, &vi) in grads.iter().zip(v) {
        let prod = g.binary(BinaryOp::Mul, gr, vi)?;
        let s = g.sum_all(prod)?;
        dot = Some(match dot {
            Some(d) => g.binary(BinaryOp::Add, d, s)?,
            None => s,
        });
    }
    match dot {
        Some(d) => differentiate(g, d, wrt),
        None => Ok(Vec::new()),
    }
}
