//! transformers `CLIPTextModel` (models/clip/modeling_clip.py): token + position embeddings,
//! pre-LayerNorm encoder layers under a causal mask, final LayerNorm.
//!
//! New words (textual inversion) are extra embedding rows kept *outside* the frozen
//! `token_embedding` table: ids `>= vocab_size` read from `extra`, so the 49,408 original rows
//! are never modified or copied, and gradients reach only the new rows.

use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::module::embedding;

use super::config::CLIPTextConfig;
use crate::attention::multi_head_attention;
use crate::fused::layer_norm::layer_norm;
use crate::layers::{linear_fused, quick_gelu};

#[derive(Module, Debug)]
pub struct CLIPAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub heads: usize,
}

impl CLIPAttention {
    /// Self-attention; `causal` for the text tower, not for the vision tower.
    fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let q = linear_fused(&self.q_proj, x.clone());
        let k = linear_fused(&self.k_proj, x.clone());
        let v = linear_fused(&self.v_proj, x);
        linear_fused(
            &self.out_proj,
            multi_head_attention(q, k, v, self.heads, false, causal),
        )
    }
}

#[derive(Module, Debug)]
pub struct CLIPMLP {
    pub fc1: Linear,
    pub fc2: Linear,
    pub quick_gelu: bool,
}

impl CLIPMLP {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = linear_fused(&self.fc1, x);
        let h = if self.quick_gelu {
            quick_gelu(h)
        } else {
            gelu(h)
        };
        linear_fused(&self.fc2, h)
    }
}

#[derive(Module, Debug)]
pub struct CLIPEncoderLayer {
    pub self_attn: CLIPAttention,
    pub layer_norm1: LayerNorm,
    pub mlp: CLIPMLP,
    pub layer_norm2: LayerNorm,
    /// The config's `layer_norm_eps` (burn's `LayerNorm` keeps its own private).
    pub layer_norm_eps: f64,
}

impl CLIPEncoderLayer {
    /// The text tower's layer: causal self-attention.
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_masked(x, true)
    }

    /// The layer with causal (text) or full (vision) self-attention.
    pub fn forward_masked(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let eps = self.layer_norm_eps;
        let x = x.clone()
            + self
                .self_attn
                .forward(layer_norm(&self.layer_norm1, x, eps), causal);
        x.clone() + self.mlp.forward(layer_norm(&self.layer_norm2, x, eps))
    }
}

/// The sizes of one encoder layer (the text and vision towers share the module).
pub struct EncoderLayerShape<'a> {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    /// transformers' `hidden_act`: `quick_gelu` or `gelu`.
    pub hidden_act: &'a str,
    pub layer_norm_eps: f64,
}

impl EncoderLayerShape<'_> {
    pub fn init(&self, device: &Device) -> CLIPEncoderLayer {
        let d = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        CLIPEncoderLayer {
            self_attn: CLIPAttention {
                q_proj: lin(d, d),
                k_proj: lin(d, d),
                v_proj: lin(d, d),
                out_proj: lin(d, d),
                heads: self.num_attention_heads,
            },
            layer_norm1: ln(),
            mlp: CLIPMLP {
                fc1: lin(d, self.intermediate_size),
                fc2: lin(self.intermediate_size, d),
                quick_gelu: self.hidden_act == "quick_gelu",
            },
            layer_norm2: ln(),
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

#[derive(Module, Debug)]
pub struct CLIPEncoder {
    pub layers: Vec<CLIPEncoderLayer>,
}

#[derive(Module, Debug)]
pub struct CLIPTextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct CLIPTextTransformer {
    pub embeddings: CLIPTextEmbeddings,
    pub encoder: CLIPEncoder,
    pub final_layer_norm: LayerNorm,
    pub layer_norm_eps: f64,
}

/// The text encoder. Field paths equal transformers' keys (`text_model.encoder.layers.0...`).
#[derive(Module, Debug)]
pub struct CLIPTextModel {
    pub text_model: CLIPTextTransformer,
}

impl CLIPTextConfig {
    pub fn init(&self, device: &Device) -> CLIPTextModel {
        CLIPTextModel {
            text_model: self.init_transformer(device),
        }
    }

    /// The text tower both `CLIPTextModel` and `CLIPTextModelWithProjection` wrap.
    pub fn init_transformer(&self, device: &Device) -> CLIPTextTransformer {
        let d = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let shape = EncoderLayerShape {
            hidden_size: d,
            intermediate_size: self.intermediate_size,
            num_attention_heads: self.num_attention_heads,
            hidden_act: &self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| shape.init(device))
            .collect();
        CLIPTextTransformer {
            embeddings: CLIPTextEmbeddings {
                token_embedding: EmbeddingConfig::new(self.vocab_size, d).init(device),
                position_embedding: EmbeddingConfig::new(self.max_position_embeddings, d)
                    .init(device),
            },
            encoder: CLIPEncoder { layers },
            final_layer_norm: ln(),
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

impl CLIPTextTransformer {
    pub fn vocab_size(&self) -> usize {
        self.embeddings.token_embedding.weight.shape()[0]
    }

    pub fn num_layers(&self) -> usize {
        self.encoder.layers.len()
    }

    /// Token + position embeddings of `ids` `[b, l]`. Ids `>= vocab_size` index the rows of
    /// `extra` `[n_new, d]` (new words); the frozen table is only read, never concatenated.
    pub fn embed(&self, ids: Tensor<2, Int>, extra: Option<&Tensor<2>>) -> Tensor<3> {
        let [b, l] = ids.dims();
        let device = ids.device();
        let vocab = self.vocab_size() as i64;
        let table = self.embeddings.token_embedding.weight.val();
        let dtype = table.dtype();
        let tokens = match extra {
            None => embedding(table, ids),
            Some(extra) => {
                let is_new = ids.clone().greater_equal_elem(vocab);
                let base_ids = ids.clone().mask_fill(is_new.clone(), 0);
                let new_ids = (ids - vocab).clamp_min(0);
                let base = embedding(table, base_ids);
                // Learned vectors stay f32 (the optimiser's copy); the cast is differentiable.
                let new = embedding(extra.clone().cast(dtype), new_ids);
                let d = base.dims()[2];
                base.mask_where(is_new.unsqueeze_dim::<3>(2).expand([b, l, d]), new)
            }
        };
        let positions = Tensor::<1, Int>::arange(0..l as i64, &device).unsqueeze_dim::<2>(0);
        tokens + self.embeddings.position_embedding.forward(positions)
    }

    /// The output of the first `layers` encoder layers, before the final LayerNorm
    /// (transformers' `hidden_states[layers]`).
    pub fn hidden_state(
        &self,
        ids: Tensor<2, Int>,
        extra: Option<&Tensor<2>>,
        layers: usize,
    ) -> Tensor<3> {
        let mut h = self.embed(ids, extra);
        for layer in &self.encoder.layers[..layers.min(self.num_layers())] {
            h = layer.forward(h);
        }
        h
    }

    /// The frozen token table `[vocab, width]` (new words' rows live outside it).
    pub fn token_table(&self) -> Tensor<2> {
        self.embeddings.token_embedding.weight.val()
    }

    /// The final LayerNorm.
    pub fn final_norm(&self, h: Tensor<3>) -> Tensor<3> {
        layer_norm(&self.final_layer_norm, h, self.layer_norm_eps)
    }

    /// One encoder layer (for callers that keep an intermediate state on the way).
    pub fn layer(&self, i: usize, h: Tensor<3>) -> Tensor<3> {
        self.encoder.layers[i].forward(h)
    }
}

impl CLIPTextModel {
    pub fn vocab_size(&self) -> usize {
        self.text_model.vocab_size()
    }

    pub fn hidden_size(&self) -> usize {
        self.text_model.embeddings.token_embedding.weight.shape()[1]
    }

    pub fn num_layers(&self) -> usize {
        self.text_model.num_layers()
    }

    /// Token + position embeddings (see [`CLIPTextTransformer::embed`]).
    pub fn embed(&self, ids: Tensor<2, Int>, extra: Option<&Tensor<2>>) -> Tensor<3> {
        self.text_model.embed(ids, extra)
    }

    /// The conditioning SD uses: the output of the encoder after `skip - 1` final layers are
    /// skipped, through the final LayerNorm. `clip_skip = 1` is `last_hidden_state`; 2 is the
    /// penultimate layer (A1111's "clip skip 2", diffusers' `clip_skip=1`).
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        extra: Option<&Tensor<2>>,
        clip_skip: usize,
    ) -> Tensor<3> {
        let used = self.num_layers() + 1 - clip_skip.clamp(1, self.num_layers());
        let tm = &self.text_model;
        tm.final_norm(tm.hidden_state(ids, extra, used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn tiny(device: &Device) -> CLIPTextModel {
        CLIPTextConfig::new()
            .with_vocab_size(10)
            .with_hidden_size(8)
            .with_intermediate_size(16)
            .with_num_hidden_layers(3)
            .with_num_attention_heads(2)
            .with_max_position_embeddings(6)
            .init(device)
    }

    #[test]
    fn extra_rows_equal_an_appended_table() {
        let device = Device::flex();
        let model = tiny(&device);
        let extra = Tensor::<2>::random([2, 8], Distribution::Normal(0.0, 1.0), &device);
        let ids = Tensor::<2, Int>::from_data([[1, 10, 3, 11, 2, 0]], &device);
        let got = model.embed(ids.clone(), Some(&extra));
        let table = Tensor::cat(
            vec![
                model.text_model.embeddings.token_embedding.weight.val(),
                extra,
            ],
            0,
        );
        let positions = model
            .text_model
            .embeddings
            .position_embedding
            .weight
            .val()
            .unsqueeze_dim::<3>(0);
        let want = embedding(table, ids) + positions;
        let d = (got - want).abs().max().into_scalar::<f32>();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn gradients_reach_only_the_new_rows() {
        let device = Device::flex().autodiff();
        let model = tiny(&device).no_grad();
        let extra =
            Tensor::<2>::random([1, 8], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let ids = Tensor::<2, Int>::from_data([[1, 10, 3, 2, 2, 2]], &device);
        let loss = model.forward(ids, Some(&extra), 1).powf_scalar(2.0).sum();
        let grads = loss.backward();
        let g = extra.grad(&grads).expect("the new row gets a gradient");
        assert!(g.abs().sum().into_scalar::<f32>() > 0.0);
        let table = &model.text_model.embeddings.token_embedding.weight;
        assert!(
            table.val().grad(&grads).is_none(),
            "the frozen table gets none"
        );
    }

    #[test]
    fn clip_skip_two_stops_one_layer_early() {
        let device = Device::flex();
        let model = tiny(&device);
        let ids = Tensor::<2, Int>::from_data([[1, 4, 3, 2, 2, 2]], &device);
        let mut h = model.embed(ids.clone(), None);
        for layer in &model.text_model.encoder.layers[..2] {
            h = layer.forward(h);
        }
        let tm = &model.text_model;
        let want = layer_norm(&tm.final_layer_norm, h, tm.layer_norm_eps);
        let got = model.forward(ids, None, 2);
        assert_eq!((got - want).abs().max().into_scalar::<f32>(), 0.0);
    }
}
