//! `invert edit`: Prompt-to-Prompt (Hertz et al. 2022) — a source prompt and edited prompts
//! generated together from one seed while the edits' attention follows the source's (see
//! `invert_model::prompt_to_prompt`). Writes each image as a PNG with A1111-style `parameters`
//! (and the edit settings in a `prompt-to-prompt` text chunk), a side-by-side strip, and with
//! `--attention-maps` the averaged cross-attention map of every token (the paper's Figure 4).
//! With `--image` the source is a real picture, inverted first (`edit_image.rs`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use invert_model::loading::{StableDiffusion, load};
use invert_model::pipeline::{
    Image, Parameters, Request, a1111_sampler_name, decode, encode_png, grid,
};
use invert_model::prompt_to_prompt::local_blend::DEFAULT_THRESHOLD;
use invert_model::prompt_to_prompt::{
    EditMode, EditOutput, EditRequest, edit_latents_with_nulls, token_images,
};
use invert_model::schedulers::{SamplerConfig, SamplerKind};
use invert_model::vocabulary::Vocabulary;
use invert_model::weights::safetensors_write::write_atomic;

use super::edit_image::{self, PictureArgs};
use super::generate::{model_identity, next_index, picture_size, write_png};
use super::model::ModelArgs;
use super::words::{add_embedding_files, word_hashes};

#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The source prompt (plain text; learned words as their token, e.g. <cat-toy>).
    #[arg(long)]
    pub prompt: String,
    /// An edited prompt; repeat for several. With only --reweight, defaults to the source.
    #[arg(long = "edit")]
    pub edits: Vec<String>,
    /// replace: swap words one for one (same word count); refine: add or remove words
    /// (aligned on the token ids). Default: replace, or none with only --reweight.
    #[arg(long)]
    pub mode: Option<EditMode>,
    /// Reweight a word of the edited prompts' attention, `word:weight` (e.g. `fluffy:3`);
    /// repeat or separate with commas.
    #[arg(long = "reweight", value_delimiter = ',')]
    pub reweight: Vec<String>,
    /// Local blend: only the region these words attend to may change (comma-separated; each
    /// prompt uses those it contains, e.g. "cat,tiger").
    #[arg(long, value_delimiter = ',')]
    pub blend: Vec<String>,
    /// The local blend's mask threshold (of the maximum attention).
    #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
    pub blend_threshold: f32,
    /// Fraction of the steps in which the edits' cross-attention comes from the source.
    #[arg(long, default_value_t = 0.8)]
    pub cross_replace: f64,
    /// Fraction of the steps in which the source's self-attention is injected (layers of at
    /// most 16x16 tokens, as the reference).
    #[arg(long, default_value_t = 0.4)]
    pub self_replace: f64,
    /// Negative prompt, shared by all prompts.
    #[arg(long, default_value = "")]
    pub negative: String,
    /// A learned embedding to use (any format invert reads); repeat for several.
    #[arg(long = "embedding")]
    pub embeddings: Vec<PathBuf>,
    /// Sampler: ddim, pndm, euler, euler-a, dpm++2m (default: the model's scheduler).
    #[arg(long)]
    pub sampler: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 or less turns guidance off).
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    pub cfg: f64,
    /// The seed of the initial latents every prompt shares. Default: random, printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Width in pixels, a multiple of 8 (default: the model's native size).
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// Text-encoder layers to skip at the end (A1111's "clip skip"; 1 = none).
    #[arg(long, default_value_t = 1)]
    pub clip_skip: usize,
    /// Also write each prompt's cross-attention map per token, averaged over steps, layers
    /// and heads at 16x16 (the paper's Figure 4), upscaled to 256x256.
    #[arg(long)]
    pub attention_maps: bool,
    /// Output folder.
    #[arg(long, default_value = "out/edits")]
    pub out: PathBuf,
    #[command(flatten)]
    pub picture: PictureArgs,
}

/// `word:weight` pairs.
fn parse_reweight(items: &[String]) -> Result<Vec<(String, f32)>> {
    items
        .iter()
        .map(|item| {
            let (word, weight) = item
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("--reweight `{item}`: write word:weight, e.g. fluffy:3"))?;
            let w: f32 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w: &f32| w.is_finite())
                .ok_or_else(|| anyhow!("--reweight `{item}`: `{weight}` is not a number"))?;
            if word.trim().is_empty() {
                bail!("--reweight `{item}`: the word is empty");
            }
            Ok((word.trim().to_owned(), w))
        })
        .collect()
}

fn load_vocabulary(
    sd: &StableDiffusion,
    paths: &[PathBuf],
) -> Result<(Vocabulary, Vec<(String, String)>)> {
    let mut vocab = Vocabulary::for_model(sd).context("setting up the tokenizer")?;
    let hashes = word_hashes(&add_embedding_files(&mut vocab, paths)?)?;
    Ok((vocab, hashes))
}

/// The edit's settings, for the images' `prompt-to-prompt` text chunk.
fn settings(r: &EditRequest) -> String {
    let mode = match r.mode {
        Some(EditMode::Replace) => "replace",
        Some(EditMode::Refine) => "refine",
        None => "reweight",
    };
    let mut s = format!(
        "Source: {}\nEdits: {}\nMode: {mode}, Cross replace: {}, Self replace: {}",
        r.base.prompt,
        r.edits.join(" | "),
        r.cross_replace,
        r.self_replace
    );
    if !r.reweight.is_empty() {
        let w: Vec<String> = r.reweight.iter().map(|(w, v)| format!("{w}:{v}")).collect();
        s.push_str(&format!(", Reweight: {}", w.join(",")));
    }
    if !r.blend.is_empty() {
        s.push_str(&format!(
            ", Blend: {} (threshold {})",
            r.blend.join(","),
            r.blend_threshold
        ));
    }
    s
}

/// An image with A1111's `parameters`, the edit's settings and, for a real picture, the
/// inversion's reconstruction error.
fn write_edit_png(
    dir: &Path,
    name: &str,
    image: &Image,
    params: &Parameters,
    edit: &str,
    inversion: Option<&str>,
) -> Result<PathBuf> {
    let path = dir.join(name);
    let mut text = vec![
        ("parameters", params.to_a1111()),
        ("prompt-to-prompt", edit.to_owned()),
    ];
    if let Some(inversion) = inversion {
        text.push(("inversion", inversion.to_owned()));
    }
    let bytes = encode_png(image, &text).context("encoding PNG")?;
    write_atomic(&path, &bytes, false).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A token's text as a file-name part.
fn file_part(token: &str) -> String {
    let s: String = token
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.chars().take(40).collect()
}

/// Each prompt's per-token attention images into `dir`, and one strip per prompt.
fn write_attention_maps(
    dir: &Path,
    out: &EditOutput,
    vocab: &Vocabulary,
    params: &[Parameters],
) -> Result<()> {
    let stored = out.store.resolutions();
    let [lh, lw] = {
        let [_, _, h, w] = out.latents.dims();
        [h, w]
    };
    // The reference shows the 16x16 maps at 512 px: the stored grid nearest latent / 4.
    let target = (lh / 4) * (lw / 4);
    let Some(&grid_size) = stored.iter().min_by_key(|[h, w]| (h * w).abs_diff(target)) else {
        bail!("no cross-attention maps were stored (this U-Net has no small attention layers)");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scale = 256 / grid_size[0].max(grid_size[1]).max(1);
    for (k, tokens) in out.tokens.iter().enumerate() {
        let maps = out
            .store
            .average_maps(k, grid_size)
            .ok_or_else(|| anyhow!("no maps at {grid_size:?}"))?;
        let greys = token_images(&maps, grid_size, tokens.len, scale.max(1));
        let mut images = Vec::new();
        for (i, grey) in greys.iter().enumerate() {
            let text = vocab
                .first
                .tokenizer
                .decode_id(tokens.ids[i])
                .unwrap_or_else(|| tokens.ids[i].to_string());
            let image = Image {
                width: grid_size[1] * scale.max(1),
                height: grid_size[0] * scale.max(1),
                rgb: grey.iter().flat_map(|&v| [v, v, v]).collect(),
                seed: params[k].seed,
            };
            write_png(
                dir,
                &format!("p{k}-{i:02}-{}.png", file_part(&text)),
                &image,
                &params[k],
            )?;
            images.push(image);
        }
        let strip = grid(&images, images.len());
        let path = write_png(dir, &format!("p{k}.png"), &strip, &params[k])?;
        println!("{}", path.display());
    }
    Ok(())
}

pub fn run(args: EditArgs) -> Result<()> {
    let reweight = parse_reweight(&args.reweight)?;
    let edits = match (args.edits.is_empty(), reweight.is_empty()) {
        (false, _) => args.edits.clone(),
        (true, false) => vec![args.prompt.clone()],
        (true, true) => {
            bail!("give an edited prompt with --edit (or reweight words with --reweight)")
        }
    };
    let mode = match (args.mode, reweight.is_empty()) {
        (Some(m), _) => Some(m),
        (None, true) => Some(EditMode::Replace),
        (None, false) => None,
    };
    // A real picture is read before the (slow) model load, so a bad file fails fast.
    let picture = args.picture.load(args.cfg)?;
    let (device, options) = args.model.device_and_options()?;
    let device = edit_image::device_for(picture.as_ref(), device);
    let model_path = args.model.path();
    let sd: StableDiffusion = load(&model_path, &options, &device)
        .with_context(|| format!("could not load the model at {}", model_path.display()))?;
    let sd = edit_image::model_for(picture.as_ref(), sd);
    let (vocab, ti_hashes) = load_vocabulary(&sd, &args.embeddings)?;

    let kind = match &args.sampler {
        _ if picture.is_some() => edit_image::sampler_kind(args.sampler.as_deref())?,
        Some(name) => name.parse::<SamplerKind>().map_err(|e| anyhow!(e))?,
        None => sd
            .config
            .scheduler
            .get("_class_name")
            .and_then(|c| c.as_str())
            .and_then(SamplerKind::from_class_name)
            .unwrap_or(SamplerKind::Pndm),
    };
    let rgb = picture.as_ref().map(|p| &p.rgb);
    let (width, height) = picture_size(&sd, rgb, args.width, args.height);
    // A picture's edit draws no noise (DDIM, eta 0): the seed only names the files.
    let seed = args
        .seed
        .or(picture.as_ref().map(|_| 0))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 4_294_967_296)
                .unwrap_or(0)
        });
    let mut request = EditRequest {
        base: Request {
            prompt: args.prompt.clone(),
            negative: args.negative.clone(),
            steps: args.steps,
            guidance: args.cfg,
            seed,
            width,
            height,
            sampler: SamplerConfig::new(kind),
            clip_skip: args.clip_skip,
            emphasis: Default::default(),
            init_latents: None,
        },
        edits,
        mode,
        reweight,
        blend: args.blend.iter().map(|w| w.trim().to_owned()).collect(),
        blend_threshold: args.blend_threshold,
        cross_replace: args.cross_replace,
        self_replace: args.self_replace,
    };

    let inverted = picture
        .as_ref()
        .map(|p| edit_image::invert(&sd, &vocab, p, &mut request, &device))
        .transpose()?;
    let nulls = inverted.as_ref().and_then(|i| i.null_embeddings.as_deref());

    let bar = ProgressBar::new(args.steps as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(match &picture {
        Some(_) => "editing".to_owned(),
        None => format!("seed {seed}"),
    });
    let out = edit_latents_with_nulls(&sd, &vocab, &request, nulls, &device, |step, total| {
        bar.set_length(total as u64);
        bar.set_position(step as u64);
    })
    .context("Prompt-to-Prompt editing")?;
    bar.finish_and_clear();
    let images = decode(&sd, out.latents.clone(), seed);
    // The source image is the picture's reconstruction: how close it comes is the inversion's
    // error.
    let inversion = inverted.as_ref().map(|inv| {
        let source = out.latents.clone().narrow(0, 0, 1);
        edit_image::report(&sd, inv, source, args.cfg)
    });

    let (model_name, model_hash) = model_identity(&sd)?;
    let prompts = request.prompts();
    let params: Vec<Parameters> = prompts
        .iter()
        .map(|p| Parameters {
            prompt: p.clone(),
            negative: args.negative.clone(),
            steps: args.steps,
            sampler: a1111_sampler_name(kind, false),
            cfg: args.cfg,
            seed,
            width,
            height,
            model_name: model_name.clone(),
            model_hash: model_hash.clone(),
            clip_skip: args.clip_skip,
            embeddings: ti_hashes.clone(),
            denoising_strength: None,
        })
        .collect();

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let index = next_index(&args.out);
    let stem = format!("{index:05}-{seed}");
    let edit = settings(&request);
    for (k, image) in images.iter().enumerate() {
        let name = if k == 0 {
            format!("{stem}-source.png")
        } else {
            format!("{stem}-edit{k}.png")
        };
        let path = write_edit_png(
            &args.out,
            &name,
            image,
            &params[k],
            &edit,
            inversion.as_deref(),
        )?;
        println!("{}", path.display());
    }
    let strip = grid(&images, images.len());
    let path = write_edit_png(
        &args.out,
        &format!("{stem}-strip.png"),
        &strip,
        &params[0],
        &edit,
        inversion.as_deref(),
    )?;
    println!("{}", path.display());
    if args.attention_maps {
        let dir = args.out.join(format!("{stem}-attention"));
        write_attention_maps(&dir, &out, &vocab, &params)?;
    }
    Ok(())
}
