//! Reading tensors from the files users have: safetensors (single, sharded), torch `.ckpt`/`.bin`
//! (zip + pickle, read without executing anything).
//!
//! Every format is exposed through [`TensorReader`]: a set of named tensors whose metadata is
//! known up front and whose data is read from disk only when asked for, one tensor at a time, so
//! loading a model never holds more than the model plus one tensor in memory.

use std::path::PathBuf;

pub mod convert;
pub mod pickle;
pub mod safetensors_file;
pub mod safetensors_write;
pub mod torch_write;
pub mod torch_zip;

/// Element type of a tensor as stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StoredDType {
    pub fn size(self) -> usize {
        match self {
            StoredDType::F64 | StoredDType::I64 => 8,
            StoredDType::F32 | StoredDType::I32 => 4,
            StoredDType::F16 | StoredDType::BF16 | StoredDType::I16 => 2,
            StoredDType::I8 | StoredDType::U8 | StoredDType::Bool => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(
            self,
            StoredDType::F64 | StoredDType::F32 | StoredDType::F16 | StoredDType::BF16
        )
    }
}

/// Shape and element type of one stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    pub dtype: StoredDType,
    pub shape: Vec<usize>,
}

impl TensorMeta {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Errors while reading a weights file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not what its extension says, or its structure is broken (truncated,
    /// offsets out of range, shapes that do not match the data length, ...).
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A pickle referenced a Python global outside the allow-list; nothing was executed.
    #[error(
        "{path}: refusing to load: the pickle references `{global}`, which is not a tensor type. \
         invert never executes code from checkpoint files; convert the file to .safetensors \
         with a tool you trust"
    )]
    UnsafeGlobal { path: PathBuf, global: String },
    #[error("{path}: no tensor named `{name}`")]
    NoSuchTensor { path: PathBuf, name: String },
    /// NaN or infinity in a weight: the model would silently produce black or noise images.
    #[error(
        "{path}: tensor `{name}` holds {count} NaN/infinite value(s) (first at element {first}); \
         the checkpoint is damaged or was saved from a diverged run: re-download or re-export it"
    )]
    NonFinite {
        path: PathBuf,
        name: String,
        count: usize,
        first: usize,
    },
    #[error("{path}: tensor `{name}` has dtype {dtype:?}, which cannot be read as float")]
    NotFloat {
        path: PathBuf,
        name: String,
        dtype: StoredDType,
    },
}

/// A set of named tensors on disk.
pub trait TensorReader: Send + Sync {
    /// The file this reader reads (for messages).
    fn path(&self) -> &std::path::Path;
    /// All tensor names, sorted.
    fn names(&self) -> Vec<String>;
    fn meta(&self, name: &str) -> Option<&TensorMeta>;
    /// The tensor's values as f32 in row-major (C) order, converted from f64/f16/bf16.
    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError>;
}

/// Refuses values with NaN or infinity, naming the tensor (checked when weights are loaded;
/// one pass over data that was just read, cheap next to reading it).
pub fn check_finite(path: &std::path::Path, name: &str, values: &[f32]) -> Result<(), WeightError> {
    let Some(first) = values.iter().position(|v| !v.is_finite()) else {
        return Ok(());
    };
    Err(WeightError::NonFinite {
        path: path.to_path_buf(),
        name: name.to_string(),
        count: values[first..].iter().filter(|v| !v.is_finite()).count(),
        first,
    })
}
