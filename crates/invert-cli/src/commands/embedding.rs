//! `invert embedding inspect|convert`: read any textual-inversion file (diffusers, A1111 `.pt`
//! and PNG, kohya, OneTrainer, rinongal), describe it, and write it in another tool's format.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use clap::{Args, Subcommand, ValueEnum};
use invert_model::embedding::{
    LearnedEmbedding, WriteFormat, check_width, read_embeddings, width_family, write_embedding,
};
use invert_model::loading::{Parts, load};
use invert_model::vocabulary::Vocabulary;

use super::model::ModelArgs;

#[derive(Subcommand)]
pub enum EmbeddingCommand {
    /// Describe embedding files: format, token, vectors, width, norms; with --model, the
    /// width check and each vector's nearest vocabulary words.
    Inspect(InspectArgs),
    /// Convert an embedding to another tool's format.
    Convert(ConvertArgs),
}

#[derive(Args)]
pub struct InspectArgs {
    /// Embedding files (.safetensors, .bin, .pt, .png).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// A model to check the width against and find nearest words in (only its text encoder is read).
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
}

#[derive(Args)]
pub struct ConvertArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
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

/// The text encoder's token table and the model's tokenizer, for nearest-word lookups.
struct TextModel {
    table: Tensor<2>,
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
    let table = sd
        .text_encoder
        .text_model
        .embeddings
        .token_embedding
        .weight
        .val();
    Ok(TextModel { table, vocabulary })
}

fn describe(path: &Path, e: &LearnedEmbedding, model: Option<&TextModel>, nearest: usize) {
    println!("{}", path.display());
    println!("  format:  {}", e.meta.source_format);
    println!("  token:   {}", e.token);
    println!(
        "  vectors: {} x {} ({})",
        e.num_vectors,
        e.width,
        width_family(e.width)
    );
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
    if let Some(Err(err)) = model.map(|m| check_width(e, m.vocabulary.width(), path)) {
        println!("  model:   {err}");
    }
    for i in 0..e.num_vectors {
        let v = e.vector(i);
        print!("  vector {i}: |v| = {:.4}", norm(v));
        if let Some(m) = model.filter(|m| m.vocabulary.width() == e.width) {
            let words: Vec<String> = m
                .vocabulary
                .nearest_words(&m.table, v, nearest)
                .into_iter()
                .map(|(w, c)| format!("{w} ({c:.3})"))
                .collect();
            print!("; nearest: {}", words.join(", "));
        }
        println!();
    }
}

fn inspect(args: InspectArgs) -> Result<()> {
    let model = args
        .model
        .as_deref()
        .map(|m| load_text_model(m, args.config.clone()))
        .transpose()?;
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
    let format = match args.format {
        Format::Diffusers => WriteFormat::Diffusers,
        Format::A1111 => WriteFormat::A1111,
        Format::Kohya => WriteFormat::Kohya,
    };
    write_embedding(&e, &args.output, format, args.overwrite)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "{} ({}, token {}, {} x {}) -> {}",
        args.input.display(),
        e.meta.source_format,
        e.token,
        e.num_vectors,
        e.width,
        args.output.display()
    );
    Ok(())
}
