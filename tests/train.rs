//! Training: data loaders on real MNIST and on corrupted copies, augmentation streams,
//! checkpoints and resume, SAM with rho = 0 against SGD, and an end-to-end MNIST run.

use plateau::runtime::data::{epoch_order, Augment, DataError, DataSource, Dataset};
use plateau::runtime::Backend;
use plateau::train::{Budget, LrSchedule, Model, TrainConfig, Trainer};
use plateau::{BaseOptimizer, ModelSpec, OptimizerSpec, Sam};
use std::io::{Read, Write};
use std::path::PathBuf;

/// The real MNIST digits: `PLATEAU_MNIST_DIR`, else the shared copy next to the project.
/// Without either, says loudly that the test is skipped and how to get the data.
fn mnist_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PLATEAU_MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist10k"));
    if dir.join("train-images-idx3-ubyte.gz").exists() || dir.join("train-images-idx3-ubyte").exists() {
        return Some(dir);
    }
    eprintln!(
        "\n*** SKIPPED: no MNIST data at {}. Run `scripts/fetch-mnist.sh DIR` and set PLATEAU_MNIST_DIR=DIR to run this test. ***\n",
        dir.display()
    );
    None
}

fn config(optimizer: OptimizerSpec, budget: Budget) -> TrainConfig {
    TrainConfig {
        optimizer,
        rho: 0.05,
        lr: 0.05,
        schedule: LrSchedule::Constant,
        batch_size: 128,
        budget,
        seed: 7,
        device: Backend::Reference,
        augment: Augment::none(),
        shuffle: true,
    }
}

fn sgd() -> OptimizerSpec {
    OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: None }
}

fn sam() -> OptimizerSpec {
    OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(Sam::default()) }
}

fn small_mlp() -> Model {
    Model::zoo(ModelSpec::Mlp { hidden: vec![32] })
}

/// The weights as raw bytes (for bit-for-bit comparisons).
fn weight_bytes(t: &Trainer) -> Vec<(String, Vec<u8>)> {
    t.state_dict().unwrap().into_iter().map(|e| (e.name, e.bytes)).collect()
}

#[test]
fn mnist_loader_reads_the_real_digits() {
    let Some(dir) = mnist_dir() else { return };
    let d = Dataset::load(&DataSource::Mnist(dir.clone()), None).unwrap();
    assert_eq!((d.train.len(), d.test.len(), d.shape, d.classes), (8000, 2000, [1, 28, 28], 10));
    assert_eq!(d.train.histogram(10), [805, 890, 782, 833, 769, 703, 846, 851, 739, 782]);
    assert_eq!(d.test.histogram(10), [196, 237, 209, 199, 211, 160, 168, 219, 205, 196]);
    assert_eq!(&d.train.labels[..10], &[9, 7, 4, 8, 0, 9, 9, 5, 3, 9]);
    // The first image's first lit pixels (row 6), as x / 255, and its total ink.
    let first = &d.train.images[..784];
    assert!(first[..180].iter().all(|&v| v == 0.0));
    assert_eq!(&first[180..185], &[29.0 / 255.0, 222.0 / 255.0, 1.0, 254.0 / 255.0, 211.0 / 255.0]);
    let ink: f64 = first.iter().map(|&v| (v * 255.0).round() as f64).sum();
    assert_eq!(ink, 17768.0);
    // --normalize applies (x/255 - mean) / std.
    let n = Dataset::load(&DataSource::Mnist(dir), Some((0.5, 0.25))).unwrap();
    assert_eq!(n.train.images[182], (1.0 - 0.5) / 0.25);
}

fn gunzip(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

/// Copies of the real files, corrupted one way each, give errors naming the file and the fault.
#[test]
fn corrupted_mnist_files_give_clear_errors() {
    let Some(dir) = mnist_dir() else { return };
    let images = gunzip(&dir.join("train-images-idx3-ubyte.gz"));
    let labels = gunzip(&dir.join("train-labels-idx1-ubyte.gz"));
    let test_images = gunzip(&dir.join("test-images-idx3-ubyte.gz"));
    let test_labels = gunzip(&dir.join("test-labels-idx1-ubyte.gz"));
    let case = |name: &str, edit: &dyn Fn(&mut Vec<u8>, &mut Vec<u8>)| {
        let tmp = tempfile::tempdir().unwrap();
        let (mut i, mut l) = (images.clone(), labels.clone());
        edit(&mut i, &mut l);
        std::fs::write(tmp.path().join("train-images-idx3-ubyte"), &i).unwrap();
        std::fs::write(tmp.path().join("train-labels-idx1-ubyte"), &l).unwrap();
        std::fs::write(tmp.path().join("t10k-images-idx3-ubyte"), &test_images).unwrap();
        std::fs::write(tmp.path().join("t10k-labels-idx1-ubyte"), &test_labels).unwrap();
        let r = Dataset::load(&DataSource::Mnist(tmp.path().to_path_buf()), None);
        (r.map(|d| d.train.len()), name.to_string())
    };
    // The plain (uncompressed) copies load like the originals.
    assert_eq!(case("plain", &|_, _| {}).0.unwrap(), 8000);
    let (r, _) = case("truncated", &|i, _| i.truncate(i.len() - 100));
    let e = r.unwrap_err();
    assert!(matches!(e, DataError::Truncated { expected: 6_272_016, got: 6_271_916, .. }), "{e}");
    assert!(e.to_string().contains("train-images-idx3-ubyte: truncated: the header promises 6272016 bytes"), "{e}");
    // Dimensions whose product does not fit in a size: an error, not a wrapped count.
    let (r, _) = case("huge", &|i, _| i[4..16].copy_from_slice(&[0xff; 12]));
    let e = r.unwrap_err().to_string();
    assert!(e.contains("describe more bytes than a file can hold"), "{e}");
    let (r, _) = case("magic", &|i, _| i[3] = 0x01);
    let e = r.unwrap_err();
    assert!(matches!(e, DataError::BadMagic { got: 0x0801, expected: 0x0803, .. }), "{e}");
    let (r, _) = case("count", &|_, l| {
        l[7] = 0x3f; // 8000 = 0x1f40 -> 0x1f3f labels, one fewer than the images
        l.pop();
    });
    assert!(r.unwrap_err().to_string().contains("7999 labels for 8000 images"));
    let (r, _) = case("label", &|_, l| l[8] = 12);
    assert!(r.unwrap_err().to_string().contains("label 12 at position 0 is not a digit"));
    // A truncated gzip stream.
    let tmp = tempfile::tempdir().unwrap();
    let gz = std::fs::read(dir.join("train-images-idx3-ubyte.gz")).unwrap();
    std::fs::write(tmp.path().join("train-images-idx3-ubyte.gz"), &gz[..gz.len() / 2]).unwrap();
    std::fs::copy(dir.join("train-labels-idx1-ubyte.gz"), tmp.path().join("train-labels-idx1-ubyte.gz")).unwrap();
    let e = Dataset::load(&DataSource::Mnist(tmp.path().to_path_buf()), None).unwrap_err();
    assert!(e.to_string().contains("train-images-idx3-ubyte.gz"), "{e}");
    // A missing file names what was looked for and how to get the data.
    std::fs::remove_file(tmp.path().join("train-images-idx3-ubyte.gz")).unwrap();
    let e = Dataset::load(&DataSource::Mnist(tmp.path().to_path_buf()), None).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }) && e.to_string().contains("fetch-mnist"), "{e}");
}

/// CIFAR-10's binary layout, on a small generated copy; a cut record is an error.
#[test]
fn cifar_binary_loader_reads_records_and_rejects_cut_files() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = |label: u8, v: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(v, 3072));
        r
    };
    for i in 1..=5 {
        let body: Vec<u8> = (0..4).flat_map(|k| rec((k + i) % 10, 51 * k)).collect();
        std::fs::write(tmp.path().join(format!("data_batch_{i}.bin")), body).unwrap();
    }
    std::fs::write(tmp.path().join("test_batch.bin"), [rec(3, 255), rec(9, 0)].concat()).unwrap();
    let d = Dataset::load(&DataSource::Cifar10(tmp.path().to_path_buf()), None).unwrap();
    assert_eq!((d.train.len(), d.test.len(), d.shape, d.classes), (20, 2, [3, 32, 32], 10));
    assert_eq!(&d.train.labels[..4], &[1, 2, 3, 4]);
    assert_eq!(d.test.labels, vec![3, 9]);
    assert_eq!(d.test.images[0], 1.0);
    assert_eq!(d.train.images[3072], 51.0 / 255.0);
    assert_eq!(d.augment, Augment::cifar());
    let mut f = std::fs::OpenOptions::new().append(true).open(tmp.path().join("test_batch.bin")).unwrap();
    f.write_all(&[1, 2, 3]).unwrap();
    let e = Dataset::load(&DataSource::Cifar10(tmp.path().to_path_buf()), None).unwrap_err();
    assert!(matches!(e, DataError::Truncated { expected: 9219, got: 6149, .. }), "{e}");
    // The test split alone needs only the test file; a file where the folder belongs is named.
    std::fs::write(tmp.path().join("test_batch.bin"), [rec(3, 255), rec(9, 0)].concat()).unwrap();
    for i in 1..=5 {
        std::fs::remove_file(tmp.path().join(format!("data_batch_{i}.bin"))).unwrap();
    }
    let t = Dataset::load_test(&DataSource::Cifar10(tmp.path().to_path_buf()), None).unwrap();
    assert_eq!((t.train.len(), t.test.labels.clone()), (0, vec![3, 9]));
    let e = Dataset::load(&DataSource::Cifar10(tmp.path().to_path_buf()), None).unwrap_err();
    assert!(matches!(&e, DataError::Missing { path, .. } if path.ends_with("data_batch_1.bin")), "{e}");
    let file = tmp.path().join("test_batch.bin");
    for source in [DataSource::Cifar10(file.clone()), DataSource::Mnist(file.clone())] {
        let e = Dataset::load(&source, None).unwrap_err();
        assert!(e.to_string().contains("test_batch.bin: is a file; give the folder"), "{e}");
    }
}

#[test]
fn the_synthetic_default_is_deterministic_and_noisy_only_in_training() {
    let a = Dataset::load(&DataSource::Synthetic, None).unwrap();
    let b = Dataset::load(&DataSource::Synthetic, None).unwrap();
    assert_eq!(a.train, b.train);
    assert_eq!((a.train.len(), a.test.len(), a.classes, a.shape), (1024, 1024, 8, [1, 16, 16]));
    // Balanced test set; the training labels carry 20% noise.
    assert_eq!(a.test.histogram(8), vec![128; 8]);
    let changed = a.train.labels.iter().enumerate().filter(|(i, &l)| l != (i % 8) as i32).count();
    assert_eq!(changed, 205);
    // Orders: seeded, different per epoch, file order without shuffling.
    assert_eq!(epoch_order(10, 1, 0, true), epoch_order(10, 1, 0, true));
    assert_ne!(epoch_order(10, 1, 0, true), epoch_order(10, 1, 1, true));
    assert_eq!(epoch_order(5, 1, 3, false), vec![0, 1, 2, 3, 4]);
    // Label noise and validation split are seeded and sized as asked.
    let mut c = a.clone();
    assert_eq!(c.add_label_noise(0.5, 3).unwrap(), 512);
    let v = c.split_validation(0.25, 3).unwrap();
    assert_eq!((v.len(), c.train.len()), (256, 768));
    assert!(c.add_label_noise(1.5, 3).is_err());
}

/// SAM with rho = 0 takes exactly SGD's steps: the same weights, bit for bit, after 20 steps
/// of real training (shuffled batches, the whole pipeline).
#[test]
fn sam_with_zero_rho_matches_sgd_bit_for_bit() {
    let data = Dataset::load(&DataSource::Synthetic, None).unwrap();
    let mut runs = Vec::new();
    for (spec, rho) in [(sgd(), 0.05), (sam(), 0.0)] {
        let mut c = config(spec, Budget::Steps(20));
        c.rho = rho;
        let mut t = Trainer::new(&small_mlp(), &c, &data, "synthetic", None).unwrap();
        t.progress = false;
        while !t.finished() {
            t.train_epoch().unwrap();
        }
        assert_eq!(t.steps_done(), 20);
        runs.push(weight_bytes(&t));
    }
    assert_eq!(runs[0], runs[1]);
    // And a positive rho does change them.
    let mut c = config(sam(), Budget::Steps(20));
    c.rho = 0.05;
    let mut t = Trainer::new(&small_mlp(), &c, &data, "synthetic", None).unwrap();
    t.progress = false;
    while !t.finished() {
        t.train_epoch().unwrap();
    }
    assert_ne!(runs[0], weight_bytes(&t));
}

/// A run stopped after its first epoch and resumed from the checkpoint ends with the weights
/// of the uninterrupted run, bit for bit (cosine schedule, shuffling and augmentation on).
#[test]
fn resumed_runs_match_uninterrupted_runs_bit_for_bit() {
    let data = Dataset::load(&DataSource::Synthetic, None).unwrap();
    let mut c = config(sam(), Budget::Epochs(3));
    c.schedule = LrSchedule::Cosine;
    c.augment = Augment { pad_crop: 2, flip: true, cutout: 4 };
    let run = |stop_after: Option<usize>, dir: &std::path::Path| {
        let mut t = Trainer::new(&small_mlp(), &c, &data, "synthetic", None).unwrap();
        t.progress = false;
        let mut epochs = 0;
        while !t.finished() && stop_after != Some(epochs) {
            t.train_epoch().unwrap();
            t.save_checkpoint(dir).unwrap();
            epochs += 1;
        }
        t
    };
    let whole = tempfile::tempdir().unwrap();
    let uninterrupted = run(None, whole.path());
    let parts = tempfile::tempdir().unwrap();
    let stopped = run(Some(1), parts.path());
    assert_eq!(stopped.steps_done(), 8);
    drop(stopped);
    let newest = plateau::train::newest_checkpoint(parts.path()).unwrap().unwrap();
    assert!(newest.ends_with("step-00000008.safetensors"), "{}", newest.display());
    let mut resumed = Trainer::new(&small_mlp(), &c, &data, "synthetic", None).unwrap();
    resumed.progress = false;
    resumed.resume(&newest).unwrap();
    assert_eq!(resumed.steps_done(), 8);
    while !resumed.finished() {
        resumed.train_epoch().unwrap();
    }
    assert_eq!(weight_bytes(&resumed), weight_bytes(&uninterrupted));
    // The metrics history survives the resume.
    assert_eq!(resumed.history.len(), 3);
    assert_eq!(resumed.history[0].test_accuracy, uninterrupted.history[0].test_accuracy);
    // A checkpoint from a different run is refused, naming what differs.
    let mut other = c.clone();
    other.lr = 0.1;
    let mut t = Trainer::new(&small_mlp(), &other, &data, "synthetic", None).unwrap();
    let e = t.resume(&newest).unwrap_err().to_string();
    assert!(e.contains("different run") && e.contains("lr"), "{e}");
}

/// Weights written with PyTorch names and layouts; loading checks names and shapes and
/// changes nothing unless every tensor fits.
#[test]
fn state_dicts_use_pytorch_names_and_are_checked_on_load() {
    let data = Dataset::load(&DataSource::Synthetic, None).unwrap();
    let c = config(sgd(), Budget::Steps(0));
    let t = Trainer::new(&Model::zoo(ModelSpec::Mlp { hidden: vec![32] }), &c, &data, "synthetic", None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("w.safetensors");
    t.save_state_dict(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec())).collect();
    names.sort();
    // nn.Sequential(Linear(256, 32), ReLU, Linear(32, 8)) on flattened images: weights are
    // [out, in].
    assert_eq!(names, vec![("0.bias".into(), vec![32]), ("0.weight".into(), vec![32, 256]), ("2.bias".into(), vec![8]), ("2.weight".into(), vec![8, 32])]);
    // Into a model of another shape: the error names the tensor and both shapes.
    let wide = Model::zoo(ModelSpec::Mlp { hidden: vec![64] });
    let mut t2 = Trainer::new(&wide, &c, &data, "synthetic", None).unwrap();
    let before = weight_bytes(&t2);
    let e = t2.load_state_dict(&path).unwrap_err().to_string();
    assert!(e.contains("`0.weight` has shape [32, 256], the model needs [64, 256]"), "{e}");
    assert_eq!(weight_bytes(&t2), before, "a failed load changes nothing");
    // A BatchNorm model writes running statistics and an int64 num_batches_tracked.
    let cnn_data = Dataset::load(&DataSource::Synthetic, None).unwrap();
    let wrn = Trainer::new(&Model::zoo(ModelSpec::Wrn16 { k: 1 }), &c, &cnn_data, "synthetic", None).unwrap();
    let sd = wrn.state_dict().unwrap();
    let nbt = sd.iter().find(|e| e.name.ends_with("num_batches_tracked")).expect("num_batches_tracked");
    assert_eq!((nbt.dtype, nbt.shape.len(), nbt.bytes.len()), (safetensors::Dtype::I64, 0, 8));
    assert!(sd.iter().any(|e| e.name.ends_with(".running_var")));
}

/// End to end: the default MLP trained with SAM on the 8,000 real training digits reaches at
/// least 90% accuracy on the 2,000 test digits.
#[test]
fn mlp_with_sam_reaches_90_percent_on_mnist() {
    let Some(dir) = mnist_dir() else { return };
    let data = Dataset::load(&DataSource::Mnist(dir), None).unwrap();
    let c = config(sam(), Budget::Epochs(2));
    let mut t = Trainer::new(&Model::zoo(ModelSpec::default()), &c, &data, "mnist", None).unwrap();
    t.progress = false;
    while !t.finished() {
        t.train_epoch().unwrap();
    }
    let acc = t.history.last().unwrap().test_accuracy;
    eprintln!("MNIST test accuracy after 2 epochs of SAM: {acc:.4}");
    assert!(acc >= 0.90, "test accuracy {acc}");
}

/// Training on wgpu (lavapipe in CI) follows the reference: the same batches, losses within
/// f32 noise, weights within 1e-4 relative after 16 steps of SAM.
#[test]
fn training_on_wgpu_follows_the_reference() {
    let data = Dataset::load(&DataSource::Synthetic, None).unwrap();
    let mut weights = Vec::new();
    let mut losses = Vec::new();
    for device in [Backend::Reference, Backend::Wgpu] {
        let mut c = config(sam(), Budget::Steps(16));
        c.device = device;
        let mut t = Trainer::new(&small_mlp(), &c, &data, "synthetic", None).unwrap();
        t.progress = false;
        while !t.finished() {
            t.train_epoch().unwrap();
        }
        losses.push(t.history.iter().map(|m| m.train_loss).collect::<Vec<_>>());
        let sd = t.state_dict().unwrap();
        weights.push(sd.into_iter().flat_map(|e| e.bytes.chunks(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect::<Vec<_>>()).collect::<Vec<f64>>());
    }
    for (a, b) in losses[0].iter().zip(&losses[1]) {
        assert!((a - b).abs() < 1e-4, "losses {:?} vs {:?}", losses[0], losses[1]);
    }
    let norm = weights[0].iter().map(|v| v * v).sum::<f64>().sqrt();
    let diff = weights[0].iter().zip(&weights[1]).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    assert!(diff <= 1e-4 * norm, "weights differ by {diff} (norm {norm})");
}

/// Evaluation takes any split (a program for its last, shorter batch compiled when first
/// needed), a file evaluates on a test-only dataset, and a spent budget trains no further.
#[test]
fn evaluation_takes_any_split_and_a_spent_run_refuses_to_train() {
    let data = Dataset::load(&DataSource::Synthetic, None).unwrap();
    let mut t = Trainer::new(&small_mlp(), &config(sgd(), Budget::Steps(8)), &data, "synthetic", None).unwrap();
    t.progress = false;
    let m = t.train_epoch().unwrap();
    assert!(t.finished());
    let e = t.train_epoch().unwrap_err();
    assert!(e.to_string().contains("the run's budget (8 steps) is spent"), "{e}");
    assert_eq!(t.history.len(), 1);
    // 1,000 test examples: batches of 128 and a last one of 104, never prepared.
    let head = plateau::runtime::data::Split { images: data.test.images[..1000 * data.dim()].to_vec(), labels: data.test.labels[..1000].to_vec() };
    let (loss, acc) = t.evaluate(&head).unwrap();
    let (whole_loss, whole_acc) = t.evaluate(&data.test).unwrap();
    assert_eq!((whole_loss, whole_acc), (m.test_loss, m.test_accuracy));
    assert!(loss.is_finite() && (0.0..=1.0).contains(&acc) && (loss, acc) != (whole_loss, whole_acc));
    // The same figures from the saved file on the test split alone.
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    t.save_state_dict(&w).unwrap();
    let test_only = Dataset::load_test(&DataSource::Synthetic, None).unwrap();
    assert!(test_only.train.is_empty());
    let got = plateau::train::evaluate_file(&small_mlp(), &test_only, &test_only.test, &w, 128, Backend::Reference).unwrap();
    assert_eq!(got, (m.test_loss, m.test_accuracy));
    let got = plateau::train::evaluate_file(&small_mlp(), &test_only, &head, &w, 128, Backend::Reference).unwrap();
    assert_eq!(got, (loss, acc));
}

/// Settings no step can run with are errors from the library too, naming the setting.
#[test]
fn the_trainer_refuses_settings_a_step_cannot_run_with() {
    let data = Dataset::load(&DataSource::Synthetic, None).unwrap();
    let sam_with = |f: &dyn Fn(&mut Sam)| {
        let mut s = Sam::default();
        f(&mut s);
        OptimizerSpec { base: BaseOptimizer::sgd(0.9, 5e-4), sam: Some(s) }
    };
    let mut rho = config(sam(), Budget::Steps(1));
    rho.rho = f64::NAN;
    let cases = [
        (rho, "rho (--rho) must be a finite non-negative number an f32 holds, got NaN"),
        (config(OptimizerSpec { base: BaseOptimizer::sgd(-0.5, 5e-4), sam: None }, Budget::Steps(1)), "momentum (--momentum) must be"),
        (config(OptimizerSpec { base: BaseOptimizer::sgd(0.9, 1e40), sam: None }, Budget::Steps(1)), "weight_decay (--weight-decay) must be"),
        (config(OptimizerSpec { base: BaseOptimizer::Sgd { momentum: 0.0, nesterov: true, weight_decay: 0.0 }, sam: None }, Budget::Steps(1)), "needs a momentum above 0"),
        (config(OptimizerSpec { base: BaseOptimizer::AdamW { beta1: 1.0, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }, sam: None }, Budget::Steps(1)), "AdamW's beta1 must be in [0, 1), got 1"),
        (config(sam_with(&|s| s.ascent_steps = 0), Budget::Steps(1)), "ascent_steps (--ascent-steps) must be at least 1"),
        (config(sam_with(&|s| s.micro_batch = Some(3)), Budget::Steps(1)), "micro_batch (--m) 3 must divide the batch size 128"),
    ];
    for (c, needle) in cases {
        let e = Trainer::new(&small_mlp(), &c, &data, "synthetic", None).err().expect(needle);
        assert!(e.to_string().contains(needle), "{e}");
    }
}
