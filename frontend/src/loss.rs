//! Losses and metrics, decomposed into primitive ops.

use crate::error::{FrontendError, Result};
use crate::tracer::{Tracer, Var};
use plateau_compiler::ir::{CmpOp, UnaryOp};
use std::panic::Location;

/// Mean softmax cross-entropy of `logits[N, K]` against integer `labels[N]`, with PyTorch's
/// label smoothing: the target is `(1 - s) * one_hot + s / K`.
#[track_caller]
pub fn softmax_cross_entropy(tr: &mut Tracer, logits: Var, labels: Var, smoothing: f64) -> Result<Var> {
    let at = Location::caller();
    let s = tr.shape(logits).clone();
    if s.rank() != 2 {
        return Err(FrontendError::config("cross_entropy", format!("expects [N,K] logits, got {s}"), at));
    }
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(FrontendError::config("cross_entropy", format!("label smoothing must be in [0, 1], got {smoothing}"), at));
    }
    let (n, k) = (s.0[0], s.0[1]);
    // The row maximum only keeps exp() in range: `lse(x - m) + m` does not depend on `m`, so
    // its exact gradient through `m` is zero and none is computed (as in JAX's logsumexp).
    let m = tr.max(logits, &[1])?;
    let m = tr.stop_gradient(m)?;
    let z = tr.sub(logits, m)?;
    let e = tr.unary(UnaryOp::Exp, z)?;
    let se = tr.sum(e, &[1])?;
    let lse = tr.unary(UnaryOp::Log, se)?;
    let logp = tr.sub(z, lse)?;
    let hot = tr.one_hot(labels, k)?;
    let on = tr.full(1.0 - smoothing + smoothing / k as f64, &s)?;
    let off = tr.full(smoothing / k as f64, &s)?;
    let target = tr.select(hot, on, off)?;
    let tl = tr.mul(target, logp)?;
    let total = tr.sum(tl, &[0, 1])?;
    let total = tr.reshape(total, [])?;
    tr.scale(total, -1.0 / n as f64)
}

/// Fraction of rows whose largest logit is the label's (a tie with the label counts as right).
#[track_caller]
pub fn accuracy(tr: &mut Tracer, logits: Var, labels: Var) -> Result<Var> {
    let s = tr.shape(logits).clone();
    if s.rank() != 2 {
        return Err(FrontendError::config("accuracy", format!("expects [N,K] logits, got {s}"), Location::caller()));
    }
    let (n, k) = (s.0[0], s.0[1]);
    let m = tr.max(logits, &[1])?;
    let is_max = tr.compare(CmpOp::Ge, logits, m)?;
    let hot = tr.one_hot(labels, k)?;
    let one = tr.full(1.0, &s)?;
    let zero = tr.full(0.0, &s)?;
    let label_max = tr.select(is_max, one, zero)?;
    let hit = tr.select(hot, label_max, zero)?;
    let total = tr.sum(hit, &[0, 1])?;
    let total = tr.reshape(total, [])?;
    tr.scale(total, 1.0 / n as f64)
}
