//! The CLIP text encoder (SD1.x: OpenAI ViT-L/14 text tower; SD2.x: OpenCLIP ViT-H/14's).

pub mod config;
pub mod keys;
pub mod text_model;

pub use config::CLIPTextConfig;
pub use text_model::CLIPTextModel;
