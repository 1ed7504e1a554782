//! Checkpoint keys of the whole CLIP model (`CLIPModel`, and its vision tower `CLIPVisionModel`):
//! which file tensor fills each burn parameter, for the two layouts in use.
//!
//! - transformers: `text_model.*` (the text tower's names, see [`super::keys`]), `vision_model.
//!   {embeddings.{class_embedding, patch_embedding.weight, position_embedding.weight},
//!   pre_layrnorm, encoder.layers.N.*, post_layernorm}`, `visual_projection.weight`,
//!   `text_projection.weight`, `logit_scale`. transformers 5 writes a lone `CLIPVisionModel`
//!   without the `vision_model.` prefix; older files carry `embeddings.position_ids` buffers.
//! - OpenAI CLIP / open_clip: `visual.{conv1.weight, class_embedding, positional_embedding, ln_pre,
//!   transformer.resblocks.N.*, ln_post, proj}`, `token_embedding.weight`, `positional_embedding`,
//!   `transformer.resblocks.N.*`, `ln_final`, `text_projection`, `logit_scale`. Resblocks use
//!   `nn.MultiheadAttention`'s fused `in_proj_{weight,bias}` (q; k; v stacked on dim 0), split here
//!   as for SD 2's text encoder; `visual.proj` and `text_projection` are used as `x @ P`, so they
//!   are transposed into `Linear` weights (transformers' `convert_clip_original_pytorch_to_hf.py`).
//!
//! The burn paths of a [`super::CLIPModel`] are the transformers keys, except that `logit_scale`
//! (a 0-d tensor) is read into a plain field by the loader.

use super::keys::{classify, open_clip};
use crate::keymap::{KeySource, LdmMapping};

/// The target name of the 0-d `logit_scale` tensor.
pub const LOGIT_SCALE: &str = "logit_scale";

/// The naming of a CLIP checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipLayout {
    /// transformers' `CLIPModel` / `CLIPVisionModel` names.
    Transformers,
    /// OpenAI's original CLIP and open_clip's names.
    OpenClip,
}

/// The layout of a checkpoint, from its key names.
pub fn detect_layout(keys: &[String]) -> Option<ClipLayout> {
    let open_clip = keys.iter().any(|k| {
        k.starts_with("visual.")
            || k == "token_embedding.weight"
            || k.starts_with("transformer.resblocks.")
    });
    if open_clip {
        return Some(ClipLayout::OpenClip);
    }
    let transformers = keys.iter().any(|k| {
        k.starts_with("vision_model.")
            || k.starts_with("text_model.")
            || k == "embeddings.patch_embedding.weight"
    });
    transformers.then_some(ClipLayout::Transformers)
}

/// Layer counts of the two towers (keys of deeper layers are dropped, as in [`super::keys`]).
#[derive(Debug, Clone, Copy)]
pub struct Depths {
    pub text: usize,
    pub vision: usize,
}

/// Maps every key of a CLIP checkpoint to the transformers name (= burn path) it fills.
/// `mapped` also holds [`LOGIT_SCALE`]. Keys not understood land in `unmapped`; known buffers
/// (`position_ids`, open_clip's `attn_mask`, the OpenAI `.pt` file's `input_resolution`,
/// `context_length`, `vocab_size`) are left out silently.
pub fn clip_model_keys(
    keys: &[String],
    layout: ClipLayout,
    depths: Depths,
) -> Result<LdmMapping, String> {
    let mut out = LdmMapping::default();
    // transformers 5's lone `CLIPVisionModel` has no `vision_model.` prefix
    let bare_vision = keys.iter().any(|k| k == "pre_layrnorm.weight");
    for key in keys {
        let targets = match layout {
            ClipLayout::Transformers => transformers_key(key, depths, bare_vision),
            ClipLayout::OpenClip => open_clip_key(key, depths),
        };
        match targets {
            Some(targets) => out.mapped.extend(targets),
            None => out.unmapped.push(key.clone()),
        }
    }
    out.check_unique()?;
    Ok(out)
}

/// [`clip_model_keys`] restricted to the vision tower (a `CLIPVisionModel`'s parameters): other
/// parameters of a whole CLIP file are left out without a report.
pub fn clip_vision_keys(
    keys: &[String],
    layout: ClipLayout,
    depths: Depths,
) -> Result<LdmMapping, String> {
    let mut all = clip_model_keys(keys, layout, depths)?;
    all.mapped.retain(|(t, _)| t.starts_with("vision_model."));
    Ok(all)
}

type Mapped = Vec<(String, KeySource)>;

fn plain(target: &str, key: &str) -> Option<Mapped> {
    Some(vec![(target.to_string(), KeySource::plain(key))])
}

fn transposed(target: &str, key: &str) -> Option<Mapped> {
    let mut source = KeySource::plain(key);
    source.transpose = true;
    Some(vec![(target.to_string(), source)])
}

fn transformers_key(key: &str, depths: Depths, bare_vision: bool) -> Option<Mapped> {
    if matches!(
        key,
        "logit_scale" | "text_projection.weight" | "visual_projection.weight"
    ) {
        return plain(key, key);
    }
    if let Some(rest) = key.strip_prefix("text_model.") {
        return match classify(rest, depths.text)? {
            true => plain(key, key),
            false => Some(vec![]),
        };
    }
    let rest = match key.strip_prefix("vision_model.") {
        Some(rest) => rest,
        None if bare_vision => key,
        None => return None,
    };
    let target = format!("vision_model.{rest}");
    match rest {
        "embeddings.class_embedding"
        | "embeddings.patch_embedding.weight"
        | "embeddings.position_embedding.weight"
        | "pre_layrnorm.weight"
        | "pre_layrnorm.bias"
        | "post_layernorm.weight"
        | "post_layernorm.bias" => plain(&target, key),
        "embeddings.position_ids" => Some(vec![]),
        _ if rest.starts_with("encoder.") => match classify(rest, depths.vision)? {
            true => plain(&target, key),
            false => Some(vec![]),
        },
        _ => None,
    }
}

fn open_clip_key(key: &str, depths: Depths) -> Option<Mapped> {
    match key {
        "logit_scale" => return plain(LOGIT_SCALE, key),
        "text_projection" => return transposed("text_projection.weight", key),
        "visual.proj" => return transposed("visual_projection.weight", key),
        "input_resolution" | "context_length" | "vocab_size" => return Some(vec![]),
        _ => {}
    }
    let (prefix, rest, layers) = match key.strip_prefix("visual.") {
        Some(rest) => {
            let target = match rest {
                "class_embedding" => "embeddings.class_embedding",
                "positional_embedding" => "embeddings.position_embedding.weight",
                "conv1.weight" => "embeddings.patch_embedding.weight",
                "ln_pre.weight" => "pre_layrnorm.weight",
                "ln_pre.bias" => "pre_layrnorm.bias",
                "ln_post.weight" => "post_layernorm.weight",
                "ln_post.bias" => "post_layernorm.bias",
                _ if rest.starts_with("transformer.resblocks.") => "",
                _ => return None,
            };
            if !target.is_empty() {
                return plain(&format!("vision_model.{target}"), key);
            }
            ("vision_model.", rest, depths.vision)
        }
        None => ("text_model.", key, depths.text),
    };
    let targets = open_clip(rest, layers)?;
    Some(
        targets
            .into_iter()
            .map(|(t, chunk)| {
                let mut source = KeySource::plain(key);
                source.chunk = chunk;
                (format!("{prefix}{t}"), source)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPTHS: Depths = Depths { text: 2, vision: 2 };

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// (target, source key, chunk, transposed)
    type Row = (String, String, Option<(usize, usize)>, bool);

    fn targets(m: &LdmMapping) -> Vec<Row> {
        m.mapped
            .iter()
            .map(|(t, s)| (t.clone(), s.key.clone(), s.chunk, s.transpose))
            .collect()
    }

    #[test]
    fn layouts_are_told_apart() {
        let hf = strings(&["vision_model.pre_layrnorm.weight", "logit_scale"]);
        assert_eq!(detect_layout(&hf), Some(ClipLayout::Transformers));
        let bare = strings(&["embeddings.patch_embedding.weight", "pre_layrnorm.weight"]);
        assert_eq!(detect_layout(&bare), Some(ClipLayout::Transformers));
        let oc = strings(&["visual.conv1.weight", "logit_scale"]);
        assert_eq!(detect_layout(&oc), Some(ClipLayout::OpenClip));
        assert_eq!(detect_layout(&strings(&["unet.conv_in.weight"])), None);
    }

    #[test]
    fn transformers_keys_are_their_own_paths() {
        let keys = strings(&[
            "logit_scale",
            "text_model.embeddings.position_ids",
            "text_model.encoder.layers.1.mlp.fc2.bias",
            "text_model.encoder.layers.2.mlp.fc2.bias",
            "text_projection.weight",
            "vision_model.embeddings.class_embedding",
            "vision_model.embeddings.position_ids",
            "vision_model.encoder.layers.0.self_attn.k_proj.weight",
            "vision_model.post_layernorm.bias",
            "visual_projection.weight",
            "vision_model.head.weight",
        ]);
        let m = clip_model_keys(&keys, ClipLayout::Transformers, DEPTHS).unwrap();
        let got: Vec<&str> = m.mapped.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            got,
            [
                "logit_scale",
                "text_model.encoder.layers.1.mlp.fc2.bias",
                "text_projection.weight",
                "vision_model.embeddings.class_embedding",
                "vision_model.encoder.layers.0.self_attn.k_proj.weight",
                "vision_model.post_layernorm.bias",
                "visual_projection.weight",
            ]
        );
        assert!(
            m.mapped
                .iter()
                .all(|(t, s)| *t == s.key && s.chunk.is_none())
        );
        assert_eq!(m.unmapped, ["vision_model.head.weight"]);
        let v = clip_vision_keys(&keys, ClipLayout::Transformers, DEPTHS).unwrap();
        assert_eq!(v.mapped.len(), 3);
    }

    #[test]
    fn a_bare_vision_model_gets_the_prefix() {
        let keys = strings(&["pre_layrnorm.weight", "encoder.layers.0.layer_norm1.bias"]);
        let m = clip_vision_keys(&keys, ClipLayout::Transformers, DEPTHS).unwrap();
        let got: Vec<(&str, &str)> = m
            .mapped
            .iter()
            .map(|(t, s)| (t.as_str(), s.key.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("vision_model.pre_layrnorm.weight", "pre_layrnorm.weight"),
                (
                    "vision_model.encoder.layers.0.layer_norm1.bias",
                    "encoder.layers.0.layer_norm1.bias"
                ),
            ]
        );
    }

    #[test]
    fn open_clip_names_map_with_splits_and_transposes() {
        let keys = strings(&[
            "visual.conv1.weight",
            "visual.transformer.resblocks.1.attn.in_proj_weight",
            "visual.transformer.resblocks.0.mlp.c_proj.bias",
            "visual.ln_post.weight",
            "visual.proj",
            "transformer.resblocks.0.ln_2.bias",
            "positional_embedding",
            "text_projection",
            "logit_scale",
            "attn_mask",
            "input_resolution",
            "visual.attnpool.k_proj.weight",
        ]);
        let m = clip_model_keys(&keys, ClipLayout::OpenClip, DEPTHS).unwrap();
        let s = |v: &str| v.to_string();
        let q = "visual.transformer.resblocks.1.attn.in_proj_weight";
        assert_eq!(
            targets(&m),
            [
                (
                    s("vision_model.embeddings.patch_embedding.weight"),
                    s("visual.conv1.weight"),
                    None,
                    false
                ),
                (
                    s("vision_model.encoder.layers.1.self_attn.q_proj.weight"),
                    s(q),
                    Some((0, 3)),
                    false
                ),
                (
                    s("vision_model.encoder.layers.1.self_attn.k_proj.weight"),
                    s(q),
                    Some((1, 3)),
                    false
                ),
                (
                    s("vision_model.encoder.layers.1.self_attn.v_proj.weight"),
                    s(q),
                    Some((2, 3)),
                    false
                ),
                (
                    s("vision_model.encoder.layers.0.mlp.fc2.bias"),
                    s("visual.transformer.resblocks.0.mlp.c_proj.bias"),
                    None,
                    false
                ),
                (
                    s("vision_model.post_layernorm.weight"),
                    s("visual.ln_post.weight"),
                    None,
                    false
                ),
                (s("visual_projection.weight"), s("visual.proj"), None, true),
                (
                    s("text_model.encoder.layers.0.layer_norm2.bias"),
                    s("transformer.resblocks.0.ln_2.bias"),
                    None,
                    false
                ),
                (
                    s("text_model.embeddings.position_embedding.weight"),
                    s("positional_embedding"),
                    None,
                    false
                ),
                (
                    s("text_projection.weight"),
                    s("text_projection"),
                    None,
                    true
                ),
                (s("logit_scale"), s("logit_scale"), None, false),
            ]
        );
        assert_eq!(m.unmapped, ["visual.attnpool.k_proj.weight"]);
    }

    #[test]
    fn two_tensors_for_one_parameter_are_an_error() {
        let keys = strings(&["visual.proj", "visual_projection.weight"]);
        // each layout alone is fine; the OpenAI table does not know the transformers name
        let m = clip_model_keys(&keys, ClipLayout::OpenClip, DEPTHS).unwrap();
        assert_eq!(m.unmapped, ["visual_projection.weight"]);
        let keys = strings(&["vision_model.pre_layrnorm.weight", "pre_layrnorm.weight"]);
        let err = clip_model_keys(&keys, ClipLayout::Transformers, DEPTHS).unwrap_err();
        assert!(err.contains("vision_model.pre_layrnorm.weight"), "{err}");
    }
}
