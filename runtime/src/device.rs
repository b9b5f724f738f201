//! Executing a compiled step on a cubecl device: one device buffer per buffer of the memory
//! plan, kernels launched in schedule order, values read back only when asked.

use crate::error::RuntimeError;
use crate::reference::Tensor;
use plateau_compiler::ir::{leaf_kind, leaf_name, Op, OutputKind, Program};
use plateau_compiler::{Compiled, DType, Graph, NodeId, Shape};
use plateau_kernels::cubecl::prelude::*;
use plateau_kernels::cubecl::server::Handle;
use plateau_kernels::host::{download, BLOCK};
use plateau_kernels::macros::{matmul, one_hot, MatmulSpec};
use plateau_kernels::reduce::ReduceLayout;
use plateau_kernels::{elementwise::fused_map, KernelProgram};

/// A compiled step resident on a device.
pub struct DeviceStep<R: Runtime> {
    client: ComputeClient<R>,
    graph: Graph,
    compiled: Compiled,
    buffers: Vec<(Handle, usize)>,
}

fn unsupported(what: impl Into<String>) -> RuntimeError {
    RuntimeError::Unsupported(what.into())
}

impl<R: Runtime> DeviceStep<R> {
    /// Allocates every buffer of the plan and uploads the constants.
    pub fn new(client: ComputeClient<R>, compiled: &Compiled) -> Result<Self, RuntimeError> {
        let graph = compiled.fused.clone();
        if let Some(id) = graph.node_ids().find(|&id| graph.dtype(id) == DType::F64) {
            return Err(unsupported(format!("f64 values on a device ({id})")));
        }
        let buffers = compiled
            .schedule
            .buffers
            .iter()
            .map(|b| {
                let len = (b.bytes as usize / 4).max(1);
                (client.empty(len * 4), len)
            })
            .collect();
        let mut step = DeviceStep { client, graph, compiled: compiled.clone(), buffers };
        for id in step.graph.node_ids().collect::<Vec<_>>() {
            if let Op::Const { value } = step.graph.node(id).op {
                step.write(id, &[value as f32]);
            }
        }
        Ok(step)
    }

    fn loc(&self, id: NodeId) -> (Handle, usize, usize) {
        let (b, off) = self.compiled.schedule.locations[&id];
        let (h, len) = &self.buffers[b];
        (h.clone(), *len, off)
    }

    fn write(&mut self, id: NodeId, data: &[f32]) {
        let (b, off) = self.compiled.schedule.locations[&id];
        let (_, len) = self.buffers[b];
        if off == 0 && data.len() == len {
            self.buffers[b].0 = self.client.create_from_slice(f32::as_bytes(data));
            return;
        }
        let mut all = self.read_buffer(b);
        all[off..off + data.len()].copy_from_slice(data);
        self.buffers[b].0 = self.client.create_from_slice(f32::as_bytes(&all));
    }

    fn read_buffer(&self, b: usize) -> Vec<f32> {
        let (h, len) = &self.buffers[b];
        download(&self.client, h.clone(), *len).expect("invariant: device buffers are readable")
    }

    fn leaf(&self, kind: &str, name: &str) -> Result<NodeId, RuntimeError> {
        self.graph.find_leaf(kind, name).ok_or_else(|| RuntimeError::MissingBinding { kind: "leaf", name: format!("{kind} `{name}`") })
    }

    /// Uploads the value of a leaf (input, parameter arena, state, scalar).
    pub fn set(&mut self, kind: &str, name: &str, value: &Tensor) -> Result<(), RuntimeError> {
        let id = self.leaf(kind, name)?;
        let ty = self.graph.ty(id).clone();
        if value.ty != ty {
            return Err(RuntimeError::BindingMismatch { kind: "leaf", name: name.into(), expected: ty, got: value.ty.clone() });
        }
        self.write(id, &value.to_f32());
        Ok(())
    }

    /// Reads a node's value back.
    fn read(&self, id: NodeId) -> Result<Tensor, RuntimeError> {
        let (b, off) = self.compiled.schedule.locations[&id];
        let ty = self.graph.ty(id).clone();
        let all = self.read_buffer(b);
        Tensor::new(ty.dtype, ty.shape.clone(), all[off..off + ty.shape.numel()].iter().map(|&v| v as f64).collect())
    }

    /// Reads a leaf back (after steps: the updated parameters and state).
    pub fn get(&self, kind: &str, name: &str) -> Result<Tensor, RuntimeError> {
        self.read(self.leaf(kind, name)?)
    }

    /// Reads a value output (loss, accuracy, grad_sq_norm) of the last step.
    pub fn output(&self, name: &str) -> Result<Tensor, RuntimeError> {
        let id = self.graph.output(name).ok_or_else(|| RuntimeError::MissingBinding { kind: "output", name: name.into() })?;
        self.read(id)
    }

    /// Runs one step: every kernel in order, then the state updates that were not computed in
    /// place.
    pub fn step(&mut self) -> Result<(), RuntimeError> {
        for k in self.compiled.schedule.kernels.clone() {
            self.launch(&k.nodes)?;
        }
        for o in self.graph.outputs().to_vec() {
            if let OutputKind::StateUpdate { state } = o.kind {
                if self.compiled.schedule.locations[&o.node] != self.compiled.schedule.locations[&state] {
                    self.copy(o.node, state);
                }
            }
        }
        Ok(())
    }

    fn copy(&self, from: NodeId, to: NodeId) {
        let shape = self.graph.shape(from).clone();
        let p = Program { views: vec![shape.clone()], instrs: vec![plateau_compiler::ir::Instr::Load(0)], outputs: vec![0] };
        let (ih, il, io) = self.loc(from);
        let (oh, ol, oo) = self.loc(to);
        self.map(&p, &shape, &[(ih, il, io)], &[(oh, ol, oo)]);
    }

    fn map(&self, program: &Program, space: &Shape, inputs: &[(Handle, usize, usize)], outputs: &[(Handle, usize, usize)]) {
        let n = space.numel();
        if n == 0 {
            return;
        }
        let offs_in: Vec<usize> = inputs.iter().map(|x| x.2).collect();
        let offs_out: Vec<usize> = outputs.iter().map(|x| x.2).collect();
        let prog = KernelProgram::new(program, space).with_offsets(&offs_in, &offs_out);
        let mut ins = SequenceArg::new();
        for (h, len, _) in inputs {
            // SAFETY: the handle holds `len` f32 values.
            ins.push(unsafe { ArrayArg::from_raw_parts(h.clone(), *len) });
        }
        let mut outs = SequenceArg::new();
        for (h, len, _) in outputs {
            // SAFETY: the handle holds `len` f32 values.
            outs.push(unsafe { ArrayArg::from_raw_parts(h.clone(), *len) });
        }
        let dim = CubeDim::new_1d(BLOCK);
        let count = plateau_kernels::cubecl::calculate_cube_count_elemwise(&self.client, n, dim);
        fused_map::launch::<R>(&self.client, count, dim, ins, outs, n, prog);
    }

    fn launch(&mut self, nodes: &[NodeId]) -> Result<(), RuntimeError> {
        let first = nodes[0];
        let operands = self.graph.operands(first);
        let inputs: Vec<(Handle, usize, usize)> = operands.iter().map(|&o| self.loc(o)).collect();
        let op = self.graph.node(first).op.clone();
        let dim = CubeDim::new_1d(BLOCK);
        match op {
            Op::Fused { program, ty, .. } => {
                // One buffer per program output; outputs no node uses go to scratch memory.
                let mut outputs = Vec::new();
                for i in 0..program.outputs.len() {
                    let node = nodes.iter().find(|&&n| matches!(self.graph.node(n).op, Op::Fused { output, .. } if output as usize == i));
                    outputs.push(match node {
                        Some(&n) => self.loc(n),
                        None => (self.client.empty(ty.shape.numel().max(1) * 4), ty.shape.numel().max(1), 0),
                    });
                }
                self.map(&program, &ty.shape, &inputs, &outputs);
            }
            Op::FusedReduce { program, op, axes, space } => {
                let layout = ReduceLayout::new(&space.shape, &axes);
                let n = layout.outputs;
                let (oh, ol, oo) = self.loc(first);
                let offs: Vec<usize> = inputs.iter().map(|x| x.2).collect();
                let prog = KernelProgram::new(&program, &space.shape).with_offsets(&offs, &[oo]);
                let mut ins = SequenceArg::new();
                for (h, len, _) in &inputs {
                    // SAFETY: the handle holds `len` f32 values.
                    ins.push(unsafe { ArrayArg::from_raw_parts(h.clone(), *len) });
                }
                // SAFETY: the output buffer holds `ol` f32 values.
                let out = unsafe { ArrayArg::from_raw_parts(oh, ol) };
                let _ = n;
                plateau_kernels::reduce::launch_reduce::<R>(&self.client, op, ins, out, layout, prog);
            }
            Op::MatMul { ta, tb } => {
                let out = self.graph.shape(first).clone();
                let a = self.graph.shape(operands[0]).clone();
                let (m, n) = (out.0[0], out.0[1]);
                let k = if ta { a.0[0] } else { a.0[1] };
                let (oh, ol, oo) = self.loc(first);
                let spec = MatmulSpec { m, k, n, ta, tb, a_offset: inputs[0].2, b_offset: inputs[1].2, out_offset: oo };
                let count = plateau_kernels::cubecl::calculate_cube_count_elemwise(&self.client, (m * n).max(1), dim);
                // SAFETY: each handle holds the stated number of f32 values.
                let (a, b, o) = unsafe {
                    (
                        ArrayArg::from_raw_parts(inputs[0].0.clone(), inputs[0].1),
                        ArrayArg::from_raw_parts(inputs[1].0.clone(), inputs[1].1),
                        ArrayArg::from_raw_parts(oh, ol),
                    )
                };
                matmul::launch::<R>(&self.client, count, dim, a, b, o, spec);
            }
            Op::OneHot { classes } => {
                let rows = self.graph.shape(operands[0]).0[0];
                let (oh, ol, oo) = self.loc(first);
                let count = plateau_kernels::cubecl::calculate_cube_count_elemwise(&self.client, (rows * classes).max(1), dim);
                // SAFETY: each handle holds the stated number of f32 values.
                let (l, o) = unsafe { (ArrayArg::from_raw_parts(inputs[0].0.clone(), inputs[0].1), ArrayArg::from_raw_parts(oh, ol)) };
                one_hot::launch::<R>(&self.client, count, dim, l, o, rows, classes, (inputs[0].2, oo));
            }
            Op::Conv2d(_) | Op::Conv2dGradInput { .. } | Op::Conv2dGradWeight { .. } | Op::MaxPool2d(_) | Op::MaxPool2dGrad(_) | Op::MaxPool2dGather(_) | Op::AvgPool2d(_) | Op::AvgPool2dGrad { .. } => {
                self.window(first, &op, &operands, &inputs)?;
            }
            Op::Permute { perm } => {
                let src = self.graph.shape(operands[0]).clone();
                let out = self.graph.shape(first).clone();
                let (is, os) = (src.strides(), out.strides());
                let axes = (0..out.rank()).filter(|&a| out.0[a] > 1).map(|a| (os[a], out.0[a], is[perm[a]])).collect();
                self.copy_with(first, &inputs[0], plateau_kernels::Access { offset: inputs[0].2, axes, identity: false });
            }
            Op::Slice { start, .. } => {
                let src = self.graph.shape(operands[0]).clone();
                let out = self.graph.shape(first).clone();
                let (is, os) = (src.strides(), out.strides());
                let offset = inputs[0].2 + start.iter().zip(&is).map(|(a, b)| a * b).sum::<usize>();
                let axes = (0..out.rank()).filter(|&a| out.0[a] > 1).map(|a| (os[a], out.0[a], is[a])).collect();
                self.copy_with(first, &inputs[0], plateau_kernels::Access { offset, axes, identity: false });
            }
            Op::Pad { lo, .. } => {
                let (oh, ol, oo) = self.loc(first);
                let out = self.graph.shape(first).clone();
                let spec = plateau_kernels::macros::PadSpec { out: out.0.clone(), lo, input: self.graph.shape(operands[0]).0.clone(), offsets: (inputs[0].2, oo) };
                let count = plateau_kernels::cubecl::calculate_cube_count_elemwise(&self.client, out.numel().max(1), dim);
                // SAFETY: each handle holds the stated number of f32 values.
                let (x, o) = unsafe { (ArrayArg::from_raw_parts(inputs[0].0.clone(), inputs[0].1), ArrayArg::from_raw_parts(oh, ol)) };
                plateau_kernels::macros::pad::launch::<R>(&self.client, count, dim, x, o, spec);
            }
            Op::Broadcast { .. } => {
                let src = self.graph.shape(operands[0]).clone();
                let out = self.graph.shape(first).clone();
                let mut acc = plateau_kernels::access(&src, &out);
                acc.offset = inputs[0].2;
                self.copy_with(first, &inputs[0], acc);
            }
            other => return Err(unsupported(format!("no device kernel for `{}` yet", other.mnemonic()))),
        }
        Ok(())
    }
}

impl<R: Runtime> DeviceStep<R> {
    /// Copies `input` into node `to`'s place, reading it through `access`.
    fn copy_with(&self, to: NodeId, input: &(Handle, usize, usize), access: plateau_kernels::Access) {
        let space = self.graph.shape(to).clone();
        let n = space.numel();
        if n == 0 {
            return;
        }
        let (oh, ol, oo) = self.loc(to);
        let p = Program { views: vec![space.clone()], instrs: vec![plateau_compiler::ir::Instr::Load(0)], outputs: vec![0] };
        let mut prog = KernelProgram::new(&p, &space).with_offsets(&[0], &[oo]);
        prog.access[0] = access;
        let mut ins = SequenceArg::new();
        // SAFETY: the handles hold the stated number of f32 values.
        ins.push(unsafe { ArrayArg::from_raw_parts(input.0.clone(), input.1) });
        let mut outs = SequenceArg::new();
        // SAFETY: as above.
        outs.push(unsafe { ArrayArg::from_raw_parts(oh, ol) });
        let dim = CubeDim::new_1d(BLOCK);
        let count = plateau_kernels::cubecl::calculate_cube_count_elemwise(&self.client, n, dim);
        fused_map::launch::<R>(&self.client, count, dim, ins, outs, n, prog);
    }

    /// Convolutions and poolings.
    fn window(&self, node: NodeId, op: &Op, operands: &[NodeId], inputs: &[(Handle, usize, usize)]) -> Result<(), RuntimeError> {
        use plateau_kernels::window::*;
        let dims = |id: NodeId| self.graph.shape(id).0.clone();
        let out = dims(node);
        let (oh, ol, oo) = self.loc(node);
        let off = |i: usize| inputs.get(i).map(|x| x.2).unwrap_or(0);
        // (input image shape [n,c,h,w], output-channel count, kernel, attrs, pooled/conv output hw)
        let (x, o, k, stride, pad, ohw) = match op {
            Op::Conv2d(a) => {
                let w = dims(operands[1]);
                (dims(operands[0]), w[0], [w[2], w[3]], a.stride, a.padding, [out[2], out[3]])
            }
            Op::Conv2dGradInput { attrs, .. } => {
                let (gy, w) = (dims(operands[0]), dims(operands[1]));
                (out.clone(), w[0], [w[2], w[3]], attrs.stride, attrs.padding, [gy[2], gy[3]])
            }
            Op::Conv2dGradWeight { attrs, kernel } => {
                let (xs, gy) = (dims(operands[0]), dims(operands[1]));
                (xs, gy[1], *kernel, attrs.stride, attrs.padding, [gy[2], gy[3]])
            }
            Op::MaxPool2d(a) | Op::AvgPool2d(a) | Op::MaxPool2dGather(a) => {
                let xs = dims(operands[0]);
                (xs.clone(), xs[1], a.kernel, a.stride, a.padding, [out[2], out[3]])
            }
            Op::MaxPool2dGrad(a) => {
                let (xs, gy) = (dims(operands[0]), dims(operands[1]));
                (xs.clone(), xs[1], a.kernel, a.stride, a.padding, [gy[2], gy[3]])
            }
            Op::AvgPool2dGrad { attrs, .. } => {
                let gy = dims(operands[0]);
                (out.clone(), out[1], attrs.kernel, attrs.stride, attrs.padding, [gy[2], gy[3]])
            }
            _ => return Err(unsupported(op.mnemonic())),
        };
        let offsets = match op {
            Op::AvgPool2dGrad { .. } => (0, off(0), oo),
            Op::MaxPool2d(_) | Op::AvgPool2d(_) => (off(0), off(0), oo),
            _ => (off(0), off(1), oo),
        };
        let s = WindowSpec {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            o,
            kh: k[0],
            kw: k[1],
            sh: stride[0],
            sw: stride[1],
            ph: pad[0],
            pw: pad[1],
            ho: ohw[0],
            wo: ohw[1],
            offsets,
        };
        let n = out.iter().product::<usize>();
        if n == 0 {
            return Ok(());
        }
        let dim = CubeDim::new_1d(BLOCK);
        let count = plateau_kernels::cubecl::calculate_cube_count_elemwise(&self.client, n, dim);
        // SAFETY: every handle holds the stated number of f32 values.
        let arg = |i: usize| unsafe { ArrayArg::from_raw_parts(inputs[i.min(inputs.len() - 1)].0.clone(), inputs[i.min(inputs.len() - 1)].1) };
        // SAFETY: as above.
        let out_arg = unsafe { ArrayArg::from_raw_parts(oh, ol) };
        let c = &self.client;
        match op {
            Op::Conv2d(_) => conv2d::launch::<R>(c, count, dim, arg(0), arg(1), out_arg, s),
            Op::Conv2dGradInput { .. } => conv2d_grad_input::launch::<R>(c, count, dim, arg(0), arg(1), out_arg, s),
            Op::Conv2dGradWeight { .. } => {
                let gdim = CubeDim::new_1d(GRAD_WEIGHT_UNITS as u32);
                let gcount = plateau_kernels::cubecl::calculate_cube_count_elemwise(c, n * GRAD_WEIGHT_UNITS, gdim);
                conv2d_grad_weight::launch::<R>(c, gcount, gdim, arg(0), arg(1), out_arg, s)
            }
            Op::MaxPool2d(_) => max_pool2d::launch::<R>(c, count, dim, arg(0), out_arg, s),
            Op::MaxPool2dGather(_) => max_pool2d_gather::launch::<R>(c, count, dim, arg(0), arg(1), out_arg, s),
            Op::MaxPool2dGrad(_) => max_pool2d_grad::launch::<R>(c, count, dim, arg(0), arg(1), out_arg, s),
            Op::AvgPool2d(_) => avg_pool2d::launch::<R>(c, count, dim, arg(0), out_arg, s),
            Op::AvgPool2dGrad { .. } => avg_pool2d_grad::launch::<R>(c, count, dim, arg(0), out_arg, s),
            _ => unreachable!("matched above"),
        }
        Ok(())
    }
}

/// The leaves a caller must set before a step: (kind, name) of inputs, parameters, states
/// and scalars, in graph order.
pub fn leaves(g: &Graph) -> Vec<(&'static str, String)> {
    g.node_ids()
        .filter_map(|id| {
            let op = &g.node(id).op;
            Some((leaf_kind(op)?, leaf_name(op)?.to_string()))
        })
        .collect()
}

