//! Multi-head scaled-dot-product attention (diffusers' `AttnProcessor2_0`, torch's SDPA) on the
//! token layout `[b, l, heads * d]`, as the U-Net, the VAE and CLIP call it.
//!
//! Fused path: [`crate::cpu::attention`] forward (keeping each row's log-sum-exp), and
//! [`crate::cpu::attention_backward`], which recomputes the probabilities from it, so neither
//! pass keeps a `[lq, lk]` matrix per head. Elsewhere: burn's `attention`, in query slices.

use burn::backend::Dispatch;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::{FusedOps, available};
use crate::cpu::attention::{Dims, attention_tokens_lse};
use crate::cpu::attention_backward::attention_backward;
use crate::cpu::{Values, flex_tensor};

use super::autodiff::AdTensor;

/// Splits `[b, l, heads*d]` projections into heads, runs SDPA with scale `1/sqrt(d)` and merges
/// the heads back. `causal` masks future positions (CLIP's text encoder). `upcast` computes the
/// scores in f32 when the inputs are half precision.
pub fn multi_head_attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    upcast: bool,
    causal: bool,
) -> Tensor<3> {
    if available(&q.device(), q.dtype()) {
        return Tensor::from_dispatch(Dispatch::fused_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            heads,
            causal,
        ));
    }
    burn_attention(q, k, v, heads, upcast, causal)
}

fn dims(q: &FlexTensor, k: &FlexTensor, heads: usize, causal: bool) -> Dims {
    let (qs, ks) = (q.layout().shape(), k.layout().shape());
    assert_eq!(qs.num_dims(), 3, "attention: query rank");
    assert_eq!(qs[2], ks[2], "attention: query and key widths");
    assert_eq!(
        qs[2] % heads,
        0,
        "attention: width not a multiple of the heads"
    );
    Dims {
        batch: qs[0],
        lq: qs[1],
        lk: ks[1],
        heads,
        d: qs[2] / heads,
        causal,
    }
}

/// The forward on plain flex tensors: the output and the rows' base-2 log-sum-exp.
fn forward_lse(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    heads: usize,
    causal: bool,
) -> (FlexTensor, FlexTensor, Dims) {
    let dims = dims(q, k, heads, causal);
    let (qv, kv, vv) = (Values::flex(q), Values::flex(k), Values::flex(v));
    let (out, lse) = attention_tokens_lse(qv.as_slice(), kv.as_slice(), vv.as_slice(), &dims);
    let shape = [dims.batch, dims.lq, heads * dims.d];
    (
        flex_tensor(out, shape),
        flex_tensor(lse, [dims.batch, heads, dims.lq]),
        dims,
    )
}

pub(super) fn forward(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    heads: usize,
    causal: bool,
) -> FlexTensor {
    forward_lse(&q, &k, &v, heads, causal).0
}

#[derive(Debug)]
struct AttentionBackward;

/// What the backward pass reads: the inputs, the output and the log-sum-exp of each row.
#[derive(Clone, Debug)]
struct Saved {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: FlexTensor,
    dims: Dims,
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nq, nk, nv] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let need = [nq.is_some(), nk.is_some(), nv.is_some()];
        let g = attention_backward(
            Values::flex(&s.q).as_slice(),
            Values::flex(&s.k).as_slice(),
            Values::flex(&s.v).as_slice(),
            Values::flex(&s.out).as_slice(),
            Values::flex(&s.lse).as_slice(),
            Values::flex(&dout).as_slice(),
            &s.dims,
            need,
        );
        let inner = s.dims.heads * s.dims.d;
        let q_shape = [s.dims.batch, s.dims.lq, inner];
        let kv_shape = [s.dims.batch, s.dims.lk, inner];
        for (node, grad, shape) in [
            (nq, g.dq, q_shape),
            (nk, g.dk, kv_shape),
            (nv, g.dv, kv_shape),
        ] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<Flex>(node.id, flex_tensor(grad, shape));
            }
        }
    }
}

pub(super) fn forward_autodiff<C: CheckpointStrategy>(
    q: AdTensor,
    k: AdTensor,
    v: AdTensor,
    heads: usize,
    causal: bool,
) -> AdTensor {
    let (q, nq) = q.into_parts();
    let (k, nk) = k.into_parts();
    let (v, nv) = v.into_parts();
    match AttentionBackward
        .prepare::<C>([nq, nk, nv])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, lse, dims) = forward_lse(&q, &k, &v, heads, causal);
            let saved = Saved {
                q,
                k,
                v,
                out: out.clone(),
                lse,
                dims,
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(q, k, v, heads, causal)),
    }
}

/// The most bytes one slice of attention scores may take on burn's path.
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

/// burn's own attention (wgpu, half precision): heads split out, SDPA, heads merged.
fn burn_attention(
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
    use crate::fused::tests::{assert_close, check_gradients};
    use burn::tensor::Distribution;
    use burn::tensor::activation::softmax;

    #[test]
    fn sliced_attention_equals_whole() {
        let device = Device::flex();
        let n =
            |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (n([2, 3, 10, 4]), n([2, 3, 7, 4]), n([2, 3, 7, 4]));
        let options = AttentionModuleOptions::default();
        let whole = attention(q.clone(), k.clone(), v.clone(), None, None, options);
        let sliced = sliced_attention(q, k, v, options, 3);
        assert_close(whole, sliced, 1e-6);
        // 256 MiB of f32 scores over 8 heads x 65536 keys: 128 query rows per slice.
        assert_eq!(query_slice_rows(8, 65536, 65536, 4), 128);
        assert_eq!(query_slice_rows(8, 64, 77, 4), 64);
    }

    /// `softmax(q k^T / sqrt(d) + mask) v` per head, written out with burn's differentiable ops.
    fn definition(
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        heads: usize,
        causal: bool,
    ) -> Tensor<3> {
        let [b, lq, inner] = q.dims();
        let lk = k.dims()[1];
        let d = inner / heads;
        let split = |t: Tensor<3>, l| t.reshape([b, l, heads, d]).swap_dims(1, 2);
        let mut scores = split(q, lq)
            .matmul(split(k, lk).swap_dims(2, 3))
            .div_scalar((d as f64).sqrt());
        if causal {
            let device = scores.device();
            let mask: Vec<f32> = (0..lq * lk)
                .map(|ij| {
                    if ij % lk + lq > ij / lk + lk {
                        -1e9
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::<2>::from_data(TensorData::new(mask, [lq, lk]), &device);
            scores = scores + mask.unsqueeze::<4>();
        }
        softmax(scores, 3)
            .matmul(split(v, lk))
            .swap_dims(1, 2)
            .reshape([b, lq, inner])
    }

    #[test]
    fn fused_attention_matches_the_definition_forward_and_backward() {
        for (b, lq, lk, heads, d, causal) in [
            (2, 5, 7, 2, 4, false),
            (1, 9, 9, 3, 8, true),
            (2, 33, 40, 1, 24, false),
        ] {
            let (qs, ks) = ([b, lq, heads * d], [b, lk, heads * d]);
            let sizes = [b * lq * heads * d, b * lk * heads * d, b * lk * heads * d];
            for tracked in [[true; 3], [false, true, true]] {
                check_gradients(
                    &sizes,
                    &tracked,
                    |t| {
                        multi_head_attention(
                            t.get(0, qs),
                            t.get(1, ks),
                            t.get(2, ks),
                            heads,
                            false,
                            causal,
                        )
                    },
                    |t| definition(t.get(0, qs), t.get(1, ks), t.get(2, ks), heads, causal),
                    1e-4,
                );
            }
        }
    }
}
