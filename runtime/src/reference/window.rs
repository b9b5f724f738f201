//! Convolution (im2col + gemm) and pooling in the reference interpreter, NCHW layout.

use super::layout::gemm;
use plateau_compiler::ir::{Conv2dAttrs, PoolAttrs};

/// Geometry of one sliding-window op.
#[derive(Clone, Copy)]
pub struct Window {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Window {
    pub fn conv(x: &[usize], k: [usize; 2], a: &Conv2dAttrs, out_hw: [usize; 2]) -> Self {
        Window {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            kh: k[0],
            kw: k[1],
            sh: a.stride[0],
            sw: a.stride[1],
            ph: a.padding[0],
            pw: a.padding[1],
            ho: out_hw[0],
            wo: out_hw[1],
        }
    }

    pub fn pool(x: &[usize], a: &PoolAttrs, out_hw: [usize; 2]) -> Self {
        Self::conv(x, a.kernel, &Conv2dAttrs { stride: a.stride, padding: a.padding }, out_hw)
    }

    /// The input position under window offset (i, j) of output (oy, ox), if not padding.
    fn at(&self, oy: usize, ox: usize, i: usize, j: usize) -> Option<(usize, usize)> {
        let y = (oy * self.sh + i).checked_sub(self.ph)?;
        let x = (ox * self.sw + j).checked_sub(self.pw)?;
        (y < self.h && x < self.w).then_some((y, x))
    }

    fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn hw_out(&self) -> usize {
        self.ho * self.wo
    }

    /// Columns `[C*KH*KW, HO*WO]` of image `img`.
    fn im2col(&self, x: &[f64], img: usize) -> Vec<f64> {
        let mut cols = vec![0.0; self.ckk() * self.hw_out()];
        let base = img * self.c * self.h * self.w;
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = (c * self.kh + i) * self.kw + j;
                    for oy in 0..self.ho {
                        for ox in 0..self.wo {
                            if let Some((y, xx)) = self.at(oy, ox, i, j) {
                                cols[row * self.hw_out() + oy * self.wo + ox] = x[base + (c * self.h + y) * self.w + xx];
                            }
                        }
                    }
                }
            }
        }
        cols
    }

    fn col2im(&self, cols: &[f64], out: &mut [f64], img: usize) {
        let base = img * self.c * self.h * self.w;
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = (c * self.kh + i) * self.kw + j;
                    for oy in 0..self.ho {
                        for ox in 0..self.wo {
                            if let Some((y, xx)) = self.at(oy, ox, i, j) {
                                out[base + (c * self.h + y) * self.w + xx] += cols[row * self.hw_out() + oy * self.wo + ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y[n] = W[O, CKK] @ cols(x[n])`.
pub fn conv2d(x: &[f64], w: &[f64], win: &Window, o: usize) -> Vec<f64> {
    let (ckk, hwo) = (win.ckk(), win.hw_out());
    let mut y = vec![0.0; win.n * o * hwo];
    for img in 0..win.n {
        let cols = win.im2col(x, img);
        gemm(o, ckk, hwo, w, (ckk as isize, 1), &cols, (hwo as isize, 1), 0.0, &mut y[img * o * hwo..(img + 1) * o * hwo]);
    }
    y
}

/// `gx[n] = col2im(W^T @ gy[n])`; `win` describes the forward convolution.
pub fn conv2d_grad_input(gy: &[f64], w: &[f64], win: &Window, o: usize) -> Vec<f64> {
    let (ckk, hwo) = (win.ckk(), win.hw_out());
    let mut gx = vec![0.0; win.n * win.c * win.h * win.w];
    let mut cols = vec![0.0; ckk * hwo];
    for img in 0..win.n {
        let g = &gy[img * o * hwo..(img + 1) * o * hwo];
        gemm(ckk, o, hwo, w, (1, ckk as isize), g, (hwo as isize, 1), 0.0, &mut cols);
        win.col2im(&cols, &mut gx, img);
    }
    gx
}

/// `gw = sum_n gy[n] @ cols(x[n])^T`.
pub fn conv2d_grad_weight(x: &[f64], gy: &[f64], win: &Window, o: usize) -> Vec<f64> {
    let (ckk, hwo) = (win.ckk(), win.hw_out());
    let mut gw = vec![0.0; o * ckk];
    for img in 0..win.n {
        let cols = win.im2col(x, img);
        let g = &gy[img * o * hwo..(img + 1) * o * hwo];
        gemm(o, hwo, ckk, g, (hwo as isize, 1), &cols, (1, hwo as isize), 1.0, &mut gw);
    }
    gw
}

/// For every pooled output, the flat input index of its window's first maximum
/// (`None` for a window lying entirely in padding, which pooling rules out).
fn argmax(x: &[f64], win: &Window) -> Vec<usize> {
    let mut idx = Vec::with_capacity(win.n * win.c * win.hw_out());
    for nc in 0..win.n * win.c {
        let base = nc * win.h * win.w;
        for oy in 0..win.ho {
            for ox in 0..win.wo {
                let mut best: Option<(usize, f64)> = None;
                for i in 0..win.kh {
                    for j in 0..win.kw {
                        if let Some((y, xx)) = win.at(oy, ox, i, j) {
                            let k = base + y * win.w + xx;
                            if best.is_none_or(|(_, b)| x[k] > b) {
                                best = Some((k, x[k]));
                            }
                        }
                    }
                }
                idx.push(best.expect("invariant: pooling padding is at most half the window").0);
            }
        }
    }
    idx
}

pub fn max_pool2d(x: &[f64], win: &Window) -> Vec<f64> {
    argmax(x, win).into_iter().map(|k| x[k]).collect()
}

pub fn max_pool2d_grad(x: &[f64], gy: &[f64], win: &Window) -> Vec<f64> {
    let mut gx = vec![0.0; x.len()];
    for (o, k) in argmax(x, win).into_iter().enumerate() {
        gx[k] += gy[o];
    }
    gx
}

pub fn max_pool2d_gather(x: &[f64], v: &[f64], win: &Window) -> Vec<f64> {
    argmax(x, win).into_iter().map(|k| v[k]).collect()
}

pub fn avg_pool2d(x: &[f64], win: &Window) -> Vec<f64> {
    let area = (win.kh * win.kw) as f64;
    let mut y = Vec::with_capacity(win.n * win.c * win.hw_out());
    for nc in 0..win.n * win.c {
        let base = nc * win.h * win.w;
        for oy in 0..win.ho {
            for ox in 0..win.wo {
                let mut s = 0.0;
                for i in 0..win.kh {
                    for j in 0..win.kw {
                        if let Some((yy, xx)) = win.at(oy, ox, i, j) {
                            s += x[base + yy * win.w + xx];
                        }
                    }
                }
                y.push(s / area);
            }
        }
    }
    y
}

pub fn avg_pool2d_grad(gy: &[f64], win: &Window) -> Vec<f64> {
    let area = (win.kh * win.kw) as f64;
    let mut gx = vec![0.0; win.n * win.c * win.h * win.w];
    for nc in 0..win.n * win.c {
        let base = nc * win.h * win.w;
        for oy in 0..win.ho {
            for ox in 0..win.wo {
                let g = gy[(nc * win.ho + oy) * win.wo + ox] / area;
                for i in 0..win.kh {
                    for j in 0..win.kw {
                        if let Some((yy, xx)) = win.at(oy, ox, i, j) {
                            gx[base + yy * win.w + xx] += g;
                        }
                    }
                }
            }
        }
    }
    gx
}
