//! Checkpoint keys of the CLIP text encoder: transformers key -> burn parameter path, and the
//! text encoders of original single-file checkpoints -> transformers keys.
//!
//! Two single-file layouts exist:
//! - SD1.x (`FrozenCLIPEmbedder`): transformers' `CLIPTextModel` under
//!   `cond_stage_model.transformer.`; diffusers' `convert_ldm_clip_checkpoint` only strips that
//!   prefix.
//! - SD2.x (`FrozenOpenCLIPEmbedder`): open_clip's text tower under `cond_stage_model.model.`,
//!   with fused q/k/v projections; mirrored from diffusers' `convert_open_clip_checkpoint` and
//!   `DIFFUSERS_TO_LDM_MAPPING["openclip"]` in `loaders/single_file_utils.py`.
//!
//! All transformers keys here carry the `text_model.` prefix, as the burn paths do.

use crate::keymap::{KeySource, LdmMapping};

/// Prefix of an SD1.x (OpenAI CLIP, transformers) text encoder in a single-file checkpoint.
pub const LDM_OPENAI_CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// Prefix of an SD2.x (open_clip) text encoder in a single-file checkpoint.
pub const LDM_OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";

/// Which text encoder a single-file checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdmTextLayout {
    /// SD1.x: transformers `CLIPTextModel` (OpenAI CLIP ViT-L/14, 12 layers, width 768).
    OpenAi,
    /// SD2.x: open_clip ViT-H/14 text tower; `resblocks` layers in the file (24 in real files,
    /// of which SD2 uses 23).
    OpenClip { resblocks: usize },
}

/// Burn parameter path of a transformers text-encoder key, with or without the `text_model.`
/// prefix (transformers 4 writes it, transformers 5 does not). `None` for keys the model does
/// not use: the `position_ids` buffer and the CLIP projection head.
pub fn to_burn_path(key: &str) -> Option<String> {
    let inner = key.strip_prefix("text_model.").unwrap_or(key);
    if inner == "embeddings.position_ids" || key == "logit_scale" {
        return None;
    }
    if key.starts_with("text_projection.") || key == "text_projection" {
        return None;
    }
    let known = ["embeddings.", "encoder.", "final_layer_norm."];
    if known.iter().any(|p| inner.starts_with(p)) {
        return Some(format!("text_model.{inner}"));
    }
    // not a text-encoder name: leave it as it is, the caller reports it as unexpected
    Some(key.to_string())
}

/// [`to_burn_path`] for `CLIPTextModelWithProjection` (SDXL's second text encoder), whose
/// `text_projection.weight` is a parameter of the model (a bias-free `Linear`).
pub fn to_burn_path_with_projection(key: &str) -> Option<String> {
    if key == "text_projection.weight" {
        return Some(key.to_string());
    }
    to_burn_path(key)
}

/// The text encoder layout of a single-file checkpoint, from its key names. When both prefixes
/// occur, SD1's wins, as in diffusers' `create_diffusers_clip_model_from_ldm` (it tests
/// `is_clip_model` first).
pub fn ldm_text_encoder_layout(keys: &[String]) -> Option<LdmTextLayout> {
    if keys.iter().any(|k| k.starts_with(LDM_OPENAI_CLIP_PREFIX)) {
        return Some(LdmTextLayout::OpenAi);
    }
    if !keys.iter().any(|k| k.starts_with(LDM_OPEN_CLIP_PREFIX)) {
        return None;
    }
    let resblocks = keys
        .iter()
        .filter_map(|k| {
            let rest = k.strip_prefix(LDM_OPEN_CLIP_PREFIX)?;
            rest.strip_prefix("transformer.resblocks.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .map(|n: usize| n + 1)
        .max()
        .unwrap_or(0);
    Some(LdmTextLayout::OpenClip { resblocks })
}

/// Maps the text encoder of a single-file checkpoint to transformers keys (with `text_model.`).
///
/// Only layers `0..num_hidden_layers` are used: SD2 files hold 24 open_clip resblocks and the
/// transformers model has 23 (diffusers' `SD_2_TEXT_ENCODER_KEYS_TO_IGNORE` drops block 23). The
/// `position_ids` buffer, `text_projection` and `logit_scale` are left out without a report.
///
/// Errors when the file has no text encoder or two tensors map to one key.
pub fn clip_from_ldm(keys: &[String], num_hidden_layers: usize) -> Result<LdmMapping, String> {
    let layout = ldm_text_encoder_layout(keys).ok_or(format!(
        "the checkpoint has no text encoder ({LDM_OPENAI_CLIP_PREFIX}* or {LDM_OPEN_CLIP_PREFIX}* keys)"
    ))?;
    match layout {
        LdmTextLayout::OpenAi => {
            transformers_under(keys, LDM_OPENAI_CLIP_PREFIX, num_hidden_layers)
        }
        LdmTextLayout::OpenClip { .. } => {
            open_clip_under(keys, LDM_OPEN_CLIP_PREFIX, num_hidden_layers, false)
        }
    }
}

/// Prefix of SDXL's first text encoder (OpenAI CLIP ViT-L, transformers names) in a single-file
/// (Stability's `sgm`) checkpoint.
pub const SGM_CLIP_L_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// Prefix of SDXL's second text encoder (open_clip ViT-bigG, with `text_projection`).
pub const SGM_CLIP_G_PREFIX: &str = "conditioner.embedders.1.model.";

/// Maps SDXL's two text encoders of a single-file checkpoint: the first to `CLIPTextModel`
/// keys, the second to `CLIPTextModelWithProjection` keys, its `text_projection` (`x @ P` in
/// open_clip) transposed into a `Linear` weight, as diffusers' `convert_open_clip_checkpoint`
/// does for `text_encoder_2`.
pub fn sdxl_text_encoders_from_sgm(
    keys: &[String],
    layers_1: usize,
    layers_2: usize,
) -> Result<(LdmMapping, LdmMapping), String> {
    for prefix in [SGM_CLIP_L_PREFIX, SGM_CLIP_G_PREFIX] {
        if !keys.iter().any(|k| k.starts_with(prefix)) {
            return Err(format!(
                "the SDXL checkpoint has no {prefix}* keys (one of its two text encoders)"
            ));
        }
    }
    Ok((
        transformers_under(keys, SGM_CLIP_L_PREFIX, layers_1)?,
        open_clip_under(keys, SGM_CLIP_G_PREFIX, layers_2, true)?,
    ))
}

/// A transformers `CLIPTextModel` stored under `prefix`.
fn transformers_under(
    keys: &[String],
    prefix: &str,
    num_hidden_layers: usize,
) -> Result<LdmMapping, String> {
    let mut out = LdmMapping::default();
    for key in keys {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        // files written by transformers before the `text_model` wrapper lack it
        let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
        match classify(rest, num_hidden_layers) {
            Some(true) => out
                .mapped
                .push((format!("text_model.{rest}"), KeySource::plain(key.clone()))),
            Some(false) => {}
            None => out.unmapped.push(key.clone()),
        }
    }
    out.check_unique()?;
    Ok(out)
}

/// An open_clip text tower stored under `prefix`; with `projection`, its `text_projection` is
/// mapped (transposed) to `text_projection.weight`, else left out.
fn open_clip_under(
    keys: &[String],
    prefix: &str,
    num_hidden_layers: usize,
    projection: bool,
) -> Result<LdmMapping, String> {
    let mut out = LdmMapping::default();
    for key in keys {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        if projection && rest == "text_projection" {
            let mut source = KeySource::plain(key.clone());
            source.transpose = true;
            out.mapped.push(("text_projection.weight".into(), source));
            continue;
        }
        match open_clip(rest, num_hidden_layers) {
            Some(targets) => out.mapped.extend(targets.into_iter().map(|(t, chunk)| {
                let mut source = KeySource::plain(key.clone());
                source.chunk = chunk;
                (format!("text_model.{t}"), source)
            })),
            None => out.unmapped.push(key.clone()),
        }
    }
    out.check_unique()?;
    Ok(out)
}

/// A transformers key without `text_model.`: `Some(true)` a parameter of the model,
/// `Some(false)` a known key the model does not take, `None` not understood.
pub(crate) fn classify(rest: &str, num_hidden_layers: usize) -> Option<bool> {
    let p: Vec<&str> = rest.split('.').collect();
    match p.as_slice() {
        [
            "embeddings",
            "token_embedding" | "position_embedding",
            "weight",
        ] => Some(true),
        ["embeddings", "position_ids"] => Some(false), // an int buffer
        ["final_layer_norm", "weight" | "bias"] => Some(true),
        ["encoder", "layers", n, layer @ ..] => {
            let n: usize = n.parse().ok()?;
            let known = matches!(
                layer,
                [
                    "self_attn",
                    "q_proj" | "k_proj" | "v_proj" | "out_proj",
                    "weight" | "bias"
                ] | ["layer_norm1" | "layer_norm2", "weight" | "bias"]
                    | ["mlp", "fc1" | "fc2", "weight" | "bias"]
            );
            known.then_some(n < num_hidden_layers)
        }
        _ => None,
    }
}

/// A transformers key (without `text_model.`) and the chunk of its source tensor.
pub(crate) type Target = (String, Option<(usize, usize)>);

/// One open_clip key (prefix removed) -> transformers keys without `text_model.`, each with its
/// chunk of the source; empty for keys deliberately left out, `None` when not understood.
pub(crate) fn open_clip(rest: &str, num_hidden_layers: usize) -> Option<Vec<Target>> {
    let one = |t: String| Some(vec![(t, None)]);
    let p: Vec<&str> = rest.split('.').collect();
    match p.as_slice() {
        ["token_embedding", "weight"] => one("embeddings.token_embedding.weight".into()),
        ["positional_embedding"] => one("embeddings.position_embedding.weight".into()),
        ["ln_final", param @ ("weight" | "bias")] => one(format!("final_layer_norm.{param}")),
        // the CLIP head and open_clip's causal-mask buffer (not persisted by open_clip, but
        // harmless if a writer kept it)
        ["text_projection" | "logit_scale" | "attn_mask"] => Some(vec![]),
        ["transformer", "resblocks", n, layer @ ..] => {
            let n: usize = n.parse().ok()?;
            let head = format!("encoder.layers.{n}");
            let targets = match layer {
                // nn.MultiheadAttention stacks q, k, v along dim 0
                ["attn", fused @ ("in_proj_weight" | "in_proj_bias")] => {
                    let param = if *fused == "in_proj_weight" {
                        "weight"
                    } else {
                        "bias"
                    };
                    ["q_proj", "k_proj", "v_proj"]
                        .iter()
                        .enumerate()
                        .map(|(i, proj)| (format!("{head}.self_attn.{proj}.{param}"), Some((i, 3))))
                        .collect()
                }
                ["attn", "out_proj", param @ ("weight" | "bias")] => {
                    vec![(format!("{head}.self_attn.out_proj.{param}"), None)]
                }
                [ln @ ("ln_1" | "ln_2"), param @ ("weight" | "bias")] => {
                    let name = if *ln == "ln_1" {
                        "layer_norm1"
                    } else {
                        "layer_norm2"
                    };
                    vec![(format!("{head}.{name}.{param}"), None)]
                }
                ["mlp", fc @ ("c_fc" | "c_proj"), param @ ("weight" | "bias")] => {
                    let name = if *fc == "c_fc" { "fc1" } else { "fc2" };
                    vec![(format!("{head}.mlp.{name}.{param}"), None)]
                }
                _ => return None,
            };
            Some(if n < num_hidden_layers {
                targets
            } else {
                vec![]
            })
        }
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

    /// Rows of `<cfg>-ldm-expected.txt` for the text encoder: what diffusers' converter does.
    fn expected(cfg: &str) -> BTreeSet<Row> {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{cfg}-ldm-expected.txt")).unwrap();
        let rows = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty());
        rows.map(|l| l.split('\t').collect::<Vec<_>>())
            .filter(|c| c[0] == "text_encoder")
            .map(|c| {
                let chunk = (c[3] != "-").then(|| {
                    let (i, n) = c[3].split_once('/').unwrap();
                    (i.parse().unwrap(), n.parse().unwrap())
                });
                assert_eq!(c[4], "0");
                (c[1].to_string(), c[2].to_string(), chunk, false)
            })
            .collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn text_projection_is_a_parameter_only_of_the_model_with_projection() {
        assert_eq!(to_burn_path("text_projection.weight"), None);
        assert_eq!(
            to_burn_path_with_projection("text_projection.weight").as_deref(),
            Some("text_projection.weight")
        );
        assert_eq!(
            to_burn_path_with_projection("text_model.final_layer_norm.bias").as_deref(),
            Some("text_model.final_layer_norm.bias")
        );
        assert_eq!(
            to_burn_path_with_projection("text_model.embeddings.position_ids"),
            None
        );
    }

    #[test]
    fn sd15_matches_diffusers_conversion() {
        let keys = ldm_keys("sd15");
        assert_eq!(ldm_text_encoder_layout(&keys), Some(LdmTextLayout::OpenAi));
        let m = clip_from_ldm(&keys, 12).unwrap();
        assert!(m.unmapped.is_empty(), "{:?}", m.unmapped);
        assert_eq!(m.mapped.len(), 196);
        assert_eq!(as_set(&m), expected("sd15"));
    }

    #[test]
    fn sd21_open_clip_matches_diffusers_conversion() {
        let keys = ldm_keys("sd21");
        let layout = ldm_text_encoder_layout(&keys);
        assert_eq!(layout, Some(LdmTextLayout::OpenClip { resblocks: 24 }));
        let m = clip_from_ldm(&keys, 23).unwrap();
        assert!(m.unmapped.is_empty(), "{:?}", m.unmapped);
        assert_eq!(m.mapped.len(), 4 + 23 * 16);
        assert_eq!(as_set(&m), expected("sd21"));
        assert!(
            !m.mapped
                .iter()
                .any(|(_, s)| s.key.contains("resblocks.23."))
        );
        // with all 24 blocks the last one comes in too
        assert_eq!(clip_from_ldm(&keys, 24).unwrap().mapped.len(), 4 + 24 * 16);
    }

    #[test]
    fn open_clip_fused_qkv_is_split_in_order() {
        let keys = strings(&["cond_stage_model.model.transformer.resblocks.3.attn.in_proj_bias"]);
        let m = clip_from_ldm(&keys, 23).unwrap();
        let got: Vec<(&str, Option<(usize, usize)>)> = m
            .mapped
            .iter()
            .map(|(t, s)| (t.as_str(), s.chunk))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "text_model.encoder.layers.3.self_attn.q_proj.bias",
                    Some((0, 3))
                ),
                (
                    "text_model.encoder.layers.3.self_attn.k_proj.bias",
                    Some((1, 3))
                ),
                (
                    "text_model.encoder.layers.3.self_attn.v_proj.bias",
                    Some((2, 3))
                ),
            ]
        );
        assert!(
            m.mapped
                .iter()
                .all(|(_, s)| !s.squeeze_to_2d && s.key == keys[0])
        );
    }

    #[test]
    fn sd1_without_text_model_wrapper() {
        // the older transformers layout: `cond_stage_model.transformer.embeddings...`
        let keys: Vec<String> = ldm_keys("sd15")
            .iter()
            .map(|k| {
                k.replace(
                    "cond_stage_model.transformer.text_model.",
                    "cond_stage_model.transformer.",
                )
            })
            .collect();
        let m = clip_from_ldm(&keys, 12).unwrap();
        assert!(m.unmapped.is_empty(), "{:?}", m.unmapped);
        let want: BTreeSet<String> = expected("sd15").into_iter().map(|r| r.0).collect();
        let got: BTreeSet<String> = m.mapped.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn unknown_keys_under_the_prefix_are_reported() {
        let mut sd1 = ldm_keys("sd15");
        let odd1 = strings(&[
            "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.qkv.weight",
            "cond_stage_model.transformer.text_model.encoder.layers.x.mlp.fc1.weight",
            "cond_stage_model.transformer.vision_model.post_layernorm.weight",
            "cond_stage_model.transformer.text_model.pooler.weight",
        ]);
        sd1.extend(odd1.iter().cloned());
        sd1.push("cond_stage_model.model.token_embedding.weight".into()); // other layout: ignored
        let m = clip_from_ldm(&sd1, 12).unwrap();
        assert_eq!(m.unmapped, odd1);
        assert_eq!(as_set(&m), expected("sd15"));

        let mut sd2 = ldm_keys("sd21");
        let odd2 = strings(&[
            "cond_stage_model.model.visual.proj",
            "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_scale",
            "cond_stage_model.model.transformer.resblocks.30.ls_1.gamma",
            "cond_stage_model.model.ln_final.scale",
        ]);
        sd2.extend(odd2.iter().cloned());
        let m = clip_from_ldm(&sd2, 23).unwrap();
        assert_eq!(m.unmapped, odd2);
        assert_eq!(as_set(&m), expected("sd21"));
    }

    #[test]
    fn layers_past_the_config_are_dropped_in_both_layouts() {
        let m = clip_from_ldm(&ldm_keys("sd15"), 11).unwrap();
        assert!(m.unmapped.is_empty());
        assert_eq!(m.mapped.len(), 196 - 16);
        assert!(!m.mapped.iter().any(|(t, _)| t.contains(".layers.11.")));
    }

    #[test]
    fn layout_detection() {
        assert_eq!(
            ldm_text_encoder_layout(&strings(&["model.diffusion_model.out.2.weight"])),
            None
        );
        assert!(clip_from_ldm(&strings(&["betas"]), 12).is_err());
        let keys = strings(&["cond_stage_model.model.token_embedding.weight"]);
        assert_eq!(
            ldm_text_encoder_layout(&keys),
            Some(LdmTextLayout::OpenClip { resblocks: 0 })
        );
        let keys = strings(&[
            "cond_stage_model.model.token_embedding.weight",
            "cond_stage_model.transformer.text_model.final_layer_norm.bias",
        ]);
        assert_eq!(ldm_text_encoder_layout(&keys), Some(LdmTextLayout::OpenAi));
    }

    #[test]
    fn duplicate_targets_are_an_error() {
        let keys = strings(&[
            "cond_stage_model.transformer.text_model.final_layer_norm.bias",
            "cond_stage_model.transformer.final_layer_norm.bias",
        ]);
        let err = clip_from_ldm(&keys, 12).unwrap_err();
        assert!(err.contains("text_model.final_layer_norm.bias"), "{err}");
    }

    #[test]
    fn sdxl_single_file_text_encoders_map_to_both_models() {
        let keys = strings(&[
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
            "conditioner.embedders.0.transformer.text_model.encoder.layers.1.mlp.fc1.weight",
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
            "conditioner.embedders.1.model.token_embedding.weight",
            "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight",
            "conditioner.embedders.1.model.text_projection",
            "conditioner.embedders.1.model.logit_scale",
            "model.diffusion_model.label_emb.0.0.weight",
        ]);
        let (l, g) = sdxl_text_encoders_from_sgm(&keys, 2, 2).unwrap();
        assert!(l.unmapped.is_empty() && g.unmapped.is_empty());
        let targets = |m: &LdmMapping| m.mapped.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>();
        assert_eq!(
            targets(&l),
            [
                "text_model.embeddings.token_embedding.weight",
                "text_model.encoder.layers.1.mlp.fc1.weight"
            ]
        );
        let g_rows: Vec<Row> = g.mapped.iter().map(|(t, s)| row(t, s)).collect();
        assert_eq!(
            g_rows.len(),
            5,
            "token table, q/k/v chunks, projection: {g_rows:?}"
        );
        assert!(
            g_rows[1..4].iter().all(|r| r.2.is_some()),
            "in_proj split in three"
        );
        let (target, source) = g.mapped.last().unwrap();
        assert_eq!(target, "text_projection.weight");
        assert!(
            source.transpose,
            "open_clip's x @ P is a transposed Linear weight"
        );
        // A file without the second encoder is refused with a message.
        let only_l = &keys[..3];
        assert!(
            sdxl_text_encoders_from_sgm(only_l, 2, 2)
                .unwrap_err()
                .contains("embedders.1")
        );
    }

    #[test]
    fn burn_paths_with_and_without_prefix() {
        let base = [
            "text_model.embeddings.token_embedding.weight",
            "text_model.final_layer_norm.bias",
        ];
        for key in base {
            assert_eq!(to_burn_path(key).unwrap(), key);
            assert_eq!(to_burn_path(&key["text_model.".len()..]).unwrap(), key);
        }
        for none in [
            "text_model.embeddings.position_ids",
            "embeddings.position_ids",
            "text_projection.weight",
            "logit_scale",
        ] {
            assert_eq!(to_burn_path(none), None, "{none}");
        }
        assert_eq!(
            to_burn_path("vision_model.x.weight").unwrap(),
            "vision_model.x.weight"
        );
    }

    #[test]
    fn every_expected_key_is_its_own_burn_path() {
        for cfg in ["sd15", "sd21"] {
            for (target, ..) in expected(cfg) {
                assert_eq!(to_burn_path(&target).unwrap(), target);
                let flat = target.strip_prefix("text_model.").unwrap();
                assert_eq!(to_burn_path(flat).unwrap(), target);
            }
        }
    }
}
