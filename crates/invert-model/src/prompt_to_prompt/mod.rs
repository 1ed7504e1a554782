//! Prompt-to-Prompt image editing (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with
//! Cross Attention Control", arXiv:2208.01626): a source prompt and edited prompts are denoised
//! together from the same initial latents while the edits' attention maps are taken from the
//! source's, so the edit changes what the words say and keeps the layout.
//!
//! Reference: diffusers' examples/community/pipeline_prompt2prompt.py (`Prompt2PromptPipeline`,
//! `create_controller`), itself from the authors' google/prompt-to-prompt (`ptp_utils.py`,
//! `seq_aligner.py`). The U-Net exposes its attention probabilities through
//! [`crate::attention::AttentionControl`]; [`EditController`] is the reference's
//! `AttentionControlEdit`.

pub mod attention_store;
pub mod controllers;
pub mod local_blend;
pub mod pipeline;
pub mod seq_aligner;

pub use attention_store::{AttentionStore, token_images};
pub use controllers::{CrossEdit, EditController};
pub use local_blend::LocalBlend;
pub use pipeline::{EditMode, EditOutput, EditRequest, edit_latents, edit_latents_with_nulls};
pub use seq_aligner::PromptTokens;

use crate::pipeline::GenerateError;
use crate::tokenizer::TokenizerError;
use crate::vocabulary::VocabularyError;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(
        "--mode replace swaps words one for one, so each edit needs as many words as the source \
         prompt (the source has {source_words}, `{edit}` has {edit_words}); use --mode refine \
         to add or remove words"
    )]
    ReplaceWordCount {
        source_words: usize,
        edit: String,
        edit_words: usize,
    },
    #[error(
        "`{prompt}` has {tokens} tokens; Prompt-to-Prompt aligns one 77-token window, so \
         prompts may have at most {max}"
    )]
    TooLong {
        prompt: String,
        tokens: usize,
        max: usize,
    },
    #[error("could not match the tokens of `{prompt}` to its space-separated words")]
    WordSplit { prompt: String },
    #[error(
        "{option} word `{word}` is not a word of {prompts} (words match exactly, as split at spaces, punctuation included)"
    )]
    WordNotFound {
        option: &'static str,
        word: String,
        prompts: String,
    },
    #[error("give at least one edited prompt (--edit)")]
    NoEdits,
    #[error("nothing to edit: choose --mode replace or refine, or reweight words (--reweight)")]
    NothingToDo,
    #[error("{name} must be a fraction in [0, 1] (got {value})")]
    Fraction { name: &'static str, value: f64 },
    #[error(
        "null-text inversion gave {found} unconditional embeddings for {steps} steps at guidance \
         {guidance}; editing with them needs one per step and guidance above 1"
    )]
    NullEmbeddings {
        found: usize,
        steps: usize,
        guidance: f64,
    },
    #[error("Prompt-to-Prompt supports SD 1.x/2.x models (one text encoder); this is SDXL")]
    Sdxl,
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    Vocabulary(#[from] VocabularyError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}
