//! New words for textual inversion: placeholder tokens added after the vocabulary, one id per
//! learned vector, with diffusers' naming (`<tok>`, `<tok>_1`, ... as in diffusers'
//! `textual_inversion.py` and `TextualInversionLoaderMixin`).

use tokenizers::AddedToken;

use super::{ClipTokenizer, TokenizerError, byte_level, clean};

/// A concept registered with [`ClipTokenizer::add_concept`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concept {
    /// The placeholder as given, e.g. `<cat-toy>`.
    pub token: String,
    /// One id per vector, consecutive; the first is the id of `token` itself.
    pub ids: Vec<u32>,
}

impl Concept {
    /// How many embedding vectors the concept has.
    pub fn vectors(&self) -> usize {
        self.ids.len()
    }

    /// The added token of each vector: `token`, `token_1`, ..., `token_{n-1}`.
    pub fn tokens(&self) -> Vec<String> {
        (0..self.ids.len())
            .map(|i| vector_token(&self.token, i))
            .collect()
    }
}

/// diffusers' name for vector `i` of a concept: `token` for the first, `token_i` after.
pub(super) fn vector_token(token: &str, i: usize) -> String {
    if i == 0 {
        token.to_owned()
    } else {
        format!("{token}_{i}")
    }
}

impl ClipTokenizer {
    /// Registers `token` as a new word with `vectors` embedding vectors and returns their ids,
    /// which follow the vocabulary (49408, 49409, ... for CLIP) in order of addition.
    ///
    /// For `vectors > 1` the extra vectors get the added tokens `token_1` ... `token_{n-1}`
    /// (diffusers' convention, so a multi-vector embedding round-trips with diffusers), and
    /// [`encode`](Self::encode) expands `token` written once in a prompt to all of them.
    ///
    /// Any string without whitespace works (`<cat-toy>`, `S*`, `sks-dog`); it is never split by
    /// BPE, and matches case-insensitively anywhere in a prompt, even inside a longer word, as in
    /// transformers' added tokens, so prefer distinctive names. Refused: a token that is already
    /// a word of the vocabulary (it would not get its own embedding), one taken by another
    /// concept or by the tokenizer's special tokens, and one the prompt clean-up would rewrite.
    pub fn add_concept(&mut self, token: &str, vectors: usize) -> Result<Vec<u32>, TokenizerError> {
        if vectors == 0 {
            return Err(TokenizerError::ConceptInvalid {
                token: token.to_owned(),
                reason: "a concept needs at least one vector".into(),
            });
        }
        let names: Vec<String> = (0..vectors).map(|i| vector_token(token, i)).collect();
        for name in &names {
            self.check_new_token(name)?;
        }
        let first = self.num_ids() as u32;
        self.inner
            .add_tokens(names.iter().map(|n| AddedToken::from(n.as_str(), false)))
            .map_err(|e| TokenizerError::Encode {
                text: token.to_owned(),
                message: e.to_string(),
            })?;
        // Names unknown to the tokenizer get fresh ids after the largest one, in order (tokenizers'
        // `AddedVocabulary::add_tokens`), which the checks above guarantee.
        let ids: Vec<u32> = (first..first + vectors as u32).collect();
        debug_assert!(
            names
                .iter()
                .zip(&ids)
                .all(|(n, &id)| self.inner.token_to_id(n) == Some(id)),
            "concept {token:?} did not get the ids {ids:?}"
        );
        self.concepts.push(Concept {
            token: token.to_owned(),
            ids: ids.clone(),
        });
        Ok(ids)
    }

    /// The concepts added so far, in order of addition.
    pub fn concepts(&self) -> &[Concept] {
        &self.concepts
    }

    /// Why `name` cannot become an added token, if it cannot.
    fn check_new_token(&self, name: &str) -> Result<(), TokenizerError> {
        let invalid = |reason: String| TokenizerError::ConceptInvalid {
            token: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        if name.chars().any(char::is_whitespace) {
            return Err(invalid(
                "it contains whitespace, which prompts collapse and split on; use - or _".into(),
            ));
        }
        // Prompts are cleaned and lower-cased before added tokens are matched, so the token must
        // survive the same clean-up (up to case) to ever be found in one.
        let cleaned = clean::clean(name);
        if cleaned != name.to_lowercase() {
            return Err(invalid(format!(
                "the prompt clean-up (HTML entities, curly quotes, ligatures, full-width or \
                 control characters) turns it into {cleaned:?}, so no prompt can contain it; \
                 use {cleaned:?}"
            )));
        }
        for concept in &self.concepts {
            if concept.tokens().iter().any(|t| t.to_lowercase() == cleaned) {
                return Err(TokenizerError::ConceptTaken {
                    token: name.to_owned(),
                    owner: format!(
                        "the concept {:?} (tokens are case-insensitive)",
                        concept.token
                    ),
                });
            }
        }
        let in_vocab = |id: u32| TokenizerError::ConceptInVocabulary {
            token: name.to_owned(),
            existing: self.inner.id_to_token(id).unwrap_or_default(),
            id,
        };
        for form in [name, cleaned.as_str()] {
            if let Some(id) = self
                .inner
                .token_to_id(form)
                .filter(|&id| id >= self.model_vocab)
            {
                return Err(TokenizerError::ConceptTaken {
                    token: name.to_owned(),
                    owner: format!("a token of the tokenizer itself (id {id})"),
                });
            }
        }
        // What the prompt pipeline makes of it: a single existing token (`cat` -> `cat</w>`).
        let encoding =
            self.inner
                .encode(cleaned.as_str(), false)
                .map_err(|e| TokenizerError::Encode {
                    text: name.to_owned(),
                    message: e.to_string(),
                })?;
        if let [id] = encoding.get_ids() {
            return Err(in_vocab(*id));
        }
        // A vocabulary entry as written (transformers and tokenizers give an added token with the
        // same text that entry's id) or in byte-level spelling, with or without `</w>`.
        let spelled = byte_level::encode(&cleaned);
        for form in [name, &cleaned, &spelled] {
            for suffix in ["", "</w>"] {
                if let Some(id) = self.inner.token_to_id(&format!("{form}{suffix}")) {
                    return Err(in_vocab(id));
                }
            }
        }
        Ok(())
    }

    /// Expands every multi-vector concept written once (its first id not followed by the rest)
    /// to all its ids, as diffusers' `maybe_convert_prompt` does on the text; the copies keep the
    /// offsets of the written token.
    pub(super) fn expand(
        &self,
        ids: &[u32],
        offsets: &[(usize, usize)],
    ) -> (Vec<u32>, Vec<(usize, usize)>) {
        let mut out_ids = Vec::with_capacity(ids.len());
        let mut out_offsets = Vec::with_capacity(ids.len());
        for (i, (&id, &offset)) in ids.iter().zip(offsets).enumerate() {
            let concept = self
                .concepts
                .iter()
                .find(|c| c.ids.len() > 1 && c.ids[0] == id && !ids[i..].starts_with(&c.ids));
            match concept {
                Some(c) => {
                    out_ids.extend_from_slice(&c.ids);
                    out_offsets.extend(std::iter::repeat_n(offset, c.ids.len()));
                }
                None => {
                    out_ids.push(id);
                    out_offsets.push(offset);
                }
            }
        }
        (out_ids, out_offsets)
    }
}
