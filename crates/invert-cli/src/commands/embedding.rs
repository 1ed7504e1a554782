//! `invert embedding inspect|convert`: read any textual-inversion file (diffusers, A1111 `.pt`
//! and PNG, kohya, OneTrainer, rinongal; SDXL `{clip_l, clip_g}` and diffusers' two SDXL files;
//! embeddings bundled in LoRA files), describe it, and write it in another tool's format.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use clap::{Args, Subcommand, ValueEnum};
use invert_model::embedding::{
    LearnedEmbedding, WriteFormat, embedding_family, read_embeddings, write_embedding,
};
use invert_model::loading::{Parts, load};
use invert_model::vocabulary::Vocabulary;

use super::model::ModelArgs;

#[derive(Subcommand)]
pub enum EmbeddingCommand {
    /// Describe embedding files: format, token, vectors, width, norms (both tables of an SDXL
    /// embedding); with --model, the width check and each vector's nearest vocabulary words.
    Inspect(InspectArgs),
    /// Convert an embedding to another tool's format (SDXL embeddings to the SDXL formats).
    Convert(ConvertArgs),
}

#[derive(Args)]
pub struct InspectArgs {
    /// Embedding files (.safetensors, .bin, .pt, .png, LoRA files with bundled embeddings).
    /// Either file of diffusers' SDXL pair (learned_embeds[_2].safetensors) reads both.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// A model to check the embedding against (as `generate` would use it) and find nearest
    /// words in (only its text encoders are read; SDXL: both tables).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Architecture for a single-file --model (see `invert model info --help`).
    #[arg(long, requires = "model")]
    pub config: Option<PathBuf>,
    /// Nearest vocabulary words to list per vector.
    #[arg(long, default_value_t = 5)]
    pub nearest: usize,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// diffusers `learned_embeds.safetensors` ({token: [n, d]}); also read by A1111, ComfyUI.
    Diffusers,
    /// AUTOMATIC1111 `.pt` (torch zip).
    A1111,
    /// kohya sd-scripts `emb_params` safetensors.
    Kohya,
    /// SDXL in one file, {clip_l: [n, 768], clip_g: [n, 1280]} safetensors, as kohya,
    /// OneTrainer and invoke-training write it; read by A1111, ComfyUI, invert.
    Sdxl,
    /// SDXL as diffusers' textual_inversion_sdxl.py writes it: OUTPUT is learned_embeds.safetensors
    /// (clip_l; or a folder to write it in) and learned_embeds_2.safetensors (clip_g) is written
    /// next to it.
    DiffusersSdxl,
}

impl From<Format> for WriteFormat {
    fn from(f: Format) -> WriteFormat {
        match f {
            Format::Diffusers => WriteFormat::Diffusers,
            Format::A1111 => WriteFormat::A1111,
            Format::Kohya => WriteFormat::Kohya,
            Format::Sdxl => WriteFormat::Sdxl,
            Format::DiffusersSdxl => WriteFormat::DiffusersSdxl,
        }
    }
}

#[derive(Args)]
pub struct ConvertArgs {
    pub input: PathBuf,
    /// The file to write, or an existing folder to write the format's usual file name in.
    pub output: PathBuf,
    /// Output format [default: diffusers for SD 1.x/2.x embeddings, sdxl for SDXL ones].
    /// SDXL embeddings go to sdxl or diffusers-sdxl only, others to diffusers, a1111 or kohya.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Token name to store (default: the one in the file, else its file name).
    #[arg(long)]
    pub token: Option<String>,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(cmd: EmbeddingCommand) -> Result<()> {
    match cmd {
        EmbeddingCommand::Inspect(args) => inspect(args),
        EmbeddingCommand::Convert(args) => convert(args),
    }
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// The text encoders' token tables and the model's tokenizers, for the width check (what
/// `generate` would do with the embedding) and nearest-word lookups.
struct TextModel {
    table: Tensor<2>,
    /// SDXL's second token table.
    table_2: Option<Tensor<2>>,
    vocabulary: Vocabulary,
}

fn load_text_model(model: &Path, config: Option<PathBuf>) -> Result<TextModel> {
    let args = ModelArgs {
        model: Some(model.to_path_buf()),
        config,
        variant: None,
        ema: false,
        vae: None,
        device: "cpu".into(),
        precision: "f32".into(),
    };
    // Nearest-word lookups are one small matrix product: the CPU, without a device line.
    let device = burn::prelude::Device::flex();
    let mut options = args.load_options(burn::tensor::DType::F32);
    options.parts = Parts::TEXT_ENCODER;
    let sd = load(model, &options, &device)
        .with_context(|| format!("could not load the model at {}", model.display()))?;
    let vocabulary = Vocabulary::for_model(&sd)
        .with_context(|| format!("reading the tokenizer of {}", model.display()))?;
    let table = sd.text_encoder.text_model.token_table();
    let table_2 = sd
        .text_encoder_2
        .as_ref()
        .map(|te| te.text_model.token_table());
    Ok(TextModel {
        table,
        table_2,
        vocabulary,
    })
}

/// `n x d`, or for SDXL both tables.
fn shape_text(e: &LearnedEmbedding) -> String {
    match &e.second {
        None => format!("{} x {}", e.num_vectors, e.width),
        Some(g) => format!(
            "{} x {} (clip_l) + {} x {} (clip_g)",
            e.num_vectors, e.width, e.num_vectors, g.width
        ),
    }
}

fn describe(path: &Path, e: &LearnedEmbedding, model: Option<&TextModel>, nearest: usize) {
    println!("{}", path.display());
    println!("  format:  {}", e.meta.source_format);
    println!("  token:   {}", e.token);
    println!("  vectors: {} ({})", shape_text(e), embedding_family(e));
    if let Some(step) = e.meta.step {
        println!("  step:    {step}");
    }
    if let Some(m) = &e.meta.base_model {
        println!(
            "  trained on: {m}{}",
            e.meta
                .base_model_hash
                .as_ref()
                .map(|h| format!(" [{h}]"))
                .unwrap_or_default()
        );
    }
    for (k, v) in &e.meta.extra {
        println!("  {k}: {v}");
    }
    // What generate would do with it: refuse it, use part of it (a note), or use it all.
    if let Some(m) = model {
        match m.vocabulary.clone().add_embedding(e, path) {
            Err(err) => println!("  model:   {err}"),
            Ok(added) => {
                if let Some(note) = added.note {
                    println!("  note:    {note}");
                }
            }
        }
    }
    // Nearest words in the model's table of the same width (SDXL's clip_l rows live in CLIP
    // ViT-L's vocabulary, as SD 1.x's do; clip_g rows in OpenCLIP ViT-bigG's).
    let tables: Vec<(&str, &[f32], usize)> = match &e.second {
        None => vec![("", &e.vectors, e.width)],
        Some(g) => vec![
            ("clip_l ", &e.vectors, e.width),
            ("clip_g ", &g.vectors, g.width),
        ],
    };
    for (label, vectors, width) in tables {
        let lookup = model.and_then(|m| {
            let second = m.vocabulary.second.as_ref().zip(m.table_2.as_ref());
            match second {
                Some((words, table)) if label == "clip_g " && words.width() == width => {
                    Some((words, table))
                }
                _ if label != "clip_g " && m.vocabulary.width() == width => {
                    Some((&m.vocabulary.first, &m.table))
                }
                _ => None,
            }
        });
        for (i, v) in vectors.chunks(width).enumerate() {
            print!("  {label}vector {i}: |v| = {:.4}", norm(v));
            if let Some((words, table)) = lookup {
                let words: Vec<String> = words
                    .nearest_words(table, v, nearest)
                    .into_iter()
                    .map(|(w, c)| format!("{w} ({c:.3})"))
                    .collect();
                print!("; nearest: {}", words.join(", "));
            }
            println!();
        }
    }
}

fn inspect(args: InspectArgs) -> Result<()> {
    let model = match args.model.as_deref() {
        Some(m) => Some(load_text_model(m, args.config.clone())?),
        None => None,
    };
    if let Some(m) = &model {
        let norms = m.table.clone().powf_scalar(2.0).sum_dim(1).sqrt();
        println!(
            "model vocabulary: mean |row| = {:.4} (learned vectors far above it tend to dominate prompts)",
            norms.mean().into_scalar::<f32>()
        );
    }
    let mut failures = 0;
    for path in &args.files {
        match read_embeddings(path, None) {
            Ok(embeddings) => embeddings
                .iter()
                .for_each(|e| describe(path, e, model.as_ref(), args.nearest)),
            Err(err) => {
                eprintln!("error: {err}");
                failures += 1;
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} files could not be read", args.files.len());
    }
    Ok(())
}

fn convert(args: ConvertArgs) -> Result<()> {
    let mut embeddings = read_embeddings(&args.input, args.token.as_deref())
        .with_context(|| format!("reading {}", args.input.display()))?;
    if embeddings.len() != 1 {
        let tokens: Vec<&str> = embeddings.iter().map(|e| e.token.as_str()).collect();
        return Err(anyhow!(
            "{} holds {} embeddings ({}); every output format holds one. Split it first",
            args.input.display(),
            embeddings.len(),
            tokens.join(", ")
        ));
    }
    let e = embeddings.remove(0);
    let format = args
        .format
        .map(WriteFormat::from)
        .unwrap_or_else(|| WriteFormat::default_for(&e));
    let output = if args.output.is_dir() {
        args.output.join(format.default_file_name(&e.token))
    } else {
        args.output.clone()
    };
    write_embedding(&e, &output, format, args.overwrite)
        .with_context(|| format!("writing {}", output.display()))?;
    let written: Vec<String> = format
        .files(&output)
        .unwrap_or_else(|| vec![output.clone()])
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    println!(
        "{} ({}, token {}, {}) -> {} ({})",
        args.input.display(),
        e.meta.source_format,
        e.token,
        shape_text(&e),
        written.join(" + "),
        format.name()
    );
    Ok(())
}
