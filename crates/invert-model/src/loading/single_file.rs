//! Single-file original (CompVis/LDM layout) checkpoints: `.safetensors` or torch `.ckpt`
//! (a pickle with `state_dict`), holding the U-Net under `model.diffusion_model.`, the VAE
//! under `first_stage_model.` and the text encoder under `cond_stage_model.` (SD 1.x/2.x) or
//! SDXL's two under `conditioner.embedders.{0,1}.` (Stability's `sgm` layout).
//!
//! The architecture comes from `--config DIR` when given, else from the detected family's
//! published configs. Key translation is in `{clip,unet,vae}/keys.rs`, mirroring diffusers'
//! `loaders/single_file_utils.py`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;

use super::apply::Assignment;
use super::diffusers_folder::{folder_if_present, force_zeros_for_empty_prompt, load_module};
use super::family::{self, Family, bundled_config, config_path};
use super::{LoadError, LoadOptions, PipelineConfig, StableDiffusion, parse_configs, read_json};
use crate::keymap::LdmMapping;
use crate::weights::TensorReader;
use crate::weights::safetensors_file::SafetensorsFile;
use crate::weights::torch_zip::TorchFile;

/// What a file's first bytes say it is.
#[derive(Debug, PartialEq, Eq)]
pub enum FileKind {
    Safetensors,
    /// zip (torch >= 1.6) or legacy pickle.
    Torch,
}

pub fn sniff(path: &Path) -> Result<FileKind, LoadError> {
    let mut head = [0u8; 9];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|source| crate::weights::WeightError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(&[0x80]) {
        return Ok(FileKind::Torch);
    }
    if n == 9 && head[8] == b'{' {
        return Ok(FileKind::Safetensors);
    }
    if n == 0 {
        return Err(LoadError::Layout {
            path: path.to_path_buf(),
            reason: "the file is empty (0 bytes): the download or copy did not finish; get \
                     the checkpoint again"
                .into(),
        });
    }
    Err(LoadError::Layout {
        path: path.to_path_buf(),
        reason: "not a safetensors file or a torch checkpoint (unrecognised first bytes); \
                 pass a .safetensors/.ckpt file or a diffusers folder"
            .into(),
    })
}

/// An original checkpoint opened for reading, with `state_dict.` nesting removed from names.
pub struct Checkpoint {
    pub reader: Arc<dyn TensorReader>,
    /// `state_dict.` for torch files that nest their weights, else empty.
    pub prefix: String,
    /// Tensor names without `prefix`.
    pub keys: Vec<String>,
    pub metadata: Option<std::collections::HashMap<String, String>>,
    pub global_step: Option<i64>,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        match sniff(path)? {
            FileKind::Safetensors => {
                let file = SafetensorsFile::open(path)?;
                let metadata = Some(file.metadata().clone());
                let keys = file.names();
                Ok(Self {
                    reader: Arc::new(file),
                    prefix: String::new(),
                    keys,
                    metadata,
                    global_step: None,
                })
            }
            FileKind::Torch => {
                let file = TorchFile::open(path)?;
                let names = file.names();
                let prefix = if names.iter().any(|n| n.starts_with("state_dict.")) {
                    "state_dict."
                } else {
                    ""
                };
                let keys = names
                    .iter()
                    .filter_map(|n| n.strip_prefix(prefix))
                    .map(String::from)
                    .collect();
                let global_step = file.int_value("global_step");
                Ok(Self {
                    reader: Arc::new(file),
                    prefix: prefix.into(),
                    keys,
                    metadata: None,
                    global_step,
                })
            }
        }
    }

    /// Burn assignments for a mapping's tensors, with unknown keys collected for the report.
    fn assign(
        &self,
        mapping: LdmMapping,
        to_burn: fn(&str) -> Option<String>,
        unexpected: &mut Vec<String>,
    ) -> Vec<Assignment> {
        unexpected.extend(mapping.unmapped);
        mapping
            .mapped
            .into_iter()
            .filter_map(|(diffusers_key, mut source)| {
                source.key = format!("{}{}", self.prefix, source.key);
                to_burn(&diffusers_key).map(|path| Assignment { path, source })
            })
            .collect()
    }
}

/// Loads a component when `wanted`; else returns it unloaded (lazy, no memory, not to be used).
fn load_part<M: burn::module::Module + burn::store::ModuleSnapshot>(
    wanted: bool,
    module: M,
    reader: &Arc<dyn TensorReader>,
    assignments: Vec<Assignment>,
    dtype: burn::tensor::DType,
    family: &str,
) -> Result<(M, super::LoadReport), LoadError> {
    if wanted {
        load_module(module, reader.clone(), assignments, dtype, family)
    } else {
        Ok((module, super::LoadReport::default()))
    }
}

fn layout_err(path: &Path, reason: String) -> LoadError {
    LoadError::Layout {
        path: path.to_path_buf(),
        reason,
    }
}

fn as_ref((p, j): &(PathBuf, serde_json::Value)) -> super::ConfigFile<'_> {
    (p.as_path(), j)
}

/// The configs a single file is loaded with, and where they came from.
struct ConfigSet {
    family: Family,
    why: String,
    text_encoder: (PathBuf, serde_json::Value),
    text_encoder_2: Option<(PathBuf, serde_json::Value)>,
    unet: (PathBuf, serde_json::Value),
    vae: (PathBuf, serde_json::Value),
    scheduler: serde_json::Value,
    tokenizer_dir: Option<PathBuf>,
    tokenizer_2_dir: Option<PathBuf>,
    force_zeros_for_empty_prompt: bool,
}

/// The user's `--config` folder: a diffusers model folder or a folder of its config files. Its
/// tokenizer folders are used when present (an SD 2.x folder whose tokenizer pads with `!` gives
/// different ids than SD 1.x's padding).
fn configs_from_dir(dir: &Path) -> Result<ConfigSet, LoadError> {
    let read = |c: &str| -> Result<(PathBuf, serde_json::Value), LoadError> {
        let p = config_path(dir, c);
        if !p.is_file() {
            return Err(LoadError::Config {
                path: dir.to_path_buf(),
                reason: format!(
                    "--config folder has no {} (it needs text_encoder/, unet/ and vae/ config.json files)",
                    p.display()
                ),
            });
        }
        Ok((p.clone(), read_json(&p)?))
    };
    let sched = config_path(dir, "scheduler");
    let te2 = config_path(dir, "text_encoder_2");
    Ok(ConfigSet {
        family: Family::Custom,
        why: format!("configs from {}", dir.display()),
        text_encoder: read("text_encoder")?,
        text_encoder_2: te2.is_file().then(|| read("text_encoder_2")).transpose()?,
        unet: read("unet")?,
        vae: read("vae")?,
        scheduler: if sched.is_file() {
            read_json(&sched)?
        } else {
            serde_json::Value::Null
        },
        tokenizer_dir: folder_if_present(dir, "tokenizer"),
        tokenizer_2_dir: folder_if_present(dir, "tokenizer_2"),
        force_zeros_for_empty_prompt: force_zeros_for_empty_prompt(dir)?,
    })
}

/// The published configs of a detected family (compiled in).
fn bundled_configs(family: Family, why: String) -> ConfigSet {
    let file = |c: &str| {
        (
            Path::new("configs")
                .join(family.config_name().unwrap_or(""))
                .join(c)
                .join("config.json"),
            bundled_config(family, c).expect("bundled"),
        )
    };
    ConfigSet {
        family,
        why,
        text_encoder: file("text_encoder"),
        text_encoder_2: (family == Family::Sdxl).then(|| file("text_encoder_2")),
        unet: file("unet"),
        vae: file("vae"),
        scheduler: bundled_config(family, "scheduler").expect("bundled"),
        tokenizer_dir: None,
        tokenizer_2_dir: None,
        force_zeros_for_empty_prompt: true,
    }
}

pub fn load(
    path: &Path,
    options: &LoadOptions,
    device: &Device,
) -> Result<StableDiffusion, LoadError> {
    let ckpt = Checkpoint::open(path)?;
    // Configs: the user's folder wins; else the detected family's published configs.
    let set = match &options.config_dir {
        Some(dir) => configs_from_dir(dir)?,
        None => {
            let detected = family::detect(
                ckpt.reader.as_ref(),
                &ckpt.keys,
                ckpt.metadata.as_ref(),
                ckpt.global_step,
            );
            let (family, why) = detected.ok_or_else(|| {
                layout_err(
                    path,
                    "unknown checkpoint layout: no Stable Diffusion 1.x/2.x/XL text encoder or U-Net keys \
                     (cond_stage_model.*, conditioner.embedders.*, model.diffusion_model.*) were found. \
                     For a diffusers folder pass the folder itself; for another architecture pass \
                     --config DIR with its diffusers config folder"
                        .into(),
                )
            })?;
            bundled_configs(family, why)
        }
    };
    let cfg = parse_configs(
        as_ref(&set.text_encoder),
        set.text_encoder_2.as_ref().map(as_ref),
        as_ref(&set.unet),
        as_ref(&set.vae),
    )?;
    let why = &set.why;
    let desc = match set.family {
        Family::Custom => format!("an original checkpoint with {why}"),
        f => format!("{} ({why})", f.describe()),
    };
    let family = match set.family {
        Family::Custom => super::diffusers_folder::family_of(
            cfg.text_encoder.hidden_size,
            &set.scheduler,
            cfg.text_encoder_2.is_some(),
        ),
        f => f,
    };

    let mut unexpected = Vec::new();
    let mapping_err = |e: String| {
        layout_err(
            path,
            format!(
                "{e} (loading it as {desc}). If the checkpoint is another architecture, pass --config DIR with its diffusers config folder"
            ),
        )
    };
    let (te_map, te2_map) = match &cfg.text_encoder_2 {
        Some(te2) => {
            let (a, b) = crate::clip::keys::sdxl_text_encoders_from_sgm(
                &ckpt.keys,
                cfg.text_encoder.num_hidden_layers,
                te2.num_hidden_layers,
            )
            .map_err(mapping_err)?;
            (a, Some(b))
        }
        None => (
            crate::clip::keys::clip_from_ldm(&ckpt.keys, cfg.text_encoder.num_hidden_layers)
                .map_err(mapping_err)?,
            None,
        ),
    };
    // LDM's `input_blocks` / `output_blocks` numbering assumes the same count in every block
    let layers = cfg.unet.layers_per_block.uniform().ok_or_else(|| {
        mapping_err("a config with a different layers_per_block per block has no LDM layout".into())
    })?;
    let unet_map = crate::unet::keys::unet_from_ldm(&ckpt.keys, layers, options.use_ema)
        .map_err(mapping_err)?;
    let vae_map = crate::vae::keys::vae_from_ldm(&ckpt.keys).map_err(mapping_err)?;
    let te_a = ckpt.assign(te_map, crate::clip::keys::to_burn_path, &mut unexpected);
    let te2_a = te2_map.map(|m| {
        ckpt.assign(
            m,
            crate::clip::keys::to_burn_path_with_projection,
            &mut unexpected,
        )
    });
    let unet_a = ckpt.assign(unet_map, crate::unet::keys::to_burn_path, &mut unexpected);
    let vae_a = ckpt.assign(vae_map, crate::vae::keys::to_burn_path, &mut unexpected);

    let (dtype, parts, reader) = (options.dtype, options.parts, &ckpt.reader);
    let (text_encoder, mut te_report) = load_part(
        parts.text_encoder,
        cfg.text_encoder.init(device),
        reader,
        te_a,
        dtype,
        &desc,
    )?;
    let mut reports = Vec::new();
    let text_encoder_2 = match (te2_a, &cfg.text_encoder_2) {
        (Some(a), Some(te2)) => {
            let (model, report) = load_part(
                parts.text_encoder,
                te2.init_with_projection(device),
                reader,
                a,
                dtype,
                &desc,
            )?;
            reports.push(("text_encoder_2".to_string(), report));
            Some(model)
        }
        _ => None,
    };
    let (unet, unet_report) = load_part(
        parts.unet,
        cfg.unet.init(device),
        reader,
        unet_a,
        dtype,
        &desc,
    )?;
    let (vae, vae_cfg, vae_report) = match &options.vae {
        Some(vae_path) if parts.vae => {
            super::vae_file::load_vae(vae_path, options, family, &cfg.vae, device)?
        }
        _ => {
            let vae_dtype = super::vae_dtype(dtype, &cfg.vae, family);
            let (vae, report) = load_part(
                parts.vae,
                cfg.vae.init(device),
                reader,
                vae_a,
                vae_dtype,
                &desc,
            )?;
            (vae, cfg.vae.clone(), report)
        }
    };
    te_report.unexpected.extend(unexpected);
    reports.insert(0, ("text_encoder".into(), te_report));
    reports.push(("unet".into(), unet_report));
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
            scheduler: set.scheduler,
            tokenizer_dir: set.tokenizer_dir,
            tokenizer_2_dir: set.tokenizer_2_dir,
            force_zeros_for_empty_prompt: set.force_zeros_for_empty_prompt,
            family,
        },
        source: path.to_path_buf(),
        reports,
    })
}
