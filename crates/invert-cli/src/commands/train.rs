//! `invert train`: learn a new word from a folder of images (textual inversion).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use invert_model::loading::{LoadOptions, load};
use invert_model::pipeline::{
    Parameters, Request, a1111_sampler_name, decode, encode_png, grid, grid_columns, sample_latents,
};
use invert_model::schedulers::{SamplerConfig, SamplerKind};
use invert_model::weights::safetensors_write::write_atomic;
use invert_train::checkpoint::{
    load_checkpoint, load_config, remove_stale_temp_files, save_checkpoint, save_config,
    save_embedding, state_path, trim_log,
};
use invert_train::config::{ScheduleKind, TrainConfig};
use invert_train::data::{Crop, LoadImagesOptions, load_image_folder};
use invert_train::optimizer::OptimizerKind;
use invert_train::templates::Property;
use invert_train::trainer::{StepStats, TrainError, Trainer};

#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// A TOML file with any of the options below (flags given here override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run whose output folder this is (bit-exactly: same data order and noise).
    #[arg(long, conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Model: diffusers folder, Hugging Face cache folder or single-file checkpoint (default:
    /// the bundled model, models/world, or $INVERT_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Architecture folder for a single-file --model (see `invert model info --help`).
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Folder of 3-5 images of the concept (png, jpg, webp, bmp); NAME.txt beside an image is its caption.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// The new word, e.g. "<cat-toy>".
    #[arg(long)]
    pub token: Option<String>,
    /// Initial vectors: a word or phrase, or `random` (default: object / painting).
    #[arg(long)]
    pub init: Option<String>,
    /// Number of vectors for the word.
    #[arg(long)]
    pub vectors: Option<usize>,
    /// object or style: picks the paper's prompt templates.
    #[arg(long, value_parser = ["object", "style"])]
    pub property: Option<String>,
    /// Template file (`{}` = the word, `{caption}` = the image's caption).
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Optimisation steps (default 5000, the paper's; with --resume: extend the run to this).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Images per step (default 1).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Gradient accumulation: micro-batches per optimiser step (default 1).
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Learning rate, or A1111's schedule string "0.005:100, 1e-3:1000, 1e-4".
    #[arg(long)]
    pub lr: Option<String>,
    /// Learning-rate schedule for a numeric --lr (default constant).
    #[arg(long, value_parser = ["constant", "constant_with_warmup", "cosine"])]
    pub lr_schedule: Option<String>,
    /// Warm-up steps of constant_with_warmup and cosine (default 0).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Multiply the learning rate by batch size x accumulation (the paper's code does).
    #[arg(long)]
    pub scale_lr: Option<bool>,
    /// Optimiser (default adamw).
    #[arg(long, value_parser = ["adamw", "sgd"])]
    pub optimizer: Option<String>,
    /// AdamW weight decay (default 0.01).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the gradient's L2 norm to this (default 0 = off).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Min-SNR-gamma loss weighting, e.g. 5 (default off).
    #[arg(long)]
    pub min_snr_gamma: Option<f64>,
    /// Keep learned vectors at most this many times the vocabulary's median norm.
    #[arg(long)]
    pub norm_guard: Option<f64>,
    /// Training resolution in pixels (default: the model's native size).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Crop after resizing the short side (default center).
    #[arg(long, value_parser = ["center", "random"])]
    pub crop: Option<String>,
    /// Do not flip images horizontally (default: flip with p = 0.5).
    #[arg(long)]
    pub no_flip: bool,
    /// Use the images' alpha channel as a per-pixel loss weight.
    #[arg(long)]
    pub alpha_mask: bool,
    /// Skip unreadable files with a warning instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Seed of every random choice of the run (default 23).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Save learned_embeds-steps-N.safetensors every N steps (default 500; 0 = only at the end).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Preview images every N steps (0 = never).
    #[arg(long)]
    pub preview_every: Option<usize>,
    /// A preview prompt (repeat for several; default: the first template with the word).
    #[arg(long = "preview-prompt")]
    pub preview_prompts: Vec<String>,
    /// Text-encoder layer to condition on: 1 = last (default), 2 = penultimate.
    #[arg(long)]
    pub clip_skip: Option<usize>,
    /// Output folder (default ./out/<token>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start over in an --out folder that already holds a run.
    #[arg(long)]
    pub overwrite: bool,
    /// Backend (default auto): auto (a GPU through wgpu when one is present, else the CPU;
    /// never a software adapter), cpu, or wgpu (any adapter wgpu finds, software ones too).
    #[arg(long)]
    pub device: Option<String>,
    /// Compute precision of the frozen models (v* and the loss stay f32). Default auto: f16 on
    /// a GPU that computes in it, else f32.
    #[arg(long, value_parser = invert_model::device::PRECISIONS)]
    pub precision: Option<String>,
    /// Recompute activations in the backward pass to save memory (slower).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// SDXL: write diffusers' two files (learned_embeds.safetensors + learned_embeds_2.safetensors)
    /// instead of one {clip_l, clip_g} file.
    #[arg(long)]
    pub diffusers_sdxl: bool,
}

fn file_config(path: &Path) -> Result<TrainConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Defaults, then the TOML file, then the flags.
fn effective_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => file_config(p)?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = a.$field.clone() { c.$field = v; })* };
    }
    set!(
        model,
        images,
        token,
        vectors,
        steps,
        batch_size,
        grad_accum,
        lr,
        warmup_steps,
        scale_lr,
        max_grad_norm,
        seed,
        save_every,
        preview_every,
        clip_skip,
        device,
        precision
    );
    if a.model_config.is_some() {
        c.model_config = a.model_config.clone();
    }
    if a.init.is_some() {
        c.init = a.init.clone();
    }
    if a.templates.is_some() {
        c.templates = a.templates.clone();
    }
    if a.min_snr_gamma.is_some() {
        c.min_snr_gamma = a.min_snr_gamma;
    }
    if a.norm_guard.is_some() {
        c.norm_guard = a.norm_guard;
    }
    if a.resolution.is_some() {
        c.resolution = a.resolution;
    }
    if let Some(p) = &a.property {
        c.property = if p == "style" {
            Property::Style
        } else {
            Property::Object
        };
    }
    if let Some(s) = &a.lr_schedule {
        c.lr_schedule = match s.as_str() {
            "cosine" => ScheduleKind::Cosine,
            "constant_with_warmup" => ScheduleKind::ConstantWithWarmup,
            _ => ScheduleKind::Constant,
        };
    }
    if let Some(o) = &a.optimizer {
        c.optimizer.kind = if o == "sgd" {
            OptimizerKind::Sgd
        } else {
            OptimizerKind::AdamW
        };
    }
    if let Some(wd) = a.weight_decay {
        c.optimizer.weight_decay = wd;
    }
    if let Some(crop) = &a.crop {
        c.crop = if crop == "random" {
            Crop::Random
        } else {
            Crop::Center
        };
    }
    c.flip &= !a.no_flip;
    c.alpha_mask |= a.alpha_mask;
    c.skip_bad |= a.skip_bad;
    c.gradient_checkpointing |= a.gradient_checkpointing;
    c.diffusers_sdxl |= a.diffusers_sdxl;
    if !a.preview_prompts.is_empty() {
        c.preview_prompts = a.preview_prompts.clone();
    }
    if c.model.as_os_str().is_empty() {
        c.model = invert_model::loading::default_model_dir();
    }
    if c.images.as_os_str().is_empty() {
        bail!("--images is required (a folder of 3-5 images of the concept)");
    }
    c.out = match &a.out {
        Some(o) => o.clone(),
        None if c.out.as_os_str().is_empty() => PathBuf::from("out").join(sanitize(&c.token)),
        None => c.out.clone(),
    };
    c.validate().map_err(|e| anyhow!(e))?;
    Ok(c)
}

fn sanitize(token: &str) -> String {
    let s: String = token
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches('_').to_string();
    if s.is_empty() { "word".into() } else { s }
}

fn preview(trainer: &Trainer, out: &Path) -> Result<PathBuf> {
    let c = &trainer.config;
    let prompts = if c.preview_prompts.is_empty() {
        vec![invert_train::templates::Templates::builtin(c.property).render(0, &c.token, None)]
    } else {
        c.preview_prompts.clone()
    };
    let f = trainer.sd.config.vae.downscale_factor();
    let size = c
        .resolution
        .unwrap_or(f * trainer.sd.config.unet_sample_size());
    let mut images = Vec::new();
    for prompt in &prompts {
        let request = Request {
            prompt: prompt.clone(),
            negative: String::new(),
            steps: c.preview_steps,
            guidance: 7.5,
            seed: c.seed,
            width: size,
            height: size,
            sampler: SamplerConfig::new(SamplerKind::Ddim),
            clip_skip: c.clip_skip,
            emphasis: Default::default(),
            init_latents: None,
        };
        let latents = sample_latents(
            &trainer.sd,
            &trainer.vocab,
            &request,
            2,
            &trainer.device,
            |_, _| {},
        )?;
        images.extend(decode(&trainer.sd, latents, c.seed));
    }
    let g = grid(&images, grid_columns(images.len()).max(2));
    let params = Parameters {
        prompt: prompts.join(" | "),
        steps: c.preview_steps,
        sampler: a1111_sampler_name(SamplerKind::Ddim, false),
        cfg: 7.5,
        seed: c.seed,
        width: size,
        height: size,
        model_name: c
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ..Default::default()
    };
    let dir = out.join("previews");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("step-{:06}.png", trainer.step));
    write_atomic(
        &path,
        &encode_png(&g, &[("parameters", params.to_a1111())])?,
        true,
    )?;
    Ok(path)
}

fn log_line(log: &mut std::fs::File, s: &StepStats, seconds: f64) -> Result<()> {
    let line = serde_json::json!({"step": s.step, "loss": s.loss, "lr": s.lr, "norm": s.norm, "grad_norm": s.grad_norm, "time": seconds});
    writeln!(log, "{line}")?;
    Ok(())
}

fn save_all(trainer: &Trainer, out: &Path, final_file: bool) -> Result<()> {
    save_checkpoint(trainer).map_err(|e| anyhow!(e))?;
    if final_file {
        save_embedding(trainer, &out.join("learned_embeds.safetensors")).map_err(|e| anyhow!(e))?;
    }
    Ok(())
}

pub fn run(args: TrainArgs) -> Result<()> {
    let config = match &args.resume {
        Some(dir) => {
            // A resumed run keeps its configuration; only --steps may extend it.
            let mut c = load_config(dir).map_err(|e| anyhow!(e))?;
            if let Some(steps) = args.steps {
                c.steps = steps;
            }
            c
        }
        None => effective_config(&args)?,
    };
    let out = config.out.clone();
    if args.resume.is_none() && out.join("checkpoint").exists() && !args.overwrite {
        bail!(
            "{} already holds a run; continue it with `invert train --resume {}`, or start over with --overwrite",
            out.display(),
            out.display()
        );
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    remove_stale_temp_files(&out);

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    let images = load_image_folder(
        &config.images,
        &LoadImagesOptions {
            skip_bad: config.skip_bad,
            alpha_mask: config.alpha_mask,
            resolution: config.resolution,
            ..Default::default()
        },
    )?;
    for w in &images.warnings {
        eprintln!("warning: {w}");
    }
    let (choice, dtype) = super::device::open_with_precision(&config.device, &config.precision)?;
    let mut device = choice.device.autodiff();
    if config.gradient_checkpointing {
        device = device.gradient_checkpointing();
    }
    let options = LoadOptions {
        config_dir: config.model_config.clone(),
        dtype,
        ..Default::default()
    };
    let sd = load(&config.model, &options, &device)
        .with_context(|| format!("could not load the model at {}", config.model.display()))?;
    eprintln!(
        "encoding {} image(s) with the VAE (once) ...",
        images.images.len()
    );
    let mut trainer = Trainer::new(config.clone(), sd, &images, device).map_err(|e| anyhow!(e))?;
    if let Some(dir) = args.resume.as_ref().filter(|d| state_path(d).exists()) {
        let (step, params, opt) =
            load_checkpoint(dir, trainer.params.len()).map_err(|e| anyhow!(e))?;
        trainer.restore(step, params, opt);
        trim_log(dir, step).map_err(|e| anyhow!(e))?;
        eprintln!("resuming at step {step} of {}", config.steps);
    } else if args.resume.is_some() {
        // Stopped (or killed) before its first checkpoint: nothing was learned yet.
        eprintln!("no checkpoint was saved yet; starting the run from step 0");
        let _ = std::fs::remove_file(out.join("log.jsonl"));
    } else {
        let _ = std::fs::remove_file(out.join("log.jsonl"));
    }
    save_config(&trainer.config).map_err(|e| anyhow!(e))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("log.jsonl"))?;

    let bar = ProgressBar::new(config.steps as u64).with_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(config.token.clone());
    bar.set_position(trainer.step as u64);
    let start = Instant::now();
    let mut smoothed: Option<f32> = None;
    while trainer.step < config.steps {
        let stats = match trainer.train_step() {
            Ok(s) => s,
            Err(e @ TrainError::NonFinite { .. }) => {
                bar.abandon();
                save_all(&trainer, &out, true)?;
                return Err(anyhow!(
                    "{e}; saved the last good embedding in {}",
                    out.join("learned_embeds.safetensors").display()
                ));
            }
            Err(e) => return Err(anyhow!(e)),
        };
        let s = smoothed.map_or(stats.loss, |m| 0.9 * m + 0.1 * stats.loss);
        smoothed = Some(s);
        log_line(&mut log, &stats, start.elapsed().as_secs_f64())?;
        bar.set_message(format!(
            "loss {s:.4} lr {:.2e} |v| {:.3}",
            stats.lr, stats.norm
        ));
        bar.set_position(stats.step as u64);
        if config.save_every > 0 && stats.step % config.save_every == 0 {
            save_embedding(
                &trainer,
                &out.join(format!("learned_embeds-steps-{}.safetensors", stats.step)),
            )
            .map_err(|e| anyhow!(e))?;
            save_all(&trainer, &out, false)?;
        }
        if config.preview_every > 0 && stats.step % config.preview_every == 0 {
            let path = preview(&trainer, &out)?;
            bar.println(format!("preview: {}", path.display()));
        }
        if interrupted.load(Ordering::SeqCst) && trainer.step < config.steps {
            bar.abandon();
            save_all(&trainer, &out, true)?;
            eprintln!(
                "interrupted at step {}; saved {} and a resumable checkpoint. Continue with:\n  invert train --resume {}",
                trainer.step,
                out.join("learned_embeds.safetensors").display(),
                out.display()
            );
            return Ok(());
        }
    }
    bar.finish();
    save_all(&trainer, &out, true)?;
    if config.preview_every > 0 && config.steps % config.preview_every != 0 {
        preview(&trainer, &out)?;
    }
    println!("{}", out.join("learned_embeds.safetensors").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_flags_override_them() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/train");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let c = file_config(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(c.steps > 0, "{}", path.display());
            n += 1;
        }
        assert!(n >= 9);
        let args = TrainArgs {
            config: Some(dir.join("sd1-style.toml")),
            model: Some("m".into()),
            images: Some("i".into()),
            token: Some("<s>".into()),
            steps: Some(7),
            ..Default::default()
        };
        let c = effective_config(&args).unwrap();
        assert_eq!(
            (c.steps, c.property, c.resolution),
            (7, Property::Style, Some(512))
        );
        assert_eq!(c.out, PathBuf::from("out/s"));
        let bad =
            std::env::temp_dir().join(format!("invert-bad-preset-{}.toml", std::process::id()));
        std::fs::write(&bad, "stepz = 3\n").unwrap();
        assert!(file_config(&bad).unwrap_err().to_string().contains("stepz"));
        let _ = std::fs::remove_file(&bad);
    }
}
