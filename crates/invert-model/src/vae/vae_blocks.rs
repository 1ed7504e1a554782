//! The VAE's `Encoder` and `Decoder` (diffusers models/autoencoders/vae.py) with their
//! `DownEncoderBlock2D`, `UpDecoderBlock2D` and `UNetMidBlock2D` (unet_2d_blocks.py).

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use super::config::AutoencoderKLConfig;
use crate::attention::{Attention, AttentionConfig};
use crate::layers::{Pre, conv_fused, conv2d, group_norm};
use crate::resnet::{
    Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D,
    Upsample2DConfig,
};

/// diffusers uses eps 1e-6 for every norm in the VAE.
const EPS: f64 = 1e-6;

fn resnet(cin: usize, cout: usize, groups: usize, device: &Device) -> ResnetBlock2D {
    ResnetBlock2DConfig::new(cin, cout, groups, EPS).init(device)
}

#[derive(Module, Debug)]
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsamplers: Vec<Downsample2D>,
}

#[derive(Module, Debug)]
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsamplers: Vec<Upsample2D>,
}

/// `UNetMidBlock2D` without time embedding: resnet, single-head self-attention, resnet.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    fn new(c: usize, groups: usize, add_attention: bool, device: &Device) -> Self {
        let attention = AttentionConfig {
            query_dim: c,
            cross_attention_dim: None,
            heads: 1,
            dim_head: c,
            bias: true,
            upcast: true,
            group_norm: Some((groups, EPS)),
            residual_connection: true,
        };
        Self {
            resnets: vec![resnet(c, c, groups, device), resnet(c, c, groups, device)],
            attentions: if add_attention {
                vec![attention.init(device)]
            } else {
                vec![]
            },
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.resnets[0].forward(x, None);
        for attn in &self.attentions {
            h = attn.forward_image(h);
        }
        self.resnets[1].forward(h, None)
    }
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: UNetMidBlock2D,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: UNetMidBlock2D,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub fn new(cfg: &AutoencoderKLConfig, device: &Device) -> Self {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let g = cfg.norm_num_groups;
        let down_blocks = (0..n)
            .map(|i| {
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                DownEncoderBlock2D {
                    resnets: (0..cfg.layers_per_block)
                        .map(|j| resnet(if j == 0 { cin } else { ch[i] }, ch[i], g, device))
                        .collect(),
                    // Padding 0: diffusers pads (0, 1, 0, 1) before a stride-2, unpadded conv.
                    downsamplers: if i + 1 < n {
                        vec![Downsample2DConfig::new(ch[i], 0).init(device)]
                    } else {
                        vec![]
                    },
                }
            })
            .collect();
        Self {
            conv_in: conv2d(cfg.in_channels, ch[0], 3, 1, 1, device),
            down_blocks,
            mid_block: UNetMidBlock2D::new(ch[n - 1], g, cfg.mid_block_add_attention, device),
            conv_norm_out: group_norm(g, ch[n - 1], EPS, device),
            // `double_z`: mean and log-variance.
            conv_out: conv2d(ch[n - 1], 2 * cfg.latent_channels, 3, 1, 1, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.conv_in.forward(x);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(h, None);
            }
            for down in &block.downsamplers {
                h = down.forward(h);
            }
        }
        h = self.mid_block.forward(h);
        conv_fused(
            &self.conv_out,
            h,
            Pre::Norm(&self.conv_norm_out, true),
            None,
            None,
        )
    }
}

impl Decoder {
    pub fn new(cfg: &AutoencoderKLConfig, device: &Device) -> Self {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let g = cfg.norm_num_groups;
        let rev = |i: usize| ch[n - 1 - i];
        let up_blocks = (0..n)
            .map(|i| {
                let cin = if i == 0 { rev(0) } else { rev(i - 1) };
                UpDecoderBlock2D {
                    resnets: (0..cfg.layers_per_block + 1)
                        .map(|j| resnet(if j == 0 { cin } else { rev(i) }, rev(i), g, device))
                        .collect(),
                    upsamplers: if i + 1 < n {
                        vec![Upsample2DConfig::new(rev(i)).init(device)]
                    } else {
                        vec![]
                    },
                }
            })
            .collect();
        Self {
            conv_in: conv2d(cfg.latent_channels, ch[n - 1], 3, 1, 1, device),
            mid_block: UNetMidBlock2D::new(ch[n - 1], g, cfg.mid_block_add_attention, device),
            up_blocks,
            conv_norm_out: group_norm(g, ch[0], EPS, device),
            conv_out: conv2d(ch[0], cfg.out_channels, 3, 1, 1, device),
        }
    }

    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut h = self.mid_block.forward(self.conv_in.forward(z));
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(h, None);
            }
            for up in &block.upsamplers {
                h = up.forward(h, None);
            }
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
