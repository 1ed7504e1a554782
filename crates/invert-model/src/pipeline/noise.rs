//! The seeded Gaussian noise of generation (initial latents, ancestral steps).
//!
//! Values are drawn on the CPU from SplitMix64 (Steele et al., "Fast splittable pseudorandom
//! number generators", 2014) turned into standard normals by the Box-Muller transform, in f64,
//! rounded to f32, and only then uploaded. The same seed therefore gives bit-identical noise on
//! every backend and machine. It is not torch's generator: to reproduce an image made by
//! another tool exactly, pass its initial latents with `--init-latents`.
//!
//! A pipeline takes its random numbers from a [`NoiseSource`]; [`SeededNoise`] gives image `i`
//! of a batch the stream of seed `seed + i` (A1111's convention), so any image of a batch can be
//! made again alone.

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

/// Where a pipeline's standard-normal tensors come from, one call per draw, in the order
/// diffusers draws them: text-to-image's initial latents, img2img's posterior sample and
/// `add_noise` noise, then one tensor per ancestral step.
pub trait NoiseSource {
    /// A standard-normal `[batch, c, h, w]` tensor on `device`.
    fn draw(&mut self, shape: [usize; 4], device: &Device) -> Tensor<4>;
}

/// One [`NoiseGenerator`] per image of a batch, seeded `seed`, `seed + 1`, ...: each draw takes
/// image `i`'s slice from generator `i`, so an image does not depend on the batch it was made in.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    generators: Vec<NoiseGenerator>,
}

impl SeededNoise {
    pub fn new(seed: u64, count: usize) -> Self {
        Self {
            generators: (0..count)
                .map(|i| NoiseGenerator::new(seed + i as u64))
                .collect(),
        }
    }
}

impl NoiseSource for SeededNoise {
    /// # Panics
    /// If `shape[0]` is not the number of images this source was made for.
    fn draw(&mut self, shape: [usize; 4], device: &Device) -> Tensor<4> {
        assert_eq!(
            shape[0],
            self.generators.len(),
            "one generator per image of the batch"
        );
        let per_image = [1, shape[1], shape[2], shape[3]];
        Tensor::cat(
            self.generators
                .iter_mut()
                .map(|g| g.tensor(per_image, device))
                .collect(),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_gives_each_image_its_own_seed() {
        let device = Device::flex();
        let mut batch = SeededNoise::new(10, 2);
        let mut alone = SeededNoise::new(11, 1);
        for _ in 0..2 {
            let both = batch.draw([2, 1, 2, 3], &device);
            let second = alone.draw([1, 1, 2, 3], &device);
            assert_eq!(
                both.narrow(0, 1, 1).into_data(),
                second.into_data(),
                "image 1 of seed 10 is image 0 of seed 11"
            );
        }
    }

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
