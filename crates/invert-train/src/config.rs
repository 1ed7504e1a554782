//! Everything a training run is made of. Saved as `config.json` beside the outputs, read back by
//! `--resume`. Defaults follow the paper's official code (rinongal/textual_inversion,
//! `configs/stable-diffusion/v1-finetune.yaml` and `main.py`); README.md cites each one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::Crop;
use crate::optimizer::OptimizerConfig;
use crate::templates::Property;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    ConstantWithWarmup,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: PathBuf,
    /// `--config` for a single-file model.
    pub model_config: Option<PathBuf>,
    pub images: PathBuf,
    pub out: PathBuf,
    /// The new word, e.g. `<cat-toy>`.
    pub token: String,
    /// Initial vectors: a word or phrase (vector i takes its i-th token), or `random`.
    /// Default: the property's coarse word (paper section 4.1: "a single-word coarse
    /// descriptor"; `object` / `painting`).
    pub init: Option<String>,
    pub vectors: usize,
    pub property: Property,
    /// A template file (`{}` for the word, `{caption}` for a sidecar caption).
    pub templates: Option<PathBuf>,
    pub steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// A number or A1111's step string (`0.005:100, 1e-3:1000, 1e-4`).
    pub lr: String,
    pub lr_schedule: ScheduleKind,
    pub warmup_steps: usize,
    /// Multiply the rate by batch x accumulation (the paper's code does, `--scale_lr` True).
    pub scale_lr: bool,
    pub optimizer: OptimizerConfig,
    /// Gradient L2-norm clipping (0 = off).
    pub max_grad_norm: f64,
    /// Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; off when absent.
    pub min_snr_gamma: Option<f64>,
    /// Keep each learned vector's norm at most this many times the vocabulary's median norm.
    pub norm_guard: Option<f64>,
    /// Training resolution in pixels (default: the model's native size).
    pub resolution: Option<usize>,
    pub crop: Crop,
    pub flip: bool,
    pub alpha_mask: bool,
    pub skip_bad: bool,
    pub seed: u64,
    pub save_every: usize,
    /// Preview images every N steps (0 = off).
    pub preview_every: usize,
    pub preview_prompts: Vec<String>,
    pub preview_steps: usize,
    pub clip_skip: usize,
    /// auto (a GPU when one is present, else the CPU), cpu or wgpu.
    pub device: String,
    /// Compute dtype of the frozen models: auto (f16 on a GPU that computes in it, else f32),
    /// f32, f16 or bf16 (v* and the loss stay f32).
    pub precision: String,
    /// Recompute memory-bound activations in the backward pass instead of keeping them
    /// (burn's balanced checkpointing): less memory, more time.
    pub gradient_checkpointing: bool,
    /// SDXL: write the word as diffusers' `textual_inversion_sdxl.py` does, two files
    /// (`learned_embeds.safetensors` for CLIP-L, `learned_embeds_2.safetensors` for
    /// OpenCLIP-bigG), instead of one `{clip_l, clip_g}` file (kohya, OneTrainer, A1111, ComfyUI).
    pub diffusers_sdxl: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            model_config: None,
            images: PathBuf::new(),
            out: PathBuf::new(),
            token: String::new(),
            init: None,
            vectors: 1,
            property: Property::Object,
            templates: None,
            // The paper: "we use 5k training iterations" (rinongal README).
            steps: 5000,
            batch_size: 1,
            grad_accum: 1,
            // rinongal v1-finetune.yaml base_learning_rate 5.0e-03, scaled by batch (main.py).
            lr: "5e-3".into(),
            lr_schedule: ScheduleKind::Constant,
            warmup_steps: 0,
            scale_lr: true,
            optimizer: OptimizerConfig::default(),
            max_grad_norm: 0.0,
            min_snr_gamma: None,
            norm_guard: None,
            resolution: None,
            crop: Crop::Center,
            // rinongal personalized.py flip_p 0.5.
            flip: true,
            alpha_mask: false,
            skip_bad: false,
            // rinongal main.py --seed default 23.
            seed: 23,
            save_every: 500,
            preview_every: 500,
            preview_prompts: Vec::new(),
            preview_steps: 25,
            clip_skip: 1,
            device: "auto".into(),
            precision: "auto".into(),
            gradient_checkpointing: false,
            diffusers_sdxl: false,
        }
    }
}

impl TrainConfig {
    /// Checks values a run cannot start with; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.token.trim().is_empty() {
            return Err("--token is required (e.g. --token \"<cat-toy>\")".into());
        }
        if self.vectors == 0 || self.vectors > 75 {
            return Err(format!(
                "--vectors must be between 1 and 75 (got {})",
                self.vectors
            ));
        }
        if self.steps == 0 {
            return Err("--steps must be at least 1".into());
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return Err("--batch-size and --grad-accum must be at least 1".into());
        }
        if let Some(r) = self.resolution
            && (r < 8 || r % 8 != 0)
        {
            return Err(format!(
                "--resolution must be a positive multiple of 8 (got {r})"
            ));
        }
        if !invert_model::device::PRECISIONS.contains(&self.precision.as_str()) {
            return Err(format!(
                "--precision must be one of {} (got {})",
                invert_model::device::PRECISIONS.join(", "),
                self.precision
            ));
        }
        if self.clip_skip == 0 {
            return Err("--clip-skip counts from 1 (1 = use the last layer)".into());
        }
        self.lr
            .parse::<crate::lr_schedule::LrSchedule>()
            .map_err(|e| format!("--lr: {e}"))?;
        Ok(())
    }

    /// The initialiser text (or `random`).
    pub fn init_text(&self) -> String {
        self.init.clone().unwrap_or_else(|| match self.property {
            Property::Object => "object".into(),
            Property::Style => "painting".into(),
        })
    }
}
