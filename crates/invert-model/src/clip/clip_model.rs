//! transformers `CLIPModel` (models/clip/modeling_clip.py): the text tower of
//! [`super::text_model`], the vision tower of [`super::vision_model`], the bias-free
//! `text_projection` / `visual_projection` into a shared space, and `logit_scale`.
//!
//! `get_text_features` pools the final-LayerNorm'd last layer at one position per prompt and
//! projects it. transformers 5 picks the position from `text_config.eos_token_id`: with the legacy
//! value 2 (OpenAI's configs), `argmax(input_ids)`, the end-of-text token being the largest id of
//! CLIP's vocabulary; otherwise the first position of `eos_token_id` (0 when a row has none).
//! [`pooled_positions`] reproduces both.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use super::clip_config::{CLIPConfig, LEGACY_EOS_TOKEN_ID};
use super::text_model::CLIPTextTransformer;
use super::vision_model::CLIPVisionTransformer;

/// Field paths equal transformers' keys; `logit_scale` (a 0-d tensor there) is a plain value.
#[derive(Module, Debug)]
pub struct CLIPModel {
    pub text_model: CLIPTextTransformer,
    pub vision_model: CLIPVisionTransformer,
    /// `[vision hidden] -> [projection_dim]`, no bias.
    pub visual_projection: Linear,
    /// `[text hidden] -> [projection_dim]`, no bias.
    pub text_projection: Linear,
    /// The log of the similarity scale (`exp(logit_scale)` = 100 in OpenAI's trained models).
    pub logit_scale: f64,
    /// `text_config.eos_token_id` (see the module docs).
    pub text_eos_token_id: i64,
}

impl CLIPConfig {
    pub fn init(&self, device: &Device) -> CLIPModel {
        let projection = |width| {
            LinearConfig::new(width, self.projection_dim)
                .with_bias(false)
                .init(device)
        };
        CLIPModel {
            text_model: self.text_config.init_transformer(device),
            vision_model: self.vision_config.init_transformer(device),
            visual_projection: projection(self.vision_config.hidden_size),
            text_projection: projection(self.text_config.hidden_size),
            logit_scale: self.logit_scale_init_value,
            text_eos_token_id: self.text_eos_token_id,
        }
    }
}

/// The position transformers pools each row of `ids` `[b, l]` at: `argmax` (first maximum) when
/// `eos_token_id` is the legacy 2, else the first `eos_token_id` (0 when the row has none).
pub fn pooled_positions(ids: &Tensor<2, Int>, eos_token_id: i64) -> Vec<usize> {
    let [b, l] = ids.dims();
    let values = ids
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("int ids convert to i64");
    (0..b)
        .map(|r| {
            let row = &values[r * l..(r + 1) * l];
            if eos_token_id == LEGACY_EOS_TOKEN_ID {
                // the first of equal maxima, as torch.argmax
                row.iter()
                    .enumerate()
                    .fold(
                        (0, i64::MIN),
                        |best, (i, &v)| if v > best.1 { (i, v) } else { best },
                    )
                    .0
            } else {
                row.iter().position(|&v| v == eos_token_id).unwrap_or(0)
            }
        })
        .collect()
}

/// Rows `positions[i]` of each `h[i]`: `[b, l, d]` -> `[b, d]`.
fn gather_rows(h: Tensor<3>, positions: &[usize]) -> Tensor<2> {
    let [b, l, d] = h.dims();
    let flat: Vec<i64> = positions
        .iter()
        .enumerate()
        .map(|(i, &p)| (i * l + p) as i64)
        .collect();
    let index = Tensor::<1, Int>::from_data(TensorData::new(flat, [b]), &h.device());
    h.reshape([b * l, d]).select(0, index)
}

impl CLIPModel {
    pub fn projection_dim(&self) -> usize {
        self.text_projection.weight.shape()[1]
    }

    /// transformers' `get_text_features(input_ids)`: `[b, projection_dim]`, not normalised.
    pub fn get_text_features(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        self.text_features(ids, None)
    }

    /// [`get_text_features`](Self::get_text_features) with new words: ids `>= vocab_size` read
    /// rows of `extra` (see [`CLIPTextTransformer::embed`]).
    pub fn text_features(&self, ids: Tensor<2, Int>, extra: Option<&Tensor<2>>) -> Tensor<2> {
        let tm = &self.text_model;
        let positions = pooled_positions(&ids, self.text_eos_token_id);
        let last = tm.final_norm(tm.hidden_state(ids, extra, tm.num_layers()));
        self.text_projection.forward(gather_rows(last, &positions))
    }

    /// transformers' `get_image_features(pixel_values)`: `[b, projection_dim]`, not normalised.
    /// `pixel_values` `[b, 3, image_size, image_size]` as [`super::CLIPImageProcessor`] makes them.
    pub fn get_image_features(&self, pixel_values: Tensor<4>) -> Tensor<2> {
        let pooled = self.vision_model.forward(pixel_values).pooler_output;
        self.visual_projection.forward(pooled)
    }

    /// transformers' `logits_per_image` `[images, texts]`: cosine similarities of the features
    /// times `exp(logit_scale)`.
    pub fn logits_per_image(
        &self,
        image_features: Tensor<2>,
        text_features: Tensor<2>,
    ) -> Tensor<2> {
        let scale = self.logit_scale.exp();
        normalize(image_features)
            .matmul(normalize(text_features).transpose())
            .mul_scalar(scale)
    }
}

/// Each row divided by its L2 norm (transformers' `_get_vector_norm`).
pub fn normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt();
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::{CLIPTextConfig, CLIPVisionConfig};
    use burn::tensor::Distribution;

    fn tiny(device: &Device, eos: i64) -> CLIPModel {
        let text = CLIPTextConfig::new()
            .with_vocab_size(10)
            .with_hidden_size(8)
            .with_intermediate_size(16)
            .with_num_hidden_layers(2)
            .with_num_attention_heads(2)
            .with_max_position_embeddings(6);
        let vision = CLIPVisionConfig::new()
            .with_hidden_size(12)
            .with_intermediate_size(16)
            .with_num_hidden_layers(2)
            .with_num_attention_heads(3)
            .with_image_size(8)
            .with_patch_size(4);
        CLIPConfig::new(text, vision)
            .with_projection_dim(5)
            .with_text_eos_token_id(eos)
            .init(device)
    }

    #[test]
    fn pooling_follows_both_transformers_rules() {
        let device = Device::flex();
        // 9 = end of text; 12 a learned word (> eos): argmax picks it, the eos rule does not
        let ids = Tensor::<2, Int>::from_data([[8, 12, 3, 9, 9, 9], [8, 4, 5, 5, 1, 2]], &device);
        assert_eq!(pooled_positions(&ids, LEGACY_EOS_TOKEN_ID), vec![1, 0]);
        assert_eq!(pooled_positions(&ids, 9), vec![3, 0]);
        let ties = Tensor::<2, Int>::from_data([[1, 7, 7, 2]], &device);
        assert_eq!(pooled_positions(&ties, LEGACY_EOS_TOKEN_ID), vec![1]);
    }

    #[test]
    fn text_features_project_the_pooled_row() {
        let device = Device::flex();
        let model = tiny(&device, 9);
        let ids = Tensor::<2, Int>::from_data([[8, 1, 3, 9, 9, 9], [8, 4, 9, 9, 9, 9]], &device);
        let got = model.get_text_features(ids.clone());
        assert_eq!(got.dims(), [2, 5]);
        let tm = &model.text_model;
        let last = tm.final_norm(tm.hidden_state(ids, None, 2));
        for (row, pos) in [(0, 3), (1, 2)] {
            let pooled = last
                .clone()
                .slice([row..row + 1, pos..pos + 1, 0..8])
                .reshape([1, 8]);
            let want = model.text_projection.forward(pooled);
            let d = (got.clone().slice([row..row + 1, 0..5]) - want)
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(d < 1e-6, "row {row}: {d}");
        }
    }

    #[test]
    fn image_features_and_logits() {
        let device = Device::flex();
        let model = tiny(&device, 9);
        let pixels = Tensor::<4>::random([3, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let image = model.get_image_features(pixels.clone());
        assert_eq!(image.dims(), [3, 5]);
        let pooled = model.vision_model.forward(pixels).pooler_output;
        let want = model.visual_projection.forward(pooled);
        assert_eq!((image.clone() - want).abs().max().into_scalar::<f32>(), 0.0);
        let ids = Tensor::<2, Int>::from_data([[8, 1, 3, 9, 9, 9]], &device);
        let text = model.get_text_features(ids);
        let logits = model.logits_per_image(image.clone(), text);
        assert_eq!(logits.dims(), [3, 1]);
        // the same image against itself scores exp(logit_scale)
        let own = model
            .logits_per_image(image.clone(), image)
            .slice([0..1, 0..1]);
        let want = model.logit_scale.exp() as f32;
        assert!((own.into_scalar::<f32>() - want).abs() < 1e-3 * want);
    }
}
