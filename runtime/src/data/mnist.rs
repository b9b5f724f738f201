//! MNIST in the IDX format, plain or gzip-compressed (`.gz`), under the official names
//! (`train-images-idx3-ubyte`, `t10k-images-idx3-ubyte`, ...) or with `test-` for `t10k-`.

use super::{read, Augment, DataError, Dataset, Split};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// The first of the candidate files that exists (plain or `.gz`).
fn find(dir: &Path, stems: &[&str]) -> Result<PathBuf, DataError> {
    for stem in stems {
        for name in [stem.to_string(), format!("{stem}.gz")] {
            let p = dir.join(name);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    Err(DataError::Missing {
        path: dir.join(stems[0]),
        hint: format!(" (looked for {} with or without .gz in {}; `scripts/fetch-mnist.sh DIR` downloads 10,000 digits)", stems.join(" or "), dir.display()),
    })
}

/// The bytes of an IDX file, decompressed when it is gzip.
fn bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| DataError::Io { path: path.to_path_buf(), reason: format!("bad gzip data: {e}") })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IDX file: checks the magic and that the body has exactly the bytes the header
/// promises; returns (dimensions, body).
fn idx(path: &Path, magic: u32, what: &'static str) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let b = bytes(path)?;
    if b.len() < 4 {
        return Err(DataError::Truncated { path: path.to_path_buf(), why: "an IDX file's magic number needs", expected: 4, got: b.len() });
    }
    let got = be32(&b, 0);
    if got != magic {
        return Err(DataError::BadMagic { path: path.to_path_buf(), expected: magic, got, what });
    }
    let rank = (magic & 0xff) as usize;
    let header = 4 + 4 * rank;
    if b.len() < header {
        return Err(DataError::Truncated { path: path.to_path_buf(), why: "the header's dimensions need", expected: header, got: b.len() });
    }
    let dims: Vec<usize> = (0..rank).map(|i| be32(&b, 4 + 4 * i) as usize).collect();
    let Some(expected) = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).and_then(|n| n.checked_add(header)) else {
        return Err(DataError::Invalid { path: path.to_path_buf(), reason: format!("the header's dimensions {dims:?} describe more bytes than a file can hold") });
    };
    if b.len() < expected {
        return Err(DataError::Truncated { path: path.to_path_buf(), why: "the header promises", expected, got: b.len() });
    }
    if b.len() > expected {
        return Err(DataError::Invalid { path: path.to_path_buf(), reason: format!("{} bytes after the {expected} the header describes", b.len() - expected) });
    }
    Ok((dims, b[header..].to_vec()))
}

fn split(dir: &Path, prefixes: &[&str]) -> Result<Split, DataError> {
    let image_stems: Vec<String> = prefixes.iter().map(|p| format!("{p}-images-idx3-ubyte")).collect();
    let label_stems: Vec<String> = prefixes.iter().map(|p| format!("{p}-labels-idx1-ubyte")).collect();
    let ip = find(dir, &image_stems.iter().map(String::as_str).collect::<Vec<_>>())?;
    let lp = find(dir, &label_stems.iter().map(String::as_str).collect::<Vec<_>>())?;
    let (idims, ibody) = idx(&ip, IMAGES_MAGIC, "images")?;
    let (ldims, lbody) = idx(&lp, LABELS_MAGIC, "labels")?;
    if idims[1..] != [28, 28] {
        return Err(DataError::Invalid { path: ip, reason: format!("images are {}x{}, MNIST's are 28x28", idims[1], idims[2]) });
    }
    if idims[0] != ldims[0] {
        return Err(DataError::Invalid { path: lp, reason: format!("{} labels for {} images in {}", ldims[0], idims[0], ip.display()) });
    }
    if let Some((i, &l)) = lbody.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(DataError::Invalid { path: lp, reason: format!("label {l} at position {i} is not a digit") });
    }
    Ok(Split { images: ibody.iter().map(|&v| v as f32 / 255.0).collect(), labels: lbody.iter().map(|&l| l as i32).collect() })
}

/// The dataset in `dir`; with `with_train` false, only its test split (the training files
/// need not be there).
pub(super) fn load(dir: &Path, with_train: bool) -> Result<Dataset, DataError> {
    if dir.exists() && !dir.is_dir() {
        return Err(DataError::Invalid { path: dir.to_path_buf(), reason: "is a file; give the folder that holds the IDX files".into() });
    }
    if !dir.is_dir() {
        return Err(DataError::Missing { path: dir.to_path_buf(), hint: " (no such directory; `scripts/fetch-mnist.sh DIR` downloads 10,000 digits)".into() });
    }
    Ok(Dataset {
        name: "mnist".into(),
        shape: [1, 28, 28],
        classes: 10,
        train: if with_train { split(dir, &["train"])? } else { Split::default() },
        test: split(dir, &["t10k", "test"])?,
        augment: Augment::none(),
        normalize: None,
    })
}
