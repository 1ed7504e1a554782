//! `invert eval`: measures the bundled model and words learned on it with the world oracle
//! (see `invert_eval`): prints the table, writes report.md / report.json, the
//! reconstruction-vs-editability plot (figure10.png) and a grid of every prompt's pictures.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use invert_eval::report::EvalReport;
use invert_eval::{EvalSettings, Judge, Method};
use invert_model::embedding::read_embeddings;
use invert_model::loading::{LoadOptions, load};
use invert_model::pipeline::{Image, encode_png, grid};
use invert_model::schedulers::SamplerKind;
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::safetensors_write::write_atomic;
use invert_world::world::concepts::{self, Kind};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    /// The CLIP protocol on any model (without one: the world oracle's protocol).
    #[command(subcommand)]
    pub clip: Option<super::eval_clip::ClipProtocol>,
    /// The model (default: the bundled model, models/world, or $INVERT_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The oracle folder (written by `invert world oracle`; default models/world-oracle).
    #[arg(long)]
    pub oracle: Option<PathBuf>,
    /// Folder with one `invert train` output folder per concept set, named as the set
    /// (e.g. runs/striped-triangle/learned_embeds.safetensors); sets without one are skipped.
    #[arg(long)]
    pub learned: Option<PathBuf>,
    /// Where report.md, report.json, figure10.png and samples/ go.
    #[arg(long, default_value = "out/eval")]
    pub out: PathBuf,
    /// Pictures per prompt (fidelity uses a quarter of it per prompt, over more prompts).
    #[arg(long, default_value_t = 16)]
    pub images_per_prompt: usize,
    /// Random full-description prompts for the base-model fidelity (0 = skip).
    #[arg(long, default_value_t = 96)]
    pub fidelity_prompts: usize,
    /// Denoising steps.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Sampler: ddim, pndm, euler, euler-a, dpm++2m.
    #[arg(long, default_value = "ddim")]
    pub sampler: String,
    /// Classifier-free guidance scale (the bundled model's colours over-saturate at SD's 7.5).
    #[arg(long, default_value_t = invert_eval::WORLD_GUIDANCE)]
    pub cfg: f64,
    #[arg(long, default_value_t = 1000)]
    pub seed: u64,
}

fn default_oracle() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/world-oracle");
    dir.canonicalize().unwrap_or(dir)
}

fn slug(prompt: &str) -> String {
    let s: String = prompt
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

fn write_png(path: &Path, image: &Image, text: &str) -> Result<()> {
    let bytes = encode_png(image, &[("prompt", text.to_string())]).context("encoding PNG")?;
    write_atomic(path, &bytes, true).with_context(|| format!("writing {}", path.display()))
}

pub fn run(mut args: EvalArgs) -> Result<()> {
    if let Some(protocol) = args.clip.take() {
        return super::eval_clip::run(protocol);
    }
    if args.images_per_prompt == 0 || args.steps == 0 {
        bail!("--images-per-prompt and --steps must be at least 1");
    }
    let sampler = args
        .sampler
        .parse::<SamplerKind>()
        .map_err(|e| anyhow!("--sampler: {e}"))?;
    let device = burn::prelude::Device::flex();
    let model_path = args
        .model
        .clone()
        .unwrap_or_else(invert_model::loading::default_model_dir);
    let sd = load(&model_path, &LoadOptions::default(), &device)
        .with_context(|| format!("could not load the model at {}", model_path.display()))?;
    let oracle_dir = args.oracle.clone().unwrap_or_else(default_oracle);
    let (oracle, oracle_cfg) =
        invert_world::oracle::load(&oracle_dir, &device).map_err(|e| anyhow!(e))?;
    let native = sd.config.vae.downscale_factor() * sd.config.unet_sample_size();
    if native != oracle_cfg.image_size {
        bail!(
            "{}: the oracle reads {1}x{1} pictures but the model draws {native}x{native}; \
             eval needs the world model and its oracle",
            oracle_dir.display(),
            oracle_cfg.image_size
        );
    }
    let mut vocab = Vocabulary::for_model(&sd).context("setting up the tokenizer")?;
    let all = concepts::bundled();
    let mut learned = Vec::new();
    if let Some(dir) = &args.learned {
        for c in &all {
            let path = dir.join(c.name).join("learned_embeds.safetensors");
            if !path.is_file() {
                eprintln!("note: no {} (skipping {})", path.display(), c.name);
                continue;
            }
            for e in read_embeddings(&path, None)
                .with_context(|| format!("reading {}", path.display()))?
            {
                if e.token != c.token {
                    bail!(
                        "{}: holds `{}`, expected `{}`",
                        path.display(),
                        e.token,
                        c.token
                    );
                }
                let added = vocab
                    .add_embedding(&e, &path)
                    .with_context(|| format!("adding {}", path.display()))?;
                if let Some(note) = added.note {
                    eprintln!("note: {note}");
                }
            }
            learned.push(c.clone());
        }
    }
    let settings = EvalSettings {
        images_per_prompt: args.images_per_prompt,
        fidelity_prompts: args.fidelity_prompts,
        steps: args.steps,
        guidance: args.cfg,
        seed: args.seed,
        sampler,
    };
    let judge = Judge {
        sd: &sd,
        vocab: &vocab,
        oracle: &oracle,
        settings: settings.clone(),
        device: device.clone(),
    };
    let samples = args.out.join("samples");
    std::fs::create_dir_all(&samples).with_context(|| format!("creating {}", samples.display()))?;
    let mut keep = |prompt: &str, images: &[Image]| {
        let path = samples.join(format!("{}.png", slug(prompt)));
        if let Err(e) = write_png(&path, &grid(images, images.len().min(8)), prompt) {
            eprintln!("warning: {e:#}");
        }
    };
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} eta {eta}")
        .expect("valid template");

    let fidelity = if args.fidelity_prompts > 0 {
        let bar = ProgressBar::new(args.fidelity_prompts as u64).with_style(style.clone());
        bar.set_prefix("fidelity");
        let f = invert_eval::fidelity(&judge, &mut keep, |i, _| bar.set_position(i as u64))
            .map_err(|e| anyhow!(e))?;
        bar.finish();
        Some(f)
    } else {
        None
    };
    let mut scores = Vec::new();
    let bar =
        ProgressBar::new((learned.len() * Method::WORLD.len()) as u64).with_style(style.clone());
    bar.set_prefix("concepts");
    for c in &learned {
        for m in Method::WORLD {
            scores.push(
                invert_eval::concept_scores(&judge, c, m, &mut keep).map_err(|e| anyhow!(e))?,
            );
            bar.inc(1);
        }
    }
    bar.finish();
    let mut compositions = Vec::new();
    for o in learned.iter().filter(|c| c.kind == Kind::Object) {
        for s in learned.iter().filter(|c| c.kind == Kind::Style) {
            compositions
                .push(invert_eval::composition(&judge, o, s, &mut keep).map_err(|e| anyhow!(e))?);
        }
    }
    let report = EvalReport {
        model: model_path.display().to_string(),
        settings: format!(
            "{} pictures per prompt, {} {} steps, guidance {}, seed {}; oracle {}",
            settings.images_per_prompt,
            settings.sampler.name(),
            settings.steps,
            settings.guidance,
            settings.seed,
            oracle_dir.display()
        ),
        fidelity,
        concepts: scores,
        compositions,
    };
    let md = report.markdown();
    println!("{md}");
    write_atomic(&args.out.join("report.md"), md.as_bytes(), true).map_err(|e| anyhow!(e))?;
    let json = serde_json::to_vec_pretty(&report).expect("json");
    write_atomic(&args.out.join("report.json"), &json, true).map_err(|e| anyhow!(e))?;
    if !report.concepts.is_empty() {
        let names: Vec<String> = learned.iter().map(|c| c.name.to_string()).collect();
        let (w, h, rgb) = invert_eval::plot::render(&report.concepts, &names);
        let plot = Image {
            width: w,
            height: h,
            rgb,
            seed: 0,
        };
        let path = args.out.join("figure10.png");
        write_png(&path, &plot, "reconstruction vs editability")?;
        println!("wrote {}", path.display());
    }
    println!("wrote {}", args.out.join("report.md").display());
    Ok(())
}
