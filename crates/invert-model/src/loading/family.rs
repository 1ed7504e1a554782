//! Which Stable Diffusion a single-file checkpoint is (SD 1.x, 2.x base or 768-v, SDXL), and the
//! published configs of each (`configs/` at the repo root, compiled in so the binary needs no
//! data files).
//!
//! Detection follows what diffusers and ComfyUI do (configs/README.md, "Telling the models
//! apart"): SDXL has a second text encoder (`conditioner.embedders.1`) and the U-Net's
//! `label_emb`; the text tower's layout and the cross-attention width separate SD1 from SD2; SD2
//! base and SD2 768-v have identical keys and shapes, so metadata is used when present, then
//! ComfyUI's weight statistic.

use std::path::{Path, PathBuf};

use crate::clip::keys::{LdmTextLayout, SGM_CLIP_G_PREFIX, ldm_text_encoder_layout};
use crate::weights::TensorReader;

/// SDXL's U-Net `add_embedding` in a single-file checkpoint (diffusers' `infer_diffusers_model_type`
/// tests for this and the second text encoder).
const SDXL_LABEL_EMB: &str = "model.diffusion_model.label_emb.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: OpenAI CLIP ViT-L/14 text tower, cross-attention width 768.
    Sd1,
    /// SD 2.x 512-px base: OpenCLIP ViT-H/14, width 1024, epsilon prediction.
    Sd2Base,
    /// SD 2.x 768-px: as base, but v-prediction and upcast attention.
    Sd2V,
    /// SDXL: two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG, concatenated to 2048), a
    /// U-Net with `text_time` added conditions, 1024 px.
    Sdxl,
    /// Something else, described by the user's configs.
    Custom,
}

impl Family {
    pub fn describe(self) -> &'static str {
        match self {
            Family::Sd1 => "Stable Diffusion 1.x",
            Family::Sd2Base => "Stable Diffusion 2.x base (512 px, epsilon)",
            Family::Sd2V => "Stable Diffusion 2.x 768-v (v-prediction)",
            Family::Sdxl => "Stable Diffusion XL",
            Family::Custom => "the architecture given by its configs",
        }
    }

    /// The folder under `configs/` holding this family's published configs.
    pub fn config_name(self) -> Option<&'static str> {
        match self {
            Family::Sd1 => Some("sd15"),
            Family::Sd2Base => Some("sd21-base"),
            Family::Sd2V => Some("sd21"),
            Family::Sdxl => Some("sdxl-base"),
            Family::Custom => None,
        }
    }

    /// The text width a family's embeddings have (768 for SD1, 1024 for SD2).
    pub fn from_text_width(width: usize) -> Option<Family> {
        match width {
            768 => Some(Family::Sd1),
            1024 => Some(Family::Sd2Base),
            _ => None,
        }
    }
}

macro_rules! bundled {
    ($name:literal) => {
        [
            (
                "text_encoder",
                include_str!(concat!(
                    "../../../../configs/",
                    $name,
                    "/text_encoder/config.json"
                )),
            ),
            (
                "unet",
                include_str!(concat!("../../../../configs/", $name, "/unet/config.json")),
            ),
            (
                "vae",
                include_str!(concat!("../../../../configs/", $name, "/vae/config.json")),
            ),
            (
                "scheduler",
                include_str!(concat!(
                    "../../../../configs/",
                    $name,
                    "/scheduler/scheduler_config.json"
                )),
            ),
        ]
    };
}

/// SDXL 1.0 base's `text_encoder_2/config.json` (the other SDXL files come with `bundled!`).
const SDXL_TEXT_ENCODER_2: &str =
    include_str!("../../../../configs/sdxl-base/text_encoder_2/config.json");

/// The published config of `component` (`text_encoder`, `text_encoder_2`, `unet`, `vae`,
/// `scheduler`).
pub fn bundled_config(family: Family, component: &str) -> Option<serde_json::Value> {
    let files = match family {
        Family::Sd1 => bundled!("sd15"),
        Family::Sd2Base => bundled!("sd21-base"),
        Family::Sd2V => bundled!("sd21"),
        Family::Sdxl if component == "text_encoder_2" => {
            return Some(serde_json::from_str(SDXL_TEXT_ENCODER_2).expect("valid JSON"));
        }
        Family::Sdxl => bundled!("sdxl-base"),
        Family::Custom => return None,
    };
    let text = files.iter().find(|(c, _)| *c == component)?.1;
    Some(serde_json::from_str(text).expect("bundled configs are valid JSON"))
}

/// Where a component's config file sits inside a `--config` folder.
pub fn config_path(dir: &Path, component: &str) -> PathBuf {
    let file = if component == "scheduler" {
        "scheduler_config.json"
    } else {
        "config.json"
    };
    dir.join(component).join(file)
}

/// The family of an original checkpoint and the rule that decided it.
pub fn detect(
    reader: &dyn TensorReader,
    keys: &[String],
    metadata: Option<&std::collections::HashMap<String, String>>,
    global_step: Option<i64>,
) -> Option<(Family, String)> {
    if keys
        .iter()
        .any(|k| k.starts_with(SGM_CLIP_G_PREFIX) || k.starts_with(SDXL_LABEL_EMB))
    {
        return Some((
            Family::Sdxl,
            "SDXL's second text encoder (conditioner.embedders.1) or added-condition \
             embedding (label_emb)"
                .into(),
        ));
    }
    let cross_width = [1, 2, 4].iter().find_map(|i| {
        let key = format!(
            "model.diffusion_model.input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight"
        );
        reader.meta(&key).and_then(|m| m.shape.get(1).copied())
    });
    let layout = ldm_text_encoder_layout(keys);
    let sd2 = match (layout, cross_width) {
        (Some(LdmTextLayout::OpenClip { .. }), _) | (None, Some(1024)) => true,
        (Some(LdmTextLayout::OpenAi), _) | (None, Some(768)) => false,
        _ => return None,
    };
    if !sd2 {
        return Some((
            Family::Sd1,
            "OpenAI CLIP text tower (cond_stage_model.transformer)".into(),
        ));
    }
    if let Some(pred) = metadata.and_then(|m| m.get("modelspec.prediction_type")) {
        let fam = if pred.starts_with('v') {
            Family::Sd2V
        } else {
            Family::Sd2Base
        };
        return Some((fam, format!("metadata modelspec.prediction_type = {pred}")));
    }
    if keys.iter().any(|k| k == "v_pred") {
        return Some((Family::Sd2V, "the checkpoint's `v_pred` marker".into()));
    }
    if global_step == Some(875000) {
        return Some((
            Family::Sd2Base,
            "global_step 875000 (the SD 2.x base release)".into(),
        ));
    }
    // ComfyUI's test (model_detection.py): v-prediction models have a wider spread here.
    let probe = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias";
    if let Ok(values) = reader.read_f32(probe) {
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0).max(1.0);
        let fam = if var.sqrt() > 0.09 {
            Family::Sd2V
        } else {
            Family::Sd2Base
        };
        return Some((
            fam,
            format!(
                "std of {probe} = {:.3} (ComfyUI's rule: > 0.09 means v-prediction)",
                var.sqrt()
            ),
        ));
    }
    Some((
        Family::Sd2V,
        "no marker found; diffusers assumes 768-v for SD 2.x files".into(),
    ))
}
