//! The base optimizers' update, written once for any tensor shape: over the whole arena in
//! the compiled step, per tensor in the naive program.

use super::ew::Ew;
use super::spec::BaseOptimizer;
use crate::error::IrError;
use crate::ir::{Graph, NodeId, UnaryOp};

/// The new parameter and optimizer state after one base step.
pub(crate) struct Update {
    pub w: NodeId,
    pub states: Vec<NodeId>,
}

/// One base-optimizer step from `w` with gradient `g`; `states` are the tensors named by
/// [`BaseOptimizer::state_names`]; `lr` and `step` are scalars (`step` counts finished steps).
pub(crate) fn base_update(
    g: &mut Graph,
    opt: &BaseOptimizer,
    w: NodeId,
    grad: NodeId,
    states: &[NodeId],
    lr: NodeId,
    step: NodeId,
) -> Result<Update, IrError> {
    let mut e = Ew(g);
    match *opt {
        BaseOptimizer::Sgd { momentum, nesterov, weight_decay } => {
            let d = if weight_decay != 0.0 {
                let wd = e.scale(w, weight_decay)?;
                e.add(grad, wd)?
            } else {
                grad
            };
            let (d, new_states) = if momentum != 0.0 {
                let mm = e.scale(states[0], momentum)?;
                let m = e.add(mm, d)?;
                let d = if nesterov {
                    let mm = e.scale(m, momentum)?;
                    e.add(d, mm)?
                } else {
                    m
                };
                (d, vec![m])
            } else {
                (d, vec![])
            };
            let step = e.mul(lr, d)?;
            Ok(Update { w: e.sub(w, step)?, states: new_states })
        }
        BaseOptimizer::AdamW { beta1, beta2, eps, weight_decay } => {
            let (m0, v0) = (states[0], states[1]);
            let w = if weight_decay != 0.0 {
                let lwd = e.scale(lr, weight_decay)?;
                let one = e.c(1.0, w)?;
                let keep = e.sub(one, lwd)?;
                e.mul(w, keep)?
            } else {
                w
            };
            let a = e.scale(m0, beta1)?;
            let b = e.scale(grad, 1.0 - beta1)?;
            let m = e.add(a, b)?;
            let a = e.scale(v0, beta2)?;
            let gg = e.mul(grad, grad)?;
            let b = e.scale(gg, 1.0 - beta2)?;
            let v = e.add(a, b)?;
            // t = step + 1; bias corrections 1 - beta^t with beta^t = exp(t ln beta).
            let one = e.c(1.0, step)?;
            let t = e.add(step, one)?;
            let bc = |e: &mut Ew, beta: f64| -> Result<NodeId, IrError> {
                let tl = e.scale(t, beta.ln())?;
                let p = e.unary(UnaryOp::Exp, tl)?;
                e.sub(one, p)
            };
            let bc1 = bc(&mut e, beta1)?;
            let bc2 = bc(&mut e, beta2)?;
            let step_size = e.div(lr, bc1)?;
            let sq = e.unary(UnaryOp::Sqrt, v)?;
            let bc2s = e.unary(UnaryOp::Sqrt, bc2)?;
            let denom = e.div(sq, bc2s)?;
            let epsc = e.c(eps, denom)?;
            let denom = e.add(denom, epsc)?;
            let ratio = e.div(m, denom)?;
            let delta = e.mul(step_size, ratio)?;
            Ok(Update { w: e.sub(w, delta)?, states: vec![m, v] })
        }
    }
}
