//! diffusers `Transformer2DModel` (models/transformers/transformer_2d.py) with its
//! `BasicTransformerBlock` and GEGLU `FeedForward` (models/attention.py), as SD 1.x/2.x use them.

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::attention::{
    Attention, AttentionConfig, AttentionControl, AttentionPlace, UNetPlace, reborrow,
};
use crate::fused::geglu::geglu;
use crate::fused::layer_norm::layer_norm;
use crate::layers::{
    Pre, conv_fused, conv2d, group_norm, group_norm_act, image_to_tokens, linear_fused,
    tokens_to_image,
};

/// `BasicTransformerBlock`'s `norm_eps` (diffusers' default, which SD 1.x/2.x keep).
const NORM_EPS: f64 = 1e-5;

/// GEGLU: `proj` to twice the width, the second half gates the first through exact GELU.
#[derive(Module, Debug)]
pub struct GEGLU {
    pub proj: Linear,
}

/// diffusers keeps `net = [GEGLU, Dropout, Linear]`; checkpoint keys `ff.net.0.proj` and
/// `ff.net.2` map to `ff.geglu.proj` and `ff.proj_out` (see `unet/keys.rs`).
#[derive(Module, Debug)]
pub struct FeedForward {
    pub geglu: GEGLU,
    pub proj_out: Linear,
}

impl FeedForward {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let y = geglu(linear_fused(&self.geglu.proj, x));
        linear_fused(&self.proj_out, y)
    }
}

#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    /// `control` sees `attn1` (self) then `attn2` (cross) at `place` over an `[h, w]` grid.
    fn forward(
        &self,
        x: Tensor<3>,
        context: &Tensor<3>,
        mut control: Option<&mut dyn AttentionControl>,
        place: UNetPlace,
        [height, width]: [usize; 2],
    ) -> Tensor<3> {
        let at = |is_cross| AttentionPlace {
            place,
            is_cross,
            height,
            width,
        };
        let norm = |ln: &LayerNorm, x: Tensor<3>| layer_norm(ln, x, NORM_EPS);
        let hook = reborrow(&mut control).map(|c| (c, at(false)));
        let x = x.clone() + self.attn1.forward_hooked(norm(&self.norm1, x), None, hook);
        let hook = control.map(|c| (c, at(true)));
        let x = x.clone()
            + self
                .attn2
                .forward_hooked(norm(&self.norm2, x), Some(context.clone()), hook);
        x.clone() + self.ff.forward(norm(&self.norm3, x))
    }
}

/// `proj_in`/`proj_out`: a 1x1 conv (SD 1.x) or a linear layer (SD 2.x,
/// `use_linear_projection`). Loaded with `skip_enum_variants`, so the key stays `proj_in.weight`.
#[derive(Module, Debug)]
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Config, Debug)]
pub struct Transformer2DModelConfig {
    pub channels: usize,
    pub heads: usize,
    pub num_layers: usize,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
}

#[derive(Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

impl Transformer2DModelConfig {
    pub fn init(&self, device: &Device) -> Transformer2DModel {
        let c = self.channels;
        let projection = || {
            if self.use_linear_projection {
                Projection::Linear(LinearConfig::new(c, c).init(device))
            } else {
                Projection::Conv(conv2d(c, c, 1, 1, 0, device))
            }
        };
        let attention = |cross| AttentionConfig {
            query_dim: c,
            cross_attention_dim: cross,
            heads: self.heads,
            dim_head: c / self.heads,
            bias: false,
            upcast: self.upcast_attention,
            group_norm: None,
            residual_connection: false,
        };
        let ln = || LayerNormConfig::new(c).with_epsilon(NORM_EPS).init(device);
        let transformer_blocks = (0..self.num_layers)
            .map(|_| BasicTransformerBlock {
                norm1: ln(),
                attn1: attention(None).init(device),
                norm2: ln(),
                attn2: attention(Some(self.cross_attention_dim)).init(device),
                norm3: ln(),
                ff: FeedForward {
                    geglu: GEGLU {
                        proj: LinearConfig::new(c, c * 8).init(device),
                    },
                    proj_out: LinearConfig::new(c * 4, c).init(device),
                },
            })
            .collect();
        Transformer2DModel {
            // Transformer2DModel hard-codes eps 1e-6 for this GroupNorm.
            norm: group_norm(self.norm_num_groups, c, 1e-6, device),
            proj_in: projection(),
            transformer_blocks,
            proj_out: projection(),
        }
    }
}

impl Transformer2DModel {
    /// `control`, when set, sees every attention call of the blocks (see
    /// [`AttentionControl`]), tagged with `place`.
    pub fn forward(
        &self,
        x: Tensor<4>,
        context: &Tensor<3>,
        mut control: Option<&mut dyn AttentionControl>,
        place: UNetPlace,
    ) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let residual = x.clone();
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => image_to_tokens(conv_fused(
                conv,
                x,
                Pre::Norm(&self.norm, false),
                None,
                None,
            )),
            Projection::Linear(lin) => {
                linear_fused(lin, image_to_tokens(group_norm_act(&self.norm, x, false)))
            }
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context, reborrow(&mut control), place, [h, w]);
        }
        match &self.proj_out {
            Projection::Conv(conv) => conv_fused(
                conv,
                tokens_to_image(tokens, h, w),
                Pre::None,
                None,
                Some(residual),
            ),
            Projection::Linear(lin) => residual + tokens_to_image(linear_fused(lin, tokens), h, w),
        }
    }
}
