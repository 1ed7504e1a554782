//! Pretraining checkpoints: a module's parameters in burn's own names (burn-store, f32), written
//! atomically, and `state.json` saying which stage reached which step.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use invert_model::weights::safetensors_write::write_atomic;
use serde::{Deserialize, Serialize};

use super::PretrainError;

fn file_error(path: &Path, reason: impl ToString) -> PretrainError {
    PretrainError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Progress of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub vae_step: usize,
    pub vae_done: bool,
    /// The VAE's latent scaling factor (1 / std of the cached latents), once computed.
    pub scaling_factor: Option<f64>,
    #[serde(default)]
    pub text_step: usize,
    #[serde(default)]
    pub text_done: bool,
    /// Share of caption attributes the text stage's heads read right on its last batch.
    #[serde(default)]
    pub text_accuracy: Option<f32>,
    pub diffusion_step: usize,
    pub diffusion_done: bool,
    /// The config the run started with (a resume with another one is refused).
    pub config: Option<super::PretrainConfig>,
}

pub fn state_path(work: &Path) -> PathBuf {
    work.join("state.json")
}

pub fn load_state(work: &Path) -> Result<State, PretrainError> {
    let path = state_path(work);
    if !path.exists() {
        return Ok(State::default());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        file_error(
            &path,
            format!("not a pretraining state file ({e}); delete the work folder to start over"),
        )
    })
}

pub fn save_state(work: &Path, state: &State) -> Result<(), PretrainError> {
    let path = state_path(work);
    let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
    write_atomic(&path, &bytes, true).map_err(|e| file_error(&path, e))
}

/// Saves `module`'s parameters to `path`.
pub fn save_module<M: Module + ModuleSnapshot>(
    module: &M,
    path: &Path,
) -> Result<(), PretrainError> {
    let mut store = SafetensorsStore::from_bytes(None);
    module
        .save_into(&mut store)
        .map_err(|e| file_error(path, e))?;
    let bytes = store.get_bytes().map_err(|e| file_error(path, e))?;
    write_atomic(path, &bytes, true).map_err(|e| file_error(path, e))
}

/// Loads parameters saved by [`save_module`] into `module` (every parameter must be there).
pub fn load_module<M: Module + ModuleSnapshot>(
    module: &mut M,
    path: &Path,
) -> Result<(), PretrainError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let result = module.load_from(&mut store).map_err(|e| {
        file_error(
            path,
            format!(
                "not a checkpoint of this architecture ({e}); delete the work folder to start over"
            ),
        )
    })?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(file_error(
            path,
            format!(
                "does not fit this architecture ({} missing, {} errors); delete the work folder to start over",
                result.missing.len(),
                result.errors.len()
            ),
        ));
    }
    Ok(())
}
