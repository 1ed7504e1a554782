//! diffusers `AutoencoderKL` (models/autoencoders/autoencoder_kl.py): image to a diagonal
//! Gaussian posterior over latents, and latents back to an image.

use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::Distribution;

use super::config::AutoencoderKLConfig;
use super::vae_blocks::{Decoder, Encoder};
use crate::layers::conv2d;

#[derive(Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    pub scaling_factor: f64,
}

/// `DiagonalGaussianDistribution` of diffusers (autoencoders/vae.py).
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    pub mean: Tensor<4>,
    /// Clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor<4>,
}

impl DiagonalGaussian {
    pub fn std(&self) -> Tensor<4> {
        self.logvar.clone().mul_scalar(0.5).exp()
    }

    /// `mean + std * noise` with noise from the device's seeded generator.
    pub fn sample(&self) -> Tensor<4> {
        let noise = Tensor::random(
            self.mean.shape(),
            Distribution::Normal(0.0, 1.0),
            &self.mean.device(),
        );
        self.sample_with(noise)
    }

    /// `mean + std * noise` for caller-provided standard-normal `noise`.
    pub fn sample_with(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.std() * noise
    }
}

impl AutoencoderKLConfig {
    pub fn init(&self, device: &Device) -> AutoencoderKL {
        if let Some(why) = self.unsupported() {
            panic!("unsupported VAE config: {why}");
        }
        let z = self.latent_channels;
        AutoencoderKL {
            encoder: Encoder::new(self, device),
            decoder: Decoder::new(self, device),
            quant_conv: self
                .use_quant_conv
                .then(|| conv2d(2 * z, 2 * z, 1, 1, 0, device)),
            post_quant_conv: self
                .use_post_quant_conv
                .then(|| conv2d(z, z, 1, 1, 0, device)),
            scaling_factor: self.scaling_factor,
        }
    }
}

impl AutoencoderKL {
    /// Image `[b, 3, H, W]` in [-1, 1] to the latent posterior (unscaled latents).
    pub fn encode(&self, image: Tensor<4>) -> DiagonalGaussian {
        let image = image.cast(self.encoder.conv_in.weight.val().dtype());
        let mut moments = self.encoder.forward(image);
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(moments);
        }
        let [mean, logvar] = moments.chunk(2, 1).try_into().expect("two halves");
        DiagonalGaussian {
            mean,
            logvar: logvar.clamp(-30.0, 20.0),
        }
    }

    /// Unscaled latents `[b, 4, h, w]` to an image in about [-1, 1].
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let latents = latents.cast(self.decoder.conv_in.weight.val().dtype());
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents),
            None => latents,
        };
        self.decoder.forward(z)
    }
}
