//! Layers: parameterised building blocks that declare their parameters once (at
//! construction, under PyTorch `state_dict` names) and trace their forward pass on demand.

use crate::error::{FrontendError, Result};
use crate::init::Init;
use crate::tracer::{Tracer, Var};
use plateau_compiler::ir::{Op, UnaryOp};
use plateau_compiler::Shape;
use std::panic::Location;

/// Anything that maps a traced value to a traced value.
pub trait Layer {
    #[track_caller]
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var>;
}

fn positive(layer: &str, what: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(FrontendError::config(layer, format!("{what} must be positive, got 0"), Location::caller()));
    }
    Ok(())
}

/// `y = x W^T + b`, weight `[out, in]` as in `torch.nn.Linear`.
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Linear {
    #[track_caller]
    pub fn new(tr: &mut Tracer, name: &str, in_features: usize, out_features: usize, bias: bool) -> Result<Self> {
        let at = Location::caller();
        for (what, v) in [("in_features", in_features), ("out_features", out_features)] {
            positive("Linear", what, v).map_err(|e| relocate(e, at))?;
        }
        tr.scoped(name, |tr| {
            let weight = tr.param("weight", [out_features, in_features], Init::HeNormal { fan_in: in_features })?;
            let bias = if bias { Some(tr.param("bias", [out_features], Init::Zeros)?) } else { None };
            Ok(Linear { weight, bias })
        })
    }
}

impl Layer for Linear {
    #[track_caller]
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        let wt = tr.permute(self.weight, &[1, 0])?;
        let y = tr.matmul(x, wt)?;
        match self.bias {
            Some(b) => tr.add(y, b),
            None => Ok(y),
        }
    }
}

/// 2-D convolution over NCHW input, weight `[out, in, k, k]` as in `torch.nn.Conv2d`.
pub struct Conv2d {
    pub weight: Var,
    pub bias: Option<Var>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tr: &mut Tracer,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let at = Location::caller();
        for (what, v) in [("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel), ("stride", stride)] {
            positive("Conv2d", what, v).map_err(|e| relocate(e, at))?;
        }
        let fan_in = in_channels * kernel * kernel;
        tr.scoped(name, |tr| {
            let weight = tr.param("weight", [out_channels, in_channels, kernel, kernel], Init::HeNormal { fan_in })?;
            let bias = if bias { Some(tr.param("bias", [out_channels], Init::Zeros)?) } else { None };
            Ok(Conv2d { weight, bias, stride, padding })
        })
    }
}

impl Layer for Conv2d {
    #[track_caller]
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        let y = tr.conv2d(x, self.weight, self.stride, self.padding)?;
        match self.bias {
            Some(b) => {
                let c = tr.shape(b).0[0];
                let b = tr.reshape(b, [1, c, 1, 1])?;
                tr.add(y, b)
            }
            None => Ok(y),
        }
    }
}

/// Batch normalisation over `[N, C]` or `[N, C, H, W]`, as `torch.nn.BatchNorm1d/2d`
/// (eps 1e-5, momentum 0.1, unbiased running variance). In training it normalises with batch
/// statistics and records the running-statistics update as a state output; in evaluation it
/// normalises with the running statistics.
pub struct BatchNorm {
    pub weight: Var,
    pub bias: Var,
    pub running_mean: Var,
    pub running_var: Var,
    pub features: usize,
    pub eps: f64,
    pub momentum: f64,
}

impl BatchNorm {
    #[track_caller]
    pub fn new(tr: &mut Tracer, name: &str, features: usize) -> Result<Self> {
        let at = Location::caller();
        positive("BatchNorm", "num_features", features).map_err(|e| relocate(e, at))?;
        tr.scoped(name, |tr| {
            Ok(BatchNorm {
                weight: tr.param("weight", [features], Init::Ones)?,
                bias: tr.param("bias", [features], Init::Zeros)?,
                running_mean: tr.state("running_mean", [features], Init::Zeros)?,
                running_var: tr.state("running_var", [features], Init::Ones)?,
                features,
                eps: 1e-5,
                momentum: 0.1,
            })
        })
    }
}

impl Layer for BatchNorm {
    #[track_caller]
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        let at = Location::caller();
        let shape = tr.shape(x).clone();
        let (axes, stat_shape): (Vec<usize>, Shape) = match shape.rank() {
            2 => (vec![0], Shape(vec![1, self.features])),
            4 => (vec![0, 2, 3], Shape(vec![1, self.features, 1, 1])),
            _ => return Err(FrontendError::config("BatchNorm", format!("expects [N,C] or [N,C,H,W] input, got {shape}"), at)),
        };
        if shape.0[1] != self.features {
            return Err(FrontendError::config(
                "BatchNorm",
                format!("built for {} features, input {shape} has {}", self.features, shape.0[1]),
                at,
            ));
        }
        let (mean, var) = if tr.training() {
            let mean = tr.mean(x, &axes)?;
            let xc = tr.sub(x, mean)?;
            let sq = tr.mul(xc, xc)?;
            let var = tr.mean(sq, &axes)?;
            let n: usize = axes.iter().map(|&a| shape.0[a]).product();
            let keep = 1.0 - self.momentum;
            let m = tr.reshape(mean, [self.features])?;
            let rm = tr.scale(self.running_mean, keep)?;
            let m = tr.scale(m, self.momentum)?;
            let new_mean = tr.add(rm, m)?;
            let v = tr.reshape(var, [self.features])?;
            let unbiased = if n > 1 { n as f64 / (n - 1) as f64 } else { 1.0 };
            let v = tr.scale(v, self.momentum * unbiased)?;
            let rv = tr.scale(self.running_var, keep)?;
            let new_var = tr.add(rv, v)?;
            tr.update_state(self.running_mean, new_mean)?;
            tr.update_state(self.running_var, new_var)?;
            (mean, var)
        } else {
            (tr.reshape(self.running_mean, stat_shape.clone())?, tr.reshape(self.running_var, stat_shape.clone())?)
        };
        let xc = tr.sub(x, mean)?;
        let ve = tr.add_scalar(var, self.eps)?;
        let sd = tr.unary(UnaryOp::Sqrt, ve)?;
        let inv = tr.unary(UnaryOp::Recip, sd)?;
        let xn = tr.mul(xc, inv)?;
        let w = tr.reshape(self.weight, stat_shape.clone())?;
        let b = tr.reshape(self.bias, stat_shape)?;
        let y = tr.mul(xn, w)?;
        tr.add(y, b)
    }
}

/// `max(x, 0)`.
pub struct ReLU;

impl Layer for ReLU {
    #[track_caller]
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        tr.relu(x)
    }
}

/// Max pooling, `torch.nn.MaxPool2d(kernel, stride, padding)`.
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Layer for MaxPool2d {
    #[track_caller]
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        tr.max_pool2d(x, self.kernel, self.stride, self.padding)
    }
}

/// Average pooling, `torch.nn.AvgPool2d(kernel, stride, padding)` (padding counted).
pub struct AvgPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Layer for AvgPool2d {
    #[track_caller]
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        tr.avg_pool2d(x, self.kernel, self.stride, self.padding)
    }
}

/// Global average pooling: `[N, C, H, W] -> [N, C]`.
pub struct GlobalAvgPool;

impl Layer for GlobalAvgPool {
    #[track_caller]
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        let at = Location::caller();
        let s = tr.shape(x).clone();
        if s.rank() != 4 {
            return Err(FrontendError::config("GlobalAvgPool", format!("expects [N,C,H,W] input, got {s}"), at));
        }
        let m = tr.mean(x, &[2, 3])?;
        tr.reshape(m, [s.0[0], s.0[1]])
    }
}

/// `[N, ...] -> [N, prod(...)]`.
pub struct Flatten;

impl Layer for Flatten {
    #[track_caller]
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        let s = tr.shape(x).clone();
        let n = s.0.first().copied().unwrap_or(1);
        tr.reshape(x, [n, s.0.iter().skip(1).product()])
    }
}

/// Inverted dropout with probability `p`; the identity in evaluation. The mask is a pure
/// function of (layer seed: its number mixed with the tracer's seed; step counter; element index), so both passes of a SAM step use
/// the same mask.
pub struct Dropout {
    pub p: f64,
    seed: u32,
}

impl Dropout {
    #[track_caller]
    pub fn new(tr: &mut Tracer, p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(FrontendError::config("Dropout", format!("p must be in [0, 1), got {p}"), Location::caller()));
        }
        Ok(Dropout { p, seed: tr.next_dropout_seed() })
    }
}

impl Layer for Dropout {
    #[track_caller]
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        if !tr.training() || self.p == 0.0 {
            return Ok(x);
        }
        let step = tr.step()?;
        let shape = tr.shape(x).clone();
        let mask = tr.apply(Op::DropoutMask { p: self.p, seed: self.seed, shape: shape.clone() }, &[step])?;
        let kept = tr.scale(x, 1.0 / (1.0 - self.p))?;
        let zero = tr.full(0.0, &shape)?;
        tr.select(mask, kept, zero)
    }
}

/// Layers applied in order; `torch.nn.Sequential` names its children `0`, `1`, ...
#[derive(Default)]
pub struct Sequential {
    pub layers: Vec<Box<dyn Layer>>,
}

impl Sequential {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, layer: impl Layer + 'static) -> &mut Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// The name PyTorch gives the next child.
    pub fn next_name(&self) -> String {
        self.layers.len().to_string()
    }
}

impl Layer for Sequential {
    fn forward(&self, tr: &mut Tracer, mut x: Var) -> Result<Var> {
        for l in &self.layers {
            x = l.forward(tr, x)?;
        }
        Ok(x)
    }
}

/// Residual connection `a + b`.
#[track_caller]
pub fn residual(tr: &mut Tracer, a: Var, b: Var) -> Result<Var> {
    tr.add(a, b)
}

fn relocate(e: FrontendError, at: &'static Location<'static>) -> FrontendError {
    match e {
        FrontendError::Config { layer, reason, .. } => FrontendError::config(layer, reason, at),
        other => other,
    }
}
