//! `invert model info`: load a model the way training and generation will, and say what it is.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::Device;
use burn::tensor::DType;
use clap::{Args, Subcommand};
use invert_model::inspect::parameter_count;
use invert_model::loading::{LoadOptions, load};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Load a model and print its family, architecture, parameter counts and any unexpected keys.
    Info(InfoArgs),
}

/// How to find and load a model; shared by every command that needs one.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A diffusers folder, a Hugging Face cache folder (models--org--name), or a single-file
    /// .safetensors/.ckpt checkpoint (default: the bundled model, models/world, or $INVERT_MODEL).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Architecture for a single-file checkpoint: a diffusers folder or a folder with
    /// text_encoder/, unet/, vae/ (and scheduler/) config files, e.g. configs/sd21-base.
    #[arg(long, alias = "model-config")]
    pub config: Option<PathBuf>,
    /// Prefer this weights variant in diffusers folders (e.g. fp16).
    #[arg(long)]
    pub variant: Option<String>,
    /// Use the U-Net's EMA weights when an original checkpoint has them.
    #[arg(long)]
    pub ema: bool,
    /// A VAE to use instead of the model's: a diffusers VAE folder (its config.json decides
    /// force_upcast) or a single .safetensors/.ckpt VAE (runs in the model's precision), e.g.
    /// an fp16-fixed SDXL VAE for --precision f16.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    #[arg(long, default_value = "auto", help = super::device::DEVICE_HELP)]
    pub device: String,
    /// Compute precision of the frozen weights (auto: f16 on a GPU that computes in it, else
    /// f32).
    #[arg(long, default_value = "auto", value_parser = invert_model::device::PRECISIONS)]
    pub precision: String,
}

impl ModelArgs {
    /// `--model`, or the bundled model.
    pub fn path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(invert_model::loading::default_model_dir)
    }

    /// The `--device` (the choice printed) and the load options (`--precision` checked
    /// against that device).
    pub fn device_and_options(&self) -> Result<(Device, LoadOptions)> {
        let (choice, dtype) = super::device::open_with_precision(&self.device, &self.precision)?;
        Ok((choice.device, self.load_options(dtype)))
    }

    /// The load options for computing in `dtype`.
    pub fn load_options(&self, dtype: DType) -> LoadOptions {
        LoadOptions {
            dtype,
            variant: self.variant.clone(),
            config_dir: self.config.clone(),
            use_ema: self.ema,
            vae: self.vae.clone(),
            ..Default::default()
        }
    }
}

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Info(args) => info(args),
    }
}

fn info(args: InfoArgs) -> Result<()> {
    print_adapters();
    let (device, options) = args.model.device_and_options()?;
    let start = Instant::now();
    let path = args.model.path();
    let sd = load(&path, &options, &device)
        .with_context(|| format!("could not load the model at {}", path.display()))?;
    let c = &sd.config;
    println!("model:        {}", sd.source.display());
    println!("family:       {}", c.family.describe());
    println!(
        "text encoder: {} layers, width {}, {} heads, {} ({} parameters)",
        c.text_encoder.num_hidden_layers,
        c.text_encoder.hidden_size,
        c.text_encoder.num_attention_heads,
        c.text_encoder.hidden_act,
        parameter_count(&sd.text_encoder)
    );
    if let (Some(cfg), Some(te2)) = (&c.text_encoder_2, &sd.text_encoder_2) {
        println!(
            "text encoder 2: {} layers, width {}, {} heads, {}, projection {} ({} parameters)",
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.hidden_act,
            cfg.projection_dim,
            parameter_count(te2)
        );
    }
    println!(
        "unet:         channels {:?}, cross-attention {}, linear projection {}, upcast attention {} ({} parameters)",
        c.unet.block_out_channels,
        c.unet.cross_attention_dim,
        c.unet.use_linear_projection,
        c.unet.upcast_attention,
        parameter_count(&sd.unet)
    );
    println!(
        "vae:          channels {:?}, latent /{} , scaling factor {}, force_upcast {} ({} parameters)",
        c.vae.block_out_channels,
        c.vae.downscale_factor(),
        c.vae.scaling_factor,
        c.vae.force_upcast,
        parameter_count(&sd.vae)
    );
    if let Some(p) = c.scheduler.get("prediction_type").and_then(|v| v.as_str()) {
        println!("prediction:   {p}");
    }
    for (component, report) in &sd.reports {
        print!("{component:<13} {} tensors loaded", report.applied);
        if report.unexpected.is_empty() {
            println!();
        } else {
            println!(
                ", {} unexpected keys ignored: {}",
                report.unexpected.len(),
                report
                    .unexpected
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    println!("loaded in {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// What wgpu sees, every graphics API asked: the list `--device auto` chooses from.
fn print_adapters() {
    if !cfg!(feature = "wgpu") {
        println!("adapters:     none (built without GPU support: --no-default-features)");
        return;
    }
    let adapters = invert_model::device::adapters();
    if adapters.is_empty() {
        println!("adapters:     none found by wgpu (no Vulkan/Metal/DX12/GL driver)");
    }
    for (i, a) in adapters.iter().enumerate() {
        let label = if i == 0 { "adapters:" } else { "" };
        let software = if a.is_software() {
            " [software: only with --device wgpu]"
        } else {
            ""
        };
        println!("{label:<13} {a}{software}");
    }
}
