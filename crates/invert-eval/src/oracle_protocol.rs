//! `invert eval`: what the bundled model and words learned on it can do, judged by the world
//! oracle (exact attributes instead of the paper's CLIP similarities):
//! - base-model prompt fidelity, per captioned attribute;
//! - for each concept set, the paper's two axes (Gal et al. 2022, section 5.1 and Figure 10):
//!   reconstruction (pictures from "a photo of S*" show the concept) and editability (prompts
//!   that also ask for other attributes are obeyed), for the learned word and two baselines: the
//!   initialiser word and the best plain-text description;
//! - composition: an object word in a style word.

use burn::prelude::*;
use invert_model::loading::StableDiffusion;
use invert_model::pipeline::{Image, Request, decode, sample_latents};
use invert_model::schedulers::{SamplerConfig, SamplerKind};
use invert_model::vocabulary::Vocabulary;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use invert_world::oracle::Oracle;
use invert_world::world::concepts::{Concept, resolve};
use invert_world::world::scene::{BACKGROUND, COLOUR, POSITION, SHAPE, SIZE};
use invert_world::world::{ATTRIBUTES, Scene};

/// Classifier-free guidance of the measurements. Stable Diffusion's usual 7.5 over-saturates the
/// bundled model's colours (docs/WORLD.md: colour fidelity 89.6% at 7.5, 95.3% at 5, 99.5% at 2
/// and 3); shape fidelity is the same within noise from 2 to 5.
pub const WORLD_GUIDANCE: f64 = 3.0;

/// How pictures are generated for the measurements.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub images_per_prompt: usize,
    pub fidelity_prompts: usize,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    pub sampler: SamplerKind,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            images_per_prompt: 16,
            fidelity_prompts: 96,
            steps: 25,
            guidance: WORLD_GUIDANCE,
            seed: 1000,
            sampler: SamplerKind::Ddim,
        }
    }
}

/// Generates and judges pictures.
pub struct Judge<'a> {
    pub sd: &'a StableDiffusion,
    pub vocab: &'a Vocabulary,
    pub oracle: &'a Oracle,
    pub settings: EvalSettings,
    pub device: Device,
}

/// One prompt's pictures and what the oracle read in them.
pub struct Judged {
    pub images: Vec<Image>,
    pub labels: Vec<[usize; 7]>,
}

impl Judge<'_> {
    /// `count` pictures of `prompt` (seeds from `seed`) with their oracle labels.
    pub fn judge(&self, prompt: &str, seed: u64, count: usize) -> Result<Judged, String> {
        let native = self.sd.config.vae.downscale_factor() * self.sd.config.unet_sample_size();
        let request = Request {
            prompt: prompt.to_string(),
            negative: String::new(),
            steps: self.settings.steps,
            guidance: self.settings.guidance,
            seed,
            width: native,
            height: native,
            sampler: SamplerConfig::new(self.settings.sampler),
            clip_skip: 1,
            emphasis: Default::default(),
            init_latents: None,
        };
        let latents = sample_latents(
            self.sd,
            self.vocab,
            &request,
            count,
            &self.device,
            |_, _| {},
        )
        .map_err(|e| format!("{prompt:?}: {e}"))?;
        let images = decode(self.sd, latents, seed);
        let scenes_tensor = images_tensor(&images, &self.device);
        let labels = self.oracle.predict(scenes_tensor);
        Ok(Judged { images, labels })
    }
}

/// Decoded pictures as the oracle's input, `[n, 3, h, w]` in [-1, 1].
pub fn images_tensor(images: &[Image], device: &Device) -> Tensor<4> {
    let (w, h) = (images[0].width, images[0].height);
    let mut v = Vec::with_capacity(images.len() * 3 * w * h);
    for im in images {
        for c in 0..3 {
            v.extend((0..w * h).map(|i| im.rgb[i * 3 + c] as f32 / 127.5 - 1.0));
        }
    }
    Tensor::from_data(TensorData::new(v, [images.len(), 3, h, w]), device)
}

/// The fidelity prompt of a scene: every captioned attribute named.
pub fn full_prompt(s: &Scene) -> String {
    format!(
        "a photo of a {} {} {} at the {} on a {} background",
        SIZE.values[s.size],
        COLOUR.values[s.colour],
        SHAPE.values[s.shape],
        POSITION.values[s.position],
        BACKGROUND.values[s.background]
    )
}

/// Per captioned attribute: (name, fraction of pictures showing the asked value), and the same
/// per asked value (which value of an attribute the model gets wrong).
#[derive(Debug, Clone, Serialize)]
pub struct Fidelity {
    pub attributes: Vec<(String, f64)>,
    pub values: Vec<Vec<(String, f64)>>,
    pub pictures: usize,
}

pub fn fidelity(
    judge: &Judge,
    mut keep: impl FnMut(&str, &[Image]),
    mut on_prompt: impl FnMut(usize, usize),
) -> Result<Fidelity, String> {
    let s = &judge.settings;
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let captioned: Vec<usize> = (0..ATTRIBUTES.len())
        .filter(|&a| ATTRIBUTES[a].captioned)
        .collect();
    let mut right = vec![0usize; captioned.len()];
    // per attribute and asked value: (pictures, right)
    let mut by_value: Vec<Vec<(usize, usize)>> = captioned
        .iter()
        .map(|&a| vec![(0, 0); ATTRIBUTES[a].values.len()])
        .collect();
    let per = (s.images_per_prompt / 4).max(1);
    let mut total = 0;
    for p in 0..s.fidelity_prompts {
        let scene = Scene::random(&mut rng);
        let prompt = full_prompt(&scene);
        let judged = judge.judge(&prompt, s.seed + (p * per) as u64, per)?;
        keep(&prompt, &judged.images);
        for l in &judged.labels {
            for (k, &a) in captioned.iter().enumerate() {
                let asked = scene.labels()[a];
                let ok = usize::from(l[a] == asked);
                right[k] += ok;
                by_value[k][asked].0 += 1;
                by_value[k][asked].1 += ok;
            }
        }
        total += judged.labels.len();
        on_prompt(p + 1, s.fidelity_prompts);
    }
    Ok(Fidelity {
        attributes: captioned
            .iter()
            .zip(&right)
            .map(|(&a, &r)| (ATTRIBUTES[a].name.to_string(), r as f64 / total as f64))
            .collect(),
        values: captioned
            .iter()
            .zip(&by_value)
            .map(|(&a, counts)| {
                ATTRIBUTES[a]
                    .values
                    .iter()
                    .zip(counts)
                    .filter(|(_, (n, _))| *n > 0)
                    .map(|(v, &(n, r))| (v.to_string(), r as f64 / n as f64))
                    .collect()
            })
            .collect(),
        pictures: total,
    })
}

/// The word under test in a prompt: the learned token, the initialiser word or the best text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Method {
    Learned,
    InitWord,
    BestText,
    /// The prompt with the word left out (the paper's "prompt only" baseline; CLIP protocol).
    PromptOnly,
}

impl Method {
    /// The methods the world's oracle protocol measures.
    pub const WORLD: [Method; 3] = [Method::Learned, Method::InitWord, Method::BestText];
    pub const ALL: [Method; 4] = [
        Method::Learned,
        Method::InitWord,
        Method::BestText,
        Method::PromptOnly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Learned => "learned word",
            Method::InitWord => "initialiser word",
            Method::BestText => "best plain text",
            Method::PromptOnly => "prompt only",
        }
    }

    /// Its folder name in an experiment's output.
    pub fn folder(self) -> &'static str {
        match self {
            Method::Learned => "learned",
            Method::InitWord => "init-word",
            Method::BestText => "text",
            Method::PromptOnly => "prompt-only",
        }
    }

    /// What stands for `{}` in the concept's prompts.
    pub fn filler(self, c: &Concept) -> String {
        match (self, c.kind) {
            (Method::Learned, _) => c.token.to_string(),
            (Method::InitWord, _) => c.init_word.to_string(),
            (Method::BestText, _) => c.best_text.to_string(),
            (Method::PromptOnly, _) => String::new(),
        }
    }
}

/// One (concept, method) point of Figure 10.
#[derive(Debug, Clone, Serialize)]
pub struct ConceptScore {
    pub concept: String,
    pub method: Method,
    pub reconstruction: f64,
    pub editability: f64,
    /// Per edit prompt: (prompt, how well it is obeyed, how much of the concept is kept): with
    /// the oracle the fractions of pictures, with CLIP the text and image similarities.
    pub edits: Vec<(String, f64, f64)>,
}

pub fn concept_scores(
    judge: &Judge,
    concept: &Concept,
    method: Method,
    mut keep: impl FnMut(&str, &[Image]),
) -> Result<ConceptScore, String> {
    let s = &judge.settings;
    let filler = method.filler(concept);
    let recon_prompt = concept.reconstruction.replace("{}", &filler);
    let judged = judge.judge(&recon_prompt, s.seed, s.images_per_prompt)?;
    keep(&recon_prompt, &judged.images);
    let shown = |labels: &[[usize; 7]]| {
        labels.iter().filter(|l| concept.shown_in(&l[..])).count() as f64 / labels.len() as f64
    };
    let reconstruction = shown(&judged.labels);
    let mut edits = Vec::new();
    for e in &concept.edits {
        let prompt = e.template.replace("{}", &filler);
        let judged = judge.judge(&prompt, s.seed, s.images_per_prompt)?;
        keep(&prompt, &judged.images);
        let obeyed = judged
            .labels
            .iter()
            .filter(|l| {
                e.asks.iter().all(|&p| {
                    let (a, v) = resolve(p);
                    l[a] == v
                })
            })
            .count() as f64
            / judged.labels.len() as f64;
        edits.push((prompt, obeyed, shown(&judged.labels)));
    }
    let editability = edits.iter().map(|e| e.1).sum::<f64>() / edits.len().max(1) as f64;
    Ok(ConceptScore {
        concept: concept.name.to_string(),
        method,
        reconstruction,
        editability,
        edits,
    })
}

/// Composition: an object word in a style word.
#[derive(Debug, Clone, Serialize)]
pub struct Composition {
    pub prompt: String,
    /// Fraction showing the object's identity, the style's, and both.
    pub object: f64,
    pub style: f64,
    pub both: f64,
}

pub fn composition(
    judge: &Judge,
    object: &Concept,
    style: &Concept,
    mut keep: impl FnMut(&str, &[Image]),
) -> Result<Composition, String> {
    let prompt = format!(
        "a photo of {} in the style of {}",
        object.token, style.token
    );
    let judged = judge.judge(
        &prompt,
        judge.settings.seed,
        judge.settings.images_per_prompt,
    )?;
    keep(&prompt, &judged.images);
    let n = judged.labels.len() as f64;
    let count = |f: &dyn Fn(&[usize]) -> bool| {
        judged.labels.iter().filter(|l| f(&l[..])).count() as f64 / n
    };
    Ok(Composition {
        object: count(&|l| object.shown_in(l)),
        style: count(&|l| style.shown_in(l)),
        both: count(&|l| object.shown_in(l) && style.shown_in(l)),
        prompt,
    })
}
