//! Growing a trained U-Net by one layer per block without changing what it computes, so a
//! continued run (`init_from`) can add capacity instead of retraining from scratch.
//!
//! diffusers' `UNet2DConditionModel` with `layers_per_block = l` has `l` resnets (each followed
//! by a `Transformer2DModel` in cross-attention blocks) per down block and `l + 1` per up block,
//! the up block's resnet `j` reading the skip the down path pushed `j`-th from the top
//! (`unet_2d_condition.py`: `down_block_res_samples`, consumed from the end). The grown model:
//!
//! - **down block**: the old layers keep their places, a new resnet (and transformer) `l` is
//!   appended. Its residual branch ends in a zero `conv2` (the transformer's in a zero
//!   `proj_out`), so it passes its input through (`ResnetBlock2D` and `Transformer2DModel` are
//!   residual), and the skip it pushes equals the one below it.
//! - **up block**: up resnet 0 keeps its place and reads that new, equal skip; a new resnet 1
//!   follows it, its zero branch and a 1x1 shortcut `[I | 0]` passing the hidden state through
//!   and ignoring its skip (`torch.cat([hidden, skip], dim=1)`: the hidden channels come first);
//!   the old resnets `1..=l` move to `2..=l + 1`, and each still reads the skip it read before.
//!
//! The new layers' other weights keep the new model's random initialisation, so the zeroed
//! weights get gradients at once and the layers start to learn (as diffusers' ControlNet starts
//! from zero convolutions). The mid block does not depend on `layers_per_block`.

use std::collections::HashMap;

use burn::store::ModuleSnapshot;
use burn::store::bridge;
use burn::tensor::TensorData;
use invert_model::unet::UNet2DConditionModel;
use invert_model::unet::unet_blocks::DownBlock;

/// Where an old parameter goes in the grown model: down-block layers keep their index; in an
/// up block that grows, layers from 1 on move up by one.
fn grown_path(path: &str, up_grows: &[bool]) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        [
            "up_blocks",
            block,
            kind @ ("resnets" | "attentions"),
            index,
            rest @ ..,
        ] => {
            let index: usize = index.parse().expect("layer index");
            let grows = block.parse().is_ok_and(|b: usize| up_grows[b]);
            let index = if index == 0 || !grows {
                index
            } else {
                index + 1
            };
            format!("up_blocks.{block}.{kind}.{index}.{}", rest.join("."))
        }
        _ => path.to_string(),
    }
}

/// Resnets per down block (`layers_per_block`, per block).
pub fn layers_per_block(unet: &UNet2DConditionModel) -> Vec<usize> {
    unet.down_blocks
        .iter()
        .map(|b| match b {
            DownBlock::CrossAttn(b) => b.resnets.len(),
            DownBlock::Plain(b) => b.resnets.len(),
        })
        .collect()
}

/// Fills `grown`, whose blocks each have as many layers as `old`'s or one more, so that it
/// computes what `old` computes. Errors name what did not fit.
pub fn grow_layers(
    old: &UNet2DConditionModel,
    grown: &mut UNet2DConditionModel,
) -> Result<(), String> {
    let (before, after) = (layers_per_block(old), layers_per_block(grown));
    let fits = before.len() == after.len()
        && before
            .iter()
            .zip(&after)
            .all(|(b, a)| *a == *b || *a == *b + 1);
    if !fits {
        return Err(format!(
            "a U-Net of {before:?} layers per block grows by at most one per block, not to {after:?}"
        ));
    }
    let down_grows: Vec<bool> = before.iter().zip(&after).map(|(b, a)| a > b).collect();
    // up block i mirrors down block n - 1 - i
    let up_grows: Vec<bool> = down_grows.iter().rev().copied().collect();
    let shapes: HashMap<String, Vec<usize>> = grown
        .collect(None, None, true)
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect();
    let mut tensors: Vec<_> = old
        .collect(None, None, true)
        .into_iter()
        .map(|mut t| {
            t.name = grown_path(&t.name, &up_grows);
            t.param_id = None;
            t
        })
        .collect();
    // the new layers' residual branches end in zeros; a grown up block's new resnet 1 passes
    // its hidden channels through its 1x1 shortcut
    let mut fills: Vec<(String, bool)> = Vec::new();
    let mut zero_layer = |resnet: String, attention: String, shortcut: bool| {
        fills.push((format!("{resnet}.conv2.weight"), false));
        fills.push((format!("{resnet}.conv2.bias"), false));
        if shortcut {
            fills.push((format!("{resnet}.conv_shortcut.weight"), true));
            fills.push((format!("{resnet}.conv_shortcut.bias"), false));
        }
        if shapes.contains_key(&format!("{attention}.proj_out.weight")) {
            fills.push((format!("{attention}.proj_out.weight"), false));
            fills.push((format!("{attention}.proj_out.bias"), false));
        }
    };
    for (b, _) in down_grows.iter().enumerate().filter(|(_, g)| **g) {
        let layer = |kind: &str| format!("down_blocks.{b}.{kind}.{}", before[b]);
        zero_layer(layer("resnets"), layer("attentions"), false);
    }
    for (b, _) in up_grows.iter().enumerate().filter(|(_, g)| **g) {
        let layer = |kind: &str| format!("up_blocks.{b}.{kind}.1");
        zero_layer(layer("resnets"), layer("attentions"), true);
    }
    for (name, pass_hidden) in fills {
        let shape = shapes
            .get(&name)
            .ok_or_else(|| format!("the grown U-Net has no parameter `{name}`"))?;
        let mut values = vec![0.0f32; shape.iter().product()];
        if pass_hidden {
            // `[out, in, 1, 1]`: output channel o reads input channel o (the hidden state)
            let (out, inputs) = (shape[0], shape[1]);
            for o in 0..out {
                values[o * inputs + o] = 1.0;
            }
        }
        let data = TensorData::new(values, shape.clone());
        tensors.push(bridge::from_data(data, name, None));
    }
    let result = grown.apply(tensors, None, None, true);
    if let Some(e) = result.errors.first() {
        return Err(format!("growing the U-Net: {e}"));
    }
    if let Some(unused) = result.unused.first() {
        return Err(format!(
            "growing the U-Net: `{unused}` has no place in the grown model"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::*;
    use burn::tensor::Distribution;

    use invert_model::unet::PerBlock;

    use crate::pretrain::Architecture;

    fn tiny(layers: &[usize]) -> UNet2DConditionModel {
        let architecture = Architecture {
            unet_channels: vec![16, 32, 32],
            unet_attention: vec![false, true, true],
            unet_groups: 8,
            unet_layers_per_block: PerBlock::Each(layers.to_vec()),
            text_width: 32,
            ..Architecture::default()
        };
        architecture.configs(100).1.init(&Device::flex())
    }

    #[test]
    fn old_up_layers_move_up_by_one_where_the_block_grows() {
        let grows = [true, false, true];
        let moved = |p: &str| grown_path(p, &grows);
        assert_eq!(
            moved("up_blocks.2.resnets.1.conv1.weight"),
            "up_blocks.2.resnets.2.conv1.weight"
        );
        assert_eq!(
            moved("up_blocks.1.resnets.1.conv1.weight"),
            "up_blocks.1.resnets.1.conv1.weight"
        );
        assert_eq!(
            moved("up_blocks.0.attentions.0.proj_out.bias"),
            "up_blocks.0.attentions.0.proj_out.bias"
        );
        assert_eq!(
            moved("down_blocks.0.resnets.0.conv1.weight"),
            "down_blocks.0.resnets.0.conv1.weight"
        );
        assert_eq!(moved("conv_in.weight"), "conv_in.weight");
    }

    /// Every parameter random (a fresh model's biases are zero and its norms the identity, which
    /// would hide a misplaced one).
    fn randomised(mut unet: UNet2DConditionModel) -> UNet2DConditionModel {
        let device = Device::flex();
        let values: Vec<_> = unet
            .collect(None, None, true)
            .into_iter()
            .map(|t| {
                let shape = t.shape.to_vec();
                let n = shape.iter().product::<usize>();
                let values = Tensor::<1>::random([n], Distribution::Normal(0.0, 0.2), &device)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                bridge::from_data(TensorData::new(values, shape), t.name.clone(), None)
            })
            .collect();
        assert!(unet.apply(values, None, None, true).errors.is_empty());
        unet
    }

    /// The grown model computes what the old one does: every block grown, some grown, and from
    /// two layers.
    #[test]
    fn a_grown_unet_computes_what_the_old_one_did() {
        let device = Device::flex();
        for (before, after) in [
            ([1, 1, 1], [2, 2, 2]),
            ([1, 1, 1], [2, 1, 1]),
            ([1, 1, 1], [1, 2, 2]),
            ([2, 2, 1], [3, 2, 2]),
        ] {
            let old = randomised(tiny(&before));
            let mut grown = tiny(&after);
            grow_layers(&old, &mut grown).unwrap();
            assert_eq!(layers_per_block(&grown), after);

            let x = Tensor::<4>::random([2, 4, 16, 16], Distribution::Normal(0.0, 1.0), &device);
            let t = Tensor::<1>::from_floats([10.0, 700.0], &device);
            let context = Tensor::<3>::random([2, 5, 32], Distribution::Normal(0.0, 1.0), &device);
            let a = old.forward(x.clone(), t.clone(), context.clone());
            let b = grown.forward(x, t, context);
            let scale = a.clone().abs().max().into_scalar::<f32>();
            let diff = (a - b).abs().max().into_scalar::<f32>();
            assert!(scale > 0.1, "the old model computes something ({scale})");
            assert!(
                diff < 1e-4 * scale,
                "{before:?} -> {after:?}: grown model differs by {diff} (scale {scale})"
            );
            assert!(grown.num_params() > old.num_params());
        }
    }

    #[test]
    fn growing_by_more_than_a_layer_or_shrinking_is_refused() {
        let old = tiny(&[1, 2, 1]);
        for other in [[3, 2, 1], [1, 1, 1]] {
            let e = grow_layers(&old, &mut tiny(&other)).unwrap_err();
            assert!(e.contains("at most one per block"), "{e}");
        }
    }
}
