//! Prompts to what the U-Net is conditioned on, as diffusers' `encode_prompt` does it:
//! - SD 1.x/2.x (pipeline_stable_diffusion.py): the text encoder's output after `clip_skip - 1`
//!   skipped layers, through the final LayerNorm;
//! - SDXL (pipeline_stable_diffusion_xl.py): the penultimate hidden state of **both** encoders,
//!   without the final LayerNorm, concatenated along the width (768 + 1280 = 2048), and the
//!   second encoder's pooled, projected `text_embeds` (final LayerNorm at the end-of-text
//!   position, not `argmax(ids)`, which would pick a learned word's id >= 49408); plus the
//!   micro-conditioning `time_ids` (SDXL report, section 2.2), see [`sdxl_time_ids`].

use burn::prelude::*;

use crate::loading::StableDiffusion;
use crate::unet::AddedConditions;
use crate::vocabulary::{Vocabulary, VocabularyError};

/// The U-Net's text conditioning for a batch of prompts.
#[derive(Debug, Clone)]
pub struct TextConditioning {
    /// `[b, 77, cross_attention_dim]`.
    pub context: Tensor<3>,
    /// SDXL's pooled `text_embeds` `[b, projection_dim]`.
    pub text_embeds: Option<Tensor<2>>,
}

impl TextConditioning {
    /// Zeros of the same shapes: SDXL's unconditional input when `force_zeros_for_empty_prompt`
    /// and no negative prompt is given.
    pub fn zeros_like(&self) -> Self {
        Self {
            context: self.context.zeros_like(),
            text_embeds: self.text_embeds.as_ref().map(|t| t.zeros_like()),
        }
    }

    /// `self` then `other` along the batch (classifier-free guidance runs both at once).
    pub fn cat(self, other: Self) -> Self {
        Self {
            context: Tensor::cat(vec![self.context, other.context], 0),
            text_embeds: match (self.text_embeds, other.text_embeds) {
                (Some(a), Some(b)) => Some(Tensor::cat(vec![a, b], 0)),
                _ => None,
            },
        }
    }

    /// The added conditions of an SDXL U-Net for this batch with `time_ids` `[b, 6]`; `None`
    /// for models without them.
    pub fn added(&self, time_ids: impl FnOnce() -> Tensor<2>) -> Option<AddedConditions> {
        self.text_embeds.as_ref().map(|t| AddedConditions {
            text_embeds: t.clone(),
            time_ids: time_ids(),
        })
    }
}

/// The learned words' rows spliced into each encoder's token lookup (ids past the vocabulary):
/// [`Vocabulary::extra`] and [`Vocabulary::extra_2`] when generating, the trained v* (with a
/// gradient) when training.
#[derive(Debug, Clone, Copy, Default)]
pub struct LearnedRows<'a> {
    pub first: Option<&'a Tensor<2>>,
    pub second: Option<&'a Tensor<2>>,
}

/// The conditioning of `prompts` for `sd`. `clip_skip` is A1111's (1 = none; SDXL then uses
/// the penultimate layer, as its pipeline always does).
pub fn encode_prompts(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    prompts: &[String],
    learned: LearnedRows,
    clip_skip: usize,
    device: &Device,
) -> Result<TextConditioning, VocabularyError> {
    let (ids, _) = vocab.encode(prompts, device)?;
    let Some(te2) = &sd.text_encoder_2 else {
        return Ok(TextConditioning {
            context: sd.text_encoder.forward(ids, learned.first, clip_skip),
            text_embeds: None,
        });
    };
    let second = vocab
        .second
        .as_ref()
        .ok_or_else(|| VocabularyError::Invalid {
            token: String::new(),
            reason: "this SDXL model needs a vocabulary with its second tokenizer \
                     (Vocabulary::for_model)"
                .into(),
        })?;
    let (ids_2, _) = second.encode(prompts, device)?;
    let tm = &sd.text_encoder.text_model;
    let layers = tm.num_layers() - clip_skip.clamp(1, tm.num_layers() - 1);
    let hidden_1 = tm.hidden_state(ids, learned.first, layers);
    let out_2 = te2.forward_skipping(
        ids_2,
        learned.second,
        second.tokenizer.eos_id() as i64,
        clip_skip,
    );
    Ok(TextConditioning {
        context: Tensor::cat(vec![hidden_1, out_2.penultimate], 2),
        text_embeds: Some(out_2.text_embeds),
    })
}

/// SDXL's micro-conditioning for one image: `(original height, width, crop top, crop left,
/// target height, width)` in pixels (`_get_add_time_ids`; diffusers and A1111 pass the output
/// size as both original and target, with no crop, when generating).
pub fn sdxl_time_ids(
    original: [usize; 2],
    crop_top_left: [usize; 2],
    target: [usize; 2],
) -> [f32; 6] {
    [
        original[0] as f32,
        original[1] as f32,
        crop_top_left[0] as f32,
        crop_top_left[1] as f32,
        target[0] as f32,
        target[1] as f32,
    ]
}

/// `rows` of time ids as a `[b, 6]` tensor.
pub fn time_ids_tensor(rows: &[[f32; 6]], device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), 6]), device)
}
