//! The vocabulary shared by the per-model key tables (`clip/keys.rs`, `unet/keys.rs`,
//! `vae/keys.rs`): where one model parameter's values come from in a checkpoint file.

/// How to build one tensor of the diffusers/transformers layout from a checkpoint tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    /// Full name of the tensor in the checkpoint file.
    pub key: String,
    /// Take chunk `index` of `count` equal chunks along dim 0 (OpenCLIP's fused
    /// `in_proj_weight` / `in_proj_bias` hold q, k and v stacked in that order).
    pub chunk: Option<(usize, usize)>,
    /// Drop trailing 1-sized dims so a 1x1 conv weight `[o, i, 1, 1]` becomes a linear
    /// weight `[o, i]` (LDM VAE attention stores q/k/v/proj_out as 1x1 convs).
    pub squeeze_to_2d: bool,
    /// Swap the two dims of a 2-D tensor: OpenCLIP's `text_projection` is a parameter used as
    /// `x @ P` (`[width, projection]`), transformers' a `Linear` weight (`[projection, width]`).
    pub transpose: bool,
}

impl KeySource {
    /// The tensor as it is.
    pub fn plain(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            chunk: None,
            squeeze_to_2d: false,
            transpose: false,
        }
    }
}

/// What a single-file (CompVis/LDM) key table makes of the keys of one model in a checkpoint:
/// `unet::keys::unet_from_ldm`, `vae::keys::vae_from_ldm` and `clip::keys::clip_from_ldm`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LdmMapping {
    /// (diffusers/transformers key, where its tensor comes from), in checkpoint key order.
    pub mapped: Vec<(String, KeySource)>,
    /// Keys under the model's prefix that the table does not understand; the caller should
    /// report them as unexpected. Keys it knows and deliberately leaves out (buffers, EMA copies
    /// not asked for, layers past the configured depth) are not listed.
    pub unmapped: Vec<String>,
}

impl LdmMapping {
    /// Errors when two checkpoint tensors would fill one diffusers key (diffusers' converters
    /// silently keep the last one; a file with both is malformed).
    pub fn check_unique(&self) -> Result<(), String> {
        let mut seen = std::collections::HashMap::new();
        for (target, src) in &self.mapped {
            if let Some(first) = seen.insert(target.as_str(), src.key.as_str()) {
                return Err(format!(
                    "checkpoint keys {first} and {} both map to {target}",
                    src.key
                ));
            }
        }
        Ok(())
    }
}
