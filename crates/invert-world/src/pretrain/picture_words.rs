//! Picture words: during U-Net pretraining, a share of the captions get one extra input vector,
//! made from the picture itself by a small encoder trained with the U-Net and then discarded.
//!
//! Why: the world's captions never name the pattern or the style (`world/captions.rs`), so a
//! U-Net conditioned on captions alone draws them by chance and no point of the text encoder's
//! input space asks for them; textual inversion then has nothing to find (docs/WORLD.md, the
//! 2026-12-02 results: a learned word gained at most 18.8 points of reconstruction over its
//! initialiser). Stable Diffusion's CLIP input space does hold such points, because CLIP was
//! trained against pictures: an embedding can mean what no word says (Gal et al. 2022, section
//! 1). Picture words give the world model the same property without naming anything: the encoder
//! sees only pixels (latents), no label, and learns to pass on whatever the caption left out that
//! helps to denoise. Its output is scaled to the mean norm of the vocabulary's rows, so it lives
//! where word embeddings live and the picture words go through the frozen text encoder as words
//! do. After pretraining no vocabulary id maps to them: words still cannot ask for a striped
//! object, and textual inversion must find the point from five pictures and the denoising loss.
//!
//! The encoder ends in a mean and a max over positions, so it tells what is in the picture more
//! than where (position is captioned and asked for in words). The mean carries what covers the
//! picture (background, a style); the max was added for a small object's fill or outline, which
//! a mean dilutes. Measured (docs/WORLD.md, picture words): the mean picture word of
//! hatched-style renderings reconstructs the style in 100% of pictures with either pooling, and
//! that of striped-triangle renderings the striped triangle in 0% with either.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::silu;
use invert_train::norm_guard::row_norms;

#[derive(Config, Debug)]
pub struct PictureEncoderConfig {
    /// Channels of the (scaled) latents it reads.
    pub latent_channels: usize,
    /// Width of the text encoder's token embeddings.
    pub width: usize,
    #[config(default = 64)]
    pub hidden: usize,
}

/// Latents `[n, c, h, w]` to one token-embedding-sized vector each.
#[derive(Module, Debug)]
pub struct PictureEncoder {
    conv_in: Conv2d,
    conv_down_1: Conv2d,
    conv_down_2: Conv2d,
    proj: Linear,
}

impl PictureEncoderConfig {
    pub fn init(&self, device: &Device) -> PictureEncoder {
        let h = self.hidden;
        let conv = |cin: usize, cout: usize, stride: usize| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        PictureEncoder {
            conv_in: conv(self.latent_channels, h, 1),
            conv_down_1: conv(h, h, 2),
            conv_down_2: conv(h, 2 * h, 2),
            proj: LinearConfig::new(4 * h, self.width).init(device),
        }
    }
}

impl PictureEncoder {
    /// One vector per picture, each with Euclidean norm `norm` (the vocabulary's mean row norm).
    pub fn forward(&self, latents: Tensor<4>, norm: f32) -> Tensor<2> {
        let h = silu(self.conv_in.forward(latents));
        let h = silu(self.conv_down_1.forward(h));
        let h = silu(self.conv_down_2.forward(h));
        let [n, c, _, _] = h.dims();
        let h = h.reshape([n as i32, c as i32, -1]);
        let mean = h.clone().mean_dim(2).reshape([n, c]);
        let max = h.max_dim(2).reshape([n, c]);
        let v = self.proj.forward(Tensor::cat(vec![mean, max], 1));
        let len = v.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-6);
        v / len * norm
    }
}

/// The encoder a run with `config` trains, if it uses picture words.
pub fn encoder_for(config: &super::PretrainConfig, device: &Device) -> Option<PictureEncoder> {
    let a = &config.architecture;
    (config.picture_words > 0.0)
        .then(|| PictureEncoderConfig::new(a.latent_channels, a.text_width).init(device))
}

/// Mean Euclidean norm of the rows of a token-embedding table `[vocab, width]`.
pub fn mean_row_norm(table: Tensor<2>) -> f32 {
    let norms = row_norms(table);
    norms.iter().sum::<f32>() / norms.len().max(1) as f32
}

/// Inserts `id` into a padded row of token ids `[bos, w1 .. wk, eos, pad ..]` before word
/// `draw * (k + 1)` (0: right after BOS, k: right before EOS), keeping the row's length; the
/// last entry (padding) falls off. Rows without room are left as they are.
pub fn insert_word(row: &mut Vec<i64>, eos: i64, draw: f64, id: i64) {
    let Some(eos_at) = row.iter().skip(1).position(|&t| t == eos).map(|p| p + 1) else {
        return;
    };
    if eos_at + 1 >= row.len() {
        return;
    }
    let words = eos_at - 1;
    let at = 1 + ((draw * (words + 1) as f64) as usize).min(words);
    row.insert(at, id);
    row.pop();
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn insert_word_goes_between_bos_and_eos() {
        // bos 1, words 5 6 7, eos 2, padding 2
        let row = vec![1, 5, 6, 7, 2, 2, 2];
        for (draw, want) in [
            (0.0, vec![1, 9, 5, 6, 7, 2, 2]),
            (0.5, vec![1, 5, 6, 9, 7, 2, 2]),
            (0.999, vec![1, 5, 6, 7, 9, 2, 2]),
        ] {
            let mut r = row.clone();
            insert_word(&mut r, 2, draw, 9);
            assert_eq!(r, want, "draw {draw}");
        }
        // an empty caption gets the word alone
        let mut r = vec![1, 2, 2];
        insert_word(&mut r, 2, 0.7, 9);
        assert_eq!(r, vec![1, 9, 2]);
        // a full row is left alone
        let mut r = vec![1, 5, 2];
        insert_word(&mut r, 2, 0.3, 9);
        assert_eq!(r, vec![1, 5, 2]);
    }

    #[test]
    fn vectors_have_the_vocabulary_norm_and_depend_on_the_picture() {
        let device = Device::flex();
        let enc = PictureEncoderConfig::new(4, 16).init(&device);
        let x = Tensor::<4>::random([3, 4, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let v = enc.forward(x, 2.5);
        assert_eq!(v.dims(), [3, 16]);
        let norms = row_norms(v.clone());
        assert!(norms.iter().all(|n| (n - 2.5).abs() < 1e-4), "{norms:?}");
        let rows: Vec<f32> = v.into_data().try_to_vec::<f32>().unwrap();
        assert!(
            rows[..16]
                .iter()
                .zip(&rows[16..32])
                .any(|(a, b)| (a - b).abs() > 1e-4)
        );
    }
}
