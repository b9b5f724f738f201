//! Vector-Jacobian products: the cotangent of one operand given the cotangent of a result.
//! Every rule is written with differentiable ops so the backward can be differentiated again.

use crate::error::IrError;
use crate::ir::{BinaryOp, CmpOp, Graph, NodeId, Op, ReduceOp, Shape, UnaryOp};

/// The contribution to operand `pos` of `node` from the cotangent `ct` of `node`; `None` when
/// the op is piecewise constant in that operand (its derivative is zero almost everywhere).
pub(super) fn vjp(g: &mut Graph, node: NodeId, pos: usize, ct: NodeId) -> Result<Option<NodeId>, IrError> {
    use BinaryOp::*;
    let op = g.node(node).op.clone();
    let ops = g.operands(node);
    let x = ops[pos];
    let y = node;
    let r = match op {
        Op::Unary(u) => match u {
            UnaryOp::Neg => g.unary(UnaryOp::Neg, ct)?,
            UnaryOp::Exp => g.binary(Mul, ct, y)?,
            UnaryOp::Log => g.binary(Div, ct, x)?,
            UnaryOp::Sqrt => {
                let half = g.scale(ct, 0.5)?;
                g.binary(Div, half, y)?
            }
            UnaryOp::Recip => {
                let yy = g.binary(Mul, y, y)?;
                let t = g.binary(Mul, ct, yy)?;
                g.unary(UnaryOp::Neg, t)?
            }
            UnaryOp::Abs => {
                let s = g.unary(UnaryOp::Sign, x)?;
                g.binary(Mul, ct, s)?
            }
            UnaryOp::Sign => return Ok(None),
        },
        Op::Binary(b) => {
            let (a, bb) = (ops[0], ops[1]);
            match (b, pos) {
                (Add, _) | (Sub, 0) => ct,
                (Sub, _) => g.unary(UnaryOp::Neg, ct)?,
                (Mul, 0) => g.binary(Mul, ct, bb)?,
                (Mul, _) => g.binary(Mul, ct, a)?,
                (Div, 0) => g.binary(Div, ct, bb)?,
                (Div, _) => {
                    let t = g.binary(Mul, ct, y)?;
                    let t = g.binary(Div, t, bb)?;
                    g.unary(UnaryOp::Neg, t)?
                }
                // Ties send the gradient to the second operand, so relu(x) = max(x, 0)
                // has derivative 0 at 0, as in PyTorch.
                (Max | Min, _) => {
                    let cmp = if b == Max { CmpOp::Gt } else { CmpOp::Lt };
                    let first = g.compare(cmp, a, bb)?;
                    let zero = g.full_like(0.0, ct)?;
                    if pos == 0 {
                        g.select(first, ct, zero)?
                    } else {
                        g.select(first, zero, ct)?
                    }
                }
            }
        }
        Op::Compare(_) | Op::OneHot { .. } | Op::DropoutMask { .. } | Op::StopGradient => return Ok(None),
        Op::Select => {
            if pos == 0 {
                return Ok(None);
            }
            let zero = g.full_like(0.0, ct)?;
            if pos == 1 {
                g.select(ops[0], ct, zero)?
            } else {
                g.select(ops[0], zero, ct)?
            }
        }
        Op::Reduce { op: ReduceOp::Sum, .. } => {
            let shape = g.shape(x).clone();
            g.broadcast(ct, &shape)?
        }
        Op::Reduce { op: ReduceOp::Max, axes } => {
            // Ties share the gradient equally, as PyTorch's amax does.
            let shape = g.shape(x).clone();
            let yb = g.broadcast(y, &shape)?;
            let mask = g.compare(CmpOp::Eq, x, yb)?;
            let one = g.full_like(1.0, x)?;
            let zero = g.full_like(0.0, x)?;
            let ind = g.select(mask, one, zero)?;
            let count = g.reduce(ReduceOp::Sum, ind, &axes)?;
            let share = g.binary(Div, ct, count)?;
            let share = g.broadcast(share, &shape)?;
            g.select(mask, share, zero)?
        }
        Op::Reshape { .. } => {
            let shape = g.shape(x).clone();
            g.reshape(ct, shape)?
        }
        Op::Permute { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            g.permute(ct, &inv)?
        }
        Op::Broadcast { shape } => {
            let xs = g.shape(x).clone();
            let lead = shape.rank() - xs.rank();
            let axes: Vec<usize> =
                (0..shape.rank()).filter(|&i| i < lead || (xs.0[i - lead] == 1 && shape.0[i] != 1)).collect();
            let s = if axes.is_empty() { ct } else { g.reduce(ReduceOp::Sum, ct, &axes)? };
            g.reshape(s, xs)?
        }
        Op::Slice { start, end } => {
            let dims = g.shape(x).0.clone();
            let hi = dims.iter().zip(&end).map(|(d, e)| d - e).collect();
            g.add(Op::Pad { lo: start, hi }, &[ct])?
        }
        Op::Pad { lo, .. } => {
            let dims = g.shape(x).0.clone();
            let end = lo.iter().zip(&dims).map(|(l, d)| l + d).collect();
            g.add(Op::Slice { start: lo, end }, &[ct])?
        }
        Op::Concat { axis, .. } => {
            let offset: usize = ops[..pos].iter().map(|&o| g.shape(o).0[axis]).sum();
            let dims = g.shape(x).0.clone();
            let mut start = vec![0; dims.len()];
            let mut end = g.shape(ct).0.clone();
            start[axis] = offset;
            end[axis] = offset + dims[axis];
            g.add(Op::Slice { start, end }, &[ct])?
        }
        Op::MatMul { ta, tb } => {
            // C = A' B' with A' = op(A), B' = op(B): dA' = G B'^T, dB' = A'^T G.
            let plain = Op::MatMul { ta: false, tb: false };
            let a = if ta { g.permute(ops[0], &[1, 0])? } else { ops[0] };
            let b = if tb { g.permute(ops[1], &[1, 0])? } else { ops[1] };
            let (d, transposed) = if pos == 0 {
                let bt = g.permute(b, &[1, 0])?;
                (g.add(plain, &[ct, bt])?, ta)
            } else {
                let at = g.permute(a, &[1, 0])?;
                (g.add(plain, &[at, ct])?, tb)
            };
            if transposed {
                g.permute(d, &[1, 0])?
            } else {
                d
            }
        }
        Op::Fused { .. } | Op::FusedReduce { .. } | Op::Epilogue { .. } => {
            return Err(IrError::Invalid {
                op: op.to_string(),
                reason: "differentiate before fusing: fused kernels have no vector-Jacobian product".into(),
            })
        }
        Op::Conv2d(attrs) => {
            let (xin, w) = (ops[0], ops[1]);
            if pos == 0 {
                let input_hw = hw(g.shape(xin));
                g.add(Op::Conv2dGradInput { attrs, input_hw }, &[ct, w])?
            } else {
                let kernel = hw(g.shape(w));
                g.add(Op::Conv2dGradWeight { attrs, kernel }, &[xin, ct])?
            }
        }
        Op::Conv2dGradInput { attrs, .. } => {
            // gx = conv^T(gy, w): linear in each operand.
            let (gy, w) = (ops[0], ops[1]);
            if pos == 0 {
                g.add(Op::Conv2d(attrs), &[ct, w])?
            } else {
                let kernel = hw(g.shape(w));
                g.add(Op::Conv2dGradWeight { attrs, kernel }, &[ct, gy])?
            }
        }
        Op::Conv2dGradWeight { attrs, .. } => {
            let (xin, gy) = (ops[0], ops[1]);
            if pos == 0 {
                let input_hw = hw(g.shape(xin));
                g.add(Op::Conv2dGradInput { attrs, input_hw }, &[gy, ct])?
            } else {
                g.add(Op::Conv2d(attrs), &[xin, ct])?
            }
        }
        Op::MaxPool2d(attrs) => g.add(Op::MaxPool2dGrad(attrs), &[x, ct])?,
        Op::MaxPool2dGrad(attrs) => {
            if pos == 0 {
                return Ok(None);
            }
            g.add(Op::MaxPool2dGather(attrs), &[ops[0], ct])?
        }
        Op::MaxPool2dGather(attrs) => {
            if pos == 0 {
                return Ok(None);
            }
            g.add(Op::MaxPool2dGrad(attrs), &[ops[0], ct])?
        }
        Op::AvgPool2d(attrs) => {
            let input_hw = hw(g.shape(x));
            g.add(Op::AvgPool2dGrad { attrs, input_hw }, &[ct])?
        }
        Op::AvgPool2dGrad { attrs, .. } => g.add(Op::AvgPool2d(attrs), &[ct])?,
        Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Scalar { .. } | Op::Const { .. } => {
            return Ok(None)
        }
    };
    Ok(Some(r))
}

fn hw(s: &Shape) -> [usize; 2] {
    [s.0[2], s.0[3]]
}
