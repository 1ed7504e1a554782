//! Image generation with a loaded model and any learned words: text-to-image, and
//! image-to-image from a picture (`image_to_image.rs`), sharing one denoising loop
//! (`denoise.rs`); DDIM inversion of a picture for editing (`ddim_inversion.rs`), refined by
//! null-text inversion (`null_text_inversion.rs`).

pub mod ddim_inversion;
pub mod denoise;
pub mod image_processor;
pub mod image_to_image;
pub mod images;
pub mod noise;
pub mod null_text_inversion;
pub mod prompt_encoding;
pub mod text_to_image;

pub use ddim_inversion::{
    DdimInversionConfig, InvertedImage, Reconstruction, invert_image, measure, reconstruct,
};
pub use denoise::{Guidance, denoise, denoise_with, guided_prediction, init_sampler};
pub use image_processor::{InitImageError, default_size, load_init_image, preprocess};
pub use image_to_image::{
    ImageToImage, check_strength, get_timesteps, prepare_latents, sample_latents_from_image,
    validate_image_to_image,
};
pub use images::{Parameters, a1111_sampler_name, encode_png, grid, grid_columns};
pub use noise::{NoiseGenerator, NoiseSource, SeededNoise};
pub use null_text_inversion::{
    NullTextConfig, NullTextError, NullTextInversion, null_text_inversion,
};
pub use prompt_encoding::{LearnedRows, TextConditioning, encode_prompts, sdxl_time_ids};
pub use text_to_image::{GenerateError, Image, Request, decode, sample_latents, validate};
