//! The `plateau` command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use plateau::{trace, BaseOptimizer, DType, ModelSpec, OptimizerSpec, Sam, SamNorm, TraceOptions};
use std::time::Instant;
use std::path::{Path, PathBuf};

mod bench_cli;
mod train_cli;

#[derive(Parser)]
#[command(name = "plateau", version, about = "Compile training steps ahead of time; SAM as a first-class optimizer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace a model and print its forward + backward IR in the text form.
    #[command(allow_negative_numbers = true)]
    Trace(TraceArgs),
    /// Compile a whole training step and print its fused kernel schedule.
    #[command(allow_negative_numbers = true)]
    Compile(CompileArgs),
    /// Compile a step and run it on a device for a few steps on a fixed random batch,
    /// printing the loss: a check that a backend works.
    #[command(allow_negative_numbers = true)]
    Run(RunArgs),
    /// Train a model on a dataset, with progress, metrics, checkpoints and resume.
    #[command(allow_negative_numbers = true)]
    Train(train_cli::TrainArgs),
    /// Train the same model with SGD and with SAM (same seed, data, budget), print both side
    /// by side and plot train loss and test accuracy per epoch.
    #[command(allow_negative_numbers = true)]
    Compare(train_cli::CompareArgs),
    /// Evaluate saved weights or a checkpoint on a dataset's test split.
    #[command(allow_negative_numbers = true)]
    Eval(train_cli::EvalArgs),
    /// Time SGD, SAM and naive (unfused) SAM steps of one model on one device, interleaved.
    #[command(allow_negative_numbers = true)]
    Bench(bench_cli::BenchArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum OptimizerName {
    Sgd,
    Adamw,
    Sam,
    SamAdamw,
}

#[derive(Clone, Copy, ValueEnum)]
enum PNorm {
    #[value(name = "2")]
    Two,
    Inf,
}

#[derive(clap::Args)]
struct CompileArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    opt: OptimizerArgs,
    /// Compile the naive per-tensor program (as eager frameworks run SAM) instead.
    #[arg(long)]
    naive: bool,
    /// Skip the rewriter: one kernel per op.
    #[arg(long)]
    no_rewrite: bool,
    /// Print one JSON object instead of the schedule text.
    #[arg(long)]
    json: bool,
    /// Write the fused program as Graphviz DOT to this file.
    #[arg(long)]
    dot: Option<PathBuf>,
    /// Write the CUDA C++ of every kernel of the schedule into this directory (no GPU needed).
    #[arg(long)]
    emit_cuda: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    F64,
}

/// The flags that choose the optimizer.
#[derive(Clone, clap::Args)]
pub(crate) struct OptimizerArgs {
    #[arg(long, value_enum, default_value = "sam")]
    optimizer: OptimizerName,
    /// SGD's momentum (default 0.9).
    #[arg(long)]
    momentum: Option<f64>,
    /// SGD's Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// SAM radius (default 0.05; a runtime scalar: changing it never recompiles).
    #[arg(long)]
    rho: Option<f64>,
    /// ASAM: adaptive perturbation `rho * T_w^2 g / ||T_w g||`.
    #[arg(long)]
    adaptive: bool,
    /// ASAM's eta (default 0.01).
    #[arg(long)]
    eta: Option<f64>,
    /// m-sharpness: examples per micro-batch.
    #[arg(long)]
    m: Option<usize>,
    /// Dual norm of the SAM ball.
    #[arg(long, value_enum, default_value = "2")]
    p: PNorm,
    /// Ascent steps (rho/k each, projected onto the ball).
    #[arg(long, default_value_t = 1)]
    ascent_steps: usize,
    /// Differentiate through the perturbation (Hessian-vector products).
    #[arg(long)]
    second_order: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    opt: OptimizerArgs,
    /// Where the step runs: reference, wgpu or cuda.
    #[arg(long, default_value = "wgpu")]
    device: String,
    /// Steps to run on one fixed, seeded random batch.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl OptimizerArgs {
    /// The same settings with SAM on top of the base `--optimizer` names (`sgd` -> `sam`,
    /// `adamw` -> `sam-adamw`): `compare`'s SAM run.
    /// SAM's radius, as given or the default.
    pub(crate) fn rho(&self) -> f64 {
        self.rho.unwrap_or(0.05)
    }

    pub(crate) fn with_sam(&self) -> OptimizerArgs {
        let optimizer = match self.optimizer {
            OptimizerName::Sgd | OptimizerName::Sam => OptimizerName::Sam,
            OptimizerName::Adamw | OptimizerName::SamAdamw => OptimizerName::SamAdamw,
        };
        OptimizerArgs { optimizer, ..self.clone() }
    }
}

/// The flags that choose and shape a model.
#[derive(clap::Args)]
struct ModelArgs {
    /// mlp, cnn, resnet18 or wrn16-K.
    #[arg(long, default_value = "mlp")]
    model: String,
    /// Hidden layer widths of the MLP (default 256,256).
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    hidden: Option<Vec<usize>>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Shape of one example, C,H,W (default 1,28,28; 3,32,32 for resnet18 and wrn16-K).
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    input: Option<Vec<usize>>,
    #[arg(long, default_value_t = 10)]
    classes: usize,
}

#[derive(clap::Args)]
struct TraceArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
    /// Trace in evaluation mode (BatchNorm running statistics, no dropout).
    #[arg(long)]
    eval: bool,
    /// Print only the forward pass.
    #[arg(long)]
    forward_only: bool,
    /// Also write the graph as Graphviz DOT to this file.
    #[arg(long)]
    dot: Option<PathBuf>,
}

fn main() {
    // Output into a closed pipe (`plateau compile | head`) ends the process quietly, as it
    // does other command-line tools, rather than as a panic in `println!`.
    // SAFETY: restores SIGPIPE's default action, before any other thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Trace(args) => trace_cmd(args),
        Command::Compile(args) => compile_cmd(args),
        Command::Run(args) => run_cmd(args),
        Command::Train(args) => train_cli::train_cmd(args),
        Command::Compare(args) => train_cli::compare_cmd(args),
        Command::Eval(args) => train_cli::eval_cmd(args),
        Command::Bench(args) => bench_cli::bench_cmd(args),
    }
}

/// The example shape a model takes unless `--input` says otherwise: 3x32x32 for the
/// ResNets, 1x28x28 for the MLP and the CNN.
pub(crate) fn default_input(spec: &ModelSpec) -> Vec<usize> {
    match spec {
        ModelSpec::ResNet18 | ModelSpec::Wrn16 { .. } => vec![3, 32, 32],
        _ => vec![1, 28, 28],
    }
}

/// The zoo model `--model` names, with `--hidden` as the MLP's layer widths (an error for
/// another model).
pub(crate) fn model_spec(name: &str, hidden: Option<&[usize]>) -> Result<ModelSpec> {
    let mut spec: ModelSpec = name.parse().context("--model")?;
    match (&mut spec, hidden) {
        (ModelSpec::Mlp { hidden: h }, Some(hidden)) => {
            if hidden.is_empty() || hidden.contains(&0) {
                bail!("--hidden: layer widths must be positive, got {hidden:?}");
            }
            *h = hidden.to_vec();
        }
        (_, Some(_)) => bail!("--hidden sets the MLP's layer widths; --model {name} has none"),
        (_, None) => {}
    }
    Ok(spec)
}

/// The model and trace options the common flags describe.
fn model_flags(args: &ModelArgs) -> Result<(ModelSpec, TraceOptions)> {
    let ModelArgs { model, hidden, batch_size, input, classes } = args;
    let (batch_size, classes) = (*batch_size, *classes);
    let spec = model_spec(model, hidden.as_deref())?;
    if batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let input_shape = input.clone().unwrap_or_else(|| default_input(&spec));
    check_sizes(&spec, batch_size, "--batch-size", &input_shape, classes)?;
    let opts = TraceOptions { batch_size, input_shape, classes, ..TraceOptions::default() };
    Ok((spec, opts))
}

/// Fails now, before any work, when `flag`'s file could not be written at the end: its
/// folder is missing or not writable, or the path is a folder. A probe file is created in
/// the folder and removed. Where the path is a link, that is the folder of the file it leads
/// to (which is replaced, the link kept); a device or pipe (`/dev/null`, `/dev/stdout`) must
/// open for writing, and is written in place (nothing is truncated by the check).
pub(crate) fn check_writable(flag: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{flag} {}: is a folder; give a file name", path.display());
    }
    if path.as_os_str().to_string_lossy().ends_with(std::path::MAIN_SEPARATOR) {
        bail!("{flag} {}: names a folder; give a file name", path.display());
    }
    let (target, replace) = plateau::checkpoint::write_target(path).with_context(|| format!("{flag} {}", path.display()))?;
    if !replace {
        return std::fs::OpenOptions::new().append(true).open(path).map(|_| ()).with_context(|| format!("{flag}: cannot write {}", path.display()));
    }
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if dir.exists() && !dir.is_dir() {
        bail!("{flag} {}: {} is a file, not a folder", path.display(), dir.display());
    }
    if !dir.is_dir() {
        bail!("{flag} {}: the folder {} does not exist", path.display(), dir.display());
    }
    let name = target.file_name().with_context(|| format!("{flag} {}: not a file name", path.display()))?;
    // A probe beside it, under a name nothing else holds (never through a link); one a killed
    // run of the same process id left is removed first.
    let probe = dir.join(format!(".{}.probe-{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&probe);
    std::fs::OpenOptions::new().write(true).create_new(true).open(&probe).with_context(|| format!("{flag} {}: cannot write in {}", path.display(), dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The file `path` names as an output, for telling two outputs apart: the absolute path of
/// the file it replaces (`None` for a device or pipe, written in place, which two outputs may
/// share, or a path that cannot be resolved, which `check_writable` refuses).
pub(crate) fn output_file(path: &Path) -> Option<PathBuf> {
    let (target, replace) = plateau::checkpoint::write_target(path).ok()?;
    if !replace {
        return None;
    }
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(std::fs::canonicalize(dir).ok()?.join(target.file_name()?))
}

/// Refuses two output flags naming the same file (one would overwrite the other's).
pub(crate) fn distinct_outputs(outputs: &[(&str, Option<&Path>)]) -> Result<()> {
    let files: Vec<(&str, &Path, PathBuf)> = outputs.iter().filter_map(|&(flag, p)| Some((flag, p?, output_file(p?)?))).collect();
    for (i, a) in files.iter().enumerate() {
        if let Some(b) = files[i + 1..].iter().find(|b| b.2 == a.2) {
            bail!("{} {} and {} {}: the same file; give each its own", a.0, a.1.display(), b.0, b.1.display());
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically ([`plateau::checkpoint::write_bytes_atomic`]: a link's
/// file is replaced, a device or pipe such as `/dev/stdout` written in place).
fn write_file_atomic(flag: &str, path: &Path, bytes: &[u8]) -> Result<()> {
    plateau::checkpoint::write_bytes_atomic(path, bytes).with_context(|| format!("{flag}: cannot write {}", path.display()))
}

/// The largest tensor a model may hold, in elements (device buffers are indexed in 32 bits).
const MAX_ELEMENTS: usize = 1 << 31;

/// `--lr`: a finite non-negative number an f32 holds (the rate is a device scalar).
pub(crate) fn check_lr(lr: f64) -> Result<()> {
    if !lr.is_finite() || lr < 0.0 {
        bail!("--lr must be a finite non-negative number, got {lr}");
    }
    if lr > f32::MAX as f64 {
        bail!("--lr {lr:e}: more than the steps' f32 can hold ({:e})", f32::MAX);
    }
    Ok(())
}

/// Checks that the model's sizes can be traced and held: every count positive, the input
/// batch, the logits and each MLP weight at most [`MAX_ELEMENTS`], WRN widths at most 64, a
/// convolutional model's input C,H,W of at least 4x4. `batch_flag` names the flag that set
/// `batch_size` (`--batch-size`, or `bench`'s `--batch`).
pub(crate) fn check_sizes(spec: &ModelSpec, batch_size: usize, batch_flag: &str, input: &[usize], classes: usize) -> Result<()> {
    if classes == 0 || classes > 1 << 24 {
        bail!("--classes must be in 1..={}, got {classes}", 1 << 24);
    }
    if input.is_empty() || input.contains(&0) {
        bail!("--input: every dimension must be positive, got {input:?}");
    }
    let within = |what: &str, dims: &[usize]| -> Result<usize> {
        match dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS) {
            Some(n) => Ok(n),
            None => bail!("{what} {dims:?} is more than {MAX_ELEMENTS} elements, the most one tensor can hold"),
        }
    };
    let features = within("--input", input)?;
    within(&format!("the input batch ({batch_flag} x --input)"), &[&[batch_size][..], input].concat())?;
    within(&format!("the logits ({batch_flag} x --classes)"), &[batch_size, classes])?;
    match spec {
        ModelSpec::Mlp { hidden } => {
            let mut from = features;
            // The parameters live in one buffer (the arena), itself a tensor.
            let mut params = 0usize;
            for (i, &h) in hidden.iter().chain([&classes]).enumerate() {
                let weight = within(if i < hidden.len() { "an MLP weight (--hidden)" } else { "the MLP's last weight (--hidden, --classes)" }, &[from, h])?;
                within(&format!("an MLP activation ({batch_flag} x --hidden)"), &[batch_size, h])?;
                params = params.saturating_add(weight + h);
                from = h;
            }
            if params > MAX_ELEMENTS {
                bail!("the MLP's parameters (--input, --hidden, --classes) are {params} elements, more than {MAX_ELEMENTS}, the most their one buffer can hold");
            }
        }
        ModelSpec::Wrn16 { k } if *k > 64 => bail!("--model wrn16-{k}: widths up to wrn16-64 are supported"),
        _ if input.len() != 3 || input[1] < 4 || input[2] < 4 => {
            bail!("--input {}: convolutional models take C,H,W images of at least 4x4", input.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","))
        }
        _ => {}
    }
    Ok(())
}

/// The most ascent steps, and m-sharpness micro-batches per batch (and passes, ascent steps
/// times micro-batches), a step compiles: each is a forward and backward pass unrolled into
/// the step's graph.
const MAX_ASCENT_STEPS: usize = 16;
const MAX_MICRO_BATCHES: usize = 32;

/// The optimizer the flags describe, after checking them.
pub(crate) fn optimizer_spec(o: &OptimizerArgs, batch_size: usize) -> Result<OptimizerSpec> {
    let adamw = matches!(o.optimizer, OptimizerName::Adamw | OptimizerName::SamAdamw);
    if adamw && (o.momentum.is_some() || o.nesterov) {
        bail!("--momentum and --nesterov set SGD's momentum; AdamW has none (--optimizer sgd or sam)");
    }
    let momentum = o.momentum.unwrap_or(0.9);
    if o.nesterov && momentum == 0.0 {
        bail!("--nesterov needs a momentum above 0 (--momentum 0 turns momentum off)");
    }
    if o.eta.is_some() && !o.adaptive {
        bail!("--eta is ASAM's: it needs --adaptive");
    }
    let eta = o.eta.unwrap_or(0.01);
    for (flag, v) in [("--momentum", momentum), ("--weight-decay", o.weight_decay), ("--rho", o.rho()), ("--eta", eta)] {
        if !v.is_finite() || v < 0.0 {
            bail!("{flag} must be a finite non-negative number, got {v}");
        }
        if v > f32::MAX as f64 {
            bail!("{flag} {v:e}: more than the steps' f32 can hold ({:e})", f32::MAX);
        }
    }
    if let Some(m) = o.m {
        if m == 0 {
            bail!("--m must be positive (the micro-batch size)");
        }
        if batch_size % m != 0 {
            bail!("--m {m} must divide --batch-size {}", batch_size);
        }
    }
    if o.ascent_steps == 0 || o.ascent_steps > MAX_ASCENT_STEPS {
        bail!("--ascent-steps must be in 1..={MAX_ASCENT_STEPS} (each is a forward and backward pass compiled into the step), got {}", o.ascent_steps);
    }
    if let Some(m) = o.m.filter(|&m| batch_size / m > MAX_MICRO_BATCHES) {
        bail!("--m {m}: {} micro-batches of {m} per batch of {batch_size}; at most {MAX_MICRO_BATCHES} (each is a pass compiled into the step)", batch_size / m);
    }
    let micro = o.m.map_or(1, |m| batch_size / m);
    if micro * o.ascent_steps > MAX_MICRO_BATCHES {
        bail!("--m and --ascent-steps: {} ascent steps of {micro} micro-batches each are {} passes compiled into the step; at most {MAX_MICRO_BATCHES}", o.ascent_steps, micro * o.ascent_steps);
    }
    let base = match o.optimizer {
        OptimizerName::Sgd | OptimizerName::Sam => {
            BaseOptimizer::Sgd { momentum, nesterov: o.nesterov, weight_decay: o.weight_decay }
        }
        OptimizerName::Adamw | OptimizerName::SamAdamw => BaseOptimizer::adamw(o.weight_decay),
    };
    let sam = matches!(o.optimizer, OptimizerName::Sam | OptimizerName::SamAdamw).then(|| Sam {
        norm: match o.p {
            PNorm::Two => SamNorm::L2,
            PNorm::Inf => SamNorm::Linf,
        },
        adaptive: o.adaptive.then_some(eta),
        micro_batch: o.m,
        ascent_steps: o.ascent_steps,
        second_order: o.second_order,
    });
    if sam.is_none() && (o.adaptive || o.m.is_some() || o.second_order || o.ascent_steps > 1 || matches!(o.p, PNorm::Inf) || o.rho.is_some()) {
        bail!("--rho, --adaptive, --m, --p, --ascent-steps and --second-order need --optimizer sam or sam-adamw");
    }
    Ok(OptimizerSpec { base, sam })
}

fn compile_cmd(args: CompileArgs) -> Result<()> {
    let (model, opts) = model_flags(&args.model)?;
    let spec = optimizer_spec(&args.opt, opts.batch_size)?;
    if let (true, Some(sam)) = (args.naive, &spec.sam) {
        if sam.micro_batch.is_some() || sam.norm != SamNorm::L2 || sam.ascent_steps > 1 || sam.second_order {
            bail!("--naive builds SAM as eager frameworks commonly write it (the L2 ball, one ascent step, ASAM allowed); --m, --p inf, --ascent-steps and --second-order have no naive form");
        }
    }
    // Where the outputs go, checked before compiling; then the kernels are staged, the DOT
    // written, and only then the kernels moved in: nothing is written unless all can be.
    if let Some(dir) = &args.emit_cuda {
        check_emit_dir(dir)?;
    }
    if let (Some(path), Some(dir)) = (&args.dot, &args.emit_cuda) {
        // A --dot named as a kernel in the emission's folder would be replaced by the kernels.
        let parent = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let same = |a: &Path, b: &Path| a == b || std::fs::canonicalize(a).is_ok_and(|a| std::fs::canonicalize(b).is_ok_and(|b| a == b));
        if same(parent, dir) && path.file_name().and_then(|n| n.to_str()).is_some_and(kernel_file) {
            bail!("--dot {}: a kernel's file name in the --emit-cuda folder (k<id>_<name>.cu, which the emission replaces); give the DOT another name", path.display());
        }
    }
    if let Some(path) = &args.dot {
        // A --dot in a folder the emission creates is checked once that folder exists.
        let parent = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if parent.exists() || args.emit_cuda.is_none() {
            check_writable("--dot", path)?;
        }
    }
    let start = Instant::now();
    let (_, _, compiled) = plateau::compile(&model, &opts, &spec, args.naive, !args.no_rewrite)?;
    let seconds = start.elapsed().as_secs_f64();
    let staged = args.emit_cuda.as_deref().map(|dir| stage_cuda(&compiled, dir)).transpose()?;
    if let Some(path) = &args.dot {
        let dot = check_writable("--dot", path).and_then(|()| write_file_atomic("--dot", path, compiled.fused.to_dot().as_bytes()));
        if let Err(e) = dot {
            if let Some(st) = staged {
                st.abandon();
            }
            return Err(e);
        }
    }
    if let Some(st) = staged {
        st.commit()?;
    }
    let s = &compiled.schedule;
    let r = &compiled.report;
    if args.json {
        let json = serde_json::json!({
            "model": model.to_string(),
            "optimizer": args.opt.optimizer.to_possible_value().map(|v| v.get_name().to_string()),
            "naive": args.naive,
            "rewrite": !args.no_rewrite,
            "launches": s.launches,
            "optimizer_launches": s.optimizer_launches,
            "bytes_moved": s.bytes_moved,
            "peak_memory_bytes": s.peak_memory_bytes,
            "param_count": s.param_count,
            "compile_seconds": seconds,
            "rewriter": {
                "iterations": r.iterations,
                "stop": format!("{:?}", r.stop),
                "egraph_nodes": r.egraph_nodes,
                "fallback": r.fallback,
                "rule_hits": r.rule_hits,
            },
            "kernels": s.kernels,
            "buffers": s.buffers,
        });
        println!("{json}");
    } else {
        print!("{s}");
        // Rules in name order, with how many alternatives each added.
        let hits: Vec<String> = r.rule_hits.iter().map(|(name, n)| format!("{name} {n}")).collect();
        println!(
            "compiled in {seconds:.3} s; rewriter: {} iterations, {:?}, {} e-nodes{}",
            r.iterations,
            r.stop,
            r.egraph_nodes,
            if r.fallback { "; extraction failed, kept unfused" } else { "" }
        );
        if !hits.is_empty() {
            println!("rules (alternatives added): {}", hits.join(", "));
        }
    }
    Ok(())
}

fn trace_cmd(args: TraceArgs) -> Result<()> {
    let (spec, opts) = model_flags(&args.model)?;
    let opts = TraceOptions {
        dtype: match args.dtype {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        },
        training: !args.eval,
        ..opts
    };
    let mut model = trace(&spec, &opts)?;
    if !args.forward_only {
        model.differentiate()?;
    }
    model.graph.verify()?;
    if let Some(path) = &args.dot {
        check_writable("--dot", path)?;
        write_file_atomic("--dot", path, model.graph.to_dot().as_bytes())?;
    }
    print!("{}", model.graph.to_text());
    Ok(())
}

/// Binds one random batch (pixels in [0, 1), labels below `classes`, drawn from `seed`), the
/// learning rate, rho and step 0: the step inputs of `run` and `bench`.
fn bind_random_batch(b: &mut plateau::Bindings, traced: &plateau::TracedModel, classes: usize, seed: u64, lr: f64, rho: f64) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let x = traced.graph.shape(traced.input).clone();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let pixels: Vec<f64> = (0..x.numel()).map(|_| rng.random_range(0.0..1.0)).collect();
    let labels: Vec<i32> = (0..x.0[0]).map(|_| rng.random_range(0..classes as i32)).collect();
    b.set("input", "x", plateau::Tensor::new(DType::F32, x, pixels)?);
    b.set("input", "labels", plateau::Tensor::labels(&labels));
    b.set("scalar", "lr", plateau::Tensor::scalar(DType::F32, lr));
    b.set("scalar", "rho", plateau::Tensor::scalar(DType::F32, rho));
    b.set("scalar", "step", plateau::Tensor::scalar(DType::F32, 0.0));
    Ok(())
}

fn run_cmd(args: RunArgs) -> Result<()> {
    use plateau::runtime::{Backend, Runner};
    let backend: Backend = args.device.parse().context("--device")?;
    let (model, opts) = model_flags(&args.model)?;
    let spec = optimizer_spec(&args.opt, opts.batch_size)?;
    check_lr(args.lr)?;
    let (traced, step, compiled) = plateau::compile(&model, &opts, &spec, false, true)?;
    let mut b = plateau::initial_state(&traced, &step, args.seed)?;
    bind_random_batch(&mut b, &traced, opts.classes, args.seed, args.lr, args.opt.rho())?;
    let mut runner = Runner::new(backend, &compiled, &b).context("--device")?;
    if let Some(name) = plateau::runtime::device_name(backend) {
        println!("on {}: {name}", args.device);
    }
    for i in 0..args.steps {
        runner.set("scalar", "step", &plateau::Tensor::scalar(DType::F32, i as f64))?;
        let out = runner.step(&["loss", "accuracy"])?;
        let loss = out["loss"].item();
        if !loss.is_finite() {
            bail!("the loss is {loss} at step {i}");
        }
        println!("step {i}: loss {loss:.6} accuracy {:.4}", out["accuracy"].item());
    }
    Ok(())
}

/// Before compiling: `--emit-cuda DIR` must be a folder (or creatable: its nearest existing
/// ancestor a folder) that can be written in.
fn check_emit_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("--emit-cuda {}: is a file, not a folder", dir.display());
    }
    let Some(base) = dir.ancestors().find(|a| a.as_os_str().is_empty() || a.exists()) else { return Ok(()) };
    let base = if base.as_os_str().is_empty() { Path::new(".") } else { base };
    if !base.is_dir() {
        bail!("--emit-cuda: cannot create {}: {} is a file", dir.display(), base.display());
    }
    check_writable("--emit-cuda", &base.join("k0_probe.cu")).map_err(|_| anyhow::anyhow!("--emit-cuda: cannot create or write {}: {} is not writable", dir.display(), base.display()))
}

/// A schedule's CUDA sources written into a fresh folder inside `dir`, not yet in place.
struct StagedCuda {
    dir: PathBuf,
    staging: PathBuf,
    files: Vec<String>,
    /// The folders this emission created (removed again if it is abandoned), outermost last.
    created: Vec<PathBuf>,
}

/// Whether `name` is an emitted kernel's file name, `k<id>_<name>.cu` (an emission replaces
/// every such file in its folder).
fn kernel_file(name: &str) -> bool {
    let Some(rest) = name.strip_suffix(".cu").and_then(|r| r.strip_prefix('k')) else { return false };
    rest.split_once('_').is_some_and(|(id, _)| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
}

/// Writes `k<id>_<name>.cu` for every kernel (and `k<id>_<name>_sum.cu` for the second launch
/// of a split GEMM or sum), each a whole translation unit as NVRTC compiles it, into a fresh
/// folder inside `dir` (the same file system: moving them in is renaming). All sources are
/// generated first, so a kernel that cannot be emitted writes nothing.
fn stage_cuda(compiled: &plateau::Compiled, dir: &Path) -> Result<StagedCuda> {
    let s = &compiled.schedule;
    let mut sources = Vec::new();
    for k in &s.kernels {
        let name = format!("k{}_{}", k.id, k.name);
        let src = plateau::kernels::emit::kernel_cuda(&compiled.fused, s, k, &name)
            .map_err(|e| anyhow::anyhow!("--emit-cuda: kernel k{} ({}): {e}", k.id, k.name))?;
        sources.extend(src);
    }
    let created: Vec<PathBuf> = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
    let staging = dir.join(format!(".plateau-emit-{}", std::process::id()));
    let st = StagedCuda { dir: dir.to_path_buf(), staging, files: sources.iter().map(|(n, _)| format!("{n}.cu")).collect(), created };
    let staged = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::remove_dir_all(&st.staging);
        std::fs::create_dir(&st.staging)?;
        for (name, src) in &sources {
            std::fs::write(st.staging.join(format!("{name}.cu")), src)?;
        }
        Ok(())
    })();
    match staged {
        Ok(()) => Ok(st),
        Err(e) => {
            let what = format!("--emit-cuda: cannot write the kernels in {}", dir.display());
            st.abandon();
            Err(e).context(what)
        }
    }
}

impl StagedCuda {
    /// Removes the staged sources and any folder the emission created.
    fn abandon(self) {
        let _ = std::fs::remove_dir_all(&self.staging);
        for d in &self.created {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Moves the sources into the folder in place of the `k<id>_*.cu` an earlier emission
    /// left there (other files are kept), so the folder never mixes two schedules.
    fn commit(self) -> Result<()> {
        let moved = (|| -> std::io::Result<()> {
            for e in std::fs::read_dir(&self.dir)? {
                let p = e?.path();
                if p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(kernel_file) {
                    std::fs::remove_file(&p)?;
                }
            }
            for f in &self.files {
                std::fs::rename(self.staging.join(f), self.dir.join(f))?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&self.staging);
        moved.with_context(|| format!("--emit-cuda: cannot move the kernels into {}", self.dir.display()))
    }
}
