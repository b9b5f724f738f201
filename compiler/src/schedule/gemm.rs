//! How the matmul and the convolutions run: as GEMMs `out[m, n] = A[m, k] x B[k, n]` (the
//! convolutions implicitly, through im2col gathers; see `plateau_kernels::gemm`). The rules
//! here are shape arithmetic shared by the schedule (launches and workspace memory) and the
//! lowering (the kernel's comptime shape), so that both always agree.
//!
//! - **Register blocks.** A cube computes a `16*rm x 16*rn` output tile (with `16 x 16` units
//!   on a GPU, fewer and wider ones on a CPU: `plateau_kernels::gemm::GemmLayout`);
//!   `rm` is 4 when `m >= 64`, 2 when `m >= 32`, else 1 (the same for `rn` and `n`).
//! - **Split-K.** A cube walks its whole k range serially, 16 at a time, with two barriers
//!   per stage. A GEMM with few output tiles and a long k range (a convolution's weight
//!   gradient sums over batch x positions: 25,088 terms for the CNN's second layer at batch
//!   128, on 5 tiles) would leave a GPU nearly idle and run thousands of stages in a row. So
//!   when the output has fewer than [`SPLIT_TARGET_CUBES`] tiles, k is cut into `split`
//!   slices of at least [`SPLIT_MIN_K`] each, enough for about that many cubes. Each slice
//!   writes its partial product to a workspace (`split * m * n` f32, placed by the memory
//!   plan, live only during the kernel), and a second launch sums the slices in a fixed order
//!   (deterministic, no atomics). Such a kernel counts as two launches.
//! - **Phases of a strided input gradient.** With stride `s`, an input pixel `h` is reached
//!   only by the kernel taps `i` with `i = (h + pad) mod s`, so gathering every tap for every
//!   pixel (as the transposed convolution does) multiplies zeros for all but about `1/s^2` of
//!   the terms: 3/4 of them for ResNet's stride-2 convolutions. When [`grad_input_phased`],
//!   the GEMM instead groups the input pixels by phase `((h + ph) mod sh, (w + pw) mod sw)`,
//!   each phase in whole tiles, and each tile sums only over its phase's taps. Such a GEMM
//!   is never split (its k range is at most a few taps times the output channels).

use crate::ir::{Graph, NodeId, Op};

/// The side of a GEMM tile in register blocks (and the units along each side of a cube on a
/// GPU) and the k-depth of a stage.
pub const GEMM_SIDE: usize = 16;
/// Split-K aims for about this many cubes (an H100 has 132 SMs).
pub const SPLIT_TARGET_CUBES: usize = 128;
/// Split-K never makes a slice shorter than this many k terms (32 stages of 16).
pub const SPLIT_MIN_K: usize = 512;

/// The register block side for a dimension of `len`.
pub fn gemm_block(len: usize) -> usize {
    if len >= 4 * GEMM_SIDE {
        4
    } else if len >= 2 * GEMM_SIDE {
        2
    } else {
        1
    }
}

/// Output tiles (cubes per k slice) of an `m x n` GEMM.
pub fn gemm_tiles(m: usize, n: usize) -> usize {
    m.div_ceil(GEMM_SIDE * gemm_block(m)) * n.div_ceil(GEMM_SIDE * gemm_block(n))
}

/// The number of k slices of an `m x n x k` GEMM (1: no split).
pub fn gemm_split(m: usize, n: usize, k: usize) -> usize {
    let tiles = gemm_tiles(m, n);
    if tiles >= SPLIT_TARGET_CUBES {
        return 1;
    }
    SPLIT_TARGET_CUBES.div_ceil(tiles).min(k / SPLIT_MIN_K).max(1)
}

/// `(m, n, k)` of the GEMM computing node `id`, if it runs as one.
pub fn gemm_dims(g: &Graph, id: NodeId) -> Option<(usize, usize, usize)> {
    let ops = g.operands(id);
    let dims = |i: usize| &g.shape(ops[i]).0;
    let out = &g.shape(id).0;
    Some(match &g.node(id).op {
        Op::MatMul { ta, .. } => (out[0], out[1], if *ta { dims(0)[0] } else { dims(0)[1] }),
        // y[n, o, p] = w[o, (c, i, j)] x im2col(x)
        Op::Conv2d(_) => {
            let w = dims(1);
            (w[0], out[0] * out[2] * out[3], w[1] * w[2] * w[3])
        }
        // gx[n, c, h, w] = w'[c, (o, i, j)] x gather(gy)
        Op::Conv2dGradInput { .. } => {
            let w = dims(1);
            (w[1], out[0] * out[2] * out[3], w[0] * w[2] * w[3])
        }
        // gw[o, (c, i, j)] = gy[o, (n, p)] x im2col(x)^T
        Op::Conv2dGradWeight { .. } => {
            let gy = dims(1);
            (out[0], out[1] * out[2] * out[3], gy[0] * gy[2] * gy[3])
        }
        _ => return None,
    })
}

/// Whether a convolution's input gradient with `stride` and `out_channels` runs phase by
/// phase: strided, and with the output channels in whole k stages (so that one stage of k
/// holds one tap).
pub fn grad_input_phased(stride: [usize; 2], out_channels: usize) -> bool {
    (stride[0] > 1 || stride[1] > 1) && out_channels.is_multiple_of(GEMM_SIDE)
}

/// The split of the GEMM computing `id` (1 for any other node, and for a phased input
/// gradient).
pub fn split_of(g: &Graph, id: NodeId) -> usize {
    // An epilogue runs in its GEMM's kernel.
    if let Op::Epilogue { .. } = g.node(id).op {
        return split_of(g, g.operands(id)[0]);
    }
    if let Op::Conv2dGradInput { attrs, .. } = &g.node(id).op {
        if grad_input_phased(attrs.stride, g.shape(g.operands(id)[1]).0[0]) {
            return 1;
        }
    }
    gemm_dims(g, id).map_or(1, |(m, n, k)| gemm_split(m, n, k))
}

/// Workspace elements (f32) the kernel computing `id` needs: `split * m * n` for a split GEMM,
/// else 0.
pub fn workspace_len(g: &Graph, id: NodeId) -> usize {
    if let Op::Epilogue { .. } = g.node(id).op {
        return workspace_len(g, g.operands(id)[0]);
    }
    match (split_of(g, id), gemm_dims(g, id)) {
        (split, Some((m, n, _))) if split > 1 => split * m * n,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_splits_follow_the_shape() {
        assert_eq!([1, 31, 32, 63, 64, 4096].map(gemm_block), [1, 1, 2, 2, 4, 4]);
        // The CNN at batch 128: the second convolution's weight gradient (64 x 288 outputs on
        // 5 tiles, 25,088 terms) takes 26 slices to make about 128 cubes; the first's (32 x 9,
        // one tile, 100,352 terms) 128.
        assert_eq!(gemm_tiles(64, 288), 5);
        assert_eq!(gemm_split(64, 288, 25_088), 26);
        assert_eq!(gemm_split(32, 9, 100_352), 128);
        // Too short a sum to split (784 terms make one slice of at least 512), or enough tiles.
        assert_eq!(gemm_split(128, 256, 784), 1);
        assert_eq!(gemm_split(512, 4608, 2048), 1);
        // Few tiles, a sum of 3,136: slices of at least 512 cap the split at 6.
        assert_eq!(gemm_split(8, 128, 3136), 6);
    }
}
