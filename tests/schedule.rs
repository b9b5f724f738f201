//! The compiled schedule: kernel counts asserted, fused against naive execution, snapshots.

mod common;

use common::*;
use plateau::{compile, initial_state, run_step, BaseOptimizer, Bindings, DType, ModelSpec, OptimizerSpec, Phase, Sam, Tensor, TraceOptions};

fn opts(batch: usize, input: &[usize]) -> TraceOptions {
    TraceOptions { batch_size: batch, input_shape: input.to_vec(), classes: 10, ..TraceOptions::default() }
}

fn sgd() -> OptimizerSpec {
    OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: None }
}

fn sam(adaptive: Option<f64>) -> OptimizerSpec {
    OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(Sam { adaptive, ..Sam::default() }) }
}

/// Compiles `spec` for `model`, checks the fused program against the naive per-tensor
/// program on the reference interpreter over 5 steps, and returns the schedule.
fn check_fused_against_naive(name: &str, model: &ModelSpec, o: &TraceOptions, spec: &OptimizerSpec) -> (plateau::Schedule, String) {
    let (traced, step, compiled) = compile(model, o, spec, false, true).unwrap();
    assert!(!compiled.report.fallback, "{name}: the rewriter fell back");
    let (_, naive, _) = compile(model, o, spec, true, false).unwrap();
    let data = bind_model(&traced, 4);
    let run = |graph: &plateau::Graph, mut b: Bindings| {
        b.set("input", "x", data.get("input", "x").unwrap().clone());
        b.set("input", "labels", data.get("input", "labels").unwrap().clone());
        b.set("scalar", "lr", Tensor::scalar(DType::F32, 0.05));
        b.set("scalar", "rho", Tensor::scalar(DType::F32, 0.05));
        let mut losses = Vec::new();
        for i in 0..5 {
            b.set("scalar", "step", Tensor::scalar(DType::F32, i as f64));
            losses.push(run_step(graph, &mut b).unwrap()["loss"].item());
        }
        (b, losses)
    };
    let (fb, fl) = run(&compiled.fused, initial_state(&traced, &step, 3).unwrap());
    let (nb, nl) = run(&naive.graph, initial_state(&traced, &naive, 3).unwrap());
    assert_close(&format!("{name} losses"), &fl, &nl, 1e-6);
    let w = &fb.get("param", "params").unwrap().data;
    for slot in &step.arena.slots {
        let got = &w[slot.offset..slot.offset + slot.shape.numel()];
        assert_close(&format!("{name} {}", slot.name), got, &nb.get("param", &slot.name).unwrap().data, 1e-6);
    }
    compiled.fused.verify().unwrap();
    (compiled.schedule, compiled.fused.to_text())
}

fn mlp() -> (ModelSpec, TraceOptions) {
    (ModelSpec::Mlp { hidden: vec![32, 16] }, opts(8, &[1, 6, 6]))
}

fn cnn() -> (ModelSpec, TraceOptions) {
    (ModelSpec::Cnn, opts(4, &[1, 8, 8]))
}

/// `norm_split`: whether the arena is long enough for SAM's squared norm to run as a split sum
/// (whose slices the perturbation adds up: one launch either way; see
/// `plateau::compiler::schedule::reduce`).
fn check_model(name: &str, (model, o): (ModelSpec, TraceOptions), norm_split: bool) {
    let (sgd_s, sgd_ir) = check_fused_against_naive(&format!("{name} sgd"), &model, &o, &sgd());
    let (sam_s, sam_ir) = check_fused_against_naive(&format!("{name} sam"), &model, &o, &sam(None));
    let (asam_s, asam_ir) = check_fused_against_naive(&format!("{name} asam"), &model, &o, &sam(Some(0.01)));
    assert_eq!(sgd_s.optimizer_launches, 1, "{name}: SGD with momentum is one kernel");
    let optimizer_kernels = |s: &plateau::compiler::schedule::Schedule| s.kernels.iter().filter(|k| k.phase.is_optimizer()).count();
    assert_eq!(optimizer_kernels(&sam_s), 3, "{name}: norm, perturbation, descent");
    assert_eq!(optimizer_kernels(&asam_s), 3, "{name}: ASAM's norm, perturbation, descent");
    assert_eq!(sam_s.optimizer_launches, 3, "{name}: norm, perturbation, descent");
    assert_eq!(asam_s.optimizer_launches, 3, "{name}: ASAM's norm, perturbation, descent");
    for s in [&sam_s, &asam_s] {
        let norm = s.phase(Phase::Ascent)[0];
        assert_eq!((norm.split > 1, norm.summed_by), (norm_split, norm_split.then_some(norm.id + 1)), "{name}: the norm's slices added up by the perturbation");
    }
    // The ascent costs SAM no more launches than the descent it runs once fewer than two SGD
    // steps (and the loss value its second pass does not compute).
    assert!(sam_s.launches <= 2 * sgd_s.launches, "{name}: {} vs 2 x {}", sam_s.launches, sgd_s.launches);
    // One parameter-sized buffer above SGD with momentum, plus SAM's two 4-byte scalars
    // (rho and the squared norm the perturbation reads), each placed on a 16-byte boundary.
    let param_bytes = 4 * sgd_s.param_count as u64;
    let align = plateau::compiler::schedule::POOL_ALIGN;
    for (variant, s) in [("sam", &sam_s), ("asam", &asam_s)] {
        let extra = s.peak_memory_bytes - sgd_s.peak_memory_bytes;
        assert!(extra <= param_bytes.next_multiple_of(align) + 2 * align, "{name} {variant}: {extra} bytes above SGD, parameters take {param_bytes}");
    }
    insta::assert_snapshot!(format!("{name}_sgd_schedule"), sgd_s.to_string());
    insta::assert_snapshot!(format!("{name}_sam_schedule"), sam_s.to_string());
    insta::assert_snapshot!(format!("{name}_asam_schedule"), asam_s.to_string());
    insta::assert_snapshot!(format!("{name}_sgd_fused_ir"), sgd_ir);
    insta::assert_snapshot!(format!("{name}_sam_fused_ir"), sam_ir);
    insta::assert_snapshot!(format!("{name}_asam_fused_ir"), asam_ir);
}

#[test]
fn mlp_fused_steps_match_the_naive_program_and_meet_the_launch_targets() {
    // 1,882 parameters: a norm of one cube.
    check_model("mlp", mlp(), false);
}

#[test]
fn cnn_fused_steps_match_the_naive_program_and_meet_the_launch_targets() {
    // 53,002 parameters: a norm of 12 slices.
    check_model("cnn", cnn(), true);
}

/// BatchNorm in training (its backward's sums rewritten by linearity, its running statistics
/// updated as their sums are stored) and residual blocks: WRN-16-1 on 3x8x8 inputs, fused
/// against naive, SGD and SAM.
#[test]
fn wrn_fused_steps_match_the_naive_program() {
    let (model, o) = (ModelSpec::Wrn16 { k: 1 }, opts(4, &[3, 8, 8]));
    for (name, spec) in [("wrn sgd", sgd()), ("wrn sam", sam(None))] {
        check_fused_against_naive(name, &model, &o, &spec);
    }
}

#[test]
fn the_sam_ascent_is_one_norm_reduction_and_one_perturbation_over_the_arena() {
    let (model, o) = (ModelSpec::default(), opts(128, &[784]));
    let (_, step, c) = compile(&model, &o, &sam(None), false, true).unwrap();
    let ascent = c.schedule.phase(Phase::Ascent);
    assert_eq!(ascent.len(), 2);
    assert_eq!(ascent[0].name, "fused_reduce_sum");
    assert_eq!(ascent[0].body[0], format!("fused_reduce_sum{{axes=0 over f32[{}]: mul($0, $0) | [{}]}}", step.arena.len, step.arena.len));
    // One output over 269,322 terms: 65 slices of about 4,144, which the perturbation adds up
    // (one launch for the norm, not two).
    assert_eq!((ascent[0].split, ascent[0].launches(), ascent[0].summed_by, ascent[1].sums_slices_of), (65, 1, Some(ascent[1].id), Some(ascent[0].id)));
    assert_eq!(ascent[1].name, "fused");
    assert_eq!(ascent[1].body, ["add($0, mul(div($1, add(sqrt($2), 1e-12)), $3))"], "w + rho * g / (sqrt(s) + eps), scale in-kernel");
    let descent = c.schedule.phase(Phase::Descent);
    assert_eq!(descent.len(), 1);
    assert_eq!(descent[0].outputs.len(), 2, "new parameters and momentum from one kernel");
    // The perturbed weights take the first gradient's buffer: no restore, no extra copy.
    assert_eq!(ascent[1].outputs[0], ascent[1].inputs[3]);
}

#[test]
fn the_rewriter_removes_the_naive_restore() {
    let (model, o) = mlp();
    let (_, _, plain) = compile(&model, &o, &sam(None), true, false).unwrap();
    let (_, _, fused) = compile(&model, &o, &sam(None), true, true).unwrap();
    assert_eq!(fused.report.rule_hits.get("restore-cancels"), Some(&6), "one restore per parameter tensor");
    assert!(fused.schedule.launches < plain.schedule.launches / 2, "{} vs {}", fused.schedule.launches, plain.schedule.launches);
}

#[test]
fn what_the_rewriter_finds_for_the_other_sam_variants() {
    let (model, o) = mlp();
    let variants = [
        ("sam-adamw", OptimizerSpec { base: BaseOptimizer::adamw(0.01), sam: Some(Sam::default()) }, 3),
        ("sam-linf", OptimizerSpec { base: BaseOptimizer::sgd(0.9, 0.0), sam: Some(Sam { norm: plateau::SamNorm::Linf, ..Sam::default() }) }, 3),
        // Two per micro-batch and the descent, less one: the first micro-batch's norm runs in
        // the kernel of the metric that averages the norms (its epilogue).
        ("m-sharpness 4x2", OptimizerSpec { base: BaseOptimizer::sgd(0.9, 0.0), sam: Some(Sam { micro_batch: Some(2), ..Sam::default() }) }, 8),
        ("two ascent steps", OptimizerSpec { base: BaseOptimizer::sgd(0.9, 0.0), sam: Some(Sam { ascent_steps: 2, ..Sam::default() }) }, 6),
        ("second order", OptimizerSpec { base: BaseOptimizer::sgd(0.9, 0.0), sam: Some(Sam { second_order: true, ..Sam::default() }) }, 4),
    ];
    let mut found = Vec::new();
    for (name, spec, _) in &variants {
        let (_, _, c) = compile(&model, &o, spec, false, true).unwrap();
        found.push((name.to_string(), c.schedule.optimizer_launches, c.schedule.launches));
    }
    let expected: Vec<(String, usize)> = variants.iter().map(|(n, _, k)| (n.to_string(), *k)).collect();
    assert_eq!(found.iter().map(|(n, k, _)| (n.clone(), *k)).collect::<Vec<_>>(), expected, "{found:?}");
}

#[test]
fn the_rewriter_saturates_or_stops_at_a_named_limit_on_resnet18() {
    let (_, _, c) = compile(&ModelSpec::ResNet18, &TraceOptions { batch_size: 8, input_shape: vec![3, 32, 32], ..TraceOptions::default() }, &sam(None), false, true).unwrap();
    assert!(!c.report.fallback);
    assert!(c.report.iterations <= plateau::compiler::egraph::DEFAULT_LIMITS.iterations);
    // The norm (a split sum whose slices the perturbation adds up), the perturbation, the
    // descent.
    assert_eq!(c.schedule.optimizer_launches, 3);
    // Every kernel binds at most MAX_PROGRAM_OPERANDS buffers (devices limit storage
    // bindings per kernel); sibling outputs that would exceed it are split into several
    // multi-output kernels rather than left one kernel each.
    // (Counted as lowered: two reductions in turn bind what they both read twice.)
    let s = &c.schedule;
    let bindings = |k: &plateau::compiler::schedule::Kernel| {
        let l = plateau::kernels::lower::lower_scheduled(&c.fused, s, k, &|n| s.locations[&n].1, s.workspace_offset(k)).unwrap();
        l.inputs.len() + l.outputs.len()
    };
    let widest = s.kernels.iter().map(bindings).max().unwrap();
    assert!(widest <= plateau::compiler::egraph::MAX_PROGRAM_OPERANDS, "{widest} buffers");
    let widest_chain = s.kernels.iter().filter(|k| k.chain.is_some()).map(bindings).max().unwrap();
    assert!(widest_chain <= plateau::compiler::egraph::MAX_PROGRAM_OPERANDS, "{widest_chain} buffers");
    // Sums over one space that read the same tensors share a kernel: in each of the 20
    // BatchNorms' backward in each of SAM's two passes, the scale and shift gradients and a
    // sum of the input gradient (with the next BatchNorm's where a residual joins them), and
    // the loss and the accuracy; over a small space (at batch 8, the last stage's 8 x 512 x 4
    // x 4) also sums of different tensors (the row sums of the exponentials and of the
    // labels; the statistics of a block's two branches): 116 sums in 38 kernels. The mean's
    // gradient, a combination of those sums and the forward's by linearity (`sum-is-linear`),
    // is computed by the input gradient's map, with no sum of its own (126 sums in 44 kernels
    // and 393 kernels before). The row sums of the exponentials and of the labels run in the
    // row maximum's kernel (a chain, below): 114 sums in 37 kernels besides.
    let sum = |n: &plateau::NodeId| matches!(c.fused.node(*n).op, plateau::compiler::ir::Op::FusedReduce { .. });
    let shared = c.schedule.kernels.iter().filter(|k| k.chain.is_none() && k.nodes.len() > 1 && k.nodes.iter().all(sum)).map(|k| k.nodes.len()).collect::<Vec<_>>();
    assert_eq!((shared.len(), shared.iter().sum::<usize>()), (37, 114), "{shared:?}");
    // Each BatchNorm's running mean and variance are updated as their sums are stored (the
    // sums' epilogues), in the clean pass only: 40 maps that take no launch.
    let of_sums = c.fused.node_ids().filter(|&n| matches!(c.fused.node(n).op, plateau::compiler::ir::Op::Epilogue { .. }) && sum(&c.fused.operands(n)[0])).count();
    assert_eq!(of_sums, 40);
    // Two reductions in turn share a kernel (`reduce::chains`): each BatchNorm's mean and
    // variance in each forward pass (38: not at w + e the last stage's two branches, whose
    // means share one kernel and variances another), and the logits' row maximum and the row
    // sums after it in each pass (2).
    let chains: Vec<_> = c.schedule.kernels.iter().filter(|k| k.chain.is_some()).collect();
    let maxima = chains.iter().filter(|k| matches!(c.fused.node(k.nodes[0]).op, plateau::compiler::ir::Op::FusedReduce { op: plateau::compiler::ir::ReduceOp::Max, .. })).count();
    assert_eq!((chains.len(), maxima), (40, 2));
    assert!(chains.iter().all(|k| k.name == "fused_reduce_chain" && k.split == 1));
    assert_eq!(c.schedule.kernels.len(), 328 - 40);
    // 60 of them are split GEMMs (two launches each): at batch 8 the deeper layers'
    // convolutions and input gradients have few output tiles (8 x 4 x 4 positions) and
    // long sums over channels and taps, and the first layers' weight gradients sum over
    // 8 x 32 x 32 positions; 30 in each of SAM's two passes. The strided convolutions'
    // input gradients run by phases, never split (2 per pass would be otherwise). One more is
    // the ascent's squared norm of the arena, a split sum whose slices the perturbation adds up
    // (one launch).
    let split = c.schedule.kernels.iter().filter(|k| k.split > 1).count();
    assert_eq!(split, 61);
    assert_eq!(c.schedule.launches, 328 - 40 + split - 1);
}

/// ResNet-18 at batch 128: SAM's peak is at most one parameter-sized buffer above SGD's with
/// the pool laid out as one (as CUDA holds it). In 128 MiB pages (a wgpu device binding no
/// more) the page ends cost each step some of a page: SAM's two arena-sized buffers and the
/// 4 MiB-granular activations live at its peak leave 2.6 MB unused, SGD's 1.1 MB.
#[test]
fn resnet18_sam_peak_is_one_parameter_buffer_above_sgd() {
    let o = TraceOptions { batch_size: 128, input_shape: vec![3, 32, 32], ..TraceOptions::default() };
    let (_, _, sgd_c) = compile(&ModelSpec::ResNet18, &o, &sgd(), false, true).unwrap();
    let (_, _, sam_c) = compile(&ModelSpec::ResNet18, &o, &sam(None), false, true).unwrap();
    let param_bytes = 4 * sgd_c.schedule.param_count as u64;
    let (sgd_peak, sam_peak) = (sgd_c.schedule.peak_memory_bytes, sam_c.schedule.peak_memory_bytes);
    assert_eq!((sgd_peak, sam_peak, param_bytes), (739_979_696, 784_675_572, 44_695_848));
    // As on the MLP and the CNN: plus SAM's two scalars, each on a 16-byte boundary.
    let align = plateau::compiler::schedule::POOL_ALIGN;
    assert!(sam_peak - sgd_peak <= param_bytes.next_multiple_of(align) + 2 * align, "{} bytes above SGD", sam_peak - sgd_peak);
    // The pool's peak is the most bytes live at once (each buffer rounded up to 16 bytes),
    // less the 16-byte padding of the highest: no placement does better.
    for c in [&sgd_c, &sam_c] {
        let s = &c.schedule;
        let mut live = vec![0u64; s.kernels.len()];
        let mut persistent = 0;
        for b in &s.buffers {
            match b.kind {
                plateau::compiler::schedule::BufferKind::Temp { from, to, .. } => live[from..=to].iter_mut().for_each(|l| *l += b.bytes.next_multiple_of(16)),
                plateau::compiler::schedule::BufferKind::Persistent(_) => persistent += b.bytes,
            }
        }
        assert!(s.peak_memory_bytes <= persistent + live.iter().max().unwrap(), "{} above the bound", s.peak_memory_bytes - persistent - live.iter().max().unwrap());
    }
    let page = plateau::compiler::schedule::POOL_PAGE;
    let (sgd_p, sam_p) = (sgd_c.paged(page).schedule, sam_c.paged(page).schedule);
    assert_eq!((sgd_p.page_bytes, sgd_p.launches, sam_p.launches), (Some(page), sgd_c.schedule.launches, sam_c.schedule.launches));
    assert_eq!((sgd_p.peak_memory_bytes - sgd_peak, sam_p.peak_memory_bytes - sam_peak), (1_140_924, 2_582_396));
}

#[test]
fn fused_sam_with_rho_zero_equals_fused_sgd_bit_for_bit() {
    let (model, o) = mlp();
    let (traced, sgd_step, sgd_c) = compile(&model, &o, &sgd(), false, true).unwrap();
    let (_, sam_step, sam_c) = compile(&model, &o, &sam(None), false, true).unwrap();
    let data = bind_model(&traced, 9);
    let run = |graph: &plateau::Graph, mut b: Bindings| {
        b.set("input", "x", data.get("input", "x").unwrap().clone());
        b.set("input", "labels", data.get("input", "labels").unwrap().clone());
        b.set("scalar", "lr", Tensor::scalar(DType::F32, 0.1));
        b.set("scalar", "rho", Tensor::scalar(DType::F32, 0.0));
        for i in 0..20 {
            b.set("scalar", "step", Tensor::scalar(DType::F32, i as f64));
            run_step(graph, &mut b).unwrap();
        }
        b.get("param", "params").unwrap().data.clone()
    };
    let a = run(&sgd_c.fused, initial_state(&traced, &sgd_step, 1).unwrap());
    let b = run(&sam_c.fused, initial_state(&traced, &sam_step, 1).unwrap());
    assert_eq!(a, b);
}
