//! The denoising U-Net.

pub mod config;
pub mod embeddings;
pub mod keys;
pub mod transformer_2d;
pub mod unet_2d_condition;
pub mod unet_blocks;

pub use config::{ADD_TIME_IDS, PerBlock, UNet2DConditionConfig};
pub use unet_2d_condition::{AddedConditions, UNet2DConditionModel};
