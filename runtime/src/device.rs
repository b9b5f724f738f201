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
use plateau_kernels::reduce::{fused_reduce_max, fused_reduce_sum, ReduceLayout};
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
                let count = plateau_kernels::cubecl::calculate_cube_count_elemwise(&self.client, n.max(1), dim);
                match op {
                    plateau_compiler::ir::ReduceOp::Sum => fused_reduce_sum::launch::<R>(&self.client, count, dim, ins, out, layout, prog),
                    plateau_compiler::ir::ReduceOp::Max => fused_reduce_max::launch::<R>(&self.client, count, dim, ins, out, layout, prog),
                }
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
            other => return Err(unsupported(format!("no device kernel for `{}` yet", other.mnemonic()))),
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

