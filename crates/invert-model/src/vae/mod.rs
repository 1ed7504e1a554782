//! The variational autoencoder between images and latents.

pub mod autoencoder_kl;
pub mod config;
pub mod keys;
pub mod vae_blocks;

pub use autoencoder_kl::{AutoencoderKL, DiagonalGaussian};
pub use config::AutoencoderKLConfig;
