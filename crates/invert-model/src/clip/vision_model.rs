//! transformers `CLIPVisionModel` (models/clip/modeling_clip.py): patch embedding (a bias-free conv
//! with stride = kernel = patch), a learned class token and position embeddings, `pre_layrnorm`
//! (transformers' spelling), the encoder layers of the text tower with full (not causal)
//! attention, and `post_layernorm` on the class token (the pooled output).

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::prelude::*;

use super::text_model::{CLIPEncoder, EncoderLayerShape};
use super::vision_config::CLIPVisionConfig;
use crate::fused::layer_norm::layer_norm;

#[derive(Module, Debug)]
pub struct CLIPVisionEmbeddings {
    /// `[hidden]`, the class token's embedding.
    pub class_embedding: Param<Tensor<1>>,
    /// `[hidden, channels, patch, patch]`, no bias.
    pub patch_embedding: Conv2d,
    /// `num_positions` rows: the class token's, then one per patch in row-major order.
    pub position_embedding: Embedding,
    pub image_size: usize,
}

/// The vision tower. Field paths equal transformers' keys without the `vision_model.` prefix.
#[derive(Module, Debug)]
pub struct CLIPVisionTransformer {
    pub embeddings: CLIPVisionEmbeddings,
    pub pre_layrnorm: LayerNorm,
    pub encoder: CLIPEncoder,
    pub post_layernorm: LayerNorm,
    pub layer_norm_eps: f64,
}

/// transformers' `CLIPVisionModel`: field paths equal its keys (`vision_model.encoder.layers.0...`).
#[derive(Module, Debug)]
pub struct CLIPVisionModel {
    pub vision_model: CLIPVisionTransformer,
}

/// What the vision tower returns.
pub struct VisionOutput {
    /// `[b, positions, hidden]`: the last encoder layer's output (no final norm).
    pub last_hidden_state: Tensor<3>,
    /// `[b, hidden]`: `post_layernorm` of the class token.
    pub pooler_output: Tensor<2>,
}

impl CLIPVisionConfig {
    pub fn init(&self, device: &Device) -> CLIPVisionModel {
        CLIPVisionModel {
            vision_model: self.init_transformer(device),
        }
    }

    /// The vision tower `CLIPVisionModel` and `CLIPModel` wrap.
    pub fn init_transformer(&self, device: &Device) -> CLIPVisionTransformer {
        let d = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let p = self.patch_size;
        let shape = EncoderLayerShape {
            hidden_size: d,
            intermediate_size: self.intermediate_size,
            num_attention_heads: self.num_attention_heads,
            hidden_act: &self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
        };
        CLIPVisionTransformer {
            embeddings: CLIPVisionEmbeddings {
                class_embedding: Param::from_tensor(Tensor::zeros([d], device)),
                patch_embedding: Conv2dConfig::new([self.num_channels, d], [p, p])
                    .with_stride([p, p])
                    .with_bias(false)
                    .init(device),
                position_embedding: EmbeddingConfig::new(self.num_positions(), d).init(device),
                image_size: self.image_size,
            },
            pre_layrnorm: ln(),
            encoder: CLIPEncoder {
                layers: (0..self.num_hidden_layers)
                    .map(|_| shape.init(device))
                    .collect(),
            },
            post_layernorm: ln(),
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

impl CLIPVisionEmbeddings {
    /// Class token + patch embeddings of `pixel_values` `[b, channels, image_size, image_size]`,
    /// plus the position embeddings: `[b, 1 + patches, hidden]`.
    ///
    /// # Panics
    /// When the image is not `image_size` square (transformers raises; resize with
    /// [`super::CLIPImageProcessor`] first).
    pub fn forward(&self, pixel_values: Tensor<4>) -> Tensor<3> {
        let [b, _, h, w] = pixel_values.dims();
        assert!(
            h == self.image_size && w == self.image_size,
            "CLIP vision: input image size ({h}*{w}) doesn't match the model ({0}*{0})",
            self.image_size
        );
        let patches = self.patch_embedding.forward(pixel_values);
        let [_, d, gh, gw] = patches.dims();
        let patches = patches.reshape([b, d, gh * gw]).swap_dims(1, 2);
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([b, 1, d]);
        let positions = self.position_embedding.weight.val().unsqueeze_dim::<3>(0);
        Tensor::cat(vec![class, patches], 1) + positions
    }
}

impl CLIPVisionTransformer {
    pub fn hidden_size(&self) -> usize {
        self.embeddings.class_embedding.shape()[0]
    }

    pub fn forward(&self, pixel_values: Tensor<4>) -> VisionOutput {
        let eps = self.layer_norm_eps;
        let mut h = layer_norm(
            &self.pre_layrnorm,
            self.embeddings.forward(pixel_values),
            eps,
        );
        for layer in &self.encoder.layers {
            h = layer.forward_masked(h, false);
        }
        let [b, _, d] = h.dims();
        let class = h.clone().slice([0..b, 0..1, 0..d]).reshape([b, d]);
        VisionOutput {
            pooler_output: layer_norm(&self.post_layernorm, class, eps),
            last_hidden_state: h,
        }
    }
}

impl CLIPVisionModel {
    pub fn forward(&self, pixel_values: Tensor<4>) -> VisionOutput {
        self.vision_model.forward(pixel_values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn tiny(device: &Device) -> CLIPVisionModel {
        CLIPVisionConfig::new()
            .with_hidden_size(8)
            .with_intermediate_size(12)
            .with_num_hidden_layers(2)
            .with_num_attention_heads(2)
            .with_image_size(8)
            .with_patch_size(4)
            .init(device)
    }

    #[test]
    fn embeddings_are_class_then_patches_plus_positions() {
        let device = Device::flex();
        let mut model = tiny(&device);
        let emb = &mut model.vision_model.embeddings;
        emb.class_embedding =
            Param::from_tensor(Tensor::random([8], Distribution::Normal(0.0, 1.0), &device));
        let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let got = emb.forward(x.clone());
        assert_eq!(got.dims(), [2, 5, 8]);
        let pos = emb.position_embedding.weight.val();
        // the class token row is the class embedding plus position 0, in every image
        let want = (emb.class_embedding.val() + pos.clone().slice([0..1, 0..8]).reshape([8]))
            .reshape([1, 1, 8]);
        for i in 0..2 {
            let row = got.clone().slice([i..i + 1, 0..1, 0..8]);
            assert_eq!((row - want.clone()).abs().max().into_scalar::<f32>(), 0.0);
        }
        // patch (row 1, col 0) is the dot product of the conv weight with the 4x4 block at (4, 0)
        let block = x.slice([0..1, 0..3, 4..8, 0..4]).reshape([1, 48]);
        let weight = emb.patch_embedding.weight.val().reshape([8, 48]);
        let want = block.matmul(weight.transpose()) + pos.slice([3..4, 0..8]);
        let got = got.slice([0..1, 3..4, 0..8]).reshape([1, 8]);
        assert!((got - want).abs().max().into_scalar::<f32>() < 1e-5);
    }

    #[test]
    fn attention_is_not_causal_and_pooled_is_the_normed_class_token() {
        let device = Device::flex();
        let model = tiny(&device);
        let x = Tensor::<4>::random([1, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let out = model.forward(x.clone());
        // changing the last patch changes the class token: later positions are visible
        let mut y = x.clone();
        y = y.slice_assign(
            [0..1, 0..3, 4..8, 4..8],
            Tensor::ones([1, 3, 4, 4], &device) * 3.0,
        );
        let other = model.forward(y);
        let moved = (out.pooler_output.clone() - other.pooler_output)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(moved > 1e-4, "class token ignores later patches: {moved}");
        let tm = &model.vision_model;
        let class = out
            .last_hidden_state
            .slice([0..1, 0..1, 0..8])
            .reshape([1, 8]);
        let want = tm.post_layernorm.forward(class);
        assert!((out.pooler_output - want).abs().max().into_scalar::<f32>() < 1e-5);
    }

    #[test]
    #[should_panic(expected = "doesn't match the model")]
    fn wrong_image_size_is_refused() {
        let device = Device::flex();
        let model = tiny(&device);
        model.forward(Tensor::<4>::zeros([1, 3, 16, 16], &device));
    }
}
