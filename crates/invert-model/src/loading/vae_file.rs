//! `--vae PATH`: a VAE used instead of the model's, as A1111's "SD VAE" setting and diffusers'
//! `vae=AutoencoderKL.from_pretrained(...)` allow, e.g. `madebyollin/sdxl-vae-fp16-fix` for an
//! SDXL model run in f16, or `vae-ft-mse-840000-ema-pruned` for SD 1.x.
//!
//! Accepted: a diffusers `vae/` component folder (or a model folder holding one), whose
//! `config.json` also says `force_upcast`; or a single `.safetensors`/`.ckpt` file in the
//! original (LDM) names, bare or under `first_stage_model.`, or in diffusers names. A single file
//! has no config: it is taken to have the model's own VAE architecture and scaling factor (as
//! A1111's VAE swap does), and it runs in the model's precision (`force_upcast` false: the user
//! chose it, and the reason to pass a VAE to an f16 SDXL model is an fp16-safe one).

use std::path::Path;

use burn::prelude::*;

use super::apply::{Assignment, LoadReport};
use super::diffusers_folder::{assignments, load_module, open_component_weights};
use super::family::Family;
use super::single_file::Checkpoint;
use super::{LoadError, LoadOptions, parse_config, read_json, vae_dtype};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};

/// Loads the VAE at `path` for a model of `family` whose own VAE is `model_vae`, with its
/// config; refuses one whose latents have another shape before reading its weights.
pub fn load_vae(
    path: &Path,
    options: &LoadOptions,
    family: Family,
    model_vae: &AutoencoderKLConfig,
    device: &Device,
) -> Result<(AutoencoderKL, AutoencoderKLConfig, LoadReport), LoadError> {
    let fits = |cfg: &AutoencoderKLConfig| {
        if (cfg.latent_channels, cfg.downscale_factor())
            == (model_vae.latent_channels, model_vae.downscale_factor())
        {
            return Ok(());
        }
        Err(LoadError::Config {
            path: path.to_path_buf(),
            reason: format!(
                "this VAE makes {}-channel latents 1/{} of the image size, the model needs \
                 {}-channel latents at 1/{}: it belongs to another kind of model",
                cfg.latent_channels,
                cfg.downscale_factor(),
                model_vae.latent_channels,
                model_vae.downscale_factor()
            ),
        })
    };
    if !path.exists() {
        return Err(LoadError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let desc = format!("the VAE given with --vae ({})", path.display());
    if path.is_dir() {
        let dir = if path.join("vae").join("config.json").is_file() {
            path.join("vae")
        } else {
            path.to_path_buf()
        };
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(LoadError::Config {
                path: path.to_path_buf(),
                reason: "--vae folder has no config.json (nor vae/config.json); pass a diffusers \
                         VAE folder or a single .safetensors VAE file"
                    .into(),
            });
        }
        let cfg = parse_vae_config(&config_path, &read_json(&config_path)?)?;
        fits(&cfg)?;
        let reader =
            open_component_weights(&dir, "diffusion_pytorch_model", options.variant.as_deref())?;
        let a = assignments(reader.as_ref(), crate::vae::keys::to_burn_path);
        let dtype = vae_dtype(options.dtype, &cfg, family);
        let (vae, report) = load_module(cfg.init(device), reader, a, dtype, &desc)?;
        return Ok((vae, cfg, report));
    }

    let mut cfg = model_vae.clone();
    cfg.force_upcast = false;
    let ckpt = Checkpoint::open(path)?;
    let diffusers_names = ckpt.keys.iter().any(|k| k.contains("down_blocks."));
    let (a, unexpected) = if diffusers_names {
        (
            assignments(ckpt.reader.as_ref(), crate::vae::keys::to_burn_path),
            vec![],
        )
    } else {
        let mapping =
            crate::vae::keys::vae_from_ldm(&ckpt.keys).map_err(|e| LoadError::Layout {
                path: path.to_path_buf(),
                reason: format!("{e}; --vae needs a VAE file (encoder.*/decoder.* keys)"),
            })?;
        let unexpected = mapping.unmapped.clone();
        let a = mapping
            .mapped
            .into_iter()
            .filter_map(|(key, mut source)| {
                source.key = format!("{}{}", ckpt.prefix, source.key);
                crate::vae::keys::to_burn_path(&key).map(|path| Assignment { path, source })
            })
            .collect();
        (a, unexpected)
    };
    let (vae, mut report) = load_module(
        cfg.init(device),
        ckpt.reader.clone(),
        a,
        options.dtype,
        &desc,
    )?;
    report.unexpected.extend(unexpected);
    Ok((vae, cfg, report))
}

fn parse_vae_config(
    path: &Path,
    json: &serde_json::Value,
) -> Result<AutoencoderKLConfig, LoadError> {
    let cfg: AutoencoderKLConfig = parse_config(path, json, AutoencoderKLConfig::new(vec![]))?;
    if let Some(reason) = cfg.unsupported() {
        return Err(LoadError::Config {
            path: path.to_path_buf(),
            reason,
        });
    }
    Ok(cfg)
}
