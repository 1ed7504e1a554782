//! Continued pretraining (`init_from` in the config): the VAE, text encoder and U-Net start from
//! a diffusers folder written by an earlier run of the same architecture, so a recipe can be
//! changed (for example picture words, `picture_words.rs`) without the two hours of training
//! from scratch. The modules are built from this run's architecture and every tensor of the
//! folder must fill one of them with the same shape, so a folder of another architecture is
//! refused by name instead of being half loaded.

use std::path::Path;

use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::DType;
use invert_model::loading::apply::apply;
use invert_model::loading::diffusers_folder::{assignments, open_component_weights};

use super::PretrainError;

fn load_component<M: Module + ModuleSnapshot>(
    module: &mut M,
    root: &Path,
    component: &str,
    stem: &str,
    to_burn: fn(&str) -> Option<String>,
) -> Result<(), PretrainError> {
    let dir = root.join(component);
    let error = |reason: String| PretrainError::File {
        path: dir.clone(),
        reason: format!(
            "{reason} (init_from must be a diffusers folder written by `invert pretrain` with \
             this config's architecture)"
        ),
    };
    let reader = open_component_weights(&dir, stem, None).map_err(|e| error(e.to_string()))?;
    let a = assignments(reader.as_ref(), to_burn);
    apply(module, reader, a, DType::F32, "an invert pretrain folder")
        .map(|_| ())
        .map_err(|e| error(e.to_string()))
}

pub fn load_vae(
    root: &Path,
    vae: &mut invert_model::vae::AutoencoderKL,
) -> Result<(), PretrainError> {
    load_component(
        vae,
        root,
        "vae",
        "diffusion_pytorch_model",
        invert_model::vae::keys::to_burn_path,
    )
}

pub fn load_denoiser(
    root: &Path,
    unet: &mut invert_model::unet::UNet2DConditionModel,
    text_encoder: &mut invert_model::clip::CLIPTextModel,
) -> Result<(), PretrainError> {
    load_component(
        unet,
        root,
        "unet",
        "diffusion_pytorch_model",
        invert_model::unet::keys::to_burn_path,
    )?;
    load_component(
        text_encoder,
        root,
        "text_encoder",
        "model",
        invert_model::clip::keys::to_burn_path,
    )
}

/// The latent scaling factor of the folder's VAE (`vae/config.json`), which its U-Net was
/// trained with.
pub fn scaling_factor(root: &Path) -> Result<f64, PretrainError> {
    let path = root.join("vae").join("config.json");
    let error = |reason: String| PretrainError::File {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| error(format!("not JSON: {e}")))?;
    json.get("scaling_factor")
        .and_then(|v| v.as_f64())
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| error("no positive scaling_factor".into()))
}
