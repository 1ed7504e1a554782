//! diffusers `Attention` (models/attention_processor.py) with the `AttnProcessor2_0` maths:
//! multi-head scaled-dot-product attention with separate q/k/v projections and `to_out.0`.
//! Used by the U-Net's `BasicTransformerBlock` (self- and cross-attention) and by the VAE's
//! mid-block (spatial self-attention with its own GroupNorm and residual).

use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::prelude::*;

pub use crate::fused::attention::multi_head_attention;
use crate::layers::{group_norm, group_norm_act, image_to_tokens, linear_fused, tokens_to_image};

#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Width of the queries (the block's channels).
    pub query_dim: usize,
    /// Width of the keys/values source; `None` for self-attention.
    pub cross_attention_dim: Option<usize>,
    pub heads: usize,
    pub dim_head: usize,
    /// Bias on `to_q/to_k/to_v` (false in the U-Net, true in the VAE).
    #[config(default = false)]
    pub bias: bool,
    /// Compute the scores in f32 when the weights are half precision (SD 2.x 768-v sets
    /// `upcast_attention`; the VAE always upcasts its softmax).
    #[config(default = false)]
    pub upcast: bool,
    /// GroupNorm over the input before projection (VAE mid-block): `(groups, eps)`.
    pub group_norm: Option<(usize, f64)>,
    /// Add the input back after `to_out` (VAE mid-block).
    #[config(default = false)]
    pub residual_connection: bool,
}

#[derive(Module, Debug)]
pub struct Attention {
    pub group_norm: Option<GroupNorm>,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// diffusers keeps `[Linear, Dropout]`; the Vec makes the key `to_out.0.*` map directly.
    pub to_out: Vec<Linear>,
    pub heads: usize,
    pub upcast: bool,
    pub residual_connection: bool,
}

impl AttentionConfig {
    pub fn init(&self, device: &Device) -> Attention {
        let inner = self.heads * self.dim_head;
        let kv_dim = self.cross_attention_dim.unwrap_or(self.query_dim);
        let proj = |i, o| LinearConfig::new(i, o).with_bias(self.bias).init(device);
        Attention {
            group_norm: self
                .group_norm
                .map(|(groups, eps)| group_norm(groups, self.query_dim, eps, device)),
            to_q: proj(self.query_dim, inner),
            to_k: proj(kv_dim, inner),
            to_v: proj(kv_dim, inner),
            to_out: vec![LinearConfig::new(inner, self.query_dim).init(device)],
            heads: self.heads,
            upcast: self.upcast,
            residual_connection: self.residual_connection,
        }
    }
}

impl Attention {
    /// Token attention: `x` is `[b, lq, query_dim]`, `context` `[b, lk, cross_dim]` or `None`.
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = linear_fused(&self.to_q, x);
        let k = linear_fused(&self.to_k, context.clone());
        let v = linear_fused(&self.to_v, context);
        let out = multi_head_attention(q, k, v, self.heads, self.upcast, false);
        linear_fused(&self.to_out[0], out)
    }

    /// Spatial self-attention over an image `[b, c, h, w]` (the VAE mid-block form: optional
    /// GroupNorm first, optional residual).
    pub fn forward_image(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let residual = x.clone();
        let x = match &self.group_norm {
            Some(norm) => group_norm_act(norm, x, false),
            None => x,
        };
        let out = tokens_to_image(self.forward(image_to_tokens(x), None), h, w);
        if self.residual_connection {
            out + residual
        } else {
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn vae_attention_keeps_the_image_shape_and_adds_the_residual() {
        let device = Device::flex();
        let cfg = AttentionConfig {
            query_dim: 8,
            cross_attention_dim: None,
            heads: 1,
            dim_head: 8,
            bias: true,
            upcast: true,
            group_norm: Some((4, 1e-6)),
            residual_connection: true,
        };
        let attn = cfg.init(&device);
        let x = Tensor::<4>::random([1, 8, 3, 4], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(attn.forward_image(x).dims(), [1, 8, 3, 4]);
    }
}
