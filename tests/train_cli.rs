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
    // --init starts a run that --resume would continue; resumed, the checkpoint's weights win
    // (the same figures as resuming without it).
    let (m2, m3) = (tmp.path().join("m2.jsonl"), tmp.path().join("m3.jsonl"));
    let ck2 = tmp.path().join("ck2");
    std::fs::create_dir(&ck2).unwrap();
    std::fs::copy(ckpt.join("step-00000008.safetensors"), ck2.join("step-00000008.safetensors")).unwrap();
    let mut with_init = vec!["train", "--epochs", "2", "--checkpoint-dir", s(&ckpt), "--resume", "--init", s(&save), "--metrics", s(&m2)];
    with_init.extend(SMALL);
    std::fs::remove_file(ckpt.join("step-00000016.safetensors")).unwrap();
    let out = ok(&plateau(&with_init));
    assert!(out.contains("not loaded: the run continues from its checkpoint") && !out.contains("initial weights from"), "{out}");
    let mut without = vec!["train", "--epochs", "2", "--checkpoint-dir", s(&ck2), "--resume", "--metrics", s(&m3)];
    without.extend(SMALL);
    ok(&plateau(&without));
    assert_eq!(metrics_lines(&m2)[0]["train_loss"], metrics_lines(&m3)[0]["train_loss"]);
    assert_eq!(metrics_lines(&m2)[0]["train_loss"], lines[1]["train_loss"], "the same second epoch as the uninterrupted run");
}

/// Outputs through links and into devices, and two outputs naming one file.
#[test]
fn outputs_follow_links_and_never_share_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p);
    // A link is kept, and the file it leads to written (relative links resolve from the link's
    // folder).
    std::fs::create_dir(t("real")).unwrap();
    std::os::unix::fs::symlink("real/w.safetensors", t("link.safetensors")).unwrap();
    ok(&plateau(&["train", "--steps", "0", "--hidden", "32", "--save", s(&t("link.safetensors"))]));
    assert!(std::fs::symlink_metadata(t("link.safetensors")).unwrap().file_type().is_symlink());
    assert!(std::fs::read(t("real/w.safetensors")).unwrap().len() > 1000);
    assert_eq!(files_in(&t("real")), ["w.safetensors"], "no temporary left beside the file");
    std::os::unix::fs::symlink(t("real/c.png"), t("c.png")).unwrap();
    ok(&plateau(&["compare", "--steps", "2", "--hidden", "32", "--plot", s(&t("c.png"))]));
    assert!(std::fs::symlink_metadata(t("c.png")).unwrap().file_type().is_symlink());
    assert_eq!(&std::fs::read(t("real/c.png")).unwrap()[..4], b"\x89PNG");
    assert_eq!(files_in(&t("real")), ["c.png", "w.safetensors"]);
    // A device is written in place, never replaced (checked without writing /dev/null).
    assert_eq!(plateau::checkpoint::write_target(Path::new("/dev/null")).unwrap(), (Path::new("/dev/null").to_path_buf(), false));
    assert_eq!(plateau::checkpoint::write_target(&t("link.safetensors")).unwrap(), (t("real/w.safetensors"), true));
    // One file for two outputs, directly or through a link: refused before anything runs,
    // and the file keeps what it held.
    let m = t("m.jsonl");
    std::fs::write(&m, "{\"old\":1}\n").unwrap();
    std::os::unix::fs::symlink(&m, t("m-link.png")).unwrap();
    for args in [
        vec!["train", "--steps", "3", "--hidden", "32", "--save", s(&m), "--metrics", s(&m)],
        vec!["compare", "--steps", "3", "--hidden", "32", "--plot", s(&t("m-link.png")), "--metrics", s(&m)],
    ] {
        let out = plateau(&args);
        fails(&out, "the same file; give each its own");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("epoch "), "{args:?} trained before failing");
        assert_eq!(std::fs::read_to_string(&m).unwrap(), "{\"old\":1}\n");
    }
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
    // Under compare the message names the run (and no checkpoints, which compare never writes).
    let out = plateau(&["compare", "--hidden", "32", "--lr", "1000", "--epochs", "6", "--plot", s(&tmp.path().join("c.png"))]);
    fails(&out, "error: the SGD run: the loss is NaN at step 20 (epoch 3)");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("checkpoint"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn bad_training_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    fails(&plateau(&["train", "--data", &format!("mnist:{}", s(&missing))]), "no such directory");
    fails(&plateau(&["train", "--data", "imagenet:/x"]), "unknown dataset `imagenet`");
    fails(&plateau(&["train", "--lr=-1"]), "--lr must be a finite non-negative number");
    for bad in ["0.5", "a,b", "1,2,3"] {
        let out = plateau(&["train", "--normalize", bad]);
        assert_eq!(out.status.code(), Some(2), "--normalize {bad}: a value that does not parse is a usage error");
        assert!(String::from_utf8_lossy(&out.stderr).contains("takes MEAN,STD (two numbers)"));
    }
    fails(&plateau(&["train", "--normalize", "0.5,0"]), "positive std");
    fails(&plateau(&["train", "--schedule", "linear"]), "unknown schedule `linear`");
    fails(&plateau(&["train", "--device", "tpu"]), "unknown device `tpu`");
    fails(&plateau(&["train", "--label-noise", "2"]), "--label-noise: the label-noise fraction must be in [0, 1], got 2");
    fails(&plateau(&["train", "--epochs", "0"]), "--epochs must be at least 1");
    fails(&plateau(&["train", "--model", "cnn", "--hidden", "32"]), "--hidden sets the MLP's layer widths; --model cnn has none");
    fails(&plateau(&["train", "--batch-size", "4096"]), "fewer than one batch of 4096");
    fails(&plateau(&["train", "--optimizer", "sgd", "--momentum", "0", "--nesterov"]), "--nesterov needs a momentum above 0");
    // The synthetic images are 16 x 16.
    fails(&plateau(&["train", "--cutout", "17"]), "--cutout 17: at most the images' side, 16");
    fails(&plateau(&["train", "--cutout", "18446744073709551614"]), "at most the images' side");
    let labels = tmp.path().join("train-labels-idx1-ubyte");
    std::fs::write(&labels, b"x").unwrap();
    fails(&plateau(&["train", "--data", &format!("mnist:{}", s(&labels))]), "train-labels-idx1-ubyte: is a file; give the folder that holds the IDX files");
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
    // Weights of the synthetic data's model on CIFAR's images (eval reads only the test file):
    // the data they were trained on is named.
    let cifar = tmp.path().join("cifar");
    std::fs::create_dir(&cifar).unwrap();
    std::fs::write(cifar.join("test_batch.bin"), [vec![3u8], vec![7u8; 3072]].concat()).unwrap();
    fails(
        &plateau(&["eval", "--checkpoint", s(&w), "--data", &format!("cifar10:{}", s(&cifar))]),
        "has shape [32, 256], the model needs [32, 3072]: the file holds weights for 1x16x16 inputs in 8 classes (synthetic), the data here is 3x32x32 in 10; pass the --data they were trained on",
    );
}

fn metrics_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut f: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    f.sort();
    f
}

/// The epoch's last update is checked too: an update that leaves the weights unusable stops
/// the run before anything is written (each step's loss is taken before its own update).
#[test]
fn an_update_that_breaks_the_weights_stops_the_run_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, save) = (tmp.path().join("ck"), tmp.path().join("w.safetensors"));
    let out = plateau(&["train", "--optimizer", "sgd", "--hidden", "32", "--lr", "1e30", "--steps", "1", "--checkpoint-dir", s(&ck), "--save", s(&save)]);
    fails(&out, "the test loss is NaN after step 1 (epoch 1); training stopped; no checkpoint was written");
    assert!(files_in(&ck).is_empty() && !save.exists());
    // A rate times a decay past f32's range: the weights themselves are infinite after the
    // first update.
    let out = plateau(&["train", "--optimizer", "sgd", "--hidden", "32", "--lr", "3e38", "--weight-decay", "3e38", "--steps", "1", "--checkpoint-dir", s(&ck), "--save", s(&save)]);
    fails(&out, "after step 1 (epoch 1) `0.weight` holds -inf at index 0: the update left the weights non-finite; training stopped; no checkpoint was written");
    assert!(files_in(&ck).is_empty() && !save.exists());
    // Weights that are not finite numbers are refused when loaded, naming the tensor.
    let w = tmp.path().join("init.safetensors");
    ok(&plateau(&["train", "--steps", "0", "--hidden", "32", "--save", s(&w)]));
    let mut bytes = std::fs::read(&w).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let meta: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header]).unwrap();
    let first = meta.as_object().unwrap().iter().filter(|(k, _)| *k != "__metadata__").min_by_key(|(_, v)| v["data_offsets"][0].as_u64().unwrap()).unwrap().0.clone();
    bytes[8 + header..8 + header + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&w, &bytes).unwrap();
    fails(&plateau(&["train", "--steps", "1", "--hidden", "32", "--init", s(&w)]), &format!("`{first}` holds NaN at index 0; weights must be finite numbers"));
}

/// `--save`, `--checkpoint-dir`, `--plot` and `--metrics` are checked before the first step;
/// `--metrics` appends; a folder of another run's checkpoints is not overwritten.
#[test]
fn outputs_are_checked_before_training_and_nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p);
    for (args, needle) in [
        (vec!["train", "--save", s(&t("nodir/w.safetensors"))], "--save"),
        (vec!["train", "--save", s(tmp.path())], "is a folder"),
        (vec!["compare", "--plot", s(&t("nodir/c.png"))], "the folder"),
        (vec!["compare", "--plot", s(&t("c.svg"))], "the plot is a PNG"),
        (vec!["compare", "--steps", "0"], "compare needs at least one step"),
        (vec!["train", "--epochs", "2305843009213693952"], "--epochs 2305843009213693952: too many steps"),
        (vec!["train", "--lr", "-1"], "--lr must be a finite non-negative number, got -1"),
        (vec!["train", "--optimizer", "adamw", "--nesterov"], "AdamW has none"),
        (vec!["train", "--optimizer", "sgd", "--p", "inf"], "need --optimizer sam or sam-adamw"),
        (vec!["train", "--eta", "0.1"], "--eta is ASAM's: it needs --adaptive"),
    ] {
        let out = plateau(&args);
        fails(&out, needle);
        assert!(!String::from_utf8_lossy(&out.stdout).contains("epoch "), "{args:?} trained before failing");
    }
    std::fs::write(t("afile"), b"x").unwrap();
    fails(&plateau(&["train", "--checkpoint-dir", s(&t("afile"))]), "is a file, not a folder");
    // A folder that takes no new files is refused before training (not after an epoch; as
    // root every folder takes them, so this is checked for other users only).
    let is_root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root {
        use std::os::unix::fs::PermissionsExt;
        let ro = t("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        fails(&plateau(&["train", "--checkpoint-dir", s(&ro)]), "cannot write in it");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // --metrics appends to what the file holds.
    let m = t("m.jsonl");
    std::fs::write(&m, "{\"mine\":1}\n").unwrap();
    ok(&plateau(&["train", "--epochs", "2", "--hidden", "32", "--metrics", s(&m)]));
    let lines = metrics_lines(&m);
    assert_eq!((lines.len(), lines[0]["mine"].as_i64(), lines[2]["epoch"].as_i64()), (3, Some(1), Some(2)));
    // A second run into a folder of checkpoints is refused without --resume; an unfinished
    // temporary of a killed write is removed when the run resumes.
    let ck = t("ck");
    ok(&plateau(&["train", "--epochs", "1", "--hidden", "32", "--checkpoint-dir", s(&ck)]));
    fails(&plateau(&["train", "--epochs", "1", "--hidden", "32", "--lr", "0.1", "--checkpoint-dir", s(&ck)]), "holds checkpoints already");
    std::fs::write(ck.join(".step-00000016.safetensors.tmp-99999"), b"partial").unwrap();
    ok(&plateau(&["train", "--epochs", "2", "--hidden", "32", "--checkpoint-dir", s(&ck), "--resume"]));
    assert_eq!(files_in(&ck), ["step-00000008.safetensors", "step-00000016.safetensors"]);
    // --save may name a file in a checkpoint folder the run creates.
    let fresh = t("fresh");
    ok(&plateau(&["train", "--steps", "1", "--hidden", "32", "--checkpoint-dir", s(&fresh), "--save", s(&fresh.join("w.safetensors"))]));
    assert_eq!(files_in(&fresh), ["step-00000001.safetensors", "w.safetensors"]);
}

/// A resumed run must be the run that wrote the checkpoint: the flags that change the data,
/// the optimizer's settings and (with a schedule that depends on it) the budget are compared,
/// each difference named by its flag. A run resumed within an epoch gives that epoch one row.
#[test]
fn resume_names_each_setting_that_differs_and_continues_epochs_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ck");
    ok(&plateau(&["train", "--epochs", "1", "--hidden", "32", "--schedule", "cosine", "--checkpoint-dir", s(&ck)]));
    let resume = |extra: &[&str]| {
        let mut a = vec!["train", "--hidden", "32", "--schedule", "cosine", "--checkpoint-dir", s(&ck), "--resume"];
        a.extend(extra);
        if !extra.contains(&"--epochs") {
            a.extend(["--epochs", "1"]);
        }
        plateau(&a)
    };
    fails(&resume(&["--normalize", "0.5,0.5"]), "data (--data, --normalize, --label-noise, --validation): checkpoint synthetic vs now synthetic, --normalize 0.5,0.5");
    fails(&resume(&["--validation", "0.25"]), "--validation 0.25");
    fails(&resume(&["--weight-decay", "0"]), "weight_decay (--weight-decay): checkpoint 0.0005 vs now 0.0");
    fails(&resume(&["--epochs", "3"]), "budget (--epochs / --steps): checkpoint --epochs 1 vs now --epochs 3");
    // Within an epoch (8 steps of 128): 5 steps, then on to 12, against 12 at once.
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (ma, mb) = (tmp.path().join("a.jsonl"), tmp.path().join("b.jsonl"));
    ok(&plateau(&["train", "--steps", "12", "--hidden", "32", "--metrics", s(&ma), "--checkpoint-dir", s(&a)]));
    ok(&plateau(&["train", "--steps", "5", "--hidden", "32", "--checkpoint-dir", s(&b)]));
    let out = ok(&plateau(&["train", "--steps", "12", "--hidden", "32", "--metrics", s(&mb), "--checkpoint-dir", s(&b), "--resume"]));
    assert_eq!(out.lines().filter(|l| l.starts_with("| 1 |")).count(), 1, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("epoch   2") && l.ends_with("(part of the epoch: the budget ended within it)")).count(), 1, "{out}");
    let (la, lb) = (metrics_lines(&ma), metrics_lines(&mb));
    assert_eq!((la.len(), lb.len()), (2, 2));
    // The second epoch stopped after 4 of its 8 steps: marked part-way; the first is whole.
    for l in [&la, &lb] {
        assert_eq!((l[0].get("partial"), &l[1]["partial"]), (None, &serde_json::Value::Bool(true)), "{l:?}");
    }
    for key in ["train_loss", "train_accuracy", "test_loss", "test_accuracy"] {
        let (x, y) = (la[0][key].as_f64().unwrap(), lb[0][key].as_f64().unwrap());
        assert!((x - y).abs() < 1e-9, "epoch 1 {key}: {x} whole, {y} resumed");
    }
}

/// compare's SAM run takes the SAM flags whichever optimizer names the base, and writes both
/// runs' epochs to --metrics, each line naming its run.
#[test]
fn compare_applies_the_sam_flags_and_writes_both_runs_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |opt: &str, p: &str, name: &str| {
        let (m, png) = (tmp.path().join(format!("{name}.jsonl")), tmp.path().join(format!("{name}.png")));
        ok(&plateau(&["compare", "--epochs", "1", "--hidden", "32", "--optimizer", opt, "--p", p, "--metrics", s(&m), "--plot", s(&png)]));
        metrics_lines(&m)
    };
    let (base, sam, l2) = (run("sgd", "inf", "base"), run("sam", "inf", "sam"), run("sgd", "2", "l2"));
    assert_eq!(base.iter().map(|l| l["run"].as_str().unwrap()).collect::<Vec<_>>(), ["SGD", "SAM"]);
    assert_eq!(base[1], serde_json::Value::Object({
        let mut o = sam[1].as_object().unwrap().clone();
        o.insert("seconds".into(), base[1]["seconds"].clone());
        o
    }), "--optimizer sgd --p inf runs the same SAM as --optimizer sam --p inf");
    assert_ne!(base[1]["train_loss"], l2[1]["train_loss"], "--p inf changes the SAM run");
}

/// eval: the file's normalization is applied; flags it would ignore are errors.
#[test]
fn eval_applies_the_recorded_normalization_and_refuses_ignored_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, m) = (tmp.path().join("w.safetensors"), tmp.path().join("m.jsonl"));
    ok(&plateau(&["train", "--epochs", "1", "--hidden", "32", "--normalize", "0.1,0.2", "--save", s(&w), "--metrics", s(&m)]));
    let acc = format!("accuracy {:.4}", metrics_lines(&m)[0]["test_accuracy"].as_f64().unwrap());
    let out = ok(&plateau(&["eval", "--checkpoint", s(&w)]));
    assert!(out.contains("--normalize 0.1,0.2") && out.contains(&acc), "{out} vs {acc}");
    fails(&plateau(&["eval", "--checkpoint", s(&w), "--batch-size", "0"]), "--batch-size must be positive");
    fails(&plateau(&["eval", "--checkpoint", s(&w), "--hidden", "64"]), "--hidden sets the MLP of --model");
}

/// Rewrites one metadata entry of a safetensors file (header length, header, data).
fn rewrite_metadata(path: &Path, key: &str, value: String) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"][key] = value.into();
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(&h);
    out.extend(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// Each SAM and base setting is named when it differs (`--m`, the base's kind); a checkpoint
/// written before identities recorded the optimizer field by field still resumes.
#[test]
fn resume_names_optimizer_settings_and_takes_checkpoints_of_the_first_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ck");
    ok(&plateau(&["train", "--epochs", "1", "--hidden", "32", "--m", "4", "--checkpoint-dir", s(&ck)]));
    let resume = |extra: &[&str]| {
        let mut a = vec!["train", "--epochs", "2", "--hidden", "32", "--checkpoint-dir", s(&ck), "--resume"];
        a.extend(extra);
        plateau(&a)
    };
    fails(&resume(&["--m", "8"]), "written by a different run (micro_batch (--m): checkpoint 4 vs now 8)");
    fails(
        &resume(&["--m", "4", "--optimizer", "sam-adamw"]),
        "base (--optimizer): checkpoint sgd {momentum 0.9, nesterov false, weight_decay 0.0005} vs now adamw {beta1 0.9, beta2 0.999, eps 1e-8, weight_decay 0.0005}",
    );
    fails(&resume(&["--optimizer", "sgd"]), "sam (--optimizer): checkpoint {ascent_steps 1, micro_batch 4, norm L2, second_order false} vs now (none)");
    fails(&resume(&["--m", "4", "--schedule", "cosine"]), "budget (--epochs / --steps): checkpoint (none: a constant schedule) vs now --epochs 2");
    // The first identity: the optimizer as its Debug text, no version, no budget.
    let file = ck.join("step-00000008.safetensors");
    let spec = plateau::OptimizerSpec { base: plateau::BaseOptimizer::sgd(0.9, 5e-4), sam: Some(plateau::Sam { micro_batch: Some(4), ..plateau::Sam::default() }) };
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut run: serde_json::Value = serde_json::from_str(header["__metadata__"]["run"].as_str().unwrap()).unwrap();
    run.as_object_mut().unwrap().remove("version");
    run["optimizer"] = format!("{spec:?}").into();
    rewrite_metadata(&file, "run", run.to_string());
    fails(&resume(&["--m", "4", "--lr", "0.1"]), "lr (--lr): checkpoint 0.05 vs now 0.1");
    let out = ok(&resume(&["--m", "4"]));
    assert!(out.contains("resumed from") && out.contains("at step 8"), "{out}");
}
