//! Writing embeddings in the formats other tools load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{EmbeddingError, LearnedEmbedding, check_finite, sdxl, width_family};
use crate::weights::StoredDType;
use crate::weights::WeightError;
use crate::weights::safetensors_write::{safetensors_bytes, write_atomic_all, write_safetensors};
use crate::weights::torch_write::{PickleValue, TensorData, write_torch_zip};

/// The file formats invert writes. All store float32 `[num_vectors, width]` tables. The first
/// three hold one text encoder's rows (SD 1.x/2.x), the last two SDXL's two tables; an
/// embedding is written only in a format of its kind (see [`write_embedding`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteFormat {
    /// diffusers' `learned_embeds.safetensors`: `{token: F32[n, d]}`, metadata `format=pt`,
    /// `token`, `vectors`, `width`, `base_model`, `base_model_hash`, `step`, `invert_version`.
    /// `StableDiffusionPipeline.load_textual_inversion` loads it (a multi-vector token becomes
    /// `token token_1 ...`), and so do A1111, ComfyUI and InvokeAI.
    Diffusers,
    /// A1111's `.pt` (a torch zip): `{"string_to_token": {"*": 265}, "string_to_param": {"*":
    /// F32[n, d]}, "name": token, "step", "sd_checkpoint": base model hash, "sd_checkpoint_name":
    /// base model}`. A1111 names the embedding after the file stem. torch.load (also
    /// `weights_only=True`) and diffusers' loader read it.
    A1111,
    /// kohya sd-scripts' safetensors: `{"emb_params": F32[n, d]}`, with the same metadata as
    /// [`WriteFormat::Diffusers`]. Other tools name the embedding after the file stem.
    Kohya,
    /// SDXL in one safetensors file, `{"clip_l": F32[n, 768], "clip_g": F32[n, 1280]}`, as
    /// kohya sd-scripts, OneTrainer and invoke-training write it; metadata as
    /// [`WriteFormat::Diffusers`] (`width` is clip_l's) plus `width_clip_g`. A1111, ComfyUI and
    /// invert read it (named after the file stem, or invert's `token` metadata); diffusers
    /// loads it in two calls, `load_textual_inversion(sd["clip_l"], token=..., text_encoder=
    /// pipe.text_encoder, tokenizer=pipe.tokenizer)` and the same for `clip_g` with
    /// `text_encoder_2`/`tokenizer_2`. The default for SDXL embeddings.
    Sdxl,
    /// diffusers' `textual_inversion_sdxl.py` form: two [`WriteFormat::Diffusers`] files,
    /// `learned_embeds.safetensors` (`{token: F32[n, 768]}`, clip_l) and, next to it,
    /// `learned_embeds_2.safetensors` (`{token: F32[n, 1280]}`, clip_g); the path given must be
    /// named `learned_embeds.safetensors` or `learned_embeds-steps-N.safetensors` (the second
    /// file's name follows from it). diffusers loads them with `load_textual_inversion(path)`
    /// for the first and with `text_encoder_2`/`tokenizer_2` for the second.
    DiffusersSdxl,
}

impl WriteFormat {
    /// The file name the format's own tool uses for `token` (for
    /// [`WriteFormat::DiffusersSdxl`], the first file's).
    pub fn default_file_name(self, token: &str) -> String {
        match self {
            WriteFormat::Diffusers | WriteFormat::DiffusersSdxl => {
                "learned_embeds.safetensors".into()
            }
            WriteFormat::A1111 => format!("{}.pt", sanitize(token)),
            WriteFormat::Kohya | WriteFormat::Sdxl => format!("{}.safetensors", sanitize(token)),
        }
    }

    /// The format to write `e` in when nobody chose one: diffusers' for one text encoder,
    /// `{clip_l, clip_g}` for SDXL.
    pub fn default_for(e: &LearnedEmbedding) -> WriteFormat {
        if e.second.is_some() {
            WriteFormat::Sdxl
        } else {
            WriteFormat::Diffusers
        }
    }

    /// Whether the format holds SDXL's two tables.
    pub fn is_sdxl(self) -> bool {
        matches!(self, WriteFormat::Sdxl | WriteFormat::DiffusersSdxl)
    }

    /// The format's name in messages (and `invert embedding convert --format`).
    pub fn name(self) -> &'static str {
        match self {
            WriteFormat::Diffusers => "diffusers",
            WriteFormat::A1111 => "a1111",
            WriteFormat::Kohya => "kohya",
            WriteFormat::Sdxl => "sdxl",
            WriteFormat::DiffusersSdxl => "diffusers-sdxl",
        }
    }

    /// Every file `format` writes for `path`: `path`, and for [`WriteFormat::DiffusersSdxl`]
    /// the second file next to it (`None` when `path` is not named as that format needs).
    pub fn files(self, path: &Path) -> Option<Vec<PathBuf>> {
        match self {
            WriteFormat::DiffusersSdxl => Some(vec![path.to_path_buf(), sdxl::second_file(path)?]),
            _ => Some(vec![path.to_path_buf()]),
        }
    }
}

/// A1111's file-name rule: keep alphanumerics and `._- `.
fn sanitize(token: &str) -> String {
    let s: String = token
        .chars()
        .filter(|c| c.is_alphanumeric() || "._- ".contains(*c))
        .collect();
    if s.trim().is_empty() {
        "embedding".into()
    } else {
        s
    }
}

/// A1111's `string_to_token` value: the CLIP id of `*`, which A1111 writes and never reads.
const A1111_STAR_ID: i64 = 265;

/// Writes `e` to `path` in `format`, atomically (a temporary file in the same folder, flushed,
/// then renamed; diffusers' two files are both flushed before either is renamed); refuses to
/// replace an existing file unless `overwrite`. An SDXL embedding is written only in an SDXL
/// format and a one-encoder embedding only in the others: dropping SDXL's clip_g rows silently
/// would make a file that loads everywhere and draws something else.
pub fn write_embedding(
    e: &LearnedEmbedding,
    path: &Path,
    format: WriteFormat,
    overwrite: bool,
) -> Result<(), EmbeddingError> {
    let invalid = |reason: String| EmbeddingError::Invalid {
        path: path.to_path_buf(),
        reason: format!("cannot write this embedding: {reason}"),
    };
    if e.token.trim().is_empty() {
        return Err(invalid("its token name is empty".into()));
    }
    let whole = |values: usize, width: usize| {
        e.num_vectors != 0 && width != 0 && e.num_vectors.checked_mul(width) == Some(values)
    };
    if !whole(e.vectors.len(), e.width) {
        return Err(invalid(format!(
            "{} values do not make {} vectors of width {}",
            e.vectors.len(),
            e.num_vectors,
            e.width
        )));
    }
    if let Some(g) = e
        .second
        .as_ref()
        .filter(|g| !whole(g.vectors.len(), g.width))
    {
        return Err(invalid(format!(
            "its clip_g table's {} values do not make {} vectors of width {}",
            g.vectors.len(),
            e.num_vectors,
            g.width
        )));
    }
    match (&e.second, format.is_sdxl()) {
        (Some(_), false) => {
            return Err(invalid(format!(
                "it is an SDXL embedding (rows for clip_l and clip_g), and the {} format holds \
                 one text encoder's rows. Write it as sdxl ({{clip_l, clip_g}} in one file, as \
                 kohya, OneTrainer and invoke-training write it) or diffusers-sdxl \
                 (learned_embeds.safetensors + learned_embeds_2.safetensors; the first alone \
                 is a diffusers file of the clip_l rows)",
                format.name()
            )));
        }
        (None, true) => {
            return Err(invalid(format!(
                "it has rows for one text encoder ({} wide: {}), and the {} format is for \
                 SDXL embeddings, which hold rows for both of SDXL's text encoders. Write it \
                 as diffusers, a1111 or kohya",
                e.width,
                width_family(e.width),
                format.name()
            )));
        }
        _ => {}
    }
    let files = format.files(path).ok_or_else(|| {
        invalid(
            "diffusers' two-file SDXL form is learned_embeds.safetensors with \
             learned_embeds_2.safetensors next to it (or learned_embeds-steps-N and \
             learned_embeds_2-steps-N), the names diffusers' SDXL trainer writes and invert \
             reads as a pair: name the output learned_embeds.safetensors, in a folder of its \
             own"
            .into(),
        )
    })?;
    check_finite(path, e)?;
    if let Some(p) = files
        .iter()
        .find(|p| !overwrite && p.symlink_metadata().is_ok())
    {
        return Err(EmbeddingError::AlreadyExists { path: p.clone() });
    }
    let le = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let data = le(&e.vectors);
    let shape = [e.num_vectors, e.width];
    // Empty for one-encoder embeddings, which reach only the formats that do not use it.
    let (g_data, g_shape) = match &e.second {
        Some(g) => (le(&g.vectors), [e.num_vectors, g.width]),
        None => (Vec::new(), [0, 0]),
    };
    let (g_data, g_shape) = (&g_data, &g_shape);
    let result = match format {
        WriteFormat::Diffusers | WriteFormat::Kohya => {
            let name = if format == WriteFormat::Kohya {
                "emb_params"
            } else {
                e.token.as_str()
            };
            write_safetensors(
                path,
                &[(name, StoredDType::F32, &shape, &data)],
                &metadata(e, e.width),
                overwrite,
            )
        }
        WriteFormat::A1111 => write_torch_zip(path, &a1111_dict(e, &data), overwrite),
        WriteFormat::Sdxl => {
            let mut meta = metadata(e, e.width);
            meta.insert("width_clip_g".into(), g_shape[1].to_string());
            write_safetensors(
                path,
                &[
                    ("clip_l", StoredDType::F32, &shape, &data),
                    ("clip_g", StoredDType::F32, g_shape, g_data),
                ],
                &meta,
                overwrite,
            )
        }
        WriteFormat::DiffusersSdxl => {
            let token = e.token.as_str();
            let first = safetensors_bytes(
                path,
                &[(token, StoredDType::F32, &shape, &data)],
                &metadata(e, e.width),
            );
            let second = safetensors_bytes(
                &files[1],
                &[(token, StoredDType::F32, g_shape, g_data)],
                &metadata(e, g_shape[1]),
            );
            match (first, second) {
                // The second file is put in place first: should the first then fail, without
                // `overwrite` the second is removed again.
                (Ok(first), Ok(second)) => {
                    write_atomic_all(&[(files[1].as_path(), &second), (path, &first)], overwrite)
                }
                (Err(err), _) | (_, Err(err)) => Err(err),
            }
        }
    };
    result.map_err(|err| match err {
        WeightError::Io { path, source } if source.kind() == std::io::ErrorKind::AlreadyExists => {
            EmbeddingError::AlreadyExists { path }
        }
        other => other.into(),
    })
}

/// A1111's `Embedding.save` dict for `e`, whose rows are `data` (little-endian F32).
fn a1111_dict<'a>(e: &LearnedEmbedding, data: &'a [u8]) -> PickleValue<'a> {
    let opt_str = |s: &Option<String>| match s {
        Some(s) => PickleValue::Str(s.clone()),
        None => PickleValue::None,
    };
    let tensor = PickleValue::Tensor(TensorData {
        dtype: StoredDType::F32,
        shape: vec![e.num_vectors, e.width],
        data,
    });
    let step = match e.meta.step.map(i64::try_from) {
        Some(Ok(s)) => PickleValue::Int(s),
        _ => PickleValue::None,
    };
    PickleValue::Dict(vec![
        (
            "string_to_token".into(),
            PickleValue::Dict(vec![("*".into(), PickleValue::Int(A1111_STAR_ID))]),
        ),
        (
            "string_to_param".into(),
            PickleValue::Dict(vec![("*".into(), tensor)]),
        ),
        ("name".into(), PickleValue::Str(e.token.clone())),
        ("step".into(), step),
        ("sd_checkpoint".into(), opt_str(&e.meta.base_model_hash)),
        ("sd_checkpoint_name".into(), opt_str(&e.meta.base_model)),
    ])
}

/// The safetensors metadata invert writes (`width`: the file's table's).
fn metadata(e: &LearnedEmbedding, width: usize) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("token".into(), e.token.clone());
    m.insert("vectors".into(), e.num_vectors.to_string());
    m.insert("width".into(), width.to_string());
    m.insert("invert_version".into(), env!("CARGO_PKG_VERSION").into());
    if let Some(step) = e.meta.step {
        m.insert("step".into(), step.to_string());
    }
    if let Some(b) = &e.meta.base_model {
        m.insert("base_model".into(), b.clone());
    }
    if let Some(h) = &e.meta.base_model_hash {
        m.insert("base_model_hash".into(), h.clone());
    }
    m
}
