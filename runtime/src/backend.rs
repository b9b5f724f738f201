//! Choosing where a compiled step runs, at run time.

use crate::device::{leaves, DeviceStep};
use crate::error::RuntimeError;
use crate::reference::{run_step, Bindings, Tensor};
use plateau_compiler::Compiled;
use std::collections::BTreeMap;
use std::str::FromStr;

/// A backend name as the `--device` flag takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Reference,
    Wgpu,
    Cuda,
}

impl FromStr for Backend {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reference" => Ok(Backend::Reference),
            "wgpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            other => Err(RuntimeError::Unsupported(format!("unknown device `{other}` (expected reference, wgpu or cuda)"))),
        }
    }
}

/// A compiled step ready to run on one backend.
pub enum Runner {
    Reference { graph: plateau_compiler::Graph, bindings: Bindings },
    Wgpu(Box<DeviceStep<plateau_kernels::cubecl::wgpu::WgpuRuntime>>),
    #[cfg(feature = "cuda")]
    Cuda(Box<DeviceStep<plateau_kernels::cubecl::cuda::CudaRuntime>>),
}

/// Runs `f`, turning a panic of the device layer (no adapter, no driver) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, RuntimeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        RuntimeError::Unsupported(format!("no usable {what} device: {msg}"))
    })
}

impl Runner {
    /// Prepares `compiled` on `backend` with the leaf values in `bindings`.
    pub fn new(backend: Backend, compiled: &Compiled, bindings: &Bindings) -> Result<Self, RuntimeError> {
        match backend {
            Backend::Reference => Ok(Runner::Reference { graph: compiled.fused.clone(), bindings: bindings.clone() }),
            Backend::Wgpu => {
                if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
                    // SAFETY: set before any device thread starts.
                    unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
                }
                use plateau_kernels::cubecl::{wgpu::*, Runtime};
                let client = guarded("wgpu", || WgpuRuntime::client(&WgpuDevice::default()))?;
                let mut step = DeviceStep::new(client, compiled)?;
                upload(&mut step, compiled, bindings)?;
                Ok(Runner::Wgpu(Box::new(step)))
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda => {
                use plateau_kernels::cubecl::{cuda::*, Runtime};
                let client = guarded("CUDA", || CudaRuntime::client(&CudaDevice::default()))?;
                let mut step = DeviceStep::new(client, compiled)?;
                upload(&mut step, compiled, bindings)?;
                Ok(Runner::Cuda(Box::new(step)))
            }
            #[cfg(not(feature = "cuda"))]
            Backend::Cuda => Err(RuntimeError::Unsupported("this build has no CUDA backend (rebuild with --features cuda)".into())),
        }
    }

    /// Sets a leaf (the `step` counter, a new batch, the learning rate).
    pub fn set(&mut self, kind: &str, name: &str, value: &Tensor) -> Result<(), RuntimeError> {
        match self {
            Runner::Reference { graph, bindings } => {
                if graph.find_leaf(kind, name).is_some() {
                    bindings.set(kind, name, value.clone());
                }
                Ok(())
            }
            Runner::Wgpu(s) => set_if_present(s, kind, name, value),
            #[cfg(feature = "cuda")]
            Runner::Cuda(s) => set_if_present(s, kind, name, value),
        }
    }

    /// Sets an f32 leaf from a slice of its values (a new batch): devices upload the slice
    /// as it is.
    pub fn set_f32(&mut self, kind: &str, name: &str, data: &[f32]) -> Result<(), RuntimeError> {
        let present = |r: Result<(), RuntimeError>| match r {
            Err(RuntimeError::MissingBinding { .. }) => Ok(()),
            other => other,
        };
        match self {
            Runner::Reference { graph, bindings } => {
                if let Some(id) = graph.find_leaf(kind, name) {
                    bindings.set(kind, name, Tensor::from_f32(graph.shape(id).clone(), data)?);
                }
                Ok(())
            }
            Runner::Wgpu(s) => present(s.set_f32(kind, name, data)),
            #[cfg(feature = "cuda")]
            Runner::Cuda(s) => present(s.set_f32(kind, name, data)),
        }
    }

    /// Reads a leaf's current value (parameters and state after the steps run so far).
    pub fn get(&self, kind: &str, name: &str) -> Result<Tensor, RuntimeError> {
        match self {
            Runner::Reference { bindings, .. } => {
                bindings.get(kind, name).cloned().ok_or_else(|| RuntimeError::MissingBinding { kind: "leaf", name: format!("{kind} `{name}`") })
            }
            Runner::Wgpu(s) => s.get(kind, name),
            #[cfg(feature = "cuda")]
            Runner::Cuda(s) => s.get(kind, name),
        }
    }

    /// Waits until every launched kernel has finished (the reference runs synchronously).
    pub fn sync(&self) -> Result<(), RuntimeError> {
        match self {
            Runner::Reference { .. } => Ok(()),
            Runner::Wgpu(s) => s.sync(),
            #[cfg(feature = "cuda")]
            Runner::Cuda(s) => s.sync(),
        }
    }

    /// One step with each kernel timed on its own (device backends; the reference has no
    /// kernels and returns an empty profile).
    pub fn profile_step(&mut self) -> Result<Vec<f64>, RuntimeError> {
        match self {
            Runner::Reference { .. } => Ok(Vec::new()),
            Runner::Wgpu(s) => s.profile_step(),
            #[cfg(feature = "cuda")]
            Runner::Cuda(s) => s.profile_step(),
        }
    }

    /// Runs one step and returns the named value outputs (read back from the device).
    pub fn step(&mut self, read: &[&str]) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
        match self {
            Runner::Reference { graph, bindings } => {
                let mut out = run_step(graph, bindings)?;
                out.retain(|k, _| read.contains(&k.as_str()));
                Ok(out)
            }
            Runner::Wgpu(s) => device_step(s, read),
            #[cfg(feature = "cuda")]
            Runner::Cuda(s) => device_step(s, read),
        }
    }
}

fn set_if_present<R: plateau_kernels::cubecl::Runtime>(s: &mut DeviceStep<R>, kind: &str, name: &str, value: &Tensor) -> Result<(), RuntimeError> {
    match s.set(kind, name, value) {
        Err(RuntimeError::MissingBinding { .. }) => Ok(()),
        other => other,
    }
}

fn device_step<R: plateau_kernels::cubecl::Runtime>(s: &mut DeviceStep<R>, read: &[&str]) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
    s.step()?;
    read.iter().map(|&n| Ok((n.to_string(), s.output(n)?))).collect()
}

fn upload<R: plateau_kernels::cubecl::Runtime>(step: &mut DeviceStep<R>, compiled: &Compiled, bindings: &Bindings) -> Result<(), RuntimeError> {
    for (kind, name) in leaves(&compiled.fused) {
        let value = bindings.get(kind, &name).ok_or_else(|| RuntimeError::MissingBinding { kind, name: name.clone() })?;
        step.set(kind, &name, value)?;
    }
    Ok(())
}
