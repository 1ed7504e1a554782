//! `invert generate`: text-to-image, or image-to-image from `--init-image` (style transfer), with
//! any number of learned words, seeds, samplers, guidance and negative prompts; PNGs that carry
//! A1111-style `parameters`, and a grid.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use clap::Args;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use invert_model::loading::{StableDiffusion, load};
use invert_model::pipeline::prompt_encoding::Emphasis;
use invert_model::pipeline::{
    Image, ImageToImage, Parameters, Request, SeededNoise, a1111_sampler_name, check_strength,
    decode, default_size, encode_png, grid, grid_columns, load_init_image, preprocess,
    sample_latents, sample_latents_from_image, validate, validate_image_to_image,
};
use invert_model::prompt::chunk_prompt;
use invert_model::schedulers::{SamplerConfig, SamplerKind};
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::TensorReader;
use invert_model::weights::safetensors_file::SafetensorsFile;
use invert_model::weights::safetensors_write::write_atomic;
use sha2::{Digest, Sha256};

use super::model::ModelArgs;
use super::words::{add_embedding_files, word_hashes};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt; learned words are written as their token, e.g. "a photo of <cat-toy>".
    #[arg(long, required_unless_present = "prompts")]
    pub prompt: Option<String>,
    /// A file with one prompt per line (blank lines and lines starting with # are skipped).
    #[arg(long, conflicts_with = "prompt")]
    pub prompts: Option<PathBuf>,
    /// Negative prompt (what classifier-free guidance steers away from).
    #[arg(long, default_value = "")]
    pub negative: String,
    /// A learned embedding to use (any format invert reads); repeat for several.
    #[arg(long = "embedding")]
    pub embeddings: Vec<PathBuf>,
    /// Sampler: ddim, pndm, euler, euler-a, dpm++2m (default: the model's scheduler).
    #[arg(long)]
    pub sampler: Option<String>,
    /// Karras sigmas (euler, dpm++2m).
    #[arg(long)]
    pub karras: bool,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 or less turns guidance off).
    // Negative numbers parse as values, so `--cfg -1` gets invert's message, not clap's
    // "unexpected argument".
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    pub cfg: f64,
    /// Seed of the first image; image i uses seed + i. Default: a random seed, printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Images per prompt.
    #[arg(short = 'n', long = "images", default_value_t = 1)]
    pub count: usize,
    /// Images denoised together (more is faster per image, uses more memory).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Width in pixels, a multiple of 8 (default: the model's native size).
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// Text-encoder layers to skip at the end (A1111's "clip skip"; 1 = none).
    #[arg(long, default_value_t = 1)]
    pub clip_skip: usize,
    /// How (word:1.3) weights act: a1111 (scale each token's output, restore the mean) or
    /// comfy (empty + (z - empty) * weight, as ComfyUI does).
    #[arg(long, default_value = "a1111")]
    pub weighting: Emphasis,
    /// Start from these latents (a safetensors file with one tensor [n, 4, h/8, w/8]) instead
    /// of noise, to reproduce another tool's image exactly.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Image-to-image: start from this picture (PNG, JPEG, WebP, BMP, GIF) instead of noise,
    /// e.g. to repaint a photo in a learned style. --width/--height default to its size rounded
    /// down to a multiple of 8; another size resizes it (Lanczos).
    #[arg(long, conflicts_with = "init_latents")]
    pub init_image: Option<PathBuf>,
    /// How much of --init-image to repaint, in (0, 1] (A1111's denoising strength): the share
    /// of --steps that run, from a picture noised to match. Default 0.8.
    #[arg(long, requires = "init_image", allow_negative_numbers = true)]
    pub strength: Option<f64>,
    /// Output folder.
    #[arg(long, default_value = "out/images")]
    pub out: PathBuf,
    /// Do not write a grid image when several images are made.
    #[arg(long)]
    pub no_grid: bool,
}

/// The size to make: `--width`/`--height`, else the picture's (diffusers' img2img pipelines
/// make the picture's size unless told otherwise), else the model's native size.
pub(crate) fn picture_size(
    sd: &StableDiffusion,
    picture: Option<&RgbImage>,
    width: Option<usize>,
    height: Option<usize>,
) -> (usize, usize) {
    let native = sd.config.vae.downscale_factor() * sd.config.unet_sample_size();
    let (default_w, default_h) = picture.map_or((native, native), default_size);
    (width.unwrap_or(default_w), height.unwrap_or(default_h))
}

/// A loaded picture resized to `width x height` as the model's `[1, 3, h, w]` input in
/// `[-1, 1]` (`VaeImageProcessor.preprocess`).
pub(crate) fn picture_tensor(
    rgb: &RgbImage,
    width: usize,
    height: usize,
    device: &Device,
) -> Tensor<4> {
    // A size `validate` refuses (0) is reported by it, not by the resize.
    let (w, h) = if width > 0 && height > 0 {
        (width, height)
    } else {
        default_size(rgb)
    };
    preprocess(rgb, w, h, device)
}

/// `--strength` when not given: diffusers' `StableDiffusionImg2ImgPipeline` default.
const DEFAULT_STRENGTH: f64 = 0.8;

/// The model's name and, for a single file, its short hash (A1111's `Model` and `Model hash`).
pub(crate) fn model_identity(sd: &StableDiffusion) -> Result<(String, Option<String>)> {
    let hash = if sd.source.is_file() {
        Some(short_hash(&sd.source)?)
    } else {
        None
    };
    let name = sd
        .source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((name, hash))
}

pub(crate) fn short_hash(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn read_prompts(args: &GenerateArgs) -> Result<Vec<String>> {
    match (&args.prompt, &args.prompts) {
        (Some(p), _) => Ok(vec![p.clone()]),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading prompts from {}", file.display()))?;
            let prompts: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            if prompts.is_empty() {
                bail!("{} has no prompts (one per line)", file.display());
            }
            Ok(prompts)
        }
        (None, None) => bail!("give --prompt or --prompts FILE"),
    }
}

fn read_init_latents(path: &Path, device: &Device) -> Result<Tensor<4>> {
    let file = SafetensorsFile::open(path)?;
    let names = file.names();
    let [name] = names.as_slice() else {
        bail!(
            "{} must hold exactly one tensor [n, 4, h/8, w/8]; it holds {}",
            path.display(),
            names.len()
        );
    };
    let meta = file.meta(name).expect("listed").clone();
    if meta.shape.len() != 4 {
        bail!(
            "{}: tensor `{name}` has shape {:?}; init latents are [n, 4, h/8, w/8]",
            path.display(),
            meta.shape
        );
    }
    let values = file.read_f32(name)?;
    Ok(Tensor::from_data(
        TensorData::new(values, meta.shape),
        device,
    ))
}

/// The next free `NNNNN-SEED.png` name in `dir` (never an existing file).
pub(crate) fn next_index(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.split(['-', '.']).next()?.parse::<usize>().ok())
                })
                .max()
                .map_or(0, |m| m + 1)
        })
        .unwrap_or(0)
}

pub(crate) fn write_png(
    dir: &Path,
    name: &str,
    image: &Image,
    params: &Parameters,
) -> Result<PathBuf> {
    let path = dir.join(name);
    let bytes = encode_png(image, &[("parameters", params.to_a1111())]).context("encoding PNG")?;
    write_atomic(&path, &bytes, false).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let prompts = read_prompts(&args)?;
    if args.count == 0 || args.batch_size == 0 {
        bail!("--images and --batch-size must be at least 1");
    }
    // The picture and the strength are checked before the (slow) model load.
    let picture = args
        .init_image
        .as_deref()
        .map(load_init_image)
        .transpose()?;
    let strength = args.strength.unwrap_or(DEFAULT_STRENGTH);
    if picture.is_some() {
        check_strength(strength, args.steps)?;
    }
    let (device, options) = args.model.device_and_options()?;
    let model_path = args.model.path();
    let sd: StableDiffusion = load(&model_path, &options, &device)
        .with_context(|| format!("could not load the model at {}", model_path.display()))?;

    let mut vocab = Vocabulary::for_model(&sd).context("setting up the tokenizer")?;
    let ti_hashes = word_hashes(&add_embedding_files(&mut vocab, &args.embeddings)?)?;

    let kind = match &args.sampler {
        Some(name) => name.parse::<SamplerKind>().map_err(|e| anyhow!(e))?,
        None => sd
            .config
            .scheduler
            .get("_class_name")
            .and_then(|c| c.as_str())
            .and_then(SamplerKind::from_class_name)
            .unwrap_or(SamplerKind::Pndm),
    };
    let sampler = SamplerConfig::new(kind)
        .with_karras(args.karras)
        .with_eta(args.eta);
    let (width, height) = picture_size(&sd, picture.as_ref(), args.width, args.height);
    let init_image = picture.map(|rgb| ImageToImage {
        image: picture_tensor(&rgb, width, height, &device),
        strength,
    });
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 4_294_967_296)
            .unwrap_or(0)
    });
    let init = args
        .init_latents
        .as_deref()
        .map(|p| read_init_latents(p, &device))
        .transpose()?;
    let (model_name, model_hash) = model_identity(&sd)?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut index = next_index(&args.out);
    let mut all = Vec::new();
    let start = Instant::now();
    let mut total_steps = 0;
    for prompt in &prompts {
        // Longer prompts are encoded in 75-token chunks (A1111's rule), so nothing is dropped.
        let chunks = chunk_prompt(&vocab.first.tokenizer, prompt)?.len();
        if chunks > 1 {
            eprintln!("note: the prompt is encoded in {chunks} chunks of 75 tokens");
        }
        let mut made = Vec::new();
        let mut first = 0;
        while first < args.count {
            let n = args.batch_size.min(args.count - first);
            let request = Request {
                prompt: prompt.clone(),
                negative: args.negative.clone(),
                steps: args.steps,
                guidance: args.cfg,
                seed: seed + first as u64,
                width,
                height,
                sampler: sampler.clone(),
                clip_skip: args.clip_skip,
                emphasis: args.weighting,
                init_latents: init.as_ref().map(|l| {
                    l.clone()
                        .narrow(0, first, n.min(l.dims()[0].saturating_sub(first)))
                }),
            };
            match &init_image {
                Some(init) => validate_image_to_image(&sd, &request, init, n).map(|_| ())?,
                None => validate(&sd, &request, n).map(|_| ())?,
            }
            let batch_start = Instant::now();
            let bar = ProgressBar::new(args.steps as u64).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} steps {per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(format!(
                "seed {}{}",
                request.seed,
                if n > 1 {
                    format!("..{}", request.seed + n as u64 - 1)
                } else {
                    String::new()
                }
            ));
            let progress = |step: usize, total: usize| {
                bar.set_length(total as u64);
                bar.set_position(step as u64);
            };
            let latents = match &init_image {
                // Image i draws its posterior sample, add_noise noise and ancestral noise from
                // seed + i, like text-to-image's noise.
                Some(init) => sample_latents_from_image(
                    &sd,
                    &vocab,
                    &request,
                    init,
                    n,
                    &mut SeededNoise::new(request.seed, n),
                    progress,
                )?,
                None => sample_latents(&sd, &vocab, &request, n, &device, progress)?,
            };
            total_steps += bar.length().unwrap_or(0) as usize;
            bar.finish_and_clear();
            let images = decode(&sd, latents, request.seed);
            // Per batch: the first pays for GPU shader compilation, the next ones show the
            // steady speed (scripts/gpu_bench.sh reads this line).
            eprintln!(
                "batch of {n} image(s) in {:.2} s",
                batch_start.elapsed().as_secs_f64()
            );
            for image in images {
                let params = Parameters {
                    prompt: prompt.clone(),
                    negative: args.negative.clone(),
                    steps: args.steps,
                    sampler: a1111_sampler_name(kind, args.karras),
                    cfg: args.cfg,
                    seed: image.seed,
                    width,
                    height,
                    model_name: model_name.clone(),
                    model_hash: model_hash.clone(),
                    clip_skip: args.clip_skip,
                    embeddings: ti_hashes.clone(),
                    denoising_strength: init_image.as_ref().map(|i| i.strength),
                };
                let path = write_png(
                    &args.out,
                    &format!("{index:05}-{}.png", image.seed),
                    &image,
                    &params,
                )?;
                println!("{}", path.display());
                index += 1;
                made.push((image, params));
            }
            first += n;
        }
        all.extend(made);
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{} image(s) in {elapsed:.2} s: {:.2} s per image, {:.3} s per denoising step",
        all.len(),
        elapsed / all.len() as f64,
        elapsed / total_steps.max(1) as f64
    );
    if all.len() > 1 && !args.no_grid {
        let images: Vec<Image> = all.iter().map(|(i, _)| i.clone()).collect();
        let g = grid(&images, grid_columns(images.len()));
        let params = all[0].1.clone();
        let path = write_png(&args.out, &format!("grid-{index:05}.png"), &g, &params)?;
        println!("{}", path.display());
    }
    Ok(())
}
