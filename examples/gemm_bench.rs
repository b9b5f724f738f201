//! plateau's GEMM kernel against cubek's matmuls on the same device, shape by shape: where a
//! step's time goes on a device whose GEMMs decide it.
//!
//! ```text
//! cargo run --release --example gemm_bench -- [--device wgpu|cuda] [--runs 7] [--json]
//! ```
//!
//! For each shape (the MLP's GEMMs at batch 128, an implicit convolution's sizes, squares),
//! times plateau's register-blocked GEMM as the schedule launches it (its blocks and k
//! slices), in both of its layouts (`GemmLayout`: `plateau_ms` the GPU layout,
//! `plateau_cpu_layout_ms` the CPU one, on wgpu only), and cubek's f32 strategies `SimpleUnit` and
//! `DoubleUnit` (no tensor cores: full f32, as plateau computes), each the median of `--runs`
//! launches after two warm-ups with a wait after each, and checks the CPU layout's and every
//! cubek result against the GPU layout's (largest difference).
//! Prints a table, or with `--json` one object per shape. Nothing here is asserted: the
//! figures go to BENCHMARKS.md with the device named.

use plateau::kernels::cubecl::prelude::*;
use plateau::kernels::cubecl::server::Handle;
use plateau::kernels::cubek::matmul::definition::MatmulElems;
use plateau::kernels::cubek::matmul::launch::{launch_ref, Strategy};
use plateau::kernels::cubek::std::InputBinding;
use plateau::kernels::gemm::{GemmLayout, GemmSpec};
use plateau::kernels::host::{check, download, upload};
use plateau::kernels::lower::KernelCall;
use plateau::runtime::backend::guarded;
use plateau::runtime::Backend;
use std::time::Instant;

/// (name, m, k, n, A transposed).
const SHAPES: &[(&str, usize, usize, usize, bool)] = &[
    ("mlp fc1 forward", 128, 784, 256, false),
    ("mlp fc2 forward", 128, 256, 256, false),
    ("mlp fc1 weight grad", 784, 128, 256, true),
    ("conv 3x3 64->64, 8x32x32", 8192, 576, 64, false),
    ("square 512", 512, 512, 512, false),
    ("square 1024", 1024, 1024, 1024, false),
];

/// Shapes too slow for a CPU device.
const GPU_SHAPES: &[(&str, usize, usize, usize, bool)] = &[("square 4096", 4096, 4096, 4096, false), ("conv 3x3 64->64, 128x32x32", 131_072, 576, 64, false)];

struct Args {
    device: Backend,
    runs: usize,
    json: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args { device: Backend::Wgpu, runs: 7, json: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--device" => a.device = it.next().ok_or("--device needs a value")?.parse().map_err(|e| format!("--device: {e}"))?,
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).filter(|&r| r > 0).ok_or("--runs needs a positive number")?,
            "--json" => a.json = true,
            other => return Err(format!("unknown flag `{other}` (expected --device, --runs, --json)")),
        }
    }
    Ok(a)
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let name = plateau::runtime::device_name(a.device).unwrap_or_else(|| format!("{:?}", a.device));
    let result = match a.device {
        // A missing device is an error, not a panic (cubecl panics on its own thread).
        Backend::Wgpu => {
            use plateau::kernels::cubecl::wgpu::{WgpuDevice, WgpuRuntime};
            guarded("wgpu", || WgpuRuntime::client(&WgpuDevice::default())).map_err(|e| e.to_string()).and_then(|c| run::<WgpuRuntime>(&c, &a, &name, false))
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            use plateau::kernels::cubecl::cuda::{CudaDevice, CudaRuntime};
            guarded("CUDA", || CudaRuntime::client(&CudaDevice::default())).map_err(|e| e.to_string()).and_then(|c| run::<CudaRuntime>(&c, &a, &name, true))
        }
        other => Err(format!("--device {other:?}: this build times wgpu{}", if cfg!(feature = "cuda") { " and cuda" } else { " (rebuild with --features cuda for cuda)" })),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Median of `runs` timed calls of `f` (each followed by a wait), after two untimed ones.
fn time<R: Runtime>(client: &ComputeClient<R>, runs: usize, f: &dyn Fn() -> Result<(), String>) -> Result<f64, String> {
    for _ in 0..2 {
        f()?;
        check(client)?;
    }
    let mut t = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        check(client)?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn run<R: Runtime>(client: &ComputeClient<R>, a: &Args, device: &str, gpu: bool) -> Result<(), String> {
    if !a.json {
        println!("GEMMs on {device}: median of {} runs, GFLOP/s in brackets; diff = largest difference from the GPU layout's result", a.runs);
        println!("| shape | m x k x n | plateau ms, GPU layout | plateau ms, CPU layout | SimpleUnit ms | DoubleUnit ms | diff |");
        println!("|---|---|---:|---:|---:|---:|---:|");
    }
    let shapes = SHAPES.iter().chain(if gpu { GPU_SHAPES } else { &[] });
    for &(label, m, k, n, ta) in shapes {
        let av: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
        let bv: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
        let (ha, hb) = (upload(client, &av), upload(client, &bv));
        let spec = GemmSpec::matmul(m, k, n, ta, false, (0, 0, 0));
        // NaN-filled: a launch that writes nothing shows as NaN.
        let (out, ws) = (upload(client, &vec![f32::NAN; m * n]), client.empty(spec.workspace_len().max(1) * 4));
        let arr = |h: &Handle, len: usize| unsafe { ArrayArg::from_raw_parts(h.clone(), len) };
        let plateau_gemm = |layout: GemmLayout, out: &Handle| {
            let out = out.clone();
            let (ha, hb, ws) = (ha.clone(), hb.clone(), ws.clone());
            move || -> Result<(), String> {
                let mut outs = vec![arr(&out, m * n)];
                if spec.split > 1 {
                    outs.extend([arr(&ws, spec.workspace_len()), arr(&ws, spec.workspace_len())]);
                }
                KernelCall::Gemm(spec).with_gemm_layout(layout).launch(client, vec![arr(&ha, m * k), arr(&hb, k * n)], outs);
                Ok(())
            }
        };
        let gflops = |ms: f64| 2.0 * (m * n * k) as f64 / ms / 1e6;
        let t_plateau = time(client, a.runs, &plateau_gemm(GemmLayout::Gpu, &out))?;
        let reference = download(client, out.clone(), m * n)?;
        let largest = |got: &[f32]| got.iter().zip(&reference).map(|(x, y)| (x - y).abs()).fold(0.0f32, |w, d| if d.is_nan() || w.is_nan() { f32::NAN } else { w.max(d) });
        // The largest difference over every strategy and layout that ran (NaN if any output
        // is NaN).
        let mut worst = None;
        // The CPU layout where wgpu runs it: CUDA runs only the GPU layout, the one its
        // emitted kernels are checked in (`scripts/nvrtc-check.py`).
        let mut t_cpu = None;
        if !gpu {
            let cpu_out = upload(client, &vec![f32::NAN; m * n]);
            t_cpu = Some(time(client, a.runs, &plateau_gemm(GemmLayout::Cpu, &cpu_out))?);
            worst = Some(largest(&download(client, cpu_out, m * n)?));
        }
        let mut row = serde_json::json!({
            "shape": label, "m": m, "k": k, "n": n, "a_transposed": ta, "device_name": device,
            "plateau_ms": t_plateau, "plateau_gflops": gflops(t_plateau), "plateau_split": spec.split,
            "plateau_cpu_layout_ms": t_cpu, "plateau_cpu_layout_gflops": t_cpu.map(gflops),
        });
        let mut cells = Vec::new();
        for (key, strategy) in [("simple_unit", Strategy::SimpleUnit(Default::default())), ("double_unit", Strategy::DoubleUnit(Default::default()))] {
            let f32_type = f32::as_type_native_unchecked();
            let tensor = |h: &Handle, shape: [usize; 2], strides: [usize; 2]| unsafe { TensorBinding::<R>::from_raw_parts(h.clone(), strides.into(), shape.into()) };
            let lhs_strides = if ta { [1, m] } else { [k, 1] };
            // A fresh output of NaNs: a launch that writes nothing shows as NaN, not as 0.
            let cubek_out = upload(client, &vec![f32::NAN; m * n]);
            let cubek = || -> Result<(), String> {
                let mut dtypes = MatmulElems::from_single_dtype(f32_type);
                let lhs = InputBinding::Normal(tensor(&ha, [m, k], lhs_strides), f32_type.storage_type());
                let rhs = InputBinding::Normal(tensor(&hb, [k, n], [n, 1]), f32_type.storage_type());
                launch_ref(&strategy, client, lhs, rhs, tensor(&cubek_out, [m, n], [n, 1]), &mut dtypes).map_err(|e| format!("cubek {key}: {e:?}"))
            };
            match time(client, a.runs, &cubek) {
                Ok(t) => {
                    let got = download(client, cubek_out.clone(), m * n)?;
                    let d = largest(&got);
                    worst = Some(worst.map_or(d, |w| if d.is_nan() || w.is_nan() { f32::NAN } else { w.max(d) }));
                    row[format!("{key}_ms")] = t.into();
                    row[format!("{key}_gflops")] = gflops(t).into();
                    cells.push(format!("{t:.3} ({:.1})", gflops(t)));
                }
                Err(e) => {
                    row[format!("{key}_error")] = e.clone().into();
                    cells.push("n/a".to_string());
                }
            }
        }
        row["max_abs_diff"] = worst.map(|w| if w.is_nan() { serde_json::Value::from("NaN") } else { f64::from(w).into() }).unwrap_or(serde_json::Value::Null);
        let worst = worst.map_or("n/a".to_string(), |w| format!("{w:.1e}"));
        if a.json {
            println!("{row}");
        } else {
            println!("| {label} | {m} x {k} x {n}{} | {t_plateau:.3} ({:.1}) | {} | {} | {} | {worst} |", if ta { " (A^T)" } else { "" }, gflops(t_plateau), t_cpu.map_or("n/a".to_string(), |t| format!("{t:.3} ({:.1})", gflops(t))), cells[0], cells[1]);
        }
    }
    Ok(())
}
