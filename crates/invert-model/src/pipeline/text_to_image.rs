//! Text-to-image sampling as diffusers' `StableDiffusionPipeline.__call__` and
//! `StableDiffusionXLPipeline.__call__` do it: encode prompt and negative prompt (in A1111's
//! prompt syntax, see `prompt_encoding.rs`), start from seeded noise scaled by the sampler's `init_noise_sigma`,
//! denoise with classifier-free guidance (SDXL with its added conditions), decode with the VAE.

use burn::prelude::*;
use burn::tensor::DType;

use super::noise::NoiseGenerator;
use super::prompt_encoding::{
    Emphasis, LearnedRows, encode_weighted_prompt, sdxl_time_ids, time_ids_tensor,
};
use crate::loading::StableDiffusion;
use crate::schedulers::{NoiseScheduleConfig, SamplerConfig, SchedulerError};
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
    mut progress: impl FnMut(usize, usize),
) -> Result<Tensor<4>, GenerateError> {
    let shape = validate(sd, r, count)?;
    let schedule = NoiseScheduleConfig::from_json(&sd.config.scheduler)?;
    let mut sampler = r.sampler.init(&schedule)?;
    sampler.set_timesteps(r.steps)?;

    let (extra, extra_2) = (vocab.extra(device), vocab.extra_2(device));
    let learned = LearnedRows {
        first: extra.as_ref(),
        second: extra_2.as_ref(),
    };
    // Prompts in A1111's syntax: emphasis, BREAK, any length (see `crate::prompt`).
    let encode = |text: &str| {
        encode_weighted_prompt(sd, vocab, text, learned, r.clip_skip, r.emphasis, device)
    };
    let cond = encode(&r.prompt)?;
    let guided = r.guidance > 1.0;
    let conditioning = if guided {
        // SDXL's `force_zeros_for_empty_prompt`: no negative prompt means zeros, not "".
        let zeros = cond.text_embeds.is_some()
            && sd.config.force_zeros_for_empty_prompt
            && r.negative.trim().is_empty();
        let uncond = if zeros {
            cond.zeros_like()
        } else {
            encode(&r.negative)?
        };
        // A prompt and a negative prompt of different lengths: the shorter one gets encoded
        // empty prompts appended (A1111's `pad_cond`).
        let (lc, lu) = (cond.context.dims()[1], uncond.context.dims()[1]);
        let (cond, uncond) = if lc == lu {
            (cond, uncond)
        } else {
            let empty = encode("")?;
            (cond.pad_to(lu, &empty), uncond.pad_to(lc, &empty))
        };
        uncond.repeat(count).cat(cond.repeat(count))
    } else {
        cond.repeat(count)
    };
    let batch = if guided { 2 * count } else { count };
    let added = conditioning.added(|| {
        let size = [r.height, r.width];
        time_ids_tensor(&vec![sdxl_time_ids(size, [0, 0], size); batch], device)
    });

    // Image i starts from seed + i (A1111's convention), so any image can be made alone again.
    let mut generators: Vec<NoiseGenerator> = (0..count)
        .map(|i| NoiseGenerator::new(r.seed + i as u64))
        .collect();
    let per_image = [1, shape[1], shape[2], shape[3]];
    let draw = |gens: &mut Vec<NoiseGenerator>| {
        Tensor::cat(
            gens.iter_mut()
                .map(|g| g.tensor(per_image, device))
                .collect(),
            0,
        )
    };
    let initial = match &r.init_latents {
        Some(l) => l.clone(),
        None => draw(&mut generators),
    };
    let mut latents = initial.mul_scalar(sampler.init_noise_sigma());

    let timesteps: Vec<f64> = sampler.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let input = sampler.scale_model_input(latents.clone(), i);
        let input = if guided {
            Tensor::cat(vec![input.clone(), input], 0)
        } else {
            input
        };
        let n = input.dims()[0];
        let t_batch = Tensor::<1>::from_data(TensorData::new(vec![t as f32; n], [n]), device);
        // Guidance and the sampler's arithmetic run in f32 whatever the model's precision.
        let out = sd
            .unet
            .forward_with(input, t_batch, conditioning.context.clone(), added.as_ref())
            .cast(DType::F32);
        let out = if guided {
            let [uncond, text] = out.chunk(2, 0).try_into().expect("two halves");
            uncond.clone() + (text - uncond).mul_scalar(r.guidance)
        } else {
            out
        };
        let noise = sampler.needs_noise().then(|| draw(&mut generators));
        latents = sampler.step(out, i, latents, noise);
        progress(i + 1, timesteps.len());
    }
    Ok(latents)
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
