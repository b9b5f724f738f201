//! The step builder on the reference interpreter: SAM's algebra on a quadratic, rho = 0,
//! zero gradients, and the arena step against the naive per-tensor program.

mod common;

use common::*;
use plateau::compiler::ir::{BinaryOp, Op};
use plateau::compiler::LossModel;
use plateau::{build_naive_step, build_step, initial_state, run_step, BaseOptimizer, Bindings, DType, Graph, ModelSpec, OptimizerSpec, Sam, Step, Tensor, TraceOptions};

/// `L(w) = 0.5 * sum(c * w * w)` with `c` fed as the input `x`.
fn quadratic() -> LossModel {
    let mut g = Graph::new();
    let w = g.leaf(Op::Param { name: "w".into() }, DType::F64, [2]).unwrap();
    let c = g.leaf(Op::Input { name: "x".into() }, DType::F64, [2]).unwrap();
    let labels = g.leaf(Op::Input { name: "labels".into() }, DType::I32, [1]).unwrap();
    let ww = g.binary(BinaryOp::Mul, w, w).unwrap();
    let cww = g.binary(BinaryOp::Mul, c, ww).unwrap();
    let s = g.sum_all(cww).unwrap();
    let loss = g.scale(s, 0.5).unwrap();
    LossModel { graph: g, loss, accuracy: loss, params: vec![w], input: c, labels }
}

fn quad_bindings(step: &Step, w: [f64; 2], c: [f64; 2], lr: f64, rho: f64) -> Bindings {
    let mut b = Bindings::new();
    b.set("param", "params", Tensor::new(DType::F64, [2], w.to_vec()).unwrap());
    for id in step.graph.leaves("state") {
        let name = plateau::compiler::ir::leaf_name(&step.graph.node(id).op).unwrap().to_string();
        b.set("state", &name, Tensor::zeros(DType::F64, [2]));
    }
    b.set("input", "x", Tensor::new(DType::F64, [2], c.to_vec()).unwrap());
    b.set("input", "labels", Tensor::labels(&[0]));
    b.set("scalar", "lr", Tensor::scalar(DType::F64, lr));
    b.set("scalar", "rho", Tensor::scalar(DType::F64, rho));
    b.set("scalar", "step", Tensor::scalar(DType::F64, 0.0));
    b
}

fn sam_sgd(momentum: f64) -> OptimizerSpec {
    OptimizerSpec { base: BaseOptimizer::sgd(momentum, 0.0), sam: Some(Sam::default()) }
}

#[test]
fn sam_on_a_quadratic_matches_a_hand_computed_trajectory() {
    let step = build_step(&quadratic(), None, &sam_sgd(0.9)).unwrap();
    step.graph.verify().unwrap();
    let (c, lr, rho) = ([1.0, 4.0], 0.1, 0.5);
    let mut b = quad_bindings(&step, [3.0, 1.0], c, lr, rho);
    // Step 1 by hand: g = (3, 4), |g| = 5, e = 0.5 * (0.6, 0.8) = (0.3, 0.4);
    // g2 = (1 * 3.3, 4 * 1.4) = (3.3, 5.6); m = g2; w = (3 - 0.33, 1 - 0.56).
    let out = run_step(&step.graph, &mut b).unwrap();
    assert!((out["loss"].item() - 0.5 * (9.0 + 4.0)).abs() < 1e-12);
    assert!((out["grad_sq_norm"].item() - 25.0).abs() < 1e-12);
    let w1 = b.get("param", "params").unwrap().data.clone();
    assert!((w1[0] - 2.67).abs() < 1e-12 && (w1[1] - 0.44).abs() < 1e-12, "{w1:?}");
    // Steps 2 and 3 by the same algebra in plain Rust, with momentum 0.9.
    let (mut w, mut m) = ([2.67, 0.44], [3.3, 5.6]);
    for _ in 0..2 {
        run_step(&step.graph, &mut b).unwrap();
        let g = [c[0] * w[0], c[1] * w[1]];
        let n = (g[0] * g[0] + g[1] * g[1]).sqrt() + 1e-12;
        let g2 = [c[0] * (w[0] + rho * g[0] / n), c[1] * (w[1] + rho * g[1] / n)];
        for i in 0..2 {
            m[i] = 0.9 * m[i] + g2[i];
            w[i] -= lr * m[i];
        }
    }
    let got = b.get("param", "params").unwrap().data.clone();
    assert!((got[0] - w[0]).abs() < 1e-12 && (got[1] - w[1]).abs() < 1e-12, "{got:?} vs {w:?}");
    assert_eq!(b.get("state", "momentum").unwrap().data.len(), 2);
}

#[test]
fn a_zero_gradient_perturbs_nothing_and_gives_no_nan() {
    for adaptive in [None, Some(0.01)] {
        let spec = OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(Sam { adaptive, ..Sam::default() }) };
        let step = build_step(&quadratic(), None, &spec).unwrap();
        let mut b = quad_bindings(&step, [0.0, 0.0], [1.0, 1.0], 0.1, 0.05);
        let out = run_step(&step.graph, &mut b).unwrap();
        assert_eq!(out["grad_sq_norm"].item(), 0.0);
        assert_eq!(b.get("param", "params").unwrap().data, vec![0.0, 0.0]);
    }
}

fn mnist_like(batch: usize, input: &[usize]) -> TraceOptions {
    TraceOptions { batch_size: batch, input_shape: input.to_vec(), classes: 10, ..TraceOptions::default() }
}

/// Feeds a fixed batch and the scalars, then runs `steps` steps, returning the final
/// bindings and the losses.
fn train(step: &Step, mut b: Bindings, model: &plateau::TracedModel, steps: usize, rho: f64) -> (Bindings, Vec<f64>) {
    let data = bind_model(model, 4);
    b.set("input", "x", data.get("input", "x").unwrap().clone());
    b.set("input", "labels", data.get("input", "labels").unwrap().clone());
    b.set("scalar", "lr", Tensor::scalar(DType::F32, 0.05));
    b.set("scalar", "rho", Tensor::scalar(DType::F32, rho));
    let mut losses = Vec::new();
    for i in 0..steps {
        b.set("scalar", "step", Tensor::scalar(DType::F32, i as f64));
        losses.push(run_step(&step.graph, &mut b).unwrap()["loss"].item());
    }
    (b, losses)
}

#[test]
fn rho_zero_sam_equals_sgd_bit_for_bit() {
    let model = plateau::trace(&ModelSpec::Mlp { hidden: vec![16] }, &mnist_like(8, &[20])).unwrap();
    let lm = model.loss_model();
    let base = BaseOptimizer::sgd(0.9, 5e-4);
    let sgd = build_step(&lm, None, &OptimizerSpec { base: base.clone(), sam: None }).unwrap();
    let sam = build_step(&lm, None, &OptimizerSpec { base, sam: Some(Sam::default()) }).unwrap();
    let (a, la) = train(&sgd, initial_state(&model, &sgd, 1).unwrap(), &model, 20, 0.0);
    let (b, lb) = train(&sam, initial_state(&model, &sam, 1).unwrap(), &model, 20, 0.0);
    assert_eq!(la, lb);
    assert_eq!(a.get("param", "params").unwrap().data, b.get("param", "params").unwrap().data);
    assert!(la[19] < la[0], "the loss goes down: {la:?}");
    // With rho > 0 the trajectories differ.
    let (c, _) = train(&sam, initial_state(&model, &sam, 1).unwrap(), &model, 2, 0.05);
    assert_ne!(a.get("param", "params").unwrap().data, c.get("param", "params").unwrap().data);
}

/// The arena step and the naive per-tensor program agree after 5 steps (relative 1e-6).
fn check_against_naive(spec_name: &str, model: &plateau::TracedModel, spec: &OptimizerSpec) {
    let lm = model.loss_model();
    let arena = build_step(&lm, None, spec).unwrap();
    let naive = build_naive_step(&lm, spec).unwrap();
    arena.graph.verify().unwrap();
    naive.graph.verify().unwrap();
    let (a, la) = train(&arena, initial_state(model, &arena, 2).unwrap(), model, 5, 0.05);
    let (n, ln) = train(&naive, initial_state(model, &naive, 2).unwrap(), model, 5, 0.05);
    assert_close(&format!("{spec_name} losses"), &la, &ln, 1e-6);
    let w = &a.get("param", "params").unwrap().data;
    for slot in &arena.arena.slots {
        let got = &w[slot.offset..slot.offset + slot.shape.numel()];
        assert_close(&format!("{spec_name} {}", slot.name), got, &n.get("param", &slot.name).unwrap().data, 1e-6);
    }
}

fn specs() -> Vec<(&'static str, OptimizerSpec)> {
    vec![
        ("sgd", OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: None }),
        ("sam", sam_sgd(0.9)),
        ("asam", OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(Sam { adaptive: Some(0.01), ..Sam::default() }) }),
        ("sam-adamw", OptimizerSpec { base: BaseOptimizer::adamw(0.01), sam: Some(Sam::default()) }),
    ]
}

#[test]
fn arena_step_matches_the_naive_program_on_the_mlp() {
    let model = plateau::trace(&ModelSpec::Mlp { hidden: vec![32, 16] }, &mnist_like(8, &[1, 6, 6])).unwrap();
    for (name, spec) in specs() {
        check_against_naive(name, &model, &spec);
    }
}

#[test]
fn arena_step_matches_the_naive_program_on_the_cnn() {
    let model = plateau::trace(&ModelSpec::Cnn, &mnist_like(4, &[1, 8, 8])).unwrap();
    for (name, spec) in specs() {
        check_against_naive(name, &model, &spec);
    }
}


#[test]
fn batchnorm_running_statistics_come_from_the_clean_pass_only() {
    let o = TraceOptions { batch_size: 4, input_shape: vec![3, 8, 8], classes: 10, ..TraceOptions::default() };
    let model = plateau::trace(&ModelSpec::Wrn16 { k: 1 }, &o).unwrap();
    let lm = model.loss_model();
    let base = BaseOptimizer::sgd(0.9, 5e-4);
    let sgd = build_step(&lm, None, &OptimizerSpec { base: base.clone(), sam: None }).unwrap();
    let sam = build_step(&lm, None, &OptimizerSpec { base, sam: Some(Sam::default()) }).unwrap();
    let (a, _) = train(&sgd, initial_state(&model, &sgd, 5).unwrap(), &model, 1, 0.5);
    let (b, _) = train(&sam, initial_state(&model, &sam, 5).unwrap(), &model, 1, 0.5);
    let mut checked = 0;
    for s in &model.states {
        let (x, y) = (a.get("state", &s.name).unwrap(), b.get("state", &s.name).unwrap());
        assert_eq!(x.data, y.data, "{} after one step", s.name);
        checked += 1;
    }
    assert_eq!(checked, 2 * 13, "running mean and var of WRN-16-1's 13 BatchNorms");
    // The parameters did move differently: the second pass saw other weights.
    assert_ne!(a.get("param", "params").unwrap().data, b.get("param", "params").unwrap().data);
}
