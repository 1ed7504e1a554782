//! Stage 3: the U-Net, trained from scratch on cached latents with the denoising loss of DDPM
//! (uniform timesteps; Ho et al. 2020, LDM section 3.3) towards the config's target
//! (v-prediction by default, see `architecture::scheduler_json`), conditioned on the world's
//! captions (10% empty, for classifier-free guidance) through the text stage's encoder, which
//! stays frozen (`text_stage.rs` says why).

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use invert_model::clip::{CLIPTextConfig, CLIPTextModel};
use invert_model::pipeline::noise::NoiseGenerator;
use invert_model::schedulers::{NoiseSchedule, NoiseScheduleConfig};
use invert_model::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use invert_model::vae::AutoencoderKL;
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::safetensors_write::write_atomic;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{State, load_module, save_module, save_state};
use super::picture_words::{PictureEncoder, encoder_for, insert_word, mean_row_norm};
use super::text_stage::{self, CaptionReader};
use super::{PretrainConfig, PretrainError, Progress};
use crate::world::{self, Scene};

/// Seed offset of the diffusion stage's pictures and batches.
const DIFFUSION_STREAM: u64 = 0x4449_4646;
/// Pictures encoded per VAE call while caching.
const ENCODE_BATCH: usize = 256;

/// The networks of the stage: the U-Net (trained), the text encoder (frozen) and, with picture
/// words, their encoder (trained, not exported).
#[derive(Module, Debug)]
pub struct Denoiser {
    pub unet: UNet2DConditionModel,
    pub text_encoder: CLIPTextModel,
    pub picture: Option<PictureEncoder>,
}

impl Denoiser {
    /// Denoising loss (mean squared error to the schedule's target) of one batch; ids at or
    /// above the vocabulary size stand for rows of `extra` (picture words). `cell_weights`
    /// (`[n, 1, h, w]`) weighs each latent cell's error (a weighted mean per picture).
    #[allow(clippy::too_many_arguments)]
    pub fn loss(
        &self,
        schedule: &NoiseSchedule,
        latents: Tensor<4>,
        noise: Tensor<4>,
        timesteps: &[usize],
        ids: Tensor<2, Int>,
        extra: Option<Tensor<2>>,
        min_snr_gamma: Option<f64>,
        cell_weights: Option<Tensor<4>>,
    ) -> Tensor<1> {
        let device = latents.device();
        let noisy = schedule.add_noise(latents.clone(), noise.clone(), timesteps);
        let target = schedule.target(latents, noise, timesteps);
        let context = self.text_encoder.forward(ids, extra.as_ref(), 1);
        let t: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
        let t = Tensor::<1>::from_data(TensorData::new(t, [timesteps.len()]), &device);
        let pred = self.unet.forward(noisy, t, context);
        let n = timesteps.len();
        let per_sample = per_picture_error((pred - target).powf_scalar(2.0), cell_weights);
        match min_snr_gamma {
            // Min-SNR weighting (Hang et al. 2023): low-noise steps, which teach texture, weigh
            // less; high-noise steps, where the prompt decides the layout, keep full weight.
            Some(gamma) => {
                let w = schedule.min_snr_weights(timesteps, gamma as f32);
                (per_sample * Tensor::<1>::from_data(TensorData::new(w, [n]), &device)).mean()
            }
            None => per_sample.mean(),
        }
    }
}

/// Mean of `squared` errors `[n, c, h, w]` per picture, weighted per cell by `weights`
/// (`[n, 1, h, w]`, the same for every channel) when given.
fn per_picture_error(squared: Tensor<4>, weights: Option<Tensor<4>>) -> Tensor<1> {
    let n = squared.dims()[0];
    let mean = |t: Tensor<4>| t.reshape([n as i32, -1]).mean_dim(1).reshape([n]);
    match weights {
        Some(w) => mean(squared * w.clone()) / mean(w),
        None => mean(squared),
    }
}

/// The scenes whose latents are cached (picture `i` of the diffusion stream).
pub fn cached_scene(config: &PretrainConfig, index: usize) -> Scene {
    world::sample(config.seed ^ DIFFUSION_STREAM, index as u64).0
}

fn latents_path(work: &std::path::Path) -> std::path::PathBuf {
    work.join("latents.f32")
}

/// Encodes the stage's pictures once (posterior means, unscaled) and returns them flat,
/// `[latent_pictures, c, h, w]`; kept in `work/latents.f32` for a resumed run.
pub fn cache_latents(
    config: &PretrainConfig,
    vae: &AutoencoderKL,
    work: &std::path::Path,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, PretrainError> {
    let a = &config.architecture;
    let per = a.latent_channels * a.latent_size() * a.latent_size();
    let path = latents_path(work);
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.len() == config.latent_pictures * per * 4
    {
        return Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect());
    }
    let mut out = Vec::with_capacity(config.latent_pictures * per);
    let mut start = 0;
    while start < config.latent_pictures {
        let end = (start + ENCODE_BATCH).min(config.latent_pictures);
        let scenes: Vec<Scene> = (start..end).map(|i| cached_scene(config, i)).collect();
        let images = world::pictures_tensor(&scenes, a.image_size, device);
        let mean = vae.encode(images).mean;
        out.extend(mean.into_data().try_to_vec::<f32>().expect("f32 latents"));
        start = end;
        progress(Progress {
            stage: "encode",
            step: end,
            total: config.latent_pictures,
            loss: 0.0,
        });
    }
    let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(&path, &bytes, true).map_err(|e| PretrainError::File {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(out)
}

/// `1 / std` of the latents, so scaled latents have unit variance (how LDM chose SD's 0.18215).
pub fn scaling_factor(latents: &[f32]) -> f64 {
    let n = latents.len() as f64;
    let mean = latents.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = latents
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    1.0 / var.sqrt().max(1e-6)
}

pub fn weights_path(work: &std::path::Path) -> std::path::PathBuf {
    work.join("denoiser.safetensors")
}

/// One step's batch: latent indices, captions, timesteps and the noise seed.
pub struct StepBatch {
    pub indices: Vec<usize>,
    pub captions: Vec<String>,
    pub timesteps: Vec<usize>,
    pub noise_seed: u64,
    /// Per caption, where a picture word goes (`picture_words::insert_word`), if it gets one.
    pub picture_draws: Vec<Option<f64>>,
}

pub fn step_batch(config: &PretrainConfig, step: usize, train_timesteps: usize) -> StepBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ DIFFUSION_STREAM);
    rng.set_stream(step as u64 + 1);
    let indices: Vec<usize> = (0..config.diffusion_batch)
        .map(|_| rng.random_range(0..config.latent_pictures))
        .collect();
    let captions: Vec<String> = indices
        .iter()
        .map(|&i| world::caption(&cached_scene(config, i), &mut rng))
        .collect();
    let timesteps = (0..config.diffusion_batch)
        .map(|_| rng.random_range(0..train_timesteps))
        .collect();
    let noise_seed = rng.random();
    // drawn last, so a run without picture words sees the batches it always saw; empty
    // captions (the unconditional case of guidance) never get one
    let picture_draws = captions
        .iter()
        .map(|c| {
            let (gets, draw) = (rng.random::<f64>(), rng.random::<f64>());
            (config.picture_words > 0.0 && !c.is_empty() && gets < config.picture_words)
                .then_some(draw)
        })
        .collect();
    StepBatch {
        indices,
        captions,
        timesteps,
        noise_seed,
        picture_draws,
    }
}

/// Per cached picture of the batch, 1 on the latent cells showing only background and
/// `object_weight` on those the object touches (`[n, 1, s, s]`); none for plain MSE.
fn object_weights(
    config: &PretrainConfig,
    indices: &[usize],
    cells: usize,
    device: &Device,
) -> Option<Tensor<4>> {
    if config.object_weight == 1.0 {
        return None;
    }
    let k = config.object_weight as f32;
    let w: Vec<f32> = indices
        .iter()
        .flat_map(|&i| world::render::object_mask(&cached_scene(config, i), cells))
        .map(|m| 1.0 + (k - 1.0) * m)
        .collect();
    Some(Tensor::from_data(
        TensorData::new(w, [indices.len(), 1, cells, cells]),
        device,
    ))
}

/// Ids with each drawn caption's picture word inserted (id `vocab_size + i` for caption `i`),
/// and the picture words (one row per caption) when any caption got one.
fn with_picture_words(
    model: &Denoiser,
    ids: Tensor<2, Int>,
    latents: &Tensor<4>,
    draws: &[Option<f64>],
    (eos, norm): (u32, f32),
) -> (Tensor<2, Int>, Option<Tensor<2>>) {
    let Some(encoder) = &model.picture else {
        return (ids, None);
    };
    if draws.iter().all(Option::is_none) {
        return (ids, None);
    }
    let [n, len] = ids.dims();
    let device = ids.device();
    let vocab_size = model.text_encoder.vocab_size() as i64;
    let mut rows: Vec<i64> = ids.into_data().iter::<i64>().collect();
    for (i, draw) in draws.iter().enumerate() {
        if let Some(draw) = *draw {
            let mut row = rows[i * len..(i + 1) * len].to_vec();
            insert_word(&mut row, eos as i64, draw, vocab_size + i as i64);
            rows[i * len..(i + 1) * len].copy_from_slice(&row);
        }
    }
    let ids = Tensor::from_data(TensorData::new(rows, [n, len]), &device);
    (ids, Some(encoder.forward(latents.clone(), norm)))
}

/// Trains (or finishes training) the U-Net; returns it and the text encoder on the plain device.
#[allow(clippy::too_many_arguments)]
pub fn run(
    config: &PretrainConfig,
    (te_config, unet_config): (&CLIPTextConfig, &UNet2DConditionConfig),
    vocab: &Vocabulary,
    latents: &[f32],
    scaling: f64,
    work: &std::path::Path,
    state: &mut State,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Denoiser, PretrainError> {
    let train_device = device.clone().autodiff();
    train_device.seed(config.seed);
    let a = &config.architecture;
    // the text stage's encoder, frozen (no gradient, not in the optimiser), as SD's CLIP
    let text_encoder = match &config.init_from {
        Some(_) => te_config.init(&train_device),
        None => {
            let mut reader = CaptionReader::new(te_config, &train_device);
            load_module(&mut reader, &text_stage::weights_path(work))?;
            reader.text_encoder
        }
    };
    let mut model = Denoiser {
        unet: unet_config.init(&train_device),
        text_encoder,
        picture: encoder_for(config, &train_device),
    };
    let path = weights_path(work);
    if state.diffusion_step > 0 {
        load_module(&mut model, &path)?;
    } else if let Some(root) = &config.init_from {
        super::base_model::load_denoiser(root, a, &mut model.unet, &mut model.text_encoder)?;
    }
    model.text_encoder = model.text_encoder.no_grad();
    let picture_word = (
        vocab.first.tokenizer.eos_id(),
        mean_row_norm(
            model
                .text_encoder
                .text_model
                .embeddings
                .token_embedding
                .weight
                .val(),
        ),
    );
    if state.diffusion_done {
        return Ok(model.valid());
    }
    let schedule = NoiseScheduleConfig::from_json(&super::architecture::scheduler_json(config))
        .expect("the bundled scheduler config parses")
        .init();
    let (c, s) = (a.latent_channels, a.latent_size());
    let per = c * s * s;
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    let first = state.diffusion_step;
    for step in first..config.diffusion_steps {
        let b = step_batch(config, step, schedule.num_train_timesteps());
        let n = b.indices.len();
        let mut x = Vec::with_capacity(n * per);
        for &i in &b.indices {
            x.extend(
                latents[i * per..(i + 1) * per]
                    .iter()
                    .map(|v| (*v as f64 * scaling) as f32),
            );
        }
        let x = Tensor::<4>::from_data(TensorData::new(x, [n, c, s, s]), &train_device);
        let noise = NoiseGenerator::new(b.noise_seed).tensor([n, c, s, s], &train_device);
        let (ids, _) = vocab
            .encode(&b.captions, &train_device)
            .map_err(|e| PretrainError::Config(format!("a caption did not tokenize: {e}")))?;
        let (ids, extra) = with_picture_words(&model, ids, &x, &b.picture_draws, picture_word);
        let loss = model.loss(
            &schedule,
            x,
            noise,
            &b.timesteps,
            ids,
            extra,
            config.min_snr_gamma,
            object_weights(config, &b.indices, s, &train_device),
        );
        let value = loss.clone().into_scalar::<f32>();
        if !value.is_finite() {
            return Err(PretrainError::Config(format!(
                "the denoising loss became {value} at step {}; lower diffusion_lr",
                step + 1
            )));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = config.lr_at(config.diffusion_lr, step, config.diffusion_steps, first);
        model = optim.step(lr, model, grads);
        let done = step + 1;
        progress(Progress {
            stage: "diffusion",
            step: done,
            total: config.diffusion_steps,
            loss: value,
        });
        if done % config.checkpoint_every == 0 || done == config.diffusion_steps {
            save_module(&model, &path)?;
            state.diffusion_step = done;
            state.diffusion_done = done == config.diffusion_steps;
            save_state(work, state)?;
        }
    }
    state.diffusion_done = true;
    save_state(work, state)?;
    Ok(model.valid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn object_weights_scale_the_cells_the_object_touches() {
        let device = Device::flex();
        let config = PretrainConfig::default();
        assert!(object_weights(&config, &[0, 1], 16, &device).is_none());
        let config = PretrainConfig {
            object_weight: 4.0,
            ..config
        };
        let w = object_weights(&config, &[0, 1], 16, &device).unwrap();
        assert_eq!(w.dims(), [2, 1, 16, 16]);
        let values: Vec<f32> = w.into_data().try_to_vec::<f32>().unwrap();
        for (p, cells) in values.chunks(256).enumerate() {
            let mask = world::render::object_mask(&cached_scene(&config, p), 16);
            let want: Vec<f32> = mask.iter().map(|m| 1.0 + 3.0 * m).collect();
            assert_eq!(cells, want.as_slice(), "picture {p}");
            assert!(cells.contains(&4.0) && cells.contains(&1.0));
        }
    }

    #[test]
    fn weighted_error_is_a_weighted_mean_per_picture() {
        let device = Device::flex();
        let sq = Tensor::<4>::random([2, 3, 4, 4], Distribution::Uniform(0.0, 1.0), &device);
        let plain = per_picture_error(sq.clone(), None);
        // uniform weights of any size leave the plain mean
        let uniform = per_picture_error(sq.clone(), Some(Tensor::full([2, 1, 4, 4], 7.0, &device)));
        let close = |a: Tensor<1>, b: Tensor<1>| {
            let d: Vec<f32> = (a - b).abs().into_data().try_to_vec().unwrap();
            d.iter().all(|v| *v < 1e-5)
        };
        assert!(close(plain.clone(), uniform));
        // all the weight on one cell: that cell's mean over channels
        let mut w = vec![0f32; 2 * 16];
        w[5] = 1.0;
        w[16 + 10] = 2.0;
        let w = Tensor::from_data(TensorData::new(w, [2, 1, 4, 4]), &device);
        let one = per_picture_error(sq.clone(), Some(w));
        let v: Vec<f32> = sq.into_data().try_to_vec().unwrap();
        let cell = |p: usize, i: usize| (0..3).map(|c| v[p * 48 + c * 16 + i]).sum::<f32>() / 3.0;
        let want =
            Tensor::<1>::from_data(TensorData::new(vec![cell(0, 5), cell(1, 10)], [2]), &device);
        assert!(close(one, want));
    }
}
