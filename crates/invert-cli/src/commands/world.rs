//! `invert world`: the procedural world of the bundled model: render pictures with their
//! captions, write the bundled concept sets, train the oracle that reads pictures back.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use invert_model::pipeline::{Image, encode_png};
use invert_model::weights::safetensors_write::write_atomic;
use invert_world::oracle::{self, OracleConfig, OracleTraining};
use invert_world::world::{self, concepts};

#[derive(Subcommand)]
pub enum WorldCommand {
    /// Render pictures of the world with their captions (NAME.png + NAME.txt).
    Sample(SampleArgs),
    /// Write the bundled concept sets (two objects, two styles) with their READMEs.
    Datasets(DatasetsArgs),
    /// Train the oracle (the classifier `invert eval` judges pictures with).
    Oracle(OracleArgs),
}

#[derive(Args)]
pub struct SampleArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Picture side in pixels.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
}

#[derive(Args)]
pub struct DatasetsArgs {
    #[arg(long, default_value = "datasets")]
    pub out: PathBuf,
    /// Pictures per concept set.
    #[arg(long, default_value_t = 5)]
    pub count: usize,
    #[arg(long, default_value_t = 32)]
    pub size: usize,
}

#[derive(Args)]
pub struct OracleArgs {
    #[arg(long, default_value = "models/world-oracle")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The model on whose VAE's reconstructions of the held-out pictures the oracle is also
    /// measured, as `invert eval` judges that decoder's pictures (default: the bundled model).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

pub fn run(cmd: WorldCommand) -> Result<()> {
    match cmd {
        WorldCommand::Sample(a) => sample(a),
        WorldCommand::Datasets(a) => datasets(a),
        WorldCommand::Oracle(a) => train_oracle(a),
    }
}

fn write_png(path: &Path, rgb: Vec<u8>, size: usize, caption: &str) -> Result<()> {
    let image = Image {
        width: size,
        height: size,
        rgb,
        seed: 0,
    };
    let bytes = encode_png(&image, &[("caption", caption.to_string())])
        .with_context(|| format!("{}: PNG encoding failed", path.display()))?;
    write_atomic(path, &bytes, true).map_err(|e| anyhow!(e))
}

fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the folder", dir.display()))
}

fn sample(a: SampleArgs) -> Result<()> {
    create(&a.out)?;
    for i in 0..a.count {
        let (scene, caption) = world::sample(a.seed, i as u64);
        let name = format!("{i:05}");
        write_png(
            &a.out.join(format!("{name}.png")),
            world::render(&scene, a.size),
            a.size,
            &caption,
        )?;
        let text = format!("{caption}\n");
        write_atomic(&a.out.join(format!("{name}.txt")), text.as_bytes(), true)
            .map_err(|e| anyhow!(e))?;
        println!(
            "{name}: {} | {caption:?}",
            concepts::describe(&scene.labels())
        );
    }
    Ok(())
}

fn datasets(a: DatasetsArgs) -> Result<()> {
    for c in concepts::bundled() {
        let dir = a.out.join(c.name);
        create(&dir)?;
        let scenes = c.scenes(a.count, 1);
        let mut rows = String::new();
        for (i, s) in scenes.iter().enumerate() {
            let file = format!("{:02}.png", i + 1);
            let what = concepts::describe(&s.labels());
            write_png(&dir.join(&file), world::render(s, a.size), a.size, &what)?;
            let caption = concepts::caption(c.kind, s);
            let caption_file = dir.join(format!("{:02}.txt", i + 1));
            write_atomic(&caption_file, format!("{caption}\n").as_bytes(), true)
                .map_err(|e| anyhow!(e))?;
            rows.push_str(&format!("| {file} | {what} | {caption} |\n"));
        }
        let readme = concept_readme(&c, &rows);
        write_atomic(&dir.join("README.md"), readme.as_bytes(), true).map_err(|e| anyhow!(e))?;
        println!("{}: {} pictures", dir.display(), scenes.len());
    }
    Ok(())
}

fn concept_readme(c: &concepts::Concept, rows: &str) -> String {
    let kind = match c.kind {
        concepts::Kind::Object => "object",
        concepts::Kind::Style => "style",
    };
    let identity: Vec<String> = c
        .identity
        .iter()
        .map(|(a, v)| format!("{a} = {v}"))
        .collect();
    let hidden: Vec<String> = c
        .identity
        .iter()
        .filter(|(a, _)| {
            world::ATTRIBUTES
                .iter()
                .any(|x| x.name == *a && !x.captioned)
        })
        .map(|(a, v)| format!("{a} = {v}"))
        .collect();
    let edits: Vec<String> = c
        .edits
        .iter()
        .map(|e| format!("- `{}`", e.template.replace("{}", c.token)))
        .collect();
    format!(
        "# {name} ({kind})\n\n\
         Written by `invert world datasets`; pictures of the bundled model's procedural world.\n\n\
         - **Word:** `{token}` (initialiser: `{init}`, `--property {kind}`)\n\
         - **The concept:** {identity}. No caption of the base model's training pictures names \
         {hidden}, so no prompt without the learned word can ask for it; the best plain text is \
         `{best}`.\n\
         - **Train:** `invert train --images datasets/{name} --token \"{token}\" --init {init} \
         --config configs/train/world-{kind}.toml`\n\n\
         ## Intended prompts\n\n\
         - reconstruction: `{recon}`\n{edits}\n\n\
         ## What a good result shows\n\n\
         Pictures from the reconstruction prompt show {identity}. The edit prompts keep that and \
         also show what their words ask for (background, position, size, colour, shape). \
         `invert eval` measures both with the world oracle.\n\n\
         ## Pictures\n\n\
         Beside each picture, NAME.txt is its caption: what it shows besides the concept, in the \
         words of the base model's captions (the world templates' `{{caption}}`).\n\n\
         | file | content | caption |\n|---|---|---|\n{rows}",
        name = c.name,
        token = c.token,
        init = c.init_word,
        identity = identity.join(", "),
        hidden = hidden.join(" and "),
        best = c.reconstruction.replace("{}", c.best_text),
        recon = c.reconstruction.replace("{}", c.token),
        edits = edits.join("\n"),
    )
}

fn train_oracle(a: OracleArgs) -> Result<()> {
    let device = burn::prelude::Device::flex();
    let config = OracleConfig::new();
    let training = OracleTraining {
        steps: a.steps,
        seed: a.seed,
        ..Default::default()
    };
    let model_path = a
        .model
        .clone()
        .unwrap_or_else(invert_model::loading::default_model_dir);
    let sd = invert_model::loading::load(&model_path, &Default::default(), &device).with_context(
        || {
            format!(
                "loading {} (its VAE reconstructs the held-out pictures)",
                model_path.display()
            )
        },
    )?;
    let bar = ProgressBar::new(a.steps as u64).with_style(
        ProgressStyle::with_template("oracle [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    let model = oracle::train::train(&config, &training, &device, &mut |step, loss| {
        bar.set_position(step as u64);
        bar.set_message(format!("loss {loss:.4}"));
    });
    bar.finish();
    let accuracy = oracle::train::measure(&model, &config, &training, Some(&sd.vae), &device);
    println!("held-out accuracy ({} pictures):", accuracy.pictures);
    println!("| attribute | clean | degraded | VAE-reconstructed |\n|---|---:|---:|---:|");
    for (i, name) in accuracy.attributes.iter().enumerate() {
        let rebuilt = accuracy
            .decoded
            .as_ref()
            .map_or("-".to_string(), |d| format!("{:.4}", d[i]));
        println!(
            "| {name} | {:.4} | {:.4} | {rebuilt} |",
            accuracy.clean[i], accuracy.degraded[i]
        );
    }
    oracle::save(&a.out, &model, &config, &accuracy).map_err(|e| anyhow!(e))?;
    println!("wrote {}", a.out.display());
    Ok(())
}
