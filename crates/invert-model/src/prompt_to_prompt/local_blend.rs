//! `LocalBlend` (diffusers' examples/community/pipeline_prompt2prompt.py, from
//! google/prompt-to-prompt): after every step, each edited image's latents are kept from the
//! source outside a mask made of the chosen words' cross-attention, so only the region those
//! words attend to changes.
//!
//! The reference's mask: the stored cross-attention maps `down_cross[2:4] + up_cross[:3]`
//! (at 512 px the 16x16 layers of SD 1.x), the chosen words' columns summed, the mean over
//! layers and heads, a 3x3 max-pool (stride 1, padding 1), nearest-neighbour resize to the
//! latents, divided by its maximum, `> threshold`; an edit's mask is its own OR the source's,
//! and `x_e = x_0 + mask * (x_e - x_0)`. The reference reshapes every map as 16x16; here each
//! map keeps its own grid (the same at 512 px), and maps of a coarser grid are upsampled to the
//! finest selected one, so other sizes give a mask of the same regions instead of an error or a
//! scrambled one.

use burn::prelude::*;

use super::attention_store::{AttentionStore, StoredMaps};
use crate::attention::UNetPlace;

/// The reference's default mask threshold (`LocalBlend(threshold=0.3)`).
pub const DEFAULT_THRESHOLD: f32 = 0.3;

#[derive(Debug, Clone)]
pub struct LocalBlend {
    /// Per prompt (source first), the token positions of its blend words (`alpha_layers`).
    pub word_positions: Vec<Vec<usize>>,
    pub threshold: f32,
}

impl LocalBlend {
    /// The stored layers the reference reads: the down blocks' third and fourth stored
    /// cross-attention layers and the up blocks' first three.
    fn layers(store: &AttentionStore) -> Vec<&StoredMaps> {
        let down = store.at(UNetPlace::Down);
        let up = store.at(UNetPlace::Up);
        down.into_iter()
            .skip(2)
            .take(2)
            .chain(up.into_iter().take(3))
            .collect()
    }

    /// Per prompt, the mask `[h, w]` before resizing: the chosen words' attention, averaged
    /// over the selected layers and heads, on the finest selected grid. `None` when no layer
    /// was stored (a model without cross-attention at those places).
    fn maps(&self, store: &AttentionStore) -> Option<(Vec<Vec<f32>>, [usize; 2])> {
        let layers = Self::layers(store);
        let (h, w) = layers.iter().map(|l| (l.height, l.width)).max()?;
        let n = self.word_positions.len();
        let device = layers[0].sum.device();
        let k = layers[0].sum.dims()[3];
        // alpha_layers: [prompts, 1, 77] with 1 at each prompt's blend words.
        let mut alpha = vec![0f32; n * k];
        for (p, positions) in self.word_positions.iter().enumerate() {
            for &i in positions {
                alpha[p * k + i] = 1.0;
            }
        }
        let alpha = Tensor::<4>::from_data(TensorData::new(alpha, [n, 1, 1, k]), &device);
        let mut sums = vec![vec![0f32; h * w]; n];
        let mut count = 0usize;
        for l in &layers {
            let heads = l.sum.dims()[1];
            // (maps * alpha_layers).sum(-1): [prompts, heads, lq]
            let words = (l.sum.clone() * alpha.clone()).sum_dim(3);
            let values = words
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 maps");
            let lq = l.height * l.width;
            let (sy, sx) = (h / l.height.max(1), w / l.width.max(1));
            for (p, sum) in sums.iter_mut().enumerate() {
                for head in 0..heads {
                    let map = &values[(p * heads + head) * lq..][..lq];
                    for y in 0..h {
                        for x in 0..w {
                            let src =
                                (y / sy).min(l.height - 1) * l.width + (x / sx).min(l.width - 1);
                            sum[y * w + x] += map[src];
                        }
                    }
                }
            }
            count += heads;
        }
        for sum in &mut sums {
            sum.iter_mut().for_each(|v| *v /= count as f32);
        }
        Some((sums, [h, w]))
    }

    /// Blends `latents` `[prompts, c, H, W]` (source first) with the masks of `store`
    /// (`LocalBlend.__call__`); unchanged when nothing is stored.
    pub fn apply(&self, latents: Tensor<4>, store: &AttentionStore) -> Tensor<4> {
        let Some((maps, grid)) = self.maps(store) else {
            return latents;
        };
        let [n, _, lh, lw] = latents.dims();
        let masks: Vec<Vec<bool>> = maps
            .iter()
            .map(|m| threshold_mask(m, grid, [lh, lw], self.threshold))
            .collect();
        let device = latents.device();
        let source = latents.clone().slice(s![0..1, .., .., ..]);
        let mut out = vec![source.clone()];
        for (e, mask) in masks.iter().enumerate().skip(1).take(n - 1) {
            let m: Vec<f32> = mask
                .iter()
                .zip(&masks[0])
                .map(|(&a, &b)| if a || b { 1.0 } else { 0.0 })
                .collect();
            let m = Tensor::<4>::from_data(TensorData::new(m, [1, 1, lh, lw]), &device);
            let x = latents.clone().slice(s![e..e + 1, .., .., ..]);
            out.push(source.clone() + m * (x - source.clone()));
        }
        Tensor::cat(out, 0)
    }
}

/// `max_pool2d(3, 1, padding=1)`, `F.interpolate(size)` (nearest), divided by the maximum,
/// `> threshold`.
fn threshold_mask(
    map: &[f32],
    [h, w]: [usize; 2],
    [oh, ow]: [usize; 2],
    threshold: f32,
) -> Vec<bool> {
    let mut pooled = vec![f32::NEG_INFINITY; h * w];
    for y in 0..h {
        for x in 0..w {
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    pooled[y * w + x] = pooled[y * w + x].max(map[yy * w + xx]);
                }
            }
        }
    }
    // torch's "nearest": source index floor(dst * in / out).
    let resized: Vec<f32> = (0..oh * ow)
        .map(|i| {
            let (y, x) = (i / ow, i % ow);
            pooled[(y * h / oh) * w + x * w / ow]
        })
        .collect();
    let max = resized.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    resized.iter().map(|&v| v / max > threshold).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::AttentionPlace;

    #[test]
    fn mask_pools_resizes_and_thresholds() {
        // 3x3 map with one hot cell in the corner: the pool spreads it to its 2x2 neighbourhood.
        let map = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2];
        let m = threshold_mask(&map, [3, 3], [3, 3], 0.3);
        let want = [true, true, false, true, true, false, false, false, false];
        assert_eq!(m, want);
        // Nearest upscale x2 of the same.
        let m2 = threshold_mask(&map, [3, 3], [6, 6], 0.3);
        assert!(m2[0] && m2[3] && !m2[4] && !m2[35]);
    }

    #[test]
    fn blend_keeps_the_source_outside_the_mask() {
        let device = Device::flex();
        let mut store = AttentionStore::default();
        // Up-block layer, 2 prompts, 1 head, 2x2 grid, 4 tokens. Prompt 0's word (token 2)
        // attends to the top-left cell, prompt 1's (token 3) to nothing: mask = top-left only.
        let mut maps = vec![0f32; 2 * 4 * 4];
        maps[2] = 1.0; // prompt 0, cell 0, token 2
        maps[4 * 4 + 3 * 4] = 0.1; // prompt 1, cell 3, token 0 (not a blend word)
        let t = Tensor::<4>::from_data(TensorData::new(maps, [2, 1, 4, 4]), &device);
        let at = AttentionPlace {
            place: UNetPlace::Up,
            is_cross: true,
            height: 2,
            width: 2,
        };
        store.add(t, &at);
        store.end_step();
        let blend = LocalBlend {
            word_positions: vec![vec![2], vec![3]],
            threshold: 0.3,
        };
        // Latents 4x4: the pool makes the whole 2x2 grid's top-left cell reach every cell
        // (3x3 max-pool on a 2x2 grid covers all of it), so the edit is kept everywhere.
        let x = Tensor::<4>::from_data(
            TensorData::new((0..32).map(|v| v as f32).collect::<Vec<_>>(), [2, 1, 4, 4]),
            &device,
        );
        let out = blend.apply(x.clone(), &store);
        let d = (out - x.clone()).abs().max().into_scalar::<f32>();
        assert_eq!(d, 0.0);

        // Without any attention on the words the mask is empty (0/0 is NaN, never > 0.3):
        // the edit takes the source's latents.
        let none = LocalBlend {
            word_positions: vec![vec![1], vec![1]],
            threshold: 0.3,
        };
        let out = none.apply(x.clone(), &store);
        let edited = out.slice(s![1..2, .., .., ..]);
        let source = x.slice(s![0..1, .., .., ..]);
        assert_eq!((edited - source).abs().max().into_scalar::<f32>(), 0.0);
    }
}
