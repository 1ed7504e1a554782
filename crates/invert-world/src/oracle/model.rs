//! The world oracle's network: four 3x3 convolutions (three of stride 2) and a two-layer head
//! whose outputs are split into one softmax per attribute (`world::ATTRIBUTES`).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};

use crate::world::ATTRIBUTES;

/// Sizes of the oracle (the defaults read 32x32 pictures).
#[derive(Config, Debug)]
pub struct OracleConfig {
    #[config(default = 32)]
    pub image_size: usize,
    #[config(default = "[32, 64, 64, 128]")]
    pub channels: [usize; 4],
    #[config(default = 256)]
    pub hidden: usize,
}

#[derive(Module, Debug)]
pub struct Oracle {
    pub convs: Vec<Conv2d>,
    pub fc: Linear,
    pub head: Linear,
}

/// Total number of outputs: one per value of every attribute.
pub fn num_outputs() -> usize {
    ATTRIBUTES.iter().map(|a| a.values.len()).sum()
}

impl OracleConfig {
    pub fn init(&self, device: &Device) -> Oracle {
        let mut convs = Vec::new();
        let mut cin = 3;
        for (i, &c) in self.channels.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            convs.push(
                Conv2dConfig::new([cin, c], [3, 3])
                    .with_stride([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            );
            cin = c;
        }
        let side = self.image_size >> (self.channels.len() - 1);
        Oracle {
            convs,
            fc: LinearConfig::new(cin * side * side, self.hidden).init(device),
            head: LinearConfig::new(self.hidden, num_outputs()).init(device),
        }
    }
}

impl Oracle {
    /// Pictures `[n, 3, s, s]` in [-1, 1] to per-attribute log-probabilities, one `[n, values]`
    /// tensor per attribute.
    pub fn forward(&self, images: Tensor<4>) -> Vec<Tensor<2>> {
        let mut x = images;
        for conv in &self.convs {
            x = relu(conv.forward(x));
        }
        let n = x.dims()[0];
        let x = relu(self.fc.forward(x.reshape([n as i32, -1])));
        let sizes: Vec<usize> = ATTRIBUTES.iter().map(|a| a.values.len()).collect();
        log_softmax_heads(self.head.forward(x), &sizes)
    }

    /// The most likely value of every attribute for each picture, `[n][7]`.
    pub fn predict(&self, images: Tensor<4>) -> Vec<[usize; 7]> {
        let n = images.dims()[0];
        let parts = self.forward(images);
        let mut out = vec![[0usize; 7]; n];
        for (a, p) in parts.into_iter().enumerate() {
            let idx = p.argmax(1).into_data().convert::<i64>();
            for (i, v) in idx.iter::<i64>().enumerate() {
                out[i][a] = v as usize;
            }
        }
        out
    }

    /// Mean over attributes of the cross-entropy against `labels`.
    pub fn loss(&self, images: Tensor<4>, labels: &[[usize; 7]]) -> Tensor<1> {
        let labels: Vec<&[usize]> = labels.iter().map(|l| &l[..]).collect();
        heads_nll(self.forward(images), &labels)
    }
}

/// One log-softmax per head over consecutive columns of `logits` (`[n, sum(sizes)]`), head `k`
/// having `sizes[k]` classes.
pub fn log_softmax_heads(logits: Tensor<2>, sizes: &[usize]) -> Vec<Tensor<2>> {
    let mut start = 0;
    sizes
        .iter()
        .map(|&k| {
            let part = logits.clone().slice(s![.., start..start + k]);
            start += k;
            log_softmax(part, 1)
        })
        .collect()
}

/// Mean over heads of the cross-entropy of `parts` (from [`log_softmax_heads`]) against
/// `labels[i][k]`, the class of example `i` for head `k`.
pub fn heads_nll(parts: Vec<Tensor<2>>, labels: &[&[usize]]) -> Tensor<1> {
    let n = labels.len();
    let heads = parts.len();
    let mut total: Option<Tensor<1>> = None;
    for (a, logp) in parts.into_iter().enumerate() {
        let [_, k] = logp.dims();
        let mut onehot = vec![0f32; n * k];
        for (i, l) in labels.iter().enumerate() {
            onehot[i * k + l[a]] = 1.0;
        }
        let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, k]), &logp.device());
        let ce = (logp * onehot).sum().neg().div_scalar(n as f32);
        total = Some(match total {
            Some(t) => t + ce,
            None => ce,
        });
    }
    total.expect("at least one head").div_scalar(heads as f32)
}
