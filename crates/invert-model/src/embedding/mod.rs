//! Textual-inversion embedding files: reading every format in use, writing five of them.
//!
//! Read ([`read_embeddings`], format detected from the content, never the extension):
//! - diffusers: `{token: [n, d]}` or `{token: [d]}` in `.safetensors`, or a torch pickle
//!   (`.bin`/`.pt`) that may hold several tokens; a bare pickled tensor takes the file stem;
//! - diffusers' SDXL trainer (`textual_inversion_sdxl.py`): `learned_embeds.safetensors`
//!   (`{token: [n, 768]}`, text_encoder) and `learned_embeds_2.safetensors` (`{token: [n, 1280]}`,
//!   text_encoder_2), also as `learned_embeds[_2]-steps-N.safetensors`: reading either file
//!   reads both and returns one SDXL embedding (the second alone is refused: it is half of one);
//! - A1111 `.pt` (`string_to_token`, `string_to_param` as a dict or `ParameterDict`, `name`,
//!   `step`, `sd_checkpoint`, `sd_checkpoint_name`), torch zip or legacy pickle;
//! - A1111 embedding images (`.png`): the `sd-ti-embedding` tEXt/zTXt/iTXt chunk (base64 of a
//!   JSON whose tensors are `{"TORCHTENSOR": nested lists}`), or, when the text chunks were
//!   stripped, the data A1111 hides in the pixels of the side blocks it draws;
//! - kohya sd-scripts and invoke-training: `{"emb_params": [n, d]}` (`.pt` or `.safetensors`);
//! - OneTrainer: `{"emp_params": [n, d]}`; its `emp_params_out` (output-side embeddings for
//!   models that have them) is ignored and the returned embedding says so in `meta.extra`;
//! - SDXL `{"clip_l": [n, 768], "clip_g": [n, 1280]}` (kohya, OneTrainer with its ignored
//!   `clip_l_out`/`clip_g_out`, invoke-training, diffusers' advanced pivotal-tuning script) in
//!   `.safetensors` or a torch `.pt`: one embedding with [`LearnedEmbedding::second`] set;
//!   `{"clip_l": [n, d]}` alone (diffusers' advanced SD 1.5 script) is a one-encoder embedding;
//! - embeddings bundled in LoRA files (`bundle_emb.<name>.<tensor>`, written by OneTrainer and
//!   kohya's bundling script, read by A1111/Forge): one embedding per `<name>`, each laid out as
//!   one of the formats above; the LoRA weights are ignored with a note (invert applies no LoRA);
//! - rinongal/textual_inversion: `string_to_param` `ParameterDict` (merged files with several
//!   placeholders give one embedding per placeholder, named by the placeholder).
//!
//! Refused with a message saying why and what to do: half an SDXL embedding (`clip_g` without
//! `clip_l`, `learned_embeds_2` without `learned_embeds`), SDXL tables with different vector
//! counts, Flux/SD3 files (`t5`), LoRA files without bundled embeddings, kohya XTI (P+) files
//! (16 per-block token sets), integer tensors, tensors of rank other than 1 or 2, more than
//! [`MAX_VECTORS`] vectors, and NaN/infinite values.
//!
//! Write ([`write_embedding`]): diffusers safetensors, A1111 `.pt` (a torch zip written without
//! torch), kohya safetensors (one text encoder); for SDXL the `{clip_l, clip_g}` safetensors of
//! kohya/OneTrainer/invoke-training ([`WriteFormat::default_for`] picks it) and diffusers' two
//! files. Writes are atomic and never overwrite unless asked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::weights::{StoredDType, WeightError};

mod bundle;
mod png_embed;
mod read;
mod sdxl;
mod write;

pub use read::read_embeddings;

/// Reads an A1111 embedding image from bytes in memory (`path` only names it in messages): the
/// entry point of the `png_embedding` fuzz target. Files go through [`read_embeddings`], which
/// detects PNGs and calls the same reader.
pub fn read_png_embedding(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<LearnedEmbedding>, EmbeddingError> {
    png_embed::read_png_bytes(path, bytes)
}
pub use write::{WriteFormat, write_embedding};

/// Most vectors one embedding may have: CLIP's context is 77 tokens, two of them BOS/EOS.
pub const MAX_VECTORS: usize = 75;

/// The file format an embedding was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmbeddingFormat {
    /// diffusers `textual_inversion.py`: `{token: [n, d]}`.
    Diffusers,
    /// AUTOMATIC1111 `.pt`.
    A1111,
    /// AUTOMATIC1111 embedding image (`.png`).
    A1111Png,
    /// kohya sd-scripts / invoke-training `emb_params`.
    Kohya,
    /// OneTrainer `emp_params`.
    OneTrainer,
    /// rinongal/textual_inversion (the paper's code) `string_to_param` `ParameterDict`.
    Rinongal,
    /// SDXL `{"clip_l": [n, 768], "clip_g": [n, 1280]}`: kohya sd-scripts, OneTrainer,
    /// invoke-training, diffusers' advanced (pivotal tuning) SDXL script.
    Sdxl,
    /// diffusers' `textual_inversion_sdxl.py`: `learned_embeds.safetensors` (clip_l) and
    /// `learned_embeds_2.safetensors` (clip_g), read together.
    DiffusersSdxl,
    /// `{"clip_l": [n, d]}` alone: diffusers' advanced SD 1.5 script (one text encoder).
    ClipL,
    /// Bundled in a LoRA file as `bundle_emb.<name>.*` (OneTrainer, kohya's bundling script);
    /// `meta.extra["bundle_layout"]` names the layout inside.
    LoraBundle,
}

impl EmbeddingFormat {
    pub fn name(self) -> &'static str {
        match self {
            EmbeddingFormat::Diffusers => "diffusers",
            EmbeddingFormat::A1111 => "A1111",
            EmbeddingFormat::A1111Png => "A1111 PNG",
            EmbeddingFormat::Kohya => "kohya",
            EmbeddingFormat::OneTrainer => "OneTrainer",
            EmbeddingFormat::Rinongal => "rinongal",
            EmbeddingFormat::Sdxl => "SDXL clip_l/clip_g",
            EmbeddingFormat::DiffusersSdxl => "diffusers SDXL (two files)",
            EmbeddingFormat::ClipL => "clip_l",
            EmbeddingFormat::LoraBundle => "LoRA bundle",
        }
    }
}

impl std::fmt::Display for EmbeddingFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a file says about an embedding besides its vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingMeta {
    /// Training step it was saved at (A1111 `step`, invert's metadata).
    pub step: Option<u64>,
    /// Name of the model it was trained on (A1111 `sd_checkpoint_name`).
    pub base_model: Option<String>,
    /// Hash of that model (A1111 `sd_checkpoint`, a short hash).
    pub base_model_hash: Option<String>,
    pub source_format: EmbeddingFormat,
    /// Everything else worth keeping: safetensors metadata (`safetensors.<key>`), the A1111
    /// placeholder and token id, what was ignored (`ignored`), where a PNG held it (`png`).
    pub extra: BTreeMap<String, String>,
}

impl EmbeddingMeta {
    pub fn new(source_format: EmbeddingFormat) -> Self {
        EmbeddingMeta {
            step: None,
            base_model: None,
            base_model_hash: None,
            source_format,
            extra: BTreeMap::new(),
        }
    }
}

/// One learned concept: `num_vectors` rows of `width` values for the (first) text encoder, and
/// for SDXL the same number of rows for its second one.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedEmbedding {
    /// The trigger text (diffusers expands a multi-vector token to `token token_1 ...`).
    pub token: String,
    /// Row-major `[num_vectors, width]`: the only text encoder of SD 1.x/2.x, SDXL's first one
    /// (`clip_l`, CLIP ViT-L, 768 wide).
    pub vectors: Vec<f32>,
    pub num_vectors: usize,
    pub width: usize,
    /// SDXL's second text encoder's rows (`clip_g`, OpenCLIP ViT-bigG, 1280 wide), when the
    /// embedding has them.
    pub second: Option<SecondVectors>,
    pub meta: EmbeddingMeta,
}

/// The rows of an SDXL embedding for the second text encoder: row-major `[num_vectors, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SecondVectors {
    pub vectors: Vec<f32>,
    pub width: usize,
}

impl LearnedEmbedding {
    /// Vector `i` (`width` values).
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.width..(i + 1) * self.width]
    }
}

/// Errors reading, checking or writing embeddings. Every message names the file and says what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not an embedding file invert recognises ({reason}). invert reads diffusers \
         (.safetensors/.bin), A1111 (.pt and .png embedding images), kohya/invoke-training \
         (emb_params), OneTrainer (emp_params), rinongal (.pt) and SDXL (clip_l + clip_g, or \
         learned_embeds + learned_embeds_2) embeddings, and embeddings bundled in LoRA files; \
         check that this is the embedding file and not a model or an image"
    )]
    UnknownFormat { path: PathBuf, reason: String },
    /// An SDXL embedding that cannot be used as it is: half of one, or tables that disagree.
    #[error("{path}: not a usable SDXL embedding: {reason}")]
    Sdxl { path: PathBuf, reason: String },
    #[error(
        "{path}: this is a kohya XTI (P+) embedding: 16 token sets, one per U-Net block \
         ({keys}); invert supports ordinary textual inversion (one token set for the text \
         encoder) only. Use it with kohya's XTI scripts, or train an ordinary embedding"
    )]
    Xti { path: PathBuf, keys: String },
    #[error(
        "{path}: tensor `{tensor}` has shape {shape:?}: {reason}. An embedding is [vectors, \
         width] (or [width] for one vector); the file is damaged or not an embedding"
    )]
    BadShape {
        path: PathBuf,
        tensor: String,
        shape: Vec<usize>,
        reason: String,
    },
    #[error(
        "{path}: tensor `{tensor}` holds {dtype:?} values; embeddings are float32, float16 or \
         bfloat16. The file is not an embedding, or was saved wrongly: re-save its vectors as \
         float32"
    )]
    BadDType {
        path: PathBuf,
        tensor: String,
        dtype: StoredDType,
    },
    #[error(
        "{path}: the embedding `{token}` holds {count} NaN or infinite values (first in vector \
         {vector}, element {element}): it is broken, typically because training diverged. Use \
         an earlier checkpoint of it, or retrain with a lower learning rate"
    )]
    NonFinite {
        path: PathBuf,
        token: String,
        count: usize,
        vector: usize,
        element: usize,
    },
    #[error(
        "{path}: the file holds {count} embeddings ({tokens}); a token name can only be given \
         for a file with one embedding. Leave the token out to use the names in the file"
    )]
    AmbiguousOverride {
        path: PathBuf,
        count: usize,
        tokens: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path}: the embedding `{token}` is {width} wide, made for {family}, but the loaded \
         model's text encoder is {model_width} wide ({model_family}). Embeddings only work with \
         the model family they were trained for: use an embedding trained for {model_family}, \
         or load a {family} model"
    )]
    WidthMismatch {
        path: PathBuf,
        token: String,
        width: usize,
        family: String,
        model_width: usize,
        model_family: String,
    },
    /// An SDXL embedding for a model with one text encoder, or the reverse.
    #[error("{path}: the embedding `{token}` is {embedding}, but the loaded model {model}. {fix}")]
    ModelMismatch {
        path: PathBuf,
        token: String,
        embedding: String,
        model: String,
        fix: String,
    },
    #[error(
        "{path}: already exists; invert does not overwrite files unless asked (allow \
         overwriting, or choose another file name)"
    )]
    AlreadyExists { path: PathBuf },
}

/// The model family whose text encoder has this width.
pub fn width_family(width: usize) -> String {
    match width {
        768 => "SD 1.x (CLIP ViT-L/14, 768 wide)".into(),
        1024 => "SD 2.x (OpenCLIP ViT-H/14, 1024 wide)".into(),
        1280 => "SDXL's second text encoder (clip_g, OpenCLIP ViT-bigG/14, 1280 wide) or the \
                 original LDM 1.4B (BERT, 1280 wide)"
            .into(),
        w => format!("a {w}-wide text encoder (not Stable Diffusion 1.x, 2.x or SDXL)"),
    }
}

/// What `e` was made for: [`width_family`] of its width, or for an SDXL embedding both tables.
pub fn embedding_family(e: &LearnedEmbedding) -> String {
    match &e.second {
        None => width_family(e.width),
        Some(g) if (e.width, g.width) == (768, 1280) => "SDXL (clip_l: CLIP ViT-L/14, 768 wide; \
             clip_g: OpenCLIP ViT-bigG/14, 1280 wide)"
            .into(),
        Some(g) => format!(
            "an SDXL-style model with {} + {} wide text encoders (SDXL's are 768 + 1280)",
            e.width, g.width
        ),
    }
}

/// Checks that `e` fits a model with one text encoder of width `text_width` (SD 1.x/2.x);
/// `path` is the embedding's file. An SDXL embedding never does. Same as
/// `check_widths(e, text_width, None, path)`.
pub fn check_width(
    e: &LearnedEmbedding,
    text_width: usize,
    path: &Path,
) -> Result<(), EmbeddingError> {
    check_widths(e, text_width, None, path)
}

/// Checks that `e` fits a model whose (first) text encoder is `first` wide and whose second
/// one, for SDXL, is `second` wide (`None`: the model has one text encoder). A one-encoder
/// embedding does not fit an SDXL model, nor an SDXL embedding a one-encoder model: A1111 skips
/// both (its width check compares 768 + 1280 with the model's), diffusers cannot load either
/// without splitting them by hand.
pub fn check_widths(
    e: &LearnedEmbedding,
    first: usize,
    second: Option<usize>,
    path: &Path,
) -> Result<(), EmbeddingError> {
    let mismatch = |embedding: String, model: String, fix: &str| EmbeddingError::ModelMismatch {
        path: path.to_path_buf(),
        token: e.token.clone(),
        embedding,
        model,
        fix: fix.into(),
    };
    let width = |token: String, width: usize, model_width: usize| {
        if width == model_width {
            return Ok(());
        }
        Err(EmbeddingError::WidthMismatch {
            path: path.to_path_buf(),
            token,
            width,
            family: width_family(width),
            model_width,
            model_family: width_family(model_width),
        })
    };
    match (&e.second, second) {
        (None, None) => width(e.token.clone(), e.width, first),
        (Some(g), None) => Err(mismatch(
            format!(
                "an SDXL embedding ({} vector(s) for each of two text encoders, clip_l {} wide \
                 and clip_g {} wide)",
                e.num_vectors, e.width, g.width
            ),
            format!(
                "has one text encoder, {first} wide ({})",
                width_family(first)
            ),
            "SDXL embeddings work with SDXL models only: load an SDXL model, or use an \
             embedding trained for the loaded model's family",
        )),
        (None, Some(model_g)) => Err(mismatch(
            format!(
                "{} wide, rows for one text encoder ({})",
                e.width,
                width_family(e.width)
            ),
            format!("is SDXL-style, with two text encoders ({first} + {model_g} wide)"),
            "An SDXL embedding holds rows for both (clip_l and clip_g): use one trained for \
             SDXL. diffusers' SDXL trainer writes them as two files: keep \
             learned_embeds_2.safetensors next to learned_embeds.safetensors and invert reads \
             both",
        )),
        (Some(g), Some(model_g)) => {
            width(format!("{} (clip_l)", e.token), e.width, first)?;
            width(format!("{} (clip_g)", e.token), g.width, model_g)
        }
    }
}

/// Checks the shape and values of one tensor and builds the embedding.
/// `shape` must be `[n, d]` or `[d]`; the values must be finite.
pub(crate) fn build_embedding(
    path: &Path,
    tensor: &str,
    token: String,
    shape: &[usize],
    values: Vec<f32>,
    meta: EmbeddingMeta,
) -> Result<LearnedEmbedding, EmbeddingError> {
    check_shape(path, tensor, shape)?;
    let (n, d) = match *shape {
        [d] => (1, d),
        [n, d] => (n, d),
        _ => unreachable!("checked"),
    };
    if values.len() != n * d {
        return Err(EmbeddingError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "tensor `{tensor}` of shape {shape:?} has {} values",
                values.len()
            ),
        });
    }
    let e = LearnedEmbedding {
        token,
        vectors: values,
        num_vectors: n,
        width: d,
        second: None,
        meta,
    };
    check_finite(path, &e)?;
    Ok(e)
}

/// Checks a tensor's shape (before its data is read).
pub(crate) fn check_shape(
    path: &Path,
    tensor: &str,
    shape: &[usize],
) -> Result<(), EmbeddingError> {
    let bad = |reason: String| EmbeddingError::BadShape {
        path: path.to_path_buf(),
        tensor: tensor.to_owned(),
        shape: shape.to_vec(),
        reason,
    };
    let (n, d) = match *shape {
        [d] => (1, d),
        [n, d] => (n, d),
        _ => return Err(bad(format!("rank {} instead of 1 or 2", shape.len()))),
    };
    if n == 0 || d == 0 {
        return Err(bad("it is empty".into()));
    }
    if n > MAX_VECTORS {
        return Err(bad(format!(
            "{n} vectors; an embedding has at most {MAX_VECTORS} (CLIP's context is 77 tokens)"
        )));
    }
    Ok(())
}

/// Checks a dtype (before the data is read): float types only.
pub(crate) fn check_dtype(
    path: &Path,
    tensor: &str,
    dtype: StoredDType,
) -> Result<(), EmbeddingError> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(EmbeddingError::BadDType {
            path: path.to_path_buf(),
            tensor: tensor.to_owned(),
            dtype,
        })
    }
}

/// Refuses NaN and infinite values, in both tables of an SDXL embedding (the second named as
/// `token (clip_g)` in the message).
pub(crate) fn check_finite(path: &Path, e: &LearnedEmbedding) -> Result<(), EmbeddingError> {
    let table = |token: String, values: &[f32], width: usize| {
        let count = values.iter().filter(|v| !v.is_finite()).count();
        if count == 0 {
            return Ok(());
        }
        let first = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
        Err(EmbeddingError::NonFinite {
            path: path.to_path_buf(),
            token,
            count,
            vector: first / width.max(1),
            element: first % width.max(1),
        })
    };
    table(e.token.clone(), &e.vectors, e.width)?;
    match &e.second {
        Some(g) => table(format!("{} (clip_g)", e.token), &g.vectors, g.width),
        None => Ok(()),
    }
}

/// The file name without its extension, as A1111 names embeddings.
pub(crate) fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
