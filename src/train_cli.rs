//! `plateau train`, `plateau compare` and `plateau eval`.

use crate::{check_writable, model_spec, optimizer_spec, OptimizerArgs};
use anyhow::{bail, Context, Result};
use plateau::runtime::data::{Augment, DataSource, Dataset, Split};
use plateau::runtime::Backend;
use plateau::train::{newest_checkpoint, Budget, EpochMetrics, LrSchedule, Model, TrainConfig, Trainer};
use plateau::{BaseOptimizer, OptimizerSpec};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The flags `train` and `compare` share: model, data, budget, schedule, device.
#[derive(clap::Args)]
pub struct RunFlags {
    /// mlp, cnn, resnet18 or wrn16-K.
    #[arg(long, default_value = "mlp")]
    model: String,
    /// Hidden layer widths of the MLP (default 256,256).
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    hidden: Option<Vec<usize>>,
    /// synthetic (embedded), mnist:DIR, cifar10:DIR or cifar100:DIR.
    #[arg(long, default_value = "synthetic")]
    data: String,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Epochs to train (default 10).
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<usize>,
    /// Steps to train instead of epochs (train: 0 is valid, and with --save writes the initial
    /// weights).
    #[arg(long)]
    steps: Option<usize>,
    /// Learning-rate schedule, applied every step.
    #[arg(long, default_value = "constant")]
    schedule: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the steps run: reference (CPU), wgpu or cuda.
    #[arg(long, default_value = "reference")]
    device: String,
    /// Replace this fraction of the training labels by another class (seeded).
    #[arg(long)]
    label_noise: Option<f64>,
    /// Hold out this fraction of the training set for validation (seeded).
    #[arg(long)]
    validation: Option<f64>,
    /// Turn off the data's augmentation (CIFAR: 4-pixel pad + random crop, flip).
    #[arg(long)]
    no_augment: bool,
    /// Add cutout of this side length to the augmentation.
    #[arg(long)]
    cutout: Option<usize>,
    /// Batches are consecutive examples in file order.
    #[arg(long)]
    no_shuffle: bool,
    /// Pixels become (x/255 - MEAN) / STD instead of x/255.
    #[arg(long, value_name = "MEAN,STD", value_parser = mean_std)]
    normalize: Option<(f32, f32)>,
    /// Append one JSON object per epoch to this file (created if missing; checked before
    /// training).
    #[arg(long)]
    metrics: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    run: RunFlags,
    #[command(flatten)]
    opt: OptimizerArgs,
    /// Start from these weights (safetensors with PyTorch state_dict names).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Write the final weights here (safetensors, PyTorch state_dict names).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write a checkpoint (weights, optimizer state, step) here after every epoch.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Continue from the newest checkpoint in --checkpoint-dir.
    #[arg(long, requires = "checkpoint_dir")]
    resume: bool,
}

#[derive(clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    run: RunFlags,
    /// The base optimizer (sgd or adamw; SAM runs on top of it) and SAM's settings.
    #[command(flatten)]
    opt: OptimizerArgs,
    /// The plot of train loss and test accuracy per epoch (PNG).
    #[arg(long, default_value = "compare.png")]
    plot: PathBuf,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint or a --save file.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, default_value = "synthetic")]
    data: String,
    /// The model (default: the one the file names).
    #[arg(long)]
    model: Option<String>,
    /// Hidden layer widths of the MLP.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    hidden: Option<Vec<usize>>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value = "reference")]
    device: String,
    #[arg(long, value_name = "MEAN,STD", value_parser = mean_std)]
    normalize: Option<(f32, f32)>,
}

/// `MEAN,STD`: two numbers (`--normalize`, and the `normalize` a weights file records).
fn mean_std(s: &str) -> Result<(f32, f32), String> {
    let bad = || format!("takes MEAN,STD (two numbers), got `{s}`");
    match s.split(',').map(|p| p.trim().parse::<f32>()).collect::<Vec<_>>()[..] {
        [Ok(mean), Ok(std)] => Ok((mean, std)),
        _ => Err(bad()),
    }
}

fn zoo_model(name: &str, hidden: Option<&[usize]>) -> Result<Model> {
    Ok(Model::zoo(model_spec(name, hidden)?))
}

/// Everything a run needs, checked before anything is loaded or written.
struct Prepared {
    model: Model,
    data: Dataset,
    data_name: String,
    validation: Option<Split>,
    config: TrainConfig,
}

fn prepare(f: &RunFlags, optimizer: OptimizerSpec, rho: f64) -> Result<Prepared> {
    let device: Backend = f.device.parse().context("--device")?;
    let source: DataSource = f.data.parse().context("--data")?;
    let schedule: LrSchedule = f.schedule.parse().context("--schedule")?;
    let normalize = f.normalize;
    crate::check_lr(f.lr)?;
    if f.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    if f.epochs == Some(0) {
        bail!("--epochs must be at least 1 (use --steps 0 to only initialise)");
    }
    let spec = model_spec(&f.model, f.hidden.as_deref())?;
    let mut data = Dataset::load(&source, normalize).context("--data")?;
    if data.test.is_empty() {
        bail!("--data {source}: the test split has no examples");
    }
    crate::check_sizes(&spec, f.batch_size, "--batch-size", &data.shape, data.classes)?;
    let model = Model::zoo(spec);
    if let Some(p) = f.label_noise {
        data.add_label_noise(p, f.seed).context("--label-noise")?;
    }
    let validation = match f.validation {
        Some(v) if v > 0.0 => Some(data.split_validation(v, f.seed).context("--validation")?),
        Some(v) if v < 0.0 || !v.is_finite() => bail!("--validation must be in [0, 1), got {v}"),
        _ => None,
    };
    let mut augment = if f.no_augment { Augment::none() } else { data.augment };
    if let Some(c) = f.cutout {
        if f.no_augment {
            bail!("--cutout conflicts with --no-augment");
        }
        let side = data.shape[1].max(data.shape[2]);
        if c > side {
            bail!("--cutout {c}: at most the images' side, {side}");
        }
        augment.cutout = c;
    }
    let budget = match (f.epochs, f.steps) {
        (_, Some(s)) => Budget::Steps(s),
        (Some(e), None) => Budget::Epochs(e),
        (None, None) => Budget::Epochs(10),
    };
    let config = TrainConfig { optimizer, rho, lr: f.lr, schedule, batch_size: f.batch_size, budget, seed: f.seed, device, augment, shuffle: !f.no_shuffle };
    // The data a run trains on, as its checkpoints name it: the source and every flag that
    // changes the examples (a resumed run must give the same).
    let mut data_name = source.to_string();
    if let Some((mean, std)) = normalize {
        data_name += &format!(", --normalize {mean},{std}");
    }
    if let Some(p) = f.label_noise.filter(|&p| p > 0.0) {
        data_name += &format!(", --label-noise {p}");
    }
    if let Some(v) = f.validation.filter(|&v| v > 0.0) {
        data_name += &format!(", --validation {v}");
    }
    Ok(Prepared { model, data, data_name, validation, config })
}

fn describe(p: &Prepared, t: &Trainer, label: &str) {
    let s = &t.compiled().schedule;
    let d = &p.data;
    println!(
        "{label}: {} ({} parameters) on {} ({} train / {} test, {}x{}x{}, {} classes), {} steps of batch {} on {:?}{}",
        p.model.name(),
        s.param_count,
        d.name,
        d.train.len(),
        d.test.len(),
        d.shape[0],
        d.shape[1],
        d.shape[2],
        d.classes,
        t.total_steps(),
        p.config.batch_size,
        p.config.device,
        plateau::runtime::device_name(p.config.device).map(|n| format!(" ({n})")).unwrap_or_default()
    );
    println!("  compiled step: {} kernel launches ({} in the optimizer), peak memory {} bytes", s.launches, s.optimizer_launches, s.peak_memory_bytes);
}

fn epoch_line(m: &EpochMetrics) -> String {
    let mut line = format!(
        "epoch {:>3}  lr {:.4}  train loss {:.4} acc {:.4}  test loss {:.4} acc {:.4}",
        m.epoch, m.lr, m.train_loss, m.train_accuracy, m.test_loss, m.test_accuracy
    );
    if let (Some(l), Some(a)) = (m.validation_loss, m.validation_accuracy) {
        line += &format!("  val loss {l:.4} acc {a:.4}");
    }
    line += &format!("  {:.1} s", m.seconds);
    if m.partial {
        line += "  (part of the epoch: the budget ended within it)";
    }
    line
}

fn summary(history: &[EpochMetrics]) {
    println!("\n| epoch | lr | train loss | train acc | test loss | test acc | seconds |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for m in history {
        println!("| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1} |", m.epoch, m.lr, m.train_loss, m.train_accuracy, m.test_loss, m.test_accuracy, m.seconds);
    }
}

/// Opens `--metrics` for appending (created if missing), before anything runs.
fn open_metrics(path: Option<&Path>) -> Result<Option<std::fs::File>> {
    path.map(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("--metrics: cannot open {}", p.display()))).transpose()
}

/// Makes `--checkpoint-dir` ready before training: creates it, removes the temporary files of
/// checkpoints a killed run was writing, and, unless resuming, refuses a folder that already
/// holds another run's checkpoints (a new run would overwrite them step by step).
fn prepare_checkpoint_dir(dir: &Path, resume: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("--checkpoint-dir {}: is a file, not a folder", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--checkpoint-dir: cannot create {}", dir.display()))?;
    for e in std::fs::read_dir(dir).with_context(|| format!("--checkpoint-dir: cannot list {}", dir.display()))? {
        let p = e?.path();
        let stale = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".step-") && n.contains(".safetensors.tmp-"));
        if stale {
            std::fs::remove_file(&p).with_context(|| format!("--checkpoint-dir: cannot remove the unfinished {}", p.display()))?;
        }
    }
    if !resume {
        if let Some(ck) = newest_checkpoint(dir)? {
            bail!("--checkpoint-dir {}: holds checkpoints already (the newest {}); pass --resume to continue that run, or give an empty folder", dir.display(), ck.display());
        }
    }
    // A probe, as a checkpoint is written (a new file, then renamed): the folder must take
    // new files now, not after the first epoch.
    let probe = dir.join(format!(".step-probe.safetensors.tmp-{}", std::process::id()));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&probe).with_context(|| format!("--checkpoint-dir {}: cannot write in it", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Runs `t` to the end of its budget, printing each epoch, appending metrics (each line with
/// `"run": label` when given), writing checkpoints. A non-finite loss or weight stops the
/// run naming the last good checkpoint: `last_good` (the one resumed from) or one this run
/// wrote.
fn drive(t: &mut Trainer, metrics: Option<&mut std::fs::File>, label: Option<&str>, checkpoints: Option<&Path>, mut last_good: Option<PathBuf>) -> Result<()> {
    let mut file = metrics;
    while !t.finished() {
        let m = match t.train_epoch() {
            Ok(m) => m,
            Err(e) => {
                let run = label.map(|l| format!("the {l} run: ")).unwrap_or_default();
                let keep = match (&last_good, checkpoints) {
                    (Some(p), _) => format!("; the last good checkpoint is {}", p.display()),
                    (None, Some(_)) => "; no checkpoint was written".to_string(),
                    (None, None) => String::new(),
                };
                bail!("{run}{e:#}{keep}");
            }
        };
        println!("{}", epoch_line(&m));
        if let Some(f) = &mut file {
            let mut line = serde_json::to_value(&m)?;
            if let Some(l) = label {
                line["run"] = l.into();
            }
            writeln!(f, "{line}").context("--metrics")?;
        }
        if let Some(dir) = checkpoints {
            last_good = Some(t.save_checkpoint(dir).context("--checkpoint-dir")?);
        }
    }
    Ok(())
}

pub fn train_cmd(args: TrainArgs) -> Result<()> {
    let spec = optimizer_spec(&args.opt, args.run.batch_size)?;
    let p = prepare(&args.run, spec, args.opt.rho())?;
    // Everything the run writes, checked before the first step (the checkpoint folder first:
    // --save may name a file in it).
    if let Some(dir) = &args.checkpoint_dir {
        prepare_checkpoint_dir(dir, args.resume)?;
    }
    if let Some(path) = &args.save {
        check_writable("--save", path)?;
    }
    crate::distinct_outputs(&[("--save", args.save.as_deref()), ("--metrics", args.run.metrics.as_deref())])?;
    let mut metrics = open_metrics(args.run.metrics.as_deref())?;
    let mut t = Trainer::new(&p.model, &p.config, &p.data, &p.data_name, p.validation.clone())?;
    describe(&p, &t, "train");
    // A run resumed from a checkpoint continues from its weights; --init starts a run (so
    // one command line both starts a run and resumes it).
    let mut resumed = None;
    if args.resume {
        let dir = args.checkpoint_dir.as_deref().expect("clap requires --checkpoint-dir with --resume");
        match newest_checkpoint(dir)? {
            Some(ck) => {
                t.resume(&ck).context("--resume")?;
                println!("  resumed from {} at step {}", ck.display(), t.steps_done());
                if let Some(init) = &args.init {
                    println!("  --init {} not loaded: the run continues from its checkpoint", init.display());
                }
                resumed = Some(ck);
            }
            None => println!("  no checkpoint in {} yet: starting from step 0", dir.display()),
        }
    }
    if let (Some(init), None) = (&args.init, &resumed) {
        t.load_state_dict(init).context("--init")?;
        println!("  initial weights from {}", init.display());
    }
    drive(&mut t, metrics.as_mut(), None, args.checkpoint_dir.as_deref(), resumed)?;
    if !t.history.is_empty() {
        summary(&t.history);
    }
    if let Some(path) = &args.save {
        t.save_state_dict(path).context("--save")?;
        println!("weights written to {}", path.display());
    }
    Ok(())
}

pub fn compare_cmd(args: CompareArgs) -> Result<()> {
    // The SAM run takes every SAM flag, whichever of the base or SAM names `--optimizer`.
    let spec = optimizer_spec(&args.opt.with_sam(), args.run.batch_size)?;
    let base: BaseOptimizer = spec.base.clone();
    let sam = spec.sam.clone().expect("with_sam names a SAM optimizer");
    if args.run.steps == Some(0) {
        bail!("--steps 0: compare needs at least one step to compare");
    }
    if args.plot.extension().and_then(|e| e.to_str()).is_none_or(|e| !e.eq_ignore_ascii_case("png")) {
        bail!("--plot {}: the plot is a PNG; give a file name ending in .png", args.plot.display());
    }
    check_writable("--plot", &args.plot)?;
    crate::distinct_outputs(&[("--plot", Some(&args.plot)), ("--metrics", args.run.metrics.as_deref())])?;
    let mut metrics = open_metrics(args.run.metrics.as_deref())?;
    let base_name = if matches!(base, BaseOptimizer::AdamW { .. }) { "AdamW" } else { "SGD" };
    let sam_name = if matches!(base, BaseOptimizer::AdamW { .. }) { "SAM-AdamW" } else { "SAM" };
    let runs = [(base_name, OptimizerSpec { base: base.clone(), sam: None }), (sam_name, OptimizerSpec { base, sam: Some(sam) })];
    let mut results: Vec<(&str, Vec<EpochMetrics>)> = Vec::new();
    let mut p0 = prepare(&args.run, runs[0].1.clone(), args.opt.rho())?;
    for (name, spec) in runs {
        p0.config.optimizer = spec;
        let mut t = Trainer::new(&p0.model, &p0.config, &p0.data, &p0.data_name, p0.validation.clone())?;
        describe(&p0, &t, name);
        drive(&mut t, metrics.as_mut(), Some(name), None, None)?;
        results.push((name, t.history.clone()));
    }
    let (a, b) = (&results[0], &results[1]);
    println!("\n| epoch | {0} train loss | {1} train loss | {0} test acc | {1} test acc |", a.0, b.0);
    println!("|---:|---:|---:|---:|---:|");
    for (x, y) in a.1.iter().zip(&b.1) {
        println!("| {} | {:.4} | {:.4} | {:.4} | {:.4} |", x.epoch, x.train_loss, y.train_loss, x.test_accuracy, y.test_accuracy);
    }
    if let (Some(x), Some(y)) = (a.1.last(), b.1.last()) {
        let best = |h: &[EpochMetrics]| h.iter().map(|m| m.test_accuracy).fold(0.0, f64::max);
        println!(
            "\nfinal test accuracy: {} {:.4}, {} {:.4} ({:+.2} points); best: {} {:.4}, {} {:.4}",
            a.0,
            x.test_accuracy,
            b.0,
            y.test_accuracy,
            100.0 * (y.test_accuracy - x.test_accuracy),
            a.0,
            best(&a.1),
            b.0,
            best(&b.1)
        );
    }
    let title = format!("{} on {}: {} vs {} (rho {})", p0.model.name(), p0.data.name, a.0, b.0, args.opt.rho());
    plateau::plot::compare_png(&args.plot, &title, &[(a.0, &a.1), (b.0, &b.1)]).context("--plot")?;
    println!("plot written to {}", args.plot.display());
    Ok(())
}

pub fn eval_cmd(args: EvalArgs) -> Result<()> {
    let device: Backend = args.device.parse().context("--device")?;
    let source: DataSource = args.data.parse().context("--data")?;
    if args.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let mut normalize = args.normalize;
    let file = plateau::checkpoint::Checkpoint::read(&args.checkpoint).context("--checkpoint")?;
    let meta = file.metadata();
    let model = match (&args.model, meta.get("model")) {
        (Some(m), _) => zoo_model(m, args.hidden.as_deref())?,
        (None, Some(name)) => {
            if args.hidden.is_some() {
                bail!("--hidden sets the MLP of --model; {} names its model (`{name}`): pass --model mlp with it, or neither", args.checkpoint.display());
            }
            Model::zoo(Model::parse_zoo(name).with_context(|| format!("{}: model `{name}`", args.checkpoint.display()))?)
        }
        (None, None) => bail!("{} does not name its model: pass --model", args.checkpoint.display()),
    };
    // The pixels as the weights were trained on them, unless --normalize says otherwise.
    if let (None, Some(n)) = (normalize, meta.get("normalize")) {
        normalize = Some(mean_std(n).map_err(|e| anyhow::anyhow!("{}: its `normalize` metadata {e}", args.checkpoint.display()))?);
        println!("pixels normalized as {} records: --normalize {n}", args.checkpoint.display());
    }
    let data = Dataset::load_test(&source, normalize).context("--data")?;
    if data.test.is_empty() {
        bail!("--data {source}: the test split has no examples");
    }
    let (loss, acc) = plateau::train::evaluate_checkpoint(&model, &data, &data.test, &file, &args.checkpoint, args.batch_size, device)?;
    println!("{} on {} test ({} examples): loss {loss:.4} accuracy {acc:.4}", model.name(), data.name, data.test.len());
    Ok(())
}
