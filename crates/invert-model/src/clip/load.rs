//! Loading a CLIP model (for image/text scores): a transformers folder (`config.json`,
//! `model.safetensors` or `pytorch_model.bin`, the tokenizer, `preprocessor_config.json`; also a
//! Hugging Face cache folder), or a single OpenAI / open_clip checkpoint whose architecture is read
//! off its shapes. The key knowledge is in [`super::model_keys`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;

use super::clip_config::CLIPConfig;
use super::clip_model::CLIPModel;
use super::image_processor::{CLIPImageProcessor, PreprocessError};
use super::model_keys::{
    ClipLayout, Depths, LOGIT_SCALE, clip_model_keys, clip_vision_keys, detect_layout,
};
use super::vision_config::CLIPVisionConfig;
use super::vision_model::CLIPVisionModel;
use crate::keymap::LdmMapping;
use crate::loading::LoadError;
use crate::loading::apply::{Assignment, LoadReport, apply};
use crate::loading::diffusers_folder::{open_component_weights, resolve_model_dir};
use crate::tokenizer::{ClipTokenizer, TokenizerError};
use crate::weights::TensorReader;
use crate::weights::safetensors_file::SafetensorsFile;
use crate::weights::torch_zip::TorchFile;

/// Everything that can go wrong; each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClipLoadError {
    #[error("{path}: no such file or folder")]
    NotFound { path: PathBuf },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(
        "{path}: not a CLIP checkpoint: none of its {count} tensors has CLIP's names (transformers' \
         `vision_model.*` / `text_model.*`, or OpenAI / open_clip's `visual.*` / \
         `token_embedding.weight`); pass a CLIP model folder or checkpoint"
    )]
    NotClip { path: PathBuf, count: usize },
    #[error(
        "{path}: a CLIP file with transformers' names needs its config.json: pass the model folder, \
         or the config with `ClipLoadOptions::config`"
    )]
    NeedsConfig { path: PathBuf },
    #[error(
        "{path}: {n} tensors the {what} needs are not in the file ({layout:?} names); first ones: \
         {first}. Pass a complete CLIP checkpoint, or the config.json that describes this one",
        n = keys.len(),
        first = keys.iter().take(6).cloned().collect::<Vec<_>>().join(", ")
    )]
    MissingKeys {
        path: PathBuf,
        what: &'static str,
        layout: ClipLayout,
        keys: Vec<String>,
    },
    #[error(
        "{path}: tensor `{key}` has shape {found:?} but the config asks for {expected:?}; the config \
         does not describe this checkpoint: pass the config.json that came with it"
    )]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error(
        "the CLIP model has no tokenizer (its folder has no tokenizer.json or vocab.json + \
         merges.txt): load a complete transformers CLIP folder, or set `LoadedClip::tokenizer`"
    )]
    NoTokenizer,
    #[error(transparent)]
    Load(LoadError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// How to load.
#[derive(Debug, Clone)]
pub struct ClipLoadOptions {
    /// Compute dtype of the weights (files in any float dtype are converted).
    pub dtype: DType,
    /// A `config.json` (or a folder holding one) to use instead of the model's own or of the
    /// shapes of an OpenAI / open_clip file.
    pub config: Option<PathBuf>,
    /// OpenAI / open_clip files without a config: the width of one attention head (64 in all
    /// OpenAI and open_clip ViTs).
    pub head_width: usize,
    /// OpenAI / open_clip files without a config: `quick_gelu` (OpenAI's weights) or `gelu`
    /// (most LAION open_clip models).
    pub hidden_act: String,
}

impl Default for ClipLoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            config: None,
            head_width: 64,
            hidden_act: "quick_gelu".into(),
        }
    }
}

/// A loaded CLIP model with what it needs to read text and images.
#[derive(Debug)]
pub struct LoadedClip {
    pub model: CLIPModel,
    pub config: CLIPConfig,
    /// The folder's tokenizer, when it has one.
    pub tokenizer: Option<ClipTokenizer>,
    /// `preprocessor_config.json`, else OpenAI's settings at the model's image size.
    pub processor: CLIPImageProcessor,
    pub layout: ClipLayout,
    pub report: LoadReport,
}

impl LoadedClip {
    /// Image features `[n, projection_dim]` (not normalised) of RGB8 images, preprocessed with
    /// [`Self::processor`].
    pub fn image_features(
        &self,
        images: &[super::RgbImage],
        device: &Device,
    ) -> Result<Tensor<2>, ClipLoadError> {
        let pixels = self.processor.pixel_values(images, device)?;
        Ok(self.model.get_image_features(pixels))
    }

    /// Text features `[n, projection_dim]` (not normalised) of prompts, tokenized with the
    /// folder's tokenizer (BOS, at most `max_length - 2` tokens, EOS, padding).
    pub fn text_features(
        &self,
        prompts: &[&str],
        device: &Device,
    ) -> Result<Tensor<2>, ClipLoadError> {
        let tokenizer = self.tokenizer.as_ref().ok_or(ClipLoadError::NoTokenizer)?;
        let mut ids = Vec::new();
        let mut len = 0;
        for prompt in prompts {
            let encoding = tokenizer.encode(prompt)?;
            len = encoding.ids.len();
            ids.extend(encoding.ids.iter().map(|&i| i64::from(i)));
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [prompts.len(), len]), device);
        Ok(self.model.get_text_features(ids))
    }
}

/// A loaded CLIP vision tower.
#[derive(Debug)]
pub struct LoadedClipVision {
    pub model: CLIPVisionModel,
    pub config: CLIPVisionConfig,
    pub processor: CLIPImageProcessor,
    pub layout: ClipLayout,
    pub report: LoadReport,
}

/// An opened checkpoint: its tensors, naming and folder.
struct Checkpoint {
    reader: Arc<dyn TensorReader>,
    layout: ClipLayout,
    folder: Option<PathBuf>,
}

fn open(path: &Path) -> Result<Checkpoint, ClipLoadError> {
    if !path.exists() {
        return Err(ClipLoadError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let (reader, folder): (Arc<dyn TensorReader>, _) = if path.is_dir() {
        let dir = resolve_model_dir(path);
        let reader = match open_component_weights(&dir, "model", None) {
            Ok(r) => r,
            // laion's repositories also hold open_clip's own files
            Err(e) => match ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
            {
                Some(p) => open_file(&p)?,
                None => return Err(ClipLoadError::Load(e)),
            },
        };
        (reader, Some(dir))
    } else {
        (open_file(path)?, None)
    };
    let names = reader.names();
    let layout = detect_layout(&names).ok_or(ClipLoadError::NotClip {
        path: reader.path().to_path_buf(),
        count: names.len(),
    })?;
    Ok(Checkpoint {
        reader,
        layout,
        folder,
    })
}

fn open_file(path: &Path) -> Result<Arc<dyn TensorReader>, ClipLoadError> {
    let weights = |e| ClipLoadError::Load(LoadError::Weights(e));
    if path.extension().is_some_and(|e| e == "safetensors") {
        Ok(Arc::new(SafetensorsFile::open(path).map_err(weights)?))
    } else {
        Ok(Arc::new(TorchFile::open(path).map_err(weights)?))
    }
}

/// The `config.json` to use: the option's (a file, or a folder holding one), else the folder's.
fn config_json(
    options: &ClipLoadOptions,
    folder: Option<&Path>,
) -> Result<Option<(PathBuf, serde_json::Value)>, ClipLoadError> {
    let path = match (&options.config, folder) {
        (Some(p), _) if p.is_dir() => p.join("config.json"),
        (Some(p), _) => p.clone(),
        (None, Some(dir)) if dir.join("config.json").is_file() => dir.join("config.json"),
        (None, _) => return Ok(None),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ClipLoadError::Config {
        path: path.clone(),
        reason: format!("cannot read it: {e}"),
    })?;
    let json = serde_json::from_str(&text).map_err(|e| ClipLoadError::Config {
        path: path.clone(),
        reason: format!("not valid JSON: {e}"),
    })?;
    Ok(Some((path, json)))
}

/// The whole model's config: config.json, else (OpenAI / open_clip) the checkpoint's shapes.
fn clip_config(ckpt: &Checkpoint, options: &ClipLoadOptions) -> Result<CLIPConfig, ClipLoadError> {
    match config_json(options, ckpt.folder.as_deref())? {
        Some((path, json)) => {
            CLIPConfig::from_json(&json).map_err(|reason| ClipLoadError::Config { path, reason })
        }
        None if ckpt.layout == ClipLayout::OpenClip => CLIPConfig::from_open_clip(
            ckpt.reader.as_ref(),
            options.head_width,
            &options.hidden_act,
        )
        .map_err(|reason| ClipLoadError::Config {
            path: ckpt.reader.path().to_path_buf(),
            reason,
        }),
        None => Err(ClipLoadError::NeedsConfig {
            path: ckpt.reader.path().to_path_buf(),
        }),
    }
}

fn processor(
    folder: Option<&Path>,
    image_size: usize,
) -> Result<CLIPImageProcessor, ClipLoadError> {
    match folder.map(|d| d.join("preprocessor_config.json")) {
        Some(p) if p.is_file() => Ok(CLIPImageProcessor::from_file(&p)?),
        _ => Ok(CLIPImageProcessor::openai(image_size)),
    }
}

/// Loads `mapping` into `module`, turning the generic loader's errors into CLIP's.
fn load_mapped<M: Module + burn::store::ModuleSnapshot>(
    module: &mut M,
    ckpt: &Checkpoint,
    mapping: LdmMapping,
    dtype: DType,
    what: &'static str,
) -> Result<LoadReport, ClipLoadError> {
    let assignments = mapping
        .mapped
        .into_iter()
        .filter(|(target, _)| target != LOGIT_SCALE)
        .map(|(path, source)| Assignment { path, source })
        .collect();
    let describe = format!("a CLIP {what} ({:?} names)", ckpt.layout);
    let mut report =
        apply(module, ckpt.reader.clone(), assignments, dtype, &describe).map_err(|e| match e {
            LoadError::MissingKeys { path, keys, .. } => ClipLoadError::MissingKeys {
                path,
                what,
                layout: ckpt.layout,
                keys,
            },
            LoadError::ShapeMismatch {
                path,
                key,
                found,
                expected,
                ..
            } => ClipLoadError::ShapeMismatch {
                path,
                key,
                found,
                expected,
            },
            other => ClipLoadError::Load(other),
        })?;
    report.unexpected.extend(mapping.unmapped);
    Ok(report)
}

/// Loads a whole CLIP model (`CLIPModel`): a transformers folder, or a checkpoint file
/// (transformers names with `options.config`, or OpenAI / open_clip names).
pub fn load_clip(
    path: &Path,
    options: &ClipLoadOptions,
    device: &Device,
) -> Result<LoadedClip, ClipLoadError> {
    let ckpt = open(path)?;
    let config = clip_config(&ckpt, options)?;
    let mut model = config.init(device);
    let depths = Depths {
        text: config.text_config.num_hidden_layers,
        vision: config.vision_config.num_hidden_layers,
    };
    let mapping = clip_model_keys(&ckpt.reader.names(), ckpt.layout, depths).map_err(|reason| {
        ClipLoadError::Config {
            path: ckpt.reader.path().to_path_buf(),
            reason,
        }
    })?;
    if let Some((_, source)) = mapping.mapped.iter().find(|(t, _)| t == LOGIT_SCALE) {
        let values = ckpt
            .reader
            .read_f32(&source.key)
            .map_err(|e| ClipLoadError::Load(LoadError::Weights(e)))?;
        match values.as_slice() {
            [v] if v.is_finite() => model.logit_scale = f64::from(*v),
            _ => {
                return Err(ClipLoadError::Config {
                    path: ckpt.reader.path().to_path_buf(),
                    reason: format!("`{}` should hold one finite number", source.key),
                });
            }
        }
    }
    let report = load_mapped(&mut model, &ckpt, mapping, options.dtype, "model")?;
    let folder = ckpt.folder.as_deref();
    let tokenizer = match folder {
        Some(dir)
            if ["tokenizer.json", "vocab.json"]
                .iter()
                .any(|f| dir.join(f).is_file()) =>
        {
            Some(ClipTokenizer::from_dir(dir)?)
        }
        _ => None,
    };
    Ok(LoadedClip {
        processor: processor(folder, config.vision_config.image_size)?,
        model,
        config,
        tokenizer,
        layout: ckpt.layout,
        report,
    })
}

/// Loads the vision tower only (`CLIPVisionModel`) from a CLIP model or vision-model folder or
/// checkpoint; the text tower's tensors are not read.
pub fn load_clip_vision(
    path: &Path,
    options: &ClipLoadOptions,
    device: &Device,
) -> Result<LoadedClipVision, ClipLoadError> {
    let ckpt = open(path)?;
    let config = match config_json(options, ckpt.folder.as_deref())? {
        // a CLIPModel's config.json, or a CLIPVisionModel's (the vision config itself)
        Some((path, json)) if json.get("vision_config").is_none() => {
            let vision = CLIPConfig::from_json(&serde_json::json!({ "vision_config": json }))
                .map_err(|reason| ClipLoadError::Config { path, reason })?;
            vision.vision_config
        }
        _ => clip_config(&ckpt, options)?.vision_config,
    };
    let mut model = config.init(device);
    let depths = Depths {
        text: 0,
        vision: config.num_hidden_layers,
    };
    let mapping =
        clip_vision_keys(&ckpt.reader.names(), ckpt.layout, depths).map_err(|reason| {
            ClipLoadError::Config {
                path: ckpt.reader.path().to_path_buf(),
                reason,
            }
        })?;
    let report = load_mapped(&mut model, &ckpt, mapping, options.dtype, "vision model")?;
    Ok(LoadedClipVision {
        processor: processor(ckpt.folder.as_deref(), config.image_size)?,
        model,
        config,
        layout: ckpt.layout,
        report,
    })
}
