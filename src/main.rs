//! The `plateau` command line.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use plateau::{trace, DType, ModelSpec, TraceOptions};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "plateau", version, about = "Compile training steps ahead of time; SAM as a first-class optimizer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace a model and print its forward + backward IR in the text form.
    Trace(TraceArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Precision {
    F32,
    F64,
}

#[derive(clap::Args)]
struct TraceArgs {
    /// mlp, cnn, resnet18 or wrn16-K.
    #[arg(long, default_value = "mlp")]
    model: String,
    /// Hidden layer widths of the MLP.
    #[arg(long, value_delimiter = ',', default_value = "256,256")]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Shape of one example, C,H,W (default 1,28,28; 3,32,32 for resnet18 and wrn16-K).
    #[arg(long, value_delimiter = ',')]
    input: Option<Vec<usize>>,
    #[arg(long, default_value_t = 10)]
    classes: usize,
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
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Trace(args) => trace_cmd(args),
    }
}

fn trace_cmd(args: TraceArgs) -> Result<()> {
    let mut spec: ModelSpec = args.model.parse().context("--model")?;
    if let ModelSpec::Mlp { hidden } = &mut spec {
        if args.hidden.contains(&0) {
            bail!("--hidden: layer widths must be positive, got {:?}", args.hidden);
        }
        *hidden = args.hidden.clone();
    }
    let default_input = match spec {
        ModelSpec::ResNet18 | ModelSpec::Wrn16 { .. } => vec![3, 32, 32],
        _ => vec![1, 28, 28],
    };
    let opts = TraceOptions {
        batch_size: args.batch_size,
        input_shape: args.input.unwrap_or(default_input),
        classes: args.classes,
        dtype: match args.dtype {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        },
        training: !args.eval,
        label_smoothing: 0.0,
    };
    let mut model = trace(&spec, &opts)?;
    if !args.forward_only {
        model.differentiate()?;
    }
    model.graph.verify()?;
    if let Some(path) = &args.dot {
        std::fs::write(path, model.graph.to_dot()).with_context(|| format!("--dot: cannot write {}", path.display()))?;
    }
    print!("{}", model.graph.to_text());
    Ok(())
}
