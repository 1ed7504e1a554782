//! Null-text inversion (Mokady et al. 2022, "Null-text Inversion for Editing Real Images Using
//! Guided Diffusion Models", arXiv:2211.09794, Algorithm 1), run as the authors' notebook
//! (google/prompt-to-prompt, `null_text_w_ptp.ipynb`, `NullInversion.null_optimization`) does.
//!
//! DDIM inversion at guidance 1 (`ddim_inversion.rs`) gives the pivot trajectory
//! `z*_T, ..., z*_0`. Regenerating from `z*_T` retraces it without guidance, but an edit needs
//! classifier-free guidance, which makes each step drift off the pivot. So for each DDIM step
//! `i` (highest timestep first), from `z_cur` (`z*_T` at the first step), the unconditional
//! ("null-text") embedding is optimised so that the *guided* DDIM step lands on the pivot:
//! `min ||z*_prev - step(z_cur, uncond + w (cond - uncond))||^2`, with a fresh Adam at
//! `lr = 1e-2 (1 - i / 100)`, at most `inner_steps` updates, stopping early once the loss is
//! below `epsilon + i * 2e-5`. The embedding starts from the previous step's optimum (the first
//! from the negative prompt's, "" by default), and `z_cur` then takes the guided step with it.
//! Only the embedding needs a gradient: the model runs on an autodiff device with frozen
//! weights ([`freeze`]), as the textual-inversion trainer does (invert-train's `Trainer`).
//!
//! The loop is `denoise.rs`' (`denoise_with`): the optimisation is its per-step conditioning, so
//! what it returns is the picture regenerated with the optimised embeddings.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;

use super::ddim_inversion::{InvertedImage, ddim_request};
use super::denoise::{Guidance, denoise_with, guided_prediction, init_sampler};
use super::noise::SeededNoise;
use super::prompt_encoding::TextConditioning;
use super::text_to_image::{GenerateError, Request};
use crate::loading::StableDiffusion;
use crate::vocabulary::Vocabulary;

/// How to optimise the null-text embeddings (the notebook's settings by default).
#[derive(Config, Debug, PartialEq)]
pub struct NullTextConfig {
    /// The guidance scale the embeddings are optimised for: the edit's (`GUIDANCE_SCALE`).
    #[config(default = 7.5)]
    pub guidance: f64,
    /// Adam updates per DDIM step at most (`num_inner_steps`).
    #[config(default = 10)]
    pub inner_steps: usize,
    /// A step stops early once its loss is below `early_stop_epsilon + i * 2e-5`
    /// (`early_stop_epsilon`).
    #[config(default = 1e-5)]
    pub early_stop_epsilon: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum NullTextError {
    #[error(
        "null-text inversion optimises the unconditional half of classifier-free guidance, so it \
         needs --cfg above 1 (got {0})"
    )]
    Guidance(f64),
    #[error(
        "null-text inversion needs gradients: load the model on an autodiff device \
         (`device.autodiff()`)"
    )]
    NotAutodiff,
    #[error("null-text inversion supports SD 1.x/2.x models (one text encoder); this is SDXL")]
    Sdxl,
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

/// The optimised embeddings and what the optimisation did.
#[derive(Debug, Clone)]
pub struct NullTextInversion {
    /// One unconditional embedding `[1, 77, d]` per DDIM step, highest timestep first (the
    /// notebook's `uncond_embeddings_list`), for `edit_latents_with_nulls`.
    pub null_embeddings: Vec<Tensor<3>>,
    /// The picture regenerated with them at the config's guidance (unscaled latents, like
    /// `sample_latents`' output): the reconstruction.
    pub latents: Tensor<4>,
    /// Each DDIM step's loss at its last Adam update.
    pub losses: Vec<f32>,
    /// Adam updates run at each DDIM step (fewer than `inner_steps` when stopped early).
    pub updates: Vec<usize>,
}

/// The model with every weight frozen, for a device where only the null-text embedding
/// requires a gradient (no gradient buffers for the weights).
pub fn freeze(sd: StableDiffusion) -> StableDiffusion {
    StableDiffusion {
        text_encoder: sd.text_encoder.no_grad(),
        text_encoder_2: sd.text_encoder_2.map(|te| te.no_grad()),
        unet: sd.unet.no_grad(),
        vae: sd.vae.no_grad(),
        ..sd
    }
}

/// The first loss scale tried for an f16 model's backward pass: as in the trainer
/// (invert-train's `Trainer::gradient_of`), gradients this small flush to zero in f16 unless the
/// loss is scaled up; a scale that overflows is divided by 16 until the gradient is finite.
const F16_LOSS_SCALE: f64 = 65536.0;

/// The notebook's learning rate for DDIM step `i`: `1e-2 * (1 - i / 100)`.
pub fn learning_rate(i: usize) -> f64 {
    1e-2 * (1.0 - i as f64 / 100.0)
}

/// The loss below which step `i` stops early: `epsilon + i * 2e-5` (later, noisier-to-cleaner
/// steps tolerate more).
pub fn early_stop_threshold(epsilon: f64, i: usize) -> f64 {
    epsilon + i as f64 * 2e-5
}

/// `torch.optim.Adam` with its defaults (betas 0.9 and 0.999, eps 1e-8, no weight decay), the
/// notebook's optimiser, for one tensor. The notebook makes a fresh one per DDIM step.
#[derive(Debug, Clone)]
pub struct Adam {
    lr: f64,
    step: i32,
    moments: Option<(Tensor<3>, Tensor<3>)>,
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            step: 0,
            moments: None,
        }
    }

    /// `param` after one update with gradient `grad` (torch's `_single_tensor_adam`:
    /// `param -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`).
    pub fn step(&mut self, param: Tensor<3>, grad: Tensor<3>) -> Tensor<3> {
        self.step += 1;
        let (m, v) = match self.moments.take() {
            Some((m, v)) => (m, v),
            None => (grad.zeros_like(), grad.zeros_like()),
        };
        let m = m.mul_scalar(Self::BETA1) + grad.clone().mul_scalar(1.0 - Self::BETA1);
        let v = v.mul_scalar(Self::BETA2) + (grad.clone() * grad).mul_scalar(1.0 - Self::BETA2);
        let bc1 = 1.0 - Self::BETA1.powi(self.step);
        let bc2 = 1.0 - Self::BETA2.powi(self.step);
        let denom = v
            .clone()
            .sqrt()
            .div_scalar(bc2.sqrt())
            .add_scalar(Self::EPS);
        let param = param - (m.clone() / denom).mul_scalar(self.lr / bc1);
        self.moments = Some((m, v));
        param
    }
}

/// Optimises the null-text embeddings for `inverted` (a DDIM inversion at guidance 1, the
/// pivot) and regenerates the picture with them. `sd` must be on an autodiff device, frozen
/// with [`freeze`]; `negative` is the starting embedding's prompt. `progress` is called after
/// each DDIM step with (step, total).
pub fn null_text_inversion(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    inverted: &InvertedImage,
    negative: &str,
    config: &NullTextConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<NullTextInversion, NullTextError> {
    if !(config.guidance.is_finite() && config.guidance > 1.0) {
        return Err(NullTextError::Guidance(config.guidance));
    }
    if sd.text_encoder_2.is_some() {
        return Err(NullTextError::Sdxl);
    }
    let device = inverted.noise().device();
    if !device.is_autodiff() {
        return Err(NullTextError::NotAutodiff);
    }
    let r = Request {
        guidance: config.guidance,
        negative: negative.to_string(),
        ..ddim_request(&inverted.prompt, &inverted.config, inverted.size)
    };
    let encoded = Guidance::encode(sd, vocab, &r, 1, &device)?;
    let [uncond, cond]: [Tensor<3>; 2] = encoded
        .conditioning
        .context
        .chunk(2, 0)
        .try_into()
        .expect("guided: two halves");
    let single = |context: Tensor<3>, scale: f64| Guidance {
        conditioning: TextConditioning {
            context,
            text_embeds: None,
        },
        added: None,
        scale,
    };
    // DDIM (eta 0) on the inversion's timesteps, highest first; a second copy takes the
    // differentiable step inside the loss (DDIM's step keeps no state).
    let mut sampler = init_sampler(sd, &r)?;
    let mut loss_step = init_sampler(sd, &r)?;
    let steps = inverted.config.steps;
    let pivots = &inverted.latents_per_step;
    let mut out = NullTextInversion {
        null_embeddings: Vec::with_capacity(steps),
        latents: inverted.noise().clone(),
        losses: Vec::with_capacity(steps),
        updates: Vec::with_capacity(steps),
    };
    // The embedding and Adam's moments stay in f32 whatever the model's precision (in f16,
    // Adam's eps is 0 and `m / sqrt(v)` is NaN where a gradient is 0); the U-Net gets a cast.
    let model_dtype = cond.dtype();
    let mut null = uncond.cast(DType::F32).detach();
    let latents = denoise_with(
        sd,
        &mut sampler,
        inverted.noise().clone(),
        0,
        // DDIM at eta 0 draws no noise.
        &mut SeededNoise::new(0, 1),
        |i, t, latent_cur| {
            let target = pivots[steps - i - 1].clone();
            let eps_cond = guided_prediction(sd, &single(cond.clone(), 1.0), latent_cur.clone(), t);
            let mut adam = Adam::new(learning_rate(i));
            let threshold = early_stop_threshold(config.early_stop_epsilon, i);
            let (mut loss_value, mut updates) = (f32::NAN, 0);
            let mut loss_scale = if model_dtype == DType::F16 {
                F16_LOSS_SCALE
            } else {
                1.0
            };
            while updates < config.inner_steps {
                let leaf = null.clone().require_grad();
                let context = leaf.clone().cast(model_dtype);
                let eps_uncond =
                    guided_prediction(sd, &single(context, 1.0), latent_cur.clone(), t);
                let eps = eps_uncond.clone()
                    + (eps_cond.clone() - eps_uncond).mul_scalar(config.guidance);
                let prev = loss_step.step(eps, i, latent_cur.clone(), None);
                let diff = prev - target.clone();
                let loss = (diff.clone() * diff).mean();
                loss_value = loss.clone().into_scalar::<f32>();
                let grads = loss.mul_scalar(loss_scale).backward();
                let grad = leaf
                    .grad(&grads)
                    .expect("the null-text embedding takes part in the loss")
                    .cast(DType::F32)
                    .div_scalar(loss_scale);
                if loss_scale > 1.0 && !finite(&grad) {
                    loss_scale /= 16.0;
                    continue;
                }
                null = Tensor::from_inner(adam.step(null.clone().inner(), grad));
                updates += 1;
                // The notebook checks the loss of the update just taken, after taking it.
                if f64::from(loss_value) < threshold {
                    break;
                }
            }
            out.null_embeddings.push(null.clone().cast(model_dtype));
            out.losses.push(loss_value);
            out.updates.push(updates);
            progress(i + 1, steps);
            let context = Tensor::cat(vec![null.clone().cast(model_dtype), cond.clone()], 0);
            single(context, config.guidance)
        },
        |_, _| {},
    );
    out.latents = latents;
    Ok(out)
}

fn finite(t: &Tensor<3>) -> bool {
    f64::from(t.clone().abs().max().into_scalar::<f32>()).is_finite()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_and_early_stop_follow_the_notebook() {
        assert_eq!(learning_rate(0), 1e-2);
        assert!((learning_rate(49) - 0.0051).abs() < 1e-15);
        assert_eq!(early_stop_threshold(1e-5, 0), 1e-5);
        assert!((early_stop_threshold(1e-5, 10) - 2.1e-4).abs() < 1e-15);
    }

    /// torch.optim.Adam(lr=0.1) on p = [1, -2] with gradients g1 = [0.5, -1], g2 = [0.2, 3]:
    /// the first step moves each element by lr * sign(g) (m_hat / sqrt(v_hat) = +-1), the
    /// second by lr * m_hat / sqrt(v_hat) computed by hand below.
    #[test]
    fn adam_matches_torch() {
        let device = Device::flex();
        let t =
            |v: [f32; 2]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [1, 1, 2]), &device);
        let mut adam = Adam::new(0.1);
        let p = adam.step(t([1.0, -2.0]), t([0.5, -1.0]));
        let got = p.clone().into_data().try_to_vec::<f32>().unwrap();
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6,
            "{got:?}"
        );
        let p = adam.step(p, t([0.2, 3.0]));
        let want: Vec<f64> = [(0.9f64, 0.5f64, 0.2f64), (-1.9, -1.0, 3.0)]
            .iter()
            .map(|&(p, g1, g2)| {
                let m = 0.9 * 0.1 * g1 + 0.1 * g2;
                let v = 0.999 * 0.001 * g1 * g1 + 0.001 * g2 * g2;
                let (bc1, bc2) = (1.0 - 0.81, 1.0 - 0.999f64.powi(2));
                p - 0.1 / bc1 * m / ((v.sqrt() / bc2.sqrt()) + 1e-8)
            })
            .collect();
        let got = p.into_data().try_to_vec::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }
}
