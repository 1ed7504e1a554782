//! diffusers `UNet2DConditionModel` (models/unets/unet_2d_condition.py), restricted to what
//! SD 1.x/2.x and SDXL use: positional time embedding, cross-attention down/mid/up blocks, and
//! SDXL's `text_time` additional embedding.

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use super::config::UNet2DConditionConfig;
use super::embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, timestep_projection};
use super::unet_blocks::{
    BlockSettings, BlockShape, DownBlock, UNetMidBlock2DCrossAttn, UNetMidBlock2DCrossAttnConfig,
    UpBlock,
};
use crate::attention::{AttentionControl, reborrow};
use crate::layers::{Pre, conv_fused, conv2d, group_norm};

#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: UNetMidBlock2DCrossAttn,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    /// SDXL's `add_embedding` (`TimestepEmbedding(projection_class_embeddings_input_dim,
    /// time_embed_dim)`), with `addition_embed_type: "text_time"`.
    pub add_embedding: Option<TimestepEmbedding>,
    /// `add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)`.
    pub add_time_proj_dim: usize,
    /// `Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)`.
    pub time_proj_dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
}

impl UNet2DConditionConfig {
    /// Builds the model. Call [`UNet2DConditionConfig::unsupported`] first for a message
    /// instead of a panic on configs this implementation cannot build.
    pub fn init(&self, device: &Device) -> UNet2DConditionModel {
        if let Some(why) = self.unsupported() {
            panic!("unsupported U-Net config: {why}");
        }
        let ch = &self.block_out_channels;
        let n = ch.len();
        let heads = self.heads().expect("checked by unsupported()");
        let layers = self
            .transformer_layers_per_block
            .expand(n)
            .expect("checked");
        let resnets = self.layers_per_block.expand(n).expect("checked");
        let time_embed_dim = ch[0] * 4;
        let settings = BlockSettings {
            temb_channels: time_embed_dim,
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            use_linear_projection: self.use_linear_projection,
            upcast_attention: self.upcast_attention,
        };

        let down_blocks = (0..n)
            .map(|i| {
                let cross = self.down_block_types[i] == "CrossAttnDownBlock2D";
                BlockShape {
                    in_channels: if i == 0 { ch[0] } else { ch[i - 1] },
                    out_channels: ch[i],
                    prev_output_channels: 0,
                    num_layers: resnets[i],
                    attention: cross.then_some((heads[i], layers[i])),
                    resample: i + 1 < n,
                    downsample_padding: self.downsample_padding,
                }
                .init_down(&settings, device)
            })
            .collect();

        let mid_block = UNetMidBlock2DCrossAttnConfig::new(ch[n - 1], heads[n - 1], layers[n - 1])
            .init(&settings, device);

        let rev = |v: &[usize], i: usize| v[n - 1 - i];
        let up_blocks = (0..n)
            .map(|i| {
                let cross = self.up_block_types[i] == "CrossAttnUpBlock2D";
                BlockShape {
                    in_channels: rev(ch, (i + 1).min(n - 1)),
                    out_channels: rev(ch, i),
                    prev_output_channels: if i == 0 { ch[n - 1] } else { rev(ch, i - 1) },
                    num_layers: rev(&resnets, i) + 1,
                    attention: cross.then_some((rev(&heads, i), rev(&layers, i))),
                    resample: i + 1 < n,
                    downsample_padding: 0,
                }
                .init_up(&settings, device)
            })
            .collect();

        UNet2DConditionModel {
            conv_in: conv2d(self.in_channels, ch[0], 3, 1, 1, device),
            time_embedding: TimestepEmbeddingConfig::new(ch[0], time_embed_dim).init(device),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(self.norm_num_groups, ch[0], self.norm_eps, device),
            conv_out: conv2d(ch[0], self.out_channels, 3, 1, 1, device),
            add_embedding: self
                .projection_class_embeddings_input_dim
                .and_then(|input| {
                    self.addition_embed_type
                        .is_some()
                        .then(|| TimestepEmbeddingConfig::new(input, time_embed_dim).init(device))
                }),
            add_time_proj_dim: self.addition_time_embed_dim.unwrap_or(0),
            time_proj_dim: ch[0],
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
        }
    }
}

/// SDXL's added conditions (`added_cond_kwargs` in diffusers).
#[derive(Clone, Debug)]
pub struct AddedConditions {
    /// The pooled, projected text embedding of the second text encoder, `[b, pooled dim]`.
    pub text_embeds: Tensor<2>,
    /// `(original h, w, crop top, left, target h, w)` per image, `[b, 6]`.
    pub time_ids: Tensor<2>,
}

impl UNet2DConditionModel {
    /// The time embedding of `timesteps` `[b]` (float, so fractional timesteps work).
    pub fn time_embed(&self, timesteps: Tensor<1>) -> Tensor<2> {
        let dtype = self.conv_in.weight.val().dtype();
        let t = timestep_projection(
            timesteps,
            self.time_proj_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
        );
        self.time_embedding.forward(t.cast(dtype))
    }

    /// Whether the model needs [`AddedConditions`] (SDXL).
    pub fn needs_added_conditions(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// `get_aug_embed` for `text_time`: each of the six numbers projected like a timestep,
    /// concatenated after the pooled text embedding, through `add_embedding`.
    fn added_embed(&self, add: &TimestepEmbedding, added: &AddedConditions) -> Tensor<2> {
        let dtype = self.conv_in.weight.val().dtype();
        let [b, n] = added.time_ids.dims();
        let times = timestep_projection(
            added.time_ids.clone().reshape([b * n]),
            self.add_time_proj_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
        )
        .reshape([b, n * self.add_time_proj_dim]);
        let text = added.text_embeds.clone().cast(burn::tensor::DType::F32);
        let input: Tensor<2> = Tensor::cat(vec![text, times], 1);
        add.forward(input.cast(dtype))
    }

    /// Predicts noise (or v) for `sample` `[b, c, h, w]` at `timesteps` `[b]` given the text
    /// conditioning `context` `[b, 77, cross_attention_dim]` (SD 1.x/2.x).
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timesteps: Tensor<1>,
        context: Tensor<3>,
    ) -> Tensor<4> {
        self.forward_with(sample, timesteps, context, None)
    }

    /// [`Self::forward`] with SDXL's added conditions, which a model with `add_embedding`
    /// requires (as diffusers' `get_aug_embed` does).
    pub fn forward_with(
        &self,
        sample: Tensor<4>,
        timesteps: Tensor<1>,
        context: Tensor<3>,
        added: Option<&AddedConditions>,
    ) -> Tensor<4> {
        self.forward_controlled(sample, timesteps, context, added, None)
    }

    /// [`Self::forward_with`] with an [`AttentionControl`] that sees (and may replace) the
    /// attention probabilities of every transformer block, in call order: down blocks, mid,
    /// up blocks, each block's `attn1` before its `attn2` (diffusers' attention-processor order,
    /// which `register_attention_control` in the Prompt-to-Prompt reference relies on).
    pub fn forward_controlled(
        &self,
        sample: Tensor<4>,
        timesteps: Tensor<1>,
        context: Tensor<3>,
        added: Option<&AddedConditions>,
        mut control: Option<&mut dyn AttentionControl>,
    ) -> Tensor<4> {
        // Callers keep latents and conditioning in f32; the network computes in its weights'
        // dtype (f16/bf16 with `--precision`), and the prediction is returned in that dtype.
        let dtype = self.conv_in.weight.val().dtype();
        let (sample, context) = (sample.cast(dtype), context.cast(dtype));
        let mut temb = self.time_embed(timesteps);
        match (&self.add_embedding, added) {
            (Some(add), Some(added)) => temb = temb + self.added_embed(add, added),
            (Some(_), None) => panic!(
                "this U-Net (addition_embed_type text_time, SDXL) needs text_embeds and time_ids"
            ),
            (None, _) => {}
        }
        let mut h = conv_fused(&self.conv_in, sample, Pre::None, None, None);
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, res) = block.forward(h, &temb, &context, reborrow(&mut control));
            h = out;
            skips.extend(res);
        }
        h = self
            .mid_block
            .forward(h, &temb, &context, reborrow(&mut control));
        for block in &self.up_blocks {
            let mine = skips.split_off(skips.len() - block.num_resnets());
            // Upsample to the next skip's size, which handles odd sizes like diffusers'
            // `forward_upsample_size` and equals plain x2 otherwise.
            let size = skips.last().map(|s| {
                let [_, _, hh, ww] = s.dims();
                [hh, ww]
            });
            h = block.forward(h, mine, &temb, &context, size, reborrow(&mut control));
        }
        conv_fused(
            &self.conv_out,
            h,
            Pre::Norm(&self.conv_norm_out, true),
            None,
            None,
        )
    }
}
