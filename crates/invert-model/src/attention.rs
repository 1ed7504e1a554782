//! diffusers `Attention` (models/attention_processor.py) with the `AttnProcessor2_0` maths:
//! multi-head scaled-dot-product attention with separate q/k/v projections and `to_out.0`.
//! Used by the U-Net's `BasicTransformerBlock` (self- and cross-attention) and by the VAE's
//! mid-block (spatial self-attention with its own GroupNorm and residual).

use burn::nn::{GroupNorm, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::cpu::attention::attention_tokens;
use crate::cpu::fused_path;
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

/// The most bytes one slice of attention scores may take (see [`multi_head_attention`]).
const SCORE_SLICE_BYTES: usize = 256 << 20;

/// Query rows per slice so that `[bh, rows, lk]` scores stay under [`SCORE_SLICE_BYTES`].
fn query_slice_rows(bh: usize, lq: usize, lk: usize, elem_bytes: usize) -> usize {
    let per_row = (bh * lk * elem_bytes).max(1);
    (SCORE_SLICE_BYTES / per_row).clamp(1, lq.max(1))
}

/// Attention of `[b, heads, lq, d]` queries taken `rows` at a time.
fn sliced_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    options: AttentionModuleOptions,
    rows: usize,
) -> Tensor<4> {
    let lq = q.dims()[2];
    if rows >= lq {
        return attention(q, k, v, None, None, options);
    }
    let slices = (0..lq)
        .step_by(rows)
        .map(|start| {
            let end = (start + rows).min(lq);
            let q = q.clone().slice(s![.., .., start..end, ..]);
            attention(q, k.clone(), v.clone(), None, None, options)
        })
        .collect();
    Tensor::cat(slices, 2)
}

/// Splits `[b, l, heads*d]` projections into heads, runs SDPA with scale `1/sqrt(d)` and merges
/// the heads back. `causal` masks future positions (CLIP's text encoder).
pub fn multi_head_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    upcast: bool,
    causal: bool,
) -> Tensor<3> {
    let [b, lq, inner] = q.dims();
    let lk = k.dims()[1];
    let d = inner / heads;
    let device = q.device();
    if fused_path(&device, q.dtype()) {
        // Inference on flex: the fused kernel reads the token layout directly.
        let (qd, kd, vd) = (q.into_data(), k.into_data(), v.into_data());
        let out = attention_tokens(
            qd.as_slice::<f32>().expect("f32 query"),
            kd.as_slice::<f32>().expect("f32 key"),
            vd.as_slice::<f32>().expect("f32 value"),
            b,
            lq,
            lk,
            heads,
            d,
            causal,
        );
        return Tensor::from_data(TensorData::new(out, [b, lq, inner]), &device);
    }
    let split = |t: Tensor<3>, l: usize| t.reshape([b, l, heads, d]).swap_dims(1, 2);
    let (mut q, mut k, mut v) = (split(q, lq), split(k, lk), split(v, lk));
    let dtype = q.dtype();
    let upcast = upcast && dtype != DType::F32;
    if upcast {
        q = q.cast(DType::F32);
        k = k.cast(DType::F32);
        v = v.cast(DType::F32);
    }
    let options = AttentionModuleOptions {
        is_causal: causal,
        ..Default::default()
    };
    // Sliced attention (diffusers' `enable_attention_slicing`): burn's attention materialises
    // the `[b, heads, lq, lk]` score matrix, 17 GB at a 256x256 latent; query slices bound it.
    // The causal mask depends on absolute positions, and only CLIP's 77 tokens use it.
    let mut out = if causal {
        attention(q, k, v, None, None, options)
    } else {
        let rows = query_slice_rows(b * heads, lq, lk, q.dtype().size());
        sliced_attention(q, k, v, options, rows)
    };
    if upcast {
        out = out.cast(dtype);
    }
    out.swap_dims(1, 2).reshape([b, lq, inner])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliced_attention_equals_whole() {
        let device = Device::flex();
        let n = |shape: [usize; 4]| {
            Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device)
        };
        let (q, k, v) = (n([2, 3, 10, 4]), n([2, 3, 7, 4]), n([2, 3, 7, 4]));
        let options = AttentionModuleOptions::default();
        let whole = attention(q.clone(), k.clone(), v.clone(), None, None, options);
        let sliced = sliced_attention(q, k, v, options, 3);
        let diff = (whole - sliced).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");
        // 256 MiB of f32 scores over 8 heads x 65536 keys: 128 query rows per slice.
        assert_eq!(query_slice_rows(8, 65536, 65536, 4), 128);
        assert_eq!(query_slice_rows(8, 64, 77, 4), 64);
    }
    use burn::tensor::Distribution;
    use burn::tensor::activation::softmax;

    #[test]
    fn multi_head_attention_matches_the_formula() {
        let device = Device::flex();
        let r = |s: [usize; 3]| Tensor::<3>::random(s, Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (r([2, 5, 8]), r([2, 7, 8]), r([2, 7, 8]));
        let got = multi_head_attention(q.clone(), k.clone(), v.clone(), 2, false, false);
        // softmax(q k^T / sqrt(d)) v per head, d = 4.
        let split = |t: Tensor<3>, l| t.reshape([2, l, 2, 4]).swap_dims(1, 2);
        let scores = split(q, 5)
            .matmul(split(k, 7).swap_dims(2, 3))
            .div_scalar(2.0);
        let want = softmax(scores, 3)
            .matmul(split(v, 7))
            .swap_dims(1, 2)
            .reshape([2, 5, 8]);
        assert!((got - want).abs().max().into_scalar::<f32>() < 1e-5);
    }

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
