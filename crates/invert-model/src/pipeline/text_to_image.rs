//! Text-to-image sampling as diffusers' `StableDiffusionPipeline.__call__` and
//! `StableDiffusionXLPipeline.__call__` do it: encode prompt and negative prompt (in A1111's
//! prompt syntax, see `prompt_encoding.rs`), start from seeded noise scaled by the sampler's
//! `init_noise_sigma`, denoise with classifier-free guidance (SDXL with its added conditions; the
//! loop is `denoise.rs`, shared with image-to-image), decode with the VAE.

use burn::prelude::*;
use burn::tensor::DType;

use super::denoise::{Guidance, denoise, init_sampler};
use super::noise::{NoiseSource, SeededNoise};
use super::prompt_encoding::Emphasis;
use crate::loading::StableDiffusion;
use crate::schedulers::{SamplerConfig, SchedulerError};
use crate::vocabulary::{Vocabulary, VocabularyError};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("width and height must be positive multiples of 8 (got {width}x{height}); try {}x{}", round8(*.width), round8(*.height))]
    Size { width: usize, height: usize },
    #[error("--steps must be at least 1")]
    Steps,
    #[error("--cfg must be a finite number >= 0 (got {0})")]
    Guidance(f64),
    #[error("init latents have shape {found:?}; this model and size need [{n}, {c}, {h}, {w}]", n = .expected[0], c = .expected[1], h = .expected[2], w = .expected[3])]
    InitLatents {
        found: Vec<usize>,
        expected: [usize; 4],
    },
    #[error(
        "--strength must be a number in (0, 1] (got {0}): 1 repaints the whole picture, values near 0 keep it"
    )]
    Strength(f64),
    #[error("--strength {strength} with --steps {steps} runs no denoising step (int(steps * strength) = 0); raise --strength to at least {} or --steps to at least {}", 1.0 / *.steps as f64, (1.0 / .strength).ceil())]
    NoStepsAtStrength { strength: f64, steps: usize },
    #[error(
        "the init image has shape {found:?}; this request needs [1 or {count}, 3, {height}, {width}] (RGB in [-1, 1] at the requested size)"
    )]
    InitImage {
        found: Vec<usize>,
        count: usize,
        height: usize,
        width: usize,
    },
    #[error("init latents and an init image cannot be combined: give one of them")]
    InitLatentsAndImage,
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Prompt(#[from] VocabularyError),
}

fn round8(v: usize) -> usize {
    (v.max(8) + 4) / 8 * 8
}

/// One generation request (one prompt, `count` images with seeds `seed`, `seed + 1`, ...).
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub negative: String,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub sampler: SamplerConfig,
    /// Text-encoder layers to skip at the end (1 = none; A1111's "clip skip").
    pub clip_skip: usize,
    /// How `(word:1.3)` weights act (A1111's or ComfyUI's rule).
    pub emphasis: Emphasis,
    /// Exact starting latents `[count, 4, h/f, w/f]` (e.g. from another tool), instead of noise.
    pub init_latents: Option<Tensor<4>>,
}

/// A decoded image, RGB8, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    pub seed: u64,
}

/// Checks the request against the model before anything runs.
pub fn validate(
    sd: &StableDiffusion,
    r: &Request,
    count: usize,
) -> Result<[usize; 4], GenerateError> {
    if r.width == 0 || r.height == 0 || !r.width.is_multiple_of(8) || !r.height.is_multiple_of(8) {
        return Err(GenerateError::Size {
            width: r.width,
            height: r.height,
        });
    }
    if r.steps == 0 {
        return Err(GenerateError::Steps);
    }
    if !(r.guidance.is_finite() && r.guidance >= 0.0) {
        return Err(GenerateError::Guidance(r.guidance));
    }
    let f = sd.config.vae.downscale_factor();
    let shape = [
        count,
        sd.config.vae.latent_channels,
        r.height / f,
        r.width / f,
    ];
    if let Some(l) = &r.init_latents
        && l.dims() != shape
    {
        return Err(GenerateError::InitLatents {
            found: l.dims().to_vec(),
            expected: shape,
        });
    }
    Ok(shape)
}

/// Denoised latents (unscaled, ready for the VAE) for `count` images of `r`. `progress` is
/// called after each denoising step with (step, total).
pub fn sample_latents(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    r: &Request,
    count: usize,
    device: &Device,
    progress: impl FnMut(usize, usize),
) -> Result<Tensor<4>, GenerateError> {
    let shape = validate(sd, r, count)?;
    let mut sampler = init_sampler(sd, r)?;
    let guidance = Guidance::encode(sd, vocab, r, count, device)?;
    // Image i starts from seed + i (A1111's convention), so any image can be made alone again.
    let mut noise = SeededNoise::new(r.seed, count);
    let initial = match &r.init_latents {
        Some(l) => l.clone(),
        None => noise.draw(shape, device),
    };
    let latents = initial.mul_scalar(sampler.init_noise_sigma());
    Ok(denoise(
        sd,
        &guidance,
        &mut sampler,
        latents,
        0,
        &mut noise,
        progress,
    ))
}

/// Decodes latents to RGB8 images as diffusers does: `vae.decode(latents / scaling_factor)`,
/// then `(x / 2 + 0.5).clamp(0, 1) * 255`, rounded.
pub fn decode(sd: &StableDiffusion, latents: Tensor<4>, seed: u64) -> Vec<Image> {
    let images = sd
        .vae
        .decode(latents.div_scalar(sd.vae.scaling_factor))
        .cast(DType::F32);
    let [n, _, h, w] = images.dims();
    let pixels = images
        .div_scalar(2.0)
        .add_scalar(0.5)
        .clamp(0.0, 1.0)
        .mul_scalar(255.0)
        .round()
        .permute([0, 2, 3, 1])
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 pixels");
    (0..n)
        .map(|i| Image {
            width: w,
            height: h,
            rgb: pixels[i * h * w * 3..(i + 1) * h * w * 3]
                .iter()
                .map(|&v| v as u8)
                .collect(),
            seed: seed + i as u64,
        })
        .collect()
}
