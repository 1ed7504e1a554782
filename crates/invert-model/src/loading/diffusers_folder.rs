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
    Family, LoadError, LoadOptions, PipelineConfig, StableDiffusion, parse_configs, read_json,
};
use crate::keymap::KeySource;
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
pub fn family_of(text_width: usize, scheduler: &serde_json::Value, sdxl: bool) -> Family {
    if sdxl {
        return Family::Sdxl;
    }
    let v = scheduler.get("prediction_type").and_then(|p| p.as_str()) == Some("v_prediction");
    match (Family::from_text_width(text_width), v) {
        (Some(Family::Sd2Base), true) => Family::Sd2V,
        (Some(f), _) => f,
        (None, _) => Family::Custom,
    }
}

/// SDXL's `force_zeros_for_empty_prompt` from `model_index.json` (diffusers' default, true,
/// when the file or the field is missing).
pub(crate) fn force_zeros_for_empty_prompt(root: &Path) -> Result<bool, LoadError> {
    let index = root.join("model_index.json");
    if !index.is_file() {
        return Ok(true);
    }
    Ok(read_json(&index)?
        .get("force_zeros_for_empty_prompt")
        .and_then(|v| v.as_bool())
        .unwrap_or(true))
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

/// A `tokenizer*/` folder of the model, when it has one.
pub(crate) fn folder_if_present(root: &Path, name: &str) -> Option<PathBuf> {
    Some(root.join(name)).filter(|d| d.is_dir())
}

pub fn load(
    path: &Path,
    options: &LoadOptions,
    device: &Device,
) -> Result<StableDiffusion, LoadError> {
    let root = resolve_model_dir(path);
    let te_dir = component_dir(&root, "text_encoder")?;
    let te2_dir = Some(root.join("text_encoder_2")).filter(|d| d.join("config.json").is_file());
    let unet_dir = component_dir(&root, "unet")?;
    let vae_dir = component_dir(&root, "vae")?;
    let config = |dir: &Path| {
        let p = dir.join("config.json");
        read_json(&p).map(|json| (p, json))
    };
    let (te_json, unet_json, vae_json) = (config(&te_dir)?, config(&unet_dir)?, config(&vae_dir)?);
    let te2_json = te2_dir.as_deref().map(config).transpose()?;
    let cfg = parse_configs(
        (&te_json.0, &te_json.1),
        te2_json.as_ref().map(|(p, j)| (p.as_path(), j)),
        (&unet_json.0, &unet_json.1),
        (&vae_json.0, &vae_json.1),
    )?;
    let scheduler_path = root.join("scheduler").join("scheduler_config.json");
    let scheduler = if scheduler_path.is_file() {
        read_json(&scheduler_path)?
    } else {
        serde_json::Value::Null
    };
    let family = family_of(
        cfg.text_encoder.hidden_size,
        &scheduler,
        cfg.text_encoder_2.is_some(),
    );
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
        cfg.text_encoder.init(device),
        reader,
        crate::clip::keys::to_burn_path,
        dtype,
        &desc,
    )?;
    let mut reports = vec![("text_encoder".to_string(), te_report)];
    let text_encoder_2 = match (&te2_dir, &cfg.text_encoder_2) {
        (Some(dir), Some(te2_cfg)) => {
            let reader = load_part(parts.text_encoder, dir, "model")?;
            let (model, report) = load_optional(
                te2_cfg.init_with_projection(device),
                reader,
                crate::clip::keys::to_burn_path_with_projection,
                dtype,
                &desc,
            )?;
            reports.push(("text_encoder_2".into(), report));
            Some(model)
        }
        _ => None,
    };
    let reader = load_part(parts.unet, &unet_dir, "diffusion_pytorch_model")?;
    let (unet, unet_report) = load_optional(
        cfg.unet.init(device),
        reader,
        crate::unet::keys::to_burn_path,
        dtype,
        &desc,
    )?;
    reports.push(("unet".into(), unet_report));
    let (vae, vae_cfg, vae_report) = match &options.vae {
        Some(vae_path) if parts.vae => {
            super::vae_file::load_vae(vae_path, options, family, &cfg.vae, device)?
        }
        _ => {
            let reader = load_part(parts.vae, &vae_dir, "diffusion_pytorch_model")?;
            let (vae, report) = load_optional(
                cfg.vae.init(device),
                reader,
                crate::vae::keys::to_burn_path,
                super::vae_dtype(dtype, &cfg.vae, family),
                &desc,
            )?;
            (vae, cfg.vae.clone(), report)
        }
    };
    reports.push(("vae".into(), vae_report));

    Ok(StableDiffusion {
        text_encoder,
        text_encoder_2,
        unet,
        vae,
        config: PipelineConfig {
            text_encoder: cfg.text_encoder,
            text_encoder_2: cfg.text_encoder_2,
            unet: cfg.unet,
            vae: vae_cfg,
            scheduler,
            tokenizer_dir: folder_if_present(&root, "tokenizer"),
            tokenizer_2_dir: folder_if_present(&root, "tokenizer_2"),
            force_zeros_for_empty_prompt: force_zeros_for_empty_prompt(&root)?,
            family,
        },
        source: root,
        reports,
    })
}
