//! One minimal program per rewrite rule: the rule fires, and the fused result is what the
//! rule promises.

use plateau_compiler::egraph::{fuse, rule_table, DEFAULT_LIMITS};
use plateau_compiler::ir::{BinaryOp, Op, OutputKind, UnaryOp};
use plateau_compiler::step::{Arena, BaseOptimizer, OptimizerSpec, Step};
use plateau_compiler::{DType, Graph, NodeId, Shape};
use std::collections::BTreeMap;

fn step_of(g: Graph) -> Step {
    Step { graph: g, arena: Arena::default(), phases: BTreeMap::new(), spec: OptimizerSpec { base: BaseOptimizer::sgd(0.0, 0.0), sam: None } }
}

fn input(g: &mut Graph, name: &str, dims: &[usize]) -> NodeId {
    g.leaf(Op::Input { name: name.into() }, DType::F32, dims.to_vec()).unwrap()
}

/// Fuses a graph whose single output is `out`; returns the fused text and the rule hits.
fn fused(mut g: Graph, out: NodeId) -> (String, BTreeMap<&'static str, usize>) {
    g.add_output("y", out, OutputKind::Value).unwrap();
    let f = fuse(&step_of(g), &DEFAULT_LIMITS, true).unwrap();
    assert!(!f.report.fallback);
    f.graph.verify().unwrap();
    (f.graph.to_text(), f.report.rule_hits)
}

fn kernels(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.contains(" = input ") && !l.starts_with("out ") && !l.contains(" = const ") && !l.contains(" = reshape") && !l.contains(" = param ")).collect()
}

#[test]
fn every_rule_has_a_name_and_its_algebra() {
    let table = rule_table();
    assert!(table.len() >= 8);
    for (name, algebra) in table {
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{name}");
        assert!(!algebra.is_empty());
    }
}

#[test]
fn map_into_map_fuses_a_chain_into_one_kernel() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 5]);
    let a = g.unary(UnaryOp::Exp, x).unwrap();
    let b = g.unary(UnaryOp::Neg, a).unwrap();
    let c = g.unary(UnaryOp::Sqrt, b).unwrap();
    let (text, hits) = fused(g, c);
    assert!(hits["map-into-map"] > 0);
    assert_eq!(kernels(&text), ["%1 = fused{g1.0: sqrt(neg(exp($0))) | [4,5]} %0 : f32[4,5]"]);
}

#[test]
fn map_into_reduce_makes_a_prologue() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 5]);
    let sq = g.binary(BinaryOp::Mul, x, x).unwrap();
    let s = g.reduce(plateau_compiler::ir::ReduceOp::Sum, sq, &[1]).unwrap();
    let (text, hits) = fused(g, s);
    assert!(hits["map-into-reduce"] > 0);
    assert_eq!(kernels(&text), ["%1 = fused_reduce_sum{axes=1 over f32[4,5]: mul($0, $0) | [4,5]} %0 : f32[4,1]"]);
}

#[test]
fn broadcast_and_constants_become_loads_and_immediates() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 5]);
    let b = input(&mut g, "b", &[5]);
    let bb = g.broadcast(b, &Shape(vec![4, 5])).unwrap();
    let y = g.binary(BinaryOp::Add, x, bb).unwrap();
    let y = g.scale(y, 2.0).unwrap();
    let (text, hits) = fused(g, y);
    assert!(hits["broadcast-into-load"] > 0 && hits["const-into-program"] > 0, "{hits:?}");
    assert_eq!(kernels(&text), ["%2 = fused{g1.0: mul(add($0, $1), 2.0) | [4,5] [5]} %0, %1 : f32[4,5]"]);
}

#[test]
fn reshapes_are_read_through() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[20]);
    let r = g.reshape(x, [4, 5]).unwrap();
    let y = g.unary(UnaryOp::Exp, r).unwrap();
    let (text, hits) = fused(g, y);
    assert!(hits["reshape-into-load"] > 0);
    assert_eq!(kernels(&text), ["%1 = fused{g1.0: exp($0) | [4,5]} %0 : f32[4,5]"]);
}

#[test]
fn transposes_become_matmul_flags_and_cancel() {
    let mut g = Graph::new();
    let a = input(&mut g, "a", &[3, 4]);
    let b = input(&mut g, "b", &[5, 4]);
    let bt = g.permute(b, &[1, 0]).unwrap();
    let m = g.add(Op::MatMul { ta: false, tb: false }, &[a, bt]).unwrap();
    let mt = g.permute(m, &[1, 0]).unwrap();
    let back = g.permute(mt, &[1, 0]).unwrap();
    let (text, hits) = fused(g, back);
    assert!(hits["matmul-absorbs-transpose"] > 0 && hits["permute-permute-cancel"] > 0, "{hits:?}");
    assert_eq!(kernels(&text), ["%2 = matmul{tb} %0, %1 : f32[3,5]"]);
    let mut g = Graph::new();
    let a = input(&mut g, "a", &[3, 4]);
    let b = input(&mut g, "b", &[4, 5]);
    let m = g.add(Op::MatMul { ta: false, tb: false }, &[a, b]).unwrap();
    let mt = g.permute(m, &[1, 0]).unwrap();
    let (text, hits) = fused(g, mt);
    assert!(hits["transpose-of-matmul"] > 0);
    assert_eq!(kernels(&text), ["%2 = matmul{ta,tb} %1, %0 : f32[5,3]"]);
}

#[test]
fn the_restore_cancels() {
    let mut g = Graph::new();
    let w = input(&mut g, "w", &[6]);
    let e = input(&mut g, "e", &[6]);
    let adv = g.binary(BinaryOp::Add, w, e).unwrap();
    let restored = g.binary(BinaryOp::Sub, adv, e).unwrap();
    let (text, hits) = fused(g, restored);
    assert_eq!(hits["restore-cancels"], 1);
    assert!(kernels(&text).is_empty(), "{text}");
    assert!(text.ends_with("out y = %0\n"), "{text}");
}

#[test]
fn sibling_outputs_share_one_kernel() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8]);
    let a = g.unary(UnaryOp::Exp, x).unwrap();
    let b = g.unary(UnaryOp::Neg, x).unwrap();
    g.add_output("a", a, OutputKind::Value).unwrap();
    let (text, hits) = fused(g, b);
    assert_eq!(hits["sibling-outputs"], 1);
    // Both outputs belong to kernel group g1.
    assert_eq!(kernels(&text), ["%1 = fused{g1.0: exp($0) | [8]} %0 : f32[8]", "%2 = fused{g1.1: neg($0) | [8]} %0 : f32[8]"]);
}

#[test]
fn a_scalar_computed_from_constants_is_inlined_through_a_reshape() {
    // The backward's seed: the loss's cotangent 1.0 times the mean's -1/N, reshaped to
    // [1,1] and broadcast. No kernel computes it: each user computes it in-kernel.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 10]);
    let one = g.full(1.0, DType::F32, &Shape::scalar()).unwrap();
    let seed = g.scale(one, -0.125).unwrap();
    let r = g.reshape(seed, [1, 1]).unwrap();
    let b = g.broadcast(r, &Shape(vec![8, 10])).unwrap();
    let y = g.binary(BinaryOp::Mul, b, x).unwrap();
    let s = g.reduce(plateau_compiler::ir::ReduceOp::Sum, y, &[1]).unwrap();
    let z = g.binary(BinaryOp::Add, b, x).unwrap();
    g.add_output("s", s, OutputKind::Value).unwrap();
    let (text, _) = fused(g, z);
    assert_eq!(
        kernels(&text),
        [
            "%1 = fused_reduce_sum{axes=1 over f32[8,10]: mul(mul(1.0, -0.125), $0) | [8,10]} %0 : f32[8,1]",
            "%2 = fused{g1.0: add(mul(1.0, -0.125), $0) | [8,10]} %0 : f32[8,10]",
        ]
    );
}

/// A mean over every element, scaled after its reduction (as a mean loss is written).
fn scalar_mean(scale: f64) -> (String, BTreeMap<&'static str, usize>) {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 10]);
    let sq = g.binary(BinaryOp::Mul, x, x).unwrap();
    let s = g.reduce(plateau_compiler::ir::ReduceOp::Sum, sq, &[0, 1]).unwrap();
    let s = g.reshape(s, []).unwrap();
    let m = g.scale(s, scale).unwrap();
    fused(g, m)
}

#[test]
fn a_scalar_mean_scales_inside_its_reduction_when_that_is_exact() {
    let (text, hits) = scalar_mean(0.125);
    assert!(hits["scale-into-reduce"] > 0, "{hits:?}");
    assert_eq!(kernels(&text), ["%1 = fused_reduce_sum{axes=0,1 over f32[8,10]: mul(mul($0, $0), 0.125) | [8,10]} %0 : f32[1,1]"]);
    // 1/10 is not a power of two: scaling each term would round differently, so the scale
    // applies to the sum, as the sum's epilogue (the same kernel, as it stores the sum).
    let (text, hits) = scalar_mean(0.1);
    assert!(!hits.contains_key("scale-into-reduce"), "{hits:?}");
    assert!(hits["epilogue"] > 0, "{hits:?}");
    assert_eq!(
        kernels(&text),
        ["%1 = fused_reduce_sum{axes=0,1 over f32[8,10]: mul($0, $0) | [8,10]} %0 : f32[1,1]", "%2 = epilogue{mul($0, 0.1) | []} %1 : f32[]"]
    );
}

#[test]
fn a_stop_gradient_costs_no_kernel() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 5]);
    let m = g.reduce(plateau_compiler::ir::ReduceOp::Max, x, &[1]).unwrap();
    let m = g.add(Op::StopGradient, &[m]).unwrap();
    let mb = g.broadcast(m, &Shape(vec![4, 5])).unwrap();
    let z = g.binary(BinaryOp::Sub, x, mb).unwrap();
    let (text, _) = fused(g, z);
    assert_eq!(
        kernels(&text),
        ["%1 = fused_reduce_max{axes=1 over f32[4,5]: $0 | [4,5]} %0 : f32[4,1]", "%2 = fused{g1.0: sub($0, $1) | [4,5] [4,1]} %0, %1 : f32[4,5]"]
    );
}

#[test]
fn a_sum_and_the_map_it_sums_share_one_kernel() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 5]);
    let b = input(&mut g, "b", &[5]);
    let bb = g.broadcast(b, &Shape(vec![4, 5])).unwrap();
    let y = g.binary(BinaryOp::Mul, x, bb).unwrap();
    let s = g.reduce(plateau_compiler::ir::ReduceOp::Sum, y, &[0]).unwrap();
    g.add_output("s", s, OutputKind::Value).unwrap();
    let (text, hits) = fused(g, y);
    assert!(hits["sum-with-map"] > 0, "{hits:?}");
    // One kernel, k1: the map and the sum of the same program.
    assert_eq!(
        kernels(&text),
        [
            "%2 = fused{g1.0: mul($0, $1) | [4,5] [5]} %0, %1 : f32[4,5]",
            "%3 = fused_reduce_sum{g1 axes=0 over f32[4,5]: mul($0, $1) | [4,5] [5]} %0, %1 : f32[1,5]",
        ]
    );
}

/// A BatchNorm's backward in small: sums over one space of the same two tensors share a
/// kernel; a sum that reads one of them (through its mean) runs after it, in a kernel of its own.
#[test]
fn sums_over_the_same_tensors_share_one_kernel() {
    use plateau_compiler::ir::ReduceOp::Sum;
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 4, 3, 3]);
    let gy = input(&mut g, "gy", &[8, 4, 3, 3]);
    let sum_gy = g.reduce(Sum, gy, &[0, 2, 3]).unwrap();
    let xgy = g.binary(BinaryOp::Mul, x, gy).unwrap();
    let sum_xgy = g.reduce(Sum, xgy, &[0, 2, 3]).unwrap();
    // Depends on the first sum: sum((gy - mean(gy)) * x).
    let m = g.broadcast(sum_gy, &Shape(vec![8, 4, 3, 3])).unwrap();
    let centered = g.binary(BinaryOp::Sub, gy, m).unwrap();
    let cx = g.binary(BinaryOp::Mul, centered, x).unwrap();
    let third = g.reduce(Sum, cx, &[0, 2, 3]).unwrap();
    g.add_output("sum_gy", sum_gy, OutputKind::Value).unwrap();
    g.add_output("sum_xgy", sum_xgy, OutputKind::Value).unwrap();
    let (text, hits) = fused(g, third);
    assert_eq!(hits.get("sibling-sums"), Some(&1), "{hits:?}");
    assert_eq!(
        kernels(&text),
        [
            "%2 = fused_reduce_sum{g1 axes=0,2,3 over f32[8,4,3,3]: $0 | [8,4,3,3]} %1 : f32[1,4,1,1]",
            "%3 = fused_reduce_sum{g1 axes=0,2,3 over f32[8,4,3,3]: mul($0, $1) | [8,4,3,3] [8,4,3,3]} %0, %1 : f32[1,4,1,1]",
            "%4 = fused_reduce_sum{axes=0,2,3 over f32[8,4,3,3]: mul(sub($0, $1), $2) | [8,4,3,3] [1,4,1,1] [8,4,3,3]} %1, %2, %0 : f32[1,4,1,1]",
        ]
    );
    // Over a space larger than `SMALL_SUM_SPACE`, sums of tensors they do not share keep their
    // kernels.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 64, 16, 16]);
    let gy = input(&mut g, "gy", &[8, 64, 16, 16]);
    let sum_gy = g.reduce(Sum, gy, &[0, 2, 3]).unwrap();
    let xx = g.binary(BinaryOp::Mul, x, x).unwrap();
    let sum_xx = g.reduce(Sum, xx, &[0, 2, 3]).unwrap();
    g.add_output("sum_gy", sum_gy, OutputKind::Value).unwrap();
    let (text, hits) = fused(g, sum_xx);
    assert_eq!(hits.get("sibling-sums"), None, "{hits:?}");
    assert_eq!(kernels(&text).len(), 2, "{text}");
}

/// A layer's matmul, then its bias and ReLU.
fn layer(g: &mut Graph) -> (NodeId, NodeId) {
    let x = input(g, "x", &[8, 16]);
    let w = input(g, "w", &[16, 32]);
    let b = input(g, "b", &[32]);
    let mm = g.add(Op::MatMul { ta: false, tb: false }, &[x, w]).unwrap();
    let bb = g.broadcast(b, &Shape(vec![8, 32])).unwrap();
    let pre = g.binary(BinaryOp::Add, mm, bb).unwrap();
    let zero = g.full_like(0.0, pre).unwrap();
    (mm, g.binary(BinaryOp::Max, pre, zero).unwrap())
}

#[test]
fn a_layers_bias_and_relu_are_its_gemms_epilogue() {
    let mut g = Graph::new();
    let (_, y) = layer(&mut g);
    let (text, hits) = fused(g.clone(), y);
    assert!(hits["epilogue"] > 0, "{hits:?}");
    assert_eq!(kernels(&text), ["%3 = matmul %0, %1 : f32[8,32]", "%4 = epilogue{max(add($0, $1), 0.0) | [8,32] [32]} %3, %2 : f32[8,32]"]);
    // One kernel, which stores the epilogue's output alone: nothing else reads the matmul's.
    g.add_output("y", y, OutputKind::Value).unwrap();
    let c = plateau_compiler::schedule::compile_step(&step_of(g), true).unwrap();
    assert_eq!(c.schedule.launches, 1);
    let k = &c.schedule.kernels[0];
    assert_eq!((k.name.as_str(), k.inputs.len(), k.outputs.len()), ("matmul", 3, 1), "{k:?}");
    assert_eq!(k.bytes, 4 * (8 * 16 + 16 * 32 + 32 + 8 * 32));
}

#[test]
fn a_gemm_whose_output_is_read_elsewhere_stores_it_too() {
    let mut g = Graph::new();
    let (mm, y) = layer(&mut g);
    let s = g.reduce(plateau_compiler::ir::ReduceOp::Sum, mm, &[0, 1]).unwrap();
    g.add_output("s", s, OutputKind::Value).unwrap();
    g.add_output("y", y, OutputKind::Value).unwrap();
    let c = plateau_compiler::schedule::compile_step(&step_of(g), true).unwrap();
    // The matmul with its epilogue (two outputs), then the sum reading the matmul's output.
    assert_eq!(c.schedule.launches, 2);
    assert_eq!(c.schedule.kernels[0].outputs.len(), 2, "{:?}", c.schedule.kernels[0]);
}

#[test]
fn a_map_of_statistics_of_its_own_gemm_is_no_epilogue() {
    // y = mm - mean(mm): the mean needs the whole GEMM first (as BatchNorm's does).
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 16]);
    let w = input(&mut g, "w", &[16, 32]);
    let mm = g.add(Op::MatMul { ta: false, tb: false }, &[x, w]).unwrap();
    let s = g.reduce(plateau_compiler::ir::ReduceOp::Sum, mm, &[0]).unwrap();
    let sb = g.broadcast(s, &Shape(vec![8, 32])).unwrap();
    let y = g.binary(BinaryOp::Sub, mm, sb).unwrap();
    let (_, hits) = fused(g, y);
    assert_eq!(hits.get("epilogue"), None, "{hits:?}");
}

#[test]
fn an_epilogue_runs_where_its_gemm_is() {
    use plateau_compiler::ir::{Instr, Program};
    use plateau_compiler::TensorType;
    let relu = |views: Vec<Shape>| Program {
        views,
        instrs: vec![Instr::Load(0), Instr::Load(1), Instr::Binary(BinaryOp::Add, 0, 1), Instr::Const(0f64.to_bits()), Instr::Binary(BinaryOp::Max, 2, 3)],
        outputs: vec![4],
    };
    let ty = TensorType { dtype: DType::F32, shape: Shape(vec![8, 32]) };
    // Its other operands come before the GEMM, which runs it.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 16]);
    let w = input(&mut g, "w", &[16, 32]);
    let mm = g.add(Op::MatMul { ta: false, tb: false }, &[x, w]).unwrap();
    let b = input(&mut g, "b", &[32]);
    let e = g.add(Op::Epilogue { program: relu(vec![Shape(vec![8, 32]), Shape(vec![32])]), ty: ty.clone() }, &[mm, b]).unwrap();
    g.add_output("y", e, OutputKind::Value).unwrap();
    let err = g.verify().unwrap_err().to_string();
    assert!(err.contains("which does not come before %2"), "{err}");
    // Only a GEMM or a max-pool gradient runs one.
    let mut g = Graph::new();
    let b = input(&mut g, "b", &[32]);
    let x = input(&mut g, "x", &[8, 32]);
    let y = g.unary(UnaryOp::Exp, x).unwrap();
    let e = g.add(Op::Epilogue { program: relu(vec![Shape(vec![8, 32]), Shape(vec![32])]), ty }, &[y, b]).unwrap();
    g.add_output("y", e, OutputKind::Value).unwrap();
    let err = g.verify().unwrap_err().to_string();
    assert!(err.contains("whose `exp` takes none"), "{err}");
}

#[test]
fn an_operand_moves_first_with_its_loads() {
    use plateau_compiler::ir::{Instr, Program};
    // $0 - $1 * $2, with operand 2 moved first: the same expression over the reordered operands.
    let p = Program {
        views: vec![Shape(vec![2]), Shape(vec![3, 2]), Shape(vec![1])],
        instrs: vec![Instr::Load(0), Instr::Load(1), Instr::Load(2), Instr::Binary(BinaryOp::Mul, 1, 2), Instr::Binary(BinaryOp::Sub, 0, 3)],
        outputs: vec![4],
    };
    let q = p.with_operand_first(2);
    assert_eq!(q.views, [Shape(vec![1]), Shape(vec![2]), Shape(vec![3, 2])]);
    assert_eq!(q.expr(0), "sub($1, mul($2, $0))");
    assert_eq!(p.with_operand_first(0), p);
}

#[test]
fn a_map_reading_its_gemm_second_is_an_epilogue_too() {
    // relu(bias + mm): the GEMM's output becomes the epilogue's operand 0.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 16]);
    let w = input(&mut g, "w", &[16, 32]);
    let b = input(&mut g, "b", &[32]);
    let mm = g.add(Op::MatMul { ta: false, tb: false }, &[x, w]).unwrap();
    let bb = g.broadcast(b, &Shape(vec![8, 32])).unwrap();
    let pre = g.binary(BinaryOp::Add, bb, mm).unwrap();
    let zero = g.full_like(0.0, pre).unwrap();
    let y = g.binary(BinaryOp::Max, pre, zero).unwrap();
    let (text, hits) = fused(g, y);
    assert!(hits["epilogue"] > 0, "{hits:?}");
    assert_eq!(kernels(&text), ["%3 = matmul %0, %1 : f32[8,32]", "%4 = epilogue{max(add($1, $0), 0.0) | [8,32] [32]} %3, %2 : f32[8,32]"]);
}

/// BatchNorm's backward in miniature: a sum `s2` of a combination that reads the result of
/// another sum `s1` over the same tensor cannot share its kernel, but by linearity it is
/// `s1 * exp(s1) - 8 s1`, which the map reading it computes in passing: two kernels, not three.
#[test]
fn a_sum_of_a_combination_is_a_combination_of_sums() {
    use plateau_compiler::ir::ReduceOp;
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 4]);
    let s1 = g.reduce(ReduceOp::Sum, x, &[0]).unwrap();
    let k = g.unary(UnaryOp::Exp, s1).unwrap();
    let kb = g.broadcast(k, &Shape(vec![8, 4])).unwrap();
    let s1b = g.broadcast(s1, &Shape(vec![8, 4])).unwrap();
    let xk = g.binary(BinaryOp::Mul, x, kb).unwrap();
    let t = g.binary(BinaryOp::Sub, xk, s1b).unwrap();
    let s2 = g.reduce(ReduceOp::Sum, t, &[0]).unwrap();
    let s2b = g.broadcast(s2, &Shape(vec![8, 4])).unwrap();
    let y = g.binary(BinaryOp::Mul, x, s2b).unwrap();
    let (text, hits) = fused(g, y);
    assert!(hits["sum-is-linear"] >= 3, "{hits:?}");
    assert_eq!(kernels(&text), ["%1 = fused_reduce_sum{axes=0 over f32[8,4]: $0 | [8,4]} %0 : f32[1,4]", "%2 = fused{g1.0: mul($0, sub(mul($1, exp($1)), mul($1, 8.0))) | [8,4] [1,4]} %0, %1 : f32[8,4]"]);
}

/// A sum that reads a broadcast through a reshape is no sum of a broadcast: `x` of `[2, 1]`
/// broadcast to `[2, 3]` and summed as `[3, 2, 1]` over its first axis adds different
/// elements of `x` (`[2 x0 + x1, x0 + 2 x1]`), not `3 x`: the broadcast stays a kernel, the
/// sum another.
#[test]
fn a_broadcast_read_through_a_reshape_is_summed_as_it_is() {
    use plateau_compiler::ir::ReduceOp;
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[2, 1]);
    let b = g.broadcast(x, &Shape(vec![2, 3])).unwrap();
    let r = g.reshape(b, Shape(vec![3, 2, 1])).unwrap();
    let s = g.reduce(ReduceOp::Sum, r, &[0]).unwrap();
    let (text, _) = fused(g, s);
    assert!(!text.contains("3.0"), "{text}");
    assert_eq!(kernels(&text).len(), 2, "{text}");
}

/// One-hot labels are a comparison with the class coordinate, computed where the loss reads
/// them: the sum of `x` at each row's label is one kernel, not a one-hot kernel and a sum.
#[test]
fn one_hot_labels_are_computed_where_they_are_read() {
    use plateau_compiler::ir::ReduceOp;
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[4, 3]);
    let y = g.leaf(Op::Input { name: "labels".into() }, DType::I32, vec![4]).unwrap();
    let h = g.add(Op::OneHot { classes: 3 }, &[y]).unwrap();
    let zero = g.full_like(0.0, x).unwrap();
    let picked = g.select(h, x, zero).unwrap();
    let s = g.reduce(ReduceOp::Sum, picked, &[0, 1]).unwrap();
    let (text, hits) = fused(g, s);
    assert_eq!(hits["one-hot-as-map"], 1, "{hits:?}");
    assert_eq!(kernels(&text), ["%2 = fused_reduce_sum{axes=0,1 over f32[4,3]: select(eq($0, coord1), $1, 0.0) | [4,1] [4,3]} %1, %0 : f32[1,1]"]);
}
