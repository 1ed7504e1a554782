//! diffusers `models/embeddings.py`: `Timesteps` (sinusoidal projection) and
//! `TimestepEmbedding` (linear, SiLU, linear).

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;

/// `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift)`, max period 10000.
pub fn timestep_projection(
    t: Tensor<1>,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor<2> {
    let half = dim / 2;
    let device = t.device();
    let exponent = Tensor::<1, Int>::arange(0..half as i64, &device)
        .float()
        .mul_scalar(-(10000f64.ln()) / (half as f64 - freq_shift));
    let args = t.unsqueeze_dim::<2>(1) * exponent.exp().unsqueeze_dim::<2>(0);
    let (sin, cos) = (args.clone().sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        // diffusers zero-pads odd widths.
        let [n, _] = emb.dims();
        Tensor::cat(vec![emb, Tensor::zeros([n, 1], &device)], 1)
    } else {
        emb
    }
}

#[derive(Config, Debug)]
pub struct TimestepEmbeddingConfig {
    pub in_channels: usize,
    pub time_embed_dim: usize,
}

#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbeddingConfig {
    pub fn init(&self, device: &Device) -> TimestepEmbedding {
        TimestepEmbedding {
            linear_1: LinearConfig::new(self.in_channels, self.time_embed_dim).init(device),
            linear_2: LinearConfig::new(self.time_embed_dim, self.time_embed_dim).init(device),
        }
    }
}

impl TimestepEmbedding {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_zero_is_cos_ones_then_sin_zeros() {
        let device = Device::flex();
        let e = timestep_projection(Tensor::from_floats([0.0, 999.0], &device), 8, true, 0.0);
        let v = e.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(&v[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        // t = 999, first frequency is 1: cos(999), sin(999) appear at positions 0 and 4.
        assert!((v[8] - 999f32.cos()).abs() < 1e-4 && (v[12] - 999f32.sin()).abs() < 1e-4);
    }
}
