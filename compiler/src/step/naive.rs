//! The naive program: SAM as it is commonly written in eager frameworks, one tensor at a
//! time — the norm as a sum of per-tensor norms, the perturbation added to every parameter,
//! the second gradient, the perturbation subtracted again (the restore), the base step per
//! tensor. It is the reference the fused arena step is checked against, and what the
//! rewriter is measured against.

use super::ew::Ew;
use super::optimizer::base_update;
use super::spec::{OptimizerSpec, SamNorm};
use super::{Arena, LossModel, Phase, Step};
use crate::autodiff::differentiate;
use crate::error::IrError;
use crate::ir::{leaf_name, Graph, NodeId, Op, OutputKind, Shape, UnaryOp};
use std::collections::{BTreeMap, HashMap};

/// Builds the per-tensor program. Parameters keep their model names; the optimizer state of
/// parameter `p` is `momentum:p` (or `exp_avg:p`, `exp_avg_sq:p`). Supports the base
/// optimizers and SAM/ASAM with p = 2 and one ascent step.
pub fn build_naive_step(model: &LossModel, spec: &OptimizerSpec) -> Result<Step, IrError> {
    if let Some(sam) = &spec.sam {
        if sam.norm != SamNorm::L2 || sam.ascent_steps > 1 || sam.micro_batch.is_some() || sam.second_order {
            return Err(IrError::Invalid {
                op: "build_naive_step".into(),
                reason: "the naive program covers SAM and ASAM with p = 2 and one ascent step".into(),
            });
        }
    }
    let src = &model.graph;
    let dtype = src.dtype(model.loss);
    let mut g = Graph::new();
    let mut phases = BTreeMap::new();
    let tag = |g: &Graph, phases: &mut BTreeMap<NodeId, Phase>, p: Phase| {
        for id in g.node_ids() {
            phases.entry(id).or_insert(p);
        }
    };
    let lr = g.leaf(Op::Scalar { name: "lr".into() }, dtype, Shape::scalar())?;
    let step = g.leaf(Op::Scalar { name: "step".into() }, dtype, Shape::scalar())?;
    let map = g.import(src, &HashMap::new())?;
    let params: Vec<NodeId> = model.params.iter().map(|p| map[p]).collect();
    let names: Vec<String> = params.iter().map(|&p| leaf_name(&g.node(p).op).expect("params are named").to_string()).collect();
    tag(&g, &mut phases, Phase::Forward);
    let g1 = differentiate(&mut g, map[&model.loss], &params)?;
    tag(&g, &mut phases, Phase::Backward);

    // (gradient, parameter the base step starts from) per tensor.
    let (grads, bases, grad_sq) = match &spec.sam {
        None => (g1.clone(), params.clone(), None),
        Some(sam) => {
            // The squared norm as a sum of per-tensor reductions.
            let mut e = Ew(&mut g);
            let t: Vec<Option<NodeId>> = match sam.adaptive {
                Some(eta) => params
                    .iter()
                    .map(|&w| {
                        let a = e.unary(UnaryOp::Abs, w)?;
                        let c = e.c(eta, a)?;
                        e.add(a, c).map(Some)
                    })
                    .collect::<Result<_, _>>()?,
                None => vec![None; params.len()],
            };
            let mut s = None;
            for (i, &gr) in g1.iter().enumerate() {
                let tg = match t[i] {
                    Some(t) => e.mul(t, gr)?,
                    None => gr,
                };
                let si = e.sum_sq(tg)?;
                s = Some(match s {
                    Some(acc) => e.add(acc, si)?,
                    None => si,
                });
            }
            let s = s.expect("invariant: at least one parameter");

            let rho = g.leaf(Op::Scalar { name: "rho".into() }, dtype, Shape::scalar())?;
            let mut e = Ew(&mut g);
            let n = e.unary(UnaryOp::Sqrt, s)?;
            let eps = e.c(1e-12, n)?;
            let n = e.add(n, eps)?;
            let scale = e.div(rho, n)?;
            let mut perts = Vec::new();
            let mut adv = HashMap::new();
            for (i, (&w, &gr)) in params.iter().zip(&g1).enumerate() {
                let d = match t[i] {
                    Some(t) => {
                        let tt = e.mul(t, t)?;
                        e.mul(tt, gr)?
                    }
                    None => gr,
                };
                let pert = e.mul(scale, d)?;
                adv.insert(model.params[i], e.add(w, pert)?);
                perts.push(pert);
            }
            tag(&g, &mut phases, Phase::Ascent);
            let map2 = g.import(src, &adv)?;
            tag(&g, &mut phases, Phase::ForwardAdv);
            let advs: Vec<NodeId> = model.params.iter().map(|p| adv[p]).collect();
            let g2 = differentiate(&mut g, map2[&model.loss], &advs)?;
            tag(&g, &mut phases, Phase::BackwardAdv);
            // The restore: w = (w + e) - e.
            let mut e = Ew(&mut g);
            let restored = perts.iter().zip(&advs).map(|(&pert, &a)| e.sub(a, pert)).collect::<Result<Vec<_>, _>>()?;
            tag(&g, &mut phases, Phase::Ascent);
            (g2, restored, Some(s))
        }
    };

    let mut updates = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let shape = g.shape(params[i]).clone();
        let states = spec
            .base
            .state_names()
            .iter()
            .map(|s| g.leaf(Op::State { name: format!("{s}:{name}") }, dtype, shape.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let upd = base_update(&mut g, &spec.base, bases[i], grads[i], &states, lr, step)?;
        updates.push((params[i], upd.w));
        for (st, new) in states.into_iter().zip(upd.states) {
            updates.push((st, new));
        }
    }
    tag(&g, &mut phases, Phase::Descent);

    g.add_output("loss", map[&model.loss], OutputKind::Value)?;
    g.add_output("accuracy", map[&model.accuracy], OutputKind::Value)?;
    if let Some(s) = grad_sq {
        g.add_output("grad_sq_norm", s, OutputKind::Value)?;
    }
    for (leaf, new) in updates {
        let name = leaf_name(&g.node(leaf).op).expect("invariant: named").to_string();
        g.add_output(name, new, OutputKind::StateUpdate { state: leaf })?;
    }
    for o in src.outputs() {
        if let OutputKind::StateUpdate { state } = o.kind {
            g.add_output(o.name.clone(), map[&o.node], OutputKind::StateUpdate { state: map[&state] })?;
        }
    }
    let arena = Arena::new(names.iter().zip(&model.params).map(|(n, &p)| (n.as_str(), src.shape(p))));
    Ok(Step { graph: g, arena, phases, spec: spec.clone() })
}
