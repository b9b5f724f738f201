//! Fused elementwise programs: what a fused kernel computes per element. A program loads its
//! operands through views, runs a straight-line list of scalar instructions, and yields one or
//! more outputs. The same program drives the reference interpreter and the GPU lowering.

use super::op::{BinaryOp, CmpOp, UnaryOp};
use super::shape::{DType, Shape};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// One scalar instruction; operands name earlier instructions by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Instr {
    /// Operand `i`, read at the current element through `views[i]`.
    Load(u32),
    /// A constant, as `f64` bits.
    Const(u64),
    Unary(UnaryOp, u32),
    Binary(BinaryOp, u32, u32),
    /// 1.0 when the comparison holds, else 0.0.
    Compare(CmpOp, u32, u32),
    /// `a` where `cond != 0`, else `b`.
    Select(u32, u32, u32),
    /// The current element's coordinate along axis `a` of the iteration space (one-hot labels
    /// compare a label with it).
    Coord(u32),
}

/// A fused elementwise program.
///
/// Operand `i` is read as if its buffer had shape `views[i]` (same element count: a reshape),
/// broadcast NumPy-style to the iteration shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Program {
    pub views: Vec<Shape>,
    pub instrs: Vec<Instr>,
    pub outputs: Vec<u32>,
}

/// Scalar semantics of the elementwise ops, shared by every executor.
pub fn apply_unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
    }
}

pub fn apply_binary(op: BinaryOp, x: f64, y: f64) -> f64 {
    match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Max => x.max(y),
        BinaryOp::Min => x.min(y),
    }
}

pub fn apply_compare(op: CmpOp, x: f64, y: f64) -> f64 {
    let r = match op {
        CmpOp::Lt => x < y,
        CmpOp::Le => x <= y,
        CmpOp::Gt => x > y,
        CmpOp::Ge => x >= y,
        CmpOp::Eq => x == y,
        CmpOp::Ne => x != y,
    };
    r as u8 as f64
}

/// Rounds a computed value to what `dtype` holds (f32 results are rounded after every op).
pub fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F64 => v,
        DType::I32 => v.trunc(),
        DType::Bool => (v != 0.0) as u8 as f64,
    }
}

impl Program {
    /// The program of one elementwise instruction whose operand `i` is instruction `i`.
    /// The program reading its one operand through `view`: a copy, or a plain reduction.
    pub fn identity(view: Shape) -> Self {
        Program { views: vec![view], instrs: vec![Instr::Load(0)], outputs: vec![0] }
    }

    pub fn of_instr(views: Vec<Shape>, instr: Instr) -> Self {
        // Operand i is loaded by instruction i, so `instr` names its operands directly.
        let mut instrs: Vec<Instr> = (0..views.len() as u32).map(Instr::Load).collect();
        instrs.push(instr);
        Program { views, outputs: vec![instrs.len() as u32 - 1], instrs }
    }

    /// Evaluates every instruction for one element; `load(i)` reads operand `i`, `coord(a)` is
    /// the element's coordinate along axis `a`. Results of arithmetic are rounded to `dtype`, so
    /// a fused f32 program computes exactly what the unfused ops would.
    pub fn eval(&self, dtype: DType, mut load: impl FnMut(u32) -> f64, coord: impl Fn(u32) -> f64, regs: &mut Vec<f64>) {
        regs.clear();
        for ins in &self.instrs {
            let r = |i: &u32| regs[*i as usize];
            let v = match ins {
                Instr::Load(i) => load(*i),
                Instr::Const(bits) => round_to(dtype, f64::from_bits(*bits)),
                Instr::Unary(op, a) => round_to(dtype, apply_unary(*op, r(a))),
                Instr::Binary(op, a, b) => round_to(dtype, apply_binary(*op, r(a), r(b))),
                Instr::Compare(op, a, b) => apply_compare(*op, r(a), r(b)),
                Instr::Select(c, a, b) => {
                    if r(c) != 0.0 {
                        r(a)
                    } else {
                        r(b)
                    }
                }
                Instr::Coord(a) => coord(*a),
            };
            regs.push(v);
        }
    }

    /// Whether output `i` is a comparison (a bool value).
    pub fn output_is_bool(&self, i: usize) -> bool {
        let mut at = self.outputs[i];
        loop {
            match self.instrs[at as usize] {
                Instr::Compare(..) => return true,
                Instr::Select(_, a, _) => at = a,
                _ => return false,
            }
        }
    }

    /// Number of arithmetic instructions (loads, constants and coordinates excluded).
    pub fn arithmetic_len(&self) -> usize {
        self.instrs.iter().filter(|i| !matches!(i, Instr::Load(_) | Instr::Const(_) | Instr::Coord(_))).count()
    }

    /// Whether the program reads an element's coordinates (it then means something only over
    /// its own iteration space, and may be inlined only into a program over the same space).
    pub fn reads_coords(&self) -> bool {
        self.instrs.iter().any(|i| matches!(i, Instr::Coord(_)))
    }

    /// A canonical form: only instructions reachable from the outputs, identical instructions
    /// shared, operands (with their views) deduplicated and numbered in first-use order.
    /// `operands` are the ids of what each load reads; the result's operand list is returned.
    pub fn canonical<T: Clone + Eq + std::hash::Hash>(&self, operands: &[T]) -> (Program, Vec<T>) {
        let mut c = Canon {
            p: self,
            operands,
            out: Program { views: Vec::new(), instrs: Vec::new(), outputs: Vec::new() },
            ops: Vec::new(),
            slots: HashMap::new(),
            interned: HashMap::new(),
            memo: HashMap::new(),
        };
        for &o in &self.outputs {
            let idx = c.visit(o);
            c.out.outputs.push(idx);
        }
        (c.out, c.ops)
    }

    /// Replaces operand `slot` by the output `output` of `producer`, whose operands are read in
    /// this program's iteration space through `producer_views`. Returns the combined program
    /// and its operand list (not yet canonical).
    pub fn inline<T: Clone>(&self, operands: &[T], slot: u32, producer: &Program, output: u32, producer_operands: &[T], producer_views: &[Shape]) -> (Program, Vec<T>) {
        let mut ops: Vec<T> = operands.to_vec();
        let mut views = self.views.clone();
        let base = ops.len() as u32;
        ops.extend(producer_operands.iter().cloned());
        views.extend(producer_views.iter().cloned());
        let mut instrs: Vec<Instr> = Vec::new();
        // Producer instructions first, loads shifted past this program's operands.
        for ins in &producer.instrs {
            instrs.push(match *ins {
                Instr::Load(i) => Instr::Load(base + i),
                other => other,
            });
        }
        let shift = producer.instrs.len() as u32;
        let target = producer.outputs[output as usize];
        let map = |i: u32, own: &[Instr]| -> u32 {
            if let Instr::Load(s) = own[i as usize] {
                if s == slot {
                    return target;
                }
            }
            i + shift
        };
        for ins in &self.instrs {
            let own = &self.instrs;
            instrs.push(match *ins {
                Instr::Load(i) => Instr::Load(i),
                Instr::Const(b) => Instr::Const(b),
                Instr::Unary(op, a) => Instr::Unary(op, map(a, own)),
                Instr::Binary(op, a, b) => Instr::Binary(op, map(a, own), map(b, own)),
                Instr::Compare(op, a, b) => Instr::Compare(op, map(a, own), map(b, own)),
                Instr::Select(c, a, b) => Instr::Select(map(c, own), map(a, own), map(b, own)),
                Instr::Coord(a) => Instr::Coord(a),
            });
        }
        let outputs = self.outputs.iter().map(|&o| map(o, &self.instrs)).collect();
        (Program { views, instrs, outputs }, ops)
    }

    /// The program with every load of operand `slot` replaced by the constant `value` (the
    /// operand becomes unused; `canonical` drops it).
    pub fn with_const(&self, slot: u32, value: f64) -> Program {
        let mut p = self.clone();
        for ins in p.instrs.iter_mut() {
            if *ins == Instr::Load(slot) {
                *ins = Instr::Const(value.to_bits());
            }
        }
        p
    }

    /// The same program with operand `slot` moved to position 0 (the others keep their
    /// order): a GEMM's epilogue reads the GEMM's output as operand 0.
    pub fn with_operand_first(&self, slot: usize) -> Program {
        let to = |k: u32| -> u32 {
            match (k as usize).cmp(&slot) {
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Less => k + 1,
                std::cmp::Ordering::Greater => k,
            }
        };
        let mut views = vec![self.views[slot].clone()];
        views.extend(self.views.iter().enumerate().filter(|&(k, _)| k != slot).map(|(_, v)| v.clone()));
        let instrs = self.instrs.iter().map(|ins| if let Instr::Load(k) = *ins { Instr::Load(to(k)) } else { *ins }).collect();
        Program { views, instrs, outputs: self.outputs.clone() }
    }

    /// Several programs over one iteration space as one multi-output program.
    pub fn merge<T: Clone>(parts: &[(&Program, &[T])]) -> (Program, Vec<T>) {
        let mut out = Program { views: Vec::new(), instrs: Vec::new(), outputs: Vec::new() };
        let mut ops = Vec::new();
        for (p, operands) in parts {
            let (lb, ib) = (ops.len() as u32, out.instrs.len() as u32);
            ops.extend(operands.iter().cloned());
            out.views.extend(p.views.iter().cloned());
            for ins in &p.instrs {
                out.instrs.push(match *ins {
                    Instr::Load(i) => Instr::Load(lb + i),
                    Instr::Const(b) => Instr::Const(b),
                    Instr::Unary(op, a) => Instr::Unary(op, ib + a),
                    Instr::Binary(op, a, b) => Instr::Binary(op, ib + a, ib + b),
                    Instr::Compare(op, a, b) => Instr::Compare(op, ib + a, ib + b),
                    Instr::Select(c, a, b) => Instr::Select(ib + c, ib + a, ib + b),
                    Instr::Coord(a) => Instr::Coord(a),
                });
            }
            out.outputs.extend(p.outputs.iter().map(|o| ib + o));
        }
        (out, ops)
    }

    /// The expression computing output `i`, with operands written `$k`.
    pub fn expr(&self, i: usize) -> String {
        self.expr_at(self.outputs[i])
    }

    fn expr_at(&self, at: u32) -> String {
        match self.instrs[at as usize] {
            Instr::Load(i) => format!("${i}"),
            Instr::Const(b) => format!("{:?}", f64::from_bits(b)),
            Instr::Unary(op, a) => format!("{}({})", super::op::Op::Unary(op).mnemonic(), self.expr_at(a)),
            Instr::Binary(op, a, b) => format!("{}({}, {})", super::op::Op::Binary(op).mnemonic(), self.expr_at(a), self.expr_at(b)),
            Instr::Compare(op, a, b) => format!("{}({}, {})", super::op::Op::Compare(op).mnemonic(), self.expr_at(a), self.expr_at(b)),
            Instr::Select(c, a, b) => format!("select({}, {}, {})", self.expr_at(c), self.expr_at(a), self.expr_at(b)),
            Instr::Coord(a) => format!("coord{a}"),
        }
    }
}

/// `[$0 = add($1, $2); ...]`: the outputs as expressions, with operand views where they
/// reshape.
impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outs: Vec<String> = (0..self.outputs.len()).map(|i| self.expr(i)).collect();
        write!(f, "{}", outs.join("; "))
    }
}

struct Canon<'a, T> {
    p: &'a Program,
    operands: &'a [T],
    out: Program,
    ops: Vec<T>,
    slots: HashMap<(T, Shape), u32>,
    interned: HashMap<Instr, u32>,
    memo: HashMap<u32, u32>,
}

impl<T: Clone + Eq + std::hash::Hash> Canon<'_, T> {
    fn visit(&mut self, at: u32) -> u32 {
        if let Some(&m) = self.memo.get(&at) {
            return m;
        }
        let ins = match self.p.instrs[at as usize] {
            Instr::Load(i) => {
                let key = (self.operands[i as usize].clone(), self.p.views[i as usize].clone());
                let slot = match self.slots.get(&key) {
                    Some(&s) => s,
                    None => {
                        let s = self.ops.len() as u32;
                        self.ops.push(key.0.clone());
                        self.out.views.push(key.1.clone());
                        self.slots.insert(key, s);
                        s
                    }
                };
                Instr::Load(slot)
            }
            Instr::Const(b) => Instr::Const(b),
            Instr::Coord(a) => Instr::Coord(a),
            Instr::Unary(op, a) => Instr::Unary(op, self.visit(a)),
            Instr::Binary(op, a, b) => {
                let a = self.visit(a);
                Instr::Binary(op, a, self.visit(b))
            }
            Instr::Compare(op, a, b) => {
                let a = self.visit(a);
                Instr::Compare(op, a, self.visit(b))
            }
            Instr::Select(c, a, b) => {
                let c = self.visit(c);
                let a = self.visit(a);
                Instr::Select(c, a, self.visit(b))
            }
        };
        let out = &mut self.out;
        let idx = *self.interned.entry(ins).or_insert_with(|| {
            out.instrs.push(ins);
            out.instrs.len() as u32 - 1
        });
        self.memo.insert(at, idx);
        idx
    }
}
