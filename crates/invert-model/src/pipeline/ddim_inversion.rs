//! DDIM inversion of a real picture: the latent noise that deterministic DDIM sampling turns back
//! into the picture, for a given prompt. It is the first stage of Prompt-to-Prompt editing of
//! real images (Mokady et al. 2022, "Null-text inversion for editing real images using guided
//! diffusion models", section 3.1: DDIM inversion with guidance 1 gives the pivot trajectory),
//! run as diffusers' inversion pipelines do (`StableDiffusionDiffEditPipeline.invert`,
//! `StableDiffusionPix2PixZeroPipeline.invert`): encode the picture, then at each
//! `DDIMInverseScheduler` timestep (lowest first) predict the noise for the prompt and step up
//! (`schedulers/ddim_inverse.rs`). The picture is encoded to its posterior **mean** (Mokady et
//! al.'s code; diffusers' DiffEdit draws a sample): inversion stays deterministic.
//!
//! [`reconstruct`] regenerates the picture from the inverted noise with DDIM (the same prompt,
//! steps and guidance) and measures how close it comes (MSE and PSNR): with guidance 1 and enough
//! steps the trajectory nearly retraces itself; the error shows how far an edit's starting point
//! is from the picture.

use burn::prelude::*;
use burn::tensor::DType;

use super::denoise::{Guidance, guided_prediction};
use super::text_to_image::{GenerateError, Request, sample_latents, validate};
use crate::loading::StableDiffusion;
use crate::schedulers::{DdimInverse, NoiseScheduleConfig, SamplerConfig, SamplerKind};
use crate::vocabulary::Vocabulary;

/// How to invert.
#[derive(Config, Debug, PartialEq)]
pub struct DdimInversionConfig {
    /// DDIM steps, for the inversion and for regenerating from it.
    #[config(default = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale while inverting (and regenerating): 1, no guidance, is
    /// Mokady et al.'s choice; above 1 each step's error grows and the inversion drifts.
    #[config(default = 1.0)]
    pub guidance: f64,
    /// Text-encoder layers to skip at the end (A1111's "clip skip"; 1 = none).
    #[config(default = 1)]
    pub clip_skip: usize,
}

/// A picture inverted for a prompt.
#[derive(Debug, Clone)]
pub struct InvertedImage {
    /// `[0]`: the picture's latents (`scaling_factor * posterior mean`); `[k]`: after `k`
    /// inverse steps, at the noise level of `timesteps[k - 1]`. The last is the noise DDIM
    /// starts from to regenerate the picture; `[steps - k]` is the pivot for DDIM step `k`.
    pub latents_per_step: Vec<Tensor<4>>,
    /// The inverse timesteps, lowest first (DDIM runs them highest first).
    pub timesteps: Vec<f64>,
    pub prompt: String,
    pub config: DdimInversionConfig,
    /// The picture's `(width, height)` in pixels.
    pub size: (usize, usize),
}

impl InvertedImage {
    /// The inverted noise (the last latents).
    pub fn noise(&self) -> &Tensor<4> {
        self.latents_per_step
            .last()
            .expect("step 0 is always there")
    }

    /// The text-to-image request that regenerates the picture: DDIM (eta 0), the same prompt,
    /// steps, guidance and size, from [`InvertedImage::noise`]. An editor changes its prompt.
    pub fn regeneration_request(&self) -> Request {
        Request {
            init_latents: Some(self.noise().clone()),
            ..ddim_request(&self.prompt, &self.config, self.size)
        }
    }
}

/// DDIM (eta 0) at `config`'s steps and guidance for `prompt` and a `(width, height)` picture.
pub(crate) fn ddim_request(
    prompt: &str,
    config: &DdimInversionConfig,
    (width, height): (usize, usize),
) -> Request {
    Request {
        prompt: prompt.to_string(),
        negative: String::new(),
        steps: config.steps,
        guidance: config.guidance,
        seed: 0,
        width,
        height,
        sampler: SamplerConfig::new(SamplerKind::Ddim),
        clip_skip: config.clip_skip,
        emphasis: Default::default(),
        init_latents: None,
    }
}

/// Inverts `image` (`[1, 3, height, width]`, RGB in `[-1, 1]`, e.g. from
/// `image_processor::preprocess`) for `prompt`: `config.steps` inverse DDIM steps, each with the
/// U-Net's noise prediction for the prompt (guided when `config.guidance > 1`). Runs on the
/// picture's device.
pub fn invert_image(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    image: &Tensor<4>,
    prompt: &str,
    config: &DdimInversionConfig,
) -> Result<InvertedImage, GenerateError> {
    let device = &image.device();
    let [n, c, height, width] = image.dims();
    let mut inverted = InvertedImage {
        latents_per_step: Vec::with_capacity(config.steps + 1),
        timesteps: Vec::new(),
        prompt: prompt.to_string(),
        config: config.clone(),
        size: (width, height),
    };
    let r = ddim_request(prompt, config, inverted.size);
    if (n, c) != (1, 3) {
        return Err(GenerateError::InitImage {
            found: image.dims().to_vec(),
            count: 1,
            height,
            width,
        });
    }
    validate(sd, &r, 1)?;
    let mut inverse = DdimInverse::new(&NoiseScheduleConfig::from_json(&sd.config.scheduler)?)?;
    inverse.set_timesteps(config.steps)?;
    let guidance = Guidance::encode(sd, vocab, &r, 1, device)?;

    let mut latents = sd
        .vae
        .encode(image.clone())
        .mean
        .cast(DType::F32)
        .mul_scalar(sd.vae.scaling_factor);
    inverted.latents_per_step.push(latents.clone());
    // `DDIMInverseScheduler.scale_model_input` is the identity.
    for (i, &t) in inverse.timesteps().iter().enumerate() {
        let out = guided_prediction(sd, &guidance, latents.clone(), t);
        latents = inverse.step(out, i, latents);
        inverted.latents_per_step.push(latents.clone());
    }
    inverted.timesteps = inverse.timesteps().to_vec();
    Ok(inverted)
}

/// The picture regenerated from an inversion, and how far it is from the original.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    /// The regenerated latents (unscaled for `decode`, like `sample_latents`' output).
    pub latents: Tensor<4>,
    /// Mean squared error against the picture, both in `[0, 1]` (before rounding to 8 bits).
    pub mse: f64,
    /// `10 log10(1 / mse)`, in dB.
    pub psnr: f64,
}

/// Regenerates `image` from `inverted` with DDIM ([`InvertedImage::regeneration_request`]) and
/// measures the error against `image` (the picture that was inverted, `[1, 3, h, w]` in
/// `[-1, 1]`; see [`measure`]).
pub fn reconstruct(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    image: &Tensor<4>,
    inverted: &InvertedImage,
) -> Result<Reconstruction, GenerateError> {
    let device = &image.device();
    let latents = sample_latents(
        sd,
        vocab,
        &inverted.regeneration_request(),
        1,
        device,
        |_, _| {},
    )?;
    Ok(measure(sd, image, latents))
}

/// How far `latents` (a regeneration, unscaled like `sample_latents`' output, `[1, c, h, w]`)
/// decode from `image` (`[1, 3, h, w]` in `[-1, 1]`): decoded as diffusers does,
/// `(x / 2 + 0.5).clamp(0, 1)`, not rounded, so the error is the model's, not the 8-bit
/// rounding's. Used for DDIM and null-text reconstructions and the edit's source image alike.
pub fn measure(sd: &StableDiffusion, image: &Tensor<4>, latents: Tensor<4>) -> Reconstruction {
    let to_unit = |x: Tensor<4>| x.cast(DType::F32).div_scalar(2.0).add_scalar(0.5);
    let decoded = to_unit(
        sd.vae
            .decode(latents.clone().div_scalar(sd.vae.scaling_factor)),
    )
    .clamp(0.0, 1.0);
    let diff = decoded - to_unit(image.clone());
    let mse = f64::from((diff.clone() * diff).mean().into_scalar::<f32>());
    Reconstruction {
        latents,
        mse,
        psnr: psnr(mse),
    }
}

/// Peak signal-to-noise ratio in dB for values in `[0, 1]` (infinite for a perfect match).
pub fn psnr(mse: f64) -> f64 {
    10.0 * (1.0 / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_errors() {
        assert_eq!(psnr(1.0), 0.0);
        assert!((psnr(0.01) - 20.0).abs() < 1e-12);
        assert!(psnr(0.0).is_infinite());
    }

    #[test]
    fn regeneration_starts_from_the_last_latents_with_ddim() {
        let device = Device::flex();
        let config = DdimInversionConfig::new().with_steps(3);
        let inverted = InvertedImage {
            latents_per_step: (0..4)
                .map(|k| Tensor::<4>::full([1, 4, 2, 3], k as f32, &device))
                .collect(),
            timesteps: vec![1.0, 334.0, 667.0],
            prompt: "a cat".into(),
            config,
            size: (24, 16),
        };
        let r = inverted.regeneration_request();
        assert_eq!((r.steps, r.guidance, r.width, r.height), (3, 1.0, 24, 16));
        assert_eq!(r.sampler, SamplerConfig::new(SamplerKind::Ddim));
        let start = r.init_latents.expect("the inverted noise");
        assert_eq!(start.into_data(), inverted.noise().clone().into_data());
        assert_eq!(inverted.noise().clone().max().into_scalar::<f32>(), 3.0);
    }
}
