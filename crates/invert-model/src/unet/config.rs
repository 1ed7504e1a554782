//! `UNet2DConditionModel`'s `unet/config.json` as diffusers writes it.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// A config value given once for every block or as a per-block list (`attention_head_dim`,
/// `transformer_layers_per_block`, `layers_per_block`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value for each of `n` blocks, or `None` when a list has the wrong length.
    pub fn expand(&self, n: usize) -> Option<Vec<usize>> {
        match self {
            PerBlock::One(v) => Some(vec![*v; n]),
            PerBlock::Each(v) if v.len() == n => Some(v.clone()),
            PerBlock::Each(_) => None,
        }
    }

    /// The one value every block has, `None` when the blocks differ.
    pub fn uniform(&self) -> Option<usize> {
        match self {
            PerBlock::One(v) => Some(*v),
            PerBlock::Each(v) => v.first().copied().filter(|f| v.iter().all(|x| x == f)),
        }
    }
}

/// SDXL's micro-conditioning numbers: original height and width, crop top and left, target
/// height and width (`_get_add_time_ids` in diffusers' `pipeline_stable_diffusion_xl.py`).
pub const ADD_TIME_IDS: usize = 6;

#[derive(Config, Debug, PartialEq)]
pub struct UNet2DConditionConfig {
    #[config(default = 4)]
    pub in_channels: usize,
    #[config(default = 4)]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    /// Resnets per down block (up blocks have one more), once or per block as diffusers allows
    /// (`UNet2DConditionModel.__init__`: `reversed_layers_per_block` for the up blocks).
    #[config(default = "PerBlock::One(2)")]
    pub layers_per_block: PerBlock,
    /// Native latent size (64 for SD 1.x and 2.x base, 96 for 2.x 768-v).
    #[config(default = 64)]
    pub sample_size: usize,
    #[config(default = 768)]
    pub cross_attention_dim: usize,
    /// diffusers' legacy naming: for SD1.x/2.x these are the number of *heads* per block
    /// (SD 2.x: `[5, 10, 20, 20]`, head width 64), see `UNet2DConditionModel.__init__`.
    #[config(default = "PerBlock::One(8)")]
    pub attention_head_dim: PerBlock,
    /// When set, the real head counts (diffusers itself refuses it for this model class).
    #[config(default = "None")]
    pub num_attention_heads: Option<PerBlock>,
    #[config(default = "PerBlock::One(1)")]
    pub transformer_layers_per_block: PerBlock,
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    #[config(default = 32)]
    pub norm_num_groups: usize,
    #[config(default = true)]
    pub flip_sin_to_cos: bool,
    #[config(default = 0.0)]
    pub freq_shift: f64,
    #[config(default = 1)]
    pub downsample_padding: usize,
    /// Linear instead of 1x1-conv `proj_in`/`proj_out` in `Transformer2DModel` (SD 2.x).
    #[config(default = false)]
    pub use_linear_projection: bool,
    #[config(default = false)]
    pub upcast_attention: bool,
    /// `"text_time"` (SDXL): the pooled text embedding and the six micro-conditioning numbers
    /// (`add_time_ids`) are embedded and added to the time embedding; other kinds are refused.
    #[config(default = "None")]
    pub addition_embed_type: Option<String>,
    /// Width of each micro-conditioning number's sinusoidal projection (SDXL: 256).
    #[config(default = "None")]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of `add_embedding`: the pooled text embedding plus six projected numbers
    /// (SDXL base: 1280 + 6 x 256 = 2816).
    #[config(default = "None")]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Features of other model families; refused with a message when set.
    #[config(default = "None")]
    pub class_embed_type: Option<String>,
    #[config(default = "None")]
    pub time_cond_proj_dim: Option<usize>,
    #[config(default = "String::from(\"default\")")]
    pub resnet_time_scale_shift: String,
}

impl UNet2DConditionConfig {
    /// What this implementation cannot build, as a sentence; `None` when supported.
    pub fn unsupported(&self) -> Option<String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Some(format!(
                "block_out_channels ({n}), down_block_types ({}) and up_block_types ({}) must have the same non-zero length",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        match (
            self.addition_embed_type.as_deref(),
            self.addition_time_embed_dim,
            self.projection_class_embeddings_input_dim,
        ) {
            (None, ..) => {}
            (Some("text_time"), Some(time), Some(input)) if time > 0 && input > 6 * time => {}
            (Some("text_time"), ..) => {
                return Some(
                    "addition_embed_type `text_time` needs addition_time_embed_dim and a projection_class_embeddings_input_dim larger than 6 x addition_time_embed_dim".into(),
                );
            }
            (Some(kind), ..) => {
                return Some(format!(
                    "addition_embed_type `{kind}` is not supported (only SDXL's `text_time`)"
                ));
            }
        }
        if let Some(kind) = &self.class_embed_type {
            return Some(format!("class_embed_type `{kind}` is not supported"));
        }
        if self.time_cond_proj_dim.is_some() {
            return Some("time_cond_proj_dim (LCM distillation) is not supported".into());
        }
        if self.resnet_time_scale_shift != "default" {
            return Some(format!(
                "resnet_time_scale_shift `{}` is not supported",
                self.resnet_time_scale_shift
            ));
        }
        for t in self.down_block_types.iter() {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Some(format!("down block type `{t}` is not supported"));
            }
        }
        for t in self.up_block_types.iter() {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Some(format!("up block type `{t}` is not supported"));
            }
        }
        if self.heads().is_none() {
            return Some(format!(
                "attention_head_dim / num_attention_heads must be one value or {n} values"
            ));
        }
        if !self
            .layers_per_block
            .expand(n)
            .is_some_and(|l| l.iter().all(|&l| l >= 1))
        {
            return Some(format!(
                "layers_per_block must be one value or {n} values, each at least 1"
            ));
        }
        if self.transformer_layers_per_block.expand(n).is_none() {
            return Some(format!(
                "transformer_layers_per_block must be one value or {n} values"
            ));
        }
        for (c, h) in self.block_out_channels.iter().zip(self.heads().unwrap()) {
            if h == 0 || c % h != 0 {
                return Some(format!(
                    "{c} channels cannot be split into {h} attention heads"
                ));
            }
            if c % self.norm_num_groups != 0 {
                return Some(format!(
                    "{c} channels cannot be split into {} GroupNorm groups",
                    self.norm_num_groups
                ));
            }
        }
        None
    }

    /// Width of the pooled text embedding the `text_time` addition expects (SDXL: the second
    /// text encoder's `projection_dim`), `None` without it.
    pub fn pooled_text_dim(&self) -> Option<usize> {
        let time = self.addition_time_embed_dim?;
        let input = self.projection_class_embeddings_input_dim?;
        (self.addition_embed_type.as_deref() == Some("text_time"))
            .then(|| input - ADD_TIME_IDS * time)
    }

    /// Attention heads per down block (up blocks use the reversed list, the mid block the last).
    pub fn heads(&self) -> Option<Vec<usize>> {
        let n = self.block_out_channels.len();
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_block_values_parse_from_int_or_list() {
        let one: PerBlock = serde_json::from_str("8").unwrap();
        let each: PerBlock = serde_json::from_str("[5, 10, 20, 20]").unwrap();
        assert_eq!(one.expand(4), Some(vec![8; 4]));
        assert_eq!(each.expand(4), Some(vec![5, 10, 20, 20]));
        assert_eq!(each.expand(3), None);
        assert_eq!(one.uniform(), Some(8));
        assert_eq!(each.uniform(), None);
        assert_eq!(PerBlock::Each(vec![2, 2]).uniform(), Some(2));
    }

    #[test]
    fn layers_per_block_may_differ_per_block_but_not_be_zero() {
        let mut cfg = UNet2DConditionConfig::new(
            vec![32, 64],
            vec!["DownBlock2D".into(), "CrossAttnDownBlock2D".into()],
            vec!["CrossAttnUpBlock2D".into(), "UpBlock2D".into()],
        );
        cfg.layers_per_block = serde_json::from_str("[2, 1]").unwrap();
        assert!(cfg.unsupported().is_none());
        for bad in ["[2, 0]", "[1, 1, 1]", "0"] {
            cfg.layers_per_block = serde_json::from_str(bad).unwrap();
            assert!(
                cfg.unsupported().unwrap().contains("layers_per_block"),
                "{bad}"
            );
        }
    }

    #[test]
    fn sd2_head_dims_are_head_counts() {
        // SD 2.x: attention_head_dim [5, 10, 20, 20] over channels [320, 640, 1280, 1280]
        // means 5/10/20/20 heads of width 64 (diffusers' naming quirk).
        let mut cfg = UNet2DConditionConfig::new(
            vec![320, 640, 1280, 1280],
            vec!["CrossAttnDownBlock2D".into(); 4],
            vec!["CrossAttnUpBlock2D".into(); 4],
        );
        cfg.attention_head_dim = PerBlock::Each(vec![5, 10, 20, 20]);
        let heads = cfg.heads().unwrap();
        let widths: Vec<usize> = cfg
            .block_out_channels
            .iter()
            .zip(&heads)
            .map(|(c, h)| c / h)
            .collect();
        assert_eq!(widths, vec![64; 4]);
        assert!(cfg.unsupported().is_none());
    }

    #[test]
    fn unsupported_configs_say_why() {
        let mut cfg = UNet2DConditionConfig::new(
            vec![32, 64],
            vec!["DownBlock2D".into(), "CrossAttnDownBlock2D".into()],
            vec!["CrossAttnUpBlock2D".into(), "UpBlock2D".into()],
        );
        assert!(cfg.unsupported().is_none());
        cfg.addition_embed_type = Some("text_time".into());
        assert!(
            cfg.unsupported()
                .unwrap()
                .contains("addition_time_embed_dim")
        );
        cfg.addition_time_embed_dim = Some(8);
        cfg.projection_class_embeddings_input_dim = Some(6 * 8 + 32);
        assert!(cfg.unsupported().is_none());
        assert_eq!(cfg.pooled_text_dim(), Some(32));
        cfg.addition_embed_type = Some("image".into());
        assert!(cfg.unsupported().unwrap().contains("only SDXL"));
        cfg.addition_embed_type = None;
        cfg.norm_num_groups = 5;
        assert!(cfg.unsupported().unwrap().contains("GroupNorm"));
    }
}
