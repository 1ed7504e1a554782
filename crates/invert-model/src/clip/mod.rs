//! The CLIP text encoders (SD1.x: OpenAI ViT-L/14 text tower; SD2.x: OpenCLIP ViT-H/14's;
//! SDXL: both ViT-L/14's and, with its projection, OpenCLIP ViT-bigG/14's).

pub mod config;
pub mod keys;
pub mod text_model;
pub mod text_model_with_projection;

pub use config::CLIPTextConfig;
pub use text_model::CLIPTextModel;
pub use text_model_with_projection::CLIPTextModelWithProjection;
