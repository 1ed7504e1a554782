//! Stage 2: the text encoder alone, taught to read the captions before the U-Net learns from it.
//!
//! `CLIPTextModel` plus one linear head per captioned attribute (shape, colour, size, position,
//! background; each with its values and "not named"), trained with cross-entropy on the **mean
//! of the last hidden states over every position**. That mean is what a cross-attention that has
//! not yet learned where to look reads (uniform attention weights), so the U-Net can use every
//! word of the caption from its first step. Stable Diffusion gets the same from a pretrained
//! CLIP text encoder, kept frozen while the U-Net trains (LDM section 4.3.1); the diffusion stage
//! here also keeps this encoder frozen.
//!
//! Why the stage exists (measured, docs/WORLD.md): trained jointly with the U-Net from scratch,
//! the text encoder passed on mainly the caption's last words, so the base model followed the
//! background (usually named last) and ignored the object's place: at t = 999 the predicted
//! picture varied by 0.0000 between "top left" and "bottom right" where the data vary by 0.15.
//! With this stage first the same U-Net puts the object where the prompt says within a few
//! hundred steps. Captions never name the pattern or the style, so the encoder learns nothing of
//! them: only textual inversion can find them.

use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use invert_model::clip::{CLIPTextConfig, CLIPTextModel};
use invert_model::vocabulary::Vocabulary;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{State, load_module, save_module, save_state};
use super::{PretrainConfig, PretrainError, Progress};
use crate::oracle::model::{heads_nll, log_softmax_heads};
use crate::world::captions::caption_naming;
use crate::world::{ATTRIBUTES, Scene};

/// Seed offset of the text stage's scenes and captions.
const TEXT_STREAM: u64 = 0x5445_5854;
/// The captioned attributes: the first five of [`ATTRIBUTES`].
const CAPTIONED: usize = 5;

/// Classes of each head: the attribute's values and "not named".
fn head_sizes() -> Vec<usize> {
    ATTRIBUTES[..CAPTIONED]
        .iter()
        .map(|a| a.values.len() + 1)
        .collect()
}

pub fn weights_path(work: &std::path::Path) -> std::path::PathBuf {
    work.join("text_encoder.safetensors")
}

/// The text encoder with its attribute heads (the heads are dropped after the stage).
#[derive(Module, Debug)]
pub struct CaptionReader {
    pub text_encoder: CLIPTextModel,
    pub heads: Linear,
}

impl CaptionReader {
    pub fn new(te_config: &CLIPTextConfig, device: &Device) -> Self {
        Self {
            text_encoder: te_config.init(device),
            heads: LinearConfig::new(te_config.hidden_size, head_sizes().iter().sum()).init(device),
        }
    }

    /// Per head, the log-probabilities of each class, `[n, classes]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Vec<Tensor<2>> {
        let hidden = self.text_encoder.forward(ids, None, 1);
        let [n, _, d] = hidden.dims();
        let pooled = hidden.mean_dim(1).reshape([n, d]);
        log_softmax_heads(self.heads.forward(pooled), &head_sizes())
    }
}

/// One step's captions and, per caption, the class of each head.
pub fn step_batch(config: &PretrainConfig, step: usize) -> (Vec<String>, Vec<[usize; CAPTIONED]>) {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ TEXT_STREAM);
    rng.set_stream(step as u64 + 1);
    (0..config.text_batch)
        .map(|_| {
            let scene = Scene::random(&mut rng);
            let (caption, named) = caption_naming(&scene, &mut rng);
            let labels = scene.labels();
            let classes = std::array::from_fn(|k| {
                if named[k] {
                    labels[k]
                } else {
                    ATTRIBUTES[k].values.len()
                }
            });
            (caption, classes)
        })
        .unzip()
}

/// Fraction of (caption, attribute) pairs whose class the heads get right.
fn accuracy(parts: &[Tensor<2>], classes: &[[usize; CAPTIONED]]) -> f32 {
    let mut right = 0;
    for (k, p) in parts.iter().enumerate() {
        let idx = p.clone().argmax(1).into_data().convert::<i64>();
        right += idx
            .iter::<i64>()
            .zip(classes)
            .filter(|(v, c)| *v as usize == c[k])
            .count();
    }
    right as f32 / (classes.len() * CAPTIONED) as f32
}

/// Trains (or finishes training) the text encoder, leaving it in `weights_path(work)`.
pub fn run(
    config: &PretrainConfig,
    te_config: &CLIPTextConfig,
    vocab: &Vocabulary,
    work: &std::path::Path,
    state: &mut State,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), PretrainError> {
    let train_device = device.clone().autodiff();
    train_device.seed(config.seed ^ TEXT_STREAM);
    let mut model = CaptionReader::new(te_config, &train_device);
    let path = weights_path(work);
    if state.text_step > 0 {
        load_module(&mut model, &path)?;
    }
    if state.text_done {
        return Ok(());
    }
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    let first = state.text_step;
    for step in first..config.text_steps {
        let (captions, classes) = step_batch(config, step);
        let (ids, _) = vocab
            .encode(&captions, &train_device)
            .map_err(|e| PretrainError::Config(format!("a caption did not tokenize: {e}")))?;
        let parts = model.forward(ids);
        let acc = accuracy(&parts, &classes);
        let labels: Vec<&[usize]> = classes.iter().map(|c| &c[..]).collect();
        let loss = heads_nll(parts, &labels);
        let value = loss.clone().into_scalar::<f32>();
        if !value.is_finite() {
            return Err(PretrainError::Config(format!(
                "the caption loss became {value} at step {}; lower text_lr",
                step + 1
            )));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = config.lr_at(config.text_lr, step, config.text_steps, first);
        model = optim.step(lr, model, grads);
        let done = step + 1;
        progress(Progress {
            stage: "text",
            step: done,
            total: config.text_steps,
            loss: value,
        });
        if done == config.text_steps {
            state.text_accuracy = Some(acc);
        }
        if done % config.checkpoint_every == 0 || done == config.text_steps {
            save_module(&model, &path)?;
            state.text_step = done;
            state.text_done = done == config.text_steps;
            save_state(work, state)?;
        }
    }
    state.text_done = true;
    save_state(work, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_say_what_the_caption_names() {
        let config = PretrainConfig::default();
        let (captions, classes) = step_batch(&config, 3);
        assert_eq!(captions.len(), config.text_batch);
        for (c, k) in captions.iter().zip(&classes) {
            if c.is_empty() {
                assert_eq!(k, &[3, 4, 2, 4, 4], "an empty caption names nothing");
                continue;
            }
            // the shape is always named, and its word is in the caption
            assert!(c.contains(ATTRIBUTES[0].values[k[0]]), "{c:?} {k:?}");
            assert_eq!(
                k[3] < 4,
                ["left", "right"].iter().any(|w| c.contains(w)),
                "{c:?}"
            );
        }
        // deterministic per step
        assert_eq!(step_batch(&config, 3).0, captions);
        assert_ne!(step_batch(&config, 4).0, captions);
    }
}
