//! `AutoencoderKL`'s `vae/config.json` as diffusers writes it.

use burn::prelude::*;

#[derive(Config, Debug, PartialEq)]
pub struct AutoencoderKLConfig {
    #[config(default = 3)]
    pub in_channels: usize,
    #[config(default = 3)]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[config(default = 1)]
    pub layers_per_block: usize,
    #[config(default = 4)]
    pub latent_channels: usize,
    #[config(default = 32)]
    pub norm_num_groups: usize,
    /// Latents are multiplied by this before the U-Net sees them (0.18215 for SD 1.x/2.x).
    #[config(default = 0.18215)]
    pub scaling_factor: f64,
    #[config(default = true)]
    pub mid_block_add_attention: bool,
    #[config(default = true)]
    pub use_quant_conv: bool,
    #[config(default = true)]
    pub use_post_quant_conv: bool,
    /// The SDXL pipeline runs a VAE whose config says this in f32 when the rest is f16 (the SDXL
    /// VAE's activations overflow f16; an "fp16-fix" VAE says `false`). diffusers' default is
    /// true; its SD 1.x/2.x pipelines ignore the field, and so does invert.
    #[config(default = true)]
    pub force_upcast: bool,
}

impl AutoencoderKLConfig {
    /// What this implementation cannot build, as a sentence; `None` when supported.
    pub fn unsupported(&self) -> Option<String> {
        if self.block_out_channels.is_empty() {
            return Some("block_out_channels is empty".into());
        }
        for c in &self.block_out_channels {
            if c % self.norm_num_groups != 0 {
                return Some(format!(
                    "{c} channels cannot be split into {} GroupNorm groups",
                    self.norm_num_groups
                ));
            }
        }
        None
    }

    /// How much smaller the latent is than the image (8 for SD: four blocks, three downsamples).
    pub fn downscale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_vae_downscales_by_eight() {
        let cfg = AutoencoderKLConfig::new(vec![128, 256, 512, 512]);
        assert_eq!(cfg.downscale_factor(), 8);
        assert!(cfg.unsupported().is_none());
        assert!(AutoencoderKLConfig::new(vec![]).unsupported().is_some());
    }
}
