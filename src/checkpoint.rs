//! Weights and checkpoints as safetensors files, under PyTorch `state_dict` names and layouts
//! (so `safetensors.torch.load_file` + `model.load_state_dict` take them), written
//! atomically: a temporary file in the same directory, synced, then renamed over the target.

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One named tensor to write.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub bytes: Vec<u8>,
}

impl TensorEntry {
    pub fn f32(name: &str, shape: &[usize], data: Vec<f32>) -> Self {
        TensorEntry { name: name.into(), dtype: Dtype::F32, shape: shape.to_vec(), bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// A 0-dimensional int64, as PyTorch stores `num_batches_tracked`.
    pub fn i64(name: &str, v: i64) -> Self {
        TensorEntry { name: name.into(), dtype: Dtype::I64, shape: vec![], bytes: v.to_le_bytes().to_vec() }
    }
}

/// Serializes `tensors` with `metadata` and writes them to `path` atomically: on any error
/// the previous file (if any) is untouched and no temporary is left behind.
pub fn write_atomic(path: &Path, tensors: &[TensorEntry], metadata: BTreeMap<String, String>) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| Ok((t.name.clone(), safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let bytes = canonical(safetensors::serialize(views, Some(metadata.into_iter().collect::<HashMap<_, _>>()))?)?;
    write_bytes_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Where a write to `path` lands, and how: `(target, true)` to replace `target` atomically,
/// `path` itself or, where `path` is a symbolic link, the file its links lead to (which need
/// not exist yet; the links stay as they are); `(path, false)` to write in place a device or
/// pipe it leads to (`/dev/null`), or one of the process's own descriptors (a link into
/// `/proc`, as `/dev/stdout` is), which cannot be replaced.
pub fn write_target(path: &Path) -> std::io::Result<(PathBuf, bool)> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() && !m.is_dir() => return Ok((path.to_path_buf(), false)),
        _ => {}
    }
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Ok((p, true));
        }
        let to = std::fs::read_link(&p)?;
        if p.starts_with("/proc") || to.starts_with("/proc") {
            return Ok((path.to_path_buf(), false));
        }
        p = match p.parent() {
            Some(dir) if to.is_relative() => dir.join(to),
            _ => to,
        };
    }
    Err(std::io::Error::other(format!("{}: too many levels of symbolic links", path.display())))
}

/// Writes `bytes` to `path` atomically: into a new temporary beside it (created new, never
/// through a link; one a killed run of the same process id left is removed first), synced,
/// given the old file's permissions, and renamed over it. On any error the previous file (if
/// any) is untouched and no temporary is left behind. A link is followed ([`write_target`]):
/// the file it leads to is replaced, the link stays; a device or pipe is written in place.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (target, replace) = write_target(path)?;
    if !replace {
        return std::fs::write(&target, bytes);
    }
    let path = target.as_path();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if let Ok(m) = std::fs::metadata(path) {
            f.set_permissions(m.permissions())?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The same file with its JSON header's keys sorted (the metadata map is otherwise written
/// in hash order), so equal contents give equal bytes.
fn canonical(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("invariant: an 8-byte length")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
    let mut text = serde_json::to_vec(&header)?;
    // The data section starts 8-byte aligned; the format pads the header with spaces.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    Ok(out)
}

/// A safetensors file read into memory.
pub struct Checkpoint {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
}

impl Checkpoint {
    pub fn read(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
        Ok(Checkpoint { path: path.to_path_buf(), bytes })
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("invariant: validated on read")
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = String> {
        let mut n: Vec<String> = self.tensors().names().into_iter().map(String::from).collect();
        n.sort();
        n.into_iter()
    }

    pub fn metadata(&self) -> BTreeMap<String, String> {
        let (_, m) = SafeTensors::read_metadata(&self.bytes).expect("invariant: validated on read");
        m.metadata().clone().unwrap_or_default().into_iter().collect()
    }

    /// The f32 tensor `name`, which must have `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let st = self.tensors();
        let t = st.tensor(name).map_err(|_| anyhow::anyhow!("{}: missing tensor `{name}`", self.path.display()))?;
        if t.shape() != shape {
            bail!("{}: tensor `{name}` has shape {:?}, the model needs {:?}", self.path.display(), t.shape(), shape);
        }
        if t.dtype() != Dtype::F32 {
            bail!("{}: tensor `{name}` is {:?}, expected F32", self.path.display(), t.dtype());
        }
        Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}
