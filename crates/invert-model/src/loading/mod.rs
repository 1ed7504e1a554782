//! Loading Stable Diffusion 1.x/2.x/XL from what users have on disk: diffusers folders (also inside
//! a Hugging Face cache snapshot) and single-file original checkpoints (`.safetensors`,
//! `.ckpt`). See `diffusers_folder.rs` and `single_file.rs`; the checkpoint-key knowledge lives
//! in each model's `keys.rs`.

pub mod apply;
pub mod diffusers_folder;
pub mod family;
pub mod single_file;
pub mod vae_file;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;

use crate::clip::{CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection};
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::weights::WeightError;

pub use apply::LoadReport;
pub use family::Family;

/// Everything that can go wrong while loading; each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("{path}: no such file or folder")]
    NotFound { path: PathBuf },
    #[error(
        "{path}: the model folder has no `{component}` component ({detail}). A diffusers folder \
         needs model_index.json with text_encoder/, unet/ and vae/ (each with config.json and \
         weights); pass a complete folder or a single-file checkpoint"
    )]
    MissingComponent {
        path: PathBuf,
        component: String,
        detail: String,
    },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(
        "{path}: tensor `{key}` has shape {found:?} but the model expects {expected:?} (loading \
         it as {family}). If the checkpoint is another architecture, pass --config DIR with its \
         diffusers config folder"
    )]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
        family: String,
    },
    #[error(
        "{path}: {n} weights the model needs are not in the file (loading it as {family}); \
         first ones: {first}",
        n = keys.len(),
        first = keys.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
    )]
    MissingKeys {
        path: PathBuf,
        family: String,
        keys: Vec<String>,
    },
    #[error("{path}: {reason}")]
    Layout { path: PathBuf, reason: String },
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype of the frozen weights (files in any float dtype are converted to it).
    pub dtype: DType,
    /// Prefer `*.{variant}.safetensors` files in diffusers folders (e.g. `fp16`).
    pub variant: Option<String>,
    /// A diffusers folder, or a folder of component `config.json` files, giving the
    /// architecture (and scheduler) of a single-file checkpoint.
    pub config_dir: Option<PathBuf>,
    /// Take the U-Net from the EMA weights of an original checkpoint that has them.
    pub use_ema: bool,
    /// Which components to read. Skipped ones are built but left lazily initialised (no
    /// memory); they must not be used. `invert embedding inspect` needs only the text encoder.
    pub parts: Parts,
    /// A VAE to use instead of the model's (`--vae`): a diffusers `vae/` folder or a single
    /// `.safetensors`/`.ckpt` VAE, e.g. an fp16-fixed SDXL VAE.
    pub vae: Option<PathBuf>,
}

/// A selection of pipeline components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub text_encoder: bool,
    pub unet: bool,
    pub vae: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        text_encoder: true,
        unet: true,
        vae: true,
    };
    pub const TEXT_ENCODER: Parts = Parts {
        text_encoder: true,
        unet: false,
        vae: false,
    };
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            variant: None,
            config_dir: None,
            use_ema: false,
            parts: Parts::ALL,
            vae: None,
        }
    }
}

/// The configuration of a whole pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub text_encoder: CLIPTextConfig,
    /// SDXL's second text encoder (`CLIPTextModelWithProjection`).
    pub text_encoder_2: Option<CLIPTextConfig>,
    pub unet: UNet2DConditionConfig,
    pub vae: AutoencoderKLConfig,
    /// `scheduler/scheduler_config.json` as found (interpreted by the sampling code).
    pub scheduler: serde_json::Value,
    /// `tokenizer/` folder of a diffusers model (or of `--config`), when there is one.
    pub tokenizer_dir: Option<PathBuf>,
    /// `tokenizer_2/` folder of an SDXL model, when there is one.
    pub tokenizer_2_dir: Option<PathBuf>,
    /// SDXL's `force_zeros_for_empty_prompt` (model_index.json; true for SDXL 1.0): with no
    /// negative prompt, the unconditional input is zeros instead of the encoded empty prompt.
    pub force_zeros_for_empty_prompt: bool,
    pub family: Family,
}

impl PipelineConfig {
    /// The U-Net's native latent size (`sample_size` in unet/config.json; 64 for SD 1.x).
    pub fn unet_sample_size(&self) -> usize {
        self.unet.sample_size
    }
}

/// A loaded Stable Diffusion model.
#[derive(Debug)]
pub struct StableDiffusion {
    pub text_encoder: CLIPTextModel,
    /// SDXL's second text encoder.
    pub text_encoder_2: Option<CLIPTextModelWithProjection>,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub config: PipelineConfig,
    /// What was loaded, for messages and image metadata.
    pub source: PathBuf,
    pub reports: Vec<(String, LoadReport)>,
}

/// The bundled model used when no `--model` is given: `$INVERT_MODEL` if set, else
/// `models/world` of the invert checkout this binary was built from (trained by
/// `invert pretrain`, see `configs/pretrain/world.toml`).
pub fn default_model_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("INVERT_MODEL") {
        return PathBuf::from(p);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/world");
    dir.canonicalize().unwrap_or(dir)
}

/// Loads a diffusers folder, a Hugging Face cache snapshot or a single-file checkpoint.
pub fn load(
    path: &Path,
    options: &LoadOptions,
    device: &Device,
) -> Result<StableDiffusion, LoadError> {
    if !path.exists() {
        return Err(LoadError::NotFound {
            path: path.to_path_buf(),
        });
    }
    if path.is_dir() {
        diffusers_folder::load(path, options, device)
    } else {
        single_file::load(path, options, device)
    }
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| LoadError::Config {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// Parses a diffusers/transformers `config.json`: fields it lacks take `defaults`' values (burn's
/// `Config` deserialiser does not apply `#[config(default)]` to missing fields) and fields we
/// do not model are ignored.
pub fn parse_config<C: burn::config::Config>(
    path: &Path,
    json: &serde_json::Value,
    defaults: C,
) -> Result<C, LoadError> {
    let bad = |reason: String| LoadError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let mut merged = serde_json::to_value(&defaults).map_err(|e| bad(e.to_string()))?;
    let user = json
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let target = merged
        .as_object_mut()
        .expect("configs serialise to objects");
    for (k, v) in user {
        // diffusers writes `null` for "the default" (e.g. SDXL's `upcast_attention`).
        if target.contains_key(k) && !v.is_null() {
            target.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(merged)
        .map_err(|e| bad(format!("not a config this model understands: {e}")))
}

/// The component configs of a pipeline.
pub(crate) struct ComponentConfigs {
    pub text_encoder: CLIPTextConfig,
    pub text_encoder_2: Option<CLIPTextConfig>,
    pub unet: UNet2DConditionConfig,
    pub vae: AutoencoderKLConfig,
}

/// A config file's path and its JSON.
pub(crate) type ConfigFile<'a> = (&'a Path, &'a serde_json::Value);

/// Parses the component configs and checks that this implementation can build them and that
/// they fit together (the U-Net's cross-attention width is the text width, both encoders'
/// widths concatenated for SDXL).
pub(crate) fn parse_configs(
    text_encoder: ConfigFile,
    text_encoder_2: Option<ConfigFile>,
    unet: ConfigFile,
    vae: ConfigFile,
) -> Result<ComponentConfigs, LoadError> {
    let te = parse_text_config(text_encoder)?;
    let te2 = text_encoder_2.map(parse_text_config).transpose()?;
    let unet_cfg: UNet2DConditionConfig = parse_config(
        unet.0,
        unet.1,
        UNet2DConditionConfig::new(vec![], vec![], vec![]),
    )?;
    let vae_cfg: AutoencoderKLConfig =
        parse_config(vae.0, vae.1, AutoencoderKLConfig::new(vec![]))?;
    if let Some(why) = unet_cfg.unsupported() {
        return Err(LoadError::Config {
            path: unet.0.to_path_buf(),
            reason: why,
        });
    }
    if let Some(why) = vae_cfg.unsupported() {
        return Err(LoadError::Config {
            path: vae.0.to_path_buf(),
            reason: why,
        });
    }
    let text_width = te.hidden_size + te2.as_ref().map_or(0, |c| c.hidden_size);
    if text_width != unet_cfg.cross_attention_dim {
        let widths = match &te2 {
            Some(c) => format!(
                "the two text encoders' hidden sizes {} + {}",
                te.hidden_size, c.hidden_size
            ),
            None => format!("the text encoder's hidden_size {}", te.hidden_size),
        };
        return Err(LoadError::Config {
            path: unet.0.to_path_buf(),
            reason: format!(
                "the U-Net's cross_attention_dim {} differs from {widths}",
                unet_cfg.cross_attention_dim
            ),
        });
    }
    if let (Some(c), true) = (&te2, unet_cfg.addition_embed_type.is_some()) {
        let time_dim = unet_cfg.addition_time_embed_dim.unwrap_or(0);
        let expected = 6 * time_dim + c.projection_dim;
        if unet_cfg.projection_class_embeddings_input_dim != Some(expected) {
            return Err(LoadError::Config {
                path: unet.0.to_path_buf(),
                reason: format!(
                    "projection_class_embeddings_input_dim is {:?}; SDXL's added conditions need \
                     6 x addition_time_embed_dim ({}) + the second text encoder's \
                     projection_dim ({}) = {expected}",
                    unet_cfg.projection_class_embeddings_input_dim, time_dim, c.projection_dim
                ),
            });
        }
    }
    Ok(ComponentConfigs {
        text_encoder: te,
        text_encoder_2: te2,
        unet: unet_cfg,
        vae: vae_cfg,
    })
}

/// The dtype a VAE is loaded in: f32 for an SDXL model run in f16 when its config says
/// `force_upcast` (diffusers' `StableDiffusionXLPipeline.upcast_vae`), else the model's dtype.
pub fn vae_dtype(dtype: DType, vae: &AutoencoderKLConfig, family: Family) -> DType {
    if dtype == DType::F16 && vae.force_upcast && family == Family::Sdxl {
        DType::F32
    } else {
        dtype
    }
}

fn parse_text_config((path, json): ConfigFile) -> Result<CLIPTextConfig, LoadError> {
    let te: CLIPTextConfig = parse_config(path, json, CLIPTextConfig::new())?;
    if te.num_attention_heads == 0 || !te.hidden_size.is_multiple_of(te.num_attention_heads) {
        return Err(LoadError::Config {
            path: path.to_path_buf(),
            reason: format!(
                "hidden_size {} cannot be split into {} heads",
                te.hidden_size, te.num_attention_heads
            ),
        });
    }
    Ok(te)
}
