//! `CLIPTextConfig` as transformers writes it in `text_encoder/config.json` (and SDXL's
//! `text_encoder_2/config.json`).

use burn::prelude::*;

#[derive(Config, Debug, PartialEq)]
pub struct CLIPTextConfig {
    #[config(default = 49408)]
    pub vocab_size: usize,
    #[config(default = 768)]
    pub hidden_size: usize,
    #[config(default = 3072)]
    pub intermediate_size: usize,
    #[config(default = 12)]
    pub num_hidden_layers: usize,
    #[config(default = 12)]
    pub num_attention_heads: usize,
    #[config(default = 77)]
    pub max_position_embeddings: usize,
    /// `quick_gelu` for OpenAI CLIP ViT-L/14 (SD1.x), `gelu` for OpenCLIP ViT-H/14 (SD2.x).
    #[config(default = "String::from(\"quick_gelu\")")]
    pub hidden_act: String,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Width of `text_projection`'s output (`CLIPTextModelWithProjection` only: 1280 for SDXL's
    /// OpenCLIP ViT-bigG/14 text tower); transformers' default.
    #[config(default = 512)]
    pub projection_dim: usize,
}
