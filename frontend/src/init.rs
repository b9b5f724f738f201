//! Seeded, reproducible initial values for parameters and state.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};

/// How a parameter or state tensor starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Init {
    /// He/Kaiming normal for ReLU networks: `N(0, 2 / fan_in)`.
    HeNormal { fan_in: usize },
    /// `U(-bound, bound)`.
    Uniform { bound: f64 },
    Zeros,
    Ones,
}

impl Init {
    /// `numel` values drawn for the tensor called `name` from the run's `seed`. Each tensor
    /// has its own stream (seeded from `seed` and the name), so adding a layer does not change
    /// the others' initial values.
    pub fn sample(&self, name: &str, numel: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(name));
        match *self {
            Init::HeNormal { fan_in } => {
                let std = (2.0 / fan_in.max(1) as f64).sqrt();
                let normal = Normal::new(0.0, std).expect("invariant: std is finite and positive");
                (0..numel).map(|_| normal.sample(&mut rng)).collect()
            }
            Init::Uniform { bound } => {
                let u = Uniform::new_inclusive(-bound, bound).expect("invariant: bound is finite");
                (0..numel).map(|_| u.sample(&mut rng)).collect()
            }
            Init::Zeros => vec![0.0; numel],
            Init::Ones => vec![1.0; numel],
        }
    }
}

/// 64-bit FNV-1a: a stable hash of a tensor name (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}
