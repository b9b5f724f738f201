//! Kernels on a real cubecl device (wgpu; in CI Mesa's lavapipe, a CPU Vulkan driver)
//! against the reference interpreter.

use plateau::compiler::ir::{BinaryOp, CmpOp, Instr, Op, Program, UnaryOp};
use plateau::kernels::cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use plateau::kernels::cubecl::Runtime;
use plateau::kernels::host::fused_map_on;
use plateau::{evaluate, Bindings, DType, Graph, Shape, Tensor};
use rand::{Rng, SeedableRng};

fn client() -> plateau::kernels::cubecl::prelude::ComputeClient<WgpuRuntime> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: set once, before any thread of this test reads the environment.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    WgpuRuntime::client(&WgpuDevice::default())
}

/// The program's first output, on the reference interpreter.
fn reference(program: &Program, space: &Shape, inputs: &[(Vec<usize>, Vec<f32>)]) -> Vec<Vec<f32>> {
    let mut g = Graph::new();
    let mut b = Bindings::new();
    let mut ops = Vec::new();
    for (i, (shape, data)) in inputs.iter().enumerate() {
        let name = format!("i{i}");
        ops.push(g.leaf(Op::Input { name: name.clone() }, DType::F32, shape.clone()).unwrap());
        b.set("input", &name, Tensor::from_f32(shape.clone(), data).unwrap());
    }
    let ty = plateau::compiler::TensorType { dtype: DType::F32, shape: space.clone() };
    let nodes: Vec<_> = (0..program.outputs.len())
        .map(|o| g.add(Op::Fused { program: program.clone(), output: o as u32, group: 1, ty: ty.clone() }, &ops).unwrap())
        .collect();
    evaluate(&g, &b, &nodes).unwrap().into_iter().map(|t| t.to_f32()).collect()
}

/// `data` uploaded after `at` NaN and followed by 7 more, as a kernel argument: a read before
/// or past the operand shows as NaN.
fn padded_arg(client: &plateau::kernels::cubecl::prelude::ComputeClient<WgpuRuntime>, data: &[f32], at: usize) -> plateau::kernels::cubecl::prelude::ArrayArg<WgpuRuntime> {
    let mut padded = vec![f32::NAN; at];
    padded.extend_from_slice(data);
    padded.extend_from_slice(&[f32::NAN; 7]);
    // SAFETY: the handle holds the stated number of f32 values.
    unsafe { plateau::kernels::cubecl::prelude::ArrayArg::from_raw_parts(plateau::kernels::host::upload(client, &padded), padded.len()) }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(0.1f32..2.0) * if r.random_bool(0.5) { 1.0 } else { -1.0 }).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1.0) || (x.is_nan() && y.is_nan()))
}

/// Every instruction kind, broadcast and reshaped views, two outputs.
fn program() -> Program {
    use Instr::*;
    Program {
        views: vec![Shape(vec![3, 5, 7]), Shape(vec![5, 1]), Shape(vec![]), Shape(vec![3, 5, 7])],
        instrs: vec![
            Load(0),
            Load(1),
            Load(2),
            Load(3),
            Binary(BinaryOp::Add, 0, 1),
            Binary(BinaryOp::Mul, 4, 2),
            Unary(UnaryOp::Abs, 5),
            Unary(UnaryOp::Sqrt, 6),
            Unary(UnaryOp::Exp, 3),
            Unary(UnaryOp::Log, 8),
            Binary(BinaryOp::Div, 7, 9),
            Compare(CmpOp::Gt, 0, 3),
            Select(11, 10, 3),
            Binary(BinaryOp::Max, 12, 1),
            Binary(BinaryOp::Min, 13, 0),
            Unary(UnaryOp::Sign, 0),
            Unary(UnaryOp::Neg, 15),
            Unary(UnaryOp::Recip, 1),
            Binary(BinaryOp::Sub, 16, 17),
            Const(1.5f64.to_bits()),
            Binary(BinaryOp::Mul, 18, 19),
        ],
        outputs: vec![14, 20],
    }
}

#[test]
fn fused_elementwise_programs_match_the_reference() {
    let client = client();
    let p = program();
    let space = Shape(vec![3, 5, 7]);
    let inputs = vec![(vec![3, 5, 7], random(105, 1)), (vec![5], random(5, 2)), (vec![], random(1, 3)), (vec![105], random(105, 4))];
    let want = reference(&p, &space, &inputs);
    let data: Vec<&[f32]> = inputs.iter().map(|(_, d)| d.as_slice()).collect();
    let got = fused_map_on(&client, &p, &space, &data).unwrap();
    assert_eq!(got.len(), 2);
    for (o, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(close(g, w), "output {o}: {g:?} vs {w:?}");
    }
}

/// The width the lowering picks for `program` over `space`.
fn width(program: &Program, space: &Shape) -> usize {
    use plateau::kernels::lower::KernelCall;
    use plateau::kernels::program::KernelProgram;
    match KernelCall::map(KernelProgram::new(program, space), space.numel()) {
        KernelCall::Map { prog, .. } => prog.width,
        other => panic!("not a map: {other:?}"),
    }
}

/// The same program where the innermost extent is a multiple of the vector width: vector
/// loads, a broadcast row (vector loads that wrap), and splat scalars (a per-row column and a
/// scalar), against the reference; and the scalar form where one view breaks the pattern.
#[test]
fn vectorized_elementwise_programs_match_the_reference() {
    let client = client();
    let mut p = program();
    p.views = vec![Shape(vec![3, 5, 8]), Shape(vec![5, 1]), Shape(vec![]), Shape(vec![8])];
    let space = Shape(vec![3, 5, 8]);
    assert_eq!(width(&p, &space), 4);
    let inputs = vec![(vec![3, 5, 8], random(120, 1)), (vec![5, 1], random(5, 2)), (vec![], random(1, 3)), (vec![8], random(8, 4))];
    let want = reference(&p, &space, &inputs);
    let data: Vec<&[f32]> = inputs.iter().map(|(_, d)| d.as_slice()).collect();
    let got = fused_map_on(&client, &p, &space, &data).unwrap();
    for (o, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(close(g, w), "output {o}: {g:?} vs {w:?}");
    }
    // A row of 6 wraps inside a vector: no vectorization, still correct.
    p.views[3] = Shape(vec![6]);
    let space = Shape(vec![4, 6]);
    p.views[0] = space.clone();
    p.views[1] = Shape(vec![4, 1]);
    assert_eq!(width(&p, &space), 1);
    let inputs = vec![(vec![4, 6], random(24, 1)), (vec![4, 1], random(4, 2)), (vec![], random(1, 3)), (vec![6], random(6, 4))];
    let want = reference(&p, &space, &inputs);
    let data: Vec<&[f32]> = inputs.iter().map(|(_, d)| d.as_slice()).collect();
    let got = fused_map_on(&client, &p, &space, &data).unwrap();
    for (o, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(close(g, w), "output {o}: {g:?} vs {w:?}");
    }
}

/// Coordinates along each axis (`coord0 * 100 + coord1 * 10 + coord2`) and a one-hot
/// comparison of a per-row label with the last coordinate: scalar (lanes would differ), where
/// the same program without coordinates vectorizes.
#[test]
fn programs_reading_coordinates_match_the_reference() {
    use Instr::*;
    let client = client();
    let space = Shape(vec![3, 5, 8]);
    let p = Program {
        views: vec![Shape(vec![3, 5, 1])],
        instrs: vec![
            Load(0),
            Coord(0),
            Coord(1),
            Coord(2),
            Const(100f64.to_bits()),
            Const(10f64.to_bits()),
            Binary(BinaryOp::Mul, 1, 4),
            Binary(BinaryOp::Mul, 2, 5),
            Binary(BinaryOp::Add, 6, 7),
            Binary(BinaryOp::Add, 8, 3),
            Compare(CmpOp::Eq, 0, 3),
        ],
        outputs: vec![9, 10],
    };
    assert_eq!(width(&p, &space), 1);
    let plain = Program { views: p.views.clone(), instrs: vec![Load(0), Const(10f64.to_bits()), Binary(BinaryOp::Mul, 0, 1)], outputs: vec![2] };
    assert_eq!(width(&plain, &space), 4);
    let labels: Vec<f32> = (0..15).map(|i| ((i * 3) % 8) as f32).collect();
    let want = reference(&p, &space, &[(vec![3, 5, 1], labels.clone())]);
    let got = fused_map_on(&client, &p, &space, &[&labels]).unwrap();
    let index: Vec<f32> = (0..120).map(|i| (i / 40 * 100 + i / 8 % 5 * 10 + i % 8) as f32).collect();
    assert_eq!(got[0], index);
    assert_eq!(got[0], want[0]);
    let one_hot: Vec<f32> = (0..120).map(|i| f32::from(labels[i / 8] == (i % 8) as f32)).collect();
    assert_eq!((got[1].clone(), want[1].clone()), (one_hot.clone(), one_hot));
}

/// The fused loss compares labels with the class coordinate, so a label outside `0..classes`
/// would give a row of zeros: both backends refuse it when it is set, naming it and where.
#[test]
fn labels_outside_the_classes_are_refused_when_set() {
    use plateau::runtime::{Backend, Runner};
    let o = plateau::TraceOptions { batch_size: 4, input_shape: vec![1, 6, 6], ..plateau::TraceOptions::default() };
    let spec = plateau::OptimizerSpec { base: plateau::BaseOptimizer::sgd(0.9, 0.0), sam: None };
    let (traced, step, compiled) = plateau::compile(&plateau::ModelSpec::Mlp { hidden: vec![8] }, &o, &spec, false, true).unwrap();
    assert_eq!(compiled.labels.get("labels"), Some(&10));
    assert!(!compiled.fused.node_ids().any(|n| matches!(compiled.fused.node(n).op, Op::OneHot { .. })), "the one-hot is computed where it is read");
    let mut b = plateau::initial_state(&traced, &step, 1).unwrap();
    b.set("input", "x", Tensor::from_f32(vec![4, 1, 6, 6], &random(144, 2)).unwrap());
    b.set("input", "labels", Tensor::labels(&[0, 9, 3, 10]));
    for s in ["lr", "rho", "step"] {
        b.set("scalar", s, Tensor::scalar(DType::F32, 0.1));
    }
    for backend in [Backend::Reference, Backend::Wgpu] {
        let err = Runner::new(backend, &compiled, &b).err().expect("refused").to_string();
        assert_eq!(err, "label 10 at position 3 is outside 0..10", "{backend:?}");
        let mut good = b.clone();
        good.set("input", "labels", Tensor::labels(&[0, 9, 3, 1]));
        let mut r = Runner::new(backend, &compiled, &good).unwrap();
        let err = r.set("input", "labels", &Tensor::labels(&[0, -1, 3, 1])).unwrap_err().to_string();
        assert_eq!(err, "label -1 at position 1 is outside 0..10", "{backend:?}");
        assert!(r.step(&["loss"]).unwrap()["loss"].item().is_finite());
    }
}

#[test]
fn fused_elementwise_handles_any_size() {
    let client = client();
    // Sizes around the vector width and the cube size, and the empty and one-element cases.
    for n in [0usize, 1, 3, 4, 255, 256, 257, 1037] {
        let p = Program { views: vec![Shape(vec![n]), Shape(vec![n])], instrs: vec![Instr::Load(0), Instr::Load(1), Instr::Binary(BinaryOp::Mul, 0, 1)], outputs: vec![2] };
        let (a, b) = (random(n, 5), random(n, 6));
        let got = fused_map_on(&client, &p, &Shape(vec![n]), &[&a, &b]).unwrap();
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
        assert_eq!(got[0], want, "n = {n}");
        assert_eq!(width(&p, &Shape(vec![n])), if n % 4 == 0 { 4 } else { 1 }, "n = {n}");
    }
}

/// The SAM step's perturbation and descent kernels of the default MLP, as CUDA C++ emitted
/// with no GPU present.
#[test]
fn sam_perturbation_and_descent_kernels_emit_cuda() {
    use plateau::{compile, BaseOptimizer, ModelSpec, OptimizerSpec, Phase, Sam, TraceOptions};
    let spec = OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(Sam::default()) };
    let o = TraceOptions { batch_size: 128, input_shape: vec![784], ..TraceOptions::default() };
    let (_, _, c) = compile(&ModelSpec::default(), &o, &spec, false, true).unwrap();
    let g = &c.fused;
    let kernel_source = |phase: Phase, name: &str| {
        let k = c.schedule.kernels.iter().find(|k| k.phase == phase && k.name == "fused").unwrap();
        let Op::Fused { program, ty, .. } = &g.node(k.nodes[0]).op else { panic!("not fused") };
        plateau::kernels::emit::fused_map_cuda(program, &ty.shape, name).unwrap()
    };
    let perturb = kernel_source(Phase::Ascent, "sam_perturb");
    let descent = kernel_source(Phase::Descent, "sgd_descent");
    assert!(perturb.contains("sam_perturb") && perturb.contains("sqrt"), "{perturb}");
    assert!(descent.contains("sgd_descent"), "{descent}");
    insta::assert_snapshot!("sam_perturb_cuda", perturb);
    insta::assert_snapshot!("sgd_descent_cuda", descent);
}

/// Reductions with a fused prologue against the reference, over several axis sets.
#[test]
fn fused_reductions_match_the_reference() {
    use plateau::compiler::ir::ReduceOp;
    use plateau::kernels::host::fused_reduce_on;
    let client = client();
    let space = Shape(vec![3, 5, 7]);
    // prologue: exp(x) * b + coord0 - coord1, with b broadcast over the last axis (a term's
    // coordinates are its position's in the space, whichever axes are reduced)
    let p = Program {
        views: vec![Shape(vec![3, 5, 7]), Shape(vec![7])],
        instrs: vec![
            Instr::Load(0),
            Instr::Load(1),
            Instr::Unary(UnaryOp::Exp, 0),
            Instr::Binary(BinaryOp::Mul, 2, 1),
            Instr::Coord(0),
            Instr::Coord(1),
            Instr::Binary(BinaryOp::Add, 3, 4),
            Instr::Binary(BinaryOp::Sub, 6, 5),
        ],
        outputs: vec![7],
    };
    let inputs = vec![(vec![3, 5, 7], random(105, 7)), (vec![7], random(7, 8))];
    let data: Vec<&[f32]> = inputs.iter().map(|(_, d)| d.as_slice()).collect();
    for op in [ReduceOp::Max, ReduceOp::Sum] {
        for axes in [vec![0], vec![1], vec![2], vec![0, 2], vec![0, 1, 2]] {
            let mut g = Graph::new();
            let mut b = Bindings::new();
            let ops: Vec<_> = inputs
                .iter()
                .enumerate()
                .map(|(i, (shape, d))| {
                    b.set("input", &format!("i{i}"), Tensor::from_f32(shape.clone(), d).unwrap());
                    g.leaf(Op::Input { name: format!("i{i}") }, DType::F32, shape.clone()).unwrap()
                })
                .collect();
            let space_ty = plateau::compiler::TensorType { dtype: DType::F32, shape: space.clone() };
            let r = g.add(Op::FusedReduce { program: p.clone(), op, axes: axes.clone(), space: space_ty, group: 0 }, &ops).unwrap();
            let want = evaluate(&g, &b, &[r]).unwrap()[0].to_f32();
            let got = fused_reduce_on(&client, &p, op, &axes, &space, &data).unwrap();
            assert!(close(&got, &want), "{op:?} over {axes:?}: {got:?} vs {want:?}");
        }
    }
    // The sum of squares over a whole arena-sized vector (SAM's norm), odd lengths.
    for n in [1037, 269_322] {
    let x = random(n, 9);
    let sq = Program { views: vec![Shape(vec![n])], instrs: vec![Instr::Load(0), Instr::Binary(BinaryOp::Mul, 0, 0)], outputs: vec![1] };
    let got = fused_reduce_on(&client, &sq, ReduceOp::Sum, &[0], &Shape(vec![n]), &[&x]).unwrap();
    let want: f64 = x.iter().map(|v| (*v as f64) * (*v as f64)).sum();
    assert!((got[0] as f64 - want).abs() < 1e-4 * want, "n = {n}: {} vs {want}", got[0]);
    }
}

/// A whole compiled step on the device against the same step on the reference interpreter,
/// over 5 steps: every kernel, the memory plan's views and in-place updates.
fn check_device_step(name: &str, model: &plateau::ModelSpec, spec: plateau::OptimizerSpec) {
    check_device_step_with(name, model, spec, true)
}

fn check_device_step_with(name: &str, model: &plateau::ModelSpec, spec: plateau::OptimizerSpec, rewrite: bool) {
    check_device_step_at(name, model, spec, rewrite, 8, 6, None);
}

/// As above, at batch `batch` of `side x side` images, and with `paged = Some(bytes)` the pool
/// laid out in pages of that size on a device binding at most that much per buffer; returns
/// the number of split kernels (GEMMs and sums) and of pool buffers.
fn check_device_step_at(name: &str, model: &plateau::ModelSpec, spec: plateau::OptimizerSpec, rewrite: bool, batch: usize, side: usize, paged: Option<u64>) -> (usize, usize) {
    use plateau::runtime::device::{leaves, DeviceStep};
    use plateau::{compile, initial_state, run_step, TraceOptions};
    let o = TraceOptions { batch_size: batch, input_shape: vec![1, side, side], ..TraceOptions::default() };
    let (traced, step, compiled) = compile(model, &o, &spec, false, rewrite).unwrap();
    let mut b = initial_state(&traced, &step, 3).unwrap();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    b.set("input", "x", Tensor::from_f32(vec![batch, 1, side, side], &random(batch * side * side, 12)).unwrap());
    b.set("input", "labels", Tensor::labels(&(0..batch).map(|_| r.random_range(0..10)).collect::<Vec<i32>>()));
    b.set("scalar", "lr", Tensor::scalar(DType::F32, 0.05));
    b.set("scalar", "rho", Tensor::scalar(DType::F32, 0.05));
    b.set("scalar", "step", Tensor::scalar(DType::F32, 0.0));
    let mut dev = match paged {
        Some(limit) => DeviceStep::with_binding_limit(client(), &compiled, limit).unwrap(),
        None => DeviceStep::new(client(), &compiled).unwrap(),
    };
    // Compiled as one pool; a device binding less lays it out again in pages it binds.
    assert_eq!(compiled.schedule.page_bytes, None);
    let laid_out = dev.compiled().schedule.clone();
    assert_eq!(laid_out.page_bytes, paged, "{name}");
    // wgpu runs each split sum's own second launch (see `adds_up_slices`; unless
    // PLATEAU_SUMS_IN_READERS says otherwise).
    let own_sums = compiled.schedule.kernels.iter().filter(|k| k.summed_by.is_some()).count();
    if plateau::runtime::device::adds_up_slices(&client()).unwrap() {
        assert_eq!(laid_out.launches, compiled.schedule.launches, "{name}");
    } else {
        assert_eq!(laid_out.launches, compiled.schedule.launches + own_sums, "{name}");
        assert!(laid_out.kernels.iter().all(|k| k.summed_by.is_none()), "{name}");
    }
    assert_eq!(dev.device_bytes(), laid_out.peak_memory_bytes, "{name}: the device holds exactly the planned peak");
    for (kind, leaf) in leaves(&compiled.fused) {
        dev.set(kind, &leaf, b.get(kind, &leaf).unwrap()).unwrap();
    }
    let mut values = Default::default();
    for i in 0..5 {
        b.set("scalar", "step", Tensor::scalar(DType::F32, i as f64));
        if compiled.fused.find_leaf("scalar", "step").is_some() {
            dev.set("scalar", "step", &Tensor::scalar(DType::F32, i as f64)).unwrap();
        }
        values = run_step(&compiled.fused, &mut b).unwrap();
        let want = values["loss"].item() as f32;
        dev.step().unwrap();
        let got = dev.output("loss").unwrap().item() as f32;
        assert!(close(&[got], &[want]) || (got - want).abs() <= 1e-4 * want.abs(), "{name} step {i}: loss {got} vs {want}");
    }
    // Every value the last step reported (the loss, the accuracy, SAM's gradient norm).
    assert!(values.contains_key("accuracy"), "{name}: {:?}", values.keys());
    for (out, want) in &values {
        let (want, got) = (want.item() as f32, dev.output(out).unwrap().item() as f32);
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{name}: {out} {got} vs {want}");
    }
    // Every parameter and state (momentum, BatchNorm's running statistics), relative to its
    // norm (float summation orders differ between the device kernels and the interpreter).
    for (kind, leaf) in leaves(&compiled.fused).into_iter().filter(|(k, _)| matches!(*k, "param" | "state")) {
        let want = b.get(kind, &leaf).unwrap().to_f32();
        let got = dev.get(kind, &leaf).unwrap().to_f32();
        let diff: f64 = want.iter().zip(&got).map(|(a, c)| ((a - c) as f64).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = want.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        assert!(diff <= 1e-4 * norm.max(1e-30), "{name}: {kind} {leaf} differs by {} (relative)", diff / norm);
    }

    (compiled.schedule.kernels.iter().filter(|k| k.split > 1).count(), dev.pool_buffers())
}

fn check_model_on_device(model: plateau::ModelSpec) {
    use plateau::{BaseOptimizer, OptimizerSpec, Sam};
    let base = BaseOptimizer::sgd(0.9, 5e-4);
    check_device_step(&format!("{model} sgd"), &model, OptimizerSpec { base: base.clone(), sam: None });
    check_device_step(&format!("{model} sam"), &model, OptimizerSpec { base: base.clone(), sam: Some(Sam::default()) });
    check_device_step(&format!("{model} asam"), &model, OptimizerSpec { base, sam: Some(Sam { adaptive: Some(0.01), ..Sam::default() }) });
}

#[test]
fn mlp_steps_on_wgpu_match_the_reference() {
    check_model_on_device(plateau::ModelSpec::Mlp { hidden: vec![32, 16] });
}

#[test]
fn cnn_steps_on_wgpu_match_the_reference() {
    check_model_on_device(plateau::ModelSpec::Cnn);
}


/// BatchNorm (WRN-16-1, SAM): its statistics, its backward's sums sharing kernels (the scale
/// and shift gradients with a sum of the input gradient), the residual joins.
#[test]
fn batchnorm_steps_on_wgpu_match_the_reference() {
    use plateau::{BaseOptimizer, OptimizerSpec, Sam};
    let model = plateau::ModelSpec::Wrn16 { k: 1 };
    let spec = OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(Sam::default()) };
    let o = plateau::TraceOptions { batch_size: 8, input_shape: vec![1, 6, 6], ..plateau::TraceOptions::default() };
    let (_, _, c) = plateau::compile(&model, &o, &spec, false, true).unwrap();
    let sum = |n: &plateau::NodeId| matches!(c.fused.node(*n).op, Op::FusedReduce { .. });
    let shared = c.schedule.kernels.iter().filter(|k| k.nodes.len() > 1 && k.nodes.iter().all(sum)).count();
    assert!(shared >= 26, "{shared} kernels of sums: at least one per BatchNorm and pass");
    check_device_step("wrn16-1 sam", &model, spec);
}

/// Split GEMMs (the convolution weight gradients sum over 64 x 64 positions) and a split sum
/// with their workspaces in the pool, in a whole step.
#[test]
fn split_gemm_steps_on_wgpu_match_the_reference() {
    use plateau::{BaseOptimizer, OptimizerSpec, Sam};
    let spec = OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(Sam::default()) };
    let (splits, pages) = check_device_step_at("cnn sam at batch 64", &plateau::ModelSpec::Cnn, spec, true, 64, 8, None);
    // Both convolution weight gradients, in each of SAM's two passes, and the ascent's
    // squared norm of the arena (a split sum, whose slices the perturbation adds up).
    assert_eq!((splits, pages), (5, 1));
}

/// Two reductions in turn in one kernel (`fused_reduce_chain`: a BatchNorm's mean then
/// variance, a cube per channel in WRN-16-1's first stage at batch 8 on 16 x 16 inputs and a
/// unit per channel after; the logits' row maximum then the row sums, a unit per row of 10
/// classes, a cube per row of 1,024) compute what the two kernels compute one after the
/// other, bit for bit, over a whole SAM step.
#[test]
fn chained_reductions_compute_what_two_kernels_do_bit_for_bit() {
    use plateau::runtime::device::{leaves, DeviceStep};
    use plateau::{compile, initial_state, BaseOptimizer, OptimizerSpec, Sam, TraceOptions};
    let spec = OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(Sam::default()) };
    for (model, side, classes) in [(plateau::ModelSpec::Wrn16 { k: 1 }, 16, 10), (plateau::ModelSpec::default(), 28, 10), (plateau::ModelSpec::Mlp { hidden: vec![32] }, 28, 1024)] {
        let o = TraceOptions { batch_size: 8, input_shape: vec![1, side, side], classes, ..TraceOptions::default() };
        let (traced, step, compiled) = compile(&model, &o, &spec, false, true).unwrap();
        let compiled = compiled.laid_out(None, false);
        let s = &compiled.schedule;
        let chains: Vec<_> = s.kernels.iter().filter(|k| k.chain.is_some()).collect();
        let cube = |k: &&&plateau::compiler::schedule::Kernel| match &compiled.fused.node(k.nodes[0]).op {
            Op::FusedReduce { space, axes, .. } => plateau::kernels::reduce::ReduceLayout::new(&space.shape, axes).cube,
            _ => false,
        };
        let cubes = chains.iter().filter(cube).count();
        // WRN-16-1's first stage and the 1,024 classes' rows: a cube per output.
        assert!(!chains.is_empty() && (classes == 10 && side == 28) == (cubes == 0), "{model}: {} chains, {cubes} by cubes", chains.len());
        // The same kernels with each chain's two reductions launched one after the other (the
        // memory plan holds for both: the second's values are placed from the first's kernel on).
        let mut apart = compiled.clone();
        apart.schedule.kernels = s.kernels.iter().flat_map(|k| match k.chain {
            Some(i) => {
                let (mut a, mut b) = (k.clone(), k.clone());
                a.nodes.truncate(i);
                b.nodes.drain(..i);
                a.chain = None;
                b.chain = None;
                vec![a, b]
            }
            None => vec![k.clone()],
        }).collect();
        let mut b = initial_state(&traced, &step, 3).unwrap();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        b.set("input", "x", Tensor::from_f32(vec![8, 1, side, side], &random(8 * side * side, 12)).unwrap());
        b.set("input", "labels", Tensor::labels(&(0..8).map(|_| r.random_range(0..10)).collect::<Vec<i32>>()));
        b.set("scalar", "lr", Tensor::scalar(DType::F32, 0.05));
        b.set("scalar", "rho", Tensor::scalar(DType::F32, 0.05));
        let mut steps = [DeviceStep::with_layout(client(), &compiled, u64::MAX, false).unwrap(), DeviceStep::with_layout(client(), &apart, u64::MAX, false).unwrap()];
        assert_eq!(steps[1].compiled().schedule.kernels.len(), s.kernels.len() + chains.len());
        for dev in steps.iter_mut() {
            for (kind, leaf) in leaves(&compiled.fused) {
                dev.set(kind, &leaf, b.get(kind, &leaf).unwrap()).unwrap();
            }
            dev.step().unwrap();
        }
        let bits = |t: Tensor| t.to_f32().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        for out in ["loss", "accuracy", "grad_sq_norm"] {
            assert_eq!(bits(steps[0].output(out).unwrap()), bits(steps[1].output(out).unwrap()), "{model}: {out}");
        }
        for (kind, leaf) in leaves(&compiled.fused).into_iter().filter(|(k, _)| matches!(*k, "param" | "state")) {
            assert!(bits(steps[0].get(kind, &leaf).unwrap()) == bits(steps[1].get(kind, &leaf).unwrap()), "{model}: {kind} {leaf}");
        }
    }
}

/// SAM's squared norm is a split sum whose slices the perturbation adds up as it reads the
/// norm (one launch fewer, as a GPU runs it; wgpu runs the sum's own second launch): the step
/// computes what it computes with the sum's own second launch, bit for bit (the same order of
/// additions in every cube), whether the map runs scalar (an arena of 269,322 parameters) or
/// in vectors of four (268,808), and with 793 slices (four per unit for the first 25 units:
/// the four interleaved partial sums, and the tail).
#[test]
fn the_perturbation_adds_up_the_norms_slices_as_the_second_launch_would() {
    use plateau::runtime::device::{leaves, DeviceStep};
    use plateau::{compile, initial_state, BaseOptimizer, OptimizerSpec, Sam, TraceOptions};
    let spec = OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(Sam::default()) };
    for (hidden, classes, params, slices, width) in [(vec![256, 256], 10, 269_322, 65, 1), (vec![256, 256], 8, 268_808, 65, 4), (vec![4096], 8, 3_248_136, 793, 4)] {
        let name = format!("mlp {hidden:?} with {classes} classes");
        let model = plateau::ModelSpec::Mlp { hidden };
        let o = TraceOptions { batch_size: 8, classes, ..TraceOptions::default() };
        let (traced, step, compiled) = compile(&model, &o, &spec, false, true).unwrap();
        assert_eq!(compiled.schedule.param_count, params);
        let s = &compiled.schedule;
        let norm = s.kernels.iter().find(|k| k.summed_by.is_some()).expect("a split sum added up by its reader");
        let m = &s.kernels[norm.summed_by.unwrap()];
        assert_eq!((norm.split, norm.launches(), m.sums_slices_of, m.workspace), (slices, 1, Some(norm.id), norm.workspace), "{name}");
        let l = plateau::kernels::lower::lower_scheduled(&compiled.fused, s, m, &|n| s.locations[&n].1, s.workspace_offset(m)).unwrap();
        assert!(matches!(l.call, plateau::kernels::lower::KernelCall::MapSlices { ref prog, slices: sl, .. } if prog.width == width && sl.count == slices), "{name}: {:?}", l.call);
        let mut b = initial_state(&traced, &step, 3).unwrap();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        b.set("input", "x", Tensor::from_f32(vec![8, 1, 28, 28], &random(8 * 784, 12)).unwrap());
        b.set("input", "labels", Tensor::labels(&(0..8).map(|_| r.random_range(0..classes as i32)).collect::<Vec<i32>>()));
        b.set("scalar", "lr", Tensor::scalar(DType::F32, 0.05));
        b.set("scalar", "rho", Tensor::scalar(DType::F32, 0.05));
        // As a CUDA GPU runs it, and as wgpu does (the norm's slices summed by its own second
        // launch).
        let mut steps = [DeviceStep::with_layout(client(), &compiled, u64::MAX, true).unwrap(), DeviceStep::with_layout(client(), &compiled, u64::MAX, false).unwrap()];
        assert_eq!((steps[0].compiled().schedule.launches, steps[1].compiled().schedule.launches), (s.launches, s.launches + 1), "{name}");
        assert!(!steps[1].compiled().schedule.sums_in_readers && steps[1].compiled().schedule.kernels.iter().all(|k| k.summed_by.is_none()));
        for dev in steps.iter_mut() {
            for (kind, leaf) in leaves(&compiled.fused) {
                dev.set(kind, &leaf, b.get(kind, &leaf).unwrap()).unwrap();
            }
            for _ in 0..3 {
                dev.step().unwrap();
            }
        }
        let bits = |t: Tensor| t.to_f32().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        let norm_sq = bits(steps[0].output("grad_sq_norm").unwrap());
        assert!(f32::from_bits(norm_sq[0]) > 0.0, "{name}: the norm is computed");
        assert_eq!(norm_sq, bits(steps[1].output("grad_sq_norm").unwrap()), "{name}: the squared norm");
        assert_eq!(bits(steps[0].output("loss").unwrap()), bits(steps[1].output("loss").unwrap()), "{name}: the loss");
        for (kind, leaf) in leaves(&compiled.fused).into_iter().filter(|(k, _)| matches!(*k, "param" | "state")) {
            assert!(bits(steps[0].get(kind, &leaf).unwrap()) == bits(steps[1].get(kind, &leaf).unwrap()), "{name}: {kind} {leaf}");
        }
    }
}

/// A pool larger than the device binds at once, laid out again in pages the device binds and
/// held as one buffer per page: no temporary crosses a page, and the step is the reference's.
#[test]
fn paged_pools_match_the_reference() {
    use plateau::{BaseOptimizer, OptimizerSpec, Sam};
    let spec = OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(Sam::default()) };
    let (_, pages) = check_device_step_at("cnn sam in 128 KiB pages", &plateau::ModelSpec::Cnn, spec.clone(), true, 8, 6, Some(128 << 10));
    assert_eq!(pages, 3);
    // A buffer larger than the device binds (here the 113,704-byte parameter arena against
    // 16 KiB) is refused before anything runs, named, with both sizes.
    let o = plateau::TraceOptions { batch_size: 8, input_shape: vec![1, 6, 6], ..plateau::TraceOptions::default() };
    let (_, step, _) = plateau::compile(&plateau::ModelSpec::Cnn, &o, &spec, false, true).unwrap();
    let compiled = plateau::compiler::schedule::compile_step_paged(&step, true, 16 << 10).unwrap();
    assert_eq!(compiled.schedule.page_bytes, Some(16 << 10));
    let err = plateau::runtime::device::DeviceStep::with_binding_limit(client(), &compiled, 16 << 10).err().expect("refused").to_string();
    assert!(err.contains("113704-byte buffer (`param:params`)") && err.contains("binds at most 16384 bytes"), "{err}");
}

/// Unfused, every op is its own kernel (broadcasts and transposes as copies); second-order
/// SAM adds the max-pooling gather of the double backward.
#[test]
fn unfused_and_second_order_cnn_steps_on_wgpu_match_the_reference() {
    use plateau::{BaseOptimizer, OptimizerSpec, Sam};
    let base = BaseOptimizer::sgd(0.9, 5e-4);
    check_device_step_with("cnn sam unfused", &plateau::ModelSpec::Cnn, OptimizerSpec { base: base.clone(), sam: Some(Sam::default()) }, false);
    check_device_step("cnn second-order sam", &plateau::ModelSpec::Cnn, OptimizerSpec { base, sam: Some(Sam { second_order: true, ..Sam::default() }) });
}

/// Runs the kernel computing `node` through the lowering, each operand (`inputs`, in operand
/// order) and the output placed at an odd element offset after NaN garbage (the output buffer
/// starts all NaN); returns the output. A GEMM runs in both layouts (`GemmLayout`), which must
/// agree bit for bit.
fn run_lowered(g: &Graph, node: plateau::NodeId, inputs: &[&[f32]]) -> Vec<f32> {
    use plateau::kernels::cubecl::prelude::*;
    use plateau::kernels::gemm::GemmLayout;
    use plateau::kernels::host::{download, upload};
    use plateau::kernels::lower::{lower, KernelCall};
    let client = client();
    let ops = g.operands(node);
    let place = |id: plateau::NodeId| if id == node { 5 } else { 3 + 4 * ops.iter().position(|&o| o == id).unwrap() };
    // A split GEMM's workspace: its own buffer, at an odd offset too.
    let l = lower(g, &[node], &place, Some(9)).unwrap();
    let n = l.output_len[0];
    let layouts: &[GemmLayout] = if matches!(l.call, KernelCall::Gemm(_)) { &[GemmLayout::Gpu, GemmLayout::Cpu] } else { &[GemmLayout::Gpu] };
    let results: Vec<Vec<f32>> = layouts
        .iter()
        .map(|&layout| {
            // NaN everywhere, so that an element the kernel leaves unwritten shows, and 7 more
            // after the output, which must stay NaN.
            let out = upload(&client, &vec![f32::NAN; n + 12]);
            let ws_len = 9 + l.workspace_len;
            let ws = client.empty(ws_len * 4);
            // The kernel's arguments in its own order (the lowering may reorder the operands).
            let args: Vec<_> = l
                .inputs
                .iter()
                .map(|id| {
                    let i = ops.iter().position(|o| o == id).unwrap();
                    padded_arg(&client, inputs[i], 3 + 4 * i)
                })
                .collect();
            // SAFETY: as above.
            let mut outs = vec![unsafe { ArrayArg::from_raw_parts(out.clone(), n + 12) }];
            if l.workspace_len > 0 {
                // SAFETY: as above.
                outs.extend(unsafe { [ArrayArg::from_raw_parts(ws.clone(), ws_len), ArrayArg::from_raw_parts(ws.clone(), ws_len)] });
            }
            l.call.clone().with_gemm_layout(layout).launch(&client, args, outs);
            let all = download(&client, out, n + 12).unwrap();
            assert!(all[..5].iter().chain(&all[5 + n..]).all(|v| v.is_nan()), "the kernel wrote outside its output ({layout:?})");
            all[5..5 + n].to_vec()
        })
        .collect();
    for r in &results[1..] {
        let differ = r.iter().zip(&results[0]).position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(differ, None, "{node}: the CPU layout's output differs from the GPU layout's");
    }
    results.into_iter().next().unwrap()
}

/// Long sums with few outputs run split (slices into a workspace at an offset, then their
/// sum): SAM's norm of the MLP's arena, a per-channel sum over the other axes, a length no
/// slice divides.
#[test]
fn split_sums_match_the_reference() {
    use plateau::compiler::ir::ReduceOp;
    use plateau::kernels::lower::{lower, KernelCall};
    for (dims, axes, splits) in [(vec![269_322], vec![0], 65), (vec![16, 4, 32, 32], vec![0, 2, 3], 4), (vec![3, 100_003], vec![1], 24)] {
        let space = Shape(dims.clone());
        let n = space.numel();
        let mut g = Graph::new();
        let x = g.leaf(Op::Input { name: "x".into() }, DType::F32, dims.clone()).unwrap();
        let sq = Program { views: vec![space.clone()], instrs: vec![Instr::Load(0), Instr::Binary(BinaryOp::Mul, 0, 0)], outputs: vec![1] };
        // And each term times its coordinate along the last axis: positions are the space's.
        let last = dims.len() as u32 - 1;
        let by_coord = Program { views: vec![space.clone()], instrs: vec![Instr::Load(0), Instr::Coord(last), Instr::Binary(BinaryOp::Mul, 0, 1)], outputs: vec![2] };
        for (what, program) in [("squares", sq), ("terms times their last coordinate", by_coord)] {
            let ty = plateau::compiler::TensorType { dtype: DType::F32, shape: space.clone() };
            let r = g.add(Op::FusedReduce { program, op: ReduceOp::Sum, axes: axes.clone(), space: ty, group: 0 }, &[x]).unwrap();
            let l = lower(&g, &[r], &|_| 0, Some(9)).unwrap();
            let outputs = g.shape(r).numel();
            assert!(matches!(l.call, KernelCall::Reduce { split, .. } if split == splits), "{dims:?}: {:?}", l.call);
            assert_eq!(l.workspace_len, splits * outputs);
            let data = random(n, 10);
            let mut b = Bindings::new();
            b.set("input", "x", Tensor::from_f32(dims.clone(), &data).unwrap());
            let want = evaluate(&g, &b, &[r]).unwrap()[0].to_f32();
            let got = run_lowered(&g, r, &[&data]);
            assert_close_scaled(&format!("sum of {what} over {axes:?} of {dims:?}"), &got, &want);
        }
    }
}

/// A sum that also writes its prologue as a map (one kernel for a gradient and its bias
/// gradient), in each form: a unit per output, a cube per output, split into slices.
#[test]
fn sums_that_write_their_map_match_the_reference() {
    use plateau::compiler::ir::ReduceOp;
    use plateau::kernels::cubecl::prelude::*;
    use plateau::kernels::host::{download, upload};
    use plateau::kernels::lower::{lower, KernelCall};
    let client = client();
    for (dims, axes, cube, split) in [(vec![128, 10], vec![0], false, 1), (vec![16, 4, 8, 8], vec![0, 2, 3], true, 1), (vec![3, 20_000], vec![1], true, 4)] {
        let space = Shape(dims.clone());
        let n = space.numel();
        let mut g = Graph::new();
        let x = g.leaf(Op::Input { name: "x".into() }, DType::F32, dims.clone()).unwrap();
        let p = Program { views: vec![space.clone()], instrs: vec![Instr::Load(0), Instr::Unary(UnaryOp::Exp, 0), Instr::Binary(BinaryOp::Mul, 0, 1)], outputs: vec![2] };
        let ty = plateau::compiler::TensorType { dtype: DType::F32, shape: space.clone() };
        let r = g.add(Op::FusedReduce { program: p.clone(), op: ReduceOp::Sum, axes: axes.clone(), space: ty.clone(), group: 1 }, &[x]).unwrap();
        let m = g.add(Op::Fused { program: p, output: 0, group: 1, ty }, &[x]).unwrap();
        // Input at 3, sum at 5, map at 7, workspace at 9, each in its own buffer.
        let place = |id: plateau::NodeId| if id == r { 5 } else if id == m { 7 } else { 3 };
        let l = lower(&g, &[r, m], &place, Some(9)).unwrap();
        assert!(matches!(l.call, KernelCall::Reduce { split: sp, map: Some(7), ref layout, .. } if sp == split && layout.cube == cube), "{dims:?}: {:?}", l.call);
        assert_eq!(l.outputs, [Some(r), Some(m)]);
        let data: Vec<f32> = random(n, 13).iter().map(|v| v * 0.5).collect();
        let mut b = Bindings::new();
        b.set("input", "x", plateau::Tensor::from_f32(dims.clone(), &data).unwrap());
        let want = evaluate(&g, &b, &[r, m]).unwrap();
        let sums = g.shape(r).numel();
        let (out, map) = (upload(&client, &vec![f32::NAN; sums + 5 + 7]), upload(&client, &vec![f32::NAN; n + 7 + 7]));
        let ws_len = 9 + l.workspace_len;
        let ws = client.empty(ws_len * 4);
        let args = vec![padded_arg(&client, &data, 3)];
        // SAFETY: every handle holds the stated number of f32 values.
        let mut outs = unsafe { vec![ArrayArg::from_raw_parts(out.clone(), sums + 12), ArrayArg::from_raw_parts(map.clone(), n + 14)] };
        if l.workspace_len > 0 {
            // SAFETY: as above.
            outs.extend(unsafe { [ArrayArg::from_raw_parts(ws.clone(), ws_len), ArrayArg::from_raw_parts(ws.clone(), ws_len)] });
        }
        l.call.launch(&client, args, outs);
        let (all_sum, all_map) = (download(&client, out, sums + 12).unwrap(), download(&client, map, n + 14).unwrap());
        assert_close_scaled(&format!("sum over {axes:?} of {dims:?}"), &all_sum[5..5 + sums], &want[0].to_f32());
        assert!(close(&all_map[7..7 + n], &want[1].to_f32()), "map over {dims:?}");
        let outside = all_sum[..5].iter().chain(&all_sum[5 + sums..]).chain(&all_map[..7]).chain(&all_map[7 + n..]);
        assert!(outside.collect::<Vec<_>>().iter().all(|v| v.is_nan()), "{dims:?}: written outside the sum or the map");
    }
}

/// Sums over one space sharing a kernel (a BatchNorm's gradient sums; a loss and an
/// accuracy): each output of the merged program is its own node's sum, in each form (a unit
/// per output, a cube per output), at its own offset, with operands the sums do not share.
#[test]
fn sums_sharing_a_kernel_match_the_reference() {
    use plateau::compiler::ir::ReduceOp;
    use plateau::kernels::cubecl::prelude::*;
    use plateau::kernels::host::{download, upload};
    use plateau::kernels::lower::{lower, KernelCall};
    let client = client();
    for (dims, axes, cube) in [(vec![128, 10], vec![1], false), (vec![16, 4, 8, 8], vec![0, 2, 3], true), (vec![128, 10], vec![0, 1], true)] {
        let space = Shape(dims.clone());
        let n = space.numel();
        let mut kept = dims.clone();
        for &a in &axes {
            kept[a] = 1;
        }
        let mut g = Graph::new();
        let x = g.leaf(Op::Input { name: "x".into() }, DType::F32, dims.clone()).unwrap();
        let y = g.leaf(Op::Input { name: "y".into() }, DType::F32, dims.clone()).unwrap();
        let c = g.leaf(Op::Input { name: "c".into() }, DType::F32, kept.clone()).unwrap();
        let ty = plateau::compiler::TensorType { dtype: DType::F32, shape: space.clone() };
        let views = |k: usize| vec![space.clone(); k];
        // sum(x), sum(x * y), sum((x - c) * (x - c)): three programs, operands in their own order.
        let p0 = Program { views: views(1), instrs: vec![Instr::Load(0)], outputs: vec![0] };
        let p1 = Program { views: views(2), instrs: vec![Instr::Load(0), Instr::Load(1), Instr::Binary(BinaryOp::Mul, 0, 1)], outputs: vec![2] };
        let p2 = Program {
            views: vec![Shape(kept.clone()), space.clone()],
            instrs: vec![Instr::Load(0), Instr::Load(1), Instr::Binary(BinaryOp::Sub, 1, 0), Instr::Binary(BinaryOp::Mul, 2, 2)],
            outputs: vec![3],
        };
        let sum = |g: &mut Graph, p: Program, ops: &[plateau::NodeId]| g.add(Op::FusedReduce { program: p, op: ReduceOp::Sum, axes: axes.clone(), space: ty.clone(), group: 4 }, ops).unwrap();
        let s0 = sum(&mut g, p0, &[x]);
        let s1 = sum(&mut g, p1, &[y, x]);
        let s2 = sum(&mut g, p2, &[c, x]);
        g.verify().unwrap();
        let at = |id: plateau::NodeId| [(x, 3), (y, 7), (c, 2), (s0, 5), (s1, 6), (s2, 1)].iter().find(|p| p.0 == id).unwrap().1;
        let l = lower(&g, &[s0, s1, s2], &at, None).unwrap();
        assert!(matches!(&l.call, KernelCall::Reduce { split: 1, map: None, layout, prog, .. } if layout.cube == cube && prog.outputs.len() == 3), "{dims:?}: {:?}", l.call);
        assert_eq!(l.outputs, [Some(s0), Some(s1), Some(s2)]);
        let data = |id: plateau::NodeId, seed: u64| -> Vec<f32> { random(g.shape(id).numel(), seed) };
        let inputs = [(x, data(x, 21)), (y, data(y, 22)), (c, data(c, 23))];
        let mut b = Bindings::new();
        for (id, (name, d)) in inputs.iter().zip(["x", "y", "c"]).map(|(i, n)| (i.0, (n, &i.1))) {
            b.set("input", name, plateau::Tensor::from_f32(g.shape(id).0.clone(), d).unwrap());
        }
        let want = evaluate(&g, &b, &[s0, s1, s2]).unwrap();
        // SAFETY: every handle holds the stated number of f32 values.
        let args: Vec<_> = l
            .inputs
            .iter()
            .map(|&id| padded_arg(&client, &inputs.iter().find(|i| i.0 == id).unwrap().1, at(id)))
            .collect();
        let sums = g.shape(s0).numel();
        // NaN before and after each output, which must stay NaN.
        let outs: Vec<_> = [s0, s1, s2].iter().map(|&s| upload(&client, &vec![f32::NAN; sums + at(s) + 7])).collect();
        // SAFETY: as above.
        let out_args = [s0, s1, s2].iter().zip(&outs).map(|(&s, h)| unsafe { ArrayArg::from_raw_parts(h.clone(), sums + at(s) + 7) }).collect();
        l.call.launch(&client, args, out_args);
        assert_eq!(n % sums, 0);
        for (k, (&s, h)) in [s0, s1, s2].iter().zip(outs).enumerate() {
            let all = download(&client, h, sums + at(s) + 7).unwrap();
            assert_close_scaled(&format!("sum {k} over {axes:?} of {dims:?}"), &all[at(s)..at(s) + sums], &want[k].to_f32());
            assert!(all[..at(s)].iter().chain(&all[at(s) + sums..]).all(|v| v.is_nan()), "sum {k} over {axes:?} of {dims:?}: written outside");
        }
    }
}

/// `got` against `want` relative to the largest magnitude (sums are ordered differently).
fn assert_close_scaled(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().map(|v| v.abs()).fold(1f32, f32::max);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 2e-5 * scale, "{what}: element {i}: {a} vs {b}");
    }
}

/// The GEMM kernel as a matmul: every transpose, sizes on and off the tile and register block
/// boundaries (blocks of 1, 2 and 4), operands at offsets.
#[test]
fn matmuls_match_the_reference_at_every_size() {
    // The last two are split along k (5 and 2 slices, the last slice shorter).
    for (i, &(m, k, n)) in [(1, 1, 1), (3, 5, 2), (17, 33, 16), (70, 19, 130), (64, 128, 64), (129, 40, 31), (5, 3000, 7), (20, 1100, 40)].iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut g = Graph::new();
            let (sa, sb) = (if ta { [k, m] } else { [m, k] }, if tb { [n, k] } else { [k, n] });
            let a = g.leaf(Op::Input { name: "a".into() }, DType::F32, sa).unwrap();
            let b = g.leaf(Op::Input { name: "b".into() }, DType::F32, sb).unwrap();
            let y = g.add(Op::MatMul { ta, tb }, &[a, b]).unwrap();
            let (da, db) = (random(m * k, 40 + i as u64), random(k * n, 50 + i as u64));
            let mut bind = Bindings::new();
            bind.set("input", "a", Tensor::from_f32(sa.to_vec(), &da).unwrap());
            bind.set("input", "b", Tensor::from_f32(sb.to_vec(), &db).unwrap());
            let want = evaluate(&g, &bind, &[y]).unwrap()[0].to_f32();
            assert_close_scaled(&format!("{m}x{k}x{n} ta={ta} tb={tb}"), &run_lowered(&g, y, &[&da, &db]), &want);
            let split = plateau::compiler::schedule::gemm::split_of(&g, y);
            assert_eq!(split, [1, 1, 1, 1, 1, 1, 5, 2][i], "{m}x{k}x{n}");
        }
    }
}

/// The convolution and its two gradients as implicit GEMMs: strides, padding, 1x1 and
/// rectangular kernels, odd sizes, operands at offsets.
#[test]
fn convolutions_match_the_reference() {
    use plateau::compiler::ir::Conv2dAttrs;
    // (batch, in channels, h, w, out channels, kernel, stride, padding)
    let cases = [
        (2, 3, 7, 6, 5, [3, 3], [1, 1], [1, 1]),
        (3, 4, 9, 8, 6, [3, 3], [2, 2], [1, 1]),
        (2, 5, 6, 6, 70, [1, 1], [2, 2], [0, 0]),
        (1, 2, 8, 7, 3, [3, 2], [2, 1], [1, 0]),
        (4, 33, 5, 5, 40, [3, 3], [1, 1], [1, 1]),
        // The weight gradient sums 2,048 terms on one tile: split into 4 slices.
        (8, 3, 16, 16, 4, [3, 3], [1, 1], [1, 1]),
        // Strided, output channels in whole stages of 16: the input gradient by phases.
        // ResNet's 3x3 stride-2 with an odd height; its 1x1 stride-2 shortcut (three of four
        // phases reached by no tap: zeros); strides 3 and 2 with padding 2 and 1; more than
        // one tile of rows (70 input channels); 2x2 stride 2 (one tap per pixel); a 5x5 kernel.
        (3, 4, 9, 8, 16, [3, 3], [2, 2], [1, 1]),
        (2, 5, 6, 7, 32, [1, 1], [2, 2], [0, 0]),
        (2, 3, 11, 10, 16, [3, 2], [3, 2], [2, 1]),
        (4, 70, 8, 8, 48, [3, 3], [2, 2], [1, 1]),
        (2, 3, 8, 8, 16, [2, 2], [2, 2], [0, 0]),
        (1, 2, 5, 5, 16, [5, 5], [2, 2], [2, 2]),
    ];
    for (i, &(n, c, h, w, o, kernel, stride, padding)) in cases.iter().enumerate() {
        let attrs = Conv2dAttrs { stride, padding };
        let mut g = Graph::new();
        let x = g.leaf(Op::Input { name: "x".into() }, DType::F32, [n, c, h, w]).unwrap();
        let wt = g.leaf(Op::Input { name: "w".into() }, DType::F32, [o, c, kernel[0], kernel[1]]).unwrap();
        let y = g.add(Op::Conv2d(attrs), &[x, wt]).unwrap();
        let ys = g.shape(y).0.clone();
        let gy = g.leaf(Op::Input { name: "gy".into() }, DType::F32, ys.clone()).unwrap();
        let gx = g.add(Op::Conv2dGradInput { attrs, input_hw: [h, w] }, &[gy, wt]).unwrap();
        let gw = g.add(Op::Conv2dGradWeight { attrs, kernel }, &[x, gy]).unwrap();
        let (dx, dw) = (random(n * c * h * w, 60 + i as u64), random(o * c * kernel[0] * kernel[1], 70 + i as u64));
        let dgy = random(ys.iter().product(), 80 + i as u64);
        let mut bind = Bindings::new();
        bind.set("input", "x", Tensor::from_f32(vec![n, c, h, w], &dx).unwrap());
        bind.set("input", "w", Tensor::from_f32(vec![o, c, kernel[0], kernel[1]], &dw).unwrap());
        bind.set("input", "gy", Tensor::from_f32(ys.clone(), &dgy).unwrap());
        let want = evaluate(&g, &bind, &[y, gx, gw]).unwrap();
        assert_close_scaled(&format!("conv {i}"), &run_lowered(&g, y, &[&dx, &dw]), &want[0].to_f32());
        assert_close_scaled(&format!("conv grad input {i}"), &run_lowered(&g, gx, &[&dgy, &dw]), &want[1].to_f32());
        assert_close_scaled(&format!("conv grad weight {i}"), &run_lowered(&g, gw, &[&dx, &dgy]), &want[2].to_f32());
        assert_eq!(plateau::compiler::schedule::gemm::split_of(&g, gw), if i == 5 { 4 } else { 1 });
        // The kernels' GEMMs split exactly as the schedule plans.
        for node in [y, gx, gw] {
            let spec = match plateau::kernels::lower::lower(&g, &[node], &|_| 0, Some(0)).unwrap().call {
                plateau::kernels::lower::KernelCall::Gemm(spec) => spec,
                other => panic!("conv {i} lowered to {other:?}"),
            };
            assert_eq!(spec.split, plateau::compiler::schedule::gemm::split_of(&g, node), "conv {i}, node {node}");
            if node == gx {
                assert_eq!(spec.phased.is_some(), i >= 6, "conv grad input {i}");
            }
        }
    }
}

/// A kernel that also computes maps of its output (its epilogues: the bias and ReLU after a
/// layer, and a second map), storing its own output or not: a matmul, a matmul split along k
/// (the epilogue runs in the sum of the slices), a convolution, max-pool gradients (windows
/// that tile the input, overlapping windows, and windows that leave a row out; its `b` is the
/// output gradient).
#[test]
fn epilogues_match_the_reference() {
    use plateau::compiler::ir::{Conv2dAttrs, PoolAttrs};
    use plateau::compiler::TensorType;
    use plateau::kernels::cubecl::prelude::*;
    use plateau::kernels::host::{download, upload};
    use plateau::kernels::gemm::GemmLayout;
    use plateau::kernels::lower::{lower, KernelCall};
    let client = client();
    // (a's shape, b's shape, the op (0 matmul, 1 convolution, 2 max-pool gradient), the bias's
    // view, splits)
    let cases: [(Vec<usize>, Vec<usize>, usize, Vec<usize>, usize); 6] = [
        (vec![64, 40], vec![40, 48], 0, vec![48], 1),
        (vec![8, 4096], vec![4096, 16], 0, vec![16], 8),
        (vec![2, 3, 8, 8], vec![4, 3, 3, 3], 1, vec![4, 1, 1], 1),
        // Windows that tile the input: a unit per window.
        (vec![2, 3, 8, 6], vec![2, 3, 4, 3], 2, vec![3, 1, 1], 1),
        // Overlapping 3x3 windows, stride 2, padding 1 (output 4 x 3 of a 7 x 6 input).
        (vec![2, 3, 7, 6], vec![2, 3, 4, 3], 2, vec![3, 1, 1], 1),
        // 2x2 windows of stride 2 over an odd side: the last row is in no window (a unit per
        // input element, which must store its 0).
        (vec![2, 3, 7, 6], vec![2, 3, 3, 3], 2, vec![3, 1, 1], 1),
    ];
    for (i, (sa, sb, kind, sbias, splits)) in cases.into_iter().enumerate() {
        for store in [true, false] {
            let mut g = Graph::new();
            let a = g.leaf(Op::Input { name: "a".into() }, DType::F32, sa.clone()).unwrap();
            let b = g.leaf(Op::Input { name: "b".into() }, DType::F32, sb.clone()).unwrap();
            let bias = g.leaf(Op::Input { name: "bias".into() }, DType::F32, sbias.clone()).unwrap();
            let y = match kind {
                0 => g.add(Op::MatMul { ta: false, tb: false }, &[a, b]),
                1 => g.add(Op::Conv2d(Conv2dAttrs { stride: [1, 1], padding: [1, 1] }), &[a, b]),
                _ if i != 4 => g.add(Op::MaxPool2dGrad(PoolAttrs { kernel: [2, 2], stride: [2, 2], padding: [0, 0] }), &[a, b]),
                _ => g.add(Op::MaxPool2dGrad(PoolAttrs { kernel: [3, 3], stride: [2, 2], padding: [1, 1] }), &[a, b]),
            }
            .unwrap();
            let space = g.shape(y).clone();
            let ty = TensorType { dtype: DType::F32, shape: space.clone() };
            // relu(bias + y) (reading the bias first, so the merged program's operand 0 is not
            // the op's output until lowering moves it there), and y * y - bias; for the max-pool
            // gradient y * y - x, an epilogue reading the op's own input (as the CNN's ReLU mask
            // reads the pre-activation).
            let (other, other_view) = if kind == 2 { (a, space.clone()) } else { (bias, Shape(sbias.clone())) };
            let relu = Program {
                views: vec![space.clone(), Shape(sbias.clone())],
                instrs: vec![Instr::Load(1), Instr::Load(0), Instr::Binary(BinaryOp::Add, 0, 1), Instr::Const(0f64.to_bits()), Instr::Binary(BinaryOp::Max, 2, 3)],
                outputs: vec![4],
            };
            // (Plus the element's coordinate along the last and the first axis: an epilogue
            // runs at its element's position in the op's output.)
            let last = space.rank() as u32 - 1;
            let sq = Program {
                views: vec![space.clone(), other_view],
                instrs: vec![
                    Instr::Load(0),
                    Instr::Load(1),
                    Instr::Binary(BinaryOp::Mul, 0, 0),
                    Instr::Binary(BinaryOp::Sub, 2, 1),
                    Instr::Coord(last),
                    Instr::Coord(0),
                    Instr::Binary(BinaryOp::Add, 3, 4),
                    Instr::Binary(BinaryOp::Add, 6, 5),
                ],
                outputs: vec![7],
            };
            let e1 = g.add(Op::Epilogue { program: relu, ty: ty.clone() }, &[y, bias]).unwrap();
            let e2 = g.add(Op::Epilogue { program: sq, ty }, &[y, other]).unwrap();
            let (da, db, dbias) = (random(sa.iter().product(), 90 + i as u64), random(sb.iter().product(), 91 + i as u64), random(sbias.iter().product(), 92));
            let mut bind = Bindings::new();
            bind.set("input", "a", plateau::Tensor::from_f32(sa.clone(), &da).unwrap());
            bind.set("input", "b", plateau::Tensor::from_f32(sb.clone(), &db).unwrap());
            bind.set("input", "bias", plateau::Tensor::from_f32(sbias.clone(), &dbias).unwrap());
            let want = evaluate(&g, &bind, &[y, e1, e2]).unwrap();
            // Each node in its own buffer at its own offset; the workspace at 9.
            let at = |id: plateau::NodeId| [(a, 3), (b, 7), (bias, 11), (y, 5), (e1, 6), (e2, 8)].iter().find(|p| p.0 == id).unwrap().1;
            let nodes = if store { vec![y, e1, e2] } else { vec![e1, e2] };
            let l = lower(&g, &nodes, &at, Some(9)).unwrap();
            match &l.call {
                KernelCall::GemmEpilogue { spec, store: s, .. } => assert!(kind < 2 && spec.split == splits && *s == store, "case {i}: {:?}", l.call),
                KernelCall::MaxPool2dGradEpilogue { spec, store: s, .. } => assert!(kind == 2 && *s == store && spec.tiles() == (i == 3), "case {i}: {:?}", l.call),
                other => panic!("case {i}: {other:?}"),
            }
            let n = space.numel();
            let data = |id: plateau::NodeId| if id == a { &da } else if id == b { &db } else { &dbias };
            // A GEMM in both layouts, which must agree bit for bit (the max-pool gradient has one).
            let layouts: &[GemmLayout] = if kind < 2 { &[GemmLayout::Gpu, GemmLayout::Cpu] } else { &[GemmLayout::Gpu] };
            let mut results: Vec<Vec<u32>> = Vec::new();
            for &layout in layouts {
                let args: Vec<_> = l
                    .inputs
                    .iter()
                    .map(|&id| padded_arg(&client, data(id), at(id)))
                    .collect();
                // NaN everywhere, so that an element the kernel leaves unwritten shows.
                let bufs: Vec<_> = [y, e1, e2].iter().map(|&id| (id, upload(&client, &vec![f32::NAN; n + at(id) + 7]))).collect();
                let handle = |id: plateau::NodeId| bufs.iter().find(|b| b.0 == id).unwrap().1.clone();
                // SAFETY: as above.
                let mut outs: Vec<_> = l.outputs.iter().map(|o| unsafe { ArrayArg::from_raw_parts(handle(o.unwrap()), n + at(o.unwrap()) + 7) }).collect();
                let ws_len = 9 + l.workspace_len;
                let ws = client.empty(ws_len * 4);
                if l.workspace_len > 0 {
                    // SAFETY: as above.
                    outs.extend(unsafe { [ArrayArg::from_raw_parts(ws.clone(), ws_len), ArrayArg::from_raw_parts(ws.clone(), ws_len)] });
                }
                l.call.clone().with_gemm_layout(layout).launch(&client, args, outs);
                let got = |id: plateau::NodeId| {
                    let all = download(&client, handle(id), n + at(id) + 7).unwrap();
                    assert!(all[..at(id)].iter().chain(&all[at(id) + n..]).all(|v| v.is_nan()), "case {i} {layout:?}: written outside {id}");
                    all[at(id)..at(id) + n].to_vec()
                };
                assert_close_scaled(&format!("case {i} {layout:?} relu epilogue"), &got(e1), &want[1].to_f32());
                assert_close_scaled(&format!("case {i} {layout:?} second epilogue"), &got(e2), &want[2].to_f32());
                if store {
                    assert_close_scaled(&format!("case {i} {layout:?} GEMM output"), &got(y), &want[0].to_f32());
                } else {
                    // Unstored, the GEMM's output argument is bound to the first epilogue's buffer:
                    // nothing may land there outside that epilogue's own elements.
                    let whole = download(&client, handle(e1), n + at(e1) + 7).unwrap();
                    assert!(whole[..at(e1)].iter().all(|v| v.is_nan()), "case {i} {layout:?}: an unstored GEMM output was written");
                }
                let stored = if store { got(y) } else { Vec::new() };
                results.push([got(e1), got(e2), stored].concat().iter().map(|v| v.to_bits()).collect());
            }
            assert!(results.iter().all(|r| *r == results[0]), "case {i}: the layouts' outputs differ");
        }
    }
}

/// A sum's epilogue (a BatchNorm's running mean: `0.9 * r + 0.1 * sum / n`, read through a
/// reshape of the sum to the state's shape), in each form of the sum (a unit per output, a
/// cube per output), the sum stored or not.
#[test]
fn sum_epilogues_match_the_reference() {
    use plateau::compiler::ir::ReduceOp;
    use plateau::compiler::TensorType;
    use plateau::kernels::cubecl::prelude::*;
    use plateau::kernels::host::{download, upload};
    use plateau::kernels::lower::{lower, KernelCall};
    let client = client();
    for (dims, cube) in [(vec![8, 6, 3, 3], false), (vec![16, 5, 8, 8], true)] {
        for store in [true, false] {
            let space = Shape(dims.clone());
            let c = dims[1];
            let mut g = Graph::new();
            let x = g.leaf(Op::Input { name: "x".into() }, DType::F32, dims.clone()).unwrap();
            let r = g.leaf(Op::Input { name: "r".into() }, DType::F32, vec![c]).unwrap();
            let sum = Program { views: vec![space.clone()], instrs: vec![Instr::Load(0)], outputs: vec![0] };
            let ty = TensorType { dtype: DType::F32, shape: space.clone() };
            let s = g.add(Op::FusedReduce { program: sum, op: ReduceOp::Sum, axes: vec![0, 2, 3], space: ty, group: 0 }, &[x]).unwrap();
            assert!(g.node(s).op.takes_epilogue());
            let n = (space.numel() / c) as f64;
            let update = Program {
                views: vec![Shape(vec![c]), Shape(vec![c])],
                instrs: vec![
                    Instr::Load(0),
                    Instr::Load(1),
                    Instr::Const(0.9f64.to_bits()),
                    Instr::Binary(BinaryOp::Mul, 1, 2),
                    Instr::Const((0.1 / n).to_bits()),
                    Instr::Binary(BinaryOp::Mul, 0, 4),
                    Instr::Binary(BinaryOp::Add, 3, 5),
                ],
                outputs: vec![6],
            };
            let e = g.add(Op::Epilogue { program: update, ty: TensorType { dtype: DType::F32, shape: Shape(vec![c]) } }, &[s, r]).unwrap();
            g.verify().unwrap();
            let (dx, dr) = (random(space.numel(), 95), random(c, 96));
            let mut bind = Bindings::new();
            bind.set("input", "x", plateau::Tensor::from_f32(dims.clone(), &dx).unwrap());
            bind.set("input", "r", plateau::Tensor::from_f32(vec![c], &dr).unwrap());
            let want = evaluate(&g, &bind, &[s, e]).unwrap();
            let at = |id: plateau::NodeId| [(x, 3), (r, 7), (s, 5), (e, 6)].iter().find(|p| p.0 == id).unwrap().1;
            let nodes = if store { vec![s, e] } else { vec![e] };
            let l = lower(&g, &nodes, &at, None).unwrap();
            assert!(matches!(&l.call, KernelCall::Reduce { epi: Some(_), store: st, split: 1, layout, .. } if *st == store && layout.cube == cube), "{dims:?}: {:?}", l.call);
            let data = |id: plateau::NodeId| if id == x { &dx } else { &dr };
            let args: Vec<_> = l
                .inputs
                .iter()
                .map(|&id| padded_arg(&client, data(id), at(id)))
                .collect();
            let bufs: Vec<_> = [s, e].iter().map(|&id| (id, upload(&client, &vec![f32::NAN; c + at(id) + 7]))).collect();
            let handle = |id: plateau::NodeId| bufs.iter().find(|b| b.0 == id).unwrap().1.clone();
            // SAFETY: as above.
            let outs: Vec<_> = l.outputs.iter().map(|o| unsafe { ArrayArg::from_raw_parts(handle(o.unwrap()), c + at(o.unwrap()) + 7) }).collect();
            l.call.launch(&client, args, outs);
            let all = |id: plateau::NodeId| download(&client, handle(id), c + at(id) + 7).unwrap();
            let got = all(e);
            assert_close_scaled(&format!("{dims:?} running mean"), &got[at(e)..at(e) + c], &want[1].to_f32());
            assert!(got[..at(e)].iter().chain(&got[at(e) + c..]).all(|v| v.is_nan()), "{dims:?}: written outside the update");
            if store {
                let sums = all(s);
                assert_close_scaled(&format!("{dims:?} sum"), &sums[at(s)..at(s) + c], &want[0].to_f32());
                assert!(sums[..at(s)].iter().chain(&sums[at(s) + c..]).all(|v| v.is_nan()), "{dims:?}: written outside the sum");
            } else {
                // Unstored, the sum's argument is bound to the update's buffer, which the check
                // above finds written only where the update goes.
                assert_eq!(l.outputs, [Some(e), Some(e)], "{dims:?}");
            }
        }
    }
}

/// A weight gradient summing over more than 65,536 positions per output (batch 128 at 28x28).
#[test]
fn long_accumulations_are_not_truncated() {
    let (n, h) = (128usize, 28usize);
    let x = random(n * h * h, 21);
    let gy = random(n * 2 * h * h, 22);
    let mut g = Graph::new();
    let xi = g.leaf(Op::Input { name: "x".into() }, DType::F32, [n, 1, h, h]).unwrap();
    let gi = g.leaf(Op::Input { name: "gy".into() }, DType::F32, [n, 2, h, h]).unwrap();
    let attrs = plateau::compiler::ir::Conv2dAttrs { stride: [1, 1], padding: [1, 1] };
    let y = g.add(Op::Conv2dGradWeight { attrs, kernel: [3, 3] }, &[xi, gi]).unwrap();
    let mut bind = Bindings::new();
    bind.set("input", "x", plateau::Tensor::from_f32(vec![n, 1, h, h], &x).unwrap());
    bind.set("input", "gy", plateau::Tensor::from_f32(vec![n, 2, h, h], &gy).unwrap());
    let want = evaluate(&g, &bind, &[y]).unwrap()[0].to_f32();
    let got = run_lowered(&g, y, &[&x, &gy]);
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-3 * scale.max(1.0), "{got:?} vs {want:?}");
    }
}

/// Dropout masks on the device are the reference's, element for element.
#[test]
fn dropout_masks_match_the_reference_hash() {
    use plateau::compiler::ir::dropout_uniform;
    use plateau::kernels::cubecl::prelude::*;
    use plateau::kernels::host::{download, upload};
    use plateau::kernels::lower::KernelCall;
    let client = client();
    let (n, p, seed) = (1037usize, 0.3f64, 7u32);
    let out = client.empty(n * 4);
    // SAFETY: the handles hold the stated number of f32 values.
    let (s, o) = unsafe { (ArrayArg::from_raw_parts(upload(&client, &[5.0]), 1), ArrayArg::from_raw_parts(out.clone(), n)) };
    KernelCall::DropoutMask { n, p_bits: (p as f32).to_bits(), seed, offsets: (0, 0) }.launch(&client, vec![s], vec![o]);
    let got = download(&client, out, n).unwrap();
    let want: Vec<f32> = (0..n).map(|i| (dropout_uniform(seed, 5, i as u32) as f64 >= p) as u8 as f32).collect();
    assert_eq!(got, want);
    let kept = got.iter().filter(|&&v| v == 1.0).count();
    assert!((650..800).contains(&kept), "{kept} of {n} kept at p = 0.3");
}

/// Average pooling and its adjoint (padding counted), through the lowering.
#[test]
fn average_pooling_matches_the_reference() {
    use plateau::compiler::ir::PoolAttrs;
    use plateau::kernels::cubecl::prelude::*;
    use plateau::kernels::host::{download, upload};
    use plateau::kernels::lower::lower;
    let client = client();
    let attrs = PoolAttrs { kernel: [3, 3], stride: [2, 2], padding: [1, 1] };
    let mut g = Graph::new();
    let x = g.leaf(Op::Input { name: "x".into() }, DType::F32, [2, 3, 7, 6]).unwrap();
    let y = g.add(Op::AvgPool2d(attrs), &[x]).unwrap();
    let gx = g.add(Op::AvgPool2dGrad { attrs, input_hw: [7, 6] }, &[y]).unwrap();
    let data = random(2 * 3 * 7 * 6, 31);
    let mut b = Bindings::new();
    b.set("input", "x", plateau::Tensor::from_f32(vec![2, 3, 7, 6], &data).unwrap());
    let want = evaluate(&g, &b, &[y, gx]).unwrap();
    let run = |node, input: &[f32]| {
        let l = lower(&g, &[node], &|_| 0, None).unwrap();
        let n = l.output_len[0];
        let out = client.empty(n * 4);
        // SAFETY: the handles hold the stated number of f32 values.
        let (i, o) = unsafe { (ArrayArg::from_raw_parts(upload(&client, input), input.len()), ArrayArg::from_raw_parts(out.clone(), n)) };
        l.call.launch(&client, vec![i], vec![o]);
        download(&client, out, n).unwrap()
    };
    let got_y = run(y, &data);
    assert!(close(&got_y, &want[0].to_f32()), "{got_y:?}");
    let got_gx = run(gx, &want[0].to_f32());
    assert!(close(&got_gx, &want[1].to_f32()), "{got_gx:?}");
}

/// How many elementwise kernels of the SGD and SAM steps of the MLP and the CNN are vectorized,
/// lowered at their planned offsets (a deterministic figure: it changes only when the
/// lowering, the plan or the models do).
#[test]
fn elementwise_kernels_vectorize_where_sizes_allow() {
    use plateau::kernels::lower::{lower, KernelCall};
    use plateau::{compile, BaseOptimizer, ModelSpec, OptimizerSpec, Sam, TraceOptions};
    let count = |model: &ModelSpec, input: Vec<usize>, sam: bool| {
        let spec = OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: sam.then(Sam::default) };
        let o = TraceOptions { batch_size: 128, input_shape: input, ..TraceOptions::default() };
        let (_, _, c) = compile(model, &o, &spec, false, true).unwrap();
        let s = &c.schedule;
        let (mut maps, mut vectorized) = (0, 0);
        for k in &s.kernels {
            if let KernelCall::Map { prog, .. } = lower(&c.fused, &k.nodes, &|n| s.locations[&n].1, s.workspace_offset(k)).unwrap().call {
                maps += 1;
                vectorized += usize::from(prog.width == 4);
            }
        }
        (maps, vectorized)
    };
    let figures = [
        count(&ModelSpec::default(), vec![784], false),
        count(&ModelSpec::default(), vec![784], true),
        count(&ModelSpec::Cnn, vec![3, 32, 32], false),
        count(&ModelSpec::Cnn, vec![3, 32, 32], true),
    ];
    // The optimizer's arena kernels stay scalar: neither arena (269,322 and 545,098 elements)
    // is a multiple of four. Every other map runs as an epilogue: the bias and ReLU after each
    // layer in its GEMM's kernel, and the CNN's backward ReLU masks in its max-pool
    // gradients' kernels.
    assert_eq!(figures, [(1, 0), (2, 0), (1, 0), (2, 0)]);
}

/// A kernel the device cannot compile (WGSL has no infinite float literal) is an error, not
/// silently missing output.
#[test]
fn kernel_compile_failures_are_errors() {
    let client = client();
    let p = Program { views: vec![Shape(vec![8])], instrs: vec![Instr::Load(0), Instr::Const(f64::INFINITY.to_bits()), Instr::Binary(BinaryOp::Min, 0, 1)], outputs: vec![2] };
    let err = fused_map_on(&client, &p, &Shape(vec![8]), &[&random(8, 1)]).unwrap_err();
    assert!(err.contains("compil"), "{err}");
}


/// A batch uploaded from a slice must have the leaf's element count; the error names the leaf.
#[test]
fn slices_of_the_wrong_length_are_refused() {
    use plateau::runtime::device::DeviceStep;
    let o = plateau::TraceOptions { batch_size: 4, input_shape: vec![1, 6, 6], ..plateau::TraceOptions::default() };
    let spec = plateau::OptimizerSpec { base: plateau::BaseOptimizer::sgd(0.9, 0.0), sam: None };
    let (_, _, compiled) = plateau::compile(&plateau::ModelSpec::Mlp { hidden: vec![8] }, &o, &spec, false, true).unwrap();
    let mut dev = DeviceStep::new(client(), &compiled).unwrap();
    dev.set_f32("input", "x", &random(144, 3)).unwrap();
    let err = dev.set_f32("input", "x", &random(143, 3)).unwrap_err().to_string();
    assert_eq!(err, "leaf `x` expects f32[4,1,6,6], got f32[143]");
}
