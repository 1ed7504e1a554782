//! Checkpoint keys of the VAE (AutoencoderKL): diffusers key -> burn parameter path, and the
//! original single-file (CompVis/LDM `ldm.modules.diffusionmodules.model`) layout -> diffusers
//! keys.
//!
//! The LDM table mirrors `convert_ldm_vae_checkpoint` in diffusers'
//! `loaders/single_file_utils.py` (with `update_vae_resnet_ldm_to_diffusers`,
//! `update_vae_attentions_ldm_to_diffusers` and `DIFFUSERS_TO_LDM_MAPPING["vae"]`), parsing keys
//! by path segments so that keys it does not understand are reported.

use crate::keymap::{KeySource, LdmMapping};

/// Prefixes of the VAE in a single-file checkpoint (diffusers' `LDM_VAE_KEYS`).
pub const LDM_VAE_PREFIXES: [&str; 2] = ["first_stage_model.", "vae."];

/// Burn parameter path of a diffusers VAE key; `None` for keys the model does not use (the VAE
/// has no buffers, so every key gets a path; unknown ones then show up as unexpected).
///
/// Older diffusers files (the SD1.5 release among them) name the mid-block attention
/// `query/key/value/proj_attn` (the pre-0.14 `AttentionBlock`); diffusers now uses the `Attention`
/// names `to_q/to_k/to_v/to_out.0`, and so does the burn model.
pub fn to_burn_path(key: &str) -> Option<String> {
    for coder in ["encoder", "decoder"] {
        let head = format!("{coder}.mid_block.attentions.0.");
        let Some(rest) = key.strip_prefix(&head) else {
            continue;
        };
        let Some((layer, param)) = rest.split_once('.') else {
            break;
        };
        let new = match layer {
            "query" => "to_q",
            "key" => "to_k",
            "value" => "to_v",
            "proj_attn" => "to_out.0",
            _ => break,
        };
        return Some(format!("{head}{new}.{param}"));
    }
    Some(key.to_string())
}

/// The prefix the VAE of a single-file checkpoint sits under, picked as diffusers does (the
/// last of [`LDM_VAE_PREFIXES`] that any key starts with), or `""` for a bare LDM VAE file
/// (such as `vae-ft-mse-840000-ema-pruned`) whose keys start with `encoder.`/`decoder.`.
/// `None` when there is no VAE.
pub fn ldm_vae_prefix(keys: &[String]) -> Option<&'static str> {
    let found = LDM_VAE_PREFIXES
        .iter()
        .rev()
        .find(|p| keys.iter().any(|k| k.starts_with(*p)));
    if found.is_some() {
        return found.copied();
    }
    // diffusers falls back to the empty prefix, i.e. the whole file; only do that when the file
    // really looks like an LDM VAE, so that other files are not reported key by key.
    let bare = ["encoder.conv_in.weight", "decoder.conv_in.weight"];
    keys.iter()
        .any(|k| bare.contains(&k.as_str()))
        .then_some("")
}

/// Maps the VAE of a single-file checkpoint to diffusers keys.
///
/// `keys` are all keys of the checkpoint; only those under [`ldm_vae_prefix`] are looked at.
/// The decoder's `up.N` list runs in the opposite order to diffusers' `up_blocks` (its length is
/// read from the keys). The mid-block attention's q/k/v/proj_out weights are 1x1 convs in LDM,
/// so they come with `squeeze_to_2d`.
///
/// Errors when the file has no VAE or two tensors map to one key.
pub fn vae_from_ldm(keys: &[String]) -> Result<LdmMapping, String> {
    let prefix = ldm_vae_prefix(keys)
        .ok_or("the checkpoint has no VAE (first_stage_model.* keys)".to_string())?;
    let vae_keys: Vec<(&String, &str)> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(prefix).map(|rest| (k, rest)))
        .collect();
    // diffusers takes len(config["up_block_types"]); for a well-formed file that is the number
    // of decoder.up.N entries
    let n_up = vae_keys
        .iter()
        .filter_map(|(_, rest)| {
            rest.strip_prefix("decoder.up.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .map(|n: usize| n + 1)
        .max()
        .unwrap_or(0);

    let mut out = LdmMapping::default();
    for (key, rest) in vae_keys {
        match map_vae_key(rest, n_up) {
            Some((target, squeeze)) => {
                let mut source = KeySource::plain(key.clone());
                source.squeeze_to_2d = squeeze;
                out.mapped.push((target, source));
            }
            None => out.unmapped.push(key.clone()),
        }
    }
    out.check_unique()?;
    Ok(out)
}

/// One LDM VAE key (prefix removed) -> (diffusers key, squeeze_to_2d); `None` when not
/// understood.
fn map_vae_key(rest: &str, n_up: usize) -> Option<(String, bool)> {
    let p: Vec<&str> = rest.split('.').collect();
    let (&param, path) = p.split_last()?;
    if !(param == "weight" || param == "bias") {
        return None;
    }
    let plain = |s: String| Some((s, false));
    match path {
        ["quant_conv" | "post_quant_conv"] => plain(rest.to_string()),
        [
            coder @ ("encoder" | "decoder"),
            layer @ ("conv_in" | "conv_out"),
        ] => plain(format!("{coder}.{layer}.{param}")),
        [coder @ ("encoder" | "decoder"), "norm_out"] => {
            plain(format!("{coder}.conv_norm_out.{param}"))
        }
        // encoder.down.N: `block.M` resnets and a `downsample` conv
        ["encoder", "down", n, "block", m, layer] => {
            let n: usize = n.parse().ok()?;
            let layer = resnet(layer)?;
            plain(format!(
                "encoder.down_blocks.{n}.resnets.{m}.{layer}.{param}"
            ))
        }
        ["encoder", "down", n, "downsample", "conv"] => {
            let n: usize = n.parse().ok()?;
            plain(format!(
                "encoder.down_blocks.{n}.downsamplers.0.conv.{param}"
            ))
        }
        // decoder.up.N is diffusers' up_blocks.{n_up - 1 - N}
        ["decoder", "up", n, "block", m, layer] => {
            let i = n_up.checked_sub(1 + n.parse::<usize>().ok()?)?;
            let layer = resnet(layer)?;
            plain(format!("decoder.up_blocks.{i}.resnets.{m}.{layer}.{param}"))
        }
        ["decoder", "up", n, "upsample", "conv"] => {
            let i = n_up.checked_sub(1 + n.parse::<usize>().ok()?)?;
            plain(format!("decoder.up_blocks.{i}.upsamplers.0.conv.{param}"))
        }
        [
            coder @ ("encoder" | "decoder"),
            "mid",
            block @ ("block_1" | "block_2"),
            layer,
        ] => {
            let j = if *block == "block_1" { 0 } else { 1 };
            let layer = resnet(layer)?;
            plain(format!("{coder}.mid_block.resnets.{j}.{layer}.{param}"))
        }
        [coder @ ("encoder" | "decoder"), "mid", "attn_1", layer] => {
            let (name, conv) = match *layer {
                "norm" => ("group_norm", false),
                "q" => ("to_q", true),
                "k" => ("to_k", true),
                "v" => ("to_v", true),
                "proj_out" => ("to_out.0", true),
                _ => return None,
            };
            let target = format!("{coder}.mid_block.attentions.0.{name}.{param}");
            Some((target, conv && param == "weight"))
        }
        _ => None,
    }
}

/// LDM ResnetBlock sub-layer -> diffusers ResnetBlock2D name; only `nin_shortcut` differs.
fn resnet(layer: &str) -> Option<&str> {
    match layer {
        "norm1" | "conv1" | "norm2" | "conv2" => Some(layer),
        "nin_shortcut" => Some("conv_shortcut"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

    /// (target, source key, chunk, squeeze): `KeySource` is not `Ord`.
    type Row = (String, String, Option<(usize, usize)>, bool);

    fn row(target: &str, s: &KeySource) -> Row {
        (target.to_string(), s.key.clone(), s.chunk, s.squeeze_to_2d)
    }

    fn as_set(m: &LdmMapping) -> BTreeSet<Row> {
        m.mapped.iter().map(|(t, s)| row(t, s)).collect()
    }

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

    /// Rows of `<cfg>-ldm-expected.txt` for the VAE: what diffusers' own converter does.
    fn expected(cfg: &str) -> BTreeSet<Row> {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{cfg}-ldm-expected.txt")).unwrap();
        let rows = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty());
        rows.map(|l| l.split('\t').collect::<Vec<_>>())
            .filter(|c| c[0] == "vae")
            .map(|c| {
                assert_eq!(c[3], "-");
                (c[1].to_string(), c[2].to_string(), None, c[4] == "1")
            })
            .collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sd15_and_sd21_match_diffusers_conversion() {
        for cfg in ["sd15", "sd21"] {
            let keys = ldm_keys(cfg);
            assert_eq!(ldm_vae_prefix(&keys), Some("first_stage_model."));
            let m = vae_from_ldm(&keys).unwrap();
            assert!(m.unmapped.is_empty(), "{cfg}: {:?}", m.unmapped);
            assert_eq!(m.mapped.len(), 248);
            assert_eq!(as_set(&m), expected(cfg), "{cfg}");
            // the 8 attention q/k/v/proj_out weights, and only they, are squeezed
            let squeezed: Vec<&str> = m
                .mapped
                .iter()
                .filter(|(_, s)| s.squeeze_to_2d)
                .map(|(_, s)| s.key.as_str())
                .collect();
            assert_eq!(squeezed.len(), 8);
            assert!(
                squeezed
                    .iter()
                    .all(|k| k.contains(".mid.attn_1.") && k.ends_with("weight"))
            );
        }
    }

    #[test]
    fn decoder_blocks_are_reversed() {
        let keys = strings(&[
            "first_stage_model.decoder.up.0.block.2.nin_shortcut.weight",
            "first_stage_model.decoder.up.3.upsample.conv.bias",
            "first_stage_model.encoder.down.0.downsample.conv.weight",
            "first_stage_model.encoder.mid.attn_1.proj_out.bias",
        ]);
        let m = vae_from_ldm(&keys).unwrap();
        let targets: Vec<&str> = m.mapped.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            targets,
            [
                "decoder.up_blocks.3.resnets.2.conv_shortcut.weight",
                "decoder.up_blocks.0.upsamplers.0.conv.bias",
                "encoder.down_blocks.0.downsamplers.0.conv.weight",
                "encoder.mid_block.attentions.0.to_out.0.bias",
            ]
        );
        assert!(!m.mapped[3].1.squeeze_to_2d, "biases are not squeezed");
    }

    #[test]
    fn bare_and_vae_prefixed_files() {
        // a stand-alone LDM VAE file has no prefix; diffusers maps it the same way
        let sd = ldm_keys("sd15");
        let bare: Vec<String> = sd
            .iter()
            .filter_map(|k| k.strip_prefix("first_stage_model."))
            .map(String::from)
            .collect();
        assert_eq!(ldm_vae_prefix(&bare), Some(""));
        let m = vae_from_ldm(&bare).unwrap();
        assert!(m.unmapped.is_empty());
        let want: BTreeSet<String> = expected("sd15").into_iter().map(|r| r.0).collect();
        let got: BTreeSet<String> = m.mapped.into_iter().map(|(t, _)| t).collect();
        assert_eq!(got, want);

        let vae: Vec<String> = bare.iter().map(|k| format!("vae.{k}")).collect();
        assert_eq!(ldm_vae_prefix(&vae), Some("vae."));
        assert_eq!(vae_from_ldm(&vae).unwrap().mapped.len(), 248);
    }

    #[test]
    fn no_vae_is_an_error() {
        let keys = strings(&["model.diffusion_model.out.2.weight", "betas"]);
        assert_eq!(ldm_vae_prefix(&keys), None);
        assert!(vae_from_ldm(&keys).is_err());
    }

    #[test]
    fn unknown_keys_under_the_prefix_are_reported() {
        let mut keys = ldm_keys("sd21");
        let odd = strings(&[
            "first_stage_model.loss.logvar",
            "first_stage_model.encoder.down.0.block.0.temb_proj.weight",
            "first_stage_model.encoder.mid.attn_1.qkv.weight",
            "first_stage_model.encoder.mid.block_3.norm1.weight",
            "first_stage_model.decoder.down.0.block.0.norm1.weight",
            "first_stage_model.decoder.up.x.block.0.norm1.weight",
            "first_stage_model.quant_conv.scale",
        ]);
        keys.extend(odd.iter().cloned());
        let m = vae_from_ldm(&keys).unwrap();
        assert_eq!(m.unmapped, odd);
        assert_eq!(as_set(&m), expected("sd21"));
    }

    #[test]
    fn duplicate_targets_are_an_error() {
        let keys = strings(&[
            "first_stage_model.quant_conv.weight",
            "vae.quant_conv.weight",
        ]);
        // diffusers picks `vae.`; the other prefix is then not looked at
        assert_eq!(vae_from_ldm(&keys).unwrap().mapped.len(), 1);
        let keys = strings(&[
            "first_stage_model.decoder.up.0.block.0.norm1.weight",
            "first_stage_model.decoder.up.00.block.0.norm1.weight",
        ]);
        assert!(vae_from_ldm(&keys).is_err());
    }

    #[test]
    fn burn_path_renames_old_attention_names() {
        for (old, new) in [
            (
                "encoder.mid_block.attentions.0.query.weight",
                "encoder.mid_block.attentions.0.to_q.weight",
            ),
            (
                "encoder.mid_block.attentions.0.key.bias",
                "encoder.mid_block.attentions.0.to_k.bias",
            ),
            (
                "decoder.mid_block.attentions.0.value.weight",
                "decoder.mid_block.attentions.0.to_v.weight",
            ),
            (
                "decoder.mid_block.attentions.0.proj_attn.bias",
                "decoder.mid_block.attentions.0.to_out.0.bias",
            ),
        ] {
            assert_eq!(to_burn_path(old).unwrap(), new);
        }
        for same in [
            "decoder.mid_block.attentions.0.group_norm.weight",
            "decoder.mid_block.attentions.0.to_out.0.weight",
            "decoder.up_blocks.0.resnets.0.conv1.weight",
            "encoder.down_blocks.0.attentions.0.query.weight",
            "quant_conv.bias",
        ] {
            assert_eq!(to_burn_path(same).unwrap(), same);
        }
    }

    #[test]
    fn every_diffusers_key_gets_itself_as_burn_path() {
        for (target, ..) in expected("sd15") {
            assert_eq!(to_burn_path(&target).unwrap(), target);
        }
    }
}
