//! Writing a model component as a diffusers/transformers `.safetensors` file, the inverse of
//! `loading::diffusers_folder`: burn paths become checkpoint keys through the component's key
//! table (`*/keys.rs`, `from_burn_path`), and burn-store's `BurnToPyTorchAdapter` gives back
//! PyTorch layouts (`Linear` weights transposed, norms' `gamma`/`beta` named `weight`/`bias`).
//! Written through `write_atomic`, so a crash never leaves half a file.

use std::path::Path;

use burn::module::Module;
use burn::store::{
    BurnToPyTorchAdapter, FloatCastAdapter, ModuleAdapter, ModuleSnapshot, SafetensorsStore,
};
use burn::tensor::DType;

use crate::weights::WeightError;

/// Which component a file holds (selects the key table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    TextEncoder,
    UNet,
    Vae,
}

impl Component {
    /// (regex on burn paths, replacement) turning burn paths into checkpoint keys.
    fn key_patterns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Component::UNet => crate::unet::keys::FROM_BURN_PATTERNS,
            Component::TextEncoder | Component::Vae => &[],
        }
    }
}

/// Saves `module` to `path` with tensors stored as `dtype` (F32, F16 or BF16).
pub fn save_component<M: Module + ModuleSnapshot>(
    module: &M,
    component: Component,
    path: &Path,
    dtype: DType,
) -> Result<(), WeightError> {
    let mut store = SafetensorsStore::from_bytes(None)
        .metadata("format", "pt")
        // enum modules (e.g. `proj_in: Projection::Conv`) add their variant to burn paths
        .skip_enum_variants(true)
        .with_to_adapter(BurnToPyTorchAdapter.chain(FloatCastAdapter::to(dtype)));
    for (from, to) in component.key_patterns() {
        store = store.with_key_remapping(*from, *to);
    }
    let failed = |e: String| WeightError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("could not serialise the weights: {e}"),
    };
    module
        .save_into(&mut store)
        .map_err(|e| failed(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| failed(e.to_string()))?;
    crate::weights::safetensors_write::write_atomic(path, &bytes, true)
}
