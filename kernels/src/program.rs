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
}

/// A fused elementwise program ready for lowering.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct KernelProgram {
    pub instrs: Vec<KInstr>,
    pub access: Vec<Access>,
    pub outputs: Vec<usize>,
    /// Element offset of each output in its buffer.
    pub output_offsets: Vec<usize>,
}

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
    Access { offset: 0, axes, identity }
}

impl KernelProgram {
    /// Lowers `program` evaluated over `space`.
    pub fn new(program: &Program, space: &Shape) -> Self {
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
            })
            .collect();
        KernelProgram {
            instrs,
            access: program.views.iter().map(|v| access(v, space)).collect(),
            outputs: program.outputs.iter().map(|&o| o as usize).collect(),
            output_offsets: vec![0; program.outputs.len()],
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
