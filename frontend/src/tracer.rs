//! The tracer: model code calls ops on traced values (`Var`) and the tracer records them as
//! IR nodes, checking shapes as it goes.

use crate::error::{FrontendError, Result};
use crate::init::Init;
use plateau_compiler::ir::{BinaryOp, CmpOp, Conv2dAttrs, Op, OutputKind, PoolAttrs, ReduceOp, UnaryOp};
use plateau_compiler::{DType, Graph, IrError, NodeId, Shape};
use serde::{Deserialize, Serialize};
use std::panic::Location;

/// A traced value: a handle to a node of the graph being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(pub NodeId);

/// A trainable tensor declared while tracing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// PyTorch `state_dict` name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    pub node: NodeId,
    pub shape: Shape,
    pub init: Init,
}

/// A non-trainable tensor carried between steps (BatchNorm running statistics).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateSpec {
    pub name: String,
    pub node: NodeId,
    pub shape: Shape,
    pub init: Init,
}

/// Records a model's forward pass (and loss) as an IR graph.
pub struct Tracer {
    graph: Graph,
    dtype: DType,
    training: bool,
    scope: Vec<String>,
    params: Vec<ParamSpec>,
    states: Vec<StateSpec>,
    step: Option<NodeId>,
    dropout_layers: u32,
    seed: u64,
}

type At = &'static Location<'static>;

impl Tracer {
    /// A tracer building a graph of floating-point type `dtype`; `training` selects batch
    /// statistics and active dropout.
    pub fn new(dtype: DType, training: bool) -> Self {
        Tracer {
            graph: Graph::new(),
            dtype,
            training,
            scope: Vec::new(),
            params: Vec::new(),
            states: Vec::new(),
            step: None,
            dropout_layers: 0,
            seed: 0,
        }
    }

    /// The tracer with the run's `seed`, which seeds its dropout layers' masks (0 unless
    /// given; `TraceOptions::seed` for the zoo and `trace_with`).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn training(&self) -> bool {
        self.training
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    pub fn states(&self) -> &[StateSpec] {
        &self.states
    }

    /// Hands over the graph and the declared parameters and state.
    pub fn finish(self) -> (Graph, Vec<ParamSpec>, Vec<StateSpec>) {
        (self.graph, self.params, self.states)
    }

    pub fn shape(&self, x: Var) -> &Shape {
        self.graph.shape(x.0)
    }

    /// Runs `f` with `name` appended to the parameter-name scope (`layer1` then `0` gives
    /// `layer1.0.`).
    pub fn scoped<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.scope.push(name.to_string());
        let r = f(self);
        self.scope.pop();
        r
    }

    fn qualify(&self, name: &str) -> String {
        let mut parts = self.scope.clone();
        parts.push(name.to_string());
        parts.join(".")
    }

    fn ir<T>(r: std::result::Result<T, IrError>, at: At) -> Result<T> {
        r.map_err(|e| FrontendError::op(e, at))
    }

    // ---- leaves --------------------------------------------------------------

    /// A batch input of the given shape and the tracer's dtype.
    #[track_caller]
    pub fn input(&mut self, name: &str, shape: impl Into<Shape>) -> Result<Var> {
        let at = Location::caller();
        let d = self.dtype;
        Self::ir(self.graph.leaf(Op::Input { name: name.into() }, d, shape), at).map(Var)
    }

    /// A batch of integer class labels.
    #[track_caller]
    pub fn labels(&mut self, name: &str, batch: usize) -> Result<Var> {
        let at = Location::caller();
        Self::ir(self.graph.leaf(Op::Input { name: name.into() }, DType::I32, [batch]), at).map(Var)
    }

    /// A runtime scalar (`lr`, `rho`, `step`): its value is fed at run time.
    #[track_caller]
    pub fn scalar(&mut self, name: &str) -> Result<Var> {
        let at = Location::caller();
        if let Some(id) = self.graph.find_leaf("scalar", name) {
            return Ok(Var(id));
        }
        let d = self.dtype;
        Self::ir(self.graph.leaf(Op::Scalar { name: name.into() }, d, Shape::scalar()), at).map(Var)
    }

    /// A trainable parameter named `name` within the current scope.
    #[track_caller]
    pub fn param(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Var> {
        let at = Location::caller();
        Self::check_init(name, &init, at)?;
        let (name, shape) = (self.qualify(name), shape.into());
        let d = self.dtype;
        let node = Self::ir(self.graph.leaf(Op::Param { name: name.clone() }, d, shape.clone()), at)?;
        self.params.push(ParamSpec { name, node, shape, init });
        Ok(Var(node))
    }

    /// An initializer its sampling can draw from (a uniform bound finite and non-negative).
    fn check_init(name: &str, init: &Init, at: &'static Location<'static>) -> Result<()> {
        match init {
            &Init::Uniform { bound } if !(bound.is_finite() && bound >= 0.0) => {
                Err(FrontendError::config(name, format!("Init::Uniform's bound must be a finite non-negative number, got {bound}"), at))
            }
            _ => Ok(()),
        }
    }

    /// A state tensor named `name` within the current scope.
    #[track_caller]
    pub fn state(&mut self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Var> {
        let at = Location::caller();
        Self::check_init(name, &init, at)?;
        let (name, shape) = (self.qualify(name), shape.into());
        let d = self.dtype;
        let node = Self::ir(self.graph.leaf(Op::State { name: name.clone() }, d, shape.clone()), at)?;
        self.states.push(StateSpec { name, node, shape, init });
        Ok(Var(node))
    }

    /// Records `value` as the next value of `state`.
    #[track_caller]
    pub fn update_state(&mut self, state: Var, value: Var) -> Result<()> {
        let at = Location::caller();
        let name = self
            .states
            .iter()
            .find(|s| s.node == state.0)
            .map(|s| s.name.clone())
            .ok_or_else(|| FrontendError::config("state update", format!("{} is not a state", state.0), at))?;
        Self::ir(self.graph.add_output(name, value.0, OutputKind::StateUpdate { state: state.0 }), at)
    }

    /// Declares `x` an output named `name`.
    #[track_caller]
    pub fn output(&mut self, name: &str, x: Var) -> Result<()> {
        let at = Location::caller();
        Self::ir(self.graph.add_output(name, x.0, OutputKind::Value), at)
    }

    /// The step counter scalar (drives dropout masks).
    #[track_caller]
    pub fn step(&mut self) -> Result<Var> {
        let at = Location::caller();
        if let Some(s) = self.step.or_else(|| self.graph.find_leaf("scalar", "step")) {
            self.step = Some(s);
            return Ok(Var(s));
        }
        let d = self.dtype;
        let s = Self::ir(self.graph.leaf(Op::Scalar { name: "step".into() }, d, Shape::scalar()), at)?;
        self.step = Some(s);
        Ok(Var(s))
    }

    /// A fresh seed for each dropout layer, in tracing order, mixed with the run's seed (seed
    /// 0 gives the layer's number).
    pub(crate) fn next_dropout_seed(&mut self) -> u32 {
        self.dropout_layers += 1;
        let m = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.dropout_layers ^ (m as u32) ^ ((m >> 32) as u32)
    }

    // ---- raw ops ---------------------------------------------------------------

    /// Applies an IR op directly (no broadcasting).
    #[track_caller]
    pub fn apply(&mut self, op: Op, operands: &[Var]) -> Result<Var> {
        self.apply_at(Location::caller(), op, operands)
    }

    fn apply_at(&mut self, at: At, op: Op, operands: &[Var]) -> Result<Var> {
        let ids: Vec<NodeId> = operands.iter().map(|v| v.0).collect();
        Self::ir(self.graph.add(op, &ids), at).map(Var)
    }

    /// A constant of the tracer's dtype broadcast to `shape`.
    #[track_caller]
    pub fn full(&mut self, value: f64, shape: &Shape) -> Result<Var> {
        let at = Location::caller();
        let d = self.dtype;
        Self::ir(self.graph.full(value, d, shape), at).map(Var)
    }

    fn broadcast_pair(&mut self, at: At, op: &str, a: Var, b: Var) -> Result<(Var, Var)> {
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        if sa == sb {
            return Ok((a, b));
        }
        let rank = sa.rank().max(sb.rank());
        let dim = |s: &Shape, i: usize| if i + s.rank() < rank { 1 } else { s.0[i + s.rank() - rank] };
        let mut out = Vec::with_capacity(rank);
        for i in 0..rank {
            let (x, y) = (dim(&sa, i), dim(&sb, i));
            if x != y && x != 1 && y != 1 {
                let operands = vec![self.graph.ty(a.0).clone(), self.graph.ty(b.0).clone()];
                return Err(FrontendError::op(
                    IrError::Shape { op: op.to_string(), operands, reason: format!("shapes {sa} and {sb} do not broadcast") },
                    at,
                ));
            }
            out.push(x.max(y));
        }
        let out = Shape(out);
        let a = Self::ir(self.graph.broadcast(a.0, &out), at)?;
        let b = Self::ir(self.graph.broadcast(b.0, &out), at)?;
        Ok((Var(a), Var(b)))
    }

    fn binary_at(&mut self, at: At, op: BinaryOp, a: Var, b: Var) -> Result<Var> {
        let (a, b) = self.broadcast_pair(at, Op::Binary(op).mnemonic(), a, b)?;
        self.apply_at(at, Op::Binary(op), &[a, b])
    }

    // ---- elementwise (NumPy broadcasting) -------------------------------------

    #[track_caller]
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary_at(Location::caller(), BinaryOp::Add, a, b)
    }

    #[track_caller]
    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary_at(Location::caller(), BinaryOp::Sub, a, b)
    }

    #[track_caller]
    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary_at(Location::caller(), BinaryOp::Mul, a, b)
    }

    #[track_caller]
    pub fn div(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary_at(Location::caller(), BinaryOp::Div, a, b)
    }

    #[track_caller]
    pub fn maximum(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary_at(Location::caller(), BinaryOp::Max, a, b)
    }

    #[track_caller]
    pub fn unary(&mut self, op: UnaryOp, x: Var) -> Result<Var> {
        self.apply_at(Location::caller(), Op::Unary(op), &[x])
    }

    /// `x * value`.
    #[track_caller]
    pub fn scale(&mut self, x: Var, value: f64) -> Result<Var> {
        let at = Location::caller();
        Self::ir(self.graph.scale(x.0, value), at).map(Var)
    }

    /// `x + value`.
    #[track_caller]
    pub fn add_scalar(&mut self, x: Var, value: f64) -> Result<Var> {
        let at = Location::caller();
        let c = Self::ir(self.graph.full_like(value, x.0), at)?;
        self.apply_at(at, Op::Binary(BinaryOp::Add), &[x, Var(c)])
    }

    #[track_caller]
    pub fn relu(&mut self, x: Var) -> Result<Var> {
        let at = Location::caller();
        let zero = Self::ir(self.graph.full_like(0.0, x.0), at)?;
        self.apply_at(at, Op::Binary(BinaryOp::Max), &[x, Var(zero)])
    }

    #[track_caller]
    pub fn compare(&mut self, op: CmpOp, a: Var, b: Var) -> Result<Var> {
        let at = Location::caller();
        let (a, b) = self.broadcast_pair(at, Op::Compare(op).mnemonic(), a, b)?;
        self.apply_at(at, Op::Compare(op), &[a, b])
    }

    #[track_caller]
    pub fn select(&mut self, cond: Var, a: Var, b: Var) -> Result<Var> {
        self.apply_at(Location::caller(), Op::Select, &[cond, a, b])
    }

    // ---- reductions and layout -------------------------------------------------

    /// Sum over `axes`, keeping them with size 1.
    #[track_caller]
    pub fn sum(&mut self, x: Var, axes: &[usize]) -> Result<Var> {
        self.apply_at(Location::caller(), Op::Reduce { op: ReduceOp::Sum, axes: axes.to_vec() }, &[x])
    }

    /// Max over `axes`, keeping them with size 1.
    #[track_caller]
    pub fn max(&mut self, x: Var, axes: &[usize]) -> Result<Var> {
        self.apply_at(Location::caller(), Op::Reduce { op: ReduceOp::Max, axes: axes.to_vec() }, &[x])
    }

    /// Mean over `axes`, keeping them with size 1.
    #[track_caller]
    pub fn mean(&mut self, x: Var, axes: &[usize]) -> Result<Var> {
        let at = Location::caller();
        let s = self.apply_at(at, Op::Reduce { op: ReduceOp::Sum, axes: axes.to_vec() }, &[x])?;
        let n: usize = axes.iter().map(|&a| self.shape(x).0.get(a).copied().unwrap_or(1)).product();
        Self::ir(self.graph.scale(s.0, 1.0 / n.max(1) as f64), at).map(Var)
    }

    #[track_caller]
    pub fn reshape(&mut self, x: Var, shape: impl Into<Shape>) -> Result<Var> {
        let at = Location::caller();
        Self::ir(self.graph.reshape(x.0, shape), at).map(Var)
    }

    #[track_caller]
    pub fn permute(&mut self, x: Var, perm: &[usize]) -> Result<Var> {
        self.apply_at(Location::caller(), Op::Permute { perm: perm.to_vec() }, &[x])
    }

    #[track_caller]
    pub fn broadcast(&mut self, x: Var, shape: &Shape) -> Result<Var> {
        let at = Location::caller();
        Self::ir(self.graph.broadcast(x.0, shape), at).map(Var)
    }

    // ---- macro-ops ---------------------------------------------------------------

    #[track_caller]
    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.apply_at(Location::caller(), Op::MatMul { ta: false, tb: false }, &[a, b])
    }

    #[track_caller]
    pub fn conv2d(&mut self, x: Var, w: Var, stride: usize, padding: usize) -> Result<Var> {
        let attrs = Conv2dAttrs { stride: [stride; 2], padding: [padding; 2] };
        self.apply_at(Location::caller(), Op::Conv2d(attrs), &[x, w])
    }

    #[track_caller]
    pub fn max_pool2d(&mut self, x: Var, kernel: usize, stride: usize, padding: usize) -> Result<Var> {
        let attrs = PoolAttrs { kernel: [kernel; 2], stride: [stride; 2], padding: [padding; 2] };
        self.apply_at(Location::caller(), Op::MaxPool2d(attrs), &[x])
    }

    #[track_caller]
    pub fn avg_pool2d(&mut self, x: Var, kernel: usize, stride: usize, padding: usize) -> Result<Var> {
        let attrs = PoolAttrs { kernel: [kernel; 2], stride: [stride; 2], padding: [padding; 2] };
        self.apply_at(Location::caller(), Op::AvgPool2d(attrs), &[x])
    }

    /// `x`'s value, through which no gradient flows (JAX's `stop_gradient`, PyTorch's
    /// `detach`). It costs no kernel.
    #[track_caller]
    pub fn stop_gradient(&mut self, x: Var) -> Result<Var> {
        self.apply_at(Location::caller(), Op::StopGradient, &[x])
    }

    #[track_caller]
    pub fn one_hot(&mut self, labels: Var, classes: usize) -> Result<Var> {
        self.apply_at(Location::caller(), Op::OneHot { classes }, &[labels])
    }
}
