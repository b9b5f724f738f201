//! Define a small model with the DSL, append its backward pass, and run one forward and
//! backward on the reference interpreter.
//!
//! `cargo run --example dsl`

use plateau::frontend::layers::{Layer, Linear};
use plateau::frontend::{accuracy, softmax_cross_entropy, Tracer};
use plateau::{differentiate, run, Bindings, DType, Tensor};

fn main() -> anyhow::Result<()> {
    // README:begin
    let mut tr = Tracer::new(DType::F32, /* training */ true);
    let x = tr.input("x", [32, 784])?;
    let labels = tr.labels("labels", 32)?;
    let fc1 = Linear::new(&mut tr, "0", 784, 128, true)?;
    let fc2 = Linear::new(&mut tr, "2", 128, 10, true)?;
    let h = fc1.forward(&mut tr, x)?;
    let h = tr.relu(h)?;
    let logits = fc2.forward(&mut tr, h)?;
    let loss = softmax_cross_entropy(&mut tr, logits, labels, 0.0)?;
    let acc = accuracy(&mut tr, logits, labels)?;
    tr.output("loss", loss)?;
    tr.output("accuracy", acc)?;
    // README:end

    let (mut graph, params, _state) = tr.finish();
    let wrt: Vec<_> = params.iter().map(|p| p.node).collect();
    let grads = differentiate(&mut graph, loss.0, &wrt)?;
    for (p, g) in params.iter().zip(grads) {
        graph.add_output(format!("grad:{}", p.name), g, plateau::compiler::ir::OutputKind::Value)?;
    }
    graph.verify()?;

    let mut b = Bindings::new();
    for p in &params {
        b.set("param", &p.name, Tensor::new(DType::F32, p.shape.clone(), p.init.sample(&p.name, p.shape.numel(), 0))?);
    }
    let pixels: Vec<f64> = (0..32 * 784).map(|i| ((i * 37) % 255) as f64 / 255.0).collect();
    b.set("input", "x", Tensor::new(DType::F32, [32, 784], pixels)?);
    b.set("input", "labels", Tensor::labels(&(0..32).map(|i| i % 10).collect::<Vec<i32>>()));
    let out = run(&graph, &b)?;
    let norm: f64 = out.iter().filter(|(k, _)| k.starts_with("grad:")).flat_map(|(_, t)| &t.data).map(|g| g * g).sum::<f64>().sqrt();
    println!("{} nodes; loss {:.4}; accuracy {:.3}; gradient norm {:.4}", graph.len(), out["loss"].item(), out["accuracy"].item(), norm);
    Ok(())
}
