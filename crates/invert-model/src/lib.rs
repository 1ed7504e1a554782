//! Stable Diffusion 1.x/2.x/XL models for invert, in burn: the CLIP text encoder, the U-Net and the
//! VAE, with diffusers' module structure and names, and the loaders for the files users have.

pub mod attention;
pub mod clip;
pub mod cpu;
pub mod device;
pub mod embedding;
pub mod fused;
pub mod inspect;
pub mod keymap;
pub mod layers;
pub mod loading;
pub mod pipeline;
pub mod prompt;
pub mod prompt_to_prompt;
pub mod resnet;
pub mod saving;
pub mod schedulers;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vocabulary;
pub mod weights;
