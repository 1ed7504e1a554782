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
use crate::prompt::{PromptChunk, chunk_prompt};
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

/// How emphasis weights act on the text encoder's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emphasis {
    /// A1111's default ("Original"): each token's output times its weight, then the chunk
    /// brought back to its original mean.
    #[default]
    A1111,
    /// ComfyUI's: `empty + (z - empty) * w` per token, `empty` the output for the empty prompt
    /// at the same position (`ClipTokenWeightEncoder.encode_token_weights`).
    Comfy,
}

impl std::str::FromStr for Emphasis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a1111" => Ok(Emphasis::A1111),
            "comfy" => Ok(Emphasis::Comfy),
            other => Err(format!(
                "unknown weighting `{other}` (expected a1111 or comfy)"
            )),
        }
    }
}

/// The conditioning of one prompt written in A1111's syntax (`crate::prompt`): emphasis
/// weights, `BREAK`, and any length. Each 75-token chunk is encoded on its own (for SDXL by both
/// encoders, the pooled embedding from the first chunk, as A1111 does) and the chunks are
/// concatenated along the sequence; a chunk whose weights are not all 1 is weighted by
/// `emphasis`. Returns `[1, 77 k, d]`.
pub fn encode_weighted_prompt(
    sd: &StableDiffusion,
    vocab: &Vocabulary,
    prompt: &str,
    learned: LearnedRows,
    clip_skip: usize,
    emphasis: Emphasis,
    device: &Device,
) -> Result<TextConditioning, VocabularyError> {
    let chunks = chunk_prompt(&vocab.first.tokenizer, prompt)?;
    let chunks_2 = match &vocab.second {
        Some(second) => Some(chunk_prompt(&second.tokenizer, prompt)?),
        None => None,
    };
    let ids = |chunk: &PromptChunk| {
        let v: Vec<i64> = chunk.ids.iter().map(|&i| i as i64).collect();
        let n = v.len();
        Tensor::<2, Int>::from_data(TensorData::new(v, [1, n]), device)
    };
    // One chunk (and its twin for SDXL's second tokenizer) to hidden states and pooled output.
    let encode_chunk = |chunk: &PromptChunk, other: Option<&PromptChunk>| match (
        &sd.text_encoder_2,
        other,
        &vocab.second,
    ) {
        (Some(te2), Some(other), Some(second)) => {
            let tm = &sd.text_encoder.text_model;
            let layers = tm.num_layers() - clip_skip.clamp(1, tm.num_layers() - 1);
            let h1 = tm.hidden_state(ids(chunk), learned.first, layers);
            let out = te2.forward_skipping(
                ids(other),
                learned.second,
                second.tokenizer.eos_id() as i64,
                clip_skip,
            );
            (
                Tensor::cat(vec![h1, out.penultimate], 2),
                Some(out.text_embeds),
            )
        }
        _ => (
            sd.text_encoder
                .forward(ids(chunk), learned.first, clip_skip),
            None,
        ),
    };
    let empty_chunks = |tokenizer| chunk_prompt(tokenizer, "").map(|mut c| c.remove(0));
    let empty_1 = empty_chunks(&vocab.first.tokenizer)?;
    let empty_2 = match &vocab.second {
        Some(second) => Some(empty_chunks(&second.tokenizer)?),
        None => None,
    };
    let mut empty_hidden = None;
    let mut contexts = Vec::with_capacity(chunks.len());
    let mut pooled = None;
    for (i, chunk) in chunks.iter().enumerate() {
        // Both tokenizers share CLIP's vocabulary, so their chunks line up; a chunk missing on
        // the second side (not possible with equal vocabularies) is the empty prompt there.
        let other = chunks_2.as_ref().map(|c| {
            c.get(i)
                .unwrap_or(empty_2.as_ref().expect("second tokenizer"))
        });
        let (hidden, text_embeds) = encode_chunk(chunk, other);
        if pooled.is_none() {
            pooled = text_embeds;
        }
        let weighted = match emphasis {
            _ if chunk.weights.iter().all(|&w| w == 1.0) => hidden,
            Emphasis::A1111 => apply_emphasis(hidden, &chunk.weights),
            Emphasis::Comfy => {
                let empty = empty_hidden
                    .get_or_insert_with(|| encode_chunk(&empty_1, empty_2.as_ref()).0)
                    .clone();
                apply_comfy_emphasis(hidden, empty, &chunk.weights)
            }
        };
        contexts.push(weighted);
    }
    Ok(TextConditioning {
        context: Tensor::cat(contexts, 1),
        text_embeds: pooled,
    })
}

/// ComfyUI's emphasis: `empty + (z - empty) * w` per token, `empty` `[1, l, d]` the encoded
/// empty prompt.
pub fn apply_comfy_emphasis(z: Tensor<3>, empty: Tensor<3>, weights: &[f32]) -> Tensor<3> {
    let [b, l, _] = z.dims();
    let dtype = z.dtype();
    let (z, empty) = (
        z.cast(burn::tensor::DType::F32),
        empty.cast(burn::tensor::DType::F32),
    );
    let w = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [l]), &z.device())
        .reshape([1, l, 1])
        .expand([b as i64, l as i64, 1]);
    let empty = empty.expand(z.dims());
    (empty.clone() + (z - empty) * w).cast(dtype)
}

/// A1111's "Original" emphasis (`sd_emphasis.EmphasisOriginal`): each token's output times its
/// weight, then the whole scaled back to the mean it had. Weights all 1 leave `z` as it is.
pub fn apply_emphasis(z: Tensor<3>, weights: &[f32]) -> Tensor<3> {
    if weights.iter().all(|&w| w == 1.0) {
        return z;
    }
    let [b, l, _] = z.dims();
    let dtype = z.dtype();
    let z = z.cast(burn::tensor::DType::F32);
    let w = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [l]), &z.device())
        .reshape([1, l, 1])
        .expand([b as i64, l as i64, 1]);
    let original = z.clone().mean().into_scalar::<f32>();
    let scaled = z * w;
    let new = scaled.clone().mean().into_scalar::<f32>();
    scaled.mul_scalar(original / new).cast(dtype)
}

impl TextConditioning {
    /// `self` for `count` images (the batch repeated).
    pub fn repeat(self, count: usize) -> Self {
        Self {
            context: self.context.repeat_dim(0, count),
            text_embeds: self.text_embeds.map(|t| t.repeat_dim(0, count)),
        }
    }

    /// `self` with its sequence lengthened to `len` tokens by appending `empty` (an encoded
    /// empty prompt, one chunk) as often as needed: A1111's `pad_cond`, so that a prompt and a
    /// negative prompt of different lengths can be denoised in one batch.
    pub fn pad_to(self, len: usize, empty: &TextConditioning) -> Self {
        let mut parts = vec![self.context];
        let mut have = parts[0].dims()[1];
        let [b, _, _] = parts[0].dims();
        while have < len {
            parts.push(empty.context.clone().repeat_dim(0, b));
            have += empty.context.dims()[1];
        }
        Self {
            context: Tensor::cat(parts, 1),
            text_embeds: self.text_embeds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comfy_emphasis_interpolates_from_the_empty_prompt() {
        let device = Device::flex();
        let t = |v: Vec<f32>| Tensor::<3>::from_data(TensorData::new(v, [1, 2, 1]), &device);
        let got = apply_comfy_emphasis(t(vec![3.0, 5.0]), t(vec![1.0, 1.0]), &[2.0, 0.5])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(got, [1.0 + 2.0 * 2.0, 1.0 + 4.0 * 0.5]);
    }

    #[test]
    fn emphasis_scales_tokens_and_restores_the_mean() {
        let device = Device::flex();
        let z = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 2, 2]),
            &device,
        );
        let same = apply_emphasis(z.clone(), &[1.0, 1.0]);
        assert_eq!(same.into_data(), z.clone().into_data());
        // Token 0 doubled: [[2, 4], [3, 4]] (mean 3.25), then times 2.5 / 3.25.
        let got = apply_emphasis(z, &[2.0, 1.0])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let k = 2.5f32 / 3.25;
        let want = [2.0 * k, 4.0 * k, 3.0 * k, 4.0 * k];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
