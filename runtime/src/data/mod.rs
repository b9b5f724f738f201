//! Datasets for training: MNIST (IDX, plain or gzip), CIFAR-10/100 (binary), and an embedded
//! synthetic default generated in-process; seeded shuffling, a validation split, label noise
//! and augmentation (pad + random crop, horizontal flip, cutout).
//!
//! Every random choice is a pure function of `(seed, epoch, batch)`, so a run resumed from a
//! checkpoint sees exactly the batches the uninterrupted run would have seen.

mod augment;
mod cifar;
mod mnist;
mod synthetic;

pub use augment::Augment;
pub use synthetic::SYNTHETIC;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;

/// What went wrong reading a dataset; every variant names the file.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: file not found{hint}")]
    Missing { path: PathBuf, hint: String },
    #[error("{path}: cannot read: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: wrong magic number {got:#010x} (expected {expected:#010x}); is this an IDX {what} file?")]
    BadMagic { path: PathBuf, expected: u32, got: u32, what: &'static str },
    #[error("{path}: truncated: {why} {expected} bytes, the file has {got}")]
    Truncated { path: PathBuf, why: &'static str, expected: usize, got: usize },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{0}")]
    Spec(String),
}

/// Where the data comes from, as `--data` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// The embedded synthetic dataset.
    Synthetic,
    Mnist(PathBuf),
    Cifar10(PathBuf),
    Cifar100(PathBuf),
}

impl FromStr for DataSource {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "synthetic" {
            return Ok(DataSource::Synthetic);
        }
        let (kind, dir) = s.split_once(':').ok_or_else(|| DataError::Spec(format!("unknown data `{s}` (expected synthetic, mnist:DIR, cifar10:DIR or cifar100:DIR)")))?;
        if dir.is_empty() {
            return Err(DataError::Spec(format!("`{s}` names no directory")));
        }
        let dir = PathBuf::from(dir);
        match kind {
            "mnist" => Ok(DataSource::Mnist(dir)),
            "cifar10" => Ok(DataSource::Cifar10(dir)),
            "cifar100" => Ok(DataSource::Cifar100(dir)),
            other => Err(DataError::Spec(format!("unknown dataset `{other}` in `{s}` (expected synthetic, mnist:DIR, cifar10:DIR or cifar100:DIR)"))),
        }
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSource::Synthetic => write!(f, "synthetic"),
            DataSource::Mnist(d) => write!(f, "mnist:{}", d.display()),
            DataSource::Cifar10(d) => write!(f, "cifar10:{}", d.display()),
            DataSource::Cifar100(d) => write!(f, "cifar100:{}", d.display()),
        }
    }
}

/// Labelled images, `images` row-major `[n, C, H, W]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    pub images: Vec<f32>,
    pub labels: Vec<i32>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// How many examples of each class.
    pub fn histogram(&self, classes: usize) -> Vec<usize> {
        let mut h = vec![0; classes];
        for &l in &self.labels {
            h[l as usize] += 1;
        }
        h
    }

    fn take(&self, idx: &[usize], dim: usize) -> Split {
        Split { images: idx.iter().flat_map(|&i| self.images[i * dim..(i + 1) * dim].iter().copied()).collect(), labels: idx.iter().map(|&i| self.labels[i]).collect() }
    }
}

/// A dataset: train and test splits of `[C, H, W]` images in `classes` classes.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    pub classes: usize,
    pub train: Split,
    pub test: Split,
    /// Augmentation that suits the data (`--no-augment` turns it off).
    pub augment: Augment,
    /// `(mean, std)` when pixels are `(x / 255 - mean) / std` rather than `x / 255`.
    pub normalize: Option<(f32, f32)>,
}

impl Dataset {
    /// Elements per image.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// Loads `source`; pixels are `x / 255`, or `(x / 255 - mean) / std` with `normalize`.
    pub fn load(source: &DataSource, normalize: Option<(f32, f32)>) -> Result<Dataset, DataError> {
        Self::load_splits(source, normalize, true)
    }

    /// The dataset's test split only (its `train` empty), for evaluating: the training files
    /// need not be there.
    pub fn load_test(source: &DataSource, normalize: Option<(f32, f32)>) -> Result<Dataset, DataError> {
        Self::load_splits(source, normalize, false)
    }

    fn load_splits(source: &DataSource, normalize: Option<(f32, f32)>, with_train: bool) -> Result<Dataset, DataError> {
        let mut d = match source {
            DataSource::Synthetic => synthetic::generate(),
            DataSource::Mnist(dir) => mnist::load(dir, with_train)?,
            DataSource::Cifar10(dir) => cifar::load(dir, false, with_train)?,
            DataSource::Cifar100(dir) => cifar::load(dir, true, with_train)?,
        };
        if !with_train {
            d.train = Split::default();
        }
        if let Some((mean, std)) = normalize {
            if std.is_nan() || std <= 0.0 || !mean.is_finite() || !std.is_finite() {
                return Err(DataError::Spec(format!("--normalize needs a finite mean and a positive std, got {mean},{std}")));
            }
            for v in d.train.images.iter_mut().chain(d.test.images.iter_mut()) {
                *v = (*v - mean) / std;
            }
            d.normalize = Some((mean, std));
        }
        Ok(d)
    }

    /// Moves a seeded `fraction` of the training set into a validation split and returns it.
    pub fn split_validation(&mut self, fraction: f64, seed: u64) -> Result<Split, DataError> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(DataError::Spec(format!("the validation fraction must be in [0, 1), got {fraction}")));
        }
        let n = self.train.len();
        let k = (n as f64 * fraction).round() as usize;
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut rng(seed, Stream::Validation, 0));
        let (val, train) = idx.split_at(k);
        let (mut val, mut train) = (val.to_vec(), train.to_vec());
        val.sort_unstable();
        train.sort_unstable();
        let dim = self.dim();
        let v = self.train.take(&val, dim);
        self.train = self.train.take(&train, dim);
        Ok(v)
    }

    /// Replaces a seeded `fraction` of the training labels with a different random class;
    /// returns how many changed.
    pub fn add_label_noise(&mut self, fraction: f64, seed: u64) -> Result<usize, DataError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(DataError::Spec(format!("the label-noise fraction must be in [0, 1], got {fraction}")));
        }
        let n = self.train.len();
        let k = (n as f64 * fraction).round() as usize;
        let mut r = rng(seed, Stream::LabelNoise, 0);
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut r);
        for &i in &idx[..k] {
            let old = self.train.labels[i];
            let new = r.random_range(0..self.classes as i32 - 1);
            self.train.labels[i] = if new >= old { new + 1 } else { new };
        }
        Ok(k)
    }
}

/// The independent random streams of a run.
#[derive(Clone, Copy)]
enum Stream {
    Shuffle = 1,
    Augment = 2,
    Validation = 3,
    LabelNoise = 4,
}

fn rng(seed: u64, stream: Stream, index: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(((stream as u64) << 56) ^ index);
    r
}

/// The order of the training examples in `epoch` (0-based): a seeded permutation, or file
/// order without `shuffle`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if shuffle {
        idx.shuffle(&mut rng(seed, Stream::Shuffle, epoch));
    }
    idx
}

/// One batch: the images of `idx` (augmented with the batch's own seeded stream when
/// `augment` is given) and their labels.
pub fn batch(split: &Split, shape: [usize; 3], idx: &[usize], augment: Option<(&Augment, u64, u64, u64)>) -> (Vec<f32>, Vec<i32>) {
    let dim: usize = shape.iter().product();
    let mut x = Vec::with_capacity(idx.len() * dim);
    for &i in idx {
        x.extend_from_slice(&split.images[i * dim..(i + 1) * dim]);
    }
    if let Some((aug, seed, epoch, b)) = augment {
        let mut r = rng(seed, Stream::Augment, (epoch << 32) ^ b);
        for img in x.chunks_mut(dim) {
            aug.apply(img, shape, &mut r);
        }
    }
    (x, idx.iter().map(|&i| split.labels[i]).collect())
}

/// Reads a whole file, naming it in the error.
fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing { path: path.to_path_buf(), hint: String::new() },
        _ => DataError::Io { path: path.to_path_buf(), reason: e.to_string() },
    })
}
