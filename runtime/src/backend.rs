//! Choosing where a compiled step runs, at run time.

use crate::device::{check_labels, leaves, DeviceStep};
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
    Reference { graph: plateau_compiler::Graph, bindings: Bindings, labels: BTreeMap<String, usize> },
    Wgpu(Box<DeviceStep<plateau_kernels::cubecl::wgpu::WgpuRuntime>>),
    #[cfg(feature = "cuda")]
    Cuda(Box<DeviceStep<plateau_kernels::cubecl::cuda::CudaRuntime>>),
}

/// Runs `f`, turning a panic of the device layer (no adapter, no driver) into an error. The
/// device layer may panic on its own thread first (cubecl starts the driver on a thread named
/// `DSD-...`), so the first panic message of this thread or such a thread is the one
/// reported, and those are not printed meanwhile; other threads' panics print as usual.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, RuntimeError> {
    use std::sync::{Arc, Mutex};
    static HOOK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = first.clone();
    let caller = std::thread::current().id();
    let previous = Arc::new(Mutex::new(Some(std::panic::take_hook())));
    let forward = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        let t = std::thread::current();
        if t.id() != caller && !t.name().is_some_and(|n| n.starts_with("DSD-")) {
            if let Some(hook) = forward.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                hook(info);
            }
            return;
        }
        let p = info.payload();
        let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        seen.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(msg);
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(std::panic::take_hook());
    if let Some(hook) = previous.lock().unwrap_or_else(|e| e.into_inner()).take() {
        std::panic::set_hook(hook);
    }
    result.map_err(|_| {
        let msg = first.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
        RuntimeError::Unsupported(format!("no usable {what} device: {msg}"))
    })
}

/// Where compiled device kernels are kept between runs: `PLATEAU_KERNEL_CACHE` (a directory,
/// or `off`), else `$XDG_CACHE_HOME/plateau/kernels`, else `~/.cache/plateau/kernels`; then a
/// folder per plateau executable (its size and modification time) and machine (the NVIDIA
/// GPUs and driver Linux reports), so a rebuilt binary never loads kernels compiled by
/// another, nor a machine those of another GPU. `None` when caching is off or no folder is
/// known.
pub fn kernel_cache_dir() -> Option<std::path::PathBuf> {
    kernel_cache_dir_for(&|k| std::env::var_os(k), &std::env::current_exe().ok()?)
}

/// [`kernel_cache_dir`] for the environment `env` and the executable `exe` (on this machine,
/// whose NVIDIA GPUs and driver are read from `/proc/driver/nvidia`).
pub fn kernel_cache_dir_for(env: &dyn Fn(&str) -> Option<std::ffi::OsString>, exe: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::hash::{Hash, Hasher};
    use std::path::PathBuf;
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let base = match var("PLATEAU_KERNEL_CACHE") {
        Some(v) if v == "off" => return None,
        Some(v) => PathBuf::from(v),
        None => var("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))?.join("plateau").join("kernels"),
    };
    let meta = std::fs::metadata(exe).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (meta.len(), meta.modified().ok()).hash(&mut h);
    // The GPUs and the driver, where Linux's NVIDIA driver tells them: PTX is compiled for
    // one architecture, so a shared folder must not hand one machine's kernels to another.
    let mut gpus = nvidia_gpus();
    gpus.sort();
    (gpus, std::fs::read_to_string("/proc/driver/nvidia/version").ok()).hash(&mut h);
    Some(base.join(format!("{}-{:016x}", env!("CARGO_PKG_VERSION"), h.finish())))
}

/// What `backend` runs on, in words, for benchmark records: the CPU's model for the reference
/// interpreter; for wgpu, the adapter cubecl's default device takes (the high-performance
/// one) and the graphics API it goes through; for CUDA, the GPU model Linux's NVIDIA driver reports (the
/// distinct models, where the machine's GPUs differ). `None` where it cannot tell, or where
/// `CUBECL_WGPU_DEFAULT_DEVICE` picks another adapter.
pub fn device_name(backend: Backend) -> Option<String> {
    match backend {
        Backend::Reference => info_value(&std::fs::read_to_string("/proc/cpuinfo").ok()?, "model name").map(|m| format!("{m} (reference interpreter)")),
        Backend::Wgpu => wgpu_adapter().map(|info| format!("{} via {:?}", info.name, info.backend)),
        Backend::Cuda => {
            let mut models: Vec<String> = nvidia_gpus().iter().filter_map(|g| info_value(g, "Model")).collect();
            models.sort();
            models.dedup();
            (!models.is_empty()).then(|| models.join(" / "))
        }
    }
}

/// The adapter cubecl's default wgpu device takes (the high-performance one), asked once per
/// process; `None` where there is none, or where `CUBECL_WGPU_DEFAULT_DEVICE` picks another.
fn wgpu_adapter() -> Option<wgpu::AdapterInfo> {
    static INFO: std::sync::OnceLock<Option<wgpu::AdapterInfo>> = std::sync::OnceLock::new();
    INFO.get_or_init(|| {
        use plateau_kernels::cubecl::wgpu::{AutoGraphicsApi, GraphicsApi};
        if std::env::var_os("CUBECL_WGPU_DEFAULT_DEVICE").is_some() {
            return None;
        }
        let backends = AutoGraphicsApi::backend().into();
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends, ..wgpu::InstanceDescriptor::new_without_display_handle() });
        let options = wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, force_fallback_adapter: false, compatible_surface: None };
        Some(plateau_kernels::cubecl::future::block_on(instance.request_adapter(&options)).ok()?.get_info())
    })
    .clone()
}

/// Whether cubecl's default wgpu device is a CPU (Mesa's lavapipe, as [`wgpu_adapter`] finds
/// it; false where it cannot tell).
pub fn wgpu_adapter_is_cpu() -> bool {
    wgpu_adapter().is_some_and(|info| info.device_type == wgpu::DeviceType::Cpu)
}

/// The information file of each GPU Linux's NVIDIA driver reports (none without the driver).
fn nvidia_gpus() -> Vec<String> {
    std::fs::read_dir("/proc/driver/nvidia/gpus").into_iter().flatten().flatten().filter_map(|e| std::fs::read_to_string(e.path().join("information")).ok()).collect()
}

/// The value of the first `key: value` line of a `/proc` information file.
fn info_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_string())
    })
}

/// Sets cubecl's configuration once per process, before the first CUDA device: a `cubecl.toml`
/// (and cubecl's environment variables) are honoured as cubecl reads them, and where they
/// name no compilation cache, compiled kernels go to [`kernel_cache_dir`]. cubecl's CUDA
/// runtime then loads a kernel's PTX from there instead of compiling it again with NVRTC
/// (ResNet-18's SGD and SAM steps are about 860 kernels, over a minute of NVRTC).
#[cfg(feature = "cuda")]
fn configure_cubecl() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use plateau_kernels::cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if config.compilation.cache.is_none() {
            // cubecl panics on a cache folder it cannot write: such a folder means no cache.
            let writable = |d: &std::path::Path| std::fs::create_dir_all(d).is_ok() && std::fs::OpenOptions::new().create(true).append(true).open(d.join(".plateau")).is_ok();
            match kernel_cache_dir() {
                Some(d) if writable(&d) => config.compilation.cache = Some(CacheConfig::File(d)),
                Some(d) => eprintln!("warning: kernel cache {} is not writable; compiling kernels without it", d.display()),
                None => {}
            }
        }
        // Already read (a caller used cubecl first): it stays as read.
        let mut stored = CubeClRuntimeConfig::storage().lock();
        if stored.is_none() {
            *stored = Some(std::sync::Arc::new(config));
        }
    });
}

impl Runner {
    /// Prepares `compiled` on `backend` with the leaf values in `bindings`.
    pub fn new(backend: Backend, compiled: &Compiled, bindings: &Bindings) -> Result<Self, RuntimeError> {
        match backend {
            Backend::Reference => {
                for name in compiled.labels.keys() {
                    if let Some(value) = bindings.get("input", name) {
                        check_labels(&compiled.labels, "input", name, value)?;
                    }
                }
                Ok(Runner::Reference { graph: compiled.fused.clone(), bindings: bindings.clone(), labels: compiled.labels.clone() })
            }
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
                let client = guarded("CUDA", || {
                    configure_cubecl();
                    CudaRuntime::client(&CudaDevice::default())
                })?;
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
            Runner::Reference { graph, bindings, labels } => {
                if graph.find_leaf(kind, name).is_some() {
                    check_labels(labels, kind, name, value)?;
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
            Runner::Reference { graph, bindings, .. } => {
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

    /// The step as a device runs it (its pool laid out in pages where the device binds less
    /// than the whole pool; see [`DeviceStep::compiled`]); `None` on the reference, which runs
    /// the fused graph as given.
    pub fn compiled(&self) -> Option<&Compiled> {
        match self {
            Runner::Reference { .. } => None,
            Runner::Wgpu(s) => Some(s.compiled()),
            #[cfg(feature = "cuda")]
            Runner::Cuda(s) => Some(s.compiled()),
        }
    }

    /// How the device runs the GEMMs (`None` on the reference, which runs no kernels).
    pub fn gemm_layout(&self) -> Option<plateau_kernels::gemm::GemmLayout> {
        match self {
            Runner::Reference { .. } => None,
            Runner::Wgpu(s) => Some(s.gemm_layout()),
            #[cfg(feature = "cuda")]
            Runner::Cuda(s) => Some(s.gemm_layout()),
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
            Runner::Reference { graph, bindings, .. } => {
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

#[cfg(test)]
mod tests {
    use super::{guarded, info_value, kernel_cache_dir_for};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The names benchmark records carry come from the first matching line of /proc files.
    #[test]
    fn device_names_are_read_from_proc_information_files() {
        let gpu = "Model: \t\t NVIDIA H200\nIRQ:   \t\t 42\nGPU UUID: \t GPU-0\nBus Location: \t 0000:19:00.0\n";
        assert_eq!(info_value(gpu, "Model").as_deref(), Some("NVIDIA H200"));
        let cpu = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Processor\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n";
        assert_eq!(info_value(cpu, "model name").as_deref(), Some("Intel(R) Xeon(R) Processor"));
        assert_eq!(info_value(cpu, "model").as_deref(), Some("143"));
        assert_eq!(info_value("Model:\nModel:  \n", "Model"), None);
        assert_eq!(info_value(cpu, "flags"), None);
    }

    /// A panic inside is the error, with its message, and is not printed; the hook in place
    /// before is back afterwards, and sees other panics.
    #[test]
    fn device_panics_become_errors_and_the_hook_is_restored() {
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        std::panic::set_hook(Box::new(|_| {
            SEEN.fetch_add(1, Ordering::SeqCst);
        }));
        let err = guarded("test", || -> () { panic!("no driver here") }).unwrap_err();
        assert!(err.to_string().contains("no usable test device: no driver here"), "{err}");
        let on_device_thread = guarded("test", || std::thread::Builder::new().name("DSD-0-0".into()).spawn(|| panic!("from the device thread")).unwrap().join().map(|_| ()).unwrap()).unwrap_err();
        assert!(on_device_thread.to_string().contains("from the device thread"), "{on_device_thread}");
        assert_eq!(SEEN.load(Ordering::SeqCst), 0);
        assert_eq!(guarded("test", || 7).unwrap(), 7);
        assert!(std::thread::spawn(|| panic!("after")).join().is_err());
        assert_eq!(SEEN.load(Ordering::SeqCst), 1);
        drop(std::panic::take_hook());
    }

    use std::ffi::OsString;
    use std::path::Path;

    #[test]
    fn the_kernel_cache_follows_the_environment_and_the_executable() {
        let dir = std::env::temp_dir().join(format!("plateau-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("plateau");
        std::fs::write(&exe, b"one").unwrap();
        let env = |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| OsString::from(v));
        let at = |vars: &'static [(&'static str, &'static str)]| kernel_cache_dir_for(&env(vars), &exe);
        let version = env!("CARGO_PKG_VERSION");
        let named = at(&[("PLATEAU_KERNEL_CACHE", "/k"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]).unwrap();
        assert_eq!(named.parent(), Some(Path::new("/k")));
        assert!(named.file_name().unwrap().to_str().unwrap().starts_with(&format!("{version}-")), "{named:?}");
        let xdg = at(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]).unwrap();
        assert_eq!(xdg.parent(), Some(Path::new("/x/plateau/kernels")));
        assert_eq!(at(&[("HOME", "/h")]).unwrap().parent(), Some(Path::new("/h/.cache/plateau/kernels")));
        assert_eq!(at(&[("PLATEAU_KERNEL_CACHE", "off"), ("HOME", "/h")]), None);
        assert_eq!(at(&[]), None);
        // A different executable (here: another size) gets another folder.
        std::fs::write(&exe, b"rebuilt").unwrap();
        assert_ne!(at(&[("PLATEAU_KERNEL_CACHE", "/k")]).unwrap(), named);
        assert_eq!(kernel_cache_dir_for(&env(&[("HOME", "/h")]), &dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
