//! `CLIPConfig` as transformers writes a `CLIPModel`'s config.json (`text_config`, `vision_config`,
//! `projection_dim`, `logit_scale_init_value`), and the same read off the tensor shapes of an
//! OpenAI / open_clip checkpoint, which comes without a config.

use burn::prelude::*;

use super::config::CLIPTextConfig;
use super::vision_config::CLIPVisionConfig;
use crate::weights::TensorReader;

/// The `eos_token_id` of configs written before transformers PR #24773 (OpenAI's, among them):
/// with it, transformers pools the text at `argmax(input_ids)` (see [`super::pooled_positions`]).
pub const LEGACY_EOS_TOKEN_ID: i64 = 2;

#[derive(Config, Debug, PartialEq)]
pub struct CLIPConfig {
    pub text_config: CLIPTextConfig,
    pub vision_config: CLIPVisionConfig,
    #[config(default = 512)]
    pub projection_dim: usize,
    #[config(default = 2.6592)]
    pub logit_scale_init_value: f64,
    /// `text_config.eos_token_id`: where the text is pooled.
    #[config(default = 49407)]
    pub text_eos_token_id: i64,
}

/// transformers' `CLIPTextConfig` defaults (openai/clip-vit-base-patch32's text tower), which
/// differ from SD's text encoder defaults in [`CLIPTextConfig::new`].
pub fn transformers_text_defaults() -> CLIPTextConfig {
    CLIPTextConfig::new()
        .with_hidden_size(512)
        .with_intermediate_size(2048)
        .with_num_attention_heads(8)
}

/// `config[name]` with `config[name + "_dict"]` merged over it (transformers' backward
/// compatibility for configs such as openai/clip-vit-large-patch14's).
fn sub_config(json: &serde_json::Value, name: &str) -> serde_json::Value {
    let mut merged = json
        .get(name)
        .filter(|v| v.is_object())
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}));
    if let (Some(target), Some(dict)) = (
        merged.as_object_mut(),
        json.get(format!("{name}_dict")).and_then(|v| v.as_object()),
    ) {
        for (k, v) in dict {
            target.insert(k.clone(), v.clone());
        }
    }
    merged
}

impl CLIPConfig {
    /// Parses a transformers `CLIPModel` config.json. Errors name what is wrong.
    pub fn from_json(json: &serde_json::Value) -> Result<Self, String> {
        let text_json = sub_config(json, "text_config");
        let vision_json = sub_config(json, "vision_config");
        let text: CLIPTextConfig = merge(&text_json, transformers_text_defaults())?;
        let vision: CLIPVisionConfig = merge(&vision_json, CLIPVisionConfig::new())?;
        let mut config = CLIPConfig::new(text, vision);
        if let Some(p) = json.get("projection_dim").and_then(|v| v.as_u64()) {
            config.projection_dim = p as usize;
        }
        if let Some(s) = json.get("logit_scale_init_value").and_then(|v| v.as_f64()) {
            config.logit_scale_init_value = s;
        }
        // an int, or a list of which transformers compares against the first
        match text_json.get("eos_token_id") {
            Some(v) if v.is_i64() => config.text_eos_token_id = v.as_i64().unwrap_or_default(),
            Some(serde_json::Value::Array(a)) if a.first().is_some_and(|v| v.is_i64()) => {
                config.text_eos_token_id = a[0].as_i64().unwrap_or_default()
            }
            _ => {}
        }
        config.check()?;
        Ok(config)
    }

    /// Why the model cannot be built from this config, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let t = &self.text_config;
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "text hidden_size {} cannot be split into {} heads",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if !matches!(t.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(format!(
                "text hidden_act `{}` is not supported (quick_gelu, gelu)",
                t.hidden_act
            ));
        }
        if let Some(why) = self.vision_config.unsupported() {
            return Err(why);
        }
        Ok(())
    }

    /// The architecture of an OpenAI / open_clip checkpoint, read from its tensor shapes:
    /// widths, depths, patch and image size, vocabulary and context length. What shapes do not
    /// tell is OpenAI's convention: heads of width `head_width` (64 in every OpenAI and open_clip
    /// ViT), `hidden_act` (`quick_gelu` for OpenAI's weights; most LAION open_clip models use
    /// `gelu`), and pooling at `argmax(ids)` as OpenAI's `encode_text` does.
    pub fn from_open_clip(
        reader: &dyn TensorReader,
        head_width: usize,
        hidden_act: &str,
    ) -> Result<Self, String> {
        let shape = |name: &str| -> Result<Vec<usize>, String> {
            reader.meta(name).map(|m| m.shape.clone()).ok_or(format!(
                "no tensor `{name}`, which an OpenAI / open_clip CLIP has"
            ))
        };
        let dims2 = |name: &str| -> Result<(usize, usize), String> {
            match shape(name)?.as_slice() {
                [a, b] => Ok((*a, *b)),
                s => Err(format!("`{name}` has shape {s:?}, expected a matrix")),
            }
        };
        let depth = |prefix: &str| {
            reader
                .names()
                .iter()
                .filter_map(|k| {
                    k.strip_prefix(prefix)?
                        .split('.')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .map(|n| n + 1)
                .max()
                .unwrap_or(0)
        };
        let heads = |width: usize| (width / head_width.max(1)).max(1);
        let (vocab, width) = dims2("token_embedding.weight")?;
        let (context, _) = dims2("positional_embedding")?;
        let (text_mlp, _) = dims2("transformer.resblocks.0.mlp.c_fc.weight")?;
        let (_, projection_dim) = dims2("text_projection")?;
        let conv = shape("visual.conv1.weight")?;
        let [v_width, channels, patch, _] = conv[..] else {
            return Err(format!(
                "`visual.conv1.weight` has shape {conv:?}, expected 4 dims"
            ));
        };
        let (positions, _) = dims2("visual.positional_embedding")?;
        let grid = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
        if grid * grid + 1 != positions {
            return Err(format!(
                "`visual.positional_embedding` has {positions} rows, not a square grid plus the \
                 class token"
            ));
        }
        let (v_mlp, _) = dims2("visual.transformer.resblocks.0.mlp.c_fc.weight")?;
        let text = transformers_text_defaults()
            .with_vocab_size(vocab)
            .with_hidden_size(width)
            .with_intermediate_size(text_mlp)
            .with_num_hidden_layers(depth("transformer.resblocks."))
            .with_num_attention_heads(heads(width))
            .with_max_position_embeddings(context)
            .with_hidden_act(hidden_act.to_string())
            .with_projection_dim(projection_dim);
        let vision = CLIPVisionConfig::new()
            .with_hidden_size(v_width)
            .with_intermediate_size(v_mlp)
            .with_num_hidden_layers(depth("visual.transformer.resblocks."))
            .with_num_attention_heads(heads(v_width))
            .with_num_channels(channels)
            .with_image_size(grid * patch)
            .with_patch_size(patch)
            .with_hidden_act(hidden_act.to_string())
            .with_projection_dim(projection_dim);
        let config = CLIPConfig::new(text, vision)
            .with_projection_dim(projection_dim)
            .with_text_eos_token_id(LEGACY_EOS_TOKEN_ID);
        config.check()?;
        Ok(config)
    }
}

/// A config from JSON, missing fields taken from `defaults`, unknown ones ignored.
fn merge<C: burn::config::Config>(json: &serde_json::Value, defaults: C) -> Result<C, String> {
    let mut merged = serde_json::to_value(&defaults).map_err(|e| e.to_string())?;
    let target = merged
        .as_object_mut()
        .ok_or("configs serialise to objects")?;
    for (k, v) in json.as_object().into_iter().flatten() {
        if target.contains_key(k) && !v.is_null() {
            target.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(merged).map_err(|e| format!("not a config this model understands: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_large_patch14_layout() {
        // the fields of openai/clip-vit-large-patch14's config.json that matter, with its
        // `*_config_dict` leftovers overriding
        let json = serde_json::json!({
            "projection_dim": 768,
            "logit_scale_init_value": 2.6592,
            "text_config": {"eos_token_id": 2, "hidden_size": 512, "num_attention_heads": 12,
                            "intermediate_size": 3072, "num_hidden_layers": 12, "vocab_size": 49408},
            "text_config_dict": {"hidden_size": 768, "projection_dim": 768},
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                              "num_hidden_layers": 24, "patch_size": 14, "image_size": 224,
                              "dropout": 0.0, "model_type": "clip_vision_model"}
        });
        let c = CLIPConfig::from_json(&json).unwrap();
        assert_eq!(c.text_config.hidden_size, 768);
        assert_eq!(c.text_config.num_attention_heads, 12);
        assert_eq!(c.text_eos_token_id, LEGACY_EOS_TOKEN_ID);
        assert_eq!(c.vision_config.num_positions(), 257);
        assert_eq!((c.projection_dim, c.vision_config.hidden_size), (768, 1024));
        assert_eq!(c.text_config.hidden_act, "quick_gelu");
    }

    #[test]
    fn defaults_are_transformers_base_patch32() {
        let c = CLIPConfig::from_json(&serde_json::json!({})).unwrap();
        assert_eq!(
            (c.text_config.hidden_size, c.text_config.num_attention_heads),
            (512, 8)
        );
        assert_eq!(
            (c.vision_config.hidden_size, c.vision_config.patch_size),
            (768, 32)
        );
        assert_eq!((c.projection_dim, c.text_eos_token_id), (512, 49407));
        let list = serde_json::json!({"text_config": {"eos_token_id": [7, 8]}});
        assert_eq!(CLIPConfig::from_json(&list).unwrap().text_eos_token_id, 7);
        let bad = serde_json::json!({"vision_config": {"num_attention_heads": 7}});
        assert!(CLIPConfig::from_json(&bad).unwrap_err().contains("7 heads"));
        let bad = serde_json::json!({"text_config": {"hidden_act": "gelu_new"}});
        assert!(
            CLIPConfig::from_json(&bad)
                .unwrap_err()
                .contains("gelu_new")
        );
    }
}
