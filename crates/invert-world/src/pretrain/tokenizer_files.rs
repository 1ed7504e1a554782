//! The bundled model's tokenizer: CLIP's byte-level BPE (`vocab.json` + `merges.txt`, the files
//! transformers' `CLIPTokenizer` reads) with the 512 byte tokens of every CLIP vocabulary, so any
//! text still tokenizes, plus merges that make each word of the world (`world::captions`) one
//! token. Vocabulary layout as OpenAI's `simple_tokenizer.py` builds it: bytes, bytes with
//! `</w>`, merge results in merge order, then `<|startoftext|>` and `<|endoftext|>`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use invert_model::weights::safetensors_write::write_atomic;
use serde_json::json;

/// GPT-2's byte-to-unicode table (`bytes_to_unicode` in CLIP's simple_tokenizer.py): printable
/// bytes map to themselves, the rest to code points from 256 up.
pub fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in printable.iter().zip(chars) {
        table[*b as usize] = char::from_u32(c).expect("valid code point");
    }
    table
}

/// `word` split by byte-level BPE with `rank` (lowest rank merged first, every occurrence of
/// the pair at once, as CLIP's `SimpleTokenizer.bpe` and the tokenizers crate do).
fn bpe(word: &str, rank: &HashMap<(String, String), usize>) -> Vec<String> {
    let n = word.chars().count();
    let mut pieces: Vec<String> = word
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i + 1 == n {
                format!("{c}</w>")
            } else {
                c.to_string()
            }
        })
        .collect();
    loop {
        let best = pieces
            .windows(2)
            .filter_map(|w| {
                rank.get(&(w[0].clone(), w[1].clone()))
                    .map(|r| (*r, w[0].clone(), w[1].clone()))
            })
            .min();
        let Some((_, a, b)) = best else {
            return pieces;
        };
        let mut next = Vec::with_capacity(pieces.len());
        let mut i = 0;
        while i < pieces.len() {
            if i + 1 < pieces.len() && pieces[i] == a && pieces[i + 1] == b {
                next.push(format!("{a}{b}"));
                i += 2;
            } else {
                next.push(pieces[i].clone());
                i += 1;
            }
        }
        pieces = next;
    }
}

/// The vocabulary (token to id, in id order) and merges for `words` (ASCII words).
pub fn build(words: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let table = bytes_to_unicode();
    let mut byte_order: Vec<u8> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    byte_order.extend(
        (0..=255u8)
            .filter(|b| !byte_order.contains(b))
            .collect::<Vec<_>>(),
    );
    let base: Vec<String> = byte_order
        .iter()
        .map(|&b| table[b as usize].to_string())
        .collect();
    let mut vocab: Vec<String> = base.clone();
    vocab.extend(base.iter().map(|c| format!("{c}</w>")));
    // Each word's BPE under the merges so far; where it does not end as one token, merge its
    // pieces left to right with new (lowest-priority) merges. New merges can change other words'
    // pieces, so repeat until every word is one token.
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut rank: HashMap<(String, String), usize> = HashMap::new();
    loop {
        let mut changed = false;
        for word in words {
            let pieces = bpe(word, &rank);
            if pieces.len() < 2 {
                continue;
            }
            changed = true;
            let mut left = pieces[0].clone();
            for right in &pieces[1..] {
                let pair = (left.clone(), right.clone());
                if !rank.contains_key(&pair) {
                    rank.insert(pair.clone(), merges.len());
                    merges.push(pair);
                    vocab.push(format!("{left}{right}"));
                }
                left = format!("{left}{right}");
            }
        }
        if !changed {
            break;
        }
    }
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    (vocab, merges)
}

/// Writes `tokenizer/` (vocab.json, merges.txt, tokenizer_config.json,
/// special_tokens_map.json) into `dir`; returns the vocabulary size.
pub fn write(dir: &Path, words: &[String], max_length: usize) -> Result<usize, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (vocab, merges) = build(words);
    let map: BTreeMap<&str, usize> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges_txt = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        merges_txt.push_str(&format!("{a} {b}\n"));
    }
    let special = json!({
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"
    });
    let config = json!({
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "do_lower_case": true,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "errors": "replace"
    });
    let files: [(&str, Vec<u8>); 4] = [
        ("vocab.json", serde_json::to_vec(&map).expect("json")),
        ("merges.txt", merges_txt.into_bytes()),
        (
            "special_tokens_map.json",
            serde_json::to_vec_pretty(&special).expect("json"),
        ),
        (
            "tokenizer_config.json",
            serde_json::to_vec_pretty(&config).expect("json"),
        ),
    ];
    for (name, bytes) in files {
        write_atomic(&dir.join(name), &bytes, true).map_err(|e| e.to_string())?;
    }
    Ok(vocab.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use invert_model::tokenizer::ClipTokenizer;

    #[test]
    fn every_world_word_is_one_token_and_other_text_still_tokenizes() {
        let dir = std::env::temp_dir().join(format!("invert-tok-{}", std::process::id()));
        let words = crate::world::captions::vocabulary();
        let n = write(&dir, &words, 77).unwrap();
        assert!(n < 1000, "{n} tokens");
        let tok = ClipTokenizer::from_dir(&dir).unwrap();
        for w in &words {
            assert_eq!(tok.word_ids(w).unwrap().len(), 1, "{w} is not one token");
        }
        let e = tok.encode("a photo of a zebra!").unwrap();
        assert_eq!(e.ids.len(), 77);
        assert_eq!(e.ids[0], tok.bos_id());
        std::fs::remove_dir_all(&dir).ok();
    }
}
