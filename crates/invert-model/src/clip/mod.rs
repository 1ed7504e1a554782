//! CLIP. The text encoders of Stable Diffusion (SD1.x: OpenAI ViT-L/14 text tower; SD2.x:
//! OpenCLIP ViT-H/14's; SDXL: both ViT-L/14's and, with its projection, OpenCLIP ViT-bigG/14's),
//! and the whole CLIP model for image and text scores: `CLIPModel`, `CLIPVisionModel`, transformers'
//! `CLIPImageProcessor`, and their loader.
//!
//! For scores: [`load_clip`] a folder or checkpoint, then
//! [`CLIPImageProcessor::pixel_values`] of RGB8 images into [`CLIPModel::get_image_features`], and
//! [`ClipTokenizer::encode`](crate::tokenizer::ClipTokenizer::encode) ids into
//! [`CLIPModel::get_text_features`].

pub mod clip_config;
pub mod clip_model;
pub mod config;
pub mod image_processor;
pub mod keys;
pub mod load;
pub mod model_keys;
pub mod resample;
pub mod text_model;
pub mod text_model_with_projection;
pub mod vision_config;
pub mod vision_model;

pub use clip_config::CLIPConfig;
pub use clip_model::{CLIPModel, pooled_positions};
pub use config::CLIPTextConfig;
pub use image_processor::{CLIPImageProcessor, PreprocessError, RgbImage};
pub use load::{
    ClipLoadError, ClipLoadOptions, LoadedClip, LoadedClipVision, load_clip, load_clip_vision,
};
pub use model_keys::ClipLayout;
pub use text_model::CLIPTextModel;
pub use text_model_with_projection::CLIPTextModelWithProjection;
pub use vision_config::CLIPVisionConfig;
pub use vision_model::{CLIPVisionModel, VisionOutput};
