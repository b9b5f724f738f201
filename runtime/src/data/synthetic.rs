//! The embedded default dataset, generated in-process and identical on every machine.
//!
//! Each of the `CLASSES` classes is a prototype image made of Gaussian blobs; neighbouring
//! classes share all but one blob, so telling them apart rests on a small part of the image.
//! An example is its class prototype shifted by up to `SHIFT` pixels, scaled in brightness,
//! with Gaussian pixel noise. The training set is small and 20% of its labels are replaced
//! by another class (the test set is clean), so a model can memorise noise: the setting in
//! which SAM's flatter minima are known to generalise better than SGD's.

use super::{Augment, Dataset, Split};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// What `--data synthetic` loads, in words.
pub const SYNTHETIC: &str = "8 classes of 1x16x16 blob images, 1,024 training (20% label noise) and 1,024 test examples";

const CLASSES: usize = 8;
const SIDE: usize = 16;
const TRAIN: usize = 1024;
const TEST: usize = 1024;
const BLOBS: usize = 4;
const SHIFT: i32 = 2;
const NOISE: f64 = 0.35;
const LABEL_NOISE: f64 = 0.2;
/// The generator's seed: the data never depends on a run's `--seed`.
const SEED: u64 = 0x5eed_da7a;

fn blob(img: &mut [f64], cy: f64, cx: f64, sigma: f64, amp: f64) {
    for y in 0..SIDE {
        for x in 0..SIDE {
            let d2 = (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2);
            img[y * SIDE + x] += amp * (-d2 / (2.0 * sigma * sigma)).exp();
        }
    }
}

fn examples(protos: &[Vec<(f64, f64, f64, f64)>], n: usize, r: &mut ChaCha8Rng) -> Split {
    let noise = Normal::new(0.0, NOISE).expect("invariant: positive deviation");
    let mut s = Split::default();
    for i in 0..n {
        let class = i % CLASSES;
        let (dy, dx) = (r.random_range(-SHIFT..=SHIFT) as f64, r.random_range(-SHIFT..=SHIFT) as f64);
        let gain = r.random_range(0.7..1.3);
        let mut img = vec![0.0; SIDE * SIDE];
        for &(cy, cx, sigma, amp) in &protos[class] {
            blob(&mut img, cy + dy, cx + dx, sigma, amp * gain);
        }
        s.images.extend(img.iter().map(|v| (v + noise.sample(r)) as f32));
        s.labels.push(class as i32);
    }
    s
}

pub(super) fn generate() -> Dataset {
    let mut r = ChaCha8Rng::seed_from_u64(SEED);
    // A ring of blob positions; class k uses BLOBS consecutive ones, so class k and k + 1
    // share BLOBS - 1 blobs.
    let ring: Vec<(f64, f64, f64, f64)> = (0..CLASSES + BLOBS)
        .map(|_| (r.random_range(3.0..13.0), r.random_range(3.0..13.0), r.random_range(1.2..2.2), r.random_range(0.6..1.0)))
        .collect();
    let protos: Vec<Vec<_>> = (0..CLASSES).map(|k| ring[k..k + BLOBS].to_vec()).collect();
    let train = examples(&protos, TRAIN, &mut r);
    let test = examples(&protos, TEST, &mut r);
    let mut d = Dataset { name: "synthetic".into(), shape: [1, SIDE, SIDE], classes: CLASSES, train, test, augment: Augment::none(), normalize: None };
    d.add_label_noise(LABEL_NOISE, SEED).expect("invariant: the fraction is in range");
    d
}
