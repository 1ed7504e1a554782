//! Image generation with a loaded model and any learned words.

pub mod images;
pub mod noise;
pub mod prompt_encoding;
pub mod text_to_image;

pub use images::{Parameters, a1111_sampler_name, encode_png, grid, grid_columns};
pub use noise::NoiseGenerator;
pub use prompt_encoding::{LearnedRows, TextConditioning, encode_prompts, sdxl_time_ids};
pub use text_to_image::{GenerateError, Image, Request, decode, sample_latents, validate};
