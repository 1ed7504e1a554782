//! Small building blocks shared by the three models: the conv and norm shapes Stable Diffusion
//! uses everywhere, and the activations burn does not ship.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

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

pub use crate::fused::conv::{Pre, conv as conv_fused};
pub use crate::fused::group_norm::group_norm as group_norm_act;
pub use crate::fused::linear::linear as linear_fused;

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
    use burn::tensor::activation::silu;

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
