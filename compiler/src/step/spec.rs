//! What a training step computes: the base optimizer and the SAM variant over it.

use serde::{Deserialize, Serialize};

/// The optimizer that takes the step, with PyTorch's conventions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BaseOptimizer {
    /// `d = g + wd*w; m = mu*m + d; w -= lr * (nesterov ? d + mu*m : m)` (dampening 0; no
    /// momentum buffer when `mu = 0`).
    Sgd { momentum: f64, nesterov: bool, weight_decay: f64 },
    /// AdamW: decoupled decay `w *= 1 - lr*wd`, then the bias-corrected Adam update.
    AdamW { beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
}

impl BaseOptimizer {
    pub fn sgd(momentum: f64, weight_decay: f64) -> Self {
        BaseOptimizer::Sgd { momentum, nesterov: false, weight_decay }
    }

    pub fn adamw(weight_decay: f64) -> Self {
        BaseOptimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }

    /// Names of the arena-shaped optimizer state tensors.
    pub fn state_names(&self) -> Vec<&'static str> {
        match self {
            BaseOptimizer::Sgd { momentum, .. } if *momentum != 0.0 => vec!["momentum"],
            BaseOptimizer::Sgd { .. } => vec![],
            BaseOptimizer::AdamW { .. } => vec!["exp_avg", "exp_avg_sq"],
        }
    }
}

/// The dual norm of the SAM ball.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SamNorm {
    /// `e = rho * g / ||g||_2`.
    L2,
    /// `e = rho * sign(g)`.
    Linf,
}

/// Sharpness-Aware Minimization over a base optimizer. `rho` is a runtime scalar.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sam {
    pub norm: SamNorm,
    /// ASAM's `eta`: `T_w = |w| + eta`, `e = rho * T_w^2 g / ||T_w g||`.
    pub adaptive: Option<f64>,
    /// m-sharpness: examples per micro-batch, each with its own perturbation.
    pub micro_batch: Option<usize>,
    /// Ascent steps of `rho / k`, projected back onto the rho-ball.
    pub ascent_steps: usize,
    /// Differentiate through `e(w)` (Hessian-vector products) instead of dropping it.
    pub second_order: bool,
}

impl Default for Sam {
    fn default() -> Self {
        Sam { norm: SamNorm::L2, adaptive: None, micro_batch: None, ascent_steps: 1, second_order: false }
    }
}

/// A complete optimizer: the base step, optionally at a SAM-perturbed gradient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSpec {
    pub base: BaseOptimizer,
    pub sam: Option<Sam>,
}
