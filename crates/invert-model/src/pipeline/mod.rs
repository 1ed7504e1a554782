//! Image generation with a loaded model and any learned words.

pub mod noise;
pub mod text_to_image;

pub use noise::NoiseGenerator;
pub use text_to_image::{GenerateError, Image, Request, decode, sample_latents};
