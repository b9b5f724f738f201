//! The model zoo: MLP, a small CNN, CIFAR ResNet-18 and WRN-16-k, each named as the
//! equivalent torch.nn model names its `state_dict`.

use crate::error::{FrontendError, Result};
use crate::layers::{BatchNorm, Conv2d, Flatten, GlobalAvgPool, Layer, Linear, MaxPool2d, ReLU, Sequential};
use crate::loss::{accuracy, softmax_cross_entropy};
use crate::tracer::{ParamSpec, StateSpec, Tracer, Var};
use plateau_compiler::ir::OutputKind;
use plateau_compiler::{differentiate, DType, Graph, LossModel, NodeId};
use std::fmt;
use std::panic::Location;
use std::str::FromStr;

/// A model of the zoo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// `nn.Sequential(Linear, ReLU, ..., Linear)` on the flattened input.
    Mlp { hidden: Vec<usize> },
    /// `nn.Sequential(Conv2d(C,32,3,p=1), ReLU, MaxPool2d(2), Conv2d(32,64,3,p=1), ReLU,
    /// MaxPool2d(2), Flatten, Linear(64*H/4*W/4, 128), ReLU, Linear(128, K))`.
    Cnn,
    /// torchvision's `resnet18` with the CIFAR stem (3x3 stride-1 `conv1`, no max pool).
    ResNet18,
    /// Wide ResNet 16-k (Zagoruyko & Komodakis), pre-activation blocks.
    Wrn16 { k: usize },
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec::Mlp { hidden: vec![256, 256] }
    }
}

impl FromStr for ModelSpec {
    type Err = FrontendError;

    /// `mlp`, `cnn`, `resnet18`, `wrn16-K`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mlp" => Ok(ModelSpec::default()),
            "cnn" => Ok(ModelSpec::Cnn),
            "resnet18" => Ok(ModelSpec::ResNet18),
            _ => match s.strip_prefix("wrn16-").map(str::parse::<usize>) {
                Some(Ok(k)) if k >= 1 => Ok(ModelSpec::Wrn16 { k }),
                _ => Err(FrontendError::UnknownModel(s.to_string())),
            },
        }
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Mlp { .. } => f.write_str("mlp"),
            ModelSpec::Cnn => f.write_str("cnn"),
            ModelSpec::ResNet18 => f.write_str("resnet18"),
            ModelSpec::Wrn16 { k } => write!(f, "wrn16-{k}"),
        }
    }
}

/// What to trace: batch, example shape, classes, precision and mode.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceOptions {
    pub batch_size: usize,
    /// Shape of one example, e.g. `[1, 28, 28]`.
    pub input_shape: Vec<usize>,
    pub classes: usize,
    pub dtype: DType,
    pub training: bool,
    pub label_smoothing: f64,
    /// The run's seed, which seeds dropout masks (with the layer and the step).
    pub seed: u64,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            batch_size: 128,
            input_shape: vec![1, 28, 28],
            classes: 10,
            dtype: DType::F32,
            training: true,
            label_smoothing: 0.0,
            seed: 0,
        }
    }
}

/// A traced model: the forward and loss graph and what it declared.
#[derive(Debug)]
pub struct TracedModel {
    pub graph: Graph,
    /// Input `x`, shaped `[batch, ...input_shape]`.
    pub input: NodeId,
    /// Input `labels`, `i32[batch]`.
    pub labels: NodeId,
    pub logits: NodeId,
    /// Output `loss`: mean cross-entropy.
    pub loss: NodeId,
    /// Output `accuracy`.
    pub accuracy: NodeId,
    pub params: Vec<ParamSpec>,
    pub states: Vec<StateSpec>,
}

impl TracedModel {
    /// Appends the backward pass: the gradient of `loss` with respect to every parameter,
    /// each declared as output `grad:<name>`. Returns the gradient nodes in parameter order.
    #[track_caller]
    pub fn differentiate(&mut self) -> Result<Vec<NodeId>> {
        let at = Location::caller();
        let wrt: Vec<NodeId> = self.params.iter().map(|p| p.node).collect();
        let grads = differentiate(&mut self.graph, self.loss, &wrt).map_err(|e| FrontendError::op(e, at))?;
        for (p, &g) in self.params.iter().zip(&grads) {
            self.graph
                .add_output(format!("grad:{}", p.name), g, OutputKind::Value)
                .map_err(|e| FrontendError::op(e, at))?;
        }
        Ok(grads)
    }

    /// The forward and loss graph as the step builder takes it.
    pub fn loss_model(&self) -> LossModel {
        LossModel {
            graph: self.graph.clone(),
            loss: self.loss,
            accuracy: self.accuracy,
            params: self.params.iter().map(|p| p.node).collect(),
            input: self.input,
            labels: self.labels,
        }
    }

    /// Number of trainable scalars.
    pub fn param_count(&self) -> usize {
        self.params.iter().map(|p| p.shape.numel()).sum()
    }
}

/// Traces `model` with a cross-entropy loss into a graph with outputs `loss`, `accuracy`
/// and, in training, the BatchNorm running-statistics updates.
#[track_caller]
pub fn trace(model: &ModelSpec, opts: &TraceOptions) -> Result<TracedModel> {
    trace_with(opts, |tr, x| build(tr, model, opts)?.forward(tr, x))
}

/// Traces a model written as a function from the input batch to the logits, with the
/// cross-entropy loss (label smoothing from `opts`) and accuracy the zoo models get.
#[track_caller]
pub fn trace_with(opts: &TraceOptions, logits: impl FnOnce(&mut Tracer, Var) -> Result<Var>) -> Result<TracedModel> {
    let at = Location::caller();
    if opts.batch_size == 0 || opts.classes == 0 || opts.input_shape.contains(&0) {
        return Err(FrontendError::config(
            "trace options",
            format!(
                "batch size {}, classes {} and input shape {:?} must all be positive",
                opts.batch_size, opts.classes, opts.input_shape
            ),
            at,
        ));
    }
    let mut tr = Tracer::new(opts.dtype, opts.training).with_seed(opts.seed);
    let mut shape = vec![opts.batch_size];
    shape.extend(&opts.input_shape);
    let x = tr.input("x", shape)?;
    let labels = tr.labels("labels", opts.batch_size)?;
    let logits = logits(&mut tr, x)?;
    let loss = softmax_cross_entropy(&mut tr, logits, labels, opts.label_smoothing)?;
    let acc = accuracy(&mut tr, logits, labels)?;
    tr.output("loss", loss)?;
    tr.output("accuracy", acc)?;
    let (graph, params, states) = tr.finish();
    Ok(TracedModel { graph, input: x.0, labels: labels.0, logits: logits.0, loss: loss.0, accuracy: acc.0, params, states })
}

/// Declares the parameters of `model` and returns it as a layer.
#[track_caller]
pub fn build(tr: &mut Tracer, model: &ModelSpec, opts: &TraceOptions) -> Result<Box<dyn Layer>> {
    let at = Location::caller();
    let k = opts.classes;
    Ok(match model {
        ModelSpec::Mlp { hidden } => {
            let features: usize = opts.input_shape.iter().product();
            let mut seq = Sequential::new();
            let mut width = features;
            for &h in hidden {
                let l = Linear::new(tr, &seq.next_name(), width, h, true)?;
                seq.push(l).push(ReLU);
                width = h;
            }
            let l = Linear::new(tr, &seq.next_name(), width, k, true)?;
            seq.push(l);
            Box::new(FlattenThen(seq))
        }
        ModelSpec::Cnn => {
            let (c, h, w) = chw(opts, at)?;
            let mut seq = Sequential::new();
            let c1 = Conv2d::new(tr, &seq.next_name(), c, 32, 3, 1, 1, true)?;
            seq.push(c1).push(ReLU).push(MaxPool2d { kernel: 2, stride: 2, padding: 0 });
            let c2 = Conv2d::new(tr, &seq.next_name(), 32, 64, 3, 1, 1, true)?;
            seq.push(c2).push(ReLU).push(MaxPool2d { kernel: 2, stride: 2, padding: 0 }).push(Flatten);
            let f1 = Linear::new(tr, &seq.next_name(), 64 * (h / 4) * (w / 4), 128, true)?;
            seq.push(f1).push(ReLU);
            let f2 = Linear::new(tr, &seq.next_name(), 128, k, true)?;
            seq.push(f2);
            Box::new(seq)
        }
        ModelSpec::ResNet18 => {
            let (c, _, _) = chw(opts, at)?;
            Box::new(ResNet18::new(tr, c, k)?)
        }
        ModelSpec::Wrn16 { k: width } => {
            let (c, _, _) = chw(opts, at)?;
            Box::new(WideResNet::new(tr, 16, *width, c, k)?)
        }
    })
}

fn chw(opts: &TraceOptions, at: &'static Location<'static>) -> Result<(usize, usize, usize)> {
    match opts.input_shape[..] {
        [c, h, w] if h >= 4 && w >= 4 => Ok((c, h, w)),
        _ => Err(FrontendError::config(
            "model",
            format!("convolutional models need [C,H,W] inputs of at least 4x4, got {:?}", opts.input_shape),
            at,
        )),
    }
}

/// The MLP flattens its input before the first Linear (`model(x.flatten(1))` in PyTorch),
/// so flattening adds no child and the Linear layers keep indices 0, 2, 4, ...
struct FlattenThen(Sequential);

impl Layer for FlattenThen {
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        let x = Flatten.forward(tr, x)?;
        self.0.forward(tr, x)
    }
}

/// torchvision's `BasicBlock`: conv-bn-relu-conv-bn plus the (projected) input, then ReLU.
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    /// Declares the block's parameters under scope `name` (e.g. `layer2.0`).
    pub fn new(tr: &mut Tracer, name: &str, inp: usize, out: usize, stride: usize) -> Result<Self> {
        tr.scoped(name, |tr| {
            let conv1 = Conv2d::new(tr, "conv1", inp, out, 3, stride, 1, false)?;
            let bn1 = BatchNorm::new(tr, "bn1", out)?;
            let conv2 = Conv2d::new(tr, "conv2", out, out, 3, 1, 1, false)?;
            let bn2 = BatchNorm::new(tr, "bn2", out)?;
            let downsample = if stride != 1 || inp != out {
                Some(tr.scoped("downsample", |tr| {
                    Ok((Conv2d::new(tr, "0", inp, out, 1, stride, 0, false)?, BatchNorm::new(tr, "1", out)?))
                })?)
            } else {
                None
            };
            Ok(BasicBlock { conv1, bn1, conv2, bn2, downsample })
        })
    }
}

impl Layer for BasicBlock {
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        let y = self.conv1.forward(tr, x)?;
        let y = self.bn1.forward(tr, y)?;
        let y = tr.relu(y)?;
        let y = self.conv2.forward(tr, y)?;
        let y = self.bn2.forward(tr, y)?;
        let identity = match &self.downsample {
            Some((conv, bn)) => {
                let s = conv.forward(tr, x)?;
                bn.forward(tr, s)?
            }
            None => x,
        };
        let y = tr.add(y, identity)?;
        tr.relu(y)
    }
}

/// ResNet-18 for 32x32 inputs with torchvision's names (`conv1`, `bn1`, `layer1.0.conv1`,
/// `layer2.0.downsample.0`, `fc`).
pub struct ResNet18 {
    conv1: Conv2d,
    bn1: BatchNorm,
    blocks: Vec<BasicBlock>,
    fc: Linear,
}

impl ResNet18 {
    pub fn new(tr: &mut Tracer, channels: usize, classes: usize) -> Result<Self> {
        let conv1 = Conv2d::new(tr, "conv1", channels, 64, 3, 1, 1, false)?;
        let bn1 = BatchNorm::new(tr, "bn1", 64)?;
        let mut blocks = Vec::new();
        let mut inp = 64;
        for (i, (width, stride)) in [(64, 1), (128, 2), (256, 2), (512, 2)].into_iter().enumerate() {
            for j in 0..2 {
                let s = if j == 0 { stride } else { 1 };
                blocks.push(BasicBlock::new(tr, &format!("layer{}.{}", i + 1, j), inp, width, s)?);
                inp = width;
            }
        }
        let fc = Linear::new(tr, "fc", 512, classes, true)?;
        Ok(ResNet18 { conv1, bn1, blocks, fc })
    }
}

impl Layer for ResNet18 {
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        let y = self.conv1.forward(tr, x)?;
        let y = self.bn1.forward(tr, y)?;
        let mut y = tr.relu(y)?;
        for b in &self.blocks {
            y = b.forward(tr, y)?;
        }
        let y = GlobalAvgPool.forward(tr, y)?;
        self.fc.forward(tr, y)
    }
}

/// A pre-activation wide block: bn-relu-conv-bn-relu-conv plus the input (or a 1x1
/// projection of the activated input when the width or stride changes).
struct WideBlock {
    bn1: BatchNorm,
    conv1: Conv2d,
    bn2: BatchNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl WideBlock {
    fn new(tr: &mut Tracer, name: &str, inp: usize, out: usize, stride: usize) -> Result<Self> {
        tr.scoped(name, |tr| {
            Ok(WideBlock {
                bn1: BatchNorm::new(tr, "bn1", inp)?,
                conv1: Conv2d::new(tr, "conv1", inp, out, 3, stride, 1, false)?,
                bn2: BatchNorm::new(tr, "bn2", out)?,
                conv2: Conv2d::new(tr, "conv2", out, out, 3, 1, 1, false)?,
                shortcut: if inp != out || stride != 1 {
                    Some(Conv2d::new(tr, "convShortcut", inp, out, 1, stride, 0, false)?)
                } else {
                    None
                },
            })
        })
    }
}

impl Layer for WideBlock {
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        let a = self.bn1.forward(tr, x)?;
        let a = tr.relu(a)?;
        let y = self.conv1.forward(tr, a)?;
        let y = self.bn2.forward(tr, y)?;
        let y = tr.relu(y)?;
        let y = self.conv2.forward(tr, y)?;
        let skip = match &self.shortcut {
            Some(conv) => conv.forward(tr, a)?,
            None => x,
        };
        tr.add(skip, y)
    }
}

/// WRN-depth-k with the common PyTorch names (`conv1`, `block1.layer.0.bn1`,
/// `block2.layer.0.convShortcut`, `bn1`, `fc`).
pub struct WideResNet {
    conv1: Conv2d,
    blocks: Vec<WideBlock>,
    bn: BatchNorm,
    fc: Linear,
}

impl WideResNet {
    #[track_caller]
    pub fn new(tr: &mut Tracer, depth: usize, k: usize, channels: usize, classes: usize) -> Result<Self> {
        let at = Location::caller();
        if depth < 10 || (depth - 4) % 6 != 0 || k == 0 {
            return Err(FrontendError::config("WideResNet", format!("depth {depth} must be 6n+4 and k {k} positive"), at));
        }
        let n = (depth - 4) / 6;
        let widths = [16, 16 * k, 32 * k, 64 * k];
        let conv1 = Conv2d::new(tr, "conv1", channels, widths[0], 3, 1, 1, false)?;
        let mut blocks = Vec::new();
        for g in 0..3 {
            for i in 0..n {
                let inp = if i == 0 { widths[g] } else { widths[g + 1] };
                let stride = if i == 0 && g > 0 { 2 } else { 1 };
                blocks.push(WideBlock::new(tr, &format!("block{}.layer.{}", g + 1, i), inp, widths[g + 1], stride)?);
            }
        }
        let bn = BatchNorm::new(tr, "bn1", widths[3])?;
        let fc = Linear::new(tr, "fc", widths[3], classes, true)?;
        Ok(WideResNet { conv1, blocks, bn, fc })
    }
}

impl Layer for WideResNet {
    fn forward(&self, tr: &mut Tracer, x: Var) -> Result<Var> {
        let mut y = self.conv1.forward(tr, x)?;
        for b in &self.blocks {
            y = b.forward(tr, y)?;
        }
        let y = self.bn.forward(tr, y)?;
        let y = tr.relu(y)?;
        let y = GlobalAvgPool.forward(tr, y)?;
        self.fc.forward(tr, y)
    }
}
