//! diffusers `Attention` (models/attention_processor.py) with the `AttnProcessor2_0` maths:
//! multi-head scaled-dot-product attention with separate q/k/v projections and `to_out.0`.
//! Used by the U-Net's `BasicTransformerBlock` (self- and cross-attention) and by the VAE's
//! mid-block (spatial self-attention with its own GroupNorm and residual).

use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;

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

/// Which part of the U-Net an attention layer sits in: the reference's `place_in_unet`
/// (`register_attention_control` in diffusers' examples/community/pipeline_prompt2prompt.py).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UNetPlace {
    Down,
    Mid,
    Up,
}

/// One attention call of the U-Net as an [`AttentionControl`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionPlace {
    pub place: UNetPlace,
    /// `attn2` (keys from the text) rather than `attn1` (keys from the image tokens).
    pub is_cross: bool,
    /// The query tokens' grid, `height * width = lq` (the latent size at this level).
    pub height: usize,
    pub width: usize,
}

/// A hook on the U-Net's attention probabilities: diffusers' attention processors reduced to
/// what Prompt-to-Prompt needs (`P2PCrossAttnProcessor` calls `controller(attention_probs,
/// is_cross, place_in_unet)` between the softmax and `probs @ v`).
pub trait AttentionControl {
    /// Whether this call's probabilities are wanted; `false` keeps the fused kernel, which
    /// never materialises them (e.g. large self-attention layers the controller ignores).
    fn wants(&self, at: &AttentionPlace) -> bool {
        let _ = at;
        true
    }

    /// `probs` `[b, heads, lq, lk]` in f32 (softmax rows); returns the probabilities the layer
    /// then applies to the values, same shape.
    fn control(&mut self, probs: Tensor<4>, at: &AttentionPlace) -> Tensor<4>;
}

/// An attention call's controller and place, threaded down the U-Net's forward calls.
pub type AttentionHook<'a> = Option<(&'a mut dyn AttentionControl, AttentionPlace)>;

/// Reborrows a threaded controller for one call. `Option::as_deref_mut` cannot: `&mut` is
/// invariant, so the trait object's lifetime must be shortened by this coercion.
pub fn reborrow<'s>(
    control: &'s mut Option<&mut dyn AttentionControl>,
) -> Option<&'s mut dyn AttentionControl> {
    match control {
        Some(c) => Some(&mut **c),
        None => None,
    }
}

impl Attention {
    /// Token attention: `x` is `[b, lq, query_dim]`, `context` `[b, lk, cross_dim]` or `None`.
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        self.forward_hooked(x, context, None)
    }

    /// [`Self::forward`] with an optional [`AttentionControl`]: without one (or when it does not
    /// want this call) the fused attention runs; with one the probabilities are computed
    /// explicitly, handed to it, and its result is applied to the values.
    pub fn forward_hooked(
        &self,
        x: Tensor<3>,
        context: Option<Tensor<3>>,
        hook: AttentionHook<'_>,
    ) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = linear_fused(&self.to_q, x);
        let k = linear_fused(&self.to_k, context.clone());
        let v = linear_fused(&self.to_v, context);
        let out = match hook {
            Some((control, at)) if control.wants(&at) => {
                controlled_attention(q, k, v, self.heads, control, &at)
            }
            _ => multi_head_attention(q, k, v, self.heads, self.upcast, false),
        };
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

/// Multi-head attention with the probabilities explicit, as diffusers' `AttnProcessor`
/// (`get_attention_scores`: `softmax(q k^T * dim_head^-0.5)`, then `probs @ v`), in f32 whatever
/// the weights' dtype, with `control` between the softmax and the product.
fn controlled_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    control: &mut dyn AttentionControl,
    at: &AttentionPlace,
) -> Tensor<3> {
    let [b, lq, inner] = q.dims();
    let lk = k.dims()[1];
    let d = inner / heads;
    let dtype = q.dtype();
    let split =
        |t: Tensor<3>, l: usize| t.cast(DType::F32).reshape([b, l, heads, d]).swap_dims(1, 2);
    let (q, k, v) = (split(q, lq), split(k, lk), split(v, lk));
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar((d as f64).powf(-0.5));
    let probs = control.control(softmax(scores, 3), at);
    probs
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([b, lq, inner])
        .cast(dtype)
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

    /// Records what it saw and hands the probabilities back unchanged (or uniform).
    struct Probe {
        seen: Vec<(AttentionPlace, [usize; 4], f32)>,
        uniform: bool,
    }

    impl AttentionControl for Probe {
        fn control(&mut self, probs: Tensor<4>, at: &AttentionPlace) -> Tensor<4> {
            let row_sum_err = (probs.clone().sum_dim(3) - 1.0)
                .abs()
                .max()
                .into_scalar::<f32>();
            self.seen.push((*at, probs.dims(), row_sum_err));
            if self.uniform {
                probs.ones_like().div_scalar(probs.dims()[3] as f64)
            } else {
                probs
            }
        }
    }

    fn cross_attention(device: &Device) -> Attention {
        AttentionConfig {
            query_dim: 16,
            cross_attention_dim: Some(8),
            heads: 2,
            dim_head: 8,
            bias: false,
            upcast: false,
            group_norm: None,
            residual_connection: false,
        }
        .init(device)
    }

    #[test]
    fn explicit_probabilities_match_the_fused_path_and_can_be_replaced() {
        let device = Device::flex();
        let attn = cross_attention(&device);
        let x = Tensor::<3>::random([2, 6, 16], Distribution::Normal(0.0, 1.0), &device);
        let ctx = Tensor::<3>::random([2, 5, 8], Distribution::Normal(0.0, 1.0), &device);
        let at = AttentionPlace {
            place: UNetPlace::Mid,
            is_cross: true,
            height: 2,
            width: 3,
        };
        let fused = attn.forward(x.clone(), Some(ctx.clone()));
        let mut probe = Probe {
            seen: vec![],
            uniform: false,
        };
        let hooked = attn.forward_hooked(x.clone(), Some(ctx.clone()), Some((&mut probe, at)));
        let diff = (fused - hooked).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "explicit vs fused attention: {diff}");
        assert_eq!(probe.seen.len(), 1);
        let (seen_at, dims, row_err) = probe.seen[0];
        assert_eq!((seen_at, dims), (at, [2, 2, 6, 5]));
        assert!(row_err < 1e-5, "softmax rows sum to 1 (off by {row_err})");

        // Uniform probabilities: every query gets the mean of the values, so all rows agree.
        let mut uniform = Probe {
            seen: vec![],
            uniform: true,
        };
        let out = attn.forward_hooked(x, Some(ctx), Some((&mut uniform, at)));
        let spread = (out.clone() - out.slice(s![.., 0..1, ..]))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(spread < 1e-5, "uniform attention: rows differ by {spread}");
    }
}
