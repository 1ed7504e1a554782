//! Image-to-image ("img2img", SDEdit: Meng et al. 2021, "SDEdit: guided image synthesis and
//! editing with stochastic differential equations") as diffusers'
//! `StableDiffusionImg2ImgPipeline.__call__` does it, and `StableDiffusionXLImg2ImgPipeline`
//! without `denoising_start` (the same `get_timesteps`, the same `prepare_latents` for a base
//! model's VAE):
//!
//! 1. encode the picture with the VAE and draw from its posterior
//!    (`retrieve_latents(vae.encode(image), generator, sample_mode="sample")`), times
//!    `scaling_factor`;
//! 2. `get_timesteps(steps, strength)`: skip the first `t_start = steps - int(steps * strength)`
//!    steps and tell the sampler (`set_begin_index(t_start * order)`; every sampler here has
//!    order 1);
//! 3. noise the latents to the level of the first step run (`scheduler.add_noise(init_latents,
//!    noise, timesteps[:1])`, each sampler's own `add_noise`, see [`Sampler::add_noise`]);
//! 4. the text-to-image denoising loop from there (`denoise.rs`).
//!
//! The random numbers (posterior sample, `add_noise` noise, ancestral steps) come from a
//! [`NoiseSource`] in that order: [`super::SeededNoise`] for invert's seeded images, any other
//! source to replay another tool's numbers (the parity test feeds diffusers invert's generator).
//! Preparing the picture itself (file, size, `[-1, 1]`) is `image_processor.rs`.

use burn::prelude::*;
use burn::tensor::DType;

use super::denoise::{Guidance, denoise, init_sampler};
use super::noise::NoiseSource;
use super::text_to_image::{GenerateError, Request, validate};
use crate::loading::StableDiffusion;
use crate::schedulers::Sampler;
use crate::vae::DiagonalGaussian;
use crate::vocabulary::Vocabulary;

/// The picture to start from and how much of it to repaint.
#[derive(Debug, Clone)]
pub struct ImageToImage {
    /// `[1 or count, 3, height, width]`, RGB in `[-1, 1]` at the request's size (see
    /// `image_processor::preprocess`); one picture is used for every image of the batch.
    pub image: Tensor<4>,
    /// In `(0, 1]`: the fraction of the steps that run, and so how much noise is added first
    /// (1: every step runs from the first step's noise level, which still keeps a trace of the
    /// picture, as in diffusers; near 0: the picture comes back almost unchanged).
    pub strength: f64,
}

/// diffusers' `get_timesteps(num_inference_steps, strength)`: the index of the first step that
/// runs (`t_start`, also the begin index since every sampler here has order 1) and the number
/// of inference steps left (`steps - t_start`; PNDM makes one more model call than that).
pub fn get_timesteps(steps: usize, strength: f64) -> (usize, usize) {
    // `int(num_inference_steps * strength)`: a float product, truncated.
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    let t_start = steps.saturating_sub(init_timestep);
    (t_start, steps - t_start)
}

/// The checks of `strength` that need no model (the CLI runs them before loading one): a
/// number in (0, 1] (diffusers' `check_inputs` takes [0, 1]; 0 runs no step, which diffusers only
/// notices by failing on an empty timestep list), and at least one of `steps` steps runs (`steps`
/// 0 is [`validate`]'s error). Returns `t_start`, the begin index.
pub fn check_strength(strength: f64, steps: usize) -> Result<usize, GenerateError> {
    if !(strength.is_finite() && strength > 0.0 && strength <= 1.0) {
        return Err(GenerateError::Strength(strength));
    }
    let (t_start, remaining) = get_timesteps(steps, strength);
    if remaining == 0 && steps > 0 {
        return Err(GenerateError::NoStepsAtStrength { strength, steps });
    }
    Ok(t_start)
}

/// Checks an img2img request before anything runs: [`validate`]'s checks, then
/// [`check_strength`] and the picture's shape. Returns the latents' shape and the begin index.
pub fn validate_image_to_image(
    sd: &StableDiffusion,
    r: &Request,
    init: &ImageToImage,
    count: usize,
) -> Result<([usize; 4], usize), GenerateError> {
    if r.init_latents.is_some() {
        return Err(GenerateError::InitLatentsAndImage);
    }
    let shape = validate(sd, r, count)?;
    let t_start = check_strength(init.strength, r.steps)?;
    let dims = init.image.dims();
    if !((dims[0] == 1 || dims[0] == count) && dims[1..] == [3, r.height, r.width]) {
        return Err(GenerateError::InitImage {
            found: dims.to_vec(),
            count,
            height: r.height,
            width: r.width,
        });
    }
    Ok((shape, t_start))
}

/// `prepare_latents` of the img2img pipelines: `scaling_factor * posterior.sample()` for each
/// of `count` images (a one-picture posterior is shared, each image drawing its own sample),
/// noised by `sampler` to the level of step `begin_index`. Two draws from `noise`, in
/// diffusers' order: the posterior sample's, then `add_noise`'s. Returns f32.
pub fn prepare_latents(
    sd: &StableDiffusion,
    sampler: &Sampler,
    posterior: &DiagonalGaussian,
    count: usize,
    begin_index: usize,
    noise: &mut impl NoiseSource,
) -> Tensor<4> {
    let f32 = |t: Tensor<4>| t.cast(DType::F32);
    let posterior = DiagonalGaussian {
        mean: f32(posterior.mean.clone()),
        logvar: f32(posterior.logvar.clone()),
    };
    let [n, c, h, w] = posterior.mean.dims();
    let posterior = if n == count {
        posterior
    } else {
        assert_eq!(n, 1, "a posterior for one picture or for every image");
        DiagonalGaussian {
            mean: posterior.mean.repeat_dim(0, count),
            logvar: posterior.logvar.repeat_dim(0, count),
        }
    };
    let shape = [count, c, h, w];
    let device = posterior.mean.device();
    let init_latents = posterior
        .sample_with(noise.draw(shape, &device))
        .mul_scalar(sd.vae.scaling_factor);
    sampler.add_noise(init_latents, noise.draw(shape, &device), begin_index)
}

/// Denoised latents (unscaled, ready for the VAE) for `count` images of `r` made from
/// `init.image`, with random numbers from `noise` (see the module docs for their order).
/// Runs on `init.image`'s device. `progress` is called after each denoising step with (step,
/// steps to run).
pub fn sample_latents_from_image(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    r: &Request,
    init: &ImageToImage,
    count: usize,
    noise: &mut impl NoiseSource,
    progress: impl FnMut(usize, usize),
) -> Result<Tensor<4>, GenerateError> {
    let device = &init.image.device();
    let (_, t_start) = validate_image_to_image(sd, r, init, count)?;
    let mut sampler = init_sampler(sd, r)?;
    sampler.set_begin_index(t_start);
    let guidance = Guidance::encode(sd, vocab, r, count, device)?;
    let posterior = sd.vae.encode(init.image.clone());
    let latents = prepare_latents(sd, &sampler, &posterior, count, t_start, noise);
    Ok(denoise(
        sd,
        &guidance,
        &mut sampler,
        latents,
        t_start,
        noise,
        progress,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_checks() {
        assert_eq!(check_strength(0.6, 10).unwrap(), 4);
        assert_eq!(check_strength(1.0, 10).unwrap(), 0);
        for bad in [0.0, -0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                check_strength(bad, 10),
                Err(GenerateError::Strength(_))
            ));
        }
        assert!(matches!(
            check_strength(0.09, 10),
            Err(GenerateError::NoStepsAtStrength { steps: 10, .. })
        ));
        // No steps at all is `validate`'s error, not this one.
        assert!(check_strength(0.5, 0).is_ok());
    }

    #[test]
    fn get_timesteps_as_diffusers() {
        // init_timestep = min(int(steps * strength), steps); t_start = steps - init_timestep
        assert_eq!(get_timesteps(10, 0.6), (4, 6));
        assert_eq!(get_timesteps(50, 0.75), (13, 37));
        assert_eq!(get_timesteps(10, 1.0), (0, 10));
        // 3 * 0.7 = 2.0999999999999996 in floating point: int() gives 2, not 3
        assert_eq!(get_timesteps(3, 0.7), (1, 2));
        assert_eq!(get_timesteps(10, 0.05), (10, 0));
        assert_eq!(get_timesteps(4, 1.5), (0, 4));
    }
}
