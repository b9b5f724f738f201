//! A fused program in the form a cubecl kernel takes as its comptime argument: f32 constants
//! as bits, and each operand's broadcast read as (divisor, extent, stride) triples over the
//! iteration space, so the kernel computes every load index with unrolled integer math.

use plateau_compiler::ir::{BinaryOp, CmpOp, Instr, Program, UnaryOp};
use plateau_compiler::Shape;

/// One scalar instruction of a kernel program; operands name earlier instructions.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum KInstr {
    Load(usize),
    /// An f32 constant, as bits.
    Const(u32),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Compare(CmpOp, usize, usize),
    Select(usize, usize, usize),
    /// The position's coordinate along one axis of the iteration space, `(pos / divisor) %
    /// extent`, as f32.
    Coord { divisor: usize, extent: usize },
}

/// How operand `i` is read at iteration position `pos`: the sum over its axes of
/// `((pos / divisor) % extent) * stride`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Access {
    /// Element offset of the operand in its buffer.
    pub offset: usize,
    pub axes: Vec<(usize, usize, usize)>,
    /// The operand is read as the iteration space itself: the index is `offset + pos`.
    pub identity: bool,
    /// In a vectorized program: one scalar per vector, broadcast to every lane.
    pub splat: bool,
    /// The operand's slot in the kernel's vector (or, when `splat`, scalar) inputs.
    pub slot: usize,
}

/// A fused elementwise program ready for lowering.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct KernelProgram {
    pub instrs: Vec<KInstr>,
    pub access: Vec<Access>,
    pub outputs: Vec<usize>,
    /// Element offset of each output in its buffer (in vectors when `width > 1`).
    pub output_offsets: Vec<usize>,
    /// Elements per vector: 1 for the scalar form.
    pub width: usize,
}

/// The vector width of vectorized elementwise kernels (four f32: 128-bit loads and stores).
pub const VECTOR_WIDTH: usize = 4;

/// The access pattern of an operand read through `view` (broadcast) in `space`.
pub fn access(view: &Shape, space: &Shape) -> Access {
    let lead = space.rank() - view.rank();
    let vs = view.strides();
    let ss = space.strides();
    let mut axes = Vec::new();
    for ax in 0..space.rank() {
        if ax < lead || view.0[ax - lead] == 1 || space.0[ax] == 1 {
            continue;
        }
        axes.push((ss[ax], space.0[ax], vs[ax - lead]));
    }
    let identity = view.numel() == space.numel() && (0..view.rank()).all(|i| view.0[i] == space.0[i + lead]);
    Access { offset: 0, axes, identity, splat: false, slot: 0 }
}

impl KernelProgram {
    /// Lowers `program` evaluated over `space`.
    pub fn new(program: &Program, space: &Shape) -> Self {
        let strides = space.strides();
        let instrs = program
            .instrs
            .iter()
            .map(|ins| match *ins {
                Instr::Load(i) => KInstr::Load(i as usize),
                Instr::Const(bits) => KInstr::Const((f64::from_bits(bits) as f32).to_bits()),
                Instr::Unary(op, a) => KInstr::Unary(op, a as usize),
                Instr::Binary(op, a, b) => KInstr::Binary(op, a as usize, b as usize),
                Instr::Compare(op, a, b) => KInstr::Compare(op, a as usize, b as usize),
                Instr::Select(c, a, b) => KInstr::Select(c as usize, a as usize, b as usize),
                Instr::Coord(a) => KInstr::Coord { divisor: strides[a as usize], extent: space.0[a as usize] },
            })
            .collect();
        KernelProgram {
            instrs,
            access: program.views.iter().enumerate().map(|(k, v)| Access { slot: k, ..access(v, space) }).collect(),
            outputs: program.outputs.iter().map(|&o| o as usize).collect(),
            output_offsets: vec![0; program.outputs.len()],
            width: 1,
        }
    }
}

impl KernelProgram {
    /// The same program reading operand `i` at element offset `inputs[i]` of its buffer and
    /// writing output `j` at `outputs[j]`.
    pub fn with_offsets(mut self, inputs: &[usize], outputs: &[usize]) -> Self {
        for (a, &o) in self.access.iter_mut().zip(inputs) {
            a.offset = o;
        }
        self.output_offsets = outputs.to_vec();
        self
    }
}

impl Access {
    /// This read over vectors of `w` consecutive positions: a vector load (positions and
    /// offsets in vectors) when the operand is contiguous along the innermost axis in whole
    /// vectors, a splat when it is constant across each vector, `None` otherwise.
    fn vectorized(&self, w: usize) -> Option<Access> {
        if self.identity {
            return self.offset.is_multiple_of(w).then(|| Access { offset: self.offset / w, ..self.clone() });
        }
        let inner = self.axes.iter().position(|a| a.0 == 1);
        let outer_ok = |a: &(usize, usize, usize)| a.0.is_multiple_of(w);
        match inner {
            None if self.axes.iter().all(outer_ok) => {
                let axes = self.axes.iter().map(|&(d, e, s)| (d / w, e, s)).collect();
                Some(Access { axes, splat: true, ..self.clone() })
            }
            Some(i) => {
                let (_, e, s) = self.axes[i];
                let others_ok = self.axes.iter().enumerate().all(|(j, a)| j == i || (outer_ok(a) && a.2.is_multiple_of(w)));
                if s != 1 || !e.is_multiple_of(w) || !self.offset.is_multiple_of(w) || !others_ok {
                    return None;
                }
                let axes = self.axes.iter().enumerate().map(|(j, &(d, e, s))| if j == i { (1, e / w, 1) } else { (d / w, e, s / w) }).collect();
                Some(Access { offset: self.offset / w, axes, ..self.clone() })
            }
            None => None,
        }
    }
}

impl KernelProgram {
    /// The program over `n` positions in `w`-wide vectors, when every operand and output
    /// allows it (`n` and every output offset are multiples of `w`, every read vectorizes).
    pub fn vectorized(&self, n: usize, w: usize) -> Option<KernelProgram> {
        if w <= 1 || !n.is_multiple_of(w) || self.width != 1 || self.output_offsets.iter().any(|o| !o.is_multiple_of(w)) {
            return None;
        }
        // A coordinate differs between a vector's lanes: such a program runs scalar.
        if self.instrs.iter().any(|i| matches!(i, KInstr::Coord { .. })) {
            return None;
        }
        let mut access = Vec::with_capacity(self.access.len());
        let (mut vectors, mut splats) = (0, 0);
        for a in &self.access {
            let mut v = a.vectorized(w)?;
            let next = if v.splat { &mut splats } else { &mut vectors };
            v.slot = *next;
            *next += 1;
            access.push(v);
        }
        Some(KernelProgram {
            instrs: self.instrs.clone(),
            access,
            outputs: self.outputs.clone(),
            output_offsets: self.output_offsets.iter().map(|o| o / w).collect(),
            width: w,
        })
    }

    /// Operands read as vectors, and read as broadcast scalars.
    pub fn input_counts(&self) -> (usize, usize) {
        let splats = self.access.iter().filter(|a| a.splat).count();
        (self.access.len() - splats, splats)
    }
}
