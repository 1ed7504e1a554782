//! Small building blocks shared by the three models: the conv and norm shapes Stable Diffusion
//! uses everywhere, and the activations burn does not ship.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::cpu::{self, Values};

/// A square conv with `k` x `k` kernel, stride `stride` and symmetric zero padding `pad`.
pub fn conv2d(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

pub fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels)
        .with_epsilon(eps)
        .init(device)
}

/// CLIP's `quick_gelu`, x * sigmoid(1.702 x) (OpenAI CLIP, used by the SD1.x text tower).
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * sigmoid(x.mul_scalar(1.702))
}

/// Nearest-neighbour resize to `[h, w]` (diffusers `Upsample2D`, `F.interpolate(mode="nearest")`).
pub fn upsample_nearest(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
    )
}

/// What a [`conv_fused`] does to its input first.
#[derive(Clone, Copy)]
pub enum Pre<'a> {
    None,
    /// `GroupNorm`, then SiLU if the flag is set.
    Norm(&'a GroupNorm, bool),
    /// Nearest-neighbour 2x upsample.
    Upsample2x,
}

fn explicit_padding(conv: &Conv2d) -> Option<[usize; 4]> {
    match conv.padding {
        PaddingConfig2d::Explicit(a, b, c, d) => Some([a, b, c, d]),
        PaddingConfig2d::Valid => Some([0; 4]),
        _ => None,
    }
}

/// GroupNorm as a per-(image, channel) `(scale, shift)` of `x` `[b, c, h, w]`.
fn norm_affine(norm: &GroupNorm, x: &[f32], [b, c, h, w]: [usize; 4]) -> (Vec<f32>, Vec<f32>) {
    let gamma = norm.gamma.as_ref().map(|g| Values::of(g.val()));
    let beta = norm.beta.as_ref().map(|g| Values::of(g.val()));
    cpu::norm::group_norm_affine(
        x,
        b,
        c,
        h * w,
        norm.num_groups,
        norm.epsilon,
        gamma.as_ref().map(|v| v.as_slice()),
        beta.as_ref().map(|v| v.as_slice()),
    )
}

/// `silu(norm(x))` (or `norm(x)`), in one pass on the fused CPU path.
pub fn group_norm_act(norm: &GroupNorm, x: Tensor<4>, act: bool) -> Tensor<4> {
    let device = x.device();
    if !cpu::fused_path(&device, x.dtype()) {
        let y = norm.forward(x);
        return if act { silu(y) } else { y };
    }
    let dims = x.dims();
    let xv = Values::of(x);
    let (scale, shift) = norm_affine(norm, xv.as_slice(), dims);
    let y = cpu::norm::apply_affine(
        xv.as_slice(),
        (dims[1], dims[2] * dims[3]),
        &scale,
        &shift,
        act,
    );
    cpu::tensor(y, dims, &device)
}

/// `conv(pre(x)) + image_bias + residual`: `image_bias` is `[b, cout]` (broadcast over the
/// image), `residual` `[b, cout, H, W]`. On the fused CPU path the pre-step runs while the
/// convolution reads its input and the additions while it writes; elsewhere these are burn ops.
pub fn conv_fused(
    conv: &Conv2d,
    x: Tensor<4>,
    pre: Pre,
    image_bias: Option<Tensor<2>>,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    let device = x.device();
    let [b, cin, h, w] = x.dims();
    let [cout, _, kh, kw] = conv.weight.dims();
    let supported = explicit_padding(conv).is_some_and(|p| {
        cpu::conv::supported([kh, kw], conv.stride, p, conv.dilation, conv.groups)
    });
    if !(supported && cpu::fused_path(&device, x.dtype())) {
        let x = match pre {
            Pre::None => x,
            Pre::Norm(norm, act) => {
                let y = norm.forward(x);
                if act { silu(y) } else { y }
            }
            Pre::Upsample2x => upsample_nearest(x, [2 * h, 2 * w]),
        };
        let mut y = conv.forward(x);
        if let Some(t) = image_bias {
            y = y + t.unsqueeze_dims::<4>(&[2, 3]);
        }
        return match residual {
            Some(r) => r + y,
            None => y,
        };
    }
    let xv = Values::of(x);
    let affine = match pre {
        Pre::Norm(norm, _) => Some(norm_affine(norm, xv.as_slice(), [b, cin, h, w])),
        _ => None,
    };
    let input = match (pre, &affine) {
        (Pre::Norm(_, act), Some((scale, shift))) => cpu::conv::Input::Affine {
            scale,
            shift,
            silu: act,
        },
        (Pre::Upsample2x, _) => cpu::conv::Input::Upsample2x,
        _ => cpu::conv::Input::Plain,
    };
    let weight = Values::of(conv.weight.val());
    let bias = conv.bias.as_ref().map(|p| Values::of(p.val()));
    let image_bias = image_bias.map(Values::of);
    let residual = residual.map(Values::of);
    let (oh, ow) = match pre {
        Pre::Upsample2x => (2 * h, 2 * w),
        _ => (h, w),
    };
    let y = cpu::conv::conv2d(&cpu::conv::Conv {
        x: xv.as_slice(),
        batch: b,
        cin,
        h,
        w,
        weight: weight.as_slice(),
        cout,
        k: kh,
        bias: bias.as_ref().map(|v| v.as_slice()),
        image_bias: image_bias.as_ref().map(|v| v.as_slice()),
        residual: residual.as_ref().map(|v| v.as_slice()),
        input,
    });
    cpu::tensor(y, [b, cout, oh, ow], &device)
}

/// `lin.forward(x)`, with the fused CPU kernel where it applies.
pub fn linear_fused<const D: usize>(lin: &Linear, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    let [k, n] = lin.weight.dims();
    if !(cpu::fused_path(&device, x.dtype()) && cpu::linear::supported(n)) {
        return lin.forward(x);
    }
    let mut dims = x.dims();
    assert_eq!(dims[D - 1], k, "linear: input width");
    let rows = dims[..D - 1].iter().product();
    let xv = Values::of(x);
    let w = Values::of(lin.weight.val());
    let b = lin.bias.as_ref().map(|p| Values::of(p.val()));
    let y = cpu::linear::linear(
        xv.as_slice(),
        rows,
        k,
        w.as_slice(),
        n,
        b.as_ref().map(|v| v.as_slice()),
    );
    dims[D - 1] = n;
    cpu::tensor(y, dims, &device)
}

/// `[b, c, h, w]` -> `[b, h*w, c]`, the token layout attention works on.
pub fn image_to_tokens(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).swap_dims(1, 2)
}

/// `[b, h*w, c]` -> `[b, c, h, w]`.
pub fn tokens_to_image(x: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, c] = x.dims();
    x.swap_dims(1, 2).reshape([b, c, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn quick_gelu_of_one() {
        let device = Device::flex();
        let y = quick_gelu(Tensor::<1>::from_floats([1.0], &device)).into_scalar::<f32>();
        assert!((y - 0.845_795_8).abs() < 1e-6);
    }

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// The fused CPU path equals burn's own composition of the same ops (which is what autodiff,
    /// wgpu and half precision run).
    #[test]
    fn fused_conv_equals_burn_ops() {
        let device = Device::flex();
        let conv = conv2d(8, 6, 3, 1, 1, &device);
        let norm = GroupNormConfig::new(4, 8).init(&device);
        let x = Tensor::<4>::random([2, 8, 5, 7], Distribution::Normal(0.0, 1.0), &device);
        let bias = Tensor::<2>::random([2, 6], Distribution::Normal(0.0, 1.0), &device);
        let res = Tensor::<4>::random([2, 6, 5, 7], Distribution::Normal(0.0, 1.0), &device);
        let fused = conv_fused(
            &conv,
            x.clone(),
            Pre::Norm(&norm, true),
            Some(bias.clone()),
            Some(res.clone()),
        );
        let plain =
            conv.forward(silu(norm.forward(x.clone()))) + bias.unsqueeze_dims(&[2, 3]) + res;
        assert!(max_diff(fused, plain) < 1e-4);

        let up = conv_fused(&conv, x.clone(), Pre::Upsample2x, None, None);
        assert!(max_diff(up, conv.forward(upsample_nearest(x.clone(), [10, 14]))) < 1e-4);

        let normed = group_norm_act(&norm, x.clone(), false);
        assert!(max_diff(normed, norm.forward(x)) < 1e-4);
    }

    #[test]
    fn tokens_round_trip_an_image() {
        let device = Device::flex();
        let x = Tensor::<4>::from_floats(
            [[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]],
            &device,
        );
        let t = image_to_tokens(x.clone());
        assert_eq!(t.dims(), [1, 4, 2]);
        assert_eq!(
            t.clone()
                .slice([0..1, 1..2, 0..2])
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            vec![2.0, 6.0]
        );
        assert_eq!(
            (tokens_to_image(t, 2, 2) - x)
                .abs()
                .sum()
                .into_scalar::<f32>(),
            0.0
        );
    }
}
