//! Writes the trained networks as a diffusers folder: `model_index.json`, `scheduler/`,
//! `tokenizer/` (written before training, `tokenizer_files.rs`), and `text_encoder/`, `unet/`,
//! `vae/` each with `config.json` and f16 weights in diffusers/transformers key names.

use std::path::Path;

use burn::tensor::DType;
use invert_model::saving::{Component, save_component};
use invert_model::vae::AutoencoderKL;
use invert_model::weights::safetensors_write::write_atomic;
use serde_json::Value;

use super::architecture::{model_index_json, scheduler_json};
use super::diffusion_stage::Denoiser;
use super::{PretrainConfig, PretrainError};

fn write_json(path: &Path, value: &Value) -> Result<(), PretrainError> {
    let dir = path.parent().expect("component files live in folders");
    std::fs::create_dir_all(dir).map_err(|e| PretrainError::File {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut bytes = serde_json::to_vec_pretty(value).expect("json");
    bytes.push(b'\n');
    write_atomic(path, &bytes, true).map_err(|e| PretrainError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes everything but the tokenizer into `out`.
pub fn write(
    out: &Path,
    config: &PretrainConfig,
    (vocab_size, bos, eos): (usize, u32, u32),
    scaling_factor: f64,
    vae: &AutoencoderKL,
    denoiser: &Denoiser,
) -> Result<(), PretrainError> {
    let arch = &config.architecture;
    write_json(&out.join("model_index.json"), &model_index_json())?;
    write_json(
        &out.join("scheduler/scheduler_config.json"),
        &scheduler_json(config),
    )?;
    write_json(&out.join("vae/config.json"), &arch.vae_json(scaling_factor))?;
    write_json(&out.join("unet/config.json"), &arch.unet_json())?;
    write_json(
        &out.join("text_encoder/config.json"),
        &arch.text_json(vocab_size, bos, eos),
    )?;
    let save = |result: Result<(), invert_model::weights::WeightError>, path: &Path| {
        result.map_err(|e| PretrainError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    let p = out.join("vae/diffusion_pytorch_model.safetensors");
    save(save_component(vae, Component::Vae, &p, DType::F16), &p)?;
    let p = out.join("unet/diffusion_pytorch_model.safetensors");
    save(
        save_component(&denoiser.unet, Component::UNet, &p, DType::F16),
        &p,
    )?;
    let p = out.join("text_encoder/model.safetensors");
    save(
        save_component(
            &denoiser.text_encoder,
            Component::TextEncoder,
            &p,
            DType::F16,
        ),
        &p,
    )?;
    Ok(())
}
