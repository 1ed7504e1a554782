//! The procedural world of the bundled model: pictures of one shape on a background, with exact
//! labels, deterministic from a seed. The base model (`pretrain`) learns it from captions that
//! leave two attributes unnamed; the oracle (`oracle`) reads every attribute back off a picture,
//! so `invert eval` can measure what the paper measured (reconstruction vs editability).

pub mod captions;
pub mod concepts;
pub mod render;
pub mod scene;

pub use captions::caption;
pub use render::render;
pub use scene::{ATTRIBUTES, Attribute, Scene};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The `index`-th picture of the world drawn from `seed`: its scene and caption, independent of
/// every other index (so any subset can be regenerated alone).
pub fn sample(seed: u64, index: u64) -> (Scene, String) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let scene = Scene::random(&mut rng);
    let text = caption(&scene, &mut rng);
    (scene, text)
}

/// Pictures as a `[n, 3, size, size]` tensor in [-1, 1], as the VAE takes them.
pub fn pictures_tensor(
    scenes: &[Scene],
    size: usize,
    device: &burn::prelude::Device,
) -> burn::prelude::Tensor<4> {
    let mut values = Vec::with_capacity(scenes.len() * 3 * size * size);
    for s in scenes {
        let rgb = render(s, size);
        for c in 0..3 {
            values.extend((0..size * size).map(|i| rgb[i * 3 + c] as f32 / 127.5 - 1.0));
        }
    }
    burn::prelude::Tensor::from_data(
        burn::prelude::TensorData::new(values, [scenes.len(), 3, size, size]),
        device,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_deterministic_and_independent() {
        assert_eq!(super::sample(7, 3), super::sample(7, 3));
        assert_ne!(super::sample(7, 3), super::sample(7, 4));
        assert_ne!(super::sample(7, 3), super::sample(8, 3));
    }
}
