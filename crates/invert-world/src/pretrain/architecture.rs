//! The bundled model's architecture: SD's `AutoencoderKL`, `UNet2DConditionModel` and
//! `CLIPTextModel` at a small configuration, and the diffusers/transformers `config.json` files
//! that describe it (field names as diffusers 0.3x writes them, so Python diffusers loads the
//! folder with `StableDiffusionPipeline.from_pretrained`).

use invert_model::clip::CLIPTextConfig;
use invert_model::unet::{PerBlock, UNet2DConditionConfig};
use invert_model::vae::AutoencoderKLConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Sizes of the three networks (defaults: `configs/pretrain/world.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    /// Picture side in pixels.
    pub image_size: usize,
    pub vae_channels: Vec<usize>,
    pub vae_groups: usize,
    pub latent_channels: usize,
    pub unet_channels: Vec<usize>,
    /// Per U-Net level: whether it has (self- and cross-) attention.
    pub unet_attention: Vec<bool>,
    pub unet_groups: usize,
    /// Resnets per down block, once or per level (`[2, 2, 1, 1]`: two at 16x16 and 8x8).
    pub unet_layers_per_block: PerBlock,
    /// Attention heads in every U-Net transformer (diffusers' `attention_head_dim` of SD 1.x
    /// configs, which is really the head count).
    pub unet_heads: usize,
    pub text_width: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub text_max_length: usize,
}

impl Default for Architecture {
    fn default() -> Self {
        Self {
            image_size: 32,
            vae_channels: vec![32, 64],
            vae_groups: 8,
            latent_channels: 4,
            // four levels: 16x16 down to 2x2, where each cell is one of the world's four
            // positions and a zero-padded 3x3 convolution tells the cells apart at once, so
            // cross-attention there can put the object where the prompt says
            unet_channels: vec![32, 64, 128, 128],
            unet_attention: vec![false, true, true, true],
            unet_groups: 16,
            unet_layers_per_block: PerBlock::One(1),
            unet_heads: 4,
            text_width: 128,
            text_layers: 3,
            text_heads: 4,
            text_max_length: 32,
        }
    }
}

impl Architecture {
    pub fn latent_size(&self) -> usize {
        self.image_size >> (self.vae_channels.len() - 1)
    }

    /// Checks what the configs below need; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let pow = 1usize << (self.vae_channels.len().max(1) - 1);
        let unet_pow = 1usize << (self.unet_channels.len().max(1) - 1);
        if self.vae_channels.is_empty() || self.unet_channels.is_empty() {
            return Err("vae_channels and unet_channels must not be empty".into());
        }
        if !self.image_size.is_multiple_of(pow * unet_pow) || self.image_size < 8 {
            return Err(format!(
                "image_size {} must be a multiple of {} (the VAE's and U-Net's downsampling)",
                self.image_size,
                pow * unet_pow
            ));
        }
        if self.vae_channels.iter().any(|c| c % self.vae_groups != 0) {
            return Err(format!(
                "vae_channels must be multiples of vae_groups {}",
                self.vae_groups
            ));
        }
        if self.unet_channels.iter().any(|c| c % self.unet_groups != 0) {
            return Err(format!(
                "unet_channels must be multiples of unet_groups {}",
                self.unet_groups
            ));
        }
        if !self
            .unet_layers_per_block
            .expand(self.unet_channels.len())
            .is_some_and(|l| l.iter().all(|&l| l >= 1))
        {
            return Err(
                "unet_layers_per_block must be one number or one per unet_channels level, each \
                 at least 1"
                    .into(),
            );
        }
        if self.unet_attention.len() != self.unet_channels.len() {
            return Err("unet_attention needs one entry per unet_channels level".into());
        }
        if self.unet_channels.iter().any(|c| c % self.unet_heads != 0)
            || !self.text_width.is_multiple_of(self.text_heads)
        {
            return Err("channel counts must divide by the head counts".into());
        }
        Ok(())
    }

    pub fn vae_json(&self, scaling_factor: f64) -> Value {
        let n = self.vae_channels.len();
        json!({
            "_class_name": "AutoencoderKL",
            "_diffusers_version": "0.30.0",
            "act_fn": "silu",
            "block_out_channels": self.vae_channels,
            "down_block_types": vec!["DownEncoderBlock2D"; n],
            "up_block_types": vec!["UpDecoderBlock2D"; n],
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": self.latent_channels,
            "layers_per_block": 1,
            "norm_num_groups": self.vae_groups,
            "sample_size": self.image_size,
            "scaling_factor": scaling_factor,
            "force_upcast": false,
            "mid_block_add_attention": true,
            "use_quant_conv": true,
            "use_post_quant_conv": true
        })
    }

    pub fn unet_json(&self) -> Value {
        let down: Vec<&str> = self
            .unet_attention
            .iter()
            .map(|&a| {
                if a {
                    "CrossAttnDownBlock2D"
                } else {
                    "DownBlock2D"
                }
            })
            .collect();
        let up: Vec<&str> = self
            .unet_attention
            .iter()
            .rev()
            .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
            .collect();
        json!({
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.30.0",
            "act_fn": "silu",
            "attention_head_dim": self.unet_heads,
            "block_out_channels": self.unet_channels,
            "center_input_sample": false,
            "cross_attention_dim": self.text_width,
            "down_block_types": down,
            "up_block_types": up,
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "downsample_padding": 1,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "in_channels": self.latent_channels,
            "out_channels": self.latent_channels,
            "layers_per_block": self.unet_layers_per_block,
            "mid_block_scale_factor": 1,
            "norm_eps": 1e-5,
            "norm_num_groups": self.unet_groups,
            "sample_size": self.latent_size(),
            "use_linear_projection": false,
            "upcast_attention": false
        })
    }

    pub fn text_json(&self, vocab_size: usize, bos: u32, eos: u32) -> Value {
        json!({
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "attention_dropout": 0.0,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
            "hidden_act": "quick_gelu",
            "hidden_size": self.text_width,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": self.text_width * 4,
            "layer_norm_eps": 1e-5,
            "max_position_embeddings": self.text_max_length,
            "num_attention_heads": self.text_heads,
            "num_hidden_layers": self.text_layers,
            "projection_dim": self.text_width,
            "torch_dtype": "float32",
            "vocab_size": vocab_size
        })
    }

    /// Our configs, parsed from the JSON above exactly as a loaded folder's would be.
    pub fn configs(
        &self,
        vocab_size: usize,
    ) -> (CLIPTextConfig, UNet2DConditionConfig, AutoencoderKLConfig) {
        let p = std::path::Path::new;
        let te = invert_model::loading::parse_config(
            p("text_encoder/config.json"),
            &self.text_json(vocab_size, 0, 0),
            CLIPTextConfig::new(),
        )
        .expect("the text encoder config parses");
        let unet = invert_model::loading::parse_config(
            p("unet/config.json"),
            &self.unet_json(),
            UNet2DConditionConfig::new(vec![], vec![], vec![]),
        )
        .expect("the U-Net config parses");
        let vae = invert_model::loading::parse_config(
            p("vae/config.json"),
            &self.vae_json(1.0),
            AutoencoderKLConfig::new(vec![]),
        )
        .expect("the VAE config parses");
        (te, unet, vae)
    }
}

/// The bundled model's scheduler (`scheduler/scheduler_config.json`): SD 1.x's PNDM settings
/// with the run's prediction type and betas.
///
/// Why the world model does not use SD 1.x's epsilon prediction and scaled-linear betas
/// (0.00085..0.012): on 16x16 latents of flat-colour pictures that schedule leaves
/// `sqrt(abar_999) = 0.068` of the picture in the last noisy latent, enough to read the
/// object's place and the background off the noise itself, so the U-Net learns to take layout
/// from the noise rather than from the prompt; and with epsilon prediction the loss weighs the
/// clean picture's error by the SNR, nearly zero at the high-noise steps where only the prompt
/// can say what to draw (Salimans & Ho 2022, section 4; Lin et al. 2024, "Common Diffusion Noise
/// Schedules and Sample Steps are Flawed"). DDPM's linear betas (1e-4..0.02, Ho et al. 2020)
/// leave 0.0064 and v-prediction keeps weight on those steps, so the prompt decides the layout.
pub fn scheduler_json(config: &super::PretrainConfig) -> Value {
    json!({
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.30.0",
        "beta_end": config.beta_end,
        "beta_schedule": serde_json::to_value(config.beta_schedule).expect("enum"),
        "beta_start": config.beta_start,
        "clip_sample": false,
        "num_train_timesteps": 1000,
        "prediction_type": serde_json::to_value(config.prediction_type).expect("enum"),
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": null
    })
}

pub fn model_index_json() -> Value {
    json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_architecture_builds_configs_we_support() {
        let a = Architecture::default();
        a.validate().unwrap();
        assert_eq!(a.latent_size(), 16);
        let (te, unet, vae) = a.configs(600);
        assert_eq!(te.hidden_size, unet.cross_attention_dim);
        assert!(unet.unsupported().is_none());
        assert!(vae.unsupported().is_none());
        assert_eq!(vae.downscale_factor(), 2);
        assert_eq!(unet.down_block_types[0], "DownBlock2D");
        assert_eq!(unet.up_block_types[3], "UpBlock2D");
    }

    #[test]
    fn scheduler_config_carries_the_run_schedule() {
        use invert_model::schedulers::{BetaSchedule, NoiseScheduleConfig, PredictionType};
        let config = super::super::PretrainConfig::default();
        let json = scheduler_json(&config);
        assert_eq!(json["prediction_type"], "v_prediction");
        assert_eq!(json["beta_schedule"], "linear");
        let parsed = NoiseScheduleConfig::from_json(&json).unwrap();
        assert_eq!(parsed.prediction_type, PredictionType::VPrediction);
        assert_eq!(parsed.beta_schedule, BetaSchedule::Linear);
        assert_eq!((parsed.beta_start, parsed.beta_end), (0.0001, 0.02));
        // the last training step keeps almost nothing of the picture (SD 1.x's keeps 0.068)
        let schedule = parsed.init();
        assert!(schedule.alphas_cumprod[999].sqrt() < 0.007);
    }

    #[test]
    fn bad_sizes_are_refused_with_the_field() {
        let a = Architecture {
            image_size: 30,
            ..Default::default()
        };
        assert!(a.validate().unwrap_err().contains("image_size"));
    }
}
