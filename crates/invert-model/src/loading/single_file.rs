//! Single-file original (CompVis/LDM layout) checkpoints: `.safetensors` or torch `.ckpt`
//! (a pickle with `state_dict`), holding the U-Net under `model.diffusion_model.`, the VAE
//! under `first_stage_model.` and the text encoder under `cond_stage_model.`.
//!
//! The architecture comes from `--config DIR` when given, else from the detected family's
//! published configs. Key translation is in `{clip,unet,vae}/keys.rs`, mirroring diffusers'
//! `loaders/single_file_utils.py`.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;

use super::apply::Assignment;
use super::diffusers_folder::load_module;
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

pub fn load(
    path: &Path,
    options: &LoadOptions,
    device: &Device,
) -> Result<StableDiffusion, LoadError> {
    let ckpt = Checkpoint::open(path)?;
    let detected = family::detect(
        ckpt.reader.as_ref(),
        &ckpt.keys,
        ckpt.metadata.as_ref(),
        ckpt.global_step,
    );

    // Configs: the user's folder wins; else the detected family's published configs.
    let (family, why, configs) = match &options.config_dir {
        Some(dir) => {
            let mut configs = Vec::new();
            for c in ["text_encoder", "unet", "vae"] {
                let p = config_path(dir, c);
                if !p.is_file() {
                    return Err(LoadError::Config {
                        path: dir.clone(),
                        reason: format!(
                            "--config folder has no {} (it needs text_encoder/, unet/ and vae/ config.json files)",
                            p.display()
                        ),
                    });
                }
                configs.push((p.clone(), read_json(&p)?));
            }
            let sched = config_path(dir, "scheduler");
            let scheduler = if sched.is_file() {
                read_json(&sched)?
            } else {
                serde_json::Value::Null
            };
            (
                Family::Custom,
                format!("configs from {}", dir.display()),
                (configs, scheduler),
            )
        }
        None => {
            let (family, why) = detected.clone().ok_or_else(|| {
                layout_err(
                    path,
                    "unknown checkpoint layout: no Stable Diffusion 1.x/2.x text encoder or U-Net keys \
                     (cond_stage_model.*, model.diffusion_model.*) were found. SDXL and other models are \
                     not supported; for a diffusers folder pass the folder itself"
                        .into(),
                )
            })?;
            let configs = ["text_encoder", "unet", "vae"]
                .iter()
                .map(|c| {
                    (
                        Path::new("configs")
                            .join(family.config_name().unwrap_or(""))
                            .join(c)
                            .join("config.json"),
                        bundled_config(family, c).expect("bundled"),
                    )
                })
                .collect();
            (
                family,
                why,
                (
                    configs,
                    bundled_config(family, "scheduler").expect("bundled"),
                ),
            )
        }
    };
    let (configs, scheduler) = configs;
    let (te_cfg, unet_cfg, vae_cfg) = parse_configs(
        (&configs[0].0, &configs[0].1),
        (&configs[1].0, &configs[1].1),
        (&configs[2].0, &configs[2].1),
    )?;
    let desc = match family {
        Family::Custom => format!("an original checkpoint with {why}"),
        f => format!("{} ({why})", f.describe()),
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
    let te_map = crate::clip::keys::clip_from_ldm(&ckpt.keys, te_cfg.num_hidden_layers)
        .map_err(mapping_err)?;
    let unet_map =
        crate::unet::keys::unet_from_ldm(&ckpt.keys, unet_cfg.layers_per_block, options.use_ema)
            .map_err(mapping_err)?;
    let vae_map = crate::vae::keys::vae_from_ldm(&ckpt.keys).map_err(mapping_err)?;
    let te_a = ckpt.assign(te_map, crate::clip::keys::to_burn_path, &mut unexpected);
    let unet_a = ckpt.assign(unet_map, crate::unet::keys::to_burn_path, &mut unexpected);
    let vae_a = ckpt.assign(vae_map, crate::vae::keys::to_burn_path, &mut unexpected);

    let (dtype, parts, reader) = (options.dtype, options.parts, &ckpt.reader);
    let (text_encoder, mut te_report) = load_part(
        parts.text_encoder,
        te_cfg.init(device),
        reader,
        te_a,
        dtype,
        &desc,
    )?;
    let (unet, unet_report) = load_part(
        parts.unet,
        unet_cfg.init(device),
        reader,
        unet_a,
        dtype,
        &desc,
    )?;
    let (vae, vae_report) =
        load_part(parts.vae, vae_cfg.init(device), reader, vae_a, dtype, &desc)?;
    te_report.unexpected.extend(unexpected);

    let family = match family {
        Family::Custom => super::diffusers_folder::family_of(te_cfg.hidden_size, &scheduler),
        f => f,
    };
    Ok(StableDiffusion {
        text_encoder,
        unet,
        vae,
        config: PipelineConfig {
            text_encoder: te_cfg,
            unet: unet_cfg,
            vae: vae_cfg,
            scheduler,
            tokenizer_dir: None,
            family,
        },
        source: path.to_path_buf(),
        reports: vec![
            ("text_encoder".into(), te_report),
            ("unet".into(), unet_report),
            ("vae".into(), vae_report),
        ],
    })
}
