//! `ClipTokenizer::from_dir` on tokenizer folders built in a temp dir: vocab.json + merges.txt,
//! SD 2's `!` padding, configs, added tokens and the errors for broken folders.

use std::path::PathBuf;

use tokenizers::{AddedToken, Model};

use super::*;

const CAT_PHOTO: [u32; 7] = [49406, 320, 1125, 539, 320, 2368, 49407];

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("invert-tokenizer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> &Self {
        std::fs::write(self.0.join(name), content).unwrap();
        self
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn prompt_ids(encoding: &Encoding, pad: u32) -> Vec<u32> {
    let end = encoding
        .ids
        .iter()
        .rposition(|&id| id != pad)
        .map_or(0, |i| i + 1);
    let mut ids = encoding.ids[..end].to_vec();
    if pad == 49407 {
        ids.push(49407); // the EOS that padding with EOS hides
    }
    ids
}

/// The bundled vocabulary as vocab.json + merges.txt (the classic folder layout).
fn write_vocab_merges(dir: &TempDir) {
    let tok = ClipTokenizer::bundled();
    let files = tok.inner.get_model().save(&dir.0, None).unwrap();
    assert_eq!(files.len(), 2);
}

#[test]
fn folders_with_vocab_and_merges_tokenize_like_the_bundled_json() {
    let dir = TempDir::new("vocab-merges");
    write_vocab_merges(&dir);
    let from_dir = ClipTokenizer::from_dir(&dir.0).unwrap();
    let bundled = ClipTokenizer::bundled();
    assert_eq!((from_dir.vocab_size(), from_dir.pad_id()), (49408, 49407));
    for prompt in [
        "a photo of a cat",
        "An oil painting of <cat-toy> in the style of Van Gogh!",
        "(masterpiece:1.2), 1girl, 日本語, 🐶 naïve café don't",
        "<|startoftext|>a<|endoftext|> x,<|endoftext|>",
        &vec!["long"; 90].join(" "),
    ] {
        assert_eq!(
            from_dir.encode(prompt).unwrap(),
            bundled.encode(prompt).unwrap(),
            "{prompt}"
        );
    }
}

#[test]
fn sd2_folders_pad_with_exclamation_mark() {
    let dir = TempDir::new("sd2");
    write_vocab_merges(&dir);
    dir.write(
        "tokenizer_config.json",
        r#"{"model_max_length": 77, "pad_token": "<|endoftext|>"}"#,
    )
    .write(
        "special_tokens_map.json",
        r#"{"pad_token": {"content": "!", "lstrip": false}}"#,
    );
    let tok = ClipTokenizer::from_dir(&dir.0).unwrap();
    assert_eq!(
        tok.pad_id(),
        0,
        "special_tokens_map.json wins over tokenizer_config.json"
    );
    let enc = tok.encode("a photo of a cat").unwrap();
    assert_eq!(enc.ids[..7], CAT_PHOTO);
    assert!(enc.ids[7..].iter().all(|&id| id == 0));
    // `!` in a prompt stays text (256 = `!</w>`), as in OpenCLIP.
    assert_eq!(
        prompt_ids(&tok.encode("hello!").unwrap(), 0),
        [49406, 3306, 256, 49407]
    );

    // A tokenizer.json saved by transformers registers the pad token `!` as a special token;
    // invert drops that registration.
    let json_dir = TempDir::new("sd2-json");
    let mut with_pad = ClipTokenizer::bundled().inner;
    with_pad
        .add_special_tokens([AddedToken::from("!", true)])
        .unwrap();
    with_pad
        .save(json_dir.0.join("tokenizer.json"), false)
        .unwrap();
    json_dir.write("special_tokens_map.json", r#"{"pad_token": "!"}"#);
    let tok = ClipTokenizer::from_dir(&json_dir.0).unwrap();
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(
        prompt_ids(&tok.encode("hello!").unwrap(), 0),
        [49406, 3306, 256, 49407]
    );

    let mut bundled = ClipTokenizer::bundled();
    bundled.set_pad_token(SD2_PAD_TOKEN).unwrap();
    assert_eq!(
        bundled.encode("hello!").unwrap(),
        tok.encode("hello!").unwrap()
    );
    assert!(matches!(
        bundled.set_pad_token("<pad>"),
        Err(TokenizerError::UnknownToken { .. })
    ));
}

#[test]
fn folder_configs_and_added_tokens() {
    let dir = TempDir::new("config");
    write_vocab_merges(&dir);
    dir.write("tokenizer_config.json", r#"{"model_max_length": 1e30}"#)
        .write("added_tokens.json", r#"{"<sks>": 49408}"#);
    let mut tok = ClipTokenizer::from_dir(&dir.0).unwrap();
    assert_eq!((tok.max_length(), tok.vocab_size()), (77, 49409));
    assert_eq!(tok.word_ids("a <sks> dog").unwrap(), [320, 49408, 1929]);
    assert!(matches!(
        tok.add_concept("<sks>", 1),
        Err(TokenizerError::ConceptTaken { .. })
    ));
    assert_eq!(tok.add_concept("<new>", 2).unwrap(), [49409, 49410]);

    dir.write("tokenizer_config.json", r#"{"model_max_length": 16}"#);
    let tok = ClipTokenizer::from_dir(&dir.0).unwrap();
    assert_eq!(tok.encode("a photo of a cat").unwrap().ids.len(), 16);

    dir.write("tokenizer_config.json", r#"{"model_max_length": "long"}"#);
    let err = ClipTokenizer::from_dir(&dir.0).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("model_max_length"),
        "{err}"
    );

    dir.write("tokenizer_config.json", "{}")
        .write("special_tokens_map.json", r#"{"pad_token": "<pad>"}"#);
    let err = ClipTokenizer::from_dir(&dir.0).unwrap_err().to_string();
    assert!(
        err.contains("special_tokens_map.json") && err.contains("<pad>"),
        "{err}"
    );

    dir.write("special_tokens_map.json", "{not json");
    let err = ClipTokenizer::from_dir(&dir.0).unwrap_err().to_string();
    assert!(
        err.contains("special_tokens_map.json is not valid JSON"),
        "{err}"
    );

    dir.write("special_tokens_map.json", "{}")
        .write("added_tokens.json", r#"{"<sks>": 50000}"#);
    let err = ClipTokenizer::from_dir(&dir.0).unwrap_err().to_string();
    assert!(
        err.contains("added_tokens.json") && err.contains("50000"),
        "{err}"
    );
}

#[test]
fn folders_without_a_tokenizer_say_what_is_missing() {
    let dir = TempDir::new("empty");
    let err = ClipTokenizer::from_dir(&dir.0).unwrap_err();
    assert!(matches!(err, TokenizerError::NoTokenizer { .. }));
    let message = err.to_string();
    assert!(
        message.contains("tokenizer.json") && message.contains("vocab.json + merges.txt"),
        "{message}"
    );
    dir.write("vocab.json", "{}");
    let message = ClipTokenizer::from_dir(&dir.0).unwrap_err().to_string();
    assert!(
        message.contains("vocab.json has no") && message.contains("merges.txt"),
        "{message}"
    );
    dir.write("merges.txt", "#version: 0.2\na b c\n");
    let message = ClipTokenizer::from_dir(&dir.0).unwrap_err().to_string();
    assert!(
        message.contains("merges.txt") && message.contains("line 2"),
        "{message}"
    );
    dir.write("tokenizer.json", "{\"version\": \"1.0\"}");
    let message = ClipTokenizer::from_dir(&dir.0).unwrap_err().to_string();
    assert!(
        message.contains("tokenizer.json is not a usable tokenizer"),
        "{message}"
    );
}
