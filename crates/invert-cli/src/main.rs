//! `invert`: textual inversion for Stable Diffusion 1.x/2.x.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "invert",
    version,
    about = "Textual inversion for Stable Diffusion 1.x/2.x, in Rust on burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect Stable Diffusion checkpoints (diffusers folders, .safetensors, .ckpt).
    #[command(subcommand)]
    Model(commands::model::ModelCommand),
    /// Read, describe and convert textual-inversion embedding files (every common format).
    #[command(subcommand)]
    Embedding(commands::embedding::EmbeddingCommand),
    /// Generate images from prompts, with any number of learned words.
    Generate(Box<commands::generate::GenerateArgs>),
    /// Prompt-to-Prompt editing: a source prompt and edited prompts from one seed, the edits'
    /// attention taken from the source's (word swap, refinement, reweighting, local blend).
    Edit(Box<commands::edit::EditArgs>),
    /// Learn a new word from a folder of images (textual inversion).
    Train(Box<commands::train::TrainArgs>),
    /// Train the bundled base model (VAE, U-Net, text encoder) on the procedural world.
    Pretrain(Box<commands::pretrain::PretrainArgs>),
    /// Measure learned words: with the world oracle on the bundled model (fidelity,
    /// reconstruction vs editability, composition), or with CLIP on any model (`eval clip`,
    /// `eval paper`: the paper's metrics and Figure 10).
    Eval(Box<commands::eval::EvalArgs>),
    /// The procedural world: sample pictures, write the concept sets, train the oracle.
    #[command(subcommand)]
    World(commands::world::WorldCommand),
}

fn main() {
    invert_model::cpu::allocator::tune_for_tensors();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(cmd) => commands::model::run(cmd),
        Command::Embedding(cmd) => commands::embedding::run(cmd),
        Command::Generate(args) => commands::generate::run(*args),
        Command::Edit(args) => commands::edit::run(*args),
        Command::Train(args) => commands::train::run(*args),
        Command::Pretrain(args) => commands::pretrain::run(*args),
        Command::World(cmd) => commands::world::run(cmd),
        Command::Eval(args) => commands::eval::run(*args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
