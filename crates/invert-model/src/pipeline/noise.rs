//! The seeded Gaussian noise of generation (initial latents, ancestral steps).
//!
//! Values are drawn on the CPU from SplitMix64 (Steele et al., "Fast splittable pseudorandom
//! number generators", 2014) turned into standard normals by the Box-Muller transform, in f64,
//! rounded to f32, and only then uploaded. The same seed therefore gives bit-identical noise on
//! every backend and machine. It is not torch's generator: to reproduce an image made by
//! another tool exactly, pass its initial latents with `--init-latents`.

use burn::prelude::*;

/// A deterministic stream of standard-normal numbers.
#[derive(Debug, Clone)]
pub struct NoiseGenerator {
    state: u64,
    spare: Option<f64>,
}

impl NoiseGenerator {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: 53 random bits, never 0 (Box-Muller takes its log).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// A `shape` tensor of standard normals on `device`.
    pub fn tensor<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| self.normal() as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_and_standard_moments() {
        let mut a = NoiseGenerator::new(42);
        let mut b = NoiseGenerator::new(42);
        let xs: Vec<f64> = (0..100_000).map(|_| a.normal()).collect();
        assert!(
            xs.iter()
                .zip((0..100_000).map(|_| b.normal()))
                .all(|(x, y)| *x == y)
        );
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "mean {mean} var {var}"
        );
        assert_ne!(
            NoiseGenerator::new(1).normal(),
            NoiseGenerator::new(2).normal()
        );
    }
}
