//! The paper's quantitative experiment (Gal et al. 2022, section 5.1, Figure 10) on any model:
//! for each learned word and its baselines, generate images of "a photo of S*" and of editing
//! prompts, then score reconstruction (CLIP image similarity of the "a photo of" images to the
//! training set) and editability (CLIP text similarity of the edited images to their prompt
//! without the word), with the definitions of [`crate::clip_metrics`].
//!
//! Sampling follows the paper's evaluation code (rinongal/textual_inversion
//! `evaluation/clip_eval.py`, `LDMCLIPEvaluator.evaluate`): 64 images per prompt, DDIM 50 steps,
//! eta 0, guidance 5, empty negative prompt. Training images are squashed to 256x256 (bicubic)
//! first, as the paper's data loader does before they reach CLIP.
//!
//! Images are written as they are made (`OUT/images/<subject>/<method>/<prompt>/NNN.png`, seed
//! `seed + NNN`) with the settings that made them (`settings.json`), so a run that stops can be
//! resumed: images already there with the same settings are read back instead of generated.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use image::RgbImage;
use invert_model::clip::resample::resize_bicubic_antialias;
use invert_model::loading::StableDiffusion;
use invert_model::pipeline::{Image, Request, decode, encode_png, sample_latents};
use invert_model::schedulers::{SamplerConfig, SamplerKind};
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::safetensors_write::write_atomic;
use serde::{Deserialize, Serialize};

use crate::Method;
use crate::clip_metrics::{Reading, image_similarity, prompt_without_words, text_similarity};
use crate::oracle_protocol::ConceptScore;

/// The reconstruction prompt (`{}` stands for the word under test).
pub const RECONSTRUCTION_PROMPT: &str = "a photo of {}";

/// The editing prompts the paper names (section 5.1, Figure 10's examples).
pub const PAPER_EDIT_PROMPTS: [&str; 3] = [
    "a photo of {} on the moon",
    "an oil painting of {}",
    "Elmo holding a {}",
];

/// invert's default list beyond the paper's three: the kinds of edit the paper's figures show
/// (new context, art style, material, composition with another object).
pub const DEFAULT_EXTRA_PROMPTS: [&str; 5] = [
    "a watercolor painting of {}",
    "{} as an app icon",
    "a photo of {} in the jungle",
    "a photo of {} with a dog",
    "a sculpture of {} made of wood",
];

/// The side training images are squashed to before CLIP sees them (the paper's data loader).
pub const TRAINING_IMAGE_SIZE: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum PaperError {
    #[error("{0}")]
    Generate(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(
        "{path} holds images made with other settings ({found}); use another --out or remove that folder"
    )]
    OtherSettings { path: PathBuf, found: String },
    #[error("CLIP: {0}")]
    Clip(String),
    #[error("{subject}: no {what} to score")]
    Nothing { subject: String, what: &'static str },
}

/// CLIP as the experiment uses it: features of RGB8 images and of texts (unnormalised; the
/// metrics normalise).
pub trait ClipFeatures {
    fn image_features(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, String>;
    fn text_features(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String>;
}

/// How the experiment's images are made and read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperSettings {
    pub images_per_prompt: usize,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    pub sampler: SamplerKind,
    /// Images denoised together.
    pub batch_size: usize,
    /// Width and height in pixels (the model's native size when `None`).
    pub size: Option<usize>,
    pub reading: Reading,
}

impl Default for PaperSettings {
    fn default() -> Self {
        Self {
            images_per_prompt: 64,
            steps: 50,
            guidance: 5.0,
            seed: 0,
            sampler: SamplerKind::Ddim,
            batch_size: 8,
            size: None,
            reading: Reading::PairwiseMean,
        }
    }
}

/// One learned word under test, with what its baselines put in its place.
#[derive(Debug, Clone)]
pub struct Subject {
    /// A short name for folders and the table (e.g. the embedding's file stem).
    pub name: String,
    /// The learned token as written in prompts.
    pub token: String,
    /// The initialiser word (baseline "initialiser word"), if known.
    pub init_word: Option<String>,
    /// A plain-text description (baseline "best plain text"), if given.
    pub description: Option<String>,
    /// The training images (reconstruction is measured against them).
    pub training: Vec<RgbImage>,
}

impl Subject {
    /// The methods this subject can be measured with: the learned word, the baselines it has
    /// text for, and the prompt alone.
    pub fn methods(&self) -> Vec<Method> {
        let mut m = vec![Method::Learned];
        if self.init_word.is_some() {
            m.push(Method::InitWord);
        }
        if self.description.is_some() {
            m.push(Method::BestText);
        }
        m.push(Method::PromptOnly);
        m
    }

    /// The text that stands for `{}` in a prompt for `method`.
    pub fn filler(&self, method: Method) -> String {
        match method {
            Method::Learned => self.token.clone(),
            Method::InitWord => self.init_word.clone().unwrap_or_default(),
            Method::BestText => self.description.clone().unwrap_or_default(),
            Method::PromptOnly => String::new(),
        }
    }
}

/// `template` with `{}` replaced by `filler`, spaces collapsed.
pub fn fill(template: &str, filler: &str) -> String {
    prompt_without_words(&template.replace("{}", filler), &[])
}

/// A training image as the paper's evaluation sees it: squashed to 256x256, bicubic (the
/// paper's loader uses PIL's antialiased bicubic; this is the same filter CLIP's preprocessing
/// uses here).
pub fn squash_training_image(image: &RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    let side = TRAINING_IMAGE_SIZE;
    let rgb = resize_bicubic_antialias(
        image.as_raw(),
        w as usize,
        h as usize,
        3,
        side as usize,
        side as usize,
    );
    RgbImage::from_raw(side, side, rgb).expect("resized buffer")
}

/// What `settings.json` in each image folder records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FolderSettings {
    prompt: String,
    steps: usize,
    guidance: f64,
    seed: u64,
    sampler: SamplerKind,
    width: usize,
    height: usize,
}

/// Runs the experiment's generation and scoring.
pub struct PaperExperiment<'a> {
    pub sd: &'a StableDiffusion,
    pub vocab: &'a Vocabulary,
    pub settings: PaperSettings,
    pub out: PathBuf,
    pub device: Device,
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> PaperError {
    PaperError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A folder-safe short form of a prompt.
fn slug(i: usize, prompt: &str) -> String {
    let s: String = prompt
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s = s
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    format!("{i:02}-{}", s.chars().take(48).collect::<String>())
}

impl PaperExperiment<'_> {
    fn size(&self) -> usize {
        self.settings.size.unwrap_or_else(|| {
            self.sd.config.vae.downscale_factor() * self.sd.config.unet_sample_size()
        })
    }

    /// The images of one prompt: read back where already made with these settings, generated
    /// (and written) where missing. `progress` is called with the number of images ready.
    pub fn images(
        &self,
        folder: &Path,
        prompt: &str,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<RgbImage>, PaperError> {
        let s = &self.settings;
        let size = self.size();
        let wanted = FolderSettings {
            prompt: prompt.to_string(),
            steps: s.steps,
            guidance: s.guidance,
            seed: s.seed,
            sampler: s.sampler,
            width: size,
            height: size,
        };
        std::fs::create_dir_all(folder).map_err(|e| file_err(folder, e))?;
        let settings_path = folder.join("settings.json");
        match std::fs::read(&settings_path) {
            Ok(bytes) => {
                let found: Option<FolderSettings> = serde_json::from_slice(&bytes).ok();
                if found.as_ref() != Some(&wanted) {
                    return Err(PaperError::OtherSettings {
                        path: folder.to_path_buf(),
                        found: String::from_utf8_lossy(&bytes).trim().to_string(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let json = serde_json::to_vec_pretty(&wanted).expect("settings serialise");
                write_atomic(&settings_path, &json, true)
                    .map_err(|e| file_err(&settings_path, e))?;
            }
            Err(e) => return Err(file_err(&settings_path, e)),
        }

        let n = s.images_per_prompt;
        let path_of = |i: usize| folder.join(format!("{i:03}.png"));
        let mut images: Vec<Option<RgbImage>> = (0..n)
            .map(|i| image::open(path_of(i)).ok().map(|im| im.to_rgb8()))
            .collect();
        progress(images.iter().flatten().count());
        let batch = s.batch_size.max(1);
        let mut start = 0;
        while start < n {
            let end = (start + batch).min(n);
            if images[start..end].iter().any(Option::is_none) {
                let made = self.generate(prompt, s.seed + start as u64, end - start, size)?;
                for (k, image) in made.into_iter().enumerate() {
                    let i = start + k;
                    let text = format!(
                        "{prompt}\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {size}x{size}",
                        s.steps,
                        s.sampler.name(),
                        s.guidance,
                        image.seed
                    );
                    let png = encode_png(&image, &[("parameters", text)])
                        .map_err(|e| file_err(&path_of(i), e))?;
                    write_atomic(&path_of(i), &png, true).map_err(|e| file_err(&path_of(i), e))?;
                    images[i] = Some(
                        RgbImage::from_raw(image.width as u32, image.height as u32, image.rgb)
                            .expect("decoded image buffer"),
                    );
                }
                progress(images.iter().flatten().count());
            }
            start = end;
        }
        Ok(images
            .into_iter()
            .map(|i| i.expect("every image made"))
            .collect())
    }

    fn generate(
        &self,
        prompt: &str,
        seed: u64,
        count: usize,
        size: usize,
    ) -> Result<Vec<Image>, PaperError> {
        let s = &self.settings;
        let request = Request {
            prompt: prompt.to_string(),
            negative: String::new(),
            steps: s.steps,
            guidance: s.guidance,
            seed,
            width: size,
            height: size,
            sampler: SamplerConfig::new(s.sampler),
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
        .map_err(|e| PaperError::Generate(format!("{prompt:?}: {e}")))?;
        Ok(decode(self.sd, latents, seed))
    }

    /// Scores one subject with every method it has: generates (or reads back) the
    /// reconstruction prompt's images and each editing prompt's, and measures them with `clip`.
    /// `progress(method, prompt, images ready)` reports generation.
    pub fn score_subject(
        &self,
        subject: &Subject,
        edit_prompts: &[String],
        clip: &dyn ClipFeatures,
        mut progress: impl FnMut(Method, &str, usize),
    ) -> Result<Vec<ConceptScore>, PaperError> {
        if subject.training.is_empty() {
            return Err(PaperError::Nothing {
                subject: subject.name.clone(),
                what: "training images",
            });
        }
        let reading = self.settings.reading;
        let squashed: Vec<RgbImage> = subject.training.iter().map(squash_training_image).collect();
        let training = clip.image_features(&squashed).map_err(PaperError::Clip)?;
        // The text each edit is measured against: the prompt with the word removed (the same
        // for every method, so that methods are compared on one scale).
        let edit_texts: Vec<String> = edit_prompts.iter().map(|p| fill(p, "")).collect();
        let edit_text_features = clip.text_features(&edit_texts).map_err(PaperError::Clip)?;

        let mut scores = Vec::new();
        for method in subject.methods() {
            let filler = subject.filler(method);
            let base = self
                .out
                .join("images")
                .join(&subject.name)
                .join(method.folder());
            let prompt = fill(RECONSTRUCTION_PROMPT, &filler);
            let images = self.images(&base.join(slug(0, RECONSTRUCTION_PROMPT)), &prompt, |k| {
                progress(method, &prompt, k)
            })?;
            let features = clip.image_features(&images).map_err(PaperError::Clip)?;
            let reconstruction =
                image_similarity(&training, &features, reading).ok_or_else(|| {
                    PaperError::Clip("image features of different widths".to_string())
                })?;
            let mut edits = Vec::new();
            for (i, (template, text)) in edit_prompts.iter().zip(&edit_text_features).enumerate() {
                let prompt = fill(template, &filler);
                let images = self.images(&base.join(slug(i + 1, template)), &prompt, |k| {
                    progress(method, &prompt, k)
                })?;
                let features = clip.image_features(&images).map_err(PaperError::Clip)?;
                let (Some(t), Some(kept)) = (
                    text_similarity(text, &features, reading),
                    image_similarity(&training, &features, reading),
                ) else {
                    return Err(PaperError::Clip("features of different widths".to_string()));
                };
                edits.push((prompt, t, kept));
            }
            if edits.is_empty() {
                return Err(PaperError::Nothing {
                    subject: subject.name.clone(),
                    what: "editing prompts",
                });
            }
            let editability = edits.iter().map(|e| e.1).sum::<f64>() / edits.len() as f64;
            scores.push(ConceptScore {
                concept: subject.name.clone(),
                method,
                reconstruction,
                editability,
                edits,
            });
        }
        Ok(scores)
    }
}
