//! Puts checkpoint tensors into a burn module.
//!
//! The caller says, for each burn parameter path, which checkpoint tensor (and which slice of
//! it) feeds it. Each tensor is read from disk only when burn asks for it, converted to the
//! compute dtype and dropped, so peak memory is the model plus one tensor. Layout differences
//! (PyTorch `Linear` weights are transposed relative to burn's, norms call their parameters
//! `gamma`/`beta`) are handled by burn-store's `PyTorchToBurnAdapter`.

use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::store::{ApplyError, ModuleSnapshot, PyTorchToBurnAdapter};
use burn::tensor::{DType, Shape, TensorData};

use super::LoadError;
use crate::keymap::KeySource;
use crate::weights::{TensorReader, WeightError};

/// One parameter's source.
pub struct Assignment {
    /// burn parameter path, e.g. `down_blocks.1.attentions.0.proj_in.weight`.
    pub path: String,
    pub source: KeySource,
}

/// What a load did, for messages and `--verbose` output.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub applied: usize,
    /// Checkpoint keys the model did not use (excluding known buffers such as `position_ids`).
    pub unexpected: Vec<String>,
}

/// Shape of the tensor `source` produces.
fn source_shape(reader: &dyn TensorReader, source: &KeySource) -> Result<Vec<usize>, LoadError> {
    let meta = reader.meta(&source.key).ok_or_else(|| {
        LoadError::Weights(WeightError::NoSuchTensor {
            path: reader.path().to_path_buf(),
            name: source.key.clone(),
        })
    })?;
    if !meta.dtype.is_float() {
        return Err(LoadError::Weights(WeightError::NotFloat {
            path: reader.path().to_path_buf(),
            name: source.key.clone(),
            dtype: meta.dtype,
        }));
    }
    let mut shape = meta.shape.clone();
    if let Some((_, count)) = source.chunk {
        if shape.is_empty() || count == 0 || shape[0] % count != 0 {
            return Err(LoadError::Layout {
                path: reader.path().to_path_buf(),
                reason: format!(
                    "`{}` of shape {shape:?} cannot be split into {count} equal parts (q, k, v)",
                    source.key
                ),
            });
        }
        shape[0] /= count;
    }
    if source.squeeze_to_2d {
        while shape.len() > 2 && shape.last() == Some(&1) {
            shape.pop();
        }
    }
    if source.transpose {
        if shape.len() != 2 {
            return Err(LoadError::Layout {
                path: reader.path().to_path_buf(),
                reason: format!("`{}` of shape {shape:?} should be a matrix", source.key),
            });
        }
        shape.swap(0, 1);
    }
    Ok(shape)
}

fn read_source(reader: &dyn TensorReader, source: &KeySource) -> Result<Vec<f32>, WeightError> {
    let values = reader.read_f32(&source.key)?;
    crate::weights::check_finite(reader.path(), &source.key, &values)?;
    let values = match source.chunk {
        Some((index, count)) => {
            let len = values.len() / count;
            values[index * len..(index + 1) * len].to_vec()
        }
        None => values,
    };
    Ok(match reader.meta(&source.key) {
        // `source_shape` checked that a transposed tensor is a matrix.
        Some(meta) if source.transpose && meta.shape.len() == 2 => {
            let (rows, cols) = (meta.shape[0], meta.shape[1]);
            let mut out = vec![0.0; values.len()];
            for r in 0..rows {
                for c in 0..cols {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
            out
        }
        _ => values,
    })
}

/// Loads `assignments` from `reader` into `module` as `dtype`. Every parameter of the module
/// must be assigned: missing ones and shape mismatches are errors that name the checkpoint key.
/// `family` describes what the caller assumed the checkpoint to be, for messages.
pub fn apply<M: Module + ModuleSnapshot>(
    module: &mut M,
    reader: Arc<dyn TensorReader>,
    assignments: Vec<Assignment>,
    dtype: DType,
    family: &str,
) -> Result<LoadReport, LoadError> {
    let mut tensors = Vec::with_capacity(assignments.len());
    let mut source_of = std::collections::HashMap::new();
    // burn wraps a reader's error in its own text; the first one is kept to be reported as is.
    let read_error: Arc<Mutex<Option<WeightError>>> = Arc::default();
    for a in assignments {
        let shape = source_shape(reader.as_ref(), &a.source)?;
        let shape_for_report = shape.clone();
        let shared = reader.clone();
        let source = a.source.clone();
        let declared = Shape::from(shape.clone());
        let read_error = read_error.clone();
        tensors.push(burn::store::bridge::deferred(
            a.path.clone(),
            dtype,
            declared,
            None,
            move || {
                let values = read_source(shared.as_ref(), &source).map_err(|e| {
                    let msg = e.to_string();
                    let mut slot = read_error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    burn::store::burn_pack::Error::ValidationError(msg)
                })?;
                Ok(TensorData::new(values, shape.clone()).convert_dtype(dtype))
            },
        ));
        if let Some((other, _)) =
            source_of.insert(a.path.clone(), (a.source.key.clone(), shape_for_report))
        {
            return Err(LoadError::Layout {
                path: reader.path().to_path_buf(),
                reason: format!(
                    "tensors `{other}` and `{}` both fill `{}`; the file mixes two key layouts",
                    a.source.key, a.path
                ),
            });
        }
    }
    let result = module.apply(tensors, None, Some(Box::new(PyTorchToBurnAdapter)), true);

    let file = reader.path().to_path_buf();
    let read_error = read_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(e) = read_error {
        return Err(LoadError::Weights(e));
    }
    if let Some(err) = result.errors.first() {
        return Err(match err {
            ApplyError::ShapeMismatch { path, expected, .. } => {
                let (key, found) = source_of
                    .get(path)
                    .cloned()
                    .unwrap_or_else(|| (path.clone(), vec![]));
                // burn stores Linear weights as [in, out]; report in the file's [out, in].
                let mut expected: Vec<usize> = expected.iter().copied().collect();
                if expected.len() == 2 && is_linear_weight(path) {
                    expected.reverse();
                }
                LoadError::ShapeMismatch {
                    path: file,
                    key,
                    found,
                    expected,
                    family: family.to_string(),
                }
            }
            other => LoadError::Layout {
                path: file,
                reason: format!("{other}"),
            },
        });
    }
    if !result.missing.is_empty() {
        let names: Vec<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
        return Err(LoadError::MissingKeys {
            path: file,
            family: family.to_string(),
            keys: names,
        });
    }
    Ok(LoadReport {
        applied: result.applied.len(),
        unexpected: result
            .unused
            .iter()
            .map(|p| {
                source_of
                    .get(p)
                    .map(|s| s.0.clone())
                    .unwrap_or_else(|| p.clone())
            })
            .collect(),
    })
}

/// Linear weights are the 2-D weights that are not embedding tables.
fn is_linear_weight(path: &str) -> bool {
    path.ends_with(".weight") && !path.ends_with("_embedding.weight")
}
