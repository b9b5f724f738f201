//! A custom layer stack — two convolution blocks with BatchNorm, a residual connection,
//! max pooling and a linear head — trained with ASAM (adaptive SAM) on the
//! embedded synthetic dataset, then saved as PyTorch-named safetensors and evaluated again
//! from the file.
//!
//! `cargo run --release --example asam_custom [-- --steps N]`

use plateau::frontend::layers::{BatchNorm, Conv2d, Flatten, Layer, Linear, MaxPool2d};
use plateau::frontend::{trace_with, Tracer, Var};
use plateau::runtime::data::{Augment, DataSource, Dataset};
use plateau::runtime::Backend;
use plateau::train::{evaluate_file, Budget, LrSchedule, Model, TrainConfig, Trainer};
use plateau::{BaseOptimizer, OptimizerSpec, Sam};

/// conv 3x3 -> BatchNorm -> ReLU, named like `nn.Sequential(Conv2d, BatchNorm2d, ReLU)`.
fn block(
    tr: &mut Tracer,
    name: &str,
    x: Var,
    c_in: usize,
    c_out: usize,
) -> plateau::frontend::Result<Var> {
    let conv = Conv2d::new(tr, &format!("{name}.0"), c_in, c_out, 3, 1, 1, false)?;
    let bn = BatchNorm::new(tr, &format!("{name}.1"), c_out)?;
    let y = conv.forward(tr, x)?;
    let y = bn.forward(tr, y)?;
    tr.relu(y)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps = match args.iter().position(|a| a == "--steps") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--steps takes a number"))?,
        None => 64,
    };
    let model = Model::custom("conv-residual", |opts| {
        let (channels, classes) = (opts.input_shape[0], opts.classes);
        let pooled = (opts.input_shape[1] / 4) * (opts.input_shape[2] / 4);
        Ok(trace_with(opts, |tr, x| {
            let pool = MaxPool2d {
                kernel: 2,
                stride: 2,
                padding: 0,
            };
            let a = block(tr, "stem", x, channels, 8)?;
            let a = pool.forward(tr, a)?;
            let b = block(tr, "body", a, 8, 8)?;
            let r = tr.add(a, b)?; // the residual connection
            let r = pool.forward(tr, r)?;
            let r = Flatten.forward(tr, r)?;
            let head = Linear::new(tr, "head", 8 * pooled, classes, true)?;
            head.forward(tr, r)
        })?)
    });
    let data = Dataset::load(&DataSource::Synthetic, None)?;
    // ASAM: the perturbation is scaled per weight by |w| + eta; its radius is larger than SAM's.
    let asam = Sam {
        adaptive: Some(0.01),
        ..Sam::default()
    };
    let config = TrainConfig {
        optimizer: OptimizerSpec {
            base: BaseOptimizer::sgd(0.9, 5e-4),
            sam: Some(asam),
        },
        rho: 0.5,
        lr: 0.05,
        schedule: LrSchedule::Constant,
        batch_size: 64,
        budget: Budget::Steps(steps),
        seed: 1,
        device: Backend::Reference,
        augment: Augment {
            pad_crop: 1,
            flip: false,
            cutout: 0,
        },
        shuffle: true,
    };
    let mut trainer = Trainer::new(&model, &config, &data, "synthetic", None)?;
    let s = &trainer.compiled().schedule;
    println!(
        "ASAM step of {}: {} kernel launches, {} in the optimizer",
        model.name(),
        s.launches,
        s.optimizer_launches
    );
    while !trainer.finished() {
        let m = trainer.train_epoch()?;
        println!(
            "epoch {} (step {}): train loss {:.4}, test accuracy {:.4}",
            m.epoch, m.step, m.train_loss, m.test_accuracy
        );
    }
    let dir = std::env::temp_dir().join(format!("plateau-asam-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("conv-residual.safetensors");
    trainer.save_state_dict(&path)?;
    let names: Vec<String> = trainer.state_dict()?.into_iter().map(|t| t.name).collect();
    println!(
        "saved {} tensors to {}: {}",
        names.len(),
        path.display(),
        names.join(", ")
    );
    let (loss, accuracy) = evaluate_file(&model, &data, &data.test, &path, 64, Backend::Reference)?;
    println!("reloaded from the file: test loss {loss:.4}, test accuracy {accuracy:.4}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
