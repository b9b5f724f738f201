//! The reference interpreter: executes any IR graph on the CPU, one op at a time, in the
//! graph's own precision (f32 or f64). It is the oracle every other backend is tested against.

mod fused;
mod layout;
mod tensor;
mod window;

pub use tensor::{round, Tensor};

use crate::error::RuntimeError;
use plateau_compiler::ir::{apply_binary, apply_compare, apply_unary, dropout_uniform, leaf_kind, leaf_name, Op, OutputKind};
use plateau_compiler::{Graph, NodeId, Shape};
use std::collections::{BTreeMap, HashMap};
use window::Window;

/// Values for a graph's leaves, by kind and name.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    values: BTreeMap<(String, String), Tensor>,
}

impl Bindings {
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `value` to the leaf of `kind` ("input", "param", "state", "scalar") named `name`.
    pub fn set(&mut self, kind: &str, name: &str, value: Tensor) -> &mut Self {
        self.values.insert((kind.to_string(), name.to_string()), value);
        self
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<&Tensor> {
        self.values.get(&(kind.to_string(), name.to_string()))
    }
}

/// Evaluates every output of `graph`, by output name.
pub fn run(graph: &Graph, bindings: &Bindings) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
    let nodes: Vec<NodeId> = graph.outputs().iter().map(|o| o.node).collect();
    let values = evaluate(graph, bindings, &nodes)?;
    Ok(graph.outputs().iter().map(|o| o.name.clone()).zip(values).collect())
}

/// Runs one step of a program whose `StateUpdate` outputs carry state from step to step:
/// evaluates every output, then rebinds each updated leaf to its new value. Returns the
/// value outputs (loss, metrics).
pub fn run_step(graph: &Graph, bindings: &mut Bindings) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
    let mut out = run(graph, bindings)?;
    let mut values = BTreeMap::new();
    for o in graph.outputs() {
        let v = out.remove(&o.name).expect("invariant: run returns every output");
        match o.kind {
            OutputKind::Value => {
                values.insert(o.name.clone(), v);
            }
            OutputKind::StateUpdate { state } => {
                let op = &graph.node(state).op;
                let (kind, name) = (leaf_kind(op).expect("updates target leaves"), leaf_name(op).expect("named"));
                bindings.set(kind, name, v);
            }
        }
    }
    Ok(values)
}

/// Evaluates the given nodes (and only what they depend on).
pub fn evaluate(graph: &Graph, bindings: &Bindings, nodes: &[NodeId]) -> Result<Vec<Tensor>, RuntimeError> {
    for &n in nodes {
        graph.try_node(n)?;
    }
    // Remaining uses of each needed node, so values are dropped once consumed.
    let mut uses: HashMap<NodeId, usize> = HashMap::new();
    let mut stack: Vec<NodeId> = nodes.to_vec();
    let mut needed = std::collections::HashSet::new();
    while let Some(n) = stack.pop() {
        if needed.insert(n) {
            stack.extend(graph.operands(n));
        }
    }
    for &n in &needed {
        for o in graph.operands(n) {
            *uses.entry(o).or_default() += 1;
        }
    }
    for &n in nodes {
        *uses.entry(n).or_default() += 1;
    }
    let mut values: HashMap<NodeId, Tensor> = HashMap::new();
    for id in graph.node_ids().filter(|id| needed.contains(id)) {
        let operands = graph.operands(id);
        let value = {
            let args: Vec<&Tensor> = operands.iter().map(|o| &values[o]).collect();
            eval_node(graph, id, &args, bindings)?
        };
        for o in operands {
            let u = uses.get_mut(&o).expect("invariant: operand uses counted");
            *u -= 1;
            if *u == 0 {
                values.remove(&o);
            }
        }
        values.insert(id, value);
    }
    Ok(nodes.iter().map(|n| values[n].clone()).collect())
}

fn eval_node(graph: &Graph, id: NodeId, args: &[&Tensor], bindings: &Bindings) -> Result<Tensor, RuntimeError> {
    let node = graph.node(id);
    let ty = node.ty.clone();
    let dtype = ty.dtype;
    let data: Vec<f64> = match &node.op {
        Op::Const { value } => vec![*value],
        op if op.is_leaf() => {
            let kind = leaf_kind(op).expect("invariant: non-const leaves are named");
            let name = leaf_name(op).expect("invariant: non-const leaves are named");
            let v = bindings.get(kind, name).ok_or_else(|| RuntimeError::MissingBinding { kind, name: name.into() })?;
            if v.ty != ty {
                return Err(RuntimeError::BindingMismatch { kind, name: name.into(), expected: ty, got: v.ty.clone() });
            }
            return Ok(v.clone());
        }
        Op::Unary(u) => args[0].data.iter().map(|&x| apply_unary(*u, x)).collect(),
        Op::Binary(b) => zip(args[0], args[1], |x, y| apply_binary(*b, x, y)),
        Op::Compare(c) => zip(args[0], args[1], |x, y| apply_compare(*c, x, y)),
        Op::Select => {
            args[0].data.iter().zip(&args[1].data).zip(&args[2].data).map(|((&c, &a), &b)| if c != 0.0 { a } else { b }).collect()
        }
        Op::Reduce { op, axes } => layout::reduce(*op, &args[0].data, args[0].shape(), axes),
        Op::Reshape { .. } | Op::StopGradient => args[0].data.clone(),
        Op::Permute { perm } => layout::permute(&args[0].data, args[0].shape(), perm),
        Op::Broadcast { shape } => layout::broadcast(&args[0].data, args[0].shape(), shape),
        Op::Slice { start, end } => layout::slice(&args[0].data, args[0].shape(), start, end),
        Op::Pad { lo, hi } => layout::pad(&args[0].data, args[0].shape(), lo, hi),
        Op::Concat { axis, .. } => {
            let parts: Vec<(&[f64], &Shape)> = args.iter().map(|a| (a.data.as_slice(), a.shape())).collect();
            layout::concat(&parts, *axis, &ty.shape)
        }
        Op::MatMul { ta, tb } => {
            let a = args[0].shape();
            let (m, n) = (ty.shape.0[0], ty.shape.0[1]);
            let k = if *ta { a.0[0] } else { a.0[1] };
            // A transposed operand is the same buffer read with swapped strides.
            let sa = if *ta { (1, m as isize) } else { (k as isize, 1) };
            let sb = if *tb { (1, k as isize) } else { (n as isize, 1) };
            let mut c = vec![0.0; m * n];
            layout::gemm(m, k, n, &args[0].data, sa, &args[1].data, sb, 0.0, &mut c);
            c
        }
        Op::Fused { program, output, .. } => fused::map(program, *output, args, &ty),
        Op::Epilogue { program, .. } => fused::map(program, 0, args, &ty),
        Op::FusedReduce { program, op, axes, space, .. } => {
            let pro = fused::map(program, 0, args, space);
            layout::reduce(*op, &pro, &space.shape, axes)
        }
        Op::Conv2d(a) => {
            let (x, w) = (args[0], args[1]);
            let win = Window::conv(&x.shape().0, [w.shape().0[2], w.shape().0[3]], a, [ty.shape.0[2], ty.shape.0[3]]);
            window::conv2d(&x.data, &w.data, &win, w.shape().0[0])
        }
        Op::Conv2dGradInput { attrs, .. } => {
            let (gy, w) = (args[0], args[1]);
            let win = Window::conv(&ty.shape.0, [w.shape().0[2], w.shape().0[3]], attrs, [gy.shape().0[2], gy.shape().0[3]]);
            window::conv2d_grad_input(&gy.data, &w.data, &win, w.shape().0[0])
        }
        Op::Conv2dGradWeight { attrs, kernel } => {
            let (x, gy) = (args[0], args[1]);
            let win = Window::conv(&x.shape().0, *kernel, attrs, [gy.shape().0[2], gy.shape().0[3]]);
            window::conv2d_grad_weight(&x.data, &gy.data, &win, gy.shape().0[1])
        }
        Op::MaxPool2d(a) => window::max_pool2d(&args[0].data, &Window::pool(&args[0].shape().0, a, out_hw(&ty.shape))),
        Op::MaxPool2dGrad(a) => {
            let win = Window::pool(&args[0].shape().0, a, out_hw(args[1].shape()));
            window::max_pool2d_grad(&args[0].data, &args[1].data, &win)
        }
        Op::MaxPool2dGather(a) => {
            window::max_pool2d_gather(&args[0].data, &args[1].data, &Window::pool(&args[0].shape().0, a, out_hw(&ty.shape)))
        }
        Op::AvgPool2d(a) => window::avg_pool2d(&args[0].data, &Window::pool(&args[0].shape().0, a, out_hw(&ty.shape))),
        Op::AvgPool2dGrad { attrs, .. } => {
            window::avg_pool2d_grad(&args[0].data, &Window::pool(&ty.shape.0, attrs, out_hw(args[0].shape())))
        }
        Op::OneHot { classes } => {
            let mut out = vec![0.0; ty.shape.numel()];
            for (position, &l) in args[0].data.iter().enumerate() {
                if l < 0.0 || l as usize >= *classes {
                    return Err(RuntimeError::LabelOutOfRange { label: l as i64, position, classes: *classes });
                }
                out[position * classes + l as usize] = 1.0;
            }
            out
        }
        Op::DropoutMask { p, seed, .. } => {
            let step = args[0].item() as u32;
            (0..ty.shape.numel()).map(|i| (dropout_uniform(*seed, step, i as u32) as f64 >= *p) as u8 as f64).collect()
        }
        Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Scalar { .. } => unreachable!("leaves handled above"),
    };
    Tensor::new(dtype, ty.shape, data)
}

fn zip(a: &Tensor, b: &Tensor, f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect()
}

fn out_hw(s: &Shape) -> [usize; 2] {
    [s.0[2], s.0[3]]
}
