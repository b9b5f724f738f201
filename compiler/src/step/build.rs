//! `build_step`: the arena form of a training step, for every optimizer and SAM variant.

use super::ew::Ew;
use super::optimizer::base_update;
use super::spec::{OptimizerSpec, Sam, SamNorm};
use super::{Arena, LossModel, Phase, Step};
use crate::autodiff::differentiate;
use crate::error::IrError;
use crate::ir::{Graph, NodeId, Op, OutputKind, Shape, UnaryOp};
use std::collections::{BTreeMap, HashMap};

/// SAM's guard against a zero gradient: `e = rho * g / (||g|| + EPS)` is 0, never NaN.
const NORM_EPS: f64 = 1e-12;

/// The result of one forward/backward pass of the model.
struct Pass {
    loss: NodeId,
    accuracy: NodeId,
    /// The gradient as one arena-shaped vector.
    grad: NodeId,
    /// (state leaf, next value) of the BatchNorm running statistics.
    updates: Vec<(NodeId, NodeId)>,
}

struct Builder {
    g: Graph,
    arena: Arena,
    phases: BTreeMap<NodeId, Phase>,
}

impl Builder {
    /// Tags every node not yet tagged with `phase`.
    fn tag(&mut self, phase: Phase) {
        let ids: Vec<NodeId> = self.g.node_ids().collect();
        for id in ids {
            self.phases.entry(id).or_insert(phase);
        }
    }

    /// Views of the arena vector `w` shaped like each parameter.
    fn views(&mut self, w: NodeId) -> Result<Vec<NodeId>, IrError> {
        let slots = self.arena.slots.clone();
        slots
            .iter()
            .map(|s| {
                let n = s.shape.numel();
                let flat = if n == self.arena.len {
                    w
                } else {
                    self.g.add(Op::Slice { start: vec![s.offset], end: vec![s.offset + n] }, &[w])?
                };
                self.g.reshape(flat, s.shape.clone())
            })
            .collect()
    }

    /// Imports `model` with its parameters read from views of the arena vector `w` and its
    /// inputs bound to `x` and `labels`; returns the views and the node map.
    fn import_model(&mut self, model: &LossModel, w: NodeId, x: NodeId, labels: NodeId) -> Result<(Vec<NodeId>, HashMap<NodeId, NodeId>), IrError> {
        let views = self.views(w)?;
        let mut subst: HashMap<NodeId, NodeId> = model.params.iter().copied().zip(views.iter().copied()).collect();
        subst.insert(model.input, x);
        subst.insert(model.labels, labels);
        let map = self.g.import(&model.graph, &subst)?;
        Ok((views, map))
    }

    /// The model's loss at parameters `w` on `(x, labels)`, and its gradient with respect to
    /// `wrt` (the arena vector `w` itself for second-order SAM) or, by default, to `w`'s
    /// views, gathered into an arena vector.
    #[allow(clippy::too_many_arguments)]
    fn pass(&mut self, model: &LossModel, w: NodeId, x: NodeId, labels: NodeId, fwd: Phase, bwd: Phase, wrt: Option<NodeId>) -> Result<Pass, IrError> {
        let (views, map) = self.import_model(model, w, x, labels)?;
        let loss = map[&model.loss];
        let accuracy = map[&model.accuracy];
        let updates = model
            .graph
            .outputs()
            .iter()
            .filter_map(|o| match o.kind {
                OutputKind::StateUpdate { state } => Some((map[&state], map[&o.node])),
                OutputKind::Value => None,
            })
            .collect();
        self.tag(fwd);
        let grad = match wrt {
            Some(arena) => differentiate(&mut self.g, loss, &[arena])?[0],
            None => {
                let grads = differentiate(&mut self.g, loss, &views)?;
                let flat = grads.iter().map(|&gr| self.g.reshape(gr, [self.g.shape(gr).numel()])).collect::<Result<Vec<_>, _>>()?;
                if flat.len() == 1 {
                    flat[0]
                } else {
                    self.g.add(Op::Concat { axis: 0, count: flat.len() }, &flat)?
                }
            }
        };
        self.tag(bwd);
        Ok(Pass { loss, accuracy, grad, updates })
    }

    /// SAM's perturbation for gradient `grad` at `w` with radius `rho`, and the squared
    /// (scaled) gradient norm it computed.
    fn perturbation(&mut self, sam: &Sam, w: NodeId, grad: NodeId, rho: NodeId) -> Result<(NodeId, NodeId), IrError> {
        let mut e = Ew(&mut self.g);
        let t = match sam.adaptive {
            Some(eta) => {
                let a = e.unary(UnaryOp::Abs, w)?;
                let c = e.c(eta, a)?;
                Some(e.add(a, c)?)
            }
            None => None,
        };
        let tg = match t {
            Some(t) => e.mul(t, grad)?,
            None => grad,
        };
        let s = e.sum_sq(tg)?;
        let pert = match sam.norm {
            SamNorm::L2 => {
                let n = e.unary(UnaryOp::Sqrt, s)?;
                let eps = e.c(NORM_EPS, n)?;
                let n = e.add(n, eps)?;
                let scale = e.div(rho, n)?;
                let d = match t {
                    Some(t) => e.mul(t, tg)?,
                    None => grad,
                };
                e.mul(scale, d)?
            }
            SamNorm::Linf => {
                let sg = e.unary(UnaryOp::Sign, grad)?;
                let d = match t {
                    Some(t) => e.mul(t, sg)?,
                    None => sg,
                };
                e.mul(rho, d)?
            }
        };
        Ok((pert, s))
    }

    /// Projects `e` back onto the rho-ball of `norm`.
    fn project(&mut self, norm: SamNorm, e_vec: NodeId, rho: NodeId) -> Result<NodeId, IrError> {
        let mut e = Ew(&mut self.g);
        match norm {
            SamNorm::L2 => {
                let s = e.sum_sq(e_vec)?;
                let n = e.unary(UnaryOp::Sqrt, s)?;
                let eps = e.c(NORM_EPS, n)?;
                let n = e.add(n, eps)?;
                let r = e.div(rho, n)?;
                let one = e.c(1.0, r)?;
                let f = e.min(one, r)?;
                e.mul(f, e_vec)
            }
            SamNorm::Linf => {
                let lo = e.0.unary(UnaryOp::Neg, rho)?;
                let shape = e.0.shape(e_vec).clone();
                let hi_b = e.0.broadcast(rho, &shape)?;
                let lo_b = e.0.broadcast(lo, &shape)?;
                let c = e.0.binary(crate::ir::BinaryOp::Min, e_vec, hi_b)?;
                e.0.binary(crate::ir::BinaryOp::Max, c, lo_b)
            }
        }
    }

    /// The SAM gradient on one (micro-)batch: the first pass, the ascent, the second pass.
    /// Returns (first pass, squared norm, gradient at the perturbed point).
    #[allow(clippy::too_many_arguments)]
    fn sam_gradient(&mut self, sam: &Sam, model: &LossModel, w: NodeId, x: NodeId, labels: NodeId, rho: NodeId) -> Result<(Pass, NodeId, NodeId), IrError> {
        let first = self.pass(model, w, x, labels, Phase::Forward, Phase::Backward, None)?;
        let k = sam.ascent_steps.max(1);
        let rho_k = if k == 1 { rho } else { Ew(&mut self.g).scale(rho, 1.0 / k as f64)? };
        let (mut pert, s) = self.perturbation(sam, w, first.grad, rho_k)?;
        self.tag(Phase::Ascent);
        for _ in 1..k {
            let w_adv = Ew(&mut self.g).add(w, pert)?;
            self.tag(Phase::Ascent);
            let p = self.pass(model, w_adv, x, labels, Phase::ForwardAdv, Phase::BackwardAdv, None)?;
            let (step, _) = self.perturbation(sam, w_adv, p.grad, rho_k)?;
            let sum = Ew(&mut self.g).add(pert, step)?;
            pert = self.project(sam.norm, sum, rho)?;
            self.tag(Phase::Ascent);
        }
        let w_adv = Ew(&mut self.g).add(w, pert)?;
        self.tag(Phase::Ascent);
        let wrt = if sam.second_order { Some(w) } else { None };
        let second = self.pass(model, w_adv, x, labels, Phase::ForwardAdv, Phase::BackwardAdv, wrt)?;
        Ok((first, s, second.grad))
    }
}

/// The arena over `model`'s parameters, in their order; `op` names the caller in errors.
fn model_arena(model: &LossModel, op: &str) -> Result<Arena, IrError> {
    let src = &model.graph;
    let names: Vec<(String, Shape)> = model
        .params
        .iter()
        .map(|&p| match &src.node(p).op {
            Op::Param { name } => Ok((name.clone(), src.shape(p).clone())),
            other => Err(IrError::Invalid { op: op.into(), reason: format!("{other} is not a parameter") }),
        })
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err(IrError::Invalid { op: op.into(), reason: "the model has no parameters".into() });
    }
    Ok(Arena::new(names.iter().map(|(n, s)| (n.as_str(), s))))
}

/// Builds the evaluation program of `model` (traced in evaluation mode) over the same
/// parameter arena as its training step: a forward pass at the arena `params` with outputs
/// `loss` and `accuracy`, and no updates. BatchNorm reads its running statistics.
pub fn build_eval_step(model: &LossModel) -> Result<Step, IrError> {
    let src = &model.graph;
    let dtype = src.dtype(model.loss);
    let arena = model_arena(model, "build_eval_step")?;
    let mut b = Builder { g: Graph::new(), arena, phases: BTreeMap::new() };
    let w = b.g.leaf(Op::Param { name: "params".into() }, dtype, [b.arena.len])?;
    let x = b.g.leaf(src.node(model.input).op.clone(), src.dtype(model.input), src.shape(model.input).clone())?;
    let labels = b.g.leaf(src.node(model.labels).op.clone(), src.dtype(model.labels), src.shape(model.labels).clone())?;
    let (_, map) = b.import_model(model, w, x, labels)?;
    b.tag(Phase::Forward);
    let mut g = b.g;
    g.add_output("loss", map[&model.loss], OutputKind::Value)?;
    g.add_output("accuracy", map[&model.accuracy], OutputKind::Value)?;
    Ok(Step { graph: g, arena: b.arena, phases: b.phases, spec: OptimizerSpec { base: super::BaseOptimizer::sgd(0.0, 0.0), sam: None } })
}

/// Builds the training step of `model` under `spec`. `micro` is the same model traced at
/// the m-sharpness micro-batch size (required when `spec` asks for m-sharpness).
pub fn build_step(model: &LossModel, micro: Option<&LossModel>, spec: &OptimizerSpec) -> Result<Step, IrError> {
    let invalid = |reason: String| IrError::Invalid { op: "build_step".into(), reason };
    let src = &model.graph;
    let dtype = src.dtype(model.loss);
    let arena = model_arena(model, "build_step")?;
    let mut b = Builder { g: Graph::new(), arena, phases: BTreeMap::new() };
    let p = b.arena.len;

    let w = b.g.leaf(Op::Param { name: "params".into() }, dtype, [p])?;
    let state_names = spec.base.state_names();
    let states = state_names
        .iter()
        .map(|n| b.g.leaf(Op::State { name: n.to_string() }, dtype, [p]))
        .collect::<Result<Vec<_>, _>>()?;
    let x = b.g.leaf(src.node(model.input).op.clone(), src.dtype(model.input), src.shape(model.input).clone())?;
    let labels = b.g.leaf(src.node(model.labels).op.clone(), src.dtype(model.labels), src.shape(model.labels).clone())?;
    let lr = b.g.leaf(Op::Scalar { name: "lr".into() }, dtype, Shape::scalar())?;
    // Shared by name with the model's own `step` (dropout masks) when it has one.
    let step = b.g.leaf(Op::Scalar { name: "step".into() }, dtype, Shape::scalar())?;

    let (first, grad_sq, grad) = match &spec.sam {
        None => {
            let first = b.pass(model, w, x, labels, Phase::Forward, Phase::Backward, None)?;
            let grad = first.grad;
            (first, None, grad)
        }
        Some(sam) => {
            let rho = b.g.leaf(Op::Scalar { name: "rho".into() }, dtype, Shape::scalar())?;
            let (first, s, grad) = match sam.micro_batch {
                None => b.sam_gradient(sam, model, w, x, labels, rho)?,
                Some(m) => {
                    let micro = micro.ok_or_else(|| invalid("m-sharpness needs the model traced at the micro-batch size".into()))?;
                    let batch = src.shape(model.input).0[0];
                    let mb = micro.graph.shape(micro.input).0[0];
                    if m == 0 || batch % m != 0 || mb != m {
                        return Err(invalid(format!("batch {batch} does not split into micro-batches of {m} (micro model has {mb})")));
                    }
                    micro_sam(&mut b, sam, micro, w, x, labels, rho, batch / m)?
                }
            };
            (first, Some(s), grad)
        }
    };

    let upd = base_update(&mut b.g, &spec.base, w, grad, &states, lr, step)?;
    b.tag(Phase::Descent);

    let mut g = b.g;
    g.add_output("loss", first.loss, OutputKind::Value)?;
    g.add_output("accuracy", first.accuracy, OutputKind::Value)?;
    if let Some(s) = grad_sq {
        g.add_output("grad_sq_norm", s, OutputKind::Value)?;
    }
    g.add_output("params", upd.w, OutputKind::StateUpdate { state: w })?;
    for ((name, &st), &new) in state_names.iter().zip(&states).zip(&upd.states) {
        g.add_output(*name, new, OutputKind::StateUpdate { state: st })?;
    }
    for (st, new) in first.updates {
        let name = crate::ir::leaf_name(&g.node(st).op).expect("invariant: states are named").to_string();
        g.add_output(name, new, OutputKind::StateUpdate { state: st })?;
    }
    Ok(Step { graph: g, arena: b.arena, phases: b.phases, spec: spec.clone() })
}

/// m-sharpness: each of `parts` micro-batches gets its own perturbation and second gradient;
/// the second gradients are averaged. Loss, accuracy and the running statistics are the
/// micro-batches' clean-pass averages; the reported norm is the mean of their squared norms.
#[allow(clippy::too_many_arguments)]
fn micro_sam(b: &mut Builder, sam: &Sam, micro: &LossModel, w: NodeId, x: NodeId, labels: NodeId, rho: NodeId, parts: usize) -> Result<(Pass, NodeId, NodeId), IrError> {
    let m = micro.graph.shape(micro.input).0[0];
    let mut results = Vec::new();
    for j in 0..parts {
        let xs = b.g.shape(x).clone();
        let mut start = vec![0; xs.rank()];
        let mut end = xs.0.clone();
        start[0] = j * m;
        end[0] = (j + 1) * m;
        let xj = b.g.add(Op::Slice { start, end }, &[x])?;
        let lj = b.g.add(Op::Slice { start: vec![j * m], end: vec![(j + 1) * m] }, &[labels])?;
        results.push(b.sam_gradient(sam, micro, w, xj, lj, rho)?);
    }
    let mut e = Ew(&mut b.g);
    let mean = |e: &mut Ew, xs: Vec<NodeId>| -> Result<NodeId, IrError> {
        let mut acc = xs[0];
        for &x in &xs[1..] {
            acc = e.add(acc, x)?;
        }
        if xs.len() == 1 {
            Ok(acc)
        } else {
            e.scale(acc, 1.0 / xs.len() as f64)
        }
    };
    let grad = mean(&mut e, results.iter().map(|r| r.2).collect())?;
    b.tag(Phase::Descent);
    let mut e = Ew(&mut b.g);
    let loss = mean(&mut e, results.iter().map(|r| r.0.loss).collect())?;
    let accuracy = mean(&mut e, results.iter().map(|r| r.0.accuracy).collect())?;
    let s = mean(&mut e, results.iter().map(|r| r.1).collect())?;
    let mut updates = Vec::new();
    for (i, &(st, _)) in results[0].0.updates.iter().enumerate() {
        let vals = results.iter().map(|r| r.0.updates[i].1).collect();
        updates.push((st, mean(&mut e, vals)?));
    }
    b.tag(Phase::Metrics);
    Ok((Pass { loss, accuracy, grad: results[0].0.grad, updates }, s, grad))
}
