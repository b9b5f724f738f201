//! Helpers shared by the integration tests: seeded random tensors, model bindings and
//! finite-difference checks on the reference interpreter.
#![allow(dead_code)]

use plateau::compiler::ir::{leaf_kind, leaf_name};
use plateau::{evaluate, Bindings, DType, Graph, NodeId, Tensor, TracedModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform values in `[lo, hi)`.
pub fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new(DType::F64, shape.to_vec(), (0..n).map(|_| rng.random_range(lo..hi)).collect()).unwrap()
}

/// Binds a traced model's parameters (seeded initialisation), state, a random batch and
/// random labels.
pub fn bind_model(model: &TracedModel, seed: u64) -> Bindings {
    let mut r = rng(seed);
    let mut b = Bindings::new();
    let dtype = model.graph.dtype(model.input);
    for p in &model.params {
        let mut v = p.init.sample(&p.name, p.shape.numel(), seed);
        // Perturb BatchNorm's ones/zeros so every parameter matters to the check.
        for x in v.iter_mut() {
            *x += r.random_range(-0.1..0.1);
        }
        b.set("param", &p.name, Tensor::new(dtype, p.shape.clone(), v).unwrap());
    }
    for s in &model.states {
        b.set("state", &s.name, Tensor::new(dtype, s.shape.clone(), s.init.sample(&s.name, s.shape.numel(), seed)).unwrap());
    }
    let xs = model.graph.shape(model.input).clone();
    let x = uniform(&mut r, &xs.0, -1.0, 1.0);
    b.set("input", "x", Tensor::new(dtype, xs, x.data).unwrap());
    let classes = model.graph.shape(model.logits).0[1] as i32;
    let n = model.graph.shape(model.labels).0[0];
    let labels: Vec<i32> = (0..n).map(|_| r.random_range(0..classes)).collect();
    b.set("input", "labels", Tensor::labels(&labels));
    b
}

fn leaf_key(g: &Graph, id: NodeId) -> (&'static str, String) {
    let op = &g.node(id).op;
    (leaf_kind(op).expect("a named leaf"), leaf_name(op).expect("a named leaf").to_string())
}

/// The scalar value of `loss` with leaf `wrt` shifted by `delta` at element `i`.
fn shifted(g: &Graph, b: &Bindings, loss: NodeId, wrt: NodeId, i: usize, delta: f64) -> f64 {
    let (kind, name) = leaf_key(g, wrt);
    let mut b = b.clone();
    let mut t = b.get(kind, &name).unwrap().clone();
    t.data[i] += delta;
    b.set(kind, &name, t);
    evaluate(g, &b, &[loss]).unwrap()[0].item()
}

/// Central differences of `loss` with respect to the chosen elements of leaf `wrt`.
pub fn finite_difference(g: &Graph, b: &Bindings, loss: NodeId, wrt: NodeId, elements: &[usize], h: f64) -> Vec<f64> {
    elements.iter().map(|&i| (shifted(g, b, loss, wrt, i, h) - shifted(g, b, loss, wrt, i, -h)) / (2.0 * h)).collect()
}

/// `|a - b| <= tol * max(1, |a|, |b|)` for every pair, with a message naming the element.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let scale = 1f64.max(a.abs()).max(b.abs());
        assert!((a - b).abs() <= tol * scale, "{what}[{i}]: autodiff {a} vs finite difference {b}");
    }
}

/// Some element indices of a tensor with `n` elements: all of them when few, else a seeded
/// sample including the first and last.
pub fn sample_indices(n: usize, max: usize, seed: u64) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut r = rng(seed);
    let mut v: Vec<usize> = (0..max - 2).map(|_| r.random_range(0..n)).collect();
    v.push(0);
    v.push(n - 1);
    v
}
