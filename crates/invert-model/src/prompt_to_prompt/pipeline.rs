//! The Prompt-to-Prompt sampling loop: `Prompt2PromptPipeline.__call__` (diffusers'
//! examples/community/pipeline_prompt2prompt.py) with `create_controller`'s choices. All
//! prompts share the initial latents (the paper's and the notebooks' `latent.expand(...)`), the
//! U-Net runs the unconditional and conditional halves in one batch, the controller edits the
//! conditional half's attention, and the local blend runs after every sampler step.
//!
//! Prompts are plain text in one 77-token window, as in the reference (token positions must be
//! known for the alignment; A1111's emphasis syntax is not parsed, reweighting is P2P's own way).

use burn::prelude::*;
use burn::tensor::DType;

use super::EditError;
use super::attention_store::AttentionStore;
use super::controllers::{CrossEdit, EditController};
use super::local_blend::LocalBlend;
use super::seq_aligner::{PromptTokens, equalizer, refinement_mapper, replacement_mapper};
use crate::loading::StableDiffusion;
use crate::pipeline::noise::NoiseGenerator;
use crate::pipeline::prompt_encoding::{LearnedRows, encode_prompts};
use crate::pipeline::text_to_image::{Request, validate};
use crate::schedulers::NoiseScheduleConfig;
use crate::vocabulary::Vocabulary;

/// How the edits' cross-attention follows the source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditMode {
    /// `AttentionReplace`: words swapped one for one (same word count).
    Replace,
    /// `AttentionRefine`: words added or removed, matched by aligning the token ids.
    Refine,
}

impl std::str::FromStr for EditMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "replace" => Ok(EditMode::Replace),
            "refine" => Ok(EditMode::Refine),
            other => Err(format!(
                "unknown mode `{other}` (expected replace or refine)"
            )),
        }
    }
}

/// A source prompt and its edits, generated together.
#[derive(Debug, Clone)]
pub struct EditRequest {
    /// The source prompt (`base.prompt`) and the shared settings. `base.init_latents`, when
    /// set, is one image's `[1, c, h, w]`, shared by all prompts; `base.emphasis` is unused
    /// (plain prompts).
    pub base: Request,
    /// The edited prompts.
    pub edits: Vec<String>,
    /// `None` with `reweight`: the reference's standalone `AttentionReweight` (the edit's
    /// cross-attention is the source's, reweighted).
    pub mode: Option<EditMode>,
    /// Words of the edited prompts and their attention weights (`AttentionReweight`'s
    /// equalizer), applied on top of `mode`.
    pub reweight: Vec<(String, f32)>,
    /// Words whose attention masks the region an edit may change (`LocalBlend`); each prompt
    /// uses those of them it contains.
    pub blend: Vec<String>,
    pub blend_threshold: f32,
    /// Fraction of the steps with the cross-attention edit (`n_cross_replace`).
    pub cross_replace: f64,
    /// Fraction of the steps with the source's self-attention injected (`n_self_replace`).
    pub self_replace: f64,
}

/// The denoised latents of every prompt (source first) and what the editing saw.
#[derive(Debug)]
pub struct EditOutput {
    /// `[1 + edits, c, h, w]`, unscaled (ready for [`crate::pipeline::decode`]).
    pub latents: Tensor<4>,
    pub tokens: Vec<PromptTokens>,
    /// The conditional cross-attention maps summed over the steps.
    pub store: AttentionStore,
}

impl EditRequest {
    /// All prompts, source first.
    pub fn prompts(&self) -> Vec<String> {
        std::iter::once(self.base.prompt.clone())
            .chain(self.edits.iter().cloned())
            .collect()
    }

    /// The controller for `tokens` (source first) and `num_steps` inference steps.
    pub fn controller(
        &self,
        tokens: &[PromptTokens],
        num_steps: usize,
        guided: bool,
    ) -> Result<EditController, EditError> {
        for (name, value) in [
            ("--cross-replace", self.cross_replace),
            ("--self-replace", self.self_replace),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(EditError::Fraction { name, value });
            }
        }
        let (source, edits) = tokens.split_first().ok_or(EditError::NoEdits)?;
        if edits.is_empty() {
            return Err(EditError::NoEdits);
        }
        let aligned = match self.mode {
            Some(EditMode::Replace) => Some(CrossEdit::Replace {
                mappers: edits
                    .iter()
                    .map(|e| replacement_mapper(source, e))
                    .collect::<Result<_, _>>()?,
            }),
            Some(EditMode::Refine) => {
                let (mappers, alphas) = edits.iter().map(|e| refinement_mapper(source, e)).unzip();
                Some(CrossEdit::Refine { mappers, alphas })
            }
            None => None,
        };
        let cross = if self.reweight.is_empty() {
            aligned.ok_or(EditError::NothingToDo)?
        } else {
            for (word, _) in &self.reweight {
                require_word("--reweight", word, edits, &self.edits)?;
            }
            CrossEdit::Reweight {
                equalizers: edits.iter().map(|e| equalizer(e, &self.reweight)).collect(),
                inner: aligned.map(Box::new),
            }
        };
        let local_blend = if self.blend.is_empty() {
            None
        } else {
            for word in &self.blend {
                require_word("--blend", word, tokens, &self.prompts())?;
            }
            Some(LocalBlend {
                word_positions: tokens
                    .iter()
                    .map(|t| self.blend.iter().flat_map(|w| t.word_inds(w)).collect())
                    .collect(),
                threshold: self.blend_threshold,
            })
        };
        let (cross_steps, self_steps) =
            EditController::step_ranges(num_steps, self.cross_replace, self.self_replace);
        Ok(EditController {
            cross,
            prompts: tokens.len(),
            guided,
            cross_steps,
            self_steps,
            local_blend,
            store: AttentionStore::default(),
            step: 0,
        })
    }
}

fn require_word(
    option: &'static str,
    word: &str,
    tokens: &[PromptTokens],
    prompts: &[String],
) -> Result<(), EditError> {
    if tokens.iter().any(|t| !t.word_inds(word).is_empty()) {
        return Ok(());
    }
    Err(EditError::WordNotFound {
        option,
        word: word.to_owned(),
        prompts: prompts
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Runs the edit: the denoised latents of the source and every edit. `progress` is called
/// after each denoising step with (step, total).
pub fn edit_latents(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    r: &EditRequest,
    device: &Device,
    progress: impl FnMut(usize, usize),
) -> Result<EditOutput, EditError> {
    edit_latents_with_nulls(sd, vocab, r, None, device, progress)
}

/// [`edit_latents`], optionally with null-text inversion's unconditional embeddings
/// (`crate::pipeline::null_text_inversion`), one `[1, 77, d]` per step: step `i`'s
/// unconditional half is `null_embeddings[i]` for every prompt instead of the negative
/// prompt's, as the authors' notebook (`null_text_w_ptp.ipynb`, `text2image_ldm_stable` with
/// `uncond_embeddings`) edits an inverted picture.
pub fn edit_latents_with_nulls(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    r: &EditRequest,
    null_embeddings: Option<&[Tensor<3>]>,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<EditOutput, EditError> {
    if sd.text_encoder_2.is_some() {
        return Err(EditError::Sdxl);
    }
    let shape = validate(sd, &r.base, 1)?;
    if let Some(nulls) = null_embeddings
        && (nulls.len() != r.base.steps || r.base.guidance <= 1.0)
    {
        return Err(EditError::NullEmbeddings {
            found: nulls.len(),
            steps: r.base.steps,
            guidance: r.base.guidance,
        });
    }
    let prompts = r.prompts();
    let tokens: Vec<PromptTokens> = prompts
        .iter()
        .map(|p| PromptTokens::new(&vocab.first.tokenizer, p))
        .collect::<Result<_, _>>()?;
    let guided = r.base.guidance > 1.0;
    let mut controller = r.controller(&tokens, r.base.steps, guided)?;
    let n = prompts.len();

    let schedule = NoiseScheduleConfig::from_json(&sd.config.scheduler)
        .map_err(|e| EditError::Generate(e.into()))?;
    let mut sampler = r
        .base
        .sampler
        .init(&schedule)
        .map_err(|e| EditError::Generate(e.into()))?;
    sampler
        .set_timesteps(r.base.steps)
        .map_err(|e| EditError::Generate(e.into()))?;

    let extra = vocab.extra(device);
    let learned = LearnedRows {
        first: extra.as_ref(),
        second: None,
    };
    let cond = encode_prompts(sd, vocab, &prompts, learned, r.base.clip_skip, device)?;
    let context = if guided {
        let negatives = vec![r.base.negative.clone(); n];
        let uncond = encode_prompts(sd, vocab, &negatives, learned, r.base.clip_skip, device)?;
        Tensor::cat(vec![uncond.context, cond.context.clone()], 0)
    } else {
        cond.context.clone()
    };

    // One seed, one draw: every prompt starts from the same latents (and, for ancestral
    // samplers, gets the same noise each step).
    let mut generator = NoiseGenerator::new(r.base.seed);
    let initial = match &r.base.init_latents {
        Some(l) => l.clone(),
        None => generator.tensor(shape, device),
    };
    let mut latents = initial
        .repeat_dim(0, n)
        .mul_scalar(sampler.init_noise_sigma());

    let timesteps: Vec<f64> = sampler.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let input = sampler.scale_model_input(latents.clone(), i);
        let input = if guided {
            Tensor::cat(vec![input.clone(), input], 0)
        } else {
            input
        };
        let b = input.dims()[0];
        let t_batch = Tensor::<1>::from_data(TensorData::new(vec![t as f32; b], [b]), device);
        let context = match null_embeddings {
            Some(nulls) => Tensor::cat(
                vec![nulls[i].clone().repeat_dim(0, n), cond.context.clone()],
                0,
            ),
            None => context.clone(),
        };
        let out = sd
            .unet
            .forward_controlled(input, t_batch, context, None, Some(&mut controller))
            .cast(DType::F32);
        controller.end_step();
        let out = if guided {
            let [uncond, text] = out.chunk(2, 0).try_into().expect("two halves");
            uncond.clone() + (text - uncond).mul_scalar(r.base.guidance)
        } else {
            out
        };
        let noise = sampler
            .needs_noise()
            .then(|| generator.tensor(shape, device).repeat_dim(0, n));
        latents = sampler.step(out, i, latents, noise);
        latents = controller.step_callback(latents);
        progress(i + 1, timesteps.len());
    }
    Ok(EditOutput {
        latents,
        tokens,
        store: controller.store,
    })
}
