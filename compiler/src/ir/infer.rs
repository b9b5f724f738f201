//! Shape and dtype inference: the type of an op's result from its operands' types.

use super::op::{Conv2dAttrs, Op, PoolAttrs, ReduceOp};
use super::shape::{DType, Shape, TensorType};
use crate::error::IrError;

/// Infers the result type of `op` applied to `operands`, or explains why it does not apply.
pub fn infer(op: &Op, operands: &[TensorType]) -> Result<TensorType, IrError> {
    if op.is_leaf() {
        return Err(IrError::Invalid { op: op.to_string(), reason: "a leaf has no operands to infer from".into() });
    }
    if operands.len() != op.arity() {
        return Err(IrError::Arity { op: op.to_string(), expected: op.arity(), got: operands.len() });
    }
    let fail = |reason: String| IrError::Shape { op: op.to_string(), operands: operands.to_vec(), reason };
    let t = |dtype: DType, dims: Vec<usize>| Ok(TensorType { dtype, shape: Shape(dims) });
    // Fused programs may read no operand at all (a constant computed in-kernel).
    match op {
        Op::Fused { program, output, ty, .. } => {
            check_program(program, operands, &ty.shape).map_err(fail)?;
            if *output as usize >= program.outputs.len() {
                return Err(fail(format!("output {output} of a {}-output program", program.outputs.len())));
            }
            return Ok(ty.clone());
        }
        Op::Epilogue { program, ty } => {
            check_program(program, operands, &ty.shape).map_err(fail)?;
            if program.outputs.len() != 1 || operands.first().map(|o| o.shape.numel()) != Some(ty.shape.numel()) || program.views[0] != ty.shape {
                return Err(fail("an epilogue maps one output over its op's output, read whole (reshaped to its own shape) as operand 0".into()));
            }
            return Ok(ty.clone());
        }
        Op::FusedReduce { program, axes, space, .. } => {
            check_program(program, operands, &space.shape).map_err(fail)?;
            if program.outputs.len() != 1 {
                return Err(fail("a reduction prologue has one output".into()));
            }
            check_axes(axes, space.shape.rank()).map_err(fail)?;
            let mut dims = space.shape.0.clone();
            for &ax in axes {
                dims[ax] = 1;
            }
            return t(space.dtype, dims);
        }
        _ => {}
    }
    let Some(a) = operands.first() else {
        return Err(fail("no operands".into()));
    };
    let float = |x: &TensorType| {
        if x.dtype.is_float() {
            Ok(())
        } else {
            Err(fail(format!("expected a floating-point operand, got {}", x.dtype)))
        }
    };
    match op {
        Op::Unary(_) => {
            float(a)?;
            Ok(a.clone())
        }
        Op::StopGradient => Ok(a.clone()),
        Op::Binary(_) | Op::Compare(_) => {
            let b = &operands[1];
            if a.shape != b.shape {
                return Err(fail("operand shapes differ (broadcast one of them explicitly)".into()));
            }
            if a.dtype != b.dtype {
                return Err(fail("operand dtypes differ".into()));
            }
            if matches!(op, Op::Compare(_)) {
                if a.dtype == DType::Bool {
                    return Err(fail("cannot compare bool values".into()));
                }
                t(DType::Bool, a.shape.0.clone())
            } else {
                float(a)?;
                Ok(a.clone())
            }
        }
        Op::Select => {
            let (c, x, y) = (&operands[0], &operands[1], &operands[2]);
            if c.dtype != DType::Bool {
                return Err(fail(format!("the condition must be bool, got {}", c.dtype)));
            }
            if c.shape != x.shape || x.shape != y.shape {
                return Err(fail("condition and both branches must have the same shape".into()));
            }
            if x.dtype != y.dtype {
                return Err(fail("both branches must have the same dtype".into()));
            }
            Ok(x.clone())
        }
        Op::Reduce { op: rop, axes } => {
            if *rop == ReduceOp::Sum {
                float(a)?;
            }
            check_axes(axes, a.shape.rank()).map_err(fail)?;
            let mut dims = a.shape.0.clone();
            for &ax in axes {
                dims[ax] = 1;
            }
            t(a.dtype, dims)
        }
        Op::Reshape { shape } => {
            if shape.numel() != a.shape.numel() {
                return Err(fail(format!(
                    "cannot reshape {} elements into {} ({} elements)",
                    a.shape.numel(),
                    shape,
                    shape.numel()
                )));
            }
            t(a.dtype, shape.0.clone())
        }
        Op::Permute { perm } => {
            let r = a.shape.rank();
            let mut seen = vec![false; r];
            if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
                return Err(fail(format!("{:?} is not a permutation of {} axes", perm, r)));
            }
            t(a.dtype, perm.iter().map(|&p| a.shape.0[p]).collect())
        }
        Op::Broadcast { shape } => {
            let (r, out) = (a.shape.rank(), shape.rank());
            if r > out {
                return Err(fail(format!("cannot broadcast to lower rank {shape}")));
            }
            for (i, &d) in a.shape.0.iter().enumerate() {
                let o = shape.0[out - r + i];
                if d != 1 && d != o {
                    return Err(fail(format!("axis {i} of size {d} cannot broadcast to {o} in {shape}")));
                }
            }
            t(a.dtype, shape.0.clone())
        }
        Op::Slice { start, end } => {
            let r = a.shape.rank();
            if start.len() != r || end.len() != r {
                return Err(fail(format!("slice bounds must have {r} entries")));
            }
            let mut dims = Vec::with_capacity(r);
            for i in 0..r {
                if start[i] > end[i] || end[i] > a.shape.0[i] {
                    return Err(fail(format!("axis {i}: range {}..{} is outside 0..{}", start[i], end[i], a.shape.0[i])));
                }
                dims.push(end[i] - start[i]);
            }
            t(a.dtype, dims)
        }
        Op::Pad { lo, hi } => {
            let r = a.shape.rank();
            if lo.len() != r || hi.len() != r {
                return Err(fail(format!("padding must have {r} entries")));
            }
            t(a.dtype, (0..r).map(|i| lo[i] + a.shape.0[i] + hi[i]).collect())
        }
        Op::Concat { axis, .. } => {
            let r = a.shape.rank();
            if *axis >= r {
                return Err(fail(format!("axis {axis} out of range for rank {r}")));
            }
            let mut dims = a.shape.0.clone();
            dims[*axis] = 0;
            for x in operands {
                if x.dtype != a.dtype || x.shape.rank() != r {
                    return Err(fail("operands differ in dtype or rank".into()));
                }
                for i in 0..r {
                    if i != *axis && x.shape.0[i] != a.shape.0[i] {
                        return Err(fail(format!("operands differ on axis {i}")));
                    }
                }
                dims[*axis] += x.shape.0[*axis];
            }
            t(a.dtype, dims)
        }
        Op::MatMul { ta, tb } => {
            let b = &operands[1];
            float(a)?;
            if a.dtype != b.dtype {
                return Err(fail("operand dtypes differ".into()));
            }
            if a.shape.rank() != 2 || b.shape.rank() != 2 {
                return Err(fail("matmul takes two matrices".into()));
            }
            let (m, ka) = if *ta { (a.shape.0[1], a.shape.0[0]) } else { (a.shape.0[0], a.shape.0[1]) };
            let (kb, n) = if *tb { (b.shape.0[1], b.shape.0[0]) } else { (b.shape.0[0], b.shape.0[1]) };
            if ka != kb {
                return Err(fail(format!("inner dimensions differ ({ka} vs {kb})")));
            }
            t(a.dtype, vec![m, n])
        }
        Op::Conv2d(attrs) => {
            let w = &operands[1];
            same_float(a, w).map_err(fail)?;
            nchw(a).map_err(fail)?;
            nchw(w).map_err(fail)?;
            if a.shape.0[1] != w.shape.0[1] {
                return Err(fail(format!("input has {} channels, weight expects {}", a.shape.0[1], w.shape.0[1])));
            }
            let (ho, wo) = conv_out(attrs, [a.shape.0[2], a.shape.0[3]], [w.shape.0[2], w.shape.0[3]]).map_err(fail)?;
            t(a.dtype, vec![a.shape.0[0], w.shape.0[0], ho, wo])
        }
        Op::Conv2dGradInput { attrs, input_hw } => {
            let (gy, w) = (a, &operands[1]);
            same_float(gy, w).map_err(fail)?;
            nchw(gy).map_err(fail)?;
            nchw(w).map_err(fail)?;
            let (ho, wo) = conv_out(attrs, *input_hw, [w.shape.0[2], w.shape.0[3]]).map_err(fail)?;
            if gy.shape.0[1] != w.shape.0[0] || gy.shape.0[2] != ho || gy.shape.0[3] != wo {
                return Err(fail("output gradient does not match the convolution's output".into()));
            }
            t(gy.dtype, vec![gy.shape.0[0], w.shape.0[1], input_hw[0], input_hw[1]])
        }
        Op::Conv2dGradWeight { attrs, kernel } => {
            let (x, gy) = (a, &operands[1]);
            same_float(x, gy).map_err(fail)?;
            nchw(x).map_err(fail)?;
            nchw(gy).map_err(fail)?;
            let (ho, wo) = conv_out(attrs, [x.shape.0[2], x.shape.0[3]], *kernel).map_err(fail)?;
            if gy.shape.0[0] != x.shape.0[0] || gy.shape.0[2] != ho || gy.shape.0[3] != wo {
                return Err(fail("output gradient does not match the convolution's output".into()));
            }
            t(x.dtype, vec![gy.shape.0[1], x.shape.0[1], kernel[0], kernel[1]])
        }
        Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
            float(a)?;
            nchw(a).map_err(fail)?;
            let (ho, wo) = pool_out(p, [a.shape.0[2], a.shape.0[3]]).map_err(fail)?;
            t(a.dtype, vec![a.shape.0[0], a.shape.0[1], ho, wo])
        }
        Op::MaxPool2dGrad(p) | Op::MaxPool2dGather(p) => {
            let v = &operands[1];
            same_float(a, v).map_err(fail)?;
            nchw(a).map_err(fail)?;
            let (ho, wo) = pool_out(p, [a.shape.0[2], a.shape.0[3]]).map_err(fail)?;
            let pooled = vec![a.shape.0[0], a.shape.0[1], ho, wo];
            if matches!(op, Op::MaxPool2dGrad(_)) {
                if v.shape.0 != pooled {
                    return Err(fail("output gradient does not match the pooling's output".into()));
                }
                Ok(a.clone())
            } else {
                if v.shape != a.shape {
                    return Err(fail("gathered values must have the input's shape".into()));
                }
                t(a.dtype, pooled)
            }
        }
        Op::AvgPool2dGrad { attrs, input_hw } => {
            float(a)?;
            nchw(a).map_err(fail)?;
            let (ho, wo) = pool_out(attrs, *input_hw).map_err(fail)?;
            if a.shape.0[2] != ho || a.shape.0[3] != wo {
                return Err(fail("output gradient does not match the pooling's output".into()));
            }
            t(a.dtype, vec![a.shape.0[0], a.shape.0[1], input_hw[0], input_hw[1]])
        }
        Op::OneHot { classes } => {
            if a.dtype != DType::I32 || a.shape.rank() != 1 {
                return Err(fail("one_hot takes a 1-D i32 label vector".into()));
            }
            if *classes == 0 {
                return Err(fail("one_hot needs at least one class".into()));
            }
            t(DType::Bool, vec![a.shape.0[0], *classes])
        }
        Op::DropoutMask { p, shape, .. } => {
            if !(0.0..1.0).contains(p) {
                return Err(fail(format!("dropout probability {p} is not in [0, 1)")));
            }
            if a.shape.rank() != 0 || !a.dtype.is_float() {
                return Err(fail("dropout_mask takes the scalar step counter".into()));
            }
            t(DType::Bool, shape.0.clone())
        }
        Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Scalar { .. } | Op::Const { .. } | Op::Fused { .. } | Op::FusedReduce { .. } | Op::Epilogue { .. } => {
            unreachable!("leaves and fused ops are handled above")
        }
    }
}

/// Each operand is read through its view (same element count), broadcast to `space`.
fn check_program(p: &super::program::Program, operands: &[TensorType], space: &Shape) -> Result<(), String> {
    if let Some(a) = p.instrs.iter().find_map(|i| match *i {
        super::program::Instr::Coord(a) if a as usize >= space.rank() => Some(a),
        _ => None,
    }) {
        return Err(format!("coordinate along axis {a} of a rank-{} space", space.rank()));
    }
    for (i, (v, o)) in p.views.iter().zip(operands).enumerate() {
        if v.numel() != o.shape.numel() {
            return Err(format!("operand {i} has {} elements, its view {v} has {}", o.shape.numel(), v.numel()));
        }
        if v.rank() > space.rank() || v.0.iter().rev().zip(space.0.iter().rev()).any(|(&d, &s)| d != 1 && d != s) {
            return Err(format!("view {v} of operand {i} does not broadcast to {space}"));
        }
    }
    Ok(())
}

fn check_axes(axes: &[usize], rank: usize) -> Result<(), String> {
    let mut seen = vec![false; rank];
    for &ax in axes {
        if ax >= rank {
            return Err(format!("axis {ax} out of range for rank {rank}"));
        }
        if std::mem::replace(&mut seen[ax], true) {
            return Err(format!("axis {ax} listed twice"));
        }
    }
    Ok(())
}

fn same_float(a: &TensorType, b: &TensorType) -> Result<(), String> {
    if !a.dtype.is_float() || a.dtype != b.dtype {
        return Err("operands must share one floating-point dtype".into());
    }
    Ok(())
}

fn nchw(x: &TensorType) -> Result<(), String> {
    if x.shape.rank() != 4 {
        return Err(format!("expected a 4-D NCHW tensor, got {}", x.shape));
    }
    Ok(())
}

/// Output spatial size of a convolution; an error when the window does not fit.
pub fn conv_out(attrs: &Conv2dAttrs, hw: [usize; 2], kernel: [usize; 2]) -> Result<(usize, usize), String> {
    window_out(hw, kernel, attrs.stride, attrs.padding)
}

/// Output spatial size of a pooling; an error when the window does not fit.
pub fn pool_out(attrs: &PoolAttrs, hw: [usize; 2]) -> Result<(usize, usize), String> {
    if attrs.padding[0] * 2 > attrs.kernel[0] || attrs.padding[1] * 2 > attrs.kernel[1] {
        return Err("pooling padding must be at most half the window".into());
    }
    window_out(hw, attrs.kernel, attrs.stride, attrs.padding)
}

fn window_out(hw: [usize; 2], k: [usize; 2], s: [usize; 2], p: [usize; 2]) -> Result<(usize, usize), String> {
    let mut out = [0; 2];
    for i in 0..2 {
        if s[i] == 0 || k[i] == 0 {
            return Err("window and stride must be positive".into());
        }
        let padded = hw[i] + 2 * p[i];
        if padded < k[i] {
            return Err(format!("window {}x{} is larger than the padded input {}x{}", k[0], k[1], hw[0] + 2 * p[0], hw[1] + 2 * p[1]));
        }
        out[i] = (padded - k[i]) / s[i] + 1;
    }
    Ok((out[0], out[1]))
}
