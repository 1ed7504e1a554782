//! `invert eval clip` and `invert eval paper`: the paper's CLIP measurements on any model
//! (Gal et al. 2022, section 5.1; definitions in `invert_eval::clip_metrics`, protocol in
//! `invert_eval::paper_experiment`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use invert_eval::clip_metrics::{Reading, image_similarity, prompt_without_words, text_similarity};
use invert_eval::clip_scorer::ClipScorer;
use invert_eval::paper_experiment::{
    ClipFeatures, DEFAULT_EXTRA_PROMPTS, PAPER_EDIT_PROMPTS, PaperExperiment, PaperSettings,
    Subject, squash_training_image,
};
use invert_eval::paper_report::PaperReport;
use invert_model::loading::load;
use invert_model::pipeline::{Image, encode_png};
use invert_model::schedulers::SamplerKind;
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::safetensors_write::write_atomic;
use invert_train::data::{LoadImagesOptions, load_image_folder};
use serde::Serialize;

use super::model::ModelArgs;
use super::words::{add_embedding_files, recorded_init_word};

#[derive(Subcommand)]
pub enum ClipProtocol {
    /// CLIP image similarity (to --reference) and text similarity (to --prompt) of a folder
    /// of generated images.
    Clip(ClipArgs),
    /// The paper's experiment: generate for each learned word and its baselines, score with
    /// CLIP, write the table and the Figure-10 plot.
    Paper(Box<PaperArgs>),
}

#[derive(Args)]
pub struct ClipArgs {
    /// A CLIP model: a transformers folder (e.g. openai/clip-vit-base-patch32, the paper's
    /// ViT-B/32) or an OpenAI / open_clip .safetensors.
    #[arg(long)]
    pub clip: PathBuf,
    /// The generated images to score.
    #[arg(long)]
    pub images: PathBuf,
    /// Training images: reports their CLIP image similarity to --images (reconstruction).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// The prompt the images were made from: reports their CLIP text similarity to it with
    /// the learned words removed (editability).
    #[arg(long)]
    pub prompt: Option<String>,
    /// A learned word to remove from --prompt (repeatable; default: every <...> word and `*`).
    #[arg(long = "word")]
    pub words: Vec<String>,
    /// Cosine of the mean embeddings instead of the mean pairwise cosine.
    #[arg(long)]
    pub mean_embedding: bool,
    /// Also write the numbers here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long, default_value = "auto", help = super::device::DEVICE_HELP)]
    pub device: String,
}

#[derive(Args)]
pub struct PaperArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A CLIP model (transformers folder or OpenAI / open_clip .safetensors).
    #[arg(long)]
    pub clip: PathBuf,
    /// A learned word's embedding file (repeat for several words).
    #[arg(long = "embedding", required = true)]
    pub embeddings: Vec<PathBuf>,
    /// The training images of each --embedding, in the same order.
    #[arg(long = "images", required = true)]
    pub images: Vec<PathBuf>,
    /// The initialiser word of each --embedding, in order ("-" for none; default: what its
    /// `invert train` folder's config.json records).
    #[arg(long = "init")]
    pub init_words: Vec<String>,
    /// A plain-text description of each --embedding's concept, in order (the "best plain
    /// text" baseline; "-" for none).
    #[arg(long = "describe")]
    pub descriptions: Vec<String>,
    /// Editing prompts, one per line with {} for the word (default: the paper's three plus
    /// invert's five).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Only the paper's three editing prompts.
    #[arg(long, conflicts_with = "prompts")]
    pub paper_prompts: bool,
    /// Images per prompt (the paper: 64).
    #[arg(short = 'n', long = "images-per-prompt", default_value_t = 64)]
    pub images_per_prompt: usize,
    /// DDIM steps (the paper: 50).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Guidance scale (the paper's clip_eval.py: 5).
    #[arg(long, default_value_t = 5.0)]
    pub cfg: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Image side in pixels (default: the model's native size).
    #[arg(long)]
    pub size: Option<usize>,
    /// Cosine of the mean embeddings instead of the mean pairwise cosine.
    #[arg(long)]
    pub mean_embedding: bool,
    /// Where images/, report.md, report.json and figure10.png go; images already there with
    /// the same settings are reused.
    #[arg(long, default_value = "out/eval-paper")]
    pub out: PathBuf,
}

pub fn run(protocol: ClipProtocol) -> Result<()> {
    match protocol {
        ClipProtocol::Clip(args) => run_clip(args),
        ClipProtocol::Paper(args) => run_paper(*args),
    }
}

fn reading(mean_embedding: bool) -> Reading {
    if mean_embedding {
        Reading::MeanEmbedding
    } else {
        Reading::PairwiseMean
    }
}

/// The images of a folder of generated pictures (other files, such as `settings.json` or
/// captions, are passed over), in file-name order.
fn load_generated(dir: &Path) -> Result<Vec<RgbImage>> {
    const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "bmp", "gif"];
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the folder of generated images {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!(
            "{}: no images (png, jpg, webp, bmp, gif) to score",
            dir.display()
        );
    }
    paths
        .iter()
        .map(|p| {
            image::open(p)
                .map(|im| im.to_rgb8())
                .with_context(|| format!("{}: not a readable image; remove it", p.display()))
        })
        .collect()
}

/// Training (reference) images, read as `invert train` reads them.
fn load_images(dir: &Path, what: &str) -> Result<Vec<RgbImage>> {
    let set = load_image_folder(dir, &LoadImagesOptions::default())
        .with_context(|| format!("reading the {what} in {}", dir.display()))?;
    for w in &set.warnings {
        eprintln!("warning: {w}");
    }
    Ok(set.images.into_iter().map(|i| i.rgb).collect())
}

fn load_clip(path: &Path, device: &burn::prelude::Device) -> Result<ClipScorer> {
    let scorer = ClipScorer::load(path, device)
        .with_context(|| format!("could not load the CLIP model at {}", path.display()))?;
    if scorer.bundled_tokenizer {
        eprintln!(
            "note: {} has no tokenizer; using CLIP's own BPE (bundled with invert)",
            path.display()
        );
    }
    Ok(scorer)
}

#[derive(Serialize)]
struct ClipNumbers {
    images: usize,
    reading: Reading,
    image_similarity: Option<f64>,
    text: Option<String>,
    text_similarity: Option<f64>,
}

/// The default learned words of a prompt: `<...>` words and the paper's `*`.
fn bracketed_words(prompt: &str) -> Vec<String> {
    let mut words = vec!["*".to_string()];
    let mut rest = prompt;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        words.push(rest[start..start + len + 1].to_string());
        rest = &rest[start + len + 1..];
    }
    words
}

fn run_clip(args: ClipArgs) -> Result<()> {
    if args.reference.is_none() && args.prompt.is_none() {
        bail!("nothing to measure: give --reference TRAIN_DIR, --prompt TEXT, or both");
    }
    let device = super::device::open(&args.device)?.device;
    let clip = load_clip(&args.clip, &device)?;
    let generated = load_generated(&args.images)?;
    let features = clip.image_features(&generated).map_err(|e| anyhow!(e))?;
    let reading = reading(args.mean_embedding);
    let mut numbers = ClipNumbers {
        images: generated.len(),
        reading,
        image_similarity: None,
        text: None,
        text_similarity: None,
    };
    if let Some(dir) = &args.reference {
        let training: Vec<RgbImage> = load_images(dir, "reference images")?
            .iter()
            .map(squash_training_image)
            .collect();
        let reference = clip.image_features(&training).map_err(|e| anyhow!(e))?;
        numbers.image_similarity = image_similarity(&reference, &features, reading);
        println!(
            "image similarity (CLIP-I, reconstruction): {:.4}  ({} reference x {} generated)",
            numbers.image_similarity.unwrap_or(f64::NAN),
            training.len(),
            generated.len()
        );
    }
    if let Some(prompt) = &args.prompt {
        let words = if args.words.is_empty() {
            bracketed_words(prompt)
        } else {
            args.words.clone()
        };
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let text = prompt_without_words(prompt, &words);
        let t = clip
            .text_features(std::slice::from_ref(&text))
            .map_err(|e| anyhow!(e))?;
        numbers.text_similarity = text_similarity(&t[0], &features, reading);
        println!(
            "text similarity (CLIP-T, editability): {:.4}  (text {text:?})",
            numbers.text_similarity.unwrap_or(f64::NAN)
        );
        numbers.text = Some(text);
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&numbers).expect("numbers serialise");
        write_atomic(path, &json, true).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `list[i]`, with "-" meaning none.
fn nth(list: &[String], i: usize) -> Option<String> {
    list.get(i).filter(|s| s.as_str() != "-").cloned()
}

fn edit_prompts(args: &PaperArgs) -> Result<Vec<String>> {
    let prompts: Vec<String> = match &args.prompts {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
        None if args.paper_prompts => PAPER_EDIT_PROMPTS.map(String::from).to_vec(),
        None => PAPER_EDIT_PROMPTS
            .iter()
            .chain(&DEFAULT_EXTRA_PROMPTS)
            .map(|p| p.to_string())
            .collect(),
    };
    if let Some(p) = prompts.iter().find(|p| !p.contains("{}")) {
        bail!("editing prompt {p:?} has no {{}} where the word goes");
    }
    if prompts.is_empty() {
        bail!("no editing prompts");
    }
    Ok(prompts)
}

fn run_paper(args: PaperArgs) -> Result<()> {
    if args.embeddings.len() != args.images.len() {
        bail!(
            "{} --embedding but {} --images: give each learned word its training images, in \
             the same order",
            args.embeddings.len(),
            args.images.len()
        );
    }
    if args.images_per_prompt == 0 || args.steps == 0 || args.batch_size == 0 {
        bail!("--images-per-prompt, --steps and --batch-size must be at least 1");
    }
    let prompts = edit_prompts(&args)?;
    let (device, options) = args.model.device_and_options()?;
    let model_path = args.model.path();
    let sd = load(&model_path, &options, &device)
        .with_context(|| format!("could not load the model at {}", model_path.display()))?;
    let clip = load_clip(&args.clip, &device)?;
    let mut vocab = Vocabulary::for_model(&sd).context("setting up the tokenizer")?;
    let mut subjects = Vec::new();
    for (i, (path, dir)) in args.embeddings.iter().zip(&args.images).enumerate() {
        let words = add_embedding_files(&mut vocab, std::slice::from_ref(path))?;
        let [(word, _)] = words.as_slice() else {
            bail!(
                "{} holds {} words; the experiment needs one word per --embedding",
                path.display(),
                words.len()
            );
        };
        let name = word
            .token
            .trim_matches(|c| c == '<' || c == '>')
            .to_string();
        subjects.push(Subject {
            name: if name.is_empty() {
                format!("word{i}")
            } else {
                name
            },
            token: word.token.clone(),
            init_word: match args.init_words.get(i).map(String::as_str) {
                Some("-") => None,
                Some(w) => Some(w.to_string()),
                None => recorded_init_word(path),
            },
            description: nth(&args.descriptions, i),
            training: load_images(dir, "training images")?,
        });
    }
    let settings = PaperSettings {
        images_per_prompt: args.images_per_prompt,
        steps: args.steps,
        guidance: args.cfg,
        seed: args.seed,
        sampler: SamplerKind::Ddim,
        batch_size: args.batch_size,
        size: args.size,
        reading: reading(args.mean_embedding),
    };
    let experiment = PaperExperiment {
        sd: &sd,
        vocab: &vocab,
        settings: settings.clone(),
        out: args.out.clone(),
        device,
    };
    let total: usize = subjects
        .iter()
        .map(|s| s.methods().len() * (1 + prompts.len()) * args.images_per_prompt)
        .sum();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images ({eta} left) {msg}")
            .expect("template"),
    );
    let mut scores = Vec::new();
    for subject in &subjects {
        // `ready` counts one prompt's images; a new prompt starts from the bar's position.
        let (mut prompt_seen, mut start) = (String::new(), bar.position());
        let s = experiment
            .score_subject(subject, &prompts, &clip, |method, prompt, ready| {
                if prompt_seen != prompt {
                    (prompt_seen, start) = (prompt.to_string(), bar.position());
                }
                bar.set_position(start + ready as u64);
                bar.set_message(format!("{} / {}: {prompt}", subject.name, method.name()));
            })
            .map_err(|e| anyhow!(e))?;
        scores.extend(s);
    }
    bar.finish_and_clear();
    let report = PaperReport {
        model: model_path.display().to_string(),
        clip: args.clip.display().to_string(),
        settings,
        edit_prompts: prompts,
        scores,
    };
    let md = report.markdown();
    println!("{md}");
    let write = |name: &str, bytes: &[u8]| {
        let path = args.out.join(name);
        write_atomic(&path, bytes, true).with_context(|| format!("writing {}", path.display()))
    };
    write("report.md", md.as_bytes())?;
    write(
        "report.json",
        &serde_json::to_vec_pretty(&report).expect("report serialises"),
    )?;
    let (w, h, rgb) = report.plot();
    let plot = Image {
        width: w,
        height: h,
        rgb,
        seed: 0,
    };
    write(
        "figure10.png",
        &encode_png(&plot, &[]).context("encoding figure10.png")?,
    )?;
    eprintln!(
        "wrote {0}/report.md, {0}/report.json, {0}/figure10.png",
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_words_default_to_bracketed_ones_and_the_star() {
        assert_eq!(
            bracketed_words("a photo of <cat-toy> in the style of <hatched>"),
            vec!["*", "<cat-toy>", "<hatched>"]
        );
        assert_eq!(bracketed_words("no words < here"), vec!["*"]);
    }
}
