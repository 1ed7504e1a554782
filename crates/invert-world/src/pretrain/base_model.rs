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

/// Loads the folder's U-Net and text encoder. A U-Net with one layer fewer in some blocks than
/// `architecture` asks for is grown to it (`grow_unet.rs`), computing what it computed.
pub fn load_denoiser(
    root: &Path,
    architecture: &super::Architecture,
    unet: &mut invert_model::unet::UNet2DConditionModel,
    text_encoder: &mut invert_model::clip::CLIPTextModel,
) -> Result<(), PretrainError> {
    let layers = unet_layers_per_block(root)?;
    let levels = architecture.unet_channels.len();
    if layers.expand(levels) == architecture.unet_layers_per_block.expand(levels) {
        load_component(
            unet,
            root,
            "unet",
            "diffusion_pytorch_model",
            invert_model::unet::keys::to_burn_path,
        )?;
    } else {
        let smaller = super::Architecture {
            unet_layers_per_block: layers,
            ..architecture.clone()
        };
        let (_, config, _) = smaller.configs(text_encoder.vocab_size());
        if let Some(why) = config.unsupported() {
            return Err(PretrainError::File {
                path: root.join("unet"),
                reason: why,
            });
        }
        let mut old = config.init(&unet.devices()[0]);
        load_component(
            &mut old,
            root,
            "unet",
            "diffusion_pytorch_model",
            invert_model::unet::keys::to_burn_path,
        )?;
        super::grow_unet::grow_layers(&old, unet).map_err(|reason| PretrainError::File {
            path: root.join("unet"),
            reason,
        })?;
    }
    load_component(
        text_encoder,
        root,
        "text_encoder",
        "model",
        invert_model::clip::keys::to_burn_path,
    )
}

/// `layers_per_block` of the folder's U-Net (`unet/config.json`).
fn unet_layers_per_block(root: &Path) -> Result<invert_model::unet::PerBlock, PretrainError> {
    let path = root.join("unet").join("config.json");
    let json = read_json(&path)?;
    json.get("layers_per_block")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| PretrainError::File {
            path,
            reason: "no layers_per_block (a number or a list)".into(),
        })
}

fn read_json(path: &Path) -> Result<serde_json::Value, PretrainError> {
    let error = |reason: String| PretrainError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| error(format!("not JSON: {e}")))
}

/// The latent scaling factor of the folder's VAE (`vae/config.json`), which its U-Net was
/// trained with.
pub fn scaling_factor(root: &Path) -> Result<f64, PretrainError> {
    let path = root.join("vae").join("config.json");
    let error = |reason: String| PretrainError::File {
        path: path.clone(),
        reason,
    };
    read_json(&path)?
        .get("scaling_factor")
        .and_then(|v| v.as_f64())
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| error("no positive scaling_factor".into()))
}
