//! Sliding-window kernels over NCHW tensors: convolution and its two gradients, max and
//! average pooling and their adjoints. One unit per output element, direct loops: correct
//! at every size (tuned implicit-GEMM forms can replace them per shape).

use cubecl::prelude::*;

/// Geometry of a window op and the element offsets of its buffers.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct WindowSpec {
    pub n: usize,
    /// Input channels.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Output channels (convolution) or `c` (pooling).
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub ho: usize,
    pub wo: usize,
    /// Element offsets of the two operands and the output.
    pub offsets: (usize, usize, usize),
}

/// `y[n,o,oy,ox] = sum_{c,i,j} x[n,c,oy*sh+i-ph,ox*sw+j-pw] * w[o,c,i,j]`.
#[cube(launch)]
pub fn conv2d(x: &Array<f32>, wt: &Array<f32>, y: &mut Array<f32>, #[comptime] s: WindowSpec) {
    let pos = ABSOLUTE_POS;
    if pos < comptime!(s.n * s.o * s.ho * s.wo) {
        let ox = pos % comptime!(s.wo);
        let oy = (pos / comptime!(s.wo)) % comptime!(s.ho);
        let o = (pos / comptime!(s.wo * s.ho)) % comptime!(s.o);
        let n = pos / comptime!(s.wo * s.ho * s.o);
        let mut acc = 0.0f32;
        for c in 0..comptime!(s.c) {
            for i in 0..comptime!(s.kh) {
                for j in 0..comptime!(s.kw) {
                    let yy = oy * comptime!(s.sh) + i;
                    let xx = ox * comptime!(s.sw) + j;
                    if yy >= comptime!(s.ph) && xx >= comptime!(s.pw) && yy < comptime!(s.h + s.ph) && xx < comptime!(s.w + s.pw) {
                        let xi = ((n * comptime!(s.c) + c) * comptime!(s.h) + (yy - comptime!(s.ph))) * comptime!(s.w) + (xx - comptime!(s.pw));
                        let wi = ((o * comptime!(s.c) + c) * comptime!(s.kh) + i) * comptime!(s.kw) + j;
                        acc += x[comptime!(s.offsets.0) + xi] * wt[comptime!(s.offsets.1) + wi];
                    }
                }
            }
        }
        y[comptime!(s.offsets.2) + pos] = acc;
    }
}

/// `gx[n,c,h,w] = sum over (o,i,j) with h = oy*sh+i-ph, w = ox*sw+j-pw of gy[n,o,oy,ox] * w[o,c,i,j]`.
#[cube(launch)]
pub fn conv2d_grad_input(gy: &Array<f32>, wt: &Array<f32>, gx: &mut Array<f32>, #[comptime] s: WindowSpec) {
    let pos = ABSOLUTE_POS;
    if pos < comptime!(s.n * s.c * s.h * s.w) {
        let xw = pos % comptime!(s.w);
        let xh = (pos / comptime!(s.w)) % comptime!(s.h);
        let c = (pos / comptime!(s.w * s.h)) % comptime!(s.c);
        let n = pos / comptime!(s.w * s.h * s.c);
        let mut acc = 0.0f32;
        for o in 0..comptime!(s.o) {
            for i in 0..comptime!(s.kh) {
                for j in 0..comptime!(s.kw) {
                    let ty = xh + comptime!(s.ph);
                    let tx = xw + comptime!(s.pw);
                    if ty >= i && tx >= j {
                        let dy = ty - i;
                        let dx = tx - j;
                        if dy % comptime!(s.sh) == 0 && dx % comptime!(s.sw) == 0 && dy / comptime!(s.sh) < comptime!(s.ho) && dx / comptime!(s.sw) < comptime!(s.wo) {
                            let gi = ((n * comptime!(s.o) + o) * comptime!(s.ho) + dy / comptime!(s.sh)) * comptime!(s.wo) + dx / comptime!(s.sw);
                            let wi = ((o * comptime!(s.c) + c) * comptime!(s.kh) + i) * comptime!(s.kw) + j;
                            acc += gy[comptime!(s.offsets.0) + gi] * wt[comptime!(s.offsets.1) + wi];
                        }
                    }
                }
            }
        }
        gx[comptime!(s.offsets.2) + pos] = acc;
    }
}

/// Units per cube in the weight gradient (a power of two): each weight element's sum over
/// batch and positions is split across them and combined in shared memory, which keeps the
/// loop each unit runs short.
pub const GRAD_WEIGHT_UNITS: usize = 256;

/// Term `t` (over batch and output positions) of the weight gradient's sum for weight
/// element `(o, c, i, j)`: `gy[n,o,oy,ox] * x[n,c,oy*sh+i-ph,ox*sw+j-pw]`, 0 in the padding.
#[cube]
#[allow(clippy::too_many_arguments)]
fn grad_weight_term(x: &Array<f32>, gy: &Array<f32>, o: usize, c: usize, i: usize, j: usize, t: usize, #[comptime] s: WindowSpec) -> f32 {
    let ox = t % comptime!(s.wo);
    let oy = (t / comptime!(s.wo)) % comptime!(s.ho);
    let n = t / comptime!(s.wo * s.ho);
    let yy = oy * comptime!(s.sh) + i;
    let xx = ox * comptime!(s.sw) + j;
    let mut v = 0.0f32;
    if yy >= comptime!(s.ph) && xx >= comptime!(s.pw) && yy < comptime!(s.h + s.ph) && xx < comptime!(s.w + s.pw) {
        let xi = ((n * comptime!(s.c) + c) * comptime!(s.h) + (yy - comptime!(s.ph))) * comptime!(s.w) + (xx - comptime!(s.pw));
        let gi = ((n * comptime!(s.o) + o) * comptime!(s.ho) + oy) * comptime!(s.wo) + ox;
        v = gy[comptime!(s.offsets.1) + gi] * x[comptime!(s.offsets.0) + xi];
    }
    v
}

/// `gw[o,c,i,j] = sum_{n,oy,ox} gy[n,o,oy,ox] * x[n,c,oy*sh+i-ph,ox*sw+j-pw]`, one cube per
/// weight element.
#[cube(launch)]
pub fn conv2d_grad_weight(x: &Array<f32>, gy: &Array<f32>, gw: &mut Array<f32>, #[comptime] s: WindowSpec) {
    let pos = CUBE_POS;
    let tid = UNIT_POS as usize;
    let j = pos % comptime!(s.kw);
    let i = (pos / comptime!(s.kw)) % comptime!(s.kh);
    let c = (pos / comptime!(s.kw * s.kh)) % comptime!(s.c);
    let o = pos / comptime!(s.kw * s.kh * s.c);
    let mut acc = 0.0f32;
    let mut t = tid;
    while t < comptime!(s.n * s.ho * s.wo) {
        if o < comptime!(s.o) {
            acc += grad_weight_term(x, gy, o, c, i, j, t, s);
        }
        t += comptime!(GRAD_WEIGHT_UNITS);
    }
    let mut smem = SharedMemory::<f32>::new(GRAD_WEIGHT_UNITS);
    smem[tid] = acc;
    sync_cube();
    #[unroll]
    for k in 0..comptime!(GRAD_WEIGHT_UNITS.trailing_zeros() as usize) {
        let half = comptime!(GRAD_WEIGHT_UNITS >> (k + 1));
        if tid < half {
            smem[tid] = smem[tid] + smem[tid + half];
        }
        sync_cube();
    }
    if tid == 0 && pos < comptime!(s.o * s.c * s.kh * s.kw) {
        gw[comptime!(s.offsets.2) + pos] = smem[0];
    }
}

/// Below this many terms per weight element, one unit computes one element (a cube per
/// element would spend its time in barriers).
pub const GRAD_WEIGHT_CUBE_MIN: usize = 1024;

/// Whether the weight gradient of `s` uses a cube per element.
pub fn grad_weight_per_cube(s: &WindowSpec) -> bool {
    s.n * s.ho * s.wo >= GRAD_WEIGHT_CUBE_MIN
}

/// The same sum as [`conv2d_grad_weight`], one unit per weight element (short sums).
#[cube(launch)]
pub fn conv2d_grad_weight_unit(x: &Array<f32>, gy: &Array<f32>, gw: &mut Array<f32>, #[comptime] s: WindowSpec) {
    let pos = ABSOLUTE_POS;
    if pos < comptime!(s.o * s.c * s.kh * s.kw) {
        let j = pos % comptime!(s.kw);
        let i = (pos / comptime!(s.kw)) % comptime!(s.kh);
        let c = (pos / comptime!(s.kw * s.kh)) % comptime!(s.c);
        let o = pos / comptime!(s.kw * s.kh * s.c);
        let mut acc = 0.0f32;
        for t in 0..comptime!(s.n * s.ho * s.wo) {
            acc += grad_weight_term(x, gy, o, c, i, j, t, s);
        }
        gw[comptime!(s.offsets.2) + pos] = acc;
    }
}

/// The flat input index (within image-channel plane `nc`) of window (oy, ox)'s first maximum.
#[cube]
fn window_argmax(x: &Array<f32>, nc: usize, oy: usize, ox: usize, #[comptime] s: WindowSpec) -> usize {
    // Start from the window's first element inside the image (padding is at most half the
    // window, so there is one); WGSL has no infinite literals to start from.
    let y0 = max(oy * comptime!(s.sh), comptime!(s.ph)) - comptime!(s.ph);
    let x0 = max(ox * comptime!(s.sw), comptime!(s.pw)) - comptime!(s.pw);
    let mut at = (nc * comptime!(s.h) + y0) * comptime!(s.w) + x0;
    let mut best = x[comptime!(s.offsets.0) + at];
    for i in 0..comptime!(s.kh) {
        for j in 0..comptime!(s.kw) {
            let yy = oy * comptime!(s.sh) + i;
            let xx = ox * comptime!(s.sw) + j;
            if yy >= comptime!(s.ph) && xx >= comptime!(s.pw) && yy < comptime!(s.h + s.ph) && xx < comptime!(s.w + s.pw) {
                let k = (nc * comptime!(s.h) + (yy - comptime!(s.ph))) * comptime!(s.w) + (xx - comptime!(s.pw));
                let v = x[comptime!(s.offsets.0) + k];
                let better = v > best;
                at = select(better, k, at);
                best = select(better, v, best);
            }
        }
    }
    at
}

/// Max pooling.
#[cube(launch)]
pub fn max_pool2d(x: &Array<f32>, y: &mut Array<f32>, #[comptime] s: WindowSpec) {
    let pos = ABSOLUTE_POS;
    if pos < comptime!(s.n * s.c * s.ho * s.wo) {
        let ox = pos % comptime!(s.wo);
        let oy = (pos / comptime!(s.wo)) % comptime!(s.ho);
        let nc = pos / comptime!(s.wo * s.ho);
        let k = window_argmax(x, nc, oy, ox, s);
        y[comptime!(s.offsets.2) + pos] = x[comptime!(s.offsets.0) + k];
    }
}

/// `v` gathered at each window's first maximum of `x` (the adjoint of the pooling gradient).
#[cube(launch)]
pub fn max_pool2d_gather(x: &Array<f32>, v: &Array<f32>, y: &mut Array<f32>, #[comptime] s: WindowSpec) {
    let pos = ABSOLUTE_POS;
    if pos < comptime!(s.n * s.c * s.ho * s.wo) {
        let ox = pos % comptime!(s.wo);
        let oy = (pos / comptime!(s.wo)) % comptime!(s.ho);
        let nc = pos / comptime!(s.wo * s.ho);
        let k = window_argmax(x, nc, oy, ox, s);
        y[comptime!(s.offsets.2) + pos] = v[comptime!(s.offsets.1) + k];
    }
}

/// `gx[k] = sum of gy over the windows whose first maximum is k` (no atomics: each input
/// element visits the windows that contain it).
#[cube(launch)]
pub fn max_pool2d_grad(x: &Array<f32>, gy: &Array<f32>, gx: &mut Array<f32>, #[comptime] s: WindowSpec) {
    let pos = ABSOLUTE_POS;
    if pos < comptime!(s.n * s.c * s.h * s.w) {
        let xw = pos % comptime!(s.w);
        let xh = (pos / comptime!(s.w)) % comptime!(s.h);
        let nc = pos / comptime!(s.w * s.h);
        let mut acc = 0.0f32;
        for i in 0..comptime!(s.kh) {
            for j in 0..comptime!(s.kw) {
                let ty = xh + comptime!(s.ph);
                let tx = xw + comptime!(s.pw);
                if ty >= i && tx >= j {
                    let dy = ty - i;
                    let dx = tx - j;
                    if dy % comptime!(s.sh) == 0 && dx % comptime!(s.sw) == 0 && dy / comptime!(s.sh) < comptime!(s.ho) && dx / comptime!(s.sw) < comptime!(s.wo) {
                        let oy = dy / comptime!(s.sh);
                        let ox = dx / comptime!(s.sw);
                        let k = window_argmax(x, nc, oy, ox, s);
                        if k == nc * comptime!(s.h * s.w) + xh * comptime!(s.w) + xw {
                            acc += gy[comptime!(s.offsets.1) + (nc * comptime!(s.ho) + oy) * comptime!(s.wo) + ox];
                        }
                    }
                }
            }
        }
        gx[comptime!(s.offsets.2) + pos] = acc;
    }
}

/// Average pooling (padding counted).
#[cube(launch)]
pub fn avg_pool2d(x: &Array<f32>, y: &mut Array<f32>, #[comptime] s: WindowSpec) {
    let pos = ABSOLUTE_POS;
    if pos < comptime!(s.n * s.c * s.ho * s.wo) {
        let ox = pos % comptime!(s.wo);
        let oy = (pos / comptime!(s.wo)) % comptime!(s.ho);
        let nc = pos / comptime!(s.wo * s.ho);
        let mut acc = 0.0f32;
        for i in 0..comptime!(s.kh) {
            for j in 0..comptime!(s.kw) {
                let yy = oy * comptime!(s.sh) + i;
                let xx = ox * comptime!(s.sw) + j;
                if yy >= comptime!(s.ph) && xx >= comptime!(s.pw) && yy < comptime!(s.h + s.ph) && xx < comptime!(s.w + s.pw) {
                    acc += x[comptime!(s.offsets.0) + (nc * comptime!(s.h) + (yy - comptime!(s.ph))) * comptime!(s.w) + (xx - comptime!(s.pw))];
                }
            }
        }
        y[comptime!(s.offsets.2) + pos] = acc / f32::cast_from(comptime!(s.kh * s.kw));
    }
}

/// The adjoint of average pooling.
#[cube(launch)]
pub fn avg_pool2d_grad(gy: &Array<f32>, gx: &mut Array<f32>, #[comptime] s: WindowSpec) {
    let pos = ABSOLUTE_POS;
    if pos < comptime!(s.n * s.c * s.h * s.w) {
        let xw = pos % comptime!(s.w);
        let xh = (pos / comptime!(s.w)) % comptime!(s.h);
        let nc = pos / comptime!(s.w * s.h);
        let mut acc = 0.0f32;
        for i in 0..comptime!(s.kh) {
            for j in 0..comptime!(s.kw) {
                let ty = xh + comptime!(s.ph);
                let tx = xw + comptime!(s.pw);
                if ty >= i && tx >= j {
                    let dy = ty - i;
                    let dx = tx - j;
                    if dy % comptime!(s.sh) == 0 && dx % comptime!(s.sw) == 0 && dy / comptime!(s.sh) < comptime!(s.ho) && dx / comptime!(s.sw) < comptime!(s.wo) {
                        acc += gy[comptime!(s.offsets.1) + (nc * comptime!(s.ho) + dy / comptime!(s.sh)) * comptime!(s.wo) + dx / comptime!(s.sw)];
                    }
                }
            }
        }
        gx[comptime!(s.offsets.2) + pos] = acc / f32::cast_from(comptime!(s.kh * s.kw));
    }
}
