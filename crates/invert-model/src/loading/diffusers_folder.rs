//! diffusers model folders: `model_index.json` with one folder per component, each holding a
//! `config.json` and weights as `*.safetensors` (optionally a `.fp16`-style variant, optionally
//! sharded with a `*.safetensors.index.json`) or a torch `*.bin`. Also Hugging Face cache
//! folders (`models--org--name/` with `refs/` and `snapshots/<hash>/`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use burn::tensor::DType;

use super::apply::{Assignment, LoadReport, apply};
use super::{
    Family, LoadError, LoadOptions, PipelineConfig, StableDiffusion, parse_config, parse_configs,
    read_json,
};
use crate::clip::{CLIPTextConfig, CLIPTextModelWithProjection};
use crate::keymap::KeySource;
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::weights::TensorReader;
use crate::weights::safetensors_file::{SafetensorsFile, TensorSet};
use crate::weights::torch_zip::TorchFile;

/// The folder that holds the model: `path` itself, or the snapshot a Hugging Face cache
/// folder's `refs/main` points at (else its only or newest snapshot).
pub fn resolve_model_dir(path: &Path) -> PathBuf {
    let snapshots = path.join("snapshots");
    if !snapshots.is_dir() || path.join("model_index.json").exists() {
        return path.to_path_buf();
    }
    if let Ok(hash) = std::fs::read_to_string(path.join("refs").join("main")) {
        let dir = snapshots.join(hash.trim());
        if dir.is_dir() {
            return dir;
        }
    }
    let newest = std::fs::read_dir(&snapshots).ok().and_then(|entries| {
        entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    });
    newest.unwrap_or_else(|| path.to_path_buf())
}

/// The weights of one component folder. `stem` is `diffusion_pytorch_model` (U-Net, VAE) or
/// `model` (text encoder). A requested variant is preferred; a folder holding only a variant
/// (e.g. `*.fp16.safetensors`) is used as it is.
pub fn open_component_weights(
    dir: &Path,
    stem: &str,
    variant: Option<&str>,
) -> Result<Arc<dyn TensorReader>, LoadError> {
    let mut candidates: Vec<String> = Vec::new();
    if let Some(v) = variant {
        candidates.push(format!("{stem}.{v}.safetensors"));
        candidates.push(format!("{stem}.safetensors.index.{v}.json"));
    }
    candidates.push(format!("{stem}.safetensors"));
    candidates.push(format!("{stem}.safetensors.index.json"));
    // Any other variant, e.g. only fp16 files were downloaded.
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut others: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n.starts_with(&format!("{stem}."))
                    && (n.ends_with(".safetensors") || n.ends_with(".json"))
                    && n.contains("safetensors")
            })
            .collect();
        others.sort();
        candidates.extend(others);
    }
    let torch_stem = if stem == "model" {
        "pytorch_model"
    } else {
        stem
    };
    if let Some(v) = variant {
        candidates.push(format!("{torch_stem}.{v}.bin"));
    }
    candidates.push(format!("{torch_stem}.bin"));

    for name in &candidates {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let reader: Arc<dyn TensorReader> = if name.ends_with(".json") {
            Arc::new(TensorSet::open_index(&path)?)
        } else if name.ends_with(".bin") {
            Arc::new(TorchFile::open(&path)?)
        } else {
            Arc::new(SafetensorsFile::open(&path)?)
        };
        return Ok(reader);
    }
    Err(LoadError::MissingComponent {
        path: dir.to_path_buf(),
        component: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        detail: format!("no weights file: looked for {}", candidates.join(", ")),
    })
}

/// Assigns every tensor of a diffusers-layout file to the burn path `to_burn` gives it; tensors
/// it maps to `None` (buffers such as `position_ids`) are skipped.
pub fn assignments(
    reader: &dyn TensorReader,
    to_burn: fn(&str) -> Option<String>,
) -> Vec<Assignment> {
    reader
        .names()
        .into_iter()
        .filter_map(|name| {
            to_burn(&name).map(|path| Assignment {
                path,
                source: KeySource::plain(name),
            })
        })
        .collect()
}

/// Builds `module` and loads it, returning it with its report.
pub fn load_module<M: Module + ModuleSnapshot>(
    mut module: M,
    reader: Arc<dyn TensorReader>,
    assignments: Vec<Assignment>,
    dtype: DType,
    family: &str,
) -> Result<(M, LoadReport), LoadError> {
    let report = apply(&mut module, reader, assignments, dtype, family)?;
    Ok((module, report))
}

/// A `CLIPTextModelWithProjection` component folder (SDXL's `text_encoder_2`: `config.json` and
/// `model[.VARIANT].safetensors`), in `options.dtype`.
pub fn load_text_encoder_with_projection(
    dir: &Path,
    options: &LoadOptions,
    device: &Device,
) -> Result<(CLIPTextModelWithProjection, CLIPTextConfig, LoadReport), LoadError> {
    let config_path = dir.join("config.json");
    let cfg: CLIPTextConfig = parse_config(
        &config_path,
        &read_json(&config_path)?,
        CLIPTextConfig::new(),
    )?;
    let reader = open_component_weights(dir, "model", options.variant.as_deref())?;
    let a = assignments(
        reader.as_ref(),
        crate::clip::keys::to_burn_path_with_projection,
    );
    let desc = format!("{} (CLIPTextModelWithProjection)", dir.display());
    let (model, report) = load_module(
        cfg.init_with_projection(device),
        reader,
        a,
        options.dtype,
        &desc,
    )?;
    Ok((model, cfg, report))
}

/// A `UNet2DConditionModel` component folder (`config.json` and
/// `diffusion_pytorch_model[.VARIANT].safetensors`), in `options.dtype`; errors on configs this
/// implementation cannot build.
pub fn load_unet(
    dir: &Path,
    options: &LoadOptions,
    device: &Device,
) -> Result<(UNet2DConditionModel, UNet2DConditionConfig, LoadReport), LoadError> {
    let config_path = dir.join("config.json");
    let cfg: UNet2DConditionConfig = parse_config(
        &config_path,
        &read_json(&config_path)?,
        UNet2DConditionConfig::new(vec![], vec![], vec![]),
    )?;
    if let Some(reason) = cfg.unsupported() {
        return Err(LoadError::Config {
            path: config_path,
            reason,
        });
    }
    let reader =
        open_component_weights(dir, "diffusion_pytorch_model", options.variant.as_deref())?;
    let a = assignments(reader.as_ref(), crate::unet::keys::to_burn_path);
    let desc = format!("{} (UNet2DConditionModel)", dir.display());
    let (model, report) = load_module(cfg.init(device), reader, a, options.dtype, &desc)?;
    Ok((model, cfg, report))
}

/// Loads a diffusers-layout component when a reader is given; else returns it unloaded.
fn load_optional<M: Module + ModuleSnapshot>(
    module: M,
    reader: Option<Arc<dyn TensorReader>>,
    to_burn: fn(&str) -> Option<String>,
    dtype: DType,
    family: &str,
) -> Result<(M, LoadReport), LoadError> {
    match reader {
        Some(reader) => {
            let a = assignments(reader.as_ref(), to_burn);
            load_module(module, reader, a, dtype, family)
        }
        None => Ok((module, LoadReport::default())),
    }
}

/// The family a diffusers folder's configs describe.
pub fn family_of(text_width: usize, scheduler: &serde_json::Value) -> Family {
    let v = scheduler.get("prediction_type").and_then(|p| p.as_str()) == Some("v_prediction");
    match (Family::from_text_width(text_width), v) {
        (Some(Family::Sd2Base), true) => Family::Sd2V,
        (Some(f), _) => f,
        (None, _) => Family::Custom,
    }
}

fn component_dir(root: &Path, name: &str) -> Result<PathBuf, LoadError> {
    let dir = root.join(name);
    if dir.join("config.json").is_file() {
        Ok(dir)
    } else {
        Err(LoadError::MissingComponent {
            path: root.to_path_buf(),
            component: name.into(),
            detail: format!("{} is missing", dir.join("config.json").display()),
        })
    }
}

pub fn load(
    path: &Path,
    options: &LoadOptions,
    device: &Device,
) -> Result<StableDiffusion, LoadError> {
    let root = resolve_model_dir(path);
    let te_dir = component_dir(&root, "text_encoder")?;
    let unet_dir = component_dir(&root, "unet")?;
    let vae_dir = component_dir(&root, "vae")?;
    let (te_json, unet_json, vae_json) = (
        read_json(&te_dir.join("config.json"))?,
        read_json(&unet_dir.join("config.json"))?,
        read_json(&vae_dir.join("config.json"))?,
    );
    let (te_cfg, unet_cfg, vae_cfg) = parse_configs(
        (&te_dir.join("config.json"), &te_json),
        (&unet_dir.join("config.json"), &unet_json),
        (&vae_dir.join("config.json"), &vae_json),
    )?;
    let scheduler_path = root.join("scheduler").join("scheduler_config.json");
    let scheduler = if scheduler_path.is_file() {
        read_json(&scheduler_path)?
    } else {
        serde_json::Value::Null
    };
    let family = family_of(te_cfg.hidden_size, &scheduler);
    let desc = format!("a diffusers folder ({})", family.describe());
    let variant = options.variant.as_deref();
    let dtype = options.dtype;

    let parts = options.parts;
    let load_part = |wanted: bool,
                     dir: &Path,
                     stem: &str|
     -> Result<Option<Arc<dyn TensorReader>>, LoadError> {
        if wanted {
            open_component_weights(dir, stem, variant).map(Some)
        } else {
            Ok(None)
        }
    };
    let reader = load_part(parts.text_encoder, &te_dir, "model")?;
    let (text_encoder, te_report) = load_optional(
        te_cfg.init(device),
        reader,
        crate::clip::keys::to_burn_path,
        dtype,
        &desc,
    )?;
    let reader = load_part(parts.unet, &unet_dir, "diffusion_pytorch_model")?;
    let (unet, unet_report) = load_optional(
        unet_cfg.init(device),
        reader,
        crate::unet::keys::to_burn_path,
        dtype,
        &desc,
    )?;
    let reader = load_part(parts.vae, &vae_dir, "diffusion_pytorch_model")?;
    let (vae, vae_report) = load_optional(
        vae_cfg.init(device),
        reader,
        crate::vae::keys::to_burn_path,
        dtype,
        &desc,
    )?;

    let tokenizer_dir = Some(root.join("tokenizer")).filter(|d| d.is_dir());
    Ok(StableDiffusion {
        text_encoder,
        unet,
        vae,
        config: PipelineConfig {
            text_encoder: te_cfg,
            unet: unet_cfg,
            vae: vae_cfg,
            scheduler,
            tokenizer_dir,
            family,
        },
        source: root,
        reports: vec![
            ("text_encoder".into(), te_report),
            ("unet".into(), unet_report),
            ("vae".into(), vae_report),
        ],
    })
}
