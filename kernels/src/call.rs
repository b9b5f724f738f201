//! Running a `KernelCall`: launched on a cubecl runtime, or expanded with no device and
//! compiled to CUDA C++.

use crate::elementwise::{fused_map, fused_map_slices};
use crate::host::BLOCK;
use crate::lower::{KernelCall, WindowKind};
use crate::program::{KernelProgram, VECTOR_WIDTH};
use crate::gemm::{gemm, gemm_reduce, GemmLayout};
use crate::macros::{dropout_mask, one_hot, pad};
use crate::reduce::{fused_reduce_chain, fused_reduce_sum_slices, launch_reduce, no_epilogue, seq, slices_sum, ChainPart, CUBE_REDUCE_UNITS};
use crate::window::*;
use plateau_compiler::schedule::reduce::REDUCE_TARGET_CUBES;
use cubecl::prelude::*;
use cubecl_cpp::cuda::{mma::CudaWmmaCompiler, CudaDialect};
use cubecl_cpp::shared::{CompilationOptions, CppCompiler};

/// Compilation arguments of a sequence of `n` arrays of `T`.
fn vseq<T: CubePrimitive>(n: usize) -> SequenceCompilationArg<Array<T>> {
    SequenceCompilationArg { values: (0..n).map(|_| ArrayCompilationArg { inplace: None }).collect() }
}

/// cubecl's CUDA compiler (the one `cubecl::cuda` uses).
type CudaCompiler = CppCompiler<CudaDialect<CudaWmmaCompiler>>;

/// The options cubecl's CUDA runtime compiles with on an sm_90 GPU (H100, H200) with CUDA
/// 12.8 or later: fast math and tanh, kernel arguments as grid constants, clusters
/// (`cubecl-cuda`'s `runtime.rs`), so that the
/// emitted source is the one NVRTC compiles there.
fn sm90_options() -> CompilationOptions {
    let mut options = CompilationOptions::default();
    let f = &mut options.supports_features;
    f.fast_math = true;
    f.grid_constants = true;
    f.clusters = true;
    f.elect_sync = true;
    // Set from CUDA 12.8 on, which NVRTC 13 is.
    f.fast_tanh = true;
    options
}

impl KernelCall {
    /// The call as a device of `layout` runs it: a GEMM's tile in that layout, anything else
    /// as it is.
    pub fn with_gemm_layout(mut self, layout: GemmLayout) -> KernelCall {
        if let KernelCall::Gemm(s) | KernelCall::GemmEpilogue { spec: s, .. } = &mut self {
            *s = s.with_layout(layout);
        }
        self
    }

    /// The epilogue of a GEMM, a max-pool gradient or a sum, and whether the kernel stores its
    /// op's own output: `(None, true)` without one.
    fn epilogue(&self) -> (Option<KernelProgram>, bool) {
        match self {
            KernelCall::GemmEpilogue { prog, store, .. } | KernelCall::MaxPool2dGradEpilogue { prog, store, .. } => (Some(prog.clone()), *store),
            KernelCall::Reduce { epi, store, .. } => (epi.clone(), *store),
            _ => (None, true),
        }
    }

    /// Units the launch needs (one per output element, or a cube per output).
    fn units(&self) -> (usize, u32) {
        match self {
            KernelCall::Map { n, .. } => (*n, BLOCK),
            KernelCall::MapSlices { n, .. } => (*n, CUBE_REDUCE_UNITS as u32),
            KernelCall::ReduceSlices { layout, split, .. } => (layout.outputs * split * CUBE_REDUCE_UNITS, CUBE_REDUCE_UNITS as u32),
            KernelCall::Reduce { layout, split, .. } if *split > 1 => (layout.outputs * split * CUBE_REDUCE_UNITS, CUBE_REDUCE_UNITS as u32),
            KernelCall::Reduce { layout, .. } | KernelCall::ReduceChain { layout, .. } if layout.cube => (layout.outputs * CUBE_REDUCE_UNITS, CUBE_REDUCE_UNITS as u32),
            KernelCall::ReduceChain { layout, .. } => (layout.outputs, BLOCK),
            KernelCall::Reduce { layout, .. } => (layout.outputs, BLOCK),
            KernelCall::Gemm(s) | KernelCall::GemmEpilogue { spec: s, .. } => (s.cubes() * s.side_m * s.side_n, (s.side_m * s.side_n) as u32),
            KernelCall::OneHot { rows, classes, .. } => (rows * classes, BLOCK),
            KernelCall::Pad(s) => (s.out.iter().product(), BLOCK),
            KernelCall::DropoutMask { n, .. } => (*n, BLOCK),
            KernelCall::MaxPool2dGradEpilogue { spec: s, .. } | KernelCall::Window { kind: WindowKind::MaxPool2dGrad, spec: s } => (s.max_pool_grad_units(), BLOCK),
            KernelCall::Window { kind, spec: s } => match kind {
                WindowKind::MaxPool2d | WindowKind::MaxPool2dGather | WindowKind::AvgPool2d => (s.n * s.c * s.ho * s.wo, BLOCK),
                _ => (s.n * s.c * s.h * s.w, BLOCK),
            },
        }
    }

    /// Launches the call; `inputs` and `outputs` are the arrays in argument order. A split
    /// GEMM or sum takes its workspace buffer twice after its output (written by the slices,
    /// then read by their sum).
    pub fn launch<R: Runtime>(&self, client: &ComputeClient<R>, inputs: Vec<ArrayArg<R>>, outputs: Vec<ArrayArg<R>>) {
        let (units, block) = self.units();
        if units == 0 {
            return;
        }
        let dim = CubeDim::new_1d(block);
        let count = match self {
            // Its cubes stride over the positions, each adding up the slices once: enough to
            // fill the device (eight cubes on each SM where the device says how many it has),
            // no more.
            KernelCall::MapSlices { .. } => {
                let fill = client.properties().hardware.num_streaming_multiprocessors.map_or(REDUCE_TARGET_CUBES, |sm| 8 * sm as usize);
                CubeCount::Static(units.div_ceil(block as usize).min(fill) as u32, 1, 1)
            }
            _ => cubecl::calculate_cube_count_elemwise(client, units, dim),
        };
        let mut ins = inputs.into_iter();
        let mut outs = outputs.into_iter();
        let mut next_in = || ins.next().expect("invariant: lowering lists every input");
        // SAFETY: every kernel guards its positions (`pos < n`; cubes past the last output find
        // no terms, or, in a GEMM by phases or a cube-per-output max, recompute an in-bounds tile
        // or output and store nothing else or the same values) and indexes only the extents its
        // call names, which the lowering derives from the shapes the buffers were allocated
        // with; so none reads or writes out of bounds, and every loop is bounded by comptime
        // extents.
        unsafe {
        match self.clone() {
            KernelCall::Map { prog, n } => {
                let (mut s_in, mut s_splat) = (SequenceArg::new(), SequenceArg::new());
                for a in &prog.access {
                    if a.splat {
                        s_splat.push(next_in());
                    } else {
                        s_in.push(next_in());
                    }
                }
                let mut s_out = SequenceArg::new();
                for o in outs {
                    s_out.push(o);
                }
                fused_map::launch_unchecked::<R>(client, count, dim, prog.width, s_in, s_splat, s_out, n, prog);
            }
            KernelCall::MapSlices { prog, n, slices } => {
                // The sum's place is bound where its operand would be, as the total's output.
                let (mut s_in, mut s_splat, mut total) = (SequenceArg::new(), SequenceArg::new(), None);
                for (k, a) in prog.access.iter().enumerate() {
                    match (k == slices.operand, a.splat) {
                        (true, _) => total = Some(next_in()),
                        (false, true) => s_splat.push(next_in()),
                        (false, false) => s_in.push(next_in()),
                    }
                }
                let mut s_out = SequenceArg::new();
                for _ in 0..prog.outputs.len() {
                    s_out.push(outs.next().expect("a map output"));
                }
                let workspace = outs.next().expect("the slices' workspace");
                let total = total.expect("the sum's operand");
                fused_map_slices::launch_unchecked::<R>(client, count, dim, prog.width, s_in, s_splat, s_out, workspace, total, n, prog, slices);
            }
            KernelCall::ReduceSlices { layout, prog, split, workspace, map } => {
                let ins: Vec<ArrayArg<R>> = (0..prog.access.len()).map(|_| next_in()).collect();
                // The sum's own output goes unwritten: the map reading it stores it.
                let _sum = outs.next().expect("one output");
                let mut slices_out: Vec<ArrayArg<R>> = map.iter().map(|_| outs.next().expect("the map output")).collect();
                slices_out.insert(0, outs.next().expect("a split sum's workspace"));
                fused_reduce_sum_slices::launch_unchecked::<R>(client, count, dim, 1, seq(ins), seq(slices_out), layout, prog, split, workspace, map);
            }
            KernelCall::Reduce { layout, prog, split, workspace, map, .. } if split > 1 => {
                let ins: Vec<ArrayArg<R>> = (0..prog.access.len()).map(|_| next_in()).collect();
                let out = outs.next().expect("one output");
                // The workspace, then the map's output when there is one.
                let mut slices_out: Vec<ArrayArg<R>> = map.iter().map(|_| outs.next().expect("the map output")).collect();
                slices_out.insert(0, outs.next().expect("a split sum's workspace"));
                let ws_again = outs.next().expect("a split sum's workspace, again");
                let (sum_layout, sum_prog) = slices_sum(layout.outputs, split, workspace, prog.output_offsets[0]);
                fused_reduce_sum_slices::launch_unchecked::<R>(client, count, dim, 1, seq(ins), seq(slices_out), layout, prog, split, workspace, map);
                launch_reduce::<R>(client, plateau_compiler::ir::ReduceOp::Sum, vec![ws_again], vec![out], None, sum_layout, sum_prog, no_epilogue());
            }
            KernelCall::Reduce { op, layout, prog, map, .. } => {
                let (epi, store) = self.epilogue();
                let s_in = (0..prog.access.len()).map(|_| next_in()).collect();
                let epi_in: Vec<ArrayArg<R>> = (1..epi.as_ref().map_or(1, |p| p.access.len())).map(|_| next_in()).collect();
                // One output per program output, then the map's; then the epilogue's.
                let sums = prog.outputs.len() + usize::from(map.is_some());
                let s_out: Vec<ArrayArg<R>> = (0..sums).map(|_| outs.next().expect("a sum's output")).collect();
                launch_reduce::<R>(client, op, s_in, s_out, map, layout, prog, (epi_in, outs.collect(), epi, store));
            }
            KernelCall::ReduceChain { layout, a, b, given } => {
                // `a`'s operands and its epilogue's, then `b`'s but the one it is given, and its
                // epilogue's; outputs likewise.
                let counts = |p: &ChainPart, skip: usize| (p.prog.access.len() - skip, p.epi.as_ref().map_or(0, |e| e.access.len() - 1), p.prog.outputs.len(), p.epi.as_ref().map_or(0, |e| e.outputs.len()));
                let (ia, eia, oa, eoa) = counts(&a, 0);
                let (ib, eib, ob, eob) = counts(&b, 1);
                let mut take_in = |n: usize| -> Vec<ArrayArg<R>> { (0..n).map(|_| next_in()).collect() };
                let (in_a, epi_in_a, in_b, epi_in_b) = (take_in(ia), take_in(eia), take_in(ib), take_in(eib));
                let mut take_out = |n: usize| -> Vec<ArrayArg<R>> { (0..n).map(|_| outs.next().expect("a chained reduction's output")).collect() };
                let (out_a, epi_out_a, out_b, epi_out_b) = (take_out(oa), take_out(eoa), take_out(ob), take_out(eob));
                fused_reduce_chain::launch_unchecked::<R>(
                    client, count, dim, 1, seq(in_a), seq(out_a), seq(epi_in_a), seq(epi_out_a), seq(in_b), seq(out_b), seq(epi_in_b), seq(epi_out_b), layout, a, b, given,
                );
            }
            KernelCall::Gemm(s) | KernelCall::GemmEpilogue { spec: s, .. } => {
                let (epi, store) = self.epilogue();
                let (a, b) = (next_in(), next_in());
                let epi_in: Vec<ArrayArg<R>> = (1..epi.as_ref().map_or(1, |p| p.access.len())).map(|_| next_in()).collect();
                let out = outs.next().expect("the GEMM's output");
                let epi_out: Vec<ArrayArg<R>> = (0..epi.as_ref().map_or(0, |p| p.outputs.len())).map(|_| outs.next().expect("an epilogue output")).collect();
                if s.split > 1 {
                    let ws = outs.next().expect("a split GEMM's workspace");
                    let ws_again = outs.next().expect("a split GEMM's workspace, again");
                    gemm::launch_unchecked::<R>(client, count, dim, 1, s.vector, a, b, ws, seq(vec![]), seq(vec![]), s, None, true);
                    let sum_count = cubecl::calculate_cube_count_elemwise(client, s.m * s.n, CubeDim::new_1d(BLOCK));
                    gemm_reduce::launch_unchecked::<R>(client, sum_count, CubeDim::new_1d(BLOCK), 1, ws_again, out, seq(epi_in), seq(epi_out), s, epi, store);
                } else {
                    gemm::launch_unchecked::<R>(client, count, dim, 1, s.vector, a, b, out, seq(epi_in), seq(epi_out), s, epi, store);
                }
            }
            KernelCall::Window { kind: WindowKind::MaxPool2dGrad, spec } | KernelCall::MaxPool2dGradEpilogue { spec, .. } => {
                let (epi, store) = self.epilogue();
                let (x, gy) = (next_in(), next_in());
                let epi_in: Vec<ArrayArg<R>> = (1..epi.as_ref().map_or(1, |p| p.access.len())).map(|_| next_in()).collect();
                let out = outs.next().expect("the gradient's output");
                let epi_out: Vec<ArrayArg<R>> = (0..epi.as_ref().map_or(0, |p| p.outputs.len())).map(|_| outs.next().expect("an epilogue output")).collect();
                max_pool2d_grad::launch_unchecked::<R>(client, count, dim, 1, x, gy, out, seq(epi_in), seq(epi_out), spec, epi, store);
            }
            KernelCall::OneHot { rows, classes, offsets } => {
                one_hot::launch_unchecked::<R>(client, count, dim, next_in(), outs.next().expect("one output"), rows, classes, offsets)
            }
            KernelCall::Pad(s) => pad::launch_unchecked::<R>(client, count, dim, next_in(), outs.next().expect("one output"), s),
            KernelCall::DropoutMask { n, p_bits, seed, offsets } => {
                dropout_mask::launch_unchecked::<R>(client, count, dim, next_in(), outs.next().expect("one output"), n, p_bits, seed, offsets)
            }
            KernelCall::Window { kind, spec } => {
                let o = outs.next().expect("one output");
                match kind {
                    WindowKind::MaxPool2d => max_pool2d::launch_unchecked::<R>(client, count, dim, next_in(), o, spec),
                    WindowKind::MaxPool2dGather => max_pool2d_gather::launch_unchecked::<R>(client, count, dim, next_in(), next_in(), o, spec),
                    WindowKind::MaxPool2dGrad => unreachable!("launched above"),
                    WindowKind::AvgPool2d => avg_pool2d::launch_unchecked::<R>(client, count, dim, next_in(), o, spec),
                    WindowKind::AvgPool2dGrad => avg_pool2d_grad::launch_unchecked::<R>(client, count, dim, next_in(), o, spec),
                }
            }
        }
        }
    }

    /// The CUDA C++ of each of the call's launches, as (kernel name, source), expanded and
    /// compiled with no device: one kernel, or two for a split GEMM or sum (the slices, then
    /// their sum named `{name}_sum`). Each source is a whole translation unit, as NVRTC compiles it.
    pub fn cuda_sources(&self, name: &str) -> Result<Vec<(String, String)>, String> {
        let mut b = KernelBuilder::default();
        let addr = AddressType::U32;
        addr.register(&mut b.scope);
        let arr = ArrayCompilationArg { inplace: None };
        let seq = |n: usize| SequenceCompilationArg::<Array<f32>> { values: (0..n).map(|_| ArrayCompilationArg { inplace: None }).collect() };
        /// Scalars as one-element vectors (the reductions, and maps that do not vectorize).
        type S = Vector<f32, Const<1>>;
        let input = |b: &mut KernelBuilder| <Array<f32> as LaunchArg>::expand(&arr, b);
        let output = |b: &mut KernelBuilder| <Array<f32> as LaunchArg>::expand_output(&arr, b);
        let (_, block) = self.units();
        let (epi, store) = self.epilogue();
        // An epilogue's other operands and its outputs (none without one).
        let epilogue_args = |epi: &Option<KernelProgram>, b: &mut KernelBuilder| {
            let i = <Sequence<Array<S>> as LaunchArg>::expand(&vseq::<S>(epi.as_ref().map_or(0, |p| p.access.len() - 1)), b);
            let o = <Sequence<Array<S>> as LaunchArg>::expand_output(&vseq::<S>(epi.as_ref().map_or(0, |p| p.outputs.len())), b);
            (i, o)
        };
        match self.clone() {
            KernelCall::Map { prog, n } => {
                let (vectors, splats) = prog.input_counts();
                let s = <Sequence<Array<f32>> as LaunchArg>::expand(&seq(splats), &mut b);
                if prog.width == VECTOR_WIDTH {
                    type V = Vector<f32, Const<VECTOR_WIDTH>>;
                    let i = <Sequence<Array<V>> as LaunchArg>::expand(&vseq::<V>(vectors), &mut b);
                    let o = <Sequence<Array<V>> as LaunchArg>::expand_output(&vseq::<V>(prog.outputs.len()), &mut b);
                    fused_map::expand::<Const<VECTOR_WIDTH>>(&mut b.scope, VECTOR_WIDTH, i, s, o, n, prog);
                } else {
                    let i = <Sequence<Array<S>> as LaunchArg>::expand(&vseq::<S>(vectors), &mut b);
                    let o = <Sequence<Array<S>> as LaunchArg>::expand_output(&vseq::<S>(prog.outputs.len()), &mut b);
                    fused_map::expand::<Const<1>>(&mut b.scope, 1, i, s, o, n, prog);
                }
            }
            KernelCall::MapSlices { prog, n, slices } => {
                let (mut vectors, mut splats) = prog.input_counts();
                if prog.access[slices.operand].splat {
                    splats -= 1;
                } else {
                    vectors -= 1;
                }
                let s = <Sequence<Array<f32>> as LaunchArg>::expand(&seq(splats), &mut b);
                if prog.width == VECTOR_WIDTH {
                    type V = Vector<f32, Const<VECTOR_WIDTH>>;
                    let i = <Sequence<Array<V>> as LaunchArg>::expand(&vseq::<V>(vectors), &mut b);
                    let o = <Sequence<Array<V>> as LaunchArg>::expand_output(&vseq::<V>(prog.outputs.len()), &mut b);
                    let (w, t) = (input(&mut b), output(&mut b));
                    fused_map_slices::expand::<Const<VECTOR_WIDTH>>(&mut b.scope, VECTOR_WIDTH, i, s, o, w, t, n, prog, slices);
                } else {
                    let i = <Sequence<Array<S>> as LaunchArg>::expand(&vseq::<S>(vectors), &mut b);
                    let o = <Sequence<Array<S>> as LaunchArg>::expand_output(&vseq::<S>(prog.outputs.len()), &mut b);
                    let (w, t) = (input(&mut b), output(&mut b));
                    fused_map_slices::expand::<Const<1>>(&mut b.scope, 1, i, s, o, w, t, n, prog, slices);
                }
            }
            KernelCall::ReduceSlices { layout, prog, split, workspace, map } => {
                let i = <Sequence<Array<S>> as LaunchArg>::expand(&vseq::<S>(prog.access.len()), &mut b);
                let o = <Sequence<Array<S>> as LaunchArg>::expand_output(&vseq::<S>(1 + usize::from(map.is_some())), &mut b);
                crate::reduce::fused_reduce_sum_slices::expand::<Const<1>>(&mut b.scope, 1, i, o, layout, prog, split, workspace, map);
            }
            KernelCall::Reduce { layout, prog, split, workspace, map, .. } if split > 1 => {
                let i = <Sequence<Array<S>> as LaunchArg>::expand(&vseq::<S>(prog.access.len()), &mut b);
                let o = <Sequence<Array<S>> as LaunchArg>::expand_output(&vseq::<S>(1 + usize::from(map.is_some())), &mut b);
                let out_offset = prog.output_offsets[0];
                crate::reduce::fused_reduce_sum_slices::expand::<Const<1>>(&mut b.scope, 1, i, o, layout.clone(), prog, split, workspace, map);
                // The second launch, the sum of the slices, follows as its own kernel.
                let first = Self::compile_cuda(b, block, name)?;
                let (sum_layout, sum_prog) = slices_sum(layout.outputs, split, workspace, out_offset);
                let sum_call = KernelCall::Reduce { op: plateau_compiler::ir::ReduceOp::Sum, layout: sum_layout, prog: sum_prog, split: 1, workspace: 0, map: None, epi: None, store: true };
                let sum = format!("{name}_sum");
                let mut second = sum_call.cuda_sources(&sum)?;
                second.insert(0, (name.to_string(), first));
                return Ok(second);
            }
            KernelCall::Reduce { op: plateau_compiler::ir::ReduceOp::Sum, layout, prog, map, .. } => {
                let i = <Sequence<Array<S>> as LaunchArg>::expand(&vseq::<S>(prog.access.len()), &mut b);
                let o = <Sequence<Array<S>> as LaunchArg>::expand_output(&vseq::<S>(prog.outputs.len() + usize::from(map.is_some())), &mut b);
                let (ei, eo) = epilogue_args(&epi, &mut b);
                crate::reduce::fused_reduce_sum::expand::<Const<1>>(&mut b.scope, 1, i, o, ei, eo, layout, prog, map, epi, store)
            }
            KernelCall::ReduceChain { layout, a: pa, b: pb, given } => {
                let part = |p: &ChainPart, skip: usize, b: &mut KernelBuilder| {
                    let i = <Sequence<Array<S>> as LaunchArg>::expand(&vseq::<S>(p.prog.access.len() - skip), b);
                    let o = <Sequence<Array<S>> as LaunchArg>::expand_output(&vseq::<S>(p.prog.outputs.len()), b);
                    let (ei, eo) = epilogue_args(&p.epi, b);
                    (i, o, ei, eo)
                };
                let (ia, oa, eia, eoa) = part(&pa, 0, &mut b);
                let (ib, ob, eib, eob) = part(&pb, 1, &mut b);
                crate::reduce::fused_reduce_chain::expand::<Const<1>>(&mut b.scope, 1, ia, oa, eia, eoa, ib, ob, eib, eob, layout, pa, pb, given)
            }
            KernelCall::Reduce { op: plateau_compiler::ir::ReduceOp::Max, layout, prog, .. } => {
                let i = <Sequence<Array<S>> as LaunchArg>::expand(&vseq::<S>(prog.access.len()), &mut b);
                let o = <Array<S> as LaunchArg>::expand_output(&arr, &mut b);
                if layout.cube {
                    crate::reduce::fused_reduce_max_cube::expand::<Const<1>>(&mut b.scope, 1, i, o, layout, prog)
                } else {
                    crate::reduce::fused_reduce_max::expand::<Const<1>>(&mut b.scope, 1, i, o, layout, prog)
                }
            }
            KernelCall::Gemm(s) | KernelCall::GemmEpilogue { spec: s, .. } => {
                // CUDA runs the GPU layout (expanded with 1-wide vectors), whatever `s` says.
                let s = s.with_layout(GemmLayout::Gpu);
                let (x, y) = (input(&mut b), input(&mut b));
                let o = output(&mut b);
                if s.split > 1 {
                    let (i, e) = epilogue_args(&None, &mut b);
                    gemm::expand::<Const<1>, Const<1>>(&mut b.scope, 1, 1, x, y, o, i, e, s, None, true);
                    // The second launch, the sum of the slices (and the epilogue, if any),
                    // follows as its own kernel.
                    let first = Self::compile_cuda(b, block, name)?;
                    let mut b = KernelBuilder::default();
                    addr.register(&mut b.scope);
                    let ws = input(&mut b);
                    let o = output(&mut b);
                    let (i, e) = epilogue_args(&epi, &mut b);
                    gemm_reduce::expand::<Const<1>>(&mut b.scope, 1, ws, o, i, e, s, epi, store);
                    let sum = format!("{name}_sum");
                    let second = Self::compile_cuda(b, BLOCK, &sum)?;
                    return Ok(vec![(name.to_string(), first), (sum, second)]);
                }
                let (i, e) = epilogue_args(&epi, &mut b);
                gemm::expand::<Const<1>, Const<1>>(&mut b.scope, 1, 1, x, y, o, i, e, s, epi, store);
            }
            KernelCall::Window { kind: WindowKind::MaxPool2dGrad, spec } | KernelCall::MaxPool2dGradEpilogue { spec, .. } => {
                let (x, gy) = (input(&mut b), input(&mut b));
                let o = output(&mut b);
                let (i, e) = epilogue_args(&epi, &mut b);
                max_pool2d_grad::expand::<Const<1>>(&mut b.scope, 1, x, gy, o, i, e, spec, epi, store);
            }
            KernelCall::OneHot { rows, classes, offsets } => {
                let x = input(&mut b);
                let o = output(&mut b);
                one_hot::expand(&mut b.scope, x, o, rows, classes, offsets);
            }
            KernelCall::Pad(s) => {
                let x = input(&mut b);
                let o = output(&mut b);
                pad::expand(&mut b.scope, x, o, s);
            }
            KernelCall::DropoutMask { n, p_bits, seed, offsets } => {
                let x = input(&mut b);
                let o = output(&mut b);
                dropout_mask::expand(&mut b.scope, x, o, n, p_bits, seed, offsets);
            }
            KernelCall::Window { kind, spec } => match kind {
                WindowKind::MaxPool2d | WindowKind::AvgPool2d | WindowKind::AvgPool2dGrad => {
                    let x = input(&mut b);
                    let o = output(&mut b);
                    match kind {
                        WindowKind::MaxPool2d => max_pool2d::expand(&mut b.scope, x, o, spec),
                        WindowKind::AvgPool2d => avg_pool2d::expand(&mut b.scope, x, o, spec),
                        _ => avg_pool2d_grad::expand(&mut b.scope, x, o, spec),
                    }
                }
                _ => {
                    let (x, y) = (input(&mut b), input(&mut b));
                    let o = output(&mut b);
                    match kind {
                        WindowKind::MaxPool2dGather => max_pool2d_gather::expand(&mut b.scope, x, y, o, spec),
                        _ => unreachable!("expanded above"),
                    }
                }
            },
        }
        Ok(vec![(name.to_string(), Self::compile_cuda(b, block, name)?)])
    }

    /// The CUDA C++ of an expanded kernel, unchecked as the launches run it.
    fn compile_cuda(b: KernelBuilder, block: u32, name: &str) -> Result<String, String> {
        let addr = AddressType::U32;
        let def = b.build(KernelSettings::default().cube_dim(CubeDim::new_1d(block)).address_type(addr).kernel_name(name));
        let compiled = <CudaCompiler as cubecl::Compiler>::compile(&mut CudaCompiler::default(), def, &sm90_options(), ExecutionMode::Unchecked, addr.unsigned_type())
            .map_err(|e| format!("{e:?}"))?;
        Ok(compiled.to_string())
    }
}
