//! The primitive op set of the IR: leaves, elementwise, reductions, layout and macro-ops.

use super::program::Program;
use super::shape::{Shape, TensorType};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Elementwise unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Recip,
    Abs,
    Sign,
}

/// Elementwise binary operations; both operands have the same shape and dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

/// Elementwise comparisons; the result is `bool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// Reductions over a set of axes; reduced axes are kept with size 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// Stride and zero padding of a 2-D convolution over NCHW tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conv2dAttrs {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

/// Window, stride and padding of a 2-D pooling over NCHW tensors.
/// Average pooling counts padded zeros (PyTorch's `count_include_pad=True`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PoolAttrs {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

/// An IR operation. Operands are ordered; their count is [`Op::arity`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    // ---- leaves -------------------------------------------------------------
    /// Batch data fed at every step.
    Input { name: String },
    /// A trainable parameter: a view into the parameter arena.
    Param { name: String },
    /// Optimizer or BatchNorm state, carried from step to step.
    State { name: String },
    /// A runtime scalar (learning rate, rho, step): changing it never recompiles.
    Scalar { name: String },
    /// A compile-time constant of shape `[]`.
    Const { value: f64 },

    // ---- elementwise --------------------------------------------------------
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CmpOp),
    /// `select(cond, a, b)`: `a` where `cond` holds, else `b`.
    Select,
    /// The operand's value, through which no gradient flows (JAX's `stop_gradient`,
    /// PyTorch's `detach`): differentiation treats it as a constant. It computes nothing:
    /// fusion reads the operand in its place.
    StopGradient,

    // ---- reductions ---------------------------------------------------------
    Reduce { op: ReduceOp, axes: Vec<usize> },

    // ---- layout -------------------------------------------------------------
    Reshape { shape: Shape },
    Permute { perm: Vec<usize> },
    /// NumPy broadcasting: the operand's axes align to the right of `shape`.
    Broadcast { shape: Shape },
    /// `x[start..end]` on every axis.
    Slice { start: Vec<usize>, end: Vec<usize> },
    /// Zero padding: `lo[i]` before and `hi[i]` after axis `i`.
    Pad { lo: Vec<usize>, hi: Vec<usize> },
    /// Concatenation of all operands along `axis`.
    Concat { axis: usize, count: usize },

    // ---- macro-ops (kept whole: they map to tuned kernels) --------------------
    /// `op(a)[m,k] x op(b)[k,n] -> [m,n]`, `op` transposing when `ta`/`tb` is set.
    MatMul { ta: bool, tb: bool },
    /// `conv2d(x[N,C,H,W], w[O,C,KH,KW]) -> [N,O,HO,WO]`.
    Conv2d(Conv2dAttrs),
    /// Gradient of conv2d with respect to its input: `(gy, w) -> gx[N,C,H,W]`.
    Conv2dGradInput { attrs: Conv2dAttrs, input_hw: [usize; 2] },
    /// Gradient of conv2d with respect to its weight: `(x, gy) -> gw[O,C,KH,KW]`.
    Conv2dGradWeight { attrs: Conv2dAttrs, kernel: [usize; 2] },
    /// Max pooling (padding is -infinity).
    MaxPool2d(PoolAttrs),
    /// `(x, gy) -> gx`: each window's gradient goes to its first maximum in `x`.
    MaxPool2dGrad(PoolAttrs),
    /// `(x, v) -> y`: picks `v` at each window's first maximum in `x` (adjoint of the grad).
    MaxPool2dGather(PoolAttrs),
    AvgPool2d(PoolAttrs),
    /// `gy -> gx`, the adjoint of average pooling.
    AvgPool2dGrad { attrs: PoolAttrs, input_hw: [usize; 2] },
    /// `labels: i32[N] -> bool[N, classes]`.
    OneHot { classes: usize },
    /// `step: [] -> bool[shape]`: the keep-mask of dropout, from a counter-based hash of
    /// `(seed, step, index)`, so both passes of a SAM step see the same mask.
    DropoutMask { p: f64, seed: u32, shape: Shape },

    // ---- fused (produced by the rewriter) ---------------------------------------
    /// Output `output` of a fused elementwise kernel over `ty.shape`; nodes sharing `group`
    /// are one multi-output kernel.
    Fused { program: Program, output: u32, group: u32, ty: TensorType },
    /// A reduction over `axes` of the single output of `program` (its prologue), evaluated
    /// over the iteration space `space`; reduced axes are kept with size 1.
    /// A nonzero `group` shares the kernel with the other nodes of that group: an `Op::Fused`
    /// map over `space` of the same program (the kernel also writes each prologue value it
    /// sums), or other sums over the same space and axes (the kernel sums each program).
    FusedReduce { program: Program, op: ReduceOp, axes: Vec<usize>, space: TensorType, group: u32 },
    /// The map `program` over the output of operand 0 (an op that [`Op::takes_epilogue`]),
    /// which `program` reads as its operand 0, whole: that op's epilogue, computed by its
    /// kernel as it stores each output.
    Epilogue { program: Program, ty: TensorType },
}

impl Op {
    /// Number of operands the op takes.
    pub fn arity(&self) -> usize {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Scalar { .. } | Op::Const { .. } => 0,
            Op::Unary(_)
            | Op::StopGradient
            | Op::Reduce { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Broadcast { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::AvgPool2dGrad { .. }
            | Op::OneHot { .. }
            | Op::DropoutMask { .. } => 1,
            Op::Binary(_)
            | Op::Compare(_)
            | Op::MatMul { .. }
            | Op::Conv2d(_)
            | Op::Conv2dGradInput { .. }
            | Op::Conv2dGradWeight { .. }
            | Op::MaxPool2dGrad(_)
            | Op::MaxPool2dGather(_) => 2,
            Op::Select => 3,
            Op::Concat { count, .. } => *count,
            Op::Fused { program, .. } | Op::FusedReduce { program, .. } | Op::Epilogue { program, .. } => program.views.len(),
        }
    }

    /// Whether the op's kernel can also compute a map over its output as it stores each
    /// element (an `Op::Epilogue`): the GEMMs that produce activations (matmul, convolution),
    /// the max-pool gradient (before a ReLU mask in the backward), and a sum that runs as one
    /// launch in a kernel of its own (a BatchNorm statistic before its running average).
    pub fn takes_epilogue(&self) -> bool {
        match self {
            Op::MatMul { .. } | Op::Conv2d(_) | Op::MaxPool2dGrad(_) => true,
            Op::FusedReduce { op: ReduceOp::Sum, axes, space, group: 0, .. } => {
                let len: usize = axes.iter().map(|&a| space.shape.0[a]).product();
                crate::schedule::reduce::reduce_split(space.shape.numel() / len.max(1), len) == 1
            }
            _ => false,
        }
    }

    pub fn is_leaf(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Scalar { .. } | Op::Const { .. })
    }

    /// Elementwise ops map each output element from the same-index operand elements.
    pub fn is_elementwise(&self) -> bool {
        matches!(self, Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select)
    }

    /// The op's mnemonic as the text form prints it, without attributes.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::State { .. } => "state",
            Op::Scalar { .. } => "scalar",
            Op::Const { .. } => "const",
            Op::Unary(u) => match u {
                UnaryOp::Neg => "neg",
                UnaryOp::Exp => "exp",
                UnaryOp::Log => "log",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Recip => "recip",
                UnaryOp::Abs => "abs",
                UnaryOp::Sign => "sign",
            },
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Max => "max",
                BinaryOp::Min => "min",
            },
            Op::Compare(c) => match c {
                CmpOp::Lt => "lt",
                CmpOp::Le => "le",
                CmpOp::Gt => "gt",
                CmpOp::Ge => "ge",
                CmpOp::Eq => "eq",
                CmpOp::Ne => "ne",
            },
            Op::Select => "select",
            Op::StopGradient => "stop_gradient",
            Op::Reduce { op: ReduceOp::Sum, .. } => "reduce_sum",
            Op::Reduce { op: ReduceOp::Max, .. } => "reduce_max",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Broadcast { .. } => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Pad { .. } => "pad",
            Op::Concat { .. } => "concat",
            Op::MatMul { .. } => "matmul",
            Op::Conv2d(_) => "conv2d",
            Op::Conv2dGradInput { .. } => "conv2d_grad_input",
            Op::Conv2dGradWeight { .. } => "conv2d_grad_weight",
            Op::MaxPool2d(_) => "max_pool2d",
            Op::MaxPool2dGrad(_) => "max_pool2d_grad",
            Op::MaxPool2dGather(_) => "max_pool2d_gather",
            Op::AvgPool2d(_) => "avg_pool2d",
            Op::AvgPool2dGrad { .. } => "avg_pool2d_grad",
            Op::OneHot { .. } => "one_hot",
            Op::DropoutMask { .. } => "dropout_mask",
            Op::Fused { .. } => "fused",
            Op::FusedReduce { op: ReduceOp::Sum, .. } => "fused_reduce_sum",
            Op::FusedReduce { op: ReduceOp::Max, .. } => "fused_reduce_max",
            Op::Epilogue { .. } => "epilogue",
        }
    }
}

/// The operand views of a program, when it has any operands.
fn views(p: &Program) -> String {
    if p.views.is_empty() {
        return String::new();
    }
    format!(" | {}", p.views.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" "))
}

fn list(v: &[usize]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

impl fmt::Display for Conv2dAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stride={} pad={}", list(&self.stride), list(&self.padding))
    }
}

impl fmt::Display for PoolAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kernel={} stride={} pad={}", list(&self.kernel), list(&self.stride), list(&self.padding))
    }
}

/// The op with its attributes, as the text form prints it: `reduce_sum{axes=0,1}`.
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.mnemonic();
        match self {
            Op::Input { name } | Op::Param { name } | Op::State { name } | Op::Scalar { name } => {
                write!(f, "{m} {name:?}")
            }
            Op::Const { value } => write!(f, "{m} {value:?}"),
            Op::Reduce { axes, .. } => write!(f, "{m}{{axes={}}}", list(axes)),
            Op::Reshape { shape } | Op::Broadcast { shape } => write!(f, "{m}{{{shape}}}"),
            Op::Permute { perm } => write!(f, "{m}{{{}}}", list(perm)),
            Op::Slice { start, end } => write!(f, "{m}{{start={} end={}}}", list(start), list(end)),
            Op::Pad { lo, hi } => write!(f, "{m}{{lo={} hi={}}}", list(lo), list(hi)),
            Op::Concat { axis, .. } => write!(f, "{m}{{axis={axis}}}"),
            Op::Conv2d(a) => write!(f, "{m}{{{a}}}"),
            Op::Conv2dGradInput { attrs, input_hw } => write!(f, "{m}{{{attrs} hw={}}}", list(input_hw)),
            Op::Conv2dGradWeight { attrs, kernel } => write!(f, "{m}{{{attrs} kernel={}}}", list(kernel)),
            Op::MaxPool2d(a) | Op::MaxPool2dGrad(a) | Op::MaxPool2dGather(a) | Op::AvgPool2d(a) => {
                write!(f, "{m}{{{a}}}")
            }
            Op::AvgPool2dGrad { attrs, input_hw } => write!(f, "{m}{{{attrs} hw={}}}", list(input_hw)),
            Op::OneHot { classes } => write!(f, "{m}{{classes={classes}}}"),
            Op::DropoutMask { p, seed, shape } => write!(f, "{m}{{p={p:?} seed={seed} shape={shape}}}"),
            Op::MatMul { ta, tb } if *ta || *tb => {
                let t: Vec<&str> = [(*ta, "ta"), (*tb, "tb")].iter().filter(|x| x.0).map(|x| x.1).collect();
                write!(f, "{m}{{{}}}", t.join(","))
            }
            Op::Fused { program, output, group, .. } => {
                write!(f, "{m}{{g{group}.{output}: {}{}}}", program.expr(*output as usize), views(program))
            }
            Op::Epilogue { program, .. } => write!(f, "{m}{{{}{}}}", program.expr(0), views(program)),
            Op::FusedReduce { program, axes, space, group, .. } => {
                let with = if *group != 0 { format!("g{group} ") } else { String::new() };
                write!(f, "{m}{{{with}axes={} over {space}: {}{}}}", list(axes), program.expr(0), views(program))
            }
            _ => f.write_str(m),
        }
    }
}

/// The uniform number in `[0, 1)` that dropout draws for element `index` at `step`.
///
/// A counter-based hash on 32-bit integers (the "lowbias32" mixer), so a GPU kernel can
/// reproduce it exactly and no RNG state has to be carried between passes.
pub fn dropout_uniform(seed: u32, step: u32, index: u32) -> f32 {
    fn mix(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb_352d);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846c_a68b);
        x ^= x >> 16;
        x
    }
    let h = mix(mix(mix(seed) ^ step) ^ index);
    (h >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}
