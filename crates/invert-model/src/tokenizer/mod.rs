//! CLIP's BPE tokenizer for Stable Diffusion 1.x/2.x prompts, with textual-inversion concepts.
//!
//! [`ClipTokenizer::bundled`] uses the tokenizer.json shipped in `assets/clip-tokenizer/`, derived
//! from OpenAI's `bpe_simple_vocab_16e6.txt.gz` by `scripts/make_clip_tokenizer.py` (OpenAI's
//! id layout: 49,408 ids, `<|startoftext|>` 49406, `<|endoftext|>` 49407). A model's own
//! `tokenizer/` folder is read with [`ClipTokenizer::from_dir`].
//!
//! # Matching OpenAI's tokenizer
//!
//! [`ClipTokenizer::encode`] gives the ids of OpenAI's `SimpleTokenizer` (CLIP's
//! `simple_tokenizer.py`, which SD 1.x was trained with and which transformers 4's slow
//! `CLIPTokenizer`, used by A1111 and older diffusers, follows closely; OpenCLIP's, for SD 2.x, is
//! the same code). The tokenizer.json pipeline
//! alone (NFC, whitespace, lowercase, CLIP word pattern, byte-level BPE), which is what
//! transformers 5 and so diffusers use, differs from it in three ways that invert undoes:
//! - OpenAI cleans the text first: `ftfy.fix_text`, `html.unescape` twice, whitespace, lower-case.
//!   `clean.rs` reproduces that (HTML entities, curly quotes, ligatures, full-width forms, C1 and
//!   other control characters, terminal escapes, NFC, Unicode lower-casing with final sigma);
//! - `<|startoftext|>` / `<|endoftext|>` typed in a prompt are special only where OpenAI's word
//!   pattern starts a match on them (not right after punctuation), case-insensitively;
//! - SD 2's pad token `!` is only used for padding; transformers also turns every `!` of the
//!   prompt into the pad id 0, OpenCLIP keeps it as text (`hello!` is `hello` + `!</w>` = 256).
//!
//! Where invert still differs from OpenAI (`ftfy.fix_text` is only partly reproduced):
//! - mojibake is not repaired: ftfy turns `donâ€™t` or `cafÃ©` (UTF-8 read as windows-1252) back
//!   into `don't` and `café`; invert tokenizes them as written, like transformers 5. A C1 control
//!   character left by mojibake (`â\x80\x99`) becomes its windows-1252 character (`â€™`), which
//!   is neither OpenAI's repair nor transformers' raw bytes;
//! - HTML named references outside HTML 4 (`&starf;`, `&check;`: of HTML5's 2,231 names only the
//!   259 in `entities.rs` are known) and ftfy's upper-case forms (`&EACUTE;`) stay as written;
//! - in a line that contains `<`, a combining mark written as a numeric reference (`e&#769;`) is
//!   composed (`é`) by tokenizer.json's NFC step, where OpenAI keeps the two characters;
//! - characters newer than the Unicode tables of Python's `regex` module or of the Rust `regex`
//!   crate may be classed differently (letter or not) by the word pattern.
//!
//! `tests/fixtures/tokenizer/prompts.json` (from `scripts/make_tokenizer_fixtures.py`) holds both
//! references for 49 prompts; invert gives OpenAI's ids on all but the two whose `invert` field
//! is `transformers` (`mojibake`, `html5_only_entity`), where it gives transformers' ids.
//!
//! # Concepts
//!
//! [`ClipTokenizer::add_concept`] adds textual-inversion placeholders as added tokens after the
//! vocabulary (49408, ...), never split by BPE and matched case-insensitively anywhere in a
//! prompt, as transformers' `add_tokens` does; a multi-vector concept (`<tok>`, `<tok>_1`, ...) is
//! expanded when written once, as diffusers' `maybe_convert_prompt` does.
//!
//! # Layout of an encoding
//!
//! `max_length` (77) ids: BOS, at most 75 prompt tokens, EOS, then the pad id (`<|endoftext|>`
//! 49407 for SD 1.x, `!` 0 for SD 2.x, from the folder's `special_tokens_map.json` or
//! `tokenizer_config.json`). Longer prompts are cut after 75 tokens as diffusers and `clip.tokenize`
//! (`truncate=True`) do, keeping EOS last, and [`Encoding::truncated`] holds the dropped text.

mod byte_level;
mod clean;
mod concepts;
mod entities;
mod error;
#[cfg(test)]
mod folder_tests;
mod load;
#[cfg(test)]
mod tests;

use std::path::Path;

use tokenizers::Tokenizer;

pub use concepts::Concept;
pub use error::TokenizerError;

/// The bundled CLIP tokenizer.json (OpenAI's BPE vocabulary, MIT; see the asset folder's README).
pub const BUNDLED_TOKENIZER_JSON: &[u8] =
    include_bytes!("../../assets/clip-tokenizer/tokenizer.json");

/// The pad token of SD 2.x (OpenCLIP pads with id 0, the vocabulary's `!`).
pub const SD2_PAD_TOKEN: &str = "!";

/// A prompt as the text encoder's input ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Exactly `max_length` (77) ids: BOS, up to 75 prompt tokens, EOS, padding.
    pub ids: Vec<u32>,
    /// How many tokens the prompt has (multi-vector concepts expanded), before truncation.
    pub token_count: usize,
    /// The cleaned, lower-cased text that did not fit, when the prompt had more than 75 tokens.
    pub truncated: Option<String>,
}

/// The id the next added token gets: one past the largest id (tokenizers numbers added tokens
/// from there, gaps in a model's own added ids included).
fn next_id(inner: &Tokenizer) -> u32 {
    let added = inner.get_added_vocabulary().get_added_tokens_decoder();
    let model = inner.get_vocab_size(false) as u32;
    added.keys().map(|&id| id + 1).fold(model, u32::max)
}

/// A prompt split into tokens: the cleaned text, the ids (concepts expanded) and their byte
/// offsets in the cleaned text.
struct Tokens {
    text: String,
    ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
}

/// CLIP's tokenizer with SD's padding and the concepts added for textual inversion.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    /// Ids below this are the BPE model's vocabulary (added tokens start here).
    model_vocab: u32,
    /// One past the largest id before any concept (the model's and its own added tokens).
    base_ids: u32,
    max_length: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    concepts: Vec<Concept>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.base_ids)
            .field("max_length", &self.max_length)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("concepts", &self.concepts)
            .finish()
    }
}

impl ClipTokenizer {
    /// The bundled tokenizer with SD 1.x settings: 77 ids, padded with `<|endoftext|>` (49407).
    /// For SD 2.x call [`set_pad_token`](Self::set_pad_token) with [`SD2_PAD_TOKEN`].
    pub fn bundled() -> Self {
        let inner = Tokenizer::from_bytes(BUNDLED_TOKENIZER_JSON)
            .expect("the bundled tokenizer.json is valid (checked by the tokenizer tests)");
        let source = Path::new("assets/clip-tokenizer/tokenizer.json");
        Self::new(inner, load::FolderConfig::clip(), source)
            .expect("the bundled tokenizer.json has CLIP's special tokens")
    }

    /// Reads a model's `tokenizer/` folder: `tokenizer.json`, or else `vocab.json` + `merges.txt`
    /// (built into the same pipeline as the bundled tokenizer.json, with `added_tokens.json` if
    /// present); the pad token and `model_max_length` come from `special_tokens_map.json` and
    /// `tokenizer_config.json` (the former wins, as in transformers), defaulting to SD 1.x's.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let use_json = json.is_file();
        match (use_json, vocab.is_file(), merges.is_file()) {
            (true, _, _) | (false, true, true) => {}
            (false, true, false) => {
                return Err(TokenizerError::MissingFile {
                    present: vocab,
                    missing: merges,
                });
            }
            (false, false, true) => {
                return Err(TokenizerError::MissingFile {
                    present: merges,
                    missing: vocab,
                });
            }
            (false, false, false) => {
                return Err(TokenizerError::NoTokenizer {
                    dir: dir.to_owned(),
                });
            }
        }
        let config = load::read_config(dir)?;
        let (inner, source) = if use_json {
            let keep = [&config.bos.token, &config.eos.token, &config.unk.token];
            let inner = load::tokenizer_json(&json, &keep.map(String::as_str))?;
            (inner, json)
        } else {
            (load::vocab_merges(&vocab, &merges, &config)?, vocab)
        };
        Self::new(inner, config, &source)
    }

    /// A model's tokenizer folder, as [`from_dir`](Self::from_dir); a folder holding only
    /// `tokenizer_config.json`/`special_tokens_map.json` (as invert's `configs/` and some
    /// trimmed model folders have) gets the bundled CLIP vocabulary with that folder's special
    /// tokens, padding and length.
    pub fn from_dir_or_bundled_vocabulary(dir: &Path) -> Result<Self, TokenizerError> {
        let vocabulary = ["tokenizer.json", "vocab.json", "merges.txt"];
        if vocabulary.iter().any(|f| dir.join(f).is_file()) {
            return Self::from_dir(dir);
        }
        let config = load::read_config(dir)?;
        let inner = Tokenizer::from_bytes(BUNDLED_TOKENIZER_JSON)
            .expect("the bundled tokenizer.json is valid (checked by the tokenizer tests)");
        Self::new(inner, config, &dir.join("tokenizer_config.json"))
    }

    fn new(
        mut inner: Tokenizer,
        config: load::FolderConfig,
        source: &Path,
    ) -> Result<Self, TokenizerError> {
        // Padding, truncation and BOS/EOS are done here, whatever the file asks for; special-token
        // literals in prompts are handled by `tokenize`.
        inner.with_padding(None);
        inner.set_encode_special_tokens(true);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Load {
                path: source.to_owned(),
                message: e.to_string(),
            })?;
        let id_of = |named: &load::Named, key: &str| {
            inner
                .token_to_id(&named.token)
                .ok_or_else(|| TokenizerError::BadConfig {
                    path: named.from.clone().unwrap_or_else(|| source.to_owned()),
                    message: format!(
                        "{key} {:?} is not in the vocabulary of {}",
                        named.token,
                        source.display()
                    ),
                })
        };
        Ok(Self {
            bos_id: id_of(&config.bos, "bos_token")?,
            eos_id: id_of(&config.eos, "eos_token")?,
            pad_id: id_of(&config.pad, "pad_token")?,
            model_vocab: inner.get_vocab_size(false) as u32,
            base_ids: next_id(&inner),
            max_length: config.max_length,
            concepts: Vec::new(),
            inner,
        })
    }

    /// Pads with `token` from now on (e.g. [`SD2_PAD_TOKEN`] for an SD 2.x model that comes
    /// without a tokenizer folder).
    pub fn set_pad_token(&mut self, token: &str) -> Result<(), TokenizerError> {
        self.pad_id =
            self.inner
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::UnknownToken {
                    token: token.to_owned(),
                    role: "pad token",
                })?;
        Ok(())
    }

    /// The prompt as `max_length` ids (see the module docs), with the dropped text when it had
    /// more than `max_length - 2` tokens.
    pub fn encode(&self, prompt: &str) -> Result<Encoding, TokenizerError> {
        let Tokens { text, ids, offsets } = self.tokenize(prompt)?;
        let room = self.max_length - 2;
        let truncated = ids.get(room).map(|_| {
            let start = offsets[room].0;
            // Offsets fall on character boundaries of `text`; be safe anyway.
            let start = (start..=text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(text.len());
            text[start..].trim().to_owned()
        });
        let mut out = Vec::with_capacity(self.max_length);
        out.push(self.bos_id);
        out.extend(ids.iter().take(room));
        out.push(self.eos_id);
        out.resize(self.max_length, self.pad_id);
        Ok(Encoding {
            ids: out,
            token_count: ids.len(),
            truncated,
        })
    }

    /// The ids of a word or phrase, without BOS, EOS or padding and never truncated (e.g. to
    /// initialise new vectors from `"toy"` or `"a fluffy dog"`). Errors when nothing is left.
    pub fn word_ids(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let ids = self.tokenize(text)?.ids;
        if ids.is_empty() {
            return Err(TokenizerError::EmptyText {
                text: text.to_owned(),
            });
        }
        Ok(ids)
    }

    /// The text OpenAI's clean-up makes of `prompt` (what the tokenizer then splits into words).
    pub fn clean(prompt: &str) -> String {
        clean::clean(prompt)
    }

    /// Cleans `prompt` and splits it into tokens.
    ///
    /// `<|startoftext|>` / `<|endoftext|>` written in a prompt become BOS/EOS only where OpenAI's
    /// word pattern starts a match on them: not after punctuation (`x,<|endoftext|>` is the
    /// punctuation run `,<|` and the word `endoftext`), whereas transformers' special-token
    /// matching finds them anywhere. So the tokenizer's own special-token splitting is off and
    /// the text is cut here at the literals OpenAI's `re.findall` would return.
    fn tokenize(&self, prompt: &str) -> Result<Tokens, TokenizerError> {
        let mut tokens = Tokens {
            text: clean::clean(prompt),
            ids: Vec::new(),
            offsets: Vec::new(),
        };
        let mut start = 0;
        for (at, end, id) in self.special_literals(&tokens.text) {
            self.encode_piece(prompt, &mut tokens, start..at)?;
            tokens.ids.push(id);
            tokens.offsets.push((at, end));
            start = end;
        }
        let end = tokens.text.len();
        self.encode_piece(prompt, &mut tokens, start..end)?;
        (tokens.ids, tokens.offsets) = self.expand(&tokens.ids, &tokens.offsets);
        Ok(tokens)
    }

    /// The `<|startoftext|>` / `<|endoftext|>` matches of OpenAI's word pattern in `text`.
    fn special_literals(&self, text: &str) -> Vec<(usize, usize, u32)> {
        if !text.contains("<|") {
            return Vec::new();
        }
        load::clip_words()
            .find_iter(text)
            .filter_map(|(s, e)| Some((s, e, self.literal_id(&text[s..e])?)))
            .collect()
    }

    fn literal_id(&self, word: &str) -> Option<u32> {
        match word {
            "<|startoftext|>" | "<|endoftext|>" => self.inner.token_to_id(word),
            _ => None,
        }
    }

    /// Encodes `tokens.text[range]` and appends its ids and offsets.
    fn encode_piece(
        &self,
        prompt: &str,
        tokens: &mut Tokens,
        range: std::ops::Range<usize>,
    ) -> Result<(), TokenizerError> {
        if range.is_empty() {
            return Ok(());
        }
        let encoding = (self.inner)
            .encode(&tokens.text[range.clone()], false)
            .map_err(|e| TokenizerError::Encode {
                text: prompt.to_owned(),
                message: e.to_string(),
            })?;
        tokens.ids.extend_from_slice(encoding.get_ids());
        let shift = |&(s, e): &(usize, usize)| (s + range.start, e + range.start);
        tokens
            .offsets
            .extend(encoding.get_offsets().iter().map(shift));
        Ok(())
    }

    /// A token as readable text: the word or word piece of a vocabulary id (UTF-8 decoded, the
    /// `</w>` end-of-word mark dropped, invalid partial characters as U+FFFD), or the text of an
    /// added token or concept. `None` for an unknown id.
    pub fn decode_id(&self, id: u32) -> Option<String> {
        if let Some(added) = self.inner.get_added_vocabulary().simple_id_to_token(id) {
            return Some(added);
        }
        let token = self.inner.id_to_token(id)?;
        let piece = token.strip_suffix("</w>").unwrap_or(&token);
        Some(match byte_level::decode(piece) {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => piece.to_owned(),
        })
    }

    /// A token exactly as the vocabulary spells it (byte-level characters, `</w>` suffix).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Ids the tokenizer had before any concept (one past the largest): 49,408 for CLIP, more if
    /// the model folder added tokens of its own.
    pub fn vocab_size(&self) -> usize {
        self.base_ids as usize
    }

    /// Ids including the concepts' (one past the largest): the rows the text encoder's embedding
    /// table must have.
    pub fn num_ids(&self) -> usize {
        next_id(&self.inner) as usize
    }

    /// Length of every encoding: 77 for CLIP.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The padding id: 49407 (`<|endoftext|>`) for SD 1.x, 0 (`!`) for SD 2.x.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// `<|startoftext|>`, 49406.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// `<|endoftext|>`, 49407.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
}
