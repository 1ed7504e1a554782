//! Checkpoint keys of the U-Net: diffusers key -> burn parameter path, and the original
//! single-file (CompVis/LDM `openaimodel.UNetModel`) layout -> diffusers keys.
//!
//! The LDM table mirrors `convert_ldm_unet_checkpoint` in diffusers'
//! `loaders/single_file_utils.py` (with `update_unet_resnet_ldm_to_diffusers` and
//! `update_unet_attention_ldm_to_diffusers`), but parses each key by its path segments instead of
//! diffusers' substring replacements, so that keys it does not understand are reported.

use crate::keymap::{KeySource, LdmMapping};

/// Prefix of the U-Net in a single-file checkpoint (diffusers' `LDM_UNET_KEY`).
pub const LDM_UNET_PREFIX: &str = "model.diffusion_model.";
/// Prefix of LitEma's copy of the model (`ldm/modules/ema.py`).
pub const LDM_EMA_PREFIX: &str = "model_ema.";
/// diffusers treats a file as holding EMA weights when more than this many keys start with
/// `model_ema` (`convert_ldm_unet_checkpoint`: "at least a 100 parameters").
const MIN_EMA_KEYS: usize = 100;

/// The inverse of [`to_burn_path`] as regexes on burn paths, for `saving`.
pub const FROM_BURN_PATTERNS: &[(&str, &str)] = &[
    (r"\.ff\.geglu\.proj\.", ".ff.net.0.proj."),
    (r"\.ff\.proj_out\.", ".ff.net.2."),
];

/// Burn parameter path of a diffusers U-Net key; `None` for keys the model does not use (the
/// U-Net has no buffers, so every key gets a path; unknown ones then show up as unexpected).
///
/// diffusers' `FeedForward.net` is a `ModuleList` `[GEGLU, Dropout, Linear]`; the burn module
/// names its two parametrised parts `geglu` and `proj_out` instead.
pub fn to_burn_path(key: &str) -> Option<String> {
    // Match whole path segments: pad with dots so `.ff.net.` cannot match inside a name.
    let padded = format!(".{key}");
    let mapped = padded
        .replace(".ff.net.0.proj.", ".ff.geglu.proj.")
        .replace(".ff.net.2.", ".ff.proj_out.");
    Some(mapped[1..].to_string())
}

/// Whether the checkpoint holds an LDM U-Net at all.
pub fn has_ldm_unet(keys: &[String]) -> bool {
    keys.iter().any(|k| k.starts_with(LDM_UNET_PREFIX))
}

/// Whether the checkpoint holds an EMA copy of the U-Net, by diffusers' rule: more than 100 keys
/// start with `model_ema`.
pub fn ldm_has_ema(keys: &[String]) -> bool {
    keys.iter().filter(|k| k.starts_with("model_ema")).count() > MIN_EMA_KEYS
}

/// LitEma's name for a `model.diffusion_model.*` tensor: everything after `model.` with the dots
/// removed, under `model_ema.` (`"model_ema." + "".join(key.split(".")[1:])` in diffusers).
pub fn ldm_ema_key(ldm_key: &str) -> Option<String> {
    let rest = ldm_key.strip_prefix("model.")?;
    Some(format!("{LDM_EMA_PREFIX}{}", rest.replace('.', "")))
}

/// `layers_per_block` of an LDM U-Net, read from its names: `output_blocks` holds
/// `layers_per_block + 1` layers per block and the number of blocks is one more than the number
/// of `input_blocks.N.0.op` downsamplers. `None` when the names do not fit that pattern.
pub fn ldm_unet_layers_per_block(keys: &[String]) -> Option<usize> {
    let mut outputs = std::collections::BTreeSet::new();
    let mut downsamplers = std::collections::BTreeSet::new();
    for key in keys {
        let Some(rest) = key.strip_prefix(LDM_UNET_PREFIX) else {
            continue;
        };
        let p: Vec<&str> = rest.split('.').collect();
        match p.as_slice() {
            ["output_blocks", n, ..] => {
                outputs.insert(n.parse::<usize>().ok()?);
            }
            ["input_blocks", n, "0", "op", ..] => {
                downsamplers.insert(n.parse::<usize>().ok()?);
            }
            _ => {}
        }
    }
    let blocks = downsamplers.len() + 1;
    let per_block = outputs.len() / blocks;
    (per_block >= 2 && outputs.len() % blocks == 0).then(|| per_block - 1)
}

/// Maps the U-Net of a single-file checkpoint to diffusers keys.
///
/// `keys` are all keys of the checkpoint (without a leading `state_dict.`); only those under
/// `model.diffusion_model.` are looked at, and with `use_ema` and an EMA copy in the file
/// ([`ldm_has_ema`]), each tensor is taken from its `model_ema.` twin instead, as
/// `convert_ldm_unet_checkpoint(extract_ema=True)` does. `layers_per_block` is the config's.
///
/// Errors when the file has no U-Net, an EMA twin is missing, the block layout contradicts
/// `layers_per_block`, or two tensors map to one key.
pub fn unet_from_ldm(
    keys: &[String],
    layers_per_block: usize,
    use_ema: bool,
) -> Result<LdmMapping, String> {
    if layers_per_block == 0 {
        return Err("layers_per_block must be at least 1".into());
    }
    if !has_ldm_unet(keys) {
        return Err(format!(
            "the checkpoint has no U-Net ({LDM_UNET_PREFIX}* keys)"
        ));
    }
    let ema = use_ema && ldm_has_ema(keys);
    let ema_keys: std::collections::HashSet<&str> = if ema {
        keys.iter()
            .filter(|k| k.starts_with(LDM_EMA_PREFIX))
            .map(String::as_str)
            .collect()
    } else {
        Default::default()
    };

    let mut out = LdmMapping::default();
    for key in keys {
        let Some(rest) = key.strip_prefix(LDM_UNET_PREFIX) else {
            continue;
        };
        match map_unet_key(rest, layers_per_block)? {
            Some(target) => {
                let source = if ema {
                    let twin = ldm_ema_key(key).expect("starts with model.");
                    if !ema_keys.contains(twin.as_str()) {
                        return Err(format!(
                            "EMA weights requested, but {twin} (for {key}) is missing"
                        ));
                    }
                    twin
                } else {
                    key.clone()
                };
                out.mapped.push((target, KeySource::plain(source)));
            }
            None => out.unmapped.push(key.clone()),
        }
    }
    out.check_unique()?;
    Ok(out)
}

/// One LDM U-Net key (prefix removed) -> diffusers key; `Ok(None)` when not understood.
fn map_unet_key(rest: &str, lpb: usize) -> Result<Option<String>, String> {
    let p: Vec<&str> = rest.split('.').collect();
    let Some((&param, path)) = p.split_last() else {
        return Ok(None);
    };
    // diffusers' DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    let top = match path {
        ["time_embed", "0"] => Some("time_embedding.linear_1"),
        ["time_embed", "2"] => Some("time_embedding.linear_2"),
        // SDXL's `text_time` embedding (`convert_ldm_unet_checkpoint`, addition_embed_type).
        ["label_emb", "0", "0"] => Some("add_embedding.linear_1"),
        ["label_emb", "0", "2"] => Some("add_embedding.linear_2"),
        ["input_blocks", "0", "0"] => Some("conv_in"),
        ["out", "0"] => Some("conv_norm_out"),
        ["out", "2"] => Some("conv_out"),
        _ => None,
    };
    if let Some(top) = top {
        return Ok(is_param(param).then(|| format!("{top}.{param}")));
    }
    let index = |s: &str| s.parse::<usize>().ok();
    Ok(match p.as_slice() {
        ["input_blocks", n, layer, sub @ ..] => {
            let Some(n) = index(n).filter(|&n| n > 0) else {
                return Ok(None);
            };
            // input_blocks.0 is conv_in; then each down block has `lpb` layers and one slot
            // for the downsampler
            let (block, j) = ((n - 1) / (lpb + 1), (n - 1) % (lpb + 1));
            let head = format!("down_blocks.{block}");
            match (*layer, sub) {
                ("0", ["op", param]) if is_param(param) => {
                    if j != lpb {
                        return Err(layout_error(rest, lpb));
                    }
                    Some(format!("{head}.downsamplers.0.conv.{param}"))
                }
                _ if j == lpb => return Err(layout_error(rest, lpb)),
                ("0", sub) => resnet(sub).map(|r| format!("{head}.resnets.{j}.{r}")),
                ("1", sub) => attention(sub).map(|a| format!("{head}.attentions.{j}.{a}")),
                _ => None,
            }
        }
        ["middle_block", layer, sub @ ..] => match *layer {
            // middle_block = [ResBlock, SpatialTransformer, ResBlock]
            "0" => resnet(sub).map(|r| format!("mid_block.resnets.0.{r}")),
            "1" => attention(sub).map(|a| format!("mid_block.attentions.0.{a}")),
            "2" => resnet(sub).map(|r| format!("mid_block.resnets.1.{r}")),
            _ => None,
        },
        ["output_blocks", n, layer, sub @ ..] => {
            let Some(n) = index(n) else { return Ok(None) };
            let (block, j) = (n / (lpb + 1), n % (lpb + 1));
            let head = format!("up_blocks.{block}");
            match (*layer, sub) {
                // the upsampler is `.1.conv` after a plain resnet, `.2.conv` after attention
                ("1" | "2", ["conv", param]) if is_param(param) => {
                    if j != lpb {
                        return Err(layout_error(rest, lpb));
                    }
                    Some(format!("{head}.upsamplers.0.conv.{param}"))
                }
                ("0", sub) => resnet(sub).map(|r| format!("{head}.resnets.{j}.{r}")),
                ("1", sub) => attention(sub).map(|a| format!("{head}.attentions.{j}.{a}")),
                _ => None,
            }
        }
        _ => None,
    })
}

fn layout_error(rest: &str, lpb: usize) -> String {
    format!("{LDM_UNET_PREFIX}{rest} does not fit layers_per_block = {lpb}")
}

fn is_param(s: &str) -> bool {
    s == "weight" || s == "bias"
}

/// ResBlock sub-layer -> diffusers ResnetBlock2D name (`update_unet_resnet_ldm_to_diffusers`).
fn resnet(sub: &[&str]) -> Option<String> {
    let (&param, layer) = sub.split_last()?;
    let name = match layer {
        ["in_layers", "0"] => "norm1",
        ["in_layers", "2"] => "conv1",
        ["emb_layers", "1"] => "time_emb_proj",
        ["out_layers", "0"] => "norm2",
        ["out_layers", "3"] => "conv2",
        ["skip_connection"] => "conv_shortcut",
        _ => return None,
    };
    is_param(param).then(|| format!("{name}.{param}"))
}

/// SpatialTransformer names are already diffusers' names
/// (`update_unet_attention_ldm_to_diffusers` only renames the prefix).
fn attention(sub: &[&str]) -> Option<String> {
    (sub.len() >= 2 && is_param(sub[sub.len() - 1])).then(|| sub.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

    /// Names of `<cfg>-ldm-keys.txt` (`name<TAB>shape<TAB>dtype`).
    fn ldm_keys(cfg: &str) -> Vec<String> {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{cfg}-ldm-keys.txt")).unwrap();
        let lines = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty());
        lines
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    }

    /// Rows of `<cfg>-ldm-expected.txt` for one component: what diffusers' own converter does.
    fn expected(cfg: &str, component: &str) -> BTreeSet<Row> {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{cfg}-ldm-expected.txt")).unwrap();
        let rows = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty());
        rows.map(|l| l.split('\t').collect::<Vec<_>>())
            .filter(|c| c[0] == component)
            .map(|c| {
                assert_eq!(
                    (c[3], c[4]),
                    ("-", "0"),
                    "the U-Net has no chunks or squeezes"
                );
                row(c[1], &KeySource::plain(c[2]))
            })
            .collect()
    }

    /// (target, source key, chunk, squeeze): `KeySource` is not `Ord`.
    type Row = (String, String, Option<(usize, usize)>, bool);

    fn row(target: &str, s: &KeySource) -> Row {
        (target.to_string(), s.key.clone(), s.chunk, s.squeeze_to_2d)
    }

    fn as_set(m: &LdmMapping) -> BTreeSet<Row> {
        m.mapped.iter().map(|(t, s)| row(t, s)).collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sd15_matches_diffusers_conversion() {
        let keys = ldm_keys("sd15");
        let m = unet_from_ldm(&keys, 2, false).unwrap();
        assert!(m.unmapped.is_empty(), "{:?}", m.unmapped);
        assert_eq!(m.mapped.len(), 686);
        assert_eq!(as_set(&m), expected("sd15", "unet"));
    }

    #[test]
    fn sd15_ema_matches_diffusers_conversion() {
        let keys = ldm_keys("sd15");
        assert!(ldm_has_ema(&keys));
        let m = unet_from_ldm(&keys, 2, true).unwrap();
        assert!(m.unmapped.is_empty(), "{:?}", m.unmapped);
        assert_eq!(m.mapped.len(), 686);
        assert_eq!(as_set(&m), expected("sd15", "unet_ema"));
    }

    #[test]
    fn sd21_matches_diffusers_conversion_and_ignores_missing_ema() {
        let keys = ldm_keys("sd21");
        assert!(!ldm_has_ema(&keys));
        // no EMA copy in the file: use_ema falls back to the plain weights, as in diffusers
        for use_ema in [false, true] {
            let m = unet_from_ldm(&keys, 2, use_ema).unwrap();
            assert!(m.unmapped.is_empty(), "{:?}", m.unmapped);
            assert_eq!(as_set(&m), expected("sd21", "unet"));
        }
    }

    #[test]
    fn every_diffusers_key_gets_a_burn_path() {
        let exp = expected("sd15", "unet");
        let paths: BTreeSet<String> = exp.iter().map(|r| to_burn_path(&r.0).unwrap()).collect();
        assert_eq!(paths.len(), 686);
        assert!(!paths.iter().any(|p| p.contains("ff.net")));
        assert_eq!(
            paths
                .iter()
                .filter(|p| p.contains(".ff.geglu.proj."))
                .count(),
            32
        );
        assert_eq!(
            paths.iter().filter(|p| p.contains(".ff.proj_out.")).count(),
            32
        );
    }

    #[test]
    fn burn_path_renames_only_the_feed_forward() {
        let t = "down_blocks.0.attentions.1.transformer_blocks.0";
        assert_eq!(
            to_burn_path(&format!("{t}.ff.net.0.proj.weight")).unwrap(),
            format!("{t}.ff.geglu.proj.weight")
        );
        assert_eq!(
            to_burn_path(&format!("{t}.ff.net.2.bias")).unwrap(),
            format!("{t}.ff.proj_out.bias")
        );
        for same in [
            format!("{t}.attn1.to_out.0.weight"),
            format!("{t}.norm3.bias"),
            "down_blocks.0.attentions.1.proj_out.weight".to_string(),
            "conv_in.weight".to_string(),
            "xff.net.2.bias".to_string(),
        ] {
            assert_eq!(to_burn_path(&same).unwrap(), same);
        }
    }

    #[test]
    fn ema_key_drops_the_dots() {
        assert_eq!(
            ldm_ema_key("model.diffusion_model.input_blocks.1.1.proj_in.weight").unwrap(),
            "model_ema.diffusion_modelinput_blocks11proj_inweight"
        );
        assert_eq!(ldm_ema_key("first_stage_model.x"), None);
    }

    #[test]
    fn missing_ema_twin_is_an_error() {
        let mut keys = ldm_keys("sd15");
        keys.retain(|k| k != "model_ema.diffusion_modelout2weight");
        let err = unet_from_ldm(&keys, 2, true).unwrap_err();
        assert!(err.contains("model_ema.diffusion_modelout2weight"), "{err}");
        // without use_ema the EMA copy is not looked at
        assert!(unet_from_ldm(&keys, 2, false).is_ok());
    }

    #[test]
    fn unknown_keys_under_the_prefix_are_reported() {
        let mut keys = ldm_keys("sd21");
        let odd = strings(&[
            "model.diffusion_model.label_emb.0.1.weight", // label_emb.0.1 is the SiLU
            "model.diffusion_model.input_blocks.1.0.in_layers.1.weight",
            "model.diffusion_model.input_blocks.1.2.weight",
            "model.diffusion_model.middle_block.3.in_layers.0.weight",
            "model.diffusion_model.output_blocks.0.0.in_layers.0.scale",
            "model.diffusion_model.output_blocks.x.0.in_layers.0.weight",
            "model.diffusion_model.input_blocks.0.0.scale",
            "model.diffusion_model.weird",
        ]);
        keys.extend(odd.iter().cloned());
        keys.push("cond_stage_model.something.else".into()); // not the U-Net's business
        let m = unet_from_ldm(&keys, 2, false).unwrap();
        assert_eq!(m.unmapped, odd);
        assert_eq!(as_set(&m), expected("sd21", "unet"));
    }

    #[test]
    fn wrong_layers_per_block_is_an_error() {
        let keys = ldm_keys("sd15");
        assert_eq!(ldm_unet_layers_per_block(&keys), Some(2));
        for lpb in [1, 3] {
            let err = unet_from_ldm(&keys, lpb, false).unwrap_err();
            assert!(err.contains("layers_per_block"), "{err}");
        }
        assert!(unet_from_ldm(&keys, 0, false).is_err());
    }

    #[test]
    fn no_unet_is_an_error() {
        let keys = strings(&["first_stage_model.encoder.conv_in.weight"]);
        assert!(!has_ldm_unet(&keys));
        assert!(unet_from_ldm(&keys, 2, false).is_err());
    }

    #[test]
    fn two_upsampler_convs_in_one_block_are_an_error() {
        let mut keys = ldm_keys("sd21");
        // output_blocks.5 has attention, so its upsampler is .2.conv; add a stray .1.conv
        keys.push("model.diffusion_model.output_blocks.5.1.conv.weight".into());
        let err = unet_from_ldm(&keys, 2, false).unwrap_err();
        assert!(
            err.contains("up_blocks.1.upsamplers.0.conv.weight"),
            "{err}"
        );
    }

    #[test]
    fn small_hand_written_unet() {
        // one block pair with lpb = 1, no attention: the upsampler is `.1.conv`
        let keys = strings(&[
            "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
            "model.diffusion_model.input_blocks.2.0.op.bias",
            "model.diffusion_model.input_blocks.3.0.skip_connection.weight",
            "model.diffusion_model.output_blocks.1.1.conv.weight",
            "model.diffusion_model.output_blocks.2.1.transformer_blocks.0.ff.net.2.bias",
            "model.diffusion_model.middle_block.2.emb_layers.1.weight",
        ]);
        let m = unet_from_ldm(&keys, 1, false).unwrap();
        let targets: Vec<&str> = m.mapped.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            targets,
            [
                "down_blocks.0.resnets.0.norm1.weight",
                "down_blocks.0.downsamplers.0.conv.bias",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
                "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.bias",
                "mid_block.resnets.1.time_emb_proj.weight",
            ]
        );
        assert_eq!(m.mapped[0].1, KeySource::plain(keys[0].clone()));
        assert!(m.unmapped.is_empty());
        assert_eq!(ldm_unet_layers_per_block(&keys), None); // too few output blocks to tell
    }
}
