//! diffusers `models/resnet.py`: `ResnetBlock2D` (time-conditioned in the U-Net, plain in the
//! VAE), `Downsample2D` and `Upsample2D`.

use burn::nn::conv::Conv2d;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNorm, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::layers::{Pre, conv_fused, conv2d, group_norm, upsample_nearest};

#[derive(Config, Debug)]
pub struct ResnetBlock2DConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding; `None` in the VAE (no `time_emb_proj`).
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    /// 1x1 conv when the channel count changes (`use_in_shortcut`).
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2DConfig {
    pub fn init(&self, device: &Device) -> ResnetBlock2D {
        let (cin, cout) = (self.in_channels, self.out_channels);
        ResnetBlock2D {
            norm1: group_norm(self.groups, cin, self.eps, device),
            conv1: conv2d(cin, cout, 3, 1, 1, device),
            time_emb_proj: self
                .temb_channels
                .map(|t| LinearConfig::new(t, cout).init(device)),
            norm2: group_norm(self.groups, cout, self.eps, device),
            conv2: conv2d(cout, cout, 3, 1, 1, device),
            conv_shortcut: (cin != cout).then(|| conv2d(cin, cout, 1, 1, 0, device)),
        }
    }
}

impl ResnetBlock2D {
    /// `temb` is the U-Net's time embedding `[b, temb_channels]` (ignored by VAE blocks).
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        // The time embedding is a per-channel bias of conv1's output.
        let t = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => Some(proj.forward(silu(temb.clone()))),
            _ => None,
        };
        let h = conv_fused(
            &self.conv1,
            x.clone(),
            Pre::Norm(&self.norm1, true),
            t,
            None,
        );
        let x = match &self.conv_shortcut {
            Some(conv) => conv_fused(conv, x, Pre::None, None, None),
            None => x,
        };
        conv_fused(&self.conv2, h, Pre::Norm(&self.norm2, true), None, Some(x))
    }
}

#[derive(Config, Debug)]
pub struct Downsample2DConfig {
    pub channels: usize,
    /// Symmetric padding of the stride-2 conv. 0 means diffusers' asymmetric
    /// `F.pad(x, (0, 1, 0, 1))` (the VAE), 1 is the U-Net's `downsample_padding`.
    pub padding: usize,
}

#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2DConfig {
    pub fn init(&self, device: &Device) -> Downsample2D {
        let padding = match self.padding {
            0 => PaddingConfig2d::Explicit(0, 0, 1, 1),
            p => PaddingConfig2d::Explicit(p, p, p, p),
        };
        let conv = Conv2dConfig::new([self.channels, self.channels], [3, 3])
            .with_stride([2, 2])
            .with_padding(padding)
            .init(device);
        Downsample2D { conv }
    }
}

impl Downsample2D {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x)
    }
}

#[derive(Config, Debug)]
pub struct Upsample2DConfig {
    pub channels: usize,
}

#[derive(Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2DConfig {
    pub fn init(&self, device: &Device) -> Upsample2D {
        Upsample2D {
            conv: conv2d(self.channels, self.channels, 3, 1, 1, device),
        }
    }
}

impl Upsample2D {
    /// Nearest x2, or to `size` when the U-Net needs to match an odd skip connection.
    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let size = size.unwrap_or([h * 2, w * 2]);
        if size == [h * 2, w * 2] {
            conv_fused(&self.conv, x, Pre::Upsample2x, None, None)
        } else {
            self.conv.forward(upsample_nearest(x, size))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vae_downsample_pads_right_and_bottom_only() {
        let device = Device::flex();
        let x = Tensor::<4>::ones([1, 1, 8, 8], &device);
        let mut vae = Downsample2DConfig::new(1, 0).init(&device);
        vae.conv.weight = burn::module::Param::from_tensor(Tensor::ones([1, 1, 3, 3], &device));
        vae.conv.bias = Some(burn::module::Param::from_tensor(Tensor::zeros(
            [1],
            &device,
        )));
        let y = vae.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(y.len(), 16);
        // Top-left window sees no padding (9 ones); bottom-right sees the padded row/column.
        assert_eq!((y[0], y[15]), (9.0, 4.0));
    }

    #[test]
    fn resnet_changes_channels_through_the_shortcut() {
        let device = Device::flex();
        let block = ResnetBlock2DConfig::new(8, 16, 4, 1e-5)
            .with_temb_channels(Some(12))
            .init(&device);
        assert!(block.conv_shortcut.is_some());
        let y = block.forward(
            Tensor::ones([2, 8, 4, 4], &device),
            Some(&Tensor::ones([2, 12], &device)),
        );
        assert_eq!(y.dims(), [2, 16, 4, 4]);
    }

    #[test]
    fn upsample_doubles_or_matches_a_size() {
        let device = Device::flex();
        let up = Upsample2DConfig::new(4).init(&device);
        let x = Tensor::<4>::ones([1, 4, 3, 5], &device);
        assert_eq!(up.forward(x.clone(), None).dims(), [1, 4, 6, 10]);
        assert_eq!(up.forward(x, Some([7, 9])).dims(), [1, 4, 7, 9]);
    }
}
