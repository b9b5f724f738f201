//! A model written with the DSL, compiled (its fused kernel schedule printed), trained on MNIST
//! with SAM, and evaluated.
//!
//! `cargo run --release --example mnist_sam [-- --epochs N]`
//!
//! The digits come from `PLATEAU_MNIST_DIR` (see `scripts/fetch-mnist.sh`); without it the
//! example says so and trains on the embedded synthetic dataset instead.

use plateau::frontend::layers::{Flatten, Layer, Linear};
use plateau::frontend::trace_with;
use plateau::runtime::data::{Augment, DataSource, Dataset};
use plateau::runtime::Backend;
use plateau::train::{Budget, LrSchedule, Model, TrainConfig, Trainer};
use plateau::{BaseOptimizer, OptimizerSpec, Sam};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let epochs = match args.iter().position(|a| a == "--epochs") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--epochs takes a number"))?,
        None => 2,
    };
    let source = match std::env::var_os("PLATEAU_MNIST_DIR") {
        Some(dir) => DataSource::Mnist(dir.into()),
        None => {
            eprintln!("PLATEAU_MNIST_DIR is not set: training on the embedded synthetic data (scripts/fetch-mnist.sh DIR fetches MNIST)");
            DataSource::Synthetic
        }
    };

    // README:begin
    // A model is a function from the input batch to the logits, written with the DSL; plateau
    // traces it at the batch size and mode (training or evaluation) it needs.
    let model = Model::custom("mnist-mlp", |opts| {
        let features: usize = opts.input_shape.iter().product();
        let classes = opts.classes;
        Ok(trace_with(opts, |tr, x| {
            let fc1 = Linear::new(tr, "fc1", features, 128, true)?;
            let fc2 = Linear::new(tr, "fc2", 128, classes, true)?;
            let x = Flatten.forward(tr, x)?;
            let h = fc1.forward(tr, x)?;
            let h = tr.relu(h)?;
            fc2.forward(tr, h)
        })?)
    });
    let data = Dataset::load(&source, None)?;
    let config = TrainConfig {
        optimizer: OptimizerSpec {
            base: BaseOptimizer::sgd(0.9, 5e-4),
            sam: Some(Sam::default()),
        },
        rho: 0.05,
        lr: 0.05,
        schedule: LrSchedule::Cosine,
        batch_size: 128,
        budget: Budget::Epochs(epochs),
        seed: 0,
        device: Backend::Reference,
        augment: Augment::none(),
        shuffle: true,
    };
    // Compiling traces the model, appends the backward pass, builds the SAM step over one
    // parameter arena and fuses it into kernels.
    let mut trainer = Trainer::new(&model, &config, &data, &source.to_string(), None)?;
    print!("{}", trainer.compiled().schedule);
    while !trainer.finished() {
        let m = trainer.train_epoch()?;
        println!(
            "epoch {}: train loss {:.4}, test accuracy {:.4}",
            m.epoch, m.train_loss, m.test_accuracy
        );
    }
    let (loss, accuracy) = trainer.evaluate(&data.test)?;
    println!("test loss {loss:.4}, test accuracy {accuracy:.4}");
    // README:end
    Ok(())
}
