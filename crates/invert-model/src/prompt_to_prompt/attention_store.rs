//! The cross-attention maps of the conditional prompts, summed over the denoising steps
//! (`AttentionStore` in diffusers' examples/community/pipeline_prompt2prompt.py), for the local
//! blend's mask and for the per-token maps of the paper's Figure 4 (`aggregate_attention` /
//! `show_cross_attention` in google/prompt-to-prompt's notebooks).
//!
//! Only cross-attention is kept: the reference also stores self-attention maps (up to 32x32
//! tokens) but Prompt-to-Prompt editing never reads them, and at 512 px they are the bulk.

use burn::prelude::*;

use crate::attention::{AttentionPlace, UNetPlace};

/// The reference stores maps of layers with at most `32**2` query tokens ("avoid memory
/// overhead").
pub const MAX_STORED_TOKENS: usize = 32 * 32;

/// One cross-attention layer's maps: `[prompts, heads, h*w, 77]`, summed over steps.
#[derive(Debug, Clone)]
pub struct StoredMaps {
    pub place: UNetPlace,
    pub height: usize,
    pub width: usize,
    pub sum: Tensor<4>,
}

/// Cross-attention maps per layer, in call order, summed over the steps so far.
#[derive(Debug, Default, Clone)]
pub struct AttentionStore {
    layers: Vec<StoredMaps>,
    /// The current step's layer counter.
    next: usize,
    /// Completed steps (`cur_step` when averaging).
    pub steps: usize,
}

impl AttentionStore {
    /// Adds one cross-attention call's conditional maps `[prompts, heads, lq, 77]`.
    pub fn add(&mut self, maps: Tensor<4>, at: &AttentionPlace) {
        if !at.is_cross || at.height * at.width > MAX_STORED_TOKENS {
            return;
        }
        match self.layers.get_mut(self.next) {
            Some(layer) => layer.sum = layer.sum.clone() + maps,
            None => self.layers.push(StoredMaps {
                place: at.place,
                height: at.height,
                width: at.width,
                sum: maps,
            }),
        }
        self.next += 1;
    }

    /// Ends a step (`between_steps`).
    pub fn end_step(&mut self) {
        self.next = 0;
        self.steps += 1;
    }

    /// The stored layers of one place, in call order (`attention_store["down_cross"]`, ...).
    pub fn at(&self, place: UNetPlace) -> Vec<&StoredMaps> {
        self.layers.iter().filter(|l| l.place == place).collect()
    }

    /// The stored layers' grid sizes, distinct, in call order.
    pub fn resolutions(&self) -> Vec<[usize; 2]> {
        let mut out: Vec<[usize; 2]> = vec![];
        for l in &self.layers {
            if !out.contains(&[l.height, l.width]) {
                out.push([l.height, l.width]);
            }
        }
        out
    }

    /// `aggregate_attention(store, res, ("up", "down"), is_cross=True, select=prompt)`: the
    /// mean over steps, layers of that grid in the up and down blocks, and heads, as
    /// `[h, w, 77]` row-major values. `None` when no such layer was stored.
    pub fn average_maps(&self, prompt: usize, [h, w]: [usize; 2]) -> Option<Vec<f32>> {
        let picked: Vec<Tensor<3>> = [UNetPlace::Up, UNetPlace::Down]
            .into_iter()
            .flat_map(|p| self.at(p))
            .filter(|l| l.height == h && l.width == w)
            .map(|l| {
                let [n, heads, lq, k] = l.sum.dims();
                debug_assert!(prompt < n);
                l.sum
                    .clone()
                    .slice(s![prompt..prompt + 1, .., .., ..])
                    .reshape([heads, lq, k])
                    .div_scalar(self.steps.max(1) as f64)
            })
            .collect();
        if picked.is_empty() {
            return None;
        }
        let all = Tensor::cat(picked, 0);
        let mean = all.mean_dim(0);
        mean.into_data().convert::<f32>().try_to_vec::<f32>().ok()
    }
}

/// A `[h, w, tokens]` average map as one grey image per token: `255 * map / max`, truncated to
/// u8 (`show_cross_attention`), upscaled by `scale` with nearest-neighbour. Returns, per token,
/// `(side*scale)^2` grey values row-major.
pub fn token_images(maps: &[f32], [h, w]: [usize; 2], tokens: usize, scale: usize) -> Vec<Vec<u8>> {
    let k = maps.len() / (h * w);
    (0..tokens.min(k))
        .map(|t| {
            let values: Vec<f32> = (0..h * w).map(|p| maps[p * k + t]).collect();
            let max = values.iter().copied().fold(0f32, f32::max);
            let mut img = vec![0u8; h * scale * w * scale];
            for y in 0..h * scale {
                for x in 0..w * scale {
                    let v = values[(y / scale) * w + x / scale];
                    img[y * w * scale + x] = if max > 0.0 {
                        (255.0 * v / max) as u8
                    } else {
                        0
                    };
                }
            }
            img
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(place: UNetPlace, side: usize) -> AttentionPlace {
        AttentionPlace {
            place,
            is_cross: true,
            height: side,
            width: side,
        }
    }

    #[test]
    fn sums_over_steps_and_averages_layers_and_heads() {
        let device = Device::flex();
        let mut store = AttentionStore::default();
        // Two prompts, one head, 2x2 grid, 3 tokens; a down and an up layer per step.
        let ones = Tensor::<4>::ones([2, 1, 4, 3], &device);
        for step in 0..2 {
            store.add(
                ones.clone().mul_scalar(step as f64 + 1.0),
                &at(UNetPlace::Down, 2),
            );
            store.add(ones.clone().mul_scalar(3.0), &at(UNetPlace::Up, 2));
            // Too large to keep, and self-attention is never kept.
            store.add(
                Tensor::ones([2, 1, 33 * 33, 3], &device),
                &at(UNetPlace::Up, 33),
            );
            let mut self_attn = at(UNetPlace::Mid, 2);
            self_attn.is_cross = false;
            store.add(Tensor::ones([2, 1, 4, 4], &device), &self_attn);
            store.end_step();
        }
        assert_eq!(store.steps, 2);
        assert_eq!(store.resolutions(), vec![[2, 2]]);
        assert_eq!(store.at(UNetPlace::Down).len(), 1);
        // Down: (1 + 2) / 2 = 1.5, up: 3; their mean 2.25 everywhere.
        let maps = store.average_maps(1, [2, 2]).unwrap();
        assert_eq!(maps.len(), 4 * 3);
        assert!(maps.iter().all(|&v| (v - 2.25).abs() < 1e-6), "{maps:?}");
        assert!(store.average_maps(0, [4, 4]).is_none());
    }

    #[test]
    fn token_images_are_normalised_and_upscaled() {
        // 1x2 grid, 2 tokens: token 0 is (1, 2), token 1 is (0, 0).
        let maps = [1.0, 0.0, 2.0, 0.0];
        let imgs = token_images(&maps, [1, 2], 2, 2);
        assert_eq!(imgs[0], vec![127, 127, 255, 255, 127, 127, 255, 255]);
        assert_eq!(imgs[1], vec![0; 8]);
    }
}
