//! Small macro-op kernels: one-hot, zero padding, dropout masks (the matmul is in `gemm`).

use cubecl::prelude::*;

/// `out[i, c] = (labels[i] == c)` as 1.0 / 0.0; labels are stored as f32.
#[cube(launch_unchecked)]
pub fn one_hot(labels: &Array<f32>, out: &mut Array<f32>, #[comptime] rows: usize, #[comptime] classes: usize, #[comptime] offsets: (usize, usize)) {
    let pos = ABSOLUTE_POS;
    if pos < comptime!(rows * classes) {
        let row = pos / comptime!(classes);
        let class = pos % comptime!(classes);
        let label = labels[comptime!(offsets.0) + row];
        out[comptime!(offsets.1) + pos] = f32::cast_from(label == f32::cast_from(class));
    }
}

/// Shapes and offsets of a zero padding: output dims, padding before each axis, input dims.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PadSpec {
    pub out: Vec<usize>,
    pub lo: Vec<usize>,
    pub input: Vec<usize>,
    pub offsets: (usize, usize),
}

/// `out[c] = x[c - lo]` where that is inside `x`, else 0.
#[cube(launch_unchecked)]
pub fn pad(x: &Array<f32>, out: &mut Array<f32>, #[comptime] s: PadSpec) {
    let pos = ABSOLUTE_POS;
    let total = comptime!(s.out.iter().product::<usize>());
    if pos < total {
        let mut rem = pos;
        let mut idx = 0usize;
        let mut inside = true;
        let mut stride = 1usize;
        #[unroll]
        for r in 0..s.out.len() {
            let ax = comptime!(s.out.len() - 1 - r);
            let d = comptime!(s.out[ax]);
            let l = comptime!(s.lo[ax]);
            let n = comptime!(s.input[ax]);
            let c = rem % d;
            rem = rem / d;
            inside = inside && c >= l && c < l + n;
            idx += select(c >= l, c - l, 0) * stride;
            stride *= n;
        }
        let v = x[comptime!(s.offsets.0) + select(inside, idx, 0)];
        out[comptime!(s.offsets.1) + pos] = select(inside, v, 0.0);
    }
}

/// `out[i] = 1.0` when dropout keeps element `i` at this step, else `0.0`: the same
/// counter-based hash as `plateau_compiler::ir::dropout_uniform`, in u32 arithmetic.
#[cube(launch_unchecked)]
pub fn dropout_mask(step: &Array<f32>, out: &mut Array<f32>, #[comptime] n: usize, #[comptime] p_bits: u32, #[comptime] seed: u32, #[comptime] offsets: (usize, usize)) {
    let pos = ABSOLUTE_POS;
    if pos < n {
        let s = u32::cast_from(step[comptime!(offsets.0)]);
        let h = mix(mix(mix(comptime!(seed).runtime()) ^ s) ^ u32::cast_from(pos));
        let u = f32::cast_from(h >> 8) * comptime!(1.0f32 / 16_777_216.0);
        let p = comptime!(f32::from_bits(p_bits));
        out[comptime!(offsets.1) + pos] = f32::cast_from(u >= p);
    }
}

/// The "lowbias32" integer mixer.
#[cube]
fn mix(x: u32) -> u32 {
    let mut v = x;
    v ^= v >> 16;
    v *= 0x7feb_352du32;
    v ^= v >> 15;
    v *= 0x846c_a68bu32;
    v ^= v >> 16;
    v
}
