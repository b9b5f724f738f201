//! plateau: a training framework that compiles a model's whole training step ahead of time,
//! with Sharpness-Aware Minimization as a first-class optimizer.
//!
//! This facade re-exports the public API of the workspace crates:
//! [`compiler`] (IR, autodiff), [`frontend`] (the model DSL) and [`runtime`] (executors).

pub use plateau_compiler as compiler;
pub use plateau_frontend as frontend;
pub use plateau_kernels as kernels;
pub use plateau_runtime as runtime;

pub use plateau_compiler::{differentiate, hvp, DType, Graph, IrError, NodeId, Op, Shape};
pub use plateau_frontend::{trace, FrontendError, ModelSpec, TraceOptions, TracedModel, Tracer, Var};
pub use plateau_compiler::{build_eval_step, build_naive_step, build_step, compile_step, Compiled, Schedule, BaseOptimizer, OptimizerSpec, Phase, Sam, SamNorm, Step};
pub use plateau_runtime::reference::{evaluate, run, run_step, Bindings, Tensor};

/// The starting values of a step's parameters and state: the model's seeded initial
/// parameters (laid out as the step's arena, or per tensor for a naive step), zeroed
/// optimizer state and the BatchNorm running statistics' initial values.
pub fn initial_state(model: &TracedModel, step: &Step, seed: u64) -> Result<Bindings, runtime::RuntimeError> {
    let g = &step.graph;
    let mut b = Bindings::new();
    let values: std::collections::HashMap<&str, Vec<f64>> =
        model.params.iter().map(|p| (p.name.as_str(), p.init.sample(&p.name, p.shape.numel(), seed))).collect();
    for id in g.leaves("param").into_iter().chain(g.leaves("state")) {
        let op = &g.node(id).op;
        let kind = compiler::ir::leaf_kind(op).expect("invariant: param and state leaves are named");
        let name = compiler::ir::leaf_name(op).expect("invariant: param and state leaves are named");
        let ty = g.ty(id).clone();
        let data = if name == "params" && kind == "param" {
            step.arena.slots.iter().flat_map(|s| values[s.name.as_str()].iter().copied()).collect()
        } else if let Some(v) = values.get(name).filter(|_| kind == "param") {
            v.clone()
        } else if let Some(s) = model.states.iter().find(|s| s.name == name) {
            s.init.sample(&s.name, s.shape.numel(), seed)
        } else {
            vec![0.0; ty.shape.numel()]
        };
        b.set(kind, name, Tensor::new(ty.dtype, ty.shape, data)?);
    }
    Ok(b)
}

/// Traces `model`, builds its training step under `spec` (the naive per-tensor program when
/// `naive` is set) and compiles it (fusing when `rewrite` is set).
pub fn compile(model: &ModelSpec, opts: &TraceOptions, spec: &OptimizerSpec, naive: bool, rewrite: bool) -> anyhow::Result<(TracedModel, Step, Compiled)> {
    compile_with(&|o: &TraceOptions| Ok(trace(model, o)?), opts, spec, naive, rewrite)
}

/// [`compile`] for a model given as a function that traces it at any options (the m-sharpness
/// micro-batch needs a second trace).
pub fn compile_with(
    trace_at: &dyn Fn(&TraceOptions) -> anyhow::Result<TracedModel>,
    opts: &TraceOptions,
    spec: &OptimizerSpec,
    naive: bool,
    rewrite: bool,
) -> anyhow::Result<(TracedModel, Step, Compiled)> {
    let traced = trace_at(opts)?;
    let micro = match spec.sam.as_ref().and_then(|s| s.micro_batch) {
        Some(m) => Some(trace_at(&TraceOptions { batch_size: m, ..opts.clone() })?.loss_model()),
        None => None,
    };
    let lm = traced.loss_model();
    let step = if naive { build_naive_step(&lm, spec)? } else { build_step(&lm, micro.as_ref(), spec)? };
    let compiled = compile_step(&step, rewrite)?;
    Ok((traced, step, compiled))
}

pub mod checkpoint;
pub mod plot;
pub mod train;
