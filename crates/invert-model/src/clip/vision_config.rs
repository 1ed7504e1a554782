//! `CLIPVisionConfig` as transformers writes it (`vision_config` of a `CLIPModel`'s config.json, or
//! the whole config.json of a `CLIPVisionModel`). Defaults are transformers' (openai/clip-vit-base-patch32).

use burn::prelude::*;

#[derive(Config, Debug, PartialEq)]
pub struct CLIPVisionConfig {
    #[config(default = 768)]
    pub hidden_size: usize,
    #[config(default = 3072)]
    pub intermediate_size: usize,
    #[config(default = 12)]
    pub num_hidden_layers: usize,
    #[config(default = 12)]
    pub num_attention_heads: usize,
    #[config(default = 3)]
    pub num_channels: usize,
    /// Side of the square input image (224 for OpenAI's ViT-B/32 and ViT-L/14).
    #[config(default = 224)]
    pub image_size: usize,
    /// Side of the square patches (32 for ViT-B/32, 14 for ViT-L/14).
    #[config(default = 32)]
    pub patch_size: usize,
    /// `quick_gelu` for OpenAI's models, `gelu` for most open_clip (LAION) ones.
    #[config(default = "String::from(\"quick_gelu\")")]
    pub hidden_act: String,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Width of `visual_projection`'s output (`CLIPModel` reads the top-level `projection_dim`).
    #[config(default = 512)]
    pub projection_dim: usize,
}

impl CLIPVisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Positions of the encoder: the class token and one per patch.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// Why this config cannot be built, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Some(format!(
                "vision hidden_size {} cannot be split into {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Some(format!(
                "vision image_size {} and patch_size {} give no patch",
                self.image_size, self.patch_size
            ));
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Some(format!(
                "vision hidden_act `{}` is not supported (quick_gelu, gelu)",
                self.hidden_act
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_layouts_have_the_known_position_counts() {
        let b32 = CLIPVisionConfig::new();
        assert_eq!((b32.grid(), b32.num_positions()), (7, 50));
        let l14 = CLIPVisionConfig::new()
            .with_hidden_size(1024)
            .with_num_attention_heads(16)
            .with_patch_size(14);
        assert_eq!((l14.grid(), l14.num_positions()), (16, 257));
        assert_eq!(l14.unsupported(), None);
    }

    #[test]
    fn bad_configs_are_explained() {
        let heads = CLIPVisionConfig::new().with_num_attention_heads(5);
        assert!(heads.unsupported().unwrap().contains("5 heads"));
        let act = CLIPVisionConfig::new().with_hidden_act("relu".into());
        assert!(act.unsupported().unwrap().contains("relu"));
        let patch = CLIPVisionConfig::new().with_image_size(8);
        assert!(patch.unsupported().unwrap().contains("no patch"));
    }
}
