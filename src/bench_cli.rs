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
    /// After timing, run one step of each variant kernel by kernel, a wait after each, and
    /// print where the time goes by kernel kind and by phase of the step (wgpu, cuda).
    #[arg(long)]
    profile: bool,
    /// Write the profiled steps (implies --profile) as a Chrome trace-event JSON file, for
    /// chrome://tracing or Perfetto: one track per variant, one event per kernel.
    #[arg(long, value_name = "FILE")]
    chrome_trace: Option<std::path::PathBuf>,
    /// Print one JSON object (with --profile, the profiles too).
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

/// The median of `v` with a distribution-free confidence interval for it: the order
/// statistics x(k) and x(n+1-k) for the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) <=
/// k - 1), is at least `level`. Returns (low, high, coverage); with too few values to reach
/// `level` (under 6 for 95%), the interval is [min, max] and its coverage is below `level`.
fn median_interval(v: &[f64], level: f64) -> Option<(f64, f64, f64)> {
    let n = v.len();
    if n == 0 {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    // P(B <= j) for j = 0, 1, ... with the binomial coefficients in logarithms (no overflow
    // at any n); k = j + 1 leaves out j values below and above.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let (mut ln_c, mut cdf) = (0.0f64, ln_half_n.exp());
    let (mut k, mut coverage) = (1, 1.0 - 2.0 * cdf);
    for j in 1..n {
        if 2 * (j + 1) > n + 1 {
            break;
        }
        ln_c += ((n - j + 1) as f64).ln() - (j as f64).ln();
        cdf += (ln_c + ln_half_n).exp();
        let c = 1.0 - 2.0 * cdf;
        if c < level {
            break;
        }
        (k, coverage) = (j + 1, c);
    }
    Some((s[k - 1], s[n - k], coverage))
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
    let Some(total_rounds) = args.warmup.checked_add(args.rounds) else {
        bail!("--warmup {} and --rounds {}: too many rounds to count", args.warmup, args.rounds);
    };
    let profile = args.profile || args.chrome_trace.is_some();
    if profile && backend == Backend::Reference {
        bail!("--profile and --chrome-trace time device kernels; --device reference launches none (use wgpu or cuda)");
    }
    // Fail before the benchmark, not after it, when the trace cannot be written.
    if let Some(path) = &args.chrome_trace {
        crate::check_writable("--chrome-trace", path)?;
    }
    let input = crate::default_input(&model);
    crate::check_sizes(&model, args.batch, "--batch", &input, TraceOptions::default().classes)?;
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
        // The figures of the layout the device runs.
        let compiled = runner.compiled().cloned().unwrap_or(compiled);
        variants.push(Variant { name, compiled, runner, times: Vec::new(), host: Vec::new() });
    }
    for round in 0..total_rounds {
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
            eprint!("\rround {}/{}", round + 1, total_rounds);
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
    // Round by round: each step against the SGD step of its own round, so a machine that
    // slows for a while moves both; the spread says how far the medians' ratio can be trusted.
    let sgd_times = &variants[0].times;
    let spreads: Vec<(&str, f64, (f64, f64, f64))> = variants[1..]
        .iter()
        .filter_map(|v| {
            let r: Vec<f64> = v.times.iter().zip(sgd_times).map(|(t, s)| t / (2.0 * s)).collect();
            Some((v.name, median(&r), median_interval(&r, 0.95)?))
        })
        .collect();
    let by_round = |name: &str| spreads.iter().find(|s| s.0 == name).map(|s| (s.1, s.2));
    let mut json = serde_json::json!({
        "model": model.to_string(),
        "batch": args.batch,
        "device": args.device,
        "device_name": plateau::runtime::device_name(backend),
        "gemm_layout": variants[0].runner.gemm_layout().map(|l| format!("{l:?}").to_lowercase()),
        "rounds": args.rounds,
        "sgd_step_ms": sgd,
        "sam_step_ms": sam,
        "naive_sam_step_ms": naive,
        "ratio": ratio,
        "naive_ratio": naive_ratio,
    });
    for (name, key) in [("sam", "ratio"), ("naive_sam", "naive_ratio")] {
        if let Some((m, (lo, hi, level))) = by_round(name) {
            json[format!("{key}_rounds_median")] = m.into();
            json[format!("{key}_rounds_interval")] = serde_json::json!([lo, hi]);
            json[format!("{key}_rounds_interval_level")] = level.into();
        }
    }
    for v in &variants {
        let s = &v.compiled.schedule;
        json[format!("launches_{}", v.name)] = s.launches.into();
        json[format!("optimizer_launches_{}", v.name)] = s.optimizer_launches.into();
        json[format!("bytes_moved_{}", v.name)] = s.bytes_moved.into();
        json[format!("peak_memory_bytes_{}", v.name)] = s.peak_memory_bytes.into();
        json[format!("host_step_ms_{}", v.name)] = median(&v.host).into();
        json[format!("rounds_ms_{}", v.name)] = v.times.clone().into();
    }
    // One step of each variant kernel by kernel, a wait after each.
    let mut profiles = Vec::new();
    if profile {
        for v in &mut variants {
            profiles.push(v.runner.profile_step()?);
        }
        let mut all = serde_json::Map::new();
        for (v, times) in variants.iter().zip(&profiles) {
            all.insert(v.name.to_string(), profile_json(&v.compiled, times));
        }
        json["profile"] = all.into();
    }
    // The trace is written after the figures are printed: they stand even if it fails.
    if args.json {
        println!("{json}");
        if let Some(path) = &args.chrome_trace {
            write_chrome_trace(path, &variants, &profiles)?;
        }
        return Ok(());
    }
    let on = match json["device_name"].as_str() {
        Some(name) => format!("{}: {name}", args.device),
        None => args.device.clone(),
    };
    let layout = json["gemm_layout"].as_str().map(|l| format!(" (GEMMs in the {l} layout)")).unwrap_or_default();
    println!("{} at batch {} on {on}{layout}; median of {} interleaved rounds after {} warm-up", model, args.batch, args.rounds, args.warmup);
    println!("| step | median ms | host ms | launches | optimizer launches | bytes moved | peak memory (bytes) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for v in &variants {
        let s = &v.compiled.schedule;
        println!("| {} | {:.3} | {:.3} | {} | {} | {} | {} |", v.name, median(&v.times), median(&v.host), s.launches, s.optimizer_launches, s.bytes_moved, s.peak_memory_bytes);
    }
    println!("(host ms: until the step's launches were queued, before waiting for the device at its end; near the median, the step is bound by launching, or, on wgpu, the host waited for the device while submitting)");
    let spread = |name: &str| match by_round(name) {
        Some((m, (lo, hi, level))) => format!("; round by round {m:.3}, {:.1}% interval {lo:.3}-{hi:.3}", 100.0 * level),
        None => String::new(),
    };
    println!("ratio sam / (2 x sgd) = {ratio:.3}{}", spread("sam"));
    if let Some(n) = naive_ratio {
        println!("ratio naive_sam / (2 x sgd) = {n:.3}{}", spread("naive_sam"));
    }
    println!("(round by round: each step against its round's SGD step; the interval holds the median of such ratios with the confidence given)");
    for (v, times) in variants.iter().zip(&profiles) {
        let total: f64 = times.iter().sum();
        println!("\nprofile of one {} step ({total:.3} ms with a wait after every kernel):", v.name);
        println!("| kernel | launches | ms | share |");
        println!("|---|---:|---:|---:|");
        for (name, n, t) in by_kernel(&v.compiled, times) {
            println!("| {name} | {n} | {t:.3} | {:.1}% |", 100.0 * t / total.max(1e-12));
        }
        println!("\n| phase | launches | ms | share |");
        println!("|---|---:|---:|---:|");
        for (phase, n, t) in by_phase(&v.compiled, times) {
            println!("| {phase} | {n} | {t:.3} | {:.1}% |", 100.0 * t / total.max(1e-12));
        }
    }
    if let Some(path) = &args.chrome_trace {
        write_chrome_trace(path, &variants, &profiles)?;
        println!("\nwrote {} (open in chrome://tracing or ui.perfetto.dev)", path.display());
    }
    Ok(())
}

/// Launches and time of the kernels grouped by `key`, in the key's order.
fn grouped<K: Ord>(c: &Compiled, times: &[f64], key: impl Fn(&plateau::compiler::schedule::Kernel) -> K) -> Vec<(K, usize, f64)> {
    let mut by: std::collections::BTreeMap<K, (usize, f64)> = std::collections::BTreeMap::new();
    for (k, t) in c.schedule.kernels.iter().zip(times) {
        let e = by.entry(key(k)).or_default();
        e.0 += k.launches();
        e.1 += t;
    }
    by.into_iter().map(|(k, (l, t))| (k, l, t)).collect()
}

/// Launches and time of each kernel kind (`matmul`, `fused`, ...), most time first.
fn by_kernel(c: &Compiled, times: &[f64]) -> Vec<(String, usize, f64)> {
    let mut rows = grouped(c, times, |k| k.name.clone());
    rows.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    rows
}

/// Launches and time of each phase of the step, in step order.
fn by_phase(c: &Compiled, times: &[f64]) -> Vec<(String, usize, f64)> {
    grouped(c, times, |k| k.phase).into_iter().map(|(p, l, t)| (p.to_string(), l, t)).collect()
}

fn profile_json(c: &Compiled, times: &[f64]) -> serde_json::Value {
    let rows = |r: Vec<(String, usize, f64)>, key: &str| -> Vec<serde_json::Value> { r.into_iter().map(|(n, l, t)| serde_json::json!({ key: n, "launches": l, "ms": t })).collect() };
    serde_json::json!({
        "total_ms": times.iter().sum::<f64>(),
        "kernels": rows(by_kernel(c, times), "kernel"),
        "phases": rows(by_phase(c, times), "phase"),
    })
}

/// Writes the profiled steps as Chrome trace events: one thread per variant, one complete
/// event per kernel laid end to end (each kernel's time includes the wait after it). Written
/// to a temporary file and renamed, so a failed write leaves no half-written trace.
fn write_chrome_trace(path: &std::path::Path, variants: &[Variant], profiles: &[Vec<f64>]) -> Result<()> {
    let mut events = Vec::new();
    for (tid, (v, times)) in variants.iter().zip(profiles).enumerate() {
        events.push(serde_json::json!({ "ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": { "name": v.name } }));
        let mut at = 0.0;
        for (k, t) in v.compiled.schedule.kernels.iter().zip(times) {
            events.push(serde_json::json!({
                "ph": "X",
                "name": k.name,
                "cat": k.phase.to_string(),
                "pid": 1,
                "tid": tid,
                "ts": at * 1e3,
                "dur": t * 1e3,
                "args": { "kernel": format!("k{}", k.id), "phase": k.phase.to_string(), "launches": k.launches(), "bytes": k.bytes, "body": k.body.join("; ") },
            }));
            at += t;
        }
    }
    let trace = serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" });
    plateau::checkpoint::write_bytes_atomic(path, &serde_json::to_vec(&trace)?).with_context(|| format!("--chrome-trace: cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::median_interval;

    #[test]
    fn the_median_interval_takes_the_order_statistics_of_its_coverage() {
        // 20 values: x(6) and x(15), coverage 1 - 2 * 21,700 / 2^20.
        let v: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        let (lo, hi, c) = median_interval(&v, 0.95).unwrap();
        assert_eq!((lo, hi), (6.0, 15.0));
        assert!((c - (1.0 - 2.0 * 21_700.0 / 1_048_576.0)).abs() < 1e-12, "{c}");
        // Too few for 95%: the extremes, at 1 - 2 / 2^5.
        let (lo, hi, c) = median_interval(&[3.0, 1.0, 5.0, 2.0, 4.0], 0.95).unwrap();
        assert_eq!((lo, hi), (1.0, 5.0));
        assert!((c - 0.9375).abs() < 1e-12, "{c}");
        // Six values reach 96.9% with the extremes; 1,000 values leave out 468 on each side.
        assert_eq!(median_interval(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 0.95).unwrap().2, 1.0 - 2.0 / 64.0);
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        let (lo, hi, c) = median_interval(&v, 0.95).unwrap();
        assert_eq!((lo, hi), (468.0, 531.0));
        assert!((0.95..0.96).contains(&c), "{c}");
        assert!(median_interval(&[], 0.95).is_none());
    }
}
