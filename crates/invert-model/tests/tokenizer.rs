//! Every prompt of `fixtures/tokenizer/prompts.json` (written by
//! `scripts/make_tokenizer_fixtures.py`): invert's ids must equal the reference the entry names,
//! OpenAI's SimpleTokenizer unless the entry explains why transformers' ids are the ones to give.

use std::path::{Path, PathBuf};

use invert_model::tokenizer::{BUNDLED_TOKENIZER_JSON, ClipTokenizer};
use serde_json::Value;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/prompts.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// An SD 2 style `tokenizer/` folder: the bundled tokenizer.json and a special_tokens_map.json
/// whose pad token is `!`.
fn sd2_folder() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("invert-tokenizer-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), BUNDLED_TOKENIZER_JSON).unwrap();
    std::fs::write(
        dir.join("special_tokens_map.json"),
        r#"{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!"}"#,
    )
    .unwrap();
    dir
}

#[test]
fn prompts_match_the_references() {
    let doc = fixture();
    let max_length = doc["max_length"].as_u64().unwrap() as usize;
    let sd2_dir = sd2_folder();
    let sd2 = ClipTokenizer::from_dir(&sd2_dir).unwrap();
    let sd1 = ClipTokenizer::bundled();
    std::fs::remove_dir_all(&sd2_dir).unwrap();
    let prompts = doc["prompts"].as_array().unwrap();
    assert!(prompts.len() >= 40, "{} prompts", prompts.len());

    let mut failures = Vec::new();
    let mut differ_from_openai = Vec::new();
    for entry in prompts {
        let name = entry["name"].as_str().unwrap();
        let prompt = entry["prompt"].as_str().unwrap();
        let pad = entry["pad"].as_u64().unwrap() as u32;
        let mut tok = if pad == 0 { sd2.clone() } else { sd1.clone() };
        assert_eq!(tok.pad_id(), pad, "{name}: pad id");
        for concept in entry["concepts"].as_array().into_iter().flatten() {
            let token = concept[0].as_str().unwrap();
            let vectors = concept[1].as_u64().unwrap() as usize;
            tok.add_concept(token, vectors)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let target = entry["invert"].as_str().unwrap();
        let mut expected = ids(&entry[target]);
        expected.resize(max_length, pad);
        let got = tok.encode(prompt).unwrap_or_else(|e| panic!("{name}: {e}"));
        if got.ids != expected {
            failures.push(format!(
                "{name} ({prompt:?}):\n  got      {:?}\n  expected {expected:?} ({target})",
                got.ids
            ));
            continue;
        }
        if target == "openai" {
            assert_eq!(
                got.token_count as u64,
                entry["tokens"].as_u64().unwrap(),
                "{name}: token count"
            );
        } else {
            differ_from_openai.push(name);
        }
        match (&got.truncated, entry["dropped"].as_str()) {
            (None, None) => {}
            (Some(dropped), Some(start)) => {
                assert!(
                    dropped.starts_with(start),
                    "{name}: dropped text {dropped:?} should start with {start:?}"
                );
            }
            (got, want) => panic!("{name}: truncated {got:?}, expected one starting with {want:?}"),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ:\n{}",
        failures.len(),
        prompts.len(),
        failures.join("\n")
    );
    // The known differences from OpenAI are exactly the ones the fixture lists.
    assert_eq!(differ_from_openai, ["mojibake", "html5_only_entity"]);
}

#[test]
fn the_asset_folder_reads_like_the_bundled_tokenizer() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/clip-tokenizer");
    let from_dir = ClipTokenizer::from_dir(&assets).unwrap();
    let bundled = ClipTokenizer::bundled();
    assert_eq!(
        (
            from_dir.vocab_size(),
            from_dir.max_length(),
            from_dir.pad_id()
        ),
        (49408, 77, 49407)
    );
    let prompt = "An oil painting of a lighthouse &amp; a “cat”, <|endoftext|>";
    assert_eq!(
        from_dir.encode(prompt).unwrap(),
        bundled.encode(prompt).unwrap()
    );
}
