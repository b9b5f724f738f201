//! Reductions and layout ops of the reference interpreter, as index arithmetic.

use plateau_compiler::ir::ReduceOp;
use plateau_compiler::Shape;

/// Splits a linear index into coordinates of `shape`.
fn coords(mut i: usize, dims: &[usize], out: &mut [usize]) {
    for ax in (0..dims.len()).rev() {
        out[ax] = i % dims[ax];
        i /= dims[ax];
    }
}

/// Reduction over `axes`, keeping them with size 1.
pub fn reduce(op: ReduceOp, x: &[f64], shape: &Shape, axes: &[usize]) -> Vec<f64> {
    let dims = shape.dims();
    let mut out_dims = dims.to_vec();
    for &a in axes {
        out_dims[a] = 1;
    }
    let out_shape = Shape(out_dims);
    let ostrides = out_shape.strides();
    let init = match op {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max => f64::NEG_INFINITY,
    };
    let mut out = vec![init; out_shape.numel()];
    let mut c = vec![0; dims.len()];
    for (i, &v) in x.iter().enumerate() {
        coords(i, dims, &mut c);
        let o: usize = c.iter().zip(&ostrides).zip(&out_shape.0).map(|((&ci, &s), &d)| if d == 1 { 0 } else { ci * s }).sum();
        match op {
            ReduceOp::Sum => out[o] += v,
            ReduceOp::Max => {
                if v > out[o] || v.is_nan() {
                    out[o] = v
                }
            }
        }
    }
    out
}

pub fn permute(x: &[f64], shape: &Shape, perm: &[usize]) -> Vec<f64> {
    let in_strides = shape.strides();
    let out_dims: Vec<usize> = perm.iter().map(|&p| shape.0[p]).collect();
    let mut c = vec![0; perm.len()];
    (0..x.len())
        .map(|i| {
            coords(i, &out_dims, &mut c);
            x[c.iter().zip(perm).map(|(&ci, &p)| ci * in_strides[p]).sum::<usize>()]
        })
        .collect()
}

pub fn broadcast(x: &[f64], shape: &Shape, to: &Shape) -> Vec<f64> {
    let lead = to.rank() - shape.rank();
    let in_strides = shape.strides();
    let mut c = vec![0; to.rank()];
    (0..to.numel())
        .map(|i| {
            coords(i, &to.0, &mut c);
            let idx: usize = (0..shape.rank()).map(|a| if shape.0[a] == 1 { 0 } else { c[a + lead] * in_strides[a] }).sum();
            x[idx]
        })
        .collect()
}

pub fn slice(x: &[f64], shape: &Shape, start: &[usize], end: &[usize]) -> Vec<f64> {
    let out_dims: Vec<usize> = start.iter().zip(end).map(|(s, e)| e - s).collect();
    let strides = shape.strides();
    let n: usize = out_dims.iter().product();
    let mut c = vec![0; out_dims.len()];
    (0..n)
        .map(|i| {
            coords(i, &out_dims, &mut c);
            x[c.iter().zip(start).zip(&strides).map(|((&ci, &s), &st)| (ci + s) * st).sum::<usize>()]
        })
        .collect()
}

pub fn pad(x: &[f64], shape: &Shape, lo: &[usize], hi: &[usize]) -> Vec<f64> {
    let out_shape = Shape((0..shape.rank()).map(|a| lo[a] + shape.0[a] + hi[a]).collect());
    let ostrides = out_shape.strides();
    let mut out = vec![0.0; out_shape.numel()];
    let mut c = vec![0; shape.rank()];
    for (i, &v) in x.iter().enumerate() {
        coords(i, &shape.0, &mut c);
        out[c.iter().zip(lo).zip(&ostrides).map(|((&ci, &l), &s)| (ci + l) * s).sum::<usize>()] = v;
    }
    out
}

pub fn concat(parts: &[(&[f64], &Shape)], axis: usize, out_shape: &Shape) -> Vec<f64> {
    let ostrides = out_shape.strides();
    let mut out = vec![0.0; out_shape.numel()];
    let mut offset = 0;
    for (x, shape) in parts {
        let mut c = vec![0; shape.rank()];
        for (i, &v) in x.iter().enumerate() {
            coords(i, &shape.0, &mut c);
            c[axis] += offset;
            out[c.iter().zip(&ostrides).map(|(&ci, &s)| ci * s).sum::<usize>()] = v;
        }
        offset += shape.0[axis];
    }
    out
}

/// `[m,k] x [k,n]` with strides given in elements, through `matrixmultiply`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f64],
    (rsa, csa): (isize, isize),
    b: &[f64],
    (rsb, csb): (isize, isize),
    beta: f64,
    c: &mut [f64],
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the caller sizes `a` to cover m x k, `b` k x n and `c` m x n (row-major) at the
    // given strides; matrixmultiply reads and writes only within those.
    unsafe {
        matrixmultiply::dgemm(m, k, n, 1.0, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1);
    }
}
