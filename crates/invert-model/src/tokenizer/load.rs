//! Reading a model's `tokenizer/` folder: `tokenizer.json`, or `vocab.json` + `merges.txt` turned
//! into the same pipeline as the bundled `tokenizer.json`, plus the special tokens and the length
//! from `tokenizer_config.json` / `special_tokens_map.json`.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde_json::Value;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::{Replace, ReplacePattern};
use tokenizers::normalizers::{Lowercase, NFC, Sequence as Normalizers};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::utils::SysRegex;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::TokenizerError;

/// OpenAI's word pattern (`SimpleTokenizer.pat` in CLIP's simple_tokenizer.py), as transformers'
/// `CLIPTokenizer` writes it into tokenizer.json. Case-insensitivity is not needed: the text is
/// lower-cased first.
const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// OpenAI's word pattern, compiled once (for finding special-token literals in prompts).
pub(super) fn clip_words() -> &'static SysRegex {
    static WORDS: LazyLock<SysRegex> =
        LazyLock::new(|| SysRegex::new(CLIP_SPLIT).expect("the CLIP word pattern compiles"));
    &WORDS
}

/// CLIP's text encoder has 77 positions: BOS, 75 tokens, EOS.
pub(super) const DEFAULT_MAX_LENGTH: usize = 77;

/// transformers writes `int(1e30)` (`VERY_LARGE_INTEGER`) when no length was given; any value
/// this large means "unset".
const UNSET_MAX_LENGTH: f64 = 1e6;

/// A special token's text and the file that set it (for error messages).
#[derive(Debug, Clone)]
pub(super) struct Named {
    pub token: String,
    pub from: Option<PathBuf>,
}

/// What the folder's JSON files say about special tokens and length.
#[derive(Debug)]
pub(super) struct FolderConfig {
    pub bos: Named,
    pub eos: Named,
    pub unk: Named,
    pub pad: Named,
    pub max_length: usize,
}

impl FolderConfig {
    /// CLIPTokenizer's defaults, SD 1.x: `<|startoftext|>`, `<|endoftext|>` for EOS, UNK and
    /// padding, 77 ids.
    pub fn clip() -> Self {
        let named = |token: &str| Named {
            token: token.to_owned(),
            from: None,
        };
        Self {
            bos: named("<|startoftext|>"),
            eos: named("<|endoftext|>"),
            unk: named("<|endoftext|>"),
            pad: named("<|endoftext|>"),
            max_length: DEFAULT_MAX_LENGTH,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TokenizerError + '_ {
    move |source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: path.to_owned(),
            source,
        })
}

/// A token entry is either `"<|endoftext|>"` or `{"content": "<|endoftext|>", ...}`.
fn token_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// `tokenizer_config.json` and `special_tokens_map.json`; the latter wins, as in transformers,
/// where it is applied after the config's keyword arguments. Missing entries keep
/// [`FolderConfig::clip`]'s values.
pub(super) fn read_config(dir: &Path) -> Result<FolderConfig, TokenizerError> {
    let config_path = dir.join("tokenizer_config.json");
    let map_path = dir.join("special_tokens_map.json");
    let config = read_json(&config_path)?;
    let map = read_json(&map_path)?;
    let named = |key: &str, default: Named| {
        let pick = |v: &Option<Value>, path: &Path| {
            let token = token_text(v.as_ref()?.get(key)?)?;
            Some(Named {
                token,
                from: Some(path.to_owned()),
            })
        };
        pick(&map, &map_path)
            .or_else(|| pick(&config, &config_path))
            .unwrap_or(default)
    };
    let clip = FolderConfig::clip();
    let max_length = match config.as_ref().and_then(|c| c.get("model_max_length")) {
        None | Some(Value::Null) => DEFAULT_MAX_LENGTH,
        Some(v) => match v.as_f64() {
            Some(n) if n >= UNSET_MAX_LENGTH => DEFAULT_MAX_LENGTH,
            Some(n) if n >= 3.0 && n.fract() == 0.0 => n as usize,
            _ => {
                return Err(TokenizerError::BadConfig {
                    path: config_path,
                    message: format!(
                        "model_max_length {v} is not a length of at least 3 (BOS, a token, EOS); \
                         CLIP's is 77"
                    ),
                });
            }
        },
    };
    Ok(FolderConfig {
        bos: named("bos_token", clip.bos),
        eos: named("eos_token", clip.eos),
        unk: named("unk_token", clip.unk),
        pad: named("pad_token", clip.pad),
        max_length,
    })
}

/// Loads `tokenizer.json`, dropping added tokens that are ordinary vocabulary entries other than
/// `keep` (BOS/EOS/UNK). transformers registers the pad token as a special added token, so an SD 2
/// tokenizer saved by it has `!` there and splits every `!` of a prompt out as the pad id 0;
/// OpenCLIP, which SD 2 was trained with, tokenizes `!` as text and only pads with id 0.
pub(super) fn tokenizer_json(path: &Path, keep: &[&str]) -> Result<Tokenizer, TokenizerError> {
    let load_err = |message: String| TokenizerError::Load {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut value: Value = serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_owned(),
        source,
    })?;
    let content = |t: &Value| t.get("content").and_then(Value::as_str).map(str::to_owned);
    let in_vocab: Vec<String> = match (
        value.pointer("/model/vocab").and_then(Value::as_object),
        value.get("added_tokens").and_then(Value::as_array),
    ) {
        (Some(vocab), Some(added)) => added
            .iter()
            .filter_map(content)
            .filter(|c| !keep.contains(&c.as_str()) && vocab.contains_key(c))
            .collect(),
        _ => Vec::new(),
    };
    if let Some(Value::Array(added)) = value.get_mut("added_tokens") {
        added.retain(|t| content(t).is_none_or(|c| !in_vocab.contains(&c)));
    }
    let tokenizer: Tokenizer =
        serde_json::from_value(value).map_err(|e| load_err(e.to_string()))?;
    if !matches!(tokenizer.get_model(), tokenizers::ModelWrapper::BPE(_)) {
        return Err(load_err(
            "the model is not BPE, so this is not a CLIP tokenizer".into(),
        ));
    }
    Ok(tokenizer)
}

/// Builds from `vocab.json` + `merges.txt` the pipeline transformers' `CLIPTokenizer` builds (and
/// that the bundled tokenizer.json holds): NFC, `\s+` -> ` `, lowercase; CLIP split regex, then
/// byte-level; BPE with the `</w>` end-of-word suffix; BOS/EOS as special added tokens.
pub(super) fn vocab_merges(
    vocab_path: &Path,
    merges_path: &Path,
    config: &FolderConfig,
) -> Result<Tokenizer, TokenizerError> {
    let vocab: Vocab = {
        let text = std::fs::read_to_string(vocab_path).map_err(io_err(vocab_path))?;
        serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
            path: vocab_path.to_owned(),
            source,
        })?
    };
    let merges = read_merges(merges_path)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_owned())
        .unk_token(config.unk.token.clone())
        .build()
        .map_err(|e| TokenizerError::Load {
            path: merges_path.to_owned(),
            message: format!("{e} (do vocab.json and merges.txt belong together?)"),
        })?;
    let mut tokenizer = Tokenizer::new(bpe);
    let build_err = |e: tokenizers::Error| TokenizerError::Load {
        path: vocab_path.to_owned(),
        message: e.to_string(),
    };
    let whitespace =
        Replace::new(ReplacePattern::Regex(r"\s+".to_owned()), " ").map_err(build_err)?;
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT.to_owned()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(build_err)?;
    tokenizer
        .with_normalizer(Some(Normalizers::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])))
        .map_err(build_err)?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let specials = [&config.bos.token, &config.eos.token];
    tokenizer
        .add_special_tokens(specials.map(|t| AddedToken::from(t.as_str(), true)))
        .map_err(build_err)?;
    add_listed_tokens(
        &mut tokenizer,
        &vocab_path.with_file_name("added_tokens.json"),
    )?;
    Ok(tokenizer)
}

/// `merges.txt`: an optional `#version` line, then one `left right` pair per line.
fn read_merges(path: &Path) -> Result<Vec<(String, String)>, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || (n == 0 && line.starts_with("#version")) {
            continue;
        }
        match line.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                merges.push((a.to_owned(), b.to_owned()));
            }
            _ => {
                return Err(TokenizerError::Load {
                    path: path.to_owned(),
                    message: format!("line {} is not a `left right` merge: {line:?}", n + 1),
                });
            }
        }
    }
    Ok(merges)
}

/// `added_tokens.json` (transformers' slow-tokenizer format, `{"token": id}`) beside vocab.json:
/// tokens a fine-tuned model added after the vocabulary, which its text encoder has rows for.
fn add_listed_tokens(tokenizer: &mut Tokenizer, path: &Path) -> Result<(), TokenizerError> {
    let Some(value) = read_json(path)? else {
        return Ok(());
    };
    let bad = |message: String| TokenizerError::BadConfig {
        path: path.to_owned(),
        message,
    };
    let map = value
        .as_object()
        .ok_or_else(|| bad("expected {\"token\": id, ...}".into()))?;
    let mut listed: Vec<(u64, &str)> = Vec::with_capacity(map.len());
    for (token, id) in map {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(format!("the id of {token:?} is not a number")))?;
        listed.push((id, token));
    }
    listed.sort_unstable();
    for (id, token) in listed {
        if tokenizer
            .token_to_id(token)
            .is_some_and(|known| u64::from(known) == id)
        {
            continue;
        }
        tokenizer
            .add_tokens([AddedToken::from(token, false)])
            .map_err(|e| bad(e.to_string()))?;
        let got = tokenizer.token_to_id(token).map(u64::from);
        if got != Some(id) {
            return Err(bad(format!(
                "{token:?} should have id {id} but gets {got:?}; the ids must follow the \
                 vocabulary without gaps"
            )));
        }
    }
    Ok(())
}
