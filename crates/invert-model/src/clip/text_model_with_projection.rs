//! transformers `CLIPTextModelWithProjection` (models/clip/modeling_clip.py): the CLIP text
//! tower of [`super::text_model`] plus `text_projection`, a bias-free linear map of the pooled
//! output. SDXL's second text encoder (OpenCLIP ViT-bigG/14: width 1280, 32 layers, gelu).
//!
//! SDXL conditions its U-Net on two things from it (diffusers'
//! `StableDiffusionXLPipeline.encode_prompt`): the penultimate hidden state *without* the final
//! LayerNorm (`hidden_states[-2]`), concatenated with the first encoder's, and the pooled text
//! embedding: the final-LayerNorm'd last layer at the end-of-text position, times
//! `text_projection`. transformers finds that position with `argmax(input_ids)` when the config
//! carries the legacy `eos_token_id = 2` (SDXL's does), which is right for plain text (the
//! end-of-text id 49407 is the largest) and wrong once a prompt holds a learned word (ids from
//! 49408 up); here the position is the first end-of-text id, what `argmax` means for plain text.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use super::config::CLIPTextConfig;
use super::text_model::CLIPTextTransformer;

/// Field paths equal transformers' keys (`text_model.encoder.layers.0...`, `text_projection`).
#[derive(Module, Debug)]
pub struct CLIPTextModelWithProjection {
    pub text_model: CLIPTextTransformer,
    pub text_projection: Linear,
}

/// What SDXL takes from the second text encoder.
pub struct ProjectedText {
    /// `[b, l, d]`: the output of all layers but the last (by default), before the final
    /// LayerNorm.
    pub penultimate: Tensor<3>,
    /// `[b, projection_dim]`: the pooled, projected text embedding (`text_embeds`).
    pub text_embeds: Tensor<2>,
}

impl CLIPTextConfig {
    pub fn init_with_projection(&self, device: &Device) -> CLIPTextModelWithProjection {
        CLIPTextModelWithProjection {
            text_model: self.init_transformer(device),
            text_projection: LinearConfig::new(self.hidden_size, self.projection_dim)
                .with_bias(false)
                .init(device),
        }
    }
}

impl CLIPTextModelWithProjection {
    pub fn vocab_size(&self) -> usize {
        self.text_model.vocab_size()
    }

    pub fn hidden_size(&self) -> usize {
        self.text_model.embeddings.token_embedding.weight.shape()[1]
    }

    pub fn projection_dim(&self) -> usize {
        self.text_projection.weight.shape()[1]
    }

    /// The penultimate hidden state and the pooled text embedding of `ids` `[b, l]` (new words'
    /// rows in `extra`, as in [`CLIPTextTransformer::embed`]). The pooled row of each prompt is
    /// its first `eos_id` (the tokenizer's end-of-text token, 49407 in CLIP's vocabulary), or its
    /// last position if it has none.
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        extra: Option<&Tensor<2>>,
        eos_id: i64,
    ) -> ProjectedText {
        self.forward_skipping(ids, extra, eos_id, 1)
    }

    /// [`forward`](Self::forward) with the hidden state taken `clip_skip - 1` layers earlier
    /// (diffusers' SDXL `clip_skip = k` takes `hidden_states[-(k + 2)]`, i.e. A1111's clip skip
    /// `k + 1`); the pooled embedding always comes from the last layer.
    pub fn forward_skipping(
        &self,
        ids: Tensor<2, Int>,
        extra: Option<&Tensor<2>>,
        eos_id: i64,
        clip_skip: usize,
    ) -> ProjectedText {
        let tm = &self.text_model;
        let n = tm.num_layers();
        assert!(
            n >= 2,
            "CLIPTextModelWithProjection: SDXL needs at least 2 layers"
        );
        let eos = end_of_text_positions(&ids, eos_id);
        let used = n - clip_skip.clamp(1, n - 1);
        let hidden = tm.hidden_state(ids, extra, used);
        let mut last = hidden.clone();
        for i in used..n {
            last = tm.layer(i, last);
        }
        let last = tm.final_norm(last);
        let [b, _, d] = last.dims();
        let rows = eos
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                last.clone()
                    .slice([i..i + 1, p..p + 1, 0..d])
                    .reshape([1, d])
            })
            .collect::<Vec<_>>();
        debug_assert_eq!(rows.len(), b);
        let pooled = Tensor::cat(rows, 0);
        ProjectedText {
            penultimate: hidden,
            text_embeds: self.text_projection.forward(pooled),
        }
    }
}

/// Each row's first `eos_id`, or its last position when it holds none.
pub fn end_of_text_positions(ids: &Tensor<2, Int>, eos_id: i64) -> Vec<usize> {
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
            row.iter().position(|&v| v == eos_id).unwrap_or(l - 1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn tiny(device: &Device) -> CLIPTextModelWithProjection {
        CLIPTextConfig::new()
            .with_vocab_size(10)
            .with_hidden_size(8)
            .with_intermediate_size(16)
            .with_num_hidden_layers(3)
            .with_num_attention_heads(2)
            .with_max_position_embeddings(6)
            .with_hidden_act("gelu".into())
            .with_projection_dim(5)
            .init_with_projection(device)
    }

    #[test]
    fn pooled_row_is_the_first_end_of_text_even_after_a_learned_word() {
        let device = Device::flex();
        let model = tiny(&device);
        let extra = Tensor::<2>::random([1, 8], Distribution::Normal(0.0, 1.0), &device);
        // id 10 is a learned word (>= vocab); 9 is the end of text; 0 pads (SDXL's second
        // tokenizer pads with id 0). argmax(ids) would pick position 1.
        let ids = Tensor::<2, Int>::from_data([[8, 10, 3, 9, 0, 0], [8, 4, 9, 9, 9, 9]], &device);
        assert_eq!(end_of_text_positions(&ids, 9), vec![3, 2]);
        let out = model.forward(ids.clone(), Some(&extra), 9);
        assert_eq!(out.penultimate.dims(), [2, 6, 8]);
        assert_eq!(out.text_embeds.dims(), [2, 5]);

        let tm = &model.text_model;
        let all = tm.final_norm(tm.hidden_state(ids.clone(), Some(&extra), 3));
        for (row, pos) in [(0, 3), (1, 2)] {
            let pooled = all
                .clone()
                .slice([row..row + 1, pos..pos + 1, 0..8])
                .reshape([1, 8]);
            let want = model.text_projection.forward(pooled);
            let got = out.text_embeds.clone().slice([row..row + 1, 0..5]);
            assert_eq!((got - want).abs().max().into_scalar::<f32>(), 0.0);
        }
        let want = tm.hidden_state(ids, Some(&extra), 2);
        assert_eq!(
            (out.penultimate - want).abs().max().into_scalar::<f32>(),
            0.0,
            "penultimate: two of three layers, no final LayerNorm"
        );
    }

    #[test]
    fn a_row_without_end_of_text_pools_its_last_position() {
        let device = Device::flex();
        let ids = Tensor::<2, Int>::from_data([[8, 1, 2, 3]], &device);
        assert_eq!(end_of_text_positions(&ids, 9), vec![3]);
    }

    #[test]
    fn gradients_reach_the_new_rows_through_both_outputs() {
        let device = Device::flex().autodiff();
        let model = tiny(&device).no_grad();
        let ids = Tensor::<2, Int>::from_data([[8, 10, 9, 0, 0, 0]], &device);
        for use_pooled in [false, true] {
            let extra =
                Tensor::<2>::random([1, 8], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let out = model.forward(ids.clone(), Some(&extra), 9);
            let loss = if use_pooled {
                out.text_embeds.powf_scalar(2.0).sum()
            } else {
                out.penultimate.powf_scalar(2.0).sum()
            };
            let grads = loss.backward();
            let g = extra.grad(&grads).expect("the new row gets a gradient");
            assert!(
                g.abs().sum().into_scalar::<f32>() > 0.0,
                "pooled {use_pooled}"
            );
            assert!(model.text_projection.weight.val().grad(&grads).is_none());
        }
    }
}
