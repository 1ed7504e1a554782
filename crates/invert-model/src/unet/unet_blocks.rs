//! diffusers `models/unets/unet_2d_blocks.py`: the down, mid and up blocks of SD 1.x/2.x.
//! Channel bookkeeping follows `get_down_block` / `get_up_block` in that file.

use burn::prelude::*;

use super::transformer_2d::{Transformer2DModel, Transformer2DModelConfig};
use crate::attention::{AttentionControl, UNetPlace, reborrow};
use crate::resnet::{
    Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D,
    Upsample2DConfig,
};

/// What every block of one U-Net shares.
#[derive(Config, Debug)]
pub struct BlockSettings {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
}

impl BlockSettings {
    fn resnet(&self, cin: usize, cout: usize, device: &Device) -> ResnetBlock2D {
        ResnetBlock2DConfig::new(cin, cout, self.groups, self.eps)
            .with_temb_channels(Some(self.temb_channels))
            .init(device)
    }

    fn transformer(
        &self,
        channels: usize,
        heads: usize,
        layers: usize,
        device: &Device,
    ) -> Transformer2DModel {
        Transformer2DModelConfig {
            channels,
            heads,
            num_layers: layers,
            cross_attention_dim: self.cross_attention_dim,
            norm_num_groups: self.groups,
            use_linear_projection: self.use_linear_projection,
            upcast_attention: self.upcast_attention,
        }
        .init(device)
    }
}

/// One down or up block's shape, read off the U-Net config.
#[derive(Config, Debug)]
pub struct BlockShape {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Up blocks only: the channels of the block below (`prev_output_channel`).
    pub prev_output_channels: usize,
    pub num_layers: usize,
    /// `Some((heads, transformer layers))` for the cross-attention variants.
    pub attention: Option<(usize, usize)>,
    /// Downsample (down blocks) or upsample (up blocks) at the end: all but the last block.
    pub resample: bool,
    pub downsample_padding: usize,
}

/// `CrossAttnDownBlock2D` and `DownBlock2D` (the latter has no `attentions`).
#[derive(Module, Debug)]
pub struct CrossAttnDownBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsamplers: Vec<Downsample2D>,
}

#[derive(Module, Debug)]
pub struct DownBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsamplers: Vec<Downsample2D>,
}

#[derive(Module, Debug)]
pub enum DownBlock {
    CrossAttn(CrossAttnDownBlock2D),
    Plain(DownBlock2D),
}

impl BlockShape {
    pub fn init_down(&self, s: &BlockSettings, device: &Device) -> DownBlock {
        let resnets = (0..self.num_layers)
            .map(|j| {
                let cin = if j == 0 {
                    self.in_channels
                } else {
                    self.out_channels
                };
                s.resnet(cin, self.out_channels, device)
            })
            .collect();
        let downsamplers = if self.resample {
            vec![Downsample2DConfig::new(self.out_channels, self.downsample_padding).init(device)]
        } else {
            vec![]
        };
        match self.attention {
            Some((heads, layers)) => DownBlock::CrossAttn(CrossAttnDownBlock2D {
                resnets,
                attentions: (0..self.num_layers)
                    .map(|_| s.transformer(self.out_channels, heads, layers, device))
                    .collect(),
                downsamplers,
            }),
            None => DownBlock::Plain(DownBlock2D {
                resnets,
                downsamplers,
            }),
        }
    }

    pub fn init_up(&self, s: &BlockSettings, device: &Device) -> UpBlock {
        let resnets = (0..self.num_layers)
            .map(|j| {
                let skip = if j == self.num_layers - 1 {
                    self.in_channels
                } else {
                    self.out_channels
                };
                let cin = if j == 0 {
                    self.prev_output_channels
                } else {
                    self.out_channels
                };
                s.resnet(cin + skip, self.out_channels, device)
            })
            .collect();
        let upsamplers = if self.resample {
            vec![Upsample2DConfig::new(self.out_channels).init(device)]
        } else {
            vec![]
        };
        match self.attention {
            Some((heads, layers)) => UpBlock::CrossAttn(CrossAttnUpBlock2D {
                resnets,
                attentions: (0..self.num_layers)
                    .map(|_| s.transformer(self.out_channels, heads, layers, device))
                    .collect(),
                upsamplers,
            }),
            None => UpBlock::Plain(UpBlock2D {
                resnets,
                upsamplers,
            }),
        }
    }
}

impl DownBlock {
    /// Returns the block output and the skip connections it adds (one per resnet, plus the
    /// downsampled output).
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        mut control: Option<&mut dyn AttentionControl>,
    ) -> (Tensor<4>, Vec<Tensor<4>>) {
        let (resnets, attentions, downsamplers): (_, &[Transformer2DModel], _) = match self {
            DownBlock::CrossAttn(b) => (&b.resnets, &b.attentions, &b.downsamplers),
            DownBlock::Plain(b) => (&b.resnets, &[], &b.downsamplers),
        };
        let mut h = x;
        let mut skips = Vec::with_capacity(resnets.len() + 1);
        for (j, resnet) in resnets.iter().enumerate() {
            h = resnet.forward(h, Some(temb));
            if let Some(attn) = attentions.get(j) {
                h = attn.forward(h, context, reborrow(&mut control), UNetPlace::Down);
            }
            skips.push(h.clone());
        }
        for down in downsamplers {
            h = down.forward(h);
            skips.push(h.clone());
        }
        (h, skips)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (attention, resnet) pairs.
#[derive(Module, Debug)]
pub struct UNetMidBlock2DCrossAttn {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

#[derive(Config, Debug)]
pub struct UNetMidBlock2DCrossAttnConfig {
    pub channels: usize,
    pub heads: usize,
    pub transformer_layers: usize,
}

impl UNetMidBlock2DCrossAttnConfig {
    pub fn init(&self, s: &BlockSettings, device: &Device) -> UNetMidBlock2DCrossAttn {
        let c = self.channels;
        UNetMidBlock2DCrossAttn {
            resnets: vec![s.resnet(c, c, device), s.resnet(c, c, device)],
            attentions: vec![s.transformer(c, self.heads, self.transformer_layers, device)],
        }
    }
}

impl UNetMidBlock2DCrossAttn {
    pub fn forward(
        &self,
        x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        mut control: Option<&mut dyn AttentionControl>,
    ) -> Tensor<4> {
        let mut h = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            let out = attn.forward(h, context, reborrow(&mut control), UNetPlace::Mid);
            h = resnet.forward(out, Some(temb));
        }
        h
    }
}

#[derive(Module, Debug)]
pub struct CrossAttnUpBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsamplers: Vec<Upsample2D>,
}

#[derive(Module, Debug)]
pub struct UpBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsamplers: Vec<Upsample2D>,
}

/// `CrossAttnUpBlock2D` or `UpBlock2D`.
#[derive(Module, Debug)]
pub enum UpBlock {
    CrossAttn(CrossAttnUpBlock2D),
    Plain(UpBlock2D),
}

impl UpBlock {
    pub fn num_resnets(&self) -> usize {
        match self {
            UpBlock::CrossAttn(b) => b.resnets.len(),
            UpBlock::Plain(b) => b.resnets.len(),
        }
    }

    /// `skips` are this block's skip connections in the order the down path produced them;
    /// they are consumed from the end. `upsample_size` is the size of the next skip.
    pub fn forward(
        &self,
        x: Tensor<4>,
        mut skips: Vec<Tensor<4>>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        upsample_size: Option<[usize; 2]>,
        mut control: Option<&mut dyn AttentionControl>,
    ) -> Tensor<4> {
        let (resnets, attentions, upsamplers): (_, &[Transformer2DModel], _) = match self {
            UpBlock::CrossAttn(b) => (&b.resnets, &b.attentions, &b.upsamplers),
            UpBlock::Plain(b) => (&b.resnets, &[], &b.upsamplers),
        };
        let mut h = x;
        for (j, resnet) in resnets.iter().enumerate() {
            let skip = skips.pop().expect("one skip connection per resnet");
            h = resnet.forward(Tensor::cat(vec![h, skip], 1), Some(temb));
            if let Some(attn) = attentions.get(j) {
                h = attn.forward(h, context, reborrow(&mut control), UNetPlace::Up);
            }
        }
        for up in upsamplers {
            h = up.forward(h, upsample_size);
        }
        h
    }
}
