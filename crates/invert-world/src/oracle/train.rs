//! Training the oracle on rendered pictures with their exact labels, and measuring it on
//! held-out pictures. Training pictures are degraded at random (blur, noise, colour shifts) so
//! the oracle also reads the softer pictures a diffusion model draws. It is also measured on a
//! VAE's reconstructions of the held-out pictures: every picture `invert eval` judges comes out
//! of that decoder, so what it loses no generated picture can show (docs/WORLD.md, the oracle).

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use invert_model::vae::AutoencoderKL;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::model::{Oracle, OracleConfig};
use crate::world::{self, ATTRIBUTES, Scene};

const TRAIN_STREAM: u64 = 0x4f52_4143;
const HELD_OUT_STREAM: u64 = 0x4845_4c44;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OracleTraining {
    pub seed: u64,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub held_out: usize,
}

impl Default for OracleTraining {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 1500,
            batch: 64,
            lr: 2e-3,
            held_out: 2000,
        }
    }
}

/// Held-out accuracy per attribute (in `ATTRIBUTES` order), on clean and degraded pictures
/// and, when measured with a VAE, on its reconstructions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accuracy {
    pub attributes: Vec<String>,
    pub clean: Vec<f64>,
    pub degraded: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<Vec<f64>>,
    pub pictures: usize,
}

/// Softens `pixels` (`[3, s, s]` in [-1, 1]) as a generated picture may be: a blend with its
/// 3x3 box blur, Gaussian noise, and a small brightness and colour shift.
pub fn degrade(pixels: &mut [f32], size: usize, rng: &mut impl Rng) {
    let blur_amount: f32 = rng.random_range(0.0..1.0);
    let noise: f32 = rng.random_range(0.0..0.1);
    let shift: [f32; 3] = [
        rng.random_range(-0.06..0.06),
        rng.random_range(-0.06..0.06),
        rng.random_range(-0.06..0.06),
    ];
    let original = pixels.to_vec();
    for c in 0..3 {
        let plane = &original[c * size * size..(c + 1) * size * size];
        for y in 0..size {
            for x in 0..size {
                let mut acc = 0.0;
                let mut n = 0.0;
                for dy in -1i32..=1 {
                    for dx in -1i32..=1 {
                        let (yy, xx) = (y as i32 + dy, x as i32 + dx);
                        if yy >= 0 && xx >= 0 && (yy as usize) < size && (xx as usize) < size {
                            acc += plane[yy as usize * size + xx as usize];
                            n += 1.0;
                        }
                    }
                }
                let i = c * size * size + y * size + x;
                let v = plane[y * size + x] * (1.0 - blur_amount) + acc / n * blur_amount;
                let gauss: f32 = {
                    // Box-Muller
                    let (u1, u2): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
                    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                };
                pixels[i] = (v + shift[c] + noise * gauss).clamp(-1.0, 1.0);
            }
        }
    }
}

fn pictures(
    scenes: &[Scene],
    size: usize,
    degrade_with: Option<&mut ChaCha8Rng>,
    device: &Device,
) -> Tensor<4> {
    let t = world::pictures_tensor(scenes, size, device);
    match degrade_with {
        None => t,
        Some(rng) => {
            let mut v = t.into_data().try_to_vec::<f32>().expect("f32");
            for chunk in v.chunks_mut(3 * size * size) {
                degrade(chunk, size, rng);
            }
            Tensor::from_data(TensorData::new(v, [scenes.len(), 3, size, size]), device)
        }
    }
}

/// The pictures of `scenes` as `vae` reconstructs them (posterior mean, decoded, rounded to 8
/// bits as `pipeline::decode` writes a generated picture), on `device`.
fn decoded(vae: &AutoencoderKL, scenes: &[Scene], size: usize, device: &Device) -> Tensor<4> {
    let vae_device = vae.encoder.conv_in.weight.val().device();
    let images = world::pictures_tensor(scenes, size, &vae_device);
    let rebuilt = vae
        .decode(vae.encode(images).mean)
        .cast(burn::tensor::DType::F32)
        .clamp(-1.0, 1.0)
        .add_scalar(1.0)
        .mul_scalar(127.5)
        .round()
        .div_scalar(127.5)
        .sub_scalar(1.0);
    Tensor::from_data(rebuilt.into_data(), device)
}

/// Trains an oracle; `progress(step, loss)` after each step.
pub fn train(
    config: &OracleConfig,
    training: &OracleTraining,
    device: &Device,
    progress: &mut dyn FnMut(usize, f32),
) -> Oracle {
    let train_device = device.clone().autodiff();
    train_device.seed(training.seed);
    let mut model = config.init(&train_device);
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    let mut rng = ChaCha8Rng::seed_from_u64(training.seed ^ TRAIN_STREAM);
    for step in 0..training.steps {
        let scenes: Vec<Scene> = (0..training.batch)
            .map(|i| {
                world::sample(
                    training.seed ^ TRAIN_STREAM,
                    (step * training.batch + i) as u64,
                )
                .0
            })
            .collect();
        let labels: Vec<[usize; 7]> = scenes.iter().map(Scene::labels).collect();
        // half of each batch degraded
        let half = training.batch / 2;
        let clean = pictures(&scenes[..half], config.image_size, None, &train_device);
        let soft = pictures(
            &scenes[half..],
            config.image_size,
            Some(&mut rng),
            &train_device,
        );
        let images = Tensor::cat(vec![clean, soft], 0);
        let loss = model.loss(images, &labels);
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let progress_frac = step as f64 / training.steps as f64;
        let lr = training.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress_frac).cos());
        model = optim.step(lr.max(training.lr * 0.02), model, grads);
        progress(step + 1, value);
    }
    model.valid()
}

/// Per-attribute accuracy of `oracle` on held-out pictures (and on `vae`'s reconstructions of
/// them, when given).
pub fn measure(
    oracle: &Oracle,
    config: &OracleConfig,
    training: &OracleTraining,
    vae: Option<&AutoencoderKL>,
    device: &Device,
) -> Accuracy {
    let mut rng = ChaCha8Rng::seed_from_u64(training.seed ^ HELD_OUT_STREAM);
    let scenes: Vec<Scene> = (0..training.held_out)
        .map(|i| world::sample(training.seed ^ HELD_OUT_STREAM, i as u64).0)
        .collect();
    let mut clean = vec![0usize; ATTRIBUTES.len()];
    let mut degraded = vec![0usize; ATTRIBUTES.len()];
    let mut rebuilt = vec![0usize; ATTRIBUTES.len()];
    let count = |counts: &mut Vec<usize>, images: Tensor<4>, chunk: &[Scene]| {
        for (pred, s) in oracle.predict(images).iter().zip(chunk) {
            for (a, count) in counts.iter_mut().enumerate() {
                *count += usize::from(pred[a] == s.labels()[a]);
            }
        }
    };
    let size = config.image_size;
    for chunk in scenes.chunks(256) {
        count(&mut clean, pictures(chunk, size, None, device), chunk);
        count(
            &mut degraded,
            pictures(chunk, size, Some(&mut rng), device),
            chunk,
        );
        if let Some(vae) = vae {
            count(&mut rebuilt, decoded(vae, chunk, size, device), chunk);
        }
    }
    let n = scenes.len() as f64;
    let fractions = |counts: Vec<usize>| counts.iter().map(|&c| c as f64 / n).collect();
    Accuracy {
        attributes: ATTRIBUTES.iter().map(|a| a.name.to_string()).collect(),
        clean: fractions(clean),
        degraded: fractions(degraded),
        decoded: vae.map(|_| fractions(rebuilt)),
        pictures: scenes.len(),
    }
}
