//! CIFAR-10 and CIFAR-100 in their binary versions: `data_batch_1.bin` .. `data_batch_5.bin`
//! and `test_batch.bin` (one label byte, then 3,072 pixel bytes, channel-major), or
//! `train.bin` and `test.bin` (a coarse and a fine label byte, then the pixels). The files may
//! sit in `DIR` or in the archive's own folder inside it.

use super::{read, Augment, DataError, Dataset, Split};
use std::path::{Path, PathBuf};

const PIXELS: usize = 3 * 32 * 32;

fn locate(dir: &Path, sub: &str, first: &str) -> Result<PathBuf, DataError> {
    for d in [dir.to_path_buf(), dir.join(sub)] {
        if d.join(first).exists() {
            return Ok(d);
        }
    }
    Err(DataError::Missing { path: dir.join(first), hint: format!(" (nor in {})", dir.join(sub).display()) })
}

fn records(path: &Path, label_bytes: usize, classes: usize, out: &mut Split) -> Result<(), DataError> {
    let b = read(path)?;
    let rec = label_bytes + PIXELS;
    if b.is_empty() || b.len() % rec != 0 {
        let expected = (b.len() / rec + 1) * rec;
        return Err(DataError::Truncated { path: path.to_path_buf(), why: if label_bytes == 1 { "whole 3,073-byte records need" } else { "whole 3,074-byte records need" }, expected, got: b.len() });
    }
    for (i, r) in b.chunks(rec).enumerate() {
        let label = r[label_bytes - 1] as usize;
        if label >= classes {
            return Err(DataError::Invalid { path: path.to_path_buf(), reason: format!("record {i} has label {label}, outside 0..{classes}") });
        }
        out.labels.push(label as i32);
        out.images.extend(r[label_bytes..].iter().map(|&v| v as f32 / 255.0));
    }
    Ok(())
}

/// The dataset in `dir`; with `with_train` false, only its test split (the training files
/// need not be there).
pub(super) fn load(dir: &Path, hundred: bool, with_train: bool) -> Result<Dataset, DataError> {
    if dir.exists() && !dir.is_dir() {
        return Err(DataError::Invalid { path: dir.to_path_buf(), reason: "is a file; give the folder that holds the dataset's files".into() });
    }
    let (mut train, mut test) = (Split::default(), Split::default());
    let (name, classes) = if hundred {
        let d = locate(dir, "cifar-100-binary", if with_train { "train.bin" } else { "test.bin" })?;
        if with_train {
            records(&d.join("train.bin"), 2, 100, &mut train)?;
        }
        records(&d.join("test.bin"), 2, 100, &mut test)?;
        ("cifar100", 100)
    } else {
        let d = locate(dir, "cifar-10-batches-bin", if with_train { "data_batch_1.bin" } else { "test_batch.bin" })?;
        for i in (1..=5).filter(|_| with_train) {
            records(&d.join(format!("data_batch_{i}.bin")), 1, 10, &mut train)?;
        }
        records(&d.join("test_batch.bin"), 1, 10, &mut test)?;
        ("cifar10", 10)
    };
    Ok(Dataset { name: name.into(), shape: [3, 32, 32], classes, train, test, augment: Augment::cifar(), normalize: None })
}
