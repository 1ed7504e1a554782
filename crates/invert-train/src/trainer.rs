//! The textual-inversion training loop (Gal et al. 2022, section 4): only the new word's
//! vectors v* are optimised, by the denoising loss of the frozen model,
//! `|| eps - eps_theta(z_t, t, c(y with S*)) ||^2`, with `t` uniform and `y` a template prompt.
//!
//! - The VAE runs once per distinct (image, flip, crop) before the first step: the posterior's
//!   mean and std are cached and a latent is drawn from them at every step.
//! - The text encoder and U-Net are frozen (`no_grad`): no gradient buffers, no optimiser
//!   state; v* is a separate tensor spliced into the embedding lookup.
//! - Every random choice of step `k` (images, flips, templates, timesteps, noise) comes from a
//!   generator seeded with `(seed, k)`, so a resumed run continues bit-exactly from the step
//!   number alone.

use burn::prelude::*;
use burn::tensor::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use invert_model::loading::StableDiffusion;
use invert_model::pipeline::NoiseGenerator;
use invert_model::pipeline::prompt_encoding::{
    LearnedRows, encode_prompts, sdxl_time_ids, time_ids_tensor,
};
use invert_model::schedulers::{NoiseSchedule, NoiseScheduleConfig};
use invert_model::vocabulary::{Init, Vocabulary};

use crate::config::{ScheduleKind, TrainConfig};
use crate::data::{Crop, ImageSet, prepare};
use crate::lr_schedule::LrSchedule;
use crate::norm_guard::{clip_row_norms, median_row_norm};
use crate::optimizer::{OptimizerState, clip_grad_norm};
use crate::templates::Templates;

/// Random crops cached per image and flip when `--crop random` (the VAE runs once per crop).
pub const RANDOM_CROPS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Setup(String),
    #[error(
        "step {step}: the loss is {loss} (not finite). The last good embedding is kept; \
         try a lower learning rate (--lr), gradient clipping (--max-grad-norm 1) or fewer vectors"
    )]
    NonFinite { step: usize, loss: f32 },
}

/// One cached VAE posterior, unscaled, `[4, h, w]`.
#[derive(Debug, Clone)]
struct CachedLatent {
    mean: Vec<f32>,
    std: Vec<f32>,
    /// Alpha loss weight at latent resolution, normalised to mean 1.
    weight: Option<Vec<f32>>,
    image: usize,
    /// SDXL's micro-conditioning for this crop: the image's original size, the crop's corner,
    /// the training resolution.
    time_ids: [f32; 6],
}

/// What a step reports.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    /// Mean L2 norm of the learned vectors after the step.
    pub norm: f32,
    pub grad_norm: f64,
}

/// The inputs of one micro-batch, all derived from (seed, step, micro).
pub struct Batch {
    pub latents: Tensor<4>,
    pub noise: Tensor<4>,
    pub timesteps: Vec<usize>,
    pub prompts: Vec<String>,
    pub weights: Option<Tensor<4>>,
    /// SDXL's `time_ids` per sample (unused by one-encoder models).
    pub time_ids: Vec<[f32; 6]>,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub sd: StableDiffusion,
    pub vocab: Vocabulary,
    /// The ids of the word's vectors (consecutive) in the (first) tokenizer.
    pub ids: Vec<u32>,
    /// v*, row-major `[vectors, width]`, followed for SDXL by its rows for the second text
    /// encoder, `[vectors, width_2]` (one flat vector for the optimiser, whose update is
    /// elementwise, and for the checkpoint).
    pub params: Vec<f32>,
    pub optimizer: OptimizerState,
    /// Steps done.
    pub step: usize,
    pub device: Device,
    schedule: NoiseSchedule,
    templates: Templates,
    captions: Vec<Option<String>>,
    lr: LrSchedule,
    cache: Vec<CachedLatent>,
    latent_shape: [usize; 3],
    /// Indices into `cache` per (image, flip).
    variants: Vec<Vec<usize>>,
    vocab_median_norm: f32,
    /// The same for SDXL's second token table.
    second_median_norm: Option<f32>,
    /// The frozen models' compute dtype (`--precision`).
    model_dtype: DType,
}

/// The first loss scale tried for f16 backward passes (see [`Trainer::gradient_of`]).
const F16_LOSS_SCALE: f64 = 65536.0;

fn seeded(seed: u64, step: usize, micro: usize) -> ChaCha8Rng {
    let mix = seed
        ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    ChaCha8Rng::seed_from_u64(mix)
}

impl Trainer {
    /// Sets up a run: the word and its initial vectors, the templates, and the latent cache.
    /// `sd` must be loaded on `device`, an autodiff device.
    pub fn new(
        config: TrainConfig,
        sd: StableDiffusion,
        images: &ImageSet,
        device: Device,
    ) -> Result<Self, TrainError> {
        config.validate().map_err(TrainError::Setup)?;
        let setup = |e: String| TrainError::Setup(e);
        let sd = StableDiffusion {
            text_encoder: sd.text_encoder.no_grad(),
            text_encoder_2: sd.text_encoder_2.map(|te| te.no_grad()),
            unet: sd.unet.no_grad(),
            vae: sd.vae.no_grad(),
            ..sd
        };
        let mut vocab = Vocabulary::for_model(&sd).map_err(|e| setup(e.to_string()))?;
        let table = sd.text_encoder.text_model.token_table().cast(DType::F32);
        let init_text = config.init_text();
        let init = if init_text == "random" {
            Init::Random(config.seed)
        } else {
            Init::Text(init_text.clone())
        };
        let mut params = vocab
            .init_vectors(&table, &init, config.vectors)
            .map_err(|e| setup(format!("--init {init_text:?}: {e}")))?;
        // SDXL: the word gets rows in the second encoder's table too, initialised the same way
        // from that table (diffusers' textual_inversion_sdxl.py, kohya's sdxl trainer).
        let second = match (&sd.text_encoder_2, &vocab.second) {
            (Some(te2), Some(table_2)) => {
                let weights = te2.text_model.token_table().cast(DType::F32);
                let init = match &init {
                    Init::Random(seed) => Init::Random(seed.wrapping_add(1)),
                    other => other.clone(),
                };
                let rows = table_2
                    .init_vectors(&weights, &init, config.vectors)
                    .map_err(|e| setup(format!("--init {init_text:?}: {e}")))?;
                Some((rows, median_row_norm(weights)))
            }
            _ => None,
        };
        let ids = vocab
            .add_word(
                &config.token,
                &params,
                second.as_ref().map(|(rows, _)| rows.as_slice()),
            )
            .map_err(|e| setup(format!("--token: {e}")))?;
        let vocab_median_norm = median_row_norm(table);
        let second_median_norm = second.as_ref().map(|(_, norm)| *norm);
        if let Some((rows, _)) = second {
            params.extend(rows);
        }

        let templates = match &config.templates {
            Some(path) => Templates::from_file(path).map_err(|e| setup(e.to_string()))?,
            None => Templates::builtin(config.property),
        };
        let schedule_cfg = NoiseScheduleConfig::from_json(&sd.config.scheduler)
            .map_err(|e| setup(format!("scheduler config: {e}")))?;
        let schedule = schedule_cfg.init();
        let base: LrSchedule = config
            .lr
            .parse()
            .map_err(|e: String| setup(format!("--lr: {e}")))?;
        let lr = match (config.lr_schedule, base) {
            (ScheduleKind::Constant, s) => s,
            (ScheduleKind::ConstantWithWarmup, LrSchedule::Constant { lr }) => {
                LrSchedule::ConstantWithWarmup {
                    lr,
                    warmup: config.warmup_steps,
                }
            }
            (ScheduleKind::Cosine, LrSchedule::Constant { lr }) => LrSchedule::Cosine {
                lr,
                warmup: config.warmup_steps,
                total: config.steps,
            },
            (_, LrSchedule::Steps(_)) => {
                return Err(setup(
                    "--lr-schedule applies to a single --lr value, not a step string".into(),
                ));
            }
            (_, other) => other,
        };
        let lr = if config.scale_lr {
            lr.scaled((config.batch_size * config.grad_accum) as f64)
        } else {
            lr
        };

        let f = sd.config.vae.downscale_factor();
        let resolution = config
            .resolution
            .unwrap_or(f * sd.config.unet_sample_size());
        let model_dtype = sd.unet.conv_in.weight.val().dtype();
        let latent_shape = [
            sd.config.vae.latent_channels,
            resolution / f,
            resolution / f,
        ];
        let mut trainer = Self {
            captions: images.images.iter().map(|i| i.caption.clone()).collect(),
            config,
            sd,
            vocab,
            ids,
            params,
            optimizer: OptimizerState::default(),
            step: 0,
            device,
            schedule,
            templates,
            lr,
            cache: Vec::new(),
            latent_shape,
            variants: Vec::new(),
            vocab_median_norm,
            second_median_norm,
            model_dtype,
        };
        trainer.encode_images(images, resolution);
        Ok(trainer)
    }

    /// Runs the VAE once per distinct (image, flip, crop) and keeps the posteriors.
    fn encode_images(&mut self, images: &ImageSet, resolution: usize) {
        let vae = self.sd.vae.clone().valid();
        let device = vae.encoder.conv_in.weight.val().device();
        let crops = if self.config.crop == Crop::Random {
            RANDOM_CROPS
        } else {
            1
        };
        let flips: &[bool] = if self.config.flip {
            &[false, true]
        } else {
            &[false]
        };
        let [c, h, w] = self.latent_shape;
        for (index, image) in images.images.iter().enumerate() {
            for &flip in flips {
                let mut ids = Vec::new();
                for k in 0..crops {
                    let mut rng = seeded(self.config.seed, usize::MAX - index, k);
                    let prepared = prepare(image, resolution, self.config.crop, flip, &mut rng);
                    let pixels = Tensor::<4>::from_data(
                        TensorData::new(prepared.pixels, [1, 3, resolution, resolution]),
                        &device,
                    );
                    let posterior = vae.encode(pixels);
                    let to_vec = |t: Tensor<4>| {
                        t.into_data()
                            .convert::<f32>()
                            .try_to_vec::<f32>()
                            .expect("f32")
                    };
                    let weight = prepared
                        .weight
                        .map(|wgt| latent_weight(&wgt, resolution, h, w));
                    ids.push(self.cache.len());
                    self.cache.push(CachedLatent {
                        mean: to_vec(posterior.mean.clone()),
                        std: to_vec(posterior.std()),
                        weight,
                        image: index,
                        time_ids: sdxl_time_ids(
                            prepared.original_size,
                            prepared.crop_top_left,
                            [resolution, resolution],
                        ),
                    });
                }
                self.variants.push(ids);
            }
        }
        debug_assert!(self.cache.iter().all(|e| e.mean.len() == c * h * w));
    }

    /// How many VAE encodings the cache holds.
    pub fn cached_latents(&self) -> usize {
        self.cache.len()
    }

    /// The inputs of micro-batch `micro` of step `step`.
    pub fn batch(&self, step: usize, micro: usize) -> Batch {
        let mut rng = seeded(self.config.seed, step, micro);
        let mut noise_rng = NoiseGenerator::new(rng.random());
        let [c, h, w] = self.latent_shape;
        let n = self.config.batch_size;
        let sf = self.sd.vae.scaling_factor as f32;
        let (mut latents, mut noise, mut timesteps, mut prompts, mut weights) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut time_ids = Vec::new();
        let any_weight = self.cache.iter().any(|e| e.weight.is_some());
        for _ in 0..n {
            let variant = &self.variants[rng.random_range(0..self.variants.len())];
            let entry = &self.cache[variant[rng.random_range(0..variant.len())]];
            for i in 0..c * h * w {
                latents.push((entry.mean[i] + entry.std[i] * noise_rng.normal() as f32) * sf);
            }
            for _ in 0..c * h * w {
                noise.push(noise_rng.normal() as f32);
            }
            timesteps.push(rng.random_range(0..self.schedule.num_train_timesteps()));
            time_ids.push(entry.time_ids);
            let template = rng.random_range(0..self.templates.len());
            prompts.push(self.templates.render(
                template,
                &self.config.token,
                self.captions[entry.image].as_deref(),
            ));
            if any_weight {
                let wgt = entry.weight.clone().unwrap_or_else(|| vec![1.0; h * w]);
                for _ in 0..c {
                    weights.extend_from_slice(&wgt);
                }
            }
        }
        let t4 =
            |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [n, c, h, w]), &self.device);
        Batch {
            latents: t4(latents),
            noise: t4(noise),
            timesteps,
            prompts,
            weights: any_weight.then(|| t4(weights)),
            time_ids,
        }
    }

    /// The loss of `batch` with learned vectors `v` (laid out as [`Trainer::params`], on the
    /// autodiff device; require a gradient to train). Per-sample MSE, min-SNR and alpha
    /// weighted.
    pub fn loss(&self, v: &Tensor<1>, batch: &Batch) -> Tensor<1> {
        let n = batch.timesteps.len();
        let noisy =
            self.schedule
                .add_noise(batch.latents.clone(), batch.noise.clone(), &batch.timesteps);
        let target =
            self.schedule
                .target(batch.latents.clone(), batch.noise.clone(), &batch.timesteps);
        let (first, second) = self.split_params(v);
        let text = encode_prompts(
            &self.sd,
            &self.vocab,
            &batch.prompts,
            LearnedRows {
                first: Some(&first),
                second: second.as_ref(),
            },
            self.config.clip_skip,
            &self.device,
        )
        .expect("prompts were checked when the word was added");
        let added = text.added(|| time_ids_tensor(&batch.time_ids, &self.device));
        let t = Tensor::<1>::from_data(
            TensorData::new(
                batch
                    .timesteps
                    .iter()
                    .map(|&t| t as f32)
                    .collect::<Vec<_>>(),
                [n],
            ),
            &self.device,
        );
        // The loss is f32 whatever the model's precision (`--precision`).
        let pred = self
            .sd
            .unet
            .forward_with(noisy, t, text.context, added.as_ref())
            .cast(DType::F32);
        let mut err = (pred - target).powf_scalar(2.0);
        if let Some(w) = &batch.weights {
            err = err * w.clone();
        }
        let per_sample = err.reshape([n as i32, -1]).mean_dim(1).reshape([n]);
        let per_sample = match self.config.min_snr_gamma {
            Some(gamma) => {
                let w = self
                    .schedule
                    .min_snr_weights(&batch.timesteps, gamma as f32);
                per_sample * Tensor::<1>::from_data(TensorData::new(w, [n]), &self.device)
            }
            None => per_sample,
        };
        per_sample.mean()
    }

    /// The learned vectors (flat, as [`Trainer::params`]) on the training device.
    pub fn params_tensor(&self) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(self.params.clone(), [self.params.len()]),
            &self.device,
        )
    }

    /// How many of [`Trainer::params`] belong to the first text encoder.
    fn first_len(&self) -> usize {
        self.config.vectors * self.vocab.width()
    }

    /// `v` (flat) as the first encoder's `[vectors, width]` rows and SDXL's second ones.
    fn split_params(&self, v: &Tensor<1>) -> (Tensor<2>, Option<Tensor<2>>) {
        let (n, split) = (self.config.vectors, self.first_len());
        let first = v.clone().slice(0..split).reshape([n, self.vocab.width()]);
        let second = self
            .vocab
            .second_width()
            .map(|w| v.clone().slice(split..split + n * w).reshape([n, w]));
        (first, second)
    }

    /// Gradient of the loss of `batch` times `scale` with respect to v* at the current
    /// `params`, and that scaled loss.
    ///
    /// With an f16 model the backward pass is loss-scaled (Micikevicius et al. 2018, "Mixed
    /// Precision Training"): the per-element gradients of an SD loss are around 1e-4 at the
    /// U-Net's output and smaller inside, below f16's normal range (6e-5), so unscaled they flush
    /// to zero. The scaled gradient is divided back in f32; a scale that overflows is halved
    /// until the gradient is finite. bf16 has f32's range and needs no scale.
    pub fn gradient_of(&self, batch: &Batch, scale: f64) -> (Vec<f32>, f32) {
        let mut loss_scale = if self.model_dtype == DType::F16 {
            F16_LOSS_SCALE
        } else {
            1.0
        };
        loop {
            let v = self.params_tensor().require_grad();
            let loss = self.loss(&v, batch).mul_scalar(scale);
            let value = loss.clone().into_scalar::<f32>();
            let grads = loss.mul_scalar(loss_scale).backward();
            let g: Vec<f32> = v
                .grad(&grads)
                .expect("v* takes part in the loss")
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32");
            if loss_scale > 1.0 && g.iter().any(|x| !x.is_finite()) {
                loss_scale /= 16.0;
                continue;
            }
            let unscale = (1.0 / loss_scale) as f32;
            return (g.into_iter().map(|x| x * unscale).collect(), value);
        }
    }

    /// Gradient of the mean loss over `micro` batches with respect to v*, and that loss.
    pub fn gradient(&self, step: usize) -> (Vec<f32>, f32) {
        let accum = self.config.grad_accum;
        let mut grad = vec![0.0f32; self.params.len()];
        let mut loss_sum = 0.0;
        for micro in 0..accum {
            let (g, loss) = self.gradient_of(&self.batch(step, micro), 1.0 / accum as f64);
            loss_sum += loss;
            grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
        (grad, loss_sum)
    }

    /// One optimisation step.
    pub fn train_step(&mut self) -> Result<StepStats, TrainError> {
        let step = self.step;
        let (mut grad, loss) = self.gradient(step);
        if !loss.is_finite() || grad.iter().any(|g| !g.is_finite()) {
            return Err(TrainError::NonFinite {
                step: step + 1,
                loss,
            });
        }
        let grad_norm = clip_grad_norm(&mut grad, self.config.max_grad_norm);
        let lr = self.lr.lr_at(step);
        self.config
            .optimizer
            .step(&mut self.optimizer, &mut self.params, &grad, lr);
        let width = self.vocab.width();
        if let Some(factor) = self.config.norm_guard {
            let split = self.first_len();
            let (first, second) = self.params.split_at_mut(split);
            let limit = factor as f32 * self.vocab_median_norm;
            clip_row_norms(first, width, limit);
            if let (Some(w2), Some(median)) = (self.vocab.second_width(), self.second_median_norm) {
                clip_row_norms(second, w2, factor as f32 * median);
            }
        }
        self.sync_vocabulary();
        self.step += 1;
        let norm = self.params[..self.first_len()]
            .chunks(width)
            .map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt())
            .sum::<f32>()
            / self.config.vectors as f32;
        Ok(StepStats {
            step: self.step,
            loss,
            lr,
            norm,
            grad_norm,
        })
    }

    /// The vocabulary's median token-vector norm (what `--norm-guard` is relative to).
    pub fn vocab_median_norm(&self) -> f32 {
        self.vocab_median_norm
    }

    /// Restores the state of a resumed run.
    pub fn restore(&mut self, step: usize, params: Vec<f32>, optimizer: OptimizerState) {
        self.step = step;
        self.params = params;
        self.optimizer = optimizer;
        self.sync_vocabulary();
    }

    /// Puts [`Trainer::params`] into the vocabulary (previews and saved files read it there).
    fn sync_vocabulary(&mut self) {
        let (first, second) = self.params.split_at(self.first_len());
        let second = (!second.is_empty()).then_some(second);
        self.vocab.set_vectors(self.ids[0], first, second);
    }

    /// The word's rows for SDXL's second text encoder.
    pub fn second_params(&self) -> Option<&[f32]> {
        let rest = &self.params[self.first_len()..];
        (!rest.is_empty()).then_some(rest)
    }
}

/// Downsamples a `[res, res]` alpha weight to the latent grid by averaging, normalised to mean
/// 1 (A1111's alpha-weighted loss).
fn latent_weight(weight: &[f32], res: usize, h: usize, w: usize) -> Vec<f32> {
    let (fy, fx) = (res / h, res / w);
    let mut out = vec![0.0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for dy in 0..fy {
                for dx in 0..fx {
                    s += weight[(y * fy + dy) * res + x * fx + dx];
                }
            }
            out[y * w + x] = s / (fy * fx) as f32;
        }
    }
    let mean = out.iter().sum::<f32>() / out.len() as f32;
    if mean > 0.0 {
        out.iter_mut().for_each(|v| *v /= mean);
    }
    out
}
