//! `plateau train`, `compare` and `eval` as a user runs them: output, files, resume after a
//! real kill, and bad input (clear error, exit code 1, nothing on disk touched).

use std::path::Path;
use std::process::{Command, Output};

fn plateau(args: &[&str]) -> Output {
    // The launches asserted on wgpu are its default (see `adds_up_slices`).
    Command::new(env!("CARGO_BIN_EXE_plateau")).args(args).env_remove("PLATEAU_SUMS_IN_READERS").output().expect("the plateau binary runs")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}\nstdout: {}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SMALL: &[&str] = &["--hidden", "32", "--optimizer", "sam"];

#[test]
fn train_prints_epochs_writes_metrics_checkpoints_and_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (metrics, ckpt, save) = (tmp.path().join("m.jsonl"), tmp.path().join("ck"), tmp.path().join("w.safetensors"));
    let mut args = vec!["train", "--epochs", "2", "--metrics", s(&metrics), "--checkpoint-dir", s(&ckpt), "--save", s(&save)];
    args.extend(SMALL);
    let out = ok(&plateau(&args));
    assert!(out.contains("compiled step: 20 kernel launches (3 in the optimizer)"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("epoch ")).count(), 2, "{out}");
    assert!(out.contains("| epoch | lr | train loss | train acc | test loss | test acc | seconds |"), "{out}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for key in ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"] {
        assert!(lines[1].get(key).is_some(), "{key} missing from {}", lines[1]);
    }
    assert_eq!(lines[1]["epoch"], 2);
    let mut files: Vec<String> = std::fs::read_dir(&ckpt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files, ["step-00000008.safetensors", "step-00000016.safetensors"]);
    // The saved weights evaluate to the last epoch's test figures.
    let out = ok(&plateau(&["eval", "--checkpoint", s(&save)]));
    let acc = format!("accuracy {:.4}", lines[1]["test_accuracy"].as_f64().unwrap());
    assert!(out.contains(&acc), "{out} vs {acc}");
    // A checkpoint evaluates too.
    let out = ok(&plateau(&["eval", "--checkpoint", s(&ckpt.join("step-00000016.safetensors"))]));
    assert!(out.contains(&acc), "{out} vs {acc}");
}

#[test]
fn steps_zero_with_save_writes_the_initial_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.safetensors"), tmp.path().join("b.safetensors"));
    ok(&plateau(&["train", "--steps", "0", "--seed", "3", "--save", s(&a)]));
    ok(&plateau(&["train", "--steps", "0", "--seed", "3", "--save", s(&b)]));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "the seeded initial weights are reproducible, byte for byte");
    // --init from them, no steps: the same file again.
    let c = tmp.path().join("c.safetensors");
    ok(&plateau(&["train", "--steps", "0", "--seed", "9", "--init", s(&a), "--save", s(&c)]));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&c).unwrap());
}

/// A run killed mid-training and resumed with the same command ends with the weights of an
/// uninterrupted run, bit for bit.
#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let common = ["train", "--epochs", "6", "--hidden", "64", "--schedule", "cosine", "--cutout", "4"];
    let whole = tmp.path().join("whole.safetensors");
    let mut args = common.to_vec();
    args.extend(["--save", s(&whole)]);
    ok(&plateau(&args));

    let ck = tmp.path().join("ck");
    let mut args = common.to_vec();
    args.extend(["--checkpoint-dir", s(&ck)]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_plateau")).args(&args).stdout(std::process::Stdio::null()).spawn().unwrap();
    let first = ck.join("step-00000008.safetensors");
    while !first.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before its first checkpoint");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // No temporary files are left behind, whatever the kill interrupted.
    let resumed = tmp.path().join("resumed.safetensors");
    let mut args = common.to_vec();
    args.extend(["--checkpoint-dir", s(&ck), "--resume", "--save", s(&resumed)]);
    let out = ok(&plateau(&args));
    let step: usize = out.split("at step ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    assert!(step < 48, "the run was interrupted before its end (resumed at step {step})");
    assert!(std::fs::read(&whole).unwrap() == std::fs::read(&resumed).unwrap(), "the resumed run's weights differ");
}

#[test]
fn compare_prints_both_runs_and_writes_a_png() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("c.png");
    let out = ok(&plateau(&["compare", "--epochs", "2", "--hidden", "32", "--plot", s(&png)]));
    assert!(out.contains("| epoch | SGD train loss | SAM train loss | SGD test acc | SAM test acc |"), "{out}");
    assert!(out.contains("final test accuracy: SGD"), "{out}");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, save) = (tmp.path().join("ck"), tmp.path().join("w.safetensors"));
    std::fs::write(&save, b"previous").unwrap();
    // At this rate the weights overflow in the third epoch.
    let out = plateau(&["train", "--optimizer", "sgd", "--hidden", "32", "--lr", "1000", "--epochs", "6", "--checkpoint-dir", s(&ck), "--save", s(&save)]);
    fails(&out, "the loss is NaN at step 20 (epoch 3); training stopped; the last good checkpoint is");
    assert!(String::from_utf8_lossy(&out.stderr).contains("step-00000016.safetensors"));
    let mut files: Vec<String> = std::fs::read_dir(&ck).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files, ["step-00000008.safetensors", "step-00000016.safetensors"], "only good checkpoints, no temporaries");
    assert_eq!(std::fs::read(&save).unwrap(), b"previous", "--save is untouched");
}

#[test]
fn bad_training_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    fails(&plateau(&["train", "--data", &format!("mnist:{}", s(&missing))]), "no such directory");
    fails(&plateau(&["train", "--data", "imagenet:/x"]), "unknown dataset `imagenet`");
    fails(&plateau(&["train", "--lr=-1"]), "--lr must be a finite non-negative number");
    fails(&plateau(&["train", "--normalize", "0.5"]), "--normalize takes MEAN,STD");
    fails(&plateau(&["train", "--normalize", "0.5,0"]), "positive std");
    fails(&plateau(&["train", "--schedule", "linear"]), "unknown schedule `linear`");
    fails(&plateau(&["train", "--device", "tpu"]), "unknown device `tpu`");
    fails(&plateau(&["train", "--label-noise", "2"]), "--label-noise must be in [0, 1]");
    fails(&plateau(&["train", "--epochs", "0"]), "--epochs must be at least 1");
    fails(&plateau(&["train", "--batch-size", "4096"]), "fewer than one batch of 4096");
    let out = plateau(&["train", "--resume"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error: --resume needs --checkpoint-dir");
    // Weights of another model, and a file that is not safetensors.
    let w = tmp.path().join("w.safetensors");
    ok(&plateau(&["train", "--steps", "0", "--hidden", "32", "--save", s(&w)]));
    fails(&plateau(&["train", "--steps", "0", "--hidden", "64", "--init", s(&w)]), "`0.weight` has shape [32, 256], the model needs [64, 256]");
    fails(&plateau(&["train", "--steps", "0", "--model", "cnn", "--init", s(&w)]), "unexpected tensor `2.bias`: cnn has no such parameter or buffer");
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a tensor file").unwrap();
    fails(&plateau(&["eval", "--checkpoint", s(&junk)]), "not a valid safetensors file");
    fails(&plateau(&["eval", "--checkpoint", s(&w), "--model", "mlp"]), "the model needs [256, 256]");
}
