//! `invert pretrain`: trains the bundled base model on the procedural world (see
//! `invert_world::pretrain`).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use invert_world::pretrain::{self, PretrainConfig, Progress};

#[derive(Args)]
pub struct PretrainArgs {
    /// Output diffusers folder (created; a run interrupted here resumes from out/work/).
    #[arg(long)]
    pub out: PathBuf,
    /// TOML file with the run's settings (default: the values of configs/pretrain/world.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override the VAE stage's steps.
    #[arg(long)]
    pub vae_steps: Option<usize>,
    /// Override the diffusion stage's steps.
    #[arg(long)]
    pub diffusion_steps: Option<usize>,
    /// Override how many pictures are encoded for the diffusion stage.
    #[arg(long)]
    pub latent_pictures: Option<usize>,
    /// Keep out/work/ (checkpoints, cached latents) after the folder is written.
    #[arg(long)]
    pub keep_work: bool,
    /// Only write the folder from the run's latest checkpoints (to look at a model while it
    /// trains); trains nothing.
    #[arg(long)]
    pub export_checkpoint: bool,
    #[arg(long, default_value = "auto", help = super::device::DEVICE_HELP)]
    pub device: String,
}

pub fn run(args: PretrainArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the config", path.display()))?;
            toml::from_str::<PretrainConfig>(&text)
                .with_context(|| format!("{}: not a pretraining config", path.display()))?
        }
        None => PretrainConfig::default(),
    };
    if let Some(v) = args.vae_steps {
        config.vae_steps = v;
    }
    if let Some(v) = args.diffusion_steps {
        config.diffusion_steps = v;
    }
    if let Some(v) = args.latent_pictures {
        config.latent_pictures = v;
    }
    let device = super::device::open(&args.device)?.device;
    if args.export_checkpoint {
        let step =
            pretrain::export_checkpoint(&config, &args.out, &device).map_err(|e| anyhow!(e))?;
        println!(
            "wrote {} from the checkpoint of diffusion step {step}",
            args.out.display()
        );
        return Ok(());
    }
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    let mut bar: Option<(&'static str, ProgressBar)> = None;
    let started = std::time::Instant::now();
    let mut on_progress = |p: Progress| {
        if bar.as_ref().map(|(s, _)| *s) != Some(p.stage) {
            if let Some((_, old)) = bar.take() {
                old.finish();
            }
            let b = ProgressBar::new(p.total as u64).with_style(style.clone());
            b.set_prefix(p.stage);
            bar = Some((p.stage, b));
        }
        let (_, b) = bar.as_ref().expect("set above");
        b.set_position(p.step as u64);
        // Without a terminal the bar is hidden: log a line now and then instead.
        if b.is_hidden() && (p.step.is_multiple_of(100) || p.step == p.total) {
            println!("{} {}/{} loss {:.4}", p.stage, p.step, p.total, p.loss);
        }
        if p.stage != "encode" {
            b.set_message(format!("loss {:.4}", p.loss));
        }
    };
    pretrain::run(
        &config,
        &args.out,
        args.keep_work,
        &device,
        &mut on_progress,
    )
    .map_err(|e| anyhow!(e))?;
    if let Some((_, b)) = bar.take() {
        b.finish();
    }
    println!(
        "wrote {} in {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
