//! The world oracle: a small classifier that reads every attribute of the world (including the
//! two no caption names) off a picture, trained on rendered pictures with exact labels. It is
//! the judge of `invert eval` (in place of the paper's CLIP similarities, with exact labels).

pub mod model;
pub mod train;

use std::path::Path;

pub use model::{Oracle, OracleConfig};
pub use train::{Accuracy, OracleTraining};

use crate::pretrain::PretrainError;
use crate::pretrain::checkpoint::{load_module, save_module};

/// Saves the oracle as `dir/oracle.safetensors` + `dir/config.json` + `dir/accuracy.json`.
pub fn save(
    dir: &Path,
    oracle: &Oracle,
    config: &OracleConfig,
    accuracy: &Accuracy,
) -> Result<(), PretrainError> {
    let err = |path: &Path, e: String| PretrainError::File {
        path: path.to_path_buf(),
        reason: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e.to_string()))?;
    save_module(oracle, &dir.join("oracle.safetensors"))?;
    for (name, value) in [
        ("config.json", serde_json::to_value(config).expect("json")),
        (
            "accuracy.json",
            serde_json::to_value(accuracy).expect("json"),
        ),
    ] {
        let path = dir.join(name);
        let bytes = serde_json::to_vec_pretty(&value).expect("json");
        invert_model::weights::safetensors_write::write_atomic(&path, &bytes, true)
            .map_err(|e| err(&path, e.to_string()))?;
    }
    Ok(())
}

/// Loads an oracle saved by [`save`].
pub fn load(
    dir: &Path,
    device: &burn::prelude::Device,
) -> Result<(Oracle, OracleConfig), PretrainError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| PretrainError::File {
        path: path.clone(),
        reason: format!("{e}; train one with `invert oracle train`"),
    })?;
    let config: OracleConfig = serde_json::from_str(&text).map_err(|e| PretrainError::File {
        path: path.clone(),
        reason: format!("not an oracle config: {e}"),
    })?;
    let mut oracle = config.init(device);
    load_module(&mut oracle, &dir.join("oracle.safetensors"))?;
    Ok((oracle, config))
}
