//! Prompts longer than CLIP's 75 tokens, cut as A1111 cuts them (`modules/sd_hijack_clip.py`,
//! `tokenize_line`): the weighted pieces of [`super::emphasis::parse`] are tokenized one by
//! one and packed into chunks of 75 tokens, each later encoded on its own with BOS, EOS and
//! padding and the encodings concatenated. `BREAK` starts a new chunk; when a chunk is full and
//! a comma was among its last 20 tokens (A1111's `comma_padding_backtrack` default), the
//! tokens after that comma move to the next chunk; a learned word's vectors are never split
//! between two chunks.

use super::emphasis::parse;
use crate::tokenizer::{ClipTokenizer, TokenizerError};

/// Prompt tokens per chunk (CLIP's 77 positions less BOS and EOS).
pub const CHUNK_TOKENS: usize = 75;
/// A1111's `comma_padding_backtrack` default: how far back a comma may be to move the rest.
pub const COMMA_BACKTRACK: usize = 20;

/// One chunk as the text encoder takes it: `max_length` ids (BOS, tokens, EOS, padding) and
/// the emphasis weight of each position (1 for BOS, EOS and padding).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunk {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

/// Packs weighted tokens into chunks.
struct Packer<'a> {
    tokenizer: &'a ClipTokenizer,
    chunks: Vec<PromptChunk>,
    ids: Vec<u32>,
    weights: Vec<f32>,
    last_comma: Option<usize>,
}

impl Packer<'_> {
    fn finish_chunk(&mut self) {
        let t = self.tokenizer;
        let mut ids = Vec::with_capacity(t.max_length());
        ids.push(t.bos_id());
        ids.append(&mut self.ids);
        ids.push(t.eos_id());
        ids.resize(t.max_length(), t.pad_id());
        let mut weights = vec![1.0];
        weights.append(&mut self.weights);
        weights.resize(t.max_length(), 1.0);
        self.chunks.push(PromptChunk { ids, weights });
        self.last_comma = None;
    }

    fn push(&mut self, ids: &[u32], weight: f32) {
        self.ids.extend_from_slice(ids);
        self.weights.extend(std::iter::repeat_n(weight, ids.len()));
    }
}

/// The chunks of `prompt` (at least one), emphasis syntax parsed.
pub fn chunk_prompt(
    tokenizer: &ClipTokenizer,
    prompt: &str,
) -> Result<Vec<PromptChunk>, TokenizerError> {
    let room = tokenizer.max_length() - 2;
    let comma = tokenizer.word_ids(",")?[0];
    let concept_len = |id: u32| {
        tokenizer
            .concepts()
            .iter()
            .find(|c| c.ids[0] == id)
            .map(|c| c.ids.len())
    };
    let mut p = Packer {
        tokenizer,
        chunks: Vec::new(),
        ids: Vec::new(),
        weights: Vec::new(),
        last_comma: None,
    };
    for piece in parse(prompt) {
        if piece.is_break() {
            p.finish_chunk();
            continue;
        }
        let ids = if piece.text.trim().is_empty() {
            Vec::new()
        } else {
            tokenizer.word_ids(&piece.text)?
        };
        let weight = piece.weight as f32;
        let mut at = 0;
        while at < ids.len() {
            let id = ids[at];
            if id == comma {
                p.last_comma = Some(p.ids.len());
            } else if let Some(c) = p.last_comma
                && p.ids.len() == room
                && p.ids.len() - c <= COMMA_BACKTRACK
            {
                let moved_ids = p.ids.split_off(c + 1);
                let moved_weights = p.weights.split_off(c + 1);
                p.finish_chunk();
                p.ids = moved_ids;
                p.weights = moved_weights;
            }
            if p.ids.len() == room {
                p.finish_chunk();
            }
            let n = concept_len(id).unwrap_or(1).min(ids.len() - at);
            if p.ids.len() + n > room {
                p.finish_chunk();
            }
            p.push(&ids[at..at + n], weight);
            at += n;
        }
    }
    if !p.ids.is_empty() || p.chunks.is_empty() {
        p.finish_chunk();
    }
    Ok(p.chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(t: &ClipTokenizer, prompt: &str) -> Vec<PromptChunk> {
        chunk_prompt(t, prompt).unwrap()
    }

    /// Prompt tokens of a chunk (between BOS and the first EOS).
    fn body(c: &PromptChunk, t: &ClipTokenizer) -> Vec<u32> {
        let end = c.ids.iter().position(|&i| i == t.eos_id()).unwrap();
        c.ids[1..end].to_vec()
    }

    #[test]
    fn a_short_prompt_is_one_chunk_like_encode() {
        let t = ClipTokenizer::bundled();
        let c = chunks(&t, "a photo of a cat");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].ids, t.encode("a photo of a cat").unwrap().ids);
        assert!(c[0].weights.iter().all(|&w| w == 1.0));
        let empty = chunks(&t, "");
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].ids, t.encode("").unwrap().ids);
    }

    #[test]
    fn weights_follow_their_tokens() {
        let t = ClipTokenizer::bundled();
        let c = chunks(&t, "a (red:1.5) [cat]");
        let red = t.word_ids("red").unwrap()[0];
        let at = c[0].ids.iter().position(|&i| i == red).unwrap();
        assert_eq!(c[0].weights[at], 1.5);
        assert!((c[0].weights[at + 1] - (1.0 / 1.1) as f32).abs() < 1e-7);
        assert_eq!((c[0].weights[0], c[0].weights[at - 1]), (1.0, 1.0));
    }

    #[test]
    fn long_prompts_break_and_back_off_to_a_comma() {
        let t = ClipTokenizer::bundled();
        // 80 one-token words: 75 in the first chunk, 5 in the second.
        let words = vec!["cat"; 80].join(" ");
        let c = chunks(&t, &words);
        assert_eq!(c.len(), 2);
        assert_eq!((body(&c[0], &t).len(), body(&c[1], &t).len()), (75, 5));
        assert!(c.iter().all(|c| c.ids.len() == 77));
        // BREAK starts a new chunk.
        let c = chunks(&t, "a cat BREAK a dog");
        assert_eq!(c.len(), 2);
        assert_eq!(body(&c[1], &t), t.word_ids("a dog").unwrap());
        // A comma 10 tokens before the end: the 10 words after it move to the next chunk.
        let prompt = format!(
            "{}, {}",
            vec!["cat"; 64].join(" "),
            vec!["dog"; 20].join(" ")
        );
        let c = chunks(&t, &prompt);
        let first = body(&c[0], &t);
        assert_eq!(first.len(), 65, "64 cats and the comma");
        assert_eq!(*first.last().unwrap(), t.word_ids(",").unwrap()[0]);
        assert_eq!(body(&c[1], &t).len(), 20);
    }

    #[test]
    fn a_learned_word_is_not_split_between_chunks() {
        let mut t = ClipTokenizer::bundled();
        let ids = t.add_concept("<three>", 3).unwrap();
        let prompt = format!("{} <three>", vec!["cat"; 74].join(" "));
        let c = chunks(&t, &prompt);
        assert_eq!(c.len(), 2);
        assert_eq!(body(&c[0], &t).len(), 74);
        assert_eq!(body(&c[1], &t), ids);
    }
}
