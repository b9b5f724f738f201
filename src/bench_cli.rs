//! `plateau bench`: SGD, SAM and naive SAM steps of one model on one device, interleaved, with
//! their median step times, `sam / (2 * sgd)`, launches, bytes moved and peak memory.

use anyhow::{bail, Context, Result};
use plateau::runtime::{Backend, Runner};
use plateau::{BaseOptimizer, Compiled, DType, ModelSpec, OptimizerSpec, Sam, Tensor, TraceOptions};
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// mlp, cnn, resnet18 or wrn16-K (MLP and CNN on 1x28x28 inputs, the ResNets on 3x32x32).
    #[arg(long, default_value = "mlp")]
    model: String,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// reference, wgpu or cuda.
    #[arg(long, default_value = "wgpu")]
    device: String,
    /// Untimed rounds first (kernel compilation, allocation).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed rounds; each runs one step of every variant.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Leave out naive SAM (slow to run unfused on large models).
    #[arg(long)]
    no_naive: bool,
    /// After timing, run one step of each variant kernel by kernel and print where the time
    /// goes (device backends).
    #[arg(long)]
    profile: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

struct Variant {
    name: &'static str,
    compiled: Compiled,
    runner: Runner,
    times: Vec<f64>,
    /// Host time of each timed step: until `step` returned, before waiting for the device.
    host: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

pub fn bench_cmd(args: BenchArgs) -> Result<()> {
    let backend: Backend = args.device.parse().context("--device")?;
    let model: ModelSpec = args.model.parse().context("--model")?;
    if args.batch == 0 || args.rounds == 0 {
        bail!("--batch and --rounds must be positive");
    }
    let input = crate::default_input(&model);
    let opts = TraceOptions { batch_size: args.batch, input_shape: input.clone(), ..TraceOptions::default() };
    let base = BaseOptimizer::sgd(0.9, 5e-4);
    let mut plan = vec![("sgd", OptimizerSpec { base: base.clone(), sam: None }, false), ("sam", OptimizerSpec { base: base.clone(), sam: Some(Sam::default()) }, false)];
    if !args.no_naive {
        plan.push(("naive_sam", OptimizerSpec { base, sam: Some(Sam::default()) }, true));
    }
    let mut variants = Vec::new();
    for (name, spec, naive) in plan {
        let (traced, step, compiled) = plateau::compile(&model, &opts, &spec, naive, !naive)?;
        let mut b = plateau::initial_state(&traced, &step, 0)?;
        // One fixed random batch (seed 0) for every variant.
        crate::bind_random_batch(&mut b, &traced, opts.classes, 0, 0.01, 0.05)?;
        let runner = Runner::new(backend, &compiled, &b).context("--device")?;
        variants.push(Variant { name, compiled, runner, times: Vec::new(), host: Vec::new() });
    }
    for round in 0..args.warmup + args.rounds {
        for v in &mut variants {
            v.runner.set("scalar", "step", &Tensor::scalar(DType::F32, round as f64))?;
            let start = Instant::now();
            v.runner.step(&[])?;
            let host = start.elapsed().as_secs_f64() * 1e3;
            v.runner.sync()?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if round >= args.warmup {
                v.times.push(ms);
                v.host.push(host);
            }
        }
        if !args.json {
            eprint!("\rround {}/{}", round + 1, args.warmup + args.rounds);
        }
    }
    if !args.json {
        eprintln!();
    }
    let ms = |name: &str| variants.iter().find(|v| v.name == name).map(|v| median(&v.times));
    let sgd = ms("sgd").expect("sgd is always measured");
    let sam = ms("sam").expect("sam is always measured");
    let naive = ms("naive_sam");
    let ratio = sam / (2.0 * sgd);
    let naive_ratio = naive.map(|n| n / (2.0 * sgd));
    let mut json = serde_json::json!({
        "model": model.to_string(),
        "batch": args.batch,
        "device": args.device,
        "rounds": args.rounds,
        "sgd_step_ms": sgd,
        "sam_step_ms": sam,
        "naive_sam_step_ms": naive,
        "ratio": ratio,
        "naive_ratio": naive_ratio,
    });
    for v in &variants {
        let s = &v.compiled.schedule;
        json[format!("launches_{}", v.name)] = s.launches.into();
        json[format!("optimizer_launches_{}", v.name)] = s.optimizer_launches.into();
        json[format!("bytes_moved_{}", v.name)] = s.bytes_moved.into();
        json[format!("peak_memory_bytes_{}", v.name)] = s.peak_memory_bytes.into();
        json[format!("host_step_ms_{}", v.name)] = median(&v.host).into();
    }
    if args.json {
        println!("{json}");
        return Ok(());
    }
    println!("{} at batch {} on {} (median of {} interleaved rounds after {} warm-up)", model, args.batch, args.device, args.rounds, args.warmup);
    println!("| step | median ms | host ms | launches | optimizer launches | bytes moved | peak memory (bytes) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for v in &variants {
        let s = &v.compiled.schedule;
        println!("| {} | {:.3} | {:.3} | {} | {} | {} | {} |", v.name, median(&v.times), median(&v.host), s.launches, s.optimizer_launches, s.bytes_moved, s.peak_memory_bytes);
    }
    println!("(host ms: until the step's launches were queued, before waiting for the device; near the median, the step is bound by launching, not by the device)");
    println!("ratio sam / (2 x sgd) = {ratio:.3}");
    if let Some(n) = naive_ratio {
        println!("ratio naive_sam / (2 x sgd) = {n:.3}");
    }
    if args.profile {
        for v in &mut variants {
            let times = v.runner.profile_step()?;
            let kernels = &v.compiled.schedule.kernels;
            let mut by_name: std::collections::BTreeMap<&str, (usize, f64)> = std::collections::BTreeMap::new();
            for (k, t) in kernels.iter().zip(&times) {
                let e = by_name.entry(k.name.as_str()).or_default();
                e.0 += k.launches();
                e.1 += t;
            }
            let total: f64 = times.iter().sum();
            let mut rows: Vec<_> = by_name.into_iter().collect();
            rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
            println!("\nprofile of one {} step ({total:.3} ms with a wait after every kernel):", v.name);
            println!("| kernel | launches | ms | share |");
            println!("|---|---:|---:|---:|");
            for (name, (n, t)) in rows {
                println!("| {name} | {n} | {t:.3} | {:.1}% |", 100.0 * t / total.max(1e-12));
            }
        }
    }
    Ok(())
}
