//! Per-image augmentation: zero-pad and random crop, horizontal flip, cutout.

use rand::Rng;

/// The augmentations applied to each training image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Pad each side by this many zero pixels and crop back at a random offset (0: off).
    pub pad_crop: usize,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
    /// Zero a `cutout` x `cutout` square at a random centre (0: off).
    pub cutout: usize,
}

impl Augment {
    pub fn none() -> Self {
        Augment { pad_crop: 0, flip: false, cutout: 0 }
    }

    /// The standard CIFAR recipe: 4-pixel pad + random crop, horizontal flip.
    pub fn cifar() -> Self {
        Augment { pad_crop: 4, flip: true, cutout: 0 }
    }

    pub fn is_none(&self) -> bool {
        *self == Augment::none()
    }

    /// Augments one `[C, H, W]` image in place.
    pub fn apply(&self, img: &mut [f32], [c, h, w]: [usize; 3], r: &mut impl Rng) {
        if self.pad_crop > 0 {
            let p = self.pad_crop as i64;
            let (dy, dx) = (r.random_range(-p..=p) as isize, r.random_range(-p..=p) as isize);
            let src = img.to_vec();
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let (sy, sx) = (y as isize + dy, x as isize + dx);
                        let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                        img[(ch * h + y) * w + x] = if inside { src[(ch * h + sy as usize) * w + sx as usize] } else { 0.0 };
                    }
                }
            }
        }
        if self.flip && r.random_bool(0.5) {
            for row in img.chunks_mut(w) {
                row.reverse();
            }
        }
        if self.cutout > 0 {
            let (cy, cx) = (r.random_range(0..h) as isize, r.random_range(0..w) as isize);
            let half = (self.cutout / 2) as isize;
            for ch in 0..c {
                for y in (cy - half).max(0)..(cy - half + self.cutout as isize).min(h as isize) {
                    for x in (cx - half).max(0)..(cx - half + self.cutout as isize).min(w as isize) {
                        img[(ch * h + y as usize) * w + x as usize] = 0.0;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn flip_mirrors_rows_and_crop_shifts_with_zero_fill() {
        let img: Vec<f32> = (0..12).map(|v| v as f32 + 1.0).collect(); // [1, 3, 4]
        // Find a seed whose draw flips, then check the mirror.
        let flip = Augment { pad_crop: 0, flip: true, cutout: 0 };
        let mut flipped = 0;
        for seed in 0..8 {
            let mut x = img.clone();
            flip.apply(&mut x, [1, 3, 4], &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            if x != img {
                assert_eq!(&x[..4], &[4.0, 3.0, 2.0, 1.0]);
                flipped += 1;
            }
        }
        assert!(flipped > 0 && flipped < 8, "{flipped} of 8 flipped");
        // A crop keeps every surviving pixel's neighbourhood and fills the rest with zeros.
        let crop = Augment { pad_crop: 1, flip: false, cutout: 0 };
        for seed in 0..8 {
            let mut x = img.clone();
            crop.apply(&mut x, [1, 3, 4], &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            let kept = x.iter().filter(|&&v| v != 0.0).count();
            assert!(kept >= 6, "{x:?}");
            assert!(x.iter().all(|v| *v == 0.0 || img.contains(v)));
        }
        // Cutout zeroes at most a 2x2 square and nothing else.
        let cut = Augment { pad_crop: 0, flip: false, cutout: 2 };
        let mut x = img.clone();
        cut.apply(&mut x, [1, 3, 4], &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let zeros = x.iter().filter(|&&v| v == 0.0).count();
        assert!((1..=4).contains(&zeros), "{x:?}");
    }
}
