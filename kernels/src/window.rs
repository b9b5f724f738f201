//! Sliding-window kernels over NCHW tensors: max and average pooling and their adjoints, one
//! unit per output element (the max-pool gradient: one per window where the windows tile the
//! input). `WindowSpec` also describes convolutions, which run as implicit GEMMs (`gemm`).

use crate::elementwise::store_with_epilogue;
use crate::program::KernelProgram;
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

impl WindowSpec {
    /// Whether the windows tile the input: every input element lies in exactly one window
    /// (windows as large as their stride, no padding, none left over at the edges), as in
    /// the usual 2x2 pooling of stride 2 over an even side.
    pub fn tiles(&self) -> bool {
        self.kh == self.sh && self.kw == self.sw && self.ph == 0 && self.pw == 0 && self.ho * self.sh == self.h && self.wo * self.sw == self.w
    }

    /// Units a max-pool gradient launches: one per window where the windows tile the input
    /// (each writes its window's elements), else one per input element (each visits the
    /// windows that hold it).
    pub fn max_pool_grad_units(&self) -> usize {
        if self.tiles() {
            self.n * self.c * self.ho * self.wo
        } else {
            self.n * self.c * self.h * self.w
        }
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
#[cube(launch_unchecked)]
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
#[cube(launch_unchecked)]
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

/// `gx[k] = sum of gy over the windows whose first maximum is k`, stored with an epilogue
/// when `epi` is one (see `crate::elementwise::store_with_epilogue`; without one, both
/// sequences are empty). No atomics: where the windows tile the input (`WindowSpec::tiles`)
/// each unit finds one window's maximum once and writes the window's elements (`gy` at the
/// maximum, 0 elsewhere); otherwise each input element visits the windows that contain it.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_grad<N: Size>(
    x: &Array<f32>,
    gy: &Array<f32>,
    gx: &mut Array<f32>,
    epi_in: &Sequence<Array<Vector<f32, N>>>,
    epi_out: &mut Sequence<Array<Vector<f32, N>>>,
    #[comptime] s: WindowSpec,
    #[comptime] epi: Option<KernelProgram>,
    #[comptime] store: bool,
) {
    let pos = ABSOLUTE_POS;
    if comptime!(s.tiles()) {
        if pos < comptime!(s.n * s.c * s.ho * s.wo) {
            let ox = pos % comptime!(s.wo);
            let oy = (pos / comptime!(s.wo)) % comptime!(s.ho);
            let nc = pos / comptime!(s.wo * s.ho);
            let k = window_argmax(x, nc, oy, ox, s);
            // 0 + gy, as the sum over the one window would give (+0 for a gradient of -0).
            let g = 0.0f32 + gy[comptime!(s.offsets.1) + pos];
            #[unroll]
            for i in 0..comptime!(s.kh) {
                #[unroll]
                for j in 0..comptime!(s.kw) {
                    let at = (nc * comptime!(s.h) + oy * comptime!(s.sh) + i) * comptime!(s.w) + ox * comptime!(s.sw) + j;
                    store_with_epilogue::<N>(gx, epi_in, epi_out, at, select(at == k, g, 0.0f32), comptime!(s.offsets.2), epi.clone(), store);
                }
            }
        }
    } else {
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
            store_with_epilogue::<N>(gx, epi_in, epi_out, pos, acc, comptime!(s.offsets.2), epi, store);
        }
    }
}

/// Average pooling (padding counted).
#[cube(launch_unchecked)]
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
#[cube(launch_unchecked)]
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
