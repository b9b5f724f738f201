//! Executing a compiled step on a cubecl device: the memory plan's temporaries in one pool at
//! their planned offsets (one buffer, or, when the device cannot bind the whole pool, the step
//! laid out again in pages it binds and a buffer per page; device memory is the peak of the
//! layout it runs either way), a buffer per
//! persistent leaf, kernels launched in schedule order, values read back only when asked.

use crate::error::RuntimeError;
use crate::reference::Tensor;
use std::collections::BTreeMap;
use plateau_compiler::ir::{leaf_kind, leaf_name, Op, OutputKind, Program};
use plateau_compiler::schedule::BufferKind;
use plateau_compiler::{Compiled, DType, Graph, NodeId};
use plateau_kernels::cubecl::prelude::*;
use plateau_kernels::cubecl::server::Handle;
use plateau_kernels::host::{check, download};
use plateau_kernels::lower::{lower_scheduled, KernelCall, Lowered};
use plateau_kernels::KernelProgram;
use plateau_kernels::gemm::GemmLayout;

/// A compiled step resident on a device.
pub struct DeviceStep<R: Runtime> {
    client: ComputeClient<R>,
    graph: Graph,
    compiled: Compiled,
    /// Device buffers: the pool of temporaries first (one buffer per page), then one per
    /// persistent leaf.
    buffers: Vec<(Handle, usize)>,
    /// For each buffer of the plan: (device buffer, element offset of its start).
    place: Vec<(usize, usize)>,
    /// Each kernel of the schedule, lowered once (offsets are fixed by the plan), with the
    /// (device buffer, element offset) of its workspace if it is a split GEMM.
    lowered: Vec<(Lowered, Option<(usize, usize)>)>,
    /// Buffers holding the pool (1 unless the device cannot bind it whole).
    pages: usize,
    /// Submit the queued launches at the end of each phase of the step (see [`DeviceStep::step`]).
    submit_each_phase: bool,
    /// How the GEMMs' tiles run on this device (see [`gemm_layout`]).
    gemm_layout: GemmLayout,
}

fn unsupported(what: impl Into<String>) -> RuntimeError {
    RuntimeError::Unsupported(what.into())
}

impl<R: Runtime> DeviceStep<R> {
    /// Allocates every buffer of the plan and uploads the constants.
    pub fn new(client: ComputeClient<R>, compiled: &Compiled) -> Result<Self, RuntimeError> {
        let limit = client.properties().memory.max_page_size;
        Self::with_binding_limit(client, compiled, limit)
    }

    /// As [`DeviceStep::new`], binding at most `limit` bytes per buffer: a pool larger than
    /// that is laid out again in pages of at most `limit` bytes (unless the plan's pages are
    /// already that small) and held as one buffer per page.
    pub fn with_binding_limit(client: ComputeClient<R>, compiled: &Compiled, limit: u64) -> Result<Self, RuntimeError> {
        let sums_in_readers = adds_up_slices(&client)?;
        Self::with_layout(client, compiled, limit, sums_in_readers)
    }

    /// As [`DeviceStep::with_binding_limit`], and with `sums_in_readers` false, each split sum
    /// sums its own slices (a second launch) even where the schedule has the map reading it
    /// add them up (see [`adds_up_slices`]).
    pub fn with_layout(client: ComputeClient<R>, compiled: &Compiled, limit: u64, sums_in_readers: bool) -> Result<Self, RuntimeError> {
        let graph = compiled.fused.clone();
        if let Some(id) = graph.node_ids().find(|&id| graph.dtype(id) == DType::F64) {
            return Err(unsupported(format!("f64 values on a device ({id})")));
        }
        // The temporaries in one pool at the plan's offsets; one buffer per persistent leaf.
        // A pool larger than the device binds is laid out again in pages it binds, unless the
        // plan's pages already are; a split sum whose slices its reader adds up gets its second
        // launch back where the device wants it. Either way the step is laid out once more.
        let pool_bytes = |s: &plateau_compiler::Schedule| {
            s.buffers
                .iter()
                .filter_map(|b| match b.kind {
                    BufferKind::Temp { offset, .. } => Some(offset + b.bytes),
                    BufferKind::Persistent(_) => None,
                })
                .max()
                .unwrap_or(0)
                .max(4)
        };
        let page = match compiled.schedule.page_bytes {
            Some(p) if p <= limit => Some(p),
            _ if pool_bytes(&compiled.schedule) > limit => Some(limit),
            p => p,
        };
        let folded = compiled.schedule.kernels.iter().any(|k| k.summed_by.is_some());
        let unfold = folded && !sums_in_readers;
        let relaid;
        let compiled = if unfold || page != compiled.schedule.page_bytes {
            relaid = compiled.laid_out(page, compiled.schedule.sums_in_readers && !unfold);
            &relaid
        } else {
            compiled
        };
        let s = &compiled.schedule;
        let pool_bytes = pool_bytes(s);
        // The whole pool in one buffer when the device can bind it, else a buffer per page.
        let page = match s.page_bytes {
            Some(page) if pool_bytes > limit => page,
            _ => pool_bytes.next_multiple_of(4),
        };
        // A buffer larger than the device can bind fails deep inside the device layer; say
        // so here, with the sizes.
        let too_big = |bytes: u64, what: &str, smaller: &str| {
            unsupported(format!(
                "the step needs a {bytes}-byte buffer ({what}) but this device binds at most {limit} bytes at once; use {smaller} or another device"
            ))
        };
        if page > limit {
            return Err(too_big(page, "a page of the pool of temporaries", "a smaller batch"));
        }
        if let Some(b) = s.buffers.iter().find(|b| b.bytes > limit) {
            // The parameters and the optimizer's state per parameter do not shrink with the
            // batch; the inputs and temporaries do.
            let (what, smaller) = match &b.kind {
                BufferKind::Persistent(leaf) if leaf.starts_with("param:") || leaf.starts_with("state:") => (format!("`{leaf}`"), "a smaller model"),
                BufferKind::Persistent(leaf) => (format!("`{leaf}`"), "a smaller batch"),
                BufferKind::Temp { from, .. } => (format!("a temporary of kernel k{from}"), "a smaller batch"),
            };
            return Err(too_big(b.bytes, &what, smaller));
        }
        let pages = pool_bytes.div_ceil(page) as usize;
        let page_len = |p: usize| ((pool_bytes - p as u64 * page).min(page) / 4).max(1) as usize;
        let mut buffers: Vec<(Handle, usize)> = (0..pages).map(|p| (client.empty(page_len(p) * 4), page_len(p))).collect();
        let mut place = Vec::new();
        for b in &s.buffers {
            match b.kind {
                BufferKind::Temp { offset, .. } => {
                    let p = offset / page;
                    if b.bytes > 0 && (offset + b.bytes - 1) / page != p {
                        return Err(too_big(b.bytes, "a temporary larger than a page of the pool", "a smaller batch"));
                    }
                    place.push((p as usize, ((offset - p * page) / 4) as usize));
                }
                BufferKind::Persistent(_) => {
                    let len = (b.bytes as usize / 4).max(1);
                    place.push((buffers.len(), 0));
                    buffers.push((client.empty(len * 4), len));
                }
            }
        }
        // wgpu queues launches in a command encoder until cubecl submits them (every 32);
        // CUDA launches reach the device as they are made.
        let submit_each_phase = R::name(&client).starts_with("wgpu");
        let gemm_layout = gemm_layout(&client)?;
        let mut step = DeviceStep { client, graph, compiled: compiled.clone(), buffers, place, lowered: Vec::new(), pages, submit_each_phase, gemm_layout };
        // Lower every kernel now: a kernel no device kernel implements is an error before any
        // launch, and a step's launches only bind buffers.
        let lowered = (0..compiled.schedule.kernels.len()).map(|k| step.lower_kernel(k)).collect::<Result<_, _>>()?;
        step.lowered = lowered;
        for id in step.graph.node_ids().collect::<Vec<_>>() {
            if let Op::Const { value } = step.graph.node(id).op {
                step.write(id, &[value as f32]);
            }
        }
        Ok(step)
    }

    /// The step as this device runs it: the kernels as compiled, the pool laid out in pages
    /// where the device binds less than the whole pool (see [`Compiled::paged`]).
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// Buffers holding the pool of temporaries: 1, or one per page of the plan's layout.
    pub fn pool_buffers(&self) -> usize {
        self.pages
    }

    /// Bytes held on the device: the pool of temporaries plus the persistent leaves.
    pub fn device_bytes(&self) -> u64 {
        self.buffers.iter().map(|(_, len)| *len as u64 * 4).sum()
    }

    /// (device buffer index, element offset) of a node.
    fn place_of(&self, id: NodeId) -> (usize, usize) {
        let (b, off) = self.compiled.schedule.locations[&id];
        let (db, base) = self.place[b];
        (db, base + off)
    }

    fn loc(&self, id: NodeId) -> (Handle, usize, usize) {
        let (db, off) = self.place_of(id);
        let (h, len) = &self.buffers[db];
        (h.clone(), *len, off)
    }

    fn write(&mut self, id: NodeId, data: &[f32]) {
        let (b, off) = self.place_of(id);
        let (_, len) = self.buffers[b];
        if off == 0 && data.len() == len {
            self.buffers[b].0 = self.client.create_from_slice(f32::as_bytes(data));
            return;
        }
        // Part of a buffer: upload, then copy into place on the device.
        let n = data.len();
        if n == 0 {
            return;
        }
        let src = self.client.create_from_slice(f32::as_bytes(data));
        let p = Program::identity(plateau_compiler::Shape(vec![n]));
        let prog = KernelProgram::new(&p, &plateau_compiler::Shape(vec![n])).with_offsets(&[0], &[off]);
        // SAFETY: `src` holds `n` f32 values and buffer `b` holds `len`.
        let (i, o) = unsafe { (ArrayArg::from_raw_parts(src, n), ArrayArg::from_raw_parts(self.buffers[b].0.clone(), len)) };
        KernelCall::map(prog, n).launch(&self.client, vec![i], vec![o]);
    }

    /// Reads `n` values at element offset `off` of buffer `b` (only those bytes travel), and
    /// reports any error the device recorded since the last read (a kernel that failed to
    /// compile or launch).
    fn read_range(&self, b: usize, off: usize, n: usize) -> Result<Vec<f32>, RuntimeError> {
        let (h, len) = &self.buffers[b];
        if n == 0 {
            return Ok(Vec::new());
        }
        let h = h.clone().offset_start(4 * off as u64).offset_end(4 * (len - off - n) as u64);
        download(&self.client, h, n).map_err(RuntimeError::Device)
    }

    /// Waits for every launched kernel and reports any error the device recorded.
    pub fn sync(&self) -> Result<(), RuntimeError> {
        check(&self.client).map_err(RuntimeError::Device)
    }

    fn leaf(&self, kind: &str, name: &str) -> Result<NodeId, RuntimeError> {
        self.graph.find_leaf(kind, name).ok_or_else(|| RuntimeError::MissingBinding { kind: "leaf", name: format!("{kind} `{name}`") })
    }

    /// Uploads the value of a leaf (input, parameter arena, state, scalar).
    pub fn set(&mut self, kind: &str, name: &str, value: &Tensor) -> Result<(), RuntimeError> {
        let id = self.leaf(kind, name)?;
        let ty = self.graph.ty(id).clone();
        if value.ty != ty {
            return Err(RuntimeError::BindingMismatch { kind: "leaf", name: name.into(), expected: ty, got: value.ty.clone() });
        }
        check_labels(&self.compiled.labels, kind, name, value)?;
        self.write(id, &value.to_f32());
        Ok(())
    }

    /// Uploads the values of an f32 leaf straight from a slice (a batch each step, with no
    /// intermediate tensor); the count must be the leaf's.
    pub fn set_f32(&mut self, kind: &str, name: &str, data: &[f32]) -> Result<(), RuntimeError> {
        let id = self.leaf(kind, name)?;
        let ty = self.graph.ty(id).clone();
        if ty.dtype != DType::F32 || data.len() != ty.shape.numel() {
            let got = plateau_compiler::TensorType { dtype: DType::F32, shape: plateau_compiler::Shape(vec![data.len()]) };
            return Err(RuntimeError::BindingMismatch { kind: "leaf", name: name.into(), expected: ty, got });
        }
        self.write(id, data);
        Ok(())
    }

    /// Reads a node's value back.
    fn read(&self, id: NodeId) -> Result<Tensor, RuntimeError> {
        let (b, off) = self.place_of(id);
        let ty = self.graph.ty(id).clone();
        let data = self.read_range(b, off, ty.shape.numel())?;
        Tensor::new(ty.dtype, ty.shape.clone(), data.iter().map(|&v| v as f64).collect())
    }

    /// The fused program this step runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Reads a leaf back (after steps: the updated parameters and state).
    pub fn get(&self, kind: &str, name: &str) -> Result<Tensor, RuntimeError> {
        self.read(self.leaf(kind, name)?)
    }

    /// Reads a value output (loss, accuracy and, under SAM, grad_sq_norm) of the last step.
    pub fn output(&self, name: &str) -> Result<Tensor, RuntimeError> {
        let id = self.graph.output(name).ok_or_else(|| RuntimeError::MissingBinding { kind: "output", name: name.into() })?;
        self.read(id)
    }

    /// Runs one step waiting for each kernel in turn; returns each kernel's wall time in
    /// milliseconds, in launch order (a profile: the waits make the step itself slower).
    pub fn profile_step(&mut self) -> Result<Vec<f64>, RuntimeError> {
        self.sync()?;
        let mut times = Vec::new();
        for k in 0..self.compiled.schedule.kernels.len() {
            let start = std::time::Instant::now();
            self.launch(k);
            self.sync()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        self.copy_back();
        self.sync()?;
        Ok(times)
    }

    /// Runs one step: every kernel in order, then the state updates that were not computed in
    /// place. On wgpu the launches of each phase (forward, backward, ascent, ...) are submitted
    /// when the phase is queued, so the device starts on it while the host queues the next;
    /// left to cubecl's submissions of 32 launches, a short step reached the device only when
    /// it was queued whole (on lavapipe the CNN's SGD step took 12% longer).
    pub fn step(&mut self) -> Result<(), RuntimeError> {
        let kernels = &self.compiled.schedule.kernels;
        for k in 0..kernels.len() {
            self.launch(k);
            if self.submit_each_phase && k + 1 < kernels.len() && kernels[k + 1].phase != kernels[k].phase {
                self.client.flush().map_err(|e| RuntimeError::Device(format!("{e:?}")))?;
            }
        }
        self.copy_back();
        Ok(())
    }

    /// Copies the state updates that were not computed in place into their states.
    fn copy_back(&self) {
        for o in self.graph.outputs() {
            if let OutputKind::StateUpdate { state } = o.kind {
                if self.place_of(o.node) != self.place_of(state) {
                    self.copy(o.node, state);
                }
            }
        }
    }

    fn copy(&self, from: NodeId, to: NodeId) {
        let shape = self.graph.shape(from).clone();
        let p = Program::identity(shape.clone());
        let (ih, il, io) = self.loc(from);
        let (oh, ol, oo) = self.loc(to);
        let prog = KernelProgram::new(&p, &shape).with_offsets(&[io], &[oo]);
        // SAFETY: both handles hold the stated number of f32 values.
        let (i, o) = unsafe { (ArrayArg::from_raw_parts(ih, il), ArrayArg::from_raw_parts(oh, ol)) };
        KernelCall::map(prog, shape.numel()).launch(&self.client, vec![i], vec![o]);
    }

    /// How this step runs its GEMMs (see [`gemm_layout`]).
    pub fn gemm_layout(&self) -> GemmLayout {
        self.gemm_layout
    }

    fn lower_kernel(&self, k: usize) -> Result<(Lowered, Option<(usize, usize)>), RuntimeError> {
        let kernel = &self.compiled.schedule.kernels[k];
        let workspace = kernel.workspace.map(|b| self.place[b]);
        let mut lowered = lower_scheduled(&self.graph, &self.compiled.schedule, kernel, &|n| self.place_of(n).1, workspace.map(|w| w.1)).map_err(unsupported)?;
        lowered.call = lowered.call.with_gemm_layout(self.gemm_layout);
        Ok((lowered, workspace))
    }

    /// Launches kernel `k` of the schedule.
    fn launch(&self, k: usize) {
        let (lowered, workspace) = &self.lowered[k];
        // SAFETY: every handle holds the number of f32 values it is declared with.
        let arg = |(h, len, _): (Handle, usize, usize)| unsafe { ArrayArg::from_raw_parts(h, len) };
        let inputs = lowered.inputs.iter().map(|&n| arg(self.loc(n))).collect();
        let mut outputs: Vec<_> = lowered
            .outputs
            .iter()
            .zip(&lowered.output_len)
            .map(|(o, &len)| match o {
                Some(n) => arg(self.loc(*n)),
                // A program output nothing reads still needs somewhere to go.
                None => arg((self.client.empty(len.max(1) * 4), len.max(1), 0)),
            })
            .collect();
        if let Some((b, _)) = *workspace {
            let (h, len) = &self.buffers[b];
            outputs.push(arg((h.clone(), *len, 0)));
            outputs.push(arg((h.clone(), *len, 0)));
        }
        lowered.call.launch(&self.client, inputs, outputs);
    }
}

/// How this device runs the GEMM tiles ([`GemmLayout`]): `PLATEAU_GEMM_LAYOUT` (`gpu` or
/// `cpu`) where it is set, else `Cpu` on a wgpu adapter that is a CPU (Mesa's lavapipe) and
/// `Gpu` anywhere else. The layouts compute the same bits with the same launches and buffers.
pub fn gemm_layout<R: Runtime>(client: &ComputeClient<R>) -> Result<GemmLayout, RuntimeError> {
    let setting = std::env::var("PLATEAU_GEMM_LAYOUT").ok();
    choose_gemm_layout(setting.as_deref(), || R::name(client).starts_with("wgpu") && crate::backend::wgpu_adapter_is_cpu())
}

/// The choice of [`gemm_layout`]: `setting` (`PLATEAU_GEMM_LAYOUT`), else `Cpu` when `on_cpu()`.
pub fn choose_gemm_layout(setting: Option<&str>, on_cpu: impl FnOnce() -> bool) -> Result<GemmLayout, RuntimeError> {
    match setting {
        None | Some("") => Ok(if on_cpu() { GemmLayout::Cpu } else { GemmLayout::Gpu }),
        Some("gpu") => Ok(GemmLayout::Gpu),
        Some("cpu") => Ok(GemmLayout::Cpu),
        Some(v) => Err(RuntimeError::Setting { name: "PLATEAU_GEMM_LAYOUT", value: v.to_string(), expected: "`gpu` or `cpu`" }),
    }
}

/// Whether the maps reading split sums add up their slices on this device (the schedule's
/// `sums_in_readers`; see `plateau_compiler::schedule::reduce`): where cubecl knows the
/// device's streaming multiprocessors (CUDA GPUs), unless `PLATEAU_SUMS_IN_READERS` says `on`
/// or `off` (see [`sums_in_readers`]). Each of the map's cubes then adds up the slices in
/// shared memory, nine barriers apart: a few hundred cycles on a GPU, against a launch and
/// its wait saved. Elsewhere (wgpu, which tells cubecl nothing of the device) the split sum
/// runs its own second launch: on lavapipe, where a barrier is a CPU core switching between
/// the workgroup's units, the MLP's perturbation took 4.2 ms that way rather than 1.4 (the
/// launch saved: about 0.1 ms).
pub fn adds_up_slices<R: Runtime>(client: &ComputeClient<R>) -> Result<bool, RuntimeError> {
    let setting = std::env::var("PLATEAU_SUMS_IN_READERS").ok();
    sums_in_readers(setting.as_deref(), client.properties().hardware.num_streaming_multiprocessors.is_some())
}

/// The choice of [`adds_up_slices`]: `setting` (`PLATEAU_SUMS_IN_READERS`: `on`, `off`, or
/// unset or empty for the default, `knows_sms`).
pub fn sums_in_readers(setting: Option<&str>, knows_sms: bool) -> Result<bool, RuntimeError> {
    match setting {
        None | Some("") => Ok(knows_sms),
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(v) => Err(RuntimeError::Setting { name: "PLATEAU_SUMS_IN_READERS", value: v.to_string(), expected: "`on` or `off`" }),
    }
}

/// Refuses labels outside `0..classes` for a label input (`Compiled::labels`: the fused program
/// compares them with the class coordinate and would give a row of zeros).
pub fn check_labels(labels: &BTreeMap<String, usize>, kind: &str, name: &str, value: &Tensor) -> Result<(), RuntimeError> {
    let Some(&classes) = labels.get(name).filter(|_| kind == "input") else { return Ok(()) };
    match value.data.iter().position(|&l| !(l >= 0.0 && l < classes as f64 && l.fract() == 0.0)) {
        Some(position) => Err(RuntimeError::LabelOutOfRange { label: value.data[position] as i64, position, classes }),
        None => Ok(()),
    }
}

/// The leaves a caller must set before a step: (kind, name) of inputs, parameters, states
/// and scalars, in graph order.
pub fn leaves(g: &Graph) -> Vec<(&'static str, String)> {
    g.node_ids()
        .filter_map(|id| {
            let op = &g.node(id).op;
            Some((leaf_kind(op)?, leaf_name(op)?.to_string()))
        })
        .collect()
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_in_readers_follows_the_device_unless_set() {
        assert_eq!(sums_in_readers(None, true), Ok(true));
        assert_eq!(sums_in_readers(None, false), Ok(false));
        assert_eq!(sums_in_readers(Some(""), true), Ok(true));
        assert_eq!(sums_in_readers(Some("on"), false), Ok(true));
        assert_eq!(sums_in_readers(Some("off"), true), Ok(false));
        let err = sums_in_readers(Some("yes"), true).unwrap_err();
        assert_eq!(err.to_string(), "PLATEAU_SUMS_IN_READERS=\"yes\": expected `on` or `off`");
    }

    #[test]
    fn the_gemm_layout_follows_the_device_unless_set() {
        assert_eq!(choose_gemm_layout(None, || true).unwrap(), GemmLayout::Cpu);
        assert_eq!(choose_gemm_layout(None, || false).unwrap(), GemmLayout::Gpu);
        assert_eq!(choose_gemm_layout(Some(""), || true).unwrap(), GemmLayout::Cpu);
        assert_eq!(choose_gemm_layout(Some(""), || false).unwrap(), GemmLayout::Gpu);
        // A setting is not second-guessed (nor the device asked).
        assert_eq!(choose_gemm_layout(Some("gpu"), || panic!("asked")).unwrap(), GemmLayout::Gpu);
        assert_eq!(choose_gemm_layout(Some("cpu"), || panic!("asked")).unwrap(), GemmLayout::Cpu);
        let err = choose_gemm_layout(Some("CPU"), || true).unwrap_err();
        assert_eq!(err.to_string(), "PLATEAU_GEMM_LAYOUT=\"CPU\": expected `gpu` or `cpu`");
    }
}
