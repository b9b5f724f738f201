//! A small elementwise-expression helper for building optimizer math: scalar (`[]`)
//! operands broadcast to the other operand's shape.

use crate::error::IrError;
use crate::ir::{BinaryOp, Graph, NodeId, UnaryOp};

pub(crate) struct Ew<'g>(pub &'g mut Graph);

type R = Result<NodeId, IrError>;

impl Ew<'_> {
    fn bin(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> R {
        let (sa, sb) = (self.0.shape(a).clone(), self.0.shape(b).clone());
        let a = if sa.rank() == 0 && sb.rank() > 0 { self.0.broadcast(a, &sb)? } else { a };
        let b = if sb.rank() == 0 && sa.rank() > 0 { self.0.broadcast(b, &sa)? } else { b };
        self.0.binary(op, a, b)
    }

    pub fn add(&mut self, a: NodeId, b: NodeId) -> R {
        self.bin(BinaryOp::Add, a, b)
    }

    pub fn sub(&mut self, a: NodeId, b: NodeId) -> R {
        self.bin(BinaryOp::Sub, a, b)
    }

    pub fn mul(&mut self, a: NodeId, b: NodeId) -> R {
        self.bin(BinaryOp::Mul, a, b)
    }

    pub fn div(&mut self, a: NodeId, b: NodeId) -> R {
        self.bin(BinaryOp::Div, a, b)
    }

    pub fn min(&mut self, a: NodeId, b: NodeId) -> R {
        self.bin(BinaryOp::Min, a, b)
    }

    pub fn unary(&mut self, op: UnaryOp, a: NodeId) -> R {
        self.0.unary(op, a)
    }

    /// A scalar constant of `like`'s dtype.
    pub fn c(&mut self, value: f64, like: NodeId) -> R {
        let d = self.0.dtype(like);
        self.0.full(value, d, &crate::ir::Shape::scalar())
    }

    /// `x * value`.
    pub fn scale(&mut self, x: NodeId, value: f64) -> R {
        let c = self.c(value, x)?;
        self.mul(x, c)
    }

    /// `sum(x * x)` as a scalar.
    pub fn sum_sq(&mut self, x: NodeId) -> R {
        let sq = self.mul(x, x)?;
        self.0.sum_all(sq)
    }
}
