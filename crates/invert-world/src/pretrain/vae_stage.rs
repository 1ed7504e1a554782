//! Stage 1: the autoencoder (`AutoencoderKL`) on rendered pictures. Loss per pixel L1 + MSE,
//! L1 of its spatial differences,
//! plus a small KL term towards N(0, 1) (LDM's KL-regularised autoencoder, Rombach et al. 2022
//! section 3, without the perceptual and adversarial terms, which a flat-colour world does not
//! need).

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;
use invert_model::vae::{AutoencoderKL, AutoencoderKLConfig};
use rand::SeedableRng;

use super::checkpoint::{State, load_module, save_module, save_state};
use super::{PretrainConfig, PretrainError, Progress};
use crate::world::{self, Scene};

/// Seed offset of the VAE stage's pictures (disjoint from the diffusion stage's).
const VAE_STREAM: u64 = 0x5641_4500;

pub fn weights_path(work: &std::path::Path) -> std::path::PathBuf {
    work.join("vae.safetensors")
}

/// The pictures of one VAE step.
fn batch(config: &PretrainConfig, step: usize) -> Vec<Scene> {
    (0..config.vae_batch)
        .map(|i| {
            world::sample(
                config.seed ^ VAE_STREAM,
                (step * config.vae_batch + i) as u64,
            )
            .0
        })
        .collect()
}

/// The loss of `model` on `images` with posterior noise `noise`: (total, L1 part).
pub fn loss(
    model: &AutoencoderKL,
    images: Tensor<4>,
    noise: Tensor<4>,
    kl_weight: f64,
) -> (Tensor<1>, Tensor<1>) {
    let posterior = model.encode(images.clone());
    let z = posterior.sample_with(noise);
    let out = model.decode(z);
    let diff = out - images;
    let l1 = diff.clone().abs().mean();
    let mse = diff.clone().powf_scalar(2.0).mean();
    // L1 of the error's finite differences: weighs edges, stripes and outlines, which cover few
    // pixels of a flat-colour picture but carry its shapes and patterns.
    let [_, _, h, w] = diff.dims();
    let dx =
        diff.clone().slice(s![.., .., .., 1..w]) - diff.clone().slice(s![.., .., .., 0..w - 1]);
    let dy = diff.clone().slice(s![.., .., 1..h, ..]) - diff.slice(s![.., .., 0..h - 1, ..]);
    let edges = dx.abs().mean() + dy.abs().mean();
    let var = posterior.logvar.clone().exp();
    let kl = (posterior.mean.powf_scalar(2.0) + var - posterior.logvar)
        .sub_scalar(1.0)
        .mul_scalar(0.5)
        .mean();
    (l1.clone() + mse + edges + kl.mul_scalar(kl_weight), l1)
}

/// Trains (or finishes training) the VAE; returns it on the plain device.
pub fn run(
    config: &PretrainConfig,
    vae_config: &AutoencoderKLConfig,
    work: &std::path::Path,
    state: &mut State,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<AutoencoderKL, PretrainError> {
    let train_device = device.clone().autodiff();
    let mut model = vae_config.init(&train_device);
    let path = weights_path(work);
    if state.vae_step > 0 {
        load_module(&mut model, &path)?;
    }
    if state.vae_done {
        return Ok(model.valid());
    }
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let first = state.vae_step;
    let size = config.architecture.image_size;
    let latent = config.architecture.latent_size();
    let z = config.architecture.latent_channels;
    for step in first..config.vae_steps {
        let images = world::pictures_tensor(&batch(config, step), size, &train_device);
        let mut rng =
            rand_chacha::ChaCha8Rng::seed_from_u64(config.seed ^ VAE_STREAM ^ step as u64);
        let noise_seed: u64 = rand::Rng::random(&mut rng);
        train_device.seed(noise_seed);
        let noise = Tensor::random(
            [config.vae_batch, z, latent, latent],
            Distribution::Normal(0.0, 1.0),
            &train_device,
        );
        let (total, l1) = loss(&model, images, noise, config.vae_kl_weight);
        let l1 = l1.into_scalar::<f32>();
        let grads = GradientsParams::from_grads(total.backward(), &model);
        let lr = config.lr_at(config.vae_lr, step, config.vae_steps, first);
        model = optim.step(lr, model, grads);
        let done = step + 1;
        progress(Progress {
            stage: "vae",
            step: done,
            total: config.vae_steps,
            loss: l1,
        });
        if !l1.is_finite() {
            return Err(PretrainError::Config(format!(
                "the VAE loss became {l1} at step {done}; lower vae_lr"
            )));
        }
        if done % config.checkpoint_every == 0 || done == config.vae_steps {
            save_module(&model, &path)?;
            state.vae_step = done;
            state.vae_done = done == config.vae_steps;
            save_state(work, state)?;
        }
    }
    state.vae_done = true;
    save_state(work, state)?;
    Ok(model.valid())
}
