//! Lowering: a scheduled kernel (its fused-graph nodes) becomes a `KernelCall`, the cube
//! kernel to run and its comptime arguments. The device executor launches calls; the
//! device-free emitter compiles them to CUDA C++. Operands are addressed by element offset.

use crate::elementwise::Slices;
use crate::gemm::GemmSpec;
use crate::macros::PadSpec;
use crate::program::{access, Access, KernelProgram, VECTOR_WIDTH};
use crate::reduce::{ChainPart, ReduceLayout};
use crate::window::WindowSpec;
use plateau_compiler::ir::{Op, Program, ReduceOp};
use plateau_compiler::schedule::reduce::view_base;
use plateau_compiler::schedule::{Kernel, Schedule};
use plateau_compiler::{Graph, NodeId};

/// The sliding-window kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    MaxPool2d,
    MaxPool2dGrad,
    MaxPool2dGather,
    AvgPool2d,
    AvgPool2dGrad,
}

/// One kernel launch, independent of any device.
#[derive(Clone, Debug)]
pub enum KernelCall {
    /// `fused_map` over `n` positions, each a vector of `prog.width` elements.
    Map { prog: KernelProgram, n: usize },
    /// A reduction; a split sum (`split > 1`) writes its slices' partial sums at element
    /// `workspace` of its workspace buffer, then sums them (two launches).
    /// `map`: the element offset of a map output, when the kernel also writes every prologue
    /// value (a sum and a map of the same program in one kernel).
    /// `epi`: a single sum's epilogue, as `GemmEpilogue`'s (the sum's own output is stored
    /// only when `store`).
    Reduce { op: ReduceOp, layout: ReduceLayout, prog: KernelProgram, split: usize, workspace: usize, map: Option<usize>, epi: Option<KernelProgram>, store: bool },
    /// A split sum's slices alone, into its workspace: the map reading the sum adds them up
    /// (`MapSlices`).
    ReduceSlices { layout: ReduceLayout, prog: KernelProgram, split: usize, workspace: usize, map: Option<usize> },
    /// `Map`, whose operand `slices.operand` is a split sum that it first adds up from the
    /// sum's slices and stores (see `plateau_compiler::schedule::reduce`).
    MapSlices { prog: KernelProgram, n: usize, slices: Slices },
    /// Two reductions over one space and axes in one kernel, the second (`b`) reading the
    /// first's result for its own output as its operand `given` (see
    /// `plateau_kernels::reduce::fused_reduce_chain`).
    ReduceChain { layout: ReduceLayout, a: ChainPart, b: ChainPart, given: usize },
    /// The matmul and the convolutions (implicit GEMMs).
    Gemm(GemmSpec),
    /// A GEMM with an epilogue: `prog`, over the GEMM's output, reads each output value as
    /// its operand 0 (its other operands count their slots from 0 without it) and its outputs
    /// are stored with it; the GEMM's own output is stored only when `store`.
    GemmEpilogue { spec: GemmSpec, prog: KernelProgram, store: bool },
    /// The max-pool gradient with an epilogue, as `GemmEpilogue`.
    MaxPool2dGradEpilogue { spec: WindowSpec, prog: KernelProgram, store: bool },
    OneHot { rows: usize, classes: usize, offsets: (usize, usize) },
    Pad(PadSpec),
    DropoutMask { n: usize, p_bits: u32, seed: u32, offsets: (usize, usize) },
    Window { kind: WindowKind, spec: WindowSpec },
}

impl KernelCall {
    /// The elementwise call of `prog` over `n` elements: vectorized when the sizes, offsets
    /// and access patterns allow it, scalar otherwise.
    pub fn map(prog: KernelProgram, n: usize) -> KernelCall {
        match prog.vectorized(n, VECTOR_WIDTH) {
            Some(v) => KernelCall::Map { prog: v, n: n / VECTOR_WIDTH },
            None => KernelCall::Map { prog, n },
        }
    }
}

/// A lowered kernel: the call, the nodes it reads (in argument order) and the nodes it writes
/// (`None` for a program output nothing uses: the executor gives it scratch memory).
#[derive(Clone, Debug)]
pub struct Lowered {
    pub call: KernelCall,
    pub inputs: Vec<NodeId>,
    pub outputs: Vec<Option<NodeId>>,
    /// Element count of each output.
    pub output_len: Vec<usize>,
    /// Elements a split GEMM or sum needs in its workspace after its offset (0: none). The
    /// caller passes the workspace buffer twice more after the output (see
    /// `KernelCall::launch`).
    pub workspace_len: usize,
}

/// Lowers the kernel computing `nodes` (one node, or every output node of a multi-output
/// program); `offset` gives each node's element offset in its buffer, `workspace` the element
/// offset of a split kernel's workspace (the schedule's `Kernel::workspace`).
pub fn lower(g: &Graph, nodes: &[NodeId], offset: &dyn Fn(NodeId) -> usize, workspace: Option<usize>) -> Result<Lowered, String> {
    let mut l = match lower_epilogue(g, nodes, offset)? {
        Some(l) => l,
        None => lower_call(g, nodes, offset)?,
    };
    match &mut l.call {
        KernelCall::Gemm(spec) | KernelCall::GemmEpilogue { spec, .. } => {
            l.workspace_len = spec.workspace_len();
            match workspace {
                Some(w) => spec.workspace = w,
                None if spec.split > 1 => return Err(format!("the split GEMM computing {} was given no workspace", nodes[0])),
                None => {}
            }
        }
        KernelCall::Reduce { op: ReduceOp::Sum, layout, prog, split, workspace: at, epi, .. } => {
            *split = plateau_compiler::schedule::reduce::reduce_split(layout.outputs, layout.reduce_len);
            if *split > 1 && (prog.outputs.len() > 1 || epi.is_some()) {
                return Err(format!("the sums computed with {} would be split, which only a single sum without an epilogue can be", nodes[0]));
            }
            if *split > 1 {
                l.workspace_len = *split * layout.outputs;
                *at = workspace.ok_or_else(|| format!("the split sum computing {} was given no workspace", nodes[0]))?;
            }
        }
        _ => {}
    }
    Ok(l)
}

/// Lowers kernel `kernel` of schedule `s` as [`lower`] does its nodes, with `workspace` the
/// element offset of its workspace (its own, or the slices it adds up): a split sum whose
/// slices the map reading it adds up runs its slices alone (`ReduceSlices`), and that map
/// reads them (`MapSlices`); two reductions in turn (`Kernel::chain`) run as one
/// (`ReduceChain`).
pub fn lower_scheduled(g: &Graph, s: &Schedule, kernel: &Kernel, offset: &dyn Fn(NodeId) -> usize, workspace: Option<usize>) -> Result<Lowered, String> {
    if let Some(split) = kernel.chain {
        return lower_chain(g, &kernel.nodes[..split], &kernel.nodes[split..], offset).map_err(|e| format!("kernel k{}: {e}", kernel.id));
    }
    let mut l = lower(g, &kernel.nodes, offset, workspace)?;
    if kernel.summed_by.is_some() {
        l.call = match l.call {
            KernelCall::Reduce { op: ReduceOp::Sum, layout, prog, split, workspace, map, epi: None, .. } if split > 1 => KernelCall::ReduceSlices { layout, prog, split, workspace, map },
            _ => return Err(format!("kernel k{} is no split sum, yet a map is to add up its slices", kernel.id)),
        };
    }
    if let Some(k) = kernel.sums_slices_of {
        let source = &s.kernels[k];
        let sum = source.nodes[0];
        let operand = g.operands(kernel.nodes[0]).iter().position(|&o| view_base(g, o) == sum);
        let (KernelCall::Map { mut prog, n }, Some(operand), Some(at)) = (l.call.clone(), operand, workspace) else {
            return Err(format!("kernel k{} is to add up the slices of k{k} but is no map reading its sum", kernel.id));
        };
        // The operand is given, not loaded: the others of its kind count their slots without it.
        let given = prog.access[operand].clone();
        for a in prog.access.iter_mut().filter(|a| a.splat == given.splat && a.slot > given.slot) {
            a.slot -= 1;
        }
        l.call = KernelCall::MapSlices { prog, n, slices: Slices { operand, count: source.split, offset: at, total: offset(sum) } };
        l.workspace_len = source.split;
    }
    Ok(l)
}

/// The kernel of two reductions in turn (`Kernel::chain`): `a` (a sum or max and its
/// epilogues), then `b` (sums over the same space and axes and their epilogues) reading `a`'s
/// result through one operand, which the kernel gives it. Arguments: `a`'s, then `b`'s without
/// that operand; outputs `a`'s, then `b`'s.
fn lower_chain(g: &Graph, a: &[NodeId], b: &[NodeId], offset: &dyn Fn(NodeId) -> usize) -> Result<Lowered, String> {
    let part = |l: &Lowered| match &l.call {
        KernelCall::Reduce { op, layout, prog, split: 1, map: None, epi, store, .. } => Some((layout.clone(), ChainPart { op: *op, prog: prog.clone(), epi: epi.clone(), store: *store })),
        _ => None,
    };
    let (la, lb) = (lower(g, a, offset, None)?, lower(g, b, offset, None)?);
    let (Some((layout, pa)), Some((layout_b, mut pb))) = (part(&la), part(&lb)) else {
        return Err("two reductions in turn that are not two unsplit reductions".into());
    };
    let first = a[0];
    // Exactly one operand of the second's program reads the first's result (it is given).
    let reading: Vec<usize> = lb.inputs[..pb.prog.access.len()].iter().enumerate().filter(|&(_, &n)| view_base(g, n) == first).map(|(i, _)| i).collect();
    let given = (reading.len() == 1).then(|| reading[0]);
    let (Some(given), ReduceOp::Sum, true) = (given, pb.op, layout == layout_b) else {
        return Err(format!("the second of two reductions in turn does not sum over the first's space reading {first}"));
    };
    let slot = pb.prog.access[given].slot;
    for acc in pb.prog.access.iter_mut().filter(|acc| acc.slot > slot) {
        acc.slot -= 1;
    }
    let mut inputs = la.inputs;
    inputs.extend(lb.inputs.iter().enumerate().filter(|&(i, _)| i != given).map(|(_, &n)| n));
    let mut outputs = la.outputs;
    outputs.extend(lb.outputs);
    let mut output_len = la.output_len;
    output_len.extend(lb.output_len);
    Ok(Lowered { call: KernelCall::ReduceChain { layout, a: pa, b: pb, given }, inputs, outputs, output_len, workspace_len: 0 })
}

/// The kernel of an op with its epilogues: `nodes` are the op (a GEMM, the max-pool gradient
/// or a sum) and the `Op::Epilogue` nodes reading it, or the epilogues alone when the kernel
/// does not store the op's output. `None` for any other kernel.
fn lower_epilogue(g: &Graph, nodes: &[NodeId], offset: &dyn Fn(NodeId) -> usize) -> Result<Option<Lowered>, String> {
    let epilogues: Vec<NodeId> = nodes.iter().copied().filter(|&n| matches!(g.node(n).op, Op::Epilogue { .. })).collect();
    let Some(&e0) = epilogues.first() else { return Ok(None) };
    let gemm = g.operands(e0)[0];
    let store = nodes[0] == gemm;
    // Only these run the epilogue (a phased input gradient addresses its output otherwise).
    if !g.node(gemm).op.takes_epilogue() {
        return Err(format!("an epilogue of `{}`, which takes none", g.node(gemm).op.mnemonic()));
    }
    if epilogues.len() + usize::from(store) != nodes.len() || epilogues.iter().any(|&e| g.operands(e)[0] != gemm) {
        return Err(format!("the epilogues of {gemm} share their kernel with other work"));
    }
    // The GEMM alone; an output it does not store has no place (nothing reads the offset).
    let gemm_offset = |n: NodeId| if n == gemm && !store { 0 } else { offset(n) };
    let base = lower_call(g, &[gemm], &gemm_offset)?;
    let call = |prog: KernelProgram| match base.call {
        KernelCall::Gemm(spec) => KernelCall::GemmEpilogue { spec, prog, store },
        KernelCall::Window { kind: WindowKind::MaxPool2dGrad, spec } => KernelCall::MaxPool2dGradEpilogue { spec, prog, store },
        KernelCall::Reduce { op, layout, prog: sum, split, workspace, map: None, .. } => KernelCall::Reduce { op, layout, prog: sum, split, workspace, map: None, epi: Some(prog), store },
        _ => unreachable!("the ops that take epilogues lower to a GEMM, the max-pool gradient or a sum"),
    };
    // The epilogues as one program over the GEMM's output, reading it as operand 0.
    let (canon, ops) = merged_program(g, &epilogues);
    // The epilogues' own space: the op's output, reshaped.
    let space = g.shape(e0).clone();
    if epilogues.iter().any(|&e| g.shape(e) != &space) {
        return Err(format!("the epilogues of {gemm} map its output in different shapes"));
    }
    // The op's output first, as `with_operand_first` orders the program's operands.
    let slot = ops.iter().position(|&o| o == gemm).ok_or_else(|| format!("the epilogues of {gemm} do not read its output"))?;
    let program = canon.with_operand_first(slot);
    let mut ops = ops;
    let first = ops.remove(slot);
    ops.insert(0, first);
    let in_off: Vec<usize> = ops.iter().enumerate().map(|(k, &o)| if k == 0 { 0 } else { offset(o) }).collect();
    let out_off: Vec<usize> = epilogues.iter().map(|&e| offset(e)).collect();
    let mut prog = KernelProgram::new(&program, &space).with_offsets(&in_off, &out_off);
    for a in prog.access.iter_mut().skip(1) {
        a.slot -= 1;
    }
    let mut inputs = base.inputs;
    inputs.extend_from_slice(&ops[1..]);
    // Unstored, the GEMM's output argument is bound to the first epilogue's output, which
    // the kernel never writes through it.
    let mut outputs = vec![Some(if store { gemm } else { e0 })];
    let mut output_len = vec![if store { space.numel() } else { g.shape(e0).numel() }];
    for &e in &epilogues {
        outputs.push(Some(e));
        output_len.push(g.shape(e).numel());
    }
    Ok(Some(Lowered { call: call(prog), inputs, outputs, output_len, workspace_len: 0 }))
}

/// The programs of `nodes` (epilogues, or sums sharing a kernel) as one program with an
/// output per node, in canonical form, and its operands.
fn merged_program(g: &Graph, nodes: &[NodeId]) -> (Program, Vec<NodeId>) {
    let programs: Vec<(Program, Vec<NodeId>)> = nodes
        .iter()
        .map(|&n| match &g.node(n).op {
            Op::Epilogue { program, .. } | Op::FusedReduce { program, .. } => (program.clone(), g.operands(n)),
            other => unreachable!("only epilogues and sums are merged, not `{}`", other.mnemonic()),
        })
        .collect();
    let parts: Vec<(&Program, &[NodeId])> = programs.iter().map(|(p, o)| (p, &o[..])).collect();
    let (merged, ops) = Program::merge(&parts);
    merged.canonical(&ops)
}

fn lower_call(g: &Graph, nodes: &[NodeId], offset: &dyn Fn(NodeId) -> usize) -> Result<Lowered, String> {
    let first = nodes[0];
    let operands = g.operands(first);
    let in_off: Vec<usize> = operands.iter().map(|&o| offset(o)).collect();
    let out_shape = g.shape(first).clone();
    let single = |call: KernelCall, inputs: Vec<NodeId>| Lowered { call, inputs, outputs: vec![Some(first)], output_len: vec![out_shape.numel()], workspace_len: 0 };
    let copy = |acc: Access| {
        let mut prog = KernelProgram::new(&Program::identity(out_shape.clone()), &out_shape).with_offsets(&[0], &[offset(first)]);
        prog.access[0] = acc;
        single(KernelCall::map(prog, out_shape.numel()), vec![operands[0]])
    };
    Ok(match g.node(first).op.clone() {
        Op::Fused { program, ty, .. } => {
            let outputs: Vec<Option<NodeId>> = (0..program.outputs.len())
                .map(|i| nodes.iter().copied().find(|&n| matches!(g.node(n).op, Op::Fused { output, .. } if output as usize == i)))
                .collect();
            let out_off: Vec<usize> = outputs.iter().map(|o| o.map(offset).unwrap_or(0)).collect();
            let prog = KernelProgram::new(&program, &ty.shape).with_offsets(&in_off, &out_off);
            let n = ty.shape.numel();
            Lowered { call: KernelCall::map(prog, n), inputs: operands, output_len: vec![n; outputs.len()], outputs, workspace_len: 0 }
        }
        Op::FusedReduce { program, op, axes, space, group } => {
            let layout = ReduceLayout::new(&space.shape, &axes);
            let sums: Vec<NodeId> = nodes.iter().copied().filter(|&n| matches!(g.node(n).op, Op::FusedReduce { group: gr, .. } if group != 0 && gr == group)).collect();
            if sums.len() > 1 {
                // Sums over one space in one kernel: a program with an output per sum.
                let (merged, ops) = merged_program(g, &sums);
                let in_off: Vec<usize> = ops.iter().map(|&o| offset(o)).collect();
                let out_off: Vec<usize> = sums.iter().map(|&n| offset(n)).collect();
                let prog = KernelProgram::new(&merged, &space.shape).with_offsets(&in_off, &out_off);
                return Ok(Lowered {
                    call: KernelCall::Reduce { op, layout, prog, split: 1, workspace: 0, map: None, epi: None, store: true },
                    inputs: ops,
                    output_len: vec![out_shape.numel(); sums.len()],
                    outputs: sums.into_iter().map(Some).collect(),
                    workspace_len: 0,
                });
            }
            let prog = KernelProgram::new(&program, &space.shape).with_offsets(&in_off, &[offset(first)]);
            let map_node = nodes[1..].iter().copied().find(|&n| group != 0 && matches!(g.node(n).op, Op::Fused { group: gr, .. } if gr == group));
            match map_node {
                Some(m) => Lowered {
                    call: KernelCall::Reduce { op, layout, prog, split: 1, workspace: 0, map: Some(offset(m)), epi: None, store: true },
                    inputs: operands,
                    outputs: vec![Some(first), Some(m)],
                    output_len: vec![out_shape.numel(), space.shape.numel()],
                    workspace_len: 0,
                },
                None => single(KernelCall::Reduce { op, layout, prog, split: 1, workspace: 0, map: None, epi: None, store: true }, operands),
            }
        }
        Op::MatMul { ta, tb } => {
            let a = g.shape(operands[0]);
            let k = if ta { a.0[0] } else { a.0[1] };
            let spec = GemmSpec::matmul(out_shape.0[0], k, out_shape.0[1], ta, tb, (in_off[0], in_off[1], offset(first)));
            single(KernelCall::Gemm(spec), operands)
        }
        Op::OneHot { classes } => {
            let rows = g.shape(operands[0]).0[0];
            single(KernelCall::OneHot { rows, classes, offsets: (in_off[0], offset(first)) }, operands)
        }
        Op::Pad { lo, .. } => {
            let spec = PadSpec { out: out_shape.0.clone(), lo, input: g.shape(operands[0]).0.clone(), offsets: (in_off[0], offset(first)) };
            single(KernelCall::Pad(spec), operands)
        }
        Op::DropoutMask { p, seed, shape } => {
            let call = KernelCall::DropoutMask { n: shape.numel(), p_bits: (p as f32).to_bits(), seed, offsets: (in_off[0], offset(first)) };
            single(call, operands)
        }
        Op::Permute { perm } => {
            let (is, os) = (g.shape(operands[0]).strides(), out_shape.strides());
            let axes = (0..out_shape.rank()).filter(|&a| out_shape.0[a] > 1).map(|a| (os[a], out_shape.0[a], is[perm[a]])).collect();
            copy(Access { offset: in_off[0], axes, identity: false, splat: false, slot: 0 })
        }
        Op::Slice { start, .. } => {
            let (is, os) = (g.shape(operands[0]).strides(), out_shape.strides());
            let base = in_off[0] + start.iter().zip(&is).map(|(a, b)| a * b).sum::<usize>();
            let axes = (0..out_shape.rank()).filter(|&a| out_shape.0[a] > 1).map(|a| (os[a], out_shape.0[a], is[a])).collect();
            copy(Access { offset: base, axes, identity: false, splat: false, slot: 0 })
        }
        Op::Broadcast { .. } => {
            let mut acc = access(g.shape(operands[0]), &out_shape);
            acc.offset = in_off[0];
            copy(acc)
        }
        op @ (Op::Conv2d(_)
        | Op::Conv2dGradInput { .. }
        | Op::Conv2dGradWeight { .. }
        | Op::MaxPool2d(_)
        | Op::MaxPool2dGrad(_)
        | Op::MaxPool2dGather(_)
        | Op::AvgPool2d(_)
        | Op::AvgPool2dGrad { .. }) => {
            let dims = |id: NodeId| g.shape(id).0.clone();
            let out = out_shape.0.clone();
            let off = |i: usize| in_off.get(i).copied().unwrap_or(0);
            // `None`: a convolution, lowered to a GEMM by `conv`.
            let (kind, x, o, k, stride, pad, ohw) = match &op {
                Op::Conv2d(a) => {
                    let w = dims(operands[1]);
                    (None, dims(operands[0]), w[0], [w[2], w[3]], a.stride, a.padding, [out[2], out[3]])
                }
                Op::Conv2dGradInput { attrs, .. } => {
                    let (gy, w) = (dims(operands[0]), dims(operands[1]));
                    (None, out.clone(), w[0], [w[2], w[3]], attrs.stride, attrs.padding, [gy[2], gy[3]])
                }
                Op::Conv2dGradWeight { attrs, kernel } => {
                    let gy = dims(operands[1]);
                    (None, dims(operands[0]), gy[1], *kernel, attrs.stride, attrs.padding, [gy[2], gy[3]])
                }
                Op::MaxPool2d(a) | Op::AvgPool2d(a) | Op::MaxPool2dGather(a) => {
                    let xs = dims(operands[0]);
                    let kind = match op {
                        Op::MaxPool2d(_) => WindowKind::MaxPool2d,
                        Op::AvgPool2d(_) => WindowKind::AvgPool2d,
                        _ => WindowKind::MaxPool2dGather,
                    };
                    (Some(kind), xs.clone(), xs[1], a.kernel, a.stride, a.padding, [out[2], out[3]])
                }
                Op::MaxPool2dGrad(a) => {
                    let (xs, gy) = (dims(operands[0]), dims(operands[1]));
                    (Some(WindowKind::MaxPool2dGrad), xs.clone(), xs[1], a.kernel, a.stride, a.padding, [gy[2], gy[3]])
                }
                Op::AvgPool2dGrad { attrs, .. } => {
                    let gy = dims(operands[0]);
                    (Some(WindowKind::AvgPool2dGrad), out.clone(), out[1], attrs.kernel, attrs.stride, attrs.padding, [gy[2], gy[3]])
                }
                _ => unreachable!("matched above"),
            };
            let offsets = match kind {
                Some(WindowKind::AvgPool2dGrad) => (0, off(0), offset(first)),
                Some(WindowKind::MaxPool2d | WindowKind::AvgPool2d) => (off(0), off(0), offset(first)),
                _ => (off(0), off(1), offset(first)),
            };
            let spec = WindowSpec {
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
            // The convolutions' GEMMs multiply the second operand (weight, or output
            // gradient) by a gather of the first, so they take the operands swapped.
            match (kind, &op) {
                (Some(kind), _) => single(KernelCall::Window { kind, spec }, operands),
                (None, Op::Conv2d(_)) => single(KernelCall::Gemm(GemmSpec::conv2d(&spec)), vec![operands[1], operands[0]]),
                (None, Op::Conv2dGradInput { .. }) => single(KernelCall::Gemm(GemmSpec::conv2d_grad_input(&spec)), vec![operands[1], operands[0]]),
                _ => single(KernelCall::Gemm(GemmSpec::conv2d_grad_weight(&spec)), vec![operands[1], operands[0]]),
            }
        }
        other => return Err(format!("no kernel lowers `{}` yet", other.mnemonic())),
    })
}
