//! The `plateau` binary: output, files written, and errors with a non-zero exit.

use std::process::Command;

fn plateau(args: &[&str]) -> std::process::Output {
    // The launches and the GEMM layout asserted on wgpu are its defaults (see `adds_up_slices`
    // and `gemm_layout`).
    Command::new(env!("CARGO_BIN_EXE_plateau")).args(args).env_remove("PLATEAU_SUMS_IN_READERS").env_remove("PLATEAU_GEMM_LAYOUT").output().expect("the plateau binary runs")
}

#[test]
fn trace_prints_forward_and_backward_of_the_default_mlp() {
    let out = plateau(&["trace", "--model", "mlp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().next(), Some("%0 = input \"x\" : f32[128,1,28,28]"));
    assert!(text.contains("%2 = param \"0.weight\" : f32[256,784]"));
    let grads: Vec<&str> = text.lines().filter(|l| l.starts_with("out grad:")).collect();
    assert_eq!(grads.len(), 6, "{grads:?}");
    assert!(text.lines().any(|l| l.starts_with("out loss = %")));
}

/// `plateau compile | head -1`: the reader closes the pipe early (here before the first line:
/// ResNet-18 compiles for half a second), and the process ends by the pipe's signal, as
/// other command-line tools do, not with a panic.
#[cfg(unix)]
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_plateau"))
        .args(["compile", "--model", "resnet18", "--optimizer", "sgd", "--batch-size", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "{:?}", out.status);
}

#[test]
fn trace_writes_graphviz() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.dot");
    let out = plateau(&["trace", "--model", "cnn", "--batch-size", "2", "--dot", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dot = std::fs::read_to_string(&path).unwrap();
    let nodes = String::from_utf8(out.stdout).unwrap().lines().filter(|l| l.starts_with('%')).count();
    assert!(dot.starts_with("digraph plateau {"));
    assert_eq!(dot.matches(" [label=\"%").count(), nodes);
}

#[test]
fn bad_input_gives_a_clear_error_and_a_non_zero_exit() {
    let out = plateau(&["trace", "--model", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--model: unknown model `nope`"), "{err}");

    let out = plateau(&["trace", "--model", "mlp", "--dot", "/nonexistent-dir/g.dot"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("--dot /nonexistent-dir/g.dot: the folder /nonexistent-dir does not exist"));

    let out = plateau(&["trace", "--model", "cnn", "--input", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("--input 3: convolutional models take C,H,W images of at least 4x4"));

    let out = plateau(&["trace", "--batch-size", "many"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects malformed flags");
    assert!(String::from_utf8(out.stderr).unwrap().contains("--batch-size"));
}

#[test]
fn trace_in_f64_and_eval_mode() {
    let out = plateau(&["trace", "--model", "resnet18", "--batch-size", "2", "--dtype", "f64", "--eval", "--forward-only"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().next(), Some("%0 = input \"x\" : f64[2,3,32,32]"));
    assert!(!text.contains("update "), "no running-statistics updates in eval mode");
    assert!(!text.contains("grad:"));
}

#[test]
fn readme_code_samples_are_the_examples() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    for file in ["dsl.rs", "mnist_sam.rs"] {
        let example = std::fs::read_to_string(format!("{root}/examples/{file}")).unwrap();
        let begin = example.find("// README:begin\n").unwrap() + "// README:begin\n".len();
        let end = example.find("    // README:end").unwrap();
        let body: String = example[begin..end].lines().map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l))).collect();
        assert!(readme.contains(&format!("```rust\n{body}```")), "README's sample differs from examples/{file}");
    }
}

#[test]
fn compile_reports_the_schedule_as_json() {
    let out = plateau(&["compile", "--model", "mlp", "--optimizer", "sam", "--batch-size", "16", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The norm (a split sum whose slices the perturbation adds up), the perturbation, the
    // descent.
    assert_eq!(v["optimizer_launches"], 3);
    assert_eq!(v["param_count"], 269_322);
    let kernels = v["kernels"].as_array().unwrap();
    // One kernel is a split sum, whose slices the next kernel (the perturbation) adds up: one
    // launch per kernel.
    assert_eq!(kernels.len() as u64, v["launches"].as_u64().unwrap());
    let norm = kernels.iter().find(|k| k["split"].as_u64().unwrap() > 1).unwrap();
    let id = norm["id"].as_u64().unwrap();
    assert_eq!((&norm["summed_by"], &kernels[id as usize + 1]["sums_slices_of"]), (&serde_json::json!(id + 1), &serde_json::json!(id)));
    for k in ["name", "phase", "inputs", "outputs", "bytes"] {
        assert!(kernels[0].get(k).is_some(), "kernel field {k}");
    }
    assert!(v["bytes_moved"].as_u64().unwrap() > 0 && v["peak_memory_bytes"].as_u64().unwrap() > 0);
    // What each rule added: the loss and the accuracy are one group of sums, the row sums of
    // the exponentials and of the one-hot labels another.
    assert_eq!(v["rewriter"]["rule_hits"]["sibling-sums"], 2, "{}", v["rewriter"]);
    assert!(v["rewriter"]["rule_hits"]["map-into-map"].as_u64().unwrap() > 0);
    let text = plateau(&["compile", "--model", "mlp", "--optimizer", "sam", "--batch-size", "16"]);
    let last = String::from_utf8(text.stdout).unwrap().lines().last().unwrap().to_string();
    assert!(last.starts_with("rules (alternatives added): broadcast-into-load ") && last.contains(", sibling-sums 2,"), "{last}");
    let sgd = plateau(&["compile", "--model", "mlp", "--optimizer", "sgd", "--batch-size", "16", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&sgd.stdout).unwrap();
    assert_eq!(s["optimizer_launches"], 1);
    assert!(v["launches"].as_u64().unwrap() <= 2 * s["launches"].as_u64().unwrap());
}

#[test]
fn compile_rejects_bad_flags() {
    let out = plateau(&["compile", "--m", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("--m 3 must divide --batch-size 128"));
    let out = plateau(&["compile", "--optimizer", "sgd", "--adaptive"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("need --optimizer sam or sam-adamw"));
    let out = plateau(&["compile", "--rho=-1"]);
    assert_eq!(out.status.code(), Some(1));
    let out = plateau(&["compile", "--optimizer", "lion"]);
    assert_eq!(out.status.code(), Some(2));
    // A list flag is given once (repeated, it would join the lists).
    for flag in ["--hidden", "--input"] {
        let out = plateau(&["trace", flag, "4,4,4", flag, "8"]);
        assert_eq!(out.status.code(), Some(2), "{flag} twice");
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used multiple times"));
    }
    // Sizes past what a tensor can hold, and passes without bound, are refused by flag.
    for (args, needle) in [
        (vec!["compile", "--batch-size", "9223372036854775808"], "the input batch (--batch-size x --input) [9223372036854775808, 1, 28, 28] is more than 2147483648 elements"),
        (vec!["trace", "--model", "wrn16-100000"], "widths up to wrn16-64"),
        (vec!["trace", "--classes", "0"], "--classes must be in 1..="),
        (vec!["compile", "--hidden", "1000000000,10"], "an MLP weight (--hidden) [784, 1000000000]"),
        (vec!["compile", "--model", "cnn", "--hidden", "3"], "--model cnn has none"),
        (vec!["compile", "--ascent-steps", "100000"], "--ascent-steps must be in 1..=16"),
        (vec!["compile", "--m", "1"], "128 micro-batches of 1 per batch of 128; at most 32"),
        (vec!["compile", "--m", "4", "--ascent-steps", "16"], "16 ascent steps of 32 micro-batches each are 512 passes"),
        (vec!["compile", "--naive", "--m", "4"], "no naive form"),
        (vec!["compile", "--optimizer", "sgd", "--eta", "0.1"], "--eta is ASAM's"),
        (vec!["compile", "--optimizer", "sgd", "--rho", "0.3"], "--rho, --adaptive, --m, --p, --ascent-steps and --second-order need --optimizer sam"),
        (vec!["bench", "--rounds", "18446744073709551615", "--warmup", "1"], "too many rounds to count"),
        (vec!["run", "--lr", "-1"], "--lr must be a finite non-negative number, got -1"),
        // Values an f32 cannot hold would become infinities in the step.
        (vec!["run", "--optimizer", "sgd", "--momentum", "1e40"], "--momentum 1e40: more than the steps' f32 can hold"),
        (vec!["compile", "--rho", "1e39"], "--rho 1e39: more than the steps' f32 can hold"),
        (vec!["run", "--lr", "1e39"], "--lr 1e39: more than the steps' f32 can hold"),
        (vec!["compile", "--m", "0"], "--m must be positive"),
        (vec!["compile", "--hidden", "46340", "--input", "46340", "--batch-size", "1"], "the MLP's parameters (--input, --hidden, --classes) are 2147905350 elements"),
        (vec!["bench", "--batch", "18446744073709551615"], "the input batch (--batch x --input)"),
        (vec!["trace", "--model", "cnn", "--input", "1,28"], "--input 1,28: convolutional models take C,H,W images of at least 4x4"),
        (vec!["trace", "--model", "resnet18", "--input", "3,2,2"], "--input 3,2,2: convolutional models take C,H,W images of at least 4x4"),
    ] {
        let out = plateau(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// `--dot` and `--emit-cuda` are checked before compiling and written whole: a failure leaves
/// nothing behind, and a folder of an earlier emission holds the new schedule's kernels only.
#[test]
fn compile_outputs_are_checked_first_and_replace_what_was_there() {
    let dir = tempfile::tempdir().unwrap();
    let (cu, dot, file) = (dir.path().join("cu"), dir.path().join("g.dot"), dir.path().join("afile"));
    std::fs::write(&file, "x").unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let out = plateau(&["compile", "--dot", &s(&dot), "--emit-cuda", &s(&file)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a file, not a folder"));
    assert!(!dot.exists(), "nothing written when one output cannot be");
    let out = plateau(&["compile", "--dot", &s(&dir.path().join("no/g.dot"))]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the folder") && out.status.code() == Some(1));
    let count = |args: &[&str]| {
        let mut a = vec!["compile", "--json", "--emit-cuda", cu.to_str().unwrap()];
        a.extend(args);
        let out = plateau(&a);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["launches"].as_u64().unwrap(), std::fs::read_dir(&cu).unwrap().count() as u64)
    };
    let (launches, files) = count(&["--model", "cnn", "--batch-size", "8"]);
    assert_eq!(files, launches);
    std::fs::write(cu.join("notes.txt"), "mine").unwrap();
    std::fs::write(cu.join("k8s_kernels.cu"), "mine too").unwrap();
    let (launches, files) = count(&["--optimizer", "sgd"]);
    assert_eq!((launches, files), (14, 16), "the MLP's 14 kernels and the user's own two files");
    assert!(std::fs::read_dir(&cu).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".plateau-emit")));
    // A --dot inside the folder the emission creates; a --dot that cannot be written leaves
    // no kernels and no folder behind.
    let (x, y) = (dir.path().join("x"), dir.path().join("y"));
    assert!(plateau(&["compile", "--optimizer", "sgd", "--emit-cuda", &s(&x), "--dot", &s(&x.join("g.dot"))]).status.success());
    assert_eq!(std::fs::read_dir(&x).unwrap().count(), 15);
    let out = plateau(&["compile", "--optimizer", "sgd", "--emit-cuda", &s(&y), "--dot", &s(&y)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!y.exists(), "the emission's folder is removed with its kernels");
    // A --dot named as a kernel file in the emission's folder would be replaced by it.
    let z = dir.path().join("z");
    let out = plateau(&["compile", "--optimizer", "sgd", "--emit-cuda", &s(&z), "--dot", &s(&z.join("k999_graph.cu"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a kernel's file name in the --emit-cuda folder"));
    assert!(!z.exists());
    // A --dot that is a link is written through it (the link stays).
    #[cfg(unix)]
    {
        let (real, link) = (dir.path().join("real.dot"), dir.path().join("link.dot"));
        std::fs::write(&real, "old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(plateau(&["compile", "--optimizer", "sgd", "--dot", &s(&link)]).status.success());
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::fs::read_to_string(&real).unwrap().starts_with("digraph"));
    }
}

#[test]
fn run_gives_the_same_losses_on_the_reference_and_on_wgpu() {
    let run = |device: &str| {
        let out = plateau(&["run", "--model", "mlp", "--optimizer", "sam", "--batch-size", "16", "--steps", "3", "--device", device]);
        assert!(out.status.success(), "{device}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let (reference, wgpu) = (run("reference"), run("wgpu"));
    // The device named first (the CPU for the reference, the adapter for wgpu), then a line a step.
    assert!(reference.starts_with("on reference: ") && reference.lines().next().unwrap().ends_with("(reference interpreter)"), "{reference}");
    assert!(wgpu.starts_with("on wgpu: ") && wgpu.lines().next().unwrap().contains(" via "), "{wgpu}");
    let (reference, wgpu) = (reference.split_once('\n').unwrap().1, wgpu.split_once('\n').unwrap().1);
    assert_eq!(reference.lines().count(), 3);
    let losses = |s: &str| s.lines().map(|l| l.split_whitespace().nth(3).unwrap().parse::<f64>().unwrap()).collect::<Vec<_>>();
    for (a, b) in losses(&reference).iter().zip(losses(&wgpu)) {
        assert!((a - b).abs() <= 1e-4 * a.abs(), "{reference} vs {wgpu}");
    }
    let out = plateau(&["run", "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("unknown device `tpu`"));
    if !cfg!(feature = "cuda") {
        let out = plateau(&["run", "--device", "cuda", "--steps", "1"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8(out.stderr).unwrap().contains("rebuild with --features cuda"));
    }
}

#[test]
fn compile_emits_the_cuda_of_every_kernel_without_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let cu = dir.path().join("cuda");
    let out = plateau(&["compile", "--model", "cnn", "--optimizer", "sam", "--batch-size", "8", "--json", "--emit-cuda", cu.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<_> = std::fs::read_dir(&cu).unwrap().map(|e| e.unwrap().path()).collect();
    let kernels = v["kernels"].as_array().unwrap();
    // One file per launch, each one kernel: a split GEMM's k slices and their sum
    // (`k<id>_<name>_sum.cu`) are two; a split sum whose slices its reader adds up, one.
    assert_eq!(files.len() as u64, v["launches"].as_u64().unwrap());
    let split_kernels: Vec<_> = kernels.iter().filter(|k| k["split"].as_u64().unwrap() > 1 && k["summed_by"].is_null()).collect();
    assert_eq!(files.len(), kernels.len() + split_kernels.len());
    for k in kernels {
        assert!(cu.join(format!("k{}_{}.cu", k["id"], k["name"].as_str().unwrap())).exists(), "{k}");
    }
    for k in &split_kernels {
        assert!(cu.join(format!("k{}_{}_sum.cu", k["id"], k["name"].as_str().unwrap())).exists(), "{k}");
    }
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        let stem = f.file_stem().unwrap().to_str().unwrap().to_string();
        assert!(src.contains(&format!("void __launch_bounds__(256){stem} (")), "{}", f.display());
        assert_eq!(src.matches("__global__").count(), 1, "{}", f.display());
        assert_eq!(src.matches("struct info_st").count(), 1, "{}", f.display());
    }
    // At batch 8, in each of SAM's two passes: the first linear layer (8 x 128 outputs, 3,136
    // terms: 6 slices), the second convolution's weight gradient (5 tiles, 1,568 terms: 3)
    // and the first's (1 tile, 6,272 terms: 12); between them the ascent's squared norm of
    // the 421,642-parameter arena (a split sum: 102 slices, which the perturbation adds up).
    let split: Vec<u64> = kernels.iter().map(|k| k["split"].as_u64().unwrap()).filter(|&s| s > 1).collect();
    assert_eq!(split, [6, 3, 12, 102, 6, 3, 12]);
    assert_eq!(split_kernels.len() + 1, split.len());
    assert!(files.iter().any(|f| f.to_str().unwrap().ends_with("_conv2d_grad_weight.cu")));
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, "x").unwrap();
    let out = plateau(&["compile", "--model", "mlp", "--emit-cuda", blocked.join("sub").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("--emit-cuda: cannot create"));
}

/// `bench --json`: every field the peers print, the deterministic figures asserted (never the
/// times, which depend on the machine).
#[test]
fn bench_reports_times_launches_and_memory_as_json() {
    let out = plateau(&["bench", "--model", "mlp", "--batch", "8", "--device", "reference", "--warmup", "1", "--rounds", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["sgd_step_ms", "sam_step_ms", "naive_sam_step_ms", "ratio", "naive_ratio"] {
        let v = j[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {j}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!((j["launches_sgd"].as_u64(), j["launches_sam"].as_u64(), j["launches_naive_sam"].as_u64()), (Some(14), Some(28), Some(202)));
    let (sgd, sam) = (j["peak_memory_bytes_sgd"].as_u64().unwrap(), j["peak_memory_bytes_sam"].as_u64().unwrap());
    // SAM holds one more parameter-sized buffer (269,322 f32) and two scalars, 16-byte aligned.
    assert!(sam - sgd <= (4 * 269_322u64).next_multiple_of(16) + 32, "{sam} - {sgd}");
    // Host time (until the launches were queued) is part of each step's time.
    for v in ["sgd", "sam", "naive_sam"] {
        let (host, step) = (j[format!("host_step_ms_{v}")].as_f64().unwrap(), j[format!("{v}_step_ms")].as_f64().unwrap());
        assert!(host > 0.0 && host <= step, "{v}: host {host} ms, step {step} ms");
    }
    // The machine is named, as the peers' scripts name theirs.
    let name = j["device_name"].as_str().unwrap_or_default();
    assert!(name.ends_with("(reference interpreter)") && name.len() > 24, "{name:?}");
    // The reference runs no kernels, so no GEMM layout.
    assert!(j["gemm_layout"].is_null(), "{}", j["gemm_layout"]);
    let ratio = j["ratio"].as_f64().unwrap();
    assert!((ratio - j["sam_step_ms"].as_f64().unwrap() / (2.0 * j["sgd_step_ms"].as_f64().unwrap())).abs() < 1e-12);
    // Round by round: each SAM step against its round's SGD step, the two rounds' extremes as
    // the interval (two values cover the median with probability 1/2).
    let rounds = |v: &str| -> Vec<f64> { j[format!("rounds_ms_{v}")].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect() };
    let (sgd, sam) = (rounds("sgd"), rounds("sam"));
    assert_eq!((sgd.len(), sam.len(), rounds("naive_sam").len()), (2, 2, 2));
    let r: Vec<f64> = sam.iter().zip(&sgd).map(|(a, s)| a / (2.0 * s)).collect();
    assert!((j["ratio_rounds_median"].as_f64().unwrap() - (r[0] + r[1]) / 2.0).abs() < 1e-12);
    let interval: Vec<f64> = j["ratio_rounds_interval"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    assert_eq!(interval, vec![r[0].min(r[1]), r[0].max(r[1])]);
    assert_eq!(j["ratio_rounds_interval_level"].as_f64(), Some(0.5));
    assert!(j["naive_ratio_rounds_interval"].is_array());
    let out = plateau(&["bench", "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(1));
}

/// `bench --profile --chrome-trace` on wgpu: every kernel of each step is timed once and
/// attributed to its kind and its phase; the trace holds one event per kernel on one track per
/// variant. The launch counts are asserted, not the times.
#[test]
fn bench_profiles_by_kernel_and_phase_and_writes_a_chrome_trace() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let out = plateau(&["bench", "--model", "mlp", "--batch", "8", "--device", "wgpu", "--warmup", "0", "--rounds", "1", "--no-naive", "--json", "--chrome-trace", trace.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The adapter wgpu runs on and its API (lavapipe in CI: "llvmpipe (LLVM ...) via Vulkan").
    assert!(j["device_name"].as_str().is_some_and(|n| n.contains(" via ") && !n.starts_with(" via")), "{}", j["device_name"]);
    // lavapipe, a CPU, runs the GEMMs in the CPU layout; a GPU adapter in the GPU one.
    let cpu = j["device_name"].as_str().is_some_and(|n| n.starts_with("llvmpipe"));
    assert_eq!(j["gemm_layout"].as_str(), Some(if cpu { "cpu" } else { "gpu" }));
    let sum = |rows: &serde_json::Value| -> (u64, f64) {
        rows.as_array().unwrap().iter().fold((0, 0.0), |(l, t), r| (l + r["launches"].as_u64().unwrap(), t + r["ms"].as_f64().unwrap()))
    };
    let phases = |v: &str| -> Vec<(String, u64)> {
        j["profile"][v]["phases"].as_array().unwrap().iter().map(|r| (r["phase"].as_str().unwrap().to_string(), r["launches"].as_u64().unwrap())).collect()
    };
    // wgpu runs the norm's own second launch (SAM's step as a GPU runs it is 28; see
    // `plateau::runtime::device::adds_up_slices`).
    for (v, launches) in [("sgd", 14), ("sam", 29)] {
        let p = &j["profile"][v];
        let total = p["total_ms"].as_f64().unwrap();
        assert!(total > 0.0, "{v}: {p}");
        for key in ["kernels", "phases"] {
            let (l, t) = sum(&p[key]);
            assert_eq!(l, launches, "{v} {key}: {p}");
            assert!((t - total).abs() <= 1e-9 * total, "{v} {key}: {t} against {total}");
        }
        assert_eq!(j[format!("launches_{v}")].as_u64(), Some(launches));
    }
    // The ascent (the gradient norm, a split sum of two launches on wgpu, then the
    // perturbation) and the descent are SAM's 4 optimizer launches here; the pass at w + e
    // needs neither the loss value nor the metrics.
    let named = |v: &str| -> Vec<String> { phases(v).into_iter().map(|(p, l)| format!("{p} {l}")).collect() };
    // (A kernel takes the latest phase of what it computes: the forward's row maximum and row
    // sum of the exponentials share their kernel with the backward's row sum of the labels.)
    assert_eq!(named("sam"), ["forward 4", "backward 9", "ascent 3", "forward@adv 4", "backward@adv 8", "descent 1"]);
    // A plain step spends nothing on metrics: its loss and accuracy come from the forward pass.
    assert_eq!(named("sgd"), ["forward 4", "backward 9", "descent 1"]);
    // The row maximum of the logits and the row sums reading it: one kernel (`fused_reduce_chain`).
    let kinds = |v: &str| -> Vec<(String, u64)> { j["profile"][v]["kernels"].as_array().unwrap().iter().map(|r| (r["kernel"].as_str().unwrap().to_string(), r["launches"].as_u64().unwrap())).collect() };
    assert!(kinds("sgd").contains(&("fused_reduce_chain".to_string(), 1)) && kinds("sam").contains(&("fused_reduce_chain".to_string(), 2)), "{:?}", kinds("sam"));

    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = t["traceEvents"].as_array().unwrap();
    let names: Vec<&str> = events.iter().filter(|e| e["ph"] == "M").map(|e| e["args"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sgd", "sam"]);
    for (tid, launches) in [(0, 14), (1, 29)] {
        let kernels: Vec<_> = events.iter().filter(|e| e["ph"] == "X" && e["tid"] == tid).collect();
        assert_eq!(kernels.iter().map(|e| e["args"]["launches"].as_u64().unwrap()).sum::<u64>(), launches);
        // Laid end to end in launch order.
        for w in kernels.windows(2) {
            let end = w[0]["ts"].as_f64().unwrap() + w[0]["dur"].as_f64().unwrap();
            assert!((w[1]["ts"].as_f64().unwrap() - end).abs() < 1e-6 * end.max(1.0), "{} then {}", w[0], w[1]);
        }
    }
    assert!(!dir.path().join("trace.json.partial").exists());

    // A profile needs device kernels, and a trace a folder to go to: both refused up front.
    let out = plateau(&["bench", "--device", "reference", "--profile"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--device reference launches none"));
    let missing = dir.path().join("no/such/trace.json");
    let out = plateau(&["bench", "--device", "wgpu", "--chrome-trace", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("no").exists());
    let out = plateau(&["bench", "--device", "wgpu", "--chrome-trace", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a folder; give a file name"));
}
