//! One register-blocked GEMM kernel for the matmul and the three convolutions.
//!
//! `out[r, c] = sum_k A[r, k] * B[k, c]`, where `A`, `B` and `out` are not plain matrices but
//! addressing schemes over the flat buffers:
//! - [`Gather::Strided`]: element `(i, j)` at `offset + split(i) + split(j)`, each index split
//!   into (quotient, remainder) by a divisor with a stride each. This covers row-major and
//!   transposed matrices, NCHW activations viewed as `[channel, batch * position]`, and the
//!   convolution weight viewed as `[in_channel, (out_channel, tap)]`.
//! - [`Gather::Im2col`]: the input of a convolution as its im2col matrix, never materialized:
//!   element `(q, t)` with `q = (c, i, j)` a channel and kernel tap and `t = (n, oy, ox)` an
//!   output position is `x[n, c, oy*sh+i-ph, ox*sw+j-pw]`, 0 in the padding.
//! - [`Gather::ConvTranspose`]: the output gradient seen by the input gradient: element
//!   `(q, t)` with `q = (o, i, j)` and `t = (n, h, w)` is `gy[n, o, (h+ph-i)/sh, (w+pw-j)/sw]`
//!   where that is a whole output position, else 0.
//!
//! So the convolution is `y[o, (n,p)] = W[o, (c,i,j)] x im2col(x)`, its input gradient
//! `gx[c, (n,h,w)] = W'[c, (o,i,j)] x gather(gy)` and its weight gradient
//! `gw[o, (c,i,j)] = gy[o, (n,p)] x im2col(x)^T`: implicit GEMMs.
//!
//! A strided convolution's input gradient runs by phases ([`Phased`]) where
//! `plateau_compiler::schedule::gemm::grad_input_phased` says so: its columns are the input
//! pixels grouped by `((h+ph) mod sh, (w+pw) mod sw)`, each group padded to whole tiles, and a
//! tile's k range holds only the taps that reach its phase, as `(tap, o)` with `o` fastest.
//!
//! Each cube computes a `16*rm x 16*rn` output tile, each of its units a block of it in
//! registers, in the layout the device runs best ([`GemmLayout`]: `16 x 16` units of `rm x
//! rn` scalars on a GPU, fewer units of 4-wide vectors on a CPU); the k dimension is walked
//! 16 at a time through shared memory. Larger blocks mean fewer barriers and
//! shared-memory reads per multiply-add. A GEMM with few tiles and a long k range is split
//! into k slices, each written to a workspace, then summed by [`gemm_reduce`].
//!
//! [`gemm`] may also evaluate a fused elementwise program on each output as it is stored (its
//! epilogue: a layer's bias and activation), at the output's element index, with the output's
//! value as its operand 0; split, [`gemm_reduce`] does so in the sum of the slices. Block sizes
//! and splits follow `plateau_compiler::schedule::gemm`, which the memory plan also uses.

use crate::elementwise::store_with_epilogue;
use crate::program::KernelProgram;
use crate::window::WindowSpec;
use cubecl::prelude::*;
use plateau_compiler::schedule::gemm::{gemm_block, gemm_split, grad_input_phased};

/// The side of an output tile in register blocks (a tile is `16*rm x 16*rn`), the units
/// along each side of a cube in the GPU layout, and the k-depth of one shared-memory stage.
pub use plateau_compiler::schedule::gemm::GEMM_SIDE;

/// One index of a [`Gather::Strided`] operand: `(i / div) * hi + (i % div) * lo`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Split {
    pub div: usize,
    pub hi: usize,
    pub lo: usize,
}

impl Split {
    /// A plain stride.
    pub fn stride(s: usize) -> Split {
        Split { div: 1, hi: s, lo: 0 }
    }
    /// Whether consecutive indices are consecutive elements.
    fn unit(&self) -> bool {
        if self.div == 1 { self.hi == 1 } else { self.lo == 1 }
    }
}

/// How an operand's `(row, column)` maps to its buffer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Gather {
    Strided { offset: usize, row: Split, col: Split },
    /// The im2col matrix of the convolution input (offset `w.offsets.0`); rows are
    /// `(c, i, j)` unless `transposed`, when rows are `(n, oy, ox)`.
    Im2col { w: WindowSpec, transposed: bool },
    /// The output gradient as the input gradient reads it (offset `w.offsets.0`).
    ConvTranspose { w: WindowSpec },
}

impl Gather {
    /// Whether consecutive rows (`true`) or consecutive columns (`false`) sit closer in
    /// memory: loads walk that index fastest.
    fn rows_contiguous(&self) -> bool {
        match self {
            Gather::Strided { row, .. } => row.unit(),
            Gather::Im2col { transposed, .. } => *transposed,
            Gather::ConvTranspose { .. } => false,
        }
    }
}

/// A strided convolution's input gradient by phases: column `phase * cols + t` of the GEMM
/// is input pixel `t = (n, u, v)` of phase `(a, b) = (phase / sw, phase % sw)`, at
/// `h = h0(a) + sh*u`, `w = w0(b) + sw*v` with `h0(a)` the first row with
/// `(h + ph) mod sh = a`; columns past a phase's pixels, or outside the image, are skipped.
/// Its k index is `(tap, o)`: stage `t` covers output channels `(16t mod o) ..+16` of tap
/// `16t / o` of the phase's taps `(a + sh*alpha, b + sw*beta)`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Phased {
    /// The convolution (offsets: gy, w, gx).
    pub w: WindowSpec,
    /// Pixel rows and columns of a phase: `ceil(h / sh)`, `ceil(w / sw)`.
    pub hc: usize,
    pub wc: usize,
    /// Columns per phase: `n * hc * wc` rounded up to whole tiles.
    pub cols: usize,
}

/// How a device runs a GEMM's tile (see [`GemmSpec::with_layout`]); the tiles, their k
/// slices, and so the launches, workspaces and every output bit, are the same either way.
///
/// - `Gpu`: a cube of `16 x 16` units, each computing a `rm x rn` block (rows `ty + 16*a`,
///   columns `tx + 16*b`) from scalar stages whose rows are padded against bank conflicts;
///   every loop of a stage unrolled.
/// - `Cpu`: a cube of `4rm x 2rn` units, each computing 4 rows by 8 columns (rows `4ty` to
///   `4ty+3`, columns `4(tx + 2rn*b)` to `4(tx + 2rn*b)+3` for b = 0, 1) from stages and into
///   accumulators of 4-wide vectors, its loops along a stage not unrolled. A CPU Vulkan driver (Mesa's
///   lavapipe) runs a cube's units as the lanes of SIMD registers, a batch of lanes after
///   another between barriers, and each unit's load from a stage as a gather: vector loads
///   make a quarter of the gathers, and the wider units fewer of them per multiply-add.
///   On lavapipe (`examples/gemm_bench.rs`) this runs the GEMMs 2.2-2.6 times as fast as
///   `Gpu` (7-8 GFLOP/s against 3-3.6), and compiles them faster. Larger units were faster
///   still (16 x 16: 10-14 GFLOP/s, as fast as cubek's `SimpleUnit`) but take the driver
///   seconds per kernel to compile (`plateau run --model mlp --device wgpu`: 43 s, nearly all
///   of it compiling, against 4).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Default)]
pub enum GemmLayout {
    #[default]
    Gpu,
    Cpu,
}

/// Shapes, block sizes and addressing of one GEMM.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct GemmSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// The tile: a cube computes `16*rm x 16*rn` outputs.
    pub rm: usize,
    pub rn: usize,
    /// How the device runs the tile ([`GemmSpec::with_layout`]): a cube of `side_m x side_n`
    /// units, each computing a `16*rm/side_m x 16*rn/side_n` block in registers, from stages
    /// and into accumulators of `vector`-wide vectors (1, or 4 along the tile's rows and
    /// columns).
    pub side_m: usize,
    pub side_n: usize,
    pub vector: usize,
    pub a: Gather,
    pub b: Gather,
    /// The output, `Strided` (the only scheme that is written).
    pub out_offset: usize,
    pub out_row: Split,
    pub out_col: Split,
    /// Load order of each stage: A's tile walks its rows fastest; B's tile its k-rows fastest.
    pub a_rows_fast: bool,
    pub b_rows_fast: bool,
    /// K slices (1: none). Slice `s` writes its `m x n` partial product row-major at
    /// `workspace + s * m * n` of the workspace buffer.
    pub split: usize,
    pub workspace: usize,
    /// A strided convolution's input gradient by phases: then `a` is the weight, `b` the
    /// output gradient and the output the input gradient, all addressed through it.
    pub phased: Option<Phased>,
}

impl GemmSpec {
    /// A GEMM of `out[m, n] = A[m, k] x B[k, n]` with blocks chosen from the shape.
    pub fn new(m: usize, n: usize, k: usize, a: Gather, b: Gather, out_offset: usize, out_row: Split, out_col: Split) -> GemmSpec {
        GemmSpec {
            m,
            n,
            k,
            rm: gemm_block(m),
            rn: gemm_block(n),
            side_m: GEMM_SIDE,
            side_n: GEMM_SIDE,
            vector: 1,
            a,
            b,
            out_offset,
            out_row,
            out_col,
            a_rows_fast: a.rows_contiguous(),
            b_rows_fast: b.rows_contiguous(),
            split: gemm_split(m, n, k),
            workspace: 0,
            phased: None,
        }
    }

    /// The GEMM as a device of `layout` runs it (the same tiles, k slices and results).
    pub fn with_layout(mut self, layout: GemmLayout) -> GemmSpec {
        (self.side_m, self.side_n, self.vector) = match layout {
            GemmLayout::Gpu => (GEMM_SIDE, GEMM_SIDE, 1),
            // Units of 4 rows and 2 vectors of 4 columns.
            GemmLayout::Cpu => (GEMM_SIDE * self.rm / 4, GEMM_SIDE * self.rn / 8, 4),
        };
        self
    }

    /// Elements of the workspace after its offset (0 when not split).
    pub fn workspace_len(&self) -> usize {
        if self.split > 1 { self.split * self.m * self.n } else { 0 }
    }

    /// Rows and columns of one cube's output tile.
    pub fn tile(&self) -> (usize, usize) {
        (GEMM_SIDE * self.rm, GEMM_SIDE * self.rn)
    }

    /// Cubes the GEMM launch needs (one per output tile and k slice).
    pub fn cubes(&self) -> usize {
        let (bm, bn) = self.tile();
        self.m.div_ceil(bm) * self.n.div_ceil(bn) * self.split
    }

    /// `out = op(a) x op(b)` for row-major `a` (`[m, k]`, or `[k, m]` when `ta`) and `b`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(m: usize, k: usize, n: usize, ta: bool, tb: bool, offsets: (usize, usize, usize)) -> GemmSpec {
        let (ar, ac) = if ta { (1, m) } else { (k, 1) };
        let (br, bc) = if tb { (1, k) } else { (n, 1) };
        let a = Gather::Strided { offset: offsets.0, row: Split::stride(ar), col: Split::stride(ac) };
        let b = Gather::Strided { offset: offsets.1, row: Split::stride(br), col: Split::stride(bc) };
        GemmSpec::new(m, n, k, a, b, offsets.2, Split::stride(n), Split::stride(1))
    }

    /// The convolution `y = conv(x, w)` (offsets: x, w, y).
    pub fn conv2d(s: &WindowSpec) -> GemmSpec {
        let (taps, p) = (s.kh * s.kw, s.ho * s.wo);
        let a = Gather::Strided { offset: s.offsets.1, row: Split::stride(s.c * taps), col: Split::stride(1) };
        let b = Gather::Im2col { w: *s, transposed: false };
        GemmSpec::new(s.o, s.n * p, s.c * taps, a, b, s.offsets.2, Split::stride(p), Split { div: p, hi: s.o * p, lo: 1 })
    }

    /// The input gradient `gx` of a convolution (offsets: gy, w, gx).
    pub fn conv2d_grad_input(s: &WindowSpec) -> GemmSpec {
        let (taps, hw) = (s.kh * s.kw, s.h * s.w);
        if grad_input_phased([s.sh, s.sw], s.o) {
            let (hc, wc) = (s.h.div_ceil(s.sh), s.w.div_ceil(s.sw));
            let rn = gemm_block(s.n * hc * wc);
            let cols = (s.n * hc * wc).next_multiple_of(GEMM_SIDE * rn);
            let mut spec = GemmSpec::new(s.c, s.sh * s.sw * cols, s.o * taps, Gather::Strided { offset: s.offsets.1, row: Split::stride(taps), col: Split::stride(s.c * taps) }, Gather::ConvTranspose { w: *s }, s.offsets.2, Split::stride(hw), Split::stride(1));
            // Tiles must not straddle phases: the block follows one phase's columns.
            spec.rn = rn;
            spec.split = 1;
            // The weight's rows (input channels) sit kh*kw apart, its k (output channels)
            // c*kh*kw apart: loads walk the rows fastest.
            spec.a_rows_fast = true;
            spec.phased = Some(Phased { w: *s, hc, wc, cols });
            return spec;
        }
        let a = Gather::Strided { offset: s.offsets.1, row: Split::stride(taps), col: Split { div: taps, hi: s.c * taps, lo: 1 } };
        let b = Gather::ConvTranspose { w: *s };
        GemmSpec::new(s.c, s.n * hw, s.o * taps, a, b, s.offsets.2, Split::stride(hw), Split { div: hw, hi: s.c * hw, lo: 1 })
    }

    /// The weight gradient `gw` of a convolution (offsets: x, gy, gw).
    pub fn conv2d_grad_weight(s: &WindowSpec) -> GemmSpec {
        let (taps, p) = (s.kh * s.kw, s.ho * s.wo);
        let a = Gather::Strided { offset: s.offsets.1, row: Split::stride(p), col: Split { div: p, hi: s.o * p, lo: 1 } };
        let b = Gather::Im2col { w: *s, transposed: true };
        GemmSpec::new(s.o, s.c * taps, s.n * p, a, b, s.offsets.2, Split::stride(s.c * taps), Split::stride(1))
    }
}

#[cube]
fn split_index(i: usize, #[comptime] s: Split) -> usize {
    if comptime!(s.div == 1) { i * comptime!(s.hi) } else { (i / comptime!(s.div)) * comptime!(s.hi) + (i % comptime!(s.div)) * comptime!(s.lo) }
}

/// `x[n, c, oy*sh+i-ph, ox*sw+j-pw]` for `q = (c, i, j)` and `t = (n, oy, ox)`; 0 in the padding.
#[cube]
fn im2col(x: &Array<f32>, q: usize, t: usize, #[comptime] s: WindowSpec) -> f32 {
    let j = q % comptime!(s.kw);
    let i = (q / comptime!(s.kw)) % comptime!(s.kh);
    let c = q / comptime!(s.kw * s.kh);
    let ox = t % comptime!(s.wo);
    let oy = (t / comptime!(s.wo)) % comptime!(s.ho);
    let n = t / comptime!(s.wo * s.ho);
    let yy = oy * comptime!(s.sh) + i;
    let xx = ox * comptime!(s.sw) + j;
    let mut v = 0.0f32;
    if yy >= comptime!(s.ph) && xx >= comptime!(s.pw) && yy < comptime!(s.h + s.ph) && xx < comptime!(s.w + s.pw) {
        v = x[comptime!(s.offsets.0) + ((n * comptime!(s.c) + c) * comptime!(s.h) + (yy - comptime!(s.ph))) * comptime!(s.w) + (xx - comptime!(s.pw))];
    }
    v
}

/// `gy[n, o, (h+ph-i)/sh, (w+pw-j)/sw]` for `q = (o, i, j)` and `t = (n, h, w)` where that is
/// a whole output position, else 0.
#[cube]
fn conv_transpose(gy: &Array<f32>, q: usize, t: usize, #[comptime] s: WindowSpec) -> f32 {
    let j = q % comptime!(s.kw);
    let i = (q / comptime!(s.kw)) % comptime!(s.kh);
    let o = q / comptime!(s.kw * s.kh);
    let xw = t % comptime!(s.w);
    let xh = (t / comptime!(s.w)) % comptime!(s.h);
    let n = t / comptime!(s.w * s.h);
    let ty = xh + comptime!(s.ph);
    let tx = xw + comptime!(s.pw);
    let mut v = 0.0f32;
    if ty >= i && tx >= j {
        let dy = ty - i;
        let dx = tx - j;
        if dy % comptime!(s.sh) == 0 && dx % comptime!(s.sw) == 0 && dy / comptime!(s.sh) < comptime!(s.ho) && dx / comptime!(s.sw) < comptime!(s.wo) {
            v = gy[comptime!(s.offsets.0) + ((n * comptime!(s.o) + o) * comptime!(s.ho) + dy / comptime!(s.sh)) * comptime!(s.wo) + dx / comptime!(s.sw)];
        }
    }
    v
}

/// Element `(r, c)` of an operand (the caller keeps both inside the operand).
#[cube]
fn gather(buf: &Array<f32>, r: usize, c: usize, #[comptime] g: Gather) -> f32 {
    match comptime!(g) {
        Gather::Strided { offset, row, col } => buf[comptime!(offset) + split_index(r, row) + split_index(c, col)],
        Gather::Im2col { w, transposed } => {
            if comptime!(transposed) { im2col(buf, c, r, w) } else { im2col(buf, r, c, w) }
        }
        Gather::ConvTranspose { w } => conv_transpose(buf, r, c, w),
    }
}

/// `w[o, c, i, j]`: the weight as a phased input gradient reads it.
#[cube]
fn phased_weight(w: &Array<f32>, c: usize, o: usize, i: usize, j: usize, #[comptime] ph: Phased) -> f32 {
    let s = comptime!(ph.w);
    w[comptime!(s.offsets.1) + ((o * comptime!(s.c) + c) * comptime!(s.kh) + i) * comptime!(s.kw) + j]
}

/// The input pixel `(n, h, w)` of column `t` of a phase whose pixels start at `(h0, w0)`;
/// `valid` is false past the phase's pixels or outside the image.
#[cube]
fn phased_pixel(t: usize, h0: usize, w0: usize, #[comptime] ph: Phased) -> (usize, usize, usize, bool) {
    let s = comptime!(ph.w);
    let n = t / comptime!(ph.hc * ph.wc);
    let h = h0 + ((t / comptime!(ph.wc)) % comptime!(ph.hc)) * comptime!(s.sh);
    let w = w0 + (t % comptime!(ph.wc)) * comptime!(s.sw);
    (n, h, w, t < comptime!(s.n * ph.hc * ph.wc) && h < comptime!(s.h) && w < comptime!(s.w))
}

/// `gy[n, o, (h+ph-i)/sh, (w+pw-j)/sw]` for column `t` of the phase (whose taps `(i, j)`
/// divide exactly), 0 where that is no output position.
#[cube]
fn phased_grad(gy: &Array<f32>, o: usize, t: usize, i: usize, j: usize, h0: usize, w0: usize, #[comptime] ph: Phased) -> f32 {
    let s = comptime!(ph.w);
    let (n, h, w, valid) = phased_pixel(t, h0, w0, ph);
    let mut v = 0.0f32;
    if valid && h + comptime!(s.ph) >= i && w + comptime!(s.pw) >= j {
        let yy = (h + comptime!(s.ph) - i) / comptime!(s.sh);
        let xx = (w + comptime!(s.pw) - j) / comptime!(s.sw);
        if yy < comptime!(s.ho) && xx < comptime!(s.wo) {
            v = gy[comptime!(s.offsets.0) + ((n * comptime!(s.o) + o) * comptime!(s.ho) + yy) * comptime!(s.wo) + xx];
        }
    }
    v
}

/// Stores the GEMM's output `v` at row `r`, column `c`: into `out` when `store`, and the
/// epilogue's outputs of it, when there is one.
#[cube]
#[allow(clippy::too_many_arguments)]
fn gemm_store<N: Size>(
    out: &mut Array<f32>,
    epi_in: &Sequence<Array<Vector<f32, N>>>,
    epi_out: &mut Sequence<Array<Vector<f32, N>>>,
    r: usize,
    c: usize,
    v: f32,
    #[comptime] s: GemmSpec,
    #[comptime] epi: Option<KernelProgram>,
    #[comptime] store: bool,
) {
    // The output's element index: where the epilogue, over the output's own shape, reads
    // its operands.
    let i = split_index(r, comptime!(s.out_row)) + split_index(c, comptime!(s.out_col));
    store_with_epilogue::<N>(out, epi_in, epi_out, i, v, comptime!(s.out_offset), epi, store);
}

/// `out = A x B` (see the module documentation); cube `slice * tiles + t` computes output
/// tile `t` (row-major over the tiles) over k slice `slice`. Split, `out` is the workspace.
/// With an epilogue `epi`, each output `v` at element `i` of the GEMM's output also stores
/// `epi`'s outputs of `v` (its operand 0) and of its other operands (read from `epi_in` at
/// `i`) into `epi_out`, and `out` is stored only when `store`; split, [`gemm_reduce`] runs the
/// epilogue. Without one, both sequences are empty.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn gemm<N: Size, W: Size>(
    a: &Array<f32>,
    b: &Array<f32>,
    out: &mut Array<f32>,
    epi_in: &Sequence<Array<Vector<f32, N>>>,
    epi_out: &mut Sequence<Array<Vector<f32, N>>>,
    #[comptime] s: GemmSpec,
    #[comptime] epi: Option<KernelProgram>,
    #[comptime] store: bool,
) {
    let bm = comptime!(GEMM_SIDE * s.rm);
    let bn = comptime!(GEMM_SIDE * s.rn);
    let tiles = comptime!(s.m.div_ceil(GEMM_SIDE * s.rm) * s.n.div_ceil(GEMM_SIDE * s.rn));
    let slice = CUBE_POS / tiles;
    let tile = CUBE_POS % tiles;
    let row0 = (tile / comptime!(s.n.div_ceil(GEMM_SIDE * s.rn))) * bm;
    let col0 = (tile % comptime!(s.n.div_ceil(GEMM_SIDE * s.rn))) * bn;
    // This cube's stages of k: all of them, or its slice's.
    let stages = comptime!(s.k.div_ceil(GEMM_SIDE));
    let per_slice = comptime!(s.k.div_ceil(GEMM_SIDE).div_ceil(s.split));
    let mut t_begin = min(slice * per_slice, stages);
    let mut t_end = min(t_begin + per_slice, stages);
    // Phased: the cube's phase (a, b), the first pixel row and column of that phase, the
    // phase's taps along w, its first column, and its k range (taps x output channels).
    let mut pa = 0usize;
    let mut pb = 0usize;
    let mut h0 = 0usize;
    let mut w0 = 0usize;
    let mut taps_w = 1usize;
    let mut pcol0 = col0;
    if comptime!(s.phased.is_some()) {
        let ph = comptime!(s.phased.unwrap());
        let phase = col0 / comptime!(ph.cols);
        pcol0 = col0 - phase * comptime!(ph.cols);
        pa = phase / comptime!(ph.w.sw);
        pb = phase % comptime!(ph.w.sw);
        h0 = (pa + comptime!(ph.w.sh - ph.w.ph % ph.w.sh)) % comptime!(ph.w.sh);
        w0 = (pb + comptime!(ph.w.sw - ph.w.pw % ph.w.sw)) % comptime!(ph.w.sw);
        let mut taps_h = 0usize;
        if pa < comptime!(ph.w.kh) {
            taps_h = (comptime!(ph.w.kh + ph.w.sh - 1) - pa) / comptime!(ph.w.sh);
        }
        taps_w = 0;
        if pb < comptime!(ph.w.kw) {
            taps_w = (comptime!(ph.w.kw + ph.w.sw - 1) - pb) / comptime!(ph.w.sw);
        }
        t_begin = 0;
        t_end = taps_h * taps_w * comptime!(ph.w.o / GEMM_SIDE);
    }
    let unit = UNIT_POS as usize;
    let ty = unit / comptime!(s.side_n);
    let tx = unit % comptime!(s.side_n);
    // Stages hold vectors of `w` consecutive rows of A and columns of B (the tile's `bm/w`
    // and `bn/w` of them); each unit computes `um x unv*w` outputs: its vectors of rows
    // `ty + side_m*i` and of columns `tx + side_n*j`.
    let vw = comptime!(s.vector);
    let (bmv, bnv) = comptime!((GEMM_SIDE * s.rm / s.vector, GEMM_SIDE * s.rn / s.vector));
    let (umv, unv) = comptime!((bmv / s.side_m, bnv / s.side_n));
    let um = comptime!(umv * s.vector);
    // Stage layouts: sa[p][r] and sb[p][c]; in scalars each row is padded by one element so
    // that loads walking p do not hit one bank.
    let pad = comptime!(if s.vector == 1 { 1usize } else { 0usize });
    let sa_row = comptime!(bmv + pad);
    let sb_row = comptime!(bnv + pad);
    let mut sa = SharedMemory::<Vector<f32, W>>::new(comptime!(GEMM_SIDE * (bmv + pad)));
    let mut sb = SharedMemory::<Vector<f32, W>>::new(comptime!(GEMM_SIDE * (bnv + pad)));
    let mut acc = Array::<Vector<f32, W>>::new(comptime!(um * unv));
    #[unroll]
    for e in 0..comptime!(um * unv) {
        acc[e] = Vector::<f32, W>::new(0.0);
    }
    // The stage's loads and its walk along k are unrolled in the GPU layout; a CPU driver
    // compiles the CPU layout's wider units about twice as fast without, for 10% of its speed.
    let unroll = comptime!(s.vector == 1);
    let mut ra = Array::<Vector<f32, W>>::new(umv);
    let mut rb = Array::<Vector<f32, W>>::new(unv);
    for t in t_begin..t_end {
        let k0 = t * comptime!(GEMM_SIDE);
        // Phased: the stage's tap (i, j) and its first output channel (a stage is one tap).
        let mut ti = 0usize;
        let mut tj = 0usize;
        let mut o0 = 0usize;
        if comptime!(s.phased.is_some()) {
            let ph = comptime!(s.phased.unwrap());
            let tap = k0 / comptime!(ph.w.o);
            o0 = k0 % comptime!(ph.w.o);
            ti = pa + (tap / taps_w) * comptime!(ph.w.sh);
            tj = pb + (tap % taps_w) * comptime!(ph.w.sw);
        }
        // A's tile: 16 x bm/w vectors, 16 * bm/w / (side_m * side_n) per unit.
        #[unroll(unroll)]
        for l in 0..comptime!(GEMM_SIDE * bmv / (s.side_m * s.side_n)) {
            let e = l * comptime!(s.side_m * s.side_n) + unit;
            let (rv, p) = if comptime!(s.a_rows_fast) { (e % bmv, e / bmv) } else { (e / comptime!(GEMM_SIDE), e % comptime!(GEMM_SIDE)) };
            let mut v = Vector::<f32, W>::new(0.0);
            #[unroll]
            for q in 0..vw {
                let r = rv * vw + q;
                let mut x = 0.0f32;
                if comptime!(s.phased.is_some()) {
                    if row0 + r < comptime!(s.m) {
                        x = phased_weight(a, row0 + r, o0 + p, ti, tj, comptime!(s.phased.unwrap()));
                    }
                } else {
                    if row0 + r < comptime!(s.m) && k0 + p < comptime!(s.k) {
                        x = gather(a, row0 + r, k0 + p, comptime!(s.a));
                    }
                }
                set_lane::<W>(&mut v, q, x, vw);
            }
            sa[p * sa_row + rv] = v;
        }
        // B's tile: 16 x bn/w vectors, 16 * bn/w / (side_m * side_n) per unit.
        #[unroll(unroll)]
        for l in 0..comptime!(GEMM_SIDE * bnv / (s.side_m * s.side_n)) {
            let e = l * comptime!(s.side_m * s.side_n) + unit;
            let (cv, p) = if comptime!(s.b_rows_fast) { (e / comptime!(GEMM_SIDE), e % comptime!(GEMM_SIDE)) } else { (e % bnv, e / bnv) };
            let mut v = Vector::<f32, W>::new(0.0);
            #[unroll]
            for q in 0..vw {
                let c = cv * vw + q;
                let mut x = 0.0f32;
                if comptime!(s.phased.is_some()) {
                    x = phased_grad(b, o0 + p, pcol0 + c, ti, tj, h0, w0, comptime!(s.phased.unwrap()));
                } else {
                    if k0 + p < comptime!(s.k) && col0 + c < comptime!(s.n) {
                        x = gather(b, k0 + p, col0 + c, comptime!(s.b));
                    }
                }
                set_lane::<W>(&mut v, q, x, vw);
            }
            sb[p * sb_row + cv] = v;
        }
        sync_cube();
        #[unroll(unroll)]
        for p in 0..GEMM_SIDE {
            #[unroll]
            for i in 0..umv {
                ra[i] = sa[p * sa_row + ty + comptime!(i * s.side_m)];
            }
            #[unroll]
            for j in 0..unv {
                rb[j] = sb[p * sb_row + tx + comptime!(j * s.side_n)];
            }
            // Each of the unit's rows times its column vectors.
            #[unroll]
            for i in 0..um {
                let x = Vector::<f32, W>::new(lane::<W>(ra[comptime!(i / s.vector)], comptime!(i % s.vector), vw));
                #[unroll]
                for j in 0..unv {
                    acc[comptime!(i * unv + j)] += x * rb[j];
                }
            }
        }
        sync_cube();
    }
    #[unroll]
    for i in 0..um {
        #[unroll]
        for j in 0..comptime!(unv * s.vector) {
            let r = row0 + (ty + comptime!((i / s.vector) * s.side_m)) * vw + comptime!(i % s.vector);
            let cc = (tx + comptime!((j / s.vector) * s.side_n)) * vw + comptime!(j % s.vector);
            let c = col0 + cc;
            let v = lane::<W>(acc[comptime!(i * unv + j / s.vector)], comptime!(j % s.vector), vw);
            if comptime!(s.phased.is_some()) {
                let ph = comptime!(s.phased.unwrap());
                let (n, h, w, valid) = phased_pixel(pcol0 + cc, h0, w0, ph);
                if r < comptime!(s.m) && valid {
                    out[comptime!(ph.w.offsets.2) + ((n * comptime!(ph.w.c) + r) * comptime!(ph.w.h) + h) * comptime!(ph.w.w) + w] = v;
                }
            } else if r < comptime!(s.m) && c < comptime!(s.n) && slice < comptime!(s.split) {
                if comptime!(s.split > 1) {
                    out[comptime!(s.workspace) + slice * comptime!(s.m * s.n) + r * comptime!(s.n) + c] = v;
                } else {
                    gemm_store::<N>(out, epi_in, epi_out, r, c, v, s, epi.clone(), store);
                }
            }
        }
    }
}

/// Lane `q` of `v`, `width` lanes wide (`v` itself when that is 1).
#[cube]
fn lane<W: Size>(v: Vector<f32, W>, #[comptime] q: usize, #[comptime] width: usize) -> f32 {
    if comptime!(width == 1) { f32::cast_from(v) } else { v[q] }
}

/// Sets lane `q` of `v`, `width` lanes wide, to `x`.
#[cube]
fn set_lane<W: Size>(v: &mut Vector<f32, W>, #[comptime] q: usize, x: f32, #[comptime] width: usize) {
    if comptime!(width == 1) {
        *v = Vector::<f32, W>::new(x);
    } else {
        v[q] = x;
    }
}

/// The sum of a split GEMM's k slices, in slice order: one unit per output element; stores it
/// as [`gemm`] stores an output (with its epilogue, if any).
#[cube(launch_unchecked)]
pub fn gemm_reduce<N: Size>(
    ws: &Array<f32>,
    out: &mut Array<f32>,
    epi_in: &Sequence<Array<Vector<f32, N>>>,
    epi_out: &mut Sequence<Array<Vector<f32, N>>>,
    #[comptime] s: GemmSpec,
    #[comptime] epi: Option<KernelProgram>,
    #[comptime] store: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos < comptime!(s.m * s.n) {
        let mut acc = 0.0f32;
        for slice in 0..comptime!(s.split) {
            acc += ws[comptime!(s.workspace) + slice * comptime!(s.m * s.n) + pos];
        }
        let r = pos / comptime!(s.n);
        let c = pos % comptime!(s.n);
        gemm_store::<N>(out, epi_in, epi_out, r, c, acc, s, epi, store);
    }
}
