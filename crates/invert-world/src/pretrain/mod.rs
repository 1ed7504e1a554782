//! `invert pretrain`: trains the bundled base model on the procedural world (`world/`), as
//! latent diffusion is trained (Rombach et al. 2022, section 3): first the autoencoder on
//! pictures, then the text encoder on captions (`text_stage.rs`, standing in for SD's pretrained
//! CLIP), then the U-Net on cached latents with the denoising loss, the text encoder frozen. The
//! result is an ordinary diffusers folder (`folder.rs`). A second run may continue a finished
//! one (`init_from`, `base_model.rs`), for example with picture words (`picture_words.rs`) or
//! with the loss weighted towards the object (`object_weight`).
//!
//! Every stage saves a checkpoint (`<out>/work/`) every `checkpoint_every` steps and at its end;
//! a second run with the same config continues where the first stopped. All data derive from
//! the seed and the step, so a resumed run sees the batches an uninterrupted one would; the Adam
//! moments are not saved and restart from zero after a resume (with a short warm-up).

pub mod architecture;
pub mod base_model;
pub mod checkpoint;
pub mod diffusion_stage;
pub mod folder;
pub mod grow_unet;
pub mod picture_words;
pub mod text_stage;
pub mod tokenizer_files;
pub mod vae_stage;

use std::path::{Path, PathBuf};

use invert_model::schedulers::{BetaSchedule, PredictionType};
use serde::{Deserialize, Serialize};

pub use architecture::Architecture;

#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

/// Everything a pretraining run needs (`configs/pretrain/world.toml` holds the defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    pub seed: u64,
    pub architecture: Architecture,
    pub vae_steps: usize,
    pub vae_batch: usize,
    pub vae_lr: f64,
    /// Weight of the KL term (per latent element) against the per-pixel L1 + MSE loss.
    pub vae_kl_weight: f64,
    /// Pictures encoded once for the diffusion stage.
    pub latent_pictures: usize,
    /// The text-encoder stage (`text_stage.rs`): steps, captions per step, learning rate.
    pub text_steps: usize,
    pub text_batch: usize,
    pub text_lr: f64,
    pub diffusion_steps: usize,
    pub diffusion_batch: usize,
    pub diffusion_lr: f64,
    pub warmup_steps: usize,
    /// Min-SNR-gamma weighting of the denoising loss (none: plain MSE).
    pub min_snr_gamma: Option<f64>,
    /// Weight of the latent cells the object touches in the denoising loss, against 1 for the
    /// background's (1: plain MSE). The object's shape and fill are a few cells of a 16x16
    /// latent and the background most of the rest, so plain MSE spends most of its gradient on
    /// what the model already draws (docs/WORLD.md, stage 6: object weight).
    pub object_weight: f64,
    /// What the U-Net learns to predict and the noise schedule; written to
    /// `scheduler/scheduler_config.json` (see [`architecture::scheduler_json`] for why the
    /// defaults differ from SD 1.x's).
    pub prediction_type: PredictionType,
    pub beta_schedule: BetaSchedule,
    pub beta_start: f64,
    pub beta_end: f64,
    pub checkpoint_every: usize,
    /// Share of the non-empty captions that get a picture word in the diffusion stage
    /// (`picture_words.rs` says why); 0 turns them off.
    pub picture_words: f64,
    /// Continue from this diffusers folder (an earlier `invert pretrain` result of the same
    /// architecture, or of one U-Net layer per block fewer, which is grown: `grow_unet.rs`):
    /// its VAE and text encoder are kept, the VAE and text stages skipped, and the diffusion
    /// stage starts from its U-Net (`base_model.rs`).
    pub init_from: Option<PathBuf>,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            architecture: Architecture::default(),
            vae_steps: 800,
            vae_batch: 16,
            vae_lr: 1e-3,
            vae_kl_weight: 1e-4,
            latent_pictures: 24_000,
            text_steps: 400,
            text_batch: 64,
            text_lr: 1e-3,
            diffusion_steps: 6000,
            diffusion_batch: 48,
            diffusion_lr: 8e-4,
            warmup_steps: 100,
            min_snr_gamma: None,
            object_weight: 1.0,
            prediction_type: PredictionType::VPrediction,
            beta_schedule: BetaSchedule::Linear,
            beta_start: 0.0001,
            beta_end: 0.02,
            checkpoint_every: 200,
            picture_words: 0.0,
            init_from: None,
        }
    }
}

impl PretrainConfig {
    pub fn validate(&self) -> Result<(), PretrainError> {
        self.architecture
            .validate()
            .map_err(PretrainError::Config)?;
        let positive = [
            ("vae_batch", self.vae_batch),
            ("text_batch", self.text_batch),
            ("latent_pictures", self.latent_pictures),
            ("diffusion_batch", self.diffusion_batch),
            ("checkpoint_every", self.checkpoint_every),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(PretrainError::Config(format!("{name} must be at least 1")));
            }
        }
        if !(0.0 < self.beta_start && self.beta_start < self.beta_end && self.beta_end < 1.0) {
            return Err(PretrainError::Config(
                "beta_start and beta_end must satisfy 0 < beta_start < beta_end < 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.picture_words) {
            return Err(PretrainError::Config(
                "picture_words is a share of the captions, from 0 to 1".into(),
            ));
        }
        if !(self.object_weight.is_finite() && self.object_weight > 0.0) {
            return Err(PretrainError::Config(
                "object_weight must be a positive number (1: plain MSE)".into(),
            ));
        }
        for (name, lr) in [
            ("vae_lr", self.vae_lr),
            ("text_lr", self.text_lr),
            ("diffusion_lr", self.diffusion_lr),
        ] {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(PretrainError::Config(format!(
                    "{name} must be a positive number"
                )));
            }
        }
        Ok(())
    }

    /// Whether `other` is this config with more diffusion steps (a resumed run may be
    /// extended).
    pub fn extended_by(&self, other: &PretrainConfig) -> bool {
        let same_otherwise = PretrainConfig {
            diffusion_steps: self.diffusion_steps,
            ..other.clone()
        };
        other.diffusion_steps > self.diffusion_steps && same_otherwise == *self
    }

    /// Learning rate at `step` (from `first` after a resume): linear warm-up, then cosine decay
    /// to a tenth.
    pub fn lr_at(&self, base: f64, step: usize, total: usize, first: usize) -> f64 {
        let since = step.saturating_sub(first);
        let warm = ((since + 1) as f64 / self.warmup_steps.max(1) as f64).min(1.0);
        let progress = step as f64 / total.max(1) as f64;
        let cosine = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        base * warm * cosine
    }
}

/// Where a run keeps its state.
pub fn work_dir(out: &Path) -> PathBuf {
    out.join("work")
}

/// What a progress display needs after each step.
#[derive(Debug, Clone)]
pub struct Progress {
    pub stage: &'static str,
    pub step: usize,
    pub total: usize,
    pub loss: f32,
}

/// Writes the diffusers folder `out` from the latest checkpoints of a run that is still going
/// (or was stopped), to look at a model mid-training; the run itself is not touched.
pub fn export_checkpoint(
    config: &PretrainConfig,
    out: &Path,
    device: &burn::prelude::Device,
) -> Result<usize, PretrainError> {
    use invert_model::tokenizer::ClipTokenizer;

    let work = work_dir(out);
    let state = checkpoint::load_state(&work)?;
    let (Some(scaling), true) = (state.scaling_factor, state.diffusion_step > 0) else {
        return Err(PretrainError::Config(format!(
            "{}: the run has no diffusion checkpoint yet",
            work.display()
        )));
    };
    let tok_dir = out.join("tokenizer");
    let tokenizer = ClipTokenizer::from_dir(&tok_dir).map_err(|e| PretrainError::File {
        path: tok_dir.clone(),
        reason: e.to_string(),
    })?;
    let special = (
        tokenizer.vocab_size(),
        tokenizer.bos_id(),
        tokenizer.eos_id(),
    );
    let (te_cfg, unet_cfg, vae_cfg) = config.architecture.configs(special.0);
    let mut vae = vae_cfg.init(device);
    match &config.init_from {
        Some(root) => base_model::load_vae(root, &mut vae)?,
        None => checkpoint::load_module(&mut vae, &vae_stage::weights_path(&work))?,
    }
    let mut denoiser = diffusion_stage::Denoiser {
        unet: unet_cfg.init(device),
        text_encoder: te_cfg.init(device),
        picture: picture_words::encoder_for(config, device),
    };
    checkpoint::load_module(&mut denoiser, &diffusion_stage::weights_path(&work))?;
    folder::write(out, config, special, scaling, &vae, &denoiser)?;
    Ok(state.diffusion_step)
}

/// Runs (or resumes) every stage and writes the diffusers folder `out`. The work folder
/// (`out/work`) is kept for a resume until the folder is complete, then removed unless
/// `keep_work`.
pub fn run(
    config: &PretrainConfig,
    out: &Path,
    keep_work: bool,
    device: &burn::prelude::Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), PretrainError> {
    use invert_model::tokenizer::ClipTokenizer;
    use invert_model::vocabulary::Vocabulary;

    config.validate()?;
    let work = work_dir(out);
    std::fs::create_dir_all(&work).map_err(|e| PretrainError::File {
        path: work.clone(),
        reason: e.to_string(),
    })?;
    let mut state = checkpoint::load_state(&work)?;
    match state.config.clone() {
        Some(started) if started.extended_by(config) => {
            // more diffusion steps: continue with the new total (the learning-rate schedule
            // follows the new length from here)
            state.config = Some(config.clone());
            state.diffusion_done = false;
            checkpoint::save_state(&work, &state)?;
        }
        Some(started) if started != *config => {
            return Err(PretrainError::Config(format!(
                "{} holds a run started with another configuration; use the same config to \
                 resume (only diffusion_steps may grow), or delete that folder to start over",
                work.display()
            )));
        }
        Some(_) => {}
        None => {
            state.config = Some(config.clone());
            checkpoint::save_state(&work, &state)?;
        }
    }
    let arch = &config.architecture;
    let tok_dir = out.join("tokenizer");
    let words = crate::world::captions::vocabulary();
    tokenizer_files::write(&tok_dir, &words, arch.text_max_length).map_err(|reason| {
        PretrainError::File {
            path: tok_dir.clone(),
            reason,
        }
    })?;
    let tokenizer = ClipTokenizer::from_dir(&tok_dir).map_err(|e| PretrainError::File {
        path: tok_dir.clone(),
        reason: e.to_string(),
    })?;
    let vocab_size = tokenizer.vocab_size();
    let special = (vocab_size, tokenizer.bos_id(), tokenizer.eos_id());
    let (te_cfg, unet_cfg, vae_cfg) = arch.configs(vocab_size);
    let vocab = Vocabulary::new(tokenizer, arch.text_width);

    let vae = match &config.init_from {
        Some(root) => {
            let mut vae = vae_cfg.init(device);
            base_model::load_vae(root, &mut vae)?;
            vae
        }
        None => vae_stage::run(config, &vae_cfg, &work, &mut state, device, progress)?,
    };
    let latents = diffusion_stage::cache_latents(config, &vae, &work, device, progress)?;
    // a continued run keeps the scaling its U-Net was trained with
    let scaling = match &config.init_from {
        Some(root) => base_model::scaling_factor(root)?,
        None => diffusion_stage::scaling_factor(&latents),
    };
    state.scaling_factor = Some(scaling);
    checkpoint::save_state(&work, &state)?;
    if config.init_from.is_none() {
        text_stage::run(config, &te_cfg, &vocab, &work, &mut state, device, progress)?;
    }
    let denoiser = diffusion_stage::run(
        config,
        (&te_cfg, &unet_cfg),
        &vocab,
        &latents,
        scaling,
        &work,
        &mut state,
        device,
        progress,
    )?;
    folder::write(out, config, special, scaling, &vae, &denoiser)?;
    if !keep_work {
        std::fs::remove_dir_all(&work).map_err(|e| PretrainError::File {
            path: work.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_warms_up_then_decays() {
        let c = PretrainConfig::default();
        assert!(c.lr_at(1.0, 0, 1000, 0) < 0.02);
        assert!((c.lr_at(1.0, 150, 1000, 0) - 0.95).abs() < 0.05);
        assert!((c.lr_at(1.0, 1000, 1000, 0) - 0.1).abs() < 1e-9);
        // a resume at 500 warms up again
        assert!(c.lr_at(1.0, 500, 1000, 500) < 0.01);
    }

    #[test]
    fn betas_outside_zero_one_are_refused() {
        for (beta_start, beta_end) in [(0.0, 0.02), (0.02, 0.01), (1e-4, 1.0), (f64::NAN, 0.02)] {
            let c = PretrainConfig {
                beta_start,
                beta_end,
                ..Default::default()
            };
            assert!(c.validate().unwrap_err().to_string().contains("beta_start"));
        }
    }

    #[test]
    fn object_weights_that_are_not_positive_are_refused() {
        for object_weight in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let c = PretrainConfig {
                object_weight,
                ..Default::default()
            };
            assert!(
                c.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("object_weight")
            );
        }
    }

    #[test]
    fn zero_batches_are_refused_by_name() {
        let c = PretrainConfig {
            diffusion_batch: 0,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("diffusion_batch")
        );
    }
}
