//! Autodiff against finite differences in f64: every differentiable op alone, whole models,
//! and Hessian-vector products against differences of gradients.

mod common;

use common::*;
use plateau::compiler::ir::{BinaryOp, CmpOp, Conv2dAttrs, Op, PoolAttrs, ReduceOp, UnaryOp};
use plateau::frontend::layers::{Layer, Linear};
use plateau::frontend::{softmax_cross_entropy, BasicBlock};
use plateau::{differentiate, evaluate, hvp, Bindings, DType, Graph, IrError, ModelSpec, NodeId, Shape, Tensor, TraceOptions, Tracer};

type Build = fn(&mut Graph, &[NodeId]) -> Result<NodeId, IrError>;

/// Checks the gradient of `sum(op(p...) * r)` with respect to every operand `p` against
/// central differences. `inputs` gives each operand's shape and sampling range.
fn check_op(name: &str, inputs: &[(&[usize], f64, f64)], build: Build) {
    let mut g = Graph::new();
    let mut r = rng(7);
    let mut b = Bindings::new();
    let mut params = Vec::new();
    for (i, (dims, lo, hi)) in inputs.iter().enumerate() {
        let n = format!("p{i}");
        params.push(g.leaf(Op::Param { name: n.clone() }, DType::F64, dims.to_vec()).unwrap());
        b.set("param", &n, uniform(&mut r, dims, *lo, *hi));
    }
    let out = build(&mut g, &params).unwrap_or_else(|e| panic!("{name}: {e}"));
    let os = g.shape(out).clone();
    let weights = g.leaf(Op::Input { name: "r".into() }, DType::F64, os.clone()).unwrap();
    b.set("input", "r", uniform(&mut r, &os.0, -1.0, 1.0));
    let prod = g.binary(BinaryOp::Mul, out, weights).unwrap();
    let loss = g.sum_all(prod).unwrap();
    let grads = differentiate(&mut g, loss, &params).unwrap();
    g.verify().unwrap();
    let values = evaluate(&g, &b, &grads).unwrap();
    for (k, (&p, gv)) in params.iter().zip(&values).enumerate() {
        let idx = sample_indices(gv.data.len(), 40, k as u64);
        let fd = finite_difference(&g, &b, loss, p, &idx, 1e-6);
        let ad: Vec<f64> = idx.iter().map(|&i| gv.data[i]).collect();
        assert_close(&format!("{name} d/dp{k}"), &ad, &fd, 1e-6);
    }
}

fn un(op: UnaryOp) -> impl Fn(&mut Graph, &[NodeId]) -> Result<NodeId, IrError> {
    move |g, p| g.unary(op, p[0])
}

#[test]
fn unary_ops_match_finite_differences() {
    check_op("neg", &[(&[3, 4], -1.0, 1.0)], |g, p| un(UnaryOp::Neg)(g, p));
    check_op("exp", &[(&[3, 4], -1.0, 1.0)], |g, p| un(UnaryOp::Exp)(g, p));
    check_op("log", &[(&[3, 4], 0.5, 2.0)], |g, p| un(UnaryOp::Log)(g, p));
    check_op("sqrt", &[(&[3, 4], 0.5, 2.0)], |g, p| un(UnaryOp::Sqrt)(g, p));
    check_op("recip", &[(&[3, 4], 0.5, 2.0)], |g, p| un(UnaryOp::Recip)(g, p));
    check_op("abs", &[(&[3, 4], 0.1, 1.0)], |g, p| un(UnaryOp::Abs)(g, p));
    check_op("abs-negative", &[(&[3, 4], -1.0, -0.1)], |g, p| un(UnaryOp::Abs)(g, p));
    check_op("sign", &[(&[3, 4], 0.1, 1.0)], |g, p| un(UnaryOp::Sign)(g, p));
}

#[test]
fn binary_ops_match_finite_differences() {
    let two = [(&[2usize, 5][..], -1.0, 1.0), (&[2, 5][..], -1.0, 1.0)];
    check_op("add", &two, |g, p| g.binary(BinaryOp::Add, p[0], p[1]));
    check_op("sub", &two, |g, p| g.binary(BinaryOp::Sub, p[0], p[1]));
    check_op("mul", &two, |g, p| g.binary(BinaryOp::Mul, p[0], p[1]));
    check_op("max", &two, |g, p| g.binary(BinaryOp::Max, p[0], p[1]));
    check_op("min", &two, |g, p| g.binary(BinaryOp::Min, p[0], p[1]));
    check_op("div", &[(&[2, 5], -1.0, 1.0), (&[2, 5], 0.5, 2.0)], |g, p| g.binary(BinaryOp::Div, p[0], p[1]));
    check_op("select", &two, |g, p| {
        let c = g.compare(CmpOp::Gt, p[0], p[1])?;
        g.select(c, p[0], p[1])
    });
}

#[test]
fn reductions_match_finite_differences() {
    let x = [(&[2usize, 3, 4][..], -1.0, 1.0)];
    check_op("sum-1", &x, |g, p| g.reduce(ReduceOp::Sum, p[0], &[1]));
    check_op("sum-0,2", &x, |g, p| g.reduce(ReduceOp::Sum, p[0], &[0, 2]));
    check_op("max-2", &x, |g, p| g.reduce(ReduceOp::Max, p[0], &[2]));
    check_op("max-all", &x, |g, p| g.reduce(ReduceOp::Max, p[0], &[0, 1, 2]));
}

#[test]
fn layout_ops_match_finite_differences() {
    let x = [(&[2usize, 3, 4][..], -1.0, 1.0)];
    check_op("reshape", &x, |g, p| g.reshape(p[0], [6, 4]));
    check_op("permute", &x, |g, p| g.permute(p[0], &[2, 0, 1]));
    check_op("broadcast-rank", &[(&[3, 1], -1.0, 1.0)], |g, p| g.broadcast(p[0], &Shape(vec![2, 3, 4])));
    check_op("slice", &x, |g, p| g.add(Op::Slice { start: vec![0, 1, 1], end: vec![2, 3, 4] }, &[p[0]]));
    check_op("pad", &x, |g, p| g.add(Op::Pad { lo: vec![0, 1, 2], hi: vec![1, 0, 1] }, &[p[0]]));
    check_op("concat", &[(&[2, 3], -1.0, 1.0), (&[2, 2], -1.0, 1.0)], |g, p| {
        g.add(Op::Concat { axis: 1, count: 2 }, &[p[0], p[1]])
    });
}

#[test]
fn matmul_matches_finite_differences() {
    check_op("matmul", &[(&[3, 5], -1.0, 1.0), (&[5, 2], -1.0, 1.0)], |g, p| g.add(Op::MatMul { ta: false, tb: false }, &[p[0], p[1]]));
    check_op("matmul-ta", &[(&[5, 3], -1.0, 1.0), (&[5, 2], -1.0, 1.0)], |g, p| g.add(Op::MatMul { ta: true, tb: false }, &[p[0], p[1]]));
    check_op("matmul-tb", &[(&[3, 5], -1.0, 1.0), (&[2, 5], -1.0, 1.0)], |g, p| g.add(Op::MatMul { ta: false, tb: true }, &[p[0], p[1]]));
    check_op("matmul-ta-tb", &[(&[5, 3], -1.0, 1.0), (&[2, 5], -1.0, 1.0)], |g, p| g.add(Op::MatMul { ta: true, tb: true }, &[p[0], p[1]]));
}

const CONV: Conv2dAttrs = Conv2dAttrs { stride: [2, 1], padding: [1, 1] };
const POOL: PoolAttrs = PoolAttrs { kernel: [3, 2], stride: [2, 2], padding: [1, 0] };

#[test]
fn convolution_and_its_gradients_match_finite_differences() {
    // x [2,3,5,6], w [4,3,3,2] -> y [2,4,3,7]
    check_op("conv2d", &[(&[2, 3, 5, 6], -1.0, 1.0), (&[4, 3, 3, 2], -1.0, 1.0)], |g, p| g.add(Op::Conv2d(CONV), &[p[0], p[1]]));
    check_op("conv2d_grad_input", &[(&[2, 4, 3, 7], -1.0, 1.0), (&[4, 3, 3, 2], -1.0, 1.0)], |g, p| {
        g.add(Op::Conv2dGradInput { attrs: CONV, input_hw: [5, 6] }, &[p[0], p[1]])
    });
    check_op("conv2d_grad_weight", &[(&[2, 3, 5, 6], -1.0, 1.0), (&[2, 4, 3, 7], -1.0, 1.0)], |g, p| {
        g.add(Op::Conv2dGradWeight { attrs: CONV, kernel: [3, 2] }, &[p[0], p[1]])
    });
}

#[test]
fn pooling_and_its_gradients_match_finite_differences() {
    // x [2,2,5,6] -> y [2,2,3,3]
    let x = [(&[2usize, 2, 5, 6][..], -1.0, 1.0)];
    check_op("max_pool2d", &x, |g, p| g.add(Op::MaxPool2d(POOL), &[p[0]]));
    check_op("avg_pool2d", &x, |g, p| g.add(Op::AvgPool2d(POOL), &[p[0]]));
    check_op("avg_pool2d_grad", &[(&[2, 2, 3, 3], -1.0, 1.0)], |g, p| {
        g.add(Op::AvgPool2dGrad { attrs: POOL, input_hw: [5, 6] }, &[p[0]])
    });
    check_op("max_pool2d_grad", &[(&[2, 2, 5, 6], -1.0, 1.0), (&[2, 2, 3, 3], -1.0, 1.0)], |g, p| {
        g.add(Op::MaxPool2dGrad(POOL), &[p[0], p[1]])
    });
    check_op("max_pool2d_gather", &[(&[2, 2, 5, 6], -1.0, 1.0), (&[2, 2, 5, 6], -1.0, 1.0)], |g, p| {
        g.add(Op::MaxPool2dGather(POOL), &[p[0], p[1]])
    });
}

/// Gradient of a traced model's loss against finite differences, per parameter, on a seeded
/// sample of elements.
fn check_model_gradient(what: &str, model: &mut plateau::TracedModel, per_param: usize) {
    let grads = model.differentiate().unwrap();
    model.graph.verify().unwrap();
    let b = bind_model(model, 11);
    let values = evaluate(&model.graph, &b, &grads).unwrap();
    for (k, (p, gv)) in model.params.iter().zip(&values).enumerate() {
        let idx = sample_indices(gv.data.len(), per_param, k as u64);
        let fd = finite_difference(&model.graph, &b, model.loss, p.node, &idx, 1e-6);
        let ad: Vec<f64> = idx.iter().map(|&i| gv.data[i]).collect();
        assert_close(&format!("{what} {}", p.name), &ad, &fd, 1e-6);
    }
}

fn f64_opts(batch: usize, input: &[usize], classes: usize) -> TraceOptions {
    TraceOptions { batch_size: batch, input_shape: input.to_vec(), classes, dtype: DType::F64, training: true, label_smoothing: 0.1, seed: 0 }
}

#[test]
fn mlp_loss_gradient_matches_finite_differences() {
    let mut m = plateau::trace(&ModelSpec::Mlp { hidden: vec![7, 5] }, &f64_opts(4, &[2, 3], 3)).unwrap();
    check_model_gradient("mlp", &mut m, 12);
}

#[test]
fn cnn_loss_gradient_matches_finite_differences() {
    let mut m = plateau::trace(&ModelSpec::Cnn, &f64_opts(2, &[1, 8, 8], 3)).unwrap();
    check_model_gradient("cnn", &mut m, 8);
}

/// One ResNet block with a projection shortcut, BatchNorm in training mode, then a linear
/// head and cross-entropy.
fn resnet_block_model() -> plateau::TracedModel {
    let mut tr = Tracer::new(DType::F64, true);
    let x = tr.input("x", [3, 3, 6, 6]).unwrap();
    let labels = tr.labels("labels", 3).unwrap();
    let block = BasicBlock::new(&mut tr, "layer2.0", 3, 4, 2).unwrap();
    let fc = Linear::new(&mut tr, "fc", 4, 3, true).unwrap();
    let y = block.forward(&mut tr, x).unwrap();
    let y = plateau::frontend::layers::GlobalAvgPool.forward(&mut tr, y).unwrap();
    let logits = fc.forward(&mut tr, y).unwrap();
    let loss = softmax_cross_entropy(&mut tr, logits, labels, 0.0).unwrap();
    let accuracy = plateau::frontend::accuracy(&mut tr, logits, labels).unwrap();
    tr.output("loss", loss).unwrap();
    let (graph, params, states) = tr.finish();
    plateau::TracedModel { graph, input: x.0, labels: labels.0, logits: logits.0, loss: loss.0, accuracy: accuracy.0, params, states }
}

#[test]
fn resnet_block_loss_gradient_matches_finite_differences() {
    let mut m = resnet_block_model();
    let names: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
    assert!(names.contains(&"layer2.0.downsample.0.weight") && names.contains(&"layer2.0.bn2.bias"), "{names:?}");
    check_model_gradient("resnet block", &mut m, 6);
}

/// `H v` from the double-backward graph against `(grad(w + h v) - grad(w - h v)) / 2h`.
fn check_hvp(what: &str, mut model: plateau::TracedModel) {
    let wrt: Vec<NodeId> = model.params.iter().map(|p| p.node).collect();
    let mut r = rng(5);
    let mut b = bind_model(&model, 3);
    let mut dirs = Vec::new();
    for p in &model.params {
        let name = format!("v:{}", p.name);
        dirs.push(model.graph.leaf(Op::Input { name: name.clone() }, DType::F64, p.shape.clone()).unwrap());
        b.set("input", &name, uniform(&mut r, &p.shape.0, -1.0, 1.0));
    }
    let hv = hvp(&mut model.graph, model.loss, &wrt, &dirs).unwrap();
    let grads = differentiate(&mut model.graph, model.loss, &wrt).unwrap();
    model.graph.verify().unwrap();
    let got = evaluate(&model.graph, &b, &hv).unwrap();
    let h = 1e-5;
    let at = |sign: f64| {
        let mut bb = b.clone();
        for p in &model.params {
            let v = b.get("input", &format!("v:{}", p.name)).unwrap();
            let mut w = b.get("param", &p.name).unwrap().clone();
            for (x, d) in w.data.iter_mut().zip(&v.data) {
                *x += sign * h * d;
            }
            bb.set("param", &p.name, w);
        }
        evaluate(&model.graph, &bb, &grads).unwrap()
    };
    let (plus, minus) = (at(1.0), at(-1.0));
    for (k, p) in model.params.iter().enumerate() {
        let fd: Vec<f64> = plus[k].data.iter().zip(&minus[k].data).map(|(a, c)| (a - c) / (2.0 * h)).collect();
        assert_close(&format!("{what} Hv {}", p.name), &got[k].data, &fd, 1e-5);
    }
    // The check must be able to fail: H v is not zero.
    assert!(got.iter().any(|t| t.data.iter().any(|x| x.abs() > 1e-6)), "{what}: H v vanished");
}

#[test]
fn mlp_hessian_vector_product_matches_finite_differences() {
    check_hvp("mlp", plateau::trace(&ModelSpec::Mlp { hidden: vec![6] }, &f64_opts(4, &[5], 3)).unwrap());
}

#[test]
fn cnn_hessian_vector_product_matches_finite_differences() {
    check_hvp("cnn", plateau::trace(&ModelSpec::Cnn, &f64_opts(2, &[1, 4, 4], 3)).unwrap());
}

#[test]
fn resnet_block_hessian_vector_product_matches_finite_differences() {
    check_hvp("resnet block", resnet_block_model());
}

#[test]
fn f32_graphs_compute_in_f32() {
    // 1 + 2^-30 is 1 in f32 but not in f64.
    let mut g = Graph::new();
    let x = g.leaf(Op::Input { name: "x".into() }, DType::F32, [1]).unwrap();
    let y = g.leaf(Op::Input { name: "y".into() }, DType::F32, [1]).unwrap();
    let s = g.binary(BinaryOp::Add, x, y).unwrap();
    let mut b = Bindings::new();
    b.set("input", "x", Tensor::new(DType::F32, [1], vec![1.0]).unwrap());
    b.set("input", "y", Tensor::new(DType::F32, [1], vec![2f64.powi(-30)]).unwrap());
    assert_eq!(evaluate(&g, &b, &[s]).unwrap()[0].data, vec![1.0]);
}

/// `stop_gradient(p)` is `p`'s value, differentiated as a constant: the gradient of
/// `sum(stop_gradient(p) * p)` is `p`, where finite differences (which see the value) give 2p.
#[test]
fn stop_gradient_passes_the_value_and_no_gradient() {
    let mut g = Graph::new();
    let p = g.leaf(Op::Param { name: "p".into() }, DType::F64, vec![3, 4]).unwrap();
    let sg = g.add(Op::StopGradient, &[p]).unwrap();
    let prod = g.binary(BinaryOp::Mul, sg, p).unwrap();
    let loss = g.sum_all(prod).unwrap();
    let grads = differentiate(&mut g, loss, &[p]).unwrap();
    let mut b = Bindings::new();
    let pv = uniform(&mut rng(3), &[3, 4], -1.0, 1.0);
    b.set("param", "p", pv.clone());
    let values = evaluate(&g, &b, &[grads[0], sg]).unwrap();
    assert_close("d/dp", &values[0].data, &pv.data, 0.0);
    assert_close("value", &values[1].data, &pv.data, 0.0);
    let fd = finite_difference(&g, &b, loss, p, &[0, 5], 1e-6);
    assert_close("finite differences", &fd, &[2.0 * pv.data[0], 2.0 * pv.data[5]], 1e-6);
}
