//! What every generation mode shares: the text conditioning with classifier-free guidance, and
//! the denoising loop (diffusers' `StableDiffusionPipeline.__call__` steps 3 and 8; the img2img
//! pipelines run the same loop over `timesteps[t_start:]`). Text-to-image starts it at step 0
//! from noise, image-to-image at a later step from a noised picture.

use burn::prelude::*;
use burn::tensor::DType;

use super::noise::NoiseSource;
use super::prompt_encoding::{
    LearnedRows, TextConditioning, encode_weighted_prompt, sdxl_time_ids, time_ids_tensor,
};
use super::text_to_image::{GenerateError, Request};
use crate::loading::StableDiffusion;
use crate::schedulers::{NoiseScheduleConfig, Sampler};
use crate::unet::AddedConditions;
use crate::vocabulary::Vocabulary;

/// What the U-Net is conditioned on at every step of one batch, and the guidance scale.
#[derive(Debug, Clone)]
pub struct Guidance {
    /// `[negative; prompt]` (each repeated per image) when guided, else the prompt's.
    pub conditioning: TextConditioning,
    /// SDXL's pooled text embeddings and micro-conditioning, one row per model input.
    pub added: Option<AddedConditions>,
    /// Classifier-free guidance scale; guidance runs when it is above 1 (diffusers'
    /// `do_classifier_free_guidance`).
    pub scale: f64,
}

impl Guidance {
    pub fn guided(&self) -> bool {
        self.scale > 1.0
    }

    /// Encodes `r`'s prompt and negative prompt for `count` images (`encode_prompt` in
    /// diffusers; prompts in A1111's syntax, see `prompt_encoding.rs`). SDXL's time ids get the
    /// picture's size as both original and target size, with no crop (diffusers'
    /// `_get_add_time_ids` with its defaults, in text-to-image and img2img alike).
    pub fn encode(
        sd: &StableDiffusion,
        vocab: &Vocabulary,
        r: &Request,
        count: usize,
        device: &Device,
    ) -> Result<Self, GenerateError> {
        let (extra, extra_2) = (vocab.extra(device), vocab.extra_2(device));
        let learned = LearnedRows {
            first: extra.as_ref(),
            second: extra_2.as_ref(),
        };
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
        Ok(Self {
            conditioning,
            added,
            scale: r.guidance,
        })
    }
}

/// The U-Net's output for the model input `input` at timestep `t`, with classifier-free
/// guidance when `guidance` asks for it (`uncond + scale * (cond - uncond)`, both halves in one
/// batch). In f32 whatever the model's precision: guidance and the sampler's arithmetic run in
/// f32.
pub fn guided_prediction(
    sd: &StableDiffusion,
    guidance: &Guidance,
    input: Tensor<4>,
    t: f64,
) -> Tensor<4> {
    let input = if guidance.guided() {
        Tensor::cat(vec![input.clone(), input], 0)
    } else {
        input
    };
    let n = input.dims()[0];
    let t_batch = Tensor::<1>::from_data(TensorData::new(vec![t as f32; n], [n]), &input.device());
    let out = sd
        .unet
        .forward_with(
            input,
            t_batch,
            guidance.conditioning.context.clone(),
            guidance.added.as_ref(),
        )
        .cast(DType::F32);
    if guidance.guided() {
        let [uncond, text] = out.chunk(2, 0).try_into().expect("two halves");
        uncond.clone() + (text - uncond).mul_scalar(guidance.scale)
    } else {
        out
    }
}

/// `r`'s sampler on the model's noise schedule, with `r.steps` timesteps set.
pub fn init_sampler(sd: &StableDiffusion, r: &Request) -> Result<Sampler, GenerateError> {
    let schedule = NoiseScheduleConfig::from_json(&sd.config.scheduler)?;
    let mut sampler = r.sampler.init(&schedule)?;
    sampler.set_timesteps(r.steps)?;
    Ok(sampler)
}

/// Runs `sampler`'s steps `begin_index..` on `latents` (already at the noise level of step
/// `begin_index`): scale the input, predict with the U-Net (both halves at once when guided),
/// apply guidance, step. Ancestral samplers take one tensor from `noise` per step. `progress` is
/// called after each step with (steps done, steps to run). Returns the denoised latents,
/// unscaled, in f32.
pub fn denoise(
    sd: &StableDiffusion,
    guidance: &Guidance,
    sampler: &mut Sampler,
    latents: Tensor<4>,
    begin_index: usize,
    noise: &mut impl NoiseSource,
    progress: impl FnMut(usize, usize),
) -> Tensor<4> {
    denoise_with(
        sd,
        sampler,
        latents,
        begin_index,
        noise,
        |_, _, _| guidance.clone(),
        progress,
    )
}

/// [`denoise`] with the conditioning chosen at each step: `guidance_at(i, t, &latents)` gives
/// step `i`'s (at timestep `t`, from `latents` before `scale_model_input`). Null-text inversion
/// optimises the unconditional embedding of each step there before the step is taken
/// (`null_text_inversion.rs`).
pub fn denoise_with(
    sd: &StableDiffusion,
    sampler: &mut Sampler,
    mut latents: Tensor<4>,
    begin_index: usize,
    noise: &mut impl NoiseSource,
    mut guidance_at: impl FnMut(usize, f64, &Tensor<4>) -> Guidance,
    mut progress: impl FnMut(usize, usize),
) -> Tensor<4> {
    let device = latents.device();
    let shape: [usize; 4] = latents.dims();
    let timesteps: Vec<f64> = sampler.timesteps().to_vec();
    let total = timesteps.len() - begin_index;
    for (i, &t) in timesteps.iter().enumerate().skip(begin_index) {
        let guidance = guidance_at(i, t, &latents);
        let input = sampler.scale_model_input(latents.clone(), i);
        let out = guided_prediction(sd, &guidance, input, t);
        let step_noise = sampler.needs_noise().then(|| noise.draw(shape, &device));
        latents = sampler.step(out, i, latents, step_noise);
        progress(i + 1 - begin_index, total);
    }
    latents
}
