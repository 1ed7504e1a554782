//! New words in the text encoders: the tokenizer's added tokens plus one embedding vector per
//! token, kept outside the frozen CLIP tables (see `CLIPTextModel::embed`). Loaded learned
//! embeddings (any format of `embedding/`) and words being trained both live here, so a prompt
//! can mix several learned concepts ("a photo of S_clock in the style of S_style").
//!
//! SDXL has two text encoders, each with its own tokenizer (the second pads with `!`, id 0) and
//! token table, so a word has rows in both ([`WordTable`] per encoder): `[n, 768]` for CLIP-L and
//! `[n, 1280]` for OpenCLIP-bigG, as the `{clip_l, clip_g}` files hold them.

mod word_table;

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;

use crate::embedding::{EmbeddingError, LearnedEmbedding, check_width, check_widths};
use crate::tokenizer::{ClipTokenizer, TokenizerError};

pub use word_table::WordTable;

#[derive(Debug, thiserror::Error)]
pub enum VocabularyError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Embedding(#[from] EmbeddingError),
    #[error("{token:?}: {reason}")]
    Invalid { token: String, reason: String },
}

/// How a new word's vectors start (paper section 4: a single-token coarse description).
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// Vector `i` copies the embedding of the `i`-th token of the word or phrase (cycling when
    /// there are more vectors than tokens).
    Text(String),
    /// Normal noise with the vocabulary's per-dimension spread, from this seed.
    Random(u64),
}

/// What adding a learned embedding did.
#[derive(Debug, Clone, PartialEq)]
pub struct AddedWord {
    /// The word's ids in the (first) tokenizer.
    pub ids: Vec<u32>,
    /// Set when only part of the embedding could be used (an SD 1.x file on SDXL, an SDXL file
    /// on SD 1.x), saying which part.
    pub note: Option<String>,
}

/// The new words of a model's text encoder(s).
#[derive(Debug, Clone)]
pub struct Vocabulary {
    /// The only text encoder of SD 1.x/2.x; SDXL's first (CLIP-L).
    pub first: WordTable,
    /// SDXL's second text encoder (OpenCLIP-bigG).
    pub second: Option<WordTable>,
    /// A word's first id in the second table, by its first id in the first table; words that
    /// have rows in the first table only are absent.
    second_ids: BTreeMap<u32, u32>,
}

impl Vocabulary {
    /// The vocabulary of a loaded model: its own `tokenizer/` (and `tokenizer_2/`) folders when
    /// it has them, else invert's bundled CLIP tokenizer, padding with `!` where the model's
    /// OpenCLIP encoder was trained that way (SD 2.x, SDXL's second encoder).
    pub fn for_model(sd: &crate::loading::StableDiffusion) -> Result<Self, VocabularyError> {
        use crate::loading::Family;
        let tokenizer = |dir: &Option<std::path::PathBuf>, pad_with_zero: bool| {
            Ok::<_, TokenizerError>(match dir {
                Some(dir) => ClipTokenizer::from_dir_or_bundled_vocabulary(dir)?,
                None => {
                    let mut t = ClipTokenizer::bundled();
                    if pad_with_zero {
                        t.set_pad_token(crate::tokenizer::SD2_PAD_TOKEN)?;
                    }
                    t
                }
            })
        };
        let sd2 = matches!(sd.config.family, Family::Sd2Base | Family::Sd2V);
        let mut vocab = Self::new(
            tokenizer(&sd.config.tokenizer_dir, sd2)?,
            sd.text_encoder.hidden_size(),
        );
        if let Some(te2) = &sd.text_encoder_2 {
            vocab.second = Some(WordTable::new(
                tokenizer(&sd.config.tokenizer_2_dir, true)?,
                te2.hidden_size(),
            ));
        }
        Ok(vocab)
    }

    /// A vocabulary for one text encoder.
    pub fn new(tokenizer: ClipTokenizer, width: usize) -> Self {
        Self {
            first: WordTable::new(tokenizer, width),
            second: None,
            second_ids: BTreeMap::new(),
        }
    }

    /// The (first) text encoder's width.
    pub fn width(&self) -> usize {
        self.first.width()
    }

    /// The second text encoder's width (SDXL).
    pub fn second_width(&self) -> Option<usize> {
        self.second.as_ref().map(WordTable::width)
    }

    /// Number of new-word vectors in the first table.
    pub fn len(&self) -> usize {
        self.first.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// Adds a learned embedding read from `path`. Its token must be new (not a vocabulary word,
    /// not another concept's) and its widths must match the text encoders'. As ComfyUI does, an
    /// SD 1.x embedding on SDXL goes into the first (CLIP-L) encoder only and an SDXL
    /// embedding on a one-encoder model gives its `clip_l` rows; the note says so.
    pub fn add_embedding(
        &mut self,
        e: &LearnedEmbedding,
        path: &Path,
    ) -> Result<AddedWord, VocabularyError> {
        let (second, note) = match (self.second_width(), &e.second) {
            (Some(w2), Some(s)) => {
                check_widths(e, self.width(), Some(w2), path)?;
                (Some(s.vectors.as_slice()), None)
            }
            (Some(_), None) => {
                check_width(e, self.width(), path)?;
                let note = format!(
                    "{}: `{}` is a one-encoder ({} wide) embedding on SDXL: applied to the first \
                     text encoder (CLIP-L) only, as ComfyUI does; train it on SDXL for both",
                    path.display(),
                    e.token,
                    e.width
                );
                (None, Some(note))
            }
            (None, Some(_)) if e.width == self.width() => {
                let note = format!(
                    "{}: `{}` is an SDXL embedding on a one-encoder model: its clip_l vectors \
                     are used, clip_g is ignored",
                    path.display(),
                    e.token
                );
                (None, Some(note))
            }
            (None, _) => {
                check_width(e, self.width(), path)?;
                (None, None)
            }
        };
        let ids = self.add_word(&e.token, &e.vectors, second)?;
        Ok(AddedWord { ids, note })
    }

    /// Adds `token` with `vectors` (row-major, a multiple of the width) and, for SDXL, the same
    /// number of rows `second` for the second text encoder (`None`: the word exists in the first
    /// encoder only). Returns its ids in the first tokenizer. Nothing is added on error.
    pub fn add_word(
        &mut self,
        token: &str,
        vectors: &[f32],
        second: Option<&[f32]>,
    ) -> Result<Vec<u32>, VocabularyError> {
        let mut second_table = match (&self.second, second) {
            (_, None) => None,
            (Some(table), Some(rows)) => {
                let (n1, n2) = (
                    vectors.len() / self.width().max(1),
                    rows.len() / table.width(),
                );
                if n1 != n2 {
                    return Err(VocabularyError::Invalid {
                        token: token.into(),
                        reason: format!(
                            "{n1} vectors for the first text encoder but {n2} for the second"
                        ),
                    });
                }
                Some(table.clone())
            }
            (None, Some(_)) => {
                return Err(VocabularyError::Invalid {
                    token: token.into(),
                    reason: "vectors for a second text encoder, but this model has one".into(),
                });
            }
        };
        // Added to a copy of the second table first, so a refusal there changes nothing.
        let second_ids = match (&mut second_table, second) {
            (Some(table), Some(rows)) => Some(table.add_word(token, rows)?),
            _ => None,
        };
        let ids = self.first.add_word(token, vectors)?;
        if let (Some(table), Some(second_ids)) = (second_table, second_ids) {
            self.second = Some(table);
            self.second_ids.insert(ids[0], second_ids[0]);
        }
        Ok(ids)
    }

    /// Replaces the vectors of the word whose first id is `first_id` (a training step's result),
    /// and its second-encoder rows when given.
    pub fn set_vectors(&mut self, first_id: u32, vectors: &[f32], second: Option<&[f32]>) {
        self.first.set_vectors(first_id, vectors);
        if let (Some(rows), Some(table), Some(&id)) =
            (second, self.second.as_mut(), self.second_ids.get(&first_id))
        {
            table.set_vectors(id, rows);
        }
    }

    /// The first-table vectors of the word whose first id is `first_id`, `n` of them.
    pub fn vectors(&self, first_id: u32, n: usize) -> &[f32] {
        self.first.vectors(first_id, n)
    }

    /// The second-table rows of the word whose first id is `first_id`, `n` of them.
    pub fn second_vectors(&self, first_id: u32, n: usize) -> Option<&[f32]> {
        let id = *self.second_ids.get(&first_id)?;
        Some(self.second.as_ref()?.vectors(id, n))
    }

    /// The first table's new-word vectors `[n_new, width]`, `None` when there are none.
    pub fn extra(&self, device: &Device) -> Option<Tensor<2>> {
        self.first.extra(device)
    }

    /// The second table's new-word vectors, `None` when there are none.
    pub fn extra_2(&self, device: &Device) -> Option<Tensor<2>> {
        self.second.as_ref()?.extra(device)
    }

    /// The first tokenizer's ids `[b, 77]` for `prompts`, with the text of any truncated tail.
    pub fn encode(
        &self,
        prompts: &[String],
        device: &Device,
    ) -> Result<(Tensor<2, Int>, Vec<String>), VocabularyError> {
        self.first.encode(prompts, device)
    }

    /// `n` starting vectors for a new word from the first encoder's frozen table.
    pub fn init_vectors(
        &self,
        table: &Tensor<2>,
        init: &Init,
        n: usize,
    ) -> Result<Vec<f32>, VocabularyError> {
        self.first.init_vectors(table, init, n)
    }

    /// The `k` vocabulary words closest to `vector` in the first encoder's table.
    pub fn nearest_words(&self, table: &Tensor<2>, vector: &[f32], k: usize) -> Vec<(String, f32)> {
        self.first.nearest_words(table, vector, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedding::{EmbeddingFormat, EmbeddingMeta, SecondVectors};

    fn sdxl_vocab() -> Vocabulary {
        let mut v = Vocabulary::new(ClipTokenizer::bundled(), 2);
        let mut second = ClipTokenizer::bundled();
        second.set_pad_token("!").unwrap();
        v.second = Some(WordTable::new(second, 3));
        v
    }

    fn embedding(token: &str, width: usize, second: Option<usize>) -> LearnedEmbedding {
        LearnedEmbedding {
            token: token.into(),
            vectors: vec![1.0; width],
            num_vectors: 1,
            width,
            second: second.map(|w| SecondVectors {
                vectors: vec![2.0; w],
                width: w,
            }),
            meta: EmbeddingMeta::new(EmbeddingFormat::Diffusers),
        }
    }

    #[test]
    fn an_sdxl_word_has_rows_in_both_tables_and_both_tokenizers() {
        let device = Device::flex();
        let mut v = sdxl_vocab();
        let ids = v
            .add_word("<w>", &[1.0, 2.0, 3.0, 4.0], Some(&[5.0; 6]))
            .unwrap();
        assert_eq!(ids, vec![49408, 49409]);
        assert_eq!(v.second_vectors(49408, 2).unwrap(), &[5.0; 6]);
        v.set_vectors(49408, &[0.0; 4], Some(&[7.0; 6]));
        assert_eq!(v.vectors(49408, 2), &[0.0; 4]);
        assert_eq!(v.extra_2(&device).unwrap().dims(), [2, 3]);
        let second = v.second.as_ref().unwrap();
        let enc = second.tokenizer.encode("<w>").unwrap();
        assert_eq!(
            &enc.ids[..5],
            &[49406, 49408, 49409, 49407, 0],
            "pads with `!`"
        );
        // Unequal vector counts and a repeated word change nothing.
        assert!(v.add_word("<x>", &[1.0, 2.0], Some(&[1.0; 6])).is_err());
        assert!(v.add_word("<w>", &[1.0, 2.0], Some(&[1.0; 3])).is_err());
        assert_eq!((v.len(), v.second.as_ref().unwrap().len()), (2, 2));
    }

    #[test]
    fn embeddings_of_the_other_family_use_the_part_that_fits() {
        let path = Path::new("e.safetensors");
        let mut v = sdxl_vocab();
        let full = v
            .add_embedding(&embedding("<a>", 2, Some(3)), path)
            .unwrap();
        assert!(full.note.is_none());
        let half = v.add_embedding(&embedding("<b>", 2, None), path).unwrap();
        assert!(half.note.unwrap().contains("CLIP-L"));
        assert!(v.second_vectors(half.ids[0], 1).is_none());
        assert!(
            v.add_embedding(&embedding("<c>", 2, Some(4)), path)
                .is_err()
        );

        let mut one = Vocabulary::new(ClipTokenizer::bundled(), 2);
        let added = one
            .add_embedding(&embedding("<a>", 2, Some(3)), path)
            .unwrap();
        assert!(added.note.unwrap().contains("clip_l"));
        assert!(one.add_embedding(&embedding("<d>", 5, None), path).is_err());
    }
}
