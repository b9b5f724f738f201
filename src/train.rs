//! Training a model on a dataset: the compiled step driven batch by batch on any backend,
//! with a learning-rate schedule, evaluation after every epoch, checkpoints and resume.
//!
//! Determinism: every random choice (initial weights, shuffling, augmentation) is a pure
//! function of the seed and the position in the run, so a run resumed from a checkpoint
//! produces the weights of the uninterrupted run, bit for bit, on the same backend.

use crate::checkpoint::{self, Checkpoint, TensorEntry};
use crate::{build_eval_step, compile_step, initial_state, trace, Bindings, Compiled, DType, ModelSpec, OptimizerSpec, Tensor, TraceOptions, TracedModel};
use anyhow::{bail, Context, Result};
use plateau_compiler::step::Arena;
use plateau_runtime::data::{batch, epoch_order, Augment, Dataset, Split};
use plateau_runtime::{Backend, Runner};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

type BuildFn = dyn Fn(&TraceOptions) -> Result<TracedModel> + Send + Sync;

/// A model to train: a zoo model, or any function that traces one with the DSL.
#[derive(Clone)]
pub struct Model {
    name: String,
    build: Arc<BuildFn>,
}

impl Model {
    /// A zoo model; its name is `mlp:W1,W2,..` for an MLP, else the `--model` name.
    pub fn zoo(spec: ModelSpec) -> Model {
        let name = match &spec {
            ModelSpec::Mlp { hidden } => format!("mlp:{}", hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",")),
            other => other.to_string(),
        };
        Model { name, build: Arc::new(move |o| Ok(trace(&spec, o)?)) }
    }

    /// The zoo model a name written by `zoo` stands for (`mlp:256,256`, `cnn`, ...).
    pub fn parse_zoo(name: &str) -> Result<ModelSpec> {
        if let Some(h) = name.strip_prefix("mlp:") {
            let hidden = h.split(',').map(|w| w.parse::<usize>().ok().filter(|&w| w > 0)).collect::<Option<Vec<_>>>();
            return hidden.map(|hidden| ModelSpec::Mlp { hidden }).with_context(|| format!("bad MLP widths in `{name}`"));
        }
        Ok(name.parse::<ModelSpec>()?)
    }

    /// A model written with the DSL: `build` traces it at the given options (batch size,
    /// input shape, classes, training or evaluation mode).
    pub fn custom(name: impl Into<String>, build: impl Fn(&TraceOptions) -> Result<TracedModel> + Send + Sync + 'static) -> Model {
        Model { name: name.into(), build: Arc::new(build) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn trace(&self, opts: &TraceOptions) -> Result<TracedModel> {
        (self.build)(opts)
    }
}

/// How the learning rate moves over the run (applied every step).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The base rate throughout (PyTorch's default: no scheduler).
    Constant,
    /// x0.1 after half the steps, x0.01 after three quarters.
    Step,
    /// Cosine annealing from the base rate to 0 over the run.
    Cosine,
}

impl FromStr for LrSchedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "step" => Ok(LrSchedule::Step),
            "cosine" => Ok(LrSchedule::Cosine),
            other => bail!("unknown schedule `{other}` (expected constant, step or cosine)"),
        }
    }
}

impl LrSchedule {
    /// The rate at step `t` (0-based) of `total`.
    pub fn lr(&self, base: f64, t: usize, total: usize) -> f64 {
        let frac = if total == 0 { 0.0 } else { t as f64 / total as f64 };
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Step if frac >= 0.75 => base * 0.01,
            LrSchedule::Step if frac >= 0.5 => base * 0.1,
            LrSchedule::Step => base,
            LrSchedule::Cosine => 0.5 * base * (1.0 + (std::f64::consts::PI * frac).cos()),
        }
    }
}

/// How long to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    Epochs(usize),
    Steps(usize),
}

/// Everything that defines a training run.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub optimizer: OptimizerSpec,
    /// SAM's radius (a runtime scalar).
    pub rho: f64,
    pub lr: f64,
    pub schedule: LrSchedule,
    pub batch_size: usize,
    pub budget: Budget,
    pub seed: u64,
    pub device: Backend,
    /// Per-image augmentation of training batches (`Augment::none()` for none).
    pub augment: Augment,
    pub shuffle: bool,
}

/// The version of a run's identity in checkpoints: 2 since the optimizer is recorded field by
/// field, the data with the flags that change it, and the budget where the schedule uses it.
const IDENTITY_VERSION: u64 = 2;

impl TrainConfig {
    /// The fields a resumed run must share with the run that wrote the checkpoint.
    fn identity(&self, model: &Model, data: &str) -> serde_json::Value {
        let mut id = serde_json::json!({
            "version": IDENTITY_VERSION,
            "model": model.name(),
            "data": data,
            "optimizer": serde_json::to_value(&self.optimizer).expect("invariant: optimizer settings serialize"),
            "rho": self.rho,
            "lr": self.lr,
            "schedule": self.schedule,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "augment": format!("{:?}", self.augment),
            "shuffle": self.shuffle,
        });
        // A schedule that depends on the run's length (step, cosine) makes the budget part of
        // the run: resumed with another, its rates would not be the ones it started with.
        if self.schedule != LrSchedule::Constant {
            id["budget"] = match self.budget {
                Budget::Epochs(e) => format!("--epochs {e}"),
                Budget::Steps(s) => format!("--steps {s}"),
            }
            .into();
        }
        id
    }

    /// This run's identity as a checkpoint of identity version `was` recorded it: before
    /// version 2, the optimizer as its `{:?}` text, the data source alone, and no budget.
    fn identity_as(&self, id: &serde_json::Value, was: &serde_json::Value) -> serde_json::Value {
        if was.get("version").is_some() {
            return id.clone();
        }
        let mut old = id.clone();
        let o = old.as_object_mut().expect("invariant: the identity is an object");
        o.remove("version");
        o.remove("budget");
        o.insert("optimizer".into(), format!("{:?}", self.optimizer).into());
        if let Some(source) = id["data"].as_str().and_then(|d| d.split(", --").next()) {
            o.insert("data".into(), source.into());
        }
        old
    }
}

/// The flags that set each field of a run's identity (and of the optimizer's settings in it).
fn flag_of(key: &str) -> &'static str {
    match key {
        "model" => "--model / --hidden",
        "data" => "--data, --normalize, --label-noise, --validation",
        "optimizer" | "base" | "sam" => "--optimizer",
        "rho" => "--rho",
        "lr" => "--lr",
        "schedule" => "--schedule",
        "batch_size" => "--batch-size",
        "seed" => "--seed",
        "augment" => "--no-augment / --cutout",
        "shuffle" => "--no-shuffle",
        "budget" => "--epochs / --steps",
        "momentum" => "--momentum",
        "nesterov" => "--nesterov",
        "weight_decay" => "--weight-decay",
        "norm" => "--p",
        "adaptive" => "--adaptive / --eta",
        "micro_batch" => "--m",
        "ascent_steps" => "--ascent-steps",
        "second_order" => "--second-order",
        _ => "",
    }
}

/// How the identities `was` (a checkpoint's) and `now` differ: each differing setting, named
/// with the flags that set it. Objects present on both sides (the optimizer, its base's
/// settings, SAM's) are compared setting by setting.
fn identity_diff(was: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_into(None, was, now, &mut out);
    out
}

fn diff_into(key: Option<&str>, was: &serde_json::Value, now: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    if was == now {
        return;
    }
    if let (Value::Object(a), Value::Object(b)) = (was, now) {
        // The same kind of thing on both sides (one base optimizer, or SAM's settings):
        // compare inside it; otherwise the whole value differs.
        let same_kind = key.is_none() || a.len() != 1 || b.len() != 1 || a.keys().eq(b.keys());
        if same_kind {
            let mut keys: Vec<&String> = b.keys().collect();
            keys.extend(a.keys().filter(|k| !b.contains_key(k.as_str())));
            for k in keys {
                diff_into(Some(k), a.get(k.as_str()).unwrap_or(&Value::Null), b.get(k.as_str()).unwrap_or(&Value::Null), out);
            }
            return;
        }
    }
    let k = key.unwrap_or("run");
    let named = match flag_of(k) {
        "" => k.to_string(),
        f => format!("{k} ({f})"),
    };
    // A run with a constant schedule records no budget (it does not change the run).
    let none = if k == "budget" { "(none: a constant schedule)" } else { "(none)" };
    out.push(format!("{named}: checkpoint {} vs now {}", shown(was, none), shown(now, none)));
}

/// A setting as the resume error shows it: `sgd {momentum 0.9, nesterov false, ...}` for an
/// optimizer, `none` for one not set.
fn shown(v: &serde_json::Value, none: &str) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Null => none.to_string(),
        Value::Object(m) if m.len() == 1 && m.values().all(Value::is_object) => {
            let (kind, inner) = m.iter().next().expect("invariant: one entry");
            format!("{} {}", kind.to_lowercase(), shown(inner, none))
        }
        Value::Object(m) => format!("{{{}}}", m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| format!("{k} {}", shown(v, none))).collect::<Vec<_>>().join(", ")),
        v => v.to_string(),
    }
}

/// One epoch's figures (one line of `--metrics`; read back from a checkpoint's history).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub step: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_accuracy: Option<f64>,
    pub seconds: f64,
    /// The run stopped within the epoch (its budget ended there): these are the figures so
    /// far, and a run resumed from there gives the epoch again, whole (absent when false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// The evaluation programs (the full batch and the last, shorter one) on the backend, and
/// what it takes to compile one for another batch size.
struct Evaluator {
    runners: BTreeMap<usize, Runner>,
    opts: TraceOptions,
    /// The step's initial bindings (the shapes and values a new program starts from).
    template: Bindings,
}

impl Evaluator {
    /// Compiles the evaluation program for batches of `bs` (its weights those of `template`
    /// until synced).
    fn add(&mut self, model: &Model, device: Backend, data: &Dataset, bs: usize) -> Result<&mut Runner> {
        let eo = TraceOptions { batch_size: bs, training: false, ..self.opts.clone() };
        let lm = model.trace(&eo)?.loss_model();
        let es = build_eval_step(&lm)?;
        let ec = compile_step(&es, true)?;
        let mut eb = self.template.clone();
        eb.set("input", "x", Tensor::from_f32(ec.fused.shape(ec.fused.find_leaf("input", "x").expect("evaluation reads x")).clone(), &vec![0.0; bs * data.dim()])?);
        eb.set("input", "labels", Tensor::labels(&vec![0; bs]));
        let r = Runner::new(device, &ec, &eb).context("--device")?;
        Ok(self.runners.entry(bs).or_insert(r))
    }
}

/// A training run in progress: the compiled step on its backend, the data, the position.
pub struct Trainer<'d> {
    model: Model,
    config: TrainConfig,
    identity: serde_json::Value,
    data: &'d Dataset,
    validation: Option<Split>,
    traced: TracedModel,
    arena: Arena,
    compiled: Compiled,
    runner: Runner,
    eval: Evaluator,
    /// Steps taken so far.
    step: usize,
    steps_per_epoch: usize,
    total_steps: usize,
    /// Metrics of every epoch finished so far (including those before a resume).
    pub history: Vec<EpochMetrics>,
    /// Show a progress bar per epoch (on a terminal).
    pub progress: bool,
}

fn scalar(v: f64) -> Tensor {
    Tensor::scalar(DType::F32, v)
}

impl<'d> Trainer<'d> {
    /// Compiles the model's training and evaluation steps for `data` and sets up the run at
    /// step 0 with seeded initial weights. `data_name` is how the data source is written in
    /// checkpoints (a resumed run must name the same).
    pub fn new(model: &Model, config: &TrainConfig, data: &'d Dataset, data_name: &str, validation: Option<Split>) -> Result<Self> {
        let c = config;
        if c.batch_size == 0 {
            bail!("--batch-size must be positive");
        }
        if !c.lr.is_finite() || c.lr < 0.0 {
            bail!("--lr must be a finite non-negative number, got {}", c.lr);
        }
        check_settings(c)?;
        let n = data.train.len();
        // A run of no steps (evaluating, or writing the initial weights) needs no training
        // data.
        let trains = c.budget != Budget::Steps(0);
        if trains && n < c.batch_size {
            bail!("the training set has {n} examples, fewer than one batch of {}", c.batch_size);
        }
        let steps_per_epoch = (n / c.batch_size).max(1);
        let total_steps = match c.budget {
            Budget::Epochs(e) => e.checked_mul(steps_per_epoch).with_context(|| format!("--epochs {e}: too many steps to count ({steps_per_epoch} per epoch)"))?,
            Budget::Steps(s) => s,
        };
        let opts = TraceOptions { batch_size: c.batch_size, input_shape: data.shape.to_vec(), classes: data.classes, seed: c.seed, ..TraceOptions::default() };
        let (traced, step, compiled) = crate::compile_with(&|o: &TraceOptions| model.trace(o), &opts, &c.optimizer, false, true).with_context(|| format!("compiling {}", model.name()))?;
        let mut b = initial_state(&traced, &step, c.seed)?;
        // Inputs to allocate the step with (each step sets its batch).
        b.set("input", "x", Tensor::from_f32(traced.graph.shape(traced.input).clone(), &vec![0.0; c.batch_size * data.dim()])?);
        b.set("input", "labels", Tensor::labels(&vec![0; c.batch_size]));
        b.set("scalar", "lr", scalar(c.lr));
        b.set("scalar", "rho", scalar(c.rho));
        b.set("scalar", "step", scalar(0.0));
        let runner = Runner::new(c.device, &compiled, &b).context("--device")?;
        let compiled = runner.compiled().cloned().unwrap_or(compiled);
        // Evaluation: the same arena, forward only, at the batch size and at the remainder
        // of every split it will see.
        let mut sizes = vec![c.batch_size];
        for len in [Some(data.test.len()), validation.as_ref().map(|v| v.len())].into_iter().flatten() {
            if len % c.batch_size != 0 {
                sizes.push(len % c.batch_size);
            }
        }
        sizes.sort_unstable();
        sizes.dedup();
        let mut eval = Evaluator { runners: BTreeMap::new(), opts: opts.clone(), template: b.clone() };
        for bs in sizes {
            eval.add(model, c.device, data, bs)?;
        }
        Ok(Trainer {
            model: model.clone(),
            config: c.clone(),
            identity: c.identity(model, data_name),
            data,
            validation,
            traced,
            arena: step.arena.clone(),
            compiled,
            runner,
            eval,
            step: 0,
            steps_per_epoch,
            total_steps,
            history: Vec::new(),
            progress: true,
        })
    }

    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    pub fn traced(&self) -> &TracedModel {
        &self.traced
    }

    /// Steps taken so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    pub fn steps_per_epoch(&self) -> usize {
        self.steps_per_epoch
    }

    /// Whether the budget is spent.
    pub fn finished(&self) -> bool {
        self.step >= self.total_steps
    }

    /// Runs until the end of the current epoch (or the budget); returns its metrics.
    pub fn train_epoch(&mut self) -> Result<EpochMetrics> {
        if self.finished() {
            bail!("the run's budget ({} steps) is spent: nothing left to train", self.total_steps);
        }
        let c = self.config.clone();
        let epoch = self.step / self.steps_per_epoch;
        let first = self.step % self.steps_per_epoch;
        let last = self.steps_per_epoch.min(first + (self.total_steps - self.step));
        let order = epoch_order(self.data.train.len(), c.seed, epoch as u64, c.shuffle);
        let bar = self.progress_bar(epoch, first, last);
        let start = Instant::now();
        let (mut loss_sum, mut acc_sum, mut seen) = (0.0, 0.0, 0usize);
        let mut lr = c.lr;
        for b in first..last {
            let idx = &order[b * c.batch_size..(b + 1) * c.batch_size];
            let aug = (!c.augment.is_none()).then_some((&c.augment, c.seed, epoch as u64, b as u64));
            let (x, y) = batch(&self.data.train, self.data.shape, idx, aug);
            self.runner.set_f32("input", "x", &x)?;
            self.runner.set("input", "labels", &Tensor::labels(&y))?;
            lr = c.schedule.lr(c.lr, self.step, self.total_steps);
            self.runner.set("scalar", "lr", &scalar(lr))?;
            self.runner.set("scalar", "step", &scalar(self.step as f64))?;
            let out = self.runner.step(&["loss", "accuracy"])?;
            let (loss, acc) = (out["loss"].item(), out["accuracy"].item());
            if !loss.is_finite() {
                bail!(NonFiniteLoss { step: self.step, epoch: epoch + 1, value: loss });
            }
            self.step += 1;
            loss_sum += loss;
            acc_sum += acc;
            seen += 1;
            if let Some(bar) = &bar {
                let rate = (seen * c.batch_size) as f64 / start.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("loss {:.4} acc {:.4} {:.0} ex/s", loss_sum / seen as f64, acc_sum / seen as f64, rate));
                bar.inc(1);
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        // Each step's loss is taken before its update: the epoch's last update is checked here.
        if let Some(what) = self.non_finite()? {
            bail!(NonFiniteWeights { step: self.step, epoch: epoch + 1, what });
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let data = self.data;
        self.sync_eval()?;
        let (test_loss, test_accuracy) = self.evaluate_synced(&data.test)?;
        let validation = match self.validation.take() {
            Some(v) => {
                let r = self.evaluate_synced(&v);
                self.validation = Some(v);
                Some(r?)
            }
            None => None,
        };
        for (split, loss) in [("test", Some(test_loss)), ("validation", validation.map(|v| v.0))] {
            if let Some(l) = loss.filter(|l| !l.is_finite()) {
                bail!("the {split} loss is {l} after step {} (epoch {}); training stopped", self.step, epoch + 1);
            }
        }
        // A run resumed within an epoch: the steps before the checkpoint count in its figures,
        // so the epoch is one row, as an uninterrupted run gives it.
        let mut seconds = train_seconds;
        let mut before = Vec::new();
        while first > 0 && self.history.last().is_some_and(|h| h.epoch == epoch + 1) {
            before.push(self.history.pop().expect("checked above"));
        }
        // Each row covers the steps since the one before it (or since the epoch began).
        let mut at = epoch * self.steps_per_epoch;
        for row in before.into_iter().rev() {
            let n = row.step.saturating_sub(at) as f64;
            loss_sum += row.train_loss * n;
            acc_sum += row.train_accuracy * n;
            seen += n as usize;
            seconds += row.seconds;
            at = row.step;
        }
        let m = EpochMetrics {
            epoch: epoch + 1,
            step: self.step,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: acc_sum / seen.max(1) as f64,
            test_loss,
            test_accuracy,
            validation_loss: validation.map(|v| v.0),
            validation_accuracy: validation.map(|v| v.1),
            seconds,
            partial: self.step % self.steps_per_epoch != 0,
        };
        self.history.push(m.clone());
        Ok(m)
    }

    fn progress_bar(&self, epoch: usize, first: usize, last: usize) -> Option<indicatif::ProgressBar> {
        if !self.progress {
            return None;
        }
        let epochs = self.total_steps.div_ceil(self.steps_per_epoch);
        let bar = indicatif::ProgressBar::new((last - first) as u64);
        let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}").expect("invariant: a valid template").progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
        Some(bar)
    }

    /// Mean loss and accuracy over `split` with the current weights (evaluation mode).
    pub fn evaluate(&mut self, split: &Split) -> Result<(f64, f64)> {
        self.sync_eval()?;
        self.evaluate_synced(split)
    }

    /// Copies the current parameters and BatchNorm statistics into the evaluation programs.
    fn sync_eval(&mut self) -> Result<()> {
        let mut leaves = vec![("param", "params".to_string())];
        leaves.extend(self.traced.states.iter().map(|s| ("state", s.name.clone())));
        let values: Vec<(&str, String, Tensor)> = leaves.into_iter().map(|(k, n)| Ok((k, n.clone(), self.runner.get(k, &n)?))).collect::<Result<_>>()?;
        for r in self.eval.runners.values_mut() {
            for (k, n, v) in &values {
                r.set(k, n, v)?;
            }
        }
        Ok(())
    }

    /// [`Trainer::evaluate`] with the evaluation programs already holding the weights.
    fn evaluate_synced(&mut self, split: &Split) -> Result<(f64, f64)> {
        let bs = self.config.batch_size;
        let (mut loss, mut acc) = (0.0, 0.0);
        let n = split.len();
        let mut at = 0;
        while at < n {
            let size = bs.min(n - at);
            let idx: Vec<usize> = (at..at + size).collect();
            let (x, y) = batch(split, self.data.shape, &idx, None);
            if !self.eval.runners.contains_key(&size) {
                // A split whose last batch no program was compiled for: compile it now, with
                // the current weights.
                self.eval.add(&self.model, self.config.device, self.data, size)?;
                self.sync_eval()?;
            }
            let r = self.eval.runners.get_mut(&size).expect("invariant: compiled above");
            r.set_f32("input", "x", &x)?;
            r.set("input", "labels", &Tensor::labels(&y))?;
            let out = r.step(&["loss", "accuracy"])?;
            loss += out["loss"].item() * size as f64;
            acc += out["accuracy"].item() * size as f64;
            at += size;
        }
        Ok((loss / n.max(1) as f64, acc / n.max(1) as f64))
    }

    /// The model's `state_dict`: parameters and BatchNorm buffers under PyTorch's names
    /// and layouts (`num_batches_tracked` counts the steps taken).
    pub fn state_dict(&self) -> Result<Vec<TensorEntry>> {
        let arena = self.runner.get("param", "params")?.to_f32();
        let mut out = Vec::new();
        for (slot, p) in self.arena.slots.iter().zip(&self.traced.params) {
            debug_assert_eq!(slot.name, p.name);
            out.push(TensorEntry::f32(&slot.name, &slot.shape.0, arena[slot.offset..slot.offset + slot.shape.numel()].to_vec()));
        }
        for s in &self.traced.states {
            out.push(TensorEntry::f32(&s.name, &s.shape.0, self.runner.get("state", &s.name)?.to_f32()));
            if let Some(module) = s.name.strip_suffix(".running_var") {
                out.push(TensorEntry::i64(&format!("{module}.num_batches_tracked"), self.step as i64));
            }
        }
        Ok(out)
    }

    /// The first parameter, BatchNorm buffer or optimizer state holding a value that is not a
    /// finite number (`` `name` holds NaN at index i ``), if any.
    fn non_finite(&self) -> Result<Option<String>> {
        let at = |name: &str, v: &[f32]| v.iter().position(|x| !x.is_finite()).map(|i| format!("`{name}` holds {} at index {i}", v[i]));
        let arena = self.runner.get("param", "params")?.to_f32();
        for slot in &self.arena.slots {
            if let Some(w) = at(&slot.name, &arena[slot.offset..slot.offset + slot.shape.numel()]) {
                return Ok(Some(w));
            }
        }
        for st in &self.traced.states {
            if let Some(w) = at(&st.name, &self.runner.get("state", &st.name)?.to_f32()) {
                return Ok(Some(w));
            }
        }
        for st in self.config.optimizer.base.state_names() {
            let v = self.runner.get("state", st)?.to_f32();
            for slot in &self.arena.slots {
                if let Some(w) = at(&format!("optimizer.{st}.{}", slot.name), &v[slot.offset..slot.offset + slot.shape.numel()]) {
                    return Ok(Some(w));
                }
            }
        }
        Ok(None)
    }

    /// Fails naming the first weight that is not a finite number: nothing such is written.
    fn ensure_finite(&self, path: &Path) -> Result<()> {
        match self.non_finite()? {
            Some(what) => bail!("{} not written: {what} after step {}", path.display(), self.step),
            None => Ok(()),
        }
    }

    /// Loads parameters and BatchNorm statistics from a `state_dict` (`--init`): every name
    /// must be present with its shape; nothing is changed unless all are.
    pub fn load_state_dict(&mut self, path: &Path) -> Result<()> {
        self.load_state_dict_from(&Checkpoint::read(path)?, path)
    }

    /// [`Trainer::load_state_dict`] from a file already read (`path` names it in errors).
    pub fn load_state_dict_from(&mut self, file: &Checkpoint, path: &Path) -> Result<()> {
        let mut arena = vec![0f32; self.arena.len];
        let mut expected: Vec<(String, Vec<usize>)> = self.arena.slots.iter().map(|s| (s.name.clone(), s.shape.0.clone())).collect();
        expected.extend(self.traced.states.iter().map(|s| (s.name.clone(), s.shape.0.clone())));
        let known: std::collections::BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(extra) = file.names().find(|n| !known.contains(n.as_str()) && !n.ends_with(".num_batches_tracked") && !n.starts_with("optimizer.")) {
            bail!("{}: unexpected tensor `{extra}`: {} has no such parameter or buffer", path.display(), self.model.name());
        }
        // Every value a finite number: a NaN weight would otherwise be trained on (ReLU maps it
        // to 0) and written out again.
        let finite = |name: &str, v: Vec<f32>| -> Result<Vec<f32>> {
            match v.iter().position(|x| !x.is_finite()) {
                Some(i) => bail!("{}: `{name}` holds {} at index {i}; weights must be finite numbers", path.display(), v[i]),
                None => Ok(v),
            }
        };
        // A shape that does not fit, from weights trained on other data: say so.
        let meta = file.metadata();
        let fit = |r: Result<Vec<f32>>| {
            r.map_err(|e| match (meta.get("input"), meta.get("classes")) {
                (Some(input), Some(classes)) if (input.as_str(), classes.as_str()) != (input_name(self.data).as_str(), self.data.classes.to_string().as_str()) => {
                    let source = meta.get("data").map(|d| format!(" ({d})")).unwrap_or_default();
                    anyhow::anyhow!("{e}: the file holds weights for {input} inputs in {classes} classes{source}, the data here is {} in {}; pass the --data they were trained on", input_name(self.data), self.data.classes)
                }
                _ => e,
            })
        };
        for slot in &self.arena.slots {
            let data = finite(&slot.name, fit(file.f32(&slot.name, &slot.shape.0))?)?;
            arena[slot.offset..slot.offset + data.len()].copy_from_slice(&data);
        }
        let mut states = Vec::new();
        for s in &self.traced.states {
            states.push((s.name.clone(), Tensor::from_f32(s.shape.clone(), &finite(&s.name, fit(file.f32(&s.name, &s.shape.0))?)?)?));
        }
        self.runner.set("param", "params", &Tensor::from_f32([self.arena.len], &arena)?)?;
        for (n, t) in states {
            self.runner.set("state", &n, &t)?;
        }
        Ok(())
    }

    /// What every file written names: the format, the model, the pixels' normalization when
    /// there is one (`eval` applies it), and the data it was trained on (its source, input
    /// shape and classes: named when the weights do not fit another dataset's model).
    fn file_metadata(&self) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::from([("format".to_string(), "pt".to_string()), ("model".to_string(), self.model.name().to_string())]);
        if let Some((mean, std)) = self.data.normalize {
            meta.insert("normalize".to_string(), format!("{mean},{std}"));
        }
        if let Some(data) = self.identity.get("data").and_then(|d| d.as_str()).filter(|d| !d.is_empty()) {
            meta.insert("data".to_string(), data.to_string());
        }
        meta.insert("input".to_string(), input_name(self.data));
        meta.insert("classes".to_string(), self.data.classes.to_string());
        meta
    }

    /// Writes the `state_dict` to `path` as safetensors (atomically).
    pub fn save_state_dict(&self, path: &Path) -> Result<()> {
        self.ensure_finite(path)?;
        checkpoint::write_atomic(path, &self.state_dict()?, self.file_metadata())
    }

    /// A full checkpoint: the `state_dict`, the optimizer state per parameter
    /// (`optimizer.<state>.<name>`), the step and the run's identity.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf> {
        let mut tensors = self.state_dict()?;
        for st in self.config.optimizer.base.state_names() {
            let v = self.runner.get("state", st)?.to_f32();
            for slot in &self.arena.slots {
                tensors.push(TensorEntry::f32(&format!("optimizer.{st}.{}", slot.name), &slot.shape.0, v[slot.offset..slot.offset + slot.shape.numel()].to_vec()));
            }
        }
        let mut meta = self.file_metadata();
        meta.extend([
            ("plateau_checkpoint".to_string(), "1".to_string()),
            ("step".to_string(), self.step.to_string()),
            ("epoch".to_string(), (self.step / self.steps_per_epoch).to_string()),
            ("run".to_string(), self.identity.to_string()),
            ("history".to_string(), serde_json::to_string(&self.history)?),
        ]);
        std::fs::create_dir_all(dir).with_context(|| format!("--checkpoint-dir: cannot create {}", dir.display()))?;
        let path = dir.join(format!("step-{:08}.safetensors", self.step));
        self.ensure_finite(&path)?;
        checkpoint::write_atomic(&path, &tensors, meta)?;
        Ok(path)
    }

    /// Restores a checkpoint written by `save_checkpoint` for the same run.
    pub fn resume(&mut self, path: &Path) -> Result<()> {
        let file = Checkpoint::read(path)?;
        let meta = file.metadata();
        if meta.get("plateau_checkpoint").map(String::as_str) != Some("1") {
            bail!("{}: not a plateau checkpoint (a state_dict? use --init)", path.display());
        }
        let run: serde_json::Value = serde_json::from_str(meta.get("run").map(String::as_str).unwrap_or("null"))?;
        let now = self.config.identity_as(&self.identity, &run);
        if run != now {
            bail!("{}: written by a different run ({})", path.display(), identity_diff(&run, &now).join("; "));
        }
        let step: usize = meta.get("step").and_then(|s| s.parse().ok()).with_context(|| format!("{}: no step in the metadata", path.display()))?;
        let history: Vec<EpochMetrics> = serde_json::from_str(meta.get("history").map(String::as_str).unwrap_or("[]"))?;
        let mut opt = Vec::new();
        for st in self.config.optimizer.base.state_names() {
            let mut v = vec![0f32; self.arena.len];
            for slot in &self.arena.slots {
                let d = file.f32(&format!("optimizer.{st}.{}", slot.name), &slot.shape.0)?;
                v[slot.offset..slot.offset + d.len()].copy_from_slice(&d);
            }
            opt.push((st, Tensor::from_f32([self.arena.len], &v)?));
        }
        self.load_state_dict_from(&file, path)?;
        for (st, t) in opt {
            self.runner.set("state", st, &t)?;
        }
        self.step = step;
        self.history = history;
        Ok(())
    }
}

/// The optimizer settings a step can run with, each named with its flag (the CLI checks them
/// by flag before; a program using the library gets the same errors here).
fn check_settings(c: &TrainConfig) -> Result<()> {
    let number = |what: &str, v: f64| -> Result<()> {
        if !v.is_finite() || v < 0.0 || v > f32::MAX as f64 {
            bail!("{what} must be a finite non-negative number an f32 holds, got {v}");
        }
        Ok(())
    };
    number("rho (--rho)", c.rho)?;
    match c.optimizer.base {
        crate::BaseOptimizer::Sgd { momentum, nesterov, weight_decay } => {
            number("momentum (--momentum)", momentum)?;
            number("weight_decay (--weight-decay)", weight_decay)?;
            if nesterov && momentum == 0.0 {
                bail!("nesterov (--nesterov) needs a momentum above 0");
            }
        }
        crate::BaseOptimizer::AdamW { beta1, beta2, eps, weight_decay } => {
            for (what, b) in [("beta1", beta1), ("beta2", beta2)] {
                if !(0.0..1.0).contains(&b) {
                    bail!("AdamW's {what} must be in [0, 1), got {b}");
                }
            }
            if !(eps.is_finite() && eps > 0.0) {
                bail!("AdamW's eps must be a finite positive number, got {eps}");
            }
            number("weight_decay (--weight-decay)", weight_decay)?;
        }
    }
    if let Some(sam) = &c.optimizer.sam {
        if sam.ascent_steps == 0 {
            bail!("ascent_steps (--ascent-steps) must be at least 1");
        }
        if let Some(eta) = sam.adaptive {
            number("ASAM's eta (--eta)", eta)?;
        }
        if let Some(m) = sam.micro_batch.filter(|&m| m == 0 || c.batch_size % m != 0) {
            bail!("micro_batch (--m) {m} must divide the batch size {}", c.batch_size);
        }
    }
    Ok(())
}

/// A dataset's input shape as files record it: `C x H x W`.
fn input_name(d: &Dataset) -> String {
    d.shape.map(|v| v.to_string()).join("x")
}

/// Training stopped on a loss that is not a finite number.
#[derive(Debug, thiserror::Error)]
#[error("the loss is {value} at step {step} (epoch {epoch}); training stopped")]
pub struct NonFiniteLoss {
    pub step: usize,
    pub epoch: usize,
    pub value: f64,
}

/// Training stopped on weights that are no longer finite numbers after an update.
#[derive(Debug, thiserror::Error)]
#[error("after step {step} (epoch {epoch}) {what}: the update left the weights non-finite; training stopped")]
pub struct NonFiniteWeights {
    pub step: usize,
    pub epoch: usize,
    pub what: String,
}

/// The newest checkpoint in `dir` (the highest step), if any.
pub fn newest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e?.path();
        let step = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse::<usize>().ok());
        if let Some(s) = step {
            if best.as_ref().is_none_or(|(b, _)| s > *b) {
                best = Some((s, p));
            }
        }
    }
    Ok(best.map(|b| b.1))
}

/// Evaluation mode for a bare state_dict or checkpoint file: loads it into `model` and
/// returns the mean loss and accuracy on `split`.
pub fn evaluate_file(model: &Model, data: &Dataset, split: &Split, path: &Path, batch_size: usize, device: Backend) -> Result<(f64, f64)> {
    evaluate_checkpoint(model, data, split, &Checkpoint::read(path)?, path, batch_size, device)
}

/// [`evaluate_file`] for a file already read (`path` names it in errors).
pub fn evaluate_checkpoint(model: &Model, data: &Dataset, split: &Split, file: &Checkpoint, path: &Path, batch_size: usize, device: Backend) -> Result<(f64, f64)> {
    let config = TrainConfig {
        optimizer: OptimizerSpec { base: crate::BaseOptimizer::sgd(0.0, 0.0), sam: None },
        rho: 0.0,
        lr: 0.0,
        schedule: LrSchedule::Constant,
        batch_size: batch_size.min(split.len()).max(1),
        budget: Budget::Steps(0),
        seed: 0,
        device,
        augment: Augment::none(),
        shuffle: false,
    };
    let mut t = Trainer::new(model, &config, data, "", None)?;
    t.load_state_dict_from(file, path)?;
    t.evaluate(split)
}
