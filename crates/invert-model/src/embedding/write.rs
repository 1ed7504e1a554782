//! Writing embeddings in the formats other tools load.

use std::collections::BTreeMap;
use std::path::Path;

use super::{EmbeddingError, LearnedEmbedding, check_finite};
use crate::weights::StoredDType;
use crate::weights::WeightError;
use crate::weights::safetensors_write::write_safetensors;
use crate::weights::torch_write::{PickleValue, TensorData, write_torch_zip};

/// The file formats invert writes. All store float32 `[num_vectors, width]`.
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
}

impl WriteFormat {
    /// The file name the format's own tool uses for `token`.
    pub fn default_file_name(self, token: &str) -> String {
        match self {
            WriteFormat::Diffusers => "learned_embeds.safetensors".into(),
            WriteFormat::A1111 => format!("{}.pt", sanitize(token)),
            WriteFormat::Kohya => format!("{}.safetensors", sanitize(token)),
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
/// then renamed); refuses to replace an existing file unless `overwrite`.
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
    if e.num_vectors == 0
        || e.width == 0
        || e.num_vectors.checked_mul(e.width) != Some(e.vectors.len())
    {
        return Err(invalid(format!(
            "{} values do not make {} vectors of width {}",
            e.vectors.len(),
            e.num_vectors,
            e.width
        )));
    }
    check_finite(path, e)?;
    if !overwrite && path.symlink_metadata().is_ok() {
        return Err(EmbeddingError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let data: Vec<u8> = e.vectors.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shape = [e.num_vectors, e.width];
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
                &metadata(e),
                overwrite,
            )
        }
        WriteFormat::A1111 => {
            let opt_str = |s: &Option<String>| match s {
                Some(s) => PickleValue::Str(s.clone()),
                None => PickleValue::None,
            };
            let tensor = PickleValue::Tensor(TensorData {
                dtype: StoredDType::F32,
                shape: shape.to_vec(),
                data: &data,
            });
            let step = match e.meta.step.map(i64::try_from) {
                Some(Ok(s)) => PickleValue::Int(s),
                _ => PickleValue::None,
            };
            let root = PickleValue::Dict(vec![
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
            ]);
            write_torch_zip(path, &root, overwrite)
        }
    };
    result.map_err(|err| match err {
        WeightError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
            EmbeddingError::AlreadyExists {
                path: path.to_path_buf(),
            }
        }
        other => other.into(),
    })
}

/// The safetensors metadata invert writes.
fn metadata(e: &LearnedEmbedding) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("token".into(), e.token.clone());
    m.insert("vectors".into(), e.num_vectors.to_string());
    m.insert("width".into(), e.width.to_string());
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
