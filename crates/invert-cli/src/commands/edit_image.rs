//! `invert edit --image`: Prompt-to-Prompt on a real picture. The picture is loaded and resized
//! as `generate --init-image` does, DDIM-inverted for the source prompt at guidance 1 (the
//! pivot of Mokady et al. 2022, section 3.1), optionally refined by null-text inversion
//! (`--null-text`, their Algorithm 1), and the edit starts from the inverted noise with DDIM.
//! The source prompt's regeneration is the reconstruction: its error against the picture (MSE
//! and PSNR in pixel space) is printed and stored in the PNGs' `inversion` text chunk.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use clap::Args;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use invert_model::loading::StableDiffusion;
use invert_model::pipeline::null_text_inversion::freeze;
use invert_model::pipeline::{
    DdimInversionConfig, NullTextConfig, invert_image, load_init_image, measure,
    null_text_inversion,
};
use invert_model::prompt_to_prompt::EditRequest;
use invert_model::schedulers::SamplerKind;
use invert_model::vocabulary::Vocabulary;

use super::generate::picture_tensor;

#[derive(Args)]
pub struct PictureArgs {
    /// Edit this picture (PNG, JPEG, WebP, BMP, GIF) instead of a generated one: it is
    /// DDIM-inverted for --prompt (which should describe it), and the edits start from the
    /// inverted noise, sampled with DDIM. --width/--height default to its size rounded down to
    /// a multiple of 8; another size resizes it.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Refine the inversion with null-text inversion (Mokady et al. 2022): per step, optimise
    /// the unconditional embedding so that guided sampling retraces the picture. Slower (a
    /// backward pass per update), much closer reconstructions at --cfg above 1.
    #[arg(long, requires = "image")]
    pub null_text: bool,
    /// Adam updates per denoising step for --null-text, at most (early stop below the
    /// notebook's loss threshold).
    #[arg(long, default_value_t = 10, requires = "null_text")]
    pub null_text_inner_steps: usize,
}

impl PictureArgs {
    /// Reads the picture (before the slow model load, so a bad file fails fast) and checks the
    /// settings that do not need the model.
    pub fn load(&self, cfg: f64) -> Result<Option<Picture>> {
        let Some(path) = &self.image else {
            return Ok(None);
        };
        if self.null_text && !(cfg.is_finite() && cfg > 1.0) {
            bail!(
                "--null-text optimises the unconditional half of classifier-free guidance, so it \
                 needs --cfg above 1 (got {cfg}); without --null-text, plain DDIM inversion \
                 reconstructs best at --cfg 1"
            );
        }
        let rgb = load_init_image(path)?;
        Ok(Some(Picture {
            path: path.clone(),
            rgb,
            null_text: self.null_text.then_some(self.null_text_inner_steps),
        }))
    }
}

/// A picture to edit, read but not yet inverted.
pub struct Picture {
    pub path: PathBuf,
    pub rgb: RgbImage,
    /// Null-text inversion's inner steps, when asked for.
    pub null_text: Option<usize>,
}

/// DDIM whatever was asked: the inverted noise is DDIM's (eta 0) to regenerate the picture,
/// another sampler would not retrace it. Says so when another was asked for.
pub fn sampler_kind(requested: Option<&str>) -> Result<SamplerKind> {
    if let Some(name) = requested {
        let kind = name.parse::<SamplerKind>().map_err(|e| anyhow!(e))?;
        if kind != SamplerKind::Ddim {
            eprintln!(
                "note: --image edits start from a DDIM inversion of the picture, which only \
                 DDIM sampling retraces; sampling with ddim instead of --sampler {name}"
            );
        }
    }
    Ok(SamplerKind::Ddim)
}

/// The device and model a picture edit needs: with --null-text an autodiff device and frozen
/// weights (gradients flow to the null-text embedding only, as in `invert train`).
pub fn device_for(picture: Option<&Picture>, device: Device) -> Device {
    match picture {
        Some(p) if p.null_text.is_some() => device.autodiff(),
        _ => device,
    }
}

pub fn model_for(picture: Option<&Picture>, sd: StableDiffusion) -> StableDiffusion {
    match picture {
        Some(p) if p.null_text.is_some() => freeze(sd),
        _ => sd,
    }
}

/// The inverted picture, ready to edit.
pub struct Inverted {
    path: PathBuf,
    /// The resized picture, `[1, 3, h, w]` in `[-1, 1]`.
    image: Tensor<4>,
    /// Null-text inversion's per-step unconditional embeddings.
    pub null_embeddings: Option<Vec<Tensor<3>>>,
    method: String,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Inverts `picture` for `request`'s source prompt and makes `request` start from the
/// inverted noise (same steps, DDIM).
pub fn invert(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    picture: &Picture,
    request: &mut EditRequest,
    device: &Device,
) -> Result<Inverted> {
    let base = &request.base;
    let image = picture_tensor(&picture.rgb, base.width, base.height, device);
    // Guidance 1 for the pivot (Mokady et al. 2022, section 3.1; the notebook's `ddim_loop`
    // predicts with the prompt alone).
    let config = DdimInversionConfig::new()
        .with_steps(base.steps)
        .with_guidance(1.0)
        .with_clip_skip(base.clip_skip);
    let progress = bar(base.steps, "inverting");
    let inverted = invert_image(sd, vocab, &image, &base.prompt, &config)
        .with_context(|| format!("DDIM inversion of {}", picture.path.display()))?;
    progress.finish_and_clear();
    let (null_embeddings, method) = match picture.null_text {
        Some(inner_steps) => {
            let config = NullTextConfig::new()
                .with_guidance(base.guidance)
                .with_inner_steps(inner_steps);
            let progress = bar(base.steps, "null-text inversion");
            let nulls =
                null_text_inversion(sd, vocab, &inverted, &base.negative, &config, |step, _| {
                    progress.set_position(step as u64)
                })
                .with_context(|| format!("null-text inversion of {}", picture.path.display()))?;
            progress.finish_and_clear();
            let updates: usize = nulls.updates.iter().sum();
            eprintln!(
                "null-text inversion: {updates} Adam updates over {} steps, last loss {:.3e}",
                base.steps,
                nulls.losses.last().copied().unwrap_or(f32::NAN)
            );
            (
                Some(nulls.null_embeddings),
                format!(
                    "null-text inversion (DDIM pivot at guidance 1, {inner_steps} inner steps)"
                ),
            )
        }
        None => (None, "DDIM inversion (guidance 1)".to_owned()),
    };
    request.base.init_latents = Some(inverted.noise().clone());
    Ok(Inverted {
        path: picture.path.clone(),
        image,
        null_embeddings,
        method,
    })
}

/// Measures the source prompt's regeneration (`latents`, the edit's first) against the
/// picture, prints it, and returns the `inversion` text chunk.
pub fn report(sd: &StableDiffusion, inverted: &Inverted, latents: Tensor<4>, cfg: f64) -> String {
    let rec = measure(sd, &inverted.image, latents);
    let text = format!(
        "Image: {}\nMethod: {}\nReconstruction at CFG {cfg}: MSE {:.6}, PSNR {:.2} dB",
        file_name(&inverted.path),
        inverted.method,
        rec.mse,
        rec.psnr
    );
    println!(
        "reconstruction of {} ({}, regenerated at cfg {cfg}): MSE {:.6}, PSNR {:.2} dB",
        inverted.path.display(),
        inverted.method,
        rec.mse,
        rec.psnr
    );
    text
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
